"""Refused directives say where and what: `nginx -t` and `apache2 -t` on small bad
configs name the directive, its file and line, and the values it accepts, in the
same words on both servers."""
import os
import shutil
import subprocess

import pytest

import harness
from conftest import make_workdir

NGX_CONF = """load_module {module};
error_log stderr;
pid {work}/nginx.pid;
events {{}}
http {{
    {line}
    server {{
        listen 127.0.0.1:{port};
        location / {{ certgate on; }}
    }}
}}
"""


def nginx_t(line):
    """nginx -t on a config holding line; returns (returncode, stderr, file, line number)."""
    work = make_workdir()
    conf = os.path.join(work, "bad.conf")
    text = NGX_CONF.format(module=harness.NGX_MODULE, work=work, line=line,
                           port=harness.free_port())
    with open(conf, "w") as f:
        f.write(text)
    lineno = text.splitlines().index("    " + line) + 1
    res = subprocess.run([harness.NGINX, "-t", "-c", conf, "-p", work], capture_output=True,
                         text=True, timeout=30, env=harness.server_env(work))
    shutil.rmtree(work, ignore_errors=True)
    return res.returncode, res.stderr, conf, lineno


def apache_t(line):
    work = make_workdir()
    conf = os.path.join(work, "bad.conf")
    text = ('ServerRoot "%s"\nServerName localhost\nErrorLog "%s/error.log"\n'
            "LoadModule mpm_event_module %s/mod_mpm_event.so\n"
            "LoadModule certgate_module %s\n%s\n"
            % (work, work, harness.MODDIR, harness.MODULE, line))
    with open(conf, "w") as f:
        f.write(text)
    res = subprocess.run([harness.APACHE, "-t", "-f", conf], capture_output=True, text=True,
                         timeout=30, env=harness.server_env(work))
    shutil.rmtree(work, ignore_errors=True)
    return res.returncode, res.stderr, conf, text.splitlines().index(line) + 1


# (nginx line, the words that say what is accepted)
NGINX_BAD = [
    ("certgate_redis_timeout 200;", "expected a time with its unit from 1ms to 60s, e.g. 200ms "
                                    "or 2s (a bare number is refused"),
    ("certgate_redis_timeout 0ms;", "expected a time with its unit from 1ms to 60s"),
    ("certgate_redis_timeout 2m;", "expected a time with its unit from 1ms to 60s"),
    ("certgate_redis_timeout soon;", "expected a time with its unit from 1ms to 60s"),
    ("certgate_redis unix:;", "unix: needs an absolute socket path, e.g. unix:/run/redis/redis.sock"),
    ("certgate_redis unix:relative.sock;", "unix: needs an absolute socket path"),
    ("certgate_redis localhost;", "expected host:port or unix:/path"),
    ("certgate_redis localhost:;", "expected host:port or unix:/path"),
    ("certgate_redis localhost:99999;", "the port must be a number from 1 to 65535"),
    ("certgate_on_store_error sometimes;", "expected deny, allow or stale SECONDS"),
    ("certgate_key_prefix '';", "expected 1 to 64 printable ASCII characters without spaces"),
    ("certgate_key_prefix \"a b\";", "expected 1 to 64 printable ASCII characters without spaces"),
    ("certgate_key_prefix %s;" % ("x" * 65), "expected 1 to 64 printable ASCII characters"),
    ("certgate_redis_db -1;", "expected a whole number from 0 to 15999"),
    ("certgate_redis_db two;", "expected a whole number from 0 to 15999"),
    ("certgate_cache_entries 0;", "expected a whole number from 1 to 10000000"),
    ("certgate_cache_max_age 0;", "expected a whole number from 1 to 3600"),
    ("certgate_usage_flush_interval sometimes;",
     "expected off or a whole number of seconds from 1 to 3600"),
    ("certgate_usage_flush_interval 3601;",
     "expected off or a whole number of seconds from 1 to 3600"),
    ("certgate_redis_auth \"\";", "the password is empty; expected [USER] PASSWORD"),
    ("certgate_app_from cookie x;", "wants \"header NAME\", \"variable $NAME\" or \"none\""),
    # nginx's own flag parser already says all three.
    ("certgate_cache maybe;", "it must be \"on\" or \"off\""),
]


@pytest.mark.parametrize("line,accepted", NGINX_BAD)
def test_nginx_refusal_names_directive_file_line_and_values(line, accepted):
    rc, err, conf, lineno = nginx_t(line)
    assert rc != 0, err
    directive = line.split()[0]
    emerg = [l for l in err.splitlines() if "[emerg]" in l]
    assert emerg, err
    msg = emerg[0]
    assert directive in msg, msg
    assert msg.endswith(" in %s:%d" % (conf, lineno)), msg
    assert accepted in msg, msg


@pytest.mark.parametrize("line", [
    "certgate_usage_flush_interval off;",      # as CertGateUsageFlushInterval off
    "certgate_usage_flush_interval 0;",
    "certgate_redis unix:/run/redis/redis.sock;",
    "certgate_redis_timeout 1s;",
    "certgate_redis_timeout 250ms;",
    "certgate_key_prefix cg-test:;",
])
def test_nginx_accepts(line):
    rc, err, _, _ = nginx_t(line)
    assert rc == 0, err


def test_nginx_fail_open_warning_cites_its_directive():
    # CG05001 is logged when the gated location is merged, at the end of http{}:
    # it must cite the line of certgate_on_store_error, once.
    rc, err, conf, lineno = nginx_t("certgate_on_store_error allow;")
    assert rc == 0, err
    lines = [l for l in err.splitlines() if "CG05001" in l]
    assert len(lines) == 1, err
    assert "certgate_on_store_error allow" in lines[0]
    assert lines[0].endswith(" in %s:%d" % (conf, lineno)), lines[0]


def test_nginx_log_lines_name_no_httpd_directive(pki):
    # The subscriber's lines come from the core: on nginx they said "CertGateCacheMaxAge".
    from conftest import Stack
    st = Stack(pki, server="nginx", nginx_args={"workers": 1})
    try:
        assert harness.wait_for_line(st.server.error_log, "CG07001")
        st.redis.stop()
        assert harness.wait_for_line(st.server.error_log, "CG07002")
        lines = [l for l in st.server.read_log().splitlines() if "CG07" in l]
        assert lines
        for line in lines:
            assert "CertGate" not in line, line
        assert any("expire by the cache max age" in l for l in lines), lines
    finally:
        st.close()


# The same refusal in the same words on both servers: (httpd line, nginx line, words).
SAME_WORDS = [
    ("CertGateOnStoreError sometimes", "certgate_on_store_error sometimes;",
     "expected deny, allow or stale SECONDS, got"),
    ("CertGateRedis unix:", "certgate_redis unix:;",
     "unix: needs an absolute socket path, e.g. unix:/run/redis/redis.sock, got"),
    ("CertGateRedis localhost", "certgate_redis localhost;",
     "expected host:port or unix:/path, got"),
    ("CertGateRedis localhost:99999", "certgate_redis localhost:99999;",
     "the port must be a number from 1 to 65535, got"),
    ("CertGateRedisDB -1", "certgate_redis_db -1;", "expected a whole number from 0 to 15999, got"),
    ("CertGateCacheEntries 0", "certgate_cache_entries 0;",
     "expected a whole number from 1 to 10000000, got"),
    ("CertGateCacheMaxAge 0", "certgate_cache_max_age 0;",
     "expected a whole number from 1 to 3600, got"),
    ("CertGateUsageFlushInterval sometimes", "certgate_usage_flush_interval sometimes;",
     "expected off or a whole number of seconds from 1 to 3600, got"),
]


@pytest.mark.parametrize("httpd_line,nginx_line,words", SAME_WORDS)
def test_same_words_on_both_servers(httpd_line, nginx_line, words):
    rc, err, conf, lineno = apache_t(httpd_line)
    assert rc != 0
    # httpd names the file and line itself ("Syntax error on line 4 of FILE:").
    assert "line %d of %s" % (lineno, conf) in err, err
    assert "%s: %s" % (httpd_line.split()[0], words) in err, err
    rc, err, conf, lineno = nginx_t(nginx_line)
    assert rc != 0
    assert "%s: %s" % (nginx_line.split()[0], words) in err, err
    assert " in %s:%d" % (conf, lineno) in err, err


def test_httpd_usage_flush_interval_off():
    rc, err, _, _ = apache_t("CertGateUsageFlushInterval off")
    assert rc == 0, err
