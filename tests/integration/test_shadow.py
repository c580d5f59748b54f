"""Shadow mode (CertGateMode Shadow / certgate_mode shadow): the gate decides,
logs (CG01010), counts (certgate_would_deny_total) and exports its reason with
CERTGATE_ENFORCED=0 / $certgate_enforced, but refuses nothing. An enforcing
location beside it still refuses. Runs against both servers."""
import os
import time

import pytest
import requests

import harness
from clients import get, reason_of
from conftest import SERVERS, Stack
from harness import flush_store, register

GATED = "/gated/ok.txt"
SHADOW = "/shadow/ok.txt"
SHADOW_APP = "/shadowapp/ok.txt"

HTTPD_VHOST = """
  Header always set X-Seen-Reason "%{CERTGATE_REASON}e"
  Header always set X-Seen-Enforced "%{CERTGATE_ENFORCED}e"
  <Location "/shadow/">
    CertGate On
    CertGateMode Shadow
  </Location>
  <Location "/shadowapp/">
    CertGate On
    CertGateMode Shadow
    CertGateAppFrom header X-App-Id
  </Location>
  <Location "/metrics">
    SetHandler certgate-metrics
  </Location>
"""

# add_header in a location replaces the server's: repeat the probes needed here.
NGINX_SERVER = """
        location /shadow/ {
            certgate on;
            certgate_mode shadow;
            add_header X-Seen-Reason $certgate_reason always;
            add_header X-Seen-Enforced $certgate_enforced always;
            add_header X-Seen-App $certgate_app_id always;
        }
        location /shadowapp/ {
            certgate on;
            certgate_mode shadow;
            certgate_app_from header X-App-Id;
            add_header X-Seen-Reason $certgate_reason always;
            add_header X-Seen-Enforced $certgate_enforced always;
            add_header X-Seen-App $certgate_app_id always;
        }
        # The app from a variable: checked in the precontent phase, or, for an
        # answer made in the rewrite phase, by the header filter.
        location /shadowvar/ {
            set $shadow_app $arg_app;
            certgate on;
            certgate_mode shadow;
            certgate_app_from variable $shadow_app;
            add_header X-Seen-Reason $certgate_reason always;
            add_header X-Seen-Enforced $certgate_enforced always;
        }
        location /shadowret/ {
            set $shadow_app2 $arg_app;
            certgate on;
            certgate_mode shadow;
            certgate_app_from variable $shadow_app2;
            add_header X-Seen-Reason $certgate_reason always;
            add_header X-Seen-Enforced $certgate_enforced always;
            return 200 "made\n";
        }
"""


@pytest.fixture(scope="module", params=SERVERS)
def stack(request, pki):
    s = Stack(pki, server=request.param, extra_vhost=HTTPD_VHOST,
              nginx_args={"extra_server": NGINX_SERVER})
    for d in ("shadow", "shadowapp", "shadowvar"):
        os.makedirs(os.path.join(s.work, "htdocs", d), exist_ok=True)
        with open(os.path.join(s.work, "htdocs", d, "ok.txt"), "w") as f:
            f.write("ok\n")
    yield s
    s.close()


@pytest.fixture(autouse=True)
def clean_store(stack):
    if stack.redis.proc is None:    # a test stopped it
        stack.redis.start()
    flush_store(stack.r)
    yield


def would_deny(stack, reason):
    """certgate_would_deny_total{reason=...} from httpd's metrics handler."""
    resp = requests.get(stack.server.url("/metrics"), verify=stack.server_ca, timeout=10)
    assert resp.status_code == 200
    key = 'certgate_would_deny_total{reason="%s"} ' % reason
    for line in resp.text.splitlines():
        if line.startswith(key):
            return int(line.split()[-1])
    raise AssertionError("no %s in the metrics" % key)


def log_lines(stack, tag, needle):
    return [l for l in stack.server.read_log().splitlines() if tag in l and needle in l]


def test_startup_warns_about_shadow(stack):
    # nginx writes configuration warnings to stderr (before its error_log is open).
    startup = stack.server.read_log() + open(os.path.join(stack.work, "logs", "stderr.log")).read()
    assert "CG05010" in startup, startup[-2000:]


def test_unregistered_cert_passes_in_shadow_and_is_refused_beside_it(stack, pki):
    register(stack.r, pki.leaf, "app1")     # another cert is registered: leaf_other is not
    before = would_deny(stack, "unregistered") if stack.kind == "httpd" else None
    resp = get(stack, SHADOW, pki.leaf_other)
    assert resp.status_code == 200, resp.text
    assert resp.text == "ok\n"
    assert resp.headers["X-Seen-Reason"] == "unregistered"
    assert resp.headers["X-Seen-Enforced"] == "0"
    # The client sees nothing of it; an allow's exports are not made.
    assert reason_of(resp) is None
    assert resp.headers.get("X-Seen-App", "") in ("", "(null)")
    assert harness.wait_for_line(stack.server.error_log, pki.leaf_other.fingerprint)
    lines = log_lines(stack, "CG01010", pki.leaf_other.fingerprint)
    assert lines and "shadow deny (not enforced) reason=unregistered" in lines[-1], lines
    assert "client=127.0.0.1" in lines[-1]
    assert "warn]" in lines[-1]
    assert not log_lines(stack, "CG01001", pki.leaf_other.fingerprint)
    if stack.kind == "httpd":
        assert would_deny(stack, "unregistered") == before + 1

    # The enforcing location beside it: refused, logged as a real deny, not counted as would_deny.
    resp = get(stack, GATED, pki.leaf_other)
    assert resp.status_code == 403
    assert reason_of(resp) == "unregistered"
    assert harness.wait_for_line(stack.server.error_log, "CG01001")
    assert log_lines(stack, "CG01001", pki.leaf_other.fingerprint)
    if stack.kind == "httpd":
        assert would_deny(stack, "unregistered") == before + 1


def test_allow_in_shadow_is_a_plain_allow(stack, pki):
    register(stack.r, pki.leaf, "app1")
    resp = get(stack, SHADOW, pki.leaf)
    assert resp.status_code == 200
    assert resp.headers["X-Seen-Reason"] == "allow"
    assert resp.headers["X-Seen-Enforced"] == "1"
    assert resp.headers["X-Seen-App"] == "app1"


@pytest.mark.parametrize("case", ["no_client_cert", "pending", "app_mismatch"])
def test_other_reasons_pass_in_shadow(stack, pki, case):
    headers = {}
    cert = pki.leaf
    path = SHADOW
    if case == "pending":
        register(stack.r, pki.leaf, "app1", status="PENDING")
    elif case == "app_mismatch":
        register(stack.r, pki.leaf, "app1")
        path, headers = SHADOW_APP, {"X-App-Id": "app2"}
    else:
        cert = None
    before = would_deny(stack, case) if stack.kind == "httpd" else None
    resp = get(stack, path, cert, headers=headers)
    assert resp.status_code == 200, resp.text
    assert resp.headers["X-Seen-Reason"] == case
    assert resp.headers["X-Seen-Enforced"] == "0"
    if stack.kind == "httpd":
        assert would_deny(stack, case) == before + 1
    # Enforced where the mode is not shadow.
    enforced = {"no_client_cert": GATED, "pending": GATED, "app_mismatch": "/app/ok.txt"}[case]
    resp = get(stack, enforced, cert, headers=headers)
    assert resp.status_code == 403
    assert reason_of(resp) == case


def test_store_down_in_shadow_passes_and_is_counted(stack, pki):
    register(stack.r, pki.leaf_b, "app1")
    before = would_deny(stack, "store_unavailable") if stack.kind == "httpd" else None
    flush_store(stack.r)    # nothing cached: the gate must ask Redis
    stack.redis.stop()
    try:
        resp = get(stack, SHADOW, pki.leaf_b)
        assert resp.status_code == 200, resp.text
        assert resp.headers["X-Seen-Reason"] == "store_unavailable"
        assert resp.headers["X-Seen-Enforced"] == "0"
        # Enforcing beside it: 503.
        resp = get(stack, GATED, pki.leaf_b)
        assert resp.status_code == 503
        assert reason_of(resp) == "store_unavailable"
    finally:
        stack.redis.start()
    lines = log_lines(stack, "CG01010", pki.leaf_b.fingerprint)
    assert lines and "reason=store_unavailable" in lines[-1], lines
    assert "FAIL-OPEN" not in stack.server.read_log()
    if stack.kind == "httpd":
        assert would_deny(stack, "store_unavailable") == before + 1


@pytest.mark.parametrize("path,body", [("/shadowvar/ok.txt", "ok\n"), ("/shadowret/x", "made\n")])
def test_nginx_app_from_variable_in_shadow(stack, pki, path, body):
    if stack.kind != "nginx":
        pytest.skip("certgate_app_from variable is nginx's")
    register(stack.r, pki.leaf, "app1")
    resp = get(stack, path + "?app=app1", pki.leaf)
    assert resp.status_code == 200 and resp.text == body
    assert resp.headers["X-Seen-Reason"] == "allow"
    assert resp.headers["X-Seen-Enforced"] == "1"
    before = len(log_lines(stack, "CG01010", "reason=app_mismatch"))
    resp = get(stack, path + "?app=app2", pki.leaf)
    assert resp.status_code == 200, resp.text
    assert resp.text == body
    assert resp.headers["X-Seen-Reason"] == "app_mismatch"
    assert resp.headers["X-Seen-Enforced"] == "0"
    # This request's own line: earlier tests in this stack wrote such lines too.
    deadline = time.time() + 5
    while len(log_lines(stack, "CG01010", "reason=app_mismatch")) <= before and time.time() < deadline:
        time.sleep(0.05)
    lines = log_lines(stack, "CG01010", "reason=app_mismatch")
    assert len(lines) == before + 1, stack.server.read_log()[-2000:]
    if path.startswith("/shadowret/"):
        assert "answer made before the app check" in lines[-1]
