//! `runbook report RUN_ID`: the post-incident (or drill scenario) report of a recorded run, in
//! Markdown, HTML, JSON or `JUnit` XML, on stdout or into a file.

use std::path::{Path, PathBuf};

use crate::diagnostic::error_chain as chain;
use crate::exit;
use crate::report::ReportFormat;

/// `runbook report`.
pub fn report(dir: Option<PathBuf>, run_id: &str, format: ReportFormat, out: Option<&Path>) -> u8 {
    let store = match crate::cli_state::open_store(dir) {
        Ok(s) => s,
        Err(c) => return c,
    };
    let run = match crate::cli_state::find_run(store.as_ref(), run_id) {
        Ok(r) => r,
        Err(c) => return c,
    };
    // A drill scenario's run is reported with what the drill measured.
    let drill = match crate::drill::scenario_result(store.as_ref(), &run.id) {
        Ok(d) => d,
        Err(e) => {
            eprintln!(
                "warning: {}; the run is reported without the drill's measurements",
                chain(&e)
            );
            None
        }
    };
    let report = match crate::report::run_report(store.as_ref(), &run.id, drill.as_ref()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {}", chain(&e));
            return exit::STATE;
        }
    };
    let text = crate::report::render(&report, format);
    let Some(path) = out else {
        out!("{text}");
        return exit::SUCCESS;
    };
    if let Err(e) = std::fs::write(path, &text) {
        eprintln!(
            "error: failed to write the report to {}: {e}\n  help: give --out a path in a writable directory, or leave it out to print the report",
            path.display()
        );
        return exit::INVALID;
    }
    eprintln!(
        "wrote the {} report of run {} to {}",
        format.extension(),
        run.id,
        path.display()
    );
    exit::SUCCESS
}
