// SPDX-License-Identifier: MIT
// matmul_i.h -- what the CPU matmul files share: the per-call task, the
// AVX-512 target attributes, the small inline helpers that load a weight
// row's 16 values (any float or MLX format), dot 16-bit scales with floats
// and sum 16 lanes by a fixed tree, and the kernels of matmul_digits.c and
// matmul_ggml.c.
#ifndef LP_BACKEND_CPU_MATMUL_I_H
#define LP_BACKEND_CPU_MATMUL_I_H

#include <stdatomic.h>
#include <stdint.h>

#if defined(__x86_64__)
#include <immintrin.h>
#define LP_HAVE_X86 1
#else
#define LP_HAVE_X86 0
#endif


#include "backend/cpu/internal.h"

// One matmul call (or one token chunk of it), shared by all threads.
struct mm_task {
    const struct lp_weight *w;
    const float *x; // [n, cols]
    float *out;     // [n, rows]
    int n;
    int64_t rows_per_chunk;
    int64_t n_chunks;
    _Atomic int64_t next; // next row chunk to take
    // phase-1 results for this token chunk (NULL when the path needs none)
    const float *xsum;   // [n, n_groups] per-group sums of x
    const float *xscale; // [n, n_groups] int8 scale of x per group
    const int8_t *xq;    // [n, cols] int8 x, or [n, dg_stride] digits of x
    int64_t dg_stride;   // digits bytes per token (exact VNNI path)
    const float *xp;     // [ceil(n / NT), cols, NT] packed x (prefill path)
    const uint8_t *packed; // w in the GGUF kernels' strips (lp_mm_ggml_pack), or NULL
    struct lp_cpu_ctx *ctx;
    void (*kernel)(const struct mm_task *tk, int64_t r0, int64_t r1, int i_thread);
};

// A kernel: row chunk [r0, r1) of tk->w against every token of tk.
typedef void (*lp_mm_kernel_fn)(const struct mm_task *tk, int64_t r0, int64_t r1, int i_thread);

static inline int64_t mm_row_bytes(const struct lp_weight *w) {
    switch (w->format) {
    case LP_WEIGHT_F32:
        return w->cols * 4;
    case LP_WEIGHT_F16:
    case LP_WEIGHT_BF16:
        return w->cols * 2;
    case LP_WEIGHT_MLX_AFFINE:
        return w->cols * w->bits / 8;
    case LP_WEIGHT_GGML:
        return (int64_t)lp_ggml_row_bytes(w->ggml_type, w->cols);
    }
    return 0;
}

// ---- exact VNNI kernels: sizes (the kernels are x86 only) -----------------
#define LP_MM_DG_BLK 64  // columns per digit block: xd[blk][3][64]
#define LP_MM_Q4_BLK 128 // 4-bit: columns per digit block: xd[blk][3][even 64, odd 64]
#define LP_MM_DG_RB 4    // weight rows per register tile
#define LP_MM_DG_NT 4    // tokens per register tile (4 x 4 measured as fast as
                         // 4x5, 4x6, 3x6, 2x8 here)
#define LP_MM_DG_GC 16   // groups per chunk of the sw * sx table
#define LP_MM_DG_ROWBLK_BYTES (64 << 10) // code bytes per row block (stays in L2)

// Whether the digits kernels take w (MLX): groups of 32 or a multiple of 64,
// columns a multiple of 64 (whole 64-code blocks).
static inline bool lp_mm_digits_fit(const struct lp_weight *w) {
    return (w->group_size == 32 || w->group_size % LP_MM_DG_BLK == 0) &&
           w->cols % LP_MM_DG_BLK == 0;
}

// Bytes of one token's digits for w (a multiple of 64).
static inline int64_t mm_dg_stride(const struct lp_weight *w) {
    return w->bits == 4 ? 3 * ((w->cols + LP_MM_Q4_BLK - 1) / LP_MM_Q4_BLK * LP_MM_Q4_BLK)
                        : 3 * w->cols;
}

#if LP_HAVE_X86

#define LP_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,avx2,f16c")))
#define LP_VNNI                                                                                    \
    __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,fma,avx2,f16c")))
#define LP_INLINE static inline __attribute__((always_inline))

enum { FMT_F32, FMT_F16, FMT_BF16, FMT_Q4, FMT_Q8 };

// 16 weights of one row starting at column c, as float (MLX: the raw codes).
LP_INLINE LP_AVX512 __m512 mm_ld16(int fmt, const uint8_t *row, int64_t c, __mmask16 m) {
    switch (fmt) {
    case FMT_F32:
        return _mm512_maskz_loadu_ps(m, (const float *)row + c);
    case FMT_F16:
        return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, (const uint16_t *)row + c));
    case FMT_BF16: {
        __m256i h = _mm256_maskz_loadu_epi16(m, (const uint16_t *)row + c);
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    case FMT_Q8:
        return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(row + c))));
    default: { // FMT_Q4: byte j holds element 2j (low nibble) and 2j+1 (high)
        __m128i b = _mm_loadl_epi64((const __m128i *)(row + c / 2));
        __m128i mask = _mm_set1_epi8(0x0f);
        __m128i lo = _mm_and_si128(b, mask);
        __m128i hi = _mm_and_si128(_mm_srli_epi16(b, 4), mask);
        return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_unpacklo_epi8(lo, hi)));
    }
    }
}

// Byte offset of column c within a row of format fmt.
LP_INLINE int64_t mm_col_off(int fmt, int64_t c) {
    return fmt == FMT_F32 ? c * 4 : fmt == FMT_F16 || fmt == FMT_BF16 ? c * 2 : fmt == FMT_Q8 ? c : c / 2;
}

// Software prefetch of the next row block (RB rows further on, which is
// where this thread goes next): the rows of a block are short interleaved
// streams that the hardware prefetchers ramp up on too late. One per line,
// into L2 (T1): into L1 (T0) the decode of a 1.9 GB model read 22 GB/s, into
// L2 29-30 GB/s on this machine (Zen 5 class EPYC, 2 threads).
#define MM_PREFETCH(fmt, rowp, r, c, ahead)                                                        \
    do {                                                                                           \
        if ((mm_col_off(fmt, c) & 63) == 0)                                                        \
            _mm_prefetch((const char *)(rowp)[r] + mm_col_off(fmt, c) + (ahead), _MM_HINT_T1);     \
    } while (0)

// sum_i h[i] * x[i] for n 16-bit floats h (scales/biases) of dtype dt.
LP_INLINE LP_AVX512 float mm_half_dot(enum lp_dtype dt, const uint16_t *h, const float *x,
                                      int64_t n) {
    __m512 acc = _mm512_setzero_ps();
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1u);
        __m512 hv = mm_ld16(dt == LP_DTYPE_BF16 ? FMT_BF16 : FMT_F16, (const uint8_t *)(h + i), 0, m);
        acc = _mm512_fmadd_ps(hv, _mm512_maskz_loadu_ps(m, x + i), acc);
    }
    return _mm512_reduce_add_ps(acc);
}

// The sum of v's 16 lanes by one fixed tree: s8[j] = v[j] + v[j + 8], s4[j] =
// s8[j] + s8[j + 4], s2[j] = s4[j] + s4[j + 2], s2[0] + s2[1] (written out, not
// _mm512_reduce_add_ps, whose tree is the compiler's).
LP_INLINE LP_VNNI float mm_dg_hsum(__m512 v) {
    __m256 a = _mm256_add_ps(_mm512_castps512_ps256(v),
                             _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
    __m128 b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    __m128 c = _mm_add_ps(b, _mm_movehl_ps(b, b));
    return _mm_cvtss_f32(_mm_add_ss(c, _mm_shuffle_ps(c, c, 1)));
}

// mm_dg_hsum of v[0 .. 15] into o[0 .. 15], the same tree (and operand order)
// four vectors at a time: 56 instructions instead of 16 x 9.
LP_INLINE LP_VNNI void mm_dg_hsum16(const __m512 *v, float *o) {
    __m512 u[8], w[4];
    for (int i = 0; i < 8; i++) // lanes 0-7: s8 of v[2i], 8-15: s8 of v[2i + 1]
        u[i] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0x44),
                             _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0xee));
    for (int i = 0; i < 4; i++) // 128-bit lane k: s4 of v[4i + k]
        w[i] = _mm512_add_ps(_mm512_shuffle_f32x4(u[2 * i], u[2 * i + 1], 0x88),
                             _mm512_shuffle_f32x4(u[2 * i], u[2 * i + 1], 0xdd));
    for (int i = 0; i < 4; i++) {
        __m512 x = _mm512_add_ps(w[i], _mm512_permute_ps(w[i], 0x4e)); // s2 in lanes 4k, 4k + 1
        __m512 y = _mm512_add_ps(x, _mm512_permute_ps(x, 0xb1));       // the sum in lane 4k
        float tmp[16] __attribute__((aligned(64)));
        _mm512_store_ps(tmp, y);
        for (int k = 0; k < 4; k++) o[4 * i + k] = tmp[4 * k];
    }
}

// out[(t0 + t) * rows + r0 + r] = the lane sum (mm_dg_hsum's tree) of v[r][t]
// for an RB x NT tile (a 4 x 4 tile through mm_dg_hsum16).
LP_INLINE LP_VNNI void mm_dg_out(int RB, int NT, __m512 v[][LP_MM_DG_NT], float *out, int64_t rows,
                                 int64_t r0, int t0) {
    if (RB * NT == 16) {
        __m512 f[16];
        float o[16];
        for (int r = 0; r < RB; r++)
            for (int t = 0; t < NT; t++) f[r * NT + t] = v[r][t];
        mm_dg_hsum16(f, o);
        for (int r = 0; r < RB; r++)
            for (int t = 0; t < NT; t++) out[(int64_t)(t0 + t) * rows + r0 + r] = o[r * NT + t];
        return;
    }
    for (int r = 0; r < RB; r++)
        for (int t = 0; t < NT; t++) out[(int64_t)(t0 + t) * rows + r0 + r] = mm_dg_hsum(v[r][t]);
}

// ---- exact VNNI kernels (matmul_digits.c) --------------------------------
// Splits x [cols] into three int8 digits per element (layout for 8-bit or,
// with q4, 4-bit weights), per-group sums into xsum [ng] and scales into
// xs [ng]; gs is 32 or a multiple of 64. See matmul_digits.c.
LP_VNNI void lp_mm_digits_prep(const float *x, int64_t cols, int gs, int q4, int8_t *xd,
                               float *xsum, float *xs);

// lp_mm_digits_prep for n tokens, as a pool task (tokens split over threads).
struct lp_mm_digits {
    const float *x; // [n, cols]
    int n;
    int64_t cols;
    int gs;
    int q4;
    int64_t stride; // bytes per token in xd (mm_dg_stride)
    int8_t *xd;     // [n, stride]
    float *xsum;    // [n, ng]
    float *xs;      // [n, ng]
};
void lp_mm_digits_prep_fn(void *arg, int i_thread, int n_threads);

// Row chunk [r0, r1) of MLX 8-bit / 4-bit weights against every token's
// digits (tk->xq, stride tk->dg_stride; tk->xscale, tk->xsum).
LP_VNNI void lp_mm_kernel_digits_q8(const struct mm_task *tk, int64_t r0, int64_t r1,
                                    int i_thread);
LP_VNNI void lp_mm_kernel_digits_q4(const struct mm_task *tk, int64_t r0, int64_t r1,
                                    int i_thread);

// ---- exact VNNI kernels of GGUF blocks (matmul_ggml.c) ---------------------
// Bytes of w packed for the kernels: 16-row strips (the last one padded
// with zero rows), each super-block's codes transposed and the scale codes
// unpacked to bytes; 0 when the kernels do not take w (a GGUF type other
// than Q4_0, Q8_0, Q4_K, Q5_K, Q6_K, or columns not a multiple of 256).
size_t lp_mm_ggml_packed_bytes(const struct lp_weight *w);

// Packs strips [s0, s1) (rows 16 s0 .. 16 s1 - 1) of w into dst (64-byte
// aligned, lp_mm_ggml_packed_bytes of it), so that threads can share the work.
LP_VNNI void lp_mm_ggml_pack(const struct lp_weight *w, uint8_t *dst, int64_t s0, int64_t s1);

// The kernel of type t (NULL for an unknown type): row chunk [r0, r1) (r0 a
// multiple of 16) of w packed (tk->packed) against every token's prepared x
// (tk->xq, stride tk->dg_stride); int8_x: x rounded to int8 per group of 32
// (one digit).
lp_mm_kernel_fn lp_mm_ggml_kernel(enum lp_ggml_type t, bool int8_x);

// Bytes of one token's prepared x for a weight of cols columns (a multiple
// of 256; the result is a multiple of 64). Tokens are stored in groups of 8
// (8 x this a group, the last one padded).
int64_t lp_mm_ggml_token_bytes(int64_t cols);

// Per-thread scratch bytes of the kernels (cols a multiple of 256; a
// multiple of 64): a decoded super-block and the accumulators, and in phase
// 1 one token's prep before it is interleaved into its group.
size_t lp_mm_ggml_cache_bytes(int64_t cols);

// Prepares x [cols] for weights of type t into slot `slot` (0..7) of its
// 8-token group `group` (8 x lp_mm_ggml_token_bytes), through tmp
// (lp_mm_ggml_token_bytes); int8_x: for the one-digit kernels
// (lp_mm_ggml_kernel).
LP_VNNI void lp_mm_ggml_prep(const float *x, int64_t cols, enum lp_ggml_type t, bool int8_x,
                             uint8_t *group, int slot, int8_t *tmp);

// lp_mm_ggml_prep for n tokens, as a pool task (tokens split over threads;
// thread i's tmp at tmp + i * tmp_bytes).
struct lp_mm_ggml_prep {
    const float *x; // [n, cols]
    int n;
    int64_t cols;
    enum lp_ggml_type type;
    bool int8_x;
    int64_t stride; // bytes per 8-token group in xd (8 x lp_mm_ggml_token_bytes)
    int8_t *xd;     // [ceil(n / 8), stride]
    void *tmp;      // per-thread scratch (lp_mm_ggml_cache_bytes each)
    size_t tmp_bytes;
};
void lp_mm_ggml_prep_fn(void *arg, int i_thread, int n_threads);

#endif // LP_HAVE_X86

#endif
