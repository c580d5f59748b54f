#include "cg_policy.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <openssl/bn.h>
#include <openssl/obj_mac.h>
#include <openssl/x509v3.h>

#include "cg_cert.h"

void cg_policy_defaults(cg_policy_t *p)
{
    memset(p, 0, sizeof(*p));
    p->min_rsa_bits = 2048;
    p->min_days = 365;
    p->max_days = 1095;
    p->deny[0] = "Let's Encrypt";
    p->n_deny = 1;
}

static int fail(const char **code, const char *c, char *msg, size_t msglen, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

static int fail(const char **code, const char *c, char *msg, size_t msglen, const char *fmt, ...)
{
    va_list ap;
    *code = c;
    va_start(ap, fmt);
    vsnprintf(msg, msglen, fmt, ap);
    va_end(ap);
    return -1;
}

static int ci_contains(const char *hay, const char *needle)
{
    size_t n = strlen(needle);
    if (n == 0)
        return 0;
    for (; *hay; hay++)
        if (strncasecmp(hay, needle, n) == 0)
            return 1;
    return 0;
}

static int serial_matches(X509 *x, const char *want)
{
    BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(x), NULL), *w = NULL;
    int ok = 0;
    if (bn == NULL)
        return 0;
    if (strncasecmp(want, "0x", 2) == 0)
        ok = BN_hex2bn(&w, want + 2) > 0;
    else
        ok = BN_dec2bn(&w, want) > 0;
    ok = ok && BN_cmp(bn, w) == 0;
    BN_free(bn);
    BN_free(w);
    return ok;
}

int cg_policy_check(const cg_policy_t *p, STACK_OF(X509) *sk, const char *org, int64_t now,
                    const char **code, char *msg, size_t msglen)
{
    cg_cert_info_t info[10];
    X509 *certs[10];
    char err[160];
    size_t got = 0, n = (size_t)sk_X509_num(sk);
    int rc = -1;

    if (n < 2)
        return fail(code, "Chain.Invalid", msg, msglen,
                    "the chain is missing: send the issuing certificates up to and including "
                    "the root, ordered leaf to root");
    if (n > 9)
        return fail(code, "Chain.Invalid", msg, msglen, "the chain is longer than 8 certificates");
    for (size_t i = 0; i < n; i++)
        certs[i] = sk_X509_value(sk, (int)i);
    for (; got < n; got++) {
        if (cg_cert_info(certs[got], &info[got], err, sizeof(err)) != 0) {
            fail(code, got == 0 ? "Certificate.Invalid" : "Chain.Invalid", msg, msglen,
                 "%s %zu: %s", got == 0 ? "certificate" : "chain element", got, err);
            goto done;
        }
    }
    /* Links, leaf to root. */
    for (size_t i = 0; i + 1 < n; i++) {
        int v = cg_cert_link(certs[i], certs[i + 1]);
        if (v != X509_V_OK) {
            char which[48];
            if (i == 0)
                snprintf(which, sizeof(which), "the certificate");
            else
                snprintf(which, sizeof(which), "chain element %zu", i);
            fail(code, "Chain.Invalid", msg, msglen,
                 "%s (%s) was not issued by the next one, chain element %zu (%s): %s. Send the "
                 "chain ordered leaf to root, each certificate issued by the one after it, "
                 "ending with the root", which, info[i].subject, i + 1, info[i + 1].subject,
                 cg_cert_link_words(v));
            goto done;
        }
    }
    if (!info[n - 1].self_signed || cg_cert_link(certs[n - 1], certs[n - 1]) != X509_V_OK) {
        fail(code, "Chain.Invalid", msg, msglen,
             "the last element (%s) is not a self-signed root: include the root",
             info[n - 1].subject);
        goto done;
    }
    /* Roles: a client leaf is never a CA, a CA is never a client. */
    if (info[0].is_ca) {
        fail(code, "Policy.LeafIsCA", msg, msglen,
             "the leaf is a CA certificate (basicConstraints CA:TRUE); issue a client "
             "certificate with CA:FALSE");
        goto done;
    }
    for (size_t i = 1; i < n; i++) {
        if (!info[i].is_ca) {
            fail(code, "Policy.IssuerNotCA", msg, msglen,
                 "chain element %zu (%s) is not a CA certificate (basicConstraints CA:TRUE)",
                 i, info[i].subject);
            goto done;
        }
        if (info[i].eku_client_auth) {
            fail(code, "Policy.MixedRoles", msg, msglen,
                 "CA certificate %zu (%s) also allows clientAuth; keep CA and client roles "
                 "in separate certificates", i, info[i].subject);
            goto done;
        }
    }
    if (info[0].has_eku && !info[0].eku_client_auth) {
        fail(code, "Policy.ExtendedKeyUsage", msg, msglen,
             "the leaf's extendedKeyUsage does not include clientAuth");
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        if (info[i].key_type == EVP_PKEY_RSA || info[i].key_type == EVP_PKEY_RSA_PSS) {
            if (info[i].key_bits < p->min_rsa_bits) {
                fail(code, "Policy.KeyTooWeak", msg, msglen,
                     "%s %zu has a %d-bit RSA key; at least %d bits are required",
                     i ? "chain element" : "certificate", i, info[i].key_bits, p->min_rsa_bits);
                goto done;
            }
        } else if (info[i].key_type == EVP_PKEY_EC) {
            if (info[i].ec_nid != NID_X9_62_prime256v1 && info[i].ec_nid != NID_secp384r1 &&
                info[i].ec_nid != NID_secp521r1) {
                fail(code, "Policy.KeyTooWeak", msg, msglen,
                     "%s %zu uses an EC curve other than P-256, P-384 or P-521",
                     i ? "chain element" : "certificate", i);
                goto done;
            }
        } else {
            fail(code, "Policy.KeyTooWeak", msg, msglen,
                 "%s %zu has a key type other than RSA or EC (P-256 or stronger)",
                 i ? "chain element" : "certificate", i);
            goto done;
        }
    }
    /* A per-app self-signed root: the leaf lives between min and max days. */
    if (n == 2) {
        int64_t days = (info[0].not_after - info[0].not_before) / 86400;
        if (days < p->min_days || days > p->max_days) {
            fail(code, "Policy.Validity", msg, msglen,
                 "under a self-signed root the leaf must be valid for %d to %d days; it is "
                 "valid for %lld days", p->min_days, p->max_days, (long long)days);
            goto done;
        }
    }
    for (size_t d = 0; d < p->n_deny; d++) {
        for (size_t i = 0; i < n; i++) {
            if (ci_contains(info[i].issuer, p->deny[d]) || (i > 0 && ci_contains(info[i].subject, p->deny[d]))) {
                fail(code, "Policy.IssuerDenied", msg, msglen,
                     "certificates from '%s' are not accepted for client authentication; use "
                     "another CA", p->deny[d]);
                goto done;
            }
        }
    }
    if (p->cas != NULL) {
        const cg_ca_entry_t *match = NULL;
        for (size_t i = 1; i < n && match == NULL; i++)
            for (size_t c = 0; c < p->n_cas && match == NULL; c++)
                if (p->cas[c].expires >= now && ci_contains(info[i].subject, p->cas[c].name) &&
                    serial_matches(certs[i], p->cas[c].serial))
                    match = &p->cas[c];
        if (match == NULL) {
            fail(code, "Policy.IssuerNotAuthorized", msg, msglen,
                 "the chain does not contain a CA from the authorized CA list (or its entry "
                 "has expired)");
            goto done;
        }
        if (p->ev_only_new && !match->ev) {
            fail(code, "Policy.IssuerNotEV", msg, msglen,
                 "new enrolments must use an EV CA; '%s' is not one", match->name);
            goto done;
        }
    }
    if (p->cn_contains_org) {
        if (org == NULL || org[0] == '\0') {
            fail(code, "Policy.CommonNameOrganization", msg, msglen,
                 "the app owner's organization is not known, so the common name cannot be "
                 "checked; ask support to record it");
            goto done;
        }
        if (!ci_contains(info[0].common_name, org)) {
            fail(code, "Policy.CommonNameOrganization", msg, msglen,
                 "the common name must contain the organization name '%s'", org);
            goto done;
        }
    }
    rc = 0;
done:
    for (size_t i = 0; i < got; i++)
        cg_cert_info_free(&info[i]);
    return rc;
}

int cg_policy_load_cas(const char *path, cg_ca_entry_t *out, size_t cap, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    char line[1024];
    int n = 0, lineno = 0;
    if (f == NULL) {
        snprintf(err, errlen, "cannot open %s", path);
        return -1;
    }
    while (fgets(line, sizeof(line), f) != NULL) {
        lineno++;
        char *s = line;
        while (isspace((unsigned char)*s))
            s++;
        s[strcspn(s, "\r\n")] = '\0';
        if (*s == '\0' || *s == '#')
            continue;
        char *fields[4] = { 0 };
        int k = 0;
        for (char *tok = strtok(s, "|"); tok != NULL && k < 4; tok = strtok(NULL, "|"))
            fields[k++] = tok;
        int64_t exp;
        char iso[32];
        if (k != 4 || (size_t)n >= cap || strlen(fields[0]) >= sizeof(out->name) ||
            strlen(fields[1]) >= sizeof(out->serial) ||
            snprintf(iso, sizeof(iso), "%.10sT23:59:59Z", fields[2]) != 20 ||
            cg_time_parse_iso(iso, &exp) != 0 ||
            (strcmp(fields[3], "EV") != 0 && strcmp(fields[3], "-") != 0)) {
            snprintf(err, errlen, "%s line %d: expected name|serial|YYYY-MM-DD|EV or -", path, lineno);
            fclose(f);
            return -1;
        }
        strcpy(out[n].name, fields[0]);
        strcpy(out[n].serial, fields[1]);
        out[n].expires = exp;
        out[n].ev = strcmp(fields[3], "EV") == 0;
        n++;
    }
    fclose(f);
    return n;
}
