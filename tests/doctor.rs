//! `forgetd doctor` against the simulator: one test per answer class (ok, unauthenticated,
//! forbidden, API not enabled, unreachable, throttled, not tested), each checking the exit code,
//! the class printed per check, that the advice names what to fix, that no secret is printed,
//! and that nothing was deleted (the simulator's decoy chats are all still there and it saw no
//! delete call).

mod common;

use common::*;
use forgetd::clock::SystemClock;
use forgetd::model::ProviderKind;
use forgetd::simulator::{CONVAI_KEY, Faults, IAM_PASSWORD, Simulator};

struct Setup {
    s: Scratch,
    sim: Simulator,
    cfg: std::path::PathBuf,
}

/// A simulator with a decoy chat at each provider, the inventory knowing Convai's character,
/// and a config for two KooSearch applications.
async fn setup(faults: Faults) -> Setup {
    let s = Scratch::new();
    let sim = Simulator::start(std::sync::Arc::new(SystemClock), faults, 1)
        .await
        .unwrap();
    sim.add_convai_chat("char-1", "decoy-convai", 1_700_000_000);
    sim.add_koosearch_chat("app-1", "decoy-koo", Some("alice"), None, 1_700_000_000_000);
    let cfg = sim_config(&s, &sim, &["app-1", "app-2"], "");
    s.add_chat("convai", "char-1", "decoy-convai", "alice");
    Setup { s, sim, cfg }
}

impl Setup {
    fn doctor(&self, json: bool) -> std::process::Output {
        let mut args = vec!["--config", self.cfg.to_str().unwrap(), "doctor"];
        if json {
            args.push("--json");
        }
        self.s.forgetd(&args)
    }

    /// The classes of every check, provider by provider, from `doctor --json`.
    fn classes(&self) -> (i32, Vec<(String, String)>) {
        let o = self.doctor(true);
        let v: serde_json::Value = serde_json::from_str(&stdout(&o))
            .unwrap_or_else(|e| panic!("{e}: {}{}", stdout(&o), stderr(&o)));
        let mut classes = Vec::new();
        for p in v["providers"].as_array().unwrap() {
            for c in p["checks"].as_array().unwrap() {
                classes.push((
                    p["provider"].as_str().unwrap().to_string(),
                    c["class"].as_str().unwrap().to_string(),
                ));
            }
        }
        assert_eq!(v["passed"].as_bool().unwrap(), code(&o) == 0);
        (code(&o), classes)
    }

    /// Nothing deleted, no delete call made, no secret printed.
    fn harmless(&self, out: &std::process::Output) {
        assert!(self.sim.deleted().is_empty(), "{:?}", self.sim.deleted());
        assert!(!self.sim.calls().iter().any(|c| c.op == "delete"));
        assert_eq!(self.sim.remaining(ProviderKind::CONVAI), 1);
        assert_eq!(self.sim.remaining(ProviderKind::KOOSEARCH), 1);
        let all = format!("{}{}", stdout(out), stderr(out));
        for secret in [CONVAI_KEY, IAM_PASSWORD, "MII"] {
            assert!(!all.contains(secret), "{secret} printed: {all}");
        }
    }
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(p, c)| (p.to_string(), c.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_check_answered_is_ok_and_nothing_is_deleted() {
    let t = setup(Faults::default()).await;
    let o = t.doctor(false);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    let text = stdout(&o);
    assert!(
        text.contains("ok                list one session of character char-1"),
        "{text}"
    );
    assert!(
        text.contains("ok                fetch an IAM token for user forgetd"),
        "{text}"
    );
    assert!(
        text.contains("ok                list one chat of application app-2"),
        "{text}"
    );
    assert!(
        text.contains("doctor: every check passed (4 check(s), 2 provider(s))"),
        "{text}"
    );
    assert!(
        text.contains("note: whether the delete API is enabled"),
        "{text}"
    );
    t.harmless(&o);
    let (c, classes) = t.classes();
    assert_eq!(c, 0);
    assert_eq!(
        classes,
        pairs(&[
            ("convai", "ok"),
            ("koosearch", "ok"),
            ("koosearch", "ok"),
            ("koosearch", "ok")
        ])
    );
    // The listing asked for one record, not the whole history.
    assert!(t.sim.calls().iter().any(|c| c.op == "token"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_are_unauthenticated_and_name_the_key_to_fix() {
    let t = setup(Faults::default()).await;
    t.s.write("convai-api-key", "not-the-key");
    t.s.write("iam-password", "not-the-password");
    let o = t.doctor(false);
    assert_eq!(code(&o), 1, "{}{}", stdout(&o), stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("providers.convai.api_key"), "{text}");
    assert!(
        text.contains("not tried: the IAM token came first and failed"),
        "{text}"
    );
    t.harmless(&o);
    let (c, classes) = t.classes();
    assert_eq!(c, 1);
    assert_eq!(
        classes,
        pairs(&[
            ("convai", "unauthenticated"),
            ("koosearch", "unauthenticated"),
            ("koosearch", "not_tested"),
            ("koosearch", "not_tested"),
        ])
    );
    assert!(!stdout(&o).contains("not-the-key") && !stdout(&o).contains("not-the-password"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_the_api_refuses_is_unauthenticated_at_the_listing() {
    let t = setup(Faults {
        auth_fail: [ProviderKind::KOOSEARCH].into(),
        ..Faults::default()
    })
    .await;
    let (c, classes) = t.classes();
    assert_eq!(c, 1);
    assert_eq!(
        classes,
        pairs(&[
            ("convai", "ok"),
            ("koosearch", "ok"),
            ("koosearch", "unauthenticated"),
            ("koosearch", "unauthenticated"),
        ]),
        "each application is asked on its own"
    );
    t.harmless(&t.doctor(false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permission_refusal_is_forbidden() {
    let t = setup(Faults {
        forbidden: [ProviderKind::CONVAI, ProviderKind::KOOSEARCH].into(),
        ..Faults::default()
    })
    .await;
    let o = t.doctor(false);
    assert_eq!(code(&o), 1);
    assert!(
        stdout(&o).contains("grant the IAM user access to KooSearch"),
        "{}",
        stdout(&o)
    );
    t.harmless(&o);
    let (_, classes) = t.classes();
    assert_eq!(
        classes,
        pairs(&[
            ("convai", "forbidden"),
            ("koosearch", "ok"),
            ("koosearch", "forbidden"),
            ("koosearch", "forbidden"),
        ])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_api_is_api_not_enabled() {
    let t = setup(Faults {
        api_disabled: [ProviderKind::CONVAI, ProviderKind::KOOSEARCH].into(),
        ..Faults::default()
    })
    .await;
    let o = t.doctor(false);
    assert_eq!(code(&o), 1);
    let text = stdout(&o);
    assert!(text.contains("API not enabled"), "{text}");
    assert!(text.contains("check providers.convai.base_url"), "{text}");
    assert!(
        text.contains("providers.koosearch.endpoint and project_id"),
        "{text}"
    );
    t.harmless(&o);
    let (_, classes) = t.classes();
    assert_eq!(
        classes,
        pairs(&[
            ("convai", "api_not_enabled"),
            ("koosearch", "ok"),
            ("koosearch", "api_not_enabled"),
            ("koosearch", "api_not_enabled"),
        ])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_answer_is_unreachable_and_names_the_address() {
    let t = setup(Faults::default()).await;
    // Nothing listens on port 9 of loopback (discard is never run here): connection refused.
    let text = std::fs::read_to_string(&t.cfg).unwrap();
    let text = text
        .replace(&t.sim.convai_url, "http://127.0.0.1:9")
        .replace(&t.sim.koosearch_url, "http://127.0.0.1:9")
        .replace(&t.sim.iam_url, "http://127.0.0.1:9");
    std::fs::write(&t.cfg, text).unwrap();
    let o = t.doctor(false);
    assert_eq!(code(&o), 1);
    assert!(
        stdout(&o).contains("nothing answered at http://127.0.0.1:9/"),
        "{}",
        stdout(&o)
    );
    assert!(t.sim.calls().is_empty(), "the simulator was not reached");
    t.harmless(&o);
    let (_, classes) = t.classes();
    assert_eq!(
        classes,
        pairs(&[
            ("convai", "unreachable"),
            ("koosearch", "unreachable"),
            ("koosearch", "not_tested"),
            ("koosearch", "not_tested"),
        ])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_is_reported_as_no_verdict() {
    let t = setup(Faults {
        rate_limit: Some(0),
        ..Faults::default()
    })
    .await;
    let o = t.doctor(false);
    assert_eq!(code(&o), 1);
    assert!(stdout(&o).contains("could not be judged"), "{}", stdout(&o));
    t.harmless(&o);
    let (_, classes) = t.classes();
    assert_eq!(
        classes,
        pairs(&[
            ("convai", "throttled"),
            ("koosearch", "ok"), // IAM is its own service: the limit is KooSearch's
            ("koosearch", "throttled"),
            ("koosearch", "not_tested"),
        ])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn convai_without_a_known_character_is_not_tested_and_not_a_pass() {
    let t = setup(Faults::default()).await;
    let o = t.s.sqlite3("DELETE FROM sessions");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = t.doctor(false);
    assert_eq!(code(&o), 1);
    assert!(
        stdout(&o).contains("no Convai character is known yet"),
        "{}",
        stdout(&o)
    );
    // A rule naming a character is enough to ask about it.
    let rule = "\n[[rules]]\nname = \"old\"\nprovider = \"convai\"\nscope = \"char-1\"\nmax_age = \"30d\"\nschedule = \"0 3 * * *\"\n";
    let text = std::fs::read_to_string(&t.cfg).unwrap() + rule;
    std::fs::write(&t.cfg, text).unwrap();
    let (c, classes) = t.classes();
    assert_eq!(c, 0, "{classes:?}");
    t.harmless(&t.doctor(false));
}

#[test]
fn doctor_without_a_provider_is_a_configuration_error() {
    let s = Scratch::new();
    let o = s.forgetd(&["doctor"]);
    assert_eq!(code(&o), 78, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("doctor has nothing to check"),
        "{}",
        stderr(&o)
    );
}
