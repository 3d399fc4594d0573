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
#include "util/argmax.h"
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

// argmax_rows on be over x [n_rows, cols]: each row's id and first
// non-finite index must be util/argmax.h's (the sampler's loop), and, where
// want is given, want[r] (the answer worked out by hand).
static inline void tu_check_argmax_rows(struct lp_backend *be, const float *x, int n_rows,
                                        int cols, const int32_t *want, const char *what) {
    size_t bytes = (size_t)n_rows * (size_t)cols * sizeof(float);
    struct lp_buf *xb = tu_buf(be, x, bytes), *ib = tu_buf(be, NULL, 2 * (size_t)n_rows * 4);
    int32_t *got = calloc(2 * (size_t)n_rows, sizeof *got);
    if (xb && ib && got) {
        be->iface.argmax_rows(be->ctx, ib, xb, n_rows, cols);
        tu_read(be, ib, got, 2 * (size_t)n_rows * 4);
        struct lp_error err_ = {0};
        if (be->iface.sync) CHECK_OK(be->iface.sync(be->ctx, &err_), &err_);
        for (int r = 0; r < n_rows; r++) {
            const float *row = x + (size_t)r * (size_t)cols;
            int32_t id = lp_argmax_f32(row, cols), bad = lp_first_nonfinite_f32(row, cols);
            CHECK_MSG(got[r] == id && (!want || want[r] == id),
                      "%s argmax_rows %s: row %d (%d columns): id %d, the loop's %d, by hand %d",
                      lp_backend_name(be), what, r, cols, got[r], id, want ? want[r] : id);
            CHECK_MSG(got[n_rows + r] == bad,
                      "%s argmax_rows %s: row %d (%d columns): first non-finite %d, expected %d",
                      lp_backend_name(be), what, r, cols, got[n_rows + r], bad);
        }
    }
    free(got);
    tu_free(be, xb);
    tu_free(be, ib);
}

// argmax_rows on crafted rows: ties, NaN at 0 and elsewhere, infinities,
// signed zeros, all equal, the largest last; then long rows (lengths not a
// multiple of a GPU block, one shorter than it, a single column) with the
// same cases planted among random values.
static inline void tu_test_argmax(struct lp_backend *be) {
    if (!be->iface.argmax_rows) {
        CHECK_MSG(0, "%s has no argmax_rows", lp_backend_name(be));
        return;
    }
    const float N = NAN, I = INFINITY;
    const float x4[][4] = {
        {1, 3, 3, 2},   {N, 5, 7, 1},        {1, N, 2, 0},      {-I, -I, -I, -I},
        {1, I, 2, I},   {2, 2, 2, 2},        {0, 1, 2, 3},      {-0.0f, 0.0f, -0.0f, 0.0f},
        {-1, -0.0f, 0.0f, -2}, {N, N, N, N}, {-I, N, -I, N},    {N, I, 1, 2},
        {5, N, N, 5},   {-I, N, 3, N},       {-I, 1, N, I},     {-1e30f, -I, -1e30f, -3},
    };
    const int32_t want4[] = {1, 0, 2, 0, 1, 0, 3, 0, 1, 0, 0, 0, 0, 2, 3, 3};
    int n4 = (int)(sizeof x4 / sizeof x4[0]);
    tu_check_argmax_rows(be, &x4[0][0], n4, 4, want4, "crafted");
    const int lens[] = {1, 1000, 1024, 3109};
    for (size_t k = 0; k < sizeof lens / sizeof lens[0]; k++) {
        int c = lens[k], n = 8;
        float *x = tu_randv((int64_t)n * c, 4.0f);
        float *r = x;
        r[c - 1] = 9; // the largest last
        r = x + c;
        if (c > 5) r[5] = r[c - 1] = 9; // a tie far apart: the first
        r = x + 2 * (size_t)c;
        r[0] = N; // NaN at 0 wins whatever follows
        if (c > 1) r[c - 1] = I;
        r = x + 3 * (size_t)c;
        for (int i = 0; i < c; i++) r[i] = i % 7 == 3 ? N : -I; // -inf and NaNs: 0
        r = x + 4 * (size_t)c;
        if (c > 2) r[1] = N;
        r[c / 2] = I; // +inf in the middle, after a NaN
        r = x + 5 * (size_t)c;
        for (int i = 0; i < c; i++) r[i] = 0.5f; // all equal: 0
        r = x + 6 * (size_t)c;
        for (int i = 0; i < c; i++) r[i] = i % 2 ? 0.0f : -0.0f; // signed zeros: 0
        r = x + 7 * (size_t)c;
        for (int i = 0; i < c; i++) r[i] = N; // all NaN but the last: 0 (NaN at 0)
        if (c > 1) r[c - 1] = 1;
        char what[32];
        snprintf(what, sizeof what, "%d columns", c);
        const int32_t want[8] = {c - 1, c > 5 ? 5 : 0, 0, 0, c / 2, 0, 0, 0};
        tu_check_argmax_rows(be, x, n, c, want, what);
        free(x);
    }
}

#endif
