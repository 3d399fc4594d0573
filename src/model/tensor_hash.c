// SPDX-License-Identifier: MIT
// tensor_hash.c -- per-tensor integrity hashes: XXH3-64 (libxxhash) over
// each loaded tensor's stored bytes, so a stage and its coordinator can
// prove they hold the same weights (the fingerprint samples only 48 bytes a
// tensor). Hashing reads every byte once; the results are kept beside each
// weight file in "<file>.layerpipe-hashes", a text file:
//   layerpipe-tensor-hashes 1 <file size> <mtime s> <mtime ns>
//   <hash, 16 hex digits> <offset in the file> <bytes> <tensor name>
//   ...
// valid while the weight file's size and modification time are the ones in
// its first line. A stage adds the tensors it hashed to the entries already
// there (other stages of the same folder hash other layers) and replaces the
// file by rename of a temporary file of its own, so a reader never sees half
// of one; a writer that loses a race only costs a re-hash later. Anything malformed in a cache file makes
// the whole file count as absent.
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "model/internal.h"

#define CACHE_SUFFIX ".layerpipe-hashes"
#define CACHE_MAGIC "layerpipe-tensor-hashes 1"
#define CACHE_MAX_LINE 4096
#define CACHE_MAX_ENTRIES (1 << 20)
#define CACHE_MAX_BYTES ((size_t)256 << 20) // 1 << 20 entries of 256 bytes

// What a cache file is valid for: its weight file's size and mtime.
struct cache_key {
    unsigned long long size, mtime_s, mtime_ns;
};

struct cache_entry {
    uint64_t hash, offset, nbytes;
    char *name; // owned
};

struct cache {
    struct cache_entry *e; // [n], owned; [0, n_sorted) sorted by name
    size_t n, n_sorted, cap;
};

static void cache_free(struct cache *c) {
    for (size_t i = 0; i < c->n; i++) free(c->e[i].name);
    free(c->e);
    memset(c, 0, sizeof *c);
}

static bool cache_add(struct cache *c, uint64_t hash, uint64_t offset, uint64_t nbytes,
                      const char *name, size_t name_len) {
    if (c->n == c->cap) {
        size_t cap = c->cap ? 2 * c->cap : 64;
        struct cache_entry *e = realloc(c->e, cap * sizeof *e);
        if (!e) return false;
        c->e = e;
        c->cap = cap;
    }
    char *copy = malloc(name_len + 1);
    if (!copy) return false;
    memcpy(copy, name, name_len);
    copy[name_len] = '\0';
    c->e[c->n++] = (struct cache_entry){hash, offset, nbytes, copy};
    return true;
}

static int entry_cmp(const void *a, const void *b) {
    return strcmp(((const struct cache_entry *)a)->name, ((const struct cache_entry *)b)->name);
}

static int entry_key_cmp(const void *key, const void *elem) {
    return strcmp((const char *)key, ((const struct cache_entry *)elem)->name);
}

// Sorts the entries by name; false when a name appears twice.
static bool cache_sort(struct cache *c) {
    if (c->n > 1) qsort(c->e, c->n, sizeof *c->e, entry_cmp); // (e is NULL when empty)
    c->n_sorted = c->n;
    for (size_t i = 1; i < c->n; i++)
        if (strcmp(c->e[i - 1].name, c->e[i].name) == 0) return false;
    return true;
}

// The entry called name: a binary search of the sorted ones, then the ones
// added since.
static struct cache_entry *cache_find(struct cache *c, const char *name) {
    struct cache_entry *e = c->n_sorted
                                ? bsearch(name, c->e, c->n_sorted, sizeof *c->e, entry_key_cmp)
                                : NULL;
    for (size_t i = c->n_sorted; !e && i < c->n; i++)
        if (strcmp(c->e[i].name, name) == 0) e = &c->e[i];
    return e;
}

// A name the cache can hold on one line.
static bool cacheable(const char *name) {
    return name[0] && !strpbrk(name, "\n\r") && strlen(name) < CACHE_MAX_LINE / 2;
}

static bool file_key(const char *path, struct cache_key *k) {
    struct stat sb;
    if (stat(path, &sb) != 0) return false;
    k->size = (unsigned long long)sb.st_size;
    k->mtime_s = (unsigned long long)sb.st_mtim.tv_sec;
    k->mtime_ns = (unsigned long long)sb.st_mtim.tv_nsec;
    return true;
}

// An unsigned decimal or hex number ending at a space; advances *p past it.
static bool parse_u64(char **p, int base, uint64_t *v) {
    char *end = NULL;
    if (**p < '0' || **p > 'f') return false;
    errno = 0;
    unsigned long long x = strtoull(*p, &end, base);
    if (errno || end == *p || *end != ' ') return false;
    *v = x;
    *p = end + 1;
    return true;
}

// Parses a cache file's text[n] into c when it is well formed and was
// written for key k; false otherwise (c left empty).
static bool cache_parse(const char *text, size_t n, const struct cache_key *k, struct cache *c) {
    char want[160], line[CACHE_MAX_LINE];
    size_t n_want = (size_t)snprintf(want, sizeof want, CACHE_MAGIC " %llu %llu %llu\n", k->size,
                                     k->mtime_s, k->mtime_ns);
    if (n < n_want || memcmp(text, want, n_want) != 0) return false;
    for (size_t at = n_want; at < n;) {
        const char *start = text + at, *nl = memchr(start, '\n', n - at);
        size_t len = nl ? (size_t)(nl - start) : 0;
        if (!nl || len >= sizeof line || memchr(start, '\0', len) || c->n >= CACHE_MAX_ENTRIES)
            goto bad;
        memcpy(line, start, len);
        line[len] = '\0';
        at += len + 1;
        char *p = line;
        uint64_t hash, offset, nbytes;
        if (!parse_u64(&p, 16, &hash) || !parse_u64(&p, 10, &offset) ||
            !parse_u64(&p, 10, &nbytes) || !cacheable(p) || offset > k->size ||
            nbytes > k->size - offset || !cache_add(c, hash, offset, nbytes, p, strlen(p)))
            goto bad;
    }
    if (!cache_sort(c)) goto bad; // a name twice
    return true;
bad:
    cache_free(c);
    return false;
}

// c's entries (sorted by name) in the file's format: a malloc'd,
// NUL-terminated text (NULL when out of memory), *n its length.
static char *cache_format(const struct cache_key *k, struct cache *c, size_t *n) {
    cache_sort(c);
    size_t cap = 160;
    for (size_t i = 0; i < c->n; i++) cap += 16 + 1 + 20 + 1 + 20 + 1 + strlen(c->e[i].name) + 1;
    char *out = malloc(cap);
    if (!out) return NULL;
    size_t at = (size_t)snprintf(out, cap, CACHE_MAGIC " %llu %llu %llu\n", k->size, k->mtime_s,
                                 k->mtime_ns);
    for (size_t i = 0; i < c->n; i++)
        at += (size_t)snprintf(out + at, cap - at, "%016llx %llu %llu %s\n",
                               (unsigned long long)c->e[i].hash,
                               (unsigned long long)c->e[i].offset,
                               (unsigned long long)c->e[i].nbytes, c->e[i].name);
    *n = at;
    return out;
}

// Reads the cache file at cache_path into c when it exists, is well formed
// and was written for key k; otherwise c stays empty.
static void cache_read(const char *cache_path, const struct cache_key *k, struct cache *c) {
    char *text = NULL;
    size_t n = 0;
    if (access(cache_path, R_OK) != 0 ||
        lp_read_file(cache_path, CACHE_MAX_BYTES, &text, &n, NULL) != LP_OK)
        return;
    cache_parse(text, n, k, c);
    free(text);
}

// Replaces the cache file with c's entries; false when the folder cannot
// be written (read-only, full): then there is just no cache.
static bool cache_write(const char *cache_path, const struct cache_key *k, struct cache *c) {
    char tmp[4200];
    if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp.XXXXXX", cache_path) >= sizeof tmp)
        return false;
    size_t n = 0;
    char *text = cache_format(k, c, &n);
    // a file of its own (mkstemp): writers in other threads or processes
    // never share one, and rename makes the one that wins whole
    int fd = text ? mkstemp(tmp) : -1;
    FILE *fp = fd >= 0 ? fdopen(fd, "w") : NULL;
    if (fd >= 0 && !fp) close(fd);
    bool ok = fp && fwrite(text, 1, n, fp) == n;
    ok = fp && fclose(fp) == 0 && ok;
    free(text);
    if (ok && chmod(tmp, 0644) == 0 && rename(tmp, cache_path) == 0) return true;
    if (fd >= 0) unlink(tmp);
    return false;
}

int lp_tensor_hash_cache_check(const char *text, size_t n, unsigned long long size,
                               unsigned long long mtime_s, unsigned long long mtime_ns,
                               char **out, size_t *n_out) {
    struct cache_key k = {size, mtime_s, mtime_ns};
    struct cache c = {0};
    if (out) *out = NULL;
    if (!cache_parse(text, n, &k, &c)) return -1;
    int n_entries = (int)c.n;
    if (out) *out = cache_format(&k, &c, n_out);
    cache_free(&c);
    return n_entries;
}

static bool in_range(const struct lp_model_tensor *t, int begin, int end) {
    return t->layer >= begin && t->layer < end;
}

// Fills the hashes of the range's tensors of weight file `file`, through
// its cache file.
static enum lp_status hash_file(struct lp_model *m, int file, int begin, int end,
                                struct lp_tensor_hash_stats *stats, struct lp_error *err) {
    int n;
    struct lp_model_tensor *ts = lp_model_tensors(m, &n);
    const char *path = lp_model_file_path(m, file);
    const uint8_t *base = lp_model_file_base(m, file);
    struct cache_key key = {0};
    struct cache c = {0};
    char cache_path[4200];
    bool use_cache = path && base && file_key(path, &key) &&
                     (size_t)snprintf(cache_path, sizeof cache_path, "%s" CACHE_SUFFIX, path) <
                         sizeof cache_path;
    if (use_cache) cache_read(cache_path, &key, &c);
    bool changed = false;
    for (int i = 0; i < n; i++) {
        struct lp_model_tensor *t = &ts[i];
        if (t->hashed || t->file != file || !in_range(t, begin, end)) continue;
        uint64_t offset = base ? (uint64_t)((const uint8_t *)t->data - base) : 0;
        struct cache_entry *e = use_cache ? cache_find(&c, t->name) : NULL;
        if (e && e->offset == offset && e->nbytes == t->nbytes) {
            t->hash = e->hash;
            t->hashed = true;
            stats->n_cached++;
            continue;
        }
        t->hash = XXH3_64bits(t->data, t->nbytes);
        t->hashed = true;
        stats->n_hashed++;
        stats->bytes_hashed += t->nbytes;
        if (!use_cache || !cacheable(t->name)) continue;
        if (e) { // stale: the tensor moved
            e->hash = t->hash;
            e->offset = offset;
            e->nbytes = t->nbytes;
        } else if (!cache_add(&c, t->hash, offset, t->nbytes, t->name, strlen(t->name))) {
            cache_free(&c);
            return lp_error_set(err, LP_ERR_NOMEM, "out of memory");
        }
        changed = true;
    }
    if (changed && cache_write(cache_path, &key, &c)) stats->n_cache_written++;
    cache_free(&c);
    return LP_OK;
}

static int hash_name_cmp(const void *a, const void *b) {
    return strcmp(((const struct lp_tensor_hash *)a)->name,
                  ((const struct lp_tensor_hash *)b)->name);
}

enum lp_status lp_model_tensor_hashes(struct lp_model *m, int layer_begin, int layer_end,
                                      struct lp_tensor_hash **out, int *n_out,
                                      struct lp_tensor_hash_stats *stats, struct lp_error *err) {
    *out = NULL;
    *n_out = 0;
    struct lp_tensor_hash_stats local = {0};
    if (!stats) stats = &local;
    memset(stats, 0, sizeof *stats);
    const struct lp_model_load_params *l = lp_model_loaded(m);
    if (layer_begin < l->layer_begin || layer_end > l->layer_end || layer_begin > layer_end)
        return lp_error_set(err, LP_ERR_INVALID_ARG,
                            "%s: hashes of layers [%d, %d), but layers [%d, %d) are loaded",
                            lp_model_dir(m), layer_begin, layer_end, l->layer_begin,
                            l->layer_end);
    int n;
    struct lp_model_tensor *ts = lp_model_tensors(m, &n);
    int n_want = 0, n_files = 0;
    lp_model_files(m, &n_files);
    for (int i = 0; i < n; i++) {
        if (!in_range(&ts[i], layer_begin, layer_end)) continue;
        n_want++;
        if (ts[i].hashed) stats->n_cached++;
    }
    for (int f = -1; f < n_files; f++) { // -1: tensors of no known file (hashed, not cached)
        enum lp_status st = hash_file(m, f, layer_begin, layer_end, stats, err);
        if (st != LP_OK) return st;
    }
    struct lp_tensor_hash *h = malloc((size_t)(n_want ? n_want : 1) * sizeof *h);
    if (!h) return lp_error_set(err, LP_ERR_NOMEM, "out of memory");
    int k = 0;
    for (int i = 0; i < n; i++)
        if (in_range(&ts[i], layer_begin, layer_end))
            h[k++] = (struct lp_tensor_hash){ts[i].name, ts[i].hash};
    qsort(h, (size_t)k, sizeof *h, hash_name_cmp);
    *out = h;
    *n_out = k;
    return LP_OK;
}
