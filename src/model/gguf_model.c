// SPDX-License-Identifier: MIT
// gguf_model.c -- a Qwen3 GGUF model (one file or gguf-split's
// NAME-0000k-of-0000N.gguf) as the model module's weight files: each GGUF
// file becomes an lp_st_file view whose tensors carry the HF names
// (blk.3.attn_q.weight -> model.layers.3.self_attn.q_proj.weight) and
// PyTorch-order shapes, so model.c builds the same weight table from either
// container. GGUF's q/k rows for Qwen3 are in HF's order: llama.cpp's
// converter permutes q/k only for its LLaMA family, and runs Qwen2/Qwen3
// with NeoX RoPE, which is HF's rotate_half. The qwen3.* metadata is
// translated into the config.json HF would have and checked by the same
// lp_config_parse; general.sampling.* keys give the generation defaults.
#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "model/internal.h"

// ---- finding the files -----------------------------------------------------------

#define SPLIT_SUFFIX_LEN 20 // "-00001-of-00003.gguf"

// NAME-0000k-of-0000N.gguf: the prefix length, k and N; false for other names.
static bool split_name(const char *file, size_t *prefix, int *k, int *n) {
    size_t len = strlen(file);
    if (len <= SPLIT_SUFFIX_LEN) return false;
    const char *s = file + len - SPLIT_SUFFIX_LEN;
    unsigned a, b;
    char tail[8];
    if (s[0] != '-' || sscanf(s, "-%5u-of-%5u%7s", &a, &b, tail) != 3 || strcmp(tail, ".gguf") != 0)
        return false;
    for (int i = 1; i <= 5; i++)
        if (s[i] < '0' || s[i] > '9' || s[i + 9] < '0' || s[i + 9] > '9') return false;
    if (a < 1 || b < 1 || a > b) return false;
    *prefix = len - SPLIT_SUFFIX_LEN;
    *k = (int)a;
    *n = (int)b;
    return true;
}

static bool ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

void lp_gguf_paths_free(char **paths, int n) {
    if (!paths) return;
    for (int i = 0; i < n; i++) free(paths[i]);
    free(paths);
}

// The N paths of the split set that `path` (whose file part starts at
// `base`) belongs to, checking that each exists.
static enum lp_status split_paths(const char *path, size_t base, size_t prefix, int n,
                                  char ***out, int *n_out, struct lp_error *err) {
    char **p = calloc((size_t)n, sizeof *p);
    if (!p) return lp_error_set(err, LP_ERR_NOMEM, "out of memory");
    size_t cap = base + prefix + SPLIT_SUFFIX_LEN + 1;
    for (int i = 0; i < n; i++) {
        p[i] = malloc(cap);
        if (!p[i]) {
            lp_gguf_paths_free(p, n);
            return lp_error_set(err, LP_ERR_NOMEM, "out of memory");
        }
        snprintf(p[i], cap, "%.*s-%05d-of-%05d.gguf", (int)(base + prefix), path, i + 1, n);
        struct stat sb;
        if (stat(p[i], &sb) != 0 || !S_ISREG(sb.st_mode)) {
            enum lp_status st = lp_error_set(err, LP_ERR_IO,
                                             "%s: split %d of %d of this model is missing", p[i],
                                             i + 1, n);
            lp_gguf_paths_free(p, n);
            return st;
        }
    }
    *out = p;
    *n_out = n;
    return LP_OK;
}

// The paths of the model file `path` (a split set, or itself).
static enum lp_status file_paths(const char *path, char ***out, int *n_out, struct lp_error *err) {
    const char *slash = strrchr(path, '/');
    size_t base = slash ? (size_t)(slash + 1 - path) : 0, prefix;
    int k, n;
    if (split_name(path + base, &prefix, &k, &n))
        return split_paths(path, base, prefix, n, out, n_out, err);
    char **p = calloc(1, sizeof *p);
    if (!p || !(p[0] = strdup(path))) {
        free(p);
        return lp_error_set(err, LP_ERR_NOMEM, "out of memory");
    }
    *out = p;
    *n_out = 1;
    return LP_OK;
}

// The model a candidate file belongs to: a split's prefix, or the whole name.
static size_t model_key(const char *name, bool *split) {
    size_t prefix;
    int k, n;
    *split = split_name(name, &prefix, &k, &n);
    return *split ? prefix : strlen(name);
}

static bool same_model(const char *a, const char *b) {
    bool sa, sb;
    size_t ka = model_key(a, &sa), kb = model_key(b, &sb);
    return sa && sb && ka == kb && strncmp(a, b, ka) == 0;
}

static bool is_candidate(const char *name) {
    return ends_with(name, ".gguf") && strncmp(name, "mmproj", 6) != 0;
}

// The one model among the folder's *.gguf files.
static enum lp_status dir_paths(const char *dir, char ***out, int *n_out, struct lp_error *err) {
    DIR *d = opendir(dir);
    if (!d) return lp_error_set(err, LP_ERR_IO, "%s: %s", dir, strerror(errno));
    char first[256] = "", second[256] = "";
    int n_models = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        const char *name = e->d_name;
        if (!is_candidate(name) || strlen(name) >= sizeof first) continue;
        if (n_models > 0 && same_model(name, first)) continue;
        if (n_models > 1 && same_model(name, second)) continue;
        if (n_models == 0) snprintf(first, sizeof first, "%s", name);
        if (n_models == 1) snprintf(second, sizeof second, "%s", name);
        n_models++; // the splits of a third model count again: only 1, 2 and more matter
    }
    closedir(d);
    if (n_models == 0) return lp_error_set(err, LP_ERR_IO, "%s: no .gguf file", dir);
    if (n_models > 1)
        return lp_error_set(err, LP_ERR_INVALID_ARG,
                            "%s holds more than one GGUF model (%s, %s%s): name the file to use",
                            dir, first, second, n_models > 2 ? ", ..." : "");
    size_t n = strlen(dir) + strlen(first) + 2;
    char *path = malloc(n);
    if (!path) return lp_error_set(err, LP_ERR_NOMEM, "out of memory");
    snprintf(path, n, "%s/%s", dir, first);
    enum lp_status st = file_paths(path, out, n_out, err);
    free(path);
    return st;
}

enum lp_status lp_gguf_model_paths(const char *path, char ***out, int *n_out,
                                   struct lp_error *err) {
    *out = NULL;
    *n_out = 0;
    struct stat sb;
    if (stat(path, &sb) != 0) return lp_error_set(err, LP_ERR_IO, "%s: %s", path, strerror(errno));
    if (S_ISDIR(sb.st_mode)) return dir_paths(path, out, n_out, err);
    return file_paths(path, out, n_out, err);
}

bool lp_gguf_model_is(const char *path) {
    struct stat sb;
    if (stat(path, &sb) != 0) return false;
    if (!S_ISDIR(sb.st_mode)) return true;
    size_t n = strlen(path) + 16;
    char *cfg = malloc(n);
    if (!cfg) return false;
    snprintf(cfg, n, "%s/config.json", path);
    bool has_config = stat(cfg, &sb) == 0;
    free(cfg);
    if (has_config) return false; // an HF folder, whatever else it holds
    DIR *d = opendir(path);
    bool any = false;
    struct dirent *e;
    while (d && !any && (e = readdir(d)) != NULL) any = is_candidate(e->d_name);
    if (d) closedir(d);
    return any;
}

// ---- tensor names ------------------------------------------------------------------

// GGUF tensor names (llama.cpp's tensor_mapping) and the HF names they stand for.
static const struct {
    const char *gguf, *hf;
} BLOCK_NAMES[] = {
    {"attn_norm", "input_layernorm"},       {"ffn_norm", "post_attention_layernorm"},
    {"attn_q", "self_attn.q_proj"},         {"attn_k", "self_attn.k_proj"},
    {"attn_v", "self_attn.v_proj"},         {"attn_output", "self_attn.o_proj"},
    {"attn_q_norm", "self_attn.q_norm"},    {"attn_k_norm", "self_attn.k_norm"},
    {"ffn_gate", "mlp.gate_proj"},          {"ffn_up", "mlp.up_proj"},
    {"ffn_down", "mlp.down_proj"},
};
static const struct {
    const char *gguf, *hf;
} TOP_NAMES[] = {
    {"token_embd", "model.embed_tokens"}, {"output_norm", "model.norm"}, {"output", "lm_head"}};

void lp_gguf_name_to_hf(const char *name, char *out, size_t n) {
    const char *dot = strrchr(name, '.');
    const char *suffix = dot ? dot : ""; // ".weight" / ".bias"
    size_t stem = dot ? (size_t)(dot - name) : strlen(name);
    if (strncmp(name, "blk.", 4) == 0) {
        char *end;
        long layer = strtol(name + 4, &end, 10);
        if (name[4] >= '0' && name[4] <= '9' && *end == '.') {
            const char *part = end + 1;
            size_t n_part = part <= name + stem ? stem - (size_t)(part - name) : 0;
            for (size_t i = 0; i < sizeof BLOCK_NAMES / sizeof BLOCK_NAMES[0]; i++)
                if (strlen(BLOCK_NAMES[i].gguf) == n_part &&
                    strncmp(part, BLOCK_NAMES[i].gguf, n_part) == 0) {
                    snprintf(out, n, "model.layers.%ld.%s%s", layer, BLOCK_NAMES[i].hf, suffix);
                    return;
                }
            snprintf(out, n, "model.layers.%ld.%s", layer, part);
            return;
        }
    }
    for (size_t i = 0; i < sizeof TOP_NAMES / sizeof TOP_NAMES[0]; i++)
        if (strlen(TOP_NAMES[i].gguf) == stem && strncmp(name, TOP_NAMES[i].gguf, stem) == 0) {
            snprintf(out, n, "%s%s", TOP_NAMES[i].hf, suffix);
            return;
        }
    snprintf(out, n, "%s", name);
}

bool lp_gguf_name_from_hf(const char *hf, char *out, size_t n) {
    const char *dot = strrchr(hf, '.');
    const char *suffix = dot ? dot : "";
    size_t stem = dot ? (size_t)(dot - hf) : strlen(hf);
    if (strncmp(hf, "model.layers.", 13) == 0) {
        char *end;
        long layer = strtol(hf + 13, &end, 10);
        if (hf[13] >= '0' && hf[13] <= '9' && *end == '.') {
            const char *part = end + 1;
            size_t n_part = part <= hf + stem ? stem - (size_t)(part - hf) : 0;
            for (size_t i = 0; i < sizeof BLOCK_NAMES / sizeof BLOCK_NAMES[0]; i++)
                if (strlen(BLOCK_NAMES[i].hf) == n_part &&
                    strncmp(part, BLOCK_NAMES[i].hf, n_part) == 0) {
                    snprintf(out, n, "blk.%ld.%s%s", layer, BLOCK_NAMES[i].gguf, suffix);
                    return true;
                }
        }
    }
    for (size_t i = 0; i < sizeof TOP_NAMES / sizeof TOP_NAMES[0]; i++)
        if (strlen(TOP_NAMES[i].hf) == stem && strncmp(hf, TOP_NAMES[i].hf, stem) == 0) {
            snprintf(out, n, "%s%s", TOP_NAMES[i].gguf, suffix);
            return true;
        }
    return false;
}

static int st_tensor_cmp(const void *a, const void *b) {
    return strcmp(((const struct lp_st_tensor *)a)->name, ((const struct lp_st_tensor *)b)->name);
}

// The view of an opened GGUF file as a weight file (takes g, also on failure).
static enum lp_status gguf_view(struct lp_gguf *g, struct lp_st_file **out, struct lp_error *err) {
    *out = NULL;
    struct lp_st_file *f = calloc(1, sizeof *f);
    int64_t n = lp_gguf_n_tensors(g);
    if (n > INT32_MAX) { // the message first: closing g frees its name
        lp_error_set(err, LP_ERR_FORMAT, "%s: %lld tensors, at most %d", lp_gguf_name(g),
                     (long long)n, INT32_MAX);
        free(f);
        lp_gguf_close(g);
        return LP_ERR_FORMAT;
    }
    if (!f || !(f->path = strdup(lp_gguf_name(g))) ||
        !(f->tensors = calloc((size_t)(n ? n : 1), sizeof *f->tensors))) {
        lp_error_set(err, LP_ERR_NOMEM, "%s: out of memory", lp_gguf_name(g));
        if (f) free(f->path);
        free(f);
        lp_gguf_close(g);
        return LP_ERR_NOMEM;
    }
    f->gguf = g;
    f->map = (void *)lp_gguf_image(g, &f->map_bytes);
    for (int64_t i = 0; i < n; i++) {
        const struct lp_gguf_tensor *gt = lp_gguf_tensor_at(g, i);
        struct lp_st_tensor *t = &f->tensors[i];
        char name[LP_GGUF_MAX_NAME + 64];
        lp_gguf_name_to_hf(gt->name, name, sizeof name);
        if (!(t->name = strdup(name))) { // the message first: lp_st_close closes g too
            lp_error_set(err, LP_ERR_NOMEM, "%s: out of memory", lp_gguf_name(g));
            lp_st_close(f);
            return LP_ERR_NOMEM;
        }
        f->n_tensors++;
        t->n_dims = gt->n_dims;
        for (int d = 0; d < gt->n_dims; d++) t->shape[d] = gt->ne[gt->n_dims - 1 - d];
        t->data = gt->data;
        t->nbytes = gt->n_bytes;
        switch (gt->type) {
        case LP_GGML_TYPE_F32: t->dtype = LP_DTYPE_F32; break;
        case LP_GGML_TYPE_F16: t->dtype = LP_DTYPE_F16; break;
        case LP_GGML_TYPE_BF16: t->dtype = LP_DTYPE_BF16; break;
        default: // a block type (the reader accepts no other)
            t->dtype = LP_DTYPE_U8;
            t->ggml = true;
            t->ggml_type = (enum lp_ggml_type)gt->type;
        }
    }
    qsort(f->tensors, (size_t)f->n_tensors, sizeof *f->tensors, st_tensor_cmp);
    for (int i = 1; i < f->n_tensors; i++)
        if (strcmp(f->tensors[i - 1].name, f->tensors[i].name) == 0) {
            enum lp_status st = lp_error_set(err, LP_ERR_FORMAT,
                                             "%s: two tensors stand for '%s'", f->path,
                                             f->tensors[i].name);
            lp_st_close(f);
            return st;
        }
    *out = f;
    return LP_OK;
}

// ---- metadata -> config.json ---------------------------------------------------------

// Sets JSON field `field` from integer key `key` (required, or skipped when absent).
static enum lp_status put_int(json_t *c, const struct lp_gguf *g, const char *key,
                              const char *field, bool required, struct lp_error *err) {
    if (!required && !lp_gguf_find_kv(g, key)) return LP_OK;
    int64_t v;
    enum lp_status st = lp_gguf_get_int(g, key, 0, INT32_MAX, &v, err);
    if (st == LP_OK) json_object_set_new(c, field, json_integer(v));
    return st;
}

static enum lp_status put_float(json_t *c, const struct lp_gguf *g, const char *key,
                                const char *field, struct lp_error *err) {
    if (!lp_gguf_find_kv(g, key)) return LP_OK;
    double v;
    enum lp_status st = lp_gguf_get_float(g, key, 0, 1e12, &v, err);
    if (st == LP_OK) json_object_set_new(c, field, json_real(v));
    return st;
}

static const struct lp_gguf_tensor *find_any(struct lp_st_file *const *files, int n,
                                             const char *name) {
    for (int i = 0; i < n; i++) {
        const struct lp_gguf_tensor *t = lp_gguf_find_tensor(files[i]->gguf, name);
        if (t) return t;
    }
    return NULL;
}

// The end-of-generation ids: tokenizer.ggml.eos/eot/eom_token_id, and the
// tokens llama.cpp also ends a turn at that Qwen has (<|im_end|>,
// <|endoftext|>), as HF's generation_config.json lists them.
static enum lp_status put_eos(json_t *c, const struct lp_gguf *g, int64_t vocab,
                              struct lp_error *err) {
    json_t *ids = json_array();
    if (!ids) return lp_error_set(err, LP_ERR_NOMEM, "out of memory");
    json_object_set_new(c, "eos_token_id", ids);
    static const char *keys[] = {"tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id",
                                 "tokenizer.ggml.eom_token_id"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        int64_t id;
        if (!lp_gguf_find_kv(g, keys[i])) continue;
        enum lp_status st = lp_gguf_get_int(g, keys[i], 0, vocab - 1, &id, err);
        if (st != LP_OK) return st;
        json_array_append_new(ids, json_integer(id));
    }
    const struct lp_gguf_kv *tokens = lp_gguf_find_kv(g, "tokenizer.ggml.tokens");
    if (!tokens || tokens->type != LP_GGUF_TYPE_ARRAY || tokens->elem_type != LP_GGUF_TYPE_STRING)
        return LP_OK; // the tokenizer loader reports a missing or malformed list
    struct lp_gguf_str *strs = malloc((size_t)(tokens->n_elems ? tokens->n_elems : 1) * sizeof *strs);
    if (!strs) return lp_error_set(err, LP_ERR_NOMEM, "out of memory");
    lp_gguf_array_strs(tokens, strs);
    for (uint64_t i = 0; i < tokens->n_elems && (int64_t)i < vocab; i++)
        if (lp_gguf_str_eq(strs[i], "<|im_end|>") || lp_gguf_str_eq(strs[i], "<|endoftext|>"))
            json_array_append_new(ids, json_integer((json_int_t)i));
    free(strs);
    return LP_OK;
}

// The config.json of the model, from its first file's metadata.
static enum lp_status meta_config(struct lp_st_file *const *files, int n_files, char **text,
                                  struct lp_error *err) {
    const struct lp_gguf *g = files[0]->gguf;
    const char *name = lp_gguf_name(g);
    struct lp_gguf_str arch;
    enum lp_status st = lp_gguf_get_str(g, "general.architecture", &arch, err);
    if (st != LP_OK) return st;
    if (!lp_gguf_str_eq(arch, "qwen3"))
        return lp_error_set(err, LP_ERR_UNSUPPORTED,
                            "%s: general.architecture '%.*s' is not supported (layerpipe runs "
                            "'qwen3')",
                            name, (int)(arch.n_bytes > 40 ? 40 : arch.n_bytes), arch.ptr);
    const struct lp_gguf_tensor *embd = find_any(files, n_files, "token_embd.weight");
    if (!embd || embd->n_dims != 2)
        return lp_error_set(err, LP_ERR_FORMAT,
                            "%s: no 2-D tensor 'token_embd.weight' (its rows are the vocabulary)",
                            name);
    json_t *c = json_object();
    if (!c) return lp_error_set(err, LP_ERR_NOMEM, "out of memory");
    json_object_set_new(c, "model_type", json_string("qwen3"));
    json_object_set_new(c, "vocab_size", json_integer(embd->ne[1] > INT32_MAX ? -1 : embd->ne[1]));
#define TRY(expr)                                                                                  \
    if ((st = (expr)) != LP_OK) goto done
    TRY(put_int(c, g, "qwen3.block_count", "num_hidden_layers", true, err));
    TRY(put_int(c, g, "qwen3.embedding_length", "hidden_size", true, err));
    TRY(put_int(c, g, "qwen3.feed_forward_length", "intermediate_size", true, err));
    TRY(put_int(c, g, "qwen3.attention.head_count", "num_attention_heads", true, err));
    TRY(put_int(c, g, "qwen3.attention.head_count_kv", "num_key_value_heads", false, err));
    TRY(put_int(c, g, "qwen3.context_length", "max_position_embeddings", true, err));
    TRY(put_int(c, g, "tokenizer.ggml.bos_token_id", "bos_token_id", false, err));
    // llama.cpp's default head size is embedding_length / head_count
    json_int_t hidden = json_integer_value(json_object_get(c, "hidden_size"));
    json_int_t heads = json_integer_value(json_object_get(c, "num_attention_heads"));
    json_object_set_new(c, "head_dim", json_integer(heads > 0 ? hidden / heads : 0));
    TRY(put_int(c, g, "qwen3.attention.key_length", "head_dim", false, err));
    if (lp_gguf_find_kv(g, "qwen3.attention.value_length")) {
        int64_t v;
        TRY(lp_gguf_get_int(g, "qwen3.attention.value_length", 0, INT32_MAX, &v, err));
        if (v != json_integer_value(json_object_get(c, "head_dim"))) {
            st = lp_error_set(err, LP_ERR_UNSUPPORTED,
                              "%s: qwen3.attention.value_length %lld differs from the key length "
                              "%lld",
                              name, (long long)v,
                              (long long)json_integer_value(json_object_get(c, "head_dim")));
            goto done;
        }
    }
    TRY(put_float(c, g, "qwen3.attention.layer_norm_rms_epsilon", "rms_norm_eps", err));
    if (!json_object_get(c, "rms_norm_eps")) { // llama.cpp requires it too
        st = lp_error_set(err, LP_ERR_FORMAT,
                          "%s: missing metadata key 'qwen3.attention.layer_norm_rms_epsilon'",
                          name);
        goto done;
    }
    json_object_set_new(c, "rope_theta", json_real(10000.0)); // llama.cpp's default freq_base
    TRY(put_float(c, g, "qwen3.rope.freq_base", "rope_theta", err));
    if (lp_gguf_find_kv(g, "qwen3.rope.scaling.type")) {
        struct lp_gguf_str t;
        TRY(lp_gguf_get_str(g, "qwen3.rope.scaling.type", &t, err));
        if (!lp_gguf_str_eq(t, "none")) {
            st = lp_error_set(err, LP_ERR_UNSUPPORTED,
                              "%s: qwen3.rope.scaling.type '%.*s' is not supported (only none)",
                              name, (int)(t.n_bytes > 40 ? 40 : t.n_bytes), t.ptr);
            goto done;
        }
    }
    json_object_set_new(c, "tie_word_embeddings",
                        json_boolean(find_any(files, n_files, "output.weight") == NULL));
    json_object_set_new(c, "attention_bias",
                        json_boolean(find_any(files, n_files, "blk.0.attn_q.bias") != NULL));
    TRY(put_eos(c, g, embd->ne[1], err));
#undef TRY
    *text = json_dumps(c, JSON_COMPACT | JSON_SORT_KEYS | JSON_REAL_PRECISION(17));
    if (!*text) st = lp_error_set(err, LP_ERR_NOMEM, "out of memory");
done:
    json_decref(c);
    return st;
}

// general.sampling.* (gguf-py's keys for generation defaults); HF's
// defaults when there are none.
static enum lp_status meta_generation(const struct lp_gguf *g, struct lp_generation_config *gen,
                                      struct lp_error *err) {
    lp_generation_config_default(gen);
    static const struct {
        const char *key;
        double lo, hi;
    } keys[] = {{"general.sampling.temp", 0, 100},
                {"general.sampling.top_k", 0, INT32_MAX},
                {"general.sampling.top_p", 0, 1},
                {"general.sampling.min_p", 0, 1},
                {"general.sampling.penalty_repeat", 0, 100}};
    double v[5];
    bool any = false;
    for (int i = 0; i < 5; i++) {
        const struct lp_gguf_kv *kv = lp_gguf_find_kv(g, keys[i].key);
        if (!kv) {
            v[i] = -1;
            continue;
        }
        enum lp_status st;
        if (i == 1) {
            int64_t k;
            st = lp_gguf_get_int(g, keys[i].key, 0, INT32_MAX, &k, err);
            v[i] = (double)k;
        } else {
            st = lp_gguf_get_float(g, keys[i].key, keys[i].lo, keys[i].hi, &v[i], err);
        }
        if (st != LP_OK) return st;
        any = true;
    }
    if (v[0] >= 0) gen->temperature = (float)v[0];
    if (v[1] >= 0) gen->top_k = (int)v[1];
    if (v[2] >= 0) gen->top_p = (float)v[2];
    if (v[3] >= 0) gen->min_p = (float)v[3];
    if (v[4] >= 0) gen->repetition_penalty = (float)v[4];
    gen->do_sample = any && gen->temperature > 0;
    return LP_OK;
}

// FNV-1a of every metadata pair of the first file (key, type, value) but
// gguf-split's split.* keys, so one model split or whole hashes the same.
static uint64_t meta_hash(const struct lp_gguf *g) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (int64_t i = 0; i < lp_gguf_n_kv(g); i++) {
        const struct lp_gguf_kv *kv = lp_gguf_kv_at(g, i);
        if (kv->key.n_bytes >= 6 && memcmp(kv->key.ptr, "split.", 6) == 0) continue;
        uint32_t types[2] = {kv->type, kv->elem_type};
        h = lp_fnv1a64(h, kv->key.ptr, kv->key.n_bytes);
        h = lp_fnv1a64(h, types, sizeof types);
        h = lp_fnv1a64(h, kv->value, kv->value_bytes);
    }
    return h;
}

// gguf-split's keys: file i of n says split.no i (the first also
// split.count n and split.tensors.count); a file that is a split of
// another name is refused rather than run without its other parts.
static enum lp_status check_split(const struct lp_gguf *g, int i, int n, int64_t *n_tensors,
                                  struct lp_error *err) {
    int64_t v = 0;
    enum lp_status st;
    if (n == 1) {
        if (!lp_gguf_find_kv(g, "split.count")) return LP_OK;
        if ((st = lp_gguf_get_int(g, "split.count", 0, 65535, &v, err)) != LP_OK) return st;
        if (v > 1)
            return lp_error_set(err, LP_ERR_FORMAT,
                                "%s: split.count %lld: this is one split of a model; name it "
                                "NAME-00001-of-%05lld.gguf beside the others",
                                lp_gguf_name(g), (long long)v, (long long)v);
        return LP_OK;
    }
    if ((st = lp_gguf_get_int(g, "split.no", 0, 65535, &v, err)) != LP_OK) return st;
    if (v != i)
        return lp_error_set(err, LP_ERR_FORMAT, "%s: split.no %lld, expected %d (of %d)",
                            lp_gguf_name(g), (long long)v, i, n);
    if (i > 0) return LP_OK;
    if ((st = lp_gguf_get_int(g, "split.count", 0, 65535, &v, err)) != LP_OK) return st;
    if (v != n)
        return lp_error_set(err, LP_ERR_FORMAT, "%s: split.count %lld, but the name says %d",
                            lp_gguf_name(g), (long long)v, n);
    return lp_gguf_get_int(g, "split.tensors.count", 0, INT32_MAX, n_tensors, err);
}

enum lp_status lp_gguf_model_open(const char *path, struct lp_st_file **files, int max_files,
                                  int *n_files, struct lp_model_config *cfg,
                                  struct lp_generation_config *gen, uint64_t *config_hash,
                                  struct lp_error *err) {
    char **paths = NULL;
    int n_paths = 0;
    char *text = NULL;
    enum lp_status st = lp_gguf_model_paths(path, &paths, &n_paths, err);
    if (st != LP_OK) return st;
    if (n_paths > max_files) {
        st = lp_error_set(err, LP_ERR_FORMAT, "%s: %d splits, more than %d", path, n_paths,
                          max_files);
        goto done;
    }
    int64_t want_tensors = -1, have_tensors = 0;
    for (int i = 0; i < n_paths; i++) {
        struct lp_gguf *g;
        if ((st = lp_gguf_open(&g, paths[i], err)) != LP_OK) goto done;
        if ((st = check_split(g, i, n_paths, &want_tensors, err)) != LP_OK) {
            lp_gguf_close(g);
            goto done;
        }
        have_tensors += lp_gguf_n_tensors(g);
        if ((st = gguf_view(g, &files[*n_files], err)) != LP_OK) goto done;
        (*n_files)++;
    }
    if (want_tensors >= 0 && want_tensors != have_tensors) {
        st = lp_error_set(err, LP_ERR_FORMAT,
                          "%s: split.tensors.count says %lld tensors, the %d splits hold %lld",
                          paths[0], (long long)want_tensors, n_paths, (long long)have_tensors);
        goto done;
    }
    if ((st = meta_config(files, *n_files, &text, err)) != LP_OK) goto done;
    char label[600];
    snprintf(label, sizeof label, "%s (qwen3 metadata as config.json)", paths[0]);
    if ((st = lp_config_parse(cfg, text, label, err)) != LP_OK) goto done;
    if ((st = meta_generation(files[0]->gguf, gen, err)) != LP_OK) goto done;
    *config_hash = meta_hash(files[0]->gguf);
done:
    free(text);
    lp_gguf_paths_free(paths, n_paths);
    return st;
}
