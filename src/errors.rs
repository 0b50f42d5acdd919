//! How an error is shown to a person (stderr, a log line): the error, then each cause on its own
//! line, skipping a cause whose text the message already carries, so nothing is said twice.
//! A leaf: the CLI and the daemon both use it, and it depends on neither.

/// The error and its causes on one line each, without repeating a cause already in the message.
pub fn render(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !out.contains(&c) {
            out.push_str(&format!("\n  caused by: {c}"));
        }
    }
    out
}
