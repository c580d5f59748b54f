/*
 * The invalidation subscriber: one thread per process that listens on the
 * Redis channel the admin API publishes to, and drops the cache entry of each
 * fingerprint it hears about. While it is disconnected the cache still bounds
 * staleness by its max age; on every (re)subscription it flushes the cache,
 * since messages sent in between are lost.
 */
#ifndef CG_SUB_H
#define CG_SUB_H

#include <stddef.h>
#include "cg_cache.h"
#include "cg_store.h"

enum { CG_SUB_SUBSCRIBED = 1, CG_SUB_DISCONNECTED = 2, CG_SUB_CONNECT_FAILED = 3 };

/* Called from the subscriber thread on state changes; msg never holds secrets. */
typedef void (*cg_sub_log_fn)(void *arg, int event, const char *msg);

/* Called for every invalidation; lag_us < 0 when the message carried no time. */
typedef void (*cg_sub_inval_fn)(void *arg, int64_t lag_us);

typedef struct cg_sub cg_sub_t;

/*
 * Messages are "<sha256 hex>" or "<sha256 hex> <unix ms of the write>"; anything
 * else flushes the whole cache.
 */
/*
 * sentinel: the store's (cg_store_sentinel), or NULL for cfg's fixed address.
 * With sentinels the subscriber checks ROLE before subscribing, pings every
 * CG_SUB_CHECK_MS and moves to the new master when the sentinels name
 * another one or the ping goes unanswered; it must be stopped before the
 * sentinel client is freed.
 */
struct cg_sentinel;
#define CG_SUB_CHECK_MS 500
cg_sub_t *cg_sub_start(const cg_store_cfg_t *cfg, struct cg_sentinel *sentinel, cg_cache_t *cache,
                       cg_sub_log_fn log, cg_sub_inval_fn on_inval, void *arg, char *err,
                       size_t errlen);
/* Stop and join the thread; frees s. */
void cg_sub_stop(cg_sub_t *s);
int cg_sub_healthy(const cg_sub_t *s);

/*
 * The subscriber's protocol without its I/O (cg_sub_msg.c): the thread uses
 * it, and so does a server that subscribes on its own event loop.
 */
struct redisReply;
/* The channel, "<prefix>invalidate". 0, or -1 when it does not fit in cap. */
int cg_sub_channel(const char *prefix, char *out, size_t cap);
/* Whether r confirms a SUBSCRIBE. */
int cg_sub_is_subscribed(const struct redisReply *r);
/* A reply heard while subscribed: a "message" invalidates its fingerprint (or
 * flushes the cache when it names none) and is counted by on_inval; other
 * replies are ignored. */
void cg_sub_handle(cg_cache_t *cache, const struct redisReply *r, cg_sub_inval_fn on_inval,
                   void *arg);
/* Subscribed (again): messages sent while away are lost, so start clean. */
void cg_sub_resubscribed(cg_cache_t *cache);
/* The line for a state change (event: CG_SUB_*; detail: why, or NULL), to log. */
void cg_sub_report(cg_sub_log_fn log, void *arg, int event, const char *detail);

#endif
