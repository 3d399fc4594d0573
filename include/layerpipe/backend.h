// SPDX-License-Identifier: MIT
// backend.h -- compute backends. The engine calls compute only through a
// backend; a backend knows nothing of models, gRPC or sessions. This header
// holds the opaque handle and the constructors; the function table lives in
// src/backend/backend_i.h.
#ifndef LAYERPIPE_BACKEND_H
#define LAYERPIPE_BACKEND_H

#include <stdbool.h>
#include <stdint.h>

#include "layerpipe/status.h"

struct lp_backend;

struct lp_backend_cpu_params {
    int n_threads; // worker threads including the caller; <= 0 means all cores
    // Quantize activations to int8 per group before multiplying with MLX
    // 8-bit weights or GGUF blocks (VNNI dot products; GGUF: groups of 32,
    // the int8 activations llama.cpp uses). Faster; relative logit error up
    // to about 1e-2 instead of 1e-3. Off by default.
    bool quantize_activations;
};

LP_API struct lp_backend_cpu_params lp_backend_cpu_params_default(void);

// The CPU backend: a persistent thread pool over n_threads cores and kernels
// for every weight format. On failure *out is NULL.
LP_API enum lp_status lp_backend_cpu_create(struct lp_backend **out,
                                            const struct lp_backend_cpu_params *params,
                                            struct lp_error *err);

// The scalar reference backend: single-threaded, plain loops, the oracle
// that tests compare every other backend against.
LP_API enum lp_status lp_backend_ref_create(struct lp_backend **out, struct lp_error *err);

struct lp_backend_cuda_params {
    int device;   // CUDA device ordinal (cuda:N)
};

// The CUDA backend on one GPU. LP_ERR_UNSUPPORTED (with a message saying
// so) when layerpipe was built without CUDA; LP_ERR_DEVICE when there is no
// such GPU or the driver fails. On failure *out is NULL.
LP_API enum lp_status lp_backend_cuda_create(struct lp_backend **out,
                                             const struct lp_backend_cuda_params *params,
                                             struct lp_error *err);

// True when this build has the CUDA backend compiled in.
LP_API bool lp_backend_cuda_built(void);

// The backend a device spec names: "cpu" (n_threads, quantize_activations
// as in lp_backend_cpu_params), "cuda" (device 0) or "cuda:N". An unknown
// spec is LP_ERR_INVALID_ARG naming it. On failure *out is NULL.
LP_API enum lp_status lp_backend_create(struct lp_backend **out, const char *spec, int n_threads,
                                        bool quantize_activations, struct lp_error *err);

// Facts about the device a backend computes on, for plans and Hello.
struct lp_device_info {
    char name[96];       // e.g. "cpu (2 threads)", "cuda:0 (NVIDIA H200)"
    uint64_t free_bytes; // memory free now for weights and KV (0: unknown)
    double read_gb_s;    // streaming read bandwidth, measured once (0: unknown)
};

// Fills *out (measuring the bandwidth on the first call: ~0.1 s; call it
// once before compute starts). Later calls may run beside compute.
LP_API enum lp_status lp_backend_device_info(struct lp_backend *backend, struct lp_device_info *out,
                                             struct lp_error *err);

// Stops the backend's threads and frees it. Every buffer and weight of the
// backend must have been freed before. Accepts NULL.
LP_API void lp_backend_destroy(struct lp_backend *backend);

// Short name ("cpu", "ref", "cuda:0"); borrowed, lives as long as backend.
LP_API const char *lp_backend_name(const struct lp_backend *backend);

// Threads the backend computes with (1 for ref).
LP_API int lp_backend_n_threads(const struct lp_backend *backend);

#endif
