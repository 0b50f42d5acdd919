//! The keyed audit chain against a real database (a SQLite file, or PostgreSQL with
//! `FORGETD_TEST_ENGINE=postgres`): a writer who can write the database but has not
//! forgetd's key cannot append a certifying link that verifies, nor rewrite sealed history with
//! recomputed hashes; a feeder's command without the key appends unsealed links that the daemon
//! seals late, and a request that command completes gets its closing event from the daemon.

use std::sync::Arc;

use forgetd::audit::{SubjectKey, link_hash};
use forgetd::clock::{ManualClock, SharedClock};
use forgetd::config::Config;
use forgetd::model::ProviderKind;
use forgetd::simulator::{Faults, Simulator};
use forgetd::store::Store;
use forgetd::store::holds::HoldTarget;
use forgetd::store::inventory::NewSession;

mod common;
use common::{code, stdout};

struct World {
    sim: Simulator,
    s: common::Scratch,
    clock: ManualClock,
    request: i64,
}

impl World {
    /// The store as forgetd's own user has it: with the chain key (the key file the daemon
    /// created beside the SQLite file, or on PostgreSQL the configured `[audit] subject_key`).
    fn keyed(&self) -> Store {
        let mut s = self.s.store();
        let c = self.config();
        let key = SubjectKey::load(c.audit.subject_key.as_ref(), c.database.sqlite_path()).unwrap();
        s.set_chain_key(key.chain_key());
        s
    }
    /// The store as a feeder's user has it: the database, not the key.
    fn unkeyed(&self) -> Store {
        self.s.feeder_store()
    }
    fn config(&self) -> Config {
        let mut c = self.sim.config(self.s.dir.path(), &["app-a"]).unwrap();
        self.s.use_in(&mut c);
        c
    }
    /// `forgetd audit verify` (the binary, as root: it reads the key).
    fn verify(&self) -> (i32, String) {
        let cfg = self.s.database_toml();
        let cfg = self.s.write("verify.toml", &cfg);
        let o = self
            .s
            .forgetd(&["--config", cfg.to_str().unwrap(), "audit", "verify"]);
        (code(&o), stdout(&o))
    }
    /// The spelling for this test's engine, where SQLite's and PostgreSQL's differ.
    fn pick<'a>(&self, sqlite: &'a str, postgres: &'a str) -> &'a str {
        if self.s.on_pg() { postgres } else { sqlite }
    }
}

/// Alice has two Convai chats and one KooSearch chat; her request is drained once. With
/// `convai_refuses`, Convai refuses the key, so her Convai chats stay pending.
async fn drained(convai_refuses: bool) -> World {
    let clock = ManualClock::new(1_800_000_000_000);
    let shared: SharedClock = Arc::new(clock.clone());
    let faults = Faults {
        auth_fail: if convai_refuses {
            [ProviderKind::CONVAI].into()
        } else {
            Default::default()
        },
        ..Faults::default()
    };
    let sim = Simulator::start(shared, faults, 5).await.unwrap();
    let s = common::Scratch::new();
    let mut store = s.store();
    for n in 0..2 {
        let sid = format!("alice-c{n}");
        sim.add_convai_chat("char-a", &sid, 1_700_000_000);
        store
            .add_session(&NewSession {
                provider: "convai".into(),
                scope: "char-a".into(),
                session_id: sid,
                subject: Some("alice".into()),
                ..Default::default()
            })
            .unwrap();
    }
    sim.add_koosearch_chat("app-a", "alice-k0", Some("alice"), None, 1_700_000_000);
    let request = store
        .file_request("alice", Some("T-1"), 1_800_000_000, 30 * 86_400)
        .unwrap()
        .id;
    drop(store);
    let w = World {
        sim,
        s,
        clock,
        request,
    };
    let d = forgetd::daemon::Daemon::build(w.config(), Arc::new(w.clock.clone())).unwrap();
    d.run_once().await.unwrap();
    w
}

/// Debian's sqlite3 with the busy timeout the README asks feeders for (the daemon's store thread
/// may still be closing its connection, which checkpoints the WAL under a lock), or psql as the
/// server's superuser.
fn sqlite3(w: &World, sql: &str) -> String {
    let o = w.s.sqlite3(sql);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// Appends a well-formed link (the documented hash formula, as a forger can compute it) with the
/// sqlite3 CLI, as a feeder who can write the file would.
fn forge(w: &World, kind: &str, request_id: Option<i64>, data: &str) -> i64 {
    let head = sqlite3(
        w,
        "SELECT seq || '|' || hash FROM audit_log ORDER BY seq DESC LIMIT 1",
    );
    let (seq, prev) = head.split_once('|').unwrap();
    let seq: i64 = seq.parse::<i64>().unwrap() + 1;
    let at = 1_800_000_100;
    let hash = link_hash(prev, seq, at, kind, request_id, data);
    let rid = request_id.map_or("NULL".to_string(), |r| r.to_string());
    sqlite3(
        w,
        &format!(
            "INSERT INTO audit_log (seq, at, kind, request_id, data, prev_hash, hash) VALUES ({seq}, {at}, '{kind}', {rid}, '{data}', '{prev}', '{hash}')"
        ),
    );
    seq
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_without_the_key_cannot_append_a_certifying_link_that_verifies() {
    let w = drained(false).await;
    let (rc, out) = w.verify();
    assert_eq!(rc, 0, "{out}");
    assert!(out.contains("seals (keyed chain):"), "{out}");
    assert!(out.contains("0 not sealed yet"), "{out}");
    // A forged closing event claiming a chat that was never touched: well-formed, hash-chained.
    let data = r#"{"items":[{"provider":"convai","scope":"char-z","session_id":"never-deleted","state":"deleted","outcome":"deleted","confirmed_at":1800000100,"last_error":null,"hold_id":null,"hold_reason":null}]}"#;
    let seq = forge(&w, "request.completed", Some(w.request), data);
    // Without the key, only the hashes are checked, and they hold: that is why the chain is keyed.
    let v = w.unkeyed().verify_audit().unwrap();
    assert!(v.broken.is_none() && v.seals.is_none(), "{v:?}");
    // With the key, the forgery is named.
    let (rc, out) = w.verify();
    assert_eq!(rc, 1, "{out}");
    assert!(
        out.contains(&format!("BROKEN at event {seq}")) && out.contains("without a seal"),
        "{out}"
    );
    // The daemon refuses to seal it.
    let late = w.keyed().seal_late().unwrap();
    assert_eq!(late.refused, vec![seq]);
    assert_eq!(late.sealed, 0);
    let (rc, _) = w.verify();
    assert_eq!(rc, 1, "still forged after the daemon looked");
    // Nor can the forger seal it: a seal made with another key does not verify.
    let fake = SubjectKey::from_bytes(&[9; 32]).chain_key().seal(
        seq,
        &sqlite3(&w, &format!("SELECT hash FROM audit_log WHERE seq = {seq}")),
        false,
    );
    sqlite3(
        &w,
        &format!("INSERT INTO audit_seals (seq, seal, late) VALUES ({seq}, '{fake}', 0)"),
    );
    let (rc, out) = w.verify();
    assert_eq!(rc, 1, "{out}");
    assert!(out.contains("not forgetd's"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewriting_sealed_history_with_recomputed_hashes_is_caught_by_the_seals() {
    let w = drained(false).await;
    // Drop the append-only trigger, rewrite the batch answer, recompute every hash after it.
    let rows = sqlite3(
        &w,
        &format!(
            "SELECT seq || {sep} || at || {sep} || kind || {sep} || coalesce(CAST(request_id AS TEXT), '') || {sep} || data FROM audit_log ORDER BY seq",
            sep = w.pick("char(31)", "chr(31)")
        ),
    );
    let target = sqlite3(
        &w,
        "SELECT min(seq) FROM audit_log WHERE kind = 'batch.answered'",
    )
    .parse::<i64>()
    .unwrap();
    let mut prev = sqlite3(
        &w,
        &format!("SELECT prev_hash FROM audit_log WHERE seq = {target}"),
    );
    let mut sql = String::from(w.pick(
        "DROP TRIGGER audit_log_is_append_only_no_update;",
        "DROP TRIGGER audit_log_is_append_only_no_update ON audit_log;",
    ));
    for line in rows.lines() {
        let f: Vec<&str> = line.split('\u{1f}').collect();
        let seq: i64 = f[0].parse().unwrap();
        if seq < target {
            continue;
        }
        let (at, kind) = (f[1].parse::<i64>().unwrap(), f[2]);
        let rid = (!f[3].is_empty()).then(|| f[3].parse::<i64>().unwrap());
        let data = if seq == target {
            f[4].replace("alice", "mallory")
        } else {
            f[4].to_string()
        };
        let hash = link_hash(&prev, seq, at, kind, rid, &data);
        sql.push_str(&format!(
            "UPDATE audit_log SET data = '{}', prev_hash = '{prev}', hash = '{hash}' WHERE seq = {seq};",
            data.replace('\'', "''")
        ));
        prev = hash;
    }
    sql.push_str(w.pick(
        "CREATE TRIGGER audit_log_is_append_only_no_update BEFORE UPDATE ON audit_log BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;",
        "CREATE TRIGGER audit_log_is_append_only_no_update BEFORE UPDATE ON audit_log FOR EACH ROW EXECUTE FUNCTION forgetd_refuse('audit_log is append-only: rows cannot be changed');",
    ));
    sqlite3(&w, &sql);
    // The hashes hold again (a chain without a key cannot tell) ...
    let v = w.unkeyed().verify_audit().unwrap();
    assert!(v.broken.is_none(), "{v:?}");
    // ... the seals do not.
    let (rc, out) = w.verify();
    assert_eq!(rc, 1, "{out}");
    assert!(
        out.contains(&format!("BROKEN at event {target}")) && out.contains("not forgetd's"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feeders_command_without_the_key_is_sealed_late_and_its_completion_closed_by_the_daemon()
{
    let w = drained(true).await;
    // Convai refused the key: Alice's two Convai chats are pending, her request in progress.
    assert_eq!(
        sqlite3(
            &w,
            &format!(
                "SELECT state FROM erasure_requests WHERE id = {}",
                w.request
            )
        ),
        "in_progress"
    );
    // A feeder's user (no key) holds her: the pending chats become held, the request complete.
    let mut feeder = w.unkeyed();
    assert!(!feeder.holds_chain_key());
    feeder
        .add_hold(
            &HoldTarget::Subject("alice".into()),
            "litigation",
            1_800_000_200,
        )
        .unwrap();
    drop(feeder);
    assert_eq!(
        sqlite3(
            &w,
            &format!(
                "SELECT state || '|' || coalesce(CAST(closing_seq AS TEXT), 'none') FROM erasure_requests WHERE id = {}",
                w.request
            )
        ),
        "complete|none",
        "complete, but the closing event is the daemon's to write"
    );
    assert_eq!(
        sqlite3(
            &w,
            "SELECT count(*) FROM audit_log WHERE kind = 'request.completed'"
        ),
        "0"
    );
    let (rc, out) = w.verify();
    assert_eq!(rc, 0, "{out}");
    assert!(out.contains("1 not sealed yet"), "the hold's link: {out}");
    // The daemon's next look seals the hold late and closes the request, sealed at append.
    let mut daemon = w.keyed();
    assert_eq!(daemon.seal_late().unwrap().sealed, 1);
    assert_eq!(daemon.close_deferred(1_800_000_201).unwrap(), 1);
    assert_eq!(daemon.close_deferred(1_800_000_202).unwrap(), 0, "once");
    let (rc, out) = w.verify();
    assert_eq!(rc, 0, "{out}");
    assert!(
        out.contains("(1 sealed late by the daemon), 0 not sealed yet"),
        "{out}"
    );
    let cert = forgetd::certificate::Certificate::build(&daemon, w.request).unwrap();
    assert!(cert.broken.is_none());
    assert_eq!(cert.held.len(), 2);
    assert_eq!(cert.deleted.values().flatten().count(), 1);
}

/// The issue's forgery: a group member drops the keying row's trigger, moves the point where
/// keying began past every link, and appends a well-chained closing and verification event. The
/// daemon must not seal them late, `audit verify` with the key must fail, and the certificate
/// must say its record is broken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_where_keying_began_does_not_make_a_forged_certificate_verify() {
    let w = drained(true).await;
    sqlite3(
        &w,
        w.pick(
            "DROP TRIGGER audit_keying_is_fixed_no_update; UPDATE audit_keying SET keyed_from_seq = 100000;",
            "DROP TRIGGER audit_keying_is_fixed_no_update ON audit_keying; UPDATE audit_keying SET keyed_from_seq = 100000;",
        ),
    );
    let closed = r#"{"items":[{"provider":"convai","scope":"char-a","session_id":"alice-c0","state":"deleted","outcome":"deleted","confirmed_at":1800000100,"last_error":null,"hold_id":null,"hold_reason":null}]}"#;
    let completed = forge(&w, "request.completed", Some(w.request), closed);
    let verified = r#"{"items":[{"provider":"convai","scope":"char-a","session_id":"alice-c0","verified_at":1800000101}]}"#;
    forge(&w, "request.verified", Some(w.request), verified);
    let late = w.keyed().seal_late().unwrap();
    assert_eq!(late.sealed, 0, "{late:?}");
    assert_eq!(late.refused.len(), 2, "{late:?}");
    let (rc, out) = w.verify();
    assert_eq!(rc, 1, "{out}");
    assert!(
        out.contains(&format!("BROKEN at event {completed}")) && out.contains("without a seal"),
        "{out}"
    );
    let cert = forgetd::certificate::Certificate::build(&w.keyed(), w.request).unwrap();
    assert!(
        cert.broken
            .as_deref()
            .is_some_and(|b| b.contains(&format!("event {completed}"))),
        "{:?}",
        cert.broken
    );
    // The chat the forgery calls deleted is still at the provider.
    assert!(w.sim.exists(ProviderKind::CONVAI, "char-a", "alice-c0"));
}
