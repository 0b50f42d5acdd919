//! `forgetd bench`: throughput against the providers' limit, CPU per deleted ID, peak memory with
//! a million items queued, idle CPU, and the retention sweep over a large inventory.
//!
//! Method: the simulator runs in this process; the daemon under test is a *child process*
//! (`forgetd run --once`, or `run` for the idle figure), so its CPU time and peak RSS come from
//! `wait4`'s rusage for that child alone and the simulator's work is not counted. The
//! theoretical limit of a scenario is concurrency x batch size / provider latency: the rate at
//! which a client that never waits on anything but the provider could delete.
//! Results and the commands that produced them: docs/BENCHMARKS.md.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::clock::SystemClock;
use crate::simulator::{self, Faults, Simulator};
use crate::store::Store;

pub struct BenchOptions {
    pub quick: bool,
    /// A PostgreSQL server where the bench may create and drop databases (a libpq connection
    /// string): the throughput rows on PostgreSQL, with one and with three instances.
    pub postgres: Option<String>,
    pub retention: bool,
    pub politeness: bool,
    pub sweep_sessions: u64,
    pub sweep_expired: u64,
    /// Standing legal holds that cover none of the queued chats: every claim and every send then
    /// runs the hold rule in full (0: the rule's no-hold fast path).
    pub holds: u64,
}

/// What `wait4` reports for one child.
#[derive(Debug, Clone, Copy, Default)]
pub struct ChildUsage {
    pub wall: Duration,
    pub cpu: Duration,
    pub max_rss_kib: u64,
    pub exit: i32,
}

/// Runs a child to completion and reads its own resource usage.
fn measure(mut cmd: std::process::Command) -> Result<ChildUsage> {
    let started = Instant::now();
    let child = cmd.spawn().context("spawning the daemon under test")?;
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to overwrite.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our own child, not yet waited for; both pointers are valid for the call.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall = started.elapsed();
    std::mem::forget(child); // already reaped by wait4
    if r != pid {
        bail!("wait4 failed: {}", std::io::Error::last_os_error());
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    let exit = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    Ok(ChildUsage {
        wall,
        cpu: tv(usage.ru_utime) + tv(usage.ru_stime),
        max_rss_kib: usage.ru_maxrss as u64,
        exit,
    })
}

fn exe() -> Result<PathBuf> {
    std::env::current_exe().context("finding the forgetd binary")
}

fn write_config(dir: &Path, sim: &Simulator, concurrency: usize, batch: usize) -> Result<PathBuf> {
    std::fs::write(dir.join("convai.key"), simulator::CONVAI_KEY)?;
    let text = format!(
        "[database]\npath = \"{db}\"\n[retry]\nbase_delay = \"10ms\"\nmax_delay = \"1s\"\n\
         [providers.convai]\nbase_url = \"{url}\"\napi_key = \"file:{key}\"\nbatch_size = {batch}\nconcurrency = {concurrency}\ntimeout = \"30s\"\n",
        db = dir.join("forgetd.db").display(),
        url = sim.convai_url,
        key = dir.join("convai.key").display(),
    );
    let path = dir.join("forgetd.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

/// Queues `n` pending items spread over 10 characters, straight into the database.
fn queue_items(db: &Path, n: u64) -> Result<()> {
    let mut store = Store::open(db)?;
    store.queue_synthetic_items(n)?;
    Ok(())
}

/// CPU time this process (the simulator's side) has used so far.
fn own_cpu() -> Duration {
    // SAFETY: an all-zero rusage is valid for getrusage to overwrite.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer, RUSAGE_SELF.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(u.ru_utime) + tv(u.ru_stime)
}

struct Row {
    sim_cpu: Duration,
    concurrency: usize,
    batch: usize,
    latency_ms: u64,
    items: u64,
    usage: ChildUsage,
}

impl Row {
    fn rate(&self) -> f64 {
        self.items as f64 / self.usage.wall.as_secs_f64()
    }
    fn limit(&self) -> Option<f64> {
        (self.latency_ms > 0)
            .then(|| (self.concurrency * self.batch) as f64 / (self.latency_ms as f64 / 1000.0))
    }
}

/// `n` holds that cover nothing queued: half on people with no chats, half on chats not queued.
fn place_holds(db: &Path, n: u64) -> Result<()> {
    use crate::store::holds::HoldTarget;
    let mut store = Store::open(db)?;
    for i in 0..n {
        let target = if i % 2 == 0 {
            HoldTarget::Subject(format!("bench-person-{i}"))
        } else {
            HoldTarget::Chat(crate::model::ChatKey::new(
                crate::model::ProviderKind::CONVAI,
                "char-0",
                &format!("held-{i}"),
            ))
        };
        store.add_hold(&target, "bench", 0)?;
    }
    Ok(())
}

async fn throughput(
    concurrency: usize,
    batch: usize,
    latency_ms: u64,
    items: u64,
    holds: u64,
) -> Result<Row> {
    let dir = tempfile::tempdir()?;
    let faults = Faults {
        latency: Duration::from_millis(latency_ms),
        ..Faults::default()
    };
    let sim = Simulator::start(Arc::new(SystemClock), faults, 1).await?;
    sim.set_record_ids(false);
    let cfg = write_config(dir.path(), &sim, concurrency, batch)?;
    queue_items(&dir.path().join("forgetd.db"), items)?;
    place_holds(&dir.path().join("forgetd.db"), holds)?;
    let mut cmd = std::process::Command::new(exe()?);
    cmd.args(["--config"]).arg(&cfg).args(["run", "--once"]);
    cmd.env("FORGETD_LOG", "warn")
        .stdout(std::process::Stdio::null());
    let sim_before = own_cpu();
    let usage = tokio::task::spawn_blocking(move || measure(cmd)).await??;
    let sim_cpu = own_cpu().saturating_sub(sim_before);
    if usage.exit != 0 {
        bail!(
            "the daemon exited {} in scenario ({concurrency}, {batch}, {latency_ms} ms)",
            usage.exit
        );
    }
    let deleted: u64 = Store::open(&dir.path().join("forgetd.db"))?
        .count_items(crate::store::queue::ItemState::Deleted)?;
    if deleted != items {
        bail!("only {deleted} of {items} items were deleted");
    }
    Ok(Row {
        sim_cpu,
        concurrency,
        batch,
        latency_ms,
        items,
        usage,
    })
}

/// One run against a server-side limit forgetd is not told: what the simulator saw.
struct LimitRow {
    limit: u32,
    retry_after: Option<Duration>,
    items: u64,
    admitted: u64,
    throttled: u64,
    span: Duration,
    learned: Option<f64>,
}

impl LimitRow {
    fn goodput(&self) -> f64 {
        self.admitted as f64 / self.span.as_secs_f64().max(1e-9) / self.limit as f64
    }
    fn throttled_share(&self) -> f64 {
        self.throttled as f64 / (self.admitted + self.throttled).max(1) as f64
    }
}

/// A drain of `items` Convai chats (batch 20, concurrency 4, 20 ms latency, no
/// `requests_per_second`) against a provider that admits `limit` calls a second and answers the
/// rest 429, with `retry_after` or without one. Admitted calls are counted over the span from the
/// first call to the last (the daemon's start-up is not the provider's time).
async fn politeness(limit: u32, retry_after: Option<Duration>, items: u64) -> Result<LimitRow> {
    let dir = tempfile::tempdir()?;
    let faults = Faults {
        latency: Duration::from_millis(20),
        rate_limit: Some(limit),
        limit_retry_after: retry_after,
        ..Faults::default()
    };
    let sim = Simulator::start(Arc::new(SystemClock), faults, 1).await?;
    sim.set_record_ids(false);
    let cfg = write_config(dir.path(), &sim, 4, 20)?;
    let db = dir.path().join("forgetd.db");
    queue_items(&db, items)?;
    let mut cmd = std::process::Command::new(exe()?);
    cmd.args(["--config"]).arg(&cfg).args(["run", "--once"]);
    cmd.env("FORGETD_LOG", "warn")
        .stdout(std::process::Stdio::null());
    let usage = tokio::task::spawn_blocking(move || measure(cmd)).await??;
    if usage.exit != 0 {
        bail!(
            "the daemon exited {} under a limit of {limit}/s",
            usage.exit
        );
    }
    let calls = sim.calls();
    let admitted = calls.iter().filter(|c| c.status == 200).count() as u64;
    let throttled = calls.iter().filter(|c| c.status == 429).count() as u64;
    let span = match (calls.first(), calls.last()) {
        (Some(a), Some(b)) => Duration::from_millis((b.at_ms - a.at_ms).max(1) as u64),
        _ => Duration::ZERO,
    };
    let st = Store::open(&db)?.status(0, 0)?;
    Ok(LimitRow {
        limit,
        retry_after,
        items,
        admitted,
        throttled,
        span,
        learned: st.gates.first().and_then(|g| g.rate_per_s),
    })
}

/// The fault mix: 50 Convai and 50 KooSearch chats of one person (batch 10, concurrency 2,
/// `latency`), one erasure request, `run --once`; with `faults` on: 25% 500s, 10% 429s with
/// Retry-After 1 s, 5% connection resets, 30% partial KooSearch batches, and every token killed
/// a second in. Returns the wall time and how many 429s (each a Retry-After of 1 s that stops
/// its provider's every call) the simulator sent.
async fn fault_mix(latency: Duration, faults_on: bool, seed: u64) -> Result<(Duration, u32)> {
    let dir = tempfile::tempdir()?;
    let mut faults = Faults {
        latency,
        ..Faults::default()
    };
    if faults_on {
        faults.error_rate = 0.25;
        faults.throttle_rate = 0.10;
        faults.retry_after = Duration::from_secs(1);
        faults.reset_rate = 0.05;
        faults.partial_rate = 0.30;
    }
    let sim = Simulator::start(Arc::new(SystemClock), faults, seed).await?;
    let db = dir.path().join("forgetd.db");
    let app = "bench-app";
    let text = format!(
        "[database]\npath = \"{}\"\n{}",
        db.display(),
        sim.config_toml(&[app], simulator::Secrets::Files(dir.path()))?
    )
    .replace(
        "timeout = \"2s\"",
        "timeout = \"2s\"\nbatch_size = 10\nconcurrency = 2",
    );
    let cfg = dir.path().join("forgetd.toml");
    std::fs::write(&cfg, text)?;
    {
        let mut store = Store::open(&db)?;
        for i in 0..50 {
            let (char_id, sid) = (format!("char-{}", i % 5), format!("c{i:04}"));
            sim.add_convai_chat(&char_id, &sid, 1_700_000_000);
            store.add_session(&crate::store::inventory::NewSession {
                provider: "convai".into(),
                scope: char_id,
                session_id: sid,
                subject: Some("bench-person".into()),
                repo_id: None,
                created_at: Some(1_700_000_000),
            })?;
            let kid = format!("k{i:04}");
            sim.add_koosearch_chat(app, &kid, None, None, 1_700_000_000);
            store.add_session(&crate::store::inventory::NewSession {
                provider: "koosearch".into(),
                scope: app.into(),
                session_id: kid,
                subject: Some("bench-person".into()),
                repo_id: None,
                created_at: Some(1_700_000_000),
            })?;
        }
        let now = crate::clock::Clock::now(&SystemClock);
        store.file_request("bench-person", Some("bench"), now, 30 * 86_400)?;
    }
    let killer = faults_on.then(|| {
        let expire = sim.expirer();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            expire();
        })
    });
    let mut cmd = std::process::Command::new(exe()?);
    cmd.args(["--config"]).arg(&cfg).args(["run", "--once"]);
    // FORGETD_BENCH_LOG: the daemon's log filter, to read a slow run's timeline.
    cmd.env(
        "FORGETD_LOG",
        std::env::var("FORGETD_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
    )
    .stdout(std::process::Stdio::null());
    let usage = tokio::task::spawn_blocking(move || measure(cmd)).await??;
    if let Some(k) = killer {
        k.abort();
    }
    let told = sim.calls().iter().filter(|c| c.status == 429).count() as u32;
    let deleted = Store::open(&db)?.count_items(crate::store::queue::ItemState::Deleted)?;
    if usage.exit != 0 || deleted != 100 {
        bail!(
            "the fault-mix drain exited {} with {deleted} of 100 chats deleted",
            usage.exit
        );
    }
    Ok((usage.wall, told))
}

/// `FORGETD_BENCH_MIX_SEED=N`: only the faulted drain with seed N.
fn mix_seed() -> Option<u64> {
    std::env::var("FORGETD_BENCH_MIX_SEED").ok()?.parse().ok()
}

/// `forgetd bench --politeness`: goodput under limits forgetd is not told, and the fault mix's
/// drain time against the same drain without faults.
async fn politeness_report(quick: bool) -> Result<()> {
    let scale = if quick { 3 } else { 1 };
    println!(
        "\nunpublished limits (Convai, batch 20, concurrency 4, 20 ms latency, no requests_per_second):"
    );
    println!(
        "| limit | 429 carries | items | admitted calls/s | share of the limit | calls throttled | learned rate |"
    );
    println!("|---|---|---|---|---|---|---|");
    let rows = [
        (10, None, 6_000 / scale),
        (50, Some(Duration::from_secs(1)), 30_000 / scale),
    ];
    for (limit, ra, items) in rows.into_iter().filter(|_| mix_seed().is_none()) {
        let r = politeness(limit, ra, items).await?;
        println!(
            "| {}/s | {} | {} | {:.1} | {:.2} | {:.1}% | {} |",
            r.limit,
            r.retry_after
                .map(|d| format!("Retry-After {} s", d.as_secs()))
                .unwrap_or_else(|| "no Retry-After".into()),
            r.items,
            r.admitted as f64 / r.span.as_secs_f64(),
            r.goodput(),
            r.throttled_share() * 100.0,
            r.learned
                .map(|x| format!("{x:.1}/s"))
                .unwrap_or_else(|| "-".into()),
        );
    }
    let latency = Duration::from_millis(200);
    let runs = if quick { 2 } else { 5 };
    // One faulted drain with a chosen seed, to look into a slow run (with FORGETD_BENCH_LOG).
    if let Some(seed) = mix_seed() {
        let (mixed, told) = fault_mix(latency, true, seed).await?;
        println!(
            "fault mix, seed {seed}: {:.2} s, {told} 429s with Retry-After",
            mixed.as_secs_f64()
        );
        return Ok(());
    }
    println!(
        "\nfault mix (100 chats, 2 providers, batch 10, concurrency 2, {} ms latency), {runs} runs each:",
        latency.as_millis()
    );
    println!(
        "| run | without faults | with the fault mix | ratio | 429s with Retry-After 1 s |\n|---|---|---|---|---|"
    );
    let (mut worst, mut sum): (f64, f64) = (0.0, 0.0);
    for seed in 0..runs {
        let (clean, _) = fault_mix(latency, false, seed).await?;
        let (mixed, told) = fault_mix(latency, true, seed).await?;
        let ratio = mixed.as_secs_f64() / clean.as_secs_f64();
        worst = worst.max(ratio);
        sum += ratio;
        println!(
            "| {} | {:.2} s | {:.2} s | {ratio:.2} | {told} |",
            seed + 1,
            clean.as_secs_f64(),
            mixed.as_secs_f64()
        );
    }
    println!(
        "mean ratio {:.2}, worst {worst:.2}",
        sum / f64::from(runs as u32)
    );
    Ok(())
}

/// One drain on PostgreSQL: `items` queued, then `instances` `run --once` children started
/// together on one database; the wall time until the last exits.
async fn pg_throughput(
    server: &str,
    instances: usize,
    (concurrency, batch, latency_ms): (usize, usize, u64),
    items: u64,
) -> Result<(Duration, Duration)> {
    let dir = tempfile::tempdir()?;
    let db = crate::store::pg::ScratchDatabase::create(server, "forgetd_bench")?;
    let faults = Faults {
        latency: Duration::from_millis(latency_ms),
        ..Faults::default()
    };
    let sim = Simulator::start(Arc::new(SystemClock), faults, 1).await?;
    sim.set_record_ids(false);
    let cfg = write_config(dir.path(), &sim, concurrency, batch)?;
    for key in ["subject.key", "signing.key"] {
        std::fs::write(dir.path().join(key), [7u8; 32])?;
    }
    let text = std::fs::read_to_string(&cfg)?.replace(
        &format!("[database]\npath = \"{}\"\n", dir.path().join("forgetd.db").display()),
        &format!(
            "[database]\nurl = \"{}\"\n[audit]\nsubject_key = \"file:{}\"\nsigning_key = \"file:{}\"\n",
            db.url,
            dir.path().join("subject.key").display(),
            dir.path().join("signing.key").display()
        ),
    );
    std::fs::write(&cfg, text)?;
    let database = crate::config::Database::Postgres(crate::config::PgTarget {
        url: db.url.clone(),
        password: None,
    });
    Store::connect(&database)?.queue_synthetic_items(items)?;
    let mut runs = Vec::new();
    let started = Instant::now();
    for _ in 0..instances {
        let mut cmd = std::process::Command::new(exe()?);
        cmd.args(["--config"]).arg(&cfg).args(["run", "--once"]);
        cmd.env("FORGETD_LOG", "warn")
            .stdout(std::process::Stdio::null());
        runs.push(tokio::task::spawn_blocking(move || measure(cmd)));
    }
    let mut cpu = Duration::ZERO;
    for r in runs {
        let usage = r.await??;
        if usage.exit != 0 {
            // Kept for inspection: a failed drain's rows are the evidence.
            let kept = db.url.clone();
            std::mem::forget(db);
            bail!(
                "an instance exited {} on PostgreSQL; its database is kept: {kept}",
                usage.exit
            );
        }
        cpu += usage.cpu;
    }
    let wall = started.elapsed();
    let deleted =
        Store::connect(&database)?.count_items(crate::store::queue::ItemState::Deleted)?;
    if deleted != items {
        bail!("only {deleted} of {items} items were deleted on PostgreSQL");
    }
    Ok((wall, cpu))
}

/// `forgetd bench --postgres CONNINFO`: the zero-latency and the (4, 100, 50 ms) drains on
/// PostgreSQL with one and three instances, beside the same drains on SQLite.
async fn postgres_report(server: &str, quick: bool) -> Result<()> {
    let scale = if quick { 5 } else { 1 };
    println!(
        "\n| engine | instances | concurrency | batch | latency | items | wall | IDs/s | % of limit | CPU µs/ID (all instances) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (c, b, l, n) in [(4, 100, 50, 40_000 / scale), (4, 100, 0, 200_000 / scale)] {
        let limit = (l > 0).then(|| (c * b) as f64 / (l as f64 / 1000.0));
        let pct = |rate: f64| {
            limit
                .map(|x| format!("{:.0}%", rate / x * 100.0))
                .unwrap_or_else(|| "-".into())
        };
        let sqlite = throughput(c, b, l, n, 0).await?;
        println!(
            "| SQLite | 1 | {c} | {b} | {l} ms | {n} | {:.2} s | {:.0} | {} | {:.1} |",
            sqlite.usage.wall.as_secs_f64(),
            sqlite.rate(),
            pct(sqlite.rate()),
            sqlite.usage.cpu.as_micros() as f64 / n as f64
        );
        for instances in [1, 3] {
            let (wall, cpu) = pg_throughput(server, instances, (c, b, l), n).await?;
            let rate = n as f64 / wall.as_secs_f64();
            println!(
                "| PostgreSQL | {instances} | {c} | {b} | {l} ms | {n} | {:.2} s | {rate:.0} | {} | {:.1} |",
                wall.as_secs_f64(),
                pct(rate),
                cpu.as_micros() as f64 / n as f64
            );
        }
    }
    Ok(())
}

/// CPU share of an idle daemon over `window`.
async fn idle_cpu(window: Duration) -> Result<f64> {
    let dir = tempfile::tempdir()?;
    let sim = Simulator::start(Arc::new(SystemClock), Faults::default(), 1).await?;
    let cfg = write_config(dir.path(), &sim, 4, 100)?;
    let mut child = std::process::Command::new(exe()?)
        .args(["--config"])
        .arg(&cfg)
        .arg("run")
        .env("FORGETD_LOG", "warn")
        .spawn()?;
    tokio::time::sleep(Duration::from_secs(2)).await; // start-up is not idling
    let ticks = |pid: u32| -> Result<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        let after = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
        let f: Vec<&str> = after.split_whitespace().collect();
        Ok(f[11].parse::<u64>()? + f[12].parse::<u64>()?) // utime, stime
    };
    let t0 = ticks(child.id())?;
    let started = Instant::now();
    tokio::time::sleep(window).await;
    let t1 = ticks(child.id())?;
    let elapsed = started.elapsed().as_secs_f64();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let _ = child.wait();
    Ok((t1 - t0) as f64 / hz / elapsed * 100.0)
}

/// The retention sweep: `sessions` chats, `expired` of them past the rule's age.
async fn sweep(sessions: u64, expired: u64) -> Result<(ChildUsage, String)> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("forgetd.db");
    let seed_started = Instant::now();
    {
        let mut store = Store::open(&db)?;
        let now = crate::clock::Clock::now(&SystemClock);
        // The inventory goes in as a feeder's would: plain SQL on its own connection.
        let feeder = rusqlite::Connection::open(&db)?;
        feeder.execute_batch(&format!(
            "BEGIN;
             INSERT INTO sessions (provider, scope, session_id, subject, created_at)
             WITH RECURSIVE c(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM c WHERE x < {sessions} - 1)
             SELECT 'convai', 'char-' || (x % 50), printf('s%010d', x), 'user-' || (x % 100000),
                    CASE WHEN x % {step} = 0 THEN {old} ELSE {young} END FROM c;
             COMMIT;",
            step = (sessions / expired.max(1)).max(1),
            old = now - 40 * 86_400,
            young = now - 86_400,
        ))?;
        store.add_rule(
            &crate::config::RuleSpec {
                name: "sweep".into(),
                provider: crate::model::ProviderKind::CONVAI,
                scope: "*".into(),
                max_age: Duration::from_secs(30 * 86_400),
                schedule: "0 3 * * *".into(),
                timezone: "UTC".into(),
                discover: false,
                max_deletions: u64::MAX / 2,
            },
            now,
        )?;
    }
    eprintln!(
        "seeded {sessions} sessions in {:.1} s",
        seed_started.elapsed().as_secs_f64()
    );
    let mut cmd = std::process::Command::new(exe()?);
    cmd.arg("--db")
        .arg(&db)
        .args(["bench-sweep", "sweep"])
        .stdout(std::process::Stdio::piped());
    let out_path = dir.path().join("sweep.out");
    cmd.stdout(std::fs::File::create(&out_path)?);
    let usage = tokio::task::spawn_blocking(move || measure(cmd)).await??;
    let out = std::fs::read_to_string(&out_path).unwrap_or_default();
    if usage.exit != 0 {
        bail!("the sweep exited {}", usage.exit);
    }
    Ok((usage, out.trim().to_string()))
}

pub async fn run(opts: BenchOptions) -> Result<ExitCode> {
    println!(
        "forgetd bench ({}), on {} CPU(s)",
        if opts.quick { "quick" } else { "full" },
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    if opts.politeness {
        politeness_report(opts.quick).await?;
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(server) = &opts.postgres {
        postgres_report(server, opts.quick).await?;
        return Ok(ExitCode::SUCCESS);
    }
    if opts.retention {
        println!(
            "\nretention sweep: {} sessions, {} past max_age, rule scope \"*\"",
            opts.sweep_sessions, opts.sweep_expired
        );
        let (u, out) = sweep(opts.sweep_sessions, opts.sweep_expired).await?;
        println!("| sessions | expired | wall | peak RSS | result |\n|---|---|---|---|---|");
        println!(
            "| {} | {} | {:.2} s | {:.1} MiB | {} |",
            opts.sweep_sessions,
            opts.sweep_expired,
            u.wall.as_secs_f64(),
            u.max_rss_kib as f64 / 1024.0,
            out
        );
        return Ok(ExitCode::SUCCESS);
    }
    let scale = if opts.quick { 5 } else { 1 };
    let grid: [(usize, usize, u64, u64); 4] = [
        (4, 100, 50, 40_000 / scale),
        (16, 100, 20, 200_000 / scale),
        (64, 100, 5, 400_000 / scale),
        (4, 100, 0, 1_000_000 / scale),
    ];
    if opts.holds > 0 {
        println!(
            "\n{} standing legal hold(s), covering none of the queued chats",
            opts.holds
        );
    }
    println!(
        "\n| concurrency | batch | latency | items | wall | IDs/s | limit IDs/s | % of limit | CPU µs/ID | peak RSS | simulator CPU µs/ID |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for (c, b, l, n) in grid {
        let r = throughput(c, b, l, n, opts.holds).await?;
        let limit = r.limit();
        println!(
            "| {} | {} | {} ms | {} | {:.2} s | {:.0} | {} | {} | {:.1} | {:.1} MiB | {:.1} |",
            r.concurrency,
            r.batch,
            r.latency_ms,
            r.items,
            r.usage.wall.as_secs_f64(),
            r.rate(),
            limit
                .map(|l| format!("{l:.0}"))
                .unwrap_or_else(|| "∞".into()),
            limit
                .map(|l| format!("{:.1}%", r.rate() / l * 100.0))
                .unwrap_or_else(|| "-".into()),
            r.usage.cpu.as_secs_f64() * 1e6 / r.items as f64,
            r.usage.max_rss_kib as f64 / 1024.0,
            r.sim_cpu.as_secs_f64() * 1e6 / r.items as f64,
        );
    }
    let window = Duration::from_secs(if opts.quick { 5 } else { 20 });
    let idle = idle_cpu(window).await?;
    println!(
        "\nidle daemon CPU over {} s: {idle:.3}% of one core",
        window.as_secs()
    );
    Ok(ExitCode::SUCCESS)
}

/// The child side of the retention benchmark: one real run of a rule, no discovery.
pub fn sweep_child(db: &crate::config::Database, rule: &str) -> Result<ExitCode> {
    let mut store = Store::connect(db)?;
    let row = store.get_rule(rule)?;
    let now = crate::clock::Clock::now(&SystemClock);
    let run = store.run_rule(&row, &[], now, 30 * 86_400)?;
    println!("matched {}, queued {}", run.matched, run.enqueued);
    Ok(ExitCode::SUCCESS)
}
