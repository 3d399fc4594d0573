// SPDX-License-Identifier: MIT
// cluster_fixture.h -- real `layerpipe worker` processes on loopback for the
// cluster tests, and commands run through the shell with their stdout and
// stderr captured. Every worker started here is killed at exit (atexit),
// and dies with the test process (PR_SET_PDEATHSIG) if the test crashes.
// Start workers before this process touches gRPC itself (forking after gRPC
// has started threads is unsafe).
#ifndef LP_CLUSTER_FIXTURE_H
#define LP_CLUSTER_FIXTURE_H

#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define LPC_MAX_WORKERS 32

static inline double lpc_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

struct lpc_worker {
    pid_t pid;    // 0 when not running
    int port;     // 0 until serving
    char addr[32];
    char log[1024]; // its stderr
};

static pid_t lpc_pids[LPC_MAX_WORKERS];

static inline void lpc_forget(pid_t pid) {
    for (int i = 0; i < LPC_MAX_WORKERS; i++)
        if (lpc_pids[i] == pid) lpc_pids[i] = 0;
}

static void lpc_kill_all(void) {
    for (int i = 0; i < LPC_MAX_WORKERS; i++)
        if (lpc_pids[i] > 0) kill(lpc_pids[i], SIGKILL);
    for (int i = 0; i < LPC_MAX_WORKERS; i++)
        if (lpc_pids[i] > 0) waitpid(lpc_pids[i], NULL, 0);
    memset(lpc_pids, 0, sizeof lpc_pids);
}

// Forks `BIN worker -m MODEL --listen 127.0.0.1:0 --port-file F --threads N`
// with its stderr in `log` (a scratch path; F is log + ".port") and waits
// up to `wait_s` seconds for its port. Returns 0 and fills *w when serving.
static inline int lpc_worker_start(struct lpc_worker *w, const char *bin, const char *model,
                                   const char *log, int threads, double wait_s) {
    static bool registered;
    if (!registered) {
        atexit(lpc_kill_all);
        registered = true;
    }
    memset(w, 0, sizeof *w);
    snprintf(w->log, sizeof w->log, "%s", log);
    char port_file[1100], thr[16];
    snprintf(port_file, sizeof port_file, "%s.port", log);
    snprintf(thr, sizeof thr, "%d", threads);
    remove(port_file);
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(126);
        FILE *e = freopen(log, "w", stderr);
        (void)e;
        FILE *o = freopen("/dev/null", "w", stdout);
        (void)o;
        execl(bin, bin, "worker", "-m", model, "--listen", "127.0.0.1:0", "--port-file",
              port_file, "--threads", thr, (char *)NULL);
        _exit(127);
    }
    w->pid = pid;
    for (int i = 0; i < LPC_MAX_WORKERS; i++)
        if (lpc_pids[i] == 0) {
            lpc_pids[i] = pid;
            break;
        }
    double t0 = lpc_now();
    while (lpc_now() - t0 < wait_s) {
        FILE *fp = fopen(port_file, "r");
        if (fp) {
            if (fscanf(fp, "%d", &w->port) != 1) w->port = 0;
            fclose(fp);
        }
        if (w->port > 0) break;
        int status;
        if (waitpid(pid, &status, WNOHANG) == pid) {
            lpc_forget(pid);
            w->pid = 0;
            fprintf(stderr, "fixture: worker exited before serving (see %s)\n", log);
            return -1;
        }
        nanosleep(&(struct timespec){0, 10 * 1000 * 1000}, NULL);
    }
    remove(port_file);
    if (w->port <= 0) {
        fprintf(stderr, "fixture: worker did not serve within %.0f s (see %s)\n", wait_s, log);
        return -1;
    }
    snprintf(w->addr, sizeof w->addr, "127.0.0.1:%d", w->port);
    return 0;
}

// SIGTERM, then SIGKILL after `grace_s`. Returns the wait status (-1 when
// it had to be killed).
static inline int lpc_worker_stop(struct lpc_worker *w, double grace_s) {
    if (w->pid <= 0) return 0;
    kill(w->pid, SIGTERM);
    int status = 0;
    double t0 = lpc_now();
    pid_t r;
    while ((r = waitpid(w->pid, &status, WNOHANG)) == 0 && lpc_now() - t0 < grace_s)
        nanosleep(&(struct timespec){0, 5 * 1000 * 1000}, NULL);
    if (r == 0) {
        kill(w->pid, SIGKILL);
        waitpid(w->pid, &status, 0);
        status = -1;
    }
    lpc_forget(w->pid);
    w->pid = 0;
    return status;
}

// Reads a whole file (NUL-terminated); *n gets its size. NULL on failure.
static inline char *lpc_read_file(const char *path, size_t *n) {
    FILE *fp = fopen(path, "rb");
    if (!fp) return NULL;
    fseek(fp, 0, SEEK_END);
    long bytes = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    char *v = malloc((size_t)(bytes > 0 ? bytes : 0) + 8);
    size_t got = v ? fread(v, 1, (size_t)(bytes > 0 ? bytes : 0), fp) : 0;
    fclose(fp);
    if (!v) return NULL;
    v[got] = '\0';
    if (n) *n = got;
    return v;
}

// The result of a command: exit code (-1: killed or did not run), wall
// time, and its stdout and stderr (malloc'd, NUL-terminated, never NULL).
struct lpc_result {
    int rc;
    double seconds;
    char *out, *err;
};

static inline void lpc_result_free(struct lpc_result *r) {
    free(r->out);
    free(r->err);
    memset(r, 0, sizeof *r);
}

// Runs `cmd` through /bin/sh under `timeout` (killed after limit_s), with
// stdout and stderr in scratch files named from `scratch`.
static inline struct lpc_result lpc_sh(const char *cmd, const char *scratch, int limit_s) {
    struct lpc_result r = {0};
    char out[1100], err[1100];
    snprintf(out, sizeof out, "%s.stdout", scratch);
    snprintf(err, sizeof err, "%s.stderr", scratch);
    size_t n = strlen(cmd) + 3 * 1100 + 64;
    char *full = malloc(n);
    snprintf(full, n, "timeout -k 5 %d %s >'%s' 2>'%s'", limit_s, cmd, out, err);
    double t0 = lpc_now();
    int st = system(full);
    r.seconds = lpc_now() - t0;
    free(full);
    r.rc = st != -1 && WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    r.out = lpc_read_file(out, NULL);
    r.err = lpc_read_file(err, NULL);
    if (!r.out) r.out = calloc(1, 1);
    if (!r.err) r.err = calloc(1, 1);
    remove(out);
    remove(err);
    return r;
}

#endif
