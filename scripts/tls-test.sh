#!/usr/bin/env bash
# TLS end-to-end test (issue 5): rpc-server and rpc-client over amqps:// against a throwaway
# RabbitMQ node with a TLS listener, beside the machine's own broker (which is not touched).
#   scripts/tls-test.sh
# Makes a throwaway CA and a server certificate for "localhost" (SAN DNS:localhost only, no IP
# SAN) in target/tls/, starts the standalone node rpctls@localhost (plain AMQP on
# 127.0.0.1:5690, TLS on 127.0.0.1:5691, Erlang distribution on 127.0.0.1:25690; own HOME,
# Erlang cookie, config and data under target/tls/, with scripts/node.sh), then checks:
#   a. rpc-server consumes over amqps:// with --tls-ca; rpc-client --tls-ca ... 30 -> 832040
#   b. without --tls-ca the CA is untrusted: exit 3, a message about the certificate, fast
#   c. amqps://...@127.0.0.1 (the certificate names only localhost): exit 3, name mismatch
#   d. --tls --host localhost --port 5691 --tls-ca ... 10 -> 55
#   e. passwords never appear in logs or error messages (another user with a random
#      password, trace-level client logging, a refused login; masked URIs are shown instead)
#   f. TLS against the plain AMQP port, and plain AMQP against the TLS port: exit 3, fast
# The node is stopped and its state removed at exit (target/tls/ is kept on failure, with the
# logs). Prints "tls: N passed, M failed"; exits 1 if a check failed, 77 if no RabbitMQ node
# can be run here (RabbitMQ or Erlang not installed, no openssl and no root to install it).
# Env: TLS_TEST_PORT (plain AMQP port, default 5690; TLS is +1, distribution +20000),
# TLS_TEST_WAIT (seconds for the node to boot, default 120), TLS_TEST_KEEP=1 (keep target/tls/
# with the certificates and logs even on success; the node is stopped all the same),
# RABBITMQ_BIN, RPC_BIN_DIR.
set -euo pipefail
NODE_WAIT=${TLS_TEST_WAIT:-120}
# shellcheck source=scripts/node.sh
. "$(dirname "${BASH_SOURCE[0]}")/node.sh"

[[ $# -eq 0 ]] || die "usage: $PROG   (takes no arguments)"

PLAIN_PORT=${TLS_TEST_PORT:-5690}
node_select rpctls "$PLAIN_PORT" "$REPO_ROOT/target/tls" # checks the port
TLS_PORT=$((PLAIN_PORT + 1))
HOST=127.0.0.1
TLS_REL=target/tls # relative to the repo root (lib.sh cd's there), for messages and flags
TLS_DIR=$REPO_ROOT/$TLS_REL
CA=$TLS_REL/ca.pem
QUEUE=rpc_tls
client=$BIN_DIR/rpc-client
server=$BIN_DIR/rpc-server

# --- prerequisites -------------------------------------------------------------------------

node_installed
if ! command -v openssl >/dev/null 2>&1; then
    apt_install openssl || skip "openssl is not installed and cannot be installed here (as root: apt-get install openssl)"
fi
if [[ ! -x $client || ! -x $server ]] || ! "$client" --help 2>/dev/null | grep -q -- --tls-ca; then
    ensure_build_deps
    msg "building the release binaries (cargo build --release)"
    cargo build --release
    [[ -x $client && -x $server ]] || die "no $client / $server after cargo build --release"
fi
xtask --version >/dev/null

# One run at a time: a second run would take the first one's node for a leftover and stop it.
one_run tls-test

# Succeeds once the TLS listener completes a handshake with a certificate for localhost
# signed by our CA.
tls_up() {
    timeout 5 openssl s_client -connect "$HOST:$TLS_PORT" -servername localhost \
        -verify_hostname localhost -verify_return_error -CAfile "$CA" \
        </dev/null >/dev/null 2>&1
}

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
    ) >"$d/openssl.log" 2>&1 || {
        sed 's/^/    /' "$d/openssl.log" >&2
        die "creating the certificates with openssl failed"
    }
    openssl verify -CAfile "$d/ca.pem" "$d/server.pem" >/dev/null ||
        die "the server certificate does not verify against the CA"
}

# --- cleanup ---------------------------------------------------------------------------------

SERVER_PID=
CREATED=
stop_server() {
    # is_our_server (lib.sh): alive, not a zombie, and an rpc-server (not a reused pid).
    [[ -z $SERVER_PID ]] || ! is_our_server "$SERVER_PID" || stop_pid "$SERVER_PID" 10 is_our_server || true
    SERVER_PID=
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    stop_server
    if [[ -n $CREATED ]]; then
        if node_stop; then
            rm -rf "${TLS_DIR:?}/home"
            if ((rc == 0)) && [[ -z ${TLS_TEST_KEEP:-} ]]; then
                rm -rf "$TLS_DIR"
            else
                cp "$NODE_LOG" "$TLS_DIR/rabbitmq.log" 2>/dev/null # beside the other logs
                rm -rf "$NODE_DIR"
                msg "certificates and logs kept in $TLS_REL/"
            fi
        else
            warn "could not stop $NODE; not removing $TLS_REL"
            ((rc != 0)) || rc=1
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

t_start=$SECONDS
# An rpc-server and a node left running by a run that was killed: stop them first.
if [[ -r $TLS_DIR/server.pid ]] && is_our_server "$(<"$TLS_DIR/server.pid")"; then
    msg "stopping the rpc-server left over from an earlier run"
    SERVER_PID=$(<"$TLS_DIR/server.pid")
    stop_server
fi
if [[ -d $NODE_DIR ]] && { node_pid >/dev/null || node_epmd_has; }; then
    msg "stopping $NODE left over from an earlier run"
    node_stop || die "could not stop the leftover $NODE"
fi
rm -rf "$TLS_DIR"
mkdir -p "$TLS_DIR"
CREATED=1
make_certs
msg "throwaway CA and certificate for DNS:localhost in $TLS_REL/"
# Throwaway certificates, no client certificates. Modest limits: several brokers share this
# machine.
node_write_config "listeners.ssl.1 = $HOST:$TLS_PORT" \
    "ssl_options.cacertfile = $TLS_DIR/ca.pem" "ssl_options.certfile = $TLS_DIR/server.pem" \
    "ssl_options.keyfile = $TLS_DIR/server.key" "ssl_options.verify = verify_none" \
    "ssl_options.fail_if_no_peer_cert = false" "vm_memory_high_watermark.absolute = 512MiB" \
    "disk_free_limit.absolute = 100MB"
NODE_MORE_PORTS=("$TLS_PORT")
node_start
node_wait $((SECONDS + NODE_WAIT)) tls_up

# --- the checks ----------------------------------------------------------------------------

passed=0
failed=0
ok() {
    msg "ok: $*"
    passed=$((passed + 1))
}
fail() {
    msg "FAIL: $*"
    failed=$((failed + 1))
}

# What a client run must not inherit from the caller's environment.
CLEAN_ENV=(-u AMQP_URI -u AMQP_HOST -u AMQP_PORT -u AMQP_VHOST -u AMQP_USER -u AMQP_PASSWORD
    -u AMQP_PASSWORD_FILE -u AMQP_TLS_CA -u RPC_QUEUE -u RPC_URIS -u RUST_LOG)

# run_client NAME [VAR=VALUE...] -- ARGS...: runs rpc-client with the variables set; sets OUT
# (stdout), RC, ERR (its stderr file, $TLS_REL/client-NAME.err) and MS (milliseconds taken).
run_client() {
    local name=$1 t0 t1
    shift
    local -a vars=()
    while [[ $1 != -- ]]; do vars+=("$1") && shift; done
    shift
    ERR=$TLS_REL/client-$name.err
    RC=0
    t0=${EPOCHREALTIME/[.,]/}
    OUT=$(timeout 60 env "${CLEAN_ENV[@]}" "${vars[@]+"${vars[@]}"}" \
        "$client" --queue "$QUEUE" --timeout 10 "$@" </dev/null 2>"$ERR" 9>&-) || RC=$?
    t1=${EPOCHREALTIME/[.,]/}
    MS=$(((t1 - t0) / 1000))
}

# want LABEL RC STDOUT [PATTERN]: the last run_client exited RC and printed STDOUT and, with
# PATTERN, its stderr matches PATTERN (case-insensitive) and it took under FAST_MS.
want() {
    local label=$1 rc=$2 out=$3 pattern=${4:-} hint=
    [[ -z $pattern ]] || hint=", a message matching '$pattern' within $FAST_MS ms"
    if [[ $RC == "$rc" && $OUT == "$out" ]] &&
        { [[ -z $pattern ]] || { grep -qi -- "$pattern" "$ERR" && ((MS < FAST_MS)); }; }; then
        ok "$label: exit $RC${OUT:+, $OUT} in ${MS} ms${pattern:+: $(head -n 1 "$ERR")}"
    else
        fail "$label: exit $RC in ${MS} ms, stdout '$OUT' (want exit $rc, stdout '$out'$hint); stderr:"
        sed 's/^/    /' "$ERR" >&2
    fi
}

# A successful call must answer WANT; a failed connection must exit 3 within FAST_MS.
FAST_MS=5000
URI_OK=amqps://guest:guest@localhost:$TLS_PORT
URI_IP=amqps://guest:guest@127.0.0.1:$TLS_PORT

# (a) rpc-server over amqps:// (URI in the environment, not on the command line).
SERVER_LOG=$TLS_REL/server.log
env "${CLEAN_ENV[@]}" AMQP_URI="$URI_OK" \
    "$server" --tls-ca "$CA" --queue "$QUEUE" </dev/null >"$SERVER_LOG" 2>&1 9>&- &
SERVER_PID=$!
echo "$SERVER_PID" >"$TLS_DIR/server.pid"
consuming=
AMQP_URI=$(node_uri) xtask queue wait-consumers "$QUEUE" 1 --timeout 30 --pid "$SERVER_PID" 9>&- && consuming=1
run_client a AMQP_URI="$URI_OK" -- --tls-ca "$CA" 30
if [[ -z $consuming ]]; then
    fail "(a) rpc-server did not start consuming '$QUEUE' over TLS within 30s; its log:"
    sed 's/^/    /' "$SERVER_LOG" >&2
else
    want "(a) rpc-server consumes over amqps://; rpc-client --tls-ca $CA 30" 0 832040
fi

# (b) Our CA is not among the system's: the certificate is untrusted without --tls-ca.
run_client b AMQP_URI="$URI_OK" -- 30
want "(b) without --tls-ca" 3 '' certificate

# (c) The certificate names localhost only (no IP SAN): 127.0.0.1 must not match.
run_client c AMQP_URI="$URI_IP" -- --tls-ca "$CA" 30
want "(c) amqps://...@127.0.0.1 (certificate for localhost only)" 3 '' mismatch

# (d) --tls with the separate host/port flags.
run_client d -- --tls --host localhost --port "$TLS_PORT" --tls-ca "$CA" 10
want "(d) --tls --host localhost --port $TLS_PORT --tls-ca $CA 10" 0 55

# (e) Passwords never appear. guest's password is its name, so also a second user with a
# random password: a call with trace-level logging of everything, a refused login and an
# untrusted-certificate failure; every message must show the masked URI instead.
e_bad=()
pw=pw$(od -An -tx1 -N12 /dev/urandom | tr -d ' \n')
wrong=wrong$(od -An -tx1 -N12 /dev/urandom | tr -d ' \n')
if node_ctl 60 -q add_user tlsuser "$pw" >/dev/null 2>&1 &&
    node_ctl 60 -q set_permissions -p / tlsuser '.*' '.*' '.*' >/dev/null 2>&1; then
    run_client e1 AMQP_URI="amqps://tlsuser:$pw@localhost:$TLS_PORT" RUST_LOG=trace,amiquip=trace,rpc_client=trace -- --tls-ca "$CA" -v 7
    [[ $RC == 0 && $OUT == 13 ]] || e_bad+=("tlsuser call with RUST_LOG=trace: exit $RC, stdout '$OUT' (want 0, 13)")
    run_client e2 AMQP_URI="amqps://tlsuser:$wrong@localhost:$TLS_PORT" -- --tls-ca "$CA" 7
    [[ $RC == 3 ]] || e_bad+=("wrong password: exit $RC (want 3)")
    grep -q 'tlsuser:\*\*\*\*@' "$ERR" || e_bad+=("wrong password: no masked URI (tlsuser:****@) in $ERR")
    run_client e3 AMQP_URI="amqps://tlsuser:$pw@localhost:$TLS_PORT" -- 7
    [[ $RC == 3 ]] || e_bad+=("untrusted CA: exit $RC (want 3)")
    grep -q 'tlsuser:\*\*\*\*@' "$ERR" || e_bad+=("untrusted CA: no masked URI (tlsuser:****@) in $ERR")
else
    e_bad+=("rabbitmqctl add_user/set_permissions tlsuser failed on $NODE")
fi
grep -q 'guest:\*\*\*\*@' "$SERVER_LOG" || e_bad+=("no masked URI (guest:****@) in $SERVER_LOG")
secrets=(-e "$pw" -e "$wrong" -e 'guest:guest' -e ':guest@')
for f in "$SERVER_LOG" "$TLS_REL"/client-*.err "$NODE_LOG"; do
    if [[ -f $f ]] && grep -qF "${secrets[@]}" "$f"; then
        e_bad+=("a password appears in $f: $(grep -F "${secrets[@]}" "$f" | head -n 1)")
    fi
done
if ((${#e_bad[@]} == 0)); then
    ok "(e) no password in the server log, the node log or any client message (masked URIs shown)"
else
    fail "(e) password hygiene:"
    printf '    %s\n' "${e_bad[@]}" >&2
fi

# (f) Protocol mix-ups fail fast with exit 3 rather than hang until --connect-timeout.
run_client f1 -- --tls --host localhost --port "$PLAIN_PORT" --tls-ca "$CA" 30
want "(f) TLS to the plain port" 3 '' .
run_client f2 AMQP_URI="amqp://guest:guest@localhost:$TLS_PORT" -- --connect-timeout 10 30
want "(f) plain AMQP to the TLS port" 3 '' .

# (g) A CA bundle: every certificate in the --tls-ca file is trusted, not just the first.
bundle=$TLS_REL/bundle.pem
openssl req -x509 -new -newkey rsa:2048 -nodes -sha256 -days 2 -keyout "$TLS_REL/other.key" \
    -out "$TLS_REL/other.pem" -subj "/CN=rabbit-rpc tls-test unrelated CA" 2>/dev/null
cat "$TLS_REL/other.pem" "$CA" >"$bundle"
run_client g AMQP_URI="$URI_OK" -- --tls-ca "$bundle" 12
want "(g) --tls-ca with our CA second in a bundle" 0 144

# (h) An unusable --tls-ca is a usage error (exit 2) before any connection attempt.
run_client h AMQP_URI="$URI_OK" -- --tls-ca "$TLS_REL/does-not-exist.pem" 12
want "(h) a missing --tls-ca file" 2 ''

stop_server
msg "finished in $((SECONDS - t_start))s"
echo "tls: $passed passed, $failed failed"
((failed == 0))
