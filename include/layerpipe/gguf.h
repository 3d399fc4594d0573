// SPDX-License-Identifier: MIT
// gguf.h -- GGUF, the model file format of llama.cpp, Ollama and LM Studio:
// a reader (memory-mapped, every field checked before use) and a writer.
// Layout, all little-endian (GGUF v3; v2 is the same on little-endian hosts):
//   1. magic "GGUF", version uint32, n_tensors uint64, n_kv uint64
//   2. n_kv metadata pairs: key (string), value type uint32, value; a string
//      is a uint64 byte count and the bytes (no NUL); an array is an element
//      type uint32, a uint64 count and the elements (arrays of arrays are
//      refused, as ggml refuses them)
//   3. n_tensors tensor infos: name (string, < 64 bytes), n_dims uint32
//      (<= 4), ne[n_dims] uint64 (ne[0] = elements of one row, the
//      fastest-varying; PyTorch's shape reversed), ggml type uint32, offset
//      uint64 from the start of the data section
//   4. zero padding to general.alignment (uint32 key, default 32, a power of
//      two), then the data section: each tensor at its offset, in info
//      order, each padded to the alignment (offsets are checked to be
//      exactly that, as ggml's gguf.cpp checks them).
// Tensor types read: F32 (0), F16 (1), BF16 (30) and the block types of
// enum lp_ggml_type (layerpipe/model.h); anything else is LP_ERR_UNSUPPORTED
// naming the tensor and type.
#ifndef LAYERPIPE_GGUF_H
#define LAYERPIPE_GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "layerpipe/model.h"
#include "layerpipe/status.h"

#define LP_GGUF_MAX_DIMS 4
#define LP_GGUF_MAX_NAME 64 // tensor names are shorter (ggml's GGML_MAX_NAME)
#define LP_GGUF_DEFAULT_ALIGNMENT 32

// Metadata value types, numbered as the file numbers them.
enum lp_gguf_type {
    LP_GGUF_TYPE_UINT8 = 0,
    LP_GGUF_TYPE_INT8 = 1,
    LP_GGUF_TYPE_UINT16 = 2,
    LP_GGUF_TYPE_INT16 = 3,
    LP_GGUF_TYPE_UINT32 = 4,
    LP_GGUF_TYPE_INT32 = 5,
    LP_GGUF_TYPE_FLOAT32 = 6,
    LP_GGUF_TYPE_BOOL = 7,
    LP_GGUF_TYPE_STRING = 8,
    LP_GGUF_TYPE_ARRAY = 9,
    LP_GGUF_TYPE_UINT64 = 10,
    LP_GGUF_TYPE_INT64 = 11,
    LP_GGUF_TYPE_FLOAT64 = 12,
};

// Bytes of one value of a fixed-size type; 0 for STRING, ARRAY and
// numbers that are no type.
LP_API size_t lp_gguf_value_size(enum lp_gguf_type t);

// The float tensor types (the block types are enum lp_ggml_type's).
#define LP_GGML_TYPE_F32 0u
#define LP_GGML_TYPE_F16 1u
#define LP_GGML_TYPE_BF16 30u

// Elements per block and bytes per block of a tensor type the reader
// accepts (1 and 4 for F32); 0 for any other type.
LP_API int lp_gguf_type_block_elems(uint32_t ggml_type);
LP_API int lp_gguf_type_block_bytes(uint32_t ggml_type);
// "F32", "BF16", "Q4_K", ..., or "?".
LP_API const char *lp_gguf_type_name(uint32_t ggml_type);

// A string in the file: not NUL-terminated, borrowed from the reader.
struct lp_gguf_str {
    const char *ptr;
    size_t n_bytes;
};

// One metadata pair, a view into the file (valid until lp_gguf_close).
struct lp_gguf_kv {
    struct lp_gguf_str key;
    enum lp_gguf_type type;      // LP_GGUF_TYPE_ARRAY for arrays
    enum lp_gguf_type elem_type; // arrays: the elements' type; else == type
    uint64_t n_elems;            // arrays: the count; else 1
    const uint8_t *value;        // first byte of the value (arrays: of the first element)
    size_t value_bytes;          // bytes of the value (arrays: of all elements)
};

// One tensor, a view into the file (valid until lp_gguf_close).
struct lp_gguf_tensor {
    char name[LP_GGUF_MAX_NAME];   // NUL-terminated copy
    uint32_t type;                 // ggml type number (LP_GGML_TYPE_F32, LP_GGML_Q4_K, ...)
    int n_dims;                    // 1..4
    int64_t ne[LP_GGUF_MAX_DIMS];  // ne[0] = elements per row; dims past n_dims are 1
    uint64_t offset;               // from the start of the data section
    const void *data;              // in the mapping; aligned to 4 (F32) or 2 bytes
    size_t n_bytes;
};

struct lp_gguf; // an opened file; immutable, so any number of threads may read it

// ---- reading ---------------------------------------------------------------

// Maps path read-only and checks its whole directory (header, metadata,
// tensor infos, offsets and sizes against the file). On failure *out is
// NULL and the message names the file, the item and the value.
LP_API enum lp_status lp_gguf_open(struct lp_gguf **out, const char *path, struct lp_error *err);
// The same over an image already in memory (tests, fuzzing); `image` is
// borrowed and must outlive the result; `name` labels messages.
LP_API enum lp_status lp_gguf_parse(struct lp_gguf **out, const void *image, size_t n_bytes,
                                    const char *name, struct lp_error *err);
// Unmaps and frees; every view dies. Accepts NULL.
LP_API void lp_gguf_close(struct lp_gguf *g);

LP_API const char *lp_gguf_name(const struct lp_gguf *g); // the path or name given
// The whole file image (the mapping) and its size.
LP_API const void *lp_gguf_image(const struct lp_gguf *g, size_t *n_bytes);
LP_API uint32_t lp_gguf_version(const struct lp_gguf *g);
LP_API size_t lp_gguf_alignment(const struct lp_gguf *g);

LP_API int64_t lp_gguf_n_kv(const struct lp_gguf *g);
LP_API const struct lp_gguf_kv *lp_gguf_kv_at(const struct lp_gguf *g, int64_t i); // file order
// The pair whose key is `key` (NUL-terminated), or NULL.
LP_API const struct lp_gguf_kv *lp_gguf_find_kv(const struct lp_gguf *g, const char *key);

LP_API int64_t lp_gguf_n_tensors(const struct lp_gguf *g);
LP_API const struct lp_gguf_tensor *lp_gguf_tensor_at(const struct lp_gguf *g, int64_t i);
// The tensor called name, or NULL.
LP_API const struct lp_gguf_tensor *lp_gguf_find_tensor(const struct lp_gguf *g, const char *name);

// Typed getters of a key that must exist. Each fails with LP_ERR_FORMAT
// naming the file and key when the key is missing, of another type, or out
// of range.
// Any integer type (and bool), value in [lo, hi].
LP_API enum lp_status lp_gguf_get_int(const struct lp_gguf *g, const char *key, int64_t lo,
                                      int64_t hi, int64_t *out, struct lp_error *err);
// FLOAT32 or FLOAT64, finite, in [lo, hi].
LP_API enum lp_status lp_gguf_get_float(const struct lp_gguf *g, const char *key, double lo,
                                        double hi, double *out, struct lp_error *err);
LP_API enum lp_status lp_gguf_get_bool(const struct lp_gguf *g, const char *key, bool *out,
                                       struct lp_error *err);
LP_API enum lp_status lp_gguf_get_str(const struct lp_gguf *g, const char *key,
                                      struct lp_gguf_str *out, struct lp_error *err);
// An array of elem_type (for integers: any integer element type when
// elem_type is LP_GGUF_TYPE_INT64); *out is the pair.
LP_API enum lp_status lp_gguf_get_array(const struct lp_gguf *g, const char *key,
                                        enum lp_gguf_type elem_type,
                                        const struct lp_gguf_kv **out, struct lp_error *err);

// Element i of an integer array (i < n_elems), widened to int64 (a UINT64
// above INT64_MAX reads as INT64_MAX).
LP_API int64_t lp_gguf_array_int(const struct lp_gguf_kv *kv, uint64_t i);
// The elements of a string array into out[kv->n_elems] (caller-allocated).
LP_API void lp_gguf_array_strs(const struct lp_gguf_kv *kv, struct lp_gguf_str *out);
// True when the string equals the NUL-terminated s.
LP_API bool lp_gguf_str_eq(struct lp_gguf_str a, const char *s);

// ---- a model's files ---------------------------------------------------------

// The GGUF files of the model at `path`: path itself when it is a file, or
// the one GGUF model in the folder `path` (its *.gguf files, leaving out
// multimodal projectors named mmproj*). A split model,
// NAME-0000k-of-0000N.gguf as llama.cpp's gguf-split names them, gives its
// N files in order; naming any of them names the model, and all must exist.
// *out is a malloc'd array of *n_out malloc'd paths (lp_gguf_paths_free).
// A folder without a .gguf file is LP_ERR_IO with *n_out 0 (the caller may
// try another format); a folder holding two models is LP_ERR_INVALID_ARG
// naming them; a missing split is LP_ERR_IO naming it.
LP_API enum lp_status lp_gguf_model_paths(const char *path, char ***out, int *n_out,
                                          struct lp_error *err);
LP_API void lp_gguf_paths_free(char **paths, int n); // accepts NULL
// Whether path is to be opened as a GGUF model: a file, or a folder
// without config.json (an HF folder, whatever else it holds) that holds a
// .gguf file.
LP_API bool lp_gguf_model_is(const char *path);

// Tensor names: GGUF's (llama.cpp's tensor map: token_embd, output_norm,
// output, blk.N.attn_q, ...) and the HF names they stand for
// (model.embed_tokens, model.norm, lm_head, model.layers.N.self_attn.q_proj,
// ...), the suffix (.weight, .bias) kept. To HF: an unknown blk.N.X becomes
// model.layers.N.X, any other unknown name stays itself. From HF: false
// (out unchanged) for a name without a GGUF counterpart.
LP_API void lp_gguf_name_to_hf(const char *gguf_name, char *out, size_t n);
LP_API bool lp_gguf_name_from_hf(const char *hf_name, char *out, size_t n);

// ---- writing -----------------------------------------------------------------
// A writer collects metadata (in insertion order) and tensor infos, then
// writes the file in one pass: lp_gguf_writer_begin writes everything up to
// the data section, lp_gguf_writer_put appends each tensor's bytes in
// insertion order (with the padding), lp_gguf_writer_finish closes the
// file. One thread at a time.

struct lp_gguf_writer;

LP_API enum lp_status lp_gguf_writer_create(struct lp_gguf_writer **out, struct lp_error *err);
// Frees the writer; a file begun and not finished is closed as it is. Accepts NULL.
LP_API void lp_gguf_writer_destroy(struct lp_gguf_writer *w);

// Metadata; key and values are copied; a key may be set once.
// general.alignment (UINT32) also sets the alignment tensors are written at.
LP_API enum lp_status lp_gguf_writer_add_scalar(struct lp_gguf_writer *w, const char *key,
                                                enum lp_gguf_type type, const void *value,
                                                struct lp_error *err);
LP_API enum lp_status lp_gguf_writer_add_str(struct lp_gguf_writer *w, const char *key,
                                             const char *value, struct lp_error *err);
// An array of n elements of a fixed-size elem_type (values: n packed elements).
LP_API enum lp_status lp_gguf_writer_add_array(struct lp_gguf_writer *w, const char *key,
                                               enum lp_gguf_type elem_type, uint64_t n,
                                               const void *values, struct lp_error *err);
// An array of n strings; lens may be NULL (then each is NUL-terminated).
LP_API enum lp_status lp_gguf_writer_add_str_array(struct lp_gguf_writer *w, const char *key,
                                                   uint64_t n, const char *const *strs,
                                                   const size_t *lens, struct lp_error *err);

// Declares a tensor: name (< 64 bytes, unique), a type the reader accepts,
// ne[n_dims] in GGUF order (ne[0] per row, a multiple of the block size).
LP_API enum lp_status lp_gguf_writer_add_tensor(struct lp_gguf_writer *w, const char *name,
                                                uint32_t ggml_type, int n_dims,
                                                const int64_t *ne, struct lp_error *err);
// Bytes of the tensor data declared so far (without padding).
LP_API uint64_t lp_gguf_writer_data_bytes(const struct lp_gguf_writer *w);

LP_API enum lp_status lp_gguf_writer_begin(struct lp_gguf_writer *w, const char *path,
                                           struct lp_error *err);
// The next tensor's bytes: name and n_bytes must be that tensor's (checked).
LP_API enum lp_status lp_gguf_writer_put(struct lp_gguf_writer *w, const char *name,
                                         const void *data, size_t n_bytes, struct lp_error *err);
// Checks every tensor was put; flushes and closes. On failure the file is removed.
LP_API enum lp_status lp_gguf_writer_finish(struct lp_gguf_writer *w, struct lp_error *err);

#endif
