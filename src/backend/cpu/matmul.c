// SPDX-License-Identifier: MIT
// matmul.c -- the CPU backend's weight kernels: out[n, rows] = x[n, cols] @ W^T
// for every weight format, on the thread pool, split over row chunks
// (LP_MM_ROWS_MIN+ weight rows each, handed out through an atomic counter).
//
// Paths (chosen per call from ctx->isa and the weight):
//  - generic:   dequantize one weight row into per-thread scratch, dot it with
//               every token row (portable C).
//  - avx512 prefill (every format, n >= LP_MM_PF_MIN, float activations): x
//               packed token-major per call into ctx->scratch; 6 weight rows
//               at a time dequantized to f32 once into thread scratch; a
//               6 rows x 64 tokens register tile of broadcast FMAs.
//  - avx512 tile (float formats, and MLX with 1 < n < LP_MM_PF_MIN): 4 weight
//               rows x 4 tokens per pass, weights loaded/dequantized once and
//               reused against the 4 tokens.
//  - avx512 decode (MLX, n == 1): codes streamed once; per group
//               acc = sum(x * q), row += scale * acc, plus sum_g bias_g * xsum_g
//               with xsum_g (per-group sums of x) computed once per call.
//  - vnni (MLX 8-bit with quantize_activations): x quantized per group to
//               int8 (symmetric, scale max|x|/127), u8 x s8 dot products
//               (vpdpbusd): dot = sum_g sw_g * sx_g * sum(q * xq) + bw_g * xsum_g.
//  - vnni exact decode (MLX 8-bit and 4-bit, n == 1, float activations, group
//               size a multiple of 64): x split per call into three int8 digits per
//               element (error ~2^-22 of the group's max |x|), u8 x s8 dot
//               products combined in int32, then one float FMA per 64 codes.
// Nothing here allocates: phase-1 results (xsum, int8 x or digits, x scales) and packed
// x go into ctx->scratch, sized in weight_upload; tokens are processed in
// chunks that fit.
#include <math.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>

#include "backend/cpu/matmul_i.h"


#define LP_MM_ROWS_MIN 16 // smallest row chunk handed to a thread
#define LP_MM_TILE_T 4    // tokens per pass of the tile kernels
#define LP_MM_PF_MIN 32   // fewest tokens that take the prefill path (16-31: the
                          // 4 x 4 tile measured faster)
#define LP_MM_PF_MR 6     // weight rows per prefill register tile
#define LP_MM_PF_NT 64    // tokens per prefill register tile (four vectors; the
                          // 6 x 4 accumulators measured best of 12x32, 8x48, 4x64)



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
        int64_t r_ = r0;                                                                           \
        for (; r_ + 4 <= r1; r_ += 4) mm_tile(FMT, 4, NT, w, r_, xt, ot);                          \
        for (; r_ < r1; r_++) mm_tile(FMT, 1, NT, w, r_, xt, ot);                                  \
    } while (0)

// Row chunk [r0, r1) against every token, LP_MM_TILE_T tokens per pass; the
// chunk's weights stay in L2 across passes.
#define MM_DEFINE_TILE_KERNEL(NAME, FMT)                                                           \
    static LP_AVX512 void NAME(const struct mm_task *tk, int64_t r0, int64_t r1, int i_thread) {   \
        const struct lp_weight *w = tk->w;                                                         \
        for (int t0 = 0; t0 < tk->n; t0 += LP_MM_TILE_T) {                                         \
            const float *xt = tk->x + (int64_t)t0 * w->cols;                                       \
            float *ot = tk->out + (int64_t)t0 * w->rows;                                           \
            int nt = tk->n - t0 < LP_MM_TILE_T ? tk->n - t0 : LP_MM_TILE_T;                        \
            if (nt == 4) MM_TILE_ROWS(FMT, 4);                                                     \
            else if (nt == 3) MM_TILE_ROWS(FMT, 3);                                                \
            else if (nt == 2) MM_TILE_ROWS(FMT, 2);                                                \
            else MM_TILE_ROWS(FMT, 1);                                                             \
        }                                                                                          \
    }

MM_DEFINE_TILE_KERNEL(mm_kernel_tile_f32, FMT_F32)
MM_DEFINE_TILE_KERNEL(mm_kernel_tile_f16, FMT_F16)
MM_DEFINE_TILE_KERNEL(mm_kernel_tile_bf16, FMT_BF16)
MM_DEFINE_TILE_KERNEL(mm_kernel_tile_q4, FMT_Q4)
MM_DEFINE_TILE_KERNEL(mm_kernel_tile_q8, FMT_Q8)

// Decode, RB rows of MLX weights against one token x (n == 1):
// out[r] = sum_g s_g * sum_{c in g}(x_c * q_c) + sum_g b_g * xsum_g.
LP_INLINE LP_AVX512 void mm_decode_rows(int fmt, int RB, const struct lp_weight *w, int64_t r0,
                                        const float *x, const float *xsum, float *out) {
    int64_t cols = w->cols, rb = mm_row_bytes(w);
    int gs = w->group_size;
    int64_t ng = cols / gs;
    const uint8_t *rowp[4];
    __m512 tot[4];
    for (int r = 0; r < RB; r++) {
        rowp[r] = (const uint8_t *)w->data + (r0 + r) * rb;
        tot[r] = _mm512_setzero_ps();
    }
    const uint16_t *scales = w->scales;
    for (int64_t g = 0; g < ng; g++) {
        __m512 gacc[4];
        for (int r = 0; r < RB; r++) gacc[r] = _mm512_setzero_ps();
        for (int64_t c = g * gs; c < (g + 1) * gs; c += 16) {
            __m512 xv = _mm512_loadu_ps(x + c);
            for (int r = 0; r < RB; r++) {
                MM_PREFETCH(fmt, rowp, r, c, RB * rb);
                gacc[r] = _mm512_fmadd_ps(mm_ld16(fmt, rowp[r], c, 0xffff), xv, gacc[r]);
            }
        }
        for (int r = 0; r < RB; r++) {
            float s = lp_host_half(w->scale_dtype, scales, (r0 + r) * ng + g);
            tot[r] = _mm512_fmadd_ps(gacc[r], _mm512_set1_ps(s), tot[r]);
        }
    }
    const uint16_t *biases = w->biases;
    for (int r = 0; r < RB; r++)
        out[r0 + r] = _mm512_reduce_add_ps(tot[r]) +
                      mm_half_dot(w->scale_dtype, biases + (r0 + r) * ng, xsum, ng);
}

#define MM_DEFINE_DECODE_KERNEL(NAME, FMT)                                                         \
    static LP_AVX512 void NAME(const struct mm_task *tk, int64_t r0, int64_t r1, int i_thread) {   \
        int64_t r = r0;                                                                            \
        for (; r + 4 <= r1; r += 4) mm_decode_rows(FMT, 4, tk->w, r, tk->x, tk->xsum, tk->out);    \
        for (; r < r1; r++) mm_decode_rows(FMT, 1, tk->w, r, tk->x, tk->xsum, tk->out);            \
    }

MM_DEFINE_DECODE_KERNEL(mm_kernel_decode_q4, FMT_Q4)
MM_DEFINE_DECODE_KERNEL(mm_kernel_decode_q8, FMT_Q8)

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

// ---- AVX-512 prefill (n >= LP_MM_PF_MIN, float activations) ---------------
// x is packed once per call into ctx->scratch as token blocks of
// LP_MM_PF_NT tokens, column-major: xp[blk][c][j] = x[blk * NT + j, c] (lanes
// past n are zero). Each thread dequantizes LP_MM_PF_MR weight rows at a time
// to f32 in its thread scratch (MLX: w = s * q + b, once per token tile), then an
// MR rows x NT tokens register tile runs over all columns:
// acc[r][tokens] += broadcast(w[r, c]) * xp[blk][c][tokens]. Each output is
// one sequential sum over c, so results do not depend on thread count,
// chunking or where a token sits in the batch.

// Dequantizes columns [c0, c1) of row r of w into dst[c1 - c0] (f32), 16
// columns per step; c0 is a multiple of 16 and (MLX) of the group size.
LP_INLINE LP_AVX512 void mm_pf_dequant(int fmt, const struct lp_weight *w, int64_t r, int64_t c0,
                                       int64_t c1, float *dst) {
    const uint8_t *row = (const uint8_t *)w->data + r * mm_row_bytes(w);
    if (fmt == FMT_Q4 || fmt == FMT_Q8) {
        int gs = w->group_size;
        int64_t ng = w->cols / gs;
        for (int64_t g = c0 / gs; g < c1 / gs; g++) {
            __m512 s = _mm512_set1_ps(lp_host_half(w->scale_dtype, w->scales, r * ng + g));
            __m512 b = _mm512_set1_ps(lp_host_half(w->scale_dtype, w->biases, r * ng + g));
            for (int64_t c = g * gs; c < (g + 1) * gs; c += 16)
                _mm512_storeu_ps(dst + c - c0, _mm512_fmadd_ps(mm_ld16(fmt, row, c, 0xffff), s, b));
        }
    } else {
        for (int64_t c = c0; c < c1; c += 16) {
            __mmask16 m = c1 - c >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (c1 - c)) - 1u);
            _mm512_mask_storeu_ps(dst + c - c0, m, mm_ld16(fmt, row, c, m));
        }
    }
}

// MR dequantized rows wd[r * ld + c] x NV * 16 packed tokens xp[c * NT + j]:
// tmp[r][j] = sum_c wd[r, c] * xp[c, j].
LP_INLINE LP_AVX512 void mm_pf_micro(int NV, const float *wd, int64_t ld, const float *xp,
                                     int64_t cols, float tmp[LP_MM_PF_MR][LP_MM_PF_NT]) {
    __m512 acc[LP_MM_PF_MR][LP_MM_PF_NT / 16];
    for (int r = 0; r < LP_MM_PF_MR; r++)
        for (int v = 0; v < NV; v++) acc[r][v] = _mm512_setzero_ps();
    for (int64_t c = 0; c < cols; c++) {
        __m512 xv[LP_MM_PF_NT / 16];
        for (int v = 0; v < NV; v++) xv[v] = _mm512_load_ps(xp + c * LP_MM_PF_NT + 16 * v);
        for (int r = 0; r < LP_MM_PF_MR; r++) {
            __m512 wb = _mm512_set1_ps(wd[r * ld + c]);
            for (int v = 0; v < NV; v++) acc[r][v] = _mm512_fmadd_ps(wb, xv[v], acc[r][v]);
        }
    }
    for (int r = 0; r < LP_MM_PF_MR; r++)
        for (int v = 0; v < NV; v++) _mm512_storeu_ps(&tmp[r][16 * v], acc[r][v]);
}

// Row chunk [r0, r1) against every token: per token tile (its packed x,
// NT * cols floats, is then the only large stream and stays in L2 for
// 2048-column weights), per LP_MM_PF_MR rows: dequantize the rows (once per
// 64 tokens) and run the register tile. (Blocking the columns too, with
// partial sums added into out, measured slower here: ~10% at 6144 columns.)
LP_INLINE LP_AVX512 void mm_pf_rows(int fmt, const struct mm_task *tk, int64_t r0, int64_t r1,
                                    int i_thread) {
    const struct lp_weight *w = tk->w;
    int64_t cols = w->cols, rows = w->rows, ld = (cols + 15) / 16 * 16;
    float *wd = (float *)((char *)tk->ctx->thread_scratch +
                          (size_t)i_thread * tk->ctx->thread_bytes);
    float tmp[LP_MM_PF_MR][LP_MM_PF_NT];
    for (int t0 = 0; t0 < tk->n; t0 += LP_MM_PF_NT) {
        int nt = tk->n - t0 < LP_MM_PF_NT ? tk->n - t0 : LP_MM_PF_NT;
        const float *xp = tk->xp + (int64_t)t0 * cols;
        for (int64_t rb = r0; rb < r1; rb += LP_MM_PF_MR) {
            int nr = r1 - rb < LP_MM_PF_MR ? (int)(r1 - rb) : LP_MM_PF_MR;
            for (int r = 0; r < nr; r++) mm_pf_dequant(fmt, w, rb + r, 0, cols, wd + r * ld);
            for (int r = nr; r < LP_MM_PF_MR; r++)
                memset(wd + r * ld, 0, (size_t)cols * sizeof(float));
            switch ((nt + 15) / 16) {
            case 4: mm_pf_micro(4, wd, ld, xp, cols, tmp); break;
            case 3: mm_pf_micro(3, wd, ld, xp, cols, tmp); break;
            case 2: mm_pf_micro(2, wd, ld, xp, cols, tmp); break;
            default: mm_pf_micro(1, wd, ld, xp, cols, tmp); break;
            }
            for (int t = 0; t < nt; t++)
                for (int r = 0; r < nr; r++) tk->out[(int64_t)(t0 + t) * rows + rb + r] = tmp[r][t];
        }
    }
}

#define MM_DEFINE_PF_KERNEL(NAME, FMT)                                                             \
    static LP_AVX512 void NAME(const struct mm_task *tk, int64_t r0, int64_t r1, int i_thread) {   \
        mm_pf_rows(FMT, tk, r0, r1, i_thread);                                                     \
    }

MM_DEFINE_PF_KERNEL(mm_kernel_pf_f32, FMT_F32)
MM_DEFINE_PF_KERNEL(mm_kernel_pf_f16, FMT_F16)
MM_DEFINE_PF_KERNEL(mm_kernel_pf_bf16, FMT_BF16)
MM_DEFINE_PF_KERNEL(mm_kernel_pf_q4, FMT_Q4)
MM_DEFINE_PF_KERNEL(mm_kernel_pf_q8, FMT_Q8)

#endif // LP_HAVE_X86

// ---- phase 1: per-group sums (and int8 quantization) of x -----------------

struct mm_prep {
    const float *x; // [n, cols]
    int n;
    int64_t cols;
    int gs;
    bool quantize;
    float *xsum;   // [n, ng]
    float *xscale; // [n, ng]   (quantize only)
    int8_t *xq;    // [n, cols] (quantize only)
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
            if (!p->quantize) continue;
            float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
            p->xscale[(int64_t)t * ng + g] = amax / 127.0f;
            int8_t *q = p->xq + (int64_t)t * p->cols + g * p->gs;
            for (int i = 0; i < p->gs; i++) q[i] = (int8_t)lrintf(xg[i] * inv);
        }
    }
}

// Packs x [n, cols] into xp [ceil(n / NT), cols, NT] (see the prefill path),
// zero past n; each thread takes a slice of the columns.
struct mm_pack {
    const float *x; // [n, cols]
    int n;
    int64_t cols;
    float *xp;
};

static void mm_pack_fn(void *arg, int i_thread, int n_threads) {
    const struct mm_pack *p = arg;
    int64_t c0 = p->cols * i_thread / n_threads, c1 = p->cols * (i_thread + 1) / n_threads;
    for (int t0 = 0; t0 < p->n; t0 += LP_MM_PF_NT) {
        float *blk = p->xp + (int64_t)t0 * p->cols;
        for (int64_t c = c0; c < c1; c++)
            for (int j = 0; j < LP_MM_PF_NT; j++)
                blk[c * LP_MM_PF_NT + j] =
                    t0 + j < p->n ? p->x[(int64_t)(t0 + j) * p->cols + c] : 0.0f;
    }
}

// Scratch bytes one token needs in phase 1 for a weight of `cols` columns
// (group size >= 32): int8 x, then x sums and x scales.
static size_t mm_token_scratch(int64_t cols) {
    int64_t ng = cols / 32 + 1;
    return (size_t)(cols + 64) + (size_t)ng * 2 * sizeof(float) + 64;
}

enum lp_status lp_cpu_scratch_reserve(struct lp_cpu_ctx *ctx, int64_t cols, struct lp_error *err) {
    // Shared: room for LP_MM_TILE_T tokens at least (phase 1), and for one
    // packed token block of the prefill path.
    size_t shared = mm_token_scratch(cols) * LP_MM_TILE_T;
    size_t packed = (size_t)cols * LP_MM_PF_NT * sizeof(float);
    if (packed > shared) shared = packed;
    if (shared > ctx->scratch_bytes) {
        void *p = aligned_alloc(LP_HOST_ALIGN, (shared + LP_HOST_ALIGN - 1) / LP_HOST_ALIGN *
                                                   LP_HOST_ALIGN);
        if (!p) return lp_error_set(err, LP_ERR_NOMEM, "cpu: scratch: out of memory (%zu bytes)", shared);
        free(ctx->scratch);
        ctx->scratch = p;
        ctx->scratch_bytes = shared;
    }
    // Per thread: LP_MM_PF_MR dequantized rows (row stride cols rounded to 16).
    size_t per_thread = ((size_t)(cols + 15) / 16 * 16 * LP_MM_PF_MR * sizeof(float) +
                         LP_HOST_ALIGN - 1) / LP_HOST_ALIGN * LP_HOST_ALIGN;
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

void lp_cpu_matmul(struct lp_cpu_ctx *ctx, float *out, const float *x, const struct lp_weight *w,
                   int n) {
    if (n <= 0) return;
    bool mlx = w->format == LP_WEIGHT_MLX_AFFINE;
    void (*kernel)(const struct mm_task *, int64_t, int64_t, int) = mm_kernel_generic;
    bool need_sums = false, quantize = false, pack = false, digits = false;
    (void)digits; // x86 only
#if LP_HAVE_X86
    if (ctx->isa == LP_CPU_ISA_AVX512) {
        if (mlx && w->bits == 8 && ctx->quantize_activations && ctx->vnni) {
            kernel = mm_kernel_vnni_q8;
            need_sums = quantize = true;
        } else if (mlx && n == 1 && ctx->vnni && !ctx->quantize_activations &&
                   w->group_size % LP_MM_DG_BLK == 0) {
            kernel = w->bits == 8 ? lp_mm_kernel_vnni_exact_q8 : lp_mm_kernel_vnni_exact_q4;
            digits = true;
        } else if (n >= LP_MM_PF_MIN) {
            pack = true;
            switch (w->format) {
            case LP_WEIGHT_F32: kernel = mm_kernel_pf_f32; break;
            case LP_WEIGHT_F16: kernel = mm_kernel_pf_f16; break;
            case LP_WEIGHT_BF16: kernel = mm_kernel_pf_bf16; break;
            case LP_WEIGHT_MLX_AFFINE:
                kernel = w->bits == 8 ? mm_kernel_pf_q8 : mm_kernel_pf_q4;
                break;
            }
        } else if (mlx && n == 1) {
            kernel = w->bits == 8 ? mm_kernel_decode_q8 : mm_kernel_decode_q4;
            need_sums = true;
        } else {
            switch (w->format) {
            case LP_WEIGHT_F32: kernel = mm_kernel_tile_f32; break;
            case LP_WEIGHT_F16: kernel = mm_kernel_tile_f16; break;
            case LP_WEIGHT_BF16: kernel = mm_kernel_tile_bf16; break;
            case LP_WEIGHT_MLX_AFFINE:
                kernel = w->bits == 8 ? mm_kernel_tile_q8 : mm_kernel_tile_q4;
                break;
            }
        }
    }
#endif
    int nth = ctx->n_threads;
    int64_t rpc = w->rows / ((int64_t)nth * 8);
    rpc = (rpc + 3) / 4 * 4;
    if (rpc < LP_MM_ROWS_MIN) rpc = LP_MM_ROWS_MIN;
    if (pack) rpc = (rpc + LP_MM_PF_MR - 1) / LP_MM_PF_MR * LP_MM_PF_MR; // whole register tiles

    // Tokens per pass: all of them unless phase 1 needs scratch.
    int chunk = n;
    if (need_sums) {
        size_t per = mm_token_scratch(w->cols);
        size_t fit = ctx->scratch_bytes / per;
        if (fit < (size_t)chunk) chunk = (int)fit; // >= LP_MM_TILE_T (weight_upload reserved it)
    }
    if (pack) {
        size_t per = (size_t)w->cols * LP_MM_PF_NT * sizeof(float);
        size_t fit = ctx->scratch_bytes / per * LP_MM_PF_NT; // >= NT (weight_upload reserved it)
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
            .ctx = ctx,
            .kernel = kernel,
        };
        atomic_init(&tk.next, 0);
        if (need_sums) {
            int64_t ng = w->cols / w->group_size;
            char *s = ctx->scratch;
            int8_t *xq = (int8_t *)s;
            s += ((size_t)m * (size_t)w->cols + 63) / 64 * 64;
            float *xsum = (float *)s;
            float *xscale = xsum + (int64_t)m * ng;
            struct mm_prep prep = {
                .x = tk.x, .n = m, .cols = w->cols, .gs = w->group_size, .quantize = quantize,
                .xsum = xsum, .xscale = xscale, .xq = xq,
            };
            if (m == 1 || nth == 1) mm_prep_fn(&prep, 0, 1);
            else lp_cpu_pool_run(ctx->pool, mm_prep_fn, &prep);
            tk.xsum = xsum;
            tk.xscale = xscale;
            tk.xq = xq;
        }
#if LP_HAVE_X86
        if (digits) { // n == 1: digits [cols / 64][3][64] (4-bit: [cols / 128, rounded
                      // up][3][128]), then xsum [ng], sx [ng]: at most 3 * (cols + 64) +
                      // 64 + 8 * ng bytes, within the LP_MM_TILE_T tokens of phase 1
                      // (mm_token_scratch) that weight_upload reserved
            int64_t ng = w->cols / w->group_size;
            char *s = ctx->scratch;
            int8_t *xd = (int8_t *)s;
            float *xsum = (float *)(s + ((size_t)(w->cols + 64) * 3 + 63) / 64 * 64);
            float *xs = xsum + ng;
            lp_mm_digits_prep(tk.x, w->cols, w->group_size, w->bits == 4, xd, xsum, xs);
            tk.xsum = xsum;
            tk.xscale = xs;
            tk.xq = xd;
        }
#endif
        if (pack) {
            struct mm_pack pk = {.x = tk.x, .n = m, .cols = w->cols, .xp = ctx->scratch};
            if (nth == 1) mm_pack_fn(&pk, 0, 1);
            else lp_cpu_pool_run(ctx->pool, mm_pack_fn, &pk);
            tk.xp = ctx->scratch;
        }
        if (tk.n_chunks == 1) kernel(&tk, 0, w->rows, 0);
        else lp_cpu_pool_run(ctx->pool, mm_task_fn, &tk);
    }
}
