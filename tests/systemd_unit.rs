//! The shipped unit: `systemd-analyze verify` clean and `systemd-analyze security` exposure at
//! most 2.0. (The security command exits 0 at any exposure, so the figure is parsed.)

mod common;
use common::*;

fn unit_for_built_binary(s: &Scratch) -> std::path::PathBuf {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/forgetd.service"
    ))
    .unwrap();
    // verify needs the ExecStart binary to exist: point a copy at the one cargo built
    s.write("forgetd.service", &unit.replace("/usr/bin/forgetd", BIN))
}

#[test]
fn unit_verifies_clean() {
    let s = Scratch::new();
    let unit = unit_for_built_binary(&s);
    let o = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("systemd-analyze (.ci/run installs systemd)");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let noise: Vec<String> = stderr(&o)
        .lines()
        .chain(stdout(&o).lines())
        .map(str::to_string)
        .collect();
    assert!(noise.is_empty(), "verify complained: {noise:?}");
}

#[test]
fn unit_exposure_is_2_or_lower() {
    let s = Scratch::new();
    let unit = unit_for_built_binary(&s);
    let o = std::process::Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze");
    let out = stdout(&o);
    let line = out
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no exposure line: {out}{}", stderr(&o)));
    let figure: f64 = line
        .split(':')
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(figure <= 2.0, "exposure {figure} > 2.0: {line}");
    // still able to reach the providers over IPv4 and IPv6
    let unit_text = std::fs::read_to_string(&unit).unwrap();
    assert!(unit_text.contains("RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX"));
    assert!(!unit_text.contains("PrivateNetwork=yes"));
}
