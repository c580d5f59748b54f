"""What only the nginx adapter has: its directives and their validation, its
async Redis client (ACL user, unix socket, wrong password), fail-open, the
connection cache, usage recording and the $certgate_* variables. The gate's
scenarios themselves run against nginx in test_gate.py and test_store_faults.py."""
import os
import signal
import subprocess
import time

import pytest

import harness
from clients import get, reason_of, session, usage_when_counted
from conftest import Stack, make_workdir
from harness import Redis, flush_store, register

GATED = "/gated/ok.txt"


def redis_calls(r, cmd):
    return r.info("commandstats").get("cmdstat_" + cmd, {}).get("calls", 0)


@pytest.fixture(scope="module")
def stack(pki):
    s = Stack(pki, server="nginx", nginx_args={
        "workers": 1, "extra_http": "certgate_usage_flush_interval 1;",
        "extra_server": "location /byvar/ { set $app_from_key $arg_app; "
                        "certgate on; certgate_app_from variable $app_from_key; }\n"
                        # "satisfy any" lets any one access module admit: never the gate's deny.
                        "location /anyof/ { satisfy any; allow 127.0.0.1; certgate on; }\n"
                        "location /anyofpage/ { satisfy any; allow 127.0.0.1; certgate on; "
                        "error_page 403 /open/denied.txt; }"})
    yield s
    s.close()


@pytest.fixture(autouse=True)
def clean(stack):
    flush_store(stack.r)


def test_keepalive_connection_needs_no_redis_in_steady_state(stack, pki):
    register(stack.r, pki.leaf, "app1")
    s = session(stack, pki.leaf)
    assert s.get(stack.server.url(GATED)).status_code == 200
    gets = redis_calls(stack.r, "get")
    for _ in range(100):
        assert s.get(stack.server.url(GATED)).status_code == 200
    assert redis_calls(stack.r, "get") == gets
    # A new connection from a known client is served by the worker's cache.
    for _ in range(5):
        assert get(stack, GATED, pki.leaf).status_code == 200
    assert redis_calls(stack.r, "get") == gets


def test_app_from_variable(stack, pki):
    register(stack.r, pki.leaf, "app1")
    os.makedirs(os.path.join(stack.work, "htdocs", "byvar"), exist_ok=True)
    with open(os.path.join(stack.work, "htdocs", "byvar", "ok.txt"), "w") as f:
        f.write("ok\n")
    assert get(stack, "/byvar/ok.txt?app=app1", pki.leaf).status_code == 200
    resp = get(stack, "/byvar/ok.txt?app=app2", pki.leaf)
    assert (resp.status_code, reason_of(resp)) == (403, "app_mismatch")
    resp = get(stack, "/byvar/ok.txt", pki.leaf)
    assert (resp.status_code, reason_of(resp)) == (403, "app_mismatch")


@pytest.mark.parametrize("path", ["/anyof/", "/anyofpage/"])
def test_satisfy_any_does_not_skip_the_gate(stack, pki, path):
    d = os.path.join(stack.work, "htdocs", path.strip("/"))
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "ok.txt"), "w") as f:
        f.write("ok\n")
    resp = get(stack, path + "ok.txt", pki.leaf)
    assert (resp.status_code, reason_of(resp)) == (403, "unregistered")
    assert resp.text != "ok\n"
    register(stack.r, pki.leaf, "app1")
    assert get(stack, path + "ok.txt", pki.leaf).text == "ok\n"


def test_variables_reach_the_access_log(stack, pki):
    reg_id = register(stack.r, pki.leaf, "app1")
    assert get(stack, GATED, pki.leaf).status_code == 200
    assert get(stack, GATED, pki.leaf_other).status_code == 403
    time.sleep(0.2)
    log = open(os.path.join(stack.work, "logs", "access.log")).read().splitlines()
    assert any("reason=allow app=app1" in l for l in log), log[-5:]
    assert any("reason=unregistered app=-" in l for l in log), log[-5:]
    assert reg_id


def test_usage_is_recorded_in_batches(stack, pki):
    # A cert no other test here uses: counts from earlier tests may still be in flight.
    reg_id = register(stack.r, pki.leaf_b, "app1", reg_id="usage-probe")
    s = session(stack, pki.leaf_b)
    for _ in range(7):
        assert s.get(stack.server.url(GATED)).status_code == 200
    usage = usage_when_counted(stack, reg_id, 7, timeout=5)
    assert usage.get(b"count") == b"7", usage
    assert usage.get(b"last_ip") == b"127.0.0.1"
    assert abs(int(usage[b"last_seen"]) - time.time()) < 10


def test_unix_socket_acl_user_db_and_prefix(pki):
    s = Stack(pki, server="nginx", store_conf=lambda r: (
        "certgate_redis unix:%s;\ncertgate_redis_auth %s %s;\ncertgate_redis_db %d;\n"
        "certgate_key_prefix cgx:;" % (r.socket, Redis.ACL_USER, Redis.ACL_PASSWORD, Redis.DB)))
    try:
        flush_store(s.r, "cgx:")
        register(s.r, pki.leaf, "app1")       # default prefix: not ours
        assert reason_of(get(s, GATED, pki.leaf)) == "unregistered"
        register(s.r, pki.leaf, "app1", prefix="cgx:")
        assert get(s, GATED, pki.leaf).status_code == 200
        users = [c.get("user") for c in s.r.client_list()]
        assert Redis.ACL_USER in users
    finally:
        s.close()


def test_wrong_password_fails_closed_and_is_not_logged(pki):
    s = Stack(pki, server="nginx", store_conf=lambda r: (
        "certgate_redis 127.0.0.1:%d;\ncertgate_redis_auth wrong-secret-x;" % r.port))
    try:
        register(s.r, pki.leaf, "app1")
        resp = get(s, GATED, pki.leaf)
        assert (resp.status_code, reason_of(resp)) == (503, "store_unavailable")
        log = s.server.read_log()
        assert "CG09004" in log and "AUTH" in log
        assert "CG02001" in log
        assert "wrong-secret-x" not in log
    finally:
        s.close()


def test_fail_open_is_loud(pki):
    s = Stack(pki, server="nginx", nginx_args={
        "extra_server": "location /failopen/ { certgate on; certgate_on_store_error allow; }"})
    try:
        os.makedirs(os.path.join(s.work, "htdocs", "failopen"))
        with open(os.path.join(s.work, "htdocs", "failopen", "ok.txt"), "w") as f:
            f.write("ok\n")
        startup = s.server.read_log() + open(os.path.join(s.work, "logs", "stderr.log")).read()
        assert "CG05001" in startup
        s.redis.stop()
        assert get(s, "/failopen/ok.txt", pki.leaf_other).status_code == 200
        # The access log is written after the response: wait for the line.
        assert harness.wait_for_line(os.path.join(s.work, "logs", "access.log"),
                                     " 200 reason=store_unavailable")
        assert get(s, GATED, pki.leaf_other).status_code == 503   # deny elsewhere
        log = s.server.read_log()
        assert "CG02002" in log and "FAIL-OPEN" in log
    finally:
        s.close()


HTTP_HEAD = ("load_module %s;\nerror_log stderr;\npid %s/nginx.pid;\nevents {}\n"
             "http {\n%s\n server { listen 127.0.0.1:%d; location / { certgate on; } }\n}\n")


@pytest.mark.parametrize("line,message", [
    ("certgate_redis localhost;", "certgate_redis: expected host:port or unix:/path"),
    ("certgate_redis localhost:99999;", "the port must be a number from 1 to 65535"),
    ("certgate_redis unix:relative.sock;", "needs an absolute socket path"),
    ("certgate_redis_timeout 0ms;", "certgate_redis_timeout: expected a time"),
    ("certgate_redis_db -1;", "certgate_redis_db"),
    ("certgate_key_prefix \"a b\";", "printable ASCII characters without spaces"),
    ("certgate_on_store_error maybe;", "certgate_on_store_error: expected deny, allow or stale SECONDS, got \"maybe\""),
    ("certgate_cache_entries 0;", "expected a whole number from 1 to 10000000"),
    ("server { certgate_app_from cookie x; }", "wants \"header NAME\""),
    ("certgate_redis_auth;", "invalid number of arguments in \"certgate_redis_auth\""),
])
def test_bad_directive_values_stop_startup(line, message):
    work = make_workdir()
    conf = os.path.join(work, "bad.conf")
    with open(conf, "w") as f:
        f.write(HTTP_HEAD % (harness.NGX_MODULE, work, line, harness.free_port()))
    res = subprocess.run([harness.NGINX, "-t", "-c", conf, "-p", work], capture_output=True,
                         text=True, timeout=30, env=harness.server_env(work))
    assert res.returncode != 0
    assert message in res.stderr, res.stderr


def test_example_conf_passes_nginx_t(pki):
    work = make_workdir()
    pki.server.write(os.path.join(work, "pki"), "server", send_chain=[])
    conf = open(os.path.join(harness.ROOT, "conf", "nginx-certgate.conf")).read()
    conf = (conf.replace("/usr/lib/nginx/modules/ngx_http_certgate_module.so", harness.NGX_MODULE)
            .replace("/etc/ssl/certs/api.example.com.pem", work + "/pki/server.pem")
            .replace("/etc/ssl/private/api.example.com.key", work + "/pki/server.key")
            .replace("/var/log/nginx/", work + "/")
            .replace("listen 443", "listen 127.0.0.1:%d" % harness.free_port()))
    path = os.path.join(work, "nginx.conf")
    with open(path, "w") as f:
        f.write("pid %s/nginx.pid;\nerror_log stderr;\n%s" % (work, conf))
    res = subprocess.run([harness.NGINX, "-t", "-c", path, "-p", work], capture_output=True,
                         text=True, timeout=30, env=harness.server_env(work))
    assert res.returncode == 0, res.stderr


def test_reload_after_gated_lookups_leaves_no_alert(pki):
    # Each worker that looked up a registration holds a Redis connection; it
    # must be closed at worker exit, or nginx logs "[alert] open socket ...
    # left in connection" and "aborting" on every reload.
    s = Stack(pki, server="nginx")
    try:
        register(s.r, pki.leaf, "app1")
        for _ in range(6):                    # new connections reach both workers
            assert get(s, GATED, pki.leaf).status_code == 200
        os.kill(s.server.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "exited with code" not in s.server.read_log() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        log = s.server.read_log()
        assert "exited with code" in log, log[-2000:]
        assert "open socket" not in log and "aborting" not in log, log[-2000:]
        assert get(s, GATED, pki.leaf).status_code == 200
    finally:
        s.close()
