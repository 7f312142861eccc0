//! Plain data for decisions: quantities, resources, taints, labels and the instance catalog.
//!
//! Nothing here knows about tokio, kube or AWS; adapters translate into these types.

pub mod catalog;
pub mod labels;
pub mod quantity;
pub mod resources;
pub mod taints;

pub use catalog::{Arch, CapacityType, Catalog, InstanceType, Offering, OfferingKey};
pub use resources::Resources;
pub use taints::{Effect, Taint, Toleration};
