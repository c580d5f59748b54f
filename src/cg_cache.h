/*
 * A process-wide cache of registrations by leaf fingerprint: bounded in entries
 * (so in memory: each entry is a fixed-size cg_reg_t), least recently used out
 * first, negative answers included. Thread-safe.
 *
 * An entry is trusted for at most max_age; an invalidation for its fingerprint
 * (from the Redis channel) drops it at once. A per-connection cache in the
 * adapter compares cg_cache_version(): any invalidation or flush bumps it.
 */
#ifndef CG_CACHE_H
#define CG_CACHE_H

#include <stddef.h>
#include <stdint.h>
#include "cg_reg.h"
#include "cg_usage.h"

typedef struct cg_cache cg_cache_t;

typedef struct {
    uint64_t hits, misses, inserts, evictions, invalidations, flushes, stale_drops;
} cg_cache_stats_t;

cg_cache_t *cg_cache_new(size_t max_entries, int64_t max_age_ms);
void cg_cache_free(cg_cache_t *c);

/* 1 on a fresh hit (found, reg and fetched_ms set); 0 on a miss. */
int cg_cache_get(cg_cache_t *c, const cg_fp_t *fp, int64_t now_ms, int *found, cg_reg_t *reg,
                 int64_t *fetched_ms);

/* Counter of invalidations so far; read it before a store lookup and pass it to put. */
uint64_t cg_cache_version(const cg_cache_t *c);
/* The version itself, for a caller that reads it per request without a call. */
const _Atomic uint64_t *cg_cache_version_at(const cg_cache_t *c);

/* Insert unless an invalidation arrived since `version` was read (it may be stale). */
void cg_cache_put(cg_cache_t *c, const cg_fp_t *fp, int found, const cg_reg_t *reg,
                  int64_t now_ms, uint64_t version);

void cg_cache_invalidate(cg_cache_t *c, const cg_fp_t *fp);
void cg_cache_flush(cg_cache_t *c);

int64_t cg_cache_max_age_ms(const cg_cache_t *c);

/*
 * Stale mode (CertGateOnStoreError stale N): keep expired entries up to
 * keep_ms after they were read (still misses for cg_cache_get; LRU and
 * invalidations drop them as ever), and find a registration read less than
 * within_ms ago, for when the store cannot be asked. 1 when found.
 */
void cg_cache_keep_expired(cg_cache_t *c, int64_t keep_ms);
int cg_cache_get_recent(cg_cache_t *c, const cg_fp_t *fp, int64_t now_ms, int64_t within_ms,
                        cg_reg_t *reg, int64_t *fetched_ms);
size_t cg_cache_size(cg_cache_t *c);
void cg_cache_stats(cg_cache_t *c, cg_cache_stats_t *out);

/*
 * What one TLS connection last learned of its leaf, kept by the adapter (and
 * locked by it where HTTP/2 streams share it). It answers while no
 * invalidation arrived since (the cache version) and within the max age.
 */
typedef struct {
    int valid;
    int found;
    cg_fp_t fp;
    cg_reg_t reg;
    uint64_t version;
    int64_t fetched_ms;
    uint64_t gen;               /* bumped by every set: the adapter's copies of reg's values
                                 * (exports) are still right while it holds */
    /* The last allow decided on this entry (cg_gate.c), reused for the same
     * peer fill, second and app while the entry answers. Not for shared entries. */
    int memo;
    int64_t memo_now;
    const void *memo_peer;
    uint64_t memo_peer_gen;
    int memo_app_set;           /* 0: the request named no app (NULL) */
    char memo_app[CG_APP_MAX + 1];
    char memo_expire_in[24];
    cg_usage_hint_t memo_usage;     /* where reg's usage record is (cg_usage_hit_hint) */
} cg_conn_entry_t;

/* 1 and *found (and *reg when found) if e still answers for fp; 0 otherwise. */
int cg_conn_entry_get(const cg_conn_entry_t *e, const cg_cache_t *c, const cg_fp_t *fp,
                      int64_t now_ms, int *found, cg_reg_t *reg);
/* As cg_conn_entry_get without the copy: *reg is e's record, NULL when not
 * found. Only for an entry no other thread can change meanwhile. */
int cg_conn_entry_ref(const cg_conn_entry_t *e, const cg_cache_t *c, const cg_fp_t *fp,
                      int64_t now_ms, const cg_reg_t **reg);
/* Remember an answer read at cache version `version`, fetched at fetched_ms. */
void cg_conn_entry_set(cg_conn_entry_t *e, const cg_fp_t *fp, int found, const cg_reg_t *reg,
                       uint64_t version, int64_t fetched_ms);

/* Monotonic milliseconds and microseconds. */
int64_t cg_now_ms(void);
int64_t cg_now_us(void);

#endif
