/* libFuzzer: the admin API's request body parser (JSON and raw uploads). */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cg_admin.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const types[] = { "application/json", "application/x-pem-file",
                                         "application/pkcs7-mime", NULL };
    cg_admin_resp_t resp;
    /* First byte picks the content type; the rest is the body. */
    const char *ct = size > 0 ? types[data[0] % 4] : NULL;
    unsigned char *body = malloc(size ? size : 1);
    if (body == NULL)
        return 0;
    if (size > 1)
        memcpy(body, data + 1, size - 1);
    memset(&resp, 0, sizeof(resp));
    (void)cg_admin_parse_upload(ct, "appId=fuzz&customerId=c1", body, size ? size - 1 : 0, &resp);
    cg_admin_resp_free(&resp);
    free(body);
    return 0;
}
