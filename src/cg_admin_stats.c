/* The admin API's usage figures, the store statistics for metrics, and the
 * expiry scan. */
#include "cg_admin_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------ usage, stats, expiry */

/* Add "usage" to each view in items (pipelined reads of {p}usage:{id}). */
void adm_attach_usage(const cg_admin_cfg_t *cfg, cg_store_t *st, json_t *items)
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
        cg_key(keys[i], st, CG_K_USAGE "%s", json_string_value(json_object_get(v, "id")));
    }
    if (ok && cg_store_hgetall_many(st, cfg->timeout_ms, (const char *const *)keys, n, out, err,
                                    sizeof(err)) == CG_STORE_OK) {
        json_array_foreach(items, i, v) {
            json_t *h = cg_registry_hash_obj(out[i]);
            if (h != NULL && json_object_size(h) > 0)
                json_object_set_new(v, "usage", json_pack("{s:I,s:o,s:s}",
                    "requests", (json_int_t)fi(h, "count", 0),
                    "lastSeen", adm_iso_or_null(fi(h, "last_seen", INT64_MIN)),
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
    char key[KEY_MAX];
    (void)soon_days;
    memset(out, 0, sizeof(*out));
    cg_key(key, st, CG_K_REGS);
    int why;
    json_t *recs = cg_registry_load_records(st, timeout_ms, key, names, 2, &why, err, errlen);
    if (recs == NULL)
        return why == CG_REGISTRY_NOMEM ? -CG_STORE_ERROR : -why;
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

int cg_admin_expiry_scan(cg_store_t *st, int timeout_ms, int64_t now, const int *days_desc,
                         size_t ndays, char *err, size_t errlen)
{
    static const char *const names[] = { "id", "status", "valid_to", "fingerprint", "app_id",
                                         "customer_id" };
    char key[KEY_MAX], k_ev[KEY_MAX], now_s[24], time_iso[32];
    int emitted = 0;
    cg_key(key, st, CG_K_REGS);
    cg_key(k_ev, st, CG_K_EVENTS);
    int why;
    json_t *recs = cg_registry_load_records(st, timeout_ms, key, names, 6, &why, err, errlen);
    if (recs == NULL)
        return why == CG_REGISTRY_NOMEM ? -CG_STORE_ERROR : -why;
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
        cg_key(mark, st, CG_K_EXPIRY "%s", fs(rec, "id"));
        const char *keys[] = { mark, k_ev };
        const char *args[] = { label, now_s, also,
                               "time", time_iso, "user", "certgate-expiry", "ip", "",
                               "action", action, "cert_id", fs(rec, "id"),
                               "fingerprint", fs(rec, "fingerprint"),
                               "app_id", fs(rec, "app_id"), "customer_id", fs(rec, "customer_id"),
                               "days_left", days_s, "threshold", label,
                               "old_status", status, "new_status", status, "reason", "" };
        redisReply *r = NULL;
        cg_store_rc_t rc = cg_registry_eval(st, timeout_ms, CG_LUA_EXPIRY, 2, keys,
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
