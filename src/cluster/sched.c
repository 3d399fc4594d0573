// SPDX-License-Identifier: MIT
// sched.c -- the scheduler: continuous batching over a pipeline. Requests
// wait in a bounded FIFO until a sequence slot and their KV room (prompt
// plus max_new_tokens, in blocks of the smallest stage pool) are free; then
// they run. Each micro-batch takes the running sequences that are not in
// flight: decode rows first (one token each), then prefill chunks under the
// step's token budget, so a long prompt is spread over several steps and
// never stalls the streams already decoding. With K stages up to K
// micro-batches are in flight, each with its share of the ready sequences,
// so every stage has work. A collected step samples its sequences' next
// tokens and reports them; a failed step ends only its own requests. A
// micro-batch whose every logits row would only be sampled greedily (the
// sampler is greedy, no logprobs, no prompt logits) asks the pipeline for
// the rows' greedy ids instead of the rows: the same tokens, without the
// rows leaving the head's device (LP_NO_DEVICE_ARGMAX=1, read at create:
// always the rows).
// Threads: lp_sched_submit/cancel/stats from any thread (under `mu`); the
// scheduler thread owns the running table and drives the pipeline. Events
// are delivered on the scheduler thread without `mu` held.
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "layerpipe/cluster.h"
#include "util/argmax.h"

enum sched_state { SCHED_WAITING, SCHED_RUNNING };

// One request from submit to its DONE event.
struct sched_req {
    uint64_t id;                 // also its session id in the pipeline
    struct lp_sched_request rq;  // the caller's request (rq.prompt is not kept)
    enum sched_state state;
    int32_t *tokens;             // [max_total + 1] prompt then generated tokens, owned
    int n_prompt, n_tokens;
    int n_fed;                   // tokens submitted to the pipeline (cached or in flight)
    int n_generated, max_total;  // max_total: prompt + max_new_tokens, within the context
    int n_logits_sent;           // prompt positions whose logits were reported
    int kv_blocks;               // blocks reserved while running
    bool in_flight;
    bool cancel;                 // asked to end (mu)
    struct lp_sampler *sampler;
    double submitted_at, first_token_at;
    struct sched_req *next;      // waiting FIFO
};

// What one in-flight micro-batch holds, in segment order.
struct sched_batch {
    int n;
    struct sched_req **reqs;     // [max_seqs]
    int *n_tokens;               // [max_seqs]
    bool *want;                  // [max_seqs] its last row's logits come back
    bool *all;                   // [max_seqs] every row's logits come back
    bool greedy;                 // the rows come back as greedy ids (all requests greedy_only)
};

#define SCHED_MAX_BATCHES (LP_MAX_STAGES + 2)

struct lp_sched {
    struct lp_sched_params params;
    struct lp_pipeline *pipeline;   // borrowed
    struct lp_model_config cfg;
    int vocab, ctx, block_size, kv_total;
    bool device_argmax;             // greedy micro-batches ask for ids (LP_NO_DEVICE_ARGMAX unset)
    pthread_t thread;
    bool started;
    // shared (mu)
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool stopping;
    uint64_t next_id;
    struct sched_req *wait_head, *wait_tail;
    int n_waiting;
    struct sched_req **running;     // [max_seqs] (NULL: free slot); the thread writes, cancel reads
    int n_running, kv_used;
    struct lp_sched_stats stats;
    // scheduler thread only
    struct sched_batch batches[SCHED_MAX_BATCHES]; // ring of in-flight micro-batches
    int b_head, b_count;
    struct lp_pipeline_seg *segs;   // [max_seqs]
    float *scratch;                 // [vocab] a raw logits row, for logprobs
    bool recovering;                // a stage was lost: drain, recover, re-prefill
    bool down;                      // the last recovery failed: try again before the next step
    char lost[LP_ERROR_MSG_BYTES];  // why
};

double lp_sched_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

struct lp_sched_params lp_sched_params_default(void) {
    struct lp_sched_params p = {.max_seqs = 0, .max_waiting = 64, .step_tokens = 0,
                                .max_in_flight = 0};
    return p;
}

static void req_free(struct sched_req *r) {
    if (!r) return;
    lp_sampler_destroy(r->sampler);
    free(r->tokens);
    free(r);
}

// ---- events ----

static bool emit(struct sched_req *r, struct lp_sched_event *ev) {
    ev->id = r->id;
    ev->time = lp_sched_now();
    return r->rq.on_event(r->rq.user, ev);
}

// Ends a request: frees its KV on every stage (if it ran), reports DONE,
// frees it. Scheduler thread; the request is no longer in any list.
static void finish(struct lp_sched *s, struct sched_req *r, enum lp_status st,
                   enum lp_stop_reason stop, const char *error) {
    if (r->state == SCHED_RUNNING && r->n_fed > 0 && !s->recovering)
        lp_pipeline_release(s->pipeline, r->id);
    pthread_mutex_lock(&s->mu);
    if (r->state == SCHED_RUNNING) {
        for (int i = 0; i < s->params.max_seqs; i++)
            if (s->running[i] == r) s->running[i] = NULL;
        s->n_running--;
        s->kv_used -= r->kv_blocks;
    }
    if (st == LP_OK) s->stats.requests_finished++;
    else if (st == LP_ERR_CANCELLED) s->stats.requests_cancelled++;
    else s->stats.requests_failed++;
    pthread_mutex_unlock(&s->mu);
    struct lp_sched_event ev = {.kind = LP_SCHED_EV_DONE, .stop = stop, .status = st,
                                .error = st == LP_OK ? NULL : error, .n_prompt = r->n_prompt,
                                .n_generated = r->n_generated, .submitted_at = r->submitted_at,
                                .first_token_at = r->first_token_at};
    emit(r, &ev);
    req_free(r);
}

// ---- submit, cancel ----

enum lp_status lp_sched_submit(struct lp_sched *s, const struct lp_sched_request *rq,
                               uint64_t *id, struct lp_error *err) {
    if (!rq->on_event) return lp_error_set(err, LP_ERR_INVALID_ARG, "request: no event callback");
    if (rq->n_prompt <= 0 || !rq->prompt)
        return lp_error_set(err, LP_ERR_INVALID_ARG, "request: empty prompt");
    if (rq->max_new_tokens < 0)
        return lp_error_set(err, LP_ERR_INVALID_ARG, "request: max_new_tokens %d < 0",
                            rq->max_new_tokens);
    bool gen = rq->max_new_tokens > 0;
    if (rq->n_prompt + (gen ? 1 : 0) > s->ctx)
        return lp_error_set(err, LP_ERR_INVALID_ARG,
                            "request: the prompt has %d tokens, the context limit is %d: shorten "
                            "the prompt or raise --ctx",
                            rq->n_prompt, s->ctx);
    if ((long long)(rq->n_prompt + (gen ? 1 : 0)) > (long long)s->kv_total * s->block_size)
        return lp_error_set(err, LP_ERR_INVALID_ARG,
                            "request: the prompt has %d tokens, the KV cache holds %d positions",
                            rq->n_prompt, s->kv_total * s->block_size);
    for (int i = 0; i < rq->n_prompt; i++)
        if (rq->prompt[i] < 0 || rq->prompt[i] >= s->vocab)
            return lp_error_set(err, LP_ERR_INVALID_ARG,
                                "request: prompt token %d is %d, outside the vocabulary (0..%d)",
                                i, rq->prompt[i], s->vocab - 1);
    if (rq->n_top_logprobs < 0 || rq->n_top_logprobs > LP_SCHED_MAX_TOP_LOGPROBS)
        return lp_error_set(err, LP_ERR_INVALID_ARG, "request: %d top logprobs, at most %d",
                            rq->n_top_logprobs, LP_SCHED_MAX_TOP_LOGPROBS);
    struct sched_req *r = calloc(1, sizeof *r);
    if (!r) return lp_error_set(err, LP_ERR_NOMEM, "request: out of memory");
    r->rq = *rq;
    r->rq.prompt = NULL;
    r->n_prompt = r->n_tokens = rq->n_prompt;
    long long total = (long long)rq->n_prompt + rq->max_new_tokens;
    r->max_total = total > s->ctx ? s->ctx : (int)total;
    r->tokens = malloc(((size_t)r->max_total + 1) * sizeof *r->tokens);
    enum lp_status st;
    if (!r->tokens) {
        st = lp_error_set(err, LP_ERR_NOMEM, "request: out of memory");
        goto fail;
    }
    memcpy(r->tokens, rq->prompt, (size_t)rq->n_prompt * sizeof *r->tokens);
    if ((st = lp_sampler_create(&r->sampler, &rq->sampling, s->vocab, err)) != LP_OK) goto fail;
    int blocks = (r->max_total + s->block_size - 1) / s->block_size;
    r->kv_blocks = blocks < s->kv_total ? blocks : s->kv_total;
    r->submitted_at = lp_sched_now();
    pthread_mutex_lock(&s->mu);
    if (s->stopping || s->n_waiting >= s->params.max_waiting) {
        bool stopping = s->stopping;
        pthread_mutex_unlock(&s->mu);
        st = stopping ? lp_error_set(err, LP_ERR_CANCELLED, "the scheduler is shutting down")
                      : lp_error_set(err, LP_ERR_BUSY,
                                     "%d requests are already waiting: try again later",
                                     s->params.max_waiting);
        goto fail;
    }
    r->id = ++s->next_id;
    *id = r->id;
    if (s->wait_tail) s->wait_tail->next = r;
    else s->wait_head = r;
    s->wait_tail = r;
    s->n_waiting++;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    return LP_OK;
fail:
    req_free(r);
    return st;
}

void lp_sched_cancel(struct lp_sched *s, uint64_t id) {
    pthread_mutex_lock(&s->mu);
    for (struct sched_req *r = s->wait_head; r; r = r->next)
        if (r->id == id) r->cancel = true;
    for (int i = 0; i < s->params.max_seqs; i++)
        if (s->running[i] && s->running[i]->id == id) s->running[i]->cancel = true;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

// ---- the scheduler thread ----

// Takes cancelled requests out of the queue and admits waiting ones while
// a slot and their KV room are free (first come, first served). Under mu;
// returns the cancelled ones as a list.
static struct sched_req *admit(struct lp_sched *s) {
    struct sched_req *cancelled = NULL, **link = &s->wait_head;
    s->wait_tail = NULL;
    for (struct sched_req *r = s->wait_head; r;) {
        struct sched_req *next = r->next;
        if (r->cancel) {
            *link = next;
            r->next = cancelled;
            cancelled = r;
            s->n_waiting--;
        } else {
            link = &r->next;
            s->wait_tail = r;
        }
        r = next;
    }
    while (s->wait_head && s->n_running < s->params.max_seqs &&
           s->kv_used + s->wait_head->kv_blocks <= s->kv_total) {
        struct sched_req *r = s->wait_head;
        s->wait_head = r->next;
        if (!s->wait_head) s->wait_tail = NULL;
        r->next = NULL;
        s->n_waiting--;
        r->state = SCHED_RUNNING;
        s->kv_used += r->kv_blocks;
        for (int i = 0; i < s->params.max_seqs; i++)
            if (!s->running[i]) {
                s->running[i] = r;
                break;
            }
        s->n_running++;
    }
    return cancelled;
}

// Whether a running request waits for a step.
static bool ready(const struct lp_sched *s) {
    for (int i = 0; i < s->params.max_seqs; i++) {
        const struct sched_req *r = s->running[i];
        if (r && !r->in_flight && !r->cancel && r->n_fed < r->n_tokens) return true;
    }
    return false;
}

// Whether the request's next token is the greedy id of its logits row and
// nothing else reads the row: its sampler is greedy (lp_sampler_is_greedy:
// no penalties, no state), no logprobs. (Prompt logits rows are the
// segment's all_logits.) The garbage check needs only the row's first
// non-finite index, which comes back with the ids.
static bool greedy_only(const struct sched_req *r) {
    return lp_sampler_is_greedy(r->sampler) && !r->rq.logprobs && r->rq.n_top_logprobs == 0;
}

// Forms one micro-batch from running requests not in flight and submits it.
// Returns false when there was nothing to submit.
static bool submit_one(struct lp_sched *s) {
    int n_ready = 0, free_batches = s->params.max_in_flight - s->b_count;
    if (free_batches <= 0 || s->b_count == SCHED_MAX_BATCHES) return false;
    for (int i = 0; i < s->params.max_seqs; i++) {
        struct sched_req *r = s->running[i];
        if (r && !r->in_flight && !r->cancel && r->n_fed < r->n_tokens) n_ready++;
    }
    if (n_ready == 0) return false;
    // this batch's share of the ready sequences, so the other free slots get work too
    int share = (n_ready + free_batches - 1) / free_batches;
    struct sched_batch *b = &s->batches[(s->b_head + s->b_count) % SCHED_MAX_BATCHES];
    b->n = 0;
    int budget = s->params.step_tokens;
    // decode rows first, then prefill chunks (pass 0: decode, pass 1: prefill)
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < s->params.max_seqs && b->n < share && budget > 0; i++) {
            struct sched_req *r = s->running[i];
            if (!r || r->in_flight || r->cancel || r->n_fed >= r->n_tokens) continue;
            bool decode = r->n_fed >= r->n_prompt;
            if (decode != (pass == 0)) continue;
            int n = r->n_tokens - r->n_fed;
            if (n > budget) n = budget;
            bool last = r->n_fed + n == r->n_tokens;
            struct lp_pipeline_seg *g = &s->segs[b->n];
            *g = (struct lp_pipeline_seg){.session = r->id, .pos0 = r->n_fed, .n_tokens = n,
                                          .tokens = r->tokens + r->n_fed,
                                          .want_logits = last && r->rq.max_new_tokens > 0,
                                          .all_logits = !decode && r->rq.prompt_logits};
            b->reqs[b->n] = r;
            b->n_tokens[b->n] = n;
            b->want[b->n] = g->want_logits;
            b->all[b->n] = g->all_logits;
            b->n++;
            budget -= n;
        }
    if (b->n == 0) return false;
    int n_rows = 0;
    b->greedy = s->device_argmax;
    for (int i = 0; i < b->n; i++)
        if (b->want[i] || b->all[i]) {
            n_rows++;
            b->greedy &= !b->all[i] && greedy_only(b->reqs[i]);
        }
    b->greedy &= n_rows > 0;
    uint64_t step;
    struct lp_error err = {0};
    enum lp_status st = lp_pipeline_submit(s->pipeline, s->segs, b->n, b->greedy, &step, &err);
    if (st != LP_OK) { // nothing was submitted: these requests cannot go on
        for (int i = 0; i < b->n; i++) finish(s, b->reqs[i], st, LP_STOP_NONE, err.msg);
        return true;
    }
    for (int i = 0; i < b->n; i++) {
        b->reqs[i]->in_flight = true;
        b->reqs[i]->n_fed += b->n_tokens[i];
    }
    s->b_count++;
    return true;
}

// log-softmax of the raw row into the token's logprob and the top n.
static void logprobs(const float *row, int vocab, int32_t token, int n_top, float *lp,
                     int32_t *top_ids, float *top_lp) {
    float mx = -INFINITY;
    for (int i = 0; i < vocab; i++)
        if (row[i] > mx) mx = row[i];
    double sum = 0;
    for (int i = 0; i < vocab; i++) sum += exp((double)(row[i] - mx));
    float lse = mx + (float)log(sum);
    *lp = row[token] - lse;
    int k = 0; // top_ids[0..k) sorted by decreasing logit (insertion)
    for (int i = 0; i < vocab && n_top > 0; i++) {
        if (k == n_top && row[i] <= row[top_ids[k - 1]]) continue;
        int j = k < n_top ? k++ : k - 1;
        while (j > 0 && row[top_ids[j - 1]] < row[i]) {
            top_ids[j] = top_ids[j - 1];
            j--;
        }
        top_ids[j] = i;
    }
    for (int i = 0; i < k; i++) top_lp[i] = row[top_ids[i]] - lse;
}

// Ends a request whose logits row has a NaN or an infinity at index i
// (kind says which): never sample from garbage. Returns true.
static bool bad_row(struct lp_sched *s, struct sched_req *r, int32_t i, const char *kind) {
    char msg[160];
    snprintf(msg, sizeof msg,
             "the model produced a %s logit (token %d at position %d): the weights or a stage "
             "are broken",
             kind, i, r->n_tokens);
    finish(s, r, LP_ERR_INTERNAL, LP_STOP_NONE, msg);
    return true;
}

// Takes the token a sequence's step gave (ev: its TOKEN event, logprobs
// filled): an EOS ends the request unreported; otherwise it is reported, and
// the limits may end the request. Returns true when the request finished.
static bool take_token(struct lp_sched *s, struct sched_req *r, int32_t tok,
                       struct lp_sched_event *ev) {
    if (!r->rq.ignore_eos && lp_model_config_is_eos(&s->cfg, tok)) {
        finish(s, r, LP_OK, LP_STOP_EOS, NULL);
        return true;
    }
    r->tokens[r->n_tokens++] = tok;
    r->n_generated++;
    if (r->n_generated == 1) r->first_token_at = lp_sched_now();
    pthread_mutex_lock(&s->mu);
    s->stats.generation_tokens++;
    pthread_mutex_unlock(&s->mu);
    ev->token = tok;
    if (emit(r, ev)) {
        finish(s, r, LP_OK, LP_STOP_CALLBACK, NULL);
        return true;
    }
    if (r->n_generated >= r->rq.max_new_tokens) {
        finish(s, r, LP_OK, LP_STOP_LENGTH, NULL);
        return true;
    }
    if (r->n_tokens >= s->ctx) {
        finish(s, r, LP_OK, LP_STOP_CONTEXT, NULL);
        return true;
    }
    return false;
}

// A sequence's logits row came back: sample, report, and end it if done.
// Returns true when the request finished (and was freed).
static bool next_token(struct lp_sched *s, struct sched_req *r, float *row) {
    struct lp_sched_event ev = {.kind = LP_SCHED_EV_TOKEN};
    int32_t bad = lp_first_nonfinite_f32(row, s->vocab);
    if (bad >= 0) return bad_row(s, r, bad, isnan(row[bad]) ? "NaN" : "infinite");
    int32_t top_ids[LP_SCHED_MAX_TOP_LOGPROBS];
    float top_lp[LP_SCHED_MAX_TOP_LOGPROBS];
    bool want_lp = r->rq.logprobs || r->rq.n_top_logprobs > 0;
    if (want_lp) memcpy(s->scratch, row, (size_t)s->vocab * sizeof *row);
    int32_t tok = lp_sampler_sample(r->sampler, row, r->tokens, r->n_tokens);
    if (want_lp) { // (also for an EOS that ends the request: not reported)
        logprobs(s->scratch, s->vocab, tok, r->rq.n_top_logprobs, &ev.logprob, top_ids, top_lp);
        ev.n_top = r->rq.n_top_logprobs;
        ev.top_ids = top_ids;
        ev.top_logprobs = top_lp;
    }
    return take_token(s, r, tok, &ev);
}

// The same for a greedy micro-batch: the row's greedy id (what the sampler
// would pick: greedy_only) and its first non-finite index came back instead.
static bool next_token_greedy(struct lp_sched *s, struct sched_req *r, int32_t id, int32_t bad) {
    if (bad >= 0) return bad_row(s, r, bad, "NaN or infinite");
    struct lp_sched_event ev = {.kind = LP_SCHED_EV_TOKEN};
    return take_token(s, r, id, &ev);
}

// Collects the oldest micro-batch and moves its sequences on.
static void collect_one(struct lp_sched *s) {
    struct lp_pipeline_result res;
    struct lp_error err = {0};
    struct sched_batch *b = &s->batches[s->b_head];
    if (lp_pipeline_collect(s->pipeline, &res, &err) != LP_OK) { // nothing in flight: a bug
        res.status = err.status;
        snprintf(res.error, sizeof res.error, "%s", err.msg);
    }
    s->b_head = (s->b_head + 1) % SCHED_MAX_BATCHES;
    s->b_count--;
    pthread_mutex_lock(&s->mu);
    s->stats.steps++;
    if (res.status != LP_OK) s->stats.step_failures++;
    else if (b->greedy) s->stats.greedy_steps++;
    pthread_mutex_unlock(&s->mu);
    int row = 0;
    if (res.status != LP_OK && res.stage_down) { // recover, then re-prefill these too
        if (!s->recovering) {
            fprintf(stderr, "layerpipe: a stage was lost: %s; recovering\n", res.error);
            snprintf(s->lost, sizeof s->lost, "%s", res.error);
            pthread_mutex_lock(&s->mu);
            s->stats.stage_failures++;
            pthread_mutex_unlock(&s->mu);
        }
        s->recovering = true;
        for (int i = 0; i < b->n; i++) b->reqs[i]->in_flight = false;
        return;
    }
    for (int i = 0; i < b->n; i++) {
        struct sched_req *r = b->reqs[i];
        r->in_flight = false;
        if (res.status != LP_OK) {
            fprintf(stderr, "layerpipe: step %llu failed: %s\n", (unsigned long long)res.step,
                    res.error);
            finish(s, r, res.status, LP_STOP_NONE, res.error);
            continue;
        }
        int n_rows = b->all[i] ? b->n_tokens[i] : b->want[i] ? 1 : 0;
        int first = row; // its rows are [first, first + n_rows) of the step's
        row += n_rows;
        float *rows = b->greedy ? NULL : res.logits + (size_t)first * (size_t)s->vocab;
        bool prefill = r->n_fed <= r->n_prompt && r->n_generated == 0;
        if (prefill) {
            pthread_mutex_lock(&s->mu);
            s->stats.prompt_tokens += (uint64_t)b->n_tokens[i];
            pthread_mutex_unlock(&s->mu);
        }
        if (r->cancel) {
            finish(s, r, LP_ERR_CANCELLED, LP_STOP_NONE, "cancelled");
            continue;
        }
        int pos0 = r->n_fed - b->n_tokens[i], skip = r->n_logits_sent - pos0;
        if (skip < 0) skip = 0;
        if (b->all[i] && skip < b->n_tokens[i]) { // (rows reported before a recovery are not again)
            struct lp_sched_event ev = {.kind = LP_SCHED_EV_PROMPT_LOGITS, .pos0 = pos0 + skip,
                                        .n_rows = b->n_tokens[i] - skip, .vocab = s->vocab,
                                        .logits = rows + (size_t)skip * (size_t)s->vocab};
            r->n_logits_sent = r->n_fed;
            if (emit(r, &ev)) {
                finish(s, r, LP_OK, LP_STOP_CALLBACK, NULL);
                continue;
            }
        }
        if (r->n_fed == r->n_prompt && r->rq.max_new_tokens == 0) {
            finish(s, r, LP_OK, LP_STOP_LENGTH, NULL);
            continue;
        }
        if (b->want[i] && b->greedy) // (no all_logits in a greedy step: n_rows is 1)
            next_token_greedy(s, r, res.greedy_ids[first], res.greedy_bad[first]);
        else if (b->want[i])
            next_token(s, r, rows + (size_t)(n_rows - 1) * (size_t)s->vocab);
    }
}

// Ends running requests that were cancelled and are not in flight.
static void reap_cancelled(struct lp_sched *s) {
    for (int i = 0; i < s->params.max_seqs; i++) {
        struct sched_req *r = s->running[i];
        if (!r || r->in_flight) continue;
        pthread_mutex_lock(&s->mu);
        bool c = r->cancel;
        pthread_mutex_unlock(&s->mu);
        if (c) finish(s, r, LP_ERR_CANCELLED, LP_STOP_NONE, "cancelled");
    }
}

// With nothing in flight: brings the pipeline back and rewinds every
// running request to re-prefill its tokens (prompt and generated: the next
// token is sampled from the same logits, by the same sampler state), or,
// past the deadline, ends them with the error.
static void recover(struct lp_sched *s) {
    double t0 = lp_sched_now();
    char how[96];
    struct lp_error err = {0};
    enum lp_status st = lp_pipeline_recover(s->pipeline, how, sizeof how, &err);
    double dt = lp_sched_now() - t0;
    int n = 0, tokens = 0;
    if (st == LP_OK) {
        for (int i = 0; i < s->params.max_seqs; i++) {
            struct sched_req *r = s->running[i];
            if (!r) continue;
            n++;
            tokens += r->n_fed;
            r->n_fed = 0;
        }
        fprintf(stderr, "layerpipe: recovered (%s) in %.2f s; re-prefilling %d sequences (%d "
                        "tokens)\n",
                how, dt, n, tokens);
    } else {
        fprintf(stderr, "layerpipe: recovery failed after %.2f s: %s\n", dt, err.msg);
    }
    pthread_mutex_lock(&s->mu);
    s->stats.recovery_seconds += dt;
    if (st == LP_OK) {
        s->stats.recoveries++;
        s->stats.reprefill_tokens += (uint64_t)tokens;
        snprintf(s->stats.last_recovery, sizeof s->stats.last_recovery, "%s", how);
        s->kv_total = lp_pipeline_kv_blocks(s->pipeline);
    } else {
        s->stats.recovery_failures++;
    }
    pthread_mutex_unlock(&s->mu);
    s->recovering = false;
    s->down = st != LP_OK;
    if (st == LP_OK) return;
    char msg[2 * LP_ERROR_MSG_BYTES + 16];
    snprintf(msg, sizeof msg, "%s (after: %s)", err.msg, s->lost);
    for (int i = 0; i < s->params.max_seqs; i++) {
        struct sched_req *r = s->running[i];
        if (!r) continue;
        r->n_fed = 0; // its KV is gone everywhere: nothing to release
        finish(s, r, LP_ERR_NETWORK, LP_STOP_NONE, msg);
    }
}

static void *sched_main(void *arg) {
    struct lp_sched *s = arg;
    for (;;) {
        pthread_mutex_lock(&s->mu);
        if (s->stopping) {
            pthread_mutex_unlock(&s->mu);
            break;
        }
        struct sched_req *cancelled = admit(s);
        pthread_mutex_unlock(&s->mu);
        while (cancelled) {
            struct sched_req *next = cancelled->next;
            finish(s, cancelled, LP_ERR_CANCELLED, LP_STOP_NONE, "cancelled while waiting");
            cancelled = next;
        }
        if (s->recovering) { // drain what is in flight, then bring the stage back
            if (s->b_count > 0) collect_one(s);
            else recover(s);
            continue;
        }
        reap_cancelled(s);
        if (s->down && s->b_count == 0 && ready(s)) { // new work for a pipeline still down
            recover(s);
            continue;
        }
        bool submitted = false;
        while (submit_one(s)) submitted = true;
        if (s->b_count > 0) {
            collect_one(s);
            continue;
        }
        if (submitted) continue;
        pthread_mutex_lock(&s->mu);
        bool work = s->stopping || (s->wait_head && s->n_running < s->params.max_seqs &&
                                    s->kv_used + s->wait_head->kv_blocks <= s->kv_total);
        for (int i = 0; !work && i < s->params.max_seqs; i++)
            if (s->running[i] && (s->running[i]->cancel ||
                                  s->running[i]->n_fed < s->running[i]->n_tokens))
                work = true;
        for (struct sched_req *r = s->wait_head; !work && r; r = r->next) work = r->cancel;
        if (!work) pthread_cond_wait(&s->cv, &s->mu);
        pthread_mutex_unlock(&s->mu);
    }
    // shutdown: wait out what is in flight, then end everything
    while (s->b_count > 0) collect_one(s);
    for (int i = 0; i < s->params.max_seqs; i++)
        if (s->running[i])
            finish(s, s->running[i], LP_ERR_CANCELLED, LP_STOP_NONE, "the server is shutting down");
    pthread_mutex_lock(&s->mu);
    struct sched_req *w = s->wait_head;
    s->wait_head = s->wait_tail = NULL;
    s->n_waiting = 0;
    pthread_mutex_unlock(&s->mu);
    while (w) {
        struct sched_req *next = w->next;
        finish(s, w, LP_ERR_CANCELLED, LP_STOP_NONE, "the server is shutting down");
        w = next;
    }
    return NULL;
}

// ---- lifecycle ----

enum lp_status lp_sched_create(struct lp_sched **out, struct lp_pipeline *pipeline,
                               const struct lp_sched_params *params, struct lp_error *err) {
    *out = NULL;
    struct lp_sched *s = calloc(1, sizeof *s);
    if (!s) return lp_error_set(err, LP_ERR_NOMEM, "scheduler: out of memory");
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    enum lp_status st = LP_OK;
    s->pipeline = pipeline;
    s->params = *params;
    s->cfg = *lp_pipeline_config(pipeline);
    s->vocab = s->cfg.vocab_size;
    s->ctx = lp_pipeline_max_context(pipeline);
    s->block_size = lp_pipeline_kv_block_size(pipeline);
    s->kv_total = lp_pipeline_kv_blocks(pipeline);
    s->device_argmax = !getenv("LP_NO_DEVICE_ARGMAX");
    int sessions = lp_pipeline_max_sessions(pipeline);
    struct lp_sched_params *p = &s->params;
    if (p->max_seqs <= 0 || p->max_seqs > sessions) p->max_seqs = sessions;
    if (p->max_waiting < 0) p->max_waiting = 0;
    int rows = lp_pipeline_max_batch_tokens(pipeline);
    if (p->step_tokens <= 0 || p->step_tokens > rows) p->step_tokens = rows;
    int stages = lp_pipeline_plan(pipeline)->n_stages;
    if (p->max_in_flight <= 0) p->max_in_flight = stages;
    if (p->max_in_flight > stages + 1) p->max_in_flight = stages + 1;
    size_t n = (size_t)p->max_seqs;
    s->running = calloc(n, sizeof *s->running);
    s->segs = calloc(n, sizeof *s->segs);
    s->scratch = malloc((size_t)s->vocab * sizeof *s->scratch);
    bool ok = s->running && s->segs && s->scratch;
    for (int i = 0; i < SCHED_MAX_BATCHES && ok; i++) {
        struct sched_batch *b = &s->batches[i];
        b->reqs = calloc(n, sizeof *b->reqs);
        b->n_tokens = calloc(n, sizeof *b->n_tokens);
        b->want = calloc(n, sizeof *b->want);
        b->all = calloc(n, sizeof *b->all);
        ok = b->reqs && b->n_tokens && b->want && b->all;
    }
    if (!ok) {
        st = lp_error_set(err, LP_ERR_NOMEM, "scheduler: out of memory");
        goto fail;
    }
    if (s->kv_total <= 0 || s->block_size <= 0) {
        st = lp_error_set(err, LP_ERR_INVALID_ARG, "scheduler: the pipeline has no KV room");
        goto fail;
    }
    if (pthread_create(&s->thread, NULL, sched_main, s) != 0) {
        st = lp_error_set(err, LP_ERR_INTERNAL, "scheduler: cannot start its thread");
        goto fail;
    }
    s->started = true;
    *out = s;
    return LP_OK;
fail:
    lp_sched_destroy(s);
    return st;
}

void lp_sched_destroy(struct lp_sched *s) {
    if (!s) return;
    if (s->started) {
        pthread_mutex_lock(&s->mu);
        s->stopping = true;
        pthread_cond_broadcast(&s->cv);
        pthread_mutex_unlock(&s->mu);
        pthread_join(s->thread, NULL);
    }
    for (int i = 0; i < SCHED_MAX_BATCHES; i++) {
        free(s->batches[i].reqs);
        free(s->batches[i].n_tokens);
        free(s->batches[i].want);
        free(s->batches[i].all);
    }
    free(s->running);
    free(s->segs);
    free(s->scratch);
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

void lp_sched_stats(struct lp_sched *s, struct lp_sched_stats *out) {
    pthread_mutex_lock(&s->mu);
    *out = s->stats;
    out->running = s->n_running;
    out->waiting = s->n_waiting;
    out->kv_blocks_used = s->kv_used;
    out->kv_blocks_total = s->kv_total;
    pthread_mutex_unlock(&s->mu);
}

struct lp_pipeline *lp_sched_pipeline(struct lp_sched *s) { return s->pipeline; }

// ---- the blocking form ----

struct sched_wait {
    lp_sched_event_fn fn;
    void *user;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool done;
    struct lp_sched_event ev;
    char error[LP_ERROR_MSG_BYTES];
};

static bool wait_on_event(void *user, const struct lp_sched_event *ev) {
    struct sched_wait *w = user;
    bool stop = w->fn ? w->fn(w->user, ev) : false;
    if (ev->kind == LP_SCHED_EV_DONE) {
        pthread_mutex_lock(&w->mu);
        w->ev = *ev;
        snprintf(w->error, sizeof w->error, "%s", ev->error ? ev->error : "");
        w->ev.error = w->error;
        w->done = true;
        pthread_cond_signal(&w->cv);
        pthread_mutex_unlock(&w->mu);
    }
    return stop;
}

enum lp_status lp_sched_run(struct lp_sched *s, const struct lp_sched_request *req,
                            struct lp_sched_event *done, struct lp_error *err) {
    struct sched_wait w = {.fn = req->on_event, .user = req->user};
    pthread_mutex_init(&w.mu, NULL);
    pthread_cond_init(&w.cv, NULL);
    struct lp_sched_request rq = *req;
    rq.on_event = wait_on_event;
    rq.user = &w;
    uint64_t id;
    enum lp_status st = lp_sched_submit(s, &rq, &id, err);
    if (st == LP_OK) {
        pthread_mutex_lock(&w.mu);
        while (!w.done) pthread_cond_wait(&w.cv, &w.mu);
        pthread_mutex_unlock(&w.mu);
        st = w.ev.status;
        if (st != LP_OK) lp_error_set(err, st, "%s", w.error);
        if (done) {
            *done = w.ev;
            done->error = NULL; // w.error dies with this call
        }
    }
    pthread_cond_destroy(&w.cv);
    pthread_mutex_destroy(&w.mu);
    return st;
}
