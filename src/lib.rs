//! forgetd erases chat histories held by conversational-AI providers (Convai, Huawei Cloud
//! KooSearch): erasure requests and retention rules from a local SQLite queue, resolved to chat
//! IDs, deleted in idempotent batches with retry and backoff, with a tamper-evident record.
//!
//! Where things live:
//!
//! | module | owns |
//! |---|---|
//! | [`config`] | the TOML file, validated into typed values; secret references |
//! | [`model`] | shared nouns: providers, chat keys, request states |
//! | [`clock`] | injected time (real, or manual for tests) |
//! | [`store`] | the SQLite file: schema, migrations, queue state machine, daemon lock |
//! | [`scheduler`] | cron schedules of retention rules |
//! | [`cli`] | the command line (`forgetd ...`), exit codes |
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
pub mod executor;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod providers;
pub mod report;
pub mod resolve;
pub mod scheduler;
pub mod simulator;
pub mod store;
