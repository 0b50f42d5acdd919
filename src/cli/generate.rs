//! `forgetd generate DIR`: the manual pages and shell completions, made from the very clap
//! definitions the binary parses with, so they cannot drift from it. The Debian package and
//! `systemd/install.sh` run it at build/install time (as ripgrep's `--generate` does) rather than
//! shipping files that someone has to remember to regenerate.
//!
//! Layout of DIR: `man/forgetd.1` (the whole tool: exit status, environment, files) and one
//! `man/forgetd-<command>.1` per visible subcommand; `completions/forgetd.bash`, `_forgetd` (zsh)
//! and `forgetd.fish`.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use clap::CommandFactory;
use clap_complete::Shell;

use super::Cli;

/// Writes the pages and completions into `dir` (created if missing); returns the files written.
pub fn write_all(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let man = dir.join("man");
    let completions = dir.join("completions");
    for d in [&man, &completions] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let mut written = Vec::new();
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    written.push(top_page(&cmd, &man)?);
    for sub in visible(&cmd) {
        sub_pages(sub, &man, &mut written)?;
    }
    for (shell, name) in [
        (Shell::Bash, "forgetd.bash"),
        (Shell::Zsh, "_forgetd"),
        (Shell::Fish, "forgetd.fish"),
    ] {
        let path = completions.join(name);
        let mut out = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "forgetd", &mut out);
        std::fs::write(&path, out).with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

fn visible(cmd: &clap::Command) -> impl Iterator<Item = &clap::Command> {
    cmd.get_subcommands().filter(|s| !s.is_hide_set())
}

/// `forgetd-<command>.1` for a subcommand and, below it, its own subcommands.
fn sub_pages(cmd: &clap::Command, dir: &Path, written: &mut Vec<std::path::PathBuf>) -> Result<()> {
    for sub in visible(cmd) {
        sub_pages(sub, dir, written)?;
    }
    let page = clap_mangen::Man::new(cmd.clone()).source(source());
    let path = page
        .generate_to(dir)
        .with_context(|| format!("writing a manual page into {}", dir.display()))?;
    written.push(path);
    Ok(())
}

fn source() -> String {
    format!("forgetd {}", env!("CARGO_PKG_VERSION"))
}

/// forgetd(1): clap's sections, then what clap does not know: exit status, environment, files.
fn top_page(cmd: &clap::Command, dir: &Path) -> Result<std::path::PathBuf> {
    let page = clap_mangen::Man::new(cmd.clone()).source(source());
    let path = dir.join(page.get_filename());
    let mut out = Vec::new();
    page.render_title(&mut out)?;
    page.render_name_section(&mut out)?;
    page.render_synopsis_section(&mut out)?;
    page.render_description_section(&mut out)?;
    page.render_options_section(&mut out)?;
    page.render_subcommands_section(&mut out)?;
    out.write_all(TOP_PAGE_EXTRA.as_bytes())?;
    page.render_version_section(&mut out)?;
    let mut see_also: Vec<String> = visible(cmd)
        .map(|s| {
            format!(
                "\\fB{}\\fR(1)",
                s.get_display_name().unwrap_or(s.get_name())
            )
        })
        .collect();
    see_also.extend(
        ["systemctl", "journalctl", "sqlite3"]
            .iter()
            .map(|s| format!("\\fB{s}\\fR(1)")),
    );
    writeln!(out, ".SH \"SEE ALSO\"\n{}", see_also.join(", "))?;
    writeln!(
        out,
        "/usr/share/doc/forgetd/README.md: feeding forgetd, the audit trail, legal holds, running under systemd."
    )?;
    std::fs::write(&path, out).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

const TOP_PAGE_EXTRA: &str = r#".SH "EXIT STATUS"
.TP
\fB0\fR
Success.
.TP
\fB1\fR
A failure at run time, or data refused: an unknown request, rule or hold; a rule that exists
already; a bad line in an imported file; a broken audit chain; \fBrun \-\-once\fR leaving items dead
or a provider paused.
.TP
\fB2\fR
A usage error: an unknown flag, a missing argument, or a value that is not valid, whichever layer
finds it.
.TP
\fB75\fR
The database is busy, or another daemon holds its lock. Not restarted by the unit.
.TP
\fB78\fR
A configuration error, named with every problem at once. Not restarted by the unit.
.SH ENVIRONMENT
.TP
\fBFORGETD_CONFIG\fR
The configuration file, as \fB\-\-config\fR.
.TP
\fBFORGETD_LOG\fR
Log filter, e.g. \fBinfo\fR or \fBforgetd=debug\fR.
.TP
\fBFORGETD_LOG_FORMAT\fR
\fBtext\fR or \fBjson\fR. Under systemd, forgetd logs to the journal natively.
.TP
\fBCREDENTIALS_DIRECTORY\fR
Where \fBcredential:NAME\fR secrets are read from (set by systemd's LoadCredential=).
.TP
\fBSTATE_DIRECTORY\fR
Where the database lives by default under systemd (forgetd.db in it).
.SH FILES
.TP
\fI/etc/forgetd/forgetd.toml\fR
The configuration (root:forgetd 0640). The installed example refuses to run until edited.
.TP
\fI/etc/forgetd/credentials/\fR
Secrets: convai\-api\-key, iam\-password, audit\-key (root 0600), handed to the service by systemd.
.TP
\fI/var/lib/forgetd/forgetd.db\fR
The queue, inventory and audit trail (forgetd:forgetd 0660, directory 2770). Feeders in the
\fBforgetd\fR group write it with sqlite3. Back it up with \fBforgetd backup\fR, never by copying.
.TP
\fI/usr/share/doc/forgetd/config.example.toml\fR
Every configuration key, explained.
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_and_completions_cover_every_visible_command() {
        let dir = tempfile::tempdir().unwrap();
        let written = write_all(dir.path()).unwrap();
        let names: Vec<String> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        for page in [
            "forgetd.1",
            "forgetd-run.1",
            "forgetd-sessions-import.1",
            "forgetd-holds-add.1",
        ] {
            assert!(
                names.iter().any(|n| n == page),
                "{page} missing from {names:?}"
            );
        }
        assert!(
            !names.iter().any(|n| n.contains("bench-sweep")),
            "hidden commands get no page"
        );
        let top = std::fs::read_to_string(dir.path().join("man/forgetd.1")).unwrap();
        assert!(
            top.contains(".SH \"EXIT STATUS\"") && top.contains("\\fB78\\fR"),
            "{top}"
        );
        assert!(
            top.contains("forgetd\\-run\\fR(1)") || top.contains("forgetd-run\\fR(1)"),
            "{top}"
        );
        let bash = std::fs::read_to_string(dir.path().join("completions/forgetd.bash")).unwrap();
        assert!(
            bash.contains("check-config") && bash.contains("--created-at"),
            "{bash}"
        );
        let fish = std::fs::read_to_string(dir.path().join("completions/forgetd.fish")).unwrap();
        assert!(
            fish.contains("koosearch"),
            "provider values are completed: {fish}"
        );
    }
}
