// SPDX-License-Identifier: MIT
// bench_rpc.c -- the cost of one pipeline hop through the rpc transport, on
// loopback in one process (server and channel each with their own thread):
//   hop latency: ping-pong of an 8 KiB message (2048 f32 = one decode
//     activation of a 2048-wide model) on a bidi stream, p50/p99;
//   throughput: prefill-sized chunks streamed one way, each acknowledged by
//     an 8-byte reply (as Forward/Ack would), MB/s.
// Usage: bench_rpc [n_round_trips]   (default 5000)
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cluster/rpc.h"

#define M_ECHO "/layerpipe.bench.Bench/Echo"
#define M_ACK "/layerpipe.bench.Bench/Ack"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static enum lp_status b_open(void *user, struct lp_rpc_stream *s, void **su, struct lp_error *e) {
    return LP_OK;
}
static enum lp_status b_echo(void *user, void *su, struct lp_rpc_stream *s, const uint8_t *msg,
                             size_t bytes, struct lp_error *err) {
    return lp_rpc_stream_send(s, msg, bytes, err);
}
static enum lp_status b_ack(void *user, void *su, struct lp_rpc_stream *s, const uint8_t *msg,
                            size_t bytes, struct lp_error *err) {
    uint64_t n = bytes;
    return lp_rpc_stream_send(s, (const uint8_t *)&n, sizeof n, err);
}
static void b_close(void *user, void *su, enum lp_status st, const char *msg) {}

struct counter {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    size_t n;
    int ended;
};
static void c_reply(void *user, const uint8_t *msg, size_t bytes) {
    struct counter *k = user;
    pthread_mutex_lock(&k->mu);
    k->n++;
    pthread_cond_signal(&k->cv);
    pthread_mutex_unlock(&k->mu);
}
static void c_end(void *user, enum lp_status st, const char *msg) {
    struct counter *k = user;
    pthread_mutex_lock(&k->mu);
    k->ended = 1;
    if (st != LP_OK) fprintf(stderr, "stream ended: %s\n", msg);
    pthread_cond_signal(&k->cv);
    pthread_mutex_unlock(&k->mu);
}
static int spin_us; // BENCH_RPC_SPIN_US: poll this long before sleeping
static int c_wait(struct counter *k, size_t n) {
    if (spin_us > 0) {
        double until = now_s() + spin_us * 1e-6;
        while (now_s() < until) {
            pthread_mutex_lock(&k->mu);
            int got = k->n >= n || k->ended;
            pthread_mutex_unlock(&k->mu);
            if (got) break;
        }
    }
    pthread_mutex_lock(&k->mu);
    while (k->n < n && !k->ended) pthread_cond_wait(&k->cv, &k->mu);
    int ok = k->n >= n;
    pthread_mutex_unlock(&k->mu);
    return ok;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    size_t n_rt = argc > 1 ? (size_t)atol(argv[1]) : 5000;
    spin_us = getenv("BENCH_RPC_SPIN_US") ? atoi(getenv("BENCH_RPC_SPIN_US")) : 0;
    if (n_rt < 100) n_rt = 100;
    struct lp_error err = {0};
    struct lp_rpc_server *srv = NULL;
    struct lp_rpc_channel *ch = NULL;
    const struct lp_rpc_stream_handler echo = {b_open, b_echo, b_close};
    const struct lp_rpc_stream_handler ack = {b_open, b_ack, b_close};
    if (lp_rpc_server_create(&srv, "127.0.0.1:0", (size_t)64 << 20, NULL, &err) ||
        lp_rpc_server_add_stream(srv, M_ECHO, &echo, NULL, &err) ||
        lp_rpc_server_add_stream(srv, M_ACK, &ack, NULL, &err) ||
        lp_rpc_server_start(srv, &err)) {
        fprintf(stderr, "bench_rpc: %s\n", err.msg);
        lp_rpc_server_destroy(srv);
        return 1;
    }
    char target[64];
    snprintf(target, sizeof target, "127.0.0.1:%d", lp_rpc_server_port(srv));
    if (lp_rpc_channel_create(&ch, target, (size_t)64 << 20, NULL, &err)) {
        fprintf(stderr, "bench_rpc: %s\n", err.msg);
        lp_rpc_server_destroy(srv);
        return 1;
    }
    uint8_t *buf = calloc(1, (size_t)16 << 20);
    double *lat = malloc(n_rt * sizeof *lat);
    struct counter k = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0};
    struct lp_rpc_client_stream *cs = NULL;
    int rc = 0;

    // hop latency: 8 KiB ping-pong
    if (lp_rpc_stream_open(ch, M_ECHO, c_reply, c_end, &k, &cs, &err)) goto fail;
    for (size_t i = 0; i < n_rt + 200; i++) { // 200 warm-up round trips
        double t0 = now_s();
        if (lp_rpc_client_stream_write(cs, buf, 8192, &err)) goto fail;
        if (!c_wait(&k, i + 1)) goto fail;
        if (i >= 200) lat[i - 200] = now_s() - t0;
    }
    qsort(lat, n_rt, sizeof *lat, cmp_double);
    printf("hop 8 KiB (2048 f32) ping-pong: p50 %.1f us  p99 %.1f us  (%zu round trips)\n",
           lat[n_rt / 2] * 1e6, lat[n_rt * 99 / 100] * 1e6, n_rt);
    lp_rpc_client_stream_close(cs, 5000);
    cs = NULL;

    // throughput: prefill chunks one way, 8-byte acks back
    static const size_t chunk_bytes[] = {(size_t)1 << 20, (size_t)4 << 20, (size_t)8 << 20,
                                         (size_t)16 << 20};
    for (size_t c = 0; c < sizeof chunk_bytes / sizeof chunk_bytes[0]; c++) {
        size_t bytes = chunk_bytes[c], n = ((size_t)512 << 20) / bytes; // 512 MiB a size
        k.n = 0;
        k.ended = 0;
        if (lp_rpc_stream_open(ch, M_ACK, c_reply, c_end, &k, &cs, &err)) goto fail;
        if (lp_rpc_client_stream_write(cs, buf, bytes, &err) || !c_wait(&k, 1)) goto fail; // warm-up
        double t0 = now_s();
        for (size_t i = 0; i < n; i++)
            if (lp_rpc_client_stream_write(cs, buf, bytes, &err)) goto fail;
        if (!c_wait(&k, n + 1)) goto fail;
        double dt = now_s() - t0;
        printf("prefill chunks of %5.1f MiB (%4zu tokens x 4096 f32): %6.0f MB/s  %.2f ms/chunk\n",
               (double)bytes / (1 << 20), bytes / 16384, (double)(n * bytes) / dt / 1e6,
               dt * 1e3 / (double)n);
        lp_rpc_client_stream_close(cs, 5000);
        cs = NULL;
    }
    goto done;
fail:
    fprintf(stderr, "bench_rpc: %s\n", err.msg[0] ? err.msg : "stream ended early");
    rc = 1;
done:
    lp_rpc_client_stream_close(cs, 1000);
    lp_rpc_channel_destroy(ch);
    lp_rpc_server_destroy(srv);
    free(lat);
    free(buf);
    return rc;
}
