//! `runbook`: operational procedures written once in YAML, compiled to a DAG of guarded,
//! verified steps, reviewed with `plan`, and executed durably with an audit trail.
//!
//! Data flows one way: [`parse`] (YAML → [`model`]) → [`compile`] (validate, resolve, DAG) →
//! [`plan`] (render for review) → exec → state and audit.

pub mod cli;
mod cli_state;
pub mod clock;
pub mod compile;
pub mod diagnostic;
pub mod duration;
pub mod exec;
pub mod exit;
pub mod kinds;
pub mod mask;
pub mod model;
pub mod parse;
pub mod plan;
pub mod schema;
pub mod state;
pub mod template;
