"""A Redis HA set on loopback for the failover tests: one primary, replicas and
sentinels, real redis-server and redis-sentinel processes started and stopped
by PID like harness.py does."""
import os
import signal
import subprocess
import time

import redis as redis_py

from harness import Redis, free_port, stop_pid, wait_port

MASTER_NAME = "cgm"
SENTINEL_PASSWORD = "test-sentinel-secret"


class Node:
    """One redis-server; data-node password as harness.Redis (requirepass and masterauth)."""

    def __init__(self, workdir, name, replicaof=None):
        self.dir = os.path.join(workdir, name)
        os.makedirs(self.dir, exist_ok=True)
        self.port = free_port()
        self.replicaof = replicaof
        self.proc = None

    def start(self):
        cmd = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
               "--save", "", "--appendonly", "no", "--dir", self.dir,
               "--requirepass", Redis.PASSWORD, "--masterauth", Redis.PASSWORD,
               "--daemonize", "no", "--logfile", os.path.join(self.dir, "redis.log"),
               "--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0"]
        if self.replicaof is not None:
            cmd += ["--replicaof", "127.0.0.1", str(self.replicaof)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, self.proc)
        return self

    def kill9(self):
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=5)
        self.proc = None

    def pause(self):
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self):
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self):
        stop_pid(self.proc)
        self.proc = None

    def client(self, db=Redis.DB):
        return redis_py.Redis(host="127.0.0.1", port=self.port, password=Redis.PASSWORD, db=db,
                              socket_timeout=2)

    def role(self):
        # A node that changes role closes its clients' connections: say so, the caller polls.
        try:
            return self.client().execute_command("ROLE")[0].decode()
        except (redis_py.exceptions.ConnectionError, redis_py.exceptions.TimeoutError):
            return "changing"


class Sentinel:
    def __init__(self, workdir, name, master_port, quorum):
        self.dir = os.path.join(workdir, name)
        os.makedirs(self.dir, exist_ok=True)
        self.port = free_port()
        self.conf = os.path.join(self.dir, "sentinel.conf")
        self.master_port0, self.quorum = master_port, quorum
        self.proc = None

    def _text(self):
        master_port, quorum = self.master_port0, self.quorum
        return ("port %d\nbind 127.0.0.1\ndaemonize no\ndir %s\nlogfile %s\n"
                    "requirepass %s\nsentinel sentinel-pass %s\n"
                    "sentinel monitor %s 127.0.0.1 %d %d\n"
                    "sentinel auth-pass %s %s\n"
                    "sentinel down-after-milliseconds %s 1000\n"
                    "sentinel failover-timeout %s 3000\n"
                    "sentinel parallel-syncs %s 2\n"
                    % (self.port, self.dir, os.path.join(self.dir, "sentinel.log"),
                       SENTINEL_PASSWORD, SENTINEL_PASSWORD, MASTER_NAME, master_port, quorum,
                       MASTER_NAME, Redis.PASSWORD, MASTER_NAME, MASTER_NAME, MASTER_NAME))

    def start(self, new_port=False, master_port=None):
        """From the first config, knowing no replica or other sentinel (sentinels rewrite
        their file as they learn). With new_port, after a failover whose old primary is
        dead, no one tells it of the new primary: it stays stale."""
        if new_port:
            self.port = free_port()
        if master_port is not None:
            self.master_port0 = master_port
        with open(self.conf, "w") as f:
            f.write(self._text())
        self.proc = subprocess.Popen(["redis-sentinel", self.conf], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_port(self.port, self.proc)
        return self

    def stop(self):
        stop_pid(self.proc)
        self.proc = None

    def client(self):
        return redis_py.Redis(host="127.0.0.1", port=self.port, password=SENTINEL_PASSWORD,
                              socket_timeout=1)

    def master_port(self):
        try:
            a = self.client().execute_command("SENTINEL", "get-master-addr-by-name", MASTER_NAME)
        except redis_py.RedisError:
            return None
        return int(a[1]) if a else None


class HASet:
    """1 primary + `replicas` replicas + `sentinels` sentinels (quorum 2)."""

    def __init__(self, workdir, replicas=2, sentinels=3):
        self.work = workdir
        self.nodes = [Node(workdir, "redis0").start()]
        for i in range(replicas):
            self.nodes.append(Node(workdir, "redis%d" % (i + 1),
                                   replicaof=self.nodes[0].port).start())
        self.wait_replicas(self.nodes[0], replicas)
        self.sentinels = [Sentinel(workdir, "sentinel%d" % i, self.nodes[0].port, 2).start()
                          for i in range(sentinels)]
        self.wait_sentinels_agree(self.nodes[0].port, timeout=10)

    def node_at(self, port):
        return next(n for n in self.nodes if n.port == port)

    def primary(self):
        """The node the (running) sentinels name."""
        for s in self.sentinels:
            if s.proc is not None:
                p = s.master_port()
                if p is not None:
                    return self.node_at(p)
        raise RuntimeError("no sentinel names a master")

    def wait_replicas(self, node, n, timeout=10.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = node.client().info("replication")
            if info.get("connected_slaves", 0) >= n and all(
                    info.get("slave%d" % i, {}).get("state") == "online" for i in range(n)):
                return
            time.sleep(0.05)
        raise RuntimeError("replicas not online on %d" % node.port)

    def wait_sentinels_agree(self, port, timeout=10.0, need_replicas=True):
        """All running sentinels name port and (need_replicas) know its replicas and each other."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ok = True
            for s in self.sentinels:
                if s.proc is None:
                    continue
                if s.master_port() != port:
                    ok = False
                    break
                if need_replicas:
                    m = s.client().execute_command("SENTINEL", "master", MASTER_NAME)
                    d = dict(zip(m[::2], m[1::2]))
                    if int(d[b"num-other-sentinels"]) < len(self.sentinels) - 1:
                        ok = False
                        break
            if ok:
                return
            time.sleep(0.1)
        raise RuntimeError("sentinels do not agree on %d" % port)

    def wait_new_primary(self, old_port, timeout=15.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for s in self.sentinels:
                if s.proc is not None:
                    p = s.master_port()
                    if p is not None and p != old_port:
                        return self.node_at(p)
            time.sleep(0.05)
        raise RuntimeError("no failover from %d" % old_port)

    def sentinel_list(self, order=None):
        order = order if order is not None else range(len(self.sentinels))
        return " ".join("127.0.0.1:%d" % self.sentinels[i].port for i in order)

    def store_conf(self, order=None, name=MASTER_NAME, sentinels=None):
        return ("CertGateRedisSentinels %s\nCertGateRedisMasterName %s\n"
                "CertGateRedisSentinelAuth %s\nCertGateRedisAuth %s\nCertGateRedisDB %d"
                % (sentinels or self.sentinel_list(order), name, SENTINEL_PASSWORD,
                   Redis.PASSWORD, Redis.DB))

    def nginx_store_conf(self, order=None):
        return ("certgate_redis_sentinels %s;\n    certgate_redis_master_name %s;\n"
                "    certgate_redis_sentinel_auth %s;\n    certgate_redis_auth %s;\n"
                "    certgate_redis_db %d;"
                % (self.sentinel_list(order), MASTER_NAME, SENTINEL_PASSWORD, Redis.PASSWORD,
                   Redis.DB))

    def close(self):
        for s in self.sentinels:
            s.stop()
        for n in self.nodes:
            if n.proc is not None:
                n.resume()
            n.stop()
