// SPDX-License-Identifier: MIT
// cmd_worker.c -- `layerpipe worker`: serve one stage of a pipeline until
// SIGINT or SIGTERM. The coordinator decides the layers (Configure); the
// worker loads only those from its copy of the model.
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "cli/session.h"
#include "layerpipe/cluster.h"

static void worker_log(void *user, const char *line) {
    (void)user;
    fprintf(stderr, "layerpipe worker: %s\n", line);
}

// Loopback: "127.x.x.x:P", "localhost:P", "[::1]:P".
static bool is_loopback(const char *listen) {
    return strncmp(listen, "127.", 4) == 0 || strncmp(listen, "localhost:", 10) == 0 ||
           strncmp(listen, "[::1]:", 6) == 0;
}

int lp_cli_worker(int argc, char **argv) {
    struct lp_worker_params wp = lp_worker_params_default();
    char *model = NULL, *listen = NULL, *port_file = NULL, *device = NULL;
    int threads = 0, idle = 600;
    struct lp_cli_session_opts sec = {0}; // only its security fields
    struct lp_arg args[] = {
        {"model", 'm', LP_ARG_STR, &model, "DIR", "model folder (the same model as the coordinator)",
         true},
        {"listen", 'l', LP_ARG_STR, &listen, "HOST:PORT",
         "address to serve on (default 127.0.0.1:7070, loopback only; port 0 picks a free "
         "one). Another address opens the port to the network: secure it with --tls-* and "
         "--cluster-token-file"},
        {"device", 'd', LP_ARG_STR, &device, "SPEC",
         "where the stage computes: cpu (default), cuda, cuda:N"},
        {"threads", 't', LP_ARG_INT, &threads, "N", "CPU threads (default: all cores)", false, 0,
         1024},
        {"idle-timeout", 0, LP_ARG_INT, &idle, "S",
         "free a session unused this many seconds (default 600, 0 = never)", false, 0, 1 << 30},
        {"port-file", 0, LP_ARG_STR, &port_file, "FILE",
         "write the bound port to FILE once serving (for launchers)"},
        LP_CLI_SECURITY_ARGS(sec),
    };
    enum lp_args_result ar = lp_args_parse(
        "worker", "Serve one stage (a contiguous layer range) of a model to a coordinator.", args,
        (int)(sizeof args / sizeof args[0]), argc, argv, NULL, 0, NULL);
    if (ar != LP_ARGS_OK) return ar == LP_ARGS_HELP ? 0 : 2;
    wp.model_dir = model;
    if (listen) wp.listen = listen;
    if (device) wp.device = device;
    wp.n_threads = threads;
    wp.idle_timeout_s = idle;
    wp.security.tls_cert = sec.tls_cert;
    wp.security.tls_key = sec.tls_key;
    wp.security.tls_ca = sec.tls_ca;
    wp.security.token_file = sec.token_file;
    wp.security.health_open = sec.health_open;
    wp.security.log = worker_log;
    if (!is_loopback(wp.listen) && !(sec.tls_cert && sec.tls_ca && sec.token_file))
        fprintf(stderr,
                "layerpipe worker: WARNING: listening on %s %s: anyone who reaches this port "
                "can %s. Give --tls-cert, --tls-key, --tls-ca and --cluster-token-file (see "
                "`layerpipe certs`), or listen on 127.0.0.1.\n",
                wp.listen,
                !sec.tls_cert && !sec.token_file ? "without TLS or a cluster token"
                : !sec.token_file                ? "without a cluster token"
                : !sec.tls_cert                  ? "without TLS (the token travels in clear)"
                                                 : "without --tls-ca (clients are not verified)",
                !sec.token_file ? "configure this stage, read its traffic and release its sessions"
                                : "read or alter its traffic");
    // block the stop signals before any thread starts, then wait for one
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGINT);
    sigaddset(&stop, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop, NULL);
    struct lp_worker *w = NULL;
    struct lp_error err = {0};
    if (lp_worker_create(&w, &wp, &err) != LP_OK) {
        fprintf(stderr, "layerpipe worker: %s\n", err.msg);
        return 1;
    }
    fprintf(stderr, "layerpipe worker: serving %s on port %d (Ctrl-C to stop)\n", model,
            lp_worker_port(w));
    if (port_file) {
        char tmp[4096];
        snprintf(tmp, sizeof tmp, "%s.tmp", port_file);
        FILE *fp = fopen(tmp, "w");
        if (!fp || fprintf(fp, "%d\n", lp_worker_port(w)) < 0 || fclose(fp) != 0 ||
            rename(tmp, port_file) != 0) {
            fprintf(stderr, "layerpipe worker: cannot write --port-file %s\n", port_file);
            lp_worker_destroy(w);
            return 1;
        }
    }
    int sig = 0;
    sigwait(&stop, &sig);
    fprintf(stderr, "layerpipe worker: %s, stopping\n", sig == SIGINT ? "interrupted" : "terminated");
    lp_worker_destroy(w);
    return 0;
}
