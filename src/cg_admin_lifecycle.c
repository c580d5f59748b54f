/* The admin API's lifecycle: approve, decline and inactivate, and rotation
 * cutovers (schedule, list, cancel). */
#include "cg_admin_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ------------------------------------------------------------ transitions */

void adm_transition(const cg_admin_cfg_t *cfg, cg_store_t *st, cg_admin_req_t *req,
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
    if (adm_need(req, resp, CG_ROLE_MANAGER, verb) != 0)
        return;
    const char *reason = "";
    if (req->body_len > 0) {
        json_error_t je;
        doc = json_loadb((const char *)req->body, req->body_len, JSON_REJECT_DUPLICATES, &je);
        json_t *jr = doc ? json_object_get(doc, "reason") : NULL;
        if (doc == NULL || !json_is_object(doc) || (jr != NULL && !json_is_string(jr))) {
            adm_errorf(resp, 400, "Request.Invalid", "the body must be a JSON object like "
                       "{\"reason\":\"...\"}");
            goto done;
        }
        reason = jr ? json_string_value(jr) : "";
    }
    if (reason_required && reason[0] == '\0') {
        adm_errorf(resp, 400, "Transition.ReasonRequired",
                   "%s needs a reason: {\"reason\":\"...\"}", verb);
        goto done;
    }
    if (strlen(reason) > REASON_MAX) {
        adm_errorf(resp, 400, "Request.Invalid", "the reason is longer than %d bytes", REASON_MAX);
        goto done;
    }
    char cond[256];
    if (adm_if_match(req->if_match, cond, sizeof(cond), resp) != 0)
        goto done;
    int lr = adm_load_rec(cfg, st, id, &rec, resp);
    if (lr < 0)
        goto done;
    if (lr > 0 || !adm_sees_customer(req, fs(rec, "customer_id"))) {
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
    cg_key(k_reg, st, CG_K_REG "%s", id);
    cg_key(k_ev, st, CG_K_EVENTS);
    cg_key(k_gen, st, CG_K_GEN);
    cg_key(chan, st, CG_K_INVALIDATE);
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
    const cg_script_error_t transition_errors[] = {
        { "PRECONDITION", 412, "Precondition.Failed",
          "the record changed since your If-Match version; read it again" },
        { "CONFLICT", 409, "Transition.Illegal", illegal },
        { "NOTFOUND", 404, "Certificate.NotFound", "no registration with that id" },
        { NULL, 0, NULL, NULL }
    };
    if (adm_run_write(cfg, st, CG_LUA_TRANSITION, 3, keys, args, na, NELEM(args), &ev,
                      transition_errors, resp) != 0)
        goto done;
    json_decref(rec);
    rec = NULL;
    if (adm_load_rec(cfg, st, id, &rec, resp) != 0)
        goto done;
    adm_set_etag(resp, rec);
    adm_send_json(resp, 200, adm_view(cfg, rec, req->now));
done:
    json_decref(rec);
    json_decref(doc);
}

/* ------------------------------------------------------------ rotations */

void adm_rotation_create(const cg_admin_cfg_t *cfg, cg_store_t *st, cg_admin_req_t *req,
                         cg_admin_resp_t *resp, const char *app)
{
    json_t *doc = NULL, *recs = NULL;
    char err[200], key[KEY_MAX];
    int64_t act, ret;
    const char *old_id = NULL;

    json_t *appinfo = NULL;
    if (adm_need(req, resp, CG_ROLE_SUPPORT, "schedule rotations") != 0)
        return;
    if (adm_app_for_user(cfg, st, req, app, &appinfo, resp) != 0)
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
        cg_key(key, st, CG_K_APP "%s", app);
        if ((recs = adm_load_set(cfg, st, key, resp)) == NULL)
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
            adm_errorf(resp, 400, "Rotation.OldCertRequired", "the app has %zu approved "
                       "certificates that could be the old one; name it in oldCertId", found);
            goto done;
        }
    }
    if (!cg_id_valid(old_id, strlen(old_id)) || strcmp(old_id, new_cert) == 0) {
        cg_admin_error(resp, 400, "Rotation.Invalid", "oldCertId must name another registration");
        goto done;
    }
    char rid[40], k_new[KEY_MAX], k_old[KEY_MAX], k_rot[KEY_MAX], k_rots[KEY_MAX], k_ev[KEY_MAX],
        k_gen[KEY_MAX], k_app[KEY_MAX], chan[KEY_MAX], act_s[24], ret_s[24], now_s[24];
    cg_key(k_app, st, CG_K_APPINFO "%s", app);
    adm_new_id(rid);
    if (rid[0] == '\0') {
        cg_admin_error(resp, 500, "Internal", "no randomness for an id");
        goto done;
    }
    cg_key(k_new, st, CG_K_REG "%s", new_cert);
    cg_key(k_old, st, CG_K_REG "%s", old_id);
    cg_key(k_rot, st, CG_K_ROTATION "%s", rid);
    cg_key(k_rots, st, CG_K_ROTATIONS "%s", app);
    cg_key(k_ev, st, CG_K_EVENTS);
    cg_key(k_gen, st, CG_K_GEN);
    cg_key(chan, st, CG_K_INVALIDATE);
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
    static const cg_script_error_t rotate_errors[] = {
        { "NOTFOUND", 404, "Certificate.NotFound", "newCertId or oldCertId does not exist" },
        { "NOTINAPP", 400, "Rotation.CertNotInApp",
          "both certificates must be registered to this app and its customer" },
        { "NEWNOTAPPROVED", 409, "Rotation.NewCertNotApproved",
          "the new certificate must be APPROVED before a cutover is scheduled" },
        { "OLDNOTAPPROVED", 409, "Rotation.OldCertNotApproved",
          "the old certificate is not APPROVED: there is nothing to rotate out" },
        { NULL, 0, NULL, NULL }
    };
    if (adm_run_write(cfg, st, CG_LUA_ROTATE, 7, keys, args, na, NELEM(args), &ev, rotate_errors,
                      resp) != 0)
        goto done;
    {
        redisReply *rr = NULL;
        if (cg_registry_cmd2(st, cfg->timeout_ms, "HGETALL", k_rot, &rr, err,
                             sizeof(err)) != CG_STORE_OK) {
            adm_store_error(resp, err);
            goto done;
        }
        json_t *o = cg_registry_hash_obj(rr);
        cg_store_reply_free(rr);
        if (o == NULL) {
            cg_admin_error(resp, 500, "Store.Corrupt", "the rotation could not be read back");
            goto done;
        }
        snprintf(resp->location, sizeof(resp->location), "apps/%s/rotations/%s", app, rid);
        adm_send_json(resp, 201, adm_rotation_view(o, req->now));
        json_decref(o);
    }
done:
    json_decref(recs);
    json_decref(doc);
    json_decref(appinfo);
}

json_t *adm_load_rotations(const cg_admin_cfg_t *cfg, cg_store_t *st, const char *app,
                           int64_t now, cg_admin_resp_t *resp)
{
    char key[KEY_MAX], err[200];
    redisReply *r = NULL;
    cg_key(key, st, CG_K_ROTATIONS "%s", app);
    const char *argv[4] = { "ZRANGE", key, "0", "-1" };
    size_t lens[4] = { 6, strlen(key), 1, 2 };
    cg_store_rc_t rc = cg_store_cmd(st, cfg->timeout_ms, 4, argv, lens, &r, err, sizeof(err));
    rc = cg_registry_outcome(rc, &r, "ZRANGE", err, sizeof(err));
    if (rc != CG_STORE_OK) {
        adm_store_fail(resp, rc, err);
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
                cg_key(keys[nk], st, CG_K_ROTATION "%.*s", (int)e->len, e->str);
                nk++;
            }
        }
        if (keys && hs && cg_store_hgetall_many(st, cfg->timeout_ms, (const char *const *)keys,
                                                nk, hs, err, sizeof(err)) == CG_STORE_OK) {
            for (size_t i = 0; i < nk; i++) {
                json_t *o = cg_registry_hash_obj(hs[i]);
                if (o != NULL && json_object_size(o) > 0)
                    json_array_append_new(out, adm_rotation_view(o, now));
                json_decref(o);
                cg_store_reply_free(hs[i]);
            }
        } else {
            adm_store_error(resp, err);
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

/* GET /apps/{app}/rotations */
void adm_rotation_list(const cg_admin_cfg_t *cfg, cg_store_t *st, cg_admin_req_t *req,
                       cg_admin_resp_t *resp, const char *app)
{
    json_t *a = NULL;
    if (adm_need(req, resp, CG_ROLE_SUPPORT | CG_ROLE_MANAGER | CG_ROLE_AUDITOR,
                 "read rotations") == 0 &&
        (adm_sees_all(req) || adm_app_for_user(cfg, st, req, app, &a, resp) == 0)) {
        json_t *rots = adm_load_rotations(cfg, st, app, req->now, resp);
        if (rots != NULL)
            adm_send_json(resp, 200, json_pack("{s:s,s:o}", "appId", app, "items", rots));
    }
    json_decref(a);
}

void adm_rotation_cancel(const cg_admin_cfg_t *cfg, cg_store_t *st, cg_admin_req_t *req,
                         cg_admin_resp_t *resp, const char *app, const char *rid)
{
    char err[200], k_rot[KEY_MAX], k_new[KEY_MAX], k_old[KEY_MAX], k_ev[KEY_MAX], k_gen[KEY_MAX],
        chan[KEY_MAX], now_s[24];
    redisReply *r = NULL;
    json_t *appinfo = NULL;
    if (adm_need(req, resp, CG_ROLE_SUPPORT, "cancel rotations") != 0)
        return;
    if (adm_app_for_user(cfg, st, req, app, &appinfo, resp) != 0)
        return;
    char owner[CG_APP_MAX + 1];
    snprintf(owner, sizeof(owner), "%s", fs(appinfo, "customer_id"));
    json_decref(appinfo);
    if (!cg_id_valid(rid, strlen(rid))) {
        cg_admin_error(resp, 404, "Rotation.NotFound", "no rotation with that id");
        return;
    }
    cg_key(k_rot, st, CG_K_ROTATION "%s", rid);
    const char *argv[4] = { "HMGET", k_rot, "new_cert_id", "old_cert_id" };
    size_t lens[4] = { 5, strlen(k_rot), 11, 11 };
    cg_store_rc_t rc = cg_store_cmd(st, cfg->timeout_ms, 4, argv, lens, &r, err, sizeof(err));
    rc = cg_registry_outcome(rc, &r, "HMGET", err, sizeof(err));
    if (rc != CG_STORE_OK) {
        adm_store_fail(resp, rc, err);
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
        adm_errorf(resp, 500, "Store.Corrupt", "the store key %.200s is damaged", k_rot);
        return;
    }
    cg_key(k_new, st, CG_K_REG "%.*s", (int)r->element[0]->len, r->element[0]->str);
    cg_key(k_old, st, CG_K_REG "%.*s", (int)r->element[1]->len, r->element[1]->str);
    cg_store_reply_free(r);
    cg_key(k_ev, st, CG_K_EVENTS);
    cg_key(k_gen, st, CG_K_GEN);
    cg_key(chan, st, CG_K_INVALIDATE);
    snprintf(now_s, sizeof(now_s), "%lld", (long long)req->now);
    event_t ev;
    ev_init(&ev, req, "rotation.cancel");
    ev_add(&ev, "rotation_id", rid);
    ev_add(&ev, "app_id", app);
    ev_add(&ev, "customer_id", owner);
    const char *keys[] = { k_rot, k_new, k_old, k_ev, k_gen };
    const char *args[4 + 32] = { now_s, req->user, app, chan };
    int na = 4;
    static const cg_script_error_t cancel_errors[] = {
        { "STARTED", 409, "Rotation.Started",
          "the rotation has started (activateAt has passed) and cannot be cancelled" },
        { "CANCELLED", 409, "Rotation.Cancelled", "the rotation is already cancelled" },
        { "NOTFOUND", 404, "Rotation.NotFound", "no rotation with that id for this app" },
        { NULL, 0, NULL, NULL }
    };
    if (adm_run_write(cfg, st, CG_LUA_CANCEL, 5, keys, args, na, NELEM(args), &ev, cancel_errors,
                      resp) != 0)
        return;
    resp->status = 204;
    adm_set_body(resp, 204, "application/json", NULL);
}
