// SPDX-License-Identifier: MIT
// lp_genmodel.c -- writes a random Qwen3 model folder in a real on-disk
// format (HF safetensors in bf16 or f32, or MLX affine 8/4-bit), so tests can
// run real-format models of any shape without downloads.
// Every weight is drawn from a PRNG seeded by (--seed, tensor name, row), then
// rounded to bf16: the bf16 values are "the model", and every format of one
// seed describes that same model (hf-f32 stores them widened exactly; mlx*
// is what mlx_lm.convert would make of the hf-bf16 folder). The same
// arguments give the same bytes. Tensors are generated, converted and written
// one at a time (rows split over threads), so memory stays near the size of
// the largest converted tensor.
//
// Usage: lp_genmodel --out DIR --seed S --format hf-bf16|hf-f32|mlx8|mlx4
//          [--group 64] --layers L --hidden H --heads NH --kv-heads NKV
//          --head-dim HD --intermediate I --vocab V [--tied 0|1]
//          [--max-pos N] [--rope-theta T] [--sharded N] [--threads N]
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
#include "util/fp16.h"

enum gen_format { FMT_HF_BF16, FMT_HF_F32, FMT_MLX };

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
};

// How one tensor's values are drawn: value = mean + std * N(0, 1).
struct tensor_spec {
    char name[128];  // HF name without the ".weight" suffix for matrices (see below)
    bool is_matrix;  // [rows, cols] Linear/Embedding, else a vector [rows * cols == cols]
    int64_t rows, cols;
    float mean, std;
    bool quantized;  // MLX: stored as .weight/.scales/.biases
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
        if (t->quantized) {
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
// Arguments.

static void usage(FILE *f) {
    fprintf(f,
            "usage: lp_genmodel --out DIR --seed S --format hf-bf16|hf-f32|mlx8|mlx4 [--group 64]\n"
            "         --layers L --hidden H --heads NH --kv-heads NKV --head-dim HD\n"
            "         --intermediate I --vocab V [--tied 0|1] [--max-pos N] [--rope-theta T]\n"
            "         [--sharded N] [--threads N]\n"
            "Writes a random Qwen3 model folder (config.json, generation_config.json,\n"
            "model.safetensors or N shards + model.safetensors.index.json).\n");
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
            }
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
    struct lp_error err = {0};
    if (generate(&a, &err) != LP_OK) {
        fprintf(stderr, "lp_genmodel: %s\n", err.msg);
        return 1;
    }
    return 0;
}
