//! Cluster state for decisions: one writer fed by watches, readers take cheap immutable snapshots.

pub mod cluster;
pub mod demand;

pub use cluster::{ClusterIndex, ClusterSnapshot, NodeView, PodView, SharedState};
pub use demand::{DemandEntry, DemandLedger, DemandSource};
