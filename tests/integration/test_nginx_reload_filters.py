"""nginx: a reload that fails leaves the master on its old configuration, but
the output filter chain (global) is the failed configuration's. A worker the
master starts again after that serves the old configuration with that chain:
the gate's header filter, which checks an app named by a variable when a
location answers in the rewrite phase, must be in it whatever the failed
configuration said."""
import os
import re
import signal
import socket
import subprocess
import time

import pytest

from clients import get, reason_of
from conftest import Stack
from harness import register

SERVER = """
location /retvar/ {
    set $appv $arg_app;
    certgate on;
    certgate_app_from variable $appv;
    return 200 "returned\\n";
}
"""


@pytest.fixture()
def stack(pki):
    s = Stack(pki, server="nginx", nginx_args={"extra_server": SERVER})
    yield s
    s.close()


def workers(master):
    out = subprocess.run(["pgrep", "-P", str(master)], capture_output=True, text=True).stdout
    return sorted(int(p) for p in out.split())


def wait_for(pred, timeout=20.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = pred()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError("timed out")


def test_respawned_worker_after_a_failed_reload_checks_the_app(stack, pki):
    register(stack.r, pki.leaf, "app1")
    assert get(stack, "/retvar/?app=app1", pki.leaf).status_code == 200
    resp = get(stack, "/retvar/?app=app2", pki.leaf)
    assert resp.status_code == 403 and reason_of(resp) == "app_mismatch"

    # The new configuration names no app by variable (and has no gate), and
    # fails after its http block: it listens on a port another socket holds.
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        conf = open(stack.server.conf).read()
        failed = re.sub(r"certgate_app_from variable \$appv;", "", conf)
        failed = failed.replace("certgate on;", "")
        failed = failed.rstrip().rstrip("}") + (
            "    server { listen 127.0.0.1:%d; return 204; }\n}\n" % busy.getsockname()[1])
        with open(stack.server.conf, "w") as f:
            f.write(failed)
        master = stack.server.proc.pid
        before = workers(master)
        log_at = len(stack.server.read_log())
        os.kill(master, signal.SIGHUP)
        wait_for(lambda: "Address already in use" in stack.server.read_log()[log_at:])
        # Workers the master starts again serve the old configuration (a
        # worker told to quit on its own is started again, like a crashed one).
        for pid in before:
            os.kill(pid, signal.SIGQUIT)
        wait_for(lambda: (lambda w: len(w) == len(before) and not set(w) & set(before))(
            workers(master)))
        with open(stack.server.conf, "w") as f:
            f.write(conf)
    finally:
        busy.close()
    for _ in range(4):      # whichever worker answers
        assert get(stack, "/retvar/?app=app1", pki.leaf).status_code == 200
        resp = get(stack, "/retvar/?app=app2", pki.leaf)
        assert resp.status_code == 403 and reason_of(resp) == "app_mismatch", resp.status_code
