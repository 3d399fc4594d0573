// SPDX-License-Identifier: MIT
// cmd_run.c -- `layerpipe run`: generate from a prompt of token ids in one
// process. Generated ids stream to stdout (or print on one line at the end
// with --print-ids); timing and the stop reason go to stderr.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "cli/session.h"

struct run_out {
    bool print_ids; // collect, print at the end
    int32_t *ids;
    int n;
};

static bool on_token(void *user, int32_t token) {
    struct run_out *o = user;
    if (o->print_ids) {
        o->ids[o->n++] = token;
    } else {
        printf("%d ", token);
        fflush(stdout);
    }
    return false;
}

int lp_cli_run(int argc, char **argv) {
    struct lp_cli_session_opts so = {.kv_dtype = "f32"};
    char *prompt_ids = NULL;
    int n_gen = 128;
    float temp = -1, top_p = -1, min_p = -1, rep = -1, presence = 0, frequency = 0;
    int top_k = -1, last_n = 64;
    uint64_t seed = 0;
    bool print_ids = false, ignore_eos = false;
    struct lp_arg args[] = {
        {"model", 'm', LP_ARG_STR, &so.model_dir, "DIR", "model folder (config.json, *.safetensors)",
         true},
        {"prompt-ids", 0, LP_ARG_STR, &prompt_ids, "\"ID ID ...\"", "prompt as token ids", true},
        {"n-predict", 'n', LP_ARG_INT, &n_gen, "N", "tokens to generate (default 128)", false, 0,
         1 << 24},
        {"temp", 0, LP_ARG_FLOAT, &temp, "T",
         "temperature, 0 = greedy (default: generation_config.json)", false, 0, 100},
        {"top-k", 0, LP_ARG_INT, &top_k, "K", "keep the K most likely tokens, 0 = off", false, 0,
         1 << 30},
        {"top-p", 0, LP_ARG_FLOAT, &top_p, "P", "nucleus sampling mass, 1 = off", false, 0, 1},
        {"min-p", 0, LP_ARG_FLOAT, &min_p, "P", "drop tokens below P x the top probability",
         false, 0, 1},
        {"repeat-penalty", 0, LP_ARG_FLOAT, &rep, "F", "repetition penalty, 1 = off", false, 0.01,
         100},
        {"presence-penalty", 0, LP_ARG_FLOAT, &presence, "F", "presence penalty, 0 = off", false,
         -10, 10},
        {"frequency-penalty", 0, LP_ARG_FLOAT, &frequency, "F", "frequency penalty, 0 = off",
         false, -10, 10},
        {"penalty-last-n", 0, LP_ARG_INT, &last_n, "N",
         "history the penalties see (default 64, -1 = all)", false, -1, 1 << 30},
        {"seed", 0, LP_ARG_U64, &seed, "S", "random seed (default 0)"},
        {"threads", 't', LP_ARG_INT, &so.threads, "N", "CPU threads (default: all cores)", false,
         0, 1024},
        {"ctx", 'c', LP_ARG_INT, &so.ctx, "N", "context limit (default: the model's)", false, 0,
         1 << 24},
        {"batch", 'b', LP_ARG_INT, &so.batch, "N", "prompt tokens per forward pass (default 256)",
         false, 1, 1 << 16},
        {"kv-dtype", 0, LP_ARG_STR, &so.kv_dtype, "f32|bf16", "KV cache type (default f32)"},
        {"ignore-eos", 0, LP_ARG_FLAG, &ignore_eos, NULL, "do not stop at end-of-sequence tokens"},
        {"print-ids", 0, LP_ARG_FLAG, &print_ids, NULL,
         "print the generated ids on one line at the end"},
    };
    enum lp_args_result ar =
        lp_args_parse("run", "Generate tokens from a prompt with the whole model in this process.",
                      args, (int)(sizeof args / sizeof args[0]), argc, argv, NULL, 0, NULL);
    if (ar != LP_ARGS_OK) return ar == LP_ARGS_HELP ? 0 : 2;
    int32_t *prompt = NULL;
    int n_prompt = 0;
    if (!lp_args_parse_ids(prompt_ids, "--prompt-ids", &prompt, &n_prompt)) return 2;
    struct lp_cli_session s;
    so.max_seqs = 1;
    if (!lp_cli_session_open(&s, &so, "run")) {
        free(prompt);
        return 1;
    }
    int rc = 0;
    struct lp_generate_params gp = {.max_new_tokens = n_gen, .ignore_eos = ignore_eos};
    gp.sampling = lp_sampler_params_from_model(s.model);
    if (temp >= 0) gp.sampling.temperature = temp;
    if (top_k >= 0) gp.sampling.top_k = top_k;
    if (top_p >= 0) gp.sampling.top_p = top_p;
    if (min_p >= 0) gp.sampling.min_p = min_p;
    if (rep > 0) gp.sampling.repetition_penalty = rep;
    gp.sampling.presence_penalty = presence;
    gp.sampling.frequency_penalty = frequency;
    gp.sampling.penalty_last_n = last_n;
    gp.sampling.seed = seed;
    struct run_out out = {.print_ids = print_ids, .ids = malloc(((size_t)n_gen + 1) * 4)};
    struct lp_generate_result res;
    struct lp_error err = {0};
    int vocab = lp_model_config(s.model)->vocab_size;
    for (int i = 0; i < n_prompt; i++) {
        if (prompt[i] >= vocab) {
            fprintf(stderr, "layerpipe run: --prompt-ids: id %d is outside the vocabulary (0..%d)\n",
                    prompt[i], vocab - 1);
            rc = 2;
            goto done;
        }
    }
    if (!out.ids) {
        fprintf(stderr, "layerpipe run: out of memory\n");
        rc = 1;
        goto done;
    }
    if (lp_generate(&s.runner, lp_model_config(s.model), prompt, n_prompt, &gp, on_token, &out,
                    &res, &err) != LP_OK) {
        fprintf(stderr, "\nlayerpipe run: %s\n", err.msg);
        rc = 1;
        goto done;
    }
    if (print_ids) {
        for (int i = 0; i < out.n; i++) printf(i ? " %d" : "%d", out.ids[i]);
    }
    printf("\n");
    fflush(stdout);
    fprintf(stderr,
            "prefill: %d tokens in %.3f s (%.1f tok/s); decode: %d tokens in %.3f s (%.1f tok/s); "
            "stop: %s\n",
            res.n_prompt, res.prefill_seconds,
            res.prefill_seconds > 0 ? res.n_prompt / res.prefill_seconds : 0.0, res.n_generated,
            res.decode_seconds,
            res.decode_seconds > 0 ? (res.n_generated - 1 > 0 ? res.n_generated - 1 : 0) /
                                         res.decode_seconds
                                   : 0.0,
            lp_stop_reason_str(res.stop));
    if (res.stop == LP_STOP_CONTEXT)
        fprintf(stderr, "layerpipe run: stopped at the context limit of %d tokens (raise --ctx)\n",
                s.runner.iface.max_context(s.runner.ctx));
done:
    free(out.ids);
    free(prompt);
    lp_cli_session_close(&s);
    return rc;
}
