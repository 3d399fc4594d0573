// SPDX-License-Identifier: MIT
// pipeline.c -- the coordinator's side of the ring. It holds the embedding,
// its own first layers and the head; the workers hold the rest, in order.
// lp_pipeline_submit runs the coordinator's layers on a micro-batch and
// streams the rows to stage 1 without waiting, so with K micro-batches in
// flight all K stages compute at once; the last stage streams the rows that
// need logits to the coordinator's Sink, which puts them in the micro-batch's
// slot; lp_pipeline_collect takes the oldest slot's rows through the head
// (to logits rows, or, for a greedy micro-batch, only to their greedy ids).
// With no workers the coordinator computes a micro-batch whole at submit.
// A failed step (a failure Ack, a timeout, a broken stream) fails its slot
// only; a broken stream to stage 1 is reopened on the next submit.
// Threads: submit, collect and release run on the caller's (scheduler)
// thread; the Sink server thread and the stage-1 stream thread fill slots
// under `mu`. Nothing on the per-step path allocates: slots, the packing
// buffer and the Sink's unpacking arena are sized at create.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cluster/pipeline_i.h"

struct lp_pipeline_params lp_pipeline_params_default(void) {
    struct lp_pipeline_params p = {.model_dir = NULL,
                                   .workers = NULL,
                                   .n_workers = 0,
                                   .plan = NULL,
                                   .wire_dtype = LP_DTYPE_F32,
                                   .device = "cpu",
                                   .n_threads = 0,
                                   .fast = false,
                                   .max_batch_tokens = 64,
                                   .max_sessions = 4,
                                   .max_context = 0,
                                   .kv_bf16 = false,
                                   .timeout_ms = 30000,
                                   .recover_timeout_ms = 30000,
                                   .sink_listen = "127.0.0.1:0",
                                   .sink_advertise = NULL};
    return p;
}

// The in-flight slot of a step, or NULL (a late or stranger's step). Under mu.
static struct pl_slot *pl_slot_of(struct lp_pipeline *p, uint64_t step) {
    for (int i = 0; i < p->n_in_flight; i++) {
        struct pl_slot *s = &p->slots[(p->slot_head + i) % p->n_slots];
        if (s->step == step) return s;
    }
    return NULL;
}

// Fails a slot that has no result yet. Under mu.
static void pl_slot_fail(struct lp_pipeline *p, struct pl_slot *s, enum lp_status st,
                         const char *msg) {
    if (s->done) return;
    s->done = true;
    s->status = st == LP_OK ? LP_ERR_INTERNAL : st;
    snprintf(s->error, sizeof s->error, "%s", msg);
    pthread_cond_broadcast(&p->cv);
}

// Fails every slot still waiting (the stream to stage 1 or the Sink broke). Under mu.
static void pl_fail_all(struct lp_pipeline *p, enum lp_status st, const char *msg) {
    for (int i = 0; i < p->n_in_flight; i++)
        pl_slot_fail(p, &p->slots[(p->slot_head + i) % p->n_slots], st, msg);
}

// ---- stage 1 stream callbacks (its channel's thread) ----

static void first_on_reply(void *user, const uint8_t *msg, size_t bytes) {
    struct lp_pipeline *p = user;
    Layerpipe__V1__Ack *ack = layerpipe__v1__ack__unpack(NULL, bytes, msg);
    if (!ack) return;
    double now = lp_now_seconds();
    pthread_mutex_lock(&p->mu);
    struct pl_slot *s = pl_slot_of(p, ack->step);
    if (ack->ok) {
        if (s) {
            double ms = (now - s->sent_at - ack->compute_seconds) * 1e3;
            lp_latency_add(&p->hop, ms > 0 ? ms : 0);
        }
    } else if (s) { // this step failed somewhere down the ring; the stream goes on
        enum lp_status st = ack->status > 0 && ack->status <= LP_ERR_INTERNAL
                                ? (enum lp_status)ack->status
                                : LP_ERR_INTERNAL;
        pl_slot_fail(p, s, st, ack->error);
    } else if (ack->step == 0) { // a failure of the stream itself
        pl_fail_all(p, LP_ERR_PROTOCOL, ack->error);
    }
    pthread_mutex_unlock(&p->mu);
    layerpipe__v1__ack__free_unpacked(ack, NULL);
}

static void first_on_end(void *user, enum lp_status st, const char *msg) {
    struct lp_pipeline *p = user;
    char m[LP_ERROR_MSG_BYTES];
    snprintf(m, sizeof m, "stage 1 (%s): %s", p->n_workers ? p->stages[0].addr : "?",
             st == LP_OK ? "the stream ended" : msg);
    pthread_mutex_lock(&p->mu);
    p->stream_broken = true;
    pl_fail_all(p, st == LP_OK ? LP_ERR_NETWORK : st, m);
    pthread_mutex_unlock(&p->mu);
}

// ---- the Sink (its server's thread) ----

// Per Sink stream: whether it has delivered rows with this pipeline's key,
// i.e. whether it is the configured last stage's stream (only its end
// concerns the steps in flight; a stranger's rejected stream does not).
struct sink_stream {
    bool keyed;
};

static enum lp_status sink_open(void *user, struct lp_rpc_stream *s, void **stream_user,
                                struct lp_error *err) {
    (void)user;
    (void)s;
    *stream_user = calloc(1, sizeof(struct sink_stream));
    if (!*stream_user) return lp_error_set(err, LP_ERR_NOMEM, "Sink: out of memory");
    return LP_OK;
}

static void sink_ack(struct lp_rpc_stream *s, uint64_t step) {
    Layerpipe__V1__Ack ack = LAYERPIPE__V1__ACK__INIT;
    ack.step = step;
    ack.ok = true;
    uint8_t buf[64];
    size_t n;
    if (lp_pb_pack_into(&ack.base, buf, sizeof buf, &n, NULL) == LP_OK)
        lp_rpc_stream_send(s, buf, n, NULL);
}

// The rows of one step: checked against the slot's expectations, decoded
// into the slot. A step no slot waits for (late after a timeout) is dropped.
static enum lp_status sink_message(void *user, void *stream_user, struct lp_rpc_stream *s,
                                   const uint8_t *msg, size_t bytes, struct lp_error *err) {
    struct lp_pipeline *p = user;
    struct sink_stream *ss = stream_user;
    Layerpipe__V1__Activations *a = lp_pb_arena_unpack_activations(&p->sink_arena, msg, bytes);
    if (!a)
        return lp_error_set(err, LP_ERR_PROTOCOL,
                            "Sink: a %zu-byte message that is not Activations (or is larger "
                            "than %d rows)",
                            bytes, p->max_rows);
    if (a->sink_key != p->sink_key) // only the configured last stage may deliver rows
        return lp_error_set(err, LP_ERR_PROTOCOL,
                            "Sink: Activations without this pipeline's key: not its last stage");
    ss->keyed = true;
    pthread_mutex_lock(&p->mu);
    struct pl_slot *slot = pl_slot_of(p, a->step);
    if (!slot || slot->done) {
        pthread_mutex_unlock(&p->mu);
        return LP_OK; // late or unknown: nobody waits for it
    }
    slot->filling = true;
    pthread_mutex_unlock(&p->mu);
    struct lp_error e = {0};
    enum lp_status st = lp_wire_decode_rows(a, p->cfg.hidden_size, p->max_rows, p->max_sessions,
                                            false, slot->rows, &e);
    if (st == LP_OK && (int)a->n_rows != slot->n_rows)
        st = lp_error_set(&e, LP_ERR_PROTOCOL, "Sink: step %llu has %u rows, expected %d",
                          (unsigned long long)a->step, a->n_rows, slot->n_rows);
    pthread_mutex_lock(&p->mu);
    slot->filling = false;
    if (st == LP_OK) {
        slot->done = true;
        slot->status = LP_OK;
        p->bytes_in += a->data.len;
    } else {
        pl_slot_fail(p, slot, st, e.msg);
    }
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    sink_ack(s, a->step);
    return LP_OK;
}

static void sink_close(void *user, void *stream_user, enum lp_status st, const char *msg) {
    struct lp_pipeline *p = user;
    bool keyed = ((struct sink_stream *)stream_user)->keyed;
    free(stream_user);
    if (keyed && st != LP_OK && st != LP_ERR_CANCELLED) {
        char m[LP_ERROR_MSG_BYTES];
        snprintf(m, sizeof m, "the last stage's stream to the Sink ended: %s", msg);
        pthread_mutex_lock(&p->mu);
        pl_fail_all(p, st, m);
        pthread_mutex_unlock(&p->mu);
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

enum lp_status lp_pl_unary(struct lp_pipeline *p, int i, const char *method,
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

enum lp_status lp_pl_hello(struct lp_pipeline *p, int i, struct lp_error *err) {
    struct pl_stage *s = &p->stages[i];
    lp_rpc_channel_destroy(s->ch); // a fresh channel connects at once (no backoff left over)
    s->ch = NULL;
    enum lp_status st =
        lp_rpc_channel_create(&s->ch, s->addr, LP_MAX_MESSAGE_BYTES, p->sec, err);
    if (st != LP_OK) return st;
    Layerpipe__V1__HelloRequest req = LAYERPIPE__V1__HELLO_REQUEST__INIT;
    req.protocol_version = LP_PROTOCOL_VERSION;
    uint8_t *resp = NULL;
    size_t n = 0;
    if ((st = lp_pl_unary(p, i, LP_M_HELLO, &req.base, &resp, &n, p->hello_timeout_ms, err)) !=
        LP_OK)
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
    struct lp_device_info me = {0};
    if (by_speed) lp_backend_device_info(p->backend, &me, NULL);
    weight[0] = by_speed ? me.read_gb_s : 1.0;
    cap[0] = by_speed && layer_bytes ? pl_cap(me.free_bytes / 2 / layer_bytes) : -1;
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

enum lp_status lp_pl_configure(struct lp_pipeline *p, int i, struct lp_error *err) {
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
    c.protocol_version = LP_PROTOCOL_VERSION;
    c.sink_key = i + 1 == p->n_workers ? p->sink_key : 0;
    uint8_t *resp = NULL;
    size_t n = 0;
    enum lp_status st = lp_pl_unary(p, i, LP_M_CONFIGURE, &c.base, &resp, &n, 600000, err);
    if (st != LP_OK) {
        free(resp);
        return lp_error_prefix(err, "configuring worker %d (%s): ", i + 1, s->addr);
    }
    Layerpipe__V1__ConfigureReply *r = layerpipe__v1__configure_reply__unpack(NULL, n, resp);
    free(resp);
    if (!r || r->kv_blocks == 0 || r->kv_block_size == 0 || r->kv_block_size > 4096)
        st = lp_error_set(err, LP_ERR_PROTOCOL,
                          "worker %d (%s): Configure reply without its KV pool size (a worker "
                          "older than this coordinator?)",
                          i + 1, s->addr);
    else {
        s->kv_blocks = (int)(r->kv_blocks > INT32_MAX ? INT32_MAX : r->kv_blocks);
        s->kv_block_size = (int)r->kv_block_size;
        // every byte of its layers against this coordinator's copy
        st = lp_integrity_check_stage(p->model_dir, s->layer_begin, s->layer_end, r, i + 1,
                                      s->addr, err);
    }
    if (r) layerpipe__v1__configure_reply__free_unpacked(r, NULL);
    return st;
}

// The per-step buffers and slots, sized once.
static enum lp_status pl_alloc(struct lp_pipeline *p, struct lp_error *err) {
    size_t H = (size_t)p->cfg.hidden_size, R = (size_t)p->max_rows, S = (size_t)p->max_sessions;
    p->rows = malloc(R * H * sizeof(float));
    p->payload = malloc(R * H * sizeof(float));
    p->logits = malloc(R * (size_t)p->cfg.vocab_size * sizeof(float));
    p->greedy_ids = malloc(R * sizeof(int32_t));
    p->greedy_bad = malloc(R * sizeof(int32_t));
    p->pack_cap = lp_pb_arena_bytes_for(R * H * sizeof(float), S) + 64;
    p->packed = malloc(p->pack_cap);
    p->sessions = calloc(S, sizeof *p->sessions);
    p->segs = calloc(S, sizeof *p->segs);
    p->opened = calloc(S, sizeof *p->opened);
    p->wsegs = calloc(S, sizeof *p->wsegs);
    p->wsegp = calloc(S, sizeof *p->wsegp);
    if (!p->rows || !p->payload || !p->logits || !p->greedy_ids || !p->greedy_bad || !p->packed ||
        !p->sessions || !p->segs || !p->opened || !p->wsegs || !p->wsegp)
        return lp_error_set(err, LP_ERR_NOMEM, "pipeline: out of memory");
    p->n_slots = p->n_workers + 2 < PL_MAX_SLOTS ? p->n_workers + 2 : PL_MAX_SLOTS;
    for (int i = 0; i < p->n_slots; i++)
        if (!(p->slots[i].rows = malloc(R * H * sizeof(float))))
            return lp_error_set(err, LP_ERR_NOMEM, "pipeline: out of memory");
    if (p->n_workers > 0)
        return lp_pb_arena_init(&p->sink_arena, lp_pb_arena_bytes_for(R * H * sizeof(float), S),
                                err);
    return LP_OK;
}

// The pipeline's KV capacity: the smallest pool of any stage that has layers.
void lp_pl_kv_capacity(struct lp_pipeline *p) {
    p->kv_block_size = lp_engine_kv_block_size(p->front);
    long long positions = p->plan.layers[0] > 0
                              ? (long long)lp_engine_kv_blocks_total(p->front) * p->kv_block_size
                              : -1;
    for (int i = 0; i < p->n_workers; i++) {
        long long n = (long long)p->stages[i].kv_blocks * p->stages[i].kv_block_size;
        if (positions < 0 || n < positions) positions = n;
    }
    if (positions < 0) positions = (long long)lp_engine_kv_blocks_total(p->front) * p->kv_block_size;
    p->kv_blocks = (int)(positions / p->kv_block_size);
}

// (Re)opens the activation stream to stage 1.
enum lp_status lp_pl_open_stream(struct lp_pipeline *p, struct lp_error *err) {
    if (p->to_first) lp_rpc_client_stream_close(p->to_first, 0);
    p->to_first = NULL;
    pthread_mutex_lock(&p->mu);
    p->stream_broken = false;
    pthread_mutex_unlock(&p->mu);
    return lp_rpc_stream_open(p->stages[0].ch, LP_M_FORWARD, first_on_reply, first_on_end, p,
                              &p->to_first, err);
}

// A key the Sink expects from the last stage: not guessable by a process
// that merely reaches the Sink's port (with TLS and the cluster token, not
// even that).
static uint64_t pl_random_key(void) {
    uint64_t k = 0;
    FILE *fp = fopen("/dev/urandom", "rb");
    if (!fp || fread(&k, sizeof k, 1, fp) != 1) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        k = (uint64_t)ts.tv_nsec * 0x9e3779b97f4a7c15ull ^ (uint64_t)ts.tv_sec;
    }
    if (fp) fclose(fp);
    return k ? k : 1;
}

enum lp_status lp_pl_load_share(struct lp_pipeline *p, int a, struct lp_error *err) {
    lp_engine_destroy(p->head);
    lp_engine_destroy(p->front);
    lp_model_close(p->model);
    p->head = p->front = NULL;
    p->model = NULL;
    p->head_seq = -1;
    memset(p->sessions, 0, (size_t)p->max_sessions * sizeof *p->sessions);
    struct lp_model_load_params mine = {0, a, true, true};
    enum lp_status st = lp_model_open(&p->model, p->model_dir, &mine, err);
    if (st != LP_OK) return st;
    struct lp_engine_params ep = lp_engine_params_default();
    ep.max_batch_tokens = p->max_rows;
    ep.max_logit_rows = 1;
    ep.max_seqs = p->max_sessions;
    ep.max_context = p->params.max_context;
    ep.kv_dtype = p->params.kv_bf16 ? LP_DTYPE_BF16 : LP_DTYPE_F32;
    ep.no_head = true;
    if ((st = lp_engine_create(&p->front, p->model, p->backend, &ep, err)) != LP_OK) return st;
    ep.no_head = false;
    ep.no_embed = true;
    ep.layer_begin = ep.layer_end = a;
    ep.max_seqs = 1;
    ep.max_logit_rows = p->max_rows;
    if ((st = lp_engine_create(&p->head, p->model, p->backend, &ep, err)) != LP_OK) return st;
    return lp_engine_seq_open(p->head, &p->head_seq, err);
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
    p->hello_timeout_ms = 10000;
    p->sink_key = pl_random_key();
    for (int i = 0; i < params->n_standby && p->n_standby < LP_MAX_STAGES; i++)
        snprintf(p->standby[p->n_standby++], sizeof p->standby[0], "%s", params->standby[i]);
    if (p->params.recover_timeout_ms <= 0) p->params.recover_timeout_ms = 30000;
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
    p->weight_bytes = lp_model_weight_bytes(all);
    size_t layer_bytes = p->weight_bytes / (size_t)p->cfg.n_layers;
    lp_model_close(all);
    if ((st = lp_backend_create(&p->backend, params->device, params->n_threads, params->fast,
                                err)) != LP_OK)
        goto fail;
    const char *bname = lp_backend_name(p->backend);
    if (strncmp(bname, "cuda", 4) == 0)
        snprintf(p->device_name, sizeof p->device_name, "%s", bname);
    else
        snprintf(p->device_name, sizeof p->device_name, "%s (%d threads)", bname,
                 lp_backend_n_threads(p->backend));
    if ((st = lp_rpc_security_create(&p->sec, &params->security, err)) != LP_OK) goto fail;
    p->stages = calloc((size_t)(p->n_workers ? p->n_workers : 1), sizeof *p->stages);
    if (!p->stages) {
        st = lp_error_set(err, LP_ERR_NOMEM, "pipeline: out of memory");
        goto fail;
    }
    for (int i = 0; i < p->n_workers; i++) {
        snprintf(p->stages[i].addr, sizeof p->stages[i].addr, "%s", params->workers[i]);
        if ((st = lp_pl_hello(p, i, err)) != LP_OK) goto fail;
    }
    if ((st = pl_choose_plan(p, layer_bytes, err)) != LP_OK) goto fail;
    int a = p->plan.layers[0], at = a;
    for (int i = 0; i < p->n_workers; i++) {
        p->stages[i].layer_begin = at;
        at += p->plan.layers[i + 1];
        p->stages[i].layer_end = at;
    }
    if ((st = pl_alloc(p, err)) != LP_OK) goto fail;
    if ((st = lp_pl_load_share(p, a, err)) != LP_OK) goto fail;
    if (p->n_workers > 0) {
        // the Sink, then the stages from last to first (each checks its successor)
        if ((st = lp_rpc_server_create(&p->sink, params->sink_listen, LP_MAX_MESSAGE_BYTES,
                                       p->sec, err)) != LP_OK)
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
            if ((st = lp_pl_configure(p, i, err)) != LP_OK) goto fail;
        if ((st = lp_pl_open_stream(p, err)) != LP_OK) goto fail;
    }
    lp_pl_kv_capacity(p);
    *out = p;
    return LP_OK;
fail:
    lp_pipeline_destroy(p);
    return st;
}

void lp_pipeline_destroy(struct lp_pipeline *p) {
    if (!p) return;
    for (int i = 0; p->sessions && i < p->max_sessions; i++)
        if (p->sessions[i].id) lp_pipeline_release(p, p->sessions[i].id);
    lp_rpc_client_stream_close(p->to_first, 2000);
    lp_rpc_server_destroy(p->sink);
    for (int i = 0; p->stages && i < p->n_workers; i++) lp_rpc_channel_destroy(p->stages[i].ch);
    lp_rpc_security_destroy(p->sec); // after the Sink and the channels
    for (int i = 0; i < PL_MAX_SLOTS; i++) free(p->slots[i].rows);
    lp_pb_arena_deinit(&p->sink_arena);
    lp_engine_destroy(p->head);
    lp_engine_destroy(p->front);
    lp_backend_destroy(p->backend);
    lp_model_close(p->model);
    free(p->stages);
    free(p->rows);
    free(p->payload);
    free(p->packed);
    free(p->logits);
    free(p->greedy_ids);
    free(p->greedy_bad);
    free(p->sessions);
    free(p->segs);
    free(p->opened);
    free(p->wsegs);
    free(p->wsegp);
    free(p->model_dir);
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
    lp_rpc_shutdown();
    free(p);
}

// ---- the batched, asynchronous interface ----

static int pl_find_session(const struct lp_pipeline *p, uint64_t id) {
    for (int i = 0; i < p->max_sessions; i++)
        if (p->sessions[i].id == id) return i;
    return -1;
}

// Checks the batch against the coordinator's limits and sessions, changing nothing.
static enum lp_status pl_check(struct lp_pipeline *p, const struct lp_pipeline_seg *segs,
                               int n_segs, struct lp_error *err) {
    if (n_segs < 1 || n_segs > p->max_sessions)
        return lp_error_set(err, LP_ERR_INVALID_ARG, "pipeline: %d segments, expected 1..%d",
                            n_segs, p->max_sessions);
    int n_tokens = 0, n_new = 0, n_free = 0;
    for (int i = 0; i < p->max_sessions; i++) n_free += p->sessions[i].id == 0;
    for (int i = 0; i < n_segs; i++) {
        const struct lp_pipeline_seg *g = &segs[i];
        if (g->session == 0 || g->n_tokens < 1 || g->n_tokens > p->max_rows || !g->tokens)
            return lp_error_set(err, LP_ERR_INVALID_ARG,
                                "pipeline: segment %d: session %llu, %d tokens (1..%d)", i,
                                (unsigned long long)g->session, g->n_tokens, p->max_rows);
        n_tokens += g->n_tokens;
        for (int j = 0; j < i; j++)
            if (segs[j].session == g->session)
                return lp_error_set(err, LP_ERR_INVALID_ARG,
                                    "pipeline: session %llu appears twice in one micro-batch",
                                    (unsigned long long)g->session);
        if (pl_find_session(p, g->session) < 0) {
            if (g->pos0 != 0)
                return lp_error_set(err, LP_ERR_INVALID_ARG,
                                    "pipeline: unknown session %llu at position %d (a new "
                                    "session starts at 0)",
                                    (unsigned long long)g->session, g->pos0);
            n_new++;
        }
    }
    if (n_tokens > p->max_rows)
        return lp_error_set(err, LP_ERR_INVALID_ARG, "pipeline: %d tokens in one micro-batch, at "
                            "most %d", n_tokens, p->max_rows);
    if (n_new > n_free)
        return lp_error_set(err, LP_ERR_BUSY, "pipeline: all %d sessions are in use",
                            p->max_sessions);
    if (p->n_in_flight == p->n_slots)
        return lp_error_set(err, LP_ERR_BUSY, "pipeline: %d micro-batches already in flight",
                            p->n_slots);
    return LP_OK;
}

// Runs the front engine on the batch into p->rows, opening new sessions'
// sequences; on failure the new ones are closed again and nothing changed.
static enum lp_status pl_front(struct lp_pipeline *p, const struct lp_pipeline_seg *segs,
                               int n_segs, struct lp_error *err) {
    int n_opened = 0;
    enum lp_status st = LP_OK;
    for (int i = 0; i < n_segs && st == LP_OK; i++) {
        int k = pl_find_session(p, segs[i].session);
        if (k < 0) {
            k = pl_find_session(p, 0);
            int seq;
            if ((st = lp_engine_seq_open(p->front, &seq, err)) != LP_OK) break;
            p->sessions[k] = (struct pl_session){segs[i].session, seq};
            p->opened[n_opened++] = k;
        }
        p->segs[i] = (struct lp_engine_seg){.seq = p->sessions[k].seq, .pos0 = segs[i].pos0,
                                            .n_tokens = segs[i].n_tokens,
                                            .tokens = segs[i].tokens};
    }
    struct lp_engine_batch b = {.n_segs = n_segs, .segs = p->segs, .hidden_out = p->rows};
    if (st == LP_OK) st = lp_engine_forward(p->front, &b, err);
    if (st != LP_OK)
        for (int i = 0; i < n_opened; i++) {
            lp_engine_seq_close(p->front, p->sessions[p->opened[i]].seq);
            p->sessions[p->opened[i]].id = 0;
        }
    return st;
}

// Streams the front's rows to stage 1. A failure fails the slot, not the call.
static void pl_send(struct lp_pipeline *p, struct pl_slot *slot,
                    const struct lp_pipeline_seg *segs, int n_segs, int n_tokens) {
    struct lp_error e = {0};
    enum lp_status st = LP_OK;
    bool broken;
    pthread_mutex_lock(&p->mu);
    broken = p->stream_broken;
    pthread_mutex_unlock(&p->mu);
    if (broken || !p->to_first) st = lp_pl_open_stream(p, &e);
    size_t H = (size_t)p->cfg.hidden_size;
    for (int i = 0; i < n_segs; i++) {
        Layerpipe__V1__Segment *w = &p->wsegs[i];
        layerpipe__v1__segment__init(w);
        w->session = segs[i].session;
        w->pos0 = (uint32_t)segs[i].pos0;
        w->n_tokens = (uint32_t)segs[i].n_tokens;
        w->all_logits = segs[i].all_logits;
        w->no_logits = !segs[i].want_logits && !segs[i].all_logits;
        p->wsegp[i] = w;
    }
    Layerpipe__V1__Activations a = LAYERPIPE__V1__ACTIVATIONS__INIT;
    a.step = slot->step;
    a.n_segments = (size_t)n_segs;
    a.segments = p->wsegp;
    a.n_rows = (uint32_t)n_tokens;
    a.hidden = (uint32_t)H;
    Layerpipe__V1__DType want = p->params.wire_dtype == LP_DTYPE_BF16   ? LAYERPIPE__V1__DTYPE__DTYPE_BF16
                                : p->params.wire_dtype == LP_DTYPE_F16 ? LAYERPIPE__V1__DTYPE__DTYPE_F16
                                                                       : LAYERPIPE__V1__DTYPE__DTYPE_F32;
    a.dtype = lp_wire_encode_rows(p->rows, (size_t)n_tokens * H, want, p->payload, &a.data.len);
    a.data.data = p->payload;
    a.sent_at = lp_now_seconds();
    size_t n = 0;
    if (st == LP_OK) st = lp_pb_pack_into(&a.base, p->packed, p->pack_cap, &n, &e);
    if (st == LP_OK) st = lp_rpc_client_stream_write(p->to_first, p->packed, n, &e);
    pthread_mutex_lock(&p->mu);
    if (st != LP_OK) {
        lp_error_prefix(&e, "stage 1 (%s): ", p->stages[0].addr);
        pl_slot_fail(p, slot, st, e.msg);
    } else {
        p->bytes_out += a.data.len;
    }
    pthread_mutex_unlock(&p->mu);
}

enum lp_status lp_pipeline_submit(struct lp_pipeline *p, const struct lp_pipeline_seg *segs,
                                  int n_segs, bool greedy_ids, uint64_t *step,
                                  struct lp_error *err) {
    enum lp_status st = pl_check(p, segs, n_segs, err);
    if (st != LP_OK) return st;
    double t0 = lp_now_seconds();
    if ((st = pl_front(p, segs, n_segs, err)) != LP_OK) return st;
    int n_tokens = 0, n_rows = 0;
    for (int i = 0; i < n_segs; i++) {
        n_tokens += segs[i].n_tokens;
        n_rows += segs[i].all_logits ? segs[i].n_tokens : segs[i].want_logits ? 1 : 0;
    }
    struct pl_slot *slot = &p->slots[(p->slot_head + p->n_in_flight) % p->n_slots];
    pthread_mutex_lock(&p->mu);
    *slot = (struct pl_slot){.step = ++p->next_step, .sent_at = t0, .n_rows = n_rows,
                             .greedy = greedy_ids, .rows = slot->rows};
    p->n_in_flight++;
    p->kv_used = lp_engine_kv_blocks_used(p->front);
    pthread_mutex_unlock(&p->mu);
    *step = slot->step;
    if (p->n_workers == 0) { // one process: the rows needing logits, now
        size_t H = (size_t)p->cfg.hidden_size;
        int row = 0, k = 0;
        for (int i = 0; i < n_segs; i++) {
            const struct lp_pipeline_seg *g = &segs[i];
            int first = g->all_logits ? 0 : g->want_logits ? g->n_tokens - 1 : g->n_tokens;
            for (int t = first; t < g->n_tokens; t++)
                memcpy(slot->rows + (size_t)k++ * H, p->rows + (size_t)(row + t) * H,
                       H * sizeof(float));
            row += g->n_tokens;
        }
        pthread_mutex_lock(&p->mu);
        slot->done = true;
        pthread_mutex_unlock(&p->mu);
    } else {
        pl_send(p, slot, segs, n_segs, n_tokens);
    }
    pthread_mutex_lock(&p->mu);
    p->tokens += (uint64_t)n_tokens;
    p->steps++;
    p->busy_s += lp_now_seconds() - t0;
    pthread_mutex_unlock(&p->mu);
    return LP_OK;
}

// Waits for the oldest slot's result or its deadline. Under mu.
static void pl_wait(struct lp_pipeline *p, struct pl_slot *s) {
    double deadline = s->sent_at + p->params.timeout_ms / 1e3;
    while (!s->done || s->filling) {
        double left = deadline - lp_now_seconds();
        if (left <= 0 && !s->filling) {
            char m[LP_ERROR_MSG_BYTES];
            snprintf(m, sizeof m,
                     "no result from the pipeline within %d ms (step %llu): a stage is stalled "
                     "or dead",
                     p->params.timeout_ms, (unsigned long long)s->step);
            pl_slot_fail(p, s, LP_ERR_TIMEOUT, m);
            break;
        }
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        double ms = left > 0.05 ? 50 : (left > 0 ? left * 1e3 : 1);
        int64_t ns = (int64_t)ts.tv_nsec + (int64_t)(ms * 1e6);
        ts.tv_sec += (time_t)(ns / 1000000000);
        ts.tv_nsec = (long)(ns % 1000000000);
        pthread_cond_timedwait(&p->cv, &p->mu, &ts);
    }
}

enum lp_status lp_pipeline_collect(struct lp_pipeline *p, struct lp_pipeline_result *r,
                                   struct lp_error *err) {
    if (p->n_in_flight == 0)
        return lp_error_set(err, LP_ERR_INVALID_ARG, "pipeline: collect with nothing in flight");
    struct pl_slot *s = &p->slots[p->slot_head];
    pthread_mutex_lock(&p->mu);
    pl_wait(p, s);
    pthread_mutex_unlock(&p->mu);
    *r = (struct lp_pipeline_result){.step = s->step, .status = s->status};
    if (s->greedy) {
        r->greedy_ids = p->greedy_ids;
        r->greedy_bad = p->greedy_bad;
    } else {
        r->logits = p->logits;
    }
    if (s->status == LP_OK && s->n_rows > 0) {
        double t0 = lp_now_seconds();
        struct lp_engine_seg seg = {.seq = p->head_seq, .pos0 = 0, .n_tokens = s->n_rows,
                                    .all_logits = true};
        struct lp_engine_batch b = {.n_segs = 1, .segs = &seg, .hidden_in = s->rows,
                                    .logits = r->logits};
        if (s->greedy) { // only the ids come back from the head's device
            b.greedy_ids = p->greedy_ids;
            b.greedy_bad = p->greedy_bad;
        }
        struct lp_error e = {0};
        if ((r->status = lp_engine_forward(p->head, &b, &e)) != LP_OK) {
            lp_error_prefix(&e, "the head: ");
            memcpy(s->error, e.msg, sizeof s->error);
        }
        pthread_mutex_lock(&p->mu);
        p->busy_s += lp_now_seconds() - t0;
        pthread_mutex_unlock(&p->mu);
    }
    r->n_rows = r->status == LP_OK ? s->n_rows : 0;
    r->stage_down = p->n_workers > 0 && (r->status == LP_ERR_NETWORK || r->status == LP_ERR_TIMEOUT);
    if (r->status != LP_OK) snprintf(r->error, sizeof r->error, "%s", s->error);
    pthread_mutex_lock(&p->mu);
    s->step = 0;
    p->slot_head = (p->slot_head + 1) % p->n_slots;
    p->n_in_flight--;
    pthread_mutex_unlock(&p->mu);
    return LP_OK;
}

int lp_pipeline_in_flight(const struct lp_pipeline *p) { return p->n_in_flight; }

void lp_pipeline_release(struct lp_pipeline *p, uint64_t session) {
    int k = pl_find_session(p, session);
    if (k >= 0) {
        lp_engine_seq_close(p->front, p->sessions[k].seq);
        p->sessions[k].id = 0;
        pthread_mutex_lock(&p->mu);
        p->kv_used = lp_engine_kv_blocks_used(p->front);
        pthread_mutex_unlock(&p->mu);
    }
    Layerpipe__V1__ReleaseRequest r = LAYERPIPE__V1__RELEASE_REQUEST__INIT;
    r.n_sessions = 1;
    r.sessions = &session;
    for (int i = 0; i < p->n_workers; i++) {
        if (!p->stages[i].ch) continue;
        uint8_t *resp = NULL;
        size_t n = 0;
        lp_pl_unary(p, i, LP_M_RELEASE, &r.base, &resp, &n, 2000, NULL);
        free(resp);
    }
}

// ---- accessors and stats ----

const struct lp_plan *lp_pipeline_plan(const struct lp_pipeline *p) { return &p->plan; }
const struct lp_model_config *lp_pipeline_config(const struct lp_pipeline *p) { return &p->cfg; }
int lp_pipeline_max_context(const struct lp_pipeline *p) { return lp_engine_max_context(p->front); }
int lp_pipeline_max_batch_tokens(const struct lp_pipeline *p) { return p->max_rows; }
int lp_pipeline_max_sessions(const struct lp_pipeline *p) { return p->max_sessions; }
size_t lp_pipeline_weight_bytes(const struct lp_pipeline *p) { return p->weight_bytes; }
int lp_pipeline_kv_blocks(const struct lp_pipeline *p) { return p->kv_blocks; }
int lp_pipeline_kv_block_size(const struct lp_pipeline *p) { return p->kv_block_size; }

static void pl_worker_stats(struct lp_pipeline *p, int i, struct lp_stage_stats *s) {
    memset(s, 0, sizeof *s);
    snprintf(s->role, sizeof s->role, "worker");
    snprintf(s->address, sizeof s->address, "%.63s", p->stages[i].addr);
    snprintf(s->device, sizeof s->device, "%s", p->stages[i].device);
    s->layer_begin = p->stages[i].layer_begin;
    s->layer_end = p->stages[i].layer_end;
    s->kv_blocks_total = p->stages[i].kv_blocks;
    Layerpipe__V1__StatsRequest req = LAYERPIPE__V1__STATS_REQUEST__INIT;
    uint8_t *resp = NULL;
    size_t nr = 0;
    if (lp_pl_unary(p, i, LP_M_STATS, &req.base, &resp, &nr, 2000, NULL) != LP_OK) return;
    Layerpipe__V1__StatsReply *r = layerpipe__v1__stats_reply__unpack(NULL, nr, resp);
    free(resp);
    if (!r) return;
    s->busy_seconds = r->busy_seconds;
    s->idle_seconds = r->idle_seconds;
    s->tokens = r->tokens;
    s->steps = r->steps;
    s->bytes_in = r->bytes_in;
    s->bytes_out = r->bytes_out;
    s->hop_p50_ms = r->hop_p50_ms;
    s->hop_p99_ms = r->hop_p99_ms;
    s->sessions = (int)r->sessions;
    s->kv_blocks_used = (int)r->kv_blocks_used;
    s->kv_blocks_total = (int)r->kv_blocks_total;
    s->ok = true;
    layerpipe__v1__stats_reply__free_unpacked(r, NULL);
}

int lp_pipeline_stats(struct lp_pipeline *p, struct lp_stage_stats *stats, int max) {
    int n = 0;
    if (max <= 0) return 0;
    struct lp_stage_stats *c = &stats[n++];
    memset(c, 0, sizeof *c);
    snprintf(c->role, sizeof c->role, "coordinator");
    snprintf(c->address, sizeof c->address, "%.63s", p->n_workers ? p->sink_addr : "local");
    snprintf(c->device, sizeof c->device, "%s", p->device_name);
    c->layer_begin = 0;
    c->layer_end = p->plan.layers[0];
    pthread_mutex_lock(&p->mu);
    c->busy_seconds = p->busy_s;
    c->idle_seconds = lp_now_seconds() - p->created_at - p->busy_s;
    c->tokens = p->tokens;
    c->steps = p->steps;
    c->bytes_out = p->bytes_out;
    c->bytes_in = p->bytes_in;
    c->hop_p50_ms = lp_latency_quantile(&p->hop, 0.5);
    c->hop_p99_ms = lp_latency_quantile(&p->hop, 0.99);
    c->kv_blocks_used = p->kv_used;
    pthread_mutex_unlock(&p->mu);
    c->kv_blocks_total = lp_engine_kv_blocks_total(p->front);
    for (int i = 0; i < p->max_sessions; i++) c->sessions += p->sessions[i].id != 0;
    c->ok = true;
    for (int i = 0; i < p->n_workers && n < max; i++) pl_worker_stats(p, i, &stats[n++]);
    return n;
}
