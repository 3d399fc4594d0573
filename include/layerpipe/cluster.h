// SPDX-License-Identifier: MIT
// cluster.h -- a model split into stages over gRPC. A worker serves one
// contiguous layer range (layerpipe.v1.Stage); the coordinator (a
// pipeline) embeds tokens, runs its own first layers, streams hidden states
// through the workers and receives the last stage's rows on its Sink, then
// applies the head. The pipeline is a struct lp_runner, so generation,
// logits and benchmarks run on it unchanged. See proto/layerpipe.proto.
#ifndef LAYERPIPE_CLUSTER_H
#define LAYERPIPE_CLUSTER_H

#include <stdbool.h>
#include <stdint.h>

#include "layerpipe/engine.h"
#include "layerpipe/status.h"

#define LP_PROTOCOL_VERSION 1
#define LP_MAX_STAGES 64

// ---- worker ----

struct lp_worker_params {
    const char *model_dir;  // the worker's local copy of the model
    const char *listen;     // "HOST:PORT" (port 0: any free port)
    int n_threads;          // CPU threads, <= 0 all cores
    int idle_timeout_s;     // a session untouched this long is freed (default 600)
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

// ---- coordinator ----

struct lp_pipeline_params {
    const char *model_dir;
    const char *const *workers;  // [n_workers] "HOST:PORT", in pipeline order
    int n_workers;
    const char *plan;            // "10,9,9", "auto", or NULL for an even split
    enum lp_dtype wire_dtype;    // activations between stages: F32 (default, exact), BF16
                                 // or F16 (half the bytes; F16 is 8x more precise)
    int n_threads;               // coordinator CPU threads
    int max_batch_tokens;        // prefill chunk (default 64)
    int max_sessions;            // default 4
    int max_context;             // 0: the model's limit
    bool kv_bf16;
    int timeout_ms;              // a step not answered in time fails (default 30000)
    const char *sink_listen;     // address the Sink listens on (default "127.0.0.1:0")
    const char *sink_advertise;  // address the last stage dials (default: sink_listen's)
};

LP_API struct lp_pipeline_params lp_pipeline_params_default(void);

struct lp_pipeline;

// Connects to every worker (Hello), checks versions and model fingerprints,
// chooses the plan, starts the Sink, configures every stage with its layers
// and successor, and loads the coordinator's own layers, embedding and head.
LP_API enum lp_status lp_pipeline_create(struct lp_pipeline **out,
                                         const struct lp_pipeline_params *p,
                                         struct lp_error *err);
// Releases open sessions on the stages that answer, stops the Sink.
LP_API void lp_pipeline_destroy(struct lp_pipeline *p);
// The pipeline as a runner (valid while p lives).
LP_API struct lp_runner lp_pipeline_runner(struct lp_pipeline *p);
LP_API const struct lp_plan *lp_pipeline_plan(const struct lp_pipeline *p);
LP_API const struct lp_model_config *lp_pipeline_config(const struct lp_pipeline *p);

// Per-stage counters, the coordinator first.
struct lp_stage_stats {
    char role[16];        // "coordinator" or "worker"
    char address[64];
    char device[64];
    int layer_begin, layer_end;
    double busy_seconds, idle_seconds;
    uint64_t tokens, steps, bytes_in, bytes_out;
    double hop_p50_ms, hop_p99_ms; // to its successor
    bool ok;              // false: the stage did not answer Stats
};

// Fills stats[0..n_stages) (coordinator first). Returns the number filled.
LP_API int lp_pipeline_stats(struct lp_pipeline *p, struct lp_stage_stats *stats, int max);

#endif
