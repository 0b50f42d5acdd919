//! forgetd erases chat histories held by conversational-AI providers (Convai, Huawei Cloud
//! KooSearch): erasure requests and retention rules from a local SQLite queue, resolved to chat
//! IDs, deleted in idempotent batches with retry and backoff, with a tamper-evident record.
//!
//! Where things live:
//!
//! | module | owns |
//! |---|---|
//! | [`config`] | the TOML file, validated into typed values before anything runs; each `[providers.<key>]` table is handed to its provider's folder |
//! | [`fields`] | one config value, checked (durations, service URLs, secret references), every problem named by its key (a leaf) |
//! | [`secret`] | secret references (`env:`, `file:`, `credential:`) and reading them as text or bytes (a leaf) |
//! | [`model`] | shared nouns: provider keys, chat keys, request states (a leaf: it names no provider) |
//! | [`clock`] | injected time (real; manual for tests: sleeping on it advances it, or stepped: only the test moves it); `Millis` (a bare `i64` time is unix seconds) |
//! | [`store`] | the SQLite file and **every SQL statement**: schema and migrations (the `providers` table kept equal to the registry), the work-item state machine and batch claims, requests, resolution of requests and rules (and `plan`), inventory and import, holds, rules, status, verification records, the audit trail's appends and walks, backups, the daemon lock |
//! | [`resolve`] | discovery: asking the providers which chats a request or rule covers, with retry; the store resolves what it found |
//! | [`providers`] | the `Provider` and `Settings` traits, the registry (the one list of providers), the limits every provider shares, HTTP plumbing, `probe` (doctor's answer classes); one folder per provider owning its config table, ID rules, client and answer classification: `convai/`, `koosearch/` (with the IAM token lifecycle), and the test-only `ledger/` that proves a third provider is one folder and one registry line |
//! | [`executor`] | deleting: lane workers, batching, splitting refused batches, retry and backoff, rate limits and throttling, pauses; its `Stats` are read back from [`metrics`] |
//! | [`verify`] | read-after-delete verification: each deleted chat read back after `[verify] after`, through the provider's read calls as background calls of its gate; absent, reappeared (deleted again, bounded) or unverified, never guessed |
//! | [`schedule`] | cron expressions and when a rule is due: pure, DST-correct, catch-up once (a leaf) |
//! | [`scheduler`] | the loop that runs retention rules when due, and its timer (tokio-cron-scheduler one-shot jobs in production, the injected clock in tests) |
//! | [`daemon`] | `Daemon::build` (start-up checks), `run_once`, `run_until(control)`: intake, status, reload, shutdown; `signals` turns Unix signals into control |
//! | [`audit`] | the audit chain's arithmetic and typed events (shared by writer and certificate), the subject key |
//! | [`certificate`] | the certificate of erasure, a read model of the request's typed closing event |
//! | [`signing`] | Ed25519 signatures over a certificate's canonical JSON, and their offline check (the signing key's loading) |
//! | [`metrics`] | what Prometheus `/metrics` renders; the executor's counters, every known series at 0 from start |
//! | [`web`] | the `[http]` listener: the read-only status page at `/` (refreshed in place), `/status.json`, `/metrics`, `/healthz`; its connection limit and timeouts |
//! | [`simulator`] | Convai, KooSearch and IAM on loopback, with fault injection (tests, `demo`, `bench`, `forgetd simulator`) |
//! | [`demo`] | `forgetd demo` |
//! | [`doctor`] | `forgetd doctor`: each provider's read-only credential and reachability checks, run and reported (the calls are in each provider's folder; the answer classes in `providers::probe`) |
//! | [`mod@bench`] | `forgetd bench` |
//! | [`cli`] | the command line (including `simulator`, `backup`, and `generate`: man pages and completions from the same definitions), exit codes; [`report`] renders its human output |
//! | [`errors`] | how an error and its causes are shown, one line each, no cause twice (a leaf) |
//! | [`logging`] | tracing-subscriber set-up (terminal, native journald, JSON), its variables validated |
//!
//! `main.rs` only calls [`cli::main`].

pub mod audit;
pub mod bench;
pub mod certificate;
pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod doctor;
pub mod errors;
pub mod executor;
pub mod fields;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod providers;
pub mod redact;
pub mod report;
pub mod resolve;
pub mod schedule;
pub mod scheduler;
pub mod secret;
pub mod signing;
pub mod simulator;
pub mod store;
pub mod verify;
pub mod web;
