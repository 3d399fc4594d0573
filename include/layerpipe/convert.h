// SPDX-License-Identifier: MIT
// convert.h -- the writing side of the model module: a safetensors writer,
// float32 -> bf16 / f16 rounding, MLX affine quantization and GGUF blocks.
// Used by the test-model generators (tools/lp_genmodel.c) and by `layerpipe
// quantize`. Nothing here is on the inference path (the backends read GGUF
// blocks through the same inline definitions, src/util/ggml_layout.h); all
// functions are reentrant and share no state, so different objects may be
// used from different threads.
#ifndef LAYERPIPE_CONVERT_H
#define LAYERPIPE_CONVERT_H

#include <stddef.h>
#include <stdint.h>

#include "layerpipe/model.h"
#include "layerpipe/status.h"

// ---------------------------------------------------------------------------
// Float rounding.

// The scalar conversions live in src/util/fp16.h (inline, one home for every
// module); these array forms round the same way.
// dst[i] = convert(src[i]) for i < n. dst and src must not overlap.
LP_API void lp_f32_to_bf16_array(uint16_t *dst, const float *src, size_t n);
LP_API void lp_f32_to_f16_array(uint16_t *dst, const float *src, size_t n);

// ---------------------------------------------------------------------------
// MLX affine quantization (what mlx.core.quantize / mlx_lm.convert produce).
//
// Per group of group_size consecutive elements of a row, in float32:
//   edge  = min if |min| > |max| else max
//   scale = max((max - min) / (2^bits - 1), 1e-7), negated when edge is max
//   q0    = rint(edge / scale); if q0 != 0: scale = edge / q0, bias = edge
//                               else:       bias = 0
//   q     = clip(rint((w - bias) / scale), 0, 2^bits - 1)
// then scale and bias are rounded to the scale dtype. Dequantization is
// w ~ scale * q + bias. A constant group therefore gets |scale| = 1e-7 (the
// floor) and bias = its value, so it dequantizes to (nearly) itself.

// Output shapes for a [rows, cols] matrix.
//   q:      uint32 [rows, cols * bits / 32], codes packed little-endian,
//           element 0 in the lowest bits (at 8 bits: byte-for-byte uint8 codes)
//   scales: [rows, cols / group_size] of scale_dtype (BF16, F16 or F32)
//   biases: [rows, cols / group_size] of scale_dtype
// Requirements: bits is 2, 4 or 8; group_size is 32, 64 or 128; cols is a
// multiple of group_size (callers keep other matrices unquantized).
// w is [rows, cols] float32, borrowed for the call. q, scales and biases are
// caller-allocated with the sizes above (use lp_mlx_quantized_bytes).
// Returns LP_ERR_INVALID_ARG for an unsupported combination; writes nothing then.
LP_API enum lp_status lp_mlx_quantize(const float *w, int64_t rows, int64_t cols, int bits,
                                      int group_size, enum lp_dtype scale_dtype, uint32_t *q,
                                      void *scales, void *biases, struct lp_error *err);

// Bytes of the packed codes and of one of scales/biases for a [rows, cols]
// matrix; returns LP_ERR_INVALID_ARG (and zeros) for invalid parameters or overflow.
LP_API enum lp_status lp_mlx_quantized_bytes(int64_t rows, int64_t cols, int bits,
                                             int group_size, enum lp_dtype scale_dtype,
                                             size_t *q_bytes, size_t *scale_bytes,
                                             struct lp_error *err);

// w[r][c] = scales[r][c/g] * q[r][c] + biases[r][c/g] into out [rows, cols]
// float32 (computed in float32 from the stored scale dtype). Same parameter
// rules as lp_mlx_quantize. The reference decoder for tests and tools.
LP_API enum lp_status lp_mlx_dequantize(const uint32_t *q, const void *scales,
                                        const void *biases, int64_t rows, int64_t cols,
                                        int bits, int group_size, enum lp_dtype scale_dtype,
                                        float *out, struct lp_error *err);

// ---------------------------------------------------------------------------
// GGUF blocks (Q4_0, Q8_0, Q4_K, Q5_K, Q6_K; layouts in src/util/ggml_layout.h,
// as llama.cpp's ggml-common.h documents them). A row of cols elements is
// cols / lp_ggml_block_elems(t) consecutive blocks. The dequantized values
// are, bit for bit, those the backends compute with.

// Bytes of one row of cols elements of type t; 0 when t is not one of the
// types above or cols is not a positive multiple of its block's elements.
LP_API size_t lp_ggml_row_bytes(enum lp_ggml_type t, int64_t cols);

// src[cols] float32 -> dst (lp_ggml_row_bytes(t, cols) bytes, caller-
// allocated). Scales are chosen per block by least-squares fits in the
// spirit of llama.cpp's reference quantizers (not bit-identical to them);
// every element then gets the nearest value its block can represent.
// LP_ERR_INVALID_ARG (nothing written) for a bad type or cols, or a
// non-finite element.
LP_API enum lp_status lp_ggml_quantize_row(enum lp_ggml_type t, const float *src, void *dst,
                                           int64_t cols, struct lp_error *err);

// src (lp_ggml_row_bytes(t, cols) bytes) -> dst[cols] float32: the values
// the layout defines, computed in float32. Any bytes are valid input (an f16
// NaN scale gives NaN elements). LP_ERR_INVALID_ARG for a bad type or cols.
LP_API enum lp_status lp_ggml_dequantize_row(enum lp_ggml_type t, const void *src, float *dst,
                                             int64_t cols, struct lp_error *err);

// ---------------------------------------------------------------------------
// safetensors writer.
//
// File layout: 8-byte little-endian header length N, N bytes of JSON
// ({"__metadata__": {...}, name: {"dtype", "shape", "data_offsets": [b, e)}}
// with offsets relative to the first data byte), padded with spaces so the
// data starts at a multiple of 8; then each tensor's bytes, in the order the
// tensors were added, with no gaps.
//
// Two ways to write:
//  - all at once: add every tensor with its data, then lp_safetensors_writer_write;
//  - streaming (for files bigger than memory should hold): add every tensor
//    with data == NULL (shapes only), lp_safetensors_writer_begin writes the
//    header, then lp_safetensors_writer_put supplies each tensor's bytes in
//    insertion order, and lp_safetensors_writer_finish closes the file.
// A writer is used by one thread at a time.

#define LP_SAFETENSORS_MAX_DIMS 8

struct lp_safetensors_writer;

// New empty writer. On failure *out is NULL.
LP_API enum lp_status lp_safetensors_writer_create(struct lp_safetensors_writer **out,
                                                   struct lp_error *err);
// Frees the writer, the owned data it holds, and closes (and leaves as is) a
// file that was begun but not finished. Accepts NULL.
LP_API void lp_safetensors_writer_destroy(struct lp_safetensors_writer *w);

// Sets a string entry of __metadata__ (e.g. "format" -> "pt" or "mlx");
// key and value are copied. Setting a key again replaces its value.
LP_API enum lp_status lp_safetensors_writer_set_metadata(struct lp_safetensors_writer *w,
                                                         const char *key, const char *value,
                                                         struct lp_error *err);

// Declares a tensor: name (copied; must be unique and not "__metadata__"),
// dtype, shape[n_dims] (copied; 0 <= n_dims <= 8, every dim >= 0), and data:
// borrowed, must stay valid until write/put consumed it; NULL for streaming.
// Its byte size is the product of the shape times the dtype size.
LP_API enum lp_status lp_safetensors_writer_add(struct lp_safetensors_writer *w,
                                                const char *name, enum lp_dtype dtype,
                                                int n_dims, const int64_t *shape,
                                                const void *data, struct lp_error *err);
// As _add, but the writer takes ownership of data (a malloc'd block, freed by
// the writer in destroy) -- also on failure.
LP_API enum lp_status lp_safetensors_writer_add_take(struct lp_safetensors_writer *w,
                                                     const char *name, enum lp_dtype dtype,
                                                     int n_dims, const int64_t *shape,
                                                     void *data, struct lp_error *err);

// Number of tensors added, and the total bytes of their data.
LP_API int lp_safetensors_writer_count(const struct lp_safetensors_writer *w);
LP_API uint64_t lp_safetensors_writer_data_bytes(const struct lp_safetensors_writer *w);

// Writes the whole file at path (created or truncated). Every tensor must
// have data. On failure the partial file is removed.
LP_API enum lp_status lp_safetensors_writer_write(struct lp_safetensors_writer *w,
                                                  const char *path, struct lp_error *err);

// Streaming: creates path and writes the header. Tensors added after begin
// are refused.
LP_API enum lp_status lp_safetensors_writer_begin(struct lp_safetensors_writer *w,
                                                  const char *path, struct lp_error *err);
// Streaming: appends the bytes of the next tensor in insertion order; name
// must be that tensor's name and n_bytes its size (both checked).
LP_API enum lp_status lp_safetensors_writer_put(struct lp_safetensors_writer *w,
                                                const char *name, const void *data,
                                                size_t n_bytes, struct lp_error *err);
// Streaming: checks every tensor was put, flushes and closes the file.
LP_API enum lp_status lp_safetensors_writer_finish(struct lp_safetensors_writer *w,
                                                   struct lp_error *err);

// ---------------------------------------------------------------------------
// Whole-folder conversion.

// Progress of a long conversion: done of total bytes of source tensors.
typedef void (*lp_progress_fn)(void *user, uint64_t done, uint64_t total);

// Converts the HF folder src_dir (bf16, f16 or f32 safetensors, single or
// sharded) into an MLX affine-quantized folder dst_dir (created; must not
// hold a model already), as mlx_lm.convert does: every 2-D ".weight"
// (Linear and Embedding) whose input size is a multiple of group_size
// becomes uint32 codes + scales + biases (bf16, or f16 for an f16 model);
// everything else is copied as is. config.json gains "quantization" and
// "quantization_config"; the other small files (generation config,
// tokenizer) are copied. Writes one model.safetensors. bits 4 or 8, group
// 32, 64 or 128. Reports progress if on_progress is not NULL.
LP_API enum lp_status lp_model_quantize(const char *src_dir, const char *dst_dir, int bits,
                                        int group_size, lp_progress_fn on_progress, void *user,
                                        struct lp_error *err);

#endif
