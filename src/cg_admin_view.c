/* The admin API's views: registrations, rotations, customers and apps as
 * JSON, and CSV for lists. */
#include "cg_admin_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------ views */

const char *adm_derived_status(const cg_admin_cfg_t *cfg, json_t *rec, int64_t now, char *buf,
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

json_t *adm_iso_or_null(int64_t t)
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

json_t *adm_view(const cg_admin_cfg_t *cfg, json_t *rec, int64_t now)
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
        "validFrom", adm_iso_or_null(fi(rec, "valid_from", INT64_MIN)),
        "validTo", adm_iso_or_null(fi(rec, "valid_to", INT64_MIN)),
        "created", adm_iso_or_null(fi(rec, "created", INT64_MIN)),
        "expireIn", (json_int_t)(to > now ? (to - now) / 86400 : 0),
        "status", adm_derived_status(cfg, rec, now, buf, sizeof(buf)),
        "fingerprint", fs(rec, "fingerprint"),
        "chain", chain,
        "activateAt", adm_iso_or_null(fi(rec, "activate_at", INT64_MIN)),
        "retireAt", adm_iso_or_null(fi(rec, "retire_at", INT64_MIN)),
        "statusReason", fs(rec, "status_reason"),
        "createdBy", fs(rec, "created_by"),
        "updated", adm_iso_or_null(fi(rec, "updated", INT64_MIN)),
        "updatedBy", fs(rec, "updated_by"),
        "version", (json_int_t)fi(rec, "version", 1));
    return v;
}

void adm_set_etag(cg_admin_resp_t *resp, json_t *rec)
{
    snprintf(resp->etag, sizeof(resp->etag), "\"v%lld\"", (long long)fi(rec, "version", 1));
}

/* ------------------------------------------------------------ CSV */

/* CSV cell: quoted when needed; a leading formula character is neutralised.
 * -1 when out of memory (buf left as it was). */
static int csv_cell(char **buf, size_t *len, size_t *cap, const char *v, int last)
{
    size_t need = strlen(v) * 2 + 8;
    if (*len + need >= *cap) {
        size_t nc = (*cap + need) * 2;
        char *nb = realloc(*buf, nc);
        if (nb == NULL)
            return -1;
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
    return 0;
}

void adm_send_csv(cg_admin_resp_t *resp, json_t *rows, const char *const *cols, size_t ncols)
{
    size_t len = 0, cap = 1024;
    char *buf = malloc(cap);
    int ok = buf != NULL;
    if (ok)
        buf[0] = '\0';
    for (size_t c = 0; ok && c < ncols; c++)
        ok = csv_cell(&buf, &len, &cap, cols[c], c + 1 == ncols) == 0;
    size_t i;
    json_t *row;
    json_array_foreach(rows, i, row) {
        for (size_t c = 0; ok && c < ncols; c++) {
            json_t *v = json_object_get(row, cols[c]);
            char num[32];
            const char *s = json_string_value(v);
            if (json_is_integer(v)) {
                snprintf(num, sizeof(num), "%lld", (long long)json_integer_value(v));
                s = num;
            }
            ok = csv_cell(&buf, &len, &cap, s ? s : "", c + 1 == ncols) == 0;
        }
    }
    if (!ok) {
        /* A truncated export would pass for a complete one. */
        free(buf);
        cg_admin_error(resp, 500, "Internal", "out of memory");
        return;
    }
    adm_set_body(resp, 200, "text/csv; charset=utf-8", buf);
}

/* ------------------------------------------------------------ rotations, customers, apps */

json_t *adm_rotation_view(json_t *rot, int64_t now)
{
    const char *st = fs(rot, "status");
    int64_t act = fi(rot, "activate_at", 0), ret = fi(rot, "retire_old_at", 0);
    const char *state = strcmp(st, "CANCELLED") == 0 ? "CANCELLED"
                        : now < act ? "SCHEDULED" : now < ret ? "OVERLAP" : "COMPLETED";
    return json_pack("{s:s,s:s,s:s,s:s,s:o,s:o,s:s,s:o,s:s}",
                     "id", fs(rot, "id"), "appId", fs(rot, "app_id"),
                     "newCertId", fs(rot, "new_cert_id"), "oldCertId", fs(rot, "old_cert_id"),
                     "activateAt", adm_iso_or_null(act), "retireOldAt", adm_iso_or_null(ret),
                     "state", state, "created", adm_iso_or_null(fi(rot, "created", INT64_MIN)),
                     "createdBy", fs(rot, "created_by"));
}

json_t *adm_entity_view(json_t *rec, const char *idname)
{
    static const char *const strs[][2] = {
        { "customer_id", "customerId" }, { "name", "name" }, { "organization", "organization" },
        { "created_by", "createdBy" }, { "updated_by", "updatedBy" },
    };
    json_t *v = json_pack("{s:s}", idname, fs(rec, "id"));
    for (size_t i = 0; v != NULL && i < sizeof(strs) / sizeof(strs[0]); i++)
        if (json_object_get(rec, strs[i][0]) != NULL)
            json_object_set(v, strs[i][1], json_object_get(rec, strs[i][0]));
    json_object_set_new(v, "created", adm_iso_or_null(fi(rec, "created", INT64_MIN)));
    json_object_set_new(v, "updated", adm_iso_or_null(fi(rec, "updated", INT64_MIN)));
    json_object_set_new(v, "version", json_integer((json_int_t)fi(rec, "version", 1)));
    return v;
}
