// SPDX-License-Identifier: MIT
// test_rpc.c -- the gRPC transport with a real server and a real client in one
// process on 127.0.0.1:0 (plus one forked server process that gets killed):
// unary echo and errors, unknown methods, unreachable ports, bidi streams of
// 0..8 MiB messages, handler errors, server shutdown under an open stream,
// busy ports; prints ping-pong latency and throughput (not asserted).
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cluster/rpc.h"
#include "lp_test.h"

#define M_ECHO "/layerpipe.test.Test/Echo"
#define M_FAIL "/layerpipe.test.Test/Fail"
#define M_STREAM "/layerpipe.test.Test/Stream"
#define MAX_MSG ((size_t)64 << 20)

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

// ------------------------------------------------------------ server side ---

static enum lp_status echo_unary(void *user, const uint8_t *req, size_t req_bytes, uint8_t **resp,
                                 size_t *resp_bytes, struct lp_error *err) {
    *resp = NULL;
    *resp_bytes = req_bytes;
    if (req_bytes) {
        if (!(*resp = malloc(req_bytes))) return lp_error_set(err, LP_ERR_NOMEM, "echo");
        memcpy(*resp, req, req_bytes);
    }
    return LP_OK;
}

static enum lp_status fail_unary(void *user, const uint8_t *req, size_t req_bytes, uint8_t **resp,
                                 size_t *resp_bytes, struct lp_error *err) {
    if (req_bytes == 1 && req[0] == 'b')
        return lp_error_set(err, LP_ERR_BUSY, "stage is busy: %d queued", 3);
    return lp_error_set(err, LP_ERR_INVALID_ARG, "layer range [%d, %d) out of bounds", 40, 99);
}

struct srv_state {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int n_open, n_close;
    enum lp_status last_close;
    char last_msg[256];
};

static enum lp_status st_open(void *user, struct lp_rpc_stream *s, void **stream_user,
                              struct lp_error *err) {
    struct srv_state *ss = user;
    pthread_mutex_lock(&ss->mu);
    ss->n_open++;
    pthread_mutex_unlock(&ss->mu);
    *stream_user = ss;
    return LP_OK;
}

static enum lp_status st_message(void *user, void *stream_user, struct lp_rpc_stream *s,
                                 const uint8_t *msg, size_t bytes, struct lp_error *err) {
    if (bytes == 4 && memcmp(msg, "FAIL", 4) == 0)
        return lp_error_set(err, LP_ERR_PROTOCOL, "bad activation: %d rows", 7);
    return lp_rpc_stream_send(s, msg, bytes, err);
}

static void st_close(void *user, void *stream_user, enum lp_status st, const char *msg) {
    struct srv_state *ss = user;
    pthread_mutex_lock(&ss->mu);
    ss->n_close++;
    ss->last_close = st;
    snprintf(ss->last_msg, sizeof ss->last_msg, "%s", msg);
    pthread_cond_broadcast(&ss->cv);
    pthread_mutex_unlock(&ss->mu);
}

static const struct lp_rpc_stream_handler stream_handler = {st_open, st_message, st_close};

static struct lp_rpc_server *start_server(const char *addr, struct srv_state *ss) {
    struct lp_error err = {0};
    struct lp_rpc_server *s = NULL;
    CHECK_OK(lp_rpc_server_create(&s, addr, MAX_MSG, NULL, &err), &err);
    if (!s) return NULL;
    CHECK_OK(lp_rpc_server_add_unary(s, M_ECHO, echo_unary, NULL, &err), &err);
    CHECK_OK(lp_rpc_server_add_unary(s, M_FAIL, fail_unary, NULL, &err), &err);
    CHECK_OK(lp_rpc_server_add_stream(s, M_STREAM, &stream_handler, ss, &err), &err);
    CHECK_OK(lp_rpc_server_start(s, &err), &err);
    return s;
}

static int wait_closes(struct srv_state *ss, int n, double timeout_s) {
    double t_end = now_s() + timeout_s;
    pthread_mutex_lock(&ss->mu);
    while (ss->n_close < n && now_s() < t_end) {
        pthread_mutex_unlock(&ss->mu);
        usleep(1000);
        pthread_mutex_lock(&ss->mu);
    }
    int ok = ss->n_close >= n;
    pthread_mutex_unlock(&ss->mu);
    return ok;
}

// ------------------------------------------------------------ client side ---

// Message i of the ordered stream test: its size and its byte pattern.
static size_t msg_size(size_t i) {
    if (i % 100 == 99) return (size_t)8 << 20; // ten 8 MiB messages
    return (i * 2654435761u) % 70000 * (i != 0);
}
static uint8_t msg_byte(size_t i, size_t j) { return (uint8_t)(i * 131 + j * 7); }

struct sink {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    size_t n_replies, n_bad, bytes;
    int check_pattern;
    int ended;
    enum lp_status end_st;
    char end_msg[256];
};

static void sink_init(struct sink *k, int check_pattern) {
    memset(k, 0, sizeof *k);
    pthread_mutex_init(&k->mu, NULL);
    pthread_cond_init(&k->cv, NULL);
    k->check_pattern = check_pattern;
}

static void sink_deinit(struct sink *k) {
    pthread_mutex_destroy(&k->mu);
    pthread_cond_destroy(&k->cv);
}

static void on_reply(void *user, const uint8_t *msg, size_t bytes) {
    struct sink *k = user;
    pthread_mutex_lock(&k->mu);
    if (k->check_pattern) {
        size_t i = k->n_replies;
        int bad = bytes != msg_size(i) || k->ended;
        for (size_t j = 0; j < bytes && !bad; j++) bad = msg[j] != msg_byte(i, j);
        k->n_bad += (size_t)bad;
    }
    k->n_replies++;
    k->bytes += bytes;
    pthread_cond_broadcast(&k->cv);
    pthread_mutex_unlock(&k->mu);
}

static void on_end(void *user, enum lp_status st, const char *msg) {
    struct sink *k = user;
    pthread_mutex_lock(&k->mu);
    k->ended++;
    k->end_st = st;
    snprintf(k->end_msg, sizeof k->end_msg, "%s", msg);
    pthread_cond_broadcast(&k->cv);
    pthread_mutex_unlock(&k->mu);
}

// Waits until n replies arrived or the stream ended (want_end); 1 on success.
static int sink_wait(struct sink *k, size_t n, int want_end, double timeout_s) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += (time_t)timeout_s;
    pthread_mutex_lock(&k->mu);
    int rc = 0;
    while (rc == 0 && (want_end ? !k->ended : (k->n_replies < n && !k->ended)))
        rc = pthread_cond_timedwait(&k->cv, &k->mu, &ts);
    int ok = want_end ? k->ended != 0 : k->n_replies >= n;
    pthread_mutex_unlock(&k->mu);
    return ok;
}

// ------------------------------------------------------------------ tests ---

// A server in a child process, killed with SIGKILL under an open stream:
// the client must see on_end with an error at once, not hang. Runs first,
// before this process initializes gRPC (forking a gRPC process is unsafe).
static void test_killed_server(void) {
    int fds[2];
    CHECK(pipe(fds) == 0);
    pid_t pid = fork();
    if (pid == 0) {
        close(fds[0]);
        struct srv_state ss = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};
        struct lp_rpc_server *s = start_server("127.0.0.1:0", &ss);
        int port = lp_rpc_server_port(s);
        if (write(fds[1], &port, sizeof port) != (ssize_t)sizeof port) _exit(1);
        for (;;) pause();
    }
    close(fds[1]);
    int port = 0;
    CHECK(read(fds[0], &port, sizeof port) == (ssize_t)sizeof port && port > 0);
    close(fds[0]);
    char target[64];
    snprintf(target, sizeof target, "127.0.0.1:%d", port);
    struct lp_error err = {0};
    struct lp_rpc_channel *c = NULL;
    CHECK_OK(lp_rpc_channel_create(&c, target, MAX_MSG, NULL, &err), &err);
    struct sink k;
    sink_init(&k, 0);
    struct lp_rpc_client_stream *cs = NULL;
    CHECK_OK(lp_rpc_stream_open(c, M_STREAM, on_reply, on_end, &k, &cs, &err), &err);
    CHECK_OK(lp_rpc_client_stream_write(cs, (const uint8_t *)"ping", 4, &err), &err);
    CHECK(sink_wait(&k, 1, 0, 5));
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    double t0 = now_s();
    CHECK(sink_wait(&k, 0, 1, 5));
    double dt = now_s() - t0;
    CHECK_MSG(k.ended == 1 && k.end_st != LP_OK, "ended %d st %s", k.ended,
              lp_status_str(k.end_st));
    CHECK_MSG(dt < 2.0, "on_end after %.3f s", dt);
    printf("killed server: on_end after %.1f ms: %s: %s\n", dt * 1e3, lp_status_str(k.end_st),
           k.end_msg);
    enum lp_status wst = lp_rpc_client_stream_write(cs, (const uint8_t *)"x", 1, &err);
    CHECK(wst != LP_OK && wst == k.end_st);
    lp_rpc_client_stream_close(cs, 1000);
    lp_rpc_channel_destroy(c);
    sink_deinit(&k);
}

static void test_unary(struct lp_rpc_channel *c, const char *target) {
    struct lp_error err = {0};
    uint8_t *resp = NULL;
    size_t n = 0;
    CHECK_OK(lp_rpc_call_unary(c, M_ECHO, (const uint8_t *)"hello", 5, &resp, &n, 5000, &err),
             &err);
    CHECK(n == 5 && resp && memcmp(resp, "hello", 5) == 0);
    free(resp);
    CHECK_OK(lp_rpc_call_unary(c, M_ECHO, NULL, 0, &resp, &n, 5000, &err), &err);
    CHECK(n == 0 && resp == NULL);
    size_t big = (size_t)9 << 20; // over gRPC's default 4 MiB limit
    uint8_t *buf = malloc(big);
    for (size_t j = 0; j < big; j++) buf[j] = msg_byte(3, j);
    CHECK_OK(lp_rpc_call_unary(c, M_ECHO, buf, big, &resp, &n, 10000, &err), &err);
    CHECK(n == big && resp && memcmp(resp, buf, big) == 0);
    free(resp);
    free(buf);

    // handler errors travel as gRPC statuses and come back as lp_status
    lp_error_clear(&err);
    enum lp_status st = lp_rpc_call_unary(c, M_FAIL, (const uint8_t *)"a", 1, &resp, &n, 5000, &err);
    CHECK_MSG(st == LP_ERR_INVALID_ARG && strstr(err.msg, "layer range [40, 99)") &&
                  strstr(err.msg, target) && strstr(err.msg, M_FAIL) &&
                  strstr(err.msg, "INVALID_ARGUMENT"),
              "%s: %s", lp_status_str(st), err.msg);
    CHECK(resp == NULL && n == 0);
    st = lp_rpc_call_unary(c, M_FAIL, (const uint8_t *)"b", 1, &resp, &n, 5000, &err);
    CHECK_MSG(st == LP_ERR_BUSY && strstr(err.msg, "stage is busy: 3 queued"), "%s: %s",
              lp_status_str(st), err.msg);
    printf("unary error: %s\n", err.msg);

    st = lp_rpc_call_unary(c, "/layerpipe.test.Test/Nope", NULL, 0, &resp, &n, 5000, &err);
    CHECK_MSG(st == LP_ERR_UNSUPPORTED && strstr(err.msg, "UNIMPLEMENTED"), "%s: %s",
              lp_status_str(st), err.msg);
    // a streaming client on a unary method and vice versa do not hang
}

static void test_no_server(void) {
    // A port that was free a moment ago.
    struct lp_error err = {0};
    struct lp_rpc_server *s = NULL;
    CHECK_OK(lp_rpc_server_create(&s, "127.0.0.1:0", 0, NULL, &err), &err);
    int port = lp_rpc_server_port(s);
    lp_rpc_server_destroy(s); // never started
    char target[64];
    snprintf(target, sizeof target, "127.0.0.1:%d", port);
    struct lp_rpc_channel *c = NULL;
    CHECK_OK(lp_rpc_channel_create(&c, target, 0, NULL, &err), &err);
    uint8_t *resp = NULL;
    size_t n = 0;
    double t0 = now_s();
    enum lp_status st = lp_rpc_call_unary(c, M_ECHO, (const uint8_t *)"x", 1, &resp, &n, 2000, &err);
    double dt = now_s() - t0;
    CHECK_MSG(st == LP_ERR_NETWORK && strstr(err.msg, target), "%s: %s", lp_status_str(st),
              err.msg);
    CHECK_MSG(dt < 2.5, "%.3f s", dt);
    printf("no server (%.1f ms): %s\n", dt * 1e3, err.msg);

    // a stream to nowhere ends by itself with the same kind of error
    struct sink k;
    sink_init(&k, 0);
    struct lp_rpc_client_stream *cs = NULL;
    CHECK_OK(lp_rpc_stream_open(c, M_STREAM, on_reply, on_end, &k, &cs, &err), &err);
    CHECK(sink_wait(&k, 0, 1, 5));
    CHECK_MSG(k.end_st == LP_ERR_NETWORK && strstr(k.end_msg, target), "%s: %s",
              lp_status_str(k.end_st), k.end_msg);
    lp_rpc_client_stream_close(cs, 1000);
    CHECK(k.ended == 1);
    lp_rpc_channel_destroy(c);
    sink_deinit(&k);
}

static void test_stream_ordered(struct lp_rpc_channel *c, struct srv_state *ss) {
    struct lp_error err = {0};
    struct sink k;
    sink_init(&k, 1);
    int closes0 = ss->n_close;
    struct lp_rpc_client_stream *cs = NULL;
    CHECK_OK(lp_rpc_stream_open(c, M_STREAM, on_reply, on_end, &k, &cs, &err), &err);
    size_t n_msgs = 1000, max_bytes = (size_t)8 << 20;
    uint8_t *buf = malloc(max_bytes);
    for (size_t i = 0; i < n_msgs; i++) {
        size_t n = msg_size(i);
        if (i % 2) { // every other message handed over without a copy
            uint8_t *own = malloc(n ? n : 1);
            for (size_t j = 0; j < n; j++) own[j] = msg_byte(i, j);
            CHECK_OK(lp_rpc_client_stream_write_take(cs, own, n, &err), &err);
            continue;
        }
        for (size_t j = 0; j < n; j++) buf[j] = msg_byte(i, j);
        CHECK_OK(lp_rpc_client_stream_write(cs, buf, n, &err), &err);
    }
    free(buf);
    CHECK(sink_wait(&k, n_msgs, 0, 60));
    lp_rpc_client_stream_close(cs, 5000);
    CHECK_MSG(k.n_replies == n_msgs && k.n_bad == 0, "%zu replies, %zu bad", k.n_replies,
              k.n_bad);
    CHECK_MSG(k.ended == 1 && k.end_st == LP_OK, "%s: %s", lp_status_str(k.end_st), k.end_msg);
    CHECK(wait_closes(ss, closes0 + 1, 5));
    CHECK_MSG(ss->last_close == LP_OK, "server on_close %s: %s", lp_status_str(ss->last_close),
              ss->last_msg);
    sink_deinit(&k);
}

static void test_stream_handler_error(struct lp_rpc_channel *c, struct srv_state *ss) {
    struct lp_error err = {0};
    struct sink k;
    sink_init(&k, 0);
    int closes0 = ss->n_close;
    struct lp_rpc_client_stream *cs = NULL;
    CHECK_OK(lp_rpc_stream_open(c, M_STREAM, on_reply, on_end, &k, &cs, &err), &err);
    CHECK_OK(lp_rpc_client_stream_write(cs, (const uint8_t *)"ok-1", 4, &err), &err);
    CHECK_OK(lp_rpc_client_stream_write(cs, (const uint8_t *)"FAIL", 4, &err), &err);
    CHECK(sink_wait(&k, 0, 1, 5));
    CHECK_MSG(k.end_st == LP_ERR_INVALID_ARG && strstr(k.end_msg, "bad activation: 7 rows"),
              "%s: %s", lp_status_str(k.end_st), k.end_msg);
    CHECK(k.n_replies == 1); // the reply queued before the error still went out
    printf("stream handler error: %s\n", k.end_msg);
    enum lp_status wst = lp_rpc_client_stream_write(cs, (const uint8_t *)"late", 4, &err);
    CHECK(wst == LP_ERR_INVALID_ARG);
    uint8_t *late = malloc(4); // taken and freed even though the stream is over (ASan: no leak)
    memcpy(late, "late", 4);
    CHECK(lp_rpc_client_stream_write_take(cs, late, 4, &err) == LP_ERR_INVALID_ARG);
    lp_rpc_client_stream_close(cs, 1000);
    CHECK(wait_closes(ss, closes0 + 1, 5));
    CHECK_MSG(ss->last_close == LP_ERR_PROTOCOL, "server on_close %s",
              lp_status_str(ss->last_close));

    // cancel: on_end(LP_ERR_CANCELLED), server on_close(LP_ERR_CANCELLED)
    sink_init(&k, 0);
    CHECK_OK(lp_rpc_stream_open(c, M_STREAM, on_reply, on_end, &k, &cs, &err), &err);
    CHECK_OK(lp_rpc_client_stream_write(cs, (const uint8_t *)"ok-1", 4, &err), &err);
    CHECK(sink_wait(&k, 1, 0, 5));
    lp_rpc_client_stream_cancel(cs);
    lp_rpc_client_stream_close(cs, 1000);
    CHECK_MSG(k.ended == 1 && k.end_st == LP_ERR_CANCELLED, "%s", lp_status_str(k.end_st));
    CHECK(wait_closes(ss, closes0 + 2, 5));
    CHECK(ss->last_close == LP_ERR_CANCELLED);
    sink_deinit(&k);
}

static void test_server_destroy_under_stream(void) {
    struct srv_state ss = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};
    struct lp_rpc_server *s = start_server("127.0.0.1:0", &ss);
    char target[64];
    snprintf(target, sizeof target, "127.0.0.1:%d", lp_rpc_server_port(s));
    struct lp_error err = {0};
    struct lp_rpc_channel *c = NULL;
    CHECK_OK(lp_rpc_channel_create(&c, target, MAX_MSG, NULL, &err), &err);
    struct sink k;
    sink_init(&k, 0);
    struct lp_rpc_client_stream *cs = NULL;
    CHECK_OK(lp_rpc_stream_open(c, M_STREAM, on_reply, on_end, &k, &cs, &err), &err);
    CHECK_OK(lp_rpc_client_stream_write(cs, (const uint8_t *)"ping", 4, &err), &err);
    CHECK(sink_wait(&k, 1, 0, 5));
    double t0 = now_s();
    lp_rpc_server_destroy(s);
    CHECK(ss.n_open == 1 && ss.n_close == 1 && ss.last_close == LP_ERR_CANCELLED);
    CHECK(sink_wait(&k, 0, 1, 5));
    double dt = now_s() - t0;
    CHECK_MSG(k.ended == 1 && k.end_st != LP_OK, "%s", lp_status_str(k.end_st));
    printf("server destroyed: client on_end after %.1f ms: %s\n", dt * 1e3, k.end_msg);

    // the port is free again at once, and the same channel reconnects
    struct srv_state ss2 = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};
    struct lp_rpc_server *s2 = start_server(target, &ss2);
    CHECK(s2 != NULL);
    lp_rpc_client_stream_close(cs, 1000);
    uint8_t *resp = NULL;
    size_t n = 0;
    enum lp_status st = LP_ERR_NETWORK;
    for (int i = 0; i < 50 && st == LP_ERR_NETWORK; i++) { // reconnect backoff <= 2 s
        st = lp_rpc_call_unary(c, M_ECHO, (const uint8_t *)"again", 5, &resp, &n, 2000, &err);
        if (st == LP_ERR_NETWORK) usleep(100 * 1000);
    }
    CHECK_OK(st, &err);
    free(resp);
    lp_rpc_server_destroy(s2);
    lp_rpc_channel_destroy(c);
    sink_deinit(&k);
}

static void test_busy_port(int port) {
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    struct lp_error err = {0};
    struct lp_rpc_server *s = (struct lp_rpc_server *)&err; // must be reset to NULL
    enum lp_status st = lp_rpc_server_create(&s, addr, 0, NULL, &err);
    CHECK_MSG(st == LP_ERR_NETWORK && s == NULL && strstr(err.msg, addr), "%s: %s",
              lp_status_str(st), err.msg);
    printf("busy port: %s\n", err.msg);
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void measure(struct lp_rpc_channel *c) {
    struct lp_error err = {0};
    struct sink k;
    sink_init(&k, 0);
    struct lp_rpc_client_stream *cs = NULL;
    CHECK_OK(lp_rpc_stream_open(c, M_STREAM, on_reply, on_end, &k, &cs, &err), &err);
    size_t small = 8192, n_iter = 2000;
    uint8_t *buf = calloc(1, (size_t)4 << 20);
    double *lat = malloc(n_iter * sizeof *lat);
    for (size_t i = 0; i < n_iter + 100; i++) { // 100 warm-up round trips
        double t0 = now_s();
        CHECK_OK(lp_rpc_client_stream_write(cs, buf, small, &err), &err);
        if (!sink_wait(&k, i + 1, 0, 5)) break;
        if (i >= 100) lat[i - 100] = now_s() - t0;
    }
    qsort(lat, n_iter, sizeof *lat, cmp_double);
    printf("ping-pong 8 KiB: p50 %.1f us, p99 %.1f us (%zu round trips)\n",
           lat[n_iter / 2] * 1e6, lat[n_iter * 99 / 100] * 1e6, n_iter);
    size_t big = (size_t)4 << 20, n_big = 64, base = k.n_replies;
    double t0 = now_s();
    for (size_t i = 0; i < n_big; i++) CHECK_OK(lp_rpc_client_stream_write(cs, buf, big, &err), &err);
    CHECK(sink_wait(&k, base + n_big, 0, 60));
    double dt = now_s() - t0;
    printf("4 MiB messages echoed: %.0f MB/s each way (%zu messages, %.3f s)\n",
           (double)(n_big * big) / dt / 1e6, n_big, dt);
    lp_rpc_client_stream_close(cs, 5000);
    CHECK(k.end_st == LP_OK);
    free(lat);
    free(buf);
    sink_deinit(&k);
}

int main(void) {
    test_killed_server();
    lp_rpc_init();
    struct srv_state ss = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};
    struct lp_rpc_server *s = start_server("127.0.0.1:0", &ss);
    int port = lp_rpc_server_port(s);
    CHECK(port > 0);
    char target[64];
    snprintf(target, sizeof target, "127.0.0.1:%d", port);
    struct lp_error err = {0};
    struct lp_rpc_channel *c = NULL;
    CHECK_OK(lp_rpc_channel_create(&c, target, MAX_MSG, NULL, &err), &err);

    test_unary(c, target);
    test_busy_port(port);
    test_no_server();
    test_stream_ordered(c, &ss);
    test_stream_handler_error(c, &ss);
    test_server_destroy_under_stream();
    if (!getenv("LP_RPC_NO_BENCH")) measure(c);

    lp_rpc_channel_destroy(c);
    lp_rpc_server_destroy(s);
    CHECK(ss.n_open == ss.n_close);
    lp_rpc_shutdown();
    return lp_test_finish("test_rpc");
}
