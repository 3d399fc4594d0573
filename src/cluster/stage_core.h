// SPDX-License-Identifier: MIT
// stage_core.h -- a stage's state machine without its transport: what a
// Configure asks for (checked before anything is freed or allocated), the
// layers it loads (with their tensor hashes), the sessions and KV cache,
// and every check a Forward step or a Release passes before it changes
// anything. The worker (stage.c, stage_forward.c) wraps it in gRPC, a step
// queue and a compute thread; the fuzz harness tests/fuzz/fuzz_stage.c
// drives it directly with any sequence of messages.
// Not thread-safe: the worker calls it under its engine_mu (the step
// unpacking, lp_stage_core_unpack_step, only reads what is set at init).
#ifndef LP_CLUSTER_STAGE_CORE_H
#define LP_CLUSTER_STAGE_CORE_H

#include <stdbool.h>
#include <stdint.h>

#include "cluster/internal.h"
#include "layerpipe/backend.h"
#include "layerpipe/engine.h"
#include "layerpipe/model.h"

#define LP_STAGE_QUEUE 8       // steps a worker queues for compute (each has an arena)
#define LP_STAGE_ADDR_BYTES 128 // a successor address, NUL included

struct lp_stage_session {
    uint64_t id;
    int seq;          // engine sequence, -1 when the slot is free
    double last_used; // lp_now_seconds
};

struct lp_stage_core {
    // set by init (read-only after, but listen, which the worker may repoint)
    const char *model_dir;   // borrowed from the worker
    const char *listen;      // borrowed from the worker: names the stage in messages
    struct lp_backend *backend; // borrowed
    uint64_t fingerprint;
    struct lp_model_config cfg; // the model's
    size_t weight_bytes;     // every layer's (for the memory check)
    int n_layers, hidden;
    int idle_timeout_s;      // free a session unused this long (0: never)
    uint64_t mem_cap;        // 0: the device's free memory bounds a Configure; else also this
    // the configuration
    bool configured;
    int stage_index, layer_begin, layer_end, max_rows, max_sessions;
    struct lp_model *model;
    struct lp_engine *engine;
    struct lp_stage_session *sessions; // [max_sessions]
    float *rows_in, *rows_out;         // [max_rows, hidden]
    struct lp_engine_seg *segs;        // [max_sessions]
    int *opened_now;                   // [max_sessions] sessions opened by this step
    struct lp_tensor_hash *hashes;     // [n_hashes] of the loaded layers, names borrowed from model
    int n_hashes;
};

// Reads the model's headers (config, fingerprint, size; unmapped again:
// a stage keeps only its layers resident). model_dir, listen and backend are
// borrowed for the core's life.
enum lp_status lp_stage_core_init(struct lp_stage_core *c, const char *model_dir,
                                  const char *listen, struct lp_backend *backend,
                                  int idle_timeout_s, struct lp_error *err);
void lp_stage_core_deinit(struct lp_stage_core *c); // unloads; accepts a zeroed core

// A Configure's checks that need no network: the request's fields
// (lp_wire_check_configure) and what it asks for against the memory free
// now. Changes nothing.
enum lp_status lp_stage_core_check(const struct lp_stage_core *c,
                                   const Layerpipe__V1__ConfigureRequest *r, struct lp_error *err);
// Drops the configuration (every session) and loads the one of r (checked
// by lp_stage_core_check): the layers, their tensor hashes, the engine and
// the step buffers. On failure the core is left unconfigured.
enum lp_status lp_stage_core_load(struct lp_stage_core *c, const Layerpipe__V1__ConfigureRequest *r,
                                  struct lp_error *err);
void lp_stage_core_unload(struct lp_stage_core *c);

// Unpacks one Forward message (bytes[n]) into arena (reset first) as the
// stage receives it, and checks that its step is above *last_step, the
// stream's last (then updates it). LP_ERR_PROTOCOL for bytes that are not
// Activations fitting the arena (*a NULL) and for a step out of order (*a
// set, so the refusal can name the step).
enum lp_status lp_stage_core_unpack_step(const struct lp_stage_core *c, struct lp_pb_arena *arena,
                                         uint64_t *last_step, const uint8_t *bytes, size_t n,
                                         Layerpipe__V1__Activations **a, struct lp_error *err);
// Checks a step against the configuration and the sessions (rows, width,
// dtype, segments, positions, room), then runs its rows through the
// engine into rows_out [n_rows, hidden]. A refused or failed step opens,
// closes and moves no session.
enum lp_status lp_stage_core_compute(struct lp_stage_core *c, const Layerpipe__V1__Activations *a,
                                     struct lp_error *err);
// A Release request (bytes[n]): bounded (64 KiB, 4096 ids), then each open
// session it names is freed (*released counts them; unknown ids are ignored).
enum lp_status lp_stage_core_release(struct lp_stage_core *c, const uint8_t *bytes, size_t n,
                                     uint32_t *released, struct lp_error *err);

// Positions cached for session id, -1 when it is not open.
int lp_stage_core_session_len(const struct lp_stage_core *c, uint64_t id);
// Open sessions and KV blocks in use (0 when not configured).
void lp_stage_core_usage(const struct lp_stage_core *c, int *n_open, int *kv_used);

#endif
