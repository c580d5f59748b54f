"""Tenancy and integrity of the registry, against real redis and each server: one identity
rule, apps owned by customers, customers and apps in the API, writes that are
all-or-nothing, the audit query, If-Match."""
import os
import subprocess
import threading
import time

import pytest

from admin import Admin, error_code, seed
from clients import get, reason_of
from conftest import SERVERS, Stack
from harness import ROOT, Redis, flush_store
from pki import make_cert
from test_admin import redis_snapshot

GATED = "/gated/ok.txt"
EXTRA = """
  <Location "/admin/fold">
    CertGateAdminUserMatch IgnoreCase
  </Location>
  <Location "/admin/clash">
    CertGateAdminUserMatch IgnoreCase
    CertGateAdminCustomer cust-1 devmgr
    CertGateAdminCustomer cust-2 DevMgr
  </Location>
  <Location "/admin/org">
    CertGatePolicyCnContainsOrg On
  </Location>
  <Location "/scoped">
    SetHandler certgate-admin
    AuthType Basic
    AuthName "certgate admin"
    AuthBasicProvider file
    AuthUserFile "{work}/admin.htpasswd"
    Require valid-user
    CertGateAdminRole developer dev1 dev2
    CertGateAdminRole manager mgr1 mgr2
    CertGateAdminRole support sup1 sup2
    CertGateAdminRole auditor aud1 aud2
    CertGateAdminCustomer cust-1 dev1 mgr2
    CertGateAdminCustomer cust-2 dev2 sup2 aud2
  </Location>
"""


# The same on nginx: the first three inside its /admin, /scoped beside it.
NGX_ADMIN = """
            location /admin/fold/ { certgate_admin_user_match ignore_case; }
            location /admin/clash/ {
                certgate_admin_user_match ignore_case;
                certgate_admin_customer cust-1 devmgr;
                certgate_admin_customer cust-2 DevMgr;
            }
            location /admin/org/ { certgate_policy_cn_contains_org on; }
"""
NGX_SERVER = """
        location /scoped {
            certgate_admin;
            auth_basic "certgate admin";
            auth_basic_user_file {work}/admin.htpasswd;
            certgate_admin_user $remote_user;
            certgate_admin_role developer dev1 dev2;
            certgate_admin_role manager mgr1 mgr2;
            certgate_admin_role support sup1 sup2;
            certgate_admin_role auditor aud1 aud2;
            certgate_admin_customer cust-1 dev1 mgr2;
            certgate_admin_customer cust-2 dev2 sup2 aud2;
        }
"""


@pytest.fixture(scope="module", params=SERVERS)
def stack(pki, request):
    s = Stack(pki, server=request.param, extra_vhost=EXTRA,
              nginx_args={"extra_admin": NGX_ADMIN, "extra_server": NGX_SERVER})
    yield s
    s.close()


@pytest.fixture(autouse=True)
def clean(stack):
    flush_store(stack.r)
    seed(stack.r)


@pytest.fixture
def api(stack):
    return Admin(stack)


def status_of(stack, cid):
    return stack.r.hget("certgate:reg:" + cid, "status").decode()


def events(stack):
    return [{k.decode(): v.decode() for k, v in e[1].items()}
            for e in stack.r.xrange("certgate:events")]


# ---------------------------------------------------------------- item 1: identity

def test_user_names_match_exactly_by_default(stack, api, pki):
    cid = api.upload(pki.leaf, user="devmgr").json()["id"]
    # DEVMGR is another user: no role, whatever devmgr may do.
    resp = api.call("POST", "/certs/%s/approve" % cid, "DEVMGR")
    assert resp.status_code == 403 and error_code(resp) == "Auth.Forbidden"
    resp = api.call("POST", "/certs/%s/approve" % cid, "devmgr")
    assert resp.status_code == 403 and error_code(resp) == "Transition.FourEyes"
    assert status_of(stack, cid) == "PENDING"
    for call in (lambda: api.call("GET", "/certs", "Dev1"),
                 lambda: api.upload(pki.leaf_b, user="Dev1")):
        resp = call()
        assert resp.status_code == 403 and error_code(resp) == "Auth.Forbidden", resp.text
    assert [e["user"] for e in events(stack)] == ["devmgr"]


def test_ignore_case_is_one_identity_everywhere(stack, pki):
    fold = Admin(stack, "/admin/fold")
    resp = fold.upload(pki.leaf, user="DEVMGR")
    assert resp.status_code == 201, resp.text
    cid = resp.json()["id"]
    assert resp.json()["createdBy"] == "devmgr" and resp.json()["customerId"] == "cust-1"
    for user in ("devmgr", "DEVMGR"):
        resp = fold.call("POST", "/certs/%s/approve" % cid, user)
        assert resp.status_code == 403 and error_code(resp) == "Transition.FourEyes", user
    resp = fold.call("POST", "/certs/%s/approve" % cid, "mgr1")
    assert resp.status_code == 200 and resp.json()["updatedBy"] == "mgr1"
    resp = fold.upload(pki.leaf_b, user="Dev1")
    assert resp.status_code == 201 and resp.json()["createdBy"] == "dev1"
    assert [e["user"] for e in events(stack)] == ["devmgr", "mgr1", "dev1"]


def test_one_folded_name_with_two_customers_gets_no_role(stack, pki):
    clash = Admin(stack, "/admin/clash")
    resp = clash.call("GET", "/certs", "DEVMGR")
    assert resp.status_code == 403 and error_code(resp) == "Auth.Forbidden"
    assert "CG06002" in stack.server.read_log()


# ---------------------------------------------------------------- item 2: apps have owners

def test_upload_for_an_unknown_app_is_refused(stack, api, pki):
    before = redis_snapshot(stack.r)
    resp = api.upload(pki.leaf, app="nobodys-app")
    assert resp.status_code == 404 and error_code(resp) == "App.NotFound"
    assert redis_snapshot(stack.r) == before


def test_another_customers_app_is_refused_everywhere(stack, api, pki):
    cid = api.approved(pki.leaf)            # app1 of cust-1
    before = redis_snapshot(stack.r)
    scoped = Admin(stack, "/scoped")
    rot = {"newCertId": cid, "oldCertId": cid, "activateAt": "2030-01-01T00:00:00Z",
           "retireOldAt": "2030-02-01T00:00:00Z"}
    calls = {
        "upload": lambda: api.upload(pki.leaf_other, app="app1", user="dev2"),
        "check": lambda: api.call("POST", "/check", "dev2", json={
            "certificate": pki.leaf_b.pem.decode(), "chain": pki.leaf_b.der_chain_pem(),
            "appId": "app1"}),
        "list": lambda: api.call("GET", "/certs?appId=app1", "dev2"),
        "app": lambda: api.call("GET", "/apps/app1", "dev2"),
        "rotate": lambda: scoped.call("POST", "/apps/app1/rotations", "sup2", json=rot),
        "rotations": lambda: scoped.call("GET", "/apps/app1/rotations", "sup2"),
    }
    for name, call in calls.items():
        resp = call()
        assert resp.status_code == 403 and error_code(resp) == "App.CustomerMismatch", \
            (name, resp.text)
    assert redis_snapshot(stack.r) == before
    # A confined manager cannot approve what it cannot see.
    cid2 = api.upload(pki.leaf_other, app="app2", user="dev2").json()["id"]
    resp = scoped.call("POST", "/certs/%s/approve" % cid2, "mgr2")
    assert resp.status_code == 404 and error_code(resp) == "Certificate.NotFound"
    assert status_of(stack, cid2) == "PENDING"


def test_registrations_take_the_apps_customer(stack, api, pki):
    # A manager registers the app for cust-2; only cust-2's developers upload for it.
    resp = api.call("POST", "/apps", "mgr1", json={"appId": "new-app", "customerId": "cust-2"})
    assert resp.status_code == 201, resp.text
    resp = api.upload(pki.leaf_other, app="new-app", user="dev2")
    assert resp.status_code == 201 and resp.json()["customerId"] == "cust-2"
    resp = api.upload(pki.leaf_b, app="new-app", user="dev1")
    assert resp.status_code == 403 and error_code(resp) == "App.CustomerMismatch"


LEGACY = {"r-a1": ("old-a", "cust-1"), "r-a2": ("old-a", ""), "r-b1": ("old-b", "cust-1"),
          "r-b2": ("old-b", "cust-2"), "r-c1": ("old-c", "")}


def write_legacy(stack, pki):
    """Registrations from before apps had owners: no appinfo records."""
    certs = {}
    for rid, (app, cust) in LEGACY.items():
        c = make_cert("legacy " + rid, issuer=pki.inter)
        certs[rid] = c
        rec = {"id": rid, "app_id": app, "customer_id": cust, "status": "APPROVED",
               "fingerprint": c.fingerprint, "chain": ",".join(c.chain_fingerprints),
               "valid_from": str(c.not_before), "valid_to": str(c.not_after), "version": "1"}
        stack.r.hset("certgate:reg:" + rid, mapping=rec)
        stack.r.set("certgate:fp:" + c.fingerprint, rid)
        stack.r.sadd("certgate:app:" + app, rid)
        stack.r.sadd("certgate:regs", rid)
    stack.r.publish("certgate:invalidate", "flush")
    time.sleep(0.1)
    return certs


def test_migration_script_gives_apps_their_owner(stack, pki):
    certs = write_legacy(stack, pki)
    script = os.path.join(ROOT, "scripts", "migrate-app-owners.lua")
    base = ["redis-cli", "-p", str(stack.redis.port), "-n", str(Redis.DB), "--no-auth-warning",
            "-a", Redis.PASSWORD, "--eval", script, ",", "certgate:"]
    before = redis_snapshot(stack.r)
    dry = subprocess.run(base, capture_output=True, text=True, check=True).stdout
    assert "old-a: owner cust-1" in dry and "old-b: conflict" in dry and \
        "old-c: no customer" in dry, dry
    assert redis_snapshot(stack.r) == before
    out = subprocess.run(base + ["apply"], capture_output=True, text=True, check=True).stdout
    assert "old-a: owner cust-1" in out, out
    assert stack.r.hget("certgate:appinfo:old-a", "customer_id") == b"cust-1"
    assert stack.r.hget("certgate:reg:r-a2", "customer_id") == b"cust-1"
    assert not stack.r.exists("certgate:appinfo:old-b", "certgate:appinfo:old-c")
    assert [e["action"] for e in events(stack)] == ["app.create"]
    # A second run changes nothing.
    before = redis_snapshot(stack.r)
    subprocess.run(base + ["apply"], capture_output=True, text=True, check=True)
    assert redis_snapshot(stack.r) == before
    time.sleep(0.2)
    assert get(stack, GATED, certs["r-a2"]).status_code == 200
    # The conflict is resolved by a manager: inactivate the stray one, then register the app.
    api = Admin(stack)
    resp = api.call("POST", "/apps", "mgr1", json={"appId": "old-b", "customerId": "cust-1"})
    assert resp.status_code == 409 and error_code(resp) == "App.Conflict"
    assert "r-b2" in resp.json()["message"]
    resp = api.call("POST", "/certs/r-b2/inactivate", "mgr1", json={"reason": "wrong customer"})
    assert resp.status_code == 200, resp.text
    resp = api.call("POST", "/apps", "mgr1", json={"appId": "old-b", "customerId": "cust-1"})
    assert resp.status_code == 201, resp.text
    resp = api.call("POST", "/apps", "mgr1", json={"appId": "old-c", "customerId": "cust-2"})
    assert resp.status_code == 201, resp.text
    assert stack.r.hget("certgate:reg:r-c1", "customer_id") == b"cust-2"


# ---------------------------------------------------------------- item 3: customers and apps API

def test_customers_and_apps_api(stack, api, pki):
    resp = api.call("POST", "/customers", "mgr1",
                    json={"customerId": "cust-9", "name": "Nine", "organization": "Nine Bank"})
    assert resp.status_code == 201 and resp.headers["ETag"] == '"v1"', resp.text
    assert resp.headers["Location"] == "/admin/customers/cust-9"
    assert resp.json()["organization"] == "Nine Bank" and resp.json()["createdBy"] == "mgr1"
    resp = api.call("POST", "/customers", "mgr1", json={"customerId": "cust-9"})
    assert resp.status_code == 409 and error_code(resp) == "Customer.Exists"
    for bad in ({"customerId": "a b"}, {"name": "x"}, {"customerId": "c", "extra": 1}):
        resp = api.call("POST", "/customers", "mgr1", json=bad)
        assert resp.status_code == 400 and error_code(resp) == "Request.Invalid", bad
    resp = api.call("POST", "/customers", "devmgr", json={"customerId": "cust-8"})
    assert resp.status_code == 403 and error_code(resp) == "Auth.Forbidden"
    resp = api.call("PATCH", "/customers/cust-9", "mgr1", json={"organization": "Nine Ltd"},
                    headers={"If-Match": '"v7"'})
    assert resp.status_code == 412 and error_code(resp) == "Precondition.Failed"
    resp = api.call("PATCH", "/customers/cust-9", "mgr1", json={"organization": "Nine Ltd"},
                    headers={"If-Match": '"v1"'})
    assert resp.status_code == 200 and resp.headers["ETag"] == '"v2"', resp.text
    assert api.call("GET", "/customers/cust-9", "aud1").json()["organization"] == "Nine Ltd"
    assert api.call("GET", "/customers/cust-9", "dev1").status_code == 404
    assert api.call("GET", "/customers/cust-1", "dev1").status_code == 200
    assert [c["customerId"] for c in api.call("GET", "/customers", "dev1").json()["items"]] == \
        ["cust-1"]
    assert len(api.call("GET", "/customers", "aud1").json()["items"]) == 3

    resp = api.call("POST", "/apps", "mgr1", json={"appId": "nine-app", "customerId": "cust-9",
                                                   "name": "Nine's app"})
    assert resp.status_code == 201 and resp.json()["customerId"] == "cust-9"
    resp = api.call("POST", "/apps", "mgr1", json={"appId": "nine-app", "customerId": "cust-9"})
    assert resp.status_code == 409 and error_code(resp) == "App.Exists"
    resp = api.call("POST", "/apps", "mgr1", json={"appId": "x-app", "customerId": "nope"})
    assert resp.status_code == 404 and error_code(resp) == "Customer.NotFound"
    resp = api.call("POST", "/apps", "dev1", json={"appId": "x-app", "customerId": "cust-1"})
    assert resp.status_code == 403 and error_code(resp) == "Auth.Forbidden"
    resp = api.call("PATCH", "/apps/nine-app", "mgr1", json={"customerId": "cust-1"})
    assert resp.status_code == 409 and error_code(resp) == "App.OwnerFixed"
    resp = api.call("PATCH", "/apps/nine-app", "mgr1", json={"name": "Nine"})
    assert resp.status_code == 200 and resp.json()["name"] == "Nine"
    resp = api.call("GET", "/apps/nine-app", "aud1")
    assert resp.status_code == 200 and resp.headers["ETag"] == '"v2"'
    assert resp.json()["customerId"] == "cust-9" and resp.json()["certificates"] == []
    apps = [a["appId"] for a in api.call("GET", "/apps", "dev2").json()["items"]]
    assert apps == ["app2"]
    got = [(e["action"], e["user"]) for e in events(stack)]
    assert got == [("customer.create", "mgr1"), ("customer.update", "mgr1"),
                   ("app.create", "mgr1"), ("app.update", "mgr1")]


def test_check_runs_exactly_the_upload_policy(stack, pki):
    org = Admin(stack, "/admin/org")
    acme = make_cert("Acme Payments client", issuer=pki.inter)
    resp = org.call("PATCH", "/customers/cust-1", "mgr1", json={"organization": "Acme"})
    assert resp.status_code == 200, resp.text
    for cert, code in ((pki.leaf, "Policy.CommonNameOrganization"), (acme, None)):
        body = {"certificate": cert.pem.decode(), "chain": cert.der_chain_pem(), "appId": "app1"}
        check = org.call("POST", "/check", "dev1", json=body).json()["policy"]
        up = org.call("POST", "/certs", "dev1", json=body)
        assert check["code"] == code, check
        assert (up.status_code == 201) == (code is None) and \
            (code is None or error_code(up) == code), up.text
    # The same rule for an expired certificate and for a key that does not match.
    body = {"certificate": acme.pem.decode(), "chain": acme.der_chain_pem(), "appId": "app1",
            "privateKey": pki.leaf.key_pem().decode()}
    assert org.call("POST", "/check", "dev1", json=body).json()["policy"]["code"] == \
        "PrivateKey.Invalid"


# ---------------------------------------------------------------- item 4: no half writes

class Listener:
    """Every message published on the invalidation channel while it runs."""

    def __init__(self, r):
        self.ps = r.pubsub()
        self.ps.subscribe("certgate:invalidate")
        self.ps.get_message(timeout=1)
        self.got = []

    def drain(self):
        time.sleep(0.2)
        while True:
            m = self.ps.get_message(timeout=0.1)
            if m is None:
                break
            self.got.append(m)
        self.ps.close()
        return self.got


def prep_cert(api, pki, approve=False):
    cid = api.upload(pki.leaf).json()["id"]
    if approve:
        api.call("POST", "/certs/%s/approve" % cid, "mgr1")
    return cid


OPS = {
    "upload": (lambda api, pki, ctx: api.upload(pki.leaf_b),
               ["fp:{leaf_b}", "app:app1", "regs", "events", "gen", "schema", "appinfo:app1"]),
    "approve": (lambda api, pki, ctx: api.call("POST", "/certs/%s/approve" % ctx["cid"], "mgr1"),
                ["reg:{cid}", "reg:{cid}#version", "events", "gen"]),
    "inactivate": (lambda api, pki, ctx: api.call("POST", "/certs/%s/inactivate" % ctx["old"],
                                                  "mgr1", json={"reason": "x"}),
                   ["reg:{old}#version", "events", "gen"]),
    "rotate": (lambda api, pki, ctx: api.call("POST", "/apps/app1/rotations", "sup1", json={
        "newCertId": ctx["new"], "oldCertId": ctx["old"], "activateAt": "2031-01-01T00:00:00Z",
        "retireOldAt": "2031-02-01T00:00:00Z"}),
        ["reg:{old}#version", "reg:{new}#version", "rotations:app1", "events", "gen"]),
    "customer": (lambda api, pki, ctx: api.call("POST", "/customers", "mgr1",
                                                json={"customerId": "cust-7"}),
                 ["customers", "customer:cust-7", "events", "gen"]),
    "app": (lambda api, pki, ctx: api.call("POST", "/apps", "mgr1",
                                           json={"appId": "app7", "customerId": "cust-1"}),
            ["apps", "app:app7", "appinfo:app7", "events", "gen"]),
    "patch": (lambda api, pki, ctx: api.call("PATCH", "/customers/cust-1", "mgr1",
                                             json={"name": "One"}),
              ["customer:cust-1#version", "events", "gen"]),
}
CASES = [(op, key) for op, (_, keys) in OPS.items() for key in keys]


@pytest.mark.parametrize("op,key", CASES, ids=["%s-%s" % c for c in CASES])
def test_a_failed_write_writes_nothing(stack, api, pki, op, key):
    ctx = {"old": api.approved(pki.leaf), "leaf_b": pki.leaf_b.fingerprint}
    ctx["new"] = api.approved(pki.leaf_other, app="app3")
    ctx["cid"] = api.upload(make_cert("pending one", issuer=pki.inter)).json()["id"]
    name, _, field = key.format(**ctx).partition("#")
    k = "certgate:" + name
    if field:                               # a hash field that must be an integer
        stack.r.hset(k, field, "not-a-number")
    elif stack.r.type(k) == b"string" and name in ("gen",):
        stack.r.set(k, "not-a-number")
    elif stack.r.type(k) == b"string" or name.startswith("fp:"):
        stack.r.delete(k)
        stack.r.hset(k, "x", "y")           # a hash where a string belongs
    else:
        stack.r.delete(k)
        stack.r.set(k, "wrong type")        # a string where a set/hash/stream belongs
    before = redis_snapshot(stack.r)
    listener = Listener(stack.r)
    resp = OPS[op][0](api, pki, ctx)
    assert resp.status_code == 500 and error_code(resp) == "Store.Corrupt", resp.text
    assert redis_snapshot(stack.r) == before
    assert listener.drain() == []


# ---------------------------------------------------------------- item 5: the audit query

def test_events_are_filtered_while_scanning_and_paged(stack, api, pki):
    p = stack.r.pipeline(transaction=False)
    for i in range(10050):
        p.xadd("certgate:events", {"time": "2025-01-01T00:00:00Z", "user": "old",
                                   "action": "cert.upload", "app_id": "app1",
                                   "customer_id": "cust-1"})
    p.xadd("certgate:events", {"time": "2025-01-02T00:00:00Z", "user": "certgate-expiry",
                               "action": "cert.expiring", "cert_id": "c1", "days_left": "6",
                               "threshold": "7", "customer_id": "cust-1"})
    p.execute()
    cid = api.approved(pki.leaf)
    api.call("POST", "/certs/%s/inactivate" % cid, "mgr1", json={"reason": "gone"})
    resp = api.call("GET", "/events?action=cert.inactivate", "aud1")
    items = resp.json()["items"]
    assert [i["certId"] for i in items] == [cid] and resp.json()["next"] is None
    exp = api.call("GET", "/events?action=cert.expiring", "aud1").json()["items"]
    assert exp[0]["daysLeft"] == "6" and exp[0]["threshold"] == "7"
    # Pages: a cursor, no event twice, none lost.
    seen, cursor, pages = [], None, 0
    while True:
        q = "/events?user=mgr1&limit=1" + ("&cursor=" + cursor if cursor else "")
        body = api.call("GET", q, "aud1").json()
        seen += [i["action"] for i in body["items"]]
        pages += 1
        cursor = body["next"]
        if cursor is None:
            break
    assert seen == ["cert.approve", "cert.inactivate"] and pages >= 2
    resp = api.call("GET", "/events?limit=5", "aud1", headers={"Accept": "text/csv"})
    header = resp.text.splitlines()[0]
    for col in ("oldCertId", "rotationId", "daysLeft", "threshold", "customerId"):
        assert '"%s"' % col in header
    assert resp.headers["CertGate-Next-Cursor"]
    assert api.call("GET", "/events?cursor=junk", "aud1").status_code == 400
    # A confined auditor reads its customer's events only.
    scoped = Admin(stack, "/scoped")
    assert scoped.call("GET", "/events?action=cert.approve", "aud2").json()["items"] == []


def test_a_long_scan_says_it_was_cut(stack, api):
    p = stack.r.pipeline(transaction=False)
    for i in range(50010):
        p.xadd("certgate:events", {"action": "cert.upload", "user": "old"})
    p.xadd("certgate:events", {"action": "cert.decline", "user": "late"})
    p.execute()
    body = api.call("GET", "/events?action=cert.decline", "aud1").json()
    assert body["items"] == [] and body["next"]
    body = api.call("GET", "/events?action=cert.decline&cursor=" + body["next"], "aud1").json()
    assert [i["user"] for i in body["items"]] == ["late"] and body["next"] is None


# ---------------------------------------------------------------- item 8: check and tenancy

def test_check_says_nothing_of_another_customers_registration(stack, api, pki):
    api.upload(pki.leaf)                    # cust-1's, pending
    body = {"certificate": pki.leaf.pem.decode(), "chain": pki.leaf.der_chain_pem()}
    mine = api.call("POST", "/check", "dev1", json=body).json()
    theirs = api.call("POST", "/check", "dev2", json=body).json()
    assert mine["reason"] == "pending" and mine["registrationId"]
    assert theirs["reason"] == "unregistered" and theirs["registrationId"] is None


# ---------------------------------------------------------------- item 10: If-Match

@pytest.mark.parametrize("value,status", [
    ('""', 412), ('W/"v1"', 412), ('"v9"', 412), ("*", 200), ('"v9", "v1"', 200),
    ('"v1"', 200), ("v1", 400), ('"v1', 400), ("", 400)])
def test_if_match_follows_rfc_9110(stack, api, pki, value, status):
    cid = api.upload(pki.leaf).json()["id"]
    resp = api.call("POST", "/certs/%s/approve" % cid, "mgr1", headers={"If-Match": value})
    assert resp.status_code == status, resp.text
    assert status_of(stack, cid) == ("APPROVED" if status == 200 else "PENDING")


# ---------------------------------------------------------------- found in review

def scheduled_rotation(api, pki):
    old = api.approved(pki.leaf)
    new = api.approved(pki.leaf_b)
    resp = api.call("POST", "/apps/app1/rotations", "sup1", json={
        "newCertId": new, "oldCertId": old, "activateAt": "2031-01-01T00:00:00Z",
        "retireOldAt": "2031-02-01T00:00:00Z"})
    assert resp.status_code == 201, resp.text
    return old, new, resp.json()["id"]


def test_cancel_of_a_damaged_rotation_writes_nothing(stack, api, pki):
    _, _, rid = scheduled_rotation(api, pki)
    stack.r.hdel("certgate:rotation:" + rid, "prev_new_activate_at")
    before = redis_snapshot(stack.r)
    resp = api.call("DELETE", "/apps/app1/rotations/" + rid, "sup1")
    assert resp.status_code == 500 and error_code(resp) == "Store.Corrupt", resp.text
    assert redis_snapshot(stack.r) == before


def test_changes_to_records_without_a_version_move_the_etag(stack, api, pki):
    old = api.approved(pki.leaf)
    new = api.approved(pki.leaf_b)
    stack.r.hdel("certgate:reg:" + old, "version")        # read as "v1"
    resp = api.call("POST", "/apps/app1/rotations", "sup1", json={
        "newCertId": new, "oldCertId": old, "activateAt": "2031-01-01T00:00:00Z",
        "retireOldAt": "2031-02-01T00:00:00Z"})
    assert resp.status_code == 201, resp.text
    assert api.call("GET", "/certs/" + old, "aud1").headers["ETag"] == '"v2"'
    resp = api.call("POST", "/certs/%s/inactivate" % old, "mgr1", json={"reason": "x"},
                    headers={"If-Match": '"v1"'})
    assert resp.status_code == 412


def test_migration_checks_every_key_before_writing(stack, pki):
    write_legacy(stack, pki)
    stack.r.hset("certgate:reg:r-a2", "version", "not-a-number")
    before = redis_snapshot(stack.r)
    script = os.path.join(ROOT, "scripts", "migrate-app-owners.lua")
    res = subprocess.run(["redis-cli", "-p", str(stack.redis.port), "-n", str(Redis.DB),
                          "--no-auth-warning", "-a", Redis.PASSWORD, "--eval", script, ",",
                          "certgate:", "apply"], capture_output=True, text=True)
    assert "BADKEY certgate:reg:r-a2" in res.stdout + res.stderr
    assert redis_snapshot(stack.r) == before


def test_a_confined_manager_cannot_take_or_see_other_registrations(stack, pki):
    write_legacy(stack, pki)
    scoped = Admin(stack, "/scoped")               # mgr2 is confined to cust-1
    before = redis_snapshot(stack.r)
    for app in ("old-c", "old-b"):                 # orphans only; another customer's too
        resp = scoped.call("POST", "/apps", "mgr2", json={"appId": app})
        assert resp.status_code == 409 and error_code(resp) == "App.Conflict", resp.text
        assert "r-" not in resp.json()["message"]
    assert redis_snapshot(stack.r) == before
    resp = scoped.call("POST", "/apps", "mgr2", json={"appId": "fresh-app"})
    assert resp.status_code == 201 and resp.json()["customerId"] == "cust-1", resp.text
    resp = scoped.call("PATCH", "/apps/app2", "mgr2", json={"name": "x"})
    assert resp.status_code == 403 and error_code(resp) == "App.CustomerMismatch"


def test_a_cursor_never_reaches_before_from(stack, api):
    for t in ("2025-01-01T00:00:00Z", "2025-06-01T00:00:00Z"):
        stack.r.xadd("certgate:events", {"time": t, "action": "cert.upload"},
                     id="%d-0" % (1735689600000 if t.startswith("2025-01") else 1748736000000))
    body = api.call("GET", "/events?from=2025-05-01T00:00:00Z&cursor=0-1", "aud1").json()
    assert [i["time"] for i in body["items"]] == ["2025-06-01T00:00:00Z"]


def test_four_eyes_under_ignore_case_covers_older_spellings(stack, api, pki):
    cid = api.upload(pki.leaf, user="devmgr").json()["id"]
    stack.r.hset("certgate:reg:" + cid, "created_by", "DevMgr")  # made before IgnoreCase
    resp = Admin(stack, "/admin/fold").call("POST", "/certs/%s/approve" % cid, "devmgr")
    assert resp.status_code == 403 and error_code(resp) == "Transition.FourEyes"
