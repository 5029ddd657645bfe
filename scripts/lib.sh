# shellcheck shell=bash
# Shared helpers for the scripts in this directory. Source it, don't run it:
#   . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# Sourcing changes the working directory to the repository root.

PROG=$(basename "$0")
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO_ROOT" || exit 1

msg() { printf '%s: %s\n' "$PROG" "$*" >&2; }
warn() { printf '%s: warning: %s\n' "$PROG" "$*" >&2; }
# Exit status of a check that cannot run here (test.sh counts it as skipped, not failed).
# shellcheck disable=SC2034 # used by the scripts that source this file
SKIP=77
skip() { msg "skipped: $*"; exit "$SKIP"; }
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }

# The binaries' directory and the run directory of server-<i>.{log,pid} (relative to the root).
# shellcheck disable=SC2034 # used by the scripts that source this file
BIN_DIR=${RPC_BIN_DIR:-target/release} RUN_DIR=${RPC_RUN_DIR:-target/run}

# xtask ARGS...: the workspace's dev tool (scripts/xtask; by hand: `cargo xtask ...`), built
# by the first script that uses it together with the whole workspace (built alone, the binaries'
# build repeated much of it).
xtask() {
    if [[ -z ${XTASK_BUILT:-} ]]; then
        ensure_build_deps
        if [[ ! -x $REPO_ROOT/target/release/xtask ]]; then
            msg "cargo build --release (the binaries and the scripts' dev tool; the first build takes a few minutes)"
        fi
        cargo build --release -q || die "cargo build --release failed"
        export XTASK_BUILT=1
    fi
    "$REPO_ROOT/target/release/xtask" "$@"
}

# stage_tests FILTER: the tests of rpc-server/tests/it/stages/ matching FILTER (the assertions of
# the stages whose OS work a script did), after the release build they drive.
stage_tests() {
    xtask --version >/dev/null
    cargo test --release -p rpc-server --test it "stages::$1" -- --ignored --nocapture --test-threads=1
}

# Sets ROOT_CMD to the prefix that runs a command as root: () when we are root,
# (sudo -n) when password-less sudo works. Returns 1 if neither is available.
find_root_cmd() {
    ROOT_CMD=()
    ((EUID == 0)) || { command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null && ROOT_CMD=(sudo -n); }
}

# apt_install PKG...: install Debian packages as root (apt-get update first).
# Returns 1 if root is not available or apt-get fails.
APT_UPDATED=
apt_install() {
    find_root_cmd || return 1
    if [[ -z $APT_UPDATED ]]; then
        msg "running apt-get update"
        "${ROOT_CMD[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || return 1
        APT_UPDATED=1
    fi
    msg "installing $* with apt-get"
    "${ROOT_CMD[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "$@" </dev/null >&2 || return 1
}

# ensure_build_deps: what `cargo build` needs beyond Rust itself: a C compiler, and
# OpenSSL's headers with pkg-config (TLS support through native-tls / openssl-sys).
# Installs Debian's packages when they are missing and root is available.
ensure_build_deps() {
    local missing=()
    command -v cargo >/dev/null 2>&1 ||
        die "cargo not found: install Rust (https://rustup.rs), then run this again"
    command -v cc >/dev/null 2>&1 || missing+=(gcc libc6-dev)
    command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
    pkg-config --exists openssl 2>/dev/null || missing+=(libssl-dev)
    ((${#missing[@]} == 0)) && return 0
    apt_install "${missing[@]}" ||
        die "missing build dependencies; as root run: apt-get install ${missing[*]}"
}

# The Python virtualenv that scripts/interop.sh and scripts/bench.sh share.
PY_VENV=target/py-venv
PY=$PY_VENV/bin/python

# ensure_venv REQUIREMENTS-FILE...: make $PY_VENV a venv holding the packages of each file
# (pip install -r). A file is installed again only when it differs from the copy kept in the
# venv ($PY_VENV/.req-<file name>): scripts with different files share one venv.
ensure_venv() {
    local reqs stamp
    if [[ ! -x $PY ]]; then
        python3 -c 'import venv, ensurepip' 2>/dev/null || apt_install python3-venv ||
            die "python3 venv/ensurepip module missing; install python3-venv (as root: apt-get install python3-venv)"
        msg "creating $PY_VENV"
        rm -rf "$PY_VENV"
        python3 -m venv "$PY_VENV" || die "python3 -m venv $PY_VENV failed"
    fi
    for reqs in "$@"; do
        stamp=$PY_VENV/.req-$(basename "$reqs")
        cmp -s "$reqs" "$stamp" && continue
        msg "installing $reqs into $PY_VENV"
        "$PY" -m pip install -q --disable-pip-version-check -r "$reqs" ||
            die "pip install -r $reqs failed"
        cp "$reqs" "$stamp"
    done
}

# one_run NAME: one run of this script at a time, through target/NAME.lock on fd 9 (waits up
# to 15 min). Long-lived children get fd 9 closed (9>&-): one left behind must not hold it.
one_run() {
    mkdir -p target
    exec 9>"target/$1.lock"
    if command -v flock >/dev/null 2>&1 && ! flock -n 9; then
        msg "another $PROG run holds target/$1.lock; waiting for it (up to 15 min)"
        flock -w 900 9 || die "target/$1.lock is still held after 15 min"
    fi
}

# Is pid a live rpc-server process? (Guards against reused pids: a pid from a stale pid file
# is only trusted if that process is still an rpc-server; /proc/PID/stat is "PID (COMM)
# STATE ...", and a zombie, Z, has exited.)
is_our_server() {
    [[ $1 =~ ^[0-9]+$ ]] && kill -0 "$1" 2>/dev/null &&
        [[ ! -r /proc/$1/stat || $(<"/proc/$1/stat") == "$1 (rpc-server) "[!ZX]* ]]
}
