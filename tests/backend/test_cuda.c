// SPDX-License-Identifier: MIT
// test_cuda.c -- every CUDA kernel against the ref backend on random data
// (fixed seed), then the whole engine on CUDA against the CPU backend on a
// generated model (prefill, recorded and replayed decode steps, a batch of
// sequences decoded together against each alone; greedy ids, recorded and
// replayed too, against the argmax of the same steps' rows). Without a GPU (or in a
// build without CUDA) it prints why it skips and passes.
// Cases: every weight format, MLX bits 4/8, groups 32/64/128, bf16 and f16
// scales, n = 1, 3, 17, 96, 129 tokens (all three product kernels), float columns not a multiple of the
// 16-byte chunk (the element-wise path); rmsnorm, rope up to position 40000,
// gather, silu_mul + add; argmax_rows on crafted rows (NaN, infinities,
// ties; exactly the sampler's loop); kv_store + attention over three segments with
// shuffled block tables, GQA, f32 and bf16 caches, head_dim 64 and 320 (the
// tiled kernel and the general one), 128 and 16 over long contexts.
// Tolerances (relative L2 error ||cuda - ref|| / ||ref||):
//   kernels: <= 1e-5 (the tensor-core products split x into two bf16
//   halves: ~2e-6; float kernels differ by summation order only); embed and
//   gather exact to 1e-6; the KV cache bit-identical to ref's
//   engine, CUDA vs CPU logits per row: <= 1e-4
//   batch invariance (matmul rows, engine decode): bit-identical (memcmp)
//   fused slots (matmul_multi, matmul_add, matmul_swiglu, qk_norm_rope_store) against the steps
//   they stand for: bit-identical; so are the steps the backend folds into
//   the next call (an rmsnorm into the product reading it, a decode batch's
//   qk step into attention) against the same calls made apart
#include <stdio.h>
#include <string.h>

#include "backend_test_util.h"
#include "layerpipe/engine.h"
#include "model_fixture.h"

#define TOL_FLOAT 1e-5
#define TOL_ENGINE 1e-4

static struct lp_error err_storage;
static struct lp_error *err = &err_storage;
static struct lp_backend *ref, *gpu;

// out[n * rows] = x @ w^T, then the embed of rows {0, rows - 1, rows} after it.
static void run_matmul(struct lp_backend *be, const struct lp_weight *w, const float *x, int n,
                       float *out) {
    struct lp_bweight *bw = NULL;
    CHECK_OK(be->iface.weight_upload(be->ctx, w, &bw, err), err);
    if (!bw) return;
    struct lp_buf *xb = tu_buf(be, x, (size_t)n * w->cols * 4);
    struct lp_buf *ob = tu_buf(be, NULL, (size_t)n * w->rows * 4);
    be->iface.matmul(be->ctx, ob, xb, bw, n);
    tu_read(be, ob, out, (size_t)n * w->rows * 4);
    int32_t ids[3] = {0, (int32_t)w->rows - 1, (int32_t)w->rows};
    struct lp_buf *eb = tu_buf(be, NULL, 3 * (size_t)w->cols * 4);
    be->iface.embed(be->ctx, eb, bw, ids, 3);
    tu_read(be, eb, out + (int64_t)n * w->rows, 3 * (size_t)w->cols * 4);
    if (be->iface.sync) CHECK_OK(be->iface.sync(be->ctx, err), err);
    tu_free(be, xb);
    tu_free(be, ob);
    tu_free(be, eb);
    be->iface.weight_free(be->ctx, bw);
}

static void check_matmul(struct lp_weight w, const char *what) {
    static const int ns[5] = {1, 3, 17, 96, 129};
    for (int in = 0; in < 5; in++) {
        int n = ns[in];
        float *x = tu_randv((int64_t)n * w.cols, 1.0f);
        size_t out_n = (size_t)n * w.rows + 3 * (size_t)w.cols;
        float *want = malloc(out_n * 4), *got = malloc(out_n * 4);
        run_matmul(ref, &w, x, n, want);
        for (size_t i = 0; i < out_n; i++)
            got[i] = NAN; // every element must be written
        run_matmul(gpu, &w, x, n, got);
        double e = tu_rel_l2(got, want, (int64_t)n * w.rows);
        double e_emb = tu_rel_l2(got + (int64_t)n * w.rows, want + (int64_t)n * w.rows, 3 * w.cols);
        CHECK_MSG(e <= TOL_FLOAT, "matmul %s [%lld x %lld] n=%d: rel L2 %.3g > %.0e", what,
                  (long long)w.rows, (long long)w.cols, n, e, TOL_FLOAT);
        CHECK_MSG(e_emb <= 1e-6, "embed %s: rel L2 %.3g", what, e_emb);
        free(x);
        free(want);
        free(got);
    }
}

static void test_matmul(void) {
    char what[96];
    static const enum lp_weight_format ff[3] = {LP_WEIGHT_F32, LP_WEIGHT_F16, LP_WEIGHT_BF16};
    static const char *fname[3] = {"f32", "f16", "bf16"};
    for (int f = 0; f < 3; f++) {
        for (int shape = 0; shape < 3; shape++) {
            // 100 columns: bf16/f16 take the element-wise path; 102: f32 too
            int64_t rows = shape == 1 ? 150 : 37, cols = shape == 0 ? 100 : shape == 1 ? 256 : 102;
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
                int64_t rows = ig == 1 ? 150 : 37, cols = ig == 2 ? 640 : 384;
                struct lp_weight w =
                    tu_weight(LP_WEIGHT_MLX_AFFINE, rows, cols, bits, gss[ig], sdt);
                snprintf(what, sizeof what, "mlx q%d g%d %s", bits, gss[ig], sd ? "f16" : "bf16");
                check_matmul(w, what);
                tu_weight_free(&w);
            }
        }
    }
    // GGUF blocks (dequantized to float32 on upload): quantized rows and
    // random bytes, matmul and embed against the ref's element definition
    static const enum lp_ggml_type gt[5] = {LP_GGML_Q8_0, LP_GGML_Q4_0, LP_GGML_Q4_K,
                                            LP_GGML_Q5_K, LP_GGML_Q6_K};
    for (int t = 0; t < 5; t++)
        for (int quantized = 0; quantized < 2; quantized++) {
            struct lp_weight w = tu_weight_ggml(gt[t], 37, 512, quantized);
            snprintf(what, sizeof what, "gguf %s %s", lp_ggml_type_name(gt[t]),
                     quantized ? "quantized" : "random blocks");
            check_matmul(w, what);
            tu_weight_free(&w);
        }
}

// Row i of an n-row matmul is bit-identical to row i computed alone.
static void test_batch_invariance(void) {
    // the last three have 16 units or more (16 slices, and past 8 tokens
    // split over blocks where the tiles are few)
    struct lp_weight ws[6] = {
        tu_weight(LP_WEIGHT_BF16, 150, 256, 0, 0, LP_DTYPE_BF16),
        tu_weight(LP_WEIGHT_MLX_AFFINE, 150, 384, 8, 64, LP_DTYPE_BF16),
        tu_weight(LP_WEIGHT_MLX_AFFINE, 37, 640, 4, 32, LP_DTYPE_F16),
        tu_weight(LP_WEIGHT_BF16, 200, 1024, 0, 0, LP_DTYPE_BF16),
        tu_weight(LP_WEIGHT_MLX_AFFINE, 300, 1024, 8, 64, LP_DTYPE_BF16),
        tu_weight(LP_WEIGHT_MLX_AFFINE, 130, 2048, 4, 128, LP_DTYPE_F16),
    };
    static const int ns[8] = {2, 3, 8, 9, 16, 33, 65, 100};
    for (int k = 0; k < 6; k++) {
        struct lp_weight *w = &ws[k];
        int n_max = 100;
        float *x = tu_randv((int64_t)n_max * w->cols, 1.0f);
        float *alone = malloc((size_t)n_max * w->rows * 4);
        float *one = malloc(((size_t)w->rows + 3 * (size_t)w->cols) * 4);
        float *got = malloc(((size_t)n_max * w->rows + 3 * (size_t)w->cols) * 4);
        for (int i = 0; i < n_max; i++) {
            run_matmul(gpu, w, x + (int64_t)i * w->cols, 1, one);
            memcpy(alone + (int64_t)i * w->rows, one, (size_t)w->rows * 4);
        }
        for (int in = 0; in < 8; in++) {
            int n = ns[in], bad = -1;
            run_matmul(gpu, w, x, n, got);
            for (int i = 0; i < n && bad < 0; i++)
                if (memcmp(got + (int64_t)i * w->rows, alone + (int64_t)i * w->rows,
                           (size_t)w->rows * 4) != 0)
                    bad = i;
            CHECK_MSG(bad < 0, "batch invariance weight %d n=%d: row %d differs from alone", k, n,
                      bad);
        }
        free(x);
        free(alone);
        free(one);
        free(got);
        tu_weight_free(w);
    }
}

// The products' persistent grid (blocks looping over tiles, the default)
// gives the bits of one block a tile (LP_CUDA_NO_PERSIST=1, read when a
// backend is created), at batch sizes of every kernel and with matrices of
// more tiles than a GPU's multiprocessors hold, so that blocks loop there too;
// past 64 tokens the default splits a matrix of few tiles over blocks (the
// 300 x 640 one), which must give the bits of the unsplit tiles.
static void test_persistent_grid(void) {
    setenv("LP_CUDA_NO_PERSIST", "1", 1);
    struct lp_backend *flat = NULL;
    struct lp_backend_cuda_params cp = {.device = 0};
    CHECK_OK(lp_backend_cuda_create(&flat, &cp, err), err);
    unsetenv("LP_CUDA_NO_PERSIST");
    if (!flat) return;
    struct lp_weight ws[3] = {
        tu_weight(LP_WEIGHT_BF16, 4500, 128, 0, 0, LP_DTYPE_BF16),
        tu_weight(LP_WEIGHT_MLX_AFFINE, 4400, 256, 8, 64, LP_DTYPE_BF16),
        tu_weight(LP_WEIGHT_MLX_AFFINE, 300, 640, 4, 32, LP_DTYPE_F16),
    };
    static const int ns[4] = {1, 7, 40, 70};
    for (int k = 0; k < 3; k++) {
        struct lp_weight *w = &ws[k];
        for (int in = 0; in < 4; in++) {
            int n = ns[in];
            size_t floats = (size_t)n * w->rows + 3 * (size_t)w->cols;
            float *x = tu_randv((int64_t)n * w->cols, 1.0f);
            float *a = malloc(floats * 4), *b = malloc(floats * 4);
            run_matmul(gpu, w, x, n, a);
            run_matmul(flat, w, x, n, b);
            CHECK_MSG(memcmp(a, b, floats * 4) == 0,
                      "persistent grid: weight %d n=%d differs from one block a tile", k, n);
            free(x);
            free(a);
            free(b);
        }
        tu_weight_free(w);
    }
    lp_backend_destroy(flat);
}

// The fused slots give exactly the bits of the steps they stand for:
// matmul_multi = three matmuls, matmul_add = matmul + add, matmul_swiglu =
// two matmuls + silu_mul; on the 16-byte path and the element-wise one.
static void test_fused(void) {
    struct shape {
        enum lp_weight_format f;
        int bits, gs;
        int64_t cols;
    } shapes[5] = {{LP_WEIGHT_BF16, 0, 0, 256},
                   {LP_WEIGHT_MLX_AFFINE, 8, 64, 384},
                   {LP_WEIGHT_MLX_AFFINE, 4, 32, 640},
                   {LP_WEIGHT_BF16, 0, 0, 100},
                   {LP_WEIGHT_MLX_AFFINE, 8, 64, 1024}};
    static const int ns[4] = {1, 5, 40, 70};
    void *c = gpu->ctx;
    const struct lp_backend_i *be = &gpu->iface;
    CHECK(be->matmul_multi && be->matmul_add && be->matmul_swiglu);
    if (!be->matmul_multi || !be->matmul_add || !be->matmul_swiglu) return;
    for (int k = 0; k < 5; k++) {
        int64_t rows[3] = {70, 33, 33}, cols = shapes[k].cols;
        struct lp_weight w[3];
        struct lp_bweight *bw[3];
        for (int j = 0; j < 3; j++) {
            w[j] =
                tu_weight(shapes[k].f, rows[j], cols, shapes[k].bits, shapes[k].gs, LP_DTYPE_BF16);
            CHECK_OK(be->weight_upload(c, &w[j], &bw[j], err), err);
        }
        for (int in = 0; in < 4; in++) {
            int n = ns[in];
            size_t xb = (size_t)n * cols * 4, ob = (size_t)n * 70 * 4;
            float *x = tu_randv((int64_t)n * cols, 1.0f), *y0 = tu_randv((int64_t)n * 70, 1.0f);
            float *a = malloc(ob), *b = malloc(ob);
            struct lp_buf *xg = tu_buf(gpu, x, xb), *o[3], *p[3], *t1 = tu_buf(gpu, NULL, ob),
                          *t2 = tu_buf(gpu, NULL, ob);
            for (int j = 0; j < 3; j++) {
                o[j] = tu_buf(gpu, NULL, ob);
                p[j] = tu_buf(gpu, NULL, ob);
            }
            // three matmuls, one launch
            for (int j = 0; j < 3; j++)
                be->matmul(c, o[j], xg, bw[j], n);
            be->matmul_multi(c, p, xg, (const struct lp_bweight *const *)bw, 3, n);
            for (int j = 0; j < 3; j++) {
                size_t bytes = (size_t)n * rows[j] * 4;
                tu_read(gpu, o[j], a, bytes);
                tu_read(gpu, p[j], b, bytes);
                CHECK_MSG(memcmp(a, b, bytes) == 0, "matmul_multi shape %d n=%d matrix %d", k, n,
                          j);
            }
            // y += x W^T
            struct lp_buf *ya = tu_buf(gpu, y0, ob), *yb = tu_buf(gpu, y0, ob);
            be->matmul(c, t1, xg, bw[0], n);
            be->add(c, ya, t1, (int64_t)n * 70);
            be->matmul_add(c, yb, xg, bw[0], n);
            tu_read(gpu, ya, a, ob);
            tu_read(gpu, yb, b, ob);
            CHECK_MSG(memcmp(a, b, ob) == 0, "matmul_add shape %d n=%d", k, n);
            // silu(x Wg^T) * (x Wu^T) with the two 33-row matrices
            size_t sb = (size_t)n * 33 * 4;
            be->matmul(c, t1, xg, bw[1], n);
            be->matmul(c, t2, xg, bw[2], n);
            be->silu_mul(c, t1, t1, t2, (int64_t)n * 33);
            be->matmul_swiglu(c, ya, yb, xg, bw[1], bw[2], n);
            tu_read(gpu, t1, a, sb);
            tu_read(gpu, ya, b, sb);
            CHECK_MSG(memcmp(a, b, sb) == 0, "matmul_swiglu shape %d n=%d", k, n);
            CHECK_OK(be->sync(c, err), err);
            for (int j = 0; j < 3; j++) {
                tu_free(gpu, o[j]);
                tu_free(gpu, p[j]);
            }
            for (struct lp_buf **q = (struct lp_buf *[]){xg, t1, t2, ya, yb, NULL}; *q; q++)
                tu_free(gpu, *q);
            free(x);
            free(y0);
            free(a);
            free(b);
        }
        for (int j = 0; j < 3; j++) {
            be->weight_free(c, bw[j]);
            tu_weight_free(&w[j]);
        }
    }
}

// qk_norm_rope_store after a batch_setup (fused) equals the five separate
// steps (memcmp of q, k and both caches), f32 and bf16 caches.
static void test_fused_qk(enum lp_dtype dt) {
    int n = 6, n_heads = 8, n_kv = 2, hd = 64, bs = 4, n_blocks = 8;
    struct lp_kv_geom g = {
        .n_blocks = n_blocks, .block_size = bs, .n_kv_heads = n_kv, .head_dim = hd, .dtype = dt};
    void *c = gpu->ctx;
    const struct lp_backend_i *be = &gpu->iface;
    if (!be->qk_norm_rope_store || !be->batch_setup) return;
    size_t qb = (size_t)n * n_heads * hd * 4, kb = (size_t)n * n_kv * hd * 4;
    size_t cb = (size_t)n_blocks * bs * n_kv * hd * (dt == LP_DTYPE_BF16 ? 2 : 4);
    float *q = tu_randv((int64_t)n * n_heads * hd, 2.0f),
          *k = tu_randv((int64_t)n * n_kv * hd, 2.0f);
    float *v = tu_randv((int64_t)n * n_kv * hd, 1.0f), *qn = tu_randv(hd, 1.0f),
          *kn = tu_randv(hd, 1.0f);
    int32_t pos[6] = {3, 4, 5, 0, 1, 2}, slot[6] = {13, 14, 15, 20, 21, 22}, ids[6] = {0};
    int32_t bt0[4] = {1, 3, 2, 0}, bt1[1] = {5};
    struct lp_attn_seg segs[2] = {{.n_tokens = 3, .pos0 = 3, .block_table = bt0, .n_blocks = 4},
                                  {.n_tokens = 3, .pos0 = 0, .block_table = bt1, .n_blocks = 1}};
    void *res[2][4];
    for (int f = 0; f < 2; f++) {
        struct lp_buf *qg = tu_buf(gpu, q, qb), *kg = tu_buf(gpu, k, kb), *vg = tu_buf(gpu, v, kb);
        struct lp_buf *qng = tu_buf(gpu, qn, (size_t)hd * 4),
                      *kng = tu_buf(gpu, kn, (size_t)hd * 4);
        struct lp_buf *kc = tu_buf(gpu, NULL, cb), *vc = tu_buf(gpu, NULL, cb);
        if (f == 0) {
            be->rmsnorm(c, qg, qg, qng, n * n_heads, hd, 1e-6f);
            be->rmsnorm(c, kg, kg, kng, n * n_kv, hd, 1e-6f);
            be->rope(c, qg, pos, n, n_heads, hd, 1e6f);
            be->rope(c, kg, pos, n, n_kv, hd, 1e6f);
            be->kv_store(c, kc, vc, &g, kg, vg, slot, n);
        } else {
            struct lp_batch_index ix = {
                .n_tokens = n, .ids = ids, .pos = pos, .slot = slot, .n_segs = 2, .segs = segs};
            CHECK_OK(be->batch_setup(c, &ix, err), err);
            be->qk_norm_rope_store(c, qg, kg, vg, qng, kng, kc, vc, &g, pos, slot, n, n_heads,
                                   1e-6f, 1e6f);
        }
        size_t sizes[4] = {qb, kb, cb, cb};
        struct lp_buf *bufs[4] = {qg, kg, kc, vc};
        for (int j = 0; j < 4; j++) {
            res[f][j] = malloc(sizes[j]);
            tu_read(gpu, bufs[j], res[f][j], sizes[j]);
        }
        CHECK_OK(be->sync(c, err), err);
        for (struct lp_buf **p = (struct lp_buf *[]){qg, kg, vg, qng, kng, kc, vc, NULL}; *p; p++)
            tu_free(gpu, *p);
        if (f == 1)
            for (int j = 0; j < 4; j++)
                CHECK_MSG(memcmp(res[0][j], res[1][j], sizes[j]) == 0,
                          "qk_norm_rope_store %s: output %d differs from the separate steps",
                          lp_dtype_name(dt), j);
    }
    for (int f = 0; f < 2; f++)
        for (int j = 0; j < 4; j++)
            free(res[f][j]);
    free(q);
    free(k);
    free(v);
    free(qn);
    free(kn);
}

// A model-width rmsnorm is held back and folded into the product that reads
// its output (matmul, matmul_multi, matmul_swiglu): the outputs and the
// normalized rows equal the two steps made apart (a buf_read between them
// runs the rmsnorm first), bit for bit; bf16, MLX 8-bit and 4-bit.
static void test_fold_norm(void) {
    struct shape {
        enum lp_weight_format f;
        int bits, gs;
    } shapes[3] = {{LP_WEIGHT_BF16, 0, 0}, {LP_WEIGHT_MLX_AFFINE, 8, 64},
                   {LP_WEIGHT_MLX_AFFINE, 4, 128}};
    static const int ns[3] = {1, 5, 40};
    const int64_t cols = 1024, rows = 48;
    void *c = gpu->ctx;
    const struct lp_backend_i *be = &gpu->iface;
    for (int k = 0; k < 3; k++) {
        struct lp_weight w[3];
        struct lp_bweight *bw[3];
        for (int j = 0; j < 3; j++) {
            w[j] = tu_weight(shapes[k].f, rows, cols, shapes[k].bits, shapes[k].gs, LP_DTYPE_BF16);
            CHECK_OK(be->weight_upload(c, &w[j], &bw[j], err), err);
        }
        for (int in = 0; in < 3; in++) {
            int n = ns[in];
            size_t xb = (size_t)n * cols * 4, ob = (size_t)n * rows * 4;
            float *x = tu_randv((int64_t)n * cols, 3.0f), *nw = tu_randv(cols, 1.0f);
            float *res[2][5];
            for (int apart = 0; apart < 2; apart++) {
                struct lp_buf *xg = tu_buf(gpu, x, xb), *ng = tu_buf(gpu, nw, (size_t)cols * 4);
                struct lp_buf *xn = tu_buf(gpu, NULL, xb), *o[3], *t = tu_buf(gpu, NULL, ob);
                for (int j = 0; j < 3; j++)
                    o[j] = tu_buf(gpu, NULL, ob);
                float *peek = malloc(xb);
                res[apart][0] = malloc(xb);
                // rmsnorm, then the three products; each product's own rmsnorm
                for (int step = 0; step < 3; step++) {
                    be->rmsnorm(c, xn, xg, ng, n, (int)cols, 1e-6f);
                    if (apart) tu_read(gpu, xn, peek, xb);
                    if (step == 0) be->matmul_multi(c, o, xn, (const struct lp_bweight *const *)bw, 3, n);
                    if (step == 1) be->matmul_swiglu(c, t, o[2], xn, bw[0], bw[1], n);
                    if (step == 2) be->matmul(c, o[2], xn, bw[2], n);
                }
                tu_read(gpu, xn, res[apart][0], xb);
                struct lp_buf *outs[4] = {o[0], o[1], t, o[2]};
                for (int j = 0; j < 4; j++) {
                    res[apart][1 + j] = malloc(ob);
                    tu_read(gpu, outs[j], res[apart][1 + j], ob);
                }
                CHECK_OK(be->sync(c, err), err);
                for (int j = 0; j < 3; j++)
                    tu_free(gpu, o[j]);
                for (struct lp_buf **q = (struct lp_buf *[]){xg, ng, xn, t, NULL}; *q; q++)
                    tu_free(gpu, *q);
                free(peek);
            }
            static const char *what[5] = {"normalized rows", "multi q", "multi k", "swiglu",
                                          "matmul"};
            for (int j = 0; j < 5; j++) {
                CHECK_MSG(memcmp(res[0][j], res[1][j], j ? ob : xb) == 0,
                          "rmsnorm folded into the product, format %d n=%d: %s differ", k, n,
                          what[j]);
                free(res[0][j]);
                free(res[1][j]);
            }
            free(x);
            free(nw);
        }
        for (int j = 0; j < 3; j++) {
            be->weight_free(c, bw[j]);
            tu_weight_free(&w[j]);
        }
    }
}

// A decode batch's qk_norm_rope_store is folded into the attention after it:
// attention's output, q, k and both caches equal the steps made apart (a
// buf_read between them), bit for bit; f32 and bf16 caches, GQA 2 and 4.
static void test_fold_qk(enum lp_dtype dt, int hd, int n_heads) {
    int n = 3, n_kv = 2, bs = 16, n_blocks = 24;
    struct lp_kv_geom g = {
        .n_blocks = n_blocks, .block_size = bs, .n_kv_heads = n_kv, .head_dim = hd, .dtype = dt};
    void *c = gpu->ctx;
    const struct lp_backend_i *be = &gpu->iface;
    int64_t row = (int64_t)n_kv * hd, n_slots = (int64_t)n_blocks * bs;
    size_t es = dt == LP_DTYPE_BF16 ? 2 : 4, cb = (size_t)(n_slots * row) * es;
    size_t qb = (size_t)n * n_heads * hd * 4, kb = (size_t)n * row * 4;
    float *kv0 = tu_randv(n_slots * row, 1.0f), *q = tu_randv((int64_t)n * n_heads * hd, 2.0f);
    float *k = tu_randv((int64_t)n * row, 2.0f), *v = tu_randv((int64_t)n * row, 1.0f);
    float *qn = tu_randv(hd, 1.0f), *kn = tu_randv(hd, 1.0f);
    int32_t *all = malloc((size_t)n_slots * 4);
    for (int64_t i = 0; i < n_slots; i++)
        all[i] = (int32_t)i;
    // three sequences at positions 70, 5, 200 (tables of 5, 1 and 13 blocks,
    // disjoint: as in the engine, no sequence reads another's new rows)
    int32_t bt0[5] = {3, 9, 1, 20, 7}, bt1[1] = {11};
    int32_t bt2[13] = {0, 22, 4, 5, 6, 8, 10, 12, 13, 14, 23, 16, 17};
    int32_t pos[3] = {70, 5, 200}, ids[3] = {0, 0, 0};
    int32_t slot[3] = {bt0[70 / bs] * bs + 70 % bs, bt1[0] * bs + 5, bt2[200 / bs] * bs + 200 % bs};
    struct lp_attn_seg segs[3] = {{.n_tokens = 1, .pos0 = 70, .block_table = bt0, .n_blocks = 5},
                                  {.n_tokens = 1, .pos0 = 5, .block_table = bt1, .n_blocks = 1},
                                  {.n_tokens = 1, .pos0 = 200, .block_table = bt2, .n_blocks = 13}};
    void *res[2][5];
    size_t sizes[5] = {qb, qb, kb, cb, cb};
    for (int apart = 0; apart < 2; apart++) {
        struct lp_buf *kc = tu_buf(gpu, NULL, cb), *vc = tu_buf(gpu, NULL, cb);
        struct lp_buf *kvb = tu_buf(gpu, kv0, (size_t)(n_slots * row) * 4);
        be->kv_store(c, kc, vc, &g, kvb, kvb, all, (int)n_slots);
        struct lp_buf *qg = tu_buf(gpu, q, qb), *kg = tu_buf(gpu, k, kb), *vg = tu_buf(gpu, v, kb);
        struct lp_buf *qng = tu_buf(gpu, qn, (size_t)hd * 4), *kng = tu_buf(gpu, kn, (size_t)hd * 4);
        struct lp_buf *og = tu_buf(gpu, NULL, qb);
        struct lp_batch_index ix = {
            .n_tokens = n, .ids = ids, .pos = pos, .slot = slot, .n_segs = 3, .segs = segs};
        CHECK_OK(be->batch_setup(c, &ix, err), err);
        be->qk_norm_rope_store(c, qg, kg, vg, qng, kng, kc, vc, &g, pos, slot, n, n_heads, 1e-6f,
                               1e6f);
        if (apart) {
            float *peek = malloc(kb);
            tu_read(gpu, kg, peek, kb);
            free(peek);
        }
        be->attention(c, og, qg, kc, vc, &g, n_heads, segs, 3);
        struct lp_buf *bufs[5] = {og, qg, kg, kc, vc};
        for (int j = 0; j < 5; j++) {
            res[apart][j] = malloc(sizes[j]);
            tu_read(gpu, bufs[j], res[apart][j], sizes[j]);
        }
        CHECK_OK(be->sync(c, err), err);
        for (struct lp_buf **p = (struct lp_buf *[]){kc, vc, kvb, qg, kg, vg, qng, kng, og, NULL};
             *p; p++)
            tu_free(gpu, *p);
    }
    static const char *what[5] = {"attention", "q", "k", "K cache", "V cache"};
    for (int j = 0; j < 5; j++) {
        CHECK_MSG(memcmp(res[0][j], res[1][j], sizes[j]) == 0,
                  "qk step folded into attention (%s hd %d, %d heads): %s differs",
                  lp_dtype_name(dt), hd, n_heads, what[j]);
        free(res[0][j]);
        free(res[1][j]);
    }
    free(kv0);
    free(q);
    free(k);
    free(v);
    free(qn);
    free(kn);
    free(all);
}

// rmsnorm of model-width rows (the block-per-row kernel), in place too.
static void test_rmsnorm_wide(void) {
    int n = 3, dim = 2048;
    float *x = tu_randv((int64_t)n * dim, 3.0f), *w = tu_randv(dim, 1.0f);
    float *res[2][2];
    for (int v = 0; v < 2; v++) {
        struct lp_backend *be = v == 0 ? ref : gpu;
        struct lp_buf *xb = tu_buf(be, x, (size_t)n * dim * 4),
                      *wb = tu_buf(be, w, (size_t)dim * 4);
        struct lp_buf *ob = tu_buf(be, NULL, (size_t)n * dim * 4);
        be->iface.rmsnorm(be->ctx, ob, xb, wb, n, dim, 1e-6f);
        be->iface.rmsnorm(be->ctx, xb, xb, wb, n, dim, 1e-6f);
        for (int k = 0; k < 2; k++) {
            res[v][k] = malloc((size_t)n * dim * 4);
            tu_read(be, k ? xb : ob, res[v][k], (size_t)n * dim * 4);
        }
        if (be->iface.sync) CHECK_OK(be->iface.sync(be->ctx, err), err);
        for (struct lp_buf **p = (struct lp_buf *[]){xb, wb, ob, NULL}; *p; p++)
            tu_free(be, *p);
    }
    for (int k = 0; k < 2; k++) {
        double e = tu_rel_l2(res[1][k], res[0][k], (int64_t)n * dim);
        CHECK_MSG(e <= TOL_FLOAT, "rmsnorm dim %d%s: %.3g", dim, k ? " in place" : "", e);
        free(res[0][k]);
        free(res[1][k]);
    }
    free(x);
    free(w);
}

static void test_rowwise(void) {
    int n = 9, dim = 320, n_heads = 5, hd = 64;
    float *x = tu_randv((int64_t)n * dim, 2.0f), *w = tu_randv(dim, 1.0f);
    int32_t pos[9] = {0, 1, 2, 100, 1000, 4097, 40000, 7, 3};
    int64_t big = 50000;
    float *a = tu_randv(big, 6.0f), *b = tu_randv(big, 3.0f);
    float *want = malloc((size_t)big * 4), *got = malloc((size_t)big * 4);
    static float res[2][4][9 * 320];
    for (int v = 0; v < 2; v++) {
        struct lp_backend *be = v == 0 ? ref : gpu;
        float *o = v == 0 ? want : got;
        struct lp_buf *xb = tu_buf(be, x, (size_t)n * dim * 4),
                      *wb = tu_buf(be, w, (size_t)dim * 4);
        struct lp_buf *ab = tu_buf(be, a, (size_t)big * 4), *bb = tu_buf(be, b, (size_t)big * 4);
        struct lp_buf *ob = tu_buf(be, NULL, (size_t)big * 4);
        be->iface.rmsnorm(be->ctx, ob, xb, wb, n, dim, 1e-6f);
        tu_read(be, ob, res[v][0], (size_t)n * dim * 4);
        be->iface.rmsnorm(be->ctx, xb, xb, wb, n * n_heads, hd, 1e-6f); // in place, per head
        tu_read(be, xb, res[v][3], (size_t)n * dim * 4);
        be->iface.rope(be->ctx, xb, pos, n, n_heads, hd, 1e6f);
        tu_read(be, xb, res[v][1], (size_t)n * dim * 4);
        int32_t rows[3] = {8, 0, 4};
        be->iface.gather_rows(be->ctx, ob, xb, rows, 3, dim);
        tu_read(be, ob, res[v][2], (size_t)3 * dim * 4);
        be->iface.silu_mul(be->ctx, ob, ab, bb, big);
        be->iface.add(be->ctx, ob, bb, big);
        tu_read(be, ob, o, (size_t)big * 4);
        if (be->iface.sync) CHECK_OK(be->iface.sync(be->ctx, err), err);
        for (struct lp_buf **p = (struct lp_buf *[]){xb, wb, ab, bb, ob, NULL}; *p; p++)
            tu_free(be, *p);
    }
    double e0 = tu_rel_l2(res[1][0], res[0][0], (int64_t)n * dim);
    double e3 = tu_rel_l2(res[1][3], res[0][3], (int64_t)n * dim);
    double e1 = tu_rel_l2(res[1][1], res[0][1], (int64_t)n * dim);
    double e2 = tu_rel_l2(res[1][2], res[0][2], (int64_t)3 * dim);
    double e4 = tu_rel_l2(got, want, big);
    CHECK_MSG(e0 <= TOL_FLOAT, "rmsnorm: %.3g", e0);
    CHECK_MSG(e3 <= TOL_FLOAT, "rmsnorm per head in place: %.3g", e3);
    CHECK_MSG(e1 <= TOL_FLOAT, "rope: %.3g", e1);
    CHECK_MSG(e2 <= TOL_FLOAT, "gather_rows: %.3g", e2);
    CHECK_MSG(e4 <= TOL_FLOAT, "silu_mul + add: %.3g", e4);
    printf("rowwise: rmsnorm %.2g, rope %.2g, gather %.2g, silu+add %.2g\n", e0, e1, e2, e4);
    free(x);
    free(w);
    free(a);
    free(b);
    free(want);
    free(got);
}

// long: contexts of ~2200 and ~3100 positions (several splits, and a split
// taking a second chunk), tables of 140 and 200 shuffled blocks.
static void test_attention(enum lp_dtype dt, int hd, bool long_ctx) {
    int n_heads = hd > 256 ? 4 : 8, n_kv = 2, bs = 16, n_blocks = long_ctx ? 220 : 24;
    struct lp_kv_geom g = {
        .n_blocks = n_blocks, .block_size = bs, .n_kv_heads = n_kv, .head_dim = hd, .dtype = dt};
    int64_t row = (int64_t)n_kv * hd, n_slots = (int64_t)n_blocks * bs;
    float *k = tu_randv(n_slots * row, 1.0f), *v = tu_randv(n_slots * row, 1.0f);
    int32_t *slot = malloc((size_t)n_slots * 4);
    for (int64_t i = 0; i < n_slots; i++)
        slot[i] = (int32_t)((i * 7) % n_slots);
    int32_t bt0[8] = {5, 3, 17, 0, 9, 11, 2, 23}, bt1[6] = {1, 4, 6, 8, 10, 12},
            bt2[3] = {13, 14, 15};
    struct lp_attn_seg segs[3] = {
        {.n_tokens = 1, .pos0 = 120, .block_table = bt0, .n_blocks = 8},
        {.n_tokens = 7, .pos0 = 80, .block_table = bt1, .n_blocks = 6},
        {.n_tokens = 5, .pos0 = 0, .block_table = bt2, .n_blocks = 3},
    };
    int32_t lt0[200], lt1[140];
    for (int i = 0; i < 200; i++)
        lt0[i] = (i * 37 + 11) % 220;
    for (int i = 0; i < 140; i++)
        lt1[i] = (i * 53 + 7) % 220;
    if (long_ctx) {
        segs[0] =
            (struct lp_attn_seg){.n_tokens = 1, .pos0 = 3100, .block_table = lt0, .n_blocks = 200};
        segs[1] =
            (struct lp_attn_seg){.n_tokens = 7, .pos0 = 2200, .block_table = lt1, .n_blocks = 140};
    }
    int n = 13;
    float *q = tu_randv((int64_t)n * n_heads * hd, 0.5f);
    size_t out_bytes = (size_t)n * n_heads * hd * 4, es = dt == LP_DTYPE_BF16 ? 2 : 4;
    size_t cache_bytes = (size_t)(n_slots * row) * es;
    // ref, the GPU, and the GPU with 8 and 3 query rows a block of attention
    // (LP_CUDA_ATTN_ROWS, read at create): rows of other segments in one block
    struct lp_backend *rows_be[2] = {NULL, NULL};
    for (int i = 0; i < 2; i++) {
        setenv("LP_CUDA_ATTN_ROWS", i == 0 ? "8" : "3", 1);
        struct lp_backend_cuda_params cp = {.device = 0};
        CHECK_OK(lp_backend_cuda_create(&rows_be[i], &cp, err), err);
        unsetenv("LP_CUDA_ATTN_ROWS");
    }
    float *res[4];
    void *kcache[4], *vcache[4];
    for (int i = 0; i < 4; i++) {
        res[i] = malloc(out_bytes);
        kcache[i] = malloc(cache_bytes);
        vcache[i] = malloc(cache_bytes);
    }
    for (int vi = 0; vi < 4; vi++) {
        struct lp_backend *be = vi == 0 ? ref : vi == 1 ? gpu : rows_be[vi - 2];
        if (!be) continue;
        struct lp_buf *kc = tu_buf(be, NULL, cache_bytes), *vc = tu_buf(be, NULL, cache_bytes);
        struct lp_buf *kb = tu_buf(be, k, (size_t)(n_slots * row) * 4);
        struct lp_buf *vb = tu_buf(be, v, (size_t)(n_slots * row) * 4);
        struct lp_buf *qb = tu_buf(be, q, out_bytes), *ob = tu_buf(be, NULL, out_bytes);
        be->iface.kv_store(be->ctx, kc, vc, &g, kb, vb, slot, (int)n_slots);
        be->iface.attention(be->ctx, ob, qb, kc, vc, &g, n_heads, segs, 3);
        tu_read(be, ob, res[vi], out_bytes);
        tu_read(be, kc, kcache[vi], cache_bytes);
        tu_read(be, vc, vcache[vi], cache_bytes);
        if (be->iface.sync) CHECK_OK(be->iface.sync(be->ctx, err), err);
        for (struct lp_buf **p = (struct lp_buf *[]){kc, vc, kb, vb, qb, ob, NULL}; *p; p++)
            tu_free(be, *p);
    }
    double e = tu_rel_l2(res[1], res[0], (int64_t)(out_bytes / 4));
    CHECK_MSG(e <= TOL_FLOAT, "attention %s hd %d%s: rel L2 %.3g", lp_dtype_name(dt), hd,
              long_ctx ? " long" : "", e);
    CHECK_MSG(memcmp(kcache[0], kcache[1], cache_bytes) == 0, "kv_store K %s", lp_dtype_name(dt));
    CHECK_MSG(memcmp(vcache[0], vcache[1], cache_bytes) == 0, "kv_store V %s", lp_dtype_name(dt));
    for (int i = 0; i < 2; i++)
        if (rows_be[i])
            CHECK_MSG(memcmp(res[2 + i], res[1], out_bytes) == 0,
                      "attention %s hd %d%s with %d rows a block differs from 1", lp_dtype_name(dt),
                      hd, long_ctx ? " long" : "", i == 0 ? 8 : 3);
    printf("attention %s hd %d%s: rel L2 %.3g\n", lp_dtype_name(dt), hd, long_ctx ? " long" : "",
           e);
    free(k);
    free(v);
    free(slot);
    free(q);
    for (int i = 0; i < 4; i++) {
        free(res[i]);
        free(kcache[i]);
        free(vcache[i]);
    }
    for (int i = 0; i < 2; i++)
        if (rows_be[i]) lp_backend_destroy(rows_be[i]);
}

// ---- the whole engine ----------------------------------------------------------

#define E_SEQS 4
#define E_PROMPT 37
#define E_STEPS 6

// Runs a prefill of E_PROMPT tokens per sequence (one sequence a call, in
// chunks of 16), then E_STEPS decode steps of all E_SEQS sequences at once
// (together) or of each alone; logits [E_SEQS][1 + E_STEPS][vocab]. With
// greedy ([E_SEQS][E_STEPS]), the odd decode steps ask for greedy ids
// instead (their logits rows are left as they were): steps of both kinds
// run direct, then are recorded, then replayed, and must not share a recording.
static void engine_run(struct lp_backend *be, const struct lp_model *m, bool together,
                       float *logits, int32_t *greedy) {
    struct lp_engine_params p = lp_engine_params_default();
    p.max_seqs = E_SEQS;
    p.max_context = 256;
    struct lp_engine *e = NULL;
    CHECK_OK(lp_engine_create(&e, m, be, &p, err), err);
    if (!e) return;
    int vocab = lp_engine_vocab_size(e);
    int seq[E_SEQS];
    int32_t toks[E_SEQS][E_PROMPT + E_STEPS];
    for (int s = 0; s < E_SEQS; s++) {
        CHECK_OK(lp_engine_seq_open(e, &seq[s], err), err);
        for (int t = 0; t < E_PROMPT + E_STEPS; t++)
            toks[s][t] = (int32_t)((s * 131 + t * 17) % vocab);
        for (int t0 = 0; t0 < E_PROMPT; t0 += 16) {
            int nt = E_PROMPT - t0 < 16 ? E_PROMPT - t0 : 16;
            struct lp_engine_seg seg = {
                .seq = seq[s], .pos0 = -1, .n_tokens = nt, .tokens = toks[s] + t0};
            struct lp_engine_batch b = {
                .n_segs = 1, .segs = &seg, .logits = logits + ((size_t)s * (1 + E_STEPS)) * vocab};
            CHECK_OK(lp_engine_forward(e, &b, err), err);
        }
    }
    float *rows = malloc((size_t)E_SEQS * vocab * 4);
    for (int step = 0; step < E_STEPS; step++) {
        struct lp_engine_seg segs[E_SEQS];
        for (int s = 0; s < E_SEQS; s++)
            segs[s] = (struct lp_engine_seg){
                .seq = seq[s], .pos0 = -1, .n_tokens = 1, .tokens = &toks[s][E_PROMPT + step]};
        bool ids_only = greedy && step % 2 == 1;
        for (int s = 0; s < (together ? 1 : E_SEQS); s++) {
            int32_t ids[E_SEQS];
            struct lp_engine_batch b = {.n_segs = together ? E_SEQS : 1,
                                        .segs = together ? segs : &segs[s],
                                        .logits = ids_only ? NULL : rows,
                                        .greedy_ids = ids_only ? ids : NULL};
            CHECK_OK(lp_engine_forward(e, &b, err), err);
            for (int r = 0; r < (together ? E_SEQS : 1); r++) {
                int ss = together ? r : s;
                if (ids_only) {
                    greedy[ss * E_STEPS + step] = ids[r];
                    continue;
                }
                memcpy(logits + ((size_t)ss * (1 + E_STEPS) + 1 + step) * vocab,
                       rows + (size_t)r * vocab, (size_t)vocab * 4);
            }
        }
    }
    free(rows);
    lp_engine_destroy(e);
}

static void test_engine(const char *name, const char *gen) {
    char dir[1100];
    if (lp_fixture_model(name, gen, dir, sizeof dir) != 0) {
        CHECK_MSG(0, "could not make model %s", name);
        return;
    }
    struct lp_model *m = NULL;
    CHECK_OK(lp_model_open(&m, dir, NULL, err), err);
    if (!m) return;
    int vocab = lp_model_config(m)->vocab_size;
    size_t n = (size_t)E_SEQS * (1 + E_STEPS) * vocab;
    float *cpu_l = calloc(n, 4), *gpu_l = calloc(n, 4), *gpu_alone = calloc(n, 4);
    struct lp_backend *cpu = NULL;
    CHECK_OK(lp_backend_cpu_create(&cpu, NULL, err), err);
    engine_run(cpu, m, true, cpu_l, NULL);
    engine_run(gpu, m, true, gpu_l, NULL);
    engine_run(gpu, m, false, gpu_alone, NULL);
    double worst = 0;
    for (size_t r = 0; r < n / vocab; r++) {
        double e = lp_rel_l2(gpu_l + r * vocab, cpu_l + r * vocab, (size_t)vocab);
        if (e > worst) worst = e;
    }
    CHECK_MSG(worst <= TOL_ENGINE, "engine %s: CUDA vs CPU worst row rel L2 %.3g", name, worst);
    // prefill rows were computed the same way in both runs; decode rows alone vs together
    CHECK_MSG(memcmp(gpu_l, gpu_alone, n * 4) == 0,
              "engine %s: decoding %d sequences together differs from each alone", name, E_SEQS);
    printf("engine %-12s CUDA vs CPU worst row rel L2 %.3g; together == alone: %s\n", name, worst,
           memcmp(gpu_l, gpu_alone, n * 4) == 0 ? "yes" : "NO");
    // greedy ids on the odd decode steps (together and alone): the argmax of
    // the rows those steps give; the even steps' rows unchanged
    for (int together = 1; together >= 0; together--) {
        int32_t ids[E_SEQS * E_STEPS];
        memcpy(gpu_alone, gpu_l, n * 4);
        engine_run(gpu, m, together, gpu_alone, ids);
        int same = 0;
        for (int s = 0; s < E_SEQS; s++)
            for (int step = 1; step < E_STEPS; step += 2)
                same += ids[s * E_STEPS + step] ==
                        lp_argmax_f32(gpu_l + ((size_t)s * (1 + E_STEPS) + 1 + step) * vocab,
                                      vocab);
        CHECK_MSG(same == E_SEQS * (E_STEPS / 2), "engine %s: %d of %d greedy ids (%s) differ",
                  name, E_SEQS * (E_STEPS / 2) - same, E_SEQS * (E_STEPS / 2),
                  together ? "together" : "alone");
        CHECK_MSG(memcmp(gpu_l, gpu_alone, n * 4) == 0,
                  "engine %s: rows beside greedy steps differ (%s)", name,
                  together ? "together" : "alone");
    }
    free(cpu_l);
    free(gpu_l);
    free(gpu_alone);
    lp_backend_destroy(cpu);
    lp_model_close(m);
}

int main(void) {
    if (!lp_backend_cuda_built()) {
        printf("skip: this build has no CUDA backend (configure with -DLAYERPIPE_CUDA=ON)\n");
        return 0;
    }
    struct lp_backend_cuda_params cp = {.device = 0};
    if (lp_backend_cuda_create(&gpu, &cp, err) != LP_OK) {
        printf("skip: no usable GPU: %s\n", err->msg);
        return 0;
    }
    CHECK_OK(lp_backend_ref_create(&ref, err), err);
    struct lp_device_info info;
    CHECK_OK(lp_backend_device_info(gpu, &info, err), err);
    printf("device: %s, %.1f GiB free, read %.0f GB/s\n", info.name,
           (double)info.free_bytes / (1 << 30), info.read_gb_s);
    test_matmul();
    test_batch_invariance();
    test_persistent_grid();
    test_fused();
    test_fused_qk(LP_DTYPE_F32);
    test_fused_qk(LP_DTYPE_BF16);
    test_rowwise();
    test_rmsnorm_wide();
    test_fold_norm();
    test_fold_qk(LP_DTYPE_F32, 64, 4);
    test_fold_qk(LP_DTYPE_BF16, 128, 8);
    test_attention(LP_DTYPE_F32, 64, false);
    test_attention(LP_DTYPE_BF16, 64, false);
    test_attention(LP_DTYPE_F32, 320, false);
    test_attention(LP_DTYPE_BF16, 320, false);
    test_attention(LP_DTYPE_F32, 128, true);
    test_attention(LP_DTYPE_BF16, 16, true);
    tu_test_argmax(gpu);
    if (getenv("LP_CUDA_TEST_KERNELS_ONLY")) { // (compute-sanitizer runs)
        printf("LP_CUDA_TEST_KERNELS_ONLY: engine checks left out\n");
        goto done;
    }
#ifdef LP_TEST_CUDA_EMU // small models: the emulation runs a thread at a time
    test_engine("emu_bf16", "--seed 301 --format hf-bf16 --tied 1 --layers 2 --hidden 64 "
                            "--heads 4 --kv-heads 2 --head-dim 16 --intermediate 128 --vocab 200");
    test_engine("emu_mlx8", "--seed 302 --format mlx8 --group 64 --tied 0 --layers 2 --hidden 64 "
                            "--heads 4 --kv-heads 2 --head-dim 32 --intermediate 128 --vocab 150");
    test_engine("emu_mlx4", "--seed 303 --format mlx4 --group 32 --tied 1 --layers 1 --hidden 64 "
                            "--heads 2 --kv-heads 1 --head-dim 32 --intermediate 128 --vocab 100");
#else
    test_engine("cuda_bf16",
                "--seed 301 --format hf-bf16 --tied 1 --layers 3 --hidden 256 "
                "--heads 4 --kv-heads 2 --head-dim 64 --intermediate 512 --vocab 1000");
    test_engine("cuda_mlx8",
                "--seed 302 --format mlx8 --group 64 --tied 0 --layers 3 --hidden 256 "
                "--heads 4 --kv-heads 2 --head-dim 64 --intermediate 512 --vocab 1000");
    test_engine("cuda_mlx4", "--seed 303 --format mlx4 --group 32 --tied 1 --layers 2 --hidden 128 "
                             "--heads 4 --kv-heads 1 --head-dim 32 --intermediate 256 --vocab 700");
    // model width 1024: the rmsnorms fold into the products after them
    test_engine("cuda_mlx8_w1k",
                "--seed 304 --format mlx8 --group 64 --tied 1 --layers 2 --hidden 1024 "
                "--heads 8 --kv-heads 4 --head-dim 128 --intermediate 2048 --vocab 1000");
#endif
done:
    lp_backend_destroy(ref);
    lp_backend_destroy(gpu);
    return lp_test_finish("backend/cuda");
}
