//! TLS to PostgreSQL by libpq's conventions, against a real server of its own: a throwaway
//! cluster on loopback TCP that takes only TLS (`hostnossl ... reject`), with a certificate for
//! `localhost` signed by a CA made here.
//! - `verify-full` with the CA connects; the same URL with `sslmode=disable` is turned away by the
//!   server (so the first really used TLS).
//! - Another CA is refused, and so is a certificate that does not name the host (`127.0.0.1`),
//!   while `verify-ca` accepts that one (the chain, not the name).
//!
//! Runs where the PostgreSQL tests run (`FORGETD_TEST_PG` set; SKIP otherwise); needs Debian's
//! postgresql 15, openssl and root (the cluster runs as user postgres).

mod common;
use common::*;

use std::path::Path;
use std::process::Command;

fn run(cmd: &mut Command) {
    let o = cmd.output().unwrap();
    assert!(
        o.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A CA and a certificate for `localhost` it signed, in `dir`; returns the CA's file.
fn certificates(dir: &Path, name: &str) -> std::path::PathBuf {
    let p = |f: &str| dir.join(format!("{name}-{f}"));
    run(Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
        ])
        .arg(format!("/CN={name} test CA"))
        .arg("-keyout")
        .arg(p("ca.key"))
        .arg("-out")
        .arg(p("ca.pem")));
    run(Command::new("openssl")
        .args([
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
        ])
        .arg("-keyout")
        .arg(p("server.key"))
        .arg("-out")
        .arg(p("server.csr")));
    std::fs::write(p("ext"), "subjectAltName=DNS:localhost\n").unwrap();
    run(Command::new("openssl")
        .args(["x509", "-req", "-days", "2", "-CAcreateserial"])
        .arg("-in")
        .arg(p("server.csr"))
        .arg("-CA")
        .arg(p("ca.pem"))
        .arg("-CAkey")
        .arg(p("ca.key"))
        .arg("-extfile")
        .arg(p("ext"))
        .arg("-out")
        .arg(p("server.pem")));
    p("ca.pem")
}

struct Cluster {
    data: std::path::PathBuf,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args([
                "-u",
                "postgres",
                "--",
                "/usr/lib/postgresql/15/bin/pg_ctl",
                "-D",
            ])
            .arg(&self.data)
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

#[test]
fn tls_to_postgresql_verifies_the_server_as_sslmode_asks() {
    if pg::server().is_none() {
        return;
    }
    let s = Scratch {
        dir: tempfile::tempdir().unwrap(),
        pg: None,
    };
    let dir = s.dir.path();
    let ca = certificates(dir, "good");
    let other_ca = certificates(dir, "other");
    let data = dir.join("data");
    std::fs::set_permissions(
        dir.join("good-server.key"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    run(Command::new("chown").arg("-R").arg("postgres").arg(dir));
    run(Command::new("runuser")
        .args([
            "-u",
            "postgres",
            "--",
            "/usr/lib/postgresql/15/bin/initdb",
            "-U",
            "postgres",
            "-A",
            "trust",
            "--no-sync",
            "-D",
        ])
        .arg(&data));
    std::fs::write(
        data.join("pg_hba.conf"),
        "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n",
    )
    .unwrap();
    let port = free_port();
    let cluster = Cluster { data: data.clone() };
    run(Command::new("runuser")
        .args(["-u", "postgres", "--", "/usr/lib/postgresql/15/bin/pg_ctl", "-D"])
        .arg(&data)
        .arg("-l")
        .arg(dir.join("log"))
        .arg("-w")
        .arg("-o")
        .arg(format!(
            "-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={} -c fsync=off -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
            dir.display(),
            dir.join("good-server.pem").display(),
            dir.join("good-server.key").display()
        ))
        .arg("start"));
    let status = |url: String| {
        Command::new(BIN)
            .arg("--db")
            .arg(url)
            .arg("status")
            .current_dir(dir)
            .output()
            .unwrap()
    };
    let at =
        |host: &str, query: &str| format!("postgresql://postgres@{host}:{port}/postgres?{query}");
    let o = status(at(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={}", ca.display()),
    ));
    assert_eq!(code(&o), 0, "verify-full with the CA: {}", stderr(&o));
    let o = status(at("localhost", "sslmode=disable"));
    assert_ne!(code(&o), 0, "the server takes only TLS");
    assert!(
        stderr(&o).contains("no encryption") || stderr(&o).contains("rejects"),
        "{}",
        stderr(&o)
    );
    let o = status(at(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={}", other_ca.display()),
    ));
    assert_ne!(code(&o), 0, "another CA's server is refused");
    assert!(
        stderr(&o).to_lowercase().contains("certificate"),
        "{}",
        stderr(&o)
    );
    let o = status(at(
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={}", ca.display()),
    ));
    assert_ne!(
        code(&o),
        0,
        "a certificate for localhost does not name 127.0.0.1"
    );
    let o = status(at(
        "127.0.0.1",
        &format!("sslmode=verify-ca&sslrootcert={}", ca.display()),
    ));
    assert_eq!(
        code(&o),
        0,
        "verify-ca checks the chain, not the name: {}",
        stderr(&o)
    );
    let o = status(at("localhost", "sslmode=prefer"));
    assert_ne!(code(&o), 0);
    assert!(
        stderr(&o).contains("falls back to plain text"),
        "{}",
        stderr(&o)
    );
    drop(cluster);
}
