// SPDX-License-Identifier: MIT
// device.h -- device-side helpers shared by the CUDA backend's kernel files
// (kernels.cu, matmul_tc.cu): warp reductions, the bf16 packing and the
// tensor-core instruction they build on, programmatic dependent launch
// (PDL), and L2 prefetch. C++ (nvcc) only. Each helper has a plain C++ body
// for the CPU emulation of tests/backend/cuda_emu (LP_CUDA_EMU), which
// computes the same values: an mma there is a warp-wide exchange (one
// barrier) followed by each lane's own dot products.
#ifndef LAYERPIPE_BACKEND_CUDA_DEVICE_H
#define LAYERPIPE_BACKEND_CUDA_DEVICE_H

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include <utility>

// LP_LAUNCH(grid, block, stream, (args...), kernel): kernel<<<grid, block, 0, stream>>>(args...);
// (the CPU emulation of tests/backend/cuda_emu defines its own).
#ifndef LP_LAUNCH
#define LP_LAUNCH(grid, block, stream, args, ...) __VA_ARGS__<<<grid, block, 0, stream>>> args
#endif

#ifdef LP_CUDA_EMU
// The emulation runs launches one after another: a PDL launch is a plain one,
// and dynamic shared memory is a static buffer of the kernel (LP_DYN_SMEM).
#define LP_LAUNCH_PDL(pdl, grid, block, stream, args, ...) LP_LAUNCH(grid, block, stream, args, __VA_ARGS__)
#define LP_LAUNCH_PDL_SMEM(pdl, grid, block, smem, stream, args, ...)                             \
    LP_LAUNCH(grid, block, stream, args, __VA_ARGS__)
#define LP_DYN_SMEM(name, bytes) static __align__(16) unsigned char name[bytes]
#else
// A launch that may start while the kernel before it in the stream finishes
// (programmatic stream serialization): the kernel must call griddep_wait()
// before it reads anything an earlier kernel wrote or writes anything at all.
// smem: bytes of dynamic shared memory (the kernel's LP_DYN_SMEM).
template <class... P, class... A>
static inline cudaError_t lp_launch_pdl(bool pdl, dim3 grid, dim3 block, size_t smem,
                                        cudaStream_t s, void (*k)(P...), A &&...a) {
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = s;
    cudaLaunchAttribute at[1];
    at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = at;
    cfg.numAttrs = pdl ? 1 : 0;
    return cudaLaunchKernelEx(&cfg, k, std::forward<A>(a)...);
}
// (a statement, like LP_LAUNCH: the launch's error is cudaGetLastError's)
#define LP_LAUNCH_PDL(pdl, grid, block, stream, args, ...)                                        \
    (void)lp_launch_pdl(pdl, grid, block, 0, stream, __VA_ARGS__, LP_DEV_UNPAREN args)
#define LP_LAUNCH_PDL_SMEM(pdl, grid, block, smem, stream, args, ...)                             \
    (void)lp_launch_pdl(pdl, grid, block, smem, stream, __VA_ARGS__, LP_DEV_UNPAREN args)
#define LP_DEV_UNPAREN(...) __VA_ARGS__
// A kernel's dynamic shared memory (at most `bytes`, as launched).
#define LP_DYN_SMEM(name, bytes) extern __shared__ __align__(16) unsigned char name[]
#endif

// Waits until the kernels this one depends on have finished and their
// writes are visible (a no-op when the launch was not a PDL one).
static __device__ __forceinline__ void griddep_wait() {
#ifndef LP_CUDA_EMU
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Lets the next kernel of the stream start launching (its blocks then wait
// in griddep_wait): called first thing, so that its weight prefetches overlap
// this kernel's tail.
static __device__ __forceinline__ void griddep_launch_dependents() {
#ifndef LP_CUDA_EMU
    asm volatile("griddepcontrol.launch_dependents;");
#endif
}

// Asks for the 128-byte line at p to be brought into L2 (no register, no wait).
static __device__ __forceinline__ void prefetch_l2(const void *p) {
#ifndef LP_CUDA_EMU
    asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
#endif
}

// 16 bytes from global src to shared dst (both 16-byte aligned) without
// registers or a wait: cp_async_commit closes a group of such copies, and
// cp_async_wait<N> waits until at most N groups are still in flight (the
// emulation copies at once).
static __device__ __forceinline__ void cp_async16(void *dst, const void *src) {
#ifdef LP_CUDA_EMU
    memcpy(dst, src, 16);
#else
    const unsigned d = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(d), "l"(src) : "memory");
#endif
}
static __device__ __forceinline__ void cp_async_commit() {
#ifndef LP_CUDA_EMU
    asm volatile("cp.async.commit_group;" ::: "memory");
#endif
}
template <int N> static __device__ __forceinline__ void cp_async_wait() {
#ifndef LP_CUDA_EMU
    asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
#endif
}

// a, b or c by j (0, 1, else 2), for kernels that serve up to three matrices.
template <class T>
static __device__ __forceinline__ T pick3(int j, const T &a, const T &b, const T &c) {
    return j == 0 ? a : j == 1 ? b : c;
}

// Every element of a register array (constant indices once unrolled) to 0.
template <int A, int B, int C>
static __device__ __forceinline__ void zero3(float (&v)[A][B][C]) {
#pragma unroll
    for (int i = 0; i < A; i++)
#pragma unroll
        for (int j = 0; j < B; j++)
#pragma unroll
            for (int k = 0; k < C; k++)
                v[i][j][k] = 0.0f;
}

static __device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1)
        v = __fadd_rn(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

static __device__ __forceinline__ float bf16_bits(uint32_t h) {
    return __uint_as_float(h << 16);
}

static __device__ __forceinline__ float f16_bits(uint32_t h) {
    return __half2float(__ushort_as_half((unsigned short)h));
}

static __device__ __forceinline__ float half_at(const uint16_t *p, int64_t i, bool bf) {
    uint32_t h = p[i];
    return bf ? bf16_bits(h) : f16_bits(h);
}

// Two floats rounded to bf16 (nearest even) in one register, a in the low half.
static __device__ __forceinline__ uint32_t pack_bf16(float a, float b) {
#ifdef LP_CUDA_EMU
    return (uint32_t)lp_f32_to_bf16(a) | (uint32_t)lp_f32_to_bf16(b) << 16;
#else
    __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
    return *reinterpret_cast<uint32_t *>(&h);
#endif
}

// a = hi + lo to about 2^-17 relative: hi = bf16(a), lo = bf16(a - hi)
// (a - hi is exact in float), for a pair of floats.
static __device__ __forceinline__ void split_bf16(float a, float b, uint32_t &hi, uint32_t &lo) {
    hi = pack_bf16(a, b);
    lo = pack_bf16(__fsub_rn(a, bf16_bits(hi & 0xffffu)), __fsub_rn(b, bf16_bits(hi >> 16)));
}

// Both bf16 halves of v times both halves of m (round to nearest; exact
// where the products are, as they are here: small integers times a power
// of two, including subnormal inputs, which bf16 arithmetic keeps).
static __device__ __forceinline__ uint32_t mul_bf16x2(uint32_t v, uint32_t m) {
#ifdef LP_CUDA_EMU
    float a0 = bf16_bits(v & 0xffffu), a1 = bf16_bits(v >> 16);
    float m0 = bf16_bits(m & 0xffffu), m1 = bf16_bits(m >> 16);
    return pack_bf16(a0 * m0, a1 * m1);
#else
    uint32_t d;
    asm("mul.rn.bf16x2 %0, %1, %2;" : "=r"(d) : "r"(v), "r"(m));
    return d;
#endif
}

#ifdef LP_CUDA_EMU
void lp_emu_mma_bf16(float d[4], const uint32_t a[4], const uint32_t b[2]);
#endif

// d += A (16x16, bf16, row) x B (16x8, bf16, col) in float: the m16n8k16
// tensor-core product of one warp. Lane l = 4 g + t holds A row g at the k
// pairs {2t, 2t+1} (a[0]) and {2t+8, 2t+9} (a[2]), row g + 8 at the same
// pairs (a[1], a[3]), B column g at those pairs (b[0], b[1]; the lower k in
// the low half), and D rows g (d[0], d[1]) and g + 8 (d[2], d[3]) at
// columns 2t, 2t + 1. Each D element is its own dot product: a column's
// result does not depend on the other columns (batch invariance rests on it).
static __device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4],
                                                const uint32_t (&b)[2]) {
#ifdef LP_CUDA_EMU
    lp_emu_mma_bf16(d, a, b);
#else
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

#endif
