// SPDX-License-Identifier: MIT
// backend_i.h -- the function table between the engine and a backend.
// Activations are float32 row-major matrices living in backend buffers
// (struct lp_buf); host code never dereferences a backend buffer's memory,
// it moves bytes with buf_write / buf_read. Small index arrays (token ids,
// positions, KV slots, block tables) are passed as host pointers, borrowed
// for the duration of the call; a device backend copies them itself, or,
// when the engine handed them over first with batch_setup, uses the copies
// it made then (one transfer per batch). A step of compute calls bracketed
// by step_begin / step_end may be recorded and replayed (a CUDA graph).
// Compute slots return void: a device backend reports errors at sync.
// Calls on one backend come from one thread at a time (the engine's).
#ifndef LAYERPIPE_BACKEND_I_H
#define LAYERPIPE_BACKEND_I_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "layerpipe/backend.h"
#include "layerpipe/model.h"

struct lp_buf;     // backend memory, owned by whoever allocated it
struct lp_bweight; // a weight matrix made usable by the backend

// One segment of a batch for attention: n_tokens consecutive tokens of one
// sequence, the first at position pos0; token i attends to positions
// [0, pos0 + i] of that sequence, whose KV rows live in the cache blocks
// block_table[0..n_blocks) (position p is in block block_table[p / block_size],
// row p % block_size).
struct lp_attn_seg {
    int n_tokens;
    int pos0;
    const int32_t *block_table; // host, borrowed for the call
    int n_blocks;
};

// Geometry of the KV cache of one layer: n_blocks blocks of block_size rows,
// each row n_kv_heads * head_dim elements of dtype (F32 or BF16), K and V in
// separate buffers laid out [n_blocks][block_size][n_kv_heads][head_dim].
struct lp_kv_geom {
    int n_blocks;
    int block_size;
    int n_kv_heads;
    int head_dim;
    enum lp_dtype dtype;
};

// The index arrays of one batch (engine.c fills them), handed to the backend
// once before the batch's compute calls. Host memory, borrowed until the next
// batch_setup or sync (the engine reuses the same arrays for every batch).
struct lp_batch_index {
    int n_tokens;
    const int32_t *ids;  // [n_tokens] token ids; NULL without the embedding
    const int32_t *pos;  // [n_tokens] positions
    const int32_t *slot; // [n_tokens] KV cache rows
    int n_rows;
    const int32_t *rows; // [n_rows] rows that need logits; NULL when n_rows == 0
    int n_segs;
    const struct lp_attn_seg *segs; // [n_segs], covering the n_tokens rows in order
};

// The shape of a step (step_begin): equal keys promise the same compute calls
// on the same buffers with the same sizes, after a batch_setup with the same
// n_tokens, n_rows and n_segs; only the index arrays' contents differ.
struct lp_step_key {
    const void *owner; // the engine
    int n_tokens;
    int n_segs;
    int n_rows;
    int flags;         // LP_STEP_* bits: what the step computes beyond the layers and head
};

#define LP_STEP_ARGMAX 1 // the step ends with argmax_rows over the head's logits

struct lp_backend_i {
    const char *(*name)(void *ctx);
    int (*n_threads)(void *ctx);
    void (*destroy)(void *ctx);

    // memory
    enum lp_status (*buf_alloc)(void *ctx, size_t bytes, struct lp_buf **out,
                                struct lp_error *err);
    void (*buf_free)(void *ctx, struct lp_buf *buf); // accepts NULL
    enum lp_status (*buf_write)(void *ctx, struct lp_buf *dst, size_t offset, const void *src,
                                size_t bytes, struct lp_error *err);
    enum lp_status (*buf_read)(void *ctx, const struct lp_buf *src, size_t offset, void *dst,
                               size_t bytes, struct lp_error *err);
    // Makes w usable (the CPU keeps borrowing the host memory; a GPU copies).
    // w's buffers must outlive the returned handle.
    enum lp_status (*weight_upload)(void *ctx, const struct lp_weight *w, struct lp_bweight **out,
                                    struct lp_error *err);
    void (*weight_free)(void *ctx, struct lp_bweight *w); // accepts NULL

    // compute; "rows" of an activation matrix are tokens.
    // out[n, emb.cols] = emb[ids[i], :] (dequantized)
    void (*embed)(void *ctx, struct lp_buf *out, const struct lp_bweight *emb, const int32_t *ids,
                  int n);
    // out[n, w.rows] = x[n, w.cols] @ w^T   (y = x W^T, torch Linear)
    void (*matmul)(void *ctx, struct lp_buf *out, const struct lp_buf *x,
                   const struct lp_bweight *w, int n);
    // out[r, :] = x[r, :] / sqrt(mean(x[r, :]^2) + eps) * weight[:]  for r < n_rows
    // (out may equal x; weight is a float32 buffer of dim elements)
    void (*rmsnorm)(void *ctx, struct lp_buf *out, const struct lp_buf *x,
                    const struct lp_buf *weight, int n_rows, int dim, float eps);
    // In place on x[n, n_heads, head_dim]: rotate-half RoPE (HF
    // apply_rotary_pos_emb) at positions pos[i], inv_freq_j = theta^(-2j/head_dim).
    void (*rope)(void *ctx, struct lp_buf *x, const int32_t *pos, int n, int n_heads,
                 int head_dim, float theta);
    // Writes k[i], v[i] ([n, n_kv_heads * head_dim]) into cache row slot[i]
    // (slot = block * block_size + row), converting to geom->dtype.
    void (*kv_store)(void *ctx, struct lp_buf *k_cache, struct lp_buf *v_cache,
                     const struct lp_kv_geom *geom, const struct lp_buf *k,
                     const struct lp_buf *v, const int32_t *slot, int n);
    // out[n, n_heads * head_dim] = softmax(q k^T / sqrt(head_dim)) v per
    // head, causal over each segment's cached positions, GQA (query head h
    // reads kv head h / (n_heads / n_kv_heads)). q is [n, n_heads * head_dim],
    // segments cover the n rows in order.
    void (*attention)(void *ctx, struct lp_buf *out, const struct lp_buf *q,
                      const struct lp_buf *k_cache, const struct lp_buf *v_cache,
                      const struct lp_kv_geom *geom, int n_heads, const struct lp_attn_seg *segs,
                      int n_segs);
    // out[i] = silu(gate[i]) * up[i] for i < n (elements)
    void (*silu_mul)(void *ctx, struct lp_buf *out, const struct lp_buf *gate,
                     const struct lp_buf *up, int64_t n);
    // x[i] += y[i] for i < n (elements)
    void (*add)(void *ctx, struct lp_buf *x, const struct lp_buf *y, int64_t n);
    // dst[dst_row, :] = src[src_row[i], :] for i < n, rows of `cols` floats
    // (gathers the rows that need logits).
    void (*gather_rows)(void *ctx, struct lp_buf *dst, const struct lp_buf *src,
                        const int32_t *src_row, int n, int cols);
    // (optional) waits for queued work; returns the first device error. NULL: synchronous.
    enum lp_status (*sync)(void *ctx, struct lp_error *err);
    // (optional) the device's facts; NULL: only the name is known.
    enum lp_status (*device_info)(void *ctx, struct lp_device_info *out, struct lp_error *err);
    // (optional) Takes a batch's index arrays before its compute calls; the
    // calls that follow pass these same pointers (ids to embed, pos to rope,
    // slot to kv_store, segs to attention, rows to gather_rows) and the
    // backend may use its own copies of them. NULL: the arrays go per call.
    enum lp_status (*batch_setup)(void *ctx, const struct lp_batch_index *ix,
                                  struct lp_error *err);
    // (optional, with step_end) Brackets the compute calls of one step of
    // shape *key. When the backend has recorded such a step it queues the
    // recording, sets *replayed and the caller makes neither the calls nor
    // step_end; otherwise the caller makes the calls, then step_end (which
    // may record them). Errors of the step itself still come from sync.
    enum lp_status (*step_begin)(void *ctx, const struct lp_step_key *key, bool *replayed,
                                 struct lp_error *err);
    enum lp_status (*step_end)(void *ctx, struct lp_error *err);

    // (optional) Fused forms of engine steps, each computing what the steps
    // it stands for compute; NULL: the engine makes those steps.
    // outs[j][n, ws[j].rows] = x[n, cols] @ ws[j]^T for j < n_w <= 3 (q, k, v).
    void (*matmul_multi)(void *ctx, struct lp_buf *const *outs, const struct lp_buf *x,
                         const struct lp_bweight *const *ws, int n_w, int n);
    // y[n, w.rows] += x @ w^T (matmul into a scratch, then add).
    void (*matmul_add)(void *ctx, struct lp_buf *y, const struct lp_buf *x,
                       const struct lp_bweight *w, int n);
    // out[n, w_gate.rows] = silu(x @ w_gate^T) * (x @ w_up^T) (two matmuls,
    // then silu_mul); tmp [n, w_up.rows] is scratch the backend may use.
    void (*matmul_swiglu)(void *ctx, struct lp_buf *out, struct lp_buf *tmp,
                          const struct lp_buf *x, const struct lp_bweight *w_gate,
                          const struct lp_bweight *w_up, int n);
    // After q, k, v ([n, n_heads * head_dim], [n, n_kv_heads * head_dim]):
    // rmsnorm of every head of q (q_norm) and k (k_norm), rope of both at pos,
    // then kv_store of k and v at slot.
    void (*qk_norm_rope_store)(void *ctx, struct lp_buf *q, struct lp_buf *k,
                               const struct lp_buf *v, const struct lp_buf *q_norm,
                               const struct lp_buf *k_norm, struct lp_buf *k_cache,
                               struct lp_buf *v_cache, const struct lp_kv_geom *geom,
                               const int32_t *pos, const int32_t *slot, int n, int n_heads,
                               float eps, float theta);

    // (optional) The greedy choice of each row of x [n_rows, cols] (logits), so
    // that only ids need to leave the device: ids is int32 [2, n_rows] with
    // ids[r] = lp_argmax_f32(x[r, :]) and ids[n_rows + r] =
    // lp_first_nonfinite_f32(x[r, :]) (util/argmax.h: the rule exactly, NaNs
    // and infinities included). NULL: the engine reads the rows back and runs
    // those loops itself.
    void (*argmax_rows)(void *ctx, struct lp_buf *ids, const struct lp_buf *x, int n_rows,
                        int cols);
};

struct lp_backend {
    struct lp_backend_i iface;
    void *ctx;
};

// Wraps a table and context into a heap handle (used by backend constructors).
enum lp_status lp_backend_wrap(struct lp_backend **out, const struct lp_backend_i *iface,
                               void *ctx, struct lp_error *err);

#endif
