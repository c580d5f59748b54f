"""Cached decisions: revocation and approval within 1 s on live connections, the
max-age fallback when the subscriber is gone, and the entry bound."""
import re
import time

import pytest
import requests

from admin import Admin, seed
from clients import get, reason_of, session
from conftest import Stack
from harness import flush_store, register

GATED = "/gated/ok.txt"
MAX_AGE = 2


@pytest.fixture(scope="module")
def stack(pki):
    # One child process, so cache hits and misses can be counted exactly.
    s = Stack(pki, extra_server="CertGateCacheMaxAge %d\nCertGateCacheEntries 2\n"
              "StartServers 1\nMinSpareThreads 1\nMaxSpareThreads 16\nMaxRequestWorkers 16"
              % MAX_AGE)
    yield s
    s.close()


@pytest.fixture(autouse=True)
def clean(stack):
    flush_store(stack.r)
    seed(stack.r)


def redis_calls(r, cmd):
    stats = r.info("commandstats")
    return stats.get("cmdstat_" + cmd, {}).get("calls", 0)


def until(fn, limit):
    """Call fn until it returns truthy; return the seconds it took, or None."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        if fn():
            return time.monotonic() - t0
        time.sleep(0.01)
    return None


def test_revocation_on_a_live_keepalive_connection_within_1s(stack, pki):
    api = Admin(stack)
    cid = api.approved(pki.leaf)
    s = session(stack, pki.leaf)
    assert s.get(stack.httpd.url(GATED)).status_code == 200
    gets = redis_calls(stack.r, "get")
    for _ in range(50):                    # steady state: no Redis at all
        assert s.get(stack.httpd.url(GATED)).status_code == 200
    assert redis_calls(stack.r, "get") == gets
    resp = requests.post(stack.httpd.url("/admin/certs/%s/inactivate" % cid),
                         auth=("mgr1", stack.httpd.admin_users["mgr1"]),
                         json={"reason": "revoked"}, verify=stack.server_ca, timeout=10)
    assert resp.status_code == 200
    took = until(lambda: reason_of(s.get(stack.httpd.url(GATED))) == "inactivated", 1.0)
    assert took is not None, "still allowed 1 s after the inactivation"
    print("revocation: refused %.1f ms after the admin write returned" % (took * 1000))


def test_approval_while_the_client_holds_its_connection_within_1s(stack, pki):
    api = Admin(stack)
    cid = api.upload(pki.leaf_b).json()["id"]
    s = session(stack, pki.leaf_b)
    assert reason_of(s.get(stack.httpd.url(GATED))) == "pending"
    resp = requests.post(stack.httpd.url("/admin/certs/%s/approve" % cid),
                         auth=("mgr1", stack.httpd.admin_users["mgr1"]),
                         verify=stack.server_ca, timeout=10)
    assert resp.status_code == 200
    assert until(lambda: s.get(stack.httpd.url(GATED)).status_code == 200, 1.0) is not None


def test_unknown_certificate_becomes_known_within_1s(stack, pki):
    s = session(stack, pki.leaf_other)
    assert reason_of(s.get(stack.httpd.url(GATED))) == "unregistered"   # negative, cached
    register(stack.r, pki.leaf_other, "app2")
    assert until(lambda: s.get(stack.httpd.url(GATED)).status_code == 200, 1.0) is not None


def test_time_windows_apply_to_cached_registrations(stack, pki):
    register(stack.r, pki.leaf, "app1", retire_at=int(time.time()) + 2)
    s = session(stack, pki.leaf)
    assert s.get(stack.httpd.url(GATED)).status_code == 200
    assert until(lambda: reason_of(s.get(stack.httpd.url(GATED))) == "retired", 3.5) is not None


def test_killed_subscriber_max_age_still_bounds_staleness(stack, pki):
    register(stack.r, pki.leaf, "app1")
    s = session(stack, pki.leaf)
    assert s.get(stack.httpd.url(GATED)).status_code == 200
    subscribed = len(re.findall("CG07001", stack.httpd.read_log()))
    # Keep the subscriber out: it may reconnect but not subscribe.
    stack.r.execute_command("ACL", "SETUSER", "default", "-subscribe")
    try:
        assert stack.r.execute_command("CLIENT", "KILL", "TYPE", "pubsub") >= 1
        # A change whose message is lost: no publish at all.
        rid = stack.r.get("certgate:fp:" + pki.leaf.fingerprint).decode()
        stack.r.hset("certgate:reg:" + rid, "status", "INACTIVATED")
        took = until(lambda: reason_of(s.get(stack.httpd.url(GATED))) == "inactivated",
                     MAX_AGE + 1.0)
        assert took is not None, "stale beyond CertGateCacheMaxAge"
        assert took > 0.2, "refused at once: the max-age path was not what bounded it"
        print("lost invalidation bounded: refused after %.2f s (max age %d s)" % (took, MAX_AGE))
        log = stack.httpd.read_log()
        assert "CG07002" in log and "CG07003" in log
    finally:
        stack.r.execute_command("ACL", "SETUSER", "default", "+subscribe")
    # The subscriber comes back by itself.
    assert until(lambda: len(re.findall("CG07001", stack.httpd.read_log())) > subscribed,
                 3.0) is not None


def test_cache_entry_limit_is_respected(stack, pki):
    certs = [pki.leaf, pki.leaf_b, pki.leaf_other]
    for c in certs:
        register(stack.r, c, "app")
    # New connections each time: only the process cache can answer.
    for c in certs[:2] * 4:
        assert get(stack, GATED, c).status_code == 200
    base = redis_calls(stack.r, "get")
    for c in certs[:2] * 10:
        assert get(stack, GATED, c).status_code == 200
    fits = redis_calls(stack.r, "get") - base
    base = redis_calls(stack.r, "get")
    for c in certs * 10:
        assert get(stack, GATED, c).status_code == 200
    cycles = redis_calls(stack.r, "get") - base
    print("redis GETs: two certs in a 2-entry cache %d/20, three certs %d/30" % (fits, cycles))
    assert fits == 0
    assert cycles >= 20   # LRU of 2 over a cycle of 3: nearly every request misses
