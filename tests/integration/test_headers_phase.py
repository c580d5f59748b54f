"""Request headers the gate must not be fooled by, and (nginx) answers a gated
location makes on its own: a request naming more than one app (app_ambiguous),
'_' spellings of the identity headers, and nginx's rewrite-phase return/rewrite."""
import base64
import os
import socket
import subprocess

import pytest

from clients import files_for, get, reason_of, tls_context
from conftest import SERVERS, Stack
from harness import flush_store, register

# /seen/ shows what a backend would read, by the spelling it would read it under.
HTTPD_VHOST = """
  <Location "/seen/">
    CertGate On
    CertGateAppFrom header X-App-Id
    CertGateForwardHeaders On
    Header always set X-Up-App "expr=%{req:X-App-Id}"
    Header always set X-Up-App-U "expr=%{req:X_App_Id}"
    Header always set X-Up-Cert "expr=%{req:Client-Cert}"
    Header always set X-Up-Cert-U "expr=%{req:Client_Cert}"
    Header always set X-Up-Hdr-App-U "expr=%{req:CertGate_App_Id}"
  </Location>
"""

# $http_client_cert is what nginx (and a CGI/WSGI backend) reads for both
# Client-Cert and Client_Cert: the first such line.
NGINX_SERVER = """
underscores_in_headers on;
location /seen/ {
    certgate on;
    certgate_app_from header X-App-Id;
    certgate_forward_headers on;
    add_header X-Up-App $http_x_app_id always;
    add_header X-Up-Cert $http_client_cert always;
    add_header X-Up-Hdr-App-U $http_certgate_app_id always;
}
location /ret/ { certgate on; return 200 "returned\\n"; }
location /rwb/ { certgate on; rewrite ^ /open/ok.txt break; }
location /rwl/ { certgate on; rewrite ^ /open/ok.txt last; }
location /anyret/ { satisfy any; allow 127.0.0.1; certgate on; return 200 "returned\\n"; }
if ($request_uri ~ ^/srvret/) { return 200 "server-level\\n"; }
location /srvret/ { certgate on; }
location = /authz { internal; return 204; }
location /authapp/ {
    auth_request /authz;
    auth_request_set $authapp $http_x_want_app;
    certgate on;
    certgate_app_from variable $authapp;
    rewrite ^ /open/ok.txt break;
}
location /retvar/ {
    set $appv $arg_app;
    certgate on;
    certgate_app_from variable $appv;
    return 200 "returned\\n";
}
"""


@pytest.fixture(scope="module", params=SERVERS)
def stack(request, pki):
    s = Stack(pki, server=request.param, extra_vhost=HTTPD_VHOST,
              nginx_args={"extra_server": NGINX_SERVER})
    os.makedirs(os.path.join(s.work, "htdocs", "seen"), exist_ok=True)
    with open(os.path.join(s.work, "htdocs", "seen", "ok.txt"), "w") as f:
        f.write("ok\n")
    yield s
    s.close()


@pytest.fixture(autouse=True)
def clean(stack):
    flush_store(stack.r)


def raw(stack, cert, path, lines):
    """HTTP/1.1 with header lines exactly as given. Returns (status, {lower name: value})."""
    if cert is not None:
        ctx = tls_context(stack, cert)
    else:
        import ssl
        ctx = ssl.create_default_context(cafile=stack.server_ca)
    sock = socket.create_connection(("127.0.0.1", stack.server.port), timeout=10)
    with ctx.wrap_socket(sock, server_hostname="localhost") as s:
        req = "GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n" % path
        req += "".join("%s: %s\r\n" % kv for kv in lines) + "\r\n"
        s.sendall(req.encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    hdrs = {}
    for line in head[1:]:
        k, _, v = line.partition(":")
        hdrs[k.strip().lower()] = v.strip()
    return int(head[0].split(" ", 2)[1]), hdrs


def h2(stack, cert, path, lines):
    """HTTP/2 with each line a separate header field. Returns (status, {lower name: value})."""
    c, k = files_for(stack, cert)
    cmd = ["curl", "-s", "--http2", "--cacert", stack.server_ca, "--max-time", "10",
           "--cert", c, "--key", k, "-o", "/dev/null", "-D", "-"]
    for kv in lines:
        cmd += ["-H", "%s: %s" % kv]
    out = subprocess.run(cmd + [stack.server.url(path)], capture_output=True, text=True,
                         timeout=30).stdout
    head = out.strip().splitlines()
    assert head[0].startswith("HTTP/2 "), out
    hdrs = {}
    for line in head[1:]:
        key, _, v = line.partition(":")
        hdrs[key.strip().lower()] = v.strip()
    return int(head[0].split()[1]), hdrs


def absent(hdrs, name):
    return hdrs.get(name.lower(), "") in ("", "-")


# ---------------------------------------------------------------- item: app_ambiguous

@pytest.mark.parametrize("lines", [
    [("X-App-Id", "app2"), ("X-App-Id", "app1")],
    [("X-App-Id", "app1"), ("X-App-Id", "app2")],
    [("X-App-Id", "app2"), ("x-app-id", "app2")],         # even the same app twice
    [("X-App-Id", "app2, app1")],                         # one line holding a list
    [("X-App-Id", "app2,app1")],
    [("X-App-Id", "app2"), ("X_App_Id", "app1")],         # read as the same by a backend
])
def test_request_naming_more_than_one_app_is_refused(stack, pki, lines):
    register(stack.r, pki.leaf, "app2")
    status, hdrs = raw(stack, pki.leaf, "/seen/ok.txt", lines)
    assert (status, hdrs.get("certgate-reason")) == (403, "app_ambiguous")


def test_one_app_header_is_checked_and_passed_on(stack, pki):
    register(stack.r, pki.leaf, "app2")
    status, hdrs = raw(stack, pki.leaf, "/seen/ok.txt", [("X-App-Id", "app2")])
    assert status == 200
    assert hdrs["x-up-app"] == "app2"
    status, hdrs = raw(stack, pki.leaf, "/seen/ok.txt", [("X-App-Id", "app1")])
    assert (status, hdrs.get("certgate-reason")) == (403, "app_mismatch")


def test_app_ambiguous_is_decided_before_the_certificate(stack):
    status, hdrs = raw(stack, None, "/seen/ok.txt", [("X-App-Id", "a"), ("X-App-Id", "b")])
    assert (status, hdrs.get("certgate-reason")) == (403, "app_ambiguous")


def test_repeated_app_header_over_http2_is_refused(stack, pki):
    if not stack.server.h2:
        pytest.skip("mod_http2 not installed")
    register(stack.r, pki.leaf, "app2")
    status, hdrs = h2(stack, pki.leaf, "/seen/ok.txt", [("X-App-Id", "app2"), ("X-App-Id", "app1")])
    assert (status, hdrs.get("certgate-reason")) == (403, "app_ambiguous")
    status, hdrs = h2(stack, pki.leaf, "/seen/ok.txt", [("X-App-Id", "app2")])
    assert status == 200


# ---------------------------------------------------------------- item: '_' spellings

def test_underscore_spellings_of_identity_headers_are_stripped(stack, pki):
    register(stack.r, pki.leaf, "app1")
    forged = ":%s:" % base64.b64encode(b"forged").decode()
    status, hdrs = raw(stack, pki.leaf, "/seen/ok.txt", [
        ("Client_Cert", forged), ("CertGate_App_Id", "evil"), ("X-App-Id", "app1")])
    assert status == 200
    real = ":%s:" % base64.b64encode(pki.leaf.der).decode()
    assert hdrs["x-up-cert"] == real            # nginx: the first Client[-_]Cert line
    assert absent(hdrs, "X-Up-Cert-U")          # httpd: no Client_Cert left
    assert hdrs.get("x-up-hdr-app-u") in ("", "-", "app1")
    if stack.kind == "httpd":
        assert absent(hdrs, "X-Up-Hdr-App-U")


def test_client_cert_underscore_is_not_read_without_forwarding(stack, pki):
    # nginx reads Client_Cert as $http_client_cert (httpd's probe reads only
    # Client-Cert, so this is nginx's case; /seen/ covers httpd).
    if stack.kind != "nginx":
        pytest.skip("nginx's $http_ lookup folds '_' and '-'")
    register(stack.r, pki.leaf, "app1")
    resp = get(stack, "/gated/ok.txt", pki.leaf, headers={"Client_Cert": ":Zm9yZ2Vk:"})
    assert resp.status_code == 200
    assert resp.headers.get("X-Seen-Client-Cert", "") in ("", "-")


# ---------------------------------------------------------------- item: nginx rewrite phase

def nginx_only(stack):
    if stack.kind != "nginx":
        pytest.skip("nginx's rewrite phase")


@pytest.mark.parametrize("path,body", [
    ("/ret/x", "returned\n"), ("/rwb/x", "ok\n"), ("/rwl/x", "ok\n"), ("/anyret/x", "returned\n")])
def test_return_and_rewrite_in_a_gated_location_need_a_certificate(stack, pki, path, body):
    nginx_only(stack)
    resp = get(stack, path)
    assert (resp.status_code, reason_of(resp)) == (403, "no_client_cert")
    resp = get(stack, path, pki.leaf)
    assert (resp.status_code, reason_of(resp)) == (403, "unregistered")
    assert resp.text != body
    register(stack.r, pki.leaf, "app1")
    resp = get(stack, path, pki.leaf)
    assert (resp.status_code, resp.text) == (200, body)


def test_return_after_set_checks_the_app_from_the_variable(stack, pki):
    nginx_only(stack)
    resp = get(stack, "/retvar/x?app=app1", pki.leaf)
    assert (resp.status_code, reason_of(resp)) == (403, "unregistered")
    register(stack.r, pki.leaf, "app1")
    resp = get(stack, "/retvar/x?app=app1", pki.leaf)
    assert (resp.status_code, resp.text) == (200, "returned\n")
    resp = get(stack, "/retvar/x?app=app2", pki.leaf)
    assert (resp.status_code, reason_of(resp)) == (403, "app_mismatch")
    assert resp.text == ""
    resp = get(stack, "/retvar/x", pki.leaf)
    assert (resp.status_code, reason_of(resp)) == (403, "app_mismatch")


def test_app_from_auth_request_set_is_read_after_auth_request(stack, pki):
    # The app check runs after the access phase, where auth_request_set sets it.
    nginx_only(stack)
    register(stack.r, pki.leaf, "app1")
    resp = get(stack, "/authapp/x", pki.leaf, headers={"X-Want-App": "app1"})
    assert (resp.status_code, resp.text) == (200, "ok\n")
    resp = get(stack, "/authapp/x", pki.leaf, headers={"X-Want-App": "app2"})
    assert (resp.status_code, reason_of(resp)) == (403, "app_mismatch")


def test_server_level_return_answers_before_any_location(stack):
    # Documented limit (docs/nginx.md): the server rewrite phase runs before
    # nginx picks a location, so a server-level return is not gated.
    nginx_only(stack)
    resp = get(stack, "/srvret/x")
    assert (resp.status_code, resp.text) == (200, "server-level\n")
