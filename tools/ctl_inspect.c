/* certgatectl inspect: the upload's reading and policy, offline, with the core. */
#include "ctl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <openssl/crypto.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include "cg_cert.h"
#include "cg_policy.h"

static int parse_policy(ctl_args_t *a, cg_policy_t *p, cg_ca_entry_t **cas, const char **org)
{
    const char *v;
    char *end;
    cg_policy_defaults(p);
    if ((v = ctl_opt(a, "min-rsa-bits")) != NULL) {
        long bits = strtol(v, &end, 10);
        if (*v == '\0' || *end != '\0' || bits < 512 || bits > 16384)
            return ctl_usage_error(a, "--min-rsa-bits: a number of bits, 512 to 16384");
        p->min_rsa_bits = (int)bits;
    }
    if ((v = ctl_opt(a, "validity-days")) != NULL) {
        long lo = strtol(v, &end, 10), hi;
        if (end == v || (*end != ',' && *end != ' ' && *end != ':'))
            return ctl_usage_error(a, "--validity-days: MIN,MAX");
        const char *h = end + 1;
        hi = strtol(h, &end, 10);
        if (end == h || *end != '\0' || lo < 1 || hi < lo || hi > 100000)
            return ctl_usage_error(a, "--validity-days: MIN,MAX with 1 <= MIN <= MAX");
        p->min_days = (int)lo;
        p->max_days = (int)hi;
    }
    const char *deny[CG_POLICY_DENY_MAX];
    size_t nd = ctl_opt_all(a, "issuer-deny", deny, CG_POLICY_DENY_MAX);
    if (nd > 0) {
        p->n_deny = 0;
        for (size_t i = 0; i < nd; i++)
            if (strcasecmp(deny[i], "none") != 0)
                p->deny[p->n_deny++] = deny[i];
    }
    if ((v = ctl_opt(a, "authorized-cas")) != NULL) {
        char err[256];
        *cas = calloc(CG_POLICY_CA_MAX, sizeof(cg_ca_entry_t));
        if (*cas == NULL)
            return CTL_ERR;
        int n = cg_policy_load_cas(v, *cas, CG_POLICY_CA_MAX, err, sizeof(err));
        if (n < 0) {
            fprintf(stderr, "certgatectl inspect: %s: %s\n", v, err);
            return CTL_USAGE;
        }
        p->cas = *cas;
        p->n_cas = (size_t)n;
    }
    p->ev_only_new = ctl_flag(a, "ev-only-new");
    if ((*org = ctl_opt(a, "org")) != NULL && **org != '\0')
        p->cn_contains_org = 1;
    return CTL_OK;
}

/* Append the certificates of one file; *p7 is set when it was PKCS#7. */
static int read_into(const char *path, STACK_OF(X509) *all, int *p7, char *err, size_t errlen)
{
    size_t len;
    unsigned char *buf = ctl_read_file(path, CG_CERT_MAX_INPUT, &len);
    if (buf == NULL)
        return CTL_ERR;
    int from_p7 = 0;
    char why[200];
    STACK_OF(X509) *sk = cg_cert_read_all(buf, len, &from_p7, why, sizeof(why));
    free(buf);
    if (sk == NULL) {
        snprintf(err, errlen, "%s: %s", path, why);
        return CTL_REFUSED;
    }
    *p7 |= from_p7;
    while (sk_X509_num(sk) > 0) {
        X509 *x = sk_X509_shift(sk);
        if (sk_X509_push(all, x) <= 0) {
            X509_free(x);
            sk_X509_pop_free(sk, X509_free);
            snprintf(err, errlen, "out of memory");
            return CTL_ERR;
        }
    }
    sk_X509_free(sk);
    return CTL_OK;
}

/* One certificate as text or JSON; link is how it links to the next one. */
static json_t *describe(X509 *x, int i, const char *link, int json)
{
    cg_cert_info_t info;
    char err[200], from[32], to[32], fp[CG_FP_HEX_LEN + 1];
    if (cg_cert_info(x, &info, err, sizeof(err)) != 0) {
        if (!json)
            printf("%d  unreadable: %s\n", i, err);
        return json ? json_pack("{s:i,s:s}", "index", i, "error", err) : NULL;
    }
    cg_fp_to_hex(&info.fingerprint, fp);
    cg_time_iso(info.not_before, from, sizeof(from));
    cg_time_iso(info.not_after, to, sizeof(to));
    json_t *out = NULL;
    if (json) {
        out = json_pack("{s:i,s:s,s:s,s:s,s:s,s:s,s:b,s:b,s:s}", "index", i, "fingerprint", fp,
                        "subject", info.subject ? info.subject : "", "issuer",
                        info.issuer ? info.issuer : "", "validFrom", from, "validTo", to, "isCA",
                        info.is_ca, "selfSigned", info.self_signed, "link", link);
    } else {
        printf("%d  %s  sha256 %s\n", i, i == 0 ? "leaf" : info.self_signed ? "root" : "CA  ", fp);
        printf("   subject: %s\n   issuer:  %s\n   valid:   %s .. %s\n   link:    %s\n",
               info.subject ? info.subject : "", info.issuer ? info.issuer : "", from, to, link);
    }
    cg_cert_info_free(&info);
    return out;
}

int ctl_read_certs(const char *const *paths, size_t n, STACK_OF(X509) **out,
                   const char **code, char *msg, size_t cap)
{
    char err[300] = "";
    int p7 = 0, rc = CTL_OK;
    STACK_OF(X509) *certs = sk_X509_new_null();
    *out = NULL;
    *code = NULL;
    if (certs == NULL)
        return CTL_ERR;
    for (size_t i = 0; i < n && rc == CTL_OK; i++)
        rc = read_into(paths[i], certs, &p7, err, sizeof(err));
    if (rc == CTL_REFUSED) {
        *code = "Certificate.Invalid";
        snprintf(msg, cap, "%s", err);
    } else if (rc == CTL_OK) {
        cg_cert_drop_repeats(certs);
        if (p7 && cg_cert_order_bag(certs, err, sizeof(err)) != 0) {
            *code = "Upload.Certificate.Invalid";
            snprintf(msg, cap, "PKCS#7 bundle: %s", err);
            rc = CTL_REFUSED;
        } else if (sk_X509_num(certs) == 0) {
            *code = "Certificate.Invalid";
            snprintf(msg, cap, "no certificate in the files given");
            rc = CTL_REFUSED;
        }
    } else if (*err) {
        fprintf(stderr, "certgatectl: %s\n", err);
    }
    if (rc == CTL_OK)
        *out = certs;
    else
        sk_X509_pop_free(certs, X509_free);
    return rc;
}

int ctl_cmd_inspect(ctl_args_t *a)
{
    cg_policy_t pol;
    cg_ca_entry_t *cas = NULL;
    const char *org = NULL, *code = NULL;
    char msg[512] = "", err[300] = "";
    int rc = parse_policy(a, &pol, &cas, &org);
    STACK_OF(X509) *certs = NULL;
    if (rc != CTL_OK)
        goto out;
    const char *paths[CTL_MAX_POS + 1];
    size_t np = 0;
    for (size_t i = 0; i < a->npos; i++)
        paths[np++] = a->pos[i];
    if (ctl_opt(a, "chain") != NULL)
        paths[np++] = ctl_opt(a, "chain");
    rc = ctl_read_certs(paths, np, &certs, &code, msg, sizeof(msg));
    if (rc == CTL_ERR)
        goto out;
    int n = certs ? sk_X509_num(certs) : 0;
    json_t *list = a->json ? json_array() : NULL;
    for (int i = 0; code == NULL && i < n; i++) {
        X509 *x = sk_X509_value(certs, i);
        char link[300];
        if (i + 1 < n) {
            int lc = cg_cert_link(x, sk_X509_value(certs, i + 1));
            snprintf(link, sizeof(link), "%s", lc == X509_V_OK ? "issued by the next (signature ok)"
                     : cg_cert_link_words(lc));
        } else {
            snprintf(link, sizeof(link), "%s", X509_check_issued(x, x) == X509_V_OK
                     ? "self-signed (the root)" : "last, not self-signed: the root is missing");
        }
        json_t *d = describe(x, i, link, a->json);
        if (list != NULL && d != NULL)
            json_array_append_new(list, d);
    }
    int64_t now = (int64_t)time(NULL);
    const char *pk = ctl_opt(a, "private-key");
    if (code == NULL && n > 0 && pk != NULL) {
        size_t len;
        unsigned char *key = ctl_read_file(pk, 1024 * 1024, &len);
        if (key == NULL) {
            json_decref(list);
            rc = CTL_ERR;
            goto out;
        }
        int m = cg_cert_key_matches(sk_X509_value(certs, 0), (const char *)key, len);
        OPENSSL_cleanse(key, len);
        free(key);
        if (m != 0) {
            code = "PrivateKey.Invalid";
            snprintf(msg, sizeof(msg), "%s", m < 0 ? "the private key is not a readable, "
                     "unencrypted PEM private key" : "the private key does not belong to the leaf");
        }
    }
    if (code == NULL && n > 0) {
        cg_cert_info_t info;
        if (cg_cert_info(sk_X509_value(certs, 0), &info, err, sizeof(err)) != 0) {
            code = "Certificate.Invalid";
            snprintf(msg, sizeof(msg), "certificate: %s", err);
        } else {
            if (info.not_after < now) {
                code = "Certificate.Expired";
                snprintf(msg, sizeof(msg), "the certificate has already expired");
            }
            cg_cert_info_free(&info);
        }
    }
    if (code == NULL && cg_policy_check(&pol, certs, org, now, &code, msg, sizeof(msg)) == 0)
        code = NULL;
    if (a->json) {
        json_t *o = json_pack("{s:o,s:{s:b,s:s?,s:s?}}", "certificates", list ? list : json_array(),
                              "policy", "ok", code == NULL, "code", code,
                              "message", code ? msg : NULL);
        ctl_print_json(o);
        json_decref(o);
    } else if (code == NULL) {
        printf("policy: ok (the upload policy accepts this chain)\n");
    } else {
        printf("policy: refused: %s: %s\n", code, msg);
    }
    rc = code == NULL ? CTL_OK : CTL_REFUSED;
out:
    if (certs != NULL)
        sk_X509_pop_free(certs, X509_free);
    free(cas);
    return rc;
}
