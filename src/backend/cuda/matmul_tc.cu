// SPDX-License-Identifier: MIT
// matmul_tc.cu -- out[n, rows] = x[n, cols] @ W^T on the tensor cores, for
// bf16 and MLX affine 8- and 4-bit weights (x float32), with the epilogues
// of the fused slots (store, add into out, silu(gate) * up) and, optionally,
// the rmsnorm of x folded in (NORM: x is the raw row; the product uses
// x * inv_rms * norm_w, and that row is also written out, as the rmsnorm
// step would). Up to 8 tokens one launch, k_mm, which makes x ready for the
// mma itself in every block (what counts at batch 1: a launch more cost more
// than it saved there); past 8 tokens two: k_mm_prep makes x ready once (the
// rmsnorm, the bf16 halves in each lane's fragment order, the x sums of the
// MLX groups), then k_mm's 32-token tiles multiply (decode batches) or, from
// LP_CUDA_MMT_MIN_TOKENS tokens (prefill), k_mmt's shared-memory tiles.
//
// Accuracy: the weights enter the bf16 mma exactly (bf16 as stored; MLX
// codes q as q * 2^-7, exact); x is split into bf16 hi + lo (hi = bf16(x),
// lo = bf16(x - hi), together within ~2^-17 of x) and both halves are
// multiplied, accumulating in float: about float accuracy (the kernel tests
// hold it to 1e-5 of the reference), unlike a plain bf16 product (~1e-3).
//
// One computation per output element, whatever the batch (batch invariance:
// a token's row is the same bits alone or among others, and in the decode
// and prefill grids alike). The columns are cut into slices of whole units
// (a unit is an MLX group, or 64 columns of bf16): n_sl = min(units, 8),
// or 16 when there are 16 units or more and at most LP_CUDA_MM_PAIR_MAX_ROWS rows
// (PAIR), a unit into
// chunks of CW (64; 32 for MLX group 32) columns, a chunk into CW / 16 mma
// steps. Within a chunk the k order is permuted so that lane t of each
// 4-lane group reads CW / 4 contiguous columns (16-byte loads): in step s
// the lane's A/B pairs are listed by a_pair / x_pair below.
//   slice partial P_s = sum over its units, in order, of
//     bf16:  P += mma(A, lo), then P += mma(A, hi), step by step
//     MLX:   G = 0; G += mma(Aq, lo), G += mma(Aq, hi) over the unit's steps;
//            P = fma(128 scale, G, P); P = fma(bias, sum_x, P)
//   out = P_0 + P_1 + ... (in order; PAIR: Q_k = P_2k + P_2k+1, out = Q_0 +
//   Q_1 + ... + Q_7), then the epilogue.
// sum_x (a group's x sum for one token) is fixed too: each lane adds its
// CW / 4 values in order, the four lanes of a column combine by xor
// shuffles 1 then 2, and a two-chunk group adds its chunks' sums in order.
//
// Tiles: a tile is 16 or 32 weight rows (one or two 16-row m-tiles; SWIGLU:
// 16 rows of the gate and the same 16 of up) and a group of NTL * 8 tokens
// (the token group varies fastest, so tiles sharing weights run together and
// hit L2). Persistent blocks (8 warps, warp w = slice w): as many as n_sm
// multiprocessors hold at once (n_sm = 0: one block a tile), block b taking tiles
// b, b + grid, ...; the rmsnorm's 1 / rms is computed once per token group
// a block meets, not once per tile. A lane prefetches its rows' slice of the
// block's first tile into L2 and loads its first chunk before waiting for
// the previous kernel (PDL), so the weight stream starts while that kernel
// drains; as each tile starts, it asks for the next tile's slice into L2,
// and its last chunk loads the next tile's first (the rest find L2). The tiles
// and their arithmetic do not depend on the grid: any n_sm gives the same
// bits. k_mmt's tiles are described where it is defined.
#include <math.h>

#include <atomic>

#include "backend/cuda/device.h"
#include "backend/cuda/internal.h"

#define MM_THREADS 256
#define MM_WARPS 8

// bf16x2 constants: 2^126 (codes at bit 0 of a 16-bit half) and 2^122 (at bit 4).
#define BF2_P126 0x7e807e80u
#define BF2_P122 0x7c807c80u

template <int FMT> struct mm_bits;
template <> struct mm_bits<LP_CUDA_FMT_BF16> { static constexpr int n = 16; };
template <> struct mm_bits<LP_CUDA_FMT_Q8> { static constexpr int n = 8; };
template <> struct mm_bits<LP_CUDA_FMT_Q4> { static constexpr int n = 4; };

// A's two registers of one row for step s (k pairs {2t, 2t+1} -> r0 and
// {2t+8, 2t+9} -> r2), from the lane's raw words of that row. Codes become
// bf16 q * 2^-7: a 16-bit half holding an integer c < 256 is the bf16
// c * 2^-133 (subnormal for c < 128), times 2^126 (or 2^122 for c = 16 q).
//   bf16: r0 = cols (4s, 4s+1), r2 = (4s+2, 4s+3)
//   q8:   word s = codes 4s..4s+3: r0 = (4s, 4s+2), r2 = (4s+1, 4s+3)
//   q4:   word j = s/2 = codes 8j..8j+7, m = 2 (s%2): r0 = (8j+m, 8j+m+4),
//         r2 = (8j+m+1, 8j+m+5)
template <int FMT>
static __device__ __forceinline__ void a_pair(const uint32_t *w, int s, uint32_t &r0,
                                              uint32_t &r2) {
    if (FMT == LP_CUDA_FMT_BF16) {
        r0 = w[2 * s];
        r2 = w[2 * s + 1];
    } else if (FMT == LP_CUDA_FMT_Q8) {
        const uint32_t word = w[s];
        r0 = mul_bf16x2(word & 0x00ff00ffu, BF2_P126);
        r2 = mul_bf16x2((word >> 8) & 0x00ff00ffu, BF2_P126);
    } else {
        const uint32_t word = (s & 1) ? w[s >> 1] >> 8 : w[s >> 1];
        r0 = mul_bf16x2(word & 0x000f000fu, BF2_P126);
        r2 = mul_bf16x2(word & 0x00f000f0u, BF2_P122);
    }
}

// The lane's x values matching a_pair: B's register 0 takes (xs[i0], xs[i1]),
// register 1 (xs[i2], xs[i3]).
template <int FMT> static __device__ __forceinline__ void x_pair(int s, int (&i)[4]) {
    if (FMT == LP_CUDA_FMT_BF16) {
        i[0] = 4 * s, i[1] = 4 * s + 1, i[2] = 4 * s + 2, i[3] = 4 * s + 3;
    } else if (FMT == LP_CUDA_FMT_Q8) {
        i[0] = 4 * s, i[1] = 4 * s + 2, i[2] = 4 * s + 1, i[3] = 4 * s + 3;
    } else {
        const int b = 8 * (s >> 1) + 2 * (s & 1);
        i[0] = b, i[1] = b + 4, i[2] = b + 1, i[3] = b + 5;
    }
}

// N words from p (16-byte loads where N allows; p aligned to 4 N bytes).
template <int N>
static __device__ __forceinline__ void load_words(const void *p, uint32_t (&w)[N]) {
    if (N >= 4) {
#pragma unroll
        for (int k = 0; k < N; k += 4) {
            uint4 r = __ldg((const uint4 *)p + k / 4);
            w[k] = r.x, w[k + 1] = r.y, w[k + 2] = r.z, w[k + 3] = r.w;
        }
    } else if (N == 2) {
        uint2 r = __ldg((const uint2 *)p);
        w[0] = r.x, w[1 % N] = r.y;
    } else {
        w[0] = __ldg((const uint32_t *)p);
    }
}

struct mm_args {
    const float *x; // [n, cols] (NORM: the row before rmsnorm)
    struct lp_cuda_weight w[3];
    float *out[3];
    int bp0[4]; // job j owns block-rows [bp0[j], bp0[j + 1])
    int n_jobs;
    int n, n_tg; // tokens, token groups
    int n_bp;    // block-rows (tiles = n_tg * n_bp)
    int cols;
    bool norm;           // fold rmsnorm(x, norm_w, eps) in and write it to norm_out
    const float *norm_w; // [cols]
    float *norm_out;     // [n, cols]
    float eps;
    // x made ready for the mma by k_mm_prep (its layout: mm_xw_at):
    const uint32_t *xw; // the B words of every lane, 8-token tile and chunk
    const float *xsum;  // [n_units][n_pad] a unit's x sum per token (MLX)
    int n_pad;          // tokens rounded up to the kernel's token group
};

// A lane's B fragments of one chunk for its CW / 4 x values xs (in x_pair's
// order, each split into bf16 hi + lo).
template <int FMT, int CW>
static __device__ __forceinline__ void mm_x_words(const float *xs, uint32_t (&bh)[CW / 16][2],
                                                  uint32_t (&bl)[CW / 16][2]) {
#pragma unroll
    for (int s = 0; s < CW / 16; s++) {
        int ix[4];
        x_pair<FMT>(s, ix);
        split_bf16(xs[ix[0]], xs[ix[1]], bh[s][0], bl[s][0]);
        split_bf16(xs[ix[2]], xs[ix[3]], bh[s][1], bl[s][1]);
    }
}

// A chunk's x sum for the token of the calling lane's 4-lane group: the
// lane's XE values in order, then the four lanes combined by xor shuffles 1
// and 2 (every lane of the warp must call it).
template <int XE> static __device__ __forceinline__ float mm_x_sum(const float *xs) {
    float sum = 0.0f;
#pragma unroll
    for (int k = 0; k < XE; k++)
        sum = __fadd_rn(sum, xs[k]);
    sum = __fadd_rn(sum, __shfl_xor_sync(0xffffffffu, sum, 1));
    return __fadd_rn(sum, __shfl_xor_sync(0xffffffffu, sum, 2));
}

// Where lane's B words of 8-token tile nt8 and chunk c begin in xw: Q
// uint4s, the q-th at ((nt8 * n_chunks + c) * Q + q) * 32 + lane (so that a
// warp's q-th load is 512 contiguous bytes). A lane's words of mma step s
// are uint4 q = s: (hi of pair 0, hi of pair 1, lo of pair 0, lo of pair 1).
static __device__ __forceinline__ const uint4 *mm_xw_at(const uint32_t *xw, int nt8, int c,
                                                        int n_chunks, int q_per, int lane) {
    return (const uint4 *)xw + ((size_t)nt8 * n_chunks + c) * q_per * 32 + lane;
}

// k_mm_prep: one block per token of the padded batch (blockIdx.x < n_pad).
// x (and rmsnorm, when folded in: 1 / rms in k_rmsnorm_wide's order, the
// normalized row also written out) split into the bf16 halves of every
// lane's B fragments, and, MLX, each unit's x sum in the order the product
// kernel once made it: a lane's CW / 4 values in order, the four lanes of a
// chunk combined by xor shuffles 1 then 2, a two-chunk unit's chunks added
// in order. Tokens past n give zeros. The same values as computing them in
// the product kernel, once per batch instead of once per block.
template <int FMT, int CW>
static __global__ void __launch_bounds__(MM_THREADS) k_mm_prep(struct mm_args a, uint32_t *xw,
                                                               float *xsum) {
    constexpr bool MLX = FMT != LP_CUDA_FMT_BF16;
    constexpr int STEPS = CW / 16, XE = CW / 4;
    griddep_launch_dependents();
    griddep_wait();
    const int tok = (int)blockIdx.x, tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int cols = a.cols, n_chunks = cols / CW;
    const int cpu = MLX && a.w[0].group > CW ? a.w[0].group / CW : 1;
    const bool real = tok < a.n;
    const float *xr = a.x + (size_t)(real ? tok : 0) * cols;
    __shared__ float s_part[MM_WARPS], s_inv;
    if (a.norm) {
        float ss = 0.0f;
        if (real)
            for (int i = tid; i < cols; i += MM_THREADS)
                ss = __fmaf_rn(xr[i], xr[i], ss);
        ss = warp_sum(ss);
        if (lane == 0) s_part[warp] = ss;
        __syncthreads();
        if (tid == 0) {
            float tot = s_part[0];
            for (int k = 1; k < MM_WARPS; k++)
                tot = __fadd_rn(tot, s_part[k]);
            s_inv = 1.0f / sqrtf(tot / (float)cols + a.eps);
        }
        __syncthreads();
        if (real) {
            float *o = a.norm_out + (size_t)tok * cols;
            for (int i = tid; i < cols; i += MM_THREADS)
                o[i] = __fmul_rn(__fmul_rn(xr[i], s_inv), a.norm_w[i]);
        }
    }
    // item = (chunk, lane t): the four lanes of a chunk are neighbours in a warp
    const int items = (n_chunks * 4 + 31) / 32 * 32;
    for (int it = tid; it < items; it += MM_THREADS) {
        const int c = it / 4, t = it % 4;
        const bool on = c < n_chunks;
        float xs[XE];
        const int col0 = c * CW + t * XE;
#pragma unroll
        for (int k = 0; k < XE; k++)
            xs[k] = 0.0f;
        if (on && real) {
#pragma unroll
            for (int k = 0; k < XE; k++)
                xs[k] = xr[col0 + k];
            if (a.norm)
#pragma unroll
                for (int k = 0; k < XE; k++)
                    xs[k] = __fmul_rn(__fmul_rn(xs[k], s_inv), a.norm_w[col0 + k]);
        }
        if (on) {
            uint4 *dst = (uint4 *)mm_xw_at(xw, tok / 8, c, n_chunks, STEPS, 0) + (tok % 8) * 4 + t;
            uint32_t bh[STEPS][2], bl[STEPS][2];
            mm_x_words<FMT, CW>(xs, bh, bl);
#pragma unroll
            for (int st = 0; st < STEPS; st++) {
                uint4 v;
                v.x = bh[st][0], v.y = bh[st][1], v.z = bl[st][0], v.w = bl[st][1];
                dst[(size_t)st * 32] = v;
            }
        }
        if (MLX) {
            const float sum = mm_x_sum<XE>(xs);
            // a two-chunk unit: its second chunk's lane 0 adds the first's (4 lanes back)
            const float prev = __shfl_sync(0xffffffffu, sum, (lane + 28) % 32);
            if (on && t == 0 && (c + 1) % cpu == 0)
                xsum[(size_t)(c / cpu) * a.n_pad + tok] = cpu == 2 ? __fadd_rn(prev, sum) : sum;
        }
    }
}

// The lane's two rows (g and g + 8) of each m-tile of block-row bp: their
// matrix (ji), its rows, the tile's first row, and row indices and pointers.
template <int FMT, int MM_MT, int EPI> struct mm_tile {
    int ji, rows, rbase;
    int rr[MM_MT][2];
    __device__ __forceinline__ mm_tile(const struct mm_args &a, int bp, int g) {
        ji = 0;
        if (EPI != LP_CUDA_EPI_SWIGLU) {
            if (a.n_jobs > 1 && bp >= a.bp0[1]) ji = 1;
            if (a.n_jobs > 2 && bp >= a.bp0[2]) ji = 2;
        }
        rows = pick3(ji, a.w[0].rows, a.w[1].rows, a.w[2].rows);
        rbase = EPI == LP_CUDA_EPI_SWIGLU ? bp * 16 : (bp - a.bp0[ji]) * 16 * MM_MT;
#pragma unroll
        for (int mt = 0; mt < MM_MT; mt++)
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const int r = rbase + (EPI == LP_CUDA_EPI_SWIGLU ? 0 : 16 * mt) + g + 8 * h;
                rr[mt][h] = r < rows ? r : rows - 1;
            }
    }
    // The first byte of row (mt, h).
    __device__ __forceinline__ const char *rp(const struct mm_args &a, int mt, int h) const {
        const int j = EPI == LP_CUDA_EPI_SWIGLU ? mt : ji;
        const char *data = (const char *)pick3(j, a.w[0].data, a.w[1].data, a.w[2].data);
        return data + (size_t)rr[mt][h] * ((size_t)a.cols * mm_bits<FMT>::n / 8);
    }
    // The lane's share of the tile's bytes of columns [c0, c1) chunks (and,
    // MLX, the line of its rows' first scale and bias there) into L2.
    __device__ __forceinline__ void prefetch(const struct mm_args &a, int cb, int ce, int cw,
                                             int cpu, int t) const {
        constexpr int BITS = mm_bits<FMT>::n;
        const size_t off = (size_t)cb * cw * BITS / 8, len = (size_t)(ce - cb) * cw * BITS / 8;
#pragma unroll
        for (int mt = 0; mt < MM_MT; mt++)
#pragma unroll
            for (int h = 0; h < 2; h++) {
                for (size_t o = (size_t)t * 128; o < len; o += 512)
                    prefetch_l2(rp(a, mt, h) + off + o);
                if (FMT != LP_CUDA_FMT_BF16 && t == 0 && cb < ce) {
                    const int j = EPI == LP_CUDA_EPI_SWIGLU ? mt : ji;
                    const int64_t at = (int64_t)rr[mt][h] * (a.cols / a.w[0].group) + cb / cpu;
                    prefetch_l2(pick3(j, a.w[0].scales, a.w[1].scales, a.w[2].scales) + at);
                    prefetch_l2(pick3(j, a.w[0].biases, a.w[1].biases, a.w[2].biases) + at);
                }
            }
    }
};

// FMT, CW (chunk columns), NTL (8-token mma tiles a tile), EPI (enum lp_cuda_epi).
// m-tiles (16 rows) a tile: two for SWIGLU (gate and up) and for batches
// (the x fragments serve both), one at NTL = 1 (twice the tiles: a small
// matrix still spreads over every multiprocessor).
template <int NTL, int EPI> struct mm_mt {
    static constexpr int n = (EPI == LP_CUDA_EPI_SWIGLU || NTL > 1) ? 2 : 1;
};

// The slices' partials of one element, in the arithmetic's order: warp
// k's partial at p[k * stride]; n_sl slices (PAIR: 16, as pair sums, which
// the 32-token kernel's warps hold already).
template <int NTL, bool PAIR>
static __device__ __forceinline__ float mm_merge(const float *p, int stride, int n_sl) {
    float v;
    if (PAIR && NTL == 1) {
        v = __fadd_rn(p[0], p[stride]);
        for (int k = 1; k < 8; k++)
            v = __fadd_rn(v, __fadd_rn(p[(2 * k) * stride], p[(2 * k + 1) * stride]));
    } else {
        v = p[0];
        for (int k = 1; k < (PAIR ? 8 : n_sl); k++)
            v = __fadd_rn(v, p[k * stride]);
    }
    return v;
}

// PAIR (wide matrices, 16 units or more, of at most LP_CUDA_MM_PAIR_MAX_ROWS rows):
// 16 slices, added as 8 pair sums
// (Q_k = P_2k + P_2k+1, out = Q_0 + ... + Q_7 in order). The 8-token kernel
// gives each slice a warp (16 warps: twice the warps for the few tiles of
// a narrow wide matrix at batch 1); the 32-token one gives warp w slices 2w
// and 2w + 1, adjacent, one after the other.
template <int NTL, bool PAIR> struct mm_threads {
    static constexpr int n = NTL == 1 && PAIR ? 512 : 256;
};

template <int FMT, int CW, int NTL, int EPI, bool PAIR>
static __global__ void __launch_bounds__(mm_threads<NTL, PAIR>::n, NTL == 1 && !PAIR ? 2 : 1)
    k_mm(struct mm_args a) {
    constexpr int THREADS = mm_threads<NTL, PAIR>::n, WARPS = THREADS / 32;
    constexpr int MM_MT = mm_mt<NTL, EPI>::n;
    constexpr bool MLX = FMT != LP_CUDA_FMT_BF16;
    constexpr int BITS = mm_bits<FMT>::n;
    constexpr int STEPS = CW / 16, XE = CW / 4, W = XE * BITS / 32;
    constexpr int NT = 8 * NTL;
    typedef mm_tile<FMT, MM_MT, EPI> tile_t;
    constexpr bool PREP = NTL > 1; // x from k_mm_prep; at NTL = 1 made here (one launch less)
    griddep_launch_dependents();
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane >> 2, t = lane & 3;
    const int cols = a.cols, group = a.w[0].group, n_chunks = cols / CW;
    const int unit = MLX ? (group > CW ? group : CW) : CW, cpu = unit / CW;
    // slices: n_sl of whole units; a warp's are [sw, sw + SPW), chunks [cb, ce),
    // the second (PAIR at 32 tokens) from chunk cm
    const int n_units = cols / unit, n_sl = PAIR ? 16 : n_units < MM_WARPS ? n_units : MM_WARPS;
    constexpr int SPW = PAIR && NTL > 1 ? 2 : 1;
    const int sw = warp * SPW;
    const int cb = sw < n_sl ? sw * n_units / n_sl * cpu : 0;
    const int cm = sw < n_sl ? (sw + 1) * n_units / n_sl * cpu : 0;
    const int ce = sw < n_sl ? (sw + SPW) * n_units / n_sl * cpu : 0;
    const int n_tiles = a.n_tg * a.n_bp, stride = (int)gridDim.x;
    // The weights are no kernel's output: the first tile's first chunk is
    // loaded, and the rest of its slice asked into L2, while the previous
    // kernel finishes. Each chunk's loop loads the next chunk, the last one
    // the next tile's first.
    const int nch = ce - cb;
    tile_t tl(a, (int)blockIdx.x < n_tiles ? (int)blockIdx.x / a.n_tg : 0, g);
    uint32_t raw[MM_MT][2][W] = {};
    if ((int)blockIdx.x < n_tiles && nch > 0) {
        tl.prefetch(a, cb, ce, CW, cpu, t);
#pragma unroll
        for (int mt = 0; mt < MM_MT; mt++)
#pragma unroll
            for (int h = 0; h < 2; h++)
                load_words<W>(tl.rp(a, mt, h) + ((size_t)cb * CW + (size_t)t * XE) * BITS / 8,
                              raw[mt][h]);
    }
    griddep_wait();
    __shared__ float s_inv[NT];
    __shared__ float s_p[WARPS][MM_MT * NTL * 128];
    int tg_inv = -1; // the token group s_inv holds
    for (int ti = (int)blockIdx.x; ti < n_tiles; ti += stride) {
        const int tg = ti % a.n_tg, bp = ti / a.n_tg;
        const int t0 = tg * NT;
        const bool more = ti + stride < n_tiles;
        const tile_t nx(a, more ? (ti + stride) / a.n_tg : bp, g);
        if (more && nch > 0) nx.prefetch(a, cb, ce, CW, cpu, t);
        const int ji = tl.ji, rows = tl.rows, rbase = tl.rbase;
        if (!PREP && a.norm && tg != tg_inv) { // 1 / rms per token, in k_mm_prep's order
            __shared__ float s_part[MM_WARPS][NT];
            for (int k = 0; k < NT; k++) {
                const int tok = t0 + k;
                float ss = 0.0f;
                if (tok < a.n && tid < MM_THREADS) { // k_mm_prep's 256 threads
                    const float *xr = a.x + (size_t)tok * cols;
                    for (int i = tid; i < cols; i += MM_THREADS)
                        ss = __fmaf_rn(xr[i], xr[i], ss);
                }
                ss = warp_sum(ss);
                if (lane == 0 && warp < MM_WARPS) s_part[warp][k] = ss;
            }
            __syncthreads();
            if (tid < NT) {
                float tot = s_part[0][tid];
                for (int k = 1; k < MM_WARPS; k++)
                    tot = __fadd_rn(tot, s_part[k][tid]);
                s_inv[tid] = 1.0f / sqrtf(tot / (float)cols + a.eps);
            }
            __syncthreads();
            tg_inv = tg;
        }
        if (!PREP && a.norm && bp == 0) // one block-row writes the normalized rows
            for (int k = 0; k < NT && t0 + k < a.n; k++) {
                const float *xr = a.x + (size_t)(t0 + k) * cols;
                float *o = a.norm_out + (size_t)(t0 + k) * cols;
                for (int i = tid; i < cols; i += THREADS)
                    o[i] = __fmul_rn(__fmul_rn(xr[i], s_inv[k]), a.norm_w[i]);
            }
        float p[MM_MT][NTL][4];
        zero3(p);
        if (cb < ce) {
            float gq[MM_MT][NTL][4], sx[NTL][2];
            float us[MM_MT][2], ub[MM_MT][2]; // the unit's scale (times 128) and bias per row
            for (int c = cb; c < ce; c++) {
                if (SPW == 2 && c == cm) { // the first slice's partial, kept for its pair sum
#pragma unroll
                    for (int mt = 0; mt < MM_MT; mt++)
#pragma unroll
                        for (int nt = 0; nt < NTL; nt++)
#pragma unroll
                            for (int i = 0; i < 4; i++) {
                                s_p[warp][((mt * NTL + nt) * 32 + lane) * 4 + i] = p[mt][nt][i];
                                p[mt][nt][i] = 0.0f;
                            }
                }
                const int cu = (c / cpu) * cpu; // first chunk of this unit
                if (MLX && c == cu) {           // the unit's scales and biases, used when it ends
                    const int gi = c / cpu, gpr = cols / group;
                    const bool sbf = a.w[0].scale_bf16;
#pragma unroll
                    for (int mt = 0; mt < MM_MT; mt++) {
                        const int j = EPI == LP_CUDA_EPI_SWIGLU ? mt : ji;
                        const uint16_t *sc = pick3(j, a.w[0].scales, a.w[1].scales, a.w[2].scales);
                        const uint16_t *bi = pick3(j, a.w[0].biases, a.w[1].biases, a.w[2].biases);
#pragma unroll
                        for (int h = 0; h < 2; h++) {
                            const int64_t at = (int64_t)tl.rr[mt][h] * gpr + gi;
                            us[mt][h] = __fmul_rn(half_at(sc, at, sbf), 128.0f);
                            ub[mt][h] = half_at(bi, at, sbf);
                        }
                    }
                }
                // A fragments of this chunk, then the next chunk's loads
                uint32_t af[MM_MT][STEPS][4];
#pragma unroll
                for (int mt = 0; mt < MM_MT; mt++)
#pragma unroll
                    for (int s = 0; s < STEPS; s++) {
                        a_pair<FMT>(raw[mt][0], s, af[mt][s][0], af[mt][s][2]);
                        a_pair<FMT>(raw[mt][1], s, af[mt][s][1], af[mt][s][3]);
                    }
                if (c + 1 < ce || more) {
                    const int cn = c + 1 < ce ? c + 1 : cb;
#pragma unroll
                    for (int mt = 0; mt < MM_MT; mt++)
#pragma unroll
                        for (int h = 0; h < 2; h++)
                            load_words<W>((c + 1 < ce ? tl.rp(a, mt, h) : nx.rp(a, mt, h)) +
                                              ((size_t)cn * CW + (size_t)t * XE) * BITS / 8,
                                          raw[mt][h]);
                }
                if (MLX && c == cu) zero3(gq);
#pragma unroll
                for (int nt = 0; nt < NTL; nt++) {
                    uint32_t bh[STEPS][2], bl[STEPS][2];
                    const int tok = t0 + 8 * nt + g;
                    if (PREP) {
                        if (tok < a.n) {
                            const uint4 *xp = mm_xw_at(a.xw, t0 / 8 + nt, c, n_chunks, STEPS, lane);
#pragma unroll
                            for (int s = 0; s < STEPS; s++) {
                                const uint4 v = __ldg(xp + (size_t)s * 32);
                                bh[s][0] = v.x, bh[s][1] = v.y, bl[s][0] = v.z, bl[s][1] = v.w;
                            }
                        } else {
#pragma unroll
                            for (int s = 0; s < STEPS; s++)
                                bh[s][0] = bh[s][1] = bl[s][0] = bl[s][1] = 0u;
                        }
                        if (MLX && c == cu + cpu - 1) { // the unit's x sums, tokens 2t, 2t + 1
                            const float *sp =
                                a.xsum + (size_t)(c / cpu) * a.n_pad + t0 + 8 * nt + 2 * t;
                            sx[nt][0] = sp[0], sx[nt][1] = sp[1];
                        }
                    } else { // k_mm_prep's values, made here
                        float xs[XE];
                        const int col0 = c * CW + t * XE;
#pragma unroll
                        for (int k = 0; k < XE; k++)
                            xs[k] = 0.0f;
                        if (tok < a.n) {
                            const float4 *xp = (const float4 *)(a.x + (size_t)tok * cols + col0);
#pragma unroll
                            for (int k = 0; k < XE / 4; k++) {
                                float4 v = __ldg(xp + k);
                                xs[4 * k] = v.x, xs[4 * k + 1] = v.y, xs[4 * k + 2] = v.z,
                                       xs[4 * k + 3] = v.w;
                            }
                            if (a.norm) {
                                const float inv = s_inv[8 * nt + g];
                                const float4 *wp = (const float4 *)(a.norm_w + col0);
#pragma unroll
                                for (int k = 0; k < XE / 4; k++) {
                                    const float4 wv = __ldg(wp + k);
                                    const float w4[4] = {wv.x, wv.y, wv.z, wv.w};
#pragma unroll
                                    for (int j = 0; j < 4; j++)
                                        xs[4 * k + j] = __fmul_rn(__fmul_rn(xs[4 * k + j], inv), w4[j]);
                                }
                            }
                        }
                        mm_x_words<FMT, CW>(xs, bh, bl);
                        if (MLX) {
                            const float sum = mm_x_sum<XE>(xs);
                            const float s0 = __shfl_sync(0xffffffffu, sum, 8 * t);
                            const float s1 = __shfl_sync(0xffffffffu, sum, 8 * t + 4);
                            if (c == cu) {
                                sx[nt][0] = s0, sx[nt][1] = s1;
                            } else {
                                sx[nt][0] = __fadd_rn(sx[nt][0], s0),
                                sx[nt][1] = __fadd_rn(sx[nt][1], s1);
                            }
                        }
                    }
#pragma unroll
                    for (int mt = 0; mt < MM_MT; mt++)
#pragma unroll
                        for (int s = 0; s < STEPS; s++) {
                            if (MLX) {
                                mma_bf16(gq[mt][nt], af[mt][s], bl[s]);
                                mma_bf16(gq[mt][nt], af[mt][s], bh[s]);
                            } else {
                                mma_bf16(p[mt][nt], af[mt][s], bl[s]);
                                mma_bf16(p[mt][nt], af[mt][s], bh[s]);
                            }
                        }
                }
                if (MLX && c == cu + cpu - 1) { // the unit (group) ends: scale and bias
#pragma unroll
                    for (int mt = 0; mt < MM_MT; mt++)
#pragma unroll
                        for (int nt = 0; nt < NTL; nt++)
#pragma unroll
                            for (int i = 0; i < 4; i++) {
                                p[mt][nt][i] =
                                    __fmaf_rn(us[mt][i >> 1], gq[mt][nt][i], p[mt][nt][i]);
                                p[mt][nt][i] =
                                    __fmaf_rn(ub[mt][i >> 1], sx[nt][i & 1], p[mt][nt][i]);
                            }
                }
            }
        }
        // slice partials, added in slice order
        if (cb < ce) {
#pragma unroll
            for (int mt = 0; mt < MM_MT; mt++)
#pragma unroll
                for (int nt = 0; nt < NTL; nt++)
#pragma unroll
                    for (int i = 0; i < 4; i++) {
                        float *sp = &s_p[warp][((mt * NTL + nt) * 32 + lane) * 4 + i];
                        *sp = SPW == 2 ? __fadd_rn(*sp, p[mt][nt][i]) : p[mt][nt][i];
                    }
        }
        __syncthreads();
        constexpr int PER_MT = NTL * 128;
        float *out = pick3(ji, a.out[0], a.out[1], a.out[2]);
        for (int e = tid; e < (EPI == LP_CUDA_EPI_SWIGLU ? 1 : MM_MT) * PER_MT; e += THREADS) {
            const int mt = e / PER_MT, rem = e % PER_MT, nt = rem / 128, ln = (rem % 128) / 4,
                      i = rem % 4;
            const int r = rbase + 16 * mt + (ln >> 2) + (i >> 1) * 8;
            const int tok = t0 + 8 * nt + 2 * (ln & 3) + (i & 1);
            const float v = mm_merge<NTL, PAIR>(s_p[0] + e, MM_MT * NTL * 128, n_sl);
            if (EPI == LP_CUDA_EPI_SWIGLU) {
                const float u = mm_merge<NTL, PAIR>(s_p[0] + e + PER_MT, MM_MT * NTL * 128, n_sl);
                if (r < rows && tok < a.n)
                    out[(size_t)tok * rows + r] =
                        __fmul_rn(__fdiv_rn(v, __fadd_rn(1.0f, expf(-v))), u);
            } else if (r < rows && tok < a.n) {
                float *o = out + (size_t)tok * rows + r;
                *o = EPI == LP_CUDA_EPI_ACCUM ? __fadd_rn(*o, v) : v;
            }
        }
        __syncthreads(); // s_p (and s_inv) are the next tile's
        tl = nx;
    }
}

// Lays out the block-rows of the jobs (bp0) for NTL's m-tiles and launches.
template <int FMT, int CW, int EPI, int NTL, bool PAIR>
static cudaError_t mm_launch_ntl(cudaStream_t s, bool pdl, struct mm_args &a, int n_w,
                                 int n_sm) {
    constexpr int ROWS = 16 * mm_mt<NTL, EPI>::n;
    int n_bp = 0;
    if (EPI == LP_CUDA_EPI_SWIGLU) {
        n_bp = (a.w[0].rows + 15) / 16;
    } else {
        for (int j = 0; j < n_w; j++) {
            a.bp0[j] = n_bp;
            n_bp += (a.w[j].rows + ROWS - 1) / ROWS;
        }
        a.bp0[n_w] = n_bp;
    }
    a.n_tg = (a.n + 8 * NTL - 1) / (8 * NTL);
    a.n_bp = n_bp;
    // blocks a multiprocessor holds at once: two of the 8-token kernels
    // (their launch bounds), one of the wider ones
    const long tiles = (long)a.n_tg * n_bp,
               cap = n_sm > 0 ? (long)n_sm * (NTL == 1 && !PAIR ? 2 : 1) : tiles;
    const unsigned grid = (unsigned)(tiles < cap ? tiles : cap);
    if (NTL > 1) { // x made ready once first
        a.n_pad = a.n_tg * 8 * NTL;
        uint32_t *xw = (uint32_t *)a.xw;
        float *xsum = (float *)(xw + (size_t)a.n_pad * a.cols);
        a.xsum = xsum;
        LP_LAUNCH_PDL(pdl, (unsigned)a.n_pad, MM_THREADS, s, (a, xw, xsum), k_mm_prep<FMT, CW>);
        cudaError_t e = cudaGetLastError();
        if (e != cudaSuccess) return e;
    }
    LP_LAUNCH_PDL(pdl, grid, (mm_threads<NTL, PAIR>::n), s, (a), k_mm<FMT, CW, NTL, EPI, PAIR>);
    return cudaGetLastError();
}

// ---- Past 8 tokens: k_mmt, shared-memory tiles over the columns in order ----
//
// A block (8 warps: 4 along the rows, 2 along the tokens) owns a tile of
// LP_CUDA_MMT_BM weight rows (SWIGLU: 64 of the gate and the same 64 of up)
// by LP_CUDA_MMT_BN tokens and walks its chunks in order, G::NS - 1
// chunks ahead: each chunk's weight bytes and its tokens' B words (made
// by k_mm_prep) copied into shared memory without registers (cp.async), the
// weights of the first chunks before the wait for the previous kernel. A
// warp owns 32 rows (two m-tiles; SWIGLU: 16 gate rows and the same 16 of
// up) by 8 MMT_NT tokens (MMT_NT n-tiles) and keeps, per element, the running
// values of the arithmetic above: the group's G (MLX), the slice's P, the
// first of a pair (PAIR) and the total, so every element gets exactly the
// 8-token kernel's operations in its order. Two blocks fit a multiprocessor
// (128 registers a thread, at most ~110 KB of shared memory). A matrix of few tiles splits its
// slices over n_split blocks (an even number of slices each): each writes
// its pair sums Q_k to the scratch, and the last to finish (a counter a
// tile) adds Q_0 .. Q_7 in order and applies the epilogue.
#define MMT_WM 4 // warps along the rows
#define MMT_NT 2 // n-tiles (8 tokens) a warp

template <int FMT, int CW> struct mmt_geom {
    static constexpr int BITS = mm_bits<FMT>::n;
    static constexpr int A_BYTES = CW * BITS / 8; // a row's bytes of one chunk
    // bf16 rows padded by 16 bytes: a warp's 32-byte reads of 8 rows then
    // fall in distinct banks (the others are conflict-free unpadded)
    static constexpr int A_ROW = A_BYTES + (FMT == LP_CUDA_FMT_BF16 ? 16 : 0);
    static constexpr int A_STAGE = LP_CUDA_MMT_BM * A_ROW;
    static constexpr int B_STAGE = LP_CUDA_MMT_BN * CW * 4;
    static constexpr int S_STAGE = FMT == LP_CUDA_FMT_BF16 ? 0 : LP_CUDA_MMT_BN * 4; // x sums
    static constexpr int STAGE = A_STAGE + B_STAGE + S_STAGE;
    // then, per warp, the first of a pair and the total of its 32 x 32 elements
    // stages: 4 (bf16, with its wider rows, 3), so that two blocks fit a multiprocessor
    static constexpr int NS = FMT == LP_CUDA_FMT_BF16 ? 3 : 4;
    static constexpr int SMEM = NS * STAGE + MM_WARPS * 2 * 32 * (2 * MMT_NT * 4) * 4;
};

// The first chunk of slice s (of n_sl over n_units units of cpu chunks).
static __device__ __forceinline__ int mmt_slice_chunk(int s, int n_units, int n_sl, int cpu) {
    return s * n_units / n_sl * cpu;
}

// W words of a lane's row from shared memory (4 W bytes, aligned to them).
template <int N>
static __device__ __forceinline__ void lds_words(const unsigned char *p, uint32_t (&w)[N]) {
    if (N >= 4) {
#pragma unroll
        for (int k = 0; k < N; k += 4) {
            const uint4 r = ((const uint4 *)p)[k / 4];
            w[k] = r.x, w[k + 1] = r.y, w[k + 2] = r.z, w[k + 3] = r.w;
        }
    } else if (N == 2) {
        const uint2 r = *(const uint2 *)p;
        w[0] = r.x, w[1 % N] = r.y;
    } else {
        w[0] = *(const uint32_t *)p;
    }
}

// The tile's matrix (job), rows and first row.
struct mmt_tile {
    int ji, rows, rbase;
};

// A thread's share of a stage's copies, their sources worked out once a
// tile: chunk c's weight bytes of the tile's rows (clamped to the matrix),
// then its tokens' B words and, MLX, its unit's x sums.
template <int FMT, int CW, int EPI> struct mmt_src {
    typedef mmt_geom<FMT, CW> G;
    static constexpr int SEGS = G::A_BYTES / 16, NA = LP_CUDA_MMT_BM * SEGS;
    static constexpr int KA = (NA + MM_THREADS - 1) / MM_THREADS;
    static constexpr int QB = CW / 16 * 32, NB = LP_CUDA_MMT_BN / 8 * QB, KB = NB / MM_THREADS;
    const char *a_src[KA];
    int a_dst[KA];
    const uint4 *b_src[KB];
    const float *s_src;
    __device__ __forceinline__ mmt_src(const struct mm_args &a, const mmt_tile &tl, int t0,
                                       int tid) {
        constexpr bool SW = EPI == LP_CUDA_EPI_SWIGLU;
        const size_t row_bytes = (size_t)a.cols * G::BITS / 8;
#pragma unroll
        for (int k = 0; k < KA; k++) {
            const int i = k * MM_THREADS + tid < NA ? k * MM_THREADS + tid : NA - 1;
            const int r = i / SEGS, sg = i % SEGS;
            const int j = SW ? r / (LP_CUDA_MMT_BM / 2) : tl.ji;
            int row = tl.rbase + (SW ? r % (LP_CUDA_MMT_BM / 2) : r);
            row = row < tl.rows ? row : tl.rows - 1;
            a_src[k] = (const char *)pick3(j, a.w[0].data, a.w[1].data, a.w[2].data) +
                       (size_t)row * row_bytes + (size_t)sg * 16;
            a_dst[k] = r * G::A_ROW + sg * 16;
        }
        const int n_chunks = a.cols / CW;
#pragma unroll
        for (int k = 0; k < KB; k++) {
            const int i = k * MM_THREADS + tid, q = i / QB;
            b_src[k] = mm_xw_at(a.xw, t0 / 8 + q, 0, n_chunks, CW / 16, 0) + i % QB;
        }
        s_src = a.xsum + t0 + 4 * (tid % (LP_CUDA_MMT_BN / 4));
    }
    __device__ __forceinline__ void load_a(unsigned char *st, int c, int tid) const {
#pragma unroll
        for (int k = 0; k < KA; k++)
            if (NA % MM_THREADS == 0 || k * MM_THREADS + tid < NA)
                cp_async16(st + a_dst[k], a_src[k] + (size_t)c * G::A_BYTES);
    }
    __device__ __forceinline__ void load_b(const struct mm_args &a, unsigned char *st, int c,
                                           int cpu, int tid) const {
        uint4 *dst = (uint4 *)(st + G::A_STAGE);
#pragma unroll
        for (int k = 0; k < KB; k++)
            cp_async16(dst + k * MM_THREADS + tid, b_src[k] + (size_t)c * QB);
        if (FMT != LP_CUDA_FMT_BF16 && tid < LP_CUDA_MMT_BN / 4)
            cp_async16(st + G::A_STAGE + G::B_STAGE + tid * 16, s_src + (size_t)(c / cpu) * a.n_pad);
    }
};

// The scale and bias words of the lane's rows for unit u (MLX).
template <int EPI>
static __device__ __forceinline__ void mmt_unit_sb(const struct mm_args &a, int ji,
                                                   const int (&rr)[2][2], int u,
                                                   uint32_t (&sc)[2][2], uint32_t (&bi)[2][2]) {
    const int gpr = a.cols / a.w[0].group;
#pragma unroll
    for (int mt = 0; mt < 2; mt++) {
        const int j = EPI == LP_CUDA_EPI_SWIGLU ? mt : ji;
        const uint16_t *s = pick3(j, a.w[0].scales, a.w[1].scales, a.w[2].scales);
        const uint16_t *b = pick3(j, a.w[0].biases, a.w[1].biases, a.w[2].biases);
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int64_t at = (int64_t)rr[mt][h] * gpr + u;
            sc[mt][h] = __ldg(s + at);
            bi[mt][h] = __ldg(b + at);
        }
    }
}

template <int FMT, int CW, int EPI, bool PAIR>
static __global__ void __launch_bounds__(MM_THREADS, 2)
    k_mmt(struct mm_args a, int n_split, float *part, int *cnt) {
    typedef mmt_geom<FMT, CW> G;
    constexpr bool MLX = FMT != LP_CUDA_FMT_BF16, SW = EPI == LP_CUDA_EPI_SWIGLU;
    constexpr int STEPS = CW / 16, XE = CW / 4, W = XE * G::BITS / 32, NT = MMT_NT;
    constexpr int TILE = LP_CUDA_MMT_BM * LP_CUDA_MMT_BN; // a tile's elements
    LP_DYN_SMEM(smem, G::SMEM);
    griddep_launch_dependents();
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane >> 2, t = lane & 3;
    const int wm = warp % MMT_WM, wn = warp / MMT_WM;
    const int group = a.w[0].group;
    const int unit = MLX ? (group > CW ? group : CW) : CW, cpu = unit / CW;
    const int n_units = a.cols / unit, n_sl = PAIR ? 16 : n_units < 8 ? n_units : 8;
    // the tile: token group fastest, then the split, then the block-row
    const int tg = (int)blockIdx.x % a.n_tg, z = (int)blockIdx.x / a.n_tg % n_split,
              bp = (int)blockIdx.x / a.n_tg / n_split;
    const int t0 = tg * LP_CUDA_MMT_BN, tile_id = bp * a.n_tg + tg;
    mmt_tile tl;
    tl.ji = 0;
    if (!SW) {
        if (a.n_jobs > 1 && bp >= a.bp0[1]) tl.ji = 1;
        if (a.n_jobs > 2 && bp >= a.bp0[2]) tl.ji = 2;
    }
    tl.rows = pick3(tl.ji, a.w[0].rows, a.w[1].rows, a.w[2].rows);
    tl.rbase = SW ? bp * (LP_CUDA_MMT_BM / 2) : (bp - a.bp0[tl.ji]) * LP_CUDA_MMT_BM;
    // the lane's rows: shared-memory row and matrix row of (m-tile, half)
    int sr[2][2], rr[2][2];
#pragma unroll
    for (int mt = 0; mt < 2; mt++)
#pragma unroll
        for (int h = 0; h < 2; h++) {
            sr[mt][h] = (SW ? mt * (LP_CUDA_MMT_BM / 2) + 16 * wm : 32 * wm + 16 * mt) + g + 8 * h;
            const int r = tl.rbase + (SW ? 16 * wm : 32 * wm + 16 * mt) + g + 8 * h;
            rr[mt][h] = r < tl.rows ? r : tl.rows - 1;
        }
    // this block's slices [s0, s1) and their chunks [cb, ce)
    const int s0 = z * n_sl / n_split, s1 = (z + 1) * n_sl / n_split;
    const int cb = mmt_slice_chunk(s0, n_units, n_sl, cpu), ce = mmt_slice_chunk(s1, n_units, n_sl, cpu);
    const int nch = ce - cb;
    const mmt_src<FMT, CW, EPI> src(a, tl, t0, tid);
    // the weights are no kernel's output: the first chunks' before the wait
#pragma unroll
    for (int k = 0; k < G::NS - 1; k++)
        if (k < nch) src.load_a(smem + k * G::STAGE, cb + k, tid);
    uint32_t nsc[2][2] = {}, nbi[2][2] = {}; // the next unit's scale and bias words
    if (MLX) mmt_unit_sb<EPI>(a, tl.ji, rr, cb / cpu, nsc, nbi);
    griddep_wait();
#pragma unroll
    for (int k = 0; k < G::NS - 1; k++) {
        if (k < nch) src.load_b(a, smem + k * G::STAGE, cb + k, cpu, tid);
        cp_async_commit();
    }
    float gq[2][NT][4], p[2][NT][4];
    zero3(gq);
    zero3(p);
    // the first of a pair and the total, touched only as slices end, live in
    // shared memory (registers go to keeping loads in flight): a warp's
    // elements lane-major after the stages
    float *pf = (float *)(smem + G::NS * G::STAGE) + warp * 2 * 32 * (2 * NT * 4);
    float *tot = pf + 32 * (2 * NT * 4);
    float us[2][2] = {}, ub[2][2] = {};
    const bool sbf = a.w[0].scale_bf16;
    int s = s0, s_end = mmt_slice_chunk(s0 + 1, n_units, n_sl, cpu);
    float *tpart = part + (size_t)tile_id * 8 * TILE; // this tile's pair sums (split)
    for (int i = 0; i < nch; i++) {
        const int c = cb + i;
        cp_async_wait<G::NS - 2>();
        __syncthreads(); // chunk c is here; the stage of chunk c - 1 is free
        {
            const int k = i + G::NS - 1;
            unsigned char *st = smem + (k % G::NS) * G::STAGE;
            if (k < nch) {
                src.load_a(st, cb + k, tid);
                src.load_b(a, st, cb + k, cpu, tid);
            }
            cp_async_commit();
        }
        const unsigned char *st = smem + (i % G::NS) * G::STAGE;
        if (MLX && c % cpu == 0) { // a unit starts: its scales, and the next unit's asked for
#pragma unroll
            for (int mt = 0; mt < 2; mt++)
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    us[mt][h] = __fmul_rn(sbf ? bf16_bits(nsc[mt][h]) : f16_bits(nsc[mt][h]), 128.0f);
                    ub[mt][h] = sbf ? bf16_bits(nbi[mt][h]) : f16_bits(nbi[mt][h]);
                }
            if (c + cpu < ce) mmt_unit_sb<EPI>(a, tl.ji, rr, c / cpu + 1, nsc, nbi);
        }
        uint32_t af[2][STEPS][4];
#pragma unroll
        for (int mt = 0; mt < 2; mt++)
#pragma unroll
            for (int h = 0; h < 2; h++) {
                uint32_t rw[W];
                lds_words<W>(st + sr[mt][h] * G::A_ROW + t * XE * G::BITS / 8, rw);
#pragma unroll
                for (int k = 0; k < STEPS; k++)
                    a_pair<FMT>(rw, k, af[mt][k][h], af[mt][k][h + 2]);
            }
        const uint4 *bs = (const uint4 *)(st + G::A_STAGE);
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int k = 0; k < STEPS; k++) {
                const uint4 v = bs[((wn * NT + nt) * STEPS + k) * 32 + lane];
                const uint32_t bh[2] = {v.x, v.y}, bl[2] = {v.z, v.w};
#pragma unroll
                for (int mt = 0; mt < 2; mt++) {
                    if (MLX) {
                        mma_bf16(gq[mt][nt], af[mt][k], bl);
                        mma_bf16(gq[mt][nt], af[mt][k], bh);
                    } else {
                        mma_bf16(p[mt][nt], af[mt][k], bl);
                        mma_bf16(p[mt][nt], af[mt][k], bh);
                    }
                }
            }
        if (MLX && (c + 1) % cpu == 0) { // the unit ends: scale and bias
            const float *xs = (const float *)(st + G::A_STAGE + G::B_STAGE);
#pragma unroll
            for (int nt = 0; nt < NT; nt++) {
                const float sx[2] = {xs[8 * (wn * NT + nt) + 2 * t], xs[8 * (wn * NT + nt) + 2 * t + 1]};
#pragma unroll
                for (int mt = 0; mt < 2; mt++)
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        p[mt][nt][e] = __fmaf_rn(us[mt][e >> 1], gq[mt][nt][e], p[mt][nt][e]);
                        p[mt][nt][e] = __fmaf_rn(ub[mt][e >> 1], sx[e & 1], p[mt][nt][e]);
                        gq[mt][nt][e] = 0.0f;
                    }
            }
        }
        if (c + 1 == s_end) { // slice s ends: into the total (PAIR: by pairs)
            float *pv = &p[0][0][0]; // element i (of the warp's 2 NT 4) at i * 32 + lane
#pragma unroll
            for (int i = 0; i < 2 * NT * 4; i++) {
                const float v = pv[i];
                const int at = i * 32 + lane;
                pv[i] = 0.0f;
                if (PAIR && s % 2 == 0) {
                    pf[at] = v;
                    continue;
                }
                const float q = PAIR ? __fadd_rn(pf[at], v) : v;
                if (n_split > 1)
                    tpart[(size_t)(s / 2) * TILE + warp * (2 * NT * 4 * 32) + at] = q;
                else
                    tot[at] = s == (PAIR ? 1 : 0) ? q : __fadd_rn(tot[at], q);
            }
            s++;
            s_end = mmt_slice_chunk(s + 1, n_units, n_sl, cpu);
        }
    }
    if (n_split > 1) { // the last block of the tile adds the 8 pair sums in order
        __shared__ int s_last;
        __threadfence();
        __syncthreads();
        if (tid == 0) s_last = atomicAdd(cnt + tile_id, 1) == n_split - 1;
        __syncthreads();
        if (!s_last) return;
        __threadfence();
#pragma unroll
        for (int i = 0; i < 2 * NT * 4; i++) {
            const float *q = tpart + warp * (2 * NT * 4 * 32) + i * 32 + lane;
            float v = __ldcg(q);
            for (int k = 1; k < 8; k++)
                v = __fadd_rn(v, __ldcg(q + (size_t)k * TILE));
            tot[i * 32 + lane] = v;
        }
        if (tid == 0) cnt[tile_id] = 0; // for the next call
    }
    float *out = pick3(tl.ji, a.out[0], a.out[1], a.out[2]);
#pragma unroll
    for (int nt = 0; nt < NT; nt++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int tok = t0 + 8 * (wn * NT + nt) + 2 * t + (e & 1);
            if (tok >= a.n) continue;
#pragma unroll
            for (int mt = 0; mt < (SW ? 1 : 2); mt++) {
                const int r = tl.rbase + (SW ? 16 * wm : 32 * wm + 16 * mt) + g + 8 * (e >> 1);
                if (r >= tl.rows) continue;
                float *o = out + (size_t)tok * tl.rows + r;
                const float v = tot[((mt * NT + nt) * 4 + e) * 32 + lane];
                if (SW) {
                    const float u = tot[((NT + nt) * 4 + e) * 32 + lane];
                    *o = __fmul_rn(__fdiv_rn(v, __fadd_rn(1.0f, expf(-v))), u);
                } else {
                    *o = EPI == LP_CUDA_EPI_ACCUM ? __fadd_rn(*o, v) : v;
                }
            }
        }
}

// Past 8 tokens: x made ready once (k_mm_prep), then the tiles.
template <int FMT, int CW, int EPI, bool PAIR>
static cudaError_t mmt_launch(cudaStream_t s, bool pdl, struct mm_args &a, int n_w,
                              const struct lp_cuda_mm_plan &pl, void *scratch) {
    typedef mmt_geom<FMT, CW> G;
    if (EPI != LP_CUDA_EPI_SWIGLU) {
        int n_bp = 0;
        for (int j = 0; j < n_w; j++) {
            a.bp0[j] = n_bp;
            n_bp += (a.w[j].rows + LP_CUDA_MMT_BM - 1) / LP_CUDA_MMT_BM;
        }
        a.bp0[n_w] = n_bp;
    }
    a.n_tg = pl.n_tg;
    a.n_bp = pl.n_bp;
    a.n_pad = pl.n_pad;
    unsigned char *sc = (unsigned char *)scratch;
    uint32_t *xw = (uint32_t *)(sc + pl.xw_off);
    float *xsum = (float *)(sc + pl.xsum_off);
    a.xw = xw;
    a.xsum = xsum;
    LP_LAUNCH_PDL(pdl, (unsigned)a.n_pad, MM_THREADS, s, (a, xw, xsum), k_mm_prep<FMT, CW>);
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return e;
    // the shared memory past 48 KiB, asked for once a device (a host call per
    // launch would count in every step that is not a replayed graph)
    static std::atomic<unsigned> smem_set{0};
    int dev = 0;
    if ((e = cudaGetDevice(&dev)) != cudaSuccess) return e;
    const unsigned bit = dev < 32 ? 1u << dev : 0u;
    if (!bit || !(smem_set.load(std::memory_order_relaxed) & bit)) {
        e = cudaFuncSetAttribute(k_mmt<FMT, CW, EPI, PAIR>,
                                 cudaFuncAttributeMaxDynamicSharedMemorySize, G::SMEM);
        if (e != cudaSuccess) return e;
        smem_set.fetch_or(bit, std::memory_order_relaxed);
    }
    const unsigned grid = (unsigned)((long)pl.n_tg * pl.n_bp * pl.n_split);
    LP_LAUNCH_PDL_SMEM(pdl, grid, MM_THREADS, (size_t)G::SMEM, s,
                       (a, pl.n_split, (float *)(sc + pl.part_off), (int *)sc),
                       k_mmt<FMT, CW, EPI, PAIR>);
    return cudaGetLastError();
}

// Up to 8 tokens k_mm's 8-token kernel; up to LP_CUDA_MMT_MIN_TOKENS - 1
// its 32-token one after k_mm_prep (the decode batches: measured faster
// there than k_mmt, whose few tiles leave the multiprocessors short of
// work); from there k_mmt. The same bits from all three.
template <int FMT, int CW, int EPI>
static cudaError_t mm_launch(cudaStream_t s, bool pdl, struct mm_args &a, int n_w, int n_sm,
                             void *scratch) {
    const struct lp_cuda_weight *ws[3] = {&a.w[0], &a.w[1], &a.w[2]};
    const struct lp_cuda_mm_plan pl = lp_cuda_mm_plan(EPI, ws, n_w, a.n, n_sm);
    if (a.n >= LP_CUDA_MMT_MIN_TOKENS)
        return pl.pair ? mmt_launch<FMT, CW, EPI, true>(s, pdl, a, n_w, pl, scratch)
                       : mmt_launch<FMT, CW, EPI, false>(s, pdl, a, n_w, pl, scratch);
    if (a.n > 8) {
        a.xw = (const uint32_t *)((unsigned char *)scratch + pl.xw_off);
        return pl.pair ? mm_launch_ntl<FMT, CW, EPI, 4, true>(s, pdl, a, n_w, n_sm)
                       : mm_launch_ntl<FMT, CW, EPI, 4, false>(s, pdl, a, n_w, n_sm);
    }
    return pl.pair ? mm_launch_ntl<FMT, CW, EPI, 1, true>(s, pdl, a, n_w, n_sm)
                   : mm_launch_ntl<FMT, CW, EPI, 1, false>(s, pdl, a, n_w, n_sm);
}

template <int EPI>
static cudaError_t mm_dispatch(cudaStream_t s, bool pdl, struct mm_args &a, int n_w, int n_sm,
                               void *scratch) {
    const struct lp_cuda_weight *w = &a.w[0];
    switch (w->fmt) {
    case LP_CUDA_FMT_BF16:
        return mm_launch<LP_CUDA_FMT_BF16, 64, EPI>(s, pdl, a, n_w, n_sm, scratch);
    case LP_CUDA_FMT_Q8:
        return w->group == 32 ? mm_launch<LP_CUDA_FMT_Q8, 32, EPI>(s, pdl, a, n_w, n_sm, scratch)
                              : mm_launch<LP_CUDA_FMT_Q8, 64, EPI>(s, pdl, a, n_w, n_sm, scratch);
    case LP_CUDA_FMT_Q4:
        return w->group == 32 ? mm_launch<LP_CUDA_FMT_Q4, 32, EPI>(s, pdl, a, n_w, n_sm, scratch)
                              : mm_launch<LP_CUDA_FMT_Q4, 64, EPI>(s, pdl, a, n_w, n_sm, scratch);
    default:
        return cudaErrorInvalidValue;
    }
}

cudaError_t lp_cuda_mm(cudaStream_t s, bool pdl, int epi, const float *x,
                       const struct lp_cuda_weight *const *ws, float *const *outs, int n_w, int n,
                       const float *norm_w, float *norm_out, float eps, int n_sm, void *scratch) {
    if (n <= 0) return cudaSuccess;
    if (n_w < 1 || n_w > 3 || (epi == LP_CUDA_EPI_SWIGLU && n_w != 2) || (n > 8 && !scratch))
        return cudaErrorInvalidValue;
    struct mm_args a = {};
    a.xw = (const uint32_t *)scratch;
    a.x = x;
    a.n = n;
    a.cols = ws[0]->cols;
    a.n_jobs = epi == LP_CUDA_EPI_SWIGLU ? 1 : n_w;
    a.norm = norm_w != NULL;
    a.norm_w = norm_w;
    a.norm_out = norm_out;
    a.eps = eps;
    for (int j = 0; j < n_w; j++) {
        const struct lp_cuda_weight *w = ws[j];
        if (!lp_cuda_mm_ok(w) || w->fmt != ws[0]->fmt || w->cols != ws[0]->cols ||
            w->group != ws[0]->group || w->scale_bf16 != ws[0]->scale_bf16)
            return cudaErrorInvalidValue;
        a.w[j] = *w;
        a.out[j] = outs[j];
    }
    if (epi == LP_CUDA_EPI_SWIGLU && ws[1]->rows != ws[0]->rows) return cudaErrorInvalidValue;
    switch (epi) {
    case LP_CUDA_EPI_STORE:
        return mm_dispatch<LP_CUDA_EPI_STORE>(s, pdl, a, n_w, n_sm, scratch);
    case LP_CUDA_EPI_ACCUM:
        return mm_dispatch<LP_CUDA_EPI_ACCUM>(s, pdl, a, n_w, n_sm, scratch);
    case LP_CUDA_EPI_SWIGLU:
        return mm_dispatch<LP_CUDA_EPI_SWIGLU>(s, pdl, a, n_w, n_sm, scratch);
    }
    return cudaErrorInvalidValue;
}
