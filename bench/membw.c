// SPDX-License-Identifier: MIT
// membw.c -- measures this machine's memory read bandwidth: sums a large
// buffer (default 1 GiB, `membw [MiB]`) with 1 thread and with every core,
// best of 5 runs each, and prints GB/s. Decode speed is later stated as a
// fraction of this number (decode streams every weight once per token).
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MEMBW_RUNS 5

struct membw_slice {
    const uint64_t *p;
    size_t n;     // uint64 words
    uint64_t sum; // keeps the loads alive
};

static double membw_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

// Eight independent integer lanes: the compiler vectorizes this into wide
// loads; integer adds never limit a memory-bound loop. Compiled twice: for
// the baseline ISA and for AVX-512 (64-byte loads), picked at run time.
#define MEMBW_BODY                                                                                 \
    struct membw_slice *s = arg;                                                                   \
    uint64_t acc[8] = {0};                                                                         \
    size_t i = 0;                                                                                  \
    for (; i + 8 <= s->n; i += 8)                                                                  \
        for (int j = 0; j < 8; j++) acc[j] += s->p[i + j];                                         \
    for (; i < s->n; i++) acc[0] += s->p[i];                                                       \
    s->sum = 0;                                                                                    \
    for (int j = 0; j < 8; j++) s->sum += acc[j];                                                  \
    return NULL;

static void *membw_sum_base(void *arg) { MEMBW_BODY }
#if defined(__x86_64__)
#include <immintrin.h>
__attribute__((target("avx512f"))) static void *membw_sum_avx512(void *arg) { MEMBW_BODY }

// The way the decode kernels read: four interleaved streams per thread
// with software prefetch into L2 a few KiB ahead (one sequential stream
// per core leaves the hardware prefetchers short of the DRAM limit here).
__attribute__((target("avx512f"))) static void *membw_sum_streams(void *arg) {
    struct membw_slice *s = arg;
    size_t q = s->n / 4 / 8 * 8; // words per stream, whole 64-byte lines
    const uint64_t *p[4] = {s->p, s->p + q, s->p + 2 * q, s->p + 3 * q};
    __m512i acc[4] = {_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512(),
                      _mm512_setzero_si512()};
    for (size_t i = 0; i < q; i += 8)
        for (int k = 0; k < 4; k++) {
            _mm_prefetch((const char *)(p[k] + i) + 4096, _MM_HINT_T1);
            acc[k] = _mm512_add_epi64(acc[k], _mm512_loadu_si512((const void *)(p[k] + i)));
        }
    s->sum = (uint64_t)_mm512_reduce_add_epi64(
        _mm512_add_epi64(_mm512_add_epi64(acc[0], acc[1]), _mm512_add_epi64(acc[2], acc[3])));
    for (size_t i = 4 * q; i < s->n; i++) s->sum += s->p[i];
    return NULL;
}
#endif
static void *(*membw_sum)(void *) = membw_sum_base;

// Best GB/s of MEMBW_RUNS passes over buf with n_threads threads.
static double membw_measure(const uint64_t *buf, size_t n, int n_threads, uint64_t *sink) {
    pthread_t th[256];
    struct membw_slice sl[256];
    double best = 0.0;
    for (int run = 0; run < MEMBW_RUNS; run++) {
        double t0 = membw_now();
        for (int i = 0; i < n_threads; i++) {
            size_t a = n * (size_t)i / (size_t)n_threads, b = n * (size_t)(i + 1) / (size_t)n_threads;
            sl[i] = (struct membw_slice){.p = buf + a, .n = b - a};
            if (i > 0) pthread_create(&th[i], NULL, membw_sum, &sl[i]);
        }
        membw_sum(&sl[0]);
        for (int i = 1; i < n_threads; i++) pthread_join(th[i], NULL);
        double dt = membw_now() - t0;
        for (int i = 0; i < n_threads; i++) *sink += sl[i].sum;
        double gbs = (double)n * 8.0 / dt / 1e9;
        if (gbs > best) best = gbs;
    }
    return best;
}

int main(int argc, char **argv) {
#if defined(__x86_64__)
    if (__builtin_cpu_supports("avx512f")) membw_sum = membw_sum_avx512;
#endif
    size_t mib = argc > 1 ? (size_t)strtoull(argv[1], NULL, 10) : 1024;
    if (mib == 0) mib = 1024;
    long nc = sysconf(_SC_NPROCESSORS_ONLN);
    int n_cores = nc > 0 ? (int)(nc > 256 ? 256 : nc) : 1;
    size_t bytes = mib << 20;
    uint64_t *buf = aligned_alloc(64, bytes);
    if (!buf) {
        fprintf(stderr, "membw: cannot allocate %zu MiB\n", mib);
        return 1;
    }
    memset(buf, 1, bytes); // fault every page in before timing
    uint64_t sink = 0;
    size_t n = bytes / 8;
    printf("membw: %zu MiB buffer, best of %d runs\n", mib, MEMBW_RUNS);
    printf("read bandwidth, 1 thread:   %.1f GB/s\n", membw_measure(buf, n, 1, &sink));
    if (n_cores > 1)
        printf("read bandwidth, %d threads: %.1f GB/s\n", n_cores,
               membw_measure(buf, n, n_cores, &sink));
#if defined(__x86_64__)
    if (__builtin_cpu_supports("avx512f")) {
        membw_sum = membw_sum_streams;
        printf("read bandwidth, 1 thread, 4 prefetched streams:   %.1f GB/s\n",
               membw_measure(buf, n, 1, &sink));
        if (n_cores > 1)
            printf("read bandwidth, %d threads, 4 prefetched streams: %.1f GB/s\n", n_cores,
                   membw_measure(buf, n, n_cores, &sink));
    }
#endif
    if (sink == 42) printf("(sink)\n");
    free(buf);
    return 0;
}
