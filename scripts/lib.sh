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
    build_release
    "$REPO_ROOT/target/release/xtask" "$@"
}

# The scripts' cargo commands leave out cargo's future-incompatibility notice for nom (see
# nom_note); build_release shows it once, explained.
export CARGO_FUTURE_INCOMPAT_REPORT_FREQUENCY=never

# build_release: `cargo build --release` of the workspace (the binaries and scripts/xtask), once
# per run (XTASK_BUILT=1 afterwards). A build that compiles says what it builds and shows its
# progress (crates built of the workspace's total: a line a minute, after 5 lines every 2
# minutes; on a terminal, one line kept up to date); cargo's warnings and errors come on
# stderr as usual.
build_release() {
    [[ -z ${XTASK_BUILT:-} ]] || return 0
    ensure_build_deps
    local tree total ours statuses=()
    # The packages in the build (cargo's messages name each), and how many are the workspace's.
    tree=$(cargo tree --workspace --edges normal,build --prefix none 2>/dev/null | awk 'NF { print $1, $2, ($3 ~ /^\(\//) }' | sort -u) || tree=
    total=$(grep -c . <<<"$tree") ours=$(grep -c ' 1$' <<<"$tree")
    {
        CARGO_FUTURE_INCOMPAT_REPORT_FREQUENCY=always \
            cargo build --release --message-format=json-render-diagnostics 2> >(nom_note >&2) |
            build_progress "$total" "$ours"
        statuses=("${PIPESTATUS[@]}")
        wait $! # nom_note's last lines
    } || true
    ((${statuses[0]:-1} == 0)) || die "cargo build --release failed"
    export XTASK_BUILT=1
}

# build_progress TOTAL OURS: reads cargo's JSON messages (stdout of --message-format=json-...)
# and reports the build's progress once something compiles (TOTAL packages, OURS of them the
# workspace's: built last, and the longest to build in release).
build_progress() {
    local total=$1 ours=$2 line chunk='' id seen=' ' done=0 deps=0 built=0 last='' now
    local t0=$SECONDS shown=$SECONDS lines=0 tty=0 rc
    [[ -t 2 ]] && tty=1
    while :; do
        # read -t 5: a line a minute even while one crate compiles for long; a partial line
        # read when the time is up is kept for the next read.
        if IFS= read -r -t 5 line; then
            line=$chunk$line chunk=''
        else
            rc=$?
            if ((rc > 128)); then
                chunk+=$line
                line=''
            else
                line=$chunk$line chunk=''
                [[ -n $line ]] || break
            fi
        fi
        if [[ $line == '{"reason":"compiler-artifact"'* ]]; then
            id=${line#*\"package_id\":\"} id=${id%%\"*}
            if [[ $seen != *" $id "* ]]; then
                seen+="$id " done=$((done + 1))
                [[ $id == path+* ]] || deps=$((deps + 1))
            fi
            if [[ $line != *'"fresh":true'* ]]; then
                ((built > 0)) || msg "cargo build --release: compiling the workspace and its dependencies ($total crates; the first build takes a few minutes)"
                built=$((built + 1))
                # The package's name (package_id: ...#NAME@VERSION, or .../NAME#VERSION).
                if [[ $id == *#*@* ]]; then last=${id##*#} last=${last%@*}; else last=${id%#*} last=${last##*/}; fi
            fi
        fi
        ((built > 0)) || continue
        now="last built: $last"
        ((ours == 0 || deps < total - ours)) || now="now the workspace's own crates, the longest part"
        if ((tty)); then
            printf '\r\033[K  %s of %s crates built, %s (%s)' "$done" "$total" "$(mins $((SECONDS - t0)))" "$now" >&2
        elif ((SECONDS - shown >= (lines < 5 ? 60 : 120))); then
            msg "  $done of $total crates built, $(mins $((SECONDS - t0))) so far ($now)"
            shown=$SECONDS lines=$((lines + 1))
        fi
    done
    ((tty == 0 || built == 0)) || printf '\r\033[K' >&2
    ((built == 0)) || msg "cargo build --release: $built crates compiled in $(mins $((SECONDS - t0)))"
}

mins() { printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); }

# nom_note: passes cargo's stderr on without its status lines (Compiling, Downloaded, ...: -q
# would also drop the future-incompatibility notice); after that notice, when it names only
# nom, says what it means.
nom_note() {
    local line nom=0
    while IFS= read -r line; do
        [[ $line =~ ^\ *(Compiling|Checking|Downloading|Downloaded|Updating|Locking|Adding|Blocking|Finished|Fresh|Running)\  ]] && continue
        printf '%s\n' "$line"
        if [[ $line == 'warning: the following packages contain code that will be rejected by a future version of Rust: nom v'* &&
            $line != *,* ]]; then
            nom=1
        elif ((nom)) && [[ $line == note:* ]]; then
            printf '%s\n' "note: known and harmless today: nom 4 comes with amiquip 0.4 (unmaintained), and builds with this Rust (README, Where things live); the scripts' other cargo commands leave this notice out"
            nom=0
        fi
    done
}

# stage_tests FILTER: the tests of rpc-server/tests/it/stages/ matching FILTER (the assertions of
# the stages whose OS work a script did), after the release build they drive.
stage_tests() {
    build_release
    cargo test --release -p rpc-server --test it "stages::$1" -- --ignored --nocapture --test-threads=1
}

# Sets ROOT_CMD to the prefix that runs a command as root: () when we are root,
# (sudo -n) when password-less sudo works. Returns 1 if neither is available.
find_root_cmd() {
    ROOT_CMD=()
    ((EUID == 0)) || { command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null && ROOT_CMD=(sudo -n); }
}

# Debian packages. Every script installs through apt_install: apt-get runs under a lock of ours
# (target/apt.lock: a stage in the background never races one in the foreground) and waits up
# to 10 min for dpkg's own lock (another apt on the machine); `apt-get update` runs at most once
# per run (RPC_RUN: the first script sets it, the scripts it starts inherit it), and only if a
# package has no candidate, the lists are over a day old, or an install failed; apt's output goes
# to target/apt.log, whose last lines are shown when it fails.
APT_LOG=target/apt.log
export RPC_RUN=${RPC_RUN:-$$.$(date +%s)}

# apt_install PKG...: install the packages (those not installed yet) as root. Returns 1 (with a
# message) if root is not available, 2 if apt-get failed (with the end of its log).
apt_install() {
    local pkg todo=() rc=0 t0=$SECONDS
    for pkg; do dpkg -s "$pkg" 2>/dev/null | grep -qx 'Status: install ok installed' || todo+=("$pkg"); done
    ((${#todo[@]} > 0)) || return 0
    if ! find_root_cmd; then
        msg "cannot install ${todo[*]}: not root, and no password-less sudo"
        return 1
    fi
    mkdir -p target
    msg "installing ${todo[*]} with apt-get (log: $APT_LOG)"
    (
        exec 8>target/apt.lock
        ! command -v flock >/dev/null 2>&1 || flock -w 900 8 || { msg "target/apt.lock still held after 15 min"; exit 2; }
        if apt_lists_stale "${todo[@]}"; then apt_update || exit 2; fi
        apt_get install "${todo[@]}" && exit 0
        # Stale lists (a package version gone from the mirror): once more, after an update.
        ! apt_update_done && apt_update && apt_get install "${todo[@]}" || exit 2
    ) 8>&- || rc=$?
    if ((rc != 0)); then
        msg "apt-get install ${todo[*]} failed; the end of $APT_LOG:"
        tail -n 12 "$APT_LOG" | sed 's/^/    /' >&2
        return 2
    fi
    msg "installed ${todo[*]} in $((SECONDS - t0))s"
}

# apt_get ARGS...: apt-get as root, non-interactive, its output appended to $APT_LOG.
apt_get() {
    printf '\n==== %s apt-get %s\n' "$(date '+%F %T')" "$*" >>"$APT_LOG"
    # Our locks' fds closed: a service a package starts (rabbitmq-server) must not hold them.
    "${ROOT_CMD[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -y -q -o DPkg::Lock::Timeout=600 \
        --no-install-recommends "$@" </dev/null >>"$APT_LOG" 2>&1 8>&- 9>&-
}
apt_update_done() { [[ $(cat target/apt-updated 2>/dev/null) == "$RPC_RUN" ]]; }
apt_update() {
    apt_update_done && return 0
    msg "running apt-get update"
    apt_get update || return
    printf '%s\n' "$RPC_RUN" >target/apt-updated
}
# apt_lists_stale PKG...: should apt-get update run first (not done yet in this run, and a
# package without a candidate or no package list written in the last day: ctime, as apt sets
# a list's mtime to the mirror's date)?
apt_lists_stale() {
    local pkg
    apt_update_done && return 1
    [[ -n $(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' -ctime -1 2>/dev/null | head -n 1) ]] || return 0
    for pkg; do
        apt-cache policy "$pkg" 2>/dev/null | grep -q 'Candidate: [^(]' || return 0
    done
    return 1
}

# missing_packages NEED...: the Debian packages missing here for each NEED (one a line):
#   build       cargo build: a C compiler, pkg-config, OpenSSL's headers
#   rabbitmq    a RabbitMQ broker and nodes (scripts/broker.sh, node.sh, cluster.sh)
#   node, python, prometheus, gnu-time, and shellcheck, iptables, openssl, hyperfine, debootstrap,
#   valgrind (the bench's rows i)
missing_packages() {
    local need
    for need; do
        case $need in
            build)
                command -v cc >/dev/null 2>&1 || printf '%s\n' gcc libc6-dev
                command -v pkg-config >/dev/null 2>&1 || echo pkg-config
                pkg-config --exists openssl 2>/dev/null || echo libssl-dev
                ;;
            rabbitmq) [[ -x ${RABBITMQ_BIN:-/usr/lib/rabbitmq/bin}/rabbitmq-server ]] || echo rabbitmq-server ;;
            node) command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || printf '%s\n' nodejs npm ;;
            python) python3 -c 'import venv, ensurepip' 2>/dev/null || printf '%s\n' python3 python3-venv ;;
            prometheus) command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 || echo prometheus ;;
            gnu-time) [[ -x /usr/bin/time ]] || echo time ;;
            shellcheck | iptables | openssl | hyperfine | debootstrap | valgrind) command -v "$need" >/dev/null 2>&1 || echo "$need" ;;
            *) die "missing_packages: unknown need '$need'" ;;
        esac
    done
}

# ensure_build_deps: what `cargo build` needs beyond Rust itself: a C compiler, and
# OpenSSL's headers with pkg-config (TLS support through native-tls / openssl-sys).
# Installs Debian's packages when they are missing and root is available.
ensure_build_deps() {
    local missing
    command -v cargo >/dev/null 2>&1 ||
        die "cargo not found: install Rust (https://rustup.rs), then run this again"
    mapfile -t missing < <(missing_packages build)
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
    local reqs stamp missing
    if [[ ! -x $PY ]]; then
        mapfile -t missing < <(missing_packages python)
        ((${#missing[@]} == 0)) || apt_install "${missing[@]}" ||
            die "Python's venv/ensurepip modules are missing and could not be installed (see above; as root: apt-get install ${missing[*]})"
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
