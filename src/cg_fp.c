#include "cg_fp.h"

#include <string.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

int cg_fp_der(const unsigned char *der, size_t len, cg_fp_t *out)
{
    unsigned int n = 0;
    if (der == NULL || len == 0 || out == NULL)
        return -1;
    if (EVP_Digest(der, len, out->b, &n, EVP_sha256(), NULL) != 1 || n != CG_FP_LEN)
        return -1;
    return 0;
}

/* SHA-256 fetched once: EVP_sha256() makes OpenSSL 3 look the digest up in
 * its provider store on every use. Kept for the process's life. */
static EVP_MD *sha256_md;
static CRYPTO_ONCE sha256_once = CRYPTO_ONCE_STATIC_INIT;

static void sha256_fetch(void)
{
    sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
}

int cg_fp_x509(X509 *x, cg_fp_t *out)
{
    unsigned int n = 0;
    const EVP_MD *md = NULL;
    if (CRYPTO_THREAD_run_once(&sha256_once, sha256_fetch))
        md = sha256_md;
    /* X509_digest re-encodes the certificate (OpenSSL 3 keeps only the
     * to-be-signed part's DER) and hashes that; callers on a hot path keep
     * the result (cg_tls.c digests each certificate once per connection). */
    if (X509_digest(x, md != NULL ? md : EVP_sha256(), out->b, &n) != 1 || n != CG_FP_LEN)
        return -1;
    return 0;
}

void cg_fp_to_hex(const cg_fp_t *fp, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < CG_FP_LEN; i++) {
        out[2 * i] = digits[fp->b[i] >> 4];
        out[2 * i + 1] = digits[fp->b[i] & 0x0f];
    }
    out[CG_FP_HEX_LEN] = '\0';
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

int cg_fp_from_hex(const char *hex, size_t len, cg_fp_t *out)
{
    if (hex == NULL || len != CG_FP_HEX_LEN)
        return -1;
    for (size_t i = 0; i < CG_FP_LEN; i++) {
        int hi = hexval(hex[2 * i]), lo = hexval(hex[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return -1;
        out->b[i] = (unsigned char)((hi << 4) | lo);
    }
    return 0;
}

int cg_fp_eq(const cg_fp_t *a, const cg_fp_t *b)
{
    return memcmp(a->b, b->b, CG_FP_LEN) == 0;
}

int cg_chain_match(const cg_fp_t *presented, size_t n_presented,
                   const cg_fp_t *registered, size_t n_registered)
{
    if (n_presented != n_registered && n_presented + 1 != n_registered)
        return 0;
    for (size_t i = 0; i < n_presented; i++) {
        if (!cg_fp_eq(&presented[i], &registered[i]))
            return 0;
    }
    return 1;
}
