"""End to end: every reason code through a real redis-server and each web server
(apache2 with mod_certgate, nginx with ngx_http_certgate_module): one scenario
code, run against both."""
import base64
import time

import pytest
import requests

from clients import assert_revoked_within, curl, get, raw_get, reason_of, tls_context
from conftest import SERVERS, Stack
from harness import flush_store, invalidate, register

GATED = "/gated/ok.txt"


@pytest.fixture(scope="module", params=SERVERS)
def stack(request, pki):
    s = Stack(pki, server=request.param)
    yield s
    s.close()


@pytest.fixture(autouse=True)
def clean_store(stack):
    flush_store(stack.r)
    yield


def assert_denied(resp, reason, status=403):
    assert resp.status_code == status, resp.text
    assert reason_of(resp) == reason
    assert "ok\n" != resp.text


def test_registered_approved_cert_is_allowed_and_exported(stack, pki):
    reg_id = register(stack.r, pki.leaf, "app1")
    resp = get(stack, GATED, pki.leaf)
    assert resp.status_code == 200
    assert resp.text == "ok\n"
    assert resp.headers["X-Seen-App"] == "app1"
    assert resp.headers["X-Seen-Cert-Id"] == reg_id
    assert resp.headers["X-Seen-Fingerprint"] == pki.leaf.fingerprint
    days = (pki.leaf.not_after - int(time.time())) // 86400
    assert int(resp.headers["X-Seen-Expire-In"]) in (days, days - 1)


def test_no_client_cert(stack):
    resp = get(stack, GATED, headers={"Accept": "application/json"})
    assert_denied(resp, "no_client_cert")
    body = resp.json()
    assert body["error"] == "forbidden"
    assert body["reason"] == "no_client_cert"
    assert resp.headers["Content-Type"].startswith("application/json")


def test_plain_text_body_without_json_accept(stack, pki):
    resp = get(stack, GATED, pki.leaf, headers={"Accept": "text/html"})
    assert_denied(resp, "unregistered")
    assert resp.headers["Content-Type"].startswith("text/plain")
    assert "(unregistered)" in resp.text


def test_ungated_location_needs_no_registration(stack, pki):
    assert get(stack, "/open/ok.txt").status_code == 200
    assert get(stack, "/open/ok.txt", pki.leaf).status_code == 200


def test_unregistered(stack, pki):
    register(stack.r, pki.leaf_other, "app2")
    assert_denied(get(stack, GATED, pki.leaf), "unregistered")


@pytest.mark.parametrize("status,reason", [
    ("PENDING", "pending"), ("DECLINED", "declined"), ("INACTIVATED", "inactivated")])
def test_status_other_than_approved_is_refused(stack, pki, status, reason):
    register(stack.r, pki.leaf, "app1", status=status)
    assert_denied(get(stack, GATED, pki.leaf), reason)


@pytest.mark.parametrize("which", ["expired", "future"])
def test_tls_layer_refuses_certs_outside_validity(stack, pki, which):
    # Both check validity even with optional_no_ca: mod_ssl in the handshake,
    # nginx with a 400 before any module runs.
    cert = getattr(pki, which)
    register(stack.r, cert, "app1")
    if stack.kind == "nginx":
        resp = get(stack, GATED, cert)
        assert resp.status_code == 400
        assert "ok\n" != resp.text
        return
    with pytest.raises(requests.exceptions.SSLError):
        get(stack, GATED, cert)


def test_registration_expired(stack, pki):
    # The stored validity decides too: a record whose validTo has passed is refused.
    register(stack.r, pki.leaf, "app1", valid_to=int(time.time()) - 5)
    assert_denied(get(stack, GATED, pki.leaf), "expired")


def test_registration_not_yet_valid(stack, pki):
    register(stack.r, pki.leaf, "app1", valid_from=int(time.time()) + 3600)
    assert_denied(get(stack, GATED, pki.leaf), "not_yet_valid")


def test_not_yet_active_and_retired(stack, pki):
    now = int(time.time())
    register(stack.r, pki.leaf, "app1", activate_at=now + 3600)
    assert_denied(get(stack, GATED, pki.leaf), "not_yet_active")
    register(stack.r, pki.leaf, "app1", activate_at=now - 3600, retire_at=now - 1)
    assert_denied(get(stack, GATED, pki.leaf), "retired")
    register(stack.r, pki.leaf, "app1", activate_at=now - 3600, retire_at=now + 3600)
    assert get(stack, GATED, pki.leaf).status_code == 200


def test_chain_mismatch(stack, pki):
    # Registered under inter2, presented under inter.
    register(stack.r, pki.leaf, "app1", chain=pki.leaf_inter2.chain_fingerprints)
    assert_denied(get(stack, GATED, pki.leaf), "chain_mismatch")


def test_chain_with_extra_cert_is_refused(stack, pki):
    register(stack.r, pki.leaf, "app1")
    resp = get(stack, GATED, pki.leaf, send_chain=[pki.inter, pki.inter2, pki.root])
    assert_denied(resp, "chain_mismatch")


def test_chain_root_may_be_left_out(stack, pki):
    register(stack.r, pki.leaf, "app1")
    assert get(stack, GATED, pki.leaf, include_root=False).status_code == 200
    assert get(stack, GATED, pki.leaf).status_code == 200


def test_chain_intermediate_may_not_be_left_out(stack, pki):
    register(stack.r, pki.leaf, "app1")
    assert_denied(get(stack, GATED, pki.leaf, send_chain=[pki.root]), "chain_mismatch")


def test_self_signed_per_app_root(stack, pki):
    register(stack.r, pki.app_leaf, "acme")
    assert get(stack, GATED, pki.app_leaf).status_code == 200
    assert get(stack, GATED, pki.app_leaf, include_root=False).status_code == 200


def test_app_binding(stack, pki):
    register(stack.r, pki.leaf, "app1")
    assert get(stack, "/app/ok.txt", pki.leaf, headers={"X-App-Id": "app1"}).status_code == 200
    assert_denied(get(stack, "/app/ok.txt", pki.leaf, headers={"X-App-Id": "app2"}),
                  "app_mismatch")
    assert_denied(get(stack, "/app/ok.txt", pki.leaf), "app_mismatch")
    # The log says both: the registration's app and the one the request named.
    lines = [l for l in stack.server.read_log().splitlines()
             if "CG01001" in l and "reason=app_mismatch" in l]
    assert "app=app1 asked=app2 " in lines[-2] and "app=app1 asked=- " in lines[-1], lines[-2:]


def test_forward_headers_rfc9440(stack, pki):
    register(stack.r, pki.leaf, "app1")
    resp = get(stack, "/fwd/ok.txt", pki.leaf)
    assert resp.status_code == 200
    assert resp.headers["X-Seen-Client-Cert"] == ":%s:" % base64.b64encode(pki.leaf.der).decode()
    chain = resp.headers["X-Seen-Client-Cert-Chain"].split(", ")
    assert chain == [":%s:" % base64.b64encode(c.der).decode() for c in pki.leaf.chain]
    assert resp.headers["X-Seen-Hdr-App"] == "app1"


SPOOF = {"CertGate-App-Id": "evil", "Client-Cert": ":ZXZpbA==:",
         "Client-Cert-Chain": ":ZXZpbA==:", "CertGate-Cert-Id": "evil"}


@pytest.mark.parametrize("path,registered", [
    (GATED, True), ("/fwd/ok.txt", True), ("/errdoc/ok.txt", False)])
def test_spoofed_forward_headers_are_removed(stack, pki, path, registered):
    # On deny, /errdoc/'s ErrorDocument is an internal redirect that carries the
    # request headers, so what the gate left behind is visible there too.
    if registered:
        register(stack.r, pki.leaf, "app1")
    resp = get(stack, path, pki.leaf, headers=SPOOF)
    assert resp.status_code == (200 if registered else 403)
    for h in ("X-Seen-Client-Cert", "X-Seen-Client-Cert-Chain", "X-Seen-Hdr-App"):
        assert h in resp.headers          # the probe itself works
        assert "evil" not in resp.headers[h]
        assert "ZXZpbA" not in resp.headers[h]


def test_deny_is_logged_with_tag(stack, pki):
    get(stack, GATED, pki.leaf_other)
    log = stack.server.read_log()
    lines = [l for l in log.splitlines()
             if "CG01001" in l and pki.leaf_other.fingerprint in l]
    assert lines, log[-2000:]
    assert "reason=unregistered" in lines[-1]
    assert "client=127.0.0.1" in lines[-1]


def test_revocation_on_a_live_keepalive_connection_within_1s(stack, pki):
    took = assert_revoked_within(stack, pki.leaf, register(stack.r, pki.leaf, "app1"), GATED)
    print("%s: revoked on a live connection after %.1f ms" % (stack.kind, took * 1000))


def test_rotation_overlap(stack, pki):
    now = int(time.time())
    retire = now + 3
    register(stack.r, pki.leaf, "app1", retire_at=retire)
    register(stack.r, pki.leaf_b, "app1", activate_at=now - 1)
    assert get(stack, GATED, pki.leaf).status_code == 200
    assert get(stack, GATED, pki.leaf_b).status_code == 200
    time.sleep(max(0.0, retire - time.time()) + 0.2)
    assert_denied(get(stack, GATED, pki.leaf), "retired")
    assert get(stack, GATED, pki.leaf_b).status_code == 200
    assert len(stack.r.smembers("certgate:app:app1")) == 2


def test_http2_streams(stack, pki):
    if not stack.server.h2:
        pytest.skip("mod_http2 is not installed")
    register(stack.r, pki.leaf, "app1")
    res = curl(stack, [GATED, GATED, "/fwd/ok.txt"], cert=pki.leaf)
    assert res == [("200", "2")] * 3
    res = curl(stack, [GATED, GATED], cert=pki.leaf_other)
    assert res == [("403", "2")] * 2
    stack.r.hset("certgate:reg:" + stack.r.get("certgate:fp:" + pki.leaf.fingerprint).decode(),
                 "status", "INACTIVATED")
    invalidate(stack.r, pki.leaf.fingerprint)
    assert curl(stack, [GATED], cert=pki.leaf) == [("403", "2")]


def test_tls13_resumed_session(stack, pki):
    register(stack.r, pki.leaf, "app1")
    ctx = tls_context(stack, pki.leaf)
    status, reused, session = raw_get(stack, ctx, GATED)
    assert (status, reused) == (200, False)
    status, reused, _ = raw_get(stack, ctx, GATED, session=session)
    assert (status, reused) == (200, True)
    # The resumed session still carries the presented chain: a mismatch stays refused.
    register(stack.r, pki.leaf, "app1", chain=pki.leaf_inter2.chain_fingerprints)
    status, reused, _ = raw_get(stack, ctx, GATED, session=session)
    assert (status, reused) == (403, True)


def test_operator_error_document_is_served_with_reason(stack, pki):
    resp = get(stack, "/errdoc/ok.txt", pki.leaf)
    assert resp.status_code == 403
    assert resp.text == "custom denied page\n"
    assert reason_of(resp) == "unregistered"


def test_redirect_into_gated_location_is_gated(stack, pki):
    # /open/ has "ErrorDocument 404 /gated/ok.txt": the gated file must not leak.
    resp = get(stack, "/open/missing.txt")
    assert resp.text != "ok\n"
    assert resp.status_code in (403, 404)
    register(stack.r, pki.leaf, "app1")
    assert get(stack, "/open/missing.txt", pki.leaf).text == "ok\n"


def test_head_request_denied_without_body(stack, pki):
    resp = requests.head(stack.server.url(GATED), verify=stack.server_ca, timeout=10)
    assert resp.status_code == 403
    assert reason_of(resp) == "no_client_cert"
    assert resp.content == b""
