//! cohort-sync keeps 1Flow cohorts in step with Amplitude cohorts.
//!
//! One run of one cohort flows through these modules, in order:
//! - [`config`]: the TOML file, environment overrides and validation.
//! - [`amplitude`]: list cohorts, request an export, poll, download.
//! - [`export`] and [`mapping`]: stream the CSV into 1Flow ids.
//! - [`members`]: compact id sets and the diff between two of them.
//! - [`oneflow`] and [`retry`]: batches to 1Flow, with retries by class.
//! - [`state`]: the durable state store (SQLite or PostgreSQL).
//! - [`sync`]: the pipeline that ties the stages together.
//!
//! Around them: [`cli`] (the commands), [`daemon`] (`run`: schedules, reload,
//! shutdown, health and metrics), [`schedule`] (fire times), [`telemetry`] (logs),
//! [`sandbox`] (fake Amplitude, S3 and 1Flow servers for the demo and the tests) and
//! [`demo`].
#![forbid(unsafe_code)]

pub mod amplitude;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod export;
pub mod mapping;
pub mod members;
pub mod oneflow;
pub mod retry;
pub mod sandbox;
pub mod schedule;
pub mod state;
pub mod sync;
pub mod telemetry;
