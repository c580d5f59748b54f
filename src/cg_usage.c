#include "cg_usage.h"
#include "cg_usage_int.h"
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

/* Bounded copy; snprintf("%s") costs several times more per request. */
static void set_str(char *dst, size_t cap, const char *src)
{
    size_t n = strnlen(src, cap - 1);
    memcpy(dst, src, n);
    dst[n] = '\0';
}

void cg_usage_tab_lock(cg_usage_t *u)
{
    while (atomic_exchange_explicit(&u->busy, 1, memory_order_acquire))
        sched_yield();      /* the holder may be descheduled: do not burn its core */
}

void cg_usage_tab_unlock(cg_usage_t *u)
{
    atomic_store_explicit(&u->busy, 0, memory_order_release);
}

uint64_t cg_usage_next_gen(void)
{
    static atomic_uint_fast64_t next;
    return (uint64_t) atomic_fetch_add_explicit(&next, 1, memory_order_relaxed) + 1;
}

void cg_usage_hit(cg_usage_t *u, const char *reg_id, int64_t now_s, const char *client_ip)
{
    cg_usage_hit_hint(u, reg_id, now_s, client_ip, NULL);
}

/* The record's address from this hit, noted in hint; then unlocks the table.
 * Most hits repeat the record's address: copied only when it differs (a
 * longer one than the record holds always does). */
__attribute__((noinline))
static void hit_ip(cg_usage_t *u, cg_usage_rec_t *rec, const char *ip, cg_usage_hint_t *hint)
{
    if (strcmp(rec->ip, ip) != 0) {
        set_str(rec->ip, sizeof(rec->ip), ip);
        rec->ip_seq++;
    }
    if (hint != NULL) {
        hint->ip = ip;
        hint->ip_client_seq = hint->client_seq;
        hint->rec_ip_seq = rec->ip_seq;
    }
    atomic_store_explicit(&u->busy, 0, memory_order_release);     /* cg_usage_tab_unlock */
}

/* cg_usage_hit_hint with the table locked, without a usable hint; unlocks it. */
__attribute__((noinline))
static void hit_locked(cg_usage_t *u, const char *reg_id, int64_t now_s, const char *client_ip,
                       cg_usage_hint_t *hint)
{
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
            cg_usage_tab_unlock(u);
            return;
        }
        set_str(u->recs[i].id, sizeof(u->recs[i].id), reg_id);
        u->recs[i].count = 0;
        u->recs[i].ip_seq = 0;
        u->n++;
    }
    if (hint != NULL) {
        hint->gen = u->gen;
        hint->slot = i;
    }
    u->last = i;
    u->recs[i].count++;
    u->recs[i].last_seen = now_s;
    hit_ip(u, &u->recs[i], client_ip ? client_ip : "", hint);
}

/* With the table locked; unlocks it. */
static inline void hit(cg_usage_t *u, const char *reg_id, int64_t now_s, const char *client_ip,
                       cg_usage_hint_t *hint)
{
    /* Within one generation a slot keeps its registration: records are only added. */
    if (hint == NULL || hint->gen != u->gen || hint->slot >= u->n) {
        hit_locked(u, reg_id, now_s, client_ip, hint);
        return;
    }
    cg_usage_rec_t *rec = &u->recs[hint->slot];
    const char *ip = client_ip ? client_ip : "";
    u->last = hint->slot;
    rec->count++;
    rec->last_seen = now_s;
    /* The address is not even compared when this hint recorded the caller's
     * unchanged text (client_seq) in this record and nobody changed the
     * record's since. */
    if (hint->client_seq == 0 || hint->ip != ip || hint->ip_client_seq != hint->client_seq ||
        hint->rec_ip_seq != rec->ip_seq) {
        hit_ip(u, rec, ip, hint);
        return;
    }
    atomic_store_explicit(&u->busy, 0, memory_order_release);     /* cg_usage_tab_unlock */
}

__attribute__((noinline))
static void hit_contended(cg_usage_t *u, const char *reg_id, int64_t now_s, const char *client_ip,
                          cg_usage_hint_t *hint)
{
    cg_usage_tab_lock(u);
    hit(u, reg_id, now_s, client_ip, hint);
}

void cg_usage_hit_hint(cg_usage_t *u, const char *reg_id, int64_t now_s, const char *client_ip,
                       cg_usage_hint_t *hint)
{
    if (u == NULL)
        return;
    /* cg_usage_tab_lock inline (every allowed request takes it), the wait apart:
     * the common case calls nothing, or one function last. */
    if (atomic_exchange_explicit(&u->busy, 1, memory_order_acquire)) {
        hit_contended(u, reg_id, now_s, client_ip, hint);
        return;
    }
    hit(u, reg_id, now_s, client_ip, hint);
}

/* One batch, written through the blocking store (the thread, and the last one). */
static void flush(cg_usage_t *u)
{
    cg_usage_batch_t *b = cg_usage_batch_take(u);
    if (b == NULL)
        return;
    size_t n = cg_usage_batch_len(b);
    char err[160] = "";
    if (n > 0) {
        redisReply **out = calloc(n, sizeof(redisReply *));
        if (out == NULL) {
            snprintf(err, sizeof(err), "out of memory");
        } else if (cg_store_pipeline(u->st, u->timeout_ms, n, b->argcs, b->argvs, b->lensv, out,
                                     err, sizeof(err)) == CG_STORE_OK) {
            for (size_t i = 0; i < n; i++) {
                cg_usage_batch_reply(b, out[i]);
                cg_store_reply_free(out[i]);
            }
        }
        /* else Redis is down: usage is best effort, the gate is not */
        free(out);
    }
    cg_usage_batch_end(b, err[0] ? err : NULL);
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

cg_usage_t *cg_usage_new(cg_store_t *st, size_t cap, int timeout_ms,
                         cg_usage_flush_fn on_flush, void *arg)
{
    cg_usage_t *u = calloc(1, sizeof(*u));
    if (u == NULL)
        return NULL;
    u->st = st;
    u->cap = cap ? cap : 1;
    u->interval_ms = 1000;
    u->timeout_ms = timeout_ms;
    u->on_flush = on_flush;
    u->arg = arg;
    u->batch.u = u;
    u->gen = cg_usage_next_gen();
    atomic_init(&u->busy, 0);
    u->recs = calloc(u->cap, sizeof(cg_usage_rec_t));
    u->spare = calloc(u->cap, sizeof(cg_usage_rec_t));
    if (u->recs == NULL || u->spare == NULL) {
        free(u->recs);
        free(u->spare);
        free(u);
        return NULL;
    }
    return u;
}

static void free_usage(cg_usage_t *u)
{
    free(u->recs);
    free(u->spare);
    free(u);
}

cg_usage_t *cg_usage_start(cg_store_t *st, size_t cap, int interval_ms, int timeout_ms,
                           cg_usage_flush_fn on_flush, void *arg)
{
    cg_usage_t *u = cg_usage_new(st, cap, timeout_ms, on_flush, arg);
    if (u == NULL)
        return NULL;
    u->interval_ms = interval_ms > 0 ? interval_ms : 1000;
    if (pthread_mutex_init(&u->lock, NULL) != 0)
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
    u->threaded = 1;
    return u;
fail:
    free_usage(u);
    return NULL;
}

void cg_usage_stop(cg_usage_t *u)
{
    if (u == NULL)
        return;
    if (u->threaded) {
        pthread_mutex_lock(&u->lock);
        u->stop = 1;
        pthread_cond_broadcast(&u->wake);
        pthread_mutex_unlock(&u->lock);
        pthread_join(u->thread, NULL);  /* it flushed the last batch */
        pthread_cond_destroy(&u->wake);
        pthread_mutex_destroy(&u->lock);
    } else {
        /* A batch the caller never ended has lost its records. */
        if (u->batch.out)
            cg_usage_batch_end(&u->batch, "stopped before Redis answered");
        flush(u);
    }
    free_usage(u);
}
