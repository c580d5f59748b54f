/* libFuzzer: the registration record decoder (what is read back from Redis). */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "cg_decide.h"
#include "cg_reg.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* Fields are separated by 0xff bytes: name, value, name, value... */
    cg_field_t fields[64];
    const char *parts[128];
    size_t lens[128], n = 0, start = 0;
    for (size_t i = 0; i <= size && n < 128; i++) {
        if (i == size || data[i] == 0xff) {
            parts[n] = (const char *)data + start;
            lens[n] = i - start;
            n++;
            start = i + 1;
        }
    }
    size_t nf = 0;
    for (size_t i = 0; i + 1 < n && nf < 64; i += 2, nf++) {
        fields[nf].name = parts[i];
        fields[nf].name_len = lens[i];
        fields[nf].value = parts[i + 1];
        fields[nf].value_len = lens[i + 1];
    }
    cg_reg_t reg;
    char err[128];
    if (cg_reg_decode(fields, nf, &reg, err, sizeof(err)) == 0) {
        /* A decoded record must be safe to decide on at any time. */
        cg_input_t in = { .leaf = &reg.fingerprint, .chain = reg.chain,
                          .chain_len = reg.chain_len, .chain_known = 1, .now = reg.valid_from,
                          .reg = &reg, .app = reg.app_id };
        (void)cg_decide(&in);
        (void)cg_expire_in_days(&reg, reg.valid_to);
    }
    return 0;
}
