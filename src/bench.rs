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
    pub retention: bool,
    pub sweep_sessions: u64,
    pub sweep_expired: u64,
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

async fn throughput(concurrency: usize, batch: usize, latency_ms: u64, items: u64) -> Result<Row> {
    let dir = tempfile::tempdir()?;
    let faults = Faults {
        latency: Duration::from_millis(latency_ms),
        ..Faults::default()
    };
    let sim = Simulator::start(Arc::new(SystemClock), faults, 1).await?;
    sim.set_record_ids(false);
    let cfg = write_config(dir.path(), &sim, concurrency, batch)?;
    queue_items(&dir.path().join("forgetd.db"), items)?;
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
    println!(
        "\n| concurrency | batch | latency | items | wall | IDs/s | limit IDs/s | % of limit | CPU µs/ID | peak RSS | simulator CPU µs/ID |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for (c, b, l, n) in grid {
        let r = throughput(c, b, l, n).await?;
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
pub fn sweep_child(db: &Path, rule: &str) -> Result<ExitCode> {
    let mut store = Store::open(db)?;
    let row = store.get_rule(rule)?;
    let now = crate::clock::Clock::now(&SystemClock);
    let run = store.run_rule(&row, &[], now, 30 * 86_400)?;
    println!("matched {}, queued {}", run.matched, run.enqueued);
    Ok(ExitCode::SUCCESS)
}
