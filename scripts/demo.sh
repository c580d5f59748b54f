#!/usr/bin/env bash
# make demo: a working gate on loopback with a real Redis and demo certificates.
# make demo-stop: end it. Everything lives in $CERTGATE_DEMO_DIR (default /tmp/certgate-demo),
# outside the checkout, because httpd's children run as www-data and must read it.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIR=${CERTGATE_DEMO_DIR:-/tmp/certgate-demo}
PORT=${CERTGATE_DEMO_PORT:-8443}
RPORT=${CERTGATE_DEMO_REDIS_PORT:-16379}
MODDIR=/usr/lib/apache2/modules
PREFIX="certgate:"

stop() {
    if [ -f "$DIR/run/httpd.pid" ]; then
        kill "$(cat "$DIR/run/httpd.pid")" 2>/dev/null || true
    fi
    if [ -f "$DIR/run/redis.pid" ]; then
        kill "$(cat "$DIR/run/redis.pid")" 2>/dev/null || true
    fi
    for _ in $(seq 50); do
        alive=0
        for f in "$DIR/run/httpd.pid" "$DIR/run/redis.pid"; do
            [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null && alive=1
        done
        [ $alive = 0 ] && break
        sleep 0.1
    done
    rm -f "$DIR/run/httpd.pid" "$DIR/run/redis.pid"
}

gen_ca() {  # name cn [issuer]
    local name=$1 cn=$2 issuer=${3:-}
    openssl ecparam -name prime256v1 -genkey -noout -out "$DIR/pki/$name.key" 2>/dev/null
    if [ -z "$issuer" ]; then
        openssl req -x509 -new -key "$DIR/pki/$name.key" -subj "/CN=$cn/O=certgate demo" \
            -days 365 -addext "basicConstraints=critical,CA:TRUE" \
            -addext "keyUsage=critical,keyCertSign,cRLSign" -out "$DIR/pki/$name.pem" 2>/dev/null
    else
        openssl req -new -key "$DIR/pki/$name.key" -subj "/CN=$cn/O=certgate demo" \
            -out "$DIR/pki/$name.csr" 2>/dev/null
        printf 'basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n' \
            > "$DIR/pki/$name.ext"
        openssl x509 -req -in "$DIR/pki/$name.csr" -CA "$DIR/pki/$issuer.pem" \
            -CAkey "$DIR/pki/$issuer.key" -CAcreateserial -days 365 \
            -extfile "$DIR/pki/$name.ext" -out "$DIR/pki/$name.pem" 2>/dev/null
    fi
}

gen_leaf() {  # name cn issuer ext
    local name=$1 cn=$2 issuer=$3 ext=$4
    openssl ecparam -name prime256v1 -genkey -noout -out "$DIR/pki/$name.key" 2>/dev/null
    openssl req -new -key "$DIR/pki/$name.key" -subj "/CN=$cn/O=certgate demo" \
        -out "$DIR/pki/$name.csr" 2>/dev/null
    printf '%s\n' "$ext" > "$DIR/pki/$name.ext"
    openssl x509 -req -in "$DIR/pki/$name.csr" -CA "$DIR/pki/$issuer.pem" \
        -CAkey "$DIR/pki/$issuer.key" -CAcreateserial -days 400 \
        -extfile "$DIR/pki/$name.ext" -out "$DIR/pki/$name.pem" 2>/dev/null
}

fp() { openssl x509 -in "$1" -outform DER | openssl dgst -sha256 -r | cut -c1-64; }
epoch() { date -u -d "$(openssl x509 -in "$1" -noout "-$2" | cut -d= -f2)" +%s; }

rcli() { REDISCLI_AUTH=$(cat "$DIR/run/redis.pass") redis-cli -p "$RPORT" "$@" >/dev/null; }

register() {  # name app status
    local pem="$DIR/pki/$1.pem" id="demo-$1"
    local f; f=$(fp "$pem")
    rcli HSET "${PREFIX}reg:$id" id "$id" app_id "$2" customer_id demo-customer \
        status "$3" fingerprint "$f" chain "$(fp "$DIR/pki/inter.pem"),$(fp "$DIR/pki/root.pem")" \
        valid_from "$(epoch "$pem" startdate)" valid_to "$(epoch "$pem" enddate)" \
        activate_at "" retire_at ""
    rcli SET "${PREFIX}fp:$f" "$id"
    rcli SADD "${PREFIX}app:$2" "$id"
    rcli HSET "${PREFIX}appinfo:$2" id "$2" customer_id demo-customer   # the app's owner
    rcli SADD "${PREFIX}apps" "$2"
}

start() {
    [ -f "$ROOT/build/mod_certgate.so" ] || { echo "run 'make demo' (it builds the module)" >&2; exit 1; }
    stop
    rm -rf "$DIR"
    mkdir -p "$DIR"/{pki,run,logs,htdocs/api}
    chmod 755 "$DIR" "$DIR/pki" "$DIR/htdocs" "$DIR/htdocs/api"
    echo '{"hello":"from behind the certgate"}' > "$DIR/htdocs/api/hello.json"
    chmod 644 "$DIR/htdocs/api/hello.json"

    gen_ca server-ca "certgate demo server CA"
    gen_leaf server localhost server-ca "subjectAltName=DNS:localhost,IP:127.0.0.1
extendedKeyUsage=serverAuth"
    gen_ca root "certgate demo client root"
    gen_ca inter "certgate demo client intermediate" root
    for c in approved pending stranger; do
        gen_leaf "$c" "demo $c client" inter "basicConstraints=critical,CA:FALSE
extendedKeyUsage=clientAuth"
        cat "$DIR/pki/$c.pem" "$DIR/pki/inter.pem" > "$DIR/pki/$c-chain.pem"
    done

    openssl rand -hex 12 > "$DIR/run/admin.pass"
    htpasswd -cb "$DIR/run/admin.htpasswd" manager "$(cat "$DIR/run/admin.pass")" 2>/dev/null
    chmod 644 "$DIR/run/admin.htpasswd"
    chmod 600 "$DIR/run/admin.pass"
    openssl rand -hex 16 > "$DIR/run/redis.pass"
    chmod 600 "$DIR/run/redis.pass"
    redis-server --port "$RPORT" --bind 127.0.0.1 --save "" --appendonly no \
        --dir "$DIR/run" --daemonize yes --pidfile "$DIR/run/redis.pid" \
        --logfile "$DIR/logs/redis.log" --requirepass "$(cat "$DIR/run/redis.pass")" >/dev/null
    for _ in $(seq 50); do rcli PING 2>/dev/null && break; sleep 0.1; done
    rcli SET "${PREFIX}schema" 1
    register approved demo-app APPROVED
    register pending demo-app PENDING

    local user=""
    [ "$(id -u)" -eq 0 ] && user=$'User www-data\nGroup www-data'
    sed -e "s|@DIR@|$DIR|g" -e "s|@PORT@|$PORT|g" -e "s|@RPORT@|$RPORT|g" \
        -e "s|@MODDIR@|$MODDIR|g" -e "s|@MODULE@|$ROOT/build/mod_certgate.so|g" \
        "$ROOT/conf/demo.conf.in" > "$DIR/httpd.conf"
    printf '%s\n' "$user" > "$DIR/user.conf"
    # The password reaches httpd through its environment, not the config file.
    CERTGATE_REDIS_PASSWORD=$(cat "$DIR/run/redis.pass") /usr/sbin/apache2 -f "$DIR/httpd.conf" -k start
    for _ in $(seq 50); do
        curl -s -o /dev/null --cacert "$DIR/pki/server-ca.pem" "https://localhost:$PORT/" && break
        sleep 0.1
    done

    local c="curl -s --cacert $DIR/pki/server-ca.pem"
    cat <<MSG
mod_certgate demo is running: https://localhost:$PORT (redis on 127.0.0.1:$RPORT)

Approved certificate, registered to demo-app (200):
  $c --cert $DIR/pki/approved-chain.pem --key $DIR/pki/approved.key https://localhost:$PORT/api/hello.json

Registered but still PENDING (403, reason pending):
  $c -H 'Accept: application/json' --cert $DIR/pki/pending-chain.pem --key $DIR/pki/pending.key https://localhost:$PORT/api/hello.json

Not registered at all (403, reason unregistered):
  $c -H 'Accept: application/json' --cert $DIR/pki/stranger-chain.pem --key $DIR/pki/stranger.key https://localhost:$PORT/api/hello.json

No client certificate (403, reason no_client_cert):
  $c -H 'Accept: application/json' https://localhost:$PORT/api/hello.json

Approve the pending certificate through the admin API (then its command above gets 200):
  $c -u manager:$(cat "$DIR/run/admin.pass") -X POST https://localhost:$PORT/admin/certs/demo-pending/approve

Logs: $DIR/logs/error.log and $DIR/logs/access.log. Stop with: make demo-stop
MSG
}

case "${1:-}" in
    start) start ;;
    stop) stop; echo "mod_certgate demo stopped" ;;
    *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
