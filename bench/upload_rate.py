#!/usr/bin/python3
"""Admin upload rate: certificates registered per second through POST /certs,
with 1,000 and 10,000 registrations already in the store (make bench).

One redis-server and one apache2 as the integration tests start them
(tests/integration conftest.Stack). The existing registrations are written
straight to Redis as the admin API stores them (fields of harness.register), all in the
app the uploads go to, so any per-app work sees them all. Then `--uploads`
new certificates (one key, one intermediate: only the certificates differ) go
up one by one as a developer, on one keep-alive connection, and are timed.
The client is http.client with the bodies encoded beforehand: on two cores
the client's own CPU competes with the server's (python-requests spent about
1.5 ms per call, more than the gateway's admin code). Each round also reports
the CPU time httpd's processes spent per upload (from /proc), which depends
far less on the machine's load than the rate does.
That is one round; `--rounds` rounds run one after the other (each adds its
uploads to the store), and the target is met only if the slowest round meets
it: wall-clock rates on a shared machine vary from round to round.

  /usr/bin/python3 bench/upload_rate.py [--existing 1000,10000] [--uploads 200] [--rounds 5]
"""
import argparse
import base64
import http.client
import json
import os
import ssl
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

import harness  # noqa: E402
from admin import seed  # noqa: E402
from conftest import Stack  # noqa: E402
from pki import PKI, _key, make_cert  # noqa: E402

TARGET = 200.0   # registrations per second (issue 15)


def fill(r, n, app, prefix="certgate:"):
    """n registrations of app, written as harness.register writes them (the
    admin API's fields), pipelined and without its per-write invalidation
    pause: the gateway has cached none of them."""
    now = int(time.time())
    p = r.pipeline(transaction=False)
    for i in range(n):
        rid, fp = "bench-%d" % i, "%064x" % (0xC0FFEE00000 + i)
        p.hset(prefix + "reg:" + rid, mapping={
            "id": rid, "app_id": app, "customer_id": "cust-1", "status": "APPROVED",
            "fingerprint": fp, "chain": "", "valid_from": str(now - 86400),
            "valid_to": str(now + 300 * 86400), "activate_at": "", "retire_at": ""})
        p.set(prefix + "fp:" + fp, rid)
        p.sadd(prefix + "app:" + app, rid)
        p.sadd(prefix + "regs", rid)
        if i % 1000 == 999:
            p.execute()
    p.set(prefix + "schema", "1")
    p.execute()


def httpd_cpu(pidfile):
    """CPU seconds (user + system) of the httpd parent and its children so far,
    those that ended included."""
    with open(pidfile) as f:
        parent = f.read().strip()
    pids = [parent]
    try:
        with open("/proc/%s/task/%s/children" % (parent, parent)) as f:
            pids += f.read().split()
    except OSError:
        pass
    total = 0
    for pid in pids:
        try:
            with open("/proc/%s/stat" % pid) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue            # a child that ended (its time is in the parent's cutime)
        # utime, stime; and cutime, cstime: the children that ended and were reaped.
        total += sum(int(v) for v in fields[11:15])
    return total / os.sysconf("SC_CLK_TCK")


class Client:
    """One keep-alive HTTPS connection posting JSON bodies encoded beforehand."""

    def __init__(self, port, ca, user, password):
        ctx = ssl.create_default_context(cafile=ca)
        self.conn = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=30)
        token = base64.b64encode(("%s:%s" % (user, password)).encode()).decode()
        self.headers = {"Authorization": "Basic " + token, "Content-Type": "application/json",
                        "Accept": "application/json"}

    def post(self, path, body):
        self.conn.request("POST", path, body=body, headers=self.headers)
        resp = self.conn.getresponse()
        data = resp.read()
        if resp.status != 201:
            raise RuntimeError("upload: %d %s" % (resp.status, data[:300]))

    def close(self):
        self.conn.close()


def measure(pki, existing=(1000, 10000), uploads=200, rounds=5):
    key = _key("ec")
    rows = []
    stack = Stack(pki)
    try:
        user = "dev1"
        pidfile = os.path.join(stack.httpd.work, "run", "httpd.pid")
        for n in existing:
            harness.flush_store(stack.r)
            fill(stack.r, n, "app1")
            seed(stack.r)
            client = Client(stack.httpd.port, stack.server_ca, user, stack.httpd.admin_users[user])
            path = "/admin/certs"
            # One upload first: the connection and the child are warm when timing starts.
            warm = make_cert("bench upload warm %d" % n, issuer=pki.inter, key=key)
            client.post(path, json.dumps({"certificate": warm.pem.decode(),
                                          "chain": warm.der_chain_pem(), "appId": "app1"}))
            rates, cpus = [], []
            for k in range(rounds):
                certs = [make_cert("bench upload %d-%d-%d" % (n, k, i), issuer=pki.inter, key=key)
                         for i in range(uploads)]
                bodies = [json.dumps({"certificate": c.pem.decode(), "chain": c.der_chain_pem(),
                                      "appId": "app1"}) for c in certs]
                c0 = httpd_cpu(pidfile)
                t0 = time.monotonic()
                for b in bodies:
                    client.post(path, b)
                dt = time.monotonic() - t0
                cpu = (httpd_cpu(pidfile) - c0) * 1000 / uploads
                rates.append(uploads / dt)
                cpus.append(cpu)
                print("  upload: %d certificates in %.2f s with %d registrations: %.0f/s, "
                      "httpd CPU %.2f ms per upload"
                      % (uploads, dt, n + 1 + k * uploads, uploads / dt, cpu), flush=True)
            client.close()
            rates.sort()
            cpus.sort()
            rows.append({"existing": n, "uploads": uploads, "rounds": rounds, "min": rates[0],
                         "median": rates[len(rates) // 2], "max": rates[-1],
                         "cpu_median": cpus[len(cpus) // 2]})
    finally:
        stack.close()
    return rows


def lines(rows):
    out = ["| existing registrations | uploads per round | rounds | registrations/s: min / median / max "
           "| httpd CPU per upload (median) | target >= %.0f/s (slowest round) |" % TARGET,
           "|---|---|---|---|---|---|"]
    for row in rows:
        out.append("| %d | %d | %d | %.0f / %.0f / %.0f | %.2f ms | %s |" % (
            row["existing"], row["uploads"], row["rounds"], row["min"], row["median"], row["max"],
            row["cpu_median"],
            "met" if row["min"] >= TARGET else "not met: %.0f/s" % row["min"]))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--existing", default="1000,10000")
    ap.add_argument("--uploads", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    rows = measure(PKI(), [int(x) for x in args.existing.split(",")], args.uploads, args.rounds)
    print("\n".join(lines(rows)))


if __name__ == "__main__":
    main()
