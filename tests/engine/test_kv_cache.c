// SPDX-License-Identifier: MIT
// test_kv_cache.c -- the KV block pool: sequences grow a block at a time,
// give blocks back on close and truncate, never share a block, and an
// exhausted pool is LP_ERR_BUSY that takes nothing.
#include <string.h>

#include "engine/internal.h"
#include "lp_test.h"

int main(void) {
    struct lp_kv_table t;
    struct lp_error err = {0};
    CHECK_OK(lp_kv_table_init(&t, 6, 4, 64, 3, &err), &err);
    int a, b, c, d;
    CHECK_OK(lp_kv_seq_open(&t, &a, &err), &err);
    CHECK_OK(lp_kv_seq_open(&t, &b, &err), &err);
    CHECK_OK(lp_kv_seq_open(&t, &c, &err), &err);
    CHECK(lp_kv_seq_open(&t, &d, &err) == LP_ERR_BUSY);
    CHECK(a != b && b != c && a != c);
    CHECK_OK(lp_kv_seq_reserve(&t, a, 5, &err), &err); // 2 blocks
    CHECK(t.seqs[a].n_blocks == 2 && t.n_free == 4);
    CHECK_OK(lp_kv_seq_reserve(&t, b, 8, &err), &err); // 2 blocks
    CHECK(t.n_free == 2);
    // 3 more blocks for c do not fit: nothing taken
    CHECK(lp_kv_seq_reserve(&t, c, 12, &err) == LP_ERR_BUSY);
    CHECK(t.seqs[c].n_blocks == 0 && t.n_free == 2);
    CHECK(strstr(err.msg, "exhausted") != NULL);
    // past the context limit
    CHECK(lp_kv_seq_reserve(&t, c, 65, &err) == LP_ERR_INVALID_ARG);
    // slots are distinct across sequences
    t.seqs[a].len = 5;
    t.seqs[b].len = 8;
    int seen[24] = {0};
    for (int p = 0; p < 5; p++) seen[lp_kv_slot(&t, a, p)]++;
    for (int p = 0; p < 8; p++) seen[lp_kv_slot(&t, b, p)]++;
    for (int i = 0; i < 24; i++) CHECK(seen[i] <= 1);
    // truncate frees whole blocks beyond the new length
    lp_kv_seq_truncate(&t, b, 3);
    CHECK(t.seqs[b].n_blocks == 1 && t.seqs[b].len == 3 && t.n_free == 3);
    lp_kv_seq_close(&t, a);
    CHECK(t.n_free == 5 && !t.seqs[a].open);
    lp_kv_seq_close(&t, a); // closing twice is harmless
    CHECK(t.n_free == 5);
    CHECK_OK(lp_kv_seq_reserve(&t, c, 12, &err), &err);
    CHECK(t.n_free == 2);
    lp_kv_table_deinit(&t);
    CHECK(lp_kv_table_init(&t, 0, 4, 64, 3, &err) == LP_ERR_INVALID_ARG);
    return lp_test_finish("kv_cache");
}
