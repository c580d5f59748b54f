/* The registration model: one record binds a leaf certificate to an app. */
#ifndef CG_REG_H
#define CG_REG_H

#include <stddef.h>
#include <stdint.h>
#include "cg_fp.h"

#define CG_ID_MAX 64       /* registration id: [A-Za-z0-9._-], 1..64 */
#define CG_APP_MAX 128     /* app and customer ids: printable ASCII, 1..128 */
#define CG_TIME_UNSET INT64_MIN

typedef enum {
    CG_STATUS_PENDING = 0,
    CG_STATUS_APPROVED,
    CG_STATUS_DECLINED,
    CG_STATUS_INACTIVATED
} cg_status_t;

/* What the gate's lookup learnt about the owner of the registration's app. */
typedef enum {
    CG_OWNER_UNREAD = 0,    /* not looked up (a record decoded outside the gate) */
    CG_OWNER_NONE,          /* {prefix}appinfo:{app_id} has no customer_id */
    CG_OWNER_READ           /* app_owner holds it */
} cg_owner_state_t;

typedef struct {
    char id[CG_ID_MAX + 1];
    char app_id[CG_APP_MAX + 1];
    char customer_id[CG_APP_MAX + 1];   /* may be empty */
    cg_status_t status;
    cg_fp_t fingerprint;                /* SHA-256 of the leaf DER */
    cg_fp_t chain[CG_MAX_CHAIN];        /* above the leaf, ending with the root */
    size_t chain_len;
    int64_t valid_from, valid_to;       /* certificate validity, unix seconds */
    int64_t activate_at, retire_at;     /* binding window, CG_TIME_UNSET if open */
    char app_owner[CG_APP_MAX + 1];     /* customer_id of the app (third lookup step) */
    cg_owner_state_t app_owner_state;
} cg_reg_t;

/* A field of a record as read from the store (not NUL-terminated). */
typedef struct {
    const char *name;
    size_t name_len;
    const char *value;
    size_t value_len;
} cg_field_t;

const char *cg_status_name(cg_status_t s);
int cg_status_parse(const char *s, size_t len, cg_status_t *out);

/* Ids used inside Redis keys: no key syntax, no control bytes. */
int cg_id_valid(const char *s, size_t len);
int cg_app_valid(const char *s, size_t len);

/*
 * Decode a stored record. Unknown fields are ignored (the admin API stores
 * more); required fields that are missing or malformed fail. On failure,
 * returns -1 and writes a short reason (never record contents) to err.
 */
int cg_reg_decode(const cg_field_t *fields, size_t n, cg_reg_t *out,
                  char *err, size_t errlen);

/* Strict decimal int64, optional leading '-', no spaces. 0 on success. */
int cg_parse_i64(const char *s, size_t len, int64_t *out);

#endif
