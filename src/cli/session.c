// SPDX-License-Identifier: MIT
// session.c -- model + runner for run/logits/bench: one process, or the
// coordinator of a pipeline (--workers/--plan or --cluster FILE).
#include "cli/session.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

#define MAX_WORKERS (LP_MAX_STAGES - 1)

// "HOST:PORT" with a non-empty host and a decimal port 1..65535 (gRPC would
// otherwise wrap 99999 to 34463, read "x" as 0 and default a missing port to 443).
static bool valid_address(const char *a, size_t len) {
    size_t colon = len;
    while (colon > 0 && a[colon - 1] != ':') colon--;
    if (colon < 2 || colon == len || len - colon > 5) return false;
    long port = 0;
    for (size_t i = colon; i < len; i++) {
        if (a[i] < '0' || a[i] > '9') return false;
        port = port * 10 + (a[i] - '0');
    }
    return port >= 1 && port <= 65535;
}

// What a cluster file or the flags say about the stages.
struct stage_list {
    char *addrs[MAX_WORKERS];
    int n;
    char plan[512]; // "" when not fixed
    char sink[128];
};

// Reads {"stages": [{"role": "coordinator", "layers": 10, "sink": "H:P"},
// {"address": "H:P", "layers": 9}, ...], "plan": "auto"}: the first stage is
// the coordinator (no address), the others are workers in pipeline order;
// layer counts are all given or none.
static bool read_cluster_file(const char *path, struct stage_list *l, const char *cmd) {
    json_error_t jerr;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    bool ok = false;
    if (!root) {
        fprintf(stderr, "layerpipe %s: --cluster %s: %s (line %d)\n", cmd, path, jerr.text,
                jerr.line);
        return false;
    }
    json_t *stages = json_object_get(root, "stages");
    size_t n = json_array_size(stages);
    if (!json_is_array(stages) || n < 1 || n > MAX_WORKERS + 1) {
        fprintf(stderr, "layerpipe %s: %s: 'stages' must be an array of 1..%d stages, the "
                        "coordinator first\n", cmd, path, MAX_WORKERS + 1);
        goto done;
    }
    int with_layers = 0;
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        json_t *st = json_array_get(stages, i);
        const char *addr = json_string_value(json_object_get(st, "address"));
        json_t *layers = json_object_get(st, "layers");
        if (!json_is_object(st) || (i > 0 && !addr) ||
            (layers && (!json_is_integer(layers) || json_integer_value(layers) < 0))) {
            fprintf(stderr, "layerpipe %s: %s: stage %zu needs %s and an optional non-negative "
                            "integer 'layers'\n", cmd, path, i,
                    i == 0 ? "no address (it is this coordinator)" : "an 'address' (\"host:port\")");
            goto done;
        }
        if (i > 0 && addr && !valid_address(addr, strlen(addr))) {
            fprintf(stderr, "layerpipe %s: %s: stage %zu: address '%s' is not host:port (port "
                            "1..65535)\n", cmd, path, i, addr);
            goto done;
        }
        if (i == 0) {
            const char *sink = json_string_value(json_object_get(st, "sink"));
            if (sink) snprintf(l->sink, sizeof l->sink, "%s", sink);
        } else {
            l->addrs[l->n++] = strdup(addr);
        }
        if (layers) {
            with_layers++;
            off += (size_t)snprintf(l->plan + off, sizeof l->plan - off, "%s%lld", i ? "," : "",
                                    (long long)json_integer_value(layers));
            if (off >= sizeof l->plan) off = sizeof l->plan - 1;
        }
    }
    if (with_layers != 0 && (size_t)with_layers != n) {
        fprintf(stderr, "layerpipe %s: %s: give 'layers' for every stage or for none\n", cmd, path);
        goto done;
    }
    if (!with_layers) {
        const char *plan = json_string_value(json_object_get(root, "plan"));
        l->plan[0] = '\0';
        if (plan) snprintf(l->plan, sizeof l->plan, "%s", plan);
    }
    ok = true;
done:
    json_decref(root);
    return ok;
}

static bool split_workers(const char *text, struct stage_list *l, const char *cmd) {
    size_t n_text = strlen(text);
    if (n_text == 0 || text[n_text - 1] == ',') { // empty, or an empty last address
        fprintf(stderr, "layerpipe %s: --workers '%s': expected HOST:PORT,HOST:PORT,... (at "
                        "most %d)\n", cmd, text, MAX_WORKERS);
        return false;
    }
    const char *p = text;
    while (*p) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        if (len == 0 || len > 120 || l->n == MAX_WORKERS || !valid_address(p, len)) {
            fprintf(stderr, "layerpipe %s: --workers '%s': expected HOST:PORT,HOST:PORT,... (at "
                            "most %d)\n", cmd, text, MAX_WORKERS);
            return false;
        }
        l->addrs[l->n++] = strndup(p, len);
        p += len + (comma ? 1 : 0);
    }
    return l->n > 0;
}

bool lp_cli_session_open(struct lp_cli_session *s, const struct lp_cli_session_opts *o,
                         const char *cmd) {
    memset(s, 0, sizeof *s);
    s->opened_at = now_s();
    struct lp_error err = {0};
    if (o->kv_dtype && strcmp(o->kv_dtype, "f32") != 0 && strcmp(o->kv_dtype, "bf16") != 0) {
        fprintf(stderr, "layerpipe %s: --kv-dtype '%s': expected f32 or bf16\n", cmd, o->kv_dtype);
        return false;
    }
    if (o->wire_dtype && strcmp(o->wire_dtype, "f32") != 0 && strcmp(o->wire_dtype, "bf16") != 0 &&
        strcmp(o->wire_dtype, "f16") != 0) {
        fprintf(stderr, "layerpipe %s: --wire-dtype '%s': expected f32, bf16 or f16\n", cmd,
                o->wire_dtype);
        return false;
    }
    bool kv_bf16 = o->kv_dtype && strcmp(o->kv_dtype, "bf16") == 0;
    int batch = o->batch > 0 ? o->batch : 64;
    if (o->workers || o->cluster || o->plan) {
        if (o->fast) {
            fprintf(stderr, "layerpipe %s: --fast is not available with a pipeline\n", cmd);
            return false;
        }
        struct stage_list l = {0};
        bool ok = o->workers && o->cluster
                      ? (fprintf(stderr, "layerpipe %s: give --workers or --cluster, not both\n",
                                 cmd),
                         false)
                  : o->cluster ? read_cluster_file(o->cluster, &l, cmd)
                  : o->workers ? split_workers(o->workers, &l, cmd)
                               : true; // --plan alone: one stage, the coordinator
        if (ok && o->plan) snprintf(l.plan, sizeof l.plan, "%s", o->plan);
        struct lp_pipeline_params pp = lp_pipeline_params_default();
        pp.model_dir = o->model_dir;
        pp.workers = (const char *const *)l.addrs;
        pp.n_workers = l.n;
        pp.plan = l.plan[0] ? l.plan : NULL;
        pp.wire_dtype = !o->wire_dtype                     ? LP_DTYPE_F32
                        : strcmp(o->wire_dtype, "bf16") == 0 ? LP_DTYPE_BF16
                        : strcmp(o->wire_dtype, "f16") == 0  ? LP_DTYPE_F16
                                                              : LP_DTYPE_F32;
        pp.n_threads = o->threads;
        pp.max_batch_tokens = o->logit_rows > batch ? o->logit_rows : batch;
        pp.max_sessions = o->max_seqs > 0 ? o->max_seqs : 1;
        pp.max_context = o->ctx;
        pp.kv_bf16 = kv_bf16;
        if (o->timeout_ms > 0) pp.timeout_ms = o->timeout_ms;
        if (o->sink) pp.sink_listen = o->sink;
        else if (l.sink[0]) pp.sink_listen = l.sink;
        struct lp_model_load_params none = {0, 0, false, false};
        if (ok && (lp_model_open(&s->model, o->model_dir, &none, &err) != LP_OK ||
                   lp_pipeline_create(&s->pipeline, &pp, &err) != LP_OK)) {
            fprintf(stderr, "layerpipe %s: %s\n", cmd, err.msg);
            ok = false;
        }
        for (int i = 0; i < l.n; i++) free(l.addrs[i]);
        if (!ok) {
            lp_cli_session_close(s);
            return false;
        }
        s->runner = lp_pipeline_runner(s->pipeline);
        struct lp_model *all = NULL;
        if (lp_model_open(&all, o->model_dir, NULL, NULL) == LP_OK)
            s->weight_bytes = lp_model_weight_bytes(all);
        lp_model_close(all);
        const struct lp_plan *plan = lp_pipeline_plan(s->pipeline);
        snprintf(s->device, sizeof s->device, "pipeline of %d stages", plan->n_stages);
        fprintf(stderr, "layerpipe %s: pipeline of %d stages, layers", cmd, plan->n_stages);
        for (int i = 0; i < plan->n_stages; i++)
            fprintf(stderr, "%s%d", i ? "-" : " ", plan->layers[i]);
        fprintf(stderr, " (coordinator first), %s wire\n", o->wire_dtype ? o->wire_dtype : "f32");
        return true;
    }
    struct lp_engine_params ep = lp_engine_params_default();
    if (kv_bf16) ep.kv_dtype = LP_DTYPE_BF16;
    if (o->ctx > 0) ep.max_context = o->ctx;
    ep.max_batch_tokens = batch;
    if (o->max_seqs > 0) ep.max_seqs = o->max_seqs;
    ep.max_logit_rows = o->logit_rows > 0 ? o->logit_rows : ep.max_seqs;
    if (ep.max_logit_rows > ep.max_batch_tokens) ep.max_batch_tokens = ep.max_logit_rows;
    struct lp_backend_cpu_params bp = lp_backend_cpu_params_default();
    bp.n_threads = o->threads;
    bp.quantize_activations = o->fast;
    if (lp_model_open(&s->model, o->model_dir, NULL, &err) != LP_OK ||
        lp_backend_cpu_create(&s->backend, &bp, &err) != LP_OK ||
        lp_engine_create(&s->engine, s->model, s->backend, &ep, &err) != LP_OK) {
        fprintf(stderr, "layerpipe %s: %s\n", cmd, err.msg);
        lp_cli_session_close(s);
        return false;
    }
    s->runner = lp_engine_runner(s->engine);
    s->weight_bytes = lp_engine_weight_bytes(s->engine);
    snprintf(s->device, sizeof s->device, "%s (%d threads)", lp_backend_name(s->backend),
             lp_backend_n_threads(s->backend));
    return true;
}

static void human_bytes(double b, char *out, size_t n) {
    const char *unit[] = {"B", "KB", "MB", "GB", "TB"};
    int u = 0;
    while (b >= 1000 && u < 4) {
        b /= 1000;
        u++;
    }
    snprintf(out, n, u ? "%.1f %s" : "%.0f %s", b, unit[u]);
}

void lp_cli_session_print_stats(struct lp_cli_session *s, FILE *fp) {
    struct lp_stage_stats st[LP_MAX_STAGES];
    if (!s->pipeline) {
        fprintf(fp, "\n--stats: one process, one stage (the timing line above is the whole "
                    "story)\n");
        return;
    }
    int n = lp_pipeline_stats(s->pipeline, st, LP_MAX_STAGES);
    fprintf(fp, "\n%-3s %-12s %-21s %-8s %6s %8s %9s %17s %10s %10s  %s\n", "#", "role",
            "address", "layers", "busy%", "tokens", "tok/s", "hop p50/p99 ms", "bytes in",
            "bytes out", "device");
    for (int i = 0; i < n; i++) {
        const struct lp_stage_stats *x = &st[i];
        char layers[24], in[24], out[24], hop[32];
        snprintf(layers, sizeof layers, "%d-%d", x->layer_begin, x->layer_end - 1);
        if (x->layer_end <= x->layer_begin) snprintf(layers, sizeof layers, "none");
        if (!x->ok) {
            fprintf(fp, "%-3d %-12s %-21s %-8s (no answer to Stats)\n", i, x->role, x->address,
                    layers);
            continue;
        }
        double total = x->busy_seconds + x->idle_seconds;
        human_bytes((double)x->bytes_in, in, sizeof in);
        human_bytes((double)x->bytes_out, out, sizeof out);
        bool last = i == n - 1 && n > 1;
        snprintf(hop, sizeof hop, i == 0 && n == 1 ? "-" : "%.2f / %.2f", x->hop_p50_ms,
                 x->hop_p99_ms);
        if (last && x->hop_p50_ms == 0) snprintf(hop, sizeof hop, "-");
        fprintf(fp, "%-3d %-12s %-21s %-8s %6.1f %8llu %9.1f %17s %10s %10s  %s\n", i, x->role,
                x->address, layers, total > 0 ? 100.0 * x->busy_seconds / total : 0.0,
                (unsigned long long)x->tokens,
                x->busy_seconds > 0 ? (double)x->tokens / x->busy_seconds : 0.0, hop, in, out,
                x->device);
    }
    fprintf(fp, "(busy%%: share of the stage's time spent computing; tok/s: rows per busy "
                "second; hop: round trip to the successor minus its compute)\n");
}

void lp_cli_session_close(struct lp_cli_session *s) {
    lp_pipeline_destroy(s->pipeline);
    lp_engine_destroy(s->engine);
    lp_backend_destroy(s->backend);
    lp_model_close(s->model);
    memset(s, 0, sizeof *s);
}
