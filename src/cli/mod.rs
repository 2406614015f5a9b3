//! The command line: argument parsing and one function per command.
//!
//! Exit codes: 0 when everything succeeded, 1 when a cohort run or a check failed,
//! 2 for configuration and usage errors.

mod commands;
mod sandbox;

pub use commands::{holder_name, open_store};
mod status;

pub use status::status_text;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Where the config file is looked for when neither `--config` nor
/// `$COHORT_SYNC_CONFIG` names one.
pub const DEFAULT_CONFIG: &str = "/etc/cohort-sync/config.toml";

/// Exit code for configuration and usage errors.
pub const EXIT_CONFIG: u8 = 2;

/// Keeps 1Flow cohorts in step with Amplitude cohorts.
#[derive(Debug, Parser)]
#[command(name = "cohort-sync", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The config file option shared by the commands that read one.
#[derive(Debug, clap::Args)]
pub struct ConfigArg {
    /// The TOML config file [default: $COHORT_SYNC_CONFIG, else /etc/cohort-sync/config.toml]
    #[arg(long, short = 'c', value_name = "FILE", env = "COHORT_SYNC_CONFIG")]
    config: Option<PathBuf>,
}

impl ConfigArg {
    fn path(&self) -> PathBuf {
        self.config
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG))
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Sync cohorts once: export from Amplitude, diff, push adds and removes to 1Flow.
    Sync(commands::SyncArgs),
    /// Validate the config file and print each cohort's settings.
    Check {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// List the Amplitude project's cohorts (id, name, size, last computed, archived).
    Cohorts {
        #[command(flatten)]
        config: ConfigArg,
        /// A named project from [amplitude_projects] instead of [amplitude].
        #[arg(long, value_name = "NAME")]
        project: Option<String>,
    },
    /// Show each cohort's last run, acknowledged members, pending export, and the quota.
    Status {
        #[command(flatten)]
        config: ConfigArg,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run as a service: each enabled cohort syncs on its schedule; reloads on SIGHUP
    /// or when the config file changes; stops cleanly on SIGTERM or SIGINT.
    Run {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Ask a running daemon's /healthz (for container health checks); exit 0 or 1.
    Health {
        #[command(flatten)]
        config: ConfigArg,
        /// The daemon's address, instead of the config's server.listen.
        #[arg(long, value_name = "HOST:PORT")]
        addr: Option<String>,
    },
    /// Serve the fake Amplitude, S3 and 1Flow servers with one generated cohort, for
    /// experiments and the benchmark (commands on stdin; see the README).
    Sandbox(sandbox::SandboxArgs),
    /// Run the whole pipeline against a local sandbox, with no accounts.
    Demo {
        /// Members of the sample cohort.
        #[arg(long, default_value_t = 5000)]
        members: usize,
    },
}

/// Parses the command line and runs the command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        match cli.command {
            Command::Sync(args) => commands::sync(args).await,
            Command::Check { config } => commands::check(&config.path()),
            Command::Cohorts { config, project } => {
                commands::cohorts(&config.path(), project).await
            }
            Command::Status { config, json } => status::status(&config.path(), json).await,
            Command::Run { config } => crate::daemon::run(config.path()).await,
            Command::Health { config, addr } => commands::health(&config.path(), addr).await,
            Command::Sandbox(args) => sandbox::run(args).await,
            Command::Demo { members } => crate::demo::run(members).await,
        }
    })
}
