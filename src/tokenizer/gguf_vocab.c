// SPDX-License-Identifier: MIT
// gguf_vocab.c -- the tokenizer of a GGUF file, both ways.
// Reading: tokenizer.ggml.* (what llama.cpp's converter writes from an HF
// folder: model "gpt2", pre "qwen2", tokens, token_type, merges, special
// ids) is turned back into the tokenizer.json and tokenizer_config.json
// documents it came from, which the same loader then checks and builds, so
// a GGUF file encodes exactly as HF tokenizers does with the original
// folder. tokenizer.huggingface.json, when a file carries it, is taken as is.
// Writing: a tokenizer folder's documents as tokenizer.ggml.* metadata,
// following the converter's rules (gguf-py SpecialVocab, get_vocab_base),
// for the test-model generator.
// Token types (gguf-py TokenType): 1 normal, 2 unknown, 3 control,
// 4 user-defined, 5 unused, 6 byte. Normal and unknown tokens are the BPE
// vocabulary; control (special) and user-defined (not special) tokens are
// HF's added tokens; unused ids (the converter's [PAD<i>] fillers up to the
// embedding's rows) have no token, as in HF.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "layerpipe/gguf.h"
#include "tokenizer/internal.h"

enum { TT_NORMAL = 1, TT_UNKNOWN = 2, TT_CONTROL = 3, TT_USER = 4, TT_UNUSED = 5, TT_BYTE = 6 };

// The pre-tokenizer regex of Qwen2/Qwen3's tokenizer.json ("qwen2" in
// llama.cpp, which spells the (?i:...) group out by hand).
static const char QWEN2_REGEX[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+"
    "[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

// The normalizer, pre-tokenizer and decoder of a known tokenizer.ggml.pre.
static json_t *pipeline_for(struct lp_gguf_str pre) {
    if (!lp_gguf_str_eq(pre, "qwen2")) return NULL;
    return json_pack("{s:{s:s}, s:{s:s, s:[{s:s, s:{s:s}, s:s, s:b}, {s:s, s:b, s:b, s:b}]}, "
                     "s:{s:s, s:b, s:b, s:b}}",
                     "normalizer", "type", "NFC", "pre_tokenizer", "type", "Sequence",
                     "pretokenizers", "type", "Split", "pattern", "Regex", QWEN2_REGEX,
                     "behavior", "Isolated", "invert", 0, "type", "ByteLevel",
                     "add_prefix_space", 0, "trim_offsets", 0, "use_regex", 0, "decoder", "type",
                     "ByteLevel", "add_prefix_space", 0, "trim_offsets", 0, "use_regex", 0);
}

// tokenizer_config.json's eos/pad/bos tokens from the special ids (bos
// only when add_bos_token says so: Qwen's converter records config.json's
// bos_token_id, while its tokenizer has none).
static enum lp_status special_config(const struct lp_gguf *g, const struct lp_gguf_str *tokens,
                                     int64_t n_tokens, json_t *cfg, struct lp_error *err) {
    static const struct {
        const char *key, *field;
    } ids[] = {{"tokenizer.ggml.eos_token_id", "eos_token"},
               {"tokenizer.ggml.padding_token_id", "pad_token"},
               {"tokenizer.ggml.bos_token_id", "bos_token"}};
    bool add_bos = false;
    if (lp_gguf_find_kv(g, "tokenizer.ggml.add_bos_token")) {
        enum lp_status st = lp_gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &add_bos, err);
        if (st != LP_OK) return st;
    }
    for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++) {
        if (!lp_gguf_find_kv(g, ids[i].key) || (i == 2 && !add_bos)) continue;
        int64_t id;
        enum lp_status st = lp_gguf_get_int(g, ids[i].key, 0, n_tokens - 1, &id, err);
        if (st != LP_OK) return st;
        json_object_set_new(cfg, ids[i].field, json_stringn(tokens[id].ptr, tokens[id].n_bytes));
    }
    return LP_OK;
}

// The model part: vocab, merges and added tokens from the token list.
static enum lp_status build_model(const struct lp_gguf *g, const struct lp_gguf_str *tokens,
                                  int64_t n_tokens, const struct lp_gguf_kv *types, json_t *root,
                                  struct lp_error *err) {
    const char *name = lp_gguf_name(g);
    json_t *vocab = json_object(), *added = json_array(), *merges = json_array();
    json_t *model = json_pack("{s:s, s:o, s:o, s:b, s:b}", "type", "BPE", "vocab", vocab, "merges",
                              merges, "byte_fallback", 0, "ignore_merges", 0);
    if (!model || json_object_set_new(root, "model", model) ||
        json_object_set_new(root, "added_tokens", added))
        return lp_error_set(err, LP_ERR_NOMEM, "%s: out of memory", name);
    for (int64_t i = 0; i < n_tokens; i++) {
        int64_t type = types ? lp_gguf_array_int(types, (uint64_t)i) : TT_NORMAL;
        struct lp_gguf_str t = tokens[i];
        if (type == TT_UNUSED) continue;
        if (type == TT_BYTE || type < TT_NORMAL || type > TT_BYTE)
            return lp_error_set(err, LP_ERR_UNSUPPORTED,
                                "%s: token %lld: token type %lld is not supported in a gpt2 "
                                "vocabulary (1..5)",
                                name, (long long)i, (long long)type);
        json_t *s = json_stringn(t.ptr, t.n_bytes);
        if (!s || memchr(t.ptr, '\0', t.n_bytes) || t.n_bytes == 0) {
            json_decref(s);
            return lp_error_set(err, LP_ERR_FORMAT,
                                "%s: tokenizer.ggml.tokens[%lld] is empty or not valid UTF-8",
                                name, (long long)i);
        }
        if (type == TT_CONTROL || type == TT_USER) {
            json_t *a = json_pack("{s:I, s:o, s:b, s:b, s:b, s:b, s:b}", "id", (json_int_t)i,
                                  "content", s, "single_word", 0, "lstrip", 0, "rstrip", 0,
                                  "normalized", 0, "special", type == TT_CONTROL);
            if (!a || json_array_append_new(added, a))
                return lp_error_set(err, LP_ERR_NOMEM, "%s: out of memory", name);
            continue;
        }
        json_decref(s);
        if (json_object_getn(vocab, t.ptr, t.n_bytes))
            return lp_error_set(err, LP_ERR_FORMAT,
                                "%s: tokenizer.ggml.tokens[%lld] '%.*s' appears twice", name,
                                (long long)i, (int)(t.n_bytes > 40 ? 40 : t.n_bytes), t.ptr);
        if (json_object_setn_new(vocab, t.ptr, t.n_bytes, json_integer(i)))
            return lp_error_set(err, LP_ERR_NOMEM, "%s: out of memory", name);
    }
    const struct lp_gguf_kv *m;
    enum lp_status st = lp_gguf_get_array(g, "tokenizer.ggml.merges", LP_GGUF_TYPE_STRING, &m, err);
    if (st != LP_OK) return st;
    struct lp_gguf_str *ms = malloc((size_t)(m->n_elems ? m->n_elems : 1) * sizeof *ms);
    if (!ms) return lp_error_set(err, LP_ERR_NOMEM, "%s: out of memory", name);
    lp_gguf_array_strs(m, ms);
    for (uint64_t i = 0; i < m->n_elems; i++) {
        json_t *s = json_stringn(ms[i].ptr, ms[i].n_bytes);
        if (!s || json_array_append_new(merges, s)) {
            free(ms);
            return lp_error_set(err, LP_ERR_FORMAT,
                                "%s: tokenizer.ggml.merges[%llu] is not valid UTF-8", name,
                                (unsigned long long)i);
        }
    }
    free(ms);
    return LP_OK;
}

// tokenizer.json and tokenizer_config.json as json_t documents.
static enum lp_status gguf_documents(const struct lp_gguf *g, json_t **root, json_t **cfg,
                                     struct lp_error *err) {
    const char *name = lp_gguf_name(g);
    struct lp_gguf_str model, pre;
    enum lp_status st = lp_gguf_get_str(g, "tokenizer.ggml.model", &model, err);
    if (st != LP_OK) return st;
    if (!lp_gguf_str_eq(model, "gpt2"))
        return lp_error_set(err, LP_ERR_UNSUPPORTED,
                            "%s: tokenizer.ggml.model '%.*s' is not supported (byte-level BPE, "
                            "'gpt2', is)",
                            name, (int)(model.n_bytes > 40 ? 40 : model.n_bytes), model.ptr);
    const struct lp_gguf_kv *list, *types = NULL;
    if ((st = lp_gguf_get_array(g, "tokenizer.ggml.tokens", LP_GGUF_TYPE_STRING, &list, err)))
        return st;
    if (list->n_elems == 0 || list->n_elems > (1u << 24))
        return lp_error_set(err, LP_ERR_FORMAT, "%s: tokenizer.ggml.tokens holds %llu tokens",
                            name, (unsigned long long)list->n_elems);
    if (lp_gguf_find_kv(g, "tokenizer.ggml.token_type")) {
        st = lp_gguf_get_array(g, "tokenizer.ggml.token_type", LP_GGUF_TYPE_INT64, &types, err);
        if (st != LP_OK) return st;
        if (types->n_elems != list->n_elems)
            return lp_error_set(err, LP_ERR_FORMAT,
                                "%s: %llu token types for %llu tokens", name,
                                (unsigned long long)types->n_elems,
                                (unsigned long long)list->n_elems);
    }
    int64_t n = (int64_t)list->n_elems;
    struct lp_gguf_str *tokens = malloc((size_t)n * sizeof *tokens);
    *cfg = json_object();
    if (!tokens || !*cfg) {
        free(tokens);
        return lp_error_set(err, LP_ERR_NOMEM, "%s: out of memory", name);
    }
    lp_gguf_array_strs(list, tokens);
    if ((st = special_config(g, tokens, n, *cfg, err)) != LP_OK) goto done;
    if (lp_gguf_find_kv(g, "tokenizer.huggingface.json")) {
        struct lp_gguf_str hf;
        if ((st = lp_gguf_get_str(g, "tokenizer.huggingface.json", &hf, err))) goto done;
        json_error_t jerr;
        *root = json_loadb(hf.ptr, hf.n_bytes, JSON_REJECT_DUPLICATES, &jerr);
        if (!*root)
            st = lp_error_set(err, LP_ERR_FORMAT, "%s: tokenizer.huggingface.json: line %d: %s",
                              name, jerr.line, jerr.text);
        goto done;
    }
    if ((st = lp_gguf_get_str(g, "tokenizer.ggml.pre", &pre, err))) goto done;
    if (!(*root = pipeline_for(pre))) {
        st = lp_error_set(err, LP_ERR_UNSUPPORTED,
                          "%s: tokenizer.ggml.pre '%.*s' is not supported (qwen2 is)", name,
                          (int)(pre.n_bytes > 40 ? 40 : pre.n_bytes), pre.ptr);
        goto done;
    }
    st = build_model(g, tokens, n, types, *root, err);
done:
    free(tokens);
    return st;
}

enum lp_status lp_tokenizer_create_gguf(struct lp_tokenizer **out, const struct lp_gguf *g,
                                        struct lp_error *err) {
    *out = NULL;
    json_t *root = NULL, *cfg = NULL;
    enum lp_status st = gguf_documents(g, &root, &cfg, err);
    if (st == LP_OK) st = tok_create_from_json(out, lp_gguf_name(g), root, cfg, err);
    json_decref(root);
    json_decref(cfg);
    return st;
}

// ---- writing ---------------------------------------------------------------------

// The converter marks some added tokens special by their look
// (does_token_look_special).
static bool looks_special(const char *s) {
    size_t n = strlen(s);
    if (strcmp(s, "<pad>") == 0 || strcmp(s, "<mask>") == 0 || strcmp(s, "<2mass>") == 0 ||
        strcmp(s, "[@BOS@]") == 0)
        return true;
    if (n >= 4 && strncmp(s, "<|", 2) == 0 && strcmp(s + n - 2, "|>") == 0) return true;
    if (n >= 8 && strncmp(s, "<\xef\xbd\x9c", 4) == 0 && strcmp(s + n - 4, "\xef\xbd\x9c>") == 0)
        return true; // <｜...｜>
    return n >= 8 && strncmp(s, "<unused", 7) == 0 && s[n - 1] == '>';
}

static json_t *load_json(const char *dir, const char *file, bool required, struct lp_error *err,
                         enum lp_status *st) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    struct stat sb;
    *st = LP_OK;
    if (!required && stat(path, &sb) != 0) return NULL;
    json_error_t jerr;
    json_t *j = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    if (!j || !json_is_object(j)) {
        *st = lp_error_set(err, LP_ERR_FORMAT, "%s: %s", path, j ? "not an object" : jerr.text);
        json_decref(j);
        return NULL;
    }
    return j;
}

// The id of the added token whose content is tokenizer_config's `typ`_token.
static int64_t config_token_id(const json_t *tcfg, const json_t *added, const char *field) {
    const json_t *v = json_object_get(tcfg, field);
    if (json_is_object(v)) v = json_object_get(v, "content");
    if (!json_is_string(v)) return -1;
    size_t i;
    const json_t *a;
    json_array_foreach(added, i, a) {
        const json_t *c = json_object_get(a, "content");
        if (json_is_string(c) && strcmp(json_string_value(c), json_string_value(v)) == 0)
            return json_integer_value(json_object_get(a, "id"));
    }
    return -1;
}

static enum lp_status write_special_ids(struct lp_gguf_writer *w, const json_t *tcfg,
                                        const json_t *mcfg, const json_t *added, int64_t n_vocab,
                                        struct lp_error *err) {
    static const struct {
        const char *typ, *key;
    } types[] = {{"bos", "tokenizer.ggml.bos_token_id"},
                 {"eos", "tokenizer.ggml.eos_token_id"},
                 {"unk", "tokenizer.ggml.unknown_token_id"},
                 {"sep", "tokenizer.ggml.seperator_token_id"}, // sic, as gguf-py spells it
                 {"pad", "tokenizer.ggml.padding_token_id"}};
    enum lp_status st = LP_OK;
    for (size_t i = 0; i < sizeof types / sizeof types[0] && st == LP_OK; i++) {
        char field[32];
        snprintf(field, sizeof field, "%s_token", types[i].typ);
        int64_t id = tcfg ? config_token_id(tcfg, added, field) : -1;
        snprintf(field, sizeof field, "%s_token_id", types[i].typ);
        const json_t *v = mcfg ? json_object_get(mcfg, field) : NULL;
        if (id < 0 && json_is_integer(v)) id = json_integer_value(v);
        if (id < 0 || id >= n_vocab) continue;
        uint32_t u = (uint32_t)id;
        st = lp_gguf_writer_add_scalar(w, types[i].key, LP_GGUF_TYPE_UINT32, &u, err);
    }
    for (int i = 0; i < 2 && st == LP_OK && tcfg; i++) {
        const char *field = i == 0 ? "add_bos_token" : "add_eos_token";
        const json_t *v = json_object_get(tcfg, field);
        if (!json_is_boolean(v)) continue;
        char key[48];
        snprintf(key, sizeof key, "tokenizer.ggml.%s", field);
        bool b = json_is_true(v);
        st = lp_gguf_writer_add_scalar(w, key, LP_GGUF_TYPE_BOOL, &b, err);
    }
    const json_t *tmpl = tcfg ? json_object_get(tcfg, "chat_template") : NULL;
    if (st == LP_OK && json_is_string(tmpl))
        st = lp_gguf_writer_add_str(w, "tokenizer.chat_template", json_string_value(tmpl), err);
    return st;
}

// Merges as "a b" strings (tokenizer.json's [a, b] pairs joined; a space
// inside a part becomes U+0120, as the converter encodes it).
static enum lp_status write_merges(struct lp_gguf_writer *w, const json_t *merges,
                                   struct lp_error *err) {
    size_t n = json_array_size(merges);
    char **strs = calloc(n ? n : 1, sizeof *strs);
    enum lp_status st = LP_OK;
    if (!strs) return lp_error_set(err, LP_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < n && st == LP_OK; i++) {
        const json_t *m = json_array_get(merges, i);
        if (json_is_string(m)) {
            strs[i] = strdup(json_string_value(m));
        } else if (json_is_array(m) && json_array_size(m) == 2) {
            const char *a = json_string_value(json_array_get(m, 0));
            const char *b = json_string_value(json_array_get(m, 1));
            if (!a || !b) {
                st = lp_error_set(err, LP_ERR_FORMAT, "tokenizer.json: merges[%zu] is malformed", i);
                break;
            }
            size_t cap = 2 * (strlen(a) + strlen(b)) + 2, o = 0;
            strs[i] = malloc(cap);
            for (int part = 0; strs[i] && part < 2; part++) {
                for (const char *c = part ? b : a; *c; c++) {
                    if (*c == ' ') {
                        strs[i][o++] = (char)0xC4; // U+0120
                        strs[i][o++] = (char)0xA0;
                    } else {
                        strs[i][o++] = *c;
                    }
                }
                if (part == 0) strs[i][o++] = ' ';
            }
            if (strs[i]) strs[i][o] = '\0';
        } else {
            st = lp_error_set(err, LP_ERR_FORMAT, "tokenizer.json: merges[%zu] is malformed", i);
        }
        if (st == LP_OK && !strs[i]) st = lp_error_set(err, LP_ERR_NOMEM, "out of memory");
    }
    if (st == LP_OK)
        st = lp_gguf_writer_add_str_array(w, "tokenizer.ggml.merges", n, (const char *const *)strs,
                                          NULL, err);
    for (size_t i = 0; i < n; i++) free(strs[i]);
    free(strs);
    return st;
}

enum lp_status lp_tokenizer_gguf_write(struct lp_gguf_writer *w, const char *dir,
                                       int64_t n_vocab, struct lp_error *err) {
    enum lp_status st;
    json_t *tok = load_json(dir, "tokenizer.json", true, err, &st);
    if (!tok) return st;
    json_t *tcfg = load_json(dir, "tokenizer_config.json", false, err, &st);
    json_t *mcfg = st == LP_OK ? load_json(dir, "config.json", false, err, &st) : NULL;
    char **tokens = NULL;
    int32_t *types = NULL;
    int64_t n = 0;
    if (st != LP_OK) goto done;
    const json_t *model = json_object_get(tok, "model"), *vocab = json_object_get(model, "vocab");
    const json_t *added = json_object_get(tok, "added_tokens");
    if (!json_is_object(vocab) || !json_is_array(added)) {
        st = lp_error_set(err, LP_ERR_FORMAT, "%s/tokenizer.json: no model.vocab or added_tokens",
                          dir);
        goto done;
    }
    // the pre-tokenizer must be one a reader knows by name
    const json_t *pt = json_object_get(tok, "pre_tokenizer");
    const json_t *split = json_array_get(json_object_get(pt, "pretokenizers"), 0);
    const char *re = json_string_value(json_object_get(json_object_get(split, "pattern"), "Regex"));
    if (!re || strcmp(re, QWEN2_REGEX) != 0) {
        st = lp_error_set(err, LP_ERR_UNSUPPORTED,
                          "%s/tokenizer.json: not Qwen2's pre-tokenizer (the one GGUF name, "
                          "'qwen2', written here)",
                          dir);
        goto done;
    }
    int64_t max_id = -1;
    const char *key;
    const json_t *v;
    json_object_foreach((json_t *)vocab, key, v) {
        if (json_integer_value(v) > max_id) max_id = json_integer_value(v);
    }
    size_t i;
    json_array_foreach(added, i, v) {
        int64_t id = json_integer_value(json_object_get(v, "id"));
        if (id > max_id) max_id = id;
    }
    n = n_vocab > 0 ? n_vocab : max_id + 1;
    if (max_id < 0 || max_id >= n || n > (1 << 24)) {
        st = lp_error_set(err, LP_ERR_INVALID_ARG,
                          "%s/tokenizer.json: ids up to %lld do not fit a vocabulary of %lld", dir,
                          (long long)max_id, (long long)n);
        goto done;
    }
    tokens = calloc((size_t)n, sizeof *tokens);
    types = calloc((size_t)n, sizeof *types);
    if (!tokens || !types) {
        st = lp_error_set(err, LP_ERR_NOMEM, "out of memory");
        goto done;
    }
    json_object_foreach((json_t *)vocab, key, v) {
        int64_t id = json_integer_value(v);
        if (id < 0 || tokens[id]) continue; // the reader refuses what HF would
        tokens[id] = strdup(key);
        types[id] = TT_NORMAL;
    }
    json_array_foreach(added, i, v) {
        int64_t id = json_integer_value(json_object_get(v, "id"));
        const char *content = json_string_value(json_object_get(v, "content"));
        if (id < 0 || !content) continue;
        free(tokens[id]);
        tokens[id] = strdup(content);
        types[id] = json_is_true(json_object_get(v, "special")) || looks_special(content)
                        ? TT_CONTROL
                        : TT_USER;
    }
    for (int64_t k = 0; k < n; k++) {
        if (!tokens[k] && !types[k]) {
            char pad[32];
            snprintf(pad, sizeof pad, "[PAD%lld]", (long long)k);
            tokens[k] = strdup(pad);
            types[k] = TT_UNUSED;
        }
        if (!tokens[k]) {
            st = lp_error_set(err, LP_ERR_NOMEM, "out of memory");
            goto done;
        }
    }
    if ((st = lp_gguf_writer_add_str(w, "tokenizer.ggml.model", "gpt2", err)) ||
        (st = lp_gguf_writer_add_str(w, "tokenizer.ggml.pre", "qwen2", err)) ||
        (st = lp_gguf_writer_add_str_array(w, "tokenizer.ggml.tokens", (uint64_t)n,
                                           (const char *const *)tokens, NULL, err)) ||
        (st = lp_gguf_writer_add_array(w, "tokenizer.ggml.token_type", LP_GGUF_TYPE_INT32,
                                       (uint64_t)n, types, err)) ||
        (st = write_merges(w, json_object_get(model, "merges"), err)))
        goto done;
    st = write_special_ids(w, tcfg, mcfg, added, n, err);
done:
    if (tokens)
        for (int64_t k = 0; k < n; k++) free(tokens[k]);
    free(tokens);
    free(types);
    json_decref(tok);
    json_decref(tcfg);
    json_decref(mcfg);
    return st;
}
