// SPDX-License-Identifier: MIT
// pool.c -- the CPU backend's persistent thread pool. A task is published
// by bumping `gen`; workers spin on it for about LP_POOL_SPIN_NS (a decode
// step issues hundreds of small tasks back to back, and a futex wake costs
// several microseconds), then sleep on `cv`. Slice i of a task is worker
// i's, but whoever claims it first runs it (exactly once): the caller runs
// slice 0, then every slice no worker has claimed yet, and waits only for
// the slices workers are running. On a shared machine a worker that is not
// scheduled when a task starts then costs nothing (the caller does its
// slice) instead of stalling every task until it runs again.
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend/cpu/internal.h"

#define LP_POOL_SPIN_NS 200000 // 0.2 ms of spinning before a worker sleeps
#define LP_POOL_WAIT_SPINS 4096 // pauses before the caller's wait yields its core

struct lp_cpu_pool;

struct lp_pool_worker {
    struct lp_cpu_pool *pool;
    int i_thread;
};

// Written by the caller thread between tasks (fn, arg) and read by workers
// after they observe the new gen (release/acquire on gen orders them).
struct lp_cpu_pool {
    int n_threads;                   // including the caller
    pthread_t *threads;              // [n_threads - 1]
    struct lp_pool_worker *workers;  // [n_threads - 1]
    int n_started;                   // threads actually created
    lp_cpu_task_fn fn;
    void *arg;
    _Atomic uint64_t gen;  // task generation
    // Per slice [n_threads]: the last generation it was claimed for (only
    // grows: a claim for an older generation always fails), and the last
    // generation a worker finished it for.
    _Atomic uint64_t *claimed;
    _Atomic uint64_t *finished;
    _Atomic int n_sleeping;
    _Atomic int stop;
    pthread_mutex_t mu;    // guards the sleep on cv
    pthread_cond_t cv;
};

static inline void lp_pool_pause(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static int64_t lp_pool_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

// Claims slice i for generation g: true for exactly one caller per (i, g),
// and never once a later generation claimed it.
static bool lp_pool_claim(struct lp_cpu_pool *pool, int i, uint64_t g) {
    uint64_t old = atomic_load_explicit(&pool->claimed[i], memory_order_acquire);
    while (old < g)
        if (atomic_compare_exchange_weak_explicit(&pool->claimed[i], &old, g, memory_order_acq_rel,
                                                  memory_order_acquire))
            return true;
    return false;
}

static void *lp_pool_main(void *p) {
    struct lp_pool_worker *wk = p;
    struct lp_cpu_pool *pool = wk->pool;
    uint64_t seen = 0;
    for (;;) {
        // Spin, then sleep, until a new generation (or stop) appears.
        int64_t t0 = lp_pool_now_ns();
        for (int i = 0;; i++) {
            if (atomic_load_explicit(&pool->gen, memory_order_acquire) != seen) break;
            if (atomic_load_explicit(&pool->stop, memory_order_acquire)) return NULL;
            lp_pool_pause();
            if ((i & 255) == 255 && lp_pool_now_ns() - t0 > LP_POOL_SPIN_NS) {
                pthread_mutex_lock(&pool->mu);
                atomic_fetch_add(&pool->n_sleeping, 1);
                while (atomic_load(&pool->gen) == seen && !atomic_load(&pool->stop))
                    pthread_cond_wait(&pool->cv, &pool->mu);
                atomic_fetch_sub(&pool->n_sleeping, 1);
                pthread_mutex_unlock(&pool->mu);
                t0 = lp_pool_now_ns();
            }
        }
        if (atomic_load_explicit(&pool->stop, memory_order_acquire)) return NULL;
        seen = atomic_load_explicit(&pool->gen, memory_order_acquire);
        // fn and arg are generation seen's until this slice is finished: the
        // caller publishes the next task only after waiting for it.
        if (!lp_pool_claim(pool, wk->i_thread, seen)) continue; // the caller took it
        pool->fn(pool->arg, wk->i_thread, pool->n_threads);
        atomic_store_explicit(&pool->finished[wk->i_thread], seen, memory_order_release);
    }
}

static void lp_pool_wake(struct lp_cpu_pool *pool) {
    // seq_cst pairs with the worker's n_sleeping++ then gen check: either the
    // worker sees the new gen, or we see it sleeping and broadcast.
    if (atomic_load(&pool->n_sleeping) > 0) {
        pthread_mutex_lock(&pool->mu);
        pthread_cond_broadcast(&pool->cv);
        pthread_mutex_unlock(&pool->mu);
    }
}

enum lp_status lp_cpu_pool_create(struct lp_cpu_pool **out, int n_threads, struct lp_error *err) {
    *out = NULL;
    if (n_threads < 1) n_threads = 1;
    struct lp_cpu_pool *pool = calloc(1, sizeof *pool);
    if (!pool) return lp_error_set(err, LP_ERR_NOMEM, "cpu: pool: out of memory");
    pool->n_threads = n_threads;
    pthread_mutex_init(&pool->mu, NULL);
    pthread_cond_init(&pool->cv, NULL);
    if (n_threads > 1) {
        pool->threads = calloc((size_t)n_threads - 1, sizeof *pool->threads);
        pool->workers = calloc((size_t)n_threads - 1, sizeof *pool->workers);
        pool->claimed = calloc((size_t)n_threads, sizeof *pool->claimed);
        pool->finished = calloc((size_t)n_threads, sizeof *pool->finished);
        if (!pool->threads || !pool->workers || !pool->claimed || !pool->finished) {
            lp_cpu_pool_destroy(pool);
            return lp_error_set(err, LP_ERR_NOMEM, "cpu: pool: out of memory for %d threads",
                                n_threads);
        }
    }
    for (int i = 0; i < n_threads - 1; i++) {
        pool->workers[i].pool = pool;
        pool->workers[i].i_thread = i + 1;
        int rc = pthread_create(&pool->threads[i], NULL, lp_pool_main, &pool->workers[i]);
        if (rc != 0) {
            lp_cpu_pool_destroy(pool);
            return lp_error_set(err, LP_ERR_INTERNAL, "cpu: pool: pthread_create thread %d: %s",
                                i + 1, strerror(rc));
        }
        pool->n_started++;
    }
    *out = pool;
    return LP_OK;
}

void lp_cpu_pool_destroy(struct lp_cpu_pool *pool) {
    if (!pool) return;
    atomic_store(&pool->stop, 1);
    pthread_mutex_lock(&pool->mu);
    pthread_cond_broadcast(&pool->cv);
    pthread_mutex_unlock(&pool->mu);
    for (int i = 0; i < pool->n_started; i++) pthread_join(pool->threads[i], NULL);
    pthread_mutex_destroy(&pool->mu);
    pthread_cond_destroy(&pool->cv);
    free(pool->threads);
    free(pool->workers);
    free(pool->claimed);
    free(pool->finished);
    free(pool);
}

int lp_cpu_pool_n_threads(const struct lp_cpu_pool *pool) { return pool->n_threads; }

void lp_cpu_pool_run(struct lp_cpu_pool *pool, lp_cpu_task_fn fn, void *arg) {
    if (pool->n_threads == 1) {
        fn(arg, 0, 1);
        return;
    }
    pool->fn = fn;
    pool->arg = arg;
    uint64_t g = atomic_fetch_add(&pool->gen, 1) + 1; // seq_cst: publishes fn/arg
    lp_pool_wake(pool);
    fn(arg, 0, pool->n_threads);
    // the slices no worker has started, here; then wait for the others
    for (int i = 1; i < pool->n_threads; i++)
        if (lp_pool_claim(pool, i, g)) {
            fn(arg, i, pool->n_threads);
            atomic_store_explicit(&pool->finished[i], g, memory_order_relaxed);
        }
    for (int i = 1; i < pool->n_threads; i++)
        for (int k = 0; atomic_load_explicit(&pool->finished[i], memory_order_acquire) != g; k++) {
            lp_pool_pause();
            if (k >= LP_POOL_WAIT_SPINS) sched_yield(); // its worker may wait for this core
        }
}
