#!/usr/bin/env bash
# TLS end-to-end test (issue 5), beside the machine's own broker (not touched):
#   scripts/tls-test.sh
# Makes throwaway CAs and a certificate for "localhost" only (SAN DNS:localhost, no IP SAN) in
# target/tls/, starts rpctls@localhost with scripts/node.sh (AMQP 127.0.0.1:5690, TLS 5691,
# distribution 25690) and runs rpc-server/tests/it/stages/tls.rs, whose documentation lists the
# checks (cargo test --release -p rpc-server --test it stages::tls -- --ignored --nocapture).
# The node is stopped at exit; target/tls/ is removed on success, kept (with server.err,
# client-*.err, rabbitmq.log) on failure. Exits 77 if no RabbitMQ node can run here.
# Env: TLS_TEST_PORT (plain AMQP port, default 5690; TLS is +1, distribution +20000),
# TLS_TEST_WAIT (seconds for the node to boot, default 120), TLS_TEST_KEEP=1 (keep target/tls/
# even on success), RABBITMQ_BIN.
set -euo pipefail
# shellcheck source=scripts/node.sh
. "$(dirname "${BASH_SOURCE[0]}")/node.sh"

[[ $# -eq 0 ]] || die "usage: $PROG   (takes no arguments)"
PLAIN_PORT=${TLS_TEST_PORT:-5690}
[[ $PLAIN_PORT =~ ^[1-9][0-9]*$ ]] || die "TLS_TEST_PORT must be a port number, got '$PLAIN_PORT'"
TLS_PORT=$((PLAIN_PORT + 1))
TLS_DIR=$REPO_ROOT/target/tls
STATE=$REPO_ROOT/target/nodes/rpctls@localhost
node() { NODE_WAIT=${TLS_TEST_WAIT:-120} scripts/node.sh "$@"; }

node_installed
if ! command -v openssl >/dev/null 2>&1; then
    apt_install openssl || { (($? == 1)) && skip "openssl is not installed, and installing it needs root"; die "installing openssl failed (see above)"; }
fi
# One run at a time: a second run would take the first one's node for a leftover and stop it.
one_run tls-test

make_certs() {
    local d=$TLS_DIR
    (
        umask 077
        openssl req -x509 -new -newkey rsa:2048 -nodes -sha256 -days 2 \
            -keyout "$d/ca.key" -out "$d/ca.pem" -subj "/CN=rabbit-rpc tls-test throwaway CA" \
            -addext "basicConstraints=critical,CA:TRUE" \
            -addext "keyUsage=critical,keyCertSign,cRLSign"
        openssl req -new -newkey rsa:2048 -nodes -sha256 \
            -keyout "$d/server.key" -out "$d/server.csr" -subj "/CN=localhost"
        cat >"$d/server.ext" <<'EOF2'
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost
EOF2
        openssl x509 -req -in "$d/server.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" \
            -CAcreateserial -days 2 -sha256 -extfile "$d/server.ext" -out "$d/server.pem"
        # For the bundle check: a CA that signed nothing here.
        openssl req -x509 -new -newkey rsa:2048 -nodes -sha256 -days 2 -keyout "$d/other.key" \
            -out "$d/other.pem" -subj "/CN=rabbit-rpc tls-test unrelated CA"
    ) >"$d/openssl.log" 2>&1 || {
        sed 's/^/    /' "$d/openssl.log" >&2
        die "creating the certificates with openssl failed"
    }
    openssl verify -CAfile "$d/ca.pem" "$d/server.pem" >/dev/null ||
        die "the server certificate does not verify against the CA"
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    cp "$STATE/log/rpctls@localhost.log" "$TLS_DIR/rabbitmq.log" 2>/dev/null
    [[ ! -e $STATE/port ]] || node stop rpctls || { warn "could not stop rpctls@localhost"; ((rc)) || rc=1; }
    if ((rc == 0)) && [[ -z ${TLS_TEST_KEEP:-} ]]; then rm -rf "$TLS_DIR"; else msg "certificates and logs kept in target/tls/"; fi
    exit "$rc"
}

# A node left running by a run that was killed has the old certificates: stop it first.
[[ ! -e $STATE/port ]] || node stop rpctls || die "could not stop the leftover rpctls@localhost"
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
rm -rf "$TLS_DIR"
mkdir -p "$TLS_DIR"
make_certs
msg "throwaway CAs and a certificate for DNS:localhost in target/tls/"
# Throwaway certificates, no client certificates.
NODE_MORE_PORTS=$TLS_PORT NODE_CONF="listeners.ssl.1 = 127.0.0.1:$TLS_PORT
ssl_options.cacertfile = $TLS_DIR/ca.pem
ssl_options.certfile = $TLS_DIR/server.pem
ssl_options.keyfile = $TLS_DIR/server.key
ssl_options.verify = verify_none
ssl_options.fail_if_no_peer_cert = false" node start rpctls "$PLAIN_PORT"
# Ready once the TLS listener completes a handshake with a certificate for localhost.
deadline=$((SECONDS + 60))
until timeout 5 openssl s_client -connect "127.0.0.1:$TLS_PORT" -servername localhost \
    -verify_hostname localhost -verify_return_error -CAfile "$TLS_DIR/ca.pem" </dev/null >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "no TLS handshake on 127.0.0.1:$TLS_PORT within 60 s"
    sleep 0.5
done

TLS_DIR=$TLS_DIR TLS_PLAIN_PORT=$PLAIN_PORT TLS_PORT=$TLS_PORT \
    TLS_NODE_LOG="$STATE/log/rpctls@localhost.log" RABBITMQCTL="$REPO_ROOT/scripts/node.sh ctl rpctls" \
    stage_tests tls
