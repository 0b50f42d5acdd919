#!/bin/bash
# Builds the Debian package into target/debian/ (or $DEB_OUT):
#
#   scripts/deb.sh              cargo build --release, then package target/release/forgetd
#   scripts/deb.sh BINARY       package a binary cargo already built (target/release or
#                               target/debug; the field test packages the one under test)
#
# The manual pages and completions are made by the binary being packaged (`forgetd generate`,
# from its own clap definitions), into generated/ beside it; then `cargo deb --no-build` packs the
# assets Cargo.toml's [package.metadata.deb] lists. Needs cargo-deb (cargo install cargo-deb).
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
cd "$src"
command -v cargo-deb >/dev/null || { echo "deb.sh: cargo-deb is missing: cargo install cargo-deb --locked" >&2; exit 77; }
if [ $# -ge 1 ]; then
    bin=$(realpath "$1")
else
    cargo build --release --locked
    bin=$src/target/release/forgetd
fi
dir=$(dirname "$bin")
case $(basename "$dir") in
    release) profile=release ;;
    debug) profile=dev ;;
    *) echo "deb.sh: $bin is not in a cargo profile directory (target/release or target/debug)" >&2; exit 1 ;;
esac
rm -rf "$dir/generated"
"$bin" generate "$dir/generated" >/dev/null
# Debian compresses manual pages (cargo-deb leaves files under target/ as they are).
gzip -9n "$dir"/generated/man/*.1
out=${DEB_OUT:-$src/target/debian}
mkdir -p "$out"
# --strip: the package carries no debug info whatever the profile built (lintian's
# unstripped-binary-or-object); --fast: xz at a low preset, the binary dominates the size.
deb=$(cargo deb --no-build --locked --profile "$profile" --strip --fast -o "$out" | tail -1)
# cargo-deb writes no DEBIAN/md5sums, which `dpkg --verify` and debsums check installed files
# against: add it, and rebuild with dpkg-deb itself.
tree=$(mktemp -d)
trap 'rm -rf "$tree"' EXIT
dpkg-deb -R "$deb" "$tree/pkg"
(cd "$tree/pkg" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum >DEBIAN/md5sums)
chmod 0644 "$tree/pkg/DEBIAN/md5sums"
dpkg-deb --root-owner-group -Zxz -z3 --build "$tree/pkg" "$deb" >/dev/null
echo "$deb"
