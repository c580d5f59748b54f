"""Store settings (unix socket, ACL user, DB, prefix), fail-open, and startup validation."""
import os
import re
import subprocess

import pytest

import harness
from clients import get, reason_of
from conftest import Stack, httpd_config_test, make_workdir
from harness import Redis, flush_store, register

GATED = "/gated/ok.txt"


@pytest.fixture(scope="module")
def acl_stack(pki):
    s = Stack(pki, store_conf=lambda r: (
        "CertGateRedis unix:%s\nCertGateRedisAuth %s %s\nCertGateRedisDB %d\n"
        "CertGateKeyPrefix cgx:\nCertGateRedisMaxIdle 0"
        % (r.socket, Redis.ACL_USER, Redis.ACL_PASSWORD, Redis.DB)))
    yield s
    s.close()


def test_unix_socket_acl_user_db_and_prefix(acl_stack, pki):
    flush_store(acl_stack.r, "cgx:")
    register(acl_stack.r, pki.leaf, "app1")               # default prefix: not ours
    assert reason_of(get(acl_stack, GATED, pki.leaf)) == "unregistered"
    register(acl_stack.r, pki.leaf, "app1", prefix="cgx:")
    resp = get(acl_stack, GATED, pki.leaf)
    assert resp.status_code == 200
    assert resp.headers["X-Seen-App"] == "app1"
    # The gate really authenticated as the ACL user.
    # (its invalidation subscriber stays connected as that user).
    users = [c.get("user") for c in acl_stack.r.client_list()]
    assert Redis.ACL_USER in users


def test_wrong_password_fails_closed(pki):
    s = Stack(pki, store_conf=lambda r: "CertGateRedis 127.0.0.1:%d\nCertGateRedisAuth wrong"
              % r.port)
    try:
        register(s.r, pki.leaf, "app1", prefix="certgate:")
        resp = get(s, GATED, pki.leaf)
        assert resp.status_code == 503
        assert reason_of(resp) == "store_unavailable"
        log = s.httpd.read_log()
        assert "CG02001" in log and "AUTH" in log
        assert "wrong" not in log.split("AUTH", 1)[1].split("\n", 1)[0].replace("WRONGPASS", "")
    finally:
        s.close()


def test_fail_open_is_loud(pki):
    s = Stack(pki, extra_server="CertGateOnStoreError allow")
    try:
        line = [l for l in s.httpd.read_log().splitlines() if "CG05001" in l]
        # It names where the server that allows it is defined (file:line).
        assert any(re.search(r"defined in /\S+\.conf:\d+", l) for l in line), line
        s.redis.stop()
        resp = get(s, GATED, pki.leaf_other)
        assert resp.status_code == 200
        assert resp.headers["X-Seen-App"] in ("", "(null)")
        log = s.httpd.read_log()
        assert "CG02002" in log and "FAIL-OPEN" in log
        # The 200 says it was not checked (docs/reasons.md).
        # The access log is written after the response: wait for the line.
        assert harness.wait_for_line(os.path.join(s.work, "logs", "access.log"),
                                     " 200 reason=store_unavailable")
    finally:
        s.close()


@pytest.mark.parametrize("line,message", [
    ("CertGateRedisTimeout 0", "CertGateRedisTimeout: expected a whole number from 1 to 60000"),
    ("CertGateRedisTimeout 2s", "CertGateRedisTimeout: expected a whole number"),
    ("CertGateRedis localhost", "CertGateRedis: expected host:port or unix:/path"),
    ("CertGateRedis localhost:99999", "the port must be a number from 1 to 65535"),
    ("CertGateRedis unix:relative.sock", "needs an absolute socket path"),
    ("CertGateRedisDB -1", "CertGateRedisDB: expected a whole number"),
    ("CertGateKeyPrefix 'a b'", "CertGateKeyPrefix: printable ASCII"),
    ("CertGateKeyPrefix ''", "CertGateKeyPrefix takes one argument"),
    ("CertGateOnStoreError maybe", "CertGateOnStoreError: expected deny, allow or stale SECONDS"),
    ("CertGateAppFrom cookie x", "CertGateAppFrom: expected"),
    ("CertGateRedisAuth", "CertGateRedisAuth takes 1-2 arguments"),
    ("CertGateRedisMaxIdle 5000", "CertGateRedisMaxIdle: expected a whole number from 0 to 1024"),
])
def test_bad_directive_values_stop_startup(line, message):
    rc, err = httpd_config_test(line)
    assert rc != 0
    assert message in err, err


def test_gate_without_mod_ssl_refuses_to_start():
    work = make_workdir()
    conf = os.path.join(work, "nossl.conf")
    with open(conf, "w") as f:
        f.write('ServerRoot "%s"\nServerName localhost\nPidFile "%s/pid"\nErrorLog "%s/err.log"\n'
                "LoadModule mpm_event_module %s/mod_mpm_event.so\n"
                "LoadModule certgate_module %s\nListen 127.0.0.1:%d\n"
                "<Location /x>\nCertGate On\n</Location>\n"
                % (work, work, work, harness.MODDIR, harness.MODULE, harness.free_port()))
    res = subprocess.run([harness.APACHE, "-f", conf, "-DFOREGROUND"], capture_output=True,
                         text=True, timeout=30, env=harness.server_env(work))
    assert res.returncode != 0
    assert "CG04002" in open(os.path.join(work, "err.log")).read() + res.stderr
