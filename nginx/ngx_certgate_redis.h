/*
 * hiredis's async client driven by nginx's event loop (written for
 * mod_certgate; hiredis 0.14 ships no nginx adapter). One Redis connection per
 * worker carries every lookup, pipelined. A context is thrown away after any
 * error or timeout, and the next lookup connects again.
 */
#ifndef NGX_CERTGATE_REDIS_H
#define NGX_CERTGATE_REDIS_H

#include <ngx_config.h>
#include <ngx_core.h>
#include <hiredis/hiredis.h>
#include <hiredis/async.h>

typedef struct {
    ngx_str_t host;         /* TCP host, when socket is empty */
    ngx_int_t port;
    ngx_str_t socket;       /* unix socket path */
    ngx_str_t user;         /* ACL user, may be empty */
    ngx_str_t password;     /* empty: no AUTH */
    ngx_int_t db;
    /* Sentinel discovery (set per worker): a cg_sentinel_t whose watcher
     * thread resolves; NULL: the address above. */
    void *sentinel;
} cg_ngx_redis_conf_t;

/* The worker's connection, connecting (and sending AUTH/SELECT) if there is
 * none. NULL when a context cannot even be created; the reason is logged. */
redisAsyncContext *cg_ngx_redis_get(const cg_ngx_redis_conf_t *conf, ngx_log_t *log);

/* A context of its own (the usage flush's, the subscriber's), AUTH and SELECT
 * queued, on the configured address (never a sentinel's). The callbacks are
 * hiredis's connect and disconnect ones. NULL with err set when it cannot
 * even be made. Free it with cg_ngx_redis_drop. */
redisAsyncContext *cg_ngx_redis_open(const cg_ngx_redis_conf_t *conf, ngx_log_t *log,
                                     redisConnectCallback *on_conn,
                                     redisDisconnectCallback *on_disc, char *err, size_t errlen);

/* Throw ac away now: pending callbacks run with a NULL reply. Safe inside a
 * callback of ac (hiredis frees it when the callback returns). */
void cg_ngx_redis_drop(redisAsyncContext *ac);

/* Throw away the worker's current connection, if any. */
void cg_ngx_redis_drop_current(void);

/* With sentinels: the current master failed us (error, timeout, READONLY,
 * LOADING); the watcher asks the sentinels again. Never blocks. */
void cg_ngx_redis_distrust(const cg_ngx_redis_conf_t *conf, const char *why);

#endif
