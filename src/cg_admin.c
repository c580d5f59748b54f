/*
 * The admin API's shared helpers: responses, request parsing, roles and
 * tenancy, record loading and audited writes. The handlers live in the other
 * cg_admin_*.c files (see cg_admin_int.h).
 */
#include "cg_admin_int.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <openssl/rand.h>

/* ------------------------------------------------------------ small helpers */

unsigned cg_role_parse(const char *name)
{
    if (strcasecmp(name, "developer") == 0) return CG_ROLE_DEVELOPER;
    if (strcasecmp(name, "manager") == 0) return CG_ROLE_MANAGER;
    if (strcasecmp(name, "support") == 0) return CG_ROLE_SUPPORT;
    if (strcasecmp(name, "auditor") == 0) return CG_ROLE_AUDITOR;
    return 0;
}

const char *cg_admin_user_canon(const char *user, int ignore_case, char *out, size_t cap)
{
    size_t n = user ? strlen(user) : 0;
    if (n == 0 || n > CG_USER_MAX || n >= cap)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)user[i];
        if (c < 0x20 || c == 0x7f)
            return NULL;
        out[i] = (char)(ignore_case && c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
    }
    out[n] = '\0';
    return out;
}

void cg_admin_cfg_defaults(cg_admin_cfg_t *c)
{
    memset(c, 0, sizeof(*c));
    cg_policy_defaults(&c->policy);
    c->expiring_soon_days = 30;
    c->self_approve = 0;
    c->timeout_ms = 2000;
}

void cg_admin_resp_free(cg_admin_resp_t *resp)
{
    free(resp->body);
    resp->body = NULL;
    resp->body_len = 0;
}

void adm_set_body(cg_admin_resp_t *resp, int status, const char *ctype, char *body)
{
    free(resp->body);
    resp->status = status;
    snprintf(resp->content_type, sizeof(resp->content_type), "%s", ctype);
    resp->body = body;
    resp->body_len = body ? strlen(body) : 0;
}

/* Takes ownership of obj. */
void adm_send_json(cg_admin_resp_t *resp, int status, json_t *obj)
{
    char *s = obj ? json_dumps(obj, JSON_COMPACT | JSON_ENSURE_ASCII) : NULL;
    json_decref(obj);
    if (s == NULL) {
        adm_set_body(resp, 500, "application/json", strdup("{\"status\":500,\"code\":"
                     "\"Internal\",\"message\":\"out of memory\"}"));
        return;
    }
    /* Always end with a newline: friendlier to curl users. */
    size_t n = strlen(s);
    char *b = realloc(s, n + 2);
    if (b != NULL) {
        b[n] = '\n';
        b[n + 1] = '\0';
        s = b;
    }
    adm_set_body(resp, status, "application/json", s);
}

void cg_admin_error(cg_admin_resp_t *resp, int status, const char *code, const char *message)
{
    adm_send_json(resp, status, json_pack("{s:i,s:s,s:s}", "status", status, "code", code,
                                          "message", message));
}

void adm_errorf(cg_admin_resp_t *resp, int status, const char *code, const char *fmt, ...)
{
    char msg[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    cg_admin_error(resp, status, code, msg);
}

void adm_store_error(cg_admin_resp_t *resp, const char *err)
{
    adm_store_fail(resp, CG_STORE_ERROR, err);
}

/* A store failure by kind (the texts are the registry's). */
void adm_store_fail(cg_admin_resp_t *resp, cg_store_rc_t rc, const char *err)
{
    cg_registry_fail_t f;
    cg_registry_fail_store(&f, rc, err);
    adm_fail(resp, &f);
}

/* ------------------------------------------------------------ request */

char *adm_qparam(const char *query, const char *name)
{
    size_t nl = strlen(name);
    for (const char *p = query; p != NULL && *p; ) {
        const char *amp = strchr(p, '&');
        size_t len = amp ? (size_t)(amp - p) : strlen(p);
        if (len > nl && strncmp(p, name, nl) == 0 && p[nl] == '=') {
            const char *v = p + nl + 1;
            size_t vl = len - nl - 1;
            char *out = malloc(vl + 1), *o = out;
            if (out == NULL)
                return NULL;
            for (size_t i = 0; i < vl; i++) {
                if (v[i] == '+') {
                    *o++ = ' ';
                } else if (v[i] == '%' && i + 2 < vl && isxdigit((unsigned char)v[i + 1]) &&
                           isxdigit((unsigned char)v[i + 2])) {
                    char hex[3] = { v[i + 1], v[i + 2], 0 };
                    *o++ = (char)strtol(hex, NULL, 16);
                    i += 2;
                } else {
                    *o++ = v[i];
                }
            }
            *o = '\0';
            return out;
        }
        p = amp ? amp + 1 : NULL;
    }
    return NULL;
}

int adm_wants_csv(const cg_admin_req_t *req)
{
    return req->accept != NULL && strstr(req->accept, "text/csv") != NULL;
}

int adm_need(const cg_admin_req_t *req, cg_admin_resp_t *resp, unsigned mask, const char *what)
{
    if (req->user == NULL || req->user[0] == '\0') {
        cg_admin_error(resp, 401, "Auth.Required", "authenticate first");
        return -1;
    }
    if ((req->roles & mask) == 0) {
        adm_errorf(resp, 403, "Auth.Forbidden", "user has no role that may %s", what);
        return -1;
    }
    return 0;
}

/*
 * Staff (manager, support, auditor) with no customer see every customer. A
 * user with a customer is confined to it, whatever its roles.
 */
int adm_sees_all(const cg_admin_req_t *req)
{
    return req->customer == NULL &&
           (req->roles & (CG_ROLE_MANAGER | CG_ROLE_SUPPORT | CG_ROLE_AUDITOR)) != 0;
}

/* May this user see (or act on) what belongs to customer cust? */
int adm_sees_customer(const cg_admin_req_t *req, const char *cust)
{
    return adm_sees_all(req) || (req->customer != NULL && cust != NULL &&
                                 strcmp(req->customer, cust) == 0);
}

void adm_new_id(char *out)
{
    unsigned char b[16];
    if (RAND_bytes(b, sizeof(b)) != 1) {
        /* Never reuse an id: fail loudly rather than fall back to weak randomness. */
        out[0] = '\0';
        return;
    }
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40);
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);
    snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
             b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12],
             b[13], b[14], b[15]);
}

/*
 * If-Match (RFC 9110, 13.1.1) as the condition the write scripts test: "" when
 * absent, "*" for any current version, else the comma list of the tags that
 * can match ("v3"). Comparison is strong: a weak tag, or one that is not ours
 * (such as ""), is kept as "-", which matches nothing. 0, or -1 when the
 * field is not a valid If-Match (resp set to 400).
 */
int adm_if_match(const char *h, char *out, size_t cap, cg_admin_resp_t *resp)
{
    size_t n = 0;
    int items = 0;
    const char *p = h;
    out[0] = '\0';
    if (h == NULL)
        return 0;
    while (*p == ' ' || *p == '\t')
        p++;
    if (*p == '*') {
        for (p++; *p == ' ' || *p == '\t'; p++)
            ;
        if (*p != '\0')
            goto invalid;
        snprintf(out, cap, "*");
        return 0;
    }
    while (*p) {
        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        if (*p == '\0')
            break;
        int weak = p[0] == 'W' && p[1] == '/';
        if (weak)
            p += 2;
        if (*p != '"')
            goto invalid;
        const char *q = ++p;
        while (*p && *p != '"') {
            if ((unsigned char)*p < 0x21 || *p == 0x7f)
                goto invalid;
            p++;
        }
        if (*p != '"')
            goto invalid;
        size_t len = (size_t)(p - q);
        for (p++; *p == ' ' || *p == '\t'; p++)
            ;
        if (*p != '\0' && *p != ',')
            goto invalid;
        int ours = !weak && len >= 2 && len <= 20 && q[0] == 'v';
        for (size_t i = 1; ours && i < len; i++)
            ours = q[i] >= '0' && q[i] <= '9';
        const char *tag = ours ? q : "-";
        size_t tl = ours ? len : 1;
        if (n + tl + 2 > cap)
            goto invalid;
        if (n > 0)
            out[n++] = ',';
        memcpy(out + n, tag, tl);
        n += tl;
        out[n] = '\0';
        items++;
    }
    if (items > 0)
        return 0;
invalid:
    cg_admin_error(resp, 400, "Request.Invalid",
                   "If-Match must be * or a list of entity tags like \"v3\"");
    return -1;
}

/* ------------------------------------------------------------ records */

void adm_fail(cg_admin_resp_t *resp, const cg_registry_fail_t *f)
{
    cg_admin_error(resp, f->status, f->code, f->message);
}

int adm_load_hash(const cg_admin_cfg_t *cfg, cg_store_t *st, const char *key, json_t **obj,
                  cg_admin_resp_t *resp)
{
    cg_registry_fail_t f;
    int rc = cg_registry_load_hash(st, cfg->timeout_ms, key, obj, &f);
    if (rc < 0)
        adm_fail(resp, &f);
    return rc;
}

json_t *adm_load_set(const cg_admin_cfg_t *cfg, cg_store_t *st, const char *setkey,
                     cg_admin_resp_t *resp)
{
    cg_registry_fail_t f;
    json_t *recs = cg_registry_load_set(st, cfg->timeout_ms, setkey, &f);
    if (recs == NULL)
        adm_fail(resp, &f);
    return recs;
}

/* A registration by id. */
int adm_load_rec(const cg_admin_cfg_t *cfg, cg_store_t *st, const char *id, json_t **rec,
                 cg_admin_resp_t *resp)
{
    char key[KEY_MAX];
    *rec = NULL;
    if (!cg_id_valid(id, strlen(id)))
        return 1;
    cg_key(key, st, CG_K_REG "%s", id);
    return adm_load_hash(cfg, st, key, rec, resp);
}

/*
 * An app or customer record: {p}appinfo:{id} or {p}customer:{id}. A customer
 * hash written by hand before the customers API (organization only, no
 * version) does not count as registered.
 */
int adm_load_entity(const cg_admin_cfg_t *cfg, cg_store_t *st, const char *kind,
                    const char *id, json_t **obj, cg_admin_resp_t *resp)
{
    char key[KEY_MAX];
    *obj = NULL;
    if (id == NULL || !cg_app_valid(id, strlen(id)))
        return 1;
    cg_key(key, st, "%s%s", kind, id);
    int rc = adm_load_hash(cfg, st, key, obj, resp);
    if (rc == 0 && json_object_get(*obj, "version") == NULL) {
        json_decref(*obj);
        *obj = NULL;
        return 1;
    }
    return rc;
}

/*
 * The app a request names, checked against the user's customer: 0 with *app
 * (the appinfo record) set; -1 with resp set: 404 App.NotFound when no
 * manager registered it, 403 App.CustomerMismatch when it belongs to another
 * customer than the user's.
 */
int adm_app_for_user(const cg_admin_cfg_t *cfg, cg_store_t *st, const cg_admin_req_t *req,
                     const char *id, json_t **app, cg_admin_resp_t *resp)
{
    int rc = adm_load_entity(cfg, st, CG_K_APPINFO, id, app, resp);
    if (rc < 0)
        return -1;
    if (rc > 0) {
        adm_errorf(resp, 404, "App.NotFound", "no app '%.128s' is registered; a manager registers "
                   "apps with POST /apps", id);
        return -1;
    }
    if (!adm_sees_customer(req, fs(*app, "customer_id"))) {
        json_decref(*app);
        *app = NULL;
        adm_errorf(resp, 403, "App.CustomerMismatch", "app '%.128s' belongs to another customer",
                   id);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------ events and writes */

void ev_init(event_t *e, const cg_admin_req_t *req, const char *action)
{
    e->n = 0;
    cg_time_iso(req->now, e->time, sizeof(e->time));
    e->kv[e->n++] = "time";    e->kv[e->n++] = e->time;
    e->kv[e->n++] = "user";    e->kv[e->n++] = req->user ? req->user : "";
    e->kv[e->n++] = "ip";      e->kv[e->n++] = req->client_ip ? req->client_ip : "";
    e->kv[e->n++] = "action";  e->kv[e->n++] = action;
}

void ev_add(event_t *e, const char *k, const char *v)
{
    if (e->n + 2 <= (int)(sizeof(e->kv) / sizeof(e->kv[0]))) {
        e->kv[e->n++] = k;
        e->kv[e->n++] = v ? v : "";
    }
}

int adm_run_write(const cg_admin_cfg_t *cfg, cg_store_t *st, const char *script, int nkeys,
                  const char **keys, const char **args, int na, size_t cap, const event_t *ev,
                  const cg_script_error_t *errors, cg_admin_resp_t *resp)
{
    for (int i = 0; i < ev->n && (size_t)na < cap; i++)
        args[na++] = ev->kv[i];
    cg_registry_fail_t f;
    if (cg_registry_run(st, cfg->timeout_ms, script, nkeys, keys, na, args, errors, &f) == 0)
        return 0;
    adm_fail(resp, &f);
    return -1;
}
