//! Disaster-recovery drills: drill files, running their scenarios, and what they measured.

pub mod result;

pub use result::{AcceptResult, ClockStart, Objective, ScenarioResult, Verdict};
