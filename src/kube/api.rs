//! The writes the loops make to the cluster, behind a trait: `KubeCluster` talks to the API
//! server, `SimCluster` (in `sim/`) to the in-process simulation. Reads come from snapshots.

use std::collections::BTreeMap;

use thiserror::Error;

use super::crd::{NodeClaim, NodeClaimStatus};
use crate::model::Taint;

/// Why a cluster write failed, classified for the caller's retry decision.
#[derive(Debug, Error)]
pub enum ClusterError {
    /// The object does not exist (already deleted counts as done for deletes).
    #[error("not found: {0}")]
    NotFound(String),
    /// The object already exists.
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// Optimistic concurrency lost; re-read and retry.
    #[error("conflict on {0}")]
    Conflict(String),
    /// An eviction was refused because it would violate a PodDisruptionBudget (HTTP 429).
    #[error("eviction of {0} refused by a pod disruption budget")]
    Blocked(String),
    /// Anything else: transport, authorization, server errors.
    #[error("api error: {0}")]
    Api(String),
}

/// A change to a Node's labels and taints.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodePatch {
    /// Labels to set.
    pub labels: BTreeMap<String, String>,
    /// Taints to add (if absent).
    pub add_taints: Vec<Taint>,
    /// Taint keys to remove.
    pub remove_taints: Vec<String>,
}

/// An event to record on a pod or a NodeClaim, for `kubectl describe`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord {
    /// `Pod` or `NodeClaim`.
    pub kind: &'static str,
    /// Namespace (empty for cluster-scoped objects).
    pub namespace: String,
    /// Object name.
    pub name: String,
    /// Object UID.
    pub uid: String,
    /// `Normal` or `Warning`.
    pub type_: &'static str,
    /// CamelCase reason, e.g. `Launched`.
    pub reason: &'static str,
    /// Human-readable message.
    pub message: String,
}

/// Every write the provisioner, lifecycle and disruption loops make.
///
/// # Guarantees
/// Implementations make each call idempotent where Kubernetes allows it: deleting something
/// already gone succeeds, removing a taint that is absent succeeds.
#[async_trait::async_trait]
pub trait ClusterApi: Send + Sync {
    /// Creates a NodeClaim (with the termination finalizer) and returns it with its UID.
    ///
    /// # Errors
    /// `AlreadyExists` if the name is taken; `Api` otherwise.
    async fn create_nodeclaim(&self, claim: &NodeClaim) -> Result<NodeClaim, ClusterError>;

    /// Replaces a NodeClaim's status.
    ///
    /// # Errors
    /// `NotFound` if it is gone.
    async fn update_nodeclaim_status(
        &self,
        name: &str,
        status: &NodeClaimStatus,
    ) -> Result<(), ClusterError>;

    /// Requests deletion; with the finalizer present the object stays until it is removed.
    ///
    /// # Errors
    /// Transport failures (a missing object counts as deleted).
    async fn delete_nodeclaim(&self, name: &str) -> Result<(), ClusterError>;

    /// Removes the termination finalizer, letting a deleted NodeClaim go.
    ///
    /// # Errors
    /// Transport failures (a missing object counts as done).
    async fn remove_nodeclaim_finalizer(&self, name: &str) -> Result<(), ClusterError>;

    /// Changes a Node's labels and taints.
    ///
    /// # Errors
    /// `NotFound` if the node is gone.
    async fn patch_node(&self, name: &str, patch: &NodePatch) -> Result<(), ClusterError>;

    /// Deletes a Node object.
    ///
    /// # Errors
    /// Transport failures (a missing object counts as deleted).
    async fn delete_node(&self, name: &str) -> Result<(), ClusterError>;

    /// Evicts a pod through the Eviction API, which honours PodDisruptionBudgets.
    ///
    /// # Errors
    /// `Blocked` when a budget refuses (HTTP 429): back off and retry.
    async fn evict_pod(&self, namespace: &str, name: &str) -> Result<(), ClusterError>;

    /// Records an event; failures are logged, never fatal.
    async fn record_event(&self, event: EventRecord);
}
