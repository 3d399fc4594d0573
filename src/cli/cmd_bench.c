// SPDX-License-Identifier: MIT
// cmd_bench.c -- `layerpipe bench`: prefill and decode speed of one process
// on a model. Prefill runs a prompt of random ids in chunks of --batch;
// decode runs single-token steps. decode_gb_s is the weight bytes a step
// reads (every loaded matrix once) times steps per second.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "cli/session.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

// Prefills n_prompt tokens then decodes n_gen; returns false on error.
static bool bench_once(struct lp_cli_session *s, const int32_t *ids, int n_prompt, int n_gen,
                       float *logits, double *t_prefill, double *t_decode) {
    struct lp_error err = {0};
    const struct lp_runner *r = &s->runner;
    int seq = -1;
    if (r->iface.seq_open(r->ctx, &seq, &err) != LP_OK) goto fail;
    double t0 = now_s();
    if (r->iface.step(r->ctx, seq, 0, ids, n_prompt, false, logits, &err) != LP_OK) goto fail;
    double t1 = now_s();
    for (int i = 0; i < n_gen; i++) {
        const int32_t *tok = ids + n_prompt + i;
        if (r->iface.step(r->ctx, seq, n_prompt + i, tok, 1, false, logits, &err) != LP_OK)
            goto fail;
    }
    double t2 = now_s();
    r->iface.seq_close(r->ctx, seq);
    *t_prefill = t1 - t0;
    *t_decode = t2 - t1;
    return true;
fail:
    fprintf(stderr, "layerpipe bench: %s\n", err.msg);
    if (seq >= 0) r->iface.seq_close(r->ctx, seq);
    return false;
}

int lp_cli_bench(int argc, char **argv) {
    struct lp_cli_session_opts so = {.kv_dtype = "f32"};
    int n_prompt = 128, n_gen = 32, reps = 3;
    bool json = false;
    struct lp_arg args[] = {
        {"model", 'm', LP_ARG_STR, &so.model_dir, "DIR", "model folder", true},
        {"n-prompt", 'p', LP_ARG_INT, &n_prompt, "N", "prompt tokens (default 128)", false, 1,
         1 << 20},
        {"n-gen", 'n', LP_ARG_INT, &n_gen, "N", "generated tokens (default 32)", false, 1,
         1 << 20},
        {"reps", 'r', LP_ARG_INT, &reps, "N", "repetitions, the best is reported (default 3)",
         false, 1, 1000},
        {"fast", 0, LP_ARG_FLAG, &so.fast, NULL,
         "measure int8 activations for 8-bit MLX weights (experimental: not accurate enough "
         "for run/logits)"},
        {"json", 0, LP_ARG_FLAG, &json, NULL, "end with one JSON line of results"},
        LP_CLI_COMMON_ARGS(so),
    };
    enum lp_args_result ar =
        lp_args_parse("bench", "Measure prefill and decode speed, in this process or through a pipeline (--workers).",
                      args, (int)(sizeof args / sizeof args[0]), argc, argv, NULL, 0, NULL);
    if (ar != LP_ARGS_OK) return ar == LP_ARGS_HELP ? 0 : 2;
    so.max_seqs = 1;
    so.ctx = n_prompt + n_gen;
    struct lp_cli_session s;
    if (!lp_cli_session_open(&s, &so, "bench")) return 1;
    int rc = 0;
    int vocab = lp_model_config(s.model)->vocab_size;
    int32_t *ids = malloc((size_t)(n_prompt + n_gen) * sizeof *ids);
    float *logits = malloc((size_t)vocab * sizeof *logits);
    if (!ids || !logits) {
        fprintf(stderr, "layerpipe bench: out of memory\n");
        rc = 1;
        goto done;
    }
    uint64_t x = 12345;
    for (int i = 0; i < n_prompt + n_gen; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        ids[i] = (int32_t)((x >> 33) % (uint64_t)vocab);
    }
    double best_p = 1e30, best_d = 1e30;
    fprintf(stderr, "bench: %s, %s, prompt %d, gen %d, %d reps\n", so.model_dir, s.device,
            n_prompt, n_gen, reps);
    for (int r = 0; r < reps; r++) {
        double tp, td;
        if (!bench_once(&s, ids, n_prompt, n_gen, logits, &tp, &td)) {
            rc = 1;
            goto done;
        }
        fprintf(stderr, "  rep %d: prefill %.1f tok/s, decode %.2f tok/s\n", r + 1, n_prompt / tp,
                n_gen / td);
        if (tp < best_p) best_p = tp;
        if (td < best_d) best_d = td;
    }
    double wb = (double)s.weight_bytes;
    double pre = n_prompt / best_p, dec = n_gen / best_d;
    printf("prefill: %.1f tok/s\ndecode: %.2f tok/s, %.2f GB/s of weights (%.3f GB per token)\n",
           pre, dec, dec * wb / 1e9, wb / 1e9);
    if (json)
        printf("{\"model\": \"%s\", \"device\": \"%s\", \"fast\": %s, "
               "\"n_prompt\": %d, \"n_gen\": %d, \"prefill_tok_s\": %.3f, \"decode_tok_s\": "
               "%.3f, \"decode_gb_s\": %.3f, \"weight_bytes\": %.0f}\n",
               so.model_dir, s.device, so.fast ? "true" : "false", n_prompt, n_gen, pre, dec, dec * wb / 1e9, wb);
    if (so.stats) lp_cli_session_print_stats(&s, stderr);
done:
    free(ids);
    free(logits);
    lp_cli_session_close(&s);
    return rc;
}
