"""Export and import of registrations, against real redis and each server: an export
that round-trips, an import that vets every record like an upload, is
idempotent by fingerprint, has a dry run, keeps statuses only for a manager
who asks, writes one event per record, and never half-writes a bad record."""
import datetime
import time

import pytest

from admin import Admin, error_code, seed
from clients import get, reason_of
from conftest import SERVERS, Stack
from harness import flush_store
from pki import make_cert, _key
from test_admin import redis_snapshot

EXTRA = """
  <Location "/scoped">
    SetHandler certgate-admin
    AuthType Basic
    AuthName "certgate admin"
    AuthBasicProvider file
    AuthUserFile "{work}/admin.htpasswd"
    Require valid-user
    CertGateAdminRole developer dev1 dev2
    CertGateAdminRole manager mgr1 mgr2
    CertGateAdminCustomer cust-1 dev1 mgr2
    CertGateAdminCustomer cust-2 dev2
  </Location>
"""
# What an export round-trips, and the import brings back.
KEPT = ("id", "appId", "customerId", "fingerprint", "status", "statusReason", "activateAt",
        "retireAt", "certificate", "chain", "created", "createdBy")


NGX_SERVER = """
        location /scoped {
            certgate_admin;
            auth_basic "certgate admin";
            auth_basic_user_file {work}/admin.htpasswd;
            certgate_admin_user $remote_user;
            certgate_admin_role developer dev1 dev2;
            certgate_admin_role manager mgr1 mgr2;
            certgate_admin_customer cust-1 dev1 mgr2;
            certgate_admin_customer cust-2 dev2;
        }
"""


@pytest.fixture(scope="module", params=SERVERS)
def stack(pki, request):
    s = Stack(pki, server=request.param, extra_vhost=EXTRA,
              nginx_args={"extra_server": NGX_SERVER})
    yield s
    s.close()


@pytest.fixture(autouse=True)
def clean(stack):
    flush_store(stack.r)
    seed(stack.r)


@pytest.fixture
def api(stack):
    return Admin(stack)


def events(stack):
    return [{k.decode(): v.decode() for k, v in e[1].items()}
            for e in stack.r.xrange("certgate:events")]


def iso(dt):
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def body(cert, app="app1", **extra):
    b = {"certificate": cert.pem.decode(), "chain": cert.der_chain_pem(), "appId": app}
    b.update(extra)
    return b


def do_import(api, items, user="mgr1", query=""):
    resp = api.call("POST", "/import" + query, user, json={"items": items})
    assert resp.status_code == 200, resp.text
    return resp.json()


def populated(api, pki):
    """Registrations in every state, with windows, over two customers."""
    old = make_cert("app1 old", issuer=pki.inter, days=400)
    new = make_cert("app1 new", issuer=pki.inter, days=400)
    declined = make_cert("app1 declined", issuer=pki.inter, days=400)
    inactive = make_cert("app1 inactivated", issuer=pki.inter, days=400)
    pending = make_cert("app1 pending", issuer=pki.inter, days=400)
    other = make_cert("app2 approved", issuer=pki.inter, days=400)
    ids = {"old": api.approved(old), "new": api.approved(new),
           "other": api.approved(other, app="app2", user="dev2")}
    now = datetime.datetime.now(datetime.timezone.utc)
    rot = {"newCertId": ids["new"], "oldCertId": ids["old"],
           "activateAt": iso(now + datetime.timedelta(days=1)),
           "retireOldAt": iso(now + datetime.timedelta(days=8))}
    assert api.call("POST", "/apps/app1/rotations", "sup1", json=rot).status_code == 201
    for name, cert in (("declined", declined), ("inactive", inactive), ("pending", pending)):
        resp = api.upload(cert)
        assert resp.status_code == 201, resp.text
        ids[name] = resp.json()["id"]
    assert api.call("POST", "/certs/%s/decline" % ids["declined"], "mgr1",
                    json={"reason": "wrong CN"}).status_code == 200
    assert api.call("POST", "/certs/%s/inactivate" % ids["inactive"], "mgr1",
                    json={"reason": "key lost"}).status_code == 200
    certs = {"old": old, "new": new, "declined": declined, "inactive": inactive,
             "pending": pending, "other": other}
    return ids, certs


def gate_answers(api, stack, certs):
    """What the gate answers each certificate now: the admin view, and a real request."""
    out = {}
    for app in ("app1", "app2"):
        for c in api.call("GET", "/apps/" + app, "mgr1").json()["certificates"]:
            out[c["fingerprint"]] = c["gate"]
    for name, cert in certs.items():
        app = "app2" if name == "other" else "app1"
        resp = get(stack, "/app/ok.txt", cert, headers={"X-App-Id": app})
        out[name] = (resp.status_code, reason_of(resp))
    return out


def export(api, user="mgr1", query=""):
    resp = api.call("GET", "/export" + query, user)
    assert resp.status_code == 200, resp.text
    return resp.json()


# ---------------------------------------------------------------- round trip

def test_export_round_trips_through_a_keepstatus_import(stack, api, pki):
    ids, certs = populated(api, pki)
    first = export(api)
    assert first["skipped"] == [] and first["count"] == 6
    by_id = {it["id"]: it for it in first["items"]}
    assert set(by_id) == set(ids.values())
    assert by_id[ids["new"]]["activateAt"] and by_id[ids["old"]]["retireAt"]
    assert by_id[ids["declined"]]["status"] == "DECLINED"
    assert by_id[ids["declined"]]["statusReason"] == "wrong CN"
    assert by_id[ids["other"]]["customerId"] == "cust-2"
    assert by_id[ids["old"]]["certificate"] == certs["old"].pem.decode()
    assert by_id[ids["old"]]["chain"] == certs["old"].der_chain_pem()
    gate_before = gate_answers(api, stack, certs)
    assert gate_before["old"][0] == 200 and gate_before["pending"][0] == 403
    views_before = {i: api.call("GET", "/certs/" + i, "mgr1").json() for i in ids.values()}

    flush_store(stack.r)
    seed(stack.r)
    out = do_import(api, first["items"], query="?keepStatus=1")
    assert (out["created"], out["unchanged"], out["errors"]) == (6, 0, 0), out
    assert [r["index"] for r in out["results"]] == list(range(6))
    assert all(r["id"] == it["id"] and r["fingerprint"] == it["fingerprint"]
               for r, it in zip(out["results"], first["items"]))
    # Same records: ids, app, customer, status, windows, fingerprints, chain.
    for i, before in views_before.items():
        after = api.call("GET", "/certs/" + i, "mgr1").json()
        for f in ("appId", "customerId", "status", "statusReason", "activateAt", "retireAt",
                  "fingerprint", "chain", "validFrom", "validTo", "created", "createdBy",
                  "commonName", "serialNumber"):
            assert after[f] == before[f], (f, after[f], before[f])
        assert after["updatedBy"] == "mgr1"
    assert gate_answers(api, stack, certs) == gate_before
    again = export(api)
    assert [{k: it[k] for k in KEPT} for it in again["items"]] == \
        [{k: it[k] for k in KEPT} for it in first["items"]]
    # One event per record written.
    evs = events(stack)
    assert [e["action"] for e in evs] == ["cert.import"] * 6
    assert sorted(e["cert_id"] for e in evs) == sorted(ids.values())
    statuses = {e["cert_id"]: (e["new_status"], e["user"]) for e in evs}
    assert statuses[ids["inactive"]] == ("INACTIVATED", "mgr1")


def test_upload_keeps_the_certificate_as_ordered(stack, api, pki):
    leaf = make_cert("app1 with leaf in chain", issuer=pki.inter)
    # The chain file starts with the leaf: stored once, leaf first.
    resp = api.upload(leaf, chain=leaf.pem.decode() + leaf.der_chain_pem())
    assert resp.status_code == 201, resp.text
    pem = stack.r.hget("certgate:reg:" + resp.json()["id"], "pem").decode()
    assert pem == leaf.pem.decode() + pki.inter.pem.decode() + pki.root.pem.decode()


def test_records_without_a_stored_certificate_are_reported(stack, api, pki):
    cid = api.approved(pki.leaf)
    kept = api.approved(pki.leaf_b)
    stack.r.hdel("certgate:reg:" + cid, "pem")     # as registered before this version
    out = export(api, "aud1")
    assert [it["id"] for it in out["items"]] == [kept]
    assert len(out["skipped"]) == 1
    sk = out["skipped"][0]
    assert sk["id"] == cid and sk["code"] == "Export.NoCertificate"
    assert sk["fingerprint"] == pki.leaf.fingerprint and sk["appId"] == "app1"


def test_export_filters_and_tenancy(stack, api, pki):
    ids, _ = populated(api, pki)
    cust1 = {v for k, v in ids.items() if k != "other"}
    for user in ("mgr1", "sup1", "aud1"):
        assert {it["id"] for it in export(api, user)["items"]} == set(ids.values()), user
    # A confined user exports its own customer's only, whatever it filters by.
    assert {it["id"] for it in export(api, "dev1")["items"]} == cust1
    assert {it["id"] for it in export(api, "dev1", "?customerId=cust-2")["items"]} == set()
    assert {it["id"] for it in export(api, "dev2")["items"]} == {ids["other"]}
    scoped = Admin(stack, "/scoped")
    resp = scoped.call("GET", "/export", "mgr2")
    assert {it["id"] for it in resp.json()["items"]} == cust1
    resp = api.call("GET", "/export?appId=app2", "dev1")
    assert resp.status_code == 403 and error_code(resp) == "App.CustomerMismatch"
    assert {it["id"] for it in export(api, "mgr1", "?customerId=cust-2")["items"]} == \
        {ids["other"]}
    assert {it["id"] for it in export(api, "mgr1", "?status=DECLINED")["items"]} == \
        {ids["declined"]}
    assert {it["id"] for it in export(api, "mgr1", "?appId=app1&status=APPROVED")["items"]} == \
        {ids["old"], ids["new"]}
    resp = api.call("GET", "/export", "nobody1")
    assert resp.status_code == 403 and error_code(resp) == "Auth.Forbidden"


# ---------------------------------------------------------------- import rules

def test_dry_run_writes_nothing_and_reports_per_record(stack, api, pki):
    ids, certs = populated(api, pki)
    items = export(api)["items"]
    flush_store(stack.r)
    seed(stack.r)
    junk = dict(items[0], certificate="not a certificate", fingerprint=None)
    before = redis_snapshot(stack.r)
    out = do_import(api, items + [items[0], junk], query="?dryRun=1&keepStatus=1")
    assert redis_snapshot(stack.r) == before
    assert out["dryRun"] is True and (out["created"], out["unchanged"], out["errors"]) == (6, 1, 1)
    assert [r["outcome"] for r in out["results"]] == ["created"] * 6 + ["unchanged", "error"]
    assert out["results"][6]["id"] == items[0]["id"]
    assert out["results"][7]["code"] == "Certificate.Invalid"
    # The real import does what the dry run said.
    real = do_import(api, items + [items[0], junk], query="?keepStatus=1")
    assert [(r["outcome"], r["code"], r["id"]) for r in real["results"]] == \
        [(r["outcome"], r["code"], r["id"]) for r in out["results"]]
    # On a store that has them: all unchanged, still nothing written.
    before = redis_snapshot(stack.r)
    out = do_import(api, items, query="?dryRun=1")
    assert [r["outcome"] for r in out["results"]] == ["unchanged"] * 6
    assert redis_snapshot(stack.r) == before


def test_import_is_idempotent_by_fingerprint(stack, api, pki):
    ids, _ = populated(api, pki)
    items = export(api)["items"]
    before = redis_snapshot(stack.r)
    out = do_import(api, items, query="?keepStatus=1")
    assert (out["created"], out["unchanged"], out["errors"]) == (0, 6, 0)
    assert [r["id"] for r in out["results"]] == [it["id"] for it in items]
    assert redis_snapshot(stack.r) == before       # no write, no event, no gen
    # Without ids or statuses (a developer's import of its own): still unchanged.
    mine = [{"certificate": it["certificate"], "chain": it["chain"], "appId": it["appId"]}
            for it in items if it["customerId"] == "cust-1"]
    out = do_import(api, mine, user="dev1")
    assert [r["outcome"] for r in out["results"]] == ["unchanged"] * 5
    assert redis_snapshot(stack.r) == before


def test_a_bad_record_is_reported_and_the_others_are_written(stack, api, pki):
    good1 = make_cert("app1 good one", issuer=pki.inter)
    good2 = make_cert("app1 good two", issuer=pki.inter)
    ca_leaf = make_cert("app1 leaf that is a CA", issuer=pki.inter, ca=True)
    elsewhere = make_cert("app1 registered to acme", issuer=pki.inter)
    assert api.upload(elsewhere, app="acme").status_code == 201
    taken = api.approved(make_cert("app1 owns the id", issuer=pki.inter))
    before_events = stack.r.xlen("certgate:events")
    items = [
        body(good1),
        dict(body(good1), certificate="-----BEGIN CERTIFICATE-----\njunk\n"),
        body(make_cert("unknown app", issuer=pki.inter), app="no-such-app"),
        body(make_cert("other customer's app", issuer=pki.inter), app="app2"),
        body(ca_leaf),
        body(pki.expired),
        body(elsewhere),                                   # same fingerprint, other app
        dict(body(make_cert("id taken", issuer=pki.inter)), id=taken),
        dict(body(make_cert("wrong fp", issuer=pki.inter)), fingerprint="00" * 32),
        {"certificate": make_cert("no chain", issuer=pki.inter).pem.decode(), "appId": "app1"},
        "not an object",
        body(good2, status="APPROVED"),                    # a developer imports as PENDING
    ]
    out = do_import(api, items, user="dev1")
    got = [(r["outcome"], r["code"]) for r in out["results"]]
    assert got == [("created", None), ("error", "Certificate.Invalid"),
                   ("error", "App.NotFound"), ("error", "App.CustomerMismatch"),
                   ("error", "Policy.LeafIsCA"), ("error", "Certificate.Expired"),
                   ("error", "Certificate.Duplicate"), ("error", "Import.IdExists"),
                   ("error", "Import.FingerprintMismatch"), ("error", "Chain.Invalid"),
                   ("error", "Upload.Certificate.Invalid"), ("created", None)], out
    assert all(r["message"] for r in out["results"] if r["outcome"] == "error")
    assert out["results"][4]["fingerprint"] == ca_leaf.fingerprint
    # Written: the two good ones, PENDING, one event each. The bad ones left no key.
    for r, cert in ((out["results"][0], good1), (out["results"][11], good2)):
        rec = api.call("GET", "/certs/" + r["id"], "dev1").json()
        assert rec["status"] == "PENDING" and rec["fingerprint"] == cert.fingerprint
        assert rec["customerId"] == "cust-1"
    assert stack.r.xlen("certgate:events") == before_events + 2
    for r in out["results"][1:11]:
        if r["fingerprint"] and r["code"] != "Certificate.Duplicate":
            assert stack.r.get("certgate:fp:" + r["fingerprint"]) is None, r
    assert stack.r.hget("certgate:reg:" + taken, "fingerprint").decode() != \
        out["results"][7]["fingerprint"]


def test_keepstatus_is_for_managers_without_a_customer(stack, api, pki):
    item = body(pki.leaf, status="APPROVED")
    scoped = Admin(stack, "/scoped")
    before = redis_snapshot(stack.r)
    for call in (lambda: api.call("POST", "/import?keepStatus=1", "dev1", json={"items": [item]}),
                 lambda: api.call("POST", "/import?keepStatus=1", "devmgr",
                                  json={"items": [item]}),
                 lambda: scoped.call("POST", "/import?keepStatus=1", "mgr2",
                                     json={"items": [item]})):
        resp = call()
        assert resp.status_code == 403 and error_code(resp) == "Auth.Forbidden", resp.text
    for user in ("sup1", "aud1"):
        resp = api.call("POST", "/import", user, json={"items": [item]})
        assert resp.status_code == 403 and error_code(resp) == "Auth.Forbidden"
    assert redis_snapshot(stack.r) == before
    # A confined manager imports its customer's apps, as PENDING.
    out = do_import(scoped, [item, body(pki.leaf_other, app="app2")], user="mgr2")
    assert [(r["outcome"], r["code"]) for r in out["results"]] == \
        [("created", None), ("error", "App.CustomerMismatch")]
    assert stack.r.hget("certgate:reg:" + out["results"][0]["id"], "status") == b"PENDING"
    # A manager without a customer keeps what it is given.
    out = do_import(api, [body(pki.leaf_b, status="APPROVED",
                               activateAt="2030-01-01T00:00:00Z")], query="?keepStatus=1")
    rec = stack.r.hgetall("certgate:reg:" + out["results"][0]["id"])
    assert rec[b"status"] == b"APPROVED" and rec[b"activate_at"] == b"1893456000"
    out = do_import(api, [body(pki.leaf_inter2, status="EXPIRED")], query="?keepStatus=1")
    assert out["results"][0]["code"] == "Import.Invalid"


def test_import_requests_that_are_refused_whole(stack, api, pki):
    before = redis_snapshot(stack.r)
    for kw, code in (({"data": "not json", "headers": {"Content-Type": "application/json"}},
                      "Request.Invalid"),
                     ({"json": {"certs": []}}, "Request.Invalid"),
                     ({"json": {"items": [{}] * 1001}}, "Request.Invalid")):
        resp = api.call("POST", "/import", "mgr1", **kw)
        assert resp.status_code == 400 and error_code(resp) == code, resp.text
    resp = api.call("POST", "/import?dryRun=maybe", "mgr1", json={"items": []})
    assert resp.status_code == 400
    assert redis_snapshot(stack.r) == before


def test_a_few_hundred_are_imported_correctly(stack, api, pki):
    key = _key("ec")
    certs = [make_cert("bulk %d" % i, issuer=pki.inter, key=key) for i in range(300)]
    apps = ["app1", "acme", "app2"]
    items = [body(c, app=apps[i % 3]) for i, c in enumerate(certs)]
    out = do_import(api, items)
    assert out["created"] == 300 and out["errors"] == 0
    owners = {"app1": b"cust-1", "acme": b"cust-1", "app2": b"cust-2"}
    for i, (c, r) in enumerate(zip(certs, out["results"])):
        assert r["fingerprint"] == c.fingerprint
        assert stack.r.get("certgate:fp:" + c.fingerprint).decode() == r["id"]
        rec = stack.r.hmget("certgate:reg:" + r["id"], "app_id", "customer_id", "status")
        assert rec == [apps[i % 3].encode(), owners[apps[i % 3]], b"PENDING"]
    assert stack.r.scard("certgate:regs") == 300
    assert stack.r.xlen("certgate:events") == 300
    out = do_import(api, items, query="?dryRun=1")
    assert out["unchanged"] == 300


def test_a_damaged_key_fails_its_record_only(stack, api, pki):
    certs = [make_cert("app1 damaged %d" % i, issuer=pki.inter) for i in range(3)]
    # The index key of the middle certificate holds the wrong type.
    stack.r.hset("certgate:fp:" + certs[1].fingerprint, "x", "y")
    out = do_import(api, [body(c) for c in certs])
    assert [(r["outcome"], r["code"]) for r in out["results"]] == \
        [("created", None), ("error", "Store.Corrupt"), ("created", None)]
    assert stack.r.scard("certgate:regs") == 2
    assert stack.r.xlen("certgate:events") == 2
    assert stack.r.hgetall("certgate:fp:" + certs[1].fingerprint) == {b"x": b"y"}


def test_when_the_store_stops_answering_the_rest_is_not_tried(stack, api, pki):
    certs = [make_cert("app1 paused %d" % i, issuer=pki.inter) for i in range(3)]
    stack.r.execute_command("CLIENT", "PAUSE", "3000", "ALL")   # longer than the admin timeout
    out = do_import(api, [body(c) for c in certs])
    time.sleep(1.5)
    assert [(r["outcome"], r["code"]) for r in out["results"]] == \
        [("error", "Store.Unavailable")] * 3
    assert "not tried" in out["results"][1]["message"]
    assert "not tried" not in out["results"][0]["message"]
    assert stack.r.scard("certgate:regs") == 0 and stack.r.xlen("certgate:events") == 0
