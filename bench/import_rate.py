#!/usr/bin/python3
"""Registrations imported per second at 10,000 (run by hand, not by make test).

Starts one redis-server and one apache2 as the integration tests do
(tests/integration conftest.Stack), generates N client certificates under one
intermediate (one key for all leaves: only the certificates differ), and
imports them through POST /import in batches, as a manager without a customer:

  1. dry run on the empty store: reading, owner and policy, the script's checks;
  2. the import itself;
  3. the same import again: every record unchanged.

Prints registrations per second for each, and the CPU time httpd and Redis
spent per record (from /proc), so a slow run says where the time went.

  /usr/bin/python3 bench/import_rate.py [--count 10000] [--batch 500]
"""
import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

from admin import Admin, seed  # noqa: E402
from conftest import Stack  # noqa: E402
from pki import PKI, _key, make_cert  # noqa: E402
from upload_rate import httpd_cpu  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_of(match):
    """CPU seconds (user + system) of the processes whose command line holds match
    (Redis here; httpd's, whose children come and go, by httpd_cpu)."""
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as f:
                if match.encode() not in f.read():
                    continue
            with open("/proc/%s/stat" % pid) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            continue
    return total / TICK


def run(api, items, batch, query, stack):
    counts = {"created": 0, "unchanged": 0, "errors": 0}
    pidfile = os.path.join(stack.httpd.work, "run", "httpd.pid")
    cpu0 = (httpd_cpu(pidfile), cpu_of("redis-server"))
    t0 = time.monotonic()
    for i in range(0, len(items), batch):
        resp = api.call("POST", "/import" + query, "mgr1", json={"items": items[i:i + batch]},
                        timeout=600)
        if resp.status_code != 200:
            raise SystemExit("batch %d: %d %s" % (i // batch, resp.status_code, resp.text[:500]))
        out = resp.json()
        for k in counts:
            counts[k] += out[k]
    dt = time.monotonic() - t0
    cpu1 = (httpd_cpu(pidfile), cpu_of("redis-server"))
    return dt, counts, cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=10000)
    ap.add_argument("--batch", type=int, default=500)
    args = ap.parse_args()

    pki = PKI()
    t0 = time.monotonic()
    key = _key("ec")
    certs = [make_cert("bench import %d" % i, issuer=pki.inter, key=key)
             for i in range(args.count)]
    chain = certs[0].der_chain_pem()
    items = [{"certificate": c.pem.decode(), "chain": chain, "appId": "app1"} for c in certs]
    print("generated %d certificates in %.1f s" % (len(certs), time.monotonic() - t0))

    stack = Stack(pki)
    try:
        seed(stack.r)
        api = Admin(stack)
        n = len(items)
        for name, query, want in (("dry run", "?dryRun=1", "created"),
                                  ("import", "", "created"),
                                  ("re-import", "", "unchanged")):
            dt, counts, cpu_httpd, cpu_redis = run(api, items, args.batch, query, stack)
            if counts[want] != n or counts["errors"]:
                raise SystemExit("%s: %s" % (name, counts))
            print("%-10s %6d records in %6.2f s: %7.1f registrations/s; CPU per record: "
                  "httpd %.2f ms, redis %.2f ms" % (name, n, dt, n / dt,
                                                    1000 * cpu_httpd / n, 1000 * cpu_redis / n))
        assert stack.r.scard("certgate:regs") == n
        assert stack.r.xlen("certgate:events") == n
    finally:
        stack.close()


if __name__ == "__main__":
    main()
