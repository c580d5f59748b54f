"""nginx gates subrequests in the rewrite phase, like main requests (issue 15:
the precontent handler is installed only where some certgate_app_from
variable is). No such variable in this configuration: the precontent handler
is absent, so whatever is checked here is checked in the rewrite phase."""
import os

import pytest

from clients import get, session, usage_when_counted
from conftest import Stack
from harness import flush_store, register

SECRET = "ngxka enforced content\n"

# A gated location that answers in its own rewrite phase ("return"): before
# the gate ran there for subrequests, an SSI include of it was never checked.
NGINX_SERVER = """
        location /kaopen/ {
            ssi on;
            ssi_types text/plain;
        }
        location /karet/ {
            certgate on;
            return 200 "ngxka enforced content\\n";
        }
        # realip: the address of a request, not of its connection.
        set_real_ip_from 127.0.0.1;
        real_ip_header X-Real-IP;
"""


@pytest.fixture(scope="module")
def ngx(pki):
    s = Stack(pki, server="nginx",
              nginx_args={"extra_server": NGINX_SERVER, "workers": 1, "timeout_ms": 300})
    with open(os.path.join(s.work, "htdocs", "gated", "kasecret.txt"), "w") as f:
        f.write(SECRET)
    os.makedirs(os.path.join(s.work, "htdocs", "kaopen"), exist_ok=True)
    for name, target in (("file.txt", "/gated/kasecret.txt"), ("ret.txt", "/karet/x")):
        with open(os.path.join(s.work, "htdocs", "kaopen", name), "w") as f:
            f.write('page <!--#include virtual="%s" --> end\n' % target)
    yield s
    s.close()


@pytest.fixture
def stack(ngx):
    flush_store(ngx.r)
    return ngx


@pytest.mark.parametrize("page", ["file.txt", "ret.txt"])
@pytest.mark.parametrize("cert", ["unregistered", "none"])
def test_ssi_include_of_gated_location_refused_without_registration(stack, pki, page, cert):
    register(stack.r, pki.leaf, "app1")
    c = pki.leaf_other if cert == "unregistered" else None
    resp = get(stack, "/kaopen/" + page, c)
    assert resp.status_code == 200, resp.text     # the ungated page itself is served
    assert resp.text.startswith("page ") and resp.text.rstrip().endswith("end"), resp.text
    assert SECRET not in resp.text, resp.text


@pytest.mark.parametrize("page", ["file.txt", "ret.txt"])
def test_ssi_include_of_gated_location_served_to_registered_cert(stack, pki, page):
    # The first include after the flush looks the registration up in Redis:
    # the subrequest waits in the rewrite phase and is resumed by the reply.
    register(stack.r, pki.leaf, "app1")
    s = session(stack, pki.leaf)
    for _ in range(2):      # then from the connection's entry
        resp = s.get(stack.server.url("/kaopen/" + page), timeout=10)
        assert resp.status_code == 200 and SECRET in resp.text, resp.text


def test_ssi_include_while_redis_hangs_is_refused_and_answered(stack, pki):
    # The subrequest's lookup times out: the timer resumes the subrequest (not
    # the page), which is refused; the page itself still completes.
    register(stack.r, pki.leaf, "app1")
    stack.redis.pause()
    try:
        resp = get(stack, "/kaopen/file.txt", pki.leaf)
    finally:
        stack.redis.resume()
    assert resp.status_code == 200, resp.text
    assert resp.text.startswith("page ") and SECRET not in resp.text, resp.text
    resp = get(stack, "/kaopen/file.txt", pki.leaf)
    assert resp.status_code == 200 and SECRET in resp.text, resp.text


def test_usage_records_each_requests_address_across_connections(stack, pki):
    # Connection 1 repeats its address (not compared again while the record
    # holds it); connection 2 records another; connection 1's next request
    # must put its own back.
    reg_id = register(stack.r, pki.leaf_b, "app1", reg_id="ngxka-usage")
    one, two = session(stack, pki.leaf_b), session(stack, pki.leaf_b)
    url = stack.server.url("/gated/kasecret.txt")
    # (The first requests of a connection set up its entry, then its memo.)
    for s, ip in [(one, None)] * 4 + [(two, "192.0.2.33"), (one, None)]:
        resp = s.get(url, headers={"X-Real-IP": ip} if ip else {}, timeout=10)
        assert resp.status_code == 200, resp.text
    usage = usage_when_counted(stack, reg_id, 6)
    assert usage.get(b"count") == b"6", usage
    assert usage.get(b"last_ip") == b"127.0.0.1", usage
