//! Logging setup: tracing-subscriber with an env filter (`FORGETD_LOG`, then `RUST_LOG`, default
//! `info` for the daemon and `warn` for short commands).
//!
//! Rules:
//! - Under systemd (`JOURNAL_STREAM` names the stream stderr is, and the journal socket exists)
//!   events go to journald natively (`tracing-journald`): each line carries its priority, so
//!   `journalctl -u forgetd -p warning` shows exactly the warnings and errors, and its fields
//!   (`REQUEST=`, `PROVIDER=`, ...) can be matched on.
//! - Elsewhere, text on stderr (colour only on a terminal), or `FORGETD_LOG_FORMAT=json`: one JSON
//!   object per line. `FORGETD_LOG_FORMAT=text` forces text, also under systemd.
//! - An invalid `FORGETD_LOG` or `FORGETD_LOG_FORMAT` is a configuration error that names the
//!   variable (exit 78), never a silent fallback that drops every line.
//! - Secrets never reach a log: they are `SecretString`s, whose Debug is redacted, and no code
//!   formats their exposed value.
//! - The scheduler library's own events are off unless a filter names `tokio_cron_scheduler`:
//!   forgetd uses it as a timer only, and it logs ERROR lines in normal operation ("Could not get
//!   job metadata" as one-shot jobs finish, "Error sending created job" at shutdown). A timer that
//!   really fails is said by forgetd's scheduler (`scheduler: the timer failed`).

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// A logging variable that cannot be used as it is.
#[derive(Debug, thiserror::Error)]
pub enum LogSetupError {
    #[error(
        "FORGETD_LOG={value:?} is not a log filter ({reason}); use a level (error, warn, info, debug, trace) or directives such as \"forgetd=debug\""
    )]
    Filter { value: String, reason: String },
    #[error("FORGETD_LOG_FORMAT={0:?} is not a log format; use \"text\" or \"json\"")]
    Format(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Text,
    Json,
    Journald,
}

const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

fn filter(default: &str) -> Result<EnvFilter, LogSetupError> {
    let asked = std::env::var("FORGETD_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_default();
    Ok(quiet_libraries(env_filter(default)?, &asked))
}

/// `filter` with the scheduler library's events off, unless `asked` (the operator's filter)
/// names it.
fn quiet_libraries(filter: EnvFilter, asked: &str) -> EnvFilter {
    if asked.contains("tokio_cron_scheduler") {
        filter
    } else {
        filter.add_directive(
            "tokio_cron_scheduler=off"
                .parse()
                .expect("a valid directive"),
        )
    }
}

fn env_filter(default: &str) -> Result<EnvFilter, LogSetupError> {
    match std::env::var("FORGETD_LOG") {
        // A bare word is a target to tracing ("verbose" = every event of a target named verbose,
        // which is none): one that is neither a level nor one of ours is a mistake, not a filter.
        Ok(value)
            if value.split(',').any(|d| {
                let d = d.trim();
                !d.is_empty()
                    && !d.contains('=')
                    && !LEVELS.iter().any(|l| d.eq_ignore_ascii_case(l))
                    && !d.starts_with("forgetd")
            }) =>
        {
            Err(LogSetupError::Filter {
                value,
                reason: "a bare word must be a level".into(),
            })
        }
        Ok(value) => EnvFilter::builder()
            .parse(&value)
            .map_err(|e| LogSetupError::Filter {
                reason: e.to_string(),
                value,
            }),
        Err(_) => Ok(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default))),
    }
}

/// Whether stderr is the stream systemd's `JOURNAL_STREAM` names ("device:inode").
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino())
}

fn format() -> Result<Format, LogSetupError> {
    match std::env::var("FORGETD_LOG_FORMAT") {
        Ok(v) if v.eq_ignore_ascii_case("json") => Ok(Format::Json),
        Ok(v) if v.eq_ignore_ascii_case("text") => Ok(Format::Text),
        Ok(v) => Err(LogSetupError::Format(v)),
        Err(_) if stderr_is_journal() => Ok(Format::Journald),
        Err(_) => Ok(Format::Text),
    }
}

fn install(default: &str) -> Result<(), LogSetupError> {
    let filter = filter(default)?;
    let mut format = format()?;
    use std::io::IsTerminal;
    let text = || {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .with_target(false)
    };
    let journald = match format {
        Format::Journald => match tracing_journald::layer() {
            Ok(layer) => Some(layer.with_syslog_identifier("forgetd".into())),
            // No journal socket (a container without journald): text, without timestamps, as
            // the stream's reader stamps lines itself.
            Err(_) => {
                format = Format::Text;
                None
            }
        },
        _ => None,
    };
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match format {
        Format::Json => registry
            .with(text().json().with_current_span(true))
            .try_init(),
        Format::Journald => registry.with(journald).try_init(),
        Format::Text if std::env::var_os("JOURNAL_STREAM").is_some() => registry
            .with(text().without_time().with_ansi(false))
            .try_init(),
        Format::Text => registry.with(text()).try_init(),
    };
    Ok(())
}

/// For short CLI commands: warnings and errors only unless asked. Call once, before anything logs.
pub fn init_cli() -> Result<(), LogSetupError> {
    install("warn")
}

/// For the daemon and the benchmarks.
pub fn init_daemon() -> Result<(), LogSetupError> {
    install("info")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Counts the events that get through, by whether their target is forgetd's.
    #[derive(Default, Clone)]
    struct Count(std::sync::Arc<(AtomicUsize, AtomicUsize)>);

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Count {
        fn on_event(
            &self,
            event: &tracing::Event<'_>,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            let slot = if event.metadata().target().starts_with("forgetd") {
                &self.0.0
            } else {
                &self.0.1
            };
            slot.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn through(filter: EnvFilter) -> (usize, usize) {
        let count = Count::default();
        let subscriber = tracing_subscriber::registry()
            .with(filter)
            .with(count.clone());
        tracing::subscriber::with_default(subscriber, || {
            // The library's lines, as 0.15 logs them in normal operation.
            tracing::error!(target: "tokio_cron_scheduler::scheduler", "Could not get job metadata");
            tracing::error!(target: "tokio_cron_scheduler::job::creator", "Error sending created job");
            tracing::error!(target: "forgetd::scheduler", "scheduler: the timer failed");
            tracing::warn!(target: "forgetd::resolve", "a listing failed");
        });
        (
            count.0.0.load(Ordering::Relaxed),
            count.0.1.load(Ordering::Relaxed),
        )
    }

    #[test]
    fn the_scheduler_librarys_lines_are_off_unless_asked_for_and_forgetds_stay() {
        assert_eq!(through(quiet_libraries(EnvFilter::new("info"), "")), (2, 0));
        assert_eq!(
            through(quiet_libraries(EnvFilter::new("trace"), "trace")),
            (2, 0)
        );
        let asked = "info,tokio_cron_scheduler=error";
        assert_eq!(
            through(quiet_libraries(EnvFilter::new(asked), asked)),
            (2, 2)
        );
        // Without the rule, the library's ERROR lines get through a plain "info".
        assert_eq!(through(EnvFilter::new("info")), (2, 2));
    }
}
