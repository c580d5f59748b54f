/*
 * Chain certificates decoded before, for the whole process. Developers upload
 * many leaves under the same intermediate and root, and with OpenSSL 3.0 each
 * d2i_X509 costs about 1.5 million instructions (it builds a decoder context
 * for the public key) and each signature check of a P-256 chain link about
 * 0.9 million: two thirds of an upload's CPU went to certificates the process
 * had already read and checked.
 *
 * A certificate is answered from here only for the same DER, byte for byte.
 * Kept certificates are never modified (the admin code only reads them), so a
 * kept object stands for its DER, and "child's signature verified with
 * issuer's key" is remembered per pair of kept objects: each slot holds a
 * reference to the issuer that verified it, so the pointer cannot be reused
 * for another certificate while it is remembered.
 */
#include "cg_cert.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define SLOTS 64                /* a power of two: direct-mapped, newest wins */
#define KEEP_MAX 16384          /* bytes of DER a kept certificate may have */

typedef struct {
    unsigned char *der;
    size_t len;
    X509 *x;                    /* held while here */
    X509 *signer;               /* held: a kept issuer whose key verified x, or NULL */
} slot_t;

static slot_t slots[SLOTS];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static _Atomic uint64_t n_hits, n_misses, n_links;

/* The slot of a DER, from its length and its last bytes (signature bits). */
static size_t slot_of(const unsigned char *der, size_t len)
{
    uint64_t h = 1469598103934665603ULL ^ len;
    size_t from = len > 32 ? len - 32 : 0;
    for (size_t i = from; i < len; i++) {
        h ^= der[i];
        h *= 1099511628211ULL;
    }
    return (size_t)(h & (SLOTS - 1));
}

X509 *cg_cert_d2i_kept(const unsigned char *der, size_t len)
{
    if (der == NULL)
        return NULL;
    if (len == 0 || len > KEEP_MAX)
        return cg_cert_d2i(der, len);     /* refused, or decoded and not kept */
    size_t i = slot_of(der, len);
    X509 *x = NULL;
    pthread_mutex_lock(&lock);
    slot_t *s = &slots[i];
    if (s->x != NULL && s->len == len && memcmp(s->der, der, len) == 0 && X509_up_ref(s->x) == 1)
        x = s->x;
    pthread_mutex_unlock(&lock);
    if (x != NULL) {
        atomic_fetch_add_explicit(&n_hits, 1, memory_order_relaxed);
        return x;
    }
    atomic_fetch_add_explicit(&n_misses, 1, memory_order_relaxed);
    x = cg_cert_d2i(der, len);       /* outside the lock: this is the slow part */
    if (x == NULL)
        return NULL;
    unsigned char *copy = malloc(len);
    if (copy == NULL || X509_up_ref(x) != 1) {
        free(copy);
        return x;                   /* not kept: decoded again next time */
    }
    memcpy(copy, der, len);
    pthread_mutex_lock(&lock);
    slot_t old = *s;
    s->der = copy;
    s->len = len;
    s->x = x;
    s->signer = NULL;
    pthread_mutex_unlock(&lock);
    free(old.der);
    X509_free(old.x);               /* NULL is fine */
    X509_free(old.signer);
    return x;
}

/* The slot holding x, or NULL; under the lock. */
static slot_t *slot_holding(const X509 *x)
{
    for (size_t i = 0; i < SLOTS; i++)
        if (slots[i].x == x)
            return &slots[i];
    return NULL;
}

int cg_cert_link_known(X509 *child, X509 *issuer)
{
    pthread_mutex_lock(&lock);
    slot_t *s = slot_holding(child);
    int known = s != NULL && s->signer != NULL && s->signer == issuer;
    pthread_mutex_unlock(&lock);
    if (known)
        atomic_fetch_add_explicit(&n_links, 1, memory_order_relaxed);
    return known;
}

void cg_cert_link_note(X509 *child, X509 *issuer)
{
    X509 *drop = NULL;
    pthread_mutex_lock(&lock);
    slot_t *s = slot_holding(child);
    /* Only between kept objects: any other pointer never comes back. */
    if (s != NULL && slot_holding(issuer) != NULL && X509_up_ref(issuer) == 1) {
        drop = s->signer;
        s->signer = issuer;
    }
    pthread_mutex_unlock(&lock);
    X509_free(drop);
}

void cg_cert_kept_stats(uint64_t *hits, uint64_t *misses, uint64_t *links)
{
    *hits = atomic_load(&n_hits);
    *misses = atomic_load(&n_misses);
    *links = atomic_load(&n_links);
}

void cg_cert_kept_clear(void)
{
    pthread_mutex_lock(&lock);
    slot_t old[SLOTS];
    memcpy(old, slots, sizeof(old));
    memset(slots, 0, sizeof(slots));
    pthread_mutex_unlock(&lock);
    for (size_t i = 0; i < SLOTS; i++) {
        free(old[i].der);
        X509_free(old[i].x);
        X509_free(old[i].signer);
    }
}
