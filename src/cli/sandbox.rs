//! `cohort-sync sandbox`: the fake servers as a process of their own, for experiments
//! and for the benchmark.
//!
//! It prints one JSON line with the URLs and keys, then takes commands on stdin, one
//! per line, answering each with one line: `churn LEAVE JOIN`, `latency MS`,
//! `members` (the list's size), `exports`, `quit`.

use std::process::ExitCode;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::sandbox::{FakeCohort, FakeMember, Sandbox, SandboxOptions, sample_members};

/// Arguments of `cohort-sync sandbox`.
#[derive(Debug, clap::Args)]
pub struct SandboxArgs {
    /// Members of the one cohort served.
    #[arg(long, default_value_t = 10_000)]
    members: usize,
    /// Share of anonymous members (empty user id).
    #[arg(long, default_value_t = 0.02)]
    anonymous: f64,
    /// The cohort's id.
    #[arg(long, default_value = "bench")]
    cohort_id: String,
    /// User properties per member, all included in every export (a wide file).
    #[arg(long, default_value_t = 0)]
    properties: usize,
    /// Delay of every 1Flow answer, in milliseconds.
    #[arg(long, default_value_t = 0)]
    oneflow_latency_ms: u64,
    /// Seed of the generated members.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// Runs the sandbox until `quit` or the end of stdin.
pub async fn run(args: SandboxArgs) -> ExitCode {
    let sandbox = match Sandbox::start(SandboxOptions::default()).await {
        Ok(sandbox) => sandbox,
        Err(error) => {
            eprintln!("error: cannot start the sandbox: {error}");
            return ExitCode::FAILURE;
        }
    };
    let mut members = sample_members(args.members, args.anonymous, args.seed);
    add_properties(&mut members, args.properties);
    let mut cohort = FakeCohort::new(
        &args.cohort_id,
        format!("Cohort {}", args.cohort_id),
        members,
    );
    cohort.file.all_properties = args.properties > 0;
    sandbox.put_cohort(cohort);
    sandbox
        .faults()
        .set_oneflow_latency(std::time::Duration::from_millis(args.oneflow_latency_ms));

    let o = sandbox.options();
    let hello = serde_json::json!({
        "amplitude_url": sandbox.amplitude_url(),
        "oneflow_url": sandbox.oneflow_url(),
        "amplitude_api_key": o.amplitude_api_key,
        "amplitude_secret_key": o.amplitude_secret_key,
        "oneflow_api_key": o.oneflow_api_key,
        "cohort_id": args.cohort_id,
    });
    let mut out = tokio::io::stdout();
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut next_member = 1_000_000_000u64;
    let mut reply = hello.to_string();
    loop {
        reply.push('\n');
        if out.write_all(reply.as_bytes()).await.is_err() || out.flush().await.is_err() {
            break;
        }
        let Ok(Some(line)) = lines.next_line().await else {
            break;
        };
        let words: Vec<&str> = line.split_whitespace().collect();
        reply = match words.as_slice() {
            ["churn", leave, join]
                if leave.parse::<usize>().is_ok() && join.parse::<usize>().is_ok() =>
            {
                let (leave, join) = (leave.parse().unwrap_or(0), join.parse().unwrap_or(0));
                let first = next_member;
                next_member += join as u64;
                sandbox.update_members(&args.cohort_id, |members| {
                    members.drain(..leave.min(members.len()));
                    let mut joined: Vec<FakeMember> = (first..first + join as u64)
                        .map(|id| FakeMember::new(id, format!("joined-{id}")))
                        .collect();
                    add_properties(&mut joined, args.properties);
                    members.extend(joined);
                });
                format!("ok churned {leave} {join}")
            }
            ["latency", ms] if ms.parse::<u64>().is_ok() => {
                let ms = ms.parse().unwrap_or(0);
                sandbox
                    .faults()
                    .set_oneflow_latency(std::time::Duration::from_millis(ms));
                format!("ok latency {ms}")
            }
            ["members"] => {
                let count = sandbox
                    .members_of_cohort(&args.cohort_id)
                    .map_or(0, |m| m.len());
                format!("ok {count}")
            }
            ["exports"] => format!("ok {}", sandbox.export_requests(&args.cohort_id)),
            ["quit"] => break,
            _ => format!(
                "error: unknown command {line:?}; commands: churn LEAVE JOIN, latency MS, \
                 members, exports, quit"
            ),
        };
    }
    ExitCode::SUCCESS
}

fn add_properties(members: &mut [FakeMember], count: usize) {
    for member in members {
        for k in 0..count {
            let value = format!("value-{k}-{:012}", member.amplitude_id);
            member.properties.push((format!("prop{k}"), value));
        }
    }
}
