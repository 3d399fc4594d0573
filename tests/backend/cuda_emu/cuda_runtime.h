// SPDX-License-Identifier: MIT
// cuda_runtime.h (emulated) -- just enough of the CUDA runtime and device
// language for src/backend/cuda to compile as plain C++ and run on the CPU,
// so that machines without a GPU (CI) still check the backend's kernels and
// host logic against ref: indexing, reductions, the index blocks, and CUDA
// graph recording (a captured launch keeps its arguments; replay runs them).
// A block's threads are fibers (ucontext) on one OS thread, switched at
// __syncthreads and warp shuffles; blocks run one after another; __shared__
// variables are function statics. Memory is host memory; launches outside a
// capture run at once. Not emulated: timing, concurrency between blocks.
#ifndef LP_CUDA_EMU_RUNTIME_H
#define LP_CUDA_EMU_RUNTIME_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include <functional>
#include <tuple>
#include <utility>

#define LP_CUDA_EMU 1 // kernels pick their emulated helpers (backend/cuda/device.h)
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)

struct uint3 {
    unsigned x, y, z;
};
struct dim3 {
    unsigned x, y, z;
    dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint2 {
    unsigned x, y;
};
struct uint4 {
    unsigned x, y, z, w;
};
struct float4 {
    float x, y, z, w;
};

extern uint3 threadIdx, blockIdx;
extern dim3 blockDim, gridDim;

enum cudaError_t {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorStreamCaptureUnsupported = 900,
    cudaErrorStreamCaptureInvalidated = 901,
};
typedef struct lp_emu_stream *cudaStream_t;
typedef struct lp_emu_event *cudaEvent_t;
typedef struct lp_emu_graph *cudaGraph_t;
typedef struct lp_emu_graph *cudaGraphExec_t;
enum cudaMemcpyKind { cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost, cudaMemcpyDeviceToDevice };
enum cudaStreamCaptureMode { cudaStreamCaptureModeThreadLocal };
#define cudaStreamNonBlocking 1u
#define cudaEventDisableTiming 2u
struct cudaDeviceProp {
    char name[256];
    int major, minor;
    int multiProcessorCount;
};

cudaError_t cudaGetLastError(void);
const char *cudaGetErrorString(cudaError_t e);
const char *cudaGetErrorName(cudaError_t e);
cudaError_t cudaGetDeviceCount(int *n);
cudaError_t cudaSetDevice(int d);
cudaError_t cudaGetDevice(int *d);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int d);
cudaError_t cudaMemGetInfo(size_t *free_b, size_t *total_b);
cudaError_t cudaMalloc(void **p, size_t bytes);
template <class T> static inline cudaError_t cudaMalloc(T **p, size_t bytes) {
    return cudaMalloc((void **)p, bytes);
}
cudaError_t cudaMallocHost(void **p, size_t bytes);
template <class T> static inline cudaError_t cudaMallocHost(T **p, size_t bytes) {
    return cudaMallocHost((void **)p, bytes);
}
cudaError_t cudaFree(void *p);
cudaError_t cudaFreeHost(void *p);
cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, cudaMemcpyKind k);
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind k,
                            cudaStream_t s);
cudaError_t cudaMemsetAsync(void *dst, int v, size_t bytes, cudaStream_t s);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t s);
cudaError_t cudaStreamSynchronize(cudaStream_t s);
cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode m);
cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t *g);
cudaError_t cudaGraphInstantiate(cudaGraphExec_t *e, cudaGraph_t g, unsigned long long flags);
cudaError_t cudaGraphLaunch(cudaGraphExec_t e, cudaStream_t s);
cudaError_t cudaGraphDestroy(cudaGraph_t g);
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t e);
cudaError_t cudaEventCreate(cudaEvent_t *e);
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned flags);
cudaError_t cudaEventDestroy(cudaEvent_t e);
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s);
cudaError_t cudaEventSynchronize(cudaEvent_t e);
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t a, cudaEvent_t b);

// Kernels' attributes: dynamic shared memory is a static buffer here.
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize };
template <class F> static inline cudaError_t cudaFuncSetAttribute(F, cudaFuncAttribute, int) {
    return cudaSuccess;
}

// Runs (or, while s captures, records) grid x block threads of fn.
void lp_emu_submit(dim3 grid, dim3 block, cudaStream_t s, std::function<void()> fn);

template <class... P, class... A>
static inline void lp_emu_launch(dim3 grid, dim3 block, cudaStream_t s, void (*k)(P...), A &&...a) {
    std::tuple<typename std::decay<P>::type...> args(std::forward<A>(a)...);
    lp_emu_submit(grid, block, s, [k, args]() { std::apply(k, args); });
}
#define LP_EMU_UNPAREN(...) __VA_ARGS__
#define LP_LAUNCH(grid, block, stream, args, ...)                                                  \
    lp_emu_launch(grid, block, stream, &__VA_ARGS__, LP_EMU_UNPAREN args)

// device-side
void __syncthreads(void);
void __syncwarp(unsigned mask = 0xffffffffu);
float __shfl_xor_sync(unsigned mask, float v, int lane_mask);
uint64_t lp_emu_shfl64(uint64_t v, int src_lane);
template <class T> static inline T __shfl_sync(unsigned mask, T v, int src_lane) {
    static_assert(sizeof(T) <= 8, "shuffle of at most 8 bytes");
    uint64_t u = 0;
    memcpy(&u, &v, sizeof v);
    u = lp_emu_shfl64(u, src_lane);
    T r;
    memcpy(&r, &u, sizeof r);
    return r;
}
unsigned __reduce_xor_sync(unsigned mask, unsigned v);
static inline float __fadd_rn(float a, float b) {
    return a + b;
}
static inline float __fsub_rn(float a, float b) {
    return a - b;
}
static inline float __fmul_rn(float a, float b) {
    return a * b;
}
static inline float __fdiv_rn(float a, float b) {
    return a / b;
}
static inline float __fmaf_rn(float a, float b, float c) {
    return fmaf(a, b, c);
}
static inline float __uint_as_float(unsigned u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}
template <class T> static inline T __ldg(const T *p) {
    return *p;
}
template <class T> static inline T __ldcs(const T *p) {
    return *p;
}
template <class T> static inline T __ldcg(const T *p) {
    return *p;
}
// Blocks run one after another: no other block is running to race with.
static inline int atomicAdd(int *p, int v) {
    int old = *p;
    *p = old + v;
    return old;
}
static inline void __threadfence(void) {}
static inline int min(int a, int b) {
    return a < b ? a : b;
}
static inline int max(int a, int b) {
    return a > b ? a : b;
}

#endif
