// SPDX-License-Identifier: MIT
// argmax.h -- the one home of the greedy choice over a logits row, for every
// module (the sampler's temperature-0 branch, the host backends' argmax_rows,
// the engine's fallback, the scheduler's check for garbage rows). The CUDA
// kernel (src/backend/cuda/argmax.cu) computes the same answers; the backend
// tests hold it to these loops.
#ifndef LAYERPIPE_UTIL_ARGMAX_H
#define LAYERPIPE_UTIL_ARGMAX_H

#include <math.h>
#include <stdint.h>

// The first index of the largest of x[0..n) (n >= 1), by exactly this loop.
// No comparison with a NaN holds, so a NaN never takes over, and a NaN at
// index 0 is never overtaken: [NaN, 5] -> 0, [1, NaN, 2] -> 2. +0 and -0
// are equal (the first wins); all -inf -> 0. Equivalently: give x[0] the
// key +inf if it is a NaN, every other NaN the key -inf, every other value
// itself, and take the smallest index of the largest key (the form a
// parallel reduction uses).
static inline int32_t lp_argmax_f32(const float *x, int n) {
    int32_t best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

// The index of the first NaN or infinity of x[0..n), -1 when all are finite.
static inline int32_t lp_first_nonfinite_f32(const float *x, int n) {
    for (int i = 0; i < n; i++)
        if (!isfinite(x[i])) return i;
    return -1;
}

#endif
