/* Internals shared by cg_usage.c (hit table, thread) and cg_usage_batch.c. */
#ifndef CG_USAGE_INT_H
#define CG_USAGE_INT_H

#include <pthread.h>
#include <stdatomic.h>

#include "cg_reg.h"
#include "cg_usage.h"

#define CG_USAGE_IP_MAX 64
#define CG_USAGE_ARGS 7                 /* EVAL script 1 key count last_seen ip */

typedef struct {
    char id[CG_ID_MAX + 1];
    uint64_t count;
    int64_t last_seen;
    char ip[CG_USAGE_IP_MAX];
    uint64_t ip_seq;            /* changes whenever ip does (hints) */
} cg_usage_rec_t;

/* One batch at a time: the records of spare, and their commands. */
struct cg_usage_batch {
    cg_usage_t *u;
    int out;                    /* taken, not ended */
    const cg_usage_rec_t *recs;
    size_t n, answered, written, dropped;
    int *argcs;
    const char **argv;
    size_t *lens;
    const char *const **argvs;
    const size_t **lensv;
    char (*keys)[CG_PREFIX_MAX + CG_ID_MAX + 8];
    char (*nums)[2][24];
};

struct cg_usage {
    cg_store_t *st;
    int interval_ms, timeout_ms;
    cg_usage_flush_fn on_flush;
    void *arg;
    int threaded;               /* 0: an event loop takes the batches */
    pthread_mutex_t lock;       /* stop and wake only */
    pthread_cond_t wake;
    atomic_int busy;            /* guards recs, spare, n, dropped, last: held briefly (no
                                 * I/O, no allocation): a spin, cheaper than the mutex */
    int stop;
    pthread_t thread;
    cg_usage_rec_t *recs, *spare;   /* swapped at flush, so hits never wait for Redis */
    size_t n, cap, dropped;
    size_t last;                /* slot of the last hit: most hits repeat it */
    uint64_t gen;               /* of recs: new at every swap, unique in the process (hints) */
    struct cg_usage_batch batch;
};

void cg_usage_tab_lock(cg_usage_t *u);
/* A table generation no other table of the process has had (never 0). */
uint64_t cg_usage_next_gen(void);
void cg_usage_tab_unlock(cg_usage_t *u);

#endif
