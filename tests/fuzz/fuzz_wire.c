// SPDX-License-Identifier: MIT
// fuzz_wire.c -- libFuzzer harness for the messages a stage or the Sink
// accepts: protobuf-c unpacking, then the validation layer. The first input
// byte picks the message, the rest is its wire encoding:
//   0  Activations to a stage (rows are tokens), 1  Activations to the Sink
//      (rows needing logits): unpacked as the receiver does, into an arena
//      sized for its limits, and again with malloc (so ASan sees each field
//      alone), then lp_wire_decode_rows; both unpackings must agree.
//   3  ConfigureRequest: unpacked, then lp_wire_check_configure (the stage's
//      checks before it frees or allocates anything).
//   2  HelloRequest  4  ReleaseRequest  5  Ack (from a successor)
//   6  StatsRequest  7  grpc.health.v1 HealthCheckRequest: unpacked and
//   every field read as the handlers read it.
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cluster/internal.h"

// The receiver's limits: small, so the fuzzer reaches them.
#define HIDDEN 8
#define MAX_ROWS 16
#define MAX_SEGS 4
// The stage's model, for Configure.
#define FINGERPRINT 0xDEADBEEFull
#define N_LAYERS 10

static struct lp_pb_arena g_arena;
static float g_rows[MAX_ROWS * HIDDEN];

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    size_t row_bytes = (size_t)MAX_ROWS * HIDDEN * sizeof(float);
    if (lp_pb_arena_init(&g_arena, lp_pb_arena_bytes_for(row_bytes, MAX_SEGS), NULL) != LP_OK)
        abort();
    return 0;
}

static void activations(const uint8_t *msg, size_t n, bool rows_are_tokens) {
    Layerpipe__V1__Activations *heap = layerpipe__v1__activations__unpack(NULL, n, msg);
    lp_pb_arena_reset(&g_arena);
    Layerpipe__V1__Activations *ar =
        n <= g_arena.cap ? layerpipe__v1__activations__unpack(&g_arena.alloc, n, msg) : NULL;
    if (ar && !heap) abort(); // the arena accepts only what malloc does
    if (!heap) return;
    struct lp_error err = {0};
    enum lp_status st =
        lp_wire_decode_rows(heap, HIDDEN, MAX_ROWS, MAX_SEGS, rows_are_tokens, g_rows, &err);
    if (st != LP_OK && (st != LP_ERR_PROTOCOL || !err.msg[0])) abort();
    if (st == LP_OK) {
        for (size_t i = 0; i < heap->n_segments; i++) (void)lp_wire_logit_rows(heap->segments[i]);
        (void)lp_wire_dtype_name(heap->dtype);
    }
    if (ar) {
        struct lp_error err2 = {0};
        enum lp_status st2 =
            lp_wire_decode_rows(ar, HIDDEN, MAX_ROWS, MAX_SEGS, rows_are_tokens, g_rows, &err2);
        if (st2 != st || strcmp(err.msg, err2.msg) != 0) abort();
    }
    layerpipe__v1__activations__free_unpacked(heap, NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    size_t n = size - 1;
    // a copy of exactly the message's size
    uint8_t *msg = malloc(n ? n : 1);
    if (!msg) return 0;
    memcpy(msg, data + 1, n);
    volatile size_t sink = 0;
    switch (data[0] & 7) {
    case 0: activations(msg, n, true); break;
    case 1: activations(msg, n, false); break;
    case 2: {
        Layerpipe__V1__HelloRequest *r = layerpipe__v1__hello_request__unpack(NULL, n, msg);
        if (r) sink += r->protocol_version;
        layerpipe__v1__hello_request__free_unpacked(r, NULL);
        break;
    }
    case 3: {
        Layerpipe__V1__ConfigureRequest *r =
            layerpipe__v1__configure_request__unpack(NULL, n, msg);
        if (r) { // the stage's checks before it frees or allocates anything
            struct lp_error err = {0};
            enum lp_status st = lp_wire_check_configure(r, FINGERPRINT, N_LAYERS, 128,
                                                        "127.0.0.1:5001", "model", &err);
            if (st != LP_OK && !err.msg[0]) abort();
            if (st == LP_OK && (r->layer_end > N_LAYERS || !r->successor ||
                                strlen(r->successor) >= 128))
                abort();
        }
        layerpipe__v1__configure_request__free_unpacked(r, NULL);
        break;
    }
    case 4: {
        Layerpipe__V1__ReleaseRequest *r = layerpipe__v1__release_request__unpack(NULL, n, msg);
        for (size_t i = 0; r && i < r->n_sessions; i++) sink += r->sessions[i];
        layerpipe__v1__release_request__free_unpacked(r, NULL);
        break;
    }
    case 5: {
        Layerpipe__V1__Ack *a = layerpipe__v1__ack__unpack(NULL, n, msg);
        if (a) {
            sink += a->step + a->ok + a->status + a->stage_index;
            if (a->error) sink += strlen(a->error);
        }
        layerpipe__v1__ack__free_unpacked(a, NULL);
        break;
    }
    case 6: {
        Layerpipe__V1__StatsRequest *r = layerpipe__v1__stats_request__unpack(NULL, n, msg);
        layerpipe__v1__stats_request__free_unpacked(r, NULL);
        break;
    }
    case 7: {
        Grpc__Health__V1__HealthCheckRequest *r =
            grpc__health__v1__health_check_request__unpack(NULL, n, msg);
        if (r && r->service) sink += strlen(r->service);
        grpc__health__v1__health_check_request__free_unpacked(r, NULL);
        break;
    }
    }
    (void)sink;
    free(msg);
    return 0;
}
