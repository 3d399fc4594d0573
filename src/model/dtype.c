// SPDX-License-Identifier: MIT
// dtype.c -- element types: sizes and names as safetensors writes them.
#include "layerpipe/model.h"

size_t lp_dtype_size(enum lp_dtype dtype) {
    switch (dtype) {
    case LP_DTYPE_F32: return 4;
    case LP_DTYPE_F16: return 2;
    case LP_DTYPE_BF16: return 2;
    case LP_DTYPE_U32: return 4;
    case LP_DTYPE_I32: return 4;
    case LP_DTYPE_U8: return 1;
    case LP_DTYPE_I8: return 1;
    case LP_DTYPE_I64: return 8;
    }
    return 0;
}

const char *lp_dtype_name(enum lp_dtype dtype) {
    switch (dtype) {
    case LP_DTYPE_F32: return "F32";
    case LP_DTYPE_F16: return "F16";
    case LP_DTYPE_BF16: return "BF16";
    case LP_DTYPE_U32: return "U32";
    case LP_DTYPE_I32: return "I32";
    case LP_DTYPE_U8: return "U8";
    case LP_DTYPE_I8: return "I8";
    case LP_DTYPE_I64: return "I64";
    }
    return "?";
}

size_t lp_weight_bytes(const struct lp_weight *w) {
    switch (w->format) {
    case LP_WEIGHT_F32: return (size_t)(w->rows * w->cols) * 4;
    case LP_WEIGHT_F16:
    case LP_WEIGHT_BF16: return (size_t)(w->rows * w->cols) * 2;
    case LP_WEIGHT_MLX_AFFINE: {
        size_t codes = (size_t)(w->rows * w->cols) * (size_t)w->bits / 8;
        size_t groups = (size_t)(w->rows * (w->cols / w->group_size));
        return codes + 2 * groups * lp_dtype_size(w->scale_dtype);
    }
    }
    return 0;
}
