//! `runbook`: operational procedures written once in YAML, compiled to a DAG of guarded,
//! verified steps, reviewed with `plan`, and executed durably with an audit trail.
//!
//! Data flows one way: [`parse`] (YAML → [`model`]) → [`compile`] (validate, resolve, DAG) →
//! [`plan`] (render for review) → exec → state and audit.

/// `println!` that ignores a closed stdout (`runbook audit export | head` must not panic).
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

/// `print!` that ignores a closed stdout.
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout(), $($t)*);
    }};
}

pub mod cli;
mod cli_drill;
mod cli_report;
mod cli_serve;
mod cli_state;
pub mod clock;
pub mod compile;
pub mod diagnostic;
pub mod drill;
pub mod duration;
pub mod exec;
pub mod exit;
pub mod identity;
pub mod kinds;
pub mod mask;
pub mod model;
pub mod parse;
pub mod plan;
pub mod report;
pub mod schema;
pub mod serve;
pub mod state;
pub mod template;
pub mod terminal;
