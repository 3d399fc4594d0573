// SPDX-License-Identifier: MIT
// cuda.cu -- the CUDA backend: struct lp_backend_i on one GPU. Buffers and
// weights are device allocations (weights in their stored format); every
// compute slot queues kernels (kernels.cu) on the backend's one stream and
// returns at once; the first failing CUDA call is kept (status + message)
// and reported by sync. Index arrays arrive once per batch (batch_setup):
// they are packed into a pinned host block and copied in one transfer to a
// device block of fixed layout (capacities T tokens, S segments, B block
// table entries; int32 offsets):
//   ids @0, pos @T, slot @2T, qpos @3T, row_seg @4T, rows @5T,
//   seg_off @6T, seg_nblk @6T+S, bt @6T+2S
// so that a decode step's kernels read them at fixed addresses and the step
// can be captured as a CUDA graph (step_begin/step_end: a key seen once runs
// directly, the second time it is captured, afterwards replayed). Freeing a
// buffer or growing a device block drops every graph (they hold pointers).
// Products of bf16 and MLX weights run on the tensor cores (matmul_tc.cu);
// an rmsnorm and a decode batch's qk step are held back one call and folded
// into the kernel after them (struct cuda_pending). Switches (=1):
// LP_CUDA_NO_GRAPHS (read each step), and, read at create, LP_CUDA_NO_PDL
// (plain launches), LP_CUDA_NO_FOLD, LP_CUDA_NO_TC (CUDA-core products),
// LP_CUDA_NO_PERSIST (the products' grid one block a tile, no split: the
// same bits); LP_CUDA_ATTN_ROWS=N (attention's query rows a block, the same
// bits; default 8 for a prefill, 1 for a decode batch); LP_CUDA_TIMING
// prints the host's share of replayed steps.
#include <cuda_runtime.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

extern "C" {
#include "backend/backend_i.h"
#include "layerpipe/convert.h"
}
#include "backend/cuda/internal.h"

#define CUDA_MAX_GRAPHS 128

struct lp_buf {
    void *d;      // device memory
    size_t bytes; // usable bytes
};

struct lp_bweight {
    struct lp_cuda_weight k; // what kernels see (device pointers)
    void *mem;               // one allocation: data, then scales, then biases
};

struct cuda_graph {
    struct lp_step_key key;
    int seen;             // times the key ran without a recording
    cudaGraphExec_t exec; // NULL until recorded
};

// Where the current batch's arrays live (batch_setup); valid until the next,
// or the next sync.
struct cuda_batch {
    bool valid;
    int n_tokens, n_rows, n_segs;
    const int32_t *ids, *pos, *slot, *rows; // the host pointers the engine passes
    const struct lp_attn_seg *segs;
};

// A step held back for one call, so that the call after it can fold it in:
// an rmsnorm of model-width rows (into the matrix product that reads its
// output: lp_cuda_mm's norm) or a decode batch's qk_norm_rope_store (into
// attention: lp_cuda_attn_qk; exact where no sequence of the batch reads
// another's new cache rows, as in the engine's batches). Any other call
// first runs it as it is (cuda_flush), so every call still sees what the
// steps wrote.
enum { PEND_NONE, PEND_NORM, PEND_QK };
struct cuda_pending {
    int kind;
    struct lp_buf *out; // NORM: out, x, weight; QK: q, k, v, q_norm, k_norm, caches
    const struct lp_buf *x, *weight;
    int n_rows, dim;
    float eps;
    struct lp_buf *q, *k, *k_cache, *v_cache;
    const struct lp_buf *v, *q_norm, *k_norm;
    struct lp_kv_geom geom;
    int n, n_heads;
    float theta;
};

// Mutated only by the thread calling the backend (one at a time).
struct cuda_ctx {
    int device;
    char name[32]; // "cuda:N"
    char gpu[64];  // cudaDeviceProp.name (shortened)
    cudaStream_t stream;
    enum lp_status status; // first failure since the last sync
    char msg[256];
    // batch index block (layout above)
    int32_t *ix_h, *ix_d;
    int cap_t, cap_s, cap_b;
    cudaEvent_t ix_done; // the last copy out of ix_h finished
    struct cuda_batch cur;
    // arrays of a call that did not come through batch_setup
    int32_t *adhoc_h, *adhoc_d;
    size_t adhoc_cap; // int32 elements of both
    float *attn_scratch;
    size_t attn_scratch_floats;
    int *attn_cnt; // [attn_cnt_n] attention's finished-split counters, zero between launches
    size_t attn_cnt_n;
    void *mm_scratch; // the products' x made ready for the mma, partials (lp_cuda_mm_plan)
    size_t mm_scratch_bytes;
    bool pdl; // kernels launched with programmatic dependent launch (LP_CUDA_NO_PDL=1: off)
    bool fold; // steps folded into the next (cuda_pending; LP_CUDA_NO_FOLD=1: off)
    bool tc;   // bf16 / MLX products on the tensor cores (LP_CUDA_NO_TC=1: CUDA cores)
    int n_sm;  // multiprocessors, for the products' persistent grid (LP_CUDA_NO_PERSIST=1: 0)
    int attn_rows; // attention's query rows a block (LP_CUDA_ATTN_ROWS; 0: 8 for a prefill, else 1)
    struct cuda_pending pend;
    float *inv_freq; // [inv_hd / 2] for rope
    float inv_theta;
    int inv_hd;
    struct cuda_graph graphs[CUDA_MAX_GRAPHS];
    int n_graphs;
    int capturing; // index into graphs + 1 while recording, else 0
    double read_gb_s;
    // LP_CUDA_TIMING=1: each replayed step's GPU time (events around the
    // replay) against the wall time from one replay to the next, printed
    // when the backend is destroyed: the host's share of a decode step
    bool timing, tm_open;
    cudaEvent_t tm_ev[2];
    double tm_gpu_ms, tm_wall_ms, tm_t0;
    long tm_n;
};

static double cuda_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void cuda_fail(struct cuda_ctx *c, enum lp_status st, const char *fmt, ...) {
    if (c->status != LP_OK) return;
    c->status = st;
    int off = snprintf(c->msg, sizeof c->msg, "%s: ", c->name);
    va_list ap;
    va_start(ap, fmt);
    if (off > 0 && (size_t)off < sizeof c->msg)
        vsnprintf(c->msg + off, sizeof c->msg - off, fmt, ap);
    va_end(ap);
}

// Records a failed CUDA call (what: the operation); true when e is success.
static bool cuda_ok(struct cuda_ctx *c, cudaError_t e, const char *what) {
    if (e == cudaSuccess) return true;
    cuda_fail(c, LP_ERR_DEVICE, "%s: %s (%s)", what, cudaGetErrorString(e), cudaGetErrorName(e));
    return false;
}

// The same, as a status now (for slots that return one).
static enum lp_status cuda_err(struct cuda_ctx *c, cudaError_t e, const char *what,
                               struct lp_error *err) {
    if (e == cudaSuccess) return LP_OK;
    return lp_error_set(err, LP_ERR_DEVICE, "%s: %s: %s (%s)", c->name, what, cudaGetErrorString(e),
                        cudaGetErrorName(e));
}

static void cuda_flush(struct cuda_ctx *c);

static void cuda_drop_graphs(struct cuda_ctx *c) {
    for (int i = 0; i < c->n_graphs; i++) {
        if (c->graphs[i].exec) cudaGraphExecDestroy(c->graphs[i].exec);
        c->graphs[i].exec = NULL;
    }
}

static const char *cuda_name(void *ctx) {
    return ((struct cuda_ctx *)ctx)->name;
}
static int cuda_n_threads(void *ctx) {
    return 1;
}

static void cuda_destroy(void *ctx) {
    struct cuda_ctx *c = (struct cuda_ctx *)ctx;
    if (!c) return;
    cudaSetDevice(c->device);
    if (c->stream) cudaStreamSynchronize(c->stream);
    if (c->tm_n > 0)
        fprintf(stderr,
                "%s: %ld replayed steps: %.3f ms on the GPU each, %.3f ms from one to the next "
                "(host share %.0f%%)\n",
                c->name, c->tm_n, c->tm_gpu_ms / c->tm_n, c->tm_wall_ms / c->tm_n,
                100.0 * (1.0 - c->tm_gpu_ms / c->tm_wall_ms));
    if (c->timing) cudaEventDestroy(c->tm_ev[0]), cudaEventDestroy(c->tm_ev[1]);
    cuda_drop_graphs(c);
    cudaFreeHost(c->ix_h);
    cudaFree(c->ix_d);
    cudaFree(c->adhoc_d);
    free(c->adhoc_h);
    cudaFree(c->attn_scratch);
    cudaFree(c->attn_cnt);
    cudaFree(c->mm_scratch);
    cudaFree(c->inv_freq);
    if (c->ix_done) cudaEventDestroy(c->ix_done);
    if (c->stream) cudaStreamDestroy(c->stream);
    free(c);
}

// ---- memory ----------------------------------------------------------------

static enum lp_status cuda_buf_alloc(void *ctx, size_t bytes, struct lp_buf **out,
                                     struct lp_error *err) {
    struct cuda_ctx *c = (struct cuda_ctx *)ctx;
    *out = NULL;
    struct lp_buf *b = (struct lp_buf *)calloc(1, sizeof *b);
    if (!b) return lp_error_set(err, LP_ERR_NOMEM, "%s: buf_alloc: out of memory", c->name);
    cudaSetDevice(c->device);
    cudaError_t e = cudaMalloc(&b->d, bytes ? bytes : 1);
    if (e != cudaSuccess) {
        free(b);
        cudaGetLastError(); // an allocation failure is not sticky
        return lp_error_set(err, LP_ERR_NOMEM, "%s: buf_alloc: cudaMalloc of %zu bytes: %s",
                            c->name, bytes, cudaGetErrorString(e));
    }
    b->bytes = bytes;
    *out = b;
    return LP_OK;
}

static void cuda_buf_free(void *ctx, struct lp_buf *buf) {
    struct cuda_ctx *c = (struct cuda_ctx *)ctx;
    cuda_flush(c);
    if (!buf) return;
    cudaSetDevice(c->device);
    cuda_drop_graphs(c);
    cudaStreamSynchronize(c->stream); // queued work may still read it
    cuda_ok(c, cudaFree(buf->d), "cudaFree");
    free(buf);
}

static enum lp_status cuda_range(struct cuda_ctx *c, const char *op, const struct lp_buf *b,
                                 size_t offset, size_t bytes, struct lp_error *err) {
    if (!b) return lp_error_set(err, LP_ERR_INVALID_ARG, "%s: %s: NULL buffer", c->name, op);
    if (offset > b->bytes || bytes > b->bytes - offset)
        return lp_error_set(err, LP_ERR_INVALID_ARG,
                            "%s: %s: range [%zu, +%zu) outside a buffer of %zu bytes", c->name, op,
                            offset, bytes, b->bytes);
    return LP_OK;
}

// Host -> device. From pageable memory the copy is staged before the call
// returns, so src may be reused at once; stream order keeps it after the
// work queued before.
static enum lp_status cuda_buf_write(void *ctx, struct lp_buf *dst, size_t offset, const void *src,
                                     size_t bytes, struct lp_error *err) {
    struct cuda_ctx *c = (struct cuda_ctx *)ctx;
    cuda_flush(c);
    enum lp_status st = cuda_range(c, "buf_write", dst, offset, bytes, err);
    if (st != LP_OK || !bytes) return st;
    cudaSetDevice(c->device);
    return cuda_err(
        c, cudaMemcpyAsync((char *)dst->d + offset, src, bytes, cudaMemcpyHostToDevice, c->stream),
        "buf_write: cudaMemcpyAsync", err);
}

// Device -> host, after the queued work; returns when the bytes are there.
static enum lp_status cuda_buf_read(void *ctx, const struct lp_buf *src, size_t offset, void *dst,
                                    size_t bytes, struct lp_error *err) {
    struct cuda_ctx *c = (struct cuda_ctx *)ctx;
    cuda_flush(c);
    enum lp_status st = cuda_range(c, "buf_read", src, offset, bytes, err);
    if (st != LP_OK) return st;
    cudaSetDevice(c->device);
    if (bytes && (st = cuda_err(c,
                                cudaMemcpyAsync(dst, (const char *)src->d + offset, bytes,
                                                cudaMemcpyDeviceToHost, c->stream),
                                "buf_read: cudaMemcpyAsync", err)) != LP_OK)
        return st;
    return cuda_err(c, cudaStreamSynchronize(c->stream), "buf_read: cudaStreamSynchronize", err);
}

// Checks the weight (the same rules as the host backends) and sizes its buffers.
static enum lp_status cuda_weight_sizes(struct cuda_ctx *c, const struct lp_weight *w,
                                        size_t *data_bytes, size_t *scale_bytes,
                                        struct lp_error *err) {
    if (!w || !w->data)
        return lp_error_set(err, LP_ERR_INVALID_ARG, "%s: weight_upload: NULL weight", c->name);
    if (w->rows <= 0 || w->cols <= 0 || w->rows > INT32_MAX || w->cols > INT32_MAX)
        return lp_error_set(err, LP_ERR_INVALID_ARG,
                            "%s: weight_upload: shape [%lld, %lld], expected positive and < 2^31",
                            c->name, (long long)w->rows, (long long)w->cols);
    size_t n = (size_t)w->rows * (size_t)w->cols;
    *scale_bytes = 0;
    switch (w->format) {
    case LP_WEIGHT_F32:
        *data_bytes = n * 4;
        return LP_OK;
    case LP_WEIGHT_F16:
    case LP_WEIGHT_BF16:
        *data_bytes = n * 2;
        return LP_OK;
    case LP_WEIGHT_GGML: // dequantized to float32 on the way up (ggml_upload)
        if (lp_ggml_block_elems(w->ggml_type) == 0 ||
            w->cols % lp_ggml_block_elems(w->ggml_type) != 0)
            return lp_error_set(err, LP_ERR_UNSUPPORTED,
                                "%s: weight_upload: GGUF type %d with %lld columns", c->name,
                                (int)w->ggml_type, (long long)w->cols);
        *data_bytes = n * 4;
        return LP_OK;
    case LP_WEIGHT_MLX_AFFINE:
        if (w->bits != 4 && w->bits != 8)
            return lp_error_set(err, LP_ERR_UNSUPPORTED,
                                "%s: weight_upload: MLX affine bits %d, expected 4 or 8", c->name,
                                w->bits);
        if (w->group_size != 32 && w->group_size != 64 && w->group_size != 128)
            return lp_error_set(err, LP_ERR_UNSUPPORTED,
                                "%s: weight_upload: MLX group size %d, expected 32, 64 or 128",
                                c->name, w->group_size);
        if (w->cols % w->group_size != 0)
            return lp_error_set(err, LP_ERR_INVALID_ARG,
                                "%s: weight_upload: %lld columns, not a multiple of group %d",
                                c->name, (long long)w->cols, w->group_size);
        if (w->scale_dtype != LP_DTYPE_BF16 && w->scale_dtype != LP_DTYPE_F16)
            return lp_error_set(err, LP_ERR_UNSUPPORTED,
                                "%s: weight_upload: MLX scale dtype %d, expected BF16 or F16",
                                c->name, (int)w->scale_dtype);
        if (!w->scales || !w->biases)
            return lp_error_set(err, LP_ERR_INVALID_ARG,
                                "%s: weight_upload: MLX weight without scales or biases", c->name);
        *data_bytes = n / 8 * (size_t)w->bits;
        *scale_bytes = n / (size_t)w->group_size * 2;
        return LP_OK;
    }
    return lp_error_set(err, LP_ERR_UNSUPPORTED, "%s: weight_upload: weight format %d", c->name,
                        (int)w->format);
}

// GGUF blocks go up as float32, dequantized on the host a slice of rows at a
// time: the values the CPU kernels compute with, at 4 bytes a weight (block
// kernels of our own are left to do). cudaErrorMemoryAllocation when the
// host slice cannot be had.
static cudaError_t ggml_upload(const struct lp_weight *w, char *dst) {
    size_t row_in = lp_ggml_row_bytes(w->ggml_type, w->cols), row_out = (size_t)w->cols * 4;
    int64_t slice = (int64_t)((16u << 20) / row_out) + 1;
    if (slice > w->rows) slice = w->rows;
    float *buf = (float *)malloc((size_t)slice * row_out);
    if (!buf) return cudaErrorMemoryAllocation;
    cudaError_t e = cudaSuccess;
    for (int64_t r0 = 0; r0 < w->rows && e == cudaSuccess; r0 += slice) {
        int64_t n = w->rows - r0 < slice ? w->rows - r0 : slice;
        for (int64_t r = 0; r < n; r++)
            lp_ggml_dequantize_row(w->ggml_type, (const char *)w->data + (size_t)(r0 + r) * row_in,
                                   buf + (size_t)r * (size_t)w->cols, w->cols, NULL);
        e = cudaMemcpy(dst + (size_t)r0 * row_out, buf, (size_t)n * row_out, cudaMemcpyHostToDevice);
    }
    free(buf);
    return e;
}

static enum lp_status cuda_weight_upload(void *ctx, const struct lp_weight *w,
                                         struct lp_bweight **out, struct lp_error *err) {
    struct cuda_ctx *c = (struct cuda_ctx *)ctx;
    cuda_flush(c);
    *out = NULL;
    size_t db = 0, sb = 0;
    enum lp_status st = cuda_weight_sizes(c, w, &db, &sb, err);
    if (st != LP_OK) return st;
    struct lp_bweight *bw = (struct lp_bweight *)calloc(1, sizeof *bw);
    if (!bw) return lp_error_set(err, LP_ERR_NOMEM, "%s: weight_upload: out of memory", c->name);
    cudaSetDevice(c->device);
    size_t db_pad = (db + 255) / 256 * 256, sb_pad = (sb + 255) / 256 * 256;
    char *mem = NULL;
    cudaError_t e = cudaMalloc(&mem, db_pad + 2 * sb_pad);
    if (e != cudaSuccess) {
        free(bw);
        cudaGetLastError();
        return lp_error_set(err, LP_ERR_NOMEM,
                            "%s: weight_upload: cudaMalloc of %zu bytes for [%lld, %lld]: %s",
                            c->name, db_pad + 2 * sb_pad, (long long)w->rows, (long long)w->cols,
                            cudaGetErrorString(e));
    }
    bw->mem = mem;
    e = w->format == LP_WEIGHT_GGML ? ggml_upload(w, mem)
                                    : cudaMemcpy(mem, w->data, db, cudaMemcpyHostToDevice);
    if (e == cudaSuccess && sb) e = cudaMemcpy(mem + db_pad, w->scales, sb, cudaMemcpyHostToDevice);
    if (e == cudaSuccess && sb)
        e = cudaMemcpy(mem + db_pad + sb_pad, w->biases, sb, cudaMemcpyHostToDevice);
    if (e != cudaSuccess) {
        cudaFree(mem);
        free(bw);
        return cuda_err(c, e, "weight_upload: cudaMemcpy", err);
    }
    struct lp_cuda_weight *k = &bw->k;
    k->rows = (int)w->rows;
    k->cols = (int)w->cols;
    k->data = mem;
    switch (w->format) {
    case LP_WEIGHT_F32:
        k->fmt = LP_CUDA_FMT_F32;
        break;
    case LP_WEIGHT_F16:
        k->fmt = LP_CUDA_FMT_F16;
        break;
    case LP_WEIGHT_BF16:
        k->fmt = LP_CUDA_FMT_BF16;
        break;
    case LP_WEIGHT_MLX_AFFINE:
        k->fmt = w->bits == 8 ? LP_CUDA_FMT_Q8 : LP_CUDA_FMT_Q4;
        k->scales = (const uint16_t *)(mem + db_pad);
        k->biases = (const uint16_t *)(mem + db_pad + sb_pad);
        k->scale_bf16 = w->scale_dtype == LP_DTYPE_BF16;
        k->group = w->group_size;
        break;
    case LP_WEIGHT_GGML: // float32 on the device
        k->fmt = LP_CUDA_FMT_F32;
        break;
    }
    *out = bw;
    return LP_OK;
}

static void cuda_weight_free(void *ctx, struct lp_bweight *w) {
    struct cuda_ctx *c = (struct cuda_ctx *)ctx;
    cuda_flush(c);
    if (!w) return;
    cudaSetDevice(c->device);
    cuda_drop_graphs(c);
    cudaStreamSynchronize(c->stream);
    cuda_ok(c, cudaFree(w->mem), "cudaFree");
    free(w);
}

// ---- index arrays ------------------------------------------------------------

static size_t ix_elems(int t, int s, int b) {
    return 6 * (size_t)t + 2 * (size_t)s + (size_t)b;
}

static int grow_cap(int have, int need, int floor) {
    int cap = have > floor ? have : floor;
    while (cap < need)
        cap *= 2;
    return cap;
}

// Makes the index blocks hold t tokens, s segments and b table entries.
static enum lp_status cuda_ix_reserve(struct cuda_ctx *c, int t, int s, int b,
                                      struct lp_error *err) {
    if (c->ix_d && t <= c->cap_t && s <= c->cap_s && b <= c->cap_b) return LP_OK;
    if (c->capturing)
        return lp_error_set(err, LP_ERR_INTERNAL, "%s: index arrays grew while recording a step",
                            c->name);
    int ct = grow_cap(c->cap_t, t, 256), cs = grow_cap(c->cap_s, s, 64),
        cb = grow_cap(c->cap_b, b, 4096);
    enum lp_status st = cuda_err(c, cudaStreamSynchronize(c->stream), "cudaStreamSynchronize", err);
    if (st != LP_OK) return st;
    cuda_drop_graphs(c);
    cudaFreeHost(c->ix_h);
    cudaFree(c->ix_d);
    c->ix_h = NULL;
    c->ix_d = NULL;
    c->cap_t = c->cap_s = c->cap_b = 0;
    size_t bytes = ix_elems(ct, cs, cb) * sizeof(int32_t);
    if ((st = cuda_err(c, cudaMallocHost(&c->ix_h, bytes), "index arrays: cudaMallocHost", err)) !=
            LP_OK ||
        (st = cuda_err(c, cudaMalloc(&c->ix_d, bytes), "index arrays: cudaMalloc", err)) != LP_OK)
        return st;
    c->cap_t = ct;
    c->cap_s = cs;
    c->cap_b = cb;
    return LP_OK;
}

// Packs segments (and the query rows they cover) at base (layout: qpos, row_seg at
// 3T, 4T; seg_off, seg_nblk, bt at 6T...), with capacities t, s.
static void ix_pack_segs(int32_t *base, int ct, int cs, const struct lp_attn_seg *segs,
                         int n_segs) {
    int32_t *qpos = base + 3 * (size_t)ct, *row_seg = base + 4 * (size_t)ct;
    int32_t *seg_off = base + 6 * (size_t)ct, *seg_nblk = seg_off + cs, *bt = seg_off + 2 * cs;
    int row = 0, off = 0;
    for (int s = 0; s < n_segs; s++) {
        for (int i = 0; i < segs[s].n_tokens; i++, row++) {
            qpos[row] = segs[s].pos0 + i;
            row_seg[row] = s;
        }
        seg_off[s] = off;
        seg_nblk[s] = segs[s].n_blocks;
        if (segs[s].n_blocks > 0)
            memcpy(bt + off, segs[s].block_table, (size_t)segs[s].n_blocks * sizeof(int32_t));
        off += segs[s].n_blocks;
    }
}

static int segs_blocks(const struct lp_attn_seg *segs, int n_segs) {
    int b = 0;
    for (int s = 0; s < n_segs; s++)
        b += segs[s].n_blocks > 0 ? segs[s].n_blocks : 0;
    return b;
}

static enum lp_status cuda_batch_setup(void *ctx, const struct lp_batch_index *ix,
                                       struct lp_error *err) {
    struct cuda_ctx *c = (struct cuda_ctx *)ctx;
    cuda_flush(c);
    cudaSetDevice(c->device);
    c->cur.valid = false;
    int n = ix->n_tokens, nb = segs_blocks(ix->segs, ix->n_segs);
    int rows_t = ix->n_rows > n ? ix->n_rows : n;
    enum lp_status st = cuda_ix_reserve(c, rows_t, ix->n_segs, nb, err);
    if (st != LP_OK) return st;
    // the previous batch's copy must be out of ix_h before it is rewritten
    if ((st = cuda_err(c, cudaEventSynchronize(c->ix_done), "cudaEventSynchronize", err)) != LP_OK)
        return st;
    int32_t *h = c->ix_h;
    size_t T = (size_t)c->cap_t;
    if (ix->ids) memcpy(h, ix->ids, (size_t)n * 4);
    memcpy(h + T, ix->pos, (size_t)n * 4);
    memcpy(h + 2 * T, ix->slot, (size_t)n * 4);
    if (ix->n_rows > 0) memcpy(h + 5 * T, ix->rows, (size_t)ix->n_rows * 4);
    ix_pack_segs(h, c->cap_t, c->cap_s, ix->segs, ix->n_segs);
    size_t used = ix_elems(c->cap_t, c->cap_s, nb);
    if ((st = cuda_err(c, cudaMemcpyAsync(c->ix_d, h, used * 4, cudaMemcpyHostToDevice, c->stream),
                       "batch_setup: cudaMemcpyAsync", err)) != LP_OK ||
        (st = cuda_err(c, cudaEventRecord(c->ix_done, c->stream), "cudaEventRecord", err)) != LP_OK)
        return st;
    c->cur = (struct cuda_batch){.valid = true,
                                 .n_tokens = n,
                                 .n_rows = ix->n_rows,
                                 .n_segs = ix->n_segs,
                                 .ids = ix->ids,
                                 .pos = ix->pos,
                                 .slot = ix->slot,
                                 .rows = ix->rows,
                                 .segs = ix->segs};
    return LP_OK;
}

// Device room for a call's own arrays (not from batch_setup): n int32.
static int32_t *cuda_adhoc_reserve(struct cuda_ctx *c, size_t n) {
    if (c->capturing) {
        cuda_fail(c, LP_ERR_INTERNAL,
                  "a call inside a recorded step passed index arrays that "
                  "did not come through batch_setup");
        return NULL;
    }
    if (n <= c->adhoc_cap) return c->adhoc_d;
    size_t cap = c->adhoc_cap ? c->adhoc_cap : 1024;
    while (cap < n)
        cap *= 2;
    if (!cuda_ok(c, cudaStreamSynchronize(c->stream), "cudaStreamSynchronize")) return NULL;
    cudaFree(c->adhoc_d);
    free(c->adhoc_h);
    c->adhoc_d = NULL;
    c->adhoc_cap = 0;
    c->adhoc_h = (int32_t *)malloc(cap * 4);
    if (!c->adhoc_h) {
        cuda_fail(c, LP_ERR_NOMEM, "out of memory for %zu index entries", cap);
        return NULL;
    }
    if (!cuda_ok(c, cudaMalloc(&c->adhoc_d, cap * 4), "cudaMalloc (index arrays)")) return NULL;
    c->adhoc_cap = cap;
    return c->adhoc_d;
}

// Copies adhoc_h[0, n) to the device (staged before return, ordered in the stream).
static bool cuda_adhoc_send(struct cuda_ctx *c, size_t n) {
    return cuda_ok(
        c, cudaMemcpyAsync(c->adhoc_d, c->adhoc_h, n * 4, cudaMemcpyHostToDevice, c->stream),
        "cudaMemcpyAsync (index arrays)");
}

// The device copy of one [n] array: batch_setup's when arr is its array at
// column `col` (0 ids, 1 pos, 2 slot, 5 rows), else a fresh copy.
static const int32_t *cuda_index(struct cuda_ctx *c, const int32_t *arr, const int32_t *cur,
                                 int cur_n, int col, int n) {
    if (c->cur.valid && arr == cur && n <= cur_n) return c->ix_d + (size_t)col * c->cap_t;
    if (!cuda_adhoc_reserve(c, (size_t)n)) return NULL;
    memcpy(c->adhoc_h, arr, (size_t)n * 4);
    return cuda_adhoc_send(c, (size_t)n) ? c->adhoc_d : NULL;
}

// ---- compute -------------------------------------------------------------------

static void cuda_embed(void *ctx, struct lp_buf *out, const struct lp_bweight *emb,
                       const int32_t *ids, int n) {
    struct cuda_ctx *c = (struct cuda_ctx *)ctx;
    cuda_flush(c);
    if (n <= 0) return;
    const int32_t *d = cuda_index(c, ids, c->cur.ids, c->cur.n_tokens, 0, n);
    if (d) cuda_ok(c, lp_cuda_embed(c->stream, (float *)out->d, &emb->k, d, n), "embed");
}

// The raw row and rmsnorm weights when x is a held-back rmsnorm's output
// over n rows of cols (the product folds it in: *norm_w set); otherwise the
// rmsnorm runs now and x itself is the input.
static const float *cuda_mm_input(struct cuda_ctx *c, const struct lp_buf *x, int n, int cols,
                                  const float **norm_w, float **norm_out, float *eps) {
    struct cuda_pending *p = &c->pend;
    *norm_w = NULL;
    *norm_out = NULL;
    *eps = 0.0f;
    if (p->kind == PEND_NORM && p->out == x && p->n_rows == n && p->dim == cols) {
        p->kind = PEND_NONE;
        *norm_w = (const float *)p->weight->d;
        *norm_out = (float *)p->out->d;
        *eps = p->eps;
        return (const float *)p->x->d;
    }
    cuda_flush(c);
    return (const float *)x->d;
}

static bool cuda_mm_scratch(struct cuda_ctx *c, size_t bytes);

// outs[j] (epi) x @ ws[j]^T on the tensor cores; false when they do not take ws.
static bool cuda_mm(struct cuda_ctx *c, int epi, float *const *outs, const struct lp_buf *x,
                    const struct lp_cuda_weight *const *ws, int n_w, int n, const char *what) {
    if (!c->tc || n <= 0 || n_w < 1) return false;
    for (int j = 0; j < n_w; j++)
        if (!lp_cuda_mm_ok(ws[j]) || ws[j]->fmt != ws[0]->fmt || ws[j]->cols != ws[0]->cols ||
            ws[j]->group != ws[0]->group || ws[j]->scale_bf16 != ws[0]->scale_bf16)
            return false;
    if (epi == LP_CUDA_EPI_SWIGLU && ws[1]->rows != ws[0]->rows) return false;
    const float *norm_w;
    float *norm_out, eps;
    const float *xin = cuda_mm_input(c, x, n, ws[0]->cols, &norm_w, &norm_out, &eps);
    if (cuda_mm_scratch(c, lp_cuda_mm_plan(epi, ws, n_w, n, c->n_sm).bytes))
        cuda_ok(c, lp_cuda_mm(c->stream, c->pdl, epi, xin, ws, outs, n_w, n, norm_w, norm_out,
                              eps, c->n_sm, c->mm_scratch),
                what);
    return true;
}

static void cuda_matmul(void *ctx, struct lp_buf *out, const struct lp_buf *x,
                        const struct lp_bweight *w, int n) {
    struct cuda_ctx *c = (struct cuda_ctx *)ctx;
    float *o = (float *)out->d;
    const struct lp_cuda_weight *k = &w->k;
    if (cuda_mm(c, LP_CUDA_EPI_STORE, &o, x, &k, 1, n, "matmul")) return;
    cuda_flush(c);
    cuda_ok(c, lp_cuda_matmul(c->stream, o, (const float *)x->d, k, n), "matmul");
}

static void cuda_matmul_multi(void *ctx, struct lp_buf *const *outs, const struct lp_buf *x,
                              const struct lp_bweight *const *ws, int n_w, int n) {
    struct cuda_ctx *c = (struct cuda_ctx *)ctx;
    float *o[3] = {NULL, NULL, NULL};
    const struct lp_cuda_weight *w[3] = {NULL, NULL, NULL};
    if (n_w > 3) {
        cuda_fail(c, LP_ERR_INVALID_ARG, "matmul_multi: %d matrices, at most 3", n_w);
        return;
    }
    for (int j = 0; j < n_w; j++) {
        o[j] = (float *)outs[j]->d;
        w[j] = &ws[j]->k;
    }
    if (cuda_mm(c, LP_CUDA_EPI_STORE, o, x, w, n_w, n, "matmul_multi")) return;
    cuda_flush(c);
    cuda_ok(c, lp_cuda_matmul_multi(c->stream, o, (const float *)x->d, w, n_w, n), "matmul_multi");
}

static void cuda_matmul_add(void *ctx, struct lp_buf *y, const struct lp_buf *x,
                            const struct lp_bweight *w, int n) {
    struct cuda_ctx *c = (struct cuda_ctx *)ctx;
    float *o = (float *)y->d;
    const struct lp_cuda_weight *k = &w->k;
    if (cuda_mm(c, LP_CUDA_EPI_ACCUM, &o, x, &k, 1, n, "matmul_add")) return;
    cuda_flush(c);
    cuda_ok(c, lp_cuda_matmul_add(c->stream, o, (const float *)x->d, k, n), "matmul_add");
}

static void cuda_matmul_swiglu(void *ctx, struct lp_buf *out, struct lp_buf *tmp,
                               const struct lp_buf *x, const struct lp_bweight *w_gate,
                               const struct lp_bweight *w_up, int n) {
    struct cuda_ctx *c = (struct cuda_ctx *)ctx;
    float *o[2] = {(float *)out->d, (float *)tmp->d};
    const struct lp_cuda_weight *w[2] = {&w_gate->k, &w_up->k};
    if (cuda_mm(c, LP_CUDA_EPI_SWIGLU, o, x, w, 2, n, "matmul_swiglu")) return;
    cuda_flush(c);
    cuda_ok(c,
            lp_cuda_matmul_swiglu(c->stream, (float *)out->d, (float *)tmp->d, (const float *)x->d,
                                  &w_gate->k, &w_up->k, n),
            "matmul_swiglu");
}

static void cuda_rmsnorm_now(struct cuda_ctx *c, struct lp_buf *out, const struct lp_buf *x,
                             const struct lp_buf *weight, int n_rows, int dim, float eps) {
    cuda_ok(c,
            lp_cuda_rmsnorm(c->stream, (float *)out->d, (const float *)x->d,
                            (const float *)weight->d, n_rows, dim, eps),
            "rmsnorm");
}

// Model-width rows into another buffer are held back (the matrix product
// after it folds them in); the rest runs now.
static void cuda_rmsnorm(void *ctx, struct lp_buf *out, const struct lp_buf *x,
                         const struct lp_buf *weight, int n_rows, int dim, float eps) {
    struct cuda_ctx *c = (struct cuda_ctx *)ctx;
    cuda_flush(c);
    if (n_rows <= 0) return;
    if (c->fold && c->tc && dim >= 512 && out != x && c->status == LP_OK) {
        c->pend = (struct cuda_pending){.kind = PEND_NORM,
                                        .out = out,
                                        .x = x,
                                        .weight = weight,
                                        .n_rows = n_rows,
                                        .dim = dim,
                                        .eps = eps};
        return;
    }
    cuda_rmsnorm_now(c, out, x, weight, n_rows, dim, eps);
}

// inv_freq_j = 1 / theta^(2j / head_dim), computed on the host as ref does.
static bool cuda_inv_freq(struct cuda_ctx *c, int head_dim, float theta) {
    if (c->inv_freq && c->inv_hd == head_dim && c->inv_theta == theta) return true;
    if (c->capturing) {
        cuda_fail(c, LP_ERR_INTERNAL, "rope: new frequencies while recording a step");
        return false;
    }
    int half = head_dim / 2;
    float *h = (float *)malloc((size_t)(half > 0 ? half : 1) * sizeof(float));
    if (!h) {
        cuda_fail(c, LP_ERR_NOMEM, "rope: out of memory");
        return false;
    }
    for (int j = 0; j < half; j++)
        h[j] = 1.0f / powf(theta, (float)(2 * j) / (float)head_dim);
    bool ok = cuda_ok(c, cudaStreamSynchronize(c->stream), "cudaStreamSynchronize");
    if (ok) {
        cuda_drop_graphs(c);
        cudaFree(c->inv_freq);
        c->inv_freq = NULL;
        ok =
            cuda_ok(c, cudaMalloc(&c->inv_freq, (size_t)(half > 0 ? half : 1) * sizeof(float)),
                    "cudaMalloc (rope)") &&
            cuda_ok(
                c, cudaMemcpy(c->inv_freq, h, (size_t)half * sizeof(float), cudaMemcpyHostToDevice),
                "cudaMemcpy (rope)");
    }
    free(h);
    if (!ok) return false;
    c->inv_hd = head_dim;
    c->inv_theta = theta;
    return true;
}

static void cuda_rope(void *ctx, struct lp_buf *x, const int32_t *pos, int n, int n_heads,
                      int head_dim, float theta) {
    struct cuda_ctx *c = (struct cuda_ctx *)ctx;
    cuda_flush(c);
    if (n <= 0 || !cuda_inv_freq(c, head_dim, theta)) return;
    const int32_t *d = cuda_index(c, pos, c->cur.pos, c->cur.n_tokens, 1, n);
    if (d)
        cuda_ok(c, lp_cuda_rope(c->stream, (float *)x->d, d, c->inv_freq, n, n_heads, head_dim),
                "rope");
}

static void cuda_kv_store(void *ctx, struct lp_buf *k_cache, struct lp_buf *v_cache,
                          const struct lp_kv_geom *geom, const struct lp_buf *k,
                          const struct lp_buf *v, const int32_t *slot, int n) {
    struct cuda_ctx *c = (struct cuda_ctx *)ctx;
    cuda_flush(c);
    if (n <= 0) return;
    const int32_t *d = cuda_index(c, slot, c->cur.slot, c->cur.n_tokens, 2, n);
    if (!d) return;
    int64_t n_slots = (int64_t)geom->n_blocks * geom->block_size;
    cuda_ok(c,
            lp_cuda_kv_store(c->stream, k_cache->d, v_cache->d, geom->dtype == LP_DTYPE_BF16,
                             n_slots, geom->n_kv_heads * geom->head_dim, (const float *)k->d,
                             (const float *)v->d, d, n),
            "kv_store");
}

// The five steps in one launch when pos and slot are batch_setup's (the
// engine's case); a caller's own arrays take the separate steps.
static void cuda_qk_now(struct cuda_ctx *c, struct lp_buf *q, struct lp_buf *k,
                        const struct lp_buf *v, const struct lp_buf *q_norm,
                        const struct lp_buf *k_norm, struct lp_buf *k_cache,
                        struct lp_buf *v_cache, const struct lp_kv_geom *geom, const int32_t *pos,
                        const int32_t *slot, int n, int n_heads, float eps, float theta) {
    void *ctx = c;
    int hd = geom->head_dim, n_kv = geom->n_kv_heads;
    if (!(c->cur.valid && pos == c->cur.pos && slot == c->cur.slot && n <= c->cur.n_tokens)) {
        cuda_rmsnorm(ctx, q, q, q_norm, n * n_heads, hd, eps);
        cuda_rmsnorm(ctx, k, k, k_norm, n * n_kv, hd, eps);
        cuda_rope(ctx, q, pos, n, n_heads, hd, theta);
        cuda_rope(ctx, k, pos, n, n_kv, hd, theta);
        cuda_kv_store(ctx, k_cache, v_cache, geom, k, v, slot, n);
        return;
    }
    if (!cuda_inv_freq(c, hd, theta)) return;
    const int32_t *d_pos = c->ix_d + (size_t)c->cap_t, *d_slot = c->ix_d + 2 * (size_t)c->cap_t;
    int64_t n_slots = (int64_t)geom->n_blocks * geom->block_size;
    cuda_ok(c,
            lp_cuda_qk_norm_rope_store(c->stream, (float *)q->d, (float *)k->d, (const float *)v->d,
                                       (const float *)q_norm->d, (const float *)k_norm->d,
                                       c->inv_freq, d_pos, d_slot, k_cache->d, v_cache->d,
                                       geom->dtype == LP_DTYPE_BF16, n_slots, n, n_heads, n_kv, hd,
                                       eps),
            "qk_norm_rope_store");
}

// A decode batch's step (one token a segment, batch_setup's arrays, a shape
// the tiled attention takes) is held back for attention to fold in.
static void cuda_qk_norm_rope_store(void *ctx, struct lp_buf *q, struct lp_buf *k,
                                    const struct lp_buf *v, const struct lp_buf *q_norm,
                                    const struct lp_buf *k_norm, struct lp_buf *k_cache,
                                    struct lp_buf *v_cache, const struct lp_kv_geom *geom,
                                    const int32_t *pos, const int32_t *slot, int n, int n_heads,
                                    float eps, float theta) {
    struct cuda_ctx *c = (struct cuda_ctx *)ctx;
    cuda_flush(c);
    if (n <= 0) return;
    if (c->fold && c->status == LP_OK && c->cur.valid && pos == c->cur.pos &&
        slot == c->cur.slot && n == c->cur.n_tokens && n == c->cur.n_segs &&
        lp_cuda_attn_tiled(geom->head_dim, n_heads, geom->n_kv_heads)) {
        if (!cuda_inv_freq(c, geom->head_dim, theta)) return;
        c->pend = (struct cuda_pending){.kind = PEND_QK,
                                        .eps = eps,
                                        .q = q,
                                        .k = k,
                                        .k_cache = k_cache,
                                        .v_cache = v_cache,
                                        .v = v,
                                        .q_norm = q_norm,
                                        .k_norm = k_norm,
                                        .geom = *geom,
                                        .n = n,
                                        .n_heads = n_heads,
                                        .theta = theta};
        return;
    }
    cuda_qk_now(c, q, k, v, q_norm, k_norm, k_cache, v_cache, geom, pos, slot, n, n_heads, eps,
                theta);
}

// Runs the held-back step, if any.
static void cuda_flush(struct cuda_ctx *c) {
    struct cuda_pending p = c->pend;
    c->pend.kind = PEND_NONE;
    if (p.kind == PEND_NORM) cuda_rmsnorm_now(c, p.out, p.x, p.weight, p.n_rows, p.dim, p.eps);
    if (p.kind == PEND_QK)
        cuda_qk_now(c, p.q, p.k, p.v, p.q_norm, p.k_norm, p.k_cache, p.v_cache, &p.geom,
                    c->cur.pos, c->cur.slot, p.n, p.n_heads, p.eps, p.theta);
}

// Room for attention's partials (floats) and split counters (cnt, zeroed).
// The products' scratch, at least bytes (grown outside a recording: the
// graphs that hold the old one are dropped).
static bool cuda_mm_scratch(struct cuda_ctx *c, size_t bytes) {
    if (bytes <= c->mm_scratch_bytes) return true;
    if (c->capturing) {
        cuda_fail(c, LP_ERR_INTERNAL, "matmul: scratch grew while recording a step");
        return false;
    }
    if (!cuda_ok(c, cudaStreamSynchronize(c->stream), "cudaStreamSynchronize")) return false;
    cuda_drop_graphs(c);
    cudaFree(c->mm_scratch);
    c->mm_scratch = NULL;
    c->mm_scratch_bytes = 0;
    if (!cuda_ok(c, cudaMalloc(&c->mm_scratch, bytes), "cudaMalloc (matmul scratch)") ||
        !cuda_ok(c, cudaMemsetAsync(c->mm_scratch, 0, bytes, c->stream),
                 "cudaMemsetAsync (matmul scratch: its tile counters start at zero)"))
        return false;
    c->mm_scratch_bytes = bytes;
    return true;
}

static bool cuda_attn_scratch(struct cuda_ctx *c, size_t floats, size_t cnt) {
    if (floats <= c->attn_scratch_floats && cnt <= c->attn_cnt_n) return true;
    if (c->capturing) {
        cuda_fail(c, LP_ERR_INTERNAL, "attention: scratch grew while recording a step");
        return false;
    }
    if (!cuda_ok(c, cudaStreamSynchronize(c->stream), "cudaStreamSynchronize")) return false;
    cuda_drop_graphs(c);
    if (floats > c->attn_scratch_floats) {
        cudaFree(c->attn_scratch);
        c->attn_scratch = NULL;
        c->attn_scratch_floats = 0;
        if (!cuda_ok(c, cudaMalloc(&c->attn_scratch, floats * sizeof(float)),
                     "cudaMalloc (attention scratch)"))
            return false;
        c->attn_scratch_floats = floats;
    }
    if (cnt > c->attn_cnt_n) {
        cudaFree(c->attn_cnt);
        c->attn_cnt = NULL;
        c->attn_cnt_n = 0;
        if (!cuda_ok(c, cudaMalloc(&c->attn_cnt, cnt * sizeof(int)),
                     "cudaMalloc (attention counters)") ||
            !cuda_ok(c, cudaMemsetAsync(c->attn_cnt, 0, cnt * sizeof(int), c->stream),
                     "cudaMemsetAsync (attention counters)"))
            return false;
        c->attn_cnt_n = cnt;
    }
    return true;
}

static void cuda_attention(void *ctx, struct lp_buf *out, const struct lp_buf *q,
                           const struct lp_buf *k_cache, const struct lp_buf *v_cache,
                           const struct lp_kv_geom *geom, int n_heads,
                           const struct lp_attn_seg *segs, int n_segs) {
    struct cuda_ctx *c = (struct cuda_ctx *)ctx;
    int n = 0;
    for (int s = 0; s < n_segs; s++)
        n += segs[s].n_tokens;
    // a held-back qk step of these very buffers and this batch is folded in
    struct cuda_pending *p = &c->pend;
    struct lp_cuda_attn_qk qk_step, *qk = NULL;
    if (p->kind == PEND_QK && p->q == q && p->k_cache == k_cache && p->v_cache == v_cache &&
        p->n_heads == n_heads && p->n == n && segs == c->cur.segs && n_segs == c->cur.n_segs &&
        memcmp(&p->geom, geom, sizeof *geom) == 0) {
        p->kind = PEND_NONE;
        qk_step = (struct lp_cuda_attn_qk){
            .k = (float *)p->k->d,
            .v = (const float *)p->v->d,
            .q_norm = (const float *)p->q_norm->d,
            .k_norm = (const float *)p->k_norm->d,
            .inv_freq = c->inv_freq,
            .slot = c->ix_d + 2 * (size_t)c->cap_t,
            .n_slots = (int64_t)geom->n_blocks * geom->block_size,
            .eps = p->eps,
        };
        qk = &qk_step;
    }
    cuda_flush(c);
    if (n <= 0) return;
    if (!cuda_attn_scratch(c, lp_cuda_attn_scratch_floats(n, n_heads, geom->head_dim),
                           (size_t)n * (size_t)geom->n_kv_heads))
        return;
    const int32_t *base;
    int ct, cs;
    if (c->cur.valid && segs == c->cur.segs && n_segs == c->cur.n_segs) {
        base = c->ix_d;
        ct = c->cap_t;
        cs = c->cap_s;
    } else {
        ct = n;
        cs = n_segs;
        size_t need = ix_elems(ct, cs, segs_blocks(segs, n_segs));
        if (!cuda_adhoc_reserve(c, need)) return;
        ix_pack_segs(c->adhoc_h, ct, cs, segs, n_segs);
        if (!cuda_adhoc_send(c, need)) return;
        base = c->adhoc_d;
    }
    struct lp_cuda_attn_index ix = {
        .row_seg = base + 4 * (size_t)ct,
        .row_qpos = base + 3 * (size_t)ct,
        .seg_off = base + 6 * (size_t)ct,
        .seg_nblk = base + 6 * (size_t)ct + cs,
        .bt = base + 6 * (size_t)ct + 2 * (size_t)cs,
    };
    cuda_ok(c,
            lp_cuda_attention(c->stream, c->pdl, (float *)out->d, (float *)q->d, k_cache->d,
                              v_cache->d, geom->dtype == LP_DTYPE_BF16, geom->block_size,
                              geom->n_kv_heads, geom->head_dim, n_heads, &ix, qk, n,
                              c->attn_rows > 0           ? c->attn_rows
                              : !qk && n >= 8 * n_segs ? 8
                                                         : 1,
                              c->attn_scratch, c->attn_cnt),
            "attention");
}

static void cuda_silu_mul(void *ctx, struct lp_buf *out, const struct lp_buf *gate,
                          const struct lp_buf *up, int64_t n) {
    struct cuda_ctx *c = (struct cuda_ctx *)ctx;
    cuda_flush(c);
    cuda_ok(c,
            lp_cuda_silu_mul(c->stream, (float *)out->d, (const float *)gate->d,
                             (const float *)up->d, n),
            "silu_mul");
}

static void cuda_add(void *ctx, struct lp_buf *x, const struct lp_buf *y, int64_t n) {
    struct cuda_ctx *c = (struct cuda_ctx *)ctx;
    cuda_flush(c);
    cuda_ok(c, lp_cuda_add(c->stream, (float *)x->d, (const float *)y->d, n), "add");
}

static void cuda_gather_rows(void *ctx, struct lp_buf *dst, const struct lp_buf *src,
                             const int32_t *src_row, int n, int cols) {
    struct cuda_ctx *c = (struct cuda_ctx *)ctx;
    cuda_flush(c);
    if (n <= 0) return;
    const int32_t *d = cuda_index(c, src_row, c->cur.rows, c->cur.n_rows, 5, n);
    if (d)
        cuda_ok(c,
                lp_cuda_gather_rows(c->stream, (float *)dst->d, (const float *)src->d, d, n, cols),
                "gather_rows");
}

// The greedy ids of the logits rows (argmax.cu); inside a recorded step when
// the engine makes it part of one (LP_STEP_ARGMAX in the key).
static void cuda_argmax_rows(void *ctx, struct lp_buf *ids, const struct lp_buf *x, int n_rows,
                             int cols) {
    struct cuda_ctx *c = (struct cuda_ctx *)ctx;
    cuda_flush(c);
    cuda_ok(c, lp_cuda_argmax_rows(c->stream, (int32_t *)ids->d, (const float *)x->d, n_rows, cols),
            "argmax_rows");
}

static enum lp_status cuda_sync(void *ctx, struct lp_error *err) {
    struct cuda_ctx *c = (struct cuda_ctx *)ctx;
    cuda_flush(c);
    cudaSetDevice(c->device);
    cuda_ok(c, cudaStreamSynchronize(c->stream), "cudaStreamSynchronize");
    c->cur.valid = false; // the batch's host arrays may be gone after sync
    if (c->status == LP_OK) return LP_OK;
    enum lp_status st = lp_error_set(err, c->status, "%s", c->msg);
    c->status = LP_OK;
    c->msg[0] = '\0';
    return st;
}

// ---- recorded steps ----------------------------------------------------------

static bool key_eq(const struct lp_step_key *a, const struct lp_step_key *b) {
    return a->owner == b->owner && a->n_tokens == b->n_tokens && a->n_segs == b->n_segs &&
           a->n_rows == b->n_rows && a->flags == b->flags;
}

static enum lp_status cuda_step_begin(void *ctx, const struct lp_step_key *key, bool *replayed,
                                      struct lp_error *err) {
    struct cuda_ctx *c = (struct cuda_ctx *)ctx;
    cuda_flush(c);
    *replayed = false;
    if (c->status != LP_OK || c->capturing || getenv("LP_CUDA_NO_GRAPHS")) return LP_OK;
    cudaSetDevice(c->device);
    int i = 0;
    while (i < c->n_graphs && !key_eq(&c->graphs[i].key, key))
        i++;
    if (i == c->n_graphs) {
        if (c->n_graphs == CUDA_MAX_GRAPHS) return LP_OK; // table full: run directly
        c->graphs[c->n_graphs++] = (struct cuda_graph){.key = *key, .seen = 0, .exec = NULL};
    }
    struct cuda_graph *g = &c->graphs[i];
    if (g->exec) {
        *replayed = true;
        if (!c->timing) return cuda_err(c, cudaGraphLaunch(g->exec, c->stream), "cudaGraphLaunch", err);
        const double now = cuda_now_ms();
        float ms = 0.0f;
        if (c->tm_open && cudaEventElapsedTime(&ms, c->tm_ev[0], c->tm_ev[1]) == cudaSuccess) {
            c->tm_gpu_ms += ms;
            c->tm_wall_ms += now - c->tm_t0;
            c->tm_n++;
        }
        c->tm_t0 = now;
        cudaEventRecord(c->tm_ev[0], c->stream);
        enum lp_status st =
            cuda_err(c, cudaGraphLaunch(g->exec, c->stream), "cudaGraphLaunch", err);
        c->tm_open = st == LP_OK && cudaEventRecord(c->tm_ev[1], c->stream) == cudaSuccess;
        return st;
    }
    if (g->seen++ == 0) return LP_OK; // first time: run directly (scratch grows now)
    enum lp_status st =
        cuda_err(c, cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeThreadLocal),
                 "cudaStreamBeginCapture", err);
    if (st == LP_OK) c->capturing = i + 1;
    return st;
}

static enum lp_status cuda_step_end(void *ctx, struct lp_error *err) {
    struct cuda_ctx *c = (struct cuda_ctx *)ctx;
    cuda_flush(c);
    if (!c->capturing) return LP_OK;
    struct cuda_graph *g = &c->graphs[c->capturing - 1];
    c->capturing = 0;
    cudaGraph_t graph = NULL;
    cudaError_t e = cudaStreamEndCapture(c->stream, &graph);
    enum lp_status st = LP_OK;
    if (c->status != LP_OK) {
        st = lp_error_set(err, c->status, "%s", c->msg); // the calls were not made
        c->status = LP_OK;
    } else if (e != cudaSuccess) {
        st = cuda_err(c, e, "cudaStreamEndCapture", err);
    } else {
        e = cudaGraphInstantiate(&g->exec, graph, 0);
        if (e != cudaSuccess) {
            g->exec = NULL;
            st = cuda_err(c, e, "cudaGraphInstantiate", err);
        } else {
            st = cuda_err(c, cudaGraphLaunch(g->exec, c->stream), "cudaGraphLaunch", err);
        }
    }
    if (graph) cudaGraphDestroy(graph);
    if (st != LP_OK) cudaGetLastError();
    return st;
}

// ---- device facts ------------------------------------------------------------

// Streams LP_CUDA_PROBE_MIB (512) MiB through a read-only kernel, best of 5.
#ifndef LP_CUDA_PROBE_MIB
#define LP_CUDA_PROBE_MIB 512
#endif
static double cuda_measure_read(struct cuda_ctx *c) {
    const size_t bytes = (size_t)LP_CUDA_PROBE_MIB << 20;
    const int n_blocks = 132 * 8;
    void *src = NULL;
    float *sink = NULL;
    cudaEvent_t t0 = NULL, t1 = NULL;
    double best = 0.0;
    if (cudaMalloc(&src, bytes) != cudaSuccess ||
        cudaMalloc((void **)&sink, (size_t)n_blocks * 8 * sizeof(float)) != cudaSuccess ||
        cudaMemsetAsync(src, 0x5a, bytes, c->stream) != cudaSuccess ||
        cudaEventCreate(&t0) != cudaSuccess || cudaEventCreate(&t1) != cudaSuccess)
        goto done;
    for (int rep = 0; rep < 6; rep++) {
        float ms = 0.0f;
        if (cudaEventRecord(t0, c->stream) != cudaSuccess ||
            lp_cuda_read_probe(c->stream, src, bytes, sink, n_blocks) != cudaSuccess ||
            cudaEventRecord(t1, c->stream) != cudaSuccess ||
            cudaEventSynchronize(t1) != cudaSuccess ||
            cudaEventElapsedTime(&ms, t0, t1) != cudaSuccess)
            goto done;
        double gb_s = (double)bytes / (ms * 1e-3) / 1e9;
        if (rep > 0 && gb_s > best) best = gb_s; // rep 0 warms up
    }
done:
    cudaGetLastError();
    if (t0) cudaEventDestroy(t0);
    if (t1) cudaEventDestroy(t1);
    cudaFree(src);
    cudaFree(sink);
    return best;
}

static enum lp_status cuda_device_info(void *ctx, struct lp_device_info *out,
                                       struct lp_error *err) {
    struct cuda_ctx *c = (struct cuda_ctx *)ctx;
    cuda_flush(c);
    cudaSetDevice(c->device);
    snprintf(out->name, sizeof out->name, "%.16s (%.60s)", c->name, c->gpu);
    size_t free_b = 0, total_b = 0;
    enum lp_status st = cuda_err(c, cudaMemGetInfo(&free_b, &total_b), "cudaMemGetInfo", err);
    if (st != LP_OK) return st;
    out->free_bytes = free_b;
    if (c->read_gb_s == 0.0) c->read_gb_s = cuda_measure_read(c);
    out->read_gb_s = c->read_gb_s;
    return LP_OK;
}

static const struct lp_backend_i cuda_iface = {
    /* .name          = */ cuda_name,
    /* .n_threads     = */ cuda_n_threads,
    /* .destroy       = */ cuda_destroy,
    /* .buf_alloc     = */ cuda_buf_alloc,
    /* .buf_free      = */ cuda_buf_free,
    /* .buf_write     = */ cuda_buf_write,
    /* .buf_read      = */ cuda_buf_read,
    /* .weight_upload = */ cuda_weight_upload,
    /* .weight_free   = */ cuda_weight_free,
    /* .embed         = */ cuda_embed,
    /* .matmul        = */ cuda_matmul,
    /* .rmsnorm       = */ cuda_rmsnorm,
    /* .rope          = */ cuda_rope,
    /* .kv_store      = */ cuda_kv_store,
    /* .attention     = */ cuda_attention,
    /* .silu_mul      = */ cuda_silu_mul,
    /* .add           = */ cuda_add,
    /* .gather_rows   = */ cuda_gather_rows,
    /* .sync          = */ cuda_sync,
    /* .device_info   = */ cuda_device_info,
    /* .batch_setup   = */ cuda_batch_setup,
    /* .step_begin    = */ cuda_step_begin,
    /* .step_end      = */ cuda_step_end,
    /* .matmul_multi  = */ cuda_matmul_multi,
    /* .matmul_add    = */ cuda_matmul_add,
    /* .matmul_swiglu = */ cuda_matmul_swiglu,
    /* .qk_norm_rope_store = */ cuda_qk_norm_rope_store,
    /* .argmax_rows   = */ cuda_argmax_rows,
};

extern "C" bool lp_backend_cuda_built(void) {
    return true;
}

extern "C" enum lp_status lp_backend_cuda_create(struct lp_backend **out,
                                                 const struct lp_backend_cuda_params *params,
                                                 struct lp_error *err) {
    *out = NULL;
    int device = params ? params->device : 0, n_dev = 0;
    cudaError_t e = cudaGetDeviceCount(&n_dev);
    if (e != cudaSuccess) {
        cudaGetLastError();
        return lp_error_set(err, LP_ERR_DEVICE, "cuda:%d: no usable GPU: %s (%s)", device,
                            cudaGetErrorString(e), cudaGetErrorName(e));
    }
    if (device < 0 || device >= n_dev)
        return lp_error_set(err, LP_ERR_DEVICE, "cuda:%d: no such GPU (%d found)", device, n_dev);
    struct cuda_ctx *c = (struct cuda_ctx *)calloc(1, sizeof *c);
    if (!c) return lp_error_set(err, LP_ERR_NOMEM, "cuda:%d: create: out of memory", device);
    c->device = device;
    c->pdl = !getenv("LP_CUDA_NO_PDL");
    c->fold = !getenv("LP_CUDA_NO_FOLD");
    c->tc = !getenv("LP_CUDA_NO_TC");
    snprintf(c->name, sizeof c->name, "cuda:%d", device);
    enum lp_status st;
    cudaDeviceProp prop;
    if ((st = cuda_err(c, cudaSetDevice(device), "cudaSetDevice", err)) != LP_OK ||
        (st = cuda_err(c, cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties",
                       err)) != LP_OK)
        goto fail;
    snprintf(c->gpu, sizeof c->gpu, "%.63s", prop.name);
    c->n_sm = getenv("LP_CUDA_NO_PERSIST") ? 0 : prop.multiProcessorCount;
    c->attn_rows = getenv("LP_CUDA_ATTN_ROWS") ? atoi(getenv("LP_CUDA_ATTN_ROWS")) : 0;
    if (getenv("LP_CUDA_TIMING") && cudaEventCreate(&c->tm_ev[0]) == cudaSuccess) {
        if (cudaEventCreate(&c->tm_ev[1]) == cudaSuccess) c->timing = true;
        else cudaEventDestroy(c->tm_ev[0]);
    }
    if (prop.major < 9) {
        st = lp_error_set(err, LP_ERR_UNSUPPORTED,
                          "cuda:%d: %s is compute capability %d.%d; this build has sm_90 code only",
                          device, prop.name, prop.major, prop.minor);
        goto fail;
    }
    if ((st = cuda_err(c, cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking),
                       "cudaStreamCreate", err)) != LP_OK ||
        (st = cuda_err(c, cudaEventCreateWithFlags(&c->ix_done, cudaEventDisableTiming),
                       "cudaEventCreate", err)) != LP_OK)
        goto fail;
    if ((st = lp_backend_wrap(out, &cuda_iface, c, err)) != LP_OK) goto fail;
    return LP_OK;
fail:
    cuda_destroy(c);
    return st;
}
