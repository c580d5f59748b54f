/* certgatectl watch: wait until the old certificate of a cutover has gone quiet,
 * from the usage the admin API shows per registration (GET /apps/{app}). */
#include "ctl.h"
#include "ctl_http.h"
#include "cg_cert.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void nap(double s)
{
    if (s <= 0)
        return;
    struct timespec ts = { (time_t)s, (long)((s - (double)(time_t)s) * 1e9) };
    while (nanosleep(&ts, &ts) != 0)
        ;
}

static void result(const ctl_args_t *a, int quiet, const char *id, json_t *usage, int64_t q)
{
    if (a->json) {
        json_t *o = json_pack("{s:b,s:s,s:I,s:O?}", "quiet", quiet, "certId", id,
                              "quietSeconds", (json_int_t)q, "usage", usage);
        ctl_print_json(o);
        json_decref(o);
    } else if (quiet) {
        printf("%s has had no request for %llds: it can be retired\n", id, (long long)q);
    } else {
        printf("%s was not quiet in time (quiet for %llds)\n", id, (long long)q);
    }
}

static int run_watch(ctl_args_t *a, ctl_api_t *api)
{
    const char *old = ctl_opt(a, "old"), *qs = ctl_opt(a, "quiet-for");
    const char *ts = ctl_opt(a, "timeout"), *is = ctl_opt(a, "interval");
    int64_t quiet_for, timeout = -1, interval = 10;
    char path[1024], esc[600];
    if (old == NULL || qs == NULL)
        return ctl_usage_error(a, "--old and --quiet-for are required");
    if (ctl_duration(qs, &quiet_for) != 0 || (ts && ctl_duration(ts, &timeout) != 0) ||
        (is && (ctl_duration(is, &interval) != 0 || interval < 1)))
        return ctl_usage_error(a, "DURATION: 90, 90s, 15m, 2h or 1d (--interval at least 1s)");
    if (ctl_path_escape(a->pos[0], esc, sizeof(esc)) != 0)
        return ctl_usage_error(a, "app id too long");
    snprintf(path, sizeof(path), "/apps/%s", esc);
    double start = mono();
    int64_t start_wall = (int64_t)time(NULL), q = 0;
    for (;;) {
        ctl_resp_t r;
        int got = ctl_api_call(api, "GET", path, NULL, NULL, 0, &r) == 0;
        if (got && r.status >= 400 && r.status < 500) {
            int rc = ctl_api_fail(a, "GET /apps", &r);
            ctl_resp_free(&r);
            return rc;
        }
        if (got && r.status >= 200 && r.status < 300) {
            json_t *cert = NULL, *c;
            size_t i;
            json_array_foreach(json_object_get(r.json, "certificates"), i, c)
                if (strcmp(ctl_js(c, "id"), old) == 0)
                    cert = c;
            if (cert == NULL) {
                fprintf(stderr, "certgatectl watch: %s is not a certificate of app %s\n", old,
                        a->pos[0]);
                ctl_resp_free(&r);
                return CTL_REFUSED;
            }
            json_t *u = json_object_get(cert, "usage");
            const char *seen = json_is_object(u) ? ctl_js(u, "lastSeen") : "-";
            int64_t last, now = r.date >= 0 ? r.date : (int64_t)time(NULL);
            if (strcmp(seen, "-") != 0 && cg_time_parse_iso(seen, &last) == 0) {
                q = now > last ? now - last : 0;
                fprintf(stderr, "watch: %s: %lld requests, last at %s: quiet for %llds of %llds\n",
                        old, ctl_ji(u, "requests", 0), seen, (long long)q, (long long)quiet_for);
            } else {
                /* Never seen: quiet only counts from the start of the watch. */
                int64_t t = (int64_t)time(NULL);
                q = t > start_wall ? t - start_wall : 0;
                fprintf(stderr, "watch: %s: no request recorded: quiet for %llds (since the "
                        "watch started) of %llds\n", old, (long long)q, (long long)quiet_for);
            }
            if (q >= quiet_for) {
                result(a, 1, old, json_is_object(u) ? u : NULL, q);
                ctl_resp_free(&r);
                return CTL_OK;
            }
        } else {
            fprintf(stderr, "watch: the admin API did not answer (%s); trying again\n",
                    got ? "server error" : r.err);
        }
        ctl_resp_free(&r);
        double elapsed = mono() - start;
        if (timeout >= 0 && elapsed >= (double)timeout) {
            result(a, 0, old, NULL, q);
            return CTL_TIMEOUT;
        }
        double wait = (double)interval;
        if (timeout >= 0 && (double)timeout - elapsed < wait)
            wait = (double)timeout - elapsed;
        nap(wait);
    }
}

int ctl_cmd_watch(ctl_args_t *a)
{
    ctl_api_t api;
    int rc = ctl_api_init(&api, a, 1);
    if (rc == CTL_OK)
        rc = run_watch(a, &api);
    ctl_api_free(&api);
    return rc;
}
