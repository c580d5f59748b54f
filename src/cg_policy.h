/* The upload policy: rules a certificate and its chain must meet to be registered. */
#ifndef CG_POLICY_H
#define CG_POLICY_H

#include <stddef.h>
#include <stdint.h>
#include <openssl/x509.h>

#define CG_POLICY_DENY_MAX 32
#define CG_POLICY_CA_MAX 256

typedef struct {
    char name[256];         /* matched against the CA's subject (case-insensitive substring) */
    char serial[80];        /* decimal or hex (0x...) serial of the CA certificate */
    int64_t expires;        /* the entry is void after this time */
    int ev;                 /* an EV CA */
} cg_ca_entry_t;

typedef struct {
    int min_rsa_bits;                       /* default 2048 */
    int min_days, max_days;                 /* self-signed roots: leaf validity, 365..1095 */
    const char *deny[CG_POLICY_DENY_MAX];   /* issuer denylist, case-insensitive substrings */
    size_t n_deny;
    const cg_ca_entry_t *cas;               /* authorized CA list, or NULL for none */
    size_t n_cas;
    int ev_only_new;                        /* new enrolments must chain to an EV CA */
    int cn_contains_org;                    /* CN must contain the app owner's organization */
} cg_policy_t;

/* Defaults of the providers we serve. */
void cg_policy_defaults(cg_policy_t *p);

/*
 * Check the chain in certs, leaf first, root last. org is the app owner's
 * organization (for cn_contains_org), may be NULL. Returns 0 when it passes;
 * otherwise -1 with a stable code ("Chain.Invalid", "Policy.KeyTooWeak", ...)
 * and a message that says what to fix.
 */
int cg_policy_check(const cg_policy_t *p, STACK_OF(X509) *certs, const char *org,
                    int64_t now, const char **code, char *msg, size_t msglen);

/*
 * Load an authorized-CA list: one CA per line, "name|serial|YYYY-MM-DD|EV or -",
 * '#' comments and blank lines ignored. Returns the count, or -1 with err.
 */
int cg_policy_load_cas(const char *path, cg_ca_entry_t *out, size_t cap, char *err, size_t errlen);

#endif
