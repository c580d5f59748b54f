/* Usage flush and invalidation subscriber on nginx events: see ngx_certgate_bg.h. */
#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>

#include <stdio.h>
#include <hiredis/hiredis.h>
#include <hiredis/async.h>

#include "cg_store.h"
#include "cg_sub.h"
#include "cg_usage.h"
#include "ngx_certgate_bg.h"

#define CG_BG_BACKOFF_MIN 100       /* ms, as the subscriber thread */
#define CG_BG_BACKOFF_MAX 1000

static cg_gate_t *gate;
static const cg_ngx_redis_conf_t *rconf;
static ngx_log_t *bg_log;

/* Timers are cancelable: nginx does not wait for them at graceful shutdown. */
static void timer_init(ngx_event_t *ev, ngx_event_handler_pt handler)
{
    ngx_memzero(ev, sizeof(*ev));
    ev->handler = handler;
    ev->log = bg_log;
    ev->data = NULL;
    ev->cancelable = 1;
}

static void timer_off(ngx_event_t *ev)
{
    if (ev->timer_set)
        ngx_del_timer(ev);
}

static int stopping(void)
{
    return ngx_exiting || ngx_quit || ngx_terminate;
}

/* ---------------------------------------------------------------- usage */

static struct {
    cg_usage_t *u;
    ngx_msec_t interval;
    redisAsyncContext *ac;      /* kept between flushes; NULL: none */
    cg_usage_batch_t *b;        /* the batch in flight, or NULL */
    size_t pending;             /* its commands not answered yet */
    char err[160];
    ngx_event_t tick, guard;
} use;

static void use_end(void)
{
    cg_usage_batch_t *b = use.b;
    use.b = NULL;
    use.pending = 0;
    timer_off(&use.guard);
    cg_usage_batch_end(b, use.err[0] ? use.err : NULL);   /* CG08002 if any dropped */
}

static void use_on_reply(redisAsyncContext *ac, void *reply, void *priv)
{
    (void) priv;
    if (use.b == NULL)
        return;
    if (reply == NULL && use.err[0] == '\0')
        snprintf(use.err, sizeof(use.err), "%s",
                     ac->errstr[0] ? ac->errstr : "connection closed");
    cg_usage_batch_reply(use.b, reply);
    if (use.pending > 0 && --use.pending == 0)
        use_end();
}

static void use_on_connect(const redisAsyncContext *ac, int status)
{
    if (status == REDIS_OK || ac != use.ac)
        return;
    snprintf(use.err, sizeof(use.err), "connect: %s", ac->errstr);
    use.ac = NULL;      /* hiredis frees it; its callbacks end the batch */
}

static void use_on_disconnect(const redisAsyncContext *ac, int status)
{
    (void) status;
    if (ac == use.ac)
        use.ac = NULL;
}

/* No answer within the store's bound: the records are dropped (CG08002). */
static void use_timeout(ngx_event_t *ev)
{
    (void) ev;
    redisAsyncContext *ac = use.ac;
    if (use.b == NULL)
        return;
    snprintf(use.err, sizeof(use.err), "no answer within %d ms",
                 CG_GATE_USAGE_TIMEOUT_MS);
    use.ac = NULL;
    if (ac != NULL)
        cg_ngx_redis_drop(ac);      /* runs the pending callbacks: the batch ends */
    if (use.b != NULL)
        use_end();
}

static void use_flush(ngx_event_t *ev)
{
    char err[160];
    (void) ev;
    if (!stopping())
        ngx_add_timer(&use.tick, use.interval);
    if (use.b != NULL)
        return;         /* the last one is still out: these hits go with the next */
    cg_usage_batch_t *b = cg_usage_batch_take(use.u);
    if (b == NULL)
        return;
    use.b = b;
    use.err[0] = '\0';
    size_t n = cg_usage_batch_len(b);
    if (n == 0) {
        use_end();      /* only drops (table full) to report */
        return;
    }
    if (use.ac == NULL) {
        err[0] = '\0';
        use.ac = cg_ngx_redis_open(rconf, bg_log, use_on_connect, use_on_disconnect, err,
                                   sizeof(err));
        if (use.ac == NULL) {
            snprintf(use.err, sizeof(use.err), "connect: %s", err);
            use_end();
            return;
        }
    }
    /* Pipelined: every command is queued before any reply is read. */
    for (size_t i = 0; i < n; i++) {
        int argc;
        const char *const *argv;
        const size_t *lens;
        cg_usage_batch_cmd(b, i, &argc, &argv, &lens);
        if (redisAsyncCommandArgv(use.ac, use_on_reply, NULL, argc, (const char **) argv,
                                  lens) != REDIS_OK)
            break;      /* the rest get no reply: dropped at the end */
        use.pending++;
    }
    if (use.pending == 0) {
        snprintf(use.err, sizeof(use.err), "cannot queue the commands");
        use_end();
        return;
    }
    ngx_add_timer(&use.guard, CG_GATE_USAGE_TIMEOUT_MS);
}

static void use_stop(void)
{
    timer_off(&use.tick);
    if (use.b != NULL)
        snprintf(use.err, sizeof(use.err), "worker exiting");
    redisAsyncContext *ac = use.ac;
    use.ac = NULL;
    if (ac != NULL)
        cg_ngx_redis_drop(ac);      /* a batch in flight ends, its records dropped */
    if (use.b != NULL)
        use_end();
    timer_off(&use.guard);
    use.u = NULL;
}

/* ----------------------------------------------------------- subscriber */

static struct {
    char channel[CG_PREFIX_MAX + 16];
    redisAsyncContext *ac;      /* connecting or subscribed; NULL: none */
    int subscribed;
    int failed_logged;          /* CG07003 once per outage, as the thread */
    ngx_msec_t backoff;
    ngx_event_t retry, guard;
} sub;

static void sub_connect(ngx_event_t *ev);

static void sub_retry(ngx_msec_t ms)
{
    if (!stopping() && !sub.retry.timer_set)
        ngx_add_timer(&sub.retry, ms);
}

/* Could not connect or subscribe: log once, try again after the backoff. */
static void sub_failed(const char *why)
{
    sub.ac = NULL;
    sub.subscribed = 0;
    timer_off(&sub.guard);
    if (!sub.failed_logged)
        cg_gate_sub_event(gate, CG_SUB_CONNECT_FAILED, why);
    sub.failed_logged = 1;
    sub_retry(sub.backoff);
    sub.backoff = sub.backoff * 2 < CG_BG_BACKOFF_MAX ? sub.backoff * 2 : CG_BG_BACKOFF_MAX;
}

/* Was subscribed: log, and connect again at once (the thread does too). */
static void sub_lost(const char *why)
{
    sub.ac = NULL;
    sub.subscribed = 0;
    timer_off(&sub.guard);
    cg_gate_sub_event(gate, CG_SUB_DISCONNECTED, why);
    sub_retry(1);
}

static void sub_on_connect(const redisAsyncContext *ac, int status)
{
    if (status == REDIS_OK || ac != sub.ac)
        return;
    char why[160];
    snprintf(why, sizeof(why), "connect: %s", ac->errstr);
    sub_failed(why);    /* hiredis frees ac */
}

static void sub_on_disconnect(const redisAsyncContext *ac, int status)
{
    (void) status;
    if (ac != sub.ac)
        return;         /* one we left already */
    const char *why = ac->errstr[0] ? ac->errstr : "connection closed";
    if (sub.subscribed)
        sub_lost(why);
    else
        sub_failed(why);
}

static void sub_on_reply(redisAsyncContext *ac, void *reply, void *priv)
{
    (void) priv;
    if (ac != sub.ac || reply == NULL)
        return;
    if (cg_sub_is_subscribed(reply)) {
        timer_off(&sub.guard);
        sub.subscribed = 1;
        sub.failed_logged = 0;
        sub.backoff = CG_BG_BACKOFF_MIN;
        cg_gate_sub_event(gate, CG_SUB_SUBSCRIBED, NULL);     /* flushes the cache */
        return;
    }
    cg_gate_sub_message(gate, reply);
}

/* Connect, AUTH, SELECT and SUBSCRIBE within the store's timeout, as the
 * thread's blocking connect. */
static void sub_timeout(ngx_event_t *ev)
{
    (void) ev;
    redisAsyncContext *ac = sub.ac;
    if (ac == NULL || sub.subscribed)
        return;
    sub_failed("connect or SUBSCRIBE timed out");
    cg_ngx_redis_drop(ac);
}

static void sub_connect(ngx_event_t *ev)
{
    char err[160];
    (void) ev;
    if (stopping() || sub.ac != NULL)
        return;
    err[0] = '\0';
    redisAsyncContext *ac = cg_ngx_redis_open(rconf, bg_log, sub_on_connect, sub_on_disconnect,
                                              err, sizeof(err));
    if (ac == NULL) {
        char why[200];
        snprintf(why, sizeof(why), "connect: %s", err);
        sub_failed(why);
        return;
    }
    const char *argv[2] = { "SUBSCRIBE", sub.channel };
    size_t lens[2] = { 9, ngx_strlen(sub.channel) };
    if (redisAsyncCommandArgv(ac, sub_on_reply, NULL, 2, argv, lens) != REDIS_OK) {
        cg_ngx_redis_drop(ac);
        sub_failed("SUBSCRIBE failed");
        return;
    }
    sub.ac = ac;
    sub.subscribed = 0;
    ngx_add_timer(&sub.guard, (ngx_msec_t) cg_gate_timeout_ms(gate));
}

static void sub_stop(void)
{
    timer_off(&sub.retry);
    timer_off(&sub.guard);
    redisAsyncContext *ac = sub.ac;
    sub.ac = NULL;          /* its callbacks now ignore it: no CG07002 at exit */
    sub.subscribed = 0;
    if (ac != NULL)
        cg_ngx_redis_drop(ac);
}

/* ------------------------------------------------------------------ api */

void cg_ngx_bg_start(ngx_cycle_t *cycle, cg_gate_t *g, const cg_ngx_redis_conf_t *conf,
                     int usage_interval_s)
{
    gate = g;
    rconf = conf;
    bg_log = cycle->log;
    use.u = cg_gate_usage(g);
    if (use.u != NULL && usage_interval_s > 0) {
        use.interval = (ngx_msec_t) usage_interval_s * 1000;
        timer_init(&use.tick, use_flush);
        timer_init(&use.guard, use_timeout);
        ngx_add_timer(&use.tick, use.interval);
    }
    if (cg_gate_cache(g) != NULL) {
        if (cg_gate_sub_channel(g, sub.channel, sizeof(sub.channel)) != 0) {
            ngx_log_error(NGX_LOG_ERR, cycle->log, 0, "CG04006: cannot start the invalidation "
                          "subscriber: key prefix too long; cached entries expire by the "
                          "cache max age");
            return;
        }
        sub.backoff = CG_BG_BACKOFF_MIN;
        timer_init(&sub.retry, sub_connect);
        timer_init(&sub.guard, sub_timeout);
        sub_connect(NULL);
    }
}

void cg_ngx_bg_stop(void)
{
    if (gate == NULL)
        return;
    sub_stop();
    use_stop();
    gate = NULL;
}
