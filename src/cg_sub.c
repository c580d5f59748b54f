#include "cg_sub.h"
#include "cg_thread.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <hiredis/hiredis.h>

#include "cg_sentinel.h"

struct cg_sub {
    char *host, *socket, *user, *password, *channel;
    int port, timeout_ms;
    cg_sentinel_t *sentinel;    /* NULL: the fixed address */
    uint64_t gen;               /* sentinel generation of the current connection */
    cg_cache_t *cache;
    cg_sub_log_fn log;
    cg_sub_inval_fn on_inval;
    void *arg;
    pthread_t thread;
    pthread_mutex_t lock;       /* guards ctx and stop, with wake */
    pthread_cond_t wake;
    redisContext *ctx;
    int stop;
    _Atomic int healthy;
};

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

/* Sleep up to ms unless asked to stop. Returns 1 if stopping. */
static int nap(cg_sub_t *s, int ms)
{
    return cg_thread_nap(&s->lock, &s->wake, &s->stop, ms);
}

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static redisContext *connect_sub(cg_sub_t *s, char *err, size_t errlen)
{
    struct timeval tv = { s->timeout_ms / 1000, (s->timeout_ms % 1000) * 1000 };
    char host[CG_SENTINEL_HOST_MAX];
    int port = s->port, unreachable = 0;
    redisContext *c = NULL;
    redisReply *r = NULL;
    if (s->sentinel != NULL) {
        if (cg_sentinel_master(s->sentinel, mono_ms() + 2000, host, sizeof(host), &port, &s->gen,
                               &unreachable, err, errlen) != 0)
            return NULL;
        c = redisConnectWithTimeout(host, port, tv);
    } else {
        c = s->socket ? redisConnectUnixWithTimeout(s->socket, tv)
                      : redisConnectWithTimeout(s->host, s->port, tv);
    }
    if (c == NULL || c->err) {
        snprintf(err, errlen, "connect: %s", c ? c->errstr : "out of memory");
        goto fail;
    }
    if (redisSetTimeout(c, tv) != REDIS_OK) {
        snprintf(err, errlen, "setting timeout");
        goto fail;
    }
    if (s->password != NULL) {
        if (s->user != NULL)
            r = redisCommand(c, "AUTH %s %s", s->user, s->password);
        else
            r = redisCommand(c, "AUTH %s", s->password);
        if (r == NULL || r->type == REDIS_REPLY_ERROR) {
            snprintf(err, errlen, "AUTH failed%s", r ? "" : " (no answer)");
            goto fail;
        }
        freeReplyObject(r);
        r = NULL;
    }
    if (s->sentinel != NULL) {
        /* Only a master: a demoted one would hear nothing we publish later. */
        char role[40];
        r = redisCommand(c, "ROLE");
        if (!cg_sentinel_role_is_master(r, role, sizeof(role))) {
            if (r != NULL)
                cg_sentinel_not_master(s->sentinel, s->gen, role);
            snprintf(err, errlen, "ROLE %s, not master", r ? role : "(no answer)");
            goto fail;
        }
        freeReplyObject(r);
    }
    r = redisCommand(c, "SUBSCRIBE %s", s->channel);
    if (r == NULL || r->type != REDIS_REPLY_ARRAY) {
        snprintf(err, errlen, "SUBSCRIBE failed");
        goto fail;
    }
    freeReplyObject(r);
    /* From now on block until a message comes; shutdown() wakes us to stop. */
    struct timeval forever = { 0, 0 };
    if (redisSetTimeout(c, forever) != REDIS_OK) {
        snprintf(err, errlen, "clearing timeout");
        r = NULL;
        goto fail;
    }
    return c;
fail:
    if (r != NULL)
        freeReplyObject(r);
    if (c != NULL)
        redisFree(c);
    if (s->sentinel != NULL)
        cg_sentinel_distrust(s->sentinel, s->gen, err);
    return NULL;
}

/*
 * One reply, or NULL when the connection is to be left: broken, or (with
 * sentinels) the master moved or stopped answering our pings. A "pong" reply
 * is eaten here.
 */
static redisReply *next_reply(cg_sub_t *s, redisContext *c, int64_t *last_pong, int *ping_out,
                              char *why, size_t cap)
{
    void *reply = NULL;
    if (s->sentinel == NULL) {
        if (redisGetReply(c, &reply) != REDIS_OK)
            return NULL;
        return reply;
    }
    for (;;) {
        if (redisGetReplyFromReader(c, &reply) != REDIS_OK)
            return NULL;
        if (reply != NULL) {
            redisReply *r = reply;
            if (r->type == REDIS_REPLY_ARRAY && r->elements >= 1 &&
                r->element[0]->type == REDIS_REPLY_STRING &&
                strcmp(r->element[0]->str, "pong") == 0) {
                *last_pong = mono_ms();
                *ping_out = 0;
                freeReplyObject(r);
                continue;
            }
            return r;
        }
        struct pollfd pfd = { .fd = c->fd, .events = POLLIN };
        int n = poll(&pfd, 1, CG_SUB_CHECK_MS);
        if (n < 0 && errno != EINTR)
            return NULL;
        if (n > 0) {
            if (redisBufferRead(c) != REDIS_OK)
                return NULL;
            continue;
        }
        /* Quiet: is it still the master, and alive? */
        if (*ping_out && mono_ms() - *last_pong > 2 * CG_SUB_CHECK_MS) {
            snprintf(why, cap, "no answer to PING");
            cg_sentinel_distrust(s->sentinel, s->gen, why);
            return NULL;
        }
        if (cg_sentinel_gen(s->sentinel) != s->gen || !cg_sentinel_trusted(s->sentinel)) {
            snprintf(why, cap, "the sentinels' master changed or is in doubt");
            return NULL;
        }
        if (!*ping_out) {
            int done = 0;
            if (redisAppendCommand(c, "PING") != REDIS_OK)
                return NULL;
            while (!done)
                if (redisBufferWrite(c, &done) != REDIS_OK)
                    return NULL;
            *ping_out = 1;
        }
    }
}

static void *run(void *arg)
{
    cg_sub_t *s = arg;
    int backoff = 100, failed_logged = 0;
    char err[160];

    for (;;) {
        pthread_mutex_lock(&s->lock);
        int stop = s->stop;
        pthread_mutex_unlock(&s->lock);
        if (stop)
            break;
        redisContext *c = connect_sub(s, err, sizeof(err));
        if (c == NULL) {
            if (!failed_logged)
                cg_sub_report(s->log, s->arg, CG_SUB_CONNECT_FAILED, err);
            failed_logged = 1;
            if (nap(s, backoff))
                break;
            /* With sentinels a failover is expected: keep trying often. */
            backoff = backoff < 1000 ? backoff * 2 : 1000;
            if (s->sentinel != NULL && backoff > 200)
                backoff = 200;
            continue;
        }
        pthread_mutex_lock(&s->lock);
        s->ctx = c;
        stop = s->stop;
        pthread_mutex_unlock(&s->lock);
        if (stop)
            break;
        cg_sub_resubscribed(s->cache);
        atomic_store(&s->healthy, 1);
        cg_sub_report(s->log, s->arg, CG_SUB_SUBSCRIBED, NULL);
        backoff = 100;
        failed_logged = 0;
        int64_t last_pong = mono_ms();
        int ping_out = 0;
        err[0] = '\0';
        for (;;) {
            redisReply *reply = next_reply(s, c, &last_pong, &ping_out, err, sizeof(err));
            if (reply == NULL)
                break;
            cg_sub_handle(s->cache, reply, s->on_inval, s->arg);
            freeReplyObject(reply);
        }
        atomic_store(&s->healthy, 0);
        pthread_mutex_lock(&s->lock);
        stop = s->stop;
        if (err[0] == '\0')
            snprintf(err, sizeof(err), "%s", c->errstr[0] ? c->errstr : "connection closed");
        s->ctx = NULL;
        pthread_mutex_unlock(&s->lock);
        redisFree(c);
        if (stop)
            break;
        cg_sub_report(s->log, s->arg, CG_SUB_DISCONNECTED, err);
    }
    pthread_mutex_lock(&s->lock);
    if (s->ctx != NULL) {
        redisFree(s->ctx);
        s->ctx = NULL;
    }
    pthread_mutex_unlock(&s->lock);
    return NULL;
}

cg_sub_t *cg_sub_start(const cg_store_cfg_t *cfg, cg_sentinel_t *sentinel, cg_cache_t *cache,
                       cg_sub_log_fn log, cg_sub_inval_fn on_inval, void *arg, char *err,
                       size_t errlen)
{
    cg_sub_t *s = calloc(1, sizeof(*s));
    char chan[CG_PREFIX_MAX + 16];
    if (s == NULL)
        goto nomem;
    (void)cg_sub_channel(cfg->prefix, chan, sizeof(chan));   /* prefix <= CG_PREFIX_MAX */
    s->host = dup_or_null(cfg->host);
    s->socket = dup_or_null(cfg->socket);
    s->user = dup_or_null(cfg->user);
    s->password = dup_or_null(cfg->password);
    s->channel = strdup(chan);
    s->port = cfg->port;
    s->timeout_ms = cfg->timeout_ms;
    s->sentinel = sentinel;
    s->cache = cache;
    s->log = log;
    s->on_inval = on_inval;
    s->arg = arg;
    atomic_init(&s->healthy, 0);
    if (s->channel == NULL || pthread_mutex_init(&s->lock, NULL) != 0)
        goto nomem;
    if (pthread_cond_init(&s->wake, NULL) != 0) {
        pthread_mutex_destroy(&s->lock);
        goto nomem;
    }
    if (cg_thread_start(&s->thread, run, s) != 0) {
        pthread_cond_destroy(&s->wake);
        pthread_mutex_destroy(&s->lock);
        snprintf(err, errlen, "cannot start the subscriber thread");
        goto fail;
    }
    return s;
nomem:
    snprintf(err, errlen, "out of memory");
fail:
    if (s != NULL) {
        free(s->host); free(s->socket); free(s->user); free(s->password); free(s->channel);
        free(s);
    }
    return NULL;
}

void cg_sub_stop(cg_sub_t *s)
{
    if (s == NULL)
        return;
    pthread_mutex_lock(&s->lock);
    s->stop = 1;
    if (s->ctx != NULL)
        shutdown(s->ctx->fd, SHUT_RDWR);    /* wakes the blocking read */
    pthread_cond_broadcast(&s->wake);
    pthread_mutex_unlock(&s->lock);
    pthread_join(s->thread, NULL);
    pthread_cond_destroy(&s->wake);
    pthread_mutex_destroy(&s->lock);
    if (s->password != NULL)
        memset(s->password, 0, strlen(s->password));
    free(s->host); free(s->socket); free(s->user); free(s->password); free(s->channel);
    free(s);
}

int cg_sub_healthy(const cg_sub_t *s)
{
    return s != NULL && atomic_load(&((cg_sub_t *)s)->healthy);
}
