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
