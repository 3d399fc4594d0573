// SPDX-License-Identifier: MIT
// matmul_ggml.c -- the exact VNNI kernels of GGUF Q8_0, Q4_0, Q4_K, Q5_K and
// Q6_K weights (float activations), for every token count, reading the blocks as
// the file stores them (the weights stay the model's mmap; each call decodes
// 16 rows at a time into per-thread scratch, see the strips below).
// The digits scheme of matmul_digits.c: each token's x is split per call
// into three int8 digits per group of 32 (error ~2^-22 of the group's max
// |x|), u8 x s8 dot products (vpdpbusd) are exact in int32, then float
// scaling once per weight sub-block. Chosen by matmul.c when AVX512-VNNI is
// present and the columns are a multiple of 256; other shapes take the
// portable dequantize-a-row path.
//
// Every format is read 256 columns at a time (a "super-block": one Q4_K /
// Q5_K / Q6_K block, eight Q8_0 / Q4_0 blocks) as four vectors of 64
// unsigned codes (in column order) plus one vector ws of 16 float scales:
//   Q8_0: codes q + 128; ws = [d0..d3, -128 d0..d3, d4..d7, -128 d4..d7]
//   Q4_0: codes q;       ws = [d0..d3, -8 d0..d3, d4..d7, -8 d4..d7]
//   Q4_K, Q5_K: codes q; ws = [d sc0..3, -dmin m0..3, d sc4..7, -dmin m4..7]
//   Q6_K: codes q;       ws = [d sc0 .. d sc15] (the -32 lives on the x side)
// so that w[c] = S_j * code[c] + O_j (S_j a scale lane, O_j the offset lane
// of c's sub-block j, times the x sums of the prep). 16 rows' vectors are
// transposed (lane = row) once per call, and the integer dot products of a
// whole sub-block are summed for 16 rows at a time before any float step.
// The sequence of float operations of each output depends on its row and
// token only: the same bits whatever the batch, tile, thread or chunking.
// With quantize_activations (opt-in, not exact) only the first digit is
// used: x rounded to int8 per group of 32 (scale max|x| / 127), the int8
// activations llama.cpp's kernels use too.
#include <math.h>
#include <string.h>

#include "backend/cpu/matmul_i.h"
#include "util/ggml_layout.h"

#if LP_HAVE_X86

#define GG_SB 256         // columns per super-block
#define GG_X_SCALE 16384.0f // 2^14: the digits' integer unit

// ---- x: digits, x scales and offset sums -----------------------------------

// Per token (in the thread's scratch first): digits [cols / 64][3][64]
// (lp_mm_digits_prep's 8-bit layout, groups of 32, natural column order),
// then floats: sxm [cols / 32] (the x scale of each group of 32, times 2^14
// for the one-digit kernels), sums [cols / 256][16] (per weight sub-block,
// the x sum times 2^14 and the type's offset factor: see gg_prep_token),
// then scratch for the group sums and scales [cols / 32] each. A multiple
// of 64 bytes. The kernels read tokens in groups of 8 (lp_mm_ggml_prep),
// 8 x these bytes a group.
int64_t lp_mm_ggml_token_bytes(int64_t cols) { return 3 * cols + cols / 2 + cols / 4; }

// The sum of x's first digits over columns [c, c + n) of digits xd, times
// the group's scale sx: the sum of x as rounded to int8.
static float gg_rounded_sum(const int8_t *xd, int64_t c, int n, float sx) {
    int s = 0;
    for (int64_t i = c; i < c + n; i++) s += xd[(i / LP_MM_DG_BLK) * 3 * LP_MM_DG_BLK + i % LP_MM_DG_BLK];
    return sx * (float)s;
}

// sums[16 b + j] for sub-block j of super-block b (groups of 32: j < 8, the
// rest 0; Q6_K: 16 sub-blocks of 16):
//   Q8_0 / Q4_0: 2^14 x sum of block j, of the rounded x with int8_x (the
//                offset, -128 d / -8 d, is the codes' own and must cancel);
//   Q4_K / Q5_K: 2^14 x exact sum of sub-block j (the min is the weight's);
//   Q6_K:        -32 x 2^14 x sum of sub-block j (rounded with int8_x).
static LP_VNNI void gg_prep_token(const float *x, int64_t cols, enum lp_ggml_type t, bool int8_x,
                                  int8_t *xd) {
    float *sxm = (float *)(xd + 3 * cols), *sums = sxm + cols / 32;
    float *xsum = sums + cols / 16, *xs = xsum + cols / 32;
    lp_mm_digits_prep(x, cols, 32, 0, xd, xsum, xs);
    for (int64_t g = 0; g < cols / 32; g++) sxm[g] = int8_x ? xs[g] * GG_X_SCALE : xs[g];
    bool rounded = int8_x && t != LP_GGML_Q4_K && t != LP_GGML_Q5_K;
    for (int64_t b = 0; b < cols / GG_SB; b++) {
        float *sb = sums + 16 * b;
        if (t == LP_GGML_Q6_K) {
            for (int j = 0; j < 16; j++) {
                int64_t c = b * GG_SB + 16 * j;
                float s = 0.0f;
                if (rounded) s = gg_rounded_sum(xd, c, 16, xs[c / 32]);
                else for (int i = 0; i < 16; i++) s += x[c + i];
                sb[j] = -32.0f * GG_X_SCALE * s;
            }
            continue;
        }
        for (int j = 0; j < 8; j++) {
            int64_t g = 8 * b + j;
            sb[j] = GG_X_SCALE * (rounded ? gg_rounded_sum(xd, 32 * g, 32, xs[g]) : xsum[g]);
            sb[8 + j] = 0.0f;
        }
    }
}

// A group of 8 tokens (slot s: token 8g + s), interleaved so that a tile's
// tokens are one base pointer apart by constant offsets:
//   digits [cols / 4 quads][3][8 slots] int32 (a column quad's four digits)
//   sxm    [cols / 32][8] floats, at 24 cols bytes
//   sums   [cols / 16][8] floats, at 25 cols bytes
// (27 cols bytes of the group's 8 x lp_mm_ggml_token_bytes).
LP_VNNI void lp_mm_ggml_prep(const float *x, int64_t cols, enum lp_ggml_type t, bool int8_x,
                             uint8_t *group, int slot, int8_t *tmp) {
    gg_prep_token(x, cols, t, int8_x, tmp);
    const float *sxm = (const float *)(tmp + 3 * cols), *sums = sxm + cols / 32;
    int32_t *gd = (int32_t *)group + slot;
    for (int64_t q = 0; q < cols / 4; q++) {
        const int8_t *d = tmp + (q / 16) * 3 * LP_MM_DG_BLK + (q % 16) * 4;
        for (int k = 0; k < 3; k++) memcpy(gd + (q * 3 + k) * 8, d + k * LP_MM_DG_BLK, 4);
    }
    float *gs = (float *)(group + 24 * cols) + slot, *gu = (float *)(group + 25 * cols) + slot;
    for (int64_t g = 0; g < cols / 32; g++) gs[g * 8] = sxm[g];
    for (int64_t e = 0; e < cols / 16; e++) gu[e * 8] = sums[e];
}

void lp_mm_ggml_prep_fn(void *arg, int i_thread, int n_threads) {
    const struct lp_mm_ggml_prep *p = arg;
    int8_t *tmp = (int8_t *)p->tmp + (size_t)i_thread * p->tmp_bytes;
    for (int t = i_thread; t < p->n; t += n_threads)
        lp_mm_ggml_prep(p->x + (int64_t)t * p->cols, p->cols, p->type, p->int8_x,
                        (uint8_t *)p->xd + (int64_t)(t / 8) * p->stride, t % 8, tmp);
}

// ---- weights: a super-block's scales (ws) and its four code vectors ----------

LP_INLINE LP_VNNI float gg_f16(const uint8_t *p) {
    return _cvtsh_ss((unsigned short)(p[0] | (unsigned)p[1] << 8));
}

// Q8_0 / Q4_0: eight blocks of bb bytes, d first; the offset lanes hold
// -off * d (the codes are q + off).
LP_INLINE LP_VNNI __m512 gg_scales_q32(const uint8_t *p, int bb, float off) {
    // the eight d (16-bit words bb / 2 apart) picked out of 64-byte loads by
    // word permutes (eight scalar loads and inserts cost twice as much)
    __m128i h;
    if (bb == 18) { // Q4_0: words 0, 9, .., 63 of p[0 .. 127]
        const __m512i idx = _mm512_set_epi16(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                             0, 0, 0, 0, 0, 63, 54, 45, 36, 27, 18, 9, 0);
        h = _mm512_castsi512_si128(
            _mm512_permutex2var_epi16(_mm512_loadu_si512(p), idx, _mm512_loadu_si512(p + 64)));
    } else { // Q8_0: words 0, 17, 34, 51 of p[0 .. 127] and of p[136 .. 263]
        const __m512i idx = _mm512_set_epi16(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                             0, 0, 0, 0, 0, 0, 0, 0, 0, 51, 34, 17, 0);
        __m512i a = _mm512_permutex2var_epi16(_mm512_loadu_si512(p), idx, _mm512_loadu_si512(p + 64));
        __m512i b = _mm512_permutex2var_epi16(_mm512_loadu_si512(p + 4 * bb), idx,
                                              _mm512_loadu_si512(p + 4 * bb + 64));
        h = _mm_unpacklo_epi64(_mm512_castsi512_si128(a), _mm512_castsi512_si128(b));
    }
    __m256 d = _mm256_cvtph_ps(h);
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

// Code vector z (0..3) of a super-block: the 64 unsigned codes of columns
// 64z .. 64z + 63, in column order:
//   Q8_0: blocks 2z and 2z + 1, q + 128 (vpdpbusd wants unsigned);
//   Q4_0: blocks 2z and 2z + 1, each its 16 low then 16 high nibbles;
//   Q4_K: the low, then the high nibbles of qs[32z .. 32z + 31];
//   Q5_K: as Q4_K, plus bit 2z (low half) or 2z + 1 (high half) of qh[l]
//         (l = column % 32) as 16;
//   Q6_K: ql's nibbles of half z / 2 and qh's two bits, moved to bits 4-5 by
//         a shift per 256-bit half.
LP_INLINE LP_VNNI __m512i gg_codes(enum lp_ggml_type T, const uint8_t *p, int z) {
    if (T == LP_GGML_Q8_0) { // the upper half by a merging load (no shuffle port)
        __m512i a = _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(p + 68 * z + 2)));
        a = _mm512_mask_loadu_epi64(a, 0xf0, p + 68 * z + 4); // qwords 4-7: p[68z + 36 ..]
        return _mm512_xor_si512(a, _mm512_set1_epi8((char)0x80));
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
        __m512i b = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(p + qs + 32 * z)));
        __m512i c = _mm512_and_si512(_mm512_srlv_epi16(b, gg_counts(0, 4)), k15);
        if (T == LP_GGML_Q4_K) return c;
        __m512i q = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(p + GGML_Q5_K_QH)));
        __m512i bit = _mm512_and_si512(
            _mm512_srlv_epi16(q, gg_counts((short)(2 * z), (short)(2 * z + 1))), _mm512_set1_epi8(1));
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

// ---- strips: 16 weight rows, decoded once per call, lane = row ----------------
//
// A strip's codes are transposed so that lane r of a vector holds row r's
// four codes of one column quad: per super-block b, vector 16z + i holds
// columns 64z + 4i .. 64z + 4i + 3 of the 16 rows (in column order), then 16
// scale vectors, lane r of vector k = lane k of row r's ws (gg_scales). A
// vpdpbusd of vector 16z + i with one broadcast quad of x digits adds one
// column quad to all 16 rows at once, so a weight sub-block's integer dot
// products of all 16 rows take 8 (Q6_K: 4) vpdpbusd per digit, and the
// float work per sub-block (conversion and scaling) is done once for 16 rows
// instead of once per 64 codes per row.
//
// Per row r (a lane), token t and sub-block j of super-block b (32 columns,
// Q6_K 16; in column order), ND = 3:
//   A0 = sum q . d0,  A12 = (sum q . d1) * 128 + sum q . d2     (int32, exact)
//   F  = float(A0) * 2^14 + float(A12)
//   tot += F * (S_j * sx_g)   (S_j the sub-block's scale lane, sx_g the x
//                              scale of the group of 32 holding it)
//   tot += O_j * sums_j       (the offset: O_j the offset lane, sums the
//                              prep's x sums; Q6_K: O_j = S_j)
// and out[t, r] = tot * 2^-14. |A0|, |A1| <= 32 * 255 * 127 < 2^20 and |A12|
// < 2^28: no overflow. ND = 1: F = float(A0) (sx carries the 2^14). Each
// lane's float steps depend on its row and token only (no lane reduction at
// all): the same bits whatever the batch, tile, thread or chunking.
#define GS_ROWS 16    // rows per strip (one per lane)
#define GS_SB_VECS 80 // vectors per super-block of a strip: 64 code, 16 scale
#define GS_TMAX 64    // tokens per pass over a row chunk (accumulators in scratch)

// In-place transpose of 16 x 16 32-bit elements: lane r of v[k] <- lane k of v[r].
LP_INLINE LP_VNNI void gs_tr16(__m512i *v) {
    __m512i t[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_epi32(v[2 * i], v[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(v[2 * i], v[2 * i + 1]);
    }
    for (int i = 0; i < 4; i++) {
        v[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
        v[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
        v[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
        v[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
    }
    for (int i = 0; i < 2; i++) {
        for (int k = 0; k < 4; k++) {
            t[8 * i + k] = _mm512_shuffle_i32x4(v[8 * i + k], v[8 * i + 4 + k], 0x88);
            t[8 * i + 4 + k] = _mm512_shuffle_i32x4(v[8 * i + k], v[8 * i + 4 + k], 0xdd);
        }
    }
    for (int k = 0; k < 8; k++) {
        v[k] = _mm512_shuffle_i32x4(t[k], t[8 + k], 0x88);
        v[8 + k] = _mm512_shuffle_i32x4(t[k], t[8 + k], 0xdd);
    }
}

// Bytes of one super-block of type T, as a constant.
LP_INLINE int gs_sbb(enum lp_ggml_type T) {
    switch (T) {
    case LP_GGML_Q8_0: return 8 * 34;
    case LP_GGML_Q4_0: return 8 * 18;
    case LP_GGML_Q4_K: return 144;
    case LP_GGML_Q5_K: return 176;
    case LP_GGML_Q6_K: return 210;
    }
    return 0;
}

// Super-block b of the 16 rows from row0 (rb bytes apart) into dst
// [GS_SB_VECS]; rows >= nr read as zero. Prefetches the same super-block of
// the next strip into L2 as it goes, so that DRAM streams while the tiles
// compute.
LP_INLINE LP_VNNI void gs_decode(enum lp_ggml_type T, const uint8_t *row0, int64_t rb, int nr,
                                 int64_t b, __m512i *dst) {
    const int sbb = gs_sbb(T);
    const uint8_t *p0 = row0 + b * sbb;
    __m512i v[GS_ROWS];
    const __m512i k15 = _mm512_set1_epi8(0x0f);
    if (T == LP_GGML_Q4_K && nr == GS_ROWS) {
        // the packed nibbles transposed (half the shuffles), then unpacked:
        // dword k of qs[64h ..] holds the quads (z, i) = (2h + k / 8, k % 8)
        // (low nibbles) and (2h + k / 8, k % 8 + 8) (high)
        for (int h = 0; h < 2; h++) {
            const uint8_t *q = p0;
#pragma GCC unroll 16
            for (int r = 0; r < GS_ROWS; r++, q += rb) {
                if (r % 2 == h)
#pragma GCC unroll 4
                    for (int off = 0; off < sbb; off += 64)
                        _mm_prefetch((const char *)q + GS_ROWS * rb + off, _MM_HINT_T1);
                v[r] = _mm512_loadu_si512(q + GGML_Q4_K_QS + 64 * h);
            }
            gs_tr16(v);
#pragma GCC unroll 16
            for (int k = 0; k < 16; k++) {
                __m512i *o = dst + 16 * (2 * h + k / 8) + k % 8;
                _mm512_store_si512(o, _mm512_and_si512(v[k], k15));
                _mm512_store_si512(o + 8, _mm512_and_si512(_mm512_srli_epi16(v[k], 4), k15));
            }
        }
    } else {
#pragma GCC unroll 4
    for (int z = 0; z < 4; z++) {
        if (nr == GS_ROWS) {
            const uint8_t *q = p0; // one running pointer (16 row offsets spill)
#pragma GCC unroll 16
            for (int r = 0; r < GS_ROWS; r++, q += rb) {
                if (z == r % 4) // spread over the four passes
#pragma GCC unroll 4
                    for (int off = 0; off < sbb; off += 64)
                        _mm_prefetch((const char *)q + GS_ROWS * rb + off, _MM_HINT_T1);
                v[r] = gg_codes(T, q, z);
            }
        } else {
            for (int r = 0; r < GS_ROWS; r++)
                v[r] = r < nr ? gg_codes(T, p0 + r * rb, z) : _mm512_setzero_si512();
        }
        gs_tr16(v);
#pragma GCC unroll 16
        for (int i = 0; i < 16; i++) _mm512_store_si512(dst + 16 * z + i, v[i]);
    }
    }
    if (nr == GS_ROWS && (T == LP_GGML_Q4_K || T == LP_GGML_Q5_K)) {
        const uint8_t *q = p0;
        for (int r = 0; r < GS_ROWS; r += 4, q += 4 * rb) {
            const uint8_t *q4[4] = {q, q + rb, q + 2 * rb, q + 3 * rb};
            __m512 ws[4];
            gg_scales_q4_k_x4(q4, ws);
            for (int k = 0; k < 4; k++) v[r + k] = _mm512_castps_si512(ws[k]);
        }
    } else if (nr == GS_ROWS) {
        const uint8_t *q = p0;
#pragma GCC unroll 16
        for (int r = 0; r < GS_ROWS; r++, q += rb) v[r] = _mm512_castps_si512(gg_scales(T, q));
    } else {
        for (int r = 0; r < GS_ROWS; r++)
            v[r] = r < nr ? _mm512_castps_si512(gg_scales(T, p0 + r * rb)) : _mm512_setzero_si512();
    }
    gs_tr16(v);
#pragma GCC unroll 16
    for (int i = 0; i < 16; i++) _mm512_store_si512(dst + 64 + i, v[i]);
}

// Super-block b (decoded: sbv [RV][GS_SB_VECS]) of RV strips (rows r0 ..
// r0 + 16 RV - 1 of tk->w; nr1 rows in the last one) against tokens t0 ..
// t0 + NT - 1: their accumulators come from and go back to tb [RV][GS_TMAX]
// (at the tile's tokens; exact copies; b == 0 starts them at 0), and after
// the last super-block the outputs are stored. Two strips share each
// broadcast of x digits (half the loads a vpdpbusd).
LP_INLINE LP_VNNI void gs_tile(enum lp_ggml_type T, int ND, int RV, int NT, const struct mm_task *tk,
                               const __m512i *sbv, int64_t b, __m512 *tb, int64_t r0, int nr1,
                               int t0) {
    const int NG = T == LP_GGML_Q6_K ? 16 : 8; // weight sub-blocks per super-block
    const int NS = 64 / NG;                    // column quads per sub-block
    const bool one_pass = ND == 3 && RV * NT <= 4; // three chains side by side
    int64_t cols = tk->w->cols, nsb = cols / GG_SB;
    // the tile's tokens: slots sl .. sl + NT - 1 of one group (see lp_mm_ggml_prep)
    const uint8_t *xg = (const uint8_t *)tk->xq + (int64_t)(t0 / 8) * tk->dg_stride;
    int sl = t0 % 8;
    const int32_t *xq = (const int32_t *)xg + sl;
    const float *sxm = (const float *)(xg + 24 * cols) + sl, *sums = (const float *)(xg + 25 * cols) + sl;
    __m512 tot[2][8];
#pragma GCC unroll 2
    for (int v = 0; v < RV; v++)
#pragma GCC unroll 8
        for (int t = 0; t < NT; t++)
            tot[v][t] = b == 0 ? _mm512_setzero_ps() : _mm512_load_ps(tb + v * GS_TMAX + t);
    for (int j = 0; j < NG; j++) {
        int c = j * (GG_SB / NG), z = c / 64, i0 = c % 64 / 4;
        // ws lanes: Q6_K [S0 .. S15]; else [S0-3, O0-3, S4-7, O4-7]
        int ls = NG == 16 ? j : j < 4 ? j : j + 4, lo = NG == 16 ? j : ls + 4;
        const int32_t *xo = xq + (64 * b + 16 * z + i0) * 24; // quad's digits: xo[24 s + 8 k + t]
        __m512i a0[2][8], a1[2][8], a2[2][4];
#pragma GCC unroll 2
        for (int v = 0; v < RV; v++)
#pragma GCC unroll 8
            for (int t = 0; t < NT; t++) a0[v][t] = a1[v][t] = a2[v][t % 4] = _mm512_setzero_si512();
#pragma GCC unroll 8
        for (int s = 0; s < NS; s++) {
            __m512i wv[2];
#pragma GCC unroll 2
            for (int v = 0; v < RV; v++) wv[v] = _mm512_load_si512(sbv + v * GS_SB_VECS + 16 * z + i0 + s);
#pragma GCC unroll 8
            for (int t = 0; t < NT; t++) {
                const int32_t *q = xo + 24 * s + t;
                __m512i x0 = _mm512_set1_epi32(q[0]);
#pragma GCC unroll 2
                for (int v = 0; v < RV; v++) a0[v][t] = _mm512_dpbusd_epi32(a0[v][t], wv[v], x0);
                if (ND == 3) {
                    __m512i x1 = _mm512_set1_epi32(q[8]);
#pragma GCC unroll 2
                    for (int v = 0; v < RV; v++) a1[v][t] = _mm512_dpbusd_epi32(a1[v][t], wv[v], x1);
                }
                if (one_pass) {
                    __m512i x2 = _mm512_set1_epi32(q[16]);
#pragma GCC unroll 2
                    for (int v = 0; v < RV; v++) a2[v][t] = _mm512_dpbusd_epi32(a2[v][t], wv[v], x2);
                }
            }
        }
        if (one_pass) {
#pragma GCC unroll 2
            for (int v = 0; v < RV; v++)
#pragma GCC unroll 8
                for (int t = 0; t < NT; t++)
                    a1[v][t] = _mm512_add_epi32(_mm512_slli_epi32(a1[v][t], 7), a2[v][t]);
        } else if (ND == 3) { // a second pass: d2 onto d1 * 128
#pragma GCC unroll 2
            for (int v = 0; v < RV; v++)
#pragma GCC unroll 8
                for (int t = 0; t < NT; t++) a1[v][t] = _mm512_slli_epi32(a1[v][t], 7);
#pragma GCC unroll 8
            for (int s = 0; s < NS; s++) {
                __m512i wv[2];
#pragma GCC unroll 2
                for (int v = 0; v < RV; v++) wv[v] = _mm512_load_si512(sbv + v * GS_SB_VECS + 16 * z + i0 + s);
#pragma GCC unroll 8
                for (int t = 0; t < NT; t++) {
                    __m512i x2 = _mm512_set1_epi32(xo[24 * s + 16 + t]);
#pragma GCC unroll 2
                    for (int v = 0; v < RV; v++) a1[v][t] = _mm512_dpbusd_epi32(a1[v][t], wv[v], x2);
                }
            }
        }
        int64_t g = 8 * b + c / 32;
#pragma GCC unroll 2
        for (int v = 0; v < RV; v++) {
            const __m512 *sc = (const __m512 *)(sbv + v * GS_SB_VECS + 64);
            __m512 S = sc[ls], O = sc[lo];
#pragma GCC unroll 8
            for (int t = 0; t < NT; t++) {
                __m512 f = ND == 3 ? _mm512_fmadd_ps(_mm512_cvtepi32_ps(a0[v][t]),
                                                     _mm512_set1_ps(GG_X_SCALE),
                                                     _mm512_cvtepi32_ps(a1[v][t]))
                                   : _mm512_cvtepi32_ps(a0[v][t]);
                tot[v][t] = _mm512_fmadd_ps(f, _mm512_mul_ps(S, _mm512_set1_ps(sxm[8 * g + t])), tot[v][t]);
                tot[v][t] = _mm512_fmadd_ps(O, _mm512_set1_ps(sums[8 * (16 * b + j) + t]), tot[v][t]);
            }
        }
    }
    if (b < nsb - 1) {
#pragma GCC unroll 2
        for (int v = 0; v < RV; v++)
#pragma GCC unroll 8
            for (int t = 0; t < NT; t++) _mm512_store_ps(tb + v * GS_TMAX + t, tot[v][t]);
        return;
    }
    const __m512 k = _mm512_set1_ps(1.0f / GG_X_SCALE);
#pragma GCC unroll 2
    for (int v = 0; v < RV; v++) {
        int nr = v == RV - 1 ? nr1 : GS_ROWS;
        __mmask16 m = nr == GS_ROWS ? (__mmask16)0xffff : (__mmask16)((1u << nr) - 1u);
#pragma GCC unroll 8
        for (int t = 0; t < NT; t++)
            _mm512_mask_storeu_ps(tk->out + (int64_t)(t0 + t) * tk->w->rows + r0 + GS_ROWS * v, m,
                                  _mm512_mul_ps(tot[v][t], k));
    }
}

// Row chunk [r0, r1) against every token of the call: two strips (32 rows)
// at a time (the last one alone if odd), GS_TMAX tokens at a time,
// super-block by super-block, each decoded once into the thread's scratch
// (lp_mm_ggml_cache_bytes: the decoded super-blocks, then one accumulator
// per strip and token) and run against the tokens 4 at a time (one strip:
// 8 at a time), then 2, 1.
#define GS_TILES(T, ND, RV, NBIG)                                                                  \
    do {                                                                                           \
        int t0 = ta;                                                                               \
        for (; t0 + NBIG <= tz; t0 += NBIG)                                                        \
            gs_tile(T, ND, RV, NBIG, tk, sbv, b, tb + t0 - ta, s0, nr1, t0);                       \
        if (NBIG > 4 && tz - t0 >= 4) {                                                            \
            gs_tile(T, ND, RV, 4, tk, sbv, b, tb + t0 - ta, s0, nr1, t0);                          \
            t0 += 4;                                                                               \
        }                                                                                          \
        if (tz - t0 >= 2) {                                                                        \
            gs_tile(T, ND, RV, 2, tk, sbv, b, tb + t0 - ta, s0, nr1, t0);                          \
            t0 += 2;                                                                               \
        }                                                                                          \
        if (tz - t0 >= 1) gs_tile(T, ND, RV, 1, tk, sbv, b, tb + t0 - ta, s0, nr1, t0);            \
    } while (0)
#define GS_DEFINE_KERNEL(NAME, T, ND)                                                              \
    static LP_VNNI void NAME(const struct mm_task *tk, int64_t r0, int64_t r1, int i_thread) {     \
        __m512i *sbv = (__m512i *)((char *)tk->ctx->thread_scratch +                               \
                                   (size_t)i_thread * tk->ctx->thread_bytes);                      \
        __m512 *tb = (__m512 *)(sbv + 2 * GS_SB_VECS);                                             \
        int64_t nsb = tk->w->cols / GG_SB, rb = mm_row_bytes(tk->w);                               \
        const uint8_t *wd = (const uint8_t *)tk->w->data;                                          \
        for (int64_t s0 = r0; s0 < r1; s0 += 2 * GS_ROWS) {                                        \
            int left = (int)(r1 - s0 < 2 * GS_ROWS ? r1 - s0 : 2 * GS_ROWS);                       \
            bool two = left > GS_ROWS;                                                             \
            int nr1 = two ? left - GS_ROWS : left;                                                 \
            for (int ta = 0; ta < tk->n; ta += GS_TMAX) {                                          \
                int tz = tk->n - ta < GS_TMAX ? tk->n : ta + GS_TMAX;                              \
                for (int64_t b = 0; b < nsb; b++) {                                                \
                    if (two) {                                                                     \
                        gs_decode(T, wd + s0 * rb, rb, GS_ROWS, b, sbv);                           \
                        gs_decode(T, wd + (s0 + GS_ROWS) * rb, rb, nr1, b, sbv + GS_SB_VECS);      \
                        GS_TILES(T, ND, 2, 4);                                                            \
                    } else {                                                                       \
                        gs_decode(T, wd + s0 * rb, rb, nr1, b, sbv);                               \
                        GS_TILES(T, ND, 1, 8);                                                            \
                    }                                                                              \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
    }

size_t lp_mm_ggml_cache_bytes(int64_t cols) {
    // the kernels' decoded super-block and accumulators, or (before them, in
    // phase 1) one token's prep
    size_t k = 2 * (GS_SB_VECS + GS_TMAX) * sizeof(__m512i), p = (size_t)lp_mm_ggml_token_bytes(cols);
    return k > p ? k : p;
}

GS_DEFINE_KERNEL(gg_kernel_q4_0, LP_GGML_Q4_0, 3)
GS_DEFINE_KERNEL(gg_kernel_q8_0, LP_GGML_Q8_0, 3)
GS_DEFINE_KERNEL(gg_kernel_q4_k, LP_GGML_Q4_K, 3)
GS_DEFINE_KERNEL(gg_kernel_q5_k, LP_GGML_Q5_K, 3)
GS_DEFINE_KERNEL(gg_kernel_q6_k, LP_GGML_Q6_K, 3)
GS_DEFINE_KERNEL(gg_kernel_q4_0_i8, LP_GGML_Q4_0, 1)
GS_DEFINE_KERNEL(gg_kernel_q8_0_i8, LP_GGML_Q8_0, 1)
GS_DEFINE_KERNEL(gg_kernel_q4_k_i8, LP_GGML_Q4_K, 1)
GS_DEFINE_KERNEL(gg_kernel_q5_k_i8, LP_GGML_Q5_K, 1)
GS_DEFINE_KERNEL(gg_kernel_q6_k_i8, LP_GGML_Q6_K, 1)

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
