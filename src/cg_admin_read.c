/* The admin API's reading: the registration list, one registration, an app
 * with its certificates and rotations, and the audit log. */
#include "cg_admin_int.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cg_decide.h"

/* ------------------------------------------------------------ registrations */

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

json_t *adm_load_listing(const cg_admin_cfg_t *cfg, cg_store_t *st, const cg_admin_req_t *req,
                         const char *app, cg_admin_resp_t *resp)
{
    char key[KEY_MAX];
    if (app != NULL && !cg_app_valid(app, strlen(app))) {
        cg_admin_error(resp, 400, "Request.Invalid", "appId is not a valid app id");
        return NULL;
    }
    /* Another customer's app is named (403), not silently listed empty. */
    if (app != NULL && !adm_sees_all(req)) {
        json_t *a = NULL;
        if (adm_app_for_user(cfg, st, req, app, &a, resp) != 0)
            return NULL;
        json_decref(a);
    }
    if (app != NULL)
        cg_key(key, st, CG_K_APP "%s", app);
    else
        cg_key(key, st, CG_K_REGS);
    return adm_load_set(cfg, st, key, resp);
}

int adm_listed(const cg_admin_cfg_t *cfg, const cg_admin_req_t *req, json_t *rec,
               const char *cust, const char *status)
{
    char buf[64];
    if (!adm_sees_customer(req, fs(rec, "customer_id")))
        return 0;
    if (cust && strcmp(fs(rec, "customer_id"), cust) != 0)
        return 0;
    if (status) {
        const char *d = adm_derived_status(cfg, rec, req->now, buf, sizeof(buf));
        if (strcasecmp(d, status) != 0 &&
            !(strcasecmp(fs(rec, "status"), status) == 0 && strcmp(d, "EXPIRED") != 0))
            return 0;
    }
    return 1;
}

void adm_list(const cg_admin_cfg_t *cfg, cg_store_t *st, cg_admin_req_t *req,
              cg_admin_resp_t *resp)
{
    char *app = adm_qparam(req->query, "appId"), *cust = adm_qparam(req->query, "customerId");
    char *status = adm_qparam(req->query, "status");
    char *within = adm_qparam(req->query, "expiringWithin");
    char *page_s = adm_qparam(req->query, "page"), *size_s = adm_qparam(req->query, "pageSize");
    json_t *recs = NULL;
    int64_t within_s = -1, page = 1, size = PAGE_SIZE_DEFAULT;

    if (adm_need(req, resp, CG_ROLE_DEVELOPER | CG_ROLE_MANAGER | CG_ROLE_SUPPORT | CG_ROLE_AUDITOR,
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
        adm_errorf(resp, 400, "Request.Invalid", "page must be >= 1 and pageSize 1..%d",
                   PAGE_SIZE_MAX);
        goto done;
    }
    if ((recs = adm_load_listing(cfg, st, req, app, resp)) == NULL)
        goto done;

    size_t n = json_array_size(recs), m = 0;
    json_t **sel = calloc(n ? n : 1, sizeof(json_t *));
    if (sel == NULL) {
        cg_admin_error(resp, 500, "Internal", "out of memory");
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        json_t *rec = json_array_get(recs, i);
        if (!adm_listed(cfg, req, rec, cust, status))
            continue;
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
        json_array_append_new(items, adm_view(cfg, sel[i], req->now));
    free(sel);
    adm_attach_usage(cfg, st, items);
    if (adm_wants_csv(req)) {
        adm_send_csv(resp, items, CERT_CSV_COLS, sizeof(CERT_CSV_COLS) / sizeof(CERT_CSV_COLS[0]));
        json_decref(items);
    } else {
        adm_send_json(resp, 200, json_pack("{s:o,s:I,s:I,s:I}", "items", items, "page",
                                           (json_int_t)page, "pageSize", (json_int_t)size, "total",
                                           (json_int_t)m));
    }
done:
    json_decref(recs);
    free(app); free(cust); free(status); free(within); free(page_s); free(size_s);
}

void adm_get(const cg_admin_cfg_t *cfg, cg_store_t *st, cg_admin_req_t *req,
             cg_admin_resp_t *resp, const char *id)
{
    json_t *rec = NULL;
    if (adm_need(req, resp, CG_ROLE_DEVELOPER | CG_ROLE_MANAGER | CG_ROLE_SUPPORT | CG_ROLE_AUDITOR,
                 "read certificates") != 0)
        return;
    int lr = adm_load_rec(cfg, st, id, &rec, resp);
    if (lr < 0)
        return;
    if (lr > 0 || !adm_sees_customer(req, fs(rec, "customer_id"))) {
        /* Another customer's certificate is reported like a missing one. */
        cg_admin_error(resp, 404, "Certificate.NotFound", "no registration with that id");
        json_decref(rec);
        return;
    }
    adm_set_etag(resp, rec);
    json_t *items = json_pack("[o]", adm_view(cfg, rec, req->now));
    adm_attach_usage(cfg, st, items);
    adm_send_json(resp, 200, json_incref(json_array_get(items, 0)));
    json_decref(items);
    json_decref(rec);
}

void adm_app(const cg_admin_cfg_t *cfg, cg_store_t *st, cg_admin_req_t *req,
             cg_admin_resp_t *resp, const char *app)
{
    char key[KEY_MAX];
    json_t *info = NULL;
    if (adm_need(req, resp, CG_ROLE_DEVELOPER | CG_ROLE_MANAGER | CG_ROLE_SUPPORT | CG_ROLE_AUDITOR,
                 "read apps") != 0)
        return;
    /* Staff also see an app nobody registered yet (records from before apps
     * had owners: docs/admin-api.md, migration). */
    if (adm_sees_all(req)) {
        if (adm_load_entity(cfg, st, CG_K_APPINFO, app, &info, resp) < 0)
            return;
    } else if (adm_app_for_user(cfg, st, req, app, &info, resp) != 0) {
        return;
    }
    cg_key(key, st, CG_K_APP "%s", app);
    json_t *recs = adm_load_set(cfg, st, key, resp);
    if (recs == NULL) {
        json_decref(info);
        return;
    }
    json_t *rots = adm_load_rotations(cfg, st, app, req->now, resp);
    if (rots == NULL) {
        json_decref(recs);
        json_decref(info);
        return;
    }
    size_t n = json_array_size(recs), m = 0;
    json_t **sel = calloc(n ? n : 1, sizeof(json_t *));
    for (size_t i = 0; sel && i < n; i++) {
        json_t *rec = json_array_get(recs, i);
        if (adm_sees_customer(req, fs(rec, "customer_id")))
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
        json_t *v = adm_view(cfg, sel[i], req->now);
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
    adm_attach_usage(cfg, st, items);
    json_t *out = info ? adm_entity_view(info, "appId") : json_pack("{s:s,s:n}", "appId", app,
                                                                    "customerId");
    if (info != NULL)
        adm_set_etag(resp, info);
    json_decref(info);
    json_object_set_new(out, "certificates", items);
    json_object_set_new(out, "rotations", rots);
    adm_send_json(resp, 200, out);
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
void adm_events(const cg_admin_cfg_t *cfg, cg_store_t *st, cg_admin_req_t *req,
                cg_admin_resp_t *resp)
{
    static const char *const filters[][2] = {
        { "action", "action" }, { "appId", "app_id" }, { "customerId", "customer_id" },
        { "certId", "cert_id" }, { "user", "user" },
    };
    enum { NF = sizeof(filters) / sizeof(filters[0]) };
    char key[KEY_MAX], err[200], start[64] = "-", end[32] = "+", count[16], last[48] = "";
    char *from = adm_qparam(req->query, "from"), *to = adm_qparam(req->query, "to");
    char *cursor = adm_qparam(req->query, "cursor"), *limit_s = adm_qparam(req->query, "limit");
    char *want[NF];
    json_t *items = json_array();
    int64_t t, t_from = 0, limit = EVENTS_LIMIT_DEFAULT;
    size_t scanned = 0;
    int cut = 0;

    for (size_t f = 0; f < NF; f++)
        want[f] = adm_qparam(req->query, filters[f][0]);
    if (adm_need(req, resp, CG_ROLE_AUDITOR, "read the audit log") != 0)
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
        adm_errorf(resp, 400, "Request.Invalid", "limit must be 1..%d", EVENTS_MAX);
        goto done;
    }
    cg_key(key, st, CG_K_EVENTS);
    snprintf(count, sizeof(count), "%d", EVENTS_BATCH);
    for (;;) {
        redisReply *r = NULL;
        const char *argv[6] = { "XRANGE", key, start, end, "COUNT", count };
        size_t lens[6];
        for (int i = 0; i < 6; i++)
            lens[i] = strlen(argv[i]);
        cg_store_rc_t rc = cg_store_cmd(st, cfg->timeout_ms, 6, argv, lens, &r, err, sizeof(err));
        rc = cg_registry_outcome(rc, &r, "XRANGE", err, sizeof(err));
        if (rc != CG_STORE_OK) {
            adm_store_fail(resp, rc, err);
            goto done;
        }
        if (r->type != REDIS_REPLY_ARRAY) {
            cg_store_reply_free(r);
            adm_errorf(resp, 500, "Store.Corrupt", "the store key %.200s is not a stream", key);
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
            json_t *h = cg_registry_hash_obj(e->element[1]);
            int match = h != NULL && adm_sees_customer(req, fs(h, "customer_id"));
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
    if (adm_wants_csv(req)) {
        const char *cols[1 + N_EVENT_FIELDS];
        cols[0] = "id";
        for (size_t c = 0; c < N_EVENT_FIELDS; c++)
            cols[c + 1] = EVENT_FIELDS[c][1];
        adm_send_csv(resp, items, cols, 1 + N_EVENT_FIELDS);
    } else {
        adm_send_json(resp, 200, json_pack("{s:O,s:s?}", "items", items, "next",
                                           cut ? last : NULL));
    }
done:
    json_decref(items);
    for (size_t f = 0; f < NF; f++)
        free(want[f]);
    free(from); free(to); free(cursor); free(limit_s);
}
