// SPDX-License-Identifier: MIT
// api.h -- what sits between a user and the scheduler: the text of a
// request (a prompt rendered with the chat template and encoded; the
// generated tokens turned back into text, cut at stop strings, split into
// reasoning, content and tool calls) and the OpenAI-compatible HTTP server
// (`layerpipe serve`). `run` and `serve` share the text object, so both
// print exactly the same text for the same tokens.
//
// Text flow of one request, per generated token:
//   token -> streaming decode (whole UTF-8 characters) -> stop strings
//         -> <think>...</think> into reasoning, <tool_call>{..}</tool_call>
//            into tool calls, the rest into content
#ifndef LAYERPIPE_API_H
#define LAYERPIPE_API_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "layerpipe/status.h"
#include "layerpipe/tokenizer.h"

struct lp_sched; // cluster.h
struct lp_model; // model.h

// ---- prompts ---------------------------------------------------------------

// Encodes a plain prompt (no template) and APPENDS its ids to out. An empty
// result is LP_ERR_INVALID_ARG. On failure out keeps its length.
LP_API enum lp_status lp_text_prompt_plain(const struct lp_tokenizer *tok, const char *text,
                                           size_t n_bytes, struct lp_token_list *out,
                                           struct lp_error *err);

// Renders messages with the chat template (lp_chat_render) and appends the
// encoded ids to out.
LP_API enum lp_status lp_text_prompt_chat(const struct lp_tokenizer *tok,
                                          const struct lp_chat_message *messages, size_t n_messages,
                                          const struct lp_chat_options *options,
                                          struct lp_token_list *out, struct lp_error *err);

// Same from OpenAI-style JSON (what lp_chat_render_json takes: a messages
// array, or an object with "messages" and "tools").
LP_API enum lp_status lp_text_prompt_chat_json(const char *json, size_t n_json,
                                               const struct lp_tokenizer *tok,
                                               const struct lp_chat_options *options,
                                               struct lp_token_list *out, struct lp_error *err);

// ---- generated text ----------------------------------------------------------

struct lp_text; // opaque; one per request, used by one thread at a time

struct lp_text_params {
    const char *const *stops;   // [n_stops] stop strings (copied); generation ends before one
    int n_stops;                // 0..LP_MAX_STOP_STRINGS
    bool reasoning;             // split a leading <think>...</think> off as reasoning
    bool reasoning_open;        // the prompt already opened <think>: start inside it
    bool tool_calls;            // parse <tool_call>{"name":..,"arguments":..}</tool_call>
    const char *call_id_prefix; // tool call ids are PREFIX + index ("call_"); copied
};

// No stops, plain text (no reasoning, no tool calls): what `run -p` prints.
LP_API struct lp_text_params lp_text_params_default(void);

// One parsed tool call. Strings are NUL-terminated, owned by the lp_text.
struct lp_tool_call {
    const char *id; // PREFIX + index
    const char *name;
    const char *arguments; // compact JSON text of the arguments object
};

// What one push released. Pointers are borrowed until the next push/finish.
struct lp_text_delta {
    const char *content; // [n_content] bytes of content, not NUL-terminated
    size_t n_content;
    const char *reasoning; // [n_reasoning] bytes of reasoning
    size_t n_reasoning;
    int first_tool_call; // tool calls completed by this push: indexes
    int n_tool_calls;    // [first_tool_call, first_tool_call + n_tool_calls)
    bool stopped;        // a stop string was seen: end the request (nothing more comes)
};

// Borrows tok (must outlive the object). On failure *out = NULL.
LP_API enum lp_status lp_text_create(struct lp_text **out, const struct lp_tokenizer *tok,
                                     const struct lp_text_params *p, struct lp_error *err);
LP_API void lp_text_destroy(struct lp_text *t); // accepts NULL

// Adds one generated token (special tokens decode to nothing) and fills *d
// with what is now safe to show. After a stop, pushes add nothing.
// Fails (LP_ERR_INVALID_ARG for a negative id, LP_ERR_NOMEM) changing nothing.
LP_API enum lp_status lp_text_push(struct lp_text *t, int32_t token, struct lp_text_delta *d,
                                   struct lp_error *err);

// The end of generation: releases everything held back (an unfinished
// character, a partial stop string or tag, an unclosed tool call as plain
// content). Call once; then the totals below are final.
LP_API enum lp_status lp_text_finish(struct lp_text *t, struct lp_text_delta *d,
                                     struct lp_error *err);

// Totals so far (everything released by push and finish), NUL-terminated,
// borrowed until the next push/finish/destroy.
LP_API const char *lp_text_content(const struct lp_text *t, size_t *n_bytes);
LP_API const char *lp_text_reasoning(const struct lp_text *t, size_t *n_bytes);
LP_API int lp_text_n_tool_calls(const struct lp_text *t);
// NULL when i is out of range.
LP_API const struct lp_tool_call *lp_text_tool_call(const struct lp_text *t, int i);
// True once a stop string was seen.
LP_API bool lp_text_stopped(const struct lp_text *t);

// ---- the HTTP server -----------------------------------------------------------

// One line per request (method, path, status, tokens, seconds), without a
// newline; called on a connection thread.
typedef void (*lp_server_log_fn)(void *user, const char *line);

struct lp_server_params {
    const char *listen;     // "HOST:PORT" (port 0: any free port); default "127.0.0.1:8080"
    const char *api_key;    // required as "Authorization: Bearer KEY" on /v1/*; NULL: none
    const char *model_name; // the id /v1/models lists and requests must name
    size_t max_body_bytes;  // larger request bodies get 413 (default 4 MiB)
    int max_connections;    // default 256
    lp_server_log_fn log;   // NULL: silent
    void *log_user;
};

LP_API struct lp_server_params lp_server_params_default(void);

struct lp_server;

// Starts serving on its own threads (one per connection). Borrows sched,
// tok and model (they must outlive the server); strings in p are copied.
// LP_ERR_IO when the address cannot be bound. On failure *out = NULL.
LP_API enum lp_status lp_server_create(struct lp_server **out, struct lp_sched *sched,
                                       const struct lp_tokenizer *tok, const struct lp_model *model,
                                       const struct lp_server_params *p, struct lp_error *err);
// The port it listens on (useful with port 0).
LP_API int lp_server_port(const struct lp_server *s);
// Stops accepting, cancels running requests, joins every thread. Accepts NULL.
LP_API void lp_server_destroy(struct lp_server *s);

// The HTTP status for an lp_status (the one table; LP_OK is 200).
LP_API int lp_api_http_status(enum lp_status st);

#endif
