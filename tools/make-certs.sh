#!/bin/sh
# SPDX-License-Identifier: MIT
# make-certs.sh -- a cluster CA, one certificate per host and a cluster token
# for layerpipe's secured data plane (gRPC with mutual TLS plus the token),
# made with the openssl command line only.
#
#   tools/make-certs.sh --out DIR --hosts coord,10.0.0.2,worker2.lan [--days N]
#
# writes into DIR (created; an existing ca.pem/ca.key there is reused, so
# hosts can be added later):
#   ca.pem, ca.key        the cluster CA (keep ca.key off the cluster machines)
#   HOST.pem, HOST.key    each host's certificate and key; the certificate
#                         serves both as server and as client certificate and
#                         names HOST (a DNS name or an IP address), localhost
#                         and 127.0.0.1 in its subjectAltName
#   cluster-token         64 hex characters (kept when present)
# Copy ca.pem, HOST.pem, HOST.key and cluster-token to each HOST and start
# every process with --tls-cert HOST.pem --tls-key HOST.key --tls-ca ca.pem
# --cluster-token-file cluster-token. Dial each stage by a name its
# certificate carries.
#
# --days N: validity (default 825). --expired: certificates whose validity
# ended in 2020 (for tests of the refusal).
set -eu

out= hosts= days=825 expired=0
while [ $# -gt 0 ]; do
    case "$1" in
    --out) out=$2; shift 2 ;;
    --hosts) hosts=$2; shift 2 ;;
    --days) days=$2; shift 2 ;;
    --expired) expired=1; shift ;;
    -h | --help) sed -n '3,25p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "make-certs.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
[ -n "$out" ] && [ -n "$hosts" ] || {
    echo "make-certs.sh: give --out DIR and --hosts a,b,c (see --help)" >&2
    exit 2
}
command -v openssl >/dev/null || { echo "make-certs.sh: openssl not found (apt-get install openssl)" >&2; exit 1; }

mkdir -p "$out"
umask 077
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

if [ ! -f "$out/ca.pem" ] || [ ! -f "$out/ca.key" ]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout "$out/ca.key" -out "$out/ca.pem" -days 3650 -subj "/CN=layerpipe cluster CA" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        2>"$tmp/log" || { cat "$tmp/log" >&2; exit 1; }
fi
[ -f "$out/cluster-token" ] || openssl rand -hex 32 >"$out/cluster-token"

# `openssl ca` (not `x509 -req`) so that --expired can set past dates.
touch "$tmp/index.txt"
cat >"$tmp/ca.cnf" <<EOF
[ca]
default_ca = lp
[lp]
database = $tmp/index.txt
new_certs_dir = $tmp
rand_serial = yes
default_md = sha256
policy = any
unique_subject = no
copy_extensions = none
[any]
commonName = supplied
EOF

echo "$hosts" | tr ',' '\n' | while read -r host; do
    [ -n "$host" ] || continue
    case "$host" in
    *[!0-9.]* ) case "$host" in *:*) san="IP:$host" ;; *) san="DNS:$host" ;; esac ;;
    *) san="IP:$host" ;;
    esac
    [ "$host" = localhost ] || san="$san,DNS:localhost"
    [ "$host" = 127.0.0.1 ] || san="$san,IP:127.0.0.1"
    cat >"$tmp/ext.cnf" <<EOF
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth,clientAuth
subjectAltName = $san
EOF
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout "$out/$host.key" -out "$tmp/req.csr" -subj "/CN=$host" 2>"$tmp/log" ||
        { cat "$tmp/log" >&2; exit 1; }
    if [ "$expired" = 1 ]; then
        dates="-startdate 20200101000000Z -enddate 20200102000000Z"
    else
        dates="-days $days"
    fi
    # shellcheck disable=SC2086
    openssl ca -batch -config "$tmp/ca.cnf" -cert "$out/ca.pem" -keyfile "$out/ca.key" \
        -in "$tmp/req.csr" -out "$out/$host.pem" -extfile "$tmp/ext.cnf" -notext $dates \
        2>"$tmp/log" || { cat "$tmp/log" >&2; exit 1; }
    echo "make-certs.sh: $out/$host.pem ($san)"
done
