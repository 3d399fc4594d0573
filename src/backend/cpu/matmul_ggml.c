// SPDX-License-Identifier: MIT
// matmul_ggml.c -- the exact VNNI kernels of GGUF Q8_0, Q4_0, Q4_K, Q5_K and
// Q6_K weights (float activations), for every token count, reading the blocks as
// the file stores them (no repacking: the weights stay the model's mmap).
// The digits scheme of matmul_digits.c: each token's x is split per call
// into three int8 digits per group of 32 (error ~2^-22 of the group's max
// |x|), u8 x s8 dot products (vpdpbusd) are exact in int32, then one float
// FMA per 64 codes with the lane's weight scale times x scale. Chosen by
// matmul.c when AVX512-VNNI is present and the columns are a multiple of
// 256; other shapes take the portable dequantize-a-row path.
//
// Every format is read 256 columns at a time (a "super-block": one Q4_K /
// Q5_K / Q6_K block, eight Q8_0 / Q4_0 blocks) as four vectors of 64
// unsigned codes (in column order; Q4_K / Q5_K in nibble order, and their x
// digits follow that order) plus one vector ws of 16 float scales:
//   Q8_0: codes q + 128; ws = [d0..d3, -128 d0..d3, d4..d7, -128 d4..d7]
//   Q4_0: codes q;       ws = [d0..d3, -8 d0..d3, d4..d7, -8 d4..d7]
//   Q4_K, Q5_K: codes q; ws = [d sc0..3, -dmin m0..3, d sc4..7, -dmin m4..7]
//   Q6_K: codes q;       ws = [d sc0 .. d sc15] (the -32 lives on the x side)
// so that w[c] = ws[scale lane of c] * code[c] + (the offset term), and per
// token the prep (lp_mm_ggml_prep) leaves, per super-block, sxv (the x
// scale under each scale lane, 0 under offset lanes) and xsv (the x sums
// under each offset lane, times 2^14: sums of 32 under the -128 d / -8 d /
// -dmin m lanes; Q6_K: -32 x sums of 16 under every lane).
// Per super-block, row r and token t:
//   tot += ws * xsv                                   (the offsets, exact x sums)
//   for z = 0..3: a = ((q.d0) * 128 + q.d1) * 128 + q.d2   (int32, exact)
//                 tot += float(a) * permute(ws * sxv, idx_z)
// and out[t, r] = hsum(tot * 2^-14) by one fixed tree. Lane sums cover 4
// codes of one group: |a| <= 4 * 255 * (127 * 16384 + 64 * 128 + 64) < 2^31.
// The sequence of float operations of each output depends on its row and
// token only: the same bits whatever the batch, tile, thread or chunking.
// With quantize_activations (opt-in, not exact) only the first digit is
// used: x rounded to int8 per group of 32 (scale max|x| / 127), the int8
// activations llama.cpp's kernels use too; one vpdpbusd per 64 codes.
#include <math.h>
#include <string.h>

#include "backend/cpu/matmul_i.h"
#include "util/ggml_layout.h"

#if LP_HAVE_X86

#define GG_SB 256         // columns per super-block
#define GG_X_SCALE 16384.0f // 2^14: the digits' integer unit

// Bytes of one super-block of type t (8 Q8_0 / Q4_0 blocks, else one block).
static inline int gg_sb_bytes(enum lp_ggml_type t) {
    return lp_ggml_block_elems(t) == 32 ? 8 * lp_ggml_block_bytes(t) : lp_ggml_block_bytes(t);
}

// Q4_K and Q5_K read their codes in nibble order (see gg_codes).
static inline bool gg_nibble_order(enum lp_ggml_type t) {
    return t == LP_GGML_Q4_K || t == LP_GGML_Q5_K;
}

// ---- x: digits and per-super-block vectors ---------------------------------

// Per token: digits [cols / 64][3][64] (lp_mm_digits_prep's 8-bit layout,
// groups of 32, in the order of the weight's code vectors), then sv
// [cols / 256][sxv 16, xsv 16] floats, then scratch for the group sums and
// scales [cols / 32] each. A multiple of 64 bytes.
int64_t lp_mm_ggml_token_bytes(int64_t cols) { return 3 * cols + cols / 2 + cols / 4; }

// Q4_K's code vectors hold, per 128 columns, the 32-column chunks 0 and 2
// (low nibbles), then 1 and 3 (high nibbles): chunk k of a 128 sits at
// position gg_q4k_pos[k] (its own inverse).
static const int gg_q4k_pos[4] = {0, 2, 1, 3};

// The sum of x's first digits over columns [c, c + n) of natural-order
// digits xd, times the group's scale sx: the sum of x as rounded to int8.
static float gg_rounded_sum(const int8_t *xd, int64_t c, int n, float sx) {
    int s = 0;
    for (int64_t i = c; i < c + n; i++) s += xd[(i / LP_MM_DG_BLK) * 3 * LP_MM_DG_BLK + i % LP_MM_DG_BLK];
    return sx * (float)s;
}

LP_VNNI void lp_mm_ggml_prep(const float *x, int64_t cols, enum lp_ggml_type t, bool int8_x,
                             int8_t *xd) {
    float *sv = (float *)(xd + 3 * cols);
    float *xsum = sv + cols / 8, *xs = xsum + cols / 32; // per group of 32, in code order
    if (gg_nibble_order(t)) {
        for (int64_t c = 0; c < cols; c += 128) {
            float tmp[128];
            for (int k = 0; k < 4; k++) memcpy(tmp + 32 * gg_q4k_pos[k], x + c + 32 * k, 128);
            lp_mm_digits_prep(tmp, 128, 32, 0, xd + 3 * c, xsum + c / 32, xs + c / 32);
        }
    } else {
        lp_mm_digits_prep(x, cols, 32, 0, xd, xsum, xs);
    }
    for (int64_t b = 0; b < cols / GG_SB; b++) {
        float *sxv = sv + 32 * b, *xsv = sxv + 16;
        const float *gs = xs + 8 * b, *gsum = xsum + 8 * b;
        if (t == LP_GGML_Q6_K) { // 16 lanes = the 16 sub-blocks of 16
            const float *xb = x + b * GG_SB;
            for (int j = 0; j < 16; j++) {
                float s = 0.0f;
                if (int8_x) { // the offset's sum must be of the same x as the dot's
                    s = gg_rounded_sum(xd, b * GG_SB + 16 * j, 16, gs[j / 2]);
                } else {
                    for (int i = 0; i < 16; i++) s += xb[16 * j + i];
                }
                sxv[j] = gs[j / 2];
                xsv[j] = -32.0f * GG_X_SCALE * s;
            }
            continue;
        }
        for (int j = 0; j < 16; j++) { // lanes [scale 0-3, offset 0-3, scale 4-7, offset 4-7]
            int g = (j / 8) * 4 + j % 4; // the group (sub-block) in column order
            if (gg_nibble_order(t)) g = (g / 4) * 4 + gg_q4k_pos[g % 4];
            bool offset = (j / 4) % 2 == 1;
            // Q8_0 / Q4_0: the offset (-128 d, -8 d) is the codes' own; with
            // int8 x its sum must be of the rounded x to cancel. Q4_K / Q5_K:
            // the min is the weight's; the exact sum is the better one.
            float sum = int8_x && !gg_nibble_order(t)
                            ? gg_rounded_sum(xd, b * GG_SB + 32 * g, 32, gs[g])
                            : gsum[g];
            sxv[j] = offset ? 0.0f : gs[g];
            xsv[j] = offset ? GG_X_SCALE * sum : 0.0f;
        }
    }
}

void lp_mm_ggml_prep_fn(void *arg, int i_thread, int n_threads) {
    const struct lp_mm_ggml_prep *p = arg;
    for (int t = i_thread; t < p->n; t += n_threads)
        lp_mm_ggml_prep(p->x + (int64_t)t * p->cols, p->cols, p->type, p->int8_x,
                        p->xd + (int64_t)t * p->stride);
}

// ---- weights: a super-block's scales (ws) and its four code vectors ----------

LP_INLINE LP_VNNI float gg_f16(const uint8_t *p) {
    return _cvtsh_ss((unsigned short)(p[0] | (unsigned)p[1] << 8));
}

// Q8_0 / Q4_0: eight blocks of bb bytes, d first; the offset lanes hold
// -off * d (the codes are q + off).
LP_INLINE LP_VNNI __m512 gg_scales_q32(const uint8_t *p, int bb, float off) {
    uint16_t h[8];
    for (int k = 0; k < 8; k++) h[k] = (uint16_t)(p[bb * k] | (unsigned)p[bb * k + 1] << 8);
    __m256 d = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)h));
    const __m512i sel = _mm512_set_epi32(7, 6, 5, 4, 7, 6, 5, 4, 3, 2, 1, 0, 3, 2, 1, 0);
    __m512 mul = _mm512_mask_blend_ps(0xf0f0, _mm512_set1_ps(1.0f), _mm512_set1_ps(-off));
    return _mm512_mul_ps(_mm512_permutexvar_ps(sel, _mm512_castps256_ps512(d)), mul);
}

// Q4_K / Q5_K: the 6-bit pairs unpacked four at a time (the layout of
// ggml_k4_scale_min, on 32-bit words).
LP_INLINE LP_VNNI __m512 gg_scales_q4_k(const uint8_t *p) {
    uint32_t u0, u1, u2;
    memcpy(&u0, p + GGML_QK_SCALES, 4);
    memcpy(&u1, p + GGML_QK_SCALES + 4, 4);
    memcpy(&u2, p + GGML_QK_SCALES + 8, 4);
    uint32_t sc03 = u0 & 0x3f3f3f3fu, m03 = u1 & 0x3f3f3f3fu;
    uint32_t sc47 = (u2 & 0x0f0f0f0fu) | ((u0 >> 6) & 0x03030303u) << 4;
    uint32_t m47 = ((u2 >> 4) & 0x0f0f0f0fu) | ((u1 >> 6) & 0x03030303u) << 4;
    __m128i b = _mm_set_epi32((int)m47, (int)sc47, (int)m03, (int)sc03);
    __m512 d = _mm512_set1_ps(gg_f16(p)), dmin = _mm512_set1_ps(-gg_f16(p + GGML_QK_DMIN));
    __m512 f = _mm512_mask_blend_ps(0xf0f0, d, dmin);
    return _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(b)), f);
}

// gg_scales_q4_k of four super-blocks at once (a 4-row tile's): the 16
// leading bytes (d, dmin, scales) of each in a 128-bit lane, dwords [d |
// dmin, u0, u1, u2] -> [sc03, m03, sc47, m47] as above; the same values.
LP_INLINE LP_VNNI void gg_scales_q4_k_x4(const uint8_t *const *p, __m512 *ws) {
    __m512i v = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)p[0]));
    v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)p[1]), 1);
    v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)p[2]), 2);
    v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)p[3]), 3);
    __m512i a = _mm512_shuffle_epi32(v, _MM_SHUFFLE(3, 3, 2, 1)); // [u0, u1, u2, u2]
    __m512i b = _mm512_shuffle_epi32(v, _MM_SHUFFLE(2, 1, 2, 1)); // [u0, u1, u0, u1]
    __m512i lo = _mm512_and_si512(
        _mm512_srlv_epi32(a, _mm512_set4_epi32(4, 0, 0, 0)),
        _mm512_set4_epi32(0x0f0f0f0f, 0x0f0f0f0f, 0x3f3f3f3f, 0x3f3f3f3f));
    __m512i hi = _mm512_and_si512(_mm512_srli_epi32(b, 2),
                                  _mm512_set4_epi32(0x30303030, 0x30303030, 0, 0));
    __m512i sm = _mm512_or_si512(lo, hi);
    // [d0, -dmin0, d1, -dmin1, ...] from the words 0, 1 of each lane
    __m512i w = _mm512_permutexvar_epi16(
        _mm512_set_epi16(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                         25, 24, 17, 16, 9, 8, 1, 0),
        v);
    __m256 dd = _mm256_xor_ps(_mm256_cvtph_ps(_mm512_castsi512_si128(w)),
                              _mm256_set_ps(-0.0f, 0, -0.0f, 0, -0.0f, 0, -0.0f, 0));
    __m512 ddz = _mm512_castps256_ps512(dd);
    __m128i l4[4] = {_mm512_extracti32x4_epi32(sm, 0), _mm512_extracti32x4_epi32(sm, 1),
                     _mm512_extracti32x4_epi32(sm, 2), _mm512_extracti32x4_epi32(sm, 3)};
    for (int r = 0; r < 4; r++) {
        __m512i idx = _mm512_mask_blend_epi32(0xf0f0, _mm512_set1_epi32(2 * r), _mm512_set1_epi32(2 * r + 1));
        ws[r] = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(l4[r])),
                              _mm512_permutexvar_ps(idx, ddz));
    }
}

// Q6_K: 16 int8 scales times d.
LP_INLINE LP_VNNI __m512 gg_scales_q6_k(const uint8_t *p) {
    __m512 sc = _mm512_cvtepi32_ps(
        _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(p + GGML_Q6_K_SCALES))));
    return _mm512_mul_ps(sc, _mm512_set1_ps(gg_f16(p + GGML_Q6_K_D)));
}

// 16-bit lane counts: a in the lower 256 bits, b in the upper.
LP_INLINE LP_VNNI __m512i gg_counts(short a, short b) {
    return _mm512_inserti64x4(_mm512_set1_epi16(a), _mm256_set1_epi16(b), 1);
}

// Code vector z (0..3) of a super-block, 64 unsigned codes:
//   Q8_0: blocks 2z and 2z + 1, q + 128 (vpdpbusd wants unsigned);
//   Q4_0: blocks 2z and 2z + 1, each its 16 low then 16 high nibbles;
//   Q4_K: the low (z even) or high (z odd) nibbles of qs[64 (z / 2) ..], chunks
//         (0, 2) or (1, 3) of their 128 columns (see gg_q4k_pos);
//   Q5_K: as Q4_K, plus bit s of qh[l] (l = byte % 32, s the byte's
//         sub-block: 4 (z / 2) + z % 2, + 2 in the upper 256 bits) as 16;
//   Q6_K: columns 64z .. 64z + 63: ql's nibbles of half z / 2 and qh's two
//         bits, moved to bits 4-5 by a shift per 256-bit half.
LP_INLINE LP_VNNI __m512i gg_codes(enum lp_ggml_type T, const uint8_t *p, int z) {
    if (T == LP_GGML_Q8_0) {
        __m256i a = _mm256_loadu_si256((const __m256i *)(p + 68 * z + 2));
        __m256i b = _mm256_loadu_si256((const __m256i *)(p + 68 * z + 36));
        return _mm512_xor_si512(_mm512_inserti64x4(_mm512_castsi256_si512(a), b, 1),
                                _mm512_set1_epi8((char)0x80));
    }
    const __m512i k15 = _mm512_set1_epi8(0x0f);
    if (T == LP_GGML_Q4_0) { // [lo a, lo b, hi a, hi b] -> [lo a, hi a, lo b, hi b]
        __m256i ab = _mm256_inserti128_si256(
            _mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(p + 36 * z + 2))),
            _mm_loadu_si128((const __m128i *)(p + 36 * z + 20)), 1);
        __m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(ab), _mm256_srli_epi16(ab, 4), 1);
        return _mm512_and_si512(_mm512_shuffle_i64x2(v, v, 0xd8), k15);
    }
    if (T == LP_GGML_Q4_K || T == LP_GGML_Q5_K) {
        int qs = T == LP_GGML_Q4_K ? GGML_Q4_K_QS : GGML_Q5_K_QS;
        __m512i v = _mm512_loadu_si512(p + qs + 64 * (z / 2));
        __m512i c = _mm512_and_si512(z % 2 ? _mm512_srli_epi16(v, 4) : v, k15);
        if (T == LP_GGML_Q4_K) return c;
        short s = (short)(4 * (z / 2) + z % 2);
        __m512i q = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(p + GGML_Q5_K_QH)));
        __m512i bit = _mm512_and_si512(_mm512_srlv_epi16(q, gg_counts(s, (short)(s + 2))),
                                       _mm512_set1_epi8(1));
        return _mm512_or_si512(c, _mm512_slli_epi16(bit, 4));
    }
    __m512i l = _mm512_loadu_si512(p + 64 * (z / 2));
    __m512i q = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(p + GGML_Q6_K_QH + 32 * (z / 2))));
    // shifts for the lower / upper 256 bits: even z: qh << 4, << 2; odd z: qh, qh >> 2
    __m512i hi = z % 2 ? _mm512_srlv_epi16(q, gg_counts(0, 2)) : _mm512_sllv_epi16(q, gg_counts(4, 2));
    __m512i lo = z % 2 ? _mm512_srli_epi16(l, 4) : l;
    return _mm512_or_si512(_mm512_and_si512(lo, k15), _mm512_and_si512(hi, _mm512_set1_epi8(0x30)));
}

LP_INLINE LP_VNNI __m512 gg_scales(enum lp_ggml_type T, const uint8_t *p) {
    switch (T) {
    case LP_GGML_Q8_0: return gg_scales_q32(p, 34, 128.0f);
    case LP_GGML_Q4_0: return gg_scales_q32(p, 18, 8.0f);
    case LP_GGML_Q6_K: return gg_scales_q6_k(p);
    default: return gg_scales_q4_k(p); // Q4_K, Q5_K
    }
}

// The scale lane of each 4-code lane of code vector z.
LP_INLINE LP_VNNI __m512i gg_idx(enum lp_ggml_type T, int z) {
    if (T == LP_GGML_Q6_K) // 16-column sub-blocks: lane i -> 4z + i / 4
        return _mm512_add_epi32(_mm512_set1_epi32(4 * z),
                                _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0));
    // groups (sub-blocks) of 32: lanes 0-7 group ga, 8-15 group gb; ws holds
    // group g at lane g (g < 4) or g + 4
    int ga = gg_nibble_order(T) ? 4 * (z / 2) + z % 2 : 2 * z, gb = gg_nibble_order(T) ? ga + 2 : ga + 1;
    ga += ga < 4 ? 0 : 4;
    gb += gb < 4 ? 0 : 4;
    return _mm512_mask_blend_epi32(0xff00, _mm512_set1_epi32(ga), _mm512_set1_epi32(gb));
}

// ---- tiles: RB weight rows x NT tokens ----------------------------------------

// wsc: when not NULL, this tile's rows' ws vectors [RB][nsb] in the row
// block's cache: written by the block's first token tile (pf), read by the
// others (the same values gg_scales computes, so no output changes).
// ND: digits of x used: 3 (exact), or 1 (x rounded to int8 per group of
// 32, the quantize_activations mode: a = q.d0 alone, its 2^14 folded into
// the multipliers).
LP_INLINE LP_VNNI void gg_tile(enum lp_ggml_type T, int ND, int RB, int NT,
                               const struct mm_task *tk, int64_t r0, int t0, bool pf,
                               __m512 *wsc) {
    const struct lp_weight *w = tk->w;
    int64_t cols = w->cols, rb = mm_row_bytes(w), nsb = cols / GG_SB;
    int sbb = gg_sb_bytes(T);
    const int8_t *xd[LP_MM_DG_NT];
    const float *sv[LP_MM_DG_NT];
    for (int t = 0; t < NT; t++) {
        xd[t] = tk->xq + (int64_t)(t0 + t) * tk->dg_stride;
        sv[t] = (const float *)(xd[t] + 3 * cols);
    }
    const uint8_t *rowp[LP_MM_DG_RB];
    __m512 tot[LP_MM_DG_RB][LP_MM_DG_NT];
    for (int r = 0; r < RB; r++) {
        rowp[r] = (const uint8_t *)w->data + (r0 + r) * rb;
        for (int t = 0; t < NT; t++) tot[r][t] = _mm512_setzero_ps();
    }
    // ws * sxv per row and token: read through the permutes from memory (in
    // registers with the 16 accumulators they would spill)
    float mul[LP_MM_DG_RB][LP_MM_DG_NT][16] __attribute__((aligned(64)));
    for (int64_t b = 0; b < nsb; b++) {
        __m512 ws[LP_MM_DG_RB];
        const uint8_t *p[LP_MM_DG_RB];
        for (int r = 0; r < RB; r++) {
            p[r] = rowp[r] + b * sbb;
            if (pf) // the next row block, into L2 (see matmul_digits.c)
                for (int off = 0; off < sbb; off += 64)
                    _mm_prefetch((const char *)p[r] + off + RB * rb, _MM_HINT_T1);
        }
        if (wsc && !pf) {
            for (int r = 0; r < RB; r++) ws[r] = wsc[r * nsb + b];
        } else {
            if (gg_nibble_order(T) && RB == 4) gg_scales_q4_k_x4(p, ws);
            else for (int r = 0; r < RB; r++) ws[r] = gg_scales(T, p[r]);
            if (wsc) for (int r = 0; r < RB; r++) wsc[r * nsb + b] = ws[r];
        }
        for (int r = 0; r < RB; r++) {
            for (int t = 0; t < NT; t++) {
                const float *s = sv[t] + 32 * b;
                __m512 m = _mm512_mul_ps(ws[r], _mm512_loadu_ps(s));
                if (ND == 1) m = _mm512_mul_ps(m, _mm512_set1_ps(GG_X_SCALE));
                _mm512_store_ps(mul[r][t], m);
                tot[r][t] = _mm512_fmadd_ps(ws[r], _mm512_loadu_ps(s + 16), tot[r][t]);
            }
        }
#pragma GCC unroll 4
        for (int z = 0; z < 4; z++) {
            __m512i q[LP_MM_DG_RB];
            for (int r = 0; r < RB; r++) q[r] = gg_codes(T, p[r], z);
            __m512i idx = gg_idx(T, z);
            for (int t = 0; t < NT; t++) {
                const int8_t *blk = xd[t] + (4 * b + z) * 3 * LP_MM_DG_BLK;
                __m512i d0 = _mm512_loadu_si512(blk), d1 = d0, d2 = d0;
                if (ND == 3) {
                    d1 = _mm512_loadu_si512(blk + LP_MM_DG_BLK);
                    d2 = _mm512_loadu_si512(blk + 2 * LP_MM_DG_BLK);
                }
                for (int r = 0; r < RB; r++) {
                    __m512i a = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q[r], d0);
                    if (ND == 3) {
                        a = _mm512_dpbusd_epi32(_mm512_slli_epi32(a, 7), q[r], d1);
                        a = _mm512_dpbusd_epi32(_mm512_slli_epi32(a, 7), q[r], d2);
                    }
                    tot[r][t] = _mm512_fmadd_ps(
                        _mm512_cvtepi32_ps(a), _mm512_permutexvar_ps(idx, _mm512_load_ps(mul[r][t])),
                        tot[r][t]);
                }
            }
        }
    }
    const __m512 k = _mm512_set1_ps(1.0f / GG_X_SCALE);
    for (int r = 0; r < RB; r++)
        for (int t = 0; t < NT; t++) tot[r][t] = _mm512_mul_ps(tot[r][t], k);
    mm_dg_out(RB, NT, tot, tk->out, w->rows, r0, t0);
}

// Row chunk [r0, r1) against every token of the call, in row blocks of about
// LP_MM_DG_ROWBLK_BYTES (streamed from DRAM for the first token tile,
// prefetched; from L2 for the others), as in matmul_digits.c. With more
// than one token tile, the block's ws vectors are kept in the thread's
// scratch (lp_mm_ggml_cache_bytes) by the first tile for the others.
#define GG_ROWS(T, ND, NT)                                                                         \
    do {                                                                                           \
        int64_t r_ = rb0;                                                                          \
        for (; r_ + LP_MM_DG_RB <= rb1; r_ += LP_MM_DG_RB)                                         \
            gg_tile(T, ND, LP_MM_DG_RB, NT, tk, r_, t0, pf,                                        \
                    cache ? cache + (r_ - rb0) * nsb : NULL);                                      \
        for (; r_ < rb1; r_++)                                                                     \
            gg_tile(T, ND, 1, NT, tk, r_, t0, pf, cache ? cache + (r_ - rb0) * nsb : NULL);        \
    } while (0)

// Rows per row block of w (a multiple of LP_MM_DG_RB).
static int64_t gg_block_rows(const struct lp_weight *w) {
    int64_t blk = LP_MM_DG_ROWBLK_BYTES / mm_row_bytes(w) / LP_MM_DG_RB * LP_MM_DG_RB;
    return blk < LP_MM_DG_RB ? LP_MM_DG_RB : blk;
}

size_t lp_mm_ggml_cache_bytes(int64_t cols) {
    // rows of a block times super-blocks, for the smallest super-block (Q4_K)
    struct lp_weight w = {.format = LP_WEIGHT_GGML, .cols = cols, .ggml_type = LP_GGML_Q4_K};
    return (size_t)(gg_block_rows(&w) * (cols / GG_SB)) * sizeof(__m512);
}

#define GG_DEFINE_KERNEL(NAME, T, ND)                                                              \
    static LP_VNNI void NAME(const struct mm_task *tk, int64_t r0, int64_t r1, int i_thread) {     \
        int64_t blk = gg_block_rows(tk->w), nsb = tk->w->cols / GG_SB;                             \
        __m512 *cache = tk->n > LP_MM_DG_NT                                                        \
                            ? (__m512 *)((char *)tk->ctx->thread_scratch +                         \
                                         (size_t)i_thread * tk->ctx->thread_bytes)                 \
                            : NULL;                                                                \
        for (int64_t rb0 = r0; rb0 < r1; rb0 += blk) {                                             \
            int64_t rb1 = rb0 + blk < r1 ? rb0 + blk : r1;                                         \
            for (int t0 = 0; t0 < tk->n; t0 += LP_MM_DG_NT) {                                      \
                bool pf = t0 == 0;                                                                 \
                int nt = tk->n - t0 < LP_MM_DG_NT ? tk->n - t0 : LP_MM_DG_NT;                      \
                if (nt == 4) GG_ROWS(T, ND, 4);                                                    \
                else if (nt == 3) GG_ROWS(T, ND, 3);                                               \
                else if (nt == 2) GG_ROWS(T, ND, 2);                                               \
                else GG_ROWS(T, ND, 1);                                                            \
            }                                                                                      \
        }                                                                                          \
    }

GG_DEFINE_KERNEL(gg_kernel_q4_0, LP_GGML_Q4_0, 3)
GG_DEFINE_KERNEL(gg_kernel_q8_0, LP_GGML_Q8_0, 3)
GG_DEFINE_KERNEL(gg_kernel_q4_k, LP_GGML_Q4_K, 3)
GG_DEFINE_KERNEL(gg_kernel_q5_k, LP_GGML_Q5_K, 3)
GG_DEFINE_KERNEL(gg_kernel_q6_k, LP_GGML_Q6_K, 3)
GG_DEFINE_KERNEL(gg_kernel_q4_0_i8, LP_GGML_Q4_0, 1)
GG_DEFINE_KERNEL(gg_kernel_q8_0_i8, LP_GGML_Q8_0, 1)
GG_DEFINE_KERNEL(gg_kernel_q4_k_i8, LP_GGML_Q4_K, 1)
GG_DEFINE_KERNEL(gg_kernel_q5_k_i8, LP_GGML_Q5_K, 1)
GG_DEFINE_KERNEL(gg_kernel_q6_k_i8, LP_GGML_Q6_K, 1)

lp_mm_kernel_fn lp_mm_ggml_kernel(enum lp_ggml_type t, bool int8_x) {
    switch (t) {
    case LP_GGML_Q4_0: return int8_x ? gg_kernel_q4_0_i8 : gg_kernel_q4_0;
    case LP_GGML_Q8_0: return int8_x ? gg_kernel_q8_0_i8 : gg_kernel_q8_0;
    case LP_GGML_Q4_K: return int8_x ? gg_kernel_q4_k_i8 : gg_kernel_q4_k;
    case LP_GGML_Q5_K: return int8_x ? gg_kernel_q5_k_i8 : gg_kernel_q5_k;
    case LP_GGML_Q6_K: return int8_x ? gg_kernel_q6_k_i8 : gg_kernel_q6_k;
    }
    return NULL;
}

#endif // LP_HAVE_X86
