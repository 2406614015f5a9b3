//! cohort-sync keeps 1Flow cohorts in step with Amplitude cohorts.
//!
//! Where things are:
//! - [`config`]: the TOML file, environment overrides and validation.
//! - [`members`]: compact id sets and the diff between two of them.
//! - [`state`]: the durable state store (SQLite or PostgreSQL).
//! - [`sandbox`]: fake Amplitude, S3 and 1Flow servers for the demo and the tests.
#![forbid(unsafe_code)]

pub mod config;
pub mod members;
pub mod sandbox;
pub mod state;
