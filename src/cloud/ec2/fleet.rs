//! The launch path: adopt-or-launch, with CreateFleet `instant` and Gantry's own retry rules.
//!
//! # Guarantees
//! - At most one instance per NodeClaim UID: before the first launch and before every retry of a
//!   request whose outcome is unknown (throttling, 5xx, timeout), an instance tagged with the UID is
//!   looked up and adopted. moto ignores `ClientToken`, so the tag lookup is what the tests rely on;
//!   on real EC2 the token adds a second guard.
//! - A capacity failure never retries the same offering: those offerings are backed off and the
//!   next attempt, sent at once, offers only the rest (spot first, then on-demand).
//! - Extra instances in a reply (never expected with target capacity 1) are terminated, not leaked.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant};

use aws_sdk_ec2::config::retry::RetryConfig;
use aws_sdk_ec2::operation::create_fleet::CreateFleetOutput;
use aws_sdk_ec2::types::{
    DefaultTargetCapacityType, FleetLaunchTemplateConfigRequest,
    FleetLaunchTemplateOverridesRequest, FleetLaunchTemplateSpecificationRequest,
    FleetOnDemandAllocationStrategy, FleetType, InstanceLifecycle, OnDemandOptionsRequest,
    ResourceType, SpotAllocationStrategy, SpotOptionsRequest, Tag, TagSpecification,
    TargetCapacitySpecificationRequest,
};

use super::errors::{ErrorClass, classify, classify_code};
use super::launch_template::{is_missing_template, launch_template_spec};
use super::nodeclass::ResolvedNodeClass;
use super::{Ec2Provider, TAG_NODECLAIM_UID, TAG_NODECLASS};
use crate::cloud::candidates::{
    Candidate, LaunchOptions, attempt_capacity_type, attempt_offerings, candidates,
};
use crate::cloud::{CloudError, CloudProvider as _, Instance, InstanceState, provider_id};
use crate::kube::crd::{EC2NodeClass, NodeClaim};
use crate::model::labels::{CAPACITY_TYPE, NODECLAIM, NODEPOOL};
use crate::model::{Arch, CapacityType, OfferingKey};

/// Upper bound on CreateFleet calls for one `create`, whatever happens.
const MAX_FLEET_CALLS: u32 = 8;
/// Longest wait between launch retries.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(20);

/// What one CreateFleet call came to.
#[derive(Debug)]
enum FleetOutcome {
    /// An instance, plus offerings that failed on the way.
    Launched {
        instance: Instance,
        capacity_failures: Vec<OfferingKey>,
    },
    /// No instance; these offerings have no capacity.
    CapacityFailed(Vec<OfferingKey>),
    /// The outcome is unknown or rate-limited: adopt-check, wait, retry the same request.
    Retry(CloudError),
    /// EC2 saw this token with other parameters: send the next request under a fresh token.
    TokenReused,
    /// Retrying cannot help.
    Fatal(CloudError),
}

/// The delay before launch retry `n` (1-based): exponential from `initial`, with jitter in
/// [50%, 100%] so replicas and claims do not retry in lockstep.
pub fn retry_delay(initial: Duration, n: u32) -> Duration {
    let base = initial
        .saturating_mul(1u32 << n.saturating_sub(1).min(16))
        .min(MAX_RETRY_DELAY);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(n);
    let frac = (h.finish() % 1000) as f64 / 1000.0;
    base.mul_f64(0.5 + 0.5 * frac)
}

/// The instance, volume and fleet tags of a launch (DESIGN.md §5), NodeClass tags first so
/// Gantry's own cannot be overridden.
pub fn launch_tags(
    cluster_tag_key: &str,
    claim: &NodeClaim,
    uid: &str,
    node_class: &EC2NodeClass,
    capacity_type: CapacityType,
) -> BTreeMap<String, String> {
    let name = claim.metadata.name.clone().unwrap_or_default();
    let pool = claim
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(NODEPOOL))
        .cloned()
        .unwrap_or_default();
    let mut tags = node_class.spec.tags.clone();
    tags.insert(cluster_tag_key.to_string(), "owned".to_string());
    tags.insert(NODECLAIM.to_string(), name.clone());
    tags.insert(TAG_NODECLAIM_UID.to_string(), uid.to_string());
    tags.insert(NODEPOOL.to_string(), pool.clone());
    tags.insert(
        TAG_NODECLASS.to_string(),
        node_class.metadata.name.clone().unwrap_or_default(),
    );
    tags.insert(
        CAPACITY_TYPE.to_string(),
        capacity_type.as_str().to_string(),
    );
    tags.insert("Name".to_string(), format!("{pool}/{name}"));
    tags
}

fn tag_spec(resource: ResourceType, tags: &BTreeMap<String, String>) -> TagSpecification {
    tags.iter()
        .fold(
            TagSpecification::builder().resource_type(resource),
            |b, (k, v)| b.tags(Tag::builder().key(k).value(v).build()),
        )
        .build()
}

/// Everything one CreateFleet attempt needs besides the client.
struct Attempt<'a> {
    claim: &'a NodeClaim,
    uid: &'a str,
    node_class: &'a EC2NodeClass,
    resolved: &'a ResolvedNodeClass,
    subnets: &'a BTreeMap<String, String>,
    capacity_type: CapacityType,
    offerings: Vec<Candidate>,
    token: String,
}

impl Ec2Provider {
    /// `CloudProvider::create` for EC2; see the module docs for the guarantees.
    pub(super) async fn launch(
        &self,
        claim: &NodeClaim,
        node_class: &EC2NodeClass,
    ) -> Result<Instance, CloudError> {
        let uid = claim
            .metadata
            .uid
            .as_deref()
            .filter(|u| !u.is_empty())
            .ok_or_else(|| CloudError::Config {
                reason: "nodeclaim has no uid (persist it before launching)".to_string(),
            })?;
        if let Some(found) = self.find_by_claim(uid).await? {
            tracing::info!(instance.id = %found.instance_id, "adopted instance already launched for the claim");
            return Ok(found);
        }
        let resolved = self.resolved_node_class(node_class).await?;
        let catalog = self.catalog().await?;
        let subnets = resolved.subnet_per_zone();
        let opts = LaunchOptions::from_claim(claim);
        let mut cands: Vec<Candidate> = candidates(&opts, &catalog, &|z| subnets.contains_key(z))
            .into_iter()
            .filter(|c| resolved.ami_for(c.arch).is_some())
            .collect();
        if cands.is_empty() {
            return Err(self.nothing_to_launch(&opts, &subnets));
        }

        let mut failed: Vec<OfferingKey> = Vec::new();
        let mut retries = 0u32;
        let mut token_generation = 1u32;
        let mut last_offerings: Option<Vec<OfferingKey>> = None;
        for _ in 0..MAX_FLEET_CALLS {
            let Some(capacity_type) = attempt_capacity_type(&cands) else {
                break;
            };
            let offerings = attempt_offerings(&cands, capacity_type);
            let keys: Vec<OfferingKey> = offerings.iter().map(|c| c.key.clone()).collect();
            // A different request needs a different token (EC2 rejects a reused token with
            // different parameters); a retry of the same request keeps it.
            if last_offerings.as_ref().is_some_and(|prev| *prev != keys) {
                token_generation += 1;
            }
            last_offerings = Some(keys.clone());
            let token = if token_generation == 1 {
                uid.to_string()
            } else {
                format!("{uid}-{token_generation}")
            };
            let attempt = Attempt {
                claim,
                uid,
                node_class,
                resolved: &resolved,
                subnets: &subnets,
                capacity_type,
                offerings,
                token,
            };
            match self.create_fleet_once(&attempt).await {
                FleetOutcome::Launched {
                    instance,
                    capacity_failures,
                } => {
                    self.record_failures(&capacity_failures);
                    self.backoff.record_success(&OfferingKey {
                        instance_type: instance.instance_type.clone(),
                        zone: instance.zone.clone(),
                        capacity_type: instance.capacity_type,
                    });
                    tracing::info!(
                        instance.id = %instance.instance_id,
                        instance.type = %instance.instance_type,
                        zone = %instance.zone,
                        capacity_type = %instance.capacity_type,
                        "launched instance"
                    );
                    return Ok(instance);
                }
                FleetOutcome::CapacityFailed(mut bad) => {
                    // Attribute to the whole attempt when EC2 named nothing we offered, so each
                    // round removes something and the loop ends.
                    if !bad.iter().any(|k| keys.contains(k)) {
                        bad = keys.clone();
                    }
                    self.record_failures(&bad);
                    tracing::warn!(
                        offerings = bad.len(),
                        "insufficient capacity; falling back to other offerings"
                    );
                    let bad_set: BTreeSet<&OfferingKey> = bad.iter().collect();
                    cands.retain(|c| !bad_set.contains(&c.key));
                    for k in bad {
                        if !failed.contains(&k) {
                            failed.push(k);
                        }
                    }
                }
                FleetOutcome::TokenReused => {
                    token_generation += 1;
                    retries += 1;
                    if retries > self.config.launch_retries {
                        return Err(CloudError::Other(
                            "client token reused with different parameters".to_string(),
                        ));
                    }
                }
                FleetOutcome::Retry(err) => {
                    retries += 1;
                    if retries > self.config.launch_retries {
                        return Err(err);
                    }
                    let delay = retry_delay(self.config.initial_backoff, retries);
                    tracing::warn!(error = %err, retry = retries, delay_ms = delay.as_millis() as u64, "create fleet failed; retrying");
                    tokio::time::sleep(delay).await;
                    // The failed call may have launched before its reply was lost.
                    if let Some(found) = self.find_by_claim(uid).await? {
                        tracing::info!(instance.id = %found.instance_id, "adopted instance launched by an earlier attempt");
                        return Ok(found);
                    }
                }
                FleetOutcome::Fatal(err) => return Err(err),
            }
        }
        Err(CloudError::InsufficientCapacity { offerings: failed })
    }

    fn record_failures(&self, keys: &[OfferingKey]) {
        let now = Instant::now();
        for k in keys {
            let hold = self.backoff.record_failure(k, now);
            tracing::debug!(offering = %k, hold_s = hold.as_secs(), "offering backed off");
        }
    }

    /// Why nothing could be offered: everything allowed is backed off (capacity), or nothing
    /// matches at all (configuration).
    fn nothing_to_launch(
        &self,
        opts: &LaunchOptions,
        subnets: &BTreeMap<String, String>,
    ) -> CloudError {
        let held: Vec<OfferingKey> = self
            .backoff
            .backed_off(Instant::now())
            .into_iter()
            .filter(|k| opts.allows(k) && subnets.contains_key(&k.zone))
            .collect();
        if held.is_empty() {
            CloudError::Config {
                reason: format!(
                    "no offering matches the claim's instance types, zones and capacity types in the nodeclass's subnet zones ({})",
                    subnets.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            }
        } else {
            CloudError::InsufficientCapacity { offerings: held }
        }
    }

    async fn create_fleet_once(&self, a: &Attempt<'_>) -> FleetOutcome {
        // One launch template per architecture among the offered types.
        let archs: BTreeSet<&'static str> = a.offerings.iter().map(|c| c.arch.as_str()).collect();
        let mut configs = Vec::new();
        let mut priority = 0u32;
        for arch_name in archs {
            let Some(arch) = Arch::parse(arch_name) else {
                continue;
            };
            let spec = match launch_template_spec(
                &self.config,
                a.node_class,
                a.resolved,
                a.claim,
                a.capacity_type,
                arch,
            ) {
                Ok(s) => s,
                Err(e) => return FleetOutcome::Fatal(e),
            };
            let lt_id = match self.ensure_launch_template(&spec).await {
                Ok(id) => id,
                Err(e @ (CloudError::Throttled | CloudError::Other(_))) => {
                    return FleetOutcome::Retry(e);
                }
                Err(e) => return FleetOutcome::Fatal(e),
            };
            let mut config = FleetLaunchTemplateConfigRequest::builder()
                .launch_template_specification(
                    FleetLaunchTemplateSpecificationRequest::builder()
                        .launch_template_id(lt_id)
                        .version("$Latest")
                        .build(),
                );
            for c in a.offerings.iter().filter(|c| c.arch == arch) {
                let Some(subnet) = a.subnets.get(&c.key.zone) else {
                    continue;
                };
                config = config.overrides(
                    FleetLaunchTemplateOverridesRequest::builder()
                        .instance_type(c.key.instance_type.as_str().into())
                        .subnet_id(subnet)
                        .priority(f64::from(priority))
                        .build(),
                );
                priority += 1;
            }
            configs.push(config.build());
        }
        let tags = launch_tags(
            &self.config.cluster_tag_key(),
            a.claim,
            a.uid,
            a.node_class,
            a.capacity_type,
        );
        let mut req = self
            .client
            .create_fleet()
            .r#type(FleetType::Instant)
            .client_token(&a.token)
            .set_launch_template_configs(Some(configs))
            .target_capacity_specification(
                TargetCapacitySpecificationRequest::builder()
                    .total_target_capacity(1)
                    .default_target_capacity_type(match a.capacity_type {
                        CapacityType::Spot => DefaultTargetCapacityType::Spot,
                        CapacityType::OnDemand => DefaultTargetCapacityType::OnDemand,
                    })
                    .build(),
            )
            .tag_specifications(tag_spec(ResourceType::Instance, &tags))
            .tag_specifications(tag_spec(ResourceType::Volume, &tags))
            .tag_specifications(tag_spec(ResourceType::Fleet, &tags));
        req = match a.capacity_type {
            CapacityType::Spot => req.spot_options(
                SpotOptionsRequest::builder()
                    .allocation_strategy(SpotAllocationStrategy::PriceCapacityOptimized)
                    .build(),
            ),
            CapacityType::OnDemand => req.on_demand_options(
                OnDemandOptionsRequest::builder()
                    .allocation_strategy(FleetOnDemandAllocationStrategy::LowestPrice)
                    .build(),
            ),
        };
        let sent = req
            .customize()
            .config_override(
                aws_sdk_ec2::config::Builder::default().retry_config(RetryConfig::disabled()),
            )
            .send()
            .await;
        match sent {
            Ok(out) => self.read_fleet_reply(a, &out).await,
            Err(e) => {
                let c = classify(&e);
                if c.code.as_deref() == Some("IdempotentParameterMismatch") {
                    return FleetOutcome::TokenReused;
                }
                if let Some(code) = c.code.as_deref().filter(|c| is_missing_template(c)) {
                    return self.template_vanished(code, &c.message);
                }
                match c.class {
                    ErrorClass::Capacity => FleetOutcome::CapacityFailed(
                        a.offerings.iter().map(|o| o.key.clone()).collect(),
                    ),
                    ErrorClass::Throttled => FleetOutcome::Retry(CloudError::Throttled),
                    ErrorClass::Transient => {
                        FleetOutcome::Retry(c.into_cloud_error("create fleet"))
                    }
                    ErrorClass::Config | ErrorClass::NotFound => {
                        FleetOutcome::Fatal(CloudError::Config {
                            reason: format!(
                                "create fleet: {}: {}",
                                c.code.unwrap_or_default(),
                                c.message
                            ),
                        })
                    }
                }
            }
        }
    }

    /// A cached template was deleted (by garbage collection or by hand): forget the cached ids
    /// and retry, which recreates it.
    fn template_vanished(&self, code: &str, message: &str) -> FleetOutcome {
        tracing::warn!(code, message, "launch template is gone; recreating it");
        self.forget_launch_templates();
        FleetOutcome::Retry(CloudError::Other(format!(
            "create fleet: {code}: {message}"
        )))
    }

    async fn read_fleet_reply(&self, a: &Attempt<'_>, out: &CreateFleetOutput) -> FleetOutcome {
        let zone_of_subnet: BTreeMap<&str, &str> = a
            .subnets
            .iter()
            .map(|(z, s)| (s.as_str(), z.as_str()))
            .collect();
        let mut capacity_failures = Vec::new();
        let mut other_errors: Vec<(String, String)> = Vec::new();
        for e in out.errors() {
            let code = e.error_code().unwrap_or("Unknown").to_string();
            let message = e.error_message().unwrap_or_default().to_string();
            if classify_code(&code) == ErrorClass::Capacity {
                let ov = e
                    .launch_template_and_overrides()
                    .and_then(|l| l.overrides());
                let instance_type = ov
                    .and_then(|o| o.instance_type())
                    .map(|t| t.as_str().to_string());
                let zone = ov.and_then(|o| {
                    o.availability_zone()
                        .or_else(|| o.subnet_id().and_then(|s| zone_of_subnet.get(s).copied()))
                });
                let capacity_type = match e.lifecycle() {
                    Some(InstanceLifecycle::Spot) => CapacityType::Spot,
                    Some(InstanceLifecycle::OnDemand) => CapacityType::OnDemand,
                    _ => a.capacity_type,
                };
                match (instance_type, zone) {
                    (Some(instance_type), Some(zone)) => capacity_failures.push(OfferingKey {
                        instance_type,
                        zone: zone.to_string(),
                        capacity_type,
                    }),
                    // An error naming no override: the whole attempt failed.
                    _ => capacity_failures.extend(a.offerings.iter().map(|o| o.key.clone())),
                }
            } else {
                other_errors.push((code, message));
            }
        }
        capacity_failures.sort();
        capacity_failures.dedup();

        let mut launched: Vec<(usize, String)> = Vec::new();
        for (idx, i) in out.instances().iter().enumerate() {
            for id in i.instance_ids() {
                launched.push((idx, id.clone()));
            }
        }
        let mut launched = launched.into_iter();
        if let Some((first_idx, id)) = launched.next() {
            let extra: Vec<String> = launched.map(|(_, id)| id).collect();
            if !extra.is_empty() {
                tracing::error!(extra = ?extra, "fleet launched more than one instance; terminating extras");
                if let Err(e) = self
                    .client
                    .terminate_instances()
                    .set_instance_ids(Some(extra))
                    .send()
                    .await
                {
                    tracing::error!(error = %classify(&e).message, "could not terminate extra instances; GC will");
                }
            }
            let Some(first) = out.instances().get(first_idx) else {
                return FleetOutcome::Retry(CloudError::Other(
                    "fleet reply lost its instance".to_string(),
                ));
            };
            let ov = first
                .launch_template_and_overrides()
                .and_then(|l| l.overrides());
            let instance_type = first
                .instance_type()
                .map(|t| t.as_str().to_string())
                .or_else(|| {
                    ov.and_then(|o| o.instance_type())
                        .map(|t| t.as_str().to_string())
                })
                .unwrap_or_default();
            let zone = first
                .availability_zone()
                .or_else(|| ov.and_then(|o| o.availability_zone()))
                .or_else(|| {
                    first
                        .subnet_id()
                        .or_else(|| ov.and_then(|o| o.subnet_id()))
                        .and_then(|s| zone_of_subnet.get(s).copied())
                })
                .unwrap_or_default()
                .to_string();
            let capacity_type = match first.lifecycle() {
                Some(InstanceLifecycle::Spot) => CapacityType::Spot,
                Some(InstanceLifecycle::OnDemand) => CapacityType::OnDemand,
                _ => a.capacity_type,
            };
            let chosen = a
                .offerings
                .iter()
                .find(|c| c.key.instance_type == instance_type && c.key.zone == zone);
            let instance = Instance {
                provider_id: provider_id(&zone, &id),
                instance_id: id,
                instance_type,
                zone,
                capacity_type,
                state: InstanceState::Pending,
                nodeclaim: a.claim.metadata.name.clone(),
                nodepool: a
                    .claim
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(NODEPOOL))
                    .cloned(),
                image_id: chosen
                    .and_then(|c| a.resolved.ami_for(c.arch))
                    .map(|ami| ami.id.clone()),
                price: chosen.map(|c| c.price),
                launch_time_unix: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .ok()
                    .and_then(|d| i64::try_from(d.as_secs()).ok()),
            };
            return FleetOutcome::Launched {
                instance,
                capacity_failures,
            };
        }
        if !capacity_failures.is_empty() {
            return FleetOutcome::CapacityFailed(capacity_failures);
        }
        if let Some((code, message)) = other_errors
            .iter()
            .find(|(code, _)| is_missing_template(code))
        {
            return self.template_vanished(code, message);
        }
        if let Some((code, message)) = other_errors.into_iter().next() {
            return match classify_code(&code) {
                ErrorClass::Throttled => FleetOutcome::Retry(CloudError::Throttled),
                ErrorClass::Transient => FleetOutcome::Retry(CloudError::Other(format!(
                    "create fleet: {code}: {message}"
                ))),
                _ => FleetOutcome::Fatal(CloudError::Config {
                    reason: format!("create fleet: {code}: {message}"),
                }),
            };
        }
        FleetOutcome::Retry(CloudError::Other(
            "create fleet returned neither an instance nor an error".to_string(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::crd::{EC2NodeClassSpec, NodeClaimSpec};

    #[test]
    fn retry_delay_grows_with_jitter_and_caps() {
        let base = Duration::from_millis(100);
        for n in 1..=4 {
            let d = retry_delay(base, n);
            let full = base * (1 << (n - 1));
            assert!(d >= full / 2 && d <= full, "{n}: {d:?}");
        }
        assert!(retry_delay(base, 30) <= MAX_RETRY_DELAY);
    }

    #[test]
    fn tags_name_the_claim_and_cannot_be_overridden() {
        let mut claim = NodeClaim::new("c1", NodeClaimSpec::default());
        claim.metadata.labels = Some(BTreeMap::from([(NODEPOOL.to_string(), "p".to_string())]));
        let mut nc = EC2NodeClass::new("nc", EC2NodeClassSpec::default());
        nc.spec.tags = BTreeMap::from([
            ("team".to_string(), "a".to_string()),
            (NODECLAIM.to_string(), "spoofed".to_string()),
        ]);
        let t = launch_tags(
            "kubernetes.io/cluster/prod",
            &claim,
            "u-1",
            &nc,
            CapacityType::Spot,
        );
        assert_eq!(t["kubernetes.io/cluster/prod"], "owned");
        assert_eq!(t[NODECLAIM], "c1");
        assert_eq!(t[TAG_NODECLAIM_UID], "u-1");
        assert_eq!(t[NODEPOOL], "p");
        assert_eq!(t["Name"], "p/c1");
        assert_eq!(t["team"], "a");
        assert_eq!(t[CAPACITY_TYPE], "spot");
    }
}
