//! The field test (issue: field-ready): forgetd installed exactly as README.md's "Running under
//! systemd" says (the steps are `systemd/install.sh`), in a Debian 12 root booted under a real
//! systemd with systemd-nspawn, checked from inside by `tests/field/check.sh`: the service reaches
//! READY=1; a feeder in the group files requests with sqlite3 and they complete (or fail, logged
//! at warning priority) against `forgetd simulator`; a bad reload keeps the old config; stop is
//! clean; a broken config is not restarted in a loop; owners and modes are right; a backup taken
//! while running is whole.
//!
//! Needs root, debootstrap and systemd-nspawn (`.ci/run` installs them). Where they are missing
//! the test says SKIP with the reason, unless `FORGETD_FIELD_REQUIRED=1` (as in `.ci/run`), which
//! turns a skip into a failure. The Debian root is cached in target/fieldroot-cache.

mod common;
use common::*;

#[test]
fn installed_as_the_readme_says_it_runs_under_a_real_systemd() {
    let work = tempfile::tempdir().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/field/run.sh");
    let o = std::process::Command::new("bash")
        .arg(script)
        .arg(BIN)
        .arg(work.path())
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
        "field test failed:\n{}\n{}",
        stdout(&o),
        stderr(&o)
    );
    assert!(!stdout(&o).contains("FAIL"), "{}", stdout(&o));
    assert!(stdout(&o).matches("PASS").count() >= 19, "{}", stdout(&o));
}
