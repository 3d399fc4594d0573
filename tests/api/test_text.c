// SPDX-License-Identifier: MIT
// test_text.c -- the text object (api.h) without a server: scripted model
// outputs are encoded with the bundled model's tokenizer and pushed token
// by token, split at every byte position (the text before and after the
// split encoded separately), so tags, stop strings and characters fall
// across token boundaries in every possible way. Each split must give the
// same content, reasoning and tool calls, and the streamed deltas must add
// up to the totals.
#include <string.h>

#include "layerpipe/api.h"
#include "lp_test.h"
#include "tokenizer/qwen3_fixture.h"

static struct lp_tokenizer *tok;

struct result {
    char content[1024], reasoning[1024], streamed_content[1024], streamed_reasoning[1024];
    char calls[1024]; // "name(args)|id;" for each call
    bool stopped, stop_delta;
};

static void append(char *dst, size_t cap, const char *s, size_t n) {
    size_t k = strlen(dst);
    if (k + n + 1 > cap) n = cap - k - 1;
    memcpy(dst + k, s, n);
    dst[k + n] = '\0';
}

static void take(struct result *r, const struct lp_text *t, const struct lp_text_delta *d) {
    append(r->streamed_content, sizeof r->streamed_content, d->content, d->n_content);
    append(r->streamed_reasoning, sizeof r->streamed_reasoning, d->reasoning, d->n_reasoning);
    for (int i = 0; i < d->n_tool_calls; i++) {
        const struct lp_tool_call *c = lp_text_tool_call(t, d->first_tool_call + i);
        char one[512];
        snprintf(one, sizeof one, "%s(%s)|%s;", c->name, c->arguments, c->id);
        append(r->calls, sizeof r->calls, one, strlen(one));
    }
    if (d->stopped) r->stop_delta = true;
}

// Runs `script` split at byte `split` (0: not split) through a new lp_text.
static void run(const char *script, size_t split, const struct lp_text_params *p,
                struct result *r) {
    memset(r, 0, sizeof *r);
    struct lp_token_list ids;
    lp_token_list_init(&ids);
    struct lp_error err = {0};
    CHECK_OK(lp_tokenizer_encode(tok, script, split, 0, &ids, &err), &err);
    CHECK_OK(lp_tokenizer_encode(tok, script + split, strlen(script) - split, 0, &ids, &err), &err);
    struct lp_text *t = NULL;
    CHECK_OK(lp_text_create(&t, tok, p, &err), &err);
    if (!t) return;
    struct lp_text_delta d;
    for (size_t i = 0; i < ids.n_ids; i++) {
        CHECK_OK(lp_text_push(t, ids.ids[i], &d, &err), &err);
        take(r, t, &d);
    }
    CHECK_OK(lp_text_finish(t, &d, &err), &err);
    take(r, t, &d);
    size_t n;
    const char *s = lp_text_content(t, &n);
    CHECK(strlen(s) == n);
    append(r->content, sizeof r->content, s, n);
    s = lp_text_reasoning(t, &n);
    append(r->reasoning, sizeof r->reasoning, s, n);
    r->stopped = lp_text_stopped(t);
    CHECK(r->stopped == r->stop_delta);
    CHECK_MSG(strcmp(r->content, r->streamed_content) == 0, "deltas [%s] total [%s]",
              r->streamed_content, r->content);
    CHECK(strcmp(r->reasoning, r->streamed_reasoning) == 0);
    lp_text_destroy(t);
    lp_token_list_deinit(&ids);
}

// Every split of the script gives the expected totals.
static void expect(const char *name, const char *script, const struct lp_text_params *p,
                   const char *content, const char *reasoning, const char *calls, bool stopped) {
    int bad = 0;
    for (size_t k = 0; k <= strlen(script); k++) {
        if (((unsigned char)script[k] & 0xC0) == 0x80) continue; // inside a character
        struct result r;
        run(script, k, p, &r);
        bool ok = strcmp(r.content, content) == 0 && strcmp(r.reasoning, reasoning) == 0 &&
                  strcmp(r.calls, calls) == 0 && r.stopped == stopped;
        if (!ok && bad++ < 3)
            fprintf(stderr,
                    "%s, split at %zu:\n  content   [%s] want [%s]\n  reasoning [%s] want [%s]\n"
                    "  calls     [%s] want [%s]\n  stopped %d want %d\n",
                    name, k, r.content, content, r.reasoning, reasoning, r.calls, calls, r.stopped,
                    stopped);
    }
    CHECK_MSG(bad == 0, "%s: %d splits differ", name, bad);
}

int main(void) {
    const char *src = getenv("LP_SOURCE_DIR");
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/models/layerpipe-tiny-8bit", src ? src : ".");
    struct lp_error err = {0};
    CHECK_OK(lp_tokenizer_load(&tok, dir, &err), &err);
    if (!tok) return lp_test_finish("api_text");

    struct lp_text_params plain = lp_text_params_default();
    expect("plain", "Hello, world. caf\xc3\xa9 <think>x</think>", &plain,
           "Hello, world. caf\xc3\xa9 <think>x</think>", "", "", false);

    struct lp_text_params chat = lp_text_params_default();
    chat.reasoning = true;
    expect("think", "<think>\nLet me see: 2+2.\n</think>\n\nThe answer is 4.", &chat,
           "The answer is 4.", "Let me see: 2+2.", "", false);
    expect("empty think", "<think>\n\n</think>\n\nHi there", &chat, "Hi there", "", "", false);
    expect("no think", "Just text\n\nwith lines <b>", &chat, "Just text\n\nwith lines <b>", "", "",
           false);
    expect("think never closed", "<think>\nstill thinking\n", &chat, "", "still thinking", "",
           false);
    expect("think later is content", "Hi <think>x</think>", &chat, "Hi <think>x</think>", "", "",
           false);

    struct lp_text_params open = chat;
    open.reasoning_open = true;
    expect("think opened by the prompt", "Thinking...\n</think>\n\nDone.", &open, "Done.",
           "Thinking...", "", false);

    struct lp_text_params tools = chat;
    tools.tool_calls = true;
    tools.call_id_prefix = "call_x";
    expect("tool call",
           "<think>\nNeed weather.\n</think>\n\nLet me check.\n<tool_call>\n{\"name\": "
           "\"get_weather\", \"arguments\": {\"city\": \"Paris\", \"days\": 2}}\n</tool_call>",
           &tools, "Let me check.\n", "Need weather.",
           "get_weather({\"city\":\"Paris\",\"days\":2})|call_x0;", false);
    expect("two tool calls",
           "<tool_call>\n{\"name\": \"a\", \"arguments\": {}}\n</tool_call>\n<tool_call>\n"
           "{\"name\": \"b\", \"arguments\": {\"q\": \"<x>\"}}\n</tool_call>",
           &tools, "", "", "a({})|call_x0;b({\"q\":\"<x>\"})|call_x1;", false);
    expect("malformed tool call is content", "Hi <tool_call>{not json}</tool_call> bye", &tools,
           "Hi <tool_call>{not json}</tool_call> bye", "", "", false);
    expect("unclosed tool call is content", "Hi <tool_call>{\"name\": \"a\"", &tools,
           "Hi <tool_call>{\"name\": \"a\"", "", "", false);
    expect("tool tags without tools are content", "<tool_call>{\"name\": \"a\"}</tool_call>", &chat,
           "<tool_call>{\"name\": \"a\"}</tool_call>", "", "", false);

    const char *stops[] = {"STOP", "\n\n\n"};
    struct lp_text_params st = tools;
    st.stops = stops;
    st.n_stops = 2;
    expect("stop string", "Hello world. STOP here", &st, "Hello world. ", "", "", true);
    expect("stop string not seen", "Hello world. STO", &st, "Hello world. STO", "", "", false);
    expect("stop in reasoning", "<think>\nabc STOP def</think>x", &st, "", "abc ", "", true);
    expect("second stop string", "one\n\n\ntwo STOP", &st, "one", "", "", true);
    expect("stop before a tool call ends", "ok <tool_call>{\"name\": \"STOP\"}</tool_call>", &st,
           "ok <tool_call>{\"name\": \"", "", "", true);

    // pushes after a stop add nothing
    {
        struct lp_text *t = NULL;
        CHECK_OK(lp_text_create(&t, tok, &st, &err), &err);
        struct lp_token_list ids;
        lp_token_list_init(&ids);
        CHECK_OK(lp_tokenizer_encode(tok, "aSTOPbbb", 8, 0, &ids, &err), &err);
        struct lp_text_delta d = {0};
        bool stopped = false;
        for (size_t i = 0; i < ids.n_ids; i++) {
            CHECK_OK(lp_text_push(t, ids.ids[i], &d, &err), &err);
            if (stopped) CHECK(d.n_content == 0 && d.stopped);
            stopped = stopped || d.stopped;
        }
        CHECK(stopped);
        CHECK(strcmp(lp_text_content(t, NULL), "a") == 0);
        CHECK(lp_text_push(t, -1, &d, &err) == LP_OK); // after a stop: nothing is decoded
        lp_token_list_deinit(&ids);
        lp_text_destroy(t);
    }
    // a negative id is an error before a stop
    {
        struct lp_text *t = NULL;
        CHECK_OK(lp_text_create(&t, tok, &plain, &err), &err);
        struct lp_text_delta d;
        CHECK(lp_text_push(t, -1, &d, &err) == LP_ERR_INVALID_ARG);
        lp_text_destroy(t);
    }
    // bad parameters
    {
        struct lp_text *t = (struct lp_text *)&err;
        const char *empty[] = {""};
        struct lp_text_params bad = plain;
        bad.stops = empty;
        bad.n_stops = 1;
        CHECK(lp_text_create(&t, tok, &bad, &err) == LP_ERR_INVALID_ARG && t == NULL);
        bad.n_stops = LP_MAX_STOP_STRINGS + 1;
        CHECK(lp_text_create(&t, tok, &bad, &err) == LP_ERR_INVALID_ARG && t == NULL);
    }
    // prompts: the chat JSON path encodes exactly the rendered template
    {
        const char *json = "[{\"role\": \"system\", \"content\": \"Be brief.\"}, "
                           "{\"role\": \"user\", \"content\": \"Hello\"}]";
        struct lp_chat_options opt = lp_chat_options_default();
        struct lp_token_list a, b;
        lp_token_list_init(&a);
        lp_token_list_init(&b);
        CHECK_OK(lp_text_prompt_chat_json(json, strlen(json), tok, &opt, &a, &err), &err);
        struct lp_chat_message m[2] = {{.role = "system", .content = "Be brief."},
                                       {.role = "user", .content = "Hello"}};
        CHECK_OK(lp_text_prompt_chat(tok, m, 2, &opt, &b, &err), &err);
        CHECK(a.n_ids == b.n_ids && a.n_ids > 5 &&
              memcmp(a.ids, b.ids, a.n_ids * sizeof *a.ids) == 0);
        char *rendered = NULL;
        CHECK_OK(lp_chat_render(m, 2, &opt, &rendered, NULL, &err), &err);
        struct lp_token_list c;
        lp_token_list_init(&c);
        CHECK_OK(lp_text_prompt_plain(tok, rendered, strlen(rendered), &c, &err), &err);
        CHECK(c.n_ids == a.n_ids && memcmp(c.ids, a.ids, a.n_ids * sizeof *a.ids) == 0);
        CHECK(lp_text_prompt_plain(tok, "", 0, &c, &err) == LP_ERR_INVALID_ARG);
        CHECK(lp_text_prompt_chat_json("[{\"role\": 3}]", 13, tok, &opt, &c, &err) != LP_OK);
        free(rendered);
        lp_token_list_deinit(&a);
        lp_token_list_deinit(&b);
        lp_token_list_deinit(&c);
    }
    // the real Qwen3 tokenizer: <think> and <tool_call> are single added
    // tokens, not special, so the decoder keeps them and the parser sees them
    char *q3 = qwen3_tokenizer_dir();
    CHECK(q3 != NULL);
    struct lp_tokenizer *bundled = tok;
    if (q3 && lp_tokenizer_load(&tok, q3, &err) == LP_OK) {
        CHECK(lp_tokenizer_token_id(tok, "<think>") >= 0 &&
              !lp_tokenizer_is_special(tok, lp_tokenizer_token_id(tok, "<think>")));
        expect("qwen3 think", "<think>\nLet me see: 2+2.\n</think>\n\nThe answer is 4.", &chat,
               "The answer is 4.", "Let me see: 2+2.", "", false);
        expect("qwen3 tool call",
               "<think>\n\n</think>\n\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": "
               "{\"city\": \"\u5df4\u9ece\"}}\n</tool_call>",
               &tools, "", "", "get_weather({\"city\":\"\u5df4\u9ece\"})|call_x0;", false);
        lp_tokenizer_destroy(tok);
    }
    free(q3);
    tok = bundled;

    // the one status -> HTTP table
    CHECK(lp_api_http_status(LP_OK) == 200);
    CHECK(lp_api_http_status(LP_ERR_INVALID_ARG) == 400);
    CHECK(lp_api_http_status(LP_ERR_BUSY) == 429);
    CHECK(lp_api_http_status(LP_ERR_NETWORK) == 503);
    CHECK(lp_api_http_status(LP_ERR_TIMEOUT) == 503);
    CHECK(lp_api_http_status(LP_ERR_NOMEM) == 500);
    CHECK(lp_api_http_status((enum lp_status)999) == 500);
    lp_tokenizer_destroy(tok);
    return lp_test_finish("api_text");
}
