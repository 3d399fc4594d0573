// SPDX-License-Identifier: MIT
// test_text_fuzz.c -- the text object on random outputs: token sequences
// made of pieces of tags (<think>, </tool_call>, ...), JSON, newlines,
// stop-string pieces and multi-byte characters, with random parameters
// (fixed seed, so every run is the same). Invariants: the deltas add up to
// the totals; with parsing off the content is the decoded text cut before
// the first stop string; with parsing on and no '<' in the text nothing is
// taken out of it but leading newlines after a tag; a stop string never
// appears in what is released; tool calls always have valid JSON
// arguments. Under ASan this is also the memory check of every path.
#include <jansson.h>
#include <string.h>

#include "layerpipe/api.h"
#include "lp_test.h"

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static uint32_t next_u32(void) { // xorshift64*
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    return (uint32_t)((rng * 0x2545f4914f6cdd1dull) >> 32);
}

static const char *pieces[] = {"<",
                               ">",
                               "</",
                               "think",
                               "<think>",
                               "</think>",
                               "tool",
                               "_call",
                               "<tool_call>",
                               "</tool_call>",
                               "\n",
                               "\n\n",
                               "{",
                               "}",
                               "\"",
                               "\"name\"",
                               ": ",
                               "\"arguments\"",
                               "{\"name\": \"f\", \"arguments\": {\"a\": 1}}",
                               "word",
                               " ",
                               "STOP",
                               "ST",
                               "OP",
                               "caf\xc3\xa9",
                               "\xe4\xb8\x96",
                               "x",
                               "<tool_call>\n{\"name\": \"g\", \"arguments\": {}}\n</tool_call>",
                               "<b>",
                               ",",
                               "\"f\"",
                               "[1]",
                               "end"};
#define N_PIECES ((int)(sizeof pieces / sizeof pieces[0]))

struct run {
    char content[8192], reasoning[8192], plain[8192];
    int n_calls;
    bool stopped;
};

static void cat(char *dst, size_t cap, const char *s, size_t n) {
    size_t k = strlen(dst);
    if (k + n + 1 > cap) n = cap - k - 1;
    memcpy(dst + k, s, n);
    dst[k + n] = '\0';
}

int main(void) {
    const char *src = getenv("LP_SOURCE_DIR");
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/models/layerpipe-tiny-8bit", src ? src : ".");
    struct lp_tokenizer *tok = NULL;
    struct lp_error err = {0};
    CHECK_OK(lp_tokenizer_load(&tok, dir, &err), &err);
    if (!tok) return lp_test_finish("api_text_fuzz");
    struct lp_token_list units[N_PIECES];
    for (int i = 0; i < N_PIECES; i++) {
        lp_token_list_init(&units[i]);
        CHECK_OK(lp_tokenizer_encode(tok, pieces[i], strlen(pieces[i]), 0, &units[i], &err), &err);
    }
    const char *stops[] = {"STOP", "\n\n\n", "</think>x"};
    int failures_before = lp_test_failures, n_reasoning = 0, n_called = 0, n_stopped = 0;
    for (int iter = 0; iter < 3000 && lp_test_failures - failures_before < 5; iter++) {
        struct lp_text_params p = lp_text_params_default();
        unsigned mode = next_u32();
        p.reasoning = mode & 1;
        p.reasoning_open = (mode & 6) == 6;
        p.tool_calls = mode & 8;
        p.n_stops = (int)(mode >> 4) % 4;
        p.stops = stops;
        struct lp_text *t = NULL;
        CHECK_OK(lp_text_create(&t, tok, &p, &err), &err);
        if (!t) break;
        static struct run r;
        memset(&r, 0, sizeof r);
        int n_units = 1 + (int)(next_u32() % 40);
        struct lp_text_delta d;
        for (int u = 0; u < n_units && !r.stopped; u++) {
            int k = (int)(next_u32() % N_PIECES);
            cat(r.plain, sizeof r.plain, pieces[k], strlen(pieces[k]));
            for (size_t i = 0; i < units[k].n_ids; i++) {
                CHECK_OK(lp_text_push(t, units[k].ids[i], &d, &err), &err);
                cat(r.content, sizeof r.content, d.content, d.n_content);
                cat(r.reasoning, sizeof r.reasoning, d.reasoning, d.n_reasoning);
                r.n_calls += d.n_tool_calls;
                r.stopped = r.stopped || d.stopped;
            }
        }
        CHECK_OK(lp_text_finish(t, &d, &err), &err);
        cat(r.content, sizeof r.content, d.content, d.n_content);
        cat(r.reasoning, sizeof r.reasoning, d.reasoning, d.n_reasoning);
        r.n_calls += d.n_tool_calls;
        // the deltas add up to the totals
        CHECK_MSG(strcmp(r.content, lp_text_content(t, NULL)) == 0 &&
                      strcmp(r.reasoning, lp_text_reasoning(t, NULL)) == 0 &&
                      r.n_calls == lp_text_n_tool_calls(t) && r.stopped == lp_text_stopped(t),
                  "iteration %d: deltas differ from totals", iter);
        // the text as it would be without parsing: cut before the first stop
        char cut[8192];
        snprintf(cut, sizeof cut, "%s", r.plain);
        char *first = NULL;
        for (int s = 0; s < p.n_stops; s++) {
            char *at = strstr(cut, stops[s]);
            if (at && (!first || at < first)) first = at;
        }
        if (first) *first = '\0';
        CHECK_MSG(r.stopped == (first != NULL), "iteration %d: stopped %d, stop at %s", iter,
                  r.stopped, first ? "yes" : "none");
        for (int s = 0; s < p.n_stops; s++)
            CHECK_MSG(!strstr(r.content, stops[s]) && !strstr(r.reasoning, stops[s]),
                      "iteration %d: stop string %d released", iter, s);
        bool parsing = p.reasoning || p.reasoning_open || p.tool_calls;
        if (!parsing || (!strchr(cut, '<') && !p.reasoning_open)) {
            const char *c = cut;
            if (parsing && p.reasoning) // a leading run of blanks may be held for "<think>"
                CHECK_MSG(strcmp(r.content, c) == 0, "iteration %d: [%s] vs [%s]", iter, r.content,
                          c);
            else
                CHECK_MSG(strcmp(r.content, c) == 0 && !r.reasoning[0] && !r.n_calls,
                          "iteration %d: content [%s], want [%s]", iter, r.content, c);
        }
        for (int i = 0; i < lp_text_n_tool_calls(t); i++) {
            const struct lp_tool_call *c = lp_text_tool_call(t, i);
            json_t *j = json_loads(c->arguments, JSON_DECODE_ANY, NULL);
            CHECK_MSG(j && c->name && c->id, "iteration %d: call %d arguments [%s]", iter, i,
                      c->arguments);
            json_decref(j);
        }
        n_reasoning += r.reasoning[0] != '\0';
        n_called += r.n_calls > 0;
        n_stopped += r.stopped;
        lp_text_destroy(t);
    }
    // the random outputs reach every path
    fprintf(stderr, "%d with reasoning, %d with tool calls, %d stopped\n", n_reasoning, n_called,
            n_stopped);
    CHECK(n_reasoning > 100 && n_called > 20 && n_stopped > 100);
    for (int i = 0; i < N_PIECES; i++)
        lp_token_list_deinit(&units[i]);
    lp_tokenizer_destroy(tok);
    return lp_test_finish("api_text_fuzz");
}
