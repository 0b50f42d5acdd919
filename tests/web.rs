//! The `[http]` listener seen from outside, against the real daemon: the status page in a real
//! browser (headless Chromium) while a drain runs, the listener under a crowd of idle
//! connections, and the deploy files (Prometheus rules, Grafana dashboard) checked against what
//! the daemon exports and by `promtool`.
//!
//! Chromium and promtool come from Debian's `chromium` and `prometheus` packages (`.ci/run`
//! installs them). Where one is missing its test says SKIP, unless `FORGETD_TOOLS_REQUIRED=1`
//! (as in `.ci/run`), which turns the skip into a failure. The browser's screenshot is kept in
//! `target/test-artifacts/status-page.png`.

mod common;
use common::*;

use std::time::Duration;

use forgetd::clock::SystemClock;
use forgetd::model::ProviderKind;
use forgetd::simulator::{Faults, Simulator};

async fn get(url: &str) -> Option<(u16, String)> {
    let r = reqwest::get(url).await.ok()?;
    let status = r.status().as_u16();
    Some((status, r.text().await.ok()?))
}

/// The number an element with `data-count="KEY"` shows.
fn count_in(dom: &str, key: &str) -> u64 {
    let marker = format!("data-count=\"{key}\">");
    let at = dom
        .find(&marker)
        .unwrap_or_else(|| panic!("no {marker} in the page:\n{dom}"));
    let rest = &dom[at + marker.len()..];
    rest[..rest.find('<').unwrap()]
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{key}: {e}"))
}

fn status_json(s: &Scratch, cfg: &str) -> serde_json::Value {
    let o = s.forgetd(&["--config", cfg, "status", "--json"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    serde_json::from_str(&stdout(&o)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_in_a_browser_matches_status_marks_overdue_and_names_no_subject() {
    let Some(chromium) = tool("chromium") else {
        return;
    };
    let s = Scratch::new();
    // Convai refuses the key, so it pauses and its counts stand still; KooSearch drains slowly,
    // one chat per call, while the browser looks.
    let sim = Simulator::start(
        std::sync::Arc::new(SystemClock),
        Faults {
            latency: Duration::from_millis(250),
            auth_fail: [ProviderKind::CONVAI].into(),
            ..Faults::default()
        },
        3,
    )
    .await
    .unwrap();
    let port = free_port();
    // A rule that matches nothing (the chats are three years old, it keeps ten).
    let rule = "[[rules]]\nname = \"keep-10y\"\nprovider = \"koosearch\"\nscope = \"app-1\"\nmax_age = \"3650d\"\nschedule = \"0 3 * * *\"\ntimezone = \"Europe/Berlin\"\n";
    let cfg = sim_config(
        &s,
        &sim,
        &["app-1"],
        &format!("[http]\nlisten = \"127.0.0.1:{port}\"\n\n{rule}"),
    );
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "[providers.koosearch]\n",
        "[providers.koosearch]\nbatch_size = 1\nconcurrency = 1\n",
    );
    std::fs::write(&cfg, text).unwrap();
    let cfg = cfg.to_str().unwrap().to_string();
    // Subjects no page may show; each has chats.
    let (late, soon, later, held) = (
        "subj-late-7f3a1",
        "subj-soon-2b9c4",
        "subj-later-9d0e2",
        "subj-held-5c7f8",
    );
    for i in 0..24 {
        let id = format!("k{i}");
        sim.add_koosearch_chat("app-1", &id, Some(late), None, 1_700_000_000_000);
        s.add_chat("koosearch", "app-1", &id, late);
    }
    for (subject, id) in [
        (late, "c-late"),
        (soon, "c-soon"),
        (later, "c-later"),
        (held, "c-held"),
    ] {
        sim.add_convai_chat("char-1", id, 1_700_000_000);
        s.add_chat("convai", "char-1", id, subject);
    }
    let o = s.forgetd(&["holds", "add", "--subject", held, "--reason", "case 12"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    // A feeder's ref is text, never markup.
    sim.add_convai_chat("char-1", "c-markup", 1_700_000_000);
    s.add_chat("convai", "char-1", "c-markup", "subj-markup-8a8");
    let markup = "<img src=x onerror=alert(1)>";
    assert_eq!(
        code(&s.forgetd(&["erase", "--subject", "subj-markup-8a8", "--ref", markup])),
        0
    );
    for (subject, r) in [
        (late, "R-late"),
        (soon, "R-soon"),
        (later, "R-later"),
        (held, "R-held"),
    ] {
        assert_eq!(
            code(&s.forgetd(&["erase", "--subject", subject, "--ref", r])),
            0
        );
    }
    let o = s.sqlite3(
        "UPDATE erasure_requests SET due_at = unixepoch() - 3600 WHERE external_ref = 'R-late';
         UPDATE erasure_requests SET due_at = unixepoch() + 3 * 86400 WHERE external_ref = 'R-soon';",
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let mut daemon = tokio::process::Command::new(BIN)
        .args(["--config", &cfg, "run"])
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    // The drain is under way: Convai paused, KooSearch part-deleted.
    // Every request resolved (Convai's five chats queued: four pending, one held), so Convai's
    // counts no longer move.
    eventually(
        "convai paused, every request resolved, koosearch draining",
        || {
            let st = status_json(&s, &cfg);
            let paused = st["paused_providers"]
                .as_array()
                .is_some_and(|a| !a.is_empty());
            let resolved = st["requests"]["received"].as_u64().unwrap_or(0) == 0;
            let convai = &st["items"]["convai"];
            let queued =
                convai["pending"].as_u64() == Some(4) && convai["held"].as_u64() == Some(1);
            let deleted = st["items"]["koosearch"]["deleted"].as_u64().unwrap_or(0);
            paused && resolved && queued && deleted >= 1
        },
    )
    .await;
    wait_for("the page", || async {
        get(&format!("{base}/")).await.filter(|(c, _)| *c == 200)
    })
    .await;

    // The browser: loads the page, lets its script run for 11 s of virtual time (two refreshes).
    let o = tokio::process::Command::new(&chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=11000",
            "--dump-dom",
            &format!("{base}/"),
        ])
        .output()
        .await
        .unwrap();
    let dom = String::from_utf8_lossy(&o.stdout).to_string();
    let after = status_json(&s, &cfg);
    let console: Vec<&str> = std::str::from_utf8(&o.stderr)
        .unwrap_or("")
        .lines()
        .filter(|l| l.contains(":CONSOLE"))
        .collect();
    assert!(
        console.is_empty(),
        "the page wrote to the console: {console:?}"
    );
    assert!(dom.contains("<main id=\"main\">"), "{dom}");

    // The script refreshed the body in place (no reload: the counter lives across refreshes).
    let refreshes: u64 = dom
        .split("data-refreshes=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(refreshes >= 1, "the page never refreshed itself: {dom}");

    // Numbers on the page against `status --json`.
    assert_eq!(
        count_in(&dom, "overdue"),
        after["overdue"].as_array().unwrap().len() as u64
    );
    assert_eq!(count_in(&dom, "overdue"), 1);
    assert_eq!(count_in(&dom, "due-soon"), 1);
    assert_eq!(count_in(&dom, "holds"), 1);
    for state in ["pending", "in_flight", "deleted", "held", "dead"] {
        // Convai stands still (paused): equal. KooSearch moves: the same total, and no more
        // deleted on the page than status saw after it.
        assert_eq!(
            count_in(&dom, &format!("convai:{state}")),
            after["items"]["convai"][state].as_u64().unwrap_or(0),
            "convai {state}"
        );
    }
    let total = |f: &dyn Fn(&str) -> u64| -> u64 {
        ["pending", "in_flight", "deleted", "held", "dead"]
            .iter()
            .map(|s| f(s))
            .sum()
    };
    assert_eq!(total(&|st| count_in(&dom, &format!("koosearch:{st}"))), 24);
    assert_eq!(
        total(&|st| after["items"]["koosearch"][st].as_u64().unwrap_or(0)),
        24
    );
    assert!(
        count_in(&dom, "koosearch:deleted")
            <= after["items"]["koosearch"]["deleted"].as_u64().unwrap()
    );
    assert!(count_in(&dom, "koosearch:deleted") >= 1);

    // Overdue in red, due soon in amber, later neither.
    let row = |r: &str| {
        let at = dom
            .find(&format!("<td>{r}</td>"))
            .unwrap_or_else(|| panic!("no row {r}"));
        let start = dom[..at].rfind("<tr").unwrap();
        dom[start..at].to_string()
    };
    assert!(
        row("R-late").contains("class=\"overdue\""),
        "{}",
        row("R-late")
    );
    assert!(
        row("R-soon").contains("class=\"soon\""),
        "{}",
        row("R-soon")
    );
    assert!(!row("R-later").contains("overdue") && !row("R-later").contains("soon"));
    assert!(
        dom.contains("data-gate=\"paused\""),
        "convai's pause is shown"
    );
    assert!(
        dom.contains("Convai refused the API key"),
        "with its reason"
    );
    assert!(
        !dom.contains("<img") && dom.contains("&lt;img src=x"),
        "the ref is escaped"
    );
    let rule_row = &dom[dom
        .find("data-rule=\"keep-10y\"")
        .expect("the rule is listed")..];
    let rule_row = &rule_row[..rule_row.find("</tr>").unwrap()];
    assert!(
        rule_row.contains("0 3 * * * (Europe/Berlin)") && rule_row.contains("(in "),
        "next run: {rule_row}"
    );

    // No personal data.
    for subject in [late, soon, later, held] {
        assert!(!dom.contains(subject), "{subject} is on the page");
    }
    let json = get(&format!("{base}/status.json")).await.unwrap().1;
    for subject in [late, soon, later, held] {
        assert!(!json.contains(subject), "{subject} is in /status.json");
    }

    // The screenshot, kept as an artifact.
    let artifacts = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("status-page.png");
    let o = tokio::process::Command::new(&chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1280,1500",
            "--virtual-time-budget=2000",
            &format!("--screenshot={}", shot.display()),
            &format!("{base}/"),
        ])
        .output()
        .await
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        std::fs::metadata(&shot).unwrap().len() > 10_000,
        "an empty screenshot"
    );
    daemon.start_kill().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_cannot_take_the_descriptors_provider_calls_need() {
    let s = Scratch::new();
    let sim = Simulator::start(std::sync::Arc::new(SystemClock), Faults::default(), 4)
        .await
        .unwrap();
    let port = free_port();
    let cfg = sim_config(
        &s,
        &sim,
        &["app-1"],
        &format!("[http]\nlisten = \"127.0.0.1:{port}\"\n"),
    );
    // Few descriptors, as a crowded host has: fewer than the idle connections about to arrive.
    let mut daemon = tokio::process::Command::new("prlimit")
        .args([
            "--nofile=200:200",
            "--",
            BIN,
            "--config",
            cfg.to_str().unwrap(),
            "run",
        ])
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("prlimit (util-linux)");
    let pid = daemon.id().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    wait_for("healthz", || async {
        get(&format!("{base}/healthz"))
            .await
            .filter(|(c, _)| *c == 200)
    })
    .await;
    // 300 clients that connect and say nothing.
    let idle: Vec<std::net::TcpStream> = (0..300)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    assert!(
        fds < 64 + 60,
        "the daemon holds {fds} descriptors: the idle connections got in past the limit"
    );
    // And /healthz answers while they are all still open, though it queued behind 300 silent
    // clients: within the 5 s every one of them may take to send a head. (Before silent
    // connections made room, the checker waited out their header timeouts and timed out.)
    let started = std::time::Instant::now();
    let health = tokio::time::timeout(Duration::from_secs(4), get(&format!("{base}/healthz")))
        .await
        .expect("/healthz starved by silent connections");
    assert_eq!(health.map(|(c, _)| c), Some(200));
    eprintln!(
        "healthz behind 300 silent connections: {:?}",
        started.elapsed()
    );
    // Provider calls still get their sockets: a request completes meanwhile.
    for i in 0..5 {
        let id = format!("i{i}");
        sim.add_convai_chat("char-1", &id, 1_700_000_000);
        s.add_chat("convai", "char-1", &id, "subj-idle-4e1");
    }
    sim.add_convai_chat("char-1", "decoy", 1_700_000_000);
    s.add_chat("convai", "char-1", "decoy", "subj-other-1a2");
    assert_eq!(
        code(&s.forgetd(&["erase", "--subject", "subj-idle-4e1", "--ref", "R1"])),
        0
    );
    eventually("R1 complete while 300 idle connections are open", || {
        stdout(&s.sqlite3("SELECT state FROM erasure_requests WHERE external_ref = 'R1'")).trim()
            == "complete"
    })
    .await;
    assert_eq!(sim.remaining(ProviderKind::CONVAI), 1, "the decoy stays");
    // The idle ones are shed by the header timeout; the page answers again.
    drop(idle);
    let (code_, body) = wait_for("healthz after the crowd", || async {
        get(&format!("{base}/healthz")).await
    })
    .await;
    assert_eq!((code_, body.as_str()), (200, "ok\n"));
    daemon.start_kill().unwrap();
}

/// Every `forgetd_*` name in `text`.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("forgetd_") {
        let start = i + at;
        let before_ok =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase()
                || bytes[end].is_ascii_digit()
                || bytes[end] == b'_')
        {
            end += 1;
        }
        if before_ok {
            names.insert(text[start..end].to_string());
        }
        i = end;
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_rules_and_dashboard_name_only_metrics_the_daemon_exports() {
    let s = Scratch::new();
    let port = free_port();
    let cfg = unreachable_convai_config(&s, &format!("[http]\nlisten = \"127.0.0.1:{port}\"\n"));
    let mut daemon = tokio::process::Command::new(BIN)
        .args([
            "--config",
            cfg.to_str().unwrap(),
            "--db",
            s.db().to_str().unwrap(),
            "run",
        ])
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let exported = wait_for("/metrics", || async {
        get(&format!("http://127.0.0.1:{port}/metrics"))
            .await
            .filter(|(c, _)| *c == 200)
    })
    .await
    .1;
    daemon.start_kill().unwrap();
    let series: std::collections::BTreeSet<String> = exported
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect();
    let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let rules = std::fs::read_to_string(deploy.join("prometheus/forgetd.rules.yml")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(deploy.join("grafana/forgetd.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    let mut exprs = String::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        assert!(
            panel["title"].is_string() && panel["gridPos"].is_object(),
            "{panel}"
        );
        for t in panel["targets"].as_array().expect("targets") {
            exprs.push_str(t["expr"].as_str().expect("expr"));
            exprs.push('\n');
        }
    }
    for q in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(query) = q["query"].as_str() {
            exprs.push_str(query);
            exprs.push('\n');
        }
    }
    for (what, text, at_least) in [
        ("the alert rules", &rules, 5),
        ("the dashboard", &exprs, 14),
    ] {
        let named = metric_names(text);
        assert!(
            named.len() >= at_least,
            "{what}: only {named:?} found; the scan is broken"
        );
        let missing: Vec<&String> = named.iter().filter(|n| !series.contains(*n)).collect();
        assert!(
            missing.is_empty(),
            "{what} name metrics the daemon does not export: {missing:?}\n{exported}"
        );
    }
    // The scan itself can fail: a name the daemon does not export is caught.
    assert!(!series.contains("forgetd_resurrected_total"));

    let Some(promtool) = tool("promtool") else {
        return;
    };
    let o = std::process::Command::new(&promtool)
        .args(["check", "rules", "forgetd.rules.yml"])
        .current_dir(deploy.join("prometheus"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let o = std::process::Command::new(&promtool)
        .args(["test", "rules", "forgetd.rules.test.yml"])
        .current_dir(deploy.join("prometheus"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
}
