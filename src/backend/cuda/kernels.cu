// SPDX-License-Identifier: MIT
// kernels.cu -- the CUDA backend's kernels, each computing what the scalar
// ref backend (src/backend/ref/ref.c) computes, and their launchers.
// Activations are float32 row-major; weights stay in their stored format and
// are dequantized in registers as they are loaded. Float results differ from
// ref only by summation order (tree reductions, a different split of the
// columns); elementwise steps use explicit _rn intrinsics so that no
// multiply-add is fused where ref rounds twice.
//
// matmul on CUDA cores (k_gemv), one kernel for every batch size (batch
// invariance: row t of an n-row call is computed by exactly the same
// operations as alone), for the formats and shapes the tensor-core kernels
// of matmul_tc.cu do not take (f32, f16, columns not a multiple of 64) and
// for LP_CUDA_NO_TC=1:
//   a block of 128 threads owns R (4; 2 for 4-bit) weight rows and NT (1, 2,
//   4, 8 or 16) tokens; thread i takes 16-byte chunks i, i + 128, ... of
//   each row, keeps a running sum per (row, token) in the same order
//   whatever NT is, then the block adds its four warps in a fixed order.
//   MLX groups: per chunk (inside one group) s * sum(x q) + b * sum(x), i.e.
//   sum_c x_c (s q_c + b) regrouped. The same kernel serves the fused slots
//   (up to three matrices a launch; epilogues: store, add into the output,
//   silu(gate) * up), so fused and separate steps give the same bits.
// attention: split over the KV length in fixed chunks, so that a row's result
//   depends on its own context only: k_attn_tile (one launch, GQA groups,
//   tiles of 64 positions, the splits merged by the last block; also takes a
//   decode batch's qk step), or for other head sizes k_attn + k_attn_combine.
// A decode layer is 5 launches: q/k/v (rmsnorm folded in), attention (q/k
//   norms, rope and the KV store folded in), o + residual, gate/up/silu
//   (rmsnorm folded in), down + residual; each may start while the one
//   before drains (programmatic dependent launch, device.h).
#include <math.h>

#include "backend/cuda/device.h"
#include "backend/cuda/internal.h"

#define GEMV_THREADS 128
// Weight rows a GEMV block owns: four (two loads of 16 bytes in flight per
// row pair), two for 4-bit (its 32-element chunks take the registers).
template <int FMT> struct gemv_rows { static constexpr int n = FMT == LP_CUDA_FMT_Q4 ? 2 : 4; };
#define WARPS(threads) ((threads) / 32)

// w[r][c] as float: the plain definition of every format (ref's lp_host_weight_at).
static __device__ float weight_at(const struct lp_cuda_weight &w, int64_t r, int64_t c) {
    int64_t i = r * w.cols + c;
    switch (w.fmt) {
    case LP_CUDA_FMT_F32:
        return ((const float *)w.data)[i];
    case LP_CUDA_FMT_F16:
        return f16_bits(((const uint16_t *)w.data)[i]);
    case LP_CUDA_FMT_BF16:
        return bf16_bits(((const uint16_t *)w.data)[i]);
    default: {
        int bits = w.fmt == LP_CUDA_FMT_Q8 ? 8 : 4, per_word = 32 / bits;
        int64_t words_per_row = w.cols / per_word;
        uint32_t word = ((const uint32_t *)w.data)[r * words_per_row + c / per_word];
        uint32_t q = (word >> ((c % per_word) * bits)) & ((1u << bits) - 1u);
        int64_t gi = r * (w.cols / w.group) + c / w.group;
        float s = half_at(w.scales, gi, w.scale_bf16), b = half_at(w.biases, gi, w.scale_bf16);
        return __fadd_rn(__fmul_rn(s, (float)q), b);
    }
    }
}

// Elements per 16-byte load of a row, per format.
template <int FMT> struct fmt_chunk;
template <> struct fmt_chunk<LP_CUDA_FMT_F32> { static constexpr int n = 4, bits = 32; };
template <> struct fmt_chunk<LP_CUDA_FMT_F16> { static constexpr int n = 8, bits = 16; };
template <> struct fmt_chunk<LP_CUDA_FMT_BF16> { static constexpr int n = 8, bits = 16; };
template <> struct fmt_chunk<LP_CUDA_FMT_Q8> { static constexpr int n = 16, bits = 8; };
template <> struct fmt_chunk<LP_CUDA_FMT_Q4> { static constexpr int n = 32, bits = 4; };

// The CH values of one 16-byte chunk (MLX: the integer codes, not yet scaled).
template <int FMT> static __device__ __forceinline__ void chunk_values(uint4 raw, float *v) {
    uint32_t word[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
    for (int j = 0; j < 4; j++) {
        if (FMT == LP_CUDA_FMT_F32) {
            v[j] = __uint_as_float(word[j]);
        } else if (FMT == LP_CUDA_FMT_BF16) {
            v[2 * j] = __uint_as_float(word[j] << 16);
            v[2 * j + 1] = __uint_as_float(word[j] & 0xffff0000u);
        } else if (FMT == LP_CUDA_FMT_F16) {
            v[2 * j] = f16_bits(word[j] & 0xffffu);
            v[2 * j + 1] = f16_bits(word[j] >> 16);
        } else if (FMT == LP_CUDA_FMT_Q8) {
#pragma unroll
            for (int b = 0; b < 4; b++)
                v[4 * j + b] = (float)((word[j] >> (8 * b)) & 0xffu);
        } else {
#pragma unroll
            for (int b = 0; b < 8; b++)
                v[8 * j + b] = (float)((word[j] >> (4 * b)) & 0xfu);
        }
    }
}

// What the GEMV kernel does with a block's sums.
enum { EPI_STORE, EPI_ACCUM, EPI_SWIGLU };

// Up to three matrices of one format, width and scale type in one launch:
// job j owns row blocks [rb0[j], rb0[j + 1]). EPI_SWIGLU: job 0 is the gate,
// job 1 the up projection, and a block takes the same row of both.
struct gemv_jobs {
    struct lp_cuda_weight w[3];
    float *out[3];
    int rb0[3];
    int n_jobs;
};


// The block's R rows and NT tokens: out[t, r] = sum_c x[t, c] w[r, c],
// then the epilogue (store, add to out, or silu(gate) * up). Needs
// cols % CH == 0 (and group % CH == 0 for MLX).
template <int FMT, bool SBF, int NT, int EPI>
__global__ void __launch_bounds__(GEMV_THREADS)
    k_gemv(const float *__restrict__ x, struct gemv_jobs jobs, int n) {
    constexpr int CH = fmt_chunk<FMT>::n;
    constexpr bool MLX = FMT == LP_CUDA_FMT_Q8 || FMT == LP_CUDA_FMT_Q4;
    constexpr int GEMV_R = gemv_rows<FMT>::n;
    // rows of one matrix per block: SWIGLU takes RH rows of the gate, then the same of up
    constexpr int RH = EPI == EPI_SWIGLU ? GEMV_R / 2 : GEMV_R;
    const int n_tg = (n + NT - 1) / NT;
    const int t0 = (int)(blockIdx.x % n_tg) * NT;
    const int rb = (int)(blockIdx.x / n_tg);
    int ji = 0;
    if (EPI != EPI_SWIGLU) {
        if (jobs.n_jobs > 1 && rb >= jobs.rb0[1]) ji = 1;
        if (jobs.n_jobs > 2 && rb >= jobs.rb0[2]) ji = 2;
    }
    const int rows = pick3(ji, jobs.w[0].rows, jobs.w[1].rows, jobs.w[2].rows);
    const int r0 = (rb - pick3(ji, jobs.rb0[0], jobs.rb0[1], jobs.rb0[2])) * RH;
    const int cols = jobs.w[0].cols, n_chunks = cols / CH, group = jobs.w[0].group;
    const size_t row_bytes = (size_t)cols * fmt_chunk<FMT>::bits / 8;
    const int groups_per_row = MLX ? cols / group : 1;
    const uint4 *rowp[GEMV_R];
    const uint16_t *sc[GEMV_R], *bi[GEMV_R];
    int rr[GEMV_R];
#pragma unroll
    for (int r = 0; r < GEMV_R; r++) {
        const int j = EPI == EPI_SWIGLU ? r / RH : ji;
        rr[r] = min(r0 + r % RH, rows - 1);
        const void *data = pick3(j, jobs.w[0].data, jobs.w[1].data, jobs.w[2].data);
        rowp[r] = (const uint4 *)((const char *)data + (size_t)rr[r] * row_bytes);
        sc[r] = pick3(j, jobs.w[0].scales, jobs.w[1].scales, jobs.w[2].scales);
        bi[r] = pick3(j, jobs.w[0].biases, jobs.w[1].biases, jobs.w[2].biases);
    }
    float acc[GEMV_R][NT];
#pragma unroll
    for (int r = 0; r < GEMV_R; r++)
#pragma unroll
        for (int t = 0; t < NT; t++)
            acc[r][t] = 0.0f;

    for (int ch = threadIdx.x; ch < n_chunks; ch += GEMV_THREADS) {
        float wv[GEMV_R][CH];
        float s[GEMV_R], b[GEMV_R];
#pragma unroll
        for (int r = 0; r < GEMV_R; r++) {
            chunk_values<FMT>(__ldg(rowp[r] + ch), wv[r]);
            if (MLX) {
                int64_t gi = (int64_t)rr[r] * groups_per_row + (ch * CH) / group;
                s[r] = half_at(sc[r], gi, SBF);
                b[r] = half_at(bi[r], gi, SBF);
            }
        }
#pragma unroll
        for (int t = 0; t < NT; t++) {
            if (t0 + t >= n) break;
            const float4 *xp = (const float4 *)(x + (size_t)(t0 + t) * cols + (size_t)ch * CH);
            if (MLX) {
                float sx = 0.0f, dq[GEMV_R];
#pragma unroll
                for (int r = 0; r < GEMV_R; r++)
                    dq[r] = 0.0f;
#pragma unroll
                for (int i4 = 0; i4 < CH / 4; i4++) {
                    float4 xv = __ldg(xp + i4);
                    float xs[4] = {xv.x, xv.y, xv.z, xv.w};
#pragma unroll
                    for (int k = 0; k < 4; k++) {
                        sx = __fadd_rn(sx, xs[k]);
#pragma unroll
                        for (int r = 0; r < GEMV_R; r++)
                            dq[r] = __fmaf_rn(xs[k], wv[r][4 * i4 + k], dq[r]);
                    }
                }
#pragma unroll
                for (int r = 0; r < GEMV_R; r++)
                    acc[r][t] = __fadd_rn(acc[r][t], __fmaf_rn(s[r], dq[r], __fmul_rn(b[r], sx)));
            } else {
#pragma unroll
                for (int i4 = 0; i4 < CH / 4; i4++) {
                    float4 xv = __ldg(xp + i4);
                    float xs[4] = {xv.x, xv.y, xv.z, xv.w};
#pragma unroll
                    for (int k = 0; k < 4; k++)
#pragma unroll
                        for (int r = 0; r < GEMV_R; r++)
                            acc[r][t] = __fmaf_rn(xs[k], wv[r][4 * i4 + k], acc[r][t]);
                }
            }
        }
    }
    __shared__ float red[WARPS(GEMV_THREADS)][GEMV_R][NT];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
#pragma unroll
    for (int r = 0; r < GEMV_R; r++)
#pragma unroll
        for (int t = 0; t < NT; t++) {
            float v = warp_sum(acc[r][t]);
            if (lane == 0) red[warp][r][t] = v;
        }
    __syncthreads();
    float *out = pick3(ji, jobs.out[0], jobs.out[1], jobs.out[2]);
    if (EPI == EPI_SWIGLU) {
        if (threadIdx.x < RH * NT) {
            const int r = threadIdx.x / NT, t = threadIdx.x % NT;
            float g = red[0][r][t], u = red[0][r + RH][t];
            for (int k = 1; k < WARPS(GEMV_THREADS); k++) {
                g = __fadd_rn(g, red[k][r][t]);
                u = __fadd_rn(u, red[k][r + RH][t]);
            }
            if (r0 + r < rows && t0 + t < n)
                out[(size_t)(t0 + t) * rows + r0 + r] =
                    __fmul_rn(__fdiv_rn(g, __fadd_rn(1.0f, expf(-g))), u);
        }
    } else if (threadIdx.x < GEMV_R * NT) {
        const int r = threadIdx.x / NT, t = threadIdx.x % NT;
        float sum = red[0][r][t];
        for (int k = 1; k < WARPS(GEMV_THREADS); k++)
            sum = __fadd_rn(sum, red[k][r][t]);
        if (r0 + r < rows && t0 + t < n) {
            float *o = out + (size_t)(t0 + t) * rows + r0 + r;
            *o = EPI == EPI_ACCUM ? __fadd_rn(*o, sum) : sum;
        }
    }
}

// Any shape: one block per weight row, element by element (awkward column
// counts); accum: out += instead of out =.
__global__ void __launch_bounds__(GEMV_THREADS)
    k_gemv_generic(float *__restrict__ out, const float *__restrict__ x, struct lp_cuda_weight w,
                   int n, bool accum) {
    const int r = blockIdx.x;
    __shared__ float red[WARPS(GEMV_THREADS)];
    for (int t = 0; t < n; t++) {
        float acc = 0.0f;
        for (int c = threadIdx.x; c < w.cols; c += GEMV_THREADS)
            acc = __fmaf_rn(x[(size_t)t * w.cols + c], weight_at(w, r, c), acc);
        acc = warp_sum(acc);
        if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = acc;
        __syncthreads();
        if (threadIdx.x == 0) {
            float sum = red[0];
            for (int k = 1; k < WARPS(GEMV_THREADS); k++)
                sum = __fadd_rn(sum, red[k]);
            float *o = out + (size_t)t * w.rows + r;
            *o = accum ? __fadd_rn(*o, sum) : sum;
        }
        __syncthreads();
    }
}

template <int FMT, bool SBF, int NT, int EPI>
static cudaError_t gemv_launch_nt(cudaStream_t s, const float *x, const struct gemv_jobs *jobs,
                                  int n_rb, int n) {
    unsigned n_tg = (unsigned)((n + NT - 1) / NT);
    LP_LAUNCH(n_tg * (unsigned)n_rb, GEMV_THREADS, s, (x, *jobs, n), k_gemv<FMT, SBF, NT, EPI>);
    return cudaGetLastError();
}

// Lays the jobs' row blocks out (rb0) for FMT's rows per block and launches.
template <int FMT, bool SBF, int EPI>
static cudaError_t gemv_launch(cudaStream_t s, const float *x, struct gemv_jobs jobs, int n) {
    constexpr int RH = EPI == EPI_SWIGLU ? gemv_rows<FMT>::n / 2 : gemv_rows<FMT>::n;
    int n_rb = 0;
    for (int j = 0; j < (EPI == EPI_SWIGLU ? 1 : jobs.n_jobs); j++) {
        jobs.rb0[j] = n_rb;
        n_rb += (jobs.w[j].rows + RH - 1) / RH;
    }
    if (n <= 1) return gemv_launch_nt<FMT, SBF, 1, EPI>(s, x, &jobs, n_rb, n);
    if (n <= 2) return gemv_launch_nt<FMT, SBF, 2, EPI>(s, x, &jobs, n_rb, n);
    if (n <= 4) return gemv_launch_nt<FMT, SBF, 4, EPI>(s, x, &jobs, n_rb, n);
    if (n <= 8) return gemv_launch_nt<FMT, SBF, 8, EPI>(s, x, &jobs, n_rb, n);
    return gemv_launch_nt<FMT, SBF, 16, EPI>(s, x, &jobs, n_rb, n);
}

template <int EPI>
static cudaError_t gemv_dispatch(cudaStream_t s, const float *x, const struct gemv_jobs *jobs,
                                 int n) {
    const struct lp_cuda_weight *w = &jobs->w[0];
    switch (w->fmt) {
    case LP_CUDA_FMT_F32:
        return gemv_launch<LP_CUDA_FMT_F32, false, EPI>(s, x, *jobs, n);
    case LP_CUDA_FMT_F16:
        return gemv_launch<LP_CUDA_FMT_F16, false, EPI>(s, x, *jobs, n);
    case LP_CUDA_FMT_BF16:
        return gemv_launch<LP_CUDA_FMT_BF16, false, EPI>(s, x, *jobs, n);
    case LP_CUDA_FMT_Q8:
        return w->scale_bf16 ? gemv_launch<LP_CUDA_FMT_Q8, true, EPI>(s, x, *jobs, n)
                             : gemv_launch<LP_CUDA_FMT_Q8, false, EPI>(s, x, *jobs, n);
    case LP_CUDA_FMT_Q4:
        return w->scale_bf16 ? gemv_launch<LP_CUDA_FMT_Q4, true, EPI>(s, x, *jobs, n)
                             : gemv_launch<LP_CUDA_FMT_Q4, false, EPI>(s, x, *jobs, n);
    }
    return cudaErrorInvalidValue;
}

static int fmt_ch(enum lp_cuda_fmt f) {
    switch (f) {
    case LP_CUDA_FMT_F32:
        return 4;
    case LP_CUDA_FMT_F16:
    case LP_CUDA_FMT_BF16:
        return 8;
    case LP_CUDA_FMT_Q8:
        return 16;
    default:
        return 32;
    }
}

// The 16-byte chunk kernel applies to w (else the element-wise one).
static bool gemv_vec(const struct lp_cuda_weight *w, const float *x) {
    bool mlx = w->fmt == LP_CUDA_FMT_Q8 || w->fmt == LP_CUDA_FMT_Q4;
    int ch = fmt_ch(w->fmt);
    return w->cols % ch == 0 && (!mlx || w->group % ch == 0) && ((uintptr_t)w->data % 16) == 0 &&
           ((uintptr_t)x % 16) == 0;
}

// a and b can share one launch.
static bool gemv_same(const struct lp_cuda_weight *a, const struct lp_cuda_weight *b) {
    return a->fmt == b->fmt && a->cols == b->cols && a->scale_bf16 == b->scale_bf16 &&
           a->group == b->group;
}

static cudaError_t gemv_one(cudaStream_t s, float *out, const float *x,
                            const struct lp_cuda_weight *w, int n, bool accum) {
    if (!gemv_vec(w, x)) {
        LP_LAUNCH((unsigned)w->rows, GEMV_THREADS, s, (out, x, *w, n, accum), k_gemv_generic);
        return cudaGetLastError();
    }
    struct gemv_jobs jobs = {};
    jobs.w[0] = *w;
    jobs.out[0] = out;
    jobs.n_jobs = 1;
    return accum ? gemv_dispatch<EPI_ACCUM>(s, x, &jobs, n)
                 : gemv_dispatch<EPI_STORE>(s, x, &jobs, n);
}

cudaError_t lp_cuda_matmul(cudaStream_t s, float *out, const float *x,
                           const struct lp_cuda_weight *w, int n) {
    if (n <= 0) return cudaSuccess;
    return gemv_one(s, out, x, w, n, false);
}

cudaError_t lp_cuda_matmul_add(cudaStream_t s, float *y, const float *x,
                               const struct lp_cuda_weight *w, int n) {
    if (n <= 0) return cudaSuccess;
    return gemv_one(s, y, x, w, n, true);
}

cudaError_t lp_cuda_matmul_multi(cudaStream_t s, float *const *outs, const float *x,
                                 const struct lp_cuda_weight *const *ws, int n_w, int n) {
    if (n <= 0 || n_w <= 0) return cudaSuccess;
    bool one = n_w <= 3 && gemv_vec(ws[0], x);
    for (int j = 1; j < n_w && one; j++)
        one = gemv_same(ws[0], ws[j]);
    if (!one) {
        for (int j = 0; j < n_w; j++) {
            cudaError_t e = gemv_one(s, outs[j], x, ws[j], n, false);
            if (e != cudaSuccess) return e;
        }
        return cudaSuccess;
    }
    struct gemv_jobs jobs = {};
    for (int j = 0; j < n_w; j++) {
        jobs.w[j] = *ws[j];
        jobs.out[j] = outs[j];
    }
    jobs.n_jobs = n_w;
    return gemv_dispatch<EPI_STORE>(s, x, &jobs, n);
}

cudaError_t lp_cuda_matmul_swiglu(cudaStream_t s, float *out, float *tmp, const float *x,
                                  const struct lp_cuda_weight *w_gate,
                                  const struct lp_cuda_weight *w_up, int n) {
    if (n <= 0) return cudaSuccess;
    if (!gemv_vec(w_gate, x) || !gemv_same(w_gate, w_up) || w_gate->rows != w_up->rows) {
        cudaError_t e = gemv_one(s, out, x, w_gate, n, false);
        if (e == cudaSuccess) e = gemv_one(s, tmp, x, w_up, n, false);
        if (e == cudaSuccess) e = lp_cuda_silu_mul(s, out, out, tmp, (int64_t)n * w_gate->rows);
        return e;
    }
    struct gemv_jobs jobs = {};
    jobs.w[0] = *w_gate;
    jobs.w[1] = *w_up;
    jobs.out[0] = out;
    jobs.n_jobs = 2;
    return gemv_dispatch<EPI_SWIGLU>(s, x, &jobs, n);
}

// out[i, :] = w[ids[i], :] (dequantized); an id outside [0, rows) gives zeros.
// Block (i, column block): 256 columns of row i.
__global__ void k_embed(float *out, struct lp_cuda_weight w, const int32_t *ids) {
    const int i = blockIdx.x;
    const int32_t id = ids[i];
    const int c = blockIdx.y * blockDim.x + threadIdx.x;
    if (c < w.cols)
        out[(size_t)i * w.cols + c] = (id >= 0 && id < w.rows) ? weight_at(w, id, c) : 0.0f;
}

cudaError_t lp_cuda_embed(cudaStream_t s, float *out, const struct lp_cuda_weight *w,
                          const int32_t *ids, int n) {
    if (n <= 0) return cudaSuccess;
    LP_LAUNCH(dim3((unsigned)n, (unsigned)((w->cols + 255) / 256)), 256, s, (out, *w, ids),
              k_embed);
    return cudaGetLastError();
}

// HF Qwen3RMSNorm: one warp per row, x * (1 / sqrt(mean(x^2) + eps)) * weight.
__global__ void k_rmsnorm(float *out, const float *x, const float *weight, int n_rows, int dim,
                          float eps) {
    const int row = blockIdx.x * 4 + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= n_rows) return;
    const float *xr = x + (size_t)row * dim;
    float ss = 0.0f;
    for (int i = lane; i < dim; i += 32)
        ss = __fmaf_rn(xr[i], xr[i], ss);
    ss = warp_sum(ss);
    const float inv = 1.0f / sqrtf(ss / (float)dim + eps);
    float *o = out + (size_t)row * dim;
    for (int i = lane; i < dim; i += 32)
        o[i] = __fmul_rn(__fmul_rn(xr[i], inv), weight[i]);
}

// The same for wide rows (the model width): a block of 256 threads per row,
// so that a lone row's loads are in flight together rather than one warp's
// 64 in turn (one warp took 27 us for a row of 2048 on an H200).
__global__ void __launch_bounds__(256)
    k_rmsnorm_wide(float *out, const float *x, const float *weight, int dim, float eps) {
    const int row = blockIdx.x, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const float *xr = x + (size_t)row * dim;
    float ss = 0.0f;
#pragma unroll 4
    for (int i = threadIdx.x; i < dim; i += 256)
        ss = __fmaf_rn(xr[i], xr[i], ss);
    ss = warp_sum(ss);
    __shared__ float part[8], total;
    if (lane == 0) part[warp] = ss;
    __syncthreads();
    if (threadIdx.x == 0) {
        float t = part[0];
        for (int k = 1; k < 8; k++)
            t = __fadd_rn(t, part[k]);
        total = t;
    }
    __syncthreads();
    const float inv = 1.0f / sqrtf(total / (float)dim + eps);
    float *o = out + (size_t)row * dim;
#pragma unroll 4
    for (int i = threadIdx.x; i < dim; i += 256)
        o[i] = __fmul_rn(__fmul_rn(xr[i], inv), weight[i]);
}

cudaError_t lp_cuda_rmsnorm(cudaStream_t s, float *out, const float *x, const float *weight,
                            int n_rows, int dim, float eps) {
    if (n_rows <= 0) return cudaSuccess;
    if (dim >= 512)
        LP_LAUNCH((unsigned)n_rows, 256, s, (out, x, weight, dim, eps), k_rmsnorm_wide);
    else
        LP_LAUNCH((unsigned)((n_rows + 3) / 4), 128, s, (out, x, weight, n_rows, dim, eps),
                  k_rmsnorm);
    return cudaGetLastError();
}

// HF rotate_half: [x1 cos - x2 sin, x2 cos + x1 sin] with angle pos * inv_freq[j]
// (inv_freq computed on the host exactly as ref does).
__global__ void k_rope(float *x, const int32_t *pos, const float *inv_freq, int n, int n_heads,
                       int head_dim) {
    const int half = head_dim / 2;
    const int64_t total = (int64_t)n * n_heads * half;
    const int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= total) return;
    const int j = (int)(idx % half);
    const int64_t ih = idx / half; // token * n_heads + head
    const int i = (int)(ih / n_heads);
    float *v = x + ih * head_dim;
    const float angle = __fmul_rn((float)pos[i], inv_freq[j]);
    const float c = cosf(angle), sn = sinf(angle);
    const float x1 = v[j], x2 = v[j + half];
    v[j] = __fsub_rn(__fmul_rn(x1, c), __fmul_rn(x2, sn));
    v[j + half] = __fadd_rn(__fmul_rn(x2, c), __fmul_rn(x1, sn));
}

cudaError_t lp_cuda_rope(cudaStream_t s, float *x, const int32_t *pos, const float *inv_freq, int n,
                         int n_heads, int head_dim) {
    int64_t total = (int64_t)n * n_heads * (head_dim / 2);
    if (total <= 0) return cudaSuccess;
    LP_LAUNCH((unsigned)((total + 255) / 256), 256, s, (x, pos, inv_freq, n, n_heads, head_dim),
              k_rope);
    return cudaGetLastError();
}

// The engine's five steps after q, k, v for one token a block (bit-identical
// to k_rmsnorm per head, k_rope, k_kv_store): a warp per head row of q then
// k normalizes it (q_norm / k_norm) and rotates it at pos[i]; then the
// block stores token i's k and v rows at slot[i].
// One head row xr[hd] in place, by one warp (lane = its lane): HF's q_norm /
// k_norm (rmsnorm with weight w), then rotate-half RoPE at position p; the
// operations of k_rmsnorm and k_rope, in their order. Also the prologue of
// the attention kernel that folds this step in (the same bits).
static __device__ __forceinline__ void norm_rope_row(float *xr, const float *w,
                                                     const float *inv_freq, float p, int hd,
                                                     float eps, int lane) {
    const int half = hd / 2;
    float ss = 0.0f;
    for (int d = lane; d < hd; d += 32)
        ss = __fmaf_rn(xr[d], xr[d], ss);
    ss = warp_sum(ss);
    const float inv = 1.0f / sqrtf(ss / (float)hd + eps);
    for (int d = lane; d < hd; d += 32)
        xr[d] = __fmul_rn(__fmul_rn(xr[d], inv), w[d]);
    __syncwarp();
    for (int j = lane; j < half; j += 32) {
        const float angle = __fmul_rn(p, inv_freq[j]);
        const float c = cosf(angle), sn = sinf(angle);
        const float x1 = xr[j], x2 = xr[j + half];
        xr[j] = __fsub_rn(__fmul_rn(x1, c), __fmul_rn(x2, sn));
        xr[j + half] = __fadd_rn(__fmul_rn(x2, c), __fmul_rn(x1, sn));
    }
    __syncwarp();
}

__global__ void k_qk_norm_rope_store(float *q, float *k, const float *v, const float *q_norm,
                                     const float *k_norm, const float *inv_freq, const int32_t *pos,
                                     const int32_t *slot, void *kc, void *vc, bool bf16,
                                     int64_t n_slots, int n_heads, int n_kv, int hd, float eps) {
    const int i = blockIdx.x, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int n_warps = blockDim.x / 32;
    const float p = (float)pos[i];
    for (int hr = warp; hr < n_heads + n_kv; hr += n_warps) {
        const bool is_q = hr < n_heads;
        float *xr = is_q ? q + ((size_t)i * n_heads + hr) * hd
                         : k + ((size_t)i * n_kv + (hr - n_heads)) * hd;
        norm_rope_row(xr, is_q ? q_norm : k_norm, inv_freq, p, hd, eps, lane);
    }
    __syncthreads();
    const int32_t sl = slot[i];
    if (sl < 0 || sl >= n_slots) return;
    const int row = n_kv * hd;
    for (int e = threadIdx.x; e < row; e += blockDim.x) {
        const int64_t at = (int64_t)sl * row + e;
        const float kv = k[(size_t)i * row + e], vv = v[(size_t)i * row + e];
        if (bf16) {
            ((__nv_bfloat16 *)kc)[at] = __float2bfloat16_rn(kv);
            ((__nv_bfloat16 *)vc)[at] = __float2bfloat16_rn(vv);
        } else {
            ((float *)kc)[at] = kv;
            ((float *)vc)[at] = vv;
        }
    }
}

cudaError_t lp_cuda_qk_norm_rope_store(cudaStream_t s, float *q, float *k, const float *v,
                                       const float *q_norm, const float *k_norm,
                                       const float *inv_freq, const int32_t *pos,
                                       const int32_t *slot, void *k_cache, void *v_cache, bool bf16,
                                       int64_t n_slots, int n, int n_heads, int n_kv_heads,
                                       int head_dim, float eps) {
    if (n <= 0) return cudaSuccess;
    int rows = n_heads + n_kv_heads, threads = 32 * (rows < 32 ? rows : 32); // a warp a head row
    LP_LAUNCH((unsigned)n, (unsigned)threads, s,
              (q, k, v, q_norm, k_norm, inv_freq, pos, slot, k_cache, v_cache, bf16, n_slots,
               n_heads, n_kv_heads, head_dim, eps),
              k_qk_norm_rope_store);
    return cudaGetLastError();
}

// k, v rows [n, row] into cache rows slot[i]; slots outside the cache are skipped.
__global__ void k_kv_store(void *kc, void *vc, bool bf16, int64_t n_slots, int row, const float *k,
                           const float *v, const int32_t *slot, int n) {
    const int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (int64_t)n * row) return;
    const int i = (int)(idx / row), e = (int)(idx % row);
    const int32_t sl = slot[i];
    if (sl < 0 || sl >= n_slots) return;
    const int64_t at = (int64_t)sl * row + e;
    if (bf16) {
        ((__nv_bfloat16 *)kc)[at] = __float2bfloat16_rn(k[idx]);
        ((__nv_bfloat16 *)vc)[at] = __float2bfloat16_rn(v[idx]);
    } else {
        ((float *)kc)[at] = k[idx];
        ((float *)vc)[at] = v[idx];
    }
}

cudaError_t lp_cuda_kv_store(cudaStream_t s, void *k_cache, void *v_cache, bool bf16,
                             int64_t n_slots, int row, const float *k, const float *v,
                             const int32_t *slot, int n) {
    int64_t total = (int64_t)n * row;
    if (total <= 0) return cudaSuccess;
    LP_LAUNCH((unsigned)((total + 255) / 256), 256, s,
              (k_cache, v_cache, bf16, n_slots, row, k, v, slot, n), k_kv_store);
    return cudaGetLastError();
}

template <bool BF> static __device__ __forceinline__ float cache_at(const void *c, size_t i) {
    if (BF) return bf16_bits(((const uint16_t *)c)[i]);
    return ((const float *)c)[i];
}

// Attention, first pass. Block (row * n_heads + head, split): the split
// takes chunks split, split + SPLITS, ... of LP_CUDA_ATTN_CHUNK (128)
// positions of the row's context [0, min(qpos + 1, n_blocks * block_size));
// in a chunk, warp w takes 32 positions, one a lane: lane j computes its
// position's score q.k (q from shared memory), the warp updates its online
// softmax (running max m and sum l) once for the 32, then accumulates
// sum_j e_j v_j with lanes over head_dim (d = lane + 32 i). The block merges
// its warps and writes (m, l, o[head_dim]) for its split; k_attn_combine
// merges the splits.
template <int NI, bool BF>
__global__ void __launch_bounds__(128)
    k_attn(float *scratch, const float *__restrict__ q, const void *kc, const void *vc, int bs,
           int n_kv, int hd, int n_heads, struct lp_cuda_attn_index ix, float scale) {
    const int rh = blockIdx.x, split = blockIdx.y;
    const int row = rh / n_heads, h = rh % n_heads;
    const int kvh = h / (n_heads / n_kv);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int seg = ix.row_seg[row];
    const int32_t *bt = ix.bt + ix.seg_off[seg];
    const int n_ctx = min(ix.row_qpos[row] + 1, ix.seg_nblk[seg] * bs);
    __shared__ float q_s[NI * 32];
    for (int d = threadIdx.x; d < NI * 32; d += blockDim.x)
        q_s[d] = d < hd ? q[(size_t)rh * hd + d] : 0.0f;
    __syncthreads();
    float acc[NI];
#pragma unroll
    for (int i = 0; i < NI; i++)
        acc[i] = 0.0f;
    float m = -INFINITY, l = 0.0f;
    for (int c0 = split * LP_CUDA_ATTN_CHUNK; c0 < n_ctx;
         c0 += LP_CUDA_ATTN_SPLITS * LP_CUDA_ATTN_CHUNK) {
        const int p0 = c0 + warp * 32;
        if (p0 >= n_ctx) break; // warp-uniform
        const int p = p0 + lane;
        const bool valid = p < n_ctx;
        size_t base = 0;
        float sc = -INFINITY;
        if (valid) {
            base = (((size_t)bt[p / bs] * bs + p % bs) * n_kv + kvh) * hd;
            float dot = 0.0f;
#pragma unroll 8
            for (int d = 0; d < hd; d++)
                dot = __fmaf_rn(q_s[d], cache_at<BF>(kc, base + d), dot);
            sc = dot * scale;
        }
        float mc = sc;
        for (int o = 16; o > 0; o >>= 1)
            mc = fmaxf(mc, __shfl_xor_sync(0xffffffffu, mc, o));
        const float mn = fmaxf(m, mc); // finite: lane 0 of the warp is valid
        const float corr = expf(m - mn);
        const float e = valid ? expf(sc - mn) : 0.0f;
        l = l * corr + warp_sum(e);
#pragma unroll
        for (int i = 0; i < NI; i++)
            acc[i] *= corr;
        // U positions at a time: their v loads are issued before the FMAs use them
        constexpr int U = NI >= 8 ? 2 : 8;
        const int n_valid = min(32, n_ctx - p0);
        for (int j0 = 0; j0 < n_valid; j0 += U) {
            float ej[U], vv[U][NI];
#pragma unroll
            for (int u = 0; u < U; u++) {
                const int j = (j0 + u) & 31;
                ej[u] = __shfl_sync(0xffffffffu, e, j);
                const size_t bj = (size_t)__shfl_sync(0xffffffffu, (long long)base, j);
#pragma unroll
                for (int i = 0; i < NI; i++) {
                    const int d = lane + 32 * i;
                    vv[u][i] = (j0 + u < n_valid && d < hd) ? cache_at<BF>(vc, bj + d) : 0.0f;
                }
            }
#pragma unroll
            for (int u = 0; u < U; u++) {
                if (j0 + u >= n_valid) break;
#pragma unroll
                for (int i = 0; i < NI; i++)
                    acc[i] = __fmaf_rn(ej[u], vv[u][i], acc[i]);
            }
        }
        m = mn;
    }
    __shared__ float sm_m[4], sm_l[4], sm_o[4][NI * 32];
    if (lane == 0) {
        sm_m[warp] = m;
        sm_l[warp] = l;
    }
#pragma unroll
    for (int i = 0; i < NI; i++)
        sm_o[warp][lane + 32 * i] = acc[i];
    __syncthreads();
    float M = -INFINITY;
    for (int k = 0; k < 4; k++)
        if (sm_l[k] > 0.0f) M = fmaxf(M, sm_m[k]);
    float wk[4], L = 0.0f;
    for (int k = 0; k < 4; k++) {
        wk[k] = sm_l[k] > 0.0f ? expf(sm_m[k] - M) : 0.0f;
        L += sm_l[k] * wk[k];
    }
    float *part = scratch + ((size_t)rh * LP_CUDA_ATTN_SPLITS + split) * (size_t)(hd + 2);
    if (threadIdx.x == 0) {
        part[0] = M;
        part[1] = L;
    }
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float o = 0.0f;
        for (int k = 0; k < 4; k++)
            o += sm_o[k][d] * wk[k];
        part[2 + d] = o;
    }
}

// Attention, second pass: merges the splits of one (row, head) in order
// (the splits' weights exp(m_s - M) computed once, in shared memory).
__global__ void k_attn_combine(float *out, const float *scratch, int hd) {
    const int rh = blockIdx.x;
    const float *part = scratch + (size_t)rh * LP_CUDA_ATTN_SPLITS * (size_t)(hd + 2);
    __shared__ float m_s[LP_CUDA_ATTN_SPLITS], l_s[LP_CUDA_ATTN_SPLITS], w_s[LP_CUDA_ATTN_SPLITS];
    __shared__ float L_s;
    if (threadIdx.x < LP_CUDA_ATTN_SPLITS) {
        m_s[threadIdx.x] = part[(size_t)threadIdx.x * (hd + 2)];
        l_s[threadIdx.x] = part[(size_t)threadIdx.x * (hd + 2) + 1];
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        float M = -INFINITY, L = 0.0f;
        for (int sp = 0; sp < LP_CUDA_ATTN_SPLITS; sp++)
            if (l_s[sp] > 0.0f) M = fmaxf(M, m_s[sp]);
        for (int sp = 0; sp < LP_CUDA_ATTN_SPLITS; sp++) {
            w_s[sp] = l_s[sp] > 0.0f ? expf(m_s[sp] - M) : 0.0f;
            L += l_s[sp] * w_s[sp];
        }
        L_s = L;
    }
    __syncthreads();
    const float L = L_s;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float o = 0.0f;
#pragma unroll
        for (int sp = 0; sp < LP_CUDA_ATTN_SPLITS; sp++)
            if (w_s[sp] != 0.0f) o += part[(size_t)sp * (hd + 2) + 2 + d] * w_s[sp];
        out[(size_t)rh * hd + d] = L > 0.0f ? o / L : 0.0f;
    }
}

// ---- attention in tiles of positions (k_attn_tile) ----------------------------
// Block (row, kv head, split) of 128 threads computes every query head of
// its kv head's group (GQA: the K and V rows are read once for G heads)
// over tiles split, split + SPLITS, ... of ATT_TP (64) positions of the
// row's context. Per tile: (1) scores: 8 lanes per position (4 positions a
// warp at a time, K loaded 16 bytes a lane), dot over the lane's hd / 8
// dims then a 3-step shuffle; (2) online softmax, a warp per head: running
// max m, sum l, and the factor corr for the earlier tiles; (3) P V: warp w
// takes positions w, w + 4, ..., lanes over the head dims (16-byte loads).
// The block merges its warps and writes (m, l, o) for its split; the block
// that finishes last for a (row, kv head) (a counter, reset after) merges
// the splits in order 0..SPLITS-1 -- what k_attn_combine computes; the
// splits past the row's context leave at once, their (m, l) = (-inf, 0)
// taken as read, and only the others count -- so
// one launch does both passes and a row's result depends on its own
// context only. FQK: the row's q and k are the raw projections of a decode
// token; every block normalizes and rotates its q heads (norm_rope_row),
// the block holding the row's last position uses the new k and v from
// shared memory (rounded as the cache stores them), and the last block
// writes q and k back and k, v into the cache: qk_norm_rope_store's work.
#define ATT_TP 64
#define ATT_THREADS 128

struct attn_args {
    float *out;     // [n, n_heads * hd]
    float *scratch; // [n * n_heads][SPLITS][hd + 2] partials
    int *cnt;       // [n * n_kv] finished splits, 0 between launches
    float *q;       // [n, n_heads * hd] (FQK: raw in, normalized and rotated out)
    void *kc, *vc;  // caches (written only by FQK's store)
    int bs, n_kv, hd, n_heads;
    int n_rows, rpb; // query rows, rows a block (one after another)
    float scale;
    struct lp_cuda_attn_index ix;
    struct lp_cuda_attn_qk qk; // FQK only
};

// N consecutive cache elements from element i on, as floats.
template <bool BF, int N>
static __device__ __forceinline__ void cache_load(const void *c, size_t i, float (&v)[N]) {
    if (BF) {
        const uint16_t *p = (const uint16_t *)c + i;
        if (N % 8 == 0) {
#pragma unroll
            for (int k = 0; k < N; k += 8) {
                uint4 r = __ldg((const uint4 *)(p + k));
                uint32_t w[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
                for (int j = 0; j < 4; j++) {
                    v[k + 2 * j] = bf16_bits(w[j] & 0xffffu);
                    v[k + 2 * j + 1] = bf16_bits(w[j] >> 16);
                }
            }
        } else if (N % 4 == 0) {
#pragma unroll
            for (int k = 0; k < N; k += 4) {
                uint2 r = __ldg((const uint2 *)(p + k));
                v[k] = bf16_bits(r.x & 0xffffu);
                v[k + 1] = bf16_bits(r.x >> 16);
                v[k + 2] = bf16_bits(r.y & 0xffffu);
                v[k + 3] = bf16_bits(r.y >> 16);
            }
        } else {
#pragma unroll
            for (int k = 0; k < N; k++)
                v[k] = bf16_bits(p[k]);
        }
    } else {
        const float *p = (const float *)c + i;
        if (N % 4 == 0) {
#pragma unroll
            for (int k = 0; k < N; k += 4) {
                float4 r = __ldg((const float4 *)(p + k));
                v[k] = r.x;
                v[k + 1] = r.y;
                v[k + 2] = r.z;
                v[k + 3] = r.w;
            }
        } else {
#pragma unroll
            for (int k = 0; k < N; k++)
                v[k] = p[k];
        }
    }
}

// The element a cache of type BF stores for f (bf16 rounding or none), as a float.
template <bool BF> static __device__ __forceinline__ float cache_round(float f) {
    return BF ? bf16_bits(pack_bf16(f, 0.0f) & 0xffffu) : f;
}

// One query row of a block of k_attn_tile (every thread of the block calls it).
// DPT: head dims per lane in P V (hd = 32 DPT); GMAX >= G query heads per kv head.
template <int DPT, int GMAX, bool BF, bool FQK>
static __device__ __forceinline__ void attn_tile_row(const struct attn_args &a, int row, int kvh,
                                                     int split) {
    constexpr int HD = 32 * DPT, DPL = HD / 8; // dims per lane in the scores
    constexpr int US = DPL <= 16 ? 4 : 2;       // score steps whose loads go out together
    constexpr int SPLITS = LP_CUDA_ATTN_SPLITS;
    const int G = a.n_heads / a.n_kv;
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int lg = lane >> 3, l8 = lane & 7;
    __shared__ float q_s[GMAX][HD];     // the group's q rows (normalized under FQK)
    __shared__ float sc_s[GMAX][ATT_TP]; // scores, then probabilities
    __shared__ long long base_s[ATT_TP]; // cache element of each position; -1: the new row
    __shared__ float corr_s[GMAX], m_s[GMAX], l_s[GMAX];
    __shared__ float o_s[4][GMAX][HD];
    __shared__ float kn_s[HD], vn_s[HD], kf_s[HD]; // FQK: new k, v as cached; k as float
    __shared__ int last_s;
    // The index arrays came before the step's first kernel: read them, and
    // start the first tile's K and V rows into L2, before the wait.
    const int seg = a.ix.row_seg[row];
    const int32_t *bt = a.ix.bt + a.ix.seg_off[seg];
    const int qpos = a.ix.row_qpos[row];
    const int n_ctx = min(qpos + 1, a.ix.seg_nblk[seg] * a.bs);
    // splits past the context have no position: they leave (m, l) = (-inf,
    // 0), which the merge skips, so only the first n_act take part
    const int n_act = min(SPLITS, (n_ctx + ATT_TP - 1) / ATT_TP);
    if (split >= n_act && split > 0) return;
    const size_t qrow = (size_t)row * a.n_heads + (size_t)kvh * G; // first q head row
    const size_t kv_stride = (size_t)a.n_kv * HD;
    long long base0 = 0; // position split * ATT_TP + tid's cache element
    if (tid < ATT_TP && split * ATT_TP + tid < n_ctx) {
        const int p = split * ATT_TP + tid;
        base0 = (long long)(((size_t)bt[p / a.bs] * a.bs + p % a.bs) * kv_stride + (size_t)kvh * HD);
        const size_t es = BF ? 2 : 4;
        for (int o = 0; o < HD * (int)es; o += 128) {
            prefetch_l2((const char *)a.kc + (size_t)base0 * es + o);
            prefetch_l2((const char *)a.vc + (size_t)base0 * es + o);
        }
    }
    griddep_wait();
    for (int e = tid; e < G * HD; e += ATT_THREADS)
        q_s[e / HD][e % HD] = a.q[qrow * HD + e];
    if (FQK) {
        for (int d = tid; d < HD; d += ATT_THREADS) {
            kf_s[d] = a.qk.k[((size_t)row * a.n_kv + kvh) * HD + d];
            vn_s[d] = cache_round<BF>(a.qk.v[((size_t)row * a.n_kv + kvh) * HD + d]);
        }
        __syncthreads();
        const float p = (float)qpos;
        for (int hr = warp; hr <= G; hr += 4)
            norm_rope_row(hr < G ? q_s[hr] : kf_s, hr < G ? a.qk.q_norm : a.qk.k_norm,
                          a.qk.inv_freq, p, HD, a.qk.eps, lane);
        __syncthreads();
        for (int d = tid; d < HD; d += ATT_THREADS)
            kn_s[d] = cache_round<BF>(kf_s[d]);
    }
    __syncthreads();
    // this lane's q dims for the scores, in registers
    float qr[GMAX][DPL];
#pragma unroll
    for (int g = 0; g < GMAX; g++)
#pragma unroll
        for (int i = 0; i < DPL; i++)
            qr[g][i] = g < G ? q_s[g][l8 * DPL + i] : 0.0f;
    float acc[GMAX][DPT];
#pragma unroll
    for (int g = 0; g < GMAX; g++)
#pragma unroll
        for (int i = 0; i < DPT; i++)
            acc[g][i] = 0.0f;
    float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.0f, 0.0f}; // heads warp, warp + 4
    for (int p0 = split * ATT_TP; p0 < n_ctx; p0 += SPLITS * ATT_TP) {
        const int np = min(ATT_TP, n_ctx - p0);
        if (tid < ATT_TP) {
            const int p = p0 + tid;
            long long b = 0;
            if (tid < np)
                b = (FQK && p == qpos) ? -1
                    : p0 == split * ATT_TP
                        ? base0
                        : (long long)(((size_t)bt[p / a.bs] * a.bs + p % a.bs) * kv_stride +
                                      (size_t)kvh * HD);
            base_s[tid] = b;
        }
        __syncthreads();
        // (1) scores
        for (int st0 = 0; st0 < 4; st0 += US) {
            float kv[US][DPL];
#pragma unroll
            for (int u = 0; u < US; u++) {
                const int j = 16 * warp + 4 * (st0 + u) + lg;
                const long long b = base_s[j];
                if (j < np && b >= 0) {
                    cache_load<BF, DPL>(a.kc, (size_t)b + (size_t)l8 * DPL, kv[u]);
                } else { // past the tile's end, or (FQK) the new row
#pragma unroll
                    for (int i = 0; i < DPL; i++)
                        kv[u][i] = (FQK && j < np) ? kn_s[l8 * DPL + i] : 0.0f;
                }
            }
#pragma unroll
            for (int u = 0; u < US; u++) {
                const int j = 16 * warp + 4 * (st0 + u) + lg;
#pragma unroll
                for (int g = 0; g < GMAX; g++) {
                    if (g >= G) break;
                    float dot = 0.0f;
#pragma unroll
                    for (int i = 0; i < DPL; i++)
                        dot = __fmaf_rn(qr[g][i], kv[u][i], dot);
                    dot = __fadd_rn(dot, __shfl_xor_sync(0xffffffffu, dot, 4));
                    dot = __fadd_rn(dot, __shfl_xor_sync(0xffffffffu, dot, 2));
                    dot = __fadd_rn(dot, __shfl_xor_sync(0xffffffffu, dot, 1));
                    if (l8 == 0) sc_s[g][j] = j < np ? __fmul_rn(dot, a.scale) : -INFINITY;
                }
            }
        }
        __syncthreads();
        // (2) online softmax, warp w for heads w and w + 4
#pragma unroll
        for (int hh = 0; hh < 2; hh++) {
            const int g = warp + 4 * hh;
            if (g >= G) break;
            const float s0 = sc_s[g][lane], s1 = sc_s[g][lane + 32];
            float mt = fmaxf(s0, s1);
            for (int o = 16; o > 0; o >>= 1)
                mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, o));
            const float mn = fmaxf(m_run[hh], mt); // finite: position p0 is valid
            const float corr = expf(m_run[hh] - mn);
            const float e0 = expf(s0 - mn), e1 = expf(s1 - mn);
            l_run[hh] = __fadd_rn(__fmul_rn(l_run[hh], corr), warp_sum(__fadd_rn(e0, e1)));
            m_run[hh] = mn;
            sc_s[g][lane] = e0;
            sc_s[g][lane + 32] = e1;
            if (lane == 0) corr_s[g] = corr;
        }
        __syncthreads();
        // (3) P V: warp w takes positions w, w + 4, ...; lanes over dims
#pragma unroll
        for (int g = 0; g < GMAX; g++) {
            if (g >= G) break;
            const float cr = corr_s[g];
#pragma unroll
            for (int i = 0; i < DPT; i++)
                acc[g][i] = __fmul_rn(acc[g][i], cr);
        }
        for (int j0 = warp; j0 < np; j0 += 16) {
            float vv[4][DPT];
#pragma unroll
            for (int u = 0; u < 4; u++) {
                const int j = j0 + 4 * u;
                const long long b = j < np ? base_s[j] : 0;
                if (j < np && b >= 0) {
                    cache_load<BF, DPT>(a.vc, (size_t)b + (size_t)lane * DPT, vv[u]);
                } else {
#pragma unroll
                    for (int i = 0; i < DPT; i++)
                        vv[u][i] = (FQK && j < np) ? vn_s[lane * DPT + i] : 0.0f;
                }
            }
#pragma unroll
            for (int u = 0; u < 4; u++) {
                const int j = j0 + 4 * u;
                if (j >= np) break;
#pragma unroll
                for (int g = 0; g < GMAX; g++) {
                    if (g >= G) break;
                    const float pj = sc_s[g][j];
#pragma unroll
                    for (int i = 0; i < DPT; i++)
                        acc[g][i] = __fmaf_rn(pj, vv[u][i], acc[g][i]);
                }
            }
        }
        __syncthreads(); // sc_s and base_s are rewritten by the next tile
    }
    // merge the warps: o = o_0 + o_1 + o_2 + o_3, then this split's partial
#pragma unroll
    for (int g = 0; g < GMAX; g++) {
        if (g >= G) break;
#pragma unroll
        for (int i = 0; i < DPT; i++)
            o_s[warp][g][lane * DPT + i] = acc[g][i];
    }
    if (lane == 0) {
        for (int hh = 0; hh < 2; hh++) {
            const int g = warp + 4 * hh;
            if (g < G) {
                m_s[g] = m_run[hh];
                l_s[g] = l_run[hh];
            }
        }
    }
    __syncthreads();
    for (int e = tid; e < G * (HD + 2); e += ATT_THREADS) {
        const int g = e / (HD + 2), d = e % (HD + 2);
        float *part = a.scratch + ((qrow + g) * SPLITS + split) * (size_t)(HD + 2);
        if (d == 0) {
            part[0] = m_s[g];
        } else if (d == 1) {
            part[1] = l_s[g];
        } else if (l_s[g] > 0.0f) {
            const int dd = d - 2;
            part[d] = __fadd_rn(__fadd_rn(__fadd_rn(o_s[0][g][dd], o_s[1][g][dd]), o_s[2][g][dd]),
                                o_s[3][g][dd]);
        }
    }
    __threadfence();
    __syncthreads();
    int *cnt = a.cnt + (size_t)row * a.n_kv + kvh;
    if (tid == 0) last_s = atomicAdd(cnt, 1) == (n_act > 1 ? n_act : 1) - 1;
    __syncthreads();
    if (!last_s) return;
    __threadfence();
    // the last block: merge the splits (k_attn_combine's arithmetic)
    __shared__ float w_s[GMAX][SPLITS], L_s[GMAX];
    if (tid < G * SPLITS) {
        const int g = tid / SPLITS, sp = tid % SPLITS;
        const float *part = a.scratch + ((qrow + g) * SPLITS + sp) * (size_t)(HD + 2);
        w_s[g][sp] = sp < n_act ? __ldcg(part) : -INFINITY; // m for now
        o_s[0][g][sp] = sp < n_act ? __ldcg(part + 1) : 0.0f; // l
    }
    __syncthreads();
    if (tid < G) {
        const int g = tid;
        float M = -INFINITY, L = 0.0f;
        for (int sp = 0; sp < SPLITS; sp++)
            if (o_s[0][g][sp] > 0.0f) M = fmaxf(M, w_s[g][sp]);
        for (int sp = 0; sp < SPLITS; sp++) {
            const float l = o_s[0][g][sp];
            const float w = l > 0.0f ? expf(w_s[g][sp] - M) : 0.0f;
            w_s[g][sp] = w;
            L += l * w;
        }
        L_s[g] = L;
    }
    __syncthreads();
    for (int e = tid; e < G * HD; e += ATT_THREADS) {
        const int g = e / HD, d = e % HD;
        const float *part = a.scratch + (qrow + g) * SPLITS * (size_t)(HD + 2);
        float o = 0.0f;
#pragma unroll
        for (int sp = 0; sp < SPLITS; sp++)
            if (w_s[g][sp] != 0.0f) o += __ldcg(part + (size_t)sp * (HD + 2) + 2 + d) * w_s[g][sp];
        const float L = L_s[g];
        a.out[(qrow + g) * HD + d] = L > 0.0f ? o / L : 0.0f;
    }
    if (FQK) { // qk_norm_rope_store's outputs: q, k and the cache row
        for (int e = tid; e < G * HD; e += ATT_THREADS)
            a.q[qrow * HD + e] = q_s[e / HD][e % HD];
        const int32_t sl = a.qk.slot[row];
        for (int d = tid; d < HD; d += ATT_THREADS) {
            a.qk.k[((size_t)row * a.n_kv + kvh) * HD + d] = kf_s[d];
            if (sl >= 0 && sl < a.qk.n_slots) {
                const size_t at = (size_t)sl * kv_stride + (size_t)kvh * HD + d;
                if (BF) {
                    ((uint16_t *)a.kc)[at] = (uint16_t)(pack_bf16(kf_s[d], 0.0f) & 0xffffu);
                    ((uint16_t *)a.vc)[at] = (uint16_t)(pack_bf16(vn_s[d], 0.0f) & 0xffffu);
                } else {
                    ((float *)a.kc)[at] = kf_s[d];
                    ((float *)a.vc)[at] = vn_s[d];
                }
            }
        }
    }
    if (tid == 0) *cnt = 0;
}

// Block (row group, kv head, split): the group's a.rpb consecutive rows one
// after another, each computed exactly as alone; rows of one sequence read
// the same K and V rows, which the later ones find in L1 (a prefill's rows
// otherwise each brought their split's K and V from L2).
template <int DPT, int GMAX, bool BF, bool FQK>
static __global__ void __launch_bounds__(ATT_THREADS) k_attn_tile(struct attn_args a) {
    griddep_launch_dependents();
    const int rg = blockIdx.x / a.n_kv, kvh = blockIdx.x % a.n_kv;
    for (int i = 0; i < a.rpb; i++) {
        const int row = rg * a.rpb + i;
        if (row >= a.n_rows) break;
        attn_tile_row<DPT, GMAX, BF, FQK>(a, row, kvh, (int)blockIdx.y);
        __syncthreads(); // the shared arrays are the next row's
    }
}

template <int DPT, int GMAX>
static cudaError_t attn_tile_launch(cudaStream_t s, bool pdl, bool bf16, bool fqk, int n,
                                    const struct attn_args &a) {
    dim3 grid((unsigned)((n + a.rpb - 1) / a.rpb * a.n_kv), LP_CUDA_ATTN_SPLITS);
#define LP_ATT(BF, F)                                                                              \
    LP_LAUNCH_PDL(pdl, grid, ATT_THREADS, s, (a), k_attn_tile<DPT, GMAX, BF, F>)
    if (bf16 && fqk)
        LP_ATT(true, true);
    else if (bf16)
        LP_ATT(true, false);
    else if (fqk)
        LP_ATT(false, true);
    else
        LP_ATT(false, false);
#undef LP_ATT
    return cudaGetLastError();
}

static cudaError_t attn_tile_dispatch(cudaStream_t s, bool pdl, bool bf16, bool fqk, int n, int G,
                                      const struct attn_args &a) {
    switch (a.hd) {
    case 32:
        return G <= 2 ? attn_tile_launch<1, 2>(s, pdl, bf16, fqk, n, a)
             : G <= 4 ? attn_tile_launch<1, 4>(s, pdl, bf16, fqk, n, a)
                      : attn_tile_launch<1, 8>(s, pdl, bf16, fqk, n, a);
    case 64:
        return G <= 2 ? attn_tile_launch<2, 2>(s, pdl, bf16, fqk, n, a)
             : G <= 4 ? attn_tile_launch<2, 4>(s, pdl, bf16, fqk, n, a)
                      : attn_tile_launch<2, 8>(s, pdl, bf16, fqk, n, a);
    case 128:
        return G <= 2 ? attn_tile_launch<4, 2>(s, pdl, bf16, fqk, n, a)
                      : attn_tile_launch<4, 4>(s, pdl, bf16, fqk, n, a);
    default:
        return attn_tile_launch<8, 2>(s, pdl, bf16, fqk, n, a);
    }
}

template <int NI>
static cudaError_t attn_launch(cudaStream_t s, float *out, const float *q, const void *kc,
                               const void *vc, bool bf16, int bs, int n_kv, int hd, int n_heads,
                               const struct lp_cuda_attn_index *ix, int n, float *scratch) {
    dim3 grid((unsigned)(n * n_heads), LP_CUDA_ATTN_SPLITS);
    float scale = 1.0f / sqrtf((float)hd);
    if (bf16)
        LP_LAUNCH(grid, 128, s, (scratch, q, kc, vc, bs, n_kv, hd, n_heads, *ix, scale),
                  k_attn<NI, true>);
    else
        LP_LAUNCH(grid, 128, s, (scratch, q, kc, vc, bs, n_kv, hd, n_heads, *ix, scale),
                  k_attn<NI, false>);
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return e;
    LP_LAUNCH((unsigned)(n * n_heads), 128, s, (out, scratch, hd), k_attn_combine);
    return cudaGetLastError();
}

cudaError_t lp_cuda_attention(cudaStream_t s, bool pdl, float *out, float *q, void *k_cache,
                              void *v_cache, bool bf16, int block_size, int n_kv_heads,
                              int head_dim, int n_heads, const struct lp_cuda_attn_index *ix,
                              const struct lp_cuda_attn_qk *qk, int n, int rows_per_block,
                              float *scratch, int *counters) {
    if (n <= 0) return cudaSuccess;
    if (head_dim > 512 || n_kv_heads <= 0 || n_heads % n_kv_heads != 0)
        return cudaErrorInvalidValue;
    int hd = head_dim, G = n_heads / n_kv_heads;
    if (lp_cuda_attn_tiled(hd, n_heads, n_kv_heads)) {
        struct attn_args a = {};
        a.out = out;
        a.scratch = scratch;
        a.cnt = counters;
        a.q = q;
        a.kc = k_cache;
        a.vc = v_cache;
        a.bs = block_size;
        a.n_kv = n_kv_heads;
        a.hd = hd;
        a.n_heads = n_heads;
        a.scale = 1.0f / sqrtf((float)hd);
        a.n_rows = n;
        a.rpb = rows_per_block > 1 ? rows_per_block : 1;
        a.ix = *ix;
        if (qk) a.qk = *qk;
        return attn_tile_dispatch(s, pdl, bf16, qk != NULL, n, G, a);
    }
    if (qk) return cudaErrorInvalidValue; // callers ask lp_cuda_attn_tiled first
#define LP_ATTN(NI)                                                                                \
    attn_launch<NI>(s, out, q, k_cache, v_cache, bf16, block_size, n_kv_heads, hd, n_heads, ix, n, \
                    scratch)
    if (hd <= 32) return LP_ATTN(1);
    if (hd <= 64) return LP_ATTN(2);
    if (hd <= 128) return LP_ATTN(4);
    if (hd <= 256) return LP_ATTN(8);
    return LP_ATTN(16);
#undef LP_ATTN
}

__global__ void k_silu_mul(float *out, const float *g, const float *u, int64_t n) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float gi = g[i];
    out[i] = __fmul_rn(__fdiv_rn(gi, __fadd_rn(1.0f, expf(-gi))), u[i]);
}

cudaError_t lp_cuda_silu_mul(cudaStream_t s, float *out, const float *gate, const float *up,
                             int64_t n) {
    if (n <= 0) return cudaSuccess;
    LP_LAUNCH((unsigned)((n + 255) / 256), 256, s, (out, gate, up, n), k_silu_mul);
    return cudaGetLastError();
}

__global__ void k_add(float *x, const float *y, int64_t n) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = __fadd_rn(x[i], y[i]);
}

cudaError_t lp_cuda_add(cudaStream_t s, float *x, const float *y, int64_t n) {
    if (n <= 0) return cudaSuccess;
    LP_LAUNCH((unsigned)((n + 255) / 256), 256, s, (x, y, n), k_add);
    return cudaGetLastError();
}

__global__ void k_gather_rows(float *dst, const float *src, const int32_t *src_row, int cols) {
    const int i = blockIdx.x;
    const float *sr = src + (size_t)src_row[i] * cols;
    for (int c = threadIdx.x; c < cols; c += blockDim.x)
        dst[(size_t)i * cols + c] = sr[c];
}

cudaError_t lp_cuda_gather_rows(cudaStream_t s, float *dst, const float *src,
                                const int32_t *src_row, int n, int cols) {
    if (n <= 0) return cudaSuccess;
    LP_LAUNCH((unsigned)n, 256, s, (dst, src, src_row, cols), k_gather_rows);
    return cudaGetLastError();
}

__global__ void k_read_probe(const uint4 *src, size_t n_vec, float *sink) {
    uint32_t acc = 0;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n_vec;
         i += (size_t)gridDim.x * blockDim.x) {
        uint4 v = __ldcs(src + i);
        acc ^= v.x ^ v.y ^ v.z ^ v.w;
    }
    acc = __reduce_xor_sync(0xffffffffu, acc);
    if (threadIdx.x % 32 == 0) sink[blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32] = (float)acc;
}

cudaError_t lp_cuda_read_probe(cudaStream_t s, const void *src, size_t bytes, float *sink,
                               int n_blocks) {
    LP_LAUNCH((unsigned)n_blocks, 256, s, ((const uint4 *)src, bytes / 16, sink), k_read_probe);
    return cudaGetLastError();
}
