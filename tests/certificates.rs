//! Certificates anyone can check: the signed JSON verifies offline with nothing but the file and
//! the published key, and fails on any edit or another key; the HTML certificate is one
//! self-contained page that a real browser (headless Chromium) renders and prints without a
//! console message. Chromium as in tests/web.rs (`FORGETD_TOOLS_REQUIRED=1` makes it required).

mod common;
use common::*;

use forgetd::clock::SystemClock;
use forgetd::simulator::{Faults, Simulator};

/// A finished request: two chats deleted at Convai, one held, a decoy of another person kept.
async fn finished_request() -> (Scratch, Simulator, String) {
    let s = Scratch::new();
    let sim = Simulator::start(std::sync::Arc::new(SystemClock), Faults::default(), 2)
        .await
        .unwrap();
    let cfg = sim_config(&s, &sim, &["app-1"], "");
    for id in ["cert-a", "cert-b", "cert-held"] {
        sim.add_convai_chat("char-1", id, 1_700_000_000);
        s.add_chat("convai", "char-1", id, "subj-cert-3d1");
    }
    sim.add_convai_chat("char-1", "decoy", 1_700_000_000);
    s.add_chat("convai", "char-1", "decoy", "subj-other-77a");
    let o = s.forgetd(&[
        "holds",
        "add",
        "--provider",
        "convai",
        "--scope",
        "char-1",
        "--id",
        "cert-held",
        "--reason",
        "litigation <case 7>",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(
        code(&s.forgetd(&["erase", "--subject", "subj-cert-3d1", "--ref", "DSR-9"])),
        0
    );
    let cfg = cfg.to_str().unwrap().to_string();
    let o = tokio::task::spawn_blocking({
        let (db, cfg) = (s.db(), cfg.clone());
        move || {
            std::process::Command::new(BIN)
                .args([
                    "--config",
                    &cfg,
                    "--db",
                    db.to_str().unwrap(),
                    "run",
                    "--once",
                ])
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    assert_eq!(
        sim.remaining(forgetd::model::ProviderKind::CONVAI),
        2,
        "held and decoy stay"
    );
    (s, sim, cfg)
}

fn verify_in(dir: &std::path::Path, file: &std::path::Path, key: &str) -> std::process::Output {
    std::process::Command::new(BIN)
        .args([
            "certificate",
            "verify",
            file.to_str().unwrap(),
            "--public-key",
            key,
        ])
        .current_dir(dir)
        .env_remove("FORGETD_CONFIG")
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_certificate_verifies_offline_and_fails_on_any_edit() {
    let (s, _sim, cfg) = finished_request().await;
    let o = s.forgetd(&[
        "--config",
        &cfg,
        "audit",
        "export",
        "--request",
        "1",
        "--format",
        "signed",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let signed = stdout(&o);
    let file = s.write("cert.json", &signed);
    let o = s.forgetd(&["--config", &cfg, "audit", "public-key"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let key = stdout(&o).trim().to_string();
    assert_eq!(key.len(), 64, "{key}");
    assert!(signed.contains(&key), "the envelope names its key");
    // The key was generated beside the database, 0600, and the same key signs every time.
    use std::os::unix::fs::PermissionsExt;
    let key_file = format!("{}.signing-key", s.db().display());
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(
        stdout(&s.forgetd(&["--config", &cfg, "audit", "public-key"])).trim(),
        key
    );

    // Offline: an empty directory, no config, no database; nothing gets created there.
    let elsewhere = tempfile::tempdir().unwrap();
    let o = verify_in(elsewhere.path(), &file, &key);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).contains("verifies: request 1, state complete"),
        "{}",
        stdout(&o)
    );
    assert_eq!(
        std::fs::read_dir(elsewhere.path()).unwrap().count(),
        0,
        "verify wrote nothing"
    );
    // The key may also be given as a file.
    let key_path = s.write("forgetd.pub", &format!("{key}\n"));
    assert_eq!(
        code(&verify_in(
            elsewhere.path(),
            &file,
            key_path.to_str().unwrap()
        )),
        0
    );

    // Any edit breaks it: a chat's ID, the state, a confirmation time, the ref.
    let v: serde_json::Value = serde_json::from_str(&signed).unwrap();
    let confirmed = v["certificate"]["deleted"]["convai"][0]["confirmed_at"]
        .as_i64()
        .unwrap();
    for (from, to) in [
        ("\"cert-a\"".to_string(), "\"cert-x\"".to_string()),
        ("\"complete\"".to_string(), "\"failed\"".to_string()),
        (confirmed.to_string(), (confirmed - 86_400).to_string()),
        ("\"DSR-9\"".to_string(), "\"DSR-8\"".to_string()),
    ] {
        assert!(signed.contains(&from), "{from} not in the certificate");
        let edited = s.write("edited.json", &signed.replacen(&from, &to, 1));
        let o = verify_in(elsewhere.path(), &edited, &key);
        assert_eq!(code(&o), 1, "{from} -> {to} still verifies");
        assert!(
            stderr(&o).contains("edited after signing"),
            "{}",
            stderr(&o)
        );
    }
    // Dropping a chat is an edit too.
    let mut fewer = v.clone();
    fewer["certificate"]["deleted"]["convai"]
        .as_array_mut()
        .unwrap()
        .pop();
    let edited = s.write("fewer.json", &serde_json::to_string(&fewer).unwrap());
    assert_eq!(code(&verify_in(elsewhere.path(), &edited, &key)), 1);
    // Another organisation's key does not vouch for it, and a file it signed is not ours.
    let other = Scratch::new();
    let other_key = stdout(&other.forgetd(&["audit", "public-key"]))
        .trim()
        .to_string();
    assert_ne!(other_key, key);
    let o = verify_in(elsewhere.path(), &file, &other_key);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("another key"), "{}", stderr(&o));
    // Not a certificate at all.
    let junk = s.write("junk.json", "{\"hello\": 1}");
    assert_eq!(code(&verify_in(elsewhere.path(), &junk, &key)), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_forced_out_of_a_broken_record_does_not_verify_as_good() {
    let (s, _sim, cfg) = finished_request().await;
    let key = stdout(&s.forgetd(&["--config", &cfg, "audit", "public-key"]))
        .trim()
        .to_string();
    // Someone with write access removes the append-only trigger: the record is no longer proof.
    assert_eq!(
        code(&s.sqlite3("DROP TRIGGER audit_log_is_append_only_no_update;")),
        0
    );
    let refused = s.forgetd(&[
        "--config",
        &cfg,
        "audit",
        "export",
        "--request",
        "1",
        "--format",
        "signed",
    ]);
    assert_eq!(code(&refused), 1, "{}", stderr(&refused));
    let o = s.forgetd(&[
        "--config",
        &cfg,
        "audit",
        "export",
        "--request",
        "1",
        "--format",
        "signed",
        "--force",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let file = s.write("broken.json", &stdout(&o));
    let elsewhere = tempfile::tempdir().unwrap();
    let o = verify_in(elsewhere.path(), &file, &key);
    assert_eq!(
        code(&o),
        1,
        "a BROKEN certificate verified as good: {}",
        stdout(&o)
    );
    assert!(
        stderr(&o).contains("says its record is BROKEN"),
        "{}",
        stderr(&o)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_html_certificate_is_self_contained_and_renders_and_prints_in_a_browser() {
    let (s, _sim, cfg) = finished_request().await;
    let o = s.forgetd(&[
        "--config",
        &cfg,
        "audit",
        "export",
        "--request",
        "1",
        "--format",
        "html",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let page = stdout(&o);
    let key = stdout(&s.forgetd(&["--config", &cfg, "audit", "public-key"]))
        .trim()
        .to_string();
    for part in [
        "Certificate of erasure",
        "DSR-9",
        "cert-a",
        "cert-b",
        "cert-held",
        "Read-back verification",
        "Audit-chain anchor",
        &key,
    ] {
        assert!(page.contains(part), "{part} missing");
    }
    assert!(
        page.contains("litigation &lt;case 7&gt;"),
        "the hold's reason, escaped"
    );
    assert!(
        !page.contains("subj-cert-3d1") && !page.contains("decoy"),
        "no subject, no decoy"
    );
    for outside in [
        "<script", "src=", "href=", "http://", "https://", "@import", "url(",
    ] {
        assert!(!page.contains(outside), "not self-contained: {outside}");
    }
    let file = s.write("certificate.html", &page);
    let Some(chromium) = tool("chromium") else {
        return;
    };
    let artifacts = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let png = artifacts.join("certificate.png");
    let pdf = artifacts.join("certificate.pdf");
    let url = format!("file://{}", file.display());
    for out in [
        format!("--screenshot={}", png.display()),
        format!("--print-to-pdf={}", pdf.display()),
    ] {
        let o = std::process::Command::new(&chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                "--window-size=1000,1400",
                "--enable-logging=stderr",
                "--v=0",
                "--no-pdf-header-footer",
                &out,
                &url,
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        let console: Vec<String> = stderr(&o)
            .lines()
            .filter(|l| l.contains(":CONSOLE"))
            .map(str::to_string)
            .collect();
        assert!(console.is_empty(), "console: {console:?}");
    }
    assert!(
        std::fs::metadata(&png).unwrap().len() > 10_000,
        "an empty screenshot"
    );
    let pdf_bytes = std::fs::read(&pdf).unwrap();
    assert!(
        pdf_bytes.starts_with(b"%PDF") && pdf_bytes.len() > 5_000,
        "not a PDF"
    );
}
