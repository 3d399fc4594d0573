// SPDX-License-Identifier: MIT
// model.c -- a Qwen3 model folder: config, generation defaults and the
// weight table. Weights are borrowed views into the memory-mapped
// safetensors files (one, or the shards of model.safetensors.index.json);
// only the tensors of the requested layers (and embedding/head) are
// validated and touched, so a pipeline stage never pages in the rest.
// Each matrix is float (F32/F16/BF16) or MLX affine-quantized (the .weight
// of uint32 codes plus .scales and .biases); bits and group size are
// derived from each tensor's shapes (MLX allows per-layer overrides of the
// config's "quantization"), and must be 4/8 and 32/64/128. A GGUF model (a
// .gguf file, or a folder without config.json holding one) comes through
// gguf_model.c as the same kind of weight files, its blocks as GGML weights.
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "util/fp16.h"
#include "model/internal.h"

#define LP_MAX_SHARDS 1024
#define LP_MAX_CONFIG_BYTES ((size_t)16 << 20)

struct lp_model {
    struct lp_model_config config;
    struct lp_generation_config gen;
    struct lp_model_load_params loaded;
    char *dir;                       // owned
    int n_files;
    struct lp_st_file **files;       // [n_files], owned
    struct lp_layer_weights *layers; // [config.n_layers]; only the loaded range is filled
    struct lp_weight embedding;
    struct lp_weight head;
    float *final_norm;               // [hidden], owned; NULL when the head is not loaded
    bool has_embedding, has_head;
    size_t weight_bytes;
    uint64_t config_hash;            // FNV-1a of config.json's bytes
    int cur_layer;                   // the layer being loaded (-1: embedding, head, norm)
    int n_used, cap_used;
    struct lp_model_tensor *used;    // [n_used] every tensor the load took, owned
};

struct lp_model_load_params lp_model_load_params_default(void) {
    struct lp_model_load_params p = {
        .layer_begin = 0, .layer_end = -1, .load_embed = true, .load_head = true};
    return p;
}

static char *path_join(const char *dir, const char *name) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%s/%s", dir, name);
    return p;
}

// Finds a tensor in any of the files; NULL if absent.
static const struct lp_st_tensor *model_find(const struct lp_model *m, const char *name) {
    for (int i = 0; i < m->n_files; i++) {
        const struct lp_st_tensor *t = lp_st_find(m->files[i], name);
        if (t) return t;
    }
    return NULL;
}

// Notes that the load took tensor t (for lp_model_tensor_hashes).
static enum lp_status model_use(struct lp_model *m, const struct lp_st_tensor *t,
                                struct lp_error *err) {
    int file = -1;
    for (int i = 0; i < m->n_files && file < 0; i++) {
        const uint8_t *base = m->files[i]->map, *p = t->data;
        if (p >= base && p < base + m->files[i]->map_bytes) file = i;
    }
    return lp_model_note_tensor(m, file, t->name, t->data, t->nbytes, err);
}

enum lp_status lp_model_note_tensor(struct lp_model *m, int file, const char *name,
                                    const void *data, size_t nbytes, struct lp_error *err) {
    if (m->n_used == m->cap_used) {
        int cap = m->cap_used ? 2 * m->cap_used : 64;
        struct lp_model_tensor *u = realloc(m->used, (size_t)cap * sizeof *u);
        if (!u) return lp_error_set(err, LP_ERR_NOMEM, "out of memory");
        m->used = u;
        m->cap_used = cap;
    }
    m->used[m->n_used++] = (struct lp_model_tensor){.name = name, .layer = m->cur_layer,
                                                    .file = file, .data = data,
                                                    .nbytes = nbytes};
    return LP_OK;
}

struct lp_model_tensor *lp_model_tensors(struct lp_model *m, int *n) {
    *n = m->n_used;
    return m->used;
}

const char *lp_model_file_path(const struct lp_model *m, int file) {
    return file >= 0 && file < m->n_files ? m->files[file]->path : NULL;
}

const void *lp_model_file_base(const struct lp_model *m, int file) {
    return file >= 0 && file < m->n_files ? m->files[file]->map : NULL;
}

static enum lp_status model_open_file(struct lp_model *m, const char *name, struct lp_error *err) {
    if (strchr(name, '/') || strcmp(name, "..") == 0)
        return lp_error_set(err, LP_ERR_FORMAT,
                            "%s/model.safetensors.index.json: shard name '%s' must be a plain "
                            "file name",
                            m->dir, name);
    if (m->n_files >= LP_MAX_SHARDS)
        return lp_error_set(err, LP_ERR_FORMAT, "%s: more than %d shards", m->dir, LP_MAX_SHARDS);
    char *path = path_join(m->dir, name);
    if (!path) return lp_error_set(err, LP_ERR_NOMEM, "out of memory");
    struct lp_st_file *f;
    enum lp_status st = lp_st_open(&f, path, err);
    free(path);
    if (st != LP_OK) return st;
    m->files[m->n_files++] = f;
    return LP_OK;
}

// Opens model.safetensors, or every shard named in the index's weight_map.
static enum lp_status model_open_weights(struct lp_model *m, struct lp_error *err) {
    m->files = calloc(LP_MAX_SHARDS, sizeof *m->files);
    if (!m->files) return lp_error_set(err, LP_ERR_NOMEM, "out of memory");
    char *index_path = path_join(m->dir, "model.safetensors.index.json");
    if (!index_path) return lp_error_set(err, LP_ERR_NOMEM, "out of memory");
    enum lp_status st;
    if (access(index_path, F_OK) != 0) {
        free(index_path);
        st = model_open_file(m, "model.safetensors", err);
        if (st != LP_OK)
            lp_error_prefix(err, "no model.safetensors.index.json and no usable single file: ");
        return st;
    }
    char *text = NULL;
    st = lp_read_file(index_path, LP_MAX_CONFIG_BYTES, &text, NULL, err);
    if (st != LP_OK) {
        free(index_path);
        return st;
    }
    json_error_t jerr;
    json_t *root = json_loads(text, 0, &jerr);
    free(text);
    json_t *map = root ? json_object_get(root, "weight_map") : NULL;
    if (!json_is_object(map)) {
        st = lp_error_set(err, LP_ERR_FORMAT, "%s: %s", index_path,
                          root ? "missing object field 'weight_map'" : jerr.text);
        goto done;
    }
    const char *key;
    json_t *value;
    json_object_foreach(map, key, value) {
        const char *file = json_string_value(value);
        if (!file) {
            st = lp_error_set(err, LP_ERR_FORMAT, "%s: weight_map['%s'] is not a file name",
                              index_path, key);
            goto done;
        }
        bool open_already = false;
        for (int i = 0; i < m->n_files; i++) {
            const char *p = m->files[i]->path;
            size_t lp = strlen(p), lf = strlen(file);
            open_already |= lp > lf && p[lp - lf - 1] == '/' && strcmp(p + lp - lf, file) == 0;
        }
        if (open_already) continue;
        st = model_open_file(m, file, err);
        if (st != LP_OK) goto done;
    }
    st = LP_OK;
done:
    json_decref(root);
    free(index_path);
    return st;
}

// A float32 copy of a 1-D tensor of n elements (F32, F16 or BF16).
static enum lp_status model_vector(struct lp_model *m, const char *name, int64_t n, float **out,
                                   struct lp_error *err) {
    *out = NULL;
    const struct lp_st_tensor *t = model_find(m, name);
    if (!t) return lp_error_set(err, LP_ERR_FORMAT, "%s: missing tensor '%s'", m->dir, name);
    if (t->n_dims != 1 || t->shape[0] != n)
        return lp_error_set(err, LP_ERR_FORMAT, "%s: tensor '%s': shape must be [%lld]", m->dir,
                            name, (long long)n);
    if (t->ggml)
        return lp_error_set(err, LP_ERR_FORMAT, "%s: tensor '%s': %s blocks, expected a float",
                            m->dir, name, lp_ggml_type_name(t->ggml_type));
    enum lp_status st = model_use(m, t, err);
    if (st != LP_OK) return st;
    float *v = malloc((size_t)n * sizeof *v);
    if (!v) return lp_error_set(err, LP_ERR_NOMEM, "out of memory");
    for (int64_t i = 0; i < n; i++) {
        switch (t->dtype) {
        case LP_DTYPE_F32: v[i] = ((const float *)t->data)[i]; break;
        case LP_DTYPE_F16: v[i] = lp_f16_to_f32(((const uint16_t *)t->data)[i]); break;
        case LP_DTYPE_BF16: v[i] = lp_bf16_to_f32(((const uint16_t *)t->data)[i]); break;
        default:
            free(v);
            return lp_error_set(err, LP_ERR_FORMAT, "%s: tensor '%s': dtype %s, expected a float",
                                m->dir, name, lp_dtype_name(t->dtype));
        }
    }
    m->weight_bytes += t->nbytes;
    *out = v;
    return LP_OK;
}

static enum lp_status check_2d(const struct lp_model *m, const struct lp_st_tensor *t,
                               const char *name, int64_t rows, int64_t cols, struct lp_error *err) {
    if (t->n_dims != 2 || t->shape[0] != rows || t->shape[1] != cols)
        return lp_error_set(err, LP_ERR_FORMAT,
                            "%s: tensor '%s': shape [%lld, %lld] expected (from config.json)",
                            m->dir, name, (long long)rows, (long long)cols);
    return LP_OK;
}

// The matrix `prefix`.weight of shape [rows, cols]: float, or MLX affine
// when `prefix`.scales exists.
static enum lp_status model_matrix(struct lp_model *m, const char *prefix, int64_t rows,
                                   int64_t cols, struct lp_weight *w, struct lp_error *err) {
    char name[256], sname[256], bname[256];
    snprintf(name, sizeof name, "%s.weight", prefix);
    snprintf(sname, sizeof sname, "%s.scales", prefix);
    snprintf(bname, sizeof bname, "%s.biases", prefix);
    memset(w, 0, sizeof *w);
    w->rows = rows;
    w->cols = cols;
    const struct lp_st_tensor *t = model_find(m, name);
    if (!t) return lp_error_set(err, LP_ERR_FORMAT, "%s: missing tensor '%s'", m->dir, name);
    const struct lp_st_tensor *s = model_find(m, sname);
    if (!s) {
        enum lp_status st = check_2d(m, t, name, rows, cols, err);
        if (st != LP_OK) return st;
        if (t->ggml) { // rows of whole blocks: checked by the GGUF reader
            w->format = LP_WEIGHT_GGML;
            w->ggml_type = t->ggml_type;
            w->data = t->data;
            m->weight_bytes += t->nbytes;
            return model_use(m, t, err);
        }
        switch (t->dtype) {
        case LP_DTYPE_F32: w->format = LP_WEIGHT_F32; break;
        case LP_DTYPE_F16: w->format = LP_WEIGHT_F16; break;
        case LP_DTYPE_BF16: w->format = LP_WEIGHT_BF16; break;
        default:
            return lp_error_set(err, LP_ERR_FORMAT,
                                "%s: tensor '%s': dtype %s, expected F32, F16 or BF16 (or U32 "
                                "with .scales and .biases)",
                                m->dir, name, lp_dtype_name(t->dtype));
        }
        w->data = t->data;
        m->weight_bytes += t->nbytes;
        return model_use(m, t, err);
    }
    const struct lp_st_tensor *b = model_find(m, bname);
    if (!b)
        return lp_error_set(err, LP_ERR_FORMAT, "%s: missing tensor '%s' (MLX quantized '%s')",
                            m->dir, bname, prefix);
    if (t->dtype != LP_DTYPE_U32)
        return lp_error_set(err, LP_ERR_FORMAT, "%s: tensor '%s': dtype %s, MLX codes must be U32",
                            m->dir, name, lp_dtype_name(t->dtype));
    if (t->n_dims != 2 || t->shape[0] != rows || t->shape[1] <= 0 ||
        (t->shape[1] * 32) % cols != 0)
        return lp_error_set(err, LP_ERR_FORMAT,
                            "%s: tensor '%s': shape must be [%lld, %lld * bits / 32]", m->dir,
                            name, (long long)rows, (long long)cols);
    int64_t bits = t->shape[1] * 32 / cols;
    if (bits != 4 && bits != 8)
        return lp_error_set(err, LP_ERR_UNSUPPORTED,
                            "%s: tensor '%s': %lld-bit codes, supported: 4 and 8", m->dir, name,
                            (long long)bits);
    if (s->n_dims != 2 || s->shape[0] != rows || s->shape[1] <= 0 || cols % s->shape[1] != 0)
        return lp_error_set(err, LP_ERR_FORMAT,
                            "%s: tensor '%s': shape must be [%lld, %lld / group_size]", m->dir,
                            sname, (long long)rows, (long long)cols);
    int64_t group = cols / s->shape[1];
    if (group != 32 && group != 64 && group != 128)
        return lp_error_set(err, LP_ERR_UNSUPPORTED,
                            "%s: tensor '%s': group size %lld, supported: 32, 64, 128", m->dir,
                            sname, (long long)group);
    if (s->dtype != LP_DTYPE_BF16 && s->dtype != LP_DTYPE_F16)
        return lp_error_set(err, LP_ERR_FORMAT, "%s: tensor '%s': dtype %s, expected BF16 or F16",
                            m->dir, sname, lp_dtype_name(s->dtype));
    if (b->dtype != s->dtype || b->n_dims != 2 || b->shape[0] != s->shape[0] ||
        b->shape[1] != s->shape[1])
        return lp_error_set(err, LP_ERR_FORMAT,
                            "%s: tensor '%s': dtype and shape must match '%s'", m->dir, bname,
                            sname);
    w->format = LP_WEIGHT_MLX_AFFINE;
    w->data = t->data;
    w->scales = s->data;
    w->biases = b->data;
    w->scale_dtype = s->dtype;
    w->bits = (int)bits;
    w->group_size = (int)group;
    m->weight_bytes += t->nbytes + s->nbytes + b->nbytes;
    enum lp_status st = model_use(m, t, err);
    if (st == LP_OK) st = model_use(m, s, err);
    if (st == LP_OK) st = model_use(m, b, err);
    return st;
}

static enum lp_status model_load_layer(struct lp_model *m, int i, struct lp_error *err) {
    const struct lp_model_config *c = &m->config;
    struct lp_layer_weights *L = &m->layers[i];
    m->cur_layer = i;
    char p[128], n[160];
    int64_t d = c->hidden_size, q = (int64_t)c->n_heads * c->head_dim,
            kv = (int64_t)c->n_kv_heads * c->head_dim, ff = c->intermediate_size;
    enum lp_status st;
#define LAYER_VEC(field, suffix, len)                                                              \
    snprintf(n, sizeof n, "model.layers.%d.%s.weight", i, suffix);                                 \
    if ((st = model_vector(m, n, len, &L->field, err)) != LP_OK) return st;
#define LAYER_MAT(field, suffix, rows, cols)                                                       \
    snprintf(p, sizeof p, "model.layers.%d.%s", i, suffix);                                        \
    if ((st = model_matrix(m, p, rows, cols, &L->field, err)) != LP_OK) return st;
    LAYER_VEC(attn_norm, "input_layernorm", d);
    LAYER_VEC(ffn_norm, "post_attention_layernorm", d);
    LAYER_VEC(q_norm, "self_attn.q_norm", c->head_dim);
    LAYER_VEC(k_norm, "self_attn.k_norm", c->head_dim);
    LAYER_MAT(wq, "self_attn.q_proj", q, d);
    LAYER_MAT(wk, "self_attn.k_proj", kv, d);
    LAYER_MAT(wv, "self_attn.v_proj", kv, d);
    LAYER_MAT(wo, "self_attn.o_proj", d, q);
    LAYER_MAT(w_gate, "mlp.gate_proj", ff, d);
    LAYER_MAT(w_up, "mlp.up_proj", ff, d);
    LAYER_MAT(w_down, "mlp.down_proj", d, ff);
#undef LAYER_VEC
#undef LAYER_MAT
    return LP_OK;
}

static enum lp_status model_read_configs(struct lp_model *m, struct lp_error *err) {
    char *path = path_join(m->dir, "config.json");
    char *text = NULL;
    if (!path) return lp_error_set(err, LP_ERR_NOMEM, "out of memory");
    size_t n_text = 0;
    enum lp_status st = lp_read_file(path, LP_MAX_CONFIG_BYTES, &text, &n_text, err);
    if (st == LP_OK) st = lp_config_parse(&m->config, text, path, err);
    if (st == LP_OK) m->config_hash = lp_fnv1a64(0xcbf29ce484222325ull, text, n_text);
    free(text);
    free(path);
    if (st != LP_OK) return st;
    lp_generation_config_default(&m->gen);
    path = path_join(m->dir, "generation_config.json");
    if (!path) return lp_error_set(err, LP_ERR_NOMEM, "out of memory");
    if (access(path, F_OK) == 0) {
        st = lp_read_file(path, LP_MAX_CONFIG_BYTES, &text, NULL, err);
        if (st == LP_OK) st = lp_generation_config_parse(&m->gen, &m->config, text, path, err);
        free(text);
    }
    free(path);
    return st;
}

// A weight file with layers past num_hidden_layers means another model (or
// a wrong config): refuse it rather than run a truncated one.
static enum lp_status model_check_layer_names(const struct lp_model *m, struct lp_error *err) {
    for (int i = 0; i < m->n_files; i++)
        for (int j = 0; j < m->files[i]->n_tensors; j++) {
            const char *name = m->files[i]->tensors[j].name;
            if (strncmp(name, "model.layers.", 13) != 0) continue;
            char *end = NULL;
            long layer = strtol(name + 13, &end, 10);
            if (end == name + 13 || *end != '.') continue;
            if (layer >= m->config.n_layers)
                return lp_error_set(err, LP_ERR_FORMAT,
                                    "%s: tensor '%s' is for layer %ld, but config.json has "
                                    "num_hidden_layers %d",
                                    m->dir, name, layer, m->config.n_layers);
        }
    return LP_OK;
}

// A GGUF model: its files, config and generation defaults at once.
static enum lp_status model_open_gguf(struct lp_model *m, struct lp_error *err) {
    m->files = calloc(LP_MAX_SHARDS, sizeof *m->files);
    if (!m->files) return lp_error_set(err, LP_ERR_NOMEM, "out of memory");
    return lp_gguf_model_open(m->dir, m->files, LP_MAX_SHARDS, &m->n_files, &m->config, &m->gen,
                              &m->config_hash, err);
}

enum lp_status lp_model_open(struct lp_model **out, const char *dir,
                             const struct lp_model_load_params *params, struct lp_error *err) {
    *out = NULL;
    struct lp_model *m = calloc(1, sizeof *m);
    if (!m) return lp_error_set(err, LP_ERR_NOMEM, "out of memory");
    enum lp_status st;
    m->dir = strdup(dir);
    if (!m->dir) {
        st = lp_error_set(err, LP_ERR_NOMEM, "out of memory");
        goto fail;
    }
    bool gguf = lp_gguf_model_is(dir);
    if ((st = gguf ? model_open_gguf(m, err) : model_read_configs(m, err)) != LP_OK) goto fail;
    const struct lp_model_config *c = &m->config;
    m->loaded = params ? *params : lp_model_load_params_default();
    if (m->loaded.layer_end == -1) m->loaded.layer_end = c->n_layers;
    if (m->loaded.layer_begin < 0 || m->loaded.layer_begin > m->loaded.layer_end ||
        m->loaded.layer_end > c->n_layers) {
        st = lp_error_set(err, LP_ERR_INVALID_ARG,
                          "%s: layer range [%d, %d) is outside the model's %d layers", dir,
                          m->loaded.layer_begin, m->loaded.layer_end, c->n_layers);
        goto fail;
    }
    if (!gguf && (st = model_open_weights(m, err)) != LP_OK) goto fail;
    if ((st = model_check_layer_names(m, err)) != LP_OK) goto fail;
    m->layers = calloc((size_t)c->n_layers, sizeof *m->layers);
    if (!m->layers) {
        st = lp_error_set(err, LP_ERR_NOMEM, "out of memory");
        goto fail;
    }
    for (int i = m->loaded.layer_begin; i < m->loaded.layer_end; i++)
        if ((st = model_load_layer(m, i, err)) != LP_OK) goto fail;
    m->cur_layer = -1;
    bool need_embed = m->loaded.load_embed || (m->loaded.load_head && c->tie_word_embeddings);
    if (need_embed) {
        st = model_matrix(m, "model.embed_tokens", c->vocab_size, c->hidden_size, &m->embedding,
                          err);
        if (st != LP_OK) goto fail;
        m->has_embedding = m->loaded.load_embed;
    }
    if (m->loaded.load_head) {
        if (c->tie_word_embeddings) {
            m->head = m->embedding;
        } else {
            st = model_matrix(m, "lm_head", c->vocab_size, c->hidden_size, &m->head, err);
            if (st != LP_OK) {
                lp_error_prefix(err, "tie_word_embeddings is false, so lm_head is needed: ");
                goto fail;
            }
        }
        st = model_vector(m, "model.norm.weight", c->hidden_size, &m->final_norm, err);
        if (st != LP_OK) goto fail;
        m->has_head = true;
    }
    *out = m;
    return LP_OK;
fail:
    lp_model_close(m);
    return st;
}

void lp_model_close(struct lp_model *m) {
    if (!m) return;
    if (m->layers) {
        for (int i = 0; i < m->config.n_layers; i++) {
            free(m->layers[i].attn_norm);
            free(m->layers[i].ffn_norm);
            free(m->layers[i].q_norm);
            free(m->layers[i].k_norm);
        }
        free(m->layers);
    }
    free(m->final_norm);
    free(m->used);
    for (int i = 0; i < m->n_files; i++) lp_st_close(m->files[i]);
    free(m->files);
    free(m->dir);
    free(m);
}

const struct lp_model_config *lp_model_config(const struct lp_model *m) {
    return &m->config;
}

const struct lp_generation_config *lp_model_generation_config(const struct lp_model *m) {
    return &m->gen;
}

const struct lp_model_load_params *lp_model_loaded(const struct lp_model *m) {
    return &m->loaded;
}

const struct lp_layer_weights *lp_model_layer(const struct lp_model *m, int i) {
    if (i < m->loaded.layer_begin || i >= m->loaded.layer_end) return NULL;
    return &m->layers[i];
}

const struct lp_weight *lp_model_embedding(const struct lp_model *m) {
    return m->has_embedding ? &m->embedding : NULL;
}

const struct lp_weight *lp_model_head(const struct lp_model *m) {
    return m->has_head ? &m->head : NULL;
}

const float *lp_model_final_norm(const struct lp_model *m) {
    return m->final_norm;
}

size_t lp_model_weight_bytes(const struct lp_model *m) {
    return m->weight_bytes;
}

uint64_t lp_fnv1a64(uint64_t h, const void *data, size_t n) {
    const uint8_t *p = data;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

static int name_cmp(const void *a, const void *b) {
    const struct lp_st_tensor *const *x = a, *const *y = b;
    return strcmp((*x)->name, (*y)->name);
}

// Hash of config.json (of a GGUF's metadata), every tensor's name, dtype
// (block type) and shape in name order,
// and up to 3 x 16 sampled bytes of each tensor (start, middle, end): two
// folders with equal fingerprints hold the same model for all practical
// purposes, at the cost of touching three pages per tensor.
uint64_t lp_model_fingerprint(const struct lp_model *m) {
    size_t n = 0;
    for (int i = 0; i < m->n_files; i++) n += (size_t)m->files[i]->n_tensors;
    const struct lp_st_tensor **all = malloc((n ? n : 1) * sizeof *all);
    uint64_t h = lp_fnv1a64(0xcbf29ce484222325ull, &m->config_hash, sizeof m->config_hash);
    if (!all) return 0;
    size_t k = 0;
    for (int i = 0; i < m->n_files; i++)
        for (int j = 0; j < m->files[i]->n_tensors; j++) all[k++] = &m->files[i]->tensors[j];
    qsort(all, n, sizeof *all, name_cmp);
    for (size_t i = 0; i < n; i++) {
        const struct lp_st_tensor *t = all[i];
        int32_t meta[2 + LP_ST_MAX_DIMS] = {(int32_t)t->dtype, t->n_dims};
        for (int d = 0; d < t->n_dims; d++) meta[2 + d] = (int32_t)t->shape[d];
        h = lp_fnv1a64(h, t->name, strlen(t->name));
        h = lp_fnv1a64(h, meta, sizeof meta);
        if (t->ggml) h = lp_fnv1a64(h, &t->ggml_type, sizeof t->ggml_type);
        size_t take = t->nbytes < 16 ? t->nbytes : 16;
        const uint8_t *p = t->data;
        h = lp_fnv1a64(h, p, take);
        h = lp_fnv1a64(h, p + (t->nbytes - take) / 2, take);
        h = lp_fnv1a64(h, p + t->nbytes - take, take);
    }
    free(all);
    return h;
}

struct lp_st_file *const *lp_model_files(const struct lp_model *m, int *n_files) {
    *n_files = m->n_files;
    return m->files;
}

const char *lp_model_dir(const struct lp_model *m) { return m->dir; }
