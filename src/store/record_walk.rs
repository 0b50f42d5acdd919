//! A test that walks every public store operation that takes `&mut self` (read from the
//! store's sources, so a new one cannot be missed) and holds it to the SPEC's "the record follows
//! the truth": each is classified here as recording its change in the audit trail (in the same
//! transaction), or as one of the kinds that record nothing by design (leases, input, process
//! settings, dry runs), with why. An unclassified operation fails the test; the ones that
//! record are run on a fresh store and must advance the trail with the event they name.

use std::collections::BTreeMap;
use std::path::Path;

/// Why an operation writes no event, or which event it writes.
enum Record {
    /// Appends this kind (or one of these kinds) in the transaction of its change.
    Event(&'static [&'static str]),
    /// Changes no state the SPEC names, or only a lease; why.
    Nothing(&'static str),
}

fn classification() -> BTreeMap<&'static str, Record> {
    use Record::*;
    BTreeMap::from([
        ("add_hold", Event(&["hold.placed"])),
        ("remove_hold", Event(&["hold.lifted"])),
        ("add_rule", Event(&["rule.added"])),
        ("remove_rule", Event(&["rule.removed"])),
        ("approve_rule", Event(&["rule.approved"])),
        (
            "sync_config_rules",
            Event(&["config.loaded", "config.reloaded"]),
        ),
        ("retry_request", Event(&["request.retried"])),
        (
            "set_provider_paused",
            Event(&["provider.paused", "provider.resumed"]),
        ),
        (
            "resolve_request",
            Event(&["request.received", "request.resolved"]),
        ),
        ("run_rule", Event(&["rule.run", "rule.held_for_approval"])),
        (
            "finish_batch",
            Event(&["batch.answered", "batch.answered_late"]),
        ),
        (
            "record_read_backs",
            Event(&["chats.read_back", "chat.reappeared"]),
        ),
        ("rescue_dead_instances", Event(&["instance.rescued"])),
        ("listing_found", Event(&["request.discovered"])),
        ("listing_failed", Event(&["request.discovery_failed"])),
        (
            "close_deferred",
            Event(&["request.completed", "request.failed"]),
        ),
        ("recheck_holds", Event(&["chats.held", "chats.freed"])),
        ("sendable", Event(&["chats.held"])),
        ("audit", Event(&["any"])),
        (
            "claim_batch",
            Nothing(
                "a lease (in flight under a batch), not a fate; chats a hold covers are recorded by chats.held",
            ),
        ),
        (
            "release_batch",
            Nothing("hands a lease back; chats a hold covers now are recorded by chats.held"),
        ),
        (
            "release_expired_leases",
            Nothing("hands expired leases back; held ones recorded by chats.held"),
        ),
        (
            "release_all_in_flight",
            Nothing("hands a dead run's leases back at start; held ones recorded by chats.held"),
        ),
        (
            "claim_listings",
            Nothing("a lease on a listing to ask, not a fate"),
        ),
        (
            "release_listings",
            Nothing("hands listing leases back (a clean stop, or a dead run's at start)"),
        ),
        ("register_instance", Nothing("an instance's heartbeat row")),
        ("instance_beat", Nothing("an instance's heartbeat")),
        (
            "deregister_instance",
            Nothing("an instance's row at a clean stop; its leases go back first"),
        ),
        (
            "add_session",
            Nothing("inventory input (what a feeder may write itself)"),
        ),
        (
            "add_discovered",
            Nothing("inventory input found by listing"),
        ),
        (
            "import_sessions",
            Nothing("inventory input (a feeder's CSV)"),
        ),
        (
            "file_request",
            Nothing(
                "a request filed, as a feeder's INSERT does; request.received records it when the daemon takes it in",
            ),
        ),
        (
            "mark_rule_attempt",
            Nothing("a rule's last-run time after a failed attempt"),
        ),
        (
            "record_gate",
            Nothing("the status mirror of a provider's gate"),
        ),
        ("queue_synthetic_items", Nothing("benchmark input")),
        ("data_version", Nothing("reads a counter")),
        (
            "seal_late",
            Nothing("seals of existing links: a record about the record"),
        ),
        ("set_chain_key", Nothing("a process setting")),
        ("set_actor", Nothing("a process setting")),
        ("set_read_back", Nothing("a process setting")),
        ("plan_rule", Nothing("a dry run, rolled back")),
        ("plan_subject", Nothing("a dry run, rolled back")),
        ("add", Nothing("ItemCounts::add, not a store operation")),
    ])
}

/// Every `pub fn NAME(&mut self, ...)` in `src/store`, outside test modules.
fn mutating_operations() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/store");
    let mut dirs = vec![root];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") || path.ends_with("record_walk.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let code = text.split("#[cfg(test)]\nmod tests").next().unwrap_or("");
            for (at, _) in code.match_indices("pub fn ") {
                let rest = &code[at + "pub fn ".len()..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                let Some(open) = rest.find('(') else { continue };
                let first = rest[open + 1..]
                    .split([',', ')'])
                    .next()
                    .unwrap_or("")
                    .trim();
                if first == "&mut self" {
                    out.push((name, path.display().to_string()));
                }
            }
        }
    }
    out
}

#[test]
fn every_public_store_operation_that_changes_state_is_classified() {
    let known = classification();
    let found = mutating_operations();
    assert!(found.len() > 20, "the walk found the operations: {found:?}");
    let missing: Vec<_> = found
        .iter()
        .filter(|(name, _)| !known.contains_key(name.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "store operations that change state but are not classified in src/store/record_walk.rs \
         (does each record its change with an audit event in the same transaction?): {missing:?}"
    );
    // And no entry outlives its operation, nor says "nothing" without saying why.
    for (name, record) in &known {
        assert!(
            found.iter().any(|(f, _)| f == name),
            "{name} is classified but no longer a store operation"
        );
        if let Record::Nothing(why) = record {
            assert!(!why.is_empty(), "{name}: say why it records nothing");
        }
    }
}

#[test]
fn the_recording_operations_advance_the_trail_with_their_event() {
    use crate::store::holds::HoldTarget;
    use crate::store::rules::ConfigSync;
    let (_d, mut s) = crate::store::testing::temp_store();
    let known = classification();
    let mut last = 0i64;
    let mut check = |s: &crate::store::Store, op: &str| {
        let rows: Vec<(i64, String)> = s
            .connection()
            .prepare("SELECT seq, kind FROM audit_log WHERE seq > ?1 ORDER BY seq")
            .unwrap()
            .query_map([last], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let Some(Record::Event(kinds)) = known.get(op) else {
            panic!("{op} is not classified as recording");
        };
        assert!(
            rows.iter().any(|(_, k)| kinds.contains(&k.as_str())),
            "{op} changed state without {kinds:?}: {rows:?}"
        );
        last = rows.last().map_or(last, |(seq, _)| *seq);
    };
    let rule = crate::config::RuleSpec {
        name: "r".into(),
        provider: crate::model::ProviderKind::CONVAI,
        scope: "*".into(),
        max_age: std::time::Duration::from_secs(86_400),
        schedule: "0 3 * * *".into(),
        timezone: "UTC".into(),
        discover: false,
        max_deletions: 10,
    };
    s.add_rule(&rule, 1).unwrap();
    check(&s, "add_rule");
    s.remove_rule("r", 2).unwrap();
    check(&s, "remove_rule");
    s.sync_config_rules(
        &[crate::config::RuleSpec {
            name: "f".into(),
            ..rule.clone()
        }],
        None,
        ConfigSync::Command,
        3,
    )
    .unwrap();
    check(&s, "sync_config_rules");
    let (hold, _) = s
        .add_hold(&HoldTarget::Subject("alice".into()), "case", 4)
        .unwrap();
    check(&s, "add_hold");
    s.remove_hold(hold, 5).unwrap();
    check(&s, "remove_hold");
    s.set_provider_paused(crate::model::ProviderKind::CONVAI, Some("HTTP 401"), 6)
        .unwrap();
    check(&s, "set_provider_paused");
    s.set_provider_paused(crate::model::ProviderKind::CONVAI, None, 7)
        .unwrap();
    check(&s, "set_provider_paused");
    // A request whose two listings end: one with a chat, one failed for good. A failed try that
    // will be asked again records nothing (the request's state does not change) and is not
    // classified as recording: only the give-up is.
    let id = s.file_request("bob", Some("ref-b"), 8, 86_400).unwrap().id;
    let req = s.received_requests(1).unwrap().remove(0);
    assert_eq!(req.id, id);
    let listings = [
        crate::audit::Listing {
            provider: "koosearch".into(),
            scope: "app-a".into(),
        },
        crate::audit::Listing {
            provider: "koosearch".into(),
            scope: "app-b".into(),
        },
    ];
    s.resolve_request(&req, &[], &listings, "h", 9, 86_400)
        .unwrap();
    let claims = s.claim_listings(10, 10, 60, 8).unwrap();
    assert_eq!(claims.len(), 2);
    let found = [crate::store::inventory::NewSession {
        provider: "koosearch".into(),
        scope: "app-a".into(),
        session_id: "k1".into(),
        subject: Some("bob".into()),
        repo_id: None,
        created_at: Some(1),
    }];
    assert!(
        s.listing_found(&claims[0], &found, "h", 11)
            .unwrap()
            .written
    );
    check(&s, "listing_found");
    use crate::store::discovery::ListingNext;
    let retry = ListingNext::RetryAt {
        at: 20,
        counted: true,
    };
    assert!(s.listing_failed(&claims[1], "HTTP 503", retry, 12).unwrap());
    let again = s.claim_listings(20, 20, 60, 8).unwrap();
    assert_eq!(again.len(), 1);
    assert!(
        s.listing_failed(&again[0], "HTTP 400 KOS.00010002", ListingNext::GiveUp, 21)
            .unwrap()
    );
    check(&s, "listing_failed");
}
