// SPDX-License-Identifier: MIT
// matmul_ggml.c -- the exact VNNI kernels of GGUF Q8_0, Q4_0, Q4_K, Q5_K and
// Q6_K weights (float activations), for every token count. The blocks are
// packed once at weight_upload (lp_mm_ggml_pack: 16-row strips, codes
// transposed so that a vector lane is a row, see "packing" below), and each
// call unpacks a strip's super-block into per-thread scratch with masks and
// shifts only, then runs it against the tokens.
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
// transposed (lane = row) once, when packed, and the integer dot products of a
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

// ---- weights: a super-block's four code vectors, as the file stores them ----

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

// ---- packing: the file's blocks into strips, once at weight_upload -----------
//
// The kernels read w packed (lp_mm_ggml_pack): strip by strip (16 rows, the
// last one padded with zero rows), super-block by super-block, each packed
// super-block (PSB, gp_psb bytes) holding the strip's codes already
// transposed (the vectors 16z + i above) at the type's own bit width, then
// the scale codes and the rows' f16 factors, so that a call only unmasks
// codes and converts scales (no transposes, no 6-bit scale decoding):
//   codes: Q8_0: the 64 code vectors as they are (4096 B);
//          else nib[32]: vector j = codes 16z + i = j (low nibbles) and
//          j + 32 (high nibbles) (2048 B);
//          Q5_K: hb[8]: bit t of vector j = bit 4 of code vector 8t + j;
//          Q6_K: h2[16]: bits 2t, 2t + 1 of vector j = bits 4, 5 of code
//          vector 16t + j;
//   scales: Q8_0 / Q4_0: f16 d [8 blocks][16 rows];
//           Q4_K / Q5_K: u8 [16 lanes][16 rows], the ws lane order
//           [sc0..3, m0..3, sc4..7, m4..7], then f16 d [16], dmin [16];
//           Q6_K: i8 [16 sub-blocks][16 rows], then f16 d [16].
// The same bytes as the file give or take the scale bits (Q4_K 2368 for
// 2304, Q6_K 3392 for 3360 with its padding to 64).

LP_INLINE int gp_codes_bytes(enum lp_ggml_type T) { return T == LP_GGML_Q8_0 ? 4096 : 2048; }
LP_INLINE int gp_hi_bytes(enum lp_ggml_type T) {
    return T == LP_GGML_Q5_K ? 512 : T == LP_GGML_Q6_K ? 1024 : 0;
}
#define GP_SC_BYTES 256 // the scale codes of every type: 16 x 16 bytes or 8 x 16 f16
LP_INLINE int gp_psb(enum lp_ggml_type T) {
    int fac = T == LP_GGML_Q4_K || T == LP_GGML_Q5_K ? 64 : T == LP_GGML_Q6_K ? 32 : 0;
    return (gp_codes_bytes(T) + gp_hi_bytes(T) + GP_SC_BYTES + fac + 63) / 64 * 64;
}

// Bytes of one super-block of type T in the file, as a constant (0: a type
// these kernels do not take).
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

size_t lp_mm_ggml_packed_bytes(const struct lp_weight *w) {
    if (gs_sbb(w->ggml_type) == 0 || w->cols % GG_SB != 0) return 0; // a type without kernels
    return (size_t)((w->rows + GS_ROWS - 1) / GS_ROWS) * (size_t)(w->cols / GG_SB) *
           (size_t)gp_psb(w->ggml_type);
}

static void gp_put16(uint8_t *p, int i, const uint8_t *f16) { memcpy(p + 2 * i, f16, 2); }

// The scale codes and factors of row r (< 16) of a strip, from its block(s)
// of super-block p (the row's first byte of it).
static void gp_pack_scales(enum lp_ggml_type T, const uint8_t *p, int r, uint8_t *sc) {
    switch (T) {
    case LP_GGML_Q8_0:
    case LP_GGML_Q4_0: {
        for (int k = 0; k < 8; k++) gp_put16(sc, 16 * k + r, p + k * (gs_sbb(T) / 8));
        return;
    }
    case LP_GGML_Q4_K:
    case LP_GGML_Q5_K:
        for (int s = 0; s < 8; s++) {
            int scale, min;
            ggml_k4_scale_min(p + GGML_QK_SCALES, s, &scale, &min);
            int ls = s < 4 ? s : s + 4; // ws lanes: [S0-3, O0-3, S4-7, O4-7]
            sc[16 * ls + r] = (uint8_t)scale;
            sc[16 * (ls + 4) + r] = (uint8_t)min;
        }
        gp_put16(sc + GP_SC_BYTES, r, p);
        gp_put16(sc + GP_SC_BYTES + 32, r, p + GGML_QK_DMIN);
        return;
    case LP_GGML_Q6_K:
        for (int k = 0; k < 16; k++) sc[16 * k + r] = p[GGML_Q6_K_SCALES + k];
        gp_put16(sc + GP_SC_BYTES, r, p + GGML_Q6_K_D);
        return;
    }
}

// Super-block b of the nr (<= 16) rows from row0 (rb bytes apart) into the
// PSB at dst (gp_psb(T) bytes, zero rows beyond nr).
static LP_VNNI void gp_pack_sb(enum lp_ggml_type T, const uint8_t *row0, int64_t rb, int nr,
                               int64_t b, uint8_t *dst) {
    const uint8_t *p0 = row0 + b * gs_sbb(T);
    __m512i cv[64], v[GS_ROWS];
    for (int z = 0; z < 4; z++) {
        for (int r = 0; r < GS_ROWS; r++)
            v[r] = r < nr ? gg_codes(T, p0 + r * rb, z) : _mm512_setzero_si512();
        gs_tr16(v);
        for (int i = 0; i < 16; i++) cv[16 * z + i] = v[i];
    }
    __m512i *o = (__m512i *)dst;
    const __m512i k15 = _mm512_set1_epi8(0x0f);
    if (T == LP_GGML_Q8_0) {
        for (int j = 0; j < 64; j++) _mm512_storeu_si512(o + j, cv[j]);
    } else {
        for (int j = 0; j < 32; j++)
            _mm512_storeu_si512(o + j, _mm512_or_si512(_mm512_and_si512(cv[j], k15),
                                                       _mm512_slli_epi16(_mm512_and_si512(cv[32 + j], k15), 4)));
    }
    o += gp_codes_bytes(T) / 64;
    if (T == LP_GGML_Q5_K) {
        for (int j = 0; j < 8; j++) {
            __m512i h = _mm512_setzero_si512();
            for (int t = 0; t < 8; t++) // bit 4 of code vector 8t + j to bit t
                h = _mm512_or_si512(h, _mm512_slli_epi16(_mm512_and_si512(_mm512_srli_epi16(cv[8 * t + j], 4),
                                                                          _mm512_set1_epi8(1)), t));
            _mm512_storeu_si512(o + j, h);
        }
    } else if (T == LP_GGML_Q6_K) {
        for (int j = 0; j < 16; j++) {
            __m512i h = _mm512_setzero_si512();
            for (int t = 0; t < 4; t++) // bits 4, 5 of code vector 16t + j to bits 2t, 2t + 1
                h = _mm512_or_si512(h, _mm512_slli_epi16(_mm512_and_si512(_mm512_srli_epi16(cv[16 * t + j], 4),
                                                                          _mm512_set1_epi8(3)), 2 * t));
            _mm512_storeu_si512(o + j, h);
        }
    }
    uint8_t *sc = dst + gp_codes_bytes(T) + gp_hi_bytes(T);
    memset(sc, 0, (size_t)(gp_psb(T) - gp_codes_bytes(T) - gp_hi_bytes(T)));
    for (int r = 0; r < nr; r++) gp_pack_scales(T, p0 + r * rb, r, sc);
}

LP_VNNI void lp_mm_ggml_pack(const struct lp_weight *w, uint8_t *dst, int64_t s0, int64_t s1) {
    enum lp_ggml_type T = w->ggml_type;
    int64_t nsb = w->cols / GG_SB, rb = mm_row_bytes(w), psb = gp_psb(T);
    for (int64_t s = s0; s < s1; s++) {
        int64_t r0 = s * GS_ROWS;
        int nr = (int)(w->rows - r0 < GS_ROWS ? w->rows - r0 : GS_ROWS);
        for (int64_t b = 0; b < nsb; b++)
            gp_pack_sb(T, (const uint8_t *)w->data + r0 * rb, rb, nr, b, dst + (s * nsb + b) * psb);
    }
}

// The PSB at src unpacked for the tiles: *codes -> its 64 code vectors
// (Q8_0: the PSB itself; else dst [0, 64)), the 16 scale vectors into dst
// [64, 80) (lane r of vector k: lane k of row r's ws, a float).
LP_INLINE LP_VNNI void gs_unpack(enum lp_ggml_type T, const uint8_t *src, __m512i *dst,
                                 const __m512i **codes) {
    const __m512i *in = (const __m512i *)src;
    const __m512i k15 = _mm512_set1_epi8(0x0f);
    if (T == LP_GGML_Q8_0) {
        *codes = in;
    } else {
        *codes = dst;
#pragma GCC unroll 32
        for (int j = 0; j < 32; j++) {
            __m512i n = _mm512_load_si512(in + j);
            __m512i lo = _mm512_and_si512(n, k15), hi = _mm512_and_si512(_mm512_srli_epi16(n, 4), k15);
            if (T == LP_GGML_Q5_K) { // bit 4 from hb[j % 8], bit t = j / 8 (lo) and t + 4 (hi)
                __m512i h = _mm512_load_si512(in + 32 + j % 8);
                const __m512i k16 = _mm512_set1_epi8(0x10);
                int t = j / 8;
                lo = _mm512_or_si512(lo, _mm512_and_si512(_mm512_slli_epi16(h, 4 - t), k16));
                hi = _mm512_or_si512(hi, _mm512_and_si512(_mm512_srli_epi16(h, t), k16));
            } else if (T == LP_GGML_Q6_K) { // bits 4, 5 from h2[j % 16], at 2t: t = j / 16, + 2
                __m512i h = _mm512_load_si512(in + 32 + j % 16);
                const __m512i k48 = _mm512_set1_epi8(0x30);
                int t = j / 16; // 0 or 1: lo is vector 16t + .., hi 16 (t + 2) + ..
                __m512i hl = t == 0 ? _mm512_slli_epi16(h, 4) : _mm512_slli_epi16(h, 2);
                __m512i hh = t == 0 ? h : _mm512_srli_epi16(h, 2);
                lo = _mm512_or_si512(lo, _mm512_and_si512(hl, k48));
                hi = _mm512_or_si512(hi, _mm512_and_si512(hh, k48));
            }
            _mm512_store_si512(dst + j, lo);
            _mm512_store_si512(dst + 32 + j, hi);
        }
    }
    const uint8_t *sc = src + gp_codes_bytes(T) + gp_hi_bytes(T);
    __m512 *ws = (__m512 *)(dst + 64);
    if (T == LP_GGML_Q8_0 || T == LP_GGML_Q4_0) { // [d0..3, -off d0..3, d4..7, -off d4..7]
        __m512 off = _mm512_set1_ps(T == LP_GGML_Q8_0 ? -128.0f : -8.0f);
#pragma GCC unroll 16
        for (int k = 0; k < 16; k++) {
            int blk = k < 4 ? k : k < 8 ? k - 4 : k < 12 ? k - 4 : k - 8;
            __m512 d = _mm512_cvtph_ps(_mm256_load_si256((const __m256i *)(sc + 32 * blk)));
            ws[k] = (k / 4) % 2 ? _mm512_mul_ps(d, off) : d;
        }
        return;
    }
    __m512 d = _mm512_cvtph_ps(_mm256_load_si256((const __m256i *)(sc + GP_SC_BYTES)));
    if (T == LP_GGML_Q6_K) {
#pragma GCC unroll 16
        for (int k = 0; k < 16; k++)
            ws[k] = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(
                                      _mm_load_si128((const __m128i *)(sc + 16 * k)))), d);
        return;
    }
    __m512 m = _mm512_xor_ps(_mm512_cvtph_ps(_mm256_load_si256((const __m256i *)(sc + GP_SC_BYTES + 32))),
                             _mm512_set1_ps(-0.0f));
#pragma GCC unroll 16
    for (int k = 0; k < 16; k++)
        ws[k] = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(
                                  _mm_load_si128((const __m128i *)(sc + 16 * k)))),
                              (k / 4) % 2 ? m : d);
}

// Super-block b (unpacked: strip v's code vectors at cw[v], its scale
// vectors at sw[v]) of RV strips (rows r0 .. r0 + 16 RV - 1 of tk->w; nr1
// rows in the last one) against tokens t0 .. t0 + NT - 1: their
// accumulators come from and go back to tb [RV][GS_TMAX] (at the tile's
// tokens; exact copies; b == 0 starts them at 0), and after the last
// super-block the outputs are stored. Two strips share each broadcast of x
// digits (half the loads a vpdpbusd).
LP_INLINE LP_VNNI void gs_tile(enum lp_ggml_type T, int ND, int RV, int NT, const struct mm_task *tk,
                               const __m512i *const *cw, const __m512 *const *sw, int64_t b,
                               __m512 *tb, int64_t r0, int nr1, int t0) {
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
            for (int v = 0; v < RV; v++) wv[v] = _mm512_load_si512(cw[v] + 16 * z + i0 + s);
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
                for (int v = 0; v < RV; v++) wv[v] = _mm512_load_si512(cw[v] + 16 * z + i0 + s);
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
            __m512 S = sw[v][ls], O = sw[v][lo];
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

// Prefetches the bytes [p, p + n) (a PSB) at once, so that its lines' DRAM
// reads overlap instead of following the unpack one by one. (Prefetching
// the next PSBs as well measured slower here: 2 threads, Xeon, 12-13 vs
// 13-17 tok/s on a 1.7B Q4_K_M file.)
LP_INLINE void gp_prefetch(const uint8_t *p, int n) {
    for (int off = 0; off < n; off += 64) _mm_prefetch((const char *)p + off, _MM_HINT_T0);
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
            gs_tile(T, ND, RV, NBIG, tk, cw, sw, b, tb + t0 - ta, s0, nr1, t0);                       \
        if (NBIG > 4 && tz - t0 >= 4) {                                                            \
            gs_tile(T, ND, RV, 4, tk, cw, sw, b, tb + t0 - ta, s0, nr1, t0);                          \
            t0 += 4;                                                                               \
        }                                                                                          \
        if (tz - t0 >= 2) {                                                                        \
            gs_tile(T, ND, RV, 2, tk, cw, sw, b, tb + t0 - ta, s0, nr1, t0);                          \
            t0 += 2;                                                                               \
        }                                                                                          \
        if (tz - t0 >= 1) gs_tile(T, ND, RV, 1, tk, cw, sw, b, tb + t0 - ta, s0, nr1, t0);            \
    } while (0)
#define GS_DEFINE_KERNEL(NAME, T, ND)                                                              \
    static LP_VNNI void NAME(const struct mm_task *tk, int64_t r0, int64_t r1, int i_thread) {     \
        __m512i *sbv = (__m512i *)((char *)tk->ctx->thread_scratch +                               \
                                   (size_t)i_thread * tk->ctx->thread_bytes);                      \
        __m512 *tb = (__m512 *)(sbv + 2 * GS_SB_VECS);                                             \
        int64_t nsb = tk->w->cols / GG_SB, psb = gp_psb(T);                                        \
        const __m512 *sw[2] = {(const __m512 *)(sbv + 64), (const __m512 *)(sbv + GS_SB_VECS + 64)}; \
        const __m512i *cw[2];                                                                      \
        for (int64_t s0 = r0; s0 < r1; s0 += 2 * GS_ROWS) {                                        \
            int left = (int)(r1 - s0 < 2 * GS_ROWS ? r1 - s0 : 2 * GS_ROWS);                       \
            bool two = left > GS_ROWS;                                                             \
            int nr1 = two ? left - GS_ROWS : left;                                                 \
            const uint8_t *ps = tk->packed + (s0 / GS_ROWS) * nsb * psb; /* strip s0 / 16 */     \
            for (int ta = 0; ta < tk->n; ta += GS_TMAX) {                                          \
                int tz = tk->n - ta < GS_TMAX ? tk->n : ta + GS_TMAX;                              \
                for (int64_t b = 0; b < nsb; b++) {                                                \
                    gp_prefetch(ps + b * psb, psb);                                               \
                    if (two) gp_prefetch(ps + (nsb + b) * psb, psb);                               \
                    gs_unpack(T, ps + b * psb, sbv, &cw[0]);                                       \
                    if (two) {                                                                     \
                        gs_unpack(T, ps + (nsb + b) * psb, sbv + GS_SB_VECS, &cw[1]);              \
                        GS_TILES(T, ND, 2, 4);                                                     \
                    } else {                                                                       \
                        GS_TILES(T, ND, 1, 8);                                                     \
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
