// SPDX-License-Identifier: MIT
// fp16.h -- the one home of the scalar conversions between float32 and the 16-bit float types
// (bfloat16, IEEE half), for every module (backends, model, wire, tools). Narrowing rounds
// to nearest, ties to even; NaN stays NaN (quiet), overflow goes to infinity.
#ifndef LAYERPIPE_UTIL_FP16_H
#define LAYERPIPE_UTIL_FP16_H

#include <stdint.h>
#include <string.h>

static inline float lp_bits_to_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint32_t lp_f32_to_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

// bf16 is the top half of an f32.
static inline float lp_bf16_to_f32(uint16_t h) { return lp_bits_to_f32((uint32_t)h << 16); }

// Round to nearest even: add 0x7fff plus the lowest kept bit, then truncate.
static inline uint16_t lp_f32_to_bf16(float f) {
    uint32_t u = lp_f32_to_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); // quiet NaN
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

// IEEE binary16: 1 sign, 5 exponent (bias 15), 10 mantissa bits.
static inline float lp_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t e = (h >> 10) & 0x1fu;
    uint32_t m = h & 0x3ffu;
    if (e == 0) { // zero or subnormal: m * 2^-24
        float f = (float)m * 5.9604644775390625e-8f;
        return lp_bits_to_f32(lp_f32_to_bits(f) | sign);
    }
    if (e == 31) return lp_bits_to_f32(sign | 0x7f800000u | (m << 13));
    return lp_bits_to_f32(sign | ((e + 112u) << 23) | (m << 13));
}

// f32 -> f16 with round to nearest even (the classic bit-twiddling form).
static inline uint16_t lp_f32_to_f16(float f) {
    uint32_t x = lp_f32_to_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) return (uint16_t)(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u : 0u));
    if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); // >= 65520 rounds to inf
    if (ax < 0x38800000u) {
        // Below the smallest normal half (2^-14): adding 0.5 aligns the ulp
        // of the sum to 2^-24, the half subnormal step, and the FPU rounds.
        float s = lp_bits_to_f32(ax) + 0.5f;
        return (uint16_t)(sign | (lp_f32_to_bits(s) - 0x3f000000u));
    }
    uint32_t odd = (ax >> 13) & 1u;
    ax += 0xc8000fffu + odd; // rebias the exponent (-112 << 23) and round
    return (uint16_t)(sign | (ax >> 13));
}

#endif
