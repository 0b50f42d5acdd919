//! `forgetd demo`, the README's first command, run as a newcomer would: it must finish with every
//! count matching what the simulator saw, and leave its database for inspection.

mod common;
use common::*;

#[test]
fn demo_reports_counts_that_match_the_simulator_and_leaves_its_database() {
    let s = Scratch::new();
    let o = std::process::Command::new(BIN)
        .args(["demo", "--json", "--chats", "1500"])
        .current_dir(s.dir.path())
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}\n{}", stdout(&o), stderr(&o));
    let r: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(r["checks_failed"], serde_json::json!([]));
    assert_eq!(r["deleted_by_provider"], r["simulator_deleted_by_provider"]);
    assert!(r["deleted_by_provider"]["convai"].as_u64().unwrap() > 100);
    assert!(r["deleted_by_provider"]["koosearch"].as_u64().unwrap() > 50);
    assert_eq!(r["decoys_untouched"], true);
    assert_eq!(r["untargeted_named_in_deletes"], 0);
    assert_eq!(
        r["dead"].as_array().unwrap().len(),
        1,
        "the one ID the provider refuses"
    );
    assert!(!r["held"].as_array().unwrap().is_empty());
    assert!(s.path("forgetd-demo.db").exists());
    // the database answers the commands the report suggests
    let db = s.path("forgetd-demo.db");
    for args in [
        vec!["status"],
        vec!["requests", "list"],
        vec!["audit", "verify"],
        vec!["audit", "export", "--request", "1"],
    ] {
        let o = std::process::Command::new(BIN)
            .arg("--db")
            .arg(&db)
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(code(&o), 0, "{args:?}: {}", stderr(&o));
    }
}
