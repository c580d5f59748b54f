#include "cg_decide.h"

#include <stdio.h>
#include <string.h>

static const char *const reason_names[CG_R__COUNT] = {
    [CG_ALLOW] = "allow",
    [CG_R_NO_CLIENT_CERT] = "no_client_cert",
    [CG_R_UNREGISTERED] = "unregistered",
    [CG_R_PENDING] = "pending",
    [CG_R_DECLINED] = "declined",
    [CG_R_INACTIVATED] = "inactivated",
    [CG_R_EXPIRED] = "expired",
    [CG_R_NOT_YET_VALID] = "not_yet_valid",
    [CG_R_NOT_YET_ACTIVE] = "not_yet_active",
    [CG_R_RETIRED] = "retired",
    [CG_R_CHAIN_MISMATCH] = "chain_mismatch",
    [CG_R_APP_MISMATCH] = "app_mismatch",
    [CG_R_STORE_UNAVAILABLE] = "store_unavailable",
    [CG_R_APP_AMBIGUOUS] = "app_ambiguous",
};

const char *cg_reason_name(cg_reason_t r)
{
    if ((unsigned)r < CG_R__COUNT)
        return reason_names[r];
    return "unknown";
}

static const char *const reason_messages[CG_R__COUNT] = {
    [CG_ALLOW] = "the client certificate is accepted",
    [CG_R_NO_CLIENT_CERT] = "no client certificate was presented",
    [CG_R_UNREGISTERED] = "the client certificate is not registered",
    [CG_R_PENDING] = "the client certificate is registered but not approved yet",
    [CG_R_DECLINED] = "the client certificate registration was declined",
    [CG_R_INACTIVATED] = "the client certificate registration was inactivated",
    [CG_R_EXPIRED] = "the client certificate has expired",
    [CG_R_NOT_YET_VALID] = "the client certificate is not valid yet",
    [CG_R_NOT_YET_ACTIVE] = "the client certificate binding is not active yet",
    [CG_R_RETIRED] = "the client certificate binding was retired by a rotation",
    [CG_R_CHAIN_MISMATCH] = "the presented chain does not match the registered chain",
    [CG_R_APP_MISMATCH] = "the client certificate is not registered to this app",
    [CG_R_STORE_UNAVAILABLE] = "the registration store is unavailable, try again later",
    [CG_R_APP_AMBIGUOUS] = "the request names more than one app, send exactly one",
};

const char *cg_reason_message(cg_reason_t r)
{
    if ((unsigned)r < CG_R__COUNT)
        return reason_messages[r];
    return "unknown reason";
}

int cg_reason_http_status(cg_reason_t r)
{
    if (r == CG_ALLOW)
        return 200;
    if (r == CG_R_STORE_UNAVAILABLE)
        return 503;
    return 403;
}

cg_reason_t cg_decide(const cg_input_t *in)
{
    const cg_reg_t *reg = in->reg;

    /* A property of the request alone: no registration is consulted. */
    if (in->app_ambiguous)
        return CG_R_APP_AMBIGUOUS;
    if (in->leaf == NULL)
        return CG_R_NO_CLIENT_CERT;
    /* The store indexes by fingerprint; re-check so a stale index cannot admit. */
    if (reg == NULL || !cg_fp_eq(in->leaf, &reg->fingerprint))
        return CG_R_UNREGISTERED;
    if (in->app != NULL && strcmp(in->app, reg->app_id) != 0)
        return CG_R_APP_MISMATCH;
    /* Tenancy: the app's owner record must name the registration's customer.
     * Only records decoded outside the gate's lookup carry no owner (UNREAD). */
    if (reg->app_owner_state != CG_OWNER_UNREAD &&
        (reg->app_owner_state != CG_OWNER_READ || strcmp(reg->app_owner, reg->customer_id) != 0))
        return CG_R_APP_MISMATCH;
    switch (reg->status) {
    case CG_STATUS_APPROVED:
        break;
    case CG_STATUS_PENDING:
        return CG_R_PENDING;
    case CG_STATUS_DECLINED:
        return CG_R_DECLINED;
    case CG_STATUS_INACTIVATED:
        return CG_R_INACTIVATED;
    default:
        return CG_R_UNREGISTERED;
    }
    /* X.509 notBefore and notAfter are both inclusive. */
    if (in->now < reg->valid_from)
        return CG_R_NOT_YET_VALID;
    if (in->now > reg->valid_to)
        return CG_R_EXPIRED;
    /* Binding window: activate_at inclusive, retire_at exclusive. */
    if (reg->activate_at != CG_TIME_UNSET && in->now < reg->activate_at)
        return CG_R_NOT_YET_ACTIVE;
    if (reg->retire_at != CG_TIME_UNSET && in->now >= reg->retire_at)
        return CG_R_RETIRED;
    if (in->verify_failed)
        return CG_R_CHAIN_MISMATCH;
    if (!in->chain_known) {
        /* Without the presented chain only an empty registered chain can match. */
        if (reg->chain_len != 0)
            return CG_R_CHAIN_MISMATCH;
    } else if (!cg_chain_match(in->chain, in->chain_len, reg->chain, reg->chain_len)) {
        return CG_R_CHAIN_MISMATCH;
    }
    return CG_ALLOW;
}

static unsigned char hdr_fold(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return (unsigned char)(c - 'A' + 'a');
    return c == '_' ? '-' : c;
}

int cg_header_name_same(const char *a, size_t alen, const char *b, size_t blen)
{
    if (a == NULL || b == NULL || alen != blen)
        return 0;
    for (size_t i = 0; i < alen; i++)
        if (hdr_fold((unsigned char)a[i]) != hdr_fold((unsigned char)b[i]))
            return 0;
    return 1;
}

int cg_app_value_is_list(const char *v, size_t len)
{
    return v != NULL && memchr(v, ',', len) != NULL;
}

int64_t cg_expire_in_days(const cg_reg_t *reg, int64_t now)
{
    if (reg->valid_to <= now)
        return 0;
    return (reg->valid_to - now) / 86400;
}

int cg_deny_body(cg_reason_t r, int json, char *buf, size_t cap, const char **ctype)
{
    int status = cg_reason_http_status(r);
    int n;
    if (json) {
        *ctype = "application/json";
        /* Names and messages are fixed ASCII without quotes: no escaping needed. */
        n = snprintf(buf, cap, "{\"error\":\"%s\",\"reason\":\"%s\",\"message\":\"%s\"}\n",
                     status == 503 ? "service_unavailable" : "forbidden", cg_reason_name(r),
                     cg_reason_message(r));
    } else {
        *ctype = "text/plain; charset=utf-8";
        n = snprintf(buf, cap, "%d %s: %s (%s)\n", status,
                     status == 503 ? "Service Unavailable" : "Forbidden", cg_reason_message(r),
                     cg_reason_name(r));
    }
    return n < 0 || (size_t)n >= cap ? -1 : n;
}
