"""The gate's hot path (issue 15): what the cuts must not change, and the
nginx worker's Redis connection made at start."""
import time

import pytest

from clients import session
from conftest import Stack
from harness import flush_store, register


@pytest.fixture(scope="module")
def stack(pki):
    s = Stack(pki, server="nginx", nginx_args={"workers": 1})
    yield s
    s.close()


def lookup_connections(r):
    """Clients that authenticated or selected their DB and did nothing since:
    the worker's lookup connection before its first lookup. (The subscriber's
    last command is SUBSCRIBE; our own client's is CLIENT.)"""
    return [c for c in r.client_list() if c.get("cmd") in ("auth", "select", "hello")]


def test_nginx_worker_connects_to_redis_at_start(stack):
    # No request is sent: the worker must have connected on its own.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not lookup_connections(stack.r):
        time.sleep(0.1)
    assert lookup_connections(stack.r), stack.r.client_list()


@pytest.fixture(scope="module")
def httpd_stack(pki):
    s = Stack(pki)      # the harness logs certgate at debug
    yield s
    s.close()


def test_allow_debug_line_still_written_where_debug_is_on(httpd_stack, pki):
    # The core now asks httpd whether debug is on before it formats CG01002.
    s = httpd_stack
    flush_store(s.r)
    reg_id = register(s.r, pki.leaf, "app1")
    sess = session(s, pki.leaf)
    for _ in range(3):     # the first, and answers from the connection's entry
        assert sess.get(s.server.url("/gated/ok.txt"), timeout=10).status_code == 200
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and s.server.read_log().count("CG01002: allow") < 3:
        time.sleep(0.1)
    lines = [l for l in s.server.read_log().splitlines() if "CG01002: allow" in l]
    assert len(lines) == 3 and all("cert=%s " % reg_id in l for l in lines), lines
    assert "fingerprint=%s " % pki.leaf.fingerprint in lines[-1], lines[-1]
