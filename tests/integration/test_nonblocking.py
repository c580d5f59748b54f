"""One slow Redis reply must not stall other requests served by the same worker
(nginx: one worker, lookups are async on its event loop; httpd: other threads)."""
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import harness
from clients import get
from conftest import SERVERS, Stack
from harness import register

GATED = "/gated/ok.txt"


@pytest.fixture(scope="module", params=SERVERS)
def slow_stack(request, pki):
    # A long Redis timeout makes a blocked worker plain to see; one nginx worker,
    # so the gated and the ungated requests share it.
    s = Stack(pki, server=request.param, timeout_ms=3000, extra_server="CertGateCache Off",
              nginx_args={"timeout_ms": 3000, "workers": 1,
                          "extra_http": "certgate_cache off;"})
    yield s
    s.close()


def timed_get(stack, path, cert=None):
    t0 = time.monotonic()
    resp = get(stack, path, cert)
    return resp, time.monotonic() - t0


def test_slow_redis_does_not_stall_other_requests(slow_stack, pki):
    stack = slow_stack
    stack.r.flushdb()
    register(stack.r, pki.leaf, "app1")
    assert get(stack, GATED, pki.leaf).status_code == 200
    stack.redis.pause()
    try:
        with ThreadPoolExecutor(4) as ex:
            t0 = time.monotonic()
            gated = [ex.submit(timed_get, stack, GATED, pki.leaf) for _ in range(4)]
            time.sleep(0.3)         # the gated requests now wait on Redis
            worst = 0.0
            for _ in range(20):
                resp, took = timed_get(stack, "/open/ok.txt")
                assert resp.status_code == 200
                worst = max(worst, took)
            ungated_done = time.monotonic() - t0
            results = [f.result() for f in gated]
    finally:
        stack.redis.resume()
    print("%s: 20 ungated requests done %.2f s in, slowest %.0f ms, while 4 gated waited"
          % (stack.kind, ungated_done, worst * 1000))
    assert worst < 0.5 + harness.SLACK
    assert ungated_done < 2.5     # well before the gated ones time out (3 s)
    for resp, took in results:
        assert resp.status_code == 503
        assert 2.5 < took < 3.0 + 1.0 + harness.SLACK
