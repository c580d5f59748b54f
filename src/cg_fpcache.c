/*
 * Fingerprints of certificates seen before, for the whole process. A client
 * that connects again, and all the clients of one CA, present the same
 * certificates, and a SHA-256 of one costs about 23,000 instructions (OpenSSL 3
 * re-encodes it, then hashes it). A certificate is answered from here only if
 * it is byte for byte the one digested: the same to-be-signed encoding and
 * SHA-1 (X509_cmp), the same signature algorithm and the same signature bits,
 * which together are the whole DER. Only for certificates decoded from the
 * wire (X509_cmp compares the kept to-be-signed encoding of unmodified ones),
 * and only with both SHA-1s: X509_cmp skips them for a certificate that has
 * none (EXFLAG_NO_FINGERPRINT), and X509_ALGOR_cmp misses a BIT STRING
 * parameter's unused bits, which only the SHA-1 covers then.
 */
#include "cg_fp.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <openssl/asn1.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#define SLOTS 256               /* a power of two: direct-mapped, newest wins */
/* Bytes of DER a kept certificate may have: a client picks what it presents
 * (up to OpenSSL's 100 KiB list), and slots are held for the process's life. */
#define KEEP_MAX 16384

typedef struct {
    X509 *x;                    /* held (up-ref) while here */
    cg_fp_t fp;
} slot_t;

static slot_t slots[SLOTS];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static _Atomic uint64_t n_hits, n_misses;

/* The slot of x, from the end of its signature (random-looking bits). */
static int slot_of(const X509 *x, size_t *out)
{
    const ASN1_BIT_STRING *sig = NULL;
    const X509_ALGOR *alg = NULL;
    X509_get0_signature(&sig, &alg, x);
    if (sig == NULL)
        return -1;
    int n = ASN1_STRING_length(sig);
    const unsigned char *d = ASN1_STRING_get0_data(sig);
    if (d == NULL || n < 8)
        return -1;
    uint64_t h = 1469598103934665603ULL;
    for (int i = n - 8; i < n; i++) {
        h ^= d[i];
        h *= 1099511628211ULL;
    }
    *out = (size_t)(h & (SLOTS - 1));
    return 0;
}

/* Whether X509_cmp compares x's SHA-1 (computed with its extensions). */
static int has_sha1(X509 *x)
{
    uint32_t f = X509_get_extension_flags(x);
    return (f & EXFLAG_SET) != 0 && (f & EXFLAG_NO_FINGERPRINT) == 0;
}

/* Whether a and b have the same DER; b has a SHA-1 (has_sha1). */
static int same(X509 *a, const X509 *b)
{
    const ASN1_BIT_STRING *sa = NULL, *sb = NULL;
    const X509_ALGOR *aa = NULL, *ab = NULL;
    if (!has_sha1(a) || X509_cmp(a, b) != 0)
        return 0;
    X509_get0_signature(&sa, &aa, a);
    X509_get0_signature(&sb, &ab, b);
    if (sa == NULL || sb == NULL || aa == NULL || ab == NULL)
        return 0;
    /* The unused-bits flags decide the encoding of a bit string too. */
    return ASN1_STRING_cmp(sa, sb) == 0 && (sa->flags & 0x0f) == (sb->flags & 0x0f) &&
           X509_ALGOR_cmp(aa, ab) == 0;
}

int cg_fp_x509_cached(struct x509_st *x, cg_fp_t *out)
{
    size_t i = 0;
    /* x's SHA-1 and extensions outside the lock (the first time they cost a digest). */
    int keyed = slot_of(x, &i) == 0 && has_sha1(x);
    if (keyed) {
        int hit = 0;
        pthread_mutex_lock(&lock);
        if (slots[i].x != NULL && same(slots[i].x, x)) {
            *out = slots[i].fp;
            hit = 1;
        }
        pthread_mutex_unlock(&lock);
        if (hit) {
            atomic_fetch_add_explicit(&n_hits, 1, memory_order_relaxed);
            return 0;
        }
    }
    if (cg_fp_x509(x, out) != 0)
        return -1;
    atomic_fetch_add_explicit(&n_misses, 1, memory_order_relaxed);
    int der_len = keyed ? i2d_X509(x, NULL) : 0;
    if (der_len <= 0 || der_len > KEEP_MAX || X509_up_ref(x) != 1)
        return 0;       /* not kept: digested again next time */
    pthread_mutex_lock(&lock);
    X509 *old = slots[i].x;
    slots[i].x = x;
    slots[i].fp = *out;
    pthread_mutex_unlock(&lock);
    X509_free(old);     /* outside the lock; NULL is fine */
    return 0;
}

void cg_fp_cache_stats(uint64_t *hits, uint64_t *misses)
{
    *hits = atomic_load(&n_hits);
    *misses = atomic_load(&n_misses);
}

void cg_fp_cache_clear(void)
{
    X509 *old[SLOTS];
    pthread_mutex_lock(&lock);
    for (size_t i = 0; i < SLOTS; i++) {
        old[i] = slots[i].x;
        slots[i].x = NULL;
    }
    pthread_mutex_unlock(&lock);
    for (size_t i = 0; i < SLOTS; i++)
        X509_free(old[i]);      /* NULL is fine */
}
