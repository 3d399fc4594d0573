// SPDX-License-Identifier: MIT
// stop.c -- stop strings over streamed text. The matcher keeps a buffer of
// text not yet released; after each push it looks for any stop string in
// the buffer (earliest occurrence wins), else releases all but the longest
// suffix that is a proper prefix of some stop string. Held text is at most
// the longest stop string, so the buffer stays small; it only grows with
// the caller's chunk size.
#include <stdlib.h>
#include <string.h>

#include "layerpipe/tokenizer.h"

struct lp_stop_matcher {
    const char *stops[LP_MAX_STOP_STRINGS];
    size_t stop_len[LP_MAX_STOP_STRINGS];
    int n_stops;
    bool stopped;
    char *buf;       // [cap] held text, then the released copy
    size_t n, cap;
    char *out;       // [cap] what the last call released
};

enum lp_status lp_stop_matcher_create(struct lp_stop_matcher **out, const char *const *stops,
                                      int n_stops, struct lp_error *err) {
    *out = NULL;
    if (n_stops < 0 || n_stops > LP_MAX_STOP_STRINGS)
        return lp_error_set(err, LP_ERR_INVALID_ARG, "stop strings: %d given, at most %d",
                            n_stops, LP_MAX_STOP_STRINGS);
    struct lp_stop_matcher *m = calloc(1, sizeof *m);
    if (!m) return lp_error_set(err, LP_ERR_NOMEM, "stop strings: out of memory");
    for (int i = 0; i < n_stops; i++) {
        if (!stops[i] || !stops[i][0]) {
            free(m);
            return lp_error_set(err, LP_ERR_INVALID_ARG, "stop string %d is empty", i + 1);
        }
        m->stops[i] = stops[i];
        m->stop_len[i] = strlen(stops[i]);
    }
    m->n_stops = n_stops;
    *out = m;
    return LP_OK;
}

void lp_stop_matcher_destroy(struct lp_stop_matcher *m) {
    if (!m) return;
    free(m->buf);
    free(m->out);
    free(m);
}

static bool grow(struct lp_stop_matcher *m, size_t need) {
    if (need <= m->cap) return true;
    size_t cap = m->cap ? m->cap : 256;
    while (cap < need) cap *= 2;
    char *b = realloc(m->buf, cap), *o;
    if (!b) return false;
    m->buf = b;
    o = realloc(m->out, cap);
    if (!o) return false;
    m->out = o;
    m->cap = cap;
    return true;
}

// Releases buf[0..k) into out and keeps the rest.
static void release(struct lp_stop_matcher *m, size_t k, const char **out, size_t *n_out) {
    memcpy(m->out, m->buf, k);
    memmove(m->buf, m->buf + k, m->n - k);
    m->n -= k;
    *out = m->out;
    *n_out = k;
}

bool lp_stop_matcher_push(struct lp_stop_matcher *m, const char *text, size_t n, const char **out,
                          size_t *n_out) {
    *out = "";
    *n_out = 0;
    if (m->stopped) return true;
    if (!grow(m, m->n + n + 1)) { // out of memory: pass the text through unfiltered
        *out = text;
        *n_out = n;
        return false;
    }
    memcpy(m->buf + m->n, text, n);
    m->n += n;
    // earliest stop string occurrence
    size_t best = m->n;
    for (int i = 0; i < m->n_stops; i++) {
        size_t L = m->stop_len[i];
        for (size_t p = 0; p + L <= m->n && p < best; p++)
            if (memcmp(m->buf + p, m->stops[i], L) == 0) {
                best = p;
                break;
            }
    }
    if (best < m->n) {
        release(m, best, out, n_out);
        m->stopped = true;
        m->n = 0;
        return true;
    }
    // hold the longest suffix that could still start a stop string
    size_t hold = 0;
    for (int i = 0; i < m->n_stops; i++) {
        size_t L = m->stop_len[i];
        for (size_t k = L - 1 < m->n ? L - 1 : m->n; k > hold; k--)
            if (memcmp(m->buf + m->n - k, m->stops[i], k) == 0) {
                hold = k;
                break;
            }
    }
    release(m, m->n - hold, out, n_out);
    return false;
}

void lp_stop_matcher_flush(struct lp_stop_matcher *m, const char **out, size_t *n_out) {
    *out = "";
    *n_out = 0;
    if (m->stopped || m->n == 0) return;
    release(m, m->n, out, n_out);
}
