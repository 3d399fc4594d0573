// SPDX-License-Identifier: MIT
// test_engine.c -- properties of the forward pass that hold whatever the
// weights: a prompt as a matrix equals the same prompt token by token;
// several sequences decoded in one batch equal each decoded alone; a model
// split into two engines (layers [0,k) with the embedding, [k,L) with the
// head) passing hidden rows gives the same logits as one engine; rewinding
// recomputes the same logits; bad batches are errors that change nothing;
// the CPU backend agrees with the scalar reference backend; greedy ids
// (greedy_ids) are the sampler's loop over the rows the same batch returns,
// from the backend's argmax_rows and from the engine's own fallback. Models: bf16,
// MLX 8-bit and 4-bit, and a GGUF Q4_K_M file.
#include <string.h>

#include "backend/backend_i.h"
#include "layerpipe/engine.h"
#include "lp_test.h"
#include "util/argmax.h"
#include "model_fixture.h"

#define SHAPE "--layers 3 --hidden 64 --heads 4 --kv-heads 2 --head-dim 16 --intermediate 128 "

struct rig {
    struct lp_model *model;
    struct lp_backend *backend;
    struct lp_engine *engine;
    int vocab, hidden;
};

static struct lp_engine_params rig_params(enum lp_dtype kv_dtype, int n_blocks) {
    struct lp_engine_params ep = lp_engine_params_default();
    ep.max_batch_tokens = 64;
    ep.max_logit_rows = 64;
    ep.max_seqs = 4;
    ep.kv_block_size = 8;
    ep.kv_dtype = kv_dtype;
    ep.max_context = 128;
    ep.n_kv_blocks = n_blocks;
    return ep;
}

static int rig_open(struct rig *r, const char *dir, bool ref, int begin, int end, bool embed,
                    bool head, enum lp_dtype kv_dtype, int n_blocks) {
    memset(r, 0, sizeof *r);
    struct lp_error err = {0};
    struct lp_model_load_params lp = {begin, end, embed, head};
    struct lp_engine_params ep = rig_params(kv_dtype, n_blocks);
    struct lp_backend_cpu_params bp = lp_backend_cpu_params_default();
    bp.n_threads = 2;
    CHECK_OK(lp_model_open(&r->model, dir, &lp, &err), &err);
    if (!r->model) return -1;
    if (ref)
        CHECK_OK(lp_backend_ref_create(&r->backend, &err), &err);
    else
        CHECK_OK(lp_backend_cpu_create(&r->backend, &bp, &err), &err);
    if (!r->backend) return -1;
    CHECK_OK(lp_engine_create(&r->engine, r->model, r->backend, &ep, &err), &err);
    r->vocab = lp_model_config(r->model)->vocab_size;
    r->hidden = lp_model_config(r->model)->hidden_size;
    return r->engine ? 0 : -1;
}

static void rig_close(struct rig *r) {
    lp_engine_destroy(r->engine);
    lp_backend_destroy(r->backend);
    lp_model_close(r->model);
}

// Runs one segment; returns the status.
static enum lp_status fwd(struct rig *r, int seq, int pos0, const int32_t *ids, int n, bool all,
                          float *logits, struct lp_error *err) {
    struct lp_engine_seg s = {seq, pos0, n, ids, all};
    struct lp_engine_batch b = {1, &s, NULL, NULL, logits};
    return lp_engine_forward(r->engine, &b, err);
}

static void test_matrix_vs_tokens(struct rig *r, const int32_t *ids, int n) {
    struct lp_error err = {0};
    size_t V = (size_t)r->vocab;
    float *all = malloc((size_t)n * V * 4), *one = malloc(V * 4);
    int s1, s2;
    CHECK_OK(lp_engine_seq_open(r->engine, &s1, &err), &err);
    CHECK_OK(lp_engine_seq_open(r->engine, &s2, &err), &err);
    CHECK_OK(fwd(r, s1, -1, ids, n, true, all, &err), &err);
    CHECK(lp_engine_seq_len(r->engine, s1) == n);
    double worst = 0;
    for (int i = 0; i < n; i++) {
        CHECK_OK(fwd(r, s2, -1, ids + i, 1, false, one, &err), &err);
        double e = lp_rel_l2(one, all + (size_t)i * V, V);
        if (e > worst) worst = e;
    }
    CHECK_MSG(worst < 1e-5, "prefill matrix vs token-by-token: rel err %g", worst);
    // rewind s1 to position 5 and recompute the rest: same logits
    CHECK_OK(fwd(r, s1, 5, ids + 5, n - 5, true, all, &err), &err);
    CHECK(lp_engine_seq_len(r->engine, s1) == n);
    CHECK_OK(fwd(r, s2, 5, ids + 5, 1, false, one, &err), &err);
    CHECK(lp_engine_seq_len(r->engine, s2) == 6);
    CHECK_MSG(lp_rel_l2(one, all, V) < 1e-5, "rewind");
    lp_engine_seq_close(r->engine, s1);
    lp_engine_seq_close(r->engine, s2);
    free(all);
    free(one);
}

static void test_batched_decode(struct rig *r) {
    struct lp_error err = {0};
    size_t V = (size_t)r->vocab;
    const int32_t p0[] = {1, 2, 3, 4, 5}, p1[] = {9, 8}, p2[] = {100, 200, 50, 7, 7, 7, 7};
    const int32_t *prompts[3] = {p0, p1, p2};
    int lens[3] = {5, 2, 7};
    int seq[3];
    float *alone = malloc(3 * 4 * V * 4), *batched = malloc(3 * V * 4), *tmp = malloc(V * 4);
    // alone: each sequence prefilled then decoded 4 tokens (fixed ids)
    for (int k = 0; k < 3; k++) {
        CHECK_OK(lp_engine_seq_open(r->engine, &seq[k], &err), &err);
        CHECK_OK(fwd(r, seq[k], -1, prompts[k], lens[k], false, tmp, &err), &err);
        for (int t = 0; t < 4; t++) {
            int32_t id = (int32_t)(10 * k + t);
            CHECK_OK(fwd(r, seq[k], -1, &id, 1, false, alone + ((size_t)k * 4 + t) * V, &err),
                     &err);
        }
        lp_engine_seq_close(r->engine, seq[k]);
    }
    // together: prefill all three in one batch, then decode the three at once
    struct lp_engine_seg segs[3];
    for (int k = 0; k < 3; k++) {
        CHECK_OK(lp_engine_seq_open(r->engine, &seq[k], &err), &err);
        segs[k] = (struct lp_engine_seg){seq[k], -1, lens[k], prompts[k], false};
    }
    struct lp_engine_batch b = {3, segs, NULL, NULL, batched};
    CHECK_OK(lp_engine_forward(r->engine, &b, &err), &err);
    double worst = 0;
    for (int t = 0; t < 4; t++) {
        int32_t ids[3];
        for (int k = 0; k < 3; k++) {
            ids[k] = (int32_t)(10 * k + t);
            segs[k] = (struct lp_engine_seg){seq[k], -1, 1, &ids[k], false};
        }
        CHECK_OK(lp_engine_forward(r->engine, &b, &err), &err);
        for (int k = 0; k < 3; k++) {
            double e = lp_rel_l2(batched + (size_t)k * V, alone + ((size_t)k * 4 + t) * V, V);
            if (e > worst) worst = e;
        }
    }
    CHECK_MSG(worst < 1e-5, "batched decode vs alone: rel err %g", worst);
    for (int k = 0; k < 3; k++) lp_engine_seq_close(r->engine, seq[k]);
    free(alone);
    free(batched);
    free(tmp);
}

static void test_bad_batches(struct rig *r, const int32_t *ids) {
    struct lp_error err = {0};
    float *logits = malloc((size_t)r->vocab * 64 * 4), *again = malloc((size_t)r->vocab * 4);
    int s;
    CHECK_OK(lp_engine_seq_open(r->engine, &s, &err), &err);
    CHECK_OK(fwd(r, s, -1, ids, 4, false, logits, &err), &err);
    CHECK(fwd(r, s, 6, ids, 1, false, logits, &err) == LP_ERR_INVALID_ARG); // gap
    CHECK(strstr(err.msg, "gap") != NULL);
    CHECK(fwd(r, 3, -1, ids, 1, false, logits, &err) == LP_ERR_INVALID_ARG); // not open
    int32_t bad = r->vocab;
    CHECK(fwd(r, s, -1, &bad, 1, false, logits, &err) == LP_ERR_INVALID_ARG);
    CHECK(strstr(err.msg, "vocabulary") != NULL);
    int32_t many[65] = {0};
    CHECK(fwd(r, s, -1, many, 65, false, logits, &err) == LP_ERR_INVALID_ARG); // > batch
    CHECK(fwd(r, s, 127, ids, 2, false, logits, &err) == LP_ERR_INVALID_ARG);  // gap first
    CHECK(fwd(r, s, -1, ids, 0, false, logits, &err) == LP_ERR_INVALID_ARG);
    struct lp_engine_seg twice[2] = {{s, -1, 1, ids, false}, {s, -1, 1, ids, false}};
    struct lp_engine_batch b = {2, twice, NULL, NULL, logits};
    CHECK(lp_engine_forward(r->engine, &b, &err) == LP_ERR_INVALID_ARG);
    CHECK(lp_engine_seq_len(r->engine, s) == 4);
    // the sequence still works and gives the same next logits as a fresh one
    CHECK_OK(fwd(r, s, -1, ids + 4, 1, false, logits, &err), &err);
    int s2;
    CHECK_OK(lp_engine_seq_open(r->engine, &s2, &err), &err);
    CHECK_OK(fwd(r, s2, -1, ids, 5, false, again, &err), &err);
    CHECK(lp_rel_l2(logits, again, (size_t)r->vocab) < 1e-5);
    lp_engine_seq_close(r->engine, s);
    lp_engine_seq_close(r->engine, s2);
    free(logits);
    free(again);
}

static void test_context_and_pool(const char *dir) {
    struct rig r;
    struct lp_error err = {0};
    // 4 blocks of 8 positions: 32 positions in the whole pool
    if (rig_open(&r, dir, false, 0, -1, true, true, LP_DTYPE_F32, 4) != 0) return;
    float *logits = malloc((size_t)r.vocab * 64 * 4);
    int32_t ids[64] = {0};
    int a, b;
    CHECK_OK(lp_engine_seq_open(r.engine, &a, &err), &err);
    CHECK_OK(lp_engine_seq_open(r.engine, &b, &err), &err);
    CHECK_OK(fwd(&r, a, -1, ids, 20, false, logits, &err), &err); // 3 blocks
    CHECK(fwd(&r, b, -1, ids, 10, false, logits, &err) == LP_ERR_BUSY); // needs 2, 1 free
    CHECK(lp_engine_seq_len(r.engine, b) == 0);
    CHECK_OK(fwd(&r, b, -1, ids, 8, false, logits, &err), &err); // fits in the last block
    lp_engine_seq_close(r.engine, a);
    CHECK_OK(fwd(&r, b, -1, ids, 20, false, logits, &err), &err); // blocks came back
    CHECK(lp_engine_seq_len(r.engine, b) == 28);
    // pool full (a: 0 positions, b: 28 in 4 blocks): one batch that grows a
    // and rewinds b to 0 fits, because b's rewind gives its blocks back
    // before a takes one, whatever the segment order
    int c;
    CHECK_OK(lp_engine_seq_open(r.engine, &c, &err), &err);
    struct lp_engine_seg both[2] = {{c, -1, 8, ids, false}, {b, 0, 1, ids, false}};
    struct lp_engine_batch bb = {2, both, NULL, NULL, logits};
    CHECK_OK(lp_engine_forward(r.engine, &bb, &err), &err);
    CHECK(lp_engine_seq_len(r.engine, c) == 8 && lp_engine_seq_len(r.engine, b) == 1);
    free(logits);
    rig_close(&r);
}

static void test_split(const char *dir, const int32_t *ids, int n) {
    struct rig whole, front, back;
    struct lp_error err = {0};
    if (rig_open(&whole, dir, false, 0, -1, true, true, LP_DTYPE_F32, 0) != 0) return;
    if (rig_open(&front, dir, false, 0, 1, true, false, LP_DTYPE_F32, 0) != 0) return;
    if (rig_open(&back, dir, false, 1, -1, false, true, LP_DTYPE_F32, 0) != 0) return;
    CHECK(lp_model_head(front.model) == NULL && lp_model_embedding(back.model) == NULL);
    CHECK(lp_model_layer(front.model, 1) == NULL && lp_model_layer(back.model, 0) == NULL);
    size_t V = (size_t)whole.vocab, H = (size_t)whole.hidden;
    float *a = malloc((size_t)n * V * 4), *b = malloc((size_t)n * V * 4);
    float *hidden = malloc((size_t)n * H * 4);
    int s0, s1, s2;
    CHECK_OK(lp_engine_seq_open(whole.engine, &s0, &err), &err);
    CHECK_OK(lp_engine_seq_open(front.engine, &s1, &err), &err);
    CHECK_OK(lp_engine_seq_open(back.engine, &s2, &err), &err);
    // prefill in two chunks, then three decode steps
    int cuts[] = {0, n / 2, n - 3, n - 2, n - 1, n};
    for (int c = 0; c + 1 < 6; c++) {
        int p = cuts[c], m = cuts[c + 1] - cuts[c];
        struct lp_engine_seg sw = {s0, p, m, ids + p, true};
        struct lp_engine_batch bw = {1, &sw, NULL, NULL, a + (size_t)p * V};
        CHECK_OK(lp_engine_forward(whole.engine, &bw, &err), &err);
        struct lp_engine_seg sf = {s1, p, m, ids + p, true};
        struct lp_engine_batch bf = {1, &sf, NULL, hidden, NULL};
        CHECK_OK(lp_engine_forward(front.engine, &bf, &err), &err);
        struct lp_engine_seg sb = {s2, p, m, NULL, true};
        struct lp_engine_batch bb = {1, &sb, hidden, NULL, b + (size_t)p * V};
        CHECK_OK(lp_engine_forward(back.engine, &bb, &err), &err);
    }
    CHECK_MSG(memcmp(a, b, (size_t)n * V * 4) == 0, "split logits are not bit-identical");
    // greedy ids from an engine without the head: a bad batch that changes nothing
    int32_t gid[4];
    struct lp_engine_seg sf = {s1, -1, 1, ids, false};
    struct lp_engine_batch bf = {1, &sf, NULL, hidden, NULL, gid, NULL};
    CHECK(lp_engine_forward(front.engine, &bf, &err) == LP_ERR_INVALID_ARG);
    CHECK(lp_engine_seq_len(front.engine, s1) == n);
    free(a);
    free(b);
    free(hidden);
    rig_close(&whole);
    rig_close(&front);
    rig_close(&back);
}

// Three sequences (the middle one with all its prompt rows), prefilled
// together and then decoded four steps: each batch runs once for its logits
// and again (rewound to the same positions) for greedy ids only, which must
// be the sampler's loop over those rows (bit-identical rows: the same
// computation), every row finite; a logits buffer given beside greedy_ids
// is left alone.
static void check_greedy(struct lp_engine *e, int vocab, const char *what) {
    struct lp_error err = {0};
    size_t V = (size_t)vocab;
    const int32_t p0[] = {1, 2, 3, 4, 5}, p1[] = {9, 8}, p2[] = {100, 200, 50, 7, 7, 7, 7};
    const int32_t *prompts[3] = {p0, p1, p2};
    int lens[3] = {5, 2, 7}, seq[3];
    float *rows = malloc(64 * V * 4), *untouched = malloc(V * 4);
    int32_t ids[64], bad[64], dec[3];
    for (int k = 0; k < 3; k++) CHECK_OK(lp_engine_seq_open(e, &seq[k], &err), &err);
    for (int step = 0; step < 5; step++) {
        struct lp_engine_seg segs[3];
        int n_rows = 0;
        for (int k = 0; k < 3; k++) {
            dec[k] = (int32_t)(10 * k + step);
            segs[k] = step == 0 ? (struct lp_engine_seg){seq[k], 0, lens[k], prompts[k], k == 1}
                                : (struct lp_engine_seg){seq[k], lens[k] + step - 1, 1, &dec[k],
                                                         false};
            n_rows += segs[k].all_logits ? segs[k].n_tokens : 1;
        }
        struct lp_engine_batch b = {3, segs, NULL, NULL, rows};
        CHECK_OK(lp_engine_forward(e, &b, &err), &err);
        for (size_t i = 0; i < V; i++) untouched[i] = -12345.0f;
        struct lp_engine_batch g = {3, segs, NULL, NULL, untouched, ids, bad};
        for (int r = 0; r < n_rows; r++) ids[r] = bad[r] = -7;
        CHECK_OK(lp_engine_forward(e, &g, &err), &err);
        int same = 0;
        for (int r = 0; r < n_rows; r++)
            same += ids[r] == lp_argmax_f32(rows + (size_t)r * V, vocab) && bad[r] == -1;
        CHECK_MSG(same == n_rows, "%s: step %d: %d of %d greedy ids are the rows' argmax", what,
                  step, same, n_rows);
        CHECK(untouched[0] == -12345.0f && untouched[V - 1] == -12345.0f);
        if (step == 0) { // the rows differ (a greedy id that ignored its row would show)
            CHECK(ids[0] != ids[1] || ids[1] != ids[2] || ids[2] != ids[3]);
            g.logits = NULL; // logits may be NULL with greedy_ids
            g.greedy_bad = NULL;
            CHECK_OK(lp_engine_forward(e, &g, &err), &err);
        }
    }
    for (int k = 0; k < 3; k++) {
        CHECK(lp_engine_seq_len(e, seq[k]) == lens[k] + 4);
        lp_engine_seq_close(e, seq[k]);
    }
    free(rows);
    free(untouched);
}

static void no_destroy(void *ctx) { (void)ctx; }

// check_greedy on the backend's argmax_rows, then on the same backend
// through a table without it (the engine reads each row and runs the loop).
static void test_greedy_ids(const char *dir, bool ref) {
    struct rig r;
    struct lp_error err = {0};
    if (rig_open(&r, dir, ref, 0, -1, true, true, LP_DTYPE_F32, 0) != 0) return;
    CHECK(r.backend->iface.argmax_rows != NULL);
    check_greedy(r.engine, r.vocab, ref ? "ref" : "cpu");
    struct lp_backend_i plain = r.backend->iface;
    plain.argmax_rows = NULL;
    plain.destroy = no_destroy; // the context stays r.backend's
    struct lp_backend *fb = NULL;
    struct lp_engine *fe = NULL;
    CHECK_OK(lp_backend_wrap(&fb, &plain, r.backend->ctx, &err), &err);
    struct lp_engine_params ep = rig_params(LP_DTYPE_F32, 0);
    if (fb) CHECK_OK(lp_engine_create(&fe, r.model, fb, &ep, &err), &err);
    if (fe) check_greedy(fe, r.vocab, ref ? "ref, engine fallback" : "cpu, engine fallback");
    lp_engine_destroy(fe);
    lp_backend_destroy(fb);
    rig_close(&r);
}

static void test_backends_agree(const char *dir, const int32_t *ids, int n, double tol,
                                enum lp_dtype kv_dtype) {
    struct rig cpu, ref;
    struct lp_error err = {0};
    if (rig_open(&cpu, dir, false, 0, -1, true, true, kv_dtype, 0) != 0) return;
    if (rig_open(&ref, dir, true, 0, -1, true, true, LP_DTYPE_F32, 0) != 0) return;
    size_t V = (size_t)cpu.vocab;
    float *a = malloc((size_t)n * V * 4), *b = malloc((size_t)n * V * 4);
    int sa, sb;
    CHECK_OK(lp_engine_seq_open(cpu.engine, &sa, &err), &err);
    CHECK_OK(lp_engine_seq_open(ref.engine, &sb, &err), &err);
    CHECK_OK(fwd(&cpu, sa, -1, ids, n, true, a, &err), &err);
    CHECK_OK(fwd(&ref, sb, -1, ids, n, true, b, &err), &err);
    double worst = 0;
    for (int i = 0; i < n; i++) {
        double e = lp_rel_l2(a + (size_t)i * V, b + (size_t)i * V, V);
        if (e > worst) worst = e;
    }
    CHECK_MSG(worst < tol, "%s: cpu (kv %s) vs ref: rel err %g > %g", dir,
              lp_dtype_name(kv_dtype), worst, tol);
    free(a);
    free(b);
    rig_close(&cpu);
    rig_close(&ref);
}

int main(void) {
    char bf16[1024], q8[1024], q4[1024], gguf[1024];
    if (lp_fixture_model("eng_bf16", "--seed 11 --format hf-bf16 " SHAPE "--vocab 300 --tied 1",
                         bf16, sizeof bf16) != 0 ||
        lp_fixture_model("eng_q8", "--seed 12 --format mlx8 --group 32 " SHAPE
                                   "--vocab 300 --tied 0",
                         q8, sizeof q8) != 0 ||
        lp_fixture_model("eng_q4", "--seed 13 --format mlx4 --group 64 " SHAPE
                                   "--vocab 300 --tied 1",
                         q4, sizeof q4) != 0 ||
        // GGUF blocks (Q4_K and Q6_K, llama.cpp's Q4_K_M mix): rows of 256
        lp_fixture_model("eng_gguf", "--seed 14 --format gguf-q4_k_m --layers 3 --hidden 256 "
                                     "--heads 4 --kv-heads 2 --head-dim 64 --intermediate 512 "
                                     "--vocab 300 --tied 1",
                         gguf, sizeof gguf) != 0) {
        CHECK(!"could not generate the test models");
        return lp_test_finish("engine");
    }
    int32_t ids[40];
    for (int i = 0; i < 40; i++) ids[i] = (int32_t)((i * 37 + 11) % 300);
    const char *dirs[] = {bf16, q8, q4, gguf};
    for (int k = 0; k < 4; k++) {
        struct rig r;
        if (rig_open(&r, dirs[k], false, 0, -1, true, true, LP_DTYPE_F32, 0) != 0) continue;
        test_matrix_vs_tokens(&r, ids, 40);
        test_batched_decode(&r);
        test_bad_batches(&r, ids);
        rig_close(&r);
        test_split(dirs[k], ids, 40);
        test_backends_agree(dirs[k], ids, 40, 1e-4, LP_DTYPE_F32);
        test_greedy_ids(dirs[k], false);
    }
    test_greedy_ids(bf16, true);
    test_backends_agree(bf16, ids, 40, 1e-2, LP_DTYPE_BF16);
    test_context_and_pool(bf16);
    return lp_test_finish("engine");
}
