// SPDX-License-Identifier: MIT
// matmul.c -- the CPU backend's weight kernels: out[n, rows] = x[n, cols] @ W^T
// for every weight format, on the thread pool, split over row chunks
// (LP_MM_ROWS_MIN+ weight rows each, handed out through an atomic counter).
//
// Batch invariance (issue 13): the path depends on the weight and the
// backend's settings only, never on n, and inside each path every output
// element out[t, r] is one fixed sequence of operations on x[t, :] and row r:
// the same bits whatever the other rows of the call, their number, how the
// tokens are chunked, the thread count or the tile an element falls in.
// Tests (tests/backend/test_cpu.c) compare every row of a batch with the row
// computed alone, byte for byte.
//
// Paths (chosen per call from ctx->isa, ctx->vnni, quantize_activations and
// the weight; one path for every n):
//  - generic (no AVX-512): dequantize one weight row into per-thread scratch,
//               dot it with every token row (16 lanes, portable C).
//  - vnni digits (matmul_digits.c; MLX 8-bit and 4-bit, AVX512-VNNI, float
//               activations, groups of 32 or a multiple of 64, columns a
//               multiple of 64): each token's x split per call into three
//               int8 digits per element (error ~2^-22 of the group's max |x|),
//               u8 x s8 dot products combined in int32 (exact), one float FMA
//               per 64 codes in column order; register tiles of 4 rows x 4
//               tokens load each weight vector once per 4 tokens (decode,
//               n = 1, is the 4 x 1 tile), over row blocks that stay in L2.
//  - avx512 tile (f32, f16, bf16; MLX without VNNI or off the digits shapes):
//               4 weight rows x 4 tokens per pass, weights loaded (MLX:
//               dequantized, s * q + b) once and reused against the 4 tokens;
//               per output 16 lanes over columns c = j mod 16, then a fixed
//               lane reduction. (The former 6 x 64 prefill tile summed each
//               output in one chain over c, an order a small n cannot
//               reproduce at speed; dropping it costs large-n calls ~12%.)
//  - vnni ggml (matmul_ggml.c; GGUF Q8_0, Q4_0, Q4_K, Q5_K, Q6_K,
//               AVX512-VNNI, columns a multiple of 256, float activations): the
//               digits scheme on the blocks as stored, 16 rows at a time
//               (the codes of each 16-row strip unpacked and transposed into
//               scratch once per call, lane = row; a sub-block's integer dot
//               products summed for the 16 rows, then one float step per
//               sub-block; offsets through exact x sums), 32 rows x 4 tokens.
//               Other GGUF shapes (and no VNNI) take the generic path.
//               With quantize_activations (opt-in, not exact): x rounded to
//               int8 per group of 32, one digit instead of three.
//  - vnni int8 (MLX 8-bit with quantize_activations, opt-in, not exact): x
//               quantized per token and group to int8 (symmetric, scale
//               max|x|/127), u8 x s8 dot products (vpdpbusd): dot = sum_g sw_g *
//               sx_g * sum(q * xq) + bw_g * xsum_g. Batch invariant too (the
//               rounding of x is per token), but drifts from the float result.
// Nothing here allocates: phase-1 results (xsum, int8 x or digits, x scales)
// go into ctx->scratch, sized in weight_upload; tokens are processed in
// chunks that fit.
#include <math.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>

#include "backend/cpu/matmul_i.h"
#include "util/ggml_layout.h"

#define LP_MM_ROWS_MIN 16 // smallest row chunk handed to a thread
#define LP_MM_TILE_T 4    // tokens per pass of the tile kernels
#define LP_MM_ROWBLK_BYTES (64 << 10) // weight bytes per row block of the tile kernels
#define LP_MM_SCRATCH_T 64 // tokens whose phase-1 results the shared scratch holds



// ---- portable path -----------------------------------------------------

void lp_cpu_dequant_row(const struct lp_weight *w, int64_t r, float *dst) {
    int64_t cols = w->cols;
    switch (w->format) {
    case LP_WEIGHT_F32:
        memcpy(dst, (const float *)w->data + r * cols, (size_t)cols * sizeof(float));
        return;
    case LP_WEIGHT_F16: {
        const uint16_t *p = (const uint16_t *)w->data + r * cols;
        for (int64_t c = 0; c < cols; c++) dst[c] = lp_f16_to_f32(p[c]);
        return;
    }
    case LP_WEIGHT_BF16: {
        const uint16_t *p = (const uint16_t *)w->data + r * cols;
        for (int64_t c = 0; c < cols; c++) dst[c] = lp_bf16_to_f32(p[c]);
        return;
    }
    case LP_WEIGHT_MLX_AFFINE: {
        int gs = w->group_size;
        int64_t ng = cols / gs;
        const uint8_t *p = (const uint8_t *)w->data + r * (cols * w->bits / 8);
        for (int64_t g = 0; g < ng; g++) {
            float s = lp_host_half(w->scale_dtype, w->scales, r * ng + g);
            float b = lp_host_half(w->scale_dtype, w->biases, r * ng + g);
            float *d = dst + g * gs;
            if (w->bits == 8) {
                const uint8_t *q = p + g * gs;
                for (int i = 0; i < gs; i++) d[i] = s * (float)q[i] + b;
            } else {
                const uint8_t *q = p + g * gs / 2;
                for (int i = 0; i < gs / 2; i++) {
                    d[2 * i] = s * (float)(q[i] & 0x0f) + b;
                    d[2 * i + 1] = s * (float)(q[i] >> 4) + b;
                }
            }
        }
        return;
    }
    case LP_WEIGHT_GGML: { // block by block, the layout's values (util/ggml_layout.h)
        int be = lp_ggml_block_elems(w->ggml_type), bb = lp_ggml_block_bytes(w->ggml_type);
        const uint8_t *p = (const uint8_t *)w->data + (size_t)r * lp_ggml_row_bytes(w->ggml_type, cols);
        for (int64_t b = 0; b < cols / be; b++) ggml_decode_block(w->ggml_type, p + b * bb, dst + b * be);
        return;
    }
    }
}

// sum_i a[i] * b[i] with 16 independent lanes the compiler can vectorize.
static float mm_dot_generic(const float *a, const float *b, int64_t n) {
    float lane[16] = {0};
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        for (int j = 0; j < 16; j++) lane[j] += a[i + j] * b[i + j];
    float acc = 0.0f;
    for (; i < n; i++) acc += a[i] * b[i];
    for (int j = 0; j < 16; j++) acc += lane[j];
    return acc;
}

static void mm_kernel_generic(const struct mm_task *tk, int64_t r0, int64_t r1, int i_thread) {
    const struct lp_weight *w = tk->w;
    float *row = (float *)((char *)tk->ctx->thread_scratch +
                           (size_t)i_thread * tk->ctx->thread_bytes);
    for (int64_t r = r0; r < r1; r++) {
        lp_cpu_dequant_row(w, r, row);
        for (int t = 0; t < tk->n; t++)
            tk->out[(int64_t)t * w->rows + r] = mm_dot_generic(tk->x + (int64_t)t * w->cols, row,
                                                               w->cols);
    }
}

// ---- AVX-512 paths -------------------------------------------------------
#if LP_HAVE_X86



// RB weight rows from r0 x NT tokens: out[t, r0 + r] = x[t, :] . w[r0 + r, :].
// Weights are loaded (MLX: dequantized as s * q + b) once per 16 columns and
// reused for the NT tokens. RB, NT and fmt are constants after inlining.
LP_INLINE LP_AVX512 void mm_tile(int fmt, int RB, int NT, const struct lp_weight *w, int64_t r0,
                                 const float *x, float *out) {
    int64_t cols = w->cols, rows = w->rows, rb = mm_row_bytes(w);
    const uint8_t *rowp[4];
    __m512 acc[4][LP_MM_TILE_T];
    for (int r = 0; r < RB; r++) {
        rowp[r] = (const uint8_t *)w->data + (r0 + r) * rb;
        for (int t = 0; t < NT; t++) acc[r][t] = _mm512_setzero_ps();
    }
    if (fmt == FMT_Q4 || fmt == FMT_Q8) {
        int gs = w->group_size;
        int64_t ng = cols / gs;
        for (int64_t g = 0; g < ng; g++) {
            __m512 s[4], b[4];
            for (int r = 0; r < RB; r++) {
                s[r] = _mm512_set1_ps(lp_host_half(w->scale_dtype, w->scales, (r0 + r) * ng + g));
                b[r] = _mm512_set1_ps(lp_host_half(w->scale_dtype, w->biases, (r0 + r) * ng + g));
            }
            for (int64_t c = g * gs; c < (g + 1) * gs; c += 16) {
                __m512 wv[4];
                for (int r = 0; r < RB; r++) {
                    MM_PREFETCH(fmt, rowp, r, c, RB * rb);
                    wv[r] = _mm512_fmadd_ps(mm_ld16(fmt, rowp[r], c, 0xffff), s[r], b[r]);
                }
                for (int t = 0; t < NT; t++) {
                    __m512 xv = _mm512_loadu_ps(x + t * cols + c);
                    for (int r = 0; r < RB; r++) acc[r][t] = _mm512_fmadd_ps(xv, wv[r], acc[r][t]);
                }
            }
        }
    } else {
        for (int64_t c = 0; c < cols; c += 16) {
            __mmask16 m = cols - c >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (cols - c)) - 1u);
            __m512 wv[4];
            for (int r = 0; r < RB; r++) {
                MM_PREFETCH(fmt, rowp, r, c, RB * rb);
                wv[r] = mm_ld16(fmt, rowp[r], c, m);
            }
            for (int t = 0; t < NT; t++) {
                __m512 xv = _mm512_maskz_loadu_ps(m, x + t * cols + c);
                for (int r = 0; r < RB; r++) acc[r][t] = _mm512_fmadd_ps(xv, wv[r], acc[r][t]);
            }
        }
    }
    for (int r = 0; r < RB; r++)
        for (int t = 0; t < NT; t++) out[t * rows + r0 + r] = _mm512_reduce_add_ps(acc[r][t]);
}

#define MM_TILE_ROWS(FMT, NT)                                                                      \
    do {                                                                                           \
        int64_t r_ = rb0;                                                                          \
        for (; r_ + 4 <= rb1; r_ += 4) mm_tile(FMT, 4, NT, w, r_, xt, ot);                         \
        for (; r_ < rb1; r_++) mm_tile(FMT, 1, NT, w, r_, xt, ot);                                 \
    } while (0)

// Row chunk [r0, r1) against every token, LP_MM_TILE_T tokens per pass, in
// row blocks of about LP_MM_ROWBLK_BYTES of weights: a block comes from DRAM
// for its first token tile and from L2 for the others.
#define MM_DEFINE_TILE_KERNEL(NAME, FMT)                                                           \
    static LP_AVX512 void NAME(const struct mm_task *tk, int64_t r0, int64_t r1, int i_thread) {   \
        const struct lp_weight *w = tk->w;                                                         \
        int64_t blk = LP_MM_ROWBLK_BYTES / mm_row_bytes(w) / 4 * 4;                                \
        if (blk < 4) blk = 4;                                                                      \
        for (int64_t rb0 = r0; rb0 < r1; rb0 += blk) {                                             \
            int64_t rb1 = rb0 + blk < r1 ? rb0 + blk : r1;                                         \
            for (int t0 = 0; t0 < tk->n; t0 += LP_MM_TILE_T) {                                     \
                const float *xt = tk->x + (int64_t)t0 * w->cols;                                   \
                float *ot = tk->out + (int64_t)t0 * w->rows;                                       \
                int nt = tk->n - t0 < LP_MM_TILE_T ? tk->n - t0 : LP_MM_TILE_T;                    \
                if (nt == 4) MM_TILE_ROWS(FMT, 4);                                                 \
                else if (nt == 3) MM_TILE_ROWS(FMT, 3);                                            \
                else if (nt == 2) MM_TILE_ROWS(FMT, 2);                                            \
                else MM_TILE_ROWS(FMT, 1);                                                         \
            }                                                                                      \
        }                                                                                          \
    }

MM_DEFINE_TILE_KERNEL(mm_kernel_tile_f32, FMT_F32)
MM_DEFINE_TILE_KERNEL(mm_kernel_tile_f16, FMT_F16)
MM_DEFINE_TILE_KERNEL(mm_kernel_tile_bf16, FMT_BF16)
MM_DEFINE_TILE_KERNEL(mm_kernel_tile_q4, FMT_Q4)
MM_DEFINE_TILE_KERNEL(mm_kernel_tile_q8, FMT_Q8)

LP_INLINE LP_VNNI float mm_hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

// RB rows of MLX 8-bit weights x NT int8-quantized tokens, 32 codes per step:
// out[t, r] = sum_g sw_g * sx_tg * sum(q * xq_t) + sum_g bw_g * xsum_tg.
LP_INLINE LP_VNNI void mm_vnni_tile(int RB, int NT, const struct mm_task *tk, int64_t r0, int t0) {
    const struct lp_weight *w = tk->w;
    int64_t cols = w->cols, rows = w->rows;
    int gs = w->group_size;
    int64_t ng = cols / gs;
    const uint8_t *rowp[4];
    __m256 tot[4][LP_MM_TILE_T];
    const int8_t *xq = tk->xq + (int64_t)t0 * cols;
    const float *xs = tk->xscale + (int64_t)t0 * ng;
    for (int r = 0; r < RB; r++) {
        rowp[r] = (const uint8_t *)w->data + (r0 + r) * cols;
        for (int t = 0; t < NT; t++) tot[r][t] = _mm256_setzero_ps();
    }
    for (int64_t g = 0; g < ng; g++) {
        __m256i iacc[4][LP_MM_TILE_T];
        for (int r = 0; r < RB; r++)
            for (int t = 0; t < NT; t++) iacc[r][t] = _mm256_setzero_si256();
        for (int64_t c = g * gs; c < (g + 1) * gs; c += 32) {
            __m256i q[4];
            for (int r = 0; r < RB; r++) {
                MM_PREFETCH(FMT_Q8, rowp, r, c, 4 * cols);
                q[r] = _mm256_loadu_si256((const __m256i *)(rowp[r] + c));
            }
            for (int t = 0; t < NT; t++) {
                __m256i xv = _mm256_loadu_si256((const __m256i *)(xq + t * cols + c));
                for (int r = 0; r < RB; r++) iacc[r][t] = _mm256_dpbusd_epi32(iacc[r][t], q[r], xv);
            }
        }
        for (int r = 0; r < RB; r++) {
            float sw = lp_host_half(w->scale_dtype, w->scales, (r0 + r) * ng + g);
            for (int t = 0; t < NT; t++)
                tot[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(iacc[r][t]),
                                            _mm256_set1_ps(sw * xs[t * ng + g]), tot[r][t]);
        }
    }
    const uint16_t *biases = w->biases;
    for (int r = 0; r < RB; r++)
        for (int t = 0; t < NT; t++)
            tk->out[(int64_t)(t0 + t) * rows + r0 + r] =
                mm_hsum256(tot[r][t]) + mm_half_dot(w->scale_dtype, biases + (r0 + r) * ng,
                                                    tk->xsum + (int64_t)(t0 + t) * ng, ng);
}

// 4 rows per pass for 1-2 tokens, 2 rows for 3-4 (register budget).
#define MM_VNNI_ROWS(NT)                                                                           \
    do {                                                                                           \
        int64_t r_ = r0;                                                                           \
        if (NT <= 2)                                                                               \
            for (; r_ + 4 <= r1; r_ += 4) mm_vnni_tile(4, NT, tk, r_, t0);                         \
        for (; r_ + 2 <= r1; r_ += 2) mm_vnni_tile(2, NT, tk, r_, t0);                             \
        for (; r_ < r1; r_++) mm_vnni_tile(1, NT, tk, r_, t0);                                     \
    } while (0)

static LP_VNNI void mm_kernel_vnni_q8(const struct mm_task *tk, int64_t r0, int64_t r1,
                                      int i_thread) {
    for (int t0 = 0; t0 < tk->n; t0 += LP_MM_TILE_T) {
        int nt = tk->n - t0 < LP_MM_TILE_T ? tk->n - t0 : LP_MM_TILE_T;
        if (nt == 4) MM_VNNI_ROWS(4);
        else if (nt == 3) MM_VNNI_ROWS(3);
        else if (nt == 2) MM_VNNI_ROWS(2);
        else MM_VNNI_ROWS(1);
    }
}

#endif // LP_HAVE_X86

// ---- phase 1 of quantize_activations: per-group sums and int8 x -----------

struct mm_prep {
    const float *x; // [n, cols]
    int n;
    int64_t cols;
    int gs;
    float *xsum;   // [n, ng]
    float *xscale; // [n, ng]
    int8_t *xq;    // [n, cols]
};

static void mm_prep_fn(void *arg, int i_thread, int n_threads) {
    const struct mm_prep *p = arg;
    int64_t ng = p->cols / p->gs;
    for (int t = i_thread; t < p->n; t += n_threads) {
        for (int64_t g = 0; g < ng; g++) {
            const float *xg = p->x + (int64_t)t * p->cols + g * p->gs;
            float sum = 0.0f, amax = 0.0f;
            for (int i = 0; i < p->gs; i++) {
                sum += xg[i];
                amax = fmaxf(amax, fabsf(xg[i]));
            }
            p->xsum[(int64_t)t * ng + g] = sum;
            float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
            p->xscale[(int64_t)t * ng + g] = amax / 127.0f;
            int8_t *q = p->xq + (int64_t)t * p->cols + g * p->gs;
            for (int i = 0; i < p->gs; i++) q[i] = (int8_t)lrintf(xg[i] * inv);
        }
    }
}

// Scratch bytes one token needs in phase 1 for a weight of `cols` columns
// (group size >= 32): int8 x, then x sums and x scales.
static size_t mm_token_scratch(int64_t cols) {
    int64_t ng = cols / 32 + 1;
    return (size_t)(cols + 64) + (size_t)ng * 2 * sizeof(float) + 64;
}

// Scratch bytes one token needs on the exact VNNI path: its digits (for the
// larger 4-bit layout), then x sums and x scales (groups of >= 32).
static size_t mm_digits_scratch(int64_t cols) {
    int64_t ng = cols / 32 + 1;
    return (size_t)(3 * ((cols + LP_MM_Q4_BLK - 1) / LP_MM_Q4_BLK * LP_MM_Q4_BLK)) +
           (size_t)ng * 2 * sizeof(float) + 64;
}

// Scratch bytes one token needs on the GGUF VNNI path (matmul_ggml.c).
static size_t mm_ggml_scratch(int64_t cols) {
#if LP_HAVE_X86
    return (size_t)lp_mm_ggml_token_bytes((cols + 255) / 256 * 256);
#else
    return (size_t)cols;
#endif
}

enum lp_status lp_cpu_scratch_reserve(struct lp_cpu_ctx *ctx, int64_t cols, struct lp_error *err) {
    // Shared: phase 1 of LP_MM_SCRATCH_T tokens on any path.
    size_t shared = mm_token_scratch(cols);
    if (mm_digits_scratch(cols) > shared) shared = mm_digits_scratch(cols);
    if (mm_ggml_scratch(cols) > shared) shared = mm_ggml_scratch(cols);
    shared *= LP_MM_SCRATCH_T;
    if (shared > ctx->scratch_bytes) {
        void *p = aligned_alloc(LP_HOST_ALIGN, (shared + LP_HOST_ALIGN - 1) / LP_HOST_ALIGN *
                                                   LP_HOST_ALIGN);
        if (!p) return lp_error_set(err, LP_ERR_NOMEM, "cpu: scratch: out of memory (%zu bytes)", shared);
        free(ctx->scratch);
        ctx->scratch = p;
        ctx->scratch_bytes = shared;
    }
    // Per thread: one dequantized row (generic path) or a row block's GGUF
    // scales (matmul_ggml.c).
    size_t per_thread = ((size_t)cols * sizeof(float) + LP_HOST_ALIGN - 1) / LP_HOST_ALIGN *
                        LP_HOST_ALIGN;
#if LP_HAVE_X86
    if (cols % 256 == 0 && lp_mm_ggml_cache_bytes(cols) > per_thread)
        per_thread = lp_mm_ggml_cache_bytes(cols);
#endif
    if (per_thread > ctx->thread_bytes) {
        void *p = aligned_alloc(LP_HOST_ALIGN, per_thread * (size_t)ctx->n_threads);
        if (!p)
            return lp_error_set(err, LP_ERR_NOMEM, "cpu: thread scratch: out of memory (%zu bytes)",
                                per_thread * (size_t)ctx->n_threads);
        free(ctx->thread_scratch);
        ctx->thread_scratch = p;
        ctx->thread_bytes = per_thread;
    }
    return LP_OK;
}

// ---- dispatch --------------------------------------------------------------

static void mm_task_fn(void *arg, int i_thread, int n_threads) {
    struct mm_task *tk = arg;
    for (;;) {
        int64_t ch = atomic_fetch_add_explicit(&tk->next, 1, memory_order_relaxed);
        if (ch >= tk->n_chunks) break;
        int64_t r0 = ch * tk->rows_per_chunk;
        int64_t r1 = r0 + tk->rows_per_chunk < tk->w->rows ? r0 + tk->rows_per_chunk : tk->w->rows;
        tk->kernel(tk, r0, r1, i_thread);
    }
}


// The kernel for w on ctx; sets *phase1 to what it needs computed from x first.
enum mm_phase1 { MM_P1_NONE, MM_P1_QUANT, MM_P1_DIGITS, MM_P1_GGML };

static lp_mm_kernel_fn mm_pick(const struct lp_cpu_ctx *ctx, const struct lp_weight *w,
                               const void *packed, enum mm_phase1 *phase1) {
    *phase1 = MM_P1_NONE;
#if LP_HAVE_X86
    if (ctx->isa == LP_CPU_ISA_AVX512) {
        bool mlx = w->format == LP_WEIGHT_MLX_AFFINE;
        if (mlx && w->bits == 8 && ctx->quantize_activations && ctx->vnni) {
            *phase1 = MM_P1_QUANT;
            return mm_kernel_vnni_q8;
        }
        if (mlx && ctx->vnni && lp_mm_digits_fit(w)) {
            *phase1 = MM_P1_DIGITS;
            return w->bits == 8 ? lp_mm_kernel_digits_q8 : lp_mm_kernel_digits_q4;
        }
        if (w->format == LP_WEIGHT_GGML && packed) { // lp_cpu_weight_pack made it
            *phase1 = MM_P1_GGML;
            return lp_mm_ggml_kernel(w->ggml_type, ctx->quantize_activations);
        }
        switch (w->format) {
        case LP_WEIGHT_F32: return mm_kernel_tile_f32;
        case LP_WEIGHT_F16: return mm_kernel_tile_f16;
        case LP_WEIGHT_BF16: return mm_kernel_tile_bf16;
        case LP_WEIGHT_MLX_AFFINE: return w->bits == 8 ? mm_kernel_tile_q8 : mm_kernel_tile_q4;
        case LP_WEIGHT_GGML: break; // no VNNI or other shapes: generic
        }
    }
#endif
    return mm_kernel_generic;
}

// Phase 1 for the m tokens of tk (tk->x) into ctx->scratch; sets tk's
// pointers to the results.
static void mm_phase1_run(struct lp_cpu_ctx *ctx, struct mm_task *tk, enum mm_phase1 phase1) {
    const struct lp_weight *w = tk->w;
    int m = tk->n;
    bool inline_ = m == 1 || ctx->n_threads == 1;
    char *s = ctx->scratch;
#if LP_HAVE_X86
    if (phase1 == MM_P1_GGML) { // per token: digits, per-super-block vectors
        struct lp_mm_ggml_prep gp = {
            .x = tk->x, .n = m, .cols = w->cols, .type = w->ggml_type,
            .int8_x = ctx->quantize_activations,
            .stride = 8 * lp_mm_ggml_token_bytes(w->cols), .xd = (int8_t *)s,
            .tmp = ctx->thread_scratch, .tmp_bytes = ctx->thread_bytes,
        };
        if (inline_) lp_mm_ggml_prep_fn(&gp, 0, 1);
        else lp_cpu_pool_run(ctx->pool, lp_mm_ggml_prep_fn, &gp);
        tk->xq = gp.xd;
        tk->dg_stride = gp.stride;
        return;
    }
#endif
    int64_t ng = w->cols / w->group_size; // MLX paths below
    if (phase1 == MM_P1_QUANT) {
        int8_t *xq = (int8_t *)s;
        s += ((size_t)m * (size_t)w->cols + 63) / 64 * 64;
        float *xsum = (float *)s;
        float *xscale = xsum + (int64_t)m * ng;
        struct mm_prep prep = {
            .x = tk->x, .n = m, .cols = w->cols, .gs = w->group_size,
            .xsum = xsum, .xscale = xscale, .xq = xq,
        };
        if (inline_) mm_prep_fn(&prep, 0, 1);
        else lp_cpu_pool_run(ctx->pool, mm_prep_fn, &prep);
        tk->xsum = xsum;
        tk->xscale = xscale;
        tk->xq = xq;
    }
#if LP_HAVE_X86
    if (phase1 == MM_P1_DIGITS) { // digits [m][stride], then xsum [m][ng], xs [m][ng]
        int64_t stride = mm_dg_stride(w);
        int8_t *xd = (int8_t *)s;
        float *xsum = (float *)(s + (size_t)m * (size_t)stride);
        struct lp_mm_digits dg = {
            .x = tk->x, .n = m, .cols = w->cols, .gs = w->group_size, .q4 = w->bits == 4,
            .stride = stride, .xd = xd, .xsum = xsum, .xs = xsum + (int64_t)m * ng,
        };
        if (inline_) lp_mm_digits_prep_fn(&dg, 0, 1);
        else lp_cpu_pool_run(ctx->pool, lp_mm_digits_prep_fn, &dg);
        tk->xsum = dg.xsum;
        tk->xscale = dg.xs;
        tk->xq = xd;
        tk->dg_stride = stride;
    }
#endif
}

// ---- GGUF weights packed at upload ------------------------------------------

struct mm_pack_task {
    const struct lp_weight *w;
    uint8_t *dst;
    int64_t n_strips;
};

static void mm_pack_fn(void *arg, int i_thread, int n_threads) {
#if LP_HAVE_X86
    const struct mm_pack_task *t = arg;
    lp_mm_ggml_pack(t->w, t->dst, t->n_strips * i_thread / n_threads,
                    t->n_strips * (i_thread + 1) / n_threads);
#else
    (void)arg, (void)i_thread, (void)n_threads;
#endif
}

enum lp_status lp_cpu_weight_pack(struct lp_cpu_ctx *ctx, const struct lp_weight *w, void **packed,
                                  struct lp_error *err) {
    *packed = NULL;
#if LP_HAVE_X86
    if (w->format != LP_WEIGHT_GGML || ctx->isa != LP_CPU_ISA_AVX512 || !ctx->vnni) return LP_OK;
    size_t bytes = lp_mm_ggml_packed_bytes(w);
    if (bytes == 0) return LP_OK; // the generic path reads the blocks as they are
    // huge pages where the kernel grants them: a 1.7B model's copy is ~1 GB,
    // and 4 kB page faults would be most of the packing time
    const size_t huge = (size_t)2 << 20, rounded = (bytes + huge - 1) / huge * huge;
    uint8_t *dst = bytes >= huge ? aligned_alloc(huge, rounded) : aligned_alloc(LP_HOST_ALIGN, bytes);
#ifdef MADV_HUGEPAGE
    if (dst && bytes >= huge) madvise(dst, rounded, MADV_HUGEPAGE);
#endif
    if (!dst)
        return lp_error_set(err, LP_ERR_NOMEM,
                            "cpu: weight_upload: out of memory packing a [%lld, %lld] %s weight "
                            "(%zu bytes)",
                            (long long)w->rows, (long long)w->cols, lp_ggml_type_name(w->ggml_type),
                            bytes);
    struct mm_pack_task t = {.w = w, .dst = dst, .n_strips = (w->rows + 15) / 16};
    lp_cpu_pool_run(ctx->pool, mm_pack_fn, &t);
    *packed = dst;
#else
    (void)ctx, (void)w, (void)err;
#endif
    return LP_OK;
}

void lp_cpu_matmul(struct lp_cpu_ctx *ctx, float *out, const float *x, const struct lp_weight *w,
                   const void *packed, int n) {
    if (n <= 0) return;
    enum mm_phase1 phase1;
    lp_mm_kernel_fn kernel = mm_pick(ctx, w, packed, &phase1);
    int nth = ctx->n_threads;
    int64_t rpc = w->rows / ((int64_t)nth * 8);
    rpc = (rpc + 3) / 4 * 4;
    if (rpc < LP_MM_ROWS_MIN) rpc = LP_MM_ROWS_MIN;
    if (phase1 == MM_P1_GGML) rpc = (rpc + 15) / 16 * 16; // whole 16-row strips (matmul_ggml.c)

    // Tokens per pass: all of them unless phase 1 needs more scratch (at least
    // LP_MM_SCRATCH_T tokens fit: weight_upload reserved them). How the
    // tokens are chunked does not change any output.
    int chunk = n;
    if (phase1 != MM_P1_NONE) {
        size_t per = phase1 == MM_P1_DIGITS ? mm_digits_scratch(w->cols)
                     : phase1 == MM_P1_GGML ? mm_ggml_scratch(w->cols)
                                            : mm_token_scratch(w->cols);
        size_t fit = ctx->scratch_bytes / per;
        if (phase1 == MM_P1_GGML) fit = fit / 8 * 8; // whole 8-token groups (fit >= 64)
        if (fit < (size_t)chunk) chunk = (int)fit;
    }
    for (int t0 = 0; t0 < n; t0 += chunk) {
        int m = n - t0 < chunk ? n - t0 : chunk;
        struct mm_task tk = {
            .w = w,
            .x = x + (int64_t)t0 * w->cols,
            .out = out + (int64_t)t0 * w->rows,
            .n = m,
            .rows_per_chunk = rpc,
            .n_chunks = (w->rows + rpc - 1) / rpc,
            .packed = packed,
            .ctx = ctx,
            .kernel = kernel,
        };
        atomic_init(&tk.next, 0);
        if (phase1 != MM_P1_NONE) mm_phase1_run(ctx, &tk, phase1);
        if (tk.n_chunks == 1) kernel(&tk, 0, w->rows, 0);
        else lp_cpu_pool_run(ctx->pool, mm_task_fn, &tk);
    }
}
