//! Gantry: just-in-time EC2 nodes for Kubernetes, decided from inside the scheduling path.
//!
//! ```text
//! kube-scheduler ──HTTPS──▶ extender (filter / prioritize) ──▶ DemandLedger
//!                                                               │
//!   watches ──▶ ClusterState ──snapshot──▶ Batcher ──▶ Planner (pure) ──▶ Launcher ──▶ CloudProvider
//!                                                                          │
//!   Lifecycle: NodeClaim ↔ Node by providerID, startup gate, timeouts, GC ◀┘
//!   Disruption: empty / underused nodes ──▶ taint ──▶ evict (PDB-aware) ──▶ terminate
//! ```
//!
//! Decisions (`model`, `plan`, and the `decide` parts of `extender`, `admission`, `disruption`)
//! are pure functions over plain data; adapters translate Kubernetes and EC2 objects into them.

pub mod admission;
pub mod certs;
pub mod cli;
pub mod cloud;
pub mod disruption;
pub mod extender;
pub mod kube;
pub mod lifecycle;
pub mod metrics;
pub mod model;
pub mod plan;
pub mod provision;
pub mod server;
pub mod sim;
pub mod state;
