#!/bin/bash
# Runs inside the booted Debian 12 of the field test (tests/field/run.sh), as the oneshot unit
# field-check.service after multi-user.target: drives forgetd the way an operator and a feeder
# would and writes PASS/FAIL lines to /results/check.log, then the overall result to
# /results/status. The container powers off when this ends. FIELD_MODE says how forgetd was
# installed: `script` (systemd/install.sh, in /usr/local) or `deb` (the package, in /usr).
set -u
mode=${FIELD_MODE:-script}
example=/src/config.example.toml
[ "$mode" = deb ] && example=/usr/share/forgetd/forgetd.toml.example
exec >/results/check.log 2>&1
failed=0
pass() { echo "PASS $*"; }
fail() { echo "FAIL $*"; failed=1; }
# eventually SECONDS COMMAND...: true once COMMAND succeeds within SECONDS.
eventually() {
    local limit=$1; shift
    for _ in $(seq 1 $((limit * 4))); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.25
    done
    return 1
}
CFG=/etc/forgetd/forgetd.toml
DB=/var/lib/forgetd/forgetd.db
feeder_sql() { runuser -u feeder -- sqlite3 -cmd '.timeout 10000' "$DB" "$1"; }
state_of() { sqlite3 -cmd '.timeout 10000' "$DB" "SELECT state FROM erasure_requests WHERE external_ref = '$1'"; }
is_state() { [ "$(state_of "$1")" = "$2" ]; }
journal_has() { journalctl -u forgetd --no-pager "${@:2}" | grep -q -- "$1"; }

# 1. The service the README's steps installed reaches active (READY=1).
if eventually 60 systemctl is-active --quiet forgetd; then pass "forgetd is active"; else
    fail "forgetd did not become active: $(systemctl status forgetd --no-pager 2>&1 | tail -20)"; fi

# 2. Files, owners and modes.
[ "$(stat -c '%U:%G %a' /var/lib/forgetd)" = "forgetd:forgetd 2770" ] && pass "state directory forgetd:forgetd 2770" ||
    fail "state directory is $(stat -c '%U:%G %a' /var/lib/forgetd)"
[ "$(stat -c '%U:%G %a' "$DB")" = "forgetd:forgetd 660" ] && pass "database forgetd:forgetd 660" ||
    fail "database is $(stat -c '%U:%G %a' "$DB")"
[ "$(stat -c '%U:%G %a' /etc/forgetd)" = "root:forgetd 750" ] && pass "/etc/forgetd root:forgetd 750" ||
    fail "/etc/forgetd is $(stat -c '%U:%G %a' /etc/forgetd)"
[ "$(stat -c '%U:%G %a' /etc/forgetd/credentials/audit-key)" = "root:root 600" ] && pass "audit key root 600" ||
    fail "audit key is $(stat -c '%U:%G %a' /etc/forgetd/credentials/audit-key)"

# 3. A feeder in the group files two requests with sqlite3; one chat the provider refuses.
feeder_sql "INSERT INTO sessions (provider, scope, session_id, subject) VALUES
              ('convai', 'char-1', 'good-chat', 'alice'), ('convai', 'char-1', 'refused-chat', 'bob');
            INSERT INTO erasure_requests (subject, external_ref) VALUES ('alice', 'R-ok'), ('bob', 'R-fail');" &&
    pass "feeder inserted as user feeder" || fail "feeder insert failed"
eventually 60 is_state R-ok complete && pass "R-ok complete" || fail "R-ok is $(state_of R-ok)"
eventually 60 is_state R-fail failed && pass "R-fail failed" || fail "R-fail is $(state_of R-fail)"
# 4. The failed erasure is in the journal at warning priority (and the completed one is not).
if eventually 10 journal_has "erasure request failed" -p warning; then pass "journalctl -p warning shows the failed erasure"; else
    fail "no failed erasure at -p warning: $(journalctl -u forgetd --no-pager | tail -20)"; fi
journal_has "erasure request complete" -p warning && fail "an info line passed -p warning" || pass "info lines stay out of -p warning"
journal_has "gave up deleting a chat" -p warning && pass "the chat given up is logged" || fail "no line for the chat given up"

# 5. A consistent backup while the daemon runs.
if forgetd --config "$CFG" backup /root/backup.db && [ "$(sqlite3 /root/backup.db 'SELECT count(*) FROM erasure_requests')" = 2 ]; then
    pass "backup while running has both requests"; else fail "backup"; fi

# 6. Reload with a bad config keeps the old one; a good one is taken.
cp "$CFG" /root/good.toml
echo 'nonsense_key = 1' >> "$CFG"
systemctl reload forgetd
sleep 1
if systemctl is-active --quiet forgetd && eventually 10 journal_has "keeping the old one"; then pass "bad reload kept the old config"; else
    fail "bad reload: $(journalctl -u forgetd --no-pager | tail -5)"; fi
cp /root/good.toml "$CFG"
systemctl reload forgetd && sleep 1 && systemctl is-active --quiet forgetd &&
    eventually 10 journal_has "configuration reloaded" && pass "good reload" || fail "good reload"

# 7. Stop exits cleanly.
systemctl stop forgetd
[ "$(systemctl show forgetd -p Result --value)" = success ] && [ "$(systemctl show forgetd -p ExecMainStatus --value)" = 0 ] &&
    pass "stop is clean" || fail "stop: Result=$(systemctl show forgetd -p Result --value) status=$(systemctl show forgetd -p ExecMainStatus --value)"

# 8. A feeder writes while the daemon is down (its sqlite3 creates -wal/-shm); the daemon starts
#    and finishes the work (the setgid directory gave the files the forgetd group).
feeder_sql "INSERT INTO sessions (provider, scope, session_id, subject) VALUES ('convai', 'char-1', 'late-chat', 'carol');
            INSERT INTO erasure_requests (subject, external_ref) VALUES ('carol', 'R-late');"
systemctl start forgetd
eventually 60 is_state R-late complete && pass "R-late complete after a feeder wrote while stopped" ||
    fail "R-late is $(state_of R-late): $(journalctl -u forgetd --no-pager | tail -5)"
systemctl stop forgetd

# 9. A broken config fails once and is not restarted in a loop; the unedited example too.
for broken in /root/broken.toml "$example"; do
    [ "$broken" = /root/broken.toml ] && { cp /root/good.toml "$broken"; echo 'max_attempts = "twenty"' >> "$broken"; }
    cp "$broken" "$CFG"
    systemctl reset-failed forgetd 2>/dev/null
    systemctl start forgetd
    sleep 12
    if [ "$(systemctl show forgetd -p NRestarts --value)" = 0 ] && [ "$(systemctl show forgetd -p ActiveState --value)" = failed ] &&
        [ "$(systemctl show forgetd -p ExecMainStatus --value)" = 78 ]; then
        pass "$broken: exit 78, not restarted"
    else
        fail "$broken: NRestarts=$(systemctl show forgetd -p NRestarts --value) state=$(systemctl show forgetd -p ActiveState --value) status=$(systemctl show forgetd -p ExecMainStatus --value)"
    fi
done
journal_has "unedited example configuration" && pass "the unedited example says so" || fail "no word on the unedited example"
cp /root/good.toml "$CFG"

# 10. The operator's toolbox: the version names its commit; the manual; completions in bash, zsh
#     and fish, found where each shell looks (no path given).
forgetd --version | grep -Eq '^forgetd [0-9]+\.[0-9]+\.[0-9]+ \(commit [0-9a-f]{7,}\)$' &&
    pass "forgetd --version: $(forgetd --version)" || fail "forgetd --version: $(forgetd --version 2>&1)"
man -P cat forgetd 2>/dev/null | grep -q "EXIT STATUS" && man -w forgetd-sessions-import >/dev/null 2>&1 &&
    pass "man forgetd (and man forgetd-sessions-import)" || fail "man forgetd: $(man -w forgetd 2>&1)"
bash_complete() {
    bash -c '. /usr/share/bash-completion/bash_completion && __load_completion forgetd || exit 1
             COMP_LINE=$1; read -ra COMP_WORDS <<<"$1"; [ "${1: -1}" = " " ] && COMP_WORDS+=("")
             COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 )); COMP_POINT=${#COMP_LINE}
             _forgetd forgetd "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
             printf "%s\n" "${COMPREPLY[@]}"' _ "$1"
}
bash_complete "forgetd sess" | grep -qx sessions && bash_complete "forgetd sessions add --provider " | grep -qx koosearch &&
    pass "bash completes commands and provider names" || fail "bash completion: $(bash_complete 'forgetd sess' 2>&1 | head -5)"
[ "$(zsh -fc 'autoload -Uz compinit && compinit -u -D && print -r -- ${_comps[forgetd]}')" = _forgetd ] &&
    pass "zsh finds _forgetd" || fail "zsh: $(zsh -fc 'print -l $fpath' 2>&1 | tr '\n' ' ')"
fish -c 'complete -C "forgetd req"' 2>/dev/null | grep -q '^requests' &&
    pass "fish completes commands" || fail "fish: $(fish -c 'complete -C "forgetd req"' 2>&1 | head -3)"

# 11. The package: its files verify, the user came from sysusers, purge keeps the record.
if [ "$mode" = deb ]; then
    [ -z "$(dpkg -V forgetd 2>&1)" ] && pass "dpkg -V forgetd: every file as packaged" || fail "dpkg -V: $(dpkg -V forgetd 2>&1)"
    [ "$(getent passwd forgetd | cut -d: -f6,7)" = /var/lib/forgetd:/usr/sbin/nologin ] && [ -e /lib/systemd/system/forgetd.service ] &&
        pass "system user forgetd (sysusers); unit in /lib/systemd/system" || fail "user: $(getent passwd forgetd); unit: $(systemctl show forgetd -p FragmentPath)"
    if dpkg --purge forgetd >/root/purge.log 2>&1 && [ ! -e /usr/bin/forgetd ] && [ ! -e /etc/forgetd/forgetd.toml ] &&
        [ -e "$DB" ] && [ -e /etc/forgetd/credentials/audit-key ] && ! systemctl cat forgetd >/dev/null 2>&1; then
        pass "dpkg --purge: program, unit and config gone; database and audit key kept"
    else
        fail "purge: $(cat /root/purge.log); $(ls -la /etc/forgetd /var/lib/forgetd 2>&1 | tr '\n' ' ')"
    fi
fi

[ $failed = 0 ] && echo pass > /results/status || echo fail > /results/status
