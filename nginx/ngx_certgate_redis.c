/* hiredis async contexts on nginx events: see ngx_certgate_redis.h. */
#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>

#include "ngx_certgate_redis.h"
#include "cg_sentinel.h"

/* The worker's one context. The cleanup hook clears it whenever hiredis frees
 * it, for whatever reason, so it is always either live or NULL. */
static redisAsyncContext *current;
/* With sentinels: the generation of the master current was made for. */
static uint64_t current_gen;

static void on_read(ngx_event_t *ev)
{
    ngx_connection_t *c = ev->data;
    redisAsyncHandleRead(c->data);
}

static void on_write(ngx_event_t *ev)
{
    ngx_connection_t *c = ev->data;
    redisAsyncHandleWrite(c->data);
}

/* Level-triggered: hiredis reads once per call and expects to be called again
 * while data is left, which edge-triggered epoll would not do. */
static void add_read(void *p)
{
    ngx_connection_t *c = p;
    if (!c->read->active && ngx_add_event(c->read, NGX_READ_EVENT, NGX_LEVEL_EVENT) != NGX_OK)
        ngx_log_error(NGX_LOG_ERR, c->log, 0, "CG09003: cannot watch the Redis socket");
}

static void del_read(void *p)
{
    ngx_connection_t *c = p;
    if (c->read->active)
        ngx_del_event(c->read, NGX_READ_EVENT, 0);
}

static void add_write(void *p)
{
    ngx_connection_t *c = p;
    if (!c->write->active && ngx_add_event(c->write, NGX_WRITE_EVENT, NGX_LEVEL_EVENT) != NGX_OK)
        ngx_log_error(NGX_LOG_ERR, c->log, 0, "CG09003: cannot watch the Redis socket");
}

static void del_write(void *p)
{
    ngx_connection_t *c = p;
    if (c->write->active)
        ngx_del_event(c->write, NGX_WRITE_EVENT, 0);
}

/* hiredis is about to close the fd and free the context. */
static void cleanup(void *p)
{
    ngx_connection_t *c = p;
    redisAsyncContext *ac = c->data;

    if (current == ac)
        current = NULL;
    del_read(c);
    del_write(c);
    if (c->read->posted) {
        ngx_delete_posted_event(c->read);
    }
    if (c->write->posted) {
        ngx_delete_posted_event(c->write);
    }
    c->fd = (ngx_socket_t) -1;    /* hiredis owns and closes the socket */
    ngx_free_connection(c);
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    if (status != REDIS_OK)
        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0, "CG09001: Redis connect failed: %s",
                      ac->errstr);
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    if (status != REDIS_OK)
        ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0, "CG09002: Redis connection lost: %s",
                      ac->errstr);
}

/* AUTH and SELECT: a failure makes the context useless. Redis's error text
 * never holds the password. */
static void on_setup_reply(redisAsyncContext *ac, void *reply, void *what)
{
    redisReply *r = reply;
    if (r == NULL)
        return;    /* the context is going away already */
    if (r->type == REDIS_REPLY_ERROR) {
        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0, "CG09004: Redis %s failed: %*s",
                      (const char *) what, (int) (r->len > 200 ? 200 : r->len), r->str);
        cg_ngx_redis_drop(ac);
    }
}

static ngx_int_t attach(redisAsyncContext *ac, ngx_log_t *log)
{
    ngx_connection_t *c = ngx_get_connection(ac->c.fd, log);
    if (c == NULL)
        return NGX_ERROR;
    c->data = ac;
    c->log = log;
    c->read->log = log;
    c->write->log = log;
    c->read->handler = on_read;
    c->write->handler = on_write;
    ac->ev.data = c;
    ac->ev.addRead = add_read;
    ac->ev.delRead = del_read;
    ac->ev.addWrite = add_write;
    ac->ev.delWrite = del_write;
    ac->ev.cleanup = cleanup;
    return NGX_OK;
}

/* ROLE on a sentinel-given address: only a master carries lookups. The
 * lookups queued behind it fail with the context if it is not one. */
static void on_role_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    cg_sentinel_t *s = privdata;
    char role[40];
    if (reply == NULL)
        return;
    if (!cg_sentinel_role_is_master(reply, role, sizeof(role))) {
        cg_sentinel_not_master(s, current_gen, role);
        cg_ngx_redis_drop(ac);
    }
}

void cg_ngx_redis_distrust(const cg_ngx_redis_conf_t *conf, const char *why)
{
    if (conf->sentinel != NULL)
        cg_sentinel_distrust(conf->sentinel, current_gen, why);
}

/* A new context on nginx events with AUTH and SELECT queued: on host:port
 * when host is given (a sentinel's answer), else on the configured address.
 * NULL with err set when it cannot even be made. */
static redisAsyncContext *open_ctx(const cg_ngx_redis_conf_t *conf, const char *shost, int sport,
                                   ngx_log_t *log, redisConnectCallback *on_conn,
                                   redisDisconnectCallback *on_disc, char *err, size_t errlen)
{
    char path[256], host[256];
    redisAsyncContext *ac;

    if (shost != NULL) {
        ac = redisAsyncConnect(shost, sport);
    } else if (conf->socket.len > 0) {
        if (conf->socket.len >= sizeof(path)) {
            snprintf(err, errlen, "socket path too long");
            return NULL;
        }
        ngx_memcpy(path, conf->socket.data, conf->socket.len);
        path[conf->socket.len] = '\0';
        ac = redisAsyncConnectUnix(path);
    } else {
        if (conf->host.len == 0 || conf->host.len >= sizeof(host)) {
            snprintf(err, errlen, "no address");
            return NULL;
        }
        ngx_memcpy(host, conf->host.data, conf->host.len);
        host[conf->host.len] = '\0';
        ac = redisAsyncConnect(host, (int) conf->port);
    }
    if (ac == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    if (ac->err) {
        snprintf(err, errlen, "%s", ac->errstr);
        redisAsyncFree(ac);
        return NULL;
    }
    if (attach(ac, log) != NGX_OK) {
        snprintf(err, errlen, "no free connection");
        redisAsyncFree(ac);
        return NULL;
    }
    redisAsyncSetConnectCallback(ac, on_conn);
    redisAsyncSetDisconnectCallback(ac, on_disc);

    /* Queued before any other command on the same connection, so they run first. */
    int rc = REDIS_OK;
    if (conf->password.len > 0) {
        const char *argv[3] = { "AUTH", (const char *) conf->user.data,
                                (const char *) conf->password.data };
        size_t lens[3] = { 4, conf->user.len, conf->password.len };
        if (conf->user.len > 0)
            rc = redisAsyncCommandArgv(ac, on_setup_reply, "AUTH", 3, argv, lens);
        else
            rc = redisAsyncCommandArgv(ac, on_setup_reply, "AUTH", 2,
                                       (const char *[]) { "AUTH", argv[2] },
                                       (size_t[]) { 4, lens[2] });
    }
    if (rc == REDIS_OK && conf->db > 0) {
        char db[24];
        int n = snprintf(db, sizeof(db), "%d", (int) conf->db);
        const char *argv[2] = { "SELECT", db };
        size_t lens[2] = { 6, (size_t) n };
        rc = redisAsyncCommandArgv(ac, on_setup_reply, "SELECT", 2, argv, lens);
    }
    if (rc != REDIS_OK) {
        snprintf(err, errlen, "cannot queue AUTH or SELECT");
        redisAsyncFree(ac);
        return NULL;
    }
    return ac;
}

redisAsyncContext *cg_ngx_redis_open(const cg_ngx_redis_conf_t *conf, ngx_log_t *log,
                                     redisConnectCallback *on_conn,
                                     redisDisconnectCallback *on_disc, char *err, size_t errlen)
{
    return open_ctx(conf, NULL, 0, log, on_conn, on_disc, err, errlen);
}

redisAsyncContext *cg_ngx_redis_get(const cg_ngx_redis_conf_t *conf, ngx_log_t *log)
{
    char host[256], err[160];
    redisAsyncContext *ac;
    int port = (int) conf->port;
    uint64_t gen = 0;

    /* The sentinels named another master: leave the old one. */
    if (current != NULL && conf->sentinel != NULL &&
        cg_sentinel_gen(conf->sentinel) != current_gen)
        cg_ngx_redis_drop(current);
    if (current != NULL)
        return current;
    if (conf->sentinel != NULL) {
        /* Never block: the watcher thread asks the sentinels. */
        if (cg_sentinel_cached(conf->sentinel, host, sizeof(host), &port, &gen) != 0)
            return NULL;
    } else if (conf->socket.len == 0 && (conf->host.len == 0 || conf->host.len >= sizeof(host))) {
        return NULL;
    }
    err[0] = '\0';
    ac = open_ctx(conf, conf->sentinel != NULL ? host : NULL, port, log, on_connect,
                  on_disconnect, err, sizeof(err));
    if (ac == NULL) {
        if (err[0] != '\0' && ngx_strcmp(err, "socket path too long") != 0 &&
            ngx_strcmp(err, "cannot queue AUTH or SELECT") != 0)
            ngx_log_error(NGX_LOG_ERR, log, 0, "CG09001: Redis connect failed: %s", err);
        return NULL;
    }
    if (conf->sentinel != NULL && redisAsyncCommand(ac, on_role_reply, conf->sentinel,
                                                    "ROLE") != REDIS_OK) {
        redisAsyncFree(ac);
        return NULL;
    }
    current = ac;
    current_gen = gen;
    return ac;
}

void cg_ngx_redis_drop(redisAsyncContext *ac)
{
    if (ac == NULL)
        return;
    if (current == ac)
        current = NULL;
    redisAsyncFree(ac);
}

void cg_ngx_redis_drop_current(void)
{
    cg_ngx_redis_drop(current);
}
