#include "cg_cert.h"

#include <ctype.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/pem.h>
#include <openssl/pkcs7.h>
#include <openssl/x509v3.h>

static void say(char *err, size_t errlen, const char *msg)
{
    if (err != NULL && errlen > 0)
        snprintf(err, errlen, "%s", msg);
}

X509 *cg_cert_d2i(const unsigned char *p, size_t len)
{
    const unsigned char *q = p;
    if (len == 0 || len > CG_CERT_MAX_INPUT)
        return NULL;
    X509 *x = d2i_X509(NULL, &q, (long)len);
    if (x != NULL && q != p + len) {
        X509_free(x);
        return NULL;
    }
    return x;
}

/* The certificate at index `at` of a read: through the kept ones from keep_from on. */
static X509 *der_cert_at(const unsigned char *p, size_t len, int at, int keep_from)
{
    return at >= keep_from ? cg_cert_d2i_kept(p, len) : cg_cert_d2i(p, len);
}

static int push_pkcs7(STACK_OF(X509) *out, const unsigned char *p, size_t len)
{
    const unsigned char *q = p;
    PKCS7 *p7 = d2i_PKCS7(NULL, &q, (long)len);
    int rc = -1;
    if (p7 == NULL || q != p + len)
        goto done;
    STACK_OF(X509) *certs = NULL;
    if (PKCS7_type_is_signed(p7) && p7->d.sign != NULL)
        certs = p7->d.sign->cert;
    else if (PKCS7_type_is_signedAndEnveloped(p7) && p7->d.signed_and_enveloped != NULL)
        certs = p7->d.signed_and_enveloped->cert;
    if (certs == NULL || sk_X509_num(certs) == 0)
        goto done;
    for (int i = 0; i < sk_X509_num(certs); i++) {
        X509 *x = sk_X509_value(certs, i);
        if (!X509_up_ref(x))
            goto done;
        if (!sk_X509_push(out, x)) {
            X509_free(x);
            goto done;
        }
    }
    rc = 0;
done:
    PKCS7_free(p7);
    return rc;
}

static int is_b64(const unsigned char *p, size_t len)
{
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = p[i];
        if (isalnum(c) || c == '+' || c == '/' || c == '=')
            n++;
        else if (!isspace(c))
            return 0;
    }
    return n > 0;
}

/* Decode base64 (whitespace ignored). Returns malloc'd bytes or NULL. */
static unsigned char *b64_decode(const unsigned char *p, size_t len, size_t *outlen)
{
    unsigned char *clean = malloc(len + 1), *out = NULL;
    size_t n = 0;
    if (clean == NULL)
        return NULL;
    for (size_t i = 0; i < len; i++)
        if (!isspace(p[i]))
            clean[n++] = p[i];
    if (n == 0 || n % 4 != 0 || n > CG_CERT_MAX_INPUT * 2)
        goto done;
    out = malloc(n / 4 * 3 + 1);
    if (out == NULL)
        goto done;
    int d = EVP_DecodeBlock(out, clean, (int)n);
    if (d < 0) {
        free(out);
        out = NULL;
        goto done;
    }
    /* EVP_DecodeBlock counts padding as zero bytes. */
    if (clean[n - 1] == '=') d--;
    if (clean[n - 2] == '=') d--;
    *outlen = (size_t)d;
done:
    free(clean);
    return out;
}

static int read_pem(STACK_OF(X509) *out, const unsigned char *buf, size_t len, int *p7,
                    int keep_from, char *err, size_t errlen)
{
    BIO *bio = BIO_new_mem_buf(buf, (int)len);
    int rc = -1, blocks = 0;
    if (bio == NULL) {
        say(err, errlen, "out of memory");
        return -1;
    }
    for (;;) {
        char *name = NULL, *header = NULL;
        unsigned char *data = NULL;
        long dlen = 0;
        ERR_clear_error();
        if (!PEM_read_bio(bio, &name, &header, &data, &dlen)) {
            unsigned long e = ERR_peek_last_error();
            if (blocks > 0 && ERR_GET_LIB(e) == ERR_LIB_PEM &&
                ERR_GET_REASON(e) == PEM_R_NO_START_LINE)
                rc = 0;
            else
                say(err, errlen, blocks ? "a PEM block after the first is truncated or not "
                                          "valid base64" : "no readable PEM block");
            break;
        }
        blocks++;
        int ok = 0;
        if (strcmp(name, "CERTIFICATE") == 0 || strcmp(name, "X509 CERTIFICATE") == 0) {
            X509 *x = der_cert_at(data, (size_t)dlen, sk_X509_num(out), keep_from);
            ok = x != NULL && sk_X509_push(out, x);
            if (x != NULL && !ok)
                X509_free(x);
            if (!ok)
                say(err, errlen, "a CERTIFICATE block does not hold a valid certificate");
        } else if (strcmp(name, "PKCS7") == 0) {
            ok = push_pkcs7(out, data, (size_t)dlen) == 0;
            *p7 = 1;
            if (!ok)
                say(err, errlen, "the PKCS7 block holds no readable certificates");
        } else {
            /* Never name key blocks back verbatim beyond their type. */
            if (err != NULL && errlen > 0)
                snprintf(err, errlen, "unexpected PEM block type '%.40s' where a certificate "
                         "was expected", name);
        }
        if (data != NULL)
            OPENSSL_cleanse(data, (size_t)dlen);
        OPENSSL_free(name);
        OPENSSL_free(header);
        OPENSSL_free(data);
        if (!ok)
            break;
    }
    BIO_free(bio);
    ERR_clear_error();
    return rc;
}

static int read_der(STACK_OF(X509) *out, const unsigned char *p, size_t len, int *p7,
                    int keep_from)
{
    X509 *x = der_cert_at(p, len, sk_X509_num(out), keep_from);
    if (x != NULL) {
        if (!sk_X509_push(out, x)) {
            X509_free(x);
            return -1;
        }
        return 0;
    }
    if (push_pkcs7(out, p, len) == 0) {
        *p7 = 1;
        return 0;
    }
    return -1;
}

STACK_OF(X509) *cg_cert_read_all(const unsigned char *buf, size_t len, int *from_pkcs7,
                                 char *err, size_t errlen)
{
    return cg_cert_read_all_kept(buf, len, from_pkcs7, INT_MAX, err, errlen);
}

STACK_OF(X509) *cg_cert_read_all_kept(const unsigned char *buf, size_t len, int *from_pkcs7,
                                      int keep_from, char *err, size_t errlen)
{
    STACK_OF(X509) *out;
    int p7 = 0, rc;

    if (buf == NULL || len == 0) {
        say(err, errlen, "the certificate is empty");
        return NULL;
    }
    if (len > CG_CERT_MAX_INPUT) {
        say(err, errlen, "the certificate input is too large");
        return NULL;
    }
    out = sk_X509_new_null();
    if (out == NULL) {
        say(err, errlen, "out of memory");
        return NULL;
    }
    if (memmem(buf, len, "-----BEGIN", 10) != NULL) {
        /* PEM is text: binary bytes anywhere (trailing junk, NULs) are refused,
         * explanatory text around blocks is not (RFC 7468). */
        for (size_t i = 0; i < len; i++) {
            unsigned char ch = buf[i];
            if ((ch < 0x20 && ch != '\t' && ch != '\n' && ch != '\r') || ch == 0x7f) {
                say(err, errlen, "binary data in a PEM upload");
                sk_X509_free(out);
                return NULL;
            }
        }
        rc = read_pem(out, buf, len, &p7, keep_from, err, errlen);
    } else {
        rc = read_der(out, buf, len, &p7, keep_from);
        if (rc != 0 && is_b64(buf, len)) {
            size_t dlen = 0;
            unsigned char *der = b64_decode(buf, len, &dlen);
            rc = der ? read_der(out, der, dlen, &p7, keep_from) : -1;
            free(der);
        }
        if (rc != 0)
            say(err, errlen, "not a PEM, DER, base64 DER or PKCS#7 certificate");
    }
    ERR_clear_error();
    if (rc != 0 || sk_X509_num(out) == 0) {
        if (rc == 0)
            say(err, errlen, "no certificate found");
        sk_X509_pop_free(out, X509_free);
        return NULL;
    }
    if (from_pkcs7 != NULL)
        *from_pkcs7 = p7;
    return out;
}

int cg_cert_order_bag(STACK_OF(X509) *sk, char *err, size_t errlen)
{
    int n = sk_X509_num(sk);
    int leaf = -1;
    if (n <= 0 || n > CG_MAX_CHAIN + 1) {
        say(err, errlen, "the bundle must hold 1 to 9 certificates");
        return -1;
    }
    /* The leaf issues nothing in the bag. */
    for (int i = 0; i < n; i++) {
        int issues = 0;
        for (int j = 0; j < n && !issues; j++)
            if (i != j && X509_check_issued(sk_X509_value(sk, i), sk_X509_value(sk, j)) == X509_V_OK)
                issues = 1;
        if (!issues) {
            if (leaf >= 0) {
                say(err, errlen, "the bundle holds more than one leaf certificate");
                return -1;
            }
            leaf = i;
        }
    }
    if (leaf < 0) {
        say(err, errlen, "the bundle has no leaf certificate");
        return -1;
    }
    /* Selection sort by issuer, leaf first. */
    X509 *tmp = sk_X509_value(sk, 0);
    sk_X509_set(sk, 0, sk_X509_value(sk, leaf));
    sk_X509_set(sk, leaf, tmp);
    for (int i = 1; i < n; i++) {
        X509 *child = sk_X509_value(sk, i - 1);
        int found = -1;
        for (int j = i; j < n && found < 0; j++)
            if (X509_check_issued(sk_X509_value(sk, j), child) == X509_V_OK)
                found = j;
        if (found < 0) {
            say(err, errlen, "the bundle's certificates do not form one chain");
            return -1;
        }
        tmp = sk_X509_value(sk, i);
        sk_X509_set(sk, i, sk_X509_value(sk, found));
        sk_X509_set(sk, found, tmp);
    }
    return 0;
}

static char *name_oneline(X509_NAME *name)
{
    BIO *b = BIO_new(BIO_s_mem());
    char *out = NULL, *p;
    if (b == NULL)
        return NULL;
    if (X509_NAME_print_ex(b, name, 0, XN_FLAG_RFC2253 & ~ASN1_STRFLGS_ESC_MSB) >= 0) {
        long n = BIO_get_mem_data(b, &p);
        if (n >= 0 && n <= CG_NAME_MAX && (out = malloc((size_t)n + 1)) != NULL) {
            memcpy(out, p, (size_t)n);
            out[n] = '\0';
        }
    }
    BIO_free(b);
    return out;
}

/* First entry of nid as UTF-8; "" when absent; NULL (error) if bad or too long. */
static char *name_entry(X509_NAME *name, int nid, int *bad)
{
    int idx = X509_NAME_get_index_by_NID(name, nid, -1);
    unsigned char *utf8 = NULL;
    char *out;
    if (idx < 0)
        return strdup("");
    ASN1_STRING *s = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, idx));
    int n = ASN1_STRING_to_UTF8(&utf8, s);
    if (n < 0 || n > CG_NAME_MAX || memchr(utf8, '\0', (size_t)n) != NULL) {
        OPENSSL_free(utf8);
        *bad = 1;
        return NULL;
    }
    out = malloc((size_t)n + 1);
    if (out != NULL) {
        memcpy(out, utf8, (size_t)n);
        out[n] = '\0';
    }
    OPENSSL_free(utf8);
    return out;
}

static int64_t asn1_time(const ASN1_TIME *t)
{
    struct tm tm;
    if (t == NULL || ASN1_TIME_to_tm(t, &tm) != 1)
        return INT64_MIN;
    return (int64_t)timegm(&tm);
}

static int add_san(cg_cert_info_t *info, const char *kind, const unsigned char *v, int n)
{
    if (info->n_sans >= CG_SANS_MAX || n < 0 || n > CG_NAME_MAX)
        return -1;
    if (memchr(v, '\0', (size_t)n) != NULL)
        return -1;   /* a NUL in a name is an attack on string handling */
    size_t klen = strlen(kind);
    char *s = malloc(klen + (size_t)n + 2);
    if (s == NULL)
        return -1;
    memcpy(s, kind, klen);
    s[klen] = ':';
    memcpy(s + klen + 1, v, (size_t)n);
    s[klen + 1 + n] = '\0';
    info->sans[info->n_sans++] = s;
    return 0;
}

static int read_sans(X509 *x, cg_cert_info_t *info)
{
    int crit = 0, rc = 0;
    GENERAL_NAMES *gens = X509_get_ext_d2i(x, NID_subject_alt_name, &crit, NULL);
    if (gens == NULL)
        return crit == -1 ? 0 : -1;   /* absent is fine; present but unreadable is not */
    for (int i = 0; i < sk_GENERAL_NAME_num(gens) && rc == 0; i++) {
        GENERAL_NAME *g = sk_GENERAL_NAME_value(gens, i);
        char ip[64];
        switch (g->type) {
        case GEN_DNS:
            rc = add_san(info, "DNS", ASN1_STRING_get0_data(g->d.dNSName),
                         ASN1_STRING_length(g->d.dNSName));
            break;
        case GEN_EMAIL:
            rc = add_san(info, "email", ASN1_STRING_get0_data(g->d.rfc822Name),
                         ASN1_STRING_length(g->d.rfc822Name));
            break;
        case GEN_URI:
            rc = add_san(info, "URI", ASN1_STRING_get0_data(g->d.uniformResourceIdentifier),
                         ASN1_STRING_length(g->d.uniformResourceIdentifier));
            break;
        case GEN_IPADD: {
            const unsigned char *a = ASN1_STRING_get0_data(g->d.iPAddress);
            int n = ASN1_STRING_length(g->d.iPAddress);
            if (n == 4)
                snprintf(ip, sizeof(ip), "%u.%u.%u.%u", a[0], a[1], a[2], a[3]);
            else if (n == 16) {
                size_t pos = 0;
                for (int k = 0; k < 16; k += 2)
                    pos += (size_t)snprintf(ip + pos, sizeof(ip) - pos, "%s%x", k ? ":" : "",
                                            (unsigned)(a[k] << 8 | a[k + 1]));
            } else {
                rc = -1;
                break;
            }
            rc = add_san(info, "IP", (const unsigned char *)ip, (int)strlen(ip));
            break;
        }
        default:
            break;   /* other forms are not shown */
        }
    }
    GENERAL_NAMES_free(gens);
    return rc;
}

int cg_cert_info(X509 *x, cg_cert_info_t *info, char *err, size_t errlen)
{
    int bad = 0;
    memset(info, 0, sizeof(*info));
    X509_NAME *subj = X509_get_subject_name(x), *iss = X509_get_issuer_name(x);

    info->subject = name_oneline(subj);
    info->issuer = name_oneline(iss);
    info->common_name = name_entry(subj, NID_commonName, &bad);
    info->organization = name_entry(subj, NID_organizationName, &bad);
    info->organizational_unit = name_entry(subj, NID_organizationalUnitName, &bad);
    info->country = name_entry(subj, NID_countryName, &bad);
    info->state = name_entry(subj, NID_stateOrProvinceName, &bad);
    info->locality = name_entry(subj, NID_localityName, &bad);
    if (bad || !info->subject || !info->issuer || !info->common_name || !info->organization ||
        !info->organizational_unit || !info->country || !info->state || !info->locality) {
        say(err, errlen, "a subject or issuer name is too long or not valid text");
        goto fail;
    }
    BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(x), NULL);
    char *dec = bn ? BN_bn2dec(bn) : NULL;
    BN_free(bn);
    if (dec == NULL) {
        say(err, errlen, "the serial number is not readable");
        goto fail;
    }
    info->serial = strdup(dec);
    OPENSSL_free(dec);
    if (info->serial == NULL)
        goto nomem;
    info->not_before = asn1_time(X509_get0_notBefore(x));
    info->not_after = asn1_time(X509_get0_notAfter(x));
    if (info->not_before == INT64_MIN || info->not_after == INT64_MIN) {
        say(err, errlen, "the validity dates are not readable");
        goto fail;
    }
    if (cg_fp_x509(x, &info->fingerprint) != 0)
        goto nomem;
    if (read_sans(x, info) != 0) {
        say(err, errlen, "a subjectAltName is not valid (NUL byte, too long or too many)");
        goto fail;
    }
    /* X509_get_extension_flags also caches the decoded extensions. */
    uint32_t flags = X509_get_extension_flags(x);
    if (flags & EXFLAG_INVALID) {
        say(err, errlen, "the certificate has invalid extensions");
        goto fail;
    }
    info->is_ca = X509_check_ca(x) != 0 && (flags & EXFLAG_CA) != 0;
    info->has_eku = (flags & EXFLAG_XKUSAGE) != 0;
    info->eku_client_auth = info->has_eku && (X509_get_extended_key_usage(x) & XKU_SSL_CLIENT);
    info->self_signed = (flags & EXFLAG_SS) != 0;
    EVP_PKEY *pk = X509_get0_pubkey(x);
    if (pk == NULL) {
        say(err, errlen, "the public key is not readable");
        goto fail;
    }
    info->key_type = EVP_PKEY_get_base_id(pk);
    info->key_bits = EVP_PKEY_get_bits(pk);
    if (info->key_type == EVP_PKEY_EC) {
        char curve[64];
        size_t cl = 0;
        if (EVP_PKEY_get_utf8_string_param(pk, "group", curve, sizeof(curve), &cl) == 1)
            info->ec_nid = OBJ_sn2nid(curve) != NID_undef ? OBJ_sn2nid(curve) : OBJ_ln2nid(curve);
    }
    CERTIFICATEPOLICIES *pol = X509_get_ext_d2i(x, NID_certificate_policies, NULL, NULL);
    if (pol != NULL) {
        ASN1_OBJECT *ev = OBJ_txt2obj("2.23.140.1.1", 1);
        for (int i = 0; ev != NULL && i < sk_POLICYINFO_num(pol); i++)
            if (OBJ_cmp(sk_POLICYINFO_value(pol, i)->policyid, ev) == 0)
                info->has_ev_policy = 1;
        ASN1_OBJECT_free(ev);
        CERTIFICATEPOLICIES_free(pol);
    }
    ERR_clear_error();
    return 0;
nomem:
    say(err, errlen, "out of memory");
fail:
    ERR_clear_error();
    cg_cert_info_free(info);
    return -1;
}

void cg_cert_info_free(cg_cert_info_t *info)
{
    free(info->subject); free(info->issuer); free(info->common_name);
    free(info->organization); free(info->organizational_unit); free(info->country);
    free(info->state); free(info->locality); free(info->serial);
    for (size_t i = 0; i < info->n_sans; i++)
        free(info->sans[i]);
    memset(info, 0, sizeof(*info));
}

size_t cg_cert_drop_repeats(STACK_OF(X509) *sk)
{
    size_t dropped = 0;
    for (int i = 1; i < sk_X509_num(sk); i++) {
        for (int j = 0; j < i; j++) {
            if (X509_cmp(sk_X509_value(sk, j), sk_X509_value(sk, i)) == 0) {
                X509_free(sk_X509_delete(sk, i));
                dropped++;
                i--;
                break;
            }
        }
    }
    return dropped;
}

const char *cg_cert_link_words(int code)
{
    switch (code) {
    case X509_V_ERR_SUBJECT_ISSUER_MISMATCH:
        return "its issuer name is not the next certificate's subject";
    case X509_V_ERR_AKID_SKID_MISMATCH:
    case X509_V_ERR_AKID_ISSUER_SERIAL_MISMATCH:
        return "its authority key identifier does not name the next certificate's key";
    case X509_V_ERR_CERT_SIGNATURE_FAILURE:
        return "the names match but the next certificate's key did not sign it "
               "(an older or reissued CA with the same name?)";
    case X509_V_ERR_KEYUSAGE_NO_CERTSIGN:
        return "the next certificate may not sign certificates (keyUsage without keyCertSign)";
    default:
        return X509_verify_cert_error_string(code);
    }
}

int cg_cert_link(X509 *child, X509 *issuer)
{
    int rc = X509_check_issued(issuer, child);
    if (rc != X509_V_OK)
        return rc;
    if (cg_cert_link_known(child, issuer))
        return X509_V_OK;
    EVP_PKEY *pk = X509_get0_pubkey(issuer);
    rc = (pk != NULL && X509_verify(child, pk) == 1) ? X509_V_OK : X509_V_ERR_CERT_SIGNATURE_FAILURE;
    ERR_clear_error();
    if (rc == X509_V_OK)
        cg_cert_link_note(child, issuer);
    return rc;
}

static int no_passphrase(char *buf, int size, int rwflag, void *u)
{
    (void)buf; (void)size; (void)rwflag; (void)u;
    return 0;
}

int cg_cert_key_matches(X509 *x, const char *pem, size_t len)
{
    if (pem == NULL || len == 0 || len > 1024 * 1024)
        return -1;
    BIO *b = BIO_new_mem_buf(pem, (int)len);
    if (b == NULL)
        return -1;
    EVP_PKEY *k = PEM_read_bio_PrivateKey(b, NULL, no_passphrase, NULL);
    BIO_free(b);
    ERR_clear_error();
    if (k == NULL)
        return -1;
    int ok = X509_check_private_key(x, k);
    EVP_PKEY_free(k);
    ERR_clear_error();
    return ok == 1 ? 0 : 1;
}

void cg_time_iso(int64_t t, char *out, size_t cap)
{
    struct tm tm;
    time_t tt = (time_t)t;
    if (gmtime_r(&tt, &tm) == NULL || strftime(out, cap, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
        snprintf(out, cap, "invalid");
}

int cg_time_parse_iso(const char *s, int64_t *out)
{
    struct tm tm;
    memset(&tm, 0, sizeof(tm));
    if (s == NULL || strlen(s) != 20)
        return -1;
    const char *end = strptime(s, "%Y-%m-%dT%H:%M:%SZ", &tm);
    if (end == NULL || *end != '\0')
        return -1;
    *out = (int64_t)timegm(&tm);
    return 0;
}
