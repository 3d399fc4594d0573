// SPDX-License-Identifier: MIT
// pipeline_i.h -- the coordinator's state, shared by pipeline.c (setup and
// the per-step path) and recover.c (bringing a failed stage's layers back).
// Threads and locks are as pipeline.c's header says.
#ifndef LP_CLUSTER_PIPELINE_I_H
#define LP_CLUSTER_PIPELINE_I_H

#include <pthread.h>

#include "cluster/internal.h"
#include "cluster/rpc.h"
#include "layerpipe/cluster.h"

struct pl_stage {
    char addr[128];
    struct lp_rpc_channel *ch;
    char device[96];
    double gb_s;
    uint64_t free_bytes;
    int layer_begin, layer_end;
    int kv_blocks, kv_block_size; // from its ConfigureReply
};

// One micro-batch between submit and collect.
struct pl_slot {
    uint64_t step;          // 0: free
    double sent_at;         // lp_now_seconds at submit (deadline and hop latency)
    int n_rows;             // logit rows expected
    bool greedy;            // the head gives greedy ids, not rows (submit's greedy_ids)
    bool done;              // rows arrived, or the step failed
    bool filling;           // the Sink is writing rows (collect must not free the slot)
    enum lp_status status;
    char error[LP_ERROR_MSG_BYTES];
    float *rows;            // [max_rows, hidden] the rows needing logits, owned
};

// A session's sequence in the front engine.
struct pl_session {
    uint64_t id; // 0: free
    int seq;
};

#define PL_MAX_SLOTS (LP_MAX_STAGES + 2)

struct lp_pipeline {
    struct lp_pipeline_params params;
    char *model_dir;
    struct lp_model *model;      // coordinator's share: layers [0, a), embedding, head
    struct lp_backend *backend;
    struct lp_engine *front;     // embedding + layers [0, a), hidden rows out
    struct lp_engine *head;      // no layers: final norm + LM head
    struct lp_model_config cfg;
    uint64_t fingerprint;
    size_t weight_bytes;         // the whole model's
    struct lp_plan plan;
    int n_workers;
    struct pl_stage *stages;     // [n_workers]
    struct lp_rpc_server *sink;
    struct lp_rpc_security *sec; // TLS and the cluster token: the Sink and every channel
    char sink_addr[160];
    int max_rows, max_sessions, head_seq, kv_blocks, kv_block_size;
    // scheduler thread only
    struct lp_rpc_client_stream *to_first; // NULL until the first submit, or after it broke
    struct pl_session *sessions; // [max_sessions]
    struct lp_engine_seg *segs;  // [max_sessions]
    int *opened;                 // [max_sessions] front seqs opened by the current submit
    Layerpipe__V1__Segment *wsegs;   // [max_sessions]
    Layerpipe__V1__Segment **wsegp;  // [max_sessions]
    float *rows;                 // [max_rows, hidden] the front's output
    uint8_t *payload;            // [max_rows * hidden * 4] wire payload
    uint8_t *packed;             // [pack_cap] the packed Activations
    size_t pack_cap;
    float *logits;               // [max_rows, vocab] the head's output (collect)
    int32_t *greedy_ids;         // [max_rows] the head's output for a greedy step (collect)
    int32_t *greedy_bad;         // [max_rows] their rows' first non-finite indices
    uint64_t next_step;
    int slot_head;               // oldest slot in flight
    double created_at;
    uint64_t sink_key;           // the last stage's key to the Sink (Configure gives it)
    int hello_timeout_ms;        // 10 s at setup, shorter while recovering
    char standby[LP_MAX_STAGES][128]; // spare workers, in the order given (copied)
    int n_standby, n_standby_used;    // standby workers given, and already taken
    char device_name[96];        // the coordinator's backend, as its device_info says
    // shared with the Sink and stream threads
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct pl_slot slots[PL_MAX_SLOTS]; // ring from slot_head, n_in_flight long
    int n_slots, n_in_flight;
    bool stream_broken;          // to_first ended: reopen on the next submit
    struct lp_pb_arena sink_arena; // Sink thread only
    struct lp_latency hop;
    double busy_s;
    uint64_t tokens, steps, bytes_out, bytes_in;
    int kv_used;                 // the front engine's blocks in use (copied after each change)
};

// Unary call to worker i (packs req; *resp malloc'd).
enum lp_status lp_pl_unary(struct lp_pipeline *p, int i, const char *method,
                           const ProtobufCMessage *req, uint8_t **resp, size_t *n_resp,
                           int timeout_ms, struct lp_error *err);
// (Re)creates worker i's channel and checks its Hello (version, model fingerprint).
enum lp_status lp_pl_hello(struct lp_pipeline *p, int i, struct lp_error *err);
// Configures worker i with its layers and successor (drops its sessions).
enum lp_status lp_pl_configure(struct lp_pipeline *p, int i, struct lp_error *err);
// (Re)opens the activation stream to stage 1.
enum lp_status lp_pl_open_stream(struct lp_pipeline *p, struct lp_error *err);
// Loads the coordinator's share: layers [0, a), embedding and head (drops the old one).
enum lp_status lp_pl_load_share(struct lp_pipeline *p, int a, struct lp_error *err);
// Recomputes the pipeline's KV capacity from every stage.
void lp_pl_kv_capacity(struct lp_pipeline *p);

#endif
