//! The kube-scheduler extender: `filter` and `prioritize` over HTTPS (PROTOCOL.md §B–D).
//!
//! `wire` parses and renders the exact protocol, `decide` makes pure decisions over a
//! [`ClusterSnapshot`](crate::state::ClusterSnapshot), and `routes` joins them to axum.

pub mod client;
pub mod decide;
pub mod fixtures;
pub mod routes;
pub mod wire;
