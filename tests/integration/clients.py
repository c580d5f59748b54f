"""Ways of talking to the gate: requests, curl (HTTP/2), raw ssl (resumption)."""
import socket
import ssl
import subprocess
import threading
import time

import requests


_files_lock = threading.Lock()


def files_for(stack, cert, **kw):
    """Client cert/key files, written once per stack (threads may share them)."""
    name = "c-" + cert.fingerprint[:12] + "".join("-%s%s" % (k, v) for k, v in sorted(kw.items())
                                                 if k != "send_chain")
    if "send_chain" in kw:
        name += "-sc" + "".join(c.fingerprint[:4] for c in kw["send_chain"])
    with _files_lock:
        cache = stack.__dict__.setdefault("_files", {})
        if name not in cache:
            cache[name] = stack.client_files(cert, name, **kw)
        return cache[name]


def get(stack, path, cert=None, headers=None, timeout=10, **kw):
    files = files_for(stack, cert, **kw) if cert is not None else None
    return requests.get(stack.server.url(path), cert=files, verify=stack.server_ca,
                        headers=headers or {}, timeout=timeout)


def session(stack, cert):
    """A keep-alive session presenting cert."""
    s = requests.Session()
    s.trust_env = False     # a CA bundle from the environment must not replace ours
    s.cert = files_for(stack, cert)
    s.verify = stack.server_ca
    return s


def reason_of(resp):
    return resp.headers.get("CertGate-Reason")


def curl(stack, urls, cert=None, http2=True, extra=()):
    """Return a list of (status, http_version) for each URL fetched on one curl run."""
    cmd = ["curl", "-s", "-w", "%{http_code} %{http_version}\\n",
           "--cacert", stack.server_ca, "--max-time", "10"]
    cmd += ["--http2"] if http2 else ["--http1.1"]
    if cert is not None:
        c, k = files_for(stack, cert)
        cmd += ["--cert", c, "--key", k]
    cmd += list(extra)
    for u in urls:
        cmd += ["-o", "/dev/null", stack.server.url(u)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout
    return [tuple(line.split()) for line in out.strip().splitlines()]


def tls_context(stack, cert):
    ctx = ssl.create_default_context(cafile=stack.server_ca)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    c, k = files_for(stack, cert)
    ctx.load_cert_chain(c, k)
    return ctx


def raw_tls(stack, cert):
    """A TLS 1.3 socket to the stack's server with cert, for hand-written requests."""
    sock = socket.create_connection(("127.0.0.1", stack.server.port), timeout=10)
    return tls_context(stack, cert).wrap_socket(sock, server_hostname="localhost")


def assert_revoked_within(stack, cert, reg_id, path, bound_s=1.0):
    """On a live keep-alive connection, what the admin API's inactivate does to
    the store (record, then publish) is enforced within bound_s. Returns the seconds."""
    s = session(stack, cert)
    for _ in range(5):
        assert s.get(stack.server.url(path), timeout=10).status_code == 200
    stack.r.hset("certgate:reg:" + reg_id, "status", "INACTIVATED")
    t0 = time.monotonic()
    stack.r.publish("certgate:invalidate", cert.fingerprint)
    while True:
        resp = s.get(stack.server.url(path), timeout=10)
        if resp.status_code == 403:
            break
        assert time.monotonic() - t0 < bound_s, "still allowed %.1f s after the write" % bound_s
        time.sleep(0.01)
    assert reason_of(resp) == "inactivated"
    return time.monotonic() - t0


def raw_get(stack, ctx, path, session=None):
    """One HTTP/1.1 request on a fresh TLS connection. Returns (status, reused, session)."""
    sock = socket.create_connection(("127.0.0.1", stack.server.port), timeout=10)
    with ctx.wrap_socket(sock, server_hostname="localhost", session=session) as s:
        s.sendall(("GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
                   % path).encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        status = int(data.split(b" ", 2)[1])
        return status, s.session_reused, s.session


def usage_when_counted(stack, reg_id, count, timeout=10.0):
    """The registration's usage hash once its count is `count` (the gateway
    flushes in the background), or what it holds at the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        usage = stack.r.hgetall("certgate:usage:" + reg_id)
        if usage.get(b"count") == str(count).encode() or time.monotonic() > deadline:
            return usage
        time.sleep(0.05)
