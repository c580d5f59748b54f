/* certgatectl: thin clients of the admin API (status, list, upload, approve,
 * decline, inactivate, rotate, events, export, import). */
#include "ctl.h"
#include "ctl_http.h"
#include "cg_cert.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#define Q_MAX 4096

/* Open the API, run fn, close. */
static int with_api(ctl_args_t *a, int (*fn)(ctl_args_t *, ctl_api_t *))
{
    ctl_api_t api;
    int rc = ctl_api_init(&api, a, 1);
    if (rc == CTL_OK)
        rc = fn(a, &api);
    ctl_api_free(&api);
    return rc;
}

static int id_path(ctl_args_t *a, char *out, size_t cap, const char *fmt, const char *id,
                   const char *tail)
{
    char esc[600];
    if (ctl_path_escape(id, esc, sizeof(esc)) != 0 ||
        (size_t)snprintf(out, cap, fmt, esc, tail ? tail : "") >= cap)
        return ctl_usage_error(a, "id too long");
    return CTL_OK;
}

/* ---------------------------------------------------------------- status */

static int run_status(ctl_args_t *a, ctl_api_t *api)
{
    char path[1024];
    ctl_resp_t r;
    int rc = id_path(a, path, sizeof(path), "/apps/%s%s", a->pos[0], NULL);
    if (rc != CTL_OK || (rc = ctl_api_expect(api, a, "GET /apps", "GET", path, NULL, &r)) != CTL_OK)
        return rc;
    if (a->json) {
        ctl_print_json(r.json);
    } else {
        printf("app %s  customer %s  name %s\n", ctl_js(r.json, "appId"),
               ctl_js(r.json, "customerId"), ctl_js(r.json, "name"));
        size_t i;
        json_t *c;
        json_array_foreach(json_object_get(r.json, "certificates"), i, c) {
            json_t *u = json_object_get(c, "usage");
            printf("  %s  %-27s gate=%s  valid to %s  activate %s  retire %s\n"
                   "      %s  sha256 %s\n", ctl_js(c, "id"), ctl_js(c, "status"),
                   ctl_js(c, "gate"), ctl_js(c, "validTo"), ctl_js(c, "activateAt"),
                   ctl_js(c, "retireAt"), ctl_js(c, "commonName"), ctl_js(c, "fingerprint"));
            if (json_is_object(u))
                printf("      requests %lld, last seen %s from %s\n", ctl_ji(u, "requests", 0),
                       ctl_js(u, "lastSeen"), ctl_js(u, "lastClientIp"));
            else
                printf("      no request recorded\n");
        }
        json_array_foreach(json_object_get(r.json, "rotations"), i, c)
            printf("  rotation %s  %s  new %s at %s, old %s retires %s\n", ctl_js(c, "id"),
                   ctl_js(c, "state"), ctl_js(c, "newCertId"), ctl_js(c, "activateAt"),
                   ctl_js(c, "oldCertId"), ctl_js(c, "retireOldAt"));
    }
    ctl_resp_free(&r);
    return CTL_OK;
}

int ctl_cmd_status(ctl_args_t *a)
{
    return with_api(a, run_status);
}

/* ---------------------------------------------------------------- list */

static void cert_line(json_t *c)
{
    printf("%s  %-27s %-16s valid to %s  %.16s…  %s\n", ctl_js(c, "id"), ctl_js(c, "status"),
           ctl_js(c, "appId"), ctl_js(c, "validTo"), ctl_js(c, "fingerprint"),
           ctl_js(c, "commonName"));
}

static int run_list(ctl_args_t *a, ctl_api_t *api)
{
    char q[Q_MAX] = "/certs";
    ctl_resp_t r;
    const char *days = ctl_opt(a, "expiring-within");
    char within[64];
    if (days != NULL)
        snprintf(within, sizeof(within), "%sdays", days);
    if (ctl_query_add(q, sizeof(q), "appId", ctl_opt(a, "app")) != 0 ||
        ctl_query_add(q, sizeof(q), "customerId", ctl_opt(a, "customer")) != 0 ||
        ctl_query_add(q, sizeof(q), "status", ctl_opt(a, "status")) != 0 ||
        ctl_query_add(q, sizeof(q), "expiringWithin", days ? within : NULL) != 0 ||
        ctl_query_add(q, sizeof(q), "page", ctl_opt(a, "page")) != 0 ||
        ctl_query_add(q, sizeof(q), "pageSize", ctl_opt(a, "page-size")) != 0)
        return ctl_usage_error(a, "filters too long");
    int rc = ctl_api_expect(api, a, "GET /certs", "GET", q, NULL, &r);
    if (rc != CTL_OK)
        return rc;
    if (a->json) {
        ctl_print_json(r.json);
    } else {
        size_t i;
        json_t *c;
        json_array_foreach(json_object_get(r.json, "items"), i, c)
            cert_line(c);
        printf("page %lld (%lld per page), %lld in all\n", ctl_ji(r.json, "page", 1),
               ctl_ji(r.json, "pageSize", 0), ctl_ji(r.json, "total", 0));
    }
    ctl_resp_free(&r);
    return CTL_OK;
}

int ctl_cmd_list(ctl_args_t *a)
{
    return with_api(a, run_list);
}

/* ---------------------------------------------------------------- upload */

static json_t *pem_of(X509 *x)
{
    BIO *b = BIO_new(BIO_s_mem());
    char *data;
    json_t *out = NULL;
    if (b != NULL && PEM_write_bio_X509(b, x) == 1) {
        long n = BIO_get_mem_data(b, &data);
        if (n > 0)
            out = json_stringn(data, (size_t)n);
    }
    BIO_free(b);
    return out;
}

static int run_upload(ctl_args_t *a, ctl_api_t *api)
{
    STACK_OF(X509) *certs = NULL;
    const char *code;
    char msg[512];
    const char *app = ctl_opt(a, "app");
    if (app == NULL)
        return ctl_usage_error(a, "--app is required");
    int rc = ctl_read_certs(a->pos, a->npos, &certs, &code, msg, sizeof(msg));
    if (rc == CTL_REFUSED)
        fprintf(stderr, "certgatectl upload: %s: %s\n", code, msg);
    if (rc != CTL_OK)
        return rc;
    json_t *body = json_pack("{s:o?,s:s}", "certificate", pem_of(sk_X509_value(certs, 0)),
                             "appId", app);
    json_t *chain = json_array();
    for (int i = 1; body && chain && i < sk_X509_num(certs); i++)
        json_array_append_new(chain, pem_of(sk_X509_value(certs, i)));
    sk_X509_pop_free(certs, X509_free);
    if (body == NULL || chain == NULL) {
        json_decref(body);
        json_decref(chain);
        return CTL_ERR;
    }
    if (json_array_size(chain) > 0)
        json_object_set(body, "chain", chain);
    json_decref(chain);
    if (ctl_opt(a, "customer") != NULL)
        json_object_set_new(body, "customerId", json_string(ctl_opt(a, "customer")));
    const char *pk = ctl_opt(a, "private-key");
    if (pk != NULL) {
        size_t len;
        unsigned char *key = ctl_read_file(pk, 1024 * 1024, &len);
        if (key == NULL) {
            json_decref(body);
            return CTL_ERR;
        }
        json_object_set_new(body, "privateKey", json_stringn((const char *)key, len));
        OPENSSL_cleanse(key, len);
        free(key);
    }
    ctl_resp_t r;
    rc = ctl_api_expect(api, a, "POST /certs", "POST", "/certs", body, &r);
    json_t *k = json_object_get(body, "privateKey");
    if (json_is_string(k))
        OPENSSL_cleanse((void *)json_string_value(k), json_string_length(k));
    json_decref(body);
    if (rc != CTL_OK)
        return rc;
    if (a->json)
        ctl_print_json(r.json);
    else
        printf("registered %s (%s) for app %s, sha256 %s\n", ctl_js(r.json, "id"),
               ctl_js(r.json, "status"), ctl_js(r.json, "appId"), ctl_js(r.json, "fingerprint"));
    ctl_resp_free(&r);
    return CTL_OK;
}

int ctl_cmd_upload(ctl_args_t *a)
{
    return with_api(a, run_upload);
}

/* ---------------------------------------------------------------- transitions */

static int run_transition(ctl_args_t *a, ctl_api_t *api)
{
    char path[1024], tail[32];
    const char *reason = ctl_opt(a, "reason");
    if (strcmp(a->cmd, "approve") != 0 && (reason == NULL || *reason == '\0'))
        return ctl_usage_error(a, "--reason is required");
    snprintf(tail, sizeof(tail), "/%s", a->cmd);
    int rc = id_path(a, path, sizeof(path), "/certs/%s%s", a->pos[0], tail);
    if (rc != CTL_OK)
        return rc;
    api->if_match = ctl_opt(a, "if-match");
    char im[80];
    if (api->if_match != NULL && api->if_match[0] != '"' && strcmp(api->if_match, "*") != 0) {
        snprintf(im, sizeof(im), "\"%s\"", api->if_match);    /* v2 -> "v2" */
        api->if_match = im;
    }
    json_t *body = reason ? json_pack("{s:s}", "reason", reason) : NULL;
    ctl_resp_t r;
    rc = ctl_api_expect(api, a, path + 1, "POST", path, body, &r);
    json_decref(body);
    if (rc != CTL_OK)
        return rc;
    if (a->json)
        ctl_print_json(r.json);
    else
        printf("%s: %s (version %lld)\n", ctl_js(r.json, "id"), ctl_js(r.json, "status"),
               ctl_ji(r.json, "version", 0));
    ctl_resp_free(&r);
    return CTL_OK;
}

int ctl_cmd_transition(ctl_args_t *a)
{
    return with_api(a, run_transition);
}

/* ---------------------------------------------------------------- rotate */

static int run_rotate(ctl_args_t *a, ctl_api_t *api)
{
    const char *nw = ctl_opt(a, "new"), *act = ctl_opt(a, "activate"), *ret = ctl_opt(a, "retire");
    int64_t now = (int64_t)time(NULL), ta, tr;
    char sa[32], sr[32], path[1024];
    if (nw == NULL || act == NULL || ret == NULL)
        return ctl_usage_error(a, "--new, --activate and --retire are required");
    if (ctl_time_arg(act, now, &ta) != 0 || ctl_time_arg(ret, now, &tr) != 0)
        return ctl_usage_error(a, "TIME: ISO 8601 UTC (2025-07-01T00:00:00Z), now, or +DURATION");
    cg_time_iso(ta, sa, sizeof(sa));
    cg_time_iso(tr, sr, sizeof(sr));
    int rc = id_path(a, path, sizeof(path), "/apps/%s%s", a->pos[0], "/rotations");
    if (rc != CTL_OK)
        return rc;
    json_t *body = json_pack("{s:s,s:s,s:s}", "newCertId", nw, "activateAt", sa, "retireOldAt", sr);
    if (body != NULL && ctl_opt(a, "old") != NULL)
        json_object_set_new(body, "oldCertId", json_string(ctl_opt(a, "old")));
    ctl_resp_t r;
    rc = ctl_api_expect(api, a, "POST /apps/{app}/rotations", "POST", path, body, &r);
    json_decref(body);
    if (rc != CTL_OK)
        return rc;
    if (a->json)
        ctl_print_json(r.json);
    else
        printf("rotation %s (%s) for app %s: new %s activates at %s, old %s retires at %s\n",
               ctl_js(r.json, "id"), ctl_js(r.json, "state"), ctl_js(r.json, "appId"),
               ctl_js(r.json, "newCertId"), ctl_js(r.json, "activateAt"),
               ctl_js(r.json, "oldCertId"), ctl_js(r.json, "retireOldAt"));
    ctl_resp_free(&r);
    return CTL_OK;
}

int ctl_cmd_rotate(ctl_args_t *a)
{
    return with_api(a, run_rotate);
}

/* ---------------------------------------------------------------- events */

static void event_line(json_t *e)
{
    static const char *const extra[] = { "certId", "oldCertId", "rotationId", "appId",
                                         "customerId", "oldStatus", "newStatus", "reason" };
    printf("%s  %-17s %s", ctl_js(e, "time"), ctl_js(e, "action"), ctl_js(e, "user"));
    for (size_t i = 0; i < sizeof(extra) / sizeof(extra[0]); i++)
        if (json_string_length(json_object_get(e, extra[i])) > 0)
            printf("  %s=%s", extra[i], ctl_js(e, extra[i]));
    printf("\n");
}

static int run_events(ctl_args_t *a, ctl_api_t *api)
{
    const char *keys[][2] = { { "from", "from" }, { "to", "to" }, { "action", "action" },
                              { "app", "appId" }, { "customer", "customerId" },
                              { "cert", "certId" }, { "user", "user" }, { "limit", "limit" } };
    char base[Q_MAX] = "/events", times[2][32];
    int64_t now = (int64_t)time(NULL), t;
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        const char *v = ctl_opt(a, keys[i][0]);
        if (v != NULL && i < 2) {
            if (ctl_time_arg(v, now, &t) != 0)
                return ctl_usage_error(a, "--%s: ISO 8601 UTC, now, or +DURATION", keys[i][0]);
            cg_time_iso(t, times[i], sizeof(times[i]));
            v = times[i];
        }
        if (ctl_query_add(base, sizeof(base), keys[i][1], v) != 0)
            return ctl_usage_error(a, "filters too long");
    }
    int all = ctl_flag(a, "all");
    json_t *items = json_array(), *next = json_null();
    char cursor[256] = "";
    if (ctl_opt(a, "cursor") != NULL)
        snprintf(cursor, sizeof(cursor), "%s", ctl_opt(a, "cursor"));
    int rc = CTL_OK;
    for (;;) {
        char q[Q_MAX];
        snprintf(q, sizeof(q), "%s", base);
        if (*cursor && ctl_query_add(q, sizeof(q), "cursor", cursor) != 0) {
            rc = ctl_usage_error(a, "cursor too long");
            break;
        }
        ctl_resp_t r;
        if ((rc = ctl_api_expect(api, a, "GET /events", "GET", q, NULL, &r)) != CTL_OK)
            break;
        json_array_extend(items, json_object_get(r.json, "items"));
        json_t *nx = json_object_get(r.json, "next");
        json_decref(next);
        next = json_incref(nx ? nx : json_null());
        snprintf(cursor, sizeof(cursor), "%s", json_is_string(nx) ? json_string_value(nx) : "");
        ctl_resp_free(&r);
        if (!all || !*cursor)
            break;
    }
    if (rc == CTL_OK) {
        if (a->json) {
            json_t *o = json_pack("{s:O,s:O}", "items", items, "next", next);
            ctl_print_json(o);
            json_decref(o);
        } else {
            size_t i;
            json_t *e;
            json_array_foreach(items, i, e)
                event_line(e);
            if (*cursor)
                fprintf(stderr, "more: certgatectl events ... --cursor %s\n", cursor);
        }
    }
    json_decref(items);
    json_decref(next);
    return rc;
}

int ctl_cmd_events(ctl_args_t *a)
{
    return with_api(a, run_events);
}
