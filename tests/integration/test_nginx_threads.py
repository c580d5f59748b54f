"""nginx without sentinels runs no thread of ours: the usage flush and the
invalidation subscriber run on the worker's event loop (nginx/ngx_certgate_bg.c).
A worker that once had a second thread keeps glibc's multi-threaded paths
(asynccancel around every syscall, malloc's arenas) for good, so the thread
count is what these check, with the work the threads used to do: usage written,
revocations heard on a live connection, the subscriber back after a Redis
restart with the cache flushed.

For contrast: with certgate_redis_sentinels the worker keeps the subscriber,
usage and sentinel threads (test_ha.py, test_ha_review.py cover that path)."""
import os
import re
import signal
import time

import pytest

from clients import assert_revoked_within, reason_of, session
from conftest import Stack
from harness import flush_store, register

GATED = "/gated/ok.txt"
MAX_AGE = 30        # long: only a flush or a message can end a cached entry here
ADMIN_BLOCKS = re.compile(r"\n\s*# The admin API with.*?# cg-threads: end of admin\n", re.S)


def threadless_stack(pki, interval):
    """One worker, no thread pool: the harness's config less its thread_pool line
    and its admin locations (certgate_admin makes nginx start a pool of threads)."""
    s = Stack(pki, server="nginx", nginx_args={
        "workers": 1,
        "extra_http": "certgate_usage_flush_interval %d;\n    certgate_cache_max_age %d;"
                      % (interval, MAX_AGE),
        "extra_server": "# cg-threads: end of admin"})
    s.server.stop()
    with open(s.server.conf) as f:
        conf = f.read()
    conf = conf.replace("thread_pool default threads=4;", "")
    conf, n = ADMIN_BLOCKS.subn("\n", conf)
    assert n == 1 and not re.search(r"^\s*(certgate_admin|thread_pool)\b", conf, re.M), conf
    with open(s.server.conf, "w") as f:
        f.write(conf)
    s.server.start()
    return s


@pytest.fixture(scope="module")
def stack(pki):
    s = threadless_stack(pki, 1)
    yield s
    s.close()


@pytest.fixture(autouse=True)
def clean(stack):
    flush_store(stack.r)


def workers(master_pid):
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name) as f:
                stat = f.read()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == master_pid:
            pids.append(int(name))
    return pids


def threads(pid):
    return len(os.listdir("/proc/%d/task" % pid))


def until(fn, limit):
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        if fn():
            return time.monotonic() - t0
        time.sleep(0.02)
    return None


def count_in_log(stack, tag):
    return len(re.findall(tag, stack.server.read_log()))


def usage(stack, reg_id):
    return {k.decode(): v.decode()
            for k, v in stack.r.hgetall("certgate:usage:" + reg_id).items()}


def test_worker_runs_one_thread_after_gated_requests_and_a_flush(stack, pki):
    # A registration id of its own: hits of other tests may still be flushed.
    reg_id = register(stack.r, pki.leaf, "app1", reg_id="reg-threads-one")
    s = session(stack, pki.leaf)
    for _ in range(10):
        assert s.get(stack.server.url(GATED), timeout=10).status_code == 200
    # A usage flush interval (1 s) passes: the batch went out on the event loop.
    assert until(lambda: usage(stack, reg_id).get("count") == "10", 3.0) is not None
    pids = workers(stack.server.proc.pid)
    assert len(pids) == 1, pids
    assert threads(pids[0]) == 1, os.listdir("/proc/%d/task" % pids[0])
    assert count_in_log(stack, "CG07001") >= 1


def test_revocation_on_a_live_keepalive_connection_within_1s(stack, pki):
    assert_revoked_within(stack, pki.leaf, register(stack.r, pki.leaf, "app1"), GATED)


def test_usage_count_and_last_seen_after_the_interval(stack, pki):
    reg_id = register(stack.r, pki.leaf, "app1", reg_id="reg-threads-usage")
    s = session(stack, pki.leaf)
    t0 = int(time.time())
    for _ in range(7):
        assert s.get(stack.server.url(GATED), timeout=10).status_code == 200
    assert until(lambda: usage(stack, reg_id).get("count") == "7", 3.0) is not None
    u = usage(stack, reg_id)
    assert t0 <= int(u["last_seen"]) <= int(time.time()), u
    assert u["last_ip"] == "127.0.0.1", u
    # The next interval adds to it.
    for _ in range(3):
        assert s.get(stack.server.url(GATED), timeout=10).status_code == 200
    assert until(lambda: usage(stack, reg_id).get("count") == "10", 3.0) is not None


def test_final_usage_batch_is_written_at_quit(pki):
    # An interval no test waits for: only the worker's exit writes the batch. A
    # non-cancelable timer would also hold the quit for that long.
    s = threadless_stack(pki, 3600)
    try:
        reg_id = register(s.r, pki.leaf, "app1")
        c = session(s, pki.leaf)
        for _ in range(5):
            assert c.get(s.server.url(GATED), timeout=10).status_code == 200
        c.close()
        assert usage(s, reg_id) == {}
        t0 = time.monotonic()
        os.kill(s.server.proc.pid, signal.SIGQUIT)
        s.server.proc.wait(timeout=10)
        assert time.monotonic() - t0 < 5, "the quit waited for a timer"
        s.server.proc = None
        assert usage(s, reg_id).get("count") == "5"
        log = s.server.read_log()
        assert "open socket" not in log and "aborting" not in log, log[-2000:]
    finally:
        s.close()


def test_subscriber_back_after_a_redis_restart(stack, pki):
    register(stack.r, pki.leaf, "app1")
    s = session(stack, pki.leaf)
    for _ in range(3):
        assert s.get(stack.server.url(GATED), timeout=10).status_code == 200
    subscribed = count_in_log(stack, "CG07001")
    dropped = count_in_log(stack, "CG08002")
    stack.redis.stop()
    assert until(lambda: count_in_log(stack, "CG07002") > 0, 3.0) is not None
    # Served from the cache; its usage cannot be written: dropped, logged.
    assert s.get(stack.server.url(GATED), timeout=10).status_code == 200
    assert until(lambda: count_in_log(stack, "CG08002") > dropped, 3.0) is not None
    stack.redis.start()         # same port, empty: the registration is gone
    stack.r = stack.redis.client()
    assert until(lambda: count_in_log(stack, "CG07001") > subscribed, 5.0) is not None
    # Resubscribed: the cache was flushed, so the next request asks Redis (the
    # entry itself would be trusted for MAX_AGE).
    resp = s.get(stack.server.url(GATED), timeout=10)
    assert (resp.status_code, reason_of(resp)) == (403, "unregistered")
    # And revocations are heard again.
    reg_id = register(stack.r, pki.leaf, "app1")
    assert s.get(stack.server.url(GATED), timeout=10).status_code == 200
    stack.r.hset("certgate:reg:" + reg_id, "status", "INACTIVATED")
    stack.r.publish("certgate:invalidate", pki.leaf.fingerprint)
    took = until(lambda: reason_of(s.get(stack.server.url(GATED), timeout=10)) == "inactivated",
                 1.0)
    assert took is not None, "still allowed 1 s after the revocation"
    pids = workers(stack.server.proc.pid)
    assert [threads(p) for p in pids] == [1]


def test_revocation_published_while_away_is_not_served_after_resubscribe(stack, pki):
    reg_id = register(stack.r, pki.leaf, "app1")
    s = session(stack, pki.leaf)
    assert s.get(stack.server.url(GATED), timeout=10).status_code == 200
    subscribed = count_in_log(stack, "CG07001")
    failed = count_in_log(stack, "CG07003")
    # Keep the subscriber out: it may reconnect but not subscribe.
    stack.r.execute_command("ACL", "SETUSER", "default", "-subscribe")
    try:
        assert stack.r.execute_command("CLIENT", "KILL", "TYPE", "pubsub") >= 1
        assert until(lambda: count_in_log(stack, "CG07003") > failed, 3.0) is not None
        stack.r.hset("certgate:reg:" + reg_id, "status", "INACTIVATED")
        stack.r.publish("certgate:invalidate", pki.leaf.fingerprint)    # nobody hears it
        time.sleep(0.3)
        assert s.get(stack.server.url(GATED), timeout=10).status_code == 200
    finally:
        stack.r.execute_command("ACL", "SETUSER", "default", "+subscribe")
    assert until(lambda: count_in_log(stack, "CG07001") > subscribed, 3.0) is not None
    resp = s.get(stack.server.url(GATED), timeout=10)
    assert (resp.status_code, reason_of(resp)) == (403, "inactivated")
    # Logged once for the outage, though it retried several times.
    assert count_in_log(stack, "CG07003") == failed + 1
