/* SHA-256 certificate fingerprints: the pin that binds a leaf to an app. */
#ifndef CG_FP_H
#define CG_FP_H

#include <stddef.h>
#include <stdint.h>

#define CG_FP_LEN 32
#define CG_FP_HEX_LEN 64          /* lowercase hex, no separators */
#define CG_MAX_CHAIN 8            /* certs above the leaf we keep/compare */

typedef struct {
    unsigned char b[CG_FP_LEN];
} cg_fp_t;

/* SHA-256 of a DER buffer. Returns 0 on success, -1 on failure. */
int cg_fp_der(const unsigned char *der, size_t len, cg_fp_t *out);

/* OpenSSL's X509, declared here so this header needs no OpenSSL headers. */
struct x509_st;

/* SHA-256 of a decoded certificate's DER. 0 on success. */
int cg_fp_x509(struct x509_st *x, cg_fp_t *out);

/*
 * As cg_fp_x509, answered from a process-wide cache when x is byte for byte a
 * certificate digested before (cg_fpcache.c). For certificates decoded from
 * the wire (a TLS peer's); thread-safe. 0 on success.
 */
int cg_fp_x509_cached(struct x509_st *x, cg_fp_t *out);
/* Answers from the cache and digests made, so far in this process. */
void cg_fp_cache_stats(uint64_t *hits, uint64_t *misses);
/* Drop every kept fingerprint (process exit). */
void cg_fp_cache_clear(void);

/* out must hold CG_FP_HEX_LEN + 1 bytes. */
void cg_fp_to_hex(const cg_fp_t *fp, char *out);

/* Strict parse: exactly 64 hex digits (either case). 0 on success, -1 otherwise. */
int cg_fp_from_hex(const char *hex, size_t len, cg_fp_t *out);

int cg_fp_eq(const cg_fp_t *a, const cg_fp_t *b);

/*
 * Chain match. `presented` is what the client sent above its leaf, `registered`
 * what was registered above the leaf, ending with the root. They match when they
 * are equal element by element, or when the client left out only the root.
 */
int cg_chain_match(const cg_fp_t *presented, size_t n_presented,
                   const cg_fp_t *registered, size_t n_registered);

#endif
