#!/bin/sh
# Installs forgetd as a systemd service: the steps of README.md, "Running under systemd", in one
# place (the field test runs this very script in a booted Debian 12, so the README cannot drift).
#
#   cargo build --release && sudo systemd/install.sh [BINARY]
#
# Installs the binary (default: target/release/forgetd) to /usr/local/bin, creates the system user
# and group `forgetd`, /etc/forgetd (root:forgetd 0750) with the example config if none is there
# yet (root:forgetd 0640; it refuses to run until edited), /etc/forgetd/credentials (root 0700)
# with a generated 32-byte audit key, and the unit, enabled but not started. Safe to run again: an
# existing config or key is kept.
set -eu

src=$(cd "$(dirname "$0")/.." && pwd)
bin=${1:-$src/target/release/forgetd}
[ -x "$bin" ] || { echo "install.sh: $bin is not an executable; run cargo build --release first" >&2; exit 1; }
[ -e /etc/ssl/certs/ca-certificates.crt ] || echo "install.sh: warning: no CA certificates; forgetd cannot reach https providers until you install them (apt install ca-certificates)" >&2

install -m 0755 "$bin" /usr/local/bin/forgetd
getent group forgetd >/dev/null || groupadd --system forgetd
getent passwd forgetd >/dev/null ||
    useradd --system --gid forgetd --home-dir /var/lib/forgetd --no-create-home --shell /usr/sbin/nologin forgetd
install -d -m 0750 -o root -g forgetd /etc/forgetd
install -d -m 0700 -o root -g root /etc/forgetd/credentials
[ -e /etc/forgetd/forgetd.toml ] || install -m 0640 -o root -g forgetd "$src/config.example.toml" /etc/forgetd/forgetd.toml
if [ ! -e /etc/forgetd/credentials/audit-key ]; then
    head -c 32 /dev/urandom | install -m 0600 /dev/stdin /etc/forgetd/credentials/audit-key
fi
install -m 0644 "$src/systemd/forgetd.service" /etc/systemd/system/forgetd.service
# Outside a booted system (an image being prepared) there is no manager: enable offline.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    systemctl enable forgetd
else
    systemctl --root=/ enable forgetd
fi
echo "forgetd installed. Next: edit /etc/forgetd/forgetd.toml, put the provider secrets in /etc/forgetd/credentials, then: systemctl start forgetd"
