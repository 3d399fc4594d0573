// SPDX-License-Identifier: MIT
// stage.c -- the worker: a layerpipe.v1.Stage server over one contiguous
// layer range, around the stage's core (stage_core.c: the checks, the
// model, the engine and the sessions). At start it maps the model's headers
// only (config and fingerprint); Configure loads just its layers (and
// reports their tensor hashes), sizes the KV pool and the step queue, and
// connects to its successor. Forward messages are unpacked
// on the server thread into a free queue slot's arena and handed to the
// compute thread, which checks each step, runs it through the engine,
// passes it on (only the rows needing logits when the successor is the
// coordinator's Sink) and acknowledges it on the stream that sent it. A step
// that fails gets a failure Ack of its own; the stream goes on.
// Threads: handlers on the server thread (they never compute: Health,
// Stats and Release answer while a step runs); steps on the compute
// thread; successor callbacks on the successor channel's thread.
// `engine_mu` guards the engine and sessions (compute thread, Release,
// Configure); `mu` guards the queue, counters and what the successor
// callbacks touch. The Forward path is in stage_forward.c.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster/stage_i.h"

struct lp_worker_params lp_worker_params_default(void) {
    struct lp_worker_params p = {.model_dir = NULL, .listen = "127.0.0.1:7070", .device = "cpu",
                                 .n_threads = 0, .idle_timeout_s = 600};
    return p;
}

// Sends a failure Ack for one step (0: the stream as a whole) to a stream.
void lp_stage_ack_failure(struct lp_rpc_stream *to, uint64_t step, enum lp_status st,
                          int stage_index, const char *error) {
    if (!to) return;
    Layerpipe__V1__Ack ack = LAYERPIPE__V1__ACK__INIT;
    ack.step = step;
    ack.ok = false;
    ack.status = (uint32_t)st;
    ack.stage_index = (uint32_t)stage_index;
    ack.error = (char *)error;
    uint8_t buf[LP_ERROR_MSG_BYTES + 64];
    size_t n;
    if (lp_pb_pack_into(&ack.base, buf, sizeof buf, &n, NULL) == LP_OK)
        lp_rpc_stream_send(to, buf, n, NULL);
}

// ---- successor callbacks (successor channel thread) ----

static void succ_on_reply(void *user, const uint8_t *msg, size_t bytes) {
    struct lp_worker *w = user;
    Layerpipe__V1__Ack *ack = layerpipe__v1__ack__unpack(NULL, bytes, msg);
    if (!ack) return;
    double now = lp_now_seconds();
    pthread_mutex_lock(&w->mu);
    struct stage_sent *s = &w->sent[ack->step % STAGE_INFLIGHT];
    if (s->step == ack->step && ack->step != 0) {
        if (ack->ok) {
            double ms = (now - s->at - ack->compute_seconds) * 1e3;
            lp_latency_add(&w->hop, ms > 0 ? ms : 0);
        } else { // the step failed further down the ring: tell whoever sent it
            lp_stage_ack_failure(s->from, s->step, (enum lp_status)ack->status,
                              (int)ack->stage_index, ack->error);
        }
        lp_rpc_stream_unref(s->from);
        *s = (struct stage_sent){0};
    }
    pthread_mutex_unlock(&w->mu);
    layerpipe__v1__ack__free_unpacked(ack, NULL);
}

// Fails every step sent on and not acknowledged. Under mu.
static void stage_fail_sent(struct lp_worker *w, enum lp_status st, const char *msg) {
    for (int i = 0; i < STAGE_INFLIGHT; i++) {
        struct stage_sent *s = &w->sent[i];
        if (!s->step) continue;
        lp_stage_ack_failure(s->from, s->step, st, w->core.stage_index, msg);
        lp_rpc_stream_unref(s->from);
        *s = (struct stage_sent){0};
    }
}

static void succ_on_end(void *user, enum lp_status st, const char *msg) {
    struct lp_worker *w = user;
    pthread_mutex_lock(&w->mu);
    if (!w->succ_failed) {
        w->succ_failed = true;
        snprintf(w->succ_error, sizeof w->succ_error, "stage %d (%s): successor %s failed: %s",
                 w->core.stage_index, w->listen, w->successor,
                 st == LP_OK ? "its stream ended" : msg);
    }
    stage_fail_sent(w, LP_ERR_NETWORK, w->succ_error);
    pthread_mutex_unlock(&w->mu);
}

// ---- configuration (server thread, engine_mu held) ----

static void stage_unconfigure(struct lp_worker *w) {
    pthread_mutex_lock(&w->mu);
    lp_stage_queue_clear(w);
    lp_stage_queue_free(w);
    pthread_mutex_unlock(&w->mu);
    lp_rpc_client_stream_close(w->succ, 2000);
    w->succ = NULL;
    lp_rpc_channel_destroy(w->succ_ch);
    w->succ_ch = NULL;
    lp_stage_core_unload(&w->core);
    free(w->rows_sel);
    free(w->payload);
    free(w->packed);
    w->rows_sel = NULL;
    w->payload = w->packed = NULL;
    pthread_mutex_lock(&w->mu);
    w->succ_failed = false;
    w->succ_error[0] = '\0';
    stage_fail_sent(w, LP_ERR_CANCELLED, "the stage was reconfigured");
    memset(&w->hop, 0, sizeof w->hop);
    w->busy_s = w->idle_s = 0;
    w->tokens = w->steps = w->bytes_in = w->bytes_out = 0;
    w->kv_used = w->kv_total = w->n_sessions_open = 0;
    pthread_mutex_unlock(&w->mu);
}

// Opens the stream to the successor (after a Health check, so a clear error
// comes now rather than from a stream that dies later).
enum lp_status lp_stage_connect(struct lp_worker *w, struct lp_error *err) {
    if (w->succ) lp_rpc_client_stream_close(w->succ, 0);
    w->succ = NULL;
    Grpc__Health__V1__HealthCheckRequest hreq = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    uint8_t req[16], *resp = NULL;
    size_t n_req = 0, n_resp = 0;
    enum lp_status st = lp_pb_pack_into(&hreq.base, req, sizeof req, &n_req, err);
    if (st == LP_OK)
        st = lp_rpc_call_unary(w->succ_ch, LP_M_HEALTH, req, n_req, &resp, &n_resp, 5000, err);
    free(resp);
    if (st != LP_OK)
        return lp_error_prefix(err, "stage %d (%s) cannot reach its successor: ", w->core.stage_index,
                               w->listen);
    pthread_mutex_lock(&w->mu);
    w->succ_failed = false;
    w->succ_error[0] = '\0';
    pthread_mutex_unlock(&w->mu);
    return lp_rpc_stream_open(w->succ_ch, w->to_sink ? LP_M_SINK : LP_M_FORWARD, succ_on_reply,
                              succ_on_end, w, &w->succ, err);
}

// A stage must not be its own successor, nor close a loop of stages: walk
// the ring through each stage's Hello (its successor) up to the Sink.
static enum lp_status stage_check_ring(struct lp_worker *w, const char *successor, bool to_sink,
                                       struct lp_error *err) {
    char cur[128];
    snprintf(cur, sizeof cur, "%s", successor);
    for (int hop = 0; hop < LP_MAX_STAGES && !to_sink; hop++) {
        if (strcmp(cur, w->listen) == 0)
            return lp_error_set(err, LP_ERR_INVALID_ARG,
                                hop == 0 ? "stage %s: its own address is not a successor"
                                         : "stage %s: successor %s leads back to this stage: a "
                                           "loop of stages",
                                w->listen, successor);
        struct lp_rpc_channel *ch = NULL;
        if (lp_rpc_channel_create(&ch, cur, 0, w->sec, NULL) != LP_OK) return LP_OK;
        Layerpipe__V1__HelloRequest req = LAYERPIPE__V1__HELLO_REQUEST__INIT;
        req.protocol_version = LP_PROTOCOL_VERSION;
        uint8_t buf[32], *resp = NULL;
        size_t n = 0, n_resp = 0;
        Layerpipe__V1__HelloReply *h = NULL;
        if (lp_pb_pack_into(&req.base, buf, sizeof buf, &n, NULL) == LP_OK &&
            lp_rpc_call_unary(ch, LP_M_HELLO, buf, n, &resp, &n_resp, 2000, NULL) == LP_OK)
            h = layerpipe__v1__hello_reply__unpack(NULL, n_resp, resp);
        free(resp);
        lp_rpc_channel_destroy(ch);
        // not a stage (the Sink), unreachable (checked later), or the ring's end
        if (!h) return LP_OK;
        bool end = !h->successor || !h->successor[0];
        snprintf(cur, sizeof cur, "%s", end ? "" : h->successor);
        bool is_me = h->listen_address && strcmp(h->listen_address, w->listen) == 0;
        layerpipe__v1__hello_reply__free_unpacked(h, NULL);
        if (is_me)
            return lp_error_set(err, LP_ERR_INVALID_ARG,
                                "stage %s: successor %s leads back to this stage: a loop of stages",
                                w->listen, successor);
        if (end) return LP_OK;
    }
    return LP_OK;
}

static enum lp_status stage_configure(struct lp_worker *w, const Layerpipe__V1__ConfigureRequest *r,
                                      Layerpipe__V1__ConfigureReply *reply, struct lp_error *err) {
    enum lp_status st = lp_stage_core_check(&w->core, r, err);
    if (st != LP_OK) return st;
    if ((st = stage_check_ring(w, r->successor, r->successor_is_sink, err)) != LP_OK) return st;
    stage_unconfigure(w);
    struct lp_stage_core *c = &w->core;
    if ((st = lp_stage_core_load(c, r, err)) != LP_OK) goto fail;
    size_t row_bytes = (size_t)c->max_rows * (size_t)c->hidden * sizeof(float);
    size_t arena = lp_pb_arena_bytes_for(row_bytes, (size_t)c->max_sessions);
    w->rows_sel = malloc(row_bytes);
    w->payload = malloc(row_bytes);
    w->pack_cap = arena + 64;
    w->packed = malloc(w->pack_cap);
    if (!w->rows_sel || !w->payload || !w->packed) {
        st = lp_error_set(err, LP_ERR_NOMEM, "stage %s: out of memory", w->listen);
        goto fail;
    }
    pthread_mutex_lock(&w->mu);
    for (int i = 0; i < STAGE_QUEUE && st == LP_OK; i++)
        st = lp_pb_arena_init(&w->queue[i].arena, arena, err);
    w->arena_cap = st == LP_OK ? arena : 0;
    pthread_mutex_unlock(&w->mu);
    if (st != LP_OK) goto fail;
    pthread_mutex_lock(&w->mu);
    snprintf(w->successor, sizeof w->successor, "%s", r->successor);
    pthread_mutex_unlock(&w->mu);
    w->to_sink = r->successor_is_sink;
    w->sink_key = r->sink_key;
    w->wire = r->wire_dtype;
    if ((st = lp_rpc_channel_create(&w->succ_ch, w->successor, LP_MAX_MESSAGE_BYTES, w->sec,
                                    err)) != LP_OK)
        goto fail;
    if ((st = lp_stage_connect(w, err)) != LP_OK) goto fail;
    pthread_mutex_lock(&w->mu);
    w->last_done = lp_now_seconds();
    w->kv_total = lp_engine_kv_blocks_total(c->engine);
    pthread_mutex_unlock(&w->mu);
    reply->weight_bytes = lp_model_weight_bytes(c->model);
    reply->kv_bytes = lp_engine_kv_bytes(c->engine);
    reply->kv_blocks = (uint32_t)lp_engine_kv_blocks_total(c->engine);
    reply->kv_block_size = (uint32_t)lp_engine_kv_block_size(c->engine);
    fprintf(stderr, "layerpipe worker %s: stage %d, layers [%d, %d), successor %s%s, %s wire\n",
            w->listen, c->stage_index, c->layer_begin, c->layer_end, w->successor,
            w->to_sink ? " (sink)" : "", lp_wire_dtype_name(w->wire));
    return LP_OK;
fail:
    stage_unconfigure(w);
    return st;
}

// ---- unary handlers (server thread; none of them computes) ----

static enum lp_status h_hello(void *user, const uint8_t *req, size_t n_req, uint8_t **resp,
                              size_t *n_resp, struct lp_error *err) {
    struct lp_worker *w = user;
    Layerpipe__V1__HelloRequest *r = layerpipe__v1__hello_request__unpack(NULL, n_req, req);
    if (!r) return lp_error_set(err, LP_ERR_PROTOCOL, "Hello: malformed request");
    uint32_t version = r->protocol_version;
    layerpipe__v1__hello_request__free_unpacked(r, NULL);
    if (version != LP_PROTOCOL_VERSION)
        return lp_error_set(err, LP_ERR_UNSUPPORTED,
                            "stage %s speaks protocol %d (layerpipe %s), the caller %u: run the "
                            "same layerpipe version everywhere",
                            w->listen, LP_PROTOCOL_VERSION, LP_VERSION_STRING, version);
    Layerpipe__V1__HelloReply h = LAYERPIPE__V1__HELLO_REPLY__INIT;
    h.protocol_version = LP_PROTOCOL_VERSION;
    h.version = LP_VERSION_STRING;
    h.model_fingerprint = w->core.fingerprint;
    h.n_layers = (uint32_t)w->core.n_layers;
    h.device = w->device;
    struct lp_device_info info;
    lp_backend_device_info(w->backend, &info, NULL);
    h.free_memory_bytes = info.free_bytes;
    h.measured_gb_s = w->measured_gb_s;
    h.listen_address = w->listen;
    pthread_mutex_lock(&w->mu);
    char successor[128];
    snprintf(successor, sizeof successor, "%s", w->arena_cap ? w->successor : "");
    pthread_mutex_unlock(&w->mu);
    h.successor = successor;
    return lp_pb_pack(&h.base, resp, n_resp, err);
}

// The reply's tensor hashes: views of the core's (valid while engine_mu is held).
static enum lp_status reply_hashes(const struct lp_stage_core *c,
                                   Layerpipe__V1__ConfigureReply *reply,
                                   Layerpipe__V1__TensorHash **buf, struct lp_error *err) {
    size_t n = (size_t)c->n_hashes;
    *buf = malloc((n ? n : 1) * (sizeof **buf + sizeof(void *)));
    if (!*buf) return lp_error_set(err, LP_ERR_NOMEM, "stage %s: out of memory", c->listen);
    Layerpipe__V1__TensorHash **ptrs = (Layerpipe__V1__TensorHash **)(*buf + n);
    for (size_t i = 0; i < n; i++) {
        layerpipe__v1__tensor_hash__init(&(*buf)[i]);
        (*buf)[i].name = (char *)c->hashes[i].name;
        (*buf)[i].xxh3 = c->hashes[i].hash;
        ptrs[i] = &(*buf)[i];
    }
    reply->n_tensor_hashes = n;
    reply->tensor_hashes = ptrs;
    return LP_OK;
}

static enum lp_status h_configure(void *user, const uint8_t *req, size_t n_req, uint8_t **resp,
                                  size_t *n_resp, struct lp_error *err) {
    struct lp_worker *w = user;
    if (n_req > 64 * 1024)
        return lp_error_set(err, LP_ERR_INVALID_ARG, "stage %s: a %zu-byte Configure request",
                            w->listen, n_req);
    Layerpipe__V1__ConfigureRequest *r =
        layerpipe__v1__configure_request__unpack(NULL, n_req, req);
    if (!r) return lp_error_set(err, LP_ERR_PROTOCOL, "Configure: malformed request");
    Layerpipe__V1__ConfigureReply reply = LAYERPIPE__V1__CONFIGURE_REPLY__INIT;
    Layerpipe__V1__TensorHash *hashes = NULL;
    pthread_mutex_lock(&w->engine_mu); // waits for the step being computed
    enum lp_status st = stage_configure(w, r, &reply, err);
    if (st == LP_OK) st = reply_hashes(&w->core, &reply, &hashes, err);
    if (st == LP_OK) st = lp_pb_pack(&reply.base, resp, n_resp, err);
    pthread_mutex_unlock(&w->engine_mu);
    free(hashes);
    layerpipe__v1__configure_request__free_unpacked(r, NULL);
    return st;
}

// Counts of the KV pool and sessions for Stats. engine_mu held.
void lp_stage_note_kv(struct lp_worker *w) {
    int open = 0, used = 0;
    lp_stage_core_usage(&w->core, &open, &used);
    pthread_mutex_lock(&w->mu);
    w->n_sessions_open = open;
    w->kv_used = used;
    pthread_mutex_unlock(&w->mu);
}

static enum lp_status h_release(void *user, const uint8_t *req, size_t n_req, uint8_t **resp,
                                size_t *n_resp, struct lp_error *err) {
    struct lp_worker *w = user;
    Layerpipe__V1__ReleaseReply reply = LAYERPIPE__V1__RELEASE_REPLY__INIT;
    pthread_mutex_lock(&w->engine_mu);
    enum lp_status st = lp_stage_core_release(&w->core, req, n_req, &reply.released, err);
    if (w->core.configured) lp_stage_note_kv(w);
    pthread_mutex_unlock(&w->engine_mu);
    if (st != LP_OK) return st;
    return lp_pb_pack(&reply.base, resp, n_resp, err);
}

static enum lp_status h_stats(void *user, const uint8_t *req, size_t n_req, uint8_t **resp,
                              size_t *n_resp, struct lp_error *err) {
    struct lp_worker *w = user;
    (void)req;
    (void)n_req;
    Layerpipe__V1__StatsReply s = LAYERPIPE__V1__STATS_REPLY__INIT;
    pthread_mutex_lock(&w->mu);
    s.stage_index = (uint32_t)w->core.stage_index;
    s.layer_begin = (uint32_t)w->core.layer_begin;
    s.layer_end = (uint32_t)w->core.layer_end;
    s.device = w->device;
    s.busy_seconds = w->busy_s;
    s.idle_seconds = w->idle_s + (w->arena_cap ? lp_now_seconds() - w->last_done : 0);
    s.tokens = w->tokens;
    s.steps = w->steps;
    s.bytes_in = w->bytes_in;
    s.bytes_out = w->bytes_out;
    s.hop_p50_ms = lp_latency_quantile(&w->hop, 0.5);
    s.hop_p99_ms = lp_latency_quantile(&w->hop, 0.99);
    s.sessions = (uint32_t)w->n_sessions_open;
    s.kv_blocks_used = (uint32_t)w->kv_used;
    s.kv_blocks_total = (uint32_t)w->kv_total;
    enum lp_status st = lp_pb_pack(&s.base, resp, n_resp, err);
    pthread_mutex_unlock(&w->mu);
    return st;
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

// ---- lifecycle ----

enum lp_status lp_worker_create(struct lp_worker **out, const struct lp_worker_params *p,
                                struct lp_error *err) {
    *out = NULL;
    struct lp_worker *w = calloc(1, sizeof *w);
    if (!w) return lp_error_set(err, LP_ERR_NOMEM, "worker: out of memory");
    pthread_mutex_init(&w->mu, NULL);
    pthread_mutex_init(&w->engine_mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    w->params = *p;
    enum lp_status st;
    w->model_dir = strdup(p->model_dir ? p->model_dir : "");
    w->listen = strdup(p->listen ? p->listen : "");
    if (!w->model_dir || !w->listen) {
        st = lp_error_set(err, LP_ERR_NOMEM, "worker: out of memory");
        goto fail;
    }
    if ((st = lp_backend_create(&w->backend, p->device, p->n_threads, false, err)) != LP_OK)
        goto fail;
    if ((st = lp_stage_core_init(&w->core, w->model_dir, w->listen, w->backend,
                                 p->idle_timeout_s, err)) != LP_OK)
        goto fail;
    struct lp_device_info info;
    if ((st = lp_backend_device_info(w->backend, &info, err)) != LP_OK) goto fail;
    snprintf(w->device, sizeof w->device, "%s", info.name);
    w->measured_gb_s = info.read_gb_s;
    if (pthread_create(&w->compute, NULL, lp_stage_compute_main, w) != 0) {
        st = lp_error_set(err, LP_ERR_INTERNAL, "worker: cannot start the compute thread");
        goto fail;
    }
    w->compute_started = true;
    if ((st = lp_rpc_security_create(&w->sec, &p->security, err)) != LP_OK ||
        (st = lp_rpc_server_create(&w->server, w->listen, LP_MAX_MESSAGE_BYTES, w->sec, err)) !=
            LP_OK)
        goto fail;
    if ((st = lp_rpc_server_add_unary(w->server, LP_M_HELLO, h_hello, w, err)) != LP_OK ||
        (st = lp_rpc_server_add_unary_slow(w->server, LP_M_CONFIGURE, h_configure, w, err)) !=
            LP_OK ||
        (st = lp_rpc_server_add_unary_slow(w->server, LP_M_RELEASE, h_release, w, err)) != LP_OK ||
        (st = lp_rpc_server_add_unary(w->server, LP_M_STATS, h_stats, w, err)) != LP_OK ||
        (st = lp_rpc_server_add_unary(w->server, LP_M_HEALTH, h_health, w, err)) != LP_OK ||
        (st = lp_rpc_server_add_stream(w->server, LP_M_FORWARD, &lp_stage_forward_handler, w,
                                       err)) != LP_OK ||
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
            w->core.listen = l; // (engine_mu: no Configure can run before we return)
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
    if (w->compute_started) {
        pthread_mutex_lock(&w->mu);
        w->stopping = true;
        pthread_cond_broadcast(&w->cv);
        pthread_mutex_unlock(&w->mu);
        pthread_join(w->compute, NULL);
    }
    stage_unconfigure(w);
    lp_rpc_security_destroy(w->sec); // after the server and the successor channel
    lp_backend_destroy(w->backend);
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->engine_mu);
    pthread_mutex_destroy(&w->mu);
    free(w->model_dir);
    free(w->listen);
    free(w);
}
