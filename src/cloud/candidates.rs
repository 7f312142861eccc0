//! From a NodeClaim's narrowed requirements to the offerings a launch may use, cheapest first.
//!
//! Pure: both the EC2 provider and the simulated cloud launch from this list, so they agree on
//! what a claim allows.

use std::collections::BTreeSet;

use crate::kube::crd::NodeClaim;
use crate::model::labels::{CAPACITY_TYPE, INSTANCE_TYPE, ZONE, canonical_key};
use crate::model::{Arch, CapacityType, Catalog, OfferingKey};

/// The most instance types one launch offers EC2 (Karpenter's limit; EC2 accepts more overrides,
/// but beyond 60 types the extra choice only adds expensive ones).
pub const MAX_INSTANCE_TYPES: usize = 60;

/// What a claim's requirements allow, read once.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LaunchOptions {
    /// Allowed instance types in the planner's rank order; `None` means any.
    pub instance_types: Option<Vec<String>>,
    /// Excluded instance types (`NotIn`).
    pub excluded_types: BTreeSet<String>,
    /// Allowed zones; `None` means any.
    pub zones: Option<BTreeSet<String>>,
    /// Excluded zones (`NotIn`).
    pub excluded_zones: BTreeSet<String>,
    /// Allowed capacity types; on-demand only when the claim does not say (as Karpenter does).
    pub capacity_types: BTreeSet<CapacityType>,
}

impl LaunchOptions {
    /// Reads the instance-type, zone and capacity-type requirements of a claim (Karpenter keys too).
    pub fn from_claim(claim: &NodeClaim) -> LaunchOptions {
        let mut opts = LaunchOptions::default();
        let mut capacity: Option<BTreeSet<CapacityType>> = None;
        let mut excluded_capacity = BTreeSet::new();
        for req in &claim.spec.requirements {
            let key = canonical_key(&req.key);
            match (key, req.operator.as_str()) {
                (k, "In") if k == INSTANCE_TYPE => {
                    opts.instance_types = Some(match opts.instance_types.take() {
                        None => dedup(&req.values),
                        Some(prev) => prev
                            .into_iter()
                            .filter(|t| req.values.contains(t))
                            .collect(),
                    });
                }
                (k, "NotIn") if k == INSTANCE_TYPE => {
                    opts.excluded_types.extend(req.values.iter().cloned());
                }
                (k, "In") if k == ZONE => {
                    let set: BTreeSet<String> = req.values.iter().cloned().collect();
                    opts.zones = Some(match opts.zones.take() {
                        None => set,
                        Some(prev) => prev.intersection(&set).cloned().collect(),
                    });
                }
                (k, "NotIn") if k == ZONE => {
                    opts.excluded_zones.extend(req.values.iter().cloned());
                }
                (k, "In") if k == CAPACITY_TYPE => {
                    let set: BTreeSet<CapacityType> = req
                        .values
                        .iter()
                        .filter_map(|v| CapacityType::parse(v))
                        .collect();
                    capacity = Some(match capacity.take() {
                        None => set,
                        Some(prev) => prev.intersection(&set).copied().collect(),
                    });
                }
                (k, "NotIn") if k == CAPACITY_TYPE => {
                    excluded_capacity
                        .extend(req.values.iter().filter_map(|v| CapacityType::parse(v)));
                }
                _ => {}
            }
        }
        opts.capacity_types = capacity
            .unwrap_or_else(|| {
                // No requirement: on-demand, unless on-demand itself was excluded.
                if excluded_capacity.contains(&CapacityType::OnDemand) {
                    BTreeSet::from([CapacityType::Spot])
                } else {
                    BTreeSet::from([CapacityType::OnDemand])
                }
            })
            .into_iter()
            .filter(|c| !excluded_capacity.contains(c))
            .collect();
        opts
    }

    /// Whether the claim allows this offering (type, zone and capacity type).
    pub fn allows(&self, key: &OfferingKey) -> bool {
        self.rank_of(&key.instance_type).is_some()
            && self.zone_allowed(&key.zone)
            && self.capacity_types.contains(&key.capacity_type)
    }

    fn rank_of(&self, name: &str) -> Option<usize> {
        if self.excluded_types.contains(name) {
            return None;
        }
        match &self.instance_types {
            Some(types) => types.iter().position(|t| t == name),
            None => Some(0),
        }
    }

    fn zone_allowed(&self, zone: &str) -> bool {
        !self.excluded_zones.contains(zone) && self.zones.as_ref().is_none_or(|z| z.contains(zone))
    }
}

fn dedup(values: &[String]) -> Vec<String> {
    let mut seen = BTreeSet::new();
    values
        .iter()
        .filter(|v| seen.insert(v.as_str()))
        .cloned()
        .collect()
}

/// One offering a launch may use.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// Type, zone and capacity type.
    pub key: OfferingKey,
    /// USD per hour.
    pub price: f64,
    /// The planner's rank of the type (0 = its first choice).
    pub rank: usize,
    /// The type's architecture, which picks the AMI.
    pub arch: Arch,
}

/// Every available catalog offering the claim allows in a usable zone, cheapest first (ties by
/// the planner's rank, then name and zone, so the order is stable).
///
/// `zone_usable` says whether the NodeClass has a subnet there (the simulated cloud allows all).
pub fn candidates(
    opts: &LaunchOptions,
    catalog: &Catalog,
    zone_usable: &dyn Fn(&str) -> bool,
) -> Vec<Candidate> {
    let mut out = Vec::new();
    for t in &catalog.types {
        let Some(rank) = opts.rank_of(&t.name) else {
            continue;
        };
        for o in &t.offerings {
            if o.available
                && opts.capacity_types.contains(&o.capacity_type)
                && opts.zone_allowed(&o.zone)
                && zone_usable(&o.zone)
            {
                out.push(Candidate {
                    key: OfferingKey {
                        instance_type: t.name.clone(),
                        zone: o.zone.clone(),
                        capacity_type: o.capacity_type,
                    },
                    price: o.price,
                    rank,
                    arch: t.arch,
                });
            }
        }
    }
    out.sort_by(|a, b| {
        a.price
            .total_cmp(&b.price)
            .then(a.rank.cmp(&b.rank))
            .then_with(|| a.key.cmp(&b.key))
    });
    out
}

/// The capacity type one launch attempt uses: spot while any spot candidate is left (it is the
/// cheaper market), then on-demand.
pub fn attempt_capacity_type(cands: &[Candidate]) -> Option<CapacityType> {
    if cands
        .iter()
        .any(|c| c.key.capacity_type == CapacityType::Spot)
    {
        Some(CapacityType::Spot)
    } else {
        cands.first().map(|c| c.key.capacity_type)
    }
}

/// The candidates of one attempt: one capacity type, at most [`MAX_INSTANCE_TYPES`] types, in order.
pub fn attempt_offerings(cands: &[Candidate], capacity_type: CapacityType) -> Vec<Candidate> {
    let mut types = BTreeSet::new();
    cands
        .iter()
        .filter(|c| c.key.capacity_type == capacity_type)
        .filter(|c| {
            types.contains(c.key.instance_type.as_str())
                || (types.len() < MAX_INSTANCE_TYPES && types.insert(c.key.instance_type.as_str()))
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::crd::{NodeClaimSpec, NodeSelectorRequirementSpec};

    fn req(key: &str, op: &str, values: &[&str]) -> NodeSelectorRequirementSpec {
        NodeSelectorRequirementSpec {
            key: key.to_string(),
            operator: op.to_string(),
            values: values.iter().map(|v| v.to_string()).collect(),
            min_values: None,
        }
    }

    fn claim(reqs: Vec<NodeSelectorRequirementSpec>) -> NodeClaim {
        NodeClaim::new(
            "c",
            NodeClaimSpec {
                requirements: reqs,
                ..Default::default()
            },
        )
    }

    #[test]
    fn reads_requirements_and_karpenter_aliases() {
        let o = LaunchOptions::from_claim(&claim(vec![
            req(INSTANCE_TYPE, "In", &["m5.xlarge", "m5.large", "m5.large"]),
            req(ZONE, "In", &["us-east-1a", "us-east-1b"]),
            req(ZONE, "NotIn", &["us-east-1b"]),
            req("karpenter.sh/capacity-type", "In", &["spot", "on-demand"]),
        ]));
        assert_eq!(
            o.instance_types,
            Some(vec!["m5.xlarge".to_string(), "m5.large".to_string()])
        );
        assert!(o.zone_allowed("us-east-1a") && !o.zone_allowed("us-east-1b"));
        assert_eq!(o.capacity_types.len(), 2);
        let d = LaunchOptions::from_claim(&claim(vec![]));
        assert_eq!(d.capacity_types, BTreeSet::from([CapacityType::OnDemand]));
    }

    #[test]
    fn candidates_are_cheapest_first_and_filtered() {
        let c = Catalog::embedded().unwrap();
        let o = LaunchOptions::from_claim(&claim(vec![
            req(INSTANCE_TYPE, "In", &["m5.xlarge", "m5.large"]),
            req(ZONE, "In", &["us-east-1a", "us-east-1c"]),
            req(CAPACITY_TYPE, "In", &["spot", "on-demand"]),
        ]));
        let cands = candidates(&o, &c, &|z| z != "us-east-1c");
        assert_eq!(cands.len(), 4);
        assert!(cands.iter().all(|c| c.key.zone == "us-east-1a"));
        assert!(cands.windows(2).all(|w| w[0].price <= w[1].price));
        assert_eq!(attempt_capacity_type(&cands), Some(CapacityType::Spot));
        let spot = attempt_offerings(&cands, CapacityType::Spot);
        assert_eq!(spot.len(), 2);
        assert_eq!(spot[0].key.instance_type, "m5.large");
        let od: Vec<_> = cands
            .into_iter()
            .filter(|c| c.key.capacity_type == CapacityType::OnDemand)
            .collect();
        assert_eq!(attempt_capacity_type(&od), Some(CapacityType::OnDemand));
    }

    #[test]
    fn attempt_caps_instance_types() {
        let c = Catalog::embedded().unwrap();
        let o = LaunchOptions::from_claim(&claim(vec![req(ZONE, "In", &["us-east-1a"])]));
        let cands = candidates(&o, &c, &|_| true);
        let attempt = attempt_offerings(&cands, CapacityType::OnDemand);
        let types: BTreeSet<_> = attempt.iter().map(|c| &c.key.instance_type).collect();
        assert_eq!(types.len(), MAX_INSTANCE_TYPES);
        assert_eq!(attempt.len(), MAX_INSTANCE_TYPES);
    }

    proptest::proptest! {
        /// Candidates are exactly the allowed, available, usable offerings, cheapest first, and an
        /// attempt is one capacity type with at most 60 types.
        #[test]
        fn candidates_are_complete_sorted_and_allowed(
            type_idx in proptest::collection::vec(0usize..1095, 0..80),
            zone_mask in 1u8..64,
            usable_mask in 0u8..64,
            cts in 1u8..4,
            unavailable in proptest::collection::vec(0usize..1095, 0..20),
        ) {
            let mut c = Catalog::embedded().unwrap();
            for i in &unavailable {
                if let Some(o) = c.types.get_mut(*i).and_then(|t| t.offerings.first_mut()) {
                    o.available = false;
                }
            }
            let zone_of = |mask: u8| -> Vec<&str> {
                crate::model::catalog::US_EAST_1_ZONES
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| mask & (1 << i) != 0)
                    .map(|(_, z)| *z)
                    .collect()
            };
            let zones = zone_of(zone_mask);
            let usable = zone_of(usable_mask);
            let names: Vec<&str> = type_idx.iter().map(|i| c.types[*i].name.as_str()).collect();
            let mut ct_values = Vec::new();
            if cts & 1 != 0 { ct_values.push("spot"); }
            if cts & 2 != 0 { ct_values.push("on-demand"); }
            let mut reqs = vec![
                req(ZONE, "In", &zones),
                req(CAPACITY_TYPE, "In", &ct_values),
            ];
            if !names.is_empty() {
                reqs.push(req(INSTANCE_TYPE, "In", &names));
            }
            let opts = LaunchOptions::from_claim(&claim(reqs));
            let cands = candidates(&opts, &c, &|z| usable.contains(&z));
            proptest::prop_assert!(cands.windows(2).all(|w| w[0].price <= w[1].price));
            for cand in &cands {
                proptest::prop_assert!(opts.allows(&cand.key));
                proptest::prop_assert!(usable.contains(&cand.key.zone.as_str()));
            }
            let expected = c
                .types
                .iter()
                .filter(|t| names.is_empty() || names.contains(&t.name.as_str()))
                .flat_map(|t| t.offerings.iter().map(move |o| (t, o)))
                .filter(|(_, o)| {
                    o.available
                        && zones.contains(&o.zone.as_str())
                        && usable.contains(&o.zone.as_str())
                        && ct_values.contains(&o.capacity_type.as_str())
                })
                .count();
            proptest::prop_assert_eq!(cands.len(), expected);
            if let Some(ct) = attempt_capacity_type(&cands) {
                let attempt = attempt_offerings(&cands, ct);
                proptest::prop_assert!(!attempt.is_empty());
                proptest::prop_assert!(attempt.iter().all(|a| a.key.capacity_type == ct));
                let types: BTreeSet<_> = attempt.iter().map(|a| &a.key.instance_type).collect();
                proptest::prop_assert!(types.len() <= MAX_INSTANCE_TYPES);
                if ct == CapacityType::OnDemand {
                    proptest::prop_assert!(cands.iter().all(|c| c.key.capacity_type == CapacityType::OnDemand));
                }
            }
        }
    }
}
