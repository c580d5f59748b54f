/*
 * The registration store's layout in Redis, as the admin API writes it and
 * the gate reads it: key names, the write scripts (each starting with the
 * guard prelude), running them, and loading records. docs/redis-schema.md
 * describes the keys.
 */
#ifndef CG_REGISTRY_H
#define CG_REGISTRY_H

#include <stddef.h>
#include <stdint.h>
#include <hiredis/hiredis.h>
#include <jansson.h>
#include "cg_store.h"

/* Key names below the configured prefix: "{prefix}" CG_K_REG "{id}". */
#define CG_K_SCHEMA     "schema"        /* string: the schema version */
#define CG_K_REG        "reg:"          /* hash: a registration, by id */
#define CG_K_FP         "fp:"           /* string: leaf fingerprint (hex) -> registration id */
#define CG_K_APP        "app:"          /* set: an app's registration ids */
#define CG_K_REGS       "regs"          /* set: every registration id */
#define CG_K_APPINFO    "appinfo:"      /* hash: an app and its customer */
#define CG_K_APPS       "apps"          /* set: every app id */
#define CG_K_CUSTOMER   "customer:"     /* hash: a customer */
#define CG_K_CUSTOMERS  "customers"     /* set: every customer id */
#define CG_K_ROTATION   "rotation:"     /* hash: a scheduled cutover */
#define CG_K_ROTATIONS  "rotations:"    /* sorted set: an app's rotation ids */
#define CG_K_USAGE      "usage:"        /* hash: usage of a registration */
#define CG_K_EXPIRY     "expiry:"       /* hash: expiry thresholds announced */
#define CG_K_EVENTS     "events"        /* stream: the audit log */
#define CG_K_GEN        "gen"           /* string: counter of admin writes */
#define CG_K_INVALIDATE "invalidate"    /* pub/sub channel of changed fingerprints */

#define CG_KEY_MAX 512

/* out (CG_KEY_MAX bytes) = the store's prefix, then fmt. */
void cg_key(char *out, const cg_store_t *st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* The write scripts. KEYS and ARGV of each are described in cg_registry.c. */
extern const char CG_LUA_UPLOAD[];
extern const char CG_LUA_IMPORT[];
extern const char CG_LUA_TRANSITION[];
extern const char CG_LUA_ROTATE[];
extern const char CG_LUA_CANCEL[];
extern const char CG_LUA_CUSTOMER_CREATE[];
extern const char CG_LUA_APP_CREATE[];
extern const char CG_LUA_ENTITY_UPDATE[];
extern const char CG_LUA_EXPIRY[];

/* Why a registry call failed, as the admin API answers it. */
typedef struct {
    int status;
    const char *code;           /* a string constant */
    char message[600];
} cg_registry_fail_t;

/* A store failure by kind: an ACL refusal and damaged data are not outages. */
void cg_registry_fail_store(cg_registry_fail_t *f, cg_store_rc_t rc, const char *err);

/*
 * A command's outcome by kind: Redis's error reply (NOPERM, WRONGTYPE, ...)
 * is a failure too. On failure *r is freed and NULL, and err says why.
 */
cg_store_rc_t cg_registry_outcome(cg_store_rc_t rc, redisReply **r, const char *what, char *err,
                                  size_t errlen);

/* EVAL script with keys and args. *out set when Redis answered. */
cg_store_rc_t cg_registry_eval(cg_store_t *st, int timeout_ms, const char *script, int nkeys,
                               const char **keys, int nargs, const char **args,
                               redisReply **out, char *err, size_t errlen);

/* A two-word command (HGETALL key, SMEMBERS key, ...). */
cg_store_rc_t cg_registry_cmd2(cg_store_t *st, int timeout_ms, const char *c, const char *key,
                               redisReply **out, char *err, size_t errlen);

/* A hash reply as a JSON object of strings (NULL if not a hash of strings). */
json_t *cg_registry_hash_obj(const redisReply *r);

/* Load a hash as a JSON object of strings. 0 found, 1 absent, -1 error (f set). */
int cg_registry_load_hash(cg_store_t *st, int timeout_ms, const char *key, json_t **obj,
                          cg_registry_fail_t *f);

/* How a script's error reply (its first word) maps to an API error. */
typedef struct {
    const char *word;       /* NULL ends the table */
    int status;
    const char *code;
    const char *message;    /* may hold one %s: the rest of the reply after the word */
} cg_script_error_t;

/*
 * Run a write script. 0 when it succeeded; otherwise -1 with f set: the
 * table's error for the script's refusal, 503 when Redis did not answer.
 */
int cg_registry_run(cg_store_t *st, int timeout_ms, const char *script, int nkeys,
                    const char **keys, int nargs, const char **args,
                    const cg_script_error_t *errors, cg_registry_fail_t *f);
/* The same; on success ok (okcap bytes) holds the script's string answer. */
int cg_registry_run_reply(cg_store_t *st, int timeout_ms, const char *script, int nkeys,
                          const char **keys, int nargs, const char **args,
                          const cg_script_error_t *errors, cg_registry_fail_t *f, char *ok,
                          size_t okcap);

/* Why cg_registry_load_records failed: a cg_store_rc_t failure kind, or this. */
enum { CG_REGISTRY_NOMEM = CG_STORE__COUNT };

/*
 * Every record of an index set, in one pipeline: whole (HGETALL, names NULL)
 * or only the fields named (HMGET), which is what scans over every
 * registration (metrics, expiry) read at 10^5 records. Records that are gone
 * are skipped. NULL on failure, with *why (a cg_store_rc_t kind or
 * CG_REGISTRY_NOMEM) and err.
 */
json_t *cg_registry_load_records(cg_store_t *st, int timeout_ms, const char *setkey,
                                 const char *const *names, int nnames, int *why, char *err,
                                 size_t errlen);

/* Every whole record of an index set; NULL with f set on failure. */
json_t *cg_registry_load_set(cg_store_t *st, int timeout_ms, const char *setkey,
                             cg_registry_fail_t *f);

#endif
