/*
 * The operator console (the files of console/, embedded at build time by
 * scripts/embed-assets.sh), GET /whoami for it, and the same-origin rule that
 * protects every state-changing admin request from cross-site forms: browsers
 * send cached Basic credentials with any request to the admin location.
 */
#include "cg_admin_int.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

typedef struct {
    const char *name;           /* below {base}/console/ */
    const char *type;
    const unsigned char *data;
    size_t len;
} console_asset_t;

/* The Makefile generates it into build/gen/ (never committed). Found from
 * src/ or from build/asan/apxs/ (the sanitizer build compiles copies there);
 * a build without it serves no console. */
#if defined(__has_include)
#if __has_include("../build/gen/cg_console_assets.c")
#include "../build/gen/cg_console_assets.c"
#define HAVE_CONSOLE 1
#elif __has_include("../../gen/cg_console_assets.c")
#include "../../gen/cg_console_assets.c"
#define HAVE_CONSOLE 1
#endif
#endif
#ifndef HAVE_CONSOLE
static const console_asset_t CONSOLE_ASSETS[] = { { NULL, NULL, NULL, 0 } };
#endif

/* No inline script or style anywhere: data shown by the console cannot run. */
static const char CONSOLE_CSP[] =
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/* ------------------------------------------------------------ same origin */

/*
 * host[:port] lower-cased, without the scheme's default port, into out.
 * -1 when empty, too long or not a plain authority (no userinfo, path, spaces).
 */
static int norm_authority(const char *s, size_t len, int tls, char *out, size_t cap)
{
    if (len == 0 || len >= cap)
        return -1;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c <= 0x20 || c >= 0x7f || c == '/' || c == '@' || c == '?' || c == '#' || c == '\\')
            return -1;
        out[i] = (char)tolower(c);
    }
    out[len] = '\0';
    const char *dflt = tls ? ":443" : ":80";
    size_t dl = strlen(dflt);
    if (len > dl && strcmp(out + len - dl, dflt) == 0)
        out[len - dl] = '\0';
    return 0;
}

const char *cg_admin_cross_site(const cg_admin_req_t *req)
{
    if (req->method == NULL || strcmp(req->method, "GET") == 0 || strcmp(req->method, "HEAD") == 0)
        return NULL;
    const char *sfs = req->sec_fetch_site;
    if (sfs != NULL && strcasecmp(sfs, "same-origin") != 0 && strcasecmp(sfs, "none") != 0)
        return "Sec-Fetch-Site is not same-origin";
    if (req->origin == NULL)
        return NULL;
    const char *o = req->origin;
    const char *scheme = req->tls ? "https://" : "http://";
    size_t sl = strlen(scheme);
    char own[300], theirs[300];
    if (strncasecmp(o, scheme, sl) != 0)
        return "Origin is not this server's scheme and host";
    if (req->host == NULL ||
        norm_authority(req->host, strlen(req->host), req->tls, own, sizeof(own)) != 0 ||
        norm_authority(o + sl, strlen(o + sl), req->tls, theirs, sizeof(theirs)) != 0 ||
        strcmp(own, theirs) != 0)
        return "Origin is not this server's scheme and host";
    return NULL;
}

/* ------------------------------------------------------------ console */

void adm_console(cg_admin_req_t *req, cg_admin_resp_t *resp)
{
    const char *p = req->path ? req->path : "";
    while (p[0] == '/' && p[1] == '/')
        p++;
    if (strcmp(req->method, "GET") != 0 && strcmp(req->method, "HEAD") != 0) {
        cg_admin_error(resp, 405, "Route.MethodNotAllowed", "use GET");
        return;
    }
    if (strcmp(p, "/console") == 0) {
        /* Relative asset and API paths need the trailing slash. */
        snprintf(resp->location, sizeof(resp->location), "console/");
        cg_admin_error(resp, 301, "Route.Moved", "the console is at console/");
        return;
    }
    const char *name = p + strlen("/console/");
    if (*name == '\0')
        name = "index.html";
    for (size_t i = 0; i < NELEM(CONSOLE_ASSETS); i++) {
        const console_asset_t *a = &CONSOLE_ASSETS[i];
        if (a->name == NULL || strcmp(a->name, name) != 0)
            continue;
        char *body = malloc(a->len + 1);
        if (body == NULL) {
            cg_admin_error(resp, 500, "Internal", "out of memory");
            return;
        }
        memcpy(body, a->data, a->len);
        body[a->len] = '\0';
        adm_set_body(resp, 200, a->type, body);
        resp->body_len = a->len;
        resp->csp = CONSOLE_CSP;
        return;
    }
    cg_admin_error(resp, 404, "Route.NotFound", CONSOLE_ASSETS[0].name == NULL
                   ? "this build has no console (make module embeds it)" : "no such console file");
}

/* ------------------------------------------------------------ whoami */

void adm_whoami(const cg_admin_cfg_t *cfg, cg_store_t *st, cg_admin_req_t *req,
                cg_admin_resp_t *resp)
{
    (void)st;
    if (req->user == NULL || req->user[0] == '\0') {
        cg_admin_error(resp, 401, "Auth.Required", "authenticate first");
        return;
    }
    static const struct { unsigned bit; const char *name; } R[] = {
        { CG_ROLE_DEVELOPER, "developer" }, { CG_ROLE_MANAGER, "manager" },
        { CG_ROLE_SUPPORT, "support" }, { CG_ROLE_AUDITOR, "auditor" } };
    json_t *roles = json_array();
    for (size_t i = 0; roles != NULL && i < NELEM(R); i++)
        if (req->roles & R[i].bit)
            json_array_append_new(roles, json_string(R[i].name));
    json_t *o = roles ? json_pack("{s:s,s:o,s:s?,s:b,s:b,s:i}", "user", req->user,
                                  "roles", roles, "customer", req->customer,
                                  "seesAllCustomers", adm_sees_all(req),
                                  "selfApprove", cfg->self_approve != 0,
                                  "expiringSoonDays", cfg->expiring_soon_days) : NULL;
    adm_send_json(resp, 200, o);
}
