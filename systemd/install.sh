#!/bin/sh
# Installs forgetd as a systemd service: the steps of README.md, "Running under systemd", in one
# place (the field test runs this very script in a booted Debian 12, so the README cannot drift).
#
#   cargo build --release && sudo systemd/install.sh [BINARY]
#
# Installs the binary (default: target/release/forgetd) to /usr/local/bin, with its manual pages and
# shell completions under /usr/local/share (fish's in /etc/fish/completions; all made by the
# binary: `forgetd generate`), creates the
# system user and group `forgetd`, /etc/forgetd (root:forgetd 0750) with the example config if none is there
# yet (root:forgetd 0640; it refuses to run until edited), /etc/forgetd/credentials (root 0700)
# with a generated 32-byte audit key, and the unit, enabled but not started. Safe to run again: an
# existing config or key is kept. (The Debian package, scripts/deb.sh, does the same in /usr.)
set -eu

src=$(cd "$(dirname "$0")/.." && pwd)
bin=${1:-$src/target/release/forgetd}
[ -x "$bin" ] || { echo "install.sh: $bin is not an executable; run cargo build --release first" >&2; exit 1; }
[ -e /etc/ssl/certs/ca-certificates.crt ] || echo "install.sh: warning: no CA certificates; forgetd cannot reach https providers until you install them (apt install ca-certificates)" >&2

install -m 0755 "$bin" /usr/local/bin/forgetd
gen=$(mktemp -d)
/usr/local/bin/forgetd generate "$gen" >/dev/null
install -d /usr/local/share/man/man1 /usr/local/share/bash-completion/completions \
    /usr/local/share/zsh/site-functions /etc/fish/completions
install -m 0644 "$gen"/man/*.1 /usr/local/share/man/man1/
install -m 0644 "$gen/completions/forgetd.bash" /usr/local/share/bash-completion/completions/forgetd
install -m 0644 "$gen/completions/_forgetd" /usr/local/share/zsh/site-functions/_forgetd
# fish looks in /usr/local/share only when XDG_DATA_DIRS says so; /etc/fish/completions always.
install -m 0644 "$gen/completions/forgetd.fish" /etc/fish/completions/forgetd.fish
rm -rf "$gen"
getent group forgetd >/dev/null || groupadd --system forgetd
getent passwd forgetd >/dev/null ||
    useradd --system --gid forgetd --home-dir /var/lib/forgetd --no-create-home --shell /usr/sbin/nologin forgetd
install -d -m 0750 -o root -g forgetd /etc/forgetd
install -d -m 0700 -o root -g root /etc/forgetd/credentials
[ -e /etc/forgetd/forgetd.toml ] || install -m 0640 -o root -g forgetd "$src/config.example.toml" /etc/forgetd/forgetd.toml
if [ ! -e /etc/forgetd/credentials/audit-key ]; then
    head -c 32 /dev/urandom | install -m 0600 /dev/stdin /etc/forgetd/credentials/audit-key
fi
# The unit names the packaged path, /usr/bin/forgetd; this install is in /usr/local.
sed 's|^ExecStart=/usr/bin/forgetd |ExecStart=/usr/local/bin/forgetd |' "$src/systemd/forgetd.service" >/etc/systemd/system/forgetd.service
chmod 0644 /etc/systemd/system/forgetd.service
grep -q '^ExecStart=/usr/local/bin/forgetd ' /etc/systemd/system/forgetd.service ||
    { echo "install.sh: the unit's ExecStart= was not rewritten to /usr/local/bin" >&2; exit 1; }
# Outside a booted system (an image being prepared) there is no manager: enable offline.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    systemctl enable forgetd
else
    systemctl --root=/ enable forgetd
fi
echo "forgetd installed. Next: edit /etc/forgetd/forgetd.toml, put the provider secrets in /etc/forgetd/credentials, then: systemctl start forgetd"
