//! The simulated cloud: the same [`CloudProvider`] contract as EC2, in memory, with boot delays,
//! per-offering capacity errors and throttling on demand, and a log of every call.
//!
//! It launches the way the EC2 provider does (spot first, cheapest offering the claim allows,
//! failed offerings backed off), so the demo and the loop tests see EC2's behaviour, not a
//! friendlier one. Time is tokio's plus a skew that [`SimCloud::advance`] moves forward, so tests
//! and the sped-up demo control boots and back-off expiry without sleeping.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use super::backoff::OfferingBackoff;
use super::candidates::{LaunchOptions, attempt_capacity_type, attempt_offerings, candidates};
use super::{CloudError, CloudProvider, Instance, InstanceState, instance_id_from_provider_id};
use crate::kube::crd::{EC2NodeClass, NodeClaim};
use crate::model::labels::NODEPOOL;
use crate::model::{Catalog, OfferingKey};

/// How the simulated cloud behaves.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// How long an instance stays `Pending` before it is `Running`.
    pub boot_delay: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            boot_delay: Duration::from_secs(30),
        }
    }
}

/// A failure to inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimFault {
    /// The offering reports insufficient capacity.
    Capacity,
    /// A launch that reaches the offering is throttled.
    Throttle,
}

/// One call the simulated cloud received, for tests to assert on.
#[derive(Debug, Clone, PartialEq)]
pub enum SimCall {
    /// `create`, with the offering launched or the error.
    Create {
        /// NodeClaim name.
        nodeclaim: String,
        /// The offering launched on, or the error text.
        outcome: Result<OfferingKey, String>,
    },
    /// `delete`.
    Delete {
        /// Provider id.
        provider_id: String,
    },
    /// `get`.
    Get {
        /// Provider id.
        provider_id: String,
    },
    /// `list`.
    List,
    /// `catalog`.
    Catalog,
}

#[derive(Debug)]
struct SimInstance {
    instance: Instance,
    ready_at: Instant,
}

#[derive(Debug, Default)]
struct State {
    instances: BTreeMap<String, SimInstance>,
    by_claim: HashMap<String, String>,
    faults: HashMap<OfferingKey, (SimFault, u32)>,
    throttle_next: u32,
    calls: Vec<SimCall>,
    next_id: u64,
    skew: Duration,
}

/// The in-memory cloud.
#[derive(Debug)]
pub struct SimCloud {
    catalog: Catalog,
    config: SimConfig,
    backoff: OfferingBackoff,
    state: Mutex<State>,
}

impl SimCloud {
    /// A simulated cloud selling `catalog`.
    pub fn new(catalog: Catalog, config: SimConfig) -> SimCloud {
        SimCloud {
            catalog,
            config,
            backoff: OfferingBackoff::new(),
            state: Mutex::new(State::default()),
        }
    }

    /// A simulated cloud selling the embedded us-east-1 catalog.
    ///
    /// # Errors
    /// Only if the embedded catalog is corrupt.
    pub fn embedded(config: SimConfig) -> Result<SimCloud, crate::model::catalog::CatalogError> {
        Ok(SimCloud::new(Catalog::embedded()?, config))
    }

    /// Moves the simulated clock forward (boots finish, back-offs expire).
    pub fn advance(&self, by: Duration) {
        self.state().skew += by;
    }

    /// The simulated clock.
    pub fn now(&self) -> Instant {
        Instant::now() + self.state().skew
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes the next `times` launches that reach `offering` fail with `fault`.
    pub fn inject(&self, offering: OfferingKey, fault: SimFault, times: u32) {
        self.state().faults.insert(offering, (fault, times));
    }

    /// Throttles the next `n` calls of any kind.
    pub fn throttle_next(&self, n: u32) {
        self.state().throttle_next = n;
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<SimCall> {
        self.state().calls.clone()
    }

    /// The back-off table, as the EC2 provider exposes it.
    pub fn backoff(&self) -> &OfferingBackoff {
        &self.backoff
    }

    /// Every instance ever launched, terminated ones included.
    pub fn instances(&self) -> Vec<Instance> {
        let state = self.state();
        let now = Instant::now() + state.skew;
        state.instances.values().map(|s| observed(s, now)).collect()
    }

    fn take_throttle(state: &mut State) -> bool {
        if state.throttle_next > 0 {
            state.throttle_next -= 1;
            true
        } else {
            false
        }
    }

    fn launch(
        &self,
        claim: &NodeClaim,
        uid: &str,
        state: &mut State,
    ) -> Result<Instance, CloudError> {
        if let Some(existing) = state
            .by_claim
            .get(uid)
            .and_then(|id| state.instances.get(id))
            .filter(|s| s.instance.state.is_alive())
        {
            return Ok(observed(existing, Instant::now() + state.skew));
        }
        if Self::take_throttle(state) {
            return Err(CloudError::Throttled);
        }
        let now = Instant::now() + state.skew;
        let mut catalog = self.catalog.clone();
        self.backoff.apply(&mut catalog, now.into_std());
        let opts = LaunchOptions::from_claim(claim);
        let mut remaining = candidates(&opts, &catalog, &|_| true);
        if remaining.is_empty() {
            let held: Vec<OfferingKey> = self
                .backoff
                .backed_off(now.into_std())
                .into_iter()
                .filter(|k| opts.allows(k))
                .collect();
            return Err(if held.is_empty() {
                CloudError::Config {
                    reason: "no offering matches the claim's requirements".to_string(),
                }
            } else {
                CloudError::InsufficientCapacity { offerings: held }
            });
        }
        let mut failed = Vec::new();
        while let Some(ct) = attempt_capacity_type(&remaining) {
            for c in attempt_offerings(&remaining, ct) {
                match state.faults.get_mut(&c.key) {
                    Some((fault, times)) if *times > 0 => {
                        *times -= 1;
                        match fault {
                            SimFault::Throttle => return Err(CloudError::Throttled),
                            SimFault::Capacity => {
                                self.backoff.record_failure(&c.key, now.into_std());
                                failed.push(c.key.clone());
                                continue;
                            }
                        }
                    }
                    _ => {}
                }
                state.next_id += 1;
                let instance_id = format!("i-sim{:013x}", state.next_id);
                let instance = Instance {
                    provider_id: super::provider_id(&c.key.zone, &instance_id),
                    instance_id: instance_id.clone(),
                    instance_type: c.key.instance_type.clone(),
                    zone: c.key.zone.clone(),
                    capacity_type: c.key.capacity_type,
                    state: InstanceState::Pending,
                    nodeclaim: claim.metadata.name.clone(),
                    nodepool: claim
                        .metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(NODEPOOL))
                        .cloned(),
                    image_id: Some("ami-sim".to_string()),
                    price: Some(c.price),
                    launch_time_unix: None,
                };
                self.backoff.record_success(&c.key);
                state.by_claim.insert(uid.to_string(), instance_id.clone());
                state.instances.insert(
                    instance_id,
                    SimInstance {
                        instance: instance.clone(),
                        ready_at: now + self.config.boot_delay,
                    },
                );
                return Ok(instance);
            }
            remaining.retain(|c| c.key.capacity_type != ct);
        }
        Err(CloudError::InsufficientCapacity { offerings: failed })
    }
}

/// The instance as seen at `now`: pending until its boot delay has passed.
fn observed(s: &SimInstance, now: Instant) -> Instance {
    let mut i = s.instance.clone();
    if i.state == InstanceState::Pending && now >= s.ready_at {
        i.state = InstanceState::Running;
    }
    i
}

#[async_trait::async_trait]
impl CloudProvider for SimCloud {
    async fn create(
        &self,
        claim: &NodeClaim,
        _node_class: &EC2NodeClass,
    ) -> Result<Instance, CloudError> {
        let name = claim.metadata.name.clone().unwrap_or_default();
        let uid = claim
            .metadata
            .uid
            .clone()
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| name.clone());
        let mut state = self.state();
        let result = self.launch(claim, &uid, &mut state);
        state.calls.push(SimCall::Create {
            nodeclaim: name,
            outcome: match &result {
                Ok(i) => Ok(OfferingKey {
                    instance_type: i.instance_type.clone(),
                    zone: i.zone.clone(),
                    capacity_type: i.capacity_type,
                }),
                Err(e) => Err(e.to_string()),
            },
        });
        result
    }

    async fn delete(&self, provider_id: &str) -> Result<(), CloudError> {
        let mut state = self.state();
        state.calls.push(SimCall::Delete {
            provider_id: provider_id.to_string(),
        });
        if Self::take_throttle(&mut state) {
            return Err(CloudError::Throttled);
        }
        if let Some(id) = instance_id_from_provider_id(provider_id)
            && let Some(s) = state.instances.get_mut(id)
        {
            s.instance.state = InstanceState::Terminated;
        }
        Ok(())
    }

    async fn get(&self, provider_id: &str) -> Result<Instance, CloudError> {
        let mut state = self.state();
        state.calls.push(SimCall::Get {
            provider_id: provider_id.to_string(),
        });
        if Self::take_throttle(&mut state) {
            return Err(CloudError::Throttled);
        }
        instance_id_from_provider_id(provider_id)
            .and_then(|id| state.instances.get(id))
            .filter(|s| s.instance.state != InstanceState::Terminated)
            .map(|s| observed(s, Instant::now() + state.skew))
            .ok_or_else(|| CloudError::NotFound(provider_id.to_string()))
    }

    async fn list(&self) -> Result<Vec<Instance>, CloudError> {
        let mut state = self.state();
        state.calls.push(SimCall::List);
        if Self::take_throttle(&mut state) {
            return Err(CloudError::Throttled);
        }
        let now = Instant::now() + state.skew;
        Ok(state
            .instances
            .values()
            .filter(|s| s.instance.state.is_alive())
            .map(|s| observed(s, now))
            .collect())
    }

    async fn catalog(&self) -> Result<Arc<Catalog>, CloudError> {
        let now = {
            let mut state = self.state();
            state.calls.push(SimCall::Catalog);
            Instant::now() + state.skew
        };
        let mut catalog = self.catalog.clone();
        self.backoff.apply(&mut catalog, now.into_std());
        Ok(Arc::new(catalog))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::crd::{EC2NodeClassSpec, NodeClaimSpec, NodeSelectorRequirementSpec};
    use crate::model::CapacityType;
    use crate::model::labels::{CAPACITY_TYPE, INSTANCE_TYPE, ZONE};

    fn claim(name: &str, types: &[&str], cts: &[&str]) -> NodeClaim {
        let req = |key: &str, values: &[&str]| NodeSelectorRequirementSpec {
            key: key.to_string(),
            operator: "In".to_string(),
            values: values.iter().map(|v| v.to_string()).collect(),
            min_values: None,
        };
        let mut c = NodeClaim::new(
            name,
            NodeClaimSpec {
                requirements: vec![
                    req(INSTANCE_TYPE, types),
                    req(ZONE, &["us-east-1a", "us-east-1b"]),
                    req(CAPACITY_TYPE, cts),
                ],
                ..Default::default()
            },
        );
        c.metadata.uid = Some(format!("uid-{name}"));
        c
    }

    fn key(t: &str, z: &str, ct: CapacityType) -> OfferingKey {
        OfferingKey {
            instance_type: t.into(),
            zone: z.into(),
            capacity_type: ct,
        }
    }

    fn nc() -> EC2NodeClass {
        EC2NodeClass::new("default", EC2NodeClassSpec::default())
    }

    #[tokio::test]
    async fn launches_cheapest_boots_after_delay_and_is_idempotent() {
        let sim = SimCloud::embedded(SimConfig {
            boot_delay: Duration::from_secs(10),
        })
        .unwrap();
        let c = claim("a", &["m5.large", "m5.xlarge"], &["on-demand"]);
        let i = sim.create(&c, &nc()).await.unwrap();
        assert_eq!(i.instance_type, "m5.large");
        assert_eq!(i.capacity_type, CapacityType::OnDemand);
        assert_eq!(i.state, InstanceState::Pending);
        let again = sim.create(&c, &nc()).await.unwrap();
        assert_eq!(again.instance_id, i.instance_id);
        sim.advance(Duration::from_secs(11));
        assert_eq!(
            sim.get(&i.provider_id).await.unwrap().state,
            InstanceState::Running
        );
        assert_eq!(sim.list().await.unwrap().len(), 1);
        sim.delete(&i.provider_id).await.unwrap();
        sim.delete(&i.provider_id).await.unwrap();
        assert!(matches!(
            sim.get(&i.provider_id).await,
            Err(CloudError::NotFound(_))
        ));
        assert!(sim.list().await.unwrap().is_empty());
        assert!(matches!(sim.calls()[0], SimCall::Create { .. }));
    }

    #[tokio::test]
    async fn capacity_faults_fall_back_and_back_off() {
        let sim = SimCloud::embedded(SimConfig::default()).unwrap();
        let cheapest = {
            let cat = sim.catalog().await.unwrap();
            let opts = LaunchOptions::from_claim(&claim("x", &["m5.large"], &["spot"]));
            candidates(&opts, &cat, &|_| true)[0].key.clone()
        };
        sim.inject(cheapest.clone(), SimFault::Capacity, 1);
        let i = sim
            .create(&claim("b", &["m5.large"], &["spot"]), &nc())
            .await
            .unwrap();
        assert_ne!(i.zone, cheapest.zone);
        assert!(
            sim.backoff()
                .is_backed_off(&cheapest, Instant::now().into_std())
        );
        let cat = sim.catalog().await.unwrap();
        let off = cat
            .get("m5.large")
            .unwrap()
            .offerings
            .iter()
            .find(|o| o.zone == cheapest.zone && o.capacity_type == CapacityType::Spot)
            .unwrap();
        assert!(!off.available);

        // Every spot offering fails: falls back to on-demand.
        for z in ["us-east-1a", "us-east-1b"] {
            sim.inject(
                key("c5.large", z, CapacityType::Spot),
                SimFault::Capacity,
                1,
            );
        }
        let i = sim
            .create(&claim("c", &["c5.large"], &["spot", "on-demand"]), &nc())
            .await
            .unwrap();
        assert_eq!(i.capacity_type, CapacityType::OnDemand);

        // Nothing left: insufficient capacity naming what failed.
        for z in ["us-east-1a", "us-east-1b"] {
            sim.inject(
                key("c6i.large", z, CapacityType::OnDemand),
                SimFault::Capacity,
                1,
            );
        }
        match sim
            .create(&claim("d", &["c6i.large"], &["on-demand"]), &nc())
            .await
        {
            Err(CloudError::InsufficientCapacity { offerings }) => assert_eq!(offerings.len(), 2),
            other => panic!("{other:?}"),
        }
        // Retrying while backed off still reports capacity, not configuration.
        match sim
            .create(&claim("d", &["c6i.large"], &["on-demand"]), &nc())
            .await
        {
            Err(CloudError::InsufficientCapacity { offerings }) => assert_eq!(offerings.len(), 2),
            other => panic!("{other:?}"),
        }
        // The hold ends after a minute.
        sim.advance(Duration::from_secs(61));
        assert!(
            sim.create(&claim("d", &["c6i.large"], &["on-demand"]), &nc())
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn throttling_injects() {
        let sim = SimCloud::embedded(SimConfig::default()).unwrap();
        sim.throttle_next(1);
        assert!(matches!(sim.list().await, Err(CloudError::Throttled)));
        assert!(sim.list().await.is_ok());
        sim.inject(
            key("m5.large", "us-east-1a", CapacityType::OnDemand),
            SimFault::Throttle,
            1,
        );
        let c = claim("t", &["m5.large"], &["on-demand"]);
        assert!(matches!(
            sim.create(&c, &nc()).await,
            Err(CloudError::Throttled)
        ));
        assert!(sim.create(&c, &nc()).await.is_ok());
        assert!(matches!(
            sim.create(&claim("z", &["no.such"], &["spot"]), &nc())
                .await,
            Err(CloudError::Config { .. })
        ));
    }
}
