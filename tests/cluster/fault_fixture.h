// SPDX-License-Identifier: MIT
// fault_fixture.h -- helpers shared by the cluster fault tests: worker and
// coordinator processes started with fork/exec (output to files under a
// per-test scratch folder, every child killed at exit on every path), and
// the Stage service called by hand through the rpc client (Hello, Health,
// Stats, Release) with protobuf-c messages.
#ifndef LP_FAULT_FIXTURE_H
#define LP_FAULT_FIXTURE_H

#include <errno.h>
#include <fcntl.h>
#include <math.h> // model_fixture.h uses sqrt without including it
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cluster/internal.h"
#include "cluster/rpc.h"
#include "layerpipe/cluster.h"
#include "model_fixture.h"

static inline double ff_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

// ---- children, killed at exit ----

#define FF_MAX_CHILDREN 32
static pid_t ff_children[FF_MAX_CHILDREN];
static int ff_n_children;
static char ff_scratch[1024];

static void ff_forget(pid_t pid) {
    for (int i = 0; i < ff_n_children; i++)
        if (ff_children[i] == pid) ff_children[i] = 0;
}

static void ff_kill_all(void) {
    for (int i = 0; i < ff_n_children; i++)
        if (ff_children[i] > 0) {
            kill(ff_children[i], SIGCONT);
            kill(ff_children[i], SIGKILL);
            waitpid(ff_children[i], NULL, 0);
            ff_children[i] = 0;
        }
    if (ff_scratch[0] && !getenv("LP_KEEP_SCRATCH")) {
        char cmd[1200];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", ff_scratch);
        if (system(cmd) != 0) fprintf(stderr, "cannot remove %s\n", ff_scratch);
    }
}

static void ff_on_signal(int sig) {
    ff_kill_all();
    signal(sig, SIG_DFL);
    raise(sig);
}

// Makes LP_WORK_DIR/<name>.<pid> and registers the cleanup. Returns 0 on success.
static inline int ff_setup(const char *name) {
    const char *work = lp_fixture_env("LP_WORK_DIR", "build/testdata");
    mkdir(work, 0755);
    snprintf(ff_scratch, sizeof ff_scratch, "%s/%s.%d", work, name, (int)getpid());
    if (mkdir(ff_scratch, 0755) != 0 && errno != EEXIST) return -1;
    atexit(ff_kill_all);
    signal(SIGINT, ff_on_signal);
    signal(SIGTERM, ff_on_signal);
    signal(SIGABRT, ff_on_signal);
    signal(SIGSEGV, ff_on_signal);
    signal(SIGPIPE, SIG_IGN);
    return 0;
}

// Starts argv[] with stdout/stderr to the given files (NULL: /dev/null).
static inline pid_t ff_spawn(char *const argv[], const char *out_path, const char *err_path) {
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        int o = open(out_path ? out_path : "/dev/null", O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int e = open(err_path ? err_path : "/dev/null", O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (o >= 0) dup2(o, 1);
        if (e >= 0) dup2(e, 2);
        int devnull = open("/dev/null", O_RDONLY);
        if (devnull >= 0) dup2(devnull, 0);
        execv(argv[0], argv);
        _exit(127);
    }
    if (ff_n_children < FF_MAX_CHILDREN) ff_children[ff_n_children++] = pid;
    return pid;
}

// Waits for pid up to timeout_s; returns its exit code, 128+signal, or -1 on timeout.
static inline int ff_wait(pid_t pid, double timeout_s) {
    double end = ff_now() + timeout_s;
    for (;;) {
        int status;
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid) {
            ff_forget(pid);
            return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        }
        if (r < 0) return -2;
        if (ff_now() > end) return -1;
        usleep(5000);
    }
}

// Whether pid is still running (not exited, not a zombie we reaped).
static inline int ff_alive(pid_t pid) {
    siginfo_t info;
    memset(&info, 0, sizeof info);
    if (waitid(P_PID, (id_t)pid, &info, WEXITED | WNOHANG | WNOWAIT) != 0) return 0;
    return info.si_pid == 0;
}

static inline void ff_stop(pid_t pid) {
    if (pid <= 0) return;
    kill(pid, SIGCONT);
    kill(pid, SIGTERM);
    if (ff_wait(pid, 10) == -1) {
        kill(pid, SIGKILL);
        ff_wait(pid, 10);
    }
}

// Reads a whole (small) file into buf; returns its length (0 if unreadable).
static inline size_t ff_read_file(const char *path, char *buf, size_t cap) {
    buf[0] = '\0';
    FILE *fp = fopen(path, "r");
    if (!fp) return 0;
    size_t n = fread(buf, 1, cap - 1, fp);
    buf[n] = '\0';
    fclose(fp);
    return n;
}

struct ff_worker {
    pid_t pid;
    int port;
    char addr[64];
    char log[1100];
};

// Starts `layerpipe worker` on a free loopback port (or on w->port when
// `same_port`, to restart one); waits for its port file.
static inline int ff_worker_start_on(struct ff_worker *w, const char *model_dir, const char *tag,
                                     bool same_port) {
    const char *bin = lp_fixture_env("LP_BIN", "build/layerpipe");
    char port_file[1100], listen[64];
    snprintf(port_file, sizeof port_file, "%s/%s.port", ff_scratch, tag);
    snprintf(w->log, sizeof w->log, "%s/%s.log", ff_scratch, tag);
    snprintf(listen, sizeof listen, "127.0.0.1:%d", same_port ? w->port : 0);
    unlink(port_file);
    char *argv[] = {(char *)bin, "worker", "-m", (char *)model_dir, "--listen", listen,
                    "--port-file", port_file, "--threads", "1", NULL};
    w->pid = ff_spawn(argv, NULL, w->log);
    w->port = 0;
    if (w->pid < 0) return -1;
    double end = ff_now() + 30;
    char buf[64];
    while (ff_now() < end) {
        if (ff_read_file(port_file, buf, sizeof buf) && (w->port = atoi(buf)) > 0) break;
        if (!ff_alive(w->pid)) break;
        usleep(10000);
    }
    if (w->port <= 0) {
        char log[4096];
        ff_read_file(w->log, log, sizeof log);
        fprintf(stderr, "worker %s did not start: %s\n", tag, log);
        return -1;
    }
    snprintf(w->addr, sizeof w->addr, "127.0.0.1:%d", w->port);
    return 0;
}

static inline int ff_worker_start(struct ff_worker *w, const char *model_dir, const char *tag) {
    return ff_worker_start_on(w, model_dir, tag, false);
}

// ---- the Stage service by hand ----

static inline enum lp_status ff_call(const char *addr, const char *method,
                                     const ProtobufCMessage *req, uint8_t **resp, size_t *n_resp,
                                     int timeout_ms, struct lp_error *err) {
    struct lp_rpc_channel *ch = NULL;
    enum lp_status st = lp_rpc_channel_create(&ch, addr, LP_MAX_MESSAGE_BYTES, NULL, err);
    if (st != LP_OK) return st;
    uint8_t *buf;
    size_t n;
    if ((st = lp_pb_pack(req, &buf, &n, err)) == LP_OK) {
        st = lp_rpc_call_unary(ch, method, buf, n, resp, n_resp, timeout_ms, err);
        free(buf);
    }
    lp_rpc_channel_destroy(ch);
    return st;
}

// grpc.health.v1.Health/Check: 1 when SERVING.
static inline int ff_health_serving(const char *addr, struct lp_error *err) {
    Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    uint8_t *resp = NULL;
    size_t n = 0;
    if (ff_call(addr, LP_M_HEALTH, &req.base, &resp, &n, 3000, err) != LP_OK) return 0;
    Grpc__Health__V1__HealthCheckResponse *h =
        grpc__health__v1__health_check_response__unpack(NULL, n, resp);
    free(resp);
    int ok = h && h->status == GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
    if (h) grpc__health__v1__health_check_response__free_unpacked(h, NULL);
    return ok;
}

// Stage/Stats; NULL on failure (free with layerpipe__v1__stats_reply__free_unpacked).
static inline Layerpipe__V1__StatsReply *ff_stats(const char *addr, struct lp_error *err) {
    Layerpipe__V1__StatsRequest req = LAYERPIPE__V1__STATS_REQUEST__INIT;
    uint8_t *resp = NULL;
    size_t n = 0;
    if (ff_call(addr, LP_M_STATS, &req.base, &resp, &n, 3000, err) != LP_OK) return NULL;
    Layerpipe__V1__StatsReply *s = layerpipe__v1__stats_reply__unpack(NULL, n, resp);
    free(resp);
    return s;
}

// Stage/Hello; NULL on failure.
static inline Layerpipe__V1__HelloReply *ff_hello(const char *addr, struct lp_error *err) {
    Layerpipe__V1__HelloRequest req = LAYERPIPE__V1__HELLO_REQUEST__INIT;
    req.protocol_version = LP_PROTOCOL_VERSION;
    uint8_t *resp = NULL;
    size_t n = 0;
    if (ff_call(addr, LP_M_HELLO, &req.base, &resp, &n, 3000, err) != LP_OK) return NULL;
    Layerpipe__V1__HelloReply *h = layerpipe__v1__hello_reply__unpack(NULL, n, resp);
    free(resp);
    return h;
}

#endif
