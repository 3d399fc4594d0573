// SPDX-License-Identifier: MIT
// session.c -- model headers, pipeline and scheduler for the model commands:
// one process, or the coordinator of a pipeline (--workers/--plan or
// --cluster FILE).
#include "cli/session.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static bool check_dtypes(const struct lp_cli_session_opts *o, const char *cmd) {
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
    return true;
}

// The stages from --workers or --cluster (none: this process alone).
static bool read_stages(const struct lp_cli_session_opts *o, struct lp_cluster_spec *spec,
                        const char *cmd) {
    struct lp_error err = {0};
    memset(spec, 0, sizeof *spec);
    if (o->workers && o->cluster) {
        fprintf(stderr, "layerpipe %s: give --workers or --cluster, not both\n", cmd);
        return false;
    }
    enum lp_status st = o->cluster   ? lp_cluster_spec_read_file(spec, o->cluster, &err)
                        : o->workers ? lp_cluster_spec_parse_workers(spec, o->workers, &err)
                                     : LP_OK;
    if (st != LP_OK) {
        fprintf(stderr, "layerpipe %s: %s%s\n", cmd, o->cluster ? "--cluster " : "", err.msg);
        return false;
    }
    if (o->plan) snprintf(spec->plan, sizeof spec->plan, "%s", o->plan);
    for (int i = 0; i < o->standby.n; i++)
        if (lp_cluster_spec_add_standby(spec, o->standby.items[i], &err) != LP_OK) {
            fprintf(stderr, "layerpipe %s: --standby: %s\n", cmd, err.msg);
            return false;
        }
    return true;
}

// Refused calls on the Sink, as the workers print theirs.
static void security_log(void *user, const char *line) {
    fprintf(stderr, "layerpipe %s: %s\n", (const char *)user, line);
}

static struct lp_pipeline_params pipeline_params(const struct lp_cli_session_opts *o,
                                                 const struct lp_cluster_spec *spec,
                                                 const char **addrs, const char **spares) {
    struct lp_pipeline_params pp = lp_pipeline_params_default();
    pp.model_dir = o->model_dir;
    for (int i = 0; i < spec->n_workers; i++) addrs[i] = spec->workers[i];
    pp.workers = addrs;
    pp.n_workers = spec->n_workers;
    pp.plan = spec->plan[0] ? spec->plan : NULL;
    for (int i = 0; i < spec->n_standby; i++) spares[i] = spec->standby[i];
    pp.standby = spares;
    pp.n_standby = spec->n_standby;
    pp.replan = o->replan;
    if (o->recover_timeout_ms > 0) pp.recover_timeout_ms = o->recover_timeout_ms;
    pp.wire_dtype = !o->wire_dtype                       ? LP_DTYPE_F32
                    : strcmp(o->wire_dtype, "bf16") == 0 ? LP_DTYPE_BF16
                    : strcmp(o->wire_dtype, "f16") == 0  ? LP_DTYPE_F16
                                                         : LP_DTYPE_F32;
    pp.device = o->device ? o->device : "cpu";
    pp.n_threads = o->threads;
    pp.fast = o->fast;
    pp.max_batch_tokens = o->batch > 0 ? o->batch : 64;
    pp.max_sessions = o->max_seqs > 0 ? o->max_seqs : 1;
    pp.max_context = o->ctx;
    pp.kv_bf16 = o->kv_dtype && strcmp(o->kv_dtype, "bf16") == 0;
    if (o->timeout_ms > 0) pp.timeout_ms = o->timeout_ms;
    if (o->sink) pp.sink_listen = o->sink;
    else if (spec->sink[0]) pp.sink_listen = spec->sink;
    // a flag wins over the cluster file's "security"
    pp.security.tls_cert = o->tls_cert ? o->tls_cert : spec->tls_cert[0] ? spec->tls_cert : NULL;
    pp.security.tls_key = o->tls_key ? o->tls_key : spec->tls_key[0] ? spec->tls_key : NULL;
    pp.security.tls_ca = o->tls_ca ? o->tls_ca : spec->tls_ca[0] ? spec->tls_ca : NULL;
    pp.security.token_file =
        o->token_file ? o->token_file : spec->token_file[0] ? spec->token_file : NULL;
    pp.security.health_open = o->health_open || spec->health_open;
    pp.security.log = security_log;
    pp.security.log_user = (void *)"coordinator";
    return pp;
}

bool lp_cli_session_open(struct lp_cli_session *s, const struct lp_cli_session_opts *o,
                         const char *cmd) {
    memset(s, 0, sizeof *s);
    s->opened_at = now_s();
    struct lp_error err = {0};
    struct lp_cluster_spec spec;
    if (!check_dtypes(o, cmd) || !read_stages(o, &spec, cmd)) return false;
    if (o->fast && spec.n_workers > 0) {
        fprintf(stderr, "layerpipe %s: --fast is not available with a pipeline\n", cmd);
        return false;
    }
    const char *addrs[LP_MAX_STAGES], *spares[LP_MAX_STAGES];
    struct lp_pipeline_params pp = pipeline_params(o, &spec, addrs, spares);
    struct lp_model_load_params none = {0, 0, false, false};
    struct lp_sched_params sp = lp_sched_params_default();
    if (o->max_waiting > 0) sp.max_waiting = o->max_waiting;
    if (o->max_in_flight > 0) sp.max_in_flight = o->max_in_flight;
    if (lp_model_open(&s->model, o->model_dir, &none, &err) != LP_OK ||
        lp_pipeline_create(&s->pipeline, &pp, &err) != LP_OK ||
        lp_sched_create(&s->sched, s->pipeline, &sp, &err) != LP_OK) {
        fprintf(stderr, "layerpipe %s: %s\n", cmd, err.msg);
        lp_cli_session_close(s);
        return false;
    }
    s->weight_bytes = lp_pipeline_weight_bytes(s->pipeline);
    const struct lp_plan *plan = lp_pipeline_plan(s->pipeline);
    if (spec.n_workers == 0) {
        struct lp_stage_stats st;
        lp_pipeline_stats(s->pipeline, &st, 1);
        snprintf(s->device, sizeof s->device, "%s", st.device);
        return true;
    }
    snprintf(s->device, sizeof s->device, "pipeline of %d stages", plan->n_stages);
    fprintf(stderr, "layerpipe %s: pipeline of %d stages, layers", cmd, plan->n_stages);
    for (int i = 0; i < plan->n_stages; i++)
        fprintf(stderr, "%s%d", i ? "-" : " ", plan->layers[i]);
    fprintf(stderr, " (coordinator first), %s wire\n", o->wire_dtype ? o->wire_dtype : "f32");
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
    struct lp_sched_stats ss;
    lp_sched_stats(s->sched, &ss);
    if (ss.stage_failures > 0)
        fprintf(fp, "recovery: %llu stage failure%s, %llu recovered (last: %s), %llu failed; "
                    "%llu tokens re-prefilled; %.2f s recovering\n",
                (unsigned long long)ss.stage_failures, ss.stage_failures > 1 ? "s" : "",
                (unsigned long long)ss.recoveries, ss.last_recovery[0] ? ss.last_recovery : "-",
                (unsigned long long)ss.recovery_failures, (unsigned long long)ss.reprefill_tokens,
                ss.recovery_seconds);
}

void lp_cli_session_close(struct lp_cli_session *s) {
    lp_sched_destroy(s->sched);
    lp_pipeline_destroy(s->pipeline);
    lp_model_close(s->model);
    memset(s, 0, sizeof *s);
}
