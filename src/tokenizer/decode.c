// SPDX-License-Identifier: MIT
// decode.c -- token ids -> UTF-8 text. Each id's bytes were computed at load
// (the ByteLevel decoder's char -> byte table); decoding concatenates them
// and replaces ill-formed UTF-8 with U+FFFD as Rust's from_utf8_lossy does.
// The streaming decoder holds back at most 3 bytes: the valid prefix of a
// character that the next token may complete.
#include <stdlib.h>
#include <string.h>

#include "tokenizer/internal.h"

// Ids past the vocabulary (the embedding may have padding rows) decode to
// nothing, as in HF; negative ids are a caller bug.
static bool skip_id(const struct lp_tokenizer *tok, int32_t id, unsigned flags) {
    return id >= tok->n_vocab || ((flags & LP_DECODE_SKIP_SPECIAL) && tok->special[id]);
}

enum lp_status lp_tokenizer_decode(const struct lp_tokenizer *tok, const int32_t *ids, size_t n_ids,
                                   unsigned flags, char *out, size_t cap, size_t *n_bytes,
                                   struct lp_error *err) {
    size_t total = 0;
    for (size_t i = 0; i < n_ids; i++) {
        if (ids[i] < 0)
            return lp_error_set(err, LP_ERR_INVALID_ARG, "decode: ids[%zu] = %d is negative", i,
                                ids[i]);
        if (!skip_id(tok, ids[i], flags))
            total += tok->bytes_off[ids[i] + 1] - tok->bytes_off[ids[i]];
    }
    uint8_t *raw = malloc(total ? total : 1);
    if (!raw) return lp_error_set(err, LP_ERR_NOMEM, "decode: out of memory for %zu bytes", total);
    size_t o = 0;
    for (size_t i = 0; i < n_ids; i++) {
        if (skip_id(tok, ids[i], flags)) continue;
        size_t off = tok->bytes_off[ids[i]], len = tok->bytes_off[ids[i] + 1] - off;
        memcpy(raw + o, tok->bytes_blob + off, len);
        o += len;
    }
    // Lossy conversion only grows the text when it is ill-formed.
    size_t n_out;
    if (tok_utf8_valid_prefix(raw, total) == total) {
        n_out = total;
        if (cap) {
            size_t c = total < cap ? total : cap;
            memcpy(out, raw, c);
            if (total < cap) out[total] = '\0';
        }
    } else {
        uint8_t *fixed = malloc(3 * total);
        if (!fixed) {
            free(raw);
            return lp_error_set(err, LP_ERR_NOMEM, "decode: out of memory for %zu bytes",
                                3 * total);
        }
        n_out = tok_utf8_lossy(raw, total, fixed);
        if (cap) {
            size_t c = n_out < cap ? n_out : cap;
            memcpy(out, fixed, c);
            if (n_out < cap) out[n_out] = '\0';
        }
        free(fixed);
    }
    free(raw);
    *n_bytes = n_out;
    return LP_OK;
}

// ---- streaming ------------------------------------------------------------------

// Owned and mutated by the one thread decoding its sequence.
struct lp_token_stream {
    const struct lp_tokenizer *tok; // borrowed
    unsigned flags;
    uint8_t held[4]; // an unfinished character carried to the next push
    size_t n_held;
    uint8_t *in; // [max_token_bytes + 4]: held bytes + the new token's bytes
    char *out;   // [3 * (max_token_bytes + 4) + 1]: lossy output, NUL-terminated
};

enum lp_status lp_token_stream_create(struct lp_token_stream **out, const struct lp_tokenizer *tok,
                                      unsigned flags, struct lp_error *err) {
    *out = NULL;
    struct lp_token_stream *s = calloc(1, sizeof *s);
    size_t cap = tok->max_token_bytes + 4;
    if (s) {
        s->in = malloc(cap);
        s->out = malloc(3 * cap + 1);
    }
    if (!s || !s->in || !s->out) {
        lp_token_stream_destroy(s);
        return lp_error_set(err, LP_ERR_NOMEM, "token stream: out of memory");
    }
    s->tok = tok;
    s->flags = flags;
    *out = s;
    return LP_OK;
}

void lp_token_stream_destroy(struct lp_token_stream *s) {
    if (!s) return;
    free(s->in);
    free(s->out);
    free(s);
}

enum lp_status lp_token_stream_push(struct lp_token_stream *s, int32_t id, const char **text,
                                    size_t *n_bytes, struct lp_error *err) {
    const struct lp_tokenizer *tok = s->tok;
    *text = s->out;
    *n_bytes = 0;
    s->out[0] = '\0';
    if (id < 0) return lp_error_set(err, LP_ERR_INVALID_ARG, "token stream: id %d is negative", id);
    if (skip_id(tok, id, s->flags)) return LP_OK;
    size_t off = tok->bytes_off[id], len = tok->bytes_off[id + 1] - off;
    memcpy(s->in, s->held, s->n_held);
    memcpy(s->in + s->n_held, tok->bytes_blob + off, len);
    size_t n = s->n_held + len;
    // Keep back a trailing valid prefix of a character (it may yet complete);
    // anything else ill-formed is final and becomes U+FFFD now.
    size_t keep = 0;
    for (size_t back = 1; back <= 3 && back <= n; back++) {
        size_t i = n - back;
        if ((s->in[i] & 0xC0) == 0x80) continue; // continuation byte: look further back
        if (s->in[i] >= 0xC2 && s->in[i] <= 0xF4) {
            size_t cp_len, bad = tok_utf8_bad_prefix(s->in + i, back, &cp_len);
            if (bad == back) keep = back; // truncated but valid so far
        }
        break;
    }
    size_t o = tok_utf8_lossy(s->in, n - keep, (uint8_t *)s->out);
    s->out[o] = '\0';
    memcpy(s->held, s->in + n - keep, keep);
    s->n_held = keep;
    *n_bytes = o;
    return LP_OK;
}

void lp_token_stream_flush(struct lp_token_stream *s, const char **text, size_t *n_bytes) {
    size_t o = tok_utf8_lossy(s->held, s->n_held, (uint8_t *)s->out);
    s->out[o] = '\0';
    s->n_held = 0;
    *text = s->out;
    *n_bytes = o;
}

void lp_token_stream_reset(struct lp_token_stream *s) {
    s->n_held = 0;
}
