#!/usr/bin/python3
"""Admin upload rate: certificates registered per second through POST /certs,
with 1,000 and 10,000 registrations already in the store (make bench).

One redis-server and one apache2 as the integration tests start them
(tests/integration conftest.Stack). The existing registrations are written
straight to Redis as the admin API stores them (fields of harness.register), all in the
app the uploads go to, so any per-app work sees them all. Then `--uploads`
new certificates (one key, one intermediate: only the certificates differ) go
up one by one as a developer, on one keep-alive connection, and are timed.
That is one round; `--rounds` rounds run one after the other (each adds its
uploads to the store), and the target is met only if the slowest round meets
it: wall-clock rates on a shared machine vary from round to round.

  /usr/bin/python3 bench/upload_rate.py [--existing 1000,10000] [--uploads 200] [--rounds 5]
"""
import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

import requests  # noqa: E402

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


def measure(pki, existing=(1000, 10000), uploads=200, rounds=5):
    key = _key("ec")
    rows = []
    stack = Stack(pki)
    try:
        user = "dev1"
        auth = (user, stack.httpd.admin_users[user])
        for n in existing:
            harness.flush_store(stack.r)
            fill(stack.r, n, "app1")
            seed(stack.r)
            s = requests.Session()
            s.trust_env = False
            s.verify = stack.server_ca
            s.auth = auth
            url = stack.httpd.url("/admin/certs")
            # One upload first: the connection and the child are warm when timing starts.
            warm = make_cert("bench upload warm %d" % n, issuer=pki.inter, key=key)
            resp = s.post(url, json={"certificate": warm.pem.decode(),
                                     "chain": warm.der_chain_pem(), "appId": "app1"}, timeout=30)
            if resp.status_code != 201:
                raise RuntimeError("upload: %d %s" % (resp.status_code, resp.text[:300]))
            rates = []
            for k in range(rounds):
                certs = [make_cert("bench upload %d-%d-%d" % (n, k, i), issuer=pki.inter, key=key)
                         for i in range(uploads)]
                bodies = [{"certificate": c.pem.decode(), "chain": c.der_chain_pem(),
                           "appId": "app1"} for c in certs]
                t0 = time.monotonic()
                for b in bodies:
                    resp = s.post(url, json=b, timeout=30)
                    if resp.status_code != 201:
                        raise RuntimeError("upload: %d %s" % (resp.status_code, resp.text[:300]))
                dt = time.monotonic() - t0
                rates.append(uploads / dt)
                print("  upload: %d certificates in %.2f s with %d registrations: %.0f/s"
                      % (uploads, dt, n + 1 + k * uploads, uploads / dt), flush=True)
            rates.sort()
            rows.append({"existing": n, "uploads": uploads, "rounds": rounds, "min": rates[0],
                         "median": rates[len(rates) // 2], "max": rates[-1]})
    finally:
        stack.close()
    return rows


def lines(rows):
    out = ["| existing registrations | uploads per round | rounds | registrations/s: min / median / max "
           "| target >= %.0f/s (slowest round) |" % TARGET, "|---|---|---|---|---|"]
    for row in rows:
        out.append("| %d | %d | %d | %.0f / %.0f / %.0f | %s |" % (
            row["existing"], row["uploads"], row["rounds"], row["min"], row["median"], row["max"],
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
