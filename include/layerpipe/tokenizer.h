// SPDX-License-Identifier: MIT
// tokenizer.h -- text to token ids and back, exactly as HF `tokenizers` does
// for byte-level BPE models (Qwen3), plus the Qwen3 ChatML chat template.
// Encoding: added tokens are matched first (leftmost-longest, never split),
// the rest is NFC-normalized, split by the pre-tokenizer regex read from
// tokenizer.json (PCRE2), mapped to byte-level symbols and merged by rank.
// Decoding maps ids back to bytes; invalid UTF-8 comes out as U+FFFD.
// A loaded lp_tokenizer is immutable: every function taking a const pointer
// may be called from any number of threads at once.
#ifndef LAYERPIPE_TOKENIZER_H
#define LAYERPIPE_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "layerpipe/status.h"

struct lp_tokenizer;    // opaque, immutable after load
struct lp_token_stream; // opaque streaming decoder, one per sequence

// ---- loading ---------------------------------------------------------------

// Loads MODEL_DIR/tokenizer.json (required) and MODEL_DIR/tokenizer_config.json
// (optional: eos_token, pad_token, bos_token). A missing or malformed file is
// an LP_ERR_IO / LP_ERR_FORMAT naming the file and field; unsupported model
// types or options are LP_ERR_UNSUPPORTED. On failure *out = NULL.
// MODEL_DIR may also be a GGUF model (a .gguf file, or a folder holding one
// and no tokenizer.json): its metadata gives the tokenizer
// (lp_tokenizer_create_gguf).
LP_API enum lp_status lp_tokenizer_load(struct lp_tokenizer **out, const char *model_dir,
                                        struct lp_error *err);

// Same from memory: tokenizer_json (n_json bytes, required) and
// config_json (n_config bytes; NULL for none). The buffers are only read
// during the call. `name` labels error messages (e.g. the file path).
LP_API enum lp_status lp_tokenizer_create(struct lp_tokenizer **out, const char *name,
                                          const char *tokenizer_json, size_t n_json,
                                          const char *config_json, size_t n_config,
                                          struct lp_error *err);

// The tokenizer of a GGUF file (include/layerpipe/gguf.h), read only during
// the call: tokenizer.ggml.model "gpt2" with pre-tokenizer "qwen2" (or a
// tokenizer.huggingface.json), rebuilt as the tokenizer.json and
// tokenizer_config.json llama.cpp's converter read, so the ids are those HF
// tokenizers gives. Added tokens are the control (special) and
// user-defined ones; eos and pad come from the special ids, bos only when
// tokenizer.ggml.add_bos_token is true. Unknown model or pre-tokenizer
// names are LP_ERR_UNSUPPORTED; malformed metadata LP_ERR_FORMAT.
struct lp_gguf;
LP_API enum lp_status lp_tokenizer_create_gguf(struct lp_tokenizer **out, const struct lp_gguf *g,
                                               struct lp_error *err);

// The other way, for writing GGUF files: adds the tokenizer of folder dir
// (tokenizer.json; tokenizer_config.json and config.json if present) to w
// as llama.cpp's converter writes it: tokenizer.ggml.* with n_vocab tokens
// (ids without a token become unused [PAD<id>] entries; n_vocab <= 0 means
// one past the largest id), the special ids, add_bos/add_eos and
// tokenizer.chat_template. Only Qwen2's pre-tokenizer is known by name
// (LP_ERR_UNSUPPORTED otherwise).
struct lp_gguf_writer;
LP_API enum lp_status lp_tokenizer_gguf_write(struct lp_gguf_writer *w, const char *dir,
                                              int64_t n_vocab, struct lp_error *err);

// Frees everything. Accepts NULL.
LP_API void lp_tokenizer_destroy(struct lp_tokenizer *tok);

// ---- vocabulary ------------------------------------------------------------

// One past the largest token id (151669 for Qwen3; the embedding may be
// larger). Ids in [0, n_vocab) without a token have empty pieces.
LP_API int32_t lp_tokenizer_n_vocab(const struct lp_tokenizer *tok);

// The id of the token whose text is exactly `text` (NUL-terminated): an added
// token's content ("<|im_end|>", "<think>") or a vocabulary entry in its
// byte-level form ("Ġworld"). Returns -1 if there is none.
LP_API int32_t lp_tokenizer_token_id(const struct lp_tokenizer *tok, const char *text);

// The token's text as stored in tokenizer.json (HF convert_ids_to_tokens:
// "Ġworld", "<|im_end|>"), NUL-terminated, borrowed from tok; *n_bytes (may
// be NULL) gets its length. NULL if id is out of range.
LP_API const char *lp_tokenizer_token_piece(const struct lp_tokenizer *tok, int32_t id,
                                            size_t *n_bytes);

// The raw bytes the token decodes to (not NUL-terminated, may be an
// incomplete UTF-8 sequence), borrowed from tok. NULL if id is out of range.
LP_API const uint8_t *lp_tokenizer_token_bytes(const struct lp_tokenizer *tok, int32_t id,
                                               size_t *n_bytes);

// True if id is an added token marked "special" (skipped by
// LP_DECODE_SKIP_SPECIAL). False for out-of-range ids.
LP_API bool lp_tokenizer_is_special(const struct lp_tokenizer *tok, int32_t id);

// Ids from tokenizer_config.json (eos_token, pad_token, bos_token), or -1.
LP_API int32_t lp_tokenizer_eos_id(const struct lp_tokenizer *tok);
LP_API int32_t lp_tokenizer_pad_id(const struct lp_tokenizer *tok);
LP_API int32_t lp_tokenizer_bos_id(const struct lp_tokenizer *tok);

// ---- encoding --------------------------------------------------------------

// A growable array of token ids, embedded by the caller.
// Initialize with lp_token_list_init (or zero it); release with _deinit.
struct lp_token_list {
    int32_t *ids;   // [n_ids], owned
    size_t n_ids;   // ids in use
    size_t cap_ids; // allocated
};

LP_API void lp_token_list_init(struct lp_token_list *list);
LP_API void lp_token_list_deinit(struct lp_token_list *list);
// Appends one id; LP_ERR_NOMEM on allocation failure (list unchanged).
LP_API enum lp_status lp_token_list_push(struct lp_token_list *list, int32_t id,
                                         struct lp_error *err);

enum lp_encode_flags {
    LP_ENCODE_DEFAULT = 0,
    // Treat special added tokens as plain text (HF `split_special_tokens`):
    // for untrusted user text that must not inject <|im_start|> etc.
    // Non-special added tokens (<think>, <tool_call>) are still matched.
    LP_ENCODE_SPLIT_SPECIAL = 1u << 0,
};

// Encodes n_bytes of UTF-8 text and APPENDS the ids to `out` (existing ids
// are kept, so a prompt can be built piece by piece). Invalid UTF-8 is an
// LP_ERR_INVALID_ARG naming the byte offset; on any failure `out` is
// restored to its length before the call. No BOS/EOS is added (Qwen3 has no
// post-processor ids). Thread-safe; allocates its own scratch.
LP_API enum lp_status lp_tokenizer_encode(const struct lp_tokenizer *tok, const char *text,
                                          size_t n_bytes, unsigned flags, struct lp_token_list *out,
                                          struct lp_error *err);

// ---- decoding --------------------------------------------------------------

enum lp_decode_flags {
    LP_DECODE_DEFAULT = 0,
    LP_DECODE_SKIP_SPECIAL = 1u << 0, // drop special added tokens (HF skip_special_tokens)
};

// Decodes ids to UTF-8 as HF `Tokenizer.decode` does (invalid sequences
// become U+FFFD, one per maximal invalid subpart). Writes at most `cap`
// bytes to `out` (may be NULL when cap is 0), NUL-terminated when it fits,
// and sets *n_bytes to the full length (snprintf style: call again with a
// larger buffer if *n_bytes >= cap). Ids >= n_vocab (padding rows of the
// embedding) decode to nothing, as in HF; a negative id is LP_ERR_INVALID_ARG.
LP_API enum lp_status lp_tokenizer_decode(const struct lp_tokenizer *tok, const int32_t *ids,
                                          size_t n_ids, unsigned flags, char *out, size_t cap,
                                          size_t *n_bytes, struct lp_error *err);

// A streaming decoder for generation: push ids one at a time and print what
// comes back. It never emits part of a UTF-8 character: bytes that may still
// complete a character are held until the next push. The concatenation of
// everything returned (push ... flush) equals lp_tokenizer_decode of all ids.
// Borrows tok, which must outlive the stream. Not thread-safe (one stream
// per sequence); no allocation after create.
LP_API enum lp_status lp_token_stream_create(struct lp_token_stream **out,
                                             const struct lp_tokenizer *tok, unsigned flags,
                                             struct lp_error *err);
LP_API void lp_token_stream_destroy(struct lp_token_stream *stream);

// Adds one id. *text gets the complete UTF-8 bytes now ready (possibly zero
// bytes), NUL-terminated, borrowed from the stream until the next call.
// Ids >= n_vocab add nothing; a negative id is LP_ERR_INVALID_ARG and
// changes nothing.
LP_API enum lp_status lp_token_stream_push(struct lp_token_stream *stream, int32_t id,
                                           const char **text, size_t *n_bytes,
                                           struct lp_error *err);

// Ends the sequence: held bytes (an unfinished character) come out as
// U+FFFD. *text is borrowed until the next call. Then the stream is empty
// and may be reused for a new sequence.
LP_API void lp_token_stream_flush(struct lp_token_stream *stream, const char **text,
                                  size_t *n_bytes);

// Drops held bytes without emitting them.
LP_API void lp_token_stream_reset(struct lp_token_stream *stream);

// ---- stop strings -----------------------------------------------------------

#define LP_MAX_STOP_STRINGS 16

// Filters streamed text for stop strings: text that might be the start of
// a stop string is held back until it is known not to be; when a stop
// string appears, the text before it is released and the matcher reports
// the stop (the stop string itself is never released). Borrows the
// strings, which must outlive the matcher. Not thread-safe.
struct lp_stop_matcher;

// n_stops <= LP_MAX_STOP_STRINGS, each string non-empty.
LP_API enum lp_status lp_stop_matcher_create(struct lp_stop_matcher **out,
                                             const char *const *stops, int n_stops,
                                             struct lp_error *err);
LP_API void lp_stop_matcher_destroy(struct lp_stop_matcher *m);
// Adds text; *out (borrowed until the next call) gets the bytes safe to
// print now. Returns true when a stop string was found: *out then holds
// the text before it and the matcher takes nothing more.
LP_API bool lp_stop_matcher_push(struct lp_stop_matcher *m, const char *text, size_t n,
                                 const char **out, size_t *n_out);
// At the end: releases what was held back.
LP_API void lp_stop_matcher_flush(struct lp_stop_matcher *m, const char **out, size_t *n_out);

// ---- chat template (Qwen3 ChatML) ------------------------------------------

// One message of a conversation. All strings are borrowed for the call and
// NUL-terminated UTF-8; NULL means absent.
struct lp_chat_message {
    // "system", "user", "assistant" or "tool"; other roles render nothing.
    const char *role;
    // The text; NULL renders as "" (HF's template would fail on None).
    const char *content;
    // Assistant thinking; NULL: taken from <think>...</think> in content.
    const char *reasoning_content;
    // Assistant: JSON array of OpenAI-style tool calls, or NULL.
    const char *tool_calls_json;
};

struct lp_chat_options {
    const char *tools_json;     // JSON array of tool (function) definitions, or NULL
    bool add_generation_prompt; // end with "<|im_start|>assistant\n"
    bool enable_thinking;       // false adds the empty "<think>\n\n</think>\n\n" block
};

// Default options: no tools, add_generation_prompt true, enable_thinking true.
LP_API struct lp_chat_options lp_chat_options_default(void);

// Renders messages with the Qwen3 chat template, byte-for-byte what
// transformers' apply_chat_template(tokenize=False) gives with the official
// Qwen3 tokenizer_config.json. *out is a malloc'ed NUL-terminated string
// owned by the caller (free()); *n_bytes (may be NULL) gets its length.
// Malformed tool JSON is LP_ERR_INVALID_ARG naming the message index.
LP_API enum lp_status lp_chat_render(const struct lp_chat_message *messages, size_t n_messages,
                                     const struct lp_chat_options *options, char **out,
                                     size_t *n_bytes, struct lp_error *err);

// Same, from OpenAI-style JSON: either an array of messages or an object with
// "messages" (and optionally "tools"; a "tools" key overrides
// options->tools_json). Message fields: role, content (string or null),
// reasoning_content, tool_calls. Errors name the message index and field.
LP_API enum lp_status lp_chat_render_json(const char *json, size_t n_json,
                                          const struct lp_chat_options *options, char **out,
                                          size_t *n_bytes, struct lp_error *err);

#endif
