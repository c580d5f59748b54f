"""certgatectl (tools/, docs/certgatectl.md), the built binary driven against real
httpd + redis: every command, its exit codes, its text and --json output."""
import json
import os
import subprocess
import calendar
import time

import pytest

import harness
from admin import Admin, seed
from clients import get
from conftest import Stack
from harness import flush_store
from pki import make_cert

CTL = os.environ.get("CERTGATE_CTL") or os.path.join(harness.ROOT, "build", "certgatectl")
COMMANDS = ["inspect", "status", "list", "upload", "approve", "decline", "inactivate", "rotate",
            "events", "export", "import", "watch", "doctor"]
GATED = "/gated/ok.txt"


@pytest.fixture(scope="module")
def stack(pki):
    # Usage reaches Redis every second, so watch sees requests quickly.
    s = Stack(pki, extra_server="CertGateUsageFlushInterval 1")
    yield s
    s.close()


@pytest.fixture(autouse=True)
def clean(request):
    if "stack" in request.fixturenames:
        s = request.getfixturevalue("stack")
        flush_store(s.r)
        seed(s.r)


@pytest.fixture
def api(stack):
    return Admin(stack)


def ctl(*args, stack=None, user=None, env=None, timeout=60):
    """Run the binary; with a stack, the admin URL, CA and user come from a
    credentials file and the environment (never the command line)."""
    e = {k: v for k, v in os.environ.items() if not k.startswith("CERTGATE_")}
    if stack is not None:
        e["CERTGATE_URL"] = stack.httpd.url("/admin")
        e["CERTGATE_CACERT"] = stack.server_ca
    if user is not None:
        cred = os.path.join(stack.work, "cred-" + user)
        with open(cred, "w") as f:
            f.write("%s:%s\n" % (user, stack.httpd.admin_users[user]))
        os.chmod(cred, 0o600)
        e["CERTGATE_CREDENTIALS"] = cred
    e.update(env or {})
    return subprocess.run([CTL] + [str(a) for a in args], capture_output=True, text=True,
                          env=e, timeout=timeout)


def files(where, cert, name, chain=None):
    """where/name.pem holding the leaf and the chain in the order given (default: as
    issued); where is a stack (its work directory) or a directory."""
    path = os.path.join(getattr(where, "work", where), name + ".pem")
    with open(path, "wb") as f:
        f.write(cert.pem + b"".join(c.pem for c in (cert.chain if chain is None else chain)))
    return path


# ------------------------------------------------------------------ help, usage


@pytest.mark.parametrize("cmd", COMMANDS)
def test_help_for_every_command(cmd):
    r = ctl(cmd, "--help")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: certgatectl " + cmd), r.stdout
    r = ctl(cmd, "--no-such-option")
    assert r.returncode == 2 and "unknown option --no-such-option" in r.stderr


def test_main_help_lists_commands_and_exit_codes():
    r = ctl("--help")
    assert r.returncode == 0
    for cmd in COMMANDS:
        assert "  " + cmd in r.stdout
    assert "3 watch timed out" in r.stdout and "4 refused" in r.stdout
    assert ctl().returncode == 2
    assert ctl("frobnicate").returncode == 2


def test_api_command_without_url_is_usage_error():
    r = ctl("list")
    assert r.returncode == 2 and "CERTGATE_URL" in r.stderr


# ------------------------------------------------------------------ inspect (offline)


def test_inspect_good_chain(pki, tmp_path):
    path = files(str(tmp_path), pki.leaf, "leaf")
    r = ctl("inspect", path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert pki.leaf.fingerprint in r.stdout and "policy: ok" in r.stdout
    r = ctl("inspect", path, "--json")
    out = json.loads(r.stdout)
    assert [c["fingerprint"] for c in out["certificates"]] == \
        [pki.leaf.fingerprint] + pki.leaf.chain_fingerprints
    assert out["policy"] == {"ok": True, "code": None, "message": None}   # as POST /check
    # The leaf alone, then the chain in a second file: the same as one file.
    leaf_only = files(str(tmp_path), pki.leaf, "leaf-only", chain=[])
    chain = str(tmp_path / "chain.pem")
    with open(chain, "wb") as f:
        f.write(b"".join(c.pem for c in pki.leaf.chain))
    r = ctl("inspect", leaf_only, "--chain", chain, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["certificates"] == out["certificates"]


def test_inspect_orders_a_pkcs7_bundle(pki, tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.serialization import pkcs7
    bag = pkcs7.serialize_certificates([pki.root.cert, pki.leaf.cert, pki.inter.cert],
                                       serialization.Encoding.DER)
    path = tmp_path / "bundle.p7b"
    path.write_bytes(bag)
    r = ctl("inspect", str(path), "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert [c["fingerprint"] for c in json.loads(r.stdout)["certificates"]] == \
        [pki.leaf.fingerprint] + pki.leaf.chain_fingerprints


def server_policy(api, cert, chain_pem):
    resp = api.call("POST", "/check", "dev1", json={"certificate": cert.pem.decode(),
                                                    "chain": chain_pem, "appId": "app1"})
    assert resp.status_code == 200, resp.text
    return resp.json()["policy"]


def test_inspect_refuses_bad_chain_in_the_servers_words(stack, api, pki):
    # Root before the intermediate: the upload refuses it, and so does inspect, word for word.
    path = files(stack, pki.leaf, "wrong-order", chain=[pki.root, pki.inter])
    r = ctl("inspect", path)
    assert r.returncode == 4, r.stdout + r.stderr
    policy = server_policy(api, pki.leaf, (pki.root.pem + pki.inter.pem).decode())
    assert policy["code"] == "Chain.Invalid"
    assert "policy: refused: Chain.Invalid: %s\n" % policy["message"] in r.stdout
    out = json.loads(ctl("inspect", path, "--json").stdout)
    assert out["policy"] == policy
    # Root missing.
    path = files(stack, pki.leaf, "no-root", chain=[pki.inter])
    r = ctl("inspect", path, "--json")
    assert r.returncode == 4
    assert json.loads(r.stdout)["policy"] == server_policy(api, pki.leaf, pki.inter.pem.decode())


def test_inspect_policy_settings_from_flags_and_config(stack, pki):
    le_root = make_cert("Let's Encrypt Test Root", ca=True, days=3000)
    le_leaf = make_cert("le client", issuer=le_root, days=400)
    path = files(stack, le_leaf, "le")
    r = ctl("inspect", path)
    assert r.returncode == 4 and "Policy.IssuerDenied" in r.stdout
    assert ctl("inspect", path, "--issuer-deny", "none").returncode == 0
    # A small RSA key: accepted by default (2048), refused with min-rsa-bits 4096 from a file.
    rsa_leaf = make_cert("rsa client", issuer=pki.inter, days=400, key_kind="rsa")
    path = files(stack, rsa_leaf, "rsa")
    assert ctl("inspect", path).returncode == 0
    conf = os.path.join(stack.work, "ctl.conf")
    with open(conf, "w") as f:
        f.write("# support's settings\nmin-rsa-bits = 4096\n")
    r = ctl("inspect", path, "--config", conf)
    assert r.returncode == 4 and "Policy.KeyTooWeak" in r.stdout
    r = ctl("inspect", path, env={"CERTGATE_CONFIG": conf, "X": "1"})
    assert r.returncode == 4 and "Policy.KeyTooWeak" in r.stdout
    # The flag wins over the file.
    assert ctl("inspect", path, "--config", conf, "--min-rsa-bits", "2048").returncode == 0
    with open(conf, "w") as f:
        f.write("min-rsa-bitz = 4096\n")
    r = ctl("inspect", path, "--config", conf)
    assert r.returncode == 2 and "unknown setting 'min-rsa-bitz'" in r.stderr
    # A private key that is not the leaf's.
    key = os.path.join(stack.work, "other.key")
    with open(key, "wb") as f:
        f.write(pki.leaf_b.key_pem())
    r = ctl("inspect", path, "--private-key", key)
    assert r.returncode == 4 and "PrivateKey.Invalid" in r.stdout
    # Not a certificate at all.
    with open(key, "wb") as f:
        f.write(b"junk\n")
    r = ctl("inspect", key)
    assert r.returncode == 4 and "Certificate.Invalid" in r.stdout


# ------------------------------------------------------------------ lifecycle


def upload(stack, cert, name, user="dev1", app="app1"):
    r = ctl("upload", files(stack, cert, name), "--app", app, "--json", stack=stack, user=user)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["id"]


def test_upload_and_four_eyes_refusal(stack, api, pki):
    r = ctl("upload", files(stack, pki.leaf, "leaf"), "--app", "app1", stack=stack, user="devmgr")
    assert r.returncode == 0, r.stderr
    assert "(PENDING)" in r.stdout and pki.leaf.fingerprint in r.stdout
    cid = r.stdout.split()[1]
    # The uploader approving its own upload: 403 from the API, exit 4, the API's words.
    r = ctl("approve", cid, stack=stack, user="devmgr")
    assert r.returncode == 4, r.stdout + r.stderr
    resp = api.call("POST", "/certs/%s/approve" % cid, "devmgr")
    assert resp.status_code == 403
    assert "403 Transition.FourEyes: %s" % resp.json()["message"] in r.stderr
    r = ctl("approve", cid, "--json", stack=stack, user="devmgr")
    assert r.returncode == 4 and json.loads(r.stdout)["code"] == "Transition.FourEyes"
    r = ctl("approve", cid, "--if-match", "v1", stack=stack, user="mgr1")
    assert r.returncode == 0 and r.stdout == "%s: APPROVED (version 2)\n" % cid
    # A second upload of the same certificate: 409, exit 4.
    r = ctl("upload", files(stack, pki.leaf, "leaf"), "--app", "app1", stack=stack, user="dev1")
    assert r.returncode == 4 and "Certificate.Duplicate" in r.stderr
    # Proof of possession with the wrong key: the API refuses, exit 4.
    key = os.path.join(stack.work, "wrong.key")
    with open(key, "wb") as f:
        f.write(pki.leaf.key_pem())
    r = ctl("upload", files(stack, pki.leaf_b, "leaf-b"), "--app", "app1", "--private-key", key,
            stack=stack, user="dev1")
    assert r.returncode == 4 and "PrivateKey.Invalid" in r.stderr
    # Wrong password: 401 from httpd, exit 4, said so.
    r = ctl("list", stack=stack, env={"CERTGATE_USER": "mgr1", "CERTGATE_PASSWORD": "nope"})
    assert r.returncode == 4 and "401" in r.stderr


def test_list_status_decline_inactivate(stack, api, pki):
    a = upload(stack, pki.leaf, "a")
    b = upload(stack, pki.leaf_b, "b")
    r = ctl("list", "--app", "app1", "--json", stack=stack, user="aud1")
    assert r.returncode == 0
    assert sorted(i["id"] for i in json.loads(r.stdout)["items"]) == sorted([a, b])
    r = ctl("list", "--status", "PENDING", stack=stack, user="aud1")
    assert r.returncode == 0 and a in r.stdout and "2 in all" in r.stdout
    assert ctl("decline", b, stack=stack, user="mgr1").returncode == 2     # --reason required
    r = ctl("decline", b, "--reason", "CN does not name the app", stack=stack, user="mgr1")
    assert r.returncode == 0 and "DECLINED" in r.stdout
    assert ctl("approve", a, stack=stack, user="mgr1").returncode == 0
    r = ctl("status", "app1", stack=stack, user="sup1")
    assert r.returncode == 0 and "app app1  customer cust-1" in r.stdout
    assert "gate=allow" in r.stdout and "DECLINED" in r.stdout
    out = json.loads(ctl("status", "app1", "--json", stack=stack, user="sup1").stdout)
    assert {c["id"]: c["status"] for c in out["certificates"]} == {a: "APPROVED", b: "DECLINED"}
    r = ctl("inactivate", a, "--reason", "key compromised", stack=stack, user="mgr1")
    assert r.returncode == 0 and "INACTIVATED" in r.stdout
    r = ctl("inactivate", a, "--reason", "again", stack=stack, user="mgr1")
    assert r.returncode == 4 and "Transition.Illegal" in r.stderr
    r = ctl("status", "no-such-app", stack=stack, user="sup1")
    assert r.returncode == 4 and "App.NotFound" in r.stderr


def test_rotate_and_events(stack, api, pki):
    old = api.approved(pki.leaf)
    new = api.approved(pki.leaf_b)
    r = ctl("rotate", "app1", "--new", new, "--old", old, "--activate", "+1m", "--retire", "+1d",
            "--json", stack=stack, user="sup1")
    assert r.returncode == 0, r.stderr
    rot = json.loads(r.stdout)
    assert (rot["newCertId"], rot["oldCertId"], rot["state"]) == (new, old, "SCHEDULED")
    r = ctl("rotate", "app1", "--new", new, "--activate", "+2d", "--retire", "+1d",
            stack=stack, user="sup1")
    assert r.returncode == 4 and "Rotation." in r.stderr
    r = ctl("events", "--action", "rotation.schedule", "--json", stack=stack, user="aud1")
    assert r.returncode == 0
    ev = json.loads(r.stdout)
    assert [e["rotationId"] for e in ev["items"]] == [rot["id"]] and ev["next"] is None
    r = ctl("events", "--all", "--limit", "1", stack=stack, user="aud1")
    assert r.returncode == 0
    lines = r.stdout.splitlines()
    # Two uploads, two approvals, one rotation, read one per page.
    assert [ln.split()[1] for ln in lines] == ["cert.upload", "cert.approve", "cert.upload",
                                              "cert.approve", "rotation.schedule"], r.stdout
    r = ctl("events", "--limit", "1", stack=stack, user="aud1")
    assert len(r.stdout.splitlines()) == 1 and "--cursor" in r.stderr
    assert ctl("events", stack=stack, user="dev1").returncode == 4     # auditors only


def test_export_and_import(stack, api, pki):
    a = api.approved(pki.leaf)
    b = upload(stack, pki.leaf_b, "b")
    out = os.path.join(stack.work, "export.json")
    r = ctl("export", "--output", out, stack=stack, user="aud1")
    assert r.returncode == 0 and "exported 2 registration(s)" in r.stderr
    with open(out) as f:
        exported = json.load(f)
    assert sorted(i["id"] for i in exported["items"]) == sorted([a, b])
    flush_store(stack.r)
    seed(stack.r)
    r = ctl("import", out, "--dry-run", "--keep-status", stack=stack, user="mgr1")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "dry run: 2 created, 0 unchanged, 0 error(s) of 2 record(s)" in r.stdout
    assert api.call("GET", "/certs", "aud1").json()["total"] == 0
    r = ctl("import", out, "--keep-status", "--batch", "1", "--json", stack=stack, user="mgr1")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert (res["created"], res["errors"]) == (2, 0)
    assert [x["index"] for x in res["results"]] == [0, 1]
    status = {c["id"]: c["status"] for c in api.call("GET", "/certs", "aud1").json()["items"]}
    assert status == {a: "APPROVED", b: "PENDING"}
    # Again: unchanged. With a bad record added: that one fails, exit 4, the others pass.
    exported["items"].append({"certificate": "junk", "appId": "app1"})
    with open(out, "w") as f:
        json.dump(exported, f)
    r = ctl("import", out, stack=stack, user="mgr1")
    assert r.returncode == 4
    assert "0 created, 2 unchanged, 1 error(s) of 3 record(s)" in r.stdout
    assert "2  error" in r.stdout and "Certificate.Invalid" in r.stdout
    r = ctl("import", out, "--keep-status", stack=stack, user="dev1")
    assert r.returncode == 4 and "Auth.Forbidden" in r.stderr


# ------------------------------------------------------------------ watch


def wait_usage(api, cid, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        usage = api.call("GET", "/certs/" + cid, "aud1").json().get("usage")
        if usage:
            return usage
        time.sleep(0.2)
    raise AssertionError("no usage recorded for " + cid)


def test_watch_times_out_while_in_use_then_exits_when_quiet(stack, api, pki):
    old = api.approved(pki.leaf)
    assert get(stack, GATED, pki.leaf).status_code == 200
    usage = wait_usage(api, old)
    # Seen a moment ago: not quiet for a minute within 3 s: exit 3.
    t0 = time.monotonic()
    r = ctl("watch", "app1", "--old", old, "--quiet-for", "60s", "--timeout", "3",
            "--interval", "1", stack=stack, user="sup1")
    assert r.returncode == 3, r.stdout + r.stderr
    assert 3 <= time.monotonic() - t0 < 20
    assert "last at %s" % usage["lastSeen"] in r.stderr and "not quiet in time" in r.stdout
    # Quiet for 4 s after the last request: exit 0, not before.
    last = calendar.timegm(time.strptime(usage["lastSeen"], "%Y-%m-%dT%H:%M:%SZ"))
    r = ctl("watch", "app1", "--old", old, "--quiet-for", "4", "--timeout", "60",
            "--interval", "1", "--json", stack=stack, user="sup1")
    assert r.returncode == 0, r.stdout + r.stderr
    assert time.time() >= last + 4
    res = json.loads(r.stdout)
    assert res["quiet"] is True and res["quietSeconds"] >= 4 and res["usage"]["requests"] >= 1
    assert "quiet for" in r.stderr
    # Not a certificate of that app: exit 4.
    r = ctl("watch", "app2", "--old", old, "--quiet-for", "1", stack=stack, user="sup1")
    assert r.returncode == 4
    assert ctl("watch", "app1", "--old", old, stack=stack, user="sup1").returncode == 2


def test_watch_never_seen_counts_from_start(stack, api, pki):
    old = api.approved(pki.leaf)
    t0 = time.monotonic()
    r = ctl("watch", "app1", "--old", old, "--quiet-for", "2", "--timeout", "30",
            "--interval", "1", stack=stack, user="sup1")
    assert r.returncode == 0, r.stderr
    assert time.monotonic() - t0 >= 2 and "no request recorded" in r.stderr


# ------------------------------------------------------------------ doctor


def redis_env(stack, **extra):
    env = {"CERTGATE_REDIS": "127.0.0.1:%d" % stack.redis.port,
           "CERTGATE_REDIS_PASSWORD": harness.Redis.PASSWORD,
           "CERTGATE_REDIS_DB": str(harness.Redis.DB)}
    env.update(extra)
    return env


def checks(stdout):
    return {ln.split()[1]: ln.split()[0] for ln in stdout.splitlines()}


def test_doctor_all_ok(stack):
    r = ctl("doctor", stack=stack, user="aud1", env=redis_env(stack))
    assert r.returncode == 0, r.stdout + r.stderr
    assert checks(r.stdout) == {c: "OK" for c in ("admin-api", "admin-clock", "redis", "redis-role",
                                                  "redis-pubsub", "redis-clock")}, r.stdout
    assert harness.Redis.PASSWORD not in r.stdout + r.stderr
    out = json.loads(ctl("doctor", "--json", stack=stack, user="aud1",
                         env=redis_env(stack)).stdout)
    assert out["ok"] is True and len(out["checks"]) == 6
    # The admin ACL user of the operator guide, password from a file: ROLE is not
    # among its commands (SKIP); the rest works.
    pw = os.path.join(stack.work, "redis-pw")
    with open(pw, "w") as f:
        f.write(harness.Redis.ADMIN_ACL_PASSWORD + "\n")
    env = redis_env(stack)
    del env["CERTGATE_REDIS_PASSWORD"]
    r = ctl("doctor", "--redis-user", harness.Redis.ADMIN_ACL_USER, "--redis-password-file", pw,
            env=env)
    assert r.returncode == 0, r.stdout
    assert checks(r.stdout) == {"admin-api": "SKIP", "admin-clock": "SKIP", "redis": "OK",
                                "redis-role": "SKIP", "redis-pubsub": "OK", "redis-clock": "OK"}
    assert harness.Redis.ADMIN_ACL_PASSWORD not in r.stdout + r.stderr


def test_doctor_reports_a_stopped_redis_in_one_line(stack):
    other = harness.Redis(stack.work + "/other").start()
    port = other.port
    other.stop()
    r = ctl("doctor", stack=stack, user="aud1",
            env=redis_env(stack, CERTGATE_REDIS="127.0.0.1:%d" % port))
    assert r.returncode == 1
    fails = [ln for ln in r.stdout.splitlines() if ln.startswith("FAIL")]
    assert len(fails) == 1, r.stdout
    assert "redis" in fails[0] and "cannot connect to 127.0.0.1:%d" % port in fails[0]
    assert checks(r.stdout)["admin-api"] == "OK"
    # A wrong password is one line too, and never printed.
    r = ctl("doctor", env=redis_env(stack, CERTGATE_REDIS_PASSWORD="wrong-secret-xyz"))
    assert r.returncode == 1
    fails = [ln for ln in r.stdout.splitlines() if ln.startswith("FAIL")]
    assert len(fails) == 1 and "refused the login" in fails[0]
    assert "wrong-secret-xyz" not in r.stdout + r.stderr


def test_doctor_reports_a_replica_and_a_bad_login_to_the_api(stack):
    port = harness.free_port()
    d = os.path.join(stack.work, "replica")
    os.makedirs(d, exist_ok=True)
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", "--dir", d,
                             "--replicaof", "127.0.0.1", str(stack.redis.port),
                             "--masterauth", harness.Redis.PASSWORD],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        harness.wait_port(port, proc)
        r = ctl("doctor", "--redis", "127.0.0.1:%d" % port, stack=stack,
                env={"CERTGATE_USER": "aud1", "CERTGATE_PASSWORD": "bad"})
        assert r.returncode == 1
        c = checks(r.stdout)
        assert c["redis"] == "OK" and c["redis-role"] == "FAIL" and c["admin-api"] == "FAIL"
        assert "is a replica of 127.0.0.1:%d" % stack.redis.port in r.stdout
        assert "(401)" in r.stdout
    finally:
        harness.stop_pid(proc)
