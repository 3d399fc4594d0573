// SPDX-License-Identifier: MIT
// openai_request.c -- the body of POST /v1/chat/completions and
// /v1/completions checked field by field (every error names its field, in
// OpenAI's shape), the prompt rendered through the chat template or taken
// as text or token ids, encoded, and the sampling and stop settings
// gathered into a job for the scheduler.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/internal.h"

// ---- request fields ----

// The field if present and not null, else NULL.
static json_t *field(const json_t *body, const char *name) {
    json_t *v = json_object_get(body, name);
    return json_is_null(v) ? NULL : v;
}

static bool get_bool(const json_t *body, const char *name, bool *out, struct lp_api_err *e) {
    json_t *v = field(body, name);
    if (!v) return true;
    if (!json_is_boolean(v)) return lp_api_bad(e, name, "'%s' must be a boolean", name);
    *out = json_is_true(v);
    return true;
}

static bool get_real(const json_t *body, const char *name, double lo, double hi, float *out,
                     struct lp_api_err *e) {
    json_t *v = field(body, name);
    if (!v) return true;
    if (!json_is_number(v))
        return lp_api_bad(e, name, "'%s' must be a number between %g and %g", name, lo, hi);
    double x = json_number_value(v);
    if (!(x >= lo && x <= hi))
        return lp_api_bad(e, name, "'%s' is %g; it must be between %g and %g", name, x, lo, hi);
    *out = (float)x;
    return true;
}

static bool get_int(const json_t *body, const char *name, long long lo, long long hi, int *out,
                    struct lp_api_err *e) {
    json_t *v = field(body, name);
    if (!v) return true;
    if (!json_is_integer(v))
        return lp_api_bad(e, name, "'%s' must be an integer between %lld and %lld", name, lo, hi);
    long long x = json_integer_value(v);
    if (x < lo || x > hi)
        return lp_api_bad(e, name, "'%s' is %lld; it must be between %lld and %lld", name, x, lo,
                          hi);
    *out = (int)x;
    return true;
}

static bool parse_stop(const json_t *body, struct lp_api_job *j, struct lp_api_err *e) {
    json_t *v = field(body, "stop");
    if (!v) return true;
    if (json_is_string(v)) {
        if (!json_string_length(v)) return lp_api_bad(e, "stop", "'stop' must not be empty");
        j->stops[0] = json_string_value(v);
        j->tp.n_stops = 1;
        return true;
    }
    if (!json_is_array(v))
        return lp_api_bad(e, "stop", "'stop' must be a string or an array of strings");
    if (json_array_size(v) > LP_MAX_STOP_STRINGS)
        return lp_api_bad(e, "stop", "'stop' has %zu strings, at most %d", json_array_size(v),
                          LP_MAX_STOP_STRINGS);
    for (size_t i = 0; i < json_array_size(v); i++) {
        json_t *s = json_array_get(v, i);
        if (!json_is_string(s) || !json_string_length(s))
            return lp_api_bad(e, "stop", "'stop[%zu]' must be a non-empty string", i);
        j->stops[j->tp.n_stops++] = json_string_value(s);
    }
    return true;
}

static bool parse_unsupported(const json_t *body, bool chat, struct lp_api_err *e) {
    int n = 1;
    if (!get_int(body, "n", 1, 1, &n, e))
        return lp_api_bad(e, "n", "'n' must be 1: one choice per request");
    json_t *v = field(body, "logit_bias");
    if (v && (!json_is_object(v) || json_object_size(v) > 0))
        return lp_api_bad(e, "logit_bias", "'logit_bias' is not supported");
    v = field(body, "response_format");
    if (v && !(json_is_object(v) && json_is_string(json_object_get(v, "type")) &&
               strcmp(json_string_value(json_object_get(v, "type")), "text") == 0))
        return lp_api_bad(e, "response_format", "'response_format': only {\"type\": \"text\"}");
    if (!chat) {
        bool echo = false;
        if (!get_bool(body, "echo", &echo, e)) return false;
        if (echo) return lp_api_bad(e, "echo", "'echo' is not supported");
        int best_of = 1;
        if (!get_int(body, "best_of", 1, 1, &best_of, e))
            return lp_api_bad(e, "best_of", "'best_of' must be 1");
        if (field(body, "suffix")) return lp_api_bad(e, "suffix", "'suffix' is not supported");
    }
    return true;
}

static bool parse_sampling(const struct lp_server *s, const json_t *body, struct lp_api_job *j,
                           struct lp_api_err *e) {
    struct lp_sampler_params *sp = &j->sreq.sampling;
    *sp = lp_sampler_params_from_model(s->model);
    int top_k = sp->top_k;
    bool ok = get_real(body, "temperature", 0, 2, &sp->temperature, e) &&
              get_real(body, "top_p", 0, 1, &sp->top_p, e) &&
              get_int(body, "top_k", -1, 1 << 30, &top_k, e) &&
              get_real(body, "min_p", 0, 1, &sp->min_p, e) &&
              get_real(body, "presence_penalty", -2, 2, &sp->presence_penalty, e) &&
              get_real(body, "frequency_penalty", -2, 2, &sp->frequency_penalty, e) &&
              get_real(body, "repetition_penalty", 0.01, 10, &sp->repetition_penalty, e);
    if (!ok) return false;
    sp->top_k = top_k < 0 ? 0 : top_k;
    if (sp->top_p <= 0) return lp_api_bad(e, "top_p", "'top_p' must be above 0");
    json_t *seed = field(body, "seed");
    if (seed) {
        if (!json_is_integer(seed)) return lp_api_bad(e, "seed", "'seed' must be an integer");
        sp->seed = (uint64_t)json_integer_value(seed);
    }
    return true;
}

static bool parse_common(const struct lp_server *s, const json_t *body, bool chat,
                         struct lp_api_job *j, struct lp_api_err *e) {
    json_t *model = field(body, "model");
    if (model && !json_is_string(model)) return lp_api_bad(e, "model", "'model' must be a string");
    if (model && strcmp(json_string_value(model), s->model_name) != 0) {
        lp_api_bad(e, "model", "the model '%s' does not exist; this server serves '%s'",
                   json_string_value(model), s->model_name);
        e->code = "model_not_found";
        return false;
    }
    if (!parse_unsupported(body, chat, e) || !get_bool(body, "stream", &j->stream, e) ||
        !get_bool(body, "ignore_eos", &j->sreq.ignore_eos, e)) // vLLM's extension
        return false;
    json_t *so = field(body, "stream_options");
    if (so) {
        if (!json_is_object(so))
            return lp_api_bad(e, "stream_options", "'stream_options' must be an object");
        if (!get_bool(so, "include_usage", &j->include_usage, e)) {
            snprintf(e->param, sizeof e->param, "stream_options.include_usage");
            return false;
        }
    }
    j->max_tokens = -1;
    if (!get_int(body, "max_tokens", 1, 1 << 30, &j->max_tokens, e) ||
        !get_int(body, "max_completion_tokens", 1, 1 << 30, &j->max_tokens, e))
        return false;
    if (chat) {
        if (!get_bool(body, "logprobs", &j->logprobs, e) ||
            !get_int(body, "top_logprobs", 0, LP_SCHED_MAX_TOP_LOGPROBS, &j->n_top, e))
            return false;
        if (j->n_top > 0 && !j->logprobs)
            return lp_api_bad(e, "top_logprobs", "'top_logprobs' needs 'logprobs': true");
    } else {
        j->n_top = -1;
        if (!get_int(body, "logprobs", 0, LP_SCHED_MAX_TOP_LOGPROBS, &j->n_top, e)) return false;
        j->logprobs = j->n_top >= 0;
        if (j->n_top < 0) j->n_top = 0;
    }
    return parse_stop(body, j, e) && parse_sampling(s, body, j, e);
}

// ---- prompts ----

// OpenAI content: a string, null, or an array of {"type": "text", "text": S}.
static json_t *flat_content(const json_t *content, size_t i, struct lp_api_err *e) {
    if (!content || json_is_null(content) || json_is_string(content))
        return content ? json_incref((json_t *)content) : json_null();
    if (!json_is_array(content)) {
        lp_api_bad(e, "messages", "messages[%zu].content must be a string or an array of parts", i);
        return NULL;
    }
    struct lp_api_buf b = {0};
    lp_api_buf_put(&b, "", 0);
    for (size_t k = 0; k < json_array_size(content); k++) {
        const json_t *part = json_array_get(content, k);
        const json_t *type = json_object_get(part, "type"), *text = json_object_get(part, "text");
        if (!json_is_string(type) || strcmp(json_string_value(type), "text") != 0 ||
            !json_is_string(text)) {
            free(b.data);
            lp_api_bad(e, "messages", "messages[%zu].content[%zu]: only text parts are supported",
                       i, k);
            return NULL;
        }
        lp_api_buf_put(&b, json_string_value(text), json_string_length(text));
    }
    json_t *s = b.data ? json_stringn(b.data, b.n) : NULL;
    free(b.data);
    return s;
}

// Checks the messages and makes the {"messages", "tools"} object the chat
// template takes (content parts joined, "developer" as "system").
static json_t *chat_input(const json_t *body, bool *tools_on, struct lp_api_err *e) {
    json_t *msgs = field(body, "messages");
    if (!json_is_array(msgs) || json_array_size(msgs) == 0) {
        lp_api_bad(e, "messages", "'messages' must be a non-empty array");
        return NULL;
    }
    json_t *out = json_array();
    for (size_t i = 0; i < json_array_size(msgs); i++) {
        json_t *m = json_array_get(msgs, i), *role = json_object_get(m, "role");
        const char *r = json_string_value(role);
        if (!json_is_object(m) || !r ||
            (strcmp(r, "system") && strcmp(r, "user") && strcmp(r, "assistant") &&
             strcmp(r, "tool") && strcmp(r, "developer"))) {
            lp_api_bad(e, "messages",
                       "messages[%zu].role must be system, developer, user, assistant or tool", i);
            goto fail;
        }
        json_t *content = flat_content(json_object_get(m, "content"), i, e);
        if (!content) goto fail;
        json_t *copy = json_pack("{s:s,s:o}", "role", strcmp(r, "developer") ? r : "system",
                                 "content", content);
        json_t *rc = field(m, "reasoning_content"), *tc = field(m, "tool_calls");
        if (rc && !json_is_string(rc)) {
            json_decref(copy);
            lp_api_bad(e, "messages", "messages[%zu].reasoning_content must be a string", i);
            goto fail;
        }
        if (rc) json_object_set(copy, "reasoning_content", rc);
        if (tc) json_object_set(copy, "tool_calls", tc);
        json_array_append_new(out, copy);
    }
    json_t *tools = field(body, "tools"), *choice = field(body, "tool_choice");
    if (tools && !json_is_array(tools)) {
        lp_api_bad(e, "tools", "'tools' must be an array");
        goto fail;
    }
    if (choice && !(json_is_string(choice) && (!strcmp(json_string_value(choice), "auto") ||
                                               !strcmp(json_string_value(choice), "none")))) {
        lp_api_bad(e, "tool_choice", "'tool_choice' must be \"auto\" or \"none\"");
        goto fail;
    }
    *tools_on = tools && json_array_size(tools) > 0 &&
                !(choice && !strcmp(json_string_value(choice), "none"));
    json_t *obj = json_pack("{s:o}", "messages", out);
    if (*tools_on) json_object_set(obj, "tools", tools);
    return obj;
fail:
    json_decref(out);
    return NULL;
}

static bool chat_prompt(struct lp_server *s, const json_t *body, struct lp_api_job *j,
                        struct lp_api_err *e) {
    struct lp_chat_options opt = lp_chat_options_default();
    json_t *kw = field(body, "chat_template_kwargs");
    if (kw && !json_is_object(kw))
        return lp_api_bad(e, "chat_template_kwargs", "'chat_template_kwargs' must be an object");
    if (kw && !get_bool(kw, "enable_thinking", &opt.enable_thinking, e)) {
        snprintf(e->param, sizeof e->param, "chat_template_kwargs.enable_thinking");
        return false;
    }
    bool tools_on = false;
    json_t *in = chat_input(body, &tools_on, e);
    if (!in) return false;
    char *text = json_dumps(in, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(in);
    if (!text) return lp_api_err_from_status(e, LP_ERR_NOMEM, NULL, "out of memory");
    struct lp_error err = {0};
    enum lp_status st =
        lp_text_prompt_chat_json(text, strlen(text), s->tok, &opt, &j->prompt, &err);
    free(text);
    if (st != LP_OK) return lp_api_err_from_status(e, st, "messages", err.msg);
    j->tp.reasoning = true;
    j->tp.tool_calls = tools_on;
    return true;
}

static bool completion_prompt(struct lp_server *s, const json_t *body, struct lp_api_job *j,
                              struct lp_api_err *e) {
    json_t *p = field(body, "prompt");
    if (json_is_array(p) && json_array_size(p) == 1 &&
        (json_is_string(json_array_get(p, 0)) || json_is_array(json_array_get(p, 0))))
        p = json_array_get(p, 0); // one prompt given as a list of one
    if (json_is_string(p)) {
        struct lp_error err = {0};
        enum lp_status st = lp_text_prompt_plain(s->tok, json_string_value(p),
                                                 json_string_length(p), &j->prompt, &err);
        return st == LP_OK || lp_api_err_from_status(e, st, "prompt", err.msg);
    }
    if (!json_is_array(p) || json_array_size(p) == 0)
        return lp_api_bad(e, "prompt",
                          "'prompt' must be a string or a non-empty array of token ids");
    for (size_t i = 0; i < json_array_size(p); i++) {
        json_t *v = json_array_get(p, i);
        if (json_is_string(v) || json_is_array(v))
            return lp_api_bad(e, "prompt",
                              "one prompt per request ('n' prompts are not supported)");
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= s->vocab)
            return lp_api_bad(e, "prompt", "prompt[%zu] must be a token id in 0..%d", i,
                              s->vocab - 1);
        if (lp_token_list_push(&j->prompt, (int32_t)json_integer_value(v), NULL) != LP_OK)
            return lp_api_err_from_status(e, LP_ERR_NOMEM, NULL, "out of memory");
    }
    return true;
}

static bool prepare(struct lp_server *s, const json_t *body, bool chat, struct lp_api_job *j,
                    struct lp_api_err *e) {
    if (!parse_common(s, body, chat, j, e)) return false;
    if (!(chat ? chat_prompt(s, body, j, e) : completion_prompt(s, body, j, e))) return false;
    int n = (int)j->prompt.n_ids, room = s->max_context - n;
    if (room < 1) {
        lp_api_bad(e, chat ? "messages" : "prompt",
                   "this model's context is %d tokens; the prompt has %d, leaving no room to "
                   "generate",
                   s->max_context, n);
        e->code = "context_length_exceeded";
        return false;
    }
    j->tp.stops = j->stops;
    j->sreq = (struct lp_sched_request){
        .prompt = j->prompt.ids,
        .n_prompt = n,
        .max_new_tokens = j->max_tokens > 0 && j->max_tokens < room ? j->max_tokens : room,
        .ignore_eos = j->sreq.ignore_eos,
        .sampling = j->sreq.sampling,
        .logprobs = j->logprobs,
        .n_top_logprobs = j->n_top,
    };
    return true;
}

bool lp_api_parse_job(struct lp_server *s, const char *text, size_t n, bool chat,
                       struct lp_api_job *j, json_t **body, struct lp_api_err *e) {
    json_error_t je;
    *body = json_loadb(text ? text : "", n, 0, &je);
    if (!*body)
        return lp_api_bad(e, NULL, "invalid JSON at line %d column %d: %s", je.line, je.column,
                          je.text);
    if (!json_is_object(*body))
        return lp_api_bad(e, NULL, "the request body must be a JSON object");
    j->tp = lp_text_params_default();
    return prepare(s, *body, chat, j, e);
}

bool lp_api_parse_generate(struct lp_server *s, const char *text, size_t n, bool chat,
                           int *n_prompt, struct lp_api_err *e) {
    struct lp_api_job j = {0};
    lp_token_list_init(&j.prompt);
    json_t *body = NULL;
    bool ok = lp_api_parse_job(s, text, n, chat, &j, &body, e);
    if (ok) { // the stop strings, as req_create checks them
        struct lp_text *t = NULL;
        struct lp_text_params tp = j.tp;
        tp.call_id_prefix = "call_0_";
        struct lp_error err = {0};
        enum lp_status st = lp_text_create(&t, s->tok, &tp, &err);
        if (st != LP_OK) ok = lp_api_err_from_status(e, st, "stop", err.msg);
        lp_text_destroy(t);
    }
    *n_prompt = ok ? (int)j.prompt.n_ids : 0;
    json_decref(body);
    lp_token_list_deinit(&j.prompt);
    return ok;
}

