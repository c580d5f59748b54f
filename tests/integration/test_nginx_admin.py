"""nginx's admin API works in a thread pool, off the worker's event loop: the gate
answers at its usual speed while big admin work (an 8 MB upload, a 10,000-event
audit export) or an admin request stuck on Redis runs on the same worker."""
import os
import signal
import statistics
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import harness
from admin import Admin, seed
from clients import get, session
from conftest import Stack
from harness import flush_store, register

GATED = "/gated/ok.txt"
EVENTS = 10000
UPLOAD = 8 * 1024 * 1024       # the upload route's limit (CG_CERT_MAX_INPUT), exactly


@pytest.fixture(scope="module")
def stack(pki):
    # One worker: the gate and the admin API share one event loop, so any
    # blocking admin work would show in the gate's latency.
    s = Stack(pki, server="nginx", nginx_args={"workers": 1, "timeout_ms": 3000})
    yield s
    s.close()


def seed_events(r, n):
    p = r.pipeline(transaction=False)
    for i in range(n):
        p.xadd("certgate:events", {
            "time": "2026-01-01T00:00:00Z", "user": "mgr1", "ip": "127.0.0.1",
            "action": "cert.approve", "cert_id": "reg-%05d" % i, "app_id": "app1",
            "customer_id": "cust-1", "old_status": "PENDING", "new_status": "APPROVED"})
    p.execute()


def gate_latencies(stack, cert, n=None, until=None):
    """Sequential gated requests on one keep-alive connection: their times in ms."""
    s = session(stack, cert)
    out = []
    while (n is not None and len(out) < n) or (until is not None and not until.is_set()):
        t0 = time.perf_counter()
        resp = s.get(stack.server.url(GATED), timeout=10)
        out.append((time.perf_counter() - t0) * 1000)
        assert resp.status_code == 200, resp.status_code
    s.close()
    return out


def pct(values, p):
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100.0 * (len(v) - 1))))]


def test_gate_latency_while_big_admin_work_runs(stack, pki):
    flush_store(stack.r)
    seed(stack.r)
    register(stack.r, pki.leaf, "app1")
    seed_events(stack.r, EVENTS)
    api = Admin(stack)
    gate_latencies(stack, pki.leaf, n=50)                 # warm: TLS, cache, connection
    idle = gate_latencies(stack, pki.leaf, n=400)

    stop = threading.Event()
    done = {"upload": 0, "export": 0}
    # JSON with a certificate and an 8 MB field: read by nginx, parsed by the core.
    pem = pki.leaf.pem.decode().replace("\n", "\\n")
    chain = pki.leaf.der_chain_pem().replace("\n", "\\n")
    head = ('{"appId":"app1","certificate":"%s","chain":"%s","note":"' % (pem, chain)).encode()
    body = head + b"x" * (UPLOAD - len(head) - 2) + b'"}'
    assert len(body) == UPLOAD
    body_file = os.path.join(stack.work, "upload.json")
    with open(body_file, "wb") as f:
        f.write(body)

    def curl(user, path, *extra):
        # curl, not this process: parsing 10,000 events here would hold the GIL
        # and show as gate latency that nginx never caused.
        out = subprocess.run(
            ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{size_download}",
             "--cacert", stack.server_ca, "-u", "%s:%s" % (user, stack.server.admin_users[user]),
             *extra, stack.server.url("/admin" + path)],
            capture_output=True, text=True, timeout=60).stdout.split()
        return int(out[0]), int(out[1])

    def uploads():
        while not stop.is_set():
            code, _ = curl("dev1", "/certs", "-H", "Content-Type: application/json",
                           "--data-binary", "@" + body_file)
            assert code in (201, 409), code    # registered once, then a duplicate
            done["upload"] += 1

    def exports():
        while not stop.is_set():
            code, size = curl("aud1", "/events?limit=%d" % EVENTS)
            assert code == 200 and size > EVENTS * 100, (code, size)
            done["export"] += 1

    with ThreadPoolExecutor(2) as ex:
        work = [ex.submit(uploads), ex.submit(exports)]
        time.sleep(0.2)
        t0 = time.monotonic()
        loaded = []
        while time.monotonic() - t0 < 6 or min(done.values()) < 2:
            loaded += gate_latencies(stack, pki.leaf, n=100)
            assert time.monotonic() - t0 < 60, done
        stop.set()
        for f in work:
            f.result()
    line = ("gate p50/p99 ms: idle %.1f/%.1f (n=%d); during 8 MB uploads (%d) and "
            "10,000-event exports (%d): %.1f/%.1f (n=%d)"
            % (pct(idle, 50), pct(idle, 99), len(idle), done["upload"], done["export"],
               pct(loaded, 50), pct(loaded, 99), len(loaded)))
    print("\n" + line)
    assert min(done.values()) >= 2
    assert pct(loaded, 99) < 200 * (1 + harness.SLACK), line
    assert statistics.median(loaded) < 50 * (1 + harness.SLACK), line


def test_an_admin_request_waiting_on_redis_does_not_stall_the_worker(stack, pki):
    flush_store(stack.r)
    seed(stack.r)
    api = Admin(stack)
    assert api.call("GET", "/certs", "aud1").status_code == 200    # a pooled connection
    stack.redis.pause()
    try:
        with ThreadPoolExecutor(1) as ex:
            t0 = time.monotonic()
            slow = ex.submit(api.call, "GET", "/certs", "aud1")
            time.sleep(0.3)        # the admin request now waits on Redis (2 s budget)
            worst = 0.0
            for _ in range(20):
                t1 = time.monotonic()
                assert get(stack, "/open/ok.txt").status_code == 200
                worst = max(worst, time.monotonic() - t1)
            open_done = time.monotonic() - t0
            resp = slow.result()
            took = time.monotonic() - t0
    finally:
        stack.redis.resume()
    print("\n20 ungated requests done %.2f s in, slowest %.0f ms; the admin request "
          "answered %d after %.2f s" % (open_done, worst * 1000, resp.status_code, took))
    assert resp.status_code == 503 and took > 1.5
    assert worst < 0.5 + harness.SLACK
    # All 20 were answered while the admin request still waited (a blocked worker
    # answers none of them before it).
    assert open_done < took


def test_admin_work_leaves_no_alert_at_worker_exit(pki):
    # The admin store's connections are closed in exit_process, after the thread
    # pool joined its threads: nginx finds no open socket and no thread left.
    s = Stack(pki, server="nginx")
    try:
        seed(s.r)
        api = Admin(s)
        with ThreadPoolExecutor(4) as ex:
            for resp in ex.map(lambda _: api.call("GET", "/certs", "aud1"), range(16)):
                assert resp.status_code == 200
        assert harness.wait_for_line(s.server.error_log,
                                     "CG06001: admin GET /certs -> 200 user=aud1")
        s.server.stop()
        log = s.server.read_log()
    finally:
        s.close()
    assert "[alert]" not in log and "[emerg]" not in log, log[-2000:]
    assert "exited with code 0" in log or "exiting" in log


def test_reload_answers_an_admin_request_in_flight(pki):
    # A reload (SIGHUP) makes the old worker quit once no timer is left. The
    # admin task runs in a thread with no timer of its own: without one the
    # worker exited mid-task, the client got no answer and nginx logged
    # "[alert] open socket ... left" and "aborting".
    s = Stack(pki, server="nginx", nginx_args={"workers": 1, "timeout_ms": 3000})
    try:
        seed(s.r)
        api = Admin(s)
        assert api.call("GET", "/certs", "aud1").status_code == 200   # a pooled connection
        s.redis.pause()
        try:
            with ThreadPoolExecutor(1) as ex:
                slow = ex.submit(api.call, "GET", "/certs", "aud1")
                time.sleep(0.4)                  # the task now waits on Redis
                os.kill(s.server.proc.pid, signal.SIGHUP)
                time.sleep(0.5)                  # the old worker is quitting
                s.redis.resume()
                resp = slow.result()
        finally:
            s.redis.resume()
        assert resp.status_code == 200, resp.text
        assert harness.wait_for_line(s.server.error_log, "gracefully shutting down")
        assert harness.wait_for_line(s.server.error_log, "exited with code 0")
        log = s.server.read_log()
    finally:
        s.close()
    assert "[alert]" not in log, log[-2000:]


def test_an_upload_with_a_key_never_goes_to_a_body_file(pki):
    # A server-wide client_body_in_file_only would have nginx write the body,
    # private key included, to client_body_temp_path (logged at notice).
    s = Stack(pki, server="nginx", nginx_args={"extra_server": "client_body_in_file_only on;"})
    try:
        seed(s.r)
        resp = Admin(s).upload(pki.leaf, privateKey=pki.leaf.key_pem().decode())
        assert resp.status_code == 201, resp.text
        assert harness.wait_for_line(s.server.error_log, "CG06001: admin POST /certs -> 201")
        log = s.server.read_log()
    finally:
        s.close()
    assert "buffered to a temporary file" not in log, log[-2000:]


@pytest.mark.parametrize("directive, words", [
    ("certgate_admin_role boss dev1;", 'certgate_admin_role: unknown role "boss"'),
    ("certgate_admin_customer 'a b' dev1;", "certgate_admin_customer: the customer id"),
    ("certgate_admin_customer c1 dev1; certgate_admin_customer c2 dev1;",
     'certgate_admin_customer: user "dev1" already has a customer'),
    ("certgate_admin_user_match sometimes;",
     'certgate_admin_user_match: use exact (default) or ignore_case, not "sometimes"'),
    ("certgate_policy_validity_days 30 10;", "certgate_policy_validity_days wants MIN MAX"),
    ("certgate_admin_timeout 0;", "certgate_admin_timeout must be 1..60000 ms"),
    ("certgate_admin_max_body 10;", "certgate_admin_max_body must be 1024 bytes..64m"),
    ("certgate_policy_authorized_cas /nonexistent/cas.txt;", "certgate_policy_authorized_cas:"),
])
def test_admin_directive_errors_name_the_directive_and_line(tmp_path, directive, words):
    conf = tmp_path / "nginx.conf"
    conf.write_text("load_module %s;\nevents {}\nhttp {\n  server {\n    location /a {\n"
                    "      certgate_admin;\n      %s\n    }\n  }\n}\n"
                    % (harness.NGX_MODULE, directive))
    out = subprocess.run([harness.NGINX, "-t", "-c", str(conf), "-p", str(tmp_path),
                          "-g", "error_log stderr;"], capture_output=True, text=True, timeout=30,
                         env=harness.server_env(str(tmp_path)))
    assert out.returncode != 0
    assert words in out.stderr and "%s:7" % conf in out.stderr, out.stderr


@pytest.mark.parametrize("user, refused", [
    ("$remote_user", True), ("${REMOTE_USER}", True), ("$cg_user", False),
    ("$remote_user_x", False)])
def test_remote_user_with_satisfy_any_is_refused(tmp_path, user, refused):
    # satisfy any: a client that "allow" lets in skips auth_basic, yet nginx fills
    # $remote_user from its unchecked Authorization header (mgr1 with any
    # password was a manager). Refused at startup.
    conf = tmp_path / "nginx.conf"
    conf.write_text("load_module %s;\nevents {}\nhttp {\n  server {\n    location /a {\n"
                    "      satisfy any; allow 127.0.0.1; deny all;\n"
                    "      auth_basic x; auth_basic_user_file /dev/null;\n"
                    "      set $cg_user \"\"; set $remote_user_x \"\";\n"
                    "      certgate_admin; certgate_admin_user %s;\n    }\n  }\n}\n"
                    % (harness.NGX_MODULE, user))
    out = subprocess.run([harness.NGINX, "-t", "-c", str(conf), "-p", str(tmp_path),
                          "-g", "error_log stderr;"], capture_output=True, text=True, timeout=30,
                         env=harness.server_env(str(tmp_path)))
    if refused:
        assert out.returncode != 0
        assert "certgate_admin_user $remote_user in location \"/a\" with satisfy any" \
            in out.stderr, out.stderr
    else:
        assert out.returncode == 0, out.stderr


def test_certgate_admin_wants_a_prefix_location(tmp_path):
    conf = tmp_path / "nginx.conf"
    conf.write_text("load_module %s;\nevents {}\nhttp {\n  server {\n"
                    "    location ~ ^/adm { certgate_admin; }\n  }\n}\n" % harness.NGX_MODULE)
    out = subprocess.run([harness.NGINX, "-t", "-c", str(conf), "-p", str(tmp_path),
                          "-g", "error_log stderr;"], capture_output=True, text=True, timeout=30,
                         env=harness.server_env(str(tmp_path)))
    assert out.returncode != 0 and "certgate_admin needs a prefix location" in out.stderr, out.stderr
