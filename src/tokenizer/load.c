// SPDX-License-Identifier: MIT
// load.c -- builds a struct lp_tokenizer from tokenizer.json (HF format) and
// tokenizer_config.json. Accepts exactly the byte-level BPE subset that
// Qwen/GPT-2 style models use and refuses anything else by name
// (LP_ERR_UNSUPPORTED): model BPE without byte fallback or dropout,
// normalizer NFC (or none), pre-tokenizer Split(regex, Isolated) and/or
// ByteLevel, decoder ByteLevel. Every count, id and string from the file is
// checked; a malformed file is LP_ERR_FORMAT naming the field and value.
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "layerpipe/gguf.h"
#include "tokenizer/internal.h"

// GPT-2's pattern, used by ByteLevel with use_regex: true.
static const char gpt2_pattern[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

static size_t pow2_at_least(size_t n) {
    size_t p = 16;
    while (p < n)
        p <<= 1;
    return p;
}

int32_t tok_vocab_find(const struct lp_tokenizer *tok, const char *piece, size_t n_bytes) {
    size_t i = (size_t)tok_hash(piece, n_bytes) & tok->vocab_mask;
    for (;;) {
        int32_t id = tok->vocab_slots[i];
        if (id < 0) return -1;
        size_t off = tok->piece_off[id];
        if (tok->piece_off[id + 1] - off - 1 == n_bytes &&
            memcmp(tok->piece_blob + off, piece, n_bytes) == 0)
            return id;
        i = (i + 1) & tok->vocab_mask;
    }
}

// ---- small JSON helpers ------------------------------------------------------

static bool json_is_null_or_absent(const json_t *v) {
    return v == NULL || json_is_null(v);
}

// A field that must be a string equal to `want`, or absent/null/empty when
// allow_empty.
static enum lp_status expect_str(const char *name, const json_t *obj, const char *key,
                                 const char *want, struct lp_error *err) {
    const json_t *v = json_object_get(obj, key);
    if (json_is_null_or_absent(v) && want[0] == '\0') return LP_OK;
    if (!json_is_string(v))
        return lp_error_set(err, LP_ERR_FORMAT, "%s: field '%s': expected a string", name, key);
    if (strcmp(json_string_value(v), want) != 0)
        return lp_error_set(err, LP_ERR_UNSUPPORTED,
                            "%s: field '%s' is \"%.60s\", supported: \"%s\"", name, key,
                            json_string_value(v), want);
    return LP_OK;
}

static enum lp_status expect_false(const char *name, const json_t *obj, const char *key,
                                   struct lp_error *err) {
    const json_t *v = json_object_get(obj, key);
    if (json_is_null_or_absent(v) || json_is_false(v)) return LP_OK;
    if (json_is_true(v))
        return lp_error_set(err, LP_ERR_UNSUPPORTED, "%s: '%s': true is not supported", name, key);
    return lp_error_set(err, LP_ERR_FORMAT, "%s: '%s': expected a boolean", name, key);
}

static const char *type_of(const json_t *obj) {
    const json_t *t = json_object_get(obj, "type");
    return json_is_string(t) ? json_string_value(t) : NULL;
}

// ---- normalizer / pre-tokenizer / decoder -------------------------------------

static enum lp_status load_normalizer(struct lp_tokenizer *tok, const char *name,
                                      const json_t *norm, struct lp_error *err) {
    if (json_is_null_or_absent(norm)) return LP_OK;
    if (!json_is_object(norm))
        return lp_error_set(err, LP_ERR_FORMAT, "%s: 'normalizer': expected an object", name);
    const char *type = type_of(norm);
    if (!type) return lp_error_set(err, LP_ERR_FORMAT, "%s: 'normalizer': missing 'type'", name);
    if (strcmp(type, "NFC") == 0) {
        tok->nfc = true;
        return LP_OK;
    }
    if (strcmp(type, "Sequence") == 0) {
        const json_t *list = json_object_get(norm, "normalizers");
        if (!json_is_array(list))
            return lp_error_set(err, LP_ERR_FORMAT,
                                "%s: 'normalizer.normalizers': expected an array", name);
        size_t i;
        const json_t *item;
        json_array_foreach(list, i, item) {
            enum lp_status st = load_normalizer(tok, name, item, err);
            if (st) return st;
        }
        return LP_OK;
    }
    return lp_error_set(err, LP_ERR_UNSUPPORTED, "%s: normalizer type '%.40s' (supported: NFC)",
                        name, type);
}

// Rewrites \s and \S to Oniguruma's (and Rust's) Unicode White_Space set,
// which HF tokenizers uses: PCRE2's UCP \s also matches U+180E.
// Returns a malloc'ed pattern or NULL on allocation failure.
static char *translate_pattern(const char *pat) {
    static const char ws[] = "\\t-\\r\\x{85}\\p{Zs}\\x{2028}\\x{2029}";
    size_t n = strlen(pat), cap = n * 8 + 64, o = 0;
    char *out = malloc(cap);
    if (!out) return NULL;
    bool in_class = false;
    for (size_t i = 0; i < n; i++) {
        char c = pat[i];
        if (c == '\\' && i + 1 < n) {
            char d = pat[i + 1];
            const char *rep = NULL;
            char buf[96];
            if (d == 's') {
                snprintf(buf, sizeof buf, in_class ? "%s" : "[%s]", ws);
                rep = buf;
            } else if (d == 'S' && !in_class) {
                snprintf(buf, sizeof buf, "[^%s]", ws);
                rep = buf;
            }
            if (rep) {
                size_t r = strlen(rep);
                memcpy(out + o, rep, r);
                o += r;
            } else {
                out[o++] = c;
                out[o++] = d;
            }
            i++;
            continue;
        }
        if (!in_class && c == '[') {
            in_class = true;
            out[o++] = c;
            // A ']' right after '[' or '[^' is a literal.
            if (i + 1 < n && pat[i + 1] == '^') out[o++] = pat[++i];
            if (i + 1 < n && pat[i + 1] == ']') out[o++] = pat[++i];
            continue;
        }
        if (in_class && c == '[' && i + 1 < n && pat[i + 1] == ':') {
            const char *end = strstr(pat + i + 2, ":]");
            if (end) {
                size_t r = (size_t)(end + 2 - (pat + i));
                memcpy(out + o, pat + i, r);
                o += r;
                i += r - 1;
                continue;
            }
        }
        if (in_class && c == ']') in_class = false;
        out[o++] = c;
    }
    out[o] = '\0';
    return out;
}

static enum lp_status add_split(struct lp_tokenizer *tok, const char *name, const char *pattern,
                                bool literal, struct lp_error *err) {
    if (tok->n_splits >= TOK_MAX_SPLITS)
        return lp_error_set(err, LP_ERR_UNSUPPORTED, "%s: more than %d pre-tokenizer splits", name,
                            TOK_MAX_SPLITS);
    char *pat = literal ? strdup(pattern) : translate_pattern(pattern);
    if (!pat) return lp_error_set(err, LP_ERR_NOMEM, "%s: out of memory", name);
    int code;
    PCRE2_SIZE at;
    uint32_t opts = PCRE2_UTF | PCRE2_UCP | PCRE2_NO_UTF_CHECK | (literal ? PCRE2_LITERAL : 0);
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pat, PCRE2_ZERO_TERMINATED, opts, &code, &at, NULL);
    free(pat);
    if (!re) {
        PCRE2_UCHAR msg[120];
        pcre2_get_error_message(code, msg, sizeof msg);
        return lp_error_set(err, LP_ERR_FORMAT,
                            "%s: pre-tokenizer regex \"%.60s\": %s at offset %zu", name, pattern,
                            (const char *)msg, (size_t)at);
    }
    tok->splits[tok->n_splits] = re;
    tok->splits_jit[tok->n_splits] = pcre2_jit_compile(re, PCRE2_JIT_COMPLETE) == 0;
    tok->n_splits++;
    return LP_OK;
}

static enum lp_status load_pre_tokenizer(struct lp_tokenizer *tok, const char *name,
                                         const json_t *pt, bool *bytelevel, struct lp_error *err) {
    if (!json_is_object(pt))
        return lp_error_set(err, LP_ERR_FORMAT, "%s: 'pre_tokenizer': expected an object", name);
    const char *type = type_of(pt);
    if (!type) return lp_error_set(err, LP_ERR_FORMAT, "%s: 'pre_tokenizer': missing 'type'", name);
    enum lp_status st;
    if (strcmp(type, "Sequence") == 0) {
        const json_t *list = json_object_get(pt, "pretokenizers");
        if (!json_is_array(list))
            return lp_error_set(err, LP_ERR_FORMAT,
                                "%s: 'pre_tokenizer.pretokenizers': expected an array", name);
        size_t i;
        const json_t *item;
        json_array_foreach(list, i, item) {
            if ((st = load_pre_tokenizer(tok, name, item, bytelevel, err))) return st;
        }
        return LP_OK;
    }
    if (strcmp(type, "Split") == 0) {
        if (*bytelevel)
            return lp_error_set(err, LP_ERR_UNSUPPORTED, "%s: pre-tokenizer Split after ByteLevel",
                                name);
        if ((st = expect_str(name, pt, "behavior", "Isolated", err))) return st;
        if ((st = expect_false(name, pt, "invert", err))) return st;
        const json_t *p = json_object_get(pt, "pattern");
        const json_t *re = json_object_get(p, "Regex");
        const json_t *lit = json_object_get(p, "String");
        if (json_is_string(re)) return add_split(tok, name, json_string_value(re), false, err);
        if (json_is_string(lit)) return add_split(tok, name, json_string_value(lit), true, err);
        return lp_error_set(err, LP_ERR_FORMAT,
                            "%s: Split 'pattern': expected {\"Regex\": ...} or {\"String\": ...}",
                            name);
    }
    if (strcmp(type, "ByteLevel") == 0) {
        if ((st = expect_false(name, pt, "add_prefix_space", err))) return st;
        *bytelevel = true;
        const json_t *use_regex = json_object_get(pt, "use_regex");
        if (json_is_null_or_absent(use_regex) || json_is_true(use_regex))
            return add_split(tok, name, gpt2_pattern, false, err);
        return LP_OK;
    }
    return lp_error_set(err, LP_ERR_UNSUPPORTED,
                        "%s: pre-tokenizer type '%.40s' (supported: Sequence, Split, ByteLevel)",
                        name, type);
}

// ---- vocabulary, merges, added tokens ---------------------------------------

// Reads a JSON integer id in [0, TOK_MAX_VOCAB).
static enum lp_status read_id(const char *name, const char *what, const char *key, const json_t *v,
                              int32_t *id, struct lp_error *err) {
    if (!json_is_integer(v))
        return lp_error_set(err, LP_ERR_FORMAT, "%s: %s '%.40s': id is not an integer", name, what,
                            key);
    json_int_t x = json_integer_value(v);
    if (x < 0 || x >= TOK_MAX_VOCAB)
        return lp_error_set(err, LP_ERR_FORMAT, "%s: %s '%.40s': id %lld out of range [0, %d)",
                            name, what, key, (long long)x, TOK_MAX_VOCAB);
    *id = (int32_t)x;
    return LP_OK;
}

// Decoded bytes of a piece as the ByteLevel decoder does: every char through
// the byte-level table if all of them map, else the piece's own bytes.
static size_t piece_to_bytes(const char *piece, size_t n, uint8_t *out) {
    const uint8_t *s = (const uint8_t *)piece;
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t len = tok_utf8_decode(s + i, &cp);
        int b = tok_cp_to_byte(cp);
        if (b < 0) {
            memcpy(out, piece, n);
            return n;
        }
        out[o++] = (uint8_t)b;
        i += len;
    }
    return o;
}

static bool is_valid_utf8(const char *s, size_t n) {
    return tok_utf8_valid_prefix((const uint8_t *)s, n) == n;
}

struct loader {
    const char *name;
    const char **piece; // [n_vocab] borrowed from the JSON document; NULL when unused
    size_t *piece_len;  // [n_vocab]
    int32_t n_vocab;
};

static enum lp_status build_pieces(struct lp_tokenizer *tok, struct loader *ld,
                                   struct lp_error *err) {
    size_t n = (size_t)ld->n_vocab, total = 0;
    for (size_t i = 0; i < n; i++)
        total += ld->piece_len[i] + 1;
    tok->piece_off = malloc((n + 1) * sizeof *tok->piece_off);
    tok->bytes_off = malloc((n + 1) * sizeof *tok->bytes_off);
    tok->piece_blob = malloc(total);
    tok->bytes_blob = malloc(total);
    tok->special = calloc(n, 1);
    if (!tok->piece_off || !tok->bytes_off || !tok->piece_blob || !tok->bytes_blob || !tok->special)
        return lp_error_set(err, LP_ERR_NOMEM, "%s: out of memory for %zu tokens", ld->name, n);
    size_t po = 0, bo = 0;
    for (size_t i = 0; i < n; i++) {
        tok->piece_off[i] = po;
        tok->bytes_off[i] = bo;
        size_t len = ld->piece_len[i];
        if (ld->piece[i]) memcpy(tok->piece_blob + po, ld->piece[i], len);
        tok->piece_blob[po + len] = '\0';
        po += len + 1;
        size_t nb = piece_to_bytes(tok->piece_blob + tok->piece_off[i], len, tok->bytes_blob + bo);
        bo += nb;
        if (nb > tok->max_token_bytes) tok->max_token_bytes = nb;
    }
    tok->piece_off[n] = po;
    tok->bytes_off[n] = bo;
    return LP_OK;
}

static enum lp_status load_vocab(struct lp_tokenizer *tok, struct loader *ld, const json_t *vocab,
                                 const json_t *added, struct lp_error *err) {
    const char *key;
    const json_t *v;
    enum lp_status st;
    // Pass 1: the largest id.
    int32_t max_id = -1;
    json_object_foreach((json_t *)vocab, key, v) {
        int32_t id = 0;
        if ((st = read_id(ld->name, "model.vocab", key, v, &id, err))) return st;
        if (id > max_id) max_id = id;
    }
    size_t i;
    json_array_foreach(added, i, v) {
        int32_t id = 0;
        if (!json_is_object(v))
            return lp_error_set(err, LP_ERR_FORMAT, "%s: added_tokens[%zu]: expected an object",
                                ld->name, i);
        if ((st = read_id(ld->name, "added_tokens", "id", json_object_get(v, "id"), &id, err)))
            return st;
        if (id > max_id) max_id = id;
    }
    if (max_id < 0) return lp_error_set(err, LP_ERR_FORMAT, "%s: 'model.vocab' is empty", ld->name);
    ld->n_vocab = max_id + 1;
    tok->n_vocab = ld->n_vocab;
    ld->piece = calloc((size_t)ld->n_vocab, sizeof *ld->piece);
    ld->piece_len = calloc((size_t)ld->n_vocab, sizeof *ld->piece_len);
    if (!ld->piece || !ld->piece_len)
        return lp_error_set(err, LP_ERR_NOMEM, "%s: out of memory", ld->name);
    // Pass 2: pieces by id.
    size_t n_entries = 0;
    json_object_foreach((json_t *)vocab, key, v) {
        int32_t id = (int32_t)json_integer_value(v);
        size_t len = strlen(key);
        if (ld->piece[id])
            return lp_error_set(err, LP_ERR_FORMAT,
                                "%s: model.vocab: id %d used by both '%.40s' and '%.40s'", ld->name,
                                id, ld->piece[id], key);
        if (len == 0 || !is_valid_utf8(key, len))
            return lp_error_set(err, LP_ERR_FORMAT,
                                "%s: model.vocab: id %d: empty or invalid UTF-8 token", ld->name,
                                id);
        ld->piece[id] = key;
        ld->piece_len[id] = len;
        n_entries++;
    }
    // Added tokens (their content wins over a vocab entry with the same id,
    // as HF's id_to_token asks the added vocabulary first).
    tok->n_added = json_array_size(added);
    tok->added = calloc(tok->n_added ? tok->n_added : 1, sizeof *tok->added);
    if (!tok->added) return lp_error_set(err, LP_ERR_NOMEM, "%s: out of memory", ld->name);
    json_array_foreach(added, i, v) {
        struct tok_added *a = &tok->added[i];
        const json_t *content = json_object_get(v, "content");
        if (!json_is_string(content) || json_string_length(content) == 0)
            return lp_error_set(err, LP_ERR_FORMAT,
                                "%s: added_tokens[%zu]: 'content' must be a non-empty string",
                                ld->name, i);
        a->id = (int32_t)json_integer_value(json_object_get(v, "id"));
        a->n_bytes = json_string_length(content);
        a->content = malloc(a->n_bytes + 1);
        if (!a->content) return lp_error_set(err, LP_ERR_NOMEM, "%s: out of memory", ld->name);
        memcpy(a->content, json_string_value(content), a->n_bytes + 1);
        if (memchr(a->content, 0, a->n_bytes) || !is_valid_utf8(a->content, a->n_bytes))
            return lp_error_set(err, LP_ERR_FORMAT,
                                "%s: added_tokens[%zu]: content is not valid UTF-8", ld->name, i);
        a->special = json_is_true(json_object_get(v, "special"));
        a->lstrip = json_is_true(json_object_get(v, "lstrip"));
        a->rstrip = json_is_true(json_object_get(v, "rstrip"));
        const json_t *norm = json_object_get(v, "normalized");
        a->normalized = json_is_null_or_absent(norm) ? !a->special : json_is_true(norm);
        if (json_is_true(json_object_get(v, "single_word")))
            return lp_error_set(err, LP_ERR_UNSUPPORTED,
                                "%s: added_tokens[%zu] '%.40s': single_word is not supported",
                                ld->name, i, a->content);
        if (ld->piece[a->id] && (ld->piece_len[a->id] != a->n_bytes ||
                                 memcmp(ld->piece[a->id], a->content, a->n_bytes) != 0))
            return lp_error_set(err, LP_ERR_UNSUPPORTED,
                                "%s: added_tokens[%zu] '%.40s': id %d is vocab token '%.40s'",
                                ld->name, i, a->content, a->id, ld->piece[a->id]);
        ld->piece[a->id] = a->content;
        ld->piece_len[a->id] = a->n_bytes;
        tok->added_first_byte[(uint8_t)a->content[0]] = true;
    }
    if ((st = build_pieces(tok, ld, err))) return st;
    for (i = 0; i < tok->n_added; i++)
        if (tok->added[i].special) tok->special[tok->added[i].id] = 1;
    // Hash of vocab pieces (model vocab only, not added tokens).
    tok->vocab_mask = pow2_at_least(n_entries * 2) - 1;
    tok->vocab_slots = malloc((tok->vocab_mask + 1) * sizeof *tok->vocab_slots);
    if (!tok->vocab_slots) return lp_error_set(err, LP_ERR_NOMEM, "%s: out of memory", ld->name);
    memset(tok->vocab_slots, 0xFF, (tok->vocab_mask + 1) * sizeof *tok->vocab_slots);
    json_object_foreach((json_t *)vocab, key, v) {
        int32_t id = (int32_t)json_integer_value(v);
        size_t len = strlen(key);
        size_t h = (size_t)tok_hash(key, len) & tok->vocab_mask;
        while (tok->vocab_slots[h] >= 0)
            h = (h + 1) & tok->vocab_mask;
        tok->vocab_slots[h] = id;
    }
    for (int b = 0; b < 256; b++) {
        uint8_t utf[4];
        size_t len = tok_utf8_encode(tok_byte_to_cp[b], utf);
        tok->byte_id[b] = tok_vocab_find(tok, (const char *)utf, len);
    }
    return LP_OK;
}

static enum lp_status insert_merge(struct lp_tokenizer *tok, const char *name, size_t rank,
                                   const char *a, size_t na, const char *b, size_t nb,
                                   char **scratch, size_t *cap, struct lp_error *err) {
    int32_t ia = tok_vocab_find(tok, a, na), ib = tok_vocab_find(tok, b, nb);
    if (ia < 0 || ib < 0)
        return lp_error_set(err, LP_ERR_FORMAT, "%s: model.merges[%zu]: '%.40s' not in vocab", name,
                            rank, ia < 0 ? a : b);
    if (na + nb > *cap) {
        size_t c = (na + nb) * 2;
        char *p = realloc(*scratch, c);
        if (!p) return lp_error_set(err, LP_ERR_NOMEM, "%s: out of memory", name);
        *scratch = p;
        *cap = c;
    }
    memcpy(*scratch, a, na);
    memcpy(*scratch + na, b, nb);
    int32_t id = tok_vocab_find(tok, *scratch, na + nb);
    if (id < 0)
        return lp_error_set(err, LP_ERR_FORMAT,
                            "%s: model.merges[%zu]: merged token '%.40s%.40s' not in vocab", name,
                            rank, a, b);
    uint64_t key = (uint64_t)(uint32_t)ia << 32 | (uint32_t)ib;
    size_t h = (size_t)tok_mix64(key) & tok->merge_mask;
    while (tok->merges[h].key != TOK_MERGE_EMPTY) {
        if (tok->merges[h].key == key) return LP_OK; // HF keeps the first rank of a repeated pair
        h = (h + 1) & tok->merge_mask;
    }
    tok->merges[h].key = key;
    tok->merges[h].rank = (int32_t)rank;
    tok->merges[h].new_id = id;
    return LP_OK;
}

static enum lp_status load_merges(struct lp_tokenizer *tok, const char *name, const json_t *merges,
                                  struct lp_error *err) {
    if (!json_is_array(merges))
        return lp_error_set(err, LP_ERR_FORMAT, "%s: 'model.merges': expected an array", name);
    size_t n = json_array_size(merges);
    if (n >= (size_t)INT32_MAX)
        return lp_error_set(err, LP_ERR_FORMAT, "%s: 'model.merges': %zu entries", name, n);
    tok->merge_mask = pow2_at_least(n * 2) - 1;
    tok->merges = malloc((tok->merge_mask + 1) * sizeof *tok->merges);
    if (!tok->merges) return lp_error_set(err, LP_ERR_NOMEM, "%s: out of memory", name);
    for (size_t i = 0; i <= tok->merge_mask; i++)
        tok->merges[i].key = TOK_MERGE_EMPTY;
    char *scratch = NULL;
    size_t cap = 0;
    enum lp_status st = LP_OK;
    for (size_t i = 0; i < n && !st; i++) {
        const json_t *m = json_array_get(merges, i);
        if (json_is_string(m)) {
            // "a b": split at the first space (HF: exactly one space).
            const char *s = json_string_value(m);
            size_t len = json_string_length(m);
            const char *sp = memchr(s, ' ', len);
            if (!sp || sp == s || sp + 1 == s + len ||
                memchr(sp + 1, ' ', (size_t)(s + len - sp - 1)))
                st = lp_error_set(err, LP_ERR_FORMAT,
                                  "%s: model.merges[%zu]: \"%.60s\" is not \"left right\"", name, i,
                                  s);
            else
                st = insert_merge(tok, name, i, s, (size_t)(sp - s), sp + 1,
                                  (size_t)(s + len - sp - 1), &scratch, &cap, err);
        } else if (json_is_array(m) && json_array_size(m) == 2 &&
                   json_is_string(json_array_get(m, 0)) && json_is_string(json_array_get(m, 1))) {
            const json_t *a = json_array_get(m, 0), *b = json_array_get(m, 1);
            st = insert_merge(tok, name, i, json_string_value(a), json_string_length(a),
                              json_string_value(b), json_string_length(b), &scratch, &cap, err);
        } else {
            st = lp_error_set(err, LP_ERR_FORMAT,
                              "%s: model.merges[%zu]: expected \"a b\" or [\"a\", \"b\"]", name, i);
        }
    }
    free(scratch);
    return st;
}

static enum lp_status load_model(struct lp_tokenizer *tok, struct loader *ld, const json_t *model,
                                 const json_t *added, struct lp_error *err) {
    const char *name = ld->name;
    enum lp_status st;
    if (!json_is_object(model))
        return lp_error_set(err, LP_ERR_FORMAT, "%s: 'model': expected an object", name);
    const char *type = type_of(model);
    if (type && strcmp(type, "BPE") != 0)
        return lp_error_set(err, LP_ERR_UNSUPPORTED, "%s: model type '%.40s' (supported: BPE)",
                            name, type);
    if ((st = expect_false(name, model, "byte_fallback", err))) return st;
    if ((st = expect_str(name, model, "continuing_subword_prefix", "", err))) return st;
    if ((st = expect_str(name, model, "end_of_word_suffix", "", err))) return st;
    const json_t *dropout = json_object_get(model, "dropout");
    if (!json_is_null_or_absent(dropout) &&
        !(json_is_number(dropout) && json_number_value(dropout) == 0.0))
        return lp_error_set(err, LP_ERR_UNSUPPORTED, "%s: model.dropout is not supported", name);
    tok->ignore_merges = json_is_true(json_object_get(model, "ignore_merges"));
    const json_t *vocab = json_object_get(model, "vocab");
    if (!json_is_object(vocab))
        return lp_error_set(err, LP_ERR_FORMAT, "%s: 'model.vocab': expected an object", name);
    if (!json_is_array(added))
        return lp_error_set(err, LP_ERR_FORMAT, "%s: 'added_tokens': expected an array", name);
    if ((st = load_vocab(tok, ld, vocab, added, err))) return st;
    const json_t *unk = json_object_get(model, "unk_token");
    tok->unk_id = -1;
    if (json_is_string(unk)) {
        tok->unk_id = tok_vocab_find(tok, json_string_value(unk), json_string_length(unk));
        if (tok->unk_id < 0)
            return lp_error_set(err, LP_ERR_FORMAT, "%s: model.unk_token '%.40s' not in vocab",
                                name, json_string_value(unk));
    }
    return load_merges(tok, name, json_object_get(model, "merges"), err);
}

// A token named in tokenizer_config.json: a string or {"content": string}.
static int32_t config_token(const struct lp_tokenizer *tok, const json_t *cfg, const char *key) {
    const json_t *v = json_object_get(cfg, key);
    if (json_is_object(v)) v = json_object_get(v, "content");
    if (!json_is_string(v)) return -1;
    return lp_tokenizer_token_id(tok, json_string_value(v));
}

enum lp_status tok_create_from_json(struct lp_tokenizer **out, const char *name,
                                    const json_t *root, const json_t *cfg, struct lp_error *err) {
    *out = NULL;
    if (!name) name = "tokenizer.json";
    struct loader ld = {.name = name};
    enum lp_status st = LP_OK;
    struct lp_tokenizer *tok = calloc(1, sizeof *tok);
    if (!tok) return lp_error_set(err, LP_ERR_NOMEM, "%s: out of memory", name);
    tok->eos_id = tok->pad_id = tok->bos_id = tok->unk_id = -1;
    if (!json_is_object(root)) {
        st = lp_error_set(err, LP_ERR_FORMAT, "%s: expected a JSON object", name);
        goto fail;
    }
    if ((st = load_model(tok, &ld, json_object_get(root, "model"),
                         json_object_get(root, "added_tokens"), err)))
        goto fail;
    if ((st = load_normalizer(tok, name, json_object_get(root, "normalizer"), err))) goto fail;
    bool bytelevel = false;
    const json_t *pt = json_object_get(root, "pre_tokenizer");
    if (!json_is_null_or_absent(pt) && (st = load_pre_tokenizer(tok, name, pt, &bytelevel, err)))
        goto fail;
    if (!bytelevel) {
        st = lp_error_set(
            err, LP_ERR_UNSUPPORTED,
            "%s: pre_tokenizer has no ByteLevel step (only byte-level BPE is supported)", name);
        goto fail;
    }
    const json_t *dec = json_object_get(root, "decoder");
    if (!json_is_object(dec) || !type_of(dec) || strcmp(type_of(dec), "ByteLevel") != 0) {
        st = lp_error_set(err, LP_ERR_UNSUPPORTED, "%s: 'decoder' must be ByteLevel", name);
        goto fail;
    }
    const json_t *post = json_object_get(root, "post_processor");
    if (!json_is_null_or_absent(post) &&
        (!type_of(post) || strcmp(type_of(post), "ByteLevel") != 0)) {
        st = lp_error_set(err, LP_ERR_UNSUPPORTED,
                          "%s: post_processor '%.40s' (supported: ByteLevel or null)", name,
                          type_of(post) ? type_of(post) : "?");
        goto fail;
    }
    if (cfg) {
        tok->eos_id = config_token(tok, cfg, "eos_token");
        tok->pad_id = config_token(tok, cfg, "pad_token");
        tok->bos_id = config_token(tok, cfg, "bos_token");
    }
    free(ld.piece);
    free(ld.piece_len);
    *out = tok;
    return LP_OK;
fail:
    free(ld.piece);
    free(ld.piece_len);
    lp_tokenizer_destroy(tok);
    return st;
}

enum lp_status lp_tokenizer_create(struct lp_tokenizer **out, const char *name,
                                   const char *tokenizer_json, size_t n_json,
                                   const char *config_json, size_t n_config, struct lp_error *err) {
    *out = NULL;
    if (!name) name = "tokenizer.json";
    json_error_t jerr;
    json_t *root = json_loadb(tokenizer_json, n_json, JSON_REJECT_DUPLICATES, &jerr), *cfg = NULL;
    if (!root)
        return lp_error_set(err, LP_ERR_FORMAT, "%s: line %d column %d: %s", name, jerr.line,
                            jerr.column, jerr.text);
    enum lp_status st = LP_OK;
    if (config_json) {
        cfg = json_loadb(config_json, n_config, 0, &jerr);
        if (!cfg || !json_is_object(cfg)) {
            st = lp_error_set(err, LP_ERR_FORMAT, "tokenizer_config.json: line %d column %d: %s",
                              cfg ? 0 : jerr.line, cfg ? 0 : jerr.column,
                              cfg ? "expected a JSON object" : jerr.text);
            goto done;
        }
    }
    st = tok_create_from_json(out, name, root, cfg, err);
done:
    json_decref(root);
    json_decref(cfg);
    return st;
}

void lp_tokenizer_destroy(struct lp_tokenizer *tok) {
    if (!tok) return;
    free(tok->piece_blob);
    free(tok->piece_off);
    free(tok->bytes_blob);
    free(tok->bytes_off);
    free(tok->special);
    free(tok->vocab_slots);
    free(tok->merges);
    for (size_t i = 0; i < tok->n_added; i++)
        free(tok->added[i].content);
    free(tok->added);
    for (int i = 0; i < tok->n_splits; i++)
        pcre2_code_free(tok->splits[i]);
    free(tok);
}

// Reads a whole file; LP_ERR_IO naming it on failure.
static enum lp_status read_file(const char *path, char **data, size_t *n_bytes,
                                struct lp_error *err) {
    *data = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return lp_error_set(err, LP_ERR_IO, "%s: %s", path, strerror(errno));
    char *buf = NULL;
    size_t cap = 0, n = 0;
    for (;;) {
        if (n == cap) {
            size_t c = cap ? cap * 2 : 1 << 20;
            char *p = realloc(buf, c);
            if (!p) {
                free(buf);
                fclose(f);
                return lp_error_set(err, LP_ERR_NOMEM, "%s: out of memory", path);
            }
            buf = p;
            cap = c;
        }
        size_t r = fread(buf + n, 1, cap - n, f);
        n += r;
        if (r == 0) break;
    }
    bool bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        return lp_error_set(err, LP_ERR_IO, "%s: read error", path);
    }
    *data = buf;
    *n_bytes = n;
    return LP_OK;
}

// The tokenizer of the GGUF model at path (its first file's metadata).
static enum lp_status load_gguf(struct lp_tokenizer **out, const char *path,
                                struct lp_error *err) {
    char **paths;
    int n_paths;
    enum lp_status st = lp_gguf_model_paths(path, &paths, &n_paths, err);
    if (st != LP_OK) return st;
    struct lp_gguf *g = NULL;
    st = lp_gguf_open(&g, paths[0], err);
    if (st == LP_OK) st = lp_tokenizer_create_gguf(out, g, err);
    lp_gguf_close(g);
    lp_gguf_paths_free(paths, n_paths);
    return st;
}

enum lp_status lp_tokenizer_load(struct lp_tokenizer **out, const char *model_dir,
                                 struct lp_error *err) {
    *out = NULL;
    size_t n_dir = strlen(model_dir);
    char *path = malloc(n_dir + 32), *cfg_path = malloc(n_dir + 32);
    char *json = NULL, *cfg = NULL;
    size_t n_json = 0, n_cfg = 0;
    enum lp_status st;
    struct stat sb;
    if (!path || !cfg_path) {
        st = lp_error_set(err, LP_ERR_NOMEM, "tokenizer: out of memory");
        goto done;
    }
    snprintf(path, n_dir + 32, "%s/tokenizer.json", model_dir);
    snprintf(cfg_path, n_dir + 32, "%s/tokenizer_config.json", model_dir);
    if (stat(path, &sb) != 0 && lp_gguf_model_is(model_dir)) {
        // a GGUF file, or a folder without tokenizer.json that holds one
        st = load_gguf(out, model_dir, err);
        goto done;
    }
    if ((st = read_file(path, &json, &n_json, err))) goto done;
    FILE *probe = fopen(cfg_path, "rb");
    if (probe) {
        fclose(probe);
        if ((st = read_file(cfg_path, &cfg, &n_cfg, err))) goto done;
    }
    st = lp_tokenizer_create(out, path, json, n_json, cfg, n_cfg, err);
done:
    free(json);
    free(cfg);
    free(path);
    free(cfg_path);
    return st;
}

// ---- vocabulary accessors -----------------------------------------------------

int32_t lp_tokenizer_n_vocab(const struct lp_tokenizer *tok) {
    return tok->n_vocab;
}

int32_t lp_tokenizer_token_id(const struct lp_tokenizer *tok, const char *text) {
    size_t n = strlen(text);
    for (size_t i = 0; i < tok->n_added; i++)
        if (tok->added[i].n_bytes == n && memcmp(tok->added[i].content, text, n) == 0)
            return tok->added[i].id;
    return tok_vocab_find(tok, text, n);
}

const char *lp_tokenizer_token_piece(const struct lp_tokenizer *tok, int32_t id, size_t *n_bytes) {
    if (id < 0 || id >= tok->n_vocab) return NULL;
    size_t off = tok->piece_off[id];
    if (n_bytes) *n_bytes = tok->piece_off[id + 1] - off - 1;
    return tok->piece_blob + off;
}

const uint8_t *lp_tokenizer_token_bytes(const struct lp_tokenizer *tok, int32_t id,
                                        size_t *n_bytes) {
    if (id < 0 || id >= tok->n_vocab) return NULL;
    size_t off = tok->bytes_off[id];
    if (n_bytes) *n_bytes = tok->bytes_off[id + 1] - off;
    return tok->bytes_blob + off;
}

bool lp_tokenizer_is_special(const struct lp_tokenizer *tok, int32_t id) {
    return id >= 0 && id < tok->n_vocab && tok->special[id];
}

int32_t lp_tokenizer_eos_id(const struct lp_tokenizer *tok) {
    return tok->eos_id;
}
int32_t lp_tokenizer_pad_id(const struct lp_tokenizer *tok) {
    return tok->pad_id;
}
int32_t lp_tokenizer_bos_id(const struct lp_tokenizer *tok) {
    return tok->bos_id;
}
