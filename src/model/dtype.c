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

int lp_ggml_block_elems(enum lp_ggml_type t) {
    switch (t) {
    case LP_GGML_Q4_0:
    case LP_GGML_Q8_0: return 32;
    case LP_GGML_Q4_K:
    case LP_GGML_Q5_K:
    case LP_GGML_Q6_K: return 256;
    }
    return 0;
}

int lp_ggml_block_bytes(enum lp_ggml_type t) {
    switch (t) {
    case LP_GGML_Q4_0: return 2 + 16;            // d, 32 nibbles
    case LP_GGML_Q8_0: return 2 + 32;            // d, 32 int8
    case LP_GGML_Q4_K: return 2 + 2 + 12 + 128;  // d, dmin, scales, 256 nibbles
    case LP_GGML_Q5_K: return 2 + 2 + 12 + 32 + 128; // + the fifth bits
    case LP_GGML_Q6_K: return 128 + 64 + 16 + 2; // ql, qh, scales, d
    }
    return 0;
}

const char *lp_ggml_type_name(enum lp_ggml_type t) {
    switch (t) {
    case LP_GGML_Q4_0: return "Q4_0";
    case LP_GGML_Q8_0: return "Q8_0";
    case LP_GGML_Q4_K: return "Q4_K";
    case LP_GGML_Q5_K: return "Q5_K";
    case LP_GGML_Q6_K: return "Q6_K";
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
    case LP_WEIGHT_GGML: {
        int elems = lp_ggml_block_elems(w->ggml_type);
        if (elems == 0) return 0;
        return (size_t)w->rows * (size_t)(w->cols / elems) * (size_t)lp_ggml_block_bytes(w->ggml_type);
    }
    }
    return 0;
}
