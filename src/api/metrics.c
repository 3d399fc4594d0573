// SPDX-License-Identifier: MIT
// metrics.c -- /metrics in the Prometheus text format (version 0.0.4),
// clean under `promtool check metrics`: vLLM's names under a layerpipe_
// prefix (requests running and waiting, KV use, token counters, TTFT /
// inter-token / end-to-end latency histograms) plus what only a pipeline
// has: per stage (label `stage`) busy ratio, tokens, KV blocks, and per hop
// latency quantiles and bytes. Histograms are atomics so the scheduler
// thread records into them without a lock.
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/internal.h"

static const double ttft_bounds[] = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1,  0.25,
                                     0.5,   0.75,  1.0,  2.5,  5.0,  7.5,  10.0, 20.0, 40.0};
static const double itl_bounds[] = {0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1,
                                    0.15,  0.2,    0.3,   0.4,  0.5,  0.75, 1.0,  2.5};
static const double e2e_bounds[] = {0.3,  0.5,  0.8,  1.0,  1.5,  2.0,  2.5,   5.0,   10.0,
                                    15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0};

static void hist_init(struct lp_api_hist *h, const double *bounds, int n) {
    memset(h, 0, sizeof *h);
    h->bounds = bounds;
    h->n_bounds = n;
}

void lp_api_metrics_init(struct lp_api_metrics *m) {
    memset(m, 0, sizeof *m);
    hist_init(&m->ttft, ttft_bounds, (int)(sizeof ttft_bounds / sizeof ttft_bounds[0]));
    hist_init(&m->itl, itl_bounds, (int)(sizeof itl_bounds / sizeof itl_bounds[0]));
    hist_init(&m->e2e, e2e_bounds, (int)(sizeof e2e_bounds / sizeof e2e_bounds[0]));
}

void lp_api_hist_observe(struct lp_api_hist *h, double seconds) {
    if (!(seconds >= 0)) seconds = 0;
    int i = 0;
    while (i < h->n_bounds && seconds > h->bounds[i])
        i++;
    atomic_fetch_add(&h->buckets[i], 1);
    atomic_fetch_add(&h->count, 1);
    atomic_fetch_add(&h->sum_ns, (uint_fast64_t)(seconds * 1e9));
}

struct out {
    char *s;
    size_t n, cap;
    bool failed;
};

static void put(struct out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(struct out *o, const char *fmt, ...) {
    if (o->failed) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int k = vsnprintf(o->s + o->n, o->cap - o->n, fmt, ap);
        va_end(ap);
        if (k < 0) {
            o->failed = true;
            return;
        }
        if ((size_t)k < o->cap - o->n) {
            o->n += (size_t)k;
            return;
        }
        size_t cap = o->cap * 2 + (size_t)k;
        char *s = realloc(o->s, cap);
        if (!s) {
            o->failed = true;
            return;
        }
        o->s = s;
        o->cap = cap;
    }
}

static void header(struct out *o, const char *name, const char *type, const char *help) {
    put(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void hist(struct out *o, const char *name, const char *help, struct lp_api_hist *h) {
    header(o, name, "histogram", help);
    uint64_t cum = 0;
    for (int i = 0; i < h->n_bounds; i++) {
        cum += atomic_load(&h->buckets[i]);
        put(o, "%s_bucket{le=\"%g\"} %llu\n", name, h->bounds[i], (unsigned long long)cum);
    }
    cum += atomic_load(&h->buckets[h->n_bounds]);
    // +Inf equals _count by construction (read the buckets, not the counter,
    // so a concurrent observe cannot make them disagree)
    put(o, "%s_bucket{le=\"+Inf\"} %llu\n", name, (unsigned long long)cum);
    put(o, "%s_sum %.9f\n", name, (double)atomic_load(&h->sum_ns) * 1e-9);
    put(o, "%s_count %llu\n", name, (unsigned long long)cum);
}

static void stage_metrics(struct out *o, const struct lp_stage_stats *st, int n) {
    header(o, "layerpipe_stage_busy_ratio", "gauge",
           "Fraction of its running time the stage spent computing.");
    for (int i = 0; i < n; i++) {
        double t = st[i].busy_seconds + st[i].idle_seconds;
        put(o, "layerpipe_stage_busy_ratio{stage=\"%d\"} %.6f\n", i,
            t > 0 ? st[i].busy_seconds / t : 0.0);
    }
    header(o, "layerpipe_stage_busy_seconds_total", "counter",
           "Seconds the stage has spent computing (rate() gives its busy share).");
    for (int i = 0; i < n; i++)
        put(o, "layerpipe_stage_busy_seconds_total{stage=\"%d\"} %.6f\n", i, st[i].busy_seconds);
    header(o, "layerpipe_stage_up", "gauge", "1 when the stage answered its last Stats call.");
    for (int i = 0; i < n; i++)
        put(o, "layerpipe_stage_up{stage=\"%d\"} %d\n", i, st[i].ok);
    header(o, "layerpipe_stage_tokens_total", "counter", "Tokens the stage has computed.");
    for (int i = 0; i < n; i++)
        put(o, "layerpipe_stage_tokens_total{stage=\"%d\"} %llu\n", i,
            (unsigned long long)st[i].tokens);
    header(o, "layerpipe_stage_kv_blocks_used", "gauge", "KV cache blocks in use on the stage.");
    for (int i = 0; i < n; i++)
        put(o, "layerpipe_stage_kv_blocks_used{stage=\"%d\"} %d\n", i, st[i].kv_blocks_used);
    header(o, "layerpipe_stage_kv_blocks_capacity", "gauge", "KV cache blocks of the stage.");
    for (int i = 0; i < n; i++)
        put(o, "layerpipe_stage_kv_blocks_capacity{stage=\"%d\"} %d\n", i, st[i].kv_blocks_total);
    header(o, "layerpipe_hop_latency_seconds", "summary",
           "Latency of the hop from the stage to its successor, by quantile.");
    for (int i = 0; i < n; i++) {
        put(o, "layerpipe_hop_latency_seconds{stage=\"%d\",quantile=\"0.5\"} %.9f\n", i,
            st[i].hop_p50_ms * 1e-3);
        put(o, "layerpipe_hop_latency_seconds{stage=\"%d\",quantile=\"0.99\"} %.9f\n", i,
            st[i].hop_p99_ms * 1e-3);
    }
    header(o, "layerpipe_hop_sent_bytes_total", "counter",
           "Bytes the stage sent to its successor.");
    for (int i = 0; i < n; i++)
        put(o, "layerpipe_hop_sent_bytes_total{stage=\"%d\"} %llu\n", i,
            (unsigned long long)st[i].bytes_out);
    header(o, "layerpipe_hop_received_bytes_total", "counter",
           "Bytes the stage received from its predecessor.");
    for (int i = 0; i < n; i++)
        put(o, "layerpipe_hop_received_bytes_total{stage=\"%d\"} %llu\n", i,
            (unsigned long long)st[i].bytes_in);
}

char *lp_api_metrics_render(struct lp_server *s, size_t *n_bytes) {
    struct out o = {.s = malloc(8192), .cap = 8192};
    if (!o.s) return NULL;
    struct lp_sched_stats ss;
    lp_sched_stats(s->sched, &ss);
    struct lp_stage_stats st[LP_MAX_STAGES];
    int n = lp_pipeline_stats(lp_sched_pipeline(s->sched), st, LP_MAX_STAGES);
    header(&o, "layerpipe_num_requests_running", "gauge", "Requests generating now.");
    put(&o, "layerpipe_num_requests_running %d\n", ss.running);
    header(&o, "layerpipe_num_requests_waiting", "gauge", "Requests waiting for admission.");
    put(&o, "layerpipe_num_requests_waiting %d\n", ss.waiting);
    header(&o, "layerpipe_kv_cache_usage_perc", "gauge",
           "Fraction of the KV cache blocks reserved (1 = full).");
    put(&o, "layerpipe_kv_cache_usage_perc %.6f\n",
        ss.kv_blocks_total > 0 ? (double)ss.kv_blocks_used / ss.kv_blocks_total : 0.0);
    header(&o, "layerpipe_prompt_tokens_total", "counter", "Prompt tokens prefilled.");
    put(&o, "layerpipe_prompt_tokens_total %llu\n", (unsigned long long)ss.prompt_tokens);
    header(&o, "layerpipe_generation_tokens_total", "counter", "Tokens generated.");
    put(&o, "layerpipe_generation_tokens_total %llu\n", (unsigned long long)ss.generation_tokens);
    static const char *reasons[LP_API_FINISH_N] = {"stop", "length", "tool_calls"};
    header(&o, "layerpipe_request_success_total", "counter",
           "Requests that finished, by finish reason.");
    for (int i = 0; i < LP_API_FINISH_N; i++)
        put(&o, "layerpipe_request_success_total{finished_reason=\"%s\"} %llu\n", reasons[i],
            (unsigned long long)atomic_load(&s->metrics.success[i]));
    header(&o, "layerpipe_request_failure_total", "counter",
           "Requests that failed in the scheduler (cancellations excluded).");
    put(&o, "layerpipe_request_failure_total %llu\n", (unsigned long long)ss.requests_failed);
    header(&o, "layerpipe_request_cancelled_total", "counter",
           "Requests cancelled (client gone, shutdown).");
    put(&o, "layerpipe_request_cancelled_total %llu\n", (unsigned long long)ss.requests_cancelled);
    header(&o, "layerpipe_stage_failures_total", "counter",
           "Stages lost mid-request (connection, deadline) that started a recovery.");
    put(&o, "layerpipe_stage_failures_total %llu\n", (unsigned long long)ss.stage_failures);
    header(&o, "layerpipe_recoveries_total", "counter",
           "Recoveries, by outcome (ok: the sequences went on; failed: past the deadline).");
    put(&o, "layerpipe_recoveries_total{outcome=\"ok\"} %llu\n", (unsigned long long)ss.recoveries);
    put(&o, "layerpipe_recoveries_total{outcome=\"failed\"} %llu\n",
        (unsigned long long)ss.recovery_failures);
    header(&o, "layerpipe_reprefill_tokens_total", "counter",
           "Tokens computed again to restore sequences after a recovery.");
    put(&o, "layerpipe_reprefill_tokens_total %llu\n", (unsigned long long)ss.reprefill_tokens);
    header(&o, "layerpipe_recovery_seconds_total", "counter", "Time spent recovering lost stages.");
    put(&o, "layerpipe_recovery_seconds_total %.6f\n", ss.recovery_seconds);
    header(&o, "layerpipe_http_responses_total", "counter", "HTTP responses, by status class.");
    for (int i = 1; i <= 5; i++)
        put(&o, "layerpipe_http_responses_total{code=\"%dxx\"} %llu\n", i,
            (unsigned long long)atomic_load(&s->metrics.http[i]));
    hist(&o, "layerpipe_time_to_first_token_seconds",
         "Time from the request's arrival to its first generated token.", &s->metrics.ttft);
    hist(&o, "layerpipe_inter_token_latency_seconds", "Time between two generated tokens.",
         &s->metrics.itl);
    hist(&o, "layerpipe_e2e_request_latency_seconds",
         "Time from the request's arrival to its last token.", &s->metrics.e2e);
    stage_metrics(&o, st, n);
    if (o.failed) {
        free(o.s);
        return NULL;
    }
    *n_bytes = o.n;
    return o.s;
}
