/* certgatectl doctor: one line per check of the admin API and of Redis. */
#include "ctl.h"
#include "ctl_http.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>
#include <hiredis/hiredis.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>

#define REDIS_TIMEOUT_S 2

typedef struct {
    json_t *checks;
    int failed;
    int json;
} report_t;

__attribute__((format(printf, 4, 5)))
static void say(report_t *rp, const char *state, const char *check, const char *fmt, ...)
{
    char msg[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (strcmp(state, "FAIL") == 0)
        rp->failed = 1;
    if (rp->json) {
        char low[8];
        size_t i;
        for (i = 0; state[i] && i + 1 < sizeof(low); i++)
            low[i] = (char)(state[i] | 0x20);
        low[i] = '\0';
        json_array_append_new(rp->checks, json_pack("{s:s,s:s,s:s}", "check", check, "status",
                                                    low, "message", msg));
    } else {
        printf("%-4s  %-12s %s\n", state, check, msg);
        fflush(stdout);
    }
}

static double now_s(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
}

static void check_api(ctl_args_t *a, report_t *rp, int64_t max_skew)
{
    ctl_api_t api;
    int rc = ctl_api_init(&api, a, 0);
    if (rc != CTL_OK || api.base == NULL) {
        if (rc == CTL_OK) {
            say(rp, "SKIP", "admin-api", "no --url or CERTGATE_URL given");
            say(rp, "SKIP", "admin-clock", "no --url or CERTGATE_URL given");
        } else {
            say(rp, "FAIL", "admin-api", "the admin API settings are wrong (see above)");
        }
        ctl_api_free(&api);
        return;
    }
    ctl_resp_t r;
    double t0 = now_s();
    int got = ctl_api_call(&api, "GET", "/certs?pageSize=1", NULL, NULL, 0, &r) == 0;
    double local = (t0 + now_s()) / 2;
    const char *code = r.json ? json_string_value(json_object_get(r.json, "code")) : NULL;
    const char *msg = r.json ? json_string_value(json_object_get(r.json, "message")) : NULL;
    if (!got)
        say(rp, "FAIL", "admin-api", "no answer: %s", r.err);
    else if (r.status >= 200 && r.status < 300 && r.json != NULL)
        say(rp, "OK", "admin-api", "%s answered GET /certs (%s%s)", api.base,
            api.user ? "as " : "without a login", api.user ? api.user : "");
    else if (r.status == 401)
        say(rp, "FAIL", "admin-api", "%s wants a login the tool did not give or that was "
            "refused (401): check --credentials or CERTGATE_USER/CERTGATE_PASSWORD", api.base);
    else if (code != NULL)
        say(rp, "FAIL", "admin-api", "%s refused GET /certs: %ld %s: %s", api.base, r.status, code,
            msg ? msg : "");
    else
        say(rp, "FAIL", "admin-api", "%s answered HTTP %ld, not the admin API: check --url",
            api.base, r.status);
    if (got && r.date >= 0) {
        double skew = (double)r.date - local;
        /* Date has whole seconds: one more second of slack. */
        if (skew < -(double)max_skew - 1 || skew > (double)max_skew + 1)
            say(rp, "FAIL", "admin-clock", "the admin API's clock (Date header) is %.0fs %s this "
                "host's", skew < 0 ? -skew : skew, skew < 0 ? "behind" : "ahead of");
        else
            say(rp, "OK", "admin-clock", "the admin API's Date header is %.0fs from this host's "
                "clock (whole seconds)", skew);
    } else {
        say(rp, "SKIP", "admin-clock", "%s", got ? "the answer had no Date header"
                                                 : "the admin API did not answer");
    }
    ctl_resp_free(&r);
    ctl_api_free(&api);
}

/* Connect, AUTH, SELECT. NULL with a reason in why. */
static redisContext *redis_open(const char *addr, const char *user, const char *pw, int db,
                                char *why, size_t cap)
{
    struct timeval tv = { REDIS_TIMEOUT_S, 0 };
    redisContext *c;
    if (addr[0] == '/' || strncmp(addr, "unix:", 5) == 0) {
        c = redisConnectUnixWithTimeout(addr[0] == '/' ? addr : addr + 5, tv);
    } else {
        char host[256];
        const char *colon = strrchr(addr, ':');
        size_t hl = colon ? (size_t)(colon - addr) : strlen(addr);
        int port = colon ? atoi(colon + 1) : 6379;
        if (hl >= sizeof(host) || port <= 0 || port > 65535) {
            snprintf(why, cap, "not an address: %s (host:port or a socket path)", addr);
            return NULL;
        }
        memcpy(host, addr, hl);
        host[hl] = '\0';
        if (hl > 2 && host[0] == '[' && host[hl - 1] == ']') {   /* [::1]:6379 */
            memmove(host, host + 1, hl - 2);
            host[hl - 2] = '\0';
        }
        c = redisConnectWithTimeout(host, port, tv);
    }
    if (c == NULL || c->err) {
        snprintf(why, cap, "cannot connect to %s: %s", addr, c ? c->errstr : "out of memory");
        redisFree(c);
        return NULL;
    }
    if (redisSetTimeout(c, tv) != REDIS_OK) {
        snprintf(why, cap, "cannot set a timeout on the connection to %s", addr);
        redisFree(c);
        return NULL;
    }
    redisReply *r = NULL;
    if (pw != NULL && user != NULL)
        r = redisCommand(c, "AUTH %s %s", user, pw);
    else if (pw != NULL)
        r = redisCommand(c, "AUTH %s", pw);
    if (pw != NULL && (r == NULL || r->type == REDIS_REPLY_ERROR)) {
        /* Redis's own words (WRONGPASS...) never hold the password. */
        snprintf(why, cap, "%s refused the login%s%s: %s", addr, user ? " of user " : "",
                 user ? user : "", r ? r->str : c->errstr);
        freeReplyObject(r);
        redisFree(c);
        return NULL;
    }
    freeReplyObject(r);
    r = db > 0 ? redisCommand(c, "SELECT %d", db) : redisCommand(c, "PING");
    if (r == NULL || r->type == REDIS_REPLY_ERROR) {
        snprintf(why, cap, "%s: %s: %s", addr, db > 0 ? "SELECT" : "PING", r ? r->str : c->errstr);
        freeReplyObject(r);
        redisFree(c);
        return NULL;
    }
    freeReplyObject(r);
    return c;
}

static void check_role(redisContext *c, const char *addr, report_t *rp)
{
    redisReply *r = redisCommand(c, "ROLE");
    if (r == NULL) {
        say(rp, "FAIL", "redis-role", "ROLE: %s", c->errstr);
    } else if (r->type == REDIS_REPLY_ERROR && strncmp(r->str, "NOPERM", 6) == 0) {
        say(rp, "SKIP", "redis-role", "this Redis user may not run ROLE (the ACL users of the "
            "operator guide may not): check with another user");
    } else if (r->type == REDIS_REPLY_ARRAY && r->elements >= 1 &&
               r->element[0]->type == REDIS_REPLY_STRING) {
        const char *role = r->element[0]->str;
        if (strcmp(role, "master") == 0)
            say(rp, "OK", "redis-role", "%s is a master", addr);
        else if (strcmp(role, "slave") == 0 && r->elements >= 3 &&
                 r->element[1]->type == REDIS_REPLY_STRING)
            say(rp, "FAIL", "redis-role", "%s is a replica of %s:%lld, not the master: the admin "
                "API cannot write there", addr, r->element[1]->str,
                r->element[2]->type == REDIS_REPLY_INTEGER ? r->element[2]->integer : 0LL);
        else
            say(rp, "FAIL", "redis-role", "%s is a %s, not a master", addr, role);
    } else {
        say(rp, "FAIL", "redis-role", "ROLE: %s", r->type == REDIS_REPLY_ERROR ? r->str
                                                                           : "unexpected answer");
    }
    freeReplyObject(r);
}

static void check_pubsub(redisContext *c, redisContext *sub, const char *prefix, report_t *rp)
{
    unsigned char rnd[8];
    char chan[160], nonce[17];
    if (RAND_bytes(rnd, sizeof(rnd)) != 1)
        memset(rnd, 0x5a, sizeof(rnd));
    for (size_t i = 0; i < sizeof(rnd); i++)
        snprintf(nonce + 2 * i, 3, "%02x", rnd[i]);
    /* Not the invalidate channel: a message there makes every gateway flush its cache. */
    snprintf(chan, sizeof(chan), "%sdoctor:%ld", prefix, (long)getpid());
    redisReply *r = redisCommand(sub, "SUBSCRIBE %s", chan);
    if (r == NULL || r->type == REDIS_REPLY_ERROR) {
        say(rp, "FAIL", "redis-pubsub", "SUBSCRIBE %s: %s", chan, r ? r->str : sub->errstr);
        freeReplyObject(r);
        return;
    }
    freeReplyObject(r);
    double t0 = now_s();
    r = redisCommand(c, "PUBLISH %s %s", chan, nonce);
    if (r == NULL || r->type != REDIS_REPLY_INTEGER) {
        say(rp, "FAIL", "redis-pubsub", "PUBLISH %s: %s", chan,
            r && r->type == REDIS_REPLY_ERROR ? r->str : c->errstr);
        freeReplyObject(r);
        return;
    }
    long long receivers = r->integer;
    freeReplyObject(r);
    void *vr = NULL;
    if (redisGetReply(sub, &vr) != REDIS_OK) {
        say(rp, "FAIL", "redis-pubsub", "no message came back on %s within %ds (PUBLISH reached "
            "%lld subscriber(s))", chan, REDIS_TIMEOUT_S, receivers);
        return;
    }
    r = vr;
    if (r->type == REDIS_REPLY_ARRAY && r->elements == 3 && r->element[2]->type == REDIS_REPLY_STRING
        && strcmp(r->element[2]->str, nonce) == 0)
        say(rp, "OK", "redis-pubsub", "a message on %s came back in %.0f ms", chan,
            (now_s() - t0) * 1000);
    else
        say(rp, "FAIL", "redis-pubsub", "the message on %s came back changed", chan);
    freeReplyObject(r);
}

static void check_time(redisContext *c, report_t *rp, int64_t max_skew)
{
    double t0 = now_s();
    redisReply *r = redisCommand(c, "TIME");
    double local = (t0 + now_s()) / 2;
    if (r != NULL && r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
        r->element[0]->type == REDIS_REPLY_STRING && r->element[1]->type == REDIS_REPLY_STRING) {
        double t = atof(r->element[0]->str) + atof(r->element[1]->str) / 1e6;
        double skew = t - local;
        if (skew < -(double)max_skew || skew > (double)max_skew)
            say(rp, "FAIL", "redis-clock", "Redis's clock (TIME) is %.1fs %s this host's: "
                "windows and expiry are decided on the gateways' clocks, keep them in sync",
                skew < 0 ? -skew : skew, skew < 0 ? "behind" : "ahead of");
        else
            say(rp, "OK", "redis-clock", "Redis TIME is %.3fs from this host's clock", skew);
    } else {
        say(rp, "FAIL", "redis-clock", "TIME: %s", r && r->type == REDIS_REPLY_ERROR ? r->str
                                       : r ? "unexpected answer" : c->errstr);
    }
    freeReplyObject(r);
}

int ctl_cmd_doctor(ctl_args_t *a)
{
    report_t rp = { json_array(), 0, a->json };
    int64_t max_skew = 2;
    const char *ms = ctl_setting(a, "max-skew", NULL);
    if (ms != NULL && ctl_duration(ms, &max_skew) != 0)
        return ctl_usage_error(a, "--max-skew: a duration such as 2s");
    const char *addr = ctl_setting(a, "redis", "CERTGATE_REDIS");
    const char *user = ctl_setting(a, "redis-user", "CERTGATE_REDIS_USER");
    const char *dbs = ctl_setting(a, "redis-db", "CERTGATE_REDIS_DB");
    const char *prefix = ctl_setting(a, "prefix", "CERTGATE_PREFIX");
    const char *pwfile = ctl_opt(a, "redis-password-file");
    char *pw = NULL;
    if (pwfile != NULL) {
        size_t len;
        unsigned char *buf = ctl_read_file(pwfile, 4096, &len);
        if (buf == NULL)
            return CTL_USAGE;
        buf[strcspn((char *)buf, "\r\n")] = '\0';
        pw = (char *)buf;
    } else {
        const char *p = ctl_setting(a, "redis-password", "CERTGATE_REDIS_PASSWORD");
        if (p != NULL && (pw = strdup(p)) == NULL)
            return CTL_ERR;
    }
    int db = dbs ? atoi(dbs) : 0;
    if (addr == NULL || *addr == '\0')
        addr = "127.0.0.1:6379";
    if (prefix == NULL)
        prefix = "certgate:";

    check_api(a, &rp, max_skew);
    char why[600];
    redisContext *c = redis_open(addr, user, pw, db, why, sizeof(why));
    redisContext *sub = c ? redis_open(addr, user, pw, db, why, sizeof(why)) : NULL;
    if (c == NULL || sub == NULL) {
        say(&rp, "FAIL", "redis", "%s", why);
        say(&rp, "SKIP", "redis-role", "no connection to Redis");
        say(&rp, "SKIP", "redis-pubsub", "no connection to Redis");
        say(&rp, "SKIP", "redis-clock", "no connection to Redis");
    } else {
        say(&rp, "OK", "redis", "%s answered%s%s, db %d", addr, user ? " as " : "",
            user ? user : "", db);
        check_role(c, addr, &rp);
        check_pubsub(c, sub, prefix, &rp);
        check_time(c, &rp, max_skew);
    }
    redisFree(c);
    redisFree(sub);
    if (pw != NULL) {
        OPENSSL_cleanse(pw, strlen(pw));
        free(pw);
    }
    if (a->json) {
        json_t *o = json_pack("{s:b,s:O}", "ok", !rp.failed, "checks", rp.checks);
        ctl_print_json(o);
        json_decref(o);
    }
    json_decref(rp.checks);
    return rp.failed ? CTL_ERR : CTL_OK;
}
