#include "cg_usage.h"
#include "cg_thread.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <hiredis/hiredis.h>

#include "cg_reg.h"

#define IP_MAX 64

typedef struct {
    char id[CG_ID_MAX + 1];
    uint64_t count;
    int64_t last_seen;
    char ip[IP_MAX];
} rec_t;

struct cg_usage {
    cg_store_t *st;
    int interval_ms, timeout_ms;
    cg_usage_flush_fn on_flush;
    void *arg;
    pthread_mutex_t lock;   /* stop and wake only */
    pthread_cond_t wake;
    atomic_int busy;        /* guards recs, spare, n, dropped, last: held briefly (no
                             * I/O, no allocation): a spin, cheaper than the mutex */
    int stop;
    pthread_t thread;
    rec_t *recs, *spare;    /* swapped at flush, so hits never wait for Redis */
    size_t n, cap, dropped;
    size_t last;            /* slot of the last hit: most hits repeat it */
};

/* Bounded copy; snprintf("%s") costs several times more per request. */
static void set_str(char *dst, size_t cap, const char *src)
{
    size_t n = strnlen(src, cap - 1);
    memcpy(dst, src, n);
    dst[n] = '\0';
}

static void tab_lock(cg_usage_t *u)
{
    while (atomic_exchange_explicit(&u->busy, 1, memory_order_acquire))
        sched_yield();      /* the holder may be descheduled: do not burn its core */
}

static void tab_unlock(cg_usage_t *u)
{
    atomic_store_explicit(&u->busy, 0, memory_order_release);
}

/* Count, and keep the newest last_seen (several processes write the same key). */
static const char FLUSH_LUA[] =
    "redis.call('HINCRBY', KEYS[1], 'count', ARGV[1])\n"
    "local cur = tonumber(redis.call('HGET', KEYS[1], 'last_seen') or '0') or 0\n"
    "if tonumber(ARGV[2]) >= cur then\n"
    "  redis.call('HSET', KEYS[1], 'last_seen', ARGV[2], 'last_ip', ARGV[3])\n"
    "end\n"
    "return 1\n";

void cg_usage_hit(cg_usage_t *u, const char *reg_id, int64_t now_s, const char *client_ip)
{
    if (u == NULL)
        return;
    tab_lock(u);
    size_t i = u->last;
    if (i >= u->n || strcmp(u->recs[i].id, reg_id) != 0) {
        /* Linear scan: the table holds the registrations seen in a few seconds. */
        i = 0;
        while (i < u->n && strcmp(u->recs[i].id, reg_id) != 0)
            i++;
    }
    if (i == u->n) {
        if (u->n == u->cap) {
            u->dropped++;
            tab_unlock(u);
            return;
        }
        set_str(u->recs[i].id, sizeof(u->recs[i].id), reg_id);
        u->recs[i].count = 0;
        u->n++;
    }
    u->last = i;
    u->recs[i].count++;
    u->recs[i].last_seen = now_s;
    set_str(u->recs[i].ip, sizeof(u->recs[i].ip), client_ip ? client_ip : "");
    tab_unlock(u);
}

static void flush(cg_usage_t *u)
{
    tab_lock(u);
    rec_t *batch = u->recs;
    size_t n = u->n, dropped = u->dropped;
    u->recs = u->spare;
    u->spare = batch;
    u->n = 0;
    u->dropped = 0;
    tab_unlock(u);
    if (n == 0) {
        if (dropped && u->on_flush)
            u->on_flush(u->arg, 0, dropped, NULL);
        return;
    }

    const size_t per = 7;
    int *argcs = malloc(n * sizeof(int));
    const char **argv = malloc(n * per * sizeof(char *));
    size_t *lens = malloc(n * per * sizeof(size_t));
    const char *const **argvs = malloc(n * sizeof(*argvs));
    const size_t **lensv = malloc(n * sizeof(*lensv));
    char (*keys)[CG_PREFIX_MAX + CG_ID_MAX + 8] = malloc(n * sizeof(*keys));
    char (*nums)[2][24] = malloc(n * sizeof(*nums));
    redisReply **out = calloc(n, sizeof(redisReply *));
    char err[160] = "";
    size_t written = 0;
    if (!argcs || !argv || !lens || !argvs || !lensv || !keys || !nums || !out) {
        snprintf(err, sizeof(err), "out of memory");
        dropped += n;
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        rec_t *r = &batch[i];
        snprintf(keys[i], sizeof(keys[i]), "%susage:%s", cg_store_prefix(u->st), r->id);
        snprintf(nums[i][0], sizeof(nums[i][0]), "%llu", (unsigned long long)r->count);
        snprintf(nums[i][1], sizeof(nums[i][1]), "%lld", (long long)r->last_seen);
        const char **a = &argv[i * per];
        a[0] = "EVAL"; a[1] = FLUSH_LUA; a[2] = "1"; a[3] = keys[i];
        a[4] = nums[i][0]; a[5] = nums[i][1]; a[6] = r->ip;
        for (size_t k = 0; k < per; k++)
            lens[i * per + k] = strlen(a[k]);
        argcs[i] = (int)per;
        argvs[i] = a;
        lensv[i] = &lens[i * per];
    }
    if (cg_store_pipeline(u->st, u->timeout_ms, n, argcs, argvs, lensv, out, err,
                          sizeof(err)) == CG_STORE_OK) {
        for (size_t i = 0; i < n; i++) {
            if (out[i]->type == REDIS_REPLY_ERROR)
                dropped++;
            else
                written++;
            cg_store_reply_free(out[i]);
        }
    } else {
        dropped += n;   /* Redis is down: usage is best effort, the gate is not */
    }
done:
    if (u->on_flush)
        u->on_flush(u->arg, written, dropped, err[0] ? err : NULL);
    free(argcs); free(argv); free(lens); free(argvs); free(lensv); free(keys); free(nums);
    free(out);
}

static void *run(void *arg)
{
    cg_usage_t *u = arg;
    for (;;) {
        int stop = cg_thread_nap(&u->lock, &u->wake, &u->stop, u->interval_ms);
        flush(u);
        if (stop)
            return NULL;
    }
}

cg_usage_t *cg_usage_start(cg_store_t *st, size_t cap, int interval_ms, int timeout_ms,
                           cg_usage_flush_fn on_flush, void *arg)
{
    cg_usage_t *u = calloc(1, sizeof(*u));
    if (u == NULL)
        return NULL;
    u->st = st;
    u->cap = cap ? cap : 1;
    u->interval_ms = interval_ms > 0 ? interval_ms : 1000;
    u->timeout_ms = timeout_ms;
    u->on_flush = on_flush;
    u->arg = arg;
    atomic_init(&u->busy, 0);
    u->recs = calloc(u->cap, sizeof(rec_t));
    u->spare = calloc(u->cap, sizeof(rec_t));
    if (u->recs == NULL || u->spare == NULL || pthread_mutex_init(&u->lock, NULL) != 0)
        goto fail;
    if (pthread_cond_init(&u->wake, NULL) != 0) {
        pthread_mutex_destroy(&u->lock);
        goto fail;
    }
    if (cg_thread_start(&u->thread, run, u) != 0) {
        pthread_cond_destroy(&u->wake);
        pthread_mutex_destroy(&u->lock);
        goto fail;
    }
    return u;
fail:
    free(u->recs);
    free(u->spare);
    free(u);
    return NULL;
}

void cg_usage_stop(cg_usage_t *u)
{
    if (u == NULL)
        return;
    pthread_mutex_lock(&u->lock);
    u->stop = 1;
    pthread_cond_broadcast(&u->wake);
    pthread_mutex_unlock(&u->lock);
    pthread_join(u->thread, NULL);
    pthread_cond_destroy(&u->wake);
    pthread_mutex_destroy(&u->lock);
    free(u->recs);
    free(u->spare);
    free(u);
}
