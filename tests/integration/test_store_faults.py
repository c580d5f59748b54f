"""Redis trouble: paused, killed, restarted, corrupt records. Bounded, fail closed."""
import time

import pytest

from clients import get, reason_of
import harness
from conftest import SERVERS, Stack
from harness import invalidate, register

GATED = "/gated/ok.txt"
TIMEOUT_S = 0.2 + harness.SLACK   # CertGateRedisTimeout in the harness config


@pytest.fixture(scope="module", params=SERVERS)
def stack(request, pki):
    # These tests are about the store path itself: no cache in front of it.
    s = Stack(pki, server=request.param, extra_server="CertGateCache Off",
              nginx_args={"extra_http": "certgate_cache off;"})
    yield s
    s.close()


@pytest.fixture(autouse=True)
def seeded(stack, pki):
    if stack.redis.proc is None:
        stack.redis.start()
    stack.r.flushdb()
    register(stack.r, pki.leaf, "app1")
    yield


def timed_get(stack, cert):
    t0 = time.monotonic()
    resp = get(stack, GATED, cert)
    return resp, time.monotonic() - t0


def wait_for_200(stack, cert, limit=1.0):
    deadline = time.monotonic() + limit
    while True:
        resp = get(stack, GATED, cert)
        if resp.status_code == 200 or time.monotonic() > deadline:
            return resp
        time.sleep(0.05)


def test_paused_redis_answers_503_within_timeout(stack, pki):
    assert get(stack, GATED, pki.leaf).status_code == 200  # warm a pooled connection
    stack.redis.pause()
    try:
        for _ in range(3):
            resp, elapsed = timed_get(stack, pki.leaf)
            assert resp.status_code == 503
            assert reason_of(resp) == "store_unavailable"
            assert resp.headers.get("Retry-After") == "1"
            assert elapsed < TIMEOUT_S + 1.0, elapsed
    finally:
        stack.redis.resume()
    assert wait_for_200(stack, pki.leaf).status_code == 200
    log = stack.server.read_log()
    assert "CG02004" in log and "timeout" in log   # the timeout tag (CG02001 before)


def test_killed_redis_answers_503_then_recovers(stack, pki):
    assert get(stack, GATED, pki.leaf).status_code == 200
    stack.redis.stop()
    resp, elapsed = timed_get(stack, pki.leaf)
    assert resp.status_code == 503
    assert reason_of(resp) == "store_unavailable"
    assert elapsed < TIMEOUT_S + 1.0
    stack.redis.start()   # same port; the data went with it
    register(stack.r, pki.leaf, "app1")
    assert wait_for_200(stack, pki.leaf).status_code == 200


def test_restarted_redis_does_not_fail_requests_on_stale_connections(stack, pki):
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(8) as ex:   # fill the per-process pools
        assert set(ex.map(lambda _: get(stack, GATED, pki.leaf).status_code, range(32))) == {200}
    stack.redis.stop()
    stack.redis.start()
    register(stack.r, pki.leaf, "app1")
    codes = [get(stack, GATED, pki.leaf).status_code for _ in range(20)]
    assert codes == [200] * 20


def test_unregistered_cert_is_never_let_through_while_redis_is_down(stack, pki):
    stack.redis.stop()
    for cert in (pki.leaf_other, pki.leaf):
        assert get(stack, GATED, cert).status_code == 503


@pytest.mark.parametrize("corrupt", [
    lambda r, rid: (r.delete("certgate:reg:" + rid), r.set("certgate:reg:" + rid, "x")),
    lambda r, rid: r.hdel("certgate:reg:" + rid, "status"),
    lambda r, rid: r.hset("certgate:reg:" + rid, "valid_to", "soon"),
    lambda r, rid: r.hset("certgate:reg:" + rid, "status", "approved"),
    lambda r, rid: r.hset("certgate:reg:" + rid, "chain", "zz"),
    lambda r, rid: r.hset("certgate:reg:" + rid, "fingerprint", "00" * 32),
], ids=["string-not-hash", "missing-status", "bad-time", "bad-status", "bad-chain",
        "fingerprint-differs"])
def test_corrupt_record_fails_closed(stack, pki, corrupt):
    rid = stack.r.get("certgate:fp:" + pki.leaf.fingerprint).decode()
    corrupt(stack.r, rid)
    invalidate(stack.r, pki.leaf.fingerprint)
    resp = get(stack, GATED, pki.leaf)
    assert resp.status_code == 503
    assert reason_of(resp) == "store_unavailable"
    assert "CG02003" in stack.server.read_log()


def test_redis_password_never_logged(stack, pki):
    stack.redis.stop()
    get(stack, GATED, pki.leaf)
    stack.redis.start()
    assert stack.redis.PASSWORD not in stack.server.read_log()
