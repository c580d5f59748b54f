/*
 * Redis Sentinel discovery (hiredis 0.14 has none): which node is the master
 * of a named set right now. Follows the Sentinel client algorithm: ask the
 * sentinels in order with short timeouts, move the one that answered to the
 * front, and let the caller check ROLE on the address before trusting it.
 * The answer is kept until a caller distrusts it (error, timeout, READONLY,
 * LOADING, ROLE not master); a changed address bumps a generation number so
 * callers drop the connections they keep to the old one. Thread-safe.
 */
#ifndef CG_SENTINEL_H
#define CG_SENTINEL_H

#include <stddef.h>
#include <stdint.h>

#define CG_SENTINEL_MAX 16              /* sentinels in one list */
#define CG_SENTINEL_HOST_MAX 256
#define CG_SENTINEL_TIMEOUT_MS_DEFAULT 300
#define CG_SENTINEL_NAME_MAX 128

/* What happened, for the caller's log and metrics. */
enum {
    CG_SENTINEL_EV_UNREACHABLE = 1,     /* no sentinel answered */
    CG_SENTINEL_EV_UNKNOWN_MASTER = 2,  /* sentinels answered, none knows the name */
    CG_SENTINEL_EV_NOT_MASTER = 3,      /* the address given is not a master (ROLE) */
    CG_SENTINEL_EV_SWITCHED = 4,        /* the master address changed */
    CG_SENTINEL_EV_DISTRUST = 5,        /* a data node error made us ask again */
};
typedef void (*cg_sentinel_event_fn)(void *arg, int event, const char *msg);

typedef struct cg_sentinel cg_sentinel_t;

/* list: "host:port host:port ..." (spaces or commas). 0 if fine, else -1 and err. */
int cg_sentinel_cfg_check(const char *list, const char *master_name, int timeout_ms,
                          char *err, size_t errlen);

/* user may be NULL; password NULL: no AUTH to sentinels. fn may be NULL. */
cg_sentinel_t *cg_sentinel_new(const char *list, const char *master_name, const char *user,
                               const char *password, int timeout_ms, cg_sentinel_event_fn fn,
                               void *arg, char *err, size_t errlen);
void cg_sentinel_free(cg_sentinel_t *s);

/*
 * The master's address: the trusted one, or ask the sentinels (each bounded by
 * the sentinel timeout and by deadline_ms, CLOCK_MONOTONIC ms). 0 with host,
 * port and *gen set; -1 with err when no sentinel gave an address
 * (*unreachable: 1 no sentinel answered in time, 0 the name is unknown).
 */
int cg_sentinel_master(cg_sentinel_t *s, int64_t deadline_ms, char *host, size_t cap, int *port,
                       uint64_t *gen, int *unreachable, char *err, size_t errlen);

/* A connection made under generation gen failed or found no master: ask the
 * sentinels again next time (the one that answered goes to the back). */
void cg_sentinel_distrust(cg_sentinel_t *s, uint64_t gen, const char *why);

/* Without blocking: the trusted address, 0; -1 when there is none (yet). */
int cg_sentinel_cached(cg_sentinel_t *s, char *host, size_t cap, int *port, uint64_t *gen);

/* A thread that asks the sentinels whenever the address is not trusted
 * (checked every CG_SENTINEL_WATCH_MS), and again every CG_SENTINEL_REFRESH_MS
 * while it is; callers that must never block (nginx workers) only read its
 * answer. Stopped by cg_sentinel_free. 0, or -1 if the thread cannot start. */
#define CG_SENTINEL_WATCH_MS 100
#define CG_SENTINEL_REFRESH_MS 1000
int cg_sentinel_watch(cg_sentinel_t *s);

/* Current generation (bumped when the address changes). */
uint64_t cg_sentinel_gen(cg_sentinel_t *s);
/* 1 while the address is trusted (no distrust since the last answer). */
int cg_sentinel_trusted(cg_sentinel_t *s);

/* Report that the address of generation gen answered ROLE with no master. */
void cg_sentinel_not_master(cg_sentinel_t *s, uint64_t gen, const char *role);

struct redisReply;
/* A ROLE reply says master: 1; else 0 and role gets what it says (bounded). */
int cg_sentinel_role_is_master(const struct redisReply *r, char *role, size_t cap);
/* An error reply after which the node must not be trusted as master:
 * READONLY, LOADING, MASTERDOWN. */
int cg_sentinel_reply_distrusts(const struct redisReply *r);

#endif
