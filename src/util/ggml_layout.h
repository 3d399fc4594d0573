// SPDX-License-Identifier: MIT
// ggml_layout.h -- GGUF's block formats as inline field readers: where each
// element's code, scale and min live in a block, and the float each element
// stands for. The one definition of those values, shared by the block layer
// (src/model/ggml_blocks.c), the ref backend (backend/host.h) and the CPU
// kernels; a row-at-a-time decoder (ggml_decode_block) and the element
// accessor (ggml_value_at) compute the same float expression, bit for bit.
//
// Layouts (llama.cpp's ggml-common.h; all fields little-endian, f16 = IEEE
// half; "sub-block s" = elements [32s, 32s + 32) for Q4_K/Q5_K):
//   Q4_0 (32 elems, 18 B): d f16 | qs[16]: byte j = element j (low nibble),
//        element j + 16 (high nibble).              w = d * (q - 8)
//   Q8_0 (32 elems, 34 B): d f16 | qs[32] int8.      w = d * q
//   Q4_K (256 elems, 144 B): d f16 | dmin f16 | scales[12] | qs[128]:
//        qs byte 32k + l holds element 64k + l (low nibble) and 64k + 32 + l
//        (high nibble). w = (d * sc_s) * q - (dmin * m_s), s = i / 32, with
//        sc_s, m_s the 6-bit pairs of scales[12]:
//          s < 4:  sc = scales[s] & 63, m = scales[s + 4] & 63
//          s >= 4: sc = (scales[s + 4] & 15) | (scales[s - 4] >> 6) << 4
//                  m  = (scales[s + 4] >> 4) | (scales[s] >> 6) << 4
//   Q5_K (256 elems, 176 B): d | dmin | scales[12] | qh[32] | qs[128]: as
//        Q4_K, plus 16 when bit s of qh[i % 32] is set (q in 0..31).
//   Q6_K (256 elems, 210 B): ql[128] | qh[64] | scales[16] int8 | d f16:
//        element i, half h = i / 128, k = i % 128, l = k % 32, quarter
//        u = k / 32: low 4 bits from ql[64h + l + 32 (u & 1)], low nibble for
//        u < 2, high for u >= 2; high 2 bits = (qh[32h + l] >> 2u) & 3;
//        w = (d * scales[i / 16]) * (q - 32).
#ifndef LAYERPIPE_UTIL_GGML_LAYOUT_H
#define LAYERPIPE_UTIL_GGML_LAYOUT_H

#include <stdint.h>

#include "layerpipe/model.h"
#include "util/fp16.h"

// Byte offsets of the fields inside a block.
#define GGML_Q4_0_QS 2
#define GGML_Q8_0_QS 2
#define GGML_QK_DMIN 2     // Q4_K / Q5_K
#define GGML_QK_SCALES 4   // Q4_K / Q5_K: 12 bytes of 6-bit scales and mins
#define GGML_Q4_K_QS 16
#define GGML_Q5_K_QH 16
#define GGML_Q5_K_QS 48
#define GGML_Q6_K_QH 128
#define GGML_Q6_K_SCALES 192
#define GGML_Q6_K_D 208

// The f16 at p as float (p need not be aligned).
static inline float ggml_f16_at(const uint8_t *p) {
    return lp_f16_to_f32((uint16_t)(p[0] | (unsigned)p[1] << 8));
}

// The 6-bit scale and min of sub-block s (0..7) of a Q4_K / Q5_K block's
// scales[12].
static inline void ggml_k4_scale_min(const uint8_t *scales, int s, int *sc, int *m) {
    if (s < 4) {
        *sc = scales[s] & 63;
        *m = scales[s + 4] & 63;
    } else {
        *sc = (scales[s + 4] & 15) | (scales[s - 4] >> 6) << 4;
        *m = (scales[s + 4] >> 4) | (scales[s] >> 6) << 4;
    }
}

// The code of element i (0..255) of a Q4_K / Q5_K block (0..15 / 0..31).
static inline int ggml_q4_k_code(const uint8_t *blk, int i) {
    uint8_t b = blk[GGML_Q4_K_QS + 32 * (i / 64) + i % 32];
    return (i % 64) < 32 ? b & 15 : b >> 4;
}
static inline int ggml_q5_k_code(const uint8_t *blk, int i) {
    uint8_t b = blk[GGML_Q5_K_QS + 32 * (i / 64) + i % 32];
    int lo = (i % 64) < 32 ? b & 15 : b >> 4;
    return lo | ((blk[GGML_Q5_K_QH + i % 32] >> (i / 32)) & 1) << 4;
}
// The code of element i (0..255) of a Q6_K block (0..63; the value is q - 32).
static inline int ggml_q6_k_code(const uint8_t *blk, int i) {
    int h = i / 128, k = i % 128, l = k % 32, u = k / 32;
    uint8_t b = blk[64 * h + l + 32 * (u & 1)];
    int lo = u < 2 ? b & 15 : b >> 4;
    return lo | ((blk[GGML_Q6_K_QH + 32 * h + l] >> (2 * u)) & 3) << 4;
}

// The float element i of one block of type t stands for. Unknown types give 0.
static inline float ggml_block_value(enum lp_ggml_type t, const uint8_t *blk, int i) {
    switch (t) {
    case LP_GGML_Q4_0: {
        uint8_t b = blk[GGML_Q4_0_QS + i % 16];
        int q = i < 16 ? b & 15 : b >> 4;
        return ggml_f16_at(blk) * (float)(q - 8);
    }
    case LP_GGML_Q8_0:
        return ggml_f16_at(blk) * (float)(int8_t)blk[GGML_Q8_0_QS + i];
    case LP_GGML_Q4_K:
    case LP_GGML_Q5_K: {
        int sc, m;
        ggml_k4_scale_min(blk + GGML_QK_SCALES, i / 32, &sc, &m);
        float d1 = ggml_f16_at(blk) * (float)sc;
        float m1 = ggml_f16_at(blk + GGML_QK_DMIN) * (float)m;
        int q = t == LP_GGML_Q4_K ? ggml_q4_k_code(blk, i) : ggml_q5_k_code(blk, i);
        return d1 * (float)q - m1;
    }
    case LP_GGML_Q6_K: {
        float d1 = ggml_f16_at(blk + GGML_Q6_K_D) * (float)(int8_t)blk[GGML_Q6_K_SCALES + i / 16];
        return d1 * (float)(ggml_q6_k_code(blk, i) - 32);
    }
    }
    return 0.0f;
}

// w[c] of a row of blocks of type t (row: the row's first block; c < cols).
static inline float ggml_value_at(enum lp_ggml_type t, const void *row, int64_t c) {
    int be = lp_ggml_block_elems(t);
    if (be == 0) return 0.0f;
    const uint8_t *blk = (const uint8_t *)row + (c / be) * lp_ggml_block_bytes(t);
    return ggml_block_value(t, blk, (int)(c % be));
}

// All elements of one block of type t into y[block_elems], in the same
// float expressions as ggml_block_value, walking the layout in byte order.
static inline void ggml_decode_block(enum lp_ggml_type t, const uint8_t *blk, float *y) {
    switch (t) {
    case LP_GGML_Q4_0: {
        float d = ggml_f16_at(blk);
        const uint8_t *qs = blk + GGML_Q4_0_QS;
        for (int j = 0; j < 16; j++) {
            y[j] = d * (float)((qs[j] & 15) - 8);
            y[j + 16] = d * (float)((qs[j] >> 4) - 8);
        }
        return;
    }
    case LP_GGML_Q8_0: {
        float d = ggml_f16_at(blk);
        for (int j = 0; j < 32; j++) y[j] = d * (float)(int8_t)blk[GGML_Q8_0_QS + j];
        return;
    }
    case LP_GGML_Q4_K:
    case LP_GGML_Q5_K: {
        float d = ggml_f16_at(blk), dmin = ggml_f16_at(blk + GGML_QK_DMIN);
        int q5 = t == LP_GGML_Q5_K;
        const uint8_t *qs = blk + (q5 ? GGML_Q5_K_QS : GGML_Q4_K_QS);
        const uint8_t *qh = blk + GGML_Q5_K_QH;
        for (int k = 0; k < 4; k++) { // 64 elements: sub-blocks 2k (low), 2k + 1 (high)
            int sc0, m0, sc1, m1;
            ggml_k4_scale_min(blk + GGML_QK_SCALES, 2 * k, &sc0, &m0);
            ggml_k4_scale_min(blk + GGML_QK_SCALES, 2 * k + 1, &sc1, &m1);
            float da = d * (float)sc0, ma = dmin * (float)m0;
            float db = d * (float)sc1, mb = dmin * (float)m1;
            for (int l = 0; l < 32; l++) {
                int lo = qs[32 * k + l] & 15, hi = qs[32 * k + l] >> 4;
                if (q5) {
                    lo |= ((qh[l] >> (2 * k)) & 1) << 4;
                    hi |= ((qh[l] >> (2 * k + 1)) & 1) << 4;
                }
                y[64 * k + l] = da * (float)lo - ma;
                y[64 * k + 32 + l] = db * (float)hi - mb;
            }
        }
        return;
    }
    case LP_GGML_Q6_K: {
        float d = ggml_f16_at(blk + GGML_Q6_K_D);
        const int8_t *sc = (const int8_t *)(blk + GGML_Q6_K_SCALES);
        for (int h = 0; h < 2; h++) {
            const uint8_t *ql = blk + 64 * h, *qh = blk + GGML_Q6_K_QH + 32 * h;
            for (int l = 0; l < 32; l++) {
                int q0 = (ql[l] & 15) | ((qh[l] >> 0) & 3) << 4;
                int q1 = (ql[l + 32] & 15) | ((qh[l] >> 2) & 3) << 4;
                int q2 = (ql[l] >> 4) | ((qh[l] >> 4) & 3) << 4;
                int q3 = (ql[l + 32] >> 4) | ((qh[l] >> 6) & 3) << 4;
                int i = 128 * h + l;
                y[i] = d * (float)sc[i / 16] * (float)(q0 - 32);
                y[i + 32] = d * (float)sc[(i + 32) / 16] * (float)(q1 - 32);
                y[i + 64] = d * (float)sc[(i + 64) / 16] * (float)(q2 - 32);
                y[i + 96] = d * (float)sc[(i + 96) / 16] * (float)(q3 - 32);
            }
        }
        return;
    }
    }
}

#endif
