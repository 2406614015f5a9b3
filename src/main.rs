//! The `cohort-sync` binary: everything lives in the library; see `cohort_sync::cli`.

fn main() -> std::process::ExitCode {
    cohort_sync::cli::main()
}
