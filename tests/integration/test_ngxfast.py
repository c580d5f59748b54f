"""nginx keeps an HTTP/1 request's gate state in its connection (a slot reused by
the connection's next request, no allocation per request). A later request on
the same keep-alive connection must never see an earlier one's decision; an
internal redirect and a subrequest of the same request must still find it; a
lookup in flight when the client goes away must end cleanly."""
import os
import time

import pytest

from clients import raw_tls, session
from conftest import Stack
from harness import register

NGINX_SERVER = """
        location /plain/ { }
        location /gone/ {
            certgate on;
            error_page 404 /plain/ok.txt;
        }
        location /shadowapp/ {
            certgate on;
            certgate_mode shadow;
            certgate_app_from header X-App-Id;
        }
        location /ssig/ {
            certgate on;
            ssi on;
            ssi_types text/plain;
        }
        location /echo/ {
            return 200 "echo app=$certgate_app_id reason=$certgate_reason\\n";
        }
"""


@pytest.fixture(scope="module")
def stack(pki):
    s = Stack(pki, server="nginx",
              nginx_args={"extra_server": NGINX_SERVER, "workers": 1, "timeout_ms": 1000})
    for d in ("plain", "shadowapp", "ssig"):
        os.makedirs(os.path.join(s.work, "htdocs", d), exist_ok=True)
        with open(os.path.join(s.work, "htdocs", d, "ok.txt"), "w") as f:
            f.write("ok\n")
    with open(os.path.join(s.work, "htdocs", "ssig", "page.txt"), "w") as f:
        f.write('page <!--#include virtual="/echo/x" --> end\n')
    yield s
    s.close()


@pytest.fixture
def reg(stack, pki):
    stack.r.flushdb()
    register(stack.r, pki.leaf, "app1")
    return stack


def seen_app(resp):
    return resp.headers.get("X-Seen-App")


def test_next_request_on_the_connection_does_not_see_the_last_decision(reg, pki):
    s = session(reg, pki.leaf)
    first = s.get(reg.server.url("/gated/ok.txt"), timeout=10)
    assert first.status_code == 200 and seen_app(first) == "app1"
    # Same connection, an ungated location: no decision of its own.
    second = s.get(reg.server.url("/plain/ok.txt"), timeout=10)
    assert second.status_code == 200
    assert seen_app(second) is None
    assert second.headers.get("X-Seen-Cert-Id") is None
    assert second.headers.get("X-Seen-Fingerprint") is None
    # And back: the gate decides again, on the same connection.
    third = s.get(reg.server.url("/gated/ok.txt"), timeout=10)
    assert third.status_code == 200 and seen_app(third) == "app1"
    s.close()


def test_a_deny_after_an_allow_on_the_connection_exports_nothing(reg, pki):
    s = session(reg, pki.leaf)
    assert seen_app(s.get(reg.server.url("/gated/ok.txt"), timeout=10)) == "app1"
    # Shadow: the app mismatch is let through, with no registration's values.
    resp = s.get(reg.server.url("/shadowapp/ok.txt"), headers={"X-App-Id": "other"}, timeout=10)
    assert resp.status_code == 200
    assert seen_app(resp) is None
    assert resp.headers.get("X-Seen-Cert-Id") is None
    assert resp.headers.get("X-Seen-Expire-In") is None
    s.close()


def test_internal_redirect_keeps_the_first_decision(reg, pki):
    s = session(reg, pki.leaf)
    # The lookup in a request of its own: the one redirected decides from the cache.
    assert s.get(reg.server.url("/gated/ok.txt"), timeout=10).status_code == 200
    assert s.get(reg.server.url("/plain/ok.txt"), timeout=10).status_code == 200
    # 404 in a gated location, error_page into an ungated one: the allow stays.
    resp = s.get(reg.server.url("/gone/missing.txt"), timeout=10)
    assert resp.status_code == 404
    assert resp.text == "ok\n"
    assert seen_app(resp) == "app1"
    s.close()


def test_subrequest_finds_the_main_requests_decision(reg, pki):
    s = session(reg, pki.leaf)
    assert s.get(reg.server.url("/gated/ok.txt"), timeout=10).status_code == 200
    resp = s.get(reg.server.url("/ssig/page.txt"), timeout=10)
    assert resp.status_code == 200
    assert "echo app=app1 reason=allow" in resp.text
    # The next request on the connection, without a decision: nothing.
    resp = s.get(reg.server.url("/echo/y"), timeout=10)
    assert resp.text == "echo app= reason=\n"
    s.close()


def read_response(sock):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(head.split(b" ", 2)[1]), head


def test_lookup_in_flight_when_the_client_goes_away(reg, pki):
    # A certificate this worker never looked up: no cache entry, a lookup.
    register(reg.r, pki.leaf_b, "app1", reg_id="reg-gone")
    log_before = len(reg.server.read_log())
    reg.redis.pause()
    try:
        # The lookup waits on Redis; the client leaves; the timeout (1 s) fires
        # for a request whose client is gone.
        for _ in range(3):
            sock = raw_tls(reg, pki.leaf_b)
            sock.sendall(b"GET /gated/ok.txt HTTP/1.1\r\nHost: localhost\r\n\r\n")
            time.sleep(0.1)
            sock.close()
        # A keep-alive connection whose first lookup times out, then its next
        # request's lookup: the slot is reused after a lookup.
        sock = raw_tls(reg, pki.leaf_b)
        sock.sendall(b"GET /gated/ok.txt HTTP/1.1\r\nHost: localhost\r\n\r\n")
        status, _ = read_response(sock)
        assert status == 503
        time.sleep(1.5)
    finally:
        reg.redis.resume()
    sock.sendall(b"GET /gated/ok.txt HTTP/1.1\r\nHost: localhost\r\n\r\n")
    status, head = read_response(sock)
    assert status == 200
    assert b"X-Seen-App: app1" in head
    sock.sendall(b"GET /plain/ok.txt HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    status, head = read_response(sock)
    assert status == 200 and b"X-Seen-App" not in head
    sock.close()
    s = session(reg, pki.leaf_b)
    assert s.get(reg.server.url("/gated/ok.txt"), timeout=10).status_code == 200
    s.close()
    log = reg.server.read_log()[log_before:]
    assert "exited on signal" not in log and "[alert]" not in log
