// SPDX-License-Identifier: MIT
// test_cpu.c -- every CPU kernel against the ref backend on random data
// (fixed seed), for the AVX-512 kernels (1, 2 and 3 threads), the portable
// ones (forced, 1 and 2 threads) and int8 activations (1 and 3 threads):
// every weight format, MLX bits 4/8, groups 32/64/128, bf16 and f16 scales
// (half of them negative), n = 1, 3, 17, 96, 100, 129 tokens (full and
// partial 4-token tiles), row counts that are not multiples of the 4-row
// tile or the row chunk, and float-format column counts that are not
// multiples of 16; GGUF Q4_0, Q8_0, Q4_K, Q5_K and Q6_K blocks (quantized
// rows and random bytes; the VNNI digits path and the generic one). Batch
// invariance (issue 13): every row of an n-row call is memcmp-equal to the
// row computed alone, for every format and path (test_batch_invariance).
// argmax_rows (split over the pool) on crafted rows: exactly the sampler's loop.
// Tolerances (relative L2 error ||cpu - ref|| / ||ref||):
//   float paths (matmul, embed, norms, rope, attention):   <= 1e-5
//     (float summation order and fused multiply-adds only)
//   quantize_activations (MLX 8-bit and GGUF blocks, int8 activations): <= 1e-2
//     (measured on these random inputs: worst 6.9e-3; printed)
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "backend/cpu/internal.h"
#include "backend_test_util.h"

#define TOL_FLOAT 1e-5
#define TOL_QUANT 1e-2

static struct lp_error err_storage;
static struct lp_error *err = &err_storage;

struct variant {
    const char *name;
    int n_threads;
    bool generic;
    bool quantize;
    struct lp_backend *be;
};

static struct variant variants[] = {
    {"avx512 t1", 1, false, false, NULL}, {"avx512 t2", 2, false, false, NULL},
    {"avx512 t3", 3, false, false, NULL}, {"generic t2", 2, true, false, NULL},
    {"quant t3", 3, false, true, NULL},   {"generic t1", 1, true, false, NULL},
    {"quant t1", 1, false, true, NULL},
};
#define N_VARIANTS (int)(sizeof variants / sizeof variants[0])

static struct lp_backend *ref;
static double worst_quant;

static const enum lp_ggml_type ggml_types[] = {LP_GGML_Q4_0, LP_GGML_Q8_0, LP_GGML_Q4_K,
                                               LP_GGML_Q5_K, LP_GGML_Q6_K};
#define N_GGML (int)(sizeof ggml_types / sizeof ggml_types[0])

// out = x @ w^T on backend be.
static void run_matmul(struct lp_backend *be, const struct lp_weight *w, const float *x, int n,
                       float *out) {
    struct lp_bweight *bw = NULL;
    CHECK_OK(be->iface.weight_upload(be->ctx, w, &bw, err), err);
    if (!bw) return;
    struct lp_buf *xb = tu_buf(be, x, (size_t)n * w->cols * 4);
    struct lp_buf *ob = tu_buf(be, NULL, (size_t)n * w->rows * 4);
    be->iface.matmul(be->ctx, ob, xb, bw, n);
    tu_read(be, ob, out, (size_t)n * w->rows * 4);
    // embed of a few rows (ids include an out-of-range one -> zeros)
    int32_t ids[3] = {0, (int32_t)w->rows - 1, (int32_t)w->rows};
    struct lp_buf *eb = tu_buf(be, NULL, 3 * (size_t)w->cols * 4);
    be->iface.embed(be->ctx, eb, bw, ids, 3);
    float *e = malloc(3 * (size_t)w->cols * 4);
    tu_read(be, eb, e, 3 * (size_t)w->cols * 4);
    // Stash the embed result after the matmul output (the caller sized it).
    memcpy(out + (int64_t)n * w->rows, e, 3 * (size_t)w->cols * 4);
    free(e);
    tu_free(be, xb);
    tu_free(be, ob);
    tu_free(be, eb);
    be->iface.weight_free(be->ctx, bw);
}

// Whether quantize_activations changes w's kernel: MLX 8-bit, and GGUF
// blocks on the VNNI path (columns a multiple of 256).
static bool quant_path(const struct lp_weight *w) {
    return (w->format == LP_WEIGHT_MLX_AFFINE && w->bits == 8) ||
           (w->format == LP_WEIGHT_GGML && w->cols % 256 == 0);
}

static void check_matmul(struct lp_weight w, const char *what) {
    static const int ns[6] = {1, 3, 17, 96, 100, 129};
    for (int in = 0; in < 6; in++) {
        int n = ns[in];
        float *x = tu_randv((int64_t)n * w.cols, 1.0f);
        size_t out_n = (size_t)n * w.rows + 3 * (size_t)w.cols;
        float *want = malloc(out_n * 4), *got = malloc(out_n * 4);
        run_matmul(ref, &w, x, n, want);
        for (int v = 0; v < N_VARIANTS; v++) {
            memset(got, 0, out_n * 4);
            run_matmul(variants[v].be, &w, x, n, got);
            double e = tu_rel_l2(got, want, (int64_t)n * w.rows);
            double e_emb = tu_rel_l2(got + (int64_t)n * w.rows, want + (int64_t)n * w.rows,
                                     3 * w.cols);
            bool quant = variants[v].quantize && quant_path(&w);
            double tol = quant ? TOL_QUANT : TOL_FLOAT;
            if (quant && e > worst_quant) worst_quant = e;
            CHECK_MSG(e <= tol, "matmul %s [%lld x %lld] n=%d on %s: rel L2 %.3g > %.0e", what,
                      (long long)w.rows, (long long)w.cols, n, variants[v].name, e, tol);
            CHECK_MSG(e_emb <= 1e-6, "embed %s on %s: rel L2 %.3g", what, variants[v].name, e_emb);
        }
        free(x);
        free(want);
        free(got);
    }
}

static void test_matmul(void) {
    char what[96];
    // Float formats, columns a multiple of 16 and not.
    static const enum lp_weight_format ff[3] = {LP_WEIGHT_F32, LP_WEIGHT_F16, LP_WEIGHT_BF16};
    static const char *fname[3] = {"f32", "f16", "bf16"};
    for (int f = 0; f < 3; f++) {
        for (int shape = 0; shape < 2; shape++) {
            int64_t rows = shape ? 150 : 37, cols = shape ? 256 : 100;
            struct lp_weight w = tu_weight(ff[f], rows, cols, 0, 0, LP_DTYPE_BF16);
            snprintf(what, sizeof what, "%s", fname[f]);
            check_matmul(w, what);
            tu_weight_free(&w);
        }
    }
    static const int gss[3] = {32, 64, 128};
    for (int bits = 4; bits <= 8; bits += 4) {
        for (int ig = 0; ig < 3; ig++) {
            for (int sd = 0; sd < 2; sd++) {
                enum lp_dtype sdt = sd ? LP_DTYPE_F16 : LP_DTYPE_BF16;
                int64_t rows = ig == 1 ? 150 : 37, cols = 384;
                struct lp_weight w = tu_weight(LP_WEIGHT_MLX_AFFINE, rows, cols, bits, gss[ig], sdt);
                snprintf(what, sizeof what, "mlx q%d g%d %s", bits, gss[ig], sd ? "f16" : "bf16");
                check_matmul(w, what);
                tu_weight_free(&w);
            }
        }
    }
    // GGUF blocks: quantized rows and random bytes; 768 columns (three
    // super-blocks, the VNNI path of every type), Q8_0 with 96 columns
    // (off it: the generic path on every variant).
    for (int i = 0; i < N_GGML; i++) {
        for (int shape = 0; shape < 2; shape++) {
            struct lp_weight w = tu_weight_ggml(ggml_types[i], shape ? 150 : 37, 768, shape == 0);
            snprintf(what, sizeof what, "ggml %s %s", lp_ggml_type_name(ggml_types[i]),
                     shape ? "bytes" : "quantized");
            check_matmul(w, what);
            tu_weight_free(&w);
        }
    }
    struct lp_weight w96 = tu_weight_ggml(LP_GGML_Q8_0, 37, 96, true);
    check_matmul(w96, "ggml Q8_0 96 columns");
    tu_weight_free(&w96);
    printf("quantize_activations: worst relative L2 error %.3g (tolerance %.0e)\n", worst_quant,
           TOL_QUANT);
    CHECK(worst_quant > 0.0); // the quantized path really ran
}

// Decode (n = 1) of MLX 8-bit weights with awkward activations: on AVX512-VNNI
// this runs the exact-digit kernel (x split into three int8 digits per group),
// which must stay within the float tolerance and give the same bits for any
// thread count. Cases: a group with one huge element among tiny ones, an
// all-zero group, groups of tiny (1e-30) values, and scales differing by 1e20
// between groups.
// bits 8 and 4; 4-bit with cols % 128 == 64 for groups 32/64 (a half-full last
// 128-column block).
static void test_decode_digits(int bits) {
    static const int gss[3] = {32, 64, 128};
    double worst = 0.0;
    for (int ig = 0; ig < 3; ig++) {
        for (int sd = 0; sd < 2; sd++) {
            int gs = gss[ig];
            int64_t rows = 41, cols = bits == 8 ? 512 : (gs == 128 ? 640 : 576);
            enum lp_dtype sdt = sd ? LP_DTYPE_F16 : LP_DTYPE_BF16;
            struct lp_weight w = tu_weight(LP_WEIGHT_MLX_AFFINE, rows, cols, bits, gs, sdt);
            size_t out_n = (size_t)rows + 3 * (size_t)cols;
            float *x = malloc((size_t)cols * 4), *want = malloc(out_n * 4);
            float *got[3] = {malloc(out_n * 4), malloc(out_n * 4), malloc(out_n * 4)};
            for (int kase = 0; kase < 4; kase++) {
                for (int64_t c = 0; c < cols; c++) {
                    int64_t g = c / gs;
                    float v = tu_f();
                    switch (kase) {
                    case 0: // wide range inside groups, a zero group, a tiny group
                        x[c] = g == 0   ? 0.0f
                               : g == 1 ? 1e-30f * v
                                        : (c % gs == 5 ? 1000.0f : 1e-3f * v);
                        break;
                    case 1: x[c] = 1e-30f * v; break;                  // only tiny values
                    case 2: x[c] = (g % 2 ? 1e-10f : 1e10f) * v; break; // scales 1e20 apart
                    default: x[c] = v; break;
                    }
                }
                run_matmul(ref, &w, x, 1, want);
                for (int v = 0; v < 3; v++) { // the avx512 t1, t2, t3 variants
                    run_matmul(variants[v].be, &w, x, 1, got[v]);
                    double e = tu_rel_l2(got[v], want, rows);
                    if (e > worst) worst = e;
                    CHECK_MSG(e <= TOL_FLOAT, "decode digits q%d g%d %s case %d on %s: rel L2 %.3g",
                              bits, gs, sd ? "f16" : "bf16", kase, variants[v].name, e);
                    CHECK_MSG(memcmp(got[v], got[0], (size_t)rows * 4) == 0,
                              "decode digits q%d g%d case %d: %s differs from %s", bits, gs, kase,
                              variants[v].name, variants[0].name);
                }
            }
            // An all-zero x gives exactly zero.
            memset(x, 0, (size_t)cols * 4);
            run_matmul(variants[1].be, &w, x, 1, got[1]);
            for (int64_t r = 0; r < rows; r++)
                CHECK_MSG(got[1][r] == 0.0f, "decode digits q%d g%d: zero x gives %g", bits, gs,
                          got[1][r]);
            free(x);
            free(want);
            for (int v = 0; v < 3; v++) free(got[v]);
            tu_weight_free(&w);
        }
    }
    printf("decode (n=1) MLX q%d, awkward activations: worst relative L2 error %.3g\n", bits,
           worst);
}

// Decode (n = 1) of GGUF Q8_0 / Q4_K / Q6_K (the VNNI digits path where
// present; the others the generic one) with the awkward activations of
// test_decode_digits, per 32-column group: within the float tolerance, the
// same bits on 1, 2 and 3 threads, and an all-zero x gives exactly zero.
static void test_decode_ggml(void) {
    double worst = 0.0;
    for (int i = 0; i < N_GGML; i++) {
        const int64_t rows = 41, cols = 512;
        struct lp_weight w = tu_weight_ggml(ggml_types[i], rows, cols, false);
        size_t out_n = (size_t)rows + 3 * (size_t)cols;
        float *x = malloc((size_t)cols * 4), *want = malloc(out_n * 4);
        float *got[3] = {malloc(out_n * 4), malloc(out_n * 4), malloc(out_n * 4)};
        for (int kase = 0; kase < 4; kase++) {
            for (int64_t c = 0; c < cols; c++) {
                int64_t g = c / 32;
                float v = tu_f();
                x[c] = kase == 0   ? (g == 0 ? 0.0f : g == 1 ? 1e-30f * v : (c % 32 == 5 ? 1000.0f : 1e-3f * v))
                       : kase == 1 ? 1e-30f * v
                       : kase == 2 ? (g % 2 ? 1e-10f : 1e10f) * v
                                   : v;
            }
            run_matmul(ref, &w, x, 1, want);
            for (int v = 0; v < 3; v++) {
                run_matmul(variants[v].be, &w, x, 1, got[v]);
                double e = tu_rel_l2(got[v], want, rows);
                if (e > worst) worst = e;
                CHECK_MSG(e <= TOL_FLOAT, "decode ggml %s case %d on %s: rel L2 %.3g",
                          lp_ggml_type_name(ggml_types[i]), kase, variants[v].name, e);
                CHECK_MSG(memcmp(got[v], got[0], (size_t)rows * 4) == 0,
                          "decode ggml %s case %d: %s differs from %s",
                          lp_ggml_type_name(ggml_types[i]), kase, variants[v].name,
                          variants[0].name);
            }
        }
        memset(x, 0, (size_t)cols * 4);
        run_matmul(variants[1].be, &w, x, 1, got[1]);
        for (int64_t r = 0; r < rows; r++)
            CHECK_MSG(got[1][r] == 0.0f, "decode ggml %s: zero x gives %g",
                      lp_ggml_type_name(ggml_types[i]), got[1][r]);
        free(x);
        free(want);
        for (int v = 0; v < 3; v++) free(got[v]);
        tu_weight_free(&w);
    }
    printf("decode (n=1) GGUF blocks, awkward activations: worst relative L2 error %.3g\n", worst);
}

// Batch invariance (issue 13): row i of a call on n rows is bit-identical
// (memcmp) to the same row computed alone (n = 1), for every weight format,
// n = 1 .. 100 and 1, 2 or 3 threads; and the whole batch stays within the
// float tolerance of ref. Each kernel family is compared with itself: the
// AVX-512 kernels (t1, t2, t3), the portable ones (t1, t2), and the int8
// quantize_activations path (t1, t3), which is batch invariant too (its
// rounding of x is per token) though not exact. Shapes: row counts that are
// not multiples of the 4-row tile or the row chunk; float columns that are
// not a multiple of 16; MLX groups 32/64/128, 4-bit with a half-full last
// 128-column block, groups of 32 with 352 columns (off the digits path);
// and 16384 columns, where the 100 tokens do not fit the
// scratch in one pass (token chunks) and row blocks hold 4 rows.
static void check_invariance(struct lp_weight w, const char *what) {
    static const int ns[10] = {1, 2, 3, 5, 16, 31, 32, 33, 64, 100};
    static const int fam[3][4] = {{0, 1, 2, -1}, {5, 3, -1, -1}, {6, 4, -1, -1}};
    const int n_max = 100;
    float *x = tu_randv((int64_t)n_max * w.cols, 1.0f);
    size_t out_n = (size_t)n_max * w.rows + 3 * (size_t)w.cols; // run_matmul stashes embed too
    float *alone = malloc(out_n * 4), *got = malloc(out_n * 4), *want = malloc(out_n * 4);
    float *one = malloc(((size_t)w.rows + 3 * (size_t)w.cols) * 4);
    bool quant_fmt = quant_path(&w);
    for (int f = 0; f < 3; f++) {
        if (f == 2 && !quant_fmt) continue; // quantize_activations changes only these
        struct variant *v0 = &variants[fam[f][0]];
        for (int i = 0; i < n_max; i++) { // each row alone on the family's first variant
            run_matmul(v0->be, &w, x + (int64_t)i * w.cols, 1, one);
            memcpy(alone + (int64_t)i * w.rows, one, (size_t)w.rows * 4);
        }
        for (int in = 0; in < 10; in++) {
            int n = ns[in];
            if (f < 2) run_matmul(ref, &w, x, n, want);
            for (int k = 0; k < 4 && fam[f][k] >= 0; k++) {
                struct variant *v = &variants[fam[f][k]];
                run_matmul(v->be, &w, x, n, got);
                int bad = -1;
                for (int i = 0; i < n && bad < 0; i++)
                    if (memcmp(got + (int64_t)i * w.rows, alone + (int64_t)i * w.rows,
                               (size_t)w.rows * 4) != 0)
                        bad = i;
                CHECK_MSG(bad < 0, "batch invariance %s [%lld x %lld] n=%d on %s: row %d differs "
                                   "from the row alone on %s",
                          what, (long long)w.rows, (long long)w.cols, n, v->name, bad, v0->name);
                if (f == 2) continue;
                double e = tu_rel_l2(got, want, (int64_t)n * w.rows);
                CHECK_MSG(e <= TOL_FLOAT, "matmul %s [%lld x %lld] n=%d on %s: rel L2 %.3g > %.0e",
                          what, (long long)w.rows, (long long)w.cols, n, v->name, e, TOL_FLOAT);
            }
        }
    }
    free(x);
    free(alone);
    free(got);
    free(want);
    free(one);
}

static void test_batch_invariance(void) {
    char what[96];
    static const enum lp_weight_format ff[3] = {LP_WEIGHT_F32, LP_WEIGHT_F16, LP_WEIGHT_BF16};
    static const char *fname[3] = {"f32", "f16", "bf16"};
    for (int f = 0; f < 3; f++) {
        for (int shape = 0; shape < 2; shape++) {
            struct lp_weight w = tu_weight(ff[f], shape ? 150 : 37, shape ? 256 : 100, 0, 0,
                                           LP_DTYPE_BF16);
            check_invariance(w, fname[f]);
            tu_weight_free(&w);
        }
    }
    static const int gss[3] = {32, 64, 128};
    for (int bits = 4; bits <= 8; bits += 4) {
        for (int ig = 0; ig < 3; ig++) {
            int gs = gss[ig];
            // 4-bit: cols % 128 == 64 where the group allows it
            int64_t cols = bits == 8 ? 384 : (gs == 128 ? 640 : 576);
            enum lp_dtype sdt = ig == 1 ? LP_DTYPE_F16 : LP_DTYPE_BF16;
            struct lp_weight w = tu_weight(LP_WEIGHT_MLX_AFFINE, ig == 1 ? 150 : 37, cols, bits,
                                           gs, sdt);
            snprintf(what, sizeof what, "mlx q%d g%d", bits, gs);
            check_invariance(w, what);
            tu_weight_free(&w);
        }
        // Groups of 32 with columns not a multiple of 64 (the tile path on VNNI too).
        struct lp_weight w32 = tu_weight(LP_WEIGHT_MLX_AFFINE, 37, 352, bits, 32, LP_DTYPE_BF16);
        snprintf(what, sizeof what, "mlx q%d g32 352 columns", bits);
        check_invariance(w32, what);
        tu_weight_free(&w32);
        struct lp_weight w = tu_weight(LP_WEIGHT_MLX_AFFINE, 9, 16384, bits, 64, LP_DTYPE_BF16);
        snprintf(what, sizeof what, "mlx q%d g64 (token chunks)", bits);
        check_invariance(w, what);
        tu_weight_free(&w);
    }
    // GGUF blocks: every type at 512 columns (37 rows), random bytes; Q4_K
    // and Q8_0 with 16384 columns (token chunks; 4-row blocks) and Q6_K
    // with 150 rows.
    for (int i = 0; i < N_GGML; i++) {
        struct lp_weight w = tu_weight_ggml(ggml_types[i], 37, 512, false);
        snprintf(what, sizeof what, "ggml %s", lp_ggml_type_name(ggml_types[i]));
        check_invariance(w, what);
        tu_weight_free(&w);
    }
    static const enum lp_ggml_type big[3] = {LP_GGML_Q4_K, LP_GGML_Q8_0, LP_GGML_Q6_K};
    for (int i = 0; i < 3; i++) {
        bool wide = i < 2;
        struct lp_weight w = tu_weight_ggml(big[i], wide ? 9 : 150, wide ? 16384 : 256, true);
        snprintf(what, sizeof what, "ggml %s %s", lp_ggml_type_name(big[i]),
                 wide ? "(token chunks)" : "150 rows");
        check_invariance(w, what);
        tu_weight_free(&w);
    }
}

// Applies the same row-wise ops on ref and each variant and compares.
static void test_rowwise(void) {
    int n = 9, dim = 320, n_heads = 5, hd = 64;
    float *x = tu_randv((int64_t)n * dim, 2.0f), *w = tu_randv(dim, 1.0f);
    int32_t pos[9] = {0, 1, 2, 100, 1000, 4097, 40000, 7, 3};
    int64_t big = 50000; // above the element-wise parallel threshold
    float *a = tu_randv(big, 6.0f), *b = tu_randv(big, 3.0f);
    float *want = malloc((size_t)big * 4), *got = malloc((size_t)big * 4);
    for (int v = -1; v < N_VARIANTS; v++) {
        struct lp_backend *be = v < 0 ? ref : variants[v].be;
        float *o = v < 0 ? want : got;
        const char *name = v < 0 ? "ref" : variants[v].name;
        struct lp_buf *xb = tu_buf(be, x, (size_t)n * dim * 4), *wb = tu_buf(be, w, (size_t)dim * 4);
        struct lp_buf *ab = tu_buf(be, a, (size_t)big * 4), *bb = tu_buf(be, b, (size_t)big * 4);
        struct lp_buf *ob = tu_buf(be, NULL, (size_t)big * 4);
        float res[4][9 * 320];
        be->iface.rmsnorm(be->ctx, ob, xb, wb, n, dim, 1e-6f);
        tu_read(be, ob, res[0], (size_t)n * dim * 4);
        be->iface.rope(be->ctx, xb, pos, n, n_heads, hd, 1e6f);
        tu_read(be, xb, res[1], (size_t)n * dim * 4);
        int32_t rows[3] = {8, 0, 4};
        be->iface.gather_rows(be->ctx, ob, xb, rows, 3, dim);
        tu_read(be, ob, res[2], (size_t)3 * dim * 4);
        be->iface.silu_mul(be->ctx, ob, ab, bb, big);
        be->iface.add(be->ctx, ob, bb, big);
        tu_read(be, ob, o, (size_t)big * 4);
        static float ref_res[4][9 * 320];
        if (v < 0) {
            memcpy(ref_res, res, sizeof ref_res);
        } else {
            double e0 = tu_rel_l2(res[0], ref_res[0], (int64_t)n * dim);
            double e1 = tu_rel_l2(res[1], ref_res[1], (int64_t)n * dim);
            double e2 = tu_rel_l2(res[2], ref_res[2], (int64_t)3 * dim);
            double e3 = tu_rel_l2(got, want, big);
            CHECK_MSG(e0 <= TOL_FLOAT, "rmsnorm on %s: %.3g", name, e0);
            CHECK_MSG(e1 <= TOL_FLOAT, "rope on %s: %.3g", name, e1);
            CHECK_MSG(e2 == 0.0, "gather_rows on %s: %.3g", name, e2);
            CHECK_MSG(e3 <= TOL_FLOAT, "silu_mul + add on %s: %.3g", name, e3);
        }
        for (struct lp_buf **p = (struct lp_buf *[]){xb, wb, ab, bb, ob, NULL}; *p; p++)
            tu_free(be, *p);
    }
    free(x);
    free(w);
    free(a);
    free(b);
    free(want);
    free(got);
}

// kv_store + attention: three segments (decode, prefill chunk after a cached
// prefix, fresh prefill) with shuffled block tables, GQA 8:2, both cache dtypes,
// head_dim 64 and 320 (the latter crosses the 256-wide accumulator slice).
static void test_attention(enum lp_dtype dt, int hd) {
    int n_heads = hd > 256 ? 4 : 8, n_kv = 2, bs = 16, n_blocks = 24;
    struct lp_kv_geom g = {.n_blocks = n_blocks, .block_size = bs, .n_kv_heads = n_kv,
                           .head_dim = hd, .dtype = dt};
    int64_t row = (int64_t)n_kv * hd, n_slots = (int64_t)n_blocks * bs;
    // Fill every slot of the cache with random K/V through kv_store.
    float *k = tu_randv(n_slots * row, 1.0f), *v = tu_randv(n_slots * row, 1.0f);
    int32_t *slot = malloc((size_t)n_slots * 4);
    for (int64_t i = 0; i < n_slots; i++) slot[i] = (int32_t)((i * 7) % n_slots);
    int32_t bt0[8] = {5, 3, 17, 0, 9, 11, 2, 23}, bt1[6] = {1, 4, 6, 8, 10, 12},
            bt2[3] = {13, 14, 15};
    struct lp_attn_seg segs[3] = {
        {.n_tokens = 1, .pos0 = 120, .block_table = bt0, .n_blocks = 8},
        {.n_tokens = 7, .pos0 = 80, .block_table = bt1, .n_blocks = 6},
        {.n_tokens = 5, .pos0 = 0, .block_table = bt2, .n_blocks = 3},
    };
    int n = 13;
    float *q = tu_randv((int64_t)n * n_heads * hd, 0.5f);
    size_t out_bytes = (size_t)n * n_heads * hd * 4;
    float *want = malloc(out_bytes), *got = malloc(out_bytes);
    size_t cache_bytes = (size_t)(n_slots * row) * (dt == LP_DTYPE_BF16 ? 2 : 4);
    void *want_k = malloc(cache_bytes), *want_v = malloc(cache_bytes);
    for (int vi = -1; vi < N_VARIANTS; vi++) {
        struct lp_backend *be = vi < 0 ? ref : variants[vi].be;
        size_t es = dt == LP_DTYPE_BF16 ? 2 : 4;
        struct lp_buf *kc = tu_buf(be, NULL, (size_t)(n_slots * row) * es);
        struct lp_buf *vc = tu_buf(be, NULL, (size_t)(n_slots * row) * es);
        struct lp_buf *kb = tu_buf(be, k, (size_t)(n_slots * row) * 4);
        struct lp_buf *vb = tu_buf(be, v, (size_t)(n_slots * row) * 4);
        struct lp_buf *qb = tu_buf(be, q, out_bytes), *ob = tu_buf(be, NULL, out_bytes);
        be->iface.kv_store(be->ctx, kc, vc, &g, kb, vb, slot, (int)n_slots);
        be->iface.attention(be->ctx, ob, qb, kc, vc, &g, n_heads, segs, 3);
        tu_read(be, ob, vi < 0 ? want : got, out_bytes);
        if (vi >= 0) {
            double e = tu_rel_l2(got, want, (int64_t)(out_bytes / 4));
            CHECK_MSG(e <= TOL_FLOAT, "attention %s hd %d on %s: rel L2 %.3g",
                      dt == LP_DTYPE_BF16 ? "bf16" : "f32", hd, variants[vi].name, e);
            // The caches must be bit-identical to ref's.
            void *c = malloc(cache_bytes);
            tu_read(be, kc, c, cache_bytes);
            CHECK_MSG(memcmp(c, want_k, cache_bytes) == 0, "kv_store on %s", variants[vi].name);
            tu_read(be, vc, c, cache_bytes);
            CHECK_MSG(memcmp(c, want_v, cache_bytes) == 0, "kv_store on %s", variants[vi].name);
            free(c);
        } else {
            tu_read(be, kc, want_k, cache_bytes);
            tu_read(be, vc, want_v, cache_bytes);
        }
        for (struct lp_buf **p = (struct lp_buf *[]){kc, vc, kb, vb, qb, ob, NULL}; *p; p++)
            tu_free(be, *p);
    }
    free(k);
    free(v);
    free(slot);
    free(q);
    free(want);
    free(got);
    free(want_k);
    free(want_v);
}

// Many small dispatches, some after the workers fell asleep, must all complete.
// Each slice of a pool task runs exactly once (by its worker, or by the
// caller when no worker claimed it first), with its own index.
struct pool_count {
    _Atomic int runs[4];
    _Atomic int bad;
};

static void pool_count_fn(void *arg, int i_thread, int n_threads) {
    struct pool_count *c = arg;
    if (i_thread < 0 || i_thread >= n_threads || n_threads != 4) atomic_fetch_add(&c->bad, 1);
    else atomic_fetch_add(&c->runs[i_thread], 1);
}

static void test_pool_slices(void) {
    struct lp_cpu_pool *pool = NULL;
    CHECK_OK(lp_cpu_pool_create(&pool, 4, err), err);
    if (!pool) return;
    struct pool_count c = {0};
    int wrong = 0;
    for (int task = 0; task < 20000; task++) {
        if (task % 2000 == 1999) usleep(1000); // let the workers sleep
        for (int i = 0; i < 4; i++) atomic_store(&c.runs[i], 0);
        lp_cpu_pool_run(pool, pool_count_fn, &c);
        for (int i = 0; i < 4; i++) wrong += atomic_load(&c.runs[i]) != 1;
    }
    CHECK_MSG(wrong == 0 && atomic_load(&c.bad) == 0, "pool: %d slices not run exactly once", wrong);
    lp_cpu_pool_destroy(pool);
}

static void test_pool(void) {
    struct lp_backend *be = variants[2].be; // 3 threads
    struct lp_weight w = tu_weight(LP_WEIGHT_F32, 64, 32, 0, 0, LP_DTYPE_BF16);
    float *x = tu_randv(32, 1.0f), want[64], got[64 + 96];
    run_matmul(ref, &w, x, 1, got);
    memcpy(want, got, sizeof want);
    struct lp_bweight *bw = NULL;
    CHECK_OK(be->iface.weight_upload(be->ctx, &w, &bw, err), err);
    struct lp_buf *xb = tu_buf(be, x, 32 * 4), *ob = tu_buf(be, NULL, 64 * 4);
    int bad = 0;
    for (int i = 0; i < 300; i++) {
        if (i % 50 == 49) usleep(2000); // let the workers go to sleep
        be->iface.matmul(be->ctx, ob, xb, bw, 1);
        tu_read(be, ob, got, 64 * 4);
        if (tu_rel_l2(got, want, 64) > TOL_FLOAT) bad++;
    }
    CHECK(bad == 0);
    tu_free(be, xb);
    tu_free(be, ob);
    be->iface.weight_free(be->ctx, bw);
    free(x);
    tu_weight_free(&w);
}

int main(void) {
    CHECK_OK(lp_backend_ref_create(&ref, err), err);
    for (int v = 0; v < N_VARIANTS; v++) {
        struct lp_backend_cpu_params p = lp_backend_cpu_params_default();
        p.n_threads = variants[v].n_threads;
        p.quantize_activations = variants[v].quantize;
        CHECK_OK(lp_cpu_backend_create_ex(&variants[v].be, &p, variants[v].generic, err), err);
        if (!variants[v].be) return lp_test_finish("backend/cpu");
        CHECK(lp_backend_n_threads(variants[v].be) == variants[v].n_threads);
    }
    struct lp_cpu_ctx *c0 = variants[0].be->ctx;
    if (c0->isa != LP_CPU_ISA_AVX512) printf("note: no AVX-512 here; all variants run portable C\n");
    if (!c0->vnni) printf("note: no AVX512-VNNI here; quantize_activations is a no-op\n");
    test_matmul();
    test_decode_digits(8);
    test_decode_digits(4);
    test_decode_ggml();
    test_batch_invariance();
    test_rowwise();
    test_attention(LP_DTYPE_F32, 64);
    test_attention(LP_DTYPE_BF16, 64);
    test_attention(LP_DTYPE_BF16, 320);
    test_pool();
    test_pool_slices();
    for (int v = 0; v < N_VARIANTS; v++) tu_test_argmax(variants[v].be);
    struct lp_backend *dflt = NULL;
    CHECK_OK(lp_backend_cpu_create(&dflt, NULL, err), err);
    CHECK(dflt && lp_backend_n_threads(dflt) >= 1 && strcmp(lp_backend_name(dflt), "cpu") == 0);
    lp_backend_destroy(dflt);
    for (int v = 0; v < N_VARIANTS; v++) lp_backend_destroy(variants[v].be);
    lp_backend_destroy(ref);
    return lp_test_finish("backend/cpu");
}
