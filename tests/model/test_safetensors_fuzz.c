// SPDX-License-Identifier: MIT
// test_safetensors_fuzz.c -- a deterministic mutation loop over lp_st_parse:
// a few thousand images derived from a small valid file (byte flips, random
// bytes, truncations, edited length field, numbers in the header replaced by
// extreme values, spliced-in tokens). Each image lives in a heap buffer of
// exactly its size so ASan catches any read past it. The parser must never
// crash; on LP_OK every tensor must lie inside the image and match
// dtype x shape; on failure the message must be non-empty and name the file.
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lp_test.h"
#include "model/internal.h"

static const char *SEED_HDR =
    "{\"__metadata__\": {\"format\": \"pt\"}, "
    "\"a\": {\"dtype\": \"F32\", \"shape\": [2, 2], \"data_offsets\": [0, 16]}, "
    "\"b\": {\"dtype\": \"BF16\", \"shape\": [3], \"data_offsets\": [16, 22]}, "
    "\"c\": {\"dtype\": \"U32\", \"shape\": [1, 2], \"data_offsets\": [24, 32]}, "
    "\"d\": {\"dtype\": \"I64\", \"shape\": [0, 7], \"data_offsets\": [32, 32]}}";
#define SEED_DATA 32

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint64_t rnd(void) {
    uint64_t x = rng_state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return rng_state = x;
}
static size_t rnd_below(size_t n) { return n ? (size_t)(rnd() % n) : 0; }

struct buf {
    uint8_t *p;
    size_t n;
};

static struct buf seed(void) {
    size_t h = strlen(SEED_HDR), hp = (h + 7) / 8 * 8;
    struct buf b = {malloc(8 + hp + SEED_DATA), 8 + hp + SEED_DATA};
    if (!b.p) abort();
    for (int i = 0; i < 8; i++) b.p[i] = (uint8_t)((uint64_t)hp >> (8 * i));
    memcpy(b.p + 8, SEED_HDR, h);
    memset(b.p + 8 + h, ' ', hp - h);
    for (size_t i = 0; i < SEED_DATA; i++) b.p[8 + hp + i] = (uint8_t)i;
    return b;
}

// Replaces bytes [at, at+len) of b with rep (n_rep bytes), growing or shrinking.
static void splice(struct buf *b, size_t at, size_t len, const char *rep, size_t n_rep) {
    if (at > b->n) at = b->n;
    if (len > b->n - at) len = b->n - at;
    size_t n = b->n - len + n_rep;
    uint8_t *p = malloc(n ? n : 1);
    if (!p) abort();
    memcpy(p, b->p, at);
    memcpy(p + at, rep, n_rep);
    memcpy(p + at + n_rep, b->p + at + len, b->n - at - len);
    free(b->p);
    b->p = p;
    b->n = n;
}

static void set_len(struct buf *b, uint64_t v) {
    if (b->n >= 8)
        for (int i = 0; i < 8; i++) b->p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get_len(const struct buf *b) {
    uint64_t v = 0;
    if (b->n >= 8)
        for (int i = 7; i >= 0; i--) v = (v << 8) | b->p[i];
    return v;
}

static const char *TOKENS[] = {
    "-1", "0", "1", "4294967296", "9223372036854775807", "18446744073709551615",
    "4611686018427387904", "1e300", "1.5", "null", "true", "\"F32\"", "\"F64\"", "\"BF16\"",
    "[]", "[0]", "[0, 0]", "[1, 2, 3]", "{}", "[[1]]", ",", ":", "{", "}", "[", "]", "\"",
    "\"shape\"", "\"dtype\"", "\"data_offsets\"", "\\u0000", "\"__metadata__\"", "", " ",
    "[1,1,1,1,1,1,1,1,1]", "[65536, 65536, 65536, 65536]",
};

// One mutation of b (the header is assumed to start at byte 8).
static void mutate(struct buf *b) {
    uint64_t hl = get_len(b);
    size_t hdr_end = (hl <= b->n - (b->n >= 8 ? 8 : b->n)) ? 8 + (size_t)hl : b->n;
    switch (rnd() % 8) {
    case 0: // flip a bit anywhere
        if (b->n) b->p[rnd_below(b->n)] ^= (uint8_t)(1u << rnd_below(8));
        break;
    case 1: // random byte in the header
        if (hdr_end > 8) b->p[8 + rnd_below(hdr_end - 8)] = (uint8_t)rnd();
        break;
    case 2: // truncate
        b->n = rnd_below(b->n + 1);
        break;
    case 3: { // edit the length field
        static const uint64_t vals[] = {0, 1, 7, 8, LP_ST_MAX_HEADER_BYTES,
                                        LP_ST_MAX_HEADER_BYTES + 1, UINT64_MAX, 1ull << 63};
        uint64_t v = rnd() % 2 ? vals[rnd_below(8)] : hl + rnd_below(17) - 8;
        set_len(b, v);
        break;
    }
    case 4:
    case 5: { // replace a number in the header with a token
        if (hdr_end <= 8) break;
        size_t at = 8 + rnd_below(hdr_end - 8);
        while (at < hdr_end && !(b->p[at] >= '0' && b->p[at] <= '9')) at++;
        if (at >= hdr_end) break;
        size_t len = 0;
        while (at + len < hdr_end && b->p[at + len] >= '0' && b->p[at + len] <= '9') len++;
        const char *tok = TOKENS[rnd_below(sizeof TOKENS / sizeof TOKENS[0])];
        size_t nt = strlen(tok);
        splice(b, at, len, tok, nt);
        set_len(b, hl + nt - len); // keep the length consistent
        break;
    }
    case 6: { // insert or replace with a token anywhere in the header
        if (hdr_end <= 8) break;
        size_t at = 8 + rnd_below(hdr_end - 8);
        size_t len = rnd_below(4);
        if (at + len > hdr_end) len = hdr_end - at;
        const char *tok = TOKENS[rnd_below(sizeof TOKENS / sizeof TOKENS[0])];
        size_t nt = strlen(tok);
        splice(b, at, len, tok, nt);
        if (rnd() % 4) set_len(b, hl + nt - len);
        break;
    }
    default: { // append or drop data bytes
        if (rnd() % 2) {
            char junk[9] = "xxxxxxxx";
            splice(b, b->n, 0, junk, rnd_below(9));
        } else if (b->n) {
            b->n -= rnd_below(b->n < 9 ? b->n + 1 : 9);
        }
        break;
    }
    }
}

int main(void) {
    int n_ok = 0, n_err = 0, bad_invariant = 0, bad_msg = 0;
    const int iters = 20000;
    for (int it = 0; it < iters; it++) {
        struct buf b = seed();
        int n_mut = 1 + (int)(rnd_below(4) == 0 ? rnd_below(4) : 0);
        for (int k = 0; k < n_mut; k++) mutate(&b);
        // exact-size copy so ASan sees overreads
        uint8_t *img = malloc(b.n ? b.n : 1);
        if (!img) abort();
        memcpy(img, b.p, b.n);
        struct lp_st_file *f = calloc(1, sizeof *f);
        if (!f) abort();
        f->path = strdup("fuzz.safetensors");
        struct lp_error err;
        lp_error_clear(&err);
        enum lp_status st = lp_st_parse(f, img, b.n, &err);
        if (st == LP_OK) {
            n_ok++;
            for (int i = 0; i < f->n_tensors; i++) {
                const struct lp_st_tensor *t = &f->tensors[i];
                size_t elems = 1;
                for (int d = 0; d < t->n_dims; d++) elems *= (size_t)t->shape[d];
                const uint8_t *p = t->data;
                int inside = p >= img && p <= img + b.n && t->nbytes <= (size_t)(img + b.n - p);
                if (!inside || elems * lp_dtype_size(t->dtype) != t->nbytes ||
                    lp_st_find(f, t->name) != t || (uintptr_t)p % lp_dtype_size(t->dtype)) {
                    bad_invariant++;
                    continue;
                }
                volatile uint8_t sink = 0;
                for (size_t k = 0; k < t->nbytes; k++) sink ^= p[k]; // ASan checks the bytes
                (void)sink;
            }
        } else {
            n_err++;
            if (!err.msg[0] || !strstr(err.msg, "fuzz.safetensors") || err.status != st) {
                if (bad_msg < 5) fprintf(stderr, "iteration %d: bad message '%s'\n", it, err.msg);
                bad_msg++;
            }
        }
        lp_st_close(f);
        free(img);
        free(b.p);
    }
    printf("fuzz: %d images, %d parsed, %d rejected\n", iters, n_ok, n_err);
    CHECK(bad_invariant == 0);
    CHECK(bad_msg == 0);
    CHECK(n_ok > 0 && n_err > 0); // the loop exercises both paths
    return lp_test_finish("test_safetensors_fuzz");
}
