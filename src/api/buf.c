// SPDX-License-Identifier: MIT
// buf.c -- the growable byte buffer that the text object and the OpenAI
// layer build their strings in.
#include <stdlib.h>
#include <string.h>

#include "api/internal.h"

bool lp_api_buf_put(struct lp_api_buf *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->n + n + 1)
            cap *= 2;
        char *d = realloc(b->data, cap);
        if (!d) return false;
        b->data = d;
        b->cap = cap;
    }
    if (n) memcpy(b->data + b->n, s, n);
    b->n += n;
    b->data[b->n] = '\0';
    return true;
}

void lp_api_buf_consume(struct lp_api_buf *b, size_t n) {
    memmove(b->data, b->data + n, b->n - n);
    b->n -= n;
    b->data[b->n] = '\0';
}

const char *lp_api_buf_str(const struct lp_api_buf *b) {
    return b->data ? b->data : "";
}
