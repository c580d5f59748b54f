#!/usr/bin/python3
"""make soak: restarts and long runs, gated servers against plain ones.

restarts: for each server kind (httpd, nginx), a gated server (mod_certgate /
  ngx_http_certgate_module) and a plain one (mod_ssl / nginx mTLS, the module
  not loaded, access decided by the client certificate's CN instead) get the
  same load in turn: keep-alive sessions and one-request connections, allowed
  and denied certificates. Every --interval seconds the server is reloaded
  (httpd: SIGUSR1 = apache2 -k graceful; nginx: SIGHUP = nginx -s reload).
  Counted: requests that failed (connection reset/closed, TLS error, timeout)
  and whether one immediate retry got the right answer, wrong answers (an
  allowed certificate must get 200, a denied one 403 with its reason), crash
  lines and alerts in the error log.
long: a gated httpd and a gated nginx, each with its own Redis, under moderate
  load for --duration seconds while registrations flip between APPROVED and
  INACTIVATED every --revoke-every seconds. Every ~10 s: RSS and open fds of
  every child/worker, and each Redis's connected clients. They must stay flat.

Prints a table per part and exits 1 when a target is missed.
"""
import argparse
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

import requests  # noqa: E402
import urllib3  # noqa: E402

import harness  # noqa: E402
from harness import register  # noqa: E402
from pki import PKI  # noqa: E402

urllib3.disable_warnings()
PATH = "/gated/ok.txt"
ALLOWED_CN = "soak allowed"

HTTPD_CONF = """
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
LoadModule mime_module {moddir}/mod_mime.so
LoadModule http2_module {moddir}/mod_http2.so
{gate_load}
StartServers 2
ServerLimit 2
ThreadsPerChild 16
MaxRequestWorkers 32
TypesConfig /dev/null
KeepAliveTimeout 30
MaxKeepAliveRequests 0
{extra}
SSLSessionCache "shmcb:{work}/run/ssl_scache(512000)"
Listen 127.0.0.1:{port} https
<VirtualHost 127.0.0.1:{port}>
  ServerName localhost
  DocumentRoot "{work}/htdocs"
  Protocols h2 http/1.1
  SSLEngine on
  SSLCertificateFile "{work}/pki/server.pem"
  SSLCertificateKeyFile "{work}/pki/server.key"
  SSLVerifyClient optional_no_ca
  SSLVerifyDepth 10
  <Directory "{work}/htdocs">
    Require all granted
  </Directory>
  <Location "/gated/">
{gate_location}
  </Location>
</VirtualHost>
"""
HTTPD_GATE_LOAD = """LoadModule certgate_module {module}
CertGateRedis 127.0.0.1:{redis_port}
CertGateRedisAuth {redis_password}
CertGateRedisDB {redis_db}"""
HTTPD_GATE = "    CertGate On"
# The plain server decides by the certificate's CN: a 403 from mod_authz_core.
HTTPD_PLAIN = '    Require expr "%{{SSL_CLIENT_S_DN_CN}} == \'{cn}\'"'

NGINX_CONF = """
{gate_load}
daemon off;
master_process on;
worker_processes 2;
pid {work}/run/nginx.pid;
error_log {work}/logs/error.log notice;
{user}
events {{ worker_connections 1024; }}
http {{
    types {{ text/plain txt; }}
    default_type application/octet-stream;
    access_log off;
    keepalive_timeout 30s;
    keepalive_requests 1000000;
    client_body_temp_path {work}/run/body;
    proxy_temp_path {work}/run/proxy;
    fastcgi_temp_path {work}/run/fastcgi;
    uwsgi_temp_path {work}/run/uwsgi;
    scgi_temp_path {work}/run/scgi;
    {gate_http}
    server {{
        listen 127.0.0.1:{port} ssl http2;
        server_name localhost;
        root {work}/htdocs;
        ssl_certificate {work}/pki/server.pem;
        ssl_certificate_key {work}/pki/server.key;
        ssl_verify_client optional_no_ca;
        ssl_verify_depth 10;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:ssl:1m;
        location /gated/ {{
            {gate_location}
        }}
    }}
}}
"""
NGINX_GATE_HTTP = """certgate_redis 127.0.0.1:{redis_port};
    certgate_redis_auth {redis_password};
    certgate_redis_db {redis_db};"""
NGINX_PLAIN = 'if ($ssl_client_s_dn !~ "CN={cn}(,|$)") {{ return 403; }}'


def make_workdir(tag):
    work = tempfile.mkdtemp(prefix="certgate-soak-%s-" % tag)
    os.chmod(work, 0o755)
    os.makedirs(os.path.join(work, "pki"))
    os.chmod(os.path.join(work, "pki"), 0o755)
    return work


class SoakHttpd(harness.Httpd):
    """The harness's apache2 (start, stop, logs) with this script's config."""

    def __init__(self, work, redis, gated):
        self.work, self.redis, self.proc, self.gated = work, redis, None, gated
        self.port = harness.free_port()
        self._docroot(work)
        self.h2 = True
        self.conf = os.path.join(work, "httpd.conf")
        self.error_log = os.path.join(work, "logs", "error.log")
        with open(self.conf, "w") as f:
            f.write(HTTPD_CONF.format(
                work=work, moddir=harness.MODDIR, port=self.port,
                user="User www-data\nGroup www-data" if os.geteuid() == 0 else "",
                gate_load=HTTPD_GATE_LOAD.format(
                    module=harness.MODULE, redis_port=redis.port,
                    redis_password=harness.Redis.PASSWORD, redis_db=harness.Redis.DB)
                if gated else "",
                gate_location=HTTPD_GATE if gated else HTTPD_PLAIN.format(cn=ALLOWED_CN),
                extra=ARGS.httpd_conf if ARGS else ""))

    def reload(self):
        os.kill(self.proc.pid, signal.SIGUSR1)      # apache2 -k graceful

    def crash_lines(self):
        return [l for l in self.read_log().splitlines() if "exit signal" in l]

    def alert_lines(self):
        return [l for l in self.read_log().splitlines() if ":alert]" in l or ":emerg]" in l]


class SoakNginx(harness.Nginx):
    def __init__(self, work, redis, gated):
        self.work, self.redis, self.proc, self.gated = work, redis, None, gated
        self.port = harness.free_port()
        self._docroot(work)
        os.chmod(os.path.join(work, "run"), 0o777)
        self.conf = os.path.join(work, "nginx.conf")
        self.error_log = os.path.join(work, "logs", "error.log")
        with open(self.conf, "w") as f:
            f.write(NGINX_CONF.format(
                work=work, port=self.port,
                user="user www-data;" if os.geteuid() == 0 else "",
                gate_load="load_module %s;" % harness.NGX_MODULE if gated else "",
                gate_http=NGINX_GATE_HTTP.format(
                    redis_port=redis.port, redis_password=harness.Redis.PASSWORD,
                    redis_db=harness.Redis.DB) if gated else "",
                gate_location="certgate on;" if gated else NGINX_PLAIN.format(cn=ALLOWED_CN)))

    def reload(self):
        os.kill(self.proc.pid, signal.SIGHUP)       # nginx -s reload

    def crash_lines(self):
        return [l for l in self.read_log().splitlines()
                if "exited on signal" in l or
                ("exited with code" in l and not l.endswith("exited with code 0"))]

    def alert_lines(self):
        return [l for l in self.read_log().splitlines() if "[alert]" in l or "[emerg]" in l]


SERVERS = {"httpd": SoakHttpd, "nginx": SoakNginx}


# ---------------------------------------------------------------- processes

def children(parent):
    """PIDs whose parent is `parent` (httpd children, nginx workers)."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            stat = open("/proc/%s/stat" % pid).read()
            if int(stat[stat.rindex(")") + 2:].split()[1]) == parent:
                out.append(int(pid))
        except (OSError, ValueError, IndexError):
            continue
    return sorted(out)


def rss_kb(pid):
    try:
        for line in open("/proc/%d/status" % pid):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def fd_count(pid):
    try:
        return len(os.listdir("/proc/%d/fd" % pid))
    except OSError:
        return None


# ---------------------------------------------------------------- load

class Certs:
    """Client certificates, their files, and what each must get."""

    def __init__(self, pki, pki_dir, flipping=0):
        self.allowed = pki.leaf_of(ALLOWED_CN)
        self.unregistered = pki.leaf_of("soak unregistered")
        self.pending = pki.leaf_of("soak pending")
        self.inactivated = pki.leaf_of("soak inactivated")
        self.flip = [pki.leaf_of("soak flip %d" % i) for i in range(flipping)]
        self.files = {}
        for c in [self.allowed, self.unregistered, self.pending, self.inactivated] + self.flip:
            self.files[c.fingerprint] = c.write(pki_dir, "c-" + c.fingerprint[:12])
        # fingerprint -> expected (status, reason) on a gated server
        self.expect = {self.allowed.fingerprint: (200, None),
                       self.unregistered.fingerprint: (403, "unregistered"),
                       self.pending.fingerprint: (403, "pending"),
                       self.inactivated.fingerprint: (403, "inactivated")}
        # fingerprint -> [(time of the write, expected)], for flipping ones
        self.history = {c.fingerprint: [] for c in self.flip}
        self.lock = threading.Lock()

    def seed(self, clients):
        for r in clients:
            register(r, self.allowed, "app1")
            register(r, self.pending, "app1", status="PENDING")
            register(r, self.inactivated, "app1", status="INACTIVATED")
            for c in self.flip:
                register(r, c, "app1")
        now = time.monotonic()
        for c in self.flip:
            self.history[c.fingerprint] = [(now, (200, None))]

    def set_flip(self, clients, cert, approved):
        """Write the new state to every Redis, then note when it was written."""
        status = "APPROVED" if approved else "INACTIVATED"
        for r in clients:
            register(r, cert, "app1", status=status)   # also INCR gen + PUBLISH
        with self.lock:
            self.history[cert.fingerprint].append(
                (time.monotonic(), (200, None) if approved else (403, "inactivated")))

    def expected(self, fp, t, gated, grace=1.5):
        """The set of right answers for a request started at t."""
        if not gated:   # plain servers decide by CN alone
            return {(200, None)} if fp == self.allowed.fingerprint else {(403, None)}
        if fp in self.expect:
            return {self.expect[fp]}
        with self.lock:
            hist = list(self.history[fp])
        ok = set()
        for i, (tw, exp) in enumerate(hist):
            nxt = hist[i + 1][0] if i + 1 < len(hist) else None
            # A state holds from its write (noted after the writes to every
            # Redis, each with its 0.1 s pause: hence the lead) until the next
            # write plus the gate's promise to learn a change within 1 s.
            if (i == 0 or t >= tw - 0.5) and (nxt is None or t < nxt + grace):
                ok.add(exp)
        return ok


class Load:
    """Client threads; each keeps asking with one certificate."""

    def __init__(self, server, certs, server_ca, plan, pause=0.0):
        self.server, self.certs, self.ca = server, certs, server_ca
        self.plan = plan            # [(cert, keepalive)]
        self.pause = pause
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.log = []               # (t0, t1, fp, keepalive, first, retry)
        self.threads = []

    def _one(self, session, fp):
        files = self.certs.files[fp]
        try:
            if session is not None:
                resp = session.get(self.server.url(PATH), timeout=10)
            else:
                resp = requests.get(self.server.url(PATH), cert=files, verify=self.ca,
                                    timeout=10, headers={"Connection": "close"})
            return (resp.status_code, resp.headers.get("CertGate-Reason"))
        except requests.RequestException as e:
            return ("ERR", describe(e))

    def worker(self, cert, keepalive):
        fp = cert.fingerprint
        session = None
        if keepalive:
            session = requests.Session()
            session.trust_env = False
            session.cert = self.certs.files[fp]
            session.verify = self.ca
        while not self.stop.is_set():
            t0 = time.monotonic()
            first = self._one(session, fp)
            retry = None
            if first[0] == "ERR":       # GET is idempotent: what one retry gets
                retry = self._one(session, fp)
            with self.lock:
                self.log.append((t0, time.monotonic(), fp, keepalive, first, retry))
            if self.pause:
                time.sleep(self.pause)

    def __enter__(self):
        for cert, keepalive in self.plan:
            t = threading.Thread(target=self.worker, args=(cert, keepalive), daemon=True)
            t.start()
            self.threads.append(t)
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=15)

    def summary(self, gated, t_from=0.0):
        with self.lock:
            log = [e for e in self.log if e[0] >= t_from]
        s = {"requests": len(log), "failed": 0, "failed_ka": 0, "failed_new": 0,
             "failed_after_retry": 0, "wrong": 0, "kinds": {}, "wrong_examples": [],
             "max_s": 0.0}
        for t0, t1, fp, ka, first, retry in log:
            s["max_s"] = max(s["max_s"], t1 - t0)
            ok = self.certs.expected(fp, t0, gated)
            if first[0] == "ERR":
                s["failed"] += 1
                s["failed_ka" if ka else "failed_new"] += 1
                s["kinds"][first[1]] = s["kinds"].get(first[1], 0) + 1
                if retry[0] == "ERR" or retry not in self.certs.expected(fp, t0, gated):
                    s["failed_after_retry"] += 1
            elif first not in ok:
                s["wrong"] += 1
                if len(s["wrong_examples"]) < 5:
                    s["wrong_examples"].append((round(t0, 2), fp[:12], first, sorted(ok)))
        return s


def describe(e):
    """A short class for a client-side failure."""
    text = repr(e)
    for key in ("RemoteDisconnected", "ConnectionResetError", "BrokenPipeError",
                "ConnectionRefusedError", "UNEXPECTED_EOF", "EOF occurred", "SSLEOFError",
                "SSLZeroReturnError", "timed out", "Read timed out"):
        if key in text:
            return "%s: %s" % (type(e).__name__, key)
    return "%s: %s" % (type(e).__name__, text[:80])


# ---------------------------------------------------------------- part 1

def restart_run(kind, gated, pki, args):
    work = make_workdir("%s-%s" % (kind, "gated" if gated else "plain"))
    redis = harness.Redis(work).start()
    pki_dir = os.path.join(work, "pki")
    pki.server.write(pki_dir, "server", send_chain=[])
    ca = pki.server_ca.write(pki_dir, "server-ca")[0]
    certs = Certs(pki, pki_dir)
    certs.seed([redis.client()])
    server = SERVERS[kind](work, redis, gated).start()
    denied = [certs.unregistered, certs.pending, certs.inactivated]
    plan = [(certs.allowed, True)] * 3 + [(c, True) for c in denied] + \
        [(certs.allowed, False), (certs.unregistered, False)]
    reloads = 0
    try:
        with Load(server, certs, ca, plan, pause=0.002) as load:
            time.sleep(2.0)
            t_start = time.monotonic()
            while time.monotonic() - t_start < args.restart_seconds:
                time.sleep(args.interval)
                server.reload()
                reloads += 1
            time.sleep(2.0)
        alive = server.proc.poll() is None
        # Let the last generation's old children/workers finish and log.
        time.sleep(1.0)
        res = load.summary(gated)
        running_alerts = server.alert_lines()
    finally:
        server.stop()
        redis.stop()
    alerts = server.alert_lines()
    res.update(kind=kind, gated=gated, reloads=reloads, alive=alive,
               crashes=server.crash_lines(), alerts=running_alerts,
               alerts_at_stop=alerts[len(running_alerts):], work=work)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    print("reloads: %s gate %s done: %d requests, %d failed" % (
        kind, "on" if gated else "off", res["requests"], res["failed"]))
    return res


def restart_table(results):
    print("\n== Reload every %s s under load (part 1) ==" % ARGS.interval)
    hdr = "%-6s %-6s %7s %8s %9s %11s %12s %6s %7s %7s %6s" % (
        "server", "gate", "reloads", "requests", "failed", "(keep-alive", "after retry",
        "wrong", "crashes", "alerts", "max s")
    print(hdr)
    for r in results:
        print("%-6s %-6s %7d %8d %4d %3.2f%% %6d/%-4d %12d %6d %7d %7d %6.2f" % (
            r["kind"], "on" if r["gated"] else "off", r["reloads"], r["requests"], r["failed"],
            100.0 * r["failed"] / max(1, r["requests"]), r["failed_ka"], r["failed_new"],
            r["failed_after_retry"], r["wrong"], len(r["crashes"]), len(r["alerts"]) +
            len(r["alerts_at_stop"]), r["max_s"]))
    for r in results:
        tag = "%s gate %s" % (r["kind"], "on" if r["gated"] else "off")
        if r["kinds"]:
            print("  %s failures: %s" % (tag, dict(sorted(r["kinds"].items()))))
        for w in r["wrong_examples"]:
            print("  %s wrong answer: %s" % (tag, w))
        for l in (r["crashes"] + r["alerts"] + r["alerts_at_stop"])[:6]:
            print("  %s log: %s" % (tag, l[:200]))


def restart_verdict(results):
    bad = []
    by = {(r["kind"], r["gated"]): r for r in results}
    for r in results:
        tag = "%s gate %s" % (r["kind"], "on" if r["gated"] else "off")
        if not r["alive"]:
            bad.append("%s: the server died" % tag)
        if r["wrong"]:
            bad.append("%s: %d wrong answers" % (tag, r["wrong"]))
        if r["crashes"]:
            bad.append("%s: %d crash lines" % (tag, len(r["crashes"])))
        if r["failed_after_retry"]:
            bad.append("%s: %d requests failed again on one retry" % (tag, r["failed_after_retry"]))
        if r["gated"]:
            alerts = r["alerts"] + r["alerts_at_stop"]
            if any("open socket" in l for l in alerts):
                bad.append("%s: MODULE BUG: workers leave the Redis connection open at exit "
                           "(\"open socket ... left in connection\" / \"aborting\" alerts, %d "
                           "lines): cg_exit_process() in nginx/ngx_http_certgate_module.c must "
                           "close it (cg_ngx_redis_drop_current())" % (tag, len(alerts)))
            elif alerts:
                bad.append("%s: %d alert lines" % (tag, len(alerts)))
            plain = by.get((r["kind"], False))
            if plain is not None:
                # The gate must not add failures to what the server does alone:
                # allowed is the plain rate plus three standard errors, at least 1.
                n = max(1, r["requests"])
                p = plain["failed"] / max(1, plain["requests"])
                limit = n * p + 3 * (n * p * (1 - p)) ** 0.5
                if r["failed"] > max(1.0, limit):
                    bad.append("%s: %d failed requests, more than the plain server's rate "
                               "allows (%.1f)" % (tag, r["failed"], limit))
            elif r["failed"]:
                bad.append("%s: %d failed requests (no plain run to compare)" % (tag, r["failed"]))
        elif r["alerts"] or r["alerts_at_stop"]:
            print("  note: %s alerts on the plain server" % tag)
    return bad


# ---------------------------------------------------------------- part 2

def long_run(pki, args):
    """Gated servers, each with its own Redis, and (--long-plain) plain ones as
    the baseline for memory and fds, all at once under the same load."""
    names = [(k, True) for k in args.servers]
    if args.long_plain:
        names += [(k, False) for k in args.servers]
    stacks = {}
    work = make_workdir("long")
    pki_dir = os.path.join(work, "pki")
    pki.server.write(pki_dir, "server", send_chain=[])
    ca = pki.server_ca.write(pki_dir, "server-ca")[0]
    certs = Certs(pki, pki_dir, flipping=4)
    try:
        for kind, gated in names:
            sub = os.path.join(work, "%s-%s" % (kind, "gated" if gated else "plain"))
            os.makedirs(os.path.join(sub, "pki"))
            for name in os.listdir(pki_dir):
                shutil.copy(os.path.join(pki_dir, name), os.path.join(sub, "pki", name))
            os.chmod(sub, 0o755)
            os.chmod(os.path.join(sub, "pki"), 0o755)
            st = stacks[(kind, gated)] = {"work": sub, "redis": None, "r": None}
            if gated:
                st["redis"] = harness.Redis(sub).start()
                st["r"] = st["redis"].client()
        writers = [s["r"] for s in stacks.values() if s["r"] is not None]
        certs.seed(writers)
        for (kind, gated), st in stacks.items():
            st["server"] = SERVERS[kind](st["work"], st["redis"] or DummyRedis, gated).start()
        denied = [certs.unregistered, certs.inactivated]
        plan = [(certs.allowed, True), (certs.allowed, not args.keepalive_only)] + \
            [(c, True) for c in denied] + [(c, True) for c in certs.flip]
        loads = {n: Load(stacks[n]["server"], certs, ca, plan, pause=args.pause) for n in names}
        for l in loads.values():
            l.__enter__()
        samples = {n: [] for n in names}
        flips = 0
        t0 = time.monotonic()
        next_sample = t0 + 5.0
        next_flip = t0 + args.revoke_every
        state = {c.fingerprint: True for c in certs.flip}
        rng = random.Random(1)
        try:
            while True:
                now = time.monotonic()
                if now - t0 >= args.duration:
                    break
                if now >= next_flip:
                    c = rng.choice(certs.flip)
                    state[c.fingerprint] = not state[c.fingerprint]
                    certs.set_flip(writers, c, state[c.fingerprint])
                    flips += 1
                    next_flip += args.revoke_every
                if now >= next_sample:
                    for n in names:
                        samples[n].append(sample(stacks[n], now - t0))
                    next_sample += args.sample_every
                time.sleep(0.05)
            for n in names:
                samples[n].append(sample(stacks[n], time.monotonic() - t0))
        finally:
            for l in loads.values():
                l.__exit__(None, None, None)
        results = []
        for n in names:
            srv = stacks[n]["server"]
            s = loads[n].summary(n[1])
            s.update(kind=n[0], gated=n[1], flips=flips, samples=samples[n],
                     alive=srv.proc.poll() is None, crashes=srv.crash_lines(),
                     alerts=srv.alert_lines())
            results.append(s)
        return results
    finally:
        for s in stacks.values():
            if "server" in s:
                s["server"].stop()
            if s["redis"] is not None:
                s["redis"].stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


class DummyRedis:
    """What a plain server's constructor is given: it never talks to Redis."""
    port = 0


def sample(stack, t):
    srv = stack["server"]
    kids = children(srv.proc.pid)
    clients = stack["r"].info("clients")["connected_clients"] if stack["r"] else 0
    return {"t": t, "pids": kids,
            "rss": {p: rss_kb(p) for p in kids}, "fds": {p: fd_count(p) for p in kids},
            "redis_clients": clients}


def series(samples, key):
    """Per sample: the total over the children alive then."""
    return [sum(v for v in s[key].values() if v is not None) for s in samples]


def flat(values, slack_abs, slack_rel=0.0):
    """First, last, max; flat when the last and the max of the second half stay
    within slack of the first sample taken after the first quarter (warm-up)."""
    base = values[len(values) // 4]
    tail = values[len(values) // 2:]
    limit = base * (1 + slack_rel) + slack_abs
    return values[0], values[-1], max(values), base, (max(tail) <= limit)


def long_table(results, args):
    print("\n== %d s of load with a revocation every %s s (part 2) ==" %
          (args.duration, args.revoke_every))
    bad = []
    plain_growth = {}
    for r in results:
        if not r["gated"]:
            rss = series(r["samples"], "rss")
            plain_growth[r["kind"]] = max(rss[len(rss) // 2:]) - rss[len(rss) // 4]
    for r in results:
        tag = "%s gate %s" % (r["kind"], "on" if r["gated"] else "off")
        smp = r["samples"]
        print("%s: requests %d, failed %d (after retry %d), wrong %d, flips %d, crashes %d, "
              "alerts %d, samples %d, children %s -> %s" % (
                  tag, r["requests"], r["failed"], r["failed_after_retry"], r["wrong"],
                  r["flips"], len(r["crashes"]), len(r["alerts"]), len(smp),
                  smp[0]["pids"], smp[-1]["pids"]))
        for w in r["wrong_examples"]:
            print("  wrong answer: %s" % (w,))
        if r["kinds"]:
            print("  failures: %s" % r["kinds"])
        # RSS may grow by what the plain server grows (allocator, TLS) plus
        # 2 MB and 5 %; fds and Redis clients by a few sockets in flux.
        extra = max(0, plain_growth.get(r["kind"], 0)) if r["gated"] else 0
        rows = [("RSS kB (all children)", series(smp, "rss"), 2048 + extra, 0.05),
                ("open fds (all children)", series(smp, "fds"), 4, 0.0)]
        if r["gated"]:
            rows.append(("Redis connected clients", [s["redis_clients"] for s in smp], 1, 0.0))
        for pid in smp[-1]["pids"]:
            vals = [s["rss"].get(pid) for s in smp if s["rss"].get(pid) is not None]
            if len(vals) >= 4:
                rows.append(("RSS kB pid %d" % pid, vals, 2048 + extra, 0.05))
            vals = [s["fds"].get(pid) for s in smp if s["fds"].get(pid) is not None]
            if len(vals) >= 4:
                rows.append(("open fds pid %d" % pid, vals, 4, 0.0))
        print("  %-28s %9s %9s %9s %9s %s" % ("", "first", "last", "max", "base", "flat"))
        for name, vals, sa, sr in rows:
            first, last, mx, base, ok = flat(vals, sa, sr)
            print("  %-28s %9d %9d %9d %9d %s" % (name, first, last, mx, base,
                                                   "yes" if ok else "NO"))
            if not ok and r["gated"] and ("all children" in name or "Redis" in name):
                bad.append("%s: %s grew: base %d, last %d, max %d" % (tag, name, base, last, mx))
        print("  RSS MB over time: %s" % " ".join(
            "%.1f" % (v / 1024.0) for v in series(smp, "rss")))
        if r["wrong"]:
            bad.append("%s: %d wrong answers" % (tag, r["wrong"]))
        if r["failed"]:
            bad.append("%s: %d failed requests" % (tag, r["failed"]))
        if r["crashes"] or not r["alive"]:
            bad.append("%s: crashed" % tag)
        if r["alerts"]:
            bad.append("%s: %d alert lines" % (tag, len(r["alerts"])))
    return bad


# ---------------------------------------------------------------- main

def main():
    global ARGS
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--parts", default="restarts,long", help="restarts,long")
    p.add_argument("--servers", default="httpd,nginx")
    p.add_argument("--restart-seconds", type=float, default=60.0)
    p.add_argument("--interval", type=float, default=2.0, help="seconds between reloads")
    p.add_argument("--duration", type=float, default=600.0, help="seconds of the long run")
    p.add_argument("--revoke-every", type=float, default=3.0)
    p.add_argument("--sample-every", type=float, default=10.0)
    p.add_argument("--pause", type=float, default=0.02,
                   help="seconds each long-run client waits between requests")
    p.add_argument("--no-long-plain", dest="long_plain", action="store_false",
                   help="long run: no plain servers as the baseline")
    p.add_argument("--httpd-conf", default="",
                   help="extra server config lines for both httpd servers, e.g. 'MaxMemFree 64'")
    p.add_argument("--keepalive-only", action="store_true",
                   help="long run: no one-request connections (no new TLS sessions)")
    p.add_argument("--keep", action="store_true", help="keep the work directories")
    ARGS = args = p.parse_args()
    sys.stdout.reconfigure(line_buffering=True)     # progress shows under make/nohup too
    args.servers = [s for s in args.servers.split(",") if s]
    parts = args.parts.split(",")
    for path in (harness.MODULE, harness.NGX_MODULE):
        if not os.path.exists(path):
            sys.exit("%s is missing: run make module nginx-module" % path)
    pki = PKI()
    bad = []
    if "restarts" in parts:
        results = []
        for kind in args.servers:
            for gated in (True, False):
                results.append(restart_run(kind, gated, pki, args))
        restart_table(results)
        bad += restart_verdict(results)
    if "long" in parts:
        results = long_run(pki, args)
        bad += long_table(results, args)
    print()
    if bad:
        print("TARGETS MISSED:")
        for b in bad:
            print("  - " + b)
        return 1
    print("all targets met")
    return 0


ARGS = None
if __name__ == "__main__":
    sys.exit(main())
