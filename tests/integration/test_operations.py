"""Operations: Prometheus metrics, per-certificate usage, expiry events."""
import os
import re
import shutil
import time

import pytest
import requests

from admin import Admin, seed
from clients import files_for, get, reason_of
from conftest import Stack
from harness import ROOT, Httpd, flush_store, register
from pki import make_cert

GATED = "/gated/ok.txt"
OPS = "CertGateUsageFlushInterval 1\nCertGateExpiryCheckInterval 1\nCertGateExpiryWarnDays 90 60 30 7"
METRICS = '<Location "/metrics">\n    SetHandler certgate-metrics\n  </Location>'


@pytest.fixture(scope="module")
def stack(pki):
    s = Stack(pki, extra_server=OPS, extra_vhost=METRICS)
    yield s
    s.close()


@pytest.fixture(autouse=True)
def clean(stack):
    flush_store(stack.r)
    seed(stack.r)


def scrape(stack):
    resp = requests.get(stack.httpd.url("/metrics"), verify=stack.server_ca, timeout=10)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    out = {}
    for line in resp.text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def delta(a, b, key):
    return b.get(key, 0) - a.get(key, 0)


def test_metrics_move_with_requests(stack, pki):
    api = Admin(stack)
    cid = api.approved(pki.leaf)
    api.upload(pki.leaf_b)                                        # pending
    register(stack.r, make_cert("soon", issuer=pki.inter, days=20), "app2")
    m0 = scrape(stack)
    for _ in range(5):
        assert get(stack, GATED, pki.leaf).status_code == 200
    for _ in range(3):
        assert reason_of(get(stack, GATED, pki.leaf_other)) == "unregistered"
    assert reason_of(get(stack, GATED, pki.leaf_b)) == "pending"
    api.call("POST", "/certs/%s/inactivate" % cid, "mgr1", json={"reason": "metrics"})
    time.sleep(0.2)
    m1 = scrape(stack)
    allow = 'certgate_decisions_total{result="allow",reason="allow"}'
    assert delta(m0, m1, allow) == 5
    assert delta(m0, m1, 'certgate_decisions_total{result="deny",reason="unregistered"}') == 3
    assert delta(m0, m1, 'certgate_decisions_total{result="deny",reason="pending"}') == 1
    lookups = sum(delta(m0, m1, k) for k in m1 if k.startswith("certgate_cache_lookups_total"))
    assert lookups == 9
    assert delta(m0, m1, 'certgate_redis_lookup_seconds_count') >= 1
    assert m1['certgate_redis_lookup_seconds_bucket{le="+Inf"}'] == m1["certgate_redis_lookup_seconds_count"]
    # Both children heard the inactivation, with its lag measured.
    assert delta(m0, m1, "certgate_invalidations_total") >= 2
    assert delta(m0, m1, "certgate_invalidation_lag_seconds_count") >= 2
    assert m1['certgate_registrations{status="INACTIVATED"}'] == 1
    assert m1['certgate_registrations{status="PENDING"}'] == 1
    assert m1['certgate_registrations{status="APPROVED"}'] == 1
    assert m1['certgate_certificates_expiring{within_days="30"}'] == 1
    assert m1['certgate_certificates_expiring{within_days="7"}'] == 0
    assert m1["certgate_store_up"] == 1
    version = re.search(r'#define CG_VERSION "([^"]+)"',
                        open(os.path.join(ROOT, "src", "cg_version.h")).read()).group(1)
    assert m1['certgate_build_info{version="%s"}' % version] == 1
    # The version is in the metrics, never told to clients: no Server token.
    assert "certgate" not in get(stack, GATED, pki.leaf).headers["Server"].lower()


def test_usage_shows_when_the_old_certificate_went_quiet(stack, pki):
    api = Admin(stack)
    old = api.approved(pki.leaf)
    new = api.approved(pki.leaf_b)
    s_old = requests.Session()
    s_old.trust_env = False
    s_old.cert, s_old.verify = files_for(stack, pki.leaf), stack.server_ca
    for _ in range(6):
        assert s_old.get(stack.httpd.url(GATED)).status_code == 200
    for _ in range(2):
        assert get(stack, GATED, pki.leaf).status_code == 200
    time.sleep(2.2)                                   # flush interval 1 s
    u = api.call("GET", "/certs/" + old, "sup1").json()["usage"]
    assert u["requests"] == 8
    assert u["lastClientIp"] == "127.0.0.1"
    quiet_since = u["lastSeen"]
    assert quiet_since is not None
    # Traffic moves to the new certificate; the old one's lastSeen stops moving.
    time.sleep(1.1)
    for _ in range(5):
        assert get(stack, GATED, pki.leaf_b).status_code == 200
    time.sleep(2.2)
    app = api.call("GET", "/apps/app1", "sup1").json()
    usage = {c["id"]: c["usage"] for c in app["certificates"]}
    assert usage[old]["lastSeen"] == quiet_since and usage[old]["requests"] == 8
    assert usage[new]["requests"] == 5 and usage[new]["lastSeen"] > quiet_since
    # No Redis write per request: a few batched flushes at most.
    assert int(stack.r.hget("certgate:usage:" + new, "count")) == 5


def expiry_events(r):
    return [e for _, e in r.xrange("certgate:events")
            if e[b"action"] in (b"cert.expiring", b"cert.expired")]


def test_expiry_events_once_per_threshold(stack, pki):
    soon = make_cert("expiring in 20 days", issuer=pki.inter, days=20)
    register(stack.r, soon, "app1")
    gone = make_cert("expired registration", issuer=pki.inter, days=400)
    register(stack.r, gone, "app2", valid_to=int(time.time()) - 10)
    register(stack.r, pki.leaf, "app3")                         # 400 days left: nothing
    deadline = time.time() + 5
    while time.time() < deadline and len(expiry_events(stack.r)) < 2:
        time.sleep(0.2)
    time.sleep(2.5)                                             # more scans run
    ev = expiry_events(stack.r)
    assert len(ev) == 2, ev
    expiring = [e for e in ev if e[b"action"] == b"cert.expiring"][0]
    assert expiring[b"threshold"] == b"30"
    assert expiring[b"days_left"] in (b"19", b"20")
    assert expiring[b"app_id"] == b"app1"
    assert expiring[b"fingerprint"].decode() == soon.fingerprint
    assert [e for e in ev if e[b"action"] == b"cert.expired"][0][b"app_id"] == b"app2"

    # A restart adds nothing (the markers live in Redis).
    stack.httpd.stop()
    stack.httpd.start()
    time.sleep(2.5)
    assert len(expiry_events(stack.r)) == 2


def test_second_gateway_does_not_repeat_events(pki):
    a = Stack(pki, extra_server=OPS)
    try:
        soon = make_cert("expiring in 5 days", issuer=pki.inter, days=5)
        register(a.r, soon, "app1")
        time.sleep(2.5)
        assert [e[b"threshold"] for e in expiry_events(a.r)] == [b"7"]
        work2 = os.path.join(a.work, "gw2")
        os.makedirs(work2)
        os.chmod(work2, 0o755)
        shutil.copytree(a.pki_dir, os.path.join(work2, "pki"))
        b = Httpd(work2, os.path.join(work2, "pki"), a.redis, extra_server=OPS).start()
        try:
            time.sleep(2.5)
            assert len(expiry_events(a.r)) == 1
        finally:
            b.stop()
    finally:
        a.close()


def test_clock_offset_moves_scans_and_decisions(pki):
    # 400-day certificate; the clock moved 345 days ahead: 55 days left.
    s = Stack(pki, extra_server=OPS + "\nCertGateTestClockOffset %d" % (345 * 86400))
    try:
        register(s.r, pki.leaf, "app1")
        deadline = time.time() + 5
        while time.time() < deadline and not expiry_events(s.r):
            time.sleep(0.2)
        ev = expiry_events(s.r)
        assert [e[b"threshold"] for e in ev] == [b"60"]
        assert get(s, GATED, pki.leaf).status_code == 200
        register(s.r, pki.leaf_b, "app1", retire_at=int(time.time()) + 86400)
        assert reason_of(get(s, GATED, pki.leaf_b)) == "retired"     # a day is nothing at +345
    finally:
        s.close()


def test_metrics_scrape_is_bounded_by_the_admin_timeout(pki):
    # The scrape reads Redis within CertGateAdminTimeout (a literal 2000 ms before).
    s = Stack(pki, extra_server="CertGateAdminTimeout 150", extra_vhost=METRICS)
    try:
        assert scrape(s)["certgate_store_up"] == 1
        s.redis.pause()
        try:
            t0 = time.monotonic()
            m = scrape(s)
            elapsed = time.monotonic() - t0
        finally:
            s.redis.resume()
        assert m["certgate_store_up"] == 0
        assert elapsed < 1.5, elapsed
        assert "CG08005" in s.httpd.read_log()
    finally:
        s.close()
