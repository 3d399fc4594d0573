// SPDX-License-Identifier: MIT
// test_sched.c -- the scheduler over a real pipeline, on the bundled
// (trained) model: one process and a 3-stage ring of in-process workers
// (real gRPC servers on loopback).
//  - batch invariance: 16 requests at once produce, at temperature 0, the
//    ids each produces alone; and so with other prefill chunk sizes;
//  - a seeded sampling request gives the same ids alone and in a crowd;
//  - a long prompt arriving during 8 decoding streams is spread over steps:
//    the streams keep getting tokens while it prefills;
//  - a failed step ends only its own request (its session was released on
//    the workers behind the scheduler's back), the others finish intact;
//  - cancel ends a request and frees its KV on every stage (Stats);
//  - a full waiting queue is LP_ERR_BUSY, a prompt past the context
//    LP_ERR_INVALID_ARG, both before any event;
//  - NaN logits (a model whose final norm is NaN) end the request with an
//    error instead of sampling garbage.
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "cluster/internal.h"
#include "cluster/rpc.h"
#include "layerpipe/cluster.h"
#include "cluster/sched_fixture.h"
#include "layerpipe/tokenizer.h"
#include "lp_test.h"

#define N_REQ 16
#define N_GEN 24

static char model_dir[1024];

// ---- collecting a request's events ----

// ---- prompts from the model's own tokenizer ----

static const char *texts[N_REQ] = {
    "And it came to pass",        "In the beginning",       "The LORD is my shepherd",
    "Blessed are the meek",       "A fool and his money",   "Then said Jesus unto them",
    "Behold, I stand at the door", "He that hath ears",     "Love is patient",
    "Now the serpent was",        "Early to bed",           "And God said",
    "A penny saved",              "Thou shalt not",         "The fear of the LORD",
    "When in doubt"};

static struct lp_token_list prompts[N_REQ];

static struct lp_sched_request greedy(int i, struct got *g, int n_gen) {
    struct lp_sched_request rq = {.prompt = prompts[i].ids, .n_prompt = (int)prompts[i].n_ids,
                                  .max_new_tokens = n_gen, .ignore_eos = true,
                                  .sampling = lp_sampler_params_default(), .on_event = got_on_event,
                                  .user = g};
    return rq;
}

// ---- a pipeline and its scheduler ----

static bool rig_open(struct sched_rig *r, int n_workers, int max_seqs, int batch) {
    struct lp_error err = {0};
    struct lp_pipeline_params pp = lp_pipeline_params_default();
    pp.model_dir = model_dir;
    pp.n_threads = 1;
    pp.max_batch_tokens = batch;
    pp.max_sessions = max_seqs;
    pp.max_context = 512;
    pp.timeout_ms = 20000;
    bool up = sched_rig_pipeline(r, n_workers, pp, &err);
    CHECK_OK(up ? LP_OK : err.status, &err);
    if (!up) return false;
    struct lp_sched_params sp = lp_sched_params_default();
    sp.max_waiting = 4 * N_REQ;
    CHECK_OK(lp_sched_create(&r->s, r->p, &sp, &err), &err);
    return r->s != NULL;
}

// Frees a session on one worker, as any gRPC client can.
static void release_on_worker(struct lp_worker *w, uint64_t session) {
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", lp_worker_port(w));
    struct lp_rpc_channel *ch = NULL;
    struct lp_error err = {0};
    CHECK_OK(lp_rpc_channel_create(&ch, addr, 0, NULL, &err), &err);
    Layerpipe__V1__ReleaseRequest req = LAYERPIPE__V1__RELEASE_REQUEST__INIT;
    req.n_sessions = 1;
    req.sessions = &session;
    uint8_t *buf = NULL, *resp = NULL;
    size_t n = 0, n_resp = 0;
    CHECK_OK(lp_pb_pack(&req.base, &buf, &n, &err), &err);
    CHECK_OK(lp_rpc_call_unary(ch, LP_M_RELEASE, buf, n, &resp, &n_resp, 5000, &err), &err);
    free(buf);
    free(resp);
    lp_rpc_channel_destroy(ch);
}

// Runs requests [0, n) at once; each must finish with N_GEN tokens.
static void run_crowd(struct sched_rig *r, struct got *g, int n) {
    struct lp_error err = {0};
    for (int i = 0; i < n; i++) {
        got_init(&g[i]);
        struct lp_sched_request rq = greedy(i, &g[i], N_GEN);
        uint64_t id;
        CHECK_OK(lp_sched_submit(r->s, &rq, &id, &err), &err);
    }
    for (int i = 0; i < n; i++) {
        got_wait(&g[i]);
        CHECK_MSG(g[i].status == LP_OK && g[i].n == N_GEN, "request %d: %s, %d tokens: %s", i,
                  lp_status_str(g[i].status), g[i].n, g[i].error);
    }
}

static void check_same(const char *what, struct got *ref, struct got *g, int n) {
    int same = 0;
    for (int i = 0; i < n; i++) {
        bool eq = ref[i].n == g[i].n && memcmp(ref[i].ids, g[i].ids, sizeof(int32_t) * g[i].n) == 0;
        same += eq;
        CHECK_MSG(eq, "%s: request %d differs from the request alone", what, i);
    }
    printf("%s: %d/%d requests identical to alone\n", what, same, n);
}

static struct got alone[N_REQ], crowd[N_REQ];

// Alone, one at a time, in one process: the reference.
static void test_reference(void) {
    struct sched_rig r;
    if (!rig_open(&r, 0, N_REQ, 64)) return;
    for (int i = 0; i < N_REQ; i++) {
        struct lp_error err = {0};
        got_init(&alone[i]);
        struct lp_sched_request rq = greedy(i, &alone[i], N_GEN);
        struct lp_sched_event done;
        CHECK_OK(lp_sched_run(r.s, &rq, &done, &err), &err);
        CHECK(done.n_generated == N_GEN && done.stop == LP_STOP_LENGTH);
        CHECK(done.n_prompt == (int)prompts[i].n_ids);
    }
    // the crowd in one process, then with a prefill chunk of 5 (other chunking)
    run_crowd(&r, crowd, N_REQ);
    check_same("one process, 16 at once", alone, crowd, N_REQ);
    struct lp_sched_stats st;
    lp_sched_stats(r.s, &st);
    CHECK(st.running == 0 && st.waiting == 0 && st.kv_blocks_used == 0);
    CHECK(st.generation_tokens == 2 * N_REQ * N_GEN);
    CHECK(st.requests_finished == 2 * N_REQ && st.requests_failed == 0);
    sched_rig_close(&r);
    if (!rig_open(&r, 0, N_REQ, 5)) return;
    run_crowd(&r, crowd, N_REQ);
    check_same("one process, 16 at once, chunks of 5", alone, crowd, N_REQ);
    sched_rig_close(&r);
}

// A seeded sampling request: the same tokens alone and among others.
static void test_seeded(void) {
    struct sched_rig r;
    if (!rig_open(&r, 0, 8, 64)) return;
    struct got a, b, others[7];
    struct lp_error err = {0};
    got_init(&a);
    struct lp_sched_request rq = greedy(3, &a, 32);
    rq.sampling.temperature = 0.9f;
    rq.sampling.top_k = 40;
    rq.sampling.seed = 1234;
    CHECK_OK(lp_sched_run(r.s, &rq, NULL, &err), &err);
    for (int i = 0; i < 7; i++) {
        got_init(&others[i]);
        struct lp_sched_request o = greedy(i + 5, &others[i], 32);
        o.sampling = rq.sampling;
        o.sampling.seed = 99 + (uint64_t)i;
        uint64_t id;
        CHECK_OK(lp_sched_submit(r.s, &o, &id, &err), &err);
    }
    got_init(&b);
    rq.user = &b;
    CHECK_OK(lp_sched_run(r.s, &rq, NULL, &err), &err);
    for (int i = 0; i < 7; i++) got_wait(&others[i]);
    CHECK_MSG(a.n == 32 && b.n == 32 && memcmp(a.ids, b.ids, sizeof a.ids[0] * 32) == 0,
              "seeded sampling differs in a crowd");
    sched_rig_close(&r);
}

// 16 at once through 3 stages equal the one-process requests alone; then a
// failed step, cancel and the limits.
static void test_pipeline(void) {
    struct sched_rig r;
    if (!rig_open(&r, 2, N_REQ, 64)) return;
    run_crowd(&r, crowd, N_REQ);
    check_same("3 stages, 16 at once", alone, crowd, N_REQ);
    struct lp_stage_stats st[3];
    int n = lp_pipeline_stats(r.p, st, 3);
    CHECK(n == 3);
    for (int i = 0; i < n; i++) {
        CHECK_MSG(st[i].ok && st[i].tokens > 0, "stage %d: no work", i);
        CHECK_MSG(st[i].kv_blocks_used == 0 && st[i].kv_blocks_total > 0,
                  "stage %d: %d of %d KV blocks used after every request ended", i,
                  st[i].kv_blocks_used, st[i].kv_blocks_total);
    }

    // a failed step ends its request only: drop request A's session on the
    // workers, so its next step fails at stage 1; B (another micro-batch) goes on
    struct lp_error err = {0};
    struct got a, b;
    got_init(&a);
    got_init(&b);
    struct lp_sched_request ra = greedy(0, &a, 200), rb = greedy(1, &b, N_GEN);
    uint64_t ida, idb;
    CHECK_OK(lp_sched_submit(r.s, &ra, &ida, &err), &err);
    CHECK_OK(lp_sched_submit(r.s, &rb, &idb, &err), &err);
    for (int t = 0; t < 500; t++) { // until A decodes
        pthread_mutex_lock(&a.mu);
        int k = a.n;
        pthread_mutex_unlock(&a.mu);
        if (k >= 2) break;
        usleep(10000);
    }
    for (int i = 0; i < 2; i++) release_on_worker(r.workers[i], ida); // behind the scheduler's back
    got_wait(&a);
    got_wait(&b);
    CHECK_MSG(a.status != LP_OK && strstr(a.error, "unknown session"),
              "request A after its session vanished: %s: %s", lp_status_str(a.status), a.error);
    CHECK_MSG(b.status == LP_OK && b.n == N_GEN &&
                  memcmp(b.ids, alone[1].ids, sizeof b.ids[0] * N_GEN) == 0,
              "request B beside the failed step: %s, %d tokens", lp_status_str(b.status), b.n);

    // cancel mid-generation frees the KV on every stage
    struct got c;
    got_init(&c);
    struct lp_sched_request rc = greedy(2, &c, 400);
    uint64_t idc;
    CHECK_OK(lp_sched_submit(r.s, &rc, &idc, &err), &err);
    for (int t = 0; t < 500 && c.n < 3; t++) usleep(10000);
    lp_sched_cancel(r.s, idc);
    got_wait(&c);
    CHECK_MSG(c.status == LP_ERR_CANCELLED, "cancelled request: %s", lp_status_str(c.status));
    n = lp_pipeline_stats(r.p, st, 3);
    for (int i = 0; i < n; i++)
        CHECK_MSG(st[i].kv_blocks_used == 0 && st[i].sessions == 0,
                  "stage %d after cancel: %d KV blocks, %d sessions", i, st[i].kv_blocks_used,
                  st[i].sessions);
    // a callback that asks to stop
    struct got d;
    got_init(&d);
    d.stop_after = 5;
    struct lp_sched_request rd = greedy(4, &d, 100);
    CHECK_OK(lp_sched_run(r.s, &rd, NULL, &err), &err);
    CHECK(d.n == 5 && d.stop == LP_STOP_CALLBACK);
    sched_rig_close(&r);
}

// The limits, checked before any event.
static void test_limits(void) {
    struct sched_rig r;
    if (!rig_open(&r, 0, 1, 64)) return;
    struct lp_error err = {0};
    int32_t *big = calloc(600, sizeof *big);
    struct got g;
    got_init(&g);
    struct lp_sched_request rq = greedy(0, &g, 4);
    rq.prompt = big;
    rq.n_prompt = 600;
    uint64_t id;
    CHECK(lp_sched_submit(r.s, &rq, &id, &err) == LP_ERR_INVALID_ARG &&
          strstr(err.msg, "context"));
    big[0] = 1 << 30;
    rq.n_prompt = 3;
    CHECK(lp_sched_submit(r.s, &rq, &id, &err) == LP_ERR_INVALID_ARG &&
          strstr(err.msg, "vocabulary"));
    free(big);
    // one running, the queue (4 * N_REQ) full: the next is BUSY; each asks
    // for nearly the whole context (about a second of decoding on a fast
    // core), so the queue is still full when the last ones arrive
    static struct got q[4 * N_REQ + 2];
    const int n_gen = 490;
    int accepted = 0, busy = 0;
    for (int i = 0; i < 4 * N_REQ + 2; i++) {
        got_init(&q[i]);
        struct lp_sched_request x = greedy(i % N_REQ, &q[i], n_gen);
        enum lp_status st = lp_sched_submit(r.s, &x, &id, &err);
        accepted += st == LP_OK;
        busy += st == LP_ERR_BUSY;
        if (st == LP_OK && i == 0) usleep(200000); // the first one is admitted and running
    }
    CHECK_MSG(accepted == 4 * N_REQ + 1 && busy == 1, "%d accepted, %d busy", accepted, busy);
    lp_sched_destroy(r.s); // ends every unfinished request with CANCELLED
    r.s = NULL;
    // a request may have finished before the destroy (a fast machine); every
    // other one, the queued ones at least, ends CANCELLED
    int cancelled = 0, finished = 0;
    for (int i = 0; i < accepted; i++) {
        got_wait(&q[i]);
        cancelled += q[i].status == LP_ERR_CANCELLED;
        finished += q[i].status == LP_OK && q[i].n == n_gen;
    }
    CHECK_MSG(cancelled + finished == accepted && cancelled >= accepted - 2,
              "after destroy: %d cancelled, %d finished, of %d accepted", cancelled, finished,
              accepted);
    g.done = true;
    sched_rig_close(&r);
}

// A long prompt arriving while 8 streams decode is prefilled over many
// steps, and the streams keep getting a token every step meanwhile.
static void test_long_prompt(void) {
    struct sched_rig r;
    if (!rig_open(&r, 0, 9, 16)) return;
    struct lp_error err = {0};
    static struct got s8[8];
    for (int i = 0; i < 8; i++) {
        got_init(&s8[i]);
        struct lp_sched_request rq = greedy(i, &s8[i], 120);
        uint64_t id;
        CHECK_OK(lp_sched_submit(r.s, &rq, &id, &err), &err);
    }
    for (int t = 0; t < 1000; t++) {
        int min = 1 << 30;
        for (int i = 0; i < 8; i++) min = s8[i].n < min ? s8[i].n : min;
        if (min >= 2) break;
        usleep(5000);
    }
    int32_t long_prompt[300];
    for (int i = 0; i < 300; i++) long_prompt[i] = prompts[i % N_REQ].ids[i % prompts[i % N_REQ].n_ids];
    struct got lp;
    got_init(&lp);
    struct lp_sched_request rq = greedy(0, &lp, 2);
    rq.prompt = long_prompt;
    rq.n_prompt = 300;
    uint64_t id;
    double t0 = lp_sched_now();
    CHECK_OK(lp_sched_submit(r.s, &rq, &id, &err), &err);
    got_wait(&lp);
    double t1 = lp.n ? lp.at[0] : lp_sched_now();
    // 16-token steps with 8 decode rows: 8 prompt tokens a step, ~38 steps
    for (int i = 0; i < 8; i++) {
        got_wait(&s8[i]);
        int during = 0;
        for (int k = 0; k < s8[i].n; k++) during += s8[i].at[k] > t0 && s8[i].at[k] < t1;
        CHECK_MSG(during >= 30, "stream %d got %d tokens while a 300-token prompt prefilled", i,
                  during);
    }
    CHECK(lp.status == LP_OK && lp.n == 2);
    sched_rig_close(&r);
}

// A copy of the bundled model whose final norm weights are NaN.
static bool write_nan_model(char *dir, size_t cap) {
    const char *work = getenv("LP_WORK_DIR");
    snprintf(dir, cap, "%s/sched_nan_model", work ? work : "/tmp");
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "mkdir -p '%s' && cp '%s'/* '%s'/", dir, model_dir, dir);
    if (system(cmd) != 0) return false;
    char path[1200];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    FILE *fp = fopen(path, "r+b");
    if (!fp) return false;
    uint64_t n = 0;
    bool ok = fread(&n, 8, 1, fp) == 1 && n < (1u << 24);
    char *hdr = ok ? calloc(1, n + 1) : NULL;
    ok = hdr && fread(hdr, 1, n, fp) == n;
    json_t *root = ok ? json_loads(hdr, 0, NULL) : NULL;
    json_t *t = json_object_get(root, "model.norm.weight");
    json_t *offs = json_object_get(t, "data_offsets");
    const char *dtype = json_string_value(json_object_get(t, "dtype"));
    ok = offs && dtype;
    if (ok) {
        long begin = (long)json_integer_value(json_array_get(offs, 0));
        long end = (long)json_integer_value(json_array_get(offs, 1));
        fseek(fp, (long)(8 + n) + begin, SEEK_SET);
        for (long b = begin; b < end; b += strcmp(dtype, "F32") == 0 ? 4 : 2) {
            uint32_t f32 = 0x7fc00000u;
            uint16_t h = strcmp(dtype, "F16") == 0 ? 0x7e00 : 0x7fc0;
            ok &= strcmp(dtype, "F32") == 0 ? fwrite(&f32, 4, 1, fp) == 1 : fwrite(&h, 2, 1, fp) == 1;
        }
    }
    json_decref(root);
    free(hdr);
    return fclose(fp) == 0 && ok;
}

static void test_nan_logits(void) {
    char dir[1200];
    CHECK(write_nan_model(dir, sizeof dir));
    struct lp_pipeline_params pp = lp_pipeline_params_default();
    pp.model_dir = dir;
    pp.n_threads = 1;
    pp.max_context = 128;
    struct lp_pipeline *p = NULL;
    struct lp_sched *s = NULL;
    struct lp_error err = {0};
    CHECK_OK(lp_pipeline_create(&p, &pp, &err), &err);
    struct lp_sched_params sp = lp_sched_params_default();
    if (p) CHECK_OK(lp_sched_create(&s, p, &sp, &err), &err);
    if (s) {
        struct got g;
        got_init(&g);
        struct lp_sched_request rq = greedy(0, &g, 8);
        CHECK(lp_sched_run(s, &rq, NULL, &err) == LP_ERR_INTERNAL && strstr(err.msg, "NaN"));
        CHECK(g.n == 0);
    }
    lp_sched_destroy(s);
    lp_pipeline_destroy(p);
}

int main(void) {
    const char *src = getenv("LP_SOURCE_DIR");
    snprintf(model_dir, sizeof model_dir, "%s/models/layerpipe-tiny-8bit", src ? src : ".");
    struct lp_tokenizer *tok = NULL;
    struct lp_error err = {0};
    CHECK_OK(lp_tokenizer_load(&tok, model_dir, &err), &err);
    if (!tok) return lp_test_finish("cluster/test_sched");
    for (int i = 0; i < N_REQ; i++) {
        lp_token_list_init(&prompts[i]);
        CHECK_OK(lp_tokenizer_encode(tok, texts[i], strlen(texts[i]), 0, &prompts[i], &err), &err);
    }
    test_reference();
    test_seeded();
    test_pipeline();
    test_limits();
    test_long_prompt();
    test_nan_logits();
    for (int i = 0; i < N_REQ; i++) lp_token_list_deinit(&prompts[i]);
    lp_tokenizer_destroy(tok);
    return lp_test_finish("cluster/test_sched");
}
