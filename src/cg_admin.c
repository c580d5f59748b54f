#include "cg_admin.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <hiredis/hiredis.h>
#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <openssl/x509.h>

#include "cg_cert.h"
#include "cg_decide.h"
#include "cg_reg.h"
#include "cg_tls.h"

#define KEY_MAX 512
#define PAGE_SIZE_DEFAULT 50
#define PAGE_SIZE_MAX 500
#define EVENTS_MAX 10000
#define REASON_MAX 1000
#define NELEM(a) (sizeof(a) / sizeof((a)[0]))

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

static void set_body(cg_admin_resp_t *resp, int status, const char *ctype, char *body)
{
    free(resp->body);
    resp->status = status;
    snprintf(resp->content_type, sizeof(resp->content_type), "%s", ctype);
    resp->body = body;
    resp->body_len = body ? strlen(body) : 0;
}

/* Takes ownership of obj. */
static void send_json(cg_admin_resp_t *resp, int status, json_t *obj)
{
    char *s = obj ? json_dumps(obj, JSON_COMPACT | JSON_ENSURE_ASCII) : NULL;
    json_decref(obj);
    if (s == NULL) {
        set_body(resp, 500, "application/json",
                 strdup("{\"status\":500,\"code\":\"Internal\",\"message\":\"out of memory\"}"));
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
    set_body(resp, status, "application/json", s);
}

void cg_admin_error(cg_admin_resp_t *resp, int status, const char *code, const char *message)
{
    send_json(resp, status, json_pack("{s:i,s:s,s:s}", "status", status, "code", code,
                                      "message", message));
}

static void errorf(cg_admin_resp_t *resp, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void errorf(cg_admin_resp_t *resp, int status, const char *code, const char *fmt, ...)
{
    char msg[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    cg_admin_error(resp, status, code, msg);
}

static void store_error(cg_admin_resp_t *resp, const char *err)
{
    errorf(resp, 503, "Store.Unavailable", "the registration store did not answer: %s", err);
}

/* A store failure by kind: an ACL refusal and damaged data are not outages. */
static void store_fail(cg_admin_resp_t *resp, cg_store_rc_t rc, const char *err)
{
    if (rc == CG_STORE_PERM)
        errorf(resp, 500, "Store.PermissionDenied", "the store refused a command by ACL: %s",
               err);
    else if (rc == CG_STORE_CORRUPT)
        errorf(resp, 500, "Store.Corrupt", "the store holds damaged data: %s", err);
    else
        store_error(resp, err);
}

/*
 * A command's outcome by kind: Redis's error reply (NOPERM, WRONGTYPE, ...)
 * is a failure too. On failure *r is freed and NULL, and err says why.
 */
static cg_store_rc_t outcome(cg_store_rc_t rc, redisReply **r, const char *what, char *err,
                             size_t errlen)
{
    if (rc == CG_STORE_OK && (*r)->type == REDIS_REPLY_ERROR) {
        snprintf(err, errlen, "%s: %.150s", what, (*r)->str);
        rc = cg_store_reply_kind(*r);
        cg_store_reply_free(*r);
        *r = NULL;
    }
    return rc;
}

static void keyf(char *out, const cg_store_t *st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void keyf(char *out, const cg_store_t *st, const char *fmt, ...)
{
    va_list ap;
    int n = snprintf(out, KEY_MAX, "%s", cg_store_prefix(st));
    va_start(ap, fmt);
    vsnprintf(out + n, KEY_MAX - (size_t)n, fmt, ap);
    va_end(ap);
}

/* URL-decoded query parameter, malloc'd, or NULL when absent. */
static char *qparam(const char *query, const char *name)
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

static int wants_csv(const cg_admin_req_t *req)
{
    return req->accept != NULL && strstr(req->accept, "text/csv") != NULL;
}

static int need(const cg_admin_req_t *req, cg_admin_resp_t *resp, unsigned mask, const char *what)
{
    if (req->user == NULL || req->user[0] == '\0') {
        cg_admin_error(resp, 401, "Auth.Required", "authenticate first");
        return -1;
    }
    if ((req->roles & mask) == 0) {
        errorf(resp, 403, "Auth.Forbidden", "user has no role that may %s", what);
        return -1;
    }
    return 0;
}

/*
 * Staff (manager, support, auditor) with no customer see every customer. A
 * user with a customer is confined to it, whatever its roles.
 */
static int sees_all(const cg_admin_req_t *req)
{
    return req->customer == NULL &&
           (req->roles & (CG_ROLE_MANAGER | CG_ROLE_SUPPORT | CG_ROLE_AUDITOR)) != 0;
}

/* May this user see (or act on) what belongs to customer cust? */
static int sees_customer(const cg_admin_req_t *req, const char *cust)
{
    return sees_all(req) || (req->customer != NULL && cust != NULL &&
                             strcmp(req->customer, cust) == 0);
}

static void new_id(char *out)
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
static int if_match_cond(const char *h, char *out, size_t cap, cg_admin_resp_t *resp)
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

/* ------------------------------------------------------------ Redis helpers */

/* EVAL script with keys and args. *out set when Redis answered. */
static cg_store_rc_t eval(const cg_admin_cfg_t *cfg, cg_store_t *st, const char *script,
                          int nkeys, const char **keys, int nargs, const char **args,
                          redisReply **out, char *err, size_t errlen)
{
    int argc = 3 + nkeys + nargs;
    const char **argv = calloc((size_t)argc, sizeof(*argv));
    size_t *lens = calloc((size_t)argc, sizeof(*lens));
    char nk[16];
    cg_store_rc_t rc = CG_STORE_ERROR;
    if (argv == NULL || lens == NULL) {
        snprintf(err, errlen, "out of memory");
        goto done;
    }
    snprintf(nk, sizeof(nk), "%d", nkeys);
    argv[0] = "EVAL";
    argv[1] = script;
    argv[2] = nk;
    for (int i = 0; i < nkeys; i++)
        argv[3 + i] = keys[i];
    for (int i = 0; i < nargs; i++)
        argv[3 + nkeys + i] = args[i];
    for (int i = 0; i < argc; i++)
        lens[i] = strlen(argv[i]);
    rc = cg_store_cmd(st, cfg->timeout_ms, argc, argv, lens, out, err, errlen);
done:
    free(argv);
    free(lens);
    return rc;
}

static cg_store_rc_t cmd2(const cg_admin_cfg_t *cfg, cg_store_t *st, const char *c,
                          const char *key, redisReply **out, char *err, size_t errlen)
{
    const char *argv[2] = { c, key };
    size_t lens[2] = { strlen(c), strlen(key) };
    return cg_store_cmd(st, cfg->timeout_ms, 2, argv, lens, out, err, errlen);
}

/* A hash reply as a JSON object of strings (NULL if not a hash of strings). */
static json_t *hash_to_obj(const redisReply *r)
{
    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements % 2 != 0)
        return NULL;
    json_t *o = json_object();
    for (size_t i = 0; o != NULL && i + 1 < r->elements; i += 2) {
        const redisReply *k = r->element[i], *v = r->element[i + 1];
        if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING ||
            json_object_set_new(o, k->str, json_stringn(v->str, v->len)) != 0) {
            json_decref(o);
            return NULL;
        }
    }
    return o;
}

static const char *fs(json_t *rec, const char *f)
{
    const char *v = json_string_value(json_object_get(rec, f));
    return v ? v : "";
}

static int64_t fi(json_t *rec, const char *f, int64_t dflt)
{
    const char *v = json_string_value(json_object_get(rec, f));
    int64_t out;
    if (v == NULL || *v == '\0' || cg_parse_i64(v, strlen(v), &out) != 0)
        return dflt;
    return out;
}

/* Load a hash as a JSON object of strings. 0 found, 1 absent, -1 error (resp set). */
static int load_hash(const cg_admin_cfg_t *cfg, cg_store_t *st, const char *key, json_t **obj,
                     cg_admin_resp_t *resp)
{
    char err[200];
    redisReply *r = NULL;
    *obj = NULL;
    cg_store_rc_t rc = cmd2(cfg, st, "HGETALL", key, &r, err, sizeof(err));
    if (rc != CG_STORE_OK) {
        store_fail(resp, rc, err);
        return -1;
    }
    if (r->type == REDIS_REPLY_ERROR || (r->type == REDIS_REPLY_ARRAY && r->elements == 0)) {
        rc = cg_store_reply_kind(r);
        if (rc != CG_STORE_OK)
            snprintf(err, sizeof(err), "HGETALL: %.150s", r->str);
        cg_store_reply_free(r);
        if (rc == CG_STORE_CORRUPT) {
            errorf(resp, 500, "Store.Corrupt", "the store key %.200s is damaged", key);
            return -1;
        } else if (rc != CG_STORE_OK) {
            store_fail(resp, rc, err);
            return -1;
        }
        return 1;
    }
    *obj = hash_to_obj(r);
    cg_store_reply_free(r);
    if (*obj == NULL) {
        errorf(resp, 500, "Store.Corrupt", "the store key %.200s is damaged", key);
        return -1;
    }
    return 0;
}

/* Load a registration by id. 0 found, 1 absent, -1 store error (resp set). */
static int load_rec(const cg_admin_cfg_t *cfg, cg_store_t *st, const char *id, json_t **rec,
                    cg_admin_resp_t *resp)
{
    char key[KEY_MAX];
    *rec = NULL;
    if (!cg_id_valid(id, strlen(id)))
        return 1;
    keyf(key, st, "reg:%s", id);
    return load_hash(cfg, st, key, rec, resp);
}

/*
 * An app or customer record: {p}appinfo:{id} or {p}customer:{id}. A customer
 * hash written by hand before the customers API (organization only, no
 * version) does not count as registered.
 */
static int load_entity(const cg_admin_cfg_t *cfg, cg_store_t *st, const char *kind,
                       const char *id, json_t **obj, cg_admin_resp_t *resp)
{
    char key[KEY_MAX];
    *obj = NULL;
    if (id == NULL || !cg_app_valid(id, strlen(id)))
        return 1;
    keyf(key, st, "%s:%s", kind, id);
    int rc = load_hash(cfg, st, key, obj, resp);
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
static int app_for_user(const cg_admin_cfg_t *cfg, cg_store_t *st, const cg_admin_req_t *req,
                        const char *id, json_t **app, cg_admin_resp_t *resp)
{
    int rc = load_entity(cfg, st, "appinfo", id, app, resp);
    if (rc < 0)
        return -1;
    if (rc > 0) {
        errorf(resp, 404, "App.NotFound", "no app '%.128s' is registered; a manager registers "
               "apps with POST /apps", id);
        return -1;
    }
    if (!sees_customer(req, fs(*app, "customer_id"))) {
        json_decref(*app);
        *app = NULL;
        errorf(resp, 403, "App.CustomerMismatch", "app '%.128s' belongs to another customer", id);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------ views */

static void attach_usage(const cg_admin_cfg_t *cfg, cg_store_t *st, json_t *items);

static const char *derived_status(const cg_admin_cfg_t *cfg, json_t *rec, int64_t now, char *buf,
                                  size_t cap)
{
    const char *s = fs(rec, "status");
    int64_t to = fi(rec, "valid_to", INT64_MAX);
    if (now > to)
        return "EXPIRED";
    if ((strcmp(s, "APPROVED") == 0 || strcmp(s, "PENDING") == 0) &&
        to - now <= (int64_t)cfg->expiring_soon_days * 86400) {
        snprintf(buf, cap, "%s (EXPIRATION SOON)", s);
        return buf;
    }
    return s;
}

static json_t *iso_or_null(int64_t t)
{
    char b[32];
    if (t == INT64_MIN)
        return json_null();
    cg_time_iso(t, b, sizeof(b));
    return json_string(b);
}

static json_t *parse_json_field(json_t *rec, const char *f)
{
    const char *v = fs(rec, f);
    json_t *j = *v ? json_loads(v, 0, NULL) : NULL;
    return j && json_is_array(j) ? j : (json_decref(j), json_array());
}

static json_t *view(const cg_admin_cfg_t *cfg, json_t *rec, int64_t now)
{
    char buf[64];
    int64_t to = fi(rec, "valid_to", 0);
    json_t *chain = json_array();
    json_t *subjects = parse_json_field(rec, "chain_subjects");
    const char *c = fs(rec, "chain");
    size_t idx = 0;
    while (*c) {
        size_t n = strcspn(c, ",");
        json_array_append_new(chain, json_pack("{s:s%,s:o}", "fingerprint", c, n, "subject",
                                               json_incref(json_array_get(subjects, idx))
                                                   ? json_array_get(subjects, idx) : json_null()));
        idx++;
        c += n;
        if (*c == ',')
            c++;
    }
    json_decref(subjects);
    json_t *v = json_pack(
        "{s:s,s:s,s:s,s:s,s:o,s:s,s:s,s:s,s:s,s:s,s:s,s:s,s:o,s:o,s:o,s:I,s:s,s:s,s:o,s:o,s:o,"
        "s:s,s:s,s:o,s:s,s:I}",
        "id", fs(rec, "id"),
        "customerId", fs(rec, "customer_id"),
        "appId", fs(rec, "app_id"),
        "commonName", fs(rec, "common_name"),
        "subjectAlternativeNames", parse_json_field(rec, "sans"),
        "serialNumber", fs(rec, "serial"),
        "issuer", fs(rec, "issuer"),
        "organization", fs(rec, "organization"),
        "organizationalUnit", fs(rec, "organizational_unit"),
        "country", fs(rec, "country"),
        "stateOrProvince", fs(rec, "state"),
        "locality", fs(rec, "locality"),
        "validFrom", iso_or_null(fi(rec, "valid_from", INT64_MIN)),
        "validTo", iso_or_null(fi(rec, "valid_to", INT64_MIN)),
        "created", iso_or_null(fi(rec, "created", INT64_MIN)),
        "expireIn", (json_int_t)(to > now ? (to - now) / 86400 : 0),
        "status", derived_status(cfg, rec, now, buf, sizeof(buf)),
        "fingerprint", fs(rec, "fingerprint"),
        "chain", chain,
        "activateAt", iso_or_null(fi(rec, "activate_at", INT64_MIN)),
        "retireAt", iso_or_null(fi(rec, "retire_at", INT64_MIN)),
        "statusReason", fs(rec, "status_reason"),
        "createdBy", fs(rec, "created_by"),
        "updated", iso_or_null(fi(rec, "updated", INT64_MIN)),
        "updatedBy", fs(rec, "updated_by"),
        "version", (json_int_t)fi(rec, "version", 1));
    return v;
}

static void set_etag(cg_admin_resp_t *resp, json_t *rec)
{
    snprintf(resp->etag, sizeof(resp->etag), "\"v%lld\"", (long long)fi(rec, "version", 1));
}

/* CSV cell: quoted when needed; a leading formula character is neutralised. */
static void csv_cell(char **buf, size_t *len, size_t *cap, const char *v, int last)
{
    size_t need = strlen(v) * 2 + 8;
    if (*len + need >= *cap) {
        size_t nc = (*cap + need) * 2;
        char *nb = realloc(*buf, nc);
        if (nb == NULL)
            return;
        *buf = nb;
        *cap = nc;
    }
    char *o = *buf + *len;
    *o++ = '"';
    if (strchr("=+-@\t\r", v[0]) != NULL && v[0] != '\0')
        *o++ = '\'';
    for (; *v; v++) {
        if (*v == '"')
            *o++ = '"';
        *o++ = *v;
    }
    *o++ = '"';
    *o++ = last ? '\n' : ',';
    *len = (size_t)(o - *buf);
    (*buf)[*len] = '\0';
}

/* Send rows (array of objects) as CSV with these columns. */
static void send_csv(cg_admin_resp_t *resp, json_t *rows, const char *const *cols, size_t ncols)
{
    size_t len = 0, cap = 1024;
    char *buf = malloc(cap);
    if (buf == NULL) {
        cg_admin_error(resp, 500, "Internal", "out of memory");
        return;
    }
    buf[0] = '\0';
    for (size_t c = 0; c < ncols; c++)
        csv_cell(&buf, &len, &cap, cols[c], c + 1 == ncols);
    size_t i;
    json_t *row;
    json_array_foreach(rows, i, row) {
        for (size_t c = 0; c < ncols; c++) {
            json_t *v = json_object_get(row, cols[c]);
            char num[32];
            const char *s = json_string_value(v);
            if (json_is_integer(v)) {
                snprintf(num, sizeof(num), "%lld", (long long)json_integer_value(v));
                s = num;
            }
            csv_cell(&buf, &len, &cap, s ? s : "", c + 1 == ncols);
        }
    }
    set_body(resp, 200, "text/csv; charset=utf-8", buf);
}

/* ------------------------------------------------------------ events */

/* Event fields common to every write, as Lua ARGV pairs. */
typedef struct {
    const char *kv[32];
    int n;
    char time[32];
} event_t;

static void ev_init(event_t *e, const cg_admin_req_t *req, const char *action)
{
    e->n = 0;
    cg_time_iso(req->now, e->time, sizeof(e->time));
    e->kv[e->n++] = "time";    e->kv[e->n++] = e->time;
    e->kv[e->n++] = "user";    e->kv[e->n++] = req->user ? req->user : "";
    e->kv[e->n++] = "ip";      e->kv[e->n++] = req->client_ip ? req->client_ip : "";
    e->kv[e->n++] = "action";  e->kv[e->n++] = action;
}

static void ev_add(event_t *e, const char *k, const char *v)
{
    if (e->n + 2 <= (int)(sizeof(e->kv) / sizeof(e->kv[0]))) {
        e->kv[e->n++] = k;
        e->kv[e->n++] = v ? v : "";
    }
}

/*
 * Every write script starts with GUARD: Redis does not roll a script back when
 * a command fails half-way, so each key it will touch is checked for its type
 * (and counters and versions for their format) before the first write. A bad
 * key answers "BADKEY <key>": 500 Store.Corrupt, nothing written.
 * guard{{key, kind}, ...}: kind is a Redis type, or 'int' for a string counter.
 * intf(key, field): the hash field is absent or an integer.
 */
#define LUA_GUARD \
    "local function isint(v) return v ~= nil and string.match(v, '^%-?%d+$') ~= nil " \
    "and #v < 18 end\n" \
    "local function guard(spec)\n" \
    "  for _, s in ipairs(spec) do\n" \
    "    local t = redis.call('TYPE', s[1])\n" \
    "    if type(t) == 'table' then t = t.ok end\n" \
    "    if t ~= 'none' then\n" \
    "      if s[2] == 'int' then\n" \
    "        if t ~= 'string' or not isint(redis.call('GET', s[1])) then return s[1] end\n" \
    "      elseif t ~= s[2] then return s[1] end\n" \
    "    end\n" \
    "  end\n" \
    "end\n" \
    "local function intf(k, f)\n" \
    "  local v = redis.call('HGET', k, f)\n" \
    "  return v == false or isint(v)\n" \
    "end\n" \
    "local function bad(k) return redis.error_reply('BADKEY ' .. k) end\n" \
    "local function bump(k)\n" \
    "  redis.call('HSET', k, 'version', tonumber(redis.call('HGET', k, 'version') or '1') + 1)\n" \
    "end\n" \
    "local function ifmatch(cond, ver)\n" \
    "  if cond == '' or cond == '*' then return true end\n" \
    "  for t in string.gmatch(cond, '[^,]+') do\n" \
    "    if t == 'v' .. (ver or '1') then return true end\n" \
    "  end\n" \
    "  return false\n" \
    "end\n"

/* How a script's error reply (its first word) maps to an API error. */
typedef struct {
    const char *word;       /* NULL ends the table */
    int status;
    const char *code;
    const char *message;    /* may hold one %s: the rest of the reply after the word */
} script_error_t;

/*
 * Run a write script. 0 when it succeeded; otherwise -1 with resp set: the
 * table's error for the script's refusal, 503 when Redis did not answer.
 */
static int run_script(const cg_admin_cfg_t *cfg, cg_store_t *st, const char *script, int nkeys,
                      const char **keys, int nargs, const char **args,
                      const script_error_t *errors, cg_admin_resp_t *resp)
{
    char err[200];
    redisReply *r = NULL;
    if (eval(cfg, st, script, nkeys, keys, nargs, args, &r, err, sizeof(err)) != CG_STORE_OK) {
        store_error(resp, err);
        return -1;
    }
    if (r->type != REDIS_REPLY_ERROR) {
        cg_store_reply_free(r);
        return 0;
    }
    /* Redis prefixes "ERR " to a one-word error; "WORD detail" keeps its word. */
    const char *text = strncmp(r->str, "ERR ", 4) == 0 ? r->str + 4 : r->str;
    if (strncmp(text, "BADKEY ", 7) == 0) {
        errorf(resp, 500, "Store.Corrupt", "the store key %.200s has the wrong type or format; "
               "nothing was written", text + 7);
        cg_store_reply_free(r);
        return -1;
    }
    const script_error_t *e = errors;
    size_t wl = 0;
    while (e->word != NULL) {
        wl = strlen(e->word);
        if (strncmp(text, e->word, wl) == 0 && (text[wl] == '\0' || text[wl] == ' '))
            break;
        e++;
    }
    if (e->word == NULL) {
        char why[240];
        snprintf(why, sizeof(why), "the write was refused: %.200s", r->str);
        cg_store_rc_t kind = cg_store_reply_kind(r);
        /* Our own refusals are mapped above; any other is Redis's, by kind. */
        store_fail(resp, kind == CG_STORE_OK ? CG_STORE_ERROR : kind, why);
    } else {
        char msg[300];
        const char *rest = text[wl] == ' ' ? text + wl + 1 : "in that state";
        /* The messages are our own constants with at most one %s. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
        snprintf(msg, sizeof(msg), e->message, rest);
#pragma GCC diagnostic pop
        cg_admin_error(resp, e->status, e->code, msg);
    }
    cg_store_reply_free(r);
    return -1;
}

/* A write script whose last ARGV words are its audit event's (args has room). */
static int run_write(const cg_admin_cfg_t *cfg, cg_store_t *st, const char *script, int nkeys,
                     const char **keys, const char **args, int na, size_t cap, const event_t *ev,
                     const script_error_t *errors, cg_admin_resp_t *resp)
{
    for (int i = 0; i < ev->n && (size_t)na < cap; i++)
        args[na++] = ev->kv[i];
    return run_script(cfg, st, script, nkeys, keys, na, args, errors, resp);
}

/* ------------------------------------------------------------ upload */

/* KEYS: fp, reg, app set, regs, events, gen, schema, appinfo.
 * ARGV: id, channel, customer, n, n record words, event words. */
static const char UPLOAD_LUA[] = LUA_GUARD
    "local b = guard({{KEYS[1], 'string'}, {KEYS[2], 'hash'}, {KEYS[3], 'set'},\n"
    "  {KEYS[4], 'set'}, {KEYS[5], 'stream'}, {KEYS[6], 'int'}, {KEYS[7], 'string'},\n"
    "  {KEYS[8], 'hash'}})\n"
    "if b then return bad(b) end\n"
    "if redis.call('EXISTS', KEYS[1]) == 1 then return redis.error_reply('DUPLICATE') end\n"
    "if redis.call('HGET', KEYS[8], 'customer_id') ~= ARGV[3] then\n"
    "  return redis.error_reply('APPOWNER') end\n"
    "local n = tonumber(ARGV[4])\n"
    "local rec = {}\n"
    "for i = 5, 4 + n do rec[#rec + 1] = ARGV[i] end\n"
    "redis.call('HSET', KEYS[2], unpack(rec))\n"
    "redis.call('SET', KEYS[1], ARGV[1])\n"
    "redis.call('SADD', KEYS[3], ARGV[1])\n"
    "redis.call('SADD', KEYS[4], ARGV[1])\n"
    "redis.call('SET', KEYS[7], '1')\n"
    "local ev = {}\n"
    "for i = 5 + n, #ARGV do ev[#ev + 1] = ARGV[i] end\n"
    "redis.call('XADD', KEYS[5], '*', unpack(ev))\n"
    "redis.call('INCR', KEYS[6])\n"
    "local t = redis.call('TIME')\n"
    "local ms = ' ' .. (t[1] * 1000 + math.floor(t[2] / 1000))\n"
    "redis.call('PUBLISH', ARGV[2], redis.call('HGET', KEYS[2], 'fingerprint') .. ms)\n"
    "return 'OK'\n";

typedef struct {
    STACK_OF(X509) *certs;      /* leaf first */
    char *app, *customer;
    const char *pkey;           /* points into the JSON document */
    size_t pkey_len;
    json_t *doc;
} upload_t;

static void upload_free(upload_t *u)
{
    if (u->pkey != NULL)
        OPENSSL_cleanse((void *)u->pkey, u->pkey_len);
    if (u->certs != NULL)
        sk_X509_pop_free(u->certs, X509_free);
    json_decref(u->doc);
    free(u->app);
    free(u->customer);
    memset(u, 0, sizeof(*u));
}

static int ctype_is(const char *ct, const char *want)
{
    size_t n = strlen(want);
    return ct != NULL && strncasecmp(ct, want, n) == 0 && (ct[n] == '\0' || ct[n] == ';' ||
                                                           ct[n] == ' ');
}

/* Append the certificates of `more` to u->certs (taking them). */
static int take_certs(upload_t *u, STACK_OF(X509) *more)
{
    while (sk_X509_num(more) > 0) {
        X509 *x = sk_X509_shift(more);
        if (!sk_X509_push(u->certs, x)) {
            X509_free(x);
            sk_X509_pop_free(more, X509_free);
            return -1;
        }
    }
    sk_X509_free(more);
    return 0;
}

/*
 * Read an upload or check body: JSON {certificate, chain, appId, customerId,
 * privateKey}, or a raw PEM/DER/PKCS#7 body with appId/customerId in the query.
 * code_bad is the code for a malformed request. 0, or -1 with resp set.
 */
static int read_upload(const cg_admin_req_t *req, cg_admin_resp_t *resp, upload_t *u,
                       const char *code_bad, int app_required)
{
    char err[200];
    int p7 = 0;
    const char *ct = req->content_type;
    memset(u, 0, sizeof(*u));

    if (req->body_len == 0) {
        errorf(resp, 400, code_bad, "the request body is empty");
        return -1;
    }
    if (ct == NULL || ctype_is(ct, "application/json")) {
        json_error_t je;
        u->doc = json_loadb((const char *)req->body, req->body_len,
                            JSON_REJECT_DUPLICATES, &je);
        if (u->doc == NULL || !json_is_object(u->doc)) {
            errorf(resp, 400, code_bad, "the body is not a JSON object%s%s",
                   u->doc ? "" : ": ", u->doc ? "" : je.text);
            return -1;
        }
        json_t *jc = json_object_get(u->doc, "certificate");
        json_t *jch = json_object_get(u->doc, "chain");
        json_t *ja = json_object_get(u->doc, "appId");
        json_t *jcu = json_object_get(u->doc, "customerId");
        json_t *jk = json_object_get(u->doc, "privateKey");
        if (jk != NULL && !json_is_null(jk)) {
            if (!json_is_string(jk)) {
                errorf(resp, 400, code_bad, "privateKey must be a PEM string");
                return -1;
            }
            u->pkey = json_string_value(jk);
            u->pkey_len = json_string_length(jk);
        }
        if (!json_is_string(jc) || json_string_length(jc) == 0) {
            errorf(resp, 400, code_bad, "certificate is required and must be a PEM string");
            return -1;
        }
        if ((ja != NULL && !json_is_string(ja) && !json_is_null(ja)) ||
            (jcu != NULL && !json_is_string(jcu) && !json_is_null(jcu))) {
            errorf(resp, 400, code_bad, "appId and customerId must be strings");
            return -1;
        }
        u->app = json_is_string(ja) ? strdup(json_string_value(ja)) : NULL;
        u->customer = json_is_string(jcu) ? strdup(json_string_value(jcu)) : NULL;
        u->certs = cg_cert_read_all((const unsigned char *)json_string_value(jc),
                                    json_string_length(jc), &p7, err, sizeof(err));
        if (u->certs == NULL) {
            errorf(resp, 400, "Certificate.Invalid", "certificate: %s", err);
            return -1;
        }
        if (jch != NULL && !json_is_null(jch)) {
            if (sk_X509_num(u->certs) > 1) {
                errorf(resp, 400, "Certificate.Invalid",
                       "certificate must hold one certificate when chain is sent separately");
                return -1;
            }
            size_t i;
            json_t *el;
            json_t *parts = json_is_array(jch) ? json_incref(jch) : json_pack("[O]", jch);
            json_array_foreach(parts, i, el) {
                if (!json_is_string(el)) {
                    json_decref(parts);
                    errorf(resp, 400, code_bad, "chain must be a PEM string or an array of them");
                    return -1;
                }
                STACK_OF(X509) *more = cg_cert_read_all((const unsigned char *)json_string_value(el),
                                                        json_string_length(el), NULL, err,
                                                        sizeof(err));
                if (more == NULL || take_certs(u, more) != 0) {
                    json_decref(parts);
                    errorf(resp, 400, "Chain.Invalid", "chain element %zu: %s", i,
                           more ? "out of memory" : err);
                    return -1;
                }
            }
            json_decref(parts);
        }
    } else if (ctype_is(ct, "application/x-pem-file") || ctype_is(ct, "application/pkix-cert") ||
               ctype_is(ct, "application/pkcs7-mime") || ctype_is(ct, "application/x-x509-ca-cert") ||
               ctype_is(ct, "application/pkcs7-certificates") ||
               ctype_is(ct, "application/x-pkcs7-certificates")) {
        u->certs = cg_cert_read_all(req->body, req->body_len, &p7, err, sizeof(err));
        if (u->certs == NULL) {
            errorf(resp, 400, "Certificate.Invalid", "%s", err);
            return -1;
        }
        u->app = qparam(req->query, "appId");
        u->customer = qparam(req->query, "customerId");
    } else {
        errorf(resp, 415, code_bad, "unsupported Content-Type; send application/json, "
               "application/x-pem-file, application/pkix-cert or application/pkcs7-mime");
        return -1;
    }
    if (p7 && cg_cert_order_bag(u->certs, err, sizeof(err)) != 0) {
        errorf(resp, 400, "Upload.Certificate.Invalid", "PKCS#7 bundle: %s", err);
        return -1;
    }
    if (app_required && (u->app == NULL || u->app[0] == '\0')) {
        errorf(resp, 400, code_bad, "appId is required");
        return -1;
    }
    if (u->app != NULL && u->app[0] != '\0' && !cg_app_valid(u->app, strlen(u->app))) {
        errorf(resp, 400, code_bad, "appId must be 1-128 printable ASCII characters without "
               "spaces or * ? [ ] : { } \\");
        return -1;
    }
    if (u->customer != NULL && u->customer[0] != '\0' &&
        !cg_app_valid(u->customer, strlen(u->customer))) {
        errorf(resp, 400, code_bad, "customerId must be 1-128 printable ASCII characters without "
               "spaces or * ? [ ] : { } \\");
        return -1;
    }
    return 0;
}

int cg_admin_parse_upload(const char *content_type, const char *query,
                          const unsigned char *body, size_t len, cg_admin_resp_t *resp)
{
    cg_admin_req_t req;
    upload_t u;
    memset(&req, 0, sizeof(req));
    req.content_type = content_type;
    req.query = query;
    req.body = (unsigned char *)body;
    req.body_len = len;
    int rc = read_upload(&req, resp, &u, "Upload.Certificate.Invalid", 1);
    upload_free(&u);
    return rc == 0 ? 0 : resp->status;
}

static char *subjects_json(STACK_OF(X509) *certs, int from)
{
    json_t *a = json_array();
    for (int i = from; i < sk_X509_num(certs); i++) {
        cg_cert_info_t info;
        char err[100];
        if (cg_cert_info(sk_X509_value(certs, i), &info, err, sizeof(err)) == 0) {
            json_array_append_new(a, json_string(info.subject));
            cg_cert_info_free(&info);
        } else {
            json_array_append_new(a, json_null());
        }
    }
    char *s = json_dumps(a, JSON_COMPACT);
    json_decref(a);
    return s;
}

static char *fp_list(STACK_OF(X509) *certs, int from)
{
    size_t n = (size_t)sk_X509_num(certs);
    char *s = calloc(n * (CG_FP_HEX_LEN + 1) + 1, 1);
    if (s == NULL)
        return NULL;
    for (int i = from; i < (int)n; i++) {
        cg_fp_t fp;
        char hex[CG_FP_HEX_LEN + 1];
        if (cg_fp_x509(sk_X509_value(certs, i), &fp) != 0) {
            free(s);
            return NULL;
        }
        cg_fp_to_hex(&fp, hex);
        if (i > from)
            strcat(s, ",");
        strcat(s, hex);
    }
    return s;
}

/*
 * Whose registration an upload (or a check) makes. The named app must be
 * registered and belong to the user's customer; the registration's customer
 * is the app's owner, and a customerId in the request must name the same one.
 * 0 with *owner set (malloc'd); -1 with resp set.
 */
static int upload_owner(const cg_admin_cfg_t *cfg, cg_store_t *st, const cg_admin_req_t *req,
                        const upload_t *u, char **owner, cg_admin_resp_t *resp)
{
    json_t *app = NULL;
    *owner = NULL;
    if (app_for_user(cfg, st, req, u->app, &app, resp) != 0)
        return -1;
    const char *own = fs(app, "customer_id");
    if (u->customer != NULL && u->customer[0] != '\0' && strcmp(u->customer, own) != 0) {
        json_decref(app);
        cg_admin_error(resp, 403, "Auth.CustomerMismatch",
                       "customerId is not the customer of the app");
        return -1;
    }
    *owner = strdup(own);
    json_decref(app);
    if (*owner == NULL) {
        cg_admin_error(resp, 500, "Internal", "out of memory");
        return -1;
    }
    return 0;
}

/*
 * The upload policy, exactly as an upload applies it and a check reports it:
 * proof of possession, a readable and unexpired leaf, then the configured
 * rules (with the owner's organization for CertGatePolicyCnContainsOrg).
 * 0 with *info filled (free it); 1 refused (*status, *code, msg); -1 store
 * error (resp set).
 */
static int vet_upload(const cg_admin_cfg_t *cfg, cg_store_t *st, const cg_admin_req_t *req,
                      const upload_t *u, const char *owner, cg_cert_info_t *info, int *status,
                      const char **code, char *msg, size_t cap, cg_admin_resp_t *resp)
{
    char err[200];
    X509 *leaf = sk_X509_value(u->certs, 0);
    *status = 400;
    if (u->pkey != NULL) {
        int m = cg_cert_key_matches(leaf, u->pkey, u->pkey_len);
        if (m != 0) {
            *code = "PrivateKey.Invalid";
            snprintf(msg, cap, "%s", m < 0 ? "privateKey is not a readable, unencrypted PEM "
                     "private key" : "privateKey does not belong to the certificate");
            return 1;
        }
    }
    if (cg_cert_info(leaf, info, err, sizeof(err)) != 0) {
        *code = "Certificate.Invalid";
        snprintf(msg, cap, "certificate: %s", err);
        return 1;
    }
    if (info->not_after < req->now) {
        cg_cert_info_free(info);
        *code = "Certificate.Expired";
        snprintf(msg, cap, "the certificate has already expired");
        return 1;
    }
    json_t *cust = NULL;
    if (cfg->policy.cn_contains_org && owner != NULL &&
        load_entity(cfg, st, "customer", owner, &cust, resp) < 0) {
        cg_cert_info_free(info);
        return -1;
    }
    const char *org = cust ? json_string_value(json_object_get(cust, "organization")) : NULL;
    int pol = cg_policy_check(&cfg->policy, u->certs, org && *org ? org : NULL, req->now, code,
                              msg, cap);
    json_decref(cust);
    if (pol != 0) {
        cg_cert_info_free(info);
        return 1;
    }
    return 0;
}

static void do_upload(const cg_admin_cfg_t *cfg, cg_store_t *st, cg_admin_req_t *req,
                      cg_admin_resp_t *resp)
{
    upload_t u;
    cg_cert_info_t info;
    int have_info = 0;
    char *chain = NULL, *subjects = NULL, *sans = NULL, *owner = NULL;
    char msg[600];
    const char *code = NULL;

    if (need(req, resp, CG_ROLE_DEVELOPER, "upload certificates") != 0)
        return;
    if (read_upload(req, resp, &u, "Upload.Certificate.Invalid", 1) != 0)
        goto done;
    if (req->customer == NULL && !sees_all(req)) {
        cg_admin_error(resp, 403, "Auth.NoCustomer",
                       "no customer is configured for this developer (CertGateAdminCustomer)");
        goto done;
    }
    if (upload_owner(cfg, st, req, &u, &owner, resp) != 0)
        goto done;
    int status, v = vet_upload(cfg, st, req, &u, owner, &info, &status, &code, msg, sizeof(msg),
                               resp);
    if (v != 0) {
        if (v > 0)
            cg_admin_error(resp, status, code, msg);
        goto done;
    }
    have_info = 1;
    free(u.customer);
    u.customer = owner;
    owner = NULL;

    char id[40], hex[CG_FP_HEX_LEN + 1], vf[24], vt[24], now_s[24];
    new_id(id);
    if (id[0] == '\0') {
        cg_admin_error(resp, 500, "Internal", "no randomness for an id");
        goto done;
    }
    cg_fp_to_hex(&info.fingerprint, hex);
    chain = fp_list(u.certs, 1);
    subjects = subjects_json(u.certs, 1);
    json_t *sa = json_array();
    for (size_t i = 0; i < info.n_sans; i++)
        json_array_append_new(sa, json_string(info.sans[i]));
    sans = json_dumps(sa, JSON_COMPACT);
    json_decref(sa);
    if (chain == NULL || subjects == NULL || sans == NULL) {
        cg_admin_error(resp, 500, "Internal", "out of memory");
        goto done;
    }
    snprintf(vf, sizeof(vf), "%lld", (long long)info.not_before);
    snprintf(vt, sizeof(vt), "%lld", (long long)info.not_after);
    snprintf(now_s, sizeof(now_s), "%lld", (long long)req->now);

    const char *rec[] = {
        "id", id, "app_id", u.app, "customer_id", u.customer ? u.customer : "",
        "status", "PENDING", "fingerprint", hex, "chain", chain,
        "valid_from", vf, "valid_to", vt, "activate_at", "", "retire_at", "",
        "common_name", info.common_name, "subject", info.subject, "issuer", info.issuer,
        "serial", info.serial, "organization", info.organization,
        "organizational_unit", info.organizational_unit, "country", info.country,
        "state", info.state, "locality", info.locality, "sans", sans,
        "chain_subjects", subjects, "created", now_s, "created_by", req->user,
        "updated", now_s, "updated_by", req->user, "status_reason", "", "version", "1",
    };
    const int nrec = (int)(sizeof(rec) / sizeof(rec[0]));
    event_t ev;
    ev_init(&ev, req, "cert.upload");
    ev_add(&ev, "cert_id", id);
    ev_add(&ev, "fingerprint", hex);
    ev_add(&ev, "app_id", u.app);
    ev_add(&ev, "customer_id", u.customer);
    ev_add(&ev, "old_status", "");
    ev_add(&ev, "new_status", "PENDING");
    ev_add(&ev, "reason", "");

    char k_fp[KEY_MAX], k_reg[KEY_MAX], k_app[KEY_MAX], k_all[KEY_MAX], k_ev[KEY_MAX],
        k_gen[KEY_MAX], k_schema[KEY_MAX], k_appinfo[KEY_MAX], chan[KEY_MAX], nrec_s[16];
    keyf(k_appinfo, st, "appinfo:%s", u.app);
    keyf(k_fp, st, "fp:%s", hex);
    keyf(k_reg, st, "reg:%s", id);
    keyf(k_app, st, "app:%s", u.app);
    keyf(k_all, st, "regs");
    keyf(k_ev, st, "events");
    keyf(k_gen, st, "gen");
    keyf(k_schema, st, "schema");
    keyf(chan, st, "invalidate");
    snprintf(nrec_s, sizeof(nrec_s), "%d", nrec);
    const char *keys[] = { k_fp, k_reg, k_app, k_all, k_ev, k_gen, k_schema, k_appinfo };
    const char *args[4 + 64 + 32];
    int na = 0;
    args[na++] = id;
    args[na++] = chan;
    args[na++] = u.customer;
    args[na++] = nrec_s;
    for (int i = 0; i < nrec; i++)
        args[na++] = rec[i];
    static const script_error_t upload_errors[] = {
        { "DUPLICATE", 409, "Certificate.Duplicate", "this certificate is already registered" },
        { "APPOWNER", 409, "App.CustomerMismatch", "the app's customer changed during the upload" },
        { NULL, 0, NULL, NULL }
    };
    if (run_write(cfg, st, UPLOAD_LUA, 8, keys, args, na, NELEM(args), &ev, upload_errors,
                  resp) != 0)
        goto done;

    json_t *recj = NULL;
    if (load_rec(cfg, st, id, &recj, resp) != 0) {
        if (resp->body == NULL)
            cg_admin_error(resp, 500, "Internal", "the new registration could not be read back");
        goto done;
    }
    set_etag(resp, recj);
    snprintf(resp->location, sizeof(resp->location), "certs/%s", id);
    send_json(resp, 201, view(cfg, recj, req->now));
    json_decref(recj);
done:
    if (have_info)
        cg_cert_info_free(&info);
    free(chain);
    free(subjects);
    free(sans);
    free(owner);
    upload_free(&u);
}

/* ------------------------------------------------------------ transitions */

/* KEYS: reg, events, gen. ARGV: from (list), to, If-Match condition, now, user, reason,
 * channel, event words. */
static const char TRANSITION_LUA[] = LUA_GUARD
    "local b = guard({{KEYS[1], 'hash'}, {KEYS[2], 'stream'}, {KEYS[3], 'int'}})\n"
    "if b then return bad(b) end\n"
    "if not intf(KEYS[1], 'version') then return bad(KEYS[1]) end\n"
    "local cur = redis.call('HMGET', KEYS[1], 'status', 'version', 'fingerprint')\n"
    "if not cur[1] then return redis.error_reply('NOTFOUND') end\n"
    "if not ifmatch(ARGV[3], cur[2]) then return redis.error_reply('PRECONDITION') end\n"
    "local ok = false\n"
    "for s in string.gmatch(ARGV[1], '[^,]+') do if s == cur[1] then ok = true end end\n"
    "if not ok then return redis.error_reply('CONFLICT ' .. cur[1]) end\n"
    "local v = tonumber(cur[2] or '1') + 1\n"
    "redis.call('HSET', KEYS[1], 'status', ARGV[2], 'version', v, 'updated', ARGV[4],\n"
    "           'updated_by', ARGV[5], 'status_reason', ARGV[6])\n"
    "local ev = {'old_status', cur[1], 'new_status', ARGV[2]}\n"
    "for i = 8, #ARGV do ev[#ev + 1] = ARGV[i] end\n"
    "redis.call('XADD', KEYS[2], '*', unpack(ev))\n"
    "redis.call('INCR', KEYS[3])\n"
    "local t = redis.call('TIME')\n"
    "redis.call('PUBLISH', ARGV[7], (cur[3] or '') .. ' ' .. (t[1] * 1000 + math.floor(t[2] / 1000)))\n"
    "return v\n";

static void do_transition(const cg_admin_cfg_t *cfg, cg_store_t *st, cg_admin_req_t *req,
                          cg_admin_resp_t *resp, const char *id, const char *action)
{
    const char *from, *to, *verb;
    int reason_required;
    json_t *rec = NULL, *doc = NULL;

    if (strcmp(action, "approve") == 0) {
        from = "PENDING"; to = "APPROVED"; verb = "approve"; reason_required = 0;
    } else if (strcmp(action, "decline") == 0) {
        from = "PENDING"; to = "DECLINED"; verb = "decline"; reason_required = 1;
    } else {
        from = "PENDING,APPROVED"; to = "INACTIVATED"; verb = "inactivate"; reason_required = 1;
    }
    if (need(req, resp, CG_ROLE_MANAGER, verb) != 0)
        return;
    const char *reason = "";
    if (req->body_len > 0) {
        json_error_t je;
        doc = json_loadb((const char *)req->body, req->body_len, JSON_REJECT_DUPLICATES, &je);
        json_t *jr = doc ? json_object_get(doc, "reason") : NULL;
        if (doc == NULL || !json_is_object(doc) || (jr != NULL && !json_is_string(jr))) {
            errorf(resp, 400, "Request.Invalid", "the body must be a JSON object like "
                   "{\"reason\":\"...\"}");
            goto done;
        }
        reason = jr ? json_string_value(jr) : "";
    }
    if (reason_required && reason[0] == '\0') {
        errorf(resp, 400, "Transition.ReasonRequired", "%s needs a reason: {\"reason\":\"...\"}",
               verb);
        goto done;
    }
    if (strlen(reason) > REASON_MAX) {
        errorf(resp, 400, "Request.Invalid", "the reason is longer than %d bytes", REASON_MAX);
        goto done;
    }
    char cond[256];
    if (if_match_cond(req->if_match, cond, sizeof(cond), resp) != 0)
        goto done;
    int lr = load_rec(cfg, st, id, &rec, resp);
    if (lr < 0)
        goto done;
    if (lr > 0 || !sees_customer(req, fs(rec, "customer_id"))) {
        /* Another customer's certificate is reported like a missing one. */
        cg_admin_error(resp, 404, "Certificate.NotFound", "no registration with that id");
        goto done;
    }
    if (strcmp(action, "approve") == 0) {
        /* Under IgnoreCase, records made before it was set may hold another spelling. */
        const char *by = fs(rec, "created_by");
        if (!cfg->self_approve && (cfg->user_ignore_case ? strcasecmp(by, req->user)
                                                          : strcmp(by, req->user)) == 0) {
            cg_admin_error(resp, 403, "Transition.FourEyes",
                           "the user who uploaded a certificate cannot approve it");
            goto done;
        }
        if (fi(rec, "valid_to", 0) < req->now) {
            cg_admin_error(resp, 409, "Transition.Expired", "an expired certificate cannot be "
                           "approved");
            goto done;
        }
    }
    char k_reg[KEY_MAX], k_ev[KEY_MAX], k_gen[KEY_MAX], chan[KEY_MAX], now_s[24], action_name[32];
    keyf(k_reg, st, "reg:%s", id);
    keyf(k_ev, st, "events");
    keyf(k_gen, st, "gen");
    keyf(chan, st, "invalidate");
    snprintf(now_s, sizeof(now_s), "%lld", (long long)req->now);
    snprintf(action_name, sizeof(action_name), "cert.%s", verb);
    event_t ev;
    ev_init(&ev, req, action_name);
    ev_add(&ev, "cert_id", id);
    ev_add(&ev, "fingerprint", fs(rec, "fingerprint"));
    ev_add(&ev, "app_id", fs(rec, "app_id"));
    ev_add(&ev, "customer_id", fs(rec, "customer_id"));
    ev_add(&ev, "reason", reason);
    const char *keys[] = { k_reg, k_ev, k_gen };
    const char *args[7 + 32] = { from, to, cond, now_s, req->user, reason, chan };
    int na = 7;
    char illegal[96];
    snprintf(illegal, sizeof(illegal), "cannot %s a certificate that is %%s", verb);
    const script_error_t transition_errors[] = {
        { "PRECONDITION", 412, "Precondition.Failed",
          "the record changed since your If-Match version; read it again" },
        { "CONFLICT", 409, "Transition.Illegal", illegal },
        { "NOTFOUND", 404, "Certificate.NotFound", "no registration with that id" },
        { NULL, 0, NULL, NULL }
    };
    if (run_write(cfg, st, TRANSITION_LUA, 3, keys, args, na, NELEM(args), &ev, transition_errors,
                  resp) != 0)
        goto done;
    json_decref(rec);
    rec = NULL;
    if (load_rec(cfg, st, id, &rec, resp) != 0)
        goto done;
    set_etag(resp, rec);
    send_json(resp, 200, view(cfg, rec, req->now));
done:
    json_decref(rec);
    json_decref(doc);
}

/* ------------------------------------------------------------ reading */

/* Why load_records failed: a cg_store_rc_t failure kind, or this. */
enum { LOAD_NOMEM = CG_STORE__COUNT };

/*
 * Every record of an index set, in one pipeline: whole (HGETALL, names NULL)
 * or only the fields named (HMGET), which is what scans over every
 * registration (metrics, expiry) read at 10^5 records. Records that are gone
 * are skipped. NULL on failure, with *why (LOAD_*) and err.
 */
static json_t *load_records(const cg_admin_cfg_t *cfg, cg_store_t *st, const char *setkey,
                            const char *const *names, int nnames, int *why, char *err,
                            size_t errlen)
{
    redisReply *r = NULL;
    cg_store_rc_t rc = cmd2(cfg, st, "SMEMBERS", setkey, &r, err, errlen);
    *why = (int)rc;
    if (rc != CG_STORE_OK)
        return NULL;
    if (r->type != REDIS_REPLY_ARRAY) {
        /* An error reply says what it is (NOPERM is not damage). */
        *why = r->type == REDIS_REPLY_ERROR ? (int)cg_store_reply_kind(r) : CG_STORE_CORRUPT;
        if (*why == CG_STORE_CORRUPT)
            snprintf(err, errlen, "an index set is damaged");
        else
            snprintf(err, errlen, "SMEMBERS: %.150s", r->str);
        cg_store_reply_free(r);
        return NULL;
    }
    size_t n = r->elements ? r->elements : 1, nk = 0;
    int argc = 2 + (names ? nnames : 0);
    /* "{prefix}reg:{id}", sized to fit: 10^5 keys of KEY_MAX would be 50 MB. */
    char (*keys)[CG_PREFIX_MAX + CG_ID_MAX + 8] = malloc(n * sizeof(*keys));
    const char **argv = malloc(n * (size_t)argc * sizeof(char *));
    size_t *lens = malloc(n * (size_t)argc * sizeof(size_t));
    int *argcs = malloc(n * sizeof(int));
    const char *const **argvs = malloc(n * sizeof(*argvs));
    const size_t **lensv = malloc(n * sizeof(*lensv));
    redisReply **out = calloc(n, sizeof(redisReply *));
    json_t *recs = json_array();
    if (!keys || !argv || !lens || !argcs || !argvs || !lensv || !out || !recs) {
        *why = LOAD_NOMEM;
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    for (size_t i = 0; i < r->elements; i++) {
        redisReply *e = r->element[i];
        if (e->type != REDIS_REPLY_STRING || !cg_id_valid(e->str, e->len))
            continue;
        snprintf(keys[nk], sizeof(keys[nk]), "%sreg:%.*s", cg_store_prefix(st), (int)e->len,
                 e->str);
        const char **a = &argv[nk * (size_t)argc];
        a[0] = names ? "HMGET" : "HGETALL";
        a[1] = keys[nk];
        for (int f = 2; f < argc; f++)
            a[f] = names[f - 2];
        for (int f = 0; f < argc; f++)
            lens[nk * (size_t)argc + (size_t)f] = strlen(a[f]);
        argcs[nk] = argc;
        argvs[nk] = a;
        lensv[nk] = &lens[nk * (size_t)argc];
        nk++;
    }
    if (nk > 0 && (rc = cg_store_pipeline(st, cfg->timeout_ms, nk, argcs, argvs, lensv, out, err,
                                          errlen)) != CG_STORE_OK) {
        *why = (int)rc;
        goto fail;
    }
    for (size_t i = 0; i < nk; i++) {
        /* An error reply is a failure of the whole read, not a record that is gone. */
        if ((rc = cg_store_reply_kind(out[i])) != CG_STORE_OK) {
            *why = (int)rc;
            snprintf(err, errlen, "%s: %.150s", names ? "HMGET" : "HGETALL", out[i]->str);
            for (size_t j = i; j < nk; j++)
                cg_store_reply_free(out[j]);
            goto fail;
        }
        redisReply *h = out[i];
        json_t *o = NULL;
        if (names == NULL) {
            o = h->type == REDIS_REPLY_ARRAY && h->elements ? hash_to_obj(h) : NULL;
        } else if (h->type == REDIS_REPLY_ARRAY && h->elements == (size_t)nnames) {
            o = json_object();
            for (int f = 0; o != NULL && f < nnames; f++)
                if (h->element[f]->type == REDIS_REPLY_STRING)
                    json_object_set_new(o, names[f], json_stringn(h->element[f]->str,
                                                                  h->element[f]->len));
            if (o != NULL && json_object_size(o) == 0) {   /* every field nil: gone */
                json_decref(o);
                o = NULL;
            }
        }
        if (o != NULL)
            json_array_append_new(recs, o);
        cg_store_reply_free(h);
    }
    goto done;
fail:
    json_decref(recs);
    recs = NULL;
done:
    cg_store_reply_free(r);
    free(keys); free(argv); free(lens); free(argcs); free(argvs); free(lensv); free(out);
    return recs;
}

/* Every whole record of an index set; NULL with resp set on failure. */
static json_t *load_set(const cg_admin_cfg_t *cfg, cg_store_t *st, const char *setkey,
                        cg_admin_resp_t *resp)
{
    char err[200];
    int why;
    json_t *recs = load_records(cfg, st, setkey, NULL, 0, &why, err, sizeof(err));
    if (recs == NULL && why == LOAD_NOMEM)
        cg_admin_error(resp, 500, "Internal", "out of memory");
    else if (recs == NULL)
        store_fail(resp, (cg_store_rc_t)why, err);
    return recs;
}

static int by_created_desc(const void *a, const void *b)
{
    json_t *x = *(json_t *const *)a, *y = *(json_t *const *)b;
    int64_t cx = fi(x, "created", 0), cy = fi(y, "created", 0);
    if (cx != cy)
        return cx < cy ? 1 : -1;
    return strcmp(fs(x, "id"), fs(y, "id"));
}

static const char *const CERT_CSV_COLS[] = {
    "id", "customerId", "appId", "commonName", "status", "validFrom", "validTo", "expireIn",
    "fingerprint", "activateAt", "retireAt", "serialNumber", "issuer"
};

static void do_list(const cg_admin_cfg_t *cfg, cg_store_t *st, cg_admin_req_t *req,
                    cg_admin_resp_t *resp)
{
    char key[KEY_MAX];
    char *app = qparam(req->query, "appId"), *cust = qparam(req->query, "customerId");
    char *status = qparam(req->query, "status"), *within = qparam(req->query, "expiringWithin");
    char *page_s = qparam(req->query, "page"), *size_s = qparam(req->query, "pageSize");
    json_t *recs = NULL;
    int64_t within_s = -1, page = 1, size = PAGE_SIZE_DEFAULT;

    if (need(req, resp, CG_ROLE_DEVELOPER | CG_ROLE_MANAGER | CG_ROLE_SUPPORT | CG_ROLE_AUDITOR,
             "read certificates") != 0)
        goto done;
    if (within != NULL) {
        size_t l = strlen(within);
        int64_t d;
        if (l < 5 || strcmp(within + l - 4, "days") != 0 || cg_parse_i64(within, l - 4, &d) != 0 ||
            d < 0 || d > 36500) {
            cg_admin_error(resp, 400, "Request.Invalid", "expiringWithin must look like 30days");
            goto done;
        }
        within_s = d * 86400;
    }
    if ((page_s && (cg_parse_i64(page_s, strlen(page_s), &page) != 0 || page < 1)) ||
        (size_s && (cg_parse_i64(size_s, strlen(size_s), &size) != 0 || size < 1 ||
                    size > PAGE_SIZE_MAX))) {
        errorf(resp, 400, "Request.Invalid", "page must be >= 1 and pageSize 1..%d", PAGE_SIZE_MAX);
        goto done;
    }
    if (app != NULL && !cg_app_valid(app, strlen(app))) {
        cg_admin_error(resp, 400, "Request.Invalid", "appId is not a valid app id");
        goto done;
    }
    if (app != NULL && !sees_all(req)) {
        json_t *a = NULL;
        if (app_for_user(cfg, st, req, app, &a, resp) != 0)
            goto done;
        json_decref(a);
    }
    if (app != NULL)
        keyf(key, st, "app:%s", app);
    else
        keyf(key, st, "regs");
    if ((recs = load_set(cfg, st, key, resp)) == NULL)
        goto done;

    size_t n = json_array_size(recs), m = 0;
    json_t **sel = calloc(n ? n : 1, sizeof(json_t *));
    if (sel == NULL) {
        cg_admin_error(resp, 500, "Internal", "out of memory");
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        json_t *rec = json_array_get(recs, i);
        char buf[64];
        if (!sees_customer(req, fs(rec, "customer_id")))
            continue;
        if (cust && strcmp(fs(rec, "customer_id"), cust) != 0)
            continue;
        if (status) {
            const char *d = derived_status(cfg, rec, req->now, buf, sizeof(buf));
            if (strcasecmp(d, status) != 0 &&
                !(strcasecmp(fs(rec, "status"), status) == 0 && strcmp(d, "EXPIRED") != 0))
                continue;
        }
        if (within_s >= 0) {
            int64_t to = fi(rec, "valid_to", 0);
            if (to < req->now || to - req->now > within_s)
                continue;
        }
        sel[m++] = rec;
    }
    qsort(sel, m, sizeof(json_t *), by_created_desc);
    json_t *items = json_array();
    size_t start = (size_t)((page - 1) * size);
    for (size_t i = start; i < m && i < start + (size_t)size; i++)
        json_array_append_new(items, view(cfg, sel[i], req->now));
    free(sel);
    attach_usage(cfg, st, items);
    if (wants_csv(req)) {
        send_csv(resp, items, CERT_CSV_COLS, sizeof(CERT_CSV_COLS) / sizeof(CERT_CSV_COLS[0]));
        json_decref(items);
    } else {
        send_json(resp, 200, json_pack("{s:o,s:I,s:I,s:I}", "items", items, "page",
                                       (json_int_t)page, "pageSize", (json_int_t)size, "total",
                                       (json_int_t)m));
    }
done:
    json_decref(recs);
    free(app); free(cust); free(status); free(within); free(page_s); free(size_s);
}

static void do_get(const cg_admin_cfg_t *cfg, cg_store_t *st, cg_admin_req_t *req,
                   cg_admin_resp_t *resp, const char *id)
{
    json_t *rec = NULL;
    if (need(req, resp, CG_ROLE_DEVELOPER | CG_ROLE_MANAGER | CG_ROLE_SUPPORT | CG_ROLE_AUDITOR,
             "read certificates") != 0)
        return;
    int lr = load_rec(cfg, st, id, &rec, resp);
    if (lr < 0)
        return;
    if (lr > 0 || !sees_customer(req, fs(rec, "customer_id"))) {
        /* Another customer's certificate is reported like a missing one. */
        cg_admin_error(resp, 404, "Certificate.NotFound", "no registration with that id");
        json_decref(rec);
        return;
    }
    set_etag(resp, rec);
    json_t *items = json_pack("[o]", view(cfg, rec, req->now));
    attach_usage(cfg, st, items);
    send_json(resp, 200, json_incref(json_array_get(items, 0)));
    json_decref(items);
    json_decref(rec);
}

/* ------------------------------------------------------------ rotations */

/* KEYS: new reg, old reg, rotation, rotations, events, gen, appinfo.
 * ARGV: app, new id, old id, activate, retire, now, user, rotation id, channel, event. */
static const char ROTATE_LUA[] = LUA_GUARD
    "local b = guard({{KEYS[1], 'hash'}, {KEYS[2], 'hash'}, {KEYS[3], 'hash'}, {KEYS[4], 'zset'},\n"
    "  {KEYS[5], 'stream'}, {KEYS[6], 'int'}, {KEYS[7], 'hash'}})\n"
    "if b then return bad(b) end\n"
    "for i = 1, 2 do if not intf(KEYS[i], 'version') then return bad(KEYS[i]) end end\n"
    "local new = redis.call('HMGET', KEYS[1], 'status', 'app_id', 'activate_at', 'fingerprint',\n"
    "  'customer_id')\n"
    "local old = redis.call('HMGET', KEYS[2], 'status', 'app_id', 'retire_at', 'fingerprint',\n"
    "  'customer_id')\n"
    "if not new[1] or not old[1] then return redis.error_reply('NOTFOUND') end\n"
    "if new[2] ~= ARGV[1] or old[2] ~= ARGV[1] then return redis.error_reply('NOTINAPP') end\n"
    "local owner = redis.call('HGET', KEYS[7], 'customer_id')\n"
    "if new[5] ~= owner or old[5] ~= owner then return redis.error_reply('NOTINAPP') end\n"
    "if new[1] ~= 'APPROVED' then return redis.error_reply('NEWNOTAPPROVED ' .. new[1]) end\n"
    "if old[1] ~= 'APPROVED' then return redis.error_reply('OLDNOTAPPROVED ' .. old[1]) end\n"
    "redis.call('HSET', KEYS[3], 'id', ARGV[8], 'app_id', ARGV[1], 'new_cert_id', ARGV[2],\n"
    "  'old_cert_id', ARGV[3], 'activate_at', ARGV[4], 'retire_old_at', ARGV[5],\n"
    "  'created', ARGV[6], 'created_by', ARGV[7], 'status', 'SCHEDULED',\n"
    "  'prev_new_activate_at', new[3] or '', 'prev_old_retire_at', old[3] or '')\n"
    "redis.call('ZADD', KEYS[4], ARGV[6], ARGV[8])\n"
    "redis.call('HSET', KEYS[1], 'activate_at', ARGV[4], 'updated', ARGV[6], 'updated_by', ARGV[7])\n"
    "bump(KEYS[1])\n"
    "redis.call('HSET', KEYS[2], 'retire_at', ARGV[5], 'updated', ARGV[6], 'updated_by', ARGV[7])\n"
    "bump(KEYS[2])\n"
    "local ev = {}\n"
    "for i = 10, #ARGV do ev[#ev + 1] = ARGV[i] end\n"
    "redis.call('XADD', KEYS[5], '*', unpack(ev))\n"
    "redis.call('INCR', KEYS[6])\n"
    "local t = redis.call('TIME')\n"
    "local ms = ' ' .. (t[1] * 1000 + math.floor(t[2] / 1000))\n"
    "redis.call('PUBLISH', ARGV[9], (new[4] or '') .. ms)\n"
    "redis.call('PUBLISH', ARGV[9], (old[4] or '') .. ms)\n"
    "return 'OK'\n";

/* KEYS: rotation, new reg, old reg, events, gen. ARGV: now, user, app, channel, event. */
static const char CANCEL_LUA[] = LUA_GUARD
    "local b = guard({{KEYS[1], 'hash'}, {KEYS[2], 'hash'}, {KEYS[3], 'hash'},\n"
    "  {KEYS[4], 'stream'}, {KEYS[5], 'int'}})\n"
    "if b then return bad(b) end\n"
    "for i = 2, 3 do if not intf(KEYS[i], 'version') then return bad(KEYS[i]) end end\n"
    "local rot = redis.call('HMGET', KEYS[1], 'status', 'activate_at', 'prev_new_activate_at',\n"
    "  'prev_old_retire_at', 'app_id')\n"
    "if not rot[1] or rot[5] ~= ARGV[3] then return redis.error_reply('NOTFOUND') end\n"
    "if rot[1] ~= 'SCHEDULED' then return redis.error_reply('CANCELLED') end\n"
    "if not isint(rot[2]) or not rot[3] or not rot[4] or (rot[3] ~= '' and not isint(rot[3]))\n"
    "   or (rot[4] ~= '' and not isint(rot[4])) then return bad(KEYS[1]) end\n"
    "if redis.call('EXISTS', KEYS[2]) == 0 or redis.call('EXISTS', KEYS[3]) == 0 then\n"
    "  return bad(KEYS[1]) end\n"
    "if tonumber(ARGV[1]) >= tonumber(rot[2]) then return redis.error_reply('STARTED') end\n"
    "redis.call('HSET', KEYS[1], 'status', 'CANCELLED', 'cancelled', ARGV[1], 'cancelled_by', ARGV[2])\n"
    "redis.call('HSET', KEYS[2], 'activate_at', rot[3], 'updated', ARGV[1], 'updated_by', ARGV[2])\n"
    "bump(KEYS[2])\n"
    "redis.call('HSET', KEYS[3], 'retire_at', rot[4], 'updated', ARGV[1], 'updated_by', ARGV[2])\n"
    "bump(KEYS[3])\n"
    "local ev = {}\n"
    "for i = 5, #ARGV do ev[#ev + 1] = ARGV[i] end\n"
    "redis.call('XADD', KEYS[4], '*', unpack(ev))\n"
    "redis.call('INCR', KEYS[5])\n"
    "local t = redis.call('TIME')\n"
    "local ms = ' ' .. (t[1] * 1000 + math.floor(t[2] / 1000))\n"
    "redis.call('PUBLISH', ARGV[4], (redis.call('HGET', KEYS[2], 'fingerprint') or '') .. ms)\n"
    "redis.call('PUBLISH', ARGV[4], (redis.call('HGET', KEYS[3], 'fingerprint') or '') .. ms)\n"
    "return 'OK'\n";

static json_t *rotation_view(json_t *rot, int64_t now)
{
    const char *st = fs(rot, "status");
    int64_t act = fi(rot, "activate_at", 0), ret = fi(rot, "retire_old_at", 0);
    const char *state = strcmp(st, "CANCELLED") == 0 ? "CANCELLED"
                        : now < act ? "SCHEDULED" : now < ret ? "OVERLAP" : "COMPLETED";
    return json_pack("{s:s,s:s,s:s,s:s,s:o,s:o,s:s,s:o,s:s}",
                     "id", fs(rot, "id"), "appId", fs(rot, "app_id"),
                     "newCertId", fs(rot, "new_cert_id"), "oldCertId", fs(rot, "old_cert_id"),
                     "activateAt", iso_or_null(act), "retireOldAt", iso_or_null(ret),
                     "state", state, "created", iso_or_null(fi(rot, "created", INT64_MIN)),
                     "createdBy", fs(rot, "created_by"));
}

static void do_rotation_create(const cg_admin_cfg_t *cfg, cg_store_t *st, cg_admin_req_t *req,
                               cg_admin_resp_t *resp, const char *app)
{
    json_t *doc = NULL, *recs = NULL;
    char err[200], key[KEY_MAX];
    int64_t act, ret;
    const char *old_id = NULL;

    json_t *appinfo = NULL;
    if (need(req, resp, CG_ROLE_SUPPORT, "schedule rotations") != 0)
        return;
    if (app_for_user(cfg, st, req, app, &appinfo, resp) != 0)
        return;
    json_error_t je;
    doc = req->body_len ? json_loadb((const char *)req->body, req->body_len,
                                     JSON_REJECT_DUPLICATES, &je) : NULL;
    json_t *jn = json_object_get(doc, "newCertId"), *ja = json_object_get(doc, "activateAt");
    json_t *jr = json_object_get(doc, "retireOldAt"), *jo = json_object_get(doc, "oldCertId");
    if (!json_is_object(doc) || !json_is_string(jn) || !json_is_string(ja) ||
        !json_is_string(jr) || (jo != NULL && !json_is_null(jo) && !json_is_string(jo))) {
        cg_admin_error(resp, 400, "Rotation.Invalid", "send {\"newCertId\", \"activateAt\", "
                       "\"retireOldAt\", \"oldCertId\"?} with times like 2025-06-25T08:59:38Z");
        goto done;
    }
    if (cg_time_parse_iso(json_string_value(ja), &act) != 0 ||
        cg_time_parse_iso(json_string_value(jr), &ret) != 0) {
        cg_admin_error(resp, 400, "Rotation.Invalid",
                       "activateAt and retireOldAt must be ISO 8601 UTC like 2025-06-25T08:59:38Z");
        goto done;
    }
    if (ret <= act || ret <= req->now) {
        cg_admin_error(resp, 400, "Rotation.Invalid", "retireOldAt must be after activateAt and "
                       "in the future, so the two certificates overlap");
        goto done;
    }
    const char *new_cert = json_string_value(jn);
    if (!cg_id_valid(new_cert, strlen(new_cert))) {
        cg_admin_error(resp, 404, "Certificate.NotFound", "newCertId: no registration with that id");
        goto done;
    }
    if (jo != NULL && json_is_string(jo)) {
        old_id = json_string_value(jo);
    } else {
        /* The app's one other approved certificate that is not already retiring. */
        keyf(key, st, "app:%s", app);
        if ((recs = load_set(cfg, st, key, resp)) == NULL)
            goto done;
        size_t i, found = 0;
        json_t *rec;
        json_array_foreach(recs, i, rec) {
            if (strcmp(fs(rec, "id"), new_cert) != 0 && strcmp(fs(rec, "status"), "APPROVED") == 0 &&
                fs(rec, "retire_at")[0] == '\0' && fi(rec, "valid_to", 0) >= req->now) {
                old_id = fs(rec, "id");
                found++;
            }
        }
        if (found != 1) {
            errorf(resp, 400, "Rotation.OldCertRequired", "the app has %zu approved certificates "
                   "that could be the old one; name it in oldCertId", found);
            goto done;
        }
    }
    if (!cg_id_valid(old_id, strlen(old_id)) || strcmp(old_id, new_cert) == 0) {
        cg_admin_error(resp, 400, "Rotation.Invalid", "oldCertId must name another registration");
        goto done;
    }
    char rid[40], k_new[KEY_MAX], k_old[KEY_MAX], k_rot[KEY_MAX], k_rots[KEY_MAX], k_ev[KEY_MAX],
        k_gen[KEY_MAX], k_app[KEY_MAX], chan[KEY_MAX], act_s[24], ret_s[24], now_s[24];
    keyf(k_app, st, "appinfo:%s", app);
    new_id(rid);
    if (rid[0] == '\0') {
        cg_admin_error(resp, 500, "Internal", "no randomness for an id");
        goto done;
    }
    keyf(k_new, st, "reg:%s", new_cert);
    keyf(k_old, st, "reg:%s", old_id);
    keyf(k_rot, st, "rotation:%s", rid);
    keyf(k_rots, st, "rotations:%s", app);
    keyf(k_ev, st, "events");
    keyf(k_gen, st, "gen");
    keyf(chan, st, "invalidate");
    snprintf(act_s, sizeof(act_s), "%lld", (long long)act);
    snprintf(ret_s, sizeof(ret_s), "%lld", (long long)ret);
    snprintf(now_s, sizeof(now_s), "%lld", (long long)req->now);
    event_t ev;
    ev_init(&ev, req, "rotation.schedule");
    ev_add(&ev, "rotation_id", rid);
    ev_add(&ev, "app_id", app);
    ev_add(&ev, "customer_id", fs(appinfo, "customer_id"));
    ev_add(&ev, "cert_id", new_cert);
    ev_add(&ev, "old_cert_id", old_id);
    ev_add(&ev, "reason", json_string_value(ja));
    const char *keys[] = { k_new, k_old, k_rot, k_rots, k_ev, k_gen, k_app };
    const char *args[9 + 32] = { app, new_cert, old_id, act_s, ret_s, now_s, req->user, rid, chan };
    int na = 9;
    static const script_error_t rotate_errors[] = {
        { "NOTFOUND", 404, "Certificate.NotFound", "newCertId or oldCertId does not exist" },
        { "NOTINAPP", 400, "Rotation.CertNotInApp",
          "both certificates must be registered to this app and its customer" },
        { "NEWNOTAPPROVED", 409, "Rotation.NewCertNotApproved",
          "the new certificate must be APPROVED before a cutover is scheduled" },
        { "OLDNOTAPPROVED", 409, "Rotation.OldCertNotApproved",
          "the old certificate is not APPROVED: there is nothing to rotate out" },
        { NULL, 0, NULL, NULL }
    };
    if (run_write(cfg, st, ROTATE_LUA, 7, keys, args, na, NELEM(args), &ev, rotate_errors,
                  resp) != 0)
        goto done;
    {
        redisReply *rr = NULL;
        if (cmd2(cfg, st, "HGETALL", k_rot, &rr, err, sizeof(err)) != CG_STORE_OK) {
            store_error(resp, err);
            goto done;
        }
        json_t *o = hash_to_obj(rr);
        cg_store_reply_free(rr);
        if (o == NULL) {
            cg_admin_error(resp, 500, "Store.Corrupt", "the rotation could not be read back");
            goto done;
        }
        snprintf(resp->location, sizeof(resp->location), "apps/%s/rotations/%s", app, rid);
        send_json(resp, 201, rotation_view(o, req->now));
        json_decref(o);
    }
done:
    json_decref(recs);
    json_decref(doc);
    json_decref(appinfo);
}

static json_t *load_rotations(const cg_admin_cfg_t *cfg, cg_store_t *st, const char *app,
                              int64_t now, cg_admin_resp_t *resp)
{
    char key[KEY_MAX], err[200];
    redisReply *r = NULL;
    keyf(key, st, "rotations:%s", app);
    const char *argv[4] = { "ZRANGE", key, "0", "-1" };
    size_t lens[4] = { 6, strlen(key), 1, 2 };
    cg_store_rc_t rc = outcome(cg_store_cmd(st, cfg->timeout_ms, 4, argv, lens, &r, err,
                                            sizeof(err)), &r, "ZRANGE", err, sizeof(err));
    if (rc != CG_STORE_OK) {
        store_fail(resp, rc, err);
        return NULL;
    }
    json_t *out = json_array();
    if (r->type == REDIS_REPLY_ARRAY && r->elements > 0) {
        char **keys = calloc(r->elements, sizeof(char *));
        redisReply **hs = calloc(r->elements, sizeof(redisReply *));
        size_t nk = 0;
        for (size_t i = 0; keys && hs && i < r->elements; i++) {
            redisReply *e = r->element[i];
            if (e->type == REDIS_REPLY_STRING && cg_id_valid(e->str, e->len) &&
                (keys[nk] = malloc(KEY_MAX)) != NULL) {
                keyf(keys[nk], st, "rotation:%.*s", (int)e->len, e->str);
                nk++;
            }
        }
        if (keys && hs && cg_store_hgetall_many(st, cfg->timeout_ms, (const char *const *)keys,
                                                nk, hs, err, sizeof(err)) == CG_STORE_OK) {
            for (size_t i = 0; i < nk; i++) {
                json_t *o = hash_to_obj(hs[i]);
                if (o != NULL && json_object_size(o) > 0)
                    json_array_append_new(out, rotation_view(o, now));
                json_decref(o);
                cg_store_reply_free(hs[i]);
            }
        } else {
            store_error(resp, err);
            json_decref(out);
            out = NULL;
        }
        for (size_t i = 0; keys && i < nk; i++)
            free(keys[i]);
        free(keys);
        free(hs);
    }
    cg_store_reply_free(r);
    return out;
}

static void do_rotation_cancel(const cg_admin_cfg_t *cfg, cg_store_t *st, cg_admin_req_t *req,
                               cg_admin_resp_t *resp, const char *app, const char *rid)
{
    char err[200], k_rot[KEY_MAX], k_new[KEY_MAX], k_old[KEY_MAX], k_ev[KEY_MAX], k_gen[KEY_MAX],
        chan[KEY_MAX], now_s[24];
    redisReply *r = NULL;
    json_t *appinfo = NULL;
    if (need(req, resp, CG_ROLE_SUPPORT, "cancel rotations") != 0)
        return;
    if (app_for_user(cfg, st, req, app, &appinfo, resp) != 0)
        return;
    char owner[CG_APP_MAX + 1];
    snprintf(owner, sizeof(owner), "%s", fs(appinfo, "customer_id"));
    json_decref(appinfo);
    if (!cg_id_valid(rid, strlen(rid))) {
        cg_admin_error(resp, 404, "Rotation.NotFound", "no rotation with that id");
        return;
    }
    keyf(k_rot, st, "rotation:%s", rid);
    const char *argv[4] = { "HMGET", k_rot, "new_cert_id", "old_cert_id" };
    size_t lens[4] = { 5, strlen(k_rot), 11, 11 };
    cg_store_rc_t rc = outcome(cg_store_cmd(st, cfg->timeout_ms, 4, argv, lens, &r, err,
                                            sizeof(err)), &r, "HMGET", err, sizeof(err));
    if (rc != CG_STORE_OK) {
        store_fail(resp, rc, err);
        return;
    }
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
        r->element[0]->type != REDIS_REPLY_STRING || r->element[1]->type != REDIS_REPLY_STRING) {
        cg_store_reply_free(r);
        cg_admin_error(resp, 404, "Rotation.NotFound", "no rotation with that id");
        return;
    }
    if (!cg_id_valid(r->element[0]->str, r->element[0]->len) ||
        !cg_id_valid(r->element[1]->str, r->element[1]->len)) {
        cg_store_reply_free(r);
        errorf(resp, 500, "Store.Corrupt", "the store key %.200s is damaged", k_rot);
        return;
    }
    keyf(k_new, st, "reg:%.*s", (int)r->element[0]->len, r->element[0]->str);
    keyf(k_old, st, "reg:%.*s", (int)r->element[1]->len, r->element[1]->str);
    cg_store_reply_free(r);
    keyf(k_ev, st, "events");
    keyf(k_gen, st, "gen");
    keyf(chan, st, "invalidate");
    snprintf(now_s, sizeof(now_s), "%lld", (long long)req->now);
    event_t ev;
    ev_init(&ev, req, "rotation.cancel");
    ev_add(&ev, "rotation_id", rid);
    ev_add(&ev, "app_id", app);
    ev_add(&ev, "customer_id", owner);
    const char *keys[] = { k_rot, k_new, k_old, k_ev, k_gen };
    const char *args[4 + 32] = { now_s, req->user, app, chan };
    int na = 4;
    static const script_error_t cancel_errors[] = {
        { "STARTED", 409, "Rotation.Started",
          "the rotation has started (activateAt has passed) and cannot be cancelled" },
        { "CANCELLED", 409, "Rotation.Cancelled", "the rotation is already cancelled" },
        { "NOTFOUND", 404, "Rotation.NotFound", "no rotation with that id for this app" },
        { NULL, 0, NULL, NULL }
    };
    if (run_write(cfg, st, CANCEL_LUA, 5, keys, args, na, NELEM(args), &ev, cancel_errors,
                  resp) != 0)
        return;
    resp->status = 204;
    set_body(resp, 204, "application/json", NULL);
}

/* ------------------------------------------------------------ customers and apps */

#define NAME_MAX_LEN 200

/* A customer or app record as the API shows it. */
static json_t *entity_view(json_t *rec, const char *idname)
{
    static const char *const strs[][2] = {
        { "customer_id", "customerId" }, { "name", "name" }, { "organization", "organization" },
        { "created_by", "createdBy" }, { "updated_by", "updatedBy" },
    };
    json_t *v = json_pack("{s:s}", idname, fs(rec, "id"));
    for (size_t i = 0; v != NULL && i < sizeof(strs) / sizeof(strs[0]); i++)
        if (json_object_get(rec, strs[i][0]) != NULL)
            json_object_set(v, strs[i][1], json_object_get(rec, strs[i][0]));
    json_object_set_new(v, "created", iso_or_null(fi(rec, "created", INT64_MIN)));
    json_object_set_new(v, "updated", iso_or_null(fi(rec, "updated", INT64_MIN)));
    json_object_set_new(v, "version", json_integer((json_int_t)fi(rec, "version", 1)));
    return v;
}

/* KEYS: customer, customers, events, gen. ARGV: id, now, user, n, n field words, event. */
static const char CUSTOMER_CREATE_LUA[] = LUA_GUARD
    "local b = guard({{KEYS[1], 'hash'}, {KEYS[2], 'set'}, {KEYS[3], 'stream'},\n"
    "  {KEYS[4], 'int'}})\n"
    "if b then return bad(b) end\n"
    "if redis.call('HEXISTS', KEYS[1], 'version') == 1 then\n"
    "  return redis.error_reply('EXISTS') end\n"
    "local n = tonumber(ARGV[4])\n"
    "local f = {'id', ARGV[1], 'created', ARGV[2], 'created_by', ARGV[3], 'updated', ARGV[2],\n"
    "  'updated_by', ARGV[3], 'version', '1'}\n"
    "for i = 5, 4 + n do f[#f + 1] = ARGV[i] end\n"
    "redis.call('HSET', KEYS[1], unpack(f))\n"
    "redis.call('SADD', KEYS[2], ARGV[1])\n"
    "local ev = {}\n"
    "for i = 5 + n, #ARGV do ev[#ev + 1] = ARGV[i] end\n"
    "redis.call('XADD', KEYS[3], '*', unpack(ev))\n"
    "redis.call('INCR', KEYS[4])\n"
    "return 'OK'\n";

/*
 * KEYS: appinfo, apps, customer, the app's registration set, events, gen.
 * ARGV: app, customer, now, user, channel, "{p}reg:", staff ("1": may adopt
 * and see other customers' ids), n, n field words, event.
 * The app's live (PENDING, APPROVED) registrations must be the customer's;
 * those with no customer (uploaded by staff before apps had owners) are
 * given it, by staff only: a manager confined to a customer may not take
 * them, nor learn whose the others are (OTHERS).
 */
static const char APP_CREATE_LUA[] = LUA_GUARD
    "local b = guard({{KEYS[1], 'hash'}, {KEYS[2], 'set'}, {KEYS[3], 'hash'}, {KEYS[4], 'set'},\n"
    "  {KEYS[5], 'stream'}, {KEYS[6], 'int'}})\n"
    "if b then return bad(b) end\n"
    "if redis.call('HEXISTS', KEYS[1], 'version') == 1 then\n"
    "  return redis.error_reply('EXISTS') end\n"
    "if redis.call('HEXISTS', KEYS[3], 'version') == 0 then\n"
    "  return redis.error_reply('NOCUSTOMER') end\n"
    "local regs, other, adopt = {}, {}, {}\n"
    "for _, id in ipairs(redis.call('SMEMBERS', KEYS[4])) do\n"
    "  local k = ARGV[6] .. id\n"
    "  local t = redis.call('TYPE', k)\n"
    "  if type(t) == 'table' then t = t.ok end\n"
    "  if t ~= 'none' then\n"
    "    if t ~= 'hash' or not intf(k, 'version') then return bad(k) end\n"
    "    local c = redis.call('HMGET', k, 'customer_id', 'fingerprint', 'status')\n"
    "    regs[#regs + 1] = c[2] or ''\n"
    "    if not c[1] or c[1] == '' then adopt[#adopt + 1] = k\n"
    "    elseif c[1] ~= ARGV[2] and (c[3] == 'PENDING' or c[3] == 'APPROVED') and\n"
    "           #other < 20 then other[#other + 1] = id end\n"
    "  end\n"
    "end\n"
    "if ARGV[7] ~= '1' and (#other > 0 or #adopt > 0) then\n"
    "  return redis.error_reply('OTHERS') end\n"
    "if #other > 0 then return redis.error_reply('CONFLICT ' .. table.concat(other, ',')) end\n"
    "local n = tonumber(ARGV[8])\n"
    "local f = {'id', ARGV[1], 'customer_id', ARGV[2], 'created', ARGV[3], 'created_by', ARGV[4],\n"
    "  'updated', ARGV[3], 'updated_by', ARGV[4], 'version', '1'}\n"
    "for i = 9, 8 + n do f[#f + 1] = ARGV[i] end\n"
    "redis.call('HSET', KEYS[1], unpack(f))\n"
    "redis.call('SADD', KEYS[2], ARGV[1])\n"
    "for _, k in ipairs(adopt) do\n"
    "  redis.call('HSET', k, 'customer_id', ARGV[2], 'updated', ARGV[3], 'updated_by', ARGV[4])\n"
    "  bump(k)\n"
    "end\n"
    "local ev = {}\n"
    "for i = 9 + n, #ARGV do ev[#ev + 1] = ARGV[i] end\n"
    "redis.call('XADD', KEYS[5], '*', unpack(ev))\n"
    "redis.call('INCR', KEYS[6])\n"
    "local t = redis.call('TIME')\n"
    "local ms = ' ' .. (t[1] * 1000 + math.floor(t[2] / 1000))\n"
    "for _, fp in ipairs(regs) do redis.call('PUBLISH', ARGV[5], fp .. ms) end\n"
    "return #adopt\n";

/* KEYS: record, events, gen. ARGV: If-Match condition, now, user, n, n field words, event. */
static const char ENTITY_UPDATE_LUA[] = LUA_GUARD
    "local b = guard({{KEYS[1], 'hash'}, {KEYS[2], 'stream'}, {KEYS[3], 'int'}})\n"
    "if b then return bad(b) end\n"
    "if not intf(KEYS[1], 'version') then return bad(KEYS[1]) end\n"
    "local ver = redis.call('HGET', KEYS[1], 'version')\n"
    "if not ver then return redis.error_reply('NOTFOUND') end\n"
    "if not ifmatch(ARGV[1], ver) then return redis.error_reply('PRECONDITION') end\n"
    "local v = tonumber(ver) + 1\n"
    "local n = tonumber(ARGV[4])\n"
    "local f = {'updated', ARGV[2], 'updated_by', ARGV[3], 'version', v}\n"
    "for i = 5, 4 + n do f[#f + 1] = ARGV[i] end\n"
    "redis.call('HSET', KEYS[1], unpack(f))\n"
    "local ev = {}\n"
    "for i = 5 + n, #ARGV do ev[#ev + 1] = ARGV[i] end\n"
    "redis.call('XADD', KEYS[2], '*', unpack(ev))\n"
    "redis.call('INCR', KEYS[3])\n"
    "return v\n";

/*
 * A JSON object body with only the keys named in `allowed`, each a string
 * (or null) of at most NAME_MAX_LEN bytes. NULL with resp set on a bad body.
 */
static json_t *entity_body(const cg_admin_req_t *req, const char *const *allowed,
                           cg_admin_resp_t *resp)
{
    json_error_t je;
    json_t *doc = req->body_len ? json_loadb((const char *)req->body, req->body_len,
                                             JSON_REJECT_DUPLICATES, &je) : NULL;
    const char *k;
    json_t *v;
    if (!json_is_object(doc)) {
        json_decref(doc);
        cg_admin_error(resp, 400, "Request.Invalid", "the body must be a JSON object");
        return NULL;
    }
    json_object_foreach(doc, k, v) {
        int known = 0;
        for (size_t i = 0; allowed[i] != NULL; i++)
            known |= strcmp(allowed[i], k) == 0;
        if (!known || (!json_is_string(v) && !json_is_null(v)) ||
            (json_is_string(v) && json_string_length(v) > NAME_MAX_LEN) ||
            (json_is_string(v) && strlen(json_string_value(v)) != json_string_length(v))) {
            errorf(resp, 400, "Request.Invalid", "field '%.40s' is unknown, not a string, or "
                   "longer than %d bytes", k, NAME_MAX_LEN);
            json_decref(doc);
            return NULL;
        }
    }
    return doc;
}

static const char *body_str(json_t *doc, const char *k)
{
    return json_string_value(json_object_get(doc, k));
}

/* Staff-only writes: a manager with no customer. */
static int need_staff_manager(const cg_admin_req_t *req, cg_admin_resp_t *resp, const char *what)
{
    if (need(req, resp, CG_ROLE_MANAGER, what) != 0)
        return -1;
    if (req->customer != NULL) {
        errorf(resp, 403, "Auth.Forbidden", "only managers without a customer may %s", what);
        return -1;
    }
    return 0;
}

/* Read back a record just written and answer with it. */
static void send_entity(const cg_admin_cfg_t *cfg, cg_store_t *st, const char *kind,
                        const char *id, const char *idname, int status, const char *location,
                        cg_admin_resp_t *resp)
{
    json_t *rec = NULL;
    if (load_entity(cfg, st, kind, id, &rec, resp) != 0) {
        if (resp->body == NULL)
            cg_admin_error(resp, 500, "Internal", "the record could not be read back");
        return;
    }
    set_etag(resp, rec);
    if (location != NULL)
        snprintf(resp->location, sizeof(resp->location), "%s", location);
    send_json(resp, status, entity_view(rec, idname));
    json_decref(rec);
}

static void do_customer_create(const cg_admin_cfg_t *cfg, cg_store_t *st, cg_admin_req_t *req,
                               cg_admin_resp_t *resp)
{
    static const char *const allowed[] = { "customerId", "name", "organization", NULL };
    if (need_staff_manager(req, resp, "register customers") != 0)
        return;
    json_t *doc = entity_body(req, allowed, resp);
    if (doc == NULL)
        return;
    const char *id = body_str(doc, "customerId");
    if (id == NULL || !cg_app_valid(id, strlen(id))) {
        cg_admin_error(resp, 400, "Request.Invalid", "customerId is required: 1-128 printable "
                       "ASCII characters without spaces or * ? [ ] : { } \\");
        json_decref(doc);
        return;
    }
    const char *fields[4];
    int nf = 0;
    event_t ev;
    ev_init(&ev, req, "customer.create");
    ev_add(&ev, "customer_id", id);
    for (int i = 1; i < 3; i++) {
        const char *v = body_str(doc, allowed[i]);
        if (v != NULL) {
            fields[nf++] = allowed[i];
            fields[nf++] = v;
            ev_add(&ev, allowed[i], v);
        }
    }
    char k_c[KEY_MAX], k_cs[KEY_MAX], k_ev[KEY_MAX], k_gen[KEY_MAX], now_s[24], nf_s[16];
    keyf(k_c, st, "customer:%s", id);
    keyf(k_cs, st, "customers");
    keyf(k_ev, st, "events");
    keyf(k_gen, st, "gen");
    snprintf(now_s, sizeof(now_s), "%lld", (long long)req->now);
    snprintf(nf_s, sizeof(nf_s), "%d", nf);
    const char *keys[] = { k_c, k_cs, k_ev, k_gen };
    const char *args[4 + 4 + 32] = { id, now_s, req->user, nf_s };
    int na = 4;
    for (int i = 0; i < nf; i++)
        args[na++] = fields[i];
    static const script_error_t errors[] = {
        { "EXISTS", 409, "Customer.Exists", "a customer with that id is already registered" },
        { NULL, 0, NULL, NULL }
    };
    if (run_write(cfg, st, CUSTOMER_CREATE_LUA, 4, keys, args, na, NELEM(args), &ev, errors,
                  resp) == 0) {
        char loc[200];
        snprintf(loc, sizeof(loc), "customers/%s", id);
        send_entity(cfg, st, "customer", id, "customerId", 201, loc, resp);
    }
    json_decref(doc);
}

static void do_app_create(const cg_admin_cfg_t *cfg, cg_store_t *st, cg_admin_req_t *req,
                          cg_admin_resp_t *resp)
{
    static const char *const allowed[] = { "appId", "customerId", "name", NULL };
    if (need(req, resp, CG_ROLE_MANAGER, "register apps") != 0)
        return;
    json_t *doc = entity_body(req, allowed, resp);
    if (doc == NULL)
        return;
    const char *app = body_str(doc, "appId"), *cust = body_str(doc, "customerId");
    const char *name = body_str(doc, "name");
    if (cust == NULL)
        cust = req->customer;
    if (app == NULL || !cg_app_valid(app, strlen(app)) || cust == NULL ||
        !cg_app_valid(cust, strlen(cust))) {
        cg_admin_error(resp, 400, "Request.Invalid", "appId and customerId are required: 1-128 "
                       "printable ASCII characters without spaces or * ? [ ] : { } \\");
        json_decref(doc);
        return;
    }
    if (!sees_customer(req, cust)) {
        cg_admin_error(resp, 403, "Auth.CustomerMismatch",
                       "managers with a customer register apps for that customer only");
        json_decref(doc);
        return;
    }
    event_t ev;
    ev_init(&ev, req, "app.create");
    ev_add(&ev, "app_id", app);
    ev_add(&ev, "customer_id", cust);
    if (name != NULL)
        ev_add(&ev, "name", name);
    char k_a[KEY_MAX], k_as[KEY_MAX], k_c[KEY_MAX], k_regs[KEY_MAX], k_ev[KEY_MAX],
        k_gen[KEY_MAX], chan[KEY_MAX], regp[KEY_MAX], now_s[24];
    keyf(k_a, st, "appinfo:%s", app);
    keyf(k_as, st, "apps");
    keyf(k_c, st, "customer:%s", cust);
    keyf(k_regs, st, "app:%s", app);
    keyf(k_ev, st, "events");
    keyf(k_gen, st, "gen");
    keyf(chan, st, "invalidate");
    keyf(regp, st, "reg:");
    snprintf(now_s, sizeof(now_s), "%lld", (long long)req->now);
    const char *keys[] = { k_a, k_as, k_c, k_regs, k_ev, k_gen };
    const char *args[10 + 32] = { app, cust, now_s, req->user, chan, regp,
                                  sees_all(req) ? "1" : "0", name ? "2" : "0", "name", name };
    int na = name ? 10 : 8;
    static const script_error_t errors[] = {
        { "EXISTS", 409, "App.Exists", "an app with that id is already registered" },
        { "NOCUSTOMER", 404, "Customer.NotFound",
          "no such customer; register it first with POST /customers" },
        { "CONFLICT", 409, "App.Conflict", "registrations %s of this app belong to other "
          "customers; decline or inactivate them first" },
        { "OTHERS", 409, "App.Conflict", "the app id already has registrations of another "
          "customer or of none; a manager without a customer must register it" },
        { NULL, 0, NULL, NULL }
    };
    if (run_write(cfg, st, APP_CREATE_LUA, 6, keys, args, na, NELEM(args), &ev, errors,
                  resp) == 0) {
        char loc[200];
        snprintf(loc, sizeof(loc), "apps/%s", app);
        send_entity(cfg, st, "appinfo", app, "appId", 201, loc, resp);
    }
    json_decref(doc);
}

/* PATCH a customer (name, organization) or an app (name). */
static void do_entity_update(const cg_admin_cfg_t *cfg, cg_store_t *st, cg_admin_req_t *req,
                             cg_admin_resp_t *resp, const char *kind, const char *id)
{
    static const char *const customer_fields[] = { "name", "organization", NULL };
    static const char *const app_fields[] = { "name", "customerId", "appId", NULL };
    int is_app = strcmp(kind, "appinfo") == 0;
    const char *idname = is_app ? "appId" : "customerId";
    json_t *doc = NULL, *rec = NULL;
    char cond[256];
    if (is_app ? need(req, resp, CG_ROLE_MANAGER, "change apps")
               : need_staff_manager(req, resp, "change customers"))
        return;
    if ((doc = entity_body(req, is_app ? app_fields : customer_fields, resp)) == NULL)
        return;
    if (if_match_cond(req->if_match, cond, sizeof(cond), resp) != 0)
        goto done;
    if (is_app) {
        if (app_for_user(cfg, st, req, id, &rec, resp) != 0)
            goto done;
    } else {
        int lr = load_entity(cfg, st, kind, id, &rec, resp);
        if (lr < 0)
            goto done;
        if (lr > 0 || !sees_customer(req, id)) {
            cg_admin_error(resp, 404, "Customer.NotFound", "no customer with that id");
            goto done;
        }
    }
    /* An app stays with its customer: the gate's answers hang on it. */
    const char *c = body_str(doc, "customerId"), *a = body_str(doc, "appId");
    if ((c != NULL && strcmp(c, fs(rec, "customer_id")) != 0) || (a != NULL && strcmp(a, id))) {
        cg_admin_error(resp, 409, "App.OwnerFixed", "an app keeps its id and its customer; "
                       "register a new app for another customer");
        goto done;
    }
    const char *fields[4];
    int nf = 0;
    event_t ev;
    ev_init(&ev, req, is_app ? "app.update" : "customer.update");
    if (is_app)
        ev_add(&ev, "app_id", id);
    ev_add(&ev, "customer_id", is_app ? fs(rec, "customer_id") : id);
    for (int i = 0; i < 2; i++) {
        const char *f = (is_app ? app_fields : customer_fields)[i];
        const char *v = body_str(doc, f);
        if (v != NULL && strcmp(f, "customerId") != 0) {
            fields[nf++] = f;
            fields[nf++] = v;
            ev_add(&ev, f, v);
        }
    }
    if (nf == 0) {
        cg_admin_error(resp, 400, "Request.Invalid", is_app ? "send {\"name\": \"...\"}"
                       : "send {\"name\": \"...\"} and/or {\"organization\": \"...\"}");
        goto done;
    }
    char k_r[KEY_MAX], k_ev[KEY_MAX], k_gen[KEY_MAX], now_s[24], nf_s[16];
    keyf(k_r, st, "%s:%s", kind, id);
    keyf(k_ev, st, "events");
    keyf(k_gen, st, "gen");
    snprintf(now_s, sizeof(now_s), "%lld", (long long)req->now);
    snprintf(nf_s, sizeof(nf_s), "%d", nf);
    const char *keys[] = { k_r, k_ev, k_gen };
    const char *args[4 + 4 + 32] = { cond, now_s, req->user, nf_s };
    int na = 4;
    for (int i = 0; i < nf; i++)
        args[na++] = fields[i];
    static const script_error_t errors[] = {
        { "PRECONDITION", 412, "Precondition.Failed",
          "the record changed since your If-Match version; read it again" },
        { "NOTFOUND", 404, "Route.NotFound", "the record is gone" },
        { NULL, 0, NULL, NULL }
    };
    if (run_write(cfg, st, ENTITY_UPDATE_LUA, 3, keys, args, na, NELEM(args), &ev, errors,
                  resp) == 0)
        send_entity(cfg, st, kind, id, idname, 200, NULL, resp);
done:
    json_decref(rec);
    json_decref(doc);
}

static int by_id(const void *a, const void *b)
{
    return strcmp(fs(*(json_t *const *)a, "id"), fs(*(json_t *const *)b, "id"));
}

/* GET /customers or GET /apps: the records the user may see, by id. */
static void do_entity_list(const cg_admin_cfg_t *cfg, cg_store_t *st, cg_admin_req_t *req,
                           cg_admin_resp_t *resp, const char *kind)
{
    int is_app = strcmp(kind, "appinfo") == 0;
    char setkey[KEY_MAX], err[200];
    redisReply *r = NULL;
    char *cust = qparam(req->query, "customerId");
    json_t *items = json_array();
    if (need(req, resp, CG_ROLE_DEVELOPER | CG_ROLE_MANAGER | CG_ROLE_SUPPORT | CG_ROLE_AUDITOR,
             is_app ? "read apps" : "read customers") != 0)
        goto done;
    keyf(setkey, st, is_app ? "apps" : "customers");
    cg_store_rc_t rc = outcome(cmd2(cfg, st, "SMEMBERS", setkey, &r, err, sizeof(err)), &r,
                               "SMEMBERS", err, sizeof(err));
    if (rc != CG_STORE_OK) {
        store_fail(resp, rc, err);
        goto done;
    }
    if (r->type != REDIS_REPLY_ARRAY) {
        errorf(resp, 500, "Store.Corrupt", "the store key %.200s is damaged", setkey);
        goto done;
    }
    size_t n = r->elements, nk = 0;
    char **keys = calloc(n ? n : 1, sizeof(char *));
    redisReply **hs = calloc(n ? n : 1, sizeof(redisReply *));
    json_t **sel = calloc(n ? n : 1, sizeof(json_t *));
    size_t m = 0;
    int ok = keys && hs && sel;
    for (size_t i = 0; ok && i < n; i++) {
        redisReply *e = r->element[i];
        if (e->type != REDIS_REPLY_STRING || !cg_app_valid(e->str, e->len))
            continue;
        if ((keys[nk] = malloc(KEY_MAX)) == NULL) {
            ok = 0;
            break;
        }
        keyf(keys[nk], st, "%s:%.*s", kind, (int)e->len, e->str);
        nk++;
    }
    if (!ok) {
        cg_admin_error(resp, 500, "Internal", "out of memory");
    } else if (nk > 0 && cg_store_hgetall_many(st, cfg->timeout_ms, (const char *const *)keys,
                                               nk, hs, err, sizeof(err)) != CG_STORE_OK) {
        store_error(resp, err);
        ok = 0;
    } else {
        for (size_t i = 0; i < nk; i++) {
            cg_store_rc_t k = outcome(CG_STORE_OK, &hs[i], "HGETALL", err, sizeof(err));
            if (k != CG_STORE_OK && ok) {
                store_fail(resp, k, err);
                ok = 0;
            }
            json_t *o = ok ? hash_to_obj(hs[i]) : NULL;
            const char *owner = o ? (is_app ? fs(o, "customer_id") : fs(o, "id")) : "";
            if (o != NULL && json_object_get(o, "version") != NULL &&
                sees_customer(req, owner) && (cust == NULL || strcmp(cust, owner) == 0))
                sel[m++] = o;
            else
                json_decref(o);
            cg_store_reply_free(hs[i]);
        }
        qsort(sel, m, sizeof(json_t *), by_id);
        for (size_t i = 0; i < m; i++) {
            json_array_append_new(items, entity_view(sel[i], is_app ? "appId" : "customerId"));
            json_decref(sel[i]);
        }
    }
    for (size_t i = 0; keys && i < nk; i++)
        free(keys[i]);
    free(keys);
    free(hs);
    free(sel);
    if (ok) {
        send_json(resp, 200, json_pack("{s:O}", "items", items));
    }
done:
    cg_store_reply_free(r);
    json_decref(items);
    free(cust);
}

/* GET /customers/{id} */
static void do_customer_get(const cg_admin_cfg_t *cfg, cg_store_t *st, cg_admin_req_t *req,
                            cg_admin_resp_t *resp, const char *id)
{
    json_t *rec = NULL;
    if (need(req, resp, CG_ROLE_DEVELOPER | CG_ROLE_MANAGER | CG_ROLE_SUPPORT | CG_ROLE_AUDITOR,
             "read customers") != 0)
        return;
    int lr = load_entity(cfg, st, "customer", id, &rec, resp);
    if (lr < 0)
        return;
    if (lr > 0 || !sees_customer(req, id)) {
        cg_admin_error(resp, 404, "Customer.NotFound", "no customer with that id");
    } else {
        set_etag(resp, rec);
        send_json(resp, 200, entity_view(rec, "customerId"));
    }
    json_decref(rec);
}

static void do_app(const cg_admin_cfg_t *cfg, cg_store_t *st, cg_admin_req_t *req,
                   cg_admin_resp_t *resp, const char *app)
{
    char key[KEY_MAX];
    json_t *info = NULL;
    if (need(req, resp, CG_ROLE_DEVELOPER | CG_ROLE_MANAGER | CG_ROLE_SUPPORT | CG_ROLE_AUDITOR,
             "read apps") != 0)
        return;
    /* Staff also see an app nobody registered yet (records from before apps
     * had owners: docs/admin-api.md, migration). */
    if (sees_all(req)) {
        if (load_entity(cfg, st, "appinfo", app, &info, resp) < 0)
            return;
    } else if (app_for_user(cfg, st, req, app, &info, resp) != 0) {
        return;
    }
    keyf(key, st, "app:%s", app);
    json_t *recs = load_set(cfg, st, key, resp);
    if (recs == NULL) {
        json_decref(info);
        return;
    }
    json_t *rots = load_rotations(cfg, st, app, req->now, resp);
    if (rots == NULL) {
        json_decref(recs);
        json_decref(info);
        return;
    }
    size_t n = json_array_size(recs), m = 0;
    json_t **sel = calloc(n ? n : 1, sizeof(json_t *));
    for (size_t i = 0; sel && i < n; i++) {
        json_t *rec = json_array_get(recs, i);
        if (sees_customer(req, fs(rec, "customer_id")))
            sel[m++] = rec;
    }
    if (sel == NULL || (info == NULL && m == 0)) {
        free(sel);
        json_decref(recs);
        json_decref(rots);
        json_decref(info);
        if (sel == NULL)
            cg_admin_error(resp, 500, "Internal", "out of memory");
        else
            cg_admin_error(resp, 404, "App.NotFound", "no app with that id");
        return;
    }
    qsort(sel, m, sizeof(json_t *), by_created_desc);
    json_t *items = json_array();
    for (size_t i = 0; i < m; i++) {
        json_t *v = view(cfg, sel[i], req->now);
        /* The gate's answer for this certificate right now, windows included. */
        cg_reg_t reg;
        cg_field_t fields[64];
        size_t nf = 0;
        const char *k;
        json_t *val;
        json_object_foreach(sel[i], k, val) {
            if (nf < 64) {
                fields[nf].name = k;
                fields[nf].name_len = strlen(k);
                fields[nf].value = json_string_value(val);
                fields[nf].value_len = json_string_length(val);
                nf++;
            }
        }
        char derr[100];
        if (cg_reg_decode(fields, nf, &reg, derr, sizeof(derr)) == 0) {
            /* The owner as the gate reads it, so the answer is the gate's. */
            reg.app_owner_state = info ? CG_OWNER_READ : CG_OWNER_NONE;
            snprintf(reg.app_owner, sizeof(reg.app_owner), "%s", info ? fs(info, "customer_id")
                                                                       : "");
            cg_input_t in = { .leaf = &reg.fingerprint, .chain = reg.chain,
                              .chain_len = reg.chain_len, .chain_known = 1, .now = req->now,
                              .reg = &reg };
            json_object_set_new(v, "gate", json_string(cg_reason_name(cg_decide(&in))));
        }
        json_array_append_new(items, v);
    }
    free(sel);
    json_decref(recs);
    attach_usage(cfg, st, items);
    json_t *out = info ? entity_view(info, "appId") : json_pack("{s:s,s:n}", "appId", app,
                                                                "customerId");
    if (info != NULL)
        set_etag(resp, info);
    json_decref(info);
    json_object_set_new(out, "certificates", items);
    json_object_set_new(out, "rotations", rots);
    send_json(resp, 200, out);
}

/* ------------------------------------------------------------ check */

static void do_check(const cg_admin_cfg_t *cfg, cg_store_t *st, cg_admin_req_t *req,
                     cg_admin_resp_t *resp)
{
    upload_t u;
    char err[200], msg[600];
    const char *code = NULL;
    char *owner = NULL;
    if (need(req, resp, CG_ROLE_DEVELOPER | CG_ROLE_MANAGER | CG_ROLE_SUPPORT | CG_ROLE_AUDITOR,
             "check certificates") != 0)
        return;
    if (read_upload(req, resp, &u, "Request.Invalid", 0) != 0) {
        upload_free(&u);
        return;
    }
    /* The policy is the upload's, for the customer the upload would be for. */
    if (u.app != NULL && u.app[0] != '\0') {
        if (upload_owner(cfg, st, req, &u, &owner, resp) != 0) {
            upload_free(&u);
            return;
        }
    } else if (req->customer != NULL) {
        owner = strdup(req->customer);
    } else if (sees_all(req) && u.customer != NULL && u.customer[0] != '\0') {
        owner = strdup(u.customer);
    }
    cg_cert_info_t vinfo;
    int vstatus, pol = vet_upload(cfg, st, req, &u, owner, &vinfo, &vstatus, &code, msg,
                                  sizeof(msg), resp);
    free(owner);
    if (pol < 0) {
        upload_free(&u);
        return;
    }
    if (pol == 0)
        cg_cert_info_free(&vinfo);
    int n = sk_X509_num(u.certs);
    json_t *chain = json_array();
    cg_fp_t fps[CG_MAX_CHAIN + 1];
    size_t nfp = 0;
    for (int i = 0; i < n; i++) {
        X509 *x = sk_X509_value(u.certs, i);
        cg_cert_info_t info;
        int ok_info = cg_cert_info(x, &info, err, sizeof(err)) == 0;
        int v;
        if (i + 1 < n)
            v = cg_cert_link(x, sk_X509_value(u.certs, i + 1));
        else
            v = cg_cert_link(x, x) == X509_V_OK ? X509_V_OK
                                                : X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT;
        if (v == X509_V_OK && ok_info) {
            if (info.not_after < req->now)
                v = X509_V_ERR_CERT_HAS_EXPIRED;
            else if (info.not_before > req->now)
                v = X509_V_ERR_CERT_NOT_YET_VALID;
        }
        char hex[CG_FP_HEX_LEN + 1] = "";
        cg_fp_t fp;
        if (cg_fp_x509(x, &fp) == 0) {
            cg_fp_to_hex(&fp, hex);
            if (i > 0 && nfp < CG_MAX_CHAIN + 1)
                fps[nfp++] = fp;
        }
        json_array_append_new(chain, json_pack("{s:i,s:s,s:s?,s:i,s:s}", "index", i,
                                               "fingerprint", hex, "subject",
                                               ok_info ? info.subject : NULL, "verifyCode", v,
                                               "verify", X509_verify_cert_error_string(v)));
        if (ok_info)
            cg_cert_info_free(&info);
    }
    cg_fp_t leaf;
    cg_reg_t reg;
    const cg_reg_t *regp = NULL;
    cg_reason_t reason;
    if (cg_fp_x509(sk_X509_value(u.certs, 0), &leaf) != 0) {
        cg_admin_error(resp, 500, "Internal", "cannot hash the certificate");
        json_decref(chain);
        upload_free(&u);
        return;
    }
    cg_store_rc_t rc = cg_store_lookup(st, &leaf, &reg, err, sizeof(err));
    /* Another customer's registration is none of this user's business: for
     * them the certificate is not registered. */
    if (rc == CG_STORE_OK && sees_customer(req, reg.customer_id))
        regp = &reg;
    else if (rc == CG_STORE_OK)
        rc = CG_STORE_NOTFOUND;
    if (cg_store_failed(rc)) {
        reason = CG_R_STORE_UNAVAILABLE;
    } else {
        cg_input_t in = { .leaf = &leaf, .chain = fps, .chain_len = nfp, .chain_known = 1,
                          .app = (u.app && *u.app) ? u.app : NULL, .now = req->now, .reg = regp };
        reason = cg_decide(&in);
    }
    char hex[CG_FP_HEX_LEN + 1];
    cg_fp_to_hex(&leaf, hex);
    int show_reg = regp != NULL;
    send_json(resp, 200, json_pack("{s:s,s:s,s:i,s:s,s:s?,s:o,s:{s:b,s:s?,s:s?}}",
                                   "decision", reason == CG_ALLOW ? "allow" : "deny",
                                   "reason", cg_reason_name(reason),
                                   "httpStatus", cg_reason_http_status(reason),
                                   "fingerprint", hex,
                                   "registrationId", show_reg ? regp->id : NULL,
                                   "chain", chain,
                                   "policy", "ok", pol == 0, "code", pol ? code : NULL,
                                   "message", pol ? msg : NULL));
    upload_free(&u);
}

/* ------------------------------------------------------------ events */

#define EVENTS_BATCH 1000
#define EVENTS_SCAN_MAX 50000       /* entries read by one answer at most */
#define EVENTS_LIMIT_DEFAULT 1000

/* Every stream field, in the API's spelling and the CSV's column order. */
static const char *const EVENT_FIELDS[][2] = {
    { "time", "time" }, { "user", "user" }, { "ip", "ip" }, { "action", "action" },
    { "cert_id", "certId" }, { "old_cert_id", "oldCertId" }, { "rotation_id", "rotationId" },
    { "fingerprint", "fingerprint" }, { "app_id", "appId" }, { "customer_id", "customerId" },
    { "old_status", "oldStatus" }, { "new_status", "newStatus" }, { "reason", "reason" },
    { "days_left", "daysLeft" }, { "threshold", "threshold" }, { "name", "name" },
    { "organization", "organization" },
};
#define N_EVENT_FIELDS (sizeof(EVENT_FIELDS) / sizeof(EVENT_FIELDS[0]))

/* A stream entry id ("1750841401000-0") or a plain millisecond time. */
static int stream_id_valid(const char *s)
{
    size_t n = strspn(s, "0123456789");
    if (n == 0 || n > 20)
        return 0;
    if (s[n] == '\0')
        return 1;
    size_t m = strspn(s + n + 1, "0123456789");
    return s[n] == '-' && m > 0 && m <= 20 && s[n + 1 + m] == '\0';
}

/* The API's view of one stream entry: every field, known or not, camelCased. */
static json_t *event_view(const char *id, json_t *h)
{
    json_t *o = json_pack("{s:s}", "id", id);
    const char *k;
    json_t *v;
    json_object_foreach(h, k, v) {
        char name[64];
        size_t j = 0;
        for (size_t i = 0; k[i] && j + 1 < sizeof(name); i++) {
            if (k[i] == '_' && k[i + 1] != '\0')
                name[j++] = (char)toupper((unsigned char)k[++i]);
            else
                name[j++] = k[i];
        }
        name[j] = '\0';
        json_object_set(o, name, v);
    }
    return o;
}

/*
 * GET /events: filters are applied while the stream is read, in batches from
 * the cursor on, so a match is never lost behind unrelated events. An answer
 * stops at `limit` matches or after EVENTS_SCAN_MAX entries read; then
 * `next` (and the CertGate-Next-Cursor header) says where the next page
 * starts. `next` null means the range was read to its end.
 */
static void do_events(const cg_admin_cfg_t *cfg, cg_store_t *st, cg_admin_req_t *req,
                      cg_admin_resp_t *resp)
{
    static const char *const filters[][2] = {
        { "action", "action" }, { "appId", "app_id" }, { "customerId", "customer_id" },
        { "certId", "cert_id" }, { "user", "user" },
    };
    enum { NF = sizeof(filters) / sizeof(filters[0]) };
    char key[KEY_MAX], err[200], start[64] = "-", end[32] = "+", count[16], last[48] = "";
    char *from = qparam(req->query, "from"), *to = qparam(req->query, "to");
    char *cursor = qparam(req->query, "cursor"), *limit_s = qparam(req->query, "limit");
    char *want[NF];
    json_t *items = json_array();
    int64_t t, t_from = 0, limit = EVENTS_LIMIT_DEFAULT;
    size_t scanned = 0;
    int cut = 0;

    for (size_t f = 0; f < NF; f++)
        want[f] = qparam(req->query, filters[f][0]);
    if (need(req, resp, CG_ROLE_AUDITOR, "read the audit log") != 0)
        goto done;
    if (from) {
        if (cg_time_parse_iso(from, &t) != 0) {
            cg_admin_error(resp, 400, "Request.Invalid", "from must be like 2025-06-25T08:59:38Z");
            goto done;
        }
        snprintf(start, sizeof(start), "%lld", (long long)t * 1000);
        t_from = t * 1000;
    }
    if (to) {
        if (cg_time_parse_iso(to, &t) != 0) {
            cg_admin_error(resp, 400, "Request.Invalid", "to must be like 2025-06-25T08:59:38Z");
            goto done;
        }
        snprintf(end, sizeof(end), "%lld", (long long)t * 1000 + 999);
    }
    if (cursor) {
        if (!stream_id_valid(cursor)) {
            cg_admin_error(resp, 400, "Request.Invalid", "cursor must be the next value of an "
                           "earlier answer");
            goto done;
        }
        /* A cursor never reaches back before `from`. */
        if (from == NULL || strtoll(cursor, NULL, 10) >= t_from)
            snprintf(start, sizeof(start), "(%s", cursor);
    }
    if (limit_s && (cg_parse_i64(limit_s, strlen(limit_s), &limit) != 0 || limit < 1 ||
                    limit > EVENTS_MAX)) {
        errorf(resp, 400, "Request.Invalid", "limit must be 1..%d", EVENTS_MAX);
        goto done;
    }
    keyf(key, st, "events");
    snprintf(count, sizeof(count), "%d", EVENTS_BATCH);
    for (;;) {
        redisReply *r = NULL;
        const char *argv[6] = { "XRANGE", key, start, end, "COUNT", count };
        size_t lens[6];
        for (int i = 0; i < 6; i++)
            lens[i] = strlen(argv[i]);
        cg_store_rc_t rc = outcome(cg_store_cmd(st, cfg->timeout_ms, 6, argv, lens, &r, err,
                                                sizeof(err)), &r, "XRANGE", err, sizeof(err));
        if (rc != CG_STORE_OK) {
            store_fail(resp, rc, err);
            goto done;
        }
        if (r->type != REDIS_REPLY_ARRAY) {
            cg_store_reply_free(r);
            errorf(resp, 500, "Store.Corrupt", "the store key %.200s is not a stream", key);
            goto done;
        }
        size_t i;
        for (i = 0; i < r->elements && !cut; i++) {
            redisReply *e = r->element[i];
            if (e->type != REDIS_REPLY_ARRAY || e->elements != 2 ||
                e->element[0]->type != REDIS_REPLY_STRING || e->element[0]->len >= sizeof(last))
                continue;
            snprintf(last, sizeof(last), "%s", e->element[0]->str);
            scanned++;
            json_t *h = hash_to_obj(e->element[1]);
            int match = h != NULL && sees_customer(req, fs(h, "customer_id"));
            for (size_t f = 0; match && f < NF; f++)
                match = want[f] == NULL || strcmp(fs(h, filters[f][1]), want[f]) == 0;
            if (match)
                json_array_append_new(items, event_view(last, h));
            json_decref(h);
            if ((int64_t)json_array_size(items) >= limit || scanned >= EVENTS_SCAN_MAX)
                cut = 1;
        }
        /* The batch was the range's end only if it was short and read whole. */
        int end_of_range = r->elements < EVENTS_BATCH && i == r->elements;
        cg_store_reply_free(r);
        if (end_of_range)
            cut = 0;
        if (cut || end_of_range)
            break;
        snprintf(start, sizeof(start), "(%s", last);
    }
    if (cut)
        snprintf(resp->next, sizeof(resp->next), "%s", last);
    if (wants_csv(req)) {
        const char *cols[1 + N_EVENT_FIELDS];
        cols[0] = "id";
        for (size_t c = 0; c < N_EVENT_FIELDS; c++)
            cols[c + 1] = EVENT_FIELDS[c][1];
        send_csv(resp, items, cols, 1 + N_EVENT_FIELDS);
    } else {
        send_json(resp, 200, json_pack("{s:O,s:s?}", "items", items, "next",
                                       cut ? last : NULL));
    }
done:
    json_decref(items);
    for (size_t f = 0; f < NF; f++)
        free(want[f]);
    free(from); free(to); free(cursor); free(limit_s);
}

/* ------------------------------------------------------------ usage, stats, expiry */

/* Add "usage" to each view in items (pipelined reads of {p}usage:{id}). */
static void attach_usage(const cg_admin_cfg_t *cfg, cg_store_t *st, json_t *items)
{
    size_t n = json_array_size(items), i;
    char err[200];
    if (n == 0)
        return;
    char **keys = calloc(n, sizeof(char *));
    redisReply **out = calloc(n, sizeof(redisReply *));
    json_t *v;
    int ok = keys != NULL && out != NULL;
    json_array_foreach(items, i, v) {
        if (!ok || (keys[i] = malloc(KEY_MAX)) == NULL) {
            ok = 0;
            break;
        }
        keyf(keys[i], st, "usage:%s", json_string_value(json_object_get(v, "id")));
    }
    if (ok && cg_store_hgetall_many(st, cfg->timeout_ms, (const char *const *)keys, n, out, err,
                                    sizeof(err)) == CG_STORE_OK) {
        json_array_foreach(items, i, v) {
            json_t *h = hash_to_obj(out[i]);
            if (h != NULL && json_object_size(h) > 0)
                json_object_set_new(v, "usage", json_pack("{s:I,s:o,s:s}",
                    "requests", (json_int_t)fi(h, "count", 0),
                    "lastSeen", iso_or_null(fi(h, "last_seen", INT64_MIN)),
                    "lastClientIp", fs(h, "last_ip")));
            else
                json_object_set_new(v, "usage", json_null());
            json_decref(h);
            cg_store_reply_free(out[i]);
        }
    }
    for (i = 0; keys && i < n; i++)
        free(keys[i]);
    free(keys);
    free(out);
}

int cg_admin_store_stats(cg_store_t *st, int timeout_ms, int64_t now, int soon_days,
                         cg_store_stats_t *out, char *err, size_t errlen)
{
    static const char *const names[] = { "status", "valid_to" };
    cg_admin_cfg_t cfg;
    char key[KEY_MAX];
    (void)soon_days;
    cg_admin_cfg_defaults(&cfg);
    cfg.timeout_ms = timeout_ms;
    memset(out, 0, sizeof(*out));
    keyf(key, st, "regs");
    int why;
    json_t *recs = load_records(&cfg, st, key, names, 2, &why, err, errlen);
    if (recs == NULL)
        return why == LOAD_NOMEM ? -CG_STORE_ERROR : -why;
    size_t i;
    json_t *rec;
    static const int64_t within[3] = { 7, 30, 90 };
    json_array_foreach(recs, i, rec) {
        cg_status_t status;
        const char *s = fs(rec, "status");
        int64_t to = fi(rec, "valid_to", INT64_MAX);
        if (cg_status_parse(s, strlen(s), &status) == 0)
            out->by_status[status]++;
        if (to < now) {
            out->expired++;
            continue;
        }
        if (strcmp(s, "APPROVED") != 0 && strcmp(s, "PENDING") != 0)
            continue;
        for (int k = 0; k < 3; k++)
            if (to - now <= within[k] * 86400)
                out->expiring[k]++;
    }
    json_decref(recs);
    out->ok = 1;
    return 0;
}

static const char EXPIRY_LUA[] = LUA_GUARD
    "local b = guard({{KEYS[1], 'hash'}, {KEYS[2], 'stream'}})\n"
    "if b then return bad(b) end\n"
    "if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end\n"
    "for s in string.gmatch(ARGV[3], '[^,]+') do redis.call('HSETNX', KEYS[1], s, ARGV[2]) end\n"
    "local ev = {}\n"
    "for i = 4, #ARGV do ev[#ev + 1] = ARGV[i] end\n"
    "redis.call('XADD', KEYS[2], '*', unpack(ev))\n"
    "return 1\n";

int cg_admin_expiry_scan(cg_store_t *st, int timeout_ms, int64_t now, const int *days_desc,
                         size_t ndays, char *err, size_t errlen)
{
    static const char *const names[] = { "id", "status", "valid_to", "fingerprint", "app_id",
                                         "customer_id" };
    cg_admin_cfg_t cfg;
    char key[KEY_MAX], k_ev[KEY_MAX], now_s[24], time_iso[32];
    int emitted = 0;
    cg_admin_cfg_defaults(&cfg);
    cfg.timeout_ms = timeout_ms;
    keyf(key, st, "regs");
    keyf(k_ev, st, "events");
    int why;
    json_t *recs = load_records(&cfg, st, key, names, 6, &why, err, errlen);
    if (recs == NULL)
        return why == LOAD_NOMEM ? -CG_STORE_ERROR : -why;
    snprintf(now_s, sizeof(now_s), "%lld", (long long)now);
    cg_time_iso(now, time_iso, sizeof(time_iso));
    size_t i;
    json_t *rec;
    json_array_foreach(recs, i, rec) {
        const char *status = fs(rec, "status");
        int64_t to = fi(rec, "valid_to", INT64_MAX);
        if (strcmp(status, "APPROVED") != 0 && strcmp(status, "PENDING") != 0)
            continue;
        char label[24], days_s[24], also[256] = "", mark[KEY_MAX];
        const char *action;
        if (to < now) {
            action = "cert.expired";
            snprintf(label, sizeof(label), "expired");
            snprintf(days_s, sizeof(days_s), "0");
            for (size_t d = 0; d < ndays; d++)
                snprintf(also + strlen(also), sizeof(also) - strlen(also), "%s%d", d ? "," : "",
                         days_desc[d]);
        } else {
            int64_t left = (to - now) / 86400;
            int lowest = -1;
            for (size_t d = 0; d < ndays; d++) {
                if (left <= days_desc[d]) {
                    if (lowest >= 0)
                        snprintf(also + strlen(also), sizeof(also) - strlen(also), "%s%d",
                                 also[0] ? "," : "", lowest);
                    lowest = days_desc[d];
                }
            }
            if (lowest < 0)
                continue;
            action = "cert.expiring";
            snprintf(label, sizeof(label), "%d", lowest);
            snprintf(days_s, sizeof(days_s), "%lld", (long long)left);
        }
        keyf(mark, st, "expiry:%s", fs(rec, "id"));
        const char *keys[] = { mark, k_ev };
        const char *args[] = { label, now_s, also,
                               "time", time_iso, "user", "certgate-expiry", "ip", "",
                               "action", action, "cert_id", fs(rec, "id"),
                               "fingerprint", fs(rec, "fingerprint"),
                               "app_id", fs(rec, "app_id"), "customer_id", fs(rec, "customer_id"),
                               "days_left", days_s, "threshold", label,
                               "old_status", status, "new_status", status, "reason", "" };
        redisReply *r = NULL;
        cg_store_rc_t rc = eval(&cfg, st, EXPIRY_LUA, 2, keys,
                                (int)(sizeof(args) / sizeof(args[0])), args, &r, err, errlen);
        if (rc == CG_STORE_OK && (rc = cg_store_reply_kind(r)) != CG_STORE_OK) {
            /* Refused (an ACL without eval, hsetnx or xadd): say so, not "0 events". */
            snprintf(err, errlen, "EVAL: %.150s", r->str);
            cg_store_reply_free(r);
        }
        if (rc != CG_STORE_OK) {
            json_decref(recs);
            return -(int)rc;
        }
        if (r->type == REDIS_REPLY_INTEGER && r->integer == 1)
            emitted++;
        cg_store_reply_free(r);
    }
    json_decref(recs);
    return emitted;
}

/* ------------------------------------------------------------ routing */

/* Split path into at most 5 segments; returns the count or -1 if too deep/long. */
static int segments(const char *path, char seg[5][160])
{
    int n = 0;
    const char *p = path;
    while (*p == '/')
        p++;
    while (*p) {
        size_t len = strcspn(p, "/");
        if (n == 5 || len >= 160)
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

void cg_admin_handle(const cg_admin_cfg_t *cfg, cg_store_t *st, cg_admin_req_t *req,
                     cg_admin_resp_t *resp)
{
    char seg[5][160];
    const char *m = req->method;
    int n = segments(req->path ? req->path : "", seg);

    memset(resp, 0, sizeof(*resp));
    if (n < 0) {
        cg_admin_error(resp, 404, "Route.NotFound", "no such endpoint");
    } else if (n == 1 && strcmp(seg[0], "certs") == 0) {
        if (strcmp(m, "POST") == 0)
            do_upload(cfg, st, req, resp);
        else if (strcmp(m, "GET") == 0)
            do_list(cfg, st, req, resp);
        else
            cg_admin_error(resp, 405, "Route.MethodNotAllowed", "use GET or POST");
    } else if (n == 2 && strcmp(seg[0], "certs") == 0) {
        if (strcmp(m, "GET") == 0)
            do_get(cfg, st, req, resp, seg[1]);
        else
            cg_admin_error(resp, 405, "Route.MethodNotAllowed", "use GET");
    } else if (n == 3 && strcmp(seg[0], "certs") == 0 &&
               (strcmp(seg[2], "approve") == 0 || strcmp(seg[2], "decline") == 0 ||
                strcmp(seg[2], "inactivate") == 0)) {
        if (strcmp(m, "POST") == 0)
            do_transition(cfg, st, req, resp, seg[1], seg[2]);
        else
            cg_admin_error(resp, 405, "Route.MethodNotAllowed", "use POST");
    } else if (n == 1 && (strcmp(seg[0], "apps") == 0 || strcmp(seg[0], "customers") == 0)) {
        int apps = seg[0][0] == 'a';
        if (strcmp(m, "POST") == 0 && apps)
            do_app_create(cfg, st, req, resp);
        else if (strcmp(m, "POST") == 0)
            do_customer_create(cfg, st, req, resp);
        else if (strcmp(m, "GET") == 0)
            do_entity_list(cfg, st, req, resp, apps ? "appinfo" : "customer");
        else
            cg_admin_error(resp, 405, "Route.MethodNotAllowed", "use GET or POST");
    } else if (n >= 2 && (strcmp(seg[0], "apps") == 0 || strcmp(seg[0], "customers") == 0) &&
               !cg_app_valid(seg[1], strlen(seg[1]))) {
        cg_admin_error(resp, 400, "Request.Invalid", "not a valid app or customer id");
    } else if (n == 2 && strcmp(seg[0], "customers") == 0) {
        if (strcmp(m, "GET") == 0)
            do_customer_get(cfg, st, req, resp, seg[1]);
        else if (strcmp(m, "PATCH") == 0)
            do_entity_update(cfg, st, req, resp, "customer", seg[1]);
        else
            cg_admin_error(resp, 405, "Route.MethodNotAllowed", "use GET or PATCH");
    } else if (n == 2 && strcmp(seg[0], "apps") == 0) {
        if (strcmp(m, "GET") == 0)
            do_app(cfg, st, req, resp, seg[1]);
        else if (strcmp(m, "PATCH") == 0)
            do_entity_update(cfg, st, req, resp, "appinfo", seg[1]);
        else
            cg_admin_error(resp, 405, "Route.MethodNotAllowed", "use GET or PATCH");
    } else if (n == 3 && strcmp(seg[0], "apps") == 0 && strcmp(seg[2], "rotations") == 0) {
        if (strcmp(m, "POST") == 0) {
            do_rotation_create(cfg, st, req, resp, seg[1]);
        } else if (strcmp(m, "GET") == 0) {
            json_t *a = NULL;
            if (need(req, resp, CG_ROLE_SUPPORT | CG_ROLE_MANAGER | CG_ROLE_AUDITOR,
                     "read rotations") == 0 &&
                (sees_all(req) || app_for_user(cfg, st, req, seg[1], &a, resp) == 0)) {
                json_t *rots = load_rotations(cfg, st, seg[1], req->now, resp);
                if (rots != NULL)
                    send_json(resp, 200, json_pack("{s:s,s:o}", "appId", seg[1], "items", rots));
            }
            json_decref(a);
        } else {
            cg_admin_error(resp, 405, "Route.MethodNotAllowed", "use GET or POST");
        }
    } else if (n == 4 && strcmp(seg[0], "apps") == 0 && strcmp(seg[2], "rotations") == 0) {
        if (strcmp(m, "DELETE") == 0)
            do_rotation_cancel(cfg, st, req, resp, seg[1], seg[3]);
        else
            cg_admin_error(resp, 405, "Route.MethodNotAllowed", "use DELETE");
    } else if (n == 1 && strcmp(seg[0], "check") == 0) {
        if (strcmp(m, "POST") == 0)
            do_check(cfg, st, req, resp);
        else
            cg_admin_error(resp, 405, "Route.MethodNotAllowed", "use POST");
    } else if (n == 1 && strcmp(seg[0], "events") == 0) {
        if (strcmp(m, "GET") == 0)
            do_events(cfg, st, req, resp);
        else
            cg_admin_error(resp, 405, "Route.MethodNotAllowed", "use GET");
    } else {
        cg_admin_error(resp, 404, "Route.NotFound", "no such endpoint; see docs/admin-api.md");
    }
    /* The body may hold a private key: wipe it whatever happened. */
    if (req->body != NULL)
        OPENSSL_cleanse(req->body, req->body_len);
    if (resp->status == 0)
        cg_admin_error(resp, 500, "Internal", "no response was produced");
}
