//! The database under stress: a full disk, a read-only file system, a lock held by another
//! process, a corrupted file. Each gives a clear error and loses nothing.
//!
//! The disk cases mount a small tmpfs (the project's machines run tests as root); set
//! FORGETD_NO_MOUNT_TESTS=1 where mounting is impossible, and they say so instead of passing.

mod common;
use common::*;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use forgetd::clock::SystemClock;
use forgetd::model::{ChatKey, ProviderKind};
use forgetd::simulator::{Faults, Simulator};

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

// ---------------------------------------------------------------------------------------------
// During a drain: the daemon is deleting when its database stops taking writes.

/// A drain against the simulator, its database at `db` (on a file system the test controls),
/// the daemon running as a child process with its log in a file and the HTTP listener on.
struct Drain {
    sim: Simulator,
    db: PathBuf,
    cfg: PathBuf,
    log: PathBuf,
    port: u16,
    targeted: BTreeSet<ChatKey>,
    decoys: BTreeSet<ChatKey>,
    requests: usize,
}

impl Drain {
    async fn new(s: &Scratch, db: PathBuf) -> Self {
        // Slow enough calls and small batches: the drain lasts seconds, so the disk can fail
        // in the middle of it.
        let faults = Faults {
            latency: Duration::from_millis(60),
            ..Faults::default()
        };
        let sim = Simulator::start(std::sync::Arc::new(SystemClock), faults, 19)
            .await
            .unwrap();
        let port = free_port();
        let cfg = sim_config(
            s,
            &sim,
            &["app-1"],
            &format!("[http]\nlisten = \"127.0.0.1:{port}\"\n"),
        );
        let text = std::fs::read_to_string(&cfg)
            .unwrap()
            .replace(&s.db().display().to_string(), &db.display().to_string())
            .replace(
                "timeout = \"2s\"",
                "timeout = \"2s\"\nbatch_size = 5\nconcurrency = 1",
            );
        std::fs::write(&cfg, text).unwrap();
        let (mut targeted, mut decoys) = (BTreeSet::new(), BTreeSet::new());
        let mut csv = String::from("provider,scope,session_id,subject\n");
        let requests = 12;
        for p in 0..24 {
            let person = format!("p{p:02}");
            for n in 0..20 {
                let (ch, id, kid) = (
                    format!("char-{}", n % 3),
                    format!("{person}-c{n}"),
                    format!("{person}-k{n}"),
                );
                sim.add_convai_chat(&ch, &id, 1_700_000_000);
                sim.add_koosearch_chat("app-1", &kid, Some(&person), None, 1_700_000_000);
                csv.push_str(&format!("convai,{ch},{id},{person}\n"));
                let set = if p < requests {
                    &mut targeted
                } else {
                    &mut decoys
                };
                set.insert(ChatKey::new(ProviderKind::CONVAI, &ch, &id));
                set.insert(ChatKey::new(ProviderKind::KOOSEARCH, "app-1", &kid));
            }
        }
        let f = s.write("inv.csv", &csv);
        let o = forgetd_db(&db, &["sessions", "import", f.to_str().unwrap()]);
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        for p in 0..requests {
            let o = sqlite3(
                &db,
                &format!(
                    "INSERT INTO erasure_requests(subject, external_ref) VALUES ('p{p:02}', 'R{p}')"
                ),
            );
            assert_eq!(code(&o), 0, "{}", stderr(&o));
        }
        // An empty WAL: the daemon's commits after the disk fills need new space (see the
        // disk-full test's reader).
        let o = sqlite3(&db, "PRAGMA wal_checkpoint(TRUNCATE)");
        assert_eq!(stdout(&o).trim(), "0|0|0", "{}", stderr(&o));
        Drain {
            sim,
            db,
            cfg,
            log: s.path("daemon.log"),
            port,
            targeted,
            decoys,
            requests,
        }
    }

    fn start(&self) -> tokio::process::Child {
        tokio::process::Command::new(BIN)
            .args(["--config", self.cfg.to_str().unwrap(), "run"])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&self.log).unwrap())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn count(&self, sql: &str) -> usize {
        let o = sqlite3(&self.db, sql);
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        stdout(&o).trim().parse().unwrap()
    }

    fn deleted(&self) -> usize {
        self.count("SELECT count(*) FROM work_items WHERE state = 'deleted'")
    }

    async fn get(&self, path: &str) -> Option<(u16, String)> {
        let r = reqwest::get(format!("http://127.0.0.1:{}{path}", self.port))
            .await
            .ok()?;
        let status = r.status().as_u16();
        Some((status, r.text().await.ok()?))
    }

    /// Waits until the drain is part done (and checks it is not all done: the fault must land
    /// in the middle of it).
    async fn part_done(&self) {
        wait_for("the daemon to delete some chats", || async {
            (self.deleted() >= 20).then_some(())
        })
        .await;
        let left = self.count("SELECT count(*) FROM erasure_requests WHERE state <> 'complete'");
        assert!(
            left > 0,
            "the drain ended before the disk failed: slow the simulator"
        );
    }

    /// While the database refuses writes: the daemon says so in its log, on /healthz and in
    /// /metrics, keeps trying, and stays up.
    async fn refuses_writes_and_says_so(&self, child: &mut tokio::process::Child) {
        eventually(
            "the daemon to log that the database cannot be written",
            || self.log().contains("cannot write the database"),
        )
        .await;
        let health = wait_for("/healthz to name the outage", || async {
            self.get("/healthz")
                .await
                .filter(|(st, body)| *st == 503 && body.contains("refuses writes"))
        })
        .await;
        assert!(health.1.contains("while "), "{}", health.1);
        wait_for(
            "the daemon to try the write again, several times",
            || async {
                let (_, m) = self.get("/metrics").await?;
                let failures: f64 = m
                    .lines()
                    .find(|l| l.starts_with("forgetd_database_write_failures_total "))?
                    .rsplit(' ')
                    .next()?
                    .parse()
                    .ok()?;
                (failures >= 3.0).then_some(())
            },
        )
        .await;
        assert!(
            child.try_wait().unwrap().is_none(),
            "the daemon exited while the database refused writes:\n{}",
            self.log()
        );
        assert_eq!(
            self.log().matches("cannot write the database").count(),
            1,
            "an outage is said once, not per try:\n{}",
            self.log()
        );
    }

    /// After the drain: every targeted chat gone, no decoy named, every request complete, each
    /// chat recorded deleted once (though some batches were sent twice), the chain valid.
    fn nothing_lost_nothing_else_deleted(&self) {
        for t in &self.targeted {
            assert!(!self.sim.has(t), "targeted {t:?} survived");
        }
        let named = self.sim.named_in_deletes();
        for d in &self.decoys {
            assert!(self.sim.has(d) && !named.contains(d), "decoy {d:?} touched");
        }
        let o = sqlite3(
            &self.db,
            "SELECT state, count(*) FROM erasure_requests GROUP BY state",
        );
        assert_eq!(
            stdout(&o).trim(),
            format!("complete|{}", self.requests),
            "no request lost"
        );
        assert_eq!(
            self.count("SELECT count(*) FROM work_items WHERE state <> 'deleted'"),
            0
        );
        let o = sqlite3(
            &self.db,
            "SELECT json_extract(audit_log.data, '$.provider') || '/' || json_extract(audit_log.data, '$.scope') || '/' || j.value
             FROM audit_log, json_each(json_extract(audit_log.data, '$.deleted')) j WHERE kind = 'batch.answered'",
        );
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for line in stdout(&o).lines() {
            *counts.entry(line.to_string()).or_default() += 1;
        }
        let recorded: BTreeSet<String> = counts.keys().cloned().collect();
        let unrecorded: Vec<String> = self
            .targeted
            .iter()
            .map(|k| format!("{}/{}/{}", k.provider, k.scope, k.session_id))
            .filter(|k| !recorded.contains(k))
            .collect();
        assert!(
            unrecorded.is_empty(),
            "deleted but never recorded in a batch answer: {unrecorded:?}\n{}",
            stdout(&sqlite3(
                &self.db,
                "SELECT seq, kind, substr(data, 1, 300) FROM audit_log ORDER BY seq"
            ))
        );
        assert!(
            counts.values().all(|n| *n == 1),
            "a chat recorded deleted twice"
        );
        let o = forgetd_db(&self.db, &["audit", "verify"]);
        assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    }
}

/// Fills the file system holding `dir` to the last byte; removing the returned file frees it.
fn fill(dir: &Path) -> PathBuf {
    let p = dir.join("filler");
    let mut f = std::fs::File::create(&p).unwrap();
    for chunk in [1 << 20, 4096, 512] {
        let buf = vec![0u8; chunk];
        while f.write_all(&buf).is_ok() {}
    }
    let _ = f.sync_all();
    p
}

fn sigterm(child: &tokio::process::Child) {
    let pid = child.id().expect("running");
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_that_fills_during_a_drain_loses_nothing_and_the_same_daemon_resumes_when_space_returns()
 {
    let s = Scratch::new();
    let Some(fs) = Tmpfs::mount(s.dir.path(), "24m") else {
        return;
    };
    let drain = Drain::new(&s, fs.0.join("forgetd.db")).await;
    // A reader on the snapshot from before the daemon started (a long backup, a report) keeps
    // SQLite from rewinding its emptied WAL, so every commit of the daemon's needs new space.
    // Without it SQLite reuses the WAL file's old frames, and a full disk may not stop it for a
    // while (which is fine, but not what this test is about).
    let reader = rusqlite::Connection::open(&drain.db).unwrap();
    reader.execute_batch("BEGIN").unwrap();
    let n: i64 = reader
        .query_row("SELECT count(*) FROM work_items", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 0, "the reader's snapshot is from before the daemon");
    let mut child = drain.start();
    let pid = child.id();
    drain.part_done().await;
    let filler = fill(&fs.0);
    drain.refuses_writes_and_says_so(&mut child).await;
    let stuck = drain.deleted();
    std::fs::remove_file(&filler).unwrap();
    reader.execute_batch("COMMIT").unwrap();
    drop(reader);
    eventually("the daemon to finish the drain", || {
        drain.count("SELECT count(*) FROM erasure_requests WHERE state <> 'complete'") == 0
    })
    .await;
    assert!(drain.deleted() > stuck);
    // Said once writes have landed for a while without a refusal (store::outage::SETTLE).
    eventually("the daemon to say it resumed", || {
        drain
            .log()
            .contains("the database takes writes again; resuming")
    })
    .await;
    wait_for("/healthz to be ok again", || async {
        drain.get("/healthz").await.filter(|(st, _)| *st == 200)
    })
    .await;
    assert!(child.try_wait().unwrap().is_none(), "{}", drain.log());
    assert_eq!(child.id(), pid, "the same process resumed");
    sigterm(&child);
    let st = child.wait().await.unwrap();
    assert!(st.success(), "{}", drain.log());
    drain.nothing_lost_nothing_else_deleted();
}

/// An ext4 file system on a loop device, mounted `errors=remount-ro`: the kernel turns it
/// read-only under open files, as it does when a disk fails.
struct Ext4 {
    image: PathBuf,
    dir: PathBuf,
}

impl Ext4 {
    fn mount(base: &Path) -> Option<Self> {
        if std::env::var_os("FORGETD_NO_MOUNT_TESTS").is_some() {
            eprintln!("FORGETD_NO_MOUNT_TESTS set: read-only file system test not run");
            return None;
        }
        let image = base.join("ext4.img");
        let dir = base.join("ext4");
        std::fs::create_dir_all(&dir).unwrap();
        let ok = |c: &mut Command| c.status().unwrap().success();
        assert!(ok(Command::new("truncate").args(["-s", "64M"]).arg(&image)));
        assert!(ok(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image)));
        let me = Self { image, dir };
        me.attach();
        Some(me)
    }
    fn attach(&self) {
        let st = Command::new("mount")
            .args(["-o", "loop,errors=remount-ro"])
            .arg(&self.image)
            .arg(&self.dir)
            .status()
            .unwrap();
        assert!(
            st.success(),
            "mounting a loop device failed (set FORGETD_NO_MOUNT_TESTS=1 where tests cannot mount)"
        );
    }
    /// What a failing disk does: ext4 records an error and the kernel remounts it read-only.
    fn fail(&self) {
        let o = Command::new("findmnt")
            .args(["-n", "-o", "SOURCE"])
            .arg(&self.dir)
            .output()
            .unwrap();
        let dev = String::from_utf8_lossy(&o.stdout).trim().to_string();
        let name = Path::new(&dev)
            .file_name()
            .unwrap()
            .to_string_lossy()
            .to_string();
        std::fs::write(
            format!("/sys/fs/ext4/{name}/trigger_fs_error"),
            "forgetd test",
        )
        .unwrap();
    }
    /// What the operator does: unmount, check the file system, mount it again.
    fn repair(&self) {
        assert!(
            Command::new("umount")
                .arg(&self.dir)
                .status()
                .unwrap()
                .success()
        );
        let o = Command::new("e2fsck")
            .args(["-fy"])
            .arg(&self.image)
            .output()
            .unwrap();
        // 0: clean, 1: errors corrected (the recorded error, the journal); 4 and up: not repaired.
        assert!(
            o.status.code().unwrap_or(8) < 4,
            "e2fsck could not repair: {o:?}"
        );
        self.attach();
    }
}

impl Drop for Ext4 {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_system_turned_read_only_during_a_drain_loses_nothing_and_a_restart_after_repair_finishes()
 {
    let s = Scratch::new();
    let Some(fs) = Ext4::mount(s.dir.path()) else {
        return;
    };
    let drain = Drain::new(&s, fs.dir.join("forgetd.db")).await;
    let mut child = drain.start();
    drain.part_done().await;
    fs.fail();
    drain.refuses_writes_and_says_so(&mut child).await;
    // The operator stops it (a file system the kernel turned read-only stays so until repaired).
    sigterm(&child);
    let st = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("the daemon stops on SIGTERM while the database refuses writes")
        .unwrap();
    assert!(!st.success(), "it says it stopped with work unrecorded");
    assert!(
        drain.log().contains("could not be written"),
        "{}",
        drain.log()
    );
    fs.repair();
    let o = Command::new(BIN)
        .args(["--config", drain.cfg.to_str().unwrap(), "run", "--once"])
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    drain.nothing_lost_nothing_else_deleted();
}
