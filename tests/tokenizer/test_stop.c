// SPDX-License-Identifier: MIT
// test_stop.c -- the stop-string filter: text is released as soon as it
// cannot start a stop string, the stop string itself is never released,
// and the result equals "text up to the first stop string" however the
// text is chopped into pushes.
#include <string.h>

#include "layerpipe/tokenizer.h"
#include "lp_test.h"

// Feeds text in chunks of `step` bytes; returns what came out.
static bool feed(const char *const *stops, int n_stops, const char *text, size_t step, char *got,
                 size_t cap) {
    struct lp_stop_matcher *m = NULL;
    struct lp_error err = {0};
    CHECK_OK(lp_stop_matcher_create(&m, stops, n_stops, &err), &err);
    size_t n = strlen(text), off = 0;
    got[0] = '\0';
    bool stopped = false;
    for (size_t i = 0; i < n && !stopped; i += step) {
        size_t k = n - i < step ? n - i : step;
        const char *out;
        size_t n_out;
        stopped = lp_stop_matcher_push(m, text + i, k, &out, &n_out);
        if (off + n_out < cap) memcpy(got + off, out, n_out);
        off += n_out;
    }
    if (!stopped) {
        const char *out;
        size_t n_out;
        lp_stop_matcher_flush(m, &out, &n_out);
        if (off + n_out < cap) memcpy(got + off, out, n_out);
        off += n_out;
    }
    got[off < cap ? off : cap - 1] = '\0';
    lp_stop_matcher_destroy(m);
    return stopped;
}

int main(void) {
    char got[256];
    const char *stops[] = {"\n\nUser:", "STOP", "ab"};
    const char *text = "Hello there. Some text\n\nUser: more";
    for (size_t step = 1; step <= 8; step++) {
        CHECK(feed(stops, 3, text, step, got, sizeof got));
        CHECK_MSG(strcmp(got, "Hello there. Some text") == 0, "step %zu: '%s'", step, got);
    }
    // a near miss is released in full
    for (size_t step = 1; step <= 5; step++) {
        CHECK(!feed(stops, 3, "x\n\nUse it. STO", step, got, sizeof got));
        CHECK_MSG(strcmp(got, "x\n\nUse it. STO") == 0, "near miss step %zu: '%s'", step, got);
    }
    // earliest of several stops wins; a stop at the very start releases nothing
    CHECK(feed(stops, 3, "zzabSTOP", 3, got, sizeof got) && strcmp(got, "zz") == 0);
    CHECK(feed(stops, 3, "STOP now", 2, got, sizeof got) && got[0] == '\0');
    // text that can't start a stop string is released immediately
    struct lp_stop_matcher *m = NULL;
    struct lp_error err = {0};
    CHECK_OK(lp_stop_matcher_create(&m, stops, 3, &err), &err);
    const char *out;
    size_t n_out;
    CHECK(!lp_stop_matcher_push(m, "hello S", 7, &out, &n_out));
    CHECK(n_out == 6 && memcmp(out, "hello ", 6) == 0); // "S" may start "STOP"
    CHECK(!lp_stop_matcher_push(m, "x", 1, &out, &n_out));
    CHECK(n_out == 2 && memcmp(out, "Sx", 2) == 0);
    lp_stop_matcher_destroy(m);
    // bad arguments
    const char *empty[] = {""};
    CHECK(lp_stop_matcher_create(&m, empty, 1, &err) == LP_ERR_INVALID_ARG && m == NULL);
    CHECK(lp_stop_matcher_create(&m, stops, LP_MAX_STOP_STRINGS + 1, &err) == LP_ERR_INVALID_ARG);
    return lp_test_finish("stop");
}
