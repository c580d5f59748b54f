/*
 * The gate sequence, once for both servers: from "peer certificate known" to
 * "reason known". It owns a process's store, registration cache, invalidation
 * subscriber and usage thread, applies the cache protocol and the fail-open
 * rule, counts metrics and writes the allow/deny/store-error log lines through
 * one sink the adapter installs. Server-free: no httpd or nginx headers.
 *
 * Two ways to run it:
 *  - blocking (httpd): cg_gate_run.
 *  - without I/O (nginx): cg_gate_begin answers from the caches or hands out
 *    the first Redis command; the adapter sends each command of lk and feeds
 *    each reply to cg_gate_lookup_reply until it returns 0; then
 *    cg_gate_finish records the answer and decides.
 */
#ifndef CG_GATE_H
#define CG_GATE_H

#include <stddef.h>
#include <stdint.h>
#include "cg_cache.h"
#include "cg_decide.h"
#include "cg_metrics.h"
#include "cg_store.h"
#include "cg_tls.h"

/* Defaults and ranges of the gate's directives (both servers' parsers use them). */
#define CG_GATE_HOST_DEFAULT "127.0.0.1"
#define CG_GATE_PORT_DEFAULT 6379
#define CG_GATE_PREFIX_DEFAULT "certgate:"
#define CG_GATE_DB_MAX CG_STORE_DB_MAX
#define CG_GATE_TIMEOUT_MS_DEFAULT 200
#define CG_GATE_TIMEOUT_MS_MIN CG_STORE_TIMEOUT_MS_MIN
#define CG_GATE_TIMEOUT_MS_MAX CG_STORE_TIMEOUT_MS_MAX
#define CG_GATE_MAX_IDLE_DEFAULT 16
#define CG_GATE_MAX_IDLE_MAX CG_STORE_MAX_IDLE_MAX
#define CG_GATE_CACHE_ENTRIES_DEFAULT 10000
#define CG_GATE_CACHE_ENTRIES_MIN 1
#define CG_GATE_CACHE_ENTRIES_MAX 10000000
#define CG_GATE_CACHE_MAX_AGE_DEFAULT 5         /* seconds */
#define CG_GATE_CACHE_MAX_AGE_MIN 1
#define CG_GATE_CACHE_MAX_AGE_MAX 3600
#define CG_GATE_USAGE_INTERVAL_DEFAULT 5        /* seconds; 0: off */
#define CG_GATE_USAGE_INTERVAL_MAX 3600
#define CG_GATE_USAGE_CAP 4096                  /* registrations held between flushes */
#define CG_GATE_USAGE_TIMEOUT_MS 2000           /* bound on one usage flush */

typedef struct {
    cg_store_cfg_t store;       /* strings are copied by the gate */
    int cache_on;
    size_t cache_entries;
    int cache_max_age_s;
    int usage_interval_s;       /* 0: usage is not recorded */
    int stale_keep_s;           /* stale mode: keep expired cache entries this long (the
                                 * largest N of the requests' stale_s); 0: off */
    int loop_bg;                /* 1: no usage or subscriber thread: the adapter's event loop
                                 * flushes usage and subscribes (cg_gate_usage, cg_gate_sub_*) */
} cg_gate_cfg_t;

#define CG_GATE_STALE_MAX_S 86400

void cg_gate_cfg_defaults(cg_gate_cfg_t *c);

/* Log levels (syslog's numbers). */
enum { CG_LOG_CRIT = 2, CG_LOG_ERR = 3, CG_LOG_WARN = 4, CG_LOG_INFO = 6, CG_LOG_DEBUG = 7 };

/*
 * Where the core's lines go; installed once per process by the adapter. ctx
 * is the request's (cg_gate_in_t.log_ctx) or, for process lines and threads,
 * the one given to cg_gate_new. Called from the gate's threads too.
 */
typedef void (*cg_gate_log_fn)(void *ctx, int level, const char *msg);
void cg_gate_set_log(cg_gate_log_fn fn);
/* Optional: whether the sink would write a line of level for ctx (ctx as for
 * the sink); lines it would drop are then not formatted. NULL: always. */
typedef int (*cg_gate_log_check_fn)(void *ctx, int level);
void cg_gate_set_log_check(cg_gate_log_check_fn fn);

typedef struct cg_gate cg_gate_t;

/*
 * A gate for one process (an httpd child, an nginx worker): store and cache,
 * no thread yet. metrics: shared counters, or NULL for the gate's own. A store
 * or cache that cannot be set up is logged (CG04004, CG04005): the gate then
 * answers store_unavailable, or runs without a cache. NULL only without memory.
 */
cg_gate_t *cg_gate_new(const cg_gate_cfg_t *cfg, cg_metrics_t *metrics, void *log_ctx);
/* Start the usage and invalidation threads (CG04009, CG04006 when they cannot). */
void cg_gate_start(cg_gate_t *g);
/* Stop the threads (last usage flush included), then free everything. */
void cg_gate_free(cg_gate_t *g);
/* The process's caches of certificates (fingerprints, kept chain
 * certificates): freed when the process ends, after its last request (an
 * httpd child's pool cleanup, nginx's exit_process). */
void cg_process_caches_free(void);

/* Sentinel events of a store made outside a gate (nginx's admin API), logged
 * (CG11001..CG11005) and counted as a gate's: cfg.sentinel_event =
 * cg_gate_sentinel_event, cfg.sentinel_arg = one of these, outliving the store.
 * metrics NULL: logged only. */
typedef struct {
    cg_metrics_t *metrics;
    void *log_ctx;
} cg_gate_events_t;
void cg_gate_sentinel_event(void *events, int ev, const char *msg);

cg_store_t *cg_gate_store(cg_gate_t *g);          /* NULL if it could not be set up */
cg_cache_t *cg_gate_cache(cg_gate_t *g);          /* NULL with the cache off */
cg_metrics_t *cg_gate_metrics(cg_gate_t *g);
int cg_gate_timeout_ms(const cg_gate_t *g);
const char *cg_gate_prefix(const cg_gate_t *g);

/* The lock of a connection entry shared by streams (HTTP/2); lock 1, unlock 0. */
typedef void (*cg_gate_lock_fn)(void *arg, int lock);

typedef struct {
    const cg_peer_t *peer;      /* NULL: no usable certificate */
    const char *app;            /* the app the request names; NULL: any */
    int app_ambiguous;
    int cert_only;              /* the app is checked later: an allow is not final */
    int fail_open;              /* CertGateOnStoreError allow */
    int debug_off;              /* 1: the adapter knows its sink drops debug lines for
                                 * log_ctx (the sink's check is then not called) */
    int64_t now;                /* unix seconds */
    const char *client;         /* client address, for the log */
    void *log_ctx;
    cg_conn_entry_t *conn;      /* this connection's entry, or NULL */
    cg_gate_lock_fn lock;       /* NULL: conn needs no lock */
    void *lock_arg;
    int shadow;                 /* shadow mode: decide, log and count, refuse nothing */
    int stale_s;                /* CertGateOnStoreError stale N: N, else 0 */
    uint64_t client_seq;        /* non-zero: the text at client is the same whenever this
                                 * value and that pointer are (the adapter's own copy of
                                 * the address); 0: not known */
} cg_gate_in_t;

#define CG_GATE_ERR_MAX 160

/* One lookup in flight (the adapter may keep it beyond the request). */
typedef struct {
    cg_fp_t leaf;
    int step;                   /* 1: GET index, 2: HGETALL record, 3: HGET app owner */
    uint64_t version;           /* cache version read before the lookup */
    int64_t started_ms, started_us;
    char key[CG_LOOKUP_KEY_MAX];        /* argument of the command to send */
    char reg_key[CG_LOOKUP_KEY_MAX];
    int argc;                   /* the command to send: argv/lens */
    const char *argv[3];
    size_t lens[3];
    cg_store_rc_t rc;           /* when over */
    cg_reg_t reg;
    char err[CG_GATE_ERR_MAX];
} cg_gate_lookup_t;

typedef struct {
    cg_reason_t reason;
    int pass;                   /* let the request through: allow, fail-open or shadow */
    int final;                  /* 0: cert_only allow, the app is checked later */
    int has_reg;
    cg_reg_t reg;               /* filled only when regp points to it */
    const cg_reg_t *regp;       /* has_reg: the registration decided on, either &reg or the
                                 * connection entry read in place (HTTP/1 without lock; valid
                                 * until the connection's next request). A cert_only allow
                                 * always copies into reg. */
    char fp_hex[CG_FP_HEX_LEN + 1];     /* "-" without a leaf */
    char expire_in[24];         /* whole days, on allow */
    int would_deny;             /* shadow mode: reason is a deny that was not enforced (pass) */
    uint64_t conn_gen;          /* non-zero: regp is the connection entry's record, which
                                 * has not changed while this value stays the same (an
                                 * adapter may keep copies of its values per connection) */
} cg_gate_verdict_t;

enum { CG_GATE_DONE = 0, CG_GATE_LOOKUP = 1 };

/* DONE: v is the verdict. LOOKUP: send lk's command, feed replies to cg_gate_lookup_reply. */
int cg_gate_begin(cg_gate_t *g, const cg_gate_in_t *in, cg_gate_lookup_t *lk,
                  cg_gate_verdict_t *v);
/* One reply (NULL: the connection is gone, errstr may say why). 1: send lk's
 * next command; 0: the lookup is over (lk->rc, lk->reg, lk->err). */
int cg_gate_lookup_reply(const cg_gate_t *g, cg_gate_lookup_t *lk, const struct redisReply *r,
                         const char *errstr);
/* End a lookup that got no answer. */
void cg_gate_lookup_fail(cg_gate_lookup_t *lk, cg_store_rc_t rc, const char *err);
/* Count and cache the lookup's answer, then decide. */
void cg_gate_finish(cg_gate_t *g, const cg_gate_in_t *in, cg_gate_lookup_t *lk,
                    cg_gate_verdict_t *v);
/* Decide on a known store answer (a cert_only allow before, or a finished lookup).
 * Of v only reason, pass, final, has_reg, regp, fp_hex, expire_in, would_deny are set. */
void cg_gate_decide(cg_gate_t *g, const cg_gate_in_t *in, cg_store_rc_t rc,
                    const cg_reg_t *reg, const char *err, cg_gate_verdict_t *v);
/* The whole sequence with the blocking store. */
void cg_gate_run(cg_gate_t *g, const cg_gate_in_t *in, cg_gate_verdict_t *v);

/*
 * With cfg.loop_bg the adapter does the threads' work on its event loop, and
 * the core keeps the protocol, the counting and the log lines.
 */
struct cg_usage;
/* The hit table (no thread), to flush with cg_usage_batch_*; NULL: usage is
 * not recorded. cg_gate_free writes its last batch, blocking. */
struct cg_usage *cg_gate_usage(cg_gate_t *g);
/* The invalidation channel ("<prefix>invalidate"); 0, or -1 if cap is short. */
int cg_gate_sub_channel(const cg_gate_t *g, char *out, size_t cap);
/* A subscriber state change (CG_SUB_* of cg_sub.h), logged as the thread's
 * (CG07001..CG07003); CG_SUB_SUBSCRIBED also flushes the cache. */
void cg_gate_sub_event(cg_gate_t *g, int event, const char *detail);
/* A reply heard on the subscription (invalidate or flush, counted). */
void cg_gate_sub_message(cg_gate_t *g, const struct redisReply *r);

/* RFC 8705 thumbprint x5t#S256 of a leaf: base64url of its SHA-256, no padding.
 * Adapters compute it once per connection from the peer's fingerprint. */
#define CG_X5T_S256_LEN 43
void cg_gate_x5t_s256(const cg_fp_t *leaf, char out[CG_X5T_S256_LEN + 1]);

#endif
