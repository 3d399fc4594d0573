// SPDX-License-Identifier: MIT
// argmax.cu -- the greedy choice of each logits row on the device, so that a
// greedy step sends back 8 bytes a row instead of the row (backend_i.h
// argmax_rows). The answer is exactly lp_argmax_f32's (src/util/argmax.h),
// the sampler's temperature-0 loop, for every input: each element gets the
// key x (a NaN: +inf at index 0, -inf elsewhere) and the row's winner is the
// smallest index of the largest key. "a beats b" (larger key, or an equal
// key at a smaller index; +0 and -0 are equal keys) is a strict total order
// on (key, index) pairs, so any reduction tree picks the same pair: the
// loop's. Proof that the keys reproduce the loop: a NaN at index 0 stops
// the loop at 0, and its +inf key at the smallest index beats everything;
// otherwise x[0] is a number, the loop returns the first index of the
// largest non-NaN value M, and every NaN's key -inf loses to M (or, when
// M = -inf, ties it at a larger index than 0). Beside it the first
// non-finite index (a min reduction) for the scheduler's garbage check.
// One block a row; each thread scans a strided slice keeping its winner,
// then the block reduces in shared memory.
#include <math.h>
#include <stdint.h>

#include "backend/cuda/device.h"
#include "backend/cuda/internal.h"

#define ARGMAX_THREADS 1024

// The key of x[i] (see above).
static __device__ __forceinline__ float argmax_key(float x, int i) {
    return isnan(x) ? (i == 0 ? INFINITY : -INFINITY) : x;
}

// (v, i) beats (bv, bi).
static __device__ __forceinline__ bool argmax_beats(float v, int i, float bv, int bi) {
    return v > bv || (v == bv && i < bi);
}

// ids[row] = greedy id of x[row, :], ids[n_rows + row] = its first
// non-finite index or -1; grid n_rows, ARGMAX_THREADS threads.
static __global__ void __launch_bounds__(ARGMAX_THREADS)
    k_argmax_rows(int32_t *ids, const float *x, int n_rows, int cols) {
    const int row = blockIdx.x, t = threadIdx.x;
    const float *xr = x + (size_t)row * (size_t)cols;
    float bv = -INFINITY; // (-inf, INT32_MAX): loses to every element
    int bi = INT32_MAX, bad = INT32_MAX;
#pragma unroll 4
    for (int i = t; i < cols; i += ARGMAX_THREADS) {
        const float xi = __ldcs(xr + i), v = argmax_key(xi, i);
        if (argmax_beats(v, i, bv, bi)) {
            bv = v;
            bi = i;
        }
        if (bad == INT32_MAX && !isfinite(xi)) bad = i;
    }
    __shared__ float s_v[ARGMAX_THREADS];
    __shared__ int s_i[ARGMAX_THREADS], s_bad[ARGMAX_THREADS];
    s_v[t] = bv;
    s_i[t] = bi;
    s_bad[t] = bad;
    __syncthreads();
    for (int half = ARGMAX_THREADS / 2; half > 0; half /= 2) {
        if (t < half) {
            if (argmax_beats(s_v[t + half], s_i[t + half], s_v[t], s_i[t])) {
                s_v[t] = s_v[t + half];
                s_i[t] = s_i[t + half];
            }
            if (s_bad[t + half] < s_bad[t]) s_bad[t] = s_bad[t + half];
        }
        __syncthreads();
    }
    if (t == 0) {
        ids[row] = s_i[0];
        ids[n_rows + row] = s_bad[0] == INT32_MAX ? -1 : s_bad[0];
    }
}

cudaError_t lp_cuda_argmax_rows(cudaStream_t s, int32_t *ids, const float *x, int n_rows,
                                int cols) {
    if (n_rows <= 0 || cols <= 0) return cudaSuccess;
    LP_LAUNCH((unsigned)n_rows, ARGMAX_THREADS, s, (ids, x, n_rows, cols), k_argmax_rows);
    return cudaGetLastError();
}
