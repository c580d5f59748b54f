#!/usr/bin/env bash
# Build ngx_http_certgate_module against Debian's nginx-dev sources, with the
# same configure flags as Debian's nginx binary (--with-compat keeps them binary
# compatible).
# Usage: nginx-module.sh OUTPUT.so [CORE_LIB [EXTRA_CFLAGS [EXTRA_LDFLAGS]]]
#   CORE_LIB defaults to build/libcertgate.a; make test-asan passes a sanitized
#   core and -fsanitize flags, and gets its own build tree.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$1
CORE_LIB=${2:-$ROOT/build/libcertgate.a}
EXTRA=${3:-}
EXTRA_LD=${4:-}
SRC=/usr/share/nginx/src
# One build tree per set of extra flags (sanitizers, the Debian build's hardening).
WORK=$ROOT/build/nginx${EXTRA:+-$(printf '%s' "$EXTRA $EXTRA_LD" | md5sum | cut -c1-8)}
[ -f "$SRC/conf_flags" ] || { echo "nginx-module: $SRC missing (apt-get install nginx-dev)" >&2; exit 1; }

# Configure once per change of the addon's config script.
if [ ! -f "$WORK/src/objs/Makefile" ] || [ "$ROOT/nginx/config" -nt "$WORK/src/objs/Makefile" ]; then
    rm -rf "$WORK"
    mkdir -p "$WORK"
    cp -r "$SRC" "$WORK/src"
    # shellcheck disable=SC1091
    . "$WORK/src/conf_flags"
    (cd "$WORK/src" && CERTGATE_CORE_LIB="$CORE_LIB" ./configure "${NGX_CONF_FLAGS[@]}" \
        --with-cc-opt="-std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -Wno-unused-parameter -g -O2 -fPIC $EXTRA" \
        --with-ld-opt="-fPIC $EXTRA $EXTRA_LD" \
        --add-dynamic-module="$ROOT/nginx" >"$WORK/configure.log" 2>&1) \
        || { tail -20 "$WORK/configure.log" >&2; exit 1; }
fi
# nginx's Makefile does not know the core library: relink whenever we are asked.
rm -f "$WORK/src/objs/ngx_http_certgate_module.so"
make -s -C "$WORK/src" -f objs/Makefile modules >"$WORK/make.log" 2>&1 || { cat "$WORK/make.log" >&2; exit 1; }
cp "$WORK/src/objs/ngx_http_certgate_module.so" "$OUT.tmp"
mv -f "$OUT.tmp" "$OUT"
