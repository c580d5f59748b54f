/*
 * Certificates as uploaded: reading PEM, DER, base64 DER and PKCS#7, the facts
 * the admin API shows, chain links, and private-key proof of possession.
 * This is the only place that parses certificates, and only the admin API
 * calls it: the gate never parses per request.
 */
#ifndef CG_CERT_H
#define CG_CERT_H

#include <stddef.h>
#include <stdint.h>
#include <openssl/x509.h>
#include "cg_fp.h"

#define CG_CERT_MAX_INPUT (8u * 1024u * 1024u)
#define CG_NAME_MAX 1024      /* longest subject/issuer field we accept */
#define CG_SANS_MAX 64

/*
 * Read every certificate in buf, in order. Accepts PEM CERTIFICATE and PKCS7
 * blocks (explanatory text around blocks is allowed, as RFC 7468 says), one
 * DER certificate, a DER PKCS#7 bundle, or base64 of either DER form.
 * Returns a new stack (free with sk_X509_pop_free(sk, X509_free)) or NULL with
 * a message in err that never quotes the input.
 */
STACK_OF(X509) *cg_cert_read_all(const unsigned char *buf, size_t len, int *from_pkcs7,
                                 char *err, size_t errlen);

/*
 * The same, with the certificates from index keep_from on decoded through the
 * process's kept ones (cg_certkeep.c): chain certificates, which repeat from
 * upload to upload. A kept certificate is shared: never modify one.
 */
STACK_OF(X509) *cg_cert_read_all_kept(const unsigned char *buf, size_t len, int *from_pkcs7,
                                      int keep_from, char *err, size_t errlen);

/* One DER certificate that must be consumed whole: trailing bytes mean a
 * broken upload. A new certificate, or NULL. */
X509 *cg_cert_d2i(const unsigned char *der, size_t len);
/* The same, from the kept ones when the same bytes were decoded before; a new
 * reference, or NULL. */
X509 *cg_cert_d2i_kept(const unsigned char *der, size_t len);
/* Whether child's signature was verified with issuer's key before, both kept
 * objects; and remember that it was. */
int cg_cert_link_known(X509 *child, X509 *issuer);
void cg_cert_link_note(X509 *child, X509 *issuer);
/* Counters for tests and status; and drop every kept certificate. */
void cg_cert_kept_stats(uint64_t *hits, uint64_t *misses, uint64_t *links);
void cg_cert_kept_clear(void);

/* Order a PKCS#7 bag leaf first by issuer names. 0, or -1 (err) if there is not
 * exactly one leaf or the certificates do not form one chain. */
int cg_cert_order_bag(STACK_OF(X509) *sk, char *err, size_t errlen);

/*
 * Drop certificates that repeat an earlier one byte for byte (a chain file
 * that starts with the leaf itself, sent next to the leaf). Returns how many.
 */
size_t cg_cert_drop_repeats(STACK_OF(X509) *sk);

/* Why cg_cert_link refused a link, in words for the person who built the chain. */
const char *cg_cert_link_words(int code);

typedef struct {
    char *subject, *issuer;                 /* RFC 2253 */
    char *common_name, *organization, *organizational_unit;
    char *country, *state, *locality;
    char *serial;                           /* decimal */
    char *sans[CG_SANS_MAX];                /* "DNS:x", "email:x", "IP:x", "URI:x" */
    size_t n_sans;
    int64_t not_before, not_after;
    cg_fp_t fingerprint;
    int is_ca;
    int has_eku, eku_client_auth;
    int self_signed;
    int key_type;                           /* EVP_PKEY_RSA, EVP_PKEY_EC, or other */
    int key_bits;
    int ec_nid;                             /* curve, for EC keys */
    int has_ev_policy;                      /* CA/Browser Forum EV OID */
} cg_cert_info_t;

/* Fill info from x. 0, or -1 with err (names too long, NUL in a SAN...). */
int cg_cert_info(X509 *x, cg_cert_info_t *info, char *err, size_t errlen);
void cg_cert_info_free(cg_cert_info_t *info);

/* Does `issuer` issue `child`: names match and the signature verifies.
 * Returns X509_V_OK or an X509_V_ERR_* code. */
int cg_cert_link(X509 *child, X509 *issuer);

/*
 * Proof of possession: does the PEM private key belong to the certificate?
 * 0 match, 1 mismatch, -1 unreadable (encrypted keys are unreadable: no
 * passphrase is ever asked). The key is freed before returning.
 */
int cg_cert_key_matches(X509 *x, const char *pem, size_t len);

/* ISO 8601 UTC without milliseconds: 2025-06-25T08:59:38Z. out >= 21 bytes. */
void cg_time_iso(int64_t t, char *out, size_t cap);
/* Parse that form (Z required). 0 on success. */
int cg_time_parse_iso(const char *s, int64_t *out);

#endif
