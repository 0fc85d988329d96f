//! Exit codes of the `runbook` binary: stable, documented, distinct per outcome.
//!
//! Scripts and schedulers branch on these; never renumber one.

/// The command did what was asked (the run succeeded, the file is valid, the chain verifies).
pub const SUCCESS: u8 = 0;
/// A step failed and the run stopped (no rollback was configured, or it was not possible).
pub const STEP_FAILED: u8 = 1;
/// The runbook, a param or the command line is invalid; nothing was run.
pub const INVALID: u8 = 2;
/// A step failed and the run rolled back: the compensations of completed steps ran.
pub const ROLLED_BACK: u8 = 3;
/// A guard (`require`, `preflight`) failed or an approval was denied; the guarded step never ran.
pub const ABORTED: u8 = 4;
/// The run was cancelled (Ctrl-C, SIGTERM) or hit its whole-run timeout.
pub const CANCELLED: u8 = 5;
/// The run could not start or continue because of state: lock held, run not found, runbook
/// changed since the run started, state store unreadable.
pub const STATE: u8 = 6;
/// The audit log failed verification: an entry was modified, removed, reordered or truncated.
pub const TAMPERED: u8 = 7;
/// A drill scenario proved nothing: its injected fault was never detected (and no scenario
/// failed outright, which is exit 1).
pub const DRILL_INVALID: u8 = 8;
/// A step failed and the run rolled back, but a compensation failed: some completed steps were
/// left un-undone and need a human.
pub const ROLLBACK_INCOMPLETE: u8 = 9;
/// A bug or an environment failure the engine could not attribute to the runbook.
pub const INTERNAL: u8 = 70;

/// The table printed by `--help` and the README.
pub const TABLE: &str = "\
Exit codes:
  0   success
  1   a step failed; the run stopped
  2   invalid runbook, params or command line; nothing ran
  3   a step failed; the run rolled back (compensations ran)
  4   aborted by a guard (require/preflight) or a denied approval
  5   cancelled (Ctrl-C, SIGTERM) or whole-run timeout
  6   state problem: lock held, unknown run, runbook changed, state unreadable
  7   audit log verification failed (tampering detected)
  8   drill invalid: an injected fault was never detected
  9   a step failed; the rollback is incomplete (a compensation failed)
  70  internal error";
