#!/bin/bash
# The field test: forgetd installed into a Debian 12 root and booted under a real systemd with
# systemd-nspawn; tests/field/check.sh runs inside.
#
#   tests/field/run.sh BINARY WORKDIR script   installed by systemd/install.sh (README's steps)
#   tests/field/run.sh BINARY WORKDIR deb      the Debian package built from BINARY by
#                                              scripts/deb.sh, checked by lintian, then dpkg -i
#
# The Debian root is built once with debootstrap and cached in target/fieldroot-cache (about a
# minute, from the Debian mirror); each run boots a fresh copy. Exits 0 when every check passed,
# 1 when one failed, 77 (skip) when this machine cannot run it, with the reason on stderr.
set -euo pipefail
mkdir -p "$2"; bin=$(realpath "$1"); work=$(realpath "$2"); mode=${3:-script}
src=$(cd "$(dirname "$0")/../.." && pwd)
cache=$src/target/fieldroot-cache/root
# What the root holds besides minbase: systemd, the feeder's sqlite3, and what an operator uses
# to read the manual and complete commands in each shell forgetd ships completions for.
includes=systemd,systemd-sysv,dbus,sqlite3,ca-certificates,man-db,bash-completion,zsh,fish

skip() { echo "SKIP: $*" >&2; exit 77; }
[ "$(id -u)" = 0 ] || skip "needs root (debootstrap and systemd-nspawn)"
command -v systemd-nspawn >/dev/null || skip "systemd-nspawn missing (apt install systemd-container)"
command -v debootstrap >/dev/null || skip "debootstrap missing (apt install debootstrap)"
if [ "$mode" = deb ]; then
    command -v cargo-deb >/dev/null || skip "cargo-deb missing (cargo install cargo-deb --locked)"
    command -v lintian >/dev/null || skip "lintian missing (apt install lintian)"
fi

if [ "$(cat "$cache/.forgetd-includes" 2>/dev/null)" != "$includes" ]; then
    rm -rf "$cache" "$cache.tmp"; mkdir -p "$(dirname "$cache")"
    echo "building the Debian 12 root (cached in $cache)" >&2
    debootstrap --variant=minbase --include="$includes" \
        bookworm "$cache.tmp" http://deb.debian.org/debian >"$work/debootstrap.log" 2>&1 ||
        { tail -20 "$work/debootstrap.log" >&2; exit 1; }
    echo "$includes" >"$cache.tmp/.forgetd-includes"
    mv "$cache.tmp" "$cache"
fi

mkdir -p "$work/pkg"
if [ "$mode" = deb ]; then
    DEB_OUT=$work/pkg "$src/scripts/deb.sh" "$bin" >"$work/deb.log" 2>&1 || { cat "$work/deb.log" >&2; exit 1; }
    deb=$(tail -1 "$work/deb.log")
    mv "$deb" "$work/pkg/forgetd.deb"
    # Every tag lintian still finds is explained in debian/forgetd.lintian-overrides.
    if lintian --pedantic --display-info --fail-on error,warning,info,pedantic "$work/pkg/forgetd.deb" >"$work/lintian.log" 2>&1; then
        echo "PASS lintian --pedantic: nothing left unexplained"
    else
        echo "FAIL lintian: $(grep -v 'root privileges' "$work/lintian.log")"; exit 1
    fi
fi

root=$work/root
cp -a "$cache" "$root"
mkdir -p "$work/results" "$work/sim"
machine=forgetd-field-$mode
ns() { systemd-nspawn --quiet -D "$root" -M "$machine" --register=no --keep-unit --bind-ro="$src:/src" --bind-ro="$bin:/opt/forgetd" --bind-ro="$work/sim:/sim" --bind-ro="$work/pkg:/pkg" "$@"; }

# The simulated providers, on the host's loopback (the container shares the host's network).
"$bin" simulator --config-out "$work/sim/forgetd.toml" --database /var/lib/forgetd/forgetd.db --refuse refused-chat >"$work/sim.out" 2>&1 &
sim=$!
trap 'kill $sim 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do [ -s "$work/sim/forgetd.toml" ] && break; sleep 0.1; done
[ -s "$work/sim/forgetd.toml" ] || { cat "$work/sim.out" >&2; exit 1; }

# The install, as the operator runs it (not booted yet: enabled, not started).
if [ "$mode" = deb ]; then
    ns dpkg -i /pkg/forgetd.deb >"$work/dpkg.log" 2>&1 || { cat "$work/dpkg.log" >&2; exit 1; }
else
    ns /src/systemd/install.sh /opt/forgetd
fi
ns /bin/sh -c '
    install -m 0640 -o root -g forgetd /sim/forgetd.toml /etc/forgetd/forgetd.toml
    install -m 0600 /sim/convai-api-key /etc/forgetd/credentials/convai-api-key
    install -m 0600 /sim/iam-password /etc/forgetd/credentials/iam-password
    useradd --create-home --groups forgetd feeder
'
cat >"$root/etc/systemd/system/field-check.service" <<UNIT
[Unit]
Description=forgetd field test checks
After=multi-user.target forgetd.service
[Service]
Type=oneshot
Environment=FIELD_MODE=$mode
ExecStart=/bin/bash /src/tests/field/check.sh
ExecStopPost=/bin/systemctl poweroff --no-block
TimeoutStartSec=600
[Install]
WantedBy=multi-user.target
UNIT
ns systemctl --root=/ enable field-check.service >/dev/null 2>&1

timeout 900 systemd-nspawn -D "$root" -M "$machine" --register=no --keep-unit --boot \
    --bind-ro="$src:/src" --bind-ro="$work/pkg:/pkg" --bind="$work/results:/results" >"$work/boot.log" 2>&1 </dev/null || true
cat "$work/results/check.log" 2>/dev/null || { echo "no results; the boot log:" >&2; tail -40 "$work/boot.log" >&2; exit 1; }
[ "$(cat "$work/results/status" 2>/dev/null)" = pass ]
