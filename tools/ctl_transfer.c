/* certgatectl export and import: GET /export to a file, POST /import in batches. */
#include "ctl.h"
#include "ctl_http.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define IMPORT_FILE_MAX (1024u * 1024u * 1024u)
#define BATCH_MAX 1000      /* the API's limit per request */

static int run_export(ctl_args_t *a, ctl_api_t *api)
{
    char q[4096] = "/export";
    if (ctl_query_add(q, sizeof(q), "appId", ctl_opt(a, "app")) != 0 ||
        ctl_query_add(q, sizeof(q), "customerId", ctl_opt(a, "customer")) != 0 ||
        ctl_query_add(q, sizeof(q), "status", ctl_opt(a, "status")) != 0)
        return ctl_usage_error(a, "filters too long");
    ctl_resp_t r;
    int rc = ctl_api_expect(api, a, "GET /export", "GET", q, NULL, &r);
    if (rc != CTL_OK)
        return rc;
    const char *out = ctl_opt(a, "output");
    FILE *f = out ? fopen(out, "w") : stdout;
    if (f == NULL) {
        perror(out);
        ctl_resp_free(&r);
        return CTL_ERR;
    }
    /* The answer as it came: an import reads exactly this. */
    int bad = fwrite(r.body, 1, r.len, f) != r.len || fputc('\n', f) == EOF;
    if (f != stdout)
        bad |= fclose(f) != 0;
    if (bad) {
        fprintf(stderr, "certgatectl export: cannot write %s\n", out ? out : "stdout");
        rc = CTL_ERR;
    } else {
        fprintf(stderr, "exported %lld registration(s) at %s, %zu skipped (listed in the file)\n",
                ctl_ji(r.json, "count", 0), ctl_js(r.json, "exported"),
                json_array_size(json_object_get(r.json, "skipped")));
    }
    ctl_resp_free(&r);
    return rc;
}

int ctl_cmd_export(ctl_args_t *a)
{
    ctl_api_t api;
    int rc = ctl_api_init(&api, a, 1);
    if (rc == CTL_OK)
        rc = run_export(a, &api);
    ctl_api_free(&api);
    return rc;
}

/* One batch; results are appended to all with indexes into the whole file. */
static int import_batch(ctl_args_t *a, ctl_api_t *api, const char *q, json_t *items,
                        size_t from, size_t n, json_t *all, long long sums[3])
{
    json_t *slice = json_array();
    for (size_t i = from; i < from + n; i++)
        json_array_append(slice, json_array_get(items, i));
    json_t *body = json_pack("{s:o}", "items", slice);
    ctl_resp_t r;
    int rc = ctl_api_expect(api, a, "POST /import", "POST", q, body, &r);
    json_decref(body);
    if (rc != CTL_OK)
        return rc;
    static const char *const names[3] = { "created", "unchanged", "errors" };
    for (int k = 0; k < 3; k++)
        sums[k] += ctl_ji(r.json, names[k], 0);
    size_t i;
    json_t *res;
    json_array_foreach(json_object_get(r.json, "results"), i, res) {
        json_object_set_new(res, "index", json_integer((json_int_t)(from + (size_t)ctl_ji(res,
                                                       "index", (long long)i))));
        json_array_append(all, res);
    }
    ctl_resp_free(&r);
    return CTL_OK;
}

static int run_import(ctl_args_t *a, ctl_api_t *api)
{
    long batch = 500;
    const char *b = ctl_opt(a, "batch");
    if (b != NULL) {
        char *end;
        batch = strtol(b, &end, 10);
        if (*b == '\0' || *end != '\0' || batch < 1 || batch > BATCH_MAX)
            return ctl_usage_error(a, "--batch: 1 to %d", BATCH_MAX);
    }
    size_t len;
    unsigned char *buf = ctl_read_file(a->pos[0], IMPORT_FILE_MAX, &len);
    if (buf == NULL)
        return CTL_ERR;
    json_error_t jerr;
    json_t *doc = json_loadb((const char *)buf, len, 0, &jerr);
    free(buf);
    json_t *items = json_object_get(doc, "items");
    if (!json_is_array(items)) {
        fprintf(stderr, "certgatectl import: %s: not an export ({\"items\":[...]})%s%s\n",
                a->pos[0], doc ? "" : ": ", doc ? "" : jerr.text);
        json_decref(doc);
        return CTL_USAGE;
    }
    int dry = ctl_flag(a, "dry-run"), keep = ctl_flag(a, "keep-status");
    char q[64] = "/import";
    if (dry)
        ctl_query_add(q, sizeof(q), "dryRun", "1");
    if (keep)
        ctl_query_add(q, sizeof(q), "keepStatus", "1");
    json_t *results = json_array();
    long long sums[3] = { 0, 0, 0 };
    size_t n = json_array_size(items), done = 0;
    int rc = CTL_OK;
    while (done < n && rc == CTL_OK) {
        size_t k = n - done < (size_t)batch ? n - done : (size_t)batch;
        rc = import_batch(a, api, q, items, done, k, results, sums);
        if (rc == CTL_OK)
            done += k;
    }
    if (rc != CTL_OK && done > 0)
        fprintf(stderr, "certgatectl import: the first %zu record(s) were sent; import the file "
                "again once fixed: records already written come back unchanged\n", done);
    if (a->json) {
        json_t *o = json_pack("{s:b,s:b,s:I,s:I,s:I,s:O}", "dryRun", dry, "keepStatus", keep,
                              "created", (json_int_t)sums[0], "unchanged", (json_int_t)sums[1],
                              "errors", (json_int_t)sums[2], "results", results);
        ctl_print_json(o);
        json_decref(o);
    } else {
        size_t i;
        json_t *res;
        json_array_foreach(results, i, res) {
            printf("%lld  %-9s %s", ctl_ji(res, "index", 0), ctl_js(res, "outcome"),
                   ctl_js(res, "id"));
            if (json_is_string(json_object_get(res, "code")))
                printf("  %s: %s", ctl_js(res, "code"), ctl_js(res, "message"));
            printf("\n");
        }
        printf("%s%lld created, %lld unchanged, %lld error(s) of %zu record(s)\n",
               dry ? "dry run: " : "", sums[0], sums[1], sums[2], n);
    }
    json_decref(results);
    json_decref(doc);
    if (rc == CTL_OK && sums[2] > 0)
        rc = CTL_REFUSED;
    return rc;
}

int ctl_cmd_import(ctl_args_t *a)
{
    ctl_api_t api;
    int rc = ctl_api_init(&api, a, 1);
    if (rc == CTL_OK)
        rc = run_import(a, &api);
    ctl_api_free(&api);
    return rc;
}
