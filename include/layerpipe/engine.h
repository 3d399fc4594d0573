// SPDX-License-Identifier: MIT
// engine.h -- the Qwen3 forward pass over a contiguous range of layers,
// with or without the embedding and the LM head, so a pipeline stage and a
// single process run the same code. Sequences own KV blocks taken from a
// pool sized at creation. A forward call takes a batch of segments (one
// sequence's consecutive tokens each): a prompt chunk is one segment of
// many tokens (processed as a matrix), a decode step is many one-token
// segments. Also the sampler and the stop reasons generation reports (the
// generation loop itself is the scheduler's, in cluster.h).
#ifndef LAYERPIPE_ENGINE_H
#define LAYERPIPE_ENGINE_H

#include <stdbool.h>
#include <stdint.h>

#include "layerpipe/backend.h"
#include "layerpipe/model.h"
#include "layerpipe/status.h"

struct lp_engine_params {
    int max_batch_tokens; // most tokens in one forward call (prefill chunk), default 256
    int max_logit_rows;   // most rows of logits one call returns, default max_seqs
    int max_seqs;         // most sequences open at once, default 16
    int kv_block_size;    // positions per KV block, default 32
    int n_kv_blocks;      // blocks in the pool (0: enough for max_seqs full contexts,
                          // capped at kv_max_bytes)
    size_t kv_max_bytes;  // cap for the automatic pool size, default 2 GiB
    enum lp_dtype kv_dtype; // LP_DTYPE_F32 (default) or LP_DTYPE_BF16
    int max_context;      // 0: the model's max_position_embeddings
    // What of the loaded model this engine runs (a coordinator runs its
    // layers with the embedding in one engine, and the head in another):
    int layer_begin;      // -1: the first loaded layer
    int layer_end;        // -1: one past the last loaded layer
    bool no_embed;        // leave out the embedding even if loaded (input is hidden rows)
    bool no_head;         // leave out the head even if loaded (output is hidden rows)
};

LP_API struct lp_engine_params lp_engine_params_default(void);

struct lp_engine;

// Builds an engine over the layers, embedding and head that `model` loaded
// (lp_model_loaded), computing on `backend`. Both are borrowed and must
// outlive the engine. Allocates all scratch and the KV pool now: no
// allocation happens per token. On failure *out is NULL.
LP_API enum lp_status lp_engine_create(struct lp_engine **out, const struct lp_model *model,
                                       struct lp_backend *backend,
                                       const struct lp_engine_params *params,
                                       struct lp_error *err);
LP_API void lp_engine_destroy(struct lp_engine *engine); // accepts NULL

// Opens an empty sequence; *seq is its handle (0 <= *seq < max_seqs).
// LP_ERR_BUSY when max_seqs are open.
LP_API enum lp_status lp_engine_seq_open(struct lp_engine *engine, int *seq, struct lp_error *err);
// Frees the sequence's KV blocks and its handle. Ignores a closed handle.
LP_API void lp_engine_seq_close(struct lp_engine *engine, int seq);
// Positions cached for the sequence (the next token's position), -1 if not open.
LP_API int lp_engine_seq_len(const struct lp_engine *engine, int seq);

// One segment of a forward batch.
struct lp_engine_seg {
    int seq;               // an open sequence
    int pos0;              // position of the first token: -1 appends at seq_len;
                           // a value < seq_len rewinds the sequence first
    int n_tokens;          // >= 1
    const int32_t *tokens; // [n_tokens] token ids, when the engine has the embedding
    bool all_logits;       // logits for every token, not only the last
};

struct lp_engine_batch {
    int n_segs;
    const struct lp_engine_seg *segs; // [n_segs]; a sequence appears at most once
    const float *hidden_in; // [n_tokens, hidden] input rows, when the engine has no embedding
    float *hidden_out;      // [n_tokens, hidden] output rows, when the engine has no head
    float *logits;          // [n_logit_rows, vocab], when it has the head: per segment its
                            // last token's row, or all its rows if all_logits, in order
    // Greedy ids instead of rows (with the head; optional): when greedy_ids is
    // set, greedy_ids[r] is row r's greedy id, lp_sampler's temperature-0
    // choice exactly (the first index of the largest value; NaNs never win,
    // except one at index 0, which always does), computed where the rows are
    // (on the device) so that the rows are never read back: logits may be
    // NULL then and is left alone. greedy_bad (optional) gets each row's first
    // NaN or infinite index, -1 when the row is finite.
    int32_t *greedy_ids;    // [n_logit_rows]
    int32_t *greedy_bad;    // [n_logit_rows]
};

// Runs the batch through the engine's layers; the new tokens' K and V join
// their sequences. Errors (LP_ERR_INVALID_ARG for a bad batch, LP_ERR_BUSY
// when the KV pool is exhausted, LP_ERR_INVALID_ARG past the context
// limit) leave every sequence as it was. Not thread-safe per engine.
LP_API enum lp_status lp_engine_forward(struct lp_engine *engine,
                                        const struct lp_engine_batch *batch,
                                        struct lp_error *err);

// Hidden size, vocabulary size, and the limits chosen at creation.
LP_API int lp_engine_hidden_size(const struct lp_engine *engine);
LP_API int lp_engine_vocab_size(const struct lp_engine *engine);
LP_API int lp_engine_max_batch_tokens(const struct lp_engine *engine);
LP_API int lp_engine_max_logit_rows(const struct lp_engine *engine);
LP_API int lp_engine_max_context(const struct lp_engine *engine);
// The KV pool: blocks in it, blocks held by open sequences, positions per block.
LP_API int lp_engine_kv_blocks_total(const struct lp_engine *engine);
LP_API int lp_engine_kv_blocks_used(const struct lp_engine *engine);
LP_API int lp_engine_kv_block_size(const struct lp_engine *engine);
LP_API int lp_engine_max_seqs(const struct lp_engine *engine);
// Bytes of the KV pool (K and V of every layer of the engine).
LP_API size_t lp_engine_kv_bytes(const struct lp_engine *engine);
// Weight bytes a decode step reads (all loaded matrices once).
LP_API size_t lp_engine_weight_bytes(const struct lp_engine *engine);

// ---- sampling ----

struct lp_sampler_params {
    float temperature;        // 0: greedy (argmax)
    int top_k;                // 0: off
    float top_p;              // 1: off
    float min_p;              // 0: off
    float repetition_penalty; // 1: off (HF: divide positive logits, multiply negative)
    float presence_penalty;   // 0: off (OpenAI: subtract once if the token appeared)
    float frequency_penalty;  // 0: off (OpenAI: subtract per occurrence)
    int penalty_last_n;       // window of history the penalties see, default 64; -1 all
    uint64_t seed;
};

// Greedy with no penalties.
LP_API struct lp_sampler_params lp_sampler_params_default(void);
// The model's generation_config defaults (greedy when do_sample is false).
LP_API struct lp_sampler_params lp_sampler_params_from_model(const struct lp_model *model);

struct lp_sampler;

LP_API enum lp_status lp_sampler_create(struct lp_sampler **out,
                                        const struct lp_sampler_params *params, int vocab_size,
                                        struct lp_error *err);
LP_API void lp_sampler_destroy(struct lp_sampler *sampler); // accepts NULL
// Picks the next token from logits[vocab] (modified in place) given the
// sequence so far (history[n_history], for penalties). Same seed, same
// calls: same tokens.
LP_API int32_t lp_sampler_sample(struct lp_sampler *sampler, float *logits,
                                 const int32_t *history, int n_history);
// True when lp_sampler_sample is the greedy choice of the row as given and
// changes no state: temperature 0 or top_k 1, with no repetition, presence
// or frequency penalty. The caller may then take that id from elsewhere
// (lp_engine_batch.greedy_ids: the same rule) instead of calling it.
LP_API bool lp_sampler_is_greedy(const struct lp_sampler *sampler);

// ---- generation ----

enum lp_stop_reason {
    LP_STOP_NONE,
    LP_STOP_EOS,      // an end-of-sequence token was sampled (not emitted)
    LP_STOP_LENGTH,   // max_new_tokens reached
    LP_STOP_CONTEXT,  // the context limit was reached
    LP_STOP_CALLBACK, // the caller asked to stop (a stop string, a client that left)
};

LP_API const char *lp_stop_reason_str(enum lp_stop_reason reason);

// True when id is one of the model's end-of-sequence ids.
LP_API bool lp_model_config_is_eos(const struct lp_model_config *config, int32_t id);

#endif
