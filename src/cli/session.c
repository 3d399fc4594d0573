// SPDX-License-Identifier: MIT
// session.c -- model + backend + engine for a single-process command.
#include "cli/session.h"

#include <stdio.h>
#include <string.h>

bool lp_cli_session_open(struct lp_cli_session *s, const struct lp_cli_session_opts *o,
                         const char *cmd) {
    memset(s, 0, sizeof *s);
    struct lp_error err = {0};
    struct lp_engine_params ep = lp_engine_params_default();
    if (o->kv_dtype && strcmp(o->kv_dtype, "f32") != 0 && strcmp(o->kv_dtype, "bf16") != 0) {
        fprintf(stderr, "layerpipe %s: --kv-dtype '%s': expected f32 or bf16\n", cmd, o->kv_dtype);
        return false;
    }
    if (o->kv_dtype && strcmp(o->kv_dtype, "bf16") == 0) ep.kv_dtype = LP_DTYPE_BF16;
    if (o->ctx > 0) ep.max_context = o->ctx;
    if (o->batch > 0) ep.max_batch_tokens = o->batch;
    if (o->max_seqs > 0) ep.max_seqs = o->max_seqs;
    ep.max_logit_rows = o->logit_rows > 0 ? o->logit_rows : ep.max_seqs;
    if (ep.max_logit_rows > ep.max_batch_tokens) ep.max_batch_tokens = ep.max_logit_rows;
    struct lp_backend_cpu_params bp = lp_backend_cpu_params_default();
    bp.n_threads = o->threads;
    bp.quantize_activations = o->fast;
    if (lp_model_open(&s->model, o->model_dir, NULL, &err) != LP_OK ||
        lp_backend_cpu_create(&s->backend, &bp, &err) != LP_OK ||
        lp_engine_create(&s->engine, s->model, s->backend, &ep, &err) != LP_OK) {
        fprintf(stderr, "layerpipe %s: %s\n", cmd, err.msg);
        lp_cli_session_close(s);
        return false;
    }
    s->runner = lp_engine_runner(s->engine);
    return true;
}

void lp_cli_session_close(struct lp_cli_session *s) {
    lp_engine_destroy(s->engine);
    lp_backend_destroy(s->backend);
    lp_model_close(s->model);
    memset(s, 0, sizeof *s);
}
