/* certgatectl: the admin API over libcurl. */
#include "ctl_http.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <curl/curl.h>
#include <openssl/crypto.h>

/* An export of 10,000 registrations is about 30 MB: leave room, but bound it. */
#define BODY_MAX (512u * 1024u * 1024u)

static char *dup_trim(const char *s, size_t len)
{
    while (len > 0 && (s[len - 1] == '\n' || s[len - 1] == '\r'))
        len--;
    char *out = malloc(len + 1);
    if (out != NULL) {
        memcpy(out, s, len);
        out[len] = '\0';
    }
    return out;
}

/* user:password from the first line of a file. */
static int read_credentials(ctl_api_t *api, const char *path)
{
    size_t len = 0;
    unsigned char *buf = ctl_read_file(path, 4096, &len);
    if (buf == NULL)
        return CTL_ERR;
    size_t line = strcspn((const char *)buf, "\n");
    char *colon = memchr(buf, ':', line);
    int rc = CTL_OK;
    if (colon == NULL || colon == (char *)buf) {
        fprintf(stderr, "certgatectl: %s: expected one line user:password\n", path);
        rc = CTL_USAGE;
    } else {
        api->user = dup_trim((const char *)buf, (size_t)(colon - (char *)buf));
        api->password = dup_trim(colon + 1, line - (size_t)(colon + 1 - (char *)buf));
        if (api->user == NULL || api->password == NULL)
            rc = CTL_ERR;
    }
    OPENSSL_cleanse(buf, len);
    free(buf);
    return rc;
}

int ctl_api_init(ctl_api_t *api, const ctl_args_t *a, int need_url)
{
    memset(api, 0, sizeof(*api));
    const char *url = ctl_setting(a, "url", "CERTGATE_URL");
    if (url == NULL || *url == '\0') {
        if (!need_url)
            return CTL_OK;
        return ctl_usage_error(a, "no admin API URL: give --url or set CERTGATE_URL");
    }
    if (strncmp(url, "https://", 8) != 0 && strncmp(url, "http://", 7) != 0)
        return ctl_usage_error(a, "--url must start with https:// (or http://)");
    api->base = dup_trim(url, strlen(url));
    if (api->base == NULL)
        return CTL_ERR;
    size_t bl = strlen(api->base);
    while (bl > 0 && api->base[bl - 1] == '/')
        api->base[--bl] = '\0';
    const char *cred = ctl_setting(a, "credentials", "CERTGATE_CREDENTIALS");
    if (cred != NULL && *cred != '\0') {
        int rc = read_credentials(api, cred);
        if (rc != CTL_OK)
            return rc;
    } else if (getenv("CERTGATE_USER") != NULL) {
        const char *pw = getenv("CERTGATE_PASSWORD");
        api->user = strdup(getenv("CERTGATE_USER"));
        api->password = strdup(pw ? pw : "");
        if (api->user == NULL || api->password == NULL)
            return CTL_ERR;
    }
    api->cacert = ctl_setting(a, "cacert", "CERTGATE_CACERT");
    api->capath = ctl_setting(a, "capath", NULL);
    api->cert = ctl_setting(a, "cert", NULL);
    api->key = ctl_setting(a, "key", NULL);
    api->timeout_s = 60;
    const char *t = ctl_setting(a, "http-timeout", NULL);
    if (t != NULL) {
        int64_t s;
        if (ctl_duration(t, &s) != 0 || s <= 0 || s > 86400)
            return ctl_usage_error(a, "--http-timeout: give a duration such as 30s or 5m");
        api->timeout_s = (long)s;
    }
    api->curl_global = curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK;
    if (!api->curl_global || (api->curl = curl_easy_init()) == NULL) {
        fprintf(stderr, "certgatectl: cannot initialise libcurl\n");
        return CTL_ERR;
    }
    return CTL_OK;
}

void ctl_api_free(ctl_api_t *api)
{
    if (api->password != NULL) {
        OPENSSL_cleanse(api->password, strlen(api->password));
        free(api->password);
    }
    free(api->user);
    free(api->base);
    if (api->curl != NULL)
        curl_easy_cleanup(api->curl);
    if (api->curl_global)
        curl_global_cleanup();
    memset(api, 0, sizeof(*api));
}

static size_t on_body(char *data, size_t size, size_t nmemb, void *arg)
{
    ctl_resp_t *r = arg;
    size_t n = size * nmemb;
    if (n > BODY_MAX - r->len)
        return 0;   /* too large: curl reports a write error */
    char *nb = realloc(r->body, r->len + n + 1);
    if (nb == NULL)
        return 0;
    memcpy(nb + r->len, data, n);
    r->body = nb;
    r->len += n;
    r->body[r->len] = '\0';
    return n;
}

static size_t on_header(char *data, size_t size, size_t nmemb, void *arg)
{
    ctl_resp_t *r = arg;
    size_t n = size * nmemb;
    if (n > 5 && n < 200 && strncasecmp(data, "Date:", 5) == 0) {
        char v[200];
        memcpy(v, data + 5, n - 5);
        v[n - 5] = '\0';
        time_t t = curl_getdate(v, NULL);
        r->date = t < 0 ? -1 : (int64_t)t;
    }
    return n;
}

int ctl_api_call(ctl_api_t *api, const char *method, const char *path, const char *ctype,
                 const char *body, size_t len, ctl_resp_t *r)
{
    CURL *c = api->curl;
    char url[8192], ct[128];
    struct curl_slist *hdr = NULL;
    memset(r, 0, sizeof(*r));
    r->date = -1;
    if ((size_t)snprintf(url, sizeof(url), "%s%s", api->base, path) >= sizeof(url)) {
        snprintf(r->err, sizeof(r->err), "URL too long");
        return -1;
    }
    curl_easy_reset(c);
    hdr = curl_slist_append(hdr, "Accept: application/json");
    if (ctype != NULL) {
        snprintf(ct, sizeof(ct), "Content-Type: %s", ctype);
        struct curl_slist *h2 = curl_slist_append(hdr, ct);
        hdr = h2 ? h2 : hdr;
    }
    if (api->if_match != NULL && hdr != NULL) {
        char im[160];
        snprintf(im, sizeof(im), "If-Match: %s", api->if_match);
        struct curl_slist *h2 = curl_slist_append(hdr, im);
        hdr = h2 ? h2 : hdr;
    }
    int ok = hdr != NULL &&
        curl_easy_setopt(c, CURLOPT_URL, url) == CURLE_OK &&
        curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method) == CURLE_OK &&
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdr) == CURLE_OK &&
        curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body) == CURLE_OK &&
        curl_easy_setopt(c, CURLOPT_WRITEDATA, r) == CURLE_OK &&
        curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header) == CURLE_OK &&
        curl_easy_setopt(c, CURLOPT_HEADERDATA, r) == CURLE_OK &&
        curl_easy_setopt(c, CURLOPT_TIMEOUT, api->timeout_s) == CURLE_OK &&
        curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 10L) == CURLE_OK &&
        curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L) == CURLE_OK &&
        curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https") == CURLE_OK;
    if (ok && body != NULL)
        ok = curl_easy_setopt(c, CURLOPT_POSTFIELDS, body) == CURLE_OK &&
             curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len) == CURLE_OK;
    else if (ok && strcmp(method, "POST") == 0)
        ok = curl_easy_setopt(c, CURLOPT_POSTFIELDS, "") == CURLE_OK;
    if (ok && api->user != NULL)
        ok = curl_easy_setopt(c, CURLOPT_HTTPAUTH, (long)CURLAUTH_BASIC) == CURLE_OK &&
             curl_easy_setopt(c, CURLOPT_USERNAME, api->user) == CURLE_OK &&
             curl_easy_setopt(c, CURLOPT_PASSWORD, api->password) == CURLE_OK;
    if (ok && api->cacert != NULL)
        ok = curl_easy_setopt(c, CURLOPT_CAINFO, api->cacert) == CURLE_OK;
    if (ok && api->capath != NULL)
        ok = curl_easy_setopt(c, CURLOPT_CAPATH, api->capath) == CURLE_OK;
    if (ok && api->cert != NULL)
        ok = curl_easy_setopt(c, CURLOPT_SSLCERT, api->cert) == CURLE_OK;
    if (ok && api->key != NULL)
        ok = curl_easy_setopt(c, CURLOPT_SSLKEY, api->key) == CURLE_OK;
    if (!ok) {
        curl_slist_free_all(hdr);
        snprintf(r->err, sizeof(r->err), "cannot set up the request");
        return -1;
    }
    CURLcode cc = curl_easy_perform(c);
    curl_slist_free_all(hdr);
    if (cc != CURLE_OK) {
        snprintf(r->err, sizeof(r->err), "%s: %s", api->base, curl_easy_strerror(cc));
        free(r->body);
        r->body = NULL;
        r->len = 0;
        return -1;
    }
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r->status);
    if (r->body != NULL)
        r->json = json_loadb(r->body, r->len, 0, NULL);
    return 0;
}

void ctl_resp_free(ctl_resp_t *r)
{
    free(r->body);
    json_decref(r->json);
    memset(r, 0, sizeof(*r));
}

int ctl_api_fail(const ctl_args_t *a, const char *what, const ctl_resp_t *r)
{
    if (r->status == 0) {
        fprintf(stderr, "certgatectl %s: %s: no answer: %s\n", a->cmd, what, r->err);
        return CTL_ERR;
    }
    const char *code = r->json ? json_string_value(json_object_get(r->json, "code")) : NULL;
    const char *msg = r->json ? json_string_value(json_object_get(r->json, "message")) : NULL;
    if (code != NULL) {
        fprintf(stderr, "certgatectl %s: %s: refused: %ld %s: %s\n", a->cmd, what, r->status,
                code, msg ? msg : "");
        if (a->json)
            ctl_print_json(r->json);
    } else if (r->status == 401) {
        fprintf(stderr, "certgatectl %s: %s: 401: the server wants a login: check --credentials "
                "or CERTGATE_USER/CERTGATE_PASSWORD\n", a->cmd, what);
    } else {
        fprintf(stderr, "certgatectl %s: %s: HTTP %ld (not an admin API answer: check --url)\n",
                a->cmd, what, r->status);
    }
    return r->status >= 400 && r->status < 500 ? CTL_REFUSED : CTL_ERR;
}

int ctl_api_expect(ctl_api_t *api, const ctl_args_t *a, const char *what, const char *method,
                   const char *path, json_t *body, ctl_resp_t *r)
{
    char *text = NULL;
    if (body != NULL && (text = json_dumps(body, JSON_COMPACT)) == NULL) {
        fprintf(stderr, "certgatectl %s: out of memory\n", a->cmd);
        return CTL_ERR;
    }
    int rc = ctl_api_call(api, method, path, text ? "application/json" : NULL, text,
                          text ? strlen(text) : 0, r);
    if (text != NULL) {
        /* An upload body may hold a private key. */
        OPENSSL_cleanse(text, strlen(text));
        free(text);
    }
    if (rc == 0 && r->status >= 200 && r->status < 300)
        return CTL_OK;
    rc = ctl_api_fail(a, what, r);
    ctl_resp_free(r);
    return rc;
}

int ctl_query_add(char *q, size_t cap, const char *key, const char *value)
{
    if (value == NULL)
        return 0;
    size_t len = strlen(q);
    int n = snprintf(q + len, cap - len, "%c%s=", strchr(q, '?') ? '&' : '?', key);
    if (n < 0 || (size_t)n >= cap - len)
        return -1;
    len += (size_t)n;
    for (const unsigned char *p = (const unsigned char *)value; *p; p++) {
        if (len + 4 > cap)
            return -1;
        if (isalnum(*p) || strchr("-._~", *p))
            q[len++] = (char)*p;
        else
            len += (size_t)snprintf(q + len, cap - len, "%%%02X", *p);
    }
    q[len] = '\0';
    return 0;
}

int ctl_path_escape(const char *s, char *out, size_t cap)
{
    out[0] = '\0';
    if (ctl_query_add(out, cap, "x", s) != 0)
        return -1;
    memmove(out, out + 3, strlen(out + 3) + 1);     /* drop "?x=" */
    return 0;
}
