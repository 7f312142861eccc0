//! The cloud behind a trait, so the loops are tested against a simulated cloud and EC2 alike.
//!
//! Implementations: `ec2` (aws-sdk-ec2) and `sim` (in-process, with fault injection). Both
//! share the claim-to-offerings narrowing in `candidates` and the insufficient-capacity back-off
//! in `backoff`; `command` is `gantry catalog`.
//!
//! ```text
//! NodeClaim ──candidates──▶ ranked offerings − backed-off ──▶ CreateFleet (ec2) / pick (sim)
//!                                                     ▲                 │ capacity errors
//!                                                     └──── backoff ◀───┘ (1 min doubling to 30 min)
//! ```

pub mod backoff;
pub mod candidates;
pub mod command;
pub mod ec2;
pub mod sim;

use std::sync::Arc;

use thiserror::Error;

use crate::kube::crd::{EC2NodeClass, NodeClaim};
use crate::model::{CapacityType, Catalog, OfferingKey};

/// Why a cloud call failed, classified so callers know whether to retry, fall back or give up.
#[derive(Debug, Error)]
pub enum CloudError {
    /// These offerings have no capacity now; try others and back these off.
    #[error("insufficient capacity for {}", offerings.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))]
    InsufficientCapacity {
        /// The offerings that failed.
        offerings: Vec<OfferingKey>,
    },
    /// The API rate-limited us; retry later with back-off.
    #[error("throttled by the cloud API")]
    Throttled,
    /// The instance (or other object) does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The NodeClass or account is misconfigured; retrying will not help until a human acts.
    #[error("configuration error: {reason}")]
    Config {
        /// What is wrong, naming the selector or setting.
        reason: String,
    },
    /// Anything else (network, 5xx, unexpected replies).
    #[error("cloud error: {0}")]
    Other(String),
}

impl CloudError {
    /// Whether the same call may succeed if simply retried later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, CloudError::Throttled | CloudError::Other(_))
    }
}

/// The lifecycle state of an instance as the cloud reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum InstanceState {
    /// Booting.
    Pending,
    /// Up.
    Running,
    /// Being stopped or terminated.
    ShuttingDown,
    /// Gone (stays visible in EC2 for about an hour).
    Terminated,
    /// Stopped or stopping.
    Stopped,
}

impl InstanceState {
    /// Whether the instance still costs money and still needs an owner.
    pub fn is_alive(self) -> bool {
        matches!(self, InstanceState::Pending | InstanceState::Running)
    }
}

/// An instance Gantry launched, as the cloud describes it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Instance {
    /// `aws:///<zone>/<instance-id>`, the Node's `spec.providerID`.
    pub provider_id: String,
    /// `i-0123…`.
    pub instance_id: String,
    /// Instance type.
    pub instance_type: String,
    /// Zone.
    pub zone: String,
    /// Spot or on-demand.
    pub capacity_type: CapacityType,
    /// Lifecycle state.
    pub state: InstanceState,
    /// The `gantry.dev/nodeclaim` tag: the owner.
    pub nodeclaim: Option<String>,
    /// The `gantry.dev/nodepool` tag.
    pub nodepool: Option<String>,
    /// AMI.
    pub image_id: Option<String>,
    /// Hourly price paid, where known.
    pub price: Option<f64>,
    /// Launch time, seconds since the epoch, for GC grace periods.
    pub launch_time_unix: Option<i64>,
}

/// Builds the provider ID Kubernetes nodes carry on AWS.
pub fn provider_id(zone: &str, instance_id: &str) -> String {
    format!("aws:///{zone}/{instance_id}")
}

/// Extracts the instance id from a provider ID (`aws:///us-east-1a/i-0abc` → `i-0abc`).
pub fn instance_id_from_provider_id(provider_id: &str) -> Option<&str> {
    let id = provider_id.rsplit('/').next()?;
    id.starts_with("i-").then_some(id)
}

/// Everything Gantry asks of a cloud. Mirrors Karpenter's CloudProvider, with typed errors.
///
/// # Guarantees
/// `create` is idempotent per NodeClaim: calling it twice for the same claim (for example after a
/// crash) returns the instance already launched for it rather than launching another.
#[async_trait::async_trait]
pub trait CloudProvider: Send + Sync {
    /// Launches one instance for the claim, choosing among the offerings its requirements allow.
    ///
    /// # Errors
    /// `InsufficientCapacity` names the offerings that failed, so the caller can back them off
    /// and re-plan; `Config` means the NodeClass cannot launch anything.
    async fn create(
        &self,
        claim: &NodeClaim,
        node_class: &EC2NodeClass,
    ) -> Result<Instance, CloudError>;

    /// Terminates an instance. Not-found counts as success.
    ///
    /// # Errors
    /// Throttling or transport failures, which the caller retries.
    async fn delete(&self, provider_id: &str) -> Result<(), CloudError>;

    /// Describes one instance.
    ///
    /// # Errors
    /// `NotFound` when the cloud has no such instance.
    async fn get(&self, provider_id: &str) -> Result<Instance, CloudError>;

    /// Every live instance tagged as owned by this cluster, for garbage collection.
    ///
    /// # Errors
    /// Transport or API failures.
    async fn list(&self) -> Result<Vec<Instance>, CloudError>;

    /// Deletes what launches left behind that nothing needs any more (on EC2, launch templates
    /// idle past their grace), so NodeClass and AMI churn never piles up against cloud quotas.
    /// Returns how many were deleted.
    ///
    /// # Errors
    /// Transport or API failures; the next garbage-collection pass tries again.
    async fn collect_unused(&self) -> Result<usize, CloudError> {
        Ok(0)
    }

    /// The instance types and offerings this cloud sells, with current availability.
    ///
    /// # Errors
    /// Transport or API failures.
    async fn catalog(&self) -> Result<Arc<Catalog>, CloudError>;
}
