// SPDX-License-Identifier: MIT
// test_mlx_quantize.c -- MLX affine quantization against hand-computed
// groups (negative edge, positive edge, constant, all-zero), the 4-bit and
// 8-bit packing order, the round-trip error bound on random data, the float
// rounding helpers, and parameter checks.
#include <stdint.h>
#include <string.h>

#include "layerpipe/convert.h"
#include "util/fp16.h"
#include "lp_test.h"

static uint64_t rng_state = 12345;
static double rand_uniform(void) { // [0, 1)
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(rng_state >> 11) * 0x1.0p-53;
}

static void test_rounding(void) {
    CHECK(lp_f32_to_bf16(1.0f) == 0x3f80);
    CHECK(lp_f32_to_bf16(-2.0f) == 0xc000);
    // 1 + 2^-8 is exactly halfway between bf16 1.0 and 1.0078125: ties to even (1.0).
    CHECK(lp_f32_to_bf16(1.00390625f) == 0x3f80);
    // 1 + 3*2^-8 is halfway between 1.0078125 (odd mantissa) and 1.015625: up.
    CHECK(lp_f32_to_bf16(1.01171875f) == 0x3f82);
    CHECK(lp_f32_to_bf16(1.0f + 0x1.0p-8f + 0x1.0p-20f) == 0x3f81); // just above half: up
    CHECK(lp_f32_to_bf16(INFINITY) == 0x7f80);
    CHECK((lp_f32_to_bf16(NAN) & 0x7fc0) == 0x7fc0);
    CHECK(lp_bf16_to_f32(0x3f81) == 1.0078125f);

    CHECK(lp_f32_to_f16(1.0f) == 0x3c00);
    CHECK(lp_f32_to_f16(-2.5f) == 0xc100);
    CHECK(lp_f32_to_f16(65504.0f) == 0x7bff);
    CHECK(lp_f32_to_f16(65520.0f) == 0x7c00);     // rounds to infinity
    CHECK(lp_f32_to_f16(65519.0f) == 0x7bff);
    CHECK(lp_f32_to_f16(0x1.0p-24f) == 0x0001);   // smallest subnormal
    CHECK(lp_f32_to_f16(0x1.0p-25f) == 0x0000);   // half of it: ties to even (0)
    CHECK(lp_f32_to_f16(0x1.8p-24f) == 0x0002);   // 1.5 ulp: ties to even (2)
    CHECK(lp_f32_to_f16(0x1.0p-14f) == 0x0400);   // smallest normal
    CHECK(lp_f32_to_f16(1.0f + 0x1.0p-11f) == 0x3c00); // halfway: even
    CHECK(lp_f32_to_f16(1.0f + 0x1.8p-10f) == 0x3c02); // 1.5 ulp: even (up)
    CHECK((lp_f32_to_f16(NAN) & 0x7e00) == 0x7e00);
    CHECK(lp_f16_to_f32(0x0001) == 0x1.0p-24f);
    CHECK(lp_f16_to_f32(0xc100) == -2.5f);
    // Every half round-trips through float.
    int bad = 0;
    for (uint32_t h = 0; h < 0x10000; h++) {
        if ((h & 0x7c00) == 0x7c00 && (h & 0x3ff)) continue; // NaN
        if (lp_f32_to_f16(lp_f16_to_f32((uint16_t)h)) != h) bad++;
    }
    CHECK_MSG(bad == 0, "%d halves do not round-trip", bad);
}

// One group of 32 at 8 bits (F32 scales so the hand values are exact).
static void test_groups_by_hand(void) {
    struct lp_error err_buf = {0}, *err = &err_buf;
    float w[3 * 32];
    uint32_t q[3 * 8];
    float scales[3], biases[3];

    // Row 0: negative edge. min -2 (larger magnitude), max 1 -> scale 3/255 > 0,
    // q0 = rint(-2 / (3/255)) = rint(-170) = -170, scale = -2/-170 = 1/85, bias -2.
    for (int j = 0; j < 32; j++) w[j] = 0.0f;
    w[0] = -2.0f;
    w[1] = 1.0f;
    w[2] = 0.6f;
    // Row 1: positive edge. max 4 (larger), min -1 -> scale = -(5/255),
    // q0 = rint(4 / -(5/255)) = rint(-204) = -204, scale = 4/-204, bias = 4.
    for (int j = 0; j < 32; j++) w[32 + j] = 0.0f;
    w[32 + 0] = 4.0f;
    w[32 + 1] = -1.0f;
    w[32 + 5] = 2.0f;
    // Row 2: constant 0.75 -> scale = -1e-7 (the floor, negated: edge is max),
    // q0 = rint(0.75 / -1e-7) != 0, so scale = 0.75 / q0, bias = 0.75, codes 0.
    for (int j = 0; j < 32; j++) w[64 + j] = 0.75f;

    CHECK_OK(lp_mlx_quantize(w, 3, 32, 8, 32, LP_DTYPE_F32, q, scales, biases, err), err);
    const uint8_t *codes = (const uint8_t *)q; // at 8 bits: byte j is element j (little-endian)

    CHECK_NEAR(scales[0], 1.0 / 85.0, 1e-9);
    CHECK(biases[0] == -2.0f);
    CHECK(codes[0] == 0);     // -2 -> 0
    CHECK(codes[1] == 255);   // 1 -> (1 + 2) * 85 = 255
    CHECK(codes[2] == 221);   // 0.6 -> 2.6 * 85 = 221
    CHECK(codes[3] == 170);   // 0 -> 170

    CHECK_NEAR(scales[1], -4.0 / 204.0, 1e-9);
    CHECK(biases[1] == 4.0f);
    CHECK(codes[32 + 0] == 0);   // 4 -> 0
    CHECK(codes[32 + 1] == 255); // -1 -> (-5) / (-4/204) = 255
    CHECK(codes[32 + 5] == 102); // 2 -> (-2) / (-4/204) = 102
    CHECK(codes[32 + 3] == 204); // 0 -> 204

    CHECK(scales[2] < 0.0f && scales[2] > -2e-7f);
    CHECK(biases[2] == 0.75f);
    int nonzero = 0;
    for (int j = 0; j < 32; j++) nonzero += codes[64 + j] != 0;
    CHECK(nonzero == 0);

    // All-zero group: edge 0 -> q0 == 0 -> bias 0, scale stays -1e-7, codes 0.
    float z[32] = {0};
    CHECK_OK(lp_mlx_quantize(z, 1, 32, 8, 32, LP_DTYPE_F32, q, scales, biases, err), err);
    CHECK(biases[0] == 0.0f);
    CHECK_NEAR(scales[0], -1e-7, 1e-12);
    CHECK(q[0] == 0 && q[7] == 0);

    // Dequantization reproduces the edges exactly (scale*0 + bias).
    float out[32];
    for (int j = 0; j < 32; j++) w[j] = (float)j / 31.0f - 0.25f; // max 0.75 is the edge
    CHECK_OK(lp_mlx_quantize(w, 1, 32, 8, 32, LP_DTYPE_F32, q, scales, biases, err), err);
    CHECK_OK(lp_mlx_dequantize(q, scales, biases, 1, 32, 8, 32, LP_DTYPE_F32, out, err), err);
    CHECK(out[31] == 0.75f);
    CHECK(biases[0] == 0.75f && scales[0] < 0.0f);
}

// 4-bit packing: eight codes per word, element 0 in bits 0-3.
static void test_pack4(void) {
    struct lp_error err_buf = {0}, *err = &err_buf;
    // A group of 32 with min 0 and max 15: |max| > |min| so edge = max,
    // scale = -(15/15) = -1, q0 = rint(15 / -1) = -15, scale = 15 / -15 = -1,
    // bias = 15; code = (w - 15) / -1 = 15 - w.
    float w[32];
    for (int j = 0; j < 32; j++) w[j] = (float)(j % 16);
    uint32_t q[4];
    uint16_t scales[1], biases[1];
    CHECK_OK(lp_mlx_quantize(w, 1, 32, 4, 32, LP_DTYPE_BF16, q, scales, biases, err), err);
    CHECK(lp_bf16_to_f32(scales[0]) == -1.0f);
    CHECK(lp_bf16_to_f32(biases[0]) == 15.0f);
    // elements 0..7 = 0..7 -> codes 15..8; nibble e holds element e.
    CHECK_MSG(q[0] == 0x89abcdefu, "q[0] = 0x%08x", q[0]);
    CHECK_MSG(q[1] == 0x01234567u, "q[1] = 0x%08x", q[1]);
    CHECK(q[2] == 0x89abcdefu && q[3] == 0x01234567u);

    // Positive scale (negative edge): w = j - 15 for j < 16 -> min -15 edge,
    // scale 1, bias -15, code = w + 15 = j.
    for (int j = 0; j < 32; j++) w[j] = (float)(j % 16) - 15.0f;
    CHECK_OK(lp_mlx_quantize(w, 1, 32, 4, 32, LP_DTYPE_BF16, q, scales, biases, err), err);
    CHECK(lp_bf16_to_f32(scales[0]) == 1.0f);
    CHECK(lp_bf16_to_f32(biases[0]) == -15.0f);
    CHECK_MSG(q[0] == 0x76543210u, "q[0] = 0x%08x", q[0]);
    CHECK_MSG(q[1] == 0xfedcba98u, "q[1] = 0x%08x", q[1]);

    // 8-bit: word k holds elements 4k..4k+3, element 4k in the low byte.
    float w8[64];
    for (int j = 0; j < 64; j++) w8[j] = (float)(j) - 255.0f; // min -255 edge, scale 1
    w8[63] = 0.0f; // max 0
    uint32_t q8[16];
    CHECK_OK(lp_mlx_quantize(w8, 1, 64, 8, 64, LP_DTYPE_BF16, q8, scales, biases, err), err);
    CHECK(lp_bf16_to_f32(scales[0]) == 1.0f);
    CHECK_MSG(q8[0] == 0x03020100u, "q8[0] = 0x%08x", q8[0]);
    CHECK_MSG(q8[15] == 0xff3e3d3cu, "q8[15] = 0x%08x", q8[15]);
}

// Random rows: |w - deq| <= |scale|/2 for interior codes, <= |scale| for
// clipped end codes (snapping the scale to the edge can shrink it a little),
// plus the bf16 rounding of scale and bias: |q| * |ds| + |db|.
static void test_round_trip(int bits, int group) {
    struct lp_error err_buf = {0}, *err = &err_buf;
    enum { ROWS = 16, COLS = 256 };
    static float w[ROWS * COLS], out[ROWS * COLS];
    static uint32_t q[ROWS * COLS / 4];
    static uint16_t scales[ROWS * COLS / 32], biases[ROWS * COLS / 32];
    static float s32[ROWS * COLS / 32], b32[ROWS * COLS / 32];
    for (int i = 0; i < ROWS * COLS; i++) {
        double u = rand_uniform() * 2.0 - 1.0;
        int r = i / COLS;
        w[i] = (float)(u * (r % 3 == 0 ? 0.01 : 1.0) + (r % 4 == 1 ? 0.5 : 0.0));
    }
    CHECK_OK(lp_mlx_quantize(w, ROWS, COLS, bits, group, LP_DTYPE_BF16, q, scales, biases, err),
             err);
    CHECK_OK(lp_mlx_quantize(w, ROWS, COLS, bits, group, LP_DTYPE_F32, q, s32, b32, err), err);
    CHECK_OK(lp_mlx_dequantize(q, scales, biases, ROWS, COLS, bits, group, LP_DTYPE_BF16, out,
                               err),
             err);
    const uint32_t n_bins = (1u << bits) - 1;
    int bad = 0;
    for (int i = 0; i < ROWS * COLS; i++) {
        int g = i / group;
        uint32_t code = (q[i / (32 / bits)] >> ((i % (32 / bits)) * bits)) & n_bins;
        float s = s32[g], b = b32[g];
        float sb = lp_bf16_to_f32(scales[g]), bb = lp_bf16_to_f32(biases[g]);
        if (sb != lp_bf16_to_f32(lp_f32_to_bf16(s)) || bb != lp_bf16_to_f32(lp_f32_to_bf16(b)))
            bad++;
        double tol = (code == 0 || code == n_bins) ? fabs(s) : 0.5 * fabs(s);
        tol += code * fabs(sb - s) + fabs(bb - b) + 1e-6 * fabs(w[i]) + 1e-7;
        if (fabs(w[i] - out[i]) > tol) {
            if (bad < 5)
                fprintf(stderr, "bits %d: w[%d] = %g deq %g scale %g code %u\n", bits, i, w[i],
                        out[i], s, code);
            bad++;
        }
    }
    CHECK_MSG(bad == 0, "bits %d group %d: %d elements out of bound", bits, group, bad);
}

static void test_bad_params(void) {
    struct lp_error err_buf = {0}, *err = &err_buf;
    float w[64] = {0};
    uint32_t q[64];
    uint16_t s[4], b[4];
    CHECK(lp_mlx_quantize(w, 1, 64, 3, 64, LP_DTYPE_BF16, q, s, b, err) == LP_ERR_INVALID_ARG);
    CHECK(strstr(err->msg, "bits 3") != NULL);
    CHECK(lp_mlx_quantize(w, 1, 64, 8, 48, LP_DTYPE_BF16, q, s, b, err) == LP_ERR_INVALID_ARG);
    CHECK(lp_mlx_quantize(w, 1, 48, 8, 32, LP_DTYPE_BF16, q, s, b, err) == LP_ERR_INVALID_ARG);
    CHECK(lp_mlx_quantize(w, 1, 64, 8, 32, LP_DTYPE_U32, q, s, b, err) == LP_ERR_INVALID_ARG);
    size_t qb, sb;
    CHECK_OK(lp_mlx_quantized_bytes(2048, 6144, 4, 64, LP_DTYPE_BF16, &qb, &sb, err), err);
    CHECK(qb == (size_t)2048 * 6144 / 2);
    CHECK(sb == (size_t)2048 * 96 * 2);
    CHECK(lp_mlx_quantized_bytes(INT64_MAX / 2, 128, 8, 64, LP_DTYPE_BF16, &qb, &sb, err) ==
          LP_ERR_INVALID_ARG);
}

int main(void) {
    test_rounding();
    test_groups_by_hand();
    test_pack4();
    test_round_trip(8, 64);
    test_round_trip(4, 64);
    test_round_trip(4, 32);
    test_round_trip(2, 128);
    test_round_trip(8, 128);
    test_bad_params();
    return lp_test_finish("test_mlx_quantize");
}
