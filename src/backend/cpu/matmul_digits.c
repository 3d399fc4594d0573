// SPDX-License-Identifier: MIT
// matmul_digits.c -- the exact VNNI kernels of MLX 8-bit and 4-bit weights
// (float activations, groups of 32 or a multiple of 64), for every token count:
// activations are split into three int8 digits per group so that u8 x s8 dot
// products (vpdpbusd) compute what the float path computes, at a third of its
// 512-bit operations per weight byte. One register tile family (RB rows x NT
// tokens) serves decode, batched decode and prefill, and gives each output
// the same bits whatever the batch (see the tiles). Chosen by matmul.c.
#include <math.h>
#include <string.h>

#include "backend/cpu/matmul_i.h"

#if LP_HAVE_X86

// ---- digits of x ------------------------------------------------------------
// Each token's x is split once per call (lp_mm_digits_prep) per group into
// three int8 digits against sx_g = max|x_g| / 127:
//   x ~= sx_g * (d0 + d1 / 128 + d2 / 16384),  |d0| <= 127, |d1|, |d2| <= 64,
// error <= sx_g * 2^-15 (~2^-22 of the group's max |x|, about f32 level).
// A token's digits depend on that token's x only.

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

// Digits of x [cols] into xd [cols / 64][3][64] (4-bit: [ceil(cols / 128)][3]
// [even 64, odd 64]), per-group sums into xsum and sx_g into xs [ng]. gs is
// 32 or a multiple of 64; cols a multiple of 64.
LP_VNNI void lp_mm_digits_prep(const float *x, int64_t cols, int gs, int q4, int8_t *xd,
                                   float *xsum, float *xs) {
    int64_t ng = cols / gs;
    const __m512 sgn = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
    const __m512 k128 = _mm512_set1_ps(128.0f);
    for (int64_t g = 0; g < ng; g++) {
        const float *xg = x + g * gs;
        __m512 vm = _mm512_setzero_ps(), vs = _mm512_setzero_ps();
        for (int i = 0; i < gs; i += 16) {
            __m512 v = _mm512_loadu_ps(xg + i);
            vm = _mm512_max_ps(vm, _mm512_and_ps(v, sgn));
            vs = _mm512_add_ps(vs, v); // 16 lanes, then a fixed reduction
        }
        xsum[g] = _mm512_reduce_add_ps(vs);
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

void lp_mm_digits_prep_fn(void *arg, int i_thread, int n_threads) {
    const struct lp_mm_digits *p = arg;
    int64_t ng = p->cols / p->gs;
    for (int t = i_thread; t < p->n; t += n_threads)
        lp_mm_digits_prep(p->x + (int64_t)t * p->cols, p->cols, p->gs, p->q4,
                          p->xd + (int64_t)t * p->stride, p->xsum + (int64_t)t * ng,
                          p->xs + (int64_t)t * ng);
}

// ---- tiles: RB weight rows x NT tokens -----------------------------------
// Per 64 codes (one zmm) of row r and token t: a = ((q.d0) * 128 + q.d1) *
// 128 + q.d2 in int32 (three vpdpbusd, two shifts; a lane sums 4 codes, all
// in one group: |a| <= 4 * 255 * (127 * 16384 + 64 * 128 + 64) = 2130804480
// < 2^31), then tot[r][t] += float(a) * (sw_rg * sx_tg), the multiplier of
// each lane's group.
// out[t, r] = sum over lanes of (tot[r][t] / 16384 + the lanes of sum_g bw_rg *
// xsum_tg) (xsum from the exact x; the power of two last keeps sw * sx
// normal for tiny x).
// The integer sums are exact and each output's float steps (the fma per 64
// codes in column order, the fixed lane reduction, the bias dot) do not
// depend on RB, NT, the tile's place in the batch or the thread: a token's
// row gives the same bits whatever else is in the call. A tile loads each
// weight vector once for its NT tokens and each digit vector once for its RB
// rows.

// Where token t0 + t's digits, x scales and x sums start.
#define MM_DG_TOKENS(NT)                                                                           \
    const int8_t *xd[NT];                                                                          \
    const float *xs[NT], *xsum[NT];                                                                \
    for (int t = 0; t < NT; t++) {                                                                 \
        xd[t] = tk->xq + (int64_t)(t0 + t) * tk->dg_stride;                                        \
        xs[t] = tk->xscale + (int64_t)(t0 + t) * ng;                                               \
        xsum[t] = tk->xsum + (int64_t)(t0 + t) * ng;                                               \
    }

// out[t0 + t, r0 + r] from the lane sums tot (see above): the bias dot's 16
// lanes (groups g = j mod 16) join tot's before the one lane reduction.
LP_INLINE LP_VNNI void mm_dg_store(int RB, int NT, const struct mm_task *tk, int64_t r0, int t0,
                                   __m512 tot[][LP_MM_DG_NT], const float *const *xsum) {
    const struct lp_weight *w = tk->w;
    int64_t ng = w->cols / w->group_size;
    int hfmt = w->scale_dtype == LP_DTYPE_BF16 ? FMT_BF16 : FMT_F16;
    const uint16_t *biases = w->biases;
    __m512 bacc[LP_MM_DG_RB][LP_MM_DG_NT];
    for (int r = 0; r < RB; r++)
        for (int t = 0; t < NT; t++) bacc[r][t] = _mm512_setzero_ps();
    for (int64_t g = 0; g < ng; g += 16) {
        __mmask16 m = ng - g >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (ng - g)) - 1u);
        for (int r = 0; r < RB; r++) {
            __m512 bv = mm_ld16(hfmt, (const uint8_t *)(biases + (r0 + r) * ng + g), 0, m);
            for (int t = 0; t < NT; t++)
                bacc[r][t] = _mm512_fmadd_ps(bv, _mm512_maskz_loadu_ps(m, xsum[t] + g), bacc[r][t]);
        }
    }
    const __m512 k = _mm512_set1_ps(1.0f / 16384.0f);
    for (int r = 0; r < RB; r++)
        for (int t = 0; t < NT; t++) bacc[r][t] = _mm512_fmadd_ps(tot[r][t], k, bacc[r][t]);
    mm_dg_out(RB, NT, bacc, tk->out, w->rows, r0, t0);
}

// RB rows of MLX 8-bit weights from r0 x NT tokens from t0. G32: groups of
// 32 (a block's lanes 0-7 are in one group, lanes 8-15 in the next; else a
// block lies inside one group). pf: prefetch the next row block (the first
// token tile of a row block streams it from DRAM).
LP_INLINE LP_VNNI void mm_dg_tile_q8(int RB, int NT, int G32, const struct mm_task *tk, int64_t r0,
                                     int t0, bool pf) {
    const struct lp_weight *w = tk->w;
    int64_t cols = w->cols;
    int gs = w->group_size;
    int64_t ng = cols / gs;
    int bpg = G32 ? 1 : gs / LP_MM_DG_BLK; // digit blocks per group (G32: per 2 groups)
    MM_DG_TOKENS(NT)
    const uint8_t *rowp[LP_MM_DG_RB];
    __m512 tot[LP_MM_DG_RB][LP_MM_DG_NT];
    for (int r = 0; r < RB; r++) {
        rowp[r] = (const uint8_t *)w->data + (r0 + r) * cols;
        for (int t = 0; t < NT; t++) tot[r][t] = _mm512_setzero_ps();
    }
    int hfmt = w->scale_dtype == LP_DTYPE_BF16 ? FMT_BF16 : FMT_F16;
    const uint16_t *scales = w->scales;
    float mul[LP_MM_DG_RB][LP_MM_DG_NT][LP_MM_DG_GC] __attribute__((aligned(64)));
    for (int64_t g0 = 0; g0 < ng; g0 += LP_MM_DG_GC) {
        int nb = ng - g0 < LP_MM_DG_GC ? (int)(ng - g0) : LP_MM_DG_GC;
        __mmask16 m = (__mmask16)((1u << nb) - 1u);
        for (int r = 0; r < RB; r++) { // mul[r][t][i] = sw * sx of group g0 + i
            __m512 swv = mm_ld16(hfmt, (const uint8_t *)(scales + (r0 + r) * ng + g0), 0, m);
            for (int t = 0; t < NT; t++)
                _mm512_store_ps(mul[r][t], _mm512_mul_ps(swv, _mm512_maskz_loadu_ps(m, xs[t] + g0)));
        }
        // One loop over the chunk's blocks (a loop per group would hoist
        // the 16 broadcasts of mul out of a one-block body).
        int n_blk = G32 ? nb / 2 : nb * bpg;
        for (int bi = 0, gi = 0, bg = 0; bi < n_blk; bi++, gi += ++bg == bpg, bg %= bpg) {
            int64_t c = g0 * gs + (int64_t)bi * LP_MM_DG_BLK;
            __m512i gv = _mm512_mask_blend_epi32(0xff00, _mm512_set1_epi32(2 * bi),
                                                 _mm512_set1_epi32(2 * bi + 1)); // G32
            __m512i q[LP_MM_DG_RB];
            for (int r = 0; r < RB; r++) {
                // Next row block, into L2 (T1): measured 22-25 GB/s from
                // DRAM on one thread against 11 GB/s with T0 (L1), whose
                // fills stall the loads; T2 about the same, NTA as T0.
                if (pf) _mm_prefetch((const char *)rowp[r] + c + RB * cols, _MM_HINT_T1);
                q[r] = _mm512_loadu_si512(rowp[r] + c);
            }
            for (int t = 0; t < NT; t++) {
                const int8_t *blk = xd[t] + c * 3;
                __m512i d0 = _mm512_loadu_si512(blk);
                __m512i d1 = _mm512_loadu_si512(blk + LP_MM_DG_BLK);
                __m512i d2 = _mm512_loadu_si512(blk + 2 * LP_MM_DG_BLK);
                for (int r = 0; r < RB; r++) {
                    __m512i a = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q[r], d0);
                    a = _mm512_dpbusd_epi32(_mm512_slli_epi32(a, 7), q[r], d1);
                    a = _mm512_dpbusd_epi32(_mm512_slli_epi32(a, 7), q[r], d2);
                    __m512 mv = G32 ? _mm512_permutexvar_ps(gv, _mm512_load_ps(mul[r][t]))
                                    : _mm512_set1_ps(mul[r][t][gi]);
                    tot[r][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a), mv, tot[r][t]);
                }
            }
        }
    }
    mm_dg_store(RB, NT, tk, r0, t0, tot, xsum);
}

// RB rows of MLX 4-bit weights x NT tokens, 128 codes (one 64-byte line per
// row) per step: lo = v & 15 holds the even elements, hi = (v >> 4) & 15 the
// odd ones, against the even / odd digits of lp_mm_digits_prep. Lane i
// covers columns 8i .. 8i + 7, so each lane stays inside one group (groups
// of 32 or more); lo and hi share one accumulator (|a| <= 8 * 15 * (127 *
// 16384 + 64 * 128 + 64) < 2^28), and the float multiplier is sw * sx of
// each lane's group.
LP_INLINE LP_VNNI void mm_dg_tile_q4(int RB, int NT, int G32, const struct mm_task *tk, int64_t r0,
                                     int t0, bool pf) {
    (void)G32; // the lane-group indices cover every group size
    const struct lp_weight *w = tk->w;
    int64_t cols = w->cols, rb = mm_row_bytes(w);
    int gs = w->group_size;
    int64_t ng = cols / gs;
    MM_DG_TOKENS(NT)
    const uint8_t *rowp[LP_MM_DG_RB];
    __m512 tot[LP_MM_DG_RB][LP_MM_DG_NT];
    for (int r = 0; r < RB; r++) {
        rowp[r] = (const uint8_t *)w->data + (r0 + r) * rb;
        for (int t = 0; t < NT; t++) tot[r][t] = _mm512_setzero_ps();
    }
    int hfmt = w->scale_dtype == LP_DTYPE_BF16 ? FMT_BF16 : FMT_F16;
    const uint16_t *scales = w->scales;
    const __m512i k15 = _mm512_set1_epi8(0x0f);
    float mul[LP_MM_DG_RB][LP_MM_DG_NT][LP_MM_DG_GC] __attribute__((aligned(64)));
    for (int64_t g0 = 0; g0 < ng; g0 += LP_MM_DG_GC) { // 16 * gs: a multiple of 128 (gs >= 32)
        int nb = ng - g0 < LP_MM_DG_GC ? (int)(ng - g0) : LP_MM_DG_GC;
        __mmask16 m = (__mmask16)((1u << nb) - 1u);
        for (int r = 0; r < RB; r++) { // lane i: sw * sx of group g0 + i
            __m512 swv = mm_ld16(hfmt, (const uint8_t *)(scales + (r0 + r) * ng + g0), 0, m);
            for (int t = 0; t < NT; t++)
                _mm512_store_ps(mul[r][t], _mm512_mul_ps(swv, _mm512_maskz_loadu_ps(m, xs[t] + g0)));
        }
        int64_t c0 = g0 * gs, c1 = (g0 + nb) * gs;
        for (int64_t c = c0; c < c1; c += LP_MM_Q4_BLK) {
            // Lane i holds codes 8i .. 8i + 7: lanes 4k .. 4k + 3 the 32
            // columns from c + 32k, of group (c - c0 + 32k) / gs (in a
            // half-full last block lanes 8-15 hold zeros: any index will do).
            bool full = c + LP_MM_Q4_BLK <= c1;
            int gq[4];
            for (int k = 0; k < 4; k++) gq[k] = (int)((c - c0 + (full || k < 2 ? 32 * k : 0)) / gs);
            __m512i gi = _mm512_mask_blend_epi32(
                0xf000,
                _mm512_mask_blend_epi32(0x0f00,
                                        _mm512_mask_blend_epi32(0x00f0, _mm512_set1_epi32(gq[0]),
                                                                _mm512_set1_epi32(gq[1])),
                                        _mm512_set1_epi32(gq[2])),
                _mm512_set1_epi32(gq[3]));
            __m512i lo[LP_MM_DG_RB], hi[LP_MM_DG_RB];
            for (int r = 0; r < RB; r++) {
                const uint8_t *p = rowp[r] + c / 2;
                if (pf) _mm_prefetch((const char *)p + RB * rb, _MM_HINT_T1); // as in q8
                __m512i v = full ? _mm512_loadu_si512(p) : _mm512_maskz_loadu_epi8(0xffffffffull, p);
                lo[r] = _mm512_and_si512(v, k15);
                hi[r] = _mm512_and_si512(_mm512_srli_epi16(v, 4), k15);
            }
            for (int t = 0; t < NT; t++) {
                const int8_t *blk = xd[t] + c * 3;
                __m512i d0l = _mm512_loadu_si512(blk), d0h = _mm512_loadu_si512(blk + 64);
                __m512i d1l = _mm512_loadu_si512(blk + 128), d1h = _mm512_loadu_si512(blk + 192);
                __m512i d2l = _mm512_loadu_si512(blk + 256), d2h = _mm512_loadu_si512(blk + 320);
                for (int r = 0; r < RB; r++) {
                    __m512i a = _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo[r], d0l);
                    a = _mm512_dpbusd_epi32(a, hi[r], d0h);
                    a = _mm512_slli_epi32(a, 7);
                    a = _mm512_dpbusd_epi32(a, lo[r], d1l);
                    a = _mm512_dpbusd_epi32(a, hi[r], d1h);
                    a = _mm512_slli_epi32(a, 7);
                    a = _mm512_dpbusd_epi32(a, lo[r], d2l);
                    a = _mm512_dpbusd_epi32(a, hi[r], d2h);
                    tot[r][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a),
                                                _mm512_permutexvar_ps(gi, _mm512_load_ps(mul[r][t])),
                                                tot[r][t]);
                }
            }
        }
    }
    mm_dg_store(RB, NT, tk, r0, t0, tot, xsum);
}

// Row chunk [r0, r1) against every token of the call. Rows go in blocks of
// about LP_MM_DG_ROWBLK_BYTES of codes; per block, every LP_MM_DG_NT-token
// tile runs over the block's LP_MM_DG_RB-row tiles, so the block's weights come
// from DRAM once (first token tile, prefetching ahead) and from L2 after, and
// a token tile's digits stay in L1 across the block's rows.
#define MM_DG_ROWS(TILE, NT, G32)                                                                  \
    do {                                                                                           \
        int64_t r_ = rb0;                                                                          \
        for (; r_ + LP_MM_DG_RB <= rb1; r_ += LP_MM_DG_RB)                                         \
            TILE(LP_MM_DG_RB, NT, G32, tk, r_, t0, pf);                                            \
        for (; r_ < rb1; r_++) TILE(1, NT, G32, tk, r_, t0, pf);                                   \
    } while (0)

#define MM_DG_TOKEN_TILES(TILE, G32)                                                               \
    do {                                                                                           \
        for (int t0 = 0; t0 < tk->n; t0 += LP_MM_DG_NT) {                                          \
            bool pf = t0 == 0;                                                                     \
            int nt = tk->n - t0 < LP_MM_DG_NT ? tk->n - t0 : LP_MM_DG_NT;                          \
            if (nt == 4) MM_DG_ROWS(TILE, 4, G32);                                                 \
            else if (nt == 3) MM_DG_ROWS(TILE, 3, G32);                                            \
            else if (nt == 2) MM_DG_ROWS(TILE, 2, G32);                                            \
            else MM_DG_ROWS(TILE, 1, G32);                                                         \
        }                                                                                          \
    } while (0)

// G32_VARIANT: instantiate the tiles for groups of 32 separately (q8 only;
// q4's lane indices cover every group size).
#define MM_DEFINE_DG_KERNEL(NAME, TILE, G32_VARIANT)                                               \
    LP_VNNI void NAME(const struct mm_task *tk, int64_t r0, int64_t r1, int i_thread) {            \
        (void)i_thread;                                                                            \
        int64_t blk = LP_MM_DG_ROWBLK_BYTES / mm_row_bytes(tk->w) / LP_MM_DG_RB * LP_MM_DG_RB;     \
        if (blk < LP_MM_DG_RB) blk = LP_MM_DG_RB;                                                  \
        bool g32 = G32_VARIANT && tk->w->group_size == 32;                                         \
        for (int64_t rb0 = r0; rb0 < r1; rb0 += blk) {                                             \
            int64_t rb1 = rb0 + blk < r1 ? rb0 + blk : r1;                                         \
            if (g32) MM_DG_TOKEN_TILES(TILE, G32_VARIANT);                                         \
            else MM_DG_TOKEN_TILES(TILE, 0);                                                       \
        }                                                                                          \
    }

MM_DEFINE_DG_KERNEL(lp_mm_kernel_digits_q8, mm_dg_tile_q8, 1)
MM_DEFINE_DG_KERNEL(lp_mm_kernel_digits_q4, mm_dg_tile_q4, 0)

#endif // LP_HAVE_X86
