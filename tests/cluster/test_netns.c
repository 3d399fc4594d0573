// SPDX-License-Identifier: MIT
// test_netns.c -- network faults between two stages, on a real link: the
// last worker runs in a network namespace of its own (made and removed by
// this test: ip netns, a veth pair 10.231.N.1 <-> 10.231.N.2), so the
// stage 1 -> stage 2 hop and the stage 2 -> Sink hop cross a link the test
// can cut. The coordinator (pipeline + scheduler) runs in this process.
//  - a link cut (the veth set down) for about a second: the steps pass
//    their deadline, the stage is probed until the link is back, and the
//    request goes on with exactly the undisturbed output;
//  - a stall (SIGSTOP of the namespaced worker): recovered the same way;
//  - a link cut that lasts: the request ends with a clear error within the
//    recovery deadline, and the coordinator is still there.
// Skipped, with a message, where namespaces cannot be made (not root, no
// CAP_NET_ADMIN, no iproute2).
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cluster/fault_fixture.h"
#include "layerpipe/cluster.h"
#include "cluster/sched_fixture.h"
#include "layerpipe/tokenizer.h"
#include "lp_test.h"

#define N_GEN 100

static char model_dir[1024], ns[32], veth_host[16], veth_ns[16], host_ip[32], ns_ip[32];

static void netns_down(void) {
    char cmd[256];
    snprintf(cmd, sizeof cmd, "ip netns del %s 2>/dev/null; ip link del %s 2>/dev/null", ns,
             veth_host);
    if (system(cmd) != 0) { /* already gone */
    }
}

// The namespace and its link; false (reason printed) where it cannot be made.
static bool netns_up(void) {
    int n = (int)(getpid() % 200) + 20;
    snprintf(ns, sizeof ns, "lpt%d", (int)getpid());
    snprintf(veth_host, sizeof veth_host, "lpth%d", (int)(getpid() % 100000));
    snprintf(veth_ns, sizeof veth_ns, "lptn%d", (int)(getpid() % 100000));
    snprintf(host_ip, sizeof host_ip, "10.231.%d.1", n);
    snprintf(ns_ip, sizeof ns_ip, "10.231.%d.2", n);
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "set -e; ip netns add %s; ip link add %s type veth peer name %s; "
             "ip link set %s netns %s; ip addr add %s/24 dev %s; ip link set %s up; "
             "ip netns exec %s ip addr add %s/24 dev %s; ip netns exec %s ip link set %s up; "
             "ip netns exec %s ip link set lo up",
             ns, veth_host, veth_ns, veth_ns, ns, host_ip, veth_host, veth_host, ns, ns_ip, veth_ns,
             ns, veth_ns, ns);
    if (geteuid() != 0 || system("command -v ip >/dev/null 2>&1") != 0 ||
        system(cmd) != 0) {
        netns_down();
        printf("cluster/test_netns: skipped: cannot make a network namespace here (needs root, "
               "CAP_NET_ADMIN and iproute2)\n");
        return false;
    }
    return true;
}

static void link_set(const char *state) {
    char cmd[128];
    snprintf(cmd, sizeof cmd, "ip link set %s %s", veth_host, state);
    CHECK(system(cmd) == 0);
}

// ---- a request ----

static struct lp_token_list prompt;

static void start(struct lp_sched *s, struct got *g) {
    got_init(g);
    struct lp_sched_request rq = {.prompt = prompt.ids, .n_prompt = (int)prompt.n_ids,
                                  .max_new_tokens = N_GEN, .ignore_eos = true,
                                  .sampling = lp_sampler_params_default(), .on_event = got_on_event,
                                  .user = g};
    uint64_t id;
    struct lp_error err = {0};
    CHECK_OK(lp_sched_submit(s, &rq, &id, &err), &err);
}

// Starts the namespaced worker on ns_ip:port (port 0: any).
static pid_t ns_worker(int *port) {
    const char *bin = lp_fixture_env("LP_BIN", "build/layerpipe");
    char listen[64], port_file[1200], log[1200];
    snprintf(listen, sizeof listen, "%s:%d", ns_ip, *port);
    snprintf(port_file, sizeof port_file, "%s/ns.port", ff_scratch);
    snprintf(log, sizeof log, "%s/ns.log", ff_scratch);
    unlink(port_file);
    char *argv[] = {"/usr/sbin/ip", "netns", "exec", ns, (char *)bin, "worker", "-m", model_dir,
                    "--listen", listen, "--port-file", port_file, "--threads", "1", NULL};
    if (access(argv[0], X_OK) != 0) argv[0] = "/sbin/ip";
    pid_t pid = ff_spawn(argv, NULL, log);
    char buf[64];
    for (int t = 0; t < 3000; t++) {
        if (ff_read_file(port_file, buf, sizeof buf) && atoi(buf) > 0) {
            *port = atoi(buf);
            return pid;
        }
        usleep(10000);
    }
    return -1;
}

int main(void) {
    if (ff_setup("netns") != 0) return 1;
    if (!netns_up()) return 0;
    const char *src = getenv("LP_SOURCE_DIR");
    snprintf(model_dir, sizeof model_dir, "%s/models/layerpipe-tiny-8bit", src ? src : ".");
    struct lp_tokenizer *tok = NULL;
    struct lp_error err = {0};
    CHECK_OK(lp_tokenizer_load(&tok, model_dir, &err), &err);
    lp_token_list_init(&prompt);
    if (tok) CHECK_OK(lp_tokenizer_encode(tok, "And it came to pass", 19, 0, &prompt, &err), &err);
    struct ff_worker w1;
    int port2 = 0;
    pid_t w2 = -1;
    struct lp_pipeline *p = NULL;
    struct lp_sched *s = NULL;
    if (!tok || ff_worker_start(&w1, model_dir, "w1") != 0 || (w2 = ns_worker(&port2)) < 0) {
        CHECK_MSG(false, "workers did not start");
        goto done;
    }
    char addr2[64], sink[64];
    snprintf(addr2, sizeof addr2, "%s:%d", ns_ip, port2);
    snprintf(sink, sizeof sink, "%s:0", host_ip);
    const char *addrs[2] = {w1.addr, addr2};
    struct lp_pipeline_params pp = lp_pipeline_params_default();
    pp.model_dir = model_dir;
    pp.workers = addrs;
    pp.n_workers = 2;
    pp.plan = "4,3,3";
    pp.n_threads = 1;
    pp.max_context = 256;
    pp.timeout_ms = 800;
    pp.recover_timeout_ms = 6000;
    pp.sink_listen = sink; // the namespaced last stage dials the Sink across the link
    CHECK_OK(lp_pipeline_create(&p, &pp, &err), &err);
    struct lp_sched_params sp = lp_sched_params_default();
    if (p) CHECK_OK(lp_sched_create(&s, p, &sp, &err), &err);
    if (!s) goto done;
    struct got ref, g;
    start(s, &ref);
    got_wait(&ref);
    CHECK(ref.status == LP_OK && ref.n == N_GEN);
    // a link cut of about a second
    start(s, &g);
    got_wait_tokens(&g, 30);
    double t0 = ff_now();
    link_set("down");
    usleep(1200000);
    link_set("up");
    got_wait(&g);
    printf("link cut 1.2 s: %s, %d tokens, %.2f s after the cut\n", lp_status_str(g.status), g.n,
           ff_now() - t0);
    CHECK_MSG(g.status == LP_OK && memcmp(g.ids, ref.ids, sizeof g.ids) == 0,
              "after a link cut: %s: %s", lp_status_str(g.status), g.error);
    // a stall of the namespaced stage
    start(s, &g);
    got_wait_tokens(&g, 50);
    kill(w2, SIGSTOP);
    usleep(1500000);
    kill(w2, SIGCONT);
    got_wait(&g);
    printf("stall 1.5 s (SIGSTOP): %s, %d tokens\n", lp_status_str(g.status), g.n);
    CHECK_MSG(g.status == LP_OK && memcmp(g.ids, ref.ids, sizeof g.ids) == 0,
              "after a stall: %s: %s", lp_status_str(g.status), g.error);
    // a cut that lasts: a clear error within the deadline (step 0.8 s + recovery 6 s)
    start(s, &g);
    got_wait_tokens(&g, 20);
    t0 = ff_now();
    link_set("down");
    got_wait(&g);
    double dt = ff_now() - t0;
    printf("lasting cut: %s after %.2f s: %.200s\n", lp_status_str(g.status), dt, g.error);
    CHECK_MSG(g.status == LP_ERR_NETWORK && strstr(g.error, "did not come back") && dt < 9.0,
              "a lasting cut: %s after %.1f s: %s", lp_status_str(g.status), dt, g.error);
    link_set("up");
    // and the coordinator serves again once the link is back
    start(s, &g);
    got_wait(&g);
    CHECK_MSG(g.status == LP_OK && memcmp(g.ids, ref.ids, sizeof g.ids) == 0,
              "after the link came back: %s: %s", lp_status_str(g.status), g.error);
done:
    lp_sched_destroy(s);
    lp_pipeline_destroy(p);
    if (w2 > 0) {
        kill(w2, SIGCONT);
        ff_stop(w2);
    }
    ff_kill_all();
    netns_down();
    lp_token_list_deinit(&prompt);
    lp_tokenizer_destroy(tok);
    return lp_test_finish("cluster/test_netns");
}
