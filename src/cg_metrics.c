#include "cg_metrics.h"
#include "cg_version.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cg_reg.h"

const uint64_t cg_metrics_bounds_us[CG_LAT_BUCKETS] = {
    250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000
};

void cg_metrics_init(cg_metrics_t *m)
{
    memset(m, 0, sizeof(*m));
}

void cg_metrics_decision(cg_metrics_t *m, cg_reason_t r)
{
    if (m != NULL && (unsigned)r < CG_R__COUNT)
        atomic_fetch_add_explicit(&m->decisions[r], 1, memory_order_relaxed);
}

void cg_metrics_would_deny(cg_metrics_t *m, cg_reason_t r)
{
    if (m != NULL && (unsigned)r < CG_R__COUNT && r != CG_ALLOW)
        atomic_fetch_add_explicit(&m->would_deny[r], 1, memory_order_relaxed);
}

static void observe(_Atomic uint64_t *buckets, uint64_t us)
{
    size_t i = 0;
    while (i < CG_LAT_BUCKETS && us > cg_metrics_bounds_us[i])
        i++;
    atomic_fetch_add_explicit(&buckets[i], 1, memory_order_relaxed);
}

void cg_metrics_redis(cg_metrics_t *m, uint64_t us, int rc)
{
    if (m == NULL)
        return;
    _Atomic uint64_t *c = rc == 0 ? &m->redis_ok : rc == 2 ? &m->redis_timeouts
                          : rc == 3 ? &m->redis_corrupt : rc == 4 ? &m->redis_conn
                          : rc == 5 ? &m->redis_perm : &m->redis_errors;
    atomic_fetch_add_explicit(c, 1, memory_order_relaxed);
    observe(m->redis_lat, us);
    atomic_fetch_add_explicit(&m->redis_lat_sum_us, us, memory_order_relaxed);
}

void cg_metrics_store(cg_metrics_t *m, uint64_t us, cg_store_rc_t rc)
{
    int kind = !cg_store_failed(rc) ? 0 : rc == CG_STORE_TIMEOUT ? 2 : rc == CG_STORE_CORRUPT ? 3
               : rc == CG_STORE_CONN ? 4 : rc == CG_STORE_PERM ? 5 : 1;
    cg_metrics_redis(m, us, kind);
}

void cg_metrics_invalidation(cg_metrics_t *m, int64_t lag_us)
{
    if (m == NULL)
        return;
    atomic_fetch_add_explicit(&m->invalidations, 1, memory_order_relaxed);
    if (lag_us >= 0) {
        observe(m->inval_lag, (uint64_t)lag_us);
        atomic_fetch_add_explicit(&m->inval_lag_sum_us, (uint64_t)lag_us, memory_order_relaxed);
        atomic_fetch_add_explicit(&m->inval_lag_count, 1, memory_order_relaxed);
    }
}

typedef struct {
    char *buf;
    size_t len, cap;
    int failed;
} out_t;

static void put(out_t *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void put(out_t *o, const char *fmt, ...)
{
    va_list ap;
    for (int attempt = 0; attempt < 2 && !o->failed; attempt++) {
        va_start(ap, fmt);
        int n = vsnprintf(o->buf + o->len, o->cap - o->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            o->failed = 1;
            return;
        }
        if ((size_t)n < o->cap - o->len) {
            o->len += (size_t)n;
            return;
        }
        size_t nc = (o->cap + (size_t)n) * 2;
        char *nb = realloc(o->buf, nc);
        if (nb == NULL) {
            o->failed = 1;
            return;
        }
        o->buf = nb;
        o->cap = nc;
    }
}

static uint64_t ld(const _Atomic uint64_t *v)
{
    return atomic_load_explicit((_Atomic uint64_t *)v, memory_order_relaxed);
}

static void histogram(out_t *o, const char *name, const char *help, const _Atomic uint64_t *b,
                      uint64_t sum_us, uint64_t count)
{
    uint64_t cum = 0;
    put(o, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    for (size_t i = 0; i < CG_LAT_BUCKETS; i++) {
        cum += ld(&b[i]);
        put(o, "%s_bucket{le=\"%g\"} %llu\n", name, (double)cg_metrics_bounds_us[i] / 1e6,
            (unsigned long long)cum);
    }
    cum += ld(&b[CG_LAT_BUCKETS]);
    put(o, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.6f\n%s_count %llu\n", name,
        (unsigned long long)cum, name, (double)sum_us / 1e6, name, (unsigned long long)count);
}

char *cg_metrics_render(const cg_metrics_t *m, const cg_store_stats_t *st)
{
    out_t o = { malloc(8192), 0, 8192, 0 };
    if (o.buf == NULL)
        return NULL;
    o.buf[0] = '\0';
    put(&o, "# HELP certgate_decisions_total Gate decisions by result and reason.\n"
            "# TYPE certgate_decisions_total counter\n");
    for (int r = 0; r < CG_R__COUNT; r++)
        put(&o, "certgate_decisions_total{result=\"%s\",reason=\"%s\"} %llu\n",
            r == CG_ALLOW ? "allow" : "deny", cg_reason_name((cg_reason_t)r),
            (unsigned long long)ld(&m->decisions[r]));
    put(&o, "# HELP certgate_would_deny_total Denies not enforced (shadow mode), by reason.\n"
            "# TYPE certgate_would_deny_total counter\n");
    for (int r = 1; r < CG_R__COUNT; r++)
        put(&o, "certgate_would_deny_total{reason=\"%s\"} %llu\n",
            cg_reason_name((cg_reason_t)r), (unsigned long long)ld(&m->would_deny[r]));
    put(&o, "# HELP certgate_cache_lookups_total Registration lookups by where they were "
            "answered.\n# TYPE certgate_cache_lookups_total counter\n"
            "certgate_cache_lookups_total{layer=\"connection\",result=\"hit\"} %llu\n"
            "certgate_cache_lookups_total{layer=\"process\",result=\"hit\"} %llu\n"
            "certgate_cache_lookups_total{layer=\"process\",result=\"miss\"} %llu\n",
        (unsigned long long)ld(&m->cache_conn_hits), (unsigned long long)ld(&m->cache_proc_hits),
        (unsigned long long)ld(&m->cache_misses));
    put(&o, "# HELP certgate_redis_lookups_total Redis registration lookups by outcome.\n"
            "# TYPE certgate_redis_lookups_total counter\n"
            "certgate_redis_lookups_total{outcome=\"ok\"} %llu\n"
            "certgate_redis_lookups_total{outcome=\"error\"} %llu\n"
            "certgate_redis_lookups_total{outcome=\"timeout\"} %llu\n"
            "certgate_redis_lookups_total{outcome=\"corrupt\"} %llu\n"
            "certgate_redis_lookups_total{outcome=\"connection\"} %llu\n"
            "certgate_redis_lookups_total{outcome=\"permission\"} %llu\n",
        (unsigned long long)ld(&m->redis_ok), (unsigned long long)ld(&m->redis_errors),
        (unsigned long long)ld(&m->redis_timeouts), (unsigned long long)ld(&m->redis_corrupt),
        (unsigned long long)ld(&m->redis_conn), (unsigned long long)ld(&m->redis_perm));
    uint64_t n = ld(&m->redis_ok) + ld(&m->redis_errors) + ld(&m->redis_timeouts) +
                 ld(&m->redis_corrupt) + ld(&m->redis_conn) + ld(&m->redis_perm);
    histogram(&o, "certgate_redis_lookup_seconds", "Time of one Redis registration lookup.",
              m->redis_lat, ld(&m->redis_lat_sum_us), n);
    put(&o, "# HELP certgate_invalidations_total Invalidation messages received.\n"
            "# TYPE certgate_invalidations_total counter\ncertgate_invalidations_total %llu\n",
        (unsigned long long)ld(&m->invalidations));
    histogram(&o, "certgate_invalidation_lag_seconds",
              "From the admin write to a process dropping its cache entry.", m->inval_lag,
              ld(&m->inval_lag_sum_us), ld(&m->inval_lag_count));
    put(&o, "# HELP certgate_usage_flushes_total Batched usage writes to Redis.\n"
            "# TYPE certgate_usage_flushes_total counter\ncertgate_usage_flushes_total %llu\n"
            "# HELP certgate_usage_dropped_total Usage records dropped (table full or Redis "
            "down).\n# TYPE certgate_usage_dropped_total counter\n"
            "certgate_usage_dropped_total %llu\n"
            "# HELP certgate_expiry_events_total cert.expiring and cert.expired events emitted "
            "by this server.\n# TYPE certgate_expiry_events_total counter\n"
            "certgate_expiry_events_total %llu\n",
        (unsigned long long)ld(&m->usage_flushes), (unsigned long long)ld(&m->usage_dropped),
        (unsigned long long)ld(&m->expiry_events));
    put(&o, "# HELP certgate_sentinel_events_total Sentinel discovery events: unreachable (no "
            "sentinel answered), unknown_master (the name is unknown), not_master (ROLE said "
            "otherwise), switch (the master address changed), distrust (an error made us ask "
            "again).\n# TYPE certgate_sentinel_events_total counter\n"
            "certgate_sentinel_events_total{event=\"unreachable\"} %llu\n"
            "certgate_sentinel_events_total{event=\"unknown_master\"} %llu\n"
            "certgate_sentinel_events_total{event=\"not_master\"} %llu\n"
            "certgate_sentinel_events_total{event=\"switch\"} %llu\n"
            "certgate_sentinel_events_total{event=\"distrust\"} %llu\n",
        (unsigned long long)ld(&m->sentinel_unreachable),
        (unsigned long long)ld(&m->sentinel_unknown),
        (unsigned long long)ld(&m->sentinel_not_master),
        (unsigned long long)ld(&m->sentinel_switches),
        (unsigned long long)ld(&m->sentinel_distrusts));
    put(&o, "# HELP certgate_stale_allows_total Requests allowed while the store failed, from a "
            "registration read less than the stale window ago (CertGateOnStoreError stale).\n"
            "# TYPE certgate_stale_allows_total counter\ncertgate_stale_allows_total %llu\n",
        (unsigned long long)ld(&m->stale_allows));
    if (st != NULL && st->ok) {
        put(&o, "# HELP certgate_registrations Registrations by stored status (EXPIRED: "
                "validTo has passed).\n# TYPE certgate_registrations gauge\n");
        for (int s = 0; s < 4; s++)
            put(&o, "certgate_registrations{status=\"%s\"} %llu\n", cg_status_name((cg_status_t)s),
                (unsigned long long)st->by_status[s]);
        put(&o, "certgate_registrations{status=\"EXPIRED\"} %llu\n",
            (unsigned long long)st->expired);
        put(&o, "# HELP certgate_certificates_expiring Approved or pending certificates that "
                "expire within N days.\n# TYPE certgate_certificates_expiring gauge\n"
                "certgate_certificates_expiring{within_days=\"7\"} %llu\n"
                "certgate_certificates_expiring{within_days=\"30\"} %llu\n"
                "certgate_certificates_expiring{within_days=\"90\"} %llu\n",
            (unsigned long long)st->expiring[0], (unsigned long long)st->expiring[1],
            (unsigned long long)st->expiring[2]);
    }
    put(&o, "# HELP certgate_build_info The version of the module (always 1).\n"
            "# TYPE certgate_build_info gauge\ncertgate_build_info{version=\"%s\"} 1\n",
        CG_VERSION);
    put(&o, "# HELP certgate_store_up 1 when the registration counts could be read from Redis.\n"
            "# TYPE certgate_store_up gauge\ncertgate_store_up %d\n", st != NULL && st->ok);
    /* Why the last scrape could not read Redis: one kind is 1 when store_up is 0. */
    static const cg_store_rc_t kinds[] = { CG_STORE_TIMEOUT, CG_STORE_CONN, CG_STORE_PERM,
                                           CG_STORE_CORRUPT, CG_STORE_ERROR };
    cg_store_rc_t why = st == NULL ? CG_STORE_ERROR : st->ok ? CG_STORE_OK
                        : cg_store_failed(st->fail) ? st->fail : CG_STORE_ERROR;
    put(&o, "# HELP certgate_store_scrape_error 1 for the kind of failure when certgate_store_up "
            "is 0.\n# TYPE certgate_store_scrape_error gauge\n");
    for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++)
        put(&o, "certgate_store_scrape_error{kind=\"%s\"} %d\n", cg_store_rc_name(kinds[i]),
            why == kinds[i]);
    if (o.failed) {
        free(o.buf);
        return NULL;
    }
    return o.buf;
}
