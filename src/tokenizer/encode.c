// SPDX-License-Identifier: MIT
// encode.c -- text -> token ids, step by step as HF tokenizers does it:
//   1. added tokens are matched on the raw text (leftmost-longest) and never split;
//   2. each stretch between them is NFC-normalized (utf8proc); added tokens
//      marked "normalized" are then matched in the normalized text;
//   3. each stretch is split by the pre-tokenizer regexes (Isolated: matches
//      and the gaps between them are both pieces);
//   4. each piece's bytes become byte-level symbols, merged by rank with a
//      binary heap (HF's Word::merge_all), so a long word costs O(n log n).
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "tokenizer/internal.h"

void lp_token_list_init(struct lp_token_list *list) {
    memset(list, 0, sizeof *list);
}

void lp_token_list_deinit(struct lp_token_list *list) {
    if (!list) return;
    free(list->ids);
    memset(list, 0, sizeof *list);
}

enum lp_status lp_token_list_push(struct lp_token_list *list, int32_t id, struct lp_error *err) {
    if (list->n_ids == list->cap_ids) {
        size_t cap = list->cap_ids ? list->cap_ids * 2 : 64;
        int32_t *p = realloc(list->ids, cap * sizeof *p);
        if (!p) return lp_error_set(err, LP_ERR_NOMEM, "encode: out of memory for %zu ids", cap);
        list->ids = p;
        list->cap_ids = cap;
    }
    list->ids[list->n_ids++] = id;
    return LP_OK;
}

// One heap entry: a candidate merge of the symbol at pos with its successor.
struct heap_item {
    uint64_t key;   // rank << 32 | pos: lowest rank first, then leftmost (HF's Merge order)
    int32_t new_id; // the merged token the pair had when pushed
};

// Scratch of one encode call, on its caller's stack and thread.
struct enc {
    const struct lp_tokenizer *tok;
    struct lp_token_list *out;
    unsigned flags;
    struct lp_error *err;
    pcre2_match_data *md;
    pcre2_match_context *mctx; // with a larger JIT stack, made on demand
    pcre2_jit_stack *jit_stack;
    // BPE symbols of the current piece: [cap_sym] each
    int32_t *sym, *prev, *next;
    uint8_t *dead;
    size_t cap_sym;
    struct heap_item *heap; // [cap_heap]
    size_t n_heap, cap_heap;
    char *bl; // byte-level spelling of a piece (ignore_merges only), [cap_bl]
    size_t cap_bl;
};

static enum lp_status nomem(struct enc *e) {
    return lp_error_set(e->err, LP_ERR_NOMEM, "encode: out of memory");
}

// ---- BPE ----------------------------------------------------------------------

static bool heap_push(struct enc *e, uint64_t key, int32_t new_id) {
    if (e->n_heap == e->cap_heap) {
        size_t cap = e->cap_heap ? e->cap_heap * 2 : 256;
        struct heap_item *p = realloc(e->heap, cap * sizeof *p);
        if (!p) return false;
        e->heap = p;
        e->cap_heap = cap;
    }
    size_t i = e->n_heap++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (e->heap[parent].key <= key) break;
        e->heap[i] = e->heap[parent];
        i = parent;
    }
    e->heap[i].key = key;
    e->heap[i].new_id = new_id;
    return true;
}

static struct heap_item heap_pop(struct enc *e) {
    struct heap_item top = e->heap[0], last = e->heap[--e->n_heap];
    size_t i = 0, n = e->n_heap;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && e->heap[c + 1].key < e->heap[c].key) c++;
        if (last.key <= e->heap[c].key) break;
        e->heap[i] = e->heap[c];
        i = c;
    }
    if (n) e->heap[i] = last;
    return top;
}

static bool push_pair(struct enc *e, int32_t pos) {
    const struct tok_merge *m = tok_merge_find(e->tok, e->sym[pos], e->sym[e->next[pos]]);
    if (!m) return true;
    return heap_push(e, (uint64_t)(uint32_t)m->rank << 32 | (uint32_t)pos, m->new_id);
}

static enum lp_status bpe(struct enc *e, const uint8_t *s, size_t n) {
    const struct lp_tokenizer *tok = e->tok;
    enum lp_status st;
    if (n == 0) return LP_OK;
    if (n > e->cap_sym) {
        size_t cap = n * 2;
        int32_t *sym = realloc(e->sym, cap * sizeof *sym);
        if (sym) e->sym = sym;
        int32_t *prev = realloc(e->prev, cap * sizeof *prev);
        if (prev) e->prev = prev;
        int32_t *next = realloc(e->next, cap * sizeof *next);
        if (next) e->next = next;
        uint8_t *dead = realloc(e->dead, cap);
        if (dead) e->dead = dead;
        if (!sym || !prev || !next || !dead) return nomem(e);
        e->cap_sym = cap;
    }
    if (tok->ignore_merges) {
        // HF: a word that is itself in the vocabulary is one token.
        if (n * 2 > e->cap_bl) {
            char *p = realloc(e->bl, n * 2);
            if (!p) return nomem(e);
            e->bl = p;
            e->cap_bl = n * 2;
        }
        size_t len = 0;
        for (size_t i = 0; i < n; i++)
            len += tok_utf8_encode(tok_byte_to_cp[s[i]], (uint8_t *)e->bl + len);
        int32_t id = tok_vocab_find(tok, e->bl, len);
        if (id >= 0) return lp_token_list_push(e->out, id, e->err);
    }
    // One symbol per byte; bytes missing from the vocabulary become the unk
    // token or are dropped (HF without byte_fallback).
    int32_t m = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t id = tok->byte_id[s[i]];
        if (id < 0) id = tok->unk_id;
        if (id < 0) continue;
        e->sym[m] = id;
        e->prev[m] = m - 1;
        e->next[m] = m + 1;
        e->dead[m] = 0;
        m++;
    }
    if (m == 0) return LP_OK;
    e->next[m - 1] = -1;
    if (m == 1) return lp_token_list_push(e->out, e->sym[0], e->err);
    if (m == 2) {
        const struct tok_merge *mg = tok_merge_find(tok, e->sym[0], e->sym[1]);
        if (mg) return lp_token_list_push(e->out, mg->new_id, e->err);
        if ((st = lp_token_list_push(e->out, e->sym[0], e->err))) return st;
        return lp_token_list_push(e->out, e->sym[1], e->err);
    }
    e->n_heap = 0;
    for (int32_t i = 0; i + 1 < m; i++)
        if (!push_pair(e, i)) return nomem(e);
    while (e->n_heap) {
        struct heap_item top = heap_pop(e);
        int32_t pos = (int32_t)(uint32_t)top.key;
        if (e->dead[pos]) continue;
        int32_t nx = e->next[pos];
        if (nx < 0) continue;
        // A stale entry: the pair changed since it was pushed.
        const struct tok_merge *mg = tok_merge_find(tok, e->sym[pos], e->sym[nx]);
        if (!mg || mg->new_id != top.new_id) continue;
        e->sym[pos] = top.new_id;
        e->dead[nx] = 1;
        e->next[pos] = e->next[nx];
        if (e->next[nx] >= 0) e->prev[e->next[nx]] = pos;
        if (e->prev[pos] >= 0 && !push_pair(e, e->prev[pos])) return nomem(e);
        if (e->next[pos] >= 0 && !push_pair(e, pos)) return nomem(e);
    }
    for (int32_t i = 0; i >= 0; i = e->next[i])
        if ((st = lp_token_list_push(e->out, e->sym[i], e->err))) return st;
    return LP_OK;
}

// ---- pre-tokenizer ------------------------------------------------------------

static enum lp_status split(struct enc *e, int level, const uint8_t *s, size_t n) {
    const struct lp_tokenizer *tok = e->tok;
    if (level == tok->n_splits) return bpe(e, s, n);
    enum lp_status st;
    const pcre2_code *re = tok->splits[level];
    size_t off = 0, last = 0;
    while (off < n) {
        int rc;
        if (tok->splits_jit[level])
            rc = pcre2_jit_match(re, s, n, off, 0, e->md, e->mctx);
        else
            rc = pcre2_match(re, s, n, off, PCRE2_NO_UTF_CHECK, e->md, e->mctx);
        if (rc == PCRE2_ERROR_JIT_STACKLIMIT && !e->jit_stack) {
            // Deep backtracking on a huge piece: retry with a larger stack.
            e->mctx = pcre2_match_context_create(NULL);
            e->jit_stack = pcre2_jit_stack_create(64 * 1024, 64 * 1024 * 1024, NULL);
            if (!e->mctx || !e->jit_stack) return nomem(e);
            pcre2_jit_stack_assign(e->mctx, NULL, e->jit_stack);
            continue;
        }
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) {
            PCRE2_UCHAR msg[120];
            pcre2_get_error_message(rc, msg, sizeof msg);
            return lp_error_set(e->err, LP_ERR_INTERNAL,
                                "encode: pre-tokenizer regex %d at byte %zu: %s", level, off,
                                (const char *)msg);
        }
        const PCRE2_SIZE *ov = pcre2_get_ovector_pointer(e->md);
        size_t ms = ov[0], me = ov[1];
        if (me <= ms) {
            // An empty match: step over one character, which stays in the gap.
            size_t len = 1;
            while (ms + len < n && (s[ms + len] & 0xC0) == 0x80)
                len++;
            off = ms + len;
            continue;
        }
        if (ms > last && (st = split(e, level + 1, s + last, ms - last))) return st;
        if ((st = split(e, level + 1, s + ms, me - ms))) return st;
        last = off = me;
    }
    if (last < n) return split(e, level + 1, s + last, n - last);
    return LP_OK;
}

// ---- added tokens -------------------------------------------------------------

// White_Space (Rust char::is_whitespace), for lstrip/rstrip.
static bool is_ws(uint32_t c) {
    return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
           c == 0x205F || c == 0x3000;
}

typedef enum lp_status (*plain_fn)(struct enc *e, const uint8_t *s, size_t n);

// Finds added tokens (those with .normalized == normalized) in s and emits
// plain stretches through `plain` and added tokens as ids, in order.
static enum lp_status match_added(struct enc *e, const uint8_t *s, size_t n, bool normalized,
                                  plain_fn plain) {
    const struct lp_tokenizer *tok = e->tok;
    enum lp_status st;
    size_t start = 0; // first byte not yet emitted
    bool split_special = e->flags & LP_ENCODE_SPLIT_SPECIAL;
    for (size_t i = 0; i < n;) {
        if (!tok->added_first_byte[s[i]]) {
            i++;
            continue;
        }
        const struct tok_added *best = NULL;
        for (size_t k = 0; k < tok->n_added; k++) {
            const struct tok_added *a = &tok->added[k];
            if (a->normalized != normalized || (a->special && split_special)) continue;
            if (a->n_bytes <= n - i && (!best || a->n_bytes > best->n_bytes) &&
                memcmp(s + i, a->content, a->n_bytes) == 0)
                best = a;
        }
        if (!best) {
            i++;
            continue;
        }
        size_t ms = i, me = i + best->n_bytes;
        if (best->lstrip) {
            while (ms > start) {
                size_t b = ms - 1;
                while (b > start && (s[b] & 0xC0) == 0x80)
                    b--;
                uint32_t cp;
                tok_utf8_decode(s + b, &cp);
                if (!is_ws(cp)) break;
                ms = b;
            }
        }
        if (best->rstrip) {
            while (me < n) {
                uint32_t cp;
                size_t len = tok_utf8_decode(s + me, &cp);
                if (!is_ws(cp)) break;
                me += len;
            }
        }
        if (ms > start && (st = plain(e, s + start, ms - start))) return st;
        if ((st = lp_token_list_push(e->out, best->id, e->err))) return st;
        start = i = me;
    }
    if (start < n) return plain(e, s + start, n - start);
    return LP_OK;
}

static bool any_normalized_added(const struct lp_tokenizer *tok) {
    for (size_t k = 0; k < tok->n_added; k++)
        if (tok->added[k].normalized) return true;
    return false;
}

static enum lp_status split0(struct enc *e, const uint8_t *s, size_t n) {
    return split(e, 0, s, n);
}

// NFC of s into a malloc'ed *out. Only the non-ASCII runs (with the ASCII
// character before each, which a combining mark may compose with) go
// through utf8proc: every ASCII character is a starter that nothing composes
// with from the left, so the text before it normalizes independently.
static enum lp_status nfc(struct enc *e, const uint8_t *s, size_t n, uint8_t **out, size_t *n_out) {
    uint8_t *buf = NULL;
    size_t len = 0, cap = 0, i = 0;
    *out = NULL;
    while (i < n) {
        size_t j = i;
        while (j < n && s[j] < 0x80)
            j++;
        size_t run = j;                // non-ASCII run [start, end)
        if (run < n && run > i) run--; // keep the preceding ASCII char with the run
        size_t end = j;
        while (end < n && s[end] >= 0x80)
            end++;
        uint8_t *norm = NULL;
        utf8proc_ssize_t n_norm = 0;
        if (end > run) {
            n_norm = utf8proc_map(s + run, (utf8proc_ssize_t)(end - run), &norm,
                                  UTF8PROC_STABLE | UTF8PROC_COMPOSE);
            if (n_norm < 0) {
                free(buf);
                return lp_error_set(e->err,
                                    n_norm == UTF8PROC_ERROR_NOMEM ? LP_ERR_NOMEM : LP_ERR_INTERNAL,
                                    "encode: NFC normalization: %s", utf8proc_errmsg(n_norm));
            }
        }
        size_t need = len + (run - i) + (size_t)n_norm;
        if (need > cap) {
            size_t c = need > 2 * n ? need : 2 * n;
            uint8_t *p = realloc(buf, c ? c : 1);
            if (!p) {
                free(norm);
                free(buf);
                return nomem(e);
            }
            buf = p;
            cap = c;
        }
        memcpy(buf + len, s + i, run - i);
        len += run - i;
        if (n_norm) memcpy(buf + len, norm, (size_t)n_norm);
        len += (size_t)n_norm;
        free(norm);
        i = end;
    }
    *out = buf;
    *n_out = len;
    return LP_OK;
}

// A stretch of raw text between added tokens: normalize, then split.
static enum lp_status plain_raw(struct enc *e, const uint8_t *s, size_t n) {
    const struct lp_tokenizer *tok = e->tok;
    uint8_t *norm = NULL;
    enum lp_status st;
    if (tok->nfc) {
        bool ascii = true;
        for (size_t i = 0; i < n && ascii; i++)
            ascii = s[i] < 0x80;
        if (!ascii) {
            size_t n_norm = 0;
            if ((st = nfc(e, s, n, &norm, &n_norm))) return st;
            s = norm;
            n = n_norm;
        }
    }
    st = any_normalized_added(tok) ? match_added(e, s, n, true, split0) : split(e, 0, s, n);
    free(norm);
    return st;
}

enum lp_status lp_tokenizer_encode(const struct lp_tokenizer *tok, const char *text, size_t n_bytes,
                                   unsigned flags, struct lp_token_list *out,
                                   struct lp_error *err) {
    const uint8_t *s = (const uint8_t *)text;
    size_t valid = tok_utf8_valid_prefix(s, n_bytes);
    if (valid < n_bytes)
        return lp_error_set(err, LP_ERR_INVALID_ARG,
                            "encode: invalid UTF-8 at byte %zu of %zu (byte 0x%02X)", valid,
                            n_bytes, s[valid]);
    size_t n0 = out->n_ids;
    struct enc e = {.tok = tok, .out = out, .flags = flags, .err = err};
    enum lp_status st = LP_OK;
    if (tok->n_splits) {
        e.md = pcre2_match_data_create(4, NULL);
        if (!e.md) {
            st = nomem(&e);
            goto done;
        }
    }
    st = match_added(&e, s, n_bytes, false, plain_raw);
done:
    if (st) out->n_ids = n0;
    pcre2_match_data_free(e.md);
    pcre2_match_context_free(e.mctx);
    pcre2_jit_stack_free(e.jit_stack);
    free(e.sym);
    free(e.prev);
    free(e.next);
    free(e.dead);
    free(e.heap);
    free(e.bl);
    return st;
}
