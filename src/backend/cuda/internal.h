// SPDX-License-Identifier: MIT
// internal.h -- what the two halves of the CUDA backend share: cuda.cu (the
// function table, memory, index arrays, step graphs) and kernels.cu (the
// kernels and their launchers; also matmul_tc.cu and argmax.cu). C++ (nvcc)
// only; no public header sees it.
// Every pointer here is device memory unless its name ends in _h. Launchers
// queue work on `stream` and return the launch's cudaError_t; they never
// synchronize.
#ifndef LAYERPIPE_BACKEND_CUDA_INTERNAL_H
#define LAYERPIPE_BACKEND_CUDA_INTERNAL_H

#include <cuda_runtime.h>
#include <stdint.h>

// Kernel-side weight formats (enum lp_weight_format plus the MLX bit width).
enum lp_cuda_fmt {
    LP_CUDA_FMT_F32,
    LP_CUDA_FMT_F16,
    LP_CUDA_FMT_BF16,
    LP_CUDA_FMT_Q8, // MLX affine, 8 bits
    LP_CUDA_FMT_Q4, // MLX affine, 4 bits
};

// A weight matrix [rows, cols] on the device, in its stored format:
// float formats: data [rows, cols]; MLX: data uint32 [rows, cols * bits / 32]
// (element 0 in the lowest bits), scales/biases [rows, cols / group] in
// bf16 (scale_bf16) or f16.
struct lp_cuda_weight {
    enum lp_cuda_fmt fmt;
    int rows, cols;
    const void *data;
    const uint16_t *scales, *biases;
    bool scale_bf16;
    int group;
};

// The index arrays attention reads, per query row and per segment.
struct lp_cuda_attn_index {
    const int32_t *row_seg;  // [n] segment of each query row
    const int32_t *row_qpos; // [n] position of each query row (pos0 + i)
    const int32_t *seg_off;  // [n_segs] offset of the segment's block table in bt
    const int32_t *seg_nblk; // [n_segs] blocks in the segment's table
    const int32_t *bt;       // block tables, concatenated
};

// Number of KV splits of attention (fixed, so that a row's result depends
// only on its own context, and a launch's grid only on n), and positions per chunk.
#define LP_CUDA_ATTN_SPLITS 16
#define LP_CUDA_ATTN_CHUNK 128 // 4 warps x 32 positions

// Floats of attention's partial-result scratch for n rows of n_heads heads.
static inline size_t lp_cuda_attn_scratch_floats(int n, int n_heads, int head_dim) {
    return (size_t)n * (size_t)n_heads * LP_CUDA_ATTN_SPLITS * ((size_t)head_dim + 2);
}

// What a matrix kernel does with out[t, r] = x[t, :] . w[r, :].
enum lp_cuda_epi {
    LP_CUDA_EPI_STORE,  // out = it
    LP_CUDA_EPI_ACCUM,  // out += it
    LP_CUDA_EPI_SWIGLU, // out = silu(gate's) * up's (two matrices)
};

// The tensor-core kernels (matmul_tc.cu) take w: bf16 with cols % 64 == 0,
// or MLX 8/4-bit with group 32, 64 or 128.
static inline bool lp_cuda_mm_ok(const struct lp_cuda_weight *w) {
    if (w->fmt == LP_CUDA_FMT_BF16) return w->cols % 64 == 0;
    if (w->fmt == LP_CUDA_FMT_Q8 || w->fmt == LP_CUDA_FMT_Q4)
        return (w->group == 32 || w->group == 64 || w->group == 128) && w->cols % w->group == 0;
    return false;
}

// The products' tiles for prefill (matmul_tc.cu's k_mmt): 128 weight rows
// (SWIGLU: 64 of the gate and the same 64 of up) by 32 tokens, the columns
// walked in order; a matrix of few tiles splits its slices over up to 8
// blocks (n_split), whose partials the last of them adds in order.
#define LP_CUDA_MMT_BM 128
#define LP_CUDA_MMT_BN 32
// k_mmt from this many tokens (fewer: the 32-token kernel, faster there)
#define LP_CUDA_MMT_MIN_TOKENS 65
// 16 slices (PAIR) only for matrices of at most this many rows: a tall one
// (an LM head) has tiles enough for every warp, and its halved slices only
// added a merge per tile (LM head 251 -> 317 us when tried)
#define LP_CUDA_MM_PAIR_MAX_ROWS 16384

// Tile counters at the start of the products' scratch (the same place for
// every call, so that they stay zero between calls): a split needs one a tile.
#define LP_CUDA_MM_MAX_CNT 1024

// How a product of n tokens is laid out (the launcher and its scratch agree
// through this): pair (16 slices), and past 8 tokens the padded tokens, the
// tiles, the split and where each part of the scratch begins.
struct lp_cuda_mm_plan {
    bool pair;
    int n_pad, n_tg, n_bp, n_split;
    size_t xw_off, xsum_off, part_off, bytes;
};
// (inline: a build with CUDA links the emulated kernels into one test too,
// and a function without a stream argument would be defined twice)
static inline struct lp_cuda_mm_plan lp_cuda_mm_plan(int epi, const struct lp_cuda_weight *const *ws,
                                                     int n_w, int n, int n_sm) {
    struct lp_cuda_mm_plan p = {false, 0, 0, 0, 1, 0, 0, 0, 0};
    const struct lp_cuda_weight *w = ws[0];
    const int unit = w->fmt == LP_CUDA_FMT_BF16 ? 64 : w->group < 64 ? 32 : w->group;
    int max_rows = 0;
    for (int j = 0; j < n_w; j++)
        max_rows = ws[j]->rows > max_rows ? ws[j]->rows : max_rows;
    p.pair = w->cols / unit >= 16 && max_rows <= LP_CUDA_MM_PAIR_MAX_ROWS;
    if (n <= 8) return p; // the 8-token kernel makes x ready itself
    p.xw_off = LP_CUDA_MM_MAX_CNT * 4;
    if (n < LP_CUDA_MMT_MIN_TOKENS) { // the 32-token kernel: x made ready, no split
        p.n_pad = (n + 31) / 32 * 32;
        p.xsum_off = p.xw_off + (size_t)p.n_pad * (size_t)w->cols * 4;
        p.part_off = p.bytes = p.xsum_off + (size_t)p.n_pad * ((size_t)w->cols / 32) * 4;
        return p;
    }
    p.n_tg = (n + LP_CUDA_MMT_BN - 1) / LP_CUDA_MMT_BN;
    p.n_pad = p.n_tg * LP_CUDA_MMT_BN;
    if (epi == LP_CUDA_EPI_SWIGLU)
        p.n_bp = (w->rows + LP_CUDA_MMT_BM / 2 - 1) / (LP_CUDA_MMT_BM / 2);
    else
        for (int j = 0; j < n_w; j++)
            p.n_bp += (ws[j]->rows + LP_CUDA_MMT_BM - 1) / LP_CUDA_MMT_BM;
    const long tiles = (long)p.n_tg * p.n_bp;
    if (p.pair && n_sm > 0 && tiles <= LP_CUDA_MM_MAX_CNT) // two blocks a multiprocessor
        while (p.n_split < 8 && tiles * p.n_split < 2L * n_sm)
            p.n_split *= 2;
    p.xsum_off = p.xw_off + (size_t)p.n_pad * (size_t)w->cols * 4; // 4 bytes a token and column
    p.part_off = p.xsum_off + (size_t)p.n_pad * ((size_t)w->cols / 32) * 4;
    p.bytes = p.part_off; // and, split, the 8 pair sums of every tile element
    if (p.n_split > 1) p.bytes += (size_t)tiles * 8 * LP_CUDA_MMT_BM * LP_CUDA_MMT_BN * 4;
    return p;
}

// outs[j][n, ws[j].rows] (epi) x @ ws[j]^T for j < n_w <= 3 on the tensor
// cores; the matrices share format, width, group and scale type, and all
// satisfy lp_cuda_mm_ok (else cudaErrorInvalidValue). SWIGLU: n_w = 2 (gate,
// up, equal rows), outs[0] receives the product. norm_w != NULL: x is taken
// through rmsnorm(x, norm_w, eps) first (norm_w [cols]), and that row is
// written to norm_out [n, cols] (which must not be x). pdl: a programmatic
// launch. n_sm: the GPU's multiprocessors, for the grids' sizes (0: one
// block a tile, no split). scratch: lp_cuda_mm_plan(...).bytes bytes of
// device memory, zero when first allocated (its tile counters are left at
// zero by every call), where x is made ready for the mma first (one launch
// before the product's). One result per element whatever n and n_sm (see
// matmul_tc.cu).
cudaError_t lp_cuda_mm(cudaStream_t s, bool pdl, int epi, const float *x,
                       const struct lp_cuda_weight *const *ws, float *const *outs, int n_w, int n,
                       const float *norm_w, float *norm_out, float eps, int n_sm, void *scratch);

cudaError_t lp_cuda_embed(cudaStream_t s, float *out, const struct lp_cuda_weight *w,
                          const int32_t *ids, int n);
cudaError_t lp_cuda_matmul(cudaStream_t s, float *out, const float *x,
                           const struct lp_cuda_weight *w, int n);
// y[n, w.rows] += x @ w^T (bit-identical to lp_cuda_matmul then lp_cuda_add).
cudaError_t lp_cuda_matmul_add(cudaStream_t s, float *y, const float *x,
                               const struct lp_cuda_weight *w, int n);
// outs[j] = x @ ws[j]^T for j < n_w (one launch when the weights share format and width).
cudaError_t lp_cuda_matmul_multi(cudaStream_t s, float *const *outs, const float *x,
                                 const struct lp_cuda_weight *const *ws, int n_w, int n);
// out = silu(x Wg^T) * (x Wu^T) [n, w_gate.rows]; tmp [n, w_up.rows] is used
// only when the two cannot share a launch.
cudaError_t lp_cuda_matmul_swiglu(cudaStream_t s, float *out, float *tmp, const float *x,
                                  const struct lp_cuda_weight *w_gate,
                                  const struct lp_cuda_weight *w_up, int n);
cudaError_t lp_cuda_rmsnorm(cudaStream_t s, float *out, const float *x, const float *weight,
                            int n_rows, int dim, float eps);
cudaError_t lp_cuda_rope(cudaStream_t s, float *x, const int32_t *pos, const float *inv_freq, int n,
                         int n_heads, int head_dim);
// rmsnorm per head of q and k (q_norm, k_norm [head_dim]), rope at pos, then
// k and v into the cache at slot: what lp_cuda_rmsnorm x2, lp_cuda_rope x2 and
// lp_cuda_kv_store compute, in one launch (n tokens).
cudaError_t lp_cuda_qk_norm_rope_store(cudaStream_t s, float *q, float *k, const float *v,
                                       const float *q_norm, const float *k_norm,
                                       const float *inv_freq, const int32_t *pos,
                                       const int32_t *slot, void *k_cache, void *v_cache, bool bf16,
                                       int64_t n_slots, int n, int n_heads, int n_kv_heads,
                                       int head_dim, float eps);
cudaError_t lp_cuda_kv_store(cudaStream_t s, void *k_cache, void *v_cache, bool bf16,
                             int64_t n_slots, int row, const float *k, const float *v,
                             const int32_t *slot, int n);
// The qk_norm_rope_store step of a decode batch (one token a segment) as
// attention's prologue: q (attention's q) and k hold the raw projections;
// attention normalizes and rotates them, writes both back and stores k and
// v at slot -- the bits lp_cuda_qk_norm_rope_store gives.
struct lp_cuda_attn_qk {
    float *k;                     // [n, n_kv_heads * head_dim]
    const float *v;               // [n, n_kv_heads * head_dim]
    const float *q_norm, *k_norm; // [head_dim]
    const float *inv_freq;        // [head_dim / 2]
    const int32_t *slot;          // [n] cache rows
    int64_t n_slots;
    float eps;
};

// The tiled attention kernel takes this shape (hd = 32, 64, 128 or 256;
// G = n_heads / n_kv_heads query heads a kv head, G <= 8, G * hd <= 512);
// only it can take the qk step (lp_cuda_attn_qk).
static inline bool lp_cuda_attn_tiled(int head_dim, int n_heads, int n_kv_heads) {
    if (n_kv_heads <= 0 || n_heads % n_kv_heads != 0) return false;
    int hd = head_dim, g = n_heads / n_kv_heads;
    return (hd == 32 || hd == 64 || hd == 128 || hd == 256) && g >= 1 && g <= 8 && g * hd <= 512;
}

// out[n, n_heads * head_dim] = attention of q over the cache (backend_i.h);
// qk: NULL, or the folded qk step (only where lp_cuda_attn_tiled).
// scratch: lp_cuda_attn_scratch_floats floats; counters: [n * n_kv_heads]
// ints, zero before the call and after it. pdl: a programmatic launch.
// rows_per_block: query rows a block of the tiled kernel takes one after
// another (1 for a decode batch; more where rows share a sequence, as a
// prefill's do: they then read its K and V from L1); the same bits either way.
cudaError_t lp_cuda_attention(cudaStream_t s, bool pdl, float *out, float *q, void *k_cache,
                              void *v_cache, bool bf16, int block_size, int n_kv_heads,
                              int head_dim, int n_heads, const struct lp_cuda_attn_index *ix,
                              const struct lp_cuda_attn_qk *qk, int n, int rows_per_block,
                              float *scratch, int *counters);
cudaError_t lp_cuda_silu_mul(cudaStream_t s, float *out, const float *gate, const float *up,
                             int64_t n);
cudaError_t lp_cuda_add(cudaStream_t s, float *x, const float *y, int64_t n);
cudaError_t lp_cuda_gather_rows(cudaStream_t s, float *dst, const float *src,
                                const int32_t *src_row, int n, int cols);
// argmax.cu: ids[r] = the greedy id of row r of x [n_rows, cols] (exactly
// util/argmax.h's lp_argmax_f32), ids[n_rows + r] = the row's first NaN or
// infinite index, -1 if none (ids: int32 [2, n_rows]).
cudaError_t lp_cuda_argmax_rows(cudaStream_t s, int32_t *ids, const float *x, int n_rows, int cols);
// Reads `bytes` (a multiple of 16) of src once; writes one float per warp
// (n_blocks * 8 floats) to sink.
cudaError_t lp_cuda_read_probe(cudaStream_t s, const void *src, size_t bytes, float *sink,
                               int n_blocks);

#endif
