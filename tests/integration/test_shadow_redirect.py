"""Shadow mode must not leak into an enforcing location: a request the gate let
through in a shadow location and then internally redirected (ErrorDocument /
error_page, nginx rewrite ... last) into an enforcing location is decided
again there, and refused if the enforcing location refuses it."""
import os

import pytest

import harness
from clients import get, reason_of
from conftest import SERVERS, Stack
from harness import flush_store, register

SECRET = "enforced content\n"

HTTPD_VHOST = """
  <Location "/shadowerr/">
    CertGate On
    CertGateMode Shadow
    ErrorDocument 404 /gated/secret.txt
  </Location>
  <Location "/shadowerr2/">
    CertGate On
    CertGateMode Shadow
    ErrorDocument 404 /shadow2/ok.txt
  </Location>
  <Location "/shadowssi/">
    CertGate On
    CertGateMode Shadow
    Options +Includes
    AddOutputFilter INCLUDES .txt
  </Location>
  <Location "/shadow2/">
    CertGate On
    CertGateMode Shadow
  </Location>
"""

NGINX_SERVER = """
        location /shadowerr/ {
            certgate on;
            certgate_mode shadow;
            error_page 404 /gated/secret.txt;
        }
        location /shadowerr2/ {
            certgate on;
            certgate_mode shadow;
            error_page 404 /shadow2/ok.txt;
        }
        location /shadow2/ {
            certgate on;
            certgate_mode shadow;
            add_header X-Seen-Reason $certgate_reason always;
            add_header X-Seen-Enforced $certgate_enforced always;
        }
        location /shadowrw/ {
            certgate on;
            certgate_mode shadow;
            rewrite ^/shadowrw/(.*)$ /gated/$1 last;
        }
        # The app from a variable: the certificate is admitted in the rewrite
        # phase, the app checked later in the location the request ends in.
        location /shadowvarrw/ {
            certgate on;
            certgate_mode shadow;
            certgate_app_from variable $arg_app;
            rewrite ^/shadowvarrw/(.*)$ /appvar/$1 last;
        }
        location /shadowssi/ {
            certgate on;
            certgate_mode shadow;
            ssi on;
            ssi_types text/plain;
        }
        location /appvar/ {
            certgate on;
            certgate_app_from variable $arg_app;
        }
"""


@pytest.fixture(scope="module", params=SERVERS)
def module_stack(request, pki):
    s = Stack(pki, server=request.param, extra_vhost=HTTPD_VHOST,
              extra_server="LoadModule include_module %s/mod_include.so" % harness.MODDIR,
              nginx_args={"extra_server": NGINX_SERVER})
    with open(os.path.join(s.work, "htdocs", "gated", "secret.txt"), "w") as f:
        f.write(SECRET)
    os.makedirs(os.path.join(s.work, "htdocs", "appvar"), exist_ok=True)
    with open(os.path.join(s.work, "htdocs", "appvar", "secret.txt"), "w") as f:
        f.write(SECRET)
    os.makedirs(os.path.join(s.work, "htdocs", "shadowssi"), exist_ok=True)
    with open(os.path.join(s.work, "htdocs", "shadowssi", "page.txt"), "w") as f:
        f.write('page <!--#include virtual="/gated/secret.txt" --> end\n')
    os.makedirs(os.path.join(s.work, "htdocs", "shadow2"), exist_ok=True)
    with open(os.path.join(s.work, "htdocs", "shadow2", "ok.txt"), "w") as f:
        f.write("shadow2\n")
    yield s
    s.close()


@pytest.fixture
def stack(module_stack):
    flush_store(module_stack.r)
    return module_stack


@pytest.mark.parametrize("cert", ["unregistered", "none"])
def test_error_document_from_shadow_into_enforcing_is_gated(stack, pki, cert):
    register(stack.r, pki.leaf, "app1")
    c = pki.leaf_other if cert == "unregistered" else None
    # The enforcing location itself refuses this client.
    assert get(stack, "/gated/secret.txt", c).status_code == 403
    resp = get(stack, "/shadowerr/missing", c)
    assert SECRET not in resp.text, (resp.status_code, resp.text)


def test_rewrite_from_shadow_into_enforcing_is_gated(stack, pki):
    if stack.kind != "nginx":
        pytest.skip("nginx rewrite ... last")
    register(stack.r, pki.leaf, "app1")
    resp = get(stack, "/shadowrw/secret.txt", pki.leaf_other)
    assert resp.status_code == 403, (resp.status_code, resp.text)
    assert reason_of(resp) == "unregistered"
    assert SECRET not in resp.text
    resp = get(stack, "/shadowrw/secret.txt")
    assert resp.status_code == 403 and reason_of(resp) == "no_client_cert"


def test_app_check_after_rewrite_into_enforcing_is_enforced(stack, pki):
    if stack.kind != "nginx":
        pytest.skip("certgate_app_from variable is nginx's")
    register(stack.r, pki.leaf, "app1")
    assert get(stack, "/appvar/secret.txt?app=app2", pki.leaf).status_code == 403
    resp = get(stack, "/shadowvarrw/secret.txt?app=app2", pki.leaf)
    assert resp.status_code == 403, (resp.status_code, resp.text)
    assert reason_of(resp) == "app_mismatch"
    resp = get(stack, "/shadowvarrw/secret.txt?app=app1", pki.leaf)
    assert resp.status_code == 200 and resp.text == SECRET


@pytest.mark.parametrize("cert", ["unregistered", "none"])
def test_subrequest_from_shadow_into_enforcing_is_refused(stack, pki, cert):
    register(stack.r, pki.leaf, "app1")
    c = pki.leaf_other if cert == "unregistered" else None
    resp = get(stack, "/shadowssi/page.txt", c)
    assert SECRET not in resp.text, (resp.status_code, resp.text)
    # An allowed client still gets the included content.
    resp = get(stack, "/shadowssi/page.txt", pki.leaf)
    assert resp.status_code == 200 and SECRET in resp.text, resp.text


def test_redirect_keeps_working_where_the_client_is_allowed(stack, pki):
    register(stack.r, pki.leaf, "app1")
    resp = get(stack, "/shadowerr/missing", pki.leaf)
    assert resp.status_code == 404 and resp.text == SECRET
    if stack.kind == "nginx":
        resp = get(stack, "/shadowrw/secret.txt", pki.leaf)
        assert resp.status_code == 200 and resp.text == SECRET


def test_shadow_to_shadow_redirect_still_passes(stack, pki):
    # Both locations shadow: the would-be refusal passes through the redirect.
    resp = get(stack, "/shadowerr2/missing", pki.leaf_other)
    assert resp.status_code == 404 and resp.text == "shadow2\n", (resp.status_code, resp.text)


def test_server_level_shadow_is_warned_at_startup(pki):
    # CertGateMode Shadow outside any section makes every gated location of the
    # virtual host shadow: the startup reminder must say so.
    s = Stack(pki, extra_vhost="  CertGateMode Shadow\n")
    try:
        resp = get(s, "/gated/ok.txt", pki.leaf_other)
        assert resp.status_code == 200     # shadow applies to /gated/
        assert "CG05010" in s.server.read_log(), s.server.read_log()[-2000:]
    finally:
        s.close()


@pytest.mark.parametrize("server", SERVERS)
def test_shadow_wins_over_fail_open(pki, server):
    # test_shadow.py's "FAIL-OPEN not in the log" cannot fail: fail-open is not
    # configured there. Here it is, beside shadow mode, which must take precedence.
    s = Stack(pki, server=server,
              extra_vhost="  CertGateOnStoreError allow\n"
                          "  <Location \"/shadow/\">\n    CertGate On\n    CertGateMode Shadow\n"
                          "  </Location>\n",
              nginx_args={"extra_server": "location /shadow/ { certgate on; "
                                          "certgate_mode shadow; certgate_on_store_error allow; }"})
    try:
        os.makedirs(os.path.join(s.work, "htdocs", "shadow"), exist_ok=True)
        with open(os.path.join(s.work, "htdocs", "shadow", "ok.txt"), "w") as f:
            f.write("ok\n")
        s.redis.stop()
        resp = get(s, "/shadow/ok.txt", pki.leaf_b)
        assert resp.status_code == 200
        assert harness.wait_for_line(s.server.error_log, "CG01010")
        log = s.server.read_log()
        assert "reason=store_unavailable" in log
        assert "CG02002" not in log and "FAIL-OPEN" not in log
    finally:
        s.redis.start()
        s.close()
