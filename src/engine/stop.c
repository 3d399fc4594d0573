// SPDX-License-Identifier: MIT
// generate.c -- the autoregressive loop over a runner (one engine, or a
// pipeline of stages): prefill the prompt, then sample and decode one token
// at a time, stopping at an EOS id, the token limit, the context limit or
// when the caller says so.
#include <stdlib.h>
#include <time.h>

#include "layerpipe/engine.h"

const char *lp_stop_reason_str(enum lp_stop_reason reason) {
    switch (reason) {
    case LP_STOP_NONE: return "none";
    case LP_STOP_EOS: return "eos";
    case LP_STOP_LENGTH: return "length";
    case LP_STOP_CONTEXT: return "context";
    case LP_STOP_CALLBACK: return "stopped";
    }
    return "?";
}

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static bool is_eos(const struct lp_model_config *c, int32_t id) {
    for (int i = 0; i < c->n_eos_ids; i++)
        if (c->eos_ids[i] == id) return true;
    return false;
}

enum lp_status lp_generate(const struct lp_runner *runner, const struct lp_model_config *c,
                           const int32_t *prompt, int n_prompt,
                           const struct lp_generate_params *params, lp_token_fn on_token,
                           void *user, struct lp_generate_result *result, struct lp_error *err) {
    *result = (struct lp_generate_result){.stop = LP_STOP_NONE, .n_prompt = n_prompt};
    const struct lp_runner_i *r = &runner->iface;
    int ctx = r->max_context(runner->ctx);
    if (n_prompt <= 0) return lp_error_set(err, LP_ERR_INVALID_ARG, "generate: empty prompt");
    if (n_prompt >= ctx)
        return lp_error_set(err, LP_ERR_INVALID_ARG,
                            "generate: the prompt has %d tokens, the context limit is %d: "
                            "shorten the prompt or raise --ctx",
                            n_prompt, ctx);
    if (params->max_new_tokens < 0)
        return lp_error_set(err, LP_ERR_INVALID_ARG, "generate: max_new_tokens %d < 0",
                            params->max_new_tokens);
    int V = r->vocab_size(runner->ctx);
    int n_total = n_prompt + params->max_new_tokens;
    if (n_total > ctx) n_total = ctx;
    int32_t *tokens = malloc((size_t)(n_total + 1) * sizeof *tokens);
    float *logits = malloc((size_t)V * sizeof *logits);
    struct lp_sampler *sampler = NULL;
    int seq = -1;
    enum lp_status st = LP_OK;
    if (!tokens || !logits) {
        st = lp_error_set(err, LP_ERR_NOMEM, "generate: out of memory");
        goto done;
    }
    for (int i = 0; i < n_prompt; i++) tokens[i] = prompt[i];
    if ((st = lp_sampler_create(&sampler, &params->sampling, V, err)) != LP_OK) goto done;
    if ((st = r->seq_open(runner->ctx, &seq, err)) != LP_OK) goto done;
    double t0 = now_seconds();
    if ((st = r->step(runner->ctx, seq, 0, prompt, n_prompt, false, logits, err)) != LP_OK)
        goto done;
    double t1 = now_seconds();
    result->prefill_seconds = t1 - t0;
    int n = n_prompt;
    for (;;) {
        if (result->n_generated >= params->max_new_tokens) {
            result->stop = LP_STOP_LENGTH;
            break;
        }
        int32_t next = lp_sampler_sample(sampler, logits, tokens, n);
        if (!params->ignore_eos && is_eos(c, next)) {
            result->stop = LP_STOP_EOS;
            break;
        }
        tokens[n++] = next;
        result->n_generated++;
        if (on_token && on_token(user, next)) {
            result->stop = LP_STOP_CALLBACK;
            break;
        }
        if (result->n_generated >= params->max_new_tokens) {
            result->stop = LP_STOP_LENGTH;
            break;
        }
        if (n >= ctx) {
            result->stop = LP_STOP_CONTEXT;
            break;
        }
        st = r->step(runner->ctx, seq, n - 1, &tokens[n - 1], 1, false, logits, err);
        if (st != LP_OK) goto done;
    }
    result->decode_seconds = now_seconds() - t1;
done:
    if (seq >= 0) r->seq_close(runner->ctx, seq);
    lp_sampler_destroy(sampler);
    free(tokens);
    free(logits);
    return st;
}
