"""Redis high availability with real processes on loopback: 1 primary + 2 replicas,
3 sentinels (down-after-milliseconds 1000), httpd and nginx finding the master through
them; durable admin writes (WAIT); the bounded stale mode; the HA directives.
The figures printed by the kill -9 and SIGSTOP tests are the ones in docs/ha.md.
The tests on the `ha` set run in file order: each failover leaves the next primary."""
import os
import subprocess
import threading
import time

import pytest
import requests

import harness
from admin import Admin, error_code, seed
from clients import files_for, session
from conftest import httpd_config_test, make_workdir
from ha import HASet
from harness import register
from pki import make_cert

GATED = "/gated/ok.txt"
SLACK = harness.SLACK


class View:
    """One httpd on the HA set, in its own work dir (what clients.py and admin.py need)."""

    def __init__(self, ha, pki, extra_server="", order=None, kind="httpd", store_conf=None,
                 extra_vhost=""):
        self.work = make_workdir()
        self.kind = kind
        self.pki_dir = os.path.join(self.work, "pki")
        pki.server.write(self.pki_dir, "server", send_chain=[])
        self.server_ca = pki.server_ca.write(self.pki_dir, "server-ca")[0]
        if kind == "nginx":
            self.server = self.httpd = harness.Nginx(self.work, self.pki_dir, None,
                                                     store_conf=ha.nginx_store_conf(order),
                                                     extra_http=extra_server).start()
        else:
            self.server = self.httpd = harness.Httpd(self.work, self.pki_dir, None,
                                                     store_conf=store_conf or ha.store_conf(order),
                                                     extra_server=extra_server,
                                                     extra_vhost=extra_vhost).start()

    def client_files(self, cert, name, **kw):
        return cert.write(self.pki_dir, name, **kw)

    def close(self):
        self.httpd.stop()
        reports = self.httpd.sanitizer_reports()
        assert not reports, "\n".join(reports)[:4000]


@pytest.fixture(scope="module")
def ha():
    work = make_workdir()
    s = HASet(work)
    yield s
    s.close()


@pytest.fixture(scope="module")
def gate(ha, pki):
    """Cache off: every request reads the store (the 503 window is the store's)."""
    v = View(ha, pki, extra_server="CertGateCache Off")
    yield v
    v.close()


@pytest.fixture(scope="module")
def ngate(ha, pki):
    v = View(ha, pki, extra_server="certgate_cache off;", kind="nginx")
    yield v
    v.close()


@pytest.fixture(scope="module")
def ncached(ha, pki):
    v = View(ha, pki, extra_server="certgate_cache_max_age 30;", kind="nginx")
    yield v
    v.close()


@pytest.fixture(scope="module")
def cached(ha, pki):
    """Cache on with a long max age: only the subscriber can make it forget."""
    v = View(ha, pki, extra_server="CertGateCacheMaxAge 30")
    yield v
    v.close()


def seed_certs(r, pki):
    r.flushdb()
    seed(r)
    register(r, pki.leaf, "app1")                               # allowed
    register(r, pki.leaf_inter2, "app1")                        # allowed (revoked later)
    register(r, pki.leaf_b, "app1", status="PENDING")           # denied
    register(r, pki.leaf_other, "app1", status="INACTIVATED")   # denied
    # pki.app_leaf stays unregistered: denied
    r.execute_command("WAIT", 2, 1000)


class Load:
    """Threads asking with allowed and denied certificates, keep-alive and new connections."""

    def __init__(self, view, certs):
        self.view, self.certs = view, certs
        self.log, self.lock = [], threading.Lock()
        self.stop, self.threads = threading.Event(), []

    def worker(self, cert, valid, keepalive):
        s = session(self.view, cert)
        url = self.view.httpd.url(GATED)
        files = files_for(self.view, cert)
        while not self.stop.is_set():
            t0 = time.monotonic()
            try:
                if keepalive:
                    status = s.get(url, timeout=5).status_code
                else:
                    status = requests.get(url, cert=files, verify=self.view.server_ca,
                                          timeout=5).status_code
            except requests.RequestException as e:
                status = type(e).__name__
            with self.lock:
                self.log.append((t0, time.monotonic(), valid, status))
            time.sleep(0.01)

    def __enter__(self):
        for cert, valid in self.certs:
            for keepalive in ((True, False) if valid else (True,)):
                t = threading.Thread(target=self.worker, args=(cert, valid, keepalive),
                                     daemon=True)
                t.start()
                self.threads.append(t)
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=10)

    def since(self, t):
        with self.lock:
            return sorted(e for e in self.log if e[0] >= t)


def figures(name, load, t_fault):
    """Wrong allows, the window of failed allowed requests, time to the first 200 after it."""
    entries = load.since(t_fault)
    wrong = [e for e in entries if not e[2] and e[3] == 200]
    failed = [e for e in entries if e[2] and e[3] != 200]
    window = failed[-1][1] - failed[0][0] if failed else 0.0
    after = [e for e in entries if e[2] and e[3] == 200 and (not failed or e[0] > failed[-1][0])]
    first_ok = after[0][1] - t_fault if after else None
    kinds = {}
    for e in entries:
        k = "%s %s" % ("allowed" if e[2] else "denied", e[3])
        kinds[k] = kinds.get(k, 0) + 1
    print("\n%s: requests %d, wrong allows %d, failed allowed %d, window of failures %.2f s, "
          "first 200 after the fault %s s, %s" % (
              name, len(entries), len(wrong), len(failed), window,
              "%.2f" % first_ok if first_ok is not None else "never", dict(sorted(kinds.items()))))
    return wrong, window, first_ok


def wait_status(view, cert, want, timeout):
    s = session(view, cert)
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            if s.get(view.httpd.url(GATED), timeout=2).status_code == want:
                return time.monotonic() - t0
        except requests.RequestException:
            pass
        time.sleep(0.02)
    return None


def test_kill_primary_under_load(ha, gate, cached, ngate, ncached, pki):
    """httpd and nginx under load at once: 0 wrong allows, the window of 503s on the
    allowed certificate, the time to its first 200; then a revocation written on the new
    primary is enforced within 1 s on live connections of cached gateways."""
    old = ha.primary()
    seed_certs(old.client(), pki)
    lives = [(v, session(v, pki.leaf_inter2)) for v in (cached, ncached)]
    for v, live in lives:
        assert live.get(v.httpd.url(GATED), timeout=5).status_code == 200
    # Every gateway process's invalidation subscriber, before the fault.
    subscribers = old.client().execute_command("PUBSUB", "NUMSUB", "certgate:invalidate")[1]
    certs = [(pki.leaf, True), (pki.leaf_b, False), (pki.leaf_other, False), (pki.app_leaf, False)]
    with Load(gate, certs) as load, Load(ngate, certs) as nload:
        time.sleep(1.0)
        t_kill = time.monotonic()
        old.kill9()
        new = ha.wait_new_primary(old.port)
        t_elected = time.monotonic() - t_kill
        time.sleep(3.0)
    print("\nsentinels named the new primary %.2f s after the kill" % t_elected)
    for name, l in (("httpd", load), ("nginx", nload)):
        wrong, window, first_ok = figures("kill -9 primary (%s)" % name, l, t_kill)
        assert not wrong, wrong[:5]
        assert first_ok is not None
        assert window <= 3.0 + SLACK, window

    # The live connections of the cached gateways follow: their subscribers moved to the
    # new primary and flushed; a revocation written there now is enforced within 1 s.
    for v, live in lives:
        assert live.get(v.httpd.url(GATED), timeout=5).status_code == 200
    r = new.client()
    # The subscribers follow the failover (bounded), then a revocation is timed.
    deadline = time.monotonic() + 5.0
    while r.execute_command("PUBSUB", "NUMSUB", "certgate:invalidate")[1] < subscribers:
        assert time.monotonic() < deadline, "subscribers did not follow the failover in 5 s"
        time.sleep(0.05)
    print("subscribers on the new primary %.2f s after the kill" % (time.monotonic() - t_kill))
    r.hset("certgate:reg:reg-" + pki.leaf_inter2.fingerprint[:16], "status", "INACTIVATED")
    t0 = time.monotonic()
    r.publish("certgate:invalidate", pki.leaf_inter2.fingerprint)
    for v, live in lives:
        while live.get(v.httpd.url(GATED), timeout=5).status_code == 200:
            assert time.monotonic() - t0 < 1.0, "revocation not enforced in 1 s (%s)" % v.kind
            time.sleep(0.02)
        print("revocation after the failover enforced in %.2f s (%s)"
              % (time.monotonic() - t0, v.kind))
    assert "CG11004" in gate.httpd.read_log() and "CG11004" in ngate.httpd.read_log()


def test_resubscribe_flushes_what_was_missed(ha, cached, ncached, pki):
    """A revocation published while the subscriber is away is lost; the subscriber's
    flush when it is back is what makes the cache forget (max age is 30 s here)."""
    primary = ha.primary()
    seed_certs(primary.client(), pki)
    lives = [(v, session(v, pki.leaf)) for v in (cached, ncached)]
    for v, live in lives:
        assert live.get(v.httpd.url(GATED), timeout=5).status_code == 200
    r = primary.client()
    p = r.pipeline(transaction=True)
    p.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
    p.hset("certgate:reg:reg-" + pki.leaf.fingerprint[:16], "status", "INACTIVATED")
    p.publish("certgate:invalidate", pki.leaf.fingerprint)
    killed, _, heard = p.execute()
    assert killed >= 2 and heard == 0, (killed, heard)   # nobody heard it
    t0 = time.monotonic()
    for v, live in lives:
        while live.get(v.httpd.url(GATED), timeout=5).status_code == 200:
            assert time.monotonic() - t0 < 2.0, "cache kept a revoked entry (%s)" % v.kind
            time.sleep(0.02)
        print("\nmissed revocation enforced after resubscribe in %.2f s (%s)"
              % (time.monotonic() - t0, v.kind))


METRICS = '<Location "/metrics">\n    SetHandler certgate-metrics\n  </Location>'


@pytest.mark.parametrize("case", ["unknown_master", "unreachable"])
def test_sentinel_failures_logged_and_counted_apart(ha, pki, case):
    """A master name the sentinels do not know and sentinels that do not answer are two
    different failures: own tag, own counter; both answer 503, never 200."""
    if case == "unknown_master":
        conf = ha.store_conf(name="no-such-master")
        tag, other = "CG11002", "CG11001"
    else:
        conf = ha.store_conf(sentinels="127.0.0.1:%d 127.0.0.1:%d"
                             % (harness.free_port(), harness.free_port()))
        tag, other = "CG11001", "CG11002"
    view = View(ha, pki, store_conf=conf, extra_server="CertGateCache Off",
                extra_vhost=METRICS)
    try:
        for _ in range(3):
            assert session(view, pki.leaf).get(view.httpd.url(GATED), timeout=5).status_code == 503
        assert harness.wait_for_line(view.httpd.error_log, tag)
        log = view.httpd.read_log()
        assert other not in log
        metrics = requests.get(view.httpd.url("/metrics"), verify=view.server_ca, timeout=5).text
        line = 'certgate_sentinel_events_total{event="%s"}' % case
        count = [l for l in metrics.splitlines() if l.startswith(line)]
        assert count and int(count[0].split()[-1]) >= 3, metrics
    finally:
        view.close()


@pytest.fixture(scope="module")
def ha_durable():
    """A set of its own: the tests above leave fewer replicas."""
    s = HASet(make_workdir())
    yield s
    s.close()


def test_admin_writes_durable_across_failover(ha_durable, pki):
    """CertGateAdminWaitReplicas 1: a write no replica acknowledged is not reported done
    (503 Store.NotDurable; a retry is safe); an approval and an inactivation acknowledged
    just before kill -9 of the primary survive the failover."""
    ha = ha_durable
    old = ha.primary()
    r = old.client()
    r.flushdb()
    seed(r)
    view = View(ha, pki, extra_server="CertGateCache Off\nCertGateAdminWaitReplicas 1 300")
    try:
        api = Admin(view)
        a = make_cert("ha approved before the kill", issuer=pki.inter)
        b = make_cert("ha inactivated before the kill", issuer=pki.inter)
        c = make_cert("ha inactivated without replicas", issuer=pki.inter)
        resp = api.upload(a)
        assert resp.status_code == 201, resp.text
        cid_a = resp.json()["id"]
        cid_b, cid_c = api.approved(b), api.approved(c)

        replicas = [n for n in ha.nodes if n is not old]
        for n in replicas:
            n.pause()
        try:
            resp = api.call("POST", "/certs/%s/inactivate" % cid_c, "mgr2", json={"reason": "x"})
        finally:
            for n in replicas:
                n.resume()
        assert resp.status_code == 503 and error_code(resp) == "Store.NotDurable", resp.text
        assert "Retrying is safe" in resp.json()["message"]
        # The retry: the change was kept on the master, the answer says so.
        resp = api.call("POST", "/certs/%s/inactivate" % cid_c, "mgr2", json={"reason": "x"})
        assert resp.status_code == 409 and error_code(resp) == "Transition.Illegal", resp.text
        assert r.execute_command("WAIT", 2, 2000) == 2

        assert api.call("POST", "/certs/%s/approve" % cid_a, "mgr1").status_code == 200
        resp = api.call("POST", "/certs/%s/inactivate" % cid_b, "mgr2", json={"reason": "x"})
        assert resp.status_code == 200, resp.text
        old.kill9()
        new = ha.wait_new_primary(old.port)
        assert wait_status(view, a, 200, timeout=5.0) is not None
        for cert in (b, c):
            assert session(view, cert).get(view.httpd.url(GATED), timeout=5).status_code == 403
        assert new.client().hget("certgate:reg:" + cid_b, "status") == b"INACTIVATED"
    finally:
        view.close()


def commandstats(node):
    info = node.client().info("commandstats")
    return {k[len("cmdstat_"):]: v["calls"] for k, v in info.items() if k.startswith("cmdstat_")}


def test_sigstop_primary_comes_back_as_replica(ha, gate, cached, ngate, pki):
    """A partition: the primary stops answering until a new one is elected, then comes
    back. It must come back as a replica, and the gate must neither read from it as
    master nor write to it."""
    old = ha.primary()
    seed_certs(old.client(), pki)
    certs = [(pki.leaf, True), (pki.leaf_b, False), (pki.app_leaf, False)]
    with Load(gate, certs) as load, Load(ngate, certs) as nload:
        time.sleep(0.5)
        t_stop = time.monotonic()
        old.pause()
        new = ha.wait_new_primary(old.port)
        old.resume()
        t_resumed = time.monotonic()
        # Sentinels look at a known replica every 10 s outside a failover.
        deadline = time.monotonic() + 15
        while old.role() != "slave":
            assert time.monotonic() < deadline, "old primary did not become a replica"
            time.sleep(0.05)
        print("\nold primary a replica %.2f s after SIGCONT" % (time.monotonic() - t_resumed))
        old.client().execute_command("CONFIG", "RESETSTAT")
        t_back = time.monotonic()
        time.sleep(2.0)
    for name, l in (("httpd", load), ("nginx", nload)):
        wrong, window, first_ok = figures("SIGSTOP primary (%s)" % name, l, t_stop)
        assert not wrong, wrong[:5]
        after = [e for e in l.since(t_back + 0.5) if e[2]]
        assert after and all(e[3] == 200 for e in after), after[:5]
    # Reads went to the new primary only: the old one saw no lookup since it came back.
    stats = commandstats(old)
    assert not any(stats.get(c) for c in ("get", "hgetall", "hget")), stats
    # A write through the admin API goes to the new primary and succeeds.
    api = Admin(gate)
    resp = api.upload(make_cert("ha sigstop client", issuer=pki.inter), app="app1")
    assert resp.status_code == 201, resp.text
    cid = resp.json()["id"]
    assert new.client().hget("certgate:reg:" + cid, "status") == b"PENDING"
    assert not any(commandstats(old).get(c) for c in ("get", "hgetall", "hget", "exists"))


def test_stale_sentinel_does_not_send_gate_to_old_primary(ha, pki):
    """A sentinel stopped before a failover and restarted after it with its old view
    names the old primary; asked first, it must not keep the gate there."""
    old = ha.primary()
    seed_certs(old.client(), pki)
    stale = ha.sentinels[2]
    stale.stop()
    old.kill9()
    new = ha.wait_new_primary(old.port)
    stale.start(new_port=True, master_port=old.port)   # the others know it by its old address: none tells it
    assert stale.master_port() == old.port, "the restarted sentinel is not stale: test void"
    # A gateway that asks the stale sentinel first.
    view = View(ha, pki, extra_server="CertGateCache Off", order=[2, 0, 1])
    try:
        # Every process's first request already: the refused address costs a retry
        # within the same lookup, not a 503.
        files = files_for(view, pki.leaf)
        got = [requests.get(view.httpd.url(GATED), cert=files, verify=view.server_ca,
                            timeout=5).status_code for _ in range(6)]
        assert got == [200] * 6, (got, view.httpd.read_log()[-3000:])
        for c in (pki.leaf_b, pki.leaf_other, pki.app_leaf):
            assert session(view, c).get(view.httpd.url(GATED), timeout=5).status_code == 403
        log = view.httpd.read_log()
        assert "127.0.0.1:%d" % new.port in log
    finally:
        view.close()


# ---------------------------------------------------------------- bounded stale mode

# One process: each process knows only the registrations it read itself (docs/ha.md).
STALE_CONF = {
    "httpd": dict(extra_server="CertGateOnStoreError stale 30\nCertGateCacheMaxAge 1\n"
                               "StartServers 1\nServerLimit 1\nMaxRequestWorkers 16"),
    "nginx": dict(nginx_args={"workers": 1,
                              "extra_http": "certgate_on_store_error stale 30;\n"
                                            "certgate_cache_max_age 1;"}),
}


@pytest.mark.parametrize("server", ["httpd", "nginx"])
def test_stale_mode_redis_down_10s(pki, server):
    """CertGateOnStoreError stale 30 / certgate_on_store_error stale 30: Redis down 10 s;
    certificates allowed before keep 200; unknown, pending and revoked ones never 200."""
    from conftest import Stack
    stack = Stack(pki, server=server, **STALE_CONF[server])
    try:
        r = stack.r
        r.flushdb()
        register(r, pki.leaf, "app1")                                # allowed before
        register(r, pki.leaf_inter2, "app1")                         # allowed, then revoked
        register(r, pki.leaf_b, "app1", status="PENDING")
        revoked = register(r, pki.leaf_other, "app1")
        for c in (pki.leaf, pki.leaf_inter2, pki.leaf_other):
            assert session(stack, c).get(stack.server.url(GATED), timeout=5).status_code == 200
        r.hset("certgate:reg:" + revoked, "status", "INACTIVATED")
        harness.invalidate(r, pki.leaf_other.fingerprint)
        for c in (pki.leaf_other, pki.leaf_b, pki.app_leaf):
            assert session(stack, c).get(stack.server.url(GATED), timeout=5).status_code == 403
        never_asked = make_cert("ha never asked", issuer=pki.inter)
        certs = [(pki.leaf, True), (pki.leaf_inter2, True), (pki.leaf_other, False),
                 (pki.leaf_b, False), (pki.app_leaf, False), (never_asked, False)]
        stack.redis.stop()
        t0 = time.monotonic()
        seen = {}
        sessions = {c.fingerprint: session(stack, c) for c, _ in certs}
        while time.monotonic() - t0 < 10.0:
            for c, allowed in certs:
                for keepalive in (True, False):
                    if keepalive:
                        st = sessions[c.fingerprint].get(stack.server.url(GATED), timeout=5)
                    else:
                        st = requests.get(stack.server.url(GATED), cert=files_for(stack, c),
                                          verify=stack.server_ca, timeout=5)
                    key = (c.fingerprint[:8], allowed, st.status_code)
                    seen[key] = seen.get(key, 0) + 1
                    if allowed:
                        assert st.status_code == 200, (time.monotonic() - t0, st.status_code)
                    else:
                        assert st.status_code != 200, (c.fingerprint, time.monotonic() - t0)
            time.sleep(0.1)
        print("\nstale mode (%s), Redis down 10 s: %s" % (server, sorted(seen.items())))
        log = stack.server.read_log()
        assert "CG02010" in log and "STALE ALLOW" in log
    finally:
        stack.redis.start()
        stack.close()


# ---------------------------------------------------------------- directives

@pytest.mark.parametrize("line,message", [
    ("CertGateRedisSentinels 10.0.0.1", "CertGateRedisSentinels: sentinel '10.0.0.1': "
                                        "expected host:port"),
    ("CertGateRedisSentinels a:0", "the port must be 1..65535"),
    ("CertGateRedisMasterName 'a b'", "CertGateRedisMasterName: the master name must be "
                                      "printable ASCII without spaces"),
    ("CertGateRedisSentinelTimeout 0", "CertGateRedisSentinelTimeout: expected a whole number"),
    ("CertGateRedisSentinelAuth", "CertGateRedisSentinelAuth takes 1-2 arguments"),
    ("CertGateAdminWaitReplicas 65", "CertGateAdminWaitReplicas: expected a whole number from "
                                     "0 to 64"),
    ("CertGateAdminWaitReplicas 1 0", "expected a whole number from 1 to 60000"),
    ("CertGateOnStoreError stale", "stale needs a number of seconds"),
    ("CertGateOnStoreError stale 0", "expected a whole number from 1 to 86400"),
    ("CertGateOnStoreError deny 5", "only stale takes a number"),
])
def test_bad_ha_directives_stop_startup(line, message):
    rc, err = httpd_config_test(line)
    assert rc != 0
    assert message in err, err


def test_sentinels_without_master_name_stop_startup():
    work = make_workdir()
    conf = os.path.join(work, "nomaster.conf")
    with open(conf, "w") as f:
        f.write('ServerRoot "%s"\nServerName localhost\nPidFile "%s/pid"\nErrorLog "%s/err.log"\n'
                "LoadModule mpm_event_module %s/mod_mpm_event.so\n"
                "LoadModule certgate_module %s\nListen 127.0.0.1:%d\n"
                "CertGateRedisSentinels 127.0.0.1:1\n"
                % (work, work, work, harness.MODDIR, harness.MODULE, harness.free_port()))
    res = subprocess.run([harness.APACHE, "-f", conf, "-DFOREGROUND"], capture_output=True,
                         text=True, timeout=30, env=harness.server_env(work))
    assert res.returncode != 0
    log = open(os.path.join(work, "err.log")).read() + res.stderr
    assert "CG04001" in log and "master name" in log, log
