// SPDX-License-Identifier: MIT
// cmd_cluster.c -- `layerpipe cluster`: a whole pipeline on this machine
// for demos and tests. A supervisor process starts N-1 `layerpipe worker`
// processes on free loopback ports, or on the loopback addresses a
// --cluster file names (and restarts one that exits, on its port); this
// process runs the run/serve/logits/bench/perplexity command as their
// coordinator, then stops them. The transport security (--tls-*,
// --cluster-token-file, --health-open, given before or after "--", or the
// cluster file's "security") goes to every worker and to the coordinator.
// The supervisor is forked before this process touches gRPC (forking after
// gRPC has started threads is unsafe).
#include <arpa/inet.h>
#include <errno.h>
#include <sched.h>
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
#include "cli/session.h"
#include "layerpipe/cluster.h"

#define MAX_LOCAL_WORKERS 16

// ---- the supervisor: a process that owns the workers ----
//
// Forked before this process touches gRPC, it starts every worker on a free
// port, reports the ports in DIR/ports, and restarts a worker that exits
// (kill -9, a crash) on the same port, so the coordinator's recovery finds
// it again. SIGTERM stops it and its workers.

static volatile sig_atomic_t sup_stop;

static void sup_on_term(int sig) {
    (void)sig;
    sup_stop = 1;
}

// The security every worker gets (NULL: not given).
struct sup_security {
    const char *tls_cert, *tls_key, *tls_ca, *token_file;
    bool health_open;
};

struct sup {
    const char *self, *model, *threads, *dir;
    int n;
    pid_t pids[MAX_LOCAL_WORKERS];
    int ports[MAX_LOCAL_WORKERS];        // 0 until the first start picked one
    const char *hosts[MAX_LOCAL_WORKERS]; // where worker i listens: "127.0.0.1", or a file's host
    struct sup_security sec;
};

static pid_t sup_spawn(struct sup *s, int i) {
    char listen[160], port_file[4200];
    snprintf(listen, sizeof listen, "%s:%d", s->hosts[i] ? s->hosts[i] : "127.0.0.1",
             s->ports[i]);
    snprintf(port_file, sizeof port_file, "%s/worker%d.port", s->dir, i + 1);
    remove(port_file);
    pid_t pid = fork();
    if (pid == 0) {
        char *wargv[24] = {(char *)s->self, "worker", "-m", (char *)s->model, "--listen", listen,
                           "--port-file", port_file, "--threads", (char *)s->threads};
        int k = 10;
        const char *flag[4] = {"--tls-cert", "--tls-key", "--tls-ca", "--cluster-token-file"};
        const char *value[4] = {s->sec.tls_cert, s->sec.tls_key, s->sec.tls_ca,
                                s->sec.token_file};
        for (int f = 0; f < 4; f++)
            if (value[f]) {
                wargv[k++] = (char *)flag[f];
                wargv[k++] = (char *)value[f];
            }
        if (s->sec.health_open) wargv[k++] = "--health-open";
        wargv[k] = NULL;
        execv(s->self, wargv);
        _exit(127);
    }
    return pid;
}

// Waits for worker i's port file; 0 when it exited or took over 60 s.
static int sup_port(struct sup *s, int i) {
    char port_file[4200];
    snprintf(port_file, sizeof port_file, "%s/worker%d.port", s->dir, i + 1);
    for (int t = 0; t < 600 && !sup_stop; t++) {
        FILE *fp = fopen(port_file, "r");
        int port = 0;
        if (fp) {
            if (fscanf(fp, "%d", &port) != 1) port = 0;
            fclose(fp);
        }
        if (port > 0) return port;
        int status;
        if (waitpid(s->pids[i], &status, WNOHANG) == s->pids[i]) {
            s->pids[i] = 0;
            return 0;
        }
        nanosleep(&(struct timespec){0, 100000000}, NULL);
    }
    return 0;
}

static void sup_stop_all(struct sup *s) {
    for (int i = 0; i < s->n; i++)
        if (s->pids[i] > 0) kill(s->pids[i], SIGTERM);
    for (int i = 0; i < s->n; i++)
        if (s->pids[i] > 0) waitpid(s->pids[i], NULL, 0);
}

static bool sup_write_ports(struct sup *s) {
    char path[4200], tmp[4300];
    snprintf(path, sizeof path, "%s/ports", s->dir);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *fp = fopen(tmp, "w");
    if (!fp) return false;
    for (int i = 0; i < s->n; i++) fprintf(fp, "%d\n", s->ports[i]);
    return fclose(fp) == 0 && rename(tmp, path) == 0;
}

static int sup_main(struct sup *s) {
    struct sigaction sa = {0};
    sa.sa_handler = sup_on_term; // no SA_RESTART: SIGTERM must end the waitpid below
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGINT, SIG_IGN); // Ctrl-C goes to the coordinator, which stops us
    for (int i = 0; i < s->n; i++) s->pids[i] = sup_spawn(s, i);
    for (int i = 0; i < s->n; i++)
        if ((s->ports[i] = sup_port(s, i)) == 0) {
            fprintf(stderr, "layerpipe cluster: worker %d did not start\n", i + 1);
            sup_stop_all(s);
            return 1;
        }
    if (!sup_write_ports(s)) {
        sup_stop_all(s);
        return 1;
    }
    while (!sup_stop) {
        int status;
        pid_t pid = waitpid(-1, &status, 0);
        if (pid < 0) {
            if (errno == EINTR) continue;
            break;
        }
        for (int i = 0; i < s->n && !sup_stop; i++) {
            if (s->pids[i] != pid) continue;
            fprintf(stderr, "layerpipe cluster: worker %d (port %d) %s %d; restarting it\n",
                    i + 1, s->ports[i], WIFSIGNALED(status) ? "was killed by signal" : "exited with",
                    WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
            for (int tries = 0; tries < 50 && !sup_stop; tries++) { // the port may linger
                s->pids[i] = sup_spawn(s, i);
                if (sup_port(s, i) > 0) break;
                nanosleep(&(struct timespec){0, 200000000}, NULL);
            }
        }
    }
    sup_stop_all(s);
    return 0;
}

// Forks the supervisor and waits for its ports ("127.0.0.1:P,..." into
// workers). Returns its pid, or -1 (message printed).
static pid_t start_supervisor(struct sup *sv, char *workers, size_t cap) {
    fflush(NULL);
    pid_t sup = fork();
    if (sup < 0) {
        fprintf(stderr, "layerpipe cluster: fork: %s\n", strerror(errno));
        return -1;
    }
    if (sup == 0) _exit(sup_main(sv));
    char path[4200];
    snprintf(path, sizeof path, "%s/ports", sv->dir);
    FILE *fp = NULL;
    for (int t = 0; t < 700 && !fp; t++) { // 70 s
        if ((fp = fopen(path, "r"))) break;
        int status;
        if (waitpid(sup, &status, WNOHANG) == sup) {
            fprintf(stderr, "layerpipe cluster: the workers did not start\n");
            return -1;
        }
        nanosleep(&(struct timespec){0, 100000000}, NULL);
    }
    size_t off = 0;
    for (int i = 0; fp && i < sv->n; i++) {
        int port = 0;
        if (fscanf(fp, "%d", &port) != 1) break;
        off += (size_t)snprintf(workers + off, cap - off, "%s%s:%d", i ? "," : "",
                                sv->hosts[i] ? sv->hosts[i] : "127.0.0.1", port);
    }
    if (fp) fclose(fp);
    if (off == 0) {
        fprintf(stderr, "layerpipe cluster: the workers did not start within 70 s\n");
        kill(sup, SIGTERM);
        waitpid(sup, NULL, 0);
        return -1;
    }
    return sup;
}

static void stop_supervisor(pid_t sup, const char *dir, int n_workers) {
    if (sup > 0) {
        kill(sup, SIGTERM);
        waitpid(sup, NULL, 0);
    }
    char path[4200];
    snprintf(path, sizeof path, "%s/ports", dir);
    remove(path);
    for (int i = 0; i < n_workers; i++) {
        snprintf(path, sizeof path, "%s/worker%d.port", dir, i + 1);
        remove(path);
    }
    rmdir(dir);
}

// The coordinator command's own security flags (after "--"): they go to the
// workers too. Returns false (message printed) on a flag without a value.
static bool scan_security(int argc, char **argv, struct sup_security *out) {
    static const char *const names[4] = {"--tls-cert", "--tls-key", "--tls-ca",
                                         "--cluster-token-file"};
    const char **dst[4] = {&out->tls_cert, &out->tls_key, &out->tls_ca, &out->token_file};
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--health-open") == 0) out->health_open = true;
        for (int f = 0; f < 4; f++) {
            size_t n = strlen(names[f]);
            if (strncmp(argv[i], names[f], n) != 0) continue;
            if (argv[i][n] == '=') {
                *dst[f] = argv[i] + n + 1;
            } else if (argv[i][n] == '\0') {
                if (i + 1 >= argc) {
                    fprintf(stderr, "layerpipe cluster: %s needs a value\n", names[f]);
                    return false;
                }
                *dst[f] = argv[++i];
            }
        }
    }
    return true;
}

// Loopback hosts only: `layerpipe cluster` starts its workers on this machine.
static bool loopback_host(const char *addr, char *host, size_t cap, int *port) {
    const char *colon = strrchr(addr, ':');
    if (!colon || (size_t)(colon - addr) >= cap) return false;
    snprintf(host, cap, "%.*s", (int)(colon - addr), addr);
    char *end;
    errno = 0;
    long p = strtol(colon + 1, &end, 10);
    if (errno || end == colon + 1 || *end || p < 1 || p > 65535) return false;
    *port = (int)p;
    // IP literals only (a name such as 127.example.com may resolve anywhere)
    struct in_addr a4;
    if (inet_pton(AF_INET, host, &a4) == 1) return (ntohl(a4.s_addr) >> 24) == 127;
    return strcmp(host, "localhost") == 0 || strcmp(host, "[::1]") == 0;
}

// The workers a --cluster file names (loopback addresses) and its security.
static bool read_cluster_file(const char *path, struct lp_cluster_spec *spec, struct sup *sv,
                              char hosts[][128]) {
    struct lp_error err = {0};
    memset(spec, 0, sizeof *spec);
    if (lp_cluster_spec_read_file(spec, path, &err) != LP_OK) {
        fprintf(stderr, "layerpipe cluster: --cluster %s\n", err.msg);
        return false;
    }
    if (spec->n_workers > MAX_LOCAL_WORKERS) {
        fprintf(stderr, "layerpipe cluster: %s: %d workers, at most %d on one machine\n", path,
                spec->n_workers, MAX_LOCAL_WORKERS);
        return false;
    }
    for (int i = 0; i < spec->n_workers; i++)
        if (!loopback_host(spec->workers[i], hosts[i], 128, &sv->ports[i])) {
            fprintf(stderr,
                    "layerpipe cluster: %s: stage %d's address %s is not on this machine's "
                    "loopback with a port (127.x.x.x:P, localhost:P, [::1]:P): start remote "
                    "workers with "
                    "`layerpipe worker` and run the command with --cluster itself\n",
                    path, i + 1, spec->workers[i]);
            return false;
        } else {
            sv->hosts[i] = hosts[i];
        }
    sv->n = spec->n_workers;
    return true;
}

// A flag given to `layerpipe cluster` and again to the command after "--".
static bool security_twice(const struct sup_security *own, const struct sup_security *cmd) {
    const char *a[4] = {own->tls_cert, own->tls_key, own->tls_ca, own->token_file};
    const char *b[4] = {cmd->tls_cert, cmd->tls_key, cmd->tls_ca, cmd->token_file};
    for (int f = 0; f < 4; f++)
        if (a[f] && b[f]) return true;
    return false;
}

int lp_cli_cluster(int argc, char **argv) {
    char *model = NULL, *plan = NULL, *cluster = NULL;
    int n_stages = 3, threads = 0;
    struct lp_cli_session_opts so = {0}; // only its security fields
    struct lp_arg args[] = {
        {"model", 'm', LP_ARG_STR, &model, "DIR", "model folder", true},
        {"stages", 's', LP_ARG_INT, &n_stages, "N",
         "stages: this coordinator and N-1 workers (default 3)", false, 1, MAX_LOCAL_WORKERS + 1},
        {"plan", 0, LP_ARG_STR, &plan, "PLAN",
         "layers per stage, coordinator first (default: proportional, like 10,9,9 for 28)"},
        {"worker-threads", 0, LP_ARG_INT, &threads, "N",
         "CPU threads of each worker and of the coordinator unless its command sets --threads "
         "(default: this machine's cores shared out over the stages, at least 1 each)",
         false, 0, 1024},
        {"cluster", 0, LP_ARG_STR, &cluster, "FILE",
         "a cluster file whose workers are on loopback: start them on its addresses, with its "
         "\"security\", and run the command with --cluster FILE"},
        LP_CLI_SECURITY_ARGS(so),
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
        "  layerpipe cluster -m DIR --stages 3 -- run --chat \"Hello\" --stats\n"
        "The security options (here or after --) go to every worker and the coordinator.",
        args, (int)(sizeof args / sizeof args[0]), split, argv, NULL, 0, NULL);
    if (ar != LP_ARGS_OK) return ar == LP_ARGS_HELP ? 0 : 2;
    if (split + 1 >= argc || (strcmp(argv[split + 1], "run") != 0 &&
                              strcmp(argv[split + 1], "logits") != 0 &&
                              strcmp(argv[split + 1], "bench") != 0 &&
                              strcmp(argv[split + 1], "serve") != 0 &&
                              strcmp(argv[split + 1], "perplexity") != 0)) {
        fprintf(stderr, "layerpipe cluster: give the command after --: -- "
                        "run|serve|logits|bench|perplexity ARGS\n");
        return 2;
    }
    for (int i = split + 2; i < argc; i++)
        if (strcmp(argv[i], "-m") == 0 || strcmp(argv[i], "--model") == 0 ||
            strcmp(argv[i], "--workers") == 0 || strcmp(argv[i], "-w") == 0 ||
            strcmp(argv[i], "--cluster") == 0) {
            fprintf(stderr, "layerpipe cluster: %s is set by the cluster command%s\n", argv[i],
                    strcmp(argv[i], "--cluster") == 0 ? " (give it before --)" : "");
            return 2;
        }
    bool stages_given = false, plan_given = plan != NULL;
    for (int i = 0; i < (int)(sizeof args / sizeof args[0]); i++)
        if (strcmp(args[i].name, "stages") == 0) stages_given = args[i].seen;
    if (cluster && (stages_given || plan_given)) {
        fprintf(stderr, "layerpipe cluster: --cluster gives the stages and plan; leave out "
                        "--stages and --plan\n");
        return 2;
    }
    // the security: own flags, the command's, the cluster file's (a flag wins)
    struct sup_security own = {so.tls_cert, so.tls_key, so.tls_ca, so.token_file, so.health_open};
    struct sup_security cmd = {0};
    if (!scan_security(argc - split - 2, argv + split + 2, &cmd)) return 2;
    if (security_twice(&own, &cmd)) {
        fprintf(stderr, "layerpipe cluster: give each security option once, before or after --\n");
        return 2;
    }
    struct sup_security sec = {own.tls_cert ? own.tls_cert : cmd.tls_cert,
                               own.tls_key ? own.tls_key : cmd.tls_key,
                               own.tls_ca ? own.tls_ca : cmd.tls_ca,
                               own.token_file ? own.token_file : cmd.token_file,
                               own.health_open || cmd.health_open};
    struct sup sv = {.model = model, .n = n_stages - 1};
    struct lp_cluster_spec spec;
    static char file_hosts[MAX_LOCAL_WORKERS][128];
    if (cluster) {
        if (!read_cluster_file(cluster, &spec, &sv, file_hosts)) return 2;
        if (!sec.tls_cert && spec.tls_cert[0]) sec.tls_cert = spec.tls_cert;
        if (!sec.tls_key && spec.tls_key[0]) sec.tls_key = spec.tls_key;
        if (!sec.tls_ca && spec.tls_ca[0]) sec.tls_ca = spec.tls_ca;
        if (!sec.token_file && spec.token_file[0]) sec.token_file = spec.token_file;
        sec.health_open |= spec.health_open;
    }
    sv.sec = sec;
    int n_workers = sv.n;
    char dir[] = "/tmp/layerpipe-cluster-XXXXXX";
    if (!mkdtemp(dir)) {
        fprintf(stderr, "layerpipe cluster: mkdtemp: %s\n", strerror(errno));
        return 1;
    }
    char self[4096];
    ssize_t n_self = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n_self <= 0) {
        fprintf(stderr, "layerpipe cluster: cannot find its own executable\n");
        rmdir(dir);
        return 1;
    }
    self[n_self] = '\0';
    // Every stage runs on this machine: share its cores out, or the stages'
    // spinning thread pools fight over them (three stages of two threads on
    // two cores decoded 4x slower than of one thread each).
    bool cmd_threads = false;
    for (int i = split + 2; i < argc; i++)
        if (strcmp(argv[i], "-t") == 0 || strcmp(argv[i], "--threads") == 0 ||
            strncmp(argv[i], "--threads=", 10) == 0)
            cmd_threads = true;
    if (threads == 0) {
        cpu_set_t cpus;
        int n_cpus = sched_getaffinity(0, sizeof cpus, &cpus) == 0 ? CPU_COUNT(&cpus) : 1;
        int stages = n_workers + 1; // --stages, or the cluster file's
        threads = n_cpus / stages > 1 ? n_cpus / stages : 1;
    }
    char thr[16];
    snprintf(thr, sizeof thr, "%d", threads);
    sv.self = self;
    sv.threads = thr;
    sv.dir = dir;
    pid_t sup = 0;
    char workers[MAX_LOCAL_WORKERS * 140] = "";
    if (n_workers > 0 && (sup = start_supervisor(&sv, workers, sizeof workers)) < 0) {
        rmdir(dir);
        return 1;
    }
    fprintf(stderr, "layerpipe cluster: %d workers on %s%s%s\n", n_workers,
            n_workers ? workers : "-", n_workers ? " (restarted if one exits)" : "",
            sec.tls_cert ? ", TLS" : "");
    // the coordinator's argv: CMD ARGS -m MODEL [--workers LIST] [--plan PLAN]
    // [--cluster FILE] [the security given to `cluster` itself]
    int n_cmd = argc - split - 1;
    char **cargv = calloc((size_t)n_cmd + 20, sizeof *cargv);
    if (!cargv) {
        stop_supervisor(sup, dir, n_workers);
        return 1;
    }
    int k = 0;
    for (int i = 0; i < n_cmd; i++) cargv[k++] = argv[split + 1 + i];
    cargv[k++] = "-m";
    cargv[k++] = model;
    if (cluster) {
        cargv[k++] = "--cluster";
        cargv[k++] = cluster;
    } else if (n_workers > 0) {
        cargv[k++] = "--workers";
        cargv[k++] = workers;
    }
    if (!cluster && (plan || n_workers == 0)) {
        cargv[k++] = "--plan";
        cargv[k++] = plan ? plan : "auto";
    }
    const char *flag[4] = {"--tls-cert", "--tls-key", "--tls-ca", "--cluster-token-file"};
    const char *value[4] = {own.tls_cert, own.tls_key, own.tls_ca, own.token_file};
    for (int f = 0; f < 4; f++)
        if (value[f]) {
            cargv[k++] = (char *)flag[f];
            cargv[k++] = (char *)value[f];
        }
    if (own.health_open && !cmd.health_open) cargv[k++] = "--health-open";
    if (!cmd_threads) {
        cargv[k++] = "--threads";
        cargv[k++] = thr;
    }
    int rc = strcmp(cargv[0], "run") == 0          ? lp_cli_run(k, cargv)
             : strcmp(cargv[0], "logits") == 0     ? lp_cli_logits(k, cargv)
             : strcmp(cargv[0], "perplexity") == 0 ? lp_cli_perplexity(k, cargv)
             : strcmp(cargv[0], "serve") == 0      ? lp_cli_serve(k, cargv)
                                                   : lp_cli_bench(k, cargv);
    free(cargv);
    stop_supervisor(sup, dir, n_workers);
    return rc;
}
