/* The admin API's routes: method and path pattern to handler. */
#include "cg_admin_int.h"

#include <stdio.h>
#include <string.h>
#include <openssl/crypto.h>

#define SEG_MAX 5
#define SEG_LEN 160

typedef void (*route_fn)(const cg_admin_cfg_t *cfg, cg_store_t *st, cg_admin_req_t *req,
                         cg_admin_resp_t *resp, char seg[][SEG_LEN]);

typedef struct {
    const char *method;
    const char *path;       /* segments; "*" matches any one */
    route_fn fn;
} route_t;

/* Handlers by path segments (seg[1] is the id in /certs/{id}, /apps/{id}, ...). */
static void r_upload(const cg_admin_cfg_t *cfg, cg_store_t *st, cg_admin_req_t *req,
                     cg_admin_resp_t *resp, char seg[][SEG_LEN])
{
    (void)seg;
    adm_upload(cfg, st, req, resp);
}

static void r_list(const cg_admin_cfg_t *cfg, cg_store_t *st, cg_admin_req_t *req,
                   cg_admin_resp_t *resp, char seg[][SEG_LEN])
{
    (void)seg;
    adm_list(cfg, st, req, resp);
}

static void r_get(const cg_admin_cfg_t *cfg, cg_store_t *st, cg_admin_req_t *req,
                  cg_admin_resp_t *resp, char seg[][SEG_LEN])
{
    adm_get(cfg, st, req, resp, seg[1]);
}

static void r_transition(const cg_admin_cfg_t *cfg, cg_store_t *st, cg_admin_req_t *req,
                         cg_admin_resp_t *resp, char seg[][SEG_LEN])
{
    adm_transition(cfg, st, req, resp, seg[1], seg[2]);
}

static void r_app_create(const cg_admin_cfg_t *cfg, cg_store_t *st, cg_admin_req_t *req,
                         cg_admin_resp_t *resp, char seg[][SEG_LEN])
{
    (void)seg;
    adm_app_create(cfg, st, req, resp);
}

static void r_customer_create(const cg_admin_cfg_t *cfg, cg_store_t *st, cg_admin_req_t *req,
                              cg_admin_resp_t *resp, char seg[][SEG_LEN])
{
    (void)seg;
    adm_customer_create(cfg, st, req, resp);
}

static void r_app_list(const cg_admin_cfg_t *cfg, cg_store_t *st, cg_admin_req_t *req,
                       cg_admin_resp_t *resp, char seg[][SEG_LEN])
{
    (void)seg;
    adm_entity_list(cfg, st, req, resp, CG_K_APPINFO);
}

static void r_customer_list(const cg_admin_cfg_t *cfg, cg_store_t *st, cg_admin_req_t *req,
                            cg_admin_resp_t *resp, char seg[][SEG_LEN])
{
    (void)seg;
    adm_entity_list(cfg, st, req, resp, CG_K_CUSTOMER);
}

static void r_customer_get(const cg_admin_cfg_t *cfg, cg_store_t *st, cg_admin_req_t *req,
                           cg_admin_resp_t *resp, char seg[][SEG_LEN])
{
    adm_customer_get(cfg, st, req, resp, seg[1]);
}

static void r_customer_update(const cg_admin_cfg_t *cfg, cg_store_t *st, cg_admin_req_t *req,
                              cg_admin_resp_t *resp, char seg[][SEG_LEN])
{
    adm_entity_update(cfg, st, req, resp, CG_K_CUSTOMER, seg[1]);
}

static void r_app_get(const cg_admin_cfg_t *cfg, cg_store_t *st, cg_admin_req_t *req,
                      cg_admin_resp_t *resp, char seg[][SEG_LEN])
{
    adm_app(cfg, st, req, resp, seg[1]);
}

static void r_app_update(const cg_admin_cfg_t *cfg, cg_store_t *st, cg_admin_req_t *req,
                         cg_admin_resp_t *resp, char seg[][SEG_LEN])
{
    adm_entity_update(cfg, st, req, resp, CG_K_APPINFO, seg[1]);
}

static void r_rotation_create(const cg_admin_cfg_t *cfg, cg_store_t *st, cg_admin_req_t *req,
                              cg_admin_resp_t *resp, char seg[][SEG_LEN])
{
    adm_rotation_create(cfg, st, req, resp, seg[1]);
}

static void r_rotation_list(const cg_admin_cfg_t *cfg, cg_store_t *st, cg_admin_req_t *req,
                            cg_admin_resp_t *resp, char seg[][SEG_LEN])
{
    adm_rotation_list(cfg, st, req, resp, seg[1]);
}

static void r_rotation_cancel(const cg_admin_cfg_t *cfg, cg_store_t *st, cg_admin_req_t *req,
                              cg_admin_resp_t *resp, char seg[][SEG_LEN])
{
    adm_rotation_cancel(cfg, st, req, resp, seg[1], seg[3]);
}

static void r_check(const cg_admin_cfg_t *cfg, cg_store_t *st, cg_admin_req_t *req,
                    cg_admin_resp_t *resp, char seg[][SEG_LEN])
{
    (void)seg;
    adm_check(cfg, st, req, resp);
}

static void r_export(const cg_admin_cfg_t *cfg, cg_store_t *st, cg_admin_req_t *req,
                     cg_admin_resp_t *resp, char seg[][SEG_LEN])
{
    (void)seg;
    adm_export(cfg, st, req, resp);
}

static void r_import(const cg_admin_cfg_t *cfg, cg_store_t *st, cg_admin_req_t *req,
                     cg_admin_resp_t *resp, char seg[][SEG_LEN])
{
    (void)seg;
    adm_import(cfg, st, req, resp);
}

static void r_events(const cg_admin_cfg_t *cfg, cg_store_t *st, cg_admin_req_t *req,
                     cg_admin_resp_t *resp, char seg[][SEG_LEN])
{
    (void)seg;
    adm_events(cfg, st, req, resp);
}

static void r_whoami(const cg_admin_cfg_t *cfg, cg_store_t *st, cg_admin_req_t *req,
                     cg_admin_resp_t *resp, char seg[][SEG_LEN])
{
    (void)seg;
    adm_whoami(cfg, st, req, resp);
}

/*
 * Every route. A path some route matches, with a method none of its routes
 * take, answers 405 naming the methods in table order ("use GET or POST").
 */
static const route_t ROUTES[] = {
    { "GET",    "certs",                 r_list },
    { "POST",   "certs",                 r_upload },
    { "GET",    "certs/*",               r_get },
    { "POST",   "certs/*/approve",       r_transition },
    { "POST",   "certs/*/decline",       r_transition },
    { "POST",   "certs/*/inactivate",    r_transition },
    { "GET",    "apps",                  r_app_list },
    { "POST",   "apps",                  r_app_create },
    { "GET",    "customers",             r_customer_list },
    { "POST",   "customers",             r_customer_create },
    { "GET",    "customers/*",           r_customer_get },
    { "PATCH",  "customers/*",           r_customer_update },
    { "GET",    "apps/*",                r_app_get },
    { "PATCH",  "apps/*",                r_app_update },
    { "GET",    "apps/*/rotations",      r_rotation_list },
    { "POST",   "apps/*/rotations",      r_rotation_create },
    { "DELETE", "apps/*/rotations/*",    r_rotation_cancel },
    { "POST",   "check",                 r_check },
    { "GET",    "events",                r_events },
    { "GET",    "export",                r_export },
    { "POST",   "import",                r_import },
    { "GET",    "whoami",                r_whoami },
};

/* Paths below these hold an app or customer id as their second segment. */
static const char *const ID_SCOPES[] = { "apps", "customers" };

/* Split path into at most SEG_MAX segments; returns the count or -1 if too deep/long. */
static int segments(const char *path, char seg[SEG_MAX][SEG_LEN])
{
    int n = 0;
    const char *p = path;
    while (*p == '/')
        p++;
    while (*p) {
        size_t len = strcspn(p, "/");
        if (n == SEG_MAX || len >= SEG_LEN)
            return -1;
        memcpy(seg[n], p, len);
        seg[n][len] = '\0';
        n++;
        p += len;
        while (*p == '/')
            p++;
    }
    return n;
}

/* Does the pattern match the n segments? */
static int route_matches(const char *pattern, char seg[][SEG_LEN], int n)
{
    const char *p = pattern;
    for (int i = 0; i < n; i++) {
        size_t len = strcspn(p, "/");
        if (len == 0)
            return 0;
        if (!(len == 1 && p[0] == '*') && (strlen(seg[i]) != len || memcmp(seg[i], p, len) != 0))
            return 0;
        p += len;
        if (*p == '/')
            p++;
        else if (i + 1 < n)
            return 0;
    }
    return *p == '\0';
}

/* "use GET", "use GET or POST", "use GET, PATCH or POST": the methods the path takes. */
static void allowed_methods(char seg[][SEG_LEN], int n, char *out, size_t cap)
{
    const char *m[NELEM(ROUTES)];
    size_t k = 0, len;
    for (size_t i = 0; i < NELEM(ROUTES); i++)
        if (route_matches(ROUTES[i].path, seg, n))
            m[k++] = ROUTES[i].method;
    len = (size_t)snprintf(out, cap, "use");
    for (size_t i = 0; i < k && len < cap; i++)
        len += (size_t)snprintf(out + len, cap - len, "%s%s",
                                i == 0 ? " " : i + 1 == k ? " or " : ", ", m[i]);
}

void cg_admin_handle(const cg_admin_cfg_t *cfg, cg_store_t *st, cg_admin_req_t *req,
                     cg_admin_resp_t *resp)
{
    char seg[SEG_MAX][SEG_LEN];
    int n = segments(req->path ? req->path : "", seg);
    int path_known = 0;
    const route_t *route = NULL;

    memset(resp, 0, sizeof(*resp));
    /* Writes from another site's page (cached Basic credentials) stop here,
     * before any handler: nothing written, no event. */
    const char *xsite = cg_admin_cross_site(req);
    if (xsite != NULL) {
        resp->cross_site = 1;
        adm_errorf(resp, 403, "Request.CrossSite", "%s: a state-changing request must come "
                   "from the admin location's own pages or a non-browser client", xsite);
        goto done;
    }
    if (req->path != NULL && strncmp(req->path, "/console", 8) == 0 &&
        (req->path[8] == '\0' || req->path[8] == '/')) {
        adm_console(req, resp);
        goto done;
    }
    for (size_t i = 0; n >= 0 && route == NULL && i < NELEM(ROUTES); i++) {
        if (route_matches(ROUTES[i].path, seg, n)) {
            path_known = 1;
            if (strcmp(ROUTES[i].method, req->method) == 0)
                route = &ROUTES[i];
        }
    }
    int bad_id = 0;
    for (size_t i = 0; n >= 2 && i < NELEM(ID_SCOPES); i++)
        bad_id |= strcmp(seg[0], ID_SCOPES[i]) == 0 && !cg_app_valid(seg[1], strlen(seg[1]));

    if (n < 0) {
        cg_admin_error(resp, 404, "Route.NotFound", "no such endpoint");
    } else if (bad_id) {
        cg_admin_error(resp, 400, "Request.Invalid", "not a valid app or customer id");
    } else if (route != NULL) {
        route->fn(cfg, st, req, resp, seg);
    } else if (path_known) {
        char msg[64];
        allowed_methods(seg, n, msg, sizeof(msg));
        cg_admin_error(resp, 405, "Route.MethodNotAllowed", msg);
    } else {
        cg_admin_error(resp, 404, "Route.NotFound", "no such endpoint; see docs/admin-api.md");
    }
done:
    /* The body may hold a private key: wipe it whatever happened. */
    if (req->body != NULL)
        OPENSSL_cleanse(req->body, req->body_len);
    if (resp->status == 0)
        cg_admin_error(resp, 500, "Internal", "no response was produced");
}
