/*
 * mod_certgate: the httpd adapter. It reads directives, takes the client
 * certificate from mod_ssl's connection, asks the core (src/) for a decision
 * and turns it into a response. No decision logic lives here.
 */
#include <pthread.h>
#include <string.h>
#include <openssl/crypto.h>
#include <openssl/ssl.h>

#include "httpd.h"
#include "http_config.h"
#include "http_core.h"
#include "http_log.h"
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
#include "cg_version.h"
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

module AP_MODULE_DECLARE_DATA certgate_module;



#define UNSET (-1)
#define NOTE_DECISION "certgate-decision"

/* Headers we set for the upstream; incoming copies are always removed. */
static const char *const forward_headers[] = {
    "CertGate-App-Id", "CertGate-Cert-Id", "CertGate-Fingerprint",
    "CertGate-Expire-In", "Client-Cert", "Client-Cert-Chain", NULL
};
static const char *const export_vars[] = {
    "CERTGATE_APP_ID", "CERTGATE_CERT_ID", "CERTGATE_FINGERPRINT",
    "CERTGATE_EXPIRE_IN", "CERTGATE_REASON", NULL
};

typedef struct {
    const char *host;
    int port;
    const char *socket;
    const char *user;
    const char *password;
    int db;
    int timeout_ms;
    const char *prefix;
    int on_store_error_allow;
    int max_idle;
    int cache_on;
    int cache_entries;
    int cache_max_age;      /* seconds */
    int usage_interval;     /* seconds */
    apr_array_header_t *expiry_days;    /* int, descending; empty: off */
    int expiry_interval;    /* seconds */
    int clock_offset;       /* seconds; test only */
    int addr_set;           /* CertGateRedis given here */
    int own_store;          /* this vhost changes store or cache settings: own instances */
    cg_gate_t *gate;        /* per child, created in child_init: store, cache, threads */
} cg_srv_t;

typedef enum { APP_FROM_UNSET = 0, APP_FROM_NONE, APP_FROM_HEADER, APP_FROM_ENV } app_from_t;

typedef struct {
    int enabled;
    app_from_t app_from;
    const char *app_name;
    int forward_headers;
    /* Admin handler (SetHandler certgate-admin). */
    const char *admin_base;         /* the <Location> path endpoints live below */
    /* Exact keys (apr_hash, not the caseless apr_table): a user is exactly
     * who httpd says, unless CertGateAdminUserMatch IgnoreCase. */
    apr_hash_t *roles;              /* user -> role names, space separated */
    apr_hash_t *customers;          /* user -> customer id */
    int user_ignore_case;
    int self_approve;
    int soon_days;
    int min_rsa_bits;
    int min_days, max_days;
    apr_array_header_t *deny;       /* issuer denylist; NULL: default */
    const char *ca_file;
    cg_ca_entry_t *cas;
    int n_cas;
    int ev_only_new;
    int cn_contains_org;
    apr_off_t max_body;
    int admin_timeout_ms;
} cg_dir_t;

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
    /* The registration this connection last used, while the cache version holds. */
    cg_conn_entry_t dc;
} cg_conn_t;

static int gate_configured;     /* some location says CertGate On */
static cg_metrics_t *metrics;   /* shared by all children; NULL if no shared memory */

/* Request time in seconds, moved by CertGateTestClockOffset (tests only). */
static int64_t now_sec(const cg_srv_t *sc, apr_time_t t)
{
    return (int64_t)apr_time_sec(t) + (sc->clock_offset != UNSET ? sc->clock_offset : 0);
}

/* ---------------------------------------------------------------- config */

static void *create_srv(apr_pool_t *p, server_rec *s)
{
    cg_srv_t *c = apr_pcalloc(p, sizeof(*c));
    (void)s;
    c->port = UNSET;
    c->db = UNSET;
    c->timeout_ms = UNSET;
    c->on_store_error_allow = UNSET;
    c->max_idle = UNSET;
    c->cache_on = UNSET;
    c->cache_entries = UNSET;
    c->cache_max_age = UNSET;
    c->usage_interval = UNSET;
    c->expiry_interval = UNSET;
    c->clock_offset = UNSET;
    return c;
}

static void *merge_srv(apr_pool_t *p, void *basev, void *addv)
{
    cg_srv_t *base = basev, *add = addv, *c = apr_pcalloc(p, sizeof(*c));
    c->own_store = add->own_store;
    c->addr_set = add->addr_set || base->addr_set;
    c->host = add->addr_set ? add->host : base->host;
    c->port = add->addr_set ? add->port : base->port;
    c->socket = add->addr_set ? add->socket : base->socket;
    c->user = add->user ? add->user : base->user;
    c->password = add->password ? add->password : base->password;
    c->db = add->db != UNSET ? add->db : base->db;
    c->timeout_ms = add->timeout_ms != UNSET ? add->timeout_ms : base->timeout_ms;
    c->prefix = add->prefix ? add->prefix : base->prefix;
    c->on_store_error_allow = add->on_store_error_allow != UNSET
        ? add->on_store_error_allow : base->on_store_error_allow;
    c->max_idle = add->max_idle != UNSET ? add->max_idle : base->max_idle;
    c->cache_on = add->cache_on != UNSET ? add->cache_on : base->cache_on;
    c->cache_entries = add->cache_entries != UNSET ? add->cache_entries : base->cache_entries;
    c->cache_max_age = add->cache_max_age != UNSET ? add->cache_max_age : base->cache_max_age;
    c->usage_interval = add->usage_interval != UNSET ? add->usage_interval : base->usage_interval;
    c->expiry_days = add->expiry_days ? add->expiry_days : base->expiry_days;
    c->expiry_interval = add->expiry_interval != UNSET ? add->expiry_interval
                                                       : base->expiry_interval;
    c->clock_offset = add->clock_offset != UNSET ? add->clock_offset : base->clock_offset;
    return c;
}

static void *create_dir(apr_pool_t *p, char *dir)
{
    cg_dir_t *c = apr_pcalloc(p, sizeof(*c));
    c->enabled = UNSET;
    c->app_from = APP_FROM_UNSET;
    c->forward_headers = UNSET;
    c->admin_base = (dir != NULL && dir[0] == '/') ? apr_pstrdup(p, dir) : NULL;
    c->self_approve = UNSET;
    c->soon_days = UNSET;
    c->min_rsa_bits = UNSET;
    c->min_days = UNSET;
    c->max_days = UNSET;
    c->n_cas = UNSET;
    c->ev_only_new = UNSET;
    c->cn_contains_org = UNSET;
    c->max_body = UNSET;
    c->admin_timeout_ms = UNSET;
    c->user_ignore_case = UNSET;
    return c;
}

#define MERGE_INT(f) c->f = add->f != UNSET ? add->f : base->f
#define MERGE_PTR(f) c->f = add->f != NULL ? add->f : base->f

static void *merge_dir(apr_pool_t *p, void *basev, void *addv)
{
    cg_dir_t *base = basev, *add = addv, *c = apr_pcalloc(p, sizeof(*c));
    c->enabled = add->enabled != UNSET ? add->enabled : base->enabled;
    if (add->app_from != APP_FROM_UNSET) {
        c->app_from = add->app_from;
        c->app_name = add->app_name;
    } else {
        c->app_from = base->app_from;
        c->app_name = base->app_name;
    }
    c->forward_headers = add->forward_headers != UNSET ? add->forward_headers
                                                       : base->forward_headers;
    MERGE_PTR(admin_base);
    MERGE_PTR(roles);
    MERGE_PTR(customers);
    MERGE_INT(self_approve);
    MERGE_INT(soon_days);
    MERGE_INT(min_rsa_bits);
    MERGE_INT(min_days);
    MERGE_INT(max_days);
    MERGE_PTR(deny);
    MERGE_PTR(ca_file);
    if (add->n_cas != UNSET) {
        c->cas = add->cas;
        c->n_cas = add->n_cas;
    } else {
        c->cas = base->cas;
        c->n_cas = base->n_cas;
    }
    MERGE_INT(ev_only_new);
    MERGE_INT(cn_contains_org);
    MERGE_INT(max_body);
    MERGE_INT(admin_timeout_ms);
    MERGE_INT(user_ignore_case);
    return c;
}

static cg_srv_t *srv_conf(server_rec *s)
{
    return ap_get_module_config(s->module_config, &certgate_module);
}

/* Effective values: an UNSET field takes the core's default. */
static void gate_cfg(const cg_srv_t *c, cg_gate_cfg_t *out)
{
    cg_gate_cfg_defaults(out);
    out->store.socket = c->socket;
    if (c->host)
        out->store.host = c->host;
    if (c->port != UNSET)
        out->store.port = c->port;
    out->store.user = c->user;
    out->store.password = c->password;
    if (c->db != UNSET)
        out->store.db = c->db;
    if (c->prefix)
        out->store.prefix = c->prefix;
    if (c->timeout_ms != UNSET)
        out->store.timeout_ms = c->timeout_ms;
    if (c->max_idle != UNSET)
        out->store.max_idle = c->max_idle;
    if (c->cache_on != UNSET)
        out->cache_on = c->cache_on;
    if (c->cache_entries != UNSET)
        out->cache_entries = (size_t)c->cache_entries;
    if (c->cache_max_age != UNSET)
        out->cache_max_age_s = c->cache_max_age;
    if (c->usage_interval != UNSET)
        out->usage_interval_s = c->usage_interval;
}

static const char *set_redis(cmd_parms *cmd, void *d, const char *arg)
{
    cg_srv_t *c = srv_conf(cmd->server);
    (void)d;
    c->own_store = 1;
    c->addr_set = 1;
    if (strncmp(arg, "unix:", 5) == 0) {
        if (arg[5] != '/')
            return "CertGateRedis: unix: needs an absolute socket path, e.g. unix:/run/redis/redis.sock";
        c->socket = arg + 5;
        c->host = NULL;
        return NULL;
    }
    const char *colon = strrchr(arg, ':');
    if (colon == NULL || colon == arg || colon[1] == '\0')
        return "CertGateRedis: expected host:port or unix:/path";
    char *end = NULL;
    long port = strtol(colon + 1, &end, 10);
    if (*end != '\0' || port < 1 || port > 65535)
        return "CertGateRedis: the port must be a number from 1 to 65535";
    c->host = apr_pstrmemdup(cmd->pool, arg, (apr_size_t)(colon - arg));
    c->port = (int)port;
    c->socket = NULL;
    return NULL;
}

static const char *set_redis_auth(cmd_parms *cmd, void *d, const char *a1, const char *a2)
{
    cg_srv_t *c = srv_conf(cmd->server);
    (void)d;
    c->own_store = 1;
    if (a2 == NULL) {
        c->user = NULL;
        c->password = a1;
    } else {
        c->user = a1;
        c->password = a2;
    }
    if (c->password[0] == '\0')
        return "CertGateRedisAuth: the password is empty";
    return NULL;
}

static const char *parse_int(cmd_parms *cmd, const char *arg, long lo, long hi, int *out)
{
    char *end = NULL;
    long v = strtol(arg, &end, 10);
    if (arg[0] == '\0' || *end != '\0' || v < lo || v > hi)
        return apr_psprintf(cmd->pool, "%s: expected a whole number from %ld to %ld, got '%s'",
                            cmd->cmd->name, lo, hi, arg);
    *out = (int)v;
    return NULL;
}

static const char *set_redis_db(cmd_parms *cmd, void *d, const char *arg)
{
    cg_srv_t *c = srv_conf(cmd->server);
    (void)d;
    c->own_store = 1;
    return parse_int(cmd, arg, 0, CG_GATE_DB_MAX, &c->db);
}

static const char *set_redis_timeout(cmd_parms *cmd, void *d, const char *arg)
{
    (void)d;
    srv_conf(cmd->server)->own_store = 1;
    return parse_int(cmd, arg, CG_GATE_TIMEOUT_MS_MIN, CG_GATE_TIMEOUT_MS_MAX,
                     &srv_conf(cmd->server)->timeout_ms);
}

static const char *set_redis_max_idle(cmd_parms *cmd, void *d, const char *arg)
{
    (void)d;
    srv_conf(cmd->server)->own_store = 1;
    return parse_int(cmd, arg, 0, CG_GATE_MAX_IDLE_MAX, &srv_conf(cmd->server)->max_idle);
}

static const char *set_prefix(cmd_parms *cmd, void *d, const char *arg)
{
    cg_srv_t *c = srv_conf(cmd->server);
    (void)d;
    c->own_store = 1;
    c->prefix = arg;
    if (strlen(arg) > CG_PREFIX_MAX)
        return "CertGateKeyPrefix: at most 64 bytes";
    for (const char *p = arg; *p; p++) {
        if ((unsigned char)*p <= 0x20 || (unsigned char)*p >= 0x7f)
            return "CertGateKeyPrefix: printable ASCII without spaces only";
    }
    return NULL;
}

static const char *set_cache(cmd_parms *cmd, void *d, int on)
{
    (void)d;
    srv_conf(cmd->server)->cache_on = on;
    srv_conf(cmd->server)->own_store = 1;
    return NULL;
}

static const char *set_cache_entries(cmd_parms *cmd, void *d, const char *arg)
{
    cg_srv_t *c = srv_conf(cmd->server);
    (void)d;
    c->own_store = 1;
    return parse_int(cmd, arg, CG_GATE_CACHE_ENTRIES_MIN, CG_GATE_CACHE_ENTRIES_MAX,
                     &c->cache_entries);
}

static const char *set_cache_max_age(cmd_parms *cmd, void *d, const char *arg)
{
    cg_srv_t *c = srv_conf(cmd->server);
    (void)d;
    c->own_store = 1;
    return parse_int(cmd, arg, CG_GATE_CACHE_MAX_AGE_MIN, CG_GATE_CACHE_MAX_AGE_MAX,
                     &c->cache_max_age);
}

static const char *set_usage_interval(cmd_parms *cmd, void *d, const char *arg)
{
    (void)d;
    if (strcasecmp(arg, "off") == 0) {
        srv_conf(cmd->server)->usage_interval = 0;
        return NULL;
    }
    return parse_int(cmd, arg, 1, CG_GATE_USAGE_INTERVAL_MAX,
                     &srv_conf(cmd->server)->usage_interval);
}

static const char *set_expiry_interval(cmd_parms *cmd, void *d, const char *arg)
{
    (void)d;
    return parse_int(cmd, arg, 1, 86400, &srv_conf(cmd->server)->expiry_interval);
}

static const char *set_clock_offset(cmd_parms *cmd, void *d, const char *arg)
{
    (void)d;
    return parse_int(cmd, arg, -100000000, 100000000, &srv_conf(cmd->server)->clock_offset);
}

static const char *add_expiry_day(cmd_parms *cmd, void *d, const char *arg)
{
    cg_srv_t *c = srv_conf(cmd->server);
    int v;
    (void)d;
    if (c->expiry_days == NULL)
        c->expiry_days = apr_array_make(cmd->pool, 4, sizeof(int));
    if (strcasecmp(arg, "off") == 0)
        return NULL;
    const char *e = parse_int(cmd, arg, 1, 3650, &v);
    if (e != NULL)
        return e;
    if (c->expiry_days->nelts > 0 && v >= APR_ARRAY_IDX(c->expiry_days, c->expiry_days->nelts - 1, int))
        return "CertGateExpiryWarnDays: list the days in decreasing order, e.g. 90 60 30 7";
    if (c->expiry_days->nelts >= 16)
        return "CertGateExpiryWarnDays: at most 16 thresholds";
    *(int *)apr_array_push(c->expiry_days) = v;
    return NULL;
}

static const char *set_on_store_error(cmd_parms *cmd, void *d, const char *arg)
{
    cg_srv_t *c = srv_conf(cmd->server);
    (void)d;
    if (strcasecmp(arg, "deny") == 0)
        c->on_store_error_allow = 0;
    else if (strcasecmp(arg, "allow") == 0)
        c->on_store_error_allow = 1;
    else
        return "CertGateOnStoreError: expected deny or allow";
    return NULL;
}

static const char *set_gate(cmd_parms *cmd, void *dv, int on)
{
    cg_dir_t *d = dv;
    (void)cmd;
    d->enabled = on;
    if (on)
        gate_configured = 1;
    return NULL;
}

static const char *set_app_from(cmd_parms *cmd, void *dv, const char *kind, const char *name)
{
    cg_dir_t *d = dv;
    (void)cmd;
    if (strcasecmp(kind, "none") == 0 && name == NULL) {
        d->app_from = APP_FROM_NONE;
        d->app_name = NULL;
        return NULL;
    }
    if (name == NULL || name[0] == '\0')
        return "CertGateAppFrom: expected 'header NAME', 'env NAME' or 'none'";
    if (strcasecmp(kind, "header") == 0)
        d->app_from = APP_FROM_HEADER;
    else if (strcasecmp(kind, "env") == 0)
        d->app_from = APP_FROM_ENV;
    else
        return "CertGateAppFrom: expected 'header NAME', 'env NAME' or 'none'";
    d->app_name = name;
    return NULL;
}

static const char *set_forward_headers(cmd_parms *cmd, void *dv, int on)
{
    cg_dir_t *d = dv;
    (void)cmd;
    d->forward_headers = on;
    return NULL;
}

static const char *add_role(cmd_parms *cmd, void *dv, const char *role, const char *user)
{
    cg_dir_t *d = dv;
    if (cg_role_parse(role) == 0)
        return apr_psprintf(cmd->pool, "CertGateAdminRole: unknown role '%s'; use developer, "
                            "manager, support or auditor", role);
    /* A fresh table per section, so inner sections do not edit outer ones. */
    if (d->roles == NULL)
        d->roles = apr_hash_make(cmd->pool);
    const char *have = apr_hash_get(d->roles, user, APR_HASH_KEY_STRING);
    apr_hash_set(d->roles, apr_pstrdup(cmd->pool, user), APR_HASH_KEY_STRING,
                 have ? apr_pstrcat(cmd->pool, have, " ", role, NULL) : role);
    return NULL;
}

static const char *add_customer(cmd_parms *cmd, void *dv, const char *customer, const char *user)
{
    cg_dir_t *d = dv;
    if (!cg_app_valid(customer, strlen(customer)))
        return "CertGateAdminCustomer: the customer id must be printable ASCII without spaces "
               "or * ? [ ] : { } \\";
    if (d->customers == NULL)
        d->customers = apr_hash_make(cmd->pool);
    if (apr_hash_get(d->customers, user, APR_HASH_KEY_STRING) != NULL)
        return apr_psprintf(cmd->pool, "CertGateAdminCustomer: user '%s' already has a customer",
                            user);
    apr_hash_set(d->customers, apr_pstrdup(cmd->pool, user), APR_HASH_KEY_STRING, customer);
    return NULL;
}

static const char *set_user_match(cmd_parms *cmd, void *dv, const char *arg)
{
    cg_dir_t *d = dv;
    (void)cmd;
    if (strcasecmp(arg, "Exact") == 0)
        d->user_ignore_case = 0;
    else if (strcasecmp(arg, "IgnoreCase") == 0)
        d->user_ignore_case = 1;
    else
        return "CertGateAdminUserMatch: use Exact (default) or IgnoreCase";
    return NULL;
}

static const char *set_dir_int(cmd_parms *cmd, void *dv, const char *arg)
{
    cg_dir_t *d = dv;
    const char *name = cmd->cmd->name;
    if (strcasecmp(name, "CertGateExpiringSoonDays") == 0)
        return parse_int(cmd, arg, 0, 3650, &d->soon_days);
    if (strcasecmp(name, "CertGatePolicyMinRsaBits") == 0)
        return parse_int(cmd, arg, 1024, 16384, &d->min_rsa_bits);
    if (strcasecmp(name, "CertGateAdminTimeout") == 0)
        return parse_int(cmd, arg, 1, 60000, &d->admin_timeout_ms);
    if (strcasecmp(name, "CertGateAdminMaxBody") == 0) {
        int v;
        const char *e = parse_int(cmd, arg, 1024, 64 * 1024 * 1024, &v);
        d->max_body = v;
        return e;
    }
    return "internal: unknown integer directive";
}

static const char *set_validity_days(cmd_parms *cmd, void *dv, const char *lo, const char *hi)
{
    cg_dir_t *d = dv;
    const char *e = parse_int(cmd, lo, 1, 36500, &d->min_days);
    if (e == NULL)
        e = parse_int(cmd, hi, 1, 36500, &d->max_days);
    if (e == NULL && d->min_days > d->max_days)
        e = "CertGatePolicyValidityDays: min must not exceed max";
    return e;
}

static const char *set_dir_flag(cmd_parms *cmd, void *dv, int on)
{
    cg_dir_t *d = dv;
    const char *name = cmd->cmd->name;
    if (strcasecmp(name, "CertGateAdminSelfApprove") == 0)
        d->self_approve = on;
    else if (strcasecmp(name, "CertGatePolicyEvOnlyNew") == 0)
        d->ev_only_new = on;
    else if (strcasecmp(name, "CertGatePolicyCnContainsOrg") == 0)
        d->cn_contains_org = on;
    return NULL;
}

static const char *add_issuer_deny(cmd_parms *cmd, void *dv, const char *arg)
{
    cg_dir_t *d = dv;
    if (d->deny == NULL)
        d->deny = apr_array_make(cmd->pool, 4, sizeof(const char *));
    if (strcasecmp(arg, "none") == 0)
        return NULL;    /* an empty list: nothing denied */
    if (d->deny->nelts >= CG_POLICY_DENY_MAX)
        return "CertGatePolicyIssuerDeny: too many patterns";
    *(const char **)apr_array_push(d->deny) = arg;
    return NULL;
}

static const char *set_ca_file(cmd_parms *cmd, void *dv, const char *arg)
{
    cg_dir_t *d = dv;
    char err[300];
    const char *path = ap_server_root_relative(cmd->pool, arg);
    if (path == NULL)
        return "CertGatePolicyAuthorizedCAs: bad path";
    d->cas = apr_pcalloc(cmd->pool, sizeof(cg_ca_entry_t) * CG_POLICY_CA_MAX);
    int n = cg_policy_load_cas(path, d->cas, CG_POLICY_CA_MAX, err, sizeof(err));
    if (n < 0)
        return apr_psprintf(cmd->pool, "CertGatePolicyAuthorizedCAs: %s", err);
    d->n_cas = n;
    d->ca_file = path;
    return NULL;
}

static const command_rec cg_cmds[] = {
    AP_INIT_FLAG("CertGate", set_gate, NULL, OR_AUTHCFG | RSRC_CONF,
                 "On to check client certificates against Redis registrations here"),
    AP_INIT_TAKE12("CertGateAppFrom", set_app_from, NULL, OR_AUTHCFG | RSRC_CONF,
                   "Where the request names its app: 'header NAME', 'env NAME' or 'none'"),
    AP_INIT_FLAG("CertGateForwardHeaders", set_forward_headers, NULL, OR_AUTHCFG | RSRC_CONF,
                 "On to set CertGate-* and RFC 9440 Client-Cert request headers on allow"),
    AP_INIT_TAKE1("CertGateRedis", set_redis, NULL, RSRC_CONF,
                  "Redis address: host:port or unix:/path (default 127.0.0.1:6379)"),
    AP_INIT_TAKE12("CertGateRedisAuth", set_redis_auth, NULL, RSRC_CONF,
                   "Redis AUTH: 'password' or 'user password'"),
    AP_INIT_TAKE1("CertGateRedisDB", set_redis_db, NULL, RSRC_CONF,
                  "Redis database number (default 0)"),
    AP_INIT_TAKE1("CertGateRedisTimeout", set_redis_timeout, NULL, RSRC_CONF,
                  "Bound on one store lookup in milliseconds, connect included (default 200)"),
    AP_INIT_TAKE1("CertGateRedisMaxIdle", set_redis_max_idle, NULL, RSRC_CONF,
                  "Idle Redis connections kept per child process (default 16)"),
    AP_INIT_TAKE1("CertGateKeyPrefix", set_prefix, NULL, RSRC_CONF,
                  "Prefix of every Redis key (default certgate:)"),
    AP_INIT_TAKE1("CertGateOnStoreError", set_on_store_error, NULL, RSRC_CONF,
                  "deny (default): 503 when the store fails; allow: let requests pass, loudly"),
    AP_INIT_FLAG("CertGateCache", set_cache, NULL, RSRC_CONF,
                 "On (default): cache registrations per connection and per process"),
    AP_INIT_TAKE1("CertGateCacheEntries", set_cache_entries, NULL, RSRC_CONF,
                  "Registrations cached per child process (default 10000)"),
    AP_INIT_TAKE1("CertGateCacheMaxAge", set_cache_max_age, NULL, RSRC_CONF,
                  "Seconds a cached registration is trusted at most (default 5)"),
    AP_INIT_TAKE1("CertGateUsageFlushInterval", set_usage_interval, NULL, RSRC_CONF,
                  "Seconds between batched writes of per-certificate usage (default 5), or off"),
    AP_INIT_ITERATE("CertGateExpiryWarnDays", add_expiry_day, NULL, RSRC_CONF,
                    "Days before expiry that emit cert.expiring, decreasing, or off "
                    "(default 90 60 30 7)"),
    AP_INIT_TAKE1("CertGateExpiryCheckInterval", set_expiry_interval, NULL, RSRC_CONF,
                  "Seconds between expiry scans (default 3600)"),
    AP_INIT_TAKE1("CertGateTestClockOffset", set_clock_offset, NULL, RSRC_CONF,
                  "TESTS ONLY: seconds added to the clock of decisions, the admin API and scans"),
    AP_INIT_ITERATE2("CertGateAdminRole", add_role, NULL, ACCESS_CONF | RSRC_CONF,
                     "CertGateAdminRole developer|manager|support|auditor user..."),
    AP_INIT_ITERATE2("CertGateAdminCustomer", add_customer, NULL, ACCESS_CONF | RSRC_CONF,
                     "CertGateAdminCustomer customerId user...: developers' customer"),
    AP_INIT_TAKE1("CertGateAdminUserMatch", set_user_match, NULL, ACCESS_CONF | RSRC_CONF,
                  "Exact (default): user names match byte for byte; IgnoreCase: ASCII case "
                  "is folded and names are recorded in lower case"),
    AP_INIT_FLAG("CertGateAdminSelfApprove", set_dir_flag, NULL, ACCESS_CONF | RSRC_CONF,
                 "On lets the uploader approve its own certificate (four-eyes off)"),
    AP_INIT_TAKE1("CertGateAdminMaxBody", set_dir_int, NULL, ACCESS_CONF | RSRC_CONF,
                  "Largest admin request body in bytes (default 8388608)"),
    AP_INIT_TAKE1("CertGateAdminTimeout", set_dir_int, NULL, ACCESS_CONF | RSRC_CONF,
                  "Redis budget of one admin request in milliseconds (default 2000)"),
    AP_INIT_TAKE1("CertGateExpiringSoonDays", set_dir_int, NULL, ACCESS_CONF | RSRC_CONF,
                  "Days before validTo that show as (EXPIRATION SOON) (default 30)"),
    AP_INIT_TAKE1("CertGatePolicyMinRsaBits", set_dir_int, NULL, ACCESS_CONF | RSRC_CONF,
                  "Smallest RSA key accepted on upload (default 2048)"),
    AP_INIT_TAKE2("CertGatePolicyValidityDays", set_validity_days, NULL, ACCESS_CONF | RSRC_CONF,
                  "min max days of leaf validity under a self-signed root (default 365 1095)"),
    AP_INIT_ITERATE("CertGatePolicyIssuerDeny", add_issuer_deny, NULL, ACCESS_CONF | RSRC_CONF,
                    "Issuer name patterns refused on upload, or none (default \"Let's Encrypt\")"),
    AP_INIT_TAKE1("CertGatePolicyAuthorizedCAs", set_ca_file, NULL, ACCESS_CONF | RSRC_CONF,
                  "File of authorized CAs: name|serial|YYYY-MM-DD|EV or - per line"),
    AP_INIT_FLAG("CertGatePolicyEvOnlyNew", set_dir_flag, NULL, ACCESS_CONF | RSRC_CONF,
                 "On: new enrolments must chain to an EV entry of the authorized CA list"),
    AP_INIT_FLAG("CertGatePolicyCnContainsOrg", set_dir_flag, NULL, ACCESS_CONF | RSRC_CONF,
                 "On: the CN must contain the app owner's organization name"),
    { NULL }
};

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

static int cg_init_server(server_rec *s, apr_pool_t *p, int is_proxy, SSL_CTX *ctx)
{
    (void)p;
    if (is_proxy || ctx == NULL)
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
        cg_srv_t *sc = srv_conf(v);
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
                                           now_sec(sc, apr_time_now()), days, n, err, sizeof(err));
        if (emitted < 0 && -emitted == CG_STORE_PERM) {
            ap_log_error(APLOG_MARK, APLOG_WARNING, 0, v, "CG08004: expiry scan refused by the "
                         "Redis ACL (permission): %s; grant the commands of the operator guide",
                         err);
        } else if (emitted < 0) {
            ap_log_error(APLOG_MARK, APLOG_WARNING, 0, v, "CG08003: expiry scan failed (%s): %s; "
                         "it runs again in CertGateExpiryCheckInterval",
                         cg_store_rc_name((cg_store_rc_t)-emitted), err);
        } else if (emitted > 0) {
            if (metrics)
                atomic_fetch_add_explicit(&metrics->expiry_events, (uint64_t)emitted,
                                          memory_order_relaxed);
            ap_log_error(APLOG_MARK, APLOG_INFO, 0, v, "CG08001: expiry scan emitted %d "
                         "event(s)", emitted);
        }
    }
    pthread_mutex_unlock(&wd_lock);
    return APR_SUCCESS;
}

static int cg_post_config(apr_pool_t *pconf, apr_pool_t *plog, apr_pool_t *ptemp, server_rec *s)
{
    char err[256];
    (void)plog; (void)ptemp;
    /* "mod_certgate/0.9.0" in the server signature (ServerTokens Full). */
    ap_add_version_component(pconf, "mod_certgate/" CG_VERSION);

    /* Counters for all children: anonymous shared memory made before the fork. */
    apr_shm_t *shm = NULL;
    metrics = NULL;
    if (apr_shm_create(&shm, sizeof(cg_metrics_t), NULL, pconf) == APR_SUCCESS) {
        metrics = apr_shm_baseaddr_get(shm);
        cg_metrics_init(metrics);
    } else {
        ap_log_error(APLOG_MARK, APLOG_WARNING, 0, s,
                     "CG04007: no shared memory for metrics; certgate-metrics shows zeros");
    }
    wd_get_instance = APR_RETRIEVE_OPTIONAL_FN(ap_watchdog_get_instance);
    wd_register_callback = APR_RETRIEVE_OPTIONAL_FN(ap_watchdog_register_callback);
    cg_srv_t *main_sc = srv_conf(s);
    if (gate_configured && (main_sc->expiry_days == NULL || main_sc->expiry_days->nelts > 0)) {
        ap_watchdog_t *wd = NULL;
        apr_interval_time_t every = apr_time_from_sec(main_sc->expiry_interval != UNSET
                                                      ? main_sc->expiry_interval : 3600);
        if (wd_get_instance == NULL || wd_register_callback == NULL ||
            wd_get_instance(&wd, "_certgate_expiry_", 0, 1, pconf) != APR_SUCCESS ||
            wd_register_callback(wd, every, s, expiry_watchdog) != APR_SUCCESS)
            ap_log_error(APLOG_MARK, APLOG_WARNING, 0, s,
                         "CG04008: mod_watchdog is not available; no expiry events");
    }

    if (gate_configured && ap_find_linked_module("mod_ssl.c") == NULL) {
        ap_log_error(APLOG_MARK, APLOG_EMERG, 0, s,
                     "CG04002: CertGate On is configured but mod_ssl is not loaded; "
                     "load ssl_module before mod_certgate");
        return HTTP_INTERNAL_SERVER_ERROR;
    }
    for (server_rec *v = s; v != NULL; v = v->next) {
        cg_gate_cfg_t cfg;
        cg_srv_t *sc = srv_conf(v);
        gate_cfg(sc, &cfg);
        if (cg_store_cfg_check(&cfg.store, err, sizeof(err)) != 0) {
            ap_log_error(APLOG_MARK, APLOG_EMERG, 0, v,
                         "CG04001: invalid Redis settings for %s: %s", v->server_hostname, err);
            return HTTP_INTERNAL_SERVER_ERROR;
        }
        if (gate_configured && sc->on_store_error_allow == 1)
            ap_log_error(APLOG_MARK, APLOG_WARNING, 0, v,
                         "CG05001: CertGateOnStoreError allow: requests pass unchecked "
                         "while Redis fails");
        /* httpd answers TRACE in map_to_storage, before the gate's fixups run. */
        core_server_config *core = ap_get_core_module_config(v->module_config);
        if (gate_configured && core != NULL && core->trace_enable != AP_TRACE_DISABLE) {
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

static void cg_child_init(apr_pool_t *p, server_rec *s)
{
    cg_srv_t *main_conf = srv_conf(s);

    cg_gate_set_log(gate_log);
    for (server_rec *v = s; v != NULL; v = v->next) {
        cg_srv_t *sc = srv_conf(v);
        if (v != s && !sc->own_store) {
            sc->gate = main_conf->gate;
            continue;
        }
        cg_gate_cfg_t cfg;
        gate_cfg(sc, &cfg);
        log_ctx_t *lc = apr_pcalloc(p, sizeof(*lc));
        lc->s = v;
        sc->gate = cg_gate_new(&cfg, metrics, lc);
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

/* Read the peer once per connection (and again after a renegotiation). */
static int load_peer(request_rec *r, cg_conn_t *cc, cg_peer_t *peer,
                     const char **cert_hdr, const char **chain_hdr)
{
    conn_rec *m = r->connection->master ? r->connection->master : r->connection;
    char err[128];
    int rc = 0;

    if (cc->lock == NULL)
        return -1;
    apr_thread_mutex_lock(cc->lock);
    X509 *leaf = SSL_get0_peer_certificate(cc->ssl);
    if (!cc->peer_ready || leaf != cc->seen_leaf) {
        cc->seen_leaf = leaf;
        cc->client_cert = cc->client_cert_chain = NULL;
        cc->peer_error = cg_tls_peer(cc->ssl, &cc->peer, err, sizeof(err)) != 0;
        if (cc->peer_error)
            ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, "CG03001: reading the client certificate "
                          "failed: %s", err);
        cc->peer_ready = 1;
    }
    if (cc->peer_error) {
        rc = -1;
    } else {
        *peer = cc->peer;
        if (cert_hdr != NULL) {
            build_forward_values(m, cc);
            *cert_hdr = cc->client_cert;
            *chain_hdr = cc->client_cert_chain;
        }
    }
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

static void export_allow(request_rec *r, const cg_dir_t *d, const cg_gate_verdict_t *v,
                         const char *cert_hdr, const char *chain_hdr)
{
    const char *days = apr_pstrdup(r->pool, v->expire_in);
    const char *app = apr_pstrdup(r->pool, v->reg.app_id);
    const char *id = apr_pstrdup(r->pool, v->reg.id);
    const char *fp = apr_pstrdup(r->pool, v->fp_hex);

    apr_table_setn(r->subprocess_env, "CERTGATE_APP_ID", app);
    apr_table_setn(r->subprocess_env, "CERTGATE_CERT_ID", id);
    apr_table_setn(r->subprocess_env, "CERTGATE_FINGERPRINT", fp);
    apr_table_setn(r->subprocess_env, "CERTGATE_EXPIRE_IN", days);
    apr_table_setn(r->subprocess_env, "CERTGATE_REASON", "allow");
    if (d->forward_headers == 1) {
        apr_table_setn(r->headers_in, "CertGate-App-Id", app);
        apr_table_setn(r->headers_in, "CertGate-Cert-Id", id);
        apr_table_setn(r->headers_in, "CertGate-Fingerprint", fp);
        apr_table_setn(r->headers_in, "CertGate-Expire-In", days);
        if (cert_hdr != NULL)
            apr_table_setn(r->headers_in, "Client-Cert", cert_hdr);
        if (chain_hdr != NULL)
            apr_table_setn(r->headers_in, "Client-Cert-Chain", chain_hdr);
    }
}

/* Whether name is one of ours for a backend: "Client_Cert" reaches CGI/WSGI
 * as HTTP_CLIENT_CERT just like "Client-Cert". */
static int is_forward_header(const char *name)
{
    size_t len = strlen(name);
    for (int i = 0; forward_headers[i] != NULL; i++)
        if (cg_header_name_same(name, len, forward_headers[i], strlen(forward_headers[i])))
            return 1;
    return 0;
}

static void strip_incoming(request_rec *r)
{
    const apr_array_header_t *arr = apr_table_elts(r->headers_in);
    const apr_table_entry_t *e = (const apr_table_entry_t *)arr->elts;
    apr_array_header_t *drop = NULL;

    /* Collect first: unsetting while walking the table would skip entries. */
    for (int i = 0; i < arr->nelts; i++) {
        if (e[i].key == NULL || !is_forward_header(e[i].key))
            continue;
        if (drop == NULL)
            drop = apr_array_make(r->pool, 4, sizeof(const char *));
        *(const char **)apr_array_push(drop) = e[i].key;
    }
    for (int i = 0; drop != NULL && i < drop->nelts; i++)
        apr_table_unset(r->headers_in, ((const char **)drop->elts)[i]);
    for (int i = 0; export_vars[i] != NULL; i++)
        apr_table_unset(r->subprocess_env, export_vars[i]);
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

static int cg_fixups(request_rec *r)
{
    cg_dir_t *d = ap_get_module_config(r->per_dir_config, &certgate_module);
    if (d == NULL || d->enabled != 1)
        return DECLINED;

    request_rec *first = r;
    while (first->main != NULL)
        first = first->main;
    while (first->prev != NULL)
        first = first->prev;
    /* The first request's decision stands for its subrequests and redirects
     * (an ErrorDocument for our 403 must not be gated again). An ungated first
     * request does not exempt a gated redirect target: that is checked here. */
    if (first != r) {
        const char *note = apr_table_get(first->notes, NOTE_DECISION);
        if (note != NULL) {
            strip_incoming(r);
            if (strcmp(note, "allow") == 0)
                copy_exports(r, first);
            return DECLINED;
        }
    }

    strip_incoming(r);
    cg_srv_t *sc = srv_conf(r->server);
    cg_conn_t *cc = conn_state(r->connection);
    cg_peer_t peer;
    const char *cert_hdr = NULL, *chain_hdr = NULL;
    const char *app = NULL;
    int app_ambiguous = 0;

    memset(&peer, 0, sizeof(peer));
    if (cc == NULL) {
        ap_log_rerror(APLOG_MARK, APLOG_DEBUG, 0, r,
                      "CG03002: gated location reached without TLS from mod_ssl");
    } else if (load_peer(r, cc, &peer,
                         d->forward_headers == 1 ? &cert_hdr : NULL, &chain_hdr) != 0) {
        /* Treat an unreadable certificate like a missing one: deny. */
        memset(&peer, 0, sizeof(peer));
    }
    if (d->app_from == APP_FROM_HEADER || d->app_from == APP_FROM_ENV) {
        app = request_app(r, d, &app_ambiguous);
        if (app == NULL)
            app = "";   /* the request names no app: nothing can match */
    }
    if (sc->gate == NULL) {     /* no memory at child start (CG04004) */
        apr_table_setn(r->notes, NOTE_DECISION, "store_unavailable");
        return respond_deny(r, CG_R_STORE_UNAVAILABLE);
    }

    log_ctx_t lc = { r->server, r };
    int with_conn = cc != NULL && cc->lock != NULL;
    cg_gate_in_t in = {
        .peer = &peer,
        .app = app,
        .app_ambiguous = app_ambiguous,
        .fail_open = sc->on_store_error_allow == 1,
        .now = now_sec(sc, r->request_time),
        .client = r->useragent_ip,
        .log_ctx = &lc,
        .conn = with_conn ? &cc->dc : NULL,
        .lock = with_conn ? conn_lock : NULL,
        .lock_arg = with_conn ? cc->lock : NULL,
    };
    cg_gate_verdict_t v;
    cg_gate_run(sc->gate, &in, &v);
    apr_table_setn(r->notes, NOTE_DECISION, cg_reason_name(v.reason));
    if (v.reason == CG_ALLOW) {
        export_allow(r, d, &v, cert_hdr, chain_hdr);
        return DECLINED;
    }
    if (v.pass) {   /* fail-open (CG02002) */
        apr_table_setn(r->subprocess_env, "CERTGATE_REASON", cg_reason_name(v.reason));
        return DECLINED;
    }
    return respond_deny(r, v.reason);
}

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

static int cg_admin_handler(request_rec *r)
{
    if (r->handler == NULL || strcmp(r->handler, "certgate-admin") != 0)
        return DECLINED;
    cg_dir_t *d = ap_get_module_config(r->per_dir_config, &certgate_module);
    cg_srv_t *sc = srv_conf(r->server);
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
        req.now = now_sec(sc, r->request_time);
        cg_admin_handle(&cfg, cg_gate_store(sc->gate), &req, &resp);
    }
    ap_log_rerror(APLOG_MARK, resp.status >= 500 ? APLOG_ERR : APLOG_INFO, 0, r,
                  "CG06001: admin %s %s -> %d user=%s client=%s", r->method,
                  ap_escape_logitem(r->pool, path), resp.status,
                  r->user ? ap_escape_logitem(r->pool, r->user) : "-", r->useragent_ip);
    int rc = send_admin(r, &resp, base);
    cg_admin_resp_free(&resp);
    return rc;
}

static int cg_metrics_handler(request_rec *r)
{
    if (r->handler == NULL || strcmp(r->handler, "certgate-metrics") != 0)
        return DECLINED;
    if (r->method_number != M_GET)
        return HTTP_METHOD_NOT_ALLOWED;
    cg_srv_t *sc = srv_conf(r->server);
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
              : cg_admin_store_stats(store, acfg.timeout_ms, now_sec(sc, r->request_time),
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
    char *text = cg_metrics_render(metrics ? metrics : &zero, &stats);
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

static void register_hooks(apr_pool_t *p)
{
    static const char *const after_ssl[] = { "mod_ssl.c", NULL };
    (void)p;
    ap_hook_post_config(cg_post_config, after_ssl, NULL, APR_HOOK_MIDDLE);
    ap_hook_child_init(cg_child_init, NULL, NULL, APR_HOOK_MIDDLE);
    /* Fixups run for every request whatever Satisfy says, after authn/authz
     * modules that may name the app, and before any handler or proxy. */
    ap_hook_fixups(cg_fixups, NULL, NULL, APR_HOOK_REALLY_FIRST);
    ap_hook_handler(cg_admin_handler, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_handler(cg_metrics_handler, NULL, NULL, APR_HOOK_MIDDLE);
    APR_OPTIONAL_HOOK(ssl, pre_handshake, cg_pre_handshake, NULL, NULL, APR_HOOK_MIDDLE);
    APR_OPTIONAL_HOOK(ssl, init_server, cg_init_server, NULL, NULL, APR_HOOK_MIDDLE);
}

AP_DECLARE_MODULE(certgate) = {
    STANDARD20_MODULE_STUFF,
    create_dir,
    merge_dir,
    create_srv,
    merge_srv,
    cg_cmds,
    register_hooks,
    0
};
