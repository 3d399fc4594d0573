// SPDX-License-Identifier: MIT
// text.c -- the text of one request, shared by `run` and `serve`: prompts
// rendered and encoded, and generated tokens turned into what a user sees.
// Each token goes through the streaming decoder (whole characters), the
// stop matcher (text that may begin a stop string is held), then a small
// state machine over the released text:
//   START -(<think>)-> THINK -(</think>)-> CONTENT <-(</tool_call>)- TOOL
//                                            \--(<tool_call>)------->/
// `pending` holds text not yet classified: a tail that may begin a tag, or
// a whole tool call until its closing tag. Totals (content, reasoning) only
// grow; a push's delta is the part of each total added by that push.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "api/internal.h"
#include "layerpipe/api.h"

// ---- prompts ----

enum lp_status lp_text_prompt_plain(const struct lp_tokenizer *tok, const char *text,
                                    size_t n_bytes, struct lp_token_list *out,
                                    struct lp_error *err) {
    size_t n0 = out->n_ids;
    enum lp_status st = lp_tokenizer_encode(tok, text, n_bytes, LP_ENCODE_DEFAULT, out, err);
    if (st != LP_OK) return lp_error_prefix(err, "prompt: ");
    if (out->n_ids == n0)
        return lp_error_set(err, LP_ERR_INVALID_ARG, "prompt: encodes to no tokens");
    return LP_OK;
}

enum lp_status lp_text_prompt_chat(const struct lp_tokenizer *tok,
                                   const struct lp_chat_message *messages, size_t n_messages,
                                   const struct lp_chat_options *options, struct lp_token_list *out,
                                   struct lp_error *err) {
    char *rendered = NULL;
    size_t n = 0;
    enum lp_status st = lp_chat_render(messages, n_messages, options, &rendered, &n, err);
    if (st != LP_OK) return st;
    st = lp_text_prompt_plain(tok, rendered, n, out, err);
    free(rendered);
    return st;
}

enum lp_status lp_text_prompt_chat_json(const char *json, size_t n_json,
                                        const struct lp_tokenizer *tok,
                                        const struct lp_chat_options *options,
                                        struct lp_token_list *out, struct lp_error *err) {
    char *rendered = NULL;
    size_t n = 0;
    enum lp_status st = lp_chat_render_json(json, n_json, options, &rendered, &n, err);
    if (st != LP_OK) return st;
    st = lp_text_prompt_plain(tok, rendered, n, out, err);
    free(rendered);
    return st;
}

// ---- the object ----

enum text_state { TS_START, TS_THINK, TS_CONTENT, TS_TOOL };

struct text_call {
    struct lp_tool_call pub; // strings below
    char *id, *name, *arguments;
};

struct lp_text {
    const struct lp_tokenizer *tok; // borrowed
    struct lp_token_stream *stream;
    struct lp_stop_matcher *stops; // NULL without stop strings
    char *stop_copies[LP_MAX_STOP_STRINGS];
    bool reasoning, tool_calls; // parsing enabled
    char id_prefix[32];
    enum text_state state;
    bool lstrip; // drop leading newlines of what comes next
    bool stopped, finished;
    struct lp_api_buf pending; // released by the stop matcher, not yet classified
    struct lp_api_buf content, reasoning_text;
    struct text_call *calls;
    int n_calls, cap_calls;
};

struct lp_text_params lp_text_params_default(void) {
    return (struct lp_text_params){.call_id_prefix = "call_"};
}

void lp_text_destroy(struct lp_text *t) {
    if (!t) return;
    lp_token_stream_destroy(t->stream);
    lp_stop_matcher_destroy(t->stops);
    for (int i = 0; i < LP_MAX_STOP_STRINGS; i++)
        free(t->stop_copies[i]);
    free(t->pending.data);
    free(t->content.data);
    free(t->reasoning_text.data);
    for (int i = 0; i < t->n_calls; i++) {
        free(t->calls[i].id);
        free(t->calls[i].name);
        free(t->calls[i].arguments);
    }
    free(t->calls);
    free(t);
}

enum lp_status lp_text_create(struct lp_text **out, const struct lp_tokenizer *tok,
                              const struct lp_text_params *p, struct lp_error *err) {
    *out = NULL;
    enum lp_status st = LP_OK;
    if (p->n_stops < 0 || p->n_stops > LP_MAX_STOP_STRINGS)
        return lp_error_set(err, LP_ERR_INVALID_ARG, "stop: %d strings, at most %d", p->n_stops,
                            LP_MAX_STOP_STRINGS);
    struct lp_text *t = calloc(1, sizeof *t);
    if (!t) return lp_error_set(err, LP_ERR_NOMEM, "text: out of memory");
    t->tok = tok;
    t->reasoning = p->reasoning || p->reasoning_open;
    t->tool_calls = p->tool_calls;
    t->state = p->reasoning_open ? TS_THINK : p->reasoning ? TS_START : TS_CONTENT;
    t->lstrip = p->reasoning_open;
    snprintf(t->id_prefix, sizeof t->id_prefix, "%s", p->call_id_prefix ? p->call_id_prefix : "");
    st = lp_token_stream_create(&t->stream, tok, LP_DECODE_SKIP_SPECIAL, err);
    if (st != LP_OK) goto fail;
    if (p->n_stops > 0) {
        for (int i = 0; i < p->n_stops; i++) {
            t->stop_copies[i] = strdup(p->stops[i] ? p->stops[i] : "");
            if (!t->stop_copies[i]) {
                st = lp_error_set(err, LP_ERR_NOMEM, "text: out of memory");
                goto fail;
            }
        }
        st =
            lp_stop_matcher_create(&t->stops, (const char *const *)t->stop_copies, p->n_stops, err);
        if (st != LP_OK) goto fail;
    }
    // every total is a valid empty string from the start
    if (!lp_api_buf_put(&t->content, "", 0) || !lp_api_buf_put(&t->reasoning_text, "", 0) ||
        !lp_api_buf_put(&t->pending, "", 0)) {
        st = lp_error_set(err, LP_ERR_NOMEM, "text: out of memory");
        goto fail;
    }
    *out = t;
    return LP_OK;
fail:
    lp_text_destroy(t);
    return st;
}

// The length of the longest suffix of s[0..n) that is a proper prefix of tag.
static size_t tag_prefix_tail(const char *s, size_t n, const char *tag) {
    size_t k = strlen(tag) - 1;
    if (k > n) k = n;
    for (; k > 0; k--)
        if (memcmp(s + n - k, tag, k) == 0) return k;
    return 0;
}

static const char *find(const char *s, size_t n, const char *tag) {
    size_t m = strlen(tag);
    for (size_t i = 0; i + m <= n; i++)
        if (s[i] == tag[0] && memcmp(s + i, tag, m) == 0) return s + i;
    return NULL;
}

// Parses the inside of <tool_call>...</tool_call>: {"name": S, "arguments": {..}}.
// Returns false (nothing added) when it is not a call; LP_ERR_NOMEM via *st.
static bool add_call(struct lp_text *t, const char *s, size_t n, enum lp_status *st) {
    json_error_t je;
    json_t *j = json_loadb(s, n, JSON_REJECT_DUPLICATES, &je);
    const json_t *name = json_object_get(j, "name"), *args = json_object_get(j, "arguments");
    if (!json_is_object(j) || !json_is_string(name) ||
        (args && !json_is_object(args) && !json_is_string(args))) {
        json_decref(j);
        return false;
    }
    if (t->n_calls == t->cap_calls) {
        int cap = t->cap_calls ? 2 * t->cap_calls : 4;
        struct text_call *c = realloc(t->calls, (size_t)cap * sizeof *c);
        if (!c) goto nomem;
        t->calls = c;
        t->cap_calls = cap;
    }
    struct text_call *c = &t->calls[t->n_calls];
    char id[64];
    snprintf(id, sizeof id, "%s%d", t->id_prefix, t->n_calls);
    c->id = strdup(id);
    c->name = strdup(json_string_value(name));
    c->arguments = !args                  ? strdup("{}")
                   : json_is_string(args) ? strdup(json_string_value(args))
                                          : json_dumps(args, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (!c->id || !c->name || !c->arguments) {
        free(c->id);
        free(c->name);
        free(c->arguments);
        goto nomem;
    }
    c->pub = (struct lp_tool_call){.id = c->id, .name = c->name, .arguments = c->arguments};
    t->n_calls++;
    json_decref(j);
    return true;
nomem:
    json_decref(j);
    *st = LP_ERR_NOMEM;
    return false;
}

// Appends s[0..n) to out, dropping leading newlines while t->lstrip is set.
static bool put_text(struct lp_text *t, struct lp_api_buf *out, const char *s, size_t n) {
    if (t->lstrip) {
        while (n > 0 && *s == '\n')
            s++, n--;
        if (n == 0) return true;
        t->lstrip = false;
    }
    return lp_api_buf_put(out, s, n);
}

// Classifies as much of `pending` as can be; `final` releases everything.
static enum lp_status classify(struct lp_text *t, bool final, struct lp_error *err) {
    struct lp_api_buf *p = &t->pending;
    for (;;) {
        const char *s = lp_api_buf_str(p);
        size_t n = p->n;
        if (t->state == TS_START) {
            size_t ws = 0;
            while (ws < n && (s[ws] == '\n' || s[ws] == ' '))
                ws++;
            if (n - ws >= 7 && memcmp(s + ws, "<think>", 7) == 0) {
                lp_api_buf_consume(p, ws + 7);
                t->state = TS_THINK;
                t->lstrip = true;
                continue;
            }
            if (!final && (ws == n || memcmp(s + ws, "<think>", n - ws < 7 ? n - ws : 7) == 0))
                return LP_OK; // may still become <think>
            t->state = TS_CONTENT;
            continue;
        }
        if (t->state == TS_THINK) {
            const char *end = find(s, n, "</think>");
            size_t k = end ? (size_t)(end - s) : final ? n : n - tag_prefix_tail(s, n, "</think>");
            size_t keep = k;
            if (end || final) // the reasoning's trailing newlines belong to the tag
                while (keep > 0 && s[keep - 1] == '\n')
                    keep--;
            else // hold trailing newlines: they may precede </think>
                while (keep > 0 && s[keep - 1] == '\n')
                    keep--, k--;
            if (!put_text(t, &t->reasoning_text, s, keep)) goto nomem;
            if (end) {
                lp_api_buf_consume(p, k + 8);
                t->state = TS_CONTENT;
                t->lstrip = true;
                continue;
            }
            lp_api_buf_consume(p, final ? n : k);
            return LP_OK;
        }
        if (t->state == TS_CONTENT) {
            if (!t->tool_calls) {
                if (!put_text(t, &t->content, s, n)) goto nomem;
                lp_api_buf_consume(p, n);
                return LP_OK;
            }
            const char *open = find(s, n, "<tool_call>");
            size_t k = open    ? (size_t)(open - s)
                       : final ? n
                               : n - tag_prefix_tail(s, n, "<tool_call>");
            if (!put_text(t, &t->content, s, k)) goto nomem;
            if (open) {
                lp_api_buf_consume(p, k + 11);
                t->state = TS_TOOL;
                continue;
            }
            lp_api_buf_consume(p, k);
            return LP_OK;
        }
        // TS_TOOL: wait for the closing tag
        const char *close = find(s, n, "</tool_call>");
        if (!close && !final) return LP_OK;
        size_t k = close ? (size_t)(close - s) : n;
        enum lp_status st = LP_OK;
        bool ok = close && add_call(t, s, k, &st);
        if (st != LP_OK) goto nomem;
        if (!ok) { // not a tool call after all: show it as it came
            t->lstrip = false;
            if (!lp_api_buf_put(&t->content, "<tool_call>", 11) || !lp_api_buf_put(&t->content, s, k) ||
                (close && !lp_api_buf_put(&t->content, "</tool_call>", 12)))
                goto nomem;
        } else {
            t->lstrip = true; // the newline between calls is not content
        }
        lp_api_buf_consume(p, close ? k + 12 : n);
        t->state = TS_CONTENT;
        if (!close) return LP_OK;
    }
nomem:
    return lp_error_set(err, LP_ERR_NOMEM, "text: out of memory");
}

// Feeds released text through the stop matcher (if any) into pending.
static enum lp_status feed(struct lp_text *t, const char *s, size_t n, bool last,
                           struct lp_error *err) {
    if (t->stops) {
        const char *o;
        size_t m;
        if (lp_stop_matcher_push(t->stops, s, n, &o, &m)) {
            t->stopped = true;
            last = true;
        }
        if (!lp_api_buf_put(&t->pending, o, m)) goto nomem;
        if (last && !t->stopped) {
            lp_stop_matcher_flush(t->stops, &o, &m);
            if (!lp_api_buf_put(&t->pending, o, m)) goto nomem;
        }
    } else if (!lp_api_buf_put(&t->pending, s, n)) {
        goto nomem;
    }
    return classify(t, last, err);
nomem:
    return lp_error_set(err, LP_ERR_NOMEM, "text: out of memory");
}

static void delta_since(const struct lp_text *t, struct lp_text_delta *d, size_t n_content,
                        size_t n_reasoning, int n_calls) {
    *d = (struct lp_text_delta){
        .content = lp_api_buf_str(&t->content) + n_content,
        .n_content = t->content.n - n_content,
        .reasoning = lp_api_buf_str(&t->reasoning_text) + n_reasoning,
        .n_reasoning = t->reasoning_text.n - n_reasoning,
        .first_tool_call = n_calls,
        .n_tool_calls = t->n_calls - n_calls,
        .stopped = t->stopped,
    };
}

enum lp_status lp_text_push(struct lp_text *t, int32_t token, struct lp_text_delta *d,
                            struct lp_error *err) {
    size_t nc = t->content.n, nr = t->reasoning_text.n;
    int ncalls = t->n_calls;
    enum lp_status st = LP_OK;
    if (!t->stopped && !t->finished) {
        const char *s;
        size_t n;
        st = lp_token_stream_push(t->stream, token, &s, &n, err);
        if (st == LP_OK) st = feed(t, s, n, false, err);
    }
    delta_since(t, d, nc, nr, ncalls);
    return st;
}

enum lp_status lp_text_finish(struct lp_text *t, struct lp_text_delta *d, struct lp_error *err) {
    size_t nc = t->content.n, nr = t->reasoning_text.n;
    int ncalls = t->n_calls;
    enum lp_status st = LP_OK;
    if (!t->finished) {
        t->finished = true;
        if (!t->stopped) {
            const char *s;
            size_t n;
            lp_token_stream_flush(t->stream, &s, &n);
            st = feed(t, s, n, true, err);
        }
    }
    delta_since(t, d, nc, nr, ncalls);
    return st;
}

const char *lp_text_content(const struct lp_text *t, size_t *n_bytes) {
    if (n_bytes) *n_bytes = t->content.n;
    return lp_api_buf_str(&t->content);
}

const char *lp_text_reasoning(const struct lp_text *t, size_t *n_bytes) {
    if (n_bytes) *n_bytes = t->reasoning_text.n;
    return lp_api_buf_str(&t->reasoning_text);
}

int lp_text_n_tool_calls(const struct lp_text *t) {
    return t->n_calls;
}

const struct lp_tool_call *lp_text_tool_call(const struct lp_text *t, int i) {
    return i >= 0 && i < t->n_calls ? &t->calls[i].pub : NULL;
}

bool lp_text_stopped(const struct lp_text *t) {
    return t->stopped;
}
