// SPDX-License-Identifier: MIT
// lp_genmodel.c -- writes a random Qwen3 model folder in a real on-disk
// format (HF safetensors in bf16 or f32, MLX affine 8/4-bit, or GGUF as
// llama.cpp's converter and quantizer write it), so tests can run
// real-format models of any shape without downloads.
// Every weight is drawn from a PRNG seeded by (--seed, tensor name, row), then
// rounded to bf16: the bf16 values are "the model", and every format of one
// seed describes that same model (hf-f32 stores them widened exactly; mlx*
// is what mlx_lm.convert would make of the hf-bf16 folder; gguf-f32 and
// gguf-bf16 hold the same values, gguf-f16 their f16 rounding, and the
// quantized GGUF formats those values quantized into blocks by
// lp_ggml_quantize_row, with llama.cpp's Q4_K_M / Q5_K_M choice of types
// per tensor). The same arguments give the same bytes. Tensors are generated, converted and written
// one at a time (rows split over threads), so memory stays near the size of
// the largest converted tensor.
//
// Usage: lp_genmodel --out DIR --seed S --format FORMAT [--group 64]
//          --layers L --hidden H --heads NH --kv-heads NKV --head-dim HD
//          --intermediate I --vocab V [--tied 0|1] [--max-pos N]
//          [--rope-theta T] [--sharded N] [--threads N] [--tokenizer TOKDIR]
//        lp_genmodel --out DIR --vocab-only --tokenizer TOKDIR [--vocab V]
// FORMAT: hf-bf16 hf-f32 mlx8 mlx4, or gguf-f32 gguf-f16 gguf-bf16
// gguf-q8_0 gguf-q4_0 gguf-q4_k gguf-q5_k gguf-q6_k gguf-q4_k_m gguf-q5_k_m
// (DIR/model.gguf; --sharded N: gguf-split's model-0000k-of-0000N.gguf).
// --tokenizer puts TOKDIR's tokenizer into the GGUF metadata as the
// converter does; --vocab-only writes only that (a vocabulary file).
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "layerpipe/convert.h"
#include "layerpipe/gguf.h"
#include "layerpipe/tokenizer.h"
#include "util/fp16.h"

enum gen_format { FMT_HF_BF16, FMT_HF_F32, FMT_MLX, FMT_GGUF };

// GGUF: the type of the 2-D weights, and llama.cpp's _M mix on top of it.
struct gguf_format {
    const char *name;
    uint32_t type;
    bool mix;           // Q4_K_M / Q5_K_M: attn_v, ffn_down (some layers), output -> Q6_K
    uint32_t file_type; // general.file_type, llama.cpp's LLAMA_FTYPE
};
static const struct gguf_format GGUF_FORMATS[] = {
    {"gguf-f32", LP_GGML_TYPE_F32, false, 0},   {"gguf-f16", LP_GGML_TYPE_F16, false, 1},
    {"gguf-bf16", LP_GGML_TYPE_BF16, false, 32}, {"gguf-q8_0", LP_GGML_Q8_0, false, 7},
    {"gguf-q4_0", LP_GGML_Q4_0, false, 2},      {"gguf-q4_k", LP_GGML_Q4_K, false, 14},
    {"gguf-q5_k", LP_GGML_Q5_K, false, 16},     {"gguf-q6_k", LP_GGML_Q6_K, false, 18},
    {"gguf-q4_k_m", LP_GGML_Q4_K, true, 15},    {"gguf-q5_k_m", LP_GGML_Q5_K, true, 17},
};

struct gen_args {
    const char *out_dir;
    uint64_t seed;
    enum gen_format format;
    const char *format_name;
    int bits;       // MLX only
    int group_size; // MLX only
    int n_layers, hidden, n_heads, n_kv_heads, head_dim, intermediate, vocab;
    bool tied;
    int max_pos;
    double rope_theta;
    int n_shards; // 0: one model.safetensors
    int n_threads;
    const struct gguf_format *gguf; // FMT_GGUF only
    const char *tokenizer_dir;      // GGUF: tokenizer metadata from this folder, or NULL
    bool vocab_only;
};

// How one tensor's values are drawn: value = mean + std * N(0, 1).
struct tensor_spec {
    char name[128];  // HF name without the ".weight" suffix for matrices (see below)
    bool is_matrix;  // [rows, cols] Linear/Embedding, else a vector [rows * cols == cols]
    int64_t rows, cols;
    float mean, std;
    bool quantized;  // MLX: stored as .weight/.scales/.biases
    uint32_t gguf_type; // GGUF: the tensor's type
};

// ---------------------------------------------------------------------------
// Deterministic random numbers: splitmix64 (Steele, Lea, Flood 2014), one
// stream per (seed, tensor, row) so rows can be generated in any order.

static uint64_t splitmix64(uint64_t *state) {
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t mix(uint64_t a, uint64_t b) {
    uint64_t s = a ^ (b * 0xd1b54a32d192ed03ull);
    splitmix64(&s);
    return splitmix64(&s);
}

static uint64_t fnv1a(const char *s) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (; *s; s++) h = (h ^ (uint8_t)*s) * 0x100000001b3ull;
    return h;
}

// Fills out[n] with mean + std * N(0,1) from a Box-Muller transform of the
// row's stream. The uniform u1 lies in (0, 1] so log never sees 0.
static void fill_gaussian(float *out, int64_t n, uint64_t stream, float mean, float std) {
    uint64_t s = stream;
    const double two_pi = 6.283185307179586;
    for (int64_t i = 0; i < n; i += 2) {
        double u1 = (double)((splitmix64(&s) >> 11) + 1) * 0x1.0p-53;
        double u2 = (double)(splitmix64(&s) >> 11) * 0x1.0p-53;
        float r = sqrtf(-2.0f * logf((float)u1));
        float th = (float)(two_pi * u2);
        out[i] = mean + std * r * cosf(th);
        if (i + 1 < n) out[i + 1] = mean + std * r * sinf(th);
    }
}

// ---------------------------------------------------------------------------
// The tensor list, in file order.

struct tensor_list {
    struct tensor_spec *items;
    int n, cap;
};

static int list_push(struct tensor_list *l, bool is_matrix, int64_t rows, int64_t cols, float mean,
                     float std, const char *fmt, ...) LP_PRINTF(7, 8);

static int list_push(struct tensor_list *l, bool is_matrix, int64_t rows, int64_t cols, float mean,
                     float std, const char *fmt, ...) {
    if (l->n == l->cap) {
        int cap = l->cap ? 2 * l->cap : 256;
        struct tensor_spec *p = realloc(l->items, (size_t)cap * sizeof(*p));
        if (!p) return -1;
        l->items = p;
        l->cap = cap;
    }
    struct tensor_spec *t = &l->items[l->n++];
    memset(t, 0, sizeof(*t));
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t->name, sizeof(t->name), fmt, ap);
    va_end(ap);
    t->is_matrix = is_matrix;
    t->rows = rows;
    t->cols = cols;
    t->mean = mean;
    t->std = std;
    return 0;
}

// Scales: pre-norm blocks see RMS-normalized inputs, so a Linear with
// N(0, 1/in) weights keeps activations at rms ~1 and the residual stream
// grows only like sqrt(layers). The embedding (and head) use std 3/sqrt(H),
// so with a normalized final state the logits have std ~3: spread enough
// that greedy decoding is rarely a near-tie. Norm weights are 1 + 0.1 N(0,1).
static int build_tensors(const struct gen_args *a, struct tensor_list *l) {
    const float norm_std = 0.1f;
    const float emb_std = 3.0f / sqrtf((float)a->hidden);
    const int64_t H = a->hidden, I = a->intermediate, V = a->vocab, D = a->head_dim;
    const int64_t Q = (int64_t)a->n_heads * D, KV = (int64_t)a->n_kv_heads * D;
#define LIN(rows, cols, ...) list_push(l, true, rows, cols, 0.0f, 1.0f / sqrtf((float)(cols)), __VA_ARGS__)
#define NORM(n, ...) list_push(l, false, 1, n, 1.0f, norm_std, __VA_ARGS__)
    int rc = list_push(l, true, V, H, 0.0f, emb_std, "model.embed_tokens");
    for (int i = 0; rc == 0 && i < a->n_layers; i++) {
        const char *p = "model.layers";
        rc |= NORM(H, "%s.%d.input_layernorm.weight", p, i);
        rc |= LIN(Q, H, "%s.%d.self_attn.q_proj", p, i);
        rc |= LIN(KV, H, "%s.%d.self_attn.k_proj", p, i);
        rc |= LIN(KV, H, "%s.%d.self_attn.v_proj", p, i);
        rc |= LIN(H, Q, "%s.%d.self_attn.o_proj", p, i);
        rc |= NORM(D, "%s.%d.self_attn.q_norm.weight", p, i);
        rc |= NORM(D, "%s.%d.self_attn.k_norm.weight", p, i);
        rc |= NORM(H, "%s.%d.post_attention_layernorm.weight", p, i);
        rc |= LIN(I, H, "%s.%d.mlp.gate_proj", p, i);
        rc |= LIN(I, H, "%s.%d.mlp.up_proj", p, i);
        rc |= LIN(H, I, "%s.%d.mlp.down_proj", p, i);
    }
    if (rc == 0) rc = NORM(H, "model.norm.weight");
    if (rc == 0 && !a->tied) rc = list_push(l, true, V, H, 0.0f, emb_std, "lm_head");
#undef LIN
#undef NORM
    for (int i = 0; rc == 0 && i < l->n; i++) {
        struct tensor_spec *t = &l->items[i];
        t->quantized = a->format == FMT_MLX && t->is_matrix && t->cols % a->group_size == 0;
    }
    return rc;
}

// ---------------------------------------------------------------------------
// Files: each tensor spec becomes 1 (float) or 3 (MLX) safetensors entries.

struct out_entry {
    char name[160];
    enum lp_dtype dtype;
    int n_dims;
    int64_t shape[2];
    uint64_t n_bytes;
    int i_spec;  // which tensor_spec
    int part;    // 0 weight, 1 scales, 2 biases
    int i_shard;
};

static enum lp_dtype float_dtype(const struct gen_args *a) {
    return a->format == FMT_HF_F32 ? LP_DTYPE_F32 : LP_DTYPE_BF16;
}

static int build_entries(const struct gen_args *a, const struct tensor_list *l,
                         struct out_entry **out, int *n_out) {
    struct out_entry *e = calloc((size_t)l->n * 3, sizeof(*e));
    if (!e) return -1;
    int n = 0;
    for (int i = 0; i < l->n; i++) {
        const struct tensor_spec *t = &l->items[i];
        if (!t->is_matrix) {
            struct out_entry *x = &e[n++];
            snprintf(x->name, sizeof(x->name), "%s", t->name);
            x->dtype = float_dtype(a);
            x->n_dims = 1;
            x->shape[0] = t->cols;
            x->n_bytes = (uint64_t)t->cols * lp_dtype_size(x->dtype);
            x->i_spec = i;
            continue;
        }
        if (!t->quantized) {
            struct out_entry *x = &e[n++];
            snprintf(x->name, sizeof(x->name), "%s.weight", t->name);
            x->dtype = float_dtype(a);
            x->n_dims = 2;
            x->shape[0] = t->rows;
            x->shape[1] = t->cols;
            x->n_bytes = (uint64_t)(t->rows * t->cols) * lp_dtype_size(x->dtype);
            x->i_spec = i;
            continue;
        }
        static const char *suffix[3] = {"weight", "scales", "biases"};
        for (int p = 0; p < 3; p++) {
            struct out_entry *x = &e[n++];
            snprintf(x->name, sizeof(x->name), "%s.%s", t->name, suffix[p]);
            x->n_dims = 2;
            x->shape[0] = t->rows;
            x->i_spec = i;
            x->part = p;
            if (p == 0) {
                x->dtype = LP_DTYPE_U32;
                x->shape[1] = t->cols * a->bits / 32;
            } else {
                x->dtype = LP_DTYPE_BF16;
                x->shape[1] = t->cols / a->group_size;
            }
            x->n_bytes = (uint64_t)(x->shape[0] * x->shape[1]) * lp_dtype_size(x->dtype);
        }
    }
    *out = e;
    *n_out = n;
    return 0;
}

// Splits entries over n_shards files in order, about equal bytes each, every
// shard non-empty (callers ensure n_shards <= n).
static void assign_shards(struct out_entry *e, int n, int n_shards) {
    uint64_t total = 0;
    for (int i = 0; i < n; i++) total += e[i].n_bytes;
    uint64_t target = total / (uint64_t)n_shards + 1;
    int s = 0, count = 0;
    uint64_t bytes = 0;
    for (int i = 0; i < n; i++) {
        if (s < n_shards - 1 && count > 0 &&
            (bytes + e[i].n_bytes > target || n - i <= n_shards - 1 - s)) {
            s++;
            count = 0;
            bytes = 0;
        }
        e[i].i_shard = s;
        count++;
        bytes += e[i].n_bytes;
    }
}

// ---------------------------------------------------------------------------
// Generating one tensor: rows split over threads.

struct gen_job {
    const struct gen_args *a;
    const struct tensor_spec *t;
    uint64_t tensor_seed;
    int64_t row_begin, row_end;
    void *data;     // [rows, cols] bf16/f32, or uint32 codes [rows, cols*bits/32]
    void *scales;   // MLX: bf16 [rows, cols/group]
    void *biases;   // MLX: bf16 [rows, cols/group]
    enum lp_status status;
    struct lp_error err;
};

// Bytes of one row of a GGUF tensor.
static size_t gguf_row_bytes(const struct tensor_spec *t) {
    return (size_t)(t->cols / lp_gguf_type_block_elems(t->gguf_type)) *
           (size_t)lp_gguf_type_block_bytes(t->gguf_type);
}

// Row r of a GGUF tensor from its float values.
static enum lp_status gguf_row(const struct tensor_spec *t, const float *row, void *data,
                               int64_t r, struct lp_error *err) {
    uint8_t *dst = (uint8_t *)data + (size_t)r * gguf_row_bytes(t);
    switch (t->gguf_type) {
    case LP_GGML_TYPE_F32: memcpy(dst, row, (size_t)t->cols * 4); return LP_OK;
    case LP_GGML_TYPE_F16: lp_f32_to_f16_array((uint16_t *)(void *)dst, row, (size_t)t->cols); return LP_OK;
    case LP_GGML_TYPE_BF16: lp_f32_to_bf16_array((uint16_t *)(void *)dst, row, (size_t)t->cols); return LP_OK;
    }
    return lp_ggml_quantize_row((enum lp_ggml_type)t->gguf_type, row, dst, t->cols, err);
}

static void *gen_rows(void *arg) {
    struct gen_job *j = arg;
    const struct tensor_spec *t = j->t;
    const struct gen_args *a = j->a;
    float *row = malloc((size_t)t->cols * sizeof(float)); // [cols]
    if (!row) {
        j->status = lp_error_set(&j->err, LP_ERR_NOMEM, "%s: out of memory", t->name);
        return NULL;
    }
    for (int64_t r = j->row_begin; r < j->row_end; r++) {
        fill_gaussian(row, t->cols, mix(j->tensor_seed, (uint64_t)r), t->mean, t->std);
        // The model is its bf16 values: round, then work from the rounded floats.
        for (int64_t c = 0; c < t->cols; c++) row[c] = lp_bf16_to_f32(lp_f32_to_bf16(row[c]));
        if (a->format == FMT_GGUF) {
            j->status = gguf_row(t, row, j->data, r, &j->err);
            if (j->status != LP_OK) break;
        } else if (t->quantized) {
            int64_t words = t->cols * a->bits / 32, groups = t->cols / a->group_size;
            j->status = lp_mlx_quantize(row, 1, t->cols, a->bits, a->group_size, LP_DTYPE_BF16,
                                        (uint32_t *)j->data + r * words,
                                        (uint16_t *)j->scales + r * groups,
                                        (uint16_t *)j->biases + r * groups, &j->err);
            if (j->status != LP_OK) break;
        } else if (a->format == FMT_HF_F32) {
            memcpy((float *)j->data + r * t->cols, row, (size_t)t->cols * sizeof(float));
        } else {
            lp_f32_to_bf16_array((uint16_t *)j->data + r * t->cols, row, (size_t)t->cols);
        }
    }
    free(row);
    return NULL;
}

// Generates tensor t into data (and scales/biases when quantized), using up
// to n_threads threads over rows.
static enum lp_status gen_tensor(const struct gen_args *a, const struct tensor_spec *t,
                                 void *data, void *scales, void *biases, struct lp_error *err) {
    enum { MAX_THREADS = 64 };
    struct gen_job jobs[MAX_THREADS];
    pthread_t tid[MAX_THREADS];
    bool started[MAX_THREADS] = {false};
    int n_threads = a->n_threads;
    if (n_threads > MAX_THREADS) n_threads = MAX_THREADS;
    if ((int64_t)n_threads > t->rows) n_threads = (int)t->rows;
    if (n_threads < 1) n_threads = 1;
    uint64_t tensor_seed = mix(a->seed, fnv1a(t->name));
    for (int i = 0; i < n_threads; i++) {
        jobs[i] = (struct gen_job){
            .a = a,
            .t = t,
            .tensor_seed = tensor_seed,
            .row_begin = t->rows * i / n_threads,
            .row_end = t->rows * (i + 1) / n_threads,
            .data = data,
            .scales = scales,
            .biases = biases,
            .status = LP_OK,
        };
    }
    for (int i = 1; i < n_threads; i++)
        started[i] = pthread_create(&tid[i], NULL, gen_rows, &jobs[i]) == 0;
    gen_rows(&jobs[0]);
    for (int i = 1; i < n_threads; i++) {
        if (started[i])
            pthread_join(tid[i], NULL);
        else
            gen_rows(&jobs[i]); // could not start a thread: do its rows here
    }
    for (int i = 0; i < n_threads; i++) {
        if (jobs[i].status != LP_OK) {
            if (err) *err = jobs[i].err;
            return jobs[i].status;
        }
    }
    return LP_OK;
}

// ---------------------------------------------------------------------------
// JSON files.

static enum lp_status write_json(const char *dir, const char *file, json_t *root,
                                 struct lp_error *err) {
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", dir, file);
    enum lp_status st = LP_OK;
    if (!root) return lp_error_set(err, LP_ERR_NOMEM, "%s: out of memory building JSON", path);
    if (json_dump_file(root, path, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(10)) !=
        0)
        st = lp_error_set(err, LP_ERR_IO, "%s: cannot write", path);
    json_decref(root);
    return st;
}

static void eos_ids(const struct gen_args *a, int *eos0, int *eos1, int *bos) {
    if (a->vocab >= 151646) { // Qwen3's own ids: <|im_end|>, <|endoftext|>
        *eos0 = 151645;
        *eos1 = 151643;
    } else {
        *eos0 = a->vocab - 1;
        *eos1 = a->vocab - 2;
    }
    *bos = *eos1;
}

static enum lp_status write_configs(const struct gen_args *a, struct lp_error *err) {
    int eos0, eos1, bos;
    eos_ids(a, &eos0, &eos1, &bos);
    json_t *c = json_object();
    if (!c) return lp_error_set(err, LP_ERR_NOMEM, "config.json: out of memory");
    json_object_set_new(c, "architectures", json_pack("[s]", "Qwen3ForCausalLM"));
    json_object_set_new(c, "attention_bias", json_false());
    json_object_set_new(c, "attention_dropout", json_real(0.0));
    json_object_set_new(c, "bos_token_id", json_integer(bos));
    json_object_set_new(c, "eos_token_id", json_integer(eos0));
    json_object_set_new(c, "head_dim", json_integer(a->head_dim));
    json_object_set_new(c, "hidden_act", json_string("silu"));
    json_object_set_new(c, "hidden_size", json_integer(a->hidden));
    json_object_set_new(c, "initializer_range", json_real(0.02));
    json_object_set_new(c, "intermediate_size", json_integer(a->intermediate));
    json_object_set_new(c, "max_position_embeddings", json_integer(a->max_pos));
    json_object_set_new(c, "max_window_layers", json_integer(a->n_layers));
    json_object_set_new(c, "model_type", json_string("qwen3"));
    json_object_set_new(c, "num_attention_heads", json_integer(a->n_heads));
    json_object_set_new(c, "num_hidden_layers", json_integer(a->n_layers));
    json_object_set_new(c, "num_key_value_heads", json_integer(a->n_kv_heads));
    if (a->format == FMT_MLX) {
        json_object_set_new(c, "quantization", json_pack("{s:i, s:i}", "group_size",
                                                         a->group_size, "bits", a->bits));
        json_object_set_new(c, "quantization_config", json_pack("{s:i, s:i}", "group_size",
                                                                a->group_size, "bits", a->bits));
    }
    json_object_set_new(c, "rms_norm_eps", json_real(1e-6));
    json_object_set_new(c, "rope_scaling", json_null());
    json_object_set_new(c, "rope_theta", json_real(a->rope_theta));
    json_object_set_new(c, "sliding_window", json_null());
    json_object_set_new(c, "tie_word_embeddings", json_boolean(a->tied));
    json_object_set_new(c, "torch_dtype",
                        json_string(a->format == FMT_HF_F32 ? "float32" : "bfloat16"));
    json_object_set_new(c, "transformers_version", json_string("4.51.0"));
    json_object_set_new(c, "use_cache", json_true());
    json_object_set_new(c, "use_sliding_window", json_false());
    json_object_set_new(c, "vocab_size", json_integer(a->vocab));
    enum lp_status st = write_json(a->out_dir, "config.json", c, err);
    if (st != LP_OK) return st;

    json_t *g = json_pack("{s:i, s:b, s:[i,i], s:f, s:i, s:f, s:s}", "bos_token_id", bos,
                          "do_sample", 1, "eos_token_id", eos0, eos1, "temperature", 0.6,
                          "top_k", 20, "top_p", 0.95, "transformers_version", "4.51.0");
    return write_json(a->out_dir, "generation_config.json", g, err);
}

// ---------------------------------------------------------------------------
// Main flow.

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void shard_file(char *buf, size_t n, const struct gen_args *a, int s) {
    if (a->n_shards == 0)
        snprintf(buf, n, "model.safetensors");
    else
        snprintf(buf, n, "model-%05d-of-%05d.safetensors", s + 1, a->n_shards);
}

static enum lp_status generate(const struct gen_args *a, struct lp_error *err) {
    enum lp_status st = LP_OK;
    struct tensor_list l = {0};
    struct out_entry *e = NULL;
    int n_e = 0;
    int n_files = a->n_shards ? a->n_shards : 1;
    struct lp_safetensors_writer **w = calloc((size_t)n_files, sizeof(*w));
    void *bufs[3] = {NULL, NULL, NULL};
    json_t *index = NULL;
    double t0 = now_s();

    if (!w || build_tensors(a, &l) != 0 || build_entries(a, &l, &e, &n_e) != 0) {
        st = lp_error_set(err, LP_ERR_NOMEM, "out of memory");
        goto done;
    }
    if (n_files > n_e) {
        st = lp_error_set(err, LP_ERR_INVALID_ARG, "--sharded %d: only %d tensors", n_files, n_e);
        goto done;
    }
    assign_shards(e, n_e, n_files);

    if (mkdir(a->out_dir, 0777) != 0 && errno != EEXIST) {
        st = lp_error_set(err, LP_ERR_IO, "%s: mkdir: %s", a->out_dir, strerror(errno));
        goto done;
    }
    st = write_configs(a, err);
    if (st != LP_OK) goto done;

    // Declare every file's tensors, then stream them in order.
    for (int s = 0; s < n_files; s++) {
        st = lp_safetensors_writer_create(&w[s], err);
        if (st != LP_OK) goto done;
        st = lp_safetensors_writer_set_metadata(w[s], "format",
                                                a->format == FMT_MLX ? "mlx" : "pt", err);
        if (st != LP_OK) goto done;
    }
    uint64_t total_bytes = 0;
    for (int i = 0; i < n_e; i++) {
        st = lp_safetensors_writer_add(w[e[i].i_shard], e[i].name, e[i].dtype, e[i].n_dims,
                                       e[i].shape, NULL, err);
        if (st != LP_OK) goto done;
        total_bytes += e[i].n_bytes;
    }
    char file[64], path[4096];
    int s_open = -1;
    uint64_t done_bytes = 0;
    int last_pct = -1;
    for (int i = 0; i < n_e;) {
        const struct tensor_spec *t = &l.items[e[i].i_spec];
        int parts = t->quantized ? 3 : 1;
        for (int p = 0; p < parts; p++) {
            bufs[p] = malloc(e[i + p].n_bytes ? e[i + p].n_bytes : 1);
            if (!bufs[p]) {
                st = lp_error_set(err, LP_ERR_NOMEM, "%s: out of memory (%" PRIu64 " bytes)",
                                  e[i + p].name, e[i + p].n_bytes);
                goto done;
            }
        }
        st = gen_tensor(a, t, bufs[0], bufs[1], bufs[2], err);
        if (st != LP_OK) goto done;
        for (int p = 0; p < parts; p++) {
            const struct out_entry *x = &e[i + p];
            if (x->i_shard != s_open) {
                if (s_open >= 0) {
                    st = lp_safetensors_writer_finish(w[s_open], err);
                    if (st != LP_OK) goto done;
                }
                s_open = x->i_shard;
                shard_file(file, sizeof(file), a, s_open);
                snprintf(path, sizeof(path), "%s/%s", a->out_dir, file);
                st = lp_safetensors_writer_begin(w[s_open], path, err);
                if (st != LP_OK) goto done;
            }
            st = lp_safetensors_writer_put(w[s_open], x->name, bufs[p], (size_t)x->n_bytes, err);
            if (st != LP_OK) goto done;
            done_bytes += x->n_bytes;
            free(bufs[p]);
            bufs[p] = NULL;
        }
        i += parts;
        int pct = (int)(100 * done_bytes / (total_bytes ? total_bytes : 1));
        if (total_bytes > (64u << 20) && pct / 10 != last_pct / 10) {
            fprintf(stderr, "lp_genmodel: %3d%% (%.0f MB, %.1f s)\n", pct,
                    (double)done_bytes / 1e6, now_s() - t0);
            last_pct = pct;
        }
    }
    if (s_open >= 0) {
        st = lp_safetensors_writer_finish(w[s_open], err);
        if (st != LP_OK) goto done;
    }

    if (a->n_shards) {
        json_t *map = json_object();
        index = json_pack("{s:{s:I}, s:o}", "metadata", "total_size", (json_int_t)total_bytes,
                          "weight_map", map);
        if (!index) {
            st = lp_error_set(err, LP_ERR_NOMEM, "index: out of memory");
            goto done;
        }
        for (int i = 0; i < n_e; i++) {
            shard_file(file, sizeof(file), a, e[i].i_shard);
            json_object_set_new(map, e[i].name, json_string(file));
        }
        st = write_json(a->out_dir, "model.safetensors.index.json", index, err);
        index = NULL; // write_json consumed it
        if (st != LP_OK) goto done;
    }
    fprintf(stderr, "lp_genmodel: wrote %s (%s, %d tensors, %.1f MB) in %.1f s\n", a->out_dir,
            a->format_name, n_e, (double)total_bytes / 1e6, now_s() - t0);

done:
    for (int p = 0; p < 3; p++) free(bufs[p]);
    if (w)
        for (int s = 0; s < n_files; s++) lp_safetensors_writer_destroy(w[s]);
    free(w);
    free(e);
    free(l.items);
    if (index) json_decref(index);
    return st;
}

// ---------------------------------------------------------------------------
// GGUF.

// llama.cpp's use_more_bits: the layers Q4_K_M / Q5_K_M give Q6_K to.
static bool use_more_bits(int i, int n) { return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2; }

// The type of each tensor: norms F32 (the converter keeps 1-D tensors in
// F32), 2-D weights the format's, with the _M mix's Q6_K bumps.
static enum lp_status gguf_types(const struct gen_args *a, struct tensor_list *l,
                                 struct lp_error *err) {
    for (int i = 0; i < l->n; i++) {
        struct tensor_spec *t = &l->items[i];
        t->gguf_type = t->is_matrix ? a->gguf->type : LP_GGML_TYPE_F32;
        if (t->is_matrix && a->gguf->mix) {
            int layer = -1;
            bool bump = false;
            if (sscanf(t->name, "model.layers.%d.", &layer) == 1)
                bump = (strstr(t->name, ".v_proj") || strstr(t->name, ".down_proj")) &&
                       use_more_bits(layer, a->n_layers);
            else // the output, and the embedding when it is also the output
                bump = strcmp(t->name, "lm_head") == 0 ||
                       (a->tied && strcmp(t->name, "model.embed_tokens") == 0);
            if (bump) t->gguf_type = LP_GGML_Q6_K;
        }
        int blk = lp_gguf_type_block_elems(t->gguf_type);
        if (t->cols % blk != 0)
            return lp_error_set(err, LP_ERR_INVALID_ARG,
                                "%s: %s rows of %lld are not whole %s blocks of %d (choose "
                                "--hidden, --intermediate and heads x head-dim multiples of %d)",
                                a->gguf->name, t->name, (long long)t->cols,
                                lp_gguf_type_name(t->gguf_type), blk, blk);
    }
    return LP_OK;
}

#define W_TRY(expr)                                                                                \
    do {                                                                                           \
        if ((st = (expr)) != LP_OK) return st;                                                     \
    } while (0)

static enum lp_status put_u32(struct lp_gguf_writer *w, const char *key, uint32_t v,
                              struct lp_error *err) {
    return lp_gguf_writer_add_scalar(w, key, LP_GGUF_TYPE_UINT32, &v, err);
}

static enum lp_status put_f32(struct lp_gguf_writer *w, const char *key, float v,
                              struct lp_error *err) {
    return lp_gguf_writer_add_scalar(w, key, LP_GGUF_TYPE_FLOAT32, &v, err);
}

// The metadata llama.cpp's converter writes for Qwen3 (first file only).
static enum lp_status gguf_metadata(const struct gen_args *a, struct lp_gguf_writer *w,
                                    struct lp_error *err) {
    enum lp_status st;
    W_TRY(lp_gguf_writer_add_str(w, "general.architecture", "qwen3", err));
    W_TRY(lp_gguf_writer_add_str(w, "general.name", "layerpipe-genmodel", err));
    if (a->vocab_only) return lp_tokenizer_gguf_write(w, a->tokenizer_dir, a->vocab, err);
    W_TRY(put_u32(w, "general.file_type", a->gguf->file_type, err));
    if (lp_gguf_type_block_elems(a->gguf->type) > 1)
        W_TRY(put_u32(w, "general.quantization_version", 2, err));
    W_TRY(put_u32(w, "qwen3.block_count", (uint32_t)a->n_layers, err));
    W_TRY(put_u32(w, "qwen3.context_length", (uint32_t)a->max_pos, err));
    W_TRY(put_u32(w, "qwen3.embedding_length", (uint32_t)a->hidden, err));
    W_TRY(put_u32(w, "qwen3.feed_forward_length", (uint32_t)a->intermediate, err));
    W_TRY(put_u32(w, "qwen3.attention.head_count", (uint32_t)a->n_heads, err));
    W_TRY(put_u32(w, "qwen3.attention.head_count_kv", (uint32_t)a->n_kv_heads, err));
    W_TRY(put_f32(w, "qwen3.rope.freq_base", (float)a->rope_theta, err));
    W_TRY(put_f32(w, "qwen3.attention.layer_norm_rms_epsilon", 1e-6f, err));
    W_TRY(put_u32(w, "qwen3.attention.key_length", (uint32_t)a->head_dim, err));
    W_TRY(put_u32(w, "qwen3.attention.value_length", (uint32_t)a->head_dim, err));
    if (a->tokenizer_dir) return lp_tokenizer_gguf_write(w, a->tokenizer_dir, a->vocab, err);
    // no tokenizer: the special ids of config.json / generation_config.json
    int eos0, eos1, bos;
    eos_ids(a, &eos0, &eos1, &bos);
    W_TRY(put_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)bos, err));
    W_TRY(put_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)eos0, err));
    return put_u32(w, "tokenizer.ggml.eot_token_id", (uint32_t)eos1, err);
}
#undef W_TRY

static void gguf_file(char *buf, size_t n, const struct gen_args *a, int s) {
    if (a->n_shards == 0)
        snprintf(buf, n, "%s/model.gguf", a->out_dir);
    else
        snprintf(buf, n, "%s/model-%05d-of-%05d.gguf", a->out_dir, s + 1, a->n_shards);
}

static enum lp_status generate_gguf(const struct gen_args *a, struct lp_error *err) {
    enum lp_status st = LP_OK;
    struct tensor_list l = {0};
    struct out_entry *e = NULL;
    int n_files = a->n_shards ? a->n_shards : 1;
    struct lp_gguf_writer **w = calloc((size_t)n_files, sizeof *w);
    void *buf = NULL;
    double t0 = now_s();
    if (!w) return lp_error_set(err, LP_ERR_NOMEM, "out of memory");
    if (!a->vocab_only) {
        if (build_tensors(a, &l) != 0 || !(e = calloc((size_t)l.n, sizeof *e))) {
            st = lp_error_set(err, LP_ERR_NOMEM, "out of memory");
            goto done;
        }
        if ((st = gguf_types(a, &l, err)) != LP_OK) goto done;
        if (n_files > l.n) {
            st = lp_error_set(err, LP_ERR_INVALID_ARG, "--sharded %d: only %d tensors", n_files,
                              l.n);
            goto done;
        }
        for (int i = 0; i < l.n; i++) {
            const struct tensor_spec *t = &l.items[i];
            char hf[160];
            snprintf(hf, sizeof hf, "%s%s", t->name, t->is_matrix ? ".weight" : "");
            if (!lp_gguf_name_from_hf(hf, e[i].name, sizeof e[i].name)) {
                st = lp_error_set(err, LP_ERR_INTERNAL, "%s has no GGUF name", hf);
                goto done;
            }
            e[i].n_bytes = (uint64_t)t->rows * gguf_row_bytes(t);
            e[i].i_spec = i;
        }
        assign_shards(e, l.n, n_files);
    }
    if (mkdir(a->out_dir, 0777) != 0 && errno != EEXIST) {
        st = lp_error_set(err, LP_ERR_IO, "%s: mkdir: %s", a->out_dir, strerror(errno));
        goto done;
    }
    for (int s = 0; s < n_files; s++) {
        if ((st = lp_gguf_writer_create(&w[s], err)) != LP_OK) goto done;
        if (s == 0 && (st = gguf_metadata(a, w[0], err)) != LP_OK) goto done;
        if (n_files > 1) {
            uint16_t no = (uint16_t)s, count = (uint16_t)n_files;
            int32_t total = l.n;
            if ((st = lp_gguf_writer_add_scalar(w[s], "split.no", LP_GGUF_TYPE_UINT16, &no, err)) ||
                (st = lp_gguf_writer_add_scalar(w[s], "split.count", LP_GGUF_TYPE_UINT16, &count,
                                                err)) ||
                (st = lp_gguf_writer_add_scalar(w[s], "split.tensors.count", LP_GGUF_TYPE_INT32,
                                                &total, err)))
                goto done;
        }
    }
    for (int i = 0; i < l.n; i++) {
        const struct tensor_spec *t = &l.items[i];
        int64_t ne[2] = {t->cols, t->rows};
        st = lp_gguf_writer_add_tensor(w[e[i].i_shard], e[i].name, t->gguf_type,
                                       t->is_matrix ? 2 : 1, ne, err);
        if (st != LP_OK) goto done;
    }
    uint64_t total_bytes = 0;
    char path[4096];
    for (int s = 0; s < n_files; s++) total_bytes += lp_gguf_writer_data_bytes(w[s]);
    int s_open = -1;
    if (l.n == 0) { // metadata only
        gguf_file(path, sizeof path, a, 0);
        if ((st = lp_gguf_writer_begin(w[0], path, err)) || (st = lp_gguf_writer_finish(w[0], err)))
            goto done;
    }
    for (int i = 0; i < l.n; i++) {
        const struct tensor_spec *t = &l.items[i];
        if (!(buf = malloc(e[i].n_bytes ? e[i].n_bytes : 1))) {
            st = lp_error_set(err, LP_ERR_NOMEM, "%s: out of memory", t->name);
            goto done;
        }
        if ((st = gen_tensor(a, t, buf, NULL, NULL, err)) != LP_OK) goto done;
        if (e[i].i_shard != s_open) {
            if (s_open >= 0 && (st = lp_gguf_writer_finish(w[s_open], err)) != LP_OK) goto done;
            s_open = e[i].i_shard;
            gguf_file(path, sizeof path, a, s_open);
            if ((st = lp_gguf_writer_begin(w[s_open], path, err)) != LP_OK) goto done;
        }
        st = lp_gguf_writer_put(w[s_open], e[i].name, buf, (size_t)e[i].n_bytes, err);
        free(buf);
        buf = NULL;
        if (st != LP_OK) goto done;
    }
    if (s_open >= 0 && (st = lp_gguf_writer_finish(w[s_open], err)) != LP_OK) goto done;
    fprintf(stderr, "lp_genmodel: wrote %s (%s, %d tensors, %.1f MB) in %.1f s\n", a->out_dir,
            a->vocab_only ? "vocabulary" : a->gguf->name, l.n, (double)total_bytes / 1e6,
            now_s() - t0);
done:
    free(buf);
    for (int s = 0; s < n_files; s++) lp_gguf_writer_destroy(w[s]);
    free(w);
    free(e);
    free(l.items);
    return st;
}

// ---------------------------------------------------------------------------
// Arguments.

static void usage(FILE *f) {
    fprintf(f,
            "usage: lp_genmodel --out DIR --seed S --format FORMAT [--group 64]\n"
            "         --layers L --hidden H --heads NH --kv-heads NKV --head-dim HD\n"
            "         --intermediate I --vocab V [--tied 0|1] [--max-pos N] [--rope-theta T]\n"
            "         [--sharded N] [--threads N] [--tokenizer TOKDIR]\n"
            "       lp_genmodel --out DIR --vocab-only TOKDIR [--vocab V]\n"
            "FORMAT: hf-bf16 hf-f32 mlx8 mlx4, or gguf-f32 gguf-f16 gguf-bf16 gguf-q8_0\n"
            "        gguf-q4_0 gguf-q4_k gguf-q5_k gguf-q6_k gguf-q4_k_m gguf-q5_k_m\n"
            "Writes a random Qwen3 model folder (config.json, generation_config.json,\n"
            "model.safetensors or N shards + model.safetensors.index.json), or for GGUF\n"
            "DIR/model.gguf (N splits: model-0000k-of-0000N.gguf), with TOKDIR's\n"
            "tokenizer in its metadata if given (--vocab-only: only that).\n");
}

static bool parse_int(const char *s, long lo, long hi, int *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) return false;
    *out = (int)v;
    return true;
}

int main(int argc, char **argv) {
    struct gen_args a = {
        .group_size = 64,
        .tied = true,
        .max_pos = 40960,
        .rope_theta = 1000000.0,
        .n_layers = -1, .hidden = -1, .n_heads = -1, .n_kv_heads = -1,
        .head_dim = -1, .intermediate = -1, .vocab = -1,
    };
    bool have_seed = false;
    long n_cpu = sysconf(_SC_NPROCESSORS_ONLN);
    a.n_threads = n_cpu > 0 ? (int)(n_cpu > 16 ? 16 : n_cpu) : 1;

    for (int i = 1; i < argc; i++) {
        const char *k = argv[i];
        if (strcmp(k, "-h") == 0 || strcmp(k, "--help") == 0) {
            usage(stdout);
            return 0;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "lp_genmodel: %s needs a value\n", k);
            usage(stderr);
            return 2;
        }
        const char *v = argv[++i];
        bool ok = true;
        int tmp;
        if (strcmp(k, "--out") == 0) {
            a.out_dir = v;
        } else if (strcmp(k, "--seed") == 0) {
            char *end;
            errno = 0;
            a.seed = strtoull(v, &end, 0);
            ok = !errno && end != v && !*end;
            have_seed = ok;
        } else if (strcmp(k, "--format") == 0) {
            a.format_name = v;
            if (strcmp(v, "hf-bf16") == 0) {
                a.format = FMT_HF_BF16;
            } else if (strcmp(v, "hf-f32") == 0) {
                a.format = FMT_HF_F32;
            } else if (strcmp(v, "mlx8") == 0) {
                a.format = FMT_MLX;
                a.bits = 8;
            } else if (strcmp(v, "mlx4") == 0) {
                a.format = FMT_MLX;
                a.bits = 4;
            } else {
                ok = false;
                for (size_t f = 0; f < sizeof GGUF_FORMATS / sizeof GGUF_FORMATS[0]; f++)
                    if (strcmp(v, GGUF_FORMATS[f].name) == 0) {
                        a.format = FMT_GGUF;
                        a.gguf = &GGUF_FORMATS[f];
                        ok = true;
                    }
            }
        } else if (strcmp(k, "--tokenizer") == 0) {
            a.tokenizer_dir = v;
        } else if (strcmp(k, "--vocab-only") == 0) {
            a.tokenizer_dir = v;
            a.vocab_only = true;
        } else if (strcmp(k, "--group") == 0) {
            ok = parse_int(v, 32, 128, &a.group_size) &&
                 (a.group_size == 32 || a.group_size == 64 || a.group_size == 128);
        } else if (strcmp(k, "--layers") == 0) {
            ok = parse_int(v, 1, 1000, &a.n_layers);
        } else if (strcmp(k, "--hidden") == 0) {
            ok = parse_int(v, 1, 1 << 16, &a.hidden);
        } else if (strcmp(k, "--heads") == 0) {
            ok = parse_int(v, 1, 1024, &a.n_heads);
        } else if (strcmp(k, "--kv-heads") == 0) {
            ok = parse_int(v, 1, 1024, &a.n_kv_heads);
        } else if (strcmp(k, "--head-dim") == 0) {
            ok = parse_int(v, 2, 1024, &a.head_dim) && a.head_dim % 2 == 0;
        } else if (strcmp(k, "--intermediate") == 0) {
            ok = parse_int(v, 1, 1 << 18, &a.intermediate);
        } else if (strcmp(k, "--vocab") == 0) {
            ok = parse_int(v, 2, 1 << 22, &a.vocab);
        } else if (strcmp(k, "--tied") == 0) {
            ok = parse_int(v, 0, 1, &tmp);
            a.tied = tmp != 0;
        } else if (strcmp(k, "--max-pos") == 0) {
            ok = parse_int(v, 1, 1 << 24, &a.max_pos);
        } else if (strcmp(k, "--rope-theta") == 0) {
            char *end;
            a.rope_theta = strtod(v, &end);
            ok = end != v && !*end && a.rope_theta > 0;
        } else if (strcmp(k, "--sharded") == 0) {
            ok = parse_int(v, 1, 99999, &a.n_shards);
        } else if (strcmp(k, "--threads") == 0) {
            ok = parse_int(v, 1, 64, &a.n_threads);
        } else {
            fprintf(stderr, "lp_genmodel: unknown option %s\n", k);
            usage(stderr);
            return 2;
        }
        if (!ok) {
            fprintf(stderr, "lp_genmodel: bad value for %s: '%s'\n", k, v);
            return 2;
        }
    }
    struct lp_error err = {0};
    if (a.out_dir && a.vocab_only) {
        a.format = FMT_GGUF;
        if (generate_gguf(&a, &err) != LP_OK) {
            fprintf(stderr, "lp_genmodel: %s\n", err.msg);
            return 1;
        }
        return 0;
    }
    if (!a.out_dir || !have_seed || !a.format_name || a.n_layers < 0 || a.hidden < 0 ||
        a.n_heads < 0 || a.n_kv_heads < 0 || a.head_dim < 0 || a.intermediate < 0 ||
        a.vocab < 0) {
        fprintf(stderr, "lp_genmodel: missing a required option\n");
        usage(stderr);
        return 2;
    }
    if (a.n_heads % a.n_kv_heads != 0) {
        fprintf(stderr, "lp_genmodel: --heads %d is not a multiple of --kv-heads %d\n", a.n_heads,
                a.n_kv_heads);
        return 2;
    }
    if (a.format == FMT_MLX && a.hidden % a.group_size != 0) {
        fprintf(stderr, "lp_genmodel: --hidden %d is not a multiple of --group %d\n", a.hidden,
                a.group_size);
        return 2;
    }
    if ((a.format == FMT_GGUF ? generate_gguf(&a, &err) : generate(&a, &err)) != LP_OK) {
        fprintf(stderr, "lp_genmodel: %s\n", err.msg);
        return 1;
    }
    return 0;
}
