// SPDX-License-Identifier: MIT
// test_faults.c -- a pipeline of real processes on loopback losing a stage:
// a worker killed (SIGKILL) mid-generation, the middle one and the last one
// in turn, and a worker stalled (SIGSTOP), with no way back: nothing restarts
// the worker within --recover-timeout (2 s here; test_recover covers the
// ways back). Each time the coordinator must end the request with a clear
// error naming the stage within its deadlines,
// not crash, release its sessions on the stage that survived (Stats shows 0
// open sessions), and leave that stage healthy: Health/Check answers
// SERVING and a new coordinator runs a 1-worker pipeline through it to the
// same ids as one process. Last, a worker's resident memory after serving
// 2 of 8 layers of a ~140 MB model is below its share of the weights plus
// KV plus a fixed overhead (numbers printed).
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fault_fixture.h"
#include "lp_test.h"

#define SLOW_GEN                                                                                   \
    "--seed 301 --format mlx8 --group 64 --tied 1 --layers 8 --hidden 512 --heads 8 "             \
    "--kv-heads 4 --head-dim 64 --intermediate 1536 --vocab 4096"
#define RSS_GEN                                                                                    \
    "--seed 302 --format mlx8 --group 64 --tied 1 --layers 8 --hidden 1024 --heads 16 "           \
    "--kv-heads 8 --head-dim 64 --intermediate 3072 --vocab 32000"

#define TIMEOUT_MS 5000

static char slow_dir[1024];
static char ref_ids[8192]; // one process: `run -n 8` on slow_dir

struct coord {
    pid_t pid;
    char out[1100], err[1100];
};

static pid_t coord_start(struct coord *c, const char *model, const char *workers, const char *plan,
                         const char *n, const char *tag) {
    const char *bin = lp_fixture_env("LP_BIN", "build/layerpipe");
    snprintf(c->out, sizeof c->out, "%s/%s.out", ff_scratch, tag);
    snprintf(c->err, sizeof c->err, "%s/%s.err", ff_scratch, tag);
    char timeout[32];
    snprintf(timeout, sizeof timeout, "%d", TIMEOUT_MS);
    char *argv[32];
    int k = 0;
    argv[k++] = (char *)bin;
    argv[k++] = "run";
    argv[k++] = "-m";
    argv[k++] = (char *)model;
    argv[k++] = "--prompt-ids";
    argv[k++] = "1 2 3 4 5";
    argv[k++] = "-n";
    argv[k++] = (char *)n;
    argv[k++] = "--temp";
    argv[k++] = "0";
    argv[k++] = "--ignore-eos";
    argv[k++] = "--print-ids";
    argv[k++] = "--threads";
    argv[k++] = "1";
    if (workers) {
        argv[k++] = "--workers";
        argv[k++] = (char *)workers;
        argv[k++] = "--plan";
        argv[k++] = (char *)plan;
        argv[k++] = "--timeout";
        argv[k++] = timeout;
        argv[k++] = "--recover-timeout";
        argv[k++] = "2000";
    }
    argv[k] = NULL;
    c->pid = ff_spawn(argv, c->out, c->err);
    return c->pid;
}

// Polls the stage's Stats until it has computed `steps` micro-batches.
static int wait_steps(const char *addr, uint64_t steps, pid_t coord_pid, double timeout_s) {
    double end = ff_now() + timeout_s;
    while (ff_now() < end && ff_alive(coord_pid)) {
        struct lp_error err = {0};
        Layerpipe__V1__StatsReply *s = ff_stats(addr, &err);
        uint64_t got = s ? s->steps : 0;
        if (s) layerpipe__v1__stats_reply__free_unpacked(s, NULL);
        if (got >= steps) return 1;
        usleep(20000);
    }
    return 0;
}

// The survivor: SERVING, no session left open, and a fresh 1-worker
// pipeline through it gives the one-process ids.
static void check_survivor(const struct ff_worker *w, const char *tag) {
    struct lp_error err = {0};
    CHECK_MSG(ff_health_serving(w->addr, &err), "%s: survivor %s not SERVING: %s", tag, w->addr,
              err.msg);
    Layerpipe__V1__StatsReply *s = ff_stats(w->addr, &err);
    CHECK_MSG(s != NULL, "%s: Stats on survivor: %s", tag, err.msg);
    if (s) {
        printf("%s: survivor %s: %u open sessions, %llu steps\n", tag, w->addr, s->sessions,
               (unsigned long long)s->steps);
        CHECK_MSG(s->sessions == 0,
                  "%s: the coordinator left %u session(s) open on the surviving stage %s", tag,
                  s->sessions, w->addr);
        layerpipe__v1__stats_reply__free_unpacked(s, NULL);
    }
    struct coord c;
    char t[64];
    snprintf(t, sizeof t, "%s-rerun", tag);
    coord_start(&c, slow_dir, w->addr, "4,4", "8", t);
    int rc = ff_wait(c.pid, 60);
    char out[8192], errtxt[8192];
    ff_read_file(c.out, out, sizeof out);
    ff_read_file(c.err, errtxt, sizeof errtxt);
    CHECK_MSG(rc == 0, "%s: 1-worker rerun through %s: rc %d: %s", tag, w->addr, rc, errtxt);
    CHECK_MSG(strcmp(out, ref_ids) == 0, "%s: rerun ids '%s', one process '%s'", tag, out,
              ref_ids);
}

// victim: 0 = the middle worker (stage 1 of 2), 1 = the last (stage 2).
// stall: SIGSTOP instead of SIGKILL.
static void fault_case(int victim, bool stall) {
    const char *tag = stall ? "stall-middle" : victim ? "kill-last" : "kill-middle";
    double t_case = ff_now();
    struct ff_worker w[2];
    char wtag[64];
    for (int i = 0; i < 2; i++) {
        snprintf(wtag, sizeof wtag, "%s-w%d", tag, i + 1);
        if (ff_worker_start(&w[i], slow_dir, wtag) != 0) {
            CHECK_MSG(0, "%s: worker %d did not start", tag, i + 1);
            return;
        }
    }
    char workers[160];
    snprintf(workers, sizeof workers, "%s,%s", w[0].addr, w[1].addr);
    struct coord c;
    coord_start(&c, slow_dir, workers, "2,3,3", "3000", tag);
    struct ff_worker *v = &w[victim], *survivor = &w[1 - victim];
    // let the generation get going (prefill done, decode steps flowing)
    int started = wait_steps(v->addr, 30, c.pid, 30);
    CHECK_MSG(started, "%s: generation never reached 30 steps on %s", tag, v->addr);
    CHECK_MSG(ff_alive(c.pid), "%s: coordinator finished before the fault (too fast a model?)",
              tag);
    double t0 = ff_now();
    kill(v->pid, stall ? SIGSTOP : SIGKILL);
    int rc = ff_wait(c.pid, 30);
    double dt = ff_now() - t0;
    char errtxt[16384];
    ff_read_file(c.err, errtxt, sizeof errtxt);
    const char *last = strrchr(errtxt, '\n');
    while (last && last > errtxt && last[1] == '\0') { // the last non-empty line
        const char *p = last - 1;
        while (p > errtxt && *p != '\n') p--;
        if (p == errtxt) break;
        last = p;
    }
    printf("%s: coordinator exited %d after %.2f s (timeout %d ms); stderr ends: %s\n", tag, rc,
           dt, TIMEOUT_MS, last ? last + 1 : errtxt);
    CHECK_MSG(rc != -1, "%s: coordinator still running 30 s after the fault", tag);
    CHECK_MSG(rc > 0 && rc < 128, "%s: coordinator should fail cleanly (exit 1), got %d", tag, rc);
    if (stall) {
        CHECK_MSG(dt < TIMEOUT_MS / 1e3 + 8.0,
                  "%s: failed after %.2f s, deadline %d ms + recovery 2 s + 6 s", tag, dt,
                  TIMEOUT_MS);
        CHECK_MSG(dt > TIMEOUT_MS / 1e3 - 0.5, "%s: failed after %.2f s, before its deadline",
                  tag, dt);
        CHECK_MSG(strstr(errtxt, "within 5000 ms") || strstr(errtxt, "timed out") ||
                      strstr(errtxt, "DEADLINE"),
                  "%s: no timeout in the error: %s", tag, errtxt);
    } else {
        CHECK_MSG(dt < 10.0, "%s: failed after %.2f s (want < 10 s)", tag, dt);
        CHECK_MSG(strstr(errtxt, v->addr) != NULL,
                  "%s: the error does not name the failed stage's address %s: %s", tag, v->addr,
                  errtxt);
    }
    CHECK_MSG(!strstr(errtxt, "AddressSanitizer") && !strstr(errtxt, "Segmentation"),
              "%s: coordinator crashed: %s", tag, errtxt);
    if (stall) {
        kill(v->pid, SIGCONT);
        struct lp_error err = {0};
        double end = ff_now() + 10;
        int ok = 0;
        while (!(ok = ff_health_serving(v->addr, &err)) && ff_now() < end) usleep(50000);
        CHECK_MSG(ok, "%s: stalled worker not SERVING after SIGCONT: %s", tag, err.msg);
    } else {
        ff_wait(v->pid, 5);
    }
    CHECK_MSG(ff_alive(survivor->pid), "%s: the surviving worker %s died", tag, survivor->addr);
    check_survivor(survivor, tag);
    ff_stop(w[0].pid);
    ff_stop(w[1].pid);
    printf("%s: %.1f s\n", tag, ff_now() - t_case);
}

// ---- resident memory of a worker ----

static uint64_t proc_status_kb(pid_t pid, const char *key) {
    char path[64], buf[8192];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    ff_read_file(path, buf, sizeof buf);
    const char *p = strstr(buf, key);
    return p ? strtoull(p + strlen(key), NULL, 10) : 0;
}

// Resident kB of the process's mappings of files whose path ends in `suffix`.
__attribute__((unused)) static uint64_t smaps_rss_kb(pid_t pid, const char *suffix) {
    char path[64], line[1024];
    snprintf(path, sizeof path, "/proc/%d/smaps", (int)pid);
    FILE *fp = fopen(path, "r");
    if (!fp) return 0;
    uint64_t kb = 0;
    int match = 0;
    size_t k = strlen(suffix);
    while (fgets(line, sizeof line, fp)) {
        size_t n = strlen(line);
        while (n && (line[n - 1] == '\n' || line[n - 1] == ' ')) line[--n] = '\0';
        if (strncmp(line, "Rss:", 4) == 0) {
            if (match) kb += strtoull(line + 4, NULL, 10);
        } else if ((line[0] >= '0' && line[0] <= '9') || (line[0] >= 'a' && line[0] <= 'f')) {
            // a mapping header "start-end perms offset dev inode [path]" (fields are Capitalized)
            match = n >= k && strcmp(line + n - k, suffix) == 0;
        }
    }
    fclose(fp);
    return kb;
}

__attribute__((unused)) static void rss_case(void) {
    double t_case = ff_now();
    char dir[1024];
    if (lp_fixture_model("faults_rss", RSS_GEN, dir, sizeof dir) != 0) {
        CHECK_MSG(0, "cannot make the RSS model");
        return;
    }
    char path[1200];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    struct stat sb;
    CHECK(stat(path, &sb) == 0);
    double model_mb = (double)sb.st_size / 1e6;
    struct ff_worker w;
    if (ff_worker_start(&w, dir, "rss-w1") != 0) {
        CHECK_MSG(0, "rss: worker did not start");
        return;
    }
    double idle_mb = (double)proc_status_kb(w.pid, "VmRSS:") * 1024 / 1e6;
    // the worker gets layers [6, 8) of 8; context 256, the default 4 sessions
    const char *bin = lp_fixture_env("LP_BIN", "build/layerpipe");
    char out[1100], err[1100];
    snprintf(out, sizeof out, "%s/rss.out", ff_scratch);
    snprintf(err, sizeof err, "%s/rss.err", ff_scratch);
    char *argv[] = {(char *)bin, "run", "-m", dir, "--prompt-ids", "1 2 3 4 5 6 7 8", "-n", "16",
                    "--temp", "0", "--ignore-eos", "--print-ids", "--ctx", "256", "--threads",
                    "1", "--workers", w.addr, "--plan", "6,2", NULL};
    pid_t c = ff_spawn(argv, out, err);
    int rc = ff_wait(c, 60);
    char errtxt[8192];
    ff_read_file(err, errtxt, sizeof errtxt);
    CHECK_MSG(rc == 0, "rss: run through the worker: rc %d: %s", rc, errtxt);
    double rss_mb = (double)proc_status_kb(w.pid, "VmRSS:") * 1024 / 1e6;
    double hwm_mb = (double)proc_status_kb(w.pid, "VmHWM:") * 1024 / 1e6;
    double file_mb = (double)smaps_rss_kb(w.pid, "/model.safetensors") * 1024 / 1e6;
    // KV: 2 layers x 4 sessions x 256 positions x (K and V) x 8 kv heads x 64 x f32
    double kv_mb = 2.0 * 4 * 256 * 2 * 8 * 64 * 4 / 1e6;
    double share_mb = model_mb * 2.0 / 8.0;
    double bound_mb = share_mb + kv_mb + 60.0;
    printf("rss: model %.1f MB, worker share (2/8) %.1f MB, KV %.1f MB; worker RSS idle %.1f MB, "
           "after run %.1f MB (peak %.1f MB), of which model file pages %.1f MB; bound %.1f MB\n",
           model_mb, share_mb, kv_mb, idle_mb, rss_mb, hwm_mb, file_mb, bound_mb);
    CHECK_MSG(rss_mb > 0, "rss: cannot read VmRSS of %d", (int)w.pid);
    CHECK_MSG(rss_mb < bound_mb, "rss: worker RSS %.1f MB >= share %.1f + KV %.1f + 60 MB", rss_mb,
              share_mb, kv_mb);
    CHECK_MSG(rss_mb < 0.75 * model_mb, "rss: worker RSS %.1f MB is not clearly below the %.1f "
              "MB model", rss_mb, model_mb);
    // the pages of the model file it keeps mapped are its layers, not the
    // tensors it only looked at (the fingerprint's samples, the config)
    CHECK_MSG(file_mb < 1.25 * share_mb + 4.0,
              "rss: %.1f MB of the model file resident in the worker, its share is %.1f MB",
              file_mb, share_mb);
    ff_stop(w.pid);
    printf("rss: %.1f s\n", ff_now() - t_case);
}

int main(void) {
    if (ff_setup("faults") != 0) {
        fprintf(stderr, "cannot make the scratch folder\n");
        return 1;
    }
    if (lp_fixture_model("faults_slow", SLOW_GEN, slow_dir, sizeof slow_dir) != 0) {
        fprintf(stderr, "cannot make the test model\n");
        return 1;
    }
    // the one-process reference for the reruns through survivors
    struct coord ref;
    coord_start(&ref, slow_dir, NULL, NULL, "8", "ref");
    CHECK(ff_wait(ref.pid, 60) == 0);
    ff_read_file(ref.out, ref_ids, sizeof ref_ids);
    CHECK(strlen(ref_ids) > 8);

    fault_case(0, false);
    fault_case(1, false);
    fault_case(0, true);
#if defined(__SANITIZE_ADDRESS__)
    // AddressSanitizer's shadow memory and quarantine inflate every RSS
    // figure; the memory bound is checked in the release run.
    printf("rss: not measured under AddressSanitizer (checked in the release build)\n");
#else
    rss_case();
#endif
    return lp_test_finish("cluster/test_faults");
}
