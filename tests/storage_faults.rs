//! The database under stress: a full disk, a read-only file system, a lock held by another
//! process, a corrupted file. Each gives a clear error and loses nothing.
//!
//! The disk cases mount a small tmpfs (the project's machines run tests as root); set
//! FORGETD_NO_MOUNT_TESTS=1 where mounting is impossible, and they say so instead of passing.

mod common;
use common::*;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Self> {
        if std::env::var_os("FORGETD_NO_MOUNT_TESTS").is_some() {
            eprintln!("FORGETD_NO_MOUNT_TESTS set: disk fault tests not run");
            return None;
        }
        let p = dir.join("mnt");
        std::fs::create_dir_all(&p).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&p)
            .status()
            .unwrap();
        assert!(
            st.success(),
            "mount tmpfs failed (set FORGETD_NO_MOUNT_TESTS=1 where tests cannot mount)"
        );
        Some(Self(p))
    }
    fn remount(&self, mode: &str) {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,{mode}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(st.success());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn forgetd_db(db: &Path, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .arg("--db")
        .arg(db)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn a_full_disk_fails_the_import_clearly_and_keeps_what_was_there() {
    let s = Scratch::new();
    let Some(fs) = Tmpfs::mount(s.dir.path(), "400k") else {
        return;
    };
    let db = fs.0.join("forgetd.db");
    assert_eq!(
        code(&forgetd_db(
            &db,
            &["erase", "--subject", "before-the-disk-filled", "--ref", "A"]
        )),
        0
    );
    let mut csv = String::from("provider,scope,session_id,subject\n");
    for i in 0..20_000 {
        csv.push_str(&format!(
            "convai,char-with-a-longish-name,{i:064},subject-number-{i}\n"
        ));
    }
    let f = s.write("big.csv", &csv);
    let o = forgetd_db(&db, &["sessions", "import", f.to_str().unwrap()]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(stderr(&o).contains("disk is full"), "{}", stderr(&o));
    let o = forgetd_db(&db, &["requests", "list", "--json"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).contains("\"A\""), "the earlier request survived");
    let o = sqlite3(&db, "SELECT count(*) FROM sessions");
    assert_eq!(stdout(&o).trim(), "0", "nothing half-imported");
}

#[test]
fn a_read_only_file_system_gives_a_clear_error_and_loses_nothing() {
    let s = Scratch::new();
    let Some(fs) = Tmpfs::mount(s.dir.path(), "4m") else {
        return;
    };
    let db = fs.0.join("forgetd.db");
    assert_eq!(
        code(&forgetd_db(
            &db,
            &["erase", "--subject", "alice", "--ref", "A"]
        )),
        0
    );
    fs.remount("ro");
    let o = forgetd_db(&db, &["erase", "--subject", "bob", "--ref", "B"]);
    assert_ne!(code(&o), 0);
    let e = stderr(&o).to_lowercase();
    assert!(e.contains("read-only") || e.contains("readonly"), "{e}");
    fs.remount("rw");
    let o = forgetd_db(&db, &["requests", "list", "--json"]);
    assert!(
        stdout(&o).contains("\"A\"") && !stdout(&o).contains("\"B\""),
        "{}",
        stdout(&o)
    );
    assert_eq!(
        code(&forgetd_db(
            &db,
            &["erase", "--subject", "bob", "--ref", "B"]
        )),
        0
    );
}

#[test]
fn a_database_locked_by_another_process_exits_75_then_works() {
    let s = Scratch::new();
    assert_eq!(
        code(&s.forgetd(&["erase", "--subject", "alice", "--ref", "A"])),
        0
    );
    let mut holder = Command::new("sqlite3")
        .arg(s.db())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = holder.stdin.take().unwrap();
    writeln!(stdin, "BEGIN EXCLUSIVE; INSERT INTO erasure_requests(subject, external_ref) VALUES ('held', 'H'); SELECT 'locked';").unwrap();
    stdin.flush().unwrap();
    // wait until the lock is really held
    let mut out = holder.stdout.take().unwrap();
    let mut buf = [0u8; 7];
    std::io::Read::read_exact(&mut out, &mut buf).unwrap();
    let started = std::time::Instant::now();
    let o = s.forgetd(&["erase", "--subject", "bob", "--ref", "B"]);
    assert_eq!(code(&o), 75, "{}", stderr(&o));
    assert!(stderr(&o).contains("busy"), "{}", stderr(&o));
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(4),
        "it waited out the busy timeout first"
    );
    writeln!(stdin, "COMMIT;").unwrap();
    drop(stdin);
    holder.wait().unwrap();
    assert_eq!(
        code(&s.forgetd(&["erase", "--subject", "bob", "--ref", "B"])),
        0
    );
    let o = s.sqlite3("SELECT group_concat(external_ref) FROM (SELECT external_ref FROM erasure_requests ORDER BY id)");
    assert_eq!(stdout(&o).trim(), "A,H,B");
}

#[test]
fn a_corrupted_database_is_detected_at_start() {
    let s = Scratch::new();
    // enough rows to span many pages, then garbage over the middle of the file
    let mut csv = String::from("provider,scope,session_id,subject\n");
    for i in 0..3000 {
        csv.push_str(&format!("convai,c,{i:040},someone-{i}\n"));
    }
    let f = s.write("inv.csv", &csv);
    assert_eq!(
        code(&s.forgetd(&["sessions", "import", f.to_str().unwrap()])),
        0
    );
    assert_eq!(code(&s.sqlite3("PRAGMA wal_checkpoint(TRUNCATE)")), 0);
    let mut bytes = std::fs::read(s.db()).unwrap();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 8192] {
        *b = 0xA5;
    }
    std::fs::write(s.db(), &bytes).unwrap();
    let key = s.write("k", "key");
    let cfg = s.write(
        "c.toml",
        &format!(
            "[providers.convai]\nbase_url = \"http://127.0.0.1:9\"\napi_key = \"file:{}\"\n",
            key.display()
        ),
    );
    let o = s.forgetd(&["--config", cfg.to_str().unwrap(), "run", "--once"]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(stderr(&o).contains("damaged"), "{}", stderr(&o));
    // a file that is not a database at all
    std::fs::write(s.path("junk.db"), vec![b'x'; 10_000]).unwrap();
    let o = forgetd_db(&s.path("junk.db"), &["status"]);
    assert_eq!(code(&o), 1);
    assert!(
        stderr(&o).contains("not a forgetd database"),
        "{}",
        stderr(&o)
    );
}
