"""`make demo` prints commands that work, and every directive is documented."""
import glob
import json
import os
import re
import shlex
import subprocess

import pytest

from harness import ROOT, free_port


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    env = dict(os.environ,
               CERTGATE_DEMO_DIR="/tmp/certgate-demo-test-%d" % os.getpid(),
               CERTGATE_DEMO_PORT=str(free_port()),
               CERTGATE_DEMO_REDIS_PORT=str(free_port()))
    script = os.path.join(ROOT, "scripts", "demo.sh")
    out = subprocess.run(["bash", script, "start"], env=env, capture_output=True, text=True,
                         timeout=120)
    try:
        assert out.returncode == 0, out.stderr
        yield out.stdout
    finally:
        subprocess.run(["bash", script, "stop"], env=env, capture_output=True, timeout=60)
        subprocess.run(["rm", "-rf", env["CERTGATE_DEMO_DIR"]])


def test_demo_commands_answer_as_printed(demo):
    blocks = re.findall(r"^(.*\((\d{3})(?:, reason (\w+))?\):)\n\s+(curl .*)$", demo, re.M)
    assert len(blocks) == 4, demo
    seen = set()
    for _title, status, reason, cmd in blocks:
        argv = shlex.split(cmd) + ["-w", "\n%{http_code}"]
        res = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        body, code = res.stdout.rsplit("\n", 1)
        assert code == status, (cmd, res.stdout)
        if reason:
            assert json.loads(body)["reason"] == reason
        seen.add((status, reason))
    assert ("200", "") in seen and ("403", "pending") in seen
    # Registered through the admin API: the auditor lists both, with what an upload records.
    listing = re.search(r"^List the registrations, as the auditor:\n\s+(curl .*)$", demo, re.M)
    assert listing, demo
    res = subprocess.run(shlex.split(listing.group(1)), capture_output=True, text=True, timeout=30)
    items = {i["commonName"]: i for i in json.loads(res.stdout)["items"]}
    assert sorted(items) == ["demo approved client", "demo pending client"], res.stdout
    for cn, status in (("demo approved client", "APPROVED"), ("demo pending client", "PENDING")):
        rec = items[cn]
        assert rec["status"] == status and rec["appId"] == "demo-app", rec
        assert rec["customerId"] == "demo-customer" and rec["createdBy"] == "developer", rec
        assert "CN=certgate demo client intermediate" in rec["issuer"], rec
        assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", rec["created"]), rec
        assert len(rec["chain"]) == 2, rec
    assert items["demo approved client"]["updatedBy"] == "manager"
    approve = re.search(r"^Approve the pending.*\n\s+(curl .*)$", demo, re.M)
    assert approve, demo
    assert "/admin/certs/%s/approve" % items["demo pending client"]["id"] in approve.group(1)
    res = subprocess.run(shlex.split(approve.group(1)), capture_output=True, text=True, timeout=30)
    assert json.loads(res.stdout)["status"] == "APPROVED", res.stdout
    pending_cmd = [b[3] for b in blocks if b[2] == "pending"][0]
    res = subprocess.run(shlex.split(pending_cmd) + ["-w", "\n%{http_code}"], capture_output=True,
                         text=True, timeout=30)
    assert res.stdout.rsplit("\n", 1)[1] == "200"


# The httpd adapter: mod_certgate.c and src/httpd/.
HTTPD_SRC = [os.path.join(ROOT, "mod_certgate.c")] + sorted(
    glob.glob(os.path.join(ROOT, "src", "httpd", "*.[ch]")))
HTTPD_CONFIG = os.path.join(ROOT, "src", "httpd", "cg_httpd_config.c")


def directives():
    src = open(HTTPD_CONFIG).read()
    return sorted(set(re.findall(r'AP_INIT_\w+\("(CertGate\w*)"', src)))


def test_every_directive_is_documented_and_in_example_conf():
    names = directives()
    assert len(names) >= 10
    doc = open(os.path.join(ROOT, "docs", "directives.md")).read()
    conf = open(os.path.join(ROOT, "conf", "certgate.conf")).read()
    for n in names:
        assert re.search(r"^## %s\b" % n, doc, re.M), "%s missing in docs/directives.md" % n
        assert n in conf, "%s missing in conf/certgate.conf" % n


def struct_fields(src, name):
    """The field names of `typedef struct { ... } name;` in src."""
    end = src.index("\n} %s;" % name)
    body = src[src.rindex("typedef struct {", 0, end) + len("typedef struct {"):end]
    body = re.sub(r"/\*.*?\*/", "", body, flags=re.S)
    fields = []
    for decl in body.split(";"):
        decl = decl.strip()
        if decl:
            # "int min_days, max_days" -> both; "cg_gate_t *gate" -> gate
            fields += [re.sub(r"[^\w].*$", "", part.strip().split()[-1].lstrip("*"))
                       for part in decl.split(",")]
    return fields


# Set at run time, not by directives: nothing to merge.
NOT_MERGED = {"cg_srv_t": {"gate"},
              "cg_dir_t": {"n_cas",          # travels with cas
                           "unset_known"}}   # a cache of dir_unset, worked out at merge time


def test_every_directive_is_merged():
    # Every field of the server and directory configs appears in its merge
    # function; the list comes from the structs, so a new field cannot be missed.
    src = open(HTTPD_CONFIG).read()
    merge_srv = src[src.index("void *cgh_merge_srv"):src.index("void *cgh_create_dir")]
    merge_dir = src[src.index("void *cgh_merge_dir"):src.index("cg_srv_t *cgh_srv_conf")]
    src = open(os.path.join(ROOT, "src", "httpd", "cg_httpd.h")).read()
    for struct, merge in (("cg_srv_t", merge_srv), ("cg_dir_t", merge_dir)):
        fields = struct_fields(src, struct)
        assert len(fields) >= 12, (struct, fields)
        for field in fields:
            if field in NOT_MERGED[struct]:
                continue
            assert ("c->%s =" % field in merge or "MERGE_INT(%s)" % field in merge or
                    "MERGE_PTR(%s)" % field in merge), "%s.%s is not merged" % (struct, field)
    assert "c->cas = add->cas" in merge_dir and "c->n_cas = add->n_cas" in merge_dir


# The gate's file first; every nginx source is scanned for tags.
NGX_SRC = [os.path.join(ROOT, "nginx", "ngx_http_certgate_module.c")] + sorted(
    p for p in glob.glob(os.path.join(ROOT, "nginx", "*.c"))
    if not p.endswith("ngx_http_certgate_module.c"))


def nginx_directives():
    src = open(NGX_SRC[0]).read()
    names = set(re.findall(r'ngx_string\("(certgate\w*)"\)', src.split("cg_commands[]")[1]
                           .split("ngx_null_command")[0]))
    adm = open(os.path.join(ROOT, "nginx", "ngx_certgate_admin.c")).read()
    names |= set(re.findall(r'ngx_string\("(certgate\w*)"\)', adm.split("cg_adm_commands[]")[1]
                            .split("ngx_null_command")[0]))
    return sorted(names)


def test_every_nginx_directive_is_documented_in_example_conf_and_merged():
    names = nginx_directives()
    assert len(names) >= 12
    doc = open(os.path.join(ROOT, "docs", "nginx.md")).read()
    conf = open(os.path.join(ROOT, "conf", "nginx-certgate.conf")).read()
    for n in names:
        assert re.search(r"^\| `%s[ `]" % n, doc, re.M), "%s missing in docs/nginx.md" % n
        assert n in conf, "%s missing in conf/nginx-certgate.conf" % n
    src = open(NGX_SRC[0]).read()
    merge = src[src.index("static char *cg_merge_loc_conf(ngx_conf_t *cf, void *parent, "
                          "void *child)\n{"):]
    merge = merge[:merge.index("\n}\n")]
    for field in ("enabled", "app_from", "app_name", "app_var", "forward_headers",
                  "on_store_error"):
        assert "c->%s" % field in merge, field
    init = src[src.index("static char *cg_init_main_conf(ngx_conf_t *cf, void *conf)\n{"):]
    init = init[:init.index("\n}\n")]
    for field in ("redis.db", "timeout", "prefix", "cache", "cache_entries", "cache_max_age",
                  "usage_interval", "redis_set"):
        assert "c->%s" % field in init, field


def test_every_log_tag_is_documented():
    # The core writes lines too (src/cg_gate.c through the adapters' sink).
    core = sorted(glob.glob(os.path.join(ROOT, "src", "*.[ch]")))
    files = HTTPD_SRC + list(NGX_SRC) + core
    src = "".join(open(p).read() for p in files)
    tags = set(re.findall(r"CG\d{5}", src))
    assert "CG02003" in tags and "CG07001" in tags   # the core's lines are read
    # Every tag is written literally, so grep finds it: no "CG%s" assembled from parts.
    assert not re.search(r'"CG%|CG%[sd]', src), "a log tag is built from parts"
    doc = open(os.path.join(ROOT, "docs", "log-tags.md")).read()
    for t in sorted(tags):
        assert t in doc, "%s missing in docs/log-tags.md" % t


def test_every_reason_is_documented():
    doc = open(os.path.join(ROOT, "docs", "reasons.md")).read()
    src = open(os.path.join(ROOT, "src", "cg_decide.c")).read()
    reasons = re.findall(r'\] = "([a-z_]+)",\n', src.split("reason_messages")[0])
    assert len(reasons) == 14
    for r in reasons:
        assert "`%s`" % r in doc, r


def test_make_install_stages_both_modules(tmp_path):
    res = subprocess.run(["make", "-s", "install", "DESTDIR=%s" % tmp_path,
                          "APACHE_MODDIR=/usr/lib/apache2/modules"], cwd=ROOT,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    for f in ("usr/lib/apache2/modules/mod_certgate.so",
              "usr/lib/nginx/modules/ngx_http_certgate_module.so"):
        assert os.path.getsize(os.path.join(tmp_path, f)) > 10000, f


def test_one_version_for_sources_and_packages():
    src = open(os.path.join(ROOT, "src", "cg_version.h")).read()
    version = re.search(r'#define CG_VERSION "([^"]+)"', src).group(1)
    changelog = open(os.path.join(ROOT, "debian", "changelog")).readline()
    assert changelog.startswith("mod-certgate (%s) " % version), changelog
