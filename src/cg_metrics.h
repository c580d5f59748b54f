/*
 * Counters shared by every process of a server (the adapter puts this struct
 * in shared memory before forking) and their Prometheus text rendering.
 * Lock-free: C11 atomics on shared memory.
 */
#ifndef CG_METRICS_H
#define CG_METRICS_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include "cg_decide.h"
#include "cg_store.h"

#define CG_LAT_BUCKETS 10

typedef struct {
    _Atomic uint64_t decisions[CG_R__COUNT];
    _Atomic uint64_t cache_conn_hits, cache_proc_hits, cache_misses;
    _Atomic uint64_t redis_ok, redis_errors, redis_timeouts, redis_corrupt;
    _Atomic uint64_t redis_conn, redis_perm;
    _Atomic uint64_t redis_lat[CG_LAT_BUCKETS + 1];   /* last one is +Inf */
    _Atomic uint64_t redis_lat_sum_us;
    _Atomic uint64_t invalidations, flushes;
    _Atomic uint64_t inval_lag[CG_LAT_BUCKETS + 1];
    _Atomic uint64_t inval_lag_sum_us, inval_lag_count;
    _Atomic uint64_t usage_flushes, usage_dropped;
    _Atomic uint64_t expiry_events;
    _Atomic uint64_t would_deny[CG_R__COUNT];      /* shadow mode: denies not enforced */
    /* Sentinel discovery (cg_sentinel.h events). */
    _Atomic uint64_t sentinel_unreachable, sentinel_unknown, sentinel_not_master;
    _Atomic uint64_t sentinel_switches, sentinel_distrusts;
    _Atomic uint64_t stale_allows;      /* stale mode: allowed from a record read before */
} cg_metrics_t;

/* Bucket upper bounds in microseconds (shared by both histograms). */
extern const uint64_t cg_metrics_bounds_us[CG_LAT_BUCKETS];

void cg_metrics_init(cg_metrics_t *m);
void cg_metrics_decision(cg_metrics_t *m, cg_reason_t r);
/* A deny that shadow mode did not enforce (counted besides the decision). */
void cg_metrics_would_deny(cg_metrics_t *m, cg_reason_t r);
/* rc: 0 ok (found or not), 1 error, 2 timeout, 3 corrupt record, 4 connection,
 * 5 permission. */
void cg_metrics_redis(cg_metrics_t *m, uint64_t us, int rc);
/* The same for a store result. */
void cg_metrics_store(cg_metrics_t *m, uint64_t us, cg_store_rc_t rc);
void cg_metrics_invalidation(cg_metrics_t *m, int64_t lag_us);   /* lag < 0: unknown */

/* Numbers read from Redis at scrape time. */
typedef struct {
    uint64_t by_status[4];          /* PENDING, APPROVED, DECLINED, INACTIVATED (stored) */
    uint64_t expired;
    uint64_t expiring[3];           /* within 7, 30, 90 days (approved or pending, not expired) */
    int ok;                         /* 0 when Redis could not be read */
    cg_store_rc_t fail;             /* when not ok: why (a cg_store_failed kind) */
} cg_store_stats_t;

/* Render the Prometheus text exposition. Returns a malloc'd string. */
char *cg_metrics_render(const cg_metrics_t *m, const cg_store_stats_t *st);

#endif
