//! The field test (issues: field-ready, the operator's toolbox): forgetd installed into a Debian 12
//! root and booted under a real systemd with systemd-nspawn, twice: once by the README's steps
//! (`systemd/install.sh`), once from the Debian package (`scripts/deb.sh`, lintian-clean, then
//! `dpkg -i`). Inside, `tests/field/check.sh` checks: the service reaches READY=1; a feeder in the
//! group files requests with sqlite3 and they complete (or fail, logged at warning priority)
//! against `forgetd simulator`; a bad reload keeps the old config; stop is clean; a broken config
//! is not restarted in a loop; owners and modes are right; a backup taken while running is whole;
//! `man forgetd` and the bash, zsh and fish completions work; the package verifies and its purge
//! keeps the audit record.
//!
//! Needs root, debootstrap and systemd-nspawn, and for the package cargo-deb and lintian
//! (`.ci/run` installs them). Where they are missing the test says SKIP with the reason, unless
//! `FORGETD_FIELD_REQUIRED=1` (as in `.ci/run`), which turns a skip into a failure. The Debian
//! root is cached in target/fieldroot-cache. The two boots take turns (two cores).

mod common;
use common::*;

static ONE_BOOT_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn field_test(mode: &str, min_passes: usize) {
    let _turn = ONE_BOOT_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let work = tempfile::tempdir().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/field/run.sh");
    let o = std::process::Command::new("bash")
        .arg(script)
        .arg(BIN)
        .arg(work.path())
        .arg(mode)
        .output()
        .unwrap();
    let required = std::env::var("FORGETD_FIELD_REQUIRED").is_ok_and(|v| v == "1");
    if code(&o) == 77 {
        assert!(!required, "the field test could not run: {}", stderr(&o));
        eprintln!("{}", stderr(&o).trim());
        return;
    }
    print!("{}", stdout(&o));
    assert_eq!(
        code(&o),
        0,
        "field test ({mode}) failed:\n{}\n{}",
        stdout(&o),
        stderr(&o)
    );
    assert!(!stdout(&o).contains("FAIL"), "{}", stdout(&o));
    assert!(
        stdout(&o).matches("PASS").count() >= min_passes,
        "{}",
        stdout(&o)
    );
}

#[test]
fn installed_as_the_readme_says_it_runs_under_a_real_systemd() {
    field_test("script", 24);
}

#[test]
fn installed_from_the_debian_package_it_runs_under_a_real_systemd() {
    field_test("deb", 28);
}
