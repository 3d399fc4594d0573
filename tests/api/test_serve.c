// SPDX-License-Identifier: MIT
// test_serve.c -- a real `layerpipe serve` on the bundled model, driven with
// curl (every endpoint, every error status, SSE framing, a full queue, a
// client that disconnects, /metrics through promtool) and with the
// official OpenAI Node SDK (tests/api/openai_client.mjs). A second server
// on a scripted model (its greedy output is a fixed think block, text and
// tool call, see make_scripted_model) checks reasoning_content and
// tool_calls end to end. A third, coordinating one stage worker, answers
// 503 once the worker is gone.
#include <stdint.h>

#include <jansson.h>

#include "cluster/cluster_fixture.h"
#include "lp_test.h"
#include "model_fixture.h"

static const char *bin, *work, *src;
static char scratch[1100];          // LP_WORK_DIR/api_scratch: lpc_sh's output files
static char one_process_text[4096]; // a greedy completion of one process, for the pipeline
static const char *completion_body = "{\"prompt\": %s, \"max_tokens\": 12, \"temperature\": 0}";
static char key[] = "sekrit-key";

struct server {
    pid_t pid;
    int port;
    char log[1024];
};

static struct server *servers[4];

static void kill_servers(void) {
    for (int i = 0; i < 4; i++)
        if (servers[i] && servers[i]->pid > 0) {
            kill(servers[i]->pid, SIGKILL);
            waitpid(servers[i]->pid, NULL, 0);
            servers[i]->pid = 0;
        }
}

// Starts `layerpipe serve` with the given extra arguments (NULL-terminated).
static int serve_start(struct server *s, const char *name, const char *const *extra) {
    static bool registered;
    if (!registered) {
        atexit(kill_servers);
        registered = true;
    }
    for (int i = 0; i < 4; i++)
        if (!servers[i]) {
            servers[i] = s;
            break;
        }
    char port_file[1100];
    snprintf(s->log, sizeof s->log, "%s/api_%s.log", work, name);
    snprintf(port_file, sizeof port_file, "%s.port", s->log);
    remove(port_file);
    const char *argv[64] = {bin, "serve", "--listen", "127.0.0.1:0", "--port-file", port_file};
    int n = 6;
    for (int i = 0; extra[i] && n < 62; i++)
        argv[n++] = extra[i];
    argv[n] = NULL;
    pid_t parent = getpid();
    s->pid = fork();
    if (s->pid < 0) return -1;
    if (s->pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(126);
        FILE *e = freopen(s->log, "w", stderr);
        (void)e;
        execv(bin, (char *const *)argv);
        _exit(127);
    }
    double t0 = lpc_now();
    s->port = 0;
    while (lpc_now() - t0 < 60 && s->port <= 0) {
        FILE *fp = fopen(port_file, "r");
        if (fp) {
            if (fscanf(fp, "%d", &s->port) != 1) s->port = 0;
            fclose(fp);
        }
        if (waitpid(s->pid, NULL, WNOHANG) == s->pid) {
            s->pid = 0;
            break;
        }
        nanosleep(&(struct timespec){0, 10 * 1000 * 1000}, NULL);
    }
    if (s->port <= 0) fprintf(stderr, "serve %s did not start (see %s)\n", name, s->log);
    return s->port > 0 ? 0 : -1;
}

static int serve_stop(struct server *s) { // SIGTERM: returns the exit status
    if (s->pid <= 0) return -1;
    kill(s->pid, SIGTERM);
    int st = 0;
    double t0 = lpc_now();
    pid_t r;
    while ((r = waitpid(s->pid, &st, WNOHANG)) == 0 && lpc_now() - t0 < 20)
        nanosleep(&(struct timespec){0, 10 * 1000 * 1000}, NULL);
    if (r == 0) {
        kill(s->pid, SIGKILL);
        waitpid(s->pid, &st, 0);
        st = -1;
    }
    s->pid = 0;
    return st != -1 && WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

struct resp {
    int code;
    char *body;    // malloc'd
    char *headers; // malloc'd
    json_t *json;  // parsed body, or NULL
};

static void resp_free(struct resp *r) {
    free(r->body);
    free(r->headers);
    json_decref(r->json);
    memset(r, 0, sizeof *r);
}

// Extra curl options for the next requests ("" for none).
static const char *curl_extra = "";

// One request with curl. body: JSON text or NULL (GET); auth: a key or NULL.
static struct resp http(const struct server *s, const char *method, const char *path,
                        const char *body, const char *auth) {
    struct resp r = {0};
    char body_file[1100], out_file[1100], hdr_file[1100], cmd[4096], auth_h[256] = "";
    snprintf(body_file, sizeof body_file, "%s/api_req_%d.json", work, s->port);
    snprintf(out_file, sizeof out_file, "%s/api_resp_%d.txt", work, s->port);
    snprintf(hdr_file, sizeof hdr_file, "%s/api_hdr_%d.txt", work, s->port);
    if (body) {
        FILE *f = fopen(body_file, "wb");
        fwrite(body, 1, strlen(body), f);
        fclose(f);
    }
    if (auth) snprintf(auth_h, sizeof auth_h, "-H 'Authorization: Bearer %s'", auth);
    remove(out_file); // a failed request must not leave the last answer behind
    remove(hdr_file);
    snprintf(cmd, sizeof cmd,
             "curl -s -m 120 -X %s %s %s -H 'Content-Type: application/json' %s%s%s -D '%s' -o "
             "'%s' -w '%%{http_code}' 'http://127.0.0.1:%d%s'",
             method, auth_h, curl_extra, body ? "--data-binary '@" : "", body ? body_file : "",
             body ? "'" : "", hdr_file, out_file, s->port, path);
    struct lpc_result res = lpc_sh(cmd, out_file, 150);
    r.code = atoi(res.out);
    lpc_result_free(&res);
    r.body = lpc_read_file(out_file, NULL);
    r.headers = lpc_read_file(hdr_file, NULL);
    if (!r.body) r.body = calloc(1, 1);
    if (!r.headers) r.headers = calloc(1, 1);
    r.json = json_loads(r.body, 0, NULL);
    return r;
}

static const char *jstr(const json_t *j, const char *path) { // "a.b.0.c"
    const json_t *v = j;
    while (v && *path) {
        char part[64];
        size_t n = strcspn(path, ".");
        snprintf(part, sizeof part, "%.*s", (int)n, path);
        v = json_is_array(v) ? json_array_get(v, (size_t)atoi(part)) : json_object_get(v, part);
        path += n + (path[n] == '.');
    }
    return json_string_value(v);
}

// An error reply in OpenAI's shape with this status and (if non-NULL) param.
static void check_error(const char *what, struct resp r, int code, const char *param) {
    const json_t *e = json_object_get(r.json, "error");
    CHECK_MSG(r.code == code && json_is_object(e) &&
                  json_is_string(json_object_get(e, "message")) &&
                  json_is_string(json_object_get(e, "type")) && json_object_get(e, "param") &&
                  json_object_get(e, "code"),
              "%s: %d (want %d): %s", what, r.code, code, r.body);
    if (param) {
        const char *p = json_string_value(json_object_get(e, "param"));
        CHECK_MSG(p && strcmp(p, param) == 0, "%s: param %s, want %s", what, p ? p : "null", param);
    }
    resp_free(&r);
}

// Parses an SSE body: every event is "data: JSON" or "data: [DONE]" (last).
// Returns the concatenated delta content (chat) or text (completions).
static char *sse_content(const char *body, bool chat, const char **finish, int *n_events) {
    static char acc[65536], fin[32];
    acc[0] = fin[0] = '\0';
    *n_events = 0;
    bool done = false, ok = true;
    for (const char *p = body; *p;) {
        const char *end = strstr(p, "\n\n");
        if (!end) {
            ok = false;
            break;
        }
        if (strncmp(p, "data: ", 6) != 0 || done) ok = false;
        if (strncmp(p, "data: [DONE]\n\n", 14) == 0) {
            done = true;
        } else {
            json_t *j = json_loadb(p + 6, (size_t)(end - p - 6), 0, NULL);
            const json_t *c = json_array_get(json_object_get(j, "choices"), 0);
            const char *piece = chat ? jstr(c, "delta.content") : jstr(c, "text");
            if (piece) strncat(acc, piece, sizeof acc - strlen(acc) - 1);
            const char *f = json_string_value(json_object_get(c, "finish_reason"));
            if (f) snprintf(fin, sizeof fin, "%s", f);
            if (!j) ok = false;
            json_decref(j);
        }
        (*n_events)++;
        p = end + 2;
    }
    CHECK_MSG(ok && done, "SSE framing: %.300s", body);
    *finish = fin;
    return acc;
}

static double metric(const struct server *s, const char *name) {
    struct resp r = http(s, "GET", "/metrics", NULL, NULL);
    double v = -1;
    size_t n = strlen(name);
    for (const char *p = r.body; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
        if (strncmp(p, name, n) == 0 && p[n] == ' ') v = atof(p + n + 1);
    resp_free(&r);
    return v;
}

// Forks a curl that streams a long completion into a file (killed later).
static pid_t long_stream(const struct server *s, int i) {
    char url[128], out[1100];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/v1/completions", s->port);
    snprintf(out, sizeof out, "%s/api_long_%d.txt", work, i);
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        execlp("curl", "curl", "-sN", "-o", out, "-H", "Authorization: Bearer sekrit-key", "-d",
               "{\"prompt\": \"And it came to pass\", \"max_tokens\": 1900, \"ignore_eos\": true, "
               "\"stream\": true}",
               url, (char *)NULL);
        _exit(127);
    }
    return pid;
}

static bool wait_metric(const struct server *s, const char *name, double want, double limit_s) {
    double t0 = lpc_now(), v = -1;
    while (lpc_now() - t0 < limit_s) {
        if ((v = metric(s, name)) == want) return true;
        nanosleep(&(struct timespec){0, 20 * 1000 * 1000}, NULL);
    }
    fprintf(stderr, "%s is %g, want %g\n", name, v, want);
    return false;
}

static const char *chat_body =
    "{\"model\": \"tiny\", \"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"text\", "
    "\"text\": \"And it came to pass\"}]}], \"max_tokens\": 20, \"temperature\": 0%s}";

static void test_endpoints(const struct server *s, const char *model_dir) {
    char body[4096];
    // health, models, key
    struct resp r = http(s, "GET", "/health", NULL, NULL);
    CHECK_MSG(r.code == 200 && strcmp(jstr(r.json, "status"), "ok") == 0 &&
                  strcmp(jstr(r.json, "stages.0.status"), "ok") == 0,
              "health: %d %s", r.code, r.body);
    resp_free(&r);
    r = http(s, "GET", "/v1/models", NULL, key);
    CHECK_MSG(r.code == 200 && strcmp(jstr(r.json, "data.0.id"), "tiny") == 0, "models: %s",
              r.body);
    resp_free(&r);
    r = http(s, "GET", "/v1/models/tiny", NULL, key);
    CHECK_MSG(r.code == 200 && strcmp(jstr(r.json, "id"), "tiny") == 0 &&
                  strcmp(jstr(r.json, "object"), "model") == 0,
              "models/tiny: %s", r.body);
    resp_free(&r);
    check_error("unknown model id", http(s, "GET", "/v1/models/other", NULL, key), 404, "model");
    check_error("no key", http(s, "GET", "/v1/models", NULL, NULL), 401, NULL);
    check_error("wrong key", http(s, "GET", "/v1/models", NULL, "nope"), 401, NULL);

    // chat, and the same streamed
    snprintf(body, sizeof body, chat_body, "");
    r = http(s, "POST", "/v1/chat/completions", body, key);
    const char *text = jstr(r.json, "choices.0.message.content");
    char want[8192];
    snprintf(want, sizeof want, "%s", text ? text : "(none)");
    CHECK_MSG(r.code == 200 && text && strlen(text) > 0 &&
                  strcmp(jstr(r.json, "object"), "chat.completion") == 0,
              "chat: %d %s", r.code, r.body);
    const char *finish_want = jstr(r.json, "choices.0.finish_reason");
    char fw[32];
    snprintf(fw, sizeof fw, "%s", finish_want ? finish_want : "");
    resp_free(&r);
    snprintf(body, sizeof body, chat_body, ", \"stream\": true");
    r = http(s, "POST", "/v1/chat/completions", body, key);
    const char *finish;
    int n_events;
    char *streamed = sse_content(r.body, true, &finish, &n_events);
    CHECK_MSG(r.code == 200 && strstr(r.headers, "text/event-stream"), "stream: %d", r.code);
    CHECK_MSG(strcmp(streamed, want) == 0, "stream: [%s] vs [%s]", streamed, want);
    CHECK_MSG(strcmp(finish, fw) == 0 && n_events >= 3, "stream: finish %s, %d events", finish,
              n_events);
    resp_free(&r);

    // completions: a string prompt and the same prompt as token ids agree
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "'%s' tokenize -m '%s' --ids 'And it came to pass'", bin, model_dir);
    struct lpc_result ids = lpc_sh(cmd, scratch, 60);
    ids.out[strcspn(ids.out, "\n")] = '\0';
    for (char *p = ids.out; *p; p++)
        if (*p == ' ') *p = ',';
    const char *comp = completion_body;
    snprintf(body, sizeof body, comp, "\"And it came to pass\"");
    struct resp a = http(s, "POST", "/v1/completions", body, key);
    char arr[1024];
    snprintf(arr, sizeof arr, "[%s]", ids.out);
    snprintf(body, sizeof body, comp, arr);
    struct resp b = http(s, "POST", "/v1/completions", body, key);
    const char *ta = jstr(a.json, "choices.0.text"), *tb = jstr(b.json, "choices.0.text");
    CHECK_MSG(a.code == 200 && b.code == 200 && ta && tb && strcmp(ta, tb) == 0 && strlen(ta),
              "completions: %s / %s", a.body, b.body);
    CHECK(strcmp(jstr(a.json, "object"), "text_completion") == 0);
    snprintf(one_process_text, sizeof one_process_text, "%s", ta ? ta : "");
    resp_free(&a);
    resp_free(&b);
    lpc_result_free(&ids);

    // errors, each naming its field
    check_error("invalid JSON", http(s, "POST", "/v1/chat/completions", "{\"messages\": [", key),
                400, NULL);
    snprintf(body, sizeof body, chat_body, ", \"n\": 2");
    check_error("n > 1", http(s, "POST", "/v1/chat/completions", body, key), 400, "n");
    snprintf(body, sizeof body, chat_body, ", \"max_tokens\": \"many\"");
    check_error("wrong type", http(s, "POST", "/v1/chat/completions", body, key), 400,
                "max_tokens");
    snprintf(body, sizeof body, chat_body, ", \"stop\": 7");
    check_error("stop type", http(s, "POST", "/v1/chat/completions", body, key), 400, "stop");
    snprintf(body, sizeof body,
             "{\"model\": \"gpt-4\", \"messages\": [{\"role\": \"user\", \"content\": \"x\"}]}");
    check_error("unknown model", http(s, "POST", "/v1/chat/completions", body, key), 400, "model");
    check_error("bad prompt id",
                http(s, "POST", "/v1/completions", "{\"prompt\": [1, 99999999]}", key), 400,
                "prompt");
    check_error("no endpoint", http(s, "GET", "/v1/nothing", NULL, key), 404, NULL);
    // a prompt longer than the context (--ctx 2048)
    static char big[700000];
    int k = snprintf(big, sizeof big, "{\"prompt\": \"");
    for (int i = 0; i < 2100; i++)
        k += snprintf(big + k, sizeof big - (size_t)k, "word ");
    snprintf(big + k, sizeof big - (size_t)k, "\"}");
    check_error("prompt too long", http(s, "POST", "/v1/completions", big, key), 400, "prompt");
    // a body over --max-body 256 (KiB)
    k = snprintf(big, sizeof big, "{\"prompt\": \"");
    memset(big + k, 'w', 300000);
    snprintf(big + k + 300000, sizeof big - (size_t)k - 300000, "\"}");
    // both ways: the client waits for "100 Continue" (answered before the
    // body), or sends the body at once (read and dropped, then answered)
    curl_extra = "-H 'Expect: 100-continue'";
    check_error("body too large, Expect", http(s, "POST", "/v1/completions", big, key), 413, NULL);
    curl_extra = "-H 'Expect:'";
    check_error("body too large, no Expect", http(s, "POST", "/v1/completions", big, key), 413,
                NULL);
    curl_extra = "";
}

// --max-seqs 2 --max-waiting 2: two long streams run, two wait, the next
// gets 429; killing the clients cancels all four and frees their KV. (A
// request counts as waiting until the scheduler thread admits it, so each
// is started once the one before is seen.)
static void test_queue_and_disconnect(const struct server *s) {
    double cancelled0 = metric(s, "layerpipe_request_cancelled_total");
    pid_t pids[4];
    for (int i = 0; i < 4; i++) {
        pids[i] = long_stream(s, i);
        if (i < 2)
            CHECK(wait_metric(s, "layerpipe_num_requests_running", i + 1, 20));
        else
            CHECK(wait_metric(s, "layerpipe_num_requests_waiting", i - 1, 20));
    }
    CHECK(metric(s, "layerpipe_kv_cache_usage_perc") > 0);
    struct resp r =
        http(s, "POST", "/v1/completions", "{\"prompt\": \"Hi\", \"max_tokens\": 2}", key);
    CHECK_MSG(r.code == 429 && strstr(r.headers, "Retry-After: 1"), "full queue: %d %s", r.code,
              r.headers);
    check_error("full queue", r, 429, NULL);
    for (int i = 0; i < 4; i++) {
        kill(pids[i], SIGKILL);
        waitpid(pids[i], NULL, 0);
    }
    CHECK(wait_metric(s, "layerpipe_request_cancelled_total", cancelled0 + 4, 20));
    CHECK(wait_metric(s, "layerpipe_num_requests_running", 0, 5));
    CHECK(wait_metric(s, "layerpipe_num_requests_waiting", 0, 5));
    CHECK(wait_metric(s, "layerpipe_kv_cache_usage_perc", 0, 5));
    CHECK(wait_metric(s, "layerpipe_stage_kv_blocks_used{stage=\"0\"}", 0, 5));
}

static void test_metrics(const struct server *s) {
    char path[1100], cmd[2400];
    snprintf(path, sizeof path, "%s/api_metrics.txt", work);
    struct resp r = http(s, "GET", "/metrics", NULL, NULL);
    CHECK(r.code == 200);
    FILE *f = fopen(path, "wb");
    fwrite(r.body, 1, strlen(r.body), f);
    fclose(f);
    const char *names[] = {"layerpipe_num_requests_running ",
                           "layerpipe_num_requests_waiting ",
                           "layerpipe_kv_cache_usage_perc ",
                           "layerpipe_prompt_tokens_total ",
                           "layerpipe_generation_tokens_total ",
                           "layerpipe_request_success_total{",
                           "layerpipe_time_to_first_token_seconds_bucket{",
                           "layerpipe_inter_token_latency_seconds_count ",
                           "layerpipe_e2e_request_latency_seconds_sum ",
                           "layerpipe_stage_busy_ratio{stage=\"0\"} ",
                           "layerpipe_stage_tokens_total{stage=\"0\"} ",
                           "layerpipe_stage_kv_blocks_used{stage=\"0\"} ",
                           "layerpipe_stage_kv_blocks_capacity{stage=\"0\"} ",
                           "layerpipe_hop_latency_seconds{",
                           "layerpipe_hop_sent_bytes_total{stage=\"0\"} "};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        CHECK_MSG(strstr(r.body, names[i]), "/metrics lacks %s", names[i]);
    CHECK(metric(s, "layerpipe_generation_tokens_total") > 20);
    CHECK(metric(s, "layerpipe_time_to_first_token_seconds_count") > 3);
    resp_free(&r);
    struct lpc_result which = lpc_sh("sh -c 'command -v promtool'", path, 10);
    if (which.rc != 0) {
        fprintf(stderr, "SKIP promtool check: promtool is not installed (Debian package "
                        "'prometheus'; make deps installs it)\n");
    } else {
        snprintf(cmd, sizeof cmd, "promtool check metrics < '%s'", path);
        struct lpc_result pt = lpc_sh(cmd, path, 30);
        CHECK_MSG(pt.rc == 0, "promtool check metrics: %s%s", pt.out, pt.err);
        lpc_result_free(&pt);
    }
    lpc_result_free(&which);
}

static bool node_modules(char *out, size_t cap) {
    char cmd[2400];
    snprintf(cmd, sizeof cmd, "'%s/tools/fetch-openai-node.sh' '%s/npm-openai'", src, work);
    struct lpc_result r = lpc_sh(cmd, scratch, 300);
    r.out[strcspn(r.out, "\n")] = '\0';
    snprintf(out, cap, "%s", r.out);
    bool ok = r.rc == 0 && out[0];
    if (!ok)
        fprintf(stderr,
                "could not install the openai npm package (tools/fetch-openai-node.sh): "
                "%s\n",
                r.err);
    lpc_result_free(&r);
    return ok;
}

static void run_node(const struct server *s, const char *modules, const char *mode,
                     const char *model) {
    char cmd[4096];
    snprintf(cmd, sizeof cmd,
             "env LP_NODE_MODULES='%s' LP_BASE_URL='http://127.0.0.1:%d/v1' LP_API_KEY='%s' "
             "LP_MODEL='%s' LP_MODE=%s node '%s/tests/api/openai_client.mjs'",
             modules, s->port, key, model, mode, src);
    char node_scratch[1100];
    snprintf(node_scratch, sizeof node_scratch, "%s/api_node_%s", work, mode);
    struct lpc_result r = lpc_sh(cmd, node_scratch, 300);
    fprintf(stderr, "%s%s", r.out, r.err);
    CHECK_MSG(r.rc == 0, "openai_client.mjs %s failed", mode);
    lpc_result_free(&r);
}

// ---- the scripted model ----
//
// One layer whose attention and MLP add nothing (o_proj and down_proj are
// zero), so the hidden state is the token's embedding; embeddings are
// one-hot "slots" and lm_head maps slot s to the token that follows it.
// Greedy decoding then walks a fixed chain from the last prompt token
// ("\n" after "<|im_start|>assistant"):
//   \n -> <think> -> Let -> </think> -> And -> <tool_call> -> {call json} -> </tool_call> ->
//   <|im_end|>
// Every other token leads to <|im_end|>. The think and tool tags and the
// call's JSON are added tokens of a copy of the bundled tokenizer.

#define SCRIPT_CALL "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}"

static bool edit_json(const char *path, json_t *(*edit)(json_t *)) {
    json_t *j = json_load_file(path, 0, NULL);
    if (!j) return false;
    j = edit(j);
    bool ok = json_dump_file(j, path, JSON_INDENT(1)) == 0;
    json_decref(j);
    return ok;
}

static json_t *add_tokens(json_t *tok) {
    const char *extra[] = {"<think>", "</think>", "<tool_call>", "</tool_call>", SCRIPT_CALL};
    json_t *added = json_object_get(tok, "added_tokens");
    for (int i = 0; i < 5; i++)
        json_array_append_new(added, json_pack("{s:i,s:s,s:b,s:b,s:b,s:b,s:b}", "id", 8195 + i,
                                               "content", extra[i], "single_word", 0, "lstrip", 0,
                                               "rstrip", 0, "normalized", 0, "special", 0));
    return tok;
}

static json_t *set_eos(json_t *cfg) {
    json_object_set_new(cfg, "eos_token_id", json_pack("[i,i]", 8192, 8194));
    json_object_del(cfg, "bos_token_id");
    json_object_set_new(cfg, "do_sample", json_false());
    return cfg;
}

// The f32 data of a tensor in a safetensors file held in memory.
static float *st_tensor(char *file, const char *name, size_t *n_floats) {
    uint64_t n_header;
    memcpy(&n_header, file, 8);
    json_t *h = json_loadb(file + 8, (size_t)n_header, 0, NULL);
    json_t *off = json_object_get(json_object_get(h, name), "data_offsets");
    size_t b = (size_t)json_integer_value(json_array_get(off, 0));
    size_t e = (size_t)json_integer_value(json_array_get(off, 1));
    json_decref(h);
    *n_floats = (e - b) / 4;
    return off ? (float *)(void *)(file + 8 + n_header + b) : NULL;
}

static int make_scripted_model(const char *tiny, char *dir, size_t cap) {
    const char *tools = lp_fixture_env("LP_TOOLS_DIR", "build");
    snprintf(dir, cap, "%s/api_scripted", work);
    char cmd[4096], path[1200];
    snprintf(cmd, sizeof cmd,
             "rm -rf '%s' && '%s/lp_genmodel' --out '%s' --seed 5 --format hf-f32 --layers 1 "
             "--hidden 64 --heads 4 --kv-heads 2 --head-dim 16 --intermediate 64 --vocab 8200 "
             "--tied 0 && cp '%s/tokenizer.json' '%s/tokenizer_config.json' '%s/'",
             dir, tools, dir, tiny, tiny, dir);
    struct lpc_result r = lpc_sh(cmd, scratch, 60);
    int rc = r.rc;
    lpc_result_free(&r);
    if (rc != 0) return -1;
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    if (!edit_json(path, add_tokens)) return -1;
    snprintf(path, sizeof path, "%s/config.json", dir);
    if (!edit_json(path, set_eos)) return -1;
    snprintf(path, sizeof path, "%s/generation_config.json", dir);
    if (!edit_json(path, set_eos)) return -1;
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    size_t n_file;
    char *file = lpc_read_file(path, &n_file);
    if (!file) return -1;
    const int hidden = 64, chain[][2] = {{198, 8195}, {8195, 1476}, {1476, 8196}, {8196, 324},
                                         {324, 8197}, {8197, 8199}, {8199, 8198}, {8198, 8194}};
    const int n_chain = (int)(sizeof chain / sizeof chain[0]);
    size_t n;
    float *w = st_tensor(file, "model.embed_tokens.weight", &n);
    memset(w, 0, n * 4);
    for (int t = 0; t < 8200; t++) {
        int slot = 0; // slot 0: every token outside the chain
        for (int i = 0; i < n_chain; i++)
            if (chain[i][0] == t) slot = i + 1;
        w[(size_t)t * hidden + slot] = 1.0f;
    }
    w = st_tensor(file, "lm_head.weight", &n);
    memset(w, 0, n * 4);
    w[(size_t)8194 * hidden + 0] = 10.0f;
    for (int i = 0; i < n_chain; i++)
        w[(size_t)chain[i][1] * hidden + i + 1] = 10.0f;
    w = st_tensor(file, "model.norm.weight", &n);
    for (size_t i = 0; i < n; i++)
        w[i] = 1.0f;
    w = st_tensor(file, "model.layers.0.self_attn.o_proj.weight", &n);
    memset(w, 0, n * 4);
    w = st_tensor(file, "model.layers.0.mlp.down_proj.weight", &n);
    memset(w, 0, n * 4);
    FILE *f = fopen(path, "wb");
    bool ok = f && fwrite(file, 1, n_file, f) == n_file;
    if (f) fclose(f);
    free(file);
    return ok ? 0 : -1;
}

static void test_scripted(const char *tiny, const char *modules) {
    char dir[1100];
    CHECK(make_scripted_model(tiny, dir, sizeof dir) == 0);
    struct server s = {0};
    const char *args[] = {"-m",        dir, "--model-name", "scripted", "--api-key", key,
                          "--threads", "1", "--ctx",        "1024",     NULL};
    CHECK(serve_start(&s, "scripted", args) == 0);
    if (s.port <= 0) return;
    // curl: the final message and the streamed deltas
    const char *body = "{\"messages\": [{\"role\": \"user\", \"content\": \"Weather in Paris?\"}], "
                       "\"temperature\": 0, \"tools\": [{\"type\": \"function\", \"function\": "
                       "{\"name\": \"get_weather\", \"parameters\": {\"type\": \"object\"}}}]%s}";
    char req[2048];
    snprintf(req, sizeof req, body, "");
    struct resp r = http(&s, "POST", "/v1/chat/completions", req, key);
    const json_t *m =
        json_object_get(json_array_get(json_object_get(r.json, "choices"), 0), "message");
    const char *args_s = jstr(m, "tool_calls.0.function.arguments");
    json_t *a = args_s ? json_loads(args_s, 0, NULL) : NULL;
    CHECK_MSG(r.code == 200 && jstr(m, "reasoning_content") &&
                  strcmp(jstr(m, "reasoning_content"), "Let") == 0 && jstr(m, "content") &&
                  strcmp(jstr(m, "content"), "And") == 0 &&
                  strcmp(jstr(m, "tool_calls.0.function.name"), "get_weather") == 0 &&
                  strcmp(jstr(m, "tool_calls.0.type"), "function") == 0 &&
                  jstr(m, "tool_calls.0.id") && a && strcmp(jstr(a, "city"), "Paris") == 0 &&
                  strcmp(jstr(r.json, "choices.0.finish_reason"), "tool_calls") == 0,
              "scripted chat: %s", r.body);
    json_decref(a);
    resp_free(&r);
    snprintf(req, sizeof req, body, ", \"stream\": true");
    r = http(&s, "POST", "/v1/chat/completions", req, key);
    // (deltas may come one per token or several in one chunk)
    CHECK_MSG(strstr(r.body, "\"reasoning_content\":\"Let\"") &&
                  strstr(r.body, "\"content\":\"And\"") &&
                  strstr(r.body, "\"tool_calls\":[{\"index\":0,\"id\":\"call_") &&
                  strstr(r.body, "\"finish_reason\":\"tool_calls\"") &&
                  strstr(r.body, "data: [DONE]\n\n"),
              "scripted stream: %s", r.body);
    resp_free(&r);
    if (modules) run_node(&s, modules, "scripted", "scripted");
    CHECK(serve_stop(&s) == 0);
}

// A pipeline of three stages (the coordinator and two workers) answers what
// one process answers, 16 streams at once each what they give alone, and
// 503 once a worker is gone.
static void test_stage_down(const char *tiny, const char *modules) {
    struct lpc_worker w[2];
    char log[1100], workers[128];
    for (int i = 0; i < 2; i++) {
        snprintf(log, sizeof log, "%s/api_worker%d.log", work, i);
        CHECK(lpc_worker_start(&w[i], bin, tiny, log, 1, 60) == 0);
        if (w[i].port <= 0) return;
    }
    snprintf(workers, sizeof workers, "%s,%s", w[0].addr, w[1].addr);
    struct server s = {0};
    const char *args[] = {"-m",         tiny,     "--threads", "1",         "--workers",
                          workers,      "--plan", "4,3,3",     "--timeout", "5000",
                          "--max-seqs", "16",     "--api-key", key,         NULL};
    CHECK(serve_start(&s, "pipeline", args) == 0);
    if (s.port <= 0) return;
    char req[512];
    snprintf(req, sizeof req, completion_body, "\"And it came to pass\"");
    struct resp r = http(&s, "GET", "/health", NULL, NULL);
    CHECK_MSG(r.code == 200 && strcmp(jstr(r.json, "stages.2.role"), "worker") == 0 &&
                  strcmp(jstr(r.json, "stages.2.status"), "ok") == 0,
              "pipeline health: %s", r.body);
    resp_free(&r);
    r = http(&s, "POST", "/v1/completions", req, key);
    const char *text = jstr(r.json, "choices.0.text");
    CHECK_MSG(r.code == 200 && text && strcmp(text, one_process_text) == 0,
              "pipeline: %d %s, one process: %s", r.code, r.body, one_process_text);
    resp_free(&r);
    CHECK(metric(&s, "layerpipe_stage_tokens_total{stage=\"2\"}") > 0);
    CHECK(metric(&s, "layerpipe_hop_sent_bytes_total{stage=\"1\"}") > 0);
    if (modules) run_node(&s, modules, "concurrent", "layerpipe-tiny-8bit");
    kill(w[1].pid, SIGKILL);
    waitpid(w[1].pid, NULL, 0);
    lpc_forget(w[1].pid);
    r = http(&s, "GET", "/health", NULL, NULL);
    CHECK_MSG(r.code == 503 && strcmp(jstr(r.json, "stages.2.status"), "down") == 0 &&
                  strcmp(jstr(r.json, "status"), "degraded") == 0,
              "health, stage down: %d %s", r.code, r.body);
    resp_free(&r);
    check_error("stage down", http(&s, "POST", "/v1/completions", req, key), 503, NULL);
    const char *stream_body = "{\"prompt\": \"And it came\", \"max_tokens\": 4, \"stream\": true}";
    check_error("stage down, streaming", http(&s, "POST", "/v1/completions", stream_body, key), 503,
                NULL);
    CHECK(metric(&s, "layerpipe_stage_up{stage=\"2\"}") == 0);
    CHECK(serve_stop(&s) == 0);
}

// Every field set to every JSON type: the answer is 200 or a 400 naming a
// field, never a crash or a 5xx; so are malformed messages and bodies cut
// at every few bytes.
static void test_malformed(const struct server *s) {
    const char *fields[] = {"model",
                            "messages",
                            "stream",
                            "stream_options",
                            "max_tokens",
                            "max_completion_tokens",
                            "temperature",
                            "top_p",
                            "top_k",
                            "min_p",
                            "presence_penalty",
                            "frequency_penalty",
                            "repetition_penalty",
                            "seed",
                            "stop",
                            "logprobs",
                            "top_logprobs",
                            "n",
                            "tools",
                            "tool_choice",
                            "chat_template_kwargs",
                            "response_format",
                            "logit_bias",
                            "ignore_eos",
                            "stream_options"};
    const char *values[] = {"null",
                            "true",
                            "1",
                            "-1",
                            "0.5",
                            "1e300",
                            "\"x\"",
                            "[]",
                            "{}",
                            "[1, \"a\", null]",
                            "{\"include_usage\": 3}"};
    const char *messages[] = {
        "[1]",
        "[{}]",
        "[{\"role\": \"user\"}]",
        "[{\"role\": \"user\", \"content\": 5}]",
        "[{\"role\": \"user\", \"content\": [{\"type\": \"image_url\"}]}]",
        "[{\"role\": \"user\", \"content\": [5]}]",
        "[{\"role\": \"assistant\", \"tool_calls\": 5}]",
        "[{\"role\": \"assistant\", \"tool_calls\": [{\"function\": 3}]}]",
        "[{\"role\": \"assistant\", \"content\": null, \"tool_calls\": [{\"function\": "
        "{\"name\": \"f\", \"arguments\": \"{}\"}}]}, {\"role\": \"tool\", \"content\": \"1\"}]",
        "[{\"role\": \"user\", \"content\": \"\\u0000\"}]",
        "[{\"role\": \"user\", \"content\": \"hi\", \"reasoning_content\": 1}]"};
    char body[1024];
    int bad = 0, n = 0;
    const int nf = (int)(sizeof fields / sizeof fields[0]),
              nv = (int)(sizeof values / sizeof values[0]);
    for (int i = 0; i < nf + 1; i++)
        for (int k = 0; k < (i < nf ? nv : (int)(sizeof messages / sizeof messages[0])); k++) {
            if (i < nf)
                snprintf(body, sizeof body,
                         "{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}], "
                         "\"max_tokens\": 2, \"%s\": %s}",
                         fields[i], values[k]);
            else
                snprintf(body, sizeof body, "{\"messages\": %s, \"max_tokens\": 2}", messages[k]);
            struct resp r = http(s, "POST", "/v1/chat/completions", body, key);
            const char *param = jstr(r.json, "error.param"), *msg = jstr(r.json, "error.message");
            bool ok = r.code == 200 ||
                      (r.code == 400 && (param || (msg && !strncmp(msg, "invalid JSON", 12))));
            if (!ok && bad++ < 5) fprintf(stderr, "malformed: %s -> %d %s\n", body, r.code, r.body);
            n++;
            resp_free(&r);
        }
    const char *whole = "{\"messages\": [{\"role\": \"user\", \"content\": \"Hi \\u00e9\"}], "
                        "\"max_tokens\": 2, \"stop\": [\"a\"], \"tools\": []}";
    for (size_t cut = 0; cut < strlen(whole); cut += 3) {
        snprintf(body, sizeof body, "%.*s", (int)cut, whole);
        struct resp r = http(s, "POST", "/v1/chat/completions", body, key);
        if (r.code != 400 && bad++ < 5) fprintf(stderr, "cut %zu: %d %s\n", cut, r.code, r.body);
        n++;
        resp_free(&r);
    }
    CHECK_MSG(bad == 0, "%d of %d malformed requests answered badly", bad, n);
    struct resp r = http(s, "GET", "/health", NULL, NULL);
    CHECK(r.code == 200);
    resp_free(&r);
}

int main(void) {
    bin = lp_fixture_env("LP_BIN", "build/layerpipe");
    work = lp_fixture_env("LP_WORK_DIR", "/tmp");
    snprintf(scratch, sizeof scratch, "%s/api_scratch", work);
    src = lp_fixture_env("LP_SOURCE_DIR", ".");
    char model[1100], modules[1100];
    snprintf(model, sizeof model, "%s/models/layerpipe-tiny-8bit", src);
    bool have_node = node_modules(modules, sizeof modules);
    CHECK(have_node);

    struct server s = {0};
    const char *args[] = {
        "-m",         model, "--model-name",  "tiny", "--api-key", key,    "--threads",  "1",
        "--max-seqs", "2",   "--max-waiting", "2",    "--ctx",     "2048", "--max-body", "256",
        NULL};
    CHECK(serve_start(&s, "main", args) == 0);
    if (s.port > 0) {
        test_endpoints(&s, model);
        test_malformed(&s);
        if (have_node) run_node(&s, modules, "general", "tiny");
        test_queue_and_disconnect(&s);
        test_metrics(&s);
        // SIGTERM shuts down cleanly, even with a stream running
        pid_t streaming = long_stream(&s, 9);
        CHECK(wait_metric(&s, "layerpipe_num_requests_running", 1, 20));
        CHECK(serve_stop(&s) == 0);
        waitpid(streaming, NULL, 0);
        char *log = lpc_read_file(s.log, NULL);
        CHECK_MSG(log && strstr(log, "serve: POST /v1/chat/completions 200 prompt=") &&
                      strstr(log, "serve: POST /v1/chat/completions 200 prompt=15 generated=20 ") &&
                      strstr(log, "serve: GET /v1/models 401"),
                  "request log lines: %s", log ? log : "(none)");
        free(log);
    }
    test_scripted(model, have_node ? modules : NULL);
    test_stage_down(model, have_node ? modules : NULL);
    return lp_test_finish("api_serve");
}
