//! Plain data for decisions: quantities, resources, taints, labels and the instance catalog.
//!
//! Nothing here knows about tokio, kube or AWS; adapters translate into these types.

pub mod catalog;
pub mod labels;
pub mod nodepool;
pub mod pod;
pub mod quantity;
pub mod requirements;
pub mod resources;
pub mod taints;

pub use catalog::{Arch, CapacityType, Catalog, InstanceType, Offering, OfferingKey};
pub use nodepool::{NodePoolView, PoolLimits};
pub use pod::{PodDemand, pod_requests};
pub use requirements::{Requirement, Requirements, Terms};
pub use resources::Resources;
pub use taints::{Effect, Taint, Toleration};
