/*
 * certgate_metrics for nginx. Every worker's gate counts into one
 * cg_metrics_t in a shared memory zone (lock-free atomics, as httpd's
 * children do in apr_shm), and a scrape renders it with the core's
 * cg_metrics_render, so the series are httpd's and a counter added to the core
 * appears on both servers. The registration counts need Redis: they are read
 * with the blocking store in nginx's thread pool "default", never on the
 * worker's event loop.
 */
#include "ngx_certgate_metrics.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cg_admin.h"

/* The zone's content; size tells a zone left by another build of the module. */
typedef struct {
    size_t size;
    cg_metrics_t m;
} cg_ngx_metrics_shm_t;

static ngx_str_t cg_zone_name = ngx_string("certgate_metrics");

static ngx_int_t cg_zone_init(ngx_shm_zone_t *zone, void *data)
{
    ngx_slab_pool_t *sp = (ngx_slab_pool_t *) zone->shm.addr;
    cg_ngx_metrics_shm_t *old = data;

    /* A reload keeps the counters: Prometheus sees no reset. */
    if (old != NULL && old->size == sizeof(*old)) {
        zone->data = old;
        return NGX_OK;
    }
    cg_ngx_metrics_shm_t *s = ngx_slab_alloc(sp, sizeof(*s));
    if (s == NULL)
        return NGX_ERROR;
    s->size = sizeof(*s);
    cg_metrics_init(&s->m);
    zone->data = s;
    return NGX_OK;
}

ngx_shm_zone_t *cg_ngx_metrics_zone(ngx_conf_t *cf, void *tag)
{
    /* Room for the slab pool's own pages besides the counters. */
    size_t size = 8 * ngx_pagesize + ngx_align(sizeof(cg_ngx_metrics_shm_t), ngx_pagesize);
    ngx_shm_zone_t *z = ngx_shared_memory_add(cf, &cg_zone_name, size, tag);
    if (z == NULL)
        return NULL;
    z->init = cg_zone_init;
    z->noreuse = 0;
    return z;
}

cg_metrics_t *cg_ngx_metrics_shared(ngx_shm_zone_t *zone)
{
    cg_ngx_metrics_shm_t *s = zone != NULL ? zone->data : NULL;
    return s != NULL ? &s->m : NULL;
}

/* One scrape: what the thread reads and the event loop sends. */
typedef struct {
    ngx_http_request_t *r;
    cg_store_t *store;
    int timeout_ms, soon_days;
    int64_t now;
    int rc;                       /* cg_admin_store_stats's */
    cg_store_stats_t stats;
    char err[200];
} cg_scrape_t;

static ngx_int_t cg_metrics_send(ngx_http_request_t *r, cg_scrape_t *s)
{
    cg_metrics_t zero;
    cg_gate_t *g = cg_ngx_gate();
    cg_metrics_t *m = g != NULL ? cg_gate_metrics(g) : NULL;

    if (s->rc != 0) {
        s->stats.ok = 0;
        s->stats.fail = (cg_store_rc_t) -s->rc;
        if (s->store != NULL)
            ngx_log_error(NGX_LOG_WARN, r->connection->log, 0, "CG08005: metrics scrape could "
                          "not read Redis (%s): %s", cg_store_rc_name(s->stats.fail), s->err);
    }
    if (m == NULL) {
        cg_metrics_init(&zero);
        m = &zero;
    }
    char *text = cg_metrics_render(m, &s->stats);
    if (text == NULL)
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    size_t len = strlen(text);
    u_char *body = ngx_pnalloc(r->pool, len ? len : 1);
    if (body == NULL) {
        free(text);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    ngx_memcpy(body, text, len);
    free(text);

    static const char ctype[] = "text/plain; version=0.0.4; charset=utf-8";
    r->headers_out.status = NGX_HTTP_OK;
    r->headers_out.content_type.data = (u_char *) ctype;
    r->headers_out.content_type.len = sizeof(ctype) - 1;
    r->headers_out.content_type_len = r->headers_out.content_type.len;
    r->headers_out.content_length_n = (off_t) len;
    ngx_table_elt_t *h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL)
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    h->hash = 1;
    ngx_str_set(&h->key, "Cache-Control");
    ngx_str_set(&h->value, "no-store");

    ngx_int_t rc = ngx_http_send_header(r);
    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only)
        return rc;
    ngx_buf_t *b = ngx_calloc_buf(r->pool);
    if (b == NULL)
        return NGX_ERROR;
    b->pos = body;
    b->last = body + len;
    b->memory = len > 0;
    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;
    ngx_chain_t out = { b, NULL };
    return ngx_http_output_filter(r, &out);
}

#if (NGX_THREADS)

static ngx_str_t cg_pool_name = ngx_string("default");

/* In a pool thread: the blocking store is thread-safe (one connection per caller). */
static void cg_scrape_thread(void *data, ngx_log_t *log)
{
    cg_scrape_t *s = data;
    (void) log;
    s->rc = cg_admin_store_stats(s->store, s->timeout_ms, s->now, s->soon_days, &s->stats,
                                 s->err, sizeof(s->err));
}

/* Back on the event loop. */
static void cg_scrape_done(ngx_event_t *ev)
{
    cg_scrape_t *s = ev->data;
    ngx_http_request_t *r = s->r;
    ngx_connection_t *c = r->connection;

    r->main->blocked--;
    r->aio = 0;
    if (c->error)
        ngx_http_finalize_request(r, NGX_ERROR);
    else
        ngx_http_finalize_request(r, cg_metrics_send(r, s));
    ngx_http_run_posted_requests(c);
}

#endif

static ngx_int_t cg_metrics_handler(ngx_http_request_t *r)
{
    if (!(r->method & (NGX_HTTP_GET | NGX_HTTP_HEAD)))
        return NGX_HTTP_NOT_ALLOWED;
    ngx_int_t rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK)
        return rc;

    cg_gate_t *g = cg_ngx_gate();
    cg_store_t *store = g != NULL ? cg_gate_store(g) : NULL;
    cg_admin_cfg_t acfg;
    cg_admin_cfg_defaults(&acfg);

#if (NGX_THREADS)
    ngx_thread_pool_t *tp = ngx_thread_pool_get((ngx_cycle_t *) ngx_cycle, &cg_pool_name);
    if (store != NULL && tp != NULL) {
        ngx_thread_task_t *task = ngx_thread_task_alloc(r->pool, sizeof(cg_scrape_t));
        if (task == NULL)
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        cg_scrape_t *s = task->ctx;
        ngx_memzero(s, sizeof(*s));
        s->r = r;
        s->store = store;
        s->timeout_ms = acfg.timeout_ms;
        s->soon_days = acfg.expiring_soon_days;
        s->now = (int64_t) ngx_time();
        task->handler = cg_scrape_thread;
        task->event.data = s;
        task->event.handler = cg_scrape_done;
        /* The request waits for the thread: keep it (and its pool) alive. */
        r->main->blocked++;
        r->main->count++;
        r->aio = 1;
        if (ngx_thread_task_post(tp, task) != NGX_OK) {
            r->main->blocked--;
            r->main->count--;
            r->aio = 0;
            ngx_log_error(NGX_LOG_ERR, r->connection->log, 0, "CG09011: metrics scrape could "
                          "not queue the Redis read in thread pool \"%V\"; "
                          "certgate_store_up is 0", &cg_pool_name);
        } else {
            return NGX_DONE;
        }
    }
#endif
    /* No thread to read Redis in: the counters without the registration series. */
    cg_scrape_t s;
    ngx_memzero(&s, sizeof(s));
    s.r = r;
    s.store = store;
    s.rc = -CG_STORE_CONN;
    snprintf(s.err, sizeof(s.err), "no thread of pool \"default\" to read it in");
    return cg_metrics_send(r, &s);
}

char *cg_ngx_metrics_location(ngx_conf_t *cf)
{
    ngx_http_core_loc_conf_t *clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    if (clcf->handler != NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "CG04030: certgate_metrics: this location "
                           "already has a content handler (proxy_pass, root answer...); "
                           "give certgate_metrics a location of its own");
        return NGX_CONF_ERROR;
    }
    clcf->handler = cg_metrics_handler;
#if (NGX_THREADS)
    /* nginx creates "default" (32 threads) unless a thread_pool line sizes it. */
    if (ngx_thread_pool_add(cf, NULL) == NULL)
        return NGX_CONF_ERROR;
#endif
    return NGX_CONF_OK;
}
