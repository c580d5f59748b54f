/* The invalidation subscriber's protocol, without I/O: see cg_sub.h. */
#include "cg_sub.h"

#include <stdio.h>
#include <string.h>
#include <time.h>
#include <hiredis/hiredis.h>

int cg_sub_channel(const char *prefix, char *out, size_t cap)
{
    int n = snprintf(out, cap, "%sinvalidate", prefix ? prefix : "");
    return n < 0 || (size_t)n >= cap ? -1 : 0;
}

int cg_sub_is_subscribed(const redisReply *r)
{
    return r != NULL && r->type == REDIS_REPLY_ARRAY && r->elements >= 1 &&
           r->element[0]->type == REDIS_REPLY_STRING &&
           strcmp(r->element[0]->str, "subscribe") == 0;
}

void cg_sub_handle(cg_cache_t *cache, const redisReply *r, cg_sub_inval_fn on_inval, void *arg)
{
    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements != 3 ||
        r->element[0]->type != REDIS_REPLY_STRING || strcmp(r->element[0]->str, "message") != 0)
        return;
    const redisReply *payload = r->element[2];
    cg_fp_t fp;
    int64_t lag_us = -1, sent_ms;
    if (payload->type == REDIS_REPLY_STRING && payload->len >= CG_FP_HEX_LEN &&
        cg_fp_from_hex(payload->str, CG_FP_HEX_LEN, &fp) == 0 &&
        (payload->len == CG_FP_HEX_LEN ||
         (payload->str[CG_FP_HEX_LEN] == ' ' &&
          cg_parse_i64(payload->str + CG_FP_HEX_LEN + 1, payload->len - CG_FP_HEX_LEN - 1,
                       &sent_ms) == 0))) {
        cg_cache_invalidate(cache, &fp);
        if (payload->len > CG_FP_HEX_LEN) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            lag_us = ((int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000 - sent_ms) * 1000;
            if (lag_us < 0)
                lag_us = 0;   /* clocks of one host; sub-ms rounding */
        }
    } else {
        cg_cache_flush(cache);   /* a message we cannot place: drop everything */
    }
    if (on_inval)
        on_inval(arg, lag_us);
}

void cg_sub_resubscribed(cg_cache_t *cache)
{
    cg_cache_flush(cache);
}

void cg_sub_report(cg_sub_log_fn log, void *arg, int event, const char *detail)
{
    char msg[512];
    const char *d = detail ? detail : "";
    int n;
    if (log == NULL)
        return;
    /* Truncation of a long Redis error text is fine here. */
    if (event == CG_SUB_SUBSCRIBED)
        n = snprintf(msg, sizeof(msg), "invalidation subscriber subscribed");
    else if (event == CG_SUB_DISCONNECTED)
        n = snprintf(msg, sizeof(msg), "invalidation subscriber disconnected (%s); cached "
                     "entries expire by the cache max age until it is back", d);
    else
        n = snprintf(msg, sizeof(msg), "invalidation subscriber cannot subscribe: %s; "
                     "cached entries expire by the cache max age", d);
    if (n < 0)
        return;
    log(arg, event, msg);
}
