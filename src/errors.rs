//! How an error is shown to a person (stderr, a log line): the error, then each cause on its own
//! line, skipping a cause whose text the message already carries, so nothing is said twice, and
//! SQLite's bare result codes under its messages.
//! A leaf: the CLI and the daemon both use it, and it depends on neither.

/// The error and its causes on one line each, without repeating a cause already in the message.
pub fn render(e: &anyhow::Error) -> String {
    render_error(e.as_ref())
}

/// [`render`] for an error that is not in an [`anyhow::Error`] (one kept in an `Arc`).
pub fn render_error(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        next = cause.source();
        // SQLite's bare result code ("Error code 275: constraint failed") sits under the message
        // SQLite gave with it, which is already shown: it adds a number and nothing to act on.
        if cause.is::<rusqlite::ffi::Error>() {
            continue;
        }
        let c = cause.to_string();
        if !out.contains(&c) {
            out.push_str(&format!("\n  caused by: {c}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sqlite_result_code_under_its_message_is_not_printed() {
        let db = rusqlite::Connection::open_in_memory().unwrap();
        db.execute_batch("CREATE TABLE t (x INTEGER CONSTRAINT x_must_be_positive CHECK (x > 0))")
            .unwrap();
        let e = db.execute("INSERT INTO t VALUES (-1)", []).unwrap_err();
        let e = anyhow::Error::new(e).context("refused");
        let text = render(&e);
        assert!(text.contains("x_must_be_positive"), "{text}");
        assert!(!text.contains("Error code"), "{text}");
    }
}
