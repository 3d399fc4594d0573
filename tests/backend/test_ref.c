// SPDX-License-Identifier: MIT
// test_ref.c -- the reference backend against hand-computed cases: a 2x4
// matmul, MLX 4- and 8-bit words decoded by hand, rmsnorm, rope (identity
// at position 0, a known rotation at position 1), attention (one position
// returns v, a known 3:1 softmax, GQA, causal masking across two segments
// with different block tables), bf16 KV storage, silu, add, gather, and the
// f16/bf16 conversions (round to nearest even); GGUF blocks against their
// dequantized float copy (bit for bit); argmax_rows on crafted rows (NaN,
// infinities, ties) against the answers worked out by hand. Tolerance 1e-5 absolute on
// values of order 1 (float rounding only).
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "backend_test_util.h"

static struct lp_backend *be;
static struct lp_error err_storage;
static struct lp_error *err = &err_storage;

static struct lp_bweight *upload(const struct lp_weight *w) {
    struct lp_bweight *bw = NULL;
    CHECK_OK(be->iface.weight_upload(be->ctx, w, &bw, err), err);
    return bw;
}

static void test_convert(void) {
    CHECK(lp_f32_to_bf16(1.0f) == 0x3f80);
    CHECK(lp_f32_to_bf16(1.0f + 1.0f / 256) == 0x3f80);     // tie -> even (down)
    CHECK(lp_f32_to_bf16(1.0f + 3.0f / 256) == 0x3f82);     // tie -> even (up)
    CHECK(lp_f32_to_bf16(1.0f + 1.0f / 256 + 1e-6f) == 0x3f81); // above the tie
    CHECK(lp_f32_to_bf16(-2.0f) == 0xc000);
    CHECK(isnan(lp_bf16_to_f32(lp_f32_to_bf16(NAN))));
    CHECK(lp_f32_to_f16(1.0f) == 0x3c00);
    CHECK(lp_f32_to_f16(65504.0f) == 0x7bff);
    CHECK(lp_f32_to_f16(65520.0f) == 0x7c00);               // rounds to inf
    CHECK(lp_f32_to_f16(-0.5f) == 0xb800);
    CHECK(lp_f32_to_f16(5.9604645e-8f) == 0x0001);          // smallest subnormal
    CHECK(lp_f32_to_f16(1.0f + 1.0f / 2048) == 0x3c00);     // tie -> even
    CHECK(lp_f16_to_f32(0x3555) == 0.333251953125f);
    CHECK(lp_f16_to_f32(0x0001) == 5.9604644775390625e-8f);
    CHECK(isinf(lp_f16_to_f32(0xfc00)) && lp_f16_to_f32(0xfc00) < 0);
    for (int i = 0; i < 0x7c00; i += 7) // every 7th finite half round-trips exactly
        CHECK_MSG(lp_f32_to_f16(lp_f16_to_f32((uint16_t)i)) == i, "half 0x%04x", i);
}

static void test_matmul_2x4(void) {
    float wd[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    struct lp_weight w = {.format = LP_WEIGHT_F32, .rows = 2, .cols = 4, .data = wd};
    struct lp_bweight *bw = upload(&w);
    float x[8] = {1, 0, -1, 2, 0.5f, 0.5f, 0.5f, 0.5f};
    struct lp_buf *xb = tu_buf(be, x, sizeof x), *ob = tu_buf(be, NULL, 4 * sizeof(float));
    be->iface.matmul(be->ctx, ob, xb, bw, 2);
    float o[4];
    tu_read(be, ob, o, sizeof o);
    CHECK_NEAR(o[0], 6.0, 1e-6);  // 1 - 3 + 8
    CHECK_NEAR(o[1], 14.0, 1e-6); // 5 - 7 + 16
    CHECK_NEAR(o[2], 5.0, 1e-6);
    CHECK_NEAR(o[3], 13.0, 1e-6);
    tu_free(be, xb);
    tu_free(be, ob);
    be->iface.weight_free(be->ctx, bw);
}

static void test_mlx_decode(void) {
    // 4-bit, one row of 32 columns, group 32: codes 0..15, then eight 0s,
    // then eight 15s; scale 0.5 and bias -1 in bf16: w = 0.5 q - 1.
    uint32_t words4[4] = {0x76543210u, 0xfedcba98u, 0x00000000u, 0xffffffffu};
    uint16_t s4 = 0x3f00, b4 = 0xbf80; // 0.5, -1.0
    struct lp_weight w4 = {.format = LP_WEIGHT_MLX_AFFINE, .rows = 1, .cols = 32, .data = words4,
                           .scales = &s4, .biases = &b4, .scale_dtype = LP_DTYPE_BF16,
                           .bits = 4, .group_size = 32};
    struct lp_bweight *bw = upload(&w4);
    int32_t id = 0;
    struct lp_buf *ob = tu_buf(be, NULL, 32 * sizeof(float));
    be->iface.embed(be->ctx, ob, bw, &id, 1);
    float o[32];
    tu_read(be, ob, o, sizeof o);
    for (int c = 0; c < 16; c++) CHECK_NEAR(o[c], 0.5 * c - 1.0, 0);
    for (int c = 16; c < 24; c++) CHECK_NEAR(o[c], -1.0, 0);
    for (int c = 24; c < 32; c++) CHECK_NEAR(o[c], 6.5, 0);
    be->iface.weight_free(be->ctx, bw);

    // 8-bit, f16 scales: word 0x04030201 holds codes 1, 2, 3, 4; scale -2, bias 0.25.
    uint32_t words8[8] = {0x04030201u, 0, 0, 0, 0, 0, 0, 0xff000000u};
    uint16_t s8 = lp_f32_to_f16(-2.0f), b8 = lp_f32_to_f16(0.25f);
    struct lp_weight w8 = {.format = LP_WEIGHT_MLX_AFFINE, .rows = 1, .cols = 32, .data = words8,
                           .scales = &s8, .biases = &b8, .scale_dtype = LP_DTYPE_F16,
                           .bits = 8, .group_size = 32};
    bw = upload(&w8);
    be->iface.embed(be->ctx, ob, bw, &id, 1);
    tu_read(be, ob, o, sizeof o);
    CHECK_NEAR(o[0], -1.75, 0);
    CHECK_NEAR(o[3], -7.75, 0);
    CHECK_NEAR(o[4], 0.25, 0);
    CHECK_NEAR(o[31], -509.75, 0); // code 255
    // matmul with x = e_3 picks column 3.
    float x[32] = {0};
    x[3] = 1.0f;
    struct lp_buf *xb = tu_buf(be, x, sizeof x), *mb = tu_buf(be, NULL, sizeof(float));
    be->iface.matmul(be->ctx, mb, xb, bw, 1);
    float m;
    tu_read(be, mb, &m, sizeof m);
    CHECK_NEAR(m, -7.75, 1e-6);
    tu_free(be, xb);
    tu_free(be, mb);
    tu_free(be, ob);
    be->iface.weight_free(be->ctx, bw);

    // Bad weights are refused with a message.
    struct lp_bweight *bad = NULL;
    w8.bits = 3;
    CHECK(be->iface.weight_upload(be->ctx, &w8, &bad, err) == LP_ERR_UNSUPPORTED && !bad);
    w8.bits = 8;
    w8.cols = 48;
    CHECK(be->iface.weight_upload(be->ctx, &w8, &bad, err) == LP_ERR_INVALID_ARG && !bad);
    CHECK(strstr(err->msg, "48") != NULL);
}

// GGUF weights: matmul and embed on the blocks give the bits of the same
// computation on their dequantized float32 copy (lp_ggml_dequantize_row):
// the ref reads each element through the layout's definition. Upload
// refuses an unknown block type and columns that are not whole blocks.
static void test_ggml(void) {
    static const enum lp_ggml_type types[5] = {LP_GGML_Q4_0, LP_GGML_Q8_0, LP_GGML_Q4_K,
                                               LP_GGML_Q5_K, LP_GGML_Q6_K};
    const int64_t rows = 7, cols = 512;
    const int n = 3;
    float *x = tu_randv(n * cols, 1.0f);
    for (int i = 0; i < 5; i++) {
        struct lp_weight g = tu_weight_ggml(types[i], rows, cols, i % 2 == 0);
        float *f = malloc((size_t)(rows * cols) * 4);
        for (int64_t r = 0; r < rows; r++)
            CHECK_OK(lp_ggml_dequantize_row(types[i], (const uint8_t *)g.data +
                                                          r * lp_ggml_row_bytes(types[i], cols),
                                            f + r * cols, cols, err), err);
        struct lp_weight fw = {.format = LP_WEIGHT_F32, .rows = rows, .cols = cols, .data = f};
        struct lp_bweight *bg = upload(&g), *bf = upload(&fw);
        struct lp_buf *xb = tu_buf(be, x, (size_t)(n * cols) * 4);
        struct lp_buf *o1 = tu_buf(be, NULL, (size_t)(n * rows) * 4);
        struct lp_buf *o2 = tu_buf(be, NULL, (size_t)(n * rows) * 4);
        be->iface.matmul(be->ctx, o1, xb, bg, n);
        be->iface.matmul(be->ctx, o2, xb, bf, n);
        float a[3 * 7], b[3 * 7];
        tu_read(be, o1, a, sizeof a);
        tu_read(be, o2, b, sizeof b);
        CHECK_MSG(memcmp(a, b, sizeof a) == 0, "ggml %s matmul differs from its float copy",
                  lp_ggml_type_name(types[i]));
        int32_t ids[2] = {5, 1};
        struct lp_buf *e1 = tu_buf(be, NULL, 2 * (size_t)cols * 4);
        be->iface.embed(be->ctx, e1, bg, ids, 2);
        float *e = malloc(2 * (size_t)cols * 4);
        tu_read(be, e1, e, 2 * (size_t)cols * 4);
        CHECK_MSG(memcmp(e, f + 5 * cols, (size_t)cols * 4) == 0 &&
                      memcmp(e + cols, f + cols, (size_t)cols * 4) == 0,
                  "ggml %s embed differs from the dequantized rows", lp_ggml_type_name(types[i]));
        free(e);
        tu_free(be, e1);
        tu_free(be, xb);
        tu_free(be, o1);
        tu_free(be, o2);
        be->iface.weight_free(be->ctx, bg);
        be->iface.weight_free(be->ctx, bf);
        free(f);
        tu_weight_free(&g);
    }
    free(x);
    uint8_t blk[210] = {0};
    struct lp_weight bad = {.format = LP_WEIGHT_GGML, .rows = 1, .cols = 32, .data = blk,
                            .ggml_type = (enum lp_ggml_type)3};
    struct lp_bweight *bw = NULL;
    CHECK(be->iface.weight_upload(be->ctx, &bad, &bw, err) == LP_ERR_UNSUPPORTED && !bw);
    CHECK(strstr(err->msg, "block type 3") != NULL);
    bad.ggml_type = LP_GGML_Q4_K;
    CHECK(be->iface.weight_upload(be->ctx, &bad, &bw, err) == LP_ERR_INVALID_ARG && !bw);
    CHECK(strstr(err->msg, "32 columns") != NULL);
}

static void test_rmsnorm(void) {
    float x[2] = {3, 4}, w[2] = {1, 2};
    struct lp_buf *xb = tu_buf(be, x, sizeof x), *wb = tu_buf(be, w, sizeof w);
    be->iface.rmsnorm(be->ctx, xb, xb, wb, 1, 2, 0.0f); // in place
    float o[2];
    tu_read(be, xb, o, sizeof o);
    CHECK_NEAR(o[0], 3.0 / sqrt(12.5), 1e-6);
    CHECK_NEAR(o[1], 8.0 / sqrt(12.5), 1e-6);
    tu_free(be, xb);
    tu_free(be, wb);
}

static void test_rope(void) {
    // [2 tokens, 2 heads, head_dim 4]; token 0 at position 0 is unchanged.
    float x[16];
    for (int i = 0; i < 16; i++) x[i] = (float)(i + 1);
    int32_t pos[2] = {0, 1};
    struct lp_buf *xb = tu_buf(be, x, sizeof x);
    be->iface.rope(be->ctx, xb, pos, 2, 2, 4, 10000.0f);
    float o[16];
    tu_read(be, xb, o, sizeof o);
    for (int i = 0; i < 8; i++) CHECK_NEAR(o[i], x[i], 0);
    // token 1, head 0: x = [9, 10, 11, 12]; pairs (j, j + 2); inv_freq = 1, 1/100.
    double a0 = 1.0, a1 = 0.01;
    CHECK_NEAR(o[8], 9 * cos(a0) - 11 * sin(a0), 1e-5);
    CHECK_NEAR(o[10], 11 * cos(a0) + 9 * sin(a0), 1e-5);
    CHECK_NEAR(o[9], 10 * cos(a1) - 12 * sin(a1), 1e-5);
    CHECK_NEAR(o[11], 12 * cos(a1) + 10 * sin(a1), 1e-5);
    tu_free(be, xb);
}

static void test_attention(void) {
    // Cache: 4 blocks of 2 rows, 1 kv head, head_dim 2, f32.
    struct lp_kv_geom g = {.n_blocks = 4, .block_size = 2, .n_kv_heads = 1, .head_dim = 2,
                           .dtype = LP_DTYPE_F32};
    struct lp_buf *kc = tu_buf(be, NULL, 8 * 2 * 4), *vc = tu_buf(be, NULL, 8 * 2 * 4);
    // v at slot (block b, row r) = [10b + r, -(10b + r)], k = 0 (uniform softmax).
    float k[16] = {0}, v[16];
    int32_t slot[8];
    for (int s = 0; s < 8; s++) {
        slot[s] = s;
        float val = (float)(10 * (s / 2) + s % 2);
        v[2 * s] = val;
        v[2 * s + 1] = -val;
    }
    struct lp_buf *kb = tu_buf(be, k, sizeof k), *vb = tu_buf(be, v, sizeof v);
    be->iface.kv_store(be->ctx, kc, vc, &g, kb, vb, slot, 8);

    // Segment A: positions 2, 3 with blocks [3, 1]; segment B: position 0 with blocks [0, 2].
    // Two query heads share the kv head (GQA); q is arbitrary since k = 0.
    int32_t bt_a[2] = {3, 1}, bt_b[2] = {0, 2};
    struct lp_attn_seg segs[2] = {{.n_tokens = 2, .pos0 = 2, .block_table = bt_a, .n_blocks = 2},
                                  {.n_tokens = 1, .pos0 = 0, .block_table = bt_b, .n_blocks = 2}};
    float q[12];
    for (int i = 0; i < 12; i++) q[i] = (float)i;
    struct lp_buf *qb = tu_buf(be, q, sizeof q), *ob = tu_buf(be, NULL, sizeof q);
    be->iface.attention(be->ctx, ob, qb, kc, vc, &g, 2, segs, 2);
    float o[12];
    tu_read(be, ob, o, sizeof o);
    double a2 = (30 + 31 + 10) / 3.0, a3 = (30 + 31 + 10 + 11) / 4.0;
    for (int h = 0; h < 2; h++) {
        CHECK_NEAR(o[0 * 4 + h * 2], a2, 1e-5);
        CHECK_NEAR(o[0 * 4 + h * 2 + 1], -a2, 1e-5);
        CHECK_NEAR(o[1 * 4 + h * 2], a3, 1e-5);
        CHECK_NEAR(o[2 * 4 + h * 2], 0.0, 1e-6); // segment B sees only block 0 row 0
    }

    // One cached position returns v exactly; then a 3:1 softmax.
    float k2[4] = {1, 0, 0, 1}, v2[4] = {1, 0, 0, 1};
    int32_t slot2[2] = {4, 5}; // block 2
    struct lp_buf *kb2 = tu_buf(be, k2, sizeof k2), *vb2 = tu_buf(be, v2, sizeof v2);
    be->iface.kv_store(be->ctx, kc, vc, &g, kb2, vb2, slot2, 2);
    int32_t bt_c[1] = {2};
    struct lp_attn_seg one = {.n_tokens = 1, .pos0 = 0, .block_table = bt_c, .n_blocks = 1};
    float q2[2] = {(float)(log(3.0) * sqrt(2.0)), 0.0f};
    struct lp_buf *qb2 = tu_buf(be, q2, sizeof q2), *ob2 = tu_buf(be, NULL, sizeof q2);
    be->iface.attention(be->ctx, ob2, qb2, kc, vc, &g, 1, &one, 1);
    float o2[2];
    tu_read(be, ob2, o2, sizeof o2);
    CHECK_NEAR(o2[0], 1.0, 0);
    CHECK_NEAR(o2[1], 0.0, 0);
    struct lp_attn_seg two = {.n_tokens = 1, .pos0 = 1, .block_table = bt_c, .n_blocks = 1};
    be->iface.attention(be->ctx, ob2, qb2, kc, vc, &g, 1, &two, 1);
    tu_read(be, ob2, o2, sizeof o2);
    CHECK_NEAR(o2[0], 0.75, 1e-6);
    CHECK_NEAR(o2[1], 0.25, 1e-6);

    // Large scores stay finite (max subtraction).
    float q3[2] = {1e4f, 0.0f};
    struct lp_buf *qb3 = tu_buf(be, q3, sizeof q3);
    be->iface.attention(be->ctx, ob2, qb3, kc, vc, &g, 1, &two, 1);
    tu_read(be, ob2, o2, sizeof o2);
    CHECK_NEAR(o2[0], 1.0, 1e-6);
    CHECK_NEAR(o2[1], 0.0, 1e-6);

    for (struct lp_buf **b = (struct lp_buf *[]){kc, vc, kb, vb, qb, ob, kb2, vb2, qb2, ob2, qb3, NULL}; *b; b++)
        tu_free(be, *b);
}

static void test_kv_bf16(void) {
    struct lp_kv_geom g = {.n_blocks = 2, .block_size = 1, .n_kv_heads = 1, .head_dim = 2,
                           .dtype = LP_DTYPE_BF16};
    struct lp_buf *kc = tu_buf(be, NULL, 8), *vc = tu_buf(be, NULL, 8);
    float k[2] = {1.0f + 1.0f / 256, -3.0f}, v[2] = {1.0f + 3.0f / 256, 0.1f};
    struct lp_buf *kb = tu_buf(be, k, sizeof k), *vb = tu_buf(be, v, sizeof v);
    int32_t slot = 1;
    be->iface.kv_store(be->ctx, kc, vc, &g, kb, vb, &slot, 1);
    uint16_t kh[4], vh[4];
    tu_read(be, kc, kh, sizeof kh);
    tu_read(be, vc, vh, sizeof vh);
    CHECK(kh[0] == 0 && kh[2] == 0x3f80 && kh[3] == 0xc040);
    CHECK(vh[2] == 0x3f82 && vh[3] == lp_f32_to_bf16(0.1f) && vh[3] == 0x3dcd);
    for (struct lp_buf **b = (struct lp_buf *[]){kc, vc, kb, vb, NULL}; *b; b++) tu_free(be, *b);
}

static void test_elementwise(void) {
    float g[2] = {1.0f, -2.0f}, u[2] = {2.0f, 3.0f};
    struct lp_buf *gb = tu_buf(be, g, sizeof g), *ub = tu_buf(be, u, sizeof u);
    struct lp_buf *ob = tu_buf(be, NULL, sizeof g);
    be->iface.silu_mul(be->ctx, ob, gb, ub, 2);
    float o[2];
    tu_read(be, ob, o, sizeof o);
    CHECK_NEAR(o[0], 2.0 / (1.0 + exp(-1.0)), 1e-6);
    CHECK_NEAR(o[1], 3.0 * -2.0 / (1.0 + exp(2.0)), 1e-6);
    be->iface.add(be->ctx, gb, ub, 2);
    tu_read(be, gb, o, sizeof o);
    CHECK(o[0] == 3.0f && o[1] == 1.0f);
    float src[6] = {1, 2, 3, 4, 5, 6};
    struct lp_buf *sb = tu_buf(be, src, sizeof src), *db = tu_buf(be, NULL, 4 * sizeof(float));
    int32_t rows[2] = {2, 0};
    be->iface.gather_rows(be->ctx, db, sb, rows, 2, 2);
    float d[4];
    tu_read(be, db, d, sizeof d);
    CHECK(d[0] == 5 && d[1] == 6 && d[2] == 1 && d[3] == 2);
    // Out-of-range buffer access is refused.
    CHECK(be->iface.buf_read(be->ctx, db, 8, d, 9, err) == LP_ERR_INVALID_ARG);
    CHECK(be->iface.buf_write(be->ctx, db, SIZE_MAX, d, 2, err) == LP_ERR_INVALID_ARG);
    for (struct lp_buf **b = (struct lp_buf *[]){gb, ub, ob, sb, db, NULL}; *b; b++) tu_free(be, *b);
}

int main(void) {
    CHECK_OK(lp_backend_ref_create(&be, err), err);
    if (!be) return lp_test_finish("backend/ref");
    CHECK(strcmp(lp_backend_name(be), "ref") == 0 && lp_backend_n_threads(be) == 1);
    test_convert();
    test_matmul_2x4();
    test_mlx_decode();
    test_ggml();
    test_rmsnorm();
    test_rope();
    test_attention();
    test_kv_bf16();
    test_elementwise();
    tu_test_argmax(be);
    lp_backend_destroy(be);
    return lp_test_finish("backend/ref");
}
