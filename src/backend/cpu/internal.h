// SPDX-License-Identifier: MIT
// internal.h -- the CPU backend's private pieces: the thread pool, the
// backend context shared by cpu.c (memory, elementwise ops, attention) and
// matmul.c (the weight kernels), and a test hook that forces the portable
// kernels so tests can compare them too.
#ifndef LAYERPIPE_BACKEND_CPU_INTERNAL_H
#define LAYERPIPE_BACKEND_CPU_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "backend/host.h"

// ---- thread pool -------------------------------------------------------
// n_threads - 1 workers plus the calling thread. lp_cpu_pool_run is called
// from one thread at a time (the engine's); it returns when every thread
// has finished fn. Idle workers spin briefly on a generation counter, then
// sleep on a condition variable.
typedef void (*lp_cpu_task_fn)(void *arg, int i_thread, int n_threads);

struct lp_cpu_pool;

enum lp_status lp_cpu_pool_create(struct lp_cpu_pool **out, int n_threads, struct lp_error *err);
void lp_cpu_pool_destroy(struct lp_cpu_pool *pool); // accepts NULL
void lp_cpu_pool_run(struct lp_cpu_pool *pool, lp_cpu_task_fn fn, void *arg);
int lp_cpu_pool_n_threads(const struct lp_cpu_pool *pool);

// ---- backend context -----------------------------------------------------
enum lp_cpu_isa {
    LP_CPU_ISA_GENERIC, // portable C
    LP_CPU_ISA_AVX512,  // AVX-512 F/BW/VL + FMA
};

// Owned by the engine thread; workers only read it while a task runs, and
// write only their own slice of the scratch.
struct lp_cpu_ctx {
    struct lp_cpu_pool *pool;
    int n_threads;
    enum lp_cpu_isa isa;
    bool vnni;                 // AVX512-VNNI present (and isa is AVX512)
    bool quantize_activations; // int8 activations for MLX 8-bit weights
    double read_gb_s;          // measured by the first device_info, 0 before
    // Shared per-call scratch of matmul (x group sums, int8 x, x scales, or
    // packed x for prefill), written in phase 1 of a matmul, read in phase 2.
    void *scratch;
    size_t scratch_bytes;
    // Per-thread scratch: dequantized weight rows (one for the generic path,
    // LP_MM_PF_MR for prefill) and attention accumulators; thread i owns [i * thread_bytes, +thread_bytes).
    void *thread_scratch;
    size_t thread_bytes;
};

// Makes sure the scratch can serve a weight of `cols` columns (called from
// weight_upload, never from compute).
enum lp_status lp_cpu_scratch_reserve(struct lp_cpu_ctx *ctx, int64_t cols, struct lp_error *err);

// The copy of w that the kernels read instead of w's buffers, made once at
// weight_upload (GGUF blocks on a VNNI CPU: 16-row strips, see
// matmul_ggml.c), into *packed (the caller frees it), or NULL when the
// kernels read w as it is.
enum lp_status lp_cpu_weight_pack(struct lp_cpu_ctx *ctx, const struct lp_weight *w, void **packed,
                                  struct lp_error *err);

// out[n, w.rows] = x[n, w.cols] @ w^T on the pool; packed: w's
// lp_cpu_weight_pack copy (NULL if it made none).
void lp_cpu_matmul(struct lp_cpu_ctx *ctx, float *out, const float *x, const struct lp_weight *w,
                   const void *packed, int n);

// Dequantizes row r of w into dst[w.cols] (portable C).
void lp_cpu_dequant_row(const struct lp_weight *w, int64_t r, float *dst);

// Like lp_backend_cpu_create, but force_generic selects the portable kernels
// even where AVX-512 is present (tests use it to cover both paths).
enum lp_status lp_cpu_backend_create_ex(struct lp_backend **out,
                                        const struct lp_backend_cpu_params *params,
                                        bool force_generic, struct lp_error *err);

#endif
