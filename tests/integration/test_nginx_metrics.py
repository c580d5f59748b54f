"""certgate_metrics on nginx: the workers' counters in shared memory, one scrape
sees them all; the text is Prometheus exposition; the series are httpd's."""
import os
import re
import signal
import threading
import time

import pytest
import requests

import harness
from admin import seed
from clients import get, reason_of
from conftest import Stack
from harness import flush_store, register
from pki import make_cert

GATED = "/gated/ok.txt"
NGX_METRICS = "location = /metrics { certgate_metrics; }"
# Which worker answered: the access log of the test says it.
PID_LOG = ("log_format pids '$pid $status $certgate_reason $uri';\n"
           "    access_log {work}/logs/pids.log pids;")
HTTPD_METRICS = '<Location "/metrics">\n    SetHandler certgate-metrics\n  </Location>'


@pytest.fixture(scope="module")
def nginx(pki):
    # A generous lookup timeout: 2 shared cores under load must not turn lookups into 503s.
    s = Stack(pki, server="nginx", nginx_args={"workers": 2, "extra_server": NGX_METRICS,
                                               "extra_http": PID_LOG, "timeout_ms": 2000})
    yield s
    s.close()


@pytest.fixture(autouse=True)
def clean(nginx):
    flush_store(nginx.r)
    seed(nginx.r)


def scrape_text(stack):
    resp = requests.get(stack.server.url("/metrics"), verify=stack.server_ca, timeout=10)
    assert resp.status_code == 200, resp.text
    assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return resp.text


def samples(text):
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
SAMPLE = re.compile(r"^(%s)(\{%s(?:,%s)*\})? (-?[0-9.e+]+|\+Inf|-Inf|NaN)$" % (NAME, LABEL, LABEL))
SUFFIXES = {"histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count", "")}


def check_exposition(text):
    """The text format 0.0.4, strictly: each family one HELP and one TYPE before its
    samples, its samples together, valid names, labels and values, no duplicate series."""
    assert text.endswith("\n")
    types, helps, seen, done = {}, set(), set(), set()
    current = None
    for line in text.splitlines():
        assert line, "empty line"
        if line.startswith("# HELP "):
            name = line.split(" ", 3)[2]
            assert re.fullmatch(NAME, name) and name not in helps, line
            helps.add(name)
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped"), line
            assert name not in types and name in helps, line
            types[name] = kind
            if current is not None:
                done.add(current)
            current = name
            continue
        assert not line.startswith("#"), line
        m = SAMPLE.match(line)
        assert m, "not a sample line: %r" % line
        name = m.group(1)
        family = name
        for suffix in SUFFIXES.get(types.get(current), ()):
            if suffix and name == current + suffix:
                family = current
        assert family == current and family not in done, "sample outside its family: " + line
        key = (name, m.group(2) or "")
        assert key not in seen, "duplicate series: " + line
        seen.add(key)
    assert types and helps == set(types)
    return seen


def test_all_workers_counted_on_one_scrape(nginx, pki):
    register(nginx.r, pki.leaf, "app1")
    m0 = samples(scrape_text(nginx))
    pid_log = os.path.join(nginx.work, "logs", "pids.log")
    # Each answer's decision, as the client saw it.
    sent = {}
    lock = threading.Lock()

    def one(cert):
        # A new connection each: nginx hands them to either worker.
        resp = get(nginx, GATED, cert)
        reason = "allow" if resp.status_code == 200 else reason_of(resp)
        with lock:
            sent[reason] = sent.get(reason, 0) + 1

    # Until both workers answered some gated requests.
    for _ in range(20):
        threads = [threading.Thread(target=one, args=(c,)) for c in [pki.leaf, pki.leaf_other] * 4]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        time.sleep(0.1)
        pids = {l.split()[0] for l in open(pid_log) if GATED in l}
        if len(pids) >= 2:
            break
    assert len(pids) >= 2, "the requests never reached both workers"
    assert harness.wait_for_line(pid_log, GATED)
    m1 = samples(scrape_text(nginx))
    assert sent.get("allow", 0) > 0 and sent.get("unregistered", 0) > 0, sent
    counted = {}
    for k in m1:
        m = re.match(r'certgate_decisions_total\{result="\w+",reason="(\w+)"\}', k)
        if m and m1[k] - m0.get(k, 0):
            counted[m.group(1)] = m1[k] - m0.get(k, 0)
    assert counted == sent
    allow = 'certgate_decisions_total{result="allow",reason="allow"}'
    lookups = sum(m1[k] - m0.get(k, 0) for k in m1 if k.startswith("certgate_cache_lookups_total"))
    assert lookups == sum(sent.values())
    # Each worker asked Redis at least once (its own cache was empty).
    ok = 'certgate_redis_lookups_total{outcome="ok"}'
    assert m1[ok] - m0.get(ok, 0) >= 2
    # Scrapes answered by either worker agree on the totals.
    for _ in range(4):
        assert samples(scrape_text(nginx))[allow] == m1[allow]


def test_registration_counts_and_store_up(nginx, pki):
    register(nginx.r, pki.leaf, "app1")
    register(nginx.r, pki.leaf_b, "app1", status="PENDING")
    register(nginx.r, make_cert("soon-ngx", issuer=pki.inter, days=20), "app2")
    m = samples(scrape_text(nginx))
    assert m["certgate_store_up"] == 1
    assert m['certgate_registrations{status="APPROVED"}'] == 2
    assert m['certgate_registrations{status="PENDING"}'] == 1
    assert m['certgate_certificates_expiring{within_days="30"}'] == 1
    assert m['certgate_build_info{version="%s"}' % build_version()] == 1


def build_version():
    text = open(os.path.join(harness.ROOT, "src", "cg_version.h")).read()
    return re.search(r'#define CG_VERSION "([^"]+)"', text).group(1)


def test_exposition_parses(nginx, pki):
    register(nginx.r, pki.leaf, "app1")
    get(nginx, GATED, pki.leaf)
    text = scrape_text(nginx)
    series = check_exposition(text)
    assert ("certgate_store_up", "") in series


def test_scrape_does_not_block_the_worker(pki):
    # One worker: while a scrape waits for a Redis that does not answer, the
    # same worker still serves other requests at once (the Redis part runs in a
    # thread pool), and the scrape ends with certgate_store_up 0.
    s = Stack(pki, server="nginx", nginx_args={"workers": 1, "extra_server": NGX_METRICS})
    try:
        s.redis.pause()
        out = {}

        def scrape():
            t0 = time.monotonic()
            out["text"] = scrape_text(s)
            out["end"] = time.monotonic()
            out["took"] = out["end"] - t0

        t = threading.Thread(target=scrape)
        t.start()
        time.sleep(0.3)
        resp = get(s, "/open/ok.txt")
        static_end = time.monotonic()
        t.join(timeout=20)
        s.redis.resume()
        assert resp.status_code == 200
        assert "took" in out
        # The scrape waited for the admin timeout (2 s); the static file, served by
        # the same worker, did not wait for it (a blocked worker answers it after).
        assert out["took"] >= 1.5, out["took"]
        assert static_end < out["end"] - 0.5, (out["end"] - static_end)
        m = samples(out["text"])
        assert m["certgate_store_up"] == 0
        assert m['certgate_store_scrape_error{kind="timeout"}'] == 1
        assert "CG08005" in s.server.read_log()
    finally:
        s.close()


def test_same_series_as_httpd(nginx, pki):
    """The same requests on both servers give the same set of series."""
    h = Stack(pki, extra_vhost=HTTPD_METRICS)
    try:
        flush_store(h.r)
        seed(h.r)
        series = []
        for stack in (h, nginx):
            register(stack.r, pki.leaf, "app1")
            register(stack.r, pki.leaf_b, "app1", status="PENDING")
            assert get(stack, GATED, pki.leaf).status_code == 200
            assert reason_of(get(stack, GATED, pki.leaf_other)) == "unregistered"
            assert reason_of(get(stack, GATED, pki.leaf_b)) == "pending"
            series.append(check_exposition(scrape_text(stack)))
        names = [{n for n, _ in s} for s in series]
        assert names[0] == names[1], names[0] ^ names[1]
        assert series[0] == series[1], series[0] ^ series[1]
    finally:
        h.close()


def test_metrics_directive_needs_its_own_location():
    from test_directive_errors import nginx_t
    code, err, conf, line = nginx_t("server { listen 127.0.0.1:1; location /m { "
                                    "proxy_pass http://127.0.0.1:1; certgate_metrics; } }")
    assert code != 0
    assert "CG04030: certgate_metrics" in err and " in %s:%d" % (conf, line) in err, err
    code, err, conf, line = nginx_t("certgate_metrics;")
    assert code != 0
    assert '"certgate_metrics" directive is not allowed here' in err, err


def test_counters_survive_a_reload(pki):
    s = Stack(pki, server="nginx", nginx_args={"workers": 2, "extra_server": NGX_METRICS,
                                               "timeout_ms": 2000})
    try:
        register(s.r, pki.leaf, "app1")
        for _ in range(3):
            assert get(s, GATED, pki.leaf).status_code == 200
        allow = 'certgate_decisions_total{result="allow",reason="allow"}'
        before = samples(scrape_text(s))[allow]
        assert before == 3
        os.kill(s.server.proc.pid, signal.SIGHUP)
        assert harness.wait_for_line(s.server.error_log, "reconfiguring")
        time.sleep(1.0)
        assert get(s, GATED, pki.leaf).status_code == 200
        assert samples(scrape_text(s))[allow] == before + 1
    finally:
        s.close()
