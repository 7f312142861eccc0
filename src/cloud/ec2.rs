//! The EC2 cloud provider, over aws-sdk-ec2.
//!
//! ```text
//! create(claim) ─▶ adopt an instance already tagged with the claim's UID? ─yes─▶ return it
//!                  │ no
//!                  ▼
//!   resolve NodeClass (subnets, SGs, AMIs) ─▶ candidates (claim ∩ catalog − back-off ∩ subnet zones)
//!                  ▼
//!   per attempt: one capacity type, ≤60 types × zones ─▶ launch template(s) ─▶ CreateFleet instant
//!        capacity errors ─▶ back off those offerings, retry the rest at once
//!        throttling / 5xx ─▶ back off with jitter, adopt-check, retry (bounded)
//! ```
//!
//! Calls go through the SDK's standard retry (throttling and transient errors, exponential
//! back-off with jitter; adaptive on request) and a timeout on every attempt, except
//! CreateFleet, whose retries are Gantry's own (see `fleet`): the SDK would retry an HTTP 500
//! `InsufficientInstanceCapacity` on the same offering instead of falling back.

pub mod catalog;
pub mod errors;
pub mod fleet;
pub mod launch_template;
pub mod nodeclass;
pub mod userdata;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_ec2::config::retry::{RetryConfig, RetryPartition};
use aws_sdk_ec2::config::timeout::TimeoutConfig;
use aws_sdk_ec2::config::{BehaviorVersion, Region};
use aws_sdk_ec2::types::{Filter, InstanceLifecycleType, InstanceStateName};
use moka::future::Cache;

use self::catalog::{SpotPrices, TypeTable, compose};
use self::errors::{ErrorClass, classify, to_cloud_error};
use self::nodeclass::ResolvedNodeClass;
use super::backoff::OfferingBackoff;
use super::{CloudError, CloudProvider, Instance, InstanceState, instance_id_from_provider_id};
use crate::kube::crd::{EC2NodeClass, NodeClaim};
use crate::model::labels::{CAPACITY_TYPE, NODECLAIM, NODEPOOL};
use crate::model::{CapacityType, Catalog};

/// Tag holding the NodeClaim UID: what adoption after a crash looks up (names can be reused).
pub const TAG_NODECLAIM_UID: &str = "gantry.dev/nodeclaim-uid";
/// Tag naming the EC2NodeClass an instance or template was made for.
pub const TAG_NODECLASS: &str = "gantry.dev/ec2nodeclass";

/// Every EC2 API action the provider calls; `manifests/iam-policy.json` grants exactly these plus
/// the two that CreateFleet needs implicitly (`RunInstances`, `CreateTags` at creation).
pub const API_ACTIONS: &[&str] = &[
    "CreateFleet",
    "CreateLaunchTemplate",
    "DescribeImages",
    "DescribeInstanceTypeOfferings",
    "DescribeInstanceTypes",
    "DescribeInstances",
    "DescribeLaunchTemplates",
    "DescribeSecurityGroups",
    "DescribeSpotPriceHistory",
    "DescribeSubnets",
    "DeleteLaunchTemplate",
    "TerminateInstances",
];

/// How long types and zones are cached.
pub const TYPES_TTL: Duration = Duration::from_secs(60 * 60);
/// How long spot prices are cached.
pub const SPOT_PRICES_TTL: Duration = Duration::from_secs(5 * 60);
/// Default for [`Ec2Config::launch_template_idle`]: far longer than any launch holds a template id.
pub const LAUNCH_TEMPLATE_IDLE: Duration = Duration::from_secs(30 * 60);
/// How long a resolved NodeClass is reused before its selectors are looked up again.
pub const NODECLASS_TTL: Duration = Duration::from_secs(60);

/// Everything the EC2 provider needs, built from flags by the caller (tests build it directly).
#[derive(Debug, Clone, PartialEq)]
pub struct Ec2Config {
    /// AWS region.
    pub region: String,
    /// Endpoint override (moto, VPC endpoints); `None` uses the SDK's resolution.
    pub endpoint: Option<String>,
    /// EKS cluster name: the ownership tag and NodeConfig.
    pub cluster_name: String,
    /// API server URL for NodeConfig.
    pub cluster_endpoint: String,
    /// Cluster CA (base64 PEM) for NodeConfig.
    pub cluster_ca: String,
    /// Service CIDR for NodeConfig, when set.
    pub cluster_cidr: Option<String>,
    /// Timeout of one HTTP attempt.
    pub attempt_timeout: Duration,
    /// Timeout of one call including the SDK's retries.
    pub call_timeout: Duration,
    /// SDK attempts per call (throttling and transient errors, exponential back-off with jitter).
    pub max_attempts: u32,
    /// Use the SDK's adaptive retry (a client-side rate limiter) instead of standard retry.
    /// Off by default: after one throttled burst the limiter drops to its floor of 0.5 requests
    /// per second at Gantry's low call rate, which stalled calls for 18–20 s in the moto tests.
    pub adaptive_retry: bool,
    /// First back-off of the SDK's retry and of the launch path's own throttling retry.
    pub initial_backoff: Duration,
    /// How many throttled or transient CreateFleet replies the launch path retries.
    pub launch_retries: u32,
    /// Page size for DescribeInstances (EC2 allows 5–1000).
    pub page_size: i32,
    /// How long a launch template may go unused (by this process) and unmodified before garbage
    /// collection deletes it; a later launch that needs it creates it again.
    pub launch_template_idle: Duration,
}

impl Ec2Config {
    /// Defaults for a region and cluster; the NodeConfig fields start empty.
    pub fn new(region: &str, cluster_name: &str) -> Ec2Config {
        Ec2Config {
            region: region.to_string(),
            endpoint: None,
            cluster_name: cluster_name.to_string(),
            cluster_endpoint: String::new(),
            cluster_ca: String::new(),
            cluster_cidr: None,
            attempt_timeout: Duration::from_secs(20),
            call_timeout: Duration::from_secs(60),
            max_attempts: 3,
            adaptive_retry: false,
            initial_backoff: Duration::from_millis(500),
            launch_retries: 3,
            page_size: 1000,
            launch_template_idle: LAUNCH_TEMPLATE_IDLE,
        }
    }

    /// `kubernetes.io/cluster/<name>`, valued `owned` on everything Gantry creates.
    pub fn cluster_tag_key(&self) -> String {
        format!("kubernetes.io/cluster/{}", self.cluster_name)
    }

    /// Applies region, endpoint, retry and timeouts to an SDK config builder.
    pub fn apply(&self, builder: aws_sdk_ec2::config::Builder) -> aws_sdk_ec2::config::Builder {
        let mut b = builder
            .region(Region::new(self.region.clone()))
            .retry_config(
                if self.adaptive_retry {
                    RetryConfig::adaptive()
                } else {
                    RetryConfig::standard()
                }
                .with_max_attempts(self.max_attempts.max(1))
                .with_initial_backoff(self.initial_backoff),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .operation_attempt_timeout(self.attempt_timeout)
                    .operation_timeout(self.call_timeout)
                    .connect_timeout(Duration::from_secs(5))
                    .build(),
            );
        if let Some(endpoint) = &self.endpoint {
            b = b.endpoint_url(endpoint);
        }
        b
    }

    /// An SDK config builder with no credentials yet (tests add static ones).
    pub fn sdk_builder(&self) -> aws_sdk_ec2::config::Builder {
        self.apply(aws_sdk_ec2::config::Builder::new().behavior_version(BehaviorVersion::latest()))
    }
}

/// The EC2 implementation of [`CloudProvider`].
#[derive(Clone)]
pub struct Ec2Provider {
    client: aws_sdk_ec2::Client,
    config: Ec2Config,
    backoff: OfferingBackoff,
    types: Cache<(), Arc<TypeTable>>,
    spot_prices: Cache<(), Arc<SpotPrices>>,
    node_classes: Cache<String, Arc<ResolvedNodeClass>>,
    launch_templates: Cache<String, String>,
    /// When this process last handed out each template (by name), so GC spares templates in use.
    template_use: Arc<std::sync::Mutex<HashMap<String, Instant>>>,
}

impl std::fmt::Debug for Ec2Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ec2Provider")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Ec2Provider {
    /// Connects with the SDK's default credential chain (env, IRSA web identity, instance role).
    pub async fn connect(config: Ec2Config) -> Ec2Provider {
        let shared = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(config.region.clone()))
            .load()
            .await;
        let client = aws_sdk_ec2::Client::from_conf(
            config
                .apply(aws_sdk_ec2::config::Builder::from(&shared))
                .build(),
        );
        Ec2Provider::new(client, config)
    }

    /// Wraps a client the caller built (tests use static credentials and their own retry partition).
    pub fn new(client: aws_sdk_ec2::Client, config: Ec2Config) -> Ec2Provider {
        Ec2Provider {
            client,
            config,
            backoff: OfferingBackoff::new(),
            types: Cache::builder()
                .max_capacity(1)
                .time_to_live(TYPES_TTL)
                .build(),
            spot_prices: Cache::builder()
                .max_capacity(1)
                .time_to_live(SPOT_PRICES_TTL)
                .build(),
            node_classes: Cache::builder()
                .max_capacity(256)
                .time_to_live(NODECLASS_TTL)
                .build(),
            launch_templates: Cache::builder()
                .max_capacity(1024)
                .time_to_live(TYPES_TTL)
                .build(),
            template_use: Arc::default(),
        }
    }

    /// A client with static credentials and a private retry partition, for tests and moto.
    pub fn with_static_credentials(config: Ec2Config, partition: &str) -> Ec2Provider {
        let conf = config
            .sdk_builder()
            .credentials_provider(aws_sdk_ec2::config::Credentials::new(
                "testing", "testing", None, None, "static",
            ))
            .retry_partition(RetryPartition::new(partition.to_string()))
            .build();
        Ec2Provider::new(aws_sdk_ec2::Client::from_conf(conf), config)
    }

    /// Shares another provider's catalog caches (types, zones, spot prices), so several
    /// providers against one account and region load the 1,000-type catalog once.
    pub fn share_catalog_cache(&mut self, from: &Ec2Provider) {
        self.types = from.types.clone();
        self.spot_prices = from.spot_prices.clone();
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &Ec2Config {
        &self.config
    }

    /// The insufficient-capacity back-off table (the launcher and tests read it).
    pub fn backoff(&self) -> &OfferingBackoff {
        &self.backoff
    }

    /// The raw SDK client, for tests that set up fixtures.
    pub fn client(&self) -> &aws_sdk_ec2::Client {
        &self.client
    }

    /// Resolves a NodeClass, reusing a resolution of the same spec for [`NODECLASS_TTL`].
    ///
    /// # Errors
    /// As [`Ec2Provider::resolve_node_class`].
    pub async fn resolved_node_class(
        &self,
        node_class: &EC2NodeClass,
    ) -> Result<Arc<ResolvedNodeClass>, CloudError> {
        let key = format!(
            "{}/{}",
            node_class.metadata.name.as_deref().unwrap_or_default(),
            serde_json::to_string(&node_class.spec).unwrap_or_default()
        );
        self.node_classes
            .try_get_with(key, async {
                self.resolve_node_class(node_class).await.map(Arc::new)
            })
            .await
            .map_err(|e| clone_error(&e))
    }

    /// Looks up a live instance tagged with this NodeClaim UID (adoption after a crash).
    ///
    /// # Errors
    /// API failures.
    pub async fn find_by_claim(&self, uid: &str) -> Result<Option<Instance>, CloudError> {
        let found = self
            .describe(vec![
                Filter::builder()
                    .name(format!("tag:{TAG_NODECLAIM_UID}"))
                    .values(uid)
                    .build(),
                Filter::builder()
                    .name(format!("tag:{}", self.config.cluster_tag_key()))
                    .values("owned")
                    .build(),
                Filter::builder()
                    .name("instance-state-name")
                    .values("pending")
                    .values("running")
                    .build(),
            ])
            .await?;
        Ok(found.into_iter().next())
    }

    async fn describe(&self, filters: Vec<Filter>) -> Result<Vec<Instance>, CloudError> {
        let reservations = self
            .client
            .describe_instances()
            .set_filters(Some(filters))
            .max_results(self.config.page_size)
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(to_cloud_error("describe instances"))?;
        let mut out: Vec<Instance> = reservations
            .iter()
            .flat_map(|r| r.instances())
            .filter_map(to_instance)
            .collect();
        out.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
        Ok(out)
    }

    async fn type_table(&self) -> Result<Arc<TypeTable>, CloudError> {
        self.types
            .try_get_with((), self.load_type_table())
            .await
            .map_err(|e| clone_error(&e))
    }

    async fn spot_price_table(&self) -> Result<Arc<SpotPrices>, CloudError> {
        self.spot_prices
            .try_get_with((), self.load_spot_prices())
            .await
            .map_err(|e| clone_error(&e))
    }
}

/// Rebuilds a `CloudError` shared by a moka loader (the error type is not `Clone`).
fn clone_error(e: &CloudError) -> CloudError {
    match e {
        CloudError::InsufficientCapacity { offerings } => CloudError::InsufficientCapacity {
            offerings: offerings.clone(),
        },
        CloudError::Throttled => CloudError::Throttled,
        CloudError::NotFound(s) => CloudError::NotFound(s.clone()),
        CloudError::Config { reason } => CloudError::Config {
            reason: reason.clone(),
        },
        CloudError::Other(s) => CloudError::Other(s.clone()),
    }
}

/// Converts an EC2 instance description; `None` without an id.
pub fn to_instance(i: &aws_sdk_ec2::types::Instance) -> Option<Instance> {
    let instance_id = i.instance_id()?.to_string();
    let zone = i
        .placement()
        .and_then(|p| p.availability_zone())
        .unwrap_or_default()
        .to_string();
    let tag = |key: &str| {
        i.tags()
            .iter()
            .find(|t| t.key() == Some(key))
            .and_then(|t| t.value())
            .map(ToString::to_string)
    };
    let capacity_type = match i.instance_lifecycle() {
        Some(InstanceLifecycleType::Spot) => CapacityType::Spot,
        _ => tag(CAPACITY_TYPE)
            .and_then(|c| CapacityType::parse(&c))
            .unwrap_or(CapacityType::OnDemand),
    };
    let state = match i.state().and_then(|s| s.name()) {
        Some(InstanceStateName::Pending) => InstanceState::Pending,
        Some(InstanceStateName::Running) => InstanceState::Running,
        Some(InstanceStateName::ShuttingDown) => InstanceState::ShuttingDown,
        Some(InstanceStateName::Terminated) => InstanceState::Terminated,
        _ => InstanceState::Stopped,
    };
    Some(Instance {
        provider_id: super::provider_id(&zone, &instance_id),
        instance_id,
        instance_type: i
            .instance_type()
            .map(|t| t.as_str().to_string())
            .unwrap_or_default(),
        zone,
        capacity_type,
        state,
        nodeclaim: tag(NODECLAIM),
        nodepool: tag(NODEPOOL),
        image_id: i.image_id().map(ToString::to_string),
        price: None,
        launch_time_unix: i.launch_time().map(|t| t.secs()),
    })
}

#[async_trait::async_trait]
impl CloudProvider for Ec2Provider {
    #[tracing::instrument(skip_all, fields(nodeclaim = claim.metadata.name.as_deref().unwrap_or_default()))]
    async fn create(
        &self,
        claim: &NodeClaim,
        node_class: &EC2NodeClass,
    ) -> Result<Instance, CloudError> {
        self.launch(claim, node_class).await
    }

    #[tracing::instrument(skip(self))]
    async fn delete(&self, provider_id: &str) -> Result<(), CloudError> {
        let id = instance_id_from_provider_id(provider_id).ok_or_else(|| CloudError::Config {
            reason: format!("provider id {provider_id:?} names no instance"),
        })?;
        match self
            .client
            .terminate_instances()
            .instance_ids(id)
            .send()
            .await
        {
            Ok(_) => {
                tracing::info!(instance.id = id, "terminated instance");
                Ok(())
            }
            Err(e) => {
                let c = classify(&e);
                if c.class == ErrorClass::NotFound {
                    Ok(())
                } else {
                    Err(c.into_cloud_error("terminate instances"))
                }
            }
        }
    }

    #[tracing::instrument(skip(self))]
    async fn get(&self, provider_id: &str) -> Result<Instance, CloudError> {
        let id = instance_id_from_provider_id(provider_id)
            .ok_or_else(|| CloudError::NotFound(provider_id.to_string()))?;
        let out = self
            .client
            .describe_instances()
            .instance_ids(id)
            .send()
            .await
            .map_err(to_cloud_error("describe instances"))?;
        out.reservations()
            .iter()
            .flat_map(|r| r.instances())
            .filter_map(to_instance)
            .find(|i| i.state != InstanceState::Terminated)
            .ok_or_else(|| CloudError::NotFound(provider_id.to_string()))
    }

    #[tracing::instrument(skip(self))]
    async fn list(&self) -> Result<Vec<Instance>, CloudError> {
        self.describe(vec![
            Filter::builder()
                .name(format!("tag:{}", self.config.cluster_tag_key()))
                .values("owned")
                .build(),
            Filter::builder().name("tag-key").values(NODECLAIM).build(),
            Filter::builder()
                .name("instance-state-name")
                .values("pending")
                .values("running")
                .values("stopping")
                .values("stopped")
                .build(),
        ])
        .await
    }

    async fn collect_unused(&self) -> Result<usize, CloudError> {
        self.collect_launch_templates().await
    }

    #[tracing::instrument(skip(self))]
    async fn catalog(&self) -> Result<Arc<Catalog>, CloudError> {
        let types = self.type_table().await?;
        let spot = self.spot_price_table().await?;
        let mut catalog = compose(&types, &spot, &self.config.region);
        self.backoff.apply(&mut catalog, std::time::Instant::now());
        Ok(Arc::new(catalog))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn iam_policy_grants_exactly_the_actions_used() {
        let text = include_str!("../../manifests/iam-policy.json");
        let policy: serde_json::Value = serde_json::from_str(text).unwrap();
        let mut granted = BTreeSet::new();
        for st in policy["Statement"].as_array().unwrap() {
            match &st["Action"] {
                serde_json::Value::String(a) => {
                    granted.insert(a.clone());
                }
                serde_json::Value::Array(list) => {
                    granted.extend(list.iter().map(|a| a.as_str().unwrap().to_string()));
                }
                other => panic!("{other}"),
            }
        }
        let mut expected: BTreeSet<String> =
            API_ACTIONS.iter().map(|a| format!("ec2:{a}")).collect();
        expected.insert("ec2:RunInstances".to_string());
        expected.insert("ec2:CreateTags".to_string());
        expected.insert("iam:PassRole".to_string());
        expected.extend(
            crate::disruption::sqs::API_ACTIONS
                .iter()
                .map(|a| format!("sqs:{a}")),
        );
        assert_eq!(granted, expected);
        // Mutating actions carry tag conditions; the queue's statement is scoped to its ARN.
        for st in policy["Statement"].as_array().unwrap() {
            let sid = st["Sid"].as_str().unwrap();
            if sid == "GantryInterruptionQueue" {
                assert!(st["Resource"].as_str().unwrap().contains(":sqs:"), "{sid}");
            } else if sid != "GantryLaunchFromSharedResources" {
                assert!(st.get("Condition").is_some(), "{sid} has no condition");
            }
        }
    }
}
