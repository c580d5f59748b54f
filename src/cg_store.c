#include "cg_store.h"

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <hiredis/hiredis.h>
#include <openssl/crypto.h>

#include "cg_registry.h"
#include "cg_sentinel.h"

struct cg_store {
    char *host, *socket, *user, *password, *prefix;
    int port, db, timeout_ms, max_idle;
    int wait_replicas, wait_timeout_ms;
    pthread_mutex_t lock;
    redisContext **idle;     /* stack of idle, healthy connections */
    uint64_t *idle_gen;      /* the sentinel generation each was made under */
    int n_idle;
    cg_sentinel_t *sentinel; /* NULL: the fixed address */
};

/* The connection being used and the master generation it was made under. */
typedef struct {
    redisContext *c;
    uint64_t gen;
} conn_t;

static char *dup_or_null(const char *s)
{
    if (s == NULL)
        return NULL;
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d != NULL)
        memcpy(d, s, n);
    return d;
}

int cg_store_cfg_check(const cg_store_cfg_t *cfg, char *err, size_t errlen)
{
    const char *msg = NULL;
    if (cfg->socket == NULL && (cfg->host == NULL || cfg->host[0] == '\0'))
        msg = "no Redis host or socket";
    else if (cfg->socket == NULL && (cfg->port < 1 || cfg->port > 65535))
        msg = "Redis port must be 1..65535";
    else if (cfg->db < 0 || cfg->db > CG_STORE_DB_MAX)
        msg = "Redis db must be 0.." CG_STORE_STR(CG_STORE_DB_MAX);
    else if (cfg->timeout_ms < CG_STORE_TIMEOUT_MS_MIN || cfg->timeout_ms > CG_STORE_TIMEOUT_MS_MAX)
        msg = "Redis timeout must be " CG_STORE_STR(CG_STORE_TIMEOUT_MS_MIN) ".."
              CG_STORE_STR(CG_STORE_TIMEOUT_MS_MAX) " ms";
    else if (cfg->prefix == NULL || strlen(cfg->prefix) > CG_PREFIX_MAX)
        msg = "key prefix must be at most 64 bytes";
    else if (cfg->user != NULL && cfg->password == NULL)
        msg = "a Redis ACL user needs a password";
    else if (cfg->max_idle < 0 || cfg->max_idle > CG_STORE_MAX_IDLE_MAX)
        msg = "idle connection count must be 0.." CG_STORE_STR(CG_STORE_MAX_IDLE_MAX);
    if (msg != NULL) {
        if (err != NULL && errlen > 0)
            snprintf(err, errlen, "%s", msg);
        return -1;
    }
    if (cfg->sentinels != NULL &&
        cg_sentinel_cfg_check(cfg->sentinels, cfg->master_name, cfg->sentinel_timeout_ms > 0
                              ? cfg->sentinel_timeout_ms : CG_SENTINEL_TIMEOUT_MS_DEFAULT,
                              err, errlen) != 0)
        return -1;
    if (cfg->wait_replicas < 0 || cfg->wait_replicas > CG_STORE_WAIT_REPLICAS_MAX ||
        cfg->wait_timeout_ms < 0 || cfg->wait_timeout_ms > CG_STORE_TIMEOUT_MS_MAX) {
        if (err != NULL && errlen > 0)
            snprintf(err, errlen, "replicas to wait for must be 0.." CG_STORE_STR(
                     CG_STORE_WAIT_REPLICAS_MAX) ", the wait 1.." CG_STORE_STR(
                     CG_STORE_TIMEOUT_MS_MAX) " ms");
        return -1;
    }
    if (cfg->sentinel_user != NULL && cfg->sentinel_password == NULL) {
        if (err != NULL && errlen > 0)
            snprintf(err, errlen, "a sentinel ACL user needs a password");
        return -1;
    }
    for (const char *p = cfg->prefix; *p; p++) {
        if ((unsigned char)*p <= 0x20 || (unsigned char)*p >= 0x7f) {
            if (err != NULL && errlen > 0)
                snprintf(err, errlen, "key prefix must be printable ASCII without spaces");
            return -1;
        }
    }
    return 0;
}

cg_store_t *cg_store_new(const cg_store_cfg_t *cfg, char *err, size_t errlen)
{
    if (cg_store_cfg_check(cfg, err, errlen) != 0)
        return NULL;
    cg_store_t *st = calloc(1, sizeof(*st));
    if (st == NULL)
        goto nomem;
    st->port = cfg->port;
    st->db = cfg->db;
    st->timeout_ms = cfg->timeout_ms;
    st->max_idle = cfg->max_idle;
    st->wait_replicas = cfg->wait_replicas;
    st->wait_timeout_ms = cfg->wait_timeout_ms > 0 ? cfg->wait_timeout_ms
                                                   : CG_STORE_WAIT_TIMEOUT_MS_DEFAULT;
    st->host = dup_or_null(cfg->host);
    st->socket = dup_or_null(cfg->socket);
    st->user = dup_or_null(cfg->user);
    st->password = dup_or_null(cfg->password);
    st->prefix = dup_or_null(cfg->prefix);
    st->idle = calloc((size_t)(cfg->max_idle > 0 ? cfg->max_idle : 1), sizeof(redisContext *));
    st->idle_gen = calloc((size_t)(cfg->max_idle > 0 ? cfg->max_idle : 1), sizeof(uint64_t));
    if (cfg->sentinels != NULL) {
        st->sentinel = cg_sentinel_new(cfg->sentinels, cfg->master_name, cfg->sentinel_user,
                                       cfg->sentinel_password, cfg->sentinel_timeout_ms > 0
                                       ? cfg->sentinel_timeout_ms : CG_SENTINEL_TIMEOUT_MS_DEFAULT,
                                       cfg->sentinel_event, cfg->sentinel_arg, err, errlen);
        if (st->sentinel == NULL) {
            free(st->host); free(st->socket); free(st->user);
            free(st->password); free(st->prefix); free(st->idle); free(st->idle_gen); free(st);
            return NULL;
        }
    }
    if (!st->idle_gen || (cfg->host && !st->host) || (cfg->socket && !st->socket) ||
        (cfg->user && !st->user) || (cfg->password && !st->password) ||
        !st->prefix || !st->idle || pthread_mutex_init(&st->lock, NULL) != 0) {
        free(st->host); free(st->socket); free(st->user);
        free(st->password); free(st->prefix); free(st->idle); free(st->idle_gen);
        cg_sentinel_free(st->sentinel); free(st);
        goto nomem;
    }
    return st;
nomem:
    if (err != NULL && errlen > 0)
        snprintf(err, errlen, "out of memory");
    return NULL;
}

void cg_store_drop_idle(cg_store_t *st)
{
    if (st == NULL)
        return;
    pthread_mutex_lock(&st->lock);
    for (int i = 0; i < st->n_idle; i++)
        redisFree(st->idle[i]);
    st->n_idle = 0;
    pthread_mutex_unlock(&st->lock);
}

void cg_store_free(cg_store_t *st)
{
    if (st == NULL)
        return;
    cg_store_drop_idle(st);
    pthread_mutex_destroy(&st->lock);
    if (st->password != NULL)
        OPENSSL_cleanse(st->password, strlen(st->password));
    free(st->host); free(st->socket); free(st->user);
    free(st->password); free(st->prefix); free(st->idle); free(st->idle_gen);
    cg_sentinel_free(st->sentinel);
    free(st);
}

cg_sentinel_t *cg_store_sentinel(cg_store_t *st)
{
    return st ? st->sentinel : NULL;
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Time left until the deadline as a timeval; 0 if it has passed. */
static int remaining(int64_t deadline, struct timeval *tv)
{
    int64_t left = deadline - now_ms();
    if (left <= 0)
        return 0;
    tv->tv_sec = (time_t)(left / 1000);
    tv->tv_usec = (suseconds_t)((left % 1000) * 1000);
    return 1;
}

static void set_err(char *err, size_t errlen, const char *what, const redisContext *c)
{
    if (err == NULL || errlen == 0)
        return;
    if (c != NULL && c->err)
        snprintf(err, errlen, "%s: %s", what, c->errstr);
    else
        snprintf(err, errlen, "%s", what);
}

const char *cg_store_rc_name(cg_store_rc_t rc)
{
    static const char *const names[CG_STORE__COUNT] = {
        [CG_STORE_OK] = "ok", [CG_STORE_NOTFOUND] = "notfound", [CG_STORE_ERROR] = "error",
        [CG_STORE_CORRUPT] = "corrupt", [CG_STORE_TIMEOUT] = "timeout",
        [CG_STORE_CONN] = "connection", [CG_STORE_PERM] = "permission",
    };
    return (unsigned)rc < CG_STORE__COUNT ? names[rc] : "error";
}

static int starts_with(const redisReply *r, const char *word)
{
    size_t n = strlen(word);
    return r->len >= n && memcmp(r->str, word, n) == 0 && (r->len == n || r->str[n] == ' ');
}

cg_store_rc_t cg_store_reply_kind(const redisReply *r)
{
    if (r == NULL || r->type != REDIS_REPLY_ERROR)
        return CG_STORE_OK;
    /* An ACL refusal; inside EVAL Redis 7 answers the same word for the inner command. */
    if (starts_with(r, "NOPERM"))
        return CG_STORE_PERM;
    /* A key of ours holds the wrong kind of value. */
    if (starts_with(r, "WRONGTYPE"))
        return CG_STORE_CORRUPT;
    return CG_STORE_ERROR;
}

/* Redis answered with an error: its kind, and the text in err. */
static cg_store_rc_t error_reply(const redisReply *r, const char *what, char *err, size_t errlen)
{
    /* Error text from Redis never holds our password. */
    if (err != NULL && errlen > 0)
        snprintf(err, errlen, "%s: %.*s", what, (int)(r->len > 200 ? 200 : r->len), r->str);
    return cg_store_reply_kind(r);
}

/* CONN_DISTRUST: an error reply saying this node is no master to use (READONLY, LOADING). */
enum { CONN_OK = 0, CONN_BROKEN = 1, CONN_TIMEOUT = 2, CONN_DISTRUST = 3 };

/* What a failed command or pipeline means: the deadline, the socket, or else. */
static cg_store_rc_t broken_rc(const redisContext *c, int state)
{
    if (state == CONN_TIMEOUT)
        return CG_STORE_TIMEOUT;
    if (c != NULL && (c->err == REDIS_ERR_IO || c->err == REDIS_ERR_EOF))
        return CG_STORE_CONN;
    return CG_STORE_ERROR;
}

/* Run one command within the deadline. NULL: the context is broken (err says
 * why, and *state says whether the deadline ran out). */
static redisReply *command_st(redisContext *c, int64_t deadline, char *err, size_t errlen,
                              const char *what, int argc, const char **argv,
                              const size_t *lens, int *state)
{
    struct timeval tv;
    *state = CONN_BROKEN;
    if (!remaining(deadline, &tv)) {
        set_err(err, errlen, "timeout", NULL);
        *state = CONN_TIMEOUT;
        return NULL;
    }
    if (redisSetTimeout(c, tv) != REDIS_OK) {
        set_err(err, errlen, "setting timeout", c);
        return NULL;
    }
    redisReply *r = redisCommandArgv(c, argc, argv, lens);
    if (r == NULL) {
        /* hiredis reports an SO_RCVTIMEO expiry as an I/O error with EAGAIN. */
        if (c->err == REDIS_ERR_IO && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            *state = CONN_TIMEOUT;
            if (err != NULL && errlen > 0)
                snprintf(err, errlen, "%s: timeout", what);
        } else {
            set_err(err, errlen, what, c);
        }
        return NULL;
    }
    *state = CONN_OK;
    return r;
}

/* A command whose error reply is a failure too (AUTH, SELECT): CG_STORE_OK, or
 * the kind of failure. */
static cg_store_rc_t command_ok(redisContext *c, int64_t deadline, char *err, size_t errlen,
                                const char *what, int argc, const char **argv,
                                const size_t *lens)
{
    int state;
    redisReply *r = command_st(c, deadline, err, errlen, what, argc, argv, lens, &state);
    if (r == NULL)
        return broken_rc(c, state);
    cg_store_rc_t rc = CG_STORE_OK;
    if (r->type == REDIS_REPLY_ERROR)
        rc = error_reply(r, what, err, errlen);
    freeReplyObject(r);
    return rc;
}

/* Ask ROLE on a new connection to a sentinel-given address: only a master is used. */
static cg_store_rc_t check_role(cg_store_t *st, redisContext *c, uint64_t gen, int64_t deadline,
                                char *err, size_t errlen)
{
    int state;
    const char *argv[1] = { "ROLE" };
    size_t lens[1] = { 4 };
    redisReply *r = command_st(c, deadline, err, errlen, "ROLE", 1, argv, lens, &state);
    if (r == NULL)
        return broken_rc(c, state);
    char role[40];
    int ok = cg_sentinel_role_is_master(r, role, sizeof(role));
    freeReplyObject(r);
    if (ok)
        return CG_STORE_OK;
    cg_sentinel_not_master(st->sentinel, gen, role);
    if (err != NULL && errlen > 0)
        snprintf(err, errlen, "the sentinels' master answers ROLE %s", role);
    return CG_STORE_CONN;
}

static redisContext *connect_new_addr(cg_store_t *st, int64_t deadline, cg_store_rc_t *rc,
                                      char *err, size_t errlen, const char *host, int port,
                                      uint64_t gen);

/* A new, authenticated connection to the master; NULL with *rc set. With
 * sentinels, a failure distrusts the address so the next one asks again. */
static redisContext *connect_new(cg_store_t *st, int64_t deadline, cg_store_rc_t *rc,
                                 char *err, size_t errlen, uint64_t *gen)
{
    *gen = 0;
    if (st->sentinel == NULL)
        return connect_new_addr(st, deadline, rc, err, errlen, st->host, st->port, 0);
    char host[CG_SENTINEL_HOST_MAX];
    int port = 0, unreachable = 0;
    redisContext *c = NULL;
    /* A refused or non-master address (a stale sentinel's answer) costs little:
     * ask the next sentinel at once, within the same deadline. */
    for (int attempt = 0; attempt < 2 && c == NULL; attempt++) {
        if (cg_sentinel_master(st->sentinel, deadline, host, sizeof(host), &port, gen,
                               &unreachable, err, errlen) != 0) {
            *rc = CG_STORE_CONN;
            return NULL;
        }
        c = connect_new_addr(st, deadline, rc, err, errlen, host, port, *gen);
        if (c == NULL && *rc != CG_STORE_PERM)
            cg_sentinel_distrust(st->sentinel, *gen, err);
        if (c == NULL && *rc != CG_STORE_CONN)
            break;
    }
    return c;
}

static redisContext *connect_new_addr(cg_store_t *st, int64_t deadline, cg_store_rc_t *rc,
                                      char *err, size_t errlen, const char *host, int port,
                                      uint64_t gen)
{
    struct timeval tv;
    redisContext *c;

    *rc = CG_STORE_TIMEOUT;
    if (!remaining(deadline, &tv)) {
        set_err(err, errlen, "timeout before connect", NULL);
        return NULL;
    }
    if (st->socket != NULL && st->sentinel == NULL)
        c = redisConnectUnixWithTimeout(st->socket, tv);
    else
        c = redisConnectWithTimeout(host, port, tv);
    if (c == NULL) {
        *rc = CG_STORE_ERROR;
        set_err(err, errlen, "connect: out of memory", NULL);
        return NULL;
    }
    if (c->err) {
        int e = errno;
        /* hiredis reports a connect that ran out of time as an I/O error. */
        *rc = c->err == REDIS_ERR_IO && (e == ETIMEDOUT || e == EINPROGRESS || e == EAGAIN)
              ? CG_STORE_TIMEOUT : CG_STORE_CONN;
        set_err(err, errlen, "connect", c);
        redisFree(c);
        return NULL;
    }
    if (st->password != NULL) {
        const char *argv[3] = { "AUTH", st->user ? st->user : st->password, st->password };
        size_t lens[3] = { 4, strlen(argv[1]), strlen(st->password) };
        *rc = command_ok(c, deadline, err, errlen, "AUTH", st->user ? 3 : 2, argv, lens);
        if (*rc != CG_STORE_OK) {
            /* A refused AUTH leaves us without a usable connection. */
            if (*rc != CG_STORE_TIMEOUT)
                *rc = CG_STORE_CONN;
            redisFree(c);
            return NULL;
        }
    }
    if (st->db > 0) {
        char db[16];
        int n = snprintf(db, sizeof(db), "%d", st->db);
        const char *argv[2] = { "SELECT", db };
        size_t lens[2] = { 6, (size_t)n };
        *rc = command_ok(c, deadline, err, errlen, "SELECT", 2, argv, lens);
        if (*rc != CG_STORE_OK) {
            redisFree(c);
            return NULL;
        }
    }
    if (st->sentinel != NULL &&
        (*rc = check_role(st, c, gen, deadline, err, errlen)) != CG_STORE_OK) {
        redisFree(c);
        return NULL;
    }
    *rc = CG_STORE_OK;
    return c;
}

/* A context that saw any error is never reused (hiredis state is undefined),
 * nor one made for a master the sentinels no longer name. */
static void release(cg_store_t *st, conn_t *k, int healthy)
{
    redisContext *c = k->c;
    if (healthy && !c->err && (st->sentinel == NULL || k->gen == cg_sentinel_gen(st->sentinel))) {
        pthread_mutex_lock(&st->lock);
        if (st->n_idle < st->max_idle) {
            st->idle_gen[st->n_idle] = k->gen;
            st->idle[st->n_idle++] = c;
            c = NULL;
        }
        pthread_mutex_unlock(&st->lock);
    }
    if (c != NULL)
        redisFree(c);
    k->c = NULL;
}

/* With sentinels and a master in doubt: ask them now, and drop idle
 * connections to any other master. */
static void follow_master(cg_store_t *st, int64_t deadline)
{
    if (st->sentinel == NULL)
        return;
    char host[CG_SENTINEL_HOST_MAX], err[CG_SENTINEL_HOST_MAX];
    int port, unreachable;
    uint64_t gen = cg_sentinel_gen(st->sentinel);
    int known = 1;
    if (!cg_sentinel_trusted(st->sentinel) &&
        cg_sentinel_master(st->sentinel, deadline, host, sizeof(host), &port, &gen, &unreachable,
                           err, sizeof(err)) != 0)
        known = 0;  /* distrusted and no answer: its pooled connections may reach a replica now */
    pthread_mutex_lock(&st->lock);
    int kept = 0;
    for (int i = 0; i < st->n_idle; i++) {
        if (known && st->idle_gen[i] == gen) {
            st->idle_gen[kept] = st->idle_gen[i];
            st->idle[kept++] = st->idle[i];
        } else {
            redisFree(st->idle[i]);
        }
    }
    st->n_idle = kept;
    pthread_mutex_unlock(&st->lock);
}

/* Take a pooled connection, or make one. *pooled says which; *rc why not. */
static int take(cg_store_t *st, int64_t deadline, conn_t *k, int *pooled, cg_store_rc_t *rc,
                char *err, size_t errlen)
{
    follow_master(st, deadline);
    k->c = NULL;
    pthread_mutex_lock(&st->lock);
    if (st->n_idle > 0) {
        k->c = st->idle[--st->n_idle];
        k->gen = st->idle_gen[st->n_idle];
    }
    pthread_mutex_unlock(&st->lock);
    *pooled = k->c != NULL;
    *rc = CG_STORE_OK;
    if (k->c == NULL)
        k->c = connect_new(st, deadline, rc, err, errlen, &k->gen);
    return k->c != NULL ? 0 : -1;
}

/* A failure on a connection to a sentinel-given master: ask them again. */
static void distrust(cg_store_t *st, const conn_t *k, const char *why)
{
    if (st->sentinel != NULL)
        cg_sentinel_distrust(st->sentinel, k->gen, why);
}

/* ---- The lookup as steps without I/O: the blocking store below and the
 * nginx adapter's async client run the same three commands through these. ---- */

int cg_lookup_index_cmd(const char *prefix, const cg_fp_t *leaf, char *key, size_t cap)
{
    char hex[CG_FP_HEX_LEN + 1];
    cg_fp_to_hex(leaf, hex);
    int n = snprintf(key, cap, "%s" CG_K_FP "%s", prefix, hex);
    return n < 0 || (size_t)n >= cap ? -1 : n;
}

cg_store_rc_t cg_lookup_index_reply(const char *prefix, const redisReply *r, char *key,
                                    size_t cap, int *klen, char *err, size_t errlen)
{
    if (r->type == REDIS_REPLY_ERROR)
        return error_reply(r, "GET", err, errlen);
    if (r->type == REDIS_REPLY_NIL)
        return CG_STORE_NOTFOUND;
    if (r->type != REDIS_REPLY_STRING || !cg_id_valid(r->str, r->len)) {
        snprintf(err, errlen, "fingerprint index holds no valid registration id");
        return CG_STORE_CORRUPT;
    }
    int n = snprintf(key, cap, "%s" CG_K_REG "%.*s", prefix, (int)r->len, r->str);
    if (n < 0 || (size_t)n >= cap) {
        snprintf(err, errlen, "registration key too long");
        return CG_STORE_CORRUPT;
    }
    *klen = n;
    return CG_STORE_OK;
}

cg_store_rc_t cg_lookup_record_reply(const redisReply *r, const cg_fp_t *leaf, cg_reg_t *out,
                                     char *err, size_t errlen)
{
    if (r->type == REDIS_REPLY_ERROR)
        return error_reply(r, "HGETALL", err, errlen);
    if (r->type != REDIS_REPLY_ARRAY || r->elements % 2 != 0) {
        snprintf(err, errlen, "registration is not a hash");
        return CG_STORE_CORRUPT;
    }
    /* The index points at a record that is gone: not registered. */
    if (r->elements == 0)
        return CG_STORE_NOTFOUND;
    cg_field_t fields[64];
    size_t nf = 0;
    if (r->elements / 2 > sizeof(fields) / sizeof(fields[0])) {
        snprintf(err, errlen, "registration has too many fields");
        return CG_STORE_CORRUPT;
    }
    for (size_t i = 0; i + 1 < r->elements; i += 2) {
        const redisReply *k = r->element[i], *v = r->element[i + 1];
        if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING) {
            snprintf(err, errlen, "registration field is not a string");
            return CG_STORE_CORRUPT;
        }
        fields[nf].name = k->str;
        fields[nf].name_len = k->len;
        fields[nf].value = v->str;
        fields[nf].value_len = v->len;
        nf++;
    }
    if (cg_reg_decode(fields, nf, out, err, errlen) != 0)
        return CG_STORE_CORRUPT;
    if (!cg_fp_eq(&out->fingerprint, leaf)) {
        snprintf(err, errlen, "index and record fingerprints differ");
        return CG_STORE_CORRUPT;
    }
    return CG_STORE_OK;
}

cg_store_rc_t cg_lookup_reg_reply(const char *prefix, const char *reg_key, const redisReply *r,
                                  const cg_fp_t *leaf, cg_reg_t *out, char *owner_key,
                                  size_t cap, int *klen, char *err, size_t errlen)
{
    cg_store_rc_t rc = cg_lookup_record_reply(r, leaf, out, err, errlen);
    if (rc != CG_STORE_OK)
        return rc;
    /* The key is "{prefix}reg:{id}"; the record must say the same id. */
    size_t pl = strlen(prefix);
    size_t rl = sizeof(CG_K_REG) - 1;
    if (strncmp(reg_key, prefix, pl) != 0 || strncmp(reg_key + pl, CG_K_REG, rl) != 0 ||
        strcmp(reg_key + pl + rl, out->id) != 0) {
        snprintf(err, errlen, "record id differs from its key");
        return CG_STORE_CORRUPT;
    }
    int n = snprintf(owner_key, cap, "%s" CG_K_APPINFO "%s", prefix, out->app_id);
    if (n < 0 || (size_t)n >= cap) {
        snprintf(err, errlen, "app key too long");
        return CG_STORE_ERROR;
    }
    *klen = n;
    return CG_STORE_OK;
}

cg_store_rc_t cg_lookup_owner_reply(const redisReply *r, cg_reg_t *out, char *err, size_t errlen)
{
    out->app_owner[0] = '\0';
    out->app_owner_state = CG_OWNER_NONE;
    if (r->type == REDIS_REPLY_ERROR)
        return error_reply(r, "HGET", err, errlen);
    /* No app record, or one without an owner: the decision refuses it. */
    if (r->type == REDIS_REPLY_NIL)
        return CG_STORE_OK;
    if (r->type != REDIS_REPLY_STRING || !cg_app_valid(r->str, r->len)) {
        snprintf(err, errlen, "app record holds no valid customer_id");
        return CG_STORE_CORRUPT;
    }
    memcpy(out->app_owner, r->str, r->len);
    out->app_owner[r->len] = '\0';
    out->app_owner_state = CG_OWNER_READ;
    return CG_STORE_OK;
}

/* One command of the lookup; NULL with *rc set when the context failed. After
 * an error reply the connection is not reused either (*broken). */
static redisReply *lookup_cmd(redisContext *c, int64_t deadline, const char *cmd, const char *key,
                              int klen, const char *field, int *broken, cg_store_rc_t *rc,
                              char *err, size_t errlen)
{
    const char *argv[3] = { cmd, key, field };
    size_t lens[3] = { strlen(cmd), (size_t)klen, field ? strlen(field) : 0 };
    redisReply *r = command_st(c, deadline, err, errlen, cmd, field ? 3 : 2, argv, lens, broken);
    if (r == NULL) {
        *rc = broken_rc(c, *broken);
        return NULL;
    }
    *broken = r->type != REDIS_REPLY_ERROR ? CONN_OK
              : cg_sentinel_reply_distrusts(r) ? CONN_DISTRUST : CONN_BROKEN;
    return r;
}

/* One lookup on one connection. *broken: CONN_OK, or how the context failed. */
static cg_store_rc_t lookup_on(cg_store_t *st, redisContext *c, int64_t deadline,
                               const cg_fp_t *leaf, cg_reg_t *out, char *err, size_t errlen,
                               int *broken)
{
    char key[CG_LOOKUP_KEY_MAX], reg_key[CG_LOOKUP_KEY_MAX];
    cg_store_rc_t rc;
    redisReply *r;

    int klen = cg_lookup_index_cmd(st->prefix, leaf, key, sizeof(key));
    if (klen < 0) {
        snprintf(err, errlen, "index key too long");
        return CG_STORE_ERROR;
    }
    if ((r = lookup_cmd(c, deadline, "GET", key, klen, NULL, broken, &rc, err, errlen)) == NULL)
        return rc;
    rc = cg_lookup_index_reply(st->prefix, r, reg_key, sizeof(reg_key), &klen, err, errlen);
    freeReplyObject(r);
    if (rc != CG_STORE_OK)
        return rc;

    if ((r = lookup_cmd(c, deadline, "HGETALL", reg_key, klen, NULL, broken, &rc, err,
                        errlen)) == NULL)
        return rc;
    rc = cg_lookup_reg_reply(st->prefix, reg_key, r, leaf, out, key, sizeof(key), &klen, err,
                             errlen);
    freeReplyObject(r);
    if (rc != CG_STORE_OK)
        return rc;

    if ((r = lookup_cmd(c, deadline, "HGET", key, klen, CG_LOOKUP_OWNER_FIELD, broken, &rc, err,
                        errlen)) == NULL)
        return rc;
    rc = cg_lookup_owner_reply(r, out, err, errlen);
    freeReplyObject(r);
    return rc;
}

cg_store_rc_t cg_store_lookup(cg_store_t *st, const cg_fp_t *leaf, cg_reg_t *out,
                              char *err, size_t errlen)
{
    int64_t deadline = now_ms() + st->timeout_ms;
    int broken = 0, pooled = 0;
    conn_t k;
    cg_store_rc_t rc;

    if (take(st, deadline, &k, &pooled, &rc, err, errlen) != 0)
        return rc;

    rc = lookup_on(st, k.c, deadline, leaf, out, err, errlen, &broken);
    if (broken == CONN_BROKEN && pooled && k.c->err != 0) {
        /* An idle connection found dead (Redis restarted, or the server closed
         * it): the others are likely dead too. Retry once on a new one. */
        redisFree(k.c);
        cg_store_drop_idle(st);
        /* With sentinels, a failover closes our connections: ask them again. */
        distrust(st, &k, "pooled connection closed");
        if ((k.c = connect_new(st, deadline, &rc, err, errlen, &k.gen)) == NULL)
            return rc;
        rc = lookup_on(st, k.c, deadline, leaf, out, err, errlen, &broken);
    }
    if (broken == CONN_TIMEOUT || broken == CONN_DISTRUST || (broken && k.c->err != 0))
        distrust(st, &k, err);
    release(st, &k, !broken);
    return rc;
}

void cg_store_reply_free(struct redisReply *r)
{
    if (r != NULL)
        freeReplyObject(r);
}

const char *cg_store_prefix(const cg_store_t *st)
{
    return st->prefix;
}

/* Pipeline n commands and read n replies within the deadline. */
static int run_pipeline(redisContext *c, int64_t deadline, size_t n, const int *argcs,
                        const char *const *const *argvs, const size_t *const *lens,
                        redisReply **out, char *err, size_t errlen, int *state)
{
    struct timeval tv;
    *state = CONN_BROKEN;
    for (size_t i = 0; i < n; i++) {
        if (redisAppendCommandArgv(c, argcs[i], (const char **)argvs[i], lens[i]) != REDIS_OK) {
            set_err(err, errlen, "queueing a command", c);
            return -1;
        }
    }
    for (size_t i = 0; i < n; i++) {
        void *r = NULL;
        if (!remaining(deadline, &tv) || redisSetTimeout(c, tv) != REDIS_OK) {
            set_err(err, errlen, "timeout", NULL);
            *state = CONN_TIMEOUT;
            goto fail;
        }
        if (redisGetReply(c, &r) != REDIS_OK || r == NULL) {
            if (c->err == REDIS_ERR_IO && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                *state = CONN_TIMEOUT;
                set_err(err, errlen, "reading replies: timeout", NULL);
            } else {
                set_err(err, errlen, "reading replies", c);
            }
            goto fail;
        }
        out[i] = r;
    }
    *state = CONN_OK;
    return 0;
fail:
    for (size_t i = 0; i < n; i++) {
        if (out[i] != NULL)
            freeReplyObject(out[i]);
        out[i] = NULL;
    }
    return -1;
}

cg_store_rc_t cg_store_pipeline(cg_store_t *st, int timeout_ms, size_t n, const int *argcs,
                                const char *const *const *argvs, const size_t *const *lens,
                                redisReply **out, char *err, size_t errlen)
{
    int64_t deadline = now_ms() + timeout_ms;
    int pooled = 0, state = CONN_OK;
    cg_store_rc_t why;
    conn_t k;
    memset(out, 0, n * sizeof(*out));
    if (take(st, deadline, &k, &pooled, &why, err, errlen) != 0)
        return why;
    int rc = run_pipeline(k.c, deadline, n, argcs, argvs, lens, out, err, errlen, &state);
    if (rc != 0 && state == CONN_BROKEN && pooled && k.c->err != 0) {
        /* A dead idle connection: the server never saw these commands. */
        redisFree(k.c);
        cg_store_drop_idle(st);
        distrust(st, &k, "pooled connection closed");
        if ((k.c = connect_new(st, deadline, &why, err, errlen, &k.gen)) == NULL)
            return why;
        rc = run_pipeline(k.c, deadline, n, argcs, argvs, lens, out, err, errlen, &state);
    }
    why = rc == 0 ? CG_STORE_OK : broken_rc(k.c, state);
    int doubt = rc != 0;
    for (size_t i = 0; rc == 0 && i < n; i++)
        doubt |= cg_sentinel_reply_distrusts(out[i]);
    if (doubt)
        distrust(st, &k, rc != 0 ? err : "READONLY or LOADING answer");
    release(st, &k, rc == 0 && !doubt);
    return why;
}

cg_store_rc_t cg_store_cmd(cg_store_t *st, int timeout_ms, int argc, const char **argv,
                           const size_t *lens, redisReply **out, char *err, size_t errlen)
{
    const char *const *argvs[1] = { argv };
    const size_t *lensv[1] = { lens };
    return cg_store_pipeline(st, timeout_ms, 1, &argc, argvs, lensv, out, err, errlen);
}

cg_store_rc_t cg_store_hgetall_many(cg_store_t *st, int timeout_ms, const char *const *keys,
                                    size_t n, redisReply **out, char *err, size_t errlen)
{
    if (n == 0)
        return CG_STORE_OK;
    int *argcs = malloc(n * sizeof(int));
    const char *(*argv)[2] = malloc(n * sizeof(*argv));
    size_t (*lens)[2] = malloc(n * sizeof(*lens));
    const char *const **argvs = malloc(n * sizeof(*argvs));
    const size_t **lensv = malloc(n * sizeof(*lensv));
    cg_store_rc_t rc = CG_STORE_ERROR;
    if (!argcs || !argv || !lens || !argvs || !lensv) {
        set_err(err, errlen, "out of memory", NULL);
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        argcs[i] = 2;
        argv[i][0] = "HGETALL";
        argv[i][1] = keys[i];
        lens[i][0] = 7;
        lens[i][1] = strlen(keys[i]);
        argvs[i] = argv[i];
        lensv[i] = lens[i];
    }
    rc = cg_store_pipeline(st, timeout_ms, n, argcs, argvs, lensv, out, err, errlen);
done:
    free(argcs); free(argv); free(lens); free(argvs); free(lensv);
    return rc;
}

cg_store_rc_t cg_store_cmd_durable(cg_store_t *st, int timeout_ms, int argc, const char **argv,
                                   const size_t *lens, redisReply **out, int *acked,
                                   int *wanted, char *err, size_t errlen)
{
    *acked = -1;
    *wanted = st->wait_replicas;
    if (st->wait_replicas <= 0)
        return cg_store_cmd(st, timeout_ms, argc, argv, lens, out, err, errlen);
    /* WAIT counts the writes of this connection: it goes in the same pipeline.
     * Its own bound leaves room in the request's budget for the answer. */
    int wait_ms = st->wait_timeout_ms;
    if (wait_ms > timeout_ms / 2)
        wait_ms = timeout_ms / 2 > 0 ? timeout_ms / 2 : 1;
    char n[16], ms[16];
    snprintf(n, sizeof(n), "%d", st->wait_replicas);
    snprintf(ms, sizeof(ms), "%d", wait_ms);
    const char *wargv[3] = { "WAIT", n, ms };
    size_t wlens[3] = { 4, strlen(n), strlen(ms) };
    const char *const *argvs[2] = { argv, wargv };
    const size_t *lensv[2] = { lens, wlens };
    int argcs[2] = { argc, 3 };
    redisReply *r[2] = { NULL, NULL };
    cg_store_rc_t rc = cg_store_pipeline(st, timeout_ms, 2, argcs, argvs, lensv, r, err, errlen);
    if (rc != CG_STORE_OK)
        return rc;
    /* Also after a refusal: a retry's 409 reports the state an earlier write left,
     * and Redis 7 moves the connection's WAIT offset on any command, so WAIT
     * covers that write too. */
    if (r[1]->type == REDIS_REPLY_INTEGER)
        *acked = r[1]->integer > INT32_MAX ? INT32_MAX : (int)r[1]->integer;
    else
        *acked = 0;     /* WAIT refused (ACL): count it as not acknowledged */
    freeReplyObject(r[1]);
    *out = r[0];
    return CG_STORE_OK;
}
