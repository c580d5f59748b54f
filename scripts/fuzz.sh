#!/usr/bin/env bash
# make fuzz: seed corpora generated here (nothing binary is committed), then each
# libFuzzer target for $1 seconds. Prints execs and coverage per target, and
# fails if a target crashed (the crash input is kept in build/fuzz/crashes/).
set -euo pipefail
SECONDS_EACH=$1; shift
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$ROOT/build/fuzz
SEEDS=$OUT/seeds
mkdir -p "$SEEDS" "$OUT/crashes"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Certificates: a small chain in every format the reader takes.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$tmp/ca.key" \
    -out "$tmp/ca.pem" -subj "/CN=fuzz root/O=certgate" -days 30 \
    -addext "basicConstraints=critical,CA:TRUE" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$tmp/leaf.key" \
    -out "$tmp/leaf.csr" -subj "/CN=fuzz leaf/O=certgate/C=DE" 2>/dev/null
printf 'subjectAltName=DNS:a.example,IP:127.0.0.1,email:a@example.com\nextendedKeyUsage=clientAuth\n' > "$tmp/ext"
openssl x509 -req -in "$tmp/leaf.csr" -CA "$tmp/ca.pem" -CAkey "$tmp/ca.key" -CAcreateserial \
    -days 30 -extfile "$tmp/ext" -out "$tmp/leaf.pem" 2>/dev/null
mkdir -p "$SEEDS/fuzz_cert" "$SEEDS/fuzz_admin_json" "$SEEDS/fuzz_record"
cat "$tmp/leaf.pem" "$tmp/ca.pem" > "$SEEDS/fuzz_cert/bundle.pem"
openssl x509 -in "$tmp/leaf.pem" -outform DER -out "$SEEDS/fuzz_cert/leaf.der"
base64 -w0 "$SEEDS/fuzz_cert/leaf.der" > "$SEEDS/fuzz_cert/leaf.b64"
openssl crl2pkcs7 -nocrl -certfile "$SEEDS/fuzz_cert/bundle.pem" -outform DER -out "$SEEDS/fuzz_cert/bundle.p7b"
openssl crl2pkcs7 -nocrl -certfile "$SEEDS/fuzz_cert/bundle.pem" -out "$SEEDS/fuzz_cert/bundle.p7.pem"

# Admin bodies: first byte picks the content type (0 JSON, 1 PEM, 2 PKCS#7).
python3 - "$tmp" "$SEEDS/fuzz_admin_json" <<'PY'
import json, sys
tmp, out = sys.argv[1], sys.argv[2]
leaf = open(tmp + "/leaf.pem").read(); ca = open(tmp + "/ca.pem").read()
key = open(tmp + "/leaf.key").read()
docs = {
    "full": {"certificate": leaf, "chain": ca, "appId": "a1", "customerId": "c1", "privateKey": key},
    "array": {"certificate": leaf, "chain": [ca], "appId": "a1"},
    "nulls": {"certificate": leaf, "chain": None, "appId": None},
    "types": {"certificate": 5, "appId": ["x"]},
}
for name, d in docs.items():
    open("%s/%s.json" % (out, name), "wb").write(b"\x00" + json.dumps(d).encode())
open(out + "/raw.pem", "wb").write(b"\x01" + (leaf + ca).encode())
PY
{ printf '\002'; cat "$SEEDS/fuzz_cert/bundle.p7b"; } > "$SEEDS/fuzz_admin_json/raw.p7"

# Records: name 0xff value 0xff ...
rec() { printf '%s' "$1" | tr '|' '\377'; }
FP=0101010101010101010101010101010101010101010101010101010101010101
rec "id|r1|app_id|app1|status|APPROVED|fingerprint|$FP|chain|$FP,$FP|valid_from|100|valid_to|200|activate_at||retire_at|150" > "$SEEDS/fuzz_record/ok"
rec "id|r1|app_id|app1|status|PENDING|fingerprint|$FP|valid_from|-5|valid_to|9223372036854775807" > "$SEEDS/fuzz_record/edge"

status=0
for t in "$@"; do
    corpus=$OUT/corpus/$t
    mkdir -p "$corpus"
    log=$OUT/$t.log
    set +e
    "$OUT/$t" -max_total_time="$SECONDS_EACH" -print_final_stats=1 -max_len=65536 \
        -artifact_prefix="$OUT/crashes/$t-" "$corpus" "$SEEDS/$t" > "$log" 2>&1
    rc=$?
    set -e
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || echo 0)
    ft=$(grep -o 'ft: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || echo 0)
    printf '%-16s %12s execs  cov %6s  ft %6s  %s\n' "$t" "$execs" "$cov" "$ft" \
        "$([ $rc -eq 0 ] && echo ok || echo "CRASH (see $log)")"
    [ $rc -eq 0 ] || status=1
done
exit $status
