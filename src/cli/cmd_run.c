// SPDX-License-Identifier: MIT
// cmd_run.c -- `layerpipe run`: generate from a prompt given as token ids
// (--prompt-ids), as text (-p), or as a chat turn (--chat, with the model's
// chat template). Text streams to stdout as it is generated, whole UTF-8
// characters only, stopping before any --stop string; with --prompt-ids
// and no tokenizer the ids stream instead. --print-ids prints the generated
// ids on one line at the end. Timing and the stop reason go to stderr.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "cli/session.h"
#include "layerpipe/api.h"
#include "layerpipe/tokenizer.h"

struct run_out {
    bool print_ids;         // collect ids, print them at the end
    int32_t *ids;
    int n;
    struct lp_text *text;   // NULL: stream ids, not text
};

static void emit(struct run_out *o, const char *s, size_t n) {
    if (o->print_ids || n == 0) return;
    fwrite(s, 1, n, stdout);
    fflush(stdout);
}

// Each generated token: text (whole UTF-8 characters, held back while it
// may be the start of a stop string) or its id; true ends the request.
static bool on_event(void *user, const struct lp_sched_event *ev) {
    struct run_out *o = user;
    if (ev->kind != LP_SCHED_EV_TOKEN) return false;
    o->ids[o->n++] = ev->token;
    if (!o->text) {
        if (!o->print_ids) {
            printf("%d ", ev->token);
            fflush(stdout);
        }
        return false;
    }
    struct lp_text_delta d;
    if (lp_text_push(o->text, ev->token, &d, NULL) != LP_OK) return false;
    emit(o, d.content, d.n_content);
    return d.stopped;
}

// Renders --chat/--system with the chat template, or takes -p as is, and
// encodes it. Returns false (message printed) on failure.
static bool encode_prompt(const struct lp_tokenizer *tok, const char *text, const char *chat,
                          const char *system, bool no_think, int32_t **ids, int *n) {
    struct lp_error err = {0};
    struct lp_token_list list;
    lp_token_list_init(&list);
    enum lp_status st;
    if (chat) {
        struct lp_chat_message msgs[2];
        size_t k = 0;
        if (system) msgs[k++] = (struct lp_chat_message){.role = "system", .content = system};
        msgs[k++] = (struct lp_chat_message){.role = "user", .content = chat};
        struct lp_chat_options opt = lp_chat_options_default();
        opt.enable_thinking = !no_think;
        st = lp_text_prompt_chat(tok, msgs, k, &opt, &list, &err);
    } else {
        st = lp_text_prompt_plain(tok, text, strlen(text), &list, &err);
    }
    if (st != LP_OK) {
        fprintf(stderr, "layerpipe run: prompt: %s\n", err.msg);
        lp_token_list_deinit(&list);
        return false;
    }
    *ids = list.ids; // taken: freed with free()
    *n = (int)list.n_ids;
    return true;
}

int lp_cli_run(int argc, char **argv) {
    struct lp_cli_session_opts so = {.kv_dtype = "f32"};
    char *prompt_ids = NULL, *prompt = NULL, *chat = NULL, *system = NULL;
    struct lp_arg_list stops = {0};
    int n_gen = 128;
    float temp = -1, top_p = -1, min_p = -1, rep = -1, presence = 0, frequency = 0;
    int top_k = -1, last_n = 64;
    uint64_t seed = 0;
    bool print_ids = false, ignore_eos = false, no_think = false;
    struct lp_arg args[] = {
        {"model", 'm', LP_ARG_STR, &so.model_dir, "DIR", "model folder (config.json, *.safetensors)",
         true},
        {"prompt", 'p', LP_ARG_STR, &prompt, "TEXT", "prompt text (encoded as is)"},
        {"chat", 0, LP_ARG_STR, &chat, "TEXT", "a user message, rendered with the chat template"},
        {"system", 0, LP_ARG_STR, &system, "TEXT", "system message for --chat"},
        {"no-think", 0, LP_ARG_FLAG, &no_think, NULL, "--chat with thinking disabled"},
        {"prompt-ids", 0, LP_ARG_STR, &prompt_ids, "\"ID ID ...\"", "prompt as token ids"},
        {"stop", 0, LP_ARG_LIST, &stops, "S", "stop before this text (repeatable)"},
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
        {"ignore-eos", 0, LP_ARG_FLAG, &ignore_eos, NULL, "do not stop at end-of-sequence tokens"},
        {"print-ids", 0, LP_ARG_FLAG, &print_ids, NULL,
         "print the generated ids on one line at the end"},
        LP_CLI_COMMON_ARGS(so),
    };
    enum lp_args_result ar =
        lp_args_parse("run", "Generate text from a prompt, in this process or as the coordinator of a pipeline\n"
        "of stage workers (--workers / --cluster).",
                      args, (int)(sizeof args / sizeof args[0]), argc, argv, NULL, 0, NULL);
    if (ar != LP_ARGS_OK) return ar == LP_ARGS_HELP ? 0 : 2;
    if ((prompt_ids != NULL) + (prompt != NULL) + (chat != NULL) != 1) {
        fprintf(stderr, "layerpipe run: give exactly one of --prompt-ids, -p/--prompt, --chat\n");
        return 2;
    }
    if ((system || no_think) && !chat) {
        fprintf(stderr, "layerpipe run: --system and --no-think go with --chat\n");
        return 2;
    }
    int rc = 1;
    struct lp_error err = {0};
    struct lp_tokenizer *tok = NULL;
    struct lp_cli_session s = {0};
    struct run_out out = {.print_ids = print_ids};
    int32_t *ids = NULL;
    int n_prompt = 0;
    // A tokenizer is needed for text in, and used for text out when present.
    bool need_tok = prompt || chat || stops.n > 0;
    if (lp_tokenizer_load(&tok, so.model_dir, &err) != LP_OK) {
        if (need_tok) {
            fprintf(stderr, "layerpipe run: %s\n", err.msg);
            goto done;
        }
        tok = NULL; // ids in, ids out
    }
    if (prompt_ids) {
        if (!lp_args_parse_ids(prompt_ids, "--prompt-ids", &ids, &n_prompt)) {
            rc = 2;
            goto done;
        }
    } else if (!encode_prompt(tok, prompt, chat, system, no_think, &ids, &n_prompt)) {
        goto done;
    }
    struct lp_text_params tp = lp_text_params_default();
    tp.stops = (const char *const *)stops.items;
    tp.n_stops = stops.n;
    if (tok && (!print_ids || stops.n > 0) && lp_text_create(&out.text, tok, &tp, &err) != LP_OK) {
        fprintf(stderr, "layerpipe run: %s%s\n", stops.n > 0 ? "--stop: " : "", err.msg);
        rc = 2;
        goto done;
    }
    so.max_seqs = 1;
    if (!lp_cli_session_open(&s, &so, "run")) goto done;
    int vocab = lp_model_config(s.model)->vocab_size;
    for (int i = 0; i < n_prompt; i++) {
        if (ids[i] >= vocab) {
            fprintf(stderr, "layerpipe run: prompt id %d is outside the vocabulary (0..%d)\n",
                    ids[i], vocab - 1);
            rc = 2;
            goto done;
        }
    }
    struct lp_sched_request rq = {.prompt = ids, .n_prompt = n_prompt, .max_new_tokens = n_gen,
                                  .ignore_eos = ignore_eos, .on_event = on_event, .user = &out};
    rq.sampling = lp_sampler_params_from_model(s.model);
    if (temp >= 0) rq.sampling.temperature = temp;
    if (top_k >= 0) rq.sampling.top_k = top_k;
    if (top_p >= 0) rq.sampling.top_p = top_p;
    if (min_p >= 0) rq.sampling.min_p = min_p;
    if (rep > 0) rq.sampling.repetition_penalty = rep;
    rq.sampling.presence_penalty = presence;
    rq.sampling.frequency_penalty = frequency;
    rq.sampling.penalty_last_n = last_n;
    rq.sampling.seed = seed;
    out.ids = malloc(((size_t)n_gen + 1) * sizeof *out.ids);
    if (!out.ids) {
        fprintf(stderr, "layerpipe run: out of memory\n");
        goto done;
    }
    struct lp_sched_event res;
    if (lp_sched_run(s.sched, &rq, &res, &err) != LP_OK) {
        fprintf(stderr, "\nlayerpipe run: %s\n", err.msg);
        goto done;
    }
    double t_first = res.first_token_at > 0 ? res.first_token_at : res.time;
    double prefill_s = t_first - res.submitted_at, decode_s = res.time - t_first;
    if (out.text) { // what the decoder and the stop filter still hold
        struct lp_text_delta d;
        if (lp_text_finish(out.text, &d, NULL) == LP_OK) emit(&out, d.content, d.n_content);
    }
    if (print_ids)
        for (int i = 0; i < out.n; i++) printf(i ? " %d" : "%d", out.ids[i]);
    printf("\n");
    fflush(stdout);
    fprintf(stderr,
            "prefill: %d tokens in %.3f s (%.1f tok/s); decode: %d tokens in %.3f s (%.1f tok/s); "
            "stop: %s\n",
            res.n_prompt, prefill_s, prefill_s > 0 ? res.n_prompt / prefill_s : 0.0,
            res.n_generated, decode_s,
            decode_s > 0 && res.n_generated > 1 ? (res.n_generated - 1) / decode_s : 0.0,
            out.text && lp_text_stopped(out.text) ? "stop string" : lp_stop_reason_str(res.stop));
    if (res.stop == LP_STOP_CONTEXT)
        fprintf(stderr, "layerpipe run: stopped at the context limit of %d tokens (raise --ctx)\n",
                lp_pipeline_max_context(s.pipeline));
    if (so.stats) lp_cli_session_print_stats(&s, stderr);
    rc = 0;
done:
    free(out.ids);
    free(ids);
    lp_text_destroy(out.text);
    lp_cli_session_close(&s);
    lp_tokenizer_destroy(tok);
    return rc;
}
