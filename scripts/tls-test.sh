#!/usr/bin/env bash
# TLS end-to-end test (issue 5): rpc-server and rpc-client over amqps:// against a throwaway
# RabbitMQ node with a TLS listener, beside the machine's own broker (which is not touched).
#   scripts/tls-test.sh
# Makes a throwaway CA and a server certificate for "localhost" (SAN DNS:localhost only, no IP
# SAN) in target/tls/, starts the standalone node rpctls@localhost (plain AMQP on
# 127.0.0.1:5690, TLS on 127.0.0.1:5691, Erlang distribution on 127.0.0.1:25690; own HOME,
# Erlang cookie, config and data under target/tls/, like scripts/cluster.sh), then checks:
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
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ $# -eq 0 ]] || die "usage: $PROG   (takes no arguments)"


PLAIN_PORT=${TLS_TEST_PORT:-5690}
if ! [[ $PLAIN_PORT =~ ^[1-9][0-9]*$ ]] || ((PLAIN_PORT > 45534)); then
    die "TLS_TEST_PORT must be a port number up to 45534, got '$PLAIN_PORT'"
fi
TLS_PORT=$((PLAIN_PORT + 1))
DIST_PORT=$((PLAIN_PORT + 20000))
wait_secs=${TLS_TEST_WAIT:-120}
[[ $wait_secs =~ ^[0-9]+$ ]] || die "TLS_TEST_WAIT must be a number of seconds, got '$wait_secs'"

NODE=rpctls@localhost
HOST=127.0.0.1
TLS_REL=target/tls # relative to the repo root (lib.sh cd's there), for messages and flags
TLS_DIR=$REPO_ROOT/$TLS_REL
NODE_DIR=$TLS_DIR/node
COOKIE_HOME=$TLS_DIR/home
PID_FILE=$NODE_DIR/rabbitmq.pid
NODE_LOG=$NODE_DIR/log/$NODE.log
CA=$TLS_REL/ca.pem
QUEUE=rpc_tls
RMQ_BIN=${RABBITMQ_BIN:-/usr/lib/rabbitmq/bin}
client=$BIN_DIR/rpc-client
server=$BIN_DIR/rpc-server

# --- prerequisites -------------------------------------------------------------------------

# Not /usr/sbin/rabbitmqctl: Debian's wrapper there switches to the rabbitmq user when run as
# root, and with it to that user's HOME and Erlang cookie (the main broker's).
[[ -x $RMQ_BIN/rabbitmq-server && -x $RMQ_BIN/rabbitmqctl ]] ||
    skip "no rabbitmq-server/rabbitmqctl in $RMQ_BIN: cannot run a RabbitMQ node (scripts/broker.sh installs Debian's package as root)"
command -v erl >/dev/null 2>&1 || skip "erl (Erlang) not found in PATH: cannot run a RabbitMQ node"
if ! command -v openssl >/dev/null 2>&1; then
    apt_install openssl || skip "openssl is not installed and cannot be installed here (as root: apt-get install openssl)"
fi

if [[ ! -x $client || ! -x $server ]] || ! "$client" --help 2>/dev/null | grep -q -- --tls-ca; then
    ensure_build_deps
    msg "building the release binaries (cargo build --release)"
    cargo build --release
    [[ -x $client && -x $server ]] || die "no $client / $server after cargo build --release"
fi

# One run at a time: a second run would take the first one's node for a leftover and stop it.
# (Long-lived children get fd 9 closed, 9>&-: a node left behind by a killed run must not
# hold the lock.)
mkdir -p target
exec 9>target/tls-test.lock
if command -v flock >/dev/null 2>&1 && ! flock -n 9; then
    msg "another tls-test.sh run holds target/tls-test.lock; waiting for it (up to 15 min)"
    flock -w 900 9 || die "target/tls-test.lock still held after 15 min"
fi

# --- the standalone node -------------------------------------------------------------------

# Every RabbitMQ command runs with our HOME (cookie), no system rabbitmq-env.conf (it names
# the main broker's node) and Erlang distribution on loopback only.
RMQ_ENV=(-u RABBITMQ_ERLANG_COOKIE -u RABBITMQ_NODENAME -u ERL_AFLAGS -u ERL_ZFLAGS
    "HOME=$COOKIE_HOME" "RABBITMQ_CONF_ENV_FILE=$TLS_DIR/rabbitmq-env.conf"
    ERL_EPMD_ADDRESS=127.0.0.1 'ERL_FLAGS=-kernel inet_dist_use_interface {127,0,0,1}'
    LC_ALL=C.UTF-8)

# ctl SECS ARGS...: rabbitmqctl against our node, killed after SECS seconds.
ctl() {
    local secs=$1
    shift
    timeout "$secs" env "${RMQ_ENV[@]}" "$RMQ_BIN/rabbitmqctl" -n "$NODE" "$@" </dev/null 9>&-
}

# Pid of our node's VM from its pid file, if that process is alive and is our node (its
# environment names the node: guards against a reused pid). Fails otherwise.
node_pid() {
    local pid stat
    [[ -r $PID_FILE ]] || return 1
    pid=$(<"$PID_FILE")
    [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
    [[ $stat == "$pid "*") "[!ZX]* ]] || return 1
    tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | grep -qxF "RABBITMQ_NODENAME=$NODE" || return 1
    printf '%s\n' "$pid"
}

epmd_has() { epmd -names 2>/dev/null | grep -q "^name ${NODE%@*} at port "; }

show_node_log() {
    local f
    for f in "$NODE_LOG" "$NODE_DIR/log/startup.log"; do
        [[ -s $f ]] || continue
        msg "--- last errors in $f:"
        { grep -E '\[(error|critical)\]' "$f" || tail -n 8 "$f"; } | tail -n 8 | sed 's/^/    /' >&2
    done
}

# Stops our node (rabbitmqctl stop, then TERM/KILL by pid file). Fails if it still runs.
stop_node() {
    local pid deadline
    pid=$(node_pid) || pid=
    if [[ -z $pid ]]; then
        # Registered but no pid file: stop it by name (works if our cookie is still there).
        if epmd_has; then ctl 60 -q stop >/dev/null 2>&1 || true; fi
        return 0
    fi
    ctl 60 -q stop "$PID_FILE" >/dev/null 2>&1 || true
    node_pid >/dev/null || return 0
    warn "$NODE (pid $pid) did not stop within 60s; sending SIGTERM"
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + 10))
    while node_pid >/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
    if node_pid >/dev/null; then
        warn "$NODE (pid $pid) still running; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        deadline=$((SECONDS + 5))
        while node_pid >/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
    fi
    ! node_pid >/dev/null
}

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
        cat >"$d/server.ext" <<'EOF'
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost
EOF
        openssl x509 -req -in "$d/server.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" \
            -CAcreateserial -days 2 -sha256 -extfile "$d/server.ext" -out "$d/server.pem"
    ) >"$d/openssl.log" 2>&1 || {
        sed 's/^/    /' "$d/openssl.log" >&2
        die "creating the certificates with openssl failed"
    }
    openssl verify -CAfile "$d/ca.pem" "$d/server.pem" >/dev/null ||
        die "the server certificate does not verify against the CA"
}

write_node_config() {
    mkdir -p "$NODE_DIR/log" "$NODE_DIR/mnesia" "$NODE_DIR/conf.d" "$COOKIE_HOME"
    local cookie
    cookie=$(od -An -tx1 -N20 /dev/urandom | tr -d ' \n' | tr a-f A-F)
    (umask 077 && printf '%s' "$cookie" >"$COOKIE_HOME/.erlang.cookie")
    chmod 400 "$COOKIE_HOME/.erlang.cookie"
    # Deliberately empty: it replaces /etc/rabbitmq/rabbitmq-env.conf (the main broker's).
    : >"$TLS_DIR/rabbitmq-env.conf"
    cat >"$NODE_DIR/rabbitmq.conf" <<EOF
# $NODE, written by scripts/tls-test.sh (the plain listener comes from
# RABBITMQ_NODE_IP_ADDRESS and RABBITMQ_NODE_PORT). Throwaway certificates, no client
# certificates. Modest limits: several brokers share this machine.
listeners.ssl.1 = $HOST:$TLS_PORT
ssl_options.cacertfile = $TLS_DIR/ca.pem
ssl_options.certfile = $TLS_DIR/server.pem
ssl_options.keyfile = $TLS_DIR/server.key
ssl_options.verify = verify_none
ssl_options.fail_if_no_peer_cert = false
vm_memory_high_watermark.absolute = 512MiB
disk_free_limit.absolute = 100MB
log.file.level = info
EOF
    echo '[].' >"$NODE_DIR/enabled_plugins"
}

start_node() {
    local port
    if epmd_has; then
        die "$NODE is registered with epmd but is not the node of $TLS_REL (a leftover whose state was removed?); stop that VM first"
    fi
    for port in "$PLAIN_PORT" "$TLS_PORT" "$DIST_PORT"; do
        tcp_probe "$HOST" "$port" 1 &&
            die "port $HOST:$port is in use by another process; pick another TLS_TEST_PORT"
    done
    msg "starting $NODE (AMQP $HOST:$PLAIN_PORT, TLS $HOST:$TLS_PORT, distribution $HOST:$DIST_PORT)"
    env "${RMQ_ENV[@]}" \
        RABBITMQ_NODENAME="$NODE" \
        RABBITMQ_NODE_IP_ADDRESS="$HOST" \
        RABBITMQ_NODE_PORT="$PLAIN_PORT" \
        RABBITMQ_DIST_PORT="$DIST_PORT" \
        RABBITMQ_MNESIA_BASE="$NODE_DIR/mnesia" \
        RABBITMQ_LOG_BASE="$NODE_DIR/log" \
        RABBITMQ_CONFIG_FILE="$NODE_DIR/rabbitmq.conf" \
        RABBITMQ_CONFIG_FILES="$NODE_DIR/conf.d/*.conf" \
        RABBITMQ_ADVANCED_CONFIG_FILE="$NODE_DIR/advanced.config" \
        RABBITMQ_ENABLED_PLUGINS_FILE="$NODE_DIR/enabled_plugins" \
        RABBITMQ_PID_FILE="$PID_FILE" \
        ERL_CRASH_DUMP="$NODE_DIR/log/erl_crash.dump" \
        RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="+S 1:1" \
        "$RMQ_BIN/rabbitmq-server" -detached </dev/null 9>&- >"$NODE_DIR/log/startup.log" 2>&1 || {
        show_node_log
        die "rabbitmq-server -detached failed for $NODE"
    }
    # Wait for both listeners; the VM (pid file written early in boot) must stay alive.
    local t0=$SECONDS deadline=$((SECONDS + wait_secs)) seen=
    until amqp_probe "$HOST" "$PLAIN_PORT" 2 && tls_up; do
        if node_pid >/dev/null; then
            seen=1
        elif [[ -n $seen ]] || ((SECONDS - t0 > 30)); then
            show_node_log
            die "$NODE is not running (its VM exited or never started)"
        fi
        if ((SECONDS >= deadline)); then
            show_node_log
            die "$NODE did not accept TLS connections on $HOST:$TLS_PORT within ${wait_secs}s (raise TLS_TEST_WAIT if the machine is just slow)"
        fi
        sleep 1
    done
    msg "$NODE accepts AMQP on $HOST:$PLAIN_PORT and TLS on $HOST:$TLS_PORT (after $((SECONDS - t0))s)"
}

# --- cleanup ---------------------------------------------------------------------------------

SERVER_PID=
CREATED=
stop_server() {
    [[ -n $SERVER_PID ]] || return 0
    local deadline=$((SECONDS + 10))
    # is_our_server (lib.sh): alive, not a zombie, and an rpc-server (not a reused pid).
    if is_our_server "$SERVER_PID"; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        while is_our_server "$SERVER_PID" && ((SECONDS < deadline)); do sleep 0.1; done
        if is_our_server "$SERVER_PID"; then
            warn "rpc-server (pid $SERVER_PID) did not stop within 10s; sending SIGKILL"
            kill -KILL "$SERVER_PID" 2>/dev/null || true
        fi
    fi
    wait "$SERVER_PID" 2>/dev/null || true # reaps our own child; fails for a leftover
    SERVER_PID=
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    stop_server
    if [[ -n $CREATED ]]; then
        if stop_node; then
            rm -rf "$COOKIE_HOME"
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
if [[ -d $NODE_DIR ]] && { node_pid >/dev/null || epmd_has; }; then
    msg "stopping $NODE left over from an earlier run"
    stop_node || die "could not stop the leftover $NODE"
fi
rm -rf "$TLS_DIR"
mkdir -p "$TLS_DIR"
CREATED=1
make_certs
msg "throwaway CA and certificate for DNS:localhost in $TLS_REL/"
write_node_config
start_node

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
    -u AMQP_TLS_CA -u RPC_QUEUE -u RPC_URIS -u RUST_LOG)

# run_client NAME [VAR=VALUE...] -- ARGS...: runs rpc-client with the variables set; sets OUT
# (stdout), RC, ERR (its stderr file, $TLS_REL/client-NAME.err) and MS (milliseconds taken).
run_client() {
    local name=$1 t0 t1
    shift
    local -a vars=()
    while [[ $1 != -- ]]; do
        vars+=("$1")
        shift
    done
    shift
    ERR=$TLS_REL/client-$name.err
    RC=0
    t0=${EPOCHREALTIME/[.,]/}
    OUT=$(timeout 60 env "${CLEAN_ENV[@]}" "${vars[@]+"${vars[@]}"}" \
        "$client" --queue "$QUEUE" --timeout 10 "$@" </dev/null 2>"$ERR" 9>&-) || RC=$?
    t1=${EPOCHREALTIME/[.,]/}
    MS=$(((t1 - t0) / 1000))
}

# show_err: the client's stderr, indented (after a FAIL line).
show_err() { sed 's/^/    /' "$ERR" >&2; }

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
deadline=$((SECONDS + 30))
while ((SECONDS < deadline)) && kill -0 "$SERVER_PID" 2>/dev/null; do
    if grep -q "waiting for RPC requests on queue '$QUEUE'" "$SERVER_LOG"; then
        consuming=1
        break
    fi
    sleep 0.2
done
run_client a AMQP_URI="$URI_OK" -- --tls-ca "$CA" 30
if [[ -z $consuming ]]; then
    fail "(a) rpc-server did not start consuming '$QUEUE' over TLS within 30s; its log:"
    sed 's/^/    /' "$SERVER_LOG" >&2
elif [[ $RC == 0 && $OUT == 832040 ]]; then
    ok "(a) rpc-server consumes over amqps://; rpc-client --tls-ca $CA 30 -> 832040 (${MS} ms)"
else
    fail "(a) rpc-client --tls-ca $CA 30: exit $RC, stdout '$OUT' (want 0, 832040); stderr:"
    show_err
fi

# (b) Our CA is not among the system's: the certificate is untrusted without --tls-ca.
run_client b AMQP_URI="$URI_OK" -- 30
if [[ $RC == 3 && -z $OUT ]] && grep -qi 'certificate' "$ERR" && ((MS < FAST_MS)); then
    ok "(b) without --tls-ca: exit 3 in ${MS} ms: $(head -n 1 "$ERR")"
else
    fail "(b) without --tls-ca: exit $RC in ${MS} ms, stdout '$OUT' (want exit 3 within ${FAST_MS} ms and a message about the certificate); stderr:"
    show_err
fi

# (c) The certificate names localhost only (no IP SAN): 127.0.0.1 must not match.
run_client c AMQP_URI="$URI_IP" -- --tls-ca "$CA" 30
if [[ $RC == 3 && -z $OUT ]] && grep -qi 'mismatch' "$ERR" && ((MS < FAST_MS)); then
    ok "(c) 127.0.0.1 (certificate for localhost only): exit 3 in ${MS} ms: $(head -n 1 "$ERR")"
else
    fail "(c) amqps://...@127.0.0.1 with --tls-ca: exit $RC in ${MS} ms, stdout '$OUT' (want exit 3, a name mismatch); stderr:"
    show_err
fi

# (d) --tls with the separate host/port flags.
run_client d -- --tls --host localhost --port "$TLS_PORT" --tls-ca "$CA" 10
if [[ $RC == 0 && $OUT == 55 ]]; then
    ok "(d) --tls --host localhost --port $TLS_PORT --tls-ca $CA 10 -> 55 (${MS} ms)"
else
    fail "(d) --tls --host localhost --port $TLS_PORT: exit $RC, stdout '$OUT' (want 0, 55); stderr:"
    show_err
fi

# (e) Passwords never appear. guest's password is its name, so also a second user with a
# random password: a call with trace-level logging of everything, a refused login and an
# untrusted-certificate failure; every message must show the masked URI instead.
e_bad=()
pw=pw$(od -An -tx1 -N12 /dev/urandom | tr -d ' \n')
wrong=wrong$(od -An -tx1 -N12 /dev/urandom | tr -d ' \n')
if ctl 60 -q add_user tlsuser "$pw" >/dev/null 2>&1 &&
    ctl 60 -q set_permissions -p / tlsuser '.*' '.*' '.*' >/dev/null 2>&1; then
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
f_bad=()
if [[ $RC != 3 ]] || ((MS >= FAST_MS)); then
    f_bad+=("TLS to the plain port: exit $RC in ${MS} ms")
fi
f1_msg=$(head -n 1 "$ERR")
run_client f2 AMQP_URI="amqp://guest:guest@localhost:$TLS_PORT" -- --connect-timeout 10 30
if [[ $RC != 3 ]] || ((MS >= FAST_MS)); then
    f_bad+=("plain AMQP to the TLS port: exit $RC in ${MS} ms")
fi
if ((${#f_bad[@]} == 0)); then
    ok "(f) TLS to the plain port and plain AMQP to the TLS port: exit 3 within ${FAST_MS} ms ($f1_msg)"
else
    fail "(f) protocol mix-ups (want exit 3 within ${FAST_MS} ms): ${f_bad[*]}; stderr:"
    sed 's/^/    /' "$TLS_REL/client-f1.err" "$TLS_REL/client-f2.err" >&2
fi

# (g) A CA bundle: every certificate in the --tls-ca file is trusted, not just the first.
bundle=$TLS_REL/bundle.pem
openssl req -x509 -new -newkey rsa:2048 -nodes -sha256 -days 2 -keyout "$TLS_REL/other.key" \
    -out "$TLS_REL/other.pem" -subj "/CN=rabbit-rpc tls-test unrelated CA" 2>/dev/null
cat "$TLS_REL/other.pem" "$CA" >"$bundle"
run_client g AMQP_URI="$URI_OK" -- --tls-ca "$bundle" 12
if [[ $RC == 0 && $OUT == 144 ]]; then
    ok "(g) --tls-ca with our CA second in a bundle -> 144"
else
    fail "(g) --tls-ca bundle (our CA second): exit $RC, stdout '$OUT' (want 0, 144); stderr:"
    show_err
fi

# (h) An unusable --tls-ca is a usage error (exit 2) before any connection attempt.
run_client h AMQP_URI="$URI_OK" -- --tls-ca "$TLS_REL/does-not-exist.pem" 12
if [[ $RC == 2 ]]; then
    ok "(h) a missing --tls-ca file: exit 2 ($(head -n 1 "$ERR"))"
else
    fail "(h) a missing --tls-ca file: exit $RC (want 2); stderr:"
    show_err
fi

stop_server
msg "finished in $((SECONDS - t_start))s"
echo "tls: $passed passed, $failed failed"
((failed == 0))
