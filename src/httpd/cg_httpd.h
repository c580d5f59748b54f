/*
 * What the files of the httpd adapter share: the module's server and
 * directory configs and a few helpers. mod_certgate.c has the hooks and the
 * gate's request path, cg_httpd_config.c the directives, cg_httpd_admin.c
 * the admin and metrics handlers.
 */
#ifndef CG_HTTPD_H
#define CG_HTTPD_H

#include <stdint.h>
#include "httpd.h"
#include "http_config.h"
#include "apr_hash.h"
#include "apr_tables.h"

#include "cg_gate.h"
#include "cg_metrics.h"
#include "cg_policy.h"

/* Not exported from the module: no clash with another module's symbols. */
#define CGH_HIDDEN __attribute__((visibility("hidden")))

extern module AP_MODULE_DECLARE_DATA certgate_module;

#define UNSET (-1)
#define NOTE_DECISION "certgate-decision"

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
    int stale_s;            /* CertGateOnStoreError stale N: N; else 0 */
    int max_idle;
    int cache_on;
    int cache_entries;
    int cache_max_age;      /* seconds */
    int usage_interval;     /* seconds */
    apr_array_header_t *expiry_days;    /* int, descending; empty: off */
    int expiry_interval;    /* seconds */
    int clock_offset;       /* seconds; test only */
    const char *sentinels;          /* CertGateRedisSentinels, space separated */
    const char *master_name;        /* CertGateRedisMasterName */
    const char *sentinel_user, *sentinel_password;   /* CertGateRedisSentinelAuth */
    int sentinel_timeout_ms;        /* CertGateRedisSentinelTimeout */
    int wait_replicas, wait_timeout_ms;     /* CertGateAdminWaitReplicas */
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
    int shadow;                     /* CertGateMode Shadow: decide, refuse nothing */
    /* Whether nothing above is set (cg_httpd_config.c dir_unset): 0 not known
     * yet, 1 unset, 2 set. Worked out at the first merge, read at every one. */
    int unset_known;
} cg_dir_t;

/* Some location says CertGate On (set while reading the config). */
extern CGH_HIDDEN int cgh_gate_configured;
/* Counters shared by all children; NULL if there is no shared memory. */
extern CGH_HIDDEN cg_metrics_t *cgh_metrics;

CGH_HIDDEN cg_srv_t *cgh_srv_conf(server_rec *s);
/* Request time in seconds, moved by CertGateTestClockOffset (tests only). */
CGH_HIDDEN int64_t cgh_now_sec(const cg_srv_t *sc, apr_time_t t);
/* Effective values: an UNSET field takes the core's default. */
CGH_HIDDEN void cgh_gate_cfg(const cg_srv_t *c, cg_gate_cfg_t *out);

CGH_HIDDEN void *cgh_create_srv(apr_pool_t *p, server_rec *s);
CGH_HIDDEN void *cgh_merge_srv(apr_pool_t *p, void *basev, void *addv);
CGH_HIDDEN void *cgh_create_dir(apr_pool_t *p, char *dir);
CGH_HIDDEN void *cgh_merge_dir(apr_pool_t *p, void *basev, void *addv);
extern CGH_HIDDEN const command_rec cgh_cmds[];

CGH_HIDDEN int cgh_admin_handler(request_rec *r);
CGH_HIDDEN int cgh_metrics_handler(request_rec *r);

#endif
