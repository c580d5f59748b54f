#include "cg_gate.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <hiredis/hiredis.h>
#include <openssl/crypto.h>

#include "cg_cert.h"
#include "cg_fp.h"
#include "cg_sentinel.h"
#include "cg_sub.h"
#include "cg_usage.h"

struct cg_gate {
    cg_store_cfg_t cfg;         /* own copies of the strings */
    int usage_interval_s;
    int loop_bg;                /* cfg.loop_bg */
    cg_store_t *store;
    cg_cache_t *cache;
    cg_sub_t *sub;
    cg_usage_t *usage;
    cg_metrics_t *metrics;
    cg_metrics_t *own_metrics;
    void *log_ctx;
    /* The cache's, read by the memo path without calls (max age: fixed). */
    const _Atomic uint64_t *cache_version;
    int64_t cache_max_age_ms;
};

static cg_gate_log_fn sink;
static cg_gate_log_check_fn sink_check;

void cg_gate_set_log(cg_gate_log_fn fn)
{
    sink = fn;
}

void cg_gate_set_log_check(cg_gate_log_check_fn fn)
{
    sink_check = fn;
}

/* Whether a line at level would be written: formatting one costs more than
 * the rest of an allowed request. */
static int log_wanted(void *ctx, int level)
{
    return sink != NULL && (sink_check == NULL || sink_check(ctx, level));
}

/* Decimal of v into out (at least 21 bytes): snprintf costs more than the gate. */
static void i64_to_dec(int64_t v, char *out)
{
    char tmp[24];
    size_t n = 0, o = 0;
    uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    do {
        tmp[n++] = (char)('0' + u % 10);
        u /= 10;
    } while (u != 0);
    if (v < 0)
        out[o++] = '-';
    while (n > 0)
        out[o++] = tmp[--n];
    out[o] = '\0';
}

static void glog(void *ctx, int level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static void glog(void *ctx, int level, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    if (sink == NULL)
        return;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    sink(ctx, level, msg);
}

static void count(_Atomic uint64_t *c, uint64_t n)
{
    atomic_fetch_add_explicit(c, n, memory_order_relaxed);
}

void cg_gate_cfg_defaults(cg_gate_cfg_t *c)
{
    memset(c, 0, sizeof(*c));
    c->store.host = CG_GATE_HOST_DEFAULT;
    c->store.port = CG_GATE_PORT_DEFAULT;
    c->store.prefix = CG_GATE_PREFIX_DEFAULT;
    c->store.timeout_ms = CG_GATE_TIMEOUT_MS_DEFAULT;
    c->store.max_idle = CG_GATE_MAX_IDLE_DEFAULT;
    c->cache_on = 1;
    c->cache_entries = CG_GATE_CACHE_ENTRIES_DEFAULT;
    c->cache_max_age_s = CG_GATE_CACHE_MAX_AGE_DEFAULT;
    c->usage_interval_s = CG_GATE_USAGE_INTERVAL_DEFAULT;
}

/* ---------------------------------------------------------------- lifecycle */

static int dup_str(const char *s, const char **out)
{
    *out = NULL;
    if (s == NULL)
        return 0;
    char *d = strdup(s);
    if (d == NULL)
        return -1;
    *out = d;
    return 0;
}

static void free_str(const char *s, int secret)
{
    if (s == NULL)
        return;
    if (secret)
        OPENSSL_cleanse((char *)s, strlen(s));
    free((char *)s);
}

static void free_cfg(cg_store_cfg_t *c)
{
    free_str(c->host, 0);
    free_str(c->socket, 0);
    free_str(c->user, 0);
    free_str(c->password, 1);
    free_str(c->prefix, 0);
    free_str(c->sentinels, 0);
    free_str(c->master_name, 0);
    free_str(c->sentinel_user, 0);
    free_str(c->sentinel_password, 1);
}

/* Sentinel events (store and subscriber): counted always, logged at most once
 * a second per kind so an outage does not flood the log. */
static void sentinel_report(cg_metrics_t *m, void *log_ctx, int ev, const char *msg)
{
    static _Atomic int64_t last[8];
    if (m != NULL)
        count(ev == CG_SENTINEL_EV_UNREACHABLE ? &m->sentinel_unreachable
              : ev == CG_SENTINEL_EV_UNKNOWN_MASTER ? &m->sentinel_unknown
              : ev == CG_SENTINEL_EV_NOT_MASTER ? &m->sentinel_not_master
              : ev == CG_SENTINEL_EV_SWITCHED ? &m->sentinel_switches
              : &m->sentinel_distrusts, 1);
    int64_t now = cg_now_ms(), was = atomic_load(&last[ev & 7]);
    if (ev != CG_SENTINEL_EV_SWITCHED &&
        (now - was < 1000 || !atomic_compare_exchange_strong(&last[ev & 7], &was, now)))
        return;
    if (ev == CG_SENTINEL_EV_UNREACHABLE)
        glog(log_ctx, CG_LOG_ERR, "CG11001: %s; gated requests get the store-error answer", msg);
    else if (ev == CG_SENTINEL_EV_UNKNOWN_MASTER)
        glog(log_ctx, CG_LOG_ERR, "CG11002: %s; check CertGateRedisMasterName", msg);
    else if (ev == CG_SENTINEL_EV_NOT_MASTER)
        glog(log_ctx, CG_LOG_WARN, "CG11003: %s", msg);
    else if (ev == CG_SENTINEL_EV_SWITCHED)
        glog(log_ctx, CG_LOG_WARN, "CG11004: %s; connections to the old one are closed", msg);
    else
        glog(log_ctx, CG_LOG_INFO, "CG11005: %s", msg);
}

static void sentinel_event(void *arg, int ev, const char *msg)
{
    cg_gate_t *g = arg;
    sentinel_report(g->metrics, g->log_ctx, ev, msg);
}

void cg_gate_sentinel_event(void *events, int ev, const char *msg)
{
    const cg_gate_events_t *e = events;
    sentinel_report(e->metrics, e->log_ctx, ev, msg);
}

cg_gate_t *cg_gate_new(const cg_gate_cfg_t *cfg, cg_metrics_t *metrics, void *log_ctx)
{
    char err[256];
    cg_gate_t *g = calloc(1, sizeof(*g));
    if (g == NULL)
        return NULL;
    g->cfg = cfg->store;
    /* Own copies only: a failure half-way must not free the caller's strings. */
    g->cfg.host = g->cfg.socket = g->cfg.user = g->cfg.password = g->cfg.prefix = NULL;
    g->cfg.sentinels = g->cfg.master_name = g->cfg.sentinel_user = NULL;
    g->cfg.sentinel_password = NULL;
    g->cfg.sentinel_event = sentinel_event;
    g->cfg.sentinel_arg = g;
    if (dup_str(cfg->store.host, &g->cfg.host) || dup_str(cfg->store.socket, &g->cfg.socket) ||
        dup_str(cfg->store.user, &g->cfg.user) || dup_str(cfg->store.password, &g->cfg.password) ||
        dup_str(cfg->store.prefix ? cfg->store.prefix : CG_GATE_PREFIX_DEFAULT, &g->cfg.prefix) ||
        dup_str(cfg->store.sentinels, &g->cfg.sentinels) ||
        dup_str(cfg->store.master_name, &g->cfg.master_name) ||
        dup_str(cfg->store.sentinel_user, &g->cfg.sentinel_user) ||
        dup_str(cfg->store.sentinel_password, &g->cfg.sentinel_password))
        goto oom;
    g->usage_interval_s = cfg->usage_interval_s;
    g->loop_bg = cfg->loop_bg;
    g->log_ctx = log_ctx;
    g->metrics = metrics;
    if (metrics == NULL) {
        g->own_metrics = malloc(sizeof(*g->own_metrics));
        if (g->own_metrics == NULL)
            goto oom;
        cg_metrics_init(g->own_metrics);
        g->metrics = g->own_metrics;
    }
    /* No connection yet: each thread connects lazily on its first lookup. */
    g->store = cg_store_new(&g->cfg, err, sizeof(err));
    if (g->store == NULL)
        glog(log_ctx, CG_LOG_ERR, "CG04004: cannot set up the Redis store: %s; gated requests "
             "get 503 and usage is not recorded", err);
    if (cfg->cache_on) {
        g->cache = cg_cache_new(cfg->cache_entries, (int64_t)cfg->cache_max_age_s * 1000);
        if (g->cache != NULL) {
            g->cache_version = cg_cache_version_at(g->cache);
            g->cache_max_age_ms = cg_cache_max_age_ms(g->cache);
        }
        if (g->cache == NULL)
            glog(log_ctx, CG_LOG_ERR, "CG04005: cannot allocate the registration cache; "
                 "running without it");
        else if (cfg->stale_keep_s > 0)
            cg_cache_keep_expired(g->cache, (int64_t)cfg->stale_keep_s * 1000);
    }
    return g;
oom:
    free_cfg(&g->cfg);
    free(g);
    return NULL;
}

static void sub_log(void *arg, int event, const char *msg)
{
    cg_gate_t *g = arg;
    if (event == CG_SUB_SUBSCRIBED)
        glog(g->log_ctx, CG_LOG_INFO, "CG07001: %s", msg);
    else if (event == CG_SUB_DISCONNECTED)
        glog(g->log_ctx, CG_LOG_WARN, "CG07002: %s", msg);
    else
        glog(g->log_ctx, CG_LOG_WARN, "CG07003: %s", msg);
}

static void sub_inval(void *arg, int64_t lag_us)
{
    cg_gate_t *g = arg;
    cg_metrics_invalidation(g->metrics, lag_us);
}

static void usage_flushed(void *arg, size_t written, size_t dropped, const char *err)
{
    cg_gate_t *g = arg;
    (void)written;
    count(&g->metrics->usage_flushes, 1);
    count(&g->metrics->usage_dropped, dropped);
    if (dropped > 0)
        glog(g->log_ctx, CG_LOG_WARN, "CG08002: %zu usage records dropped%s%s", dropped,
             err ? ": " : "", err ? err : "");
}

void cg_gate_start(cg_gate_t *g)
{
    char err[256];
    if (g->store != NULL && g->usage_interval_s > 0 && g->usage == NULL) {
        /* loop_bg: the table only; the adapter's loop takes the batches. */
        g->usage = g->loop_bg ? cg_usage_new(g->store, CG_GATE_USAGE_CAP,
                                             CG_GATE_USAGE_TIMEOUT_MS, usage_flushed, g)
                              : cg_usage_start(g->store, CG_GATE_USAGE_CAP,
                                               g->usage_interval_s * 1000,
                                               CG_GATE_USAGE_TIMEOUT_MS, usage_flushed, g);
        if (g->usage == NULL)
            glog(g->log_ctx, CG_LOG_ERR, "CG04009: the usage recording thread could not "
                 "start; usage is not recorded");
    }
    cg_sentinel_t *sent = cg_store_sentinel(g->store);
    if (sent != NULL && cg_sentinel_watch(sent) != 0)
        glog(g->log_ctx, CG_LOG_ERR, "CG11006: cannot start the sentinel thread; the master "
             "address is only checked after errors");
    if (g->cache != NULL && g->sub == NULL && !g->loop_bg) {
        g->sub = cg_sub_start(&g->cfg, cg_store_sentinel(g->store), g->cache, sub_log, sub_inval,
                              g, err, sizeof(err));
        if (g->sub == NULL)
            glog(g->log_ctx, CG_LOG_ERR, "CG04006: cannot start the invalidation subscriber: "
                 "%s; cached entries expire by the cache max age", err);
    }
}

void cg_gate_free(cg_gate_t *g)
{
    if (g == NULL)
        return;
    /* Threads first, before what they use goes. */
    if (g->sub != NULL)
        cg_sub_stop(g->sub);
    if (g->usage != NULL)
        cg_usage_stop(g->usage);
    if (g->cache != NULL)
        cg_cache_free(g->cache);
    if (g->store != NULL)
        cg_store_free(g->store);
    free(g->own_metrics);
    free_cfg(&g->cfg);
    free(g);
}

void cg_process_caches_free(void)
{
    cg_fp_cache_clear();
    cg_cert_kept_clear();
}

cg_store_t *cg_gate_store(cg_gate_t *g)
{
    return g ? g->store : NULL;
}

cg_cache_t *cg_gate_cache(cg_gate_t *g)
{
    return g ? g->cache : NULL;
}

cg_metrics_t *cg_gate_metrics(cg_gate_t *g)
{
    return g ? g->metrics : NULL;
}

int cg_gate_timeout_ms(const cg_gate_t *g)
{
    return g->cfg.timeout_ms;
}

const char *cg_gate_prefix(const cg_gate_t *g)
{
    return g->cfg.prefix;
}

/* ---------------------------------------------------------------- decision */

/* A request's app for the log: bounded, control bytes, quotes and '\' as \xHH. */
static void escape_app(const char *s, char *out, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; s[i] != '\0' && i < CG_APP_MAX && o + 5 < cap; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch <= 0x20 || ch >= 0x7f || ch == '"' || ch == '\\')
            o += (size_t)snprintf(out + o, cap - o, "\\x%02x", ch);
        else
            out[o++] = (char)ch;
    }
    out[o] = '\0';
}

static void log_store_error(const cg_gate_in_t *in, cg_store_rc_t rc, const char *err,
                            const char *fp_hex)
{
    const char *kind = cg_store_rc_name(rc), *client = in->client ? in->client : "-";
    /* One tag per kind (docs/log-tags.md). */
    if (rc == CG_STORE_CORRUPT)
        glog(in->log_ctx, CG_LOG_ERR, "CG02003: store record corrupt (%s): %s; "
             "reason=store_unavailable fingerprint=%s client=%s", kind, err, fp_hex, client);
    else if (rc == CG_STORE_TIMEOUT)
        glog(in->log_ctx, CG_LOG_ERR, "CG02004: store unavailable (%s): %s; "
             "reason=store_unavailable fingerprint=%s client=%s", kind, err, fp_hex, client);
    else if (rc == CG_STORE_PERM)
        glog(in->log_ctx, CG_LOG_ERR, "CG02005: store permission denied (%s): %s; "
             "reason=store_unavailable fingerprint=%s client=%s", kind, err, fp_hex, client);
    else
        glog(in->log_ctx, CG_LOG_ERR, "CG02001: store unavailable (%s): %s; "
             "reason=store_unavailable fingerprint=%s client=%s", kind, err, fp_hex, client);
}

/* Shadow mode: v->reason is a deny; let the request through, count and log it. */
static void shadow_pass(cg_gate_t *g, const cg_gate_in_t *in, const cg_reg_t *regp,
                        cg_gate_verdict_t *v)
{
    char asked[CG_APP_MAX * 4 + 1] = "-";
    if (in->app != NULL && in->app[0] != '\0')
        escape_app(in->app, asked, sizeof(asked));
    v->pass = 1;
    v->would_deny = 1;
    cg_metrics_would_deny(g->metrics, v->reason);
    glog(in->log_ctx, CG_LOG_WARN, "CG01010: shadow deny (not enforced) reason=%s "
         "fingerprint=%s app=%s asked=%s cert=%s client=%s%s", cg_reason_name(v->reason),
         v->fp_hex, regp != NULL ? regp->app_id : "-", asked, regp ? regp->id : "-",
         in->client ? in->client : "-",
         in->peer && in->peer->verify_failed ? " (TLS verification failed)" : "");
}

/* in_place: reg is the connection's entry, which outlives the request's use of v. */
static void decide(cg_gate_t *g, const cg_gate_in_t *in, cg_store_rc_t rc,
                   const cg_reg_t *reg, const char *err, cg_gate_verdict_t *v, int in_place)
{
    const cg_peer_t *peer = in->peer != NULL && in->peer->has_leaf ? in->peer : NULL;
    const char *client = in->client ? in->client : "-";
    const cg_reg_t *regp = NULL;
    cg_reg_t stale;
    int64_t stale_at = 0;
    cg_store_rc_t failed = CG_STORE_OK;

    /* Not memset: the verdict holds a whole registration (about 1 kB). */
    v->reason = CG_ALLOW;
    v->pass = 0;
    v->final = 1;
    v->has_reg = 0;
    v->regp = NULL;
    v->would_deny = 0;
    v->conn_gen = 0;
    v->expire_in[0] = '\0';
    strcpy(v->fp_hex, "-");
    /* An ambiguous request is refused whatever the registration: no lookup. */
    if (peer != NULL && !in->app_ambiguous) {
        if (peer->leaf_hex[0] != '\0')     /* made once per connection */
            memcpy(v->fp_hex, peer->leaf_hex, sizeof(v->fp_hex));
        else
            cg_fp_to_hex(&peer->leaf, v->fp_hex);
        if (rc == CG_STORE_OK) {
            regp = reg;
        } else if (cg_store_failed(rc) && rc != CG_STORE_CORRUPT && rc != CG_STORE_PERM &&
                   in->stale_s > 0 && !in->fail_open && g->cache != NULL &&
                   cg_cache_get_recent(g->cache, &peer->leaf, cg_now_ms(),
                                       (int64_t)in->stale_s * 1000, &stale, &stale_at)) {
            /* Stale mode: decide on the record read before; only an allow is used.
             * Not when Redis answered (a damaged record, an ACL refusal): no outage. */
            regp = &stale;
            failed = rc;
        } else if (cg_store_failed(rc)) {
            v->reason = CG_R_STORE_UNAVAILABLE;
            /* Shadow never refuses: the failure is logged and counted as a
             * would-be deny; the fail-open setting does not apply. */
            if (in->shadow) {
                log_store_error(in, rc, err ? err : "", v->fp_hex);
                cg_metrics_decision(g->metrics, CG_R_STORE_UNAVAILABLE);
                shadow_pass(g, in, NULL, v);
                return;
            }
            if (in->fail_open) {
                glog(in->log_ctx, CG_LOG_CRIT, "CG02002: FAIL-OPEN: store %s (%s); request "
                     "allowed unchecked by the on-store-error allow setting; fingerprint=%s "
                     "client=%s", cg_store_rc_name(rc), err ? err : "", v->fp_hex, client);
                v->pass = 1;
                return;
            }
            log_store_error(in, rc, err ? err : "", v->fp_hex);
            cg_metrics_decision(g->metrics, CG_R_STORE_UNAVAILABLE);
            return;
        }
    }

    cg_input_t ci = {
        .leaf = peer ? &peer->leaf : NULL,
        .chain = peer ? peer->chain : NULL,
        .chain_len = peer ? peer->chain_len : 0,
        .chain_known = peer ? peer->chain_known : 0,
        .verify_failed = in->peer ? in->peer->verify_failed : 0,
        .app = in->app,
        .app_ambiguous = in->app_ambiguous,
        .now = in->now,
        .reg = regp,
    };
    v->reason = cg_decide(&ci);
    if (failed != CG_STORE_OK) {
        if (v->reason != CG_ALLOW) {
            v->reason = CG_R_STORE_UNAVAILABLE;
            log_store_error(in, failed, err ? err : "", v->fp_hex);
            cg_metrics_decision(g->metrics, CG_R_STORE_UNAVAILABLE);
            /* As without stale mode: shadow never refuses a store failure. */
            if (in->shadow)
                shadow_pass(g, in, NULL, v);
            return;
        }
        count(&g->metrics->stale_allows, 1);
        glog(in->log_ctx, CG_LOG_ERR, "CG02010: STALE ALLOW: store %s (%s); allowed from the "
             "registration read %" PRId64 " ms ago (stale window %d s); app=%s cert=%s "
             "fingerprint=%s client=%s", cg_store_rc_name(failed), err ? err : "",
             cg_now_ms() - stale_at, in->stale_s, regp->app_id, regp->id, v->fp_hex, client);
    }
    if (regp != NULL) {
        v->has_reg = 1;
        if (in_place && regp == reg && !in->cert_only) {
            v->regp = regp;
            v->conn_gen = in->conn->gen;
        } else {
            v->reg = *regp;
            v->regp = &v->reg;
        }
    }
    if (v->reason == CG_ALLOW && in->cert_only) {
        v->pass = 1;
        v->final = 0;
        return;
    }
    cg_metrics_decision(g->metrics, v->reason);
    if (v->reason == CG_ALLOW) {
        v->pass = 1;
        i64_to_dec(cg_expire_in_days(regp, in->now), v->expire_in);
        cg_usage_hit(g->usage, regp->id, in->now, client);
        if (!in->debug_off && log_wanted(in->log_ctx, CG_LOG_DEBUG))
            glog(in->log_ctx, CG_LOG_DEBUG, "CG01002: allow app=%s cert=%s fingerprint=%s "
                 "client=%s", regp->app_id, regp->id, v->fp_hex, client);
        return;
    }
    if (v->reason == CG_R_CHAIN_MISMATCH && peer != NULL && !peer->chain_known)
        glog(in->log_ctx, CG_LOG_WARN, "CG03003: resumed TLS session carries no chain record; "
             "the client must do a full handshake");
    if (in->shadow) {
        shadow_pass(g, in, regp, v);
        return;
    }
    /* app: the registration's; asked: what the request named (app_mismatch
     * needs both to be understood). */
    char asked[CG_APP_MAX * 4 + 1] = "-";
    if (in->app != NULL && in->app[0] != '\0')
        escape_app(in->app, asked, sizeof(asked));
    glog(in->log_ctx, CG_LOG_WARN, "CG01001: deny reason=%s fingerprint=%s app=%s asked=%s "
         "cert=%s client=%s%s", cg_reason_name(v->reason), v->fp_hex,
         regp != NULL ? regp->app_id : "-", asked, regp ? regp->id : "-", client,
         in->peer && in->peer->verify_failed ? " (TLS verification failed)" : "");
}

void cg_gate_decide(cg_gate_t *g, const cg_gate_in_t *in, cg_store_rc_t rc,
                    const cg_reg_t *reg, const char *err, cg_gate_verdict_t *v)
{
    decide(g, in, rc, reg, err, v, 0);
}

/* ---------------------------------------------------------------- lookup */

static void conn_lock(const cg_gate_in_t *in, int on)
{
    if (in->lock != NULL)
        in->lock(in->lock_arg, on);
}

static void conn_set(const cg_gate_in_t *in, const cg_fp_t *fp, int found, const cg_reg_t *reg,
                     uint64_t version, int64_t fetched_ms)
{
    if (in->conn == NULL)
        return;
    conn_lock(in, 1);
    cg_conn_entry_set(in->conn, fp, found, reg, version, fetched_ms);
    conn_lock(in, 0);
}

void cg_gate_lookup_fail(cg_gate_lookup_t *lk, cg_store_rc_t rc, const char *err)
{
    lk->rc = rc;
    snprintf(lk->err, sizeof(lk->err), "%s", err ? err : "");
}

/*
 * The last allow of a connection entry, remembered: an allow depends on the
 * registration (the entry, while it answers), the peer (its fill), the second
 * (validity and binding windows, days left) and the app the request names.
 * Nothing else: shadow, fail-open and stale mode only change denies and failures.
 */
static int memo_allows(const cg_conn_entry_t *e, const cg_gate_in_t *in)
{
    if (!e->memo || e->memo_now != in->now || e->memo_peer != (const void *)in->peer ||
        in->peer == NULL || e->memo_peer_gen != in->peer->gen || in->cert_only ||
        in->app_ambiguous)
        return 0;
    if (in->app == NULL)
        return !e->memo_app_set;
    return e->memo_app_set && strcmp(e->memo_app, in->app) == 0;
}

static void memo_set(cg_conn_entry_t *e, const cg_gate_in_t *in, const cg_gate_verdict_t *v)
{
    if (in->app != NULL) {
        size_t n = strlen(in->app);
        if (n > CG_APP_MAX)
            return;     /* never matches a registration: not worth keeping */
        memcpy(e->memo_app, in->app, n + 1);
    }
    e->memo_app_set = in->app != NULL;
    e->memo_now = in->now;
    e->memo_peer = in->peer;
    e->memo_peer_gen = in->peer->gen;
    memcpy(e->memo_expire_in, v->expire_in, sizeof(e->memo_expire_in));
    e->memo_usage.gen = 0;      /* for this registration: not known yet */
    e->memo = 1;
}

/* What decide() does for an allow, from the memo: count, record usage, log. */
static void memo_allow(cg_gate_t *g, const cg_gate_in_t *in, const cg_reg_t *reg,
                       cg_gate_verdict_t *v)
{
    const char *client = in->client ? in->client : "-";
    v->reason = CG_ALLOW;
    v->pass = 1;
    v->final = 1;
    v->has_reg = 1;
    v->regp = reg;
    v->would_deny = 0;
    v->conn_gen = in->conn->gen;
    memcpy(v->fp_hex, in->peer->leaf_hex, sizeof(v->fp_hex));
    memcpy(v->expire_in, in->conn->memo_expire_in, sizeof(v->expire_in));
    if (v->fp_hex[0] == '\0')
        cg_fp_to_hex(&in->peer->leaf, v->fp_hex);
    count(&g->metrics->decisions[CG_ALLOW], 1);     /* cg_metrics_decision, inline */
    /* reg is the entry's own: the hint is for it while the memo holds. */
    in->conn->memo_usage.client_seq = in->client_seq;
    cg_usage_hit_hint(g->usage, reg->id, in->now, client, &in->conn->memo_usage);
    if (!in->debug_off && log_wanted(in->log_ctx, CG_LOG_DEBUG))
        glog(in->log_ctx, CG_LOG_DEBUG, "CG01002: allow app=%s cert=%s fingerprint=%s "
             "client=%s", reg->app_id, reg->id, v->fp_hex, client);
}

/* cg_now_ms (the clock e->fetched_ms was read with), without the call. */
static inline int64_t memo_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The fast path: this connection's entry (not shared) still answers and its
 * last allow still holds. The entry's fingerprint is the peer's: the memo
 * was set for this fill of the peer. 1: v is the verdict. */
static int memo_path(cg_gate_t *g, const cg_gate_in_t *in, cg_gate_verdict_t *v)
{
    const cg_conn_entry_t *e = in->conn;
    if (e == NULL || in->lock != NULL || g->cache == NULL || !memo_allows(e, in) ||
        !e->valid || !e->found || e->version != atomic_load(g->cache_version) ||
        memo_now_ms() - e->fetched_ms >= g->cache_max_age_ms)
        return 0;
    count(&g->metrics->cache_conn_hits, 1);
    memo_allow(g, in, &e->reg, v);
    return 1;
}

static int begin_slow(cg_gate_t *g, const cg_gate_in_t *in, cg_gate_lookup_t *lk,
                      cg_gate_verdict_t *v);

int cg_gate_begin(cg_gate_t *g, const cg_gate_in_t *in, cg_gate_lookup_t *lk,
                  cg_gate_verdict_t *v)
{
    if (memo_path(g, in, v))
        return CG_GATE_DONE;
    return begin_slow(g, in, lk, v);
}

/* Apart, so that the memo path does not pay this one's frame (a cg_reg_t). */
__attribute__((noinline))
static int begin_slow(cg_gate_t *g, const cg_gate_in_t *in, cg_gate_lookup_t *lk,
                      cg_gate_verdict_t *v)
{
    if (in->peer == NULL || !in->peer->has_leaf || in->app_ambiguous) {
        cg_gate_decide(g, in, CG_STORE_NOTFOUND, NULL, NULL, v);
        return CG_GATE_DONE;
    }
    const cg_fp_t *fp = &in->peer->leaf;
    int64_t now = cg_now_ms(), fetched = now;
    uint64_t ver = 0;
    cg_reg_t reg;
    int found = 0;

    if (g->cache != NULL) {
        ver = cg_cache_version(g->cache);
        if (in->conn != NULL && in->lock == NULL) {
            /* No other thread uses this entry: decide on it in place. */
            const cg_reg_t *rp = NULL;
            if (cg_conn_entry_ref(in->conn, g->cache, fp, now, &rp)) {
                count(&g->metrics->cache_conn_hits, 1);
                decide(g, in, rp != NULL ? CG_STORE_OK : CG_STORE_NOTFOUND, rp, NULL, v, 1);
                if (v->reason == CG_ALLOW && v->final && v->regp == rp)
                    memo_set(in->conn, in, v);
                return CG_GATE_DONE;
            }
        } else if (in->conn != NULL) {
            conn_lock(in, 1);
            int hit = cg_conn_entry_get(in->conn, g->cache, fp, now, &found, &reg);
            conn_lock(in, 0);
            if (hit) {
                count(&g->metrics->cache_conn_hits, 1);
                cg_gate_decide(g, in, found ? CG_STORE_OK : CG_STORE_NOTFOUND, &reg, NULL, v);
                return CG_GATE_DONE;
            }
        }
        if (cg_cache_get(g->cache, fp, now, &found, &reg, &fetched)) {
            count(&g->metrics->cache_proc_hits, 1);
            conn_set(in, fp, found, &reg, ver, fetched);
            cg_gate_decide(g, in, found ? CG_STORE_OK : CG_STORE_NOTFOUND, &reg, NULL, v);
            return CG_GATE_DONE;
        }
        count(&g->metrics->cache_misses, 1);
    }
    memset(lk, 0, sizeof(*lk));
    lk->leaf = *fp;
    lk->version = ver;
    lk->started_ms = now;   /* taken before the read: an entry errs on the short side */
    lk->started_us = cg_now_us();
    lk->step = 1;
    int klen = cg_lookup_index_cmd(g->cfg.prefix, fp, lk->key, sizeof(lk->key));
    if (klen < 0) {
        cg_gate_lookup_fail(lk, CG_STORE_ERROR, "index key too long");
        cg_gate_finish(g, in, lk, v);
        return CG_GATE_DONE;
    }
    lk->argc = 2;
    lk->argv[0] = "GET";
    lk->lens[0] = 3;
    lk->argv[1] = lk->key;
    lk->lens[1] = (size_t)klen;
    return CG_GATE_LOOKUP;
}

int cg_gate_lookup_reply(const cg_gate_t *g, cg_gate_lookup_t *lk, const struct redisReply *r,
                         const char *errstr)
{
    int klen = 0;
    cg_store_rc_t rc;

    if (r == NULL) {
        lk->rc = CG_STORE_CONN;
        snprintf(lk->err, sizeof(lk->err), "Redis connection lost%s%s",
                 errstr && errstr[0] ? ": " : "", errstr ? errstr : "");
        return 0;
    }
    if (lk->step == 3) {
        lk->rc = cg_lookup_owner_reply(r, &lk->reg, lk->err, sizeof(lk->err));
        return 0;
    }
    if (lk->step == 2)
        rc = cg_lookup_reg_reply(g->cfg.prefix, lk->reg_key, r, &lk->leaf, &lk->reg, lk->key,
                                 sizeof(lk->key), &klen, lk->err, sizeof(lk->err));
    else
        rc = cg_lookup_index_reply(g->cfg.prefix, r, lk->reg_key, sizeof(lk->reg_key), &klen,
                                   lk->err, sizeof(lk->err));
    if (rc != CG_STORE_OK) {
        lk->rc = rc;
        return 0;
    }
    /* The next step on the same connection: HGETALL the record, or HGET its app's owner. */
    if (lk->step == 1) {
        lk->argc = 2;
        lk->argv[0] = "HGETALL";
        lk->lens[0] = 7;
        lk->argv[1] = lk->reg_key;
    } else {
        lk->argc = 3;
        lk->argv[0] = "HGET";
        lk->lens[0] = 4;
        lk->argv[1] = lk->key;
        lk->argv[2] = CG_LOOKUP_OWNER_FIELD;
        lk->lens[2] = sizeof(CG_LOOKUP_OWNER_FIELD) - 1;
    }
    lk->lens[1] = (size_t)klen;
    lk->step++;
    return 1;
}

void cg_gate_finish(cg_gate_t *g, const cg_gate_in_t *in, cg_gate_lookup_t *lk,
                    cg_gate_verdict_t *v)
{
    cg_metrics_store(g->metrics, (uint64_t)(cg_now_us() - lk->started_us), lk->rc);
    if (!cg_store_failed(lk->rc) && g->cache != NULL) {
        int found = lk->rc == CG_STORE_OK;
        cg_cache_put(g->cache, &lk->leaf, found, &lk->reg, lk->started_ms, lk->version);
        conn_set(in, &lk->leaf, found, &lk->reg, lk->version, lk->started_ms);
    }
    cg_gate_decide(g, in, lk->rc, &lk->reg, lk->err, v);
}

void cg_gate_run(cg_gate_t *g, const cg_gate_in_t *in, cg_gate_verdict_t *v)
{
    cg_gate_lookup_t lk;
    if (cg_gate_begin(g, in, &lk, v) == CG_GATE_DONE)
        return;
    if (g->store == NULL)
        cg_gate_lookup_fail(&lk, CG_STORE_ERROR, "store not set up (see CG04004)");
    else
        lk.rc = cg_store_lookup(g->store, &lk.leaf, &lk.reg, lk.err, sizeof(lk.err));
    cg_gate_finish(g, in, &lk, v);
}

void cg_gate_x5t_s256(const cg_fp_t *leaf, char out[CG_X5T_S256_LEN + 1])
{
    static const char a[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t o = 0, i = 0;
    /* 32 bytes: ten full groups of 3, then 2 bytes as 3 characters, no padding. */
    for (; i + 3 <= CG_FP_LEN; i += 3) {
        unsigned long w = ((unsigned long)leaf->b[i] << 16) | ((unsigned long)leaf->b[i + 1] << 8)
                          | leaf->b[i + 2];
        out[o++] = a[(w >> 18) & 63];
        out[o++] = a[(w >> 12) & 63];
        out[o++] = a[(w >> 6) & 63];
        out[o++] = a[w & 63];
    }
    unsigned long w = ((unsigned long)leaf->b[i] << 16) | ((unsigned long)leaf->b[i + 1] << 8);
    out[o++] = a[(w >> 18) & 63];
    out[o++] = a[(w >> 12) & 63];
    out[o++] = a[(w >> 6) & 63];
    out[o] = '\0';
}

/* ------------------------------------------------- the adapter's event loop */

struct cg_usage *cg_gate_usage(cg_gate_t *g)
{
    return g ? g->usage : NULL;
}

int cg_gate_sub_channel(const cg_gate_t *g, char *out, size_t cap)
{
    return cg_sub_channel(g->cfg.prefix, out, cap);
}

void cg_gate_sub_event(cg_gate_t *g, int event, const char *detail)
{
    if (event == CG_SUB_SUBSCRIBED && g->cache != NULL)
        cg_sub_resubscribed(g->cache);
    cg_sub_report(sub_log, g, event, detail);
}

void cg_gate_sub_message(cg_gate_t *g, const struct redisReply *r)
{
    if (g->cache != NULL)
        cg_sub_handle(g->cache, r, sub_inval, g);
}
