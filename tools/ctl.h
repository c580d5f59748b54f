/* certgatectl: shared declarations of the command-line tool (tools/). */
#ifndef CTL_H
#define CTL_H

#include <stddef.h>
#include <stdint.h>
#include <jansson.h>

/* Exit codes (docs/certgatectl.md, "Exit codes"). */
#define CTL_OK 0
#define CTL_ERR 1       /* network, server error (5xx), unreadable file, a doctor check failed */
#define CTL_USAGE 2     /* bad command line or config file */
#define CTL_TIMEOUT 3   /* watch: the old certificate did not go quiet in time */
#define CTL_REFUSED 4   /* the API answered 4xx, the policy refused (inspect), an import record failed */

#define CTL_MAX_OPTS 64
#define CTL_MAX_POS 64
#define CTL_MAX_CFG 64

typedef struct {
    const char *cmd;
    const char *names[CTL_MAX_OPTS];    /* options given, in order */
    const char *vals[CTL_MAX_OPTS];     /* their values ("" for a flag) */
    size_t n;
    const char *pos[CTL_MAX_POS];       /* positional arguments */
    size_t npos;
    char *cfg_names[CTL_MAX_CFG];       /* from the config file */
    char *cfg_vals[CTL_MAX_CFG];
    size_t ncfg;
    int json;
} ctl_args_t;

/* The last value of --name, else the config file's, else NULL. */
const char *ctl_opt(const ctl_args_t *a, const char *name);
/* --name, else the environment variable env (may be NULL), else the config file. */
const char *ctl_setting(const ctl_args_t *a, const char *name, const char *env);
/* Every value of a repeatable option (flags if any were given, else the config file's). */
size_t ctl_opt_all(const ctl_args_t *a, const char *name, const char **out, size_t cap);
/* An on/off flag: given on the command line, or "on"/"yes"/"true"/"1" in the config file. */
int ctl_flag(const ctl_args_t *a, const char *name);

/* "90", "90s", "5m", "2h", "1d" to seconds. 0 on success. */
int ctl_duration(const char *s, int64_t *out);
/* "now", "+DURATION" or ISO 8601 UTC to epoch seconds. 0 on success. */
int ctl_time_arg(const char *s, int64_t now, int64_t *out);
/* Read a whole file (at most max bytes). NULL with a message on stderr. */
unsigned char *ctl_read_file(const char *path, size_t max, size_t *len);

/*
 * Read certificates as an upload does (tools/ctl_inspect.c): each path in turn,
 * a repeated certificate once, a PKCS#7 bundle ordered leaf first. CTL_OK with
 * *out (free with sk_X509_pop_free); CTL_REFUSED with *code and msg when the
 * files do not hold a readable chain; CTL_ERR when a file cannot be read.
 */
struct stack_st_X509;
int ctl_read_certs(const char *const *paths, size_t n, struct stack_st_X509 **out,
                   const char **code, char *msg, size_t cap);

/* JSON helpers for printing: a member as text ("-" when absent or null). */
const char *ctl_js(json_t *obj, const char *key);
long long ctl_ji(json_t *obj, const char *key, long long dflt);
/* Print j to stdout, indented, with a newline. */
void ctl_print_json(json_t *j);

/* The commands (tools/ctl_*.c). Each returns an exit code. */
int ctl_cmd_inspect(ctl_args_t *a);
int ctl_cmd_status(ctl_args_t *a);
int ctl_cmd_list(ctl_args_t *a);
int ctl_cmd_upload(ctl_args_t *a);
int ctl_cmd_transition(ctl_args_t *a);
int ctl_cmd_rotate(ctl_args_t *a);
int ctl_cmd_events(ctl_args_t *a);
int ctl_cmd_export(ctl_args_t *a);
int ctl_cmd_import(ctl_args_t *a);
int ctl_cmd_watch(ctl_args_t *a);
int ctl_cmd_doctor(ctl_args_t *a);

/* Print "certgatectl CMD: msg" to stderr; returns CTL_USAGE. */
int ctl_usage_error(const ctl_args_t *a, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#endif
