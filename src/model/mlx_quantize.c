// SPDX-License-Identifier: MIT
// mlx_quantize.c -- MLX affine quantization and its reference dequantizer,
// bit-compatible with MLX's CPU `quantize` (mlx/backend/cpu/quantized.cpp):
// per group in float32, edge = the end with the larger magnitude (max on a
// tie), scale = max((max - min) / (2^bits - 1), 1e-7) negated when the edge
// is the max, q0 = rint(edge / scale), and when q0 != 0 the scale is snapped
// so the edge is exact (scale = edge / q0, bias = edge); codes are
// clip(rint((w - bias) / scale), 0, 2^bits - 1), packed little-endian into
// uint32 words (element 0 in the lowest bits). rint rounds half to even, as
// std::rint does in MLX; MLX's Metal kernel rounds halves away from zero, so
// Metal-converted files can differ from ours by one code on exact halves.
#include <math.h>
#include <string.h>

#include "layerpipe/convert.h"
#include "util/fp16.h"

#define MLX_EPS 1e-7f // MLX's floor on the scale: a constant group must not divide by 0

static enum lp_status check_params(int64_t rows, int64_t cols, int bits, int group_size,
                                   enum lp_dtype scale_dtype, struct lp_error *err) {
    if (bits != 2 && bits != 4 && bits != 8)
        return lp_error_set(err, LP_ERR_INVALID_ARG, "mlx quantize: bits %d, expected 2, 4 or 8",
                            bits);
    if (group_size != 32 && group_size != 64 && group_size != 128)
        return lp_error_set(err, LP_ERR_INVALID_ARG,
                            "mlx quantize: group size %d, expected 32, 64 or 128", group_size);
    if (scale_dtype != LP_DTYPE_BF16 && scale_dtype != LP_DTYPE_F16 && scale_dtype != LP_DTYPE_F32)
        return lp_error_set(err, LP_ERR_INVALID_ARG,
                            "mlx quantize: scale dtype %s, expected BF16, F16 or F32",
                            lp_dtype_name(scale_dtype));
    if (rows < 0 || cols < 0 || cols % group_size != 0)
        return lp_error_set(err, LP_ERR_INVALID_ARG,
                            "mlx quantize: shape [%lld, %lld]: cols must be a multiple of %d",
                            (long long)rows, (long long)cols, group_size);
    // Keep every later product (rows * cols * 4 bytes) far from overflow.
    if (cols > 0 && rows > (INT64_MAX / 8) / cols)
        return lp_error_set(err, LP_ERR_INVALID_ARG, "mlx quantize: shape [%lld, %lld] too large",
                            (long long)rows, (long long)cols);
    return LP_OK;
}

enum lp_status lp_mlx_quantized_bytes(int64_t rows, int64_t cols, int bits, int group_size,
                                      enum lp_dtype scale_dtype, size_t *q_bytes,
                                      size_t *scale_bytes, struct lp_error *err) {
    *q_bytes = 0;
    *scale_bytes = 0;
    enum lp_status st = check_params(rows, cols, bits, group_size, scale_dtype, err);
    if (st != LP_OK) return st;
    *q_bytes = (size_t)(rows * (cols * bits / 32)) * 4;
    *scale_bytes = (size_t)(rows * (cols / group_size)) * lp_dtype_size(scale_dtype);
    return LP_OK;
}

// Stores v into element i of a scale/bias array of dtype, rounding to nearest even.
static void store_scale(void *dst, int64_t i, enum lp_dtype dtype, float v) {
    if (dtype == LP_DTYPE_BF16) {
        ((uint16_t *)dst)[i] = lp_f32_to_bf16(v);
    } else if (dtype == LP_DTYPE_F16) {
        ((uint16_t *)dst)[i] = lp_f32_to_f16(v);
    } else {
        ((float *)dst)[i] = v;
    }
}

static float load_scale(const void *src, int64_t i, enum lp_dtype dtype) {
    if (dtype == LP_DTYPE_BF16) return lp_bf16_to_f32(((const uint16_t *)src)[i]);
    if (dtype == LP_DTYPE_F16) return lp_f16_to_f32(((const uint16_t *)src)[i]);
    return ((const float *)src)[i];
}

enum lp_status lp_mlx_quantize(const float *w, int64_t rows, int64_t cols, int bits,
                               int group_size, enum lp_dtype scale_dtype, uint32_t *q,
                               void *scales, void *biases, struct lp_error *err) {
    enum lp_status st = check_params(rows, cols, bits, group_size, scale_dtype, err);
    if (st != LP_OK) return st;
    const float n_bins = (float)((1 << bits) - 1);
    const int el_per_word = 32 / bits;
    const int64_t n_groups = rows * (cols / group_size); // groups never straddle rows
    const int words_per_group = group_size / el_per_word;

    for (int64_t g = 0; g < n_groups; g++) {
        const float *x = w + g * group_size; // [group_size]
        float w_min = INFINITY, w_max = -INFINITY;
        for (int j = 0; j < group_size; j++) {
            w_max = fmaxf(w_max, x[j]);
            w_min = fminf(w_min, x[j]);
        }
        bool edge_is_min = fabsf(w_min) > fabsf(w_max);
        float scale = fmaxf((w_max - w_min) / n_bins, MLX_EPS);
        scale = edge_is_min ? scale : -scale;
        float edge = edge_is_min ? w_min : w_max;
        float q0 = rintf(edge / scale);
        float bias = 0.0f;
        if (q0 != 0.0f) {
            scale = edge / q0;
            bias = edge;
        }
        uint32_t *out = q + g * words_per_group; // [words_per_group]
        for (int k = 0; k < words_per_group; k++) {
            uint32_t word = 0;
            for (int e = 0; e < el_per_word; e++) {
                float v = rintf((x[k * el_per_word + e] - bias) / scale);
                v = fminf(fmaxf(v, 0.0f), n_bins); // also maps NaN to 0 (fmaxf drops NaN)
                word |= (uint32_t)v << (e * bits);
            }
            out[k] = word;
        }
        store_scale(scales, g, scale_dtype, scale);
        store_scale(biases, g, scale_dtype, bias);
    }
    return LP_OK;
}

enum lp_status lp_mlx_dequantize(const uint32_t *q, const void *scales, const void *biases,
                                 int64_t rows, int64_t cols, int bits, int group_size,
                                 enum lp_dtype scale_dtype, float *out, struct lp_error *err) {
    enum lp_status st = check_params(rows, cols, bits, group_size, scale_dtype, err);
    if (st != LP_OK) return st;
    const uint32_t mask = (1u << bits) - 1u;
    const int el_per_word = 32 / bits;
    const int64_t n = rows * cols;
    for (int64_t i = 0; i < n; i++) {
        int64_t g = i / group_size;
        uint32_t code = (q[i / el_per_word] >> ((i % el_per_word) * bits)) & mask;
        float s = load_scale(scales, g, scale_dtype);
        float b = load_scale(biases, g, scale_dtype);
        out[i] = s * (float)code + b;
    }
    return LP_OK;
}
