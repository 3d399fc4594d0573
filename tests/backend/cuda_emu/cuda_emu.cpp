// SPDX-License-Identifier: MIT
// cuda_emu.cpp -- the emulated CUDA runtime of cuda_runtime.h: host memory,
// streams that run work at once (or record it while capturing), graphs as
// lists of recorded launches, and a fiber scheduler that runs a block's
// threads on one OS thread. A fiber runs until it reaches a barrier
// (__syncthreads: every live thread of the block; a warp shuffle: every
// live lane of its warp); when no fiber can run, complete barriers open.
// Warp shuffles exchange through two buffers used alternately, so that one
// barrier per shuffle suffices. A barrier that can never open is reported
// and the process exits (test code only).
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <ucontext.h>

#include <vector>

#include "cuda_runtime.h"

uint3 threadIdx, blockIdx;
dim3 blockDim, gridDim;

namespace {

enum fiber_state { F_READY, F_WARP, F_BLOCK, F_DONE };

// Context switches: on x86-64 a few instructions (callee-saved registers and
// the stack pointer; swapcontext would also make a signal-mask system call
// each time); elsewhere ucontext.
#if defined(__x86_64__)
extern "C" void lp_emu_switch(void **save_sp, void *load_sp);
asm(".text\n"
    ".globl lp_emu_switch\n"
    ".type lp_emu_switch,@function\n"
    "lp_emu_switch:\n"
    "  pushq %rbp\n  pushq %rbx\n  pushq %r12\n  pushq %r13\n  pushq %r14\n  pushq %r15\n"
    "  movq %rsp, (%rdi)\n"
    "  movq %rsi, %rsp\n"
    "  popq %r15\n  popq %r14\n  popq %r13\n  popq %r12\n  popq %rbx\n  popq %rbp\n"
    "  ret\n"
    ".size lp_emu_switch, .-lp_emu_switch\n");
struct fiber_ctx {
    void *sp;
};
#else
struct fiber_ctx {
    ucontext_t uc;
};
#endif

struct fiber {
    fiber_ctx ctx;
    char *stack;
    fiber_state state;
    int shuffles; // shuffles made (picks the exchange buffer)
};

const int MAX_THREADS = 1024, STACK_BYTES = 128 << 10;
fiber fibers[MAX_THREADS];
fiber_ctx sched_ctx;
int n_fib, cur;
const std::function<void()> *cur_fn;
uint32_t warp_buf[2][MAX_THREADS];
uint64_t warp_buf64[2][MAX_THREADS];

void to_fiber(int i) {
#if defined(__x86_64__)
    lp_emu_switch(&sched_ctx.sp, fibers[i].ctx.sp);
#else
    swapcontext(&sched_ctx.uc, &fibers[i].ctx.uc);
#endif
}

void to_scheduler() {
#if defined(__x86_64__)
    lp_emu_switch(&fibers[cur].ctx.sp, sched_ctx.sp);
#else
    swapcontext(&fibers[cur].ctx.uc, &sched_ctx.uc);
#endif
}

void fiber_main() {
    (*cur_fn)();
    fibers[cur].state = F_DONE;
    to_scheduler(); // never resumed
    abort();
}

void fiber_start(fiber &f) {
#if defined(__x86_64__)
    uintptr_t top = ((uintptr_t)f.stack + STACK_BYTES) & ~(uintptr_t)15;
    void **sp = (void **)top;
    *--sp = NULL;               // fiber_main's return address (never used)
    *--sp = (void *)fiber_main; // where lp_emu_switch's ret goes
    for (int i = 0; i < 6; i++)
        *--sp = NULL; // rbp rbx r12..r15
    f.ctx.sp = sp;
#else
    getcontext(&f.ctx.uc);
    f.ctx.uc.uc_stack.ss_sp = f.stack;
    f.ctx.uc.uc_stack.ss_size = STACK_BYTES;
    f.ctx.uc.uc_link = NULL;
    makecontext(&f.ctx.uc, fiber_main, 0);
#endif
}

void yield_as(fiber_state st) {
    fibers[cur].state = st;
    to_scheduler();
}

// Opens complete barriers; false when none could open.
bool open_barriers() {
    bool opened = false;
    // warps
    for (int w0 = 0; w0 < n_fib; w0 += 32) {
        int w1 = w0 + 32 < n_fib ? w0 + 32 : n_fib, waiting = 0, live = 0;
        for (int i = w0; i < w1; i++) {
            if (fibers[i].state != F_DONE) live++;
            if (fibers[i].state == F_WARP) waiting++;
        }
        if (live > 0 && waiting == live) {
            for (int i = w0; i < w1; i++)
                if (fibers[i].state == F_WARP) fibers[i].state = F_READY;
            opened = true;
        }
    }
    if (opened) return true;
    int waiting = 0, live = 0;
    for (int i = 0; i < n_fib; i++) {
        if (fibers[i].state != F_DONE) live++;
        if (fibers[i].state == F_BLOCK) waiting++;
    }
    if (live > 0 && waiting == live) {
        for (int i = 0; i < n_fib; i++)
            if (fibers[i].state == F_BLOCK) fibers[i].state = F_READY;
        return true;
    }
    return false;
}

void run_block(const std::function<void()> &fn) {
    cur_fn = &fn;
    for (int i = 0; i < n_fib; i++) {
        fiber &f = fibers[i];
        if (!f.stack) f.stack = (char *)malloc(STACK_BYTES);
        fiber_start(f);
        f.state = F_READY;
        f.shuffles = 0;
    }
    for (;;) {
        bool ran = false;
        for (int i = 0; i < n_fib; i++) {
            if (fibers[i].state != F_READY) continue;
            cur = i;
            threadIdx = uint3{(unsigned)i % blockDim.x, (unsigned)(i / blockDim.x) % blockDim.y,
                              (unsigned)(i / (blockDim.x * blockDim.y))};
            to_fiber(i);
            ran = true;
        }
        if (ran) continue;
        bool all_done = true;
        for (int i = 0; i < n_fib; i++)
            all_done = all_done && fibers[i].state == F_DONE;
        if (all_done) return;
        if (!open_barriers()) {
            fprintf(stderr,
                    "cuda_emu: block (%u, %u): barrier that can never open (a thread "
                    "left while others wait)\n",
                    blockIdx.x, blockIdx.y);
            exit(3);
        }
    }
}

void run_grid(dim3 grid, dim3 block, const std::function<void()> &fn) {
    gridDim = grid;
    blockDim = block;
    n_fib = (int)(block.x * block.y * block.z);
    if (n_fib > MAX_THREADS || n_fib <= 0) {
        fprintf(stderr, "cuda_emu: %d threads per block\n", n_fib);
        exit(3);
    }
    for (unsigned z = 0; z < grid.z; z++)
        for (unsigned y = 0; y < grid.y; y++)
            for (unsigned x = 0; x < grid.x; x++) {
                blockIdx = uint3{x, y, z};
                run_block(fn);
            }
}

} // namespace

struct lp_emu_stream {
    bool capturing;
    std::vector<std::function<void()>> rec;
    std::vector<std::pair<dim3, dim3>> cfg;
};
struct lp_emu_graph {
    std::vector<std::function<void()>> rec;
    std::vector<std::pair<dim3, dim3>> cfg;
};
struct lp_emu_event {
    double t;
};

static cudaError_t last_error = cudaSuccess;

static cudaError_t fail(cudaError_t e) {
    last_error = e;
    return e;
}

void lp_emu_submit(dim3 grid, dim3 block, cudaStream_t s, std::function<void()> fn) {
    if (grid.x == 0 || grid.y == 0 || grid.z == 0 || block.x * block.y * block.z > 1024) {
        fail(cudaErrorInvalidValue);
        return;
    }
    if (s && s->capturing) {
        s->rec.push_back(std::move(fn));
        s->cfg.push_back({grid, block});
        return;
    }
    run_grid(grid, block, fn);
}

void __syncthreads(void) {
    yield_as(F_BLOCK);
}
void __syncwarp(unsigned mask) {
    yield_as(F_WARP);
}

float __shfl_xor_sync(unsigned mask, float v, int lane_mask) {
    int me = cur, buf = fibers[me].shuffles++ & 1;
    memcpy(&warp_buf[buf][me], &v, 4);
    yield_as(F_WARP);
    int other = (me & ~31) | ((me & 31) ^ lane_mask);
    float r;
    memcpy(&r, &warp_buf[buf][other < n_fib ? other : me], 4);
    return r;
}

uint64_t lp_emu_shfl64(uint64_t v, int src_lane) {
    int me = cur, buf = fibers[me].shuffles++ & 1;
    warp_buf64[buf][me] = v;
    yield_as(F_WARP);
    int other = (me & ~31) | (src_lane & 31);
    return warp_buf64[buf][other < n_fib ? other : me];
}

// The m16n8k16 bf16 product of backend/cuda/device.h's mma_bf16: every lane
// leaves its fragments, and after the warp's barrier computes its own four
// outputs, each C plus 16 products in k order (one float rounding each).
void lp_emu_mma_bf16(float d[4], const uint32_t a[4], const uint32_t b[2]) {
    static uint32_t frag[2][MAX_THREADS][6];
    int me = cur, buf = fibers[me].shuffles++ & 1;
    memcpy(frag[buf][me], a, 16);
    memcpy(frag[buf][me] + 4, b, 8);
    yield_as(F_WARP);
    const int w0 = me & ~31, lane = me & 31, g = lane >> 2, t = lane & 3;
    auto half = [](uint32_t r, int k) {
        uint32_t h = k & 1 ? r >> 16 : r & 0xffffu;
        uint32_t u = h << 16;
        float f;
        memcpy(&f, &u, 4);
        return f;
    };
    for (int o = 0; o < 4; o++) {
        int row = g + (o >= 2 ? 8 : 0), col = 2 * t + (o & 1);
        float acc = d[o];
        for (int k = 0; k < 16; k++) {
            int al = w0 + (row % 8) * 4 + (k % 8) / 2; // lane holding A[row][k]
            int ar = (row >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0);
            int bl = w0 + col * 4 + (k % 8) / 2; // lane holding B[k][col]
            int br = k >= 8 ? 1 : 0;
            float av = half(frag[buf][al < n_fib ? al : me][ar], k);
            float bv = half(frag[buf][bl < n_fib ? bl : me][4 + br], k);
            acc = fmaf(av, bv, acc);
        }
        d[o] = acc;
    }
}

unsigned __reduce_xor_sync(unsigned mask, unsigned v) {
    int me = cur, buf = fibers[me].shuffles++ & 1;
    warp_buf[buf][me] = v;
    yield_as(F_WARP);
    unsigned r = 0;
    for (int i = me & ~31; i < (me & ~31) + 32 && i < n_fib; i++)
        r ^= warp_buf[buf][i];
    return r;
}

cudaError_t cudaGetLastError(void) {
    cudaError_t e = last_error;
    last_error = cudaSuccess;
    return e;
}
const char *cudaGetErrorString(cudaError_t e) {
    return e ? "emulated CUDA error" : "no error";
}
const char *cudaGetErrorName(cudaError_t e) {
    return e ? "cudaErrorEmulated" : "cudaSuccess";
}
cudaError_t cudaGetDeviceCount(int *n) {
    *n = 1;
    return cudaSuccess;
}
cudaError_t cudaSetDevice(int d) {
    return d == 0 ? cudaSuccess : fail(cudaErrorInvalidValue);
}
cudaError_t cudaGetDevice(int *d) {
    *d = 0;
    return cudaSuccess;
}
cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int d) {
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "CPU emulation");
    p->major = 9;
    p->multiProcessorCount = 2; // few: the persistent grids loop over many tiles a block
    return cudaSuccess;
}
cudaError_t cudaMemGetInfo(size_t *free_b, size_t *total_b) {
    *free_b = (size_t)1 << 30;
    *total_b = (size_t)2 << 30;
    return cudaSuccess;
}
cudaError_t cudaMalloc(void **p, size_t bytes) {
    *p = aligned_alloc(256, (bytes + 255) / 256 * 256);
    if (!*p) return fail(cudaErrorMemoryAllocation);
    memset(*p, 0xa5, bytes); // like device memory: not zero
    return cudaSuccess;
}
cudaError_t cudaMallocHost(void **p, size_t bytes) {
    return cudaMalloc(p, bytes);
}
cudaError_t cudaFree(void *p) {
    free(p);
    return cudaSuccess;
}
cudaError_t cudaFreeHost(void *p) {
    return cudaFree(p);
}
cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, cudaMemcpyKind k) {
    memcpy(dst, src, bytes);
    return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind k,
                            cudaStream_t s) {
    if (s && s->capturing) return fail(cudaErrorStreamCaptureUnsupported); // not used in steps
    memcpy(dst, src, bytes);
    return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void *dst, int v, size_t bytes, cudaStream_t s) {
    memset(dst, v, bytes);
    return cudaSuccess;
}
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned flags) {
    *s = new lp_emu_stream{};
    return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t s) {
    delete s;
    return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t s) {
    return s && s->capturing ? fail(cudaErrorStreamCaptureUnsupported) : cudaSuccess;
}
cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode m) {
    if (s->capturing) return fail(cudaErrorInvalidValue);
    s->capturing = true;
    s->rec.clear();
    s->cfg.clear();
    return cudaSuccess;
}
cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t *g) {
    if (!s->capturing) return fail(cudaErrorInvalidValue);
    s->capturing = false;
    *g = new lp_emu_graph{std::move(s->rec), std::move(s->cfg)};
    return cudaSuccess;
}
cudaError_t cudaGraphInstantiate(cudaGraphExec_t *e, cudaGraph_t g, unsigned long long flags) {
    *e = new lp_emu_graph(*g);
    return cudaSuccess;
}
cudaError_t cudaGraphLaunch(cudaGraphExec_t e, cudaStream_t s) {
    if (s->capturing) return fail(cudaErrorStreamCaptureUnsupported);
    for (size_t i = 0; i < e->rec.size(); i++)
        run_grid(e->cfg[i].first, e->cfg[i].second, e->rec[i]);
    return cudaSuccess;
}
cudaError_t cudaGraphDestroy(cudaGraph_t g) {
    delete g;
    return cudaSuccess;
}
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t e) {
    delete e;
    return cudaSuccess;
}
cudaError_t cudaEventCreate(cudaEvent_t *e) {
    *e = new lp_emu_event{0};
    return cudaSuccess;
}
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned flags) {
    return cudaEventCreate(e);
}
cudaError_t cudaEventDestroy(cudaEvent_t e) {
    delete e;
    return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    e->t = ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
    return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t e) {
    return cudaSuccess;
}
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t a, cudaEvent_t b) {
    *ms = (float)(b->t - a->t);
    if (*ms <= 0) *ms = 1e-3f;
    return cudaSuccess;
}
