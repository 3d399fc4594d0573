// SPDX-License-Identifier: MIT
// test_security.c -- the secured data plane on loopback, with certificates
// made here by `layerpipe certs` and tools/make-certs.sh (openssl):
// `layerpipe worker` processes serving gRPC over mutual TLS with a cluster
// token, probed from this process through the rpc client.
//   refused, with a clear message on both sides (the caller's error, the
//   worker's stderr), while the stage keeps serving the right clients: a
//   plaintext client, a client of another CA, a client with an expired
//   certificate, a client without the token, one with a wrong token;
//   with TLS but without the token a third party can neither Configure,
//   Release, Forward (a stream) nor read Stats; Health only with
//   --health-open;
//   a secured pipeline (coordinator + 2 TLS workers with the token, set in a
//   cluster file) generates the same ids (sampled with a seed) as an
//   insecure one;
//   the coordinator's Sink refuses a caller without the token (Health and
//   its stream);
//   `layerpipe cluster` starts its workers with the security given to it,
//   given to the command after "--", or in a cluster file of loopback
//   workers: each generates the same ids (the coordinator's TLS client and
//   its Sink's token check would refuse workers without them);
//   a worker listening beyond loopback without security warns;
//   the client keepalive suits a stock gRPC server (>= 5 min, no pings
//   without a call).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <sys/socket.h>

#include "cluster/rpc_internal.h"
#include "fault_fixture.h"
#include "lp_test.h"

#define GEN                                                                                        \
    "--seed 301 --format hf-bf16 --tied 1 --layers 4 --hidden 64 --heads 4 --kv-heads 2 "         \
    "--head-dim 32 --intermediate 128 --vocab 256"

static char model_dir[1024], pki[1100], other[1100];

static void path(char *out, size_t n, const char *dir, const char *file) {
    snprintf(out, n, "%s/%s", dir, file);
}

// Starts a worker with extra arguments (NULL-terminated).
static int worker_start(struct ff_worker *w, const char *tag, ...) {
    const char *bin = lp_fixture_env("LP_BIN", "build/layerpipe");
    char port_file[1100];
    snprintf(port_file, sizeof port_file, "%s/%s.port", ff_scratch, tag);
    snprintf(w->log, sizeof w->log, "%s/%s.log", ff_scratch, tag);
    char *argv[40];
    int k = 0;
    argv[k++] = (char *)bin;
    argv[k++] = "worker";
    argv[k++] = "-m";
    argv[k++] = model_dir;
    argv[k++] = "--port-file";
    argv[k++] = port_file;
    argv[k++] = "--threads";
    argv[k++] = "1";
    va_list ap;
    va_start(ap, tag);
    for (char *a; (a = va_arg(ap, char *)) && k < 39;) argv[k++] = a;
    va_end(ap);
    argv[k] = NULL;
    w->pid = ff_spawn(argv, NULL, w->log);
    w->port = 0;
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

// A client's settings: certificate `who` of CA folder `ca_dir` (NULL: no
// TLS), trusting the CA of folder `trust` (NULL: ca_dir's), the token file
// (NULL: none).
static struct lp_rpc_security *client_sec3(const char *ca_dir, const char *who, const char *trust,
                                           const char *token) {
    static char cert[1200], key[1200], ca[1200];
    struct lp_security_params p = {0};
    if (ca_dir) {
        snprintf(cert, sizeof cert, "%s/%s.pem", ca_dir, who);
        snprintf(key, sizeof key, "%s/%s.key", ca_dir, who);
        snprintf(ca, sizeof ca, "%s/ca.pem", trust ? trust : ca_dir);
        p.tls_cert = cert;
        p.tls_key = key;
        p.tls_ca = ca;
    }
    p.token_file = token;
    struct lp_rpc_security *sec = NULL;
    struct lp_error err = {0};
    CHECK_OK(lp_rpc_security_create(&sec, &p, &err), &err);
    return sec;
}

static struct lp_rpc_security *client_sec(const char *ca_dir, const char *who, const char *token) {
    return client_sec3(ca_dir, who, NULL, token);
}

// One unary call with `sec`; its status, and its message in msg.
static enum lp_status call(const char *addr, const struct lp_rpc_security *sec, const char *method,
                           const ProtobufCMessage *req, char *msg, size_t n_msg) {
    struct lp_rpc_channel *ch = NULL;
    struct lp_error err = {0};
    enum lp_status st = lp_rpc_channel_create(&ch, addr, LP_MAX_MESSAGE_BYTES, sec, &err);
    if (st == LP_OK) {
        uint8_t *buf = NULL, *resp = NULL;
        size_t n = 0, n_resp = 0;
        if ((st = lp_pb_pack(req, &buf, &n, &err)) == LP_OK)
            st = lp_rpc_call_unary(ch, method, buf, n, &resp, &n_resp, 5000, &err);
        free(buf);
        free(resp);
        lp_rpc_channel_destroy(ch);
    }
    snprintf(msg, n_msg, "%s", st == LP_OK ? "" : err.msg);
    return st;
}

static enum lp_status hello(const char *addr, const struct lp_rpc_security *sec, char *msg,
                            size_t n) {
    Layerpipe__V1__HelloRequest req = LAYERPIPE__V1__HELLO_REQUEST__INIT;
    req.protocol_version = LP_PROTOCOL_VERSION;
    return call(addr, sec, LP_M_HELLO, &req.base, msg, n);
}

// Waits up to 3 s for `what` in the worker's stderr past byte `from`.
static bool log_has_from(const struct ff_worker *w, size_t from, const char *what) {
    static char buf[1 << 18];
    size_t n = 0;
    if (!what) return true;
    for (double end = ff_now() + 3; ff_now() < end; usleep(20000)) {
        n = ff_read_file(w->log, buf, sizeof buf);
        if (n > from && strstr(buf + from, what)) return true;
    }
    fprintf(stderr, "worker log %s:\n%s\n", w->log, n > from ? buf + from : "");
    return false;
}

static bool log_has(const struct ff_worker *w, const char *what) { return log_has_from(w, 0, what); }

static size_t log_size(const struct ff_worker *w) {
    struct stat sb;
    return stat(w->log, &sb) == 0 ? (size_t)sb.st_size : 0;
}

// The refusals; after each, the right client is still served.
static void refusals(const struct ff_worker *w, const struct lp_rpc_security *good) {
    char msg[512];
    struct {
        const char *what;
        struct lp_rpc_security *sec;
        const char *client_says; // in the caller's error
        const char *server_says; // in the worker's stderr
    } cases[] = {
        {"plaintext client", client_sec(NULL, NULL, NULL), "serving TLS?", "wrong version number"},
        // the client refuses the server: the server need not learn why
        {"client trusting another CA", client_sec(other, "localhost", NULL),
         "TLS handshake failed", NULL},
        {"client certificate of another CA", client_sec3(other, "localhost", pki, NULL),
         "TLS handshake failed", "certificate verify failed"},
        {"expired client certificate", client_sec(pki, "expired", NULL), "TLS handshake failed",
         "certificate verify failed"},
        {"no token", client_sec(pki, "localhost", NULL), "UNAUTHENTICATED: no cluster token",
         "no cluster token"},
        {"wrong token", NULL /* below */, "UNAUTHENTICATED: wrong cluster token", "wrong cluster token"},
    };
    char wrong[1200];
    path(wrong, sizeof wrong, ff_scratch, "wrong-token");
    cases[5].sec = client_sec(pki, "localhost", wrong);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t from = log_size(w); // only this case's lines
        enum lp_status st = hello(w->addr, cases[i].sec, msg, sizeof msg);
        printf("%-32s -> %s\n", cases[i].what, msg);
        CHECK_MSG(st != LP_OK && strstr(msg, cases[i].client_says), "%s: %s", cases[i].what, msg);
        CHECK_MSG(log_has_from(w, from, cases[i].server_says), "%s: the worker did not say '%s'",
                  cases[i].what, cases[i].server_says);
        CHECK_MSG(hello(w->addr, good, msg, sizeof msg) == LP_OK,
                  "after the %s the right client is refused: %s", cases[i].what, msg);
        lp_rpc_security_destroy(cases[i].sec);
    }
}

// Forward without the token: the stream ends UNAUTHENTICATED.
static enum lp_status fwd_status;
static char fwd_msg[512];
static void fwd_reply(void *u, const uint8_t *m, size_t n) {}
static void fwd_end(void *u, enum lp_status st, const char *msg) {
    fwd_status = st;
    snprintf(fwd_msg, sizeof fwd_msg, "%s", msg);
}

static void third_party(const struct ff_worker *w, const struct lp_rpc_security *good) {
    struct lp_rpc_security *tp = client_sec(pki, "localhost", NULL); // a cluster cert, no token
    char msg[512];
    Layerpipe__V1__ConfigureRequest c = LAYERPIPE__V1__CONFIGURE_REQUEST__INIT;
    c.layer_begin = 0;
    c.layer_end = 2;
    c.successor = "127.0.0.1:1";
    c.max_sessions = 1;
    c.max_context = 64;
    c.max_batch_tokens = 8;
    CHECK(call(w->addr, tp, LP_M_CONFIGURE, &c.base, msg, sizeof msg) != LP_OK &&
          strstr(msg, "UNAUTHENTICATED"));
    printf("third party Configure        -> %s\n", msg);
    uint64_t ids[3] = {1, 2, 3};
    Layerpipe__V1__ReleaseRequest r = LAYERPIPE__V1__RELEASE_REQUEST__INIT;
    r.n_sessions = 3;
    r.sessions = ids;
    CHECK(call(w->addr, tp, LP_M_RELEASE, &r.base, msg, sizeof msg) != LP_OK &&
          strstr(msg, "UNAUTHENTICATED"));
    printf("third party Release          -> %s\n", msg);
    Layerpipe__V1__StatsRequest s = LAYERPIPE__V1__STATS_REQUEST__INIT;
    CHECK(call(w->addr, tp, LP_M_STATS, &s.base, msg, sizeof msg) != LP_OK &&
          strstr(msg, "UNAUTHENTICATED"));
    printf("third party Stats            -> %s\n", msg);
    Grpc__Health__V1__HealthCheckRequest h = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    CHECK(call(w->addr, tp, LP_M_HEALTH, &h.base, msg, sizeof msg) != LP_OK &&
          strstr(msg, "UNAUTHENTICATED"));
    printf("third party Health           -> %s\n", msg);
    CHECK_MSG(call(w->addr, good, LP_M_HEALTH, &h.base, msg, sizeof msg) == LP_OK, "%s", msg);

    struct lp_rpc_channel *ch = NULL;
    struct lp_error err = {0};
    CHECK_OK(lp_rpc_channel_create(&ch, w->addr, LP_MAX_MESSAGE_BYTES, tp, &err), &err);
    struct lp_rpc_client_stream *cs = NULL;
    fwd_status = LP_OK;
    CHECK_OK(lp_rpc_stream_open(ch, LP_M_FORWARD, fwd_reply, fwd_end, NULL, &cs, &err), &err);
    if (cs) {
        lp_rpc_client_stream_write(cs, (const uint8_t *)"\x08\x01", 2, NULL);
        lp_rpc_client_stream_close(cs, 3000);
    }
    lp_rpc_channel_destroy(ch);
    printf("third party Forward          -> %s\n", fwd_msg);
    CHECK_MSG(fwd_status != LP_OK && strstr(fwd_msg, "UNAUTHENTICATED"), "Forward: %s", fwd_msg);
    lp_rpc_security_destroy(tp);
}

// Runs argv (stdout to out, stderr to errp; at most 90 s); its stdout into ids.
static int spawn_ids(const char *tag, char **argv, const char *out, const char *errp, char *ids,
                     size_t n) {
    pid_t pid = ff_spawn(argv, out, errp);
    int rc = ff_wait(pid, 90);
    ff_read_file(out, ids, n);
    if (rc != 0) {
        char e[4096];
        ff_read_file(errp, e, sizeof e);
        fprintf(stderr, "%s: rc %d: %s\n", tag, rc, e);
    }
    return rc;
}

// `layerpipe run` through workers; its ids (stdout) into ids.
static int run_ids(const char *tag, char *ids, size_t n, const char *first, ...) {
    const char *bin = lp_fixture_env("LP_BIN", "build/layerpipe");
    char out[1200], errp[1200];
    snprintf(out, sizeof out, "%s/%s.out", ff_scratch, tag);
    snprintf(errp, sizeof errp, "%s/%s.err", ff_scratch, tag);
    char *argv[40] = {(char *)bin, "run",  "-m",          model_dir, "--prompt-ids", "1 2 3 4 5",
                      "-n",        "24",   "--temp",      "1.5",     "--ignore-eos", "--print-ids",
                      "--threads", "1"};
    int k = 14;
    // sampled (seeded) rather than greedy: a tiny random model repeats one
    // token greedily, and sampling turns any difference in logits into
    // other ids
    argv[k++] = "--seed";
    argv[k++] = "7";
    va_list ap;
    va_start(ap, first);
    for (const char *a = first; a && k < 39; a = va_arg(ap, const char *)) argv[k++] = (char *)a;
    va_end(ap);
    argv[k] = NULL;
    return spawn_ids(tag, argv, out, errp, ids, n);
}

// `layerpipe cluster -m MODEL ARGS... -- run ...ids args... CMD_ARGS...`
// (two NULL-terminated lists); its ids (stdout) into ids.
static int cluster_ids(const char *tag, char *ids, size_t n, const char *const *args,
                       const char *const *cmd_args) {
    const char *bin = lp_fixture_env("LP_BIN", "build/layerpipe");
    char out[1200], errp[1200];
    snprintf(out, sizeof out, "%s/%s.out", ff_scratch, tag);
    snprintf(errp, sizeof errp, "%s/%s.err", ff_scratch, tag);
    char *argv[64] = {(char *)bin, "cluster", "-m", model_dir, "--worker-threads", "1"};
    int k = 6;
    for (int i = 0; args[i] && k < 40; i++) argv[k++] = (char *)args[i];
    const char *run[] = {"--", "run", "--prompt-ids", "1 2 3 4 5", "-n", "24", "--temp", "1.5",
                         "--ignore-eos", "--print-ids", "--threads", "1", "--seed", "7", NULL};
    for (int i = 0; run[i]; i++) argv[k++] = (char *)run[i];
    for (int i = 0; cmd_args[i] && k < 63; i++) argv[k++] = (char *)cmd_args[i];
    argv[k] = NULL;
    return spawn_ids(tag, argv, out, errp, ids, n);
}

static int free_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t n = sizeof a;
    int port = 0;
    if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &n) == 0)
        port = ntohs(a.sin_port);
    if (fd >= 0) close(fd);
    return port;
}

// A cluster file of the coordinator (2 layers) and two workers (1 layer
// each) with the cluster PKI's security, paths relative to the file.
static bool write_secure_cluster(const char *file, const char *host1, int port1,
                                 const char *host2, int port2) {
    FILE *fp = fopen(file, "w");
    if (!fp) return false;
    fprintf(fp,
            "{\"stages\": [{\"role\": \"coordinator\", \"layers\": 2},\n"
            "  {\"address\": \"%s:%d\", \"layers\": 1},\n"
            "  {\"address\": \"%s:%d\", \"layers\": 1}],\n"
            " \"security\": {\"tls_cert\": \"pki/localhost.pem\", \"tls_key\": "
            "\"pki/localhost.key\",\n"
            "  \"tls_ca\": \"pki/ca.pem\", \"cluster_token_file\": \"pki/cluster-token\"}}\n",
            host1, port1, host2, port2);
    return fclose(fp) == 0;
}

// A secured coordinator in this process: its Sink refuses callers without
// the token, and serves its stages.
static void sink_case(const struct ff_worker *s1, const struct ff_worker *s2, const char *cert,
                      const char *key, const char *ca, const char *token) {
    char sink[64];
    snprintf(sink, sizeof sink, "127.0.0.1:%d", free_port());
    const char *workers[2] = {s1->addr, s2->addr};
    struct lp_pipeline_params pp = lp_pipeline_params_default();
    pp.model_dir = model_dir;
    pp.workers = workers;
    pp.n_workers = 2;
    pp.plan = "2,1,1";
    pp.n_threads = 1;
    pp.sink_listen = sink;
    pp.security = (struct lp_security_params){cert, key, ca, token, false, NULL, NULL};
    struct lp_pipeline *p = NULL;
    struct lp_error err = {0};
    CHECK_OK(lp_pipeline_create(&p, &pp, &err), &err);
    if (!p) return;
    struct lp_rpc_security *tp = client_sec(pki, "localhost", NULL);
    struct lp_rpc_security *good = client_sec(pki, "localhost", token);
    char msg[512];
    Grpc__Health__V1__HealthCheckRequest h = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    CHECK(call(sink, tp, LP_M_HEALTH, &h.base, msg, sizeof msg) != LP_OK &&
          strstr(msg, "UNAUTHENTICATED: no cluster token"));
    printf("Sink Health without token    -> %s\n", msg);
    CHECK_MSG(call(sink, good, LP_M_HEALTH, &h.base, msg, sizeof msg) == LP_OK, "%s", msg);
    struct lp_rpc_channel *ch = NULL;
    CHECK_OK(lp_rpc_channel_create(&ch, sink, LP_MAX_MESSAGE_BYTES, tp, &err), &err);
    struct lp_rpc_client_stream *cs = NULL;
    fwd_status = LP_OK;
    CHECK_OK(lp_rpc_stream_open(ch, LP_M_SINK, fwd_reply, fwd_end, NULL, &cs, &err), &err);
    if (cs) lp_rpc_client_stream_close(cs, 3000);
    lp_rpc_channel_destroy(ch);
    printf("Sink stream without token    -> %s\n", fwd_msg);
    CHECK_MSG(fwd_status != LP_OK && strstr(fwd_msg, "UNAUTHENTICATED"), "Sink: %s", fwd_msg);
    lp_rpc_security_destroy(tp);
    lp_rpc_security_destroy(good);
    lp_pipeline_destroy(p);
}

// Client channel arguments a stock server accepts (its default policy: one
// ping per 5 min without data, none without a call, GOAWAY after 2 strikes).
static void keepalive_case(void) {
    struct lp_rpc_args st;
    const grpc_channel_args *a = lp_rpc_args_fill(&st, 0, 0);
    int time_ms = -1, permit = -1;
    for (size_t i = 0; i < a->num_args; i++) {
        if (strcmp(a->args[i].key, GRPC_ARG_KEEPALIVE_TIME_MS) == 0) time_ms = a->args[i].value.integer;
        if (strcmp(a->args[i].key, GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS) == 0)
            permit = a->args[i].value.integer;
    }
    CHECK_MSG(time_ms >= 5 * 60 * 1000, "client keepalive %d ms, a stock server allows 5 min",
              time_ms);
    CHECK_MSG(permit == 0, "client pings without a call: %d", permit);
}

// The cluster file's "security": paths relative to the file, unknown keys refused.
static void cluster_file_case(void) {
    char f[1200];
    path(f, sizeof f, ff_scratch, "sec.json");
    struct lp_cluster_spec spec;
    struct lp_error err = {0};
    FILE *fp = fopen(f, "w");
    if (!fp) return;
    fprintf(fp, "{\"stages\": [{\"role\": \"coordinator\"}, {\"address\": \"h:1\"}],"
                " \"security\": {\"tls_cert\": \"c.pem\", \"tls_key\": \"/k.pem\","
                " \"cluster_token_file\": \"t\", \"health_open\": true}}");
    fclose(fp);
    memset(&spec, 0, sizeof spec);
    CHECK_OK(lp_cluster_spec_read_file(&spec, f, &err), &err);
    char want[1300];
    snprintf(want, sizeof want, "%s/c.pem", ff_scratch);
    CHECK_MSG(strcmp(spec.tls_cert, want) == 0, "tls_cert '%s'", spec.tls_cert);
    CHECK(strcmp(spec.tls_key, "/k.pem") == 0 && spec.tls_ca[0] == '\0' && spec.health_open);
    fp = fopen(f, "w");
    if (!fp) return;
    fprintf(fp, "{\"stages\": [{\"role\": \"coordinator\"}], \"security\": {\"tls_crt\": \"x\"}}");
    fclose(fp);
    memset(&spec, 0, sizeof spec);
    CHECK(lp_cluster_spec_read_file(&spec, f, &err) == LP_ERR_FORMAT &&
          strstr(err.msg, "security.tls_crt: unknown key"));
    printf("cluster file typo            -> %s\n", err.msg);
    // settings that cannot work are refused before anything starts
    struct lp_rpc_security *sec = NULL;
    struct lp_security_params only_cert = {.tls_cert = "c.pem"};
    CHECK(lp_rpc_security_create(&sec, &only_cert, &err) == LP_ERR_INVALID_ARG && !sec &&
          strstr(err.msg, "--tls-cert given without --tls-key"));
    struct lp_security_params short_token = {.token_file = f}; // not one printable line >= 16
    CHECK(lp_rpc_security_create(&sec, &short_token, &err) == LP_ERR_FORMAT && !sec);
    printf("bad token file               -> %s\n", err.msg);
}

int main(void) {
    if (ff_setup("security") != 0 || lp_fixture_model("security", GEN, model_dir, sizeof model_dir)) {
        fprintf(stderr, "cannot make the scratch folder or the test model\n");
        return 1;
    }
    // certificates: the cluster CA with "localhost" and an expired one, and another CA
    const char *src = lp_fixture_env("LP_SOURCE_DIR", ".");
    path(pki, sizeof pki, ff_scratch, "pki");
    path(other, sizeof other, ff_scratch, "other");
    char cmd[4096];
    snprintf(cmd, sizeof cmd,
             "'%s' certs --out '%s' --hosts localhost >/dev/null && "
             "sh '%s/tools/make-certs.sh' --out '%s' --hosts expired --expired >/dev/null && "
             "sh '%s/tools/make-certs.sh' --out '%s' --hosts localhost >/dev/null && "
             "echo 0123456789abcdef-not-the-token > '%s/wrong-token'",
             lp_fixture_env("LP_BIN", "build/layerpipe"), pki, src, pki, src, other, ff_scratch);
    if (system(cmd) != 0) {
        fprintf(stderr, "cannot make the certificates (is openssl installed?): %s\n", cmd);
        return 1;
    }
    char cert[1200], key[1200], ca[1200], token[1200];
    path(cert, sizeof cert, pki, "localhost.pem");
    path(key, sizeof key, pki, "localhost.key");
    path(ca, sizeof ca, pki, "ca.pem");
    path(token, sizeof token, pki, "cluster-token");

    // every worker before this process starts gRPC (fork after gRPC threads is unsafe)
    struct ff_worker s1, s2, p1, p2, open;
    CHECK(worker_start(&s1, "secure1", "--listen", "127.0.0.1:0", "--tls-cert", cert, "--tls-key",
                       key, "--tls-ca", ca, "--cluster-token-file", token, NULL) == 0);
    CHECK(worker_start(&s2, "secure2", "--listen", "127.0.0.1:0", "--tls-cert", cert, "--tls-key",
                       key, "--tls-ca", ca, "--cluster-token-file", token, NULL) == 0);
    CHECK(worker_start(&p1, "plain1", "--listen", "127.0.0.1:0", NULL) == 0);
    CHECK(worker_start(&p2, "plain2", "--listen", "127.0.0.1:0", NULL) == 0);
    CHECK(worker_start(&open, "open", "--listen", "0.0.0.0:0", "--cluster-token-file", token,
                       "--health-open", NULL) == 0);
    if (lp_test_failures) return lp_test_finish("cluster/test_security");

    // a port beyond loopback without TLS: a warning; health open, Stats not
    CHECK(log_has(&open, "WARNING: listening on 0.0.0.0:0 without TLS"));
    char plain_log[8192];
    ff_read_file(p1.log, plain_log, sizeof plain_log);
    CHECK_MSG(!strstr(plain_log, "WARNING"), "a loopback worker warned: %s", plain_log);
    {
        char msg[512];
        Grpc__Health__V1__HealthCheckRequest h = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
        CHECK_MSG(call(open.addr, NULL, LP_M_HEALTH, &h.base, msg, sizeof msg) == LP_OK,
                  "--health-open: %s", msg);
        Layerpipe__V1__StatsRequest s = LAYERPIPE__V1__STATS_REQUEST__INIT;
        CHECK(call(open.addr, NULL, LP_M_STATS, &s.base, msg, sizeof msg) != LP_OK &&
              strstr(msg, "no cluster token"));
        printf("token only, no token: Stats  -> %s\n", msg);
    }

    struct lp_rpc_security *good = client_sec(pki, "localhost", token);
    char msg[512];
    CHECK_MSG(hello(s1.addr, good, msg, sizeof msg) == LP_OK, "the right client: %s", msg);
    refusals(&s1, good);
    third_party(&s1, good);
    lp_rpc_security_destroy(good);
    keepalive_case();
    cluster_file_case();

    // the same ids through the secured ring (its settings in a cluster file)
    // as through plaintext workers
    char plain_ids[4096], secure_ids[4096], workers[256], cluster[1200];
    snprintf(workers, sizeof workers, "%s,%s", p1.addr, p2.addr);
    CHECK(run_ids("plain", plain_ids, sizeof plain_ids, "--workers", workers, "--plan", "2,1,1",
                  NULL) == 0);
    path(cluster, sizeof cluster, ff_scratch, "cluster.json");
    CHECK(write_secure_cluster(cluster, "localhost", s1.port, "localhost", s2.port));
    CHECK(run_ids("secure", secure_ids, sizeof secure_ids, "--cluster", cluster, NULL) == 0);
    printf("plain ids:  %s", plain_ids);
    printf("secure ids: %s", secure_ids);
    CHECK_MSG(strlen(plain_ids) > 10 && strcmp(plain_ids, secure_ids) == 0,
              "secured ring '%s', plaintext ring '%s'", secure_ids, plain_ids);
    // the secured coordinator without the token is refused by its first stage
    char none_ids[4096];
    CHECK(run_ids("no-token", none_ids, sizeof none_ids, "--workers", s1.addr, "--plan", "2,2",
                  "--tls-cert", cert, "--tls-key", key, "--tls-ca", ca, NULL) != 0);
    char e[4096];
    ff_read_file(strcat(strcpy(cmd, ff_scratch), "/no-token.err"), e, sizeof e);
    CHECK_MSG(strstr(e, "no cluster token"), "coordinator without the token: %s", e);
    sink_case(&s1, &s2, cert, key, ca, token);

    // `layerpipe cluster`: the security reaches the workers it starts
    {
        char ids[4096];
        const char *own[] = {"--plan", "2,1,1", "--tls-cert", cert, "--tls-key", key, "--tls-ca",
                             ca, "--cluster-token-file", token, NULL};
        const char *none[] = {NULL};
        CHECK(cluster_ids("cluster-own", ids, sizeof ids, own, none) == 0);
        CHECK_MSG(strcmp(ids, plain_ids) == 0, "cluster, security before --: '%s'", ids);
        const char *plan[] = {"--plan", "2,1,1", NULL};
        const char *after[] = {"--tls-cert", cert, "--tls-key", key, "--tls-ca", ca,
                               "--cluster-token-file=", NULL};
        char tok_arg[1300];
        snprintf(tok_arg, sizeof tok_arg, "--cluster-token-file=%s", token);
        after[6] = tok_arg;
        CHECK(cluster_ids("cluster-after", ids, sizeof ids, plan, after) == 0);
        CHECK_MSG(strcmp(ids, plain_ids) == 0, "cluster, security after --: '%s'", ids);
        char local[1200];
        path(local, sizeof local, ff_scratch, "local-cluster.json");
        CHECK(write_secure_cluster(local, "localhost", free_port(), "127.0.0.1", free_port()));
        const char *file[] = {"--cluster", local, NULL};
        CHECK(cluster_ids("cluster-file", ids, sizeof ids, file, none) == 0);
        CHECK_MSG(strcmp(ids, plain_ids) == 0, "cluster --cluster FILE: '%s'", ids);
        // a worker address off loopback is not this machine's to start
        path(local, sizeof local, ff_scratch, "remote-cluster.json");
        FILE *lf = fopen(local, "w");
        if (lf) {
            fprintf(lf, "{\"stages\": [{\"role\": \"coordinator\"}, {\"address\": "
                        "\"10.9.9.9:7070\"}]}\n");
            fclose(lf);
        }
        CHECK(cluster_ids("cluster-remote", ids, sizeof ids, file, none) == 2);
        // nor a name that only looks like loopback, nor an address without a port
        const char *not_loopback[] = {"127.example.com:7070", "127.0.0.1:x", "127.0.0.1:0"};
        for (int i = 0; i < 3; i++) {
            lf = fopen(local, "w");
            if (lf) {
                fprintf(lf, "{\"stages\": [{\"role\": \"coordinator\"}, {\"address\": "
                            "\"%s\"}]}\n", not_loopback[i]);
                fclose(lf);
            }
            CHECK_MSG(cluster_ids("cluster-remote", ids, sizeof ids, file, none) == 2,
                      "a cluster file with worker %s was started", not_loopback[i]);
        }
        printf("cluster: security before --, after --, in a cluster file -> same ids\n");
    }
    return lp_test_finish("cluster/test_security");
}
