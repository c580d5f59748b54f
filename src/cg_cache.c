#include "cg_cache.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct entry {
    cg_fp_t fp;
    int found;
    cg_reg_t reg;
    int64_t fetched_ms;
    struct entry *hnext;            /* bucket chain */
    struct entry *prev, *next;      /* LRU list, most recent at head */
} entry_t;

struct cg_cache {
    pthread_mutex_t lock;
    entry_t **buckets;
    size_t nbuckets;                /* power of two */
    size_t n, max;
    int64_t max_age_ms;
    int64_t keep_ms;                /* expired entries kept this long (stale mode) */
    entry_t *head, *tail;
    _Atomic uint64_t version;
    cg_cache_stats_t stats;
};

int64_t cg_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t cg_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

cg_cache_t *cg_cache_new(size_t max_entries, int64_t max_age_ms)
{
    if (max_entries == 0)
        return NULL;
    cg_cache_t *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    c->nbuckets = 16;
    while (c->nbuckets < max_entries * 2)
        c->nbuckets <<= 1;
    c->buckets = calloc(c->nbuckets, sizeof(entry_t *));
    if (c->buckets == NULL || pthread_mutex_init(&c->lock, NULL) != 0) {
        free(c->buckets);
        free(c);
        return NULL;
    }
    c->max = max_entries;
    c->max_age_ms = max_age_ms;
    /* Versions of two caches never meet: a connection entry filled through
     * one gate (an httpd vhost with its own store) is not current in another. */
    static _Atomic uint64_t caches;
    atomic_init(&c->version, (atomic_fetch_add(&caches, 1) + 1) << 40);
    return c;
}

static void free_all(cg_cache_t *c)
{
    entry_t *e = c->head;
    while (e != NULL) {
        entry_t *n = e->next;
        free(e);
        e = n;
    }
    memset(c->buckets, 0, c->nbuckets * sizeof(entry_t *));
    c->head = c->tail = NULL;
    c->n = 0;
}

void cg_cache_free(cg_cache_t *c)
{
    if (c == NULL)
        return;
    free_all(c);
    pthread_mutex_destroy(&c->lock);
    free(c->buckets);
    free(c);
}

/* Fingerprints are SHA-256 output: any 8 bytes are a good hash. */
static size_t slot(const cg_cache_t *c, const cg_fp_t *fp)
{
    uint64_t h;
    memcpy(&h, fp->b, sizeof(h));
    return (size_t)(h & (c->nbuckets - 1));
}

static entry_t **find(cg_cache_t *c, const cg_fp_t *fp)
{
    entry_t **pp = &c->buckets[slot(c, fp)];
    while (*pp != NULL && !cg_fp_eq(&(*pp)->fp, fp))
        pp = &(*pp)->hnext;
    return pp;
}

static void lru_unlink(cg_cache_t *c, entry_t *e)
{
    if (e->prev) e->prev->next = e->next; else c->head = e->next;
    if (e->next) e->next->prev = e->prev; else c->tail = e->prev;
    e->prev = e->next = NULL;
}

static void lru_push_front(cg_cache_t *c, entry_t *e)
{
    e->prev = NULL;
    e->next = c->head;
    if (c->head) c->head->prev = e;
    c->head = e;
    if (c->tail == NULL) c->tail = e;
}

/* Remove *pp (the bucket link to e) entirely. */
static void drop(cg_cache_t *c, entry_t **pp)
{
    entry_t *e = *pp;
    *pp = e->hnext;
    lru_unlink(c, e);
    free(e);
    c->n--;
}

int cg_cache_get(cg_cache_t *c, const cg_fp_t *fp, int64_t now_ms, int *found, cg_reg_t *reg,
                 int64_t *fetched_ms)
{
    int hit = 0;
    pthread_mutex_lock(&c->lock);
    entry_t **pp = find(c, fp);
    if (*pp != NULL) {
        entry_t *e = *pp;
        if (now_ms - e->fetched_ms >= c->max_age_ms) {
            /* Expired: a miss, but stale mode may still need it while the store is down. */
            if (now_ms - e->fetched_ms >= c->keep_ms) {
                drop(c, pp);
                c->stats.stale_drops++;
            }
        } else {
            *found = e->found;
            *fetched_ms = e->fetched_ms;
            if (e->found)
                *reg = e->reg;
            lru_unlink(c, e);
            lru_push_front(c, e);
            hit = 1;
        }
    }
    if (hit) c->stats.hits++; else c->stats.misses++;
    pthread_mutex_unlock(&c->lock);
    return hit;
}

uint64_t cg_cache_version(const cg_cache_t *c)
{
    return atomic_load(&((cg_cache_t *)c)->version);
}

const _Atomic uint64_t *cg_cache_version_at(const cg_cache_t *c)
{
    return &c->version;
}

void cg_cache_put(cg_cache_t *c, const cg_fp_t *fp, int found, const cg_reg_t *reg,
                  int64_t now_ms, uint64_t version)
{
    pthread_mutex_lock(&c->lock);
    /* Checked under the lock that invalidations also take: no lost race. */
    if (atomic_load(&c->version) != version) {
        pthread_mutex_unlock(&c->lock);
        return;
    }
    entry_t **pp = find(c, fp);
    entry_t *e = *pp;
    if (e == NULL) {
        if (c->n >= c->max && c->tail != NULL) {
            entry_t *victim = c->tail;
            drop(c, find(c, &victim->fp));
            c->stats.evictions++;
            pp = find(c, fp);
        }
        e = calloc(1, sizeof(*e));
        if (e == NULL) {
            pthread_mutex_unlock(&c->lock);
            return;
        }
        e->fp = *fp;
        e->hnext = NULL;
        *pp = e;
        c->n++;
    } else {
        lru_unlink(c, e);
    }
    e->found = found;
    if (found)
        e->reg = *reg;
    e->fetched_ms = now_ms;
    lru_push_front(c, e);
    c->stats.inserts++;
    pthread_mutex_unlock(&c->lock);
}

void cg_cache_invalidate(cg_cache_t *c, const cg_fp_t *fp)
{
    pthread_mutex_lock(&c->lock);
    atomic_fetch_add(&c->version, 1);
    entry_t **pp = find(c, fp);
    if (*pp != NULL)
        drop(c, pp);
    c->stats.invalidations++;
    pthread_mutex_unlock(&c->lock);
}

void cg_cache_flush(cg_cache_t *c)
{
    pthread_mutex_lock(&c->lock);
    atomic_fetch_add(&c->version, 1);
    free_all(c);
    c->stats.flushes++;
    pthread_mutex_unlock(&c->lock);
}

int64_t cg_cache_max_age_ms(const cg_cache_t *c)
{
    return c->max_age_ms;
}

size_t cg_cache_size(cg_cache_t *c)
{
    pthread_mutex_lock(&c->lock);
    size_t n = c->n;
    pthread_mutex_unlock(&c->lock);
    return n;
}

void cg_cache_stats(cg_cache_t *c, cg_cache_stats_t *out)
{
    pthread_mutex_lock(&c->lock);
    *out = c->stats;
    pthread_mutex_unlock(&c->lock);
}

int cg_conn_entry_get(const cg_conn_entry_t *e, const cg_cache_t *c, const cg_fp_t *fp,
                      int64_t now_ms, int *found, cg_reg_t *reg)
{
    if (!e->valid || e->version != cg_cache_version(c) ||
        now_ms - e->fetched_ms >= cg_cache_max_age_ms(c) || !cg_fp_eq(&e->fp, fp))
        return 0;
    *found = e->found;
    if (e->found)
        *reg = e->reg;
    return 1;
}

int cg_conn_entry_ref(const cg_conn_entry_t *e, const cg_cache_t *c, const cg_fp_t *fp,
                      int64_t now_ms, const cg_reg_t **reg)
{
    if (!e->valid || e->version != cg_cache_version(c) ||
        now_ms - e->fetched_ms >= cg_cache_max_age_ms(c) || !cg_fp_eq(&e->fp, fp))
        return 0;
    *reg = e->found ? &e->reg : NULL;
    return 1;
}

void cg_conn_entry_set(cg_conn_entry_t *e, const cg_fp_t *fp, int found, const cg_reg_t *reg,
                       uint64_t version, int64_t fetched_ms)
{
    e->valid = 1;
    e->fp = *fp;
    e->found = found != 0;
    if (found)
        e->reg = *reg;
    e->version = version;
    e->fetched_ms = fetched_ms;
    e->gen++;
    e->memo = 0;
}

void cg_cache_keep_expired(cg_cache_t *c, int64_t keep_ms)
{
    pthread_mutex_lock(&c->lock);
    c->keep_ms = keep_ms;
    pthread_mutex_unlock(&c->lock);
}

int cg_cache_get_recent(cg_cache_t *c, const cg_fp_t *fp, int64_t now_ms, int64_t within_ms,
                        cg_reg_t *reg, int64_t *fetched_ms)
{
    int hit = 0;
    pthread_mutex_lock(&c->lock);
    entry_t *e = *find(c, fp);
    if (e != NULL && e->found && now_ms - e->fetched_ms < within_ms) {
        *reg = e->reg;
        *fetched_ms = e->fetched_ms;
        hit = 1;
    }
    pthread_mutex_unlock(&c->lock);
    return hit;
}
