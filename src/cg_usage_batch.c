/* A usage flush in steps: see cg_usage.h. */
#include "cg_usage.h"
#include "cg_usage_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <hiredis/hiredis.h>

/* Count, and keep the newest last_seen (several processes write the same key). */
static const char FLUSH_LUA[] =
    "redis.call('HINCRBY', KEYS[1], 'count', ARGV[1])\n"
    "local cur = tonumber(redis.call('HGET', KEYS[1], 'last_seen') or '0') or 0\n"
    "if tonumber(ARGV[2]) >= cur then\n"
    "  redis.call('HSET', KEYS[1], 'last_seen', ARGV[2], 'last_ip', ARGV[3])\n"
    "end\n"
    "return 1\n";

static void free_cmds(cg_usage_batch_t *b)
{
    free(b->argcs); free(b->argv); free(b->lens); free(b->argvs); free(b->lensv);
    free(b->keys); free(b->nums);
    b->argcs = NULL; b->argv = NULL; b->lens = NULL; b->argvs = NULL; b->lensv = NULL;
    b->keys = NULL; b->nums = NULL;
}

cg_usage_batch_t *cg_usage_batch_take(cg_usage_t *u)
{
    if (u == NULL || u->batch.out)
        return NULL;
    cg_usage_tab_lock(u);
    cg_usage_rec_t *recs = u->recs;
    size_t n = u->n, dropped = u->dropped;
    u->recs = u->spare;
    u->spare = recs;
    u->n = 0;
    u->gen = cg_usage_next_gen();
    u->dropped = 0;
    cg_usage_tab_unlock(u);
    if (n == 0 && dropped == 0)
        return NULL;

    cg_usage_batch_t *b = &u->batch;
    b->out = 1;
    b->recs = recs;
    b->n = n;
    b->answered = b->written = 0;
    b->dropped = dropped;
    if (n == 0)
        return b;
    const size_t per = CG_USAGE_ARGS;
    b->argcs = malloc(n * sizeof(int));
    b->argv = malloc(n * per * sizeof(char *));
    b->lens = malloc(n * per * sizeof(size_t));
    b->argvs = malloc(n * sizeof(*b->argvs));
    b->lensv = malloc(n * sizeof(*b->lensv));
    b->keys = malloc(n * sizeof(*b->keys));
    b->nums = malloc(n * sizeof(*b->nums));
    if (!b->argcs || !b->argv || !b->lens || !b->argvs || !b->lensv || !b->keys || !b->nums) {
        free_cmds(b);
        b->n = 0;
        b->dropped += n;
        b->answered = SIZE_MAX;     /* marks "out of memory" for cg_usage_batch_end */
        return b;
    }
    for (size_t i = 0; i < n; i++) {
        const cg_usage_rec_t *r = &recs[i];
        snprintf(b->keys[i], sizeof(b->keys[i]), "%susage:%s", cg_store_prefix(u->st), r->id);
        snprintf(b->nums[i][0], sizeof(b->nums[i][0]), "%llu", (unsigned long long)r->count);
        snprintf(b->nums[i][1], sizeof(b->nums[i][1]), "%lld", (long long)r->last_seen);
        const char **a = &b->argv[i * per];
        a[0] = "EVAL"; a[1] = FLUSH_LUA; a[2] = "1"; a[3] = b->keys[i];
        a[4] = b->nums[i][0]; a[5] = b->nums[i][1]; a[6] = r->ip;
        for (size_t k = 0; k < per; k++)
            b->lens[i * per + k] = strlen(a[k]);
        b->argcs[i] = (int)per;
        b->argvs[i] = a;
        b->lensv[i] = &b->lens[i * per];
    }
    return b;
}

size_t cg_usage_batch_len(const cg_usage_batch_t *b)
{
    return b ? b->n : 0;
}

void cg_usage_batch_cmd(const cg_usage_batch_t *b, size_t i, int *argc,
                        const char *const **argv, const size_t **lens)
{
    *argc = b->argcs[i];
    *argv = b->argvs[i];
    *lens = b->lensv[i];
}

void cg_usage_batch_reply(cg_usage_batch_t *b, const struct redisReply *r)
{
    if (b == NULL || b->answered >= b->n)
        return;
    b->answered++;
    if (r == NULL || r->type == REDIS_REPLY_ERROR)
        b->dropped++;
    else
        b->written++;
}

void cg_usage_batch_end(cg_usage_batch_t *b, const char *err)
{
    if (b == NULL || !b->out)
        return;
    cg_usage_t *u = b->u;
    if (b->answered == SIZE_MAX)
        err = "out of memory";
    else
        b->dropped += b->n - b->answered;
    size_t written = b->written, dropped = b->dropped;
    free_cmds(b);
    b->out = 0;
    b->recs = NULL;
    b->n = b->answered = b->written = b->dropped = 0;
    if (u->on_flush)
        u->on_flush(u->arg, written, dropped, err);
}
