/* The decision: fingerprints + app + time + registration -> allow or a reason. */
#ifndef CG_DECIDE_H
#define CG_DECIDE_H

#include <stdint.h>
#include "cg_fp.h"
#include "cg_reg.h"

typedef enum {
    CG_ALLOW = 0,
    CG_R_NO_CLIENT_CERT,
    CG_R_UNREGISTERED,
    CG_R_PENDING,
    CG_R_DECLINED,
    CG_R_INACTIVATED,
    CG_R_EXPIRED,
    CG_R_NOT_YET_VALID,
    CG_R_NOT_YET_ACTIVE,
    CG_R_RETIRED,
    CG_R_CHAIN_MISMATCH,
    CG_R_APP_MISMATCH,
    CG_R_STORE_UNAVAILABLE,
    CG_R_APP_AMBIGUOUS,
    CG_R__COUNT
} cg_reason_t;

typedef struct {
    const cg_fp_t *leaf;        /* NULL: the client sent no certificate */
    const cg_fp_t *chain;       /* presented above the leaf */
    size_t chain_len;
    int chain_known;            /* 0: chain not available (resumed session) */
    int verify_failed;          /* mod_ssl / TLS layer verification failed */
    const char *app;            /* app the location requires, NULL: any */
    int app_ambiguous;          /* the request named more than one app */
    int64_t now;                /* unix seconds */
    const cg_reg_t *reg;        /* NULL: no registration for the leaf */
} cg_input_t;

/* Wire name of a reason ("allow", "pending", ...). */
const char *cg_reason_name(cg_reason_t r);

/* One sentence for people: what the reason means and what to do. */
const char *cg_reason_message(cg_reason_t r);

/* HTTP status the adapters answer with: 200, 403 or 503. */
int cg_reason_http_status(cg_reason_t r);

/*
 * Decide. Checks run in a fixed, documented order (docs/reasons.md):
 * one app named, cert, registration, app, status, validity, window, chain.
 * With app_ambiguous set no registration is needed: adapters skip the lookup.
 */
cg_reason_t cg_decide(const cg_input_t *in);

/*
 * Whether header name a (alen bytes) is header name b for a backend: equal
 * after ASCII case folding with '_' and '-' taken as the same character
 * (CGI/WSGI turn both into '_'). 1: same, 0: not.
 */
int cg_header_name_same(const char *a, size_t alen, const char *b, size_t blen);

/* Whether an app header value names more than one app (a ',' list). */
int cg_app_value_is_list(const char *v, size_t len);

/*
 * The body adapters send with a deny when no operator error page is set:
 * JSON when the client accepts it, else one line of text. Writes at most cap
 * bytes including the NUL; returns the length, or -1 if cap is too small.
 * *ctype gets the Content-Type.
 */
#define CG_DENY_BODY_MAX 512
int cg_deny_body(cg_reason_t r, int json, char *buf, size_t cap, const char **ctype);

/* Whole days left until valid_to (floored, 0 if past). */
int64_t cg_expire_in_days(const cg_reg_t *reg, int64_t now);

#endif
