// SPDX-License-Identifier: MIT
// bench_matmul.c -- speed of the CPU backend's MLX 8-bit (and 4-bit) matmul
// (group 64, bf16 scales) on a [6144, 2048] weight (Qwen3-1.7B's gate/up shape):
// decode (n = 1) as GB/s of weight bytes streamed, with float and with int8
// activations (4-bit: float), and prefill (n = 64) as microseconds per token and weight
// multiply-adds per second. Decode cycles
// through BM_COPIES copies of the weight (~100 MB) so that it streams from
// DRAM, not from the last-level cache.
// Usage: bench_matmul [n_threads]   (default: all cores)
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "backend/backend_i.h"

#define BM_COPIES 8

static double bm_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

// Best seconds per call of matmul over `iters` calls, 3 rounds.
static double bm_time(struct lp_backend *be, struct lp_buf *o, struct lp_buf *x,
                      struct lp_bweight **w, int n, int iters) {
    double best = 1e30;
    be->iface.matmul(be->ctx, o, x, w[0], n); // warm up
    for (int round = 0; round < 3; round++) {
        double t0 = bm_now();
        for (int i = 0; i < iters; i++) be->iface.matmul(be->ctx, o, x, w[i % BM_COPIES], n);
        double dt = (bm_now() - t0) / iters;
        if (dt < best) best = dt;
    }
    return best;
}

int main(int argc, char **argv) {
    int n_threads = argc > 1 ? atoi(argv[1]) : 0;
    const int64_t rows = 6144, cols = 2048, gs = 64, n_pre = 64;
    uint32_t *codes = malloc((size_t)(rows * cols) * BM_COPIES);
    uint16_t *scales = malloc((size_t)(rows * cols / gs) * 2), *biases = malloc((size_t)(rows * cols / gs) * 2);
    float *x = malloc((size_t)(n_pre * cols) * 4);
    if (!codes || !scales || !biases || !x) return 1;
    uint32_t s = 1;
    for (int64_t i = 0; i < rows * cols / 4 * BM_COPIES; i++) codes[i] = s = s * 1664525u + 1013904223u;
    for (int64_t i = 0; i < rows * cols / gs; i++) {
        scales[i] = 0x3c00 + (uint16_t)(i % 7); // bf16 ~0.0078
        biases[i] = 0xbf00;                     // bf16 -0.5
    }
    for (int64_t i = 0; i < n_pre * cols; i++) x[i] = (float)((i * 37) % 101) / 101.0f - 0.5f;
    struct lp_weight w = {.format = LP_WEIGHT_MLX_AFFINE, .rows = rows, .cols = cols,
                          .data = codes, .scales = scales, .biases = biases,
                          .scale_dtype = LP_DTYPE_BF16, .bits = 8, .group_size = (int)gs};
    for (int cfg = 0; cfg < 3; cfg++) { // q8 float, q8 int8, q4 float activations
        int quant = cfg == 1;
        w.bits = cfg == 2 ? 4 : 8;
        int64_t wrow = cols * w.bits / 8; // code bytes per row
        double wbytes = (double)(rows * wrow) + 2.0 * 2.0 * (double)(rows * cols / gs);
        struct lp_backend_cpu_params p = lp_backend_cpu_params_default();
        p.n_threads = n_threads;
        p.quantize_activations = quant;
        struct lp_backend *be = NULL;
        struct lp_error err = {0};
        struct lp_bweight *bw[BM_COPIES] = {0};
        struct lp_buf *xb = NULL, *ob = NULL;
        if (lp_backend_cpu_create(&be, &p, &err) != LP_OK ||
            be->iface.weight_upload(be->ctx, &w, &bw[0], &err) != LP_OK ||
            be->iface.buf_alloc(be->ctx, (size_t)(n_pre * cols) * 4, &xb, &err) != LP_OK ||
            be->iface.buf_alloc(be->ctx, (size_t)(n_pre * rows) * 4, &ob, &err) != LP_OK ||
            be->iface.buf_write(be->ctx, xb, 0, x, (size_t)(n_pre * cols) * 4, &err) != LP_OK) {
            fprintf(stderr, "bench_matmul: %s\n", err.msg);
            return 1;
        }
        for (int c = 1; c < BM_COPIES; c++) {
            struct lp_weight wc = w;
            wc.data = (const uint8_t *)codes + (size_t)c * (size_t)(rows * wrow);
            if (be->iface.weight_upload(be->ctx, &wc, &bw[c], &err) != LP_OK) return 1;
        }
        double t1 = bm_time(be, ob, xb, bw, 1, 200);
        double tp = bm_time(be, ob, xb, bw, (int)n_pre, 8);
        printf("mlx q%d g64 [%lld x %lld], %d threads, %s activations:\n", w.bits, (long long)rows,
               (long long)cols, lp_backend_n_threads(be), quant ? "int8" : "float");
        printf("  decode  n=1:  %8.1f us  %6.1f GB/s\n", t1 * 1e6, wbytes / t1 / 1e9);
        printf("  prefill n=%lld: %8.1f us/token  %6.1f GMAC/s (%.1fx faster per token than "
               "decode)\n",
               (long long)n_pre, tp / (double)n_pre * 1e6, (double)(rows * cols * n_pre) / tp / 1e9,
               t1 / (tp / (double)n_pre));
        be->iface.buf_free(be->ctx, xb);
        be->iface.buf_free(be->ctx, ob);
        for (int c = 0; c < BM_COPIES; c++) be->iface.weight_free(be->ctx, bw[c]);
        lp_backend_destroy(be);
    }
    free(codes);
    free(scales);
    free(biases);
    free(x);
    return 0;
}
