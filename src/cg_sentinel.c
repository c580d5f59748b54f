#include "cg_sentinel.h"
#include "cg_thread.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <hiredis/hiredis.h>
#include <openssl/crypto.h>

typedef struct {
    char host[CG_SENTINEL_HOST_MAX];
    int port;
} addr_t;

struct cg_sentinel {
    pthread_mutex_t ask;            /* one caller asks the sentinels at a time */
    pthread_mutex_t lock;           /* guards what follows; never held during I/O */
    addr_t sent[CG_SENTINEL_MAX];   /* in the order to ask */
    int n;
    char *name, *user, *password;
    int timeout_ms;
    cg_sentinel_event_fn fn;
    void *arg;
    addr_t master;
    int have;                       /* master is known */
    int trusted;                    /* and no one distrusted it since */
    int answered_by;                /* index in sent[] of the sentinel that gave it (0) */
    uint64_t gen;
    int64_t asked_ms;               /* when the sentinels last gave the address */
    /* The watcher thread (cg_sentinel_watch), for callers that must not block. */
    pthread_t watcher;
    int watching, stop;
    pthread_cond_t wake;
};

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* An event composed under s->lock and reported once it is released: the
 * caller's log write and metrics are I/O. */
typedef struct {
    int ev;                         /* 0: none */
    char msg[512];
} pending_t;

static void pend(pending_t *p, int ev, const char *fmt, const char *a, const char *b)
{
    p->ev = snprintf(p->msg, sizeof(p->msg), fmt, a ? a : "", b ? b : "") < 0 ? 0 : ev;
}

static void report(cg_sentinel_t *s, const pending_t *p)
{
    if (s->fn != NULL && p->ev != 0)
        s->fn(s->arg, p->ev, p->msg);
}

static void event(cg_sentinel_t *s, int ev, const char *fmt, const char *a, const char *b)
{
    pending_t p;
    pend(&p, ev, fmt, a, b);
    report(s, &p);
}

/* Parse "host:port" items separated by spaces or commas. -1 and err on a bad one. */
static int parse_list(const char *list, addr_t *out, int *n, char *err, size_t errlen)
{
    const char *p = list;
    *n = 0;
    while (p != NULL && *p != '\0') {
        while (*p == ' ' || *p == ',' || *p == '\t')
            p++;
        if (*p == '\0')
            break;
        size_t len = strcspn(p, " ,\t");
        const char *colon = NULL;
        for (size_t i = 0; i < len; i++)
            if (p[i] == ':')
                colon = p + i;
        if (colon == NULL || colon == p || (size_t)(colon - p) >= CG_SENTINEL_HOST_MAX ||
            colon + 1 == p + len) {
            snprintf(err, errlen, "sentinel '%.*s': expected host:port",
                     (int)(len > 64 ? 64 : len), p);
            return -1;
        }
        long port = 0;
        for (const char *q = colon + 1; q < p + len; q++) {
            if (*q < '0' || *q > '9' || port > 65535) {
                port = -1;
                break;
            }
            port = port * 10 + (*q - '0');
        }
        if (port < 1 || port > 65535) {
            snprintf(err, errlen, "sentinel '%.*s': the port must be 1..65535",
                     (int)(len > 64 ? 64 : len), p);
            return -1;
        }
        if (*n >= CG_SENTINEL_MAX) {
            snprintf(err, errlen, "at most %d sentinels", CG_SENTINEL_MAX);
            return -1;
        }
        if (out != NULL) {
            memcpy(out[*n].host, p, (size_t)(colon - p));
            out[*n].host[colon - p] = '\0';
            out[*n].port = (int)port;
        }
        (*n)++;
        p += len;
    }
    if (*n == 0) {
        snprintf(err, errlen, "no sentinel address");
        return -1;
    }
    return 0;
}

int cg_sentinel_cfg_check(const char *list, const char *master_name, int timeout_ms,
                          char *err, size_t errlen)
{
    int n;
    if (list == NULL || parse_list(list, NULL, &n, err, errlen) != 0) {
        if (list == NULL)
            snprintf(err, errlen, "no sentinel address");
        return -1;
    }
    if (master_name == NULL || master_name[0] == '\0' ||
        strlen(master_name) > CG_SENTINEL_NAME_MAX) {
        snprintf(err, errlen, "sentinels need a master name of 1..%d bytes", CG_SENTINEL_NAME_MAX);
        return -1;
    }
    for (const char *p = master_name; *p; p++) {
        if ((unsigned char)*p <= 0x20 || (unsigned char)*p >= 0x7f) {
            snprintf(err, errlen, "the master name must be printable ASCII without spaces");
            return -1;
        }
    }
    if (timeout_ms < 1 || timeout_ms > 60000) {
        snprintf(err, errlen, "sentinel timeout must be 1..60000 ms");
        return -1;
    }
    return 0;
}

cg_sentinel_t *cg_sentinel_new(const char *list, const char *master_name, const char *user,
                               const char *password, int timeout_ms, cg_sentinel_event_fn fn,
                               void *arg, char *err, size_t errlen)
{
    if (cg_sentinel_cfg_check(list, master_name, timeout_ms, err, errlen) != 0)
        return NULL;
    cg_sentinel_t *s = calloc(1, sizeof(*s));
    if (s == NULL)
        goto nomem;
    if (parse_list(list, s->sent, &s->n, err, errlen) != 0) {
        free(s);
        return NULL;
    }
    s->name = strdup(master_name);
    s->user = user ? strdup(user) : NULL;
    s->password = password ? strdup(password) : NULL;
    if (s->name == NULL || (user && !s->user) || (password && !s->password) ||
        pthread_mutex_init(&s->lock, NULL) != 0) {
        free(s->name); free(s->user); free(s->password); free(s);
        goto nomem;
    }
    if (pthread_mutex_init(&s->ask, NULL) != 0) {
        pthread_mutex_destroy(&s->lock);
        free(s->name); free(s->user); free(s->password); free(s);
        goto nomem;
    }
    if (pthread_cond_init(&s->wake, NULL) != 0) {
        pthread_mutex_destroy(&s->ask);
        pthread_mutex_destroy(&s->lock);
        free(s->name); free(s->user); free(s->password); free(s);
        goto nomem;
    }
    s->timeout_ms = timeout_ms;
    s->fn = fn;
    s->arg = arg;
    return s;
nomem:
    snprintf(err, errlen, "out of memory");
    return NULL;
}

void cg_sentinel_free(cg_sentinel_t *s)
{
    if (s == NULL)
        return;
    if (s->watching) {
        pthread_mutex_lock(&s->lock);
        s->stop = 1;
        pthread_cond_broadcast(&s->wake);
        pthread_mutex_unlock(&s->lock);
        pthread_join(s->watcher, NULL);
    }
    pthread_cond_destroy(&s->wake);
    pthread_mutex_destroy(&s->ask);
    pthread_mutex_destroy(&s->lock);
    if (s->password != NULL)
        OPENSSL_cleanse(s->password, strlen(s->password));
    free(s->name); free(s->user); free(s->password);
    free(s);
}

/* One sentinel's answer. 1: address in out; 0: it does not know the name;
 * -1: no usable answer (err says why). */
static int ask_one(cg_sentinel_t *s, const addr_t *a, int64_t deadline, addr_t *out,
                   char *err, size_t errlen)
{
    int64_t left = deadline - mono_ms();
    if (left > s->timeout_ms)
        left = s->timeout_ms;
    if (left <= 0) {
        snprintf(err, errlen, "%.100s:%d: no time left", a->host, a->port);
        return -1;
    }
    struct timeval tv = { (time_t)(left / 1000), (suseconds_t)((left % 1000) * 1000) };
    redisContext *c = redisConnectWithTimeout(a->host, a->port, tv);
    redisReply *r = NULL;
    int rc = -1;
    if (c == NULL || c->err) {
        snprintf(err, errlen, "%.100s:%d: %.100s", a->host, a->port,
                 c ? c->errstr : "out of memory");
        goto done;
    }
    if (redisSetTimeout(c, tv) != REDIS_OK) {
        snprintf(err, errlen, "%.100s:%d: setting timeout", a->host, a->port);
        goto done;
    }
    if (s->password != NULL) {
        r = s->user ? redisCommand(c, "AUTH %s %s", s->user, s->password)
                    : redisCommand(c, "AUTH %s", s->password);
        if (r == NULL || r->type == REDIS_REPLY_ERROR) {
            /* Never the password: only that AUTH failed. */
            snprintf(err, errlen, "%.100s:%d: AUTH %s", a->host, a->port,
                     r ? "refused" : (c->errstr[0] ? c->errstr : "no answer"));
            goto done;
        }
        freeReplyObject(r);
    }
    r = redisCommand(c, "SENTINEL get-master-addr-by-name %s", s->name);
    if (r == NULL) {
        snprintf(err, errlen, "%.100s:%d: %.100s", a->host, a->port,
                 c->errstr[0] ? c->errstr : "no answer");
        goto done;
    }
    if (r->type == REDIS_REPLY_NIL) {
        snprintf(err, errlen, "%.100s:%d: master name unknown", a->host, a->port);
        rc = 0;
    } else if (r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
               r->element[0]->type == REDIS_REPLY_STRING &&
               r->element[1]->type == REDIS_REPLY_STRING &&
               r->element[0]->len > 0 && r->element[0]->len < CG_SENTINEL_HOST_MAX) {
        long port = strtol(r->element[1]->str, NULL, 10);
        if (port < 1 || port > 65535) {
            snprintf(err, errlen, "%.100s:%d: bad port in answer", a->host, a->port);
        } else {
            memcpy(out->host, r->element[0]->str, r->element[0]->len);
            out->host[r->element[0]->len] = '\0';
            out->port = (int)port;
            rc = 1;
        }
    } else if (r->type == REDIS_REPLY_ERROR) {
        snprintf(err, errlen, "%.100s:%d: %.*s", a->host, a->port,
                 (int)(r->len > 120 ? 120 : r->len), r->str);
    } else {
        snprintf(err, errlen, "%.100s:%d: unexpected answer", a->host, a->port);
    }
done:
    if (r != NULL)
        freeReplyObject(r);
    if (c != NULL)
        redisFree(c);
    return rc;
}

/* Ask the sentinels unless the address is trusted (refresh: ask anyway, and
 * keep a trusted address if none answers). */
static int resolve(cg_sentinel_t *s, int64_t deadline_ms, int refresh, char *host, size_t cap,
                   int *port, uint64_t *gen, int *unreachable, char *err, size_t errlen)
{
    char one[256] = "";
    int rc = -1, unknown = 0, n;
    addr_t order[CG_SENTINEL_MAX];
    pending_t said = { 0, "" };
    pthread_mutex_lock(&s->lock);
    if (s->have && s->trusted && !refresh)
        goto found;
    pthread_mutex_unlock(&s->lock);
    /* One asker; the others wait for its answer instead of asking too, but no
     * longer than their own deadline. */
    int64_t left = deadline_ms - mono_ms();
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    left = left > 0 ? left : 0;
    until.tv_sec += (time_t)(left / 1000);
    until.tv_nsec += (long)(left % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    if (pthread_mutex_timedlock(&s->ask, &until) != 0) {
        snprintf(err, errlen, "timeout waiting for the sentinels' answer");
        *unreachable = 1;
        return -1;
    }
    pthread_mutex_lock(&s->lock);
    if (s->have && s->trusted && !refresh) {
        pthread_mutex_unlock(&s->ask);
        goto found;
    }
    n = s->n;
    memcpy(order, s->sent, sizeof(order));
    pthread_mutex_unlock(&s->lock);
    for (int i = 0; i < n; i++) {
        addr_t got;
        int a = ask_one(s, &order[i], deadline_ms, &got, one, sizeof(one));
        if (a == 0)
            unknown++;
        if (a != 1)
            continue;
        pthread_mutex_lock(&s->lock);
        /* The sentinel that answered goes to the front. */
        for (int j = 0; j < s->n; j++) {
            if (strcmp(s->sent[j].host, order[i].host) == 0 && s->sent[j].port == order[i].port) {
                addr_t t = s->sent[j];
                memmove(&s->sent[1], &s->sent[0], (size_t)j * sizeof(addr_t));
                s->sent[0] = t;
                break;
            }
        }
        if (!s->have || strcmp(got.host, s->master.host) != 0 || got.port != s->master.port) {
            char was[CG_SENTINEL_HOST_MAX + 8] = "none", now[CG_SENTINEL_HOST_MAX + 8];
            if (s->have)
                snprintf(was, sizeof(was), "%s:%d", s->master.host, s->master.port);
            snprintf(now, sizeof(now), "%s:%d", got.host, got.port);
            s->master = got;
            s->have = 1;
            s->gen++;
            pend(&said, CG_SENTINEL_EV_SWITCHED, "master address %s (was %s)", now, was);
        }
        s->trusted = 1;
        s->asked_ms = mono_ms();
        pthread_mutex_unlock(&s->ask);
        goto found;
    }
    pthread_mutex_lock(&s->lock);
    pthread_mutex_unlock(&s->ask);
    *unreachable = unknown == 0;
    if (refresh && s->have && s->trusted) {
        /* The master works; the sentinels are down or unsure: keep it, say so below. */
        rc = 0;
    }
    /* Both kinds apart, for the operator: a wrong name is a config error. */
    if (unknown > 0)
        pend(&said, CG_SENTINEL_EV_UNKNOWN_MASTER, "master name unknown to the sentinels "
             "that answered (%s); last: %s", s->name, one);
    else
        pend(&said, CG_SENTINEL_EV_UNREACHABLE, "sentinels unreachable; last: %s%s", one, "");
    snprintf(err, errlen, "%s: %s", unknown > 0 ? "master name unknown" : "sentinels unreachable",
             one);
    pthread_mutex_unlock(&s->lock);
    report(s, &said);
    return rc;
found:
    if (strlen(s->master.host) >= cap) {
        snprintf(err, errlen, "master host name too long");
        *unreachable = 0;
    } else {
        strcpy(host, s->master.host);
        *port = s->master.port;
        *gen = s->gen;
        rc = 0;
    }
    pthread_mutex_unlock(&s->lock);
    report(s, &said);
    return rc;
}

int cg_sentinel_master(cg_sentinel_t *s, int64_t deadline_ms, char *host, size_t cap, int *port,
                       uint64_t *gen, int *unreachable, char *err, size_t errlen)
{
    return resolve(s, deadline_ms, 0, host, cap, port, gen, unreachable, err, errlen);
}

void cg_sentinel_distrust(cg_sentinel_t *s, uint64_t gen, const char *why)
{
    int said = 0;
    char addr[CG_SENTINEL_HOST_MAX + 8];
    pthread_mutex_lock(&s->lock);
    if (gen == s->gen && s->trusted) {
        s->trusted = 0;
        /* The sentinel that sent us there may be stale: ask the others first. */
        if (s->n > 1) {
            addr_t t = s->sent[0];
            memmove(&s->sent[0], &s->sent[1], (size_t)(s->n - 1) * sizeof(addr_t));
            s->sent[s->n - 1] = t;
        }
        snprintf(addr, sizeof(addr), "%s:%d", s->master.host, s->master.port);
        said = 1;
        /* Wake the watcher now: nginx workers only read its answer, and serve 503 until then. */
        pthread_cond_broadcast(&s->wake);
    }
    pthread_mutex_unlock(&s->lock);
    if (said)
        event(s, CG_SENTINEL_EV_DISTRUST, "master %s distrusted (%s); asking the sentinels again",
              addr, why ? why : "error");
}

void cg_sentinel_not_master(cg_sentinel_t *s, uint64_t gen, const char *role)
{
    char addr[CG_SENTINEL_HOST_MAX + 8] = "?";
    pthread_mutex_lock(&s->lock);
    if (s->have)
        snprintf(addr, sizeof(addr), "%s:%d", s->master.host, s->master.port);
    pthread_mutex_unlock(&s->lock);
    event(s, CG_SENTINEL_EV_NOT_MASTER, "%s answers ROLE %s, not master: not used", addr, role);
    cg_sentinel_distrust(s, gen, "ROLE is not master");
}

uint64_t cg_sentinel_gen(cg_sentinel_t *s)
{
    pthread_mutex_lock(&s->lock);
    uint64_t g = s->gen;
    pthread_mutex_unlock(&s->lock);
    return g;
}

int cg_sentinel_trusted(cg_sentinel_t *s)
{
    pthread_mutex_lock(&s->lock);
    int t = s->have && s->trusted;
    pthread_mutex_unlock(&s->lock);
    return t;
}

int cg_sentinel_role_is_master(const redisReply *r, char *role, size_t cap)
{
    if (r != NULL && r->type == REDIS_REPLY_ARRAY && r->elements >= 1 &&
        r->element[0]->type == REDIS_REPLY_STRING) {
        snprintf(role, cap, "%.*s", (int)(r->element[0]->len > 32 ? 32 : r->element[0]->len),
                 r->element[0]->str);
        return r->element[0]->len == 6 && memcmp(r->element[0]->str, "master", 6) == 0;
    }
    snprintf(role, cap, "%s", r && r->type == REDIS_REPLY_ERROR ? "error" : "unexpected");
    return 0;
}

static int word(const redisReply *r, const char *w)
{
    size_t n = strlen(w);
    return r->len >= n && memcmp(r->str, w, n) == 0;
}

int cg_sentinel_reply_distrusts(const redisReply *r)
{
    return r != NULL && r->type == REDIS_REPLY_ERROR &&
           (word(r, "READONLY") || word(r, "LOADING") || word(r, "MASTERDOWN"));
}

int cg_sentinel_cached(cg_sentinel_t *s, char *host, size_t cap, int *port, uint64_t *gen)
{
    int rc = -1;
    pthread_mutex_lock(&s->lock);
    if (s->have && s->trusted && strlen(s->master.host) < cap) {
        strcpy(host, s->master.host);
        *port = s->master.port;
        *gen = s->gen;
        rc = 0;
    }
    pthread_mutex_unlock(&s->lock);
    return rc;
}

static void *watch(void *arg)
{
    cg_sentinel_t *s = arg;
    char host[CG_SENTINEL_HOST_MAX], err[256];
    for (;;) {
        pthread_mutex_lock(&s->lock);
        int stop = s->stop, trusted = s->have && s->trusted;
        int64_t age = mono_ms() - s->asked_ms;
        pthread_mutex_unlock(&s->lock);
        if (stop)
            break;
        /* A trusted address is checked again every CG_SENTINEL_REFRESH_MS: a master
         * that was partitioned away may come back and answer as master until the
         * sentinels demote it, with no error to make us ask. */
        int nap_ms = CG_SENTINEL_WATCH_MS;
        if (!trusted || age >= CG_SENTINEL_REFRESH_MS) {
            int port, unreachable;
            uint64_t gen;
            /* No answer: ask less often (requests that need one ask themselves on httpd). */
            if (resolve(s, mono_ms() + 2000, trusted, host, sizeof(host), &port, &gen,
                        &unreachable, err, sizeof(err)) != 0)
                nap_ms = 5 * CG_SENTINEL_WATCH_MS;
            if (trusted) {
                pthread_mutex_lock(&s->lock);
                s->asked_ms = mono_ms();    /* also when no sentinel answered: not in a loop */
                pthread_mutex_unlock(&s->lock);
            }
        }
        if (cg_thread_nap(&s->lock, &s->wake, &s->stop, nap_ms))
            break;
    }
    return NULL;
}

int cg_sentinel_watch(cg_sentinel_t *s)
{
    if (s->watching)
        return 0;
    if (cg_thread_start(&s->watcher, watch, s) != 0)
        return -1;
    s->watching = 1;
    return 0;
}
