#!/usr/bin/env bash
# Install the Debian packages mod_certgate builds, tests and demos with, when missing.
# Usage: deps.sh [extra packages...]
set -euo pipefail

PKGS="apache2 apache2-dev libhiredis-dev redis-server redis-tools libssl-dev openssl libjansson-dev
      libcmocka-dev python3 python3-pytest python3-requests python3-cryptography python3-redis
      curl make gcc pkg-config apache2-utils wrk jq nginx nginx-dev
      redis-sentinel libcurl4-openssl-dev libapache2-mod-oauth2
      chromium chromium-driver python3-selenium"
# Extra packages for one target (make fuzz: clang; make test-valgrind: valgrind).
PKGS="$PKGS $*"

missing=""
for p in $PKGS; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $p"
    fi
done
[ -z "$missing" ] && exit 0

echo "certgate: installing missing packages:$missing"
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO=sudo; else
        echo "certgate: run 'make deps' as root to install:$missing" >&2
        exit 1
    fi
else
    SUDO=
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
echo "certgate: packages installed"
