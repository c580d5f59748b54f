#!/usr/bin/python3
"""Instructions per request under callgrind: the deterministic part of make bench.

For each server (httpd, nginx), mode (keep-alive, full handshake) and
configuration:
  a0  the certgate module not loaded;
  a   loaded and configured for Redis, no gate on the location;
  b   the gate on the location, caches on;
one fresh server runs under `valgrind --tool=callgrind` (httpd -X, nginx
without a master), `ab -c 1` sends N requests with the client certificate,
the server stops, and the total Ir is read. The same again with 2N requests;
(Ir(2N) - Ir(N)) / N is the cost of one request: start-up, the first request
(lazy connects, cache fill) and shut-down cancel out. Only a connection's and
its requests' work is counted (TOGGLE): threads that wake by the clock are not. Every config has the
same <Location "/bench/"> / location /bench/ block; only `CertGate On` /
`certgate on` differs. Instruction counts do not depend on the machine's
load, so one run is enough. Under valgrind a request takes milliseconds and
a handshake about a second: the Redis timeout is 60 s (nginx sets a lookup's timer from its cached clock, which a
slow handshake leaves seconds behind) and the cache max age
an hour, so the steady state (a cached registration) is what is counted.
The usage flush interval is an hour too: each request's usage record is
counted, the flush that wakes by the clock is not (nginx runs it on the
worker's event loop, inside what is counted).

  /usr/bin/python3 bench/callgrind.py [--servers httpd,nginx] [--modes keepalive,handshake]
      [--configs a0,a,b] [--n-keepalive 500] [--repeat-keepalive 3] [--n-handshake 50] [--centres]

CERTGATE_BENCH_KEEP=1 keeps the work directory and the callgrind files;
CERTGATE_BENCH_VALGRIND adds valgrind options (e.g. --dump-instr=yes).

--centres adds, for b, the inclusive instructions per request of the gate's
cost centres (callgrind_annotate), the before/after table of docs/performance.md.
"""
import argparse
import os
import pwd
import re
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

import harness  # noqa: E402

HTTPD = """
ServerRoot "{work}"
ServerName localhost
PidFile "{work}/run/{tag}.pid"
DefaultRuntimeDir "{work}/run"
ErrorLog "{work}/logs/{tag}.log"
LogLevel warn
LoadModule mpm_event_module {moddir}/mod_mpm_event.so
LoadModule authz_core_module {moddir}/mod_authz_core.so
LoadModule ssl_module {moddir}/mod_ssl.so
LoadModule socache_shmcb_module {moddir}/mod_socache_shmcb.so
{load}
KeepAliveTimeout 30
MaxKeepAliveRequests 0
SSLSessionCache "shmcb:{work}/run/{tag}-scache(512000)"
Listen 127.0.0.1:{port} https
<VirtualHost 127.0.0.1:{port}>
  ServerName localhost
  DocumentRoot "{work}/htdocs"
  SSLEngine on
  SSLCertificateFile "{work}/pki/server.pem"
  SSLCertificateKeyFile "{work}/pki/server.key"
  SSLVerifyClient optional_no_ca
  SSLVerifyDepth 5
  <Directory "{work}/htdocs">
    Require all granted
  </Directory>
  <Location "/bench/">
    Require all granted
{gate}  </Location>
</VirtualHost>
"""
HTTPD_LOAD = """LoadModule certgate_module {module}
CertGateRedis 127.0.0.1:{redis_port}
CertGateRedisAuth {redis_password}
CertGateRedisDB {redis_db}
CertGateRedisTimeout 60000
CertGateCacheMaxAge 3600
CertGateUsageFlushInterval 3600"""
HTTPD_GATE = "    CertGate On\n"

NGINX = """
{load}
daemon off;
master_process off;
worker_processes 1;
pid {work}/run/{tag}.pid;
error_log {work}/logs/{tag}.log warn;
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
    {redis}
    server {{
        listen 127.0.0.1:{port} ssl;
        root {work}/htdocs;
        ssl_certificate {work}/pki/server.pem;
        ssl_certificate_key {work}/pki/server.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_verify_client optional_no_ca;
        ssl_verify_depth 5;
        location /bench/ {{
            {gate}
        }}
    }}
}}
"""
NGINX_REDIS = ("certgate_redis 127.0.0.1:{redis_port}; certgate_redis_auth {redis_password}; "
               "certgate_redis_db {redis_db}; certgate_redis_timeout 60s; "
               "certgate_cache_max_age 3600; certgate_usage_flush_interval 3600;")

# Counted only inside these (and what they call): a connection's and its
# requests' work. Idle threads wake up by the clock (httpd's listener, the
# gate's usage flush and subscriber), so counting them would make a slower
# run look more expensive.
TOGGLE = {"httpd": ["ap_run_pre_connection", "ap_run_process_connection"],
          "nginx": ["ngx_process_events_and_timers"]}

# Inclusive cost centres shown with --centres (function names as callgrind sees them).
CENTRES = {
    "httpd": ["cg_fixups", "gate_fixups", "unset_matching", "cg_gate_run", "cg_gate_begin",
              "cg_conn_entry_ref", "cg_gate_decide", "cg_usage_hit", "cgh_merge_dir", "cg_handler",
              "cg_pre_handshake", "cg_tls_peer", "gen_ticket", "cg_fp_x509_cached", "X509_digest"],
    "nginx": ["cg_rewrite_handler", "cg_app_handler", "cg_gate", "cg_gate_begin",
              "cg_conn_entry_ref", "cg_gate_decide", "cg_usage_hit", "cg_kept", "cg_header_filter",
              "cg_tls_peer", "gen_ticket", "cg_fp_x509_cached", "X509_digest"],
}


def as_www_data():
    """As root, the server runs as www-data from the start: httpd would switch
    after callgrind opened its output file, and then could not write it."""
    pw = pwd.getpwnam("www-data")
    os.setgroups([])
    os.setgid(pw.pw_gid)
    os.setuid(pw.pw_uid)


def total_ir(path):
    with open(path) as f:
        for line in f:
            if line.startswith("summary:") or line.startswith("totals:"):
                return int(line.split()[1])
    raise RuntimeError("no totals in " + path)


def inclusive(path, names):
    """Inclusive Ir of each named function (all objects), from callgrind_annotate."""
    out = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--auto=no", "--threshold=100", path],
                         capture_output=True, text=True, check=True).stdout
    got = dict.fromkeys(names, 0)
    for line in out.splitlines():
        # "N (p%)  file:function [object]"; a function may be listed twice
        # (with and without its file): the larger figure is its inclusive cost.
        m = re.match(r"\s*([\d,]+)\s+(?:\([^)]*\)\s+)?\S*:(\w+)(?:\s|$)", line)
        if m and m.group(2) in got:
            got[m.group(2)] = max(got[m.group(2)], int(m.group(1).replace(",", "")))
    return got


class Bench:
    def __init__(self, work, redis, pem, args):
        self.work, self.redis, self.pem, self.args = work, redis, pem, args
        self.outdir = os.path.join(work, "callgrind")
        os.makedirs(self.outdir, exist_ok=True)
        os.chmod(self.outdir, 0o777)   # the servers run as www-data
        for d in ("run", "logs"):
            os.makedirs(os.path.join(work, d), exist_ok=True)
            os.chmod(os.path.join(work, d), 0o777)
        self.seq = 0

    def conf(self, server, cfg, port, tag):
        fmt = dict(work=self.work, tag=tag, port=port, moddir=harness.MODDIR,
                   module=harness.MODULE, redis_port=self.redis.port,
                   redis_password=harness.Redis.PASSWORD, redis_db=harness.Redis.DB)
        path = os.path.join(self.work, tag + ".conf")
        if server == "httpd":
            text = HTTPD.format(load=HTTPD_LOAD.format(**fmt) if cfg != "a0" else "",
                                gate=HTTPD_GATE if cfg == "b" else "", **fmt)
        else:
            text = NGINX.format(load="load_module %s;" % harness.NGX_MODULE if cfg != "a0" else "",
                                redis=NGINX_REDIS.format(**fmt) if cfg != "a0" else "",
                                gate="certgate on;" if cfg == "b" else "", **fmt)
        with open(path, "w") as f:
            f.write(text)
        return path

    def run(self, server, cfg, mode, n):
        """Total Ir of a fresh server that answered n requests; the out file's path."""
        self.seq += 1
        tag = "cg-%s-%s-%s-%d-%d" % (server, cfg, mode, n, self.seq)
        port = harness.free_port()
        conf = self.conf(server, cfg, port, tag)
        out = os.path.join(self.outdir, tag + ".out")
        vg = ["valgrind", "--tool=callgrind", "--callgrind-out-file=" + out] + \
            ["--toggle-collect=" + f for f in TOGGLE[server]] + \
            os.environ.get("CERTGATE_BENCH_VALGRIND", "").split()
        cmd = [harness.APACHE, "-X", "-f", conf] if server == "httpd" else \
            [harness.NGINX, "-c", conf, "-p", self.work]
        proc = subprocess.Popen(vg + cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                preexec_fn=as_www_data if os.geteuid() == 0 else None)
        try:
            harness.wait_port(port, proc, timeout=180)
            ab = ["ab", "-q", "-n", str(n), "-c", "1", "-E", self.pem]
            if mode == "keepalive":
                ab.append("-k")
            res = subprocess.run(ab + ["https://127.0.0.1:%d/bench/ok.txt" % port],
                                 capture_output=True, text=True, timeout=3600)
            text = res.stdout + res.stderr
            done = re.search(r"Complete requests:\s+(\d+)", text)
            failed = re.search(r"Failed requests:\s+(\d+)", text)
            if (res.returncode != 0 or not done or int(done.group(1)) != n or
                    int(failed.group(1)) != 0 or "Non-2xx" in text):
                raise RuntimeError("%s: ab failed or not all 200:\n%s" % (tag, text[-1500:]))
        finally:
            # Again until it goes: under valgrind a signal that lands just before
            # nginx blocks in epoll_wait (no timer left) is only seen at the next one.
            for _ in range(100):
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=3)
                    break
                except subprocess.TimeoutExpired:
                    continue
            else:
                proc.kill()
                proc.wait()
        return total_ir(out), out

    def per_request(self, server, cfg, mode, centres=False):
        n = self.args.n_keepalive if mode == "keepalive" else self.args.n_handshake
        # glibc malloc's state differs from one server start to the next and
        # moves a keep-alive figure by about ±40: the median of a few starts.
        repeat = self.args.repeat_keepalive if mode == "keepalive" else 1
        runs = []
        for _ in range(repeat):
            ir1, out1 = self.run(server, cfg, mode, n)
            ir2, out2 = self.run(server, cfg, mode, 2 * n)
            one = {"ir": (ir2 - ir1) / n}
            if centres:
                names = CENTRES[server]
                c1, c2 = inclusive(out1, names), inclusive(out2, names)
                one["centres"] = {k: (c2[k] - c1[k]) / n for k in names}
            if not os.environ.get("CERTGATE_BENCH_KEEP"):
                for p in (out1, out2):
                    os.unlink(p)
            runs.append(one)
        runs.sort(key=lambda x: x["ir"])
        res = dict(runs[len(runs) // 2], n=n, runs=[x["ir"] for x in runs])
        print("  callgrind %-5s %-9s %-2s: %12.0f instructions/request (N=%d; starts: %s)"
              % (server, mode, cfg, res["ir"], n, " ".join("%.0f" % x for x in res["runs"])),
              flush=True)
        return res


def measure(work, redis, r, pki, args):
    """{(server, mode, cfg): {"ir": ..., "n": ..., ["centres"]}}"""
    pem = os.path.join(work, "pki", "ab-client.pem")
    cert, key = pki.leaf.write(os.path.join(work, "pki"), "ab-leaf")
    with open(pem, "w") as f:
        f.write(open(cert).read() + open(key).read())
    harness.register(r, pki.leaf, "bench-app")
    b = Bench(work, redis, pem, args)
    out = {}
    for server in args.servers:
        for mode in args.modes:
            for cfg in args.configs:
                out[(server, mode, cfg)] = b.per_request(server, cfg, mode,
                                                         args.centres and cfg == "b")
    return out


TARGETS = {"keepalive": 2.0, "handshake": 0.5}


def table(res, servers, modes):
    lines = ["| server | mode | N | a0 | a | b | a - a0 | b - a0 | target b - a0 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for server in servers:
        for mode in modes:
            g = {c: res.get((server, mode, c)) for c in ("a0", "a", "b")}
            if any(v is None for v in g.values()):
                continue
            a0 = g["a0"]["ir"]

            def d(c):
                return "%+.0f (%+.2f %%)" % (g[c]["ir"] - a0, 100 * (g[c]["ir"] - a0) / a0)
            pct = 100 * (g["b"]["ir"] - a0) / a0
            t = TARGETS[mode]
            lines.append("| %s | %s | %d | %.0f | %.0f | %.0f | %s | %s | <= +%.1f %%: %s |" % (
                server, mode, g["a0"]["n"], a0, g["a"]["ir"], g["b"]["ir"], d("a"), d("b"), t,
                "met" if pct <= t else "%+.2f %%" % pct))
    starts = ["%s %s %s: %s" % (server, mode, c, " ".join("%.0f" % x for x in v["runs"]))
              for (server, mode, c), v in sorted(res.items()) if len(v.get("runs", [])) > 1]
    if starts:
        lines += ["", "Each figure above is the median of fresh server starts (glibc malloc's "
                  "state differs between starts); every start's figure: " + "; ".join(starts)
                  + "."]
    return lines


def target_lines(res, servers, modes):
    out = []
    for server in servers:
        for mode in modes:
            g = {c: res.get((server, mode, c)) for c in ("a0", "a", "b")}
            if any(v is None for v in g.values()):
                continue
            a0 = g["a0"]["ir"]
            pb = 100 * (g["b"]["ir"] - a0) / a0
            pa = 100 * (g["a"]["ir"] - a0) / a0
            out.append("- %s %s, instructions b - a0 <= +%.1f %%: %s" % (
                server, mode, TARGETS[mode], "met (%+.2f %%)" % pb if pb <= TARGETS[mode]
                else "%+.2f %% (not met)" % pb))
            # "about zero": within 0.1 % of a0.
            out.append("- %s %s, instructions a - a0 ~ 0 (within 0.1 %%): %s" % (
                server, mode, "met (%+.3f %%)" % pa if abs(pa) <= 0.1
                else "%+.3f %% (not met)" % pa))
    return out


def centres_lines(res, servers, modes):
    lines = []
    for server in servers:
        for mode in modes:
            g = res.get((server, mode, "b"))
            if not g or "centres" not in g:
                continue
            lines += ["", "%s %s, b: inclusive instructions per request" % (server, mode), "",
                      "| function | Ir/request |", "|---|---|"]
            lines += ["| %s | %.0f |" % (k, v) for k, v in g["centres"].items()]
    return lines


def add_args(ap):
    ap.add_argument("--servers", default="httpd,nginx")
    ap.add_argument("--modes", default="keepalive,handshake")
    ap.add_argument("--configs", default="a0,a,b")
    ap.add_argument("--n-keepalive", type=int, default=500)
    ap.add_argument("--repeat-keepalive", type=int, default=3,
                    help="fresh servers per keep-alive figure; the median is kept")
    ap.add_argument("--n-handshake", type=int, default=50)
    ap.add_argument("--centres", action="store_true")


def split_args(args):
    args.servers = args.servers.split(",")
    args.modes = args.modes.split(",")
    args.configs = args.configs.split(",")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_args(ap)
    args = ap.parse_args()
    split_args(args)
    from conftest import make_workdir
    from pki import PKI
    work = make_workdir()
    pki = PKI()
    pki_dir = os.path.join(work, "pki")
    pki.server.write(pki_dir, "server", send_chain=[])
    os.makedirs(os.path.join(work, "htdocs", "bench"))
    os.chmod(os.path.join(work, "htdocs"), 0o755)
    os.chmod(os.path.join(work, "htdocs", "bench"), 0o755)
    with open(os.path.join(work, "htdocs", "bench", "ok.txt"), "w") as f:
        f.write("ok\n")
    redis = harness.Redis(work).start()
    if os.environ.get("CERTGATE_BENCH_KEEP"):
        print("work directory:", work)
    t0 = time.monotonic()
    try:
        res = measure(work, redis, redis.client(), pki, args)
    finally:
        redis.stop()
        if not os.environ.get("CERTGATE_BENCH_KEEP"):
            subprocess.run(["rm", "-rf", work])
    print("\n".join(table(res, args.servers, args.modes) + [""] +
                    target_lines(res, args.servers, args.modes) +
                    centres_lines(res, args.servers, args.modes)))
    print("(%.0f s)" % (time.monotonic() - t0))


if __name__ == "__main__":
    main()
