// SPDX-License-Identifier: MIT
// rpc.h -- the cluster's transport: unary calls and bidirectional streams of
// raw bytes over gRPC's C core: plaintext HTTP/2, or TLS / mutual TLS with
// gRPC's own credentials, and an optional cluster token that every call
// carries in its metadata and every server checks before routing the call.
// Protobuf encoding lives on top of this module; nothing here knows a
// message type.
//
// Threads: every server and every channel owns one completion queue and one
// polling thread; all callbacks of that server/channel run on it, in order.
// A callback must not block for long (it stalls every call of its owner) and
// must not call the owner's destroy/close functions (that would wait on
// itself). Message pointers handed to callbacks are borrowed for the call.
// Internal header: never included from include/ (public headers stay
// gRPC-free).
#ifndef LP_CLUSTER_RPC_H
#define LP_CLUSTER_RPC_H

#include <stddef.h>
#include <stdint.h>

#include "layerpipe/cluster.h"
#include "layerpipe/status.h"

// Process-wide, reference-counted grpc_init/grpc_shutdown. Every create
// function below takes its own reference, so calling these is optional; a
// program calls them to keep gRPC's threads alive between servers. Thread-safe.
void lp_rpc_init(void);
void lp_rpc_shutdown(void);

// -------------------------------------------------------------- security ---

// The metadata key that carries the cluster token on every call.
#define LP_RPC_TOKEN_KEY "x-layerpipe-token"

// Loaded transport settings (immutable once created; any thread may read):
// the PEM texts of --tls-cert/--tls-key/--tls-ca and the cluster token.
// TLS is on when cert and key are given; mutual TLS when a CA is given too.
struct lp_rpc_security {
    char *cert_pem, *key_pem, *ca_pem; // NUL-terminated PEM, NULL when not given
    char *token;                       // the cluster token, NULL when not given
    bool health_open;                  // Health answers without the token
    lp_security_log_fn log;            // refused calls (NULL: silent)
    void *log_user;
};

// Reads the files named in p (NULL p or no settings: plaintext, no token).
// Errors name the flag and the file: a certificate without its key, a CA
// without a certificate, an unreadable or empty file, a token with bytes a
// header cannot carry. On failure *out = NULL.
enum lp_status lp_rpc_security_create(struct lp_rpc_security **out,
                                      const struct lp_security_params *p, struct lp_error *err);
void lp_rpc_security_destroy(struct lp_rpc_security *sec); // accepts NULL
// 1 when TLS is on.
int lp_rpc_security_tls(const struct lp_rpc_security *sec);

// ---------------------------------------------------------------- server ---

struct lp_rpc_server;
struct lp_rpc_stream; // the server side of one bidi-streaming call

// Unary handler, on the server thread. `req` is borrowed for the call. On
// LP_OK, *resp (malloc'd by the handler, NULL when *resp_bytes is 0) is sent
// and freed by the server. On error the call ends with the gRPC status mapped
// from the returned lp_status (lp_rpc_status_to_grpc) and err->msg as its
// details; *resp is then ignored (the handler frees what it allocated).
typedef enum lp_status (*lp_rpc_unary_fn)(void *user, const uint8_t *req, size_t req_bytes,
                                          uint8_t **resp, size_t *resp_bytes,
                                          struct lp_error *err);

// Handlers of one streaming method; all three run on the server thread.
struct lp_rpc_stream_handler {
    // Once when a client opens the stream (before its first message). Sets
    // *stream_user (per-stream state). A non-OK return ends the call at once
    // with that status; on_close is then NOT called.
    enum lp_status (*on_open)(void *user, struct lp_rpc_stream *s, void **stream_user,
                              struct lp_error *err);
    // Each received message, in order. May call lp_rpc_stream_send. A non-OK
    // return stops reading and ends the stream with that status (after the
    // messages already queued are sent).
    enum lp_status (*on_message)(void *user, void *stream_user, struct lp_rpc_stream *s,
                                 const uint8_t *msg, size_t bytes, struct lp_error *err);
    // Exactly once, after the last on_message, when the call is over: LP_OK
    // when the client half-closed and the final status went out; the
    // on_message error; or LP_ERR_CANCELLED (peer gone, server destroyed).
    // `msg` is borrowed for the call. After it returns the stream handle is
    // invalid unless the user holds a reference (lp_rpc_stream_ref).
    void (*on_close)(void *user, void *stream_user, enum lp_status st, const char *msg);
};

// Creates a server listening on `listen_addr` ("host:port", port 0 picks a
// free one; SO_REUSEPORT is off, so a busy port fails with LP_ERR_NETWORK
// naming the address). Messages larger than max_message_bytes are refused in
// both directions (0 means 64 MiB). `sec` (NULL: plaintext, no token) is
// borrowed until destroy: with TLS the port serves TLS only (and asks for a
// client certificate signed by sec's CA when it has one); with a token every
// call without the right one ends UNAUTHENTICATED before its handler runs
// (Health too unless health_open), and sec->log gets one line naming the
// method and the peer. Not started yet: add methods, then start.
// On failure *out = NULL.
enum lp_status lp_rpc_server_create(struct lp_rpc_server **out, const char *listen_addr,
                                    size_t max_message_bytes, const struct lp_rpc_security *sec,
                                    struct lp_error *err);

// The bound TCP port (the real one when created with port 0).
int lp_rpc_server_port(const struct lp_rpc_server *s);

// Registers a method ("/pkg.Service/Method", copied). Only before start.
// `user` is borrowed until destroy. Unknown methods get UNIMPLEMENTED.
enum lp_status lp_rpc_server_add_unary(struct lp_rpc_server *s, const char *method,
                                       lp_rpc_unary_fn fn, void *user, struct lp_error *err);
// As add_unary, but each call's handler runs on a thread of its own (the
// handler must be thread-safe against the server's other handlers): a slow
// call (Configure loading layers) stalls nothing else. Destroy still waits
// for the call to end.
enum lp_status lp_rpc_server_add_unary_slow(struct lp_rpc_server *s, const char *method,
                                            lp_rpc_unary_fn fn, void *user, struct lp_error *err);
enum lp_status lp_rpc_server_add_stream(struct lp_rpc_server *s, const char *method,
                                        const struct lp_rpc_stream_handler *h, void *user,
                                        struct lp_error *err);

// Starts serving and the server thread. Once only.
enum lp_status lp_rpc_server_start(struct lp_rpc_server *s, struct lp_error *err);

// Clean shutdown: stops listening, cancels every call, waits until every
// on_close has run, joins the thread, frees. Accepts NULL. Not from a
// callback of this server.
void lp_rpc_server_destroy(struct lp_rpc_server *s);

// Queues one message to the client (copied into a gRPC slice). Never blocks
// beyond a mutex. Any thread. Returns LP_ERR_CANCELLED once the stream is
// finishing or closed, LP_ERR_NOMEM / LP_ERR_INVALID_ARG (over the max size).
enum lp_status lp_rpc_stream_send(struct lp_rpc_stream *s, const uint8_t *msg, size_t bytes,
                                  struct lp_error *err);

// Bytes queued on this stream and not yet handed to gRPC. Any thread.
size_t lp_rpc_stream_queued_bytes(struct lp_rpc_stream *s);

// Extra references keep the handle valid past on_close (so a worker thread
// may still call lp_rpc_stream_send, which then returns LP_ERR_CANCELLED).
// Take the reference while the handle is valid (on_open, on_message); each
// ref needs one unref. Any thread.
void lp_rpc_stream_ref(struct lp_rpc_stream *s);
void lp_rpc_stream_unref(struct lp_rpc_stream *s);

// A hold says replies to received messages are still owed (a worker thread
// computes them): while any hold is taken, a client's half-close does not
// end the stream; the last unhold then sends the final OK status. Take a
// hold while the handle is valid (in on_message) together with a ref.
// Any thread.
void lp_rpc_stream_hold(struct lp_rpc_stream *s);
void lp_rpc_stream_unhold(struct lp_rpc_stream *s);

// ---------------------------------------------------------------- client ---

struct lp_rpc_channel;
struct lp_rpc_client_stream;

// Creates a channel to "host:port" (connects lazily; keepalive every 6 min
// while a call is open, see lp_rpc_args_fill; reconnect backoff 0.2..2 s).
// max_message_bytes as for the server. `sec` (NULL: plaintext, no token) is
// borrowed until destroy: with TLS the server's certificate must chain to
// sec's CA and name the target's host (DNS or IP SAN), and the channel
// presents sec's certificate; every call sends sec's token. On failure
// *out = NULL.
enum lp_status lp_rpc_channel_create(struct lp_rpc_channel **out, const char *target,
                                     size_t max_message_bytes, const struct lp_rpc_security *sec,
                                     struct lp_error *err);

// Frees the channel and joins its thread. Every client stream on it must be
// closed first. Accepts NULL.
void lp_rpc_channel_destroy(struct lp_rpc_channel *c);

// Blocking unary call (any thread; concurrent calls are fine). Fails fast
// when the peer cannot be reached. On LP_OK *resp is malloc'd (caller frees;
// NULL when *resp_bytes is 0). A non-OK gRPC status maps to an lp_status
// (lp_rpc_status_from_grpc) with a message naming the target, the method and
// the gRPC details: "127.0.0.1:5001 /layerpipe.v1.Stage/Hello: UNAVAILABLE: ...".
enum lp_status lp_rpc_call_unary(struct lp_rpc_channel *c, const char *method,
                                 const uint8_t *req, size_t req_bytes, uint8_t **resp,
                                 size_t *resp_bytes, int timeout_ms, struct lp_error *err);

// Reply callback: each server message, in order, on the channel's thread.
typedef void (*lp_rpc_reply_fn)(void *user, const uint8_t *msg, size_t bytes);
// End callback: exactly once, after the last reply, on the channel's thread:
// LP_OK after a clean end, else the mapped status and a message naming the
// target and method ("127.0.0.1:5001 /m: UNAVAILABLE: Socket closed").
typedef void (*lp_rpc_end_fn)(void *user, enum lp_status st, const char *msg);

// Opens a bidi stream (no deadline; keepalive notices a dead peer). `user`
// is borrowed until close returns. The stream fails fast (on_end with
// LP_ERR_NETWORK) when the server cannot be reached. *out must be closed with
// lp_rpc_client_stream_close even after on_end.
enum lp_status lp_rpc_stream_open(struct lp_rpc_channel *c, const char *method,
                                  lp_rpc_reply_fn on_reply, lp_rpc_end_fn on_end, void *user,
                                  struct lp_rpc_client_stream **out, struct lp_error *err);

// Queues a message (copied). Never blocks beyond a mutex (the queue is
// unbounded: watch lp_rpc_client_stream_queued_bytes). Any thread, but not
// concurrently with close. Once the stream has ended returns its failure
// (e.g. LP_ERR_NETWORK with the target), or LP_ERR_CANCELLED after a clean end.
enum lp_status lp_rpc_client_stream_write(struct lp_rpc_client_stream *s, const uint8_t *msg,
                                          size_t bytes, struct lp_error *err);

// As lp_rpc_client_stream_write, but takes ownership of msg (a malloc'd
// block, freed by the stream; also on failure): no copy of the payload.
enum lp_status lp_rpc_client_stream_write_take(struct lp_rpc_client_stream *s, uint8_t *msg,
                                               size_t bytes, struct lp_error *err);

// Bytes queued on this stream and not yet handed to gRPC. Any thread.
size_t lp_rpc_client_stream_queued_bytes(struct lp_rpc_client_stream *s);

// Half-closes after the queued messages are sent, waits up to timeout_ms
// (< 0: forever) for the server's final status, then cancels; frees. on_end
// has run when it returns. Accepts NULL. Not from the channel's callbacks.
void lp_rpc_client_stream_close(struct lp_rpc_client_stream *s, int timeout_ms);

// Cancels now (on_end gets LP_ERR_CANCELLED unless it already ran). Any
// thread; close still has to free the stream.
void lp_rpc_client_stream_cancel(struct lp_rpc_client_stream *s);

#endif
