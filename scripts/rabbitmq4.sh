#!/usr/bin/env bash
# RabbitMQ 4.x beside the machine's own broker: Debian 13's rabbitmq-server package in a
# debootstrap root, run chrooted as a throwaway node with RabbitMQ 4.3's deny settings
# (transient non-exclusive queues and global QoS refused), for tests against current RabbitMQ.
#   scripts/rabbitmq4.sh start     prepare the root if needed, start rpc4@localhost (AMQP on
#                                  127.0.0.1:RABBITMQ4_PORT, default 5710) with fresh data
#   scripts/rabbitmq4.sh stop      stop it, remove its data, unmount what start mounted
#   scripts/rabbitmq4.sh uri       its AMQP URI
#   scripts/rabbitmq4.sh ctl ARGS  rabbitmqctl ARGS against it
#   scripts/rabbitmq4.sh version   the RabbitMQ version in the root
# The root is prepared once (debootstrap --variant=minbase trixie from the machine's Debian
# mirror, then apt-get install --no-install-recommends rabbitmq-server: about 330 MB) and kept
# in RABBITMQ4_ROOT (default /var/cache/rabbit-rpc/trixie), outside the work tree. A
# policy-rc.d keeps the package from starting services. The node has its own epmd port
# (RABBITMQ4_PORT - 1340, default 4370) and distribution port (+20000), so it never meets
# the main broker. Needs root (debootstrap, chroot, mounts): exits 77 (skipped) without it.
set -euo pipefail
ROOT=${RABBITMQ4_ROOT:-/var/cache/rabbit-rpc/trixie}
PORT=${RABBITMQ4_PORT:-5710}
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() { die "usage: $PROG start | stop | uri | ctl ARGS... | version"; }
[[ $# -ge 1 ]] || usage
if ! [[ $PORT =~ ^[0-9]+$ ]] || ((PORT <= 1400)); then
    die "RABBITMQ4_PORT must be a port number above 1400, got '$PORT'"
fi
# scripts/node.sh runs the node chrooted, its state in NODE_BASE inside the root.
export NODE_ROOT=$ROOT NODE_BASE=/var/lib/rabbit-rpc NODE_EPMD_PORT=$((PORT - 1340))

need_root() {
    [[ $EUID -eq 0 ]] || skip "RabbitMQ 4.x runs in a chroot, which needs root"
}

# The machine's Debian mirror (deb822 or one-line apt sources), else deb.debian.org.
debian_mirror() {
    local uri
    uri=$(sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*\).*/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null |
        grep -v security | head -n 1) || true
    [[ -n $uri ]] || uri=$(awk '$1 == "deb" && $2 !~ /security/ { print $2; exit }' /etc/apt/sources.list 2>/dev/null) || true
    printf '%s\n' "${uri:-http://deb.debian.org/debian}"
}

# mount_into DIR: /proc and /dev inside the root (Erlang and apt need them); once.
mount_into() {
    local dir=$1
    mountpoint -q "$dir/proc" || mount -t proc proc "$dir/proc"
    mountpoint -q "$dir/dev" || mount --bind /dev "$dir/dev"
}

unmount_from() {
    local dir=$1 m
    for m in dev proc; do ! mountpoint -q "$dir/$m" || umount "$dir/$m" || umount -l "$dir/$m" || true; done
}

prepare_root() {
    [[ -x $ROOT/usr/lib/rabbitmq/bin/rabbitmq-server ]] && return 0
    command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap ||
        die "debootstrap is missing and cannot be installed (as root: apt-get install debootstrap)"
    local tmp=$ROOT.tmp mirror t0=$SECONDS
    mirror=$(debian_mirror)
    unmount_from "$tmp"
    rm -rf "$tmp"
    mkdir -p "$(dirname "$ROOT")"
    msg "preparing $ROOT: debootstrap --variant=minbase trixie from $mirror (once)"
    timeout 900 debootstrap --variant=minbase trixie "$tmp" "$mirror" >"$tmp.log" 2>&1 ||
        { tail -n 20 "$tmp.log" >&2; die "debootstrap failed (log: $tmp.log)"; }
    printf '#!/bin/sh\n# Installed by rabbit-rpc: no services start in this root.\nexit 101\n' >"$tmp/usr/sbin/policy-rc.d"
    chmod 755 "$tmp/usr/sbin/policy-rc.d"
    mount_into "$tmp"
    msg "installing rabbitmq-server in $tmp"
    if ! timeout 900 chroot "$tmp" env DEBIAN_FRONTEND=noninteractive sh -c \
        'apt-get update -qq && apt-get install -y -qq --no-install-recommends rabbitmq-server && apt-get clean' \
        >>"$tmp.log" 2>&1 </dev/null; then
        unmount_from "$tmp"
        tail -n 20 "$tmp.log" >&2
        die "installing rabbitmq-server in the root failed (log: $tmp.log)"
    fi
    unmount_from "$tmp"
    mv "$tmp" "$ROOT"
    msg "$ROOT ready in $((SECONDS - t0))s: RabbitMQ $(root_version)"
}

root_version() {
    # shellcheck disable=SC2016 # a dpkg-query format, not a shell expansion
    chroot "$ROOT" dpkg-query -W -f '${Version}' rabbitmq-server 2>/dev/null || echo unknown
}

case $1 in
    start)
        [[ $# -eq 1 ]] || usage
        need_root
        prepare_root
        mount_into "$ROOT"
        # Fresh data unless it runs. RabbitMQ 4.3 denies these deprecated features by default; 4.0 only warns.
        NODE_CONF=$'deprecated_features.permit.transient_nonexcl_queues = false\ndeprecated_features.permit.global_qos = false' \
            scripts/node.sh start rpc4 "$PORT"
        msg "RabbitMQ $(root_version) with 4.3's deny settings: $("$0" uri | xtask mask-uri)"
        ;;
    stop)
        [[ $# -eq 1 ]] || usage
        need_root
        if [[ -d $ROOT ]]; then
            dir=$ROOT$NODE_BASE/rpc4@localhost # with its port file: scripts/node.sh finds it
            [[ ! -d $dir ]] || { echo "$PORT" >"$dir/port" && scripts/node.sh stop rpc4; }
            ERL_EPMD_PORT=$NODE_EPMD_PORT epmd -kill >/dev/null 2>&1 || true
            rm -rf "${ROOT:?}$NODE_BASE"
            unmount_from "$ROOT"
        fi
        msg "rpc4@localhost stopped"
        ;;
    uri) [[ $# -eq 1 ]] || usage; echo "amqp://guest:guest@127.0.0.1:$PORT" ;;
    ctl) shift; need_root; scripts/node.sh ctl rpc4 "$@" ;;
    version) need_root; [[ -d $ROOT ]] || die "no root at $ROOT yet ('$PROG start' prepares it)"; root_version; echo ;;
    *) usage ;;
esac
