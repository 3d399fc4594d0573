// SPDX-License-Identifier: MIT
// cpu.c -- the CPU backend: host buffers, weight handles (borrowed views of
// the model's memory), the element-wise kernels and attention, all run on a
// persistent thread pool (pool.c); the weight kernels live in matmul.c.
// Compute slots never allocate: scratch is sized at create and grown only in
// weight_upload. Row-wise ops are split over rows; attention over
// (token, head) pairs with a chunked online softmax (stack scratch only).
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#if defined(__x86_64__)
#include <immintrin.h>
#define LP_HAVE_X86 1
#else
#define LP_HAVE_X86 0
#endif
// clang before 15 does not know "f16c" in __builtin_cpu_supports (the fuzz
// build); every AVX-512 CPU has F16C
#if defined(__clang__) && __clang_major__ < 15
#define CPU_HAS_F16C() 1
#else
#define CPU_HAS_F16C() __builtin_cpu_supports("f16c")
#endif

#include "backend/cpu/internal.h"

#define CPU_NAME "cpu"
#define CPU_SCRATCH_BYTES (4u << 20) // initial shared matmul scratch
#define CPU_MIN_PARALLEL 4096        // elements below which ops stay on the caller
#define CPU_ATTN_CHUNK 64            // scores per online-softmax step (stack)
#define CPU_ATTN_DSLICE 256          // output dims per pass (stack accumulator)

struct lp_backend_cpu_params lp_backend_cpu_params_default(void) {
    struct lp_backend_cpu_params p = {.n_threads = 0, .quantize_activations = false};
    return p;
}

static const char *cpu_name(void *ctx) { return CPU_NAME; }
static int cpu_n_threads(void *ctx) { return ((struct lp_cpu_ctx *)ctx)->n_threads; }

static void cpu_destroy(void *vctx) {
    struct lp_cpu_ctx *ctx = vctx;
    if (!ctx) return;
    lp_cpu_pool_destroy(ctx->pool);
    free(ctx->scratch);
    free(ctx->thread_scratch);
    free(ctx);
}

static enum lp_status cpu_buf_alloc(void *ctx, size_t bytes, struct lp_buf **out,
                                    struct lp_error *err) {
    return lp_host_buf_alloc(CPU_NAME, bytes, out, err);
}

static void cpu_buf_free(void *ctx, struct lp_buf *buf) { lp_host_buf_free(buf); }

static enum lp_status cpu_buf_write(void *ctx, struct lp_buf *dst, size_t offset, const void *src,
                                    size_t bytes, struct lp_error *err) {
    return lp_host_buf_write(CPU_NAME, dst, offset, src, bytes, err);
}

static enum lp_status cpu_buf_read(void *ctx, const struct lp_buf *src, size_t offset, void *dst,
                                   size_t bytes, struct lp_error *err) {
    return lp_host_buf_read(CPU_NAME, src, offset, dst, bytes, err);
}

static enum lp_status cpu_weight_upload(void *vctx, const struct lp_weight *w,
                                        struct lp_bweight **out, struct lp_error *err) {
    struct lp_cpu_ctx *ctx = vctx;
    *out = NULL;
    enum lp_status st = lp_host_weight_check(CPU_NAME, w, err);
    if (st != LP_OK) return st;
    st = lp_cpu_scratch_reserve(ctx, w->cols, err);
    if (st != LP_OK) return st;
    struct lp_bweight *bw = malloc(sizeof *bw);
    if (!bw) return lp_error_set(err, LP_ERR_NOMEM, CPU_NAME ": weight_upload: out of memory");
    bw->w = *w;
    st = lp_cpu_weight_pack(ctx, w, &bw->packed, err);
    if (st != LP_OK) {
        free(bw);
        return st;
    }
    *out = bw;
    return LP_OK;
}

static void cpu_weight_free(void *ctx, struct lp_bweight *w) {
    if (w) free(w->packed);
    free(w);
}

// ---- row-parallel helper ----------------------------------------------------

struct cpu_rows_task {
    int64_t n_rows;
    void (*fn)(void *arg, int64_t r0, int64_t r1);
    void *arg;
};

static void cpu_rows_fn(void *arg, int i_thread, int n_threads) {
    const struct cpu_rows_task *t = arg;
    int64_t r0 = t->n_rows * i_thread / n_threads;
    int64_t r1 = t->n_rows * (i_thread + 1) / n_threads;
    if (r1 > r0) t->fn(t->arg, r0, r1);
}

// Runs fn over rows [0, n_rows) split evenly, on the caller alone when the
// work (n_rows * row_elems) is too small to pay for a dispatch.
static void cpu_parallel_rows(struct lp_cpu_ctx *ctx, int64_t n_rows, int64_t row_elems,
                              void (*fn)(void *arg, int64_t r0, int64_t r1), void *arg) {
    if (n_rows <= 0) return;
    if (ctx->n_threads == 1 || n_rows == 1 || n_rows * row_elems < CPU_MIN_PARALLEL) {
        fn(arg, 0, n_rows);
        return;
    }
    struct cpu_rows_task t = {.n_rows = n_rows, .fn = fn, .arg = arg};
    lp_cpu_pool_run(ctx->pool, cpu_rows_fn, &t);
}

// ---- embed -------------------------------------------------------------------

struct cpu_embed_args {
    float *out;
    const struct lp_weight *w;
    const int32_t *ids;
};

static void cpu_embed_rows(void *arg, int64_t r0, int64_t r1) {
    const struct cpu_embed_args *a = arg;
    for (int64_t i = r0; i < r1; i++) {
        float *o = a->out + i * a->w->cols;
        if (a->ids[i] >= 0 && a->ids[i] < a->w->rows)
            lp_cpu_dequant_row(a->w, a->ids[i], o);
        else
            memset(o, 0, (size_t)a->w->cols * sizeof(float));
    }
}

// out[i, :] = emb[ids[i], :]; an id outside [0, rows) gives a zero row.
static void cpu_embed(void *ctx, struct lp_buf *out, const struct lp_bweight *emb,
                      const int32_t *ids, int n) {
    struct cpu_embed_args a = {.out = out->data, .w = &emb->w, .ids = ids};
    cpu_parallel_rows(ctx, n, emb->w.cols, cpu_embed_rows, &a);
}

static void cpu_matmul(void *ctx, struct lp_buf *out, const struct lp_buf *x,
                       const struct lp_bweight *w, int n) {
    lp_cpu_matmul(ctx, out->data, x->data, &w->w, w->packed, n);
}

// ---- rmsnorm -------------------------------------------------------------------

struct cpu_norm_args {
    float *out;
    const float *x, *w;
    int dim;
    float eps;
};

static void cpu_rmsnorm_rows(void *arg, int64_t r0, int64_t r1) {
    const struct cpu_norm_args *a = arg;
    for (int64_t r = r0; r < r1; r++) {
        const float *xr = a->x + r * a->dim;
        float *o = a->out + r * a->dim;
        float lane[16] = {0};
        int i = 0;
        for (; i + 16 <= a->dim; i += 16)
            for (int j = 0; j < 16; j++) lane[j] += xr[i + j] * xr[i + j];
        float ss = 0.0f;
        for (; i < a->dim; i++) ss += xr[i] * xr[i];
        for (int j = 0; j < 16; j++) ss += lane[j];
        float inv = 1.0f / sqrtf(ss / (float)a->dim + a->eps);
        for (i = 0; i < a->dim; i++) o[i] = xr[i] * inv * a->w[i];
    }
}

// out[r, :] = x[r, :] / sqrt(mean(x[r, :]^2) + eps) * weight[:]
static void cpu_rmsnorm(void *ctx, struct lp_buf *out, const struct lp_buf *x,
                        const struct lp_buf *weight, int n_rows, int dim, float eps) {
    struct cpu_norm_args a = {.out = out->data, .x = x->data, .w = weight->data, .dim = dim,
                              .eps = eps};
    cpu_parallel_rows(ctx, n_rows, dim, cpu_rmsnorm_rows, &a);
}

// ---- rope ------------------------------------------------------------------------

struct cpu_rope_args {
    float *x; // [n, n_heads, head_dim]
    const int32_t *pos;
    int n_heads, head_dim;
    float theta;
};

// Rows here are tokens; the angles of a token are shared by its heads.
static void cpu_rope_rows(void *arg, int64_t r0, int64_t r1) {
    const struct cpu_rope_args *a = arg;
    int half = a->head_dim / 2;
    for (int64_t i = r0; i < r1; i++) {
        for (int j = 0; j < half; j++) {
            // Same float expressions as ref (HF computes inv_freq in float32).
            float inv_freq = 1.0f / powf(a->theta, (float)(2 * j) / (float)a->head_dim);
            float angle = (float)a->pos[i] * inv_freq;
            float c = cosf(angle), s = sinf(angle);
            for (int h = 0; h < a->n_heads; h++) {
                float *v = a->x + (i * a->n_heads + h) * a->head_dim;
                float x1 = v[j], x2 = v[j + half];
                v[j] = x1 * c - x2 * s;
                v[j + half] = x2 * c + x1 * s;
            }
        }
    }
}

static void cpu_rope(void *ctx, struct lp_buf *x, const int32_t *pos, int n, int n_heads,
                     int head_dim, float theta) {
    struct cpu_rope_args a = {.x = x->data, .pos = pos, .n_heads = n_heads, .head_dim = head_dim,
                              .theta = theta};
    cpu_parallel_rows(ctx, n, (int64_t)n_heads * head_dim * 8, cpu_rope_rows, &a);
}

// ---- kv_store -----------------------------------------------------------------------

struct cpu_kv_args {
    void *kc, *vc;
    const float *k, *v;
    const int32_t *slot;
    int64_t row;     // n_kv_heads * head_dim
    int64_t n_slots; // n_blocks * block_size
    bool bf16;
};

static void cpu_kv_rows(void *arg, int64_t r0, int64_t r1) {
    const struct cpu_kv_args *a = arg;
    for (int64_t i = r0; i < r1; i++) {
        if (a->slot[i] < 0 || a->slot[i] >= a->n_slots) continue; // contract violation: skip
        int64_t at = a->slot[i] * a->row;
        const float *k = a->k + i * a->row, *v = a->v + i * a->row;
        if (a->bf16) {
            uint16_t *kd = (uint16_t *)a->kc + at, *vd = (uint16_t *)a->vc + at;
            for (int64_t e = 0; e < a->row; e++) {
                kd[e] = lp_f32_to_bf16(k[e]);
                vd[e] = lp_f32_to_bf16(v[e]);
            }
        } else {
            memcpy((float *)a->kc + at, k, (size_t)a->row * sizeof(float));
            memcpy((float *)a->vc + at, v, (size_t)a->row * sizeof(float));
        }
    }
}

static void cpu_kv_store(void *ctx, struct lp_buf *k_cache, struct lp_buf *v_cache,
                         const struct lp_kv_geom *geom, const struct lp_buf *k,
                         const struct lp_buf *v, const int32_t *slot, int n) {
    struct cpu_kv_args a = {
        .kc = k_cache->data, .vc = v_cache->data, .k = k->data, .v = v->data, .slot = slot,
        .row = (int64_t)geom->n_kv_heads * geom->head_dim,
        .n_slots = (int64_t)geom->n_blocks * geom->block_size,
        .bf16 = geom->dtype == LP_DTYPE_BF16,
    };
    cpu_parallel_rows(ctx, n, a.row * 2, cpu_kv_rows, &a);
}

// ---- attention -------------------------------------------------------------------------

static float attn_dot_generic(const float *q, const void *k, bool bf16, int n) {
    float lane[16] = {0}, acc = 0.0f;
    int i = 0;
    if (bf16) {
        const uint16_t *kb = k;
        for (; i + 16 <= n; i += 16)
            for (int j = 0; j < 16; j++) lane[j] += q[i + j] * lp_bf16_to_f32(kb[i + j]);
        for (; i < n; i++) acc += q[i] * lp_bf16_to_f32(kb[i]);
    } else {
        const float *kf = k;
        for (; i + 16 <= n; i += 16)
            for (int j = 0; j < 16; j++) lane[j] += q[i + j] * kf[i + j];
        for (; i < n; i++) acc += q[i] * kf[i];
    }
    for (int j = 0; j < 16; j++) acc += lane[j];
    return acc;
}

// acc[i] += e * v[i]
static void attn_axpy_generic(float *acc, float e, const void *v, bool bf16, int n) {
    if (bf16) {
        const uint16_t *vb = v;
        for (int i = 0; i < n; i++) acc[i] += e * lp_bf16_to_f32(vb[i]);
    } else {
        const float *vf = v;
        for (int i = 0; i < n; i++) acc[i] += e * vf[i];
    }
}

#if LP_HAVE_X86
#define LP_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,avx2")))

static inline LP_AVX512 __m512 attn_ld16(const void *p, bool bf16, int i, __mmask16 m) {
    if (bf16) {
        __m256i h = _mm256_maskz_loadu_epi16(m, (const uint16_t *)p + i);
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    return _mm512_maskz_loadu_ps(m, (const float *)p + i);
}

static LP_AVX512 float attn_dot_avx512(const float *q, const void *k, bool bf16, int n) {
    __m512 acc = _mm512_setzero_ps();
    for (int i = 0; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1u);
        acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, q + i), attn_ld16(k, bf16, i, m), acc);
    }
    return _mm512_reduce_add_ps(acc);
}

static LP_AVX512 void attn_axpy_avx512(float *acc, float e, const void *v, bool bf16, int n) {
    __m512 ev = _mm512_set1_ps(e);
    for (int i = 0; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1u);
        __m512 a = _mm512_maskz_loadu_ps(m, acc + i);
        _mm512_mask_storeu_ps(acc + i, m, _mm512_fmadd_ps(ev, attn_ld16(v, bf16, i, m), a));
    }
}
#endif

struct cpu_attn_task {
    float *out;         // [n, n_heads * head_dim]
    const float *q;     // [n, n_heads * head_dim]
    const void *kc, *vc;
    const struct lp_kv_geom *geom;
    int n_heads;
    const struct lp_attn_seg *segs;
    int n_segs;
    int64_t n_items; // tokens * n_heads
    bool avx512;
    _Atomic int64_t next;
};

static void cpu_attn_item(const struct cpu_attn_task *tk, int64_t t, int h) {
    const struct lp_kv_geom *g = tk->geom;
    // Find the segment of row t (segments are few).
    const struct lp_attn_seg *seg = tk->segs;
    int64_t first = 0;
    for (int s = 0; s < tk->n_segs; s++) {
        seg = &tk->segs[s];
        if (t < first + seg->n_tokens) break;
        first += seg->n_tokens;
    }
    int hd = g->head_dim, bs = g->block_size;
    int kvh = h / (tk->n_heads / g->n_kv_heads);
    bool bf16 = g->dtype == LP_DTYPE_BF16;
    size_t esz = bf16 ? 2 : 4;
    int64_t kv_row = (int64_t)g->n_kv_heads * hd;
    int n_ctx = seg->pos0 + (int)(t - first) + 1;
    if ((int64_t)seg->n_blocks * bs < n_ctx) n_ctx = seg->n_blocks * bs; // contract violation
    float scale = 1.0f / sqrtf((float)hd);
    const float *q = tk->q + (t * tk->n_heads + h) * hd;
    float *o = tk->out + (t * tk->n_heads + h) * hd;

    for (int d0 = 0; d0 < hd; d0 += CPU_ATTN_DSLICE) {
        int dn = hd - d0 < CPU_ATTN_DSLICE ? hd - d0 : CPU_ATTN_DSLICE;
        float acc[CPU_ATTN_DSLICE];
        float sc[CPU_ATTN_CHUNK];
        const char *vrow[CPU_ATTN_CHUNK];
        float m = -INFINITY, l = 0.0f;
        for (int i = 0; i < dn; i++) acc[i] = 0.0f;
        for (int p0 = 0; p0 < n_ctx; p0 += CPU_ATTN_CHUNK) {
            int pn = n_ctx - p0 < CPU_ATTN_CHUNK ? n_ctx - p0 : CPU_ATTN_CHUNK;
            float cmax = -INFINITY;
            for (int j = 0; j < pn; j++) {
                int p = p0 + j;
                int64_t off = (((int64_t)seg->block_table[p / bs] * bs + p % bs) * kv_row +
                               (int64_t)kvh * hd) * (int64_t)esz;
                const void *k = (const char *)tk->kc + off;
                vrow[j] = (const char *)tk->vc + off;
#if LP_HAVE_X86
                float dot = tk->avx512 ? attn_dot_avx512(q, k, bf16, hd)
                                       : attn_dot_generic(q, k, bf16, hd);
#else
                float dot = attn_dot_generic(q, k, bf16, hd);
#endif
                sc[j] = dot * scale;
                if (sc[j] > cmax) cmax = sc[j];
            }
            if (cmax > m) { // rescale what was accumulated under the old max
                float f = expf(m - cmax); // 0 when m is -inf
                l *= f;
                for (int i = 0; i < dn; i++) acc[i] *= f;
                m = cmax;
            }
            for (int j = 0; j < pn; j++) {
                float e = expf(sc[j] - m);
                l += e;
                const void *v = vrow[j] + (size_t)d0 * esz;
#if LP_HAVE_X86
                if (tk->avx512) attn_axpy_avx512(acc, e, v, bf16, dn);
                else attn_axpy_generic(acc, e, v, bf16, dn);
#else
                attn_axpy_generic(acc, e, v, bf16, dn);
#endif
            }
        }
        float inv = l > 0.0f ? 1.0f / l : 0.0f;
        for (int i = 0; i < dn; i++) o[d0 + i] = acc[i] * inv;
    }
}

static void cpu_attn_fn(void *arg, int i_thread, int n_threads) {
    struct cpu_attn_task *tk = arg;
    for (;;) {
        int64_t it = atomic_fetch_add_explicit(&tk->next, 1, memory_order_relaxed);
        if (it >= tk->n_items) break;
        cpu_attn_item(tk, it / tk->n_heads, (int)(it % tk->n_heads));
    }
}

// out = softmax(q k^T / sqrt(head_dim)) v per (token, head), causal per segment, GQA.
static void cpu_attention(void *vctx, struct lp_buf *out, const struct lp_buf *q,
                          const struct lp_buf *k_cache, const struct lp_buf *v_cache,
                          const struct lp_kv_geom *geom, int n_heads,
                          const struct lp_attn_seg *segs, int n_segs) {
    struct lp_cpu_ctx *ctx = vctx;
    int64_t n = 0;
    for (int s = 0; s < n_segs; s++) n += segs[s].n_tokens;
    struct cpu_attn_task tk = {
        .out = out->data, .q = q->data, .kc = k_cache->data, .vc = v_cache->data, .geom = geom,
        .n_heads = n_heads, .segs = segs, .n_segs = n_segs, .n_items = n * n_heads,
        .avx512 = ctx->isa == LP_CPU_ISA_AVX512,
    };
    atomic_init(&tk.next, 0);
    if (tk.n_items == 0) return;
    if (ctx->n_threads == 1 || tk.n_items == 1) cpu_attn_fn(&tk, 0, 1);
    else lp_cpu_pool_run(ctx->pool, cpu_attn_fn, &tk);
}

// ---- element-wise ------------------------------------------------------------------------

struct cpu_ew_args {
    float *out;
    const float *a, *b;
};

#define CPU_EW_ROW 1024 // elements per "row" of the element-wise split

static void cpu_silu_rows(void *arg, int64_t r0, int64_t r1) {
    const struct cpu_ew_args *e = arg;
    for (int64_t i = r0; i < r1; i++) e->out[i] = e->a[i] / (1.0f + expf(-e->a[i])) * e->b[i];
}

static void cpu_add_rows(void *arg, int64_t r0, int64_t r1) {
    const struct cpu_ew_args *e = arg;
    for (int64_t i = r0; i < r1; i++) e->out[i] += e->b[i];
}

// Splits [0, n) elements into rows for cpu_parallel_rows.
struct cpu_ew_split {
    void (*fn)(void *arg, int64_t i0, int64_t i1);
    void *arg;
    int64_t n;
};

static void cpu_ew_chunk(void *arg, int64_t r0, int64_t r1) {
    const struct cpu_ew_split *s = arg;
    int64_t i0 = r0 * CPU_EW_ROW, i1 = r1 * CPU_EW_ROW < s->n ? r1 * CPU_EW_ROW : s->n;
    s->fn(s->arg, i0, i1);
}

static void cpu_elementwise(struct lp_cpu_ctx *ctx, int64_t n,
                            void (*fn)(void *arg, int64_t i0, int64_t i1), void *arg) {
    struct cpu_ew_split s = {.fn = fn, .arg = arg, .n = n};
    cpu_parallel_rows(ctx, (n + CPU_EW_ROW - 1) / CPU_EW_ROW, CPU_EW_ROW, cpu_ew_chunk, &s);
}

static void cpu_silu_mul(void *ctx, struct lp_buf *out, const struct lp_buf *gate,
                         const struct lp_buf *up, int64_t n) {
    struct cpu_ew_args e = {.out = out->data, .a = gate->data, .b = up->data};
    cpu_elementwise(ctx, n, cpu_silu_rows, &e);
}

static void cpu_add(void *ctx, struct lp_buf *x, const struct lp_buf *y, int64_t n) {
    struct cpu_ew_args e = {.out = x->data, .b = y->data};
    cpu_elementwise(ctx, n, cpu_add_rows, &e);
}

static void cpu_gather_rows(void *ctx, struct lp_buf *dst, const struct lp_buf *src,
                            const int32_t *src_row, int n, int cols) {
    float *d = dst->data;
    const float *s = src->data;
    for (int i = 0; i < n; i++)
        memmove(d + (int64_t)i * cols, s + (int64_t)src_row[i] * cols, (size_t)cols * sizeof(float));
}

struct cpu_argmax_args {
    struct lp_buf *ids;
    const struct lp_buf *x;
    int n_rows, cols;
};

static void cpu_argmax_part(void *arg, int64_t r0, int64_t r1) {
    const struct cpu_argmax_args *a = arg;
    lp_host_argmax_rows(a->ids, a->x, a->n_rows, a->cols, r0, r1);
}

static void cpu_argmax_rows(void *ctx, struct lp_buf *ids, const struct lp_buf *x, int n_rows,
                            int cols) {
    struct cpu_argmax_args a = {.ids = ids, .x = x, .n_rows = n_rows, .cols = cols};
    cpu_parallel_rows(ctx, n_rows, cols, cpu_argmax_part, &a);
}

// ---- device facts ----

static uint64_t cpu_mem_available(void) {
    FILE *fp = fopen("/proc/meminfo", "r");
    if (!fp) return 0;
    char line[256];
    uint64_t kb = 0;
    while (fgets(line, sizeof line, fp))
        if (strncmp(line, "MemAvailable:", 13) == 0) {
            kb = strtoull(line + 13, NULL, 10);
            break;
        }
    fclose(fp);
    return kb * 1024;
}

static double cpu_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

// Streaming read speed (GB/s) over a 64 MiB buffer, best of three: a
// stage's decode speed is bounded by it, so plans weigh stages by it.
static double cpu_measure_read_gb_s(void) {
    size_t n = (size_t)64 << 20;
    uint64_t *buf = malloc(n);
    if (!buf) return 0.0;
    size_t words = n / 8;
    for (size_t i = 0; i < words; i++) buf[i] = i;
    double best = 0.0;
    volatile uint64_t sink = 0;
    for (int rep = 0; rep < 3; rep++) {
        double t0 = cpu_seconds();
        uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        for (size_t i = 0; i + 4 <= words; i += 4) {
            s0 += buf[i];
            s1 += buf[i + 1];
            s2 += buf[i + 2];
            s3 += buf[i + 3];
        }
        sink += s0 + s1 + s2 + s3;
        double dt = cpu_seconds() - t0;
        if (dt > 0 && (double)n / dt / 1e9 > best) best = (double)n / dt / 1e9;
    }
    (void)sink;
    free(buf);
    return best;
}

static enum lp_status cpu_device_info(void *vctx, struct lp_device_info *out,
                                      struct lp_error *err) {
    struct lp_cpu_ctx *ctx = vctx;
    (void)err;
    if (ctx->read_gb_s == 0) ctx->read_gb_s = cpu_measure_read_gb_s();
    snprintf(out->name, sizeof out->name, "cpu (%d threads)", ctx->n_threads);
    out->free_bytes = cpu_mem_available();
    out->read_gb_s = ctx->read_gb_s;
    return LP_OK;
}

static const struct lp_backend_i cpu_iface = {
    /* .name          = */ cpu_name,
    /* .n_threads     = */ cpu_n_threads,
    /* .destroy       = */ cpu_destroy,
    /* .buf_alloc     = */ cpu_buf_alloc,
    /* .buf_free      = */ cpu_buf_free,
    /* .buf_write     = */ cpu_buf_write,
    /* .buf_read      = */ cpu_buf_read,
    /* .weight_upload = */ cpu_weight_upload,
    /* .weight_free   = */ cpu_weight_free,
    /* .embed         = */ cpu_embed,
    /* .matmul        = */ cpu_matmul,
    /* .rmsnorm       = */ cpu_rmsnorm,
    /* .rope          = */ cpu_rope,
    /* .kv_store      = */ cpu_kv_store,
    /* .attention     = */ cpu_attention,
    /* .silu_mul      = */ cpu_silu_mul,
    /* .add           = */ cpu_add,
    /* .gather_rows   = */ cpu_gather_rows,
    /* .sync          = */ NULL,
    /* .device_info   = */ cpu_device_info,
    /* .batch_setup   = */ NULL,
    /* .step_begin    = */ NULL,
    /* .step_end      = */ NULL,
    /* .matmul_multi  = */ NULL,
    /* .matmul_add    = */ NULL,
    /* .matmul_swiglu = */ NULL,
    /* .qk_norm_rope_store = */ NULL,
    /* .argmax_rows   = */ cpu_argmax_rows,
};

enum lp_status lp_cpu_backend_create_ex(struct lp_backend **out,
                                        const struct lp_backend_cpu_params *params,
                                        bool force_generic, struct lp_error *err) {
    *out = NULL;
    struct lp_backend_cpu_params p = params ? *params : lp_backend_cpu_params_default();
    int n_threads = p.n_threads;
    if (n_threads <= 0) {
        long nc = sysconf(_SC_NPROCESSORS_ONLN);
        n_threads = nc > 0 ? (int)nc : 1;
    }
    if (n_threads > 1024)
        return lp_error_set(err, LP_ERR_INVALID_ARG, CPU_NAME ": create: %d threads, max 1024",
                            n_threads);
    struct lp_cpu_ctx *ctx = calloc(1, sizeof *ctx);
    if (!ctx) return lp_error_set(err, LP_ERR_NOMEM, CPU_NAME ": create: out of memory");
    ctx->n_threads = n_threads;
    ctx->quantize_activations = p.quantize_activations;
    ctx->isa = LP_CPU_ISA_GENERIC;
#if LP_HAVE_X86
    __builtin_cpu_init();
    if (!force_generic && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("fma") && CPU_HAS_F16C()) {
        ctx->isa = LP_CPU_ISA_AVX512;
        ctx->vnni = __builtin_cpu_supports("avx512vnni");
    }
#endif
    ctx->scratch = aligned_alloc(LP_HOST_ALIGN, CPU_SCRATCH_BYTES);
    enum lp_status st = LP_OK;
    if (!ctx->scratch) {
        st = lp_error_set(err, LP_ERR_NOMEM, CPU_NAME ": create: out of memory for scratch");
        goto fail;
    }
    ctx->scratch_bytes = CPU_SCRATCH_BYTES;
    st = lp_cpu_scratch_reserve(ctx, 4096, err); // per-thread rows for 4096 columns
    if (st != LP_OK) goto fail;
    st = lp_cpu_pool_create(&ctx->pool, n_threads, err);
    if (st != LP_OK) goto fail;
    st = lp_backend_wrap(out, &cpu_iface, ctx, err);
    if (st != LP_OK) goto fail;
    return LP_OK;
fail:
    cpu_destroy(ctx);
    return st;
}

enum lp_status lp_backend_cpu_create(struct lp_backend **out,
                                     const struct lp_backend_cpu_params *params,
                                     struct lp_error *err) {
    return lp_cpu_backend_create_ex(out, params, false, err);
}
