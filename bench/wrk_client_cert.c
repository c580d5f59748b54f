/*
 * LD_PRELOAD shim: wrk cannot present a client certificate, so this wraps
 * SSL_CTX_new and loads CERTGATE_BENCH_CERT (PEM chain) and CERTGATE_BENCH_KEY
 * into every client context wrk creates. Bench-only; never loaded by httpd.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <openssl/ssl.h>

SSL_CTX *SSL_CTX_new(const SSL_METHOD *method)
{
    static SSL_CTX *(*real)(const SSL_METHOD *);
    if (real == NULL)
        real = (SSL_CTX * (*)(const SSL_METHOD *)) dlsym(RTLD_NEXT, "SSL_CTX_new");
    SSL_CTX *ctx = real ? real(method) : NULL;
    const char *cert = getenv("CERTGATE_BENCH_CERT"), *key = getenv("CERTGATE_BENCH_KEY");
    if (ctx != NULL && cert != NULL && key != NULL) {
        if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1 ||
            SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
            fprintf(stderr, "wrk_client_cert: cannot load %s / %s\n", cert, key);
            exit(2);
        }
        /* A new TLS handshake per connection: no resumption across connections. */
        if (getenv("CERTGATE_BENCH_NO_TICKETS") != NULL)
            SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    }
    return ctx;
}
