#include "cg_reg.h"

#include <stdio.h>
#include <string.h>

static const char *const status_names[] = {
    "PENDING", "APPROVED", "DECLINED", "INACTIVATED"
};

const char *cg_status_name(cg_status_t s)
{
    if ((unsigned)s < sizeof(status_names) / sizeof(status_names[0]))
        return status_names[s];
    return "UNKNOWN";
}

int cg_status_parse(const char *s, size_t len, cg_status_t *out)
{
    for (size_t i = 0; i < sizeof(status_names) / sizeof(status_names[0]); i++) {
        if (strlen(status_names[i]) == len && memcmp(status_names[i], s, len) == 0) {
            *out = (cg_status_t)i;
            return 0;
        }
    }
    return -1;
}

int cg_id_valid(const char *s, size_t len)
{
    if (s == NULL || len == 0 || len > CG_ID_MAX)
        return 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.'))
            return 0;
    }
    return 1;
}

int cg_app_valid(const char *s, size_t len)
{
    if (s == NULL || len == 0 || len > CG_APP_MAX)
        return 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        /* Printable ASCII without space or the glob/key characters. */
        if (c <= 0x20 || c >= 0x7f || c == '*' || c == '?' || c == '[' ||
            c == ']' || c == ':' || c == '{' || c == '}' || c == '\\')
            return 0;
    }
    return 1;
}

int cg_parse_i64(const char *s, size_t len, int64_t *out)
{
    size_t i = 0;
    int neg = 0;
    uint64_t v = 0, limit;

    if (s == NULL || len == 0 || len > 20)
        return -1;
    if (s[0] == '-') {
        neg = 1;
        i = 1;
        if (len == 1)
            return -1;
    }
    limit = neg ? (uint64_t)INT64_MAX + 1u : (uint64_t)INT64_MAX;
    for (; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        unsigned d = (unsigned)(s[i] - '0');
        if (v > (limit - d) / 10)
            return -1;
        v = v * 10 + d;
    }
    *out = neg ? (v == (uint64_t)INT64_MAX + 1u ? INT64_MIN : -(int64_t)v) : (int64_t)v;
    return 0;
}

static int name_is(const cg_field_t *f, const char *name)
{
    return f->name_len == strlen(name) && memcmp(f->name, name, f->name_len) == 0;
}

static int copy_str(char *dst, size_t cap, const char *src, size_t len)
{
    if (len >= cap || memchr(src, '\0', len) != NULL)
        return -1;
    memcpy(dst, src, len);
    dst[len] = '\0';
    return 0;
}

/* Comma-separated fingerprints, leaf excluded, root last. Empty is allowed. */
static int decode_chain(const char *s, size_t len, cg_reg_t *out)
{
    size_t pos = 0;
    out->chain_len = 0;
    if (len == 0)
        return 0;
    for (;;) {
        if (out->chain_len == CG_MAX_CHAIN || pos + CG_FP_HEX_LEN > len)
            return -1;
        if (cg_fp_from_hex(s + pos, CG_FP_HEX_LEN, &out->chain[out->chain_len]) != 0)
            return -1;
        out->chain_len++;
        pos += CG_FP_HEX_LEN;
        if (pos == len)
            return 0;
        if (s[pos] != ',')
            return -1;
        pos++;
    }
}

/* Optional time: absent or empty means "open". */
static int decode_opt_time(const cg_field_t *f, int64_t *out)
{
    if (f->value_len == 0) {
        *out = CG_TIME_UNSET;
        return 0;
    }
    return cg_parse_i64(f->value, f->value_len, out);
}

enum { F_ID = 1, F_APP = 2, F_STATUS = 4, F_FP = 8, F_FROM = 16, F_TO = 32 };
#define F_REQUIRED (F_ID | F_APP | F_STATUS | F_FP | F_FROM | F_TO)

int cg_reg_decode(const cg_field_t *fields, size_t n, cg_reg_t *out,
                  char *err, size_t errlen)
{
    unsigned seen = 0;
    const char *bad = NULL;

    memset(out, 0, sizeof(*out));
    out->activate_at = CG_TIME_UNSET;
    out->retire_at = CG_TIME_UNSET;

    for (size_t i = 0; i < n && bad == NULL; i++) {
        const cg_field_t *f = &fields[i];
        if (f->name == NULL || f->value == NULL) {
            bad = "null field";
        } else if (name_is(f, "id")) {
            if (!cg_id_valid(f->value, f->value_len) ||
                copy_str(out->id, sizeof(out->id), f->value, f->value_len) != 0)
                bad = "id";
            seen |= F_ID;
        } else if (name_is(f, "app_id")) {
            if (!cg_app_valid(f->value, f->value_len) ||
                copy_str(out->app_id, sizeof(out->app_id), f->value, f->value_len) != 0)
                bad = "app_id";
            seen |= F_APP;
        } else if (name_is(f, "customer_id")) {
            if ((f->value_len > 0 && !cg_app_valid(f->value, f->value_len)) ||
                copy_str(out->customer_id, sizeof(out->customer_id), f->value, f->value_len) != 0)
                bad = "customer_id";
        } else if (name_is(f, "status")) {
            if (cg_status_parse(f->value, f->value_len, &out->status) != 0)
                bad = "status";
            seen |= F_STATUS;
        } else if (name_is(f, "fingerprint")) {
            if (cg_fp_from_hex(f->value, f->value_len, &out->fingerprint) != 0)
                bad = "fingerprint";
            seen |= F_FP;
        } else if (name_is(f, "chain")) {
            if (decode_chain(f->value, f->value_len, out) != 0)
                bad = "chain";
        } else if (name_is(f, "valid_from")) {
            if (cg_parse_i64(f->value, f->value_len, &out->valid_from) != 0)
                bad = "valid_from";
            seen |= F_FROM;
        } else if (name_is(f, "valid_to")) {
            if (cg_parse_i64(f->value, f->value_len, &out->valid_to) != 0)
                bad = "valid_to";
            seen |= F_TO;
        } else if (name_is(f, "activate_at")) {
            if (decode_opt_time(f, &out->activate_at) != 0)
                bad = "activate_at";
        } else if (name_is(f, "retire_at")) {
            if (decode_opt_time(f, &out->retire_at) != 0)
                bad = "retire_at";
        }
    }
    if (bad == NULL && (seen & F_REQUIRED) != F_REQUIRED)
        bad = "missing required field";
    if (bad != NULL) {
        if (err != NULL && errlen > 0)
            snprintf(err, errlen, "malformed registration: %s", bad);
        return -1;
    }
    return 0;
}
