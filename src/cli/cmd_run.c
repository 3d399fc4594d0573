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
#include "layerpipe/tokenizer.h"

struct run_out {
    bool print_ids;                // collect ids, print them at the end
    int32_t *ids;
    int n;
    struct lp_token_stream *text;  // NULL: stream ids, not text
    struct lp_stop_matcher *stops; // NULL without --stop
    bool stopped;                  // a stop string was seen
};

static void emit(struct run_out *o, const char *s, size_t n) {
    if (o->print_ids || n == 0) return;
    fwrite(s, 1, n, stdout);
    fflush(stdout);
}

static bool on_token(void *user, int32_t token) {
    struct run_out *o = user;
    o->ids[o->n++] = token;
    if (!o->text) {
        if (!o->print_ids) {
            printf("%d ", token);
            fflush(stdout);
        }
        return false;
    }
    const char *s;
    size_t n;
    if (lp_token_stream_push(o->text, token, &s, &n, NULL) != LP_OK) return false;
    if (o->stops) {
        const char *t;
        size_t m;
        o->stopped = lp_stop_matcher_push(o->stops, s, n, &t, &m);
        emit(o, t, m);
        return o->stopped;
    }
    emit(o, s, n);
    return false;
}

static bool on_event(void *user, const struct lp_sched_event *ev) {
    return ev->kind == LP_SCHED_EV_TOKEN ? on_token(user, ev->token) : false;
}

// Renders --chat/--system with the chat template, or takes -p as is, and
// encodes it. Returns false (message printed) on failure.
static bool encode_prompt(const struct lp_tokenizer *tok, const char *text, const char *chat,
                          const char *system, bool no_think, int32_t **ids, int *n) {
    struct lp_error err = {0};
    char *rendered = NULL;
    if (chat) {
        struct lp_chat_message msgs[2];
        size_t k = 0;
        if (system) msgs[k++] = (struct lp_chat_message){.role = "system", .content = system};
        msgs[k++] = (struct lp_chat_message){.role = "user", .content = chat};
        struct lp_chat_options opt = lp_chat_options_default();
        opt.enable_thinking = !no_think;
        if (lp_chat_render(msgs, k, &opt, &rendered, NULL, &err) != LP_OK) {
            fprintf(stderr, "layerpipe run: chat template: %s\n", err.msg);
            return false;
        }
        text = rendered;
    }
    struct lp_token_list list;
    lp_token_list_init(&list);
    enum lp_status st = lp_tokenizer_encode(tok, text, strlen(text), 0, &list, &err);
    free(rendered);
    if (st != LP_OK) {
        fprintf(stderr, "layerpipe run: prompt: %s\n", err.msg);
        lp_token_list_deinit(&list);
        return false;
    }
    if (list.n_ids == 0) {
        fprintf(stderr, "layerpipe run: the prompt encodes to no tokens\n");
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
    if (tok && !print_ids &&
        lp_token_stream_create(&out.text, tok, LP_DECODE_SKIP_SPECIAL, &err) != LP_OK) {
        fprintf(stderr, "layerpipe run: %s\n", err.msg);
        goto done;
    }
    if (stops.n > 0 && lp_stop_matcher_create(&out.stops, stops.items, stops.n, &err) != LP_OK) {
        fprintf(stderr, "layerpipe run: --stop: %s\n", err.msg);
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
    if (out.text && !out.stopped) { // what the decoder and the stop filter still hold
        const char *t;
        size_t n;
        lp_token_stream_flush(out.text, &t, &n);
        if (out.stops) {
            const char *u;
            size_t m;
            out.stopped = lp_stop_matcher_push(out.stops, t, n, &u, &m);
            emit(&out, u, m);
            if (!out.stopped) {
                lp_stop_matcher_flush(out.stops, &u, &m);
                emit(&out, u, m);
            }
        } else {
            emit(&out, t, n);
        }
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
            out.stopped ? "stop string" : lp_stop_reason_str(res.stop));
    if (res.stop == LP_STOP_CONTEXT)
        fprintf(stderr, "layerpipe run: stopped at the context limit of %d tokens (raise --ctx)\n",
                lp_pipeline_max_context(s.pipeline));
    if (so.stats) lp_cli_session_print_stats(&s, stderr);
    rc = 0;
done:
    free(out.ids);
    free(ids);
    lp_stop_matcher_destroy(out.stops);
    lp_token_stream_destroy(out.text);
    lp_cli_session_close(&s);
    lp_tokenizer_destroy(tok);
    return rc;
}
