#include "cg_tls.h"

#include <stdio.h>
#include <string.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

/* Ticket app data: magic, count, then count fingerprints. */
static const unsigned char ticket_magic[4] = { 'C', 'G', 'C', '1' };
#define TICKET_MAX (sizeof(ticket_magic) + 1 + (CG_MAX_CHAIN + 1) * CG_FP_LEN)

static int chain_from_stack(STACK_OF(X509) *sk, cg_peer_t *peer)
{
    int n = sk ? sk_X509_num(sk) : 0;
    peer->chain_len = 0;
    for (int i = 0; i < n && peer->chain_len < CG_MAX_CHAIN + 1; i++) {
        if (cg_fp_x509(sk_X509_value(sk, i), &peer->chain[peer->chain_len]) != 0)
            return -1;
        peer->chain_len++;
    }
    return 0;
}

static int chain_from_ticket(SSL_SESSION *sess, cg_peer_t *peer)
{
    void *data = NULL;
    size_t len = 0;
    const unsigned char *p;

    if (sess == NULL || SSL_SESSION_get0_ticket_appdata(sess, &data, &len) != 1 ||
        data == NULL || len < sizeof(ticket_magic) + 1)
        return -1;
    p = data;
    if (memcmp(p, ticket_magic, sizeof(ticket_magic)) != 0)
        return -1;
    size_t n = p[sizeof(ticket_magic)];
    if (n > CG_MAX_CHAIN + 1 || len != sizeof(ticket_magic) + 1 + n * CG_FP_LEN)
        return -1;
    p += sizeof(ticket_magic) + 1;
    for (size_t i = 0; i < n; i++)
        memcpy(peer->chain[i].b, p + i * CG_FP_LEN, CG_FP_LEN);
    peer->chain_len = n;
    return 0;
}

/* The errors that only say the issuer is unknown to this server: the
 * registration, not a CA file, is then the trust anchor. */
static int issuer_unknown(long v)
{
    return v == X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT ||
           v == X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN ||
           v == X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY ||
           v == X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT ||
           v == X509_V_ERR_CERT_UNTRUSTED ||
           v == X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE;
}

int cg_tls_peer(SSL *ssl, cg_peer_t *peer, char *err, size_t errlen)
{
    memset(peer, 0, sizeof(*peer));
    X509 *leaf = SSL_get0_peer_certificate(ssl);
    if (leaf == NULL)
        return 0;
    if (cg_fp_x509(leaf, &peer->leaf) != 0) {
        snprintf(err, errlen, "X509_digest of the client leaf failed");
        return -1;
    }
    peer->has_leaf = 1;
    long v = SSL_get_verify_result(ssl);
    peer->verify_failed = v != X509_V_OK && !issuer_unknown(v);
    peer->resumed = SSL_session_reused(ssl);
    STACK_OF(X509) *sk = SSL_get_peer_cert_chain(ssl);
    if (!peer->resumed || (sk != NULL && sk_X509_num(sk) > 0)) {
        if (chain_from_stack(sk, peer) != 0) {
            snprintf(err, errlen, "X509_digest of a client chain certificate failed");
            return -1;
        }
        peer->chain_known = 1;
    } else if (chain_from_ticket(SSL_get_session(ssl), peer) == 0) {
        peer->chain_known = 1;
    }
    return 0;
}

static int gen_ticket(SSL *s, void *arg)
{
    unsigned char buf[TICKET_MAX];
    cg_peer_t peer;
    SSL_SESSION *sess = SSL_get_session(s);
    (void)arg;

    if (sess == NULL || SSL_get0_peer_certificate(s) == NULL)
        return 1;
    /* On a resumption the stack is empty; keep the app data we already carry. */
    memset(&peer, 0, sizeof(peer));
    STACK_OF(X509) *sk = SSL_get_peer_cert_chain(s);
    if (SSL_session_reused(s) && (sk == NULL || sk_X509_num(sk) == 0))
        return 1;
    if (chain_from_stack(sk, &peer) != 0)
        return 1;   /* no app data: a resumption then answers chain_mismatch */
    memcpy(buf, ticket_magic, sizeof(ticket_magic));
    buf[sizeof(ticket_magic)] = (unsigned char)peer.chain_len;
    for (size_t i = 0; i < peer.chain_len; i++)
        memcpy(buf + sizeof(ticket_magic) + 1 + i * CG_FP_LEN, peer.chain[i].b, CG_FP_LEN);
    /* Failure leaves the ticket without app data: fail closed on resumption. */
    (void)SSL_SESSION_set1_ticket_appdata(sess, buf,
                                          sizeof(ticket_magic) + 1 + peer.chain_len * CG_FP_LEN);
    return 1;
}

int cg_tls_install_ticket_cb(SSL_CTX *ctx)
{
    return SSL_CTX_set_session_ticket_cb(ctx, gen_ticket, NULL, NULL) == 1 ? 0 : -1;
}

size_t cg_x509_der_b64_size(X509 *x)
{
    int n = i2d_X509(x, NULL);
    if (n <= 0)
        return 0;
    return ((size_t)n + 2) / 3 * 4 + 1;
}

int cg_x509_der_b64(X509 *x, char *out, size_t cap)
{
    unsigned char *der = NULL;
    int n = i2d_X509(x, &der);
    int rc = -1;

    if (n <= 0)
        return -1;
    if (((size_t)n + 2) / 3 * 4 + 1 <= cap)
        rc = EVP_EncodeBlock((unsigned char *)out, der, n);
    OPENSSL_free(der);
    return rc;
}
