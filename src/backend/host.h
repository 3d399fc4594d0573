// SPDX-License-Identifier: MIT
// host.h -- what the host-memory backends (ref, cpu) share: the buffer and
// weight handles, the bounds-checked buffer copies, weight validation and a
// scalar dequantizer (GGUF blocks through util/ggml_layout.h). Each backend file that includes this defines its own
// (identical) struct lp_buf / lp_bweight; no other backend ever sees them.
// Everything is static inline: there is no host.c.
#ifndef LAYERPIPE_BACKEND_HOST_H
#define LAYERPIPE_BACKEND_HOST_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend_i.h"
#include "layerpipe/convert.h"
#include "util/argmax.h"
#include "util/fp16.h"
#include "util/ggml_layout.h"

#define LP_HOST_ALIGN 64

// Host memory: data is LP_HOST_ALIGN-aligned, bytes usable bytes.
struct lp_buf {
    void *data;
    size_t bytes;
};

// A host weight borrows the model's buffers (w.data, w.scales, w.biases);
// packed is the backend's own copy of them in a kernel's layout (the CPU's
// GGUF strips), owned by the handle, or NULL.
struct lp_bweight {
    struct lp_weight w;
    void *packed;
};

static inline enum lp_status lp_host_buf_alloc(const char *who, size_t bytes, struct lp_buf **out,
                                               struct lp_error *err) {
    *out = NULL;
    size_t rounded = bytes ? bytes : 1;
    if (rounded > SIZE_MAX - LP_HOST_ALIGN)
        return lp_error_set(err, LP_ERR_INVALID_ARG, "%s: buf_alloc: %zu bytes is too large", who,
                            bytes);
    rounded = (rounded + LP_HOST_ALIGN - 1) / LP_HOST_ALIGN * LP_HOST_ALIGN;
    struct lp_buf *b = malloc(sizeof *b);
    void *data = aligned_alloc(LP_HOST_ALIGN, rounded);
    if (!b || !data) {
        free(b);
        free(data);
        return lp_error_set(err, LP_ERR_NOMEM, "%s: buf_alloc: out of memory for %zu bytes", who,
                            bytes);
    }
    b->data = data;
    b->bytes = bytes;
    *out = b;
    return LP_OK;
}

static inline void lp_host_buf_free(struct lp_buf *b) {
    if (!b) return;
    free(b->data);
    free(b);
}

static inline enum lp_status lp_host_buf_range(const char *who, const char *op,
                                               const struct lp_buf *b, size_t offset, size_t bytes,
                                               struct lp_error *err) {
    if (!b)
        return lp_error_set(err, LP_ERR_INVALID_ARG, "%s: %s: NULL buffer", who, op);
    if (offset > b->bytes || bytes > b->bytes - offset)
        return lp_error_set(err, LP_ERR_INVALID_ARG,
                            "%s: %s: range [%zu, +%zu) outside a buffer of %zu bytes", who, op,
                            offset, bytes, b->bytes);
    return LP_OK;
}

static inline enum lp_status lp_host_buf_write(const char *who, struct lp_buf *dst, size_t offset,
                                               const void *src, size_t bytes,
                                               struct lp_error *err) {
    enum lp_status st = lp_host_buf_range(who, "buf_write", dst, offset, bytes, err);
    if (st != LP_OK) return st;
    if (bytes) memcpy((char *)dst->data + offset, src, bytes);
    return LP_OK;
}

static inline enum lp_status lp_host_buf_read(const char *who, const struct lp_buf *src,
                                              size_t offset, void *dst, size_t bytes,
                                              struct lp_error *err) {
    enum lp_status st = lp_host_buf_range(who, "buf_read", src, offset, bytes, err);
    if (st != LP_OK) return st;
    if (bytes) memcpy(dst, (const char *)src->data + offset, bytes);
    return LP_OK;
}

// argmax_rows (backend_i.h) for rows [r0, r1) of x [n_rows, cols]: the
// greedy id of each row and its first non-finite index, into ids [2, n_rows].
static inline void lp_host_argmax_rows(struct lp_buf *ids, const struct lp_buf *x, int n_rows,
                                       int cols, int64_t r0, int64_t r1) {
    int32_t *out = ids->data;
    const float *xp = x->data;
    for (int64_t r = r0; r < r1; r++) {
        out[r] = lp_argmax_f32(xp + r * cols, cols);
        out[n_rows + r] = lp_first_nonfinite_f32(xp + r * cols, cols);
    }
}

// Checks that w describes a matrix this backend family can compute with.
static inline enum lp_status lp_host_weight_check(const char *who, const struct lp_weight *w,
                                                  struct lp_error *err) {
    if (!w || !w->data)
        return lp_error_set(err, LP_ERR_INVALID_ARG, "%s: weight_upload: NULL weight", who);
    if (w->rows <= 0 || w->cols <= 0 || w->rows > INT32_MAX || w->cols > INT32_MAX)
        return lp_error_set(err, LP_ERR_INVALID_ARG,
                            "%s: weight_upload: shape [%lld, %lld], expected positive and < 2^31",
                            who, (long long)w->rows, (long long)w->cols);
    switch (w->format) {
    case LP_WEIGHT_F32:
    case LP_WEIGHT_F16:
    case LP_WEIGHT_BF16:
        return LP_OK;
    case LP_WEIGHT_GGML:
        if (lp_ggml_block_elems(w->ggml_type) == 0)
            return lp_error_set(err, LP_ERR_UNSUPPORTED,
                                "%s: weight_upload: GGUF block type %d, expected Q4_0, Q8_0, "
                                "Q4_K, Q5_K or Q6_K", who, (int)w->ggml_type);
        if (w->cols % lp_ggml_block_elems(w->ggml_type) != 0)
            return lp_error_set(err, LP_ERR_INVALID_ARG,
                                "%s: weight_upload: %lld columns, not a multiple of the %d "
                                "elements of a %s block", who, (long long)w->cols,
                                lp_ggml_block_elems(w->ggml_type), lp_ggml_type_name(w->ggml_type));
        return LP_OK;
    case LP_WEIGHT_MLX_AFFINE:
        if (w->bits != 4 && w->bits != 8)
            return lp_error_set(err, LP_ERR_UNSUPPORTED,
                                "%s: weight_upload: MLX affine bits %d, expected 4 or 8", who,
                                w->bits);
        if (w->group_size != 32 && w->group_size != 64 && w->group_size != 128)
            return lp_error_set(err, LP_ERR_UNSUPPORTED,
                                "%s: weight_upload: MLX group size %d, expected 32, 64 or 128",
                                who, w->group_size);
        if (w->cols % w->group_size != 0)
            return lp_error_set(err, LP_ERR_INVALID_ARG,
                                "%s: weight_upload: %lld columns, not a multiple of group %d", who,
                                (long long)w->cols, w->group_size);
        if (w->scale_dtype != LP_DTYPE_BF16 && w->scale_dtype != LP_DTYPE_F16)
            return lp_error_set(err, LP_ERR_UNSUPPORTED,
                                "%s: weight_upload: MLX scale dtype %d, expected BF16 or F16", who,
                                (int)w->scale_dtype);
        if (!w->scales || !w->biases)
            return lp_error_set(err, LP_ERR_INVALID_ARG,
                                "%s: weight_upload: MLX weight without scales or biases", who);
        return LP_OK;
    }
    return lp_error_set(err, LP_ERR_UNSUPPORTED, "%s: weight_upload: weight format %d", who,
                        (int)w->format);
}

// A 16-bit scale or bias as float.
static inline float lp_host_half(enum lp_dtype dt, const void *p, int64_t i) {
    uint16_t h = ((const uint16_t *)p)[i];
    return dt == LP_DTYPE_BF16 ? lp_bf16_to_f32(h) : lp_f16_to_f32(h);
}

// The MLX code of element (r, c): uint32 words, element 0 in the lowest bits.
static inline uint32_t lp_host_mlx_code(const struct lp_weight *w, int64_t r, int64_t c) {
    int64_t per_word = 32 / w->bits;
    int64_t words_per_row = w->cols / per_word;
    const uint32_t *row = (const uint32_t *)w->data + r * words_per_row;
    uint32_t word = row[c / per_word];
    int shift = (int)(c % per_word) * w->bits;
    return (word >> shift) & ((1u << w->bits) - 1u);
}

// w[r][c] as float: the plain definition of every format.
static inline float lp_host_weight_at(const struct lp_weight *w, int64_t r, int64_t c) {
    int64_t i = r * w->cols + c;
    switch (w->format) {
    case LP_WEIGHT_F32:
        return ((const float *)w->data)[i];
    case LP_WEIGHT_F16:
        return lp_f16_to_f32(((const uint16_t *)w->data)[i]);
    case LP_WEIGHT_BF16:
        return lp_bf16_to_f32(((const uint16_t *)w->data)[i]);
    case LP_WEIGHT_MLX_AFFINE: {
        int64_t gi = r * (w->cols / w->group_size) + c / w->group_size;
        float s = lp_host_half(w->scale_dtype, w->scales, gi);
        float b = lp_host_half(w->scale_dtype, w->biases, gi);
        return s * (float)lp_host_mlx_code(w, r, c) + b;
    }
    case LP_WEIGHT_GGML: // row r's blocks, then the layout's value of element c
        return ggml_value_at(w->ggml_type,
                             (const uint8_t *)w->data +
                                 (size_t)r * lp_ggml_row_bytes(w->ggml_type, w->cols),
                             c);
    }
    return 0.0f;
}

#endif
