/* Unit tests of the core: decisions, chains, windows, records, fingerprints. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>
#include <hiredis/hiredis.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <openssl/evp.h>

#include "cg_cert.h"
#include "cg_decide.h"
#include "cg_fp.h"
#include "cg_gate.h"
#include "cg_reg.h"
#include "cg_admin.h"
#include "cg_cache.h"
#include "cg_metrics.h"
#include "cg_sub.h"
#include "cg_usage.h"
#include "cg_store.h"
#include "cg_tls.h"
#include "cg_sentinel.h"
#include <pthread.h>

#define NOW 1750000000  /* 2025-06-15 */

static cg_fp_t fp_of(unsigned char seed)
{
    cg_fp_t f;
    memset(f.b, seed, sizeof(f.b));
    return f;
}

/* An approved registration valid around NOW with a two-element chain. */
static cg_reg_t approved(void)
{
    cg_reg_t r;
    memset(&r, 0, sizeof(r));
    strcpy(r.id, "reg-1");
    strcpy(r.app_id, "app1");
    r.status = CG_STATUS_APPROVED;
    r.fingerprint = fp_of(1);
    r.chain[0] = fp_of(2);
    r.chain[1] = fp_of(3);
    r.chain_len = 2;
    r.valid_from = NOW - 86400;
    r.valid_to = NOW + 86400 * 10;
    r.activate_at = CG_TIME_UNSET;
    r.retire_at = CG_TIME_UNSET;
    return r;
}

typedef struct {
    cg_reg_t reg;
    cg_fp_t leaf;
    cg_fp_t chain[CG_MAX_CHAIN + 1];
    cg_input_t in;
} fixture_t;

static fixture_t fx(void)
{
    fixture_t f;
    memset(&f, 0, sizeof(f));
    f.reg = approved();
    f.leaf = fp_of(1);
    f.chain[0] = fp_of(2);
    f.chain[1] = fp_of(3);
    return f;
}

/* Point the input at the fixture's own storage (after any copy). */
static cg_reason_t decide(fixture_t *f, size_t chain_len)
{
    f->in.leaf = &f->leaf;
    f->in.chain = f->chain;
    f->in.chain_len = chain_len;
    f->in.chain_known = 1;
    f->in.now = f->in.now ? f->in.now : NOW;
    f->in.reg = &f->reg;
    return cg_decide(&f->in);
}

static void test_allow(void **state)
{
    (void)state;
    fixture_t f = fx();
    assert_int_equal(decide(&f, 2), CG_ALLOW);
    assert_string_equal(cg_reason_name(CG_ALLOW), "allow");
    assert_int_equal(cg_reason_http_status(CG_ALLOW), 200);
}

static void test_no_client_cert(void **state)
{
    (void)state;
    fixture_t f = fx();
    decide(&f, 2);
    f.in.leaf = NULL;
    assert_int_equal(cg_decide(&f.in), CG_R_NO_CLIENT_CERT);
}

static void test_unregistered(void **state)
{
    (void)state;
    fixture_t f = fx();
    decide(&f, 2);
    f.in.reg = NULL;
    assert_int_equal(cg_decide(&f.in), CG_R_UNREGISTERED);
    /* A record for another leaf (stale index) never admits. */
    f = fx();
    f.reg.fingerprint = fp_of(9);
    assert_int_equal(decide(&f, 2), CG_R_UNREGISTERED);
}

static void test_statuses(void **state)
{
    (void)state;
    const struct { cg_status_t s; cg_reason_t r; } cases[] = {
        { CG_STATUS_PENDING, CG_R_PENDING },
        { CG_STATUS_DECLINED, CG_R_DECLINED },
        { CG_STATUS_INACTIVATED, CG_R_INACTIVATED },
        { CG_STATUS_APPROVED, CG_ALLOW },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        fixture_t f = fx();
        f.reg.status = cases[i].s;
        assert_int_equal(decide(&f, 2), cases[i].r);
    }
}

static void test_validity_edges(void **state)
{
    (void)state;
    fixture_t f = fx();
    f.in.now = f.reg.valid_from;            /* notBefore is inclusive */
    assert_int_equal(decide(&f, 2), CG_ALLOW);
    f.in.now = f.reg.valid_from - 1;
    assert_int_equal(decide(&f, 2), CG_R_NOT_YET_VALID);
    f.in.now = f.reg.valid_to;              /* notAfter is inclusive */
    assert_int_equal(decide(&f, 2), CG_ALLOW);
    f.in.now = f.reg.valid_to + 1;
    assert_int_equal(decide(&f, 2), CG_R_EXPIRED);
}

static void test_window_edges(void **state)
{
    (void)state;
    fixture_t f = fx();
    f.reg.activate_at = NOW;
    f.reg.retire_at = NOW + 100;
    f.in.now = NOW - 1;
    assert_int_equal(decide(&f, 2), CG_R_NOT_YET_ACTIVE);
    f.in.now = NOW;                          /* exactly at activate_at: active */
    assert_int_equal(decide(&f, 2), CG_ALLOW);
    f.in.now = NOW + 99;
    assert_int_equal(decide(&f, 2), CG_ALLOW);
    f.in.now = NOW + 100;                    /* exactly at retire_at: retired */
    assert_int_equal(decide(&f, 2), CG_R_RETIRED);
    /* Open ends. */
    f.reg.activate_at = CG_TIME_UNSET;
    f.in.now = NOW - 50;
    assert_int_equal(decide(&f, 2), CG_ALLOW);
    f.reg.retire_at = CG_TIME_UNSET;
    f.reg.activate_at = NOW;
    f.in.now = NOW + 86400 * 5;
    assert_int_equal(decide(&f, 2), CG_ALLOW);
}

static void test_app_mismatch(void **state)
{
    (void)state;
    fixture_t f = fx();
    f.in.app = "app1";
    assert_int_equal(decide(&f, 2), CG_ALLOW);
    f.in.app = "app2";
    assert_int_equal(decide(&f, 2), CG_R_APP_MISMATCH);
    f.in.app = "";
    assert_int_equal(decide(&f, 2), CG_R_APP_MISMATCH);
    f.in.app = "APP1";                       /* ids are case-sensitive */
    assert_int_equal(decide(&f, 2), CG_R_APP_MISMATCH);
}

static void test_app_ambiguous(void **state)
{
    (void)state;
    fixture_t f = fx();
    f.in.app = "app1";
    f.in.app_ambiguous = 1;
    /* Before everything else: no certificate, no registration needed. */
    assert_int_equal(decide(&f, 2), CG_R_APP_AMBIGUOUS);
    f.in.leaf = NULL;
    f.in.reg = NULL;
    assert_int_equal(cg_decide(&f.in), CG_R_APP_AMBIGUOUS);
    assert_int_equal(cg_reason_http_status(CG_R_APP_AMBIGUOUS), 403);
    assert_string_equal(cg_reason_name(CG_R_APP_AMBIGUOUS), "app_ambiguous");
    assert_true(cg_app_value_is_list("app2, app1", 10));
    assert_true(cg_app_value_is_list(",", 1));
    assert_false(cg_app_value_is_list("app1", 4));
    assert_false(cg_app_value_is_list("app1,x", 4));    /* bounded by len */
    assert_false(cg_app_value_is_list(NULL, 0));
}

static void test_header_name_same(void **state)
{
    (void)state;
    assert_true(cg_header_name_same("Client-Cert", 11, "client_cert", 11));
    assert_true(cg_header_name_same("CLIENT_CERT", 11, "Client-Cert", 11));
    assert_true(cg_header_name_same("X_App-id", 8, "X-App-Id", 8));
    assert_false(cg_header_name_same("Client-Cert", 11, "Client-Cert-Chain", 17));
    assert_false(cg_header_name_same("Client.Cert", 11, "Client-Cert", 11));
    assert_false(cg_header_name_same("ClientCert", 10, "Client-Cer", 10));
    assert_false(cg_header_name_same(NULL, 0, "x", 1));
}

static void test_metrics_count_app_ambiguous(void **state)
{
    (void)state;
    cg_metrics_t m;
    cg_metrics_init(&m);
    cg_metrics_decision(&m, CG_R_APP_AMBIGUOUS);
    cg_store_stats_t st = { .ok = 1 };
    char *t = cg_metrics_render(&m, &st);
    assert_non_null(t);
    assert_non_null(strstr(t, "certgate_decisions_total{result=\"deny\",reason=\"app_ambiguous\"} 1\n"));
    free(t);
}

static void test_chain_rules(void **state)
{
    (void)state;
    fixture_t f = fx();
    assert_int_equal(decide(&f, 2), CG_ALLOW);          /* exact */
    assert_int_equal(decide(&f, 1), CG_ALLOW);          /* root left out */
    assert_int_equal(decide(&f, 0), CG_R_CHAIN_MISMATCH); /* intermediate left out */
    f.chain[2] = fp_of(4);
    assert_int_equal(decide(&f, 3), CG_R_CHAIN_MISMATCH); /* extra element */
    f = fx();
    f.chain[0] = fp_of(3);
    f.chain[1] = fp_of(2);
    assert_int_equal(decide(&f, 2), CG_R_CHAIN_MISMATCH); /* wrong order */
    f = fx();
    f.chain[1] = fp_of(7);
    assert_int_equal(decide(&f, 2), CG_R_CHAIN_MISMATCH); /* other root */
    assert_int_equal(decide(&f, 1), CG_ALLOW);            /* ...unless left out */
    /* Self-signed leaf: nothing registered above it. */
    f = fx();
    f.reg.chain_len = 0;
    assert_int_equal(decide(&f, 0), CG_ALLOW);
    assert_int_equal(decide(&f, 1), CG_R_CHAIN_MISMATCH);
    /* Chain unknown (resumed session without a record). */
    f = fx();
    decide(&f, 2);
    f.in.chain_known = 0;
    assert_int_equal(cg_decide(&f.in), CG_R_CHAIN_MISMATCH);
    f.reg.chain_len = 0;
    assert_int_equal(cg_decide(&f.in), CG_ALLOW);
    /* TLS-layer verification failure is never overridden by a registration. */
    f = fx();
    f.in.verify_failed = 1;
    assert_int_equal(decide(&f, 2), CG_R_CHAIN_MISMATCH);
}

static void test_check_order(void **state)
{
    (void)state;
    /* app before status: another app's pending cert reads app_mismatch. */
    fixture_t f = fx();
    f.reg.status = CG_STATUS_PENDING;
    f.in.app = "app2";
    assert_int_equal(decide(&f, 2), CG_R_APP_MISMATCH);
    /* status before validity, validity before window, window before chain. */
    f = fx();
    f.reg.status = CG_STATUS_DECLINED;
    f.in.now = f.reg.valid_to + 5;
    assert_int_equal(decide(&f, 2), CG_R_DECLINED);
    f = fx();
    f.reg.retire_at = NOW - 1;
    f.in.now = f.reg.valid_to + 5;
    assert_int_equal(decide(&f, 2), CG_R_EXPIRED);
    f = fx();
    f.reg.retire_at = NOW - 1;
    assert_int_equal(decide(&f, 0), CG_R_RETIRED);
}

static void test_reason_names_and_status(void **state)
{
    (void)state;
    const char *expect[] = { "allow", "no_client_cert", "unregistered", "pending", "declined",
                             "inactivated", "expired", "not_yet_valid", "not_yet_active",
                             "retired", "chain_mismatch", "app_mismatch", "store_unavailable",
                             "app_ambiguous" };
    assert_int_equal(sizeof(expect) / sizeof(expect[0]), CG_R__COUNT);
    for (int i = 0; i < CG_R__COUNT; i++) {
        assert_string_equal(cg_reason_name((cg_reason_t)i), expect[i]);
        assert_non_null(cg_reason_message((cg_reason_t)i));
        assert_null(strchr(cg_reason_message((cg_reason_t)i), '"'));
        int st = cg_reason_http_status((cg_reason_t)i);
        assert_int_equal(st, i == 0 ? 200 : i == CG_R_STORE_UNAVAILABLE ? 503 : 403);
    }
    assert_string_equal(cg_reason_name(CG_R__COUNT), "unknown");
}

static void test_expire_in_days(void **state)
{
    (void)state;
    cg_reg_t r = approved();
    r.valid_to = NOW + 86400 * 3 + 5;
    assert_int_equal(cg_expire_in_days(&r, NOW), 3);
    r.valid_to = NOW + 86399;
    assert_int_equal(cg_expire_in_days(&r, NOW), 0);
    r.valid_to = NOW - 100;
    assert_int_equal(cg_expire_in_days(&r, NOW), 0);
}

static void test_hex(void **state)
{
    (void)state;
    cg_fp_t f = fp_of(0xab), g;
    char hex[CG_FP_HEX_LEN + 1];
    cg_fp_to_hex(&f, hex);
    assert_int_equal(strlen(hex), 64);
    assert_memory_equal(hex, "abababab", 8);
    assert_int_equal(cg_fp_from_hex(hex, 64, &g), 0);
    assert_true(cg_fp_eq(&f, &g));
    hex[5] = 'A';
    assert_int_equal(cg_fp_from_hex(hex, 64, &g), 0);   /* upper case accepted */
    hex[5] = 'g';
    assert_int_equal(cg_fp_from_hex(hex, 64, &g), -1);
    assert_int_equal(cg_fp_from_hex(hex, 63, &g), -1);
    assert_int_equal(cg_fp_from_hex(NULL, 64, &g), -1);
}

static void test_parse_i64(void **state)
{
    (void)state;
    int64_t v;
    assert_int_equal(cg_parse_i64("0", 1, &v), 0);
    assert_int_equal(v, 0);
    assert_int_equal(cg_parse_i64("1750000000", 10, &v), 0);
    assert_int_equal(v, 1750000000);
    assert_int_equal(cg_parse_i64("-5", 2, &v), 0);
    assert_int_equal(v, -5);
    assert_int_equal(cg_parse_i64("9223372036854775807", 19, &v), 0);
    assert_true(v == INT64_MAX);
    assert_int_equal(cg_parse_i64("-9223372036854775808", 20, &v), 0);
    assert_true(v == INT64_MIN);
    assert_int_equal(cg_parse_i64("9223372036854775808", 19, &v), -1);
    assert_int_equal(cg_parse_i64("", 0, &v), -1);
    assert_int_equal(cg_parse_i64("-", 1, &v), -1);
    assert_int_equal(cg_parse_i64("+1", 2, &v), -1);
    assert_int_equal(cg_parse_i64(" 1", 2, &v), -1);
    assert_int_equal(cg_parse_i64("1x", 2, &v), -1);
    assert_int_equal(cg_parse_i64("1.5", 3, &v), -1);
}

#define F(n, v) { n, sizeof(n) - 1, v, sizeof(v) - 1 }
static const char HEX1[] = "0101010101010101010101010101010101010101010101010101010101010101";

static void test_decode_record(void **state)
{
    (void)state;
    char chain[2 * 65];
    snprintf(chain, sizeof(chain), "%.64s,%.64s",
             "0202020202020202020202020202020202020202020202020202020202020202",
             "0303030303030303030303030303030303030303030303030303030303030303");
    cg_field_t fields[] = {
        F("id", "reg-1"), F("app_id", "app1"), F("customer_id", "c-9"),
        F("status", "APPROVED"), F("fingerprint", HEX1),
        { "chain", 5, chain, strlen(chain) },
        F("valid_from", "100"), F("valid_to", "200"), F("activate_at", ""),
        F("retire_at", "150"), F("common_name", "ignored: admin metadata"),
    };
    cg_reg_t r;
    char err[128];
    assert_int_equal(cg_reg_decode(fields, sizeof(fields) / sizeof(fields[0]), &r, err, sizeof(err)), 0);
    assert_string_equal(r.id, "reg-1");
    assert_string_equal(r.app_id, "app1");
    assert_string_equal(r.customer_id, "c-9");
    assert_int_equal(r.status, CG_STATUS_APPROVED);
    cg_fp_t one = fp_of(1), three = fp_of(3);
    assert_true(cg_fp_eq(&r.fingerprint, &one));
    assert_int_equal(r.chain_len, 2);
    assert_true(cg_fp_eq(&r.chain[1], &three));
    assert_true(r.valid_from == 100 && r.valid_to == 200);
    assert_true(r.activate_at == CG_TIME_UNSET);
    assert_true(r.retire_at == 150);
}

static void test_decode_rejects(void **state)
{
    (void)state;
    const cg_field_t base[] = {
        F("id", "reg-1"), F("app_id", "app1"), F("status", "APPROVED"),
        F("fingerprint", HEX1), F("valid_from", "100"), F("valid_to", "200"),
    };
    const size_t nb = sizeof(base) / sizeof(base[0]);
    cg_reg_t r;
    char err[128];

    /* Each required field missing in turn. */
    for (size_t skip = 0; skip < nb; skip++) {
        cg_field_t f[8];
        size_t n = 0;
        for (size_t i = 0; i < nb; i++)
            if (i != skip)
                f[n++] = base[i];
        assert_int_equal(cg_reg_decode(f, n, &r, err, sizeof(err)), -1);
        assert_non_null(strstr(err, "missing"));
    }
    /* Each bad value in turn. */
    const cg_field_t bad[] = {
        F("id", "a:b"), F("id", ""), F("id", "x*"), F("app_id", "a b"), F("app_id", "a\nb"),
        F("app_id", "app:*"), F("status", "approved"), F("status", "EXPIRED"),
        F("fingerprint", "0101"), F("valid_from", "soon"), F("valid_to", "1e9"),
        F("activate_at", "x"), F("retire_at", "-"), F("chain", "zz"),
        F("chain", "0101010101010101010101010101010101010101010101010101010101010101,"),
        F("customer_id", "a\x01"),
    };
    for (size_t b = 0; b < sizeof(bad) / sizeof(bad[0]); b++) {
        cg_field_t f[8];
        memcpy(f, base, sizeof(base));
        f[nb] = bad[b];
        assert_int_equal(cg_reg_decode(f, nb + 1, &r, err, sizeof(err)), -1);
        assert_non_null(strstr(err, "malformed registration"));
    }
    /* NUL inside a value. */
    cg_field_t f[8];
    memcpy(f, base, sizeof(base));
    f[nb] = (cg_field_t){ "app_id", 6, "ap\0p", 4 };
    assert_int_equal(cg_reg_decode(f, nb + 1, &r, err, sizeof(err)), -1);
    /* A chain longer than we keep. */
    char longchain[(CG_MAX_CHAIN + 1) * 65];
    size_t pos = 0;
    for (int i = 0; i < CG_MAX_CHAIN + 1; i++)
        pos += (size_t)snprintf(longchain + pos, sizeof(longchain) - pos, "%s%s", i ? "," : "", HEX1);
    f[nb] = (cg_field_t){ "chain", 5, longchain, pos };
    assert_int_equal(cg_reg_decode(f, nb + 1, &r, err, sizeof(err)), -1);
    /* Exactly CG_MAX_CHAIN is fine. */
    f[nb].value_len = (size_t)CG_MAX_CHAIN * 65 - 1;
    assert_int_equal(cg_reg_decode(f, nb + 1, &r, err, sizeof(err)), 0);
    assert_int_equal(r.chain_len, CG_MAX_CHAIN);
}

static void test_status_names(void **state)
{
    (void)state;
    cg_status_t s;
    const char *names[] = { "PENDING", "APPROVED", "DECLINED", "INACTIVATED" };
    for (int i = 0; i < 4; i++) {
        assert_int_equal(cg_status_parse(names[i], strlen(names[i]), &s), 0);
        assert_int_equal(s, i);
        assert_string_equal(cg_status_name(s), names[i]);
    }
    assert_int_equal(cg_status_parse("APPROVE", 7, &s), -1);
}

/* Fingerprints agree with `openssl x509 -outform DER | openssl dgst -sha256`. */
static void test_fingerprint_matches_openssl_cli(void **state)
{
    (void)state;
    char dir[] = "/tmp/cg-unit-XXXXXX";
    char cmd[1024], path[256], expect[65] = { 0 };
    assert_non_null(mkdtemp(dir));
    snprintf(cmd, sizeof(cmd),
             "cd %s && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes "
             "-keyout k.pem -out c.pem -subj /CN=unit -days 2 2>/dev/null && "
             "openssl x509 -in c.pem -outform DER -out c.der && "
             "openssl x509 -in c.pem -outform DER | openssl dgst -sha256 -r | cut -c1-64 > fp.txt",
             dir);
    assert_int_equal(system(cmd), 0);

    snprintf(path, sizeof(path), "%s/fp.txt", dir);
    FILE *fp = fopen(path, "r");
    assert_non_null(fp);
    assert_int_equal(fread(expect, 1, 64, fp), 64);
    fclose(fp);

    snprintf(path, sizeof(path), "%s/c.der", dir);
    unsigned char der[8192];
    fp = fopen(path, "rb");
    assert_non_null(fp);
    size_t n = fread(der, 1, sizeof(der), fp);
    fclose(fp);
    assert_true(n > 100);

    cg_fp_t a, b;
    char hex[65];
    assert_int_equal(cg_fp_der(der, n, &a), 0);
    cg_fp_to_hex(&a, hex);
    assert_string_equal(hex, expect);

    /* The TLS path hashes OpenSSL's decoded certificate: same answer. */
    snprintf(path, sizeof(path), "%s/c.pem", dir);
    fp = fopen(path, "r");
    assert_non_null(fp);
    X509 *x = PEM_read_X509(fp, NULL, NULL, NULL);
    fclose(fp);
    assert_non_null(x);
    assert_int_equal(cg_fp_x509(x, &b), 0);
    assert_true(cg_fp_eq(&a, &b));

    /* RFC 9440 value is the base64 of the same DER. */
    char b64[12000];
    assert_true(cg_x509_der_b64_size(x) <= sizeof(b64));
    int len = cg_x509_der_b64(x, b64, sizeof(b64));
    assert_int_equal((size_t)len, (n + 2) / 3 * 4);
    assert_int_equal(cg_x509_der_b64(x, b64, 10), -1);    /* too small: refused */
    X509_free(x);
    assert_int_equal(cg_fp_der(der, 0, &a), -1);

    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

static void test_store_config_checks(void **state)
{
    (void)state;
    char err[128];
    cg_store_cfg_t c = { .host = "127.0.0.1", .port = 6379, .prefix = "certgate:",
                         .timeout_ms = 200, .max_idle = 4 };
    assert_int_equal(cg_store_cfg_check(&c, err, sizeof(err)), 0);
    cg_store_cfg_t bad = c;
    bad.timeout_ms = 0;
    assert_int_equal(cg_store_cfg_check(&bad, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "timeout"));
    bad = c;
    bad.port = 70000;
    assert_int_equal(cg_store_cfg_check(&bad, err, sizeof(err)), -1);
    bad = c;
    bad.prefix = "has space";
    assert_int_equal(cg_store_cfg_check(&bad, err, sizeof(err)), -1);
    bad = c;
    bad.user = "gate";
    assert_int_equal(cg_store_cfg_check(&bad, err, sizeof(err)), -1);
    assert_null(cg_store_new(&bad, err, sizeof(err)));
}

/* Nothing listens on the port: the lookup fails fast and says so. */
static void test_store_unreachable_is_bounded(void **state)
{
    (void)state;
    char err[128] = "";
    cg_store_cfg_t c = { .host = "127.0.0.1", .port = 1, .prefix = "certgate:",
                         .timeout_ms = 150, .max_idle = 2, .password = "s3cret-pw" };
    cg_store_t *st = cg_store_new(&c, err, sizeof(err));
    assert_non_null(st);
    cg_reg_t r;
    cg_fp_t leaf = fp_of(1);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    assert_int_equal(cg_store_lookup(st, &leaf, &r, err, sizeof(err)), CG_STORE_CONN);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double ms = (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;
    assert_true(ms < 150 + 100);
    assert_non_null(strstr(err, "connect"));
    assert_null(strstr(err, "s3cret-pw"));
    cg_store_free(st);
}

static void test_cache_lru_bound_and_age(void **state)
{
    (void)state;
    cg_cache_t *c = cg_cache_new(2, 1000);
    assert_non_null(c);
    cg_reg_t r = approved(), out;
    cg_fp_t a = fp_of(0xa1), b = fp_of(0xb2), x = fp_of(0xc3);
    int found;
    int64_t fetched;
    uint64_t v = cg_cache_version(c);
    cg_cache_put(c, &a, 1, &r, 100, v);
    cg_cache_put(c, &b, 0, NULL, 100, v);          /* negative answers are cached too */
    assert_int_equal(cg_cache_get(c, &a, 150, &found, &out, &fetched), 1);   /* touch a */
    assert_int_equal(found, 1);
    assert_true(fetched == 100);
    assert_string_equal(out.id, "reg-1");
    cg_cache_put(c, &x, 1, &r, 200, v);            /* evicts b, the least recent */
    assert_int_equal(cg_cache_size(c), 2);
    assert_int_equal(cg_cache_get(c, &b, 210, &found, &out, &fetched), 0);
    assert_int_equal(cg_cache_get(c, &x, 210, &found, &out, &fetched), 1);
    /* Max age: at 1000 ms past the fetch the entry is gone. */
    assert_int_equal(cg_cache_get(c, &a, 1099, &found, &out, &fetched), 1);
    assert_int_equal(cg_cache_get(c, &a, 1100, &found, &out, &fetched), 0);
    cg_cache_stats_t st;
    cg_cache_stats(c, &st);
    assert_true(st.evictions == 1 && st.stale_drops == 1);
    cg_cache_free(c);
}

static void test_cache_invalidation_beats_a_racing_put(void **state)
{
    (void)state;
    cg_cache_t *c = cg_cache_new(8, 5000);
    cg_reg_t r = approved(), out;
    cg_fp_t a = fp_of(0xa1);
    int found;
    int64_t fetched;
    uint64_t v = cg_cache_version(c);              /* read before a store lookup */
    cg_cache_invalidate(c, &a);                    /* the admin write lands meanwhile */
    cg_cache_put(c, &a, 1, &r, 10, v);             /* the stale answer is not kept */
    assert_int_equal(cg_cache_get(c, &a, 20, &found, &out, &fetched), 0);
    v = cg_cache_version(c);
    cg_cache_put(c, &a, 1, &r, 10, v);
    assert_int_equal(cg_cache_get(c, &a, 20, &found, &out, &fetched), 1);
    cg_cache_flush(c);
    assert_int_equal(cg_cache_get(c, &a, 20, &found, &out, &fetched), 0);
    assert_true(cg_cache_version(c) > v);
    cg_cache_free(c);
}

static void test_metrics_render(void **state)
{
    (void)state;
    cg_metrics_t m;
    cg_metrics_init(&m);
    cg_metrics_decision(&m, CG_ALLOW);
    cg_metrics_decision(&m, CG_ALLOW);
    cg_metrics_decision(&m, CG_R_PENDING);
    cg_metrics_redis(&m, 300, 0);       /* bucket 0.0005 */
    cg_metrics_redis(&m, 300000, 2);    /* +Inf, a timeout */
    cg_metrics_invalidation(&m, 1200);
    cg_metrics_invalidation(&m, -1);    /* unknown lag: counted, not observed */
    cg_store_stats_t st = { .by_status = { 1, 2, 3, 4 }, .expired = 5,
                            .expiring = { 0, 1, 2 }, .ok = 1 };
    char *t = cg_metrics_render(&m, &st);
    assert_non_null(t);
    assert_non_null(strstr(t, "certgate_decisions_total{result=\"allow\",reason=\"allow\"} 2\n"));
    assert_non_null(strstr(t, "certgate_decisions_total{result=\"deny\",reason=\"pending\"} 1\n"));
    assert_non_null(strstr(t, "certgate_redis_lookups_total{outcome=\"timeout\"} 1\n"));
    assert_non_null(strstr(t, "certgate_redis_lookup_seconds_bucket{le=\"0.00025\"} 0\n"));
    assert_non_null(strstr(t, "certgate_redis_lookup_seconds_bucket{le=\"0.0005\"} 1\n"));
    assert_non_null(strstr(t, "certgate_redis_lookup_seconds_bucket{le=\"0.25\"} 1\n"));
    assert_non_null(strstr(t, "certgate_redis_lookup_seconds_bucket{le=\"+Inf\"} 2\n"));
    assert_non_null(strstr(t, "certgate_redis_lookup_seconds_count 2\n"));
    assert_non_null(strstr(t, "certgate_invalidations_total 2\n"));
    assert_non_null(strstr(t, "certgate_invalidation_lag_seconds_count 1\n"));
    assert_non_null(strstr(t, "certgate_registrations{status=\"INACTIVATED\"} 4\n"));
    assert_non_null(strstr(t, "certgate_registrations{status=\"EXPIRED\"} 5\n"));
    assert_non_null(strstr(t, "certgate_certificates_expiring{within_days=\"90\"} 2\n"));
    assert_non_null(strstr(t, "certgate_store_up 1\n"));
    free(t);
    st.ok = 0;
    t = cg_metrics_render(&m, &st);
    assert_null(strstr(t, "certgate_registrations{"));
    assert_non_null(strstr(t, "certgate_store_up 0\n"));
    free(t);
}

/* The lookup steps the async nginx client shares with the blocking store. */
static redisReply str_reply(int type, const char *s)
{
    redisReply r;
    memset(&r, 0, sizeof(r));
    r.type = type;
    r.str = (char *)s;
    r.len = s ? strlen(s) : 0;
    return r;
}

/* The per-connection answer: dropped by any invalidation, by age, by another leaf. */
static void test_conn_entry(void **state)
{
    (void)state;
    cg_cache_t *c = cg_cache_new(8, 5000);
    cg_reg_t r = approved(), out;
    cg_fp_t a = fp_of(0xa1), b = fp_of(0xb2);
    cg_conn_entry_t e;
    int found = -1;
    memset(&e, 0, sizeof(e));
    assert_int_equal(cg_conn_entry_get(&e, c, &a, 100, &found, &out), 0);
    cg_conn_entry_set(&e, &a, 1, &r, cg_cache_version(c), 100);
    assert_int_equal(cg_conn_entry_get(&e, c, &a, 200, &found, &out), 1);
    assert_int_equal(found, 1);
    assert_string_equal(out.app_id, r.app_id);
    assert_int_equal(cg_conn_entry_get(&e, c, &b, 200, &found, &out), 0);
    assert_int_equal(cg_conn_entry_get(&e, c, &a, 100 + 5000, &found, &out), 0);
    cg_cache_invalidate(c, &b);     /* any invalidation bumps the version */
    assert_int_equal(cg_conn_entry_get(&e, c, &a, 200, &found, &out), 0);
    cg_conn_entry_set(&e, &a, 0, NULL, cg_cache_version(c), 300);
    assert_int_equal(cg_conn_entry_get(&e, c, &a, 400, &found, &out), 1);
    assert_int_equal(found, 0);
    cg_cache_free(c);
}

/* ---- The gate sequence (src/cg_gate): cache protocol, fail-open, log lines. ---- */

static char gate_lines[16][1024];
static int gate_nlines;

static void gate_sink(void *ctx, int level, const char *msg)
{
    (void)ctx;
    (void)level;
    if (gate_nlines < 16)
        snprintf(gate_lines[gate_nlines++], sizeof(gate_lines[0]), "%s", msg);
}

/* The line the gate logged with this tag, or NULL. */
static const char *gate_line(const char *tag)
{
    for (int i = 0; i < gate_nlines; i++)
        if (strncmp(gate_lines[i], tag, strlen(tag)) == 0)
            return gate_lines[i];
    return NULL;
}

static cg_gate_t *gate_for_test(int cache_on)
{
    cg_gate_cfg_t cfg;
    cg_gate_cfg_defaults(&cfg);
    cfg.store.port = 1;             /* never used: replies are fed by hand */
    cfg.store.prefix = "p:";
    cfg.cache_on = cache_on;
    cfg.usage_interval_s = 0;
    cg_gate_set_log(gate_sink);
    gate_nlines = 0;
    cg_gate_t *g = cg_gate_new(&cfg, NULL, NULL);
    assert_non_null(g);
    return g;
}

typedef struct {
    cg_peer_t peer;
    cg_conn_entry_t conn;
    cg_gate_in_t in;
} gate_req_t;

static void gate_req(gate_req_t *q, unsigned char seed)
{
    memset(q, 0, sizeof(*q));
    q->peer.has_leaf = 1;
    q->peer.leaf = fp_of(seed);
    q->peer.chain_known = 1;
    q->in.peer = &q->peer;
    q->in.app = "app1";
    q->in.now = NOW;
    q->in.client = "192.0.2.7";
    q->in.conn = &q->conn;
}

/* Answer the three commands of a lookup as Redis would: registered (and
 * approved) or not registered at all. Returns the last step's result. */
static int gate_feed(cg_gate_t *g, cg_gate_lookup_t *lk, const cg_fp_t *leaf, int registered)
{
    char hex[CG_FP_HEX_LEN + 1], vf[24], vt[24];
    cg_fp_to_hex(leaf, hex);
    assert_int_equal(lk->argc, 2);
    assert_string_equal(lk->argv[0], "GET");
    assert_int_equal(lk->lens[1], strlen("p:fp:") + CG_FP_HEX_LEN);
    if (!registered) {
        redisReply nil = str_reply(REDIS_REPLY_NIL, NULL);
        return cg_gate_lookup_reply(g, lk, &nil, NULL);
    }
    redisReply id = str_reply(REDIS_REPLY_STRING, "r1");
    assert_int_equal(cg_gate_lookup_reply(g, lk, &id, NULL), 1);
    assert_string_equal(lk->argv[0], "HGETALL");
    assert_memory_equal(lk->argv[1], "p:reg:r1", lk->lens[1]);
    snprintf(vf, sizeof(vf), "%d", NOW - 86400);
    snprintf(vt, sizeof(vt), "%d", NOW + 86400 * 10 + 3600);
    const char *kv[] = { "id", "r1", "app_id", "app1", "status", "APPROVED", "fingerprint", hex,
                         "customer_id", "c1", "valid_from", vf, "valid_to", vt };
    redisReply el[14], *elp[14], arr;
    for (int i = 0; i < 14; i++) {
        el[i] = str_reply(REDIS_REPLY_STRING, kv[i]);
        elp[i] = &el[i];
    }
    memset(&arr, 0, sizeof(arr));
    arr.type = REDIS_REPLY_ARRAY;
    arr.elements = 14;
    arr.element = elp;
    assert_int_equal(cg_gate_lookup_reply(g, lk, &arr, NULL), 1);
    assert_int_equal(lk->argc, 3);
    assert_string_equal(lk->argv[0], "HGET");
    assert_string_equal(lk->argv[2], CG_LOOKUP_OWNER_FIELD);
    redisReply owner = str_reply(REDIS_REPLY_STRING, "c1");
    return cg_gate_lookup_reply(g, lk, &owner, NULL);
}

/* A miss, a lookup fed reply by reply, then the connection entry, then the
 * process cache answer; a generation bump drops the connection entry only. */
static void test_gate_cache_protocol(void **state)
{
    (void)state;
    cg_gate_t *g = gate_for_test(1);
    cg_metrics_t *m = cg_gate_metrics(g);
    gate_req_t q;
    cg_gate_lookup_t lk;
    cg_gate_verdict_t v;
    gate_req(&q, 0x11);

    assert_int_equal(cg_gate_begin(g, &q.in, &lk, &v), CG_GATE_LOOKUP);
    assert_int_equal(m->cache_misses, 1);
    assert_int_equal(gate_feed(g, &lk, &q.peer.leaf, 1), 0);
    assert_int_equal(lk.rc, CG_STORE_OK);
    cg_gate_finish(g, &q.in, &lk, &v);
    assert_int_equal(v.reason, CG_ALLOW);
    assert_true(v.pass && v.final && v.has_reg);
    assert_string_equal(v.reg.id, "r1");
    assert_string_equal(v.expire_in, "10");
    char hex[CG_FP_HEX_LEN + 1];
    cg_fp_to_hex(&q.peer.leaf, hex);
    assert_string_equal(v.fp_hex, hex);
    assert_int_equal(m->redis_ok, 1);
    assert_int_equal(m->decisions[CG_ALLOW], 1);
    const char *line = gate_line("CG01002: allow ");
    assert_non_null(line);
    assert_non_null(strstr(line, "client=192.0.2.7"));
    assert_true(q.conn.valid);

    /* The connection's entry answers while the generation holds. */
    assert_int_equal(cg_gate_begin(g, &q.in, &lk, &v), CG_GATE_DONE);
    assert_int_equal(v.reason, CG_ALLOW);
    assert_int_equal(m->cache_conn_hits, 1);

    /* Another connection: the process cache answers and fills its entry. */
    gate_req_t q2;
    gate_req(&q2, 0x11);
    assert_int_equal(cg_gate_begin(g, &q2.in, &lk, &v), CG_GATE_DONE);
    assert_int_equal(v.reason, CG_ALLOW);
    assert_int_equal(m->cache_proc_hits, 1);
    assert_true(q2.conn.valid);

    /* An invalidation of another leaf bumps the generation: the connection
     * entry no longer answers, the process cache still does. */
    cg_fp_t other = fp_of(0x99);
    cg_cache_invalidate(cg_gate_cache(g), &other);
    assert_int_equal(cg_gate_begin(g, &q.in, &lk, &v), CG_GATE_DONE);
    assert_int_equal(m->cache_conn_hits, 1);
    assert_int_equal(m->cache_proc_hits, 2);

    /* An invalidation of this leaf drops both: Redis is asked again. */
    cg_cache_invalidate(cg_gate_cache(g), &q.peer.leaf);
    assert_int_equal(cg_gate_begin(g, &q.in, &lk, &v), CG_GATE_LOOKUP);
    assert_int_equal(cg_gate_begin(g, &q2.in, &lk, &v), CG_GATE_LOOKUP);
    assert_int_equal(m->cache_misses, 3);
    cg_gate_free(g);
}

static int memo_locks;
static void memo_lock(void *arg, int on)
{
    (void)arg;
    (void)on;
    memo_locks++;
}

/* The connection's last allow is reused only while the second, the peer's
 * fill, the app, the entry and its cache version are the same. */
static void test_gate_memo(void **state)
{
    (void)state;
    cg_gate_t *g = gate_for_test(1);
    cg_metrics_t *m = cg_gate_metrics(g);
    gate_req_t q;
    cg_gate_lookup_t lk;
    cg_gate_verdict_t v;
    char hex[CG_FP_HEX_LEN + 1];
    gate_req(&q, 0x21);
    q.peer.gen = 7;
    cg_fp_to_hex(&q.peer.leaf, hex);

    assert_int_equal(cg_gate_begin(g, &q.in, &lk, &v), CG_GATE_LOOKUP);
    assert_int_equal(gate_feed(g, &lk, &q.peer.leaf, 1), 0);
    cg_gate_finish(g, &q.in, &lk, &v);
    assert_int_equal(v.reason, CG_ALLOW);
    assert_int_equal(v.conn_gen, 0);            /* decided on the lookup's copy */
    /* Decided on the entry, then from the memo: the same verdict. */
    for (int i = 0; i < 2; i++) {
        gate_nlines = 0;
        assert_int_equal(cg_gate_begin(g, &q.in, &lk, &v), CG_GATE_DONE);
        assert_int_equal(v.reason, CG_ALLOW);
        assert_true(v.pass && v.final && v.has_reg && !v.would_deny);
        assert_ptr_equal(v.regp, &q.conn.reg);
        assert_int_equal(v.conn_gen, q.conn.gen);
        assert_string_equal(v.expire_in, "10");
        assert_string_equal(v.fp_hex, hex);
        assert_non_null(gate_line("CG01002: allow app=app1 cert=r1 "));
    }
    assert_true(q.conn.memo);
    assert_int_equal(m->decisions[CG_ALLOW], 3);
    assert_int_equal(m->cache_conn_hits, 2);

    /* Another app named: decided again. */
    q.in.app = "app2";
    assert_int_equal(cg_gate_begin(g, &q.in, &lk, &v), CG_GATE_DONE);
    assert_int_equal(v.reason, CG_R_APP_MISMATCH);
    q.in.app = NULL;
    assert_int_equal(cg_gate_begin(g, &q.in, &lk, &v), CG_GATE_DONE);
    assert_int_equal(v.reason, CG_ALLOW);
    q.in.app = "app1";
    assert_int_equal(cg_gate_begin(g, &q.in, &lk, &v), CG_GATE_DONE);
    assert_int_equal(v.reason, CG_ALLOW);
    q.in.app_ambiguous = 1;
    assert_int_equal(cg_gate_begin(g, &q.in, &lk, &v), CG_GATE_DONE);
    assert_int_equal(v.reason, CG_R_APP_AMBIGUOUS);
    q.in.app_ambiguous = 0;
    q.in.cert_only = 1;
    assert_int_equal(cg_gate_begin(g, &q.in, &lk, &v), CG_GATE_DONE);
    assert_int_equal(v.final, 0);
    q.in.cert_only = 0;

    /* Another second: the validity is checked again (here: it has just ended). */
    assert_int_equal(cg_gate_begin(g, &q.in, &lk, &v), CG_GATE_DONE);
    assert_int_equal(v.reason, CG_ALLOW);
    q.in.now = NOW + 86400 * 10 + 3601;
    assert_int_equal(cg_gate_begin(g, &q.in, &lk, &v), CG_GATE_DONE);
    assert_int_equal(v.reason, CG_R_EXPIRED);
    q.in.now = NOW + 86400;                     /* a day later: one day fewer left */
    assert_int_equal(cg_gate_begin(g, &q.in, &lk, &v), CG_GATE_DONE);
    assert_string_equal(v.expire_in, "9");

    /* The peer filled again (a renegotiation): its chain is checked again. */
    assert_int_equal(cg_gate_begin(g, &q.in, &lk, &v), CG_GATE_DONE);
    assert_int_equal(v.reason, CG_ALLOW);
    q.peer.gen = 8;
    q.peer.verify_failed = 1;
    assert_int_equal(cg_gate_begin(g, &q.in, &lk, &v), CG_GATE_DONE);
    assert_int_equal(v.reason, CG_R_CHAIN_MISMATCH);
    q.peer.verify_failed = 0;
    assert_int_equal(cg_gate_begin(g, &q.in, &lk, &v), CG_GATE_DONE);
    assert_int_equal(v.reason, CG_ALLOW);

    /* A shared entry (HTTP/2 streams, with a lock) never uses the memo. */
    memo_locks = 0;
    q.in.lock = memo_lock;
    assert_int_equal(cg_gate_begin(g, &q.in, &lk, &v), CG_GATE_DONE);
    assert_int_equal(v.reason, CG_ALLOW);
    assert_int_equal(memo_locks, 2);
    q.in.lock = NULL;
    uint64_t hits = m->cache_proc_hits;
    cg_fp_t other = fp_of(0x98);
    cg_cache_invalidate(cg_gate_cache(g), &other);      /* version bump: entry and memo out */
    assert_int_equal(cg_gate_begin(g, &q.in, &lk, &v), CG_GATE_DONE);
    assert_int_equal(v.reason, CG_ALLOW);
    assert_int_equal(m->cache_proc_hits, hits + 1);
    /* An invalidation of this leaf: Redis is asked, whatever the memo said. */
    assert_int_equal(cg_gate_begin(g, &q.in, &lk, &v), CG_GATE_DONE);
    cg_cache_invalidate(cg_gate_cache(g), &q.peer.leaf);
    assert_int_equal(cg_gate_begin(g, &q.in, &lk, &v), CG_GATE_LOOKUP);
    cg_gate_free(g);
}

/* An answer is trusted for the max age at most, from when its lookup began. */
static void test_gate_max_age(void **state)
{
    (void)state;
    cg_gate_t *g = gate_for_test(1);
    gate_req_t q;
    cg_gate_lookup_t lk;
    cg_gate_verdict_t v;
    gate_req(&q, 0x12);
    assert_int_equal(cg_gate_begin(g, &q.in, &lk, &v), CG_GATE_LOOKUP);
    assert_int_equal(gate_feed(g, &lk, &q.peer.leaf, 0), 0);
    assert_int_equal(lk.rc, CG_STORE_NOTFOUND);
    lk.started_ms -= CG_GATE_CACHE_MAX_AGE_DEFAULT * 1000 + 1;   /* a lookup that began too long ago */
    cg_gate_finish(g, &q.in, &lk, &v);
    assert_int_equal(v.reason, CG_R_UNREGISTERED);
    assert_non_null(gate_line("CG01001: deny reason=unregistered "));
    assert_int_equal(cg_gate_begin(g, &q.in, &lk, &v), CG_GATE_LOOKUP);

    /* Fresh: a negative answer is cached like a positive one. */
    assert_int_equal(gate_feed(g, &lk, &q.peer.leaf, 0), 0);
    cg_gate_finish(g, &q.in, &lk, &v);
    assert_int_equal(cg_gate_begin(g, &q.in, &lk, &v), CG_GATE_DONE);
    assert_int_equal(v.reason, CG_R_UNREGISTERED);
    cg_gate_free(g);
}

/* An invalidation that arrives while a lookup is in flight: its answer may
 * be stale and is not cached. */
static void test_gate_invalidation_during_lookup(void **state)
{
    (void)state;
    cg_gate_t *g = gate_for_test(1);
    gate_req_t q;
    cg_gate_lookup_t lk;
    cg_gate_verdict_t v;
    gate_req(&q, 0x13);
    assert_int_equal(cg_gate_begin(g, &q.in, &lk, &v), CG_GATE_LOOKUP);
    cg_cache_invalidate(cg_gate_cache(g), &q.peer.leaf);
    assert_int_equal(gate_feed(g, &lk, &q.peer.leaf, 1), 0);
    cg_gate_finish(g, &q.in, &lk, &v);
    assert_int_equal(v.reason, CG_ALLOW);
    assert_int_equal(cg_gate_begin(g, &q.in, &lk, &v), CG_GATE_LOOKUP);
    cg_gate_free(g);
}

/* Every store failure kind: 503 with its own tag, or FAIL-OPEN; never cached. */
static void test_gate_store_errors(void **state)
{
    (void)state;
    const struct {
        cg_store_rc_t rc;
        const char *tag;
    } kinds[] = {
        { CG_STORE_ERROR, "CG02001: " }, { CG_STORE_CONN, "CG02001: " },
        { CG_STORE_CORRUPT, "CG02003: " }, { CG_STORE_TIMEOUT, "CG02004: " },
        { CG_STORE_PERM, "CG02005: " },
    };
    for (int open = 0; open < 2; open++) {
        for (size_t k = 0; k < sizeof(kinds) / sizeof(kinds[0]); k++) {
            cg_gate_t *g = gate_for_test(1);
            cg_metrics_t *m = cg_gate_metrics(g);
            gate_req_t q;
            cg_gate_lookup_t lk;
            cg_gate_verdict_t v;
            gate_req(&q, 0x14);
            q.in.fail_open = open;
            assert_int_equal(cg_gate_begin(g, &q.in, &lk, &v), CG_GATE_LOOKUP);
            cg_gate_lookup_fail(&lk, kinds[k].rc, "boom");
            cg_gate_finish(g, &q.in, &lk, &v);
            assert_int_equal(v.reason, CG_R_STORE_UNAVAILABLE);
            assert_int_equal(v.pass, open);
            const char *line = gate_line(open ? "CG02002: FAIL-OPEN" : kinds[k].tag);
            assert_non_null(line);
            assert_non_null(strstr(line, cg_store_rc_name(kinds[k].rc)));
            assert_non_null(strstr(line, "client=192.0.2.7"));
            assert_int_equal(gate_nlines, 1);
            assert_int_equal(m->decisions[CG_R_STORE_UNAVAILABLE], open ? 0 : 1);
            assert_int_equal(m->redis_ok, 0);
            assert_false(q.conn.valid);
            assert_int_equal(cg_gate_begin(g, &q.in, &lk, &v), CG_GATE_LOOKUP);
            cg_gate_free(g);
        }
    }
    /* Error replies keep their kind through the reply step, a lost connection too. */
    cg_gate_t *g = gate_for_test(0);
    gate_req_t q;
    cg_gate_lookup_t lk;
    cg_gate_verdict_t v;
    gate_req(&q, 0x15);
    redisReply noperm = str_reply(REDIS_REPLY_ERROR, "NOPERM no permissions to run 'get'");
    assert_int_equal(cg_gate_begin(g, &q.in, &lk, &v), CG_GATE_LOOKUP);
    assert_int_equal(cg_gate_lookup_reply(g, &lk, &noperm, NULL), 0);
    assert_int_equal(lk.rc, CG_STORE_PERM);
    assert_int_equal(cg_gate_begin(g, &q.in, &lk, &v), CG_GATE_LOOKUP);
    assert_int_equal(cg_gate_lookup_reply(g, &lk, NULL, "reset"), 0);
    assert_int_equal(lk.rc, CG_STORE_CONN);
    assert_non_null(strstr(lk.err, "reset"));
    cg_gate_finish(g, &q.in, &lk, &v);
    assert_int_equal(cg_gate_metrics(g)->redis_conn, 1);
    /* Without a cache nothing is counted as a cache hit or miss. */
    assert_int_equal(cg_gate_metrics(g)->cache_misses, 0);
    cg_gate_free(g);
}

/* No lookup without a leaf or with an ambiguous app; a cert-only allow is not
 * final and counts nothing; the app is then checked on the same answer. */
static void test_gate_no_lookup_and_cert_only(void **state)
{
    (void)state;
    cg_gate_t *g = gate_for_test(1);
    cg_metrics_t *m = cg_gate_metrics(g);
    gate_req_t q;
    cg_gate_lookup_t lk;
    cg_gate_verdict_t v;
    gate_req(&q, 0x16);
    q.in.app_ambiguous = 1;
    q.in.app = "a, b\x01";
    assert_int_equal(cg_gate_begin(g, &q.in, &lk, &v), CG_GATE_DONE);
    assert_int_equal(v.reason, CG_R_APP_AMBIGUOUS);
    assert_string_equal(v.fp_hex, "-");
    const char *line = gate_line("CG01001: deny reason=app_ambiguous fingerprint=- ");
    assert_non_null(line);
    /* No registration: app=-; what the request named, escaped, one token. */
    assert_non_null(strstr(line, "app=- asked=a,\\x20b\\x01 "));
    q.in.peer = NULL;
    q.in.app_ambiguous = 0;
    assert_int_equal(cg_gate_begin(g, &q.in, &lk, &v), CG_GATE_DONE);
    assert_int_equal(v.reason, CG_R_NO_CLIENT_CERT);
    assert_int_equal(m->cache_misses, 0);

    gate_req(&q, 0x16);
    q.in.app = NULL;
    q.in.cert_only = 1;
    assert_int_equal(cg_gate_begin(g, &q.in, &lk, &v), CG_GATE_LOOKUP);
    assert_int_equal(gate_feed(g, &lk, &q.peer.leaf, 1), 0);
    gate_nlines = 0;
    cg_gate_finish(g, &q.in, &lk, &v);
    assert_int_equal(v.reason, CG_ALLOW);
    assert_true(v.pass);
    assert_false(v.final);
    assert_int_equal(gate_nlines, 0);
    assert_int_equal(m->decisions[CG_ALLOW], 0);
    cg_reg_t reg = v.reg;
    q.in.cert_only = 0;
    q.in.app = "app2";
    cg_gate_decide(g, &q.in, CG_STORE_OK, &reg, NULL, &v);
    assert_int_equal(v.reason, CG_R_APP_MISMATCH);
    assert_int_equal(m->decisions[CG_R_APP_MISMATCH], 1);
    cg_gate_free(g);
}

/* Shadow mode: every deny passes, is counted as would_deny besides the
 * decision and logged CG01010 (not CG01001); an allow is an allow. */
static void test_gate_shadow(void **state)
{
    (void)state;
    cg_gate_t *g = gate_for_test(1);
    cg_metrics_t *m = cg_gate_metrics(g);
    gate_req_t q;
    cg_gate_lookup_t lk;
    cg_gate_verdict_t v;
    gate_req(&q, 0x21);
    q.in.shadow = 1;
    assert_int_equal(cg_gate_begin(g, &q.in, &lk, &v), CG_GATE_LOOKUP);
    assert_int_equal(gate_feed(g, &lk, &q.peer.leaf, 0), 0);
    cg_gate_finish(g, &q.in, &lk, &v);
    assert_int_equal(v.reason, CG_R_UNREGISTERED);
    assert_true(v.pass && v.would_deny && v.final);
    assert_int_equal(m->decisions[CG_R_UNREGISTERED], 1);
    assert_int_equal(m->would_deny[CG_R_UNREGISTERED], 1);
    const char *line = gate_line("CG01010: shadow deny (not enforced) reason=unregistered ");
    assert_non_null(line);
    assert_non_null(strstr(line, "client=192.0.2.7"));
    assert_null(gate_line("CG01001"));
    /* The same answer from the cache: counted again. */
    assert_int_equal(cg_gate_begin(g, &q.in, &lk, &v), CG_GATE_DONE);
    assert_true(v.pass && v.would_deny);
    assert_int_equal(m->would_deny[CG_R_UNREGISTERED], 2);
    /* Without a certificate, and with an app that does not match. */
    gate_req_t n;
    gate_req(&n, 0x22);
    n.in.shadow = 1;
    n.in.peer = NULL;
    assert_int_equal(cg_gate_begin(g, &n.in, &lk, &v), CG_GATE_DONE);
    assert_true(v.pass && v.would_deny);
    assert_int_equal(v.reason, CG_R_NO_CLIENT_CERT);
    gate_req(&n, 0x23);
    n.in.shadow = 1;
    n.in.app = "app2";
    assert_int_equal(cg_gate_begin(g, &n.in, &lk, &v), CG_GATE_LOOKUP);
    assert_int_equal(gate_feed(g, &lk, &n.peer.leaf, 1), 0);
    gate_nlines = 0;
    cg_gate_finish(g, &n.in, &lk, &v);
    assert_int_equal(v.reason, CG_R_APP_MISMATCH);
    assert_true(v.pass && v.would_deny && v.has_reg);
    line = gate_line("CG01010: shadow deny (not enforced) reason=app_mismatch ");
    assert_non_null(line);
    assert_non_null(strstr(line, " app=app1 asked=app2 cert=r1 "));
    /* An allow in shadow mode is a plain allow. */
    n.in.app = "app1";
    assert_int_equal(cg_gate_begin(g, &n.in, &lk, &v), CG_GATE_DONE);
    assert_int_equal(v.reason, CG_ALLOW);
    assert_true(v.pass);
    assert_false(v.would_deny);
    assert_int_equal(m->would_deny[CG_ALLOW], 0);
    /* Enforcing beside it: a refusal, not counted as would_deny. */
    q.in.shadow = 0;
    assert_int_equal(cg_gate_begin(g, &q.in, &lk, &v), CG_GATE_DONE);
    assert_false(v.pass || v.would_deny);
    assert_int_equal(m->would_deny[CG_R_UNREGISTERED], 2);
    assert_int_equal(m->decisions[CG_R_UNREGISTERED], 3);
    char *t = cg_metrics_render(m, NULL);
    assert_non_null(t);
    assert_non_null(strstr(t, "certgate_would_deny_total{reason=\"unregistered\"} 2\n"));
    assert_non_null(strstr(t, "certgate_would_deny_total{reason=\"app_mismatch\"} 1\n"));
    assert_non_null(strstr(t, "certgate_would_deny_total{reason=\"no_client_cert\"} 1\n"));
    assert_null(strstr(t, "certgate_would_deny_total{reason=\"allow\"}"));
    free(t);
    cg_gate_free(g);
}

/* Shadow mode on a store failure: the store line as always, a would-be
 * store_unavailable, and the request passes; fail-open plays no part. */
static void test_gate_shadow_store_error(void **state)
{
    (void)state;
    for (int open = 0; open < 2; open++) {
        cg_gate_t *g = gate_for_test(1);
        cg_metrics_t *m = cg_gate_metrics(g);
        gate_req_t q;
        cg_gate_lookup_t lk;
        cg_gate_verdict_t v;
        gate_req(&q, 0x24);
        q.in.shadow = 1;
        q.in.fail_open = open;
        assert_int_equal(cg_gate_begin(g, &q.in, &lk, &v), CG_GATE_LOOKUP);
        cg_gate_lookup_fail(&lk, CG_STORE_TIMEOUT, "boom");
        cg_gate_finish(g, &q.in, &lk, &v);
        assert_int_equal(v.reason, CG_R_STORE_UNAVAILABLE);
        assert_true(v.pass && v.would_deny);
        assert_non_null(gate_line("CG02004: "));
        assert_non_null(gate_line("CG01010: shadow deny (not enforced) reason=store_unavailable "));
        assert_null(gate_line("CG02002"));
        assert_int_equal(m->decisions[CG_R_STORE_UNAVAILABLE], 1);
        assert_int_equal(m->would_deny[CG_R_STORE_UNAVAILABLE], 1);
        assert_false(q.conn.valid);
        cg_gate_free(g);
    }
}

/* RFC 8705 x5t#S256: base64url of the SHA-256, 43 characters, no padding. */
static void test_x5t_s256(void **state)
{
    (void)state;
    cg_fp_t fp;
    char out[CG_X5T_S256_LEN + 1];
    assert_int_equal(cg_fp_der((const unsigned char *)"abc", 3, &fp), 0);
    cg_gate_x5t_s256(&fp, out);
    assert_string_equal(out, "ungWv48Bz-pBQUDeXa4iI7ADYaOWF3qctBD_YfIAFa0");
    memset(fp.b, 0xff, sizeof(fp.b));
    cg_gate_x5t_s256(&fp, out);
    assert_string_equal(out, "__________________________________________8");
}

/* The blocking form on an unreachable store, threads started and stopped. */
static void test_gate_run_and_lifecycle(void **state)
{
    (void)state;
    cg_gate_cfg_t cfg;
    cg_gate_cfg_defaults(&cfg);
    cfg.store.port = 1;     /* nothing listens: refused at once */
    cg_gate_set_log(gate_sink);
    gate_nlines = 0;
    cg_metrics_t shared;
    cg_metrics_init(&shared);
    cg_gate_t *g = cg_gate_new(&cfg, &shared, NULL);
    assert_non_null(g);
    assert_ptr_equal(cg_gate_metrics(g), &shared);
    cg_gate_start(g);
    gate_req_t q;
    cg_gate_verdict_t v;
    gate_req(&q, 0x17);
    cg_gate_run(g, &q.in, &v);
    assert_int_equal(v.reason, CG_R_STORE_UNAVAILABLE);
    assert_false(v.pass);
    assert_int_equal(shared.redis_conn, 1);
    assert_int_equal(shared.decisions[CG_R_STORE_UNAVAILABLE], 1);
    cg_gate_free(g);
}

static void test_lookup_steps(void **state)
{
    (void)state;
    char key[CG_LOOKUP_KEY_MAX], err[128];
    int klen = 0;
    cg_fp_t leaf;
    memset(&leaf, 0xab, sizeof(leaf));

    int n = cg_lookup_index_cmd("p:", &leaf, key, sizeof(key));
    assert_int_equal(n, 2 + 3 + 64);
    assert_memory_equal(key, "p:fp:abab", 9);
    assert_int_equal(cg_lookup_index_cmd("p:", &leaf, key, 10), -1);

    redisReply nil = str_reply(REDIS_REPLY_NIL, NULL);
    assert_int_equal(cg_lookup_index_reply("p:", &nil, key, sizeof(key), &klen, err,
                                           sizeof(err)), CG_STORE_NOTFOUND);
    redisReply id = str_reply(REDIS_REPLY_STRING, "r1");
    assert_int_equal(cg_lookup_index_reply("p:", &id, key, sizeof(key), &klen, err,
                                           sizeof(err)), CG_STORE_OK);
    assert_string_equal(key, "p:reg:r1");
    assert_int_equal(klen, 8);
    redisReply bad = str_reply(REDIS_REPLY_STRING, "r 1*");
    assert_int_equal(cg_lookup_index_reply("p:", &bad, key, sizeof(key), &klen, err,
                                           sizeof(err)), CG_STORE_CORRUPT);
    redisReply wrongtype = str_reply(REDIS_REPLY_ERROR, "WRONGTYPE Operation against a key");
    assert_int_equal(cg_lookup_index_reply("p:", &wrongtype, key, sizeof(key), &klen, err,
                                           sizeof(err)), CG_STORE_CORRUPT);
    redisReply noauth = str_reply(REDIS_REPLY_ERROR, "NOAUTH Authentication required.");
    assert_int_equal(cg_lookup_index_reply("p:", &noauth, key, sizeof(key), &klen, err,
                                           sizeof(err)), CG_STORE_ERROR);
    assert_non_null(strstr(err, "NOAUTH"));

    char hex[CG_FP_HEX_LEN + 1];
    cg_fp_to_hex(&leaf, hex);
    const char *kv[] = { "id", "r1", "app_id", "app1", "status", "APPROVED", "fingerprint", hex,
                         "chain", "", "valid_from", "1", "valid_to", "2" };
    redisReply el[14], *elp[14];
    for (int i = 0; i < 14; i++) {
        el[i] = str_reply(REDIS_REPLY_STRING, kv[i]);
        elp[i] = &el[i];
    }
    redisReply arr;
    memset(&arr, 0, sizeof(arr));
    arr.type = REDIS_REPLY_ARRAY;
    arr.elements = 14;
    arr.element = elp;
    cg_reg_t reg;
    assert_int_equal(cg_lookup_record_reply(&arr, &leaf, &reg, err, sizeof(err)), CG_STORE_OK);
    assert_string_equal(reg.app_id, "app1");
    cg_fp_t other;
    memset(&other, 0xcd, sizeof(other));
    assert_int_equal(cg_lookup_record_reply(&arr, &other, &reg, err, sizeof(err)),
                     CG_STORE_CORRUPT);
    arr.elements = 13;     /* odd: not a hash */
    assert_int_equal(cg_lookup_record_reply(&arr, &leaf, &reg, err, sizeof(err)),
                     CG_STORE_CORRUPT);
    arr.elements = 0;      /* the index points at a record that is gone */
    assert_int_equal(cg_lookup_record_reply(&arr, &leaf, &reg, err, sizeof(err)),
                     CG_STORE_NOTFOUND);
}

/* Error replies keep their kind: an ACL refusal is not damage. */
static void test_store_result_kinds(void **state)
{
    (void)state;
    redisReply noperm = str_reply(REDIS_REPLY_ERROR,
                                  "NOPERM User gw has no permissions to run the 'get' command");
    redisReply wrongtype = str_reply(REDIS_REPLY_ERROR, "WRONGTYPE Operation against a key");
    redisReply loading = str_reply(REDIS_REPLY_ERROR, "LOADING Redis is loading");
    redisReply nopermish = str_reply(REDIS_REPLY_ERROR, "NOPERMX something");
    redisReply ok = str_reply(REDIS_REPLY_STRING, "NOPERM");
    assert_int_equal(cg_store_reply_kind(&noperm), CG_STORE_PERM);
    assert_int_equal(cg_store_reply_kind(&wrongtype), CG_STORE_CORRUPT);
    assert_int_equal(cg_store_reply_kind(&loading), CG_STORE_ERROR);
    assert_int_equal(cg_store_reply_kind(&nopermish), CG_STORE_ERROR);
    assert_int_equal(cg_store_reply_kind(&ok), CG_STORE_OK);
    char key[CG_LOOKUP_KEY_MAX], err[128];
    int klen;
    assert_int_equal(cg_lookup_index_reply("p:", &noperm, key, sizeof(key), &klen, err,
                                           sizeof(err)), CG_STORE_PERM);
    assert_non_null(strstr(err, "NOPERM"));
    assert_false(cg_store_failed(CG_STORE_OK));
    assert_false(cg_store_failed(CG_STORE_NOTFOUND));
    const cg_store_rc_t bad[] = { CG_STORE_ERROR, CG_STORE_CORRUPT, CG_STORE_TIMEOUT,
                                  CG_STORE_CONN, CG_STORE_PERM };
    const char *names[] = { "error", "corrupt", "timeout", "connection", "permission" };
    for (size_t i = 0; i < 5; i++) {
        assert_true(cg_store_failed(bad[i]));
        assert_string_equal(cg_store_rc_name(bad[i]), names[i]);
    }

    cg_metrics_t m;
    cg_metrics_init(&m);
    cg_metrics_store(&m, 100, CG_STORE_PERM);
    cg_metrics_store(&m, 100, CG_STORE_CONN);
    cg_metrics_store(&m, 100, CG_STORE_CONN);
    cg_metrics_store(&m, 100, CG_STORE_NOTFOUND);
    cg_store_stats_t st = { .ok = 0, .fail = CG_STORE_PERM };
    char *t = cg_metrics_render(&m, &st);
    assert_non_null(t);
    assert_non_null(strstr(t, "certgate_redis_lookups_total{outcome=\"permission\"} 1\n"));
    assert_non_null(strstr(t, "certgate_redis_lookups_total{outcome=\"connection\"} 2\n"));
    assert_non_null(strstr(t, "certgate_redis_lookups_total{outcome=\"ok\"} 1\n"));
    assert_non_null(strstr(t, "certgate_redis_lookups_total{outcome=\"corrupt\"} 0\n"));
    assert_non_null(strstr(t, "certgate_redis_lookup_seconds_count 4\n"));
    assert_non_null(strstr(t, "certgate_store_up 0\n"));
    assert_non_null(strstr(t, "certgate_store_scrape_error{kind=\"permission\"} 1\n"));
    assert_non_null(strstr(t, "certgate_store_scrape_error{kind=\"corrupt\"} 0\n"));
    free(t);
    st.ok = 1;
    t = cg_metrics_render(&m, &st);
    assert_non_null(t);
    assert_non_null(strstr(t, "certgate_store_scrape_error{kind=\"permission\"} 0\n"));
    free(t);
}

/* Step 2 checks the record's id against its key; step 3 reads the app's owner. */
static void test_lookup_id_and_owner_steps(void **state)
{
    (void)state;
    char key[CG_LOOKUP_KEY_MAX], err[128];
    int klen = 0;
    cg_fp_t leaf;
    memset(&leaf, 0xab, sizeof(leaf));
    char hex[CG_FP_HEX_LEN + 1];
    cg_fp_to_hex(&leaf, hex);
    const char *kv[] = { "id", "r1", "app_id", "app1", "status", "APPROVED", "fingerprint", hex,
                         "customer_id", "c1", "valid_from", "1", "valid_to", "2" };
    redisReply el[14], *elp[14];
    for (int i = 0; i < 14; i++) {
        el[i] = str_reply(REDIS_REPLY_STRING, kv[i]);
        elp[i] = &el[i];
    }
    redisReply arr;
    memset(&arr, 0, sizeof(arr));
    arr.type = REDIS_REPLY_ARRAY;
    arr.elements = 14;
    arr.element = elp;
    cg_reg_t reg;
    assert_int_equal(cg_lookup_reg_reply("p:", "p:reg:r1", &arr, &leaf, &reg, key, sizeof(key),
                                         &klen, err, sizeof(err)), CG_STORE_OK);
    assert_string_equal(key, "p:appinfo:app1");
    assert_int_equal(klen, 14);
    assert_int_equal(reg.app_owner_state, CG_OWNER_UNREAD);
    /* {p}reg:r2 holding id=r1: a store error, never served. */
    assert_int_equal(cg_lookup_reg_reply("p:", "p:reg:r2", &arr, &leaf, &reg, key, sizeof(key),
                                         &klen, err, sizeof(err)), CG_STORE_CORRUPT);
    assert_non_null(strstr(err, "id"));
    assert_int_equal(cg_lookup_reg_reply("p:", "p:reg:r10", &arr, &leaf, &reg, key, sizeof(key),
                                         &klen, err, sizeof(err)), CG_STORE_CORRUPT);
    assert_int_equal(cg_lookup_reg_reply("q:", "p:reg:r1", &arr, &leaf, &reg, key, sizeof(key),
                                         &klen, err, sizeof(err)), CG_STORE_CORRUPT);

    redisReply owner = str_reply(REDIS_REPLY_STRING, "c1");
    assert_int_equal(cg_lookup_owner_reply(&owner, &reg, err, sizeof(err)), CG_STORE_OK);
    assert_int_equal(reg.app_owner_state, CG_OWNER_READ);
    assert_string_equal(reg.app_owner, "c1");
    redisReply nil = str_reply(REDIS_REPLY_NIL, NULL);
    assert_int_equal(cg_lookup_owner_reply(&nil, &reg, err, sizeof(err)), CG_STORE_OK);
    assert_int_equal(reg.app_owner_state, CG_OWNER_NONE);
    assert_string_equal(reg.app_owner, "");
    redisReply bad = str_reply(REDIS_REPLY_STRING, "c:1");
    assert_int_equal(cg_lookup_owner_reply(&bad, &reg, err, sizeof(err)), CG_STORE_CORRUPT);
    redisReply empty = str_reply(REDIS_REPLY_STRING, "");
    assert_int_equal(cg_lookup_owner_reply(&empty, &reg, err, sizeof(err)), CG_STORE_CORRUPT);
    redisReply wrongtype = str_reply(REDIS_REPLY_ERROR, "WRONGTYPE Operation against a key");
    assert_int_equal(cg_lookup_owner_reply(&wrongtype, &reg, err, sizeof(err)), CG_STORE_CORRUPT);
    redisReply noperm = str_reply(REDIS_REPLY_ERROR, "NOPERM no permissions to run 'hget'");
    assert_int_equal(cg_lookup_owner_reply(&noperm, &reg, err, sizeof(err)), CG_STORE_PERM);
    assert_int_equal(reg.app_owner_state, CG_OWNER_NONE);
}

/* The app's owner must be the registration's customer; checked with the app. */
static void test_app_owner_decision(void **state)
{
    (void)state;
    fixture_t f = fx();
    strcpy(f.reg.customer_id, "cust-1");
    f.reg.app_owner_state = CG_OWNER_READ;
    strcpy(f.reg.app_owner, "cust-1");
    assert_int_equal(decide(&f, 2), CG_ALLOW);
    f.in.app = "app1";
    assert_int_equal(decide(&f, 2), CG_ALLOW);
    strcpy(f.reg.app_owner, "cust-2");                  /* another customer's app */
    assert_int_equal(decide(&f, 2), CG_R_APP_MISMATCH);
    f.in.app = NULL;                                    /* even where no app is named */
    assert_int_equal(decide(&f, 2), CG_R_APP_MISMATCH);
    f.reg.app_owner_state = CG_OWNER_NONE;              /* no owner record */
    strcpy(f.reg.app_owner, "");
    assert_int_equal(decide(&f, 2), CG_R_APP_MISMATCH);
    f.reg.customer_id[0] = '\0';                        /* "" is not an owner either */
    assert_int_equal(decide(&f, 2), CG_R_APP_MISMATCH);
    /* Before the status: a pending cert of another customer's app reads app_mismatch. */
    f = fx();
    strcpy(f.reg.customer_id, "cust-1");
    f.reg.app_owner_state = CG_OWNER_READ;
    strcpy(f.reg.app_owner, "cust-2");
    f.reg.status = CG_STATUS_PENDING;
    assert_int_equal(decide(&f, 2), CG_R_APP_MISMATCH);
    /* After registration: an unregistered leaf stays unregistered. */
    f.leaf = fp_of(9);
    assert_int_equal(decide(&f, 2), CG_R_UNREGISTERED);
}

static void test_deny_body(void **state)
{
    (void)state;
    char buf[CG_DENY_BODY_MAX];
    const char *ctype;
    int n = cg_deny_body(CG_R_PENDING, 1, buf, sizeof(buf), &ctype);
    assert_true(n > 0);
    assert_string_equal(ctype, "application/json");
    assert_non_null(strstr(buf, "{\"error\":\"forbidden\",\"reason\":\"pending\""));
    n = cg_deny_body(CG_R_STORE_UNAVAILABLE, 0, buf, sizeof(buf), &ctype);
    assert_true(n > 0 && (size_t)n == strlen(buf));
    assert_true(strncmp(ctype, "text/plain", 10) == 0);
    assert_true(strncmp(buf, "503 Service Unavailable: ", 25) == 0);
    assert_non_null(strstr(buf, "(store_unavailable)\n"));
    assert_int_equal(cg_deny_body(CG_R_PENDING, 1, buf, 16, &ctype), -1);
    /* Every reason fits the buffer the adapters allocate. */
    for (int r = 0; r < CG_R__COUNT; r++)
        for (int json = 0; json < 2; json++)
            assert_true(cg_deny_body((cg_reason_t)r, json, buf, sizeof(buf), &ctype) > 0);
}

/* The route table answers 404, 405 and 400 before any store access. */
static void test_admin_routes(void **state)
{
    (void)state;
    static const struct {
        const char *method, *path;
        int status;
        const char *code, *msg;
    } cases[] = {
        { "PUT", "/certs", 405, "Route.MethodNotAllowed", "use GET or POST" },
        { "DELETE", "/certs/abc", 405, "Route.MethodNotAllowed", "use GET" },
        { "GET", "/certs/abc/approve", 405, "Route.MethodNotAllowed", "use POST" },
        { "PUT", "/customers/c1", 405, "Route.MethodNotAllowed", "use GET or PATCH" },
        { "GET", "/nope", 404, "Route.NotFound", NULL },
        { "GET", "/a/b/c/d/e/f", 404, "Route.NotFound", NULL },
        { "GET", "/apps/bad id", 400, "Request.Invalid", NULL },
    };
    cg_admin_cfg_t cfg;
    cg_admin_cfg_defaults(&cfg);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        cg_admin_req_t req;
        cg_admin_resp_t resp;
        memset(&req, 0, sizeof(req));
        req.method = cases[i].method;
        req.path = cases[i].path;
        req.user = "someone";
        cg_admin_handle(&cfg, NULL, &req, &resp);
        assert_int_equal(resp.status, cases[i].status);
        char want[96];
        snprintf(want, sizeof(want), "\"code\":\"%s\"", cases[i].code);
        assert_non_null(strstr(resp.body, want));
        if (cases[i].msg != NULL)
            assert_non_null(strstr(resp.body, cases[i].msg));
        cg_admin_resp_free(&resp);
    }
}

/* The same-origin rule for writes: which requests pass, which are refused. */
static void test_admin_cross_site(void **state)
{
    (void)state;
    static const struct {
        const char *method, *origin, *sfs, *host;
        int tls, refused;
    } cases[] = {
        { "POST", NULL, NULL, "gw:8444", 1, 0 },                    /* curl: no browser headers */
        { "POST", "https://gw:8444", "same-origin", "gw:8444", 1, 0 },
        { "POST", "https://GW:8444", NULL, "gw:8444", 1, 0 },       /* host names ignore case */
        { "POST", "https://gw", NULL, "gw:443", 1, 0 },             /* default port either way */
        { "DELETE", "https://gw:443", NULL, "gw", 1, 0 },
        { "POST", "http://gw:80", NULL, "gw", 0, 0 },
        { "PATCH", NULL, "none", "gw", 1, 0 },                      /* typed into the address bar */
        { "GET", "https://evil.example", "cross-site", "gw", 1, 0 }, /* reads are not checked */
        { "HEAD", "null", "cross-site", "gw", 1, 0 },
        { "POST", "https://evil.example", NULL, "gw:8444", 1, 1 },
        { "POST", "http://gw:8444", NULL, "gw:8444", 1, 1 },        /* scheme differs */
        { "POST", "https://gw:8445", NULL, "gw:8444", 1, 1 },       /* port differs */
        { "POST", "https://gw:8444.evil", NULL, "gw:8444", 1, 1 },
        { "POST", "https://user@gw:8444", NULL, "gw:8444", 1, 1 },
        { "POST", "https://gw:8444/", NULL, "gw:8444", 1, 1 },
        { "POST", "null", NULL, "gw:8444", 1, 1 },                  /* sandboxed or data: page */
        { "POST", "https://gw:8444", NULL, NULL, 1, 1 },            /* no Host to compare with */
        { "POST", NULL, "cross-site", "gw", 1, 1 },
        { "POST", NULL, "same-site", "gw", 1, 1 },
        { "PUT", "https://gw", "cross-site", "gw", 1, 1 },          /* both must pass */
        { "DELETE", "https://evil.example", "same-origin", "gw", 1, 1 },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        cg_admin_req_t req;
        memset(&req, 0, sizeof(req));
        req.method = cases[i].method;
        req.origin = cases[i].origin;
        req.sec_fetch_site = cases[i].sfs;
        req.host = cases[i].host;
        req.tls = cases[i].tls;
        const char *why = cg_admin_cross_site(&req);
        if ((why != NULL) != cases[i].refused)
            fail_msg("case %zu (%s Origin=%s Sec-Fetch-Site=%s Host=%s): %s", i, cases[i].method,
                     cases[i].origin ? cases[i].origin : "-", cases[i].sfs ? cases[i].sfs : "-",
                     cases[i].host ? cases[i].host : "-", why ? why : "passed");
    }
    /* The handler refuses before any route: no store is touched (st is NULL here). */
    cg_admin_cfg_t cfg;
    cg_admin_cfg_defaults(&cfg);
    cg_admin_req_t req;
    cg_admin_resp_t resp;
    memset(&req, 0, sizeof(req));
    req.method = "POST";
    req.path = "/certs/abc/approve";
    req.user = "mgr";
    req.roles = CG_ROLE_MANAGER;
    req.origin = "https://evil.example";
    req.host = "gw";
    req.tls = 1;
    cg_admin_handle(&cfg, NULL, &req, &resp);
    assert_int_equal(resp.status, 403);
    assert_int_equal(resp.cross_site, 1);
    assert_non_null(strstr(resp.body, "\"code\":\"Request.CrossSite\""));
    cg_admin_resp_free(&resp);
    /* Same origin goes on to the routes. */
    req.path = "/nope";
    req.origin = "https://gw";
    cg_admin_handle(&cfg, NULL, &req, &resp);
    assert_int_equal(resp.status, 404);
    assert_int_equal(resp.cross_site, 0);
    cg_admin_resp_free(&resp);
}

/* The console's files carry the CSP; API answers do not need it. */
static void test_admin_console_files(void **state)
{
    (void)state;
    static const struct {
        const char *method, *path;
        int status;
        int csp;
        const char *text;
    } cases[] = {
        { "GET", "/console/", 200, 1, "<script src=\"app.js\"" },
        { "GET", "/console/index.html", 200, 1, "<!doctype html>" },
        { "GET", "/console/app.js", 200, 1, "textContent" },
        { "GET", "/console/app.css", 200, 1, "body" },
        { "GET", "/console", 301, 0, "Route.Moved" },
        { "GET", "/console/nope.js", 404, 0, "Route.NotFound" },
        { "GET", "/console/../certs", 404, 0, "Route.NotFound" },
        { "POST", "/console/", 405, 0, "use GET" },
        { "GET", "/consoles", 404, 0, "Route.NotFound" },
        { "GET", "/whoami", 200, 0, "\"roles\":[\"manager\",\"auditor\"],\"customer\":null" },
    };
    cg_admin_cfg_t cfg;
    cg_admin_cfg_defaults(&cfg);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        cg_admin_req_t req;
        cg_admin_resp_t resp;
        memset(&req, 0, sizeof(req));
        req.method = cases[i].method;
        req.path = cases[i].path;
        req.user = "mgr";
        req.roles = CG_ROLE_MANAGER | CG_ROLE_AUDITOR;
        cg_admin_handle(&cfg, NULL, &req, &resp);
        if (resp.status != cases[i].status || (resp.csp != NULL) != cases[i].csp ||
            strstr(resp.body, cases[i].text) == NULL)
            fail_msg("case %zu %s %s: %d csp=%d %.200s", i, cases[i].method, cases[i].path,
                     resp.status, resp.csp != NULL, resp.body);
        if (cases[i].csp)
            assert_non_null(strstr(resp.csp, "script-src 'self';"));
        cg_admin_resp_free(&resp);
    }
}

/* The sentinel client's event callback (a log write, metrics) must run with no
 * lock of the client held: a helper thread reads its state while the callback
 * waits for it. */
typedef struct {
    cg_sentinel_t *s;
    int events, blocked;
} sent_probe_t;

static void *sent_probe_read(void *arg)
{
    (void)cg_sentinel_gen(((sent_probe_t *)arg)->s);
    return NULL;
}

static void sent_probe_event(void *arg, int ev, const char *msg)
{
    sent_probe_t *p = arg;
    pthread_t t;
    struct timespec until;
    (void)ev;
    (void)msg;
    p->events++;
    assert_int_equal(pthread_create(&t, NULL, sent_probe_read, p), 0);
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 1;
    if (pthread_timedjoin_np(t, NULL, &until) != 0) {
        p->blocked++;
        pthread_detach(t);      /* it ends once the lock is released */
    }
}

static void test_sentinel_event_outside_lock(void **state)
{
    (void)state;
    char err[256], host[CG_SENTINEL_HOST_MAX];
    int port, unreachable;
    uint64_t gen;
    sent_probe_t p = { NULL, 0, 0 };
    /* Port 1 on loopback refuses: "sentinels unreachable" is reported. */
    p.s = cg_sentinel_new("127.0.0.1:1", "m", NULL, NULL, 100, sent_probe_event, &p,
                          err, sizeof(err));
    assert_non_null(p.s);
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    int64_t deadline = (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000 + 500;
    assert_int_equal(cg_sentinel_master(p.s, deadline, host, sizeof(host), &port, &gen,
                                        &unreachable, err, sizeof(err)), -1);
    assert_int_equal(unreachable, 1);
    assert_int_equal(p.events, 1);
    assert_int_equal(p.blocked, 0);
    cg_sentinel_free(p.s);
}

/* ------------------------------------------ usage and subscriber without I/O */

/* A store nothing listens for (port 1): what the usage tests drive by hand. */
static cg_store_t *unreachable_store(void)
{
    char err[128];
    cg_store_cfg_t c = { .host = "127.0.0.1", .port = 1, .prefix = "certgate:",
                         .timeout_ms = 100, .max_idle = 1 };
    cg_store_t *st = cg_store_new(&c, err, sizeof(err));
    assert_non_null(st);
    return st;
}

typedef struct {
    int calls;
    size_t written, dropped;
    char err[64];
} flush_seen_t;

static void record_flush(void *arg, size_t written, size_t dropped, const char *err)
{
    flush_seen_t *f = arg;
    f->calls++;
    f->written = written;
    f->dropped = dropped;
    snprintf(f->err, sizeof(f->err), "%s", err ? err : "");
}

/* The steps nginx drives: take, commands, replies, end; and the counting. */
static void test_usage_batch_steps(void **state)
{
    (void)state;
    cg_store_t *st = unreachable_store();
    flush_seen_t seen = { 0 };
    cg_usage_t *u = cg_usage_new(st, 2, 100, record_flush, &seen);
    assert_non_null(u);
    assert_null(cg_usage_batch_take(u));            /* nothing counted */
    cg_usage_hit(u, "r1", 1000, "10.0.0.1");
    cg_usage_hit(u, "r2", 1001, "10.0.0.2");
    cg_usage_hit(u, "r1", 1002, "10.0.0.3");
    cg_usage_hit(u, "r3", 1003, "10.0.0.4");        /* table full: dropped */
    cg_usage_batch_t *b = cg_usage_batch_take(u);
    assert_non_null(b);
    assert_null(cg_usage_batch_take(u));            /* one batch at a time */
    assert_int_equal(cg_usage_batch_len(b), 2);
    int argc;
    const char *const *argv;
    const size_t *lens;
    cg_usage_batch_cmd(b, 0, &argc, &argv, &lens);
    assert_int_equal(argc, 7);
    assert_string_equal(argv[0], "EVAL");
    assert_string_equal(argv[3], "certgate:usage:r1");
    assert_string_equal(argv[4], "2");
    assert_string_equal(argv[5], "1002");
    assert_string_equal(argv[6], "10.0.0.3");
    assert_int_equal(lens[3], strlen("certgate:usage:r1"));
    redisReply ok = { .type = REDIS_REPLY_INTEGER, .integer = 1 };
    cg_usage_hit(u, "r4", 1004, "10.0.0.5");        /* counted for the next batch */
    cg_usage_batch_reply(b, &ok);
    cg_usage_batch_end(b, "timeout");               /* r2 never answered */
    assert_int_equal(seen.calls, 1);
    assert_int_equal(seen.written, 1);
    assert_int_equal(seen.dropped, 2);
    assert_string_equal(seen.err, "timeout");
    b = cg_usage_batch_take(u);
    assert_non_null(b);
    assert_int_equal(cg_usage_batch_len(b), 1);
    redisReply bad = { .type = REDIS_REPLY_ERROR, .str = "NOSCRIPT", .len = 8 };
    cg_usage_batch_reply(b, &bad);
    cg_usage_batch_end(b, NULL);
    assert_int_equal(seen.calls, 2);
    assert_int_equal(seen.written, 0);
    assert_int_equal(seen.dropped, 1);
    assert_string_equal(seen.err, "");
    cg_usage_stop(u);                               /* nothing left: no Redis, no report */
    assert_int_equal(seen.calls, 2);
    cg_store_free(st);
}

/* Command i of batch b: its key, count, last_seen and ip. */
static void assert_usage_cmd(cg_usage_batch_t *b, size_t i, const char *key, const char *count,
                             const char *seen, const char *ip)
{
    int argc;
    const char *const *argv;
    const size_t *lens;
    cg_usage_batch_cmd(b, i, &argc, &argv, &lens);
    assert_int_equal(argc, 7);
    assert_string_equal(argv[3], key);
    assert_string_equal(argv[4], count);
    assert_string_equal(argv[5], seen);
    assert_string_equal(argv[6], ip);
}

/* The memo path's hint: right while the table holds, never across a swap
 * (the slot then holds another registration) nor from another table. */
static void test_usage_hint(void **state)
{
    (void)state;
    cg_store_t *st = unreachable_store();
    flush_seen_t seen = { 0 };
    cg_usage_t *u = cg_usage_new(st, 4, 100, record_flush, &seen);
    cg_usage_t *u2 = cg_usage_new(st, 4, 100, record_flush, &seen);
    assert_non_null(u);
    assert_non_null(u2);
    redisReply ok = { .type = REDIS_REPLY_INTEGER, .integer = 1 };

    cg_usage_hint_t h = { 0 };
    cg_usage_hit_hint(u, "r1", 1000, "10.0.0.1", &h);
    cg_usage_hit(u, "r2", 1001, "10.0.0.2");
    cg_usage_hit_hint(u, "r1", 1002, "10.0.0.3", &h);   /* by the hint, not the last slot */
    cg_usage_batch_t *b = cg_usage_batch_take(u);
    assert_non_null(b);
    assert_int_equal(cg_usage_batch_len(b), 2);
    assert_usage_cmd(b, 0, "certgate:usage:r1", "2", "1002", "10.0.0.3");
    assert_usage_cmd(b, 1, "certgate:usage:r2", "1", "1001", "10.0.0.2");
    cg_usage_hint_t first = h;                          /* slot 0 of u's first table */
    cg_usage_batch_reply(b, &ok);
    cg_usage_batch_reply(b, &ok);
    cg_usage_batch_end(b, NULL);

    /* Swapped: slot 0 is r2's now; the old hint must not count r1 there. */
    cg_usage_hit(u, "r2", 1003, "10.0.0.4");
    cg_usage_hit_hint(u, "r1", 1004, "10.0.0.5", &h);
    cg_usage_hit_hint(u, "r1", 1005, "10.0.0.6", &h);
    b = cg_usage_batch_take(u);
    assert_non_null(b);
    assert_int_equal(cg_usage_batch_len(b), 2);
    assert_usage_cmd(b, 0, "certgate:usage:r2", "1", "1003", "10.0.0.4");
    assert_usage_cmd(b, 1, "certgate:usage:r1", "2", "1005", "10.0.0.6");
    cg_usage_batch_reply(b, &ok);
    cg_usage_batch_reply(b, &ok);
    cg_usage_batch_end(b, NULL);

    /* Another table (made as u's first was): its slot 0 is r9's, not r1's. */
    cg_usage_hit(u2, "r9", 1006, "10.0.0.7");
    cg_usage_hit(u2, "r3", 1007, "10.0.0.8");
    cg_usage_hit_hint(u2, "r1", 1008, "10.0.0.9", &first);
    b = cg_usage_batch_take(u2);
    assert_non_null(b);
    assert_int_equal(cg_usage_batch_len(b), 3);
    assert_usage_cmd(b, 0, "certgate:usage:r9", "1", "1006", "10.0.0.7");
    assert_usage_cmd(b, 1, "certgate:usage:r3", "1", "1007", "10.0.0.8");
    assert_usage_cmd(b, 2, "certgate:usage:r1", "1", "1008", "10.0.0.9");
    for (int i = 0; i < 3; i++)
        cg_usage_batch_reply(b, &ok);
    cg_usage_batch_end(b, NULL);
    cg_usage_stop(u);
    cg_usage_stop(u2);
    cg_store_free(st);
}

/* A hint's caller that says its address text is unchanged (client_seq) is not
 * compared again, unless another hit changed the record's address since. */
static void test_usage_hint_address(void **state)
{
    (void)state;
    cg_store_t *st = unreachable_store();
    flush_seen_t seen = { 0 };
    cg_usage_t *u = cg_usage_new(st, 4, 100, record_flush, &seen);
    assert_non_null(u);
    redisReply ok = { .type = REDIS_REPLY_INTEGER, .integer = 1 };
    char ip[16] = "10.0.0.1";
    cg_usage_hint_t h = { 0 };

    h.client_seq = 7;
    cg_usage_hit_hint(u, "r1", 1000, ip, &h);
    cg_usage_hit_hint(u, "r1", 1001, ip, &h);           /* same text: not compared */
    cg_usage_hit(u, "r1", 1002, "10.0.0.2");            /* another client of r1 */
    cg_usage_hit_hint(u, "r1", 1003, ip, &h);           /* the record changed: compared */
    cg_usage_batch_t *b = cg_usage_batch_take(u);
    assert_non_null(b);
    assert_int_equal(cg_usage_batch_len(b), 1);
    assert_usage_cmd(b, 0, "certgate:usage:r1", "4", "1003", "10.0.0.1");
    cg_usage_batch_reply(b, &ok);
    cg_usage_batch_end(b, NULL);

    /* The caller's text changes with its client_seq; with 0 it is always compared. */
    cg_usage_hit_hint(u, "r1", 1004, ip, &h);
    strcpy(ip, "10.0.0.3");
    h.client_seq = 8;
    cg_usage_hit_hint(u, "r1", 1005, ip, &h);
    b = cg_usage_batch_take(u);
    assert_non_null(b);
    assert_usage_cmd(b, 0, "certgate:usage:r1", "2", "1005", "10.0.0.3");
    cg_usage_batch_reply(b, &ok);
    cg_usage_batch_end(b, NULL);
    h.client_seq = 0;
    cg_usage_hit_hint(u, "r1", 1006, ip, &h);
    strcpy(ip, "10.0.0.4");
    cg_usage_hit_hint(u, "r1", 1007, ip, &h);
    b = cg_usage_batch_take(u);
    assert_non_null(b);
    assert_usage_cmd(b, 0, "certgate:usage:r1", "2", "1007", "10.0.0.4");
    cg_usage_batch_reply(b, &ok);
    cg_usage_batch_end(b, NULL);
    cg_usage_stop(u);
    cg_store_free(st);
}

static int inval_calls;
static int64_t inval_lag;

static void record_inval(void *arg, int64_t lag_us)
{
    (void)arg;
    inval_calls++;
    inval_lag = lag_us;
}

static void sub_message(const char *payload, redisReply *r, redisReply el[3], redisReply **els)
{
    memset(r, 0, sizeof(*r));
    memset(el, 0, 3 * sizeof(*el));
    el[0] = (redisReply){ .type = REDIS_REPLY_STRING, .str = "message", .len = 7 };
    el[1] = (redisReply){ .type = REDIS_REPLY_STRING, .str = "certgate:invalidate", .len = 19 };
    el[2] = (redisReply){ .type = REDIS_REPLY_STRING, .str = (char *)payload,
                          .len = strlen(payload) };
    for (int i = 0; i < 3; i++)
        els[i] = &el[i];
    r->type = REDIS_REPLY_ARRAY;
    r->elements = 3;
    r->element = els;
}

static void test_sub_messages(void **state)
{
    (void)state;
    cg_cache_t *c = cg_cache_new(4, 60000);
    assert_non_null(c);
    cg_reg_t reg = approved(), out;
    cg_fp_t a = fp_of(0xa1), b = fp_of(0xb2);
    char hex[CG_FP_HEX_LEN + 1], msg[CG_FP_HEX_LEN + 32];
    int found;
    int64_t fetched;
    redisReply r, el[3], *els[3];
    char chan[32];
    assert_int_equal(cg_sub_channel("certgate:", chan, sizeof(chan)), 0);
    assert_string_equal(chan, "certgate:invalidate");
    assert_int_equal(cg_sub_channel("certgate:", chan, 8), -1);

    cg_cache_put(c, &a, 1, &reg, 100, cg_cache_version(c));
    cg_cache_put(c, &b, 1, &reg, 100, cg_cache_version(c));
    cg_fp_to_hex(&a, hex);
    sub_message(hex, &r, el, els);
    inval_calls = 0;
    cg_sub_handle(c, &r, record_inval, NULL);
    assert_int_equal(inval_calls, 1);
    assert_true(inval_lag == -1);
    assert_int_equal(cg_cache_get(c, &a, 200, &found, &out, &fetched), 0);
    assert_int_equal(cg_cache_get(c, &b, 200, &found, &out, &fetched), 1);

    /* With the write's time: the lag is counted. */
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    cg_fp_to_hex(&b, hex);
    snprintf(msg, sizeof(msg), "%s %lld", hex, (long long)ts.tv_sec * 1000);
    sub_message(msg, &r, el, els);
    cg_sub_handle(c, &r, record_inval, NULL);
    assert_int_equal(inval_calls, 2);
    assert_true(inval_lag >= 0);
    assert_int_equal(cg_cache_get(c, &b, 200, &found, &out, &fetched), 0);

    /* Anything else flushes everything. */
    cg_cache_put(c, &a, 1, &reg, 300, cg_cache_version(c));
    uint64_t v = cg_cache_version(c);
    sub_message("flush", &r, el, els);
    cg_sub_handle(c, &r, record_inval, NULL);
    assert_int_equal(inval_calls, 3);
    assert_true(cg_cache_version(c) != v);
    assert_int_equal(cg_cache_get(c, &a, 310, &found, &out, &fetched), 0);

    /* The SUBSCRIBE confirmation is no message; resubscribing flushes. */
    el[0].str = "subscribe";
    el[0].len = 9;
    el[2] = (redisReply){ .type = REDIS_REPLY_INTEGER, .integer = 1 };
    assert_true(cg_sub_is_subscribed(&r));
    cg_cache_put(c, &a, 1, &reg, 400, cg_cache_version(c));
    cg_sub_handle(c, &r, record_inval, NULL);
    assert_int_equal(inval_calls, 3);
    assert_int_equal(cg_cache_get(c, &a, 410, &found, &out, &fetched), 1);
    v = cg_cache_version(c);
    cg_sub_resubscribed(c);
    assert_true(cg_cache_version(c) != v);
    assert_int_equal(cg_cache_get(c, &a, 420, &found, &out, &fetched), 0);
    cg_cache_free(c);
}

/* Review 4: a connection entry filled through one cache (an httpd vhost with
 * its own store) is never current for another, whatever each heard. */
static void test_conn_entry_other_cache(void **state)
{
    (void)state;
    cg_cache_t *c1 = cg_cache_new(8, 5000), *c2 = cg_cache_new(8, 5000);
    cg_reg_t r = approved();
    const cg_reg_t *rp = NULL;
    cg_fp_t a = fp_of(0xa3), b = fp_of(0xb4);
    cg_conn_entry_t e;
    memset(&e, 0, sizeof(e));
    cg_conn_entry_set(&e, &a, 1, &r, cg_cache_version(c1), 100);
    assert_int_equal(cg_conn_entry_ref(&e, c1, &a, 200, &rp), 1);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(cg_conn_entry_ref(&e, c2, &a, 200, &rp), 0);
        cg_cache_invalidate(c2, &b);
    }
    cg_cache_free(c1);
    cg_cache_free(c2);
}

/* A self-signed EC certificate, made here; its DER in *der (OPENSSL_free it). */
static int fpc_cert(const char *cn, unsigned char **der)
{
    EVP_PKEY *k = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    int n = -1;
    if (k != NULL && x != NULL && X509_set_version(x, 2) == 1 &&
        ASN1_INTEGER_set(X509_get_serialNumber(x), 7) == 1 &&
        X509_gmtime_adj(X509_getm_notBefore(x), 0) != NULL &&
        X509_gmtime_adj(X509_getm_notAfter(x), 86400) != NULL &&
        X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC,
                                   (const unsigned char *)cn, -1, -1, 0) == 1 &&
        X509_set_issuer_name(x, X509_get_subject_name(x)) == 1 && X509_set_pubkey(x, k) == 1 &&
        X509_sign(x, k, EVP_sha256()) > 0)
        n = i2d_X509(x, der);
    X509_free(x);
    EVP_PKEY_free(k);
    return n;
}

static X509 *fpc_parse(const unsigned char *der, int n)
{
    const unsigned char *p = der;
    return d2i_X509(NULL, &p, n);
}

/* The process cache answers for a certificate byte for byte the same, and
 * only for it; its answers equal a fresh digest. */
static void test_fp_cache(void **state)
{
    (void)state;
    unsigned char *d1 = NULL, *d2 = NULL;
    int n1 = fpc_cert("fpcache one", &d1), n2 = fpc_cert("fpcache two", &d2);
    assert_true(n1 > 0 && n2 > 0);
    X509 *a = fpc_parse(d1, n1), *a2 = fpc_parse(d1, n1), *b = fpc_parse(d2, n2);
    assert_non_null(a);
    assert_non_null(a2);
    assert_non_null(b);
    cg_fp_t want_a, want_b, got;
    assert_int_equal(cg_fp_der(d1, (size_t)n1, &want_a), 0);
    assert_int_equal(cg_fp_der(d2, (size_t)n2, &want_b), 0);
    uint64_t h0, m0, h1, m1;
    cg_fp_cache_stats(&h0, &m0);
    assert_int_equal(cg_fp_x509_cached(a, &got), 0);
    assert_memory_equal(got.b, want_a.b, CG_FP_LEN);
    assert_int_equal(cg_fp_x509_cached(a2, &got), 0);     /* another object, same bytes */
    assert_memory_equal(got.b, want_a.b, CG_FP_LEN);
    assert_int_equal(cg_fp_x509_cached(b, &got), 0);
    assert_memory_equal(got.b, want_b.b, CG_FP_LEN);
    assert_int_equal(cg_fp_x509_cached(b, &got), 0);
    assert_memory_equal(got.b, want_b.b, CG_FP_LEN);
    cg_fp_cache_stats(&h1, &m1);
    assert_int_equal(m1 - m0, 2);
    assert_int_equal(h1 - h0, 2);
    /* The same to-be-signed part signed again (ECDSA: other signature bits) is
     * another certificate, with its own fingerprint. */
    X509 *c = X509_dup(a);
    EVP_PKEY *k = EVP_EC_gen("P-256");
    assert_non_null(c);
    assert_non_null(k);
    assert_true(X509_sign(c, k, EVP_sha256()) > 0);
    unsigned char *d3 = NULL;
    int n3 = i2d_X509(c, &d3);
    assert_true(n3 > 0);
    X509 *c2 = fpc_parse(d3, n3);
    assert_non_null(c2);
    cg_fp_t want_c;
    assert_int_equal(cg_fp_der(d3, (size_t)n3, &want_c), 0);
    assert_int_equal(cg_fp_x509_cached(c2, &got), 0);
    assert_memory_equal(got.b, want_c.b, CG_FP_LEN);
    assert_memory_not_equal(got.b, want_a.b, CG_FP_LEN);
    /* Cleared (process exit): digested again, and still right. */
    cg_process_caches_free();
    cg_fp_cache_stats(&h0, &m0);
    assert_int_equal(cg_fp_x509_cached(a, &got), 0);
    assert_memory_equal(got.b, want_a.b, CG_FP_LEN);
    cg_fp_cache_stats(&h1, &m1);
    assert_int_equal(m1 - m0, 1);
    assert_int_equal(h1 - h0, 0);
    X509_free(a);
    X509_free(a2);
    X509_free(b);
    X509_free(c);
    X509_free(c2);
    EVP_PKEY_free(k);
    OPENSSL_free(d1);
    OPENSSL_free(d2);
    OPENSSL_free(d3);
}

/* fpc_cert's certificate with its outer signature algorithm given BIT STRING
 * parameters ending in `unused` unused bits: the same to-be-signed part and
 * signature, another DER. Into out (cap bytes); its length, or -1. */
static int fpc_bits_variant(const unsigned char *der, int n, int unused, unsigned char *out,
                            size_t cap)
{
    const unsigned char *p = der, *tbs, *sig, *q;
    long len, l;
    int tag, cls;
    if (ASN1_get_object(&p, &len, &tag, &cls, n) & 0x80)
        return -1;
    tbs = p;
    q = p;
    if (ASN1_get_object(&q, &l, &tag, &cls, len) & 0x80)
        return -1;
    q += l;
    size_t tbs_len = (size_t)(q - tbs);
    if (ASN1_get_object(&q, &l, &tag, &cls, len) & 0x80)     /* the algorithm: replaced */
        return -1;
    q += l;
    sig = q;
    if (ASN1_get_object(&q, &l, &tag, &cls, len) & 0x80)
        return -1;
    q += l;
    size_t sig_len = (size_t)(q - sig);
    const unsigned char alg[] = { 0x30, 0x0e, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04,
                                  0x03, 0x02, 0x03, 0x02, (unsigned char)unused, 0x80 };
    size_t body = tbs_len + sizeof(alg) + sig_len, o = 0;
    if (body > 0xffff || body + 4 > cap)
        return -1;
    out[o++] = 0x30;
    out[o++] = 0x82;
    out[o++] = (unsigned char)(body >> 8);
    out[o++] = (unsigned char)body;
    memcpy(out + o, tbs, tbs_len);
    o += tbs_len;
    memcpy(out + o, alg, sizeof(alg));
    o += sizeof(alg);
    memcpy(out + o, sig, sig_len);
    o += sig_len;
    return (int)o;
}

/* Without a SHA-1 of the certificates (OpenSSL could not fetch SHA-1: they get
 * EXFLAG_NO_FINGERPRINT), X509_cmp compares only the to-be-signed part, and
 * X509_ALGOR_cmp misses a BIT STRING parameter's unused bits: two certificates
 * that differ there must still get their own fingerprints. */
static void test_fp_cache_no_sha1(void **state)
{
    (void)state;
    unsigned char *d = NULL, v0[2048], v3[2048];
    int n = fpc_cert("fpcache no sha1", &d);
    assert_true(n > 0);
    int n0 = fpc_bits_variant(d, n, 0, v0, sizeof(v0));
    int n3 = fpc_bits_variant(d, n, 3, v3, sizeof(v3));
    assert_true(n0 > 0 && n3 > 0);
    assert_memory_not_equal(v0, v3, (size_t)n0);
    cg_fp_t want0, want3, got;
    assert_int_equal(cg_fp_der(v0, (size_t)n0, &want0), 0);
    assert_int_equal(cg_fp_der(v3, (size_t)n3, &want3), 0);
    X509 *xd = fpc_parse(d, n);      /* cg_fp.c fetches its SHA-256 once */
    assert_non_null(xd);
    assert_int_equal(cg_fp_x509(xd, &got), 0);
    X509_free(xd);
    X509 *x0 = fpc_parse(v0, n0), *x3 = fpc_parse(v3, n3);
    assert_non_null(x0);
    assert_non_null(x3);
    /* No provider answers a fetch made with the default properties now
     * (SHA-256 here comes from the method cg_fp.c fetched before). */
    assert_int_equal(EVP_set_default_properties(NULL, "provider=certgate-none"), 1);
    int r0 = cg_fp_x509_cached(x0, &got);
    cg_fp_t got0 = got;
    int r3 = cg_fp_x509_cached(x3, &got);
    uint32_t f0 = X509_get_extension_flags(x0);
    assert_int_equal(EVP_set_default_properties(NULL, ""), 1);
    assert_true((f0 & EXFLAG_NO_FINGERPRINT) != 0);
    assert_int_equal(r0, 0);
    assert_int_equal(r3, 0);
    assert_memory_equal(got0.b, want0.b, CG_FP_LEN);
    assert_memory_equal(got.b, want3.b, CG_FP_LEN);
    X509_free(x0);
    X509_free(x3);
    OPENSSL_free(d);
}

/* A certificate larger than the cache keeps (a client chooses its size, and a
 * slot holds it for the process's life) is digested each time, never held. */
static void test_fp_cache_big_not_kept(void **state)
{
    (void)state;
    EVP_PKEY *k = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    ASN1_OCTET_STRING *os = ASN1_OCTET_STRING_new();
    ASN1_OBJECT *oid = OBJ_txt2obj("1.3.6.1.4.1.55555.1", 1);
    static unsigned char filler[40000];
    memset(filler, 'z', sizeof(filler));
    assert_non_null(k);
    assert_non_null(x);
    assert_non_null(os);
    assert_non_null(oid);
    assert_int_equal(ASN1_OCTET_STRING_set(os, filler, (int)sizeof(filler)), 1);
    X509_EXTENSION *ext = X509_EXTENSION_create_by_OBJ(NULL, oid, 0, os);
    assert_non_null(ext);
    assert_true(X509_set_version(x, 2) == 1 && X509_set_pubkey(x, k) == 1 &&
                X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC,
                                           (const unsigned char *)"fpcache big", -1, -1, 0) == 1 &&
                X509_set_issuer_name(x, X509_get_subject_name(x)) == 1 &&
                X509_gmtime_adj(X509_getm_notBefore(x), 0) != NULL &&
                X509_gmtime_adj(X509_getm_notAfter(x), 86400) != NULL &&
                X509_add_ext(x, ext, -1) == 1 && X509_sign(x, k, EVP_sha256()) > 0);
    unsigned char *der = NULL;
    int n = i2d_X509(x, &der);
    assert_true(n > 40000);
    X509 *a = fpc_parse(der, n), *b = fpc_parse(der, n);
    assert_non_null(a);
    assert_non_null(b);
    cg_fp_t want, got;
    assert_int_equal(cg_fp_der(der, (size_t)n, &want), 0);
    uint64_t h0, m0, h1, m1;
    cg_fp_cache_stats(&h0, &m0);
    assert_int_equal(cg_fp_x509_cached(a, &got), 0);
    assert_memory_equal(got.b, want.b, CG_FP_LEN);
    assert_int_equal(cg_fp_x509_cached(b, &got), 0);
    assert_memory_equal(got.b, want.b, CG_FP_LEN);
    cg_fp_cache_stats(&h1, &m1);
    assert_int_equal(h1 - h0, 0);
    assert_int_equal(m1 - m0, 2);
    X509_free(a);
    X509_free(b);
    X509_free(x);
    X509_EXTENSION_free(ext);
    ASN1_OBJECT_free(oid);
    ASN1_OCTET_STRING_free(os);
    EVP_PKEY_free(k);
    OPENSSL_free(der);
}

/* A certificate named cn with key k, issued by `issuer` (NULL: self-issued)
 * and signed with signer; as PEM appended to bio. NULL on failure. */
static X509 *kept_cert(const char *cn, EVP_PKEY *k, X509 *issuer, EVP_PKEY *signer, BIO *bio)
{
    X509 *x = X509_new();
    if (x != NULL && X509_set_version(x, 2) == 1 &&
        ASN1_INTEGER_set(X509_get_serialNumber(x), 9) == 1 &&
        X509_gmtime_adj(X509_getm_notBefore(x), 0) != NULL &&
        X509_gmtime_adj(X509_getm_notAfter(x), 86400) != NULL &&
        X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC,
                                   (const unsigned char *)cn, -1, -1, 0) == 1 &&
        X509_set_issuer_name(x, X509_get_subject_name(issuer ? issuer : x)) == 1 &&
        X509_set_pubkey(x, k) == 1 && X509_sign(x, signer, EVP_sha256()) > 0 &&
        (bio == NULL || PEM_write_bio_X509(bio, x) == 1))
        return x;
    X509_free(x);
    return NULL;
}

/* Whether a and b can be kept at once: the kept ones are direct-mapped, and a
 * certificate whose slot is another's drops it. Leaves nothing kept. */
static int kept_apart(X509 *a, X509 *b)
{
    unsigned char *da = NULL, *db = NULL;
    int la = i2d_X509(a, &da), lb = i2d_X509(b, &db), apart = 0;
    if (la > 0 && lb > 0) {
        cg_cert_kept_clear();
        X509 *ka = cg_cert_d2i_kept(da, (size_t)la), *kb = cg_cert_d2i_kept(db, (size_t)lb);
        X509 *ka2 = cg_cert_d2i_kept(da, (size_t)la);
        apart = ka != NULL && kb != NULL && ka2 == ka;
        X509_free(ka);
        X509_free(kb);
        X509_free(ka2);
        cg_cert_kept_clear();
    }
    OPENSSL_free(da);
    OPENSSL_free(db);
    return apart;
}

/* Chain certificates read again come from the process's kept ones, only for
 * the same bytes; a remembered signature check holds for that issuer object
 * alone (another key under the same name is checked, and fails). */
static void test_cert_kept(void **state)
{
    (void)state;
    cg_cert_kept_clear();
    EVP_PKEY *kr = EVP_EC_gen("P-256"), *kl = EVP_EC_gen("P-256"), *kw = EVP_EC_gen("P-256");
    BIO *bundle = BIO_new(BIO_s_mem()), *rootonly = BIO_new(BIO_s_mem());
    assert_true(kr && kl && kw && bundle && rootonly);
    X509 *root = kept_cert("kept root", kr, NULL, kr, NULL);
    assert_non_null(root);
    /* The leaf is kept below too: one not in the root's slot (its ECDSA
     * signature differs each time), else the test fails 1 run in 64. */
    X509 *leaf = NULL;
    for (int tries = 0; tries < 20 && leaf == NULL; tries++) {
        leaf = kept_cert("kept leaf", kl, root, kr, NULL);
        assert_non_null(leaf);
        if (!kept_apart(root, leaf)) {
            X509_free(leaf);
            leaf = NULL;
        }
    }
    assert_non_null(leaf);
    assert_int_equal(PEM_write_bio_X509(bundle, leaf), 1);
    assert_int_equal(PEM_write_bio_X509(bundle, root), 1);
    assert_int_equal(PEM_write_bio_X509(rootonly, root), 1);
    /* Same name as root, another key: issues nothing root issued. */
    X509 *wrong = kept_cert("kept root", kw, NULL, kw, NULL);
    assert_non_null(wrong);
    char *b = NULL, *ro = NULL;
    long bl = BIO_get_mem_data(bundle, &b), rl = BIO_get_mem_data(rootonly, &ro);
    char err[200];
    uint64_t h0, m0, l0, h1, m1, l1;
    cg_cert_kept_stats(&h0, &m0, &l0);
    STACK_OF(X509) *s1 = cg_cert_read_all_kept((const unsigned char *)b, (size_t)bl, NULL, 1,
                                               err, sizeof(err));
    STACK_OF(X509) *s2 = cg_cert_read_all_kept((const unsigned char *)b, (size_t)bl, NULL, 1,
                                               err, sizeof(err));
    assert_non_null(s1);
    assert_non_null(s2);
    assert_int_equal(sk_X509_num(s1), 2);
    assert_int_equal(sk_X509_num(s2), 2);
    assert_ptr_not_equal(sk_X509_value(s1, 0), sk_X509_value(s2, 0));   /* the leaf: never kept */
    assert_ptr_equal(sk_X509_value(s1, 1), sk_X509_value(s2, 1));       /* the root: kept */
    assert_int_equal(X509_cmp(sk_X509_value(s2, 1), root), 0);
    cg_cert_kept_stats(&h1, &m1, &l1);
    assert_int_equal(m1 - m0, 1);
    assert_int_equal(h1 - h0, 1);
    /* cg_cert_read_all keeps nothing. */
    STACK_OF(X509) *s3 = cg_cert_read_all((const unsigned char *)ro, (size_t)rl, NULL, err,
                                          sizeof(err));
    assert_non_null(s3);
    assert_ptr_not_equal(sk_X509_value(s3, 0), sk_X509_value(s1, 1));
    X509 *kroot = sk_X509_value(s1, 1);
    /* The root's self-signature: checked once, then remembered for that object. */
    assert_int_equal(cg_cert_link(kroot, kroot), X509_V_OK);
    assert_int_equal(cg_cert_link(kroot, kroot), X509_V_OK);
    cg_cert_kept_stats(&h1, &m1, &l1);
    assert_int_equal(l1 - l0, 1);
    /* A kept leaf (keep_from 0) under the kept root: remembered per issuer. */
    STACK_OF(X509) *s4 = cg_cert_read_all_kept((const unsigned char *)b, (size_t)bl, NULL, 0,
                                               err, sizeof(err));
    assert_non_null(s4);
    X509 *kleaf = sk_X509_value(s4, 0);
    assert_ptr_equal(sk_X509_value(s4, 1), kroot);
    assert_int_equal(cg_cert_link(kleaf, kroot), X509_V_OK);
    assert_int_equal(cg_cert_link(kleaf, kroot), X509_V_OK);
    assert_int_equal(cg_cert_link(kleaf, wrong), X509_V_ERR_CERT_SIGNATURE_FAILURE);
    assert_int_equal(cg_cert_link(kleaf, sk_X509_value(s3, 0)), X509_V_OK);  /* not kept: checked */
    cg_cert_kept_stats(&h1, &m1, &l1);
    assert_int_equal(l1 - l0, 2);
    /* The root with one signature bit flipped: other bytes, another object
     * that fails its own check; and trailing bytes are refused. */
    unsigned char *der = NULL;
    int n = i2d_X509(root, &der);
    assert_true(n > 0);
    der[n - 1] ^= 0x01;
    X509 *flipped = cg_cert_d2i_kept(der, (size_t)n);
    assert_non_null(flipped);
    assert_ptr_not_equal(flipped, kroot);
    assert_int_equal(cg_cert_link(flipped, flipped), X509_V_ERR_CERT_SIGNATURE_FAILURE);
    der[n - 1] ^= 0x01;
    X509 *again = cg_cert_d2i_kept(der, (size_t)n);
    assert_ptr_equal(again, kroot);
    unsigned char *longer = malloc((size_t)n + 1);
    assert_non_null(longer);
    memcpy(longer, der, (size_t)n);
    longer[n] = 0;
    assert_null(cg_cert_d2i_kept(longer, (size_t)n + 1));
    free(longer);
    OPENSSL_free(der);
    X509_free(flipped);
    X509_free(again);
    sk_X509_pop_free(s1, X509_free);
    sk_X509_pop_free(s2, X509_free);
    sk_X509_pop_free(s3, X509_free);
    sk_X509_pop_free(s4, X509_free);
    X509_free(root);
    X509_free(leaf);
    X509_free(wrong);
    BIO_free(bundle);
    BIO_free(rootonly);
    EVP_PKEY_free(kr);
    EVP_PKEY_free(kl);
    EVP_PKEY_free(kw);
    cg_cert_kept_clear();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_allow),
        cmocka_unit_test(test_lookup_steps),
        cmocka_unit_test(test_gate_cache_protocol),
        cmocka_unit_test(test_gate_memo),
        cmocka_unit_test(test_gate_max_age),
        cmocka_unit_test(test_gate_invalidation_during_lookup),
        cmocka_unit_test(test_gate_store_errors),
        cmocka_unit_test(test_gate_no_lookup_and_cert_only),
        cmocka_unit_test(test_gate_run_and_lifecycle),
        cmocka_unit_test(test_gate_shadow),
        cmocka_unit_test(test_gate_shadow_store_error),
        cmocka_unit_test(test_x5t_s256),
        cmocka_unit_test(test_store_result_kinds),
        cmocka_unit_test(test_lookup_id_and_owner_steps),
        cmocka_unit_test(test_app_owner_decision),
        cmocka_unit_test(test_conn_entry),
        cmocka_unit_test(test_deny_body),
        cmocka_unit_test(test_no_client_cert),
        cmocka_unit_test(test_unregistered),
        cmocka_unit_test(test_statuses),
        cmocka_unit_test(test_validity_edges),
        cmocka_unit_test(test_window_edges),
        cmocka_unit_test(test_app_mismatch),
        cmocka_unit_test(test_app_ambiguous),
        cmocka_unit_test(test_header_name_same),
        cmocka_unit_test(test_metrics_count_app_ambiguous),
        cmocka_unit_test(test_chain_rules),
        cmocka_unit_test(test_check_order),
        cmocka_unit_test(test_reason_names_and_status),
        cmocka_unit_test(test_expire_in_days),
        cmocka_unit_test(test_hex),
        cmocka_unit_test(test_parse_i64),
        cmocka_unit_test(test_decode_record),
        cmocka_unit_test(test_decode_rejects),
        cmocka_unit_test(test_status_names),
        cmocka_unit_test(test_fingerprint_matches_openssl_cli),
        cmocka_unit_test(test_store_config_checks),
        cmocka_unit_test(test_store_unreachable_is_bounded),
        cmocka_unit_test(test_cache_lru_bound_and_age),
        cmocka_unit_test(test_cache_invalidation_beats_a_racing_put),
        cmocka_unit_test(test_metrics_render),
        cmocka_unit_test(test_admin_routes),
        cmocka_unit_test(test_admin_cross_site),
        cmocka_unit_test(test_admin_console_files),
        cmocka_unit_test(test_sentinel_event_outside_lock),
        cmocka_unit_test(test_usage_batch_steps),
        cmocka_unit_test(test_usage_hint),
        cmocka_unit_test(test_usage_hint_address),
        cmocka_unit_test(test_sub_messages),
        cmocka_unit_test(test_conn_entry_other_cache),
        cmocka_unit_test(test_fp_cache),
        cmocka_unit_test(test_fp_cache_no_sha1),
        cmocka_unit_test(test_fp_cache_big_not_kept),
        cmocka_unit_test(test_cert_kept),
    };
    return cmocka_run_group_tests_name("certgate core", tests, NULL, NULL);
}
