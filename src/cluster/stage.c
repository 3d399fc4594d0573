// SPDX-License-Identifier: MIT
// stage.c -- the worker: a layerpipe.v1.Stage server over one contiguous
// layer range. At start it maps the model's headers only (config and
// fingerprint); Configure loads just its layers and sizes the KV pool, and
// connects to its successor. Each Forward message (a micro-batch of
// sessions' rows) is checked, run through the engine on the server thread,
// passed on to the successor (only the rows needing logits when the
// successor is the coordinator's Sink), and acknowledged upstream.
// Threads: handlers run on the server's thread; successor callbacks on the
// successor channel's thread; `mu` guards what both touch (successor
// failure, in-flight send times, hop latencies, the upstream stream).
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster/internal.h"
#include "cluster/rpc.h"
#include "layerpipe/cluster.h"
#include "layerpipe/model.h"

struct stage_session {
    uint64_t id;
    int seq;          // engine sequence, -1 when the slot is free
    double last_used; // lp_now_seconds
};

#define STAGE_INFLIGHT 256

struct lp_worker {
    struct lp_worker_params params;
    char *model_dir, *listen;
    struct lp_model *headers; // config + fingerprint only (no layers)
    uint64_t fingerprint;
    int n_layers, hidden;
    double measured_gb_s;
    char device[64];
    struct lp_backend *backend;
    struct lp_rpc_server *server;
    // configuration (server thread only)
    bool configured;
    int stage_index, layer_begin, layer_end, max_rows, max_sessions;
    bool to_sink;
    Layerpipe__V1__DType wire;
    char successor[128];
    struct lp_model *model;
    struct lp_engine *engine;
    struct stage_session *sessions; // [max_sessions]
    float *rows_in, *rows_out, *rows_sel; // [max_rows, hidden]
    uint8_t *payload;                     // [max_rows * hidden * 4]
    struct lp_engine_seg *segs;           // [max_sessions]
    int *opened_now;                      // [max_sessions] sessions opened by this step
    struct lp_rpc_channel *succ_ch;
    struct lp_rpc_client_stream *succ;
    // counters (server thread)
    double busy_s, idle_s, last_done;
    uint64_t tokens, steps, bytes_in, bytes_out;
    // shared with the successor's thread
    pthread_mutex_t mu;
    bool succ_failed;
    char succ_error[256];
    double sent_at[STAGE_INFLIGHT]; // by step % STAGE_INFLIGHT
    uint64_t sent_step[STAGE_INFLIGHT];
    struct lp_latency hop;
    struct lp_rpc_stream *upstream; // the current Forward stream (referenced), for async errors
};

struct lp_worker_params lp_worker_params_default(void) {
    struct lp_worker_params p = {.model_dir = NULL, .listen = "127.0.0.1:7070", .n_threads = 0,
                                 .idle_timeout_s = 600};
    return p;
}

// ---- successor callbacks (successor channel thread) ----

static void stage_report_upstream(struct lp_worker *w, const char *error);

static void succ_on_reply(void *user, const uint8_t *msg, size_t bytes) {
    struct lp_worker *w = user;
    Layerpipe__V1__Ack *ack = layerpipe__v1__ack__unpack(NULL, bytes, msg);
    if (!ack) return;
    double now = lp_now_seconds();
    pthread_mutex_lock(&w->mu);
    size_t k = ack->step % STAGE_INFLIGHT;
    if (w->sent_step[k] == ack->step && w->sent_at[k] > 0) {
        double ms = (now - w->sent_at[k] - ack->compute_seconds) * 1e3;
        lp_latency_add(&w->hop, ms > 0 ? ms : 0);
        w->sent_at[k] = 0;
    }
    if (!ack->ok && !w->succ_failed) { // pass a failure further down the line on to ours
        w->succ_failed = true;
        snprintf(w->succ_error, sizeof w->succ_error, "%s", ack->error);
        stage_report_upstream(w, w->succ_error);
    }
    pthread_mutex_unlock(&w->mu);
    layerpipe__v1__ack__free_unpacked(ack, NULL);
}

// Tells the predecessor at once, through an Ack on its stream, so a
// coordinator waiting for the Sink learns of a dead stage without waiting
// for its deadline.
static void stage_report_upstream(struct lp_worker *w, const char *error) {
    struct lp_rpc_stream *up = w->upstream;
    if (!up) return;
    Layerpipe__V1__Ack ack = LAYERPIPE__V1__ACK__INIT;
    ack.ok = false;
    ack.error = (char *)error;
    uint8_t *buf;
    size_t n;
    if (lp_pb_pack(&ack.base, &buf, &n, NULL) == LP_OK) {
        lp_rpc_stream_send(up, buf, n, NULL);
        free(buf);
    }
}

static void succ_on_end(void *user, enum lp_status st, const char *msg) {
    struct lp_worker *w = user;
    if (st == LP_OK) return;
    pthread_mutex_lock(&w->mu);
    if (!w->succ_failed) {
        w->succ_failed = true;
        snprintf(w->succ_error, sizeof w->succ_error, "stage %d (%s): successor %s failed: %s",
                 w->stage_index, w->listen, w->successor, msg);
        stage_report_upstream(w, w->succ_error);
    }
    pthread_mutex_unlock(&w->mu);
}

// ---- configuration ----

static void stage_unconfigure(struct lp_worker *w) {
    lp_rpc_client_stream_close(w->succ, 2000);
    w->succ = NULL;
    lp_rpc_channel_destroy(w->succ_ch);
    w->succ_ch = NULL;
    lp_engine_destroy(w->engine);
    w->engine = NULL;
    lp_model_close(w->model);
    w->model = NULL;
    free(w->sessions);
    free(w->rows_in);
    free(w->rows_out);
    free(w->rows_sel);
    free(w->payload);
    free(w->segs);
    free(w->opened_now);
    w->opened_now = NULL;
    w->sessions = NULL;
    w->rows_in = w->rows_out = w->rows_sel = NULL;
    w->payload = NULL;
    w->segs = NULL;
    w->configured = false;
    w->max_rows = w->max_sessions = 0;
    pthread_mutex_lock(&w->mu);
    w->succ_failed = false;
    w->succ_error[0] = '\0';
    memset(&w->hop, 0, sizeof w->hop);
    memset(w->sent_at, 0, sizeof w->sent_at);
    pthread_mutex_unlock(&w->mu);
    w->busy_s = w->idle_s = 0;
    w->tokens = w->steps = w->bytes_in = w->bytes_out = 0;
}

static enum lp_status stage_configure(struct lp_worker *w, const Layerpipe__V1__ConfigureRequest *r,
                                      Layerpipe__V1__ConfigureReply *reply, struct lp_error *err) {
    if (r->model_fingerprint != w->fingerprint)
        return lp_error_set(err, LP_ERR_INVALID_ARG,
                            "stage %s: model fingerprint %016llx differs from this worker's "
                            "%016llx (%s): the coordinator and the worker have different models",
                            w->listen, (unsigned long long)r->model_fingerprint,
                            (unsigned long long)w->fingerprint, w->model_dir);
    if (r->layer_begin >= r->layer_end || r->layer_end > (uint32_t)w->n_layers)
        return lp_error_set(err, LP_ERR_INVALID_ARG,
                            "stage %s: layers [%u, %u) are not a non-empty range of the model's %d",
                            w->listen, r->layer_begin, r->layer_end, w->n_layers);
    if (r->max_sessions == 0 || r->max_sessions > 4096 || r->max_batch_tokens == 0 ||
        r->max_batch_tokens > 65536 || r->max_context > (1u << 24))
        return lp_error_set(err, LP_ERR_INVALID_ARG,
                            "stage %s: sessions %u, batch %u, context %u out of range", w->listen,
                            r->max_sessions, r->max_batch_tokens, r->max_context);
    uint64_t max_blocks = (uint64_t)r->max_sessions * ((r->max_context + 31) / 32 + 1);
    if (r->kv_blocks > max_blocks)
        return lp_error_set(err, LP_ERR_INVALID_ARG,
                            "stage %s: %u KV blocks, more than %llu sessions x context need",
                            w->listen, r->kv_blocks, (unsigned long long)max_blocks);
    if (!r->successor || !r->successor[0] || strlen(r->successor) >= sizeof w->successor)
        return lp_error_set(err, LP_ERR_INVALID_ARG, "stage %s: no successor address", w->listen);
    if (r->wire_dtype != LAYERPIPE__V1__DTYPE__DTYPE_F32 &&
        r->wire_dtype != LAYERPIPE__V1__DTYPE__DTYPE_BF16 &&
        r->wire_dtype != LAYERPIPE__V1__DTYPE__DTYPE_F16)
        return lp_error_set(err, LP_ERR_INVALID_ARG, "stage %s: unknown wire dtype %d", w->listen,
                            (int)r->wire_dtype);
    stage_unconfigure(w);
    struct lp_model_load_params lp = {.layer_begin = (int)r->layer_begin,
                                      .layer_end = (int)r->layer_end,
                                      .load_embed = false,
                                      .load_head = false};
    enum lp_status st = lp_model_open(&w->model, w->model_dir, &lp, err);
    if (st != LP_OK) return st;
    struct lp_engine_params ep = lp_engine_params_default();
    ep.max_batch_tokens = (int)r->max_batch_tokens;
    ep.max_seqs = (int)r->max_sessions;
    ep.max_logit_rows = 1;
    ep.max_context = (int)r->max_context;
    ep.n_kv_blocks = (int)r->kv_blocks;
    ep.kv_dtype = r->kv_dtype == LAYERPIPE__V1__DTYPE__DTYPE_BF16 ? LP_DTYPE_BF16 : LP_DTYPE_F32;
    if ((st = lp_engine_create(&w->engine, w->model, w->backend, &ep, err)) != LP_OK) goto fail;
    w->max_rows = (int)r->max_batch_tokens;
    w->max_sessions = (int)r->max_sessions;
    size_t row_bytes = (size_t)w->max_rows * (size_t)w->hidden * sizeof(float);
    w->sessions = malloc((size_t)w->max_sessions * sizeof *w->sessions);
    w->segs = malloc((size_t)w->max_sessions * sizeof *w->segs);
    w->opened_now = malloc((size_t)w->max_sessions * sizeof *w->opened_now);
    w->rows_in = malloc(row_bytes);
    w->rows_out = malloc(row_bytes);
    w->rows_sel = malloc(row_bytes);
    w->payload = malloc(row_bytes);
    if (!w->sessions || !w->segs || !w->opened_now || !w->rows_in || !w->rows_out || !w->rows_sel || !w->payload) {
        st = lp_error_set(err, LP_ERR_NOMEM, "stage %s: out of memory", w->listen);
        goto fail;
    }
    for (int i = 0; i < w->max_sessions; i++) w->sessions[i].seq = -1;
    snprintf(w->successor, sizeof w->successor, "%s", r->successor);
    w->to_sink = r->successor_is_sink;
    w->wire = r->wire_dtype;
    w->stage_index = (int)r->stage_index;
    w->layer_begin = (int)r->layer_begin;
    w->layer_end = (int)r->layer_end;
    // the successor must be up now: a clear error beats a stream that dies later
    if ((st = lp_rpc_channel_create(&w->succ_ch, w->successor, LP_MAX_MESSAGE_BYTES, err)) !=
        LP_OK)
        goto fail;
    Grpc__Health__V1__HealthCheckRequest hreq = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    uint8_t *req = NULL, *resp = NULL;
    size_t n_req = 0, n_resp = 0;
    if ((st = lp_pb_pack(&hreq.base, &req, &n_req, err)) != LP_OK) goto fail;
    st = lp_rpc_call_unary(w->succ_ch, LP_M_HEALTH, req, n_req, &resp, &n_resp, 5000, err);
    free(req);
    free(resp);
    if (st != LP_OK) {
        lp_error_prefix(err, "stage %d (%s) cannot reach its successor: ", w->stage_index,
                        w->listen);
        goto fail;
    }
    st = lp_rpc_stream_open(w->succ_ch, w->to_sink ? LP_M_SINK : LP_M_FORWARD, succ_on_reply,
                            succ_on_end, w, &w->succ, err);
    if (st != LP_OK) goto fail;
    w->configured = true;
    w->last_done = lp_now_seconds();
    reply->weight_bytes = lp_model_weight_bytes(w->model);
    reply->kv_bytes = lp_engine_kv_bytes(w->engine);
    fprintf(stderr, "layerpipe worker %s: stage %d, layers [%d, %d), successor %s%s, %s wire\n",
            w->listen, w->stage_index, w->layer_begin, w->layer_end, w->successor,
            w->to_sink ? " (sink)" : "",
            lp_wire_dtype_name(w->wire));
    return LP_OK;
fail:
    stage_unconfigure(w);
    return st;
}

// ---- unary handlers (server thread) ----

static enum lp_status h_hello(void *user, const uint8_t *req, size_t n_req, uint8_t **resp,
                              size_t *n_resp, struct lp_error *err) {
    struct lp_worker *w = user;
    Layerpipe__V1__HelloRequest *r = layerpipe__v1__hello_request__unpack(NULL, n_req, req);
    if (!r) return lp_error_set(err, LP_ERR_PROTOCOL, "Hello: malformed request");
    layerpipe__v1__hello_request__free_unpacked(r, NULL);
    Layerpipe__V1__HelloReply h = LAYERPIPE__V1__HELLO_REPLY__INIT;
    h.protocol_version = LP_PROTOCOL_VERSION;
    h.version = LP_VERSION_STRING;
    h.model_fingerprint = w->fingerprint;
    h.n_layers = (uint32_t)w->n_layers;
    h.device = w->device;
    h.free_memory_bytes = lp_mem_available();
    h.measured_gb_s = w->measured_gb_s;
    h.listen_address = w->listen;
    return lp_pb_pack(&h.base, resp, n_resp, err);
}

static enum lp_status h_configure(void *user, const uint8_t *req, size_t n_req, uint8_t **resp,
                                  size_t *n_resp, struct lp_error *err) {
    struct lp_worker *w = user;
    Layerpipe__V1__ConfigureRequest *r =
        layerpipe__v1__configure_request__unpack(NULL, n_req, req);
    if (!r) return lp_error_set(err, LP_ERR_PROTOCOL, "Configure: malformed request");
    Layerpipe__V1__ConfigureReply reply = LAYERPIPE__V1__CONFIGURE_REPLY__INIT;
    enum lp_status st = stage_configure(w, r, &reply, err);
    layerpipe__v1__configure_request__free_unpacked(r, NULL);
    if (st != LP_OK) return st;
    return lp_pb_pack(&reply.base, resp, n_resp, err);
}

static int stage_release_session(struct lp_worker *w, uint64_t id) {
    for (int i = 0; w->sessions && i < w->max_sessions; i++)
        if (w->sessions[i].seq >= 0 && w->sessions[i].id == id) {
            lp_engine_seq_close(w->engine, w->sessions[i].seq);
            w->sessions[i].seq = -1;
            return 1;
        }
    return 0;
}

static enum lp_status h_release(void *user, const uint8_t *req, size_t n_req, uint8_t **resp,
                                size_t *n_resp, struct lp_error *err) {
    struct lp_worker *w = user;
    Layerpipe__V1__ReleaseRequest *r = layerpipe__v1__release_request__unpack(NULL, n_req, req);
    if (!r) return lp_error_set(err, LP_ERR_PROTOCOL, "Release: malformed request");
    Layerpipe__V1__ReleaseReply reply = LAYERPIPE__V1__RELEASE_REPLY__INIT;
    for (size_t i = 0; i < r->n_sessions; i++)
        reply.released += (uint32_t)stage_release_session(w, r->sessions[i]);
    layerpipe__v1__release_request__free_unpacked(r, NULL);
    return lp_pb_pack(&reply.base, resp, n_resp, err);
}

static enum lp_status h_stats(void *user, const uint8_t *req, size_t n_req, uint8_t **resp,
                              size_t *n_resp, struct lp_error *err) {
    struct lp_worker *w = user;
    (void)req;
    (void)n_req;
    Layerpipe__V1__StatsReply s = LAYERPIPE__V1__STATS_REPLY__INIT;
    s.stage_index = (uint32_t)w->stage_index;
    s.layer_begin = (uint32_t)w->layer_begin;
    s.layer_end = (uint32_t)w->layer_end;
    s.device = w->device;
    s.busy_seconds = w->busy_s;
    s.idle_seconds = w->idle_s + (w->configured ? lp_now_seconds() - w->last_done : 0);
    s.tokens = w->tokens;
    s.steps = w->steps;
    s.bytes_in = w->bytes_in;
    s.bytes_out = w->bytes_out;
    pthread_mutex_lock(&w->mu);
    s.hop_p50_ms = lp_latency_quantile(&w->hop, 0.5);
    s.hop_p99_ms = lp_latency_quantile(&w->hop, 0.99);
    pthread_mutex_unlock(&w->mu);
    for (int i = 0; w->sessions && i < w->max_sessions; i++) s.sessions += w->sessions[i].seq >= 0;
    return lp_pb_pack(&s.base, resp, n_resp, err);
}

static enum lp_status h_health(void *user, const uint8_t *req, size_t n_req, uint8_t **resp,
                               size_t *n_resp, struct lp_error *err) {
    (void)user;
    Grpc__Health__V1__HealthCheckRequest *r =
        grpc__health__v1__health_check_request__unpack(NULL, n_req, req);
    if (!r) return lp_error_set(err, LP_ERR_PROTOCOL, "Health.Check: malformed request");
    bool known = !r->service[0] || strcmp(r->service, "layerpipe.v1.Stage") == 0;
    grpc__health__v1__health_check_request__free_unpacked(r, NULL);
    Grpc__Health__V1__HealthCheckResponse h = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
    h.status = known ? GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING
                     : GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVICE_UNKNOWN;
    return lp_pb_pack(&h.base, resp, n_resp, err);
}

// ---- the Forward stream (server thread) ----

static enum lp_status fwd_open(void *user, struct lp_rpc_stream *s, void **stream_user,
                               struct lp_error *err) {
    struct lp_worker *w = user;
    if (!w->configured)
        return lp_error_set(err, LP_ERR_INVALID_ARG, "stage %s: Forward before Configure",
                            w->listen);
    pthread_mutex_lock(&w->mu);
    if (w->upstream) lp_rpc_stream_unref(w->upstream);
    lp_rpc_stream_ref(s);
    w->upstream = s;
    pthread_mutex_unlock(&w->mu);
    *stream_user = NULL;
    return LP_OK;
}

static void fwd_close(void *user, void *stream_user, enum lp_status st, const char *msg) {
    struct lp_worker *w = user;
    (void)stream_user;
    (void)st;
    (void)msg;
    (void)w;
}

// The session slot of an id, or -1.
static int stage_find(const struct lp_worker *w, uint64_t id) {
    for (int i = 0; i < w->max_sessions; i++)
        if (w->sessions[i].seq >= 0 && w->sessions[i].id == id) return i;
    return -1;
}

// Frees the slot holding engine sequence seq.
static void stage_close_seq(struct lp_worker *w, int seq) {
    for (int i = 0; i < w->max_sessions; i++)
        if (w->sessions[i].seq == seq) {
            lp_engine_seq_close(w->engine, seq);
            w->sessions[i].seq = -1;
        }
}

// Checks positions and room for every segment of a message, changing nothing.
static enum lp_status stage_check_segments(struct lp_worker *w,
                                           const Layerpipe__V1__Activations *a,
                                           struct lp_error *err) {
    int n_new = 0, n_free = 0;
    for (int i = 0; i < w->max_sessions; i++) n_free += w->sessions[i].seq < 0;
    for (size_t i = 0; i < a->n_segments; i++) {
        const Layerpipe__V1__Segment *g = a->segments[i];
        for (size_t j = 0; j < i; j++)
            if (a->segments[j]->session == g->session)
                return lp_error_set(err, LP_ERR_INVALID_ARG,
                                    "stage %d: session %llu appears twice in step %llu",
                                    w->stage_index, (unsigned long long)g->session,
                                    (unsigned long long)a->step);
        int slot = stage_find(w, g->session);
        if (slot < 0) {
            if (g->pos0 != 0)
                return lp_error_set(err, LP_ERR_INVALID_ARG,
                                    "stage %d: unknown session %llu at position %u (a new "
                                    "session starts at 0; released or timed out?)",
                                    w->stage_index, (unsigned long long)g->session, g->pos0);
            n_new++;
            continue;
        }
        int len = lp_engine_seq_len(w->engine, w->sessions[slot].seq);
        if (g->pos0 > (uint32_t)len)
            return lp_error_set(err, LP_ERR_INVALID_ARG,
                                "stage %d: session %llu: position %u leaves a gap after its %d "
                                "cached positions",
                                w->stage_index, (unsigned long long)g->session, g->pos0, len);
    }
    if (n_new > n_free)
        return lp_error_set(err, LP_ERR_BUSY, "stage %d: all %d sessions are in use",
                            w->stage_index, w->max_sessions);
    return LP_OK;
}

// Finds the session's engine sequence, opening one for a new id at pos0 0
// (*opened tells which).
static enum lp_status stage_session(struct lp_worker *w, const Layerpipe__V1__Segment *seg,
                                    int *seq, bool *opened, struct lp_error *err) {
    double now = lp_now_seconds();
    int free_slot = -1;
    for (int i = 0; i < w->max_sessions; i++) {
        struct stage_session *s = &w->sessions[i];
        if (s->seq >= 0 && s->id == seg->session) {
            s->last_used = now;
            *seq = s->seq;
            return LP_OK;
        }
        if (s->seq < 0 && free_slot < 0) free_slot = i;
    }
    if (seg->pos0 != 0)
        return lp_error_set(err, LP_ERR_INVALID_ARG,
                            "stage %d: unknown session %llu at position %u (a new session starts "
                            "at 0; released or timed out?)",
                            w->stage_index, (unsigned long long)seg->session, seg->pos0);
    if (free_slot < 0)
        return lp_error_set(err, LP_ERR_BUSY, "stage %d: all %d sessions are in use",
                            w->stage_index, w->max_sessions);
    enum lp_status st = lp_engine_seq_open(w->engine, seq, err);
    if (st != LP_OK) return st;
    w->sessions[free_slot] = (struct stage_session){seg->session, *seq, now};
    *opened = true;
    return LP_OK;
}

static enum lp_status stage_forward(struct lp_worker *w, struct lp_rpc_stream *s,
                                    const Layerpipe__V1__Activations *a, struct lp_error *err) {
    // a stream opened before a later Configure failed still delivers here
    if (!w->configured)
        return lp_error_set(err, LP_ERR_INVALID_ARG,
                            "stage %s: Forward while not configured (a Configure failed or is in "
                            "progress)",
                            w->listen);
    double t0 = lp_now_seconds();
    if (t0 > w->last_done) w->idle_s += t0 - w->last_done;
    pthread_mutex_lock(&w->mu);
    bool failed = w->succ_failed;
    char why[256];
    snprintf(why, sizeof why, "%s", w->succ_error);
    pthread_mutex_unlock(&w->mu);
    if (failed) return lp_error_set(err, LP_ERR_NETWORK, "%s", why);
    enum lp_status st = lp_wire_decode_rows(a, w->hidden, w->max_rows, w->max_sessions, true,
                                            w->rows_in, err);
    if (st != LP_OK) return lp_error_prefix(err, "stage %d: ", w->stage_index);
    // free sessions idle past the timeout, then check every segment, so a
    // refused batch opens no session
    double now = lp_now_seconds();
    for (int i = 0; i < w->max_sessions; i++) {
        struct stage_session *x = &w->sessions[i];
        if (x->seq >= 0 && w->params.idle_timeout_s > 0 &&
            now - x->last_used > w->params.idle_timeout_s) {
            lp_engine_seq_close(w->engine, x->seq);
            x->seq = -1;
        }
    }
    if ((st = stage_check_segments(w, a, err)) != LP_OK) return st;
    int n_opened = 0;
    for (size_t i = 0; i < a->n_segments; i++) {
        const Layerpipe__V1__Segment *g = a->segments[i];
        int seq;
        bool opened = false;
        if ((st = stage_session(w, g, &seq, &opened, err)) != LP_OK) break;
        if (opened) w->opened_now[n_opened++] = seq;
        w->segs[i] = (struct lp_engine_seg){.seq = seq, .pos0 = (int)g->pos0,
                                            .n_tokens = (int)g->n_tokens,
                                            .all_logits = g->all_logits};
    }
    struct lp_engine_batch b = {.n_segs = (int)a->n_segments, .segs = w->segs,
                                .hidden_in = w->rows_in, .hidden_out = w->rows_out};
    if (st == LP_OK && (st = lp_engine_forward(w->engine, &b, err)) != LP_OK)
        lp_error_prefix(err, "stage %d: ", w->stage_index);
    if (st != LP_OK) { // a failed step leaves no new session behind
        for (int k = 0; k < n_opened; k++) stage_close_seq(w, w->opened_now[k]);
        return st;
    }
    // what goes on: every row to a stage; the rows needing logits to the Sink
    const float *send = w->rows_out;
    uint32_t n_send = a->n_rows;
    size_t H = (size_t)w->hidden;
    if (w->to_sink) {
        n_send = 0;
        size_t row = 0;
        for (size_t i = 0; i < a->n_segments; i++) {
            const Layerpipe__V1__Segment *g = a->segments[i];
            size_t first = g->all_logits ? 0 : g->n_tokens - 1;
            for (size_t t = first; t < g->n_tokens; t++)
                memcpy(w->rows_sel + (size_t)n_send++ * H, w->rows_out + (row + t) * H,
                       H * sizeof(float));
            row += g->n_tokens;
        }
        send = w->rows_sel;
    }
    Layerpipe__V1__Activations out = LAYERPIPE__V1__ACTIVATIONS__INIT;
    out.step = a->step;
    out.n_segments = a->n_segments;
    out.segments = a->segments;
    out.dtype = w->wire;
    out.n_rows = n_send;
    out.hidden = (uint32_t)H;
    out.dtype = lp_wire_encode_rows(send, (size_t)n_send * H, w->wire, w->payload, &out.data.len);
    out.data.data = w->payload;
    uint8_t *buf;
    size_t n;
    double t1 = lp_now_seconds();
    out.sent_at = t1;
    if ((st = lp_pb_pack(&out.base, &buf, &n, err)) != LP_OK) return st;
    pthread_mutex_lock(&w->mu);
    w->sent_at[a->step % STAGE_INFLIGHT] = t1;
    w->sent_step[a->step % STAGE_INFLIGHT] = a->step;
    pthread_mutex_unlock(&w->mu);
    st = lp_rpc_client_stream_write_take(w->succ, buf, n, err); // no copy
    if (st != LP_OK)
        return lp_error_prefix(err, "stage %d (%s): successor %s: ", w->stage_index, w->listen,
                               w->successor);
    w->busy_s += t1 - t0;
    w->tokens += a->n_rows;
    w->steps++;
    w->bytes_in += a->data.len;
    w->bytes_out += out.data.len;
    w->last_done = lp_now_seconds();
    Layerpipe__V1__Ack ack = LAYERPIPE__V1__ACK__INIT;
    ack.step = a->step;
    ack.ok = true;
    ack.compute_seconds = t1 - t0;
    if ((st = lp_pb_pack(&ack.base, &buf, &n, err)) != LP_OK) return st;
    lp_rpc_stream_send(s, buf, n, NULL);
    free(buf);
    return LP_OK;
}

static enum lp_status fwd_message(void *user, void *stream_user, struct lp_rpc_stream *s,
                                  const uint8_t *msg, size_t bytes, struct lp_error *err) {
    struct lp_worker *w = user;
    (void)stream_user;
    Layerpipe__V1__Activations *a = layerpipe__v1__activations__unpack(NULL, bytes, msg);
    if (!a)
        return lp_error_set(err, LP_ERR_INVALID_ARG,
                            "stage %d: Forward: a %zu-byte message that is not Activations",
                            w->stage_index, bytes);
    enum lp_status st = stage_forward(w, s, a, err);
    layerpipe__v1__activations__free_unpacked(a, NULL);
    if (st != LP_OK) fprintf(stderr, "layerpipe worker %s: %s\n", w->listen, err->msg);
    return st;
}

// ---- lifecycle ----

enum lp_status lp_worker_create(struct lp_worker **out, const struct lp_worker_params *p,
                                struct lp_error *err) {
    *out = NULL;
    struct lp_worker *w = calloc(1, sizeof *w);
    if (!w) return lp_error_set(err, LP_ERR_NOMEM, "worker: out of memory");
    pthread_mutex_init(&w->mu, NULL);
    w->params = *p;
    enum lp_status st;
    w->model_dir = strdup(p->model_dir ? p->model_dir : "");
    w->listen = strdup(p->listen ? p->listen : "");
    if (!w->model_dir || !w->listen) {
        st = lp_error_set(err, LP_ERR_NOMEM, "worker: out of memory");
        goto fail;
    }
    struct lp_model_load_params none = {0, 0, false, false};
    if ((st = lp_model_open(&w->headers, w->model_dir, &none, err)) != LP_OK) goto fail;
    w->fingerprint = lp_model_fingerprint(w->headers);
    w->n_layers = lp_model_config(w->headers)->n_layers;
    w->hidden = lp_model_config(w->headers)->hidden_size;
    // unmap: the fingerprint's samples (and read-around) must not stay
    // resident in a worker that serves only some layers
    lp_model_close(w->headers);
    w->headers = NULL;
    struct lp_backend_cpu_params bp = lp_backend_cpu_params_default();
    bp.n_threads = p->n_threads;
    if ((st = lp_backend_cpu_create(&w->backend, &bp, err)) != LP_OK) goto fail;
    snprintf(w->device, sizeof w->device, "%s (%d threads)", lp_backend_name(w->backend),
             lp_backend_n_threads(w->backend));
    w->measured_gb_s = lp_measure_read_gb_s();
    if ((st = lp_rpc_server_create(&w->server, w->listen, LP_MAX_MESSAGE_BYTES, err)) != LP_OK)
        goto fail;
    static const struct lp_rpc_stream_handler fwd = {fwd_open, fwd_message, fwd_close};
    if ((st = lp_rpc_server_add_unary(w->server, LP_M_HELLO, h_hello, w, err)) != LP_OK ||
        (st = lp_rpc_server_add_unary(w->server, LP_M_CONFIGURE, h_configure, w, err)) != LP_OK ||
        (st = lp_rpc_server_add_unary(w->server, LP_M_RELEASE, h_release, w, err)) != LP_OK ||
        (st = lp_rpc_server_add_unary(w->server, LP_M_STATS, h_stats, w, err)) != LP_OK ||
        (st = lp_rpc_server_add_unary(w->server, LP_M_HEALTH, h_health, w, err)) != LP_OK ||
        (st = lp_rpc_server_add_stream(w->server, LP_M_FORWARD, &fwd, w, err)) != LP_OK ||
        (st = lp_rpc_server_start(w->server, err)) != LP_OK)
        goto fail;
    // the real address when listening on port 0
    char addr[160];
    const char *colon = strrchr(w->listen, ':');
    if (colon && strcmp(colon, ":0") == 0) {
        snprintf(addr, sizeof addr, "%.*s:%d", (int)(colon - w->listen), w->listen,
                 lp_rpc_server_port(w->server));
        char *l = strdup(addr);
        if (l) {
            free(w->listen);
            w->listen = l;
        }
    }
    *out = w;
    return LP_OK;
fail:
    lp_worker_destroy(w);
    return st;
}

int lp_worker_port(const struct lp_worker *w) { return lp_rpc_server_port(w->server); }

void lp_worker_destroy(struct lp_worker *w) {
    if (!w) return;
    lp_rpc_server_destroy(w->server); // no handler runs after this
    stage_unconfigure(w);
    if (w->upstream) lp_rpc_stream_unref(w->upstream);
    lp_backend_destroy(w->backend);
    lp_model_close(w->headers);
    pthread_mutex_destroy(&w->mu);
    free(w->model_dir);
    free(w->listen);
    free(w);
}
