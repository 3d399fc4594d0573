// SPDX-License-Identifier: MIT
// test_stage_protocol.c -- one real worker process and this test as a
// hand-made coordinator (rpc.h + protobuf-c) with its own Sink in-process:
// Hello's fields; Configure refusing a different model's fingerprint and bad
// layer ranges; Forward before Configure; a valid Forward reaching the Sink
// with the right rows and acknowledged ok; then hostile Forward messages --
// wrong width, unknown dtype, short payload, zero rows, segments not
// covering the rows, unknown session, position gap, too many rows, bytes
// that are not protobuf, a message over the size limit -- each ending its
// stream with a gRPC error naming the problem while the worker lives on
// and still answers Hello; Release frees the session.
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fault_fixture.h"
#include "lp_test.h"

#define TINY_GEN                                                                                   \
    "--seed 201 --format hf-bf16 --tied 1 --layers 28 --hidden 64 --heads 4 --kv-heads 2 "        \
    "--head-dim 32 --intermediate 128 --vocab 256"
#define HIDDEN 64
#define MAX_ROWS 8
#define BIG_MSG ((size_t)256 << 20)

static struct ff_worker worker;
static struct lp_rpc_channel *ch;

// ---- the Sink (its server's thread) ----

static struct {
    pthread_mutex_t mu;
    int n_msgs, n_health;
    uint32_t last_rows, last_hidden;
    uint64_t last_step;
    int bad;
} sink = {PTHREAD_MUTEX_INITIALIZER};

static enum lp_status sink_open(void *user, struct lp_rpc_stream *s, void **su,
                                struct lp_error *err) {
    (void)user;
    (void)s;
    (void)err;
    *su = NULL;
    return LP_OK;
}

static enum lp_status sink_msg(void *user, void *su, struct lp_rpc_stream *s, const uint8_t *msg,
                               size_t bytes, struct lp_error *err) {
    (void)user;
    (void)su;
    Layerpipe__V1__Activations *a = layerpipe__v1__activations__unpack(NULL, bytes, msg);
    pthread_mutex_lock(&sink.mu);
    sink.n_msgs++;
    if (!a) {
        sink.bad++;
    } else {
        sink.last_rows = a->n_rows;
        sink.last_hidden = a->hidden;
        sink.last_step = a->step;
        if (a->data.len != (size_t)a->n_rows * a->hidden * 4) sink.bad++;
    }
    pthread_mutex_unlock(&sink.mu);
    if (!a) return lp_error_set(err, LP_ERR_INVALID_ARG, "sink: not Activations");
    Layerpipe__V1__Ack ack = LAYERPIPE__V1__ACK__INIT;
    ack.step = a->step;
    ack.ok = true;
    layerpipe__v1__activations__free_unpacked(a, NULL);
    uint8_t *buf;
    size_t n;
    enum lp_status pst = lp_pb_pack(&ack.base, &buf, &n, err);
    if (pst != LP_OK) return pst;
    lp_rpc_stream_send(s, buf, n, NULL);
    free(buf);
    return LP_OK;
}

static void sink_close(void *user, void *su, enum lp_status st, const char *msg) {
    (void)user;
    (void)su;
    (void)st;
    (void)msg;
}

static enum lp_status sink_health(void *user, const uint8_t *req, size_t n_req, uint8_t **resp,
                                  size_t *n_resp, struct lp_error *err) {
    (void)user;
    (void)req;
    (void)n_req;
    (void)err;
    pthread_mutex_lock(&sink.mu);
    sink.n_health++;
    pthread_mutex_unlock(&sink.mu);
    *resp = NULL; // an empty HealthCheckResponse
    *n_resp = 0;
    return LP_OK;
}

// ---- a client Forward stream ----

struct fwd {
    pthread_mutex_t mu;
    int n_acks, n_ok, n_fail;
    uint64_t last_step, fail_step;
    uint32_t fail_status;   // the lp_status code in the last failure Ack
    char fail_msg[1024];
    bool ended;
    enum lp_status st;
    char msg[1024];
};

static void fwd_reply(void *user, const uint8_t *msg, size_t bytes) {
    struct fwd *f = user;
    Layerpipe__V1__Ack *a = layerpipe__v1__ack__unpack(NULL, bytes, msg);
    pthread_mutex_lock(&f->mu);
    f->n_acks++;
    if (a && a->ok) f->n_ok++;
    if (a && !a->ok) {
        f->n_fail++;
        f->fail_step = a->step;
        f->fail_status = a->status;
        snprintf(f->fail_msg, sizeof f->fail_msg, "%s", a->error);
    }
    if (a) f->last_step = a->step;
    pthread_mutex_unlock(&f->mu);
    if (a) layerpipe__v1__ack__free_unpacked(a, NULL);
}

static void fwd_end(void *user, enum lp_status st, const char *msg) {
    struct fwd *f = user;
    pthread_mutex_lock(&f->mu);
    f->ended = true;
    f->st = st;
    snprintf(f->msg, sizeof f->msg, "%s", msg ? msg : "");
    pthread_mutex_unlock(&f->mu);
}

// Sends the messages on one new stream, half-closes, waits for the end.
static void forward_raw(struct lp_rpc_channel *c, const uint8_t *const *msgs, const size_t *lens,
                        int n, struct fwd *f) {
    memset(f, 0, sizeof *f);
    pthread_mutex_init(&f->mu, NULL);
    struct lp_error err = {0};
    struct lp_rpc_client_stream *s = NULL;
    enum lp_status ost = lp_rpc_stream_open(c, LP_M_FORWARD, fwd_reply, fwd_end, f, &s, &err);
    if (ost != LP_OK) {
        f->ended = true;
        f->st = ost;
        snprintf(f->msg, sizeof f->msg, "open: %s", err.msg);
        return;
    }
    for (int i = 0; i < n; i++) lp_rpc_client_stream_write(s, msgs[i], lens[i], NULL);
    lp_rpc_client_stream_close(s, 10000);
    pthread_mutex_destroy(&f->mu);
}

// An Activations message: one segment per (session, pos0, n_tokens), rows
// filled with small values.
struct seg_spec {
    uint64_t session;
    uint32_t pos0, n_tokens;
    bool all_logits;
};

static uint8_t *make_acts(uint64_t step, const struct seg_spec *segs, int n_segs, uint32_t n_rows,
                          uint32_t hidden, int dtype, size_t data_bytes, size_t *len) {
    Layerpipe__V1__Activations a = LAYERPIPE__V1__ACTIVATIONS__INIT;
    Layerpipe__V1__Segment sv[8], *sp[8];
    for (int i = 0; i < n_segs; i++) {
        layerpipe__v1__segment__init(&sv[i]);
        sv[i].session = segs[i].session;
        sv[i].pos0 = segs[i].pos0;
        sv[i].n_tokens = segs[i].n_tokens;
        sv[i].all_logits = segs[i].all_logits;
        sp[i] = &sv[i];
    }
    a.step = step;
    a.n_segments = (size_t)n_segs;
    a.segments = sp;
    a.dtype = (Layerpipe__V1__DType)dtype;
    a.n_rows = n_rows;
    a.hidden = hidden;
    uint8_t *data = calloc(data_bytes ? data_bytes : 1, 1);
    if (!data) return NULL;
    if (dtype == 0)
        for (size_t i = 0; i + 4 <= data_bytes; i += 4) {
            float v = 0.01f * (float)((i / 4) % 17) - 0.08f;
            memcpy(data + i, &v, 4);
        }
    a.data.data = data;
    a.data.len = data_bytes;
    uint8_t *buf = NULL;
    struct lp_error err = {0};
    if (lp_pb_pack(&a.base, &buf, len, &err) != LP_OK) buf = NULL;
    free(data);
    return buf;
}

static void forward_one(struct lp_rpc_channel *c, const uint8_t *msg, size_t len, struct fwd *f) {
    const uint8_t *m[1] = {msg};
    size_t l[1] = {len};
    forward_raw(c, m, l, 1, f);
}

static void worker_still_fine(const char *what) {
    struct lp_error err = {0};
    CHECK_MSG(ff_alive(worker.pid), "%s: the worker process died", what);
    Layerpipe__V1__HelloReply *h = ff_hello(worker.addr, &err);
    CHECK_MSG(h != NULL, "%s: Hello after it failed: %s", what, err.msg);
    if (h) layerpipe__v1__hello_reply__free_unpacked(h, NULL);
}

// One hostile message: the step is refused with an error naming `want`:
// a failure Ack for that step (the stream goes on and ends cleanly), or, for
// bytes that are no Activations at all, the stream ends with an error.
static void expect_rejected(const char *what, uint8_t *msg, size_t len, const char *want) {
    struct fwd f;
    CHECK_MSG(msg != NULL, "%s: cannot build the message", what);
    if (!msg) return;
    double t0 = ff_now();
    forward_one(ch, msg, len, &f);
    double dt = ff_now() - t0;
    free(msg);
    const char *why = f.n_fail ? f.fail_msg : f.msg;
    printf("%-28s -> %.2f s, %s: %s\n", what, dt,
           f.n_fail ? lp_status_str((enum lp_status)f.fail_status) : lp_status_str(f.st), why);
    CHECK_MSG(dt < 3.0, "%s: the error took %.2f s to arrive", what, dt);
    CHECK_MSG(f.n_fail == 1 ? f.ended && f.st == LP_OK : f.ended && f.st != LP_OK,
              "%s: %d failure Acks, stream ended %s", what, f.n_fail, lp_status_str(f.st));
    CHECK_MSG(f.n_fail == 0 || (f.fail_status != LP_OK && f.fail_step == f.last_step),
              "%s: failure Ack with status %u for step %llu", what, f.fail_status,
              (unsigned long long)f.fail_step);
    CHECK_MSG(f.n_ok == 0, "%s: got %d ok Acks", what, f.n_ok);
    CHECK_MSG(!want || strstr(why, want), "%s: error '%s' does not mention '%s'", what, why,
              want);
    worker_still_fine(what);
}

static uint32_t stats_sessions(void) {
    struct lp_error err = {0};
    Layerpipe__V1__StatsReply *s = ff_stats(worker.addr, &err);
    CHECK_MSG(s != NULL, "Stats: %s", err.msg);
    uint32_t n = s ? s->sessions : 9999;
    if (s) layerpipe__v1__stats_reply__free_unpacked(s, NULL);
    return n;
}

static enum lp_status configure(uint64_t fp, uint32_t begin, uint32_t end, const char *succ,
                                Layerpipe__V1__ConfigureReply **reply, struct lp_error *err) {
    Layerpipe__V1__ConfigureRequest c = LAYERPIPE__V1__CONFIGURE_REQUEST__INIT;
    c.model_fingerprint = fp;
    c.layer_begin = begin;
    c.layer_end = end;
    c.successor = (char *)succ;
    c.successor_is_sink = true;
    c.max_sessions = 2;
    c.max_context = 64;
    c.wire_dtype = LAYERPIPE__V1__DTYPE__DTYPE_F32;
    c.kv_dtype = LAYERPIPE__V1__DTYPE__DTYPE_F32;
    c.max_batch_tokens = MAX_ROWS;
    c.stage_index = 1;
    c.protocol_version = LP_PROTOCOL_VERSION;
    uint8_t *resp = NULL;
    size_t n = 0;
    enum lp_status st = ff_call(worker.addr, LP_M_CONFIGURE, &c.base, &resp, &n, 30000, err);
    if (st == LP_OK && reply) *reply = layerpipe__v1__configure_reply__unpack(NULL, n, resp);
    free(resp);
    return st;
}

int main(void) {
    double t_start = ff_now();
    if (ff_setup("stageproto") != 0) return 1;
    char dir[1024];
    if (lp_fixture_model("faults_tiny", TINY_GEN, dir, sizeof dir) != 0) return 1;
    if (ff_worker_start(&worker, dir, "w1") != 0) {
        CHECK_MSG(0, "worker did not start");
        return lp_test_finish("cluster/test_stage_protocol");
    }
    struct lp_error err = {0};
    CHECK_OK(lp_rpc_channel_create(&ch, worker.addr, BIG_MSG, NULL, &err), &err);

    // Hello
    Layerpipe__V1__HelloReply *h = ff_hello(worker.addr, &err);
    CHECK_MSG(h != NULL, "Hello: %s", err.msg);
    uint64_t fp = 0;
    if (h) {
        printf("Hello: protocol %u, version %s, fingerprint %016llx, %u layers, device '%s', "
               "free %.1f GB, %.1f GB/s, listen %s\n",
               h->protocol_version, h->version, (unsigned long long)h->model_fingerprint,
               h->n_layers, h->device, (double)h->free_memory_bytes / 1e9, h->measured_gb_s,
               h->listen_address);
        CHECK(h->protocol_version == LP_PROTOCOL_VERSION);
        CHECK(h->model_fingerprint != 0);
        CHECK(h->n_layers == 28);
        CHECK(h->device && strlen(h->device) > 0);
        CHECK(h->free_memory_bytes > ((uint64_t)64 << 20));
        CHECK(h->measured_gb_s > 0);
        CHECK(h->version && h->version[0]);
        CHECK_MSG(h->listen_address && strcmp(h->listen_address, worker.addr) == 0,
                  "Hello listen_address '%s', serving on %s", h->listen_address, worker.addr);
        fp = h->model_fingerprint;
        layerpipe__v1__hello_reply__free_unpacked(h, NULL);
    }
    // Stats before Configure answers (nothing open)
    CHECK(stats_sessions() == 0);

    // Forward before Configure
    struct seg_spec s1 = {1, 0, 3, false};
    size_t len;
    uint8_t *m = make_acts(1, &s1, 1, 3, HIDDEN, 0, 3 * HIDDEN * 4, &len);
    expect_rejected("Forward before Configure", m, len, "before Configure");

    // the Sink the worker's last stage streams to
    struct lp_rpc_server *srv = NULL;
    CHECK_OK(lp_rpc_server_create(&srv, "127.0.0.1:0", 0, NULL, &err), &err);
    if (!srv) return lp_test_finish("cluster/test_stage_protocol");
    static const struct lp_rpc_stream_handler sh = {sink_open, sink_msg, sink_close};
    CHECK_OK(lp_rpc_server_add_stream(srv, LP_M_SINK, &sh, NULL, &err), &err);
    CHECK_OK(lp_rpc_server_add_unary(srv, LP_M_HEALTH, sink_health, NULL, &err), &err);
    CHECK_OK(lp_rpc_server_start(srv, &err), &err);
    char sink_addr[64];
    snprintf(sink_addr, sizeof sink_addr, "127.0.0.1:%d", lp_rpc_server_port(srv));

    // Configure refusals
    struct lp_error e = {0};
    enum lp_status st = configure(fp ^ 1, 4, 8, sink_addr, NULL, &e);
    printf("wrong fingerprint -> %s: %s\n", lp_status_str(st), e.msg);
    CHECK_MSG(st != LP_OK && strstr(e.msg, "fingerprint"), "wrong fingerprint: %s", e.msg);
    // layerpipe.proto: "must equal the stage's, else INVALID_ARGUMENT"
    CHECK_MSG(st == LP_ERR_INVALID_ARG && strstr(e.msg, "INVALID_ARGUMENT"),
              "wrong fingerprint: the proto promises INVALID_ARGUMENT, got: %s", e.msg);
    const uint32_t bad_ranges[][2] = {{8, 4}, {5, 5}, {20, 29}, {0, 4000000000u}};
    for (size_t i = 0; i < sizeof bad_ranges / sizeof bad_ranges[0]; i++) {
        memset(&e, 0, sizeof e);
        st = configure(fp, bad_ranges[i][0], bad_ranges[i][1], sink_addr, NULL, &e);
        printf("layers [%u, %u) -> %s: %s\n", bad_ranges[i][0], bad_ranges[i][1],
               lp_status_str(st), e.msg);
        CHECK_MSG(st != LP_OK && strstr(e.msg, "layers"), "layers [%u, %u): %s",
                  bad_ranges[i][0], bad_ranges[i][1], e.msg);
    }
    memset(&e, 0, sizeof e);
    st = configure(fp, 4, 8, "127.0.0.1:1", NULL, &e);
    printf("unreachable successor -> %s: %s\n", lp_status_str(st), e.msg);
    CHECK_MSG(st != LP_OK && strstr(e.msg, "127.0.0.1:1"), "unreachable successor: %s", e.msg);
    worker_still_fine("Configure refusals");

    // a valid Configure: layers [4, 8) straight to the Sink
    Layerpipe__V1__ConfigureReply *cr = NULL;
    memset(&e, 0, sizeof e);
    CHECK_OK(configure(fp, 4, 8, sink_addr, &cr, &e), &e);
    CHECK(cr != NULL && cr->weight_bytes > 0);
    if (cr) {
        printf("Configure: %llu weight bytes, %llu KV bytes\n",
               (unsigned long long)cr->weight_bytes, (unsigned long long)cr->kv_bytes);
        layerpipe__v1__configure_reply__free_unpacked(cr, NULL);
    }
    CHECK_MSG(sink.n_health >= 1, "the worker did not health-check its successor");

    // valid Forwards on one stream: session 7, 3 prompt rows then 2 more with all logits
    {
        struct seg_spec a = {7, 0, 3, false}, b = {7, 3, 2, true};
        size_t l[2];
        uint8_t *ms[2] = {make_acts(10, &a, 1, 3, HIDDEN, 0, 3 * HIDDEN * 4, &l[0]),
                          make_acts(11, &b, 1, 2, HIDDEN, 0, 2 * HIDDEN * 4, &l[1])};
        struct fwd f;
        // first alone, to see its row count on the Sink
        forward_one(ch, ms[0], l[0], &f);
        CHECK_MSG(f.st == LP_OK, "valid Forward: %s", f.msg);
        CHECK_MSG(f.n_acks == 1 && f.n_ok == 1 && f.last_step == 10,
                  "valid Forward: %d acks, %d ok, step %llu", f.n_acks, f.n_ok,
                  (unsigned long long)f.last_step);
        double end = ff_now() + 5;
        while (ff_now() < end) {
            pthread_mutex_lock(&sink.mu);
            int got = sink.n_msgs;
            pthread_mutex_unlock(&sink.mu);
            if (got >= 1) break;
            usleep(2000);
        }
        pthread_mutex_lock(&sink.mu);
        CHECK_MSG(sink.n_msgs == 1 && sink.last_rows == 1 && sink.last_hidden == HIDDEN &&
                      sink.last_step == 10 && sink.bad == 0,
                  "Sink got %d msgs, last %u rows x %u, step %llu, %d bad", sink.n_msgs,
                  sink.last_rows, sink.last_hidden, (unsigned long long)sink.last_step, sink.bad);
        pthread_mutex_unlock(&sink.mu);
        forward_one(ch, ms[1], l[1], &f);
        CHECK_MSG(f.st == LP_OK && f.n_ok == 1, "valid all-logits Forward: %s", f.msg);
        end = ff_now() + 5;
        while (ff_now() < end) {
            pthread_mutex_lock(&sink.mu);
            int got = sink.n_msgs;
            pthread_mutex_unlock(&sink.mu);
            if (got >= 2) break;
            usleep(2000);
        }
        pthread_mutex_lock(&sink.mu);
        CHECK_MSG(sink.n_msgs == 2 && sink.last_rows == 2 && sink.last_step == 11,
                  "Sink: %d msgs, last %u rows (want 2, all logits)", sink.n_msgs,
                  sink.last_rows);
        pthread_mutex_unlock(&sink.mu);
        free(ms[0]);
        free(ms[1]);
    }
    CHECK(stats_sessions() == 1);

    // hostile messages (session 7 holds 5 positions now)
    struct seg_spec ok1 = {7, 5, 1, false};
    m = make_acts(20, &ok1, 1, 1, 32, 0, 1 * 32 * 4, &len);
    expect_rejected("wrong hidden width", m, len, "hidden");
    m = make_acts(21, &ok1, 1, 1, HIDDEN, 7, 1 * HIDDEN * 4, &len);
    expect_rejected("unknown dtype 7", m, len, "dtype");
    m = make_acts(22, &ok1, 1, 1, HIDDEN, 1, 1 * HIDDEN * 4, &len); // bf16 with f32 bytes
    expect_rejected("bf16 with an f32 payload", m, len, "payload");
    struct seg_spec two = {7, 5, 2, false};
    m = make_acts(23, &two, 1, 2, HIDDEN, 0, 1 * HIDDEN * 4, &len);
    expect_rejected("payload short of the rows", m, len, "payload");
    m = make_acts(24, &ok1, 1, 0, HIDDEN, 0, 0, &len);
    expect_rejected("zero rows", m, len, "rows");
    m = make_acts(25, NULL, 0, 1, HIDDEN, 0, 1 * HIDDEN * 4, &len);
    expect_rejected("no segments", m, len, "segments");
    struct seg_spec zero_tok = {7, 5, 0, false};
    m = make_acts(26, &zero_tok, 1, 1, HIDDEN, 0, 1 * HIDDEN * 4, &len);
    expect_rejected("segment of 0 tokens", m, len, "segment");
    m = make_acts(27, &two, 1, 3, HIDDEN, 0, 3 * HIDDEN * 4, &len);
    expect_rejected("segments cover 2 of 3 rows", m, len, "cover");
    struct seg_spec unknown = {99, 5, 1, false};
    m = make_acts(28, &unknown, 1, 1, HIDDEN, 0, 1 * HIDDEN * 4, &len);
    expect_rejected("unknown session at pos 5", m, len, "unknown session");
    struct seg_spec gap = {7, 9, 1, false};
    m = make_acts(29, &gap, 1, 1, HIDDEN, 0, 1 * HIDDEN * 4, &len);
    expect_rejected("position gap", m, len, "gap");
    struct seg_spec big = {7, 5, MAX_ROWS + 1, false};
    m = make_acts(30, &big, 1, MAX_ROWS + 1, HIDDEN, 0, (MAX_ROWS + 1) * HIDDEN * 4, &len);
    expect_rejected("rows beyond max_batch_tokens", m, len, "rows");
    struct seg_spec over_ctx = {7, 5, 1, false}, s3 = {8, 0, 1, false}, s4 = {9, 0, 1, false};
    struct seg_spec three[3] = {over_ctx, s3, s4};
    m = make_acts(31, three, 3, 3, HIDDEN, 0, 3 * HIDDEN * 4, &len);
    expect_rejected("3 segments, 2 sessions max", m, len, "segments");
    struct seg_spec dup[2] = {{7, 5, 1, false}, {7, 5, 1, false}};
    m = make_acts(32, dup, 2, 2, HIDDEN, 0, 2 * HIDDEN * 4, &len);
    {
        // the same session twice in one batch: either refused or computed, never a crash
        struct fwd f;
        forward_one(ch, m, len, &f);
        free(m);
        printf("%-28s -> %s: %s\n", "one session twice", lp_status_str(f.st), f.msg);
        worker_still_fine("one session twice");
    }
    {
        // a new session in segment 0, a bad segment 1: the refused batch must not leave
        // session 50 open (it holds KV until the idle timeout otherwise)
        struct seg_spec mixed[2] = {{50, 0, 1, false}, {7, 9, 1, false}};
        m = make_acts(34, mixed, 2, 2, HIDDEN, 0, 2 * HIDDEN * 4, &len);
        expect_rejected("new session + gap", m, len, "gap");
        uint32_t n_open = stats_sessions();
        CHECK_MSG(n_open == 1, "a refused batch left %u sessions open (want 1: session 7)",
                  n_open);
        uint64_t id50 = 50;
        Layerpipe__V1__ReleaseRequest r = LAYERPIPE__V1__RELEASE_REQUEST__INIT;
        r.n_sessions = 1;
        r.sessions = &id50;
        uint8_t *resp = NULL;
        size_t n = 0;
        ff_call(worker.addr, LP_M_RELEASE, &r.base, &resp, &n, 3000, &e);
        free(resp);
    }
    static const uint8_t junk[] = {0x0f, 0xff, 0xff, 0xff, 0xff, 0x12, 0x34, 0x56};
    uint8_t *jm = malloc(sizeof junk);
    memcpy(jm, junk, sizeof junk);
    expect_rejected("not a protobuf message", jm, sizeof junk, "not Activations");
    {
        // over the worker's limit (LP_MAX_MESSAGE_BYTES): refused by gRPC itself
        size_t n_rows = LP_MAX_MESSAGE_BYTES / (HIDDEN * 4) + 1024;
        struct seg_spec huge = {7, 5, (uint32_t)n_rows, false};
        m = make_acts(33, &huge, 1, (uint32_t)n_rows, HIDDEN, 0, n_rows * HIDDEN * 4, &len);
        printf("oversized message: %zu bytes (limit %zu)\n", len, (size_t)LP_MAX_MESSAGE_BYTES);
        expect_rejected("oversized message", m, len, NULL);
    }
    // session 7 survived all of that: it still appends at 5
    {
        m = make_acts(40, &ok1, 1, 1, HIDDEN, 0, 1 * HIDDEN * 4, &len);
        struct fwd f;
        forward_one(ch, m, len, &f);
        free(m);
        CHECK_MSG(f.st == LP_OK && f.n_ok == 1, "append after the hostile messages: %s", f.msg);
    }
    CHECK_MSG(stats_sessions() == 1, "sessions after the hostile messages: %u (want 1)",
              stats_sessions());

    // Release
    {
        uint64_t ids[2] = {7, 12345};
        Layerpipe__V1__ReleaseRequest r = LAYERPIPE__V1__RELEASE_REQUEST__INIT;
        r.n_sessions = 2;
        r.sessions = ids;
        uint8_t *resp = NULL;
        size_t n = 0;
        memset(&e, 0, sizeof e);
        CHECK_OK(ff_call(worker.addr, LP_M_RELEASE, &r.base, &resp, &n, 3000, &e), &e);
        Layerpipe__V1__ReleaseReply *rr = layerpipe__v1__release_reply__unpack(NULL, n, resp);
        free(resp);
        CHECK(rr && rr->released == 1);
        if (rr) layerpipe__v1__release_reply__free_unpacked(rr, NULL);
        CHECK(stats_sessions() == 0);
        // a released session is unknown again past position 0
        m = make_acts(41, &ok1, 1, 1, HIDDEN, 0, 1 * HIDDEN * 4, &len);
        expect_rejected("released session at pos 5", m, len, "unknown session");
    }

    // A Configure that fails (unreachable successor) leaves the worker
    // unconfigured; a Forward stream opened before it must then get an
    // error status, not crash the worker.
    {
        memset(&e, 0, sizeof e);
        CHECK_OK(configure(fp, 4, 8, sink_addr, NULL, &e), &e);
        struct fwd f;
        memset(&f, 0, sizeof f);
        pthread_mutex_init(&f.mu, NULL);
        struct lp_rpc_client_stream *cs = NULL;
        CHECK_OK(lp_rpc_stream_open(ch, LP_M_FORWARD, fwd_reply, fwd_end, &f, &cs, &err), &err);
        struct seg_spec a1 = {77, 0, 3, false}, a2 = {77, 3, 1, false};
        m = make_acts(50, &a1, 1, 3, HIDDEN, 0, 3 * HIDDEN * 4, &len);
        if (cs) lp_rpc_client_stream_write(cs, m, len, NULL);
        free(m);
        for (int t = 0; t < 100; t++) { // until the first step is acked
            pthread_mutex_lock(&f.mu);
            int acks = f.n_ok;
            pthread_mutex_unlock(&f.mu);
            if (acks) break;
            usleep(20000);
        }
        CHECK_MSG(f.n_ok == 1, "first step on the stream: %d acks", f.n_ok);
        memset(&e, 0, sizeof e);
        CHECK(configure(fp, 4, 8, "127.0.0.1:1", NULL, &e) != LP_OK);
        m = make_acts(51, &a2, 1, 1, HIDDEN, 0, 1 * HIDDEN * 4, &len);
        if (cs) lp_rpc_client_stream_write(cs, m, len, NULL);
        free(m);
        lp_rpc_client_stream_close(cs, 5000);
        CHECK_MSG(f.n_fail == 1 && strstr(f.fail_msg, "not configured"),
                  "Forward after a failed Configure: %d failure Acks: %s", f.n_fail, f.fail_msg);
        CHECK(ff_alive(worker.pid));
        worker_still_fine("after a failed Configure");
        pthread_mutex_destroy(&f.mu);
    }

    ff_stop(worker.pid);
    lp_rpc_channel_destroy(ch);
    lp_rpc_server_destroy(srv);
    printf("cluster/test_stage_protocol: %.1f s\n", ff_now() - t_start);
    return lp_test_finish("cluster/test_stage_protocol");
}
