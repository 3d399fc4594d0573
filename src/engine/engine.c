// SPDX-License-Identifier: MIT
// engine.c -- the Qwen3 forward pass (HF modeling_qwen3.Qwen3ForCausalLM)
// over a contiguous layer range, driving a backend through its function
// table. Per layer, for the n tokens of a batch (x: [n, hidden]):
//   h = rmsnorm(x) ; q,k,v = h Wq^T, h Wk^T, h Wv^T
//   q,k = rmsnorm per head (q_norm, k_norm) ; rope(q, k) at each position
//   K,V cache <- k, v ; a = softmax(q K^T / sqrt(d)) V (causal, GQA)
//   x += a Wo^T ; h = rmsnorm(x) ; x += (silu(h Wg^T) * (h Wu^T)) Wd^T
// then the final norm and the LM head for the rows that need logits (and,
// when only their greedy ids are wanted, the argmax of each row).
// All scratch and the KV pool are allocated in lp_engine_create.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend_i.h"
#include "engine/internal.h"
#include "layerpipe/engine.h"
#include "util/argmax.h"

struct lp_engine_layer {
    struct lp_buf *attn_norm, *ffn_norm, *q_norm, *k_norm; // float32 vectors
    struct lp_bweight *wq, *wk, *wv, *wo, *w_gate, *w_up, *w_down;
    struct lp_buf *k_cache, *v_cache; // [n_blocks, block_size, n_kv_heads, head_dim]
};

struct lp_engine {
    const struct lp_model *model;      // borrowed
    struct lp_backend *backend;        // borrowed
    struct lp_backend_i be;            // copy of backend->iface
    void *bctx;                        // backend->ctx
    struct lp_model_config cfg;
    struct lp_engine_params params;
    int layer_begin, layer_end;
    bool has_embed, has_head;
    struct lp_engine_layer *layers;    // [layer_end - layer_begin]
    struct lp_bweight *embedding;      // NULL without the embedding
    struct lp_bweight *head;           // NULL without the head
    struct lp_buf *final_norm;
    struct lp_kv_geom kv_geom;
    struct lp_kv_table kv;
    size_t weight_bytes;
    // activations, sized for max_batch_tokens rows
    struct lp_buf *x;      // [T, hidden] residual stream
    struct lp_buf *xn;     // [T, hidden] normed
    struct lp_buf *q;      // [T, n_heads * head_dim]
    struct lp_buf *k;      // [T, n_kv_heads * head_dim]
    struct lp_buf *v;      // [T, n_kv_heads * head_dim]
    struct lp_buf *att;    // [T, n_heads * head_dim]
    struct lp_buf *o;      // [T, hidden]
    struct lp_buf *gate;   // [T, intermediate]
    struct lp_buf *up;     // [T, intermediate]
    struct lp_buf *xg;     // [R, hidden] rows gathered for the head
    struct lp_buf *logits; // [R, vocab]
    struct lp_buf *ids;    // [2, R] int32 greedy ids, then first non-finite indices
                           // (argmax_rows); NULL when the backend has no argmax_rows
    // host scratch
    int32_t *h_ids;        // [T]
    int32_t *h_pos;        // [T]
    int32_t *h_slot;       // [T]
    int32_t *h_rows;       // [R] rows needing logits
    struct lp_attn_seg *h_segs; // [max_seqs]
    int32_t *h_greedy;     // [2, R] ids read back (argmax_rows' layout)
    float *h_row;          // [vocab] one logits row, when the backend has no argmax_rows
};

struct lp_engine_params lp_engine_params_default(void) {
    struct lp_engine_params p = {
        .max_batch_tokens = 256,
        .max_logit_rows = 0,
        .max_seqs = 16,
        .kv_block_size = 32,
        .n_kv_blocks = 0,
        .kv_max_bytes = (size_t)2 << 30,
        .kv_dtype = LP_DTYPE_F32,
        .max_context = 0,
        .layer_begin = -1,
        .layer_end = -1,
        .no_embed = false,
        .no_head = false,
    };
    return p;
}

static enum lp_status engine_buf(struct lp_engine *e, struct lp_buf **out, size_t bytes,
                                 struct lp_error *err) {
    return e->be.buf_alloc(e->bctx, bytes ? bytes : 1, out, err);
}

static enum lp_status engine_vec(struct lp_engine *e, struct lp_buf **out, const float *v, int n,
                                 struct lp_error *err) {
    enum lp_status st = engine_buf(e, out, (size_t)n * sizeof(float), err);
    if (st != LP_OK) return st;
    return e->be.buf_write(e->bctx, *out, 0, v, (size_t)n * sizeof(float), err);
}

static enum lp_status engine_weight(struct lp_engine *e, struct lp_bweight **out,
                                    const struct lp_weight *w, struct lp_error *err) {
    e->weight_bytes += lp_weight_bytes(w);
    return e->be.weight_upload(e->bctx, w, out, err);
}

static enum lp_status engine_load_layer(struct lp_engine *e, int il, struct lp_error *err) {
    const struct lp_layer_weights *w = lp_model_layer(e->model, il);
    struct lp_engine_layer *L = &e->layers[il - e->layer_begin];
    const struct lp_model_config *c = &e->cfg;
    enum lp_status st;
    if ((st = engine_vec(e, &L->attn_norm, w->attn_norm, c->hidden_size, err)) != LP_OK ||
        (st = engine_vec(e, &L->ffn_norm, w->ffn_norm, c->hidden_size, err)) != LP_OK ||
        (st = engine_vec(e, &L->q_norm, w->q_norm, c->head_dim, err)) != LP_OK ||
        (st = engine_vec(e, &L->k_norm, w->k_norm, c->head_dim, err)) != LP_OK ||
        (st = engine_weight(e, &L->wq, &w->wq, err)) != LP_OK ||
        (st = engine_weight(e, &L->wk, &w->wk, err)) != LP_OK ||
        (st = engine_weight(e, &L->wv, &w->wv, err)) != LP_OK ||
        (st = engine_weight(e, &L->wo, &w->wo, err)) != LP_OK ||
        (st = engine_weight(e, &L->w_gate, &w->w_gate, err)) != LP_OK ||
        (st = engine_weight(e, &L->w_up, &w->w_up, err)) != LP_OK ||
        (st = engine_weight(e, &L->w_down, &w->w_down, err)) != LP_OK)
        return st;
    size_t kv_bytes = (size_t)e->kv_geom.n_blocks * (size_t)e->kv_geom.block_size *
                      (size_t)c->n_kv_heads * (size_t)c->head_dim *
                      lp_dtype_size(e->kv_geom.dtype);
    if ((st = engine_buf(e, &L->k_cache, kv_bytes, err)) != LP_OK ||
        (st = engine_buf(e, &L->v_cache, kv_bytes, err)) != LP_OK)
        return lp_error_prefix(err, "layer %d KV cache (%zu bytes): ", il, kv_bytes);
    return LP_OK;
}

// Picks the pool size: enough for max_seqs full contexts, capped by bytes.
static int engine_auto_blocks(const struct lp_engine *e) {
    const struct lp_model_config *c = &e->cfg;
    int n_layers = e->layer_end - e->layer_begin;
    size_t per_block = 2 * (size_t)e->params.kv_block_size * (size_t)c->n_kv_heads *
                       (size_t)c->head_dim * lp_dtype_size(e->params.kv_dtype) *
                       (size_t)(n_layers > 0 ? n_layers : 1);
    int64_t want = (int64_t)e->params.max_seqs *
                   ((e->params.max_context + e->params.kv_block_size - 1) /
                    e->params.kv_block_size);
    int64_t cap = (int64_t)(e->params.kv_max_bytes / per_block);
    if (cap < 1) cap = 1;
    int64_t n = want < cap ? want : cap;
    return n > INT32_MAX / 2 ? INT32_MAX / 2 : (int)n;
}

enum lp_status lp_engine_create(struct lp_engine **out, const struct lp_model *model,
                                struct lp_backend *backend, const struct lp_engine_params *params,
                                struct lp_error *err) {
    *out = NULL;
    struct lp_engine *e = calloc(1, sizeof *e);
    if (!e) return lp_error_set(err, LP_ERR_NOMEM, "engine: out of memory");
    enum lp_status st;
    e->model = model;
    e->backend = backend;
    e->be = backend->iface;
    e->bctx = backend->ctx;
    e->cfg = *lp_model_config(model);
    e->params = params ? *params : lp_engine_params_default();
    const struct lp_model_load_params *ld = lp_model_loaded(model);
    struct lp_engine_params *p = &e->params;
    e->layer_begin = p->layer_begin < 0 ? ld->layer_begin : p->layer_begin;
    e->layer_end = p->layer_end < 0 ? ld->layer_end : p->layer_end;
    e->has_embed = lp_model_embedding(model) != NULL && !p->no_embed;
    e->has_head = lp_model_head(model) != NULL && !p->no_head;
    if (e->layer_begin < ld->layer_begin || e->layer_end > ld->layer_end ||
        e->layer_begin > e->layer_end) {
        st = lp_error_set(err, LP_ERR_INVALID_ARG,
                          "engine: layers [%d, %d) are not within the loaded [%d, %d)",
                          e->layer_begin, e->layer_end, ld->layer_begin, ld->layer_end);
        goto fail;
    }
    const struct lp_model_config *c = &e->cfg;
    if (p->max_context <= 0 || p->max_context > c->max_position_embeddings)
        p->max_context = c->max_position_embeddings;
    if (p->max_logit_rows <= 0) p->max_logit_rows = p->max_seqs;
    if (p->max_batch_tokens <= 0 || p->max_seqs <= 0 || p->kv_block_size <= 0 ||
        p->max_batch_tokens > (1 << 20) || p->max_logit_rows > p->max_batch_tokens ||
        (p->kv_dtype != LP_DTYPE_F32 && p->kv_dtype != LP_DTYPE_BF16)) {
        st = lp_error_set(err, LP_ERR_INVALID_ARG,
                          "engine: bad parameters (batch tokens %d, logit rows %d, seqs %d, "
                          "block size %d, kv dtype %s)",
                          p->max_batch_tokens, p->max_logit_rows, p->max_seqs, p->kv_block_size,
                          lp_dtype_name(p->kv_dtype));
        goto fail;
    }
    if (p->n_kv_blocks <= 0) p->n_kv_blocks = engine_auto_blocks(e);
    e->kv_geom = (struct lp_kv_geom){.n_blocks = p->n_kv_blocks,
                                     .block_size = p->kv_block_size,
                                     .n_kv_heads = c->n_kv_heads,
                                     .head_dim = c->head_dim,
                                     .dtype = p->kv_dtype};
    st = lp_kv_table_init(&e->kv, p->n_kv_blocks, p->kv_block_size, p->max_context, p->max_seqs,
                          err);
    if (st != LP_OK) goto fail;
    int n_layers = e->layer_end - e->layer_begin;
    e->layers = calloc((size_t)(n_layers > 0 ? n_layers : 1), sizeof *e->layers);
    if (!e->layers) {
        st = lp_error_set(err, LP_ERR_NOMEM, "engine: out of memory");
        goto fail;
    }
    for (int il = e->layer_begin; il < e->layer_end; il++)
        if ((st = engine_load_layer(e, il, err)) != LP_OK) goto fail;
    if (e->has_embed &&
        (st = engine_weight(e, &e->embedding, lp_model_embedding(model), err)) != LP_OK)
        goto fail;
    if (e->has_head) {
        const struct lp_weight *hw = lp_model_head(model);
        if (e->has_embed && hw->data == lp_model_embedding(model)->data) {
            e->head = NULL; // tied: reuse the embedding's upload
        } else if ((st = engine_weight(e, &e->head, hw, err)) != LP_OK) {
            goto fail;
        }
        st = engine_vec(e, &e->final_norm, lp_model_final_norm(model), c->hidden_size, err);
        if (st != LP_OK) goto fail;
    }
    size_t T = (size_t)p->max_batch_tokens, R = (size_t)p->max_logit_rows, f = sizeof(float);
    size_t d = (size_t)c->hidden_size, qd = (size_t)c->n_heads * (size_t)c->head_dim,
           kvd = (size_t)c->n_kv_heads * (size_t)c->head_dim, ff = (size_t)c->intermediate_size;
    if ((st = engine_buf(e, &e->x, T * d * f, err)) != LP_OK ||
        (st = engine_buf(e, &e->xn, T * d * f, err)) != LP_OK ||
        (st = engine_buf(e, &e->q, T * qd * f, err)) != LP_OK ||
        (st = engine_buf(e, &e->k, T * kvd * f, err)) != LP_OK ||
        (st = engine_buf(e, &e->v, T * kvd * f, err)) != LP_OK ||
        (st = engine_buf(e, &e->att, T * qd * f, err)) != LP_OK ||
        (st = engine_buf(e, &e->o, T * d * f, err)) != LP_OK ||
        (st = engine_buf(e, &e->gate, T * ff * f, err)) != LP_OK ||
        (st = engine_buf(e, &e->up, T * ff * f, err)) != LP_OK)
        goto fail;
    if (e->has_head && ((st = engine_buf(e, &e->xg, R * d * f, err)) != LP_OK ||
                        (st = engine_buf(e, &e->logits, R * (size_t)c->vocab_size * f, err)) !=
                            LP_OK))
        goto fail;
    e->h_ids = malloc(T * sizeof(int32_t));
    e->h_pos = malloc(T * sizeof(int32_t));
    e->h_slot = malloc(T * sizeof(int32_t));
    e->h_rows = malloc(R * sizeof(int32_t));
    e->h_segs = malloc((size_t)p->max_seqs * sizeof *e->h_segs);
    e->h_greedy = malloc(2 * R * sizeof(int32_t));
    if (e->has_head && !e->be.argmax_rows)
        e->h_row = malloc((size_t)c->vocab_size * f);
    else if (e->has_head && (st = engine_buf(e, &e->ids, 2 * R * sizeof(int32_t), err)) != LP_OK)
        goto fail;
    if (!e->h_ids || !e->h_pos || !e->h_slot || !e->h_rows || !e->h_segs || !e->h_greedy ||
        (e->has_head && !e->ids && !e->h_row)) {
        st = lp_error_set(err, LP_ERR_NOMEM, "engine: out of memory");
        goto fail;
    }
    *out = e;
    return LP_OK;
fail:
    lp_engine_destroy(e);
    return st;
}

void lp_engine_destroy(struct lp_engine *e) {
    if (!e) return;
    void *b = e->bctx;
    if (e->layers) {
        for (int i = 0; i < e->layer_end - e->layer_begin; i++) {
            struct lp_engine_layer *L = &e->layers[i];
            e->be.buf_free(b, L->attn_norm);
            e->be.buf_free(b, L->ffn_norm);
            e->be.buf_free(b, L->q_norm);
            e->be.buf_free(b, L->k_norm);
            e->be.weight_free(b, L->wq);
            e->be.weight_free(b, L->wk);
            e->be.weight_free(b, L->wv);
            e->be.weight_free(b, L->wo);
            e->be.weight_free(b, L->w_gate);
            e->be.weight_free(b, L->w_up);
            e->be.weight_free(b, L->w_down);
            e->be.buf_free(b, L->k_cache);
            e->be.buf_free(b, L->v_cache);
        }
        free(e->layers);
    }
    e->be.weight_free(b, e->embedding);
    e->be.weight_free(b, e->head);
    e->be.buf_free(b, e->final_norm);
    struct lp_buf *bufs[] = {e->x,   e->xn,   e->q,  e->k,  e->v,     e->att,
                             e->o,   e->gate, e->up, e->xg, e->logits, e->ids};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) e->be.buf_free(b, bufs[i]);
    free(e->h_ids);
    free(e->h_pos);
    free(e->h_slot);
    free(e->h_rows);
    free(e->h_segs);
    free(e->h_greedy);
    free(e->h_row);
    lp_kv_table_deinit(&e->kv);
    free(e);
}

enum lp_status lp_engine_seq_open(struct lp_engine *e, int *seq, struct lp_error *err) {
    return lp_kv_seq_open(&e->kv, seq, err);
}

void lp_engine_seq_close(struct lp_engine *e, int seq) {
    lp_kv_seq_close(&e->kv, seq);
}

int lp_engine_seq_len(const struct lp_engine *e, int seq) {
    if (seq < 0 || seq >= e->kv.max_seqs || !e->kv.seqs[seq].open) return -1;
    return e->kv.seqs[seq].len;
}

int lp_engine_hidden_size(const struct lp_engine *e) { return e->cfg.hidden_size; }
int lp_engine_vocab_size(const struct lp_engine *e) { return e->cfg.vocab_size; }
int lp_engine_max_batch_tokens(const struct lp_engine *e) { return e->params.max_batch_tokens; }
int lp_engine_max_logit_rows(const struct lp_engine *e) { return e->params.max_logit_rows; }
int lp_engine_max_context(const struct lp_engine *e) { return e->params.max_context; }
size_t lp_engine_weight_bytes(const struct lp_engine *e) { return e->weight_bytes; }

size_t lp_engine_kv_bytes(const struct lp_engine *e) {
    const struct lp_kv_geom *g = &e->kv_geom;
    return 2 * (size_t)(e->layer_end - e->layer_begin) * (size_t)g->n_blocks *
           (size_t)g->block_size * (size_t)g->n_kv_heads * (size_t)g->head_dim *
           lp_dtype_size(g->dtype);
}

// Checks the whole batch and the KV room it needs before anything changes.
static enum lp_status engine_check_batch(struct lp_engine *e, const struct lp_engine_batch *b,
                                         int *n_tokens, int *n_rows, struct lp_error *err) {
    if (b->n_segs <= 0 || b->n_segs > e->params.max_seqs || !b->segs)
        return lp_error_set(err, LP_ERR_INVALID_ARG, "forward: %d segments, expected 1..%d",
                            b->n_segs, e->params.max_seqs);
    int64_t total = 0, rows = 0, extra_blocks = 0, freed_blocks = 0;
    int bs = e->kv.block_size;
    for (int i = 0; i < b->n_segs; i++) {
        const struct lp_engine_seg *s = &b->segs[i];
        int len = lp_engine_seq_len(e, s->seq);
        if (len < 0)
            return lp_error_set(err, LP_ERR_INVALID_ARG, "forward: segment %d: sequence %d is "
                                "not open", i, s->seq);
        for (int j = 0; j < i; j++)
            if (b->segs[j].seq == s->seq)
                return lp_error_set(err, LP_ERR_INVALID_ARG,
                                    "forward: sequence %d appears twice in one batch", s->seq);
        int pos0 = s->pos0 < 0 ? len : s->pos0;
        if (pos0 > len)
            return lp_error_set(err, LP_ERR_INVALID_ARG,
                                "forward: sequence %d: position %d leaves a gap after its %d "
                                "cached positions",
                                s->seq, pos0, len);
        if (s->n_tokens <= 0)
            return lp_error_set(err, LP_ERR_INVALID_ARG, "forward: segment %d has %d tokens", i,
                                s->n_tokens);
        if ((int64_t)pos0 + s->n_tokens > e->params.max_context)
            return lp_error_set(err, LP_ERR_INVALID_ARG,
                                "forward: sequence %d would reach %lld positions, past the "
                                "context limit of %d",
                                s->seq, (long long)pos0 + s->n_tokens, e->params.max_context);
        if (e->has_embed && !s->tokens)
            return lp_error_set(err, LP_ERR_INVALID_ARG, "forward: segment %d has no token ids",
                                i);
        if (e->has_embed)
            for (int t = 0; t < s->n_tokens; t++)
                if (s->tokens[t] < 0 || s->tokens[t] >= e->cfg.vocab_size)
                    return lp_error_set(err, LP_ERR_INVALID_ARG,
                                        "forward: token id %d is outside the vocabulary (0..%d)",
                                        s->tokens[t], e->cfg.vocab_size - 1);
        total += s->n_tokens;
        rows += s->all_logits ? s->n_tokens : 1;
        int have = e->kv.seqs[s->seq].n_blocks;
        int keep = (pos0 + bs - 1) / bs;
        if (keep > have) keep = have;
        int need = (pos0 + s->n_tokens + bs - 1) / bs;
        freed_blocks += have - keep;
        extra_blocks += need - keep;
    }
    if (total > e->params.max_batch_tokens)
        return lp_error_set(err, LP_ERR_INVALID_ARG,
                            "forward: %lld tokens in one batch, the engine takes at most %d",
                            (long long)total, e->params.max_batch_tokens);
    if (e->has_head && rows > e->params.max_logit_rows)
        return lp_error_set(err, LP_ERR_INVALID_ARG,
                            "forward: %lld logit rows in one batch, the engine returns at most %d",
                            (long long)rows, e->params.max_logit_rows);
    if (!e->has_embed && !b->hidden_in)
        return lp_error_set(err, LP_ERR_INVALID_ARG, "forward: no hidden_in rows");
    if (!e->has_head && !b->hidden_out)
        return lp_error_set(err, LP_ERR_INVALID_ARG, "forward: no hidden_out buffer");
    if (e->has_head && !b->logits && !b->greedy_ids)
        return lp_error_set(err, LP_ERR_INVALID_ARG, "forward: no logits or greedy_ids buffer");
    if (!e->has_head && (b->greedy_ids || b->greedy_bad))
        return lp_error_set(err, LP_ERR_INVALID_ARG,
                            "forward: greedy ids asked of an engine without the head");
    if (extra_blocks > e->kv.n_free + freed_blocks)
        return lp_error_set(err, LP_ERR_BUSY,
                            "forward: KV pool exhausted (%d blocks of %d positions, %d free, "
                            "%lld needed)",
                            e->kv.n_blocks, bs, e->kv.n_free, (long long)extra_blocks);
    *n_tokens = (int)total;
    *n_rows = (int)rows;
    return LP_OK;
}

// y[n, d] += x @ w^T, through e->o unless the backend fuses it.
static void engine_matmul_add(struct lp_engine *e, struct lp_buf *y, const struct lp_buf *x,
                              const struct lp_bweight *w, int n, int d) {
    if (e->be.matmul_add) {
        e->be.matmul_add(e->bctx, y, x, w, n);
        return;
    }
    e->be.matmul(e->bctx, e->o, x, w, n);
    e->be.add(e->bctx, y, e->o, (int64_t)n * d);
}

static void engine_layer(struct lp_engine *e, const struct lp_engine_layer *L, int n, int n_segs) {
    const struct lp_model_config *c = &e->cfg;
    void *b = e->bctx;
    const struct lp_backend_i *be = &e->be;
    int d = c->hidden_size, hd = c->head_dim;
    float eps = c->rms_norm_eps;
    // attention block: x += o_proj(attn(rope(norm_h(q_proj(n))), ...))
    be->rmsnorm(b, e->xn, e->x, L->attn_norm, n, d, eps);
    if (be->matmul_multi) {
        struct lp_buf *qkv[3] = {e->q, e->k, e->v};
        const struct lp_bweight *w_qkv[3] = {L->wq, L->wk, L->wv};
        be->matmul_multi(b, qkv, e->xn, w_qkv, 3, n);
    } else {
        be->matmul(b, e->q, e->xn, L->wq, n);
        be->matmul(b, e->k, e->xn, L->wk, n);
        be->matmul(b, e->v, e->xn, L->wv, n);
    }
    if (be->qk_norm_rope_store) {
        be->qk_norm_rope_store(b, e->q, e->k, e->v, L->q_norm, L->k_norm, L->k_cache, L->v_cache,
                               &e->kv_geom, e->h_pos, e->h_slot, n, c->n_heads, eps,
                               c->rope_theta);
    } else {
        be->rmsnorm(b, e->q, e->q, L->q_norm, n * c->n_heads, hd, eps);
        be->rmsnorm(b, e->k, e->k, L->k_norm, n * c->n_kv_heads, hd, eps);
        be->rope(b, e->q, e->h_pos, n, c->n_heads, hd, c->rope_theta);
        be->rope(b, e->k, e->h_pos, n, c->n_kv_heads, hd, c->rope_theta);
        be->kv_store(b, L->k_cache, L->v_cache, &e->kv_geom, e->k, e->v, e->h_slot, n);
    }
    be->attention(b, e->att, e->q, L->k_cache, L->v_cache, &e->kv_geom, c->n_heads, e->h_segs,
                  n_segs);
    engine_matmul_add(e, e->x, e->att, L->wo, n, d);
    // MLP block: x += down_proj(silu(gate_proj(h)) * up_proj(h))
    be->rmsnorm(b, e->xn, e->x, L->ffn_norm, n, d, eps);
    if (be->matmul_swiglu) {
        be->matmul_swiglu(b, e->gate, e->up, e->xn, L->w_gate, L->w_up, n);
    } else {
        be->matmul(b, e->gate, e->xn, L->w_gate, n);
        be->matmul(b, e->up, e->xn, L->w_up, n);
        be->silu_mul(b, e->gate, e->gate, e->up, (int64_t)n * c->intermediate_size);
    }
    engine_matmul_add(e, e->x, e->gate, L->w_down, n, d);
}

// The whole step on the backend; with argmax, the head's rows end in their
// greedy ids (e->ids) on the backend too.
static void engine_compute(struct lp_engine *e, int n, int n_rows, int n_segs, bool argmax) {
    const struct lp_model_config *c = &e->cfg;
    if (e->has_embed) e->be.embed(e->bctx, e->x, e->embedding, e->h_ids, n);
    for (int il = e->layer_begin; il < e->layer_end; il++)
        engine_layer(e, &e->layers[il - e->layer_begin], n, n_segs);
    if (e->has_head) {
        const struct lp_bweight *head = e->head ? e->head : e->embedding;
        e->be.gather_rows(e->bctx, e->xg, e->x, e->h_rows, n_rows, c->hidden_size);
        e->be.rmsnorm(e->bctx, e->xg, e->xg, e->final_norm, n_rows, c->hidden_size,
                      c->rms_norm_eps);
        e->be.matmul(e->bctx, e->logits, e->xg, head, n_rows);
        if (argmax) e->be.argmax_rows(e->bctx, e->ids, e->logits, n_rows, c->vocab_size);
    }
}

// The greedy ids of the step's n_rows logits rows (and their first
// non-finite indices) into the batch: the backend's, or, where it has no
// argmax_rows, from each row read back in turn.
static enum lp_status engine_read_greedy(struct lp_engine *e, const struct lp_engine_batch *b,
                                         int n_rows, struct lp_error *err) {
    int V = e->cfg.vocab_size;
    enum lp_status st = LP_OK;
    if (e->ids) {
        st = e->be.buf_read(e->bctx, e->ids, 0, e->h_greedy, 2 * (size_t)n_rows * sizeof(int32_t),
                            err);
    } else {
        for (int r = 0; r < n_rows && st == LP_OK; r++) {
            st = e->be.buf_read(e->bctx, e->logits, (size_t)r * (size_t)V * sizeof(float),
                                e->h_row, (size_t)V * sizeof(float), err);
            if (st != LP_OK) break;
            e->h_greedy[r] = lp_argmax_f32(e->h_row, V);
            e->h_greedy[n_rows + r] = lp_first_nonfinite_f32(e->h_row, V);
        }
    }
    if (st != LP_OK) return st;
    memcpy(b->greedy_ids, e->h_greedy, (size_t)n_rows * sizeof(int32_t));
    if (b->greedy_bad)
        memcpy(b->greedy_bad, e->h_greedy + n_rows, (size_t)n_rows * sizeof(int32_t));
    return LP_OK;
}

// The step's output into the batch: greedy ids, the logits rows, or (an
// engine without the head) the hidden rows.
static enum lp_status engine_read_out(struct lp_engine *e, const struct lp_engine_batch *b, int n,
                                      int n_rows, struct lp_error *err) {
    if (e->has_head && b->greedy_ids) return engine_read_greedy(e, b, n_rows, err);
    if (e->has_head)
        return e->be.buf_read(e->bctx, e->logits, 0, b->logits,
                              (size_t)n_rows * (size_t)e->cfg.vocab_size * sizeof(float), err);
    return e->be.buf_read(e->bctx, e->x, 0, b->hidden_out,
                          (size_t)n * (size_t)e->cfg.hidden_size * sizeof(float), err);
}

enum lp_status lp_engine_forward(struct lp_engine *e, const struct lp_engine_batch *b,
                                 struct lp_error *err) {
    int n = 0, n_rows = 0;
    enum lp_status st = engine_check_batch(e, b, &n, &n_rows, err);
    if (st != LP_OK) return st;
    const struct lp_model_config *c = &e->cfg;
    // Place every token: rewind, reserve blocks (room was checked), and
    // fill positions, KV slots, ids, attention segments and logit rows.
    // Rewinds first (they give blocks back), then reservations: the room
    // check counted both, so no reservation can fail.
    for (int i = 0; i < b->n_segs; i++) {
        const struct lp_engine_seg *s = &b->segs[i];
        int len = e->kv.seqs[s->seq].len;
        e->h_segs[i].pos0 = s->pos0 < 0 ? len : s->pos0;
        lp_kv_seq_truncate(&e->kv, s->seq, e->h_segs[i].pos0);
    }
    int row = 0, i_row = 0;
    for (int i = 0; i < b->n_segs; i++) {
        const struct lp_engine_seg *s = &b->segs[i];
        int pos0 = e->h_segs[i].pos0;
        st = lp_kv_seq_reserve(&e->kv, s->seq, pos0 + s->n_tokens, err);
        if (st != LP_OK) return st; // not reached: room was checked
        for (int t = 0; t < s->n_tokens; t++) {
            e->h_pos[row + t] = pos0 + t;
            e->h_slot[row + t] = lp_kv_slot(&e->kv, s->seq, pos0 + t);
            if (e->has_embed) e->h_ids[row + t] = s->tokens[t];
            if (e->has_head && (s->all_logits || t == s->n_tokens - 1))
                e->h_rows[i_row++] = row + t;
        }
        e->h_segs[i] = (struct lp_attn_seg){.n_tokens = s->n_tokens,
                                            .pos0 = pos0,
                                            .block_table = e->kv.seqs[s->seq].blocks,
                                            .n_blocks = e->kv.seqs[s->seq].n_blocks};
        row += s->n_tokens;
    }
    size_t d = (size_t)c->hidden_size;
    if (e->be.batch_setup) {
        struct lp_batch_index ix = {.n_tokens = n,
                                    .ids = e->has_embed ? e->h_ids : NULL,
                                    .pos = e->h_pos,
                                    .slot = e->h_slot,
                                    .n_rows = e->has_head ? n_rows : 0,
                                    .rows = e->has_head ? e->h_rows : NULL,
                                    .n_segs = b->n_segs,
                                    .segs = e->h_segs};
        if ((st = e->be.batch_setup(e->bctx, &ix, err)) != LP_OK) goto fail;
    }
    if (!e->has_embed) {
        st = e->be.buf_write(e->bctx, e->x, 0, b->hidden_in, (size_t)n * d * sizeof(float), err);
        if (st != LP_OK) goto fail;
    }
    // A decode step (one token per sequence) may be recorded and replayed;
    // the argmax, when the backend makes it, is part of the recording.
    bool argmax = e->has_head && b->greedy_ids && e->ids;
    bool replayed = false, bracketed = e->be.step_begin && e->be.step_end && n == b->n_segs;
    if (bracketed) {
        struct lp_step_key key = {.owner = e, .n_tokens = n, .n_segs = b->n_segs,
                                  .n_rows = e->has_head ? n_rows : 0,
                                  .flags = argmax ? LP_STEP_ARGMAX : 0};
        if ((st = e->be.step_begin(e->bctx, &key, &replayed, err)) != LP_OK) goto fail;
    }
    if (!replayed) {
        engine_compute(e, n, n_rows, b->n_segs, argmax);
        if (bracketed && (st = e->be.step_end(e->bctx, err)) != LP_OK) goto fail;
    }
    st = engine_read_out(e, b, n, n_rows, err);
    if (st == LP_OK && e->be.sync) st = e->be.sync(e->bctx, err);
    if (st != LP_OK) goto fail;
    for (int i = 0; i < b->n_segs; i++) {
        const struct lp_engine_seg *s = &b->segs[i];
        int pos0 = e->h_segs[i].pos0;
        e->kv.seqs[s->seq].len = pos0 + s->n_tokens;
    }
    return LP_OK;
fail:
    // (a backend error) The reserved blocks stay with their sequences and
    // lengths are as the rewinds left them, so a retry overwrites the same
    // slots.
    return st;
}

int lp_engine_kv_blocks_total(const struct lp_engine *e) { return e->kv.n_blocks; }

int lp_engine_kv_blocks_used(const struct lp_engine *e) { return e->kv.n_blocks - e->kv.n_free; }

int lp_engine_kv_block_size(const struct lp_engine *e) { return e->kv.block_size; }

int lp_engine_max_seqs(const struct lp_engine *e) { return e->kv.max_seqs; }
