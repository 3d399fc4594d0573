// SPDX-License-Identifier: MIT
// rpc_internal.h -- what rpc_server.c and rpc_client.c share: the tag every
// completion-queue event points to, the status table, channel arguments,
// and the byte-buffer <-> bytes glue. Declared here, defined in rpc_common.c.
#ifndef LP_CLUSTER_RPC_INTERNAL_H
#define LP_CLUSTER_RPC_INTERNAL_H

#include <grpc/byte_buffer.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <stddef.h>
#include <stdint.h>

#include "cluster/rpc.h"

#define LP_RPC_DEFAULT_MAX_MESSAGE_BYTES ((size_t)64 << 20)

// Every tag handed to gRPC points to one of these, embedded in its owner;
// the polling thread calls done(tag, ok) for each event.
struct lp_rpc_tag {
    void (*done)(struct lp_rpc_tag *tag, int ok);
};

#define LP_RPC_CONTAINER(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

// Runs the completion queue until it is shut down and drained.
void lp_rpc_cq_run(grpc_completion_queue *cq);

// The one status table of the cluster module (both directions).
grpc_status_code lp_rpc_status_to_grpc(enum lp_status st);
enum lp_status lp_rpc_status_from_grpc(grpc_status_code code);
const char *lp_rpc_grpc_code_name(grpc_status_code code); // "UNAVAILABLE"

// Channel arguments for a server (is_server = 1) or a client channel. The
// returned struct points into *storage, which the caller keeps alive.
struct lp_rpc_args {
    grpc_arg args[20];
    grpc_channel_args list;
};
const grpc_channel_args *lp_rpc_args_fill(struct lp_rpc_args *storage, int is_server,
                                          size_t max_message_bytes);

// One queued outgoing message (the per-call send queues of both sides).
struct lp_rpc_msg {
    struct lp_rpc_msg *next;
    grpc_byte_buffer *bb;
    size_t bytes;
};
// Copies bytes into a new queue entry; NULL when out of memory.
struct lp_rpc_msg *lp_rpc_msg_create(const uint8_t *p, size_t n);
// Frees a list of entries.
void lp_rpc_msg_free_all(struct lp_rpc_msg *head);

// Copies bytes into a new byte buffer (one slice); NULL when out of memory.
grpc_byte_buffer *lp_rpc_bb_from_bytes(const uint8_t *p, size_t n);
// Wraps a malloc'd block without copying; the buffer frees it.
grpc_byte_buffer *lp_rpc_bb_take(uint8_t *p, size_t n);

// A received message as contiguous bytes: borrows the slice when the buffer
// is one uncompressed slice, else copies into owned (malloc'd).
struct lp_rpc_view {
    const uint8_t *data;
    size_t bytes;
    uint8_t *owned; // NULL or malloc'd copy; free with lp_rpc_view_deinit
};
enum lp_status lp_rpc_view_init(struct lp_rpc_view *v, grpc_byte_buffer *bb, struct lp_error *err);
void lp_rpc_view_deinit(struct lp_rpc_view *v);

// Copies a slice into a NUL-terminated malloc'd string ("" on NULL slice).
char *lp_rpc_slice_strdup(grpc_slice s);

// 1 when the received token equals want; its time does not depend on
// where the bytes differ.
int lp_rpc_token_equal(const char *want, const uint8_t *got, size_t n_got);

// Absolute deadline timeout_ms from now (< 0: infinite).
gpr_timespec lp_rpc_deadline(int timeout_ms);

#endif
