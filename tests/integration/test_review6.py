"""Review of ngxfast (issue 15): nginx's request state shared by a main request
and its subrequests (the connection's slot on HTTP/1, the pool's on HTTP/2)."""
import os
import socket
import subprocess
import time

import pytest

from clients import files_for, raw_tls
from conftest import Stack
from harness import register

# A fail-open enforcing location with an auth_request: the auth subrequest
# (a file, so that it reaches the precontent phase) finds the main request's state. Some location names its app by a variable,
# so the precontent handler runs for main requests too, and the fail-open
# decision (not enforced) is made again there, with a lookup of its own.
NGINX_SERVER = """
        location = /r6authz { internal; }
        location /r6fo/ {
            certgate on;
            certgate_on_store_error allow;
            auth_request /r6authz;
        }
        location /r6var/ {
            set $r6app app1;
            certgate on;
            certgate_app_from variable $r6app;
        }
"""


@pytest.fixture(scope="module")
def stack(pki):
    s = Stack(pki, server="nginx",
              nginx_args={"extra_server": NGINX_SERVER, "workers": 1, "timeout_ms": 500})
    for d in ("r6fo", "r6var"):
        os.makedirs(os.path.join(s.work, "htdocs", d), exist_ok=True)
        with open(os.path.join(s.work, "htdocs", d, "ok.txt"), "w") as f:
            f.write("ok\n")
    with open(os.path.join(s.work, "htdocs", "r6authz"), "w") as f:
        f.write("yes\n")
    yield s
    s.close()


def read_status(sock):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before a response: %r" % data)
        data += chunk
    return int(data.split(b" ", 2)[1])


@pytest.mark.parametrize("http2", [False, True], ids=["http1", "http2"])
def test_lookup_after_an_auth_subrequest_resumes_the_main_request(stack, pki, http2):
    stack.r.flushdb()
    register(stack.r, pki.leaf, "app1")
    stack.redis.pause()
    try:
        if http2:
            # HTTP/2: the state in the request's pool, found the same way.
            c, k = files_for(stack, pki.leaf)
            t0 = time.monotonic()
            out = subprocess.run(
                ["curl", "-s", "--http2", "-o", "/dev/null", "-w", "%{http_code} %{http_version}",
                 "--cacert", stack.server_ca, "--cert", c, "--key", k, "-m", "8",
                 stack.server.url("/r6fo/ok.txt")], capture_output=True, text=True)
            took = time.monotonic() - t0
            assert out.stdout == "200 2", (out.stdout, took)
        else:
            sock = raw_tls(stack, pki.leaf)
            t0 = time.monotonic()
            sock.sendall(b"GET /r6fo/ok.txt HTTP/1.1\r\nHost: localhost\r\n\r\n")
            try:
                status = read_status(sock)
            except socket.timeout:
                pytest.fail("no answer after %.1f s: the lookup resumed another request"
                            % (time.monotonic() - t0))
            except ConnectionError as e:
                # Before the fix: the auth subrequest's phases ran again ("header
                # already sent") and the main request was never answered.
                pytest.fail("%s\n%s" % (e, stack.server.read_log()[-3000:]))
            finally:
                sock.close()
            # The store times out (twice: rewrite, then precontent): let through.
            assert status == 200
    finally:
        stack.redis.resume()
    log = stack.server.read_log()
    assert "exited on signal" not in log and "[alert]" not in log
