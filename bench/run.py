#!/usr/bin/python3
"""make bench: mod_certgate against plain mod_ssl, in one run, on this machine.

Starts one redis-server and one apache2 with three virtual hosts serving the
same file with the same mTLS setup:
  (a) mod_ssl only (SSLVerifyClient optional_no_ca), no certgate;
  (b) certgate with its caches;
  (c) certgate with CertGateCache Off (a Redis lookup per request).
wrk presents the client certificate through bench/wrk_client_cert.c
(LD_PRELOAD). Runs alternate a, b, c and repeat; the median counts.
Every response must be 200: non-2xx are counted and shown, never speed.

Then the same for nginx (ngx_http_certgate_module) against plain nginx mTLS,
and a revocation run where httpd's admin API writes and nginx refuses: one
Redis serves both.

Wall-clock figures on a shared 2-core machine swing by tens of percent from
round to round: they are shown with the spread of the per-round ratios and
never decide a target. The targets are decided by instructions per request
under callgrind (bench/callgrind.py), which do not depend on the load: a0
(module not loaded), a (loaded, no gate), b (gate with caches). Last, the
admin upload rate (bench/upload_rate.py).
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

import requests  # noqa: E402

import callgrind  # noqa: E402
import harness  # noqa: E402
import upload_rate  # noqa: E402
from pki import PKI, make_cert  # noqa: E402

SHIM = os.path.join(ROOT, "build", "wrk_client_cert.so")
CONF = """
ServerRoot "{work}"
ServerName localhost
PidFile "{work}/run/httpd.pid"
DefaultRuntimeDir "{work}/run"
ErrorLog "{work}/logs/error.log"
LogLevel warn
{user}
LoadModule mpm_event_module {moddir}/mod_mpm_event.so
LoadModule authz_core_module {moddir}/mod_authz_core.so
LoadModule ssl_module {moddir}/mod_ssl.so
LoadModule socache_shmcb_module {moddir}/mod_socache_shmcb.so
LoadModule auth_basic_module {moddir}/mod_auth_basic.so
LoadModule authn_core_module {moddir}/mod_authn_core.so
LoadModule authn_file_module {moddir}/mod_authn_file.so
LoadModule authz_user_module {moddir}/mod_authz_user.so
LoadModule certgate_module {module}
KeepAliveTimeout 30
MaxKeepAliveRequests 0
CertGateRedis 127.0.0.1:{redis_port}
CertGateRedisAuth {redis_password}
CertGateRedisDB {redis_db}
SSLSessionCache "shmcb:{work}/run/ssl_scache(512000)"
{vhosts}
"""
VHOST = """
Listen 127.0.0.1:{port} https
<VirtualHost 127.0.0.1:{port}>
  ServerName localhost
  DocumentRoot "{work}/htdocs"
  SSLEngine on
  SSLCertificateFile "{work}/pki/server.pem"
  SSLCertificateKeyFile "{work}/pki/server.key"
  SSLVerifyClient optional_no_ca
  SSLVerifyDepth 5
  {extra}
  <Directory "{work}/htdocs">
    Require all granted
  </Directory>
</VirtualHost>
"""
GATE = """
  <Location "/bench/">
    CertGate On
  </Location>
"""
# The admin API has its own vhost, so (b) differs from (a) by the gate alone.
ADMIN = """
  <Location "/admin">
    SetHandler certgate-admin
    AuthType Basic
    AuthName bench
    AuthBasicProvider file
    AuthUserFile "{work}/admin.htpasswd"
    Require valid-user
    CertGateAdminRole manager manager
  </Location>
"""

NGINX_CONF = """
load_module {module};
daemon off;
worker_processes {workers};
pid {work}/run/{name}.pid;
error_log {work}/logs/{name}-error.log warn;
{user}
events {{ worker_connections 1024; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 30s;
    types {{ text/plain txt; }}
    client_body_temp_path {work}/run/body;
    proxy_temp_path {work}/run/proxy;
    fastcgi_temp_path {work}/run/fastcgi;
    uwsgi_temp_path {work}/run/uwsgi;
    scgi_temp_path {work}/run/scgi;
    certgate_redis 127.0.0.1:{redis_port};
    certgate_redis_auth {redis_password};
    certgate_redis_db {redis_db};
    {servers}
}}
"""
NGINX_SERVER = """
    server {{
        listen 127.0.0.1:{port} ssl;
        root {work}/htdocs;
        ssl_certificate {work}/pki/server.pem;
        ssl_certificate_key {work}/pki/server.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_verify_client optional_no_ca;
        ssl_verify_depth 5;
        {extra}
    }}
"""


def wrk(url, cert, key, seconds, handshake, cpu=None):
    env = dict(os.environ, LD_PRELOAD=SHIM, CERTGATE_BENCH_CERT=cert, CERTGATE_BENCH_KEY=key)
    cmd = (["taskset", "-c", cpu] if cpu else []) + \
        ["wrk", "-t2", "-c8", "-d%ds" % seconds, "--latency", "--timeout", "5s"]
    if handshake:
        env["CERTGATE_BENCH_NO_TICKETS"] = "1"
        cmd += ["-H", "Connection: close"]
    out = subprocess.run(cmd + [url], env=env, capture_output=True, text=True,
                         timeout=seconds + 60)
    text = out.stdout + out.stderr
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    total = re.search(r"(\d+) requests in", text)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)

    def pct(p):
        mm = re.search(r"^\s+%s%%\s+([\d.]+)(us|ms|s)" % p, text, re.M)
        if not mm:
            return float("nan")
        v = float(mm.group(1))
        return v / 1000 if mm.group(2) == "us" else v * 1000 if mm.group(2) == "s" else v
    if not m or not total:
        raise RuntimeError("wrk failed: " + text[-2000:])
    return {"rps": float(m.group(1)), "requests": int(total.group(1)),
            "non2xx": int(non2xx.group(1)) if non2xx else 0,
            "sockerr": sum(int(x) for x in errors.groups()) if errors else 0,
            "p50": pct(50), "p99": pct(99)}


def redis_calls(r):
    stats = r.info("commandstats")
    return sum(v["calls"] for k, v in stats.items() if k not in ("cmdstat_info",))


def httpd_rss_kb(pidfile):
    parent = int(open(pidfile).read())
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            stat = open("/proc/%s/stat" % pid).read().split()
            if int(pid) == parent or int(stat[3]) == parent:
                for line in open("/proc/%s/status" % pid):
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except (OSError, IndexError):
            continue
    return total


def httpd_cpu_seconds(pidfile):
    """utime+stime of the httpd parent and its children (alive ones)."""
    parent = int(open(pidfile).read())
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            stat = open("/proc/%s/stat" % pid).read()
            fields = stat[stat.rindex(")") + 2:].split()
            if int(pid) == parent or int(fields[1]) == parent:
                total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            continue
    return total / tick


def load_registrations(r, n, keep):
    """n registrations (the bench certificate among them), pipelined."""
    r.flushdb()
    harness.register(r, keep, "bench-app")
    pipe = r.pipeline(transaction=False)
    for i in range(n - 1):
        fp = "%064x" % (i + 1)
        rid = "scale-%d" % i
        pipe.hset("certgate:reg:" + rid, mapping={
            "id": rid, "app_id": "app-%d" % (i % 1000), "status": "APPROVED", "fingerprint": fp,
            "chain": "", "valid_from": "0", "valid_to": "4000000000"})
        pipe.set("certgate:fp:" + fp, rid)
        if i % 1000 == 999:
            pipe.execute()
    pipe.execute()
    r.publish("certgate:invalidate", "flush")
    time.sleep(0.2)


def fmt_row(cols, widths):
    return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cols, widths)) + " |"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=int, default=3, help="per measurement")
    ap.add_argument("--rounds", type=int, default=10, help="alternating rounds of a, b, c")
    ap.add_argument("--revocations", type=int, default=20)
    ap.add_argument("--uploads", type=int, default=200, help="timed POST /certs per round")
    ap.add_argument("--upload-rounds", type=int, default=5, help="rounds of uploads per store size")
    ap.add_argument("--quick", action="store_true", help="short run, for a smoke test")
    callgrind.add_args(ap)
    args = ap.parse_args()
    callgrind.split_args(args)
    if args.quick:
        args.seconds, args.rounds, args.revocations = 2, 1, 3
        args.n_keepalive, args.n_handshake, args.uploads = 50, 3, 20
        args.repeat_keepalive = 1

    from conftest import make_workdir
    work = make_workdir()
    pki = PKI()
    pki_dir = os.path.join(work, "pki")
    pki.server.write(pki_dir, "server", send_chain=[])
    server_ca = pki.server_ca.write(pki_dir, "server-ca")[0]
    cert, key = pki.leaf.write(pki_dir, "bench-client")
    for d in ("run", "logs", "htdocs/bench"):
        os.makedirs(os.path.join(work, d), exist_ok=True)
    os.chmod(os.path.join(work, "htdocs"), 0o755)
    os.chmod(os.path.join(work, "htdocs", "bench"), 0o755)
    with open(os.path.join(work, "htdocs", "bench", "ok.txt"), "w") as f:
        f.write("ok\n")
    subprocess.run(["htpasswd", "-cb", os.path.join(work, "admin.htpasswd"), "manager", "bench-pw"],
                   check=True, capture_output=True)
    os.chmod(os.path.join(work, "admin.htpasswd"), 0o644)

    redis = harness.Redis(work).start()
    r = redis.client()
    ports = {k: harness.free_port() for k in "abc"}
    admin_port = harness.free_port()
    vhosts = (VHOST.format(port=ports["a"], work=work, extra="") +
              VHOST.format(port=ports["b"], work=work, extra=GATE) +
              VHOST.format(port=ports["c"], work=work, extra="CertGateCache Off\n" + GATE) +
              VHOST.format(port=admin_port, work=work, extra=ADMIN.format(work=work)))
    conf = os.path.join(work, "bench.conf")
    with open(conf, "w") as f:
        f.write(CONF.format(work=work, moddir=harness.MODDIR, module=harness.MODULE,
                            user="User www-data\nGroup www-data" if os.geteuid() == 0 else "",
                            redis_port=redis.port, redis_password=harness.Redis.PASSWORD,
                            redis_db=harness.Redis.DB, vhosts=vhosts))
    # The server on CPU 0 and wrk on CPU 1 (taskset), for httpd as for nginx:
    # unpinned, the two compete for both cores and single runs swing by +-15 %,
    # more than the cost being measured.
    httpd = subprocess.Popen(["taskset", "-c", "0", harness.APACHE, "-f", conf, "-DFOREGROUND"])
    try:
        for p in list(ports.values()) + [admin_port]:
            harness.wait_port(p, httpd)
        time.sleep(0.5)
        url = {k: "https://localhost:%d/bench/ok.txt" % p for k, p in ports.items()}
        harness.register(r, pki.leaf, "bench-app")
        for k in "abc":   # every configuration answers 200 before we measure
            resp = requests.get(url[k], cert=(cert, key), verify=server_ca, timeout=10)
            assert resp.status_code == 200, (k, resp.status_code, resp.text)
        results = run_matrix(args, url, cert, key, r,
                             dict.fromkeys("abc", os.path.join(work, "run", "httpd.pid")),
                             wrk_cpu="1")
        scale = run_scale(args, url, cert, key, r, pki, os.path.join(work, "run", "httpd.pid"))
        revo = run_revocation(args, url["b"], admin_port, r, pki, pki_dir, server_ca, cert, key)
        ngx = run_nginx(args, work, redis, r, pki, pki_dir, server_ca, cert, key, admin_port)
        print("callgrind (instructions per request):", flush=True)
        ir = callgrind.measure(work, redis, r, pki, args)
        print("admin upload rate:", flush=True)
        uploads = upload_rate.measure(pki, (1000, 10000), args.uploads,
                                      1 if args.quick else args.upload_rounds)
        report(args, results, scale, revo, ngx, ir, uploads)
    finally:
        harness.stop_pid(httpd)
        redis.stop()
        subprocess.run(["rm", "-rf", work])


def run_nginx(args, work, redis, r, pki, pki_dir, server_ca, cert, key, admin_port):
    """Plain nginx mTLS (a) against nginx + certgate with (b) and without (c) caches.
    The cache is a per-worker (http-level) setting, so (c) is a second nginx."""
    ports = {k: harness.free_port() for k in "abc"}
    gate = "location /bench/ { certgate on; }"
    procs = []
    try:
        for name, servers, extra in (
                ("nginx-ab", NGINX_SERVER.format(port=ports["a"], work=work, extra="") +
                 NGINX_SERVER.format(port=ports["b"], work=work, extra=gate), ""),
                ("nginx-c", NGINX_SERVER.format(port=ports["c"], work=work, extra=gate),
                 "certgate_cache off;")):
            conf = os.path.join(work, name + ".conf")
            with open(conf, "w") as f:
                f.write(NGINX_CONF.format(workers=1, work=work, name=name,
                                          module=harness.NGX_MODULE,
                                          user="user www-data;" if os.geteuid() == 0 else "",
                                          redis_port=redis.port,
                                          redis_password=harness.Redis.PASSWORD,
                                          redis_db=harness.Redis.DB, servers=extra + servers))
            # One worker on CPU 0 and wrk on CPU 1, as for httpd.
            procs.append(subprocess.Popen(["taskset", "-c", "0", harness.NGINX, "-c", conf,
                                           "-p", work]))
        for k, p in ports.items():
            harness.wait_port(p, procs[0] if k in "ab" else procs[1])
        time.sleep(0.5)
        url = {k: "https://localhost:%d/bench/ok.txt" % p for k, p in ports.items()}
        harness.register(r, pki.leaf, "bench-app")
        for k in "abc":
            resp = requests.get(url[k], cert=(cert, key), verify=server_ca, timeout=10)
            assert resp.status_code == 200, ("nginx", k, resp.status_code, resp.text)
        print("nginx:", flush=True)
        pid = {k: os.path.join(work, "run", "nginx-%s.pid" % ("ab" if k in "ab" else "c"))
               for k in "abc"}
        results = run_matrix(args, url, cert, key, r, pid, wrk_cpu="1")
        revo = run_revocation(args, url["b"], admin_port, r, pki, pki_dir, server_ca, cert, key)
        return results, revo
    finally:
        for p in procs:
            harness.stop_pid(p)


def run_matrix(args, url, cert, key, r, pidfiles, wrk_cpu=None):
    """Rounds alternate the order (a b c, then c b a) so drift and position cancel;
    the ratio reported is the median of the per-round ratios b/a and c/a.
    pidfiles: the server process serving each configuration."""
    results = {}
    for mode in ("keepalive", "handshake"):
        runs = {k: [] for k in "abc"}
        for rnd in range(args.rounds):
            for k in ("abc" if rnd % 2 == 0 else "cba"):
                before = redis_calls(r)
                cpu = httpd_cpu_seconds(pidfiles[k])
                res = wrk(url[k], cert, key, args.seconds, mode == "handshake", wrk_cpu)
                res["cpu_us"] = (httpd_cpu_seconds(pidfiles[k]) - cpu) * 1e6 / \
                    max(res["requests"], 1)
                res["redis_per_req"] = (redis_calls(r) - before) / max(res["requests"], 1)
                res["rss_kb"] = httpd_rss_kb(pidfiles[k])
                runs[k].append(res)
                print("  %-9s %s: %8.0f req/s  p50 %.2f ms  p99 %.2f ms  non-2xx %d  redis/req %.4f"
                      "  httpd CPU %.0f us/req"
                      % (mode, k, res["rps"], res["p50"], res["p99"], res["non2xx"],
                         res["redis_per_req"], res["cpu_us"]), flush=True)
        for k in "abc":
            med = dict(sorted(runs[k], key=lambda x: x["rps"])[len(runs[k]) // 2])
            med["non2xx"] = sum(x["non2xx"] for x in runs[k])
            med["sockerr"] = sum(x["sockerr"] for x in runs[k])
            med["ratio"] = statistics.median(x["rps"] / a["rps"] for x, a in zip(runs[k], runs["a"]))
            med["cpu_us"] = statistics.median(x["cpu_us"] for x in runs[k])
            med["ratios"] = [x["rps"] / a["rps"] for x, a in zip(runs[k], runs["a"])]
            med["redis_per_req"] = sum(x["redis_per_req"] * x["requests"] for x in runs[k]) / \
                max(1, sum(x["requests"] for x in runs[k]))
            results[(mode, k)] = med
    return results


def run_scale(args, url, cert, key, r, pki, pidfile):
    out = []
    for n in (10, 10000, 100000):
        load_registrations(r, n, pki.leaf)
        row = {"n": n, "redis_mb": r.info("memory")["used_memory"] / 1e6}
        for k in "bc":
            cpu = httpd_cpu_seconds(pidfile)
            res = wrk(url[k], cert, key, max(2, args.seconds - 1), False, cpu="1")
            res["cpu_us"] = (httpd_cpu_seconds(pidfile) - cpu) * 1e6 / max(res["requests"], 1)
            row[k] = res
        print("  scale %6d: b %8.0f req/s  c %8.0f req/s  (non-2xx %d/%d)" %
              (n, row["b"]["rps"], row["c"]["rps"], row["b"]["non2xx"], row["c"]["non2xx"]),
              flush=True)
        out.append(row)
    load_registrations(r, 10, pki.leaf)
    return out


def run_revocation(args, gate_url, admin_port, r, pki, pki_dir, server_ca, cert, key):
    """Under keep-alive load, inactivate a certificate held by a live connection
    (through httpd's admin API) and time the first 403 on that connection."""
    env = dict(os.environ, LD_PRELOAD=SHIM, CERTGATE_BENCH_CERT=cert, CERTGATE_BENCH_KEY=key)
    load = subprocess.Popen(["wrk", "-t1", "-c4", "-d%ds" % (args.revocations * 3 + 10), gate_url],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    times = []
    try:
        for i in range(args.revocations):
            c = make_cert("revoke-%d" % i, issuer=pki.inter)
            files = c.write(pki_dir, "revoke-%d" % i)
            rid = harness.register(r, c, "bench-app")
            s = requests.Session()
            s.trust_env = False
            s.cert, s.verify = files, server_ca
            assert s.get(gate_url, timeout=5).status_code == 200
            stop = threading.Event()
            first = {}

            def client():
                while not stop.is_set():
                    code = s.get(gate_url, timeout=5).status_code
                    if code == 403 and "t" not in first:
                        first["t"] = time.monotonic()
                        return
            th = threading.Thread(target=client)
            th.start()
            time.sleep(0.2)
            t0 = time.monotonic()
            resp = requests.post("https://localhost:%d/admin/certs/%s/inactivate" % (admin_port, rid),
                                 auth=("manager", "bench-pw"), json={"reason": "bench"},
                                 verify=server_ca, timeout=10)
            assert resp.status_code == 200, resp.text
            th.join(timeout=5)
            stop.set()
            if "t" not in first:
                times.append(float("inf"))
            else:
                times.append(first["t"] - t0)
            print("  revocation %2d via %s: %.1f ms" % (i + 1, gate_url, times[-1] * 1000),
                  flush=True)
    finally:
        load.terminate()
        load.wait()
    return times


def matrix_table(results, server):
    w = [10, 6, 9, 9, 9, 7, 13, 9, 11, 9]
    lines = [fmt_row(["mode", "config", "req/s", "p50 ms", "p99 ms", "ratio",
                      "%s CPU/req" % server, "non-2xx", "redis/req", "RSS MB"], w),
             "|" + "|".join("-" * (x + 2) for x in w) + "|"]
    ok = True
    for mode in ("keepalive", "handshake"):
        for k in "abc":
            res = results[(mode, k)]
            ok &= res["non2xx"] == 0 and res["sockerr"] == 0
            lines.append(fmt_row([mode, k, "%.0f" % res["rps"], "%.2f" % res["p50"],
                                  "%.2f" % res["p99"], "%.3f" % res["ratio"],
                                  "%.0f us" % res["cpu_us"],
                                  res["non2xx"] + res["sockerr"], "%.4f" % res["redis_per_req"],
                                  "%.1f" % (res["rss_kb"] / 1024)], w))
    return lines, ok


def revocation_line(revo, how):
    finite = [t for t in revo if t != float("inf")]
    return ("Revocation under load (%s, time to the first 403 on a live keep-alive connection, "
            "%d runs): p50 %.1f ms, max %s" %
            (how, len(revo), statistics.median(finite) * 1000 if finite else float("nan"),
             "%.1f ms" % (max(revo) * 1000) if finite and len(finite) == len(revo) else "never"))


def spread(xs):
    return "min %.3f / median %.3f / max %.3f" % (min(xs), statistics.median(xs), max(xs))


def targets(results, revo):
    rpr = results[("keepalive", "b")]["redis_per_req"]
    return ["Per-round b/a req/s ratios (%d rounds; wall clock on a shared machine: shown, "
            "never used to say met; see the instruction table):" %
            len(results[("keepalive", "b")]["ratios"]), "",
            "- keep-alive b/a: %s (rounds: %s)" % (
                spread(results[("keepalive", "b")]["ratios"]),
                " ".join("%.3f" % x for x in results[("keepalive", "b")]["ratios"])),
            "- handshake b/a: %s (rounds: %s)" % (
                spread(results[("handshake", "b")]["ratios"]),
                " ".join("%.3f" % x for x in results[("handshake", "b")]["ratios"])),
            "- keep-alive c/a: %s" % spread(results[("keepalive", "c")]["ratios"]),
            "", "Other targets:", "",
            "- revocation max <= 1 s: %s" % ("met" if revo and max(revo) <= 1.0 else "MISSED"),
            "- Redis commands per request in steady state < 0.01: %.5f %s" %
            (rpr, "met" if rpr < 0.01 else "MISSED")]


def report(args, results, scale, revo, ngx, ir, uploads):
    lines = ["# mod_certgate bench", "",
             "## Instructions per request (callgrind): the targets", "",
             "valgrind --tool=callgrind, one fresh server per figure and N (httpd -X, nginx "
             "without master), `ab -c 1` with the client certificate; each figure is "
             "(Ir for 2N requests - Ir for N) / N, counted inside the connection's and its "
             "requests' work only (httpd: ap_run_pre_connection, ap_run_process_connection; "
             "nginx: ngx_process_events_and_timers). a0: module not loaded; a: loaded, Redis "
             "configured, no gate; b: gate with caches. Every config has the same "
             "<Location \"/bench/\"> / location /bench/ block; only CertGate On / certgate on "
             "differs. Handshake: a full TLS 1.3 handshake per request (no session reuse). "
             "Counts do not depend on the machine's load.", ""]
    lines += callgrind.table(ir, args.servers, args.modes)
    lines += ["", "Targets (instructions):", ""] + callgrind.target_lines(ir, args.servers, args.modes)
    lines += callgrind.centres_lines(ir, args.servers, args.modes)
    lines += ["", "## Admin upload rate", "",
              "POST /certs as a developer, one certificate each, one keep-alive connection "
              "(Python's http.client, bodies encoded beforehand), "
              "on a fresh httpd + Redis with N registrations of the same app already stored "
              "(bench/upload_rate.py); rounds one after the other, each adding its uploads. "
              "Wall clock: met only if the slowest round meets the target. httpd CPU: user + "
              "system time of httpd's processes per upload (/proc), the median round.", ""]
    lines += upload_rate.lines(uploads)
    lines += ["", "## Wall clock (httpd)", "",
             "%s, 2 cores: httpd pinned to CPU 0, wrk to CPU 1 (taskset), Redis unpinned. "
             "wrk -t2 -c8 with the client certificate "
             "(LD_PRELOAD shim), %d s per run, %d rounds alternating a b c / c b a. req/s, p50, "
             "p99: the median run; ratio: the median of per-round ratios to (a). (a) mod_ssl "
             "only, (b) certgate with caches, (c) certgate, CertGateCache Off; the admin API "
             "the revocation run writes through has a vhost of its own. Handshake: "
             "'Connection: close' and no session reuse, a full TLS handshake per request."
             % (time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), args.seconds, args.rounds), ""]
    table, ok = matrix_table(results, "httpd")
    lines += table
    lines += ["", "Scale (keep-alive, N registrations in Redis):", "",
              "| registrations | b req/s | b httpd CPU/req | c req/s | c httpd CPU/req | redis MB |",
              "|---|---|---|---|---|---|"]
    for row in scale:
        lines.append("| %d | %.0f | %.0f us | %.0f | %.0f us | %.1f |" % (
            row["n"], row["b"]["rps"], row["b"]["cpu_us"], row["c"]["rps"], row["c"]["cpu_us"],
            row["redis_mb"]))
    flat = scale[-1]["b"]["cpu_us"] / scale[0]["b"]["cpu_us"]
    lines += ["", revocation_line(revo, "inactivate through the admin API"), ""]
    lines += targets(results, revo)
    lines += ["- flat from 10 to 100,000 registrations (b's httpd CPU per request, 100k / 10): "
              "%.3f" % flat,
              "- httpd CPU per request, b - a: keep-alive %+.0f us, handshake %+.0f us" % (
                  results[("keepalive", "b")]["cpu_us"] - results[("keepalive", "a")]["cpu_us"],
                  results[("handshake", "b")]["cpu_us"] - results[("handshake", "a")]["cpu_us"])]
    nres, nrevo = ngx
    ntable, nok = matrix_table(nres, "nginx")
    ok &= nok
    lines += ["", "## nginx", "",
              "The same runs against nginx 1.22: (a) plain nginx mTLS "
              "(ssl_verify_client optional_no_ca), (b) ngx_http_certgate_module with caches, "
              "(c) certgate_cache off (a second nginx: the cache is an http-level setting). "
              "One worker pinned to CPU 0, wrk to CPU 1. In handshake mode the client's own "
              "handshakes on its one core may bound the rate: read the CPU/req column there.",
              ""] + ntable
    lines += ["", revocation_line(nrevo, "inactivate through httpd's admin API, refused by "
                                  "nginx: one Redis serves both"), ""]
    lines += targets(nres, nrevo)
    lines += ["- nginx CPU per request, b - a: keep-alive %+.0f us, handshake %+.0f us" % (
                  nres[("keepalive", "b")]["cpu_us"] - nres[("keepalive", "a")]["cpu_us"],
                  nres[("handshake", "b")]["cpu_us"] - nres[("handshake", "a")]["cpu_us"]),
              "", "Every response 200 (httpd and nginx): %s" % ("yes" if ok else "NO (see non-2xx)")]
    text = "\n".join(lines) + "\n"
    print()
    print(text)
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "bench", "results", "latest.md"), "w") as f:
        f.write(text)
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
