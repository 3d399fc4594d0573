// SPDX-License-Identifier: MIT
// test_limits.c -- what a stage refuses before doing any work (issue 11's
// probe findings), against real `layerpipe worker` processes:
//  - another protocol version (Hello, Configure), an unknown KV dtype;
//  - a Configure whose KV pool would not fit in memory: refused at once,
//    with the worker's memory untouched;
//  - a Release of millions of ids, or of more than 4096: refused in
//    milliseconds, and Health answers within 100 ms meanwhile and while a
//    Configure loads layers;
//  - a stage as its own successor, and two stages pointed at each other;
//  - a step that does not increase on its stream;
//  - Activations on the coordinator's Sink from anyone but its last stage.
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cluster/fault_fixture.h"
#include "layerpipe/cluster.h"
#include "lp_test.h"
#include "model_fixture.h"

// a tiny 28-layer model (the shape test_stage_protocol uses; its own folder, as
// tests run in parallel)
#define TINY_GEN                                                                                   \
    "--seed 201 --format hf-bf16 --tied 1 --layers 28 --hidden 64 --heads 4 --kv-heads 2 "        \
    "--head-dim 32 --intermediate 128 --vocab 256"

static char model_dir[1100];
static uint64_t fingerprint;

static Layerpipe__V1__ConfigureRequest base_configure(const char *succ, bool to_sink) {
    Layerpipe__V1__ConfigureRequest c = LAYERPIPE__V1__CONFIGURE_REQUEST__INIT;
    c.model_fingerprint = fingerprint;
    c.layer_begin = 0;
    c.layer_end = 4;
    c.successor = (char *)succ;
    c.successor_is_sink = to_sink;
    c.max_sessions = 2;
    c.max_context = 64;
    c.wire_dtype = LAYERPIPE__V1__DTYPE__DTYPE_F32;
    c.kv_dtype = LAYERPIPE__V1__DTYPE__DTYPE_F32;
    c.max_batch_tokens = 8;
    c.stage_index = 1;
    c.protocol_version = LP_PROTOCOL_VERSION;
    return c;
}

static enum lp_status configure(const char *addr, Layerpipe__V1__ConfigureRequest *c,
                                struct lp_error *err) {
    uint8_t *resp = NULL;
    size_t n = 0;
    enum lp_status st = ff_call(addr, LP_M_CONFIGURE, &c->base, &resp, &n, 30000, err);
    free(resp);
    return st;
}

static uint64_t rss_of(pid_t pid) {
    char path[64], buf[4096];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    ff_read_file(path, buf, sizeof buf);
    const char *p = strstr(buf, "VmRSS:");
    return p ? strtoull(p + 6, NULL, 10) * 1024 : 0;
}

// Health latency from another thread while something slow runs.
struct health_probe {
    const char *addr;
    volatile int stop;
    double worst_ms;
    int n, failed;
};

static void *probe_main(void *arg) {
    struct health_probe *h = arg;
    while (!h->stop) {
        struct lp_error e = {0};
        double t0 = ff_now();
        int ok = ff_health_serving(h->addr, &e);
        double ms = (ff_now() - t0) * 1e3;
        if (!ok) h->failed++;
        if (ms > h->worst_ms) h->worst_ms = ms;
        h->n++;
        usleep(5000);
    }
    return NULL;
}

static void test_versions_and_enums(const struct ff_worker *w, const char *sink) {
    struct lp_error err = {0};
    Layerpipe__V1__HelloRequest hr = LAYERPIPE__V1__HELLO_REQUEST__INIT;
    hr.protocol_version = 1;
    uint8_t *resp = NULL;
    size_t n = 0;
    CHECK(ff_call(w->addr, LP_M_HELLO, &hr.base, &resp, &n, 3000, &err) == LP_ERR_UNSUPPORTED &&
          strstr(err.msg, "protocol"));
    free(resp);
    Layerpipe__V1__ConfigureRequest c = base_configure(sink, true);
    c.protocol_version = 0;
    CHECK(configure(w->addr, &c, &err) == LP_ERR_UNSUPPORTED && strstr(err.msg, "protocol"));
    c = base_configure(sink, true);
    c.kv_dtype = (Layerpipe__V1__DType)99;
    CHECK(configure(w->addr, &c, &err) == LP_ERR_INVALID_ARG && strstr(err.msg, "KV dtype 99"));
}

static void test_memory(const struct ff_worker *w, const char *sink) {
    struct lp_error err = {0};
    uint64_t before = rss_of(w->pid);
    Layerpipe__V1__ConfigureRequest c = base_configure(sink, true);
    c.max_sessions = 4096;
    c.max_context = 1u << 24;
    c.kv_blocks = (1u << 31) - 1;
    double t0 = ff_now();
    enum lp_status st = configure(w->addr, &c, &err);
    double dt = ff_now() - t0;
    uint64_t after = rss_of(w->pid);
    printf("Configure asking for 2^31 KV blocks: %s in %.3f s: %s; RSS %llu -> %llu MB\n",
           lp_status_str(st), dt, err.msg, (unsigned long long)(before >> 20),
           (unsigned long long)(after >> 20));
    CHECK(st == LP_ERR_BUSY || st == LP_ERR_NOMEM);
    CHECK(strstr(err.msg, "GB are free") != NULL);
    CHECK_MSG(dt < 2.0 && after < before + (64u << 20), "the refusal took %.2f s, RSS grew %llu MB",
              dt, (unsigned long long)((after - before) >> 20));
}

static void test_release_and_health(const struct ff_worker *w, const char *sink) {
    struct lp_error err = {0};
    struct health_probe hp = {.addr = w->addr};
    pthread_t t;
    pthread_create(&t, NULL, probe_main, &hp);
    // ten million ids: refused before unpacking
    size_t n_ids = 10u * 1000 * 1000;
    uint64_t *ids = malloc(n_ids * sizeof *ids);
    for (size_t i = 0; i < n_ids; i++) ids[i] = i + 1;
    Layerpipe__V1__ReleaseRequest r = LAYERPIPE__V1__RELEASE_REQUEST__INIT;
    r.n_sessions = n_ids;
    r.sessions = ids;
    uint8_t *resp = NULL;
    size_t n = 0;
    double t0 = ff_now();
    enum lp_status st = ff_call(w->addr, LP_M_RELEASE, &r.base, &resp, &n, 30000, &err);
    double dt = ff_now() - t0;
    free(resp);
    printf("Release of 10M ids: %s in %.3f s: %.120s\n", lp_status_str(st), dt, err.msg);
    CHECK(st != LP_OK && dt < 3.0);
    r.n_sessions = 5000;
    CHECK(ff_call(w->addr, LP_M_RELEASE, &r.base, &resp, &n, 3000, &err) == LP_ERR_INVALID_ARG &&
          strstr(err.msg, "4096"));
    free(ids);
    // a Configure that loads layers (the 28-layer model) while Health is probed
    for (int k = 0; k < 3; k++) {
        Layerpipe__V1__ConfigureRequest c = base_configure(sink, true);
        c.layer_end = 28;
        c.max_sessions = 64;
        c.max_context = 4096;
        CHECK_OK(configure(w->addr, &c, &err), &err);
    }
    hp.stop = 1;
    pthread_join(t, NULL);
    printf("Health during Release and Configure: %d checks, worst %.1f ms, %d failed\n", hp.n,
           hp.worst_ms, hp.failed);
    CHECK(hp.failed == 0 && hp.n > 0);
    CHECK_MSG(hp.worst_ms < 100.0, "Health took %.1f ms", hp.worst_ms);
}

static void test_ring(const struct ff_worker *a, const struct ff_worker *b, const char *sink) {
    struct lp_error err = {0};
    Layerpipe__V1__ConfigureRequest c = base_configure(a->addr, false);
    CHECK(configure(a->addr, &c, &err) == LP_ERR_INVALID_ARG && strstr(err.msg, "own address"));
    c = base_configure(b->addr, false);
    CHECK_OK(configure(a->addr, &c, &err), &err); // a -> b (b not configured yet)
    c = base_configure(a->addr, false);
    enum lp_status st = configure(b->addr, &c, &err);
    printf("b -> a while a -> b: %s: %s\n", lp_status_str(st), err.msg);
    CHECK(st == LP_ERR_INVALID_ARG && strstr(err.msg, "loop"));
    c = base_configure(sink, true); // and a proper end: b -> Sink works
    CHECK_OK(configure(b->addr, &c, &err), &err);
}

// ---- a Forward stream by hand ----

struct fwd {
    pthread_mutex_t mu;
    int n_ok, n_fail, n_out_of_order;
    char fail[512];
    bool ended;
    enum lp_status st;
    char msg[512];
};

static void on_reply(void *user, const uint8_t *msg, size_t bytes) {
    struct fwd *f = user;
    Layerpipe__V1__Ack *a = layerpipe__v1__ack__unpack(NULL, bytes, msg);
    pthread_mutex_lock(&f->mu);
    if (a && a->ok) f->n_ok++;
    if (a && !a->ok) {
        f->n_fail++;
        if (strstr(a->error, "after step 5")) f->n_out_of_order++;
        snprintf(f->fail, sizeof f->fail, "%s", a->error);
    }
    pthread_mutex_unlock(&f->mu);
    if (a) layerpipe__v1__ack__free_unpacked(a, NULL);
}

static void on_end(void *user, enum lp_status st, const char *msg) {
    struct fwd *f = user;
    pthread_mutex_lock(&f->mu);
    f->ended = true;
    f->st = st;
    snprintf(f->msg, sizeof f->msg, "%s", msg);
    pthread_mutex_unlock(&f->mu);
}

static uint8_t *acts(uint64_t step, uint64_t session, uint32_t pos0, int hidden, size_t *len) {
    Layerpipe__V1__Segment sg = LAYERPIPE__V1__SEGMENT__INIT, *sp = &sg;
    sg.session = session;
    sg.pos0 = pos0;
    sg.n_tokens = 1;
    Layerpipe__V1__Activations a = LAYERPIPE__V1__ACTIVATIONS__INIT;
    a.step = step;
    a.n_segments = 1;
    a.segments = &sp;
    a.n_rows = 1;
    a.hidden = (uint32_t)hidden;
    float *row = calloc((size_t)hidden, sizeof *row);
    for (int i = 0; i < hidden; i++) row[i] = 0.01f * (float)(i % 7);
    a.data.data = (uint8_t *)row;
    a.data.len = (size_t)hidden * 4;
    uint8_t *buf = NULL;
    lp_pb_pack(&a.base, &buf, len, NULL);
    free(row);
    return buf;
}

static void stream_send(const char *addr, const char *method, uint8_t **msgs, size_t *lens, int n,
                        struct fwd *f) {
    memset(f, 0, sizeof *f);
    pthread_mutex_init(&f->mu, NULL);
    struct lp_rpc_channel *ch = NULL;
    struct lp_rpc_client_stream *s = NULL;
    struct lp_error err = {0};
    CHECK_OK(lp_rpc_channel_create(&ch, addr, LP_MAX_MESSAGE_BYTES, NULL, &err), &err);
    if (ch) CHECK_OK(lp_rpc_stream_open(ch, method, on_reply, on_end, f, &s, &err), &err);
    for (int i = 0; s && i < n; i++) lp_rpc_client_stream_write(s, msgs[i], lens[i], NULL);
    lp_rpc_client_stream_close(s, 10000);
    lp_rpc_channel_destroy(ch);
}

static void test_steps(const struct ff_worker *w, int hidden) {
    uint8_t *m[3];
    size_t l[3];
    m[0] = acts(5, 77, 0, hidden, &l[0]);
    m[1] = acts(5, 77, 1, hidden, &l[1]); // the same step again
    m[2] = acts(4, 77, 1, hidden, &l[2]); // and an older one
    struct fwd f;
    stream_send(w->addr, LP_M_FORWARD, m, l, 3, &f);
    // (step 5 itself may fail on: this stage's successor is a worker standing in
    // for a Sink, whose stream ends; only the order refusals are the point)
    printf("steps 5, 5, 4: %d acks, %d refused as out of order\n", f.n_ok + f.n_fail,
           f.n_out_of_order);
    CHECK(f.n_out_of_order == 2 && f.n_ok + f.n_fail >= 3);
    for (int i = 0; i < 3; i++) free(m[i]);
}

// A stranger on the Sink: refused, and the pipeline goes on.
static void test_sink(void) {
    struct ff_worker w;
    if (ff_worker_start(&w, model_dir, "sinkw") != 0) return;
    const char *addrs[1] = {w.addr};
    struct lp_pipeline_params pp = lp_pipeline_params_default();
    pp.model_dir = model_dir;
    pp.workers = addrs;
    pp.n_workers = 1;
    pp.plan = "14,14";
    pp.n_threads = 1;
    pp.max_context = 64;
    struct lp_pipeline *p = NULL;
    struct lp_sched *s = NULL;
    struct lp_error err = {0};
    CHECK_OK(lp_pipeline_create(&p, &pp, &err), &err);
    struct lp_sched_params sp = lp_sched_params_default();
    if (p) CHECK_OK(lp_sched_create(&s, p, &sp, &err), &err);
    if (s) {
        struct lp_stage_stats st[2];
        lp_pipeline_stats(p, st, 2);
        size_t len;
        uint8_t *m = acts(1, 1, 0, lp_pipeline_config(p)->hidden_size, &len);
        struct fwd f;
        stream_send(st[0].address, LP_M_SINK, &m, &len, 1, &f);
        free(m);
        printf("a stranger on the Sink: %s: %s\n", lp_status_str(f.st), f.msg);
        CHECK(f.ended && f.st == LP_ERR_INVALID_ARG && strstr(f.msg, "not its last stage"));
        int32_t prompt[3] = {1, 2, 3};
        struct lp_sched_request rq = {.prompt = prompt, .n_prompt = 3, .max_new_tokens = 4,
                                      .ignore_eos = true,
                                      .sampling = lp_sampler_params_default()};
        struct lp_sched_event done;
        CHECK_OK(lp_sched_run(s, &rq, &done, &err), &err);
        CHECK(done.n_generated == 4);
    }
    lp_sched_destroy(s);
    lp_pipeline_destroy(p);
    ff_stop(w.pid);
}

int main(void) {
    if (ff_setup("limits") != 0) return 1;
    if (lp_fixture_model("limits_tiny", TINY_GEN, model_dir, sizeof model_dir) != 0) return 1;
    struct ff_worker a, b, sinkw;
    if (ff_worker_start(&a, model_dir, "a") != 0 || ff_worker_start(&b, model_dir, "b") != 0 ||
        ff_worker_start(&sinkw, model_dir, "sink") != 0) {
        CHECK_MSG(0, "workers did not start");
        return lp_test_finish("cluster/test_limits");
    }
    struct lp_error err = {0};
    Layerpipe__V1__HelloReply *h = ff_hello(a.addr, &err);
    CHECK(h != NULL);
    if (!h) return lp_test_finish("cluster/test_limits");
    fingerprint = h->model_fingerprint;
    layerpipe__v1__hello_reply__free_unpacked(h, NULL);
    // a worker stands in for the Sink (it answers Health, which Configure checks)
    test_versions_and_enums(&a, sinkw.addr);
    test_memory(&a, sinkw.addr);
    test_release_and_health(&a, sinkw.addr);
    test_ring(&a, &b, sinkw.addr);
    Layerpipe__V1__ConfigureRequest c = base_configure(sinkw.addr, true);
    CHECK_OK(configure(b.addr, &c, &err), &err);
    struct lp_model *m = NULL;
    struct lp_model_load_params none = {0, 0, false, false};
    CHECK_OK(lp_model_open(&m, model_dir, &none, &err), &err);
    test_steps(&b, m ? lp_model_config(m)->hidden_size : 0);
    lp_model_close(m);
    test_sink();
    return lp_test_finish("cluster/test_limits");
}
