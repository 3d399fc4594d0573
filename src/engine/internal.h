// SPDX-License-Identifier: MIT
// internal.h -- cross-file internals of the engine: the KV block pool and
// the sequence table (host-side bookkeeping; the K/V memory itself lives in
// backend buffers owned by the engine).
#ifndef LP_ENGINE_INTERNAL_H
#define LP_ENGINE_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include "layerpipe/status.h"

// One sequence: the blocks holding its positions [0, len), in order.
struct lp_kv_seq {
    bool open;
    int len;          // positions cached
    int n_blocks;     // blocks owned
    int32_t *blocks;  // [max_blocks_per_seq], owned
};

// The pool of KV blocks shared by all sequences, and the sequence table.
// Mutated only by the engine's thread.
struct lp_kv_table {
    int n_blocks;           // pool size
    int block_size;         // positions per block
    int max_blocks_per_seq; // ceil(max_context / block_size)
    int n_free;
    int32_t *free_list;     // [n_blocks] stack of free block ids
    int max_seqs;
    struct lp_kv_seq *seqs; // [max_seqs]
};

enum lp_status lp_kv_table_init(struct lp_kv_table *t, int n_blocks, int block_size,
                                int max_context, int max_seqs, struct lp_error *err);
void lp_kv_table_deinit(struct lp_kv_table *t);
enum lp_status lp_kv_seq_open(struct lp_kv_table *t, int *seq, struct lp_error *err);
void lp_kv_seq_close(struct lp_kv_table *t, int seq);
// Shrinks seq to len positions (frees whole blocks past it).
void lp_kv_seq_truncate(struct lp_kv_table *t, int seq, int len);
// Makes room for positions [0, len): takes blocks from the pool. On
// LP_ERR_BUSY (pool exhausted) nothing is taken.
enum lp_status lp_kv_seq_reserve(struct lp_kv_table *t, int seq, int len, struct lp_error *err);
// Slot (block * block_size + row) of position pos of seq; pos < reserved.
static inline int32_t lp_kv_slot(const struct lp_kv_table *t, int seq, int pos) {
    const struct lp_kv_seq *s = &t->seqs[seq];
    return s->blocks[pos / t->block_size] * t->block_size + pos % t->block_size;
}

#endif
