// SPDX-License-Identifier: MIT
// cmd_cluster.c -- `layerpipe cluster`: a whole pipeline on this machine
// for demos and tests. Starts N-1 `layerpipe worker` processes on free
// loopback ports, runs the run/logits/bench/perplexity command as their coordinator,
// then stops them. Workers are started before this process touches gRPC
// (forking after gRPC has started threads is unsafe).
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cli/args.h"
#include "cli/cli.h"

#define MAX_LOCAL_WORKERS 16

static void stop_workers(pid_t *pids, int n) {
    for (int i = 0; i < n; i++)
        if (pids[i] > 0) kill(pids[i], SIGTERM);
    for (int i = 0; i < n; i++)
        if (pids[i] > 0) waitpid(pids[i], NULL, 0);
}

int lp_cli_cluster(int argc, char **argv) {
    char *model = NULL, *plan = NULL;
    int n_stages = 3, threads = 0;
    struct lp_arg args[] = {
        {"model", 'm', LP_ARG_STR, &model, "DIR", "model folder", true},
        {"stages", 's', LP_ARG_INT, &n_stages, "N",
         "stages: this coordinator and N-1 workers (default 3)", false, 1, MAX_LOCAL_WORKERS + 1},
        {"plan", 0, LP_ARG_STR, &plan, "PLAN",
         "layers per stage, coordinator first (default: proportional, like 10,9,9 for 28)"},
        {"worker-threads", 0, LP_ARG_INT, &threads, "N",
         "CPU threads of each worker (default: all cores)", false, 0, 1024},
    };
    // everything after "--" is the coordinator's command
    int split = argc;
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--") == 0) {
            split = i;
            break;
        }
    enum lp_args_result ar = lp_args_parse(
        "cluster",
        "Start a local pipeline (workers on loopback) and run a command through it:\n"
        "  layerpipe cluster -m DIR --stages 3 -- run --chat \"Hello\" --stats",
        args, (int)(sizeof args / sizeof args[0]), split, argv, NULL, 0, NULL);
    if (ar != LP_ARGS_OK) return ar == LP_ARGS_HELP ? 0 : 2;
    if (split + 1 >= argc || (strcmp(argv[split + 1], "run") != 0 &&
                              strcmp(argv[split + 1], "logits") != 0 &&
                              strcmp(argv[split + 1], "bench") != 0 &&
                              strcmp(argv[split + 1], "perplexity") != 0)) {
        fprintf(stderr, "layerpipe cluster: give the command after --: -- "
                        "run|logits|bench|perplexity ARGS\n");
        return 2;
    }
    for (int i = split + 2; i < argc; i++)
        if (strcmp(argv[i], "-m") == 0 || strcmp(argv[i], "--model") == 0 ||
            strcmp(argv[i], "--workers") == 0 || strcmp(argv[i], "-w") == 0 ||
            strcmp(argv[i], "--cluster") == 0) {
            fprintf(stderr, "layerpipe cluster: %s is set by the cluster command\n", argv[i]);
            return 2;
        }
    int n_workers = n_stages - 1;
    pid_t pids[MAX_LOCAL_WORKERS] = {0};
    char dir[] = "/tmp/layerpipe-cluster-XXXXXX";
    if (!mkdtemp(dir)) {
        fprintf(stderr, "layerpipe cluster: mkdtemp: %s\n", strerror(errno));
        return 1;
    }
    char self[4096];
    ssize_t n_self = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n_self <= 0) {
        fprintf(stderr, "layerpipe cluster: cannot find its own executable\n");
        return 1;
    }
    self[n_self] = '\0';
    char port_files[MAX_LOCAL_WORKERS][4200];
    char thr[16];
    snprintf(thr, sizeof thr, "%d", threads);
    for (int i = 0; i < n_workers; i++) {
        snprintf(port_files[i], sizeof port_files[i], "%s/worker%d.port", dir, i + 1);
        pid_t pid = fork();
        if (pid < 0) {
            fprintf(stderr, "layerpipe cluster: fork: %s\n", strerror(errno));
            stop_workers(pids, i);
            return 1;
        }
        if (pid == 0) {
            char *wargv[] = {self, "worker", "-m", model, "--listen", "127.0.0.1:0",
                             "--port-file", port_files[i], "--threads", thr, NULL};
            execv(self, wargv);
            _exit(127);
        }
        pids[i] = pid;
    }
    // wait for every worker to serve (they load only headers now)
    char workers[MAX_LOCAL_WORKERS * 24] = "";
    size_t off = 0;
    for (int i = 0; i < n_workers; i++) {
        int port = 0;
        for (int t = 0; t < 600 && port == 0; t++) { // 60 s
            FILE *fp = fopen(port_files[i], "r");
            if (fp) {
                if (fscanf(fp, "%d", &port) != 1) port = 0;
                fclose(fp);
            }
            int status;
            if (port == 0 && waitpid(pids[i], &status, WNOHANG) == pids[i]) {
                pids[i] = 0;
                fprintf(stderr, "layerpipe cluster: worker %d exited before serving\n", i + 1);
                stop_workers(pids, n_workers);
                return 1;
            }
            if (port == 0) nanosleep(&(struct timespec){0, 100000000}, NULL);
        }
        if (port == 0) {
            fprintf(stderr, "layerpipe cluster: worker %d did not start within 60 s\n", i + 1);
            stop_workers(pids, n_workers);
            return 1;
        }
        off += (size_t)snprintf(workers + off, sizeof workers - off, "%s127.0.0.1:%d",
                                i ? "," : "", port);
        remove(port_files[i]);
    }
    rmdir(dir);
    fprintf(stderr, "layerpipe cluster: %d workers on %s\n", n_workers, n_workers ? workers : "-");
    // the coordinator's argv: CMD ARGS -m MODEL [--workers LIST] [--plan PLAN]
    int n_cmd = argc - split - 1;
    char **cargv = calloc((size_t)n_cmd + 8, sizeof *cargv);
    if (!cargv) {
        stop_workers(pids, n_workers);
        return 1;
    }
    int k = 0;
    for (int i = 0; i < n_cmd; i++) cargv[k++] = argv[split + 1 + i];
    cargv[k++] = "-m";
    cargv[k++] = model;
    if (n_workers > 0) {
        cargv[k++] = "--workers";
        cargv[k++] = workers;
    }
    if (plan || n_workers == 0) {
        cargv[k++] = "--plan";
        cargv[k++] = plan ? plan : "auto";
    }
    int rc = strcmp(cargv[0], "run") == 0          ? lp_cli_run(k, cargv)
             : strcmp(cargv[0], "logits") == 0     ? lp_cli_logits(k, cargv)
             : strcmp(cargv[0], "perplexity") == 0 ? lp_cli_perplexity(k, cargv)
                                                   : lp_cli_bench(k, cargv);
    free(cargv);
    stop_workers(pids, n_workers);
    return rc;
}
