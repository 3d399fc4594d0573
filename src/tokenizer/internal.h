// SPDX-License-Identifier: MIT
// internal.h -- the tokenizer module's private types, shared by load.c
// (tokenizer.json -> tables), encode.c (text -> ids), decode.c (ids -> text)
// and chat_template.c. A struct lp_tokenizer is built once by load.c and is
// read-only afterwards, so encode/decode may run on many threads at once.
#ifndef LP_TOKENIZER_INTERNAL_H
#define LP_TOKENIZER_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <jansson.h>
#include <pcre2.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "layerpipe/tokenizer.h"

// Largest token id accepted from a file (+1): bounds every id-indexed table.
#define TOK_MAX_VOCAB (1 << 24)
// Most pre-tokenizer Split regexes applied in sequence.
#define TOK_MAX_SPLITS 4

// An added token (tokenizer.json "added_tokens").
struct tok_added {
    char *content;  // owned, NUL-terminated
    size_t n_bytes; // strlen(content)
    int32_t id;
    bool special;    // skipped by LP_DECODE_SKIP_SPECIAL, split by LP_ENCODE_SPLIT_SPECIAL
    bool lstrip;     // absorbs whitespace before a match
    bool rstrip;     // absorbs whitespace after a match
    bool normalized; // matched in NFC-normalized text instead of raw text
};

// One slot of the merge hash table: pair (left id, right id) -> rank, result.
struct tok_merge {
    uint64_t key;   // (uint64_t)left << 32 | right; TOK_MERGE_EMPTY when free
    int32_t rank;   // position in "merges": lower merges first
    int32_t new_id; // id of left+right
};
#define TOK_MERGE_EMPTY UINT64_MAX

// Written only by lp_tokenizer_create (load.c); read-only afterwards, so any
// number of threads may encode and decode at once without locks.
struct lp_tokenizer {
    int32_t n_vocab; // one past the largest id (vocab and added tokens)

    // Per id: the piece as written in tokenizer.json and its decoded bytes.
    char *piece_blob;    // all pieces, each NUL-terminated
    size_t *piece_off;   // [n_vocab + 1] offsets into piece_blob; empty piece = unused id
    uint8_t *bytes_blob; // decoded bytes of every piece
    size_t *bytes_off;   // [n_vocab + 1]
    uint8_t *special;    // [n_vocab] 1 for special added tokens
    size_t max_token_bytes;

    // Byte-level vocabulary lookup: piece string -> id (model vocab only).
    int32_t *vocab_slots; // [vocab_mask + 1], -1 when free
    size_t vocab_mask;

    struct tok_merge *merges; // [merge_mask + 1]
    size_t merge_mask;
    int32_t byte_id[256]; // id of the one-char piece of each byte, -1 if not in vocab
    int32_t unk_id;       // model.unk_token id or -1 (unknown symbols are dropped)
    bool ignore_merges;   // whole-word vocab hit wins before merging

    struct tok_added *added; // [n_added]
    size_t n_added;
    bool added_first_byte[256]; // some added token starts with this byte

    bool nfc; // normalizer is NFC

    pcre2_code *splits[TOK_MAX_SPLITS]; // pre-tokenizer regexes, applied in order
    int n_splits;
    bool splits_jit[TOK_MAX_SPLITS]; // JIT compiled

    int32_t eos_id, pad_id, bos_id;
};

// Builds a tokenizer from parsed documents: tokenizer.json's root and
// tokenizer_config.json's (cfg may be NULL), both only read (load.c).
enum lp_status tok_create_from_json(struct lp_tokenizer **out, const char *name,
                                    const json_t *root, const json_t *cfg, struct lp_error *err);

// GPT-2 byte-level mapping: byte -> code point, and code point -> byte (or -1).
extern const uint16_t tok_byte_to_cp[256];
int tok_cp_to_byte(uint32_t cp);

// FNV-1a over bytes.
static inline uint64_t tok_hash(const void *data, size_t n_bytes) {
    const uint8_t *p = data;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n_bytes; i++)
        h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

static inline uint64_t tok_mix64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return x;
}

// Vocabulary lookup of a byte-level piece; -1 if absent.
int32_t tok_vocab_find(const struct lp_tokenizer *tok, const char *piece, size_t n_bytes);

// Merge lookup; NULL if the pair does not merge.
static inline const struct tok_merge *tok_merge_find(const struct lp_tokenizer *tok, int32_t left,
                                                     int32_t right) {
    uint64_t key = (uint64_t)(uint32_t)left << 32 | (uint32_t)right;
    size_t i = (size_t)tok_mix64(key) & tok->merge_mask;
    for (;;) {
        const struct tok_merge *m = &tok->merges[i];
        if (m->key == key) return m;
        if (m->key == TOK_MERGE_EMPTY) return NULL;
        i = (i + 1) & tok->merge_mask;
    }
}

// UTF-8 helpers (utf8.c).
// Length of the valid UTF-8 prefix of s (strict: no overlongs, surrogates or
// code points above U+10FFFF).
size_t tok_utf8_valid_prefix(const uint8_t *s, size_t n_bytes);
// Length of a maximal subpart of an ill-formed sequence starting at s[0]
// (Unicode 3.9 "U+FFFD substitution of maximal subparts"), or 0 if a
// complete well-formed character starts there. *cp_len gets the length of
// the well-formed character when 0 is returned.
size_t tok_utf8_bad_prefix(const uint8_t *s, size_t n_bytes, size_t *cp_len);
// Appends bytes to out replacing ill-formed subparts by U+FFFD (EF BF BD).
// out must hold 3 * n_bytes. Returns bytes written.
size_t tok_utf8_lossy(const uint8_t *s, size_t n_bytes, uint8_t *out);
// Decodes one well-formed character at s (n >= its length); returns its length.
size_t tok_utf8_decode(const uint8_t *s, uint32_t *cp);
// Encodes cp; returns length (1-4). out holds 4 bytes.
size_t tok_utf8_encode(uint32_t cp, uint8_t *out);

#endif
