/* The admin API's customers and apps: register, change, list, read. */
#include "cg_admin_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NAME_MAX_LEN 200

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
            adm_errorf(resp, 400, "Request.Invalid", "field '%.40s' is unknown, not a string, or "
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
    if (adm_need(req, resp, CG_ROLE_MANAGER, what) != 0)
        return -1;
    if (req->customer != NULL) {
        adm_errorf(resp, 403, "Auth.Forbidden", "only managers without a customer may %s", what);
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
    if (adm_load_entity(cfg, st, kind, id, &rec, resp) != 0) {
        if (resp->body == NULL)
            cg_admin_error(resp, 500, "Internal", "the record could not be read back");
        return;
    }
    adm_set_etag(resp, rec);
    if (location != NULL)
        snprintf(resp->location, sizeof(resp->location), "%s", location);
    adm_send_json(resp, status, adm_entity_view(rec, idname));
    json_decref(rec);
}

void adm_customer_create(const cg_admin_cfg_t *cfg, cg_store_t *st, cg_admin_req_t *req,
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
    cg_key(k_c, st, CG_K_CUSTOMER "%s", id);
    cg_key(k_cs, st, CG_K_CUSTOMERS);
    cg_key(k_ev, st, CG_K_EVENTS);
    cg_key(k_gen, st, CG_K_GEN);
    snprintf(now_s, sizeof(now_s), "%lld", (long long)req->now);
    snprintf(nf_s, sizeof(nf_s), "%d", nf);
    const char *keys[] = { k_c, k_cs, k_ev, k_gen };
    const char *args[4 + 4 + 32] = { id, now_s, req->user, nf_s };
    int na = 4;
    for (int i = 0; i < nf; i++)
        args[na++] = fields[i];
    static const cg_script_error_t errors[] = {
        { "EXISTS", 409, "Customer.Exists", "a customer with that id is already registered" },
        { NULL, 0, NULL, NULL }
    };
    if (adm_run_write(cfg, st, CG_LUA_CUSTOMER_CREATE, 4, keys, args, na, NELEM(args), &ev, errors,
                      resp) == 0) {
        char loc[200];
        snprintf(loc, sizeof(loc), "customers/%s", id);
        send_entity(cfg, st, CG_K_CUSTOMER, id, "customerId", 201, loc, resp);
    }
    json_decref(doc);
}

void adm_app_create(const cg_admin_cfg_t *cfg, cg_store_t *st, cg_admin_req_t *req,
                    cg_admin_resp_t *resp)
{
    static const char *const allowed[] = { "appId", "customerId", "name", NULL };
    if (adm_need(req, resp, CG_ROLE_MANAGER, "register apps") != 0)
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
    if (!adm_sees_customer(req, cust)) {
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
    cg_key(k_a, st, CG_K_APPINFO "%s", app);
    cg_key(k_as, st, CG_K_APPS);
    cg_key(k_c, st, CG_K_CUSTOMER "%s", cust);
    cg_key(k_regs, st, CG_K_APP "%s", app);
    cg_key(k_ev, st, CG_K_EVENTS);
    cg_key(k_gen, st, CG_K_GEN);
    cg_key(chan, st, CG_K_INVALIDATE);
    cg_key(regp, st, CG_K_REG);
    snprintf(now_s, sizeof(now_s), "%lld", (long long)req->now);
    const char *keys[] = { k_a, k_as, k_c, k_regs, k_ev, k_gen };
    const char *args[10 + 32] = { app, cust, now_s, req->user, chan, regp,
                                  adm_sees_all(req) ? "1" : "0", name ? "2" : "0", "name", name };
    int na = name ? 10 : 8;
    static const cg_script_error_t errors[] = {
        { "EXISTS", 409, "App.Exists", "an app with that id is already registered" },
        { "NOCUSTOMER", 404, "Customer.NotFound",
          "no such customer; register it first with POST /customers" },
        { "CONFLICT", 409, "App.Conflict", "registrations %s of this app belong to other "
          "customers; decline or inactivate them first" },
        { "OTHERS", 409, "App.Conflict", "the app id already has registrations of another "
          "customer or of none; a manager without a customer must register it" },
        { NULL, 0, NULL, NULL }
    };
    if (adm_run_write(cfg, st, CG_LUA_APP_CREATE, 6, keys, args, na, NELEM(args), &ev, errors,
                      resp) == 0) {
        char loc[200];
        snprintf(loc, sizeof(loc), "apps/%s", app);
        send_entity(cfg, st, CG_K_APPINFO, app, "appId", 201, loc, resp);
    }
    json_decref(doc);
}

/* PATCH a customer (name, organization) or an app (name). */
void adm_entity_update(const cg_admin_cfg_t *cfg, cg_store_t *st, cg_admin_req_t *req,
                       cg_admin_resp_t *resp, const char *kind, const char *id)
{
    static const char *const customer_fields[] = { "name", "organization", NULL };
    static const char *const app_fields[] = { "name", "customerId", "appId", NULL };
    int is_app = strcmp(kind, CG_K_APPINFO) == 0;
    const char *idname = is_app ? "appId" : "customerId";
    json_t *doc = NULL, *rec = NULL;
    char cond[256];
    if (is_app ? adm_need(req, resp, CG_ROLE_MANAGER, "change apps")
               : need_staff_manager(req, resp, "change customers"))
        return;
    if ((doc = entity_body(req, is_app ? app_fields : customer_fields, resp)) == NULL)
        return;
    if (adm_if_match(req->if_match, cond, sizeof(cond), resp) != 0)
        goto done;
    if (is_app) {
        if (adm_app_for_user(cfg, st, req, id, &rec, resp) != 0)
            goto done;
    } else {
        int lr = adm_load_entity(cfg, st, kind, id, &rec, resp);
        if (lr < 0)
            goto done;
        if (lr > 0 || !adm_sees_customer(req, id)) {
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
    cg_key(k_r, st, "%s%s", kind, id);
    cg_key(k_ev, st, CG_K_EVENTS);
    cg_key(k_gen, st, CG_K_GEN);
    snprintf(now_s, sizeof(now_s), "%lld", (long long)req->now);
    snprintf(nf_s, sizeof(nf_s), "%d", nf);
    const char *keys[] = { k_r, k_ev, k_gen };
    const char *args[4 + 4 + 32] = { cond, now_s, req->user, nf_s };
    int na = 4;
    for (int i = 0; i < nf; i++)
        args[na++] = fields[i];
    static const cg_script_error_t errors[] = {
        { "PRECONDITION", 412, "Precondition.Failed",
          "the record changed since your If-Match version; read it again" },
        { "NOTFOUND", 404, "Route.NotFound", "the record is gone" },
        { NULL, 0, NULL, NULL }
    };
    if (adm_run_write(cfg, st, CG_LUA_ENTITY_UPDATE, 3, keys, args, na, NELEM(args), &ev, errors,
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
void adm_entity_list(const cg_admin_cfg_t *cfg, cg_store_t *st, cg_admin_req_t *req,
                     cg_admin_resp_t *resp, const char *kind)
{
    int is_app = strcmp(kind, CG_K_APPINFO) == 0;
    char setkey[KEY_MAX], err[200];
    redisReply *r = NULL;
    char *cust = adm_qparam(req->query, "customerId");
    json_t *items = json_array();
    if (adm_need(req, resp, CG_ROLE_DEVELOPER | CG_ROLE_MANAGER | CG_ROLE_SUPPORT | CG_ROLE_AUDITOR,
                 is_app ? "read apps" : "read customers") != 0)
        goto done;
    cg_key(setkey, st, "%s", is_app ? CG_K_APPS : CG_K_CUSTOMERS);
    cg_store_rc_t rc = cg_registry_cmd2(st, cfg->timeout_ms, "SMEMBERS", setkey, &r, err,
                                        sizeof(err));
    rc = cg_registry_outcome(rc, &r, "SMEMBERS", err, sizeof(err));
    if (rc != CG_STORE_OK) {
        adm_store_fail(resp, rc, err);
        goto done;
    }
    if (r->type != REDIS_REPLY_ARRAY) {
        adm_errorf(resp, 500, "Store.Corrupt", "the store key %.200s is damaged", setkey);
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
        cg_key(keys[nk], st, "%s%.*s", kind, (int)e->len, e->str);
        nk++;
    }
    if (!ok) {
        cg_admin_error(resp, 500, "Internal", "out of memory");
    } else if (nk > 0 && cg_store_hgetall_many(st, cfg->timeout_ms, (const char *const *)keys,
                                               nk, hs, err, sizeof(err)) != CG_STORE_OK) {
        adm_store_error(resp, err);
        ok = 0;
    } else {
        for (size_t i = 0; i < nk; i++) {
            cg_store_rc_t k = cg_registry_outcome(CG_STORE_OK, &hs[i], "HGETALL", err, sizeof(err));
            if (k != CG_STORE_OK && ok) {
                adm_store_fail(resp, k, err);
                ok = 0;
            }
            json_t *o = ok ? cg_registry_hash_obj(hs[i]) : NULL;
            const char *owner = o ? (is_app ? fs(o, "customer_id") : fs(o, "id")) : "";
            if (o != NULL && json_object_get(o, "version") != NULL &&
                adm_sees_customer(req, owner) && (cust == NULL || strcmp(cust, owner) == 0))
                sel[m++] = o;
            else
                json_decref(o);
            cg_store_reply_free(hs[i]);
        }
        qsort(sel, m, sizeof(json_t *), by_id);
        for (size_t i = 0; i < m; i++) {
            json_array_append_new(items, adm_entity_view(sel[i], is_app ? "appId" : "customerId"));
            json_decref(sel[i]);
        }
    }
    for (size_t i = 0; keys && i < nk; i++)
        free(keys[i]);
    free(keys);
    free(hs);
    free(sel);
    if (ok) {
        adm_send_json(resp, 200, json_pack("{s:O}", "items", items));
    }
done:
    cg_store_reply_free(r);
    json_decref(items);
    free(cust);
}

/* GET /customers/{id} */
void adm_customer_get(const cg_admin_cfg_t *cfg, cg_store_t *st, cg_admin_req_t *req,
                      cg_admin_resp_t *resp, const char *id)
{
    json_t *rec = NULL;
    if (adm_need(req, resp, CG_ROLE_DEVELOPER | CG_ROLE_MANAGER | CG_ROLE_SUPPORT | CG_ROLE_AUDITOR,
                 "read customers") != 0)
        return;
    int lr = adm_load_entity(cfg, st, CG_K_CUSTOMER, id, &rec, resp);
    if (lr < 0)
        return;
    if (lr > 0 || !adm_sees_customer(req, id)) {
        cg_admin_error(resp, 404, "Customer.NotFound", "no customer with that id");
    } else {
        adm_set_etag(resp, rec);
        adm_send_json(resp, 200, adm_entity_view(rec, "customerId"));
    }
    json_decref(rec);
}
