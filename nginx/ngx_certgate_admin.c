/*
 * ngx_http_certgate_admin_module: the admin API (src/cg_admin.h) on nginx.
 * The core's handler blocks (Redis via the blocking cg_store, certificate
 * checks): it runs in an nginx thread pool, never on the worker's event loop.
 * The request body is read by nginx first; the response is sent from the
 * task's completion event. One cg_store per worker serves all pool threads:
 * it is thread-safe, each call takes its own connection, and a connection
 * that failed is closed, never reused.
 */
#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <ctype.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <openssl/crypto.h>

#include "cg_admin.h"
#include "cg_cert.h"
#include "cg_policy.h"
#include "cg_reg.h"
#include "cg_sentinel.h"
#include "cg_store.h"
#include "ngx_certgate_admin.h"

#if !(NGX_THREADS)
#error "certgate_admin needs nginx built --with-threads"
#endif

#define CG_ADM_MATCH_EXACT 0
#define CG_ADM_MATCH_IGNORE_CASE 1
/* Idle Redis connections a worker keeps for its admin threads. */
#define CG_ADM_MAX_IDLE 8
/* The nice value of the admin threads (the worker's own is unchanged). */
#define CG_ADM_NICE 10

typedef struct {
    ngx_str_t user;               /* NUL-terminated */
    unsigned roles;
} cg_adm_role_t;

typedef struct {
    ngx_str_t user;               /* NUL-terminated */
    ngx_str_t customer;           /* NUL-terminated */
} cg_adm_customer_t;

typedef struct {
    ngx_flag_t enabled;
    ngx_str_t base;               /* the location prefix, no trailing '/' */
    ngx_str_t pool_name;
    ngx_thread_pool_t *pool;
    ngx_http_complex_value_t *user;   /* who nginx authenticated, e.g. $remote_user */
    ngx_array_t *roles;           /* cg_adm_role_t */
    ngx_array_t *customers;       /* cg_adm_customer_t */
    ngx_uint_t user_match;
    ngx_flag_t self_approve;
    ngx_int_t soon_days;
    ngx_msec_t timeout;
    size_t max_body;
    ngx_int_t min_rsa_bits;
    ngx_int_t min_days, max_days;
    ngx_array_t *deny;            /* ngx_str_t, NUL-terminated; empty: none */
    cg_ca_entry_t *cas;
    ngx_int_t n_cas;
    ngx_flag_t ev_only_new;
    ngx_flag_t cn_contains_org;
} cg_adm_loc_t;

typedef struct {
    ngx_flag_t used;              /* some location says certgate_admin */
} cg_adm_main_t;

/* Per admin request, in r->pool. */
typedef struct {
    ngx_http_request_t *r;
    cg_adm_loc_t *lc;
    size_t received;              /* body bytes so far (chunked limit) */
    unsigned too_large:1;
    unsigned replaced:1;          /* nginx's 413 page became ours */
    unsigned done:1;              /* the task finished */
    unsigned posted:1;            /* the task was posted: never twice for one request */
    /* A timer while the task runs: a quitting worker (reload) waits for timers,
     * not for thread tasks, and would exit with this request unanswered. */
    ngx_event_t guard;
    ngx_chain_t *bufs;            /* the body nginx read, for the task */
    int body_failed;              /* the task could not read the body */
    const char *deny_store[CG_POLICY_DENY_MAX];
    cg_admin_cfg_t cfg;
    cg_admin_req_t req;
    cg_admin_resp_t resp;
    const char *log_user;
    const char *log_path;
} cg_adm_ctx_t;

static void *cg_adm_create_main_conf(ngx_conf_t *cf);
static void *cg_adm_create_loc_conf(ngx_conf_t *cf);
static char *cg_adm_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child);
static ngx_int_t cg_adm_postconf(ngx_conf_t *cf);
static ngx_int_t cg_adm_init_process(ngx_cycle_t *cycle);
static void cg_adm_exit_process(ngx_cycle_t *cycle);
static char *cg_adm_set_admin(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
static char *cg_adm_set_role(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
static char *cg_adm_set_customer(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
static char *cg_adm_set_validity(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
static char *cg_adm_set_user_match(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
static char *cg_adm_set_deny(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
static char *cg_adm_set_cas(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
static ngx_int_t cg_adm_handler(ngx_http_request_t *r);

#define CG_ADM_CONF (NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF)

static char *cg_adm_check_timeout(ngx_conf_t *cf, void *post, void *data);
static char *cg_adm_check_max_body(ngx_conf_t *cf, void *post, void *data);
static ngx_conf_post_t cg_adm_timeout_post = { cg_adm_check_timeout };
static ngx_conf_post_t cg_adm_max_body_post = { cg_adm_check_max_body };

/* The ranges of the httpd directives (src/httpd/cg_httpd_config.c). */
static ngx_conf_num_bounds_t cg_adm_soon_bounds = { ngx_conf_check_num_bounds, 0, 3650 };
static ngx_conf_num_bounds_t cg_adm_rsa_bounds = { ngx_conf_check_num_bounds, 1024, 16384 };

static ngx_command_t cg_adm_commands[] = {
    { ngx_string("certgate_admin"), NGX_HTTP_LOC_CONF | NGX_CONF_NOARGS,
      cg_adm_set_admin, NGX_HTTP_LOC_CONF_OFFSET, 0, NULL },
    { ngx_string("certgate_admin_thread_pool"), CG_ADM_CONF | NGX_CONF_TAKE1,
      ngx_conf_set_str_slot, NGX_HTTP_LOC_CONF_OFFSET, offsetof(cg_adm_loc_t, pool_name), NULL },
    { ngx_string("certgate_admin_user"), CG_ADM_CONF | NGX_CONF_TAKE1,
      ngx_http_set_complex_value_slot, NGX_HTTP_LOC_CONF_OFFSET, offsetof(cg_adm_loc_t, user),
      NULL },
    { ngx_string("certgate_admin_role"), CG_ADM_CONF | NGX_CONF_2MORE,
      cg_adm_set_role, NGX_HTTP_LOC_CONF_OFFSET, 0, NULL },
    { ngx_string("certgate_admin_customer"), CG_ADM_CONF | NGX_CONF_2MORE,
      cg_adm_set_customer, NGX_HTTP_LOC_CONF_OFFSET, 0, NULL },
    { ngx_string("certgate_admin_user_match"), CG_ADM_CONF | NGX_CONF_TAKE1,
      cg_adm_set_user_match, NGX_HTTP_LOC_CONF_OFFSET, 0, NULL },
    { ngx_string("certgate_admin_self_approve"), CG_ADM_CONF | NGX_CONF_FLAG,
      ngx_conf_set_flag_slot, NGX_HTTP_LOC_CONF_OFFSET, offsetof(cg_adm_loc_t, self_approve),
      NULL },
    { ngx_string("certgate_admin_max_body"), CG_ADM_CONF | NGX_CONF_TAKE1,
      ngx_conf_set_size_slot, NGX_HTTP_LOC_CONF_OFFSET, offsetof(cg_adm_loc_t, max_body),
      &cg_adm_max_body_post },
    { ngx_string("certgate_admin_timeout"), CG_ADM_CONF | NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot, NGX_HTTP_LOC_CONF_OFFSET, offsetof(cg_adm_loc_t, timeout),
      &cg_adm_timeout_post },
    { ngx_string("certgate_expiring_soon_days"), CG_ADM_CONF | NGX_CONF_TAKE1,
      ngx_conf_set_num_slot, NGX_HTTP_LOC_CONF_OFFSET, offsetof(cg_adm_loc_t, soon_days),
      &cg_adm_soon_bounds },
    { ngx_string("certgate_policy_min_rsa_bits"), CG_ADM_CONF | NGX_CONF_TAKE1,
      ngx_conf_set_num_slot, NGX_HTTP_LOC_CONF_OFFSET, offsetof(cg_adm_loc_t, min_rsa_bits),
      &cg_adm_rsa_bounds },
    { ngx_string("certgate_policy_validity_days"), CG_ADM_CONF | NGX_CONF_TAKE2,
      cg_adm_set_validity, NGX_HTTP_LOC_CONF_OFFSET, 0, NULL },
    { ngx_string("certgate_policy_issuer_deny"), CG_ADM_CONF | NGX_CONF_1MORE,
      cg_adm_set_deny, NGX_HTTP_LOC_CONF_OFFSET, 0, NULL },
    { ngx_string("certgate_policy_authorized_cas"), CG_ADM_CONF | NGX_CONF_TAKE1,
      cg_adm_set_cas, NGX_HTTP_LOC_CONF_OFFSET, 0, NULL },
    { ngx_string("certgate_policy_ev_only_new"), CG_ADM_CONF | NGX_CONF_FLAG,
      ngx_conf_set_flag_slot, NGX_HTTP_LOC_CONF_OFFSET, offsetof(cg_adm_loc_t, ev_only_new),
      NULL },
    { ngx_string("certgate_policy_cn_contains_org"), CG_ADM_CONF | NGX_CONF_FLAG,
      ngx_conf_set_flag_slot, NGX_HTTP_LOC_CONF_OFFSET, offsetof(cg_adm_loc_t, cn_contains_org),
      NULL },
    ngx_null_command
};

static ngx_http_module_t cg_adm_module_ctx = {
    NULL, cg_adm_postconf,
    cg_adm_create_main_conf, NULL,
    NULL, NULL,
    cg_adm_create_loc_conf, cg_adm_merge_loc_conf
};

ngx_module_t ngx_http_certgate_admin_module = {
    NGX_MODULE_V1,
    &cg_adm_module_ctx, cg_adm_commands, NGX_HTTP_MODULE,
    NULL, NULL, cg_adm_init_process, NULL, NULL, cg_adm_exit_process, NULL,
    NGX_MODULE_V1_PADDING
};

/* Per worker; the thread pool's exit (a core module's) has joined its threads
 * before our exit_process frees it. */
static cg_store_t *cg_adm_store;
static cg_gate_events_t cg_adm_events;     /* its sentinel events: log, counters */

static ngx_http_request_body_filter_pt cg_adm_next_body_filter;
static ngx_http_output_header_filter_pt cg_adm_next_header_filter;
static ngx_http_output_body_filter_pt cg_adm_next_output_filter;

/* ------------------------------------------------------------ config */

static void *cg_adm_create_main_conf(ngx_conf_t *cf)
{
    cg_adm_main_t *c = ngx_pcalloc(cf->pool, sizeof(*c));
    return c;
}

static void *cg_adm_create_loc_conf(ngx_conf_t *cf)
{
    cg_adm_loc_t *c = ngx_pcalloc(cf->pool, sizeof(*c));
    if (c == NULL)
        return NULL;
    c->enabled = NGX_CONF_UNSET;
    c->user = NGX_CONF_UNSET_PTR;
    c->roles = NGX_CONF_UNSET_PTR;
    c->customers = NGX_CONF_UNSET_PTR;
    c->user_match = NGX_CONF_UNSET_UINT;
    c->self_approve = NGX_CONF_UNSET;
    c->soon_days = NGX_CONF_UNSET;
    c->timeout = NGX_CONF_UNSET_MSEC;
    c->max_body = NGX_CONF_UNSET_SIZE;
    c->min_rsa_bits = NGX_CONF_UNSET;
    c->min_days = NGX_CONF_UNSET;
    c->max_days = NGX_CONF_UNSET;
    c->deny = NGX_CONF_UNSET_PTR;
    c->n_cas = NGX_CONF_UNSET;
    c->ev_only_new = NGX_CONF_UNSET;
    c->cn_contains_org = NGX_CONF_UNSET;
    return c;
}

/* Does a certgate_admin_user value read $remote_user (names are case-blind)? */
static int cg_adm_names_remote_user(const ngx_str_t *v)
{
    static const char name[] = "remote_user";
    size_t nl = sizeof(name) - 1;
    for (size_t i = 0; i < v->len; i++) {
        if (v->data[i] != '$')
            continue;
        size_t at = i + 1 + (i + 1 < v->len && v->data[i + 1] == '{');
        if (at + nl > v->len || ngx_strncasecmp(v->data + at, (u_char *) name, nl) != 0)
            continue;
        u_char next = at + nl < v->len ? v->data[at + nl] : '\0';
        if (!(isalnum(next) || next == '_'))
            return 1;
    }
    return 0;
}

static char *cg_adm_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child)
{
    cg_adm_loc_t *prev = parent, *c = child;
    cg_admin_cfg_t def;

    cg_admin_cfg_defaults(&def);
    ngx_conf_merge_value(c->enabled, prev->enabled, 0);
    ngx_conf_merge_str_value(c->pool_name, prev->pool_name, "default");
    ngx_conf_merge_ptr_value(c->user, prev->user, NULL);
    ngx_conf_merge_ptr_value(c->roles, prev->roles, NULL);
    ngx_conf_merge_ptr_value(c->customers, prev->customers, NULL);
    ngx_conf_merge_uint_value(c->user_match, prev->user_match, CG_ADM_MATCH_EXACT);
    ngx_conf_merge_value(c->self_approve, prev->self_approve, def.self_approve);
    ngx_conf_merge_value(c->soon_days, prev->soon_days, def.expiring_soon_days);
    ngx_conf_merge_msec_value(c->timeout, prev->timeout, (ngx_msec_t) def.timeout_ms);
    ngx_conf_merge_size_value(c->max_body, prev->max_body, CG_CERT_MAX_INPUT);
    ngx_conf_merge_value(c->min_rsa_bits, prev->min_rsa_bits, def.policy.min_rsa_bits);
    if (c->min_days == NGX_CONF_UNSET) {
        c->min_days = prev->min_days == NGX_CONF_UNSET ? def.policy.min_days : prev->min_days;
        c->max_days = prev->max_days == NGX_CONF_UNSET ? def.policy.max_days : prev->max_days;
    }
    ngx_conf_merge_ptr_value(c->deny, prev->deny, NULL);
    if (c->n_cas == NGX_CONF_UNSET) {
        c->cas = prev->cas;
        c->n_cas = prev->n_cas;
    }
    ngx_conf_merge_value(c->ev_only_new, prev->ev_only_new, def.policy.ev_only_new);
    ngx_conf_merge_value(c->cn_contains_org, prev->cn_contains_org, def.policy.cn_contains_org);
    if (c->enabled != 1)
        return NGX_CONF_OK;

    ngx_http_core_loc_conf_t *clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
#if (NGX_PCRE)
    if (clcf->regex != NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "CG09050: certgate_admin needs a prefix location, "
                           "not a regular expression: its prefix is the API's base path");
        return NGX_CONF_ERROR;
    }
#endif
    if (clcf->named) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "CG09050: certgate_admin needs a prefix location");
        return NGX_CONF_ERROR;
    }
    /* With satisfy any, a client the access rules let in skips auth_basic,
     * and nginx still fills $remote_user from its unchecked Authorization
     * header: anyone there could name himself a manager. */
    if (clcf->satisfy == NGX_HTTP_SATISFY_ANY && c->user != NULL
        && cg_adm_names_remote_user(&c->user->value)) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "CG09050: certgate_admin_user $remote_user in "
                           "location \"%V\" with satisfy any: a client that allow lets in skips "
                           "auth_basic and names any user; use satisfy all, or a variable only "
                           "authentication sets (auth_request_set)", &clcf->name);
        return NGX_CONF_ERROR;
    }
    /* An inner location is an API of its own, based at its own prefix (as an
     * inner <Location> is on httpd). */
    c->base = clcf->name;
    while (c->base.len > 0 && c->base.data[c->base.len - 1] == '/')
        c->base.len--;
    clcf->handler = cg_adm_handler;
    /* The body stays in memory (it may hold a private key) and
     * certgate_admin_max_body is the limit, answered in JSON. */
    clcf->client_max_body_size = 0;
    /* Not even an inherited client_body_in_file_only puts a key on disk. */
    clcf->client_body_in_file_only = 0;    /* off */
    if (clcf->client_body_buffer_size < c->max_body + 1)
        clcf->client_body_buffer_size = c->max_body + 1;
    c->pool = ngx_thread_pool_add(cf, &c->pool_name);
    if (c->pool == NULL)
        return NGX_CONF_ERROR;
    cg_adm_main_t *mc = ngx_http_conf_get_module_main_conf(cf, ngx_http_certgate_admin_module);
    mc->used = 1;
    return NGX_CONF_OK;
}

/* Range checks run as the directive is read, so nginx names its file and line. */
static char *cg_adm_check_timeout(ngx_conf_t *cf, void *post, void *data)
{
    ngx_msec_t *v = data;
    if (*v < 1 || *v > 60000) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "CG09050: "
                           "certgate_admin_timeout must be 1..60000 ms "
                           "(e.g. 2000ms or 2s)");
        return NGX_CONF_ERROR;
    }
    return NGX_CONF_OK;
}

static char *cg_adm_check_max_body(ngx_conf_t *cf, void *post, void *data)
{
    size_t *v = data;
    if (*v < 1024 || *v > 64 * 1024 * 1024) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "CG09050: "
                           "certgate_admin_max_body must be 1024 bytes"
                           "..64m (e.g. 8m)");
        return NGX_CONF_ERROR;
    }
    return NGX_CONF_OK;
}

static char *cg_adm_set_user_match(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    cg_adm_loc_t *c = conf;
    ngx_str_t *v = cf->args->elts;

    if (c->user_match != NGX_CONF_UNSET_UINT)
        return "is duplicate";
    if (ngx_strcmp(v[1].data, "exact") == 0) {
        c->user_match = CG_ADM_MATCH_EXACT;
    } else if (ngx_strcmp(v[1].data, "ignore_case") == 0) {
        c->user_match = CG_ADM_MATCH_IGNORE_CASE;
    } else {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "CG09050: certgate_admin_user_match: use exact "
                           "(default) or ignore_case, not \"%V\"", &v[1]);
        return NGX_CONF_ERROR;
    }
    return NGX_CONF_OK;
}

static char *cg_adm_set_admin(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    cg_adm_loc_t *c = conf;
    if (c->enabled != NGX_CONF_UNSET)
        return "is duplicate";
    c->enabled = 1;
    return NGX_CONF_OK;
}

static ngx_int_t cg_adm_nul(ngx_conf_t *cf, const ngx_str_t *in, ngx_str_t *out)
{
    out->data = ngx_pnalloc(cf->pool, in->len + 1);
    if (out->data == NULL)
        return NGX_ERROR;
    ngx_memcpy(out->data, in->data, in->len);
    out->data[in->len] = '\0';
    out->len = in->len;
    return NGX_OK;
}

/* certgate_admin_role ROLE USER...: as CertGateAdminRole, roles add up. */
static char *cg_adm_set_role(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    cg_adm_loc_t *c = conf;
    ngx_str_t *v = cf->args->elts;
    unsigned role = cg_role_parse((const char *) v[1].data);

    if (role == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "CG09050: "
                           "certgate_admin_role: unknown role \"%V\"; "
                           "use developer, manager, support or auditor", &v[1]);
        return NGX_CONF_ERROR;
    }
    /* A fresh list per level, so inner locations do not edit outer ones. */
    if (c->roles == NGX_CONF_UNSET_PTR || c->roles == NULL) {
        c->roles = ngx_array_create(cf->pool, 8, sizeof(cg_adm_role_t));
        if (c->roles == NULL)
            return NGX_CONF_ERROR;
    }
    for (ngx_uint_t i = 2; i < cf->args->nelts; i++) {
        cg_adm_role_t *e = c->roles->elts;
        ngx_uint_t j;
        for (j = 0; j < c->roles->nelts; j++)
            if (e[j].user.len == v[i].len && ngx_strncmp(e[j].user.data, v[i].data, v[i].len) == 0)
                break;
        if (j < c->roles->nelts) {
            e[j].roles |= role;
            continue;
        }
        cg_adm_role_t *n = ngx_array_push(c->roles);
        if (n == NULL || cg_adm_nul(cf, &v[i], &n->user) != NGX_OK)
            return NGX_CONF_ERROR;
        n->roles = role;
    }
    return NGX_CONF_OK;
}

/* certgate_admin_customer CUSTOMER USER...: as CertGateAdminCustomer. */
static char *cg_adm_set_customer(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    cg_adm_loc_t *c = conf;
    ngx_str_t *v = cf->args->elts;

    if (!cg_app_valid((const char *) v[1].data, v[1].len)) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "CG09050: "
                           "certgate_admin_customer: the customer id "
                           "\"%V\" must be printable ASCII without spaces or * ? [ ] : { } \\",
                           &v[1]);
        return NGX_CONF_ERROR;
    }
    if (c->customers == NGX_CONF_UNSET_PTR || c->customers == NULL) {
        c->customers = ngx_array_create(cf->pool, 8, sizeof(cg_adm_customer_t));
        if (c->customers == NULL)
            return NGX_CONF_ERROR;
    }
    for (ngx_uint_t i = 2; i < cf->args->nelts; i++) {
        cg_adm_customer_t *e = c->customers->elts;
        for (ngx_uint_t j = 0; j < c->customers->nelts; j++) {
            if (e[j].user.len == v[i].len
                && ngx_strncmp(e[j].user.data, v[i].data, v[i].len) == 0) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "CG09050: "
                                   "certgate_admin_customer: user \"%V\" "
                                   "already has a customer", &v[i]);
                return NGX_CONF_ERROR;
            }
        }
        cg_adm_customer_t *n = ngx_array_push(c->customers);
        if (n == NULL || cg_adm_nul(cf, &v[i], &n->user) != NGX_OK
            || cg_adm_nul(cf, &v[1], &n->customer) != NGX_OK)
            return NGX_CONF_ERROR;
    }
    return NGX_CONF_OK;
}

static char *cg_adm_set_validity(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    cg_adm_loc_t *c = conf;
    ngx_str_t *v = cf->args->elts;

    if (c->min_days != NGX_CONF_UNSET)
        return "is duplicate";
    ngx_int_t lo = ngx_atoi(v[1].data, v[1].len), hi = ngx_atoi(v[2].data, v[2].len);
    if (lo < 1 || lo > 36500 || hi < 1 || hi > 36500 || lo > hi) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "CG09050: "
                           "certgate_policy_validity_days wants MIN MAX "
                           "days, 1..36500, MIN not above MAX; got \"%V %V\"", &v[1], &v[2]);
        return NGX_CONF_ERROR;
    }
    c->min_days = lo;
    c->max_days = hi;
    return NGX_CONF_OK;
}

/* certgate_policy_issuer_deny PATTERN... | none */
static char *cg_adm_set_deny(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    cg_adm_loc_t *c = conf;
    ngx_str_t *v = cf->args->elts;

    if (c->deny != NGX_CONF_UNSET_PTR)
        return "is duplicate";
    c->deny = ngx_array_create(cf->pool, 4, sizeof(ngx_str_t));
    if (c->deny == NULL)
        return NGX_CONF_ERROR;
    if (cf->args->nelts == 2 && ngx_strcmp(v[1].data, "none") == 0)
        return NGX_CONF_OK;    /* an empty list: nothing denied */
    if (cf->args->nelts - 1 > CG_POLICY_DENY_MAX) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "CG09050: "
                           "certgate_policy_issuer_deny: more than %d "
                           "patterns", CG_POLICY_DENY_MAX);
        return NGX_CONF_ERROR;
    }
    for (ngx_uint_t i = 1; i < cf->args->nelts; i++) {
        ngx_str_t *s = ngx_array_push(c->deny);
        if (s == NULL || cg_adm_nul(cf, &v[i], s) != NGX_OK)
            return NGX_CONF_ERROR;
    }
    return NGX_CONF_OK;
}

static char *cg_adm_set_cas(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    cg_adm_loc_t *c = conf;
    ngx_str_t *v = cf->args->elts;
    ngx_str_t path = v[1];
    char err[300];

    if (c->n_cas != NGX_CONF_UNSET)
        return "is duplicate";
    if (ngx_conf_full_name(cf->cycle, &path, 1) != NGX_OK)
        return NGX_CONF_ERROR;
    c->cas = ngx_pcalloc(cf->pool, sizeof(cg_ca_entry_t) * CG_POLICY_CA_MAX);
    if (c->cas == NULL)
        return NGX_CONF_ERROR;
    int n = cg_policy_load_cas((const char *) path.data, c->cas, CG_POLICY_CA_MAX, err,
                               sizeof(err));
    if (n < 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "CG09050: "
                           "certgate_policy_authorized_cas: %s", err);
        return NGX_CONF_ERROR;
    }
    c->n_cas = n;
    return NGX_CONF_OK;
}

/* ------------------------------------------------------------ workers */

static ngx_int_t cg_adm_init_process(ngx_cycle_t *cycle)
{
    cg_adm_main_t *mc = ngx_http_cycle_get_module_main_conf(cycle,
                                                           ngx_http_certgate_admin_module);
    cg_gate_cfg_t gcfg;
    char err[200];

    if (mc == NULL || !mc->used
        || (ngx_process != NGX_PROCESS_WORKER && ngx_process != NGX_PROCESS_SINGLE))
        return NGX_OK;
    if (cg_ngx_store_cfg(cycle, &gcfg) != NGX_OK)
        return NGX_OK;
    gcfg.store.max_idle = CG_ADM_MAX_IDLE;
    cg_adm_events.metrics = cg_ngx_core_events(cycle);
    cg_adm_events.log_ctx = cycle->log;
    gcfg.store.sentinel_event = cg_gate_sentinel_event;
    gcfg.store.sentinel_arg = &cg_adm_events;
    cg_adm_store = cg_store_new(&gcfg.store, err, sizeof(err));
    if (cg_adm_store == NULL) {
        ngx_log_error(NGX_LOG_ERR, cycle->log, 0, "CG06050: admin API: cannot set up the "
                      "Redis store: %s; admin requests get 503", err);
    } else if (cg_store_sentinel(cg_adm_store) != NULL &&
               cg_sentinel_watch(cg_store_sentinel(cg_adm_store)) != 0) {
        /* As the gate's: re-ask the sentinels every second, or a primary back from a
         * partition, still saying master, keeps getting the admin writes. */
        ngx_log_error(NGX_LOG_ERR, cycle->log, 0, "CG11006: admin API: cannot start the "
                      "sentinel thread; the master address is only checked after errors");
    }
    return NGX_OK;
}

static void cg_adm_exit_process(ngx_cycle_t *cycle)
{
    (void) cycle;
    cg_store_free(cg_adm_store);
    cg_adm_store = NULL;
}

/* ------------------------------------------------------------ request */

static const char *cg_adm_cstr(ngx_pool_t *p, const u_char *s, size_t len)
{
    u_char *d = ngx_pnalloc(p, len + 1);
    if (d == NULL)
        return NULL;
    ngx_memcpy(d, s, len);
    d[len] = '\0';
    return (const char *) d;
}

/* A copy fit for one log line: control bytes become '?'. */
static const char *cg_adm_logsafe(ngx_pool_t *p, const u_char *s, size_t len)
{
    if (len > 512)
        len = 512;
    u_char *d = (u_char *) cg_adm_cstr(p, s, len);
    if (d == NULL)
        return "-";
    for (size_t i = 0; i < len; i++)
        if (d[i] < 0x20 || d[i] == 0x7f)
            d[i] = '?';
    return (const char *) d;
}

static const char *cg_adm_logsafe_opt(ngx_http_request_t *r, const char *s)
{
    return s == NULL ? "-" : cg_adm_logsafe(r->pool, (const u_char *) s, ngx_strlen(s));
}

static const char *cg_adm_header(ngx_http_request_t *r, const char *name)
{
    size_t nl = ngx_strlen(name);
    ngx_list_part_t *part = &r->headers_in.headers.part;
    ngx_table_elt_t *h = part->elts;
    for (ngx_uint_t i = 0;; i++) {
        if (i >= part->nelts) {
            if (part->next == NULL)
                return NULL;
            part = part->next;
            h = part->elts;
            i = 0;
            if (part->nelts == 0)
                continue;
        }
        if (h[i].key.len == nl && ngx_strncasecmp(h[i].key.data, (u_char *) name, nl) == 0)
            return cg_adm_cstr(r->pool, h[i].value.data, h[i].value.len);
    }
}

/*
 * The request headers the core reads. Fill new cg_admin_req_t header fields
 * (e.g. Origin, Sec-Fetch-Site, Host for a CSRF check) here.
 */
static void cg_adm_fill_headers(ngx_http_request_t *r, cg_admin_req_t *req)
{
    req->content_type = cg_adm_header(r, "Content-Type");
    req->accept = cg_adm_header(r, "Accept");
    req->if_match = cg_adm_header(r, "If-Match");
    /* The same-origin rule for writes (cg_admin_cross_site) needs all four. */
    req->origin = cg_adm_header(r, "Origin");
    req->sec_fetch_site = cg_adm_header(r, "Sec-Fetch-Site");
    req->host = cg_adm_header(r, "Host");
#if (NGX_HTTP_SSL)
    req->tls = r->connection->ssl != NULL;
#else
    req->tls = 0;
#endif
}

static void cg_adm_cfg(const cg_adm_loc_t *lc, cg_admin_cfg_t *c, const char **deny_store)
{
    cg_admin_cfg_defaults(c);
    c->expiring_soon_days = (int) lc->soon_days;
    c->self_approve = lc->self_approve == 1;
    c->user_ignore_case = lc->user_match == CG_ADM_MATCH_IGNORE_CASE;
    c->timeout_ms = (int) lc->timeout;
    c->policy.min_rsa_bits = (int) lc->min_rsa_bits;
    c->policy.min_days = (int) lc->min_days;
    c->policy.max_days = (int) lc->max_days;
    if (lc->deny != NULL) {
        ngx_str_t *s = lc->deny->elts;
        c->policy.n_deny = 0;
        for (ngx_uint_t i = 0; i < lc->deny->nelts && i < CG_POLICY_DENY_MAX; i++)
            deny_store[c->policy.n_deny++] = (const char *) s[i].data;
        ngx_memcpy(c->policy.deny, deny_store, sizeof(c->policy.deny));
    }
    if (lc->n_cas != NGX_CONF_UNSET) {
        c->policy.cas = lc->cas;
        c->policy.n_cas = (size_t) lc->n_cas;
    }
    c->policy.ev_only_new = lc->ev_only_new == 1;
    c->policy.cn_contains_org = lc->cn_contains_org == 1;
}

/* As the httpd adapter's user_identity: -1 when one folded name has two customers. */
static int cg_adm_identity(const cg_adm_loc_t *lc, const char *user, unsigned *roles,
                           const char **customer)
{
    int fold = lc->user_match == CG_ADM_MATCH_IGNORE_CASE;
    *roles = 0;
    *customer = NULL;
    if (user == NULL)
        return 0;
    size_t ul = ngx_strlen(user);
    if (lc->roles != NULL) {
        cg_adm_role_t *e = lc->roles->elts;
        for (ngx_uint_t i = 0; i < lc->roles->nelts; i++) {
            if (e[i].user.len != ul)
                continue;
            if (fold ? ngx_strcasecmp(e[i].user.data, (u_char *) user) == 0
                     : ngx_strcmp(e[i].user.data, user) == 0)
                *roles |= e[i].roles;
        }
    }
    if (lc->customers != NULL) {
        cg_adm_customer_t *e = lc->customers->elts;
        for (ngx_uint_t i = 0; i < lc->customers->nelts; i++) {
            if (e[i].user.len != ul)
                continue;
            if (!(fold ? ngx_strcasecmp(e[i].user.data, (u_char *) user) == 0
                       : ngx_strcmp(e[i].user.data, user) == 0))
                continue;
            if (*customer != NULL && ngx_strcmp(*customer, e[i].customer.data) != 0)
                return -1;
            *customer = (const char *) e[i].customer.data;
        }
    }
    return 0;
}

static void cg_adm_too_large(cg_adm_ctx_t *ctx)
{
    char msg[80];
    ngx_snprintf((u_char *) msg, sizeof(msg), "the body is larger than %uz bytes%Z",
                 ctx->lc->max_body);
    cg_admin_resp_free(&ctx->resp);
    cg_admin_error(&ctx->resp, 413, "Upload.TooLarge", msg);
}

static void cg_adm_log(ngx_http_request_t *r, cg_adm_ctx_t *ctx)
{
    int st = ctx->resp.status;
    ngx_uint_t level = st >= 500 ? NGX_LOG_ERR : NGX_LOG_INFO;
    ngx_log_error(level, r->connection->log, 0,
                  "CG06001: admin %V %s -> %d user=%s client=%V", &r->method_name,
                  ctx->log_path, st, ctx->log_user, &r->connection->addr_text);
}

static void cg_adm_resp_cleanup(void *data)
{
    cg_adm_ctx_t *ctx = data;
    if (ctx->guard.timer_set)
        ngx_del_timer(&ctx->guard);
    /* The body is the task's own (allocated, wiped and freed there). */
    cg_admin_resp_free(&ctx->resp);
}

static ngx_int_t cg_adm_set_header(ngx_http_request_t *r, const char *name, const char *value,
                                   size_t vlen)
{
    ngx_table_elt_t *h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL)
        return NGX_ERROR;
    h->hash = 1;
    h->key.data = (u_char *) name;
    h->key.len = ngx_strlen(name);
    h->value.data = ngx_pnalloc(r->pool, vlen);
    if (h->value.data == NULL)
        return NGX_ERROR;
    ngx_memcpy(h->value.data, value, vlen);
    h->value.len = vlen;
    return NGX_OK;
}

/* Send ctx->resp; the caller finalizes with the result. */
static ngx_int_t cg_adm_send(ngx_http_request_t *r, cg_adm_ctx_t *ctx)
{
    cg_admin_resp_t *resp = &ctx->resp;
    cg_adm_loc_t *lc = ctx->lc;

    if (resp->cross_site)
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0, "CG06010: refused a cross-site "
                      "admin %V %s: Origin=%s Sec-Fetch-Site=%s user=%s", &r->method_name,
                      ctx->log_path, cg_adm_logsafe_opt(r, ctx->req.origin),
                      cg_adm_logsafe_opt(r, ctx->req.sec_fetch_site), ctx->log_user);
    cg_adm_log(r, ctx);
    r->headers_out.status = (ngx_uint_t) resp->status;
    /* The core answered If-Match already; nginx's own check knows no ETag of ours. */
    r->disable_not_modified = 1;
    if (cg_adm_set_header(r, "Cache-Control", "no-store", 8) != NGX_OK
        || cg_adm_set_header(r, "X-Content-Type-Options", "nosniff", 7) != NGX_OK
        || cg_adm_set_header(r, "Referrer-Policy", "no-referrer", 11) != NGX_OK)
        return NGX_ERROR;
    if (resp->csp != NULL && cg_adm_set_header(r, "Content-Security-Policy", resp->csp,
                                               ngx_strlen(resp->csp)) != NGX_OK)
        return NGX_ERROR;
    if (resp->etag[0]
        && cg_adm_set_header(r, "ETag", resp->etag, ngx_strlen(resp->etag)) != NGX_OK)
        return NGX_ERROR;
    if (resp->location[0]) {
        size_t ll = ngx_strlen(resp->location);
        u_char *loc = ngx_pnalloc(r->pool, lc->base.len + 1 + ll);
        if (loc == NULL)
            return NGX_ERROR;
        u_char *p = ngx_cpymem(loc, lc->base.data, lc->base.len);
        *p++ = '/';
        p = ngx_cpymem(p, resp->location, ll);
        if (cg_adm_set_header(r, "Location", (const char *) loc, (size_t) (p - loc)) != NGX_OK)
            return NGX_ERROR;
    }
    if (resp->next[0] && cg_adm_set_header(r, "CertGate-Next-Cursor", resp->next,
                                           ngx_strlen(resp->next)) != NGX_OK)
        return NGX_ERROR;
    if (resp->status == 401 && cg_adm_set_header(r, "WWW-Authenticate",
                                                 "Basic realm=\"certgate admin\"", 28) != NGX_OK)
        return NGX_ERROR;
    if (resp->body == NULL) {
        r->headers_out.content_length_n = 0;
        r->header_only = 1;
        return ngx_http_send_header(r);
    }
    size_t ctl = ngx_strlen(resp->content_type);
    r->headers_out.content_type.data = ngx_pnalloc(r->pool, ctl);
    if (r->headers_out.content_type.data == NULL)
        return NGX_ERROR;
    ngx_memcpy(r->headers_out.content_type.data, resp->content_type, ctl);
    r->headers_out.content_type.len = ctl;
    r->headers_out.content_type_len = ctl;
    r->headers_out.content_length_n = (off_t) resp->body_len;
    if (resp->body_len == 0)
        r->header_only = 1;
    ngx_int_t rc = ngx_http_send_header(r);
    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only)
        return rc;
    ngx_buf_t *b = ngx_create_temp_buf(r->pool, resp->body_len);
    if (b == NULL)
        return NGX_ERROR;
    b->last = ngx_cpymem(b->last, resp->body, resp->body_len);
    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;
    cg_admin_resp_free(resp);
    ngx_chain_t out = { b, NULL };
    return ngx_http_output_filter(r, &out);
}

/* The task: runs in a pool thread. Touches only ctx and the store. */
static void cg_adm_task(void *data, ngx_log_t *log)
{
    cg_adm_ctx_t *ctx = data;
    /* The body lives only in this thread's copy of the request: nothing on the
     * event loop can free it while the task runs. */
    cg_admin_req_t req = ctx->req;
    size_t len = 0;
    static __thread int niced;
    (void) log;

    /* Below the worker's event loop in CPU priority: on a busy machine the
     * gate's requests come first, the admin's certificate and JSON work after
     * (Linux: nice applies per thread). */
    if (!niced) {
        niced = 1;
        if (setpriority(PRIO_PROCESS, (id_t) syscall(SYS_gettid), CG_ADM_NICE) != 0)
            niced = 2;    /* not fatal: the work is still off the event loop */
    }

    for (ngx_chain_t *cl = ctx->bufs; cl; cl = cl->next)
        len += cl->buf->in_file ? (size_t) (cl->buf->file_last - cl->buf->file_pos)
                                : (size_t) (cl->buf->last - cl->buf->pos);
    if (len > 0) {
        unsigned char *body = malloc(len);
        size_t at = 0;
        if (body == NULL) {
            ctx->body_failed = 1;
        }
        for (ngx_chain_t *cl = ctx->bufs; cl && body != NULL; cl = cl->next) {
            ngx_buf_t *b = cl->buf;
            if (!b->in_file) {
                ngx_memcpy(body + at, b->pos, (size_t) (b->last - b->pos));
                at += (size_t) (b->last - b->pos);
                OPENSSL_cleanse(b->pos, (size_t) (b->last - b->pos));   /* no stray copy */
                continue;
            }
            /* nginx spilled the body to a file (client_body_buffer_size): read it here. */
            off_t off = b->file_pos;
            while (off < b->file_last) {
                ssize_t n = pread(b->file->fd, body + at, (size_t) (b->file_last - off), off);
                if (n <= 0) {
                    ctx->body_failed = 1;
                    break;
                }
                off += n;
                at += (size_t) n;
            }
            if (ctx->body_failed)
                break;
        }
        if (ctx->body_failed) {
            if (body != NULL) {
                OPENSSL_cleanse(body, at);
                free(body);
            }
            cg_admin_error(&ctx->resp, 400, "Request.Invalid",
                           "the request body could not be read");
            return;
        }
        req.body = body;
        req.body_len = len;
    }
    cg_admin_handle(&ctx->cfg, cg_adm_store, &req, &ctx->resp);
    if (req.body != NULL) {
        OPENSSL_cleanse(req.body, req.body_len);
        free(req.body);
    }
}

/* Back on the event loop once the task is done. */
static void cg_adm_finish(ngx_http_request_t *r)
{
    cg_adm_ctx_t *ctx = ngx_http_get_module_ctx(r, ngx_http_certgate_admin_module);
    if (ctx == NULL || !ctx->done)
        return;    /* a write event while the task runs */
    r->write_event_handler = ngx_http_request_empty_handler;
    ngx_http_finalize_request(r, cg_adm_send(r, ctx));
}

/* Re-armed until the task is done: keeps a quitting worker alive for it. */
static void cg_adm_guard(ngx_event_t *ev)
{
    cg_adm_ctx_t *ctx = ev->data;
    if (!ctx->done)
        ngx_add_timer(ev, 1000);
}

static void cg_adm_task_done(ngx_event_t *ev)
{
    cg_adm_ctx_t *ctx = ev->data;
    ngx_http_request_t *r = ctx->r;
    ngx_connection_t *c = r->connection;

    if (ctx->guard.timer_set)
        ngx_del_timer(&ctx->guard);
    ngx_http_set_log_request(c->log, r);
    r->main->blocked--;
    r->aio = 0;
    ctx->done = 1;
    /* cg_adm_finish, or nginx's own handler if the request was ended meanwhile. */
    r->write_event_handler(r);
    ngx_http_run_posted_requests(c);
}

/* The body is in (or there is none): build the request and post the task. */
static void cg_adm_body_read(ngx_http_request_t *r)
{
    cg_adm_ctx_t *ctx = ngx_http_get_module_ctx(r, ngx_http_certgate_admin_module);
    cg_adm_loc_t *lc = ctx->lc;
    if (ctx->too_large) {
        /* The body filter refused it: nginx answers 413, we make it ours. */
        return;
    }
    if (ctx->posted)
        return;
    if (r->request_body != NULL)
        ctx->bufs = r->request_body->bufs;
    if (cg_adm_store == NULL) {
        cg_admin_error(&ctx->resp, 503, "Store.Unavailable",
                       "the store is not set up (see CG06050)");
        ngx_http_finalize_request(r, cg_adm_send(r, ctx));
        return;
    }
    cg_adm_cfg(lc, &ctx->cfg, ctx->deny_store);
    ngx_thread_task_t *task = ngx_thread_task_alloc(r->pool, 0);
    if (task == NULL) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }
    task->ctx = ctx;
    ctx->posted = 1;
    task->handler = cg_adm_task;
    task->event.data = ctx;
    task->event.handler = cg_adm_task_done;
    r->main->blocked++;
    r->aio = 1;
    r->write_event_handler = cg_adm_finish;
    if (ngx_thread_task_post(lc->pool, task) != NGX_OK) {
        r->main->blocked--;
        r->aio = 0;
        r->write_event_handler = ngx_http_request_empty_handler;
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0, "CG06051: admin API: the thread "
                      "pool \"%V\" refused the task (queue full?); answered 503", &lc->pool_name);
        cg_admin_error(&ctx->resp, 503, "Server.Busy", "the admin API is busy; retry later");
        ngx_http_finalize_request(r, cg_adm_send(r, ctx));
        return;
    }
    ctx->guard.handler = cg_adm_guard;
    ctx->guard.data = ctx;
    ctx->guard.log = r->connection->log;
    ngx_add_timer(&ctx->guard, 1000);
}

static ngx_int_t cg_adm_handler(ngx_http_request_t *r)
{
    cg_adm_loc_t *lc = ngx_http_get_module_loc_conf(r, ngx_http_certgate_admin_module);
    if (r != r->main)
        return NGX_HTTP_NOT_FOUND;    /* not as a subrequest */

    ngx_pool_cleanup_t *cln = ngx_pool_cleanup_add(r->pool, sizeof(cg_adm_ctx_t));
    if (cln == NULL)
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    cg_adm_ctx_t *ctx = cln->data;
    ngx_memzero(ctx, sizeof(*ctx));
    cln->handler = cg_adm_resp_cleanup;
    ctx->r = r;
    ctx->lc = lc;
    ngx_http_set_ctx(r, ctx, ngx_http_certgate_admin_module);

    cg_admin_req_t *req = &ctx->req;
    ngx_str_t path = r->uri;
    if (path.len >= lc->base.len && ngx_strncmp(path.data, lc->base.data, lc->base.len) == 0) {
        path.data += lc->base.len;
        path.len -= lc->base.len;
    }
    req->method = cg_adm_cstr(r->pool, r->method_name.data, r->method_name.len);
    req->path = cg_adm_cstr(r->pool, path.data, path.len);
    req->query = r->args.len ? cg_adm_cstr(r->pool, r->args.data, r->args.len) : NULL;
    req->client_ip = cg_adm_cstr(r->pool, r->connection->addr_text.data,
                                 r->connection->addr_text.len);
    ctx->log_path = cg_adm_logsafe(r->pool, path.data, path.len);
    ctx->log_user = "-";
    if (req->method == NULL || req->path == NULL || req->client_ip == NULL)
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    cg_adm_fill_headers(r, req);

    /* Only the variable the operator named says who is authenticated. */
    ngx_str_t user = ngx_null_string;
    if (lc->user != NULL && ngx_http_complex_value(r, lc->user, &user) != NGX_OK)
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    if (user.len > 0) {
        const char *raw = cg_adm_cstr(r->pool, user.data, user.len);
        char *canon = ngx_pnalloc(r->pool, CG_USER_MAX + 1);
        if (raw == NULL || canon == NULL)
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        ctx->log_user = cg_adm_logsafe(r->pool, user.data, user.len);
        /* A NUL inside the name is no identity. */
        req->user = ngx_strlen(raw) == user.len
                    ? cg_admin_user_canon(raw, lc->user_match == CG_ADM_MATCH_IGNORE_CASE,
                                          canon, CG_USER_MAX + 1)
                    : NULL;
        if (req->user != NULL && cg_adm_identity(lc, raw, &req->roles, &req->customer) != 0) {
            ngx_log_error(NGX_LOG_ERR, r->connection->log, 0, "CG06002: "
                          "certgate_admin_customer gives user %s two customers under "
                          "certgate_admin_user_match ignore_case; the user is refused",
                          ctx->log_user);
            req->roles = 0;
            req->customer = NULL;
        }
    }
    req->now = (int64_t) ngx_time();

    if (r->headers_in.content_length_n > (off_t) lc->max_body) {
        /* Refused before reading: do not drain megabytes. */
        r->keepalive = 0;
        cg_adm_too_large(ctx);
        ngx_int_t rc = ngx_http_discard_request_body(r);
        if (rc != NGX_OK)
            return rc;
        return cg_adm_send(r, ctx);
    }
    r->request_body_in_single_buf = 1;
    r->request_body_in_clean_file = 1;
    ngx_int_t rc = ngx_http_read_client_request_body(r, cg_adm_body_read);
    if (rc >= NGX_HTTP_SPECIAL_RESPONSE)
        return rc;
    return NGX_DONE;
}

/* ------------------------------------------------------------ filters */

/* Counts a chunked admin body and stops it past certgate_admin_max_body. */
static ngx_int_t cg_adm_body_filter(ngx_http_request_t *r, ngx_chain_t *in)
{
    cg_adm_ctx_t *ctx = ngx_http_get_module_ctx(r, ngx_http_certgate_admin_module);
    if (ctx != NULL && r == r->main) {
        for (ngx_chain_t *cl = in; cl; cl = cl->next)
            ctx->received += (size_t) ngx_buf_size(cl->buf);
        if (ctx->received > ctx->lc->max_body) {
            ctx->too_large = 1;
            return NGX_HTTP_REQUEST_ENTITY_TOO_LARGE;
        }
    }
    return cg_adm_next_body_filter(r, in);
}

/* nginx's own 413 page for a body the filter stopped becomes the API's JSON error. */
static ngx_int_t cg_adm_header_replace(ngx_http_request_t *r, cg_adm_ctx_t *ctx);

/* Every response passes here: the check alone, without the replacement's frame. */
static ngx_int_t cg_adm_header_filter(ngx_http_request_t *r)
{
    cg_adm_ctx_t *ctx = ngx_http_get_module_ctx(r, ngx_http_certgate_admin_module);
    if (ctx == NULL || !ctx->too_large || ctx->replaced
        || r->headers_out.status != NGX_HTTP_REQUEST_ENTITY_TOO_LARGE)
        return cg_adm_next_header_filter(r);
    return cg_adm_header_replace(r, ctx);
}

__attribute__((noinline)) static ngx_int_t cg_adm_header_replace(ngx_http_request_t *r,
                                                                 cg_adm_ctx_t *ctx)
{
    ctx->replaced = 1;
    cg_adm_too_large(ctx);
    cg_adm_log(r, ctx);
    if (ctx->resp.body == NULL)
        return cg_adm_next_header_filter(r);
    size_t ctl = ngx_strlen(ctx->resp.content_type);
    u_char *ct = ngx_pnalloc(r->pool, ctl);
    if (ct == NULL)
        return NGX_ERROR;
    ngx_memcpy(ct, ctx->resp.content_type, ctl);
    r->headers_out.content_type.data = ct;
    r->headers_out.content_type.len = ctl;
    r->headers_out.content_type_len = ctl;
    r->headers_out.content_length_n = (off_t) ctx->resp.body_len;
    /* The headers every admin answer has (cg_adm_send). */
    if (cg_adm_set_header(r, "Cache-Control", "no-store", 8) != NGX_OK
        || cg_adm_set_header(r, "X-Content-Type-Options", "nosniff", 7) != NGX_OK
        || cg_adm_set_header(r, "Referrer-Policy", "no-referrer", 11) != NGX_OK)
        return NGX_ERROR;
    return cg_adm_next_header_filter(r);
}

static ngx_int_t cg_adm_output_replace(ngx_http_request_t *r, ngx_chain_t *in,
                                       cg_adm_ctx_t *ctx);

/* Every response passes here: the check alone, without the replacement's frame. */
static ngx_int_t cg_adm_output_filter(ngx_http_request_t *r, ngx_chain_t *in)
{
    cg_adm_ctx_t *ctx = ngx_http_get_module_ctx(r, ngx_http_certgate_admin_module);
    if (ctx == NULL || !ctx->replaced)
        return cg_adm_next_output_filter(r, in);
    return cg_adm_output_replace(r, in, ctx);
}

__attribute__((noinline)) static ngx_int_t cg_adm_output_replace(ngx_http_request_t *r,
                                                                 ngx_chain_t *in,
                                                                 cg_adm_ctx_t *ctx)
{
    for (ngx_chain_t *cl = in; cl; cl = cl->next)
        cl->buf->pos = cl->buf->last;    /* nginx's page is not sent */
    if (ctx->resp.body == NULL)
        return NGX_OK;
    ngx_buf_t *b = ngx_create_temp_buf(r->pool, ctx->resp.body_len);
    if (b == NULL)
        return NGX_ERROR;
    b->last = ngx_cpymem(b->last, ctx->resp.body, ctx->resp.body_len);
    b->last_buf = 1;
    b->last_in_chain = 1;
    cg_admin_resp_free(&ctx->resp);
    ngx_chain_t out = { b, NULL };
    return cg_adm_next_output_filter(r, &out);
}

static ngx_int_t cg_adm_postconf(ngx_conf_t *cf)
{
    /* Installed whatever this configuration says: the filter chain is global,
     * and a reload that fails after this point leaves it to the old
     * configuration's workers. Each returns at once without an admin request. */
    cg_adm_next_body_filter = ngx_http_top_request_body_filter;
    ngx_http_top_request_body_filter = cg_adm_body_filter;
    cg_adm_next_header_filter = ngx_http_top_header_filter;
    ngx_http_top_header_filter = cg_adm_header_filter;
    cg_adm_next_output_filter = ngx_http_top_body_filter;
    ngx_http_top_body_filter = cg_adm_output_filter;
    return NGX_OK;
}
