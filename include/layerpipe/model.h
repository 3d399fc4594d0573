// SPDX-License-Identifier: MIT
// model.h -- a Qwen3 model folder opened read-only: its configuration, its
// generation defaults, and a table of weights that are borrowed views into
// memory-mapped safetensors files (sharded or not). Quantized MLX weights
// stay quantized: a matrix is described by its format and raw buffers.
// Every value read from disk is checked before use; a malformed folder is an
// LP_ERR_FORMAT (or LP_ERR_IO / LP_ERR_UNSUPPORTED) naming the file and field.
#ifndef LAYERPIPE_MODEL_H
#define LAYERPIPE_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "layerpipe/status.h"

#define LP_MAX_EOS_IDS 8

// Element types found in files and buffers.
enum lp_dtype {
    LP_DTYPE_F32,
    LP_DTYPE_F16,
    LP_DTYPE_BF16,
    LP_DTYPE_U32,
    LP_DTYPE_I32,
    LP_DTYPE_U8,
    LP_DTYPE_I8,
    LP_DTYPE_I64,
};

// Bytes per element of dtype.
LP_API size_t lp_dtype_size(enum lp_dtype dtype);
// Canonical name ("BF16", as safetensors writes it).
LP_API const char *lp_dtype_name(enum lp_dtype dtype);

// The forward-pass hyperparameters of a Qwen3 dense model (config.json),
// with HF defaults for optional fields.
struct lp_model_config {
    int vocab_size;              // rows of the embedding (151936 for Qwen3-1.7B)
    int hidden_size;             // model width d
    int intermediate_size;       // MLP width
    int n_layers;                // num_hidden_layers
    int n_heads;                 // num_attention_heads
    int n_kv_heads;              // num_key_value_heads (GQA groups = n_heads / n_kv_heads)
    int head_dim;                // per-head width (default hidden_size / n_heads)
    int max_position_embeddings; // context limit
    float rms_norm_eps;          // default 1e-6
    float rope_theta;            // default 10000 (Qwen3 files say 1e6)
    bool tie_word_embeddings;    // LM head reuses the embedding
    bool attention_bias;         // q/k/v/o biases (Qwen3: false; true is unsupported)
    int n_eos_ids;               // eos ids from config.json and generation_config.json
    int32_t eos_ids[LP_MAX_EOS_IDS];
    int bos_token_id;            // -1 if absent
    // MLX affine quantization ("quantization" key); bits == 0 when absent.
    int quant_bits;
    int quant_group_size;
};

// Sampling defaults from generation_config.json (HF defaults when absent).
struct lp_generation_config {
    float temperature; // 1.0 if absent
    int top_k;         // 50 if absent (HF default); 0 disables
    float top_p;       // 1.0 if absent
    float min_p;       // 0.0 if absent
    float repetition_penalty; // 1.0 if absent
    bool do_sample;    // HF's flag; false means greedy by default
};

// How a weight matrix is stored.
enum lp_weight_format {
    LP_WEIGHT_F32,
    LP_WEIGHT_F16,
    LP_WEIGHT_BF16,
    LP_WEIGHT_MLX_AFFINE, // uint32-packed codes + per-group scales and biases
    LP_WEIGHT_GGML,       // GGUF blocks of ggml_type, kept as stored (see below)
};

// GGUF block types, numbered as ggml numbers them (the GGUF tensor-info
// type field). The block layouts are llama.cpp's ggml-common.h's.
enum lp_ggml_type {
    LP_GGML_Q4_0 = 2,  // 32 elements: f16 d, 16 bytes of 4-bit codes
    LP_GGML_Q8_0 = 8,  // 32 elements: f16 d, 32 int8 codes
    LP_GGML_Q4_K = 12, // 256 elements: super-block of 8 x 32, 6-bit scales/mins
    LP_GGML_Q5_K = 13, // 256 elements: Q4_K plus a fifth bit per element
    LP_GGML_Q6_K = 14, // 256 elements: 16 x 16, 8-bit scales, f16 d
};

// A weight matrix [rows, cols] (PyTorch Linear layout: rows = out features,
// cols = in features), borrowed from the model (valid until lp_model_close).
// Float formats: data is [rows, cols] of the format's dtype.
// MLX affine: data is uint32 [rows, cols * bits / 32], codes little-endian
// with element 0 in the lowest bits; scales and biases are
// [rows, cols / group_size] of scale_dtype (BF16 or F16);
// w[r][c] = scales[r][c / g] * q[r][c] + biases[r][c / g].
// GGML: data is rows consecutive rows of cols / block_elems(ggml_type)
// blocks each (cols a multiple of the block's element count); scales and
// biases are NULL. GGUF's F32/F16/BF16 tensors use the float formats.
struct lp_weight {
    enum lp_weight_format format;
    int64_t rows;
    int64_t cols;
    const void *data;
    const void *scales;         // MLX only
    const void *biases;         // MLX only
    enum lp_dtype scale_dtype;  // MLX only
    int bits;                   // MLX only: 4 or 8
    int group_size;             // MLX only: 32, 64 or 128
    enum lp_ggml_type ggml_type; // GGML only
};

// Elements and bytes of one block of type t; 0 for a type not listed above.
LP_API int lp_ggml_block_elems(enum lp_ggml_type t);
LP_API int lp_ggml_block_bytes(enum lp_ggml_type t);
// The type's name as ggml spells it ("Q4_K"), or "?".
LP_API const char *lp_ggml_type_name(enum lp_ggml_type t);

// Bytes of the weight's buffers (data + scales + biases): what one full read costs.
LP_API size_t lp_weight_bytes(const struct lp_weight *w);

// The weights of one transformer block. Norm vectors are float32 copies
// owned by the model.
struct lp_layer_weights {
    float *attn_norm; // [hidden] input_layernorm
    float *q_norm;    // [head_dim]
    float *k_norm;    // [head_dim]
    float *ffn_norm;  // [hidden] post_attention_layernorm
    struct lp_weight wq; // [n_heads * head_dim, hidden]
    struct lp_weight wk; // [n_kv_heads * head_dim, hidden]
    struct lp_weight wv; // [n_kv_heads * head_dim, hidden]
    struct lp_weight wo; // [hidden, n_heads * head_dim]
    struct lp_weight w_gate; // [intermediate, hidden]
    struct lp_weight w_up;   // [intermediate, hidden]
    struct lp_weight w_down; // [hidden, intermediate]
};

// Which parts of a model to load: a stage needs only its own layers, and
// the embedding / head only if it holds them.
struct lp_model_load_params {
    int layer_begin;  // first layer to load
    int layer_end;    // one past the last; -1 means n_layers
    bool load_embed;  // token embedding (and the head if tied)
    bool load_head;   // final norm and LM head
};

// Defaults: every layer, embedding and head.
LP_API struct lp_model_load_params lp_model_load_params_default(void);

struct lp_model;

// Opens the model folder `dir`: reads config.json (required),
// generation_config.json (optional), and maps model.safetensors or the
// shards named by model.safetensors.index.json. Tensors outside `params`'
// range are never touched. On failure *out is NULL and nothing leaks.
LP_API enum lp_status lp_model_open(struct lp_model **out, const char *dir,
                                    const struct lp_model_load_params *params,
                                    struct lp_error *err);

// Unmaps and frees everything; every borrowed view dies. Accepts NULL.
LP_API void lp_model_close(struct lp_model *model);

// Borrowed, valid until lp_model_close.
LP_API const struct lp_model_config *lp_model_config(const struct lp_model *model);
LP_API const struct lp_generation_config *lp_model_generation_config(const struct lp_model *model);
LP_API const struct lp_model_load_params *lp_model_loaded(const struct lp_model *model);

// Layer i's weights, or NULL when layer i was not loaded.
LP_API const struct lp_layer_weights *lp_model_layer(const struct lp_model *model, int i);
// Token embedding [vocab, hidden], or NULL when not loaded.
LP_API const struct lp_weight *lp_model_embedding(const struct lp_model *model);
// LM head [vocab, hidden] (the embedding when tied), or NULL when not loaded.
LP_API const struct lp_weight *lp_model_head(const struct lp_model *model);
// Final norm [hidden], or NULL when the head is not loaded.
LP_API const float *lp_model_final_norm(const struct lp_model *model);

// A 64-bit fingerprint of the model folder (config.json, every tensor's
// name, dtype and shape, and sampled bytes of each), the same whatever
// range was loaded: stages compare it to refuse a different model.
LP_API uint64_t lp_model_fingerprint(const struct lp_model *model);

// The hash of one tensor as stored in its weight file.
struct lp_tensor_hash {
    const char *name; // the tensor's name in its file, borrowed until lp_model_close
    uint64_t hash;    // XXH3-64 of its stored bytes
};

// What one lp_model_tensor_hashes call did (for tests and benchmarks).
struct lp_tensor_hash_stats {
    int n_hashed;        // tensors read and hashed now
    int n_cached;        // tensors whose hash came from a cache file or an earlier call
    size_t bytes_hashed; // bytes read and hashed now
    int n_cache_written; // cache files (re)written
};

// The hashes of every tensor the model loaded for layers [layer_begin,
// layer_end) (weights, MLX scales and biases, norms: whatever the file
// format keeps; not the embedding or head), sorted by name. Unlike the
// fingerprint, every byte counts: stages and their coordinator compare them.
// Each tensor is hashed once per model object; the results are kept beside
// each weight file in "<file>.layerpipe-hashes", keyed by the file's size and
// modification time, so the next load reads no tensor bytes. A folder where
// that file cannot be written (read-only) just gets no cache. *out is
// malloc'd (free it), names borrowed from the model. LP_ERR_INVALID_ARG when
// the range is not loaded. stats may be NULL. Not concurrently with itself on
// one model.
LP_API enum lp_status lp_model_tensor_hashes(struct lp_model *model, int layer_begin,
                                             int layer_end, struct lp_tensor_hash **out,
                                             int *n_out, struct lp_tensor_hash_stats *stats,
                                             struct lp_error *err);

// Total bytes of the loaded weight matrices and vectors.
LP_API size_t lp_model_weight_bytes(const struct lp_model *model);

#endif
