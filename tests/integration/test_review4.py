"""Second reading of issue 15 (per-request instructions): cases the first
round's tests did not reach because their configurations always had some
certgate_app_from variable, or one client address per connection."""
import os
import re
import time

import pytest

from clients import get, session
from conftest import Stack
from harness import flush_store, register

SECRET = "enforced content\n"

# No certgate_app_from variable anywhere: the precontent handler is then not
# installed (mc->app_var_used), and must not be needed.
NGINX_NO_APP_VAR = """
        location /shadowssi/ {
            certgate on;
            certgate_mode shadow;
            ssi on;
            ssi_types text/plain;
        }
        location /openssi/ {
            ssi on;
            ssi_types text/plain;
        }
        # Server level: realip's post-read handler, before the gate.
        set_real_ip_from 127.0.0.1;
        real_ip_header X-Real-IP;
        location /rip/ { certgate on; }
"""


@pytest.fixture(scope="module")
def ngx(pki):
    s = Stack(pki, server="nginx", nginx_args={"extra_server": NGINX_NO_APP_VAR})
    with open(os.path.join(s.work, "htdocs", "gated", "secret.txt"), "w") as f:
        f.write(SECRET)
    os.makedirs(os.path.join(s.work, "htdocs", "shadowssi"), exist_ok=True)
    with open(os.path.join(s.work, "htdocs", "shadowssi", "page.txt"), "w") as f:
        f.write('page <!--#include virtual="/gated/secret.txt" --> end\n')
    os.makedirs(os.path.join(s.work, "htdocs", "openssi"), exist_ok=True)
    with open(os.path.join(s.work, "htdocs", "openssi", "page.txt"), "w") as f:
        f.write('page <!--#include virtual="/gated/secret.txt" --> end\n')
    os.makedirs(os.path.join(s.work, "htdocs", "rip"), exist_ok=True)
    with open(os.path.join(s.work, "htdocs", "rip", "ok.txt"), "w") as f:
        f.write("ok\n")
    yield s
    s.close()


@pytest.fixture
def stack(ngx):
    flush_store(ngx.r)
    return ngx


@pytest.mark.parametrize("cert", ["unregistered", "none"])
def test_nginx_subrequest_from_shadow_into_enforcing_refused_without_app_variable(stack, pki,
                                                                                    cert):
    register(stack.r, pki.leaf, "app1")
    c = pki.leaf_other if cert == "unregistered" else None
    assert get(stack, "/gated/secret.txt", c).status_code == 403
    resp = get(stack, "/shadowssi/page.txt", c)
    assert SECRET not in resp.text, (resp.status_code, resp.text)
    resp = get(stack, "/shadowssi/page.txt", pki.leaf)
    assert resp.status_code == 200 and SECRET in resp.text, resp.text


@pytest.mark.parametrize("cert", ["unregistered", "none"])
def test_nginx_subrequest_from_ungated_into_gated_refused_without_app_variable(stack, pki, cert):
    register(stack.r, pki.leaf, "app1")
    c = pki.leaf_other if cert == "unregistered" else None
    resp = get(stack, "/openssi/page.txt", c)
    assert SECRET not in resp.text, (resp.status_code, resp.text)
    resp = get(stack, "/openssi/page.txt", pki.leaf)
    assert resp.status_code == 200 and SECRET in resp.text, resp.text


def test_nginx_client_address_per_request_with_realip(stack, pki):
    # realip changes the connection's address per request: the deny lines name
    # each request's client, not the first one's on the connection.
    s = session(stack, pki.leaf_other)
    before = len(stack.server.read_log())
    for ip in ("192.0.2.11", "192.0.2.22"):
        resp = s.get(stack.server.url("/rip/ok.txt"), headers={"X-Real-IP": ip}, timeout=10)
        assert resp.status_code == 403
    log = stack.server.read_log()[before:]
    clients = re.findall(r"CG01001: deny reason=unregistered .*?client=([^,\s]+)", log)
    assert clients == ["192.0.2.11", "192.0.2.22"], log[-2000:]


OTHER_VHOST = """
<VirtualHost 127.0.0.1:{port}>
  ServerName other.test
  DocumentRoot "{work}/htdocs"
  SSLEngine on
  SSLCertificateFile "{work}/pki/server.pem"
  SSLCertificateKeyFile "{work}/pki/server.key"
  SSLVerifyClient optional_no_ca
  SSLVerifyDepth 10
  CertGateKeyPrefix "other:"
  <Directory "{work}/htdocs">
    Require all granted
  </Directory>
  <Location "/gated/">
    CertGate On
  </Location>
</VirtualHost>
"""


def test_httpd_connection_entry_not_reused_by_a_vhost_with_another_store(pki):
    # Two name-based vhosts on one address with the same TLS setup, each with
    # its own store (key prefix): one keep-alive connection may carry requests
    # for both. A registration read through one must not admit in the other.
    s = Stack(pki)
    try:
        s.server.stop()
        with open(s.server.conf, "a") as f:
            f.write(OTHER_VHOST.replace("{port}", str(s.server.port)).replace("{work}", s.work))
        s.server.start()
        flush_store(s.r)
        register(s.r, pki.leaf, "app1")     # in "certgate:" only
        # The two gates' cache versions are counters that differ only by the
        # invalidations each heard: bring the other's up step by step, so that
        # at some step they are equal.
        for step in range(8):
            c = session(s, pki.leaf)
            assert c.get(s.server.url("/gated/ok.txt"), timeout=10).status_code == 200
            resp = c.get(s.server.url("/gated/ok.txt"), headers={"Host": "other.test"},
                         timeout=10)
            assert resp.status_code in (403, 421), (step, resp.status_code,
                                                    resp.headers.get("CertGate-Reason"))
            c.close()
            s.r.publish("other:invalidate", "not a fingerprint")     # other's cache: flushed
            time.sleep(0.2)
        # A fresh connection to the other vhost is refused: unregistered there.
        fresh = session(s, pki.leaf)
        resp = fresh.get(s.server.url("/gated/ok.txt"), headers={"Host": "other.test"}, timeout=10)
        assert resp.status_code == 403, (resp.status_code, resp.headers)
    finally:
        s.close()
