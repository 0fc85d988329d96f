//! The `runbook` binary: parse arguments, run one command, exit with its documented code.

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(runbook::cli::main())
}
