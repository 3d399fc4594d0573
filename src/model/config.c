// SPDX-License-Identifier: MIT
// config.c -- config.json and generation_config.json of a Qwen3 folder.
// Fields take HF's Qwen3Config / GenerationConfig defaults when optional;
// the shape fields are required because no default can match a weight file.
// Every error names the file and the field.
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "model/internal.h"

enum lp_status lp_read_file(const char *path, size_t max_bytes, char **out, size_t *out_bytes,
                            struct lp_error *err) {
    *out = NULL;
    FILE *fp = fopen(path, "rb");
    if (!fp) return lp_error_set(err, LP_ERR_IO, "%s: open: %s", path, strerror(errno));
    enum lp_status st = LP_OK;
    char *buf = NULL;
    struct stat sb;
    if (fstat(fileno(fp), &sb) != 0 || !S_ISREG(sb.st_mode)) {
        st = lp_error_set(err, LP_ERR_IO, "%s: not a regular file", path);
        goto done;
    }
    if ((uint64_t)sb.st_size > max_bytes) {
        st = lp_error_set(err, LP_ERR_FORMAT, "%s: %lld bytes, more than the %zu allowed", path,
                          (long long)sb.st_size, max_bytes);
        goto done;
    }
    size_t n = (size_t)sb.st_size;
    buf = malloc(n + 1);
    if (!buf) {
        st = lp_error_set(err, LP_ERR_NOMEM, "%s: out of memory", path);
        goto done;
    }
    if (fread(buf, 1, n, fp) != n) {
        st = lp_error_set(err, LP_ERR_IO, "%s: read failed", path);
        free(buf);
        buf = NULL;
        goto done;
    }
    buf[n] = '\0';
    *out = buf;
    if (out_bytes) *out_bytes = n;
done:
    fclose(fp);
    return st;
}

// Reads an integer field; `required` fields must exist. Range [lo, hi].
static enum lp_status cfg_int(const json_t *root, const char *key, bool required, int def, int lo,
                              int hi, int *out, const char *file, struct lp_error *err) {
    const json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) {
        if (required)
            return lp_error_set(err, LP_ERR_FORMAT, "%s: missing required field '%s'", file, key);
        *out = def;
        return LP_OK;
    }
    if (!json_is_integer(v))
        return lp_error_set(err, LP_ERR_FORMAT, "%s: field '%s' must be an integer", file, key);
    json_int_t x = json_integer_value(v);
    if (x < lo || x > hi)
        return lp_error_set(err, LP_ERR_FORMAT, "%s: field '%s' is %lld, expected %d..%d", file,
                            key, (long long)x, lo, hi);
    *out = (int)x;
    return LP_OK;
}

static enum lp_status cfg_float(const json_t *root, const char *key, float def, float lo, float hi,
                                float *out, const char *file, struct lp_error *err) {
    const json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) {
        *out = def;
        return LP_OK;
    }
    if (!json_is_number(v))
        return lp_error_set(err, LP_ERR_FORMAT, "%s: field '%s' must be a number", file, key);
    double x = json_number_value(v);
    if (!(x >= lo && x <= hi))
        return lp_error_set(err, LP_ERR_FORMAT, "%s: field '%s' is %g, expected %g..%g", file, key,
                            x, (double)lo, (double)hi);
    *out = (float)x;
    return LP_OK;
}

static enum lp_status cfg_bool(const json_t *root, const char *key, bool def, bool *out,
                               const char *file, struct lp_error *err) {
    const json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) {
        *out = def;
        return LP_OK;
    }
    if (!json_is_boolean(v))
        return lp_error_set(err, LP_ERR_FORMAT, "%s: field '%s' must be true or false", file, key);
    *out = json_is_true(v);
    return LP_OK;
}

// Adds eos ids from a number or a list of numbers, skipping duplicates.
static enum lp_status cfg_eos(const json_t *v, struct lp_model_config *cfg, const char *file,
                              struct lp_error *err) {
    if (!v || json_is_null(v)) return LP_OK;
    size_t n = json_is_array(v) ? json_array_size(v) : 1;
    for (size_t i = 0; i < n; i++) {
        const json_t *e = json_is_array(v) ? json_array_get(v, i) : v;
        if (!json_is_integer(e) || json_integer_value(e) < 0 || json_integer_value(e) > INT32_MAX)
            return lp_error_set(err, LP_ERR_FORMAT,
                                "%s: field 'eos_token_id' must be a token id or a list of ids",
                                file);
        int32_t id = (int32_t)json_integer_value(e);
        if (cfg->vocab_size > 0 && id >= cfg->vocab_size)
            return lp_error_set(err, LP_ERR_FORMAT,
                                "%s: eos_token_id %d is past the vocabulary (vocab_size %d)", file,
                                id, cfg->vocab_size);
        bool seen = false;
        for (int k = 0; k < cfg->n_eos_ids; k++) seen |= cfg->eos_ids[k] == id;
        if (seen) continue;
        if (cfg->n_eos_ids == LP_MAX_EOS_IDS)
            return lp_error_set(err, LP_ERR_UNSUPPORTED, "%s: more than %d eos ids", file,
                                LP_MAX_EOS_IDS);
        cfg->eos_ids[cfg->n_eos_ids++] = id;
    }
    return LP_OK;
}

#define CFG_TRY(expr)                                                                              \
    do {                                                                                           \
        st = (expr);                                                                               \
        if (st != LP_OK) goto done;                                                                \
    } while (0)

enum lp_status lp_config_parse(struct lp_model_config *cfg, const char *json_text,
                               const char *file, struct lp_error *err) {
    memset(cfg, 0, sizeof *cfg);
    json_error_t jerr;
    json_t *root = json_loads(json_text, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return lp_error_set(err, LP_ERR_FORMAT, "%s: not valid JSON: %s (line %d)", file,
                            jerr.text, jerr.line);
    enum lp_status st = LP_OK;
    if (!json_is_object(root)) {
        st = lp_error_set(err, LP_ERR_FORMAT, "%s: not a JSON object", file);
        goto done;
    }
    const char *type = json_string_value(json_object_get(root, "model_type"));
    if (!type) {
        st = lp_error_set(err, LP_ERR_FORMAT, "%s: missing required field 'model_type'", file);
        goto done;
    }
    if (strcmp(type, "qwen3") != 0) {
        st = lp_error_set(err, LP_ERR_UNSUPPORTED,
                          "%s: model_type '%s' is not supported (layerpipe runs 'qwen3')", file,
                          type);
        goto done;
    }
    const int big = 1 << 24;
    CFG_TRY(cfg_int(root, "vocab_size", true, 0, 1, big * 4, &cfg->vocab_size, file, err));
    CFG_TRY(cfg_int(root, "hidden_size", true, 0, 1, 1 << 16, &cfg->hidden_size, file, err));
    CFG_TRY(cfg_int(root, "intermediate_size", true, 0, 1, 1 << 20, &cfg->intermediate_size, file,
                    err));
    CFG_TRY(cfg_int(root, "num_hidden_layers", true, 0, 1, 1024, &cfg->n_layers, file, err));
    CFG_TRY(cfg_int(root, "num_attention_heads", true, 0, 1, 1024, &cfg->n_heads, file, err));
    CFG_TRY(cfg_int(root, "num_key_value_heads", false, cfg->n_heads, 1, 1024, &cfg->n_kv_heads,
                    file, err));
    // Qwen3Config's default head_dim is 128, not hidden_size / heads.
    CFG_TRY(cfg_int(root, "head_dim", false, 128, 2, 1024, &cfg->head_dim, file, err));
    CFG_TRY(cfg_int(root, "max_position_embeddings", false, 32768, 1, big * 8,
                    &cfg->max_position_embeddings, file, err));
    CFG_TRY(cfg_float(root, "rms_norm_eps", 1e-6f, 0.0f, 1.0f, &cfg->rms_norm_eps, file, err));
    // newer transformers nest it: "rope_parameters": {"rope_theta": ...}
    const json_t *rope_params = json_object_get(root, "rope_parameters");
    float theta_default = 10000.0f;
    if (json_is_object(rope_params) && json_is_number(json_object_get(rope_params, "rope_theta"))) {
        double t = json_number_value(json_object_get(rope_params, "rope_theta"));
        if (!(t >= 1.0 && t <= 1e12)) {
            st = lp_error_set(err, LP_ERR_FORMAT,
                              "%s: field 'rope_parameters.rope_theta' is %g, expected 1..1e12", file,
                              t);
            goto done;
        }
        theta_default = (float)t;
    }
    if (json_is_object(rope_params)) { // a RoPE other than the default would run as plain RoPE
        const char *rt = json_string_value(json_object_get(rope_params, "rope_type"));
        if (!rt) rt = json_string_value(json_object_get(rope_params, "type"));
        if (rt && strcmp(rt, "default") != 0) {
            st = lp_error_set(err, LP_ERR_UNSUPPORTED,
                              "%s: rope_parameters.rope_type '%s' is not supported (only default)",
                              file, rt);
            goto done;
        }
    }
    CFG_TRY(cfg_float(root, "rope_theta", theta_default, 1.0f, 1e12f, &cfg->rope_theta, file,
                      err));
    CFG_TRY(cfg_bool(root, "tie_word_embeddings", false, &cfg->tie_word_embeddings, file, err));
    CFG_TRY(cfg_bool(root, "attention_bias", false, &cfg->attention_bias, file, err));
    CFG_TRY(cfg_int(root, "bos_token_id", false, -1, -1, INT32_MAX, &cfg->bos_token_id, file,
                    err));
    if (cfg->head_dim % 2 != 0) {
        st = lp_error_set(err, LP_ERR_FORMAT, "%s: field 'head_dim' is %d, must be even for RoPE",
                          file, cfg->head_dim);
        goto done;
    }
    if (cfg->n_heads % cfg->n_kv_heads != 0) {
        st = lp_error_set(err, LP_ERR_FORMAT,
                          "%s: num_attention_heads %d is not a multiple of num_key_value_heads %d",
                          file, cfg->n_heads, cfg->n_kv_heads);
        goto done;
    }
    if (cfg->attention_bias) {
        st = lp_error_set(err, LP_ERR_UNSUPPORTED, "%s: attention_bias true is not supported",
                          file);
        goto done;
    }
    const char *act = json_string_value(json_object_get(root, "hidden_act"));
    if (act && strcmp(act, "silu") != 0) {
        st = lp_error_set(err, LP_ERR_UNSUPPORTED,
                          "%s: hidden_act '%s' is not supported (expected 'silu')", file, act);
        goto done;
    }
    const json_t *scaling = json_object_get(root, "rope_scaling");
    if (scaling && !json_is_null(scaling)) {
        const char *rt = json_string_value(json_object_get(scaling, "rope_type"));
        if (!rt) rt = json_string_value(json_object_get(scaling, "type"));
        if (!rt || strcmp(rt, "default") != 0) {
            st = lp_error_set(err, LP_ERR_UNSUPPORTED,
                              "%s: rope_scaling type '%s' is not supported (only none/default)",
                              file, rt ? rt : "?");
            goto done;
        }
    }
    if (json_is_true(json_object_get(root, "use_sliding_window"))) {
        st = lp_error_set(err, LP_ERR_UNSUPPORTED,
                          "%s: use_sliding_window true is not supported", file);
        goto done;
    }
    CFG_TRY(cfg_eos(json_object_get(root, "eos_token_id"), cfg, file, err));
    const json_t *q = json_object_get(root, "quantization");
    if (q && !json_is_null(q)) {
        if (!json_is_object(q)) {
            st = lp_error_set(err, LP_ERR_FORMAT, "%s: field 'quantization' must be an object",
                              file);
            goto done;
        }
        const char *mode = json_string_value(json_object_get(q, "mode"));
        if (mode && strcmp(mode, "affine") != 0) {
            st = lp_error_set(err, LP_ERR_UNSUPPORTED,
                              "%s: quantization mode '%s' is not supported (only 'affine')", file,
                              mode);
            goto done;
        }
        CFG_TRY(cfg_int(q, "bits", true, 0, 1, 32, &cfg->quant_bits, file, err));
        CFG_TRY(cfg_int(q, "group_size", true, 0, 1, 1 << 16, &cfg->quant_group_size, file, err));
        if (cfg->quant_bits != 4 && cfg->quant_bits != 8) {
            st = lp_error_set(err, LP_ERR_UNSUPPORTED,
                              "%s: quantization.bits is %d, supported: 4, 8", file,
                              cfg->quant_bits);
            goto done;
        }
        int g = cfg->quant_group_size;
        if (g != 32 && g != 64 && g != 128) {
            st = lp_error_set(err, LP_ERR_UNSUPPORTED,
                              "%s: quantization.group_size is %d, supported: 32, 64, 128", file, g);
            goto done;
        }
    }
done:
    json_decref(root);
    return st;
}

void lp_generation_config_default(struct lp_generation_config *gen) {
    gen->temperature = 1.0f;
    gen->top_k = 50;
    gen->top_p = 1.0f;
    gen->min_p = 0.0f;
    gen->repetition_penalty = 1.0f;
    gen->do_sample = false;
}

enum lp_status lp_generation_config_parse(struct lp_generation_config *gen,
                                          struct lp_model_config *cfg, const char *json_text,
                                          const char *file, struct lp_error *err) {
    lp_generation_config_default(gen);
    json_error_t jerr;
    json_t *root = json_loads(json_text, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return lp_error_set(err, LP_ERR_FORMAT, "%s: not valid JSON: %s (line %d)", file,
                            jerr.text, jerr.line);
    enum lp_status st = LP_OK;
    if (!json_is_object(root)) {
        st = lp_error_set(err, LP_ERR_FORMAT, "%s: not a JSON object", file);
        goto done;
    }
    CFG_TRY(cfg_float(root, "temperature", 1.0f, 0.0f, 100.0f, &gen->temperature, file, err));
    CFG_TRY(cfg_int(root, "top_k", false, 50, 0, INT32_MAX, &gen->top_k, file, err));
    CFG_TRY(cfg_float(root, "top_p", 1.0f, 0.0f, 1.0f, &gen->top_p, file, err));
    CFG_TRY(cfg_float(root, "min_p", 0.0f, 0.0f, 1.0f, &gen->min_p, file, err));
    CFG_TRY(cfg_float(root, "repetition_penalty", 1.0f, 0.0f, 100.0f, &gen->repetition_penalty,
                      file, err));
    CFG_TRY(cfg_bool(root, "do_sample", false, &gen->do_sample, file, err));
    CFG_TRY(cfg_eos(json_object_get(root, "eos_token_id"), cfg, file, err));
done:
    json_decref(root);
    return st;
}
