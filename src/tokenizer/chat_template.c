// SPDX-License-Identifier: MIT
// chat_template.c -- the Qwen3 chat template (tokenizer_config.json
// "chat_template", Jinja) rewritten in C, statement by statement, so its
// output is byte-for-byte what transformers' apply_chat_template renders.
// Tool definitions and tool-call arguments pass through transformers'
// `tojson` filter, i.e. Python json.dumps(ensure_ascii=False): py_json_dump
// reproduces its separators (", ", ": "), escapes and float repr.
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer/internal.h"

// A growing output string; `oom` latches the first allocation failure.
struct sbuf {
    char *p;
    size_t n, cap;
    bool oom;
};

static void sb_put(struct sbuf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}

static void sb_puts(struct sbuf *b, const char *s) {
    sb_put(b, s, strlen(s));
}

// ---- Python json.dumps ----------------------------------------------------------

static void py_json_string(struct sbuf *b, const char *s, size_t n) {
    sb_put(b, "\"", 1);
    size_t run = 0; // start of the pending unescaped run
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        const char *esc = NULL;
        char buf[8];
        switch (c) {
        case '"':
            esc = "\\\"";
            break;
        case '\\':
            esc = "\\\\";
            break;
        case '\n':
            esc = "\\n";
            break;
        case '\r':
            esc = "\\r";
            break;
        case '\t':
            esc = "\\t";
            break;
        case '\b':
            esc = "\\b";
            break;
        case '\f':
            esc = "\\f";
            break;
        default:
            if (c < 0x20) {
                snprintf(buf, sizeof buf, "\\u%04x", c);
                esc = buf;
            }
        }
        if (!esc) continue;
        sb_put(b, s + run, i - run);
        sb_puts(b, esc);
        run = i + 1;
    }
    sb_put(b, s + run, n - run);
    sb_put(b, "\"", 1);
}

// Python's repr(float): the shortest digits that round-trip, in fixed
// notation when the decimal exponent is in [-4, 16), else scientific.
static void py_json_real(struct sbuf *b, double v) {
    if (isnan(v)) {
        sb_puts(b, "NaN");
        return;
    }
    if (isinf(v)) {
        sb_puts(b, v < 0 ? "-Infinity" : "Infinity");
        return;
    }
    char sci[40];
    for (int prec = 0; prec <= 16; prec++) {
        snprintf(sci, sizeof sci, "%.*e", prec, v);
        if (strtod(sci, NULL) == v) break;
    }
    // sci = [-]d[.ddd]e[+-]xx
    const char *p = sci;
    bool neg = *p == '-';
    if (neg) p++;
    char digits[24];
    size_t nd = 0;
    for (; *p && *p != 'e'; p++)
        if (*p != '.') digits[nd++] = *p;
    while (nd > 1 && digits[nd - 1] == '0')
        nd--;
    int exp10 = atoi(p + 1);
    int decpt = exp10 + 1; // value = 0.digits * 10^decpt
    char out[64];
    size_t o = 0;
    if (neg) out[o++] = '-';
    if (digits[0] == '0') { // zero
        memcpy(out + o, "0.0", 3);
        o += 3;
    } else if (decpt > -4 && decpt <= 16) {
        if (decpt <= 0) {
            out[o++] = '0';
            out[o++] = '.';
            for (int i = 0; i < -decpt; i++)
                out[o++] = '0';
            memcpy(out + o, digits, nd);
            o += nd;
        } else if ((size_t)decpt < nd) {
            memcpy(out + o, digits, (size_t)decpt);
            o += (size_t)decpt;
            out[o++] = '.';
            memcpy(out + o, digits + decpt, nd - (size_t)decpt);
            o += nd - (size_t)decpt;
        } else {
            memcpy(out + o, digits, nd);
            o += nd;
            for (size_t i = nd; i < (size_t)decpt; i++)
                out[o++] = '0';
            out[o++] = '.';
            out[o++] = '0';
        }
    } else {
        out[o++] = digits[0];
        if (nd > 1) {
            out[o++] = '.';
            memcpy(out + o, digits + 1, nd - 1);
            o += nd - 1;
        }
        o += (size_t)snprintf(out + o, sizeof out - o, "e%c%02d", exp10 < 0 ? '-' : '+',
                              exp10 < 0 ? -exp10 : exp10);
    }
    sb_put(b, out, o);
}

static void py_json_dump(struct sbuf *b, const json_t *v) {
    char buf[32];
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        sb_put(b, "{", 1);
        const char *key;
        const json_t *val;
        bool first = true;
        json_object_foreach((json_t *)v, key, val) {
            if (!first) sb_put(b, ", ", 2);
            first = false;
            py_json_string(b, key, strlen(key));
            sb_put(b, ": ", 2);
            py_json_dump(b, val);
        }
        sb_put(b, "}", 1);
        break;
    }
    case JSON_ARRAY: {
        sb_put(b, "[", 1);
        for (size_t i = 0; i < json_array_size(v); i++) {
            if (i) sb_put(b, ", ", 2);
            py_json_dump(b, json_array_get(v, i));
        }
        sb_put(b, "]", 1);
        break;
    }
    case JSON_STRING:
        py_json_string(b, json_string_value(v), json_string_length(v));
        break;
    case JSON_INTEGER:
        snprintf(buf, sizeof buf, "%lld", (long long)json_integer_value(v));
        sb_puts(b, buf);
        break;
    case JSON_REAL:
        py_json_real(b, json_real_value(v));
        break;
    case JSON_TRUE:
        sb_puts(b, "true");
        break;
    case JSON_FALSE:
        sb_puts(b, "false");
        break;
    case JSON_NULL:
        sb_puts(b, "null");
        break;
    }
}

// ---- the template -----------------------------------------------------------------

// A message with its tool calls parsed.
struct msg {
    const char *role;
    const char *content;      // never NULL
    const char *reasoning;    // NULL when absent or null
    const json_t *tool_calls; // borrowed; NULL when absent
};

static bool is_role(const struct msg *m, const char *role) {
    return strcmp(m->role, role) == 0;
}

static bool starts_with(const char *s, const char *p) {
    return strncmp(s, p, strlen(p)) == 0;
}

static bool ends_with(const char *s, const char *p) {
    size_t n = strlen(s), k = strlen(p);
    return n >= k && memcmp(s + n - k, p, k) == 0;
}

// Last occurrence of needle in [s, s + n), or NULL.
static const char *last_of(const char *s, size_t n, const char *needle) {
    size_t k = strlen(needle);
    for (size_t i = n >= k ? n - k + 1 : 0; i-- > 0;)
        if (memcmp(s + i, needle, k) == 0) return s + i;
    return NULL;
}

// Python's s.strip('\n') family on [*s, *s + *n).
static void lstrip_nl(const char **s, size_t *n) {
    while (*n && **s == '\n')
        (*s)++, (*n)--;
}
static void rstrip_nl(const char *s, size_t *n) {
    (void)s;
    while (*n && s[*n - 1] == '\n')
        (*n)--;
}

static const char tools_intro[] =
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>";
static const char tools_outro[] =
    "\n</tools>\n\nFor each function call, return a json object with function name and "
    "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": "
    "<function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n";

static bool json_truthy(const json_t *v) {
    if (!v) return false;
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return json_object_size(v) > 0;
    case JSON_ARRAY:
        return json_array_size(v) > 0;
    case JSON_STRING:
        return json_string_length(v) > 0;
    case JSON_INTEGER:
        return json_integer_value(v) != 0;
    case JSON_REAL:
        return json_real_value(v) != 0.0;
    case JSON_TRUE:
        return true;
    default:
        return false;
    }
}

static enum lp_status render_tool_calls(struct sbuf *b, size_t i_msg, const json_t *calls,
                                        bool content_nonempty, struct lp_error *err) {
    if (!json_is_array(calls))
        return lp_error_set(err, LP_ERR_INVALID_ARG,
                            "chat: messages[%zu].tool_calls: expected an array", i_msg);
    for (size_t j = 0; j < json_array_size(calls); j++) {
        const json_t *tc = json_array_get(calls, j);
        if (!json_is_object(tc))
            return lp_error_set(err, LP_ERR_INVALID_ARG,
                                "chat: messages[%zu].tool_calls[%zu]: expected an object", i_msg,
                                j);
        if ((j == 0 && content_nonempty) || j > 0) sb_put(b, "\n", 1);
        const json_t *fn = json_object_get(tc, "function");
        if (json_truthy(fn)) tc = fn;
        if (!json_is_object(tc))
            return lp_error_set(err, LP_ERR_INVALID_ARG,
                                "chat: messages[%zu].tool_calls[%zu].function: expected an object",
                                i_msg, j);
        sb_puts(b, "<tool_call>\n{\"name\": \"");
        const json_t *name = json_object_get(tc, "name");
        if (json_is_string(name))
            sb_put(b, json_string_value(name), json_string_length(name));
        else if (name)
            py_json_dump(b, name);
        sb_puts(b, "\", \"arguments\": ");
        const json_t *args = json_object_get(tc, "arguments");
        if (!args)
            return lp_error_set(err, LP_ERR_INVALID_ARG,
                                "chat: messages[%zu].tool_calls[%zu]: missing 'arguments'", i_msg,
                                j);
        if (json_is_string(args))
            sb_put(b, json_string_value(args), json_string_length(args));
        else
            py_json_dump(b, args);
        sb_puts(b, "}\n</tool_call>");
    }
    return LP_OK;
}

static enum lp_status render(const struct msg *msgs, size_t n, const json_t *tools,
                             const struct lp_chat_options *opt, char **out, size_t *n_bytes,
                             struct lp_error *err) {
    *out = NULL;
    if (n == 0) return lp_error_set(err, LP_ERR_INVALID_ARG, "chat: no messages");
    struct sbuf b = {0};
    enum lp_status st = LP_OK;
    if (json_truthy(tools)) {
        sb_puts(&b, "<|im_start|>system\n");
        if (is_role(&msgs[0], "system")) {
            sb_puts(&b, msgs[0].content);
            sb_puts(&b, "\n\n");
        }
        sb_puts(&b, tools_intro);
        for (size_t i = 0; i < json_array_size(tools); i++) {
            sb_put(&b, "\n", 1);
            py_json_dump(&b, json_array_get(tools, i));
        }
        sb_puts(&b, tools_outro);
    } else if (is_role(&msgs[0], "system")) {
        sb_puts(&b, "<|im_start|>system\n");
        sb_puts(&b, msgs[0].content);
        sb_puts(&b, "<|im_end|>\n");
    }
    // The last user query that is not a wrapped tool response.
    size_t last_query = n - 1;
    for (size_t k = n; k-- > 0;) {
        const struct msg *m = &msgs[k];
        if (is_role(m, "user") && !(starts_with(m->content, "<tool_response>") &&
                                    ends_with(m->content, "</tool_response>"))) {
            last_query = k;
            break;
        }
    }
    for (size_t i = 0; i < n && !st; i++) {
        const struct msg *m = &msgs[i];
        if (is_role(m, "user") || (is_role(m, "system") && i > 0)) {
            sb_puts(&b, "<|im_start|>");
            sb_puts(&b, m->role);
            sb_put(&b, "\n", 1);
            sb_puts(&b, m->content);
            sb_puts(&b, "<|im_end|>\n");
        } else if (is_role(m, "assistant")) {
            const char *content = m->content, *reasoning = "";
            size_t n_content = strlen(content), n_reasoning = 0;
            if (m->reasoning) {
                reasoning = m->reasoning;
                n_reasoning = strlen(reasoning);
            } else if (strstr(content, "</think>")) {
                const char *first = strstr(content, "</think>");
                const char *last = last_of(content, n_content, "</think>");
                // reasoning =
                // content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n')
                reasoning = content;
                n_reasoning = (size_t)(first - content);
                rstrip_nl(reasoning, &n_reasoning);
                const char *open = last_of(reasoning, n_reasoning, "<think>");
                if (open) {
                    n_reasoning -= (size_t)(open + 7 - reasoning);
                    reasoning = open + 7;
                }
                lstrip_nl(&reasoning, &n_reasoning);
                // content = content.split('</think>')[-1].lstrip('\n')
                n_content -= (size_t)(last + 8 - content);
                content = last + 8;
                lstrip_nl(&content, &n_content);
            }
            sb_puts(&b, "<|im_start|>assistant\n");
            if (i > last_query && (i == n - 1 || n_reasoning > 0)) {
                const char *r = reasoning, *c = content;
                size_t nr = n_reasoning, nc = n_content;
                lstrip_nl(&r, &nr);
                rstrip_nl(r, &nr);
                lstrip_nl(&c, &nc);
                sb_puts(&b, "<think>\n");
                sb_put(&b, r, nr);
                sb_puts(&b, "\n</think>\n\n");
                sb_put(&b, c, nc);
            } else {
                sb_put(&b, content, n_content);
            }
            if (json_truthy(m->tool_calls))
                st = render_tool_calls(&b, i, m->tool_calls, n_content > 0, err);
            sb_puts(&b, "<|im_end|>\n");
        } else if (is_role(m, "tool")) {
            if (i == 0 || !is_role(&msgs[i - 1], "tool")) sb_puts(&b, "<|im_start|>user");
            sb_puts(&b, "\n<tool_response>\n");
            sb_puts(&b, m->content);
            sb_puts(&b, "\n</tool_response>");
            if (i == n - 1 || !is_role(&msgs[i + 1], "tool")) sb_puts(&b, "<|im_end|>\n");
        }
    }
    if (!st && opt->add_generation_prompt) {
        sb_puts(&b, "<|im_start|>assistant\n");
        if (!opt->enable_thinking) sb_puts(&b, "<think>\n\n</think>\n\n");
    }
    if (!st && b.oom) st = lp_error_set(err, LP_ERR_NOMEM, "chat: out of memory");
    if (!st && !b.p) sb_put(&b, "", 0);
    if (!st && b.oom) st = lp_error_set(err, LP_ERR_NOMEM, "chat: out of memory");
    if (st) {
        free(b.p);
        return st;
    }
    *out = b.p;
    if (n_bytes) *n_bytes = b.n;
    return LP_OK;
}

struct lp_chat_options lp_chat_options_default(void) {
    return (struct lp_chat_options){
        .tools_json = NULL, .add_generation_prompt = true, .enable_thinking = true};
}

static enum lp_status parse_json(const char *what, const char *text, size_t n, json_t **out,
                                 struct lp_error *err) {
    json_error_t jerr;
    *out = json_loadb(text, n, JSON_DECODE_ANY, &jerr);
    if (!*out)
        return lp_error_set(err, LP_ERR_INVALID_ARG, "chat: %s: line %d column %d: %s", what,
                            jerr.line, jerr.column, jerr.text);
    return LP_OK;
}

static enum lp_status parse_tools(const char *tools_json, json_t **tools, struct lp_error *err) {
    *tools = NULL;
    if (!tools_json) return LP_OK;
    enum lp_status st = parse_json("tools", tools_json, strlen(tools_json), tools, err);
    if (st) return st;
    if (!json_is_array(*tools) && !json_is_null(*tools)) {
        json_decref(*tools);
        *tools = NULL;
        return lp_error_set(err, LP_ERR_INVALID_ARG, "chat: tools: expected a JSON array");
    }
    return LP_OK;
}

enum lp_status lp_chat_render(const struct lp_chat_message *messages, size_t n_messages,
                              const struct lp_chat_options *options, char **out, size_t *n_bytes,
                              struct lp_error *err) {
    *out = NULL;
    struct lp_chat_options def = lp_chat_options_default();
    if (!options) options = &def;
    json_t *tools = NULL;
    struct msg *msgs = calloc(n_messages ? n_messages : 1, sizeof *msgs);
    if (!msgs) return lp_error_set(err, LP_ERR_NOMEM, "chat: out of memory");
    enum lp_status st = parse_tools(options->tools_json, &tools, err);
    for (size_t i = 0; i < n_messages && !st; i++) {
        const struct lp_chat_message *m = &messages[i];
        if (!m->role) {
            st = lp_error_set(err, LP_ERR_INVALID_ARG, "chat: messages[%zu]: role is NULL", i);
            break;
        }
        msgs[i].role = m->role;
        msgs[i].content = m->content ? m->content : "";
        msgs[i].reasoning = m->reasoning_content;
        if (m->tool_calls_json) {
            char what[48];
            snprintf(what, sizeof what, "messages[%zu].tool_calls", i);
            json_t *tc;
            st = parse_json(what, m->tool_calls_json, strlen(m->tool_calls_json), &tc, err);
            msgs[i].tool_calls = tc;
        }
    }
    if (!st) st = render(msgs, n_messages, tools, options, out, n_bytes, err);
    for (size_t i = 0; i < n_messages; i++)
        json_decref((json_t *)msgs[i].tool_calls);
    free(msgs);
    json_decref(tools);
    return st;
}

// An optional string field: absent or null gives NULL.
static enum lp_status opt_string(const json_t *obj, const char *key, size_t i, const char **out,
                                 struct lp_error *err) {
    const json_t *v = json_object_get(obj, key);
    *out = NULL;
    if (!v || json_is_null(v)) return LP_OK;
    if (!json_is_string(v))
        return lp_error_set(err, LP_ERR_INVALID_ARG,
                            "chat: messages[%zu].%s: expected a string or null", i, key);
    *out = json_string_value(v);
    return LP_OK;
}

enum lp_status lp_chat_render_json(const char *json, size_t n_json,
                                   const struct lp_chat_options *options, char **out,
                                   size_t *n_bytes, struct lp_error *err) {
    *out = NULL;
    struct lp_chat_options def = lp_chat_options_default();
    if (!options) options = &def;
    json_t *root = NULL, *tools = NULL;
    struct msg *msgs = NULL;
    enum lp_status st = parse_json("messages", json, n_json, &root, err);
    if (st) return st;
    const json_t *list = root;
    if (json_is_object(root)) {
        list = json_object_get(root, "messages");
        const json_t *t = json_object_get(root, "tools");
        if (t) {
            if (!json_is_array(t) && !json_is_null(t)) {
                st = lp_error_set(err, LP_ERR_INVALID_ARG, "chat: tools: expected a JSON array");
                goto done;
            }
            tools = json_incref((json_t *)t);
        }
    }
    if (!json_is_array(list)) {
        st = lp_error_set(err, LP_ERR_INVALID_ARG,
                          "chat: expected an array of messages or an object with \"messages\"");
        goto done;
    }
    if (!tools && (st = parse_tools(options->tools_json, &tools, err))) goto done;
    size_t n = json_array_size(list);
    msgs = calloc(n ? n : 1, sizeof *msgs);
    if (!msgs) {
        st = lp_error_set(err, LP_ERR_NOMEM, "chat: out of memory");
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        const json_t *m = json_array_get(list, i);
        if (!json_is_object(m)) {
            st =
                lp_error_set(err, LP_ERR_INVALID_ARG, "chat: messages[%zu]: expected an object", i);
            goto done;
        }
        const json_t *role = json_object_get(m, "role");
        if (!json_is_string(role)) {
            st = lp_error_set(err, LP_ERR_INVALID_ARG,
                              "chat: messages[%zu].role: expected a string", i);
            goto done;
        }
        msgs[i].role = json_string_value(role);
        if ((st = opt_string(m, "content", i, &msgs[i].content, err))) goto done;
        if (!msgs[i].content) msgs[i].content = "";
        if ((st = opt_string(m, "reasoning_content", i, &msgs[i].reasoning, err))) goto done;
        const json_t *tc = json_object_get(m, "tool_calls");
        msgs[i].tool_calls = json_is_null(tc) ? NULL : tc;
    }
    st = render(msgs, n, tools, options, out, n_bytes, err);
done:
    free(msgs);
    json_decref(tools);
    json_decref(root);
    return st;
}
