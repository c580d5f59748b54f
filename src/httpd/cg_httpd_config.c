/* The httpd adapter's directives: server and directory configs and their merges. */
#include <string.h>

#include "httpd.h"
#include "http_config.h"
#include "http_log.h"
#include "apr_hash.h"
#include "apr_strings.h"

#include "cg_admin.h"
#include "cg_httpd.h"
#include "cg_reg.h"
#include "cg_sentinel.h"
#include "cg_store.h"

/* Log lines of this file are certgate's: LogLevel certgate:... applies. */
APLOG_USE_MODULE(certgate);

/* ---------------------------------------------------------------- config */

void *cgh_create_srv(apr_pool_t *p, server_rec *s)
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
    c->sentinel_timeout_ms = UNSET;
    c->wait_replicas = UNSET;
    return c;
}

void *cgh_merge_srv(apr_pool_t *p, void *basev, void *addv)
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
    c->stale_s = add->on_store_error_allow != UNSET ? add->stale_s : base->stale_s;
    c->max_idle = add->max_idle != UNSET ? add->max_idle : base->max_idle;
    c->cache_on = add->cache_on != UNSET ? add->cache_on : base->cache_on;
    c->cache_entries = add->cache_entries != UNSET ? add->cache_entries : base->cache_entries;
    c->cache_max_age = add->cache_max_age != UNSET ? add->cache_max_age : base->cache_max_age;
    c->usage_interval = add->usage_interval != UNSET ? add->usage_interval : base->usage_interval;
    c->expiry_days = add->expiry_days ? add->expiry_days : base->expiry_days;
    c->expiry_interval = add->expiry_interval != UNSET ? add->expiry_interval
                                                       : base->expiry_interval;
    c->clock_offset = add->clock_offset != UNSET ? add->clock_offset : base->clock_offset;
    c->sentinels = add->sentinels ? add->sentinels : base->sentinels;
    c->master_name = add->master_name ? add->master_name : base->master_name;
    c->sentinel_user = add->sentinel_password ? add->sentinel_user : base->sentinel_user;
    c->sentinel_password = add->sentinel_password ? add->sentinel_password
                                                  : base->sentinel_password;
    c->sentinel_timeout_ms = add->sentinel_timeout_ms != UNSET ? add->sentinel_timeout_ms
                                                               : base->sentinel_timeout_ms;
    c->wait_replicas = add->wait_replicas != UNSET ? add->wait_replicas : base->wait_replicas;
    c->wait_timeout_ms = add->wait_replicas != UNSET ? add->wait_timeout_ms
                                                     : base->wait_timeout_ms;
    return c;
}

void *cgh_create_dir(apr_pool_t *p, char *dir)
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
    c->shadow = UNSET;
    return c;
}

#define MERGE_INT(f) c->f = add->f != UNSET ? add->f : base->f
#define MERGE_PTR(f) c->f = add->f != NULL ? add->f : base->f

/* Whether a sets nothing but the admin base its section's path gives it (a
 * <Location> without certgate directives): most merges per request. Checks
 * every field of cg_dir_t but admin_base, app_name and cas (set with app_from,
 * n_cas): a new field must be added here. */
static int dir_unset_check(const cg_dir_t *a)
{
    return a->enabled == UNSET && a->app_from == APP_FROM_UNSET && a->forward_headers == UNSET &&
           a->roles == NULL && a->customers == NULL && a->self_approve == UNSET &&
           a->soon_days == UNSET && a->min_rsa_bits == UNSET && a->min_days == UNSET &&
           a->max_days == UNSET && a->deny == NULL && a->ca_file == NULL && a->n_cas == UNSET &&
           a->ev_only_new == UNSET && a->cn_contains_org == UNSET && a->max_body == UNSET &&
           a->admin_timeout_ms == UNSET && a->user_ignore_case == UNSET && a->shadow == UNSET;
}

/* Configurations do not change once read: the answer is kept in the
 * configuration (threads racing to store it store the same value). */
static int dir_unset(cg_dir_t *a)
{
    int k = __atomic_load_n(&a->unset_known, __ATOMIC_RELAXED);
    if (k == 0) {
        k = dir_unset_check(a) ? 1 : 2;
        __atomic_store_n(&a->unset_known, k, __ATOMIC_RELAXED);
    }
    return k == 1;
}

void *cgh_merge_dir(apr_pool_t *p, void *basev, void *addv)
{
    cg_dir_t *base = basev, *add = addv, *c;
    /* Configurations are read-only once parsed: where the merge would equal
     * add, add itself is the answer (no copy per request and section). */
    int add_unset = dir_unset(add), base_unset = dir_unset(base);
    if (base_unset && (add->admin_base != NULL || base->admin_base == NULL) &&
        (add->app_from != APP_FROM_UNSET || base->app_name == NULL) &&
        (add->n_cas != UNSET || base->cas == NULL))
        return add;
    if (add_unset) {
        /* Same result as the field-by-field merge below, without it. */
        c = apr_palloc(p, sizeof(*c));
        *c = *base;
        if (add->admin_base != NULL)
            c->admin_base = add->admin_base;
        return c;
    }
    if (base_unset) {
        /* Every field add leaves unset would come from base, and is unset there too. */
        c = apr_palloc(p, sizeof(*c));
        *c = *add;
        if (add->admin_base == NULL)
            c->admin_base = base->admin_base;
        if (add->app_from == APP_FROM_UNSET)
            c->app_name = base->app_name;
        if (add->n_cas == UNSET)
            c->cas = base->cas;
        return c;
    }
    c = apr_pcalloc(p, sizeof(*c));
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
    MERGE_INT(shadow);
    return c;
}

cg_srv_t *cgh_srv_conf(server_rec *s)
{
    return ap_get_module_config(s->module_config, &certgate_module);
}

/* Effective values: an UNSET field takes the core's default. */
void cgh_gate_cfg(const cg_srv_t *c, cg_gate_cfg_t *out)
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
    out->store.sentinels = c->sentinels;
    out->store.master_name = c->master_name;
    out->store.sentinel_user = c->sentinel_user;
    out->store.sentinel_password = c->sentinel_password;
    if (c->sentinel_timeout_ms != UNSET)
        out->store.sentinel_timeout_ms = c->sentinel_timeout_ms;
    out->stale_keep_s = c->stale_s > 0 ? c->stale_s : 0;
    if (c->wait_replicas != UNSET) {
        out->store.wait_replicas = c->wait_replicas;
        out->store.wait_timeout_ms = c->wait_timeout_ms;
    }
}

static const char *set_redis(cmd_parms *cmd, void *d, const char *arg)
{
    cg_srv_t *c = cgh_srv_conf(cmd->server);
    (void)d;
    c->own_store = 1;
    c->addr_set = 1;
    if (strncmp(arg, "unix:", 5) == 0) {
        if (arg[5] != '/')
            return apr_psprintf(cmd->pool, "CertGateRedis: unix: needs an absolute socket path, "
                                "e.g. unix:/run/redis/redis.sock, got '%s'", arg);
        c->socket = arg + 5;
        c->host = NULL;
        return NULL;
    }
    const char *colon = strrchr(arg, ':');
    if (colon == NULL || colon == arg || colon[1] == '\0')
        return apr_psprintf(cmd->pool, "CertGateRedis: expected host:port or unix:/path, got '%s'",
                            arg);
    char *end = NULL;
    long port = strtol(colon + 1, &end, 10);
    if (*end != '\0' || port < 1 || port > 65535)
        return apr_psprintf(cmd->pool, "CertGateRedis: the port must be a number from 1 to 65535, "
                            "got '%s'", arg);
    c->host = apr_pstrmemdup(cmd->pool, arg, (apr_size_t)(colon - arg));
    c->port = (int)port;
    c->socket = NULL;
    return NULL;
}

static const char *set_redis_auth(cmd_parms *cmd, void *d, const char *a1, const char *a2)
{
    cg_srv_t *c = cgh_srv_conf(cmd->server);
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
    cg_srv_t *c = cgh_srv_conf(cmd->server);
    (void)d;
    c->own_store = 1;
    return parse_int(cmd, arg, 0, CG_GATE_DB_MAX, &c->db);
}

static const char *set_redis_timeout(cmd_parms *cmd, void *d, const char *arg)
{
    (void)d;
    cgh_srv_conf(cmd->server)->own_store = 1;
    return parse_int(cmd, arg, CG_GATE_TIMEOUT_MS_MIN, CG_GATE_TIMEOUT_MS_MAX,
                     &cgh_srv_conf(cmd->server)->timeout_ms);
}

static const char *set_redis_max_idle(cmd_parms *cmd, void *d, const char *arg)
{
    (void)d;
    cgh_srv_conf(cmd->server)->own_store = 1;
    return parse_int(cmd, arg, 0, CG_GATE_MAX_IDLE_MAX, &cgh_srv_conf(cmd->server)->max_idle);
}

static const char *set_prefix(cmd_parms *cmd, void *d, const char *arg)
{
    cg_srv_t *c = cgh_srv_conf(cmd->server);
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
    cgh_srv_conf(cmd->server)->cache_on = on;
    cgh_srv_conf(cmd->server)->own_store = 1;
    return NULL;
}

static const char *set_cache_entries(cmd_parms *cmd, void *d, const char *arg)
{
    cg_srv_t *c = cgh_srv_conf(cmd->server);
    (void)d;
    c->own_store = 1;
    return parse_int(cmd, arg, CG_GATE_CACHE_ENTRIES_MIN, CG_GATE_CACHE_ENTRIES_MAX,
                     &c->cache_entries);
}

static const char *set_cache_max_age(cmd_parms *cmd, void *d, const char *arg)
{
    cg_srv_t *c = cgh_srv_conf(cmd->server);
    (void)d;
    c->own_store = 1;
    return parse_int(cmd, arg, CG_GATE_CACHE_MAX_AGE_MIN, CG_GATE_CACHE_MAX_AGE_MAX,
                     &c->cache_max_age);
}

static const char *set_usage_interval(cmd_parms *cmd, void *d, const char *arg)
{
    (void)d;
    if (strcasecmp(arg, "off") == 0) {
        cgh_srv_conf(cmd->server)->usage_interval = 0;
        return NULL;
    }
    if (parse_int(cmd, arg, 1, CG_GATE_USAGE_INTERVAL_MAX,
                  &cgh_srv_conf(cmd->server)->usage_interval) != NULL)
        return apr_psprintf(cmd->pool, "CertGateUsageFlushInterval: expected off or a whole "
                            "number of seconds from 1 to %d, got '%s'",
                            CG_GATE_USAGE_INTERVAL_MAX, arg);
    return NULL;
}

static const char *set_expiry_interval(cmd_parms *cmd, void *d, const char *arg)
{
    (void)d;
    return parse_int(cmd, arg, 1, 86400, &cgh_srv_conf(cmd->server)->expiry_interval);
}

static const char *set_clock_offset(cmd_parms *cmd, void *d, const char *arg)
{
    (void)d;
    return parse_int(cmd, arg, -100000000, 100000000, &cgh_srv_conf(cmd->server)->clock_offset);
}

static const char *add_expiry_day(cmd_parms *cmd, void *d, const char *arg)
{
    cg_srv_t *c = cgh_srv_conf(cmd->server);
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

static const char *set_on_store_error(cmd_parms *cmd, void *d, const char *arg,
                                      const char *secs)
{
    cg_srv_t *c = cgh_srv_conf(cmd->server);
    (void)d;
    c->stale_s = 0;
    if (strcasecmp(arg, "stale") == 0) {
        if (secs == NULL)
            return "CertGateOnStoreError: stale needs a number of seconds, e.g. stale 30";
        c->on_store_error_allow = 0;
        return parse_int(cmd, secs, 1, CG_GATE_STALE_MAX_S, &c->stale_s);
    }
    if (secs != NULL)
        return "CertGateOnStoreError: only stale takes a number";
    if (strcasecmp(arg, "deny") == 0)
        c->on_store_error_allow = 0;
    else if (strcasecmp(arg, "allow") == 0)
        c->on_store_error_allow = 1;
    else
        return apr_psprintf(cmd->pool, "CertGateOnStoreError: expected deny, allow or "
                            "stale SECONDS, got '%s'", arg);
    return NULL;
}

/* Sentinel discovery (cg_sentinel.h): the list, the name, their own credentials. */
static const char *set_sentinels(cmd_parms *cmd, void *d, const char *arg)
{
    cg_srv_t *c = cgh_srv_conf(cmd->server);
    char err[160];
    (void)d;
    c->own_store = 1;
    if (cg_sentinel_cfg_check(arg, "x", CG_SENTINEL_TIMEOUT_MS_DEFAULT, err, sizeof(err)) != 0)
        return apr_psprintf(cmd->pool, "CertGateRedisSentinels: %s", err);
    c->sentinels = c->sentinels ? apr_pstrcat(cmd->pool, c->sentinels, " ", arg, NULL) : arg;
    return NULL;
}

static const char *set_master_name(cmd_parms *cmd, void *d, const char *arg)
{
    cg_srv_t *c = cgh_srv_conf(cmd->server);
    char err[160];
    (void)d;
    c->own_store = 1;
    if (cg_sentinel_cfg_check("h:1", arg, CG_SENTINEL_TIMEOUT_MS_DEFAULT, err, sizeof(err)) != 0)
        return apr_psprintf(cmd->pool, "CertGateRedisMasterName: %s", err);
    c->master_name = arg;
    return NULL;
}

static const char *set_sentinel_auth(cmd_parms *cmd, void *d, const char *a1, const char *a2)
{
    cg_srv_t *c = cgh_srv_conf(cmd->server);
    (void)d;
    c->own_store = 1;
    c->sentinel_user = a2 ? a1 : NULL;
    c->sentinel_password = a2 ? a2 : a1;
    if (c->sentinel_password[0] == '\0')
        return "CertGateRedisSentinelAuth: the password is empty";
    return NULL;
}

static const char *set_sentinel_timeout(cmd_parms *cmd, void *d, const char *arg)
{
    cg_srv_t *c = cgh_srv_conf(cmd->server);
    (void)d;
    c->own_store = 1;
    return parse_int(cmd, arg, 1, 60000, &c->sentinel_timeout_ms);
}

/* Admin writes wait for replicas (WAIT): 'N [timeout-ms]'. */
static const char *set_wait_replicas(cmd_parms *cmd, void *d, const char *n, const char *ms)
{
    cg_srv_t *c = cgh_srv_conf(cmd->server);
    const char *e;
    (void)d;
    c->own_store = 1;
    if ((e = parse_int(cmd, n, 0, CG_STORE_WAIT_REPLICAS_MAX, &c->wait_replicas)) != NULL)
        return e;
    c->wait_timeout_ms = CG_STORE_WAIT_TIMEOUT_MS_DEFAULT;
    return ms ? parse_int(cmd, ms, 1, CG_STORE_TIMEOUT_MS_MAX, &c->wait_timeout_ms) : NULL;
}

static const char *set_gate(cmd_parms *cmd, void *dv, int on)
{
    cg_dir_t *d = dv;
    (void)cmd;
    d->enabled = on;
    if (on)
        cgh_gate_configured = 1;
    return NULL;
}

static const char *set_mode(cmd_parms *cmd, void *dv, const char *arg)
{
    cg_dir_t *d = dv;
    (void)cmd;
    if (strcasecmp(arg, "Enforce") == 0) {
        d->shadow = 0;
        return NULL;
    }
    if (strcasecmp(arg, "Shadow") != 0)
        return "CertGateMode: expected Enforce or Shadow";
    d->shadow = 1;
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

const command_rec cgh_cmds[] = {
    AP_INIT_FLAG("CertGate", set_gate, NULL, OR_AUTHCFG | RSRC_CONF,
                 "On to check client certificates against Redis registrations here"),
    AP_INIT_TAKE1("CertGateMode", set_mode, NULL, OR_AUTHCFG | RSRC_CONF,
                  "Enforce (default): refuse what the gate denies; Shadow: decide, log and "
                  "count, refuse nothing"),
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
    AP_INIT_ITERATE("CertGateRedisSentinels", set_sentinels, NULL, RSRC_CONF,
                    "Find the Redis master through these sentinels: host:port ..."),
    AP_INIT_TAKE1("CertGateRedisMasterName", set_master_name, NULL, RSRC_CONF,
                  "The master name the sentinels monitor (needed with CertGateRedisSentinels)"),
    AP_INIT_TAKE12("CertGateRedisSentinelAuth", set_sentinel_auth, NULL, RSRC_CONF,
                   "AUTH to the sentinels: 'password' or 'user password'"),
    AP_INIT_TAKE1("CertGateRedisSentinelTimeout", set_sentinel_timeout, NULL, RSRC_CONF,
                  "Bound on asking one sentinel in milliseconds (default 300)"),
    AP_INIT_TAKE12("CertGateAdminWaitReplicas", set_wait_replicas, NULL, RSRC_CONF,
                   "Admin writes are done once N replicas acknowledged them: 'N [timeout-ms]' "
                   "(default 0: no wait; timeout 500)"),
    AP_INIT_TAKE12("CertGateOnStoreError", set_on_store_error, NULL, RSRC_CONF,
                   "deny (default): 503 when the store fails; allow: let requests pass, loudly; "
                   "stale N: allow what a registration read less than N s ago allows"),
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

