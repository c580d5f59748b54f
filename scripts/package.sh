#!/usr/bin/env bash
# Debian packages of mod_certgate (docs/operator-guide.md, "Install").
#   package.sh build [VERSION]  build/deb/*.deb from a clean copy of the tracked
#                               tree; VERSION (higher than debian/changelog's)
#                               adds a changelog entry in the copy only.
#   package.sh test             build, apt install, enable, check, serve one
#                               gated request per server, upgrade keeping an
#                               edited conffile, purge. Needs root.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$ROOT/build/deb
PKGS="libapache2-mod-certgate libnginx-mod-http-certgate certgate-tools"
say() { echo "package: $*"; }

version_of_tree() { sed -n 's/^#define CG_VERSION "\(.*\)"/\1/p' "$ROOT/src/cg_version.h"; }

build() {
    local want=${1:-}
    bash "$ROOT/scripts/deps.sh" debhelper dpkg-dev fakeroot lintian
    local v cl
    v=$(version_of_tree)
    cl=$(dpkg-parsechangelog -l "$ROOT/debian/changelog" -S Version)
    [ "$v" = "$cl" ] || { echo "package: src/cg_version.h says $v, debian/changelog $cl" >&2; exit 1; }
    local ver=${want:-$v}
    local work=$ROOT/build/pkg/$ver
    rm -rf "$work"
    mkdir -p "$work/src" "$OUT"
    # The tracked files only: a developer's build/ or stray files never ship.
    (cd "$ROOT" && git ls-files -z | xargs -0 cp --parents -t "$work/src")
    if [ -n "$want" ]; then
        { printf 'mod-certgate (%s) bookworm; urgency=medium\n\n  * Test build for upgrades.\n\n' "$want"
          # Dated after the entry it follows, whatever the clock says.
          printf ' -- mod_certgate developers <dev@certgate.invalid>  %s\n\n' \
              "$(date -R -d "$(dpkg-parsechangelog -l "$ROOT/debian/changelog" -S Date) + 1 hour")"
          cat "$work/src/debian/changelog"; } > "$work/changelog.new"
        mv "$work/changelog.new" "$work/src/debian/changelog"
    fi
    say "building $ver"
    (cd "$work/src" && dpkg-buildpackage -us -uc -b >"$work/build.log" 2>&1) ||
        { tail -40 "$work/build.log" >&2; exit 1; }
    for p in $PKGS; do
        mv -f "$work/${p}_${ver}_"*.deb "$OUT/"
    done
    say "lintian $ver"
    # Errors fail the build; warnings are listed (docs say which are expected).
    lintian --fail-on error --suppress-tags-from-file "$ROOT/debian/lintian-accepted" \
        "$OUT"/*_"${ver}"_*.deb | tee "$work/lintian.txt"
    ls -l "$OUT"/*_"${ver}"_*.deb
}

installed_version() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null || true; }

# Leave the machine as it was, whatever happened: no package, no module we
# enabled (a2enmod certgate enables ssl with it).
SSL_WAS_ENABLED=1
cleanup() {
    apt-get purge -y -qq $PKGS >/dev/null 2>&1 || true
    if [ "$SSL_WAS_ENABLED" = 0 ] && [ -L /etc/apache2/mods-enabled/ssl.load ]; then
        a2dismod -q -f ssl >/dev/null 2>&1 || true
    fi
}

# The installed certgatectl: help, its man page, and inspect on a fresh
# client certificate (the policy accepts leaf + root, refuses the leaf alone).
check_tool() {
    local t out
    t=$(mktemp -d)
    out=$(certgatectl --help)
    grep -q "^  watch APP --old ID" <<<"$out"
    certgatectl inspect --help >/dev/null
    dpkg -L certgate-tools | grep -q '/man1/certgatectl\.1\.gz$'
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
        -subj "/CN=package test root" -keyout "$t/ca.key" -out "$t/ca.pem" \
        -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=package test client" \
        -keyout "$t/leaf.key" -out "$t/leaf.csr" 2>/dev/null
    printf 'basicConstraints=critical,CA:FALSE\nextendedKeyUsage=clientAuth\n' > "$t/ext"
    openssl x509 -req -in "$t/leaf.csr" -CA "$t/ca.pem" -CAkey "$t/ca.key" -days 400 \
        -extfile "$t/ext" -out "$t/leaf.pem" 2>/dev/null
    out=$(certgatectl inspect "$t/leaf.pem" "$t/ca.pem")
    grep -q "policy: ok" <<<"$out"
    local rc=0
    certgatectl inspect "$t/leaf.pem" >/dev/null || rc=$?
    [ "$rc" = 4 ] || { echo "package: certgatectl inspect without the root: exit $rc, not 4" >&2; exit 1; }
    rm -rf "$t"
}

test_package() {
    [ "$(id -u)" -eq 0 ] || { echo "package: test needs root (apt install)" >&2; exit 1; }
    local start v up
    start=$(date +%s)
    v=$(version_of_tree)
    up="$v+upgradetest1"
    build
    build "$up"
    export DEBIAN_FRONTEND=noninteractive
    # A run that stopped half-way may have left a package (even the higher test
    # version): start from none.
    apt-get purge -y -qq $PKGS >/dev/null 2>&1 || true
    [ -L /etc/apache2/mods-enabled/ssl.load ] || SSL_WAS_ENABLED=0
    trap cleanup EXIT
    say "install $v"
    apt-get install -y -qq "$OUT/libapache2-mod-certgate_${v}_"*.deb \
        "$OUT/libnginx-mod-http-certgate_${v}_"*.deb "$OUT/certgate-tools_${v}_"*.deb >/dev/null
    # Enabled the Debian way: a2enmod (with mod_ssl), and the modules-enabled link.
    [ -L /etc/apache2/mods-enabled/certgate.load ] || { echo "certgate not enabled" >&2; exit 1; }
    [ -L /etc/apache2/mods-enabled/ssl.load ] || { echo "ssl not enabled with it" >&2; exit 1; }
    if [ "$SSL_WAS_ENABLED" = 0 ]; then say "ssl was enabled with certgate (a2enmod dependency)"; fi
    ls /etc/nginx/modules-enabled/*certgate* >/dev/null
    apache2ctl -t
    apache2ctl -M 2>/dev/null | grep -q certgate_module
    nginx -t
    say "certgatectl from certgate-tools"
    check_tool
    say "serve through the installed modules"
    (cd "$ROOT" && CERTGATE_MODULE=/usr/lib/apache2/modules/mod_certgate.so \
        CERTGATE_NGX_MODULE=/usr/lib/nginx/modules/ngx_http_certgate_module.so \
        /usr/bin/python3 -m pytest -q -p no:cacheprovider tests/integration/test_gate.py \
        -k "allowed_and_exported or unregistered")
    say "upgrade to $up, keeping an edited conffile"
    echo "# edited by the operator" >> /etc/apache2/mods-available/certgate.conf
    apt-get install -y -qq -o Dpkg::Options::=--force-confold \
        "$OUT/libapache2-mod-certgate_${up}_"*.deb \
        "$OUT/libnginx-mod-http-certgate_${up}_"*.deb >/dev/null
    [ "$(installed_version libapache2-mod-certgate)" = "$up" ]
    [ "$(installed_version libnginx-mod-http-certgate)" = "$up" ]
    grep -q "edited by the operator" /etc/apache2/mods-available/certgate.conf
    [ -L /etc/apache2/mods-enabled/certgate.load ]
    apache2ctl -t
    nginx -t
    say "purge"
    apt-get purge -y -qq $PKGS >/dev/null
    for f in /etc/apache2/mods-available/certgate.load /etc/apache2/mods-available/certgate.conf \
             /etc/apache2/mods-enabled/certgate.load /usr/lib/apache2/modules/mod_certgate.so \
             /usr/lib/nginx/modules/ngx_http_certgate_module.so /usr/bin/certgatectl; do
        [ ! -e "$f" ] || { echo "package: $f left after purge" >&2; exit 1; }
    done
    if ls /etc/nginx/modules-enabled/*certgate* /etc/nginx/modules-available/*certgate* \
        >/dev/null 2>&1; then
        echo "package: nginx snippet left after purge" >&2
        exit 1
    fi
    nginx -t
    cleanup
    trap - EXIT
    say "ok in $(( $(date +%s) - start )) s"
    echo "1 passed, 0 failed"
}

case "${1:-}" in
    build) build "${2:-}" ;;
    test) test_package ;;
    *) echo "usage: package.sh build [VERSION] | test" >&2; exit 2 ;;
esac
