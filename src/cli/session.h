// SPDX-License-Identifier: MIT
// session.h -- what run, serve, logits, bench and perplexity share: from
// the common command-line options, a pipeline (one process, or with
// --workers / --cluster the coordinator of stage workers) and the
// scheduler that drives it. Close them again in order.
#ifndef LP_CLI_SESSION_H
#define LP_CLI_SESSION_H

#include <stdbool.h>
#include <stdio.h>

#include "cli/args.h"
#include "layerpipe/backend.h"
#include "layerpipe/cluster.h"
#include "layerpipe/engine.h"
#include "layerpipe/model.h"

struct lp_cli_session_opts {
    const char *model_dir;
    const char *device;   // "cpu" (default), "cuda", "cuda:N"
    int threads;          // <= 0: all cores
    int ctx;              // 0: model limit
    int batch;            // max tokens per micro-batch (prefill chunk), default 64
    const char *kv_dtype; // "f32" or "bf16"
    bool fast;            // int8 activations for 8-bit MLX weights
    int max_seqs;         // sequences at once (default 1)
    int max_waiting;      // requests queued beyond them (default 64)
    int max_in_flight;    // micro-batches in flight (default: the number of stages)
    // the pipeline (any of these makes this process a coordinator)
    const char *workers;    // "HOST:PORT,HOST:PORT,..."
    const char *plan;       // "10,9,9" or "auto"
    const char *cluster;    // cluster file (JSON)
    const char *wire_dtype; // "f32" or "bf16"
    const char *sink;       // where the coordinator's Sink listens
    int timeout_ms;         // per step
    struct lp_arg_list standby; // spare workers for a dead stage
    bool replan;            // let surviving stages take a dead stage's layers
    int recover_timeout_ms; // give up on a dead stage after this
    bool stats;             // print the per-stage table at the end
    // transport security (over the cluster file's "security")
    const char *tls_cert, *tls_key, *tls_ca, *token_file;
    bool health_open;
};

// The option-table entries every model command takes (args.h).
#define LP_CLI_COMMON_ARGS(so)                                                                     \
    {"device", 'd', LP_ARG_STR, &(so).device, "SPEC",                                              \
     "where this process computes: cpu (default), cuda, cuda:N"},                                  \
        {"threads", 't', LP_ARG_INT, &(so).threads, "N", "CPU threads (default: all cores)",       \
         false, 0, 1024},                                                                          \
        {"ctx", 'c', LP_ARG_INT, &(so).ctx, "N", "context limit (default: the model's)", false,    \
         0, 1 << 24},                                                                              \
        {"batch", 'b', LP_ARG_INT, &(so).batch, "N", "prompt tokens per forward pass (default "    \
         "64)", false, 1, 1 << 16},                                                                \
        {"kv-dtype", 0, LP_ARG_STR, &(so).kv_dtype, "f32|bf16", "KV cache type (default f32)"},    \
        {"workers", 'w', LP_ARG_STR, &(so).workers, "H:P,H:P",                                     \
         "run as the coordinator of these stage workers, in pipeline order"},                      \
        {"plan", 0, LP_ARG_STR, &(so).plan, "PLAN",                                                \
         "layers per stage, coordinator first (10,9,9), or auto (default: even split)"},           \
        {"cluster", 0, LP_ARG_STR, &(so).cluster, "FILE",                                          \
         "cluster file (JSON) with the stages instead of --workers/--plan"},                       \
        {"wire-dtype", 0, LP_ARG_STR, &(so).wire_dtype, "f32|bf16|f16",                            \
         "activations between stages (default f32: exact; bf16/f16 half the bytes)"},             \
        {"sink", 0, LP_ARG_STR, &(so).sink, "H:P",                                                 \
         "where the coordinator listens for the last stage (default 127.0.0.1:0)"},               \
        {"timeout", 0, LP_ARG_INT, &(so).timeout_ms, "MS",                                         \
         "fail a step not answered in time (default 30000)", false, 1, 86400000},                  \
        {"standby", 0, LP_ARG_LIST, &(so).standby, "H:P",                                       \
         "a spare worker that takes a dead stage's layers (repeatable)"},                          \
        {"replan", 0, LP_ARG_FLAG, &(so).replan, NULL,                                             \
         "when a stage dies for good, let the others take its layers"},                            \
        {"recover-timeout", 0, LP_ARG_INT, &(so).recover_timeout_ms, "MS",                         \
         "end requests with an error if a dead stage is not back in time (default 30000)", false,  \
         1, 86400000},                                                                             \
        {"max-in-flight", 0, LP_ARG_INT, &(so).max_in_flight, "N",                              \
         "micro-batches in flight at once (default: one per stage; at most stages + 1)", false,   \
         1, LP_MAX_STAGES + 1},                                                                    \
        {"stats", 0, LP_ARG_FLAG, &(so).stats, NULL, "print per-stage utilization at the end"}, \
        LP_CLI_SECURITY_ARGS(so)

// The transport security options, shared by the coordinator commands and
// `worker` (`so` has tls_cert, tls_key, tls_ca, token_file, health_open).
#define LP_CLI_SECURITY_ARGS(so)                                                                   \
    {"tls-cert", 0, LP_ARG_STR, &(so).tls_cert, "PEM",                                             \
     "this process's certificate: gRPC between stages over TLS (with --tls-key)"},                 \
        {"tls-key", 0, LP_ARG_STR, &(so).tls_key, "PEM", "the private key of --tls-cert"},         \
        {"tls-ca", 0, LP_ARG_STR, &(so).tls_ca, "PEM",                                             \
         "the cluster CA: mutual TLS, each side checks the other's certificate against it"},      \
        {"cluster-token-file", 0, LP_ARG_STR, &(so).token_file, "FILE",                            \
         "a shared secret (first line) every call carries and every stage requires"},             \
        {"health-open", 0, LP_ARG_FLAG, &(so).health_open, NULL,                                   \
         "answer grpc.health.v1.Health without the cluster token"}

struct lp_cli_session {
    struct lp_model *model;       // the whole model's headers: config, generation defaults
    struct lp_pipeline *pipeline; // one stage (this process) or several
    struct lp_sched *sched;       // what every command generates through
    size_t weight_bytes;          // every stage's weights together (what a decode step reads)
    char device[96];              // e.g. "cpu (2 threads)" or "pipeline of 3 stages"
    double opened_at;
};

// Opens everything; on failure prints the error to stderr and returns false
// with the session closed.
bool lp_cli_session_open(struct lp_cli_session *s, const struct lp_cli_session_opts *o,
                         const char *cmd);
// Prints the per-stage table (layers, device, busy %, tokens/s, hop latency,
// bytes moved) to fp.
void lp_cli_session_print_stats(struct lp_cli_session *s, FILE *fp);
void lp_cli_session_close(struct lp_cli_session *s);

#endif
