/* The admin API's uploads (POST /certs) and checks (POST /check): reading the
 * body, the upload policy, and the registration write. */
#include "cg_admin_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <openssl/crypto.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "cg_decide.h"
#include "cg_policy.h"

/* ------------------------------------------------------------ upload */

void adm_upload_free(adm_upload_t *u)
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
static int take_certs(adm_upload_t *u, STACK_OF(X509) *more)
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
 * The fields of an upload's JSON object: {certificate, chain, appId, customerId,
 * privateKey}. obj stays the caller's (u->pkey points into it). 0, or -1 with
 * resp set; *p7 tells whether the certificates came from a PKCS#7 bundle.
 */
static int upload_fields(json_t *obj, adm_upload_t *u, const char *code_bad, int *p7,
                         cg_admin_resp_t *resp)
{
    char err[200];
    json_t *jc = json_object_get(obj, "certificate");
    json_t *jch = json_object_get(obj, "chain");
    json_t *ja = json_object_get(obj, "appId");
    json_t *jcu = json_object_get(obj, "customerId");
    json_t *jk = json_object_get(obj, "privateKey");
    if (jk != NULL && !json_is_null(jk)) {
        if (!json_is_string(jk)) {
            adm_errorf(resp, 400, code_bad, "privateKey must be a PEM string");
            return -1;
        }
        u->pkey = json_string_value(jk);
        u->pkey_len = json_string_length(jk);
    }
    if (!json_is_string(jc) || json_string_length(jc) == 0) {
        adm_errorf(resp, 400, code_bad, "certificate is required and must be a PEM string");
        return -1;
    }
    if ((ja != NULL && !json_is_string(ja) && !json_is_null(ja)) ||
        (jcu != NULL && !json_is_string(jcu) && !json_is_null(jcu))) {
        adm_errorf(resp, 400, code_bad, "appId and customerId must be strings");
        return -1;
    }
    u->app = json_is_string(ja) ? strdup(json_string_value(ja)) : NULL;
    u->customer = json_is_string(jcu) ? strdup(json_string_value(jcu)) : NULL;
    /* What follows the leaf (a bundle) repeats from upload to upload: kept. */
    u->certs = cg_cert_read_all_kept((const unsigned char *)json_string_value(jc),
                                     json_string_length(jc), p7, 1, err, sizeof(err));
    if (u->certs == NULL) {
        adm_errorf(resp, 400, "Certificate.Invalid", "certificate: %s", err);
        return -1;
    }
    if (jch != NULL && !json_is_null(jch)) {
        if (sk_X509_num(u->certs) > 1) {
            adm_errorf(resp, 400, "Certificate.Invalid",
                       "certificate must hold one certificate when chain is sent separately");
            return -1;
        }
        size_t i;
        json_t *el;
        json_t *parts = json_is_array(jch) ? json_incref(jch) : json_pack("[O]", jch);
        json_array_foreach(parts, i, el) {
            if (!json_is_string(el)) {
                json_decref(parts);
                adm_errorf(resp, 400, code_bad, "chain must be a PEM string or an array of them");
                return -1;
            }
            STACK_OF(X509) *more = cg_cert_read_all_kept((const unsigned char *)
                                                         json_string_value(el),
                                                         json_string_length(el), NULL, 0, err,
                                                         sizeof(err));
            if (more == NULL || take_certs(u, more) != 0) {
                json_decref(parts);
                adm_errorf(resp, 400, "Chain.Invalid", "chain element %zu: %s", i,
                           more ? "out of memory" : err);
                return -1;
            }
        }
        json_decref(parts);
    }
    return 0;
}

/* What every way of sending certificates shares: one chain, leaf first, and ids
 * that can be keys. 0, or -1 with resp set. */
static int upload_finish(adm_upload_t *u, int p7, const char *code_bad, int app_required,
                         cg_admin_resp_t *resp)
{
    char err[200];
    /* Developers' chain files often start with the leaf (leaf -> root, as the
     * requirements tell them to build it): the same certificate twice is one. */
    cg_cert_drop_repeats(u->certs);
    if (p7 && cg_cert_order_bag(u->certs, err, sizeof(err)) != 0) {
        adm_errorf(resp, 400, "Upload.Certificate.Invalid", "PKCS#7 bundle: %s", err);
        return -1;
    }
    if (app_required && (u->app == NULL || u->app[0] == '\0')) {
        adm_errorf(resp, 400, code_bad, "appId is required");
        return -1;
    }
    if (u->app != NULL && u->app[0] != '\0' && !cg_app_valid(u->app, strlen(u->app))) {
        adm_errorf(resp, 400, code_bad, "appId must be 1-128 printable ASCII characters without "
                   "spaces or * ? [ ] : { } \\");
        return -1;
    }
    if (u->customer != NULL && u->customer[0] != '\0' &&
        !cg_app_valid(u->customer, strlen(u->customer))) {
        adm_errorf(resp, 400, code_bad, "customerId must be 1-128 printable ASCII characters "
                   "without spaces or * ? [ ] : { } \\");
        return -1;
    }
    return 0;
}

int adm_upload_from_json(json_t *obj, adm_upload_t *u, const char *code_bad,
                         cg_admin_resp_t *resp)
{
    int p7 = 0;
    memset(u, 0, sizeof(*u));
    if (!json_is_object(obj)) {
        adm_errorf(resp, 400, code_bad, "not a JSON object");
        return -1;
    }
    if (upload_fields(obj, u, code_bad, &p7, resp) != 0)
        return -1;
    return upload_finish(u, p7, code_bad, 1, resp);
}

/*
 * Read an upload or check body: JSON {certificate, chain, appId, customerId,
 * privateKey}, or a raw PEM/DER/PKCS#7 body with appId/customerId in the query.
 * code_bad is the code for a malformed request. 0, or -1 with resp set.
 */
static int read_upload(const cg_admin_req_t *req, cg_admin_resp_t *resp, adm_upload_t *u,
                       const char *code_bad, int app_required)
{
    char err[200];
    int p7 = 0;
    const char *ct = req->content_type;
    memset(u, 0, sizeof(*u));

    if (req->body_len == 0) {
        adm_errorf(resp, 400, code_bad, "the request body is empty");
        return -1;
    }
    if (ct == NULL || ctype_is(ct, "application/json")) {
        json_error_t je;
        u->doc = json_loadb((const char *)req->body, req->body_len,
                            JSON_REJECT_DUPLICATES, &je);
        if (u->doc == NULL || !json_is_object(u->doc)) {
            adm_errorf(resp, 400, code_bad, "the body is not a JSON object%s%s",
                       u->doc ? "" : ": ", u->doc ? "" : je.text);
            return -1;
        }
        if (upload_fields(u->doc, u, code_bad, &p7, resp) != 0)
            return -1;
    } else if (ctype_is(ct, "application/x-pem-file") || ctype_is(ct, "application/pkix-cert") ||
               ctype_is(ct, "application/pkcs7-mime") || ctype_is(ct, "application/x-x509-ca-cert") ||
               ctype_is(ct, "application/pkcs7-certificates") ||
               ctype_is(ct, "application/x-pkcs7-certificates")) {
        u->certs = cg_cert_read_all_kept(req->body, req->body_len, &p7, 1, err, sizeof(err));
        if (u->certs == NULL) {
            adm_errorf(resp, 400, "Certificate.Invalid", "%s", err);
            return -1;
        }
        u->app = adm_qparam(req->query, "appId");
        u->customer = adm_qparam(req->query, "customerId");
    } else {
        adm_errorf(resp, 415, code_bad, "unsupported Content-Type; send application/json, "
                   "application/x-pem-file, application/pkix-cert or application/pkcs7-mime");
        return -1;
    }
    return upload_finish(u, p7, code_bad, app_required, resp);
}

int cg_admin_parse_upload(const char *content_type, const char *query,
                          const unsigned char *body, size_t len, cg_admin_resp_t *resp)
{
    cg_admin_req_t req;
    adm_upload_t u;
    memset(&req, 0, sizeof(req));
    req.content_type = content_type;
    req.query = query;
    req.body = (unsigned char *)body;
    req.body_len = len;
    int rc = read_upload(&req, resp, &u, "Upload.Certificate.Invalid", 1);
    adm_upload_free(&u);
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
int adm_upload_owner(const cg_admin_cfg_t *cfg, cg_store_t *st, const cg_admin_req_t *req,
                     const adm_upload_t *u, char **owner, cg_admin_resp_t *resp)
{
    json_t *app = NULL;
    *owner = NULL;
    if (adm_app_for_user(cfg, st, req, u->app, &app, resp) != 0)
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
int adm_vet_upload(const cg_admin_cfg_t *cfg, cg_store_t *st, const cg_admin_req_t *req,
                   const adm_upload_t *u, const char *owner, cg_cert_info_t *info, int *status,
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
        adm_load_entity(cfg, st, CG_K_CUSTOMER, owner, &cust, resp) < 0) {
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

/* The certificates as PEM, leaf first: what export hands back. malloc'd, or NULL. */
static char *certs_pem(STACK_OF(X509) *certs)
{
    BIO *b = BIO_new(BIO_s_mem());
    char *out = NULL, *data;
    if (b == NULL)
        return NULL;
    for (int i = 0; i < sk_X509_num(certs); i++)
        if (PEM_write_bio_X509(b, sk_X509_value(certs, i)) != 1)
            goto done;
    long n = BIO_get_mem_data(b, &data);
    if (n <= 0 || (out = malloc((size_t)n + 1)) == NULL)
        goto done;
    memcpy(out, data, (size_t)n);
    out[n] = '\0';
done:
    BIO_free(b);
    return out;
}

int adm_write_registration(const cg_admin_cfg_t *cfg, cg_store_t *st, const cg_admin_req_t *req,
                           const adm_upload_t *u, const char *owner, const cg_cert_info_t *info,
                           const adm_reg_write_t *w, char *id, cg_admin_resp_t *resp)
{
    char *chain = fp_list(u->certs, 1), *subjects = subjects_json(u->certs, 1);
    char *pem = certs_pem(u->certs), *sans = NULL;
    char hex[CG_FP_HEX_LEN + 1], vf[24], vt[24], now_s[24], ok[CG_ID_MAX + 32] = "";
    int rc = -1;

    if (w->id != NULL) {
        snprintf(id, CG_ID_MAX + 1, "%s", w->id);
    } else {
        char fresh[40];
        adm_new_id(fresh);
        if (fresh[0] == '\0') {
            cg_admin_error(resp, 500, "Internal", "no randomness for an id");
            goto done;
        }
        snprintf(id, CG_ID_MAX + 1, "%s", fresh);
    }
    cg_fp_to_hex(&info->fingerprint, hex);
    json_t *sa = json_array();
    for (size_t i = 0; sa != NULL && i < info->n_sans; i++)
        json_array_append_new(sa, json_string(info->sans[i]));
    sans = sa ? json_dumps(sa, JSON_COMPACT) : NULL;
    json_decref(sa);
    if (chain == NULL || subjects == NULL || sans == NULL || pem == NULL) {
        cg_admin_error(resp, 500, "Internal", "out of memory");
        goto done;
    }
    snprintf(vf, sizeof(vf), "%lld", (long long)info->not_before);
    snprintf(vt, sizeof(vt), "%lld", (long long)info->not_after);
    snprintf(now_s, sizeof(now_s), "%lld", (long long)req->now);

    const char *rec[] = {
        "id", id, "app_id", u->app, "customer_id", owner ? owner : "",
        "status", w->status, "fingerprint", hex, "chain", chain,
        "valid_from", vf, "valid_to", vt, "activate_at", w->activate_at,
        "retire_at", w->retire_at,
        "common_name", info->common_name, "subject", info->subject, "issuer", info->issuer,
        "serial", info->serial, "organization", info->organization,
        "organizational_unit", info->organizational_unit, "country", info->country,
        "state", info->state, "locality", info->locality, "sans", sans,
        "chain_subjects", subjects, "pem", pem,
        "created", w->created ? w->created : now_s,
        "created_by", w->created_by ? w->created_by : req->user,
        "updated", now_s, "updated_by", req->user, "status_reason", w->status_reason,
        "version", "1",
    };
    const int nrec = (int)NELEM(rec);
    event_t ev;
    ev_init(&ev, req, w->import ? "cert.import" : "cert.upload");
    ev_add(&ev, "cert_id", id);
    ev_add(&ev, "fingerprint", hex);
    ev_add(&ev, "app_id", u->app);
    ev_add(&ev, "customer_id", owner);
    ev_add(&ev, "old_status", "");
    ev_add(&ev, "new_status", w->status);
    ev_add(&ev, "reason", w->status_reason);

    char k_fp[KEY_MAX], k_reg[KEY_MAX], k_app[KEY_MAX], k_all[KEY_MAX], k_ev[KEY_MAX],
        k_gen[KEY_MAX], k_schema[KEY_MAX], k_appinfo[KEY_MAX], chan[KEY_MAX], nrec_s[16],
        regpfx[KEY_MAX];
    cg_key(k_appinfo, st, CG_K_APPINFO "%s", u->app);
    cg_key(k_fp, st, CG_K_FP "%s", hex);
    cg_key(k_reg, st, CG_K_REG "%s", id);
    cg_key(k_app, st, CG_K_APP "%s", u->app);
    cg_key(k_all, st, CG_K_REGS);
    cg_key(k_ev, st, CG_K_EVENTS);
    cg_key(k_gen, st, CG_K_GEN);
    cg_key(k_schema, st, CG_K_SCHEMA);
    cg_key(chan, st, CG_K_INVALIDATE);
    cg_key(regpfx, st, CG_K_REG);
    snprintf(nrec_s, sizeof(nrec_s), "%d", nrec);
    const char *keys[] = { k_fp, k_reg, k_app, k_all, k_ev, k_gen, k_schema, k_appinfo };
    const char *args[8 + NELEM(rec) + NELEM(ev.kv)];
    int na = 0;
    args[na++] = id;
    args[na++] = chan;
    args[na++] = owner ? owner : "";
    if (w->import) {
        args[na++] = u->app;
        args[na++] = regpfx;
        args[na++] = w->dry ? "1" : "0";
    }
    args[na++] = nrec_s;
    for (int i = 0; i < nrec; i++)
        args[na++] = rec[i];
    for (int i = 0; i < ev.n; i++)
        args[na++] = ev.kv[i];
    static const cg_script_error_t errors[] = {
        { "DUPLICATE", 409, "Certificate.Duplicate", "this certificate is already registered" },
        { "APPOWNER", 409, "App.CustomerMismatch", "the app's customer changed during the upload" },
        { "IDTAKEN", 409, "Import.IdExists", "another registration has this id" },
        { NULL, 0, NULL, NULL }
    };
    cg_registry_fail_t f;
    if (cg_registry_run_reply(st, cfg->timeout_ms, w->import ? CG_LUA_IMPORT : CG_LUA_UPLOAD,
                              (int)NELEM(keys), keys, na, args, errors, &f, ok,
                              sizeof(ok)) != 0) {
        adm_fail(resp, &f);
        goto done;
    }
    rc = 0;
    /* "UNCHANGED <id>": the import found this certificate already registered here. */
    if (strncmp(ok, "UNCHANGED ", 10) == 0) {
        size_t l = strnlen(ok + 10, CG_ID_MAX);
        memcpy(id, ok + 10, l);
        id[l] = '\0';
        rc = 1;
    }
done:
    free(chain);
    free(subjects);
    free(sans);
    free(pem);
    return rc;
}

void adm_upload(const cg_admin_cfg_t *cfg, cg_store_t *st, cg_admin_req_t *req,
                cg_admin_resp_t *resp)
{
    adm_upload_t u;
    cg_cert_info_t info;
    int have_info = 0;
    char *owner = NULL;
    char msg[600], id[CG_ID_MAX + 1];
    const char *code = NULL;

    if (adm_need(req, resp, CG_ROLE_DEVELOPER, "upload certificates") != 0)
        return;
    if (read_upload(req, resp, &u, "Upload.Certificate.Invalid", 1) != 0)
        goto done;
    if (req->customer == NULL && !adm_sees_all(req)) {
        cg_admin_error(resp, 403, "Auth.NoCustomer",
                       "no customer is configured for this developer (CertGateAdminCustomer)");
        goto done;
    }
    if (adm_upload_owner(cfg, st, req, &u, &owner, resp) != 0)
        goto done;
    int status, v = adm_vet_upload(cfg, st, req, &u, owner, &info, &status, &code, msg,
                                   sizeof(msg), resp);
    if (v != 0) {
        if (v > 0)
            cg_admin_error(resp, status, code, msg);
        goto done;
    }
    have_info = 1;
    const adm_reg_write_t w = { .status = "PENDING", .status_reason = "", .activate_at = "",
                                .retire_at = "" };
    if (adm_write_registration(cfg, st, req, &u, owner, &info, &w, id, resp) != 0)
        goto done;

    json_t *recj = NULL;
    if (adm_load_rec(cfg, st, id, &recj, resp) != 0) {
        if (resp->body == NULL)
            cg_admin_error(resp, 500, "Internal", "the new registration could not be read back");
        goto done;
    }
    adm_set_etag(resp, recj);
    snprintf(resp->location, sizeof(resp->location), "certs/%s", id);
    adm_send_json(resp, 201, adm_view(cfg, recj, req->now));
    json_decref(recj);
done:
    if (have_info)
        cg_cert_info_free(&info);
    free(owner);
    adm_upload_free(&u);
}

/* ------------------------------------------------------------ check */

void adm_check(const cg_admin_cfg_t *cfg, cg_store_t *st, cg_admin_req_t *req,
               cg_admin_resp_t *resp)
{
    adm_upload_t u;
    char err[200], msg[600];
    const char *code = NULL;
    char *owner = NULL;
    if (adm_need(req, resp, CG_ROLE_DEVELOPER | CG_ROLE_MANAGER | CG_ROLE_SUPPORT | CG_ROLE_AUDITOR,
                 "check certificates") != 0)
        return;
    if (read_upload(req, resp, &u, "Request.Invalid", 0) != 0) {
        adm_upload_free(&u);
        return;
    }
    /* The policy is the upload's, for the customer the upload would be for. */
    if (u.app != NULL && u.app[0] != '\0') {
        if (adm_upload_owner(cfg, st, req, &u, &owner, resp) != 0) {
            adm_upload_free(&u);
            return;
        }
    } else if (req->customer != NULL) {
        owner = strdup(req->customer);
    } else if (adm_sees_all(req) && u.customer != NULL && u.customer[0] != '\0') {
        owner = strdup(u.customer);
    }
    cg_cert_info_t vinfo;
    int vstatus, pol = adm_vet_upload(cfg, st, req, &u, owner, &vinfo, &vstatus, &code, msg,
                                  sizeof(msg), resp);
    free(owner);
    if (pol < 0) {
        adm_upload_free(&u);
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
        adm_upload_free(&u);
        return;
    }
    cg_store_rc_t rc = cg_store_lookup(st, &leaf, &reg, err, sizeof(err));
    /* Another customer's registration is none of this user's business: for
     * them the certificate is not registered. */
    if (rc == CG_STORE_OK && adm_sees_customer(req, reg.customer_id))
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
    adm_send_json(resp, 200, json_pack("{s:s,s:s,s:i,s:s,s:s?,s:o,s:{s:b,s:s?,s:s?}}",
                                       "decision", reason == CG_ALLOW ? "allow" : "deny",
                                       "reason", cg_reason_name(reason),
                                       "httpStatus", cg_reason_http_status(reason),
                                       "fingerprint", hex,
                                       "registrationId", show_reg ? regp->id : NULL,
                                       "chain", chain,
                                       "policy", "ok", pol == 0, "code", pol ? code : NULL,
                                       "message", pol ? msg : NULL));
    adm_upload_free(&u);
}
