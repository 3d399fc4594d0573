// SPDX-License-Identifier: MIT
// internal.h -- cross-file internals of the cluster module: method names,
// activation (de)serialization with validation, latency samples, and the
// one table mapping a stage's lp_status to what the coordinator reports.
#ifndef LP_CLUSTER_INTERNAL_H
#define LP_CLUSTER_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "health.pb-c.h"
#include "layerpipe.pb-c.h"
#include "layerpipe/status.h"

#define LP_M_HELLO "/layerpipe.v1.Stage/Hello"
#define LP_M_CONFIGURE "/layerpipe.v1.Stage/Configure"
#define LP_M_FORWARD "/layerpipe.v1.Stage/Forward"
#define LP_M_RELEASE "/layerpipe.v1.Stage/Release"
#define LP_M_STATS "/layerpipe.v1.Stage/Stats"
#define LP_M_SINK "/layerpipe.v1.Sink/Forward"
#define LP_M_HEALTH "/grpc.health.v1.Health/Check"

// Largest gRPC message a process accepts: a prefill chunk of 4096 rows of
// hidden 8192 in f32 is 128 MiB.
#define LP_MAX_MESSAGE_BYTES ((size_t)160 << 20)

#define LP_VERSION_STRING "0.1.0"

// Seconds on a monotonic clock.
double lp_now_seconds(void);

// Packs a protobuf-c message into a malloc'd buffer.
enum lp_status lp_pb_pack(const ProtobufCMessage *msg, uint8_t **out, size_t *n,
                          struct lp_error *err);
// Packs into buf[cap] (no allocation); LP_ERR_INVALID_ARG when it does not fit.
enum lp_status lp_pb_pack_into(const ProtobufCMessage *msg, uint8_t *buf, size_t cap, size_t *n,
                               struct lp_error *err);

// A bump allocator for protobuf-c unpacking on the per-step path: each
// message is unpacked into memory set aside when the stage was configured
// and dropped all at once (lp_pb_arena_reset), so no malloc per message.
// An unpack that would exceed the capacity fails (the message is refused).
// One owner thread at a time.
struct lp_pb_arena {
    uint8_t *buf;           // [cap], owned
    size_t cap, used;
    ProtobufCAllocator alloc; // hands out buf; free is a no-op
};
enum lp_status lp_pb_arena_init(struct lp_pb_arena *a, size_t cap, struct lp_error *err);
void lp_pb_arena_deinit(struct lp_pb_arena *a);
static inline void lp_pb_arena_reset(struct lp_pb_arena *a) { a->used = 0; }
// Bytes an arena needs to unpack an Activations message of msg_bytes with
// up to n_segments segments.
size_t lp_pb_arena_bytes_for(size_t msg_bytes, size_t n_segments);
// Unpacks an Activations message (bytes[n]) into the arena, reset first;
// NULL when the bytes are not one or do not fit the arena.
Layerpipe__V1__Activations *lp_pb_arena_unpack_activations(struct lp_pb_arena *a,
                                                           const uint8_t *bytes, size_t n);

// Payload of an Activations message from float rows in the wanted wire
// dtype (f32, bf16, f16); returns the dtype used: f16 falls back to f32
// when a value would overflow it. buf must hold n_elems * 4 bytes.
Layerpipe__V1__DType lp_wire_encode_rows(const float *rows, size_t n_elems,
                                         Layerpipe__V1__DType want, uint8_t *buf,
                                         size_t *n_bytes);
// Rows of a segment that go to the Sink: all (all_logits), none (no_logits), else its last.
uint32_t lp_wire_logit_rows(const Layerpipe__V1__Segment *s);
// The wire dtype's name ("f32", "bf16", "f16").
const char *lp_wire_dtype_name(Layerpipe__V1__DType dtype);
// Checks an Activations message against the receiver's expectations
// (hidden width, rows limit, data length for its dtype, segments that cover
// the rows) and converts its payload to float rows [n_rows][hidden].
// LP_ERR_PROTOCOL with a message naming the field on any mismatch.
enum lp_status lp_wire_decode_rows(const Layerpipe__V1__Activations *a, int hidden, int max_rows,
                                   int max_segments, bool rows_are_tokens, float *rows,
                                   struct lp_error *err);

// The checks of a Configure request that need nothing but the stage's model
// (fingerprint, layer count) and its successor buffer (successor_cap bytes):
// layer range, sizes, KV blocks, successor, dtypes, protocol version.
// listen and model_dir name the stage in messages. Before anything is freed
// or allocated; the stage then checks memory and the ring.
enum lp_status lp_wire_check_configure(const Layerpipe__V1__ConfigureRequest *r,
                                       uint64_t fingerprint, int n_layers, size_t successor_cap,
                                       const char *listen, const char *model_dir,
                                       struct lp_error *err);

// The coordinator's check of a stage's ConfigureReply tensor hashes against
// its own copy of the model (model_dir), layers [layer_begin, layer_end)
// (integrity.c): LP_ERR_INVALID_ARG naming the first tensor that is missing,
// extra or different; stage and addr name the worker in messages.
enum lp_status lp_integrity_check_stage(const char *model_dir, int layer_begin, int layer_end,
                                        const Layerpipe__V1__ConfigureReply *r, int stage,
                                        const char *addr, struct lp_error *err);

// A ring of latency samples (milliseconds); percentiles over what it holds.
#define LP_LAT_SAMPLES 1024
struct lp_latency {
    double ms[LP_LAT_SAMPLES];
    uint64_t n; // samples added (the ring holds the last LP_LAT_SAMPLES)
};
void lp_latency_add(struct lp_latency *l, double ms);
// The q-quantile (0..1) of the held samples; 0 when empty.
double lp_latency_quantile(const struct lp_latency *l, double q);

// Resident set size of this process in bytes, 0 if unknown.
uint64_t lp_rss_bytes(void);

#endif
