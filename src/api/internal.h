// SPDX-License-Identifier: MIT
// internal.h -- what the files of src/api share: the server object, the
// per-connection state, error replies in OpenAI's shape, and the metrics
// (lock-free histograms and counters updated from the scheduler thread,
// read by /metrics on a connection thread).
#ifndef LP_API_INTERNAL_H
#define LP_API_INTERNAL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <jansson.h>
#include <microhttpd.h>

#include "layerpipe/api.h"
#include "layerpipe/cluster.h"
#include "layerpipe/model.h"

// ---- a growable NUL-terminated byte buffer (buf.c) ----

struct lp_api_buf {
    char *data; // [cap], NUL-terminated at n once anything was put; NULL before
    size_t n, cap;
};

// Appends n bytes of s (n may be 0); false when out of memory (b unchanged).
bool lp_api_buf_put(struct lp_api_buf *b, const char *s, size_t n);
// Drops the first n <= b->n bytes.
void lp_api_buf_consume(struct lp_api_buf *b, size_t n);
// The contents, "" when nothing was put.
const char *lp_api_buf_str(const struct lp_api_buf *b);

// ---- metrics ----

#define LP_API_HIST_MAX 24

// A Prometheus histogram: bucket i counts observations <= bounds[i]
// (non-cumulative here; summed when rendered). Any thread, no lock.
struct lp_api_hist {
    const double *bounds; // [n_bounds], ascending, static
    int n_bounds;
    atomic_uint_fast64_t buckets[LP_API_HIST_MAX + 1]; // the last one is +Inf
    atomic_uint_fast64_t count;
    atomic_uint_fast64_t sum_ns; // the sum in nanoseconds
};

enum lp_api_finish {
    LP_API_FINISH_STOP,
    LP_API_FINISH_LENGTH,
    LP_API_FINISH_TOOL_CALLS,
    LP_API_FINISH_N
};

struct lp_api_metrics {
    struct lp_api_hist ttft, itl, e2e;
    atomic_uint_fast64_t success[LP_API_FINISH_N]; // requests finished, by finish reason
    atomic_uint_fast64_t http[6];                  // responses by class: 1xx..5xx (index 1..5)
};

void lp_api_metrics_init(struct lp_api_metrics *m);
void lp_api_hist_observe(struct lp_api_hist *h, double seconds);
// The /metrics page, malloc'ed; NULL when out of memory.
char *lp_api_metrics_render(struct lp_server *s, size_t *n_bytes);

// ---- the server ----

// Immutable after lp_server_create, but for the atomics (any thread).
struct lp_server {
    struct MHD_Daemon *mhd;
    struct lp_sched *sched;         // borrowed
    const struct lp_tokenizer *tok; // borrowed
    const struct lp_model *model;   // borrowed
    char *api_key, *model_name;     // owned copies
    size_t max_body_bytes;
    lp_server_log_fn log;
    void *log_user;
    int port;
    int max_context;              // the pipeline's limit, in tokens
    int vocab;                    // the model's vocabulary (embedding rows)
    time_t created;               // for /v1/models
    atomic_bool stopping;         // set by destroy: waiting threads give up
    atomic_uint_fast64_t next_id; // response ids
    atomic_int n_active;          // requests submitted whose DONE has not returned
    struct lp_api_metrics metrics;
};

// One HTTP request (MHD's con_cls). Only its connection's thread touches
// it (MHD calls the handler, the streaming reader and the completion there).
struct lp_api_conn {
    struct lp_server *srv;
    struct MHD_Connection *mhd;
    char method[8];
    char path[128];
    struct lp_api_buf body; // the upload, NUL-terminated (data NULL when empty)
    bool too_big;  // over max_body_bytes: answered 413 at the end
    bool answered; // a response was queued
    int http_status;
    double started;            // lp_sched_now()
    int n_prompt, n_generated; // for the log line
};

// An error to answer: HTTP status, OpenAI error type, the field it is about.
struct lp_api_err {
    int http;
    const char *type; // "invalid_request_error", ...
    const char *code; // NULL or a short code ("invalid_api_key")
    char param[96];   // "" for none
    char msg[320];
};

// Fills e (400 invalid_request_error about `param`) and returns false.
bool lp_api_bad(struct lp_api_err *e, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
// Fills e from an lp_status with the one table; returns false.
bool lp_api_err_from_status(struct lp_api_err *e, enum lp_status st, const char *param,
                            const char *msg);

// Queue a response (takes nothing: the JSON is dumped and the caller keeps j).
enum MHD_Result lp_api_reply_json(struct lp_api_conn *c, int http, const json_t *j);
enum MHD_Result lp_api_reply_err(struct lp_api_conn *c, const struct lp_api_err *e);

// A checked generation request (openai_request.c): its prompt's tokens
// (owned; lp_token_list_deinit), the scheduler request without on_event and
// user, and what the reply needs to know.
struct lp_api_job {
    struct lp_token_list prompt;
    struct lp_sched_request sreq;
    struct lp_text_params tp;
    const char *stops[LP_MAX_STOP_STRINGS]; // borrowed from the body
    bool stream, include_usage, logprobs;
    int n_top;
    int max_tokens; // -1: the rest of the context
};

// The request body (text[n], NULL for none) parsed into j (its prompt list
// initialized by the caller); *body gets the JSON, which j's stop strings
// borrow (the caller decrefs it, also on failure). False with e filled.
bool lp_api_parse_job(struct lp_server *s, const char *text, size_t n, bool chat,
                      struct lp_api_job *j, json_t **body, struct lp_api_err *e);

// POST /v1/chat/completions and /v1/completions (openai.c).
enum MHD_Result lp_api_handle_generate(struct lp_api_conn *c, bool chat);
// The parse step of those, without submitting: the body (text[n]) checked
// and its prompt tokenized as the handler does; *n_prompt gets its tokens.
// False with e filled for a body the handler answers with an error (the
// fuzz harness tests/fuzz/fuzz_openai.c).
bool lp_api_parse_generate(struct lp_server *s, const char *text, size_t n, bool chat,
                           int *n_prompt, struct lp_api_err *e);

// Token bytes as a JSON string: invalid UTF-8 bytes become U+FFFD.
json_t *lp_api_token_string(const struct lp_tokenizer *tok, int32_t id);

#endif
