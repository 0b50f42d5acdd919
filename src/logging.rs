//! Logging setup: tracing-subscriber with an env filter (`FORGETD_LOG`, then `RUST_LOG`, default
//! `info`), to stderr.
//!
//! Text for terminals; under journald (`JOURNAL_STREAM` set by systemd) the text has no timestamp,
//! since the journal stamps each line itself. `FORGETD_LOG_FORMAT=json` gives one JSON object per
//! line. Secrets never reach a log: they are `SecretString`s, whose Debug is redacted, and no code
//! formats their exposed value.

use tracing_subscriber::EnvFilter;

fn filter(default: &str) -> EnvFilter {
    EnvFilter::try_from_env("FORGETD_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new(default))
}

fn install(default: &str) {
    let json = std::env::var("FORGETD_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter(default))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    let _ = if json {
        builder.json().with_current_span(true).try_init()
    } else if journald {
        builder.without_time().with_ansi(false).try_init()
    } else {
        builder.try_init()
    };
}

/// For short CLI commands: warnings and errors only unless asked. Call once, before anything logs.
pub fn init_cli() {
    install("warn");
}

/// For the daemon and the benchmarks.
pub fn init_daemon() {
    install("info");
}
