//! Configuration at the command line: exit 78 naming the problem, secrets never printed.

mod common;

use common::*;
use forgetd::model::ProviderKind;

#[test]
fn a_bad_config_exits_78_naming_every_key() {
    let s = Scratch::new();
    let cfg = s.write(
        "bad.toml",
        "[daemon]\nlease = \"forever\"\nbogus_key = 1\n[providers.convai]\napi_key = \"env:X\"\nbatch_sise = 5\n",
    );
    let o = s.forgetd(&["--config", cfg.to_str().unwrap(), "status"]);
    assert_eq!(code(&o), 78, "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("daemon.bogus_key"), "{e}");
    assert!(e.contains("providers.convai.batch_sise"), "{e}");
    assert!(e.contains("daemon.lease"), "{e}");
}

#[test]
fn a_value_of_the_wrong_type_is_one_problem_among_the_others() {
    let s = Scratch::new();
    let cfg = s.write(
        "types.toml",
        "[retry]\nmax_attempts = \"20\"\n[daemon]\nlease = \"forever\"\n[http]\nlisten = 9464\n\
         [providers.convai]\napi_key = \"env:X\"\nconcurrency = \"4\"\n\
         [[rules]]\nname = \"a\"\nprovider = \"convai\"\nscope = \"c\"\nmax_age = 30\nschedule = \"0 3 * * *\"\n\
         [[rules]]\nname = \"b\"\nprovider = \"convai\"\nscope = \"c\"\nmax_age = \"30d\"\nschedule = \"0 3 * * *\"\nbogus = 1\n",
    );
    let o = s.forgetd(&["--config", cfg.to_str().unwrap(), "check-config"]);
    assert_eq!(code(&o), 78, "{}", stderr(&o));
    let e = stderr(&o);
    for named in [
        "`retry.max_attempts`: invalid type: string \"20\"",
        "daemon.lease",
        "`http.listen`: invalid type: integer",
        "providers.convai.concurrency",
        "`rules[0].max_age`: invalid type: integer",
        "rules[1].bogus",
    ] {
        assert!(e.contains(named), "{named} missing from:\n{e}");
    }
}

#[test]
fn check_config_warns_of_an_example_placeholder_and_a_listener_off_loopback() {
    let s = Scratch::new();
    let cfg = s.write(
        "warn.toml",
        "[http]\nlisten = \"0.0.0.0:9464\"\n[providers.convai]\napi_key = \"env:CONVAI_TEST_KEY\"\n\
         [[rules]]\nname = \"r\"\nprovider = \"convai\"\nscope = \"<charID>\"\nmax_age = \"30d\"\nschedule = \"0 3 * * *\"\n",
    );
    let o = std::process::Command::new(BIN)
        .args(["--db"])
        .arg(s.db())
        .args(["--config", cfg.to_str().unwrap(), "check-config"])
        .env("CONVAI_TEST_KEY", "k")
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "warnings do not fail: {}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("warning: `http.listen` = \"0.0.0.0:9464\" is not a loopback address"),
        "{e}"
    );
    assert!(
        e.contains("warning: rule r: scope \"<charID>\" looks like the example's placeholder"),
        "{e}"
    );
}

#[test]
fn a_literal_secret_is_refused_and_never_echoed() {
    let s = Scratch::new();
    let cfg = s.write(
        "lit.toml",
        "[providers.convai]\napi_key = \"sk-live-SUPERSECRET\"\n",
    );
    let o = s.forgetd(&["--config", cfg.to_str().unwrap(), "check-config"]);
    assert_eq!(code(&o), 78);
    assert!(!stderr(&o).contains("SUPERSECRET") && !stdout(&o).contains("SUPERSECRET"));
    assert!(
        stderr(&o).contains("providers.convai.api_key"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn check_config_reads_every_secret_without_printing_any() {
    let s = Scratch::new();
    let key = s.write("convai.key", "ck-VERYSECRET-123\n");
    let cfg = s.write(
        "ok.toml",
        &format!(
            "[providers.convai]\nbase_url = \"https://api.convai.com\"\napi_key = \"file:{}\"\n[providers.koosearch]\nendpoint = \"https://css.example.com\"\nproject_id = \"p1\"\ntoken = \"env:FORGETD_TEST_KOO_TOKEN\"\n",
            key.display()
        ),
    );
    let o = std::process::Command::new(BIN)
        .args(["--config", cfg.to_str().unwrap(), "check-config"])
        .env("FORGETD_TEST_KOO_TOKEN", "kt-ALSOSECRET-456")
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let all = format!("{}{}", stdout(&o), stderr(&o));
    assert!(
        !all.contains("VERYSECRET") && !all.contains("ALSOSECRET"),
        "{all}"
    );
    assert!(all.contains("file:"), "names the reference: {all}");
    // the same config with the env secret missing: 78, naming the variable, not a value
    let o = s.forgetd(&["--config", cfg.to_str().unwrap(), "check-config"]);
    assert_eq!(code(&o), 78);
    assert!(
        stderr(&o).contains("FORGETD_TEST_KOO_TOKEN"),
        "{}",
        stderr(&o)
    );
    assert!(!stderr(&o).contains("VERYSECRET"));
}

#[test]
fn credential_secrets_read_from_the_credentials_directory() {
    let s = Scratch::new();
    std::fs::create_dir(s.path("creds")).unwrap();
    s.write("creds/convai-api-key", "ck-CRED");
    let cfg = s.write(
        "c.toml",
        "[providers.convai]\napi_key = \"credential:convai-api-key\"\n",
    );
    let o = std::process::Command::new(BIN)
        .args(["--config", cfg.to_str().unwrap(), "check-config"])
        .env("CREDENTIALS_DIRECTORY", s.path("creds"))
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = s.forgetd(&["--config", cfg.to_str().unwrap(), "check-config"]);
    assert_eq!(code(&o), 78, "without CREDENTIALS_DIRECTORY");
    assert!(
        stderr(&o).contains("CREDENTIALS_DIRECTORY"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn run_without_a_provider_is_a_configuration_error() {
    let s = Scratch::new();
    let o = s.forgetd(&["run", "--once"]);
    assert_eq!(code(&o), 78, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("no provider is configured"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn the_example_config_refuses_to_run_unedited_and_is_valid_once_edited() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml");
    let e = forgetd::config::Config::load(std::path::Path::new(example)).unwrap_err();
    assert!(e.to_string().contains("unedited_example"), "{e}");
    let s = Scratch::new();
    let text = std::fs::read_to_string(example).unwrap();
    let edited = s.write(
        "edited.toml",
        &text.replace("unedited_example = true\n", ""),
    );
    let c = forgetd::config::Config::load(&edited).unwrap();
    assert!(c.kinds() == [ProviderKind::CONVAI, ProviderKind::KOOSEARCH] && c.rules.len() == 1);
}

#[test]
fn logs_are_json_lines_on_request() {
    let s = Scratch::new();
    let o = std::process::Command::new(BIN)
        .args(["--db", s.db().to_str().unwrap(), "status"])
        .env("FORGETD_LOG", "info")
        .env("FORGETD_LOG_FORMAT", "json")
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        !err.trim().is_empty(),
        "a fresh database logs its migration at info"
    );
    for line in err.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v.get("level").is_some() && v.get("fields").is_some(),
            "{line}"
        );
    }
}

#[test]
fn version_names_the_release_and_the_commit() {
    let o = std::process::Command::new(BIN)
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(code(&o), 0);
    let v = stdout(&o);
    assert!(
        v.starts_with(&format!("forgetd {} (commit ", env!("CARGO_PKG_VERSION"))),
        "{v}"
    );
    let commit = v
        .split("(commit ")
        .nth(1)
        .unwrap()
        .trim_end()
        .trim_end_matches(')');
    assert!(
        commit == "unknown"
            || (commit.len() == 12 && commit.chars().all(|c| c.is_ascii_hexdigit())),
        "{v}"
    );
}

#[test]
fn every_subcommand_and_flag_has_a_help_line() {
    use clap::CommandFactory;
    fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
        for a in cmd.get_arguments() {
            let id = a.get_id().as_str();
            if id == "help" || id == "version" || a.is_hide_set() {
                continue;
            }
            if a.get_help().is_none() {
                missing.push(format!("{path} --{id}"));
            }
        }
        for sub in cmd.get_subcommands() {
            if sub.is_hide_set() || sub.get_name() == "help" {
                continue;
            }
            let p = format!("{path} {}", sub.get_name());
            if sub.get_about().is_none() {
                missing.push(p.clone());
            }
            walk(sub, &p, missing);
        }
    }
    let mut missing = Vec::new();
    walk(&forgetd::cli::Cli::command(), "forgetd", &mut missing);
    assert!(missing.is_empty(), "no help line:\n{}", missing.join("\n"));
}

#[test]
fn an_unknown_provider_is_a_usage_error_listing_the_known_ones() {
    let s = Scratch::new();
    let o = s.forgetd(&[
        "sessions",
        "add",
        "--provider",
        "x",
        "--scope",
        "c",
        "--id",
        "i",
    ]);
    assert_eq!(code(&o), 2);
    assert!(
        stderr(&o).contains("possible values: convai, koosearch"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn plan_and_holds_add_name_both_alternatives_when_neither_is_given() {
    let s = Scratch::new();
    for (args, alternatives) in [
        (&["plan"][..], "<--subject <SUBJECT>|--rule <RULE>>"),
        (
            &["holds", "add", "--reason", "x"][..],
            "<--subject <SUBJECT>|--id <ID>>",
        ),
    ] {
        let o = s.forgetd(args);
        assert_eq!(code(&o), 2, "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains(alternatives),
            "{args:?}: {}",
            stderr(&o)
        );
    }
    let both = s.forgetd(&["plan", "--subject", "a", "--rule", "r"]);
    assert_eq!(code(&both), 2, "{}", stderr(&both));
}

#[test]
fn one_class_of_input_error_has_one_exit_code_in_every_command() {
    let s = Scratch::new();
    s.add_chat("convai", "c", "decoy-chat", "decoy");
    let o = s.forgetd(&["erase", "--subject", "decoy", "--ref", "decoy-ref"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let rule = [
        "--provider",
        "convai",
        "--scope",
        "c",
        "--max-age",
        "30d",
        "--schedule",
        "0 3 * * *",
    ];
    let with_rule = |name: &str, extra: &[&str]| {
        let mut a = vec!["rules", "add", name];
        a.extend(rule);
        a.extend(extra);
        a.into_iter().map(str::to_string).collect::<Vec<_>>()
    };
    let o = s.forgetd(
        &with_rule("kept", &[])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let add = |extra: &[&str]| {
        let mut a = vec![
            "sessions",
            "add",
            "--provider",
            "koosearch",
            "--scope",
            "app",
        ];
        a.extend(extra);
        a.into_iter().map(str::to_string).collect::<Vec<_>>()
    };
    // A value on the command line that is not valid: 2, whichever layer refuses it (clap,
    // forgetd's parsing, or the table's CHECK constraint).
    let usage: Vec<Vec<String>> = vec![
        add(&["--id", "no spaces here"]),
        add(&["--id", ""]),
        add(&["--id", "ok", "--subject", " "]),
        add(&["--id", "ok", "--created-at", "soon"]),
        vec![
            "sessions".into(),
            "add".into(),
            "--provider".into(),
            "nope".into(),
        ],
        vec!["erase".into(), "--subject".into(), "".into()],
        vec![
            "erase".into(),
            "--subject".into(),
            "x".into(),
            "--ref".into(),
            "".into(),
        ],
        vec![
            "holds".into(),
            "add".into(),
            "--subject".into(),
            "x".into(),
            "--reason".into(),
            " ".into(),
        ],
        vec![
            "holds".into(),
            "add".into(),
            "--subject".into(),
            "".into(),
            "--reason".into(),
            "r".into(),
        ],
        vec!["plan".into(), "--subject".into(), "".into()],
        with_rule("bad name", &[]),
        with_rule("tz", &["--timezone", "Mars/Olympus"]),
        with_rule("age", &["--max-age", "forever"]),
        vec!["requests".into(), "show".into(), "not-a-number".into()],
    ];
    for args in &usage {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = s.forgetd(&args);
        assert_eq!(code(&o), 2, "{args:?} is a usage error: {}", stderr(&o));
        assert!(!stderr(&o).contains("Error code"), "{}", stderr(&o));
    }
    // What the data's state refuses: 1.
    let refused: Vec<Vec<&str>> = vec![
        vec!["requests", "show", "999"],
        vec!["requests", "retry", "999"],
        vec!["audit", "export", "--request", "999"],
        vec!["rules", "remove", "nope"],
        vec!["rules", "approve", "nope"],
        vec!["plan", "--rule", "nope"],
        vec!["holds", "remove", "999"],
        vec!["erase", "--subject", "someone-else", "--ref", "decoy-ref"],
    ];
    for args in &refused {
        let o = s.forgetd(args);
        assert_eq!(code(&o), 1, "{args:?} is refused data: {}", stderr(&o));
    }
    let o = s.forgetd(
        &with_rule("kept", &[])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert_eq!(code(&o), 1, "a rule that exists already: {}", stderr(&o));
    let bad = s.write("bad.csv", "provider,scope,session_id\nconvai,c,\n");
    let o = s.forgetd(&["sessions", "import", bad.to_str().unwrap()]);
    assert_eq!(code(&o), 1, "a bad line in a file: {}", stderr(&o));
    // Nothing was written by any of them: the decoys are all there is.
    let o = s.sqlite3(
        "SELECT (SELECT group_concat(session_id) FROM sessions) || ';' ||
                (SELECT group_concat(subject) FROM erasure_requests) || ';' ||
                (SELECT count(*) FROM holds) || ';' ||
                (SELECT group_concat(name) FROM rules)",
    );
    assert_eq!(stdout(&o).trim(), "decoy-chat;decoy;0;kept");
}

#[test]
fn import_names_every_bad_line_of_a_file() {
    let s = Scratch::new();
    let f = s.write(
        "chats.jsonl",
        "{\"provider\":\"convai\",\"scope\":\"c\",\"session_id\":\"good\"}\n\
         {\"provider\":\"convai\",\"scope\":\"c\",\"session_id\":\"\"}\n\
         not json\n\
         {\"provider\":\"convai\",\"scope\":\"c\",\"session_id\":\"t\",\"created_at\":\"soon\"}\n\
         {\"provider\":\"convai\",\"scope\":\"c\",\"session_id\":\"good2\"}\n",
    );
    let o = s.forgetd(&["sessions", "import", f.to_str().unwrap()]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("3 bad lines; nothing was imported"), "{e}");
    for line in [
        "line 2: refused",
        "line 3: not a sessions object",
        "line 4: not a sessions object",
    ] {
        assert!(e.contains(line), "{line}: {e}");
    }
    assert!(!e.contains("line 1:") && !e.contains("line 5:"), "{e}");
    assert_eq!(
        stdout(&s.sqlite3("SELECT count(*) FROM sessions")).trim(),
        "0"
    );
}

/// Keys are bytes: a signing key file of 32 random bytes (not UTF-8) is accepted by the check,
/// as the signer reads it; one of the wrong length is refused where it is loaded.
#[test]
fn a_binary_signing_key_file_passes_the_secret_check() {
    let s = Scratch::new();
    let key = s.path("signing.key");
    std::fs::write(&key, [0xffu8; 32]).unwrap();
    let cfg = s.write(
        "c.toml",
        &format!("[audit]\nsigning_key = \"file:{}\"\n", key.display()),
    );
    let o = s.forgetd(&["--config", cfg.to_str().unwrap(), "check-config"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = s.forgetd(&["--config", cfg.to_str().unwrap(), "audit", "public-key"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(stdout(&o).trim().len(), 64, "{}", stdout(&o));
}

#[test]
fn rules_next_shows_the_runs_a_dst_change_moves() {
    let s = Scratch::new();
    for (name, schedule) in [("nightly", "30 2 * * *"), ("early", "30 1 * * *")] {
        let o = s.forgetd(&[
            "rules",
            "add",
            name,
            "--provider",
            "convai",
            "--scope",
            "c",
            "--max-age",
            "30d",
            "--schedule",
            schedule,
            "--timezone",
            "Europe/Berlin",
        ]);
        assert_eq!(code(&o), 0, "{}", stderr(&o));
    }
    let o = s.forgetd(&[
        "rules",
        "next",
        "nightly",
        "--from",
        "2026-03-27T12:00:00Z",
        "--count",
        "3",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let text = stdout(&o);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert!(
        lines[0].contains("rule nightly: \"30 2 * * *\" in Europe/Berlin"),
        "{text}"
    );
    assert!(
        lines[1].contains("2026-03-28T02:30:00+01:00") && !lines[1].contains("DST"),
        "{text}"
    );
    assert!(
        lines[2].contains("2026-03-29T03:00:00+02:00  (2026-03-29T01:00:00Z)  DST: ")
            && lines[2].contains("runs once, at the jump"),
        "{text}"
    );
    assert!(lines[3].contains("2026-03-30T02:30:00+02:00"), "{text}");
    // Every rule, as JSON: the 01:30 rule runs once on the night, at 01:30, not again at 03:00.
    let o = s.forgetd(&[
        "rules",
        "next",
        "--from",
        "2026-03-28T12:00:00Z",
        "--count",
        "2",
        "--json",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let early = v
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["rule"] == "early")
        .unwrap();
    let at: Vec<&str> = early["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["local"].as_str().unwrap())
        .collect();
    assert_eq!(
        at,
        ["2026-03-29T01:30:00+01:00", "2026-03-30T01:30:00+02:00"]
    );
    // An unknown rule is an error naming it.
    let o = s.forgetd(&["rules", "next", "nope"]);
    assert_ne!(code(&o), 0);
    assert!(stderr(&o).contains("nope"), "{}", stderr(&o));
}
