"""Review of ngxka: nginx gates subrequests in the rewrite phase. Subrequests
of one page share the main request's pool; each must be decided (and resumed)
on its own: a sibling's state is not theirs."""
import os
import re
import subprocess
import threading
import time

import pytest

from clients import files_for, session, usage_when_counted
from conftest import Stack
from harness import flush_store, free_port, register

SECRET_A = "r8 secret A\n"
SECRET_B = "r8 secret B\n"

# Two gated locations (one a file, one answering in its rewrite phase), two
# whose app comes from a variable (app1, app2), and pages including them.
NGINX_SERVER = """
        location /r8open/ {
            ssi on;
            ssi_types text/plain;
        }
        location /r8a/ { certgate on; }
        location /r8b/ {
            certgate on;
            return 200 "r8 secret B\\n";
        }
        location /r8app1/ {
            certgate on;
            set $r8app app1;
            certgate_app_from variable $r8app;
            return 200 "r8 secret A\\n";
        }
        location /r8app2/ {
            certgate on;
            set $r8app app2;
            certgate_app_from variable $r8app;
            return 200 "r8 secret B\\n";
        }
        location /r8app1f/ {
            certgate on;
            set $r8app app1;
            certgate_app_from variable $r8app;
        }
        location /r8app2f/ {
            certgate on;
            set $r8app app2;
            certgate_app_from variable $r8app;
        }
        location /r8fwd/ {
            certgate on;
            certgate_forward_headers on;
            proxy_pass http://127.0.0.1:{echo_port};
        }
        # An ungated page with gated bodies before and after it.
        location /r8add/ {
            add_before_body /r8a/s.txt;
            add_after_body /r8b/x;
            addition_types text/plain;
        }
        # An ungated location whose auth_request goes to a gated one.
        location /r8auth/ { auth_request /r8authz; }
        location = /r8authz {
            internal;
            certgate on;
            return 204;
        }
        # realip: the address of a request, not of its connection.
        set_real_ip_from 127.0.0.1;
        real_ip_header X-Real-IP;
        location /r8dbg/ {
            certgate on;
            error_log {work}/logs/r8debug.log debug;
        }
"""

PAGES = {
    "two.txt": '<!--# include virtual="/r8a/s.txt" --> | <!--# include virtual="/r8b/x" --> end\n',
    "twowait.txt": '<!--# include virtual="/r8a/s.txt" wait="yes" --> | '
                   '<!--# include virtual="/r8b/x" wait="yes" --> end\n',
    "apps.txt": '<!--# include virtual="/r8app1/x" --> | <!--# include virtual="/r8app2/x" --> end\n',
    "appsf.txt": '<!--# include virtual="/r8app1f/s.txt" --> | '
                 '<!--# include virtual="/r8app2f/s.txt" --> end\n',
    "fwd.txt": '<!--# include virtual="/r8fwd/x" --> end\n',
    "appswait.txt": '<!--# include virtual="/r8app1/x" wait="yes" --> | '
                    '<!--# include virtual="/r8app2/x" wait="yes" --> end\n',
}


@pytest.fixture(scope="module")
def ngx(pki):
    # The upstream of /r8fwd/: the headers it was sent (a request of its own,
    # whose variables the page's header filter has not read).
    port = free_port()
    echo = ("server { listen 127.0.0.1:%d; location / { return 200 "
            "\"app=$http_certgate_app_id\\n\"; } }" % port)
    s = Stack(pki, server="nginx",
              nginx_args={"extra_server": NGINX_SERVER.replace("{echo_port}", str(port)),
                          "extra_http": echo, "workers": 1, "timeout_ms": 1000})
    for d, text in (("r8auth", SECRET_A), ("r8add", "page\n"), ("r8a", SECRET_A),
                    ("r8dbg", SECRET_A), ("r8app1f", SECRET_A), ("r8app2f", SECRET_B),
                    ("r8open", None)):
        os.makedirs(os.path.join(s.work, "htdocs", d), exist_ok=True)
        if text:
            with open(os.path.join(s.work, "htdocs", d, "s.txt"), "w") as f:
                f.write(text)
    for name, text in PAGES.items():
        with open(os.path.join(s.work, "htdocs", "r8open", name), "w") as f:
            f.write(text)
    yield s
    s.close()


@pytest.fixture
def stack(ngx):
    flush_store(ngx.r)
    return ngx


def fetch(stack, sess, page):
    # A hung subrequest holds the page: a short timeout shows it.
    resp = sess.get(stack.server.url("/r8open/" + page), timeout=6)
    assert resp.status_code == 200, resp.text
    assert resp.text.rstrip().endswith("end"), resp.text
    return resp.text


@pytest.mark.parametrize("page", ["two.txt", "twowait.txt"])
def test_two_gated_includes_refused_without_registration(stack, pki, page):
    # Neither include may be served to a certificate registered for nothing:
    # the second one must not take the first one's decision (or its wait).
    register(stack.r, pki.leaf, "app1")
    s = session(stack, pki.leaf_other)
    for _ in range(3):      # the first after the flush looks up, then the cache
        text = fetch(stack, s, page)
        assert SECRET_A not in text and SECRET_B not in text, text


@pytest.mark.parametrize("page", ["two.txt", "twowait.txt"])
def test_two_gated_includes_served_to_registered_cert(stack, pki, page):
    # Both subrequests wait for Redis at first: each must be resumed.
    register(stack.r, pki.leaf, "app1")
    s = session(stack, pki.leaf)
    for _ in range(3):
        text = fetch(stack, s, page)
        assert SECRET_A in text and SECRET_B in text, text


@pytest.mark.parametrize("page", ["two.txt", "twowait.txt"])
def test_two_gated_includes_while_redis_is_slow(stack, pki, page):
    # Redis stopped for a moment: both subrequests' lookups are in flight
    # together; the reply must resume each of them, and the page completes.
    register(stack.r, pki.leaf, "app1")
    stack.redis.pause()
    timer = threading.Timer(0.4, stack.redis.resume)
    timer.start()
    try:
        s = session(stack, pki.leaf)
        text = fetch(stack, s, page)
    finally:
        timer.join()
        stack.redis.resume()
    assert SECRET_A in text and SECRET_B in text, text


@pytest.mark.parametrize("page", ["apps.txt", "appsf.txt", "appswait.txt"])
def test_sibling_include_of_another_app_is_decided_on_its_own(stack, pki, page):
    # Registered for app1 only: the app2 location's include is refused, even
    # after the app1 include on the same page was allowed.
    register(stack.r, pki.leaf, "app1")
    s = session(stack, pki.leaf)
    for _ in range(3):
        text = fetch(stack, s, page)
        assert SECRET_A in text, text
        assert SECRET_B not in text, text


@pytest.mark.parametrize("http2", [False, True], ids=["http1", "http2"])
def test_two_gated_includes_over_curl(stack, pki, http2):
    register(stack.r, pki.leaf_other, "app1")
    c, k = files_for(stack, pki.leaf)       # not registered
    cmd = ["curl", "-s", "--cacert", stack.server_ca, "--max-time", "6",
           "--http2" if http2 else "--http1.1", "--cert", c, "--key", k]
    for page in ("two.txt", "apps.txt"):
        cmd.append(stack.server.url("/r8open/" + page))
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, (out.returncode, out.stdout)
    assert out.stdout.count("end") == 2, out.stdout
    assert "secret" not in out.stdout, out.stdout


def test_debug_error_log_of_a_location_gets_allow_lines(stack, pki):
    # The server's error log is at info: a location's own debug log still
    # gets CG01002 for each allow (the memo's path included).
    register(stack.r, pki.leaf, "app1")
    path = os.path.join(stack.work, "logs", "r8debug.log")
    before = open(path).read().count("CG01002") if os.path.exists(path) else 0
    s = session(stack, pki.leaf)
    for _ in range(4):
        resp = s.get(stack.server.url("/r8dbg/s.txt"), timeout=10)
        assert resp.status_code == 200, resp.text
    deadline = time.monotonic() + 5
    n = 0
    while time.monotonic() < deadline:
        n = open(path).read().count("CG01002") - before
        if n >= 4:
            break
        time.sleep(0.1)
    assert n == 4, n


def test_forwarded_headers_reach_a_subrequests_upstream(stack, pki):
    # certgate_forward_headers in a location reached by an SSI include: the
    # subrequest's upstream gets them, as a main request's does.
    register(stack.r, pki.leaf, "app1")
    s = session(stack, pki.leaf)
    resp = s.get(stack.server.url("/r8fwd/x"), timeout=6)
    assert resp.text == "app=app1\n", resp.text
    for _ in range(2):
        text = fetch(stack, s, "fwd.txt")
        assert "app=app1\n end" in text, text


# One connection, the address changing back and forth: the connection's own,
# a realip one, the same text again (another allocation), another one.
ADDRS = ["192.0.2.41", None, "192.0.2.41", "192.0.2.42", None, None]


def expected(ip):
    return ip or "127.0.0.1"


@pytest.mark.parametrize("http2", [False, True], ids=["http1", "http2"])
def test_deny_lines_name_each_requests_address_on_one_connection(stack, pki, http2):
    register(stack.r, pki.leaf_other, "app1")
    before = len(stack.server.read_log())
    if http2:
        c, k = files_for(stack, pki.leaf)
        cmd = ["curl", "-s", "--cacert", stack.server_ca, "--max-time", "10", "--http2"]
        for i, ip in enumerate(ADDRS):
            if i:
                cmd.append("--next")
            cmd += ["--http2", "--cacert", stack.server_ca, "--cert", c, "--key", k,
                    "-o", "/dev/null", "-w", "%{http_code} %{num_connects}\\n"]
            if ip:
                cmd += ["-H", "X-Real-IP: " + ip]
            cmd.append(stack.server.url("/r8a/s.txt"))
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.split()
        assert out[0::2] == ["403"] * len(ADDRS), out
        assert out[1::2] == ["1"] + ["0"] * (len(ADDRS) - 1), out     # one connection
    else:
        s = session(stack, pki.leaf)
        for ip in ADDRS:
            resp = s.get(stack.server.url("/r8a/s.txt"),
                         headers={"X-Real-IP": ip} if ip else {}, timeout=10)
            assert resp.status_code == 403
    log = stack.server.read_log()[before:]
    clients = re.findall(r"CG01001: deny reason=unregistered .*?client=([^,\s]+)", log)
    assert clients == [expected(ip) for ip in ADDRS], log[-3000:]


def test_usage_names_each_requests_address_on_one_connection(stack, pki):
    # Allowed within one second from the connection's entry (the memo, whose
    # usage hint skips comparing an unchanged address): the address written is
    # the last request's, also when only its address changed.
    reg_id = register(stack.r, pki.leaf, "app1", reg_id="r8-usage")
    s = session(stack, pki.leaf)
    total = 0
    for burst in ([None] * 4 + ["192.0.2.41"], ["192.0.2.41"] * 4 + [None],
                  [None] * 4 + ["192.0.2.42"]):
        for ip in burst:
            resp = s.get(stack.server.url("/r8a/s.txt"),
                         headers={"X-Real-IP": ip} if ip else {}, timeout=10)
            assert resp.status_code == 200
        total += len(burst)
        usage = usage_when_counted(stack, reg_id, total)
        assert usage.get(b"count") == str(total).encode(), usage
        assert usage.get(b"last_ip") == expected(burst[-1]).encode(), (burst, usage)


@pytest.mark.parametrize("http2", [False, True], ids=["http1", "http2"])
def test_page_abandoned_while_two_includes_wait_for_redis(stack, pki, http2):
    # The client leaves while both subrequests' lookups are in flight (an
    # HTTP/2 stream is reset, its pool freed): nothing may resume into freed
    # state; the worker keeps serving (a crash fails the module's teardown).
    register(stack.r, pki.leaf, "app1")
    c, k = files_for(stack, pki.leaf)
    before = len(stack.server.read_log())
    stack.redis.pause()
    try:
        subprocess.run(["curl", "-s", "-o", "/dev/null", "--cacert", stack.server_ca,
                        "--max-time", "0.3", "--http2" if http2 else "--http1.1",
                        "--cert", c, "--key", k, stack.server.url("/r8open/two.txt")],
                       capture_output=True, timeout=30)
        time.sleep(0.2)
    finally:
        stack.redis.resume()
    time.sleep(1.2)         # past the lookups' timeout
    text = fetch(stack, session(stack, pki.leaf), "two.txt")
    assert SECRET_A in text and SECRET_B in text, text
    log = stack.server.read_log()[before:]
    assert "exited on signal" not in log and "[alert]" not in log, log[-3000:]


@pytest.mark.parametrize("slow", [False, True], ids=["lookup", "redis-stopped-briefly"])
def test_auth_request_into_gated_location_waits_for_its_lookup(stack, pki, slow):
    # The auth subrequest waits for Redis in its rewrite phase (NGX_DONE); its
    # answer resumes it, its end resumes the main request's access phase.
    register(stack.r, pki.leaf, "app1")
    for cert, want in ((pki.leaf_other, 403), (pki.leaf, 200)):
        if slow:
            stack.redis.pause()
            timer = threading.Timer(0.3, stack.redis.resume)
            timer.start()
        try:
            resp = session(stack, cert).get(stack.server.url("/r8auth/s.txt"), timeout=6)
        finally:
            if slow:
                timer.join()
                stack.redis.resume()
        assert resp.status_code == want, resp.text
        assert (SECRET_A in resp.text) == (want == 200), resp.text


@pytest.mark.parametrize("cert", ["registered", "unregistered"])
def test_add_before_and_after_body_of_gated_locations(stack, pki, cert):
    # Two subrequests of one page (addition filter), each decided on its own,
    # the first ones with a lookup each.
    register(stack.r, pki.leaf, "app1")
    s = session(stack, pki.leaf if cert == "registered" else pki.leaf_other)
    for _ in range(2):
        resp = s.get(stack.server.url("/r8add/s.txt"), timeout=6)
        assert resp.status_code == 200 and "page\n" in resp.text, resp.text
        assert (SECRET_A in resp.text, SECRET_B in resp.text) == (
            (True, True) if cert == "registered" else (False, False)), resp.text


def test_deny_lines_after_a_lookup_name_their_subrequest(stack, pki):
    # Both includes wait for Redis; each one's deny line, logged when its
    # answer resumes it, names that subrequest (not the last one to run).
    register(stack.r, pki.leaf, "app1")
    before = len(stack.server.read_log())
    fetch(stack, session(stack, pki.leaf_other), "two.txt")
    log = stack.server.read_log()[before:]
    subs = re.findall(r'CG01001: deny reason=unregistered .*subrequest: "([^"]+)"', log)
    assert sorted(subs) == ["/r8a/s.txt", "/r8b/x"], log[-3000:]
