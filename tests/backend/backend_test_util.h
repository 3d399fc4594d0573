// SPDX-License-Identifier: MIT
// backend_test_util.h -- helpers shared by the backend tests: a seeded RNG,
// buffers filled from host arrays, random weights of every format, GGUF
// blocks included (the test owns their memory), and the relative L2 error used as the comparison metric.
#ifndef LP_BACKEND_TEST_UTIL_H
#define LP_BACKEND_TEST_UTIL_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend_i.h"
#include "layerpipe/convert.h"
#include "util/fp16.h"
#include "lp_test.h"

static uint64_t tu_rng = 0x9e3779b97f4a7c15ull;

static inline uint32_t tu_u32(void) {
    tu_rng ^= tu_rng << 13;
    tu_rng ^= tu_rng >> 7;
    tu_rng ^= tu_rng << 17;
    return (uint32_t)(tu_rng >> 16);
}

// Uniform in [-1, 1).
static inline float tu_f(void) { return (float)(tu_u32() & 0xffffff) / 8388608.0f - 1.0f; }

static inline float *tu_randv(int64_t n, float amp) {
    float *v = malloc((size_t)n * sizeof(float));
    for (int64_t i = 0; i < n; i++) v[i] = amp * tu_f();
    return v;
}

// A buffer of `bytes` on be, filled from data (zeros when data is NULL).
static inline struct lp_buf *tu_buf(struct lp_backend *be, const void *data, size_t bytes) {
    struct lp_buf *b = NULL;
    struct lp_error err_ = {0}, *err = &err_;
    CHECK_OK(be->iface.buf_alloc(be->ctx, bytes, &b, err), err);
    if (!b) return NULL;
    void *zero = NULL;
    if (!data) data = zero = calloc(1, bytes ? bytes : 1);
    CHECK_OK(be->iface.buf_write(be->ctx, b, 0, data, bytes, err), err);
    free(zero);
    return b;
}

static inline void tu_read(struct lp_backend *be, const struct lp_buf *b, void *dst, size_t bytes) {
    struct lp_error err_ = {0}, *err = &err_;
    CHECK_OK(be->iface.buf_read(be->ctx, b, 0, dst, bytes, err), err);
}

static inline void tu_free(struct lp_backend *be, struct lp_buf *b) { be->iface.buf_free(be->ctx, b); }

// ||a - b|| / ||b||  (lp_test.h's lp_rel_l2)
static inline double tu_rel_l2(const float *a, const float *b, int64_t n) {
    return lp_rel_l2(a, b, (size_t)n);
}

// A random weight whose buffers the test owns (free with tu_weight_free).
// MLX scales are in [-0.02, 0.02) (negative half the time), biases in [-0.5, 0.5).
static inline struct lp_weight tu_weight(enum lp_weight_format f, int64_t rows, int64_t cols,
                                         int bits, int gs, enum lp_dtype sdt) {
    struct lp_weight w = {.format = f, .rows = rows, .cols = cols, .bits = bits,
                          .group_size = gs, .scale_dtype = sdt};
    int64_t n = rows * cols;
    if (f == LP_WEIGHT_F32) {
        float *d = malloc((size_t)n * 4);
        for (int64_t i = 0; i < n; i++) d[i] = 0.1f * tu_f();
        w.data = d;
    } else if (f == LP_WEIGHT_F16 || f == LP_WEIGHT_BF16) {
        uint16_t *d = malloc((size_t)n * 2);
        for (int64_t i = 0; i < n; i++)
            d[i] = f == LP_WEIGHT_F16 ? lp_f32_to_f16(0.1f * tu_f()) : lp_f32_to_bf16(0.1f * tu_f());
        w.data = d;
    } else {
        int64_t words = n * bits / 32, ng = n / gs;
        uint32_t *d = malloc((size_t)words * 4);
        for (int64_t i = 0; i < words; i++) d[i] = tu_u32() ^ (tu_u32() << 16);
        uint16_t *s = malloc((size_t)ng * 2), *b = malloc((size_t)ng * 2);
        for (int64_t i = 0; i < ng; i++) {
            float sv = 0.02f * tu_f(), bv = 0.5f * tu_f();
            s[i] = sdt == LP_DTYPE_BF16 ? lp_f32_to_bf16(sv) : lp_f32_to_f16(sv);
            b[i] = sdt == LP_DTYPE_BF16 ? lp_f32_to_bf16(bv) : lp_f32_to_f16(bv);
        }
        w.data = d;
        w.scales = s;
        w.biases = b;
    }
    return w;
}

// A random GGUF weight of type t (rows x cols, cols a multiple of the
// block), owned by the test (tu_weight_free). quantized: 0.1 * uniform
// values through lp_ggml_quantize_row (blocks as a file holds them); else
// random bytes with the f16 scales replaced by +-[0.001, 0.011) (every code,
// every 6-bit scale and min, both signs of d).
static inline struct lp_weight tu_weight_ggml(enum lp_ggml_type t, int64_t rows, int64_t cols,
                                              bool quantized) {
    struct lp_weight w = {.format = LP_WEIGHT_GGML, .rows = rows, .cols = cols, .ggml_type = t};
    size_t rb = lp_ggml_row_bytes(t, cols);
    uint8_t *d = malloc(rb * (size_t)rows);
    float *x = malloc((size_t)cols * sizeof(float));
    int bb = lp_ggml_block_bytes(t);
    for (int64_t r = 0; r < rows; r++) {
        uint8_t *row = d + (size_t)r * rb;
        if (quantized) {
            for (int64_t c = 0; c < cols; c++) x[c] = 0.1f * tu_f();
            struct lp_error err_ = {0};
            CHECK_OK(lp_ggml_quantize_row(t, x, row, cols, &err_), &err_);
            continue;
        }
        for (size_t i = 0; i < rb; i++) row[i] = (uint8_t)tu_u32();
        for (size_t b = 0; b < rb / (size_t)bb; b++) {
            uint8_t *blk = row + b * (size_t)bb;
            int n_d = t == LP_GGML_Q4_K || t == LP_GGML_Q5_K ? 2 : 1; // d (and dmin)
            for (int k = 0; k < n_d; k++) {
                uint8_t *f = blk + (t == LP_GGML_Q6_K ? 208 : 2 * k);
                uint16_t h = lp_f32_to_f16((0.001f + 0.005f * (tu_f() + 1.0f)) *
                                           (tu_u32() & 1 ? -1.0f : 1.0f));
                f[0] = (uint8_t)(h & 0xff);
                f[1] = (uint8_t)(h >> 8);
            }
        }
    }
    free(x);
    w.data = d;
    return w;
}

static inline void tu_weight_free(struct lp_weight *w) {
    free((void *)w->data);
    free((void *)w->scales);
    free((void *)w->biases);
}

#endif
