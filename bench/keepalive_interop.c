// SPDX-License-Identifier: MIT
// keepalive_interop.c -- does layerpipe's rpc client keep an idle stream to a
// gRPC server with stock settings (grpc_server_create with no arguments:
// one ping per 5 min without data, GOAWAY "too_many_pings" after 2 strikes)?
// Opens a bidi stream from lp_rpc (layerpipe's client settings) and one from
// a raw channel with layerpipe's old settings (10 s pings, no limit), leaves
// both idle for IDLE_S seconds (default 70; the old settings draw GOAWAY
// "too_many_pings" after ~40 s, which gRPC logs), then sends on
// layerpipe's stream and expects the echo. Measured: layerpipe's stream
// still answers after 70 s idle.
//   build/keepalive_interop [IDLE_S]     exit 0: layerpipe's stream survived
// Not a CTest test: it takes over a minute.
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cluster/rpc.h"

#define METHOD "/keepalive.Echo/Stream"

// The stock server: echoes every message of every call (one state a call).
struct echo_call {
    grpc_call *call;
    grpc_call_details details;
    grpc_metadata_array md;
    grpc_byte_buffer *bb;
    int started;
};

static grpc_server *server;
static grpc_completion_queue *server_cq;

static void echo_request(void) {
    struct echo_call *c = calloc(1, sizeof *c);
    if (!c) return;
    grpc_call_details_init(&c->details);
    grpc_metadata_array_init(&c->md);
    grpc_server_request_call(server, &c->call, &c->details, &c->md, server_cq, server_cq, c);
}

static void *echo_main(void *arg) {
    echo_request();
    for (;;) {
        grpc_event ev =
            grpc_completion_queue_next(server_cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
        if (ev.type == GRPC_QUEUE_SHUTDOWN) return NULL;
        struct echo_call *c = ev.tag;
        grpc_op ops[2];
        memset(ops, 0, sizeof ops);
        size_t n = 0;
        if (!c->started) { // a new call: accept the next, then read
            if (!ev.success) continue;
            echo_request();
            c->started = 1;
            ops[n++].op = GRPC_OP_SEND_INITIAL_METADATA;
        } else if (ev.success && c->bb) {
            ops[n].op = GRPC_OP_SEND_MESSAGE; // the buffer is not freed: a check, not a server
            ops[n++].data.send_message.send_message = c->bb;
        } else {
            continue; // the client is gone
        }
        c->bb = NULL;
        ops[n].op = GRPC_OP_RECV_MESSAGE;
        ops[n++].data.recv_message.recv_message = &c->bb;
        grpc_call_start_batch(c->call, ops, n, c, NULL);
    }
}

static int n_replies, ended;
static char end_msg[LP_ERROR_MSG_BYTES];
static void on_reply(void *user, const uint8_t *msg, size_t bytes) { n_replies++; }
static void on_end(void *user, enum lp_status st, const char *msg) {
    ended = 1;
    snprintf(end_msg, sizeof end_msg, "%s", msg);
}

// A raw stream with layerpipe's old client settings; returns its queue.
static grpc_completion_queue *old_stream(const char *target, grpc_status_code *code,
                                         grpc_slice *details, grpc_metadata_array *trailing) {
    static const char *const keys[] = {GRPC_ARG_KEEPALIVE_TIME_MS, GRPC_ARG_KEEPALIVE_TIMEOUT_MS,
                                       GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS,
                                       GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA};
    static const int values[] = {10000, 5000, 1, 0};
    static grpc_arg args[4];
    for (int i = 0; i < 4; i++) {
        args[i].type = GRPC_ARG_INTEGER;
        args[i].key = (char *)keys[i];
        args[i].value.integer = values[i];
    }
    grpc_channel_args list = {4, args};
    grpc_channel_credentials *creds = grpc_insecure_credentials_create();
    grpc_channel *ch = grpc_channel_create(target, creds, &list);
    grpc_channel_credentials_release(creds);
    grpc_completion_queue *cq = grpc_completion_queue_create_for_next(NULL);
    grpc_call *call = grpc_channel_create_call(ch, NULL, 0, cq,
                                               grpc_slice_from_static_string(METHOD), NULL,
                                               gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    grpc_op ops[2];
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[1].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[1].data.recv_status_on_client.trailing_metadata = trailing;
    ops[1].data.recv_status_on_client.status = code;
    ops[1].data.recv_status_on_client.status_details = details;
    grpc_call_start_batch(call, ops, 2, (void *)1, NULL);
    return cq;
}

int main(int argc, char **argv) {
    int idle_s = argc > 1 ? atoi(argv[1]) : 70;
    grpc_init();
    server_cq = grpc_completion_queue_create_for_next(NULL);
    server = grpc_server_create(NULL, NULL); // stock settings
    grpc_server_register_completion_queue(server, server_cq, NULL);
    grpc_server_credentials *sc = grpc_insecure_server_credentials_create();
    int port = grpc_server_add_http2_port(server, "127.0.0.1:0", sc);
    grpc_server_credentials_release(sc);
    grpc_server_start(server);
    pthread_t thread;
    pthread_create(&thread, NULL, echo_main, NULL);
    char target[64];
    snprintf(target, sizeof target, "127.0.0.1:%d", port);

    struct lp_rpc_channel *ch = NULL;
    struct lp_rpc_client_stream *s = NULL;
    struct lp_error err = {0};
    if (lp_rpc_channel_create(&ch, target, 0, NULL, &err) != LP_OK ||
        lp_rpc_stream_open(ch, METHOD, on_reply, on_end, NULL, &s, &err) != LP_OK ||
        lp_rpc_client_stream_write(s, (const uint8_t *)"a", 1, &err) != LP_OK) {
        fprintf(stderr, "keepalive_interop: %s\n", err.msg);
        return 1;
    }
    grpc_status_code code = GRPC_STATUS_OK;
    grpc_slice details = grpc_empty_slice();
    grpc_metadata_array trailing;
    grpc_metadata_array_init(&trailing);
    grpc_completion_queue *old_cq = old_stream(target, &code, &details, &trailing);

    printf("idle for %d s on a stock gRPC server...\n", idle_s);
    fflush(stdout);
    for (int t = 0; t < idle_s; t++) {
        gpr_timespec second = gpr_time_add(gpr_now(GPR_CLOCK_REALTIME),
                                           gpr_time_from_seconds(1, GPR_TIMESPAN));
        grpc_event ev = grpc_completion_queue_next(old_cq, second, NULL);
        if (ev.type == GRPC_OP_COMPLETE) {
            char *d = grpc_slice_to_c_string(details);
            printf("old settings (10 s pings): the stream ended after %d s: %s (code %d)\n", t + 1,
                   d, (int)code);
            gpr_free(d);
        }
    }
    int before = n_replies;
    lp_rpc_client_stream_write(s, (const uint8_t *)"b", 1, NULL);
    for (int i = 0; i < 40 && n_replies == before; i++) usleep(50000);
    int ok = n_replies > before && !ended;
    printf("layerpipe's client settings: %s after %d s idle%s%s\n",
           ok ? "the stream still answers" : "the stream is broken", idle_s, ended ? ": " : "",
           end_msg);
    fflush(stdout);
    _exit(ok ? 0 : 1); // no orderly shutdown: a check, not a server
}
