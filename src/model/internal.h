// SPDX-License-Identifier: MIT
// internal.h -- cross-file internals of the model module: the safetensors
// reader (one memory-mapped file, its validated tensor directory), GGUF
// files seen the same way (gguf_model.c) and the config parser.
#ifndef LP_MODEL_INTERNAL_H
#define LP_MODEL_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "layerpipe/gguf.h"
#include "layerpipe/model.h"

#define LP_ST_MAX_DIMS 8
#define LP_ST_MAX_HEADER_BYTES ((uint64_t)100 << 20) // 100 MiB, as the reference implementation

// One tensor of a weight file; data points into the mapping.
struct lp_st_tensor {
    char *name;                      // owned
    enum lp_dtype dtype;             // U8 for GGUF blocks
    int n_dims;
    int64_t shape[LP_ST_MAX_DIMS];   // PyTorch order, in elements (also for blocks)
    const void *data;                // borrowed from the file's mapping
    size_t nbytes;
    bool ggml;                       // GGUF blocks of ggml_type, rows of whole blocks
    enum lp_ggml_type ggml_type;
};

// A memory-mapped safetensors file with a validated header: every tensor's
// offsets lie inside the data section and match dtype x shape. Or a GGUF
// file seen as one (gguf != NULL): tensors under their HF names.
struct lp_st_file {
    char *path;     // owned
    void *map;      // the whole file, read-only (owned by gguf when that is set)
    size_t map_bytes;
    int n_tensors;
    struct lp_st_tensor *tensors; // [n_tensors], sorted by name
    struct lp_gguf *gguf;         // owned, or NULL for safetensors
};

// Maps the regular file path read-only (whole, min_bytes at least, else
// LP_ERR_FORMAT "shorter than <header>"); the caller munmaps *map.
enum lp_status lp_map_file(const char *path, size_t min_bytes, const char *header, void **map,
                           size_t *n_bytes, struct lp_error *err);

// Maps and validates `path`. On failure *out is NULL; the message names the file.
enum lp_status lp_st_open(struct lp_st_file **out, const char *path, struct lp_error *err);
// Parses and validates a header+data image already in memory (used by
// lp_st_open and the tests; `data` must outlive the result).
enum lp_status lp_st_parse(struct lp_st_file *f, const void *data, size_t n_bytes,
                           struct lp_error *err);
void lp_st_close(struct lp_st_file *f); // accepts NULL
// The tensor called name, or NULL.
const struct lp_st_tensor *lp_st_find(const struct lp_st_file *f, const char *name);

// Opens the GGUF model at path (lp_gguf_model_paths): appends each file to
// files[*n_files] (max_files in all; the caller closes them, also on
// failure), translates the first file's qwen3.* metadata into config.json
// and parses it with lp_config_parse, reads general.sampling.* into gen,
// and sets *config_hash over the metadata (gguf-split's keys aside).
enum lp_status lp_gguf_model_open(const char *path, struct lp_st_file **files, int max_files,
                                  int *n_files, struct lp_model_config *cfg,
                                  struct lp_generation_config *gen, uint64_t *config_hash,
                                  struct lp_error *err);

// Parses config.json text (file_name is for messages).
enum lp_status lp_config_parse(struct lp_model_config *cfg, const char *json_text,
                               const char *file_name, struct lp_error *err);
// Parses generation_config.json text and merges its eos ids into cfg.
enum lp_status lp_generation_config_parse(struct lp_generation_config *gen,
                                          struct lp_model_config *cfg, const char *json_text,
                                          const char *file_name, struct lp_error *err);
// HF GenerationConfig defaults.
void lp_generation_config_default(struct lp_generation_config *gen);

// Reads a whole file into a NUL-terminated heap string (max_bytes cap).
enum lp_status lp_read_file(const char *path, size_t max_bytes, char **out, size_t *out_bytes,
                            struct lp_error *err);

// The safetensors files of an opened model (all of them, whatever range
// was loaded), borrowed until lp_model_close.
struct lp_st_file *const *lp_model_files(const struct lp_model *m, int *n_files);
// The model folder path, borrowed.
const char *lp_model_dir(const struct lp_model *m);

// A tensor the load took, as stored in its weight file: what
// lp_model_tensor_hashes hashes (tensor_hash.c). Every loader notes each
// tensor it reads through lp_model_note_tensor, so the hashes cover
// whatever a format keeps (safetensors now, GGUF the same way).
struct lp_model_tensor {
    const char *name;  // its name in the file, borrowed from the file's directory
    int layer;         // the layer it belongs to; -1: embedding, head, final norm
    int file;          // index of its weight file (lp_model_file_path), -1 if unknown
    const void *data;  // [nbytes] in the file's mapping
    size_t nbytes;
    bool hashed;       // hash is known (computed or read from the cache)
    uint64_t hash;     // XXH3-64 of the bytes
};
// Notes a tensor the load takes for the layer being loaded. m is being opened.
enum lp_status lp_model_note_tensor(struct lp_model *m, int file, const char *name,
                                    const void *data, size_t nbytes, struct lp_error *err);
// Every noted tensor (mutable: tensor_hash.c fills the hashes), in load order.
struct lp_model_tensor *lp_model_tensors(struct lp_model *m, int *n);
// The path and the mapping's first byte of weight file `file`; NULL if there is none.
const char *lp_model_file_path(const struct lp_model *m, int file);
const void *lp_model_file_base(const struct lp_model *m, int file);

// The tensor-hash cache file's format (tensor_hash.c), for tests and
// fuzzing: parses text[n] as a cache for the weight file of (size,
// mtime_s, mtime_ns); returns its number of entries, or -1 when the text is
// malformed or written for another file. With out non-NULL (and a parse),
// *out is the entries written back in the file's format (malloc'd, NUL-
// terminated, *n_out bytes; NULL when out of memory).
int lp_tensor_hash_cache_check(const char *text, size_t n, unsigned long long size,
                               unsigned long long mtime_s, unsigned long long mtime_ns,
                               char **out, size_t *n_out);

// FNV-1a 64-bit over n bytes, continuing from h (start: 0xcbf29ce484222325).
uint64_t lp_fnv1a64(uint64_t h, const void *data, size_t n);

#endif
