"""The operator's first hour, as written: every ```sh block of docs/nginx.md and
docs/operator-guide.md runs verbatim, as root, from the source tree, in a
sandbox: private mount, network and PID namespaces, with /etc, /usr/lib, /var
and /run as copy-on-write overlays of the machine's (so the commands write to
the real paths, and nothing reaches the machine), Debian's stock nginx.conf,
no /usr/lib/nginx (a Debian nginx without module packages), and a Redis on
127.0.0.1:6379. Then the test checks that what they installed serves."""
import os
import re
import shutil
import subprocess
import textwrap

import pytest

from conftest import make_workdir
from harness import ROOT

NEEDS = ("unshare", "nginx", "apache2", "redis-server", "curl", "htpasswd")

SETUP = r"""
set -euo pipefail
T={work}
for d in /etc /usr/lib /var /run; do
    n=${{d//\//_}}
    mkdir -p "$T/ov/$n/up" "$T/ov/$n/work"
    mount -t overlay overlay -o "lowerdir=$d,upperdir=$T/ov/$n/up,workdir=$T/ov/$n/work" "$d"
done
ip link set lo up
# A Debian nginx without module packages has no /usr/lib/nginx.
rm -rf /usr/lib/nginx /etc/nginx/modules-enabled/50-mod-http-certgate.conf /etc/nginx/conf.d/certgate.conf
# The certificate the example configurations name.
install -m 644 "$T/pki/server.pem" /etc/ssl/certs/api.example.com.pem
install -m 600 "$T/pki/server.key" /etc/ssl/private/api.example.com.key
redis-server --bind 127.0.0.1 --port 6379 --daemonize yes --save '' --dir "$T" \
    --pidfile "$T/redis.pid" --logfile "$T/redis.log"
for i in $(seq 100); do redis-cli ping >/dev/null 2>&1 && break; sleep 0.1; done
wait_https() {{
    for i in $(seq 100); do curl -sk -o /dev/null "$1" && return 0; sleep 0.1; done
    return 1
}}
cd {root}
"""

PASSWORD = "first-hour-secret"


def sh_blocks(doc):
    text = open(os.path.join(ROOT, "docs", doc)).read()
    return [textwrap.dedent(b) for b in re.findall(r"^ *```sh\n(.*?)^ *```", text, re.S | re.M)]


def sandbox(pki, body, stdin=""):
    for tool in NEEDS:
        if shutil.which(tool) is None:
            pytest.skip("%s is not installed" % tool)
    if os.geteuid() != 0:
        pytest.skip("the docs' commands run as root")
    work = make_workdir()
    try:
        pki.server.write(os.path.join(work, "pki"), "server", send_chain=[])
        script = SETUP.format(work=work, root=ROOT) + body
        res = subprocess.run(["unshare", "--mount", "--net", "--pid", "--fork", "--mount-proc",
                              "--propagation", "private", "bash", "-c", script],
                             input=stdin, capture_output=True, text=True, timeout=900)
        return res
    finally:
        subprocess.run(["rm", "-rf", work])


def doc_script(doc):
    blocks = sh_blocks(doc)
    assert blocks, doc
    return "".join("echo '--- %s block %d'\n%s\n" % (doc, i + 1, b) for i, b in enumerate(blocks))


def test_no_sudo_in_root_commands():
    for doc in ("nginx.md", "operator-guide.md"):
        text = open(os.path.join(ROOT, "docs", doc)).read()
        for block in re.findall(r"^ *```(?:sh|console)\n(.*?)^ *```", text, re.S | re.M):
            assert not re.search(r"\bsudo\b", block), (doc, block)


def test_nginx_md_commands_install_a_working_gate(pki):
    checks = r"""
echo '--- checks'
test -f /etc/nginx/modules-enabled/50-mod-http-certgate.conf
test -f /etc/nginx/conf.d/certgate.conf
nginx
wait_https https://127.0.0.1/certgate-metrics
curl -sk https://127.0.0.1/certgate-metrics | grep -x 'certgate_store_up 1'
curl -sk -D - -o /dev/null https://127.0.0.1/payments/x | grep -i '^certgate-reason: no_client_cert'
nginx -s quit
echo FIRST-HOUR-OK
"""
    res = sandbox(pki, doc_script("nginx.md") + checks)
    assert res.returncode == 0 and "FIRST-HOUR-OK" in res.stdout, res.stdout + res.stderr


def test_operator_guide_commands_build_install_and_run_the_admin_api(pki):
    checks = r"""
echo '--- checks'
test -f /usr/lib/nginx/modules/ngx_http_certgate_module.so
test -f /usr/lib/apache2/modules/mod_certgate.so
wait_https https://127.0.0.1:8444/
curl -sk --fail -u carol:%s https://127.0.0.1:8444/certgate-admin/customers
echo
apache2 -f /etc/certgate/admin-httpd.conf -k stop
echo FIRST-HOUR-OK
""" % PASSWORD
    # htpasswd -i reads the password from the input, as an operator would type it.
    res = sandbox(pki, doc_script("operator-guide.md") + checks, stdin=PASSWORD + "\n")
    assert res.returncode == 0 and "FIRST-HOUR-OK" in res.stdout, res.stdout + res.stderr
    assert '"customers"' in res.stdout or "[" in res.stdout.split("--- checks")[1]
