#!/usr/bin/python3
"""The rare SEGV in mod_mpm_event while httpd stops its children: how often,
and with which part of the configuration, with mod_certgate NOT loaded.

Each cycle starts apache2 with the integration harness's configuration minus
every mod_certgate line (LoadModule and directives), sends requests with client
certificates (keep-alive and one-request connections), sends SIGTERM to the
parent while the requests keep coming (or, with the "idle" variant, after
they stopped), and counts "exit signal" lines in the error log and ASan SEGV
reports (--asan: the runtime preloaded as make test-asan does).

  /usr/bin/python3 tests/soak/shutdown_segv.py --cycles 100 --variants base,no-h2
"""
import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

if "--asan" in sys.argv:
    os.environ["CERTGATE_SANITIZE"] = "asan"   # read by harness at import
    # The module-loaded variants: the ASan build, as make test-asan loads it.
    os.environ.setdefault("CERTGATE_MODULE", os.path.join(ROOT, "build", "asan", "mod_certgate.so"))

import requests  # noqa: E402
import urllib3  # noqa: E402

import harness  # noqa: E402
from pki import PKI  # noqa: E402

urllib3.disable_warnings()


def strip_module(conf):
    """The harness config with no trace of mod_certgate."""
    gate = re.compile(r"certgate_module|^\s*CertGate|certgate-admin|CERTGATE_|certgate:debug")
    return "\n".join(l for l in conf.splitlines() if not gate.search(l)) + "\n"


def drop(patterns):
    def edit(conf):
        return "\n".join(l for l in conf.splitlines()
                         if not any(re.search(p, l) for p in patterns)) + "\n"
    return edit


# name -> (config edit, traffic: "in-flight" at SIGTERM, "before" and stopped
# 0.3 s before it, "none": SIGTERM as soon as httpd logged AH00489)
VARIANTS = {
    "base": (lambda c: c, "in-flight"),
    "idle": (lambda c: c, "before"),
    "early": (lambda c: c, "none"),
    "h2": (lambda c: c, "in-flight+h2"),
    "graceful": (lambda c: c, "in-flight+graceful"),
    # Requests stopped, keep-alive connections left open (as the suite leaves them).
    "idle-open": (lambda c: c, "before+open"),
    # For comparison, the harness config as the suite runs it: mod_certgate
    # loaded (Redis running), /gated/ gated; and the same with its threads off.
    "module": (None, "in-flight"),
    "module-nothreads": ("CertGateCache Off\nCertGateExpiryWarnDays off\n"
                         "CertGateUsageFlushInterval off", "in-flight"),
    "module-idle-open": (None, "before+open"),
    "no-h2": (drop([r"http2_module", r"Protocols h2"]), "in-flight"),
    "no-scache": (drop([r"SSLSessionCache"]), "in-flight"),
    "no-limits": (drop([r"^StartServers", r"^ServerLimit", r"^ThreadsPerChild",
                        r"^MaxRequestWorkers"]), "in-flight"),
    "no-keepalive": (lambda c: c.replace("TypesConfig /dev/null",
                                         "TypesConfig /dev/null\nKeepAlive Off"), "in-flight"),
}


def h2_traffic(server, files, ca, stop):
    """HTTP/2 (curl): several streams on one connection, again and again."""
    cmd = ["curl", "-s", "--http2", "--cacert", ca, "--cert", files[0], "--key", files[1],
           "--max-time", "3"]
    for _ in range(10):
        cmd += ["-o", "/dev/null", server.url("/gated/ok.txt")]
    while not stop.is_set():
        subprocess.run(cmd, capture_output=True)


def traffic(server, files, ca, stop, keepalive, hold):
    s = requests.Session()
    hold.append(s)      # closed only when the cycle ends
    s.trust_env = False
    s.cert, s.verify = files, ca
    while not stop.is_set():
        try:
            if keepalive:
                s.get(server.url("/gated/ok.txt"), timeout=3)
            else:
                requests.get(server.url("/open/ok.txt"), cert=files, verify=ca, timeout=3,
                             headers={"Connection": "close"})
        except requests.RequestException:
            time.sleep(0.01)


def cycle(base_work, pki, n, edit, in_flight, load_s, redis=None):
    work = tempfile.mkdtemp(prefix="segv-", dir=base_work)
    os.chmod(work, 0o755)
    pki_dir = os.path.join(work, "pki")
    os.makedirs(pki_dir)
    os.chmod(pki_dir, 0o755)
    pki.server.write(pki_dir, "server", send_chain=[])
    ca = pki.server_ca.write(pki_dir, "server-ca")[0]
    files = pki.leaf.write(pki_dir, "client")
    if redis is not None:   # module variants: edit is extra server config
        httpd = harness.Httpd(work, pki_dir, redis, extra_server=edit or "")
    else:
        # No Redis: the module is not loaded. store_conf="" keeps its lines out.
        httpd = harness.Httpd(work, pki_dir, harness.Redis(work), store_conf="")
        with open(httpd.conf) as f:
            conf = edit(strip_module(f.read()))
        with open(httpd.conf, "w") as f:
            f.write(conf)
    httpd.start()
    stop = threading.Event()
    hold = [] if "open" in in_flight else None
    threads = [threading.Thread(target=traffic, args=(httpd, files, ca, stop, ka,
                                                      hold if hold is not None else []),
                                daemon=True)
               for ka in (True, True, False, False)] if in_flight != "none" else []
    if "h2" in in_flight:
        threads.append(threading.Thread(target=h2_traffic, args=(httpd, files, ca, stop),
                                        daemon=True))
    for t in threads:
        t.start()
    if threads:
        time.sleep(load_s)
    if "graceful" in in_flight:
        os.kill(httpd.proc.pid, signal.SIGUSR1)
        time.sleep(0.5)
    if in_flight.startswith("before"):
        stop.set()
        for t in threads:
            t.join(timeout=5)
        time.sleep(0.3)
    httpd.stop()
    stop.set()
    for t in threads:
        t.join(timeout=5)
    for sess in hold or []:
        sess.close()
    log = httpd.read_log()
    crashes = [l for l in log.splitlines() if "exit signal" in l]
    asan = []
    for name in os.listdir(os.path.join(work, "logs")):
        if name.startswith("asan"):
            text = open(os.path.join(work, "logs", name), errors="replace").read()
            if text.strip():
                asan.append(text)
    return work, crashes, asan


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cycles", type=int, default=100)
    p.add_argument("--variants", default="base")
    p.add_argument("--load-seconds", type=float, default=0.8)
    p.add_argument("--asan", action="store_true")
    p.add_argument("--keep-crashes", default="",
                   help="copy the logs of crashing cycles into this directory")
    args = p.parse_args()
    pki = PKI()
    base_work = tempfile.mkdtemp(prefix="cg-segv-runs-")
    os.chmod(base_work, 0o755)
    rows = []
    try:
        for name in args.variants.split(","):
            edit, in_flight = VARIANTS[name]
            redis = None
            if name.startswith("module"):
                redis = harness.Redis(base_work).start()
            n_crash = n_cycles = 0
            frames = {}
            t0 = time.monotonic()
            for i in range(args.cycles):
                work, crashes, asan = cycle(base_work, pki, i, edit, in_flight,
                                            args.load_seconds, redis)
                n_cycles += 1
                if crashes or asan:
                    n_crash += 1
                    for text in asan:
                        m = re.search(r"#0 0x[0-9a-f]+ in (\S+)", text)
                        f = (m.group(1) if m else "?") + \
                            (" (frame of ours)" if "cg_" in text else "")
                        frames[f] = frames.get(f, 0) + 1
                    print("  %s cycle %d: %s %s" % (name, i, crashes[:2],
                                                  [a.splitlines()[2:4] for a in asan][:1]),
                          flush=True)
                    if args.keep_crashes:
                        shutil.copytree(os.path.join(work, "logs"), os.path.join(
                            args.keep_crashes, "%s-%d" % (name, i)), dirs_exist_ok=True)
                shutil.rmtree(work, ignore_errors=True)
            if redis is not None:
                redis.stop()
            rows.append((name, in_flight, n_cycles, n_crash, frames, time.monotonic() - t0))
            print("%-13s in-flight=%-5s stops %4d  with a crash %3d  %s (%.0f s)" % (
                name, in_flight, n_cycles, n_crash, frames, rows[-1][-1]), flush=True)
    finally:
        shutil.rmtree(base_work, ignore_errors=True)
    print("\nvariant        requests at stop  stops  with a crash  top ASan frame")
    for name, in_flight, n, c, frames, _ in rows:
        print("%-14s %-17s %6d %13d  %s" % (name, in_flight, n, c,
                                           ", ".join("%s x%d" % kv for kv in frames.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
