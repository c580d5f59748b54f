/*
 * Private to the admin API's files (cg_admin*.c): the helpers they share.
 * cg_admin.c: responses, query parameters, roles and tenancy, If-Match,
 *   record loading, audit events, write scripts;
 * cg_admin_route.c: the route table; cg_admin_view.c: JSON views and CSV;
 * cg_admin_upload.c: upload and check; cg_admin_lifecycle.c: transitions
 * and rotations; cg_admin_entity.c: customers and apps; cg_admin_read.c:
 * listing, reading and the audit log; cg_admin_stats.c: usage, store stats
 * and the expiry scan; cg_admin_transfer.c: export and import;
 * cg_admin_console.c: the console's files, whoami, the same-origin rule. Redis keys and scripts live in cg_registry.c.
 */
#ifndef CG_ADMIN_INT_H
#define CG_ADMIN_INT_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <jansson.h>
#include "cg_admin.h"
#include "cg_cert.h"
#include "cg_reg.h"
#include "cg_registry.h"

#define KEY_MAX CG_KEY_MAX
#define PAGE_SIZE_DEFAULT 50
#define PAGE_SIZE_MAX 500
#define EVENTS_MAX 10000
#define REASON_MAX 1000
#define NELEM(a) (sizeof(a) / sizeof((a)[0]))

#define CG_ROLES_ANY (CG_ROLE_DEVELOPER | CG_ROLE_MANAGER | CG_ROLE_SUPPORT | CG_ROLE_AUDITOR)

/* Linked into the server's module: keep these out of its exported symbols. */
#pragma GCC visibility push(hidden)

/* A string field of a record ("" when absent). */
static inline const char *fs(json_t *rec, const char *f)
{
    const char *v = json_string_value(json_object_get(rec, f));
    return v ? v : "";
}

/* An integer field of a record, dflt when absent or not a number. */
static inline int64_t fi(json_t *rec, const char *f, int64_t dflt)
{
    const char *v = json_string_value(json_object_get(rec, f));
    int64_t out;
    if (v == NULL || *v == '\0' || cg_parse_i64(v, strlen(v), &out) != 0)
        return dflt;
    return out;
}

/* ---- responses (cg_admin.c) */
void adm_set_body(cg_admin_resp_t *resp, int status, const char *ctype, char *body);
/* Takes ownership of obj. */
void adm_send_json(cg_admin_resp_t *resp, int status, json_t *obj);
void adm_errorf(cg_admin_resp_t *resp, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void adm_store_error(cg_admin_resp_t *resp, const char *err);
void adm_store_fail(cg_admin_resp_t *resp, cg_store_rc_t rc, const char *err);
/* Answer with a registry failure. */
void adm_fail(cg_admin_resp_t *resp, const cg_registry_fail_t *f);

/* ---- request (cg_admin.c) */
/* URL-decoded query parameter, malloc'd, or NULL when absent. */
char *adm_qparam(const char *query, const char *name);
int adm_wants_csv(const cg_admin_req_t *req);
/* 0 when the user has a role in mask; -1 with 401 or 403 in resp. */
int adm_need(const cg_admin_req_t *req, cg_admin_resp_t *resp, unsigned mask, const char *what);
/* Staff with no customer see every customer. */
int adm_sees_all(const cg_admin_req_t *req);
/* May this user see (or act on) what belongs to customer cust? */
int adm_sees_customer(const cg_admin_req_t *req, const char *cust);
/* A random UUID (37 bytes), or "" when there is no randomness. */
void adm_new_id(char *out);
/* If-Match as the write scripts' condition. 0, or -1 with 400 in resp. */
int adm_if_match(const char *h, char *out, size_t cap, cg_admin_resp_t *resp);

/* ---- records (cg_admin.c); 0 found, 1 absent, -1 error (resp set) */
int adm_load_hash(const cg_admin_cfg_t *cfg, cg_store_t *st, const char *key, json_t **obj,
                  cg_admin_resp_t *resp);
int adm_load_rec(const cg_admin_cfg_t *cfg, cg_store_t *st, const char *id, json_t **rec,
                 cg_admin_resp_t *resp);
/* kind: CG_K_APPINFO or CG_K_CUSTOMER. */
int adm_load_entity(const cg_admin_cfg_t *cfg, cg_store_t *st, const char *kind,
                    const char *id, json_t **obj, cg_admin_resp_t *resp);
/* The app a request names, checked against the user's customer: 0, or -1 (resp set). */
int adm_app_for_user(const cg_admin_cfg_t *cfg, cg_store_t *st, const cg_admin_req_t *req,
                     const char *id, json_t **app, cg_admin_resp_t *resp);
/* Every whole record of an index set; NULL with resp set on failure. */
json_t *adm_load_set(const cg_admin_cfg_t *cfg, cg_store_t *st, const char *setkey,
                     cg_admin_resp_t *resp);
/* The records a listing reads (GET /certs, GET /export): the app's, or all,
 * the app checked like any app the user names. NULL with resp set. */
json_t *adm_load_listing(const cg_admin_cfg_t *cfg, cg_store_t *st, const cg_admin_req_t *req,
                         const char *app, cg_admin_resp_t *resp);
/* A record passes a listing's tenancy, customerId and status filters. */
int adm_listed(const cg_admin_cfg_t *cfg, const cg_admin_req_t *req, json_t *rec,
               const char *cust, const char *status);

/* ---- audit events and writes (cg_admin.c) */
/* Event fields common to every write, as Lua ARGV pairs. */
typedef struct {
    const char *kv[32];
    int n;
    char time[32];
} event_t;

void ev_init(event_t *e, const cg_admin_req_t *req, const char *action);
void ev_add(event_t *e, const char *k, const char *v);
/* A write script whose last ARGV words are its audit event's (args has room). 0, or -1
 * with resp set. */
int adm_run_write(const cg_admin_cfg_t *cfg, cg_store_t *st, const char *script, int nkeys,
                  const char **keys, const char **args, int na, size_t cap, const event_t *ev,
                  const cg_script_error_t *errors, cg_admin_resp_t *resp);

/* ---- views (cg_admin_view.c) */
const char *adm_derived_status(const cg_admin_cfg_t *cfg, json_t *rec, int64_t now, char *buf,
                               size_t cap);
json_t *adm_iso_or_null(int64_t t);
json_t *adm_view(const cg_admin_cfg_t *cfg, json_t *rec, int64_t now);
void adm_set_etag(cg_admin_resp_t *resp, json_t *rec);
/* Send rows (array of objects) as CSV with these columns. */
void adm_send_csv(cg_admin_resp_t *resp, json_t *rows, const char *const *cols, size_t ncols);
json_t *adm_rotation_view(json_t *rot, int64_t now);
/* A customer or app record as the API shows it. */
json_t *adm_entity_view(json_t *rec, const char *idname);

/* ---- uploads (cg_admin_upload.c), shared with imports (cg_admin_transfer.c) */
/* A certificate as sent: its chain, app and customer, and the proof-of-possession key. */
typedef struct {
    STACK_OF(X509) *certs;      /* leaf first */
    char *app, *customer;
    const char *pkey;           /* points into the JSON document; wiped by adm_upload_free */
    size_t pkey_len;
    json_t *doc;                /* the body, when the upload owns it */
} adm_upload_t;

void adm_upload_free(adm_upload_t *u);
/* Read one JSON object of the upload's shape (certificate, chain, appId, customerId,
 * privateKey) as an upload reads its body; obj stays the caller's. 0, or -1 with resp set. */
int adm_upload_from_json(json_t *obj, adm_upload_t *u, const char *code_bad,
                         cg_admin_resp_t *resp);
/* Whose registration it makes: the app's customer, checked against the user. 0 with
 * *owner (malloc'd), or -1 with resp set. */
int adm_upload_owner(const cg_admin_cfg_t *cfg, cg_store_t *st, const cg_admin_req_t *req,
                     const adm_upload_t *u, char **owner, cg_admin_resp_t *resp);
/* The upload policy. 0 with *info filled (free it); 1 refused (*status, *code, msg);
 * -1 store error (resp set). */
int adm_vet_upload(const cg_admin_cfg_t *cfg, cg_store_t *st, const cg_admin_req_t *req,
                   const adm_upload_t *u, const char *owner, cg_cert_info_t *info, int *status,
                   const char **code, char *msg, size_t cap, cg_admin_resp_t *resp);

/* How a vetted certificate is written: an upload, or an import's record. */
typedef struct {
    int import;                 /* CG_LUA_IMPORT (idempotent by fingerprint) or CG_LUA_UPLOAD */
    int dry;                    /* import only: every check, no write */
    const char *id;             /* NULL: a new one */
    const char *status, *status_reason;
    const char *activate_at, *retire_at;    /* Unix seconds, "" for open */
    const char *created, *created_by;       /* NULL: now and the user */
} adm_reg_write_t;

/* Write the registration (one guarded script, one event). 0 written (dry: would be),
 * 1 unchanged (import: the fingerprint is registered to the same app and customer), both
 * with id (CG_ID_MAX + 1 bytes) set; -1 with resp set. */
int adm_write_registration(const cg_admin_cfg_t *cfg, cg_store_t *st, const cg_admin_req_t *req,
                           const adm_upload_t *u, const char *owner, const cg_cert_info_t *info,
                           const adm_reg_write_t *w, char *id, cg_admin_resp_t *resp);

/* ---- handlers, by file */
void adm_upload(const cg_admin_cfg_t *cfg, cg_store_t *st, cg_admin_req_t *req,
                cg_admin_resp_t *resp);
void adm_check(const cg_admin_cfg_t *cfg, cg_store_t *st, cg_admin_req_t *req,
               cg_admin_resp_t *resp);

void adm_transition(const cg_admin_cfg_t *cfg, cg_store_t *st, cg_admin_req_t *req,
                    cg_admin_resp_t *resp, const char *id, const char *action);
void adm_rotation_create(const cg_admin_cfg_t *cfg, cg_store_t *st, cg_admin_req_t *req,
                         cg_admin_resp_t *resp, const char *app);
void adm_rotation_list(const cg_admin_cfg_t *cfg, cg_store_t *st, cg_admin_req_t *req,
                       cg_admin_resp_t *resp, const char *app);
void adm_rotation_cancel(const cg_admin_cfg_t *cfg, cg_store_t *st, cg_admin_req_t *req,
                         cg_admin_resp_t *resp, const char *app, const char *rid);
/* An app's rotations as views; NULL with resp set. */
json_t *adm_load_rotations(const cg_admin_cfg_t *cfg, cg_store_t *st, const char *app,
                           int64_t now, cg_admin_resp_t *resp);

void adm_customer_create(const cg_admin_cfg_t *cfg, cg_store_t *st, cg_admin_req_t *req,
                         cg_admin_resp_t *resp);
void adm_app_create(const cg_admin_cfg_t *cfg, cg_store_t *st, cg_admin_req_t *req,
                    cg_admin_resp_t *resp);
void adm_entity_update(const cg_admin_cfg_t *cfg, cg_store_t *st, cg_admin_req_t *req,
                       cg_admin_resp_t *resp, const char *kind, const char *id);
void adm_entity_list(const cg_admin_cfg_t *cfg, cg_store_t *st, cg_admin_req_t *req,
                     cg_admin_resp_t *resp, const char *kind);
void adm_customer_get(const cg_admin_cfg_t *cfg, cg_store_t *st, cg_admin_req_t *req,
                      cg_admin_resp_t *resp, const char *id);

void adm_list(const cg_admin_cfg_t *cfg, cg_store_t *st, cg_admin_req_t *req,
              cg_admin_resp_t *resp);
void adm_get(const cg_admin_cfg_t *cfg, cg_store_t *st, cg_admin_req_t *req,
             cg_admin_resp_t *resp, const char *id);
void adm_app(const cg_admin_cfg_t *cfg, cg_store_t *st, cg_admin_req_t *req,
             cg_admin_resp_t *resp, const char *app);
void adm_events(const cg_admin_cfg_t *cfg, cg_store_t *st, cg_admin_req_t *req,
                cg_admin_resp_t *resp);

void adm_export(const cg_admin_cfg_t *cfg, cg_store_t *st, cg_admin_req_t *req,
                cg_admin_resp_t *resp);
void adm_import(const cg_admin_cfg_t *cfg, cg_store_t *st, cg_admin_req_t *req,
                cg_admin_resp_t *resp);

/* ---- console (cg_admin_console.c): its files under /console, and GET /whoami. */
void adm_console(cg_admin_req_t *req, cg_admin_resp_t *resp);
void adm_whoami(const cg_admin_cfg_t *cfg, cg_store_t *st, cg_admin_req_t *req,
                cg_admin_resp_t *resp);

/* ---- usage (cg_admin_stats.c): add "usage" to each view in items. */
void adm_attach_usage(const cg_admin_cfg_t *cfg, cg_store_t *st, json_t *items);

#pragma GCC visibility pop

#endif
