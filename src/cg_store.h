/* The Redis store of registrations (hiredis, blocking with deadlines). */
#ifndef CG_STORE_H
#define CG_STORE_H

#include <stddef.h>
#include "cg_fp.h"
#include "cg_reg.h"

#define CG_SCHEMA_VERSION "1"
#define CG_PREFIX_MAX 64

/* Ranges cg_store_cfg_check enforces (directive parsers use them through cg_gate.h). */
#define CG_STORE_DB_MAX 15999
#define CG_STORE_TIMEOUT_MS_MIN 1
#define CG_STORE_TIMEOUT_MS_MAX 60000
#define CG_STORE_MAX_IDLE_MAX 1024
#define CG_STORE_STR_(x) #x
#define CG_STORE_STR(x) CG_STORE_STR_(x)

typedef struct {
    const char *host;        /* TCP host, used when socket is NULL */
    int port;
    const char *socket;      /* unix socket path, or NULL */
    const char *user;        /* ACL user, or NULL for the default user */
    const char *password;    /* NULL: no AUTH */
    int db;                  /* SELECT db when > 0 */
    const char *prefix;      /* key prefix, e.g. "certgate:" */
    int timeout_ms;          /* bound on one whole lookup, connect included */
    int max_idle;            /* idle connections kept per process */
    /* Sentinel discovery (cg_sentinel.h): with sentinels set, host/port/socket
     * are not used; user/password stay the data nodes' credentials. */
    const char *sentinels;           /* "host:port host:port", or NULL */
    const char *master_name;
    const char *sentinel_user;       /* NULL: default user */
    const char *sentinel_password;   /* NULL: no AUTH to sentinels */
    int sentinel_timeout_ms;         /* per sentinel; 0: CG_SENTINEL_TIMEOUT_MS_DEFAULT */
    void (*sentinel_event)(void *arg, int event, const char *msg);  /* may be NULL */
    void *sentinel_arg;
    /* Durable admin writes: after a write script, WAIT for this many replicas
     * (0: do not wait) for at most wait_timeout_ms. */
    int wait_replicas;
    int wait_timeout_ms;
} cg_store_cfg_t;

#define CG_STORE_WAIT_REPLICAS_MAX 64
#define CG_STORE_WAIT_TIMEOUT_MS_DEFAULT 500

typedef enum {
    CG_STORE_OK = 0,
    CG_STORE_NOTFOUND,       /* no registration for that fingerprint */
    CG_STORE_ERROR,          /* another error reply (LOADING, OOM...), protocol or local error */
    CG_STORE_CORRUPT,        /* a record or key that does not decode (WRONGTYPE included) */
    CG_STORE_TIMEOUT,        /* the deadline ran out */
    CG_STORE_CONN,           /* no connection: refused, reset, closed, AUTH failed */
    CG_STORE_PERM,           /* Redis refused a command by ACL (NOPERM) */
    CG_STORE__COUNT
} cg_store_rc_t;

/* A failure (not OK, not NOTFOUND). */
static inline int cg_store_failed(cg_store_rc_t rc)
{
    return rc != CG_STORE_OK && rc != CG_STORE_NOTFOUND;
}

/* Label of a result: ok, notfound, error, corrupt, timeout, connection, permission. */
const char *cg_store_rc_name(cg_store_rc_t rc);

struct redisReply;

/* The kind of a reply: CG_STORE_OK unless it is an error reply, then CG_STORE_PERM
 * (NOPERM), CG_STORE_CORRUPT (WRONGTYPE) or CG_STORE_ERROR. */
cg_store_rc_t cg_store_reply_kind(const struct redisReply *r);

typedef struct cg_store cg_store_t;

/* Copies everything from cfg. NULL on bad config (msg says why) or no memory. */
cg_store_t *cg_store_new(const cg_store_cfg_t *cfg, char *err, size_t errlen);
void cg_store_free(cg_store_t *st);

/* Validate a config without connecting. 0 if fine, else -1 and err. */
int cg_store_cfg_check(const cg_store_cfg_t *cfg, char *err, size_t errlen);

/*
 * Look up the registration of a leaf and its app's owner. Thread-safe. Bounded
 * by timeout_ms. err gets a short description on failures; it never holds the
 * password.
 */
cg_store_rc_t cg_store_lookup(cg_store_t *st, const cg_fp_t *leaf, cg_reg_t *out,
                              char *err, size_t errlen);

/*
 * One command for the admin API, within timeout_ms. CG_STORE_OK with *out set
 * (free with cg_store_reply_free) when Redis answered, error replies included
 * (out->type is then REDIS_REPLY_ERROR: see cg_store_reply_kind); else
 * CG_STORE_TIMEOUT, CG_STORE_CONN or CG_STORE_ERROR.
 */
cg_store_rc_t cg_store_cmd(cg_store_t *st, int timeout_ms, int argc, const char **argv,
                           const size_t *lens, struct redisReply **out, char *err, size_t errlen);

/* n commands in one pipeline, within timeout_ms; out[i] are set on CG_STORE_OK. */
cg_store_rc_t cg_store_pipeline(cg_store_t *st, int timeout_ms, size_t n, const int *argcs,
                                const char *const *const *argvs, const size_t *const *lens,
                                struct redisReply **out, char *err, size_t errlen);

/* HGETALL of n keys in one pipeline. out[i] are set on CG_STORE_OK. */
cg_store_rc_t cg_store_hgetall_many(cg_store_t *st, int timeout_ms, const char *const *keys,
                                    size_t n, struct redisReply **out, char *err, size_t errlen);

void cg_store_reply_free(struct redisReply *r);

/*
 * A write command followed by WAIT on the same connection when the store is
 * configured to wait (wait_replicas > 0). As cg_store_cmd; *acked gets how
 * many replicas acknowledged (also when the command answered an error: the
 * state it reports must be durable too), or -1 when no WAIT was asked.
 * *wanted gets wait_replicas.
 */
cg_store_rc_t cg_store_cmd_durable(cg_store_t *st, int timeout_ms, int argc, const char **argv,
                                   const size_t *lens, struct redisReply **out, int *acked,
                                   int *wanted, char *err, size_t errlen);

/*
 * The lookup without I/O, for clients that do their own (the nginx adapter's
 * async one). Three commands on one connection:
 *  1. GET the index key (cg_lookup_index_cmd); feed the reply to
 *     cg_lookup_index_reply, which on CG_STORE_OK writes the record key.
 *  2. HGETALL that key; feed the reply to cg_lookup_reg_reply, which checks the
 *     record's id and fingerprint and on CG_STORE_OK writes the owner key.
 *  3. HGET owner_key CG_LOOKUP_OWNER_FIELD; feed the reply to
 *     cg_lookup_owner_reply, which sets out->app_owner and app_owner_state.
 * Keys fit in CG_LOOKUP_KEY_MAX bytes.
 */
#define CG_LOOKUP_KEY_MAX (CG_PREFIX_MAX + 16 + CG_ID_MAX + CG_FP_HEX_LEN)
#define CG_LOOKUP_OWNER_FIELD "customer_id"
int cg_lookup_index_cmd(const char *prefix, const cg_fp_t *leaf, char *key, size_t cap);
cg_store_rc_t cg_lookup_index_reply(const char *prefix, const struct redisReply *r, char *key,
                                    size_t cap, int *klen, char *err, size_t errlen);
cg_store_rc_t cg_lookup_reg_reply(const char *prefix, const char *reg_key,
                                  const struct redisReply *r, const cg_fp_t *leaf, cg_reg_t *out,
                                  char *owner_key, size_t cap, int *klen, char *err,
                                  size_t errlen);
cg_store_rc_t cg_lookup_owner_reply(const struct redisReply *r, cg_reg_t *out, char *err,
                                    size_t errlen);
/* Decode and check the fingerprint only (step 2 without the id check). */
cg_store_rc_t cg_lookup_record_reply(const struct redisReply *r, const cg_fp_t *leaf,
                                     cg_reg_t *out, char *err, size_t errlen);

const char *cg_store_prefix(const cg_store_t *st);

/* Drop idle connections (after fork, or on shutdown). */
void cg_store_drop_idle(cg_store_t *st);

struct cg_sentinel;
/* The store's sentinel client, or NULL with a fixed address (the subscriber
 * shares it). */
struct cg_sentinel *cg_store_sentinel(cg_store_t *st);

#endif
