// SPDX-License-Identifier: MIT
// test_ggml_blocks.c -- the GGUF block layer: hand-built blocks of every
// type dequantize to the values ggml-common.h's layouts define (each bit of
// the packed 6-bit scales and mins, of Q5_K's fifth bits and of Q6_K's low
// and high code bits set alone and traced to its element); the element
// accessor and the row decoder agree bit for bit; quantize -> dequantize
// round trips give every element its block's nearest value and stay within
// each format's error on random rows; bad arguments are refused.
#include <stdint.h>
#include <string.h>

#include "layerpipe/convert.h"
#include "util/fp16.h"
#include "util/ggml_layout.h"
#include "lp_test.h"

static const enum lp_ggml_type all_types[] = {LP_GGML_Q4_0, LP_GGML_Q8_0, LP_GGML_Q4_K,
                                              LP_GGML_Q5_K, LP_GGML_Q6_K};
#define N_TYPES 5

static uint64_t rng_state = 99;
static uint32_t rand_u32(void) {
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(rng_state >> 33);
}
static double rand_uniform(void) { return (double)rand_u32() * 0x1.0p-31; }
static float rand_normal(void) { // Box-Muller
    double u = rand_uniform() + 1e-12, v = rand_uniform();
    return (float)(sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v));
}

static void set_f16(uint8_t *p, uint16_t h) {
    p[0] = (uint8_t)(h & 0xff);
    p[1] = (uint8_t)(h >> 8);
}

static void dequant(enum lp_ggml_type t, const uint8_t *blk, float *y) {
    struct lp_error err = {0};
    CHECK_OK(lp_ggml_dequantize_row(t, blk, y, lp_ggml_block_elems(t), &err), &err);
}

static void test_sizes(void) {
    CHECK(lp_ggml_row_bytes(LP_GGML_Q8_0, 64) == 68);
    CHECK(lp_ggml_row_bytes(LP_GGML_Q4_0, 32) == 18);
    CHECK(lp_ggml_row_bytes(LP_GGML_Q4_K, 512) == 288);
    CHECK(lp_ggml_row_bytes(LP_GGML_Q5_K, 256) == 176);
    CHECK(lp_ggml_row_bytes(LP_GGML_Q6_K, 2048) == 8 * 210);
    CHECK(lp_ggml_row_bytes(LP_GGML_Q4_K, 32) == 0);  // not a whole block
    CHECK(lp_ggml_row_bytes(LP_GGML_Q8_0, 0) == 0);
    CHECK(lp_ggml_row_bytes(LP_GGML_Q8_0, -32) == 0);
    CHECK(lp_ggml_row_bytes((enum lp_ggml_type)3, 32) == 0); // Q4_1: not supported
}

static void test_bad_args(void) {
    struct lp_error err = {0};
    float x[256] = {0};
    uint8_t out[256];
    memset(out, 0xa5, sizeof out);
    CHECK(lp_ggml_quantize_row(LP_GGML_Q4_K, x, out, 100, &err) == LP_ERR_INVALID_ARG);
    CHECK(strstr(err.msg, "100 columns") != NULL);
    CHECK(lp_ggml_quantize_row((enum lp_ggml_type)7, x, out, 32, &err) == LP_ERR_INVALID_ARG);
    x[40] = NAN;
    CHECK(lp_ggml_quantize_row(LP_GGML_Q8_0, x, out, 64, &err) == LP_ERR_INVALID_ARG);
    CHECK(strstr(err.msg, "element 40") != NULL);
    x[40] = INFINITY;
    CHECK(lp_ggml_quantize_row(LP_GGML_Q6_K, x, out, 256, &err) == LP_ERR_INVALID_ARG);
    int untouched = 1;
    for (size_t i = 0; i < sizeof out; i++) untouched &= out[i] == 0xa5;
    CHECK(untouched);
    CHECK(lp_ggml_dequantize_row(LP_GGML_Q5_K, out, x, 255, &err) == LP_ERR_INVALID_ARG);
    CHECK(lp_ggml_dequantize_row((enum lp_ggml_type)0, out, x, 32, &err) == LP_ERR_INVALID_ARG);
    CHECK(lp_ggml_quantize_row(LP_GGML_Q8_0, x, out, 32, NULL) == LP_OK); // NULL err allowed
}

// Q8_0: d = 0.5 (f16 0x3800, stored little-endian), codes -128..127 in steps.
static void test_q8_0_by_hand(void) {
    uint8_t blk[34];
    set_f16(blk, 0x3800);
    for (int j = 0; j < 32; j++) blk[2 + j] = (uint8_t)(int8_t)(j * 8 - 128);
    float y[32];
    dequant(LP_GGML_Q8_0, blk, y);
    int ok = 1;
    for (int j = 0; j < 32; j++) ok &= y[j] == 0.5f * (float)(j * 8 - 128);
    CHECK(ok);
    CHECK(y[0] == -64.0f && y[31] == 60.0f);
}

// Q4_0: d = -2, byte j holds element j (low nibble) and j + 16 (high).
static void test_q4_0_by_hand(void) {
    uint8_t blk[18];
    set_f16(blk, 0xc000);
    for (int j = 0; j < 16; j++) blk[2 + j] = (uint8_t)(j | (15 - j) << 4);
    float y[32];
    dequant(LP_GGML_Q4_0, blk, y);
    int ok = 1;
    for (int j = 0; j < 16; j++) {
        ok &= y[j] == -2.0f * (float)(j - 8);
        ok &= y[j + 16] == -2.0f * (float)(15 - j - 8);
    }
    CHECK(ok);
    CHECK(y[0] == 16.0f && y[16] == -14.0f);
}

// The 6-bit pairs of Q4_K/Q5_K written out bit by bit from the layout text:
// byte k < 4: bits 0-5 sc[k], bits 6-7 sc[k+4] bits 4-5; bytes 4..7: bits
// 0-5 m[k-4], bits 6-7 m[k] bits 4-5; bytes 8..11: bits 0-3 sc[k-4] bits
// 0-3, bits 4-7 m[k-4] bits 0-3.
static void k4_bit_meaning(int bit, int *sub, int *is_min, int *weight) {
    int k = bit / 8, p = bit % 8;
    if (k < 4) {
        *is_min = 0;
        *sub = p < 6 ? k : k + 4;
        *weight = p < 6 ? 1 << p : 1 << (p - 6 + 4);
    } else if (k < 8) {
        *is_min = 1;
        *sub = p < 6 ? k - 4 : k;
        *weight = p < 6 ? 1 << p : 1 << (p - 6 + 4);
    } else {
        *sub = k - 4;
        *is_min = p >= 4;
        *weight = p < 4 ? 1 << p : 1 << (p - 4);
    }
}

static void k4_pack_by_bits(const int *sc, const int *m, uint8_t *scales) {
    memset(scales, 0, 12);
    for (int bit = 0; bit < 96; bit++) {
        int sub, is_min, weight;
        k4_bit_meaning(bit, &sub, &is_min, &weight);
        int v = is_min ? m[sub] : sc[sub];
        if (v & weight) scales[bit / 8] |= (uint8_t)(1u << (bit % 8));
    }
}

// Every bit of scales[12] alone, d = 1, dmin = 1, every code 1: the element
// values of sub-block s are sc_s - m_s, so exactly one sub-block moves, by
// +weight (a scale bit) or -weight (a min bit).
static void test_k4_scale_bits(enum lp_ggml_type t) {
    int bb = lp_ggml_block_bytes(t);
    uint8_t blk[176];
    int bad = 0;
    for (int bit = 0; bit < 96; bit++) {
        memset(blk, 0, sizeof blk);
        set_f16(blk, 0x3c00);
        set_f16(blk + 2, 0x3c00);
        blk[4 + bit / 8] = (uint8_t)(1u << (bit % 8));
        int qs = t == LP_GGML_Q4_K ? 16 : 48;
        memset(blk + qs, 0x11, 128);
        int sub, is_min, weight;
        k4_bit_meaning(bit, &sub, &is_min, &weight);
        float y[256];
        dequant(t, blk, y);
        for (int i = 0; i < 256; i++) {
            float want = i / 32 != sub ? 0.0f : is_min ? -(float)weight : (float)weight;
            if (y[i] != want) bad++;
        }
    }
    CHECK_MSG(bad == 0, "%s: %d elements wrong over the 96 scale bits", lp_ggml_type_name(t), bad);
    (void)bb;
}

// Q4_K with scales and mins set by hand (values using the high bits too),
// d = 0.5, dmin = 0.25, element i code (7 i + 3) % 16.
static void test_q4_k_by_hand(void) {
    const int sc[8] = {3, 17, 33, 63, 5, 40, 21, 60};
    const int m[8] = {0, 9, 63, 32, 48, 7, 1, 50};
    uint8_t blk[144];
    set_f16(blk, 0x3800);
    set_f16(blk + 2, 0x3400);
    k4_pack_by_bits(sc, m, blk + 4);
    int code[256];
    for (int i = 0; i < 256; i++) code[i] = (7 * i + 3) % 16;
    for (int k = 0; k < 4; k++)
        for (int l = 0; l < 32; l++)
            blk[16 + 32 * k + l] = (uint8_t)(code[64 * k + l] | code[64 * k + 32 + l] << 4);
    float y[256];
    dequant(LP_GGML_Q4_K, blk, y);
    int bad = 0;
    for (int i = 0; i < 256; i++) {
        float want = (0.5f * (float)sc[i / 32]) * (float)code[i] - 0.25f * (float)m[i / 32];
        if (y[i] != want) bad++;
    }
    CHECK_MSG(bad == 0, "Q4_K: %d of 256 elements wrong", bad);
    CHECK(y[0] == 1.5f * 3.0f);                 // sc 3, code 3, m 0
    CHECK(y[255] == 30.0f * 12.0f - 12.5f);     // sc 60, code (7*255+3)%16 = 12, m 50
}

// Q5_K: each bit of qh[32] alone (codes otherwise 0, d = 1, dmin = 0, every
// scale 1): bit s of qh[l] is element 32 s + l's 16.
static void test_q5_k_high_bits(void) {
    const int ones[8] = {1, 1, 1, 1, 1, 1, 1, 1}, zeros[8] = {0};
    int bad = 0;
    for (int bit = 0; bit < 256; bit++) {
        uint8_t blk[176] = {0};
        set_f16(blk, 0x3c00);
        k4_pack_by_bits(ones, zeros, blk + 4);
        blk[16 + bit / 8] = (uint8_t)(1u << (bit % 8));
        float y[256];
        dequant(LP_GGML_Q5_K, blk, y);
        int target = 32 * (bit % 8) + bit / 8;
        for (int i = 0; i < 256; i++) bad += y[i] != (i == target ? 16.0f : 0.0f);
    }
    CHECK_MSG(bad == 0, "Q5_K: %d elements wrong over the 256 fifth bits", bad);
    // And the low nibbles sit where Q4_K's do: byte 48 + 32k + l.
    uint8_t blk[176] = {0};
    set_f16(blk, 0x3c00);
    k4_pack_by_bits(ones, zeros, blk + 4);
    blk[48 + 32 * 2 + 5] = 0x9c; // element 133 code 12, element 165 code 9
    blk[16 + 5] = 1u << 5;       // element 165 + 16
    float y[256];
    dequant(LP_GGML_Q5_K, blk, y);
    CHECK(y[133] == 12.0f && y[165] == 25.0f && y[5] == 0.0f);
}

// Q6_K: d = 0.25, scales[j] = 4 j - 30 (negative ones too), element i code
// i % 64, placed bit by bit from the layout text.
static void q6_place(uint8_t *blk, int i, int code) {
    int h = i / 128, k = i % 128, l = k % 32, u = k / 32;
    int ql = 64 * h + l + (u == 1 || u == 3 ? 32 : 0);
    blk[ql] |= (uint8_t)(u < 2 ? code & 15 : (code & 15) << 4);
    blk[128 + 32 * h + l] |= (uint8_t)((code >> 4) << (2 * u));
}

static void test_q6_k_by_hand(void) {
    uint8_t blk[210] = {0};
    for (int j = 0; j < 16; j++) blk[192 + j] = (uint8_t)(int8_t)(4 * j - 30);
    set_f16(blk + 208, 0x3400);
    for (int i = 0; i < 256; i++) q6_place(blk, i, i % 64);
    float y[256];
    dequant(LP_GGML_Q6_K, blk, y);
    int bad = 0;
    for (int i = 0; i < 256; i++)
        bad += y[i] != (0.25f * (float)(4 * (i / 16) - 30)) * (float)(i % 64 - 32);
    CHECK_MSG(bad == 0, "Q6_K: %d of 256 elements wrong", bad);

    // Every bit of ql and qh alone (d = 1, scales 1): the element it belongs
    // to rises from -32 by its weight.
    int bad_bits = 0;
    for (int bit = 0; bit < 192 * 8; bit++) {
        memset(blk, 0, sizeof blk);
        for (int j = 0; j < 16; j++) blk[192 + j] = 1;
        set_f16(blk + 208, 0x3c00);
        int byte = bit / 8, p = bit % 8, target, weight;
        if (byte < 128) { // ql: half byte / 64, quarter (byte % 64) / 32 (+2 for the high nibble)
            int h = byte / 64, l = byte % 32, u = (byte % 64) / 32 + (p >= 4 ? 2 : 0);
            target = 128 * h + 32 * u + l;
            weight = 1 << (p % 4);
        } else { // qh: half (byte - 128) / 32, bits 2u, 2u + 1 of quarter u
            int h = (byte - 128) / 32, l = (byte - 128) % 32, u = p / 2;
            target = 128 * h + 32 * u + l;
            weight = 16 << (p % 2);
        }
        blk[byte] = (uint8_t)(1u << p);
        dequant(LP_GGML_Q6_K, blk, y);
        for (int i = 0; i < 256; i++)
            bad_bits += y[i] != (i == target ? (float)(weight - 32) : -32.0f);
    }
    CHECK_MSG(bad_bits == 0, "Q6_K: %d elements wrong over the ql/qh bits", bad_bits);
}

// Random bytes (finite f16 scales): the element accessor, the block decoder
// and the row dequantizer give the same bits.
static void test_accessor_matches_rows(void) {
    for (int ti = 0; ti < N_TYPES; ti++) {
        enum lp_ggml_type t = all_types[ti];
        int be = lp_ggml_block_elems(t), bb = lp_ggml_block_bytes(t);
        int64_t cols = 4 * be;
        uint8_t row[4 * 210];
        for (int i = 0; i < 4 * bb; i++) row[i] = (uint8_t)rand_u32();
        for (int b = 0; b < 4; b++) { // finite scales: exponent below 31
            uint8_t *blk = row + b * bb;
            int d_at = t == LP_GGML_Q6_K ? 208 : 0;
            blk[d_at + 1] &= 0x7b;
            if (t == LP_GGML_Q4_K || t == LP_GGML_Q5_K) blk[3] &= 0x7b;
        }
        float y[4 * 256];
        struct lp_error err = {0};
        CHECK_OK(lp_ggml_dequantize_row(t, row, y, cols, &err), &err);
        int bad = 0;
        for (int64_t c = 0; c < cols; c++) {
            float v = ggml_value_at(t, row, c);
            bad += memcmp(&v, &y[c], sizeof v) != 0;
        }
        CHECK_MSG(bad == 0, "%s: %d elements differ between accessor and row", lp_ggml_type_name(t),
                  bad);
    }
}

// The grid value of code q for element i of a block (the layout's formula
// with the block's stored scales), and the code range.
static float grid_value(enum lp_ggml_type t, const uint8_t *blk, int i, int q) {
    switch (t) {
    case LP_GGML_Q4_0: return ggml_f16_at(blk) * (float)(q - 8);
    case LP_GGML_Q8_0: return ggml_f16_at(blk) * (float)q;
    case LP_GGML_Q4_K:
    case LP_GGML_Q5_K: {
        int sc, m;
        ggml_k4_scale_min(blk + 4, i / 32, &sc, &m);
        return (ggml_f16_at(blk) * (float)sc) * (float)q - ggml_f16_at(blk + 2) * (float)m;
    }
    case LP_GGML_Q6_K:
        return (ggml_f16_at(blk + 208) * (float)(int8_t)blk[192 + i / 16]) * (float)(q - 32);
    }
    return 0.0f;
}

static void code_range(enum lp_ggml_type t, int *lo, int *hi) {
    *lo = 0;
    *hi = t == LP_GGML_Q4_0 || t == LP_GGML_Q4_K ? 15 : t == LP_GGML_Q5_K ? 31 : 63;
    if (t == LP_GGML_Q8_0) *lo = -128, *hi = 127;
}

// Quantizes rows of cols values, dequantizes, and checks that every element
// got its block's nearest grid value (no code of the block's grid is closer
// by more than rounding), returning the relative RMS error.
static double round_trip(enum lp_ggml_type t, const float *x, int64_t cols, int *not_nearest) {
    int be = lp_ggml_block_elems(t), bb = lp_ggml_block_bytes(t);
    uint8_t q[64 * 34]; // the largest row: 2048 Q8_0 elements
    float y[8 * 256];
    struct lp_error err = {0};
    CHECK_OK(lp_ggml_quantize_row(t, x, q, cols, &err), &err);
    CHECK_OK(lp_ggml_dequantize_row(t, q, y, cols, &err), &err);
    int lo, hi;
    code_range(t, &lo, &hi);
    double num = 0, den = 0;
    for (int64_t c = 0; c < cols; c++) {
        const uint8_t *blk = q + (c / be) * bb;
        float e = fabsf(y[c] - x[c]);
        float best = INFINITY;
        for (int code = lo; code <= hi; code++)
            best = fminf(best, fabsf(grid_value(t, blk, (int)(c % be), code) - x[c]));
        if (e > best + 1e-6f * (fabsf(x[c]) + 1e-30f)) (*not_nearest)++;
        num += (double)e * e;
        den += (double)x[c] * x[c];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

// Gaussian rows: relative RMS error under each format's bound (bounds are
// about 1.3x what the quantizer gives here; 4-bit formats lose most).
static void test_round_trip_random(void) {
    const double bound[N_TYPES] = {0.125, 0.0075, 0.085, 0.042, 0.021};
    for (int ti = 0; ti < N_TYPES; ti++) {
        enum lp_ggml_type t = all_types[ti];
        double worst = 0, sum = 0;
        int not_nearest = 0, trials = 20;
        for (int trial = 0; trial < trials; trial++) {
            float x[2048];
            float scale = (float)pow(10.0, -3.0 + 4.0 * rand_uniform());
            for (int i = 0; i < 2048; i++) x[i] = scale * rand_normal();
            double e = round_trip(t, x, 2048, &not_nearest);
            sum += e;
            if (e > worst) worst = e;
        }
        printf("%s: relative RMS error mean %.4f, worst %.4f (bound %.4f)\n", lp_ggml_type_name(t),
               sum / trials, worst, bound[ti]);
        CHECK_MSG(worst < bound[ti], "%s: worst relative RMS error %.4f", lp_ggml_type_name(t),
                  worst);
        CHECK_MSG(not_nearest == 0, "%s: %d elements not at their nearest grid value",
                  lp_ggml_type_name(t), not_nearest);
    }
}

// Awkward rows: zeros, constants of each sign, one outlier, all positive
// far from zero, all negative, tiny and large magnitudes, alternating
// signs. Each must round-trip to nearest values; zero and constant blocks
// of the symmetric formats exactly.
static void test_round_trip_edges(void) {
    float x[256];
    for (int ti = 0; ti < N_TYPES; ti++) {
        enum lp_ggml_type t = all_types[ti];
        int not_nearest = 0;
        for (int kind = 0; kind < 9; kind++) {
            for (int i = 0; i < 256; i++) {
                switch (kind) {
                case 0: x[i] = 0.0f; break;
                case 1: x[i] = 0.75f; break;
                case 2: x[i] = -3.5f; break;
                case 3: x[i] = i == 77 ? 100.0f : 0.01f * rand_normal(); break;
                case 4: x[i] = 10.0f + (float)rand_uniform(); break;
                case 5: x[i] = -1.0f - (float)rand_uniform(); break;
                case 6: x[i] = 1e-7f * rand_normal(); break;
                case 7: x[i] = 3e4f * rand_normal(); break;
                default: x[i] = (i % 2 ? 1.0f : -1.0f) * (1.0f + 0.01f * (float)(i % 7)); break;
                }
            }
            double e = round_trip(t, x, 256, &not_nearest);
            if (kind == 0) CHECK_MSG(e == 0.0, "%s: zeros -> rms %g", lp_ggml_type_name(t), e);
            if (kind == 3 || kind == 7)
                CHECK_MSG(e < 0.2, "%s: kind %d: rms %g", lp_ggml_type_name(t), kind, e);
        }
        CHECK_MSG(not_nearest == 0, "%s: %d edge elements not at their nearest grid value",
                  lp_ggml_type_name(t), not_nearest);
    }
    // Q8_0 and Q6_K keep a constant exactly up to the f16 rounding of d.
    for (int i = 0; i < 256; i++) x[i] = 0.75f;
    uint8_t q[210];
    float y[256];
    struct lp_error err = {0};
    CHECK_OK(lp_ggml_quantize_row(LP_GGML_Q8_0, x, q, 32, &err), &err);
    CHECK_OK(lp_ggml_dequantize_row(LP_GGML_Q8_0, q, y, 32, &err), &err);
    CHECK_NEAR(y[5], 0.75f, 0.75f * 1e-3);
    CHECK_OK(lp_ggml_quantize_row(LP_GGML_Q6_K, x, q, 256, &err), &err);
    CHECK_OK(lp_ggml_dequantize_row(LP_GGML_Q6_K, q, y, 256, &err), &err);
    CHECK_NEAR(y[200], 0.75f, 0.75f * 2e-3);
}

int main(void) {
    test_sizes();
    test_bad_args();
    test_q8_0_by_hand();
    test_q4_0_by_hand();
    test_k4_scale_bits(LP_GGML_Q4_K);
    test_k4_scale_bits(LP_GGML_Q5_K);
    test_q4_k_by_hand();
    test_q5_k_high_bits();
    test_q6_k_by_hand();
    test_accessor_matches_rows();
    test_round_trip_random();
    test_round_trip_edges();
    return lp_test_finish("test_ggml_blocks");
}
