/*
 * What the client presented, read from an established OpenSSL connection.
 * Nothing here parses a certificate: OpenSSL already holds them decoded.
 */
#ifndef CG_TLS_H
#define CG_TLS_H

#include <stddef.h>
#include <stdint.h>
#include <openssl/ssl.h>
#include "cg_fp.h"

typedef struct {
    int has_leaf;
    cg_fp_t leaf;
    /* leaf in hex, made once per connection by cg_tls_peer; "" if not made */
    char leaf_hex[CG_FP_HEX_LEN + 1];
    /* One more than a registration can hold, so an over-long chain never matches. */
    cg_fp_t chain[CG_MAX_CHAIN + 1];
    size_t chain_len;
    int chain_known;     /* 0 on a resumed session whose ticket carried no chain */
    int resumed;
    /* Verification failed for a reason other than "issuer not trusted here"
     * (which SSLVerifyClient optional_no_ca accepts by design). */
    int verify_failed;
    /* Unique per fill (cg_tls_peer): a decision remembered for this peer is
     * not reused after a renegotiation filled it again. */
    uint64_t gen;
} cg_peer_t;

/* cg_fp_x509 (cg_fp.h) hashes a decoded certificate; cg_tls_peer and the
 * ticket callback digest each certificate of a connection once (kept on the SSL). */

/* Fill peer from ssl. 0 on success, -1 on an OpenSSL failure (err says which). */
int cg_tls_peer(SSL *ssl, cg_peer_t *peer, char *err, size_t errlen);

/*
 * Keep the presented chain's fingerprints in the session ticket, so a resumed
 * session (which OpenSSL restores with the leaf only) can still be matched.
 * Install once per server SSL_CTX before it serves. 0 on success.
 */
int cg_tls_install_ticket_cb(SSL_CTX *ctx);

/*
 * Base64 of a certificate's DER (RFC 9440 Client-Cert value without colons).
 * Writes at most cap bytes including the NUL. Returns the length, or -1.
 */
int cg_x509_der_b64(X509 *x, char *out, size_t cap);

/* Size cg_x509_der_b64 needs for x, or 0 on failure. */
size_t cg_x509_der_b64_size(X509 *x);

#endif
