// SPDX-License-Identifier: MIT
// cluster.h -- a model split into stages over gRPC. A worker serves one
// contiguous layer range (layerpipe.v1.Stage); the coordinator (a
// pipeline) embeds tokens, runs its own first layers, streams hidden states
// through the workers and receives the last stage's rows on its Sink, then
// applies the head. The scheduler drives a pipeline (one process is a
// pipeline of one stage): it holds every active sequence, forms
// micro-batches from them (continuous batching, chunked prefill) and keeps
// up to one micro-batch per stage in flight. `run`, `serve`, `logits`,
// `bench` and `perplexity` all generate through it. See proto/layerpipe.proto.
#ifndef LAYERPIPE_CLUSTER_H
#define LAYERPIPE_CLUSTER_H

#include <stdbool.h>
#include <stdint.h>

#include "layerpipe/engine.h"
#include "layerpipe/status.h"

#define LP_PROTOCOL_VERSION 3 // 2: per-step failure Acks, Segment.no_logits; 3: tensor hashes
#define LP_MAX_STAGES 64

// ---- transport security (workers and the coordinator alike) ----

// One line about a refused call ("refused /layerpipe.v1.Stage/Configure
// from ipv4:10.0.0.9:5512: wrong cluster token"), on a gRPC thread.
typedef void (*lp_security_log_fn)(void *user, const char *line);

// TLS with gRPC's own credentials, and the cluster token. All NULL/false:
// plaintext and no token (then keep the ports on loopback or a trusted net).
struct lp_security_params {
    const char *tls_cert;   // PEM file: this process's certificate (chain); TLS with tls_key
    const char *tls_key;    // PEM file: its private key
    const char *tls_ca;     // PEM file: the cluster CA. Given: mutual TLS (servers require a
                            // client certificate it signed; clients check the server's
                            // against it). Not given: clients use the system's roots.
    const char *token_file; // file whose first line is the cluster token: every call sends
                            // it (metadata "x-layerpipe-token"), every server requires it
    bool health_open;       // grpc.health.v1.Health answers callers without the token
    lp_security_log_fn log; // refused calls, one line each (NULL: silent); borrowed
    void *log_user;
};

// ---- worker ----

struct lp_worker_params {
    const char *model_dir;  // the worker's local copy of the model
    const char *listen;     // "HOST:PORT" (port 0: any free port)
    const char *device;     // backend spec: "cpu" (default), "cuda", "cuda:N"
    int n_threads;          // CPU threads, <= 0 all cores
    int idle_timeout_s;     // a session untouched this long is freed (default 600)
    struct lp_security_params security; // its server and the channel to its successor
};

LP_API struct lp_worker_params lp_worker_params_default(void);

struct lp_worker;

// Reads the model's config and fingerprint (no weights yet: they load on
// Configure, only the configured layers), measures its speed, and starts
// serving. On failure *out is NULL and the message names the problem.
LP_API enum lp_status lp_worker_create(struct lp_worker **out, const struct lp_worker_params *p,
                                       struct lp_error *err);
// The port it serves on (useful when listening on port 0).
LP_API int lp_worker_port(const struct lp_worker *w);
// Stops serving, frees the engine and model. Accepts NULL.
LP_API void lp_worker_destroy(struct lp_worker *w);

// ---- plans ----

// A split of a model's layers: n_stages contiguous ranges, the first on the
// coordinator (possibly empty), then one per worker, in pipeline order.
struct lp_plan {
    int n_stages;                 // 1 + number of workers
    int layers[LP_MAX_STAGES];    // layers of each stage; sum = model layers
};

// Parses "10,9,9" for 1 + n_workers stages. LP_ERR_INVALID_ARG with a
// message when the counts do not add up to n_layers or do not match.
LP_API enum lp_status lp_plan_parse(struct lp_plan *plan, const char *text, int n_workers,
                                    int n_layers, struct lp_error *err);
// Splits n_layers over stages in proportion to weight[i] (e.g. measured
// speed), capped by cap_layers[i] (what fits in memory; < 0 no cap).
LP_API enum lp_status lp_plan_auto(struct lp_plan *plan, int n_stages, int n_layers,
                                   const double *weight, const int *cap_layers,
                                   struct lp_error *err);

// ---- cluster description (flags or a cluster file) ----

// The stages a coordinator drives: its workers in pipeline order, the plan
// and where its Sink listens, as given by --workers/--plan or a cluster file.
struct lp_cluster_spec {
    int n_workers;
    char workers[LP_MAX_STAGES - 1][128]; // "HOST:PORT" each, checked
    char plan[512];                       // "" when not given
    char sink[128];                       // "" when not given
    int n_standby;
    char standby[LP_MAX_STAGES - 1][128]; // spare workers ("standby": ["H:P", ...])
    // "security": {"tls_cert", "tls_key", "tls_ca", "cluster_token_file": PATH,
    // "health_open": bool}; relative paths are read from the file's folder.
    char tls_cert[1024], tls_key[1024], tls_ca[1024], token_file[1024]; // "" when not given
    bool health_open;
};

// Reads {"stages": [{"role": "coordinator", "layers": 10, "sink": "H:P"},
// {"address": "H:P", "layers": 9}, ...], "plan": "auto"}: the first stage is
// the coordinator (no address), the others are workers in pipeline order;
// layer counts are all given or none; an optional "standby": ["H:P", ...]
// lists spare workers; an optional "security" object names the TLS files
// and the token file (see struct lp_cluster_spec). Errors name the file,
// stage and field.
LP_API enum lp_status lp_cluster_spec_read_file(struct lp_cluster_spec *spec, const char *path,
                                                struct lp_error *err);
// Adds the workers of "HOST:PORT,HOST:PORT,..." (ports 1..65535).
LP_API enum lp_status lp_cluster_spec_parse_workers(struct lp_cluster_spec *spec, const char *text,
                                                    struct lp_error *err);
// Adds a standby worker "HOST:PORT".
LP_API enum lp_status lp_cluster_spec_add_standby(struct lp_cluster_spec *spec, const char *addr,
                                                  struct lp_error *err);

// ---- coordinator ----

struct lp_pipeline_params {
    const char *model_dir;
    const char *const *workers;  // [n_workers] "HOST:PORT", in pipeline order (0: one process)
    int n_workers;
    const char *plan;            // "10,9,9", "auto", or NULL for an even split
    enum lp_dtype wire_dtype;    // activations between stages: F32 (default, exact), BF16
                                 // or F16 (half the bytes; F16 is 8x more precise)
    const char *device;          // the coordinator's backend: "cpu" (default), "cuda:N"
    int n_threads;               // coordinator CPU threads
    bool fast;                   // int8 activations for MLX 8-bit (bench only: not exact)
    int max_batch_tokens;        // rows of one micro-batch (default 64)
    int max_sessions;            // sessions open at once (default 4)
    int max_context;             // 0: the model's limit
    bool kv_bf16;
    int timeout_ms;              // a step not answered in time fails (default 30000)
    const char *sink_listen;     // address the Sink listens on (default "127.0.0.1:0")
    const char *sink_advertise;  // address the last stage dials (default: sink_listen's)
    // recovery (lp_pipeline_recover)
    const char *const *standby;  // [n_standby] spare workers "HOST:PORT" for a dead stage
    int n_standby;
    bool replan;                 // let the surviving stages take a dead stage's layers
    int recover_timeout_ms;      // give up on a dead stage after this (default 30000)
    struct lp_security_params security; // channels to the workers and the Sink
};

LP_API struct lp_pipeline_params lp_pipeline_params_default(void);

struct lp_pipeline;

// Connects to every worker (Hello), checks versions and model fingerprints,
// chooses the plan, starts the Sink, configures every stage with its layers
// and successor, and loads the coordinator's own layers, embedding and head.
// With no workers the coordinator holds the whole model: one process is the
// one-stage case of the same pipeline.
LP_API enum lp_status lp_pipeline_create(struct lp_pipeline **out,
                                         const struct lp_pipeline_params *p,
                                         struct lp_error *err);
// Releases open sessions on the stages that answer, stops the Sink.
LP_API void lp_pipeline_destroy(struct lp_pipeline *p);
LP_API const struct lp_plan *lp_pipeline_plan(const struct lp_pipeline *p);
LP_API const struct lp_model_config *lp_pipeline_config(const struct lp_pipeline *p);
LP_API int lp_pipeline_max_context(const struct lp_pipeline *p);
LP_API int lp_pipeline_max_batch_tokens(const struct lp_pipeline *p); // rows per micro-batch
LP_API int lp_pipeline_max_sessions(const struct lp_pipeline *p);
// Weight bytes of every stage together (what one decode step reads).
LP_API size_t lp_pipeline_weight_bytes(const struct lp_pipeline *p);
// KV capacity of the pipeline in blocks of lp_pipeline_kv_block_size
// positions: the smallest pool of any stage (every stage caches every
// session's positions for its own layers).
LP_API int lp_pipeline_kv_blocks(const struct lp_pipeline *p);
LP_API int lp_pipeline_kv_block_size(const struct lp_pipeline *p);

// ---- the batched, asynchronous interface (what the scheduler drives) ----
//
// A micro-batch is segments of several sessions (prefill chunks and
// one-token decode rows mixed). Submit runs the coordinator's own layers on
// it at once and streams the rows on to stage 1 without waiting (with no
// workers it computes the whole step, head included); the logits come back
// through collect, in submission order. Up to n_stages micro-batches in
// flight keep every stage busy. Submit, collect and release are called from
// one thread (the scheduler's).

struct lp_pipeline_seg {
    uint64_t session;      // the caller's id for a sequence (> 0); a new id opens at pos0 0
    int pos0;              // first token's position: the cached length, or less to rewind
    int n_tokens;          // >= 1
    const int32_t *tokens; // [n_tokens], borrowed for the call
    bool want_logits;      // logits of the last token (false: a prompt chunk before the last)
    bool all_logits;       // logits of every token (perplexity, `logits`)
};

// Submits a micro-batch; *step is its number. With greedy_ids its result
// carries each logits row's greedy id (the sampler's temperature-0 choice,
// computed where the head runs: on its device) instead of the rows, which
// then never leave that device. A session may be in at most one uncollected
// micro-batch. LP_ERR_INVALID_ARG for a bad batch, LP_ERR_BUSY when the
// coordinator's KV pool or sessions are exhausted: nothing was submitted and
// nothing changed. Other errors (the stream to stage 1 broke) leave the
// batch's sessions in an unknown state: release them.
LP_API enum lp_status lp_pipeline_submit(struct lp_pipeline *p, const struct lp_pipeline_seg *segs,
                                         int n_segs, bool greedy_ids, uint64_t *step,
                                         struct lp_error *err);

struct lp_pipeline_result {
    uint64_t step;
    enum lp_status status;    // LP_OK, or why this step failed (its sessions must be released)
    char error[LP_ERROR_MSG_BYTES];
    int n_rows;               // logit rows: for each segment in order, its last row if
                              // want_logits, every row if all_logits, none otherwise
    float *logits;            // [n_rows][vocab], borrowed until the next collect (the
                              // caller may change them: sampling works in place);
                              // NULL for a step submitted with greedy_ids
    const int32_t *greedy_ids; // [n_rows] for a step submitted with greedy_ids (else
                               // NULL): each row's greedy id, borrowed until the next collect
    const int32_t *greedy_bad; // [n_rows] with greedy_ids: each row's first NaN or
                               // infinite index, -1 when the row is finite
    bool stage_down;          // the failure is a stage lost or stalled (connection, deadline):
                              // lp_pipeline_recover can bring its layers back
};

// Waits for the oldest submitted micro-batch (up to the pipeline's
// timeout, after which that step fails with LP_ERR_TIMEOUT) and fills *r.
// A failed step is a result with r->status set, not a failed call: the
// pipeline keeps working for other steps (a broken stream to stage 1 is
// reopened on the next submit). Returns LP_ERR_INVALID_ARG when nothing is
// in flight.
LP_API enum lp_status lp_pipeline_collect(struct lp_pipeline *p, struct lp_pipeline_result *r,
                                          struct lp_error *err);
// After a result with stage_down, with nothing in flight: drops every
// session on every stage (the caller re-prefills its sequences from their
// tokens), then brings the lost layers back, trying in order: the same
// address again (reconnect with backoff), a standby worker, or (with
// replan) the surviving stages taking them over, the plan one stage
// shorter. Every stage is configured anew and fingerprints are checked (a
// worker back with another model is refused). Blocks up to
// recover_timeout_ms; on success *how (how_bytes) says which way it went
// ("restarted 127.0.0.1:7001", "standby 127.0.0.1:7009", "replanned
// 10,18"); on failure LP_ERR_NETWORK naming the stage, and the pipeline
// stays usable for another try. Scheduler thread.
LP_API enum lp_status lp_pipeline_recover(struct lp_pipeline *p, char *how, size_t how_bytes,
                                          struct lp_error *err);
// Micro-batches submitted and not yet collected.
LP_API int lp_pipeline_in_flight(const struct lp_pipeline *p);
// Frees a session's KV cache on every stage. The session must not be in flight.
LP_API void lp_pipeline_release(struct lp_pipeline *p, uint64_t session);

// Per-stage counters, the coordinator first.
struct lp_stage_stats {
    char role[16];        // "coordinator" or "worker"
    char address[64];
    char device[96];
    int layer_begin, layer_end;
    double busy_seconds, idle_seconds;
    uint64_t tokens, steps, bytes_in, bytes_out;
    double hop_p50_ms, hop_p99_ms; // to its successor
    int sessions;         // sessions holding KV on the stage
    int kv_blocks_used, kv_blocks_total;
    bool ok;              // false: the stage did not answer Stats
};

// Fills stats[0..n_stages) (coordinator first). Returns the number filled.
// Thread-safe: may run while the scheduler drives the pipeline.
LP_API int lp_pipeline_stats(struct lp_pipeline *p, struct lp_stage_stats *stats, int max);

// ---- scheduler ----
//
// The scheduler owns every request's tokens, sampler and limits, on its own
// thread. Between steps sequences join (admitted from a bounded queue when
// the pipeline's KV room allows) and leave; each micro-batch mixes decode
// rows with prefill chunks under a token budget, so a long prompt never
// stalls running streams; a sequence is in at most one micro-batch in
// flight. A failed step fails only its own requests. Events reach the
// caller through a callback on the scheduler thread.

#define LP_SCHED_MAX_TOP_LOGPROBS 20

struct lp_sched_params {
    int max_seqs;      // requests generating at once (default: the pipeline's max_sessions)
    int max_waiting;   // requests queued for admission beyond them; past it submit
                       // returns LP_ERR_BUSY (default 64)
    int step_tokens;   // token budget of one micro-batch (default: its max_batch_tokens)
    int max_in_flight; // micro-batches in flight (default: the number of stages)
};

LP_API struct lp_sched_params lp_sched_params_default(void);

enum lp_sched_event_kind {
    LP_SCHED_EV_TOKEN,         // a generated token (EOS excluded)
    LP_SCHED_EV_PROMPT_LOGITS, // rows of prompt logits (requests with prompt_logits)
    LP_SCHED_EV_DONE,          // the last event of a request
};

struct lp_sched_event {
    enum lp_sched_event_kind kind;
    uint64_t id;              // the request
    double time;              // lp_sched_now() when the event was made
    // LP_SCHED_EV_TOKEN
    int32_t token;
    float logprob;            // log-softmax of the token (with logprobs; else 0)
    int n_top;                // alternatives in top_ids/top_logprobs (n_top_logprobs)
    const int32_t *top_ids;   // [n_top], most likely first; borrowed for the callback
    const float *top_logprobs;
    // LP_SCHED_EV_PROMPT_LOGITS: logits[n_rows][vocab] of prompt positions pos0..
    int pos0, n_rows, vocab;
    const float *logits;      // borrowed for the callback
    // LP_SCHED_EV_DONE
    enum lp_stop_reason stop; // why generation ended (when status is LP_OK)
    enum lp_status status;    // LP_OK; LP_ERR_CANCELLED; or the failure
    const char *error;        // message when status is not LP_OK; borrowed
    int n_prompt, n_generated;
    double submitted_at, first_token_at; // lp_sched_now() times (first_token_at 0: none)
};

// Called on the scheduler thread; must not block for long. Return true to
// end the request now (a stop string was seen, the client left): a DONE
// event with LP_STOP_CALLBACK follows. The return value of DONE is ignored.
typedef bool (*lp_sched_event_fn)(void *user, const struct lp_sched_event *ev);

struct lp_sched_request {
    const int32_t *prompt;    // [n_prompt], copied by submit
    int n_prompt;
    int max_new_tokens;       // 0 with prompt_logits: score the prompt only
    bool ignore_eos;
    struct lp_sampler_params sampling;
    bool logprobs;            // fill logprob of each token
    int n_top_logprobs;       // 0..LP_SCHED_MAX_TOP_LOGPROBS alternatives per token
    bool prompt_logits;       // PROMPT_LOGITS events with every prompt position's row
    lp_sched_event_fn on_event;
    void *user;               // borrowed until the DONE event returns
};

struct lp_sched;

// Starts the scheduler thread over the pipeline (borrowed: it must outlive
// the scheduler, and nothing else may submit to it). eos ids come from cfg.
LP_API enum lp_status lp_sched_create(struct lp_sched **out, struct lp_pipeline *pipeline,
                                      const struct lp_sched_params *params, struct lp_error *err);
// Ends every request (DONE with LP_ERR_CANCELLED), joins the thread, frees.
// Accepts NULL.
LP_API void lp_sched_destroy(struct lp_sched *s);

// Queues a request; *id names it in events and cancel. Any thread. Returns
// LP_ERR_INVALID_ARG (empty prompt, a prompt that does not fit the context,
// a token id outside the vocabulary, bad sampling values) or LP_ERR_BUSY
// (the waiting queue is full: try later) without calling on_event; after
// LP_OK exactly one DONE event will come.
LP_API enum lp_status lp_sched_submit(struct lp_sched *s, const struct lp_sched_request *req,
                                      uint64_t *id, struct lp_error *err);
// Ends a request early (a DONE with LP_ERR_CANCELLED follows unless it
// already finished); its KV is freed on every stage. Any thread; an unknown
// or finished id is ignored.
LP_API void lp_sched_cancel(struct lp_sched *s, uint64_t id);

// Submits and waits: the blocking form for the command line. Returns the
// DONE event's status (err gets its message).
LP_API enum lp_status lp_sched_run(struct lp_sched *s, const struct lp_sched_request *req,
                                   struct lp_sched_event *done, struct lp_error *err);

struct lp_sched_stats {
    int running, waiting;         // requests generating / queued for admission
    int kv_blocks_used, kv_blocks_total; // the scheduler's reservations in the pipeline's pool
    uint64_t prompt_tokens;       // prompt tokens prefilled
    uint64_t generation_tokens;   // tokens generated
    uint64_t requests_finished;   // DONE with LP_OK
    uint64_t requests_failed;     // DONE with an error (cancel excluded)
    uint64_t requests_cancelled;
    uint64_t steps;               // micro-batches collected
    uint64_t greedy_steps;        // of them, those whose rows came back as greedy ids only
                                  // (every row's request greedy, without logprobs; the
                                  // argmax ran where the head did; LP_NO_DEVICE_ARGMAX=1: none)
    uint64_t step_failures;       // micro-batches that failed
    // recovery: a stage lost mid-request, its layers brought back, the
    // running sequences re-prefilled from their tokens
    uint64_t stage_failures;      // failures that started a recovery
    uint64_t recoveries;          // recoveries that succeeded
    uint64_t recovery_failures;   // recoveries past the deadline (their requests failed)
    uint64_t reprefill_tokens;    // tokens computed again after a recovery
    double recovery_seconds;      // time spent recovering, in all
    char last_recovery[96];       // how the last one went ("restarted H:P", "standby H:P", ...)
};

// A consistent snapshot. Any thread.
LP_API void lp_sched_stats(struct lp_sched *s, struct lp_sched_stats *out);
// The pipeline it drives (for per-stage stats and limits).
LP_API struct lp_pipeline *lp_sched_pipeline(struct lp_sched *s);
// Seconds on the monotonic clock that event times use.
LP_API double lp_sched_now(void);

#endif
