//! Scale-down: removes empty and underused nodes, replaces expired ones and reacts to spot
//! interruptions, without breaking PodDisruptionBudgets or churning.
//!
//! `decide` is pure (which nodes, why); `execute` is the per-command state machine (taint,
//! launch the replacement, wait for it, evict, delete the NodeClaim); `interruption` turns
//! cloud notices into decisions.

pub mod decide;
pub mod execute;
