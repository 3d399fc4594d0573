// SPDX-License-Identifier: MIT
// test_chat_template.c -- the Qwen3 chat template: hand-checked prompts,
// the struct and JSON entry points agreeing, clear errors for bad input, and
// every conversation of tests/golden/tokenizer/conversations.json rendering
// exactly the text (and ids) transformers' apply_chat_template gave
// (chat_ref.json, made by tools/tokenizer_reference.py).
#include <jansson.h>
#include <string.h>

#include "layerpipe/tokenizer.h"
#include "lp_test.h"
#include "qwen3_fixture.h"

static void check_render(const char *json, bool gen, bool think, const char *want) {
    struct lp_chat_options opt = lp_chat_options_default();
    opt.add_generation_prompt = gen;
    opt.enable_thinking = think;
    char *out = NULL;
    size_t n = 0;
    struct lp_error err = {0};
    CHECK_OK(lp_chat_render_json(json, strlen(json), &opt, &out, &n, &err), &err);
    CHECK_MSG(out && n == strlen(want) && strcmp(out, want) == 0, "rendered:\n%s\nwant:\n%s",
              out ? out : "(null)", want);
    free(out);
}

static void test_hand(void) {
    check_render("[{\"role\": \"user\", \"content\": \"Hi\"}]", true, true,
                 "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    check_render(
        "[{\"role\": \"system\", \"content\": \"S\"}, {\"role\": \"user\", \"content\": \"Hi\"}]",
        true, false,
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\n");
    // History thinking is dropped; the final turn keeps its reasoning.
    check_render("{\"messages\": [{\"role\": \"user\", \"content\": \"a\"},"
                 " {\"role\": \"assistant\", \"content\": \"<think>x</think>\\n\\nA\"},"
                 " {\"role\": \"user\", \"content\": \"b\"},"
                 " {\"role\": \"assistant\", \"content\": \"B\", \"reasoning_content\": \"y\"}]}",
                 false, true,
                 "<|im_start|>user\na<|im_end|>\n<|im_start|>assistant\nA<|im_end|>\n"
                 "<|im_start|>user\nb<|im_end|>\n<|im_start|>assistant\n<think>\ny\n</think>\n\nB"
                 "<|im_end|>\n");
    // Consecutive tool results share one user turn.
    check_render(
        "[{\"role\": \"user\", \"content\": \"q\"}, {\"role\": \"tool\", \"content\": \"1\"},"
        " {\"role\": \"tool\", \"content\": \"2\"}]",
        true, true,
        "<|im_start|>user\nq<|im_end|>\n<|im_start|>user\n<tool_response>\n1\n"
        "</tool_response>\n<tool_response>\n2\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n");
}

static void test_struct_api(void) {
    const struct lp_chat_message msgs[] = {
        {.role = "system", .content = "sys"},
        {.role = "user", .content = "weather?"},
        {.role = "assistant",
         .content = NULL,
         .tool_calls_json = "[{\"type\": \"function\", \"function\": {\"name\": \"w\", "
                            "\"arguments\": {\"city\": \"Oslo\", \"days\": 2, \"x\": 0.5}}}]"},
        {.role = "tool", .content = "{\"t\": 1}"},
    };
    struct lp_chat_options opt = lp_chat_options_default();
    opt.tools_json = "[{\"type\": \"function\", \"function\": {\"name\": \"w\"}}]";
    char *a = NULL, *b = NULL;
    size_t na, nb;
    struct lp_error err = {0};
    CHECK_OK(lp_chat_render(msgs, 4, &opt, &a, &na, &err), &err);
    const char *json =
        "{\"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"w\"}}], \"messages\": ["
        "{\"role\": \"system\", \"content\": \"sys\"}, {\"role\": \"user\", \"content\": "
        "\"weather?\"},"
        "{\"role\": \"assistant\", \"content\": null, \"tool_calls\": [{\"type\": \"function\", "
        "\"function\": {\"name\": \"w\", \"arguments\": {\"city\": \"Oslo\", \"days\": 2, \"x\": "
        "0.5}}}]},"
        "{\"role\": \"tool\", \"content\": \"{\\\"t\\\": 1}\"}]}";
    CHECK_OK(lp_chat_render_json(json, strlen(json), NULL, &b, &nb, &err), &err);
    CHECK(a && b && na == nb && strcmp(a, b) == 0);
    CHECK(a && strstr(a, "<tool_call>\n{\"name\": \"w\", \"arguments\": {\"city\": \"Oslo\", "
                         "\"days\": 2, \"x\": 0.5}}\n</tool_call><|im_end|>\n") != NULL);
    CHECK(a && strncmp(a, "<|im_start|>system\nsys\n\n# Tools\n", 32) == 0);
    free(a);
    free(b);
}

static void check_error(const char *json, const char *needle) {
    char *out = (char *)1;
    struct lp_error err = {0};
    enum lp_status st = lp_chat_render_json(json, strlen(json), NULL, &out, NULL, &err);
    CHECK_MSG(st == LP_ERR_INVALID_ARG && out == NULL && strstr(err.msg, needle),
              "status %s message '%s' (want '%s')", lp_status_str(st), err.msg, needle);
}

static void test_errors(void) {
    check_error("", "messages");
    check_error("[]", "no messages");
    check_error("{\"msgs\": []}", "expected an array of messages");
    check_error("[7]", "messages[0]");
    check_error("[{\"content\": \"x\"}]", "messages[0].role");
    check_error("[{\"role\": \"user\", \"content\": [1]}]", "messages[0].content");
    check_error(
        "[{\"role\": \"user\", \"content\": \"a\"}, {\"role\": \"assistant\", \"content\": \"\", "
        "\"tool_calls\": {\"a\": 1}}]",
        "messages[1].tool_calls");
    check_error("[{\"role\": \"assistant\", \"content\": \"\", \"tool_calls\": [{\"function\": "
                "{\"name\": \"f\"}}]}]",
                "arguments");
    check_error("{\"tools\": 5, \"messages\": [{\"role\": \"user\", \"content\": \"a\"}]}",
                "tools");
    const struct lp_chat_message m = {.role = "user", .content = "x"};
    struct lp_chat_options opt = lp_chat_options_default();
    opt.tools_json = "{";
    char *out;
    struct lp_error err = {0};
    CHECK(lp_chat_render(&m, 1, &opt, &out, NULL, &err) == LP_ERR_INVALID_ARG);
    CHECK(strstr(err.msg, "tools") != NULL);
}

static void test_reference(void) {
    char *convs_text = golden_read("conversations.json", NULL);
    char *ref_text = golden_read("chat_ref.json", NULL);
    CHECK_MSG(convs_text != NULL, "missing tests/golden/tokenizer/conversations.json");
    CHECK_MSG(ref_text != NULL, "missing tests/golden/tokenizer/chat_ref.json: make it with "
                                "tools/tokenizer_reference.py (transformers) and commit it");
    json_t *convs = convs_text ? json_loads(convs_text, 0, NULL) : NULL;
    json_t *refs = ref_text ? json_loads(ref_text, 0, NULL) : NULL;
    CHECK(json_array_size(convs) >= 20);
    struct lp_tokenizer *tok = NULL;
    if (refs) {
        char *dir = qwen3_tokenizer_dir();
        struct lp_error err = {0};
        CHECK_MSG(dir != NULL, "Qwen3 tokenizer not available");
        if (dir) CHECK_OK(lp_tokenizer_load(&tok, dir, &err), &err);
        free(dir);
        CHECK(json_array_size(refs) == json_array_size(convs));
    }
    size_t n_same = 0;
    for (size_t i = 0; i < json_array_size(convs); i++) {
        const json_t *c = json_array_get(convs, i);
        json_t *req = json_pack("{s:O}", "messages", json_object_get(c, "messages"));
        if (json_object_get(c, "tools")) json_object_set(req, "tools", json_object_get(c, "tools"));
        struct lp_chat_options opt = lp_chat_options_default();
        const json_t *v;
        if ((v = json_object_get(c, "add_generation_prompt")))
            opt.add_generation_prompt = json_is_true(v);
        if ((v = json_object_get(c, "enable_thinking"))) opt.enable_thinking = json_is_true(v);
        char *req_text = json_dumps(req, 0);
        char *out = NULL;
        size_t n = 0;
        struct lp_error err = {0};
        CHECK_OK(lp_chat_render_json(req_text, strlen(req_text), &opt, &out, &n, &err), &err);
        const json_t *ref = json_array_get(refs, i);
        if (ref && out) {
            const json_t *text = json_object_get(ref, "text"), *ids = json_object_get(ref, "ids");
            bool same = json_is_string(text) && json_string_length(text) == n &&
                        memcmp(json_string_value(text), out, n) == 0;
            CHECK_MSG(same, "conversation %zu (%s): rendered:\n%s\nreference:\n%s", i,
                      json_string_value(json_object_get(c, "name")), out, json_string_value(text));
            n_same += same;
            if (tok) {
                struct lp_token_list list;
                lp_token_list_init(&list);
                CHECK_OK(lp_tokenizer_encode(tok, out, n, 0, &list, &err), &err);
                bool ids_same = json_array_size(ids) == list.n_ids;
                for (size_t k = 0; ids_same && k < list.n_ids; k++)
                    ids_same = json_integer_value(json_array_get(ids, k)) == list.ids[k];
                CHECK_MSG(ids_same, "conversation %zu: prompt ids differ from HF", i);
                lp_token_list_deinit(&list);
            }
        }
        free(out);
        free(req_text);
        json_decref(req);
    }
    printf("chat: %zu conversations, %zu equal to transformers\n", json_array_size(convs), n_same);
    lp_tokenizer_destroy(tok);
    json_decref(convs);
    json_decref(refs);
    free(convs_text);
    free(ref_text);
}

int main(void) {
    test_hand();
    test_struct_api();
    test_errors();
    test_reference();
    return lp_test_finish("tokenizer/test_chat_template");
}
