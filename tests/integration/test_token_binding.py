"""Token binding (RFC 8705) on httpd: the gate exports the leaf's x5t#S256 as
CERTGATE_X5T_S256, and Debian's mod_oauth2 (libapache2-mod-oauth2 3.3.1 on
liboauth2 1.4.5) checks an access token's cnf["x5t#S256"] against the presented
certificate in the same location (OAuth2TokenVerify ... type=mtls). Tokens are
HS256 JWTs signed here with a key made at test time; nothing is committed."""
import base64
import hashlib
import hmac
import json
import os
import secrets
import time

import pytest

import harness
from clients import get, reason_of
from conftest import Stack
from harness import flush_store, register

OAUTH2_SO = os.path.join(harness.MODDIR, "mod_oauth2.so")
BOUND = "/bound/ok.txt"
BOUND_APP = "/boundapp/ok.txt"
X5T = "/x5t/ok.txt"

# HS256 key for this run only (mod_oauth2's "plain" key type: the bytes as given).
KEY = secrets.token_hex(32)

VHOST = """
  Header always set X-Seen-X5t "%{{CERTGATE_X5T_S256}}e"
  <Location "/x5t/">
    CertGate On
  </Location>
  # The token must be bound to the presented certificate (cnf.x5t#S256), and the
  # certificate registered and approved for an app.
  <Location "/bound/">
    AuthType oauth2
    OAuth2TokenVerify plain {key} type=mtls&mtls.policy=required&verify.exp=required
    Require valid-user
    CertGate On
  </Location>
  # The same, and the token's client_id must be the certificate's registered app:
  # mod_oauth2 exports claims as OAUTH2_CLAIM_<name> before the gate runs.
  <Location "/boundapp/">
    AuthType oauth2
    OAuth2TokenVerify plain {key} type=mtls&mtls.policy=required&verify.exp=required
    Require valid-user
    CertGate On
    CertGateAppFrom env OAUTH2_CLAIM_client_id
  </Location>
"""


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def x5t_s256(cert):
    return b64url(hashlib.sha256(cert.der).digest())


def jwt_hs256(claims, key=KEY):
    head = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64url(json.dumps(claims).encode())
    sig = hmac.new(key.encode(), ("%s.%s" % (head, body)).encode(), hashlib.sha256).digest()
    return "%s.%s.%s" % (head, body, b64url(sig))


def token(cnf_x5t, client_id="app1", **extra):
    now = int(time.time())
    claims = {"sub": "user-1", "client_id": client_id, "iat": now, "exp": now + 300}
    if cnf_x5t is not None:
        claims["cnf"] = {"x5t#S256": cnf_x5t}
    claims.update(extra)
    return jwt_hs256(claims)


def bearer(tok):
    return {"Authorization": "Bearer " + tok}


@pytest.fixture(scope="module")
def stack(pki):
    if not os.path.exists(OAUTH2_SO):
        pytest.skip("libapache2-mod-oauth2 is not installed (scripts/deps.sh installs it)")
    s = Stack(pki, extra_server="LoadModule oauth2_module %s" % OAUTH2_SO,
              extra_vhost=VHOST.format(key=KEY))
    for d in ("bound", "boundapp", "x5t"):
        os.makedirs(os.path.join(s.work, "htdocs", d), exist_ok=True)
        with open(os.path.join(s.work, "htdocs", d, "ok.txt"), "w") as f:
            f.write("ok\n")
    yield s
    s.close()


@pytest.fixture(autouse=True)
def clean(stack):
    flush_store(stack.r)


def test_x5t_s256_is_exported_on_allow(stack, pki):
    register(stack.r, pki.leaf, "app1")
    resp = get(stack, X5T, pki.leaf)
    assert resp.status_code == 200
    want = x5t_s256(pki.leaf)
    assert len(want) == 43 and "=" not in want
    assert resp.headers["X-Seen-X5t"] == want
    # Another connection, another certificate: its own value, computed for it.
    register(stack.r, pki.leaf_b, "app1")
    assert get(stack, X5T, pki.leaf_b).headers["X-Seen-X5t"] == x5t_s256(pki.leaf_b)
    # Not on a deny.
    resp = get(stack, X5T, pki.leaf_other)
    assert resp.status_code == 403
    assert resp.headers.get("X-Seen-X5t") in (None, "(null)")


def test_bound_token_for_the_presented_cert_passes(stack, pki):
    register(stack.r, pki.leaf, "app1")
    resp = get(stack, BOUND, pki.leaf, headers=bearer(token(x5t_s256(pki.leaf))))
    assert resp.status_code == 200, resp.text
    assert resp.text == "ok\n"
    assert resp.headers["X-Seen-X5t"] == x5t_s256(pki.leaf)
    # What the gate exports is what mod_oauth2 computes from the certificate itself.
    tok = token(x5t_s256(pki.leaf_other))
    assert get(stack, BOUND, pki.leaf, headers=bearer(tok)).status_code == 401
    assert harness.wait_for_line(stack.httpd.error_log, "fingerprint of provided cert (%s) does "
                                 "not match" % resp.headers["X-Seen-X5t"])


@pytest.mark.parametrize("case", ["other_cert", "hex", "padded", "no_cnf", "bad_signature"])
def test_token_not_bound_to_the_presented_cert_is_refused(stack, pki, case):
    register(stack.r, pki.leaf, "app1")
    digest = hashlib.sha256(pki.leaf.der).digest()
    tok = {
        "other_cert": lambda: token(x5t_s256(pki.leaf_other)),
        "hex": lambda: token(digest.hex()),
        "padded": lambda: token(base64.urlsafe_b64encode(digest).decode()),
        "no_cnf": lambda: token(None),
        "bad_signature": lambda: jwt_hs256({"cnf": {"x5t#S256": x5t_s256(pki.leaf)},
                                            "client_id": "app1", "sub": "user-1",
                                            "iat": int(time.time()),
                                            "exp": int(time.time()) + 300},
                                           key=secrets.token_hex(32)),
    }[case]()
    if case == "padded":
        assert tok and base64.urlsafe_b64encode(digest).decode().endswith("=")
    resp = get(stack, BOUND, pki.leaf, headers=bearer(tok))
    assert resp.status_code == 401, (resp.status_code, resp.text)
    assert resp.text != "ok\n"
    assert "Bearer" in resp.headers.get("WWW-Authenticate", "")
    if case in ("other_cert", "hex", "padded"):
        # Refused by the binding check itself, with the claim as sent.
        claim = json.loads(base64.urlsafe_b64decode(tok.split(".")[1] + "=="))["cnf"]["x5t#S256"]
        assert harness.wait_for_line(stack.httpd.error_log,
                                     'does not match cnf["x5t#S256"] (%s)' % claim)


def test_no_token_is_refused(stack, pki):
    register(stack.r, pki.leaf, "app1")
    assert get(stack, BOUND, pki.leaf).status_code == 401


def test_bound_token_does_not_pass_the_gate_for_an_unregistered_cert(stack, pki):
    # mod_oauth2 accepts the binding; the gate still refuses the certificate.
    resp = get(stack, BOUND, pki.leaf_other, headers=bearer(token(x5t_s256(pki.leaf_other))))
    assert resp.status_code == 403
    assert reason_of(resp) == "unregistered"


def test_token_client_id_must_be_the_registered_app(stack, pki):
    register(stack.r, pki.leaf, "app1")
    good = token(x5t_s256(pki.leaf), client_id="app1")
    assert get(stack, BOUND_APP, pki.leaf, headers=bearer(good)).status_code == 200
    other = token(x5t_s256(pki.leaf), client_id="app2")
    resp = get(stack, BOUND_APP, pki.leaf, headers=bearer(other))
    assert resp.status_code == 403
    assert reason_of(resp) == "app_mismatch"


def test_rotation_needs_new_tokens_but_keeps_the_client_id(stack, pki):
    # After a cutover to leaf_b, a token bound to the old leaf is refused with the
    # new certificate; one issued for leaf_b passes, with the same client_id.
    register(stack.r, pki.leaf, "app1")
    register(stack.r, pki.leaf_b, "app1")
    old = token(x5t_s256(pki.leaf))
    assert get(stack, BOUND_APP, pki.leaf_b, headers=bearer(old)).status_code == 401
    new = token(x5t_s256(pki.leaf_b))
    assert get(stack, BOUND_APP, pki.leaf_b, headers=bearer(new)).status_code == 200


def test_nginx_exports_x5t_s256(pki):
    s = Stack(pki, server="nginx", nginx_args={
        "extra_server": "location /x5t/ { certgate on; "
                        "add_header X-Seen-X5t $certgate_x5t_s256 always; }"})
    try:
        os.makedirs(os.path.join(s.work, "htdocs", "x5t"), exist_ok=True)
        with open(os.path.join(s.work, "htdocs", "x5t", "ok.txt"), "w") as f:
            f.write("ok\n")
        register(s.r, pki.leaf, "app1")
        resp = get(s, X5T, pki.leaf)
        assert resp.status_code == 200
        assert resp.headers["X-Seen-X5t"] == x5t_s256(pki.leaf)
        # Not on a deny (an empty value drops the header).
        resp = get(s, X5T, pki.leaf_other)
        assert resp.status_code == 403
        assert "X-Seen-X5t" not in resp.headers
    finally:
        s.close()
