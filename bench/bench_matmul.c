// SPDX-License-Identifier: MIT
// bench_matmul.c -- speed of the CPU backend's matmul on the matrix shapes of
// Qwen3-1.7B (q 2048x2048, k/v 1024x2048, o 2048x2048, gate/up 6144x2048,
// down 2048x6144, the 151936x2048 LM head) for MLX 8-bit or 4-bit weights
// (group 64, bf16 scales), bf16 weights or GGUF blocks (random codes and
// scales), and n = 1 .. 64 token rows per
// call: microseconds per call, and a model step (28 layers plus the head) as
// tokens per second of all n rows together (batched decode: each row one
// sequence's next token). Weights cycle through copies (~100 MB per shape)
// so that they stream from DRAM, not from the last-level cache.
// Usage: bench_matmul [n_threads] [q8|q4|bf16|q8fast|q8g32|q8novnni|
//                     gguf-q8_0|gguf-q4_k|gguf-q6_k|gguf-q4_0|gguf-q5_k] [rounds]
//   (defaults: all cores, q8, 5; each figure is the best of `rounds`;
//   q8g32: groups of 32; q8novnni: the kernels of an AVX-512 CPU without VNNI)
// The last line gives the weight bytes read per second at each n (a model
// step's bytes over its time): against the machine's read bandwidth.
// BM_CACHE=1: the kernels alone: one copy of each weight (the small shapes
// stay in cache) and CPU time of the process (immune to other processes'
// time slices; with 1 thread, the kernel's own time).
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend/backend_i.h"
#include "backend/cpu/internal.h"
#include "layerpipe/convert.h"
#include "util/fp16.h"

#define BM_MAX_COPIES 8
#define BM_N_SHAPES 5

static const int64_t bm_shape[BM_N_SHAPES][2] = {
    {2048, 2048}, {1024, 2048}, {6144, 2048}, {2048, 6144}, {151936, 2048}};
static const char *bm_name[BM_N_SHAPES] = {"q/o 2048x2048", "k/v 1024x2048", "gate/up 6144x2048",
                                           "down 2048x6144", "head 151936x2048"};
// Uses per layer of each shape (q + o, k + v, gate + up, down); the head once.
static const int bm_uses[BM_N_SHAPES] = {2, 2, 2, 1, 0};
static const int bm_ns[] = {1, 2, 4, 8, 16, 32, 64};
#define BM_N_NS (int)(sizeof bm_ns / sizeof bm_ns[0])

static bool bm_cache; // BM_CACHE=1

static double bm_now(void) {
    struct timespec ts;
    clock_gettime(bm_cache ? CLOCK_PROCESS_CPUTIME_ID : CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

// Best seconds per call of matmul over `iters` calls, `rounds` rounds.
static double bm_time(struct lp_backend *be, struct lp_buf *o, struct lp_buf *x,
                      struct lp_bweight **w, int n_copies, int n, int iters, int rounds) {
    double best = 1e30;
    be->iface.matmul(be->ctx, o, x, w[0], n); // warm up
    for (int round = 0; round < rounds; round++) {
        double t0 = bm_now();
        for (int i = 0; i < iters; i++) be->iface.matmul(be->ctx, o, x, w[i % n_copies], n);
        double dt = (bm_now() - t0) / iters;
        if (dt < best) best = dt;
    }
    return best;
}

// "gguf-q4_k" -> LP_GGML_Q4_K; 0 when fmt names no GGUF type.
static int bm_ggml_type(const char *fmt) {
    static const enum lp_ggml_type types[5] = {LP_GGML_Q4_0, LP_GGML_Q8_0, LP_GGML_Q4_K,
                                               LP_GGML_Q5_K, LP_GGML_Q6_K};
    static const char *names[5] = {"gguf-q4_0", "gguf-q8_0", "gguf-q4_k", "gguf-q5_k", "gguf-q6_k"};
    for (int i = 0; i < 5; i++)
        if (strcmp(fmt, names[i]) == 0) return (int)types[i];
    return 0;
}

// Random GGUF blocks: random bytes, then every f16 scale (d, dmin) set to
// +-[0.001, 0.011) so that no value is NaN or huge.
static void bm_ggml_fill(enum lp_ggml_type t, uint8_t *data, size_t bytes, uint32_t *s) {
    for (size_t i = 0; i < bytes; i++) data[i] = (uint8_t)((*s = *s * 1664525u + 1013904223u) >> 24);
    size_t bb = (size_t)lp_ggml_block_bytes(t);
    for (size_t b = 0; b < bytes / bb; b++) {
        uint8_t *blk = data + b * bb;
        int n_d = t == LP_GGML_Q4_K || t == LP_GGML_Q5_K ? 2 : 1;
        for (int k = 0; k < n_d; k++) {
            uint8_t *f = blk + (t == LP_GGML_Q6_K ? 208 : 2 * k);
            *s = *s * 1664525u + 1013904223u;
            uint16_t h = lp_f32_to_f16((0.001f + 0.01f * (float)(*s >> 8) / 16777216.0f) *
                                       ((*s & 1) ? -1.0f : 1.0f));
            f[0] = (uint8_t)(h & 0xff);
            f[1] = (uint8_t)(h >> 8);
        }
    }
}

static uint16_t bm_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return (uint16_t)(u >> 16);
}

int main(int argc, char **argv) {
    int n_threads = argc > 1 ? atoi(argv[1]) : 0;
    const char *fmt = argc > 2 ? argv[2] : "q8";
    int rounds = argc > 3 ? atoi(argv[3]) : 5;
    bm_cache = getenv("BM_CACHE") && strcmp(getenv("BM_CACHE"), "1") == 0;
    bool bf16 = strcmp(fmt, "bf16") == 0, fast = strcmp(fmt, "q8fast") == 0;
    bool novnni = strcmp(fmt, "q8novnni") == 0;
    int bits = strcmp(fmt, "q4") == 0 ? 4 : 8;
    enum lp_ggml_type gt = (enum lp_ggml_type)bm_ggml_type(fmt);
    const int64_t gs = strcmp(fmt, "q8g32") == 0 ? 32 : 64, n_max = 64;
    struct lp_backend_cpu_params p = lp_backend_cpu_params_default();
    p.n_threads = n_threads;
    p.quantize_activations = fast;
    struct lp_backend *be = NULL;
    struct lp_error err = {0};
    if (lp_backend_cpu_create(&be, &p, &err) != LP_OK) {
        fprintf(stderr, "bench_matmul: %s\n", err.msg);
        return 1;
    }
    if (novnni) ((struct lp_cpu_ctx *)be->ctx)->vnni = false; // a bench may poke the backend
    char name[64];
    if (bf16) snprintf(name, sizeof name, "bf16");
    else if (gt) snprintf(name, sizeof name, "GGUF %s", lp_ggml_type_name(gt));
    else snprintf(name, sizeof name, "mlx q%d g%d", bits, (int)gs);
    printf("%s%s, %d threads: us per call (best of %d%s)\n", name,
           fast ? " (int8 activations)" : novnni ? " (no VNNI)" : "", lp_backend_n_threads(be),
           rounds, bm_cache ? "; one copy, CPU time" : "");
    printf("%-18s", "shape");
    for (int in = 0; in < BM_N_NS; in++) printf(" %9s%-2d", "n=", bm_ns[in]);
    printf("\n");
    double step[BM_N_NS] = {0}, step_bytes = 0;
    for (int is = 0; is < BM_N_SHAPES; is++) {
        int64_t rows = bm_shape[is][0], cols = bm_shape[is][1];
        size_t wbytes = gt ? (size_t)rows * lp_ggml_row_bytes(gt, cols)
                        : (size_t)(rows * cols) * (bf16 ? 2 : (size_t)bits) / (bf16 ? 1 : 8);
        size_t sbytes = !gt && !bf16 ? 2 * (size_t)(rows * cols / gs) * 2 : 0; // MLX scales, biases
        step_bytes += (double)(wbytes + sbytes) * (is == 4 ? 1 : 28.0 * bm_uses[is]);
        int n_copies = (int)(100000000 / wbytes);
        if (n_copies < 1) n_copies = 1;
        if (n_copies > BM_MAX_COPIES) n_copies = BM_MAX_COPIES;
        if (bm_cache) n_copies = 1;
        uint8_t *data = malloc(wbytes * (size_t)n_copies);
        size_t ng = (size_t)(rows * cols / gs);
        uint16_t *scales = malloc(ng * 2), *biases = malloc(ng * 2);
        float *x = malloc((size_t)(n_max * cols) * 4);
        if (!data || !scales || !biases || !x) return 1;
        uint32_t s = 1;
        if (gt) {
            bm_ggml_fill(gt, data, wbytes * (size_t)n_copies, &s);
        } else if (bf16) {
            uint16_t *d = (uint16_t *)data;
            for (size_t i = 0; i < wbytes / 2 * (size_t)n_copies; i++) {
                s = s * 1664525u + 1013904223u;
                d[i] = bm_bf16((float)(s >> 8) / 16777216.0f * 0.1f - 0.05f);
            }
        } else {
            for (size_t i = 0; i < wbytes * (size_t)n_copies; i++)
                data[i] = (uint8_t)((s = s * 1664525u + 1013904223u) >> 24);
        }
        for (size_t i = 0; i < ng; i++) {
            scales[i] = (uint16_t)(0x3c00 + i % 7); // bf16 ~0.0078
            biases[i] = 0xbf00;                     // bf16 -0.5
        }
        for (int64_t i = 0; i < n_max * cols; i++) x[i] = (float)((i * 37) % 101) / 101.0f - 0.5f;
        struct lp_weight w = {.format = gt ? LP_WEIGHT_GGML : bf16 ? LP_WEIGHT_BF16 : LP_WEIGHT_MLX_AFFINE,
                              .rows = rows, .cols = cols, .data = data,
                              .scales = bf16 ? NULL : scales, .biases = bf16 ? NULL : biases,
                              .scale_dtype = LP_DTYPE_BF16, .bits = bf16 ? 0 : bits,
                              .group_size = bf16 ? 0 : (int)gs, .ggml_type = gt};
        if (gt) w.scales = w.biases = NULL;
        struct lp_bweight *bw[BM_MAX_COPIES] = {0};
        struct lp_buf *xb = NULL, *ob = NULL;
        if (be->iface.buf_alloc(be->ctx, (size_t)(n_max * cols) * 4, &xb, &err) != LP_OK ||
            be->iface.buf_alloc(be->ctx, (size_t)(n_max * rows) * 4, &ob, &err) != LP_OK ||
            be->iface.buf_write(be->ctx, xb, 0, x, (size_t)(n_max * cols) * 4, &err) != LP_OK) {
            fprintf(stderr, "bench_matmul: %s\n", err.msg);
            return 1;
        }
        for (int c = 0; c < n_copies; c++) {
            struct lp_weight wc = w;
            wc.data = data + (size_t)c * wbytes;
            if (be->iface.weight_upload(be->ctx, &wc, &bw[c], &err) != LP_OK) {
                fprintf(stderr, "bench_matmul: %s\n", err.msg);
                return 1;
            }
        }
        printf("%-18s", bm_name[is]);
        for (int in = 0; in < BM_N_NS; in++) {
            int n = bm_ns[in];
            double macs = (double)(rows * cols) * n;
            int iters = (int)(2e8 / (macs + 2e7)) + 1; // ~0.1 s per round at most
            double t = bm_time(be, ob, xb, bw, n_copies, n, iters, rounds);
            printf(" %11.1f", t * 1e6);
            fflush(stdout);
            step[in] += is == 4 ? t : 28.0 * bm_uses[is] * t;
        }
        printf("\n");
        be->iface.buf_free(be->ctx, xb);
        be->iface.buf_free(be->ctx, ob);
        for (int c = 0; c < n_copies; c++) be->iface.weight_free(be->ctx, bw[c]);
        free(data);
        free(scales);
        free(biases);
        free(x);
    }
    printf("%-18s", "model step ms");
    for (int in = 0; in < BM_N_NS; in++) printf(" %11.1f", step[in] * 1e3);
    printf("\n%-18s", "rows/s (tok/s)");
    for (int in = 0; in < BM_N_NS; in++) printf(" %11.1f", bm_ns[in] / step[in]);
    printf("\n%-18s", "x of n=1");
    for (int in = 0; in < BM_N_NS; in++) printf(" %11.2f", bm_ns[in] / step[in] * step[0]);
    double params = 28.0 * (2 * 2048 * 2048 + 2 * 1024 * 2048 + 3 * 6144 * 2048) + 151936.0 * 2048;
    printf("\n%-18s", "GMAC/s");
    for (int in = 0; in < BM_N_NS; in++) printf(" %11.1f", params * bm_ns[in] / step[in] / 1e9);
    printf("\n%-18s", "weights GB/s");
    for (int in = 0; in < BM_N_NS; in++) printf(" %11.1f", step_bytes / step[in] / 1e9);
    printf("\n");
    lp_backend_destroy(be);
    return 0;
}
