// SPDX-License-Identifier: MIT
// kv_cache.c -- the KV block pool: a free-list stack of block ids and, per
// sequence, the ordered list of its blocks. Position p of a sequence lives
// in block blocks[p / block_size], row p % block_size. A sequence grows a
// block at a time and gives all its blocks back when closed, so sequences
// of any length share one pool allocated at start.
#include <stdlib.h>
#include <string.h>

#include "engine/internal.h"

enum lp_status lp_kv_table_init(struct lp_kv_table *t, int n_blocks, int block_size,
                                int max_context, int max_seqs, struct lp_error *err) {
    memset(t, 0, sizeof *t);
    if (n_blocks <= 0 || block_size <= 0 || max_seqs <= 0 || max_context <= 0)
        return lp_error_set(err, LP_ERR_INVALID_ARG,
                            "kv cache: blocks %d, block size %d, seqs %d, context %d must be > 0",
                            n_blocks, block_size, max_seqs, max_context);
    t->n_blocks = n_blocks;
    t->block_size = block_size;
    t->max_blocks_per_seq = (max_context + block_size - 1) / block_size;
    t->max_seqs = max_seqs;
    t->free_list = malloc((size_t)n_blocks * sizeof *t->free_list);
    t->seqs = calloc((size_t)max_seqs, sizeof *t->seqs);
    if (!t->free_list || !t->seqs) goto nomem;
    for (int i = 0; i < max_seqs; i++) {
        t->seqs[i].blocks = malloc((size_t)t->max_blocks_per_seq * sizeof(int32_t));
        if (!t->seqs[i].blocks) goto nomem;
    }
    // Stack with block 0 on top, so a fresh pool hands out blocks in order.
    for (int i = 0; i < n_blocks; i++) t->free_list[i] = n_blocks - 1 - i;
    t->n_free = n_blocks;
    return LP_OK;
nomem:
    lp_kv_table_deinit(t);
    return lp_error_set(err, LP_ERR_NOMEM, "kv cache: out of memory for the block tables");
}

void lp_kv_table_deinit(struct lp_kv_table *t) {
    if (t->seqs)
        for (int i = 0; i < t->max_seqs; i++) free(t->seqs[i].blocks);
    free(t->seqs);
    free(t->free_list);
    memset(t, 0, sizeof *t);
}

enum lp_status lp_kv_seq_open(struct lp_kv_table *t, int *seq, struct lp_error *err) {
    for (int i = 0; i < t->max_seqs; i++) {
        if (!t->seqs[i].open) {
            t->seqs[i].open = true;
            t->seqs[i].len = 0;
            t->seqs[i].n_blocks = 0;
            *seq = i;
            return LP_OK;
        }
    }
    return lp_error_set(err, LP_ERR_BUSY, "kv cache: all %d sequences are in use", t->max_seqs);
}

void lp_kv_seq_truncate(struct lp_kv_table *t, int seq, int len) {
    struct lp_kv_seq *s = &t->seqs[seq];
    if (len < 0) len = 0;
    if (len > s->len) return;
    int keep = (len + t->block_size - 1) / t->block_size;
    while (s->n_blocks > keep) t->free_list[t->n_free++] = s->blocks[--s->n_blocks];
    s->len = len;
}

void lp_kv_seq_close(struct lp_kv_table *t, int seq) {
    if (seq < 0 || seq >= t->max_seqs || !t->seqs[seq].open) return;
    t->seqs[seq].len = 0;
    int keep = 0;
    struct lp_kv_seq *s = &t->seqs[seq];
    while (s->n_blocks > keep) t->free_list[t->n_free++] = s->blocks[--s->n_blocks];
    s->open = false;
}

enum lp_status lp_kv_seq_reserve(struct lp_kv_table *t, int seq, int len, struct lp_error *err) {
    struct lp_kv_seq *s = &t->seqs[seq];
    int need = (len + t->block_size - 1) / t->block_size;
    if (need > t->max_blocks_per_seq)
        return lp_error_set(err, LP_ERR_INVALID_ARG,
                            "kv cache: %d positions exceed the context limit of %d", len,
                            t->max_blocks_per_seq * t->block_size);
    if (need - s->n_blocks > t->n_free)
        return lp_error_set(err, LP_ERR_BUSY,
                            "kv cache: pool exhausted (%d blocks of %d positions, %d free, %d "
                            "needed); raise --kv-blocks or use fewer sequences",
                            t->n_blocks, t->block_size, t->n_free, need - s->n_blocks);
    while (s->n_blocks < need) s->blocks[s->n_blocks++] = t->free_list[--t->n_free];
    return LP_OK;
}
