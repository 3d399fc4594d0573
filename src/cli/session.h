// SPDX-License-Identifier: MIT
// session.h -- what run, logits and bench share: open a model folder, a CPU
// backend and an engine from the common command-line options, and close
// them again in order.
#ifndef LP_CLI_SESSION_H
#define LP_CLI_SESSION_H

#include <stdbool.h>

#include "layerpipe/backend.h"
#include "layerpipe/engine.h"
#include "layerpipe/model.h"

struct lp_cli_session_opts {
    const char *model_dir;
    int threads;          // <= 0: all cores
    int ctx;              // 0: model limit
    int batch;            // max tokens per forward (prefill chunk)
    int logit_rows;       // max logit rows per forward (0: engine default)
    const char *kv_dtype; // "f32" or "bf16"
    bool fast;            // int8 activations for 8-bit MLX weights
    int max_seqs;
};

struct lp_cli_session {
    struct lp_model *model;
    struct lp_backend *backend;
    struct lp_engine *engine;
    struct lp_runner runner; // what run, logits and bench drive
};

// Opens everything; on failure prints the error to stderr and returns false
// with the session closed.
bool lp_cli_session_open(struct lp_cli_session *s, const struct lp_cli_session_opts *o,
                         const char *cmd);
void lp_cli_session_close(struct lp_cli_session *s);

#endif
