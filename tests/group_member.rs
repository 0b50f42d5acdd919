//! What a group member (a feeder's Unix user: in the database's group, not forgetd's user) can
//! and cannot do to the running service, with the real binary run as another uid (`setpriv`):
//! they cannot keep the daemon from starting by holding or planting its lock file, and their
//! first `audit public-key` makes no key file (forgetd would refuse it ever after). SQLite only:
//! the lock and key files live beside the database file. Skipped where this is not root or
//! `setpriv` is missing.

mod common;
use common::*;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::{Command, Output};

const MEMBER_UID: u32 = 54_321;

/// The scratch directory shared as the database's is (0770, its group), or `None` to skip.
fn shared(s: &Scratch) -> Option<u32> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if s.on_pg() || unsafe { libc::geteuid() } != 0 || tool("setpriv").is_none() {
        eprintln!("SKIP: needs root, setpriv and a SQLite database");
        return None;
    }
    let dir = s.dir.path();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o770)).unwrap();
    let o = s.forgetd(&["status"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    Some(dir.metadata().unwrap().gid())
}

/// `args` run as the group member (uid 54321, the database's group), in the scratch directory.
fn as_member(s: &Scratch, gid: u32, args: &[&str]) -> Command {
    let mut c = Command::new("setpriv");
    c.args([
        &format!("--reuid={MEMBER_UID}"),
        &format!("--regid={gid}"),
        "--clear-groups",
    ])
    .args(args)
    .current_dir(s.dir.path())
    .env_remove("FORGETD_CONFIG");
    c
}

fn run_once(s: &Scratch) -> Output {
    let cfg = unreachable_convai_config(s, "");
    Command::new(BIN)
        .args(["--config", cfg.to_str().unwrap(), "run", "--once"])
        .current_dir(s.dir.path())
        .output()
        .unwrap()
}

#[test]
fn a_group_member_holding_or_planting_the_lock_file_does_not_stop_the_daemon() {
    let s = Scratch::new();
    let Some(gid) = shared(&s) else { return };
    let lock = s.path("forgetd.db.lock");
    // First, before forgetd ever made its lock file: the member plants one and holds it.
    for round in ["planted", "forgetd's own"] {
        let script = format!(
            "umask 000; flock -s {} -c 'echo locked; sleep 5'",
            lock.display()
        );
        let mut member = as_member(&s, gid, &["sh", "-c", &script])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Until the member holds it, or was refused.
        std::thread::sleep(std::time::Duration::from_millis(500));
        let o = run_once(&s);
        let _ = member.kill();
        let out = member.wait_with_output().unwrap();
        assert_eq!(
            code(&o),
            0,
            "{round}: the daemon did not start beside the member's lock: {}\nmember: {}{}",
            stderr(&o),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // forgetd's lock file is its own: the directory owner's, 0600.
        let meta = std::fs::symlink_metadata(&lock).unwrap();
        assert_eq!(
            meta.uid(),
            s.dir.path().metadata().unwrap().uid(),
            "{round}"
        );
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{round}");
    }
}

#[test]
fn a_group_members_first_public_key_makes_no_key_file() {
    let s = Scratch::new();
    let Some(gid) = shared(&s) else { return };
    let key = s.path("forgetd.db.signing-key");
    assert!(!key.exists());
    let o = as_member(
        &s,
        gid,
        &[BIN, "--db", s.db().to_str().unwrap(), "audit", "public-key"],
    )
    .output()
    .unwrap();
    assert_ne!(code(&o), 0, "{}", stdout(&o));
    assert!(
        stderr(&o).contains("only forgetd's user") && stderr(&o).contains("sudo -u forgetd"),
        "{}",
        stderr(&o)
    );
    assert!(!key.exists(), "the member made the key file");
    // forgetd's user (root here, the directory's owner) makes it, and then prints the key.
    let o = s.forgetd(&["audit", "public-key"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(stdout(&o).trim().len(), 64, "{}", stdout(&o));
    let meta = std::fs::metadata(&key).unwrap();
    assert_eq!(meta.uid(), s.dir.path().metadata().unwrap().uid());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
}
