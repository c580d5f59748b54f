"""Review of the ha merge (issue 12): durable admin writes (a retry's 409 is waited for
too; the nginx admin API waits for replicas), stale mode (never under shadow refuses,
only when Redis gives no usable answer), and the ROLE check against a sentinel that
names a live replica. Then: a distrusted master's pool dropped when no sentinel answers,
the nginx admin store's sentinel events, nginx's stale window across a rejected reload."""
import time

import pytest

from admin import Admin, error_code, seed
from conftest import make_workdir
from ha import HASet
from pki import make_cert
from test_ha import View


@pytest.fixture(scope="module")
def ha1():
    s = HASet(make_workdir(), replicas=1)
    yield s
    s.close()


def test_retry_of_not_durable_inactivation_is_not_409_while_replicas_lag(ha1, pki):
    old = ha1.primary()
    r = old.client()
    r.flushdb()
    seed(r)
    view = View(ha1, pki, extra_server="CertGateCache Off\nCertGateAdminWaitReplicas 1 300")
    try:
        api = Admin(view)
        c = make_cert("review inactivated without replicas", issuer=pki.inter)
        cid = api.approved(c)
        replicas = [n for n in ha1.nodes if n is not old]
        for n in replicas:
            n.pause()
        try:
            first = api.call("POST", "/certs/%s/inactivate" % cid, "mgr2", json={"reason": "x"})
            retry = api.call("POST", "/certs/%s/inactivate" % cid, "mgr2", json={"reason": "x"})
        finally:
            for n in replicas:
                n.resume()
        assert first.status_code == 503 and error_code(first) == "Store.NotDurable", first.text
        # Still on the master only: the retry must not say the inactivation is in place.
        assert retry.status_code == 503 and error_code(retry) == "Store.NotDurable", retry.text
        assert r.execute_command("WAIT", 1, 2000) == 1
        resp = api.call("POST", "/certs/%s/inactivate" % cid, "mgr2", json={"reason": "x"})
        assert resp.status_code == 409 and error_code(resp) == "Transition.Illegal", resp.text
    finally:
        view.close()


def test_nginx_admin_inactivation_waits_for_replicas(ha1, pki):
    """The nginx admin API (thread pool, the same core handler) must not report an
    inactivation done that no replica acknowledged: certgate_admin_wait_replicas."""
    old = ha1.primary()
    r = old.client()
    r.flushdb()
    seed(r)
    view = View(ha1, pki, kind="nginx",
                extra_server="certgate_admin_wait_replicas 1 300;")
    try:
        api = Admin(view)
        c = make_cert("review nginx inactivated without replicas", issuer=pki.inter)
        cid = api.approved(c)
        replicas = [n for n in ha1.nodes if n is not old]
        for n in replicas:
            n.pause()
        try:
            resp = api.call("POST", "/certs/%s/inactivate" % cid, "mgr2", json={"reason": "x"})
        finally:
            for n in replicas:
                n.resume()
        assert resp.status_code == 503 and error_code(resp) == "Store.NotDurable", resp.text
    finally:
        view.close()


SHADOW_STALE = {
    "httpd": dict(extra_server="CertGateOnStoreError stale 30\nCertGateCacheMaxAge 1\n"
                               "StartServers 1\nServerLimit 1\nMaxRequestWorkers 16",
                  extra_vhost='<Location "/shadow/">\n  CertGate On\n  CertGateMode Shadow\n'
                              '</Location>\n'),
    "nginx": dict(nginx_args={"workers": 1,
                              "extra_http": "certgate_on_store_error stale 30;\n"
                                            "certgate_cache_max_age 1;",
                              "extra_server": "location /shadow/ { certgate on; "
                                              "certgate_mode shadow; }"}),
}


@pytest.mark.parametrize("server", ["httpd", "nginx"])
def test_shadow_never_refuses_with_stale_mode(pki, server):
    """Shadow never refuses, stale mode or not: a registration read before the outage
    that denies (PENDING) must still pass under shadow while Redis is down."""
    import os
    import time
    from clients import session
    from conftest import Stack
    from harness import register
    stack = Stack(pki, server=server, **SHADOW_STALE[server])
    try:
        os.makedirs(os.path.join(stack.work, "htdocs", "shadow"), exist_ok=True)
        with open(os.path.join(stack.work, "htdocs", "shadow", "ok.txt"), "w") as f:
            f.write("ok\n")
        stack.r.flushdb()
        register(stack.r, pki.leaf_b, "app1", status="PENDING")
        url = stack.server.url("/shadow/ok.txt")
        assert session(stack, pki.leaf_b).get(url, timeout=5).status_code == 200
        stack.redis.stop()
        time.sleep(1.3)     # past the cache max age: the store is asked, and fails
        assert session(stack, pki.leaf_b).get(url, timeout=5).status_code == 200
        # Never read: shadow passes it too (the existing store-error path).
        assert session(stack, pki.leaf).get(url, timeout=5).status_code == 200
    finally:
        stack.redis.start()
        stack.close()


@pytest.mark.parametrize("server", ["httpd", "nginx"])
def test_stale_mode_only_when_the_store_fails_to_answer(pki, server):
    """Stale mode is for a store that cannot be asked. A store that answers that the
    record is damaged (WRONGTYPE: corrupt) is no outage: no stale allow."""
    import time
    from clients import session
    from conftest import Stack
    from harness import register
    from test_ha import STALE_CONF
    stack = Stack(pki, server=server, **STALE_CONF[server])
    try:
        r = stack.r
        r.flushdb()
        reg = register(r, pki.leaf, "app1")
        url = stack.server.url("/gated/ok.txt")
        assert session(stack, pki.leaf).get(url, timeout=5).status_code == 200
        p = r.pipeline(transaction=True)
        p.delete("certgate:reg:" + reg)
        p.set("certgate:reg:" + reg, "damaged")
        p.execute()
        time.sleep(1.3)     # past the cache max age: the store is asked
        st = session(stack, pki.leaf).get(url, timeout=5).status_code
        assert st == 503, st
        assert "STALE ALLOW" not in stack.server.read_log()
    finally:
        stack.close()


class LyingSentinel:
    """A sentinel that always names `port` (a live replica): what a stale sentinel says
    once the old primary is back as a replica. Only ROLE can tell the gate."""

    def __init__(self, port):
        import socket
        import threading
        self.answer = b"*2\r\n$9\r\n127.0.0.1\r\n$%d\r\n%d\r\n" % (len(str(port)), port)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        import threading
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        with c:
            while True:
                try:
                    data = c.recv(4096)
                except OSError:
                    return
                if not data:
                    return
                c.sendall(b"+OK\r\n" if b"AUTH" in data.upper() else self.answer)

    def close(self):
        self.sock.close()


@pytest.mark.parametrize("kind", ["httpd", "nginx"])
def test_sentinel_naming_a_live_replica_is_refused_by_role(ha1, pki, kind):
    """The first sentinel names a live replica. The gate must check ROLE, refuse it
    (CG11003) and use the master the next sentinel names: no lookup and no subscriber
    ever on the replica. (The stale-sentinel test in test_ha.py names a killed node, so
    a refused connection hides a missing ROLE check there.)"""
    from clients import session
    from ha import MASTER_NAME, SENTINEL_PASSWORD
    from harness import Redis
    from test_ha import GATED, commandstats, seed_certs
    primary = ha1.primary()
    replica = next(n for n in ha1.nodes if n is not primary)
    seed_certs(primary.client(), pki)
    liar = LyingSentinel(replica.port)
    sentinels = "127.0.0.1:%d %s" % (liar.port, ha1.sentinel_list())
    replica.client().execute_command("CONFIG", "RESETSTAT")
    if kind == "httpd":
        view = View(ha1, pki, extra_server="CertGateCache Off",
                    store_conf=ha1.store_conf(sentinels=sentinels))
    else:
        conf = ("certgate_redis_sentinels %s;\n    certgate_redis_master_name %s;\n"
                "    certgate_redis_sentinel_auth %s;\n    certgate_redis_auth %s;\n"
                "    certgate_redis_db %d;" % (sentinels, MASTER_NAME, SENTINEL_PASSWORD,
                                              Redis.PASSWORD, Redis.DB))
        view = View(ha1, pki, kind="nginx", extra_server="certgate_cache off;")
        view.close()
        import harness
        view.server = view.httpd = harness.Nginx(view.work, view.pki_dir, None, store_conf=conf,
                                                 extra_http="certgate_cache off;").start()
    try:
        got = []
        for _ in range(20):
            got.append(session(view, pki.leaf).get(view.httpd.url(GATED),
                                                   timeout=5).status_code)
        assert got[-5:] == [200] * 5, got
        assert session(view, pki.leaf_b).get(view.httpd.url(GATED), timeout=5).status_code == 403
        stats = commandstats(replica)
        # nginx pipelines the lookup behind ROLE on a new connection: the replica runs
        # that GET, but its answer is dropped with the connection (never used).
        reads = ("hgetall", "hget", "subscribe") + (("get",) if kind == "httpd" else ())
        assert not any(stats.get(c) for c in reads), stats
        assert stats.get("role"), stats     # the check ran on it
        assert "CG11003" in view.httpd.read_log()
    finally:
        view.close()
        liar.close()


def test_nginx_admin_follows_a_failover_without_errors(ha1, pki):
    """SIGSTOP the primary until a replica is promoted, then SIGCONT: the old primary
    still answers ROLE master for seconds. The nginx admin API's store must have
    followed the sentinels meanwhile (as the gate's does): its next write goes to the
    new primary, never to the old one. Runs last: it moves ha1's primary."""
    from test_ha import commandstats
    old = ha1.primary()
    r = old.client()
    r.flushdb()
    seed(r)
    view = View(ha1, pki, kind="nginx")
    try:
        api = Admin(view)
        c = make_cert("review nginx admin across a partition", issuer=pki.inter)
        cid = api.approved(c)
        for _ in range(6):      # pooled admin connections in the workers
            assert api.call("GET", "/certs/%s" % cid, "mgr1").status_code == 200
        old.pause()
        try:
            new = ha1.wait_new_primary(old.port)
            time.sleep(1.5)     # a refresh of the sentinels' answer happens every second
        finally:
            old.resume()
        old.client().execute_command("CONFIG", "RESETSTAT")
        assert old.role() == "master", "old primary already demoted: test void"
        resp = api.call("POST", "/certs/%s/inactivate" % cid, "mgr2", json={"reason": "x"})
        stats = commandstats(old)
        assert not any(k.startswith("eval") for k in stats), stats
        assert resp.status_code == 200, resp.text
        assert new.client().hget("certgate:reg:" + cid, "status") == b"INACTIVATED"
    finally:
        view.close()


def gate_conns(node):
    """The clients of node that are the gate's store connections (lookups, ROLE)."""
    return [c for c in node.client().client_list()
            if c.get("cmd") in ("get", "hgetall", "hget", "role", "auth", "select")
            and "S" not in c.get("flags", "")]


def test_distrusted_master_pool_dropped_when_no_sentinel_answers(pki):
    """Sentinels all down, then a lookup times out on the master (distrust): httpd must
    drop its pooled connections to that master, not read them again once it has become
    a replica (REPLICAOF). Fail closed: 503 until a sentinel confirms a master."""
    import threading
    from clients import session
    from test_ha import GATED, seed_certs
    ha = HASet(make_workdir(), replicas=1)
    view = None
    try:
        m = ha.primary()
        other = next(n for n in ha.nodes if n is not m)
        seed_certs(m.client(), pki)
        view = View(ha, pki, extra_server="CertGateCache Off\nCertGateUsageFlushInterval off\n"
                                          "StartServers 1\nServerLimit 1\nMaxRequestWorkers 16")
        url = view.httpd.url(GATED)
        # Lookups at once, so that the child pools more than one connection to the master.
        for _ in range(10):
            go = threading.Barrier(8)
            got = []

            def ask():
                s = session(view, pki.leaf)
                go.wait()
                got.append(s.get(url, timeout=5).status_code)
            ts = [threading.Thread(target=ask) for _ in range(8)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            assert got == [200] * 8, got
            if len(gate_conns(m)) >= 2:
                break
        assert len(gate_conns(m)) >= 2, m.client().client_list()
        for s in ha.sentinels:
            s.stop()
        m.pause()
        try:
            # One pooled connection times out (CertGateRedisTimeout): the master is distrusted.
            st = session(view, pki.leaf).get(url, timeout=5).status_code
            time.sleep(0.3)
        finally:
            m.resume()
        assert st == 503, st
        assert len(gate_conns(m)) >= 1, "no pooled connection left: test void"
        # The old master becomes a replica that still holds the registrations.
        other.client().execute_command("REPLICAOF", "NO", "ONE")
        m.client().execute_command("REPLICAOF", "127.0.0.1", str(other.port))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            info = m.client().info("replication")
            if info.get("master_link_status") == "up" and m.client().dbsize() > 0:
                break
            time.sleep(0.05)
        assert m.role() == "slave" and m.client().dbsize() > 0
        got = [session(view, pki.leaf).get(url, timeout=5).status_code for _ in range(3)]
        assert got == [503] * 3, got
        log = view.httpd.read_log()
        assert "store_unavailable" in log, log[-2000:]
    finally:
        if view is not None:
            view.close()
        ha.close()


def test_nginx_admin_store_sentinel_events_logged_and_counted(ha1, pki):
    """The nginx admin API's store has its own sentinel client: its events are logged
    (CG11001..CG11005) and counted as the gate's. At start each worker's gate store and
    admin store both find the master: two CG11004 and two switches per worker."""
    import harness
    from clients import session
    view = View(ha1, pki, kind="nginx")
    view.close()
    before = len(view.httpd.read_log())     # the same log file: only the next start's lines
    view.server = view.httpd = harness.Nginx(
        view.work, view.pki_dir, None, store_conf=ha1.nginx_store_conf(), workers=2,
        extra_server="location = /metrics { certgate_metrics; }").start()
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            found = [l for l in view.httpd.read_log()[before:].splitlines()
                     if "CG11004" in l and "(was none)" in l]
            if len(found) >= 4:
                break
            time.sleep(0.1)
        assert len(found) == 4, found
        text = session(view, pki.leaf).get(view.httpd.url("/metrics"), timeout=5).text
        assert 'certgate_sentinel_events_total{event="switch"} 4' in text, text
    finally:
        view.close()


def test_nginx_stale_window_survives_a_rejected_reload(pki):
    """certgate_on_store_error stale 30: a reload whose config is rejected (and has no
    stale window) must not change the window the workers of the running config use.
    A worker the master starts again afterwards still keeps the cached allow."""
    import os
    import signal
    import subprocess
    from clients import session
    from conftest import Stack
    from harness import register
    from test_ha import STALE_CONF

    def worker_pids(master):
        out = subprocess.run(["pgrep", "-P", str(master)], capture_output=True, text=True)
        return set(int(p) for p in out.stdout.split())

    stack = Stack(pki, server="nginx", **STALE_CONF["nginx"])
    try:
        nginx = stack.server
        register(stack.r, pki.leaf, "app1")
        url = nginx.url("/gated/ok.txt")
        with open(nginx.conf) as f:
            good = f.read()
        assert "certgate_on_store_error stale 30;" in good
        with open(nginx.conf, "w") as f:
            f.write(good.replace("certgate_on_store_error stale 30;",
                                 "certgate_no_such_directive on;"))
        try:
            nginx.proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 10
            while "certgate_no_such_directive" not in nginx.read_log():
                assert time.monotonic() < deadline, nginx.read_log()[-2000:]
                time.sleep(0.05)
        finally:
            with open(nginx.conf, "w") as f:
                f.write(good)
        # The master starts a worker again, with the config it runs (not the rejected one).
        old = worker_pids(nginx.proc.pid)
        assert len(old) == 1, old
        os.kill(next(iter(old)), signal.SIGTERM)
        deadline = time.monotonic() + 10
        while True:
            now = worker_pids(nginx.proc.pid)
            if now and not now & old:
                break
            assert time.monotonic() < deadline, "no new worker"
            time.sleep(0.05)
        got = None
        while time.monotonic() < deadline:
            try:
                got = session(stack, pki.leaf).get(url, timeout=5).status_code
                break
            except Exception:
                time.sleep(0.1)
        assert got == 200, got
        stack.redis.stop()
        time.sleep(1.3)     # past the cache max age: the store is asked, and fails
        assert session(stack, pki.leaf).get(url, timeout=5).status_code == 200
        assert "STALE ALLOW" in nginx.read_log()
    finally:
        if stack.redis.proc is None:
            stack.redis.start()
        stack.close()
