// SPDX-License-Identifier: MIT
// stage_i.h -- the worker's state, shared by stage.c (configuration, the
// unary handlers, the successor's callbacks, lifecycle) and stage_forward.c
// (the Forward stream, the step queue and the compute thread). Threads and
// locks are as stage.c's header says.
#ifndef LP_CLUSTER_STAGE_I_H
#define LP_CLUSTER_STAGE_I_H

#include <pthread.h>

#include "cluster/internal.h"
#include "cluster/rpc.h"
#include "cluster/stage_core.h"
#include "layerpipe/cluster.h"
#include "layerpipe/model.h"

// One received step waiting for the compute thread.
struct stage_item {
    struct lp_rpc_stream *from;     // referenced: the stream that sent it
    Layerpipe__V1__Activations *a;  // unpacked into arena
    struct lp_pb_arena arena;
};

// A step passed to the successor and not yet acknowledged by it.
struct stage_sent {
    uint64_t step;                  // 0: free
    double at;
    struct lp_rpc_stream *from;     // referenced: where its failure goes
};

#define STAGE_QUEUE LP_STAGE_QUEUE // steps queued for compute; past it a step fails with BUSY
#define STAGE_INFLIGHT 64  // steps sent on and not yet acknowledged that we remember

struct lp_worker {
    struct lp_worker_params params;
    char *model_dir, *listen;
    uint64_t sink_key;                    // (last stage) carried to the Sink
    double measured_gb_s;
    char device[96];
    struct lp_backend *backend;
    struct lp_rpc_server *server;
    struct lp_rpc_security *sec; // TLS and the cluster token: server and successor channel
    pthread_t compute;
    bool compute_started;
    // configuration and the engine (engine_mu)
    pthread_mutex_t engine_mu;
    struct lp_stage_core core;            // the model, engine, sessions and their checks
    bool to_sink;
    Layerpipe__V1__DType wire;
    char successor[LP_STAGE_ADDR_BYTES];
    float *rows_sel;                      // [max_rows, hidden] the rows for the Sink
    uint8_t *payload;                     // [max_rows * hidden * 4]
    uint8_t *packed;                      // [pack_cap] the outgoing Activations
    size_t pack_cap;
    struct lp_rpc_channel *succ_ch;
    struct lp_rpc_client_stream *succ;
    // the queue and counters (mu)
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool stopping;
    struct stage_item queue[STAGE_QUEUE];
    int q_head, q_count;
    size_t arena_cap;                     // each queue slot's arena (0: not configured)
    double busy_s, idle_s, last_done;
    uint64_t tokens, steps, bytes_in, bytes_out;
    // what the successor's callbacks touch (mu)
    bool succ_failed;
    char succ_error[LP_ERROR_MSG_BYTES];
    struct stage_sent sent[STAGE_INFLIGHT]; // by step % STAGE_INFLIGHT
    struct lp_latency hop;
    int kv_used, kv_total, n_sessions_open;
};

// Sends a failure Ack for one step (0: the stream as a whole) to a stream.
void lp_stage_ack_failure(struct lp_rpc_stream *to, uint64_t step, enum lp_status st,
                          int stage_index, const char *error);
// Opens the stream to the successor (after a Health check). engine_mu held.
enum lp_status lp_stage_connect(struct lp_worker *w, struct lp_error *err);
// Counts of the KV pool and sessions for Stats. engine_mu held.
void lp_stage_note_kv(struct lp_worker *w);
// Drops every queued step (a new configuration, shutdown). Under mu.
void lp_stage_queue_clear(struct lp_worker *w);
// Frees the queue slots' arenas. Under mu.
void lp_stage_queue_free(struct lp_worker *w);
// The compute thread's body (arg: the worker).
void *lp_stage_compute_main(void *arg);
// The Forward stream's handlers (server thread: unpack and queue, never compute).
extern const struct lp_rpc_stream_handler lp_stage_forward_handler;

#endif
