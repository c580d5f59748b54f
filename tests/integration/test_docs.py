"""The docs' shell examples run as written: every ```sh block of the admin API
reference, the rotation runbook and the Redis schema page, in order, against a
real httpd + Redis, with curl failing on any HTTP error."""
import hashlib
import os
import re
import subprocess
import textwrap

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7

from admin import Admin
from conftest import Stack
from harness import ROOT, Redis, flush_store
from pki import make_cert

# Not run here: docs/operator-guide.md's and docs/nginx.md's ```sh blocks (they
# install as root into system directories: test_first_hour.py runs them as
# written in a sandbox), its ```console package blocks (`make test-package`, run
# by CI, does the same steps) and its ACL line (the harness creates its gate
# user with exactly that line), and docs/event-format.md's blocking XREAD
# consumer example.

USERS = {"alice": "developer", "bob": "developer", "carol": "manager", "dave": "manager",
         "sam": "support", "audrey": "auditor"}
DOCS_ADMIN = """
  <Location "/docs-admin">
    SetHandler certgate-admin
    AuthType Basic
    AuthName "docs"
    AuthBasicProvider file
    AuthUserFile "{work}/docs.htpasswd"
    Require valid-user
%s
    CertGateAdminCustomer customer-42 alice bob
  </Location>
""" % "\n".join("    CertGateAdminRole %s %s" % (role, user) for user, role in USERS.items())


def htpasswd():
    lines = []
    for u in USERS:
        out = subprocess.run(["htpasswd", "-nb", u, "secret"], capture_output=True, text=True,
                             check=True).stdout.strip()
        lines.append(out)
    return "\n".join(lines) + "\n"


def blocks(doc):
    text = open(os.path.join(ROOT, "docs", doc)).read()
    return [textwrap.dedent(b) for b in re.findall(r"^ *```sh\n(.*?)^ *```", text, re.S | re.M)]


@pytest.fixture(scope="module")
def stack(pki):
    s = Stack(pki, files={"docs.htpasswd": htpasswd()}, extra_vhost=DOCS_ADMIN)
    yield s
    s.close()


def prelude(stack, tmp, env):
    lines = ["set -euo pipefail",
             "cd %s" % tmp,
             "A=https://localhost:%d/docs-admin" % stack.httpd.port,
             "export CURL_CA_BUNDLE=%s" % stack.server_ca,
             # A doc command that gets an HTTP error fails the test.
             'curl() { command curl -sS --fail-with-body "$@"; echo; }',
             'redis-cli() { command redis-cli -p %d -n %d "$@"; }' % (stack.redis.port, Redis.DB),
             "export REDISCLI_AUTH=%s" % Redis.PASSWORD]
    lines += ["%s=%s" % (k, v) for k, v in env.items()]
    return "\n".join(lines) + "\n"


def run(stack, tmp, doc, env):
    script = prelude(stack, tmp, env)
    found = blocks(doc)
    assert found, doc
    for i, b in enumerate(found):
        script += "echo '--- %s block %d'\n%s\n" % (doc, i + 1, b)
    res = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, "%s\nstdout:\n%s\nstderr:\n%s" % (doc, res.stdout[-3000:],
                                                                 res.stderr[-3000:])
    return res.stdout


def files(tmp, pki):
    leafs = [make_cert("payments-app client %d" % i, issuer=pki.inter) for i in range(5)]
    w = lambda name, data: open(os.path.join(tmp, name), "wb").write(data)
    w("leaf.pem", leafs[0].pem)
    w("chain.pem", pki.inter.pem + pki.root.pem)
    w("intermediate.pem", pki.inter.pem)
    w("root.pem", pki.root.pem)
    w("leaf2.pem", leafs[1].pem)
    w("leaf3.der", leafs[3].der)
    w("leaf4.der", leafs[4].der)
    w("bundle.p7b", pkcs7.serialize_certificates([leafs[2].cert, pki.inter.cert, pki.root.cert],
                                                 serialization.Encoding.DER))


def prepared(stack, pki, api, n_pending, n_approved):
    """The customer and app the examples use (set up as a manager would), and
    registrations they refer to by id."""
    for path, body in (("/customers", {"customerId": "customer-42", "name": "Customer 42"}),
                       ("/apps", {"appId": "payments-app", "customerId": "customer-42"})):
        resp = api.call("POST", path, "carol", json=body)
        assert resp.status_code == 201, resp.text
    ids = []
    for i in range(n_pending + n_approved):
        c = make_cert("payments-app prepared %d" % i, issuer=pki.inter)
        resp = api.upload(c, app="payments-app", user="alice")
        assert resp.status_code == 201, resp.text
        ids.append(resp.json()["id"])
    for cid in ids[n_pending:]:
        assert api.call("POST", "/certs/%s/approve" % cid, "dave").status_code == 200
    return ids


def docs_api(stack):
    api = Admin(stack, "/docs-admin")
    api.stack.httpd.admin_users.update({u: "secret" for u in USERS})
    return api


def test_admin_api_examples_run(stack, pki, tmp_path):
    flush_store(stack.r)
    files(str(tmp_path), pki)
    api = docs_api(stack)
    pending1, pending2, new, old = prepared(stack, pki, api, 2, 2)
    out = run(stack, str(tmp_path), "admin-api.md",
              {"ID": pending1, "ID2": pending2, "NEW_ID": new, "OLD_ID": old})
    assert '"status":"PENDING"' in out and '"decision"' in out
    # The DER examples registered their certificates.
    for name in ("leaf3.der", "leaf4.der"):
        fp = hashlib.sha256(open(os.path.join(str(tmp_path), name), "rb").read()).hexdigest()
        assert stack.r.get("certgate:fp:" + fp), name


def test_admin_api_401_and_der_are_as_documented(stack, pki):
    doc = open(os.path.join(ROOT, "docs", "admin-api.md")).read()
    assert "unless the\npolicy is relaxed" not in doc
    # Behind `Require valid-user`, httpd's own 401 page answers, not the API.
    assert "httpd answers with its own 401 page" in doc
    resp = Admin(stack).call("GET", "/certs")
    assert resp.status_code == 401
    assert resp.headers["WWW-Authenticate"] == 'Basic realm="certgate admin"'
    assert resp.headers["Content-Type"].startswith("text/html")
    assert "Auth.Required" not in resp.text
    # Where unauthenticated requests reach the handler: the JSON error.
    resp = Admin(stack, "/noauth").call("GET", "/certs")
    assert resp.status_code == 401
    assert resp.headers["WWW-Authenticate"] == 'Basic realm="certgate admin"'
    assert resp.json()["code"] == "Auth.Required"
    # DER alone holds no chain.
    api = docs_api(stack)
    c = make_cert("payments-app der alone", issuer=pki.inter)
    resp = api.call("POST", "/certs?appId=payments-app", "alice", data=c.der,
                    headers={"Content-Type": "application/pkix-cert"})
    assert resp.status_code == 400 and resp.json()["code"] == "Chain.Invalid", resp.text


def test_runbook_examples_run(stack, pki, tmp_path):
    flush_store(stack.r)
    api = docs_api(stack)
    new, old = prepared(stack, pki, api, 0, 2)
    out = run(stack, str(tmp_path), "runbook-rotation.md", {"NEW_ID": new, "OLD_ID": old})
    assert '"state":"SCHEDULED"' in out
    assert "rotation.schedule" in out


def test_redis_schema_example_runs(stack, pki, tmp_path):
    flush_store(stack.r)
    c = make_cert("hand registered", issuer=pki.inter)
    c.write(str(tmp_path), "leaf")
    env = {"INTER_FP": pki.inter.fingerprint, "ROOT_FP": pki.root.fingerprint}
    run(stack, str(tmp_path), "redis-schema.md", env)
    assert stack.r.hget("certgate:reg:r1", "fingerprint").decode() == c.fingerprint
    assert stack.r.get("certgate:fp:" + c.fingerprint) == b"r1"
