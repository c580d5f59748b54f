"""Review of the kept chain certificates round (issue 15): the upload bench's
httpd CPU measure (bench/upload_rate.py)."""
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import upload_rate  # noqa: E402

# A parent that forks a child; the child waits for "go", burns CPU, exits and
# is reaped (as an httpd child that ends during a round), then "done".
PARENT = r"""
import os, sys, time
d = sys.argv[1]
pid = os.fork()
if pid == 0:
    while not os.path.exists(os.path.join(d, "go")):
        time.sleep(0.01)
    t = time.process_time()
    while time.process_time() - t < 0.5:
        pass
    os._exit(0)
os.waitpid(pid, 0)
open(os.path.join(d, "done"), "w").close()
time.sleep(60)
"""


def _children(pid):
    with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
        return f.read().split()


def test_the_upload_bench_counts_the_cpu_of_a_child_that_ended(tmp_path):
    # httpd_cpu says a child that ended has its time in the parent's cutime:
    # the round's CPU must still hold the half second the child spent.
    proc = subprocess.Popen([sys.executable, "-c", PARENT, str(tmp_path)])
    try:
        pidfile = tmp_path / "httpd.pid"
        pidfile.write_text("%d\n" % proc.pid)
        deadline = time.monotonic() + 10
        while not _children(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _children(proc.pid), "the child did not start"
        before = upload_rate.httpd_cpu(str(pidfile))
        (tmp_path / "go").touch()
        while not (tmp_path / "done").exists() and time.monotonic() < deadline + 20:
            time.sleep(0.01)
        assert (tmp_path / "done").exists(), "the child did not end"
        spent = upload_rate.httpd_cpu(str(pidfile)) - before
        assert spent >= 0.4, spent
    finally:
        proc.kill()
        proc.wait()
