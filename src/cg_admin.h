/*
 * The admin API: uploads, approval, rotation cutovers, reading, checks and the
 * audit log, as JSON over HTTP. Server-neutral: an adapter hands in the request
 * (method, path below the base, user, roles, body) and sends back the response.
 */
#ifndef CG_ADMIN_H
#define CG_ADMIN_H

#include <stddef.h>
#include <stdint.h>
#include "cg_metrics.h"
#include "cg_policy.h"
#include "cg_store.h"

enum {
    CG_ROLE_DEVELOPER = 1,
    CG_ROLE_MANAGER = 2,
    CG_ROLE_SUPPORT = 4,
    CG_ROLE_AUDITOR = 8
};

/* Role name ("developer", ...) to bit, 0 if unknown. */
unsigned cg_role_parse(const char *name);

#define CG_USER_MAX 256

/*
 * The identity the admin API records for an authenticated user name: the name
 * itself, or with ignore_case its ASCII lower case. NULL (no identity) when
 * the name is empty, longer than CG_USER_MAX or holds control bytes.
 */
const char *cg_admin_user_canon(const char *user, int ignore_case, char *out, size_t cap);

typedef struct {
    cg_policy_t policy;
    int expiring_soon_days;     /* derived "(EXPIRATION SOON)" labels; default 30 */
    int self_approve;           /* four-eyes off when 1 */
    int user_ignore_case;       /* CertGateAdminUserMatch IgnoreCase */
    int timeout_ms;             /* Redis budget of one admin request */
} cg_admin_cfg_t;

void cg_admin_cfg_defaults(cg_admin_cfg_t *c);

typedef struct {
    const char *method;
    const char *path;           /* below the admin base, e.g. "/certs/ab12/approve" */
    const char *query;          /* raw query string, or NULL */
    const char *user;           /* canonical identity (cg_admin_user_canon), or NULL */
    unsigned roles;             /* CG_ROLE_* bits of that user */
    const char *customer;       /* the customer the user is confined to, or NULL */
    const char *client_ip;
    const char *content_type;
    const char *accept;
    const char *if_match;
    /* For the same-origin check of writes (cg_admin_cross_site): the request's
     * Origin, Sec-Fetch-Site and Host headers (NULL when absent) and whether it
     * came over TLS. Every adapter must fill them: left NULL, browsers' cross-site
     * writes pass. */
    const char *origin;
    const char *sec_fetch_site;
    const char *host;
    int tls;
    unsigned char *body;        /* wiped by cg_admin_handle: it may hold a private key */
    size_t body_len;
    int64_t now;
} cg_admin_req_t;

typedef struct {
    int status;
    char content_type[48];
    char etag[40];
    char location[320];
    char next[48];              /* /events: cursor of the next page, "" when complete */
    char *body;                 /* malloc'd, NUL-terminated */
    size_t body_len;
    /* Console pages: the Content-Security-Policy the adapter must send with
     * them; NULL for API answers. (Adapters send Cache-Control: no-store,
     * X-Content-Type-Options: nosniff and Referrer-Policy: no-referrer always.) */
    const char *csp;
    int cross_site;             /* refused by the same-origin check (log CG06010) */
} cg_admin_resp_t;

void cg_admin_handle(const cg_admin_cfg_t *cfg, cg_store_t *st, cg_admin_req_t *req,
                     cg_admin_resp_t *resp);

/* Registration counts by status and expiry, for metrics. 0, or minus the
 * cg_store_rc_t kind of failure (err). */
int cg_admin_store_stats(cg_store_t *st, int timeout_ms, int64_t now, int soon_days,
                         cg_store_stats_t *out, char *err, size_t errlen);

/*
 * The expiry scan (run once per server by a watchdog): for each APPROVED or
 * PENDING registration that crossed a threshold of days_desc (e.g. 90 60 30 7),
 * append one cert.expiring event for the lowest threshold crossed, and
 * cert.expired once it has expired. A per-registration marker hash in Redis,
 * set atomically with the event, makes it once per threshold per certificate
 * across restarts and gateways. Returns the number of events, or minus the
 * cg_store_rc_t kind of failure (err).
 */
int cg_admin_expiry_scan(cg_store_t *st, int timeout_ms, int64_t now, const int *days_desc,
                         size_t ndays, char *err, size_t errlen);

/*
 * The same-origin rule for state-changing requests (every method but GET and
 * HEAD): NULL when the request may go on, else why it is refused. Refused when
 * Sec-Fetch-Site is present and is neither "same-origin" nor "none", or when
 * Origin is present and is not scheme://Host of this request (https when tls).
 * Requests with neither header (curl, scripts) pass.
 */
const char *cg_admin_cross_site(const cg_admin_req_t *req);

/* An error response {"status":..,"code":..,"message":..}. */
void cg_admin_error(cg_admin_resp_t *resp, int status, const char *code, const char *message);

void cg_admin_resp_free(cg_admin_resp_t *resp);

/*
 * Parse an upload body exactly as POST /certs does, without any store access
 * (for fuzzing and tests). 0 when it parses; otherwise the HTTP status, with
 * the error response in resp.
 */
int cg_admin_parse_upload(const char *content_type, const char *query,
                          const unsigned char *body, size_t len, cg_admin_resp_t *resp);

#endif
