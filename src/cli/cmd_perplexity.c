// SPDX-License-Identifier: MIT
// cmd_perplexity.c -- `layerpipe perplexity`: perplexity of a model over a
// text file with sliding windows. The file is encoded whole; window k
// covers tokens [k*S, k*S + ctx) (S = stride, default ctx/2); every token
// from position 1 on is predicted exactly once, by the first window that
// holds it together with at least one token before it (window 0 scores
// positions 1..ctx-1, every later window its last S positions, the final
// window what is left). ppl = exp(mean negative log-likelihood). Special
// tokens written in the text (<|endoftext|> between documents) count as
// the special tokens, as HF tokenizers encode them.
// tools/perplexity_reference.py computes the same in PyTorch.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "cli/session.h"
#include "layerpipe/tokenizer.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

// -log softmax(row)[target], in double.
static double nll(const float *row, int vocab, int32_t target) {
    float mx = row[0];
    for (int i = 1; i < vocab; i++)
        if (row[i] > mx) mx = row[i];
    double sum = 0.0;
    for (int i = 0; i < vocab; i++) sum += exp((double)row[i] - mx);
    return log(sum) + mx - (double)row[target];
}

// One window's scoring: row r of the prompt logits predicts position b + r + 1.
struct ppl_window {
    const int32_t *ids;
    int b, e, last;   // window [b, e); positions <= last are already scored
    double nll;
    long scored;
};

static bool on_event(void *user, const struct lp_sched_event *ev) {
    struct ppl_window *w = user;
    if (ev->kind != LP_SCHED_EV_PROMPT_LOGITS) return false;
    for (int r = 0; r < ev->n_rows; r++) {
        int p = w->b + ev->pos0 + r + 1;
        if (p >= w->e || p <= w->last) continue;
        w->nll += nll(ev->logits + (size_t)r * (size_t)ev->vocab, ev->vocab, w->ids[p]);
        w->scored++;
    }
    return false;
}

int lp_cli_perplexity(int argc, char **argv) {
    struct lp_cli_session_opts so = {.kv_dtype = "f32"};
    char *file = NULL;
    int ctx = 512, stride = 0, max_tokens = 0;
    bool json = false;
    struct lp_arg args[] = {
        {"model", 'm', LP_ARG_STR, &so.model_dir, "DIR", "model folder (with tokenizer.json)",
         true},
        {"file", 'f', LP_ARG_STR, &file, "TEXT_FILE", "the text to score", true},
        {"window", 0, LP_ARG_INT, &ctx, "N", "tokens per window (default 512; --ctx N too)",
         false, 2, 1 << 20},
        {"stride", 0, LP_ARG_INT, &stride, "S", "window step (default window/2)", false, 1,
         1 << 20},
        {"max-tokens", 0, LP_ARG_INT, &max_tokens, "N", "score only the first N tokens", false,
         0, 1 << 30},
        {"json", 0, LP_ARG_FLAG, &json, NULL, "end with one JSON line of results"},
        LP_CLI_COMMON_ARGS(so),
    };
    enum lp_args_result ar = lp_args_parse(
        "perplexity",
        "Perplexity of the model over a text file, with sliding windows of --ctx (or --window)\n"
        "tokens moved by --stride; every token is scored once.",
        args,
        (int)(sizeof args / sizeof args[0]), argc, argv, NULL, 0, NULL);
    if (ar != LP_ARGS_OK) return ar == LP_ARGS_HELP ? 0 : 2;
    if (so.ctx > 0) ctx = so.ctx; // `perplexity --ctx N`: the window is the context
    if (ctx < 2) {
        fprintf(stderr, "layerpipe perplexity: the window must hold at least 2 tokens\n");
        return 2;
    }
    if (stride == 0) stride = ctx / 2 > 0 ? ctx / 2 : 1;
    if (stride > ctx - 1) stride = ctx - 1 > 0 ? ctx - 1 : 1;
    int rc = 1;
    struct lp_error err = {0};
    struct lp_tokenizer *tok = NULL;
    struct lp_token_list ids;
    lp_token_list_init(&ids);
    char *text = NULL;
    struct lp_cli_session s = {0};
    size_t n_text = 0;
    if (!(text = lp_cli_read_file("perplexity", file, &n_text))) goto done;
    if (lp_tokenizer_load(&tok, so.model_dir, &err) != LP_OK ||
        lp_tokenizer_encode(tok, text, n_text, 0, &ids, &err) !=
            LP_OK) {
        fprintf(stderr, "layerpipe perplexity: %s\n", err.msg);
        goto done;
    }
    int n = (int)ids.n_ids;
    if (max_tokens > 0 && n > max_tokens) n = max_tokens;
    if (n < 2) {
        fprintf(stderr, "layerpipe perplexity: %s has %d tokens, need at least 2\n", file, n);
        goto done;
    }
    if (ctx > n) ctx = n;
    so.max_seqs = 1;
    if (so.ctx == 0) so.ctx = ctx;
    if (!lp_cli_session_open(&s, &so, "perplexity")) goto done;
    if (ctx > lp_pipeline_max_context(s.pipeline)) {
        fprintf(stderr, "layerpipe perplexity: --window %d exceeds the context limit %d\n", ctx,
                lp_pipeline_max_context(s.pipeline));
        goto done;
    }
    int n_windows = 1 + (n > ctx ? (n - ctx + stride - 1) / stride : 0);
    fprintf(stderr, "perplexity: %s: %d tokens, %d windows of %d (stride %d)\n", file, n,
            n_windows, ctx, stride);
    double total_nll = 0.0, t0 = now_s();
    long scored = 0;
    int last = 0; // highest position scored so far
    for (int w = 0; w < n_windows; w++) {
        int b = w * stride, e = b + ctx < n ? b + ctx : n;
        struct ppl_window win = {.ids = ids.ids, .b = b, .e = e, .last = last};
        struct lp_sched_request rq = {.prompt = ids.ids + b, .n_prompt = e - b,
                                      .max_new_tokens = 0,
                                      .sampling = lp_sampler_params_default(),
                                      .prompt_logits = true, .on_event = on_event, .user = &win};
        if (lp_sched_run(s.sched, &rq, NULL, &err) != LP_OK) goto fail;
        total_nll += win.nll;
        scored += win.scored;
        last = e - 1;
        double dt = now_s() - t0;
        // progress: redrawn in place on a terminal, every 10% in a log
        bool tty = isatty(2);
        if (tty || (w + 1) * 10 / n_windows != w * 10 / n_windows || w + 1 == n_windows)
            fprintf(stderr, "%sperplexity: window %d/%d, %ld tokens scored, ppl %.4f, %.0f tok/s%s",
                    tty ? "\r" : "", w + 1, n_windows, scored, exp(total_nll / (double)scored),
                    dt > 0 ? (double)(e) / dt : 0.0, tty ? "   " : "\n");
    }
    if (isatty(2)) fprintf(stderr, "\n");
    double ppl = exp(total_nll / (double)scored);
    printf("perplexity: %.4f (mean NLL %.6f over %ld tokens; window %d, stride %d)\n", ppl,
           total_nll / (double)scored, scored, ctx, stride);
    if (json)
        printf("{\"perplexity\": %.6f, \"mean_nll\": %.8f, \"tokens_scored\": %ld, \"window\": %d, "
               "\"stride\": %d, \"tokens\": %d}\n",
               ppl, total_nll / (double)scored, scored, ctx, stride, n);
    rc = 0;
    goto done;
fail:
    fprintf(stderr, "\nlayerpipe perplexity: %s\n", err.msg);
done:
    lp_cli_session_close(&s);
    lp_token_list_deinit(&ids);
    lp_tokenizer_destroy(tok);
    free(text);
    return rc;
}
