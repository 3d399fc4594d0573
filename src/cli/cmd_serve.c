// SPDX-License-Identifier: MIT
// cmd_serve.c -- `layerpipe serve`: the OpenAI-compatible HTTP server over
// one process or a pipeline of stage workers (the common model options),
// until SIGINT or SIGTERM. One line per request goes to stderr. The
// signals are blocked in every thread and taken by sigwait here, so a
// Ctrl-C shuts down in order: HTTP first, then the scheduler, then the
// pipeline.
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "cli/session.h"
#include "layerpipe/api.h"

static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;

static void log_line(void *user, const char *line) {
    (void)user;
    pthread_mutex_lock(&log_mu);
    fprintf(stderr, "serve: %s\n", line);
    fflush(stderr);
    pthread_mutex_unlock(&log_mu);
}

// The last component of the model folder ("models/foo/" -> "foo").
static void folder_name(const char *dir, char *out, size_t cap) {
    size_t n = strlen(dir);
    while (n > 1 && dir[n - 1] == '/')
        n--;
    size_t b = n;
    while (b > 0 && dir[b - 1] != '/')
        b--;
    snprintf(out, cap, "%.*s", (int)(n - b), dir + b);
}

static bool write_port_file(const char *path, int port) {
    FILE *f = fopen(path, "w");
    if (!f) return false;
    bool ok = fprintf(f, "%d\n", port) > 0;
    return fclose(f) == 0 && ok;
}

static const char summary[] =
    "Serve the model over an OpenAI-compatible HTTP API: POST /v1/chat/completions and\n"
    "/v1/completions (streaming with stream: true), GET /v1/models, /health and /metrics\n"
    "(Prometheus). Many requests are decoded together; with --workers / --cluster this\n"
    "process is the coordinator of a pipeline of stage workers.\n\n"
    "  layerpipe serve -m models/layerpipe-tiny-8bit --listen 127.0.0.1:8080\n"
    "  curl http://127.0.0.1:8080/v1/chat/completions -H 'Content-Type: application/json' \\\n"
    "       -d '{\"messages\": [{\"role\": \"user\", \"content\": \"Hello\"}]}'";

int lp_cli_serve(int argc, char **argv) {
    struct lp_cli_session_opts so = {.kv_dtype = "f32", .max_seqs = 4};
    struct lp_server_params sp = lp_server_params_default();
    char *listen = NULL, *api_key = NULL, *model_name = NULL, *port_file = NULL;
    int max_body_kib = 4096;
    struct lp_arg args[] = {
        {"model", 'm', LP_ARG_STR, &so.model_dir, "DIR",
         "model folder (config.json, *.safetensors)", true},
        {"listen", 'l', LP_ARG_STR, &listen, "HOST:PORT",
         "address to serve HTTP on (default 127.0.0.1:8080; port 0: any free port)"},
        {"api-key", 0, LP_ARG_STR, &api_key, "KEY",
         "require 'Authorization: Bearer KEY' on /v1/* (default: $LAYERPIPE_API_KEY, or none)"},
        {"model-name", 0, LP_ARG_STR, &model_name, "NAME",
         "model id clients name in requests (default: the model folder's name)"},
        {"max-seqs", 0, LP_ARG_INT, &so.max_seqs, "N",
         "requests generating at once; more wait in a queue (default 4)", false, 1, 4096},
        {"max-waiting", 0, LP_ARG_INT, &so.max_waiting, "N",
         "requests queued beyond --max-seqs; past it 429 (default 64)", false, 1, 1 << 20},
        {"max-body", 0, LP_ARG_INT, &max_body_kib, "KIB",
         "largest request body, in KiB (default 4096); larger gets 413", false, 1, 1 << 20},
        {"port-file", 0, LP_ARG_STR, &port_file, "FILE",
         "write the port served on to FILE once listening (for scripts and tests)"},
        LP_CLI_COMMON_ARGS(so),
    };
    enum lp_args_result ar = lp_args_parse(
        "serve", summary, args, (int)(sizeof args / sizeof args[0]), argc, argv, NULL, 0, NULL);
    if (ar != LP_ARGS_OK) return ar == LP_ARGS_HELP ? 0 : 2;
    if (!api_key) api_key = getenv("LAYERPIPE_API_KEY");
    char default_name[256];
    if (!model_name) {
        folder_name(so.model_dir, default_name, sizeof default_name);
        model_name = default_name;
    }
    // Block the shutdown signals before any thread starts; sigwait takes them.
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    int rc = 1;
    struct lp_error err = {0};
    struct lp_tokenizer *tok = NULL;
    struct lp_cli_session s = {0};
    struct lp_server *srv = NULL;
    if (lp_tokenizer_load(&tok, so.model_dir, &err) != LP_OK) {
        fprintf(stderr, "layerpipe serve: %s (serve needs the model's tokenizer)\n", err.msg);
        goto done;
    }
    if (!lp_cli_session_open(&s, &so, "serve")) goto done;
    sp.listen = listen ? listen : "127.0.0.1:8080";
    sp.api_key = api_key;
    sp.model_name = model_name;
    sp.max_body_bytes = (size_t)max_body_kib << 10;
    sp.log = log_line;
    if (lp_server_create(&srv, s.sched, tok, s.model, &sp, &err) != LP_OK) {
        fprintf(stderr, "layerpipe serve: %s\n", err.msg);
        goto done;
    }
    const char *colon = strrchr(sp.listen, ':');
    fprintf(stderr,
            "layerpipe serve: model '%s' (%s), context %d, listening on http://%.*s:%d/v1%s\n",
            model_name, s.device, lp_pipeline_max_context(s.pipeline),
            (int)(colon ? colon - sp.listen : 0), sp.listen, lp_server_port(srv),
            api_key ? " (API key required)" : "");
    if (port_file && !write_port_file(port_file, lp_server_port(srv))) {
        fprintf(stderr, "layerpipe serve: cannot write --port-file %s\n", port_file);
        goto done;
    }
    int sig = 0;
    sigwait(&sigs, &sig);
    fprintf(stderr, "layerpipe serve: %s, shutting down\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
    rc = 0;
done:
    lp_server_destroy(srv);
    if (rc == 0 && so.stats) lp_cli_session_print_stats(&s, stderr);
    lp_cli_session_close(&s);
    lp_tokenizer_destroy(tok);
    return rc;
}
