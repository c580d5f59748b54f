/*
 * ngx_http_certgate_module: the nginx adapter of mod_certgate. It reads the
 * client leaf and chain from the connection's SSL*, asks the core (src/) for
 * the decision, and turns it into a response. Redis I/O never blocks the
 * worker: lookups go through hiredis's async client on nginx's event loop and
 * the gate's handler is re-entered when the reply (or the timeout) arrives.
 * The gate runs first in the rewrite phase, so a location's own "return" or
 * "rewrite" cannot answer before it; an app named by a variable is checked
 * first in the precontent phase, after the access phase ran auth_request_set,
 * and where no "satisfy any" can skip it.
 */
#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "cg_cache.h"
#include "cg_decide.h"
#include "cg_gate.h"
#include "cg_store.h"
#include "cg_tls.h"
#include "ngx_certgate_redis.h"
#include "ngx_certgate_metrics.h"
#include "ngx_certgate_admin.h"
#include "ngx_certgate_bg.h"
#include "cg_sentinel.h"

#define CG_ANY_CONF (NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF)

#define APP_FROM_NONE 0
#define APP_FROM_HEADER 1
#define APP_FROM_VARIABLE 2

typedef struct {
    cg_ngx_redis_conf_t redis;
    ngx_flag_t redis_set;
    ngx_msec_t timeout;
    ngx_str_t prefix;
    ngx_flag_t cache;
    ngx_uint_t cache_entries;
    ngx_uint_t cache_max_age;     /* seconds */
    ngx_uint_t usage_interval;    /* seconds; 0: off */
    ngx_flag_t used;              /* some location says certgate on */
    ngx_flag_t app_var_used;      /* some certgate_app_from variable: the precontent
                                   * handler and the header filter are needed */
    ngx_shm_zone_t *metrics_zone; /* the workers' shared counters */
    ngx_str_t sentinels;          /* certgate_redis_sentinels, space separated */
    ngx_str_t master_name;
    ngx_str_t sentinel_user, sentinel_password;
    ngx_msec_t sentinel_timeout;
    ngx_int_t wait_replicas;      /* certgate_admin_wait_replicas N [ms]; unset: 0 */
    ngx_int_t wait_ms;
    /* The longest stale window of this config: the worker's cache keeps entries that
     * long. Here, not in a static: a rejected reload must not leave its value. */
    ngx_int_t stale_keep_max;
    /* Where certgate on is set: the servers (core srv confs), or all if at
     * http level. Only they, and servers sharing a port, need the ticket callback. */
    ngx_array_t *gated_servers;
    ngx_flag_t gated_all;
} cg_main_conf_t;

/* Where a directive was written, for checks made after parsing. */
typedef struct {
    ngx_str_t file;
    ngx_uint_t line;
    ngx_flag_t warned;
} cg_conf_at_t;

typedef struct {
    ngx_flag_t enabled;
    ngx_uint_t app_from;
    ngx_str_t app_name;           /* header name, or variable name without '$' */
    ngx_int_t app_var;            /* variable index for APP_FROM_VARIABLE */
    ngx_flag_t forward_headers;
    ngx_uint_t on_store_error;    /* 0 deny, 1 allow */
    ngx_uint_t shadow;            /* certgate_mode: 0 enforce, 1 shadow */
    cg_conf_at_t *on_store_error_at;
    ngx_int_t stale_s;            /* certgate_on_store_error stale N: N; else 0 */
} cg_loc_conf_t;

/* Per TLS connection (HTTP/2 streams share the real connection's). */
typedef struct {
    X509 *seen_leaf;
    unsigned peer_ready:1;
    unsigned peer_error:1;
    cg_peer_t peer;
    ngx_str_t client_cert, client_cert_chain;   /* RFC 9440, built on first use */
    /* The values the last allow exported, in the connection's pool: they
     * change only with the registration or the day. */
    ngx_str_t x_app, x_id, x_fp, x_days;
    /* The registration this connection last used, while the cache version holds. */
    cg_conn_entry_t dc;
    char x5t[CG_X5T_S256_LEN + 1];  /* RFC 8705 thumbprint of the leaf, "" without one */
    uint64_t x_gen;                 /* the verdict's conn_gen x_app, x_id, x_fp were made for */
    uint64_t x_days_gen;            /* x_days is the days left of that conn_gen's */
    int64_t x_days_at;              /* registration at this second */
    char ip[NGX_SOCKADDR_STRLEN + 1];   /* the client's address, for the core's log lines */
    size_t ip_len;
    const u_char *ip_src;           /* HTTP/1: the addr_text.data ip was copied from */
    uint64_t ip_seq;                /* new at every copy into ip (cg_gate_in_t.client_seq) */
    /* HTTP/1: the state of the connection's current main request (allocated
     * with this state, reused by the next one), no allocation per request.
     * Its own only while slot_r and slot_requests (c->requests, counted per
     * request) are the request's: a later request never sees it. */
    struct cg_req_s *slot;
    ngx_http_request_t *slot_r;
    ngx_uint_t slot_requests;
} cg_conn_t;

/* ST_CERT_OK: the rewrite phase admitted the certificate for everything but
 * the app, which comes from a variable and is checked in the precontent phase. */
enum { ST_NEW = 0, ST_PENDING, ST_LOOKED_UP, ST_CERT_OK, ST_DECIDED };

typedef struct cg_lookup_s cg_lookup_t;

/* Per request, in r->pool (HTTP/1: the connection's slot); found again after
 * an internal redirect. */
typedef struct cg_req_s {
    ngx_http_request_t *r;
    /* The request it was made for (NULL: the slot, its main request's): the
     * main request's pool also holds its subrequests' states, and a sibling's
     * is not theirs. */
    ngx_http_request_t *owner;
    int state;
    cg_lookup_t *lookup;          /* in flight, or NULL */
    /* Over 2 kB together: from the request's pool only when needed (a cache miss,
     * a cert_only allow), not for every request. */
    cg_gate_lookup_t *lk;         /* the lookup's state, and its answer once in */
    cg_gate_verdict_t *v;         /* ST_CERT_OK: the certificate's verdict */
    /* The decision, for variables and for redirects after it. */
    cg_reason_t reason;
    ngx_int_t app_var;            /* ST_CERT_OK: the variable naming the app */
    unsigned shadow:1;            /* ST_CERT_OK: the gated location is in shadow mode */
    unsigned not_enforced:1;      /* the deny in reason let the request through */
    unsigned ev_ready:1;          /* ev set up, the cleanup added (a slot: at its
                                   * request's first lookup) */
    unsigned exported:1;          /* an allow set the strings below */
    /* A slot's reuse (cg_req_new) resets each field above by name, not these. */
    ngx_str_t app_id, cert_id, fingerprint, expire_in;
    ngx_str_t x5t_s256;           /* on allow */
    ngx_event_t ev;               /* the timeout, and the resume once the reply is in */
} cg_req_t;

/* Outlives the request if it must: hiredis owns it until its last callback. */
struct cg_lookup_s {
    cg_req_t *req;                /* NULL once the request is gone or gave up */
    cg_gate_lookup_t lk;
};

static ngx_int_t cg_init(ngx_conf_t *cf);
static ngx_int_t cg_add_variables(ngx_conf_t *cf);
static void *cg_create_main_conf(ngx_conf_t *cf);
static char *cg_init_main_conf(ngx_conf_t *cf, void *conf);
static void *cg_create_loc_conf(ngx_conf_t *cf);
static char *cg_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child);
static char *cg_set_redis(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
static char *cg_set_redis_auth(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
static char *cg_set_app_from(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
static char *cg_set_sentinels(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
static char *cg_set_sentinel_auth(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
static char *cg_set_wait_replicas(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
static char *cg_set_gate(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
static char *cg_set_metrics(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
static char *cg_set_number(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
static char *cg_set_timeout(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
static char *cg_set_prefix(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
static char *cg_set_store_error(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
static char *cg_set_mode(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
static ngx_int_t cg_init_process(ngx_cycle_t *cycle);
static ngx_int_t cg_rewrite_handler(ngx_http_request_t *r);
static ngx_int_t cg_app_handler(ngx_http_request_t *r);
static ngx_http_output_header_filter_pt cg_next_header_filter;
static void cg_exit_process(ngx_cycle_t *cycle);

/* The accepted values of a whole-number directive (cg_set_number). */
typedef struct {
    ngx_int_t min, max;
    const char *unit;             /* "" or " seconds" (said only with "off") */
    ngx_flag_t off;               /* "off" is accepted and means 0 */
} cg_range_t;

static cg_range_t cg_db_range = { 0, CG_GATE_DB_MAX, "", 0 };
static cg_range_t cg_entries_range = {
    CG_GATE_CACHE_ENTRIES_MIN, CG_GATE_CACHE_ENTRIES_MAX, "", 0
};
static cg_range_t cg_age_range = {
    CG_GATE_CACHE_MAX_AGE_MIN, CG_GATE_CACHE_MAX_AGE_MAX, "", 0
};
static cg_range_t cg_usage_range = { 0, CG_GATE_USAGE_INTERVAL_MAX, " seconds", 1 };

static ngx_command_t cg_commands[] = {
    { ngx_string("certgate"), CG_ANY_CONF | NGX_CONF_FLAG,
      cg_set_gate, NGX_HTTP_LOC_CONF_OFFSET, offsetof(cg_loc_conf_t, enabled), NULL },
    { ngx_string("certgate_app_from"), CG_ANY_CONF | NGX_CONF_TAKE12,
      cg_set_app_from, NGX_HTTP_LOC_CONF_OFFSET, 0, NULL },
    { ngx_string("certgate_forward_headers"), CG_ANY_CONF | NGX_CONF_FLAG,
      ngx_conf_set_flag_slot, NGX_HTTP_LOC_CONF_OFFSET, offsetof(cg_loc_conf_t, forward_headers),
      NULL },
    { ngx_string("certgate_on_store_error"), CG_ANY_CONF | NGX_CONF_TAKE12,
      cg_set_store_error, NGX_HTTP_LOC_CONF_OFFSET, 0, NULL },
    { ngx_string("certgate_mode"), CG_ANY_CONF | NGX_CONF_TAKE1,
      cg_set_mode, NGX_HTTP_LOC_CONF_OFFSET, 0, NULL },
    { ngx_string("certgate_redis"), NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
      cg_set_redis, NGX_HTTP_MAIN_CONF_OFFSET, 0, NULL },
    { ngx_string("certgate_redis_auth"), NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE12,
      cg_set_redis_auth, NGX_HTTP_MAIN_CONF_OFFSET, 0, NULL },
    { ngx_string("certgate_redis_sentinels"), NGX_HTTP_MAIN_CONF | NGX_CONF_1MORE,
      cg_set_sentinels, NGX_HTTP_MAIN_CONF_OFFSET, 0, NULL },
    { ngx_string("certgate_redis_master_name"), NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
      ngx_conf_set_str_slot, NGX_HTTP_MAIN_CONF_OFFSET, offsetof(cg_main_conf_t, master_name),
      NULL },
    { ngx_string("certgate_redis_sentinel_auth"), NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE12,
      cg_set_sentinel_auth, NGX_HTTP_MAIN_CONF_OFFSET, 0, NULL },
    { ngx_string("certgate_admin_wait_replicas"), NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE12,
      cg_set_wait_replicas, NGX_HTTP_MAIN_CONF_OFFSET, 0, NULL },
    { ngx_string("certgate_redis_sentinel_timeout"), NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot, NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(cg_main_conf_t, sentinel_timeout), NULL },
    { ngx_string("certgate_redis_db"), NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
      cg_set_number, NGX_HTTP_MAIN_CONF_OFFSET, offsetof(cg_main_conf_t, redis.db),
      &cg_db_range },
    { ngx_string("certgate_redis_timeout"), NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
      cg_set_timeout, NGX_HTTP_MAIN_CONF_OFFSET, offsetof(cg_main_conf_t, timeout), NULL },
    { ngx_string("certgate_key_prefix"), NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
      cg_set_prefix, NGX_HTTP_MAIN_CONF_OFFSET, offsetof(cg_main_conf_t, prefix), NULL },
    { ngx_string("certgate_cache"), NGX_HTTP_MAIN_CONF | NGX_CONF_FLAG,
      ngx_conf_set_flag_slot, NGX_HTTP_MAIN_CONF_OFFSET, offsetof(cg_main_conf_t, cache), NULL },
    { ngx_string("certgate_cache_entries"), NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
      cg_set_number, NGX_HTTP_MAIN_CONF_OFFSET, offsetof(cg_main_conf_t, cache_entries),
      &cg_entries_range },
    { ngx_string("certgate_cache_max_age"), NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
      cg_set_number, NGX_HTTP_MAIN_CONF_OFFSET, offsetof(cg_main_conf_t, cache_max_age),
      &cg_age_range },
    { ngx_string("certgate_usage_flush_interval"), NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
      cg_set_number, NGX_HTTP_MAIN_CONF_OFFSET, offsetof(cg_main_conf_t, usage_interval),
      &cg_usage_range },
    { ngx_string("certgate_metrics"), NGX_HTTP_LOC_CONF | NGX_CONF_NOARGS,
      cg_set_metrics, NGX_HTTP_LOC_CONF_OFFSET, 0, NULL },
    ngx_null_command
};

static ngx_http_module_t cg_module_ctx = {
    cg_add_variables, cg_init,
    cg_create_main_conf, cg_init_main_conf,
    NULL, NULL,
    cg_create_loc_conf, cg_merge_loc_conf
};

ngx_module_t ngx_http_certgate_module = {
    NGX_MODULE_V1,
    &cg_module_ctx, cg_commands, NGX_HTTP_MODULE,
    NULL, NULL, cg_init_process, NULL, NULL, cg_exit_process, NULL,
    NGX_MODULE_V1_PADDING
};

/* Incoming copies are always removed; the gate sets its own on allow. */
static ngx_str_t cg_forward_headers[] = {
    ngx_string("CertGate-App-Id"), ngx_string("CertGate-Cert-Id"),
    ngx_string("CertGate-Fingerprint"), ngx_string("CertGate-Expire-In"),
    ngx_string("Client-Cert"), ngx_string("Client-Cert-Chain"),
};

/* Per worker. */
static cg_main_conf_t *cg_mcf;
static cg_gate_t *cg_gate_p;      /* store, cache, subscriber and usage thread */

/* ------------------------------------------------------------ config */

static void *cg_create_main_conf(ngx_conf_t *cf)
{
    cg_main_conf_t *c = ngx_pcalloc(cf->pool, sizeof(*c));
    if (c == NULL)
        return NULL;
    c->redis.port = NGX_CONF_UNSET;
    c->redis.db = NGX_CONF_UNSET;
    c->timeout = NGX_CONF_UNSET_MSEC;
    c->cache = NGX_CONF_UNSET;
    c->cache_entries = NGX_CONF_UNSET_UINT;
    c->cache_max_age = NGX_CONF_UNSET_UINT;
    c->usage_interval = NGX_CONF_UNSET_UINT;
    c->sentinel_timeout = NGX_CONF_UNSET_MSEC;
    c->wait_replicas = NGX_CONF_UNSET;
    return c;
}

/* Fills the core's config from ours (strings are NUL-terminated by nginx). */
static void cg_gate_cfg(const cg_main_conf_t *c, cg_gate_cfg_t *out)
{
    cg_gate_cfg_defaults(out);
    out->store.host = c->redis.host.len ? (const char *) c->redis.host.data : NULL;
    out->store.port = (int) c->redis.port;
    out->store.socket = c->redis.socket.len ? (const char *) c->redis.socket.data : NULL;
    out->store.user = c->redis.user.len ? (const char *) c->redis.user.data : NULL;
    out->store.password = c->redis.password.len ? (const char *) c->redis.password.data : NULL;
    out->store.db = (int) c->redis.db;
    out->store.prefix = (const char *) c->prefix.data;
    out->store.timeout_ms = (int) c->timeout;
    out->store.max_idle = 1;      /* lookups are async; only the usage thread blocks */
    out->cache_on = c->cache == 1;
    out->cache_entries = c->cache_entries;
    out->cache_max_age_s = (int) c->cache_max_age;
    out->usage_interval_s = (int) c->usage_interval;
    out->store.sentinels = c->sentinels.len ? (const char *) c->sentinels.data : NULL;
    out->store.master_name = c->master_name.len ? (const char *) c->master_name.data : NULL;
    out->store.sentinel_user = c->sentinel_user.len ? (const char *) c->sentinel_user.data
                                                    : NULL;
    out->store.sentinel_password = c->sentinel_password.len
                                   ? (const char *) c->sentinel_password.data : NULL;
    out->store.sentinel_timeout_ms = c->sentinel_timeout == NGX_CONF_UNSET_MSEC ? 0
                                     : (int) c->sentinel_timeout;
    if (c->wait_replicas != NGX_CONF_UNSET) {
        out->store.wait_replicas = (int) c->wait_replicas;
        out->store.wait_timeout_ms = (int) c->wait_ms;
    }
}

/* The admin module's blocking store talks to the same Redis as the gate. */
ngx_int_t cg_ngx_store_cfg(ngx_cycle_t *cycle, cg_gate_cfg_t *out)
{
    cg_main_conf_t *c = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_certgate_module);
    if (c == NULL)
        return NGX_ERROR;
    cg_gate_cfg(c, out);
    return NGX_OK;
}

static char *cg_init_main_conf(ngx_conf_t *cf, void *conf)
{
    cg_main_conf_t *c = conf;
    char err[128];
    cg_gate_cfg_t def, gcfg;

    cg_gate_cfg_defaults(&def);
    if (!c->redis_set) {
        c->redis.host.data = (u_char *) def.store.host;
        c->redis.host.len = ngx_strlen(def.store.host);
        c->redis.port = def.store.port;
    }
    ngx_conf_init_value(c->redis.db, def.store.db);
    ngx_conf_init_msec_value(c->timeout, (ngx_msec_t) def.store.timeout_ms);
    if (c->prefix.data == NULL) {
        c->prefix.data = (u_char *) def.store.prefix;
        c->prefix.len = ngx_strlen(def.store.prefix);
    }
    ngx_conf_init_value(c->cache, def.cache_on);
    ngx_conf_init_uint_value(c->cache_entries, def.cache_entries);
    ngx_conf_init_uint_value(c->cache_max_age, (ngx_uint_t) def.cache_max_age_s);
    ngx_conf_init_uint_value(c->usage_interval, (ngx_uint_t) def.usage_interval_s);
    if (c->used && (c->metrics_zone = cg_ngx_metrics_zone(cf, &ngx_http_certgate_module)) == NULL)
        return NGX_CONF_ERROR;
    cg_gate_cfg(c, &gcfg);
    if (cg_store_cfg_check(&gcfg.store, err, sizeof(err)) != 0) {
        /* The directives are checked one by one as they are read: this is a backstop. */
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "CG04001: invalid Redis settings "
                           "(certgate_redis, certgate_redis_*, certgate_key_prefix): %s", err);
        return NGX_CONF_ERROR;
    }
    return NGX_CONF_OK;
}

/*
 * A refused value: the directive, what it got and what it accepts, in the
 * words httpd's CertGate* directives use; nginx adds " in FILE:LINE".
 */
static char *cg_refuse(ngx_conf_t *cf, ngx_command_t *cmd, const char *what, ngx_str_t *got)
{
    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "CG04031: %V: %s, got \"%V\"", &cmd->name, what,
                       got);
    return NGX_CONF_ERROR;
}

static char *cg_set_redis(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    cg_main_conf_t *c = conf;
    ngx_str_t *v = cf->args->elts;
    ngx_str_t a = v[1];

    if (c->redis_set)
        return "is duplicate";
    c->redis_set = 1;
    if (a.len >= 5 && ngx_strncmp(a.data, "unix:", 5) == 0) {
        if (a.len == 5 || a.data[5] != '/')
            return cg_refuse(cf, cmd, "unix: needs an absolute socket path, e.g. "
                             "unix:/run/redis/redis.sock", &a);
        c->redis.socket.data = a.data + 5;
        c->redis.socket.len = a.len - 5;
        return NGX_CONF_OK;
    }
    u_char *colon = ngx_strlchr(a.data, a.data + a.len, ':');
    if (colon == NULL || colon == a.data || colon + 1 == a.data + a.len)
        return cg_refuse(cf, cmd, "expected host:port or unix:/path", &a);
    c->redis.port = ngx_atoi(colon + 1, (size_t) (a.data + a.len - colon - 1));
    if (c->redis.port < 1 || c->redis.port > 65535)
        return cg_refuse(cf, cmd, "the port must be a number from 1 to 65535", &a);
    /* Overwrite the colon so host is NUL-terminated for hiredis. */
    *colon = '\0';
    c->redis.host.data = a.data;
    c->redis.host.len = (size_t) (colon - a.data);
    return NGX_CONF_OK;
}

/* A whole number within cmd->post's range ("off" for 0 where it says so). */
static char *cg_set_number(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    const cg_range_t *rg = cmd->post;
    ngx_int_t *field = (ngx_int_t *) ((char *) conf + cmd->offset);
    ngx_str_t *v = cf->args->elts;
    char what[128];

    if (*field != NGX_CONF_UNSET)
        return "is duplicate";
    if (rg->off && v[1].len == 3 && ngx_strncasecmp(v[1].data, (u_char *) "off", 3) == 0) {
        *field = 0;
        return NGX_CONF_OK;
    }
    ngx_int_t n = ngx_atoi(v[1].data, v[1].len);
    if (n == NGX_ERROR || n < rg->min || n > rg->max) {
        if (rg->off)
            snprintf(what, sizeof(what), "expected off or a whole number of%s from %ld to %ld",
                     rg->unit, (long) (rg->min > 0 ? rg->min : 1), (long) rg->max);
        else
            snprintf(what, sizeof(what), "expected a whole number from %ld to %ld",
                     (long) rg->min, (long) rg->max);
        return cg_refuse(cf, cmd, what, &v[1]);
    }
    *field = n;
    return NGX_CONF_OK;
}

/*
 * nginx's time syntax only: "200ms", "2s". A bare number is refused: nginx
 * reads it as seconds, httpd's CertGateRedisTimeout as milliseconds, and
 * guessing either way gives some operator a timeout 1000 times off.
 */
static char *cg_set_timeout(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_msec_t *field = (ngx_msec_t *) ((char *) conf + cmd->offset);
    ngx_str_t *v = cf->args->elts;
    static const char what[] = "expected a time with its unit from 1ms to 60s, e.g. 200ms or "
                               "2s (a bare number is refused: nginx would read it as seconds, "
                               "CertGateRedisTimeout as milliseconds)";

    if (*field != NGX_CONF_UNSET_MSEC)
        return "is duplicate";
    if (ngx_atoi(v[1].data, v[1].len) != NGX_ERROR)
        return cg_refuse(cf, cmd, what, &v[1]);
    ngx_int_t ms = ngx_parse_time(&v[1], 0);
    if (ms == NGX_ERROR || ms < CG_GATE_TIMEOUT_MS_MIN || ms > CG_GATE_TIMEOUT_MS_MAX)
        return cg_refuse(cf, cmd, what, &v[1]);
    *field = (ngx_msec_t) ms;
    return NGX_CONF_OK;
}

static char *cg_set_prefix(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_str_t *field = (ngx_str_t *) ((char *) conf + cmd->offset);
    ngx_str_t *v = cf->args->elts;
    static const char what[] = "expected 1 to 64 printable ASCII characters without spaces, "
                               "e.g. certgate:";

    if (field->data != NULL)
        return "is duplicate";
    if (v[1].len == 0 || v[1].len > CG_PREFIX_MAX)
        return cg_refuse(cf, cmd, what, &v[1]);
    for (size_t i = 0; i < v[1].len; i++)
        if (v[1].data[i] <= 0x20 || v[1].data[i] >= 0x7f)
            return cg_refuse(cf, cmd, what, &v[1]);
    *field = v[1];
    return NGX_CONF_OK;
}

static char *cg_set_store_error(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    cg_loc_conf_t *lc = conf;
    ngx_str_t *v = cf->args->elts;
    static const char what[] = "expected deny, allow or stale SECONDS";

    if (lc->on_store_error != NGX_CONF_UNSET_UINT)
        return "is duplicate";
    lc->stale_s = 0;
    if (v[1].len == 5 && ngx_strncasecmp(v[1].data, (u_char *) "stale", 5) == 0) {
        if (cf->args->nelts != 3)
            return cg_refuse(cf, cmd, "stale needs a number of seconds, e.g. stale 30", &v[1]);
        ngx_int_t n = ngx_atoi(v[2].data, v[2].len);
        if (n < 1 || n > CG_GATE_STALE_MAX_S)
            return cg_refuse(cf, cmd, "stale: expected a number of seconds from 1 to 86400",
                             &v[2]);
        lc->on_store_error = 0;
        lc->stale_s = n;
        cg_main_conf_t *mc = ngx_http_conf_get_module_main_conf(cf, ngx_http_certgate_module);
        if (n > mc->stale_keep_max)
            mc->stale_keep_max = n;
        return NGX_CONF_OK;
    }
    if (cf->args->nelts != 2)
        return cg_refuse(cf, cmd, "only stale takes a number", &v[2]);
    if (v[1].len == 4 && ngx_strncasecmp(v[1].data, (u_char *) "deny", 4) == 0)
        lc->on_store_error = 0;
    else if (v[1].len == 5 && ngx_strncasecmp(v[1].data, (u_char *) "allow", 5) == 0)
        lc->on_store_error = 1;
    else
        return cg_refuse(cf, cmd, what, &v[1]);
    /* CG05001 is logged when a gated location is merged: cite this line then. */
    lc->on_store_error_at = ngx_pcalloc(cf->pool, sizeof(cg_conf_at_t));
    if (lc->on_store_error_at == NULL)
        return NGX_CONF_ERROR;
    lc->on_store_error_at->file = cf->conf_file->file.name;
    lc->on_store_error_at->line = cf->conf_file->line;
    return NGX_CONF_OK;
}

static char *cg_set_mode(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    cg_loc_conf_t *lc = conf;
    ngx_str_t *v = cf->args->elts;

    if (lc->shadow != NGX_CONF_UNSET_UINT)
        return "is duplicate";
    if (v[1].len == 7 && ngx_strncasecmp(v[1].data, (u_char *) "enforce", 7) == 0)
        lc->shadow = 0;
    else if (v[1].len == 6 && ngx_strncasecmp(v[1].data, (u_char *) "shadow", 6) == 0)
        lc->shadow = 1;
    else
        return cg_refuse(cf, cmd, "expected enforce or shadow", &v[1]);
    return NGX_CONF_OK;
}

/* host:port ... joined with spaces, NUL-terminated for the core. */
static char *cg_set_sentinels(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    cg_main_conf_t *c = conf;
    ngx_str_t *v = cf->args->elts;
    size_t len = 0;
    (void) cmd;
    if (c->sentinels.len)
        return "is duplicate";
    for (ngx_uint_t i = 1; i < cf->args->nelts; i++)
        len += v[i].len + 1;
    u_char *p = ngx_pnalloc(cf->pool, len);
    if (p == NULL)
        return NGX_CONF_ERROR;
    c->sentinels.data = p;
    for (ngx_uint_t i = 1; i < cf->args->nelts; i++) {
        p = ngx_cpymem(p, v[i].data, v[i].len);
        *p++ = i + 1 < cf->args->nelts ? ' ' : '\0';
    }
    c->sentinels.len = len - 1;
    return NGX_CONF_OK;
}

static char *cg_set_sentinel_auth(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    cg_main_conf_t *c = conf;
    ngx_str_t *v = cf->args->elts;
    (void) cmd;
    if (c->sentinel_password.len)
        return "is duplicate";
    if (cf->args->nelts == 3) {
        c->sentinel_user = v[1];
        c->sentinel_password = v[2];
    } else {
        c->sentinel_password = v[1];
    }
    if (c->sentinel_password.len == 0)
        return "wants a non-empty password";
    return NGX_CONF_OK;
}

/* Admin writes wait for replicas (WAIT), as CertGateAdminWaitReplicas: N [ms]. */
static char *cg_set_wait_replicas(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    cg_main_conf_t *c = conf;
    ngx_str_t *v = cf->args->elts;
    (void) cmd;
    if (c->wait_replicas != NGX_CONF_UNSET)
        return "is duplicate";
    c->wait_replicas = ngx_atoi(v[1].data, v[1].len);
    if (c->wait_replicas < 0 || c->wait_replicas > CG_STORE_WAIT_REPLICAS_MAX)
        return "expects a number of replicas from 0 to " CG_STORE_STR(CG_STORE_WAIT_REPLICAS_MAX);
    c->wait_ms = CG_STORE_WAIT_TIMEOUT_MS_DEFAULT;
    if (cf->args->nelts == 3) {
        c->wait_ms = ngx_atoi(v[2].data, v[2].len);
        if (c->wait_ms < 1 || c->wait_ms > CG_STORE_TIMEOUT_MS_MAX)
            return "expects milliseconds from 1 to " CG_STORE_STR(CG_STORE_TIMEOUT_MS_MAX);
    }
    return NGX_CONF_OK;
}

static char *cg_set_redis_auth(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    cg_main_conf_t *c = conf;
    ngx_str_t *v = cf->args->elts;

    if (c->redis.password.len)
        return "is duplicate";
    if (cf->args->nelts == 3) {
        c->redis.user = v[1];
        c->redis.password = v[2];
    } else {
        c->redis.password = v[1];
    }
    if (c->redis.password.len == 0)
        return cg_refuse(cf, cmd, "the password is empty; expected [USER] PASSWORD",
                         &c->redis.password);
    return NGX_CONF_OK;
}

static char *cg_set_gate(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    char *rv = ngx_conf_set_flag_slot(cf, cmd, conf);
    cg_loc_conf_t *lc = conf;
    if (rv == NGX_CONF_OK && lc->enabled == 1) {
        cg_main_conf_t *mc = ngx_http_conf_get_module_main_conf(cf, ngx_http_certgate_module);
        mc->used = 1;
        if (cf->cmd_type == NGX_HTTP_MAIN_CONF) {
            mc->gated_all = 1;
        } else {
            if (mc->gated_servers == NULL) {
                mc->gated_servers = ngx_array_create(cf->pool, 4, sizeof(void *));
                if (mc->gated_servers == NULL)
                    return NGX_CONF_ERROR;
            }
            void **slot = ngx_array_push(mc->gated_servers);
            if (slot == NULL)
                return NGX_CONF_ERROR;
            *slot = ngx_http_conf_get_module_srv_conf(cf, ngx_http_core_module);
        }
    }
    return rv;
}

static char *cg_set_metrics(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    cg_main_conf_t *mc = ngx_http_conf_get_module_main_conf(cf, ngx_http_certgate_module);
    mc->used = 1;     /* the workers need a gate (store, counters) to report */
    return cg_ngx_metrics_location(cf);
}

static char *cg_set_app_from(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    cg_loc_conf_t *lc = conf;
    ngx_str_t *v = cf->args->elts;

    if (lc->app_from != NGX_CONF_UNSET_UINT)
        return "is duplicate";
    if (cf->args->nelts == 2 && ngx_strcmp(v[1].data, "none") == 0) {
        lc->app_from = APP_FROM_NONE;
        return NGX_CONF_OK;
    }
    if (cf->args->nelts != 3 || v[2].len == 0)
        return "wants \"header NAME\", \"variable $NAME\" or \"none\"";
    if (ngx_strcmp(v[1].data, "header") == 0) {
        lc->app_from = APP_FROM_HEADER;
        lc->app_name = v[2];
        return NGX_CONF_OK;
    }
    if (ngx_strcmp(v[1].data, "variable") == 0) {
        ngx_str_t name = v[2];
        if (name.data[0] == '$') {
            name.data++;
            name.len--;
        }
        if (name.len == 0)
            return "wants a variable name";
        lc->app_from = APP_FROM_VARIABLE;
        lc->app_name = name;
        cg_main_conf_t *mc = ngx_http_conf_get_module_main_conf(cf, ngx_http_certgate_module);
        mc->app_var_used = 1;
        lc->app_var = ngx_http_get_variable_index(cf, &name);
        return lc->app_var == NGX_ERROR ? NGX_CONF_ERROR : NGX_CONF_OK;
    }
    return "wants \"header NAME\", \"variable $NAME\" or \"none\"";
}

static void *cg_create_loc_conf(ngx_conf_t *cf)
{
    cg_loc_conf_t *c = ngx_pcalloc(cf->pool, sizeof(*c));
    if (c == NULL)
        return NULL;
    c->enabled = NGX_CONF_UNSET;
    c->app_from = NGX_CONF_UNSET_UINT;
    c->app_var = NGX_CONF_UNSET;
    c->forward_headers = NGX_CONF_UNSET;
    c->on_store_error = NGX_CONF_UNSET_UINT;
    c->shadow = NGX_CONF_UNSET_UINT;
    c->stale_s = NGX_CONF_UNSET;
    return c;
}

static char *cg_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child)
{
    cg_loc_conf_t *prev = parent, *c = child;
    ngx_conf_merge_value(c->enabled, prev->enabled, 0);
    if (c->app_from == NGX_CONF_UNSET_UINT) {
        c->app_from = prev->app_from == NGX_CONF_UNSET_UINT ? APP_FROM_NONE : prev->app_from;
        c->app_name = prev->app_name;
        c->app_var = prev->app_var;
    }
    ngx_conf_merge_value(c->forward_headers, prev->forward_headers, 0);
    if (c->on_store_error == NGX_CONF_UNSET_UINT) {
        c->on_store_error = prev->on_store_error == NGX_CONF_UNSET_UINT ? 0 : prev->on_store_error;
        c->on_store_error_at = prev->on_store_error_at;
        c->stale_s = prev->stale_s;
    }
    ngx_conf_merge_value(c->stale_s, prev->stale_s, 0);
    if (c->enabled == 1 && c->stale_s > 0)
        ngx_conf_log_error(NGX_LOG_WARN, cf, 0, "CG02011: certgate_on_store_error stale %i: "
                           "while Redis fails, registrations read less than %i s before keep "
                           "allowing", c->stale_s, c->stale_s);
    /* Once per directive that gates some location, citing its own line. */
    cg_conf_at_t *at = c->on_store_error_at;
    if (c->enabled == 1 && c->on_store_error == 1 && at != NULL && !at->warned) {
        at->warned = 1;
        ngx_log_error(NGX_LOG_WARN, cf->log, 0, "CG05001: certgate_on_store_error allow: "
                      "requests pass unchecked while Redis fails in %V:%ui", &at->file, at->line);
    }
    ngx_conf_merge_uint_value(c->shadow, prev->shadow, 0);
    /* Once where shadow mode starts to apply to a gated scope, not per inner location. */
    if (c->enabled == 1 && c->shadow == 1 && (prev->shadow != 1 || prev->enabled != 1))
        ngx_conf_log_error(NGX_LOG_WARN, cf, 0, "CG05010: certgate_mode shadow: the gate logs "
                           "and counts would-be denies here but refuses nothing");
    return NGX_CONF_OK;
}

/* ------------------------------------------------------------ workers */

/* The core's lines: ctx is the request's or the cycle's log. The subscriber
 * and usage threads write too: nginx's logger only writes to an fd. */
/* Whether cg_log would write a line of level (ngx_log_error's own test). */
static int cg_log_check(void *ctx, int level)
{
    ngx_uint_t lv = level == CG_LOG_CRIT ? NGX_LOG_CRIT : level == CG_LOG_ERR ? NGX_LOG_ERR
                    : level == CG_LOG_WARN ? NGX_LOG_WARN : level == CG_LOG_INFO ? NGX_LOG_INFO
                    : NGX_LOG_DEBUG;
    return ctx == NULL || ((ngx_log_t *) ctx)->log_level >= lv;
}

static void cg_log(void *ctx, int level, const char *msg)
{
    ngx_uint_t lv = level == CG_LOG_CRIT ? NGX_LOG_CRIT : level == CG_LOG_ERR ? NGX_LOG_ERR
                    : level == CG_LOG_WARN ? NGX_LOG_WARN : level == CG_LOG_INFO ? NGX_LOG_INFO
                    : NGX_LOG_DEBUG;
    ngx_log_error(lv, (ngx_log_t *) ctx, 0, "%s", msg);
}

/* The admin API's store logs its sentinel events through the core even with no
 * gate; they count in the gate's shared counters (NULL when there is none). */
cg_metrics_t *cg_ngx_core_events(ngx_cycle_t *cycle)
{
    cg_main_conf_t *c = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_certgate_module);
    cg_gate_set_log(cg_log);
    return c != NULL && c->used ? cg_ngx_metrics_shared(c->metrics_zone) : NULL;
}

/*
 * Handlers of a phase run in reverse order of registration, so a module loaded
 * after us could still answer (return) or admit (satisfy any) before the gate.
 * The phase engine is built once all modules registered: move our handler to
 * the front of its phase (the entries of one phase share checker and next).
 */
static void cg_run_first(ngx_http_core_main_conf_t *cmcf, ngx_http_handler_pt handler)
{
    ngx_http_phase_handler_t *ph = cmcf->phase_engine.handlers;
    ngx_uint_t i;
    for (i = 0; ph[i].checker != NULL && ph[i].handler != handler; i++)
        ;
    if (ph[i].checker == NULL)
        return;
    for (; i > 0 && ph[i - 1].checker == ph[i].checker && ph[i - 1].next == ph[i].next; i--)
        ph[i].handler = ph[i - 1].handler;
    ph[i].handler = handler;
}

static void cg_gate_first(ngx_cycle_t *cycle)
{
    ngx_http_core_main_conf_t *cmcf = ngx_http_cycle_get_module_main_conf(cycle,
                                                                          ngx_http_core_module);
    if (cmcf == NULL || cmcf->phase_engine.handlers == NULL)
        return;
    cg_run_first(cmcf, cg_rewrite_handler);
    cg_run_first(cmcf, cg_app_handler);
}

static ngx_int_t cg_init_process(ngx_cycle_t *cycle)
{
    cg_gate_cfg_t gcfg;

    cg_gate_first(cycle);

    cg_mcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_certgate_module);
    if (cg_mcf == NULL || !cg_mcf->used
        || (ngx_process != NGX_PROCESS_WORKER && ngx_process != NGX_PROCESS_SINGLE))
        return NGX_OK;
    cg_gate_set_log(cg_log);
    cg_gate_set_log_check(cg_log_check);
    cg_gate_cfg(cg_mcf, &gcfg);
    gcfg.stale_keep_s = (int) cg_mcf->stale_keep_max;
    /* Without sentinels the worker runs no thread of ours (glibc's single-threaded
     * paths): usage and subscriber run on its event loop (ngx_certgate_bg.c). */
    gcfg.loop_bg = gcfg.store.sentinels == NULL;
    /* The counters every worker shares (certgate_metrics reads them). */
    cg_gate_p = cg_gate_new(&gcfg, cg_ngx_metrics_shared(cg_mcf->metrics_zone), cycle->log);
    if (cg_gate_p == NULL) {
        ngx_log_error(NGX_LOG_ERR, cycle->log, 0, "CG04004: cannot set up the Redis store: "
                      "out of memory; gated requests get 503");
        return NGX_OK;
    }
    cg_gate_start(cg_gate_p);
    if (gcfg.loop_bg)
        cg_ngx_bg_start(cycle, cg_gate_p, &cg_mcf->redis, gcfg.usage_interval_s);
    /* Sentinels: a thread of the core asks them; the worker only reads its answer. */
    cg_mcf->redis.sentinel = cg_store_sentinel(cg_gate_store(cg_gate_p));
    if (cg_mcf->redis.sentinel != NULL && cg_sentinel_watch(cg_mcf->redis.sentinel) != 0) {
        ngx_log_error(NGX_LOG_ERR, cycle->log, 0, "CG11006: cannot start the sentinel "
                      "thread; gated requests get 503");
        cg_mcf->redis.sentinel = NULL;
        cg_mcf->redis.host.len = 0;     /* never the fixed address instead */
    }
    /* Connect now, without waiting: the worker's first lookup must not pay
     * the connect (and AUTH, SELECT) within its timeout. A failure is logged
     * (CG09001) and the first lookup tries again. */
    (void) cg_ngx_redis_get(&cg_mcf->redis, cycle->log);
    return NGX_OK;
}

cg_gate_t *cg_ngx_gate(void)
{
    return cg_gate_p;
}

static void cg_exit_process(ngx_cycle_t *cycle)
{
    (void) cycle;
    /* Close the worker's Redis connection: nginx counts it as an open socket
     * and logs an [alert] for it at every reload or quit otherwise. */
    cg_ngx_redis_drop_current();
    cg_ngx_bg_stop();   /* the last usage batch is written by cg_gate_free */
    cg_gate_free(cg_gate_p);
    cg_gate_p = NULL;
    cg_process_caches_free();   /* after the gate: nothing reads them any more */
}

/* ------------------------------------------------------------ state */

static ngx_connection_t *cg_real_connection(ngx_http_request_t *r)
{
#if (NGX_HTTP_V2)
    if (r->stream != NULL)
        return r->stream->connection->connection;
#endif
    return r->connection;
}

/* The last one found, while its connection lives: a connection's number
 * is unique in the worker's life, a reused ngx_connection_t gets another;
 * and the state's cleanup forgets it (a reload without a master process
 * starts the numbers again). */
static ngx_connection_t *cg_last_c;
static ngx_atomic_uint_t cg_last_number;
static uint64_t cg_ip_seq;      /* the last cg_conn_t.ip_seq given, in this worker */
static cg_conn_t *cg_last_cc;

static void cg_conn_cleanup(void *data)
{
    if (data == cg_last_cc) {
        cg_last_c = NULL;
        cg_last_cc = NULL;
    }
    ngx_free(data);     /* the marker makes it findable too */
}

/* The connection's state if it has one; never adds it. nginx has no
 * per-connection module slot: the state hangs on the pool's cleanup list,
 * found again by its handler. */
static cg_conn_t *cg_conn_peek(ngx_connection_t *c)
{
    if (c == cg_last_c && c->number == cg_last_number)
        return cg_last_cc;
    for (ngx_pool_cleanup_t *cln = c->pool->cleanup; cln != NULL; cln = cln->next)
        if (cln->handler == cg_conn_cleanup)
            return cln->data;
    return NULL;
}

/* The connection's state, added if it has none yet. */
static cg_conn_t *cg_conn_state(ngx_connection_t *c)
{
    cg_conn_t *cc = cg_conn_peek(c);
    if (cc == NULL) {
        /* With the request slot, and not from the pool: it would be a large
         * allocation there, one more for every request's TLS buffer
         * (ngx_palloc_large, ngx_pfree) to walk past. */
        ngx_pool_cleanup_t *cln = ngx_pool_cleanup_add(c->pool, 0);
        if (cln == NULL)
            return NULL;
        cc = ngx_calloc(sizeof(cg_conn_t) + sizeof(cg_req_t), c->log);
        if (cc == NULL)
            return NULL;
        cc->slot = (cg_req_t *) (cc + 1);
        cln->data = cc;
        cln->handler = cg_conn_cleanup;
    }
    cg_last_c = c;
    cg_last_number = c->number;
    cg_last_cc = cc;
    return cc;
}

static void cg_req_cleanup(void *data)
{
    cg_req_t *req = data;
    if (req->lookup != NULL) {
        req->lookup->req = NULL;
        req->lookup = NULL;
    }
    if (req->ev.timer_set)
        ngx_del_timer(&req->ev);
    if (req->ev.posted) {
        ngx_delete_posted_event(&req->ev);
    }
}

static ngx_inline int cg_tls(const ngx_connection_t *c)
{
    return c->ssl != NULL && c->ssl->connection != NULL;
}

/* req, found in r's pool, is r's own or an ancestor's (its decision stands
 * for r): not a sibling subrequest's, whose lookup may be in flight. */
static ngx_int_t cg_req_is_ours(ngx_http_request_t *r, const cg_req_t *req)
{
    ngx_http_request_t *o = req->owner != NULL ? req->owner : r->main;
    for (ngx_http_request_t *p = r; p != NULL; p = p->parent)
        if (p == o)
            return 1;
    return 0;
}

/* c: the real connection; cc: its state, if it has one. Inline: the gate's
 * every request asks. */
static ngx_inline __attribute__((always_inline)) cg_req_t *cg_req_find_in(ngx_http_request_t *r, ngx_connection_t *c, cg_conn_t *cc)
{
    cg_req_t *req = ngx_http_get_module_ctx(r, ngx_http_certgate_module);
    if (req != NULL)
        return req;
    /* An internal redirect clears module contexts; the slot (HTTP/1, tagged
     * with the main request; subrequests share its connection) or the pool
     * keeps ours. */
    if (cc != NULL && c == r->connection && cc->slot != NULL && cc->slot_r == r->main &&
        cc->slot_requests == c->requests) {
        req = cc->slot;
        req->r = r;
        ngx_http_set_ctx(r, req, ngx_http_certgate_module);
        return req;
    }
    for (ngx_pool_cleanup_t *cln = r->pool->cleanup; cln != NULL; cln = cln->next) {
        if (cln->handler == cg_req_cleanup && cg_req_is_ours(r, cln->data)) {
            req = cln->data;
            req->r = r;
            ngx_http_set_ctx(r, req, ngx_http_certgate_module);
            return req;
        }
    }
    return NULL;
}

static cg_req_t *cg_req_find(ngx_http_request_t *r)
{
    ngx_connection_t *c = cg_real_connection(r);
    return cg_req_find_in(r, c, cg_tls(c) ? cg_conn_peek(c) : NULL);
}

static void cg_resume(ngx_event_t *ev);

/* c: the real connection; *ccp: its state, added here for a slot. */
static cg_req_t *cg_req_new(ngx_http_request_t *r, ngx_connection_t *c, int tls,
                            cg_conn_t **ccp)
{
    /* HTTP/1 main request on TLS: the connection's slot, unless an earlier
     * request still has a lookup on it (never on HTTP/1: one request at a time). */
    cg_conn_t *cc = NULL;
    if (r == r->main && c == r->connection && tls) {
        if (*ccp == NULL)
            *ccp = cg_conn_state(c);
        cc = *ccp;
    }
    if (cc != NULL && cc->slot->lookup == NULL && !cc->slot->ev.timer_set &&
        !cc->slot->ev.posted) {
        cg_req_t *req = cc->slot;
        /* As zeroed, but for the decision's strings (they count only once
         * exported) and ev (idle, set up again by the first lookup: cg_req_ready). */
        req->r = r;
        req->state = ST_NEW;
        req->lookup = NULL;
        req->lk = NULL;
        req->v = NULL;
        req->reason = CG_ALLOW;
        req->app_var = 0;
        req->shadow = 0;
        req->not_enforced = 0;
        req->ev_ready = 0;
        req->exported = 0;
        cc->slot_r = r;
        cc->slot_requests = c->requests;
        ngx_http_set_ctx(r, req, ngx_http_certgate_module);
        return req;
    }
    ngx_pool_cleanup_t *cln = ngx_pool_cleanup_add(r->pool, sizeof(cg_req_t));
    if (cln == NULL)
        return NULL;
    cg_req_t *req = cln->data;
    ngx_memzero(req, sizeof(*req));
    req->r = r;
    req->owner = r;
    req->ev.data = req;
    req->ev.handler = cg_resume;
    req->ev.log = r->connection->log;
    req->ev_ready = 1;
    cln->handler = cg_req_cleanup;
    ngx_http_set_ctx(r, req, ngx_http_certgate_module);
    return req;
}

/* A slot's timer event and its cleanup, before its first lookup: the
 * lookup's callback and the timer must not outlive the request. */
static ngx_int_t cg_req_ready(ngx_http_request_t *r, cg_req_t *req)
{
    if (req->ev_ready)
        return NGX_OK;
    ngx_pool_cleanup_t *cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL)
        return NGX_ERROR;
    ngx_memzero(&req->ev, sizeof(req->ev));
    req->ev.data = req;
    req->ev.handler = cg_resume;
    req->ev.log = r->connection->log;
    cln->data = req;
    cln->handler = cg_req_cleanup;
    req->ev_ready = 1;
    return NGX_OK;
}

/* ------------------------------------------------------------ Redis lookup */

static void cg_lookup_done(cg_lookup_t *lk)
{
    cg_req_t *req = lk->req;
    if (req != NULL)
        *req->lk = lk->lk;
    ngx_free(lk);
    if (req == NULL)
        return;
    req->lookup = NULL;
    req->state = ST_LOOKED_UP;
    if (req->ev.timer_set)
        ngx_del_timer(&req->ev);
    /* Resume from the event loop, not from inside hiredis. */
    ngx_post_event(&req->ev, &ngx_posted_events);
}

static void cg_on_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    cg_lookup_t *lk = privdata;
    redisReply *r = reply;

    if (r != NULL && r->type == REDIS_REPLY_ERROR)
        cg_ngx_redis_drop(ac);     /* as the blocking store: never reuse after an error */
    if (r == NULL || cg_sentinel_reply_distrusts(r))
        cg_ngx_redis_distrust(&cg_mcf->redis, r ? "READONLY or LOADING answer"
                                                : "connection lost");
    if (lk->req == NULL) {         /* the request is gone or gave up */
        ngx_free(lk);
        return;
    }
    if (!cg_gate_lookup_reply(cg_gate_p, &lk->lk, r, ac->errstr)) {
        cg_lookup_done(lk);
        return;
    }
    /* The next step on the same connection. */
    if (redisAsyncCommandArgv(ac, cg_on_reply, lk, lk->lk.argc, lk->lk.argv, lk->lk.lens)
        != REDIS_OK) {
        cg_gate_lookup_fail(&lk->lk, CG_STORE_CONN, "Redis connection is closing");
        cg_lookup_done(lk);
    }
}

/* A lookup set up on the stack, moved to the request: its command's key
 * argument points into it. */
static void cg_lookup_move(cg_gate_lookup_t *dst, const cg_gate_lookup_t *src)
{
    *dst = *src;
    for (int i = 0; i < src->argc && i < 3; i++) {
        if (src->argv[i] == src->key)
            dst->argv[i] = dst->key;
        else if (src->argv[i] == src->reg_key)
            dst->argv[i] = dst->reg_key;
    }
}

/* Send the first command of req->lk. NGX_AGAIN: the reply or the timeout will resume the request. */
static ngx_int_t cg_lookup_start(ngx_http_request_t *r, cg_req_t *req)
{
    redisAsyncContext *ac = cg_ngx_redis_get(&cg_mcf->redis, ngx_cycle->log);
    if (ac == NULL) {
        cg_gate_lookup_fail(req->lk, CG_STORE_CONN, "cannot connect to Redis");
        return NGX_ERROR;
    }
    if (cg_req_ready(r, req) != NGX_OK) {
        cg_gate_lookup_fail(req->lk, CG_STORE_CONN, "out of memory");
        return NGX_ERROR;
    }
    cg_lookup_t *lk = ngx_alloc(sizeof(*lk), r->connection->log);
    if (lk == NULL) {
        cg_gate_lookup_fail(req->lk, CG_STORE_CONN, "out of memory");
        return NGX_ERROR;
    }
    lk->req = req;
    lk->lk = *req->lk;
    /* cg_resume runs this request's phases: a subrequest that found req
     * since (an auth_request's) left its own r there. */
    req->r = r;
    if (redisAsyncCommandArgv(ac, cg_on_reply, lk, req->lk->argc, req->lk->argv, req->lk->lens)
        != REDIS_OK) {
        ngx_free(lk);
        cg_ngx_redis_drop(ac);
        cg_gate_lookup_fail(req->lk, CG_STORE_CONN, "Redis connection is closing");
        return NGX_ERROR;
    }
    req->lookup = lk;
    req->state = ST_PENDING;
    ngx_add_timer(&req->ev, cg_mcf->timeout);
    return NGX_AGAIN;
}

static void cg_resume(ngx_event_t *ev)
{
    cg_req_t *req = ev->data;
    ngx_http_request_t *r = req->r;
    ngx_connection_t *c = r->connection;

    if (ev->timedout) {
        char err[64];
        ev->timedout = 0;
        if (req->lookup != NULL) {
            req->lookup->req = NULL;
            req->lookup = NULL;
        }
        snprintf(err, sizeof(err), "Redis timeout after %lu ms", (unsigned long) cg_mcf->timeout);
        cg_gate_lookup_fail(req->lk, CG_STORE_TIMEOUT, err);
        req->state = ST_LOOKED_UP;
        /* A connection that missed its deadline is in an unknown state. */
        cg_ngx_redis_distrust(&cg_mcf->redis, "timeout");
        cg_ngx_redis_drop_current();
    } else if (req->state != ST_LOOKED_UP) {
        return;     /* another event ran the handler first and used the answer */
    }
    /* The error log's request: another subrequest of the page may have run since. */
    ngx_http_set_log_request(c->log, r);
    ngx_http_core_run_phases(r);
    ngx_http_run_posted_requests(c);
}

/* ------------------------------------------------------------ request */

static ngx_int_t cg_header_is(const ngx_table_elt_t *h, const ngx_str_t *name)
{
    return h->key.len == name->len && ngx_strncasecmp(h->key.data, name->data, name->len) == 0;
}

/* One of ours for a backend: "Client_Cert" (with underscores_in_headers on)
 * is read as HTTP_CLIENT_CERT by CGI/WSGI and as $http_client_cert by nginx. */
static ngx_int_t cg_is_forward_header_named(const ngx_table_elt_t *h);

/* The cheap test inline, the names only for headers that start like ours. */
static inline ngx_int_t cg_is_forward_header(const ngx_table_elt_t *h)
{
    /* Every name of ours is 11 to 20 long and starts with "Ce" or "Cl" (any
     * case): most headers end here, "Connection" and "Content-Type" included. */
    if (h->key.len - 11 > 20 - 11 || (h->key.data[0] | 0x20) != 'c' ||
        ((h->key.data[1] | 0x20) != 'e' && (h->key.data[1] | 0x20) != 'l'))
        return 0;
    return cg_is_forward_header_named(h);
}

static ngx_int_t cg_is_forward_header_named(const ngx_table_elt_t *h)
{
    const ngx_uint_t nf = sizeof(cg_forward_headers) / sizeof(cg_forward_headers[0]);
    for (ngx_uint_t k = 0; k < nf; k++)
        if (h->key.len == cg_forward_headers[k].len &&     /* "Connection": no call */
            cg_header_name_same((const char *) h->key.data, h->key.len,
                                (const char *) cg_forward_headers[k].data,
                                cg_forward_headers[k].len))
            return 1;
    return 0;
}

static ngx_int_t cg_strip_incoming(ngx_http_request_t *r)
{
    ngx_list_part_t *part;
    ngx_table_elt_t *h;
    ngx_uint_t i, hit = 0, total = 0;

    /* Most requests carry none of ours: look for one first, count after. */
    for (part = &r->headers_in.headers.part; part; part = part->next) {
        h = part->elts;
        for (i = 0; i < part->nelts; i++)
            if (cg_is_forward_header(&h[i]))
                goto found;
    }
    return NGX_OK;
found:
    for (part = &r->headers_in.headers.part; part; part = part->next) {
        h = part->elts;
        for (i = 0; i < part->nelts; i++, total++)
            hit += (ngx_uint_t) cg_is_forward_header(&h[i]);
    }
    /* ngx_list has no removal: rebuild it without them. (A list's last points
     * into itself, so it is built in place, reading from a copy of the old head.) */
    ngx_list_t old = r->headers_in.headers;
    if (ngx_list_init(&r->headers_in.headers, r->pool, total - hit + 8,
                      sizeof(ngx_table_elt_t)) != NGX_OK) {
        r->headers_in.headers = old;
        return NGX_ERROR;
    }
    for (part = &old.part; part; part = part->next) {
        h = part->elts;
        for (i = 0; i < part->nelts; i++) {
            if (cg_is_forward_header(&h[i]))
                continue;
            ngx_table_elt_t *n = ngx_list_push(&r->headers_in.headers);
            if (n == NULL)
                return NGX_ERROR;
            *n = h[i];
        }
    }
    return NGX_OK;
}

/* A subrequest's headers_in is a copy of its parent's: the copied list's last
 * part is the parent's, where a push lands unseen by the subrequest (and its
 * upstream) and seen by the parent. A list of its own first. */
static ngx_int_t cg_own_header_list(ngx_http_request_t *r)
{
    ngx_list_part_t *part;
    ngx_uint_t i, total = 0;
    ngx_list_t old = r->headers_in.headers;
    for (part = &old.part; part; part = part->next)
        total += part->nelts;
    if (ngx_list_init(&r->headers_in.headers, r->pool, total + 8,
                      sizeof(ngx_table_elt_t)) != NGX_OK) {
        r->headers_in.headers = old;
        return NGX_ERROR;
    }
    for (part = &old.part; part; part = part->next) {
        ngx_table_elt_t *h = part->elts;
        for (i = 0; i < part->nelts; i++) {
            ngx_table_elt_t *n = ngx_list_push(&r->headers_in.headers);
            if (n == NULL)
                return NGX_ERROR;
            *n = h[i];
        }
    }
    return NGX_OK;
}

static ngx_int_t cg_add_header(ngx_http_request_t *r, const ngx_str_t *name, ngx_str_t value)
{
    ngx_table_elt_t *h = ngx_list_push(&r->headers_in.headers);
    if (h == NULL)
        return NGX_ERROR;
    h->key = *name;
    h->value = value;
    h->lowcase_key = ngx_pnalloc(r->pool, name->len);
    if (h->lowcase_key == NULL)
        return NGX_ERROR;
    h->hash = ngx_hash_strlow(h->lowcase_key, name->data, name->len);
    return NGX_OK;
}

/* RFC 9440 byte sequence ":base64:" of one certificate, in pool p. */
static ngx_int_t cg_sf_binary(ngx_pool_t *p, X509 *x, ngx_str_t *out)
{
    size_t cap = cg_x509_der_b64_size(x);
    if (cap == 0)
        return NGX_ERROR;
    u_char *buf = ngx_pnalloc(p, cap + 2);
    if (buf == NULL)
        return NGX_ERROR;
    buf[0] = ':';
    int n = cg_x509_der_b64(x, (char *) buf + 1, cap);
    if (n < 0)
        return NGX_ERROR;
    buf[n + 1] = ':';
    out->data = buf;
    out->len = (size_t) n + 2;
    return NGX_OK;
}

static void cg_build_forward_values(ngx_connection_t *c, cg_conn_t *cc)
{
    SSL *ssl = c->ssl->connection;
    X509 *leaf = SSL_get0_peer_certificate(ssl);
    if (cc->client_cert.len > 0 || leaf == NULL || cg_sf_binary(c->pool, leaf, &cc->client_cert))
        return;
    STACK_OF(X509) *sk = SSL_get_peer_cert_chain(ssl);
    int n = sk ? sk_X509_num(sk) : 0;
    ngx_str_t parts[CG_MAX_CHAIN];
    size_t total = 0;
    int k = 0;
    for (int i = 0; i < n && k < CG_MAX_CHAIN; i++, k++) {
        if (cg_sf_binary(c->pool, sk_X509_value(sk, i), &parts[k]) != NGX_OK)
            return;
        total += parts[k].len + 2;
    }
    if (k == 0)
        return;
    u_char *buf = ngx_pnalloc(c->pool, total), *p = buf;
    if (buf == NULL)
        return;
    for (int i = 0; i < k; i++) {
        if (i > 0)
            p = ngx_cpymem(p, ", ", 2);
        p = ngx_cpymem(p, parts[i].data, parts[i].len);
    }
    cc->client_cert_chain.data = buf;
    cc->client_cert_chain.len = (size_t) (p - buf);
}

/* The peer, hashed once per connection. -1 when OpenSSL failed. */
static int cg_load_peer(ngx_http_request_t *r, ngx_connection_t *c, cg_conn_t *cc)
{
    char err[128];
    X509 *leaf = SSL_get0_peer_certificate(c->ssl->connection);
    if (!cc->peer_ready || leaf != cc->seen_leaf) {
        cc->seen_leaf = leaf;
        ngx_str_null(&cc->client_cert);
        ngx_str_null(&cc->client_cert_chain);
        cc->peer_error = cg_tls_peer(c->ssl->connection, &cc->peer, err, sizeof(err)) != 0;
        if (cc->peer_error)
            ngx_log_error(NGX_LOG_ERR, r->connection->log, 0, "CG03001: reading the client "
                          "certificate failed: %s", err);
        cc->x5t[0] = '\0';
        if (!cc->peer_error && cc->peer.has_leaf)
            cg_gate_x5t_s256(&cc->peer.leaf, cc->x5t);
        cc->peer_ready = 1;
    }
    return cc->peer_error ? -1 : 0;
}

/*
 * The registration from this connection's last answer or the process cache.
 * 1: known (found says whether registered); 0: Redis must be asked.
 */
static int cg_accepts_json(ngx_http_request_t *r)
{
    ngx_list_part_t *part;
    ngx_table_elt_t *h;
    static ngx_str_t accept = ngx_string("Accept");
    for (part = &r->headers_in.headers.part; part; part = part->next) {
        h = part->elts;
        for (ngx_uint_t i = 0; i < part->nelts; i++)
            if (cg_header_is(&h[i], &accept) &&
                ngx_strlcasestrn(h[i].value.data, h[i].value.data + h[i].value.len,
                                 (u_char *) "json", 4 - 1) != NULL)
                return 1;
    }
    return 0;
}

static ngx_int_t cg_set_out_header(ngx_http_request_t *r, const char *name, const char *value)
{
    ngx_table_elt_t *h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL)
        return NGX_ERROR;
    h->hash = 1;
    h->key.data = (u_char *) name;
    h->key.len = ngx_strlen(name);
    h->value.data = (u_char *) value;
    h->value.len = ngx_strlen(value);
    return NGX_OK;
}

static ngx_int_t cg_respond_deny(ngx_http_request_t *r, cg_reason_t reason)
{
    ngx_uint_t status = (ngx_uint_t) cg_reason_http_status(reason);
    ngx_http_core_loc_conf_t *clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);

    if (cg_set_out_header(r, "CertGate-Reason", cg_reason_name(reason)) != NGX_OK ||
        cg_set_out_header(r, "Cache-Control", "no-store") != NGX_OK)
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    if (status == 503 && cg_set_out_header(r, "Retry-After", "1") != NGX_OK)
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    /* An operator's error_page wins; $certgate_reason is there for it. We
     * finalize here rather than return 403: under "satisfy any" a 403 from an
     * access handler only means "ask the next one", and the gate must not be
     * skipped. */
    if (clcf->error_pages != NULL) {
        ngx_http_err_page_t *ep = clcf->error_pages->elts;
        for (ngx_uint_t i = 0; i < clcf->error_pages->nelts; i++) {
            if (ep[i].status == (ngx_int_t) status) {
                ngx_http_finalize_request(r, (ngx_int_t) status);
                return NGX_DONE;
            }
        }
    }

    u_char *body = ngx_pnalloc(r->pool, CG_DENY_BODY_MAX);
    const char *ctype;
    if (body == NULL)
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    int n = cg_deny_body(reason, cg_accepts_json(r), (char *) body, CG_DENY_BODY_MAX, &ctype);
    if (n < 0) {
        ngx_http_finalize_request(r, (ngx_int_t) status);
        return NGX_DONE;
    }
    if (ngx_http_discard_request_body(r) != NGX_OK)
        r->keepalive = 0;
    r->headers_out.status = status;
    r->headers_out.content_type.data = (u_char *) ctype;
    r->headers_out.content_type.len = ngx_strlen(ctype);
    r->headers_out.content_type_len = r->headers_out.content_type.len;
    r->headers_out.content_length_n = n;

    ngx_int_t rc = ngx_http_send_header(r);
    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        ngx_http_finalize_request(r, rc);
        return NGX_DONE;
    }
    ngx_buf_t *b = ngx_calloc_buf(r->pool);
    if (b == NULL) {
        ngx_http_finalize_request(r, NGX_ERROR);
        return NGX_DONE;
    }
    b->pos = body;
    b->last = body + n;
    b->memory = 1;
    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;
    ngx_chain_t out = { b, NULL };
    ngx_http_finalize_request(r, ngx_http_output_filter(r, &out));
    return NGX_DONE;
}

static ngx_int_t cg_pdup(ngx_pool_t *p, const char *s, size_t len, ngx_str_t *out)
{
    out->data = ngx_pnalloc(p, len);
    if (out->data == NULL)
        return NGX_ERROR;
    ngx_memcpy(out->data, s, len);
    out->len = len;
    return NGX_OK;
}

/* s as kept in *keep (c's pool), copied there when it differs. */
static ngx_int_t cg_kept(ngx_pool_t *p, ngx_str_t *keep, const char *s, size_t len,
                         ngx_str_t *out)
{
    if (keep->data == NULL || keep->len != len || ngx_memcmp(keep->data, s, len) != 0) {
        ngx_str_t copy;
        if (cg_pdup(p, s, len, &copy) != NGX_OK)
            return NGX_ERROR;
        *keep = copy;
    }
    *out = *keep;
    return NGX_OK;
}

/* cg_kept for a short NUL-terminated s (the days left): compared in place. */
static ngx_int_t cg_kept_cstr(ngx_pool_t *p, ngx_str_t *keep, const char *s, ngx_str_t *out)
{
    size_t i = 0;
    if (keep->data != NULL) {
        while (i < keep->len && s[i] != '\0' && keep->data[i] == (u_char) s[i])
            i++;
        if (i == keep->len && s[i] == '\0') {
            *out = *keep;
            return NGX_OK;
        }
    }
    return cg_kept(p, keep, s, ngx_strlen(s), out);
}

static ngx_int_t cg_export_allow(ngx_http_request_t *r, cg_loc_conf_t *lc, cg_req_t *req,
                                 const cg_gate_verdict_t *v, ngx_connection_t *c, cg_conn_t *cc,
                                 int64_t now)
{
    /* One thread per worker: the connection's copies serve its every request,
     * without comparing while the entry they came from is unchanged. */
    if (cc != NULL) {
        if (v->conn_gen != 0 && v->conn_gen == cc->x_gen) {
            req->app_id = cc->x_app;
            req->cert_id = cc->x_id;
            req->fingerprint = cc->x_fp;
        } else if (cg_kept(c->pool, &cc->x_app, v->regp->app_id, ngx_strlen(v->regp->app_id),
                           &req->app_id) != NGX_OK ||
                   cg_kept(c->pool, &cc->x_id, v->regp->id, ngx_strlen(v->regp->id),
                           &req->cert_id) != NGX_OK ||
                   cg_kept(c->pool, &cc->x_fp, v->fp_hex, CG_FP_HEX_LEN,
                           &req->fingerprint) != NGX_OK) {
            return NGX_ERROR;
        } else {
            cc->x_gen = v->conn_gen;
        }
        /* The days left depend on the registration and the second only. */
        if (v->conn_gen != 0 && v->conn_gen == cc->x_days_gen && now == cc->x_days_at) {
            req->expire_in = cc->x_days;
        } else if (cg_kept_cstr(c->pool, &cc->x_days, v->expire_in, &req->expire_in)
                   != NGX_OK) {
            return NGX_ERROR;
        } else {
            cc->x_days_gen = v->conn_gen;
            cc->x_days_at = now;
        }
    } else if (cg_pdup(r->pool, v->regp->app_id, ngx_strlen(v->regp->app_id), &req->app_id) != NGX_OK ||
        cg_pdup(r->pool, v->regp->id, ngx_strlen(v->regp->id), &req->cert_id) != NGX_OK ||
        cg_pdup(r->pool, v->fp_hex, CG_FP_HEX_LEN, &req->fingerprint) != NGX_OK ||
        cg_pdup(r->pool, v->expire_in, ngx_strlen(v->expire_in), &req->expire_in) != NGX_OK)
        return NGX_ERROR;
    if (cc != NULL && cc->x5t[0] != '\0') {
        /* Changes only with the leaf, within the connection's life. */
        req->x5t_s256.data = (u_char *) cc->x5t;
        req->x5t_s256.len = CG_X5T_S256_LEN;
    } else {
        ngx_str_null(&req->x5t_s256);
    }
    req->exported = 1;
    if (lc->forward_headers != 1)
        return NGX_OK;
    if (r != r->main && cg_own_header_list(r) != NGX_OK)
        return NGX_ERROR;
    if (cg_add_header(r, &cg_forward_headers[0], req->app_id) != NGX_OK ||
        cg_add_header(r, &cg_forward_headers[1], req->cert_id) != NGX_OK ||
        cg_add_header(r, &cg_forward_headers[2], req->fingerprint) != NGX_OK ||
        cg_add_header(r, &cg_forward_headers[3], req->expire_in) != NGX_OK)
        return NGX_ERROR;
    cg_build_forward_values(c, cc);
    if (cc->client_cert.len > 0 && cg_add_header(r, &cg_forward_headers[4], cc->client_cert) != NGX_OK)
        return NGX_ERROR;
    if (cc->client_cert_chain.len > 0 &&
        cg_add_header(r, &cg_forward_headers[5], cc->client_cert_chain) != NGX_OK)
        return NGX_ERROR;
    return NGX_OK;
}

/*
 * The app the request names, NUL-terminated in out. From a header, every
 * header line whose name is the configured one up to case and '_'/'-' counts
 * (HTTP/2 fields are lines too); more than one, or a ',' list, is ambiguous:
 * returns 1. From a variable (app_var), its value now.
 */
static int cg_request_app(ngx_http_request_t *r, ngx_uint_t from, const ngx_str_t *name,
                          ngx_int_t app_var, char *out, size_t cap)
{
    ngx_str_t v = ngx_null_string;
    ngx_uint_t seen = 0;
    if (from == APP_FROM_HEADER) {
        ngx_list_part_t *part;
        for (part = &r->headers_in.headers.part; part; part = part->next) {
            ngx_table_elt_t *h = part->elts;
            for (ngx_uint_t i = 0; i < part->nelts; i++)
                if (cg_header_name_same((const char *) h[i].key.data, h[i].key.len,
                                        (const char *) name->data, name->len)) {
                    seen++;
                    v = h[i].value;
                }
        }
        if (seen > 1 || cg_app_value_is_list((const char *) v.data, v.len)) {
            out[0] = '\0';
            return 1;
        }
    } else {
        ngx_http_variable_value_t *vv = ngx_http_get_indexed_variable(r, (ngx_uint_t) app_var);
        if (vv != NULL && !vv->not_found) {
            v.data = vv->data;
            v.len = vv->len;
        }
    }
    /* No app named, or one too long to be valid: nothing can match "". */
    if (v.data == NULL || v.len >= cap)
        v.len = 0;
    if (v.len > 0)
        ngx_memcpy(out, v.data, v.len);
    out[v.len] = '\0';
    return 0;
}

/*
 * The gate, from the rewrite phase (in_rewrite) or the precontent phase. NGX_DONE:
 * a lookup is in flight and will resume the phases (cg_resume, from this
 * handler). Not NGX_AGAIN: the rewrite phase's checker would finalize the
 * request; the precontent phase's takes both alike.
 */
static ngx_int_t cg_gate(ngx_http_request_t *r, int in_rewrite)
{
    cg_loc_conf_t *lc = ngx_http_get_module_loc_conf(r, ngx_http_certgate_module);
    ngx_connection_t *c = cg_real_connection(r);
    int tls = cg_tls(c);
    cg_conn_t *cc = tls ? cg_conn_peek(c) : NULL;
    cg_req_t *req = cg_req_find_in(r, c, cc);

    /* The first decision stands after an internal redirect (an error_page for
     * our 403 is not gated again); an ungated request redirected into a gated
     * location is checked here, and so is a deny that was not enforced
     * (shadow, fail-open) reaching an enforcing location. */
    if (req != NULL && req->state == ST_DECIDED) {
        if (!req->not_enforced || lc->enabled != 1 || lc->shadow == 1)
            return NGX_DECLINED;
        if (r != r->main) {     /* req is its own or an ancestor's: refuse, do not decide again */
            ngx_log_error(NGX_LOG_WARN, r->connection->log, 0, "CG01001: deny reason=%s "
                          "fingerprint=- app=- asked=- cert=- client=%V (subrequest into an "
                          "enforcing location; the request's refusal was not enforced)",
                          cg_reason_name(req->reason), &r->connection->addr_text);
            return NGX_HTTP_FORBIDDEN;
        }
        req->state = ST_NEW;
        req->not_enforced = 0;
        req->shadow = 0;
    }
    if (req != NULL && req->state == ST_PENDING)
        return NGX_DONE;
    /* The answer is in and we run now: the posted resume must not run the
     * phases a second time. */
    if (req != NULL && req->state == ST_LOOKED_UP && req->ev.posted) {
        ngx_delete_posted_event(&req->ev);
    }
    /* Certificate admitted in the rewrite phase: the app is checked in the
     * precontent phase, with the first gated location's variable. */
    if (req != NULL && req->state == ST_CERT_OK && in_rewrite) {
        if (lc->enabled == 1 && lc->shadow != 1)    /* an enforcing location on the way */
            req->shadow = 0;
        return NGX_DECLINED;
    }
    if (lc->enabled != 1 && (req == NULL || req->state != ST_CERT_OK))
        return NGX_DECLINED;
    if (req == NULL) {
        /* Fail closed: a spoofed header must never reach the upstream. */
        if (cg_strip_incoming(r) != NGX_OK)
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        req = cg_req_new(r, c, tls, &cc);
        if (req == NULL)
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    static const cg_peer_t none;
    const cg_peer_t *peer = &none;
    if (tls) {
        if (cc == NULL)
            cc = cg_conn_state(c);
        if (cc == NULL)
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        /* An unreadable certificate is treated like a missing one: deny. */
        if (cg_load_peer(r, c, cc) == 0)
            peer = &cc->peer;
    }
    char app_buf[CG_APP_MAX + 2];
    const char *app = NULL;
    int app_ambiguous = 0;
    /* A variable may be set by this location's "set" or by auth_request_set:
     * in the rewrite phase only the certificate is checked (app NULL). */
    int app_later = in_rewrite && lc->app_from == APP_FROM_VARIABLE;
    if (req->state == ST_CERT_OK) {
        cg_request_app(r, APP_FROM_VARIABLE, NULL, req->app_var, app_buf, sizeof(app_buf));
        app = app_buf;
    } else if (lc->app_from != APP_FROM_NONE && !app_later) {
        app_ambiguous = cg_request_app(r, lc->app_from, &lc->app_name, lc->app_var, app_buf,
                                       sizeof(app_buf));
        app = app_buf;
    }
    if (cg_gate_p == NULL) {    /* no memory at worker start (CG04004) */
        req->state = ST_DECIDED;
        req->reason = CG_R_STORE_UNAVAILABLE;
        if (lc->shadow == 1 || req->shadow) {     /* shadow never refuses */
            req->not_enforced = 1;
            return NGX_DECLINED;
        }
        return cg_respond_deny(r, CG_R_STORE_UNAVAILABLE);
    }
    char ip_buf[NGX_SOCKADDR_STRLEN + 1];
    const char *ip = ip_buf;
    if (cc != NULL) {
        /* realip sets the request's address (the stream's on HTTP/2), which may
         * differ. On HTTP/1 it allocates it in the connection's pool, where
         * nothing is freed while the connection lives: the same pointer and
         * length are the same text. Copied otherwise (a stream's pool is freed
         * and its memory reused). */
        const ngx_str_t *a = &r->connection->addr_text;
        if (a->data != cc->ip_src || a->len != cc->ip_len || r->connection != c) {
            cc->ip_len = ngx_min(a->len, sizeof(cc->ip) - 1);
            ngx_memcpy(cc->ip, a->data, cc->ip_len);
            cc->ip[cc->ip_len] = '\0';
            cc->ip_src = r->connection == c ? a->data : NULL;
            cc->ip_seq = ++cg_ip_seq;
        }
        ip = cc->ip;
    } else {
        size_t iplen = ngx_min(r->connection->addr_text.len, sizeof(ip_buf) - 1);
        ngx_memcpy(ip_buf, r->connection->addr_text.data, iplen);
        ip_buf[iplen] = '\0';
    }
    cg_gate_in_t in = {
        .peer = peer,
        .app = app,
        .app_ambiguous = app_ambiguous,
        .cert_only = app_later,
        .fail_open = lc->on_store_error == 1,
        .stale_s = lc->stale_s > 0 ? (int) lc->stale_s : 0,
        .now = (int64_t) ngx_time(),
        .client = ip,
        .client_seq = cc != NULL ? cc->ip_seq : 0,
        .log_ctx = r->connection->log,
        /* cg_log_check's answer for a debug line, without the call per request. */
        .debug_off = r->connection->log->log_level < NGX_LOG_DEBUG,
        .conn = cc != NULL ? &cc->dc : NULL,
        .shadow = req->state == ST_CERT_OK ? req->shadow && (lc->enabled != 1 || lc->shadow == 1)
                                           : lc->shadow == 1,
    };
    cg_gate_verdict_t v;
    cg_gate_lookup_t lk;          /* written by cg_gate_begin only for a lookup */
    if (req->state == ST_CERT_OK) {
        /* The certificate was admitted before: now with the app. */
        cg_gate_decide(cg_gate_p, &in, CG_STORE_OK, &req->v->reg, NULL, &v);
    } else if (req->state == ST_LOOKED_UP) {
        cg_gate_finish(cg_gate_p, &in, req->lk, &v);
    } else if (cg_gate_begin(cg_gate_p, &in, &lk, &v) == CG_GATE_LOOKUP) {
        req->lk = ngx_palloc(r->pool, sizeof(*req->lk));
        if (req->lk == NULL) {
            cg_gate_lookup_fail(&lk, CG_STORE_CONN, "out of memory");
            cg_gate_finish(cg_gate_p, &in, &lk, &v);
        } else {
            cg_lookup_move(req->lk, &lk);
            if (cg_lookup_start(r, req) == NGX_AGAIN)
                return NGX_DONE;
            cg_gate_finish(cg_gate_p, &in, req->lk, &v);
        }
    }
    if (!v.final) {
        req->state = ST_CERT_OK;
        req->app_var = lc->app_var;
        req->shadow = lc->shadow == 1;
        req->v = ngx_palloc(r->pool, sizeof(*req->v));
        if (req->v == NULL)
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        *req->v = v;
        req->v->regp = &req->v->reg;   /* a cert_only allow copies into reg */
        return NGX_DECLINED;
    }
    req->state = ST_DECIDED;
    req->reason = v.reason;
    if (v.reason == CG_ALLOW)
        return cg_export_allow(r, lc, req, &v, c, cc, in.now) == NGX_OK ? NGX_DECLINED
                                                              : NGX_HTTP_INTERNAL_SERVER_ERROR;
    if (v.pass) {   /* shadow (CG01010) or fail-open (CG02002): not enforced */
        req->not_enforced = 1;
        return NGX_DECLINED;
    }
    return cg_respond_deny(r, v.reason);
}

/* Installed only where some certgate_app_from variable is: a request (main or
 * sub) was decided in its location's rewrite phase; the app from a variable
 * is left for here. */
static ngx_int_t cg_app_handler(ngx_http_request_t *r)
{
    return cg_gate(r, 0);
}

static ngx_int_t cg_rewrite_handler(ngx_http_request_t *r)
{
    /* Subrequests too (nginx skips the access phase for them, not this one):
     * into a gated location from an ungated one, or from a deny not enforced. */
    return cg_gate(r, 1);
}

/*
 * A response made in the rewrite phase (a "return" after "set") of a location
 * whose app comes from a variable, after the certificate was admitted and
 * before the precontent phase checked the app: check the app now, and on a
 * mismatch send a 403 without a body instead.
 */
static ngx_int_t cg_header_filter_app(ngx_http_request_t *r);

/* Every response passes here: the check alone, without the app check's frame. */
static ngx_int_t cg_header_filter(ngx_http_request_t *r)
{
    cg_main_conf_t *mc = ngx_http_get_module_main_conf(r, ngx_http_certgate_module);
    if (mc == NULL || !mc->app_var_used)
        return cg_next_header_filter(r);
    return cg_header_filter_app(r);
}

__attribute__((noinline)) static ngx_int_t cg_header_filter_app(ngx_http_request_t *r)
{
    /* A subrequest's own state only (its location answered in the rewrite
     * phase): an ancestor's app may still be set by its auth_request_set. */
    cg_req_t *req = cg_req_find(r);
    if (req == NULL || req->state != ST_CERT_OK || (r != r->main && req->owner != r))
        return cg_next_header_filter(r);
    char app[CG_APP_MAX + 2];
    cg_request_app(r, APP_FROM_VARIABLE, NULL, req->app_var, app, sizeof(app));
    req->state = ST_DECIDED;
    if (app[0] != '\0' && ngx_strcmp(app, req->v->reg.app_id) == 0) {
        req->reason = CG_ALLOW;
        return cg_next_header_filter(r);
    }
    req->reason = CG_R_APP_MISMATCH;
    if (req->shadow) {      /* as cg_gate_decide in shadow mode: count, log, let it go */
        req->not_enforced = 1;
        cg_metrics_would_deny(cg_gate_metrics(cg_gate_p), CG_R_APP_MISMATCH);
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0, "CG01010: shadow deny (not "
                      "enforced) reason=app_mismatch fingerprint=- app=%s cert=%s client=%V "
                      "(answer made before the app check)", req->v->reg.app_id, req->v->reg.id,
                      &r->connection->addr_text);
        return cg_next_header_filter(r);
    }
    ngx_log_error(NGX_LOG_WARN, r->connection->log, 0, "CG01001: deny reason=app_mismatch "
                  "fingerprint=- app=%s cert=%s client=%V (answer made before the app check)",
                  req->v->reg.app_id, req->v->reg.id, &r->connection->addr_text);
    r->headers_out.status = NGX_HTTP_FORBIDDEN;
    r->headers_out.status_line.len = 0;
    ngx_http_clear_content_length(r);
    ngx_http_clear_location(r);
    r->headers_out.content_length_n = 0;
    r->header_only = 1;
    if (cg_set_out_header(r, "CertGate-Reason", cg_reason_name(CG_R_APP_MISMATCH)) != NGX_OK ||
        cg_set_out_header(r, "Cache-Control", "no-store") != NGX_OK)
        return NGX_ERROR;
    return cg_next_header_filter(r);
}

/* ------------------------------------------------------------ variables */

static ngx_int_t cg_variable(ngx_http_request_t *r, ngx_http_variable_value_t *v, uintptr_t data)
{
    cg_req_t *req = cg_req_find(r);
    ngx_str_t s = ngx_null_string;

    if (req != NULL && req->state == ST_DECIDED) {
        /* The strings are the request's only once an allow exported them. */
        if (!req->exported && data != 4 && data != 5)
            data = 7;
        switch (data) {
        case 0: s = req->app_id; break;
        case 1: s = req->cert_id; break;
        case 2: s = req->fingerprint; break;
        case 3: s = req->expire_in; break;
        case 5:
            if (req->not_enforced) {
                ngx_str_set(&s, "0");
            } else {
                ngx_str_set(&s, "1");
            }
            break;
        case 6: s = req->x5t_s256; break;
        case 7: break;
        default: s.data = (u_char *) cg_reason_name(req->reason); s.len = ngx_strlen(s.data);
        }
    }
    if (s.len == 0) {
        v->not_found = 1;
        return NGX_OK;
    }
    v->data = s.data;
    v->len = s.len;
    v->valid = 1;
    v->no_cacheable = 0;
    v->not_found = 0;
    return NGX_OK;
}

static ngx_http_variable_t cg_vars[] = {
    { ngx_string("certgate_app_id"), NULL, cg_variable, 0, NGX_HTTP_VAR_NOCACHEABLE, 0 },
    { ngx_string("certgate_cert_id"), NULL, cg_variable, 1, NGX_HTTP_VAR_NOCACHEABLE, 0 },
    { ngx_string("certgate_fingerprint"), NULL, cg_variable, 2, NGX_HTTP_VAR_NOCACHEABLE, 0 },
    { ngx_string("certgate_expire_in"), NULL, cg_variable, 3, NGX_HTTP_VAR_NOCACHEABLE, 0 },
    { ngx_string("certgate_reason"), NULL, cg_variable, 4, NGX_HTTP_VAR_NOCACHEABLE, 0 },
    { ngx_string("certgate_enforced"), NULL, cg_variable, 5, NGX_HTTP_VAR_NOCACHEABLE, 0 },
    { ngx_string("certgate_x5t_s256"), NULL, cg_variable, 6, NGX_HTTP_VAR_NOCACHEABLE, 0 },
    ngx_http_null_variable
};

static ngx_int_t cg_add_variables(ngx_conf_t *cf)
{
    for (ngx_http_variable_t *v = cg_vars; v->name.len; v++) {
        ngx_http_variable_t *var = ngx_http_add_variable(cf, &v->name, v->flags);
        if (var == NULL)
            return NGX_ERROR;
        var->get_handler = v->get_handler;
        var->data = v->data;
    }
    return NGX_OK;
}

/* ------------------------------------------------------------ init */

static int cg_server_gated(const cg_main_conf_t *mc, const ngx_http_core_srv_conf_t *cscf)
{
    void **g = mc->gated_servers != NULL ? mc->gated_servers->elts : NULL;
    for (ngx_uint_t i = 0; g != NULL && i < mc->gated_servers->nelts; i++)
        if (g[i] == cscf)
            return 1;
    return 0;
}

/* Whether a port lists cscf among its servers (gated: one of them is gated). */
static int cg_port_has(const ngx_http_conf_port_t *port, const cg_main_conf_t *mc,
                       const ngx_http_core_srv_conf_t *cscf, int gated)
{
    const ngx_http_conf_addr_t *addr = port->addrs.elts;
    for (ngx_uint_t a = 0; a < port->addrs.nelts; a++) {
        ngx_http_core_srv_conf_t **sv = addr[a].servers.elts;
        for (ngx_uint_t k = 0; k < addr[a].servers.nelts; k++)
            if (gated ? cg_server_gated(mc, sv[k]) : sv[k] == cscf)
                return 1;
    }
    return 0;
}

/*
 * The ticket callback costs a handshake more digests: only where a gate can
 * run. OpenSSL asks the SSL_CTX of the server that took the connection
 * (before SNI picks another), so a server sharing a port with a gated one
 * gets it too.
 */
static int cg_ticket_cb_wanted(ngx_http_core_main_conf_t *cmcf, const cg_main_conf_t *mc,
                               const ngx_http_core_srv_conf_t *cscf)
{
    if (mc->gated_all || cg_server_gated(mc, cscf))
        return 1;
    if (cmcf->ports == NULL)
        return 1;
    const ngx_http_conf_port_t *port = cmcf->ports->elts;
    for (ngx_uint_t p = 0; p < cmcf->ports->nelts; p++)
        if (cg_port_has(&port[p], mc, cscf, 0) && cg_port_has(&port[p], mc, cscf, 1))
            return 1;
    return 0;
}

static ngx_int_t cg_init(ngx_conf_t *cf)
{
    ngx_http_core_main_conf_t *cmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module);
    cg_main_conf_t *mc = ngx_http_conf_get_module_main_conf(cf, ngx_http_certgate_module);

    /* Installed whatever this configuration says: the filter chain is global,
     * and a reload that fails after this point leaves it to the old
     * configuration's workers (a respawned one included). The filter returns
     * at once unless the request's configuration names an app by variable. */
    cg_next_header_filter = ngx_http_top_header_filter;
    ngx_http_top_header_filter = cg_header_filter;
    if (!mc->used)
        return NGX_OK;
    /* The gate runs in the rewrite phase, ahead of the rewrite module's
     * return/rewrite; the precontent handler checks an app named by a
     * variable, after auth_request (access phase) set it and before
     * try_files or mirror act. Both go to the front of their phase
     * (cg_gate_first). */
    ngx_http_handler_pt *h = ngx_array_push(&cmcf->phases[NGX_HTTP_REWRITE_PHASE].handlers);
    if (h == NULL)
        return NGX_ERROR;
    *h = cg_rewrite_handler;
    /* Only for an app named by a variable: subrequests (SSI, add_before_body...)
     * are gated in the rewrite phase like main requests. */
    if (mc->app_var_used) {
        h = ngx_array_push(&cmcf->phases[NGX_HTTP_PRECONTENT_PHASE].handlers);
        if (h == NULL)
            return NGX_ERROR;
        *h = cg_app_handler;
    }

    /* Resumed TLS 1.3 sessions carry the chain in the ticket (see cg_tls.h). */
    ngx_http_core_srv_conf_t **cscf = cmcf->servers.elts;
    for (ngx_uint_t i = 0; i < cmcf->servers.nelts; i++) {
        ngx_http_ssl_srv_conf_t *sscf = cscf[i]->ctx->srv_conf[ngx_http_ssl_module.ctx_index];
        if (sscf != NULL && sscf->ssl.ctx != NULL && cg_ticket_cb_wanted(cmcf, mc, cscf[i]) &&
            cg_tls_install_ticket_cb(sscf->ssl.ctx) != 0)
            ngx_conf_log_error(NGX_LOG_WARN, cf, 0, "CG04003: the session ticket callback "
                               "could not be installed; resumed sessions get chain_mismatch");
    }
    return NGX_OK;
}
