/*
 * certgatectl: a support tool for mod_certgate. inspect runs the upload policy
 * offline with the core (build/libcertgate.a); the other commands are thin
 * clients of the admin API (docs/admin-api.md); doctor also talks to Redis.
 * docs/certgatectl.md is its manual.
 */
#include "ctl.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include "cg_cert.h"
#include "cg_version.h"

#define API_OPTS "url= credentials= cacert= capath= cert= key= http-timeout= config= json"
#define API_HELP \
    "admin API options (also from the config file or the environment):\n" \
    "  --url URL               the admin API base, e.g. https://gw:8444/certgate-admin\n" \
    "                          (CERTGATE_URL)\n" \
    "  --credentials FILE      a file holding one line user:password (CERTGATE_CREDENTIALS);\n" \
    "                          else CERTGATE_USER and CERTGATE_PASSWORD\n" \
    "  --cacert FILE           CA certificates to verify the server (CERTGATE_CACERT)\n" \
    "  --capath DIR            a directory of CA certificates\n" \
    "  --cert FILE, --key FILE a client certificate and key for TLS to the admin API\n" \
    "  --http-timeout DURATION bound on one request (default 60s)\n" \
    "  --config FILE           settings file (CERTGATE_CONFIG); see certgatectl --help\n" \
    "  --json                  print the API's JSON answer instead of text\n"

typedef struct {
    const char *name;
    int (*run)(ctl_args_t *a);
    const char *opts;       /* allowed options; "name=" takes a value */
    int min_pos, max_pos;
    const char *usage;
    const char *help;
} cmd_t;

static const cmd_t CMDS[] = {
    { "inspect", ctl_cmd_inspect,
      "chain= private-key= min-rsa-bits= validity-days= issuer-deny= authorized-cas= "
      "ev-only-new org= config= json", 1, CTL_MAX_POS,
      "inspect FILE... [--chain FILE] [--private-key FILE] [policy options] [--json]",
      "Offline: read the certificates of FILE... (PEM, DER, base64 DER or PKCS#7), in the\n"
      "order given, as the admin API reads an upload (leaf first; a repeated certificate\n"
      "counts once; a PKCS#7 bundle is ordered leaf first), print each one's SHA-256\n"
      "fingerprint, subject, issuer, validity and how it links to the next, then run the\n"
      "upload policy of the server (src/cg_policy.c) on the chain. Exit 4 when the policy\n"
      "refuses, with the code and message an upload would get.\n\n"
      "options (flags win over the config file):\n"
      "  --chain FILE            the issuing certificates, read after FILE...\n"
      "  --private-key FILE      check that the key belongs to the leaf (PrivateKey.Invalid)\n"
      "  --min-rsa-bits N        CertGatePolicyMinRsaBits (default 2048)\n"
      "  --validity-days MIN,MAX CertGatePolicyValidityDays (default 365,1095)\n"
      "  --issuer-deny PATTERN   CertGatePolicyIssuerDeny, repeatable; 'none' allows all\n"
      "                          (default \"Let's Encrypt\")\n"
      "  --authorized-cas FILE   CertGatePolicyAuthorizedCAs (name|serial|YYYY-MM-DD|EV or -)\n"
      "  --ev-only-new           CertGatePolicyEvOnlyNew On\n"
      "  --org NAME              CertGatePolicyCnContainsOrg On, with the app owner's organization\n"
      "  --config FILE           settings file (CERTGATE_CONFIG)\n"
      "  --json                  one JSON object instead of text\n" },
    { "status", ctl_cmd_status, API_OPTS, 1, 1, "status APP [admin API options]",
      "The app, each of its certificates (status, window, what the gate answers it now,\n"
      "requests and last request seen) and its rotations: GET /apps/APP.\n\n" API_HELP },
    { "list", ctl_cmd_list,
      API_OPTS " app= customer= status= expiring-within= page= page-size=", 0, 0,
      "list [--app APP] [--customer ID] [--status S] [--expiring-within DAYS] "
      "[--page N] [--page-size N]",
      "Registrations, newest first: GET /certs with the filters given. --status takes a\n"
      "stored or derived status (PENDING, APPROVED, DECLINED, INACTIVATED, EXPIRED).\n\n"
      API_HELP },
    { "upload", ctl_cmd_upload, API_OPTS " app= customer= private-key=", 1, CTL_MAX_POS,
      "upload FILE... --app APP [--customer ID] [--private-key FILE]",
      "Register a certificate: FILE... are read as by inspect (leaf first, then the chain,\n"
      "root included) and sent as POST /certs. The new registration is PENDING until a\n"
      "manager approves it. --private-key proves possession; the key is never stored.\n\n"
      API_HELP },
    { "approve", ctl_cmd_transition, API_OPTS " reason= if-match=", 1, 1,
      "approve ID [--reason TEXT] [--if-match VERSION]",
      "Approve a PENDING registration (role manager; not the uploader: four-eyes).\n"
      "--if-match v2 refuses (412) unless the registration is still at that version.\n\n"
      API_HELP },
    { "decline", ctl_cmd_transition, API_OPTS " reason= if-match=", 1, 1,
      "decline ID --reason TEXT [--if-match VERSION]",
      "Decline a PENDING registration (role manager).\n\n" API_HELP },
    { "inactivate", ctl_cmd_transition, API_OPTS " reason= if-match=", 1, 1,
      "inactivate ID --reason TEXT [--if-match VERSION]",
      "Inactivate a registration: the gate refuses it at once (role manager).\n\n" API_HELP },
    { "rotate", ctl_cmd_rotate, API_OPTS " new= old= activate= retire=", 1, 1,
      "rotate APP --new ID [--old ID] --activate TIME --retire TIME",
      "Schedule a cutover (role support): the new certificate becomes valid at --activate,\n"
      "the old one stops at --retire. TIME is ISO 8601 UTC (2025-07-01T00:00:00Z), 'now',\n"
      "or +DURATION from now (+10m, +1d). Without --old the API picks the app's only other\n"
      "approved certificate without a retire time. See docs/runbook-rotation.md.\n\n"
      API_HELP },
    { "events", ctl_cmd_events,
      API_OPTS " from= to= action= app= customer= cert= user= limit= cursor= all", 0, 0,
      "events [--from TIME] [--to TIME] [--action A] [--app APP] [--customer ID]\n"
      "                   [--cert ID] [--user U] [--limit N] [--cursor C] [--all]",
      "The audit log, oldest first (role auditor): GET /events. TIME as for rotate. One\n"
      "page unless --all, which follows the cursor to the end; otherwise the next page's\n"
      "cursor is printed on stderr.\n\n" API_HELP },
    { "export", ctl_cmd_export, API_OPTS " app= customer= status= output=", 0, 0,
      "export [--app APP] [--customer ID] [--status S] [--output FILE]",
      "Write registrations with their certificates (GET /export) as JSON to FILE or\n"
      "stdout; a summary goes to stderr. The file is what import reads.\n\n" API_HELP },
    { "import", ctl_cmd_import, API_OPTS " dry-run keep-status batch=", 1, 1,
      "import FILE [--dry-run] [--keep-status] [--batch N]",
      "Register the items of FILE (an export, {\"items\":[...]}) in batches of N (default\n"
      "500) through POST /import; every record goes through the upload's checks. Prints\n"
      "one line per record. --dry-run writes nothing; --keep-status keeps statuses and\n"
      "windows (a manager without a customer only). Exit 4 when any record failed (the\n"
      "others are written); importing the same file again is harmless.\n\n" API_HELP },
    { "watch", ctl_cmd_watch, API_OPTS " old= quiet-for= timeout= interval=", 1, 1,
      "watch APP --old ID --quiet-for DURATION [--timeout DURATION] [--interval DURATION]",
      "Wait until the old certificate of a cutover has gone quiet: polls GET /apps/APP\n"
      "every --interval (default 10s) and exits 0 once the certificate ID has had no\n"
      "request for DURATION (usage.lastSeen; a certificate never seen counts from the\n"
      "start of the watch), 3 when --timeout passes first. Prints progress on stderr.\n"
      "DURATION: 90, 90s, 15m, 2h, 1d. Usage reaches the API every\n"
      "CertGateUsageFlushInterval (5 s): choose a quiet period well above it.\n\n" API_HELP },
    { "doctor", ctl_cmd_doctor,
      API_OPTS " redis= redis-user= redis-password-file= redis-db= prefix= max-skew=", 0, 0,
      "doctor [--url URL] [--redis ADDR] [--redis-user U] [--redis-password-file FILE]\n"
      "                   [--redis-db N] [--prefix P] [--max-skew DURATION]",
      "Check the installation, one line per check (OK, FAIL or SKIP, and what is wrong):\n"
      "the admin API answers GET /certs with the credentials given; its Date header is\n"
      "within --max-skew (default 2s) of this host's clock; Redis answers PING; it is a\n"
      "master (ROLE); a message published on {prefix}doctor comes back to a subscriber;\n"
      "Redis TIME is within --max-skew of this host's clock. Exit 1 when a check failed.\n\n"
      "Redis options (also from the config file or the environment):\n"
      "  --redis ADDR            host:port, or a unix socket path (CERTGATE_REDIS;\n"
      "                          default 127.0.0.1:6379)\n"
      "  --redis-user U          ACL user (CERTGATE_REDIS_USER)\n"
      "  --redis-password-file F file with the password (else CERTGATE_REDIS_PASSWORD or\n"
      "                          the config file's redis-password); never printed\n"
      "  --redis-db N            database (CERTGATE_REDIS_DB)\n"
      "  --prefix P              key prefix (CERTGATE_PREFIX; default certgate:)\n"
      "  --max-skew DURATION     clock difference that counts as wrong (default 2s)\n"
      "Without --url (or CERTGATE_URL) the admin API checks are skipped.\n\n" API_HELP },
};

#define NCMDS (sizeof(CMDS) / sizeof(CMDS[0]))

/* Settings a config file may hold (same names as the options). */
static const char *const CFG_KEYS[] = {
    "url", "credentials", "cacert", "capath", "cert", "key", "http-timeout", "redis",
    "redis-user", "redis-password", "redis-db", "prefix", "max-skew", "min-rsa-bits",
    "validity-days", "issuer-deny", "authorized-cas", "ev-only-new", "org",
};

static void main_help(FILE *f)
{
    fprintf(f,
        "usage: certgatectl COMMAND [ARGS] [OPTIONS]\n"
        "       certgatectl COMMAND --help\n\n"
        "Support tool for mod_certgate (version %s). Commands:\n", CG_VERSION);
    for (size_t i = 0; i < NCMDS; i++)
        fprintf(f, "  %s\n", CMDS[i].usage);
    fprintf(f,
        "\nexit codes: 0 ok; 1 error (network, server 5xx, unreadable file, doctor found a\n"
        "problem); 2 usage; 3 watch timed out; 4 refused (the API answered 4xx, the policy\n"
        "refused in inspect, or an import record failed).\n\n"
        "config file (--config FILE or CERTGATE_CONFIG): lines 'name = value', '#' comments;\n"
        "names as the long options: url, credentials, cacert, capath, cert, key,\n"
        "http-timeout, redis, redis-user, redis-password, redis-db, prefix, max-skew,\n"
        "min-rsa-bits, validity-days, issuer-deny (repeatable), authorized-cas,\n"
        "ev-only-new, org. Options win over the environment, the environment over the file.\n"
        "Manual: docs/certgatectl.md, man certgatectl.\n");
}

int ctl_usage_error(const ctl_args_t *a, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "certgatectl%s%s: ", a && a->cmd ? " " : "", a && a->cmd ? a->cmd : "");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, " (see certgatectl %s%s--help)\n", a && a->cmd ? a->cmd : "",
            a && a->cmd ? " " : "");
    return CTL_USAGE;
}

const char *ctl_opt(const ctl_args_t *a, const char *name)
{
    for (size_t i = a->n; i-- > 0;)
        if (strcmp(a->names[i], name) == 0)
            return a->vals[i];
    for (size_t i = a->ncfg; i-- > 0;)
        if (strcmp(a->cfg_names[i], name) == 0)
            return a->cfg_vals[i];
    return NULL;
}

const char *ctl_setting(const ctl_args_t *a, const char *name, const char *env)
{
    for (size_t i = a->n; i-- > 0;)
        if (strcmp(a->names[i], name) == 0)
            return a->vals[i];
    const char *e = env ? getenv(env) : NULL;
    if (e != NULL && *e != '\0')
        return e;
    for (size_t i = a->ncfg; i-- > 0;)
        if (strcmp(a->cfg_names[i], name) == 0)
            return a->cfg_vals[i];
    return NULL;
}

size_t ctl_opt_all(const ctl_args_t *a, const char *name, const char **out, size_t cap)
{
    size_t k = 0;
    for (size_t i = 0; i < a->n && k < cap; i++)
        if (strcmp(a->names[i], name) == 0)
            out[k++] = a->vals[i];
    for (size_t i = 0; k == 0 && i < a->ncfg && k < cap; i++)
        if (strcmp(a->cfg_names[i], name) == 0)
            out[k++] = a->cfg_vals[i];
    return k;
}

int ctl_flag(const ctl_args_t *a, const char *name)
{
    for (size_t i = 0; i < a->n; i++)
        if (strcmp(a->names[i], name) == 0)
            return 1;
    const char *v = ctl_opt(a, name);
    return v != NULL && (strcasecmp(v, "on") == 0 || strcasecmp(v, "yes") == 0 ||
                         strcasecmp(v, "true") == 0 || strcmp(v, "1") == 0);
}

int ctl_duration(const char *s, int64_t *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno != 0 || end == s || v < 0 || *s == '-' || *s == '+')
        return -1;
    int64_t mult = 1;
    if (*end == 's')
        end++;
    else if (*end == 'm' && (mult = 60))
        end++;
    else if (*end == 'h' && (mult = 3600))
        end++;
    else if (*end == 'd' && (mult = 86400))
        end++;
    if (*end != '\0' || v > INT64_MAX / mult / 2)
        return -1;
    *out = (int64_t)v * mult;
    return 0;
}

int ctl_time_arg(const char *s, int64_t now, int64_t *out)
{
    int64_t d;
    if (strcmp(s, "now") == 0) {
        *out = now;
        return 0;
    }
    if (s[0] == '+' && ctl_duration(s + 1, &d) == 0) {
        *out = now + d;
        return 0;
    }
    return cg_time_parse_iso(s, out);
}

unsigned char *ctl_read_file(const char *path, size_t max, size_t *len)
{
    FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
    if (f == NULL) {
        fprintf(stderr, "certgatectl: %s: %s\n", path, strerror(errno));
        return NULL;
    }
    size_t cap = 65536, n = 0;
    unsigned char *buf = malloc(cap + 1);
    while (buf != NULL) {
        if (n == cap) {
            unsigned char *nb = cap < max ? realloc(buf, (cap *= 2) + 1) : NULL;
            if (nb == NULL) {
                fprintf(stderr, "certgatectl: %s: %s\n", path,
                        cap >= max ? "file too large" : "out of memory");
                free(buf);
                buf = NULL;
                break;
            }
            buf = nb;
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0) {
            if (ferror(f)) {
                fprintf(stderr, "certgatectl: %s: read error\n", path);
                free(buf);
                buf = NULL;
            }
            break;
        }
    }
    if (f != stdin)
        fclose(f);
    if (buf != NULL) {
        buf[n] = '\0';
        *len = n;
    }
    return buf;
}

const char *ctl_js(json_t *obj, const char *key)
{
    json_t *v = json_object_get(obj, key);
    return json_is_string(v) ? json_string_value(v) : "-";
}

long long ctl_ji(json_t *obj, const char *key, long long dflt)
{
    json_t *v = json_object_get(obj, key);
    return json_is_integer(v) ? (long long)json_integer_value(v) : dflt;
}

void ctl_print_json(json_t *j)
{
    if (json_dumpf(j, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER) == 0)
        fputc('\n', stdout);
}

/* name = value lines; unknown names are an error (a typo must not pass unnoticed). */
static int load_config(ctl_args_t *a, const char *path)
{
    size_t len;
    unsigned char *buf = ctl_read_file(path, 1024 * 1024, &len);
    if (buf == NULL)
        return CTL_USAGE;
    int rc = CTL_OK;
    char *save = NULL;
    for (char *line = strtok_r((char *)buf, "\n", &save); line && rc == CTL_OK;
         line = strtok_r(NULL, "\n", &save)) {
        line += strspn(line, " \t");
        size_t l = strlen(line);
        while (l > 0 && strchr(" \t\r", line[l - 1]))
            line[--l] = '\0';
        if (*line == '\0' || *line == '#')
            continue;
        size_t kl = strcspn(line, " \t=");
        char *v = line + kl;
        v += strspn(v, " \t");
        if (*v == '=')
            v++;
        v += strspn(v, " \t");
        line[kl] = '\0';
        size_t k;
        for (k = 0; k < sizeof(CFG_KEYS) / sizeof(CFG_KEYS[0]); k++)
            if (strcmp(CFG_KEYS[k], line) == 0)
                break;
        if (k == sizeof(CFG_KEYS) / sizeof(CFG_KEYS[0])) {
            fprintf(stderr, "certgatectl: %s: unknown setting '%s'\n", path, line);
            rc = CTL_USAGE;
        } else if (a->ncfg == CTL_MAX_CFG) {
            fprintf(stderr, "certgatectl: %s: too many settings\n", path);
            rc = CTL_USAGE;
        } else if ((a->cfg_names[a->ncfg] = strdup(line)) == NULL ||
                   (a->cfg_vals[a->ncfg++] = strdup(v)) == NULL) {
            rc = CTL_ERR;
        }
    }
    free(buf);
    return rc;
}

/* Does the command take option name, and does it take a value? -1: unknown. */
static int takes(const cmd_t *c, const char *name, size_t len)
{
    const char *p = c->opts;
    while (*p) {
        size_t l = strcspn(p, " ");
        size_t nl = (l > 0 && p[l - 1] == '=') ? l - 1 : l;
        if (nl == len && strncmp(p, name, len) == 0)
            return nl != l;
        p += l;
        p += strspn(p, " ");
    }
    return -1;
}

static int parse(const cmd_t *c, ctl_args_t *a, int argc, char **argv, int *help)
{
    int opts_done = 0;
    for (int i = 2; i < argc; i++) {
        const char *s = argv[i];
        if (!opts_done && (strcmp(s, "--help") == 0 || strcmp(s, "-h") == 0)) {
            *help = 1;
            return CTL_OK;
        }
        if (!opts_done && strcmp(s, "--") == 0) {
            opts_done = 1;
            continue;
        }
        if (!opts_done && s[0] == '-' && s[1] == '-') {
            const char *name = s + 2, *eq = strchr(name, '=');
            size_t len = eq ? (size_t)(eq - name) : strlen(name);
            int t = takes(c, name, len);
            if (t < 0)
                return ctl_usage_error(a, "unknown option --%.*s", (int)len, name);
            if (a->n == CTL_MAX_OPTS)
                return ctl_usage_error(a, "too many options");
            const char *val = "";
            if (t && eq)
                val = eq + 1;
            else if (t && i + 1 < argc)
                val = argv[++i];
            else if (t)
                return ctl_usage_error(a, "--%.*s needs a value", (int)len, name);
            else if (eq)
                return ctl_usage_error(a, "--%.*s takes no value", (int)len, name);
            a->names[a->n] = strndup(name, len);
            if (a->names[a->n] == NULL)
                return CTL_ERR;
            a->vals[a->n++] = val;
            continue;
        }
        if (!opts_done && s[0] == '-' && s[1] != '\0')
            return ctl_usage_error(a, "unknown option %s", s);
        if (a->npos == CTL_MAX_POS)
            return ctl_usage_error(a, "too many arguments");
        a->pos[a->npos++] = s;
    }
    if ((int)a->npos < c->min_pos || (int)a->npos > c->max_pos)
        return ctl_usage_error(a, "usage: certgatectl %s", c->usage);
    return CTL_OK;
}

static void args_free(ctl_args_t *a)
{
    for (size_t i = 0; i < a->n; i++)
        free((char *)a->names[i]);
    for (size_t i = 0; i < a->ncfg; i++) {
        if (strcmp(a->cfg_names[i], "redis-password") == 0 && a->cfg_vals[i] != NULL)
            memset(a->cfg_vals[i], 0, strlen(a->cfg_vals[i]));
        free(a->cfg_names[i]);
        free(a->cfg_vals[i]);
    }
}

int main(int argc, char **argv)
{
    ctl_args_t a;
    memset(&a, 0, sizeof(a));
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0) {
        if (argc >= 3 && strcmp(argv[1], "help") == 0) {
            for (size_t i = 0; i < NCMDS; i++)
                if (strcmp(CMDS[i].name, argv[2]) == 0) {
                    printf("usage: certgatectl %s\n\n%s", CMDS[i].usage, CMDS[i].help);
                    return CTL_OK;
                }
        }
        main_help(argc < 2 ? stderr : stdout);
        return argc < 2 ? CTL_USAGE : CTL_OK;
    }
    if (strcmp(argv[1], "--version") == 0) {
        printf("certgatectl %s\n", CG_VERSION);
        return CTL_OK;
    }
    const cmd_t *c = NULL;
    for (size_t i = 0; i < NCMDS; i++)
        if (strcmp(CMDS[i].name, argv[1]) == 0)
            c = &CMDS[i];
    if (c == NULL) {
        fprintf(stderr, "certgatectl: unknown command '%s' (see certgatectl --help)\n", argv[1]);
        return CTL_USAGE;
    }
    a.cmd = c->name;
    int help = 0;
    int rc = parse(c, &a, argc, argv, &help);
    if (rc == CTL_OK && help) {
        printf("usage: certgatectl %s\n\n%s", c->usage, c->help);
    } else if (rc == CTL_OK) {
        const char *cfg = ctl_setting(&a, "config", "CERTGATE_CONFIG");
        if (cfg != NULL && *cfg != '\0')
            rc = load_config(&a, cfg);
        a.json = ctl_flag(&a, "json");
        if (rc == CTL_OK)
            rc = c->run(&a);
    }
    args_free(&a);
    fflush(stdout);
    return rc;
}
