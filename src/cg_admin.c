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

/* ------------------------------------------------------------ small helpers */

unsigned cg_role_parse(const char *name)
{
    if (strcasecmp(name, "developer") == 0) return CG_ROLE_DEVELOPER;
    if (strcasecmp(name, "manager") == 0) return CG_ROLE_MANAGER;
    if (strcasecmp(name, "support") == 0) return CG_ROLE_SUPPORT;
    if (strcasecmp(name, "auditor") == 0) return CG_ROLE_AUDITOR;
    return 0;
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

static int sees_all(const cg_admin_req_t *req)
{
    return (req->roles & (CG_ROLE_MANAGER | CG_ROLE_SUPPORT | CG_ROLE_AUDITOR)) != 0;
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

/* Load a record by id. 0 found, 1 absent, -1 store error (resp set). */
static int load_rec(const cg_admin_cfg_t *cfg, cg_store_t *st, const char *id, json_t **rec,
                    cg_admin_resp_t *resp)
{
    char key[KEY_MAX], err[200];
    redisReply *r = NULL;
    *rec = NULL;
    if (!cg_id_valid(id, strlen(id)))
        return 1;
    keyf(key, st, "reg:%s", id);
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
            cg_admin_error(resp, 500, "Store.Corrupt", "the registration record is damaged");
            return -1;
        } else if (rc != CG_STORE_OK) {
            store_fail(resp, rc, err);
            return -1;
        }
        return 1;
    }
    *rec = hash_to_obj(r);
    cg_store_reply_free(r);
    if (*rec == NULL) {
        cg_admin_error(resp, 500, "Store.Corrupt", "the registration record is damaged");
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
    const script_error_t *e = errors;
    size_t wl = 0;
    while (e->word != NULL) {
        wl = strlen(e->word);
        if (strncmp(text, e->word, wl) == 0 && (text[wl] == '\0' || text[wl] == ' '))
            break;
        e++;
    }
    if (e->word == NULL) {
        errorf(resp, 503, "Store.Unavailable", "the store refused the write: %.200s", r->str);
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

/* ------------------------------------------------------------ upload */

static const char UPLOAD_LUA[] =
    "if redis.call('EXISTS', KEYS[1]) == 1 then return redis.error_reply('DUPLICATE') end\n"
    "local n = tonumber(ARGV[3])\n"
    "local rec = {}\n"
    "for i = 4, 3 + n do rec[#rec + 1] = ARGV[i] end\n"
    "redis.call('HSET', KEYS[2], unpack(rec))\n"
    "redis.call('SET', KEYS[1], ARGV[1])\n"
    "redis.call('SADD', KEYS[3], ARGV[1])\n"
    "redis.call('SADD', KEYS[4], ARGV[1])\n"
    "redis.call('SET', KEYS[7], '1')\n"
    "local ev = {}\n"
    "for i = 4 + n, #ARGV do ev[#ev + 1] = ARGV[i] end\n"
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

/* The organization recorded for a customer ({p}customer:{id} field organization). */
static char *customer_org(const cg_admin_cfg_t *cfg, cg_store_t *st, const char *customer)
{
    char key[KEY_MAX], err[200];
    redisReply *r = NULL;
    char *out = NULL;
    if (customer == NULL || *customer == '\0')
        return NULL;
    keyf(key, st, "customer:%s", customer);
    const char *argv[3] = { "HGET", key, "organization" };
    size_t lens[3] = { 4, strlen(key), 12 };
    if (cg_store_cmd(st, cfg->timeout_ms, 3, argv, lens, &r, err, sizeof(err)) == CG_STORE_OK &&
        r->type == REDIS_REPLY_STRING)
        out = strndup(r->str, r->len);
    cg_store_reply_free(r);
    return out;
}

static void do_upload(const cg_admin_cfg_t *cfg, cg_store_t *st, cg_admin_req_t *req,
                      cg_admin_resp_t *resp)
{
    upload_t u;
    cg_cert_info_t info;
    int have_info = 0;
    char *chain = NULL, *subjects = NULL, *sans = NULL, *org = NULL;
    char err[200], msg[600];
    const char *code = NULL;

    if (need(req, resp, CG_ROLE_DEVELOPER, "upload certificates") != 0)
        return;
    if (read_upload(req, resp, &u, "Upload.Certificate.Invalid", 1) != 0)
        goto done;
    if (req->customer != NULL) {
        if (u.customer != NULL && u.customer[0] != '\0' && strcmp(u.customer, req->customer) != 0) {
            cg_admin_error(resp, 403, "Auth.CustomerMismatch",
                           "developers upload for their own customer only");
            goto done;
        }
        free(u.customer);
        u.customer = strdup(req->customer);
    } else if (!sees_all(req)) {
        cg_admin_error(resp, 403, "Auth.NoCustomer",
                       "no customer is configured for this developer (CertGateAdminCustomer)");
        goto done;
    }
    X509 *leaf = sk_X509_value(u.certs, 0);
    if (u.pkey != NULL) {
        int m = cg_cert_key_matches(leaf, u.pkey, u.pkey_len);
        if (m != 0) {
            cg_admin_error(resp, 400, "PrivateKey.Invalid",
                           m < 0 ? "privateKey is not a readable, unencrypted PEM private key"
                                 : "privateKey does not belong to the certificate");
            goto done;
        }
    }
    if (cg_cert_info(leaf, &info, err, sizeof(err)) != 0) {
        errorf(resp, 400, "Certificate.Invalid", "certificate: %s", err);
        goto done;
    }
    have_info = 1;
    if (info.not_after < req->now) {
        cg_admin_error(resp, 400, "Certificate.Expired", "the certificate has already expired");
        goto done;
    }
    if (cfg->policy.cn_contains_org)
        org = customer_org(cfg, st, u.customer);
    if (cg_policy_check(&cfg->policy, u.certs, org, req->now, &code, msg, sizeof(msg)) != 0) {
        cg_admin_error(resp, 400, code, msg);
        goto done;
    }

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
        k_gen[KEY_MAX], k_schema[KEY_MAX], chan[KEY_MAX], nrec_s[16];
    keyf(k_fp, st, "fp:%s", hex);
    keyf(k_reg, st, "reg:%s", id);
    keyf(k_app, st, "app:%s", u.app);
    keyf(k_all, st, "regs");
    keyf(k_ev, st, "events");
    keyf(k_gen, st, "gen");
    keyf(k_schema, st, "schema");
    keyf(chan, st, "invalidate");
    snprintf(nrec_s, sizeof(nrec_s), "%d", nrec);
    const char *keys[] = { k_fp, k_reg, k_app, k_all, k_ev, k_gen, k_schema };
    const char *args[3 + 64 + 32];
    int na = 0;
    args[na++] = id;
    args[na++] = chan;
    args[na++] = nrec_s;
    for (int i = 0; i < nrec; i++)
        args[na++] = rec[i];
    for (int i = 0; i < ev.n; i++)
        args[na++] = ev.kv[i];
    static const script_error_t upload_errors[] = {
        { "DUPLICATE", 409, "Certificate.Duplicate", "this certificate is already registered" },
        { NULL, 0, NULL, NULL }
    };
    if (run_script(cfg, st, UPLOAD_LUA, 7, keys, na, args, upload_errors, resp) != 0)
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
    free(org);
    upload_free(&u);
}

/* ------------------------------------------------------------ transitions */

static const char TRANSITION_LUA[] =
    "local cur = redis.call('HMGET', KEYS[1], 'status', 'version', 'fingerprint')\n"
    "if not cur[1] then return redis.error_reply('NOTFOUND') end\n"
    "if ARGV[3] ~= '' and ARGV[3] ~= ('v' .. (cur[2] or '1')) then\n"
    "  return redis.error_reply('PRECONDITION') end\n"
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
    int lr = load_rec(cfg, st, id, &rec, resp);
    if (lr < 0)
        goto done;
    if (lr > 0) {
        cg_admin_error(resp, 404, "Certificate.NotFound", "no registration with that id");
        goto done;
    }
    if (strcmp(action, "approve") == 0) {
        if (!cfg->self_approve && strcmp(fs(rec, "created_by"), req->user) == 0) {
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
    const char *args[7 + 32] = { from, to, req->if_match ? req->if_match : "", now_s, req->user,
                                 reason, chan };
    int na = 7;
    for (int i = 0; i < ev.n; i++)
        args[na++] = ev.kv[i];
    /* If-Match may be quoted or weak: compare the bare tag. */
    char im[40] = "";
    if (req->if_match != NULL) {
        const char *p = req->if_match;
        if (strncmp(p, "W/", 2) == 0)
            p += 2;
        snprintf(im, sizeof(im), "%.*s", (int)strcspn(p + (*p == '"'), "\""), p + (*p == '"'));
        args[2] = im;
    }
    char illegal[96];
    snprintf(illegal, sizeof(illegal), "cannot %s a certificate that is %%s", verb);
    const script_error_t transition_errors[] = {
        { "PRECONDITION", 412, "Precondition.Failed",
          "the record changed since your If-Match version; read it again" },
        { "CONFLICT", 409, "Transition.Illegal", illegal },
        { "NOTFOUND", 404, "Certificate.NotFound", "no registration with that id" },
        { NULL, 0, NULL, NULL }
    };
    if (run_script(cfg, st, TRANSITION_LUA, 3, keys, na, args, transition_errors, resp) != 0)
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
        if (!sees_all(req) && (req->customer == NULL ||
                               strcmp(fs(rec, "customer_id"), req->customer) != 0))
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
    if (lr > 0 || (!sees_all(req) && (req->customer == NULL ||
                                      strcmp(fs(rec, "customer_id"), req->customer) != 0))) {
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

static const char ROTATE_LUA[] =
    "local new = redis.call('HMGET', KEYS[1], 'status', 'app_id', 'activate_at', 'fingerprint')\n"
    "local old = redis.call('HMGET', KEYS[2], 'status', 'app_id', 'retire_at', 'fingerprint')\n"
    "if not new[1] or not old[1] then return redis.error_reply('NOTFOUND') end\n"
    "if new[2] ~= ARGV[1] or old[2] ~= ARGV[1] then return redis.error_reply('NOTINAPP') end\n"
    "if new[1] ~= 'APPROVED' then return redis.error_reply('NEWNOTAPPROVED ' .. new[1]) end\n"
    "if old[1] ~= 'APPROVED' then return redis.error_reply('OLDNOTAPPROVED ' .. old[1]) end\n"
    "redis.call('HSET', KEYS[3], 'id', ARGV[8], 'app_id', ARGV[1], 'new_cert_id', ARGV[2],\n"
    "  'old_cert_id', ARGV[3], 'activate_at', ARGV[4], 'retire_old_at', ARGV[5],\n"
    "  'created', ARGV[6], 'created_by', ARGV[7], 'status', 'SCHEDULED',\n"
    "  'prev_new_activate_at', new[3] or '', 'prev_old_retire_at', old[3] or '')\n"
    "redis.call('ZADD', KEYS[4], ARGV[6], ARGV[8])\n"
    "redis.call('HSET', KEYS[1], 'activate_at', ARGV[4], 'updated', ARGV[6], 'updated_by', ARGV[7])\n"
    "redis.call('HINCRBY', KEYS[1], 'version', 1)\n"
    "redis.call('HSET', KEYS[2], 'retire_at', ARGV[5], 'updated', ARGV[6], 'updated_by', ARGV[7])\n"
    "redis.call('HINCRBY', KEYS[2], 'version', 1)\n"
    "local ev = {}\n"
    "for i = 10, #ARGV do ev[#ev + 1] = ARGV[i] end\n"
    "redis.call('XADD', KEYS[5], '*', unpack(ev))\n"
    "redis.call('INCR', KEYS[6])\n"
    "local t = redis.call('TIME')\n"
    "local ms = ' ' .. (t[1] * 1000 + math.floor(t[2] / 1000))\n"
    "redis.call('PUBLISH', ARGV[9], (new[4] or '') .. ms)\n"
    "redis.call('PUBLISH', ARGV[9], (old[4] or '') .. ms)\n"
    "return 'OK'\n";

static const char CANCEL_LUA[] =
    "local rot = redis.call('HMGET', KEYS[1], 'status', 'activate_at', 'prev_new_activate_at',\n"
    "  'prev_old_retire_at', 'app_id')\n"
    "if not rot[1] or rot[5] ~= ARGV[3] then return redis.error_reply('NOTFOUND') end\n"
    "if rot[1] ~= 'SCHEDULED' then return redis.error_reply('CANCELLED') end\n"
    "if tonumber(ARGV[1]) >= tonumber(rot[2]) then return redis.error_reply('STARTED') end\n"
    "redis.call('HSET', KEYS[1], 'status', 'CANCELLED', 'cancelled', ARGV[1], 'cancelled_by', ARGV[2])\n"
    "redis.call('HSET', KEYS[2], 'activate_at', rot[3], 'updated', ARGV[1], 'updated_by', ARGV[2])\n"
    "redis.call('HINCRBY', KEYS[2], 'version', 1)\n"
    "redis.call('HSET', KEYS[3], 'retire_at', rot[4], 'updated', ARGV[1], 'updated_by', ARGV[2])\n"
    "redis.call('HINCRBY', KEYS[3], 'version', 1)\n"
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

    if (need(req, resp, CG_ROLE_SUPPORT, "schedule rotations") != 0)
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
        k_gen[KEY_MAX], chan[KEY_MAX], act_s[24], ret_s[24], now_s[24];
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
    ev_add(&ev, "cert_id", new_cert);
    ev_add(&ev, "old_cert_id", old_id);
    ev_add(&ev, "reason", json_string_value(ja));
    const char *keys[] = { k_new, k_old, k_rot, k_rots, k_ev, k_gen };
    const char *args[9 + 32] = { app, new_cert, old_id, act_s, ret_s, now_s, req->user, rid, chan };
    int na = 9;
    for (int i = 0; i < ev.n; i++)
        args[na++] = ev.kv[i];
    static const script_error_t rotate_errors[] = {
        { "NOTFOUND", 404, "Certificate.NotFound", "newCertId or oldCertId does not exist" },
        { "NOTINAPP", 400, "Rotation.CertNotInApp",
          "both certificates must be registered to this app" },
        { "NEWNOTAPPROVED", 409, "Rotation.NewCertNotApproved",
          "the new certificate must be APPROVED before a cutover is scheduled" },
        { "OLDNOTAPPROVED", 409, "Rotation.OldCertNotApproved",
          "the old certificate is not APPROVED: there is nothing to rotate out" },
        { NULL, 0, NULL, NULL }
    };
    if (run_script(cfg, st, ROTATE_LUA, 6, keys, na, args, rotate_errors, resp) != 0)
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
}

static json_t *load_rotations(const cg_admin_cfg_t *cfg, cg_store_t *st, const char *app,
                              int64_t now, cg_admin_resp_t *resp)
{
    char key[KEY_MAX], err[200];
    redisReply *r = NULL;
    keyf(key, st, "rotations:%s", app);
    const char *argv[4] = { "ZRANGE", key, "0", "-1" };
    size_t lens[4] = { 6, strlen(key), 1, 2 };
    if (cg_store_cmd(st, cfg->timeout_ms, 4, argv, lens, &r, err, sizeof(err)) != CG_STORE_OK) {
        store_error(resp, err);
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
    if (need(req, resp, CG_ROLE_SUPPORT, "cancel rotations") != 0)
        return;
    if (!cg_id_valid(rid, strlen(rid))) {
        cg_admin_error(resp, 404, "Rotation.NotFound", "no rotation with that id");
        return;
    }
    keyf(k_rot, st, "rotation:%s", rid);
    const char *argv[4] = { "HMGET", k_rot, "new_cert_id", "old_cert_id" };
    size_t lens[4] = { 5, strlen(k_rot), 11, 11 };
    if (cg_store_cmd(st, cfg->timeout_ms, 4, argv, lens, &r, err, sizeof(err)) != CG_STORE_OK) {
        store_error(resp, err);
        return;
    }
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
        r->element[0]->type != REDIS_REPLY_STRING || r->element[1]->type != REDIS_REPLY_STRING) {
        cg_store_reply_free(r);
        cg_admin_error(resp, 404, "Rotation.NotFound", "no rotation with that id");
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
    const char *keys[] = { k_rot, k_new, k_old, k_ev, k_gen };
    const char *args[4 + 32] = { now_s, req->user, app, chan };
    int na = 4;
    for (int i = 0; i < ev.n; i++)
        args[na++] = ev.kv[i];
    static const script_error_t cancel_errors[] = {
        { "STARTED", 409, "Rotation.Started",
          "the rotation has started (activateAt has passed) and cannot be cancelled" },
        { "CANCELLED", 409, "Rotation.Cancelled", "the rotation is already cancelled" },
        { "NOTFOUND", 404, "Rotation.NotFound", "no rotation with that id for this app" },
        { NULL, 0, NULL, NULL }
    };
    if (run_script(cfg, st, CANCEL_LUA, 5, keys, na, args, cancel_errors, resp) != 0)
        return;
    resp->status = 204;
    set_body(resp, 204, "application/json", NULL);
}

static void do_app(const cg_admin_cfg_t *cfg, cg_store_t *st, cg_admin_req_t *req,
                   cg_admin_resp_t *resp, const char *app)
{
    char key[KEY_MAX];
    if (need(req, resp, CG_ROLE_DEVELOPER | CG_ROLE_MANAGER | CG_ROLE_SUPPORT | CG_ROLE_AUDITOR,
             "read apps") != 0)
        return;
    keyf(key, st, "app:%s", app);
    json_t *recs = load_set(cfg, st, key, resp);
    if (recs == NULL)
        return;
    json_t *rots = load_rotations(cfg, st, app, req->now, resp);
    if (rots == NULL) {
        json_decref(recs);
        return;
    }
    size_t n = json_array_size(recs), m = 0;
    json_t **sel = calloc(n ? n : 1, sizeof(json_t *));
    for (size_t i = 0; sel && i < n; i++) {
        json_t *rec = json_array_get(recs, i);
        if (sees_all(req) || (req->customer && strcmp(fs(rec, "customer_id"), req->customer) == 0))
            sel[m++] = rec;
    }
    if (sel == NULL || (m == 0 && n > 0)) {
        free(sel);
        json_decref(recs);
        json_decref(rots);
        cg_admin_error(resp, 404, "App.NotFound", "no certificates for that app");
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
    send_json(resp, 200, json_pack("{s:s,s:o,s:o}", "appId", app, "certificates", items,
                                   "rotations", rots));
}

/* ------------------------------------------------------------ check */

static void do_check(const cg_admin_cfg_t *cfg, cg_store_t *st, cg_admin_req_t *req,
                     cg_admin_resp_t *resp)
{
    upload_t u;
    char err[200], msg[600];
    const char *code = NULL;
    if (need(req, resp, CG_ROLE_DEVELOPER | CG_ROLE_MANAGER | CG_ROLE_SUPPORT | CG_ROLE_AUDITOR,
             "check certificates") != 0)
        return;
    if (read_upload(req, resp, &u, "Request.Invalid", 0) != 0) {
        upload_free(&u);
        return;
    }
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
    int pol = cg_policy_check(&cfg->policy, u.certs, NULL, req->now, &code, msg, sizeof(msg));
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
    if (rc == CG_STORE_OK)
        regp = &reg;
    if (cg_store_failed(rc)) {
        reason = CG_R_STORE_UNAVAILABLE;
    } else {
        cg_input_t in = { .leaf = &leaf, .chain = fps, .chain_len = nfp, .chain_known = 1,
                          .app = (u.app && *u.app) ? u.app : NULL, .now = req->now, .reg = regp };
        reason = cg_decide(&in);
    }
    char hex[CG_FP_HEX_LEN + 1];
    cg_fp_to_hex(&leaf, hex);
    /* Only a registration the user may see is named. */
    int show_reg = regp && (sees_all(req) || (req->customer &&
                                              strcmp(req->customer, regp->customer_id) == 0));
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

static const char *const EVENT_COLS[] = {
    "id", "time", "user", "ip", "action", "certId", "fingerprint", "appId", "customerId",
    "oldStatus", "newStatus", "reason", "rotationId"
};

static void do_events(const cg_admin_cfg_t *cfg, cg_store_t *st, cg_admin_req_t *req,
                      cg_admin_resp_t *resp)
{
    char key[KEY_MAX], err[200], min[32] = "-", max[32] = "+", count[16];
    char *from = qparam(req->query, "from"), *to = qparam(req->query, "to");
    char *action = qparam(req->query, "action"), *app = qparam(req->query, "appId");
    redisReply *r = NULL;
    int64_t t;

    if (need(req, resp, CG_ROLE_AUDITOR, "read the audit log") != 0)
        goto done;
    if (from) {
        if (cg_time_parse_iso(from, &t) != 0) {
            cg_admin_error(resp, 400, "Request.Invalid", "from must be like 2025-06-25T08:59:38Z");
            goto done;
        }
        snprintf(min, sizeof(min), "%lld", (long long)t * 1000);
    }
    if (to) {
        if (cg_time_parse_iso(to, &t) != 0) {
            cg_admin_error(resp, 400, "Request.Invalid", "to must be like 2025-06-25T08:59:38Z");
            goto done;
        }
        snprintf(max, sizeof(max), "%lld", (long long)t * 1000 + 999);
    }
    keyf(key, st, "events");
    snprintf(count, sizeof(count), "%d", EVENTS_MAX);
    const char *argv[6] = { "XRANGE", key, min, max, "COUNT", count };
    size_t lens[6];
    for (int i = 0; i < 6; i++)
        lens[i] = strlen(argv[i]);
    if (cg_store_cmd(st, cfg->timeout_ms, 6, argv, lens, &r, err, sizeof(err)) != CG_STORE_OK) {
        store_error(resp, err);
        goto done;
    }
    json_t *items = json_array();
    static const char *const map[][2] = {
        { "time", "time" }, { "user", "user" }, { "ip", "ip" }, { "action", "action" },
        { "cert_id", "certId" }, { "fingerprint", "fingerprint" }, { "app_id", "appId" },
        { "customer_id", "customerId" }, { "old_status", "oldStatus" },
        { "new_status", "newStatus" }, { "reason", "reason" }, { "rotation_id", "rotationId" },
        { "old_cert_id", "oldCertId" },
    };
    for (size_t i = 0; r->type == REDIS_REPLY_ARRAY && i < r->elements; i++) {
        redisReply *e = r->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements != 2 ||
            e->element[0]->type != REDIS_REPLY_STRING)
            continue;
        json_t *h = hash_to_obj(e->element[1]);
        if (h == NULL)
            continue;
        if ((action && strcmp(fs(h, "action"), action) != 0) ||
            (app && strcmp(fs(h, "app_id"), app) != 0)) {
            json_decref(h);
            continue;
        }
        json_t *o = json_pack("{s:s}", "id", e->element[0]->str);
        for (size_t k = 0; k < sizeof(map) / sizeof(map[0]); k++)
            if (json_object_get(h, map[k][0]))
                json_object_set(o, map[k][1], json_object_get(h, map[k][0]));
        json_decref(h);
        json_array_append_new(items, o);
    }
    cg_store_reply_free(r);
    if (wants_csv(req)) {
        send_csv(resp, items, EVENT_COLS, sizeof(EVENT_COLS) / sizeof(EVENT_COLS[0]));
        json_decref(items);
    } else {
        send_json(resp, 200, json_pack("{s:o}", "items", items));
    }
done:
    free(from); free(to); free(action); free(app);
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

static const char EXPIRY_LUA[] =
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
    } else if (n >= 2 && strcmp(seg[0], "apps") == 0 && !cg_app_valid(seg[1], strlen(seg[1]))) {
        cg_admin_error(resp, 400, "Request.Invalid", "not a valid app id");
    } else if (n == 2 && strcmp(seg[0], "apps") == 0) {
        if (strcmp(m, "GET") == 0)
            do_app(cfg, st, req, resp, seg[1]);
        else
            cg_admin_error(resp, 405, "Route.MethodNotAllowed", "use GET");
    } else if (n == 3 && strcmp(seg[0], "apps") == 0 && strcmp(seg[2], "rotations") == 0) {
        if (strcmp(m, "POST") == 0) {
            do_rotation_create(cfg, st, req, resp, seg[1]);
        } else if (strcmp(m, "GET") == 0) {
            if (need(req, resp, CG_ROLE_SUPPORT | CG_ROLE_MANAGER | CG_ROLE_AUDITOR,
                     "read rotations") == 0) {
                json_t *rots = load_rotations(cfg, st, seg[1], req->now, resp);
                if (rots != NULL)
                    send_json(resp, 200, json_pack("{s:s,s:o}", "appId", seg[1], "items", rots));
            }
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
