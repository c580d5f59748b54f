/* libFuzzer: the certificate reader (PEM, DER, base64, PKCS#7) and what we read from it. */
#include <stddef.h>
#include <stdint.h>
#include <openssl/x509.h>

#include "cg_cert.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[200];
    int p7 = 0;
    STACK_OF(X509) *sk = cg_cert_read_all(data, size, &p7, err, sizeof(err));
    if (sk == NULL)
        return 0;
    for (int i = 0; i < sk_X509_num(sk); i++) {
        cg_cert_info_t info;
        if (cg_cert_info(sk_X509_value(sk, i), &info, err, sizeof(err)) == 0)
            cg_cert_info_free(&info);
        if (i > 0)
            (void)cg_cert_link(sk_X509_value(sk, i - 1), sk_X509_value(sk, i));
    }
    (void)cg_cert_order_bag(sk, err, sizeof(err));
    sk_X509_pop_free(sk, X509_free);
    return 0;
}
