/* certgatectl: the admin API over libcurl (base URL, credentials, TLS options). */
#ifndef CTL_HTTP_H
#define CTL_HTTP_H

#include <stddef.h>
#include <stdint.h>
#include <jansson.h>
#include "ctl.h"

typedef struct {
    char *base;             /* --url / CERTGATE_URL, no trailing slash */
    char *user, *password;  /* --credentials FILE or CERTGATE_USER/CERTGATE_PASSWORD */
    const char *cacert, *capath, *cert, *key;
    long timeout_s;
    const char *if_match;   /* sent as If-Match when set */
    void *curl;
    int curl_global;        /* curl_global_init succeeded: clean up once */
} ctl_api_t;

typedef struct {
    long status;            /* HTTP status, 0 when no answer came */
    char *body;
    size_t len;
    json_t *json;           /* the body as JSON, or NULL */
    int64_t date;           /* the Date header (epoch seconds), or -1 */
    char err[256];          /* transport error, when status is 0 */
} ctl_resp_t;

/* Set up from the options; CTL_OK, or CTL_USAGE/CTL_ERR with a message printed.
 * need_url: refuse without --url. */
int ctl_api_init(ctl_api_t *api, const ctl_args_t *a, int need_url);
void ctl_api_free(ctl_api_t *api);

/* One request; path starts with '/' and may hold a query. body may be NULL.
 * Returns 0 when an answer came (any status), -1 on transport errors (r->err). */
int ctl_api_call(ctl_api_t *api, const char *method, const char *path, const char *ctype,
                 const char *body, size_t len, ctl_resp_t *r);
void ctl_resp_free(ctl_resp_t *r);

/*
 * For an answer that is not 2xx, or no answer: print what went wrong to stderr
 * (and the API's error JSON to stdout with --json). Returns CTL_REFUSED for
 * 4xx, CTL_ERR otherwise.
 */
int ctl_api_fail(const ctl_args_t *a, const char *what, const ctl_resp_t *r);

/* GET/POST and check for 2xx: CTL_OK with r filled, or ctl_api_fail's code. */
int ctl_api_expect(ctl_api_t *api, const ctl_args_t *a, const char *what, const char *method,
                   const char *path, json_t *body, ctl_resp_t *r);

/* Append "&key=value" (or "?key=value" first) to q, escaped; value NULL adds nothing.
 * Returns -1 when it does not fit. */
int ctl_query_add(char *q, size_t cap, const char *key, const char *value);
/* Escape one path segment (an id) into out; -1 when it does not fit. */
int ctl_path_escape(const char *s, char *out, size_t cap);

#endif
