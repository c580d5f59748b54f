#include "cg_tls.h"

#include <stdio.h>
#include <stdatomic.h>
#include <string.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

/* Ticket app data: magic, count, then count fingerprints. */
static const unsigned char ticket_magic[4] = { 'C', 'G', 'C', '1' };
#define TICKET_MAX (sizeof(ticket_magic) + 1 + (CG_MAX_CHAIN + 1) * CG_FP_LEN)

/*
 * The digests of a connection's certificates, kept on its SSL: the ticket
 * callback (twice per TLS 1.3 handshake) and the first request need the same
 * ones, and each costs a re-encoding and a SHA-256. Each certificate is held
 * (up-ref) while remembered, so a pointer cannot be reused for another one.
 * One thread at a time uses an SSL, so no lock.
 */
#define MEMO_MAX (CG_MAX_CHAIN + 2)
typedef struct {
    size_t n;
    X509 *x[MEMO_MAX];
    cg_fp_t fp[MEMO_MAX];
} fp_memo_t;

static int memo_idx = -1;
static CRYPTO_ONCE memo_once = CRYPTO_ONCE_STATIC_INIT;

static void memo_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl,
                      void *argp)
{
    fp_memo_t *m = ptr;
    (void)parent; (void)ad; (void)idx; (void)argl; (void)argp;
    if (m == NULL)
        return;
    for (size_t i = 0; i < m->n; i++)
        X509_free(m->x[i]);
    OPENSSL_free(m);
}

static void memo_init(void)
{
    memo_idx = SSL_get_ex_new_index(0, NULL, NULL, NULL, memo_free);
}

/* The fingerprint of x, a certificate of ssl's peer: from this connection's memo, else
 * from the process cache (cg_fp_x509_cached), digested once per connection at most. */
static int fp_of(SSL *ssl, X509 *x, cg_fp_t *out)
{
    fp_memo_t *m = NULL;
    int have_idx = CRYPTO_THREAD_run_once(&memo_once, memo_init) && memo_idx >= 0;
    if (have_idx) {
        m = SSL_get_ex_data(ssl, memo_idx);
        for (size_t i = 0; m != NULL && i < m->n; i++) {
            if (m->x[i] == x) {
                *out = m->fp[i];
                return 0;
            }
        }
    }
    if (cg_fp_x509_cached(x, out) != 0)
        return -1;
    if (!have_idx)
        return 0;   /* no memo: digest again next time */
    if (m == NULL) {
        m = OPENSSL_zalloc(sizeof(*m));
        if (m == NULL)
            return 0;
        if (SSL_set_ex_data(ssl, memo_idx, m) != 1) {
            OPENSSL_free(m);
            return 0;
        }
    }
    if (m->n < MEMO_MAX && X509_up_ref(x) == 1) {
        m->x[m->n] = x;
        m->fp[m->n] = *out;
        m->n++;
    }
    return 0;
}

static int chain_from_stack(SSL *ssl, STACK_OF(X509) *sk, cg_peer_t *peer)
{
    int n = sk ? sk_X509_num(sk) : 0;
    peer->chain_len = 0;
    for (int i = 0; i < n && peer->chain_len < CG_MAX_CHAIN + 1; i++) {
        if (fp_of(ssl, sk_X509_value(sk, i), &peer->chain[peer->chain_len]) != 0)
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
    static _Atomic uint64_t fills;
    memset(peer, 0, sizeof(*peer));
    peer->gen = atomic_fetch_add_explicit(&fills, 1, memory_order_relaxed) + 1;
    X509 *leaf = SSL_get0_peer_certificate(ssl);
    if (leaf == NULL)
        return 0;
    if (fp_of(ssl, leaf, &peer->leaf) != 0) {
        snprintf(err, errlen, "X509_digest of the client leaf failed");
        return -1;
    }
    cg_fp_to_hex(&peer->leaf, peer->leaf_hex);
    peer->has_leaf = 1;
    long v = SSL_get_verify_result(ssl);
    peer->verify_failed = v != X509_V_OK && !issuer_unknown(v);
    peer->resumed = SSL_session_reused(ssl);
    STACK_OF(X509) *sk = SSL_get_peer_cert_chain(ssl);
    if (!peer->resumed || (sk != NULL && sk_X509_num(sk) > 0)) {
        if (chain_from_stack(ssl, sk, peer) != 0) {
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
    if (chain_from_stack(s, sk, &peer) != 0)
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
