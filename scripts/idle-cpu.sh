#!/bin/bash
# CPU a forgetd daemon uses while idle: two rules whose next runs are hours away, an empty queue,
# Convai at a loopback port nothing listens on. Prints CPU seconds (user + system, from
# /proc/PID/stat) over the given time, after a 3 s start-up.
#   scripts/idle-cpu.sh [BINARY] [SECONDS]     (defaults: target/release/forgetd, 120)
set -euo pipefail
BIN=${1:-target/release/forgetd}
SECS=${2:-120}
DIR=$(mktemp -d)
trap 'rm -rf "$DIR"' EXIT
echo key > "$DIR/key"
cat > "$DIR/idle.toml" <<TOML
[database]
path = "$DIR/forgetd.db"
[providers.convai]
base_url = "http://127.0.0.1:9"
api_key = "file:$DIR/key"
[[rules]]
name = "r1"
provider = "convai"
scope = "char-a"
max_age = "30d"
schedule = "0 3 * * *"
[[rules]]
name = "r2"
provider = "convai"
scope = "char-b"
max_age = "7d"
schedule = "30 4 * * 1"
TOML
"$BIN" --config "$DIR/idle.toml" run >/dev/null 2>&1 &
PID=$!
sleep 3
a=$(awk '{print $14+$15}' /proc/$PID/stat)
sleep "$SECS"
b=$(awk '{print $14+$15}' /proc/$PID/stat)
kill "$PID"; wait "$PID" 2>/dev/null || true
awk -v a="$a" -v b="$b" -v t="$(getconf CLK_TCK)" -v s="$SECS" \
  'BEGIN { printf "idle CPU: %.2f s over %d s (%.2f%% of one core)\n", (b-a)/t, s, 100*(b-a)/t/s }'
