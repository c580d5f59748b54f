/* The httpd adapter's admin API and metrics handlers. */
#include <string.h>
#include <openssl/crypto.h>

#include "httpd.h"
#include "http_config.h"
#include "http_log.h"
#include "http_protocol.h"
#include "apr_hash.h"
#include "apr_strings.h"

#include "cg_admin.h"
#include "cg_cert.h"
#include "cg_httpd.h"
#include "cg_store.h"

/* Log lines of this file are certgate's: LogLevel certgate:... applies. */
APLOG_USE_MODULE(certgate);

/* ---------------------------------------------------------------- admin */

static void admin_cfg(const cg_dir_t *d, cg_admin_cfg_t *c, const char **deny_store)
{
    cg_admin_cfg_defaults(c);
    if (d->soon_days != UNSET) c->expiring_soon_days = d->soon_days;
    if (d->self_approve != UNSET) c->self_approve = d->self_approve;
    c->user_ignore_case = d->user_ignore_case == 1;
    if (d->admin_timeout_ms != UNSET) c->timeout_ms = d->admin_timeout_ms;
    if (d->min_rsa_bits != UNSET) c->policy.min_rsa_bits = d->min_rsa_bits;
    if (d->min_days != UNSET) c->policy.min_days = d->min_days;
    if (d->max_days != UNSET) c->policy.max_days = d->max_days;
    if (d->deny != NULL) {
        c->policy.n_deny = 0;
        for (int i = 0; i < d->deny->nelts && i < CG_POLICY_DENY_MAX; i++)
            deny_store[c->policy.n_deny++] = APR_ARRAY_IDX(d->deny, i, const char *);
        memcpy(c->policy.deny, deny_store, sizeof(c->policy.deny));
    }
    if (d->n_cas != UNSET) {
        c->policy.cas = d->cas;
        c->policy.n_cas = (size_t)d->n_cas;
    }
    if (d->ev_only_new != UNSET) c->policy.ev_only_new = d->ev_only_new;
    if (d->cn_contains_org != UNSET) c->policy.cn_contains_org = d->cn_contains_org;
}

/* Add the roles named in a CertGateAdminRole value ("developer manager"). */
static unsigned parse_roles(const char *names)
{
    unsigned roles = 0;
    char buf[128];
    apr_cpystrn(buf, names, sizeof(buf));
    char *last = NULL;
    for (char *t = apr_strtok(buf, " ", &last); t; t = apr_strtok(NULL, " ", &last))
        roles |= cg_role_parse(t);
    return roles;
}

/*
 * The user's roles and customer under the location's identity rule: an exact
 * key lookup, or with IgnoreCase every configured name that folds to the
 * user. Two different customers for one folded name is a configuration error
 * (-1). The iterator comes from the request pool: a config hash is shared by
 * all threads.
 */
static int user_identity(request_rec *r, const cg_dir_t *d, unsigned *roles,
                         const char **customer)
{
    const char *user = r->user;
    *roles = 0;
    *customer = NULL;
    if (user == NULL)
        return 0;
    if (d->user_ignore_case != 1) {
        const char *names = d->roles ? apr_hash_get(d->roles, user, APR_HASH_KEY_STRING) : NULL;
        *roles = names ? parse_roles(names) : 0;
        *customer = d->customers ? apr_hash_get(d->customers, user, APR_HASH_KEY_STRING) : NULL;
        return 0;
    }
    for (int pass = 0; pass < 2; pass++) {
        apr_hash_t *h = pass == 0 ? d->roles : d->customers;
        for (apr_hash_index_t *hi = h ? apr_hash_first(r->pool, h) : NULL; hi;
             hi = apr_hash_next(hi)) {
            const void *k;
            void *v;
            apr_hash_this(hi, &k, NULL, &v);
            if (strcasecmp(k, user) != 0)
                continue;
            if (pass == 0) {
                *roles |= parse_roles(v);
            } else {
                if (*customer != NULL && strcmp(*customer, v) != 0)
                    return -1;
                *customer = v;
            }
        }
    }
    return 0;
}

static int send_admin(request_rec *r, cg_admin_resp_t *resp, const char *base)
{
    r->status = resp->status;
    apr_table_setn(r->headers_out, "Cache-Control", "no-store");
    apr_table_setn(r->headers_out, "X-Content-Type-Options", "nosniff");
    apr_table_setn(r->headers_out, "Referrer-Policy", "no-referrer");
    if (resp->csp != NULL)
        apr_table_set(r->headers_out, "Content-Security-Policy", resp->csp);
    if (resp->etag[0])
        apr_table_set(r->headers_out, "ETag", resp->etag);
    if (resp->location[0])
        apr_table_set(r->headers_out, "Location",
                      apr_pstrcat(r->pool, base ? base : "", "/", resp->location, NULL));
    if (resp->next[0])
        apr_table_set(r->headers_out, "CertGate-Next-Cursor", resp->next);
    if (resp->status == 401)
        apr_table_setn(r->err_headers_out, "WWW-Authenticate", "Basic realm=\"certgate admin\"");
    if (resp->body != NULL) {
        ap_set_content_type(r, apr_pstrdup(r->pool, resp->content_type));
        ap_set_content_length(r, (apr_off_t)resp->body_len);
        if (!r->header_only)
            ap_rwrite(resp->body, (int)resp->body_len, r);
    }
    return OK;
}

/* Read the body, refusing (413) past max without reading the rest. */
static int read_body(request_rec *r, apr_off_t max, unsigned char **out, size_t *len)
{
    *out = NULL;
    *len = 0;
    const char *cl = apr_table_get(r->headers_in, "Content-Length");
    if (cl != NULL) {
        apr_off_t n;
        if (apr_strtoff(&n, cl, NULL, 10) != APR_SUCCESS || n < 0)
            return HTTP_BAD_REQUEST;
        if (n > max)
            return HTTP_REQUEST_ENTITY_TOO_LARGE;
    }
    if (ap_setup_client_block(r, REQUEST_CHUNKED_DECHUNK) != OK)
        return HTTP_BAD_REQUEST;
    if (!ap_should_client_block(r))
        return OK;
    size_t cap = r->remaining > 0 ? (size_t)r->remaining + 1 : 65536;
    unsigned char *buf = apr_palloc(r->pool, cap);
    for (;;) {
        if (*len + 8192 > cap) {
            if ((apr_off_t)cap > max + 1)
                return HTTP_REQUEST_ENTITY_TOO_LARGE;
            size_t ncap = cap * 2;
            unsigned char *nb = apr_palloc(r->pool, ncap);
            memcpy(nb, buf, *len);
            OPENSSL_cleanse(buf, *len);   /* no stray copies of a private key */
            buf = nb;
            cap = ncap;
        }
        long got = ap_get_client_block(r, (char *)buf + *len, 8192);
        if (got < 0) {
            OPENSSL_cleanse(buf, *len);
            return HTTP_BAD_REQUEST;
        }
        if (got == 0)
            break;
        *len += (size_t)got;
        if ((apr_off_t)*len > max) {
            OPENSSL_cleanse(buf, *len);
            return HTTP_REQUEST_ENTITY_TOO_LARGE;
        }
    }
    *out = buf;
    return OK;
}

static int admin_handle(request_rec *r);

/* Every request passes here (text/html, default-handler...): the check alone,
 * first byte first, without the handler's frame (six saves, stack guard). */
int cgh_admin_handler(request_rec *r)
{
    if (r->handler == NULL || r->handler[0] != 'c' || strcmp(r->handler, "certgate-admin") != 0)
        return DECLINED;
    return admin_handle(r);
}

__attribute__((noinline)) static int admin_handle(request_rec *r)
{
    cg_dir_t *d = ap_get_module_config(r->per_dir_config, &certgate_module);
    cg_srv_t *sc = cgh_srv_conf(r->server);
    cg_admin_resp_t resp;
    cg_admin_req_t req;
    memset(&resp, 0, sizeof(resp));
    memset(&req, 0, sizeof(req));

    const char *base = d->admin_base ? d->admin_base : "";
    size_t bl = strlen(base);
    while (bl > 0 && base[bl - 1] == '/')
        bl--;
    const char *path = r->uri;
    if (bl > 0 && strncmp(r->uri, base, bl) == 0)
        path = r->uri + bl;
    base = apr_pstrmemdup(r->pool, base, bl);

    apr_off_t max = d->max_body != UNSET ? d->max_body : CG_CERT_MAX_INPUT;
    int rb = read_body(r, max, &req.body, &req.body_len);
    if (rb != OK) {
        if (rb == HTTP_REQUEST_ENTITY_TOO_LARGE) {
            r->connection->keepalive = AP_CONN_CLOSE;   /* do not drain megabytes */
            cg_admin_error(&resp, 413, "Upload.TooLarge",
                           apr_psprintf(r->pool, "the body is larger than %" APR_OFF_T_FMT
                                        " bytes", max));
        } else {
            cg_admin_error(&resp, 400, "Request.Invalid", "the request body could not be read");
        }
    } else if (cg_gate_store(sc->gate) == NULL) {
        cg_admin_error(&resp, 503, "Store.Unavailable", "the store is not set up (see CG04004)");
    } else {
        const char *deny_store[CG_POLICY_DENY_MAX];
        cg_admin_cfg_t cfg;
        admin_cfg(d, &cfg, deny_store);
        req.method = r->method;
        req.path = path;
        req.query = r->args;
        char user[CG_USER_MAX + 1];
        req.user = cg_admin_user_canon(r->user, d->user_ignore_case == 1, user, sizeof(user));
        if (user_identity(r, d, &req.roles, &req.customer) != 0) {
            ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, "CG06002: CertGateAdminCustomer gives "
                          "user %s two customers under CertGateAdminUserMatch IgnoreCase; "
                          "the user is refused", ap_escape_logitem(r->pool, r->user));
            req.roles = 0;
            req.customer = NULL;
        }
        req.client_ip = r->useragent_ip;
        req.content_type = apr_table_get(r->headers_in, "Content-Type");
        req.accept = apr_table_get(r->headers_in, "Accept");
        req.if_match = apr_table_get(r->headers_in, "If-Match");
        req.origin = apr_table_get(r->headers_in, "Origin");
        req.sec_fetch_site = apr_table_get(r->headers_in, "Sec-Fetch-Site");
        req.host = apr_table_get(r->headers_in, "Host");
        req.tls = strcmp(ap_http_scheme(r), "https") == 0;
        req.now = cgh_now_sec(sc, r->request_time);
        cg_admin_handle(&cfg, cg_gate_store(sc->gate), &req, &resp);
        if (resp.cross_site)
            ap_log_rerror(APLOG_MARK, APLOG_WARNING, 0, r, "CG06010: refused a cross-site admin "
                          "%s %s: Origin=%s Sec-Fetch-Site=%s user=%s", r->method,
                          ap_escape_logitem(r->pool, path),
                          req.origin ? ap_escape_logitem(r->pool, req.origin) : "-",
                          req.sec_fetch_site ? ap_escape_logitem(r->pool, req.sec_fetch_site) : "-",
                          r->user ? ap_escape_logitem(r->pool, r->user) : "-");
    }
    ap_log_rerror(APLOG_MARK, resp.status >= 500 ? APLOG_ERR : APLOG_INFO, 0, r,
                  "CG06001: admin %s %s -> %d user=%s client=%s", r->method,
                  ap_escape_logitem(r->pool, path), resp.status,
                  r->user ? ap_escape_logitem(r->pool, r->user) : "-", r->useragent_ip);
    int rc = send_admin(r, &resp, base);
    cg_admin_resp_free(&resp);
    return rc;
}

static int metrics_handle(request_rec *r);

/* Every request passes here (text/html, default-handler...): the check alone,
 * first byte first, without the handler's frame (six saves, stack guard). */
int cgh_metrics_handler(request_rec *r)
{
    if (r->handler == NULL || r->handler[0] != 'c' || strcmp(r->handler, "certgate-metrics") != 0)
        return DECLINED;
    return metrics_handle(r);
}

__attribute__((noinline)) static int metrics_handle(request_rec *r)
{
    if (r->method_number != M_GET)
        return HTTP_METHOD_NOT_ALLOWED;
    cg_srv_t *sc = cgh_srv_conf(r->server);
    cg_dir_t *d = ap_get_module_config(r->per_dir_config, &certgate_module);
    cg_store_t *store = cg_gate_store(sc->gate);
    const char *deny_store[CG_POLICY_DENY_MAX];
    cg_admin_cfg_t acfg;
    cg_store_stats_t stats;
    char err[200];
    memset(&stats, 0, sizeof(stats));
    /* The location's CertGateAdminTimeout and CertGateExpiringSoonDays, or their defaults. */
    admin_cfg(d, &acfg, deny_store);
    int src = store == NULL ? -CG_STORE_CONN
              : cg_admin_store_stats(store, acfg.timeout_ms, cgh_now_sec(sc, r->request_time),
                                     acfg.expiring_soon_days, &stats, err, sizeof(err));
    if (src != 0) {
        stats.ok = 0;
        stats.fail = (cg_store_rc_t)-src;
        if (store != NULL)
            ap_log_rerror(APLOG_MARK, APLOG_WARNING, 0, r, "CG08005: metrics scrape could not "
                          "read Redis (%s): %s", cg_store_rc_name(stats.fail), err);
    }
    cg_metrics_t zero;
    cg_metrics_init(&zero);
    char *text = cg_metrics_render(cgh_metrics ? cgh_metrics : &zero, &stats);
    if (text == NULL)
        return HTTP_INTERNAL_SERVER_ERROR;
    ap_set_content_type(r, "text/plain; version=0.0.4; charset=utf-8");
    apr_table_setn(r->headers_out, "Cache-Control", "no-store");
    ap_set_content_length(r, (apr_off_t)strlen(text));
    if (!r->header_only)
        ap_rputs(text, r);
    free(text);
    return OK;
}

