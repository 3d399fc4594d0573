// SPDX-License-Identifier: MIT
// cmd_bench.c -- `layerpipe bench`: prefill and decode speed through the
// scheduler (one process or a pipeline). Prefill runs prompts of random ids
// in chunks of --batch; decode runs --concurrency sequences together, one
// token each per step. decode_gb_s is the weight bytes a step reads (every
// matrix once) times steps per second.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "cli/session.h"

struct bench_wait {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int n_left;                      // requests not done
    enum lp_status status;
    char error[LP_ERROR_MSG_BYTES];
    double first_max, first_min, end; // lp_sched_now times
};

static bool on_event(void *user, const struct lp_sched_event *ev) {
    struct bench_wait *w = user;
    if (ev->kind != LP_SCHED_EV_DONE) return false;
    pthread_mutex_lock(&w->mu);
    if (ev->status != LP_OK && w->status == LP_OK) {
        w->status = ev->status;
        snprintf(w->error, sizeof w->error, "%s", ev->error ? ev->error : "");
    }
    if (ev->first_token_at > w->first_max) w->first_max = ev->first_token_at;
    if (w->first_min == 0 || ev->first_token_at < w->first_min) w->first_min = ev->first_token_at;
    if (ev->time > w->end) w->end = ev->time;
    w->n_left--;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    return false;
}

// n_seqs requests of n_prompt random ids and n_gen tokens each, at once.
// Prefill: until the first token of the first request (n_seqs == 1: the
// prompt's time); decode: tokens after the last first token per second.
static bool bench_once(struct lp_cli_session *s, const int32_t *ids, int n_prompt, int n_gen,
                       int n_seqs, double *prefill_tok_s, double *decode_tok_s) {
    struct bench_wait w = {.n_left = n_seqs};
    pthread_mutex_init(&w.mu, NULL);
    pthread_cond_init(&w.cv, NULL);
    struct lp_sched_request rq = {.n_prompt = n_prompt, .max_new_tokens = n_gen,
                                  .ignore_eos = true, .sampling = lp_sampler_params_default(),
                                  .on_event = on_event, .user = &w};
    struct lp_error err = {0};
    double t0 = lp_sched_now();
    int submitted = 0;
    for (int i = 0; i < n_seqs; i++) {
        uint64_t id;
        rq.prompt = ids + (size_t)i * (size_t)n_prompt;
        if (lp_sched_submit(s->sched, &rq, &id, &err) != LP_OK) break;
        submitted++;
    }
    pthread_mutex_lock(&w.mu);
    w.n_left -= n_seqs - submitted;
    while (w.n_left > 0) pthread_cond_wait(&w.cv, &w.mu);
    pthread_mutex_unlock(&w.mu);
    pthread_cond_destroy(&w.cv);
    pthread_mutex_destroy(&w.mu);
    if (submitted < n_seqs || w.status != LP_OK) {
        fprintf(stderr, "layerpipe bench: %s\n", submitted < n_seqs ? err.msg : w.error);
        return false;
    }
    *prefill_tok_s = (double)n_prompt * n_seqs / (w.first_max - t0);
    double dt = w.end - w.first_max;
    *decode_tok_s = dt > 0 ? (double)(n_gen - 1) * n_seqs / dt : 0.0;
    return true;
}

int lp_cli_bench(int argc, char **argv) {
    struct lp_cli_session_opts so = {.kv_dtype = "f32"};
    int n_prompt = 128, n_gen = 32, reps = 3, n_seqs = 1;
    bool json = false;
    struct lp_arg args[] = {
        {"model", 'm', LP_ARG_STR, &so.model_dir, "DIR", "model folder", true},
        {"n-prompt", 'p', LP_ARG_INT, &n_prompt, "N", "prompt tokens (default 128)", false, 1,
         1 << 20},
        {"n-gen", 'n', LP_ARG_INT, &n_gen, "N", "generated tokens (default 32)", false, 1,
         1 << 20},
        {"reps", 'r', LP_ARG_INT, &reps, "N", "repetitions, the best is reported (default 3)",
         false, 1, 1000},
        {"concurrency", 'C', LP_ARG_INT, &n_seqs, "N",
         "N sequences at once, decoded together (default 1)", false, 1, 4096},
        {"fast", 0, LP_ARG_FLAG, &so.fast, NULL,
         "measure int8 activations for 8-bit MLX weights and GGUF blocks (experimental: not "
         "accurate enough for run/logits)"},
        {"json", 0, LP_ARG_FLAG, &json, NULL, "end with one JSON line of results"},
        LP_CLI_COMMON_ARGS(so),
    };
    enum lp_args_result ar =
        lp_args_parse("bench", "Measure prefill and decode speed, in this process or through a pipeline (--workers).",
                      args, (int)(sizeof args / sizeof args[0]), argc, argv, NULL, 0, NULL);
    if (ar != LP_ARGS_OK) return ar == LP_ARGS_HELP ? 0 : 2;
    if (n_gen < 2) n_gen = 2; // decode speed needs two tokens
    so.max_seqs = n_seqs;
    so.ctx = n_prompt + n_gen;
    struct lp_cli_session s;
    if (!lp_cli_session_open(&s, &so, "bench")) return 1;
    int rc = 0;
    int vocab = lp_model_config(s.model)->vocab_size;
    size_t n_ids = (size_t)n_prompt * (size_t)n_seqs;
    int32_t *ids = malloc(n_ids * sizeof *ids);
    if (!ids) {
        fprintf(stderr, "layerpipe bench: out of memory\n");
        rc = 1;
        goto done;
    }
    uint64_t x = 12345;
    for (size_t i = 0; i < n_ids; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        ids[i] = (int32_t)((x >> 33) % (uint64_t)vocab);
    }
    double pre = 0, dec = 0;
    fprintf(stderr, "bench: %s, %s, prompt %d, gen %d, %d sequence%s, %d reps\n", so.model_dir,
            s.device, n_prompt, n_gen, n_seqs, n_seqs > 1 ? "s" : "", reps);
    for (int r = 0; r < reps; r++) {
        double tp, td;
        if (!bench_once(&s, ids, n_prompt, n_gen, n_seqs, &tp, &td)) {
            rc = 1;
            goto done;
        }
        fprintf(stderr, "  rep %d: prefill %.1f tok/s, decode %.2f tok/s\n", r + 1, tp, td);
        if (tp > pre) pre = tp;
        if (td > dec) dec = td;
    }
    double wb = (double)s.weight_bytes, steps = dec / n_seqs; // decode steps per second
    printf("prefill: %.1f tok/s\ndecode: %.2f tok/s, %.2f GB/s of weights (%.3f GB per step of "
           "%d sequence%s)\n",
           pre, dec, steps * wb / 1e9, wb / 1e9, n_seqs, n_seqs > 1 ? "s" : "");
    if (json)
        printf("{\"model\": \"%s\", \"device\": \"%s\", \"fast\": %s, "
               "\"n_prompt\": %d, \"n_gen\": %d, \"concurrency\": %d, \"prefill_tok_s\": %.3f, "
               "\"decode_tok_s\": %.3f, \"decode_gb_s\": %.3f, \"weight_bytes\": %.0f}\n",
               so.model_dir, s.device, so.fast ? "true" : "false", n_prompt, n_gen, n_seqs, pre,
               dec, steps * wb / 1e9, wb);
    if (so.stats) lp_cli_session_print_stats(&s, stderr);
done:
    free(ids);
    lp_cli_session_close(&s);
    return rc;
}
