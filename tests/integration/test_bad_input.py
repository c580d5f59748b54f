"""A table of hostile inputs to the admin API and the gate. Each gets the expected
status and code, and Redis is exactly as it was."""
import base64

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from admin import Admin, error_code, seed
from clients import get, reason_of
from conftest import Stack
from harness import flush_store, register
from pki import make_cert
from test_admin import redis_snapshot

UP = "Upload.Certificate.Invalid"
CI = "Certificate.Invalid"


@pytest.fixture(scope="module")
def stack(pki):
    s = Stack(pki)
    yield s
    s.close()


@pytest.fixture(scope="module")
def certs(pki):
    c = {"rsa512": make_cert("rsa512", issuer=pki.inter, key_kind="rsa", rsa_bits=512),
         "leaf_ca": make_cert("ca leaf", issuer=pki.inter, ca=True)}
    # A SAN with a NUL byte, and a 64 KB subject: built without the library's checks.
    b = (x509.CertificateBuilder()
         .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "nul san")]))
         .issuer_name(pki.inter.cert.subject).public_key(pki.leaf.key.public_key())
         .serial_number(x509.random_serial_number())
         .not_valid_before(pki.leaf.cert.not_valid_before)
         .not_valid_after(pki.leaf.cert.not_valid_after)
         .add_extension(x509.SubjectAlternativeName(
             [x509.UniformResourceIdentifier("https://good.example\x00.evil.example")]),
             critical=False))
    c["nul_san"] = b.sign(pki.inter.key, hashes.SHA256())
    big = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x" * 65536, _validate=False)])
    b = (x509.CertificateBuilder().subject_name(big).issuer_name(pki.inter.cert.subject)
         .public_key(pki.leaf.key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(pki.leaf.cert.not_valid_before)
         .not_valid_after(pki.leaf.cert.not_valid_after))
    c["big_subject"] = b.sign(pki.inter.key, hashes.SHA256())
    return c


def pem_of(cert):
    from cryptography.hazmat.primitives import serialization
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def cases(pki, certs):
    leaf = pki.leaf.pem.decode()
    chain = pki.leaf.der_chain_pem()
    der = pki.leaf.der
    ok = {"certificate": leaf, "chain": chain, "appId": "app1"}

    def body(**kw):
        d = dict(ok)
        d.update(kw)
        return ("json", d)
    raw = lambda data, ct="application/x-pem-file": ("raw", data, ct)
    jsonb = lambda data: ("raw", data, "application/json")
    return [
        # certificate bytes
        ("zero-length PEM", body(certificate=""), 400, UP),
        ("truncated PEM", body(certificate=leaf[:len(leaf) // 2]), 400, CI),
        ("PEM without END", body(certificate=leaf.replace("-----END CERTIFICATE-----", "")), 400, CI),
        ("PEM with bad base64", body(certificate=leaf.replace("M", "*", 3)), 400, CI),
        ("JSON PEM with a NUL (refused by the JSON parser)", body(certificate=leaf + "\x00\x01junk"), 400, UP),
        ("raw PEM with trailing binary junk", raw(leaf.encode() + b"\x00\x01\x02junk"), 400, CI),
        ("PEM with trailing broken block", body(certificate=leaf + "-----BEGIN CERTIFICATE-----\nAAAA\n"), 400, CI),
        ("base64 junk", body(certificate="bm90IGEgY2VydGlmaWNhdGU="), 400, CI),
        ("not base64 at all", body(certificate="%%%% not a certificate %%%%"), 400, CI),
        ("huge PEM (3 MB of blocks)", body(certificate=("-----BEGIN CERTIFICATE-----\n" + "QUFB" * 750000 + "\n-----END CERTIFICATE-----\n")), 400, CI),
        ("zero-length DER", raw(b"", "application/pkix-cert"), 400, UP),
        ("truncated DER", raw(der[:100], "application/pkix-cert"), 400, CI),
        ("DER with trailing bytes", raw(der + b"\x00\x00", "application/pkix-cert"), 400, CI),
        ("huge DER-ish body", raw(b"\x30\x84\x7f\xff\xff\xff" + b"\x00" * 200000, "application/pkix-cert"), 400, CI),
        ("PKCS#7 garbage", raw(b"\x30\x03\x02\x01\x01", "application/pkcs7-mime"), 400, CI),
        ("PKCS#7 empty", raw(b"", "application/pkcs7-mime"), 400, UP),
        ("private key as certificate", body(certificate=pki.leaf.key_pem().decode()), 400, CI),
        ("several leaves with a chain", body(certificate=leaf + pki.leaf_b.pem.decode()), 400, CI),
        ("raw bundle with two leaves", raw((leaf + pki.leaf_b.pem.decode() + chain).encode()), 400, "Chain.Invalid"),
        ("chain in the wrong order", body(chain=pki.root.pem.decode() + pki.inter.pem.decode()), 400, "Chain.Invalid"),
        ("chain element junk", body(chain=["not pem"]), 400, "Chain.Invalid"),
        ("chain of wrong type", body(chain=42), 400, UP),
        ("512-bit RSA key", body(certificate=certs["rsa512"].pem.decode()), 400, "Policy.KeyTooWeak"),
        ("CA:TRUE leaf", body(certificate=certs["leaf_ca"].pem.decode()), 400, "Policy.LeafIsCA"),
        ("SAN with a NUL byte", body(certificate=pem_of(certs["nul_san"])), 400, CI),
        ("64 KB subject", body(certificate=pem_of(certs["big_subject"])), 400, CI),
        ("private key that does not match", body(privateKey=pki.leaf_b.key_pem().decode()), 400, "PrivateKey.Invalid"),
        ("private key junk", body(privateKey="junk"), 400, "PrivateKey.Invalid"),
        ("private key of wrong type", body(privateKey=["x"]), 400, UP),
        # JSON
        ("JSON duplicate keys", jsonb(b'{"certificate":"a","appId":"x","appId":"y"}'), 400, UP),
        ("JSON deep nesting", jsonb(b"[" * 100000 + b"]" * 100000), 400, UP),
        ("JSON array, not object", jsonb(b'["certificate"]'), 400, UP),
        ("JSON wrong type for certificate", body(certificate=123), 400, UP),
        ("JSON wrong type for appId", body(appId={"x": 1}), 400, UP),
        ("JSON invalid UTF-8", jsonb(b'{"certificate":"\xff\xfe","appId":"a"}'), 400, UP),
        ("JSON truncated", jsonb(b'{"certificate":'), 400, UP),
        ("JSON with NUL in a string", jsonb(b'{"certificate":"a\\u0000b","appId":"a"}'), 400, UP),
        ("empty body", jsonb(b""), 400, UP),
        # app ids
        ("appId with *", body(appId="app*"), 400, UP),
        ("appId with :", body(appId="app:1"), 400, UP),
        ("appId with newline", body(appId="app\n1"), 400, UP),
        ("appId with control byte", body(appId="app\x01"), 400, UP),
        ("appId with space", body(appId="app 1"), 400, UP),
        ("appId too long", body(appId="a" * 129), 400, UP),
        ("appId missing", body(appId=None), 400, UP),
        ("customerId with key syntax", body(customerId="c{1}"), 400, UP),
        # content types
        ("unsupported content type", raw(b"x", "text/plain"), 415, UP),
    ]


def send(api, spec):
    if spec[0] == "json":
        d = {k: v for k, v in spec[1].items() if v is not None}
        return api.call("POST", "/certs", "dev1", json=d)
    _, data, ct = spec
    return api.call("POST", "/certs?appId=app1", "dev1", data=data, headers={"Content-Type": ct})


def test_bad_admin_inputs_table(stack, pki, certs):
    flush_store(stack.r)
    seed(stack.r)
    api = Admin(stack)
    table = cases(pki, certs)
    assert len(table) >= 40
    before = redis_snapshot(stack.r)
    failures = []
    for name, spec, status, code in table:
        resp = send(api, spec)
        got = (resp.status_code, error_code(resp))
        if got != (status, code):
            failures.append("%s: expected %s %s, got %s %s %s" % (name, status, code, got[0], got[1],
                                                                  resp.text[:200]))
    assert not failures, "\n".join(failures)
    assert redis_snapshot(stack.r) == before
    print("%d bad admin inputs refused with the expected code; Redis unchanged" % len(table))


def test_bad_requests_to_the_gate(stack, pki):
    flush_store(stack.r)
    register(stack.r, pki.leaf, "app1")
    before = redis_snapshot(stack.r)
    spoof = {"CertGate-App-Id": "app1", "Client-Cert": ":%s:" % base64.b64encode(pki.leaf.der).decode(),
             "CERTGATE_APP_ID": "app1", "X-App-Id": "app1"}
    rows = [
        ("no certificate", get(stack, "/gated/ok.txt", headers=spoof), 403, "no_client_cert"),
        ("another app's certificate", get(stack, "/app/ok.txt", pki.leaf, headers={"X-App-Id": "app2"}),
         403, "app_mismatch"),
        ("unregistered, with spoofed headers", get(stack, "/gated/ok.txt", pki.leaf_b, headers=spoof),
         403, "unregistered"),
        ("app header with key syntax", get(stack, "/app/ok.txt", pki.leaf, headers={"X-App-Id": "app1*"}),
         403, "app_mismatch"),
    ]
    for name, resp, status, reason in rows:
        assert (resp.status_code, reason_of(resp)) == (status, reason), name
        assert resp.headers.get("X-Seen-App") in (None, "", "(null)"), name
    # Control bytes in a header: httpd itself refuses the request (strict parsing).
    resp = get(stack, "/app/ok.txt", pki.leaf, headers={"X-App-Id": "app1\x01"})
    assert resp.status_code in (400, 403) and resp.text != "ok\n"
    for name, resp, status, reason in rows:
        assert resp.headers.get("X-Seen-App") in (None, "", "(null)"), name
    assert redis_snapshot(stack.r) == before
