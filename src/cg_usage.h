/*
 * Usage per registration (request count, last seen, last client IP), counted in
 * the process and written to Redis in one pipeline every few seconds by a
 * thread: never a Redis write per request.
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
/* Final flush, stop and join; frees u. */
void cg_usage_stop(cg_usage_t *u);

#endif
