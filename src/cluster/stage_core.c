// SPDX-License-Identifier: MIT
// stage_core.c -- a stage's state machine without its transport (see
// stage_core.h): Configure's checks and loading, the sessions, a step's
// checks and compute, Release. Every value from the network is checked
// here before it is used, and a refused message changes nothing.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster/stage_core.h"
#include "layerpipe/cluster.h"

enum lp_status lp_stage_core_init(struct lp_stage_core *c, const char *model_dir,
                                  const char *listen, struct lp_backend *backend,
                                  int idle_timeout_s, struct lp_error *err) {
    memset(c, 0, sizeof *c);
    c->model_dir = model_dir;
    c->listen = listen;
    c->backend = backend;
    c->idle_timeout_s = idle_timeout_s;
    struct lp_model *headers = NULL;
    struct lp_model_load_params none = {0, 0, false, false};
    enum lp_status st = lp_model_open(&headers, model_dir, &none, err);
    if (st != LP_OK) return st;
    c->fingerprint = lp_model_fingerprint(headers);
    c->cfg = *lp_model_config(headers);
    c->weight_bytes = lp_model_weight_bytes(headers);
    c->n_layers = c->cfg.n_layers;
    c->hidden = c->cfg.hidden_size;
    // unmap: the fingerprint's samples (and read-around) must not stay
    // resident in a worker that serves only some layers
    lp_model_close(headers);
    return LP_OK;
}

void lp_stage_core_deinit(struct lp_stage_core *c) { lp_stage_core_unload(c); }

// What a Configure asks for, against the memory free now, before anything
// is allocated: the KV pool (as the engine sizes it), the step buffers and
// queue arenas, and the layers' weights.
static enum lp_status core_check_memory(const struct lp_stage_core *c,
                                        const Layerpipe__V1__ConfigureRequest *r,
                                        struct lp_error *err) {
    const struct lp_model_config *m = &c->cfg;
    double layers = (double)(r->layer_end - r->layer_begin);
    double kv_elem = r->kv_dtype == LAYERPIPE__V1__DTYPE__DTYPE_BF16 ? 2.0 : 4.0;
    double per_block = 32.0 * m->n_kv_heads * m->head_dim * 2.0 * kv_elem * layers;
    double blocks = r->kv_blocks ? (double)r->kv_blocks
                                 : (double)r->max_sessions * ((r->max_context + 31) / 32 + 1);
    double kv = blocks * per_block;
    if (!r->kv_blocks && kv > (double)((size_t)2 << 30)) kv = (double)((size_t)2 << 30); // engine cap
    double rows = (double)r->max_batch_tokens;
    double act = rows * 4.0 * (m->hidden_size * (8.0 + LP_STAGE_QUEUE) + 2.0 * m->intermediate_size +
                               (m->n_heads + 2.0 * m->n_kv_heads) * m->head_dim);
    double weights = (double)c->weight_bytes * layers / m->n_layers;
    struct lp_device_info info = {0};
    lp_backend_device_info(c->backend, &info, NULL);
    uint64_t free_bytes = info.free_bytes;
    if (c->mem_cap && (free_bytes == 0 || free_bytes > c->mem_cap)) free_bytes = c->mem_cap;
    double need = kv + act + weights;
    if (free_bytes > 0 && need > (double)free_bytes)
        return lp_error_set(err, LP_ERR_NOMEM,
                            "stage %s: this Configure needs %.2f GB (KV %.2f GB, buffers %.2f GB, "
                            "weights %.2f GB), %.2f GB are free: fewer sessions, a shorter "
                            "context or fewer layers",
                            c->listen, need / 1e9, kv / 1e9, act / 1e9, weights / 1e9,
                            (double)free_bytes / 1e9);
    return LP_OK;
}

enum lp_status lp_stage_core_check(const struct lp_stage_core *c,
                                   const Layerpipe__V1__ConfigureRequest *r, struct lp_error *err) {
    enum lp_status st = lp_wire_check_configure(r, c->fingerprint, c->n_layers, LP_STAGE_ADDR_BYTES,
                                                c->listen, c->model_dir, err);
    if (st != LP_OK) return st;
    return core_check_memory(c, r, err);
}

void lp_stage_core_unload(struct lp_stage_core *c) {
    lp_engine_destroy(c->engine);
    lp_model_close(c->model);
    free(c->sessions);
    free(c->rows_in);
    free(c->rows_out);
    free(c->segs);
    free(c->opened_now);
    free(c->hashes);
    c->engine = NULL;
    c->model = NULL;
    c->sessions = NULL;
    c->rows_in = c->rows_out = NULL;
    c->segs = NULL;
    c->opened_now = NULL;
    c->hashes = NULL;
    c->n_hashes = 0;
    c->configured = false;
    c->max_rows = c->max_sessions = 0;
}

enum lp_status lp_stage_core_load(struct lp_stage_core *c, const Layerpipe__V1__ConfigureRequest *r,
                                  struct lp_error *err) {
    lp_stage_core_unload(c);
    struct lp_model_load_params lp = {.layer_begin = (int)r->layer_begin,
                                      .layer_end = (int)r->layer_end,
                                      .load_embed = false,
                                      .load_head = false};
    enum lp_status st = lp_model_open(&c->model, c->model_dir, &lp, err);
    if (st != LP_OK) return st;
    // every byte of the layers served, for the coordinator to compare
    st = lp_model_tensor_hashes(c->model, lp.layer_begin, lp.layer_end, &c->hashes, &c->n_hashes,
                                NULL, err);
    if (st != LP_OK) goto fail;
    struct lp_engine_params ep = lp_engine_params_default();
    ep.max_batch_tokens = (int)r->max_batch_tokens;
    ep.max_seqs = (int)r->max_sessions;
    ep.max_logit_rows = 1;
    ep.max_context = (int)r->max_context;
    ep.n_kv_blocks = (int)r->kv_blocks;
    ep.kv_dtype = r->kv_dtype == LAYERPIPE__V1__DTYPE__DTYPE_BF16 ? LP_DTYPE_BF16 : LP_DTYPE_F32;
    if ((st = lp_engine_create(&c->engine, c->model, c->backend, &ep, err)) != LP_OK) goto fail;
    c->max_rows = (int)r->max_batch_tokens;
    c->max_sessions = (int)r->max_sessions;
    size_t row_bytes = (size_t)c->max_rows * (size_t)c->hidden * sizeof(float);
    c->sessions = malloc((size_t)c->max_sessions * sizeof *c->sessions);
    c->segs = malloc((size_t)c->max_sessions * sizeof *c->segs);
    c->opened_now = malloc((size_t)c->max_sessions * sizeof *c->opened_now);
    c->rows_in = malloc(row_bytes);
    c->rows_out = malloc(row_bytes);
    if (!c->sessions || !c->segs || !c->opened_now || !c->rows_in || !c->rows_out) {
        st = lp_error_set(err, LP_ERR_NOMEM, "stage %s: out of memory", c->listen);
        goto fail;
    }
    for (int i = 0; i < c->max_sessions; i++) c->sessions[i].seq = -1;
    c->stage_index = (int)r->stage_index;
    c->layer_begin = (int)r->layer_begin;
    c->layer_end = (int)r->layer_end;
    c->configured = true;
    return LP_OK;
fail:
    lp_stage_core_unload(c);
    return st;
}

enum lp_status lp_stage_core_unpack_step(const struct lp_stage_core *c, struct lp_pb_arena *arena,
                                         uint64_t *last_step, const uint8_t *bytes, size_t n,
                                         Layerpipe__V1__Activations **out, struct lp_error *err) {
    Layerpipe__V1__Activations *a = lp_pb_arena_unpack_activations(arena, bytes, n);
    *out = a;
    if (!a)
        return lp_error_set(err, LP_ERR_PROTOCOL,
                            "stage %d: Forward: a %zu-byte message that is not Activations of "
                            "at most %d rows",
                            c->stage_index, n, c->max_rows);
    if (a->step <= *last_step) // steps increase per stream: a replay or a confused sender
        return lp_error_set(err, LP_ERR_PROTOCOL, "stage %d (%s): step %llu after step %llu on "
                                                  "this stream",
                            c->stage_index, c->listen, (unsigned long long)a->step,
                            (unsigned long long)*last_step);
    *last_step = a->step;
    return LP_OK;
}

// The session slot of an id, or -1.
static int core_find(const struct lp_stage_core *c, uint64_t id) {
    for (int i = 0; i < c->max_sessions; i++)
        if (c->sessions[i].seq >= 0 && c->sessions[i].id == id) return i;
    return -1;
}

// Frees the slot holding engine sequence seq.
static void core_close_seq(struct lp_stage_core *c, int seq) {
    for (int i = 0; i < c->max_sessions; i++)
        if (c->sessions[i].seq == seq) {
            lp_engine_seq_close(c->engine, seq);
            c->sessions[i].seq = -1;
        }
}

// Checks positions and room for every segment of a message, changing nothing.
static enum lp_status core_check_segments(const struct lp_stage_core *c,
                                          const Layerpipe__V1__Activations *a,
                                          struct lp_error *err) {
    int n_new = 0, n_free = 0;
    for (int i = 0; i < c->max_sessions; i++) n_free += c->sessions[i].seq < 0;
    for (size_t i = 0; i < a->n_segments; i++) {
        const Layerpipe__V1__Segment *g = a->segments[i];
        for (size_t j = 0; j < i; j++)
            if (a->segments[j]->session == g->session)
                return lp_error_set(err, LP_ERR_INVALID_ARG,
                                    "stage %d: session %llu appears twice in step %llu",
                                    c->stage_index, (unsigned long long)g->session,
                                    (unsigned long long)a->step);
        int slot = core_find(c, g->session);
        if (slot < 0) {
            if (g->pos0 != 0)
                return lp_error_set(err, LP_ERR_INVALID_ARG,
                                    "stage %d: unknown session %llu at position %u (a new "
                                    "session starts at 0; released or timed out?)",
                                    c->stage_index, (unsigned long long)g->session, g->pos0);
            n_new++;
            continue;
        }
        int len = lp_engine_seq_len(c->engine, c->sessions[slot].seq);
        if (g->pos0 > (uint32_t)len)
            return lp_error_set(err, LP_ERR_INVALID_ARG,
                                "stage %d: session %llu: position %u leaves a gap after its %d "
                                "cached positions",
                                c->stage_index, (unsigned long long)g->session, g->pos0, len);
    }
    if (n_new > n_free)
        return lp_error_set(err, LP_ERR_BUSY, "stage %d: all %d sessions are in use",
                            c->stage_index, c->max_sessions);
    return LP_OK;
}

// Finds the session's engine sequence, opening one for a new id at pos0 0
// (*opened tells which).
static enum lp_status core_session(struct lp_stage_core *c, const Layerpipe__V1__Segment *seg,
                                   int *seq, bool *opened, struct lp_error *err) {
    double now = lp_now_seconds();
    int free_slot = -1;
    for (int i = 0; i < c->max_sessions; i++) {
        struct lp_stage_session *s = &c->sessions[i];
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
                            c->stage_index, (unsigned long long)seg->session, seg->pos0);
    if (free_slot < 0)
        return lp_error_set(err, LP_ERR_BUSY, "stage %d: all %d sessions are in use",
                            c->stage_index, c->max_sessions);
    enum lp_status st = lp_engine_seq_open(c->engine, seq, err);
    if (st != LP_OK) return st;
    c->sessions[free_slot] = (struct lp_stage_session){seg->session, *seq, now};
    *opened = true;
    return LP_OK;
}

// Frees sessions idle past the timeout.
static void core_expire(struct lp_stage_core *c, double now) {
    for (int i = 0; i < c->max_sessions; i++) {
        struct lp_stage_session *x = &c->sessions[i];
        if (x->seq >= 0 && c->idle_timeout_s > 0 && now - x->last_used > c->idle_timeout_s) {
            lp_engine_seq_close(c->engine, x->seq);
            x->seq = -1;
        }
    }
}

enum lp_status lp_stage_core_compute(struct lp_stage_core *c, const Layerpipe__V1__Activations *a,
                                     struct lp_error *err) {
    if (!c->configured)
        return lp_error_set(err, LP_ERR_NETWORK,
                            "stage %s: Forward while not configured (a Configure failed or is in "
                            "progress)",
                            c->listen);
    enum lp_status st = lp_wire_decode_rows(a, c->hidden, c->max_rows, c->max_sessions, true,
                                            c->rows_in, err);
    if (st != LP_OK) return st;
    core_expire(c, lp_now_seconds());
    if ((st = core_check_segments(c, a, err)) != LP_OK) return st;
    int n_opened = 0;
    for (size_t i = 0; i < a->n_segments; i++) {
        const Layerpipe__V1__Segment *g = a->segments[i];
        int seq;
        bool opened = false;
        if ((st = core_session(c, g, &seq, &opened, err)) != LP_OK) break;
        if (opened) c->opened_now[n_opened++] = seq;
        c->segs[i] = (struct lp_engine_seg){.seq = seq, .pos0 = (int)g->pos0,
                                            .n_tokens = (int)g->n_tokens};
    }
    struct lp_engine_batch b = {.n_segs = (int)a->n_segments, .segs = c->segs,
                                .hidden_in = c->rows_in, .hidden_out = c->rows_out};
    if (st == LP_OK) st = lp_engine_forward(c->engine, &b, err);
    if (st != LP_OK)
        for (int k = 0; k < n_opened; k++) core_close_seq(c, c->opened_now[k]);
    return st;
}

enum lp_status lp_stage_core_release(struct lp_stage_core *c, const uint8_t *bytes, size_t n,
                                     uint32_t *released, struct lp_error *err) {
    *released = 0;
    if (n > 64 * 1024) // 4096 ids take under 40 KB: refuse before unpacking
        return lp_error_set(err, LP_ERR_INVALID_ARG, "stage %s: a %zu-byte Release request",
                            c->listen, n);
    Layerpipe__V1__ReleaseRequest *r = layerpipe__v1__release_request__unpack(NULL, n, bytes);
    if (!r) return lp_error_set(err, LP_ERR_PROTOCOL, "Release: malformed request");
    enum lp_status st = LP_OK;
    if (r->n_sessions > 4096)
        st = lp_error_set(err, LP_ERR_INVALID_ARG,
                          "stage %s: Release of %zu sessions, at most 4096 a call", c->listen,
                          r->n_sessions);
    for (size_t i = 0; st == LP_OK && c->sessions && i < r->n_sessions; i++) {
        int slot = core_find(c, r->sessions[i]);
        if (slot < 0) continue;
        lp_engine_seq_close(c->engine, c->sessions[slot].seq);
        c->sessions[slot].seq = -1;
        (*released)++;
    }
    layerpipe__v1__release_request__free_unpacked(r, NULL);
    return st;
}

int lp_stage_core_session_len(const struct lp_stage_core *c, uint64_t id) {
    if (!c->configured) return -1;
    int slot = core_find(c, id);
    return slot < 0 ? -1 : lp_engine_seq_len(c->engine, c->sessions[slot].seq);
}

void lp_stage_core_usage(const struct lp_stage_core *c, int *n_open, int *kv_used) {
    *n_open = 0;
    for (int i = 0; i < c->max_sessions; i++) *n_open += c->sessions[i].seq >= 0;
    *kv_used = c->engine ? lp_engine_kv_blocks_used(c->engine) : 0;
}
