// SPDX-License-Identifier: MIT
// test_integrity.c -- per-tensor integrity hashes (issue 11):
//  - lp_model_tensor_hashes gives XXH3-64 of every byte of each tensor of a
//    layer range (MLX codes, scales, biases, norms; a sharded model),
//    sorted by name;
//  - the cache beside each weight file: written on the first load, used on
//    the next (no tensor byte read), merged when stages hash different
//    layers, ignored when malformed, invalidated when the weight file's
//    size or mtime changes, and its absence tolerated where it cannot be
//    written; writers racing in threads of one process (a coordinator
//    with in-process stages) never leave a corrupt cache;
//  - a worker whose copy differs in one byte of one tensor, outside the
//    bytes the fingerprint samples (same fingerprint), is refused by the
//    coordinator with an error naming that tensor and the worker, while a
//    worker with an intact copy is accepted; in MLX safetensors and in a
//    GGUF (Q8_0) model alike.
#include <fcntl.h>
#include <pthread.h>
#include <sys/stat.h>
#include <xxhash.h>

#include "cluster/cluster_fixture.h"
#include "layerpipe/cluster.h"
#include "lp_test.h"
#include "model/internal.h"
#include "model_fixture.h"

#define GEN                                                                                        \
    "--seed 311 --format mlx8 --tied 1 --layers 4 --hidden 64 --heads 4 --kv-heads 2 "            \
    "--head-dim 32 --intermediate 128 --vocab 256 --sharded 2"
#define GEN_GGUF                                                                                   \
    "--seed 312 --format gguf-q8_0 --tied 1 --layers 4 --hidden 64 --heads 4 --kv-heads 2 "       \
    "--head-dim 32 --intermediate 128 --vocab 256"
#define VICTIM "model.layers.2.mlp.up_proj.weight"

static char scratch[1100];

static void sh(const char *fmt, const char *a, const char *b) {
    char cmd[4096];
    snprintf(cmd, sizeof cmd, fmt, a, b);
    CHECK_MSG(system(cmd) == 0, "%s", cmd);
}

// A copy of the model folder without cache files.
static void copy_model(const char *from, const char *name, char *out, size_t n) {
    snprintf(out, n, "%s/%s", scratch, name);
    sh("rm -rf '%s' && mkdir -p '%s'", out, out);
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "cp '%s'/* '%s'/ && rm -f '%s'/*.layerpipe-hashes", from, out, out);
    CHECK_MSG(system(cmd) == 0, "%s", cmd);
}

// Hashes of layers [b, e) of a fresh open of dir.
static int hashes(const char *dir, int b, int e, struct lp_tensor_hash_stats *stats,
                  uint64_t *sum) {
    struct lp_model *m = NULL;
    struct lp_error err = {0};
    struct lp_model_load_params lp = {b, e, false, false};
    CHECK_OK(lp_model_open(&m, dir, &lp, &err), &err);
    if (!m) return -1;
    struct lp_tensor_hash *h = NULL;
    int n = 0;
    CHECK_OK(lp_model_tensor_hashes(m, b, e, &h, &n, stats, &err), &err);
    *sum = 0;
    for (int i = 0; i < n; i++) *sum = *sum * 31 + h[i].hash;
    free(h);
    lp_model_close(m);
    return n;
}

// The file holding tensor `name` in dir, and the tensor's offset and size there.
static bool locate(const char *dir, const char *name, char *file, size_t n_file, size_t *offset,
                   size_t *nbytes) {
    struct lp_model *m = NULL;
    struct lp_error err = {0};
    struct lp_model_load_params none = {0, 0, false, false};
    CHECK_OK(lp_model_open(&m, dir, &none, &err), &err);
    if (!m) return false;
    int n_files = 0;
    struct lp_st_file *const *files = lp_model_files(m, &n_files);
    bool found = false;
    for (int i = 0; i < n_files && !found; i++) {
        const struct lp_st_tensor *t = lp_st_find(files[i], name);
        if (!t) continue;
        snprintf(file, n_file, "%s", files[i]->path);
        *offset = (size_t)((const uint8_t *)t->data - (const uint8_t *)files[i]->map);
        *nbytes = t->nbytes;
        found = true;
    }
    lp_model_close(m);
    return found;
}

static uint64_t fingerprint(const char *dir) {
    struct lp_model *m = NULL;
    struct lp_model_load_params none = {0, 0, false, false};
    if (lp_model_open(&m, dir, &none, NULL) != LP_OK) return 0;
    uint64_t f = lp_model_fingerprint(m);
    lp_model_close(m);
    return f;
}

static int count_cache_files(const char *dir) {
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "ls '%s' | grep -c 'layerpipe-hashes$' > '%s/count'", dir, scratch);
    if (system(cmd) == -1) return -1;
    snprintf(cmd, sizeof cmd, "%s/count", scratch);
    char *t = lpc_read_file(cmd, NULL);
    int n = t ? atoi(t) : -1;
    free(t);
    return n;
}

// The hashes are XXH3-64 of the stored bytes, sorted by name.
static void test_values(const char *dir) {
    struct lp_model *m = NULL;
    struct lp_error err = {0};
    struct lp_model_load_params lp = {1, 3, false, false};
    CHECK_OK(lp_model_open(&m, dir, &lp, &err), &err);
    if (!m) return;
    struct lp_tensor_hash *h = NULL;
    int n = 0;
    CHECK_OK(lp_model_tensor_hashes(m, 1, 3, &h, &n, NULL, &err), &err);
    // per layer: 4 norms + 7 matrices x (codes, scales, biases)
    CHECK_MSG(n == 2 * (4 + 7 * 3), "%d tensors for 2 MLX layers", n);
    int n_files = 0;
    struct lp_st_file *const *files = lp_model_files(m, &n_files);
    CHECK(n_files == 2);
    for (int i = 0; i < n; i++) {
        CHECK(strstr(h[i].name, "model.layers.1.") == h[i].name ||
              strstr(h[i].name, "model.layers.2.") == h[i].name);
        if (i > 0) CHECK(strcmp(h[i - 1].name, h[i].name) < 0);
        const struct lp_st_tensor *t = NULL;
        for (int f = 0; f < n_files && !t; f++) t = lp_st_find(files[f], h[i].name);
        CHECK(t && XXH3_64bits(t->data, t->nbytes) == h[i].hash);
    }
    free(h);
    // a range that is not loaded
    CHECK(lp_model_tensor_hashes(m, 0, 3, &h, &n, NULL, &err) == LP_ERR_INVALID_ARG && !h &&
          strstr(err.msg, "layers [1, 3) are loaded"));
    lp_model_close(m);
}

// The cache: written, used, merged, ignored when malformed, invalidated.
static void test_cache(const char *model) {
    char dir[1200], file[1300], cache[1400];
    copy_model(model, "cache", dir, sizeof dir);
    size_t off = 0, nbytes = 0;
    CHECK(locate(dir, VICTIM, file, sizeof file, &off, &nbytes));
    snprintf(cache, sizeof cache, "%s.layerpipe-hashes", file);
    struct lp_tensor_hash_stats s;
    uint64_t sum_all = 0, sum = 0;
    // first load: everything hashed, one cache per weight file
    int n = hashes(dir, 0, 4, &s, &sum_all);
    printf("first load: %d tensors, %d hashed (%zu bytes), %d cached, %d cache files written\n", n,
           s.n_hashed, s.bytes_hashed, s.n_cached, s.n_cache_written);
    CHECK(n == 4 * 25 && s.n_hashed == n && s.n_cached == 0 && s.bytes_hashed > 0 &&
          s.n_cache_written == 2);
    CHECK(count_cache_files(dir) == 2);
    char *text = lpc_read_file(cache, NULL);
    struct stat sb;
    CHECK(text && stat(file, &sb) == 0);
    if (text) {
        char head[200];
        snprintf(head, sizeof head, "layerpipe-tensor-hashes 1 %lld %lld %ld\n",
                 (long long)sb.st_size, (long long)sb.st_mtim.tv_sec, (long)sb.st_mtim.tv_nsec);
        CHECK_MSG(strncmp(text, head, strlen(head)) == 0, "cache header: %.80s", text);
        CHECK(strstr(text, " " VICTIM "\n"));
    }
    free(text);
    // second load: nothing read
    n = hashes(dir, 0, 4, &s, &sum);
    printf("second load: %d hashed, %d cached, %d written\n", s.n_hashed, s.n_cached,
           s.n_cache_written);
    CHECK(s.n_hashed == 0 && s.n_cached == n && s.bytes_hashed == 0 && s.n_cache_written == 0 &&
          sum == sum_all);
    // two stages of one folder: the second adds its layers to the first's
    char dir2[1200];
    copy_model(model, "merge", dir2, sizeof dir2);
    hashes(dir2, 0, 2, &s, &sum);
    CHECK(s.n_hashed == 50 && s.n_cache_written > 0);
    hashes(dir2, 2, 4, &s, &sum);
    CHECK(s.n_hashed == 50 && s.n_cached == 0);
    hashes(dir2, 0, 4, &s, &sum);
    CHECK_MSG(s.n_cached == 100 && s.n_hashed == 0, "merged cache: %d cached, %d hashed",
              s.n_cached, s.n_hashed);
    CHECK(sum == sum_all);
    // a new mtime (same size) invalidates the file's cache
    struct timespec ts[2] = {{.tv_sec = sb.st_atim.tv_sec}, {.tv_sec = sb.st_mtim.tv_sec - 100}};
    CHECK(utimensat(AT_FDCWD, file, ts, 0) == 0);
    hashes(dir, 0, 4, &s, &sum);
    printf("after touching one shard: %d hashed, %d cached\n", s.n_hashed, s.n_cached);
    CHECK(s.n_hashed > 0 && s.n_cached > 0 && s.n_hashed + s.n_cached == n &&
          s.n_cache_written == 1 && sum == sum_all);
    // a new size: one byte appended after the data (safetensors allows it)
    char cmd[2000];
    snprintf(cmd, sizeof cmd, "printf x >> '%s'", file);
    CHECK(system(cmd) == 0);
    hashes(dir, 0, 4, &s, &sum);
    CHECK(s.n_hashed > 0 && s.n_hashed + s.n_cached == n && sum == sum_all);
    hashes(dir, 0, 4, &s, &sum);
    CHECK(s.n_hashed == 0);
    // a malformed cache counts as none, and is replaced
    const char *bad[] = {"", "layerpipe-tensor-hashes 1 1 2 3\n", "garbage\n\n",
                         "layerpipe-tensor-hashes 1 %s\nzz 1 2 name\n"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        FILE *fp = fopen(cache, "w");
        CHECK(fp != NULL);
        if (!fp) break;
        fputs(bad[i], fp);
        fclose(fp);
        hashes(dir, 0, 4, &s, &sum);
        CHECK_MSG(s.n_hashed > 0 && s.n_cache_written == 1 && sum == sum_all,
                  "malformed cache %zu: %d hashed", i, s.n_hashed);
    }
    // where the cache cannot be written: hashes all the same, no cache
    char cmd2[3000];
    snprintf(cmd2, sizeof cmd2, "rm -f '%s' && mkdir '%s'", cache, cache);
    CHECK(system(cmd2) == 0);
    for (int i = 0; i < 2; i++) { // the shard's tensors hashed on every load
        hashes(dir, 0, 4, &s, &sum);
        CHECK_MSG(s.n_hashed > 0 && s.n_cached > 0 && s.n_cache_written == 0 && sum == sum_all,
                  "unwritable cache: %d hashed, %d written", s.n_hashed, s.n_cache_written);
    }
    rmdir(cache);
}

// One byte of VICTIM changed in dir, a quarter into the tensor: not a byte
// the fingerprint samples (its first, middle and last 16), so dir keeps
// intact's fingerprint.
static void change_one_byte(const char *dir, const char *intact) {
    char file[1300];
    size_t off = 0, nbytes = 0;
    CHECK(locate(dir, VICTIM, file, sizeof file, &off, &nbytes) && nbytes >= 256);
    int fd = open(file, O_RDWR);
    uint8_t byte = 0;
    CHECK(fd >= 0 && pread(fd, &byte, 1, (off_t)(off + nbytes / 4)) == 1);
    byte ^= 0x5a;
    CHECK(fd >= 0 && pwrite(fd, &byte, 1, (off_t)(off + nbytes / 4)) == 1);
    if (fd >= 0) close(fd);
    CHECK_MSG(fingerprint(dir) == fingerprint(intact) && fingerprint(intact) != 0,
              "%s: the changed byte moved the fingerprint: the test must change an unsampled "
              "byte",
              dir);
}

// The pipeline with `bad_worker` serving layer 2 (its changed tensor) is
// refused naming the tensor and the worker; with it on layer 3 it is accepted.
static void pipeline_case(const char *model, const struct lpc_worker *good,
                          const struct lpc_worker *bad_worker, const char *what) {
    struct lp_pipeline_params pp = lp_pipeline_params_default();
    pp.model_dir = model;
    pp.n_threads = 1;
    pp.plan = "2,1,1"; // worker 1: layer 2, worker 2: layer 3
    pp.n_workers = 2;
    struct lp_pipeline *p = NULL;
    struct lp_error err = {0};
    const char *with_bad[2] = {bad_worker->addr, good->addr};
    pp.workers = with_bad;
    CHECK(lp_pipeline_create(&p, &pp, &err) == LP_ERR_INVALID_ARG && !p);
    printf("%s: changed copy on layer 2 -> %s\n", what, err.msg);
    char who[64];
    snprintf(who, sizeof who, "worker 1 (%s)", bad_worker->addr);
    CHECK_MSG(strstr(err.msg, "tensor '" VICTIM "'") && strstr(err.msg, who), "%s", err.msg);
    const char *swapped[2] = {good->addr, bad_worker->addr};
    pp.workers = swapped;
    err = (struct lp_error){0};
    CHECK_OK(lp_pipeline_create(&p, &pp, &err), &err);
    lp_pipeline_destroy(p);
    printf("%s: changed copy on layer 3 (not its changed tensor) -> accepted\n", what);
}

// Threads hashing layers of one folder at once, each its own model object.
struct racer {
    const char *dir;
    int layer;
    int failures;
};

static void *race_main(void *arg) {
    struct racer *r = arg;
    for (int it = 0; it < 25; it++) {
        struct lp_model *m = NULL;
        int l = (r->layer + it) % 4;
        struct lp_model_load_params lp = {l, l + 1, false, false};
        struct lp_tensor_hash *h = NULL;
        int n = 0;
        if (lp_model_open(&m, r->dir, &lp, NULL) != LP_OK ||
            lp_model_tensor_hashes(m, l, l + 1, &h, &n, NULL, NULL) != LP_OK || n != 25)
            r->failures++;
        free(h);
        lp_model_close(m);
    }
    return NULL;
}

static void test_race(const char *model) {
    char dir[1200];
    copy_model(model, "race", dir, sizeof dir);
    uint64_t want = 0, sum = 0;
    struct lp_tensor_hash_stats s;
    struct racer r[4];
    pthread_t t[4];
    for (int round = 0; round < 4; round++) {
        char cmd[1400];
        snprintf(cmd, sizeof cmd, "rm -f '%s'/*.layerpipe-hashes", dir);
        CHECK(system(cmd) == 0);
        for (int i = 0; i < 4; i++) {
            r[i] = (struct racer){dir, i, 0};
            CHECK(pthread_create(&t[i], NULL, race_main, &r[i]) == 0);
        }
        for (int i = 0; i < 4; i++) {
            pthread_join(t[i], NULL);
            CHECK(r[i].failures == 0);
        }
        // whatever won, each cache file parses and gives the true hashes
        int n_files = 0;
        struct lp_model *m = NULL;
        struct lp_model_load_params none = {0, 0, false, false};
        CHECK_OK(lp_model_open(&m, dir, &none, NULL), NULL);
        struct lp_st_file *const *files = m ? lp_model_files(m, &n_files) : NULL;
        for (int f = 0; f < n_files; f++) {
            char path[1400];
            snprintf(path, sizeof path, "%s.layerpipe-hashes", files[f]->path);
            size_t n = 0;
            char *text = lpc_read_file(path, &n);
            struct stat sb;
            CHECK(text && stat(files[f]->path, &sb) == 0);
            if (text)
                CHECK_MSG(lp_tensor_hash_cache_check(text, n, (unsigned long long)sb.st_size,
                                                     (unsigned long long)sb.st_mtim.tv_sec,
                                                     (unsigned long long)sb.st_mtim.tv_nsec, NULL,
                                                     NULL) > 0,
                          "round %d: %s does not parse after the race", round, path);
            free(text);
        }
        lp_model_close(m);
        hashes(dir, 0, 4, &s, &sum);
        if (round == 0) want = sum;
        CHECK(sum == want && s.n_cached + s.n_hashed == 100);
    }
    uint64_t fresh = 0;
    char cmd[1400];
    snprintf(cmd, sizeof cmd, "rm -f '%s'/*.layerpipe-hashes", dir);
    CHECK(system(cmd) == 0);
    hashes(dir, 0, 4, &s, &fresh);
    CHECK(s.n_hashed == 100 && fresh == want);
    printf("4 threads x 25 loads of one folder, 4 rounds: every cache parses, hashes right\n");
}

int main(void) {
    const char *work = lp_fixture_env("LP_WORK_DIR", "build/testdata");
    snprintf(scratch, sizeof scratch, "%s/integrity.%d", work, (int)getpid());
    char model[1100], cmd[2400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && mkdir -p '%s'", scratch, scratch);
    if (system(cmd) != 0 || lp_fixture_model("integrity", GEN, model, sizeof model) != 0) {
        fprintf(stderr, "cannot make the scratch folder or the test model\n");
        return 1;
    }
    char good[1200], bad[1200];
    copy_model(model, "good", good, sizeof good);
    copy_model(model, "bad", bad, sizeof bad);
    test_values(good);
    test_cache(model);
    test_race(model);

    change_one_byte(bad, good);
    char good_g[1200], bad_g[1200], gguf[1100];
    CHECK(lp_fixture_model("integrity-gguf", GEN_GGUF, gguf, sizeof gguf) == 0);
    copy_model(gguf, "good-gguf", good_g, sizeof good_g);
    copy_model(gguf, "bad-gguf", bad_g, sizeof bad_g);
    change_one_byte(bad_g, good_g);

    // workers before this process starts gRPC
    fflush(NULL);
    const char *bin = lp_fixture_env("LP_BIN", "build/layerpipe");
    struct lpc_worker w[4];
    const char *dirs[4] = {good, bad, good_g, bad_g};
    for (int i = 0; i < 4; i++) {
        char log[1300];
        snprintf(log, sizeof log, "%s/worker%d.log", scratch, i);
        CHECK(lpc_worker_start(&w[i], bin, dirs[i], log, 1, 30) == 0);
    }
    if (lp_test_failures) return lp_test_finish("cluster/test_integrity");
    pipeline_case(good, &w[0], &w[1], "MLX 8-bit safetensors");
    pipeline_case(good_g, &w[2], &w[3], "GGUF Q8_0");
    for (int i = 0; i < 4; i++) lpc_worker_stop(&w[i], 5);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", scratch);
    if (!lp_test_failures && system(cmd) != 0) fprintf(stderr, "cannot remove %s\n", scratch);
    return lp_test_finish("cluster/test_integrity");
}
