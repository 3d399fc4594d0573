// SPDX-License-Identifier: MIT
// matmul_digits.c -- the exact VNNI decode of MLX 8-bit and 4-bit weights
// (one token, float activations, groups a multiple of 64): activations are
// split into three int8 digits per group so that u8 x s8 dot products
// (vpdpbusd) compute what the float path computes, at a third of its
// 512-bit operations per weight byte. Chosen by matmul.c.
#include <math.h>
#include <string.h>

#include "backend/cpu/matmul_i.h"

#if LP_HAVE_X86

// ---- vnni exact decode (MLX 8-bit, n == 1, float activations) --------------
// x is split once per call (mm_digits_prep) per group into three int8
// digits against sx_g = max|x_g| / 127:
//   x ~= sx_g * (d0 + d1 / 128 + d2 / 16384),  |d0| <= 127, |d1|, |d2| <= 64,
// error <= sx_g * 2^-15 (~2^-22 of the group's max |x|, about f32 level).
// Per 64 codes (one zmm; groups are whole multiples of 64) and row, Horner in
// int32: a = ((q.d0) * 128 + q.d1) * 128 + q.d2 (three vpdpbusd, two shifts;
// a lane sums 4 codes: |a| <= 4 * 255 * (127 * 16384 + 64 * 128 + 64)
// = 2130804480 < 2^31), then tot += float(a) * (sw_g * sx_g).
// out[r] = sum(tot) / 16384 + sum_g bw_g * xsum_g, xsum from the exact x as in
// decode (the power of two last keeps sw * sx normal for tiny x).
// Every row is one fixed sequence of operations: same bits for any thread count.

// The three digits of u (16 lanes, x / sx) as int8 into o, o + stride, o + 2 * stride.
#define MM_DIGITS16(u, o, stride)                                                                  \
    do {                                                                                           \
        __m512 d0_ = _mm512_roundscale_ps(u, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);       \
        __m512 r1_ = _mm512_mul_ps(_mm512_sub_ps(u, d0_), k128); /* exact */                       \
        __m512 d1_ = _mm512_roundscale_ps(r1_, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);     \
        __m512 r2_ = _mm512_mul_ps(_mm512_sub_ps(r1_, d1_), k128); /* exact */                     \
        __m512 d2_ = _mm512_roundscale_ps(r2_, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);     \
        _mm_storeu_si128((__m128i *)(o), _mm512_cvtsepi32_epi8(_mm512_cvttps_epi32(d0_)));         \
        _mm_storeu_si128((__m128i *)((o) + (stride)),                                             \
                         _mm512_cvtsepi32_epi8(_mm512_cvttps_epi32(d1_)));                         \
        _mm_storeu_si128((__m128i *)((o) + 2 * (stride)),                                         \
                         _mm512_cvtsepi32_epi8(_mm512_cvttps_epi32(d2_)));                         \
    } while (0)

// Digits of x [cols] into xd [cols / 64][3][64], per-group sums into xsum and
// sx_g into xs [ng]. gs is a multiple of 64.
LP_VNNI void lp_mm_digits_prep(const float *x, int64_t cols, int gs, int q4, int8_t *xd,
                                   float *xsum, float *xs) {
    int64_t ng = cols / gs;
    const __m512 sgn = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
    const __m512 k128 = _mm512_set1_ps(128.0f);
    for (int64_t g = 0; g < ng; g++) {
        const float *xg = x + g * gs;
        __m512 vm = _mm512_setzero_ps();
        for (int i = 0; i < gs; i += 16)
            vm = _mm512_max_ps(vm, _mm512_and_ps(_mm512_loadu_ps(xg + i), sgn));
        // The sum in the same order as mm_prep_fn (sequential), so xsum (and
        // the bias term) match the float decode path bit for bit.
        float sum = 0.0f;
        for (int i = 0; i < gs; i++) sum += xg[i];
        xsum[g] = sum;
        float amax = _mm512_reduce_max_ps(vm);
        float sx = amax / 127.0f;
        if (!(sx > 0.0f) || !isfinite(sx)) sx = 0.0f; // zero group (or inf/NaN: xsum carries it)
        xs[g] = sx;
        __m512 vsx = _mm512_set1_ps(sx > 0.0f ? sx : 1.0f);
        if (q4) { // 32 columns per step, split into even and odd elements
            const __m512i ev = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6,
                                                4, 2, 0);
            const __m512i od = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7,
                                                5, 3, 1);
            for (int i = 0; i < gs; i += 32) {
                int64_t c = g * gs + i;
                int8_t *blk = xd + (c / LP_MM_Q4_BLK) * 3 * LP_MM_Q4_BLK + c % LP_MM_Q4_BLK / 2;
                __m512 a = _mm512_loadu_ps(xg + i), b = _mm512_loadu_ps(xg + i + 16);
                for (int h = 0; h < 2; h++) { // h = 0: even elements, h = 1: odd
                    __m512 u = sx > 0.0f
                                   ? _mm512_div_ps(_mm512_permutex2var_ps(a, h ? od : ev, b), vsx)
                                   : _mm512_setzero_ps();
                    int8_t *o = blk + h * (LP_MM_Q4_BLK / 2);
                    MM_DIGITS16(u, o, LP_MM_Q4_BLK);
                }
            }
            continue;
        }
        for (int i = 0; i < gs; i += 16) {
            int64_t c = g * gs + i;
            int8_t *blk = xd + (c / LP_MM_DG_BLK) * 3 * LP_MM_DG_BLK + c % LP_MM_DG_BLK;
            __m512 u = sx > 0.0f ? _mm512_div_ps(_mm512_loadu_ps(xg + i), vsx)
                                 : _mm512_setzero_ps();
            MM_DIGITS16(u, blk, LP_MM_DG_BLK);
        }
    }
    // 4-bit with cols % 128 == 64: the last block is half full; zero its unused
    // digits (the weight side loads zeros there).
    if (q4 && cols % LP_MM_Q4_BLK) {
        int8_t *blk = xd + cols / LP_MM_Q4_BLK * 3 * LP_MM_Q4_BLK;
        for (int k = 0; k < 6; k++) memset(blk + k * 64 + 32, 0, 32);
    }
}

// RB rows of MLX 8-bit weights against the digits of one token.
LP_INLINE LP_VNNI void mm_vnni_exact_rows(int RB, const struct lp_weight *w, int64_t r0,
                                          const int8_t *xd, const float *xs, const float *xsum,
                                          float *out) {
    int64_t cols = w->cols;
    int gs = w->group_size;
    int64_t ng = cols / gs;
    int bpg = gs / LP_MM_DG_BLK; // digit blocks per group
    enum { GC = 16 };            // groups per scale chunk
    const uint8_t *rowp[4];
    __m512 tot[4];
    for (int r = 0; r < RB; r++) {
        rowp[r] = (const uint8_t *)w->data + (r0 + r) * cols;
        tot[r] = _mm512_setzero_ps();
    }
    int hfmt = w->scale_dtype == LP_DTYPE_BF16 ? FMT_BF16 : FMT_F16;
    const uint16_t *scales = w->scales;
    float mul[4][GC];
    for (int64_t g0 = 0; g0 < ng; g0 += GC) {
        int nb = ng - g0 < GC ? (int)(ng - g0) : GC;
        __mmask16 m = (__mmask16)((1u << nb) - 1u);
        __m512 xsv = _mm512_maskz_loadu_ps(m, xs + g0);
        for (int r = 0; r < RB; r++) { // mul[r][i] = sw * sx of group g0 + i
            const uint8_t *sw = (const uint8_t *)(scales + (r0 + r) * ng + g0);
            _mm512_storeu_ps(mul[r], _mm512_mul_ps(mm_ld16(hfmt, sw, 0, m), xsv));
        }
        for (int gi = 0; gi < nb; gi++) {
            int64_t cg = (g0 + gi) * gs;
            for (int b = 0; b < bpg; b++) {
                int64_t c = cg + (int64_t)b * LP_MM_DG_BLK;
                const int8_t *blk = xd + c * 3;
                __m512i d0 = _mm512_loadu_si512(blk);
                __m512i d1 = _mm512_loadu_si512(blk + LP_MM_DG_BLK);
                __m512i d2 = _mm512_loadu_si512(blk + 2 * LP_MM_DG_BLK);
                for (int r = 0; r < RB; r++) {
                    // Next row block, into L2 (T1): measured 22-25 GB/s from
                    // DRAM on one thread against 11 GB/s with T0 (L1), whose
                    // fills stall the loads; T2 about the same, NTA as T0.
                    _mm_prefetch((const char *)rowp[r] + c + RB * cols, _MM_HINT_T1);
                    __m512i q = _mm512_loadu_si512(rowp[r] + c);
                    __m512i a = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q, d0);
                    a = _mm512_dpbusd_epi32(_mm512_slli_epi32(a, 7), q, d1);
                    a = _mm512_dpbusd_epi32(_mm512_slli_epi32(a, 7), q, d2);
                    tot[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a), _mm512_set1_ps(mul[r][gi]),
                                             tot[r]);
                }
            }
        }
    }
    const uint16_t *biases = w->biases;
    for (int r = 0; r < RB; r++)
        out[r0 + r] = _mm512_reduce_add_ps(tot[r]) * (1.0f / 16384.0f) +
                      mm_half_dot(w->scale_dtype, biases + (r0 + r) * ng, xsum, ng);
}

LP_VNNI void lp_mm_kernel_vnni_exact_q8(const struct mm_task *tk, int64_t r0, int64_t r1,
                                            int i_thread) {
    (void)i_thread;
    int64_t r = r0;
    for (; r + 4 <= r1; r += 4)
        mm_vnni_exact_rows(4, tk->w, r, tk->xq, tk->xscale, tk->xsum, tk->out);
    for (; r < r1; r++) mm_vnni_exact_rows(1, tk->w, r, tk->xq, tk->xscale, tk->xsum, tk->out);
}

// RB rows of MLX 4-bit weights against the digits of one token, 128 codes
// (one 64-byte line per row) per step: lo = v & 15 holds the even elements,
// hi = (v >> 4) & 15 the odd ones, against the even / odd digits of
// mm_digits_prep. Lanes 0-7 cover the first 64 columns, lanes 8-15 the next 64,
// so each lane stays inside one group; lo and hi share one accumulator
// (|a| <= 8 * 15 * (127 * 16384 + 64 * 128 + 64) < 2^28), and the float
// multiplier is sw * sx of each half's group.
LP_INLINE LP_VNNI void mm_vnni_exact_rows_q4(int RB, const struct lp_weight *w, int64_t r0,
                                             const int8_t *xd, const float *xs, const float *xsum,
                                             float *out) {
    int64_t cols = w->cols, rb = mm_row_bytes(w);
    int gs = w->group_size;
    int64_t ng = cols / gs;
    enum { GC = 16 }; // groups per scale chunk (16 * gs is a multiple of 128)
    const uint8_t *rowp[4];
    __m512 tot[4];
    for (int r = 0; r < RB; r++) {
        rowp[r] = (const uint8_t *)w->data + (r0 + r) * rb;
        tot[r] = _mm512_setzero_ps();
    }
    int hfmt = w->scale_dtype == LP_DTYPE_BF16 ? FMT_BF16 : FMT_F16;
    const uint16_t *scales = w->scales;
    const __m512i k15 = _mm512_set1_epi8(0x0f);
    for (int64_t g0 = 0; g0 < ng; g0 += GC) {
        int nb = ng - g0 < GC ? (int)(ng - g0) : GC;
        __mmask16 m = (__mmask16)((1u << nb) - 1u);
        __m512 xsv = _mm512_maskz_loadu_ps(m, xs + g0);
        __m512 mul[4]; // lane i: sw * sx of group g0 + i
        for (int r = 0; r < RB; r++) {
            const uint8_t *sw = (const uint8_t *)(scales + (r0 + r) * ng + g0);
            mul[r] = _mm512_mul_ps(mm_ld16(hfmt, sw, 0, m), xsv);
        }
        int64_t c0 = g0 * gs, c1 = (g0 + nb) * gs;
        for (int64_t c = c0; c < c1; c += LP_MM_Q4_BLK) {
            const int8_t *blk = xd + c * 3;
            int glo = (int)((c - c0) / gs);
            bool full = c + LP_MM_Q4_BLK <= c1;
            int ghi = full ? (int)((c + 64 - c0) / gs) : glo;
            __m512i gi = _mm512_mask_blend_epi32(0xff00, _mm512_set1_epi32(glo),
                                                 _mm512_set1_epi32(ghi));
            __m512i d0l = _mm512_loadu_si512(blk), d0h = _mm512_loadu_si512(blk + 64);
            __m512i d1l = _mm512_loadu_si512(blk + 128), d1h = _mm512_loadu_si512(blk + 192);
            __m512i d2l = _mm512_loadu_si512(blk + 256), d2h = _mm512_loadu_si512(blk + 320);
            for (int r = 0; r < RB; r++) {
                const uint8_t *p = rowp[r] + c / 2;
                _mm_prefetch((const char *)p + RB * rb, _MM_HINT_T1); // as in mm_vnni_exact_rows
                __m512i v = full ? _mm512_loadu_si512(p)
                                 : _mm512_maskz_loadu_epi8(0xffffffffull, p);
                __m512i lo = _mm512_and_si512(v, k15);
                __m512i hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), k15);
                __m512i a = _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, d0l);
                a = _mm512_dpbusd_epi32(a, hi, d0h);
                a = _mm512_slli_epi32(a, 7);
                a = _mm512_dpbusd_epi32(a, lo, d1l);
                a = _mm512_dpbusd_epi32(a, hi, d1h);
                a = _mm512_slli_epi32(a, 7);
                a = _mm512_dpbusd_epi32(a, lo, d2l);
                a = _mm512_dpbusd_epi32(a, hi, d2h);
                tot[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a),
                                         _mm512_permutexvar_ps(gi, mul[r]), tot[r]);
            }
        }
    }
    const uint16_t *biases = w->biases;
    for (int r = 0; r < RB; r++)
        out[r0 + r] = _mm512_reduce_add_ps(tot[r]) * (1.0f / 16384.0f) +
                      mm_half_dot(w->scale_dtype, biases + (r0 + r) * ng, xsum, ng);
}

LP_VNNI void lp_mm_kernel_vnni_exact_q4(const struct mm_task *tk, int64_t r0, int64_t r1,
                                            int i_thread) {
    (void)i_thread;
    int64_t r = r0;
    for (; r + 4 <= r1; r += 4)
        mm_vnni_exact_rows_q4(4, tk->w, r, tk->xq, tk->xscale, tk->xsum, tk->out);
    for (; r < r1; r++)
        mm_vnni_exact_rows_q4(1, tk->w, r, tk->xq, tk->xscale, tk->xsum, tk->out);
}

#endif // LP_HAVE_X86
