// SPDX-License-Identifier: MIT
// pipeline.c -- the coordinator. It holds the embedding, its own first
// layers and the head; the workers hold the rest, in order. A step runs
// the coordinator's layers on each prefill chunk and streams the rows to
// stage 1 without waiting, so stage k+1 computes chunk i while stage k
// computes chunk i+1; the last stage streams the rows that need logits to
// the coordinator's Sink, where they are collected in step order and put
// through the head. With no workers the coordinator computes everything.
// Threads: the caller's thread runs steps; the Sink server thread and the
// stage-1 stream thread deliver results and failures under `mu`.
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cluster/internal.h"
#include "cluster/rpc.h"
#include "layerpipe/cluster.h"

struct pl_stage {
    char addr[128];
    struct lp_rpc_channel *ch;
    char device[64];
    double gb_s;
    uint64_t free_bytes;
    int layer_begin, layer_end;
};

struct pl_result {
    uint64_t step;
    int n_rows;
    float *rows; // [n_rows, hidden], owned
};

#define PL_RESULTS 1024
#define PL_INFLIGHT 256

struct lp_pipeline {
    struct lp_pipeline_params params;
    char *model_dir;
    struct lp_model *model;      // coordinator's share: layers [0, a), embedding, head
    struct lp_backend *backend;
    struct lp_engine *front;     // embedding + layers [0, a), hidden rows out
    struct lp_engine *head;      // no layers: final norm + LM head
    struct lp_model_config cfg;
    uint64_t fingerprint;
    struct lp_plan plan;
    int n_workers;
    struct pl_stage *stages;     // [n_workers]
    struct lp_rpc_server *sink;
    char sink_addr[160];
    struct lp_rpc_client_stream *to_first;
    int max_rows, max_sessions, head_seq;
    uint64_t *session_of;        // [max_sessions] session id by front seq
    uint64_t next_session, next_step;
    float *rows;                 // [max_rows, hidden]
    uint8_t *payload;            // [max_rows * hidden * 4]
    float *logit_rows;           // [max_rows, vocab] head output
    bool broken;                 // a stage failed: every later step fails
    char broken_msg[256];
    // counters (caller thread)
    double busy_s, idle_s, created_at;
    uint64_t tokens, steps, bytes_out, bytes_in;
    // shared with the Sink and stream threads
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct pl_result results[PL_RESULTS]; // ring, in arrival order
    int r_head, r_count;
    bool failed;
    char fail_msg[256];
    double sent_at[PL_INFLIGHT];
    uint64_t sent_step[PL_INFLIGHT];
    struct lp_latency hop;
};

struct lp_pipeline_params lp_pipeline_params_default(void) {
    struct lp_pipeline_params p = {.model_dir = NULL,
                                   .workers = NULL,
                                   .n_workers = 0,
                                   .plan = NULL,
                                   .wire_dtype = LP_DTYPE_F32,
                                   .n_threads = 0,
                                   .max_batch_tokens = 64,
                                   .max_sessions = 4,
                                   .max_context = 0,
                                   .kv_bf16 = false,
                                   .timeout_ms = 30000,
                                   .sink_listen = "127.0.0.1:0",
                                   .sink_advertise = NULL};
    return p;
}

static void pl_fail(struct lp_pipeline *p, const char *msg) {
    pthread_mutex_lock(&p->mu);
    if (!p->failed) {
        p->failed = true;
        snprintf(p->fail_msg, sizeof p->fail_msg, "%s", msg);
    }
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
}

// ---- stage 1 stream callbacks (its channel's thread) ----

static void first_on_reply(void *user, const uint8_t *msg, size_t bytes) {
    struct lp_pipeline *p = user;
    Layerpipe__V1__Ack *ack = layerpipe__v1__ack__unpack(NULL, bytes, msg);
    if (!ack) return;
    if (!ack->ok) {
        pl_fail(p, ack->error);
    } else {
        double now = lp_now_seconds();
        pthread_mutex_lock(&p->mu);
        size_t k = ack->step % PL_INFLIGHT;
        if (p->sent_step[k] == ack->step && p->sent_at[k] > 0) {
            double ms = (now - p->sent_at[k] - ack->compute_seconds) * 1e3;
            lp_latency_add(&p->hop, ms > 0 ? ms : 0);
            p->sent_at[k] = 0;
        }
        pthread_mutex_unlock(&p->mu);
    }
    layerpipe__v1__ack__free_unpacked(ack, NULL);
}

static void first_on_end(void *user, enum lp_status st, const char *msg) {
    struct lp_pipeline *p = user;
    if (st == LP_OK) return;
    char m[256];
    snprintf(m, sizeof m, "stage 1 (%s): %s", p->n_workers ? p->stages[0].addr : "?", msg);
    pl_fail(p, m);
}

// ---- the Sink (its server's thread) ----

static enum lp_status sink_open(void *user, struct lp_rpc_stream *s, void **stream_user,
                                struct lp_error *err) {
    (void)user;
    (void)s;
    (void)err;
    *stream_user = NULL;
    return LP_OK;
}

static enum lp_status sink_message(void *user, void *stream_user, struct lp_rpc_stream *s,
                                   const uint8_t *msg, size_t bytes, struct lp_error *err) {
    struct lp_pipeline *p = user;
    (void)stream_user;
    Layerpipe__V1__Activations *a = layerpipe__v1__activations__unpack(NULL, bytes, msg);
    if (!a)
        return lp_error_set(err, LP_ERR_INVALID_ARG, "Sink: a %zu-byte message that is not "
                            "Activations", bytes);
    enum lp_status st = LP_OK;
    float *rows = malloc((size_t)p->max_rows * (size_t)p->cfg.hidden_size * sizeof(float));
    if (!rows) {
        st = lp_error_set(err, LP_ERR_NOMEM, "Sink: out of memory");
        goto done;
    }
    st = lp_wire_decode_rows(a, p->cfg.hidden_size, p->max_rows, p->max_sessions, false, rows,
                             err);
    if (st != LP_OK) goto done;
    pthread_mutex_lock(&p->mu);
    if (p->r_count == PL_RESULTS) {
        pthread_mutex_unlock(&p->mu);
        st = lp_error_set(err, LP_ERR_BUSY, "Sink: %d results pending", PL_RESULTS);
        goto done;
    }
    struct pl_result *r = &p->results[(p->r_head + p->r_count++) % PL_RESULTS];
    *r = (struct pl_result){a->step, (int)a->n_rows, rows};
    rows = NULL;
    p->bytes_in += a->data.len;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    Layerpipe__V1__Ack ack = LAYERPIPE__V1__ACK__INIT;
    ack.step = a->step;
    ack.ok = true;
    uint8_t *buf;
    size_t n;
    if (lp_pb_pack(&ack.base, &buf, &n, NULL) == LP_OK) {
        lp_rpc_stream_send(s, buf, n, NULL);
        free(buf);
    }
done:
    free(rows);
    layerpipe__v1__activations__free_unpacked(a, NULL);
    if (st != LP_OK) pl_fail(p, err->msg);
    return st;
}

static void sink_close(void *user, void *stream_user, enum lp_status st, const char *msg) {
    struct lp_pipeline *p = user;
    (void)stream_user;
    if (st != LP_OK && st != LP_ERR_CANCELLED) {
        char m[256];
        snprintf(m, sizeof m, "the last stage's stream to the Sink ended: %s", msg);
        pl_fail(p, m);
    }
}

static enum lp_status sink_health(void *user, const uint8_t *req, size_t n_req, uint8_t **resp,
                                  size_t *n_resp, struct lp_error *err) {
    (void)user;
    (void)req;
    (void)n_req;
    Grpc__Health__V1__HealthCheckResponse h = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
    h.status = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
    return lp_pb_pack(&h.base, resp, n_resp, err);
}

// ---- setup ----

static enum lp_status pl_unary(struct lp_pipeline *p, int i, const char *method,
                               const ProtobufCMessage *req, uint8_t **resp, size_t *n_resp,
                               int timeout_ms, struct lp_error *err) {
    uint8_t *buf;
    size_t n;
    enum lp_status st = lp_pb_pack(req, &buf, &n, err);
    if (st != LP_OK) return st;
    st = lp_rpc_call_unary(p->stages[i].ch, method, buf, n, resp, n_resp, timeout_ms, err);
    free(buf);
    return st;
}

static enum lp_status pl_hello(struct lp_pipeline *p, int i, struct lp_error *err) {
    struct pl_stage *s = &p->stages[i];
    enum lp_status st = lp_rpc_channel_create(&s->ch, s->addr, LP_MAX_MESSAGE_BYTES, err);
    if (st != LP_OK) return st;
    Layerpipe__V1__HelloRequest req = LAYERPIPE__V1__HELLO_REQUEST__INIT;
    req.protocol_version = LP_PROTOCOL_VERSION;
    uint8_t *resp = NULL;
    size_t n = 0;
    if ((st = pl_unary(p, i, LP_M_HELLO, &req.base, &resp, &n, 10000, err)) != LP_OK)
        return lp_error_prefix(err, "worker %d is unreachable: ", i + 1);
    Layerpipe__V1__HelloReply *h = layerpipe__v1__hello_reply__unpack(NULL, n, resp);
    free(resp);
    if (!h) return lp_error_set(err, LP_ERR_PROTOCOL, "worker %d (%s): malformed Hello reply",
                                i + 1, s->addr);
    if (h->protocol_version != LP_PROTOCOL_VERSION)
        st = lp_error_set(err, LP_ERR_UNSUPPORTED,
                          "worker %d (%s) speaks protocol %u, this coordinator %d (layerpipe %s)",
                          i + 1, s->addr, h->protocol_version, LP_PROTOCOL_VERSION, h->version);
    else if (h->model_fingerprint != p->fingerprint)
        st = lp_error_set(err, LP_ERR_INVALID_ARG,
                          "worker %d (%s) has a different model (fingerprint %016llx, this "
                          "coordinator's %s is %016llx): give every process the same model folder",
                          i + 1, s->addr, (unsigned long long)h->model_fingerprint, p->model_dir,
                          (unsigned long long)p->fingerprint);
    snprintf(s->device, sizeof s->device, "%s", h->device);
    s->gb_s = h->measured_gb_s;
    s->free_bytes = h->free_memory_bytes;
    layerpipe__v1__hello_reply__free_unpacked(h, NULL);
    return st;
}

static int pl_cap(uint64_t layers) { return layers > INT32_MAX ? INT32_MAX : (int)layers; }

static enum lp_status pl_choose_plan(struct lp_pipeline *p, size_t layer_bytes,
                                     struct lp_error *err) {
    int n_stages = p->n_workers + 1, L = p->cfg.n_layers;
    const char *text = p->params.plan;
    if (text && strcmp(text, "auto") != 0) return lp_plan_parse(&p->plan, text, p->n_workers, L, err);
    double weight[LP_MAX_STAGES];
    int cap[LP_MAX_STAGES];
    bool by_speed = text != NULL; // "auto": speed and memory; NULL: even split
    weight[0] = by_speed ? lp_measure_read_gb_s() : 1.0;
    cap[0] = by_speed && layer_bytes ? pl_cap(lp_mem_available() / 2 / layer_bytes) : -1;
    for (int i = 0; i < p->n_workers; i++) {
        weight[i + 1] = by_speed ? p->stages[i].gb_s : 1.0;
        cap[i + 1] = by_speed && layer_bytes ? pl_cap(p->stages[i].free_bytes / 10 * 9 / layer_bytes)
                                             : -1;
    }
    return lp_plan_auto(&p->plan, n_stages, L, weight, cap, err);
}

static Layerpipe__V1__DType pl_wire(const struct lp_pipeline *p) {
    return p->params.wire_dtype == LP_DTYPE_BF16  ? LAYERPIPE__V1__DTYPE__DTYPE_BF16
           : p->params.wire_dtype == LP_DTYPE_F16 ? LAYERPIPE__V1__DTYPE__DTYPE_F16
                                                  : LAYERPIPE__V1__DTYPE__DTYPE_F32;
}

static enum lp_status pl_configure(struct lp_pipeline *p, int i, struct lp_error *err) {
    struct pl_stage *s = &p->stages[i];
    Layerpipe__V1__ConfigureRequest c = LAYERPIPE__V1__CONFIGURE_REQUEST__INIT;
    c.model_fingerprint = p->fingerprint;
    c.layer_begin = (uint32_t)s->layer_begin;
    c.layer_end = (uint32_t)s->layer_end;
    c.successor = i + 1 < p->n_workers ? p->stages[i + 1].addr : p->sink_addr;
    c.successor_is_sink = i + 1 == p->n_workers;
    c.max_sessions = (uint32_t)p->max_sessions;
    c.max_context = (uint32_t)lp_engine_max_context(p->front);
    c.wire_dtype = pl_wire(p);
    c.kv_dtype = p->params.kv_bf16 ? LAYERPIPE__V1__DTYPE__DTYPE_BF16
                                   : LAYERPIPE__V1__DTYPE__DTYPE_F32;
    c.max_batch_tokens = (uint32_t)p->max_rows;
    c.stage_index = (uint32_t)(i + 1);
    uint8_t *resp = NULL;
    size_t n = 0;
    enum lp_status st = pl_unary(p, i, LP_M_CONFIGURE, &c.base, &resp, &n, 600000, err);
    free(resp);
    if (st != LP_OK) lp_error_prefix(err, "configuring worker %d (%s): ", i + 1, s->addr);
    return st;
}

enum lp_status lp_pipeline_create(struct lp_pipeline **out, const struct lp_pipeline_params *params,
                                  struct lp_error *err) {
    *out = NULL;
    struct lp_pipeline *p = calloc(1, sizeof *p);
    if (!p) return lp_error_set(err, LP_ERR_NOMEM, "pipeline: out of memory");
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    lp_rpc_init();
    enum lp_status st;
    p->params = *params;
    p->created_at = lp_now_seconds();
    p->head_seq = -1;
    p->model_dir = strdup(params->model_dir ? params->model_dir : "");
    p->n_workers = params->n_workers;
    p->max_rows = params->max_batch_tokens > 0 ? params->max_batch_tokens : 64;
    p->max_sessions = params->max_sessions > 0 ? params->max_sessions : 4;
    if (!p->model_dir) {
        st = lp_error_set(err, LP_ERR_NOMEM, "pipeline: out of memory");
        goto fail;
    }
    if (p->n_workers < 0 || p->n_workers + 1 > LP_MAX_STAGES) {
        st = lp_error_set(err, LP_ERR_INVALID_ARG, "pipeline: %d workers, at most %d",
                          p->n_workers, LP_MAX_STAGES - 1);
        goto fail;
    }
    // the whole model's headers: config, fingerprint and size (nothing is read)
    struct lp_model *all = NULL;
    struct lp_model_load_params every = lp_model_load_params_default();
    if ((st = lp_model_open(&all, p->model_dir, &every, err)) != LP_OK) goto fail;
    p->cfg = *lp_model_config(all);
    p->fingerprint = lp_model_fingerprint(all);
    size_t layer_bytes = lp_model_weight_bytes(all) / (size_t)p->cfg.n_layers;
    lp_model_close(all);
    p->stages = calloc((size_t)(p->n_workers ? p->n_workers : 1), sizeof *p->stages);
    if (!p->stages) {
        st = lp_error_set(err, LP_ERR_NOMEM, "pipeline: out of memory");
        goto fail;
    }
    for (int i = 0; i < p->n_workers; i++) {
        snprintf(p->stages[i].addr, sizeof p->stages[i].addr, "%s", params->workers[i]);
        if ((st = pl_hello(p, i, err)) != LP_OK) goto fail;
    }
    if ((st = pl_choose_plan(p, layer_bytes, err)) != LP_OK) goto fail;
    int a = p->plan.layers[0], at = a;
    for (int i = 0; i < p->n_workers; i++) {
        p->stages[i].layer_begin = at;
        at += p->plan.layers[i + 1];
        p->stages[i].layer_end = at;
    }
    // the coordinator's share
    struct lp_model_load_params mine = {0, a, true, true};
    if ((st = lp_model_open(&p->model, p->model_dir, &mine, err)) != LP_OK) goto fail;
    struct lp_backend_cpu_params bp = lp_backend_cpu_params_default();
    bp.n_threads = params->n_threads;
    if ((st = lp_backend_cpu_create(&p->backend, &bp, err)) != LP_OK) goto fail;
    struct lp_engine_params ep = lp_engine_params_default();
    ep.max_batch_tokens = p->max_rows;
    ep.max_logit_rows = 1;
    ep.max_seqs = p->max_sessions;
    ep.max_context = params->max_context;
    ep.kv_dtype = params->kv_bf16 ? LP_DTYPE_BF16 : LP_DTYPE_F32;
    ep.no_head = true;
    if ((st = lp_engine_create(&p->front, p->model, p->backend, &ep, err)) != LP_OK) goto fail;
    ep.no_head = false;
    ep.no_embed = true;
    ep.layer_begin = ep.layer_end = a;
    ep.max_seqs = 1;
    ep.max_logit_rows = p->max_rows;
    if ((st = lp_engine_create(&p->head, p->model, p->backend, &ep, err)) != LP_OK) goto fail;
    if ((st = lp_engine_seq_open(p->head, &p->head_seq, err)) != LP_OK) goto fail;
    size_t H = (size_t)p->cfg.hidden_size, R = (size_t)p->max_rows;
    p->rows = malloc(R * H * sizeof(float));
    p->payload = malloc(R * H * sizeof(float));
    p->logit_rows = malloc(R * (size_t)p->cfg.vocab_size * sizeof(float));
    p->session_of = calloc((size_t)p->max_sessions, sizeof *p->session_of);
    if (!p->rows || !p->payload || !p->logit_rows || !p->session_of) {
        st = lp_error_set(err, LP_ERR_NOMEM, "pipeline: out of memory");
        goto fail;
    }
    if (p->n_workers > 0) {
        // the Sink, then the stages from last to first (each checks its successor)
        if ((st = lp_rpc_server_create(&p->sink, params->sink_listen, LP_MAX_MESSAGE_BYTES,
                                       err)) != LP_OK)
            goto fail;
        static const struct lp_rpc_stream_handler sink = {sink_open, sink_message, sink_close};
        if ((st = lp_rpc_server_add_stream(p->sink, LP_M_SINK, &sink, p, err)) != LP_OK ||
            (st = lp_rpc_server_add_unary(p->sink, LP_M_HEALTH, sink_health, p, err)) != LP_OK ||
            (st = lp_rpc_server_start(p->sink, err)) != LP_OK)
            goto fail;
        if (params->sink_advertise) {
            snprintf(p->sink_addr, sizeof p->sink_addr, "%s", params->sink_advertise);
        } else {
            const char *l = params->sink_listen, *colon = strrchr(l, ':');
            int host_len = colon ? (int)(colon - l) : (int)strlen(l);
            const char *host = host_len == 0 || strncmp(l, "0.0.0.0", 7) == 0 ? "127.0.0.1" : l;
            if (host != l) host_len = (int)strlen(host);
            snprintf(p->sink_addr, sizeof p->sink_addr, "%.*s:%d", host_len, host,
                     lp_rpc_server_port(p->sink));
        }
        for (int i = p->n_workers - 1; i >= 0; i--)
            if ((st = pl_configure(p, i, err)) != LP_OK) goto fail;
        st = lp_rpc_stream_open(p->stages[0].ch, LP_M_FORWARD, first_on_reply, first_on_end, p,
                                &p->to_first, err);
        if (st != LP_OK) goto fail;
    }
    *out = p;
    return LP_OK;
fail:
    lp_pipeline_destroy(p);
    return st;
}

static void pl_release(struct lp_pipeline *p, uint64_t session) {
    Layerpipe__V1__ReleaseRequest r = LAYERPIPE__V1__RELEASE_REQUEST__INIT;
    r.n_sessions = 1;
    r.sessions = &session;
    for (int i = 0; i < p->n_workers; i++) {
        if (!p->stages[i].ch) continue;
        uint8_t *resp = NULL;
        size_t n = 0;
        pl_unary(p, i, LP_M_RELEASE, &r.base, &resp, &n, 2000, NULL);
        free(resp);
    }
}

void lp_pipeline_destroy(struct lp_pipeline *p) {
    if (!p) return;
    if (p->session_of && p->front)
        for (int s = 0; s < p->max_sessions; s++)
            if (lp_engine_seq_len(p->front, s) >= 0) {
                pl_release(p, p->session_of[s]);
                lp_engine_seq_close(p->front, s);
            }
    lp_rpc_client_stream_close(p->to_first, 2000);
    lp_rpc_server_destroy(p->sink);
    for (int i = 0; p->stages && i < p->n_workers; i++) lp_rpc_channel_destroy(p->stages[i].ch);
    for (int i = 0; i < p->r_count; i++) free(p->results[(p->r_head + i) % PL_RESULTS].rows);
    lp_engine_destroy(p->head);
    lp_engine_destroy(p->front);
    lp_backend_destroy(p->backend);
    lp_model_close(p->model);
    free(p->stages);
    free(p->rows);
    free(p->payload);
    free(p->logit_rows);
    free(p->session_of);
    free(p->model_dir);
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
    lp_rpc_shutdown();
    free(p);
}

// ---- the runner ----

static enum lp_status pl_seq_open(void *ctx, int *seq, struct lp_error *err) {
    struct lp_pipeline *p = ctx;
    enum lp_status st = lp_engine_seq_open(p->front, seq, err);
    if (st == LP_OK) p->session_of[*seq] = ++p->next_session;
    return st;
}

static void pl_seq_close(void *ctx, int seq) {
    struct lp_pipeline *p = ctx;
    if (lp_engine_seq_len(p->front, seq) < 0) return;
    if (!p->broken) pl_release(p, p->session_of[seq]);
    lp_engine_seq_close(p->front, seq);
}

// Rows through the head: logits for each row ([n_rows][vocab]).
static enum lp_status pl_head(struct lp_pipeline *p, const float *rows, int n_rows, float *logits,
                              struct lp_error *err) {
    struct lp_engine_seg seg = {.seq = p->head_seq, .pos0 = 0, .n_tokens = n_rows,
                                .all_logits = true};
    struct lp_engine_batch b = {.n_segs = 1, .segs = &seg, .hidden_in = rows, .logits = logits};
    return lp_engine_forward(p->head, &b, err);
}

// Waits for the Sink's result of `step`; takes ownership of its rows.
static enum lp_status pl_collect(struct lp_pipeline *p, uint64_t step, struct pl_result *out,
                                 struct lp_error *err) {
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    int64_t ns = (int64_t)dl.tv_nsec + (int64_t)p->params.timeout_ms * 1000000;
    dl.tv_sec += (time_t)(ns / 1000000000);
    dl.tv_nsec = (long)(ns % 1000000000);
    enum lp_status st = LP_OK;
    pthread_mutex_lock(&p->mu);
    while (p->r_count == 0 && !p->failed)
        if (pthread_cond_timedwait(&p->cv, &p->mu, &dl) != 0) break;
    if (p->r_count > 0) {
        *out = p->results[p->r_head];
        p->r_head = (p->r_head + 1) % PL_RESULTS;
        p->r_count--;
        if (out->step != step) {
            free(out->rows);
            out->rows = NULL;
            st = lp_error_set(err, LP_ERR_PROTOCOL, "Sink: got step %llu, expected %llu",
                              (unsigned long long)out->step, (unsigned long long)step);
        }
    } else if (p->failed) {
        st = lp_error_set(err, LP_ERR_NETWORK, "%s", p->fail_msg);
    } else {
        st = lp_error_set(err, LP_ERR_TIMEOUT,
                          "no result from the pipeline within %d ms (step %llu): a stage is "
                          "stalled or dead",
                          p->params.timeout_ms, (unsigned long long)step);
    }
    pthread_mutex_unlock(&p->mu);
    return st;
}

// After a step failed locally with chunks [from, to) already streamed:
// collects and drops their results, so the next step starts in order, and
// returns st. If even that fails the pipeline is marked down.
static enum lp_status pl_drain(struct lp_pipeline *p, uint64_t first_step, int from, int to,
                               enum lp_status st) {
    for (int c = from; c < to && p->n_workers > 0; c++) {
        struct pl_result r = {0};
        struct lp_error e = {0};
        if (pl_collect(p, first_step + (uint64_t)c, &r, &e) != LP_OK) {
            p->broken = true;
            snprintf(p->broken_msg, sizeof p->broken_msg, "%s", e.msg);
            lp_rpc_client_stream_cancel(p->to_first);
            break;
        }
        free(r.rows);
    }
    return st;
}

static enum lp_status pl_step(void *ctx, int seq, int pos0, const int32_t *tokens, int n,
                              bool all_logits, float *logits, struct lp_error *err) {
    struct lp_pipeline *p = ctx;
    if (p->broken) return lp_error_set(err, LP_ERR_NETWORK, "pipeline is down: %s", p->broken_msg);
    size_t H = (size_t)p->cfg.hidden_size, V = (size_t)p->cfg.vocab_size;
    int chunk = p->max_rows;
    uint64_t first_step = p->next_step;
    int n_chunks = 0;
    enum lp_status st = LP_OK;
    double t0 = lp_now_seconds();
    for (int i = 0; i < n; i += chunk, n_chunks++) {
        int m = n - i < chunk ? n - i : chunk;
        struct lp_engine_seg seg = {.seq = seq, .pos0 = pos0 + i, .n_tokens = m,
                                    .tokens = tokens + i, .all_logits = all_logits};
        struct lp_engine_batch b = {.n_segs = 1, .segs = &seg, .hidden_out = p->rows};
        if ((st = lp_engine_forward(p->front, &b, err)) != LP_OK)
            return pl_drain(p, first_step, 0, n_chunks, st);
        p->tokens += (uint64_t)m;
        p->steps++;
        if (p->n_workers == 0) { // the coordinator is the whole pipeline
            const float *rows = all_logits ? p->rows : p->rows + (size_t)(m - 1) * H;
            int n_rows = all_logits ? m : 1;
            float *dst = all_logits ? logits + (size_t)i * V : logits;
            if ((st = pl_head(p, rows, n_rows, dst, err)) != LP_OK) return st;
            continue;
        }
        Layerpipe__V1__Segment sg = LAYERPIPE__V1__SEGMENT__INIT;
        sg.session = p->session_of[seq];
        sg.pos0 = (uint32_t)(pos0 + i);
        sg.n_tokens = (uint32_t)m;
        sg.all_logits = all_logits;
        Layerpipe__V1__Segment *sgp = &sg;
        Layerpipe__V1__Activations a = LAYERPIPE__V1__ACTIVATIONS__INIT;
        a.step = p->next_step++;
        a.n_segments = 1;
        a.segments = &sgp;

        a.n_rows = (uint32_t)m;
        a.hidden = (uint32_t)H;
        a.dtype = lp_wire_encode_rows(p->rows, (size_t)m * H, pl_wire(p), p->payload, &a.data.len);
        a.data.data = p->payload;
        a.sent_at = lp_now_seconds();
        uint8_t *buf;
        size_t nb;
        if ((st = lp_pb_pack(&a.base, &buf, &nb, err)) != LP_OK)
            return pl_drain(p, first_step, 0, n_chunks, st);
        pthread_mutex_lock(&p->mu);
        p->sent_at[a.step % PL_INFLIGHT] = a.sent_at;
        p->sent_step[a.step % PL_INFLIGHT] = a.step;
        pthread_mutex_unlock(&p->mu);
        st = lp_rpc_client_stream_write_take(p->to_first, buf, nb, err); // no copy
        p->bytes_out += a.data.len;
        if (st != LP_OK) goto broken;
    }
    double t1 = lp_now_seconds();
    p->busy_s += t1 - t0;
    if (p->n_workers == 0) return LP_OK;
    // collect in order; the last stage sent each chunk's logit rows
    for (int c = 0; c < n_chunks; c++) {
        struct pl_result r = {0};
        double w0 = lp_now_seconds();
        if ((st = pl_collect(p, first_step + (uint64_t)c, &r, err)) != LP_OK) goto broken;
        double w1 = lp_now_seconds();
        p->idle_s += w1 - w0;
        int m = n - c * chunk < chunk ? n - c * chunk : chunk;
        int want = all_logits ? m : 1;
        if (r.n_rows != want) {
            free(r.rows);
            st = lp_error_set(err, LP_ERR_PROTOCOL, "Sink: step %llu has %d rows, expected %d",
                              (unsigned long long)r.step, r.n_rows, want);
            goto broken;
        }
        if (all_logits || c == n_chunks - 1) {
            float *dst = all_logits ? logits + (size_t)c * (size_t)chunk * V : logits;
            st = pl_head(p, r.rows, r.n_rows, dst, err);
        }
        free(r.rows);
        p->busy_s += lp_now_seconds() - w1;
        if (st != LP_OK) return pl_drain(p, first_step, c + 1, n_chunks, st);
    }
    return LP_OK;
broken:
    // the pipeline cannot continue: remember why, free this session on the
    // stages that still answer, and stop talking to stage 1
    p->broken = true;
    snprintf(p->broken_msg, sizeof p->broken_msg, "%s", err ? err->msg : "stage failure");
    pl_release(p, p->session_of[seq]);
    lp_rpc_client_stream_cancel(p->to_first);
    return st;
}

static int pl_max_context(void *ctx) { return lp_engine_max_context(((struct lp_pipeline *)ctx)->front); }
static int pl_vocab_size(void *ctx) { return ((struct lp_pipeline *)ctx)->cfg.vocab_size; }

struct lp_runner lp_pipeline_runner(struct lp_pipeline *p) {
    struct lp_runner r = {.iface = {.seq_open = pl_seq_open,
                                    .seq_close = pl_seq_close,
                                    .step = pl_step,
                                    .max_context = pl_max_context,
                                    .vocab_size = pl_vocab_size},
                          .ctx = p};
    return r;
}

const struct lp_plan *lp_pipeline_plan(const struct lp_pipeline *p) { return &p->plan; }

const struct lp_model_config *lp_pipeline_config(const struct lp_pipeline *p) { return &p->cfg; }

int lp_pipeline_stats(struct lp_pipeline *p, struct lp_stage_stats *stats, int max) {
    int n = 0;
    if (max <= 0) return 0;
    struct lp_stage_stats *c = &stats[n++];
    memset(c, 0, sizeof *c);
    snprintf(c->role, sizeof c->role, "coordinator");
    snprintf(c->address, sizeof c->address, "%.63s", p->n_workers ? p->sink_addr : "local");
    snprintf(c->device, sizeof c->device, "%s (%d threads)", lp_backend_name(p->backend),
             lp_backend_n_threads(p->backend));
    c->layer_begin = 0;
    c->layer_end = p->plan.layers[0];
    c->busy_seconds = p->busy_s;
    c->idle_seconds = lp_now_seconds() - p->created_at - p->busy_s;
    c->tokens = p->tokens;
    c->steps = p->steps;
    c->bytes_out = p->bytes_out;
    pthread_mutex_lock(&p->mu);
    c->bytes_in = p->bytes_in;
    c->hop_p50_ms = lp_latency_quantile(&p->hop, 0.5);
    c->hop_p99_ms = lp_latency_quantile(&p->hop, 0.99);
    pthread_mutex_unlock(&p->mu);
    c->ok = true;
    for (int i = 0; i < p->n_workers && n < max; i++) {
        struct lp_stage_stats *s = &stats[n++];
        memset(s, 0, sizeof *s);
        snprintf(s->role, sizeof s->role, "worker");
        snprintf(s->address, sizeof s->address, "%.63s", p->stages[i].addr);
        snprintf(s->device, sizeof s->device, "%s", p->stages[i].device);
        s->layer_begin = p->stages[i].layer_begin;
        s->layer_end = p->stages[i].layer_end;
        Layerpipe__V1__StatsRequest req = LAYERPIPE__V1__STATS_REQUEST__INIT;
        uint8_t *resp = NULL;
        size_t nr = 0;
        if (pl_unary(p, i, LP_M_STATS, &req.base, &resp, &nr, 2000, NULL) != LP_OK) continue;
        Layerpipe__V1__StatsReply *r = layerpipe__v1__stats_reply__unpack(NULL, nr, resp);
        free(resp);
        if (!r) continue;
        s->busy_seconds = r->busy_seconds;
        s->idle_seconds = r->idle_seconds;
        s->tokens = r->tokens;
        s->steps = r->steps;
        s->bytes_in = r->bytes_in;
        s->bytes_out = r->bytes_out;
        s->hop_p50_ms = r->hop_p50_ms;
        s->hop_p99_ms = r->hop_p99_ms;
        s->ok = true;
        layerpipe__v1__stats_reply__free_unpacked(r, NULL);
    }
    return n;
}
