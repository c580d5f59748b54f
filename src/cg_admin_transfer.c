/* The admin API's export (GET /export) and import (POST /import) of
 * registrations: an export an import takes back, each record through the
 * upload's reading, owner check and policy, then one guarded write. */
#include "cg_admin_int.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define IMPORT_ITEMS_MAX 1000

/* ------------------------------------------------------------ export */

static int by_created_asc(const void *a, const void *b)
{
    json_t *x = *(json_t *const *)a, *y = *(json_t *const *)b;
    int64_t cx = fi(x, "created", 0), cy = fi(y, "created", 0);
    if (cx != cy)
        return cx < cy ? -1 : 1;
    return strcmp(fs(x, "id"), fs(y, "id"));
}

/* Split the stored PEM (leaf, then chain) after the leaf's END line. 0, or -1
 * when it does not look like what an upload stores. */
static int split_pem(const char *pem, json_t **leaf, json_t **chain)
{
    static const char end[] = "-----END CERTIFICATE-----";
    const char *e = strstr(pem, end);
    if (strncmp(pem, "-----BEGIN CERTIFICATE-----", 27) != 0 || e == NULL)
        return -1;
    e += sizeof(end) - 1;
    if (*e == '\r')
        e++;
    if (*e == '\n')
        e++;
    *leaf = json_stringn(pem, (size_t)(e - pem));
    *chain = json_string(e);
    return *leaf && *chain ? 0 : -1;
}

static json_t *export_item(json_t *rec)
{
    json_t *leaf = NULL, *chain = NULL;
    if (split_pem(fs(rec, "pem"), &leaf, &chain) != 0) {
        json_decref(leaf);
        json_decref(chain);
        return NULL;
    }
    return json_pack("{s:s,s:s,s:s,s:s,s:s,s:o,s:o,s:s,s:o,s:o,s:s,s:o,s:s,s:o,s:s}",
                     "id", fs(rec, "id"),
                     "appId", fs(rec, "app_id"),
                     "customerId", fs(rec, "customer_id"),
                     "fingerprint", fs(rec, "fingerprint"),
                     "status", fs(rec, "status"),
                     "activateAt", adm_iso_or_null(fi(rec, "activate_at", INT64_MIN)),
                     "retireAt", adm_iso_or_null(fi(rec, "retire_at", INT64_MIN)),
                     "statusReason", fs(rec, "status_reason"),
                     "certificate", leaf,
                     "chain", chain,
                     "createdBy", fs(rec, "created_by"),
                     "created", adm_iso_or_null(fi(rec, "created", INT64_MIN)),
                     "updatedBy", fs(rec, "updated_by"),
                     "updated", adm_iso_or_null(fi(rec, "updated", INT64_MIN)),
                     "commonName", fs(rec, "common_name"));
}

void adm_export(const cg_admin_cfg_t *cfg, cg_store_t *st, cg_admin_req_t *req,
                cg_admin_resp_t *resp)
{
    char *app = adm_qparam(req->query, "appId"), *cust = adm_qparam(req->query, "customerId");
    char *status = adm_qparam(req->query, "status");
    json_t *recs = NULL;
    json_t **sel = NULL;

    if (adm_need(req, resp, CG_ROLES_ANY, "export certificates") != 0)
        goto done;
    /* Tenancy and filters as GET /certs. */
    if ((recs = adm_load_listing(cfg, st, req, app, resp)) == NULL)
        goto done;
    size_t n = json_array_size(recs), m = 0;
    if ((sel = calloc(n ? n : 1, sizeof(json_t *))) == NULL) {
        cg_admin_error(resp, 500, "Internal", "out of memory");
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        json_t *rec = json_array_get(recs, i);
        if (adm_listed(cfg, req, rec, cust, status))
            sel[m++] = rec;
    }
    /* Oldest first: an import then registers them in their original order. */
    qsort(sel, m, sizeof(json_t *), by_created_asc);
    json_t *items = json_array(), *skipped = json_array();
    for (size_t i = 0; i < m; i++) {
        json_t *it = export_item(sel[i]);
        if (it != NULL) {
            json_array_append_new(items, it);
            continue;
        }
        /* Registered before the certificate was kept: say so, invent nothing. */
        json_array_append_new(skipped, json_pack(
            "{s:s,s:s,s:s,s:s,s:s,s:s}", "id", fs(sel[i], "id"), "appId", fs(sel[i], "app_id"),
            "customerId", fs(sel[i], "customer_id"), "fingerprint", fs(sel[i], "fingerprint"),
            "code", "Export.NoCertificate",
            "message", "the registration does not keep its certificate (registered before "
                       "certificates were stored); upload it again to make it exportable"));
    }
    char now_s[32];
    cg_time_iso(req->now, now_s, sizeof(now_s));
    adm_send_json(resp, 200, json_pack("{s:s,s:I,s:o,s:o}", "exported", now_s,
                                       "count", (json_int_t)json_array_size(items),
                                       "items", items, "skipped", skipped));
done:
    free(sel);
    json_decref(recs);
    free(app);
    free(cust);
    free(status);
}

/* ------------------------------------------------------------ import */

typedef struct {
    char code[64];
    char message[600];
    int status;
} item_err_t;

/* The error an upload helper left in a scratch response, as a record's error. */
static void err_from_resp(cg_admin_resp_t *r, item_err_t *e)
{
    json_t *j = r->body ? json_loadb(r->body, r->body_len, 0, NULL) : NULL;
    const char *c = json_string_value(json_object_get(j, "code"));
    const char *m = json_string_value(json_object_get(j, "message"));
    snprintf(e->code, sizeof(e->code), "%s", c ? c : "Internal");
    snprintf(e->message, sizeof(e->message), "%s", m ? m : "failed");
    e->status = r->status;
    json_decref(j);
    cg_admin_resp_free(r);
    memset(r, 0, sizeof(*r));
}

static void errset(item_err_t *e, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void errset(item_err_t *e, const char *code, const char *fmt, ...)
{
    va_list ap;
    snprintf(e->code, sizeof(e->code), "%s", code);
    e->status = 400;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof(e->message), fmt, ap);
    va_end(ap);
}

/* An optional ISO time of an item as Unix seconds in out ("" when null or absent).
 * 0, or -1 when it is neither. */
static int item_time(json_t *item, const char *name, char *out, size_t cap)
{
    json_t *v = json_object_get(item, name);
    int64_t t;
    out[0] = '\0';
    if (v == NULL || json_is_null(v))
        return 0;
    if (!json_is_string(v) || cg_time_parse_iso(json_string_value(v), &t) != 0)
        return -1;
    snprintf(out, cap, "%lld", (long long)t);
    return 0;
}

/* An optional string of an item: NULL when absent or null; -1 when not a string. */
static int item_str(json_t *item, const char *name, const char **out)
{
    json_t *v = json_object_get(item, name);
    *out = NULL;
    if (v == NULL || json_is_null(v))
        return 0;
    if (!json_is_string(v))
        return -1;
    *out = json_string_value(v);
    return 0;
}

/* What an item asks for beyond the upload's fields. */
typedef struct {
    const char *id;
    adm_reg_write_t w;
    char activate[24], retire[24], created[24];
} item_opts_t;

static int item_options(json_t *item, int keep, item_opts_t *o, item_err_t *e)
{
    const char *fp = NULL, *status = NULL, *reason = NULL, *by = NULL;
    memset(o, 0, sizeof(*o));
    o->w.import = 1;
    o->w.status = "PENDING";
    o->w.status_reason = "";
    o->w.activate_at = o->w.retire_at = "";
    if (item_str(item, "id", &o->id) != 0 || item_str(item, "fingerprint", &fp) != 0 ||
        item_str(item, "status", &status) != 0 || item_str(item, "statusReason", &reason) != 0 ||
        item_str(item, "createdBy", &by) != 0) {
        errset(e, "Import.Invalid", "id, fingerprint, status, statusReason and createdBy must "
               "be strings");
        return -1;
    }
    if (o->id != NULL && !cg_id_valid(o->id, strlen(o->id))) {
        errset(e, "Import.Invalid", "id must be 1-64 characters of A-Z a-z 0-9 . _ -");
        return -1;
    }
    o->w.id = o->id;
    if (!keep)
        return 0;
    /* keepStatus: the record comes back as it was exported. */
    cg_status_t st;
    if (status == NULL || cg_status_parse(status, strlen(status), &st) != 0) {
        errset(e, "Import.Invalid", "with keepStatus, status must be PENDING, APPROVED, DECLINED "
               "or INACTIVATED");
        return -1;
    }
    o->w.status = cg_status_name(st);
    if (reason != NULL && strlen(reason) > REASON_MAX) {
        errset(e, "Import.Invalid", "statusReason is longer than %d bytes", REASON_MAX);
        return -1;
    }
    o->w.status_reason = reason ? reason : "";
    if (item_time(item, "activateAt", o->activate, sizeof(o->activate)) != 0 ||
        item_time(item, "retireAt", o->retire, sizeof(o->retire)) != 0 ||
        item_time(item, "created", o->created, sizeof(o->created)) != 0) {
        errset(e, "Import.Invalid", "activateAt, retireAt and created must be null or ISO 8601 "
               "UTC times like 2025-06-25T08:59:38Z");
        return -1;
    }
    o->w.activate_at = o->activate;
    o->w.retire_at = o->retire;
    if (o->created[0] != '\0')
        o->w.created = o->created;
    if (by != NULL && *by != '\0') {
        char canon[CG_USER_MAX + 1];
        if (cg_admin_user_canon(by, 0, canon, sizeof(canon)) == NULL) {
            errset(e, "Import.Invalid", "createdBy is not a user name");
            return -1;
        }
        o->w.created_by = by;
    }
    return 0;
}

/* In a dry run, what earlier items of the same request would have written. */
typedef struct {
    json_t *fps;        /* fingerprint -> "app customer id" */
    json_t *ids;        /* id -> true */
} dry_seen_t;

/*
 * One item: read, owner, policy, then the write (or, dry, the script's checks).
 * 0 created, 1 unchanged (id set), -1 error (e set). *fatal when the store
 * stopped answering: the rest is not tried.
 */
static int import_one(const cg_admin_cfg_t *cfg, cg_store_t *st, const cg_admin_req_t *req,
                      json_t *item, int dry, int keep, dry_seen_t *seen, char *hex, char *id,
                      item_err_t *e, int *fatal)
{
    cg_admin_resp_t r;
    adm_upload_t u;
    item_opts_t o;
    cg_cert_info_t info;
    char *owner = NULL;
    char msg[600];
    const char *code = NULL;
    int rc = -1, status;

    memset(&r, 0, sizeof(r));
    hex[0] = id[0] = '\0';
    if (adm_upload_from_json(item, &u, "Upload.Certificate.Invalid", &r) != 0) {
        err_from_resp(&r, e);
        goto done;
    }
    cg_fp_t fp;
    if (cg_fp_x509(sk_X509_value(u.certs, 0), &fp) != 0) {
        errset(e, "Certificate.Invalid", "the certificate cannot be hashed");
        goto done;
    }
    cg_fp_to_hex(&fp, hex);
    if (item_options(item, keep, &o, e) != 0)
        goto done;
    const char *want = json_string_value(json_object_get(item, "fingerprint"));
    if (want != NULL && strcasecmp(want, hex) != 0) {
        errset(e, "Import.FingerprintMismatch", "fingerprint is not the certificate's SHA-256");
        goto done;
    }
    if (adm_upload_owner(cfg, st, req, &u, &owner, &r) != 0) {
        err_from_resp(&r, e);
        goto done;
    }
    int v = adm_vet_upload(cfg, st, req, &u, owner, &info, &status, &code, msg, sizeof(msg), &r);
    if (v < 0) {
        err_from_resp(&r, e);
        goto done;
    }
    if (v > 0) {
        snprintf(e->code, sizeof(e->code), "%s", code);
        e->status = status;
        snprintf(e->message, sizeof(e->message), "%s", msg);
        goto done;
    }
    /* A dry run writes nothing, so the store cannot see an earlier item of the
     * same request: answer for it as the write would. */
    if (dry) {
        const char *prev = json_string_value(json_object_get(seen->fps, hex));
        char mine[2 * CG_APP_MAX + CG_ID_MAX + 4];
        snprintf(mine, sizeof(mine), "%s %s ", u.app, owner);
        if (prev != NULL) {
            size_t ml = strlen(mine);
            if (strncmp(prev, mine, ml) == 0) {
                snprintf(id, CG_ID_MAX + 1, "%s", prev + ml);
                rc = 1;
            } else {
                errset(e, "Certificate.Duplicate", "this certificate is already registered");
                e->status = 409;
            }
            cg_cert_info_free(&info);
            goto done;
        }
        if (o.id != NULL && json_object_get(seen->ids, o.id) != NULL) {
            errset(e, "Import.IdExists", "another registration has this id");
            e->status = 409;
            cg_cert_info_free(&info);
            goto done;
        }
    }
    o.w.dry = dry;
    rc = adm_write_registration(cfg, st, req, &u, owner, &info, &o.w, id, &r);
    cg_cert_info_free(&info);
    if (rc < 0) {
        err_from_resp(&r, e);
        goto done;
    }
    if (dry && rc == 0) {
        /* The id a dry run drew is not the one a real import will draw. */
        if (o.id == NULL)
            id[0] = '\0';
        char val[2 * CG_APP_MAX + CG_ID_MAX + 4];
        snprintf(val, sizeof(val), "%s %s %s", u.app, owner, id);
        json_object_set_new(seen->fps, hex, json_string(val));
        if (o.id != NULL)
            json_object_set_new(seen->ids, o.id, json_true());
    }
done:
    if (rc < 0 && e->status == 503)
        *fatal = 1;
    free(owner);
    adm_upload_free(&u);
    cg_admin_resp_free(&r);
    return rc;
}

void adm_import(const cg_admin_cfg_t *cfg, cg_store_t *st, cg_admin_req_t *req,
                cg_admin_resp_t *resp)
{
    char *dry_s = adm_qparam(req->query, "dryRun"), *keep_s = adm_qparam(req->query, "keepStatus");
    json_t *doc = NULL, *results = NULL;
    dry_seen_t seen = { json_object(), json_object() };
    size_t created = 0, unchanged = 0, errors = 0;

    if (adm_need(req, resp, CG_ROLE_DEVELOPER | CG_ROLE_MANAGER, "import certificates") != 0)
        goto done;
    int dry = 0, keep = 0;
    if ((dry_s && strcmp(dry_s, "1") != 0 && strcmp(dry_s, "0") != 0 &&
         strcmp(dry_s, "true") != 0 && strcmp(dry_s, "false") != 0) ||
        (keep_s && strcmp(keep_s, "1") != 0 && strcmp(keep_s, "0") != 0 &&
         strcmp(keep_s, "true") != 0 && strcmp(keep_s, "false") != 0)) {
        cg_admin_error(resp, 400, "Request.Invalid", "dryRun and keepStatus are 1 or 0");
        goto done;
    }
    dry = dry_s && (strcmp(dry_s, "1") == 0 || strcmp(dry_s, "true") == 0);
    keep = keep_s && (strcmp(keep_s, "1") == 0 || strcmp(keep_s, "true") == 0);
    /* Statuses are a manager's decision over every customer: never a developer's. */
    if (keep && ((req->roles & CG_ROLE_MANAGER) == 0 || req->customer != NULL)) {
        cg_admin_error(resp, 403, "Auth.Forbidden",
                       "keepStatus is for managers without a customer; others import as PENDING");
        goto done;
    }
    if (req->customer == NULL && !adm_sees_all(req)) {
        cg_admin_error(resp, 403, "Auth.NoCustomer",
                       "no customer is configured for this developer (CertGateAdminCustomer)");
        goto done;
    }
    if (req->content_type != NULL && strncasecmp(req->content_type, "application/json", 16) != 0) {
        cg_admin_error(resp, 415, "Request.Invalid", "send application/json");
        goto done;
    }
    json_error_t je;
    doc = req->body_len ? json_loadb((const char *)req->body, req->body_len,
                                     JSON_REJECT_DUPLICATES, &je) : NULL;
    json_t *items = json_object_get(doc, "items");
    if (!json_is_array(items)) {
        adm_errorf(resp, 400, "Request.Invalid", "the body must be {\"items\":[...]}%s%.200s",
                   doc ? "" : ": ", doc ? "" : req->body_len ? je.text : "empty body");
        goto done;
    }
    if (json_array_size(items) > IMPORT_ITEMS_MAX) {
        adm_errorf(resp, 400, "Request.Invalid", "at most %d items per request; send batches",
                   IMPORT_ITEMS_MAX);
        goto done;
    }
    if (seen.fps == NULL || seen.ids == NULL || (results = json_array()) == NULL) {
        cg_admin_error(resp, 500, "Internal", "out of memory");
        goto done;
    }
    int fatal = 0;
    char fatal_msg[64] = "";
    size_t i;
    json_t *item;
    json_array_foreach(items, i, item) {
        char hex[CG_FP_HEX_LEN + 1], id[CG_ID_MAX + 1];
        item_err_t e = { "", "", 0 };
        int rc;
        if (fatal) {
            hex[0] = id[0] = '\0';
            rc = -1;
            snprintf(e.code, sizeof(e.code), "Store.Unavailable");
            e.status = 503;
            snprintf(e.message, sizeof(e.message), "not tried: %s", fatal_msg);
        } else {
            rc = import_one(cfg, st, req, item, dry, keep, &seen, hex, id, &e, &fatal);
            if (fatal)
                snprintf(fatal_msg, sizeof(fatal_msg), "the store failed at item %zu", i);
        }
        const char *outcome = rc == 0 ? "created" : rc == 1 ? "unchanged" : "error";
        if (rc == 0)
            created++;
        else if (rc == 1)
            unchanged++;
        else
            errors++;
        json_array_append_new(results, json_pack("{s:I,s:s?,s:s,s:s?,s:s?,s:s?}",
                                                 "index", (json_int_t)i,
                                                 "fingerprint", hex[0] ? hex : NULL,
                                                 "outcome", outcome,
                                                 "code", rc < 0 ? e.code : NULL,
                                                 "message", rc < 0 ? e.message : NULL,
                                                 "id", rc >= 0 && id[0] ? id : NULL));
    }
    adm_send_json(resp, 200, json_pack("{s:b,s:b,s:I,s:I,s:I,s:o}", "dryRun", dry,
                                       "keepStatus", keep, "created", (json_int_t)created,
                                       "unchanged", (json_int_t)unchanged,
                                       "errors", (json_int_t)errors, "results", results));
    results = NULL;
done:
    json_decref(results);
    json_decref(seen.fps);
    json_decref(seen.ids);
    json_decref(doc);
    free(dry_s);
    free(keep_s);
}
