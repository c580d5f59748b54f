"""Store results by kind (permission, timeout, connection, corrupt), the operator
guide's ACL users, record ids that differ from their key, and the app's owner."""
import os
import re
import time

import pytest
import requests

from admin import Admin, error_code
from clients import get, reason_of
from conftest import SERVERS, Stack
from harness import ROOT, Redis, flush_store, invalidate, register
from pki import make_cert

GATED = "/gated/ok.txt"
OPS = "CertGateExpiryCheckInterval 1\nCertGateExpiryWarnDays 90 60 30 7"
METRICS = '<Location "/metrics">\n    SetHandler certgate-metrics\n  </Location>'


def scrape(stack):
    resp = requests.get(stack.httpd.url("/metrics"), verify=stack.server_ca, timeout=10)
    assert resp.status_code == 200
    out = {}
    for line in resp.text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def expiry_events(r):
    return [e for _, e in r.xrange("certgate:events")
            if e[b"action"] in (b"cert.expiring", b"cert.expired")]


def acl_conf(user, password):
    return lambda r: ("CertGateRedis 127.0.0.1:%d\nCertGateRedisAuth %s %s\nCertGateRedisDB %d"
                      % (r.port, user, password, r.DB))


# ---------------------------------------------------------------- the guide's ACL users

def guide_acl_lines():
    with open(os.path.join(ROOT, "docs", "operator-guide.md")) as f:
        text = f.read()
    return {m.group(1): m.group(2).split() for m in
            re.finditer(r"^redis-cli ACL SETUSER (\S+) on '>[^']*' (.*)$", text, re.M)}


def test_guide_acl_lines_are_the_harness_users():
    lines = guide_acl_lines()
    keys = ["'~certgate:*'", "'&certgate:*'"]
    assert lines[Redis.ACL_USER] == keys + Redis.GATE_ACL
    assert lines[Redis.ADMIN_ACL_USER] == keys + Redis.ADMIN_ACL


def test_gateway_acl_user_runs_scrape_and_expiry_scan(pki):
    s = Stack(pki, store_conf=acl_conf(Redis.ACL_USER, Redis.ACL_PASSWORD),
              extra_server=OPS, extra_vhost=METRICS)
    try:
        register(s.r, make_cert("expiring in 20 days", issuer=pki.inter, days=20), "app1")
        register(s.r, pki.leaf, "app2")
        deadline = time.time() + 5
        while time.time() < deadline and not expiry_events(s.r):
            time.sleep(0.2)
        ev = expiry_events(s.r)
        assert [e[b"threshold"] for e in ev] == [b"30"], ev
        m = scrape(s)
        assert m["certgate_store_up"] == 1
        assert m['certgate_registrations{status="APPROVED"}'] == 2
        assert m['certgate_store_scrape_error{kind="permission"}'] == 0
        assert get(s, GATED, pki.leaf).status_code == 200
        log = s.httpd.read_log()
        for tag in ("CG08003", "CG08004", "CG08005", "CG02001", "CG02005"):
            assert tag not in log, log
        assert Redis.ACL_USER in [c.get("user") for c in s.r.client_list()]
    finally:
        s.close()


def test_admin_acl_user_runs_the_admin_api(pki):
    s = Stack(pki, store_conf=acl_conf(Redis.ADMIN_ACL_USER, Redis.ADMIN_ACL_PASSWORD),
              extra_server=OPS, extra_vhost=METRICS)
    try:
        api = Admin(s)
        # Every kind of admin write runs under the documented user.
        for path, body in (("/customers", {"customerId": "cust-1"}),
                           ("/apps", {"appId": "app1", "customerId": "cust-1"})):
            resp = api.call("POST", path, "mgr1", json=body)
            assert resp.status_code == 201, resp.text
        resp = api.call("PATCH", "/customers/cust-1", "mgr1", json={"name": "One"})
        assert resp.status_code == 200, resp.text
        assert api.call("GET", "/apps", "aud1").status_code == 200
        old = api.approved(pki.leaf)
        new = api.approved(pki.leaf_b)
        now = int(time.time())
        body = {"newCertId": new, "oldCertId": old,
                "activateAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + 3600)),
                "retireOldAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + 7200))}
        resp = api.call("POST", "/apps/app1/rotations", "sup1", json=body)
        assert resp.status_code == 201, resp.text
        rot = resp.json()["id"]
        assert api.call("GET", "/apps/app1", "sup1").status_code == 200
        assert api.call("GET", "/apps/app1/rotations", "aud1").status_code == 200
        assert api.call("DELETE", "/apps/app1/rotations/" + rot, "sup1").status_code == 204
        assert api.call("GET", "/events", "aud1").status_code == 200
        assert scrape(s)["certgate_store_up"] == 1
        log = s.httpd.read_log()
        assert "Store.PermissionDenied" not in log and "NOPERM" not in log, log
    finally:
        s.close()


# ---------------------------------------------------------------- NOPERM is permission

NOPERM_USER, NOPERM_PASSWORD = "certgate-noperm", "test-acl-noperm"


def test_noperm_is_reported_as_permission_not_corrupt(pki):
    # The gateway user without get (the gate's first lookup step) and smembers (the scans).
    def conf(r):
        r.client().execute_command(
            "ACL", "SETUSER", NOPERM_USER, "on", ">" + NOPERM_PASSWORD, *Redis.ACL_KEYS,
            *[c for c in Redis.GATE_ACL if c not in ("+get", "+smembers")])
        return acl_conf(NOPERM_USER, NOPERM_PASSWORD)(r)
    s = Stack(pki, store_conf=conf, extra_server=OPS, extra_vhost=METRICS)
    try:
        register(s.r, make_cert("expiring in 20 days", issuer=pki.inter, days=20), "app1")
        register(s.r, pki.leaf, "app1")
        m0 = scrape(s)
        resp = get(s, GATED, pki.leaf)
        assert resp.status_code == 503 and reason_of(resp) == "store_unavailable"
        m1 = scrape(s)
        assert m1['certgate_redis_lookups_total{outcome="permission"}'] == \
            m0['certgate_redis_lookups_total{outcome="permission"}'] + 1
        assert m1['certgate_redis_lookups_total{outcome="error"}'] == 0
        assert m1["certgate_store_up"] == 0
        assert m1['certgate_store_scrape_error{kind="permission"}'] == 1
        assert m1['certgate_store_scrape_error{kind="corrupt"}'] == 0
        resp = Admin(s).call("GET", "/apps/app1", "sup1")
        assert resp.status_code == 500 and error_code(resp) == "Store.PermissionDenied", resp.text
        deadline = time.time() + 5
        while time.time() < deadline and "CG08004" not in s.httpd.read_log():
            time.sleep(0.2)
        log = s.httpd.read_log()
        assert "CG02005" in log and "permission" in log
        assert "CG08004" in log and "CG08005" in log
        for tag in ("CG02001", "CG02003", "CG08003"):
            assert tag not in log, log
        assert "damaged" not in log
    finally:
        s.close()


def test_noperm_on_nginx_is_permission(pki):
    def conf(r):
        r.client().execute_command(
            "ACL", "SETUSER", NOPERM_USER, "on", ">" + NOPERM_PASSWORD, *Redis.ACL_KEYS,
            *[c for c in Redis.GATE_ACL if c != "+hget"])
        return ("certgate_redis 127.0.0.1:%d;\ncertgate_redis_auth %s %s;\ncertgate_redis_db %d;"
                % (r.port, NOPERM_USER, NOPERM_PASSWORD, r.DB))
    s = Stack(pki, server="nginx", store_conf=conf)
    try:
        register(s.r, pki.leaf, "app1")
        resp = get(s, GATED, pki.leaf)       # index and record read; the owner's HGET refused
        assert resp.status_code == 503 and reason_of(resp) == "store_unavailable"
        log = s.server.read_log()
        assert "CG02005" in log and "permission" in log
        assert "CG02003" not in log and "CG02001" not in log
    finally:
        s.close()


# ---------------------------------------------------------------- both servers, no cache

@pytest.fixture(scope="module", params=SERVERS)
def stack(request, pki):
    s = Stack(pki, server=request.param, extra_server="CertGateCache Off",
              nginx_args={"extra_http": "certgate_cache off;"})
    yield s
    s.close()


@pytest.fixture(autouse=True)
def clean(request):
    if "stack" in request.fixturenames:
        flush_store(request.getfixturevalue("stack").r)


def test_record_whose_id_differs_from_its_key_is_corrupt(stack, pki):
    rid = register(stack.r, pki.leaf, "app1")
    assert get(stack, GATED, pki.leaf).status_code == 200
    stack.r.hset("certgate:reg:" + rid, "id", "someone-else")
    invalidate(stack.r, pki.leaf.fingerprint)
    resp = get(stack, GATED, pki.leaf)
    assert resp.status_code == 503 and reason_of(resp) == "store_unavailable"
    log = stack.server.read_log()
    assert "CG02003" in log and "record id differs from its key" in log


def test_app_owned_by_the_registrations_customer_is_allowed(stack, pki):
    register(stack.r, pki.leaf, "app1", customer="cust-1")
    assert stack.r.hget("certgate:appinfo:app1", "customer_id") == b"cust-1"
    assert stack.r.sismember("certgate:apps", "app1")
    resp = get(stack, GATED, pki.leaf)
    assert resp.status_code == 200, resp.text


def test_app_of_another_customer_is_app_mismatch(stack, pki):
    register(stack.r, pki.leaf, "app1", customer="cust-1", app_owner="cust-2")
    resp = get(stack, GATED, pki.leaf)
    assert resp.status_code == 403 and reason_of(resp) == "app_mismatch"


def test_app_without_owner_record_is_app_mismatch(stack, pki):
    register(stack.r, pki.leaf, "app1", appinfo=False)
    resp = get(stack, GATED, pki.leaf)
    assert resp.status_code == 403 and reason_of(resp) == "app_mismatch"
    # An app record without customer_id is no owner either.
    stack.r.hset("certgate:appinfo:app1", "id", "app1")
    invalidate(stack.r, pki.leaf.fingerprint)
    assert reason_of(get(stack, GATED, pki.leaf)) == "app_mismatch"
    stack.r.hset("certgate:appinfo:app1", "customer_id", "cust-1")
    invalidate(stack.r, pki.leaf.fingerprint)
    assert get(stack, GATED, pki.leaf).status_code == 200


def test_app_owner_that_does_not_decode_is_corrupt(stack, pki):
    register(stack.r, pki.leaf, "app1", app_owner="cust:1")
    resp = get(stack, GATED, pki.leaf)
    assert resp.status_code == 503 and reason_of(resp) == "store_unavailable"
    assert "CG02003" in stack.server.read_log()
