// SPDX-License-Identifier: MIT
// ref.c -- the scalar reference backend: single-threaded plain loops over
// host memory, written to be obviously correct rather than fast. Every other
// backend is tested against it. Weights are dequantized element by element
// through lp_host_weight_at; all accumulation is float32 in index order.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend_i.h"
#include "backend/host.h"

#define REF_NAME "ref"

struct ref_ctx {
    int unused;
};

static const char *ref_name(void *ctx) { return REF_NAME; }
static int ref_n_threads(void *ctx) { return 1; }
static void ref_destroy(void *ctx) { free(ctx); }

static enum lp_status ref_buf_alloc(void *ctx, size_t bytes, struct lp_buf **out,
                                    struct lp_error *err) {
    return lp_host_buf_alloc(REF_NAME, bytes, out, err);
}

static void ref_buf_free(void *ctx, struct lp_buf *buf) { lp_host_buf_free(buf); }

static enum lp_status ref_buf_write(void *ctx, struct lp_buf *dst, size_t offset, const void *src,
                                    size_t bytes, struct lp_error *err) {
    return lp_host_buf_write(REF_NAME, dst, offset, src, bytes, err);
}

static enum lp_status ref_buf_read(void *ctx, const struct lp_buf *src, size_t offset, void *dst,
                                   size_t bytes, struct lp_error *err) {
    return lp_host_buf_read(REF_NAME, src, offset, dst, bytes, err);
}

static enum lp_status ref_weight_upload(void *ctx, const struct lp_weight *w,
                                        struct lp_bweight **out, struct lp_error *err) {
    *out = NULL;
    enum lp_status st = lp_host_weight_check(REF_NAME, w, err);
    if (st != LP_OK) return st;
    struct lp_bweight *bw = malloc(sizeof *bw);
    if (!bw) return lp_error_set(err, LP_ERR_NOMEM, REF_NAME ": weight_upload: out of memory");
    bw->w = *w;
    bw->packed = NULL; // ref reads the model's buffers as they are
    *out = bw;
    return LP_OK;
}

static void ref_weight_free(void *ctx, struct lp_bweight *w) { free(w); }

// out[i, :] = emb[ids[i], :]; an id outside [0, rows) gives a zero row.
static void ref_embed(void *ctx, struct lp_buf *out, const struct lp_bweight *emb,
                      const int32_t *ids, int n) {
    const struct lp_weight *w = &emb->w;
    float *o = out->data;
    for (int i = 0; i < n; i++) {
        for (int64_t c = 0; c < w->cols; c++)
            o[(int64_t)i * w->cols + c] =
                (ids[i] >= 0 && ids[i] < w->rows) ? lp_host_weight_at(w, ids[i], c) : 0.0f;
    }
}

// out[t, r] = sum_c x[t, c] * w[r, c]
static void ref_matmul(void *ctx, struct lp_buf *out, const struct lp_buf *x,
                       const struct lp_bweight *bw, int n) {
    const struct lp_weight *w = &bw->w;
    const float *xp = x->data;
    float *o = out->data;
    for (int t = 0; t < n; t++) {
        for (int64_t r = 0; r < w->rows; r++) {
            float acc = 0.0f;
            for (int64_t c = 0; c < w->cols; c++)
                acc += xp[(int64_t)t * w->cols + c] * lp_host_weight_at(w, r, c);
            o[(int64_t)t * w->rows + r] = acc;
        }
    }
}

// HF Qwen3RMSNorm: x * rsqrt(mean(x^2) + eps) * weight, in float32.
static void ref_rmsnorm(void *ctx, struct lp_buf *out, const struct lp_buf *x,
                        const struct lp_buf *weight, int n_rows, int dim, float eps) {
    const float *xp = x->data, *wp = weight->data;
    float *o = out->data;
    for (int r = 0; r < n_rows; r++) {
        const float *xr = xp + (int64_t)r * dim;
        float ss = 0.0f;
        for (int i = 0; i < dim; i++) ss += xr[i] * xr[i];
        float inv = 1.0f / sqrtf(ss / (float)dim + eps);
        for (int i = 0; i < dim; i++) o[(int64_t)r * dim + i] = xr[i] * inv * wp[i];
    }
}

// HF rotate_half: x1 = x[:half], x2 = x[half:];
// out = [x1 cos - x2 sin, x2 cos + x1 sin], angle_j = pos * theta^(-2j/head_dim).
static void ref_rope(void *ctx, struct lp_buf *x, const int32_t *pos, int n, int n_heads,
                     int head_dim, float theta) {
    float *xp = x->data;
    int half = head_dim / 2;
    for (int i = 0; i < n; i++) {
        for (int h = 0; h < n_heads; h++) {
            float *v = xp + ((int64_t)i * n_heads + h) * head_dim;
            for (int j = 0; j < half; j++) {
                float inv_freq = 1.0f / powf(theta, (float)(2 * j) / (float)head_dim);
                float angle = (float)pos[i] * inv_freq;
                float c = cosf(angle), s = sinf(angle);
                float x1 = v[j], x2 = v[j + half];
                v[j] = x1 * c - x2 * s;
                v[j + half] = x2 * c + x1 * s;
            }
        }
    }
}

static void ref_kv_store(void *ctx, struct lp_buf *k_cache, struct lp_buf *v_cache,
                         const struct lp_kv_geom *geom, const struct lp_buf *k,
                         const struct lp_buf *v, const int32_t *slot, int n) {
    int64_t row = (int64_t)geom->n_kv_heads * geom->head_dim;
    int64_t n_slots = (int64_t)geom->n_blocks * geom->block_size;
    const float *kp = k->data, *vp = v->data;
    for (int i = 0; i < n; i++) {
        if (slot[i] < 0 || slot[i] >= n_slots) continue; // contract violation: skip
        for (int64_t e = 0; e < row; e++) {
            float kv = kp[i * row + e], vv = vp[i * row + e];
            int64_t at = slot[i] * row + e;
            if (geom->dtype == LP_DTYPE_BF16) {
                ((uint16_t *)k_cache->data)[at] = lp_f32_to_bf16(kv);
                ((uint16_t *)v_cache->data)[at] = lp_f32_to_bf16(vv);
            } else {
                ((float *)k_cache->data)[at] = kv;
                ((float *)v_cache->data)[at] = vv;
            }
        }
    }
}

static float ref_cache_at(const struct lp_buf *cache, enum lp_dtype dt, int64_t i) {
    return dt == LP_DTYPE_BF16 ? lp_bf16_to_f32(((const uint16_t *)cache->data)[i])
                               : ((const float *)cache->data)[i];
}

// Element offset of position p's row for kv head kvh in a K or V cache.
static int64_t ref_kv_base(const struct lp_kv_geom *g, const struct lp_attn_seg *seg, int p,
                           int kvh) {
    int bs = g->block_size;
    return ((int64_t)seg->block_table[p / bs] * bs + p % bs) * g->n_kv_heads * g->head_dim +
           (int64_t)kvh * g->head_dim;
}

// q_h . k_p (unscaled), in float, in order.
static float ref_score(const float *qh, const struct lp_buf *k_cache, const struct lp_kv_geom *g,
                       const struct lp_attn_seg *seg, int p, int kvh) {
    int64_t base = ref_kv_base(g, seg, p, kvh);
    float dot = 0.0f;
    for (int d = 0; d < g->head_dim; d++) dot += qh[d] * ref_cache_at(k_cache, g->dtype, base + d);
    return dot;
}

// Two passes per (token, head): the max score, then exp-weighted sum of v.
static void ref_attention(void *ctx, struct lp_buf *out, const struct lp_buf *q,
                          const struct lp_buf *k_cache, const struct lp_buf *v_cache,
                          const struct lp_kv_geom *geom, int n_heads,
                          const struct lp_attn_seg *segs, int n_segs) {
    int hd = geom->head_dim, bs = geom->block_size;
    int group = n_heads / geom->n_kv_heads;
    float scale = 1.0f / sqrtf((float)hd);
    const float *qp = q->data;
    float *o = out->data;
    int64_t t = 0; // row of q / out
    for (int s = 0; s < n_segs; s++) {
        const struct lp_attn_seg *seg = &segs[s];
        for (int i = 0; i < seg->n_tokens; i++, t++) {
            int n_ctx = seg->pos0 + i + 1;
            for (int h = 0; h < n_heads; h++) {
                int kvh = h / group;
                const float *qh = qp + (t * n_heads + h) * hd;
                float *oh = o + (t * n_heads + h) * hd;
                if (n_ctx > seg->n_blocks * bs) n_ctx = seg->n_blocks * bs; // table's end
                float max = -INFINITY;
                for (int p = 0; p < n_ctx; p++) {
                    float sc = ref_score(qh, k_cache, geom, seg, p, kvh) * scale;
                    if (sc > max) max = sc;
                }
                for (int d = 0; d < hd; d++) oh[d] = 0.0f;
                float sum = 0.0f;
                for (int p = 0; p < n_ctx; p++) {
                    int64_t base = ref_kv_base(geom, seg, p, kvh);
                    float e = expf(ref_score(qh, k_cache, geom, seg, p, kvh) * scale - max);
                    sum += e;
                    for (int d = 0; d < hd; d++)
                        oh[d] += e * ref_cache_at(v_cache, geom->dtype, base + d);
                }
                for (int d = 0; d < hd; d++) oh[d] = sum > 0.0f ? oh[d] / sum : 0.0f;
            }
        }
    }
}

static void ref_silu_mul(void *ctx, struct lp_buf *out, const struct lp_buf *gate,
                         const struct lp_buf *up, int64_t n) {
    const float *g = gate->data, *u = up->data;
    float *o = out->data;
    for (int64_t i = 0; i < n; i++) o[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

static void ref_add(void *ctx, struct lp_buf *x, const struct lp_buf *y, int64_t n) {
    float *xp = x->data;
    const float *yp = y->data;
    for (int64_t i = 0; i < n; i++) xp[i] += yp[i];
}

static void ref_gather_rows(void *ctx, struct lp_buf *dst, const struct lp_buf *src,
                            const int32_t *src_row, int n, int cols) {
    float *d = dst->data;
    const float *s = src->data;
    for (int i = 0; i < n; i++)
        memmove(d + (int64_t)i * cols, s + (int64_t)src_row[i] * cols, (size_t)cols * sizeof(float));
}

static void ref_argmax_rows(void *ctx, struct lp_buf *ids, const struct lp_buf *x, int n_rows,
                            int cols) {
    lp_host_argmax_rows(ids, x, n_rows, cols, 0, n_rows);
}

static const struct lp_backend_i ref_iface = {
    /* .name          = */ ref_name,
    /* .n_threads     = */ ref_n_threads,
    /* .destroy       = */ ref_destroy,
    /* .buf_alloc     = */ ref_buf_alloc,
    /* .buf_free      = */ ref_buf_free,
    /* .buf_write     = */ ref_buf_write,
    /* .buf_read      = */ ref_buf_read,
    /* .weight_upload = */ ref_weight_upload,
    /* .weight_free   = */ ref_weight_free,
    /* .embed         = */ ref_embed,
    /* .matmul        = */ ref_matmul,
    /* .rmsnorm       = */ ref_rmsnorm,
    /* .rope          = */ ref_rope,
    /* .kv_store      = */ ref_kv_store,
    /* .attention     = */ ref_attention,
    /* .silu_mul      = */ ref_silu_mul,
    /* .add           = */ ref_add,
    /* .gather_rows   = */ ref_gather_rows,
    /* .sync          = */ NULL,
    /* .device_info   = */ NULL,
    /* .batch_setup   = */ NULL,
    /* .step_begin    = */ NULL,
    /* .step_end      = */ NULL,
    /* .matmul_multi  = */ NULL,
    /* .matmul_add    = */ NULL,
    /* .matmul_swiglu = */ NULL,
    /* .qk_norm_rope_store = */ NULL,
    /* .argmax_rows   = */ ref_argmax_rows,
};

enum lp_status lp_backend_ref_create(struct lp_backend **out, struct lp_error *err) {
    *out = NULL;
    struct ref_ctx *ctx = calloc(1, sizeof *ctx);
    if (!ctx) return lp_error_set(err, LP_ERR_NOMEM, REF_NAME ": create: out of memory");
    enum lp_status st = lp_backend_wrap(out, &ref_iface, ctx, err);
    if (st != LP_OK) free(ctx);
    return st;
}
