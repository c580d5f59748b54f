/*
 * mod_certgate: the httpd adapter. This file has the hooks and the gate's
 * request path: it takes the client certificate from mod_ssl's connection,
 * asks the core (src/cg_gate) for the verdict and turns it into a response.
 * Directives are in src/httpd/cg_httpd_config.c, the admin API and metrics
 * handlers in src/httpd/cg_httpd_admin.c. No decision logic lives here.
 */
#include <pthread.h>
#include <string.h>
#include <openssl/crypto.h>
#include <openssl/ssl.h>

#include "httpd.h"
#include "http_config.h"
#include "http_core.h"
#include "http_log.h"
#include "http_main.h"
#include "http_protocol.h"
#include "http_request.h"
#include "mod_core.h"
#include "apr_optional.h"
#include "apr_optional_hooks.h"
#include "apr_hash.h"
#include "apr_strings.h"
#include "apr_thread_mutex.h"

#include "cg_admin.h"
#include "cg_cache.h"
#include "cg_cert.h"
#include "cg_decide.h"
#include "cg_gate.h"
#include "cg_store.h"
#include "cg_metrics.h"
#include "cg_tls.h"
#include "cg_httpd.h"
#include "apr_shm.h"
#include "mod_watchdog.h"


/*
 * mod_ssl implements these optional hooks, but Debian's apache2-dev does not
 * ship mod_ssl_openssl.h that declares them. We declare the two hook types
 * with mod_ssl's signatures; the hooks are looked up by name at runtime.
 * pre_handshake hands us the SSL* so we never parse a certificate per request;
 * init_server lets us install the ticket callback once per SSL_CTX at startup.
 */
typedef int ssl_HOOK_pre_handshake_t(conn_rec *c, SSL *ssl, int is_proxy);
typedef int ssl_HOOK_init_server_t(server_rec *s, apr_pool_t *p, int is_proxy, SSL_CTX *ctx);

/* Headers we set for the upstream; incoming copies are always removed. */
static const char *const forward_headers[] = {
    "CertGate-App-Id", "CertGate-Cert-Id", "CertGate-Fingerprint",
    "CertGate-Expire-In", "Client-Cert", "Client-Cert-Chain", NULL
};
/* Their lengths, in the same order: most names are told apart by length alone. */
static const size_t forward_header_lens[] = { 15, 16, 20, 18, 11, 17 };
static const char *const export_vars[] = {
    "CERTGATE_APP_ID", "CERTGATE_CERT_ID", "CERTGATE_FINGERPRINT",
    "CERTGATE_EXPIRE_IN", "CERTGATE_REASON", "CERTGATE_ENFORCED", "CERTGATE_X5T_S256", NULL
};
/* On the first request: its deny was not enforced (shadow, fail-open), so
 * redirects and subrequests get its exports like after an allow. */
#define NOTE_NOT_ENFORCED "certgate-not-enforced"

/* Per TLS connection. HTTP/2 streams share the master's, hence the lock. */
typedef struct {
    SSL *ssl;
    apr_thread_mutex_t *lock;
    X509 *seen_leaf;        /* a new leaf (renegotiation) invalidates peer */
    int peer_ready;
    int peer_error;
    cg_peer_t peer;
    const char *client_cert;        /* RFC 9440 values, built on first use */
    const char *client_cert_chain;
    char x5t[CG_X5T_S256_LEN + 1];  /* RFC 8705 thumbprint of peer's leaf, "" without one */
    /* The registration this connection last used, while the cache version holds. */
    cg_conn_entry_t dc;
    /* The values an HTTP/1 allow exported last, in the connection's pool:
     * they change only with the registration or the day. */
    const char *x_app, *x_id, *x_fp, *x_days;
    uint64_t x_gen;                 /* the verdict's conn_gen x_app, x_id, x_fp were made for */
    /* The allow's variables and forward headers as tables, appended whole to
     * each request's (one apr_table_overlap instead of an add per entry); made
     * for x_gen and x_days. */
    apr_table_t *x_env, *x_hdr;
    uint64_t x_env_gen, x_hdr_gen;
    const char *x_env_days, *x_hdr_days;
} cg_conn_t;

int cgh_gate_configured;
cg_metrics_t *cgh_metrics;

int64_t cgh_now_sec(const cg_srv_t *sc, apr_time_t t)
{
    return (int64_t)apr_time_sec(t) + (sc->clock_offset != UNSET ? sc->clock_offset : 0);
}

/* ---------------------------------------------------------------- hooks */

static int cg_pre_handshake(conn_rec *c, SSL *ssl, int is_proxy)
{
    if (is_proxy)
        return DECLINED;
    cg_conn_t *cc = apr_pcalloc(c->pool, sizeof(*cc));
    cc->ssl = ssl;
    if (apr_thread_mutex_create(&cc->lock, APR_THREAD_MUTEX_DEFAULT, c->pool) != APR_SUCCESS) {
        ap_log_cerror(APLOG_MARK, APLOG_ERR, 0, c,
                      "CG03004: cannot create the connection lock; the gate will deny here");
        cc->lock = NULL;
    }
    ap_set_module_config(c->conn_config, &certgate_module, cc);
    return DECLINED;
}

/* Whether CertGate On can apply in v: in its configuration, or from a
 * .htaccess that may set it (AllowOverride AuthConfig). */
static int server_gated(server_rec *v)
{
    const cg_dir_t *dd = ap_get_module_config(v->lookup_defaults, &certgate_module);
    const core_dir_config *cd = ap_get_core_module_config(v->lookup_defaults);
    if ((dd != NULL && dd->enabled == 1) || (cd != NULL && (cd->override & OR_AUTHCFG)))
        return 1;
    core_server_config *core = ap_get_core_module_config(v->module_config);
    if (core == NULL)
        return 1;
    const apr_array_header_t *secs[2] = { core->sec_dir, core->sec_url };
    for (int k = 0; k < 2; k++) {
        for (int i = 0; secs[k] != NULL && i < secs[k]->nelts; i++) {
            ap_conf_vector_t *sec = APR_ARRAY_IDX(secs[k], i, ap_conf_vector_t *);
            dd = ap_get_module_config(sec, &certgate_module);
            cd = ap_get_core_module_config(sec);
            if ((dd != NULL && dd->enabled == 1) || (k == 0 && cd != NULL &&
                                                     (cd->override & OR_AUTHCFG)))
                return 1;
        }
    }
    return 0;
}

static int shares_port(const server_rec *a, const server_rec *b)
{
    for (const server_addr_rec *x = a->addrs; x != NULL; x = x->next)
        for (const server_addr_rec *y = b->addrs; y != NULL; y = y->next)
            if (x->host_port == y->host_port || x->host_port == 0 || y->host_port == 0)
                return 1;
    return 0;
}

/*
 * The ticket callback costs a handshake two more digests: only where a gate
 * can run. OpenSSL asks the connection's first SSL_CTX (of the vhost that
 * took the connection, before SNI picks another), so every vhost that shares
 * a port with a gated one gets it too.
 */
static int ticket_cb_wanted(server_rec *s)
{
    if (!cgh_gate_configured)
        return 0;
    if (server_gated(s))
        return 1;
    for (server_rec *v = ap_server_conf; v != NULL; v = v->next)
        if (v != s && shares_port(s, v) && server_gated(v))
            return 1;
    return 0;
}

static int cg_init_server(server_rec *s, apr_pool_t *p, int is_proxy, SSL_CTX *ctx)
{
    (void)p;
    if (is_proxy || ctx == NULL || !ticket_cb_wanted(s))
        return DECLINED;
    if (cg_tls_install_ticket_cb(ctx) != 0)
        ap_log_error(APLOG_MARK, APLOG_WARNING, 0, s,
                     "CG04003: cannot install the session ticket callback; resumed sessions "
                     "will be refused with chain_mismatch where a chain is registered");
    return DECLINED;
}

static APR_OPTIONAL_FN_TYPE(ap_watchdog_get_instance) *wd_get_instance;
static APR_OPTIONAL_FN_TYPE(ap_watchdog_register_callback) *wd_register_callback;

/*
 * mod_watchdog runs child watchdog threads on a pool that outlives the
 * child's: a scan must never use a store that child exit already freed.
 * wd_alive is set in child_init and cleared (under wd_lock, so after any scan
 * in progress) by the first cleanup that runs at child exit.
 */
static pthread_mutex_t wd_lock = PTHREAD_MUTEX_INITIALIZER;
static int wd_alive;

static apr_status_t wd_child_exit(void *data)
{
    (void)data;
    pthread_mutex_lock(&wd_lock);
    wd_alive = 0;
    pthread_mutex_unlock(&wd_lock);
    return APR_SUCCESS;
}

/* The Redis budget of a scan: CertGateAdminTimeout of the server's own
 * section (outside any Location), else the admin API's default. */
static int server_admin_timeout(server_rec *v)
{
    const cg_dir_t *d = ap_get_module_config(v->lookup_defaults, &certgate_module);
    cg_admin_cfg_t def;
    cg_admin_cfg_defaults(&def);
    return d != NULL && d->admin_timeout_ms != UNSET ? d->admin_timeout_ms : def.timeout_ms;
}

/* Once per server (a singleton watchdog thread in one child): the expiry scan. */
static apr_status_t expiry_watchdog(int state, void *data, apr_pool_t *pool)
{
    server_rec *s = data;
    char err[200];
    (void)pool;
    if (state != AP_WATCHDOG_STATE_RUNNING)
        return APR_SUCCESS;
    pthread_mutex_lock(&wd_lock);
    if (!wd_alive) {
        pthread_mutex_unlock(&wd_lock);
        return APR_SUCCESS;
    }
    for (server_rec *v = s; v != NULL; v = v->next) {
        cg_srv_t *sc = cgh_srv_conf(v);
        cg_store_t *store = cg_gate_store(sc->gate);
        if ((v != s && !sc->own_store) || store == NULL)
            continue;
        int days[16] = { 90, 60, 30, 7 };
        size_t n = 4;
        if (sc->expiry_days != NULL) {
            n = (size_t)sc->expiry_days->nelts;
            for (size_t i = 0; i < n; i++)
                days[i] = APR_ARRAY_IDX(sc->expiry_days, i, int);
        }
        if (n == 0)
            continue;
        int emitted = cg_admin_expiry_scan(store, server_admin_timeout(v),
                                           cgh_now_sec(sc, apr_time_now()), days, n, err, sizeof(err));
        if (emitted < 0 && -emitted == CG_STORE_PERM) {
            ap_log_error(APLOG_MARK, APLOG_WARNING, 0, v, "CG08004: expiry scan refused by the "
                         "Redis ACL (permission): %s; grant the commands of the operator guide",
                         err);
        } else if (emitted < 0) {
            ap_log_error(APLOG_MARK, APLOG_WARNING, 0, v, "CG08003: expiry scan failed (%s): %s; "
                         "it runs again in CertGateExpiryCheckInterval",
                         cg_store_rc_name((cg_store_rc_t)-emitted), err);
        } else if (emitted > 0) {
            if (cgh_metrics)
                atomic_fetch_add_explicit(&cgh_metrics->expiry_events, (uint64_t)emitted,
                                          memory_order_relaxed);
            ap_log_error(APLOG_MARK, APLOG_INFO, 0, v, "CG08001: expiry scan emitted %d "
                         "event(s)", emitted);
        }
    }
    pthread_mutex_unlock(&wd_lock);
    return APR_SUCCESS;
}

/* Where a server is defined, for startup lines that concern one server. */
static const char *server_where(const server_rec *v, char *buf, size_t cap)
{
    if (v->defn_name == NULL)
        return "the main server";
    snprintf(buf, cap, "the server defined in %s:%u", v->defn_name, v->defn_line_number);
    return buf;
}

static int cg_post_config(apr_pool_t *pconf, apr_pool_t *plog, apr_pool_t *ptemp, server_rec *s)
{
    char err[256];
    (void)plog; (void)ptemp;
    /* No ap_add_version_component: a gate does not tell every client what it
     * runs, nor pays for the longer Server header per response (the version
     * is in certgate_build_info). */

    /* Counters for all children: anonymous shared memory made before the fork. */
    apr_shm_t *shm = NULL;
    cgh_metrics = NULL;
    if (apr_shm_create(&shm, sizeof(cg_metrics_t), NULL, pconf) == APR_SUCCESS) {
        cgh_metrics = apr_shm_baseaddr_get(shm);
        cg_metrics_init(cgh_metrics);
    } else {
        ap_log_error(APLOG_MARK, APLOG_WARNING, 0, s,
                     "CG04007: no shared memory for metrics; certgate-metrics shows zeros");
    }
    wd_get_instance = APR_RETRIEVE_OPTIONAL_FN(ap_watchdog_get_instance);
    wd_register_callback = APR_RETRIEVE_OPTIONAL_FN(ap_watchdog_register_callback);
    cg_srv_t *main_sc = cgh_srv_conf(s);
    if (cgh_gate_configured && (main_sc->expiry_days == NULL || main_sc->expiry_days->nelts > 0)) {
        ap_watchdog_t *wd = NULL;
        apr_interval_time_t every = apr_time_from_sec(main_sc->expiry_interval != UNSET
                                                      ? main_sc->expiry_interval : 3600);
        if (wd_get_instance == NULL || wd_register_callback == NULL ||
            wd_get_instance(&wd, "_certgate_expiry_", 0, 1, pconf) != APR_SUCCESS ||
            wd_register_callback(wd, every, s, expiry_watchdog) != APR_SUCCESS)
            ap_log_error(APLOG_MARK, APLOG_WARNING, 0, s,
                         "CG04008: mod_watchdog is not available; no expiry events");
    }

    if (cgh_gate_configured && ap_find_linked_module("mod_ssl.c") == NULL) {
        ap_log_error(APLOG_MARK, APLOG_EMERG, 0, s,
                     "CG04002: CertGate On is configured but mod_ssl is not loaded; "
                     "load ssl_module before mod_certgate");
        return HTTP_INTERNAL_SERVER_ERROR;
    }
    for (server_rec *v = s; v != NULL; v = v->next) {
        char where[512];
        cg_gate_cfg_t cfg;
        cg_srv_t *sc = cgh_srv_conf(v);
        cgh_gate_cfg(sc, &cfg);
        if (cg_store_cfg_check(&cfg.store, err, sizeof(err)) != 0) {
            ap_log_error(APLOG_MARK, APLOG_EMERG, 0, v,
                         "CG04001: invalid Redis settings for %s (%s): %s",
                         v->server_hostname, server_where(v, where, sizeof(where)), err);
            return HTTP_INTERNAL_SERVER_ERROR;
        }
        if (cgh_gate_configured && sc->stale_s > 0)
            ap_log_error(APLOG_MARK, APLOG_WARNING, 0, v,
                         "CG02011: CertGateOnStoreError stale %d: while Redis fails, "
                         "registrations read less than %d s before keep allowing", sc->stale_s,
                         sc->stale_s);
        if (cgh_gate_configured && sc->on_store_error_allow == 1)
            ap_log_error(APLOG_MARK, APLOG_WARNING, 0, v,
                         "CG05001: CertGateOnStoreError allow: requests pass unchecked "
                         "while Redis fails (%s)", server_where(v, where, sizeof(where)));
        /* A reminder at every start: shadow sections refuse nothing (CG05010). */
        core_server_config *csc = ap_get_core_module_config(v->module_config);
        const cg_dir_t *vd = ap_get_module_config(v->lookup_defaults, &certgate_module);
        if (cgh_gate_configured && vd != NULL && vd->shadow == 1)   /* outside any section */
            ap_log_error(APLOG_MARK, APLOG_WARNING, 0, v, "CG05010: CertGateMode Shadow for all "
                         "of %s: the gate logs and counts would-be denies but refuses nothing",
                         v->server_hostname ? v->server_hostname : "-");
        for (int k = 0; cgh_gate_configured && csc != NULL && k < 2; k++) {
            const apr_array_header_t *sa = k == 0 ? csc->sec_dir : csc->sec_url;
            for (int i = 0; sa != NULL && i < sa->nelts; i++) {
                const cg_dir_t *sd = ap_get_module_config(APR_ARRAY_IDX(sa, i, ap_conf_vector_t *),
                                                          &certgate_module);
                if (sd != NULL && sd->shadow == 1)
                    ap_log_error(APLOG_MARK, APLOG_WARNING, 0, v, "CG05010: CertGateMode Shadow "
                                 "in a section of %s: the gate logs and counts would-be denies "
                                 "there but refuses nothing",
                                 v->server_hostname ? v->server_hostname : "-");
            }
        }
        /* httpd answers TRACE in map_to_storage, before the gate's fixups run. */
        core_server_config *core = ap_get_core_module_config(v->module_config);
        if (cgh_gate_configured && core != NULL && core->trace_enable != AP_TRACE_DISABLE) {
            const cg_dir_t *dd = ap_get_module_config(v->lookup_defaults, &certgate_module);
            int gated = dd != NULL && dd->enabled == 1;
            const apr_array_header_t *secs[2] = { core->sec_dir, core->sec_url };
            for (int k = 0; k < 2 && !gated; k++) {
                for (int i = 0; secs[k] != NULL && i < secs[k]->nelts && !gated; i++) {
                    ap_conf_vector_t *sec = APR_ARRAY_IDX(secs[k], i, ap_conf_vector_t *);
                    dd = ap_get_module_config(sec, &certgate_module);
                    gated = dd != NULL && dd->enabled == 1;
                }
            }
            if (gated)
                ap_log_error(APLOG_MARK, APLOG_WARNING, 0, v,
                             "CG05002: TraceEnable is on in %s (%s:%u), where CertGate On is "
                             "used: httpd answers TRACE before the gate runs; set TraceEnable off",
                             v->server_hostname ? v->server_hostname : "-",
                             v->defn_name ? v->defn_name : "main server",
                             v->defn_line_number);
        }
    }
    return OK;
}

static apr_status_t gate_cleanup(void *data)
{
    cg_gate_free(data);
    return APR_SUCCESS;
}

/* Where the core's lines go: a request's log, or a server's. */
typedef struct {
    server_rec *s;
    request_rec *r;
} log_ctx_t;

static void gate_log(void *ctx, int level, const char *msg)
{
    const log_ctx_t *lc = ctx;
    int lv = level == CG_LOG_CRIT ? APLOG_CRIT : level == CG_LOG_ERR ? APLOG_ERR
             : level == CG_LOG_WARN ? APLOG_WARNING : level == CG_LOG_INFO ? APLOG_INFO
             : APLOG_DEBUG;
    if (lc != NULL && lc->r != NULL)
        ap_log_rerror(APLOG_MARK, lv, 0, lc->r, "%s", msg);
    else
        ap_log_error(APLOG_MARK, lv, 0, lc ? lc->s : NULL, "%s", msg);
}

static int gate_log_check(void *ctx, int level)
{
    const log_ctx_t *lc = ctx;
    int lv = level == CG_LOG_CRIT ? APLOG_CRIT : level == CG_LOG_ERR ? APLOG_ERR
             : level == CG_LOG_WARN ? APLOG_WARNING : level == CG_LOG_INFO ? APLOG_INFO
             : APLOG_DEBUG;
    if (lc != NULL && lc->r != NULL)
        return APLOG_R_IS_LEVEL(lc->r, lv);
    return lc == NULL || lc->s == NULL || APLOG_IS_LEVEL(lc->s, lv);
}

static apr_status_t caches_cleanup(void *data)
{
    (void)data;
    cg_process_caches_free();
    return APR_SUCCESS;
}

static void cg_child_init(apr_pool_t *p, server_rec *s)
{
    cg_srv_t *main_conf = cgh_srv_conf(s);

    /* Registered first, so it runs last: after the gates and their threads. */
    apr_pool_cleanup_register(p, NULL, caches_cleanup, apr_pool_cleanup_null);

    cg_gate_set_log(gate_log);
    cg_gate_set_log_check(gate_log_check);
    for (server_rec *v = s; v != NULL; v = v->next) {
        cg_srv_t *sc = cgh_srv_conf(v);
        if (v != s && !sc->own_store) {
            sc->gate = main_conf->gate;
            continue;
        }
        cg_gate_cfg_t cfg;
        cgh_gate_cfg(sc, &cfg);
        /* Vhosts sharing this gate may ask for a longer stale window: keep for the longest. */
        for (server_rec *w = s; v == s && w != NULL; w = w->next) {
            const cg_srv_t *wc = cgh_srv_conf(w);
            if ((w == s || !wc->own_store) && wc->stale_s > cfg.stale_keep_s)
                cfg.stale_keep_s = wc->stale_s;
        }
        log_ctx_t *lc = apr_pcalloc(p, sizeof(*lc));
        lc->s = v;
        sc->gate = cg_gate_new(&cfg, cgh_metrics, lc);
        if (sc->gate == NULL) {
            ap_log_error(APLOG_MARK, APLOG_ERR, 0, v,
                         "CG04004: cannot set up the Redis store: out of memory; gated "
                         "requests get 503");
            continue;
        }
        cg_gate_start(sc->gate);
        apr_pool_cleanup_register(p, sc->gate, gate_cleanup, apr_pool_cleanup_null);
    }
    /* Registered last, so it runs first at child exit, before any store goes. */
    pthread_mutex_lock(&wd_lock);
    wd_alive = 1;
    pthread_mutex_unlock(&wd_lock);
    apr_pool_cleanup_register(p, NULL, wd_child_exit, apr_pool_cleanup_null);
}

/* ---------------------------------------------------------------- request */

static cg_conn_t *conn_state(conn_rec *c)
{
    conn_rec *m = c->master ? c->master : c;
    return ap_get_module_config(m->conn_config, &certgate_module);
}

/* RFC 9440 byte sequence: ":base64:". */
static const char *sf_binary(apr_pool_t *p, X509 *x)
{
    size_t cap = cg_x509_der_b64_size(x);
    if (cap == 0)
        return NULL;
    char *buf = apr_palloc(p, cap + 2);
    buf[0] = ':';
    int n = cg_x509_der_b64(x, buf + 1, cap);
    if (n < 0)
        return NULL;
    buf[n + 1] = ':';
    buf[n + 2] = '\0';
    return buf;
}

/* Called with cc->lock held; values live as long as the connection. */
static void build_forward_values(conn_rec *m, cg_conn_t *cc)
{
    X509 *leaf = SSL_get0_peer_certificate(cc->ssl);
    if (cc->client_cert != NULL || leaf == NULL)
        return;
    cc->client_cert = sf_binary(m->pool, leaf);
    STACK_OF(X509) *sk = SSL_get_peer_cert_chain(cc->ssl);
    int n = sk ? sk_X509_num(sk) : 0;
    const char *chain = NULL;
    for (int i = 0; i < n && i < CG_MAX_CHAIN; i++) {
        const char *v = sf_binary(m->pool, sk_X509_value(sk, i));
        if (v == NULL)
            return;
        chain = chain ? apr_pstrcat(m->pool, chain, ", ", v, NULL) : v;
    }
    cc->client_cert_chain = chain;
}

/*
 * Read the peer once per connection (and again after a renegotiation).
 * *peer: the connection's own for HTTP/1 (one request at a time, no other
 * thread touches cc), else a copy in buf made under the lock (HTTP/2 streams).
 */
static int load_peer(request_rec *r, cg_conn_t *cc, cg_peer_t *buf, const cg_peer_t **peer,
                     const char **cert_hdr, const char **chain_hdr, const char **x5t)
{
    conn_rec *m = r->connection->master ? r->connection->master : r->connection;
    int shared = r->connection->master != NULL;
    char err[128];
    int rc = 0;

    if (cc->lock == NULL)
        return -1;
    if (shared)
        apr_thread_mutex_lock(cc->lock);
    X509 *leaf = SSL_get0_peer_certificate(cc->ssl);
    if (!cc->peer_ready || leaf != cc->seen_leaf) {
        cc->seen_leaf = leaf;
        cc->client_cert = cc->client_cert_chain = NULL;
        cc->x_env = cc->x_hdr = NULL;   /* made from the old peer's values */
        cc->peer_error = cg_tls_peer(cc->ssl, &cc->peer, err, sizeof(err)) != 0;
        if (cc->peer_error)
            ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, "CG03001: reading the client certificate "
                          "failed: %s", err);
        cc->x5t[0] = '\0';
        if (!cc->peer_error && cc->peer.has_leaf)
            cg_gate_x5t_s256(&cc->peer.leaf, cc->x5t);
        cc->peer_ready = 1;
    }
    if (cc->peer_error) {
        rc = -1;
    } else {
        if (shared) {
            *buf = cc->peer;
            *peer = buf;
            *x5t = apr_pstrdup(r->pool, cc->x5t);
        } else {
            /* HTTP/1: changes only with the peer, within this connection's life. */
            *peer = &cc->peer;
            *x5t = cc->x5t;
        }
        if (cert_hdr != NULL) {
            build_forward_values(m, cc);
            *cert_hdr = cc->client_cert;
            *chain_hdr = cc->client_cert_chain;
        }
    }
    if (shared)
        apr_thread_mutex_unlock(cc->lock);
    return rc;
}

/* The lock of a connection's entry: HTTP/2 streams share it. */
static void conn_lock(void *arg, int on)
{
    if (on)
        apr_thread_mutex_lock(arg);
    else
        apr_thread_mutex_unlock(arg);
}

static int accepts_json(request_rec *r)
{
    const char *a = apr_table_get(r->headers_in, "Accept");
    return a != NULL && ap_strcasestr(a, "json") != NULL;
}

static int respond_deny(request_rec *r, cg_reason_t reason)
{
    int status = cg_reason_http_status(reason);
    const char *name = cg_reason_name(reason);

    apr_table_setn(r->subprocess_env, "CERTGATE_REASON", name);
    apr_table_setn(r->subprocess_env, "CERTGATE_ENFORCED", "1");
    apr_table_setn(r->err_headers_out, "CertGate-Reason", name);
    apr_table_setn(r->err_headers_out, "Cache-Control", "no-store");
    /* An operator's ErrorDocument wins; CERTGATE_REASON is there for it. */
    if (ap_response_code_string(r, ap_index_of_response(status)) != NULL)
        return status;

    char *body = apr_palloc(r->pool, CG_DENY_BODY_MAX);
    const char *ctype;
    if (cg_deny_body(reason, accepts_json(r), body, CG_DENY_BODY_MAX, &ctype) < 0)
        return status;   /* cannot happen with our fixed texts; httpd's page is the fallback */
    ap_set_content_type(r, ctype);
    if (status == 503)
        apr_table_setn(r->err_headers_out, "Retry-After", "1");
    r->status = status;
    ap_set_content_length(r, (apr_off_t)strlen(body));
    if (!r->header_only)
        ap_rputs(body, r);
    return DONE;
}

/* s, or a copy in p when it differs from *keep (then kept there). */
static const char *kept(apr_pool_t *p, const char **keep, const char *s)
{
    if (*keep == NULL || strcmp(*keep, s) != 0)
        *keep = apr_pstrdup(p, s);
    return *keep;
}

/* The allow's variables, added to t (strip_incoming ran before: none is there). */
static void add_env(apr_table_t *t, const char *app, const char *id, const char *fp,
                    const char *days, const char *x5t)
{
    apr_table_addn(t, "CERTGATE_APP_ID", app);
    apr_table_addn(t, "CERTGATE_CERT_ID", id);
    apr_table_addn(t, "CERTGATE_FINGERPRINT", fp);
    apr_table_addn(t, "CERTGATE_EXPIRE_IN", days);
    apr_table_addn(t, "CERTGATE_REASON", "allow");
    apr_table_addn(t, "CERTGATE_ENFORCED", "1");
    if (x5t[0] != '\0')
        apr_table_addn(t, "CERTGATE_X5T_S256", x5t);
}

/* The forward headers, added to t (stripped before). */
static void add_headers(apr_table_t *t, const char *app, const char *id, const char *fp,
                        const char *days, const char *cert_hdr, const char *chain_hdr)
{
    apr_table_addn(t, "CertGate-App-Id", app);
    apr_table_addn(t, "CertGate-Cert-Id", id);
    apr_table_addn(t, "CertGate-Fingerprint", fp);
    apr_table_addn(t, "CertGate-Expire-In", days);
    if (cert_hdr != NULL)
        apr_table_addn(t, "Client-Cert", cert_hdr);
    if (chain_hdr != NULL)
        apr_table_addn(t, "Client-Cert-Chain", chain_hdr);
}

static void export_allow(request_rec *r, const cg_dir_t *d, const cg_gate_verdict_t *v,
                         cg_conn_t *cc, const char *cert_hdr, const char *chain_hdr,
                         const char *x5t)
{
    const char *days, *app, *id, *fp;
    if (cc != NULL && r->connection->master == NULL) {
        /* HTTP/1: one request at a time; the copies live with the connection,
         * and need no comparing while the entry they came from is unchanged. */
        apr_pool_t *cp = r->connection->pool;
        days = kept(cp, &cc->x_days, v->expire_in);
        if (v->conn_gen != 0 && v->conn_gen == cc->x_gen) {
            app = cc->x_app;
            id = cc->x_id;
            fp = cc->x_fp;
        } else {
            app = kept(cp, &cc->x_app, v->regp->app_id);
            id = kept(cp, &cc->x_id, v->regp->id);
            fp = kept(cp, &cc->x_fp, v->fp_hex);
            cc->x_gen = v->conn_gen;
        }
        /* Tables made once per entry and day (x5t and the certificate headers
         * change only with the leaf, hence with the entry). Not without an
         * entry (cache off): the connection's pool would grow per request. */
        if (v->conn_gen != 0) {
            if (cc->x_env == NULL || cc->x_env_gen != v->conn_gen || cc->x_env_days != days) {
                cc->x_env = apr_table_make(cp, 8);
                add_env(cc->x_env, app, id, fp, days, x5t);
                cc->x_env_gen = v->conn_gen;
                cc->x_env_days = days;
            }
            apr_table_overlap(r->subprocess_env, cc->x_env, APR_OVERLAP_TABLES_ADD);
            if (d->forward_headers != 1)
                return;
            if (cc->x_hdr == NULL || cc->x_hdr_gen != v->conn_gen || cc->x_hdr_days != days) {
                cc->x_hdr = apr_table_make(cp, 6);
                add_headers(cc->x_hdr, app, id, fp, days, cert_hdr, chain_hdr);
                cc->x_hdr_gen = v->conn_gen;
                cc->x_hdr_days = days;
            }
            apr_table_overlap(r->headers_in, cc->x_hdr, APR_OVERLAP_TABLES_ADD);
            return;
        }
    } else {
        days = apr_pstrdup(r->pool, v->expire_in);
        app = apr_pstrdup(r->pool, v->regp->app_id);
        id = apr_pstrdup(r->pool, v->regp->id);
        fp = apr_pstrdup(r->pool, v->fp_hex);
    }
    add_env(r->subprocess_env, app, id, fp, days, x5t);
    if (d->forward_headers == 1)
        add_headers(r->headers_in, app, id, fp, days, cert_hdr, chain_hdr);
}

/* Whether name is one of ours for a backend: "Client_Cert" reaches CGI/WSGI
 * as HTTP_CLIENT_CERT just like "Client-Cert". */
static int is_forward_header(const char *name)
{
    size_t len = strlen(name);
    for (int i = 0; forward_headers[i] != NULL; i++)
        if (len == forward_header_lens[i] &&
            cg_header_name_same(name, len, forward_headers[i], forward_header_lens[i]))
            return 1;
    return 0;
}

/* Whether name is one of export_vars (tables compare names without case). */
static int is_export_var(const char *name)
{
    if (strncasecmp(name, "CERTGATE_", 9) != 0)
        return 0;
    for (int i = 0; export_vars[i] != NULL; i++)
        if (strcasecmp(name, export_vars[i]) == 0)
            return 1;
    return 0;
}

/* Unset the entries of t that match, in one walk (apr_table_unset walks the
 * whole table each time: only names found are unset). */
static void unset_matching(apr_pool_t *p, apr_table_t *t, int (*match)(const char *))
{
    const apr_array_header_t *arr = apr_table_elts(t);
    const apr_table_entry_t *e = (const apr_table_entry_t *)arr->elts;
    const char *one = NULL;
    apr_array_header_t *more = NULL;

    /* Collect first: unsetting while walking the table would skip entries. */
    for (int i = 0; i < arr->nelts; i++) {
        /* Every name of ours starts with "Ce" or "Cl" (any case): most names
         * end here, "Connection" and "Content-Type" included. */
        const char *k = e[i].key;
        if (k == NULL || (k[0] | 0x20) != 'c' || ((k[1] | 0x20) != 'e' && (k[1] | 0x20) != 'l') ||
            !match(k))
            continue;
        if (one == NULL) {
            one = e[i].key;
            continue;
        }
        if (more == NULL)
            more = apr_array_make(p, 4, sizeof(const char *));
        *(const char **)apr_array_push(more) = e[i].key;
    }
    if (one != NULL)
        apr_table_unset(t, one);
    for (int i = 0; more != NULL && i < more->nelts; i++)
        apr_table_unset(t, ((const char **)more->elts)[i]);
}

static void strip_incoming(request_rec *r)
{
    unset_matching(r->pool, r->headers_in, is_forward_header);
    unset_matching(r->pool, r->subprocess_env, is_export_var);
}

/* After an internal redirect or in a subrequest, repeat what the first request exported. */
static void copy_exports(request_rec *r, request_rec *first)
{
    for (int i = 0; export_vars[i] != NULL; i++) {
        const char *v = apr_table_get(first->subprocess_env, export_vars[i]);
        if (v != NULL)
            apr_table_setn(r->subprocess_env, export_vars[i], v);
    }
    for (int i = 0; forward_headers[i] != NULL; i++) {
        const char *v = apr_table_get(first->headers_in, forward_headers[i]);
        if (v != NULL)
            apr_table_setn(r->headers_in, forward_headers[i], v);
    }
}

/*
 * The app the request names. From a header, every header whose name is the
 * configured one up to case and '_'/'-' counts (a backend reads them all as
 * the same variable); more than one, or a ',' list (httpd joins repeated
 * lines, and HTTP/2 fields, with ", "), sets *ambiguous.
 */
static const char *request_app(request_rec *r, const cg_dir_t *d, int *ambiguous)
{
    *ambiguous = 0;
    if (d->app_from == APP_FROM_ENV)
        return apr_table_get(r->subprocess_env, d->app_name);
    if (d->app_from != APP_FROM_HEADER)
        return NULL;
    const apr_array_header_t *arr = apr_table_elts(r->headers_in);
    const apr_table_entry_t *e = (const apr_table_entry_t *)arr->elts;
    size_t nlen = strlen(d->app_name);
    const char *v = NULL;
    int n = 0;
    for (int i = 0; i < arr->nelts; i++) {
        if (e[i].key == NULL || !cg_header_name_same(e[i].key, strlen(e[i].key), d->app_name, nlen))
            continue;
        n++;
        v = e[i].val != NULL ? e[i].val : "";
    }
    if (n > 1 || (v != NULL && cg_app_value_is_list(v, strlen(v))))
        *ambiguous = 1;
    return v;
}

static int gate_fixups(request_rec *r, cg_dir_t *d);

/* Every request passes here: the check alone, without the gate's frame (six
 * saves, stack guard), where no gate is on. */
static int cg_fixups(request_rec *r)
{
    cg_dir_t *d = ap_get_module_config(r->per_dir_config, &certgate_module);
    if (d == NULL || d->enabled != 1)
        return DECLINED;
    return gate_fixups(r, d);
}

__attribute__((noinline)) static int gate_fixups(request_rec *r, cg_dir_t *d)
{
    /* The nearest earlier request that decided (redirects before subrequests). */
    request_rec *first = r->prev ? r->prev : r->main;
    while (first != NULL && apr_table_get(first->notes, NOTE_DECISION) == NULL)
        first = first->prev ? first->prev : first->main;
    /* Its decision stands for its subrequests and redirects (an ErrorDocument
     * for our 403 must not be gated again). An ungated first request does not
     * exempt a gated redirect target: that is checked here. Nor does a deny it
     * did not enforce (shadow, fail-open) exempt an enforcing location. */
    if (first != NULL) {
        const char *note = apr_table_get(first->notes, NOTE_DECISION);
        int not_enforced = apr_table_get(first->notes, NOTE_NOT_ENFORCED) != NULL;
        if (!not_enforced || d->shadow == 1) {
            strip_incoming(r);
            if (strcmp(note, "allow") == 0 || not_enforced)
                copy_exports(r, first);
            return DECLINED;
        }
    }

    strip_incoming(r);
    cg_srv_t *sc = cgh_srv_conf(r->server);
    cg_conn_t *cc = conn_state(r->connection);
    cg_peer_t peer_buf;
    static const cg_peer_t no_peer;
    const cg_peer_t *peer = &no_peer;
    const char *cert_hdr = NULL, *chain_hdr = NULL;
    const char *app = NULL;
    int app_ambiguous = 0;
    const char *x5t = "";

    if (cc == NULL) {
        ap_log_rerror(APLOG_MARK, APLOG_DEBUG, 0, r,
                      "CG03002: gated location reached without TLS from mod_ssl");
    } else if (load_peer(r, cc, &peer_buf, &peer,
                         d->forward_headers == 1 ? &cert_hdr : NULL, &chain_hdr, &x5t) != 0) {
        /* Treat an unreadable certificate like a missing one: deny. */
        peer = &no_peer;
    }
    if (d->app_from == APP_FROM_HEADER || d->app_from == APP_FROM_ENV) {
        app = request_app(r, d, &app_ambiguous);
        if (app == NULL)
            app = "";   /* the request names no app: nothing can match */
    }
    if (sc->gate == NULL) {     /* no memory at child start (CG04004) */
        apr_table_setn(r->notes, NOTE_DECISION, "store_unavailable");
        if (d->shadow == 1) {   /* shadow never refuses */
            apr_table_setn(r->subprocess_env, "CERTGATE_REASON", "store_unavailable");
            apr_table_setn(r->subprocess_env, "CERTGATE_ENFORCED", "0");
            apr_table_setn(r->notes, NOTE_NOT_ENFORCED, "1");
            return DECLINED;
        }
        return respond_deny(r, CG_R_STORE_UNAVAILABLE);
    }

    log_ctx_t lc = { r->server, r };
    int with_conn = cc != NULL && cc->lock != NULL;
    /* Only HTTP/2 streams (secondary connections) share the entry. */
    int shared = with_conn && r->connection->master != NULL;
    cg_gate_in_t in = {
        .peer = peer,
        .app = app,
        .app_ambiguous = app_ambiguous,
        .fail_open = sc->on_store_error_allow == 1,
        .stale_s = sc->stale_s > 0 ? sc->stale_s : 0,
        .now = cgh_now_sec(sc, r->request_time),
        .client = r->useragent_ip,
        .log_ctx = &lc,
        .conn = with_conn ? &cc->dc : NULL,
        .lock = shared ? conn_lock : NULL,
        .lock_arg = shared ? cc->lock : NULL,
        .shadow = d->shadow == 1,
    };
    cg_gate_verdict_t v;
    cg_gate_run(sc->gate, &in, &v);
    /* Added, not set: this request has no decision yet, and strip_incoming
     * removed every CERTGATE_ variable (setn would search the table again). */
    apr_table_addn(r->notes, NOTE_DECISION, cg_reason_name(v.reason));
    if (v.reason == CG_ALLOW) {
        export_allow(r, d, &v, cc, cert_hdr, chain_hdr, x5t);
        return DECLINED;
    }
    if (v.pass) {   /* shadow (CG01010) or fail-open (CG02002): the deny is not enforced */
        apr_table_setn(r->subprocess_env, "CERTGATE_REASON", cg_reason_name(v.reason));
        apr_table_setn(r->subprocess_env, "CERTGATE_ENFORCED", "0");
        apr_table_setn(r->notes, NOTE_NOT_ENFORCED, "1");
        return DECLINED;
    }
    return respond_deny(r, v.reason);
}

/* One handler hook for both handlers: every hook costs every request its dispatch. */
static int cg_handler(request_rec *r)
{
    const char *h = r->handler;
    if (h == NULL || h[0] != 'c' || strncmp(h, "certgate-", 9) != 0)
        return DECLINED;
    return h[9] == 'a' ? cgh_admin_handler(r) : cgh_metrics_handler(r);
}

static void register_hooks(apr_pool_t *p)
{
    static const char *const after_ssl[] = { "mod_ssl.c", NULL };
    (void)p;
    ap_hook_post_config(cg_post_config, after_ssl, NULL, APR_HOOK_MIDDLE);
    ap_hook_child_init(cg_child_init, NULL, NULL, APR_HOOK_MIDDLE);
    /* Fixups run for every request whatever Satisfy says, after authn/authz
     * modules that may name the app, and before any handler or proxy. */
    ap_hook_fixups(cg_fixups, NULL, NULL, APR_HOOK_REALLY_FIRST);
    ap_hook_handler(cg_handler, NULL, NULL, APR_HOOK_MIDDLE);
    APR_OPTIONAL_HOOK(ssl, pre_handshake, cg_pre_handshake, NULL, NULL, APR_HOOK_MIDDLE);
    APR_OPTIONAL_HOOK(ssl, init_server, cg_init_server, NULL, NULL, APR_HOOK_MIDDLE);
}

AP_DECLARE_MODULE(certgate) = {
    STANDARD20_MODULE_STUFF,
    cgh_create_dir,
    cgh_merge_dir,
    cgh_create_srv,
    cgh_merge_srv,
    cgh_cmds,
    register_hooks,
    0
};
