// SPDX-License-Identifier: MIT
// ggml_blocks.c -- the GGUF block layer: a float32 row to blocks of Q4_0,
// Q8_0, Q4_K, Q5_K or Q6_K (the scalar quantizers the GGUF writer uses), and
// blocks back to float32 (the values src/util/ggml_layout.h defines).
//
// How scales are chosen (in the spirit of llama.cpp's reference quantizers,
// not bit-identical to them):
//  - Q8_0: d = max|x| / 127, q = round(x / d).
//  - Q4_0: d = -(the signed element of largest |x|) / 8, so that element is
//    exactly -8 and the other side gets 7 steps; q = round(x / d) + 8.
//  - Q4_K / Q5_K: each 32-element sub-block is fitted as x ~ s * q - m
//    (q in 0..15 / 0..31, s >= 0, m >= 0) by weighted least squares over a
//    few candidate step sizes around (max - min(x, 0)) / nmax, weights
//    rms(x) + |x| (large values matter most); the eight s and m are then
//    coded in 6 bits against d = max s / 63 and dmin = max m / 63.
//  - Q6_K: each 16-element sub-block is fitted as x ~ s * q (q in -32..31)
//    the same way, the 16 s coded as int8 against d = -(largest |s|) / 128.
// In every format the codes are chosen last, against the scales as stored
// (f16-rounded and 6/8-bit coded): each element gets the nearest value its
// block can represent.
#include <math.h>
#include <string.h>

#include "layerpipe/convert.h"
#include "util/fp16.h"
#include "util/ggml_layout.h"

#define K_SUBS 8       // Q4_K / Q5_K: 32-element sub-blocks per block
#define Q6_SUBS 16     // Q6_K: 16-element sub-blocks per block
#define FIT_STEPS 21   // candidate step sizes per sub-block fit

static void put_f16(uint8_t *p, float v) {
    uint16_t h = lp_f32_to_f16(v);
    p[0] = (uint8_t)(h & 0xff);
    p[1] = (uint8_t)(h >> 8);
}

// round(v) clamped to [lo, hi]; v is finite.
static int round_clamp(float v, int lo, int hi) {
    if (v <= (float)lo) return lo;
    if (v >= (float)hi) return hi;
    return (int)lrintf(v);
}

size_t lp_ggml_row_bytes(enum lp_ggml_type t, int64_t cols) {
    int be = lp_ggml_block_elems(t);
    if (be == 0 || cols <= 0 || cols % be != 0) return 0;
    return (size_t)(cols / be) * (size_t)lp_ggml_block_bytes(t);
}

// ---- Q8_0, Q4_0 ------------------------------------------------------------

static void quantize_q8_0(const float *x, uint8_t *blk) {
    float amax = 0.0f;
    for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[j]));
    put_f16(blk, amax / 127.0f);
    float d = ggml_f16_at(blk);
    for (int j = 0; j < 32; j++)
        blk[GGML_Q8_0_QS + j] = (uint8_t)(int8_t)(d != 0.0f ? round_clamp(x[j] / d, -128, 127) : 0);
}

static void quantize_q4_0(const float *x, uint8_t *blk) {
    float peak = 0.0f; // the element of largest magnitude, with its sign
    for (int j = 0; j < 32; j++)
        if (fabsf(x[j]) > fabsf(peak)) peak = x[j];
    put_f16(blk, peak / -8.0f);
    float d = ggml_f16_at(blk);
    uint8_t q[32];
    for (int j = 0; j < 32; j++) q[j] = (uint8_t)(d != 0.0f ? round_clamp(x[j] / d, -8, 7) + 8 : 8);
    for (int j = 0; j < 16; j++) blk[GGML_Q4_0_QS + j] = (uint8_t)(q[j] | q[j + 16] << 4);
}

// ---- sub-block fits ----------------------------------------------------------

// Importance weights of n values: rms(x) + |x|.
static void fit_weights(const float *x, int n, float *wt) {
    float ss = 0.0f;
    for (int i = 0; i < n; i++) ss += x[i] * x[i];
    float rms = sqrtf(ss / (float)n);
    for (int i = 0; i < n; i++) wt[i] = rms + fabsf(x[i]);
}

// Fits x[n] ~ s * q - m, q in [0, nmax], s >= 0, m >= 0, minimizing the
// weighted squared error over FIT_STEPS step sizes (max - lo) / (nmax - 1 ..
// nmax + 1) with lo = min(min x, 0); for each, the codes are rounded and
// (s, m) refitted by least squares (m held at 0 if the fit wants it < 0).
static void fit_affine(const float *x, int n, int nmax, float *s_out, float *m_out) {
    float wt[32];
    fit_weights(x, n, wt);
    float lo = 0.0f, hi = x[0];
    for (int i = 0; i < n; i++) {
        lo = fminf(lo, x[i]);
        hi = fmaxf(hi, x[i]);
    }
    *s_out = 0.0f;
    *m_out = -lo;
    if (hi <= lo) return; // every value is lo (<= 0): m alone represents it
    float best_s = (hi - lo) / (float)nmax, best_m = -lo, best_err = INFINITY;
    for (int k = 0; k < FIT_STEPS; k++) {
        float inv = ((float)nmax - 1.0f + 0.1f * (float)k) / (hi - lo);
        // weighted sums for the least-squares fit of x ~ s q + b
        float sw = 0, sq = 0, sx = 0, sqq = 0, sqx = 0;
        for (int i = 0; i < n; i++) {
            float q = (float)round_clamp(inv * (x[i] - lo), 0, nmax);
            sw += wt[i];
            sq += wt[i] * q;
            sx += wt[i] * x[i];
            sqq += wt[i] * q * q;
            sqx += wt[i] * q * x[i];
        }
        float det = sw * sqq - sq * sq;
        if (det <= 0.0f) continue;
        float s = (sw * sqx - sq * sx) / det;
        float b = (sqq * sx - sq * sqx) / det;
        if (b > 0.0f) { // the grid would start above zero: pin it at zero
            b = 0.0f;
            s = sqq > 0.0f ? sqx / sqq : 0.0f;
        }
        if (!(s > 0.0f)) continue;
        float err = 0.0f;
        for (int i = 0; i < n; i++) {
            float q = (float)round_clamp((x[i] - b) / s, 0, nmax);
            float e = s * q + b - x[i];
            err += wt[i] * e * e;
        }
        if (err < best_err) {
            best_err = err;
            best_s = s;
            best_m = -b;
        }
    }
    *s_out = best_s;
    *m_out = best_m;
}

// Fits x[n] ~ s * q, q in [-nneg, npos], by weighted least squares over
// FIT_STEPS step sizes around peak / -nneg (peak: the signed element of
// largest magnitude, mapped to the longer negative side). s may be negative.
static float fit_symmetric(const float *x, int n, int nneg, int npos) {
    float wt[32];
    fit_weights(x, n, wt);
    float peak = 0.0f;
    for (int i = 0; i < n; i++)
        if (fabsf(x[i]) > fabsf(peak)) peak = x[i];
    if (peak == 0.0f) return 0.0f;
    float best_s = peak / -(float)nneg, best_err = INFINITY;
    for (int k = 0; k < FIT_STEPS; k++) {
        float inv = -((float)nneg - 1.0f + 0.1f * (float)k) / peak;
        float sqq = 0, sqx = 0;
        for (int i = 0; i < n; i++) {
            float q = (float)round_clamp(inv * x[i], -nneg, npos);
            sqq += wt[i] * q * q;
            sqx += wt[i] * q * x[i];
        }
        if (sqq <= 0.0f) continue;
        float s = sqx / sqq;
        if (s == 0.0f) continue;
        float err = 0.0f;
        for (int i = 0; i < n; i++) {
            float e = s * (float)round_clamp(x[i] / s, -nneg, npos) - x[i];
            err += wt[i] * e * e;
        }
        if (err < best_err) {
            best_err = err;
            best_s = s;
        }
    }
    return best_s;
}

// ---- Q4_K, Q5_K ----------------------------------------------------------------

// Packs the eight 6-bit (sc, m) pairs into scales[12] (the inverse of
// ggml_k4_scale_min).
static void pack_k4_scales(const int *sc, const int *m, uint8_t *scales) {
    memset(scales, 0, 12);
    for (int s = 0; s < K_SUBS; s++) {
        if (s < 4) {
            scales[s] |= (uint8_t)sc[s];
            scales[s + 4] |= (uint8_t)m[s];
        } else {
            scales[s + 4] = (uint8_t)((sc[s] & 15) | (m[s] & 15) << 4);
            scales[s - 4] |= (uint8_t)((sc[s] >> 4) << 6);
            scales[s] |= (uint8_t)((m[s] >> 4) << 6);
        }
    }
}

// One Q4_K (nmax 15) or Q5_K (nmax 31) block of 256 values.
static void quantize_k4(const float *x, uint8_t *blk, int nmax) {
    float s[K_SUBS], m[K_SUBS], s_max = 0.0f, m_max = 0.0f;
    for (int j = 0; j < K_SUBS; j++) {
        fit_affine(x + 32 * j, 32, nmax, &s[j], &m[j]);
        s_max = fmaxf(s_max, s[j]);
        m_max = fmaxf(m_max, m[j]);
    }
    put_f16(blk, s_max / 63.0f);
    put_f16(blk + GGML_QK_DMIN, m_max / 63.0f);
    float d = ggml_f16_at(blk), dmin = ggml_f16_at(blk + GGML_QK_DMIN);
    int sc[K_SUBS], mc[K_SUBS];
    for (int j = 0; j < K_SUBS; j++) {
        sc[j] = d > 0.0f ? round_clamp(s[j] / d, 0, 63) : 0;
        mc[j] = dmin > 0.0f ? round_clamp(m[j] / dmin, 0, 63) : 0;
    }
    pack_k4_scales(sc, mc, blk + GGML_QK_SCALES);
    uint8_t q[256];
    for (int i = 0; i < 256; i++) {
        int j = i / 32;
        float step = d * (float)sc[j], off = dmin * (float)mc[j];
        q[i] = (uint8_t)(step > 0.0f ? round_clamp((x[i] + off) / step, 0, nmax) : 0);
    }
    int q5 = nmax == 31;
    uint8_t *qs = blk + (q5 ? GGML_Q5_K_QS : GGML_Q4_K_QS);
    if (q5) memset(blk + GGML_Q5_K_QH, 0, 32);
    for (int k = 0; k < 4; k++) {
        for (int l = 0; l < 32; l++) {
            int lo = q[64 * k + l], hi = q[64 * k + 32 + l];
            qs[32 * k + l] = (uint8_t)((lo & 15) | (hi & 15) << 4);
            if (q5)
                blk[GGML_Q5_K_QH + l] |= (uint8_t)(((lo >> 4) << (2 * k)) | ((hi >> 4) << (2 * k + 1)));
        }
    }
}

// ---- Q6_K ----------------------------------------------------------------------

static void quantize_q6_k(const float *x, uint8_t *blk) {
    float s[Q6_SUBS], peak = 0.0f;
    for (int j = 0; j < Q6_SUBS; j++) {
        s[j] = fit_symmetric(x + 16 * j, 16, 32, 31);
        if (fabsf(s[j]) > fabsf(peak)) peak = s[j];
    }
    memset(blk, 0, (size_t)lp_ggml_block_bytes(LP_GGML_Q6_K));
    put_f16(blk + GGML_Q6_K_D, peak / -128.0f);
    float d = ggml_f16_at(blk + GGML_Q6_K_D);
    int8_t *sc = (int8_t *)(blk + GGML_Q6_K_SCALES);
    for (int j = 0; j < Q6_SUBS; j++) sc[j] = (int8_t)(d != 0.0f ? round_clamp(s[j] / d, -128, 127) : 0);
    for (int i = 0; i < 256; i++) {
        float step = d * (float)sc[i / 16];
        int q = (step != 0.0f ? round_clamp(x[i] / step, -32, 31) : 0) + 32;
        int h = i / 128, k = i % 128, l = k % 32, u = k / 32;
        uint8_t *ql = blk + 64 * h + l + 32 * (u & 1);
        *ql |= (uint8_t)(u < 2 ? q & 15 : (q & 15) << 4);
        blk[GGML_Q6_K_QH + 32 * h + l] |= (uint8_t)((q >> 4) << (2 * u));
    }
}

// ---- rows ------------------------------------------------------------------------

enum lp_status lp_ggml_quantize_row(enum lp_ggml_type t, const float *src, void *dst, int64_t cols,
                                    struct lp_error *err) {
    size_t row_bytes = lp_ggml_row_bytes(t, cols);
    if (row_bytes == 0)
        return lp_error_set(err, LP_ERR_INVALID_ARG,
                            "ggml_quantize_row: type %d (%s), %lld columns: not a known type or "
                            "not a positive multiple of its %d-element block",
                            (int)t, lp_ggml_type_name(t), (long long)cols, lp_ggml_block_elems(t));
    for (int64_t c = 0; c < cols; c++)
        if (!isfinite(src[c]))
            return lp_error_set(err, LP_ERR_INVALID_ARG,
                                "ggml_quantize_row: element %lld is %g, expected a finite value",
                                (long long)c, (double)src[c]);
    int be = lp_ggml_block_elems(t), bb = lp_ggml_block_bytes(t);
    uint8_t *out = dst;
    for (int64_t b = 0; b < cols / be; b++) {
        const float *x = src + b * be;
        uint8_t *blk = out + b * bb;
        switch (t) {
        case LP_GGML_Q4_0: quantize_q4_0(x, blk); break;
        case LP_GGML_Q8_0: quantize_q8_0(x, blk); break;
        case LP_GGML_Q4_K: quantize_k4(x, blk, 15); break;
        case LP_GGML_Q5_K: quantize_k4(x, blk, 31); break;
        case LP_GGML_Q6_K: quantize_q6_k(x, blk); break;
        }
    }
    return LP_OK;
}

enum lp_status lp_ggml_dequantize_row(enum lp_ggml_type t, const void *src, float *dst,
                                      int64_t cols, struct lp_error *err) {
    if (lp_ggml_row_bytes(t, cols) == 0)
        return lp_error_set(err, LP_ERR_INVALID_ARG,
                            "ggml_dequantize_row: type %d (%s), %lld columns: not a known type "
                            "or not a positive multiple of its %d-element block",
                            (int)t, lp_ggml_type_name(t), (long long)cols, lp_ggml_block_elems(t));
    int be = lp_ggml_block_elems(t), bb = lp_ggml_block_bytes(t);
    for (int64_t b = 0; b < cols / be; b++)
        ggml_decode_block(t, (const uint8_t *)src + b * bb, dst + b * be);
    return LP_OK;
}
