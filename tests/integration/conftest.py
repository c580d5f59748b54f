import os
import shutil
import subprocess
import tempfile

import pytest

import harness
from pki import PKI


def pytest_sessionstart(session):
    if not os.path.exists(harness.MODULE):
        raise pytest.UsageError("build/mod_certgate.so is missing: run 'make module' first")
    if not os.path.exists(harness.NGX_MODULE):
        raise pytest.UsageError("build/ngx_http_certgate_module.so is missing: "
                                "run 'make nginx-module' first")


# The shared scenarios run once against each server.
SERVERS = ["httpd", "nginx"]


def make_workdir():
    # httpd children run as www-data when we are root: the tree must be readable.
    work = tempfile.mkdtemp(prefix="certgate-test-")
    os.chmod(work, 0o755)
    os.makedirs(os.path.join(work, "pki"))
    os.chmod(os.path.join(work, "pki"), 0o755)
    return work


def httpd_config_test(line):
    """`apache2 -t` on a minimal config with the module and LINE: (returncode, stderr)."""
    work = make_workdir()
    conf = os.path.join(work, "bad.conf")
    with open(conf, "w") as f:
        f.write('ServerRoot "%s"\nLoadModule mpm_event_module %s/mod_mpm_event.so\n'
                "LoadModule certgate_module %s\n%s\n" % (work, harness.MODDIR, harness.MODULE, line))
    res = subprocess.run([harness.APACHE, "-t", "-f", conf], capture_output=True, text=True,
                         env=harness.server_env(work))
    return res.returncode, res.stderr


@pytest.fixture(scope="session")
def pki():
    return PKI()


class Stack:
    """One redis-server and one web server (apache2, or nginx with server="nginx"),
    and the certificate files clients use. `server` is the web server; `httpd`
    is the same object when it is apache2, for the httpd-only suites."""

    def __init__(self, pki, store_conf=None, files=None, server="httpd", nginx_args=None,
                 **httpd_args):
        self.work = make_workdir()
        for name, content in (files or {}).items():
            with open(os.path.join(self.work, name), "w") as f:
                f.write(content)
            os.chmod(os.path.join(self.work, name), 0o644)
        self.pki = pki
        self.pki_dir = os.path.join(self.work, "pki")
        pki.server.write(self.pki_dir, "server", send_chain=[])
        self.server_ca = pki.server_ca.write(self.pki_dir, "server-ca")[0]
        self.redis = harness.Redis(self.work).start()
        if callable(store_conf):
            store_conf = store_conf(self.redis)
        if server == "nginx":
            self.server = harness.Nginx(self.work, self.pki_dir, self.redis,
                                        store_conf=store_conf, **(nginx_args or {}))
        else:
            self.server = self.httpd = harness.Httpd(self.work, self.pki_dir, self.redis,
                                                      store_conf=store_conf, **httpd_args)
        self.kind = server
        self.server.start()
        self.r = self.redis.client()

    def client_files(self, cert, name, **kw):
        return cert.write(self.pki_dir, name, **kw)

    def close(self):
        self.server.stop()
        self.redis.stop()
        reports = self.server.sanitizer_reports()
        if reports:
            keep = os.environ.get("CERTGATE_KEEP_TEST_DIRS")
            raise AssertionError("sanitizer or crash reports in %s:\n%s"
                                 % (self.work if keep else "(removed)", "\n---\n".join(reports)[:8000]))
        if os.environ.get("CERTGATE_KEEP_TEST_DIRS") != "1":
            shutil.rmtree(self.work, ignore_errors=True)


@pytest.fixture(scope="module")
def stack(pki):
    s = Stack(pki)
    yield s
    s.close()
