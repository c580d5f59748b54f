"""Real redis-server and apache2 processes on loopback, started and stopped by PID."""
import os
import signal
import socket
import subprocess
import time

import redis as redis_py

APACHE = "/usr/sbin/apache2"
MODDIR = "/usr/lib/apache2/modules"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODULE = os.environ.get("CERTGATE_MODULE") or os.path.join(ROOT, "build", "mod_certgate.so")
# make test-asan / test-valgrind run the same suite under a sanitizer.
SANITIZE = os.environ.get("CERTGATE_SANITIZE", "")
# Sanitized builds are several times slower: timing bounds get this much slack.
SLACK = 2.0 if SANITIZE else 0.0


def server_env(logs_dir):
    """The environment apache2 and nginx run with (the ASan runtime preloaded for test-asan)."""
    env = dict(os.environ)
    if SANITIZE == "asan":
        runtime = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True,
                                 text=True).stdout.strip()
        # The Debian apache2 and nginx binaries are not instrumented: the runtime must load first.
        env["LD_PRELOAD"] = runtime
        env["ASAN_OPTIONS"] = "detect_leaks=0:allow_user_segv_handler=0:log_path=%s/asan" % logs_dir
        env["UBSAN_OPTIONS"] = "print_stacktrace=1:halt_on_error=1:log_path=%s/ubsan" % logs_dir
    return env


def wait_for_line(path, text, timeout=5.0):
    """True once a line of the file holds text (servers write logs after answering)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open(path) as f:
                if any(text in line for line in f):
                    return True
        except FileNotFoundError:
            pass
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("process exited with %s before listening" % proc.returncode)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("port %d not listening after %.0fs" % (port, timeout))


def stop_pid(proc, timeout=10.0):
    if proc is None or proc.poll() is not None:
        return
    try:
        os.kill(proc.pid, signal.SIGCONT)  # a paused process cannot exit
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)
    except ProcessLookupError:
        pass


class Redis:
    PASSWORD = "test-redis-secret"
    DB = 3

    ACL_USER = "certgate-gate"
    ACL_PASSWORD = "test-acl-secret"
    ADMIN_ACL_USER = "certgate-admin"
    ADMIN_ACL_PASSWORD = "test-acl-admin-secret"
    # The two ACL users of docs/operator-guide.md, command for command (test_store_kinds
    # checks the guide says the same): a gateway (gate, usage counters, metrics scrape,
    # expiry scan) and a server that also hosts the admin API.
    GATE_ACL = ["+get", "+hgetall", "+hget", "+select", "+ping", "+subscribe", "+eval",
                "+hincrby", "+hset", "+smembers", "+hmget", "+hsetnx", "+xadd", "+type"]
    ADMIN_ACL = GATE_ACL + ["+exists", "+hexists", "+set", "+sadd", "+incr", "+publish", "+zadd",
                            "+zrange", "+xrange", "+time"]
    # The guide's patterns are for the default prefix; the harness adds cgx: for the prefix tests.
    ACL_KEYS = ["~certgate:*", "&certgate:*", "~cgx:*", "&cgx:*"]

    def __init__(self, workdir, port=None):
        self.dir = os.path.join(workdir, "redis")
        os.makedirs(self.dir, exist_ok=True)
        os.chmod(self.dir, 0o755)
        self.port = port or free_port()
        self.socket = os.path.join(self.dir, "redis.sock")
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", self.dir,
             "--requirepass", self.PASSWORD, "--daemonize", "no",
             "--unixsocket", self.socket, "--unixsocketperm", "777",
             "--logfile", os.path.join(self.dir, "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, self.proc)
        deadline = time.monotonic() + 5
        while True:
            try:
                c = self.client()
                c.ping()
                # The ACL users exactly as docs/operator-guide.md gives them.
                c.execute_command("ACL", "SETUSER", self.ACL_USER, "on", ">" + self.ACL_PASSWORD,
                                  *(self.ACL_KEYS + self.GATE_ACL))
                c.execute_command("ACL", "SETUSER", self.ADMIN_ACL_USER, "on",
                                  ">" + self.ADMIN_ACL_PASSWORD, *(self.ACL_KEYS + self.ADMIN_ACL))
                return self
            except redis_py.exceptions.BusyLoadingError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self):
        stop_pid(self.proc)
        self.proc = None

    def pause(self):
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self):
        os.kill(self.proc.pid, signal.SIGCONT)

    def client(self):
        return redis_py.Redis(host="127.0.0.1", port=self.port, password=self.PASSWORD,
                              db=self.DB, socket_timeout=5)


HTTPD_CONF = """
ServerRoot "{work}"
ServerName localhost
PidFile "{work}/run/httpd.pid"
DefaultRuntimeDir "{work}/run"
ErrorLog "{work}/logs/error.log"
LogLevel warn certgate:debug
{user}
LoadModule mpm_event_module {moddir}/mod_mpm_event.so
LoadModule authz_core_module {moddir}/mod_authz_core.so
LoadModule ssl_module {moddir}/mod_ssl.so
LoadModule socache_shmcb_module {moddir}/mod_socache_shmcb.so
LoadModule headers_module {moddir}/mod_headers.so
LoadModule mime_module {moddir}/mod_mime.so
LoadModule auth_basic_module {moddir}/mod_auth_basic.so
LoadModule authn_core_module {moddir}/mod_authn_core.so
LoadModule authn_file_module {moddir}/mod_authn_file.so
LoadModule authz_user_module {moddir}/mod_authz_user.so
{h2_load}
LoadModule certgate_module {module}

StartServers 2
ServerLimit 2
ThreadsPerChild 16
MaxRequestWorkers 32
TypesConfig /dev/null
LogFormat "%h %r %>s reason=%{{CERTGATE_REASON}}e app=%{{CERTGATE_APP_ID}}e" cg
CustomLog "{work}/logs/access.log" cg

{store_conf}
CertGateRedisTimeout {timeout_ms}
{extra_server}

SSLSessionCache "shmcb:{work}/run/ssl_scache(512000)"
Listen 127.0.0.1:{port} https
<VirtualHost 127.0.0.1:{port}>
  ServerName localhost
  DocumentRoot "{work}/htdocs"
  {h2_protocols}
  SSLEngine on
  SSLCertificateFile "{work}/pki/server.pem"
  SSLCertificateKeyFile "{work}/pki/server.key"
  SSLVerifyClient optional_no_ca
  SSLVerifyDepth 10
  <Directory "{work}/htdocs">
    Require all granted
  </Directory>
  # Show what the gate exported, so tests can assert on it.
  Header always set X-Seen-App "%{{CERTGATE_APP_ID}}e"
  Header always set X-Seen-Cert-Id "%{{CERTGATE_CERT_ID}}e"
  Header always set X-Seen-Fingerprint "%{{CERTGATE_FINGERPRINT}}e"
  Header always set X-Seen-Expire-In "%{{CERTGATE_EXPIRE_IN}}e"
  Header always set X-Seen-Client-Cert "expr=%{{req:Client-Cert}}"
  Header always set X-Seen-Client-Cert-Chain "expr=%{{req:Client-Cert-Chain}}"
  Header always set X-Seen-Hdr-App "expr=%{{req:CertGate-App-Id}}"
  <Location "/gated/">
    CertGate On
  </Location>
  <Location "/app/">
    CertGate On
    CertGateAppFrom header X-App-Id
  </Location>
  <Location "/fwd/">
    CertGate On
    CertGateForwardHeaders On
  </Location>
  <Location "/errdoc/">
    CertGate On
    ErrorDocument 403 /open/denied.txt
  </Location>
  <Location "/open/">
    ErrorDocument 404 /gated/ok.txt
  </Location>
  <Location "/admin">
    SetHandler certgate-admin
    AuthType Basic
    AuthName "certgate admin"
    AuthBasicProvider file
    AuthUserFile "{work}/admin.htpasswd"
    Require valid-user
    CertGateAdminRole developer dev1 dev2 devmgr
    CertGateAdminRole manager mgr1 mgr2 devmgr
    CertGateAdminRole support sup1
    CertGateAdminRole auditor aud1
    CertGateAdminCustomer cust-1 dev1 devmgr
    CertGateAdminCustomer cust-2 dev2
  </Location>
  <Location "/noauth">
    SetHandler certgate-admin
    Require all granted
    CertGateAdminRole manager mgr1
  </Location>
  {extra_vhost}
</VirtualHost>
"""


class WebServer:
    """What Httpd and Nginx share: the document tree the tests read, URLs, the log."""

    def _docroot(self, workdir):
        for d in ("run", "logs", "htdocs"):
            os.makedirs(os.path.join(workdir, d), exist_ok=True)
        # Children/workers (www-data when we are root) write sanitizer reports here.
        os.chmod(os.path.join(workdir, "logs"), 0o777)
        for d in ("gated", "app", "fwd", "open", "errdoc"):
            os.makedirs(os.path.join(workdir, "htdocs", d), exist_ok=True)
            with open(os.path.join(workdir, "htdocs", d, "ok.txt"), "w") as f:
                f.write("ok\n")
        with open(os.path.join(workdir, "htdocs", "open", "denied.txt"), "w") as f:
            f.write("custom denied page\n")

    def _admin_users(self, workdir):
        """The admin API's users, in {work}/admin.htpasswd (both servers read it)."""
        self.admin_users = {u: "pw-" + u for u in
                            ("dev1", "dev2", "devmgr", "mgr1", "mgr2", "sup1", "aud1", "nobody1",
                             # Names that differ only in case from configured users.
                             "DEVMGR", "Dev1", "sup2", "aud2")}
        pw = os.path.join(workdir, "admin.htpasswd")
        for i, (u, p) in enumerate(sorted(self.admin_users.items())):
            subprocess.run(["htpasswd", "-b" + ("c" if i == 0 else ""), pw, u, p],
                           check=True, capture_output=True)
        os.chmod(pw, 0o644)

    def url(self, path):
        return "https://localhost:%d%s" % (self.port, path)

    def read_log(self):
        try:
            with open(self.error_log) as f:
                return f.read()
        except FileNotFoundError:
            return ""


class Httpd(WebServer):
    kind = "httpd"

    def __init__(self, workdir, pki_dir, redis, timeout_ms=200, extra_server="", extra_vhost="",
                 store_conf=None):
        self.work = workdir
        self.port = free_port()
        self.redis = redis
        self.proc = None
        self._docroot(workdir)
        self._admin_users(workdir)
        if os.path.realpath(pki_dir) != os.path.join(workdir, "pki"):
            raise ValueError("pki must live in workdir/pki")
        h2 = os.path.exists(os.path.join(MODDIR, "mod_http2.so"))
        self.h2 = h2
        self.conf = os.path.join(workdir, "httpd.conf")
        with open(self.conf, "w") as f:
            f.write(HTTPD_CONF.format(
                work=workdir, moddir=MODDIR, module=MODULE, port=self.port,
                user="User www-data\nGroup www-data" if os.geteuid() == 0 else "",
                h2_load=("LoadModule http2_module %s/mod_http2.so" % MODDIR) if h2 else "",
                h2_protocols="Protocols h2 http/1.1" if h2 else "",
                store_conf=store_conf if store_conf is not None else (
                    "CertGateRedis 127.0.0.1:%d\nCertGateRedisAuth %s\nCertGateRedisDB %d"
                    % (redis.port, Redis.PASSWORD, Redis.DB)),
                timeout_ms=timeout_ms, extra_server=extra_server.replace("{work}", workdir),
                extra_vhost=extra_vhost.replace("{work}", workdir)))
        self.error_log = os.path.join(workdir, "logs", "error.log")

    def start(self):
        out = open(os.path.join(self.work, "logs", "stderr.log"), "ab")
        logs = os.path.join(self.work, "logs")
        env = server_env(logs)
        cmd = [APACHE, "-f", self.conf, "-DFOREGROUND"]
        wait = 10.0 + 3 * SLACK
        if SANITIZE == "valgrind":
            cmd = ["valgrind", "-q", "--vgdb=no", "--leak-check=full", "--errors-for-leak-kinds=definite",
                   "--show-leak-kinds=definite", "--num-callers=30",
                   "--log-file=%s/valgrind.%%p" % logs, APACHE, "-X", "-f", self.conf]
            wait = 90.0
        self.proc = subprocess.Popen(cmd, stdout=out, stderr=out, env=env)
        try:
            wait_port(self.port, self.proc, timeout=wait)
            # Listening starts in the first config pass; "resuming normal
            # operations" comes once the real one (post_config) is done.
            deadline = time.monotonic() + wait
            # (apache2 -X under valgrind logs no AH00489.)
            while SANITIZE != "valgrind" and "AH00489" not in self.read_log().split("AH00491")[-1]:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("no AH00489 in the error log")
                time.sleep(0.05)
        except RuntimeError:
            raise RuntimeError("apache2 did not start: %s\n%s" % (self.read_log(), open(
                os.path.join(self.work, "logs", "stderr.log")).read()))
        return self

    def stop(self):
        # What the log held before we asked httpd to stop: crashes there are ours to answer.
        self.log_at_stop = len(self.read_log())
        stop_pid(self.proc, timeout=60.0 if SANITIZE == "valgrind" else 10.0)
        self.proc = None

    def sanitizer_reports(self):
        """Reports that fail a test: any ASan/UBSan report with a frame in our code,
        valgrind invalid accesses or definite leaks in our code, and any child crash
        ("exit signal") while the server was running.

        Known and kept visible, not failed: a rare SEGV inside mpm_event itself
        (no frame of ours) while children stop at shutdown; it is printed and
        counted in docs/security.md."""
        logs = os.path.join(self.work, "logs")
        bad = []
        for name in sorted(os.listdir(logs)):
            path = os.path.join(logs, name)
            text = open(path, errors="replace").read()
            ours = "cg_" in text or "mod_certgate" in text
            if name.startswith(("asan", "ubsan")) and text.strip():
                if ours or "AddressSanitizer: SEGV" not in text:
                    bad.append(text)
                else:
                    print("\n[known httpd shutdown SEGV, no frame of ours]\n" + text[:600])
            elif name.startswith("valgrind.") and text.strip():
                for block in text.split("\n\n"):
                    ours = "cg_" in block or "mod_certgate" in block
                    if ("Invalid " in block or "uninitialised" in block or
                            ("definitely lost" in block and ours)):
                        bad.append(block)
        error_log = self.read_log()
        cut = getattr(self, "log_at_stop", len(error_log))
        running, stopping = error_log[:cut], error_log[cut:]
        if "exit signal" in running:
            bad.append("\n".join(l for l in running.splitlines() if "exit signal" in l))
        if "exit signal" in stopping:
            print("\n[child crash while stopping]\n" +
                  "\n".join(l for l in stopping.splitlines() if "exit signal" in l))
        return bad


def register(r, cert, app, status="APPROVED", chain=None, activate_at=None, retire_at=None,
             reg_id=None, prefix="certgate:", valid_from=None, valid_to=None, customer="cust-1",
             appinfo=True, app_owner=None):
    """Write a registration as the admin handler will: record, fingerprint index, app set,
    and the app's record {prefix}appinfo:{app} owned by `customer` (by `app_owner` if given;
    none with appinfo=False) in the set {prefix}apps."""
    reg_id = reg_id or "reg-" + cert.fingerprint[:16]
    chain = cert.chain_fingerprints if chain is None else chain
    record = {
        "id": reg_id,
        "app_id": app,
        "customer_id": customer,
        "status": status,
        "fingerprint": cert.fingerprint,
        "chain": ",".join(chain),
        "valid_from": str(cert.not_before if valid_from is None else valid_from),
        "valid_to": str(cert.not_after if valid_to is None else valid_to),
        "activate_at": "" if activate_at is None else str(activate_at),
        "retire_at": "" if retire_at is None else str(retire_at),
    }
    p = r.pipeline(transaction=True)
    p.delete(prefix + "reg:" + reg_id)
    p.hset(prefix + "reg:" + reg_id, mapping=record)
    p.set(prefix + "fp:" + cert.fingerprint, reg_id)
    p.sadd(prefix + "app:" + app, reg_id)
    p.sadd(prefix + "regs", reg_id)
    p.set(prefix + "schema", "1")
    if appinfo:
        p.hset(prefix + "appinfo:" + app,
               mapping={"id": app, "customer_id": customer if app_owner is None else app_owner})
        p.sadd(prefix + "apps", app)
    p.execute()
    invalidate(r, cert.fingerprint, prefix)
    return reg_id


def invalidate(r, fingerprint, prefix="certgate:"):
    """What every admin write does after changing a record: tell the gateways.
    The gate promises to learn within 1 s; 0.1 s is ample on loopback."""
    r.incr(prefix + "gen")
    r.publish(prefix + "invalidate", fingerprint)
    time.sleep(0.1)


def flush_store(r, prefix="certgate:"):
    """Empty the store and tell the gateways to drop everything they cached."""
    r.flushdb()
    r.publish(prefix + "invalidate", "flush")
    time.sleep(0.1)


NGINX = "/usr/sbin/nginx"
NGX_MODULE = os.environ.get("CERTGATE_NGX_MODULE") or os.path.join(
    ROOT, "build", "ngx_http_certgate_module.so")

# The same locations as HTTPD_CONF, so the shared scenarios run unchanged.
NGINX_CONF = """
load_module {module};
daemon off;
master_process on;
worker_processes {workers};
pid {work}/run/nginx.pid;
error_log {work}/logs/error.log info;
{user}
# The admin API's tasks run here (certgate_admin_thread_pool defaults to "default").
thread_pool default threads=4;
events {{ worker_connections 1024; }}

http {{
    types {{ text/plain txt; }}
    default_type application/octet-stream;
    client_body_temp_path {work}/run/body;
    proxy_temp_path {work}/run/proxy;
    fastcgi_temp_path {work}/run/fastcgi;
    uwsgi_temp_path {work}/run/uwsgi;
    scgi_temp_path {work}/run/scgi;
    log_format cg '$remote_addr "$request" $status reason=$certgate_reason app=$certgate_app_id';
    access_log {work}/logs/access.log cg;

    {store_conf}
    certgate_redis_timeout {timeout_ms}ms;
    {extra_http}

    # Empty values drop a header in add_header: show "-" instead, so a probe is always there.
    map $http_client_cert $seen_client_cert {{ "" "-"; default $http_client_cert; }}
    map $http_client_cert_chain $seen_client_cert_chain {{ "" "-"; default $http_client_cert_chain; }}
    map $http_certgate_app_id $seen_hdr_app {{ "" "-"; default $http_certgate_app_id; }}

    server {{
        listen 127.0.0.1:{port} ssl http2;
        server_name localhost;
        root {work}/htdocs;
        ssl_certificate {work}/pki/server.pem;
        ssl_certificate_key {work}/pki/server.key;
        ssl_verify_client optional_no_ca;
        ssl_verify_depth 10;
        ssl_protocols TLSv1.2 TLSv1.3;     # 1.22 leaves 1.3 off by default
        ssl_session_cache shared:ssl:1m;

        # Show what the gate exported, so tests can assert on it.
        add_header X-Seen-App $certgate_app_id always;
        add_header X-Seen-Cert-Id $certgate_cert_id always;
        add_header X-Seen-Fingerprint $certgate_fingerprint always;
        add_header X-Seen-Expire-In $certgate_expire_in always;
        add_header X-Seen-Client-Cert $seen_client_cert always;
        add_header X-Seen-Client-Cert-Chain $seen_client_cert_chain always;
        add_header X-Seen-Hdr-App $seen_hdr_app always;

        location /gated/ {{ certgate on; }}
        location /app/ {{
            certgate on;
            certgate_app_from header X-App-Id;
        }}
        location /fwd/ {{
            certgate on;
            certgate_forward_headers on;
        }}
        location /errdoc/ {{
            certgate on;
            error_page 403 /open/denied.txt;
        }}
        location /open/ {{ error_page 404 /gated/ok.txt; }}
        # The admin API with the users and roles of HTTPD_CONF's /admin.
        location /admin {{
            certgate_admin;
            auth_basic "certgate admin";
            auth_basic_user_file {work}/admin.htpasswd;
            certgate_admin_user $remote_user;
            certgate_admin_role developer dev1 dev2 devmgr;
            certgate_admin_role manager mgr1 mgr2 devmgr;
            certgate_admin_role support sup1;
            certgate_admin_role auditor aud1;
            certgate_admin_customer cust-1 dev1 devmgr;
            certgate_admin_customer cust-2 dev2;
            {extra_admin}
        }}
        location /noauth {{
            certgate_admin;
            certgate_admin_role manager mgr1;
        }}
        {extra_server}
    }}
}}
"""


class Nginx(WebServer):
    """nginx with ngx_http_certgate_module: the same surface as Httpd for the shared tests."""
    kind = "nginx"
    h2 = True

    def __init__(self, workdir, pki_dir, redis, timeout_ms=200, extra_http="", extra_server="",
                 store_conf=None, workers=2, extra_admin=""):
        self.work = workdir
        self.port = free_port()
        self.redis = redis
        self.proc = None
        self._docroot(workdir)
        self._admin_users(workdir)
        os.chmod(os.path.join(workdir, "run"), 0o777)   # temp paths for www-data workers
        self.conf = os.path.join(workdir, "nginx.conf")
        with open(self.conf, "w") as f:
            f.write(NGINX_CONF.format(
                work=workdir, module=NGX_MODULE, port=self.port, workers=workers,
                user="user www-data;" if os.geteuid() == 0 else "",
                store_conf=store_conf if store_conf is not None else (
                    "certgate_redis 127.0.0.1:%d;\n    certgate_redis_auth %s;\n"
                    "    certgate_redis_db %d;" % (redis.port, Redis.PASSWORD, Redis.DB)),
                timeout_ms=timeout_ms, extra_http=extra_http.replace("{work}", workdir),
                extra_server=extra_server.replace("{work}", workdir),
                extra_admin=extra_admin.replace("{work}", workdir)))
        self.error_log = os.path.join(workdir, "logs", "error.log")

    def start(self):
        out = open(os.path.join(self.work, "logs", "stderr.log"), "ab")
        self.proc = subprocess.Popen([NGINX, "-c", self.conf, "-p", self.work],
                                     stdout=out, stderr=out,
                                     env=server_env(os.path.join(self.work, "logs")))
        try:
            wait_port(self.port, self.proc, timeout=10.0 + 3 * SLACK)
        except RuntimeError:
            raise RuntimeError("nginx did not start: %s\n%s" % (self.read_log(), open(
                os.path.join(self.work, "logs", "stderr.log")).read()))
        return self

    def stop(self):
        self.log_at_stop = len(self.read_log())
        stop_pid(self.proc)
        self.proc = None

    # A worker's stderr is the error log: sanitizer reports may land there too.
    BAD_LINES = ("exited on signal", "runtime error:", "AddressSanitizer", "LeakSanitizer")

    def sanitizer_reports(self):
        """Worker crashes or failed exits, and sanitizer reports (files or error log)."""
        logs = os.path.join(self.work, "logs")
        bad = [open(os.path.join(logs, n), errors="replace").read()
               for n in sorted(os.listdir(logs))
               if n.startswith(("asan", "ubsan"))]
        lines = [l for l in self.read_log().splitlines()
                 if any(b in l for b in self.BAD_LINES) or
                 ("exited with code" in l and not l.endswith("exited with code 0"))]
        if lines:
            bad.append("\n".join(lines))
        return [b for b in bad if b.strip()]
