/*
 * Usage per registration (request count, last seen, last client IP), counted in
 * the process and written to Redis in one pipeline every few seconds, by a
 * thread (cg_usage_start) or by the server's event loop (cg_usage_new and the
 * cg_usage_batch_* functions): never a Redis write per request.
 */
#ifndef CG_USAGE_H
#define CG_USAGE_H

#include <stddef.h>
#include <stdint.h>
#include "cg_store.h"

typedef struct cg_usage cg_usage_t;

/* Called after each flush: how many records were written and dropped. */
typedef void (*cg_usage_flush_fn)(void *arg, size_t written, size_t dropped, const char *err);

/* cap: distinct registrations held between flushes (more are dropped, counted). */
cg_usage_t *cg_usage_start(cg_store_t *st, size_t cap, int interval_ms, int timeout_ms,
                           cg_usage_flush_fn on_flush, void *arg);
/* Record one allowed request. Thread-safe, no I/O. */
void cg_usage_hit(cg_usage_t *u, const char *reg_id, int64_t now_s, const char *client_ip);

/* Where a registration's record is in the table now; all zero: not known. */
typedef struct {
    uint64_t gen;
    size_t slot;
    /* Set by the caller before each call: non-zero when the text at client_ip is
     * the same whenever this value and that pointer are (an adapter's own copy
     * of the address); 0: not known. */
    uint64_t client_seq;
    /* The address last recorded through this hint, and the record's ip_seq
     * then: while neither changed, the address is not compared again. */
    const char *ip;
    uint64_t ip_client_seq, rec_ip_seq;
} cg_usage_hint_t;
/* cg_usage_hit for a caller that records one registration again and again:
 * *hint (zeroed first, and again whenever reg_id may name another
 * registration) saves looking the record up while the table is not swapped. */
void cg_usage_hit_hint(cg_usage_t *u, const char *reg_id, int64_t now_s, const char *client_ip,
                       cg_usage_hint_t *hint);
/* Final flush (blocking, timeout_ms), stop and join; frees u. */
void cg_usage_stop(cg_usage_t *u);

/* The hit table alone, no thread: the caller flushes with cg_usage_batch_*
 * (cg_usage_stop still writes the last batch, blocking). */
cg_usage_t *cg_usage_new(cg_store_t *st, size_t cap, int timeout_ms,
                         cg_usage_flush_fn on_flush, void *arg);

/*
 * A flush in steps, for a caller that does its own I/O: take the records
 * counted so far with their commands (one EVAL each), send them, feed each
 * reply, end. One batch at a time.
 */
struct redisReply;
typedef struct cg_usage_batch cg_usage_batch_t;
/* NULL: nothing to report, or the last batch is not ended (the hits wait). */
cg_usage_batch_t *cg_usage_batch_take(cg_usage_t *u);
size_t cg_usage_batch_len(const cg_usage_batch_t *b);
/* Command i (< len): argc, argv and lens valid until the batch ends. */
void cg_usage_batch_cmd(const cg_usage_batch_t *b, size_t i, int *argc,
                        const char *const **argv, const size_t **lens);
/* A reply to one command; NULL (none came) and error replies drop the record. */
void cg_usage_batch_reply(cg_usage_batch_t *b, const struct redisReply *r);
/* Report through on_flush (records never answered count as dropped; err: why,
 * or NULL) and release the batch. */
void cg_usage_batch_end(cg_usage_batch_t *b, const char *err);

#endif
