//! The pure decision: placement-hint annotations on a pod → a JSON Patch, or a precise denial.
//!
//! ```text
//! pod annotations gantry.dev/* ──parse──▶ hints ──check──▶ catalog, pod's own constraints, NodePools
//!                                                   │
//!                                                   └──▶ Verdict::Admit { patch, warnings } | Verdict::Deny
//! ```
//!
//! # Guarantees
//! - Pure: no I/O, no clock; everything comes in through [`HintContext`].
//! - The patch only adds: it never removes or loosens a constraint the pod already has. Hint
//!   requirements are ANDed into every existing required node-affinity term; empty terms (which
//!   match nothing) are left alone.
//! - Idempotent: deciding again on the patched pod yields an empty patch.
//! - Deterministic: hints are read in annotation-key order.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use k8s_openapi::api::core::v1::{NodeSelectorTerm, Pod, PodSpec};
use serde::Serialize;
use serde_json::{Map, Value, json};

use super::hint_requirements::{describe_requirement, hint_requirement_admits};
use crate::kube::crd::NodePool;
use crate::model::catalog::{Arch, Catalog};
use crate::model::labels::{self, canonical_key};

/// Annotations under this prefix are placement hints; any other key under it is refused.
pub const HINT_PREFIX: &str = "gantry.dev/";
/// Weight of the preferred term `spot-preferred` adds (1–100; in-tree affinity scoring scale).
pub const DEFAULT_SPOT_PREFERRED_WEIGHT: i32 = 50;
/// The scheduler name the apiserver defaults to; replaced by `gantry` for opted-in pods.
pub const DEFAULT_SCHEDULER: &str = "default-scheduler";

const REQUIRED: &str = "requiredDuringSchedulingIgnoredDuringExecution";
const PREFERRED: &str = "preferredDuringSchedulingIgnoredDuringExecution";
/// Values longer than this are cut in messages, so a denial stays readable.
const MAX_SHOWN_VALUE: usize = 80;
/// How many NodePools a denial names before it says "and N more".
const MAX_POOLS_EXPLAINED: usize = 3;

/// The hints Gantry understands, by annotation name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HintKey {
    /// `spot`, `on-demand` or `spot-preferred`.
    CapacityType,
    /// A comma list of families, e.g. `m7i,c7i`.
    InstanceFamily,
    /// `amd64` or `arm64`.
    Arch,
    /// A comma list of zones.
    Zone,
    /// A NodePool name.
    NodePool,
    /// `"true"`: read by disruption, adds no affinity.
    DoNotDisrupt,
}

impl HintKey {
    /// Every hint, in the order the docs list them.
    pub const ALL: [HintKey; 6] = [
        HintKey::CapacityType,
        HintKey::InstanceFamily,
        HintKey::Arch,
        HintKey::Zone,
        HintKey::NodePool,
        HintKey::DoNotDisrupt,
    ];

    /// The annotation name after `gantry.dev/`.
    pub fn name(self) -> &'static str {
        match self {
            HintKey::CapacityType => "capacity-type",
            HintKey::InstanceFamily => "instance-family",
            HintKey::Arch => "arch",
            HintKey::Zone => "zone",
            HintKey::NodePool => "nodepool",
            HintKey::DoNotDisrupt => "do-not-disrupt",
        }
    }

    /// The node label the hint constrains; `None` for hints that add no affinity.
    pub fn node_label(self) -> Option<&'static str> {
        match self {
            HintKey::CapacityType => Some(labels::CAPACITY_TYPE),
            HintKey::InstanceFamily => Some(labels::INSTANCE_FAMILY),
            HintKey::Arch => Some(labels::ARCH),
            HintKey::Zone => Some(labels::ZONE),
            HintKey::NodePool => Some(labels::NODEPOOL),
            HintKey::DoNotDisrupt => None,
        }
    }

    /// Looks a hint up by its annotation name after the prefix.
    pub fn from_name(name: &str) -> Option<Self> {
        HintKey::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// Which architectures a family is sold in (a family is almost always one of them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct ArchSet {
    amd64: bool,
    arm64: bool,
}

impl ArchSet {
    fn insert(&mut self, arch: Arch) {
        match arch {
            Arch::Amd64 => self.amd64 = true,
            Arch::Arm64 => self.arm64 = true,
        }
    }

    fn contains(self, arch: &str) -> bool {
        match arch {
            "amd64" => self.amd64,
            "arm64" => self.arm64,
            _ => false,
        }
    }

    fn iter(self) -> impl Iterator<Item = &'static str> {
        [("amd64", self.amd64), ("arm64", self.arm64)]
            .into_iter()
            .filter_map(|(name, present)| present.then_some(name))
    }
}

/// What admission needs from the catalog, indexed once at start-up so a decision stays cheap.
#[derive(Debug, Clone, Default)]
pub struct CatalogIndex {
    families: BTreeMap<String, ArchSet>,
    zones: BTreeSet<String>,
}

impl CatalogIndex {
    /// Indexes families (with their architectures) and the zones that have offerings.
    pub fn from_catalog(catalog: &Catalog) -> Self {
        let mut index = CatalogIndex::default();
        for t in &catalog.types {
            index
                .families
                .entry(t.family.clone())
                .or_default()
                .insert(t.arch);
            for o in &t.offerings {
                if !index.zones.contains(&o.zone) {
                    index.zones.insert(o.zone.clone());
                }
            }
        }
        index
    }

    /// True when the catalog knows no families; catalog checks are then skipped.
    pub fn is_empty(&self) -> bool {
        self.families.is_empty()
    }

    /// Whether the catalog sells this family.
    pub fn has_family(&self, family: &str) -> bool {
        self.families.contains_key(family)
    }

    /// Whether the catalog has offerings in this zone.
    pub fn has_zone(&self, zone: &str) -> bool {
        self.zones.contains(zone)
    }
}

/// Everything a decision reads besides the pod: cheap borrowed views, built per request.
#[derive(Debug, Clone, Copy)]
pub struct HintContext<'a> {
    /// Known families and zones.
    pub catalog: &'a CatalogIndex,
    /// The NodePool cache; `None` until it has synced, which skips the NodePool check.
    pub node_pools: Option<&'a [NodePool]>,
    /// Whether opted-in pods get `schedulerName: gantry`.
    pub set_scheduler_name: bool,
    /// Weight of the preferred term for `spot-preferred`.
    pub spot_preferred_weight: i32,
}

/// The category of a denial, so callers and tests can match on it without parsing text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenialKind {
    /// A `gantry.dev/` annotation that is not a hint.
    UnknownKey,
    /// A value the hint does not accept.
    InvalidValue,
    /// A family or zone the catalog does not know.
    NotInCatalog,
    /// The hint contradicts the pod's own nodeSelector or required node affinity.
    ContradictsPod,
    /// No NodePool in the cache could ever launch a node that satisfies the hint.
    NoNodePool,
}

/// A refused pod: which hints (annotation and value), and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// The offending `(annotation, value)` pairs, usually one.
    pub hints: Vec<(String, String)>,
    /// The category.
    pub kind: DenialKind,
    /// The reason, in words a user can act on.
    pub reason: String,
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plural = if self.hints.len() > 1 { "s" } else { "" };
        write!(f, "placement hint{plural} ")?;
        for (i, (annotation, value)) in self.hints.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{annotation}={}", shown(value))?;
        }
        write!(f, ": {}", self.reason)
    }
}

/// One JSON Patch operation; Gantry only ever emits `add`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PatchOp {
    /// Always `add`: the webhook never removes or replaces what the pod says.
    pub op: &'static str,
    /// RFC 6901 pointer, with `~` and `/` escaped in each token.
    pub path: String,
    /// The value to add.
    pub value: Value,
}

/// The outcome of a decision.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Admit, applying `patch` (possibly empty), and show `warnings` to the client.
    Admit {
        /// JSON Patch operations, in order.
        patch: Vec<PatchOp>,
        /// Short client-visible warnings.
        warnings: Vec<String>,
    },
    /// Refuse the pod.
    Deny(Denial),
}

impl Verdict {
    fn unchanged() -> Self {
        Verdict::Admit {
            patch: Vec::new(),
            warnings: Vec::new(),
        }
    }
}

/// A parsed hint: its annotation, raw value, and the node-label values it allows.
#[derive(Debug, Clone)]
struct ParsedHint<'p> {
    key: HintKey,
    annotation: &'p str,
    raw: &'p str,
    /// Allowed values of `key.node_label()`; empty for hints without affinity.
    values: Vec<String>,
    /// True for `spot-preferred`: a preferred term, never a required one.
    preferred: bool,
}

impl ParsedHint<'_> {
    fn label(&self) -> Option<&'static str> {
        self.key.node_label().filter(|_| !self.values.is_empty())
    }

    fn required_label(&self) -> Option<&'static str> {
        self.label().filter(|_| !self.preferred)
    }

    fn denial(&self, kind: DenialKind, reason: String) -> Denial {
        Denial {
            hints: vec![(self.annotation.to_string(), self.raw.to_string())],
            kind,
            reason,
        }
    }
}

fn joint_denial(hints: &[&ParsedHint<'_>], kind: DenialKind, reason: String) -> Denial {
    Denial {
        hints: hints
            .iter()
            .map(|h| (h.annotation.to_string(), h.raw.to_string()))
            .collect(),
        kind,
        reason,
    }
}

/// Decides what to do with a pod on CREATE.
///
/// `namespace_opted_in` says whether the pod's namespace carries `gantry.dev/managed=true`
/// (the webhook configuration routes such namespaces to a dedicated path).
///
/// # Guarantees
/// See the module documentation: additive, idempotent, deterministic, pure.
pub fn decide(pod: &Pod, namespace_opted_in: bool, ctx: &HintContext<'_>) -> Verdict {
    let mut hints = Vec::new();
    if let Some(annotations) = pod.metadata.annotations.as_ref() {
        for (annotation, raw) in annotations {
            if let Some(name) = annotation.strip_prefix(HINT_PREFIX) {
                match parse_hint(annotation, name, raw) {
                    Ok(h) => hints.push(h),
                    Err(d) => return Verdict::Deny(d),
                }
            }
        }
    }
    let Some(spec) = pod.spec.as_ref() else {
        // A pod without a spec fails the apiserver's validation; nothing to add to it.
        return Verdict::unchanged();
    };
    let scheduler_is_gantry = spec.scheduler_name.as_deref() == Some(labels::SCHEDULER_NAME);
    if !(namespace_opted_in || scheduler_is_gantry || !hints.is_empty()) {
        return Verdict::unchanged();
    }
    let checks = check_catalog(&hints, ctx.catalog)
        .and_then(|()| check_pod_constraints(&hints, spec, ctx.catalog))
        .and_then(|()| match ctx.node_pools {
            Some(pools) => check_node_pools(&hints, pools, ctx.catalog),
            None => Ok(Vec::new()),
        });
    match checks {
        Ok(mut warnings) => {
            let patch = build_patch(spec, &hints, ctx, &mut warnings);
            Verdict::Admit { patch, warnings }
        }
        Err(d) => Verdict::Deny(d),
    }
}

fn parse_hint<'p>(annotation: &'p str, name: &str, raw: &'p str) -> Result<ParsedHint<'p>, Denial> {
    let deny = |kind: DenialKind, reason: String| Denial {
        hints: vec![(annotation.to_string(), raw.to_string())],
        kind,
        reason,
    };
    let Some(key) = HintKey::from_name(name) else {
        let known: Vec<String> = HintKey::ALL
            .iter()
            .map(|k| format!("{HINT_PREFIX}{}", k.name()))
            .collect();
        return Err(deny(
            DenialKind::UnknownKey,
            format!("unknown hint; the known hints are {}", known.join(", ")),
        ));
    };
    let mut preferred = false;
    let trimmed = raw.trim();
    let values: Vec<String> = match key {
        HintKey::CapacityType => match trimmed {
            "spot" | "on-demand" => vec![trimmed.to_string()],
            "spot-preferred" => {
                preferred = true;
                vec!["spot".to_string()]
            }
            _ => {
                return Err(deny(
                    DenialKind::InvalidValue,
                    "invalid value; expected spot, on-demand or spot-preferred".to_string(),
                ));
            }
        },
        HintKey::Arch => match trimmed {
            "amd64" | "arm64" => vec![trimmed.to_string()],
            _ => {
                return Err(deny(
                    DenialKind::InvalidValue,
                    "invalid value; expected amd64 or arm64".to_string(),
                ));
            }
        },
        HintKey::InstanceFamily | HintKey::Zone => {
            let what = if key == HintKey::Zone {
                "zones"
            } else {
                "instance families"
            };
            let mut out: Vec<String> = Vec::new();
            for item in trimmed.split(',').map(str::trim) {
                if item.is_empty() {
                    return Err(deny(
                        DenialKind::InvalidValue,
                        format!(
                            "invalid value; expected a comma-separated list of {what} with no empty items"
                        ),
                    ));
                }
                if !is_label_value(item) {
                    return Err(deny(
                        DenialKind::InvalidValue,
                        format!(
                            "invalid value; {:?} is not a valid label value (at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit)",
                            shown(item)
                        ),
                    ));
                }
                if !out.iter().any(|o| o == item) {
                    out.push(item.to_string());
                }
            }
            out
        }
        HintKey::NodePool => {
            if !is_dns_label_like_name(trimmed) {
                return Err(deny(
                    DenialKind::InvalidValue,
                    "invalid value; expected a NodePool name (lower-case letters, digits, '-' or '.', at most 63 characters)".to_string(),
                ));
            }
            vec![trimmed.to_string()]
        }
        HintKey::DoNotDisrupt => {
            if trimmed != "true" {
                return Err(deny(
                    DenialKind::InvalidValue,
                    "invalid value; expected \"true\"".to_string(),
                ));
            }
            Vec::new()
        }
    };
    Ok(ParsedHint {
        key,
        annotation,
        raw,
        values,
        preferred,
    })
}

/// A Kubernetes label value (non-empty here): ≤ 63 chars of `[A-Za-z0-9._-]`, alphanumeric ends.
fn is_label_value(s: &str) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
}

/// An object name that is also a label value: lower-case DNS subdomain of ≤ 63 chars.
fn is_dns_label_like_name(s: &str) -> bool {
    is_label_value(s)
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.'))
}

/// A value cut to a readable length with control characters replaced, for messages.
fn shown(value: &str) -> String {
    let mut out: String = value
        .chars()
        .take(MAX_SHOWN_VALUE)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if value.chars().nth(MAX_SHOWN_VALUE).is_some() {
        out.push('…');
    }
    out
}

/// The family of an instance type name (`m7i.large` → `m7i`).
fn family_of(instance_type: &str) -> &str {
    instance_type
        .split_once('.')
        .map_or(instance_type, |(family, _)| family)
}

fn find_hint<'h, 'p>(hints: &'h [ParsedHint<'p>], key: HintKey) -> Option<&'h ParsedHint<'p>> {
    hints.iter().find(|h| h.key == key)
}

fn check_catalog(hints: &[ParsedHint<'_>], catalog: &CatalogIndex) -> Result<(), Denial> {
    for h in hints {
        match h.key {
            HintKey::InstanceFamily if !catalog.is_empty() => {
                if let Some(unknown) = h.values.iter().find(|f| !catalog.has_family(f)) {
                    return Err(h.denial(
                        DenialKind::NotInCatalog,
                        format!("instance family {} is not in the catalog", shown(unknown)),
                    ));
                }
            }
            HintKey::Zone if !catalog.zones.is_empty() => {
                if let Some(unknown) = h.values.iter().find(|z| !catalog.has_zone(z)) {
                    let known: Vec<&str> = catalog.zones.iter().map(String::as_str).collect();
                    return Err(h.denial(
                        DenialKind::NotInCatalog,
                        format!(
                            "{} is not a known zone (known zones: {})",
                            shown(unknown),
                            known.join(", ")
                        ),
                    ));
                }
            }
            _ => {}
        }
    }
    if let (Some(arch), Some(family)) = (
        find_hint(hints, HintKey::Arch),
        find_hint(hints, HintKey::InstanceFamily),
    ) && !catalog.is_empty()
    {
        let wanted = arch.values.first().map_or("", String::as_str);
        let any = family.values.iter().any(|f| {
            catalog
                .families
                .get(f)
                .is_some_and(|arches| arches.contains(wanted))
        });
        if !any {
            return Err(joint_denial(
                &[arch, family],
                DenialKind::NotInCatalog,
                format!("none of the instance families has {wanted} instance types in the catalog"),
            ));
        }
    }
    Ok(())
}

/// Whether a node whose `label` is `value` can pass every expression of `term`.
fn term_admits_value(term: &NodeSelectorTerm, label: &str, value: &str) -> bool {
    term.match_expressions.iter().flatten().all(|e| {
        let key = canonical_key(&e.key);
        let values = e.values.as_deref().unwrap_or_default();
        if key == label {
            hint_requirement_admits(&e.operator, values, Some(value))
        } else if label == labels::INSTANCE_FAMILY
            && key == labels::INSTANCE_TYPE
            && e.operator == "In"
        {
            values.iter().any(|t| family_of(t) == value)
        } else {
            true
        }
    })
}

fn term_admits(term: &NodeSelectorTerm, label: &str, values: &[String]) -> bool {
    values.iter().any(|v| term_admits_value(term, label, v))
}

/// A term with neither expressions nor fields matches no node at all (Kubernetes semantics).
fn term_is_empty(term: &NodeSelectorTerm) -> bool {
    term.match_expressions.as_ref().is_none_or(Vec::is_empty)
        && term.match_fields.as_ref().is_none_or(Vec::is_empty)
}

fn describe_term_on(term: &NodeSelectorTerm, label: &str) -> String {
    let parts: Vec<String> = term
        .match_expressions
        .iter()
        .flatten()
        .filter(|e| {
            let key = canonical_key(&e.key);
            key == label || (label == labels::INSTANCE_FAMILY && key == labels::INSTANCE_TYPE)
        })
        .map(|e| describe_requirement(&e.key, &e.operator, e.values.as_deref().unwrap_or_default()))
        .collect();
    parts.join(" and ")
}

fn check_pod_constraints(
    hints: &[ParsedHint<'_>],
    spec: &PodSpec,
    catalog: &CatalogIndex,
) -> Result<(), Denial> {
    let with_labels: Vec<(&ParsedHint<'_>, &'static str)> = hints
        .iter()
        .filter_map(|h| h.label().map(|l| (h, l)))
        .collect();
    if with_labels.is_empty() {
        return Ok(());
    }
    if let Some(selector) = spec.node_selector.as_ref() {
        for (h, label) in &with_labels {
            for (k, v) in selector {
                let key = canonical_key(k);
                let contradicts = if key == *label {
                    !h.values.iter().any(|x| x == v)
                } else if *label == labels::INSTANCE_FAMILY && key == labels::INSTANCE_TYPE {
                    !h.values.iter().any(|x| x == family_of(v))
                } else {
                    false
                };
                if contradicts {
                    return Err(h.denial(
                        DenialKind::ContradictsPod,
                        format!(
                            "contradicts the pod's nodeSelector {}={}",
                            shown(k),
                            shown(v)
                        ),
                    ));
                }
            }
        }
    }
    let family_hint = find_hint(hints, HintKey::InstanceFamily);
    let arch_hint = find_hint(hints, HintKey::Arch);
    let families = family_hint.map(|h| h.values.as_slice());
    let arch = arch_hint.and_then(|h| h.values.first()).map(String::as_str);
    let family_or_arch: Vec<&ParsedHint<'_>> = family_hint.into_iter().chain(arch_hint).collect();
    if let Some(selector) = spec.node_selector.as_ref()
        && !family_or_arch.is_empty()
    {
        let pinned = |label: &str| {
            selector.iter().find(|(k, v)| {
                let key = canonical_key(k);
                key == label
                    || (label == labels::INSTANCE_FAMILY
                        && key == labels::INSTANCE_TYPE
                        && !v.is_empty())
            })
        };
        // Cross-key: a pinned arch against a family hint, or a pinned family against an arch hint.
        let other = families
            .and_then(|_| pinned(labels::ARCH))
            .or_else(|| arch.and_then(|_| pinned(labels::INSTANCE_FAMILY)));
        if let Some((k, v)) = other {
            let selector_term_ok = catalog_family_arch_fits(
                catalog,
                families,
                arch,
                |f| {
                    selector.iter().all(|(k, v)| match canonical_key(k) {
                        labels::INSTANCE_FAMILY => v == f,
                        labels::INSTANCE_TYPE => family_of(v) == f,
                        _ => true,
                    })
                },
                |a| {
                    selector
                        .iter()
                        .all(|(k, v)| canonical_key(k) != labels::ARCH || v == a)
                },
            );
            if !selector_term_ok {
                return Err(joint_denial(
                    &family_or_arch,
                    DenialKind::ContradictsPod,
                    format!(
                        "contradicts the pod's nodeSelector {}={}: no instance family in the catalog fits both",
                        shown(k),
                        shown(v)
                    ),
                ));
            }
        }
    }
    let terms: Vec<&NodeSelectorTerm> = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| {
            na.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .map(|sel| {
            sel.node_selector_terms
                .iter()
                .filter(|t| !term_is_empty(t))
                .collect()
        })
        .unwrap_or_default();
    if terms.is_empty() {
        return Ok(());
    }
    for (h, label) in &with_labels {
        if !terms.iter().any(|t| term_admits(t, label, &h.values)) {
            let first = terms
                .iter()
                .map(|t| describe_term_on(t, label))
                .find(|d| !d.is_empty())
                .unwrap_or_default();
            let what = if terms.len() == 1 {
                "the pod's required node affinity"
            } else {
                "every required node-affinity term of the pod"
            };
            return Err(h.denial(
                DenialKind::ContradictsPod,
                format!("contradicts {what} ({first})"),
            ));
        }
    }
    if !family_or_arch.is_empty()
        && !terms
            .iter()
            .any(|t| term_family_arch_ok(t, catalog, families, arch))
    {
        let what = if terms.len() == 1 {
            "the pod's required node affinity"
        } else {
            "every required node-affinity term of the pod"
        };
        return Err(joint_denial(
            &family_or_arch,
            DenialKind::ContradictsPod,
            format!("contradicts {what}: no instance family in the catalog fits both"),
        ));
    }
    if with_labels.len() > 1 {
        let jointly = terms.iter().any(|t| {
            with_labels
                .iter()
                .all(|(h, label)| term_admits(t, label, &h.values))
                && term_family_arch_ok(t, catalog, families, arch)
        });
        if !jointly {
            let involved: Vec<&ParsedHint<'_>> = with_labels.iter().map(|(h, _)| *h).collect();
            return Err(joint_denial(
                &involved,
                DenialKind::ContradictsPod,
                "no required node-affinity term of the pod admits all of them together".to_string(),
            ));
        }
    }
    Ok(())
}

fn pool_name(pool: &NodePool) -> &str {
    pool.metadata.name.as_deref().unwrap_or("")
}

/// Whether a node of `pool` could carry `label=value`, judging by the pool's name, template
/// labels and requirements.
fn pool_admits(pool: &NodePool, label: &str, value: &str) -> bool {
    if label == labels::NODEPOOL && pool_name(pool) != value {
        return false;
    }
    let template = &pool.spec.template;
    if template
        .metadata
        .labels
        .iter()
        .any(|(k, v)| canonical_key(k) == label && v != value)
    {
        return false;
    }
    template.spec.requirements.iter().all(|r| {
        let key = canonical_key(&r.key);
        if key == label {
            hint_requirement_admits(&r.operator, &r.values, Some(value))
        } else if label == labels::INSTANCE_FAMILY
            && key == labels::INSTANCE_TYPE
            && r.operator == "In"
        {
            r.values.iter().any(|t| family_of(t) == value)
        } else {
            true
        }
    })
}

fn pool_admits_any(pool: &NodePool, label: &str, values: &[String]) -> bool {
    values.iter().any(|v| pool_admits(pool, label, v))
}

/// Whether some catalog family fits the hinted families and arch while passing `family_ok` and,
/// for one of its architectures, `arch_ok` (the constraints of a pool, a term or a nodeSelector).
fn catalog_family_arch_fits(
    catalog: &CatalogIndex,
    families: Option<&[String]>,
    arch: Option<&str>,
    family_ok: impl Fn(&str) -> bool,
    arch_ok: impl Fn(&str) -> bool,
) -> bool {
    if catalog.is_empty() {
        return true;
    }
    let fits = |family: &str, arches: ArchSet| {
        family_ok(family)
            && arches
                .iter()
                .any(|a| arch.is_none_or(|h| h == a) && arch_ok(a))
    };
    match families {
        Some(fs) => fs
            .iter()
            .any(|f| catalog.families.get(f).is_some_and(|a| fits(f, *a))),
        None => catalog.families.iter().any(|(f, a)| fits(f, *a)),
    }
}

/// Whether the pool can launch some catalog family that fits the hinted families and arch.
fn pool_family_arch_ok(
    pool: &NodePool,
    catalog: &CatalogIndex,
    families: Option<&[String]>,
    arch: Option<&str>,
) -> bool {
    catalog_family_arch_fits(
        catalog,
        families,
        arch,
        |f| pool_admits(pool, labels::INSTANCE_FAMILY, f),
        |a| pool_admits(pool, labels::ARCH, a),
    )
}

/// Whether a term constrains the family side (family or instance type) or the arch side.
fn term_mentions(term: &NodeSelectorTerm, family_side: bool) -> bool {
    term.match_expressions.iter().flatten().any(|e| {
        let key = canonical_key(&e.key);
        if family_side {
            key == labels::INSTANCE_FAMILY || key == labels::INSTANCE_TYPE
        } else {
            key == labels::ARCH
        }
    })
}

/// Whether the term leaves room for a catalog family that fits the family and arch hints. Only
/// scans the catalog when the term constrains the side the hints do not.
fn term_family_arch_ok(
    term: &NodeSelectorTerm,
    catalog: &CatalogIndex,
    families: Option<&[String]>,
    arch: Option<&str>,
) -> bool {
    let needed = (families.is_some() && term_mentions(term, false))
        || (arch.is_some() && term_mentions(term, true));
    !needed
        || catalog_family_arch_fits(
            catalog,
            families,
            arch,
            |f| term_admits_value(term, labels::INSTANCE_FAMILY, f),
            |a| term_admits_value(term, labels::ARCH, a),
        )
}

fn describe_pool_on(pool: &NodePool, label: &str) -> String {
    let mut parts: Vec<String> = pool
        .spec
        .template
        .spec
        .requirements
        .iter()
        .filter(|r| {
            let key = canonical_key(&r.key);
            key == label
                || (label == labels::INSTANCE_FAMILY
                    && (key == labels::INSTANCE_TYPE || key == labels::ARCH))
                || (label == labels::ARCH && key == labels::INSTANCE_FAMILY)
        })
        .map(|r| describe_requirement(&r.key, &r.operator, &r.values))
        .collect();
    for (k, v) in &pool.spec.template.metadata.labels {
        if canonical_key(k) == label {
            parts.push(format!("label {k}={v}"));
        }
    }
    let name = pool_name(pool);
    if parts.is_empty() {
        name.to_string()
    } else {
        format!("{name} requires {}", parts.join(" and "))
    }
}

fn explain_pools(pools: &[NodePool], label: &str) -> String {
    let mut shown_pools: Vec<String> = pools
        .iter()
        .take(MAX_POOLS_EXPLAINED)
        .map(|p| describe_pool_on(p, label))
        .collect();
    if pools.len() > MAX_POOLS_EXPLAINED {
        shown_pools.push(format!("and {} more", pools.len() - MAX_POOLS_EXPLAINED));
    }
    shown_pools.join("; ")
}

fn check_node_pools(
    hints: &[ParsedHint<'_>],
    pools: &[NodePool],
    catalog: &CatalogIndex,
) -> Result<Vec<String>, Denial> {
    let mut warnings = Vec::new();
    let required: Vec<(&ParsedHint<'_>, &'static str)> = hints
        .iter()
        .filter_map(|h| h.required_label().map(|l| (h, l)))
        .collect();
    let families = find_hint(hints, HintKey::InstanceFamily).map(|h| h.values.as_slice());
    let arch = find_hint(hints, HintKey::Arch)
        .and_then(|h| h.values.first())
        .map(String::as_str);
    for (h, label) in &required {
        if pools.is_empty() {
            return Err(h.denial(
                DenialKind::NoNodePool,
                "no NodePool exists, so no node can be launched for it".to_string(),
            ));
        }
        let ok = pools.iter().any(|p| {
            pool_admits_any(p, label, &h.values)
                && match h.key {
                    HintKey::InstanceFamily => {
                        pool_family_arch_ok(p, catalog, Some(&h.values), None)
                    }
                    HintKey::Arch => pool_family_arch_ok(p, catalog, None, arch),
                    _ => true,
                }
        });
        if !ok {
            let reason = if h.key == HintKey::NodePool {
                format!(
                    "no NodePool named {} exists",
                    shown(h.values.first().map_or("", String::as_str))
                )
            } else {
                format!("no NodePool allows it ({})", explain_pools(pools, label))
            };
            return Err(h.denial(DenialKind::NoNodePool, reason));
        }
    }
    if required.len() > 1 {
        let jointly = pools.iter().any(|p| {
            required
                .iter()
                .all(|(h, label)| pool_admits_any(p, label, &h.values))
                && ((families.is_none() && arch.is_none())
                    || pool_family_arch_ok(p, catalog, families, arch))
        });
        if !jointly {
            let involved: Vec<&ParsedHint<'_>> = required.iter().map(|(h, _)| *h).collect();
            return Err(joint_denial(
                &involved,
                DenialKind::NoNodePool,
                "each is allowed by some NodePool, but no single NodePool allows all of them"
                    .to_string(),
            ));
        }
    }
    if let Some(h) = hints.iter().find(|h| h.preferred)
        && !pools
            .iter()
            .any(|p| pool_admits(p, labels::CAPACITY_TYPE, "spot"))
    {
        warnings.push(format!(
            "{}={}: no NodePool allows spot capacity, so the preference has no effect",
            h.annotation,
            shown(h.raw)
        ));
    }
    Ok(warnings)
}

/// Escapes one RFC 6901 reference token: `~` → `~0`, `/` → `~1` (in that order).
pub fn escape_pointer_token(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// Joins escaped tokens into a JSON Pointer.
fn pointer(tokens: &[&str]) -> String {
    let mut out = String::with_capacity(tokens.iter().map(|t| t.len() + 1).sum());
    for t in tokens {
        out.push('/');
        if t.contains(['~', '/']) {
            out.push_str(&escape_pointer_token(t));
        } else {
            out.push_str(t);
        }
    }
    out
}

fn add(path: String, value: Value) -> PatchOp {
    PatchOp {
        op: "add",
        path,
        value,
    }
}

fn expression_json(label: &str, values: &[String]) -> Value {
    json!({"key": label, "operator": "In", "values": values})
}

/// Whether `term` already holds a requirement at least as strict as `label In values`.
fn term_implies(term: &NodeSelectorTerm, label: &str, values: &[String]) -> bool {
    term.match_expressions.iter().flatten().any(|e| {
        e.key == label
            && e.operator == "In"
            && e.values
                .as_deref()
                .is_some_and(|vs| !vs.is_empty() && vs.iter().all(|v| values.contains(v)))
    })
}

fn has_spot_preference(spec: &PodSpec) -> bool {
    spec.affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| {
            na.preferred_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .is_some_and(|terms| {
            terms.iter().any(|t| {
                t.preference.match_expressions.iter().flatten().any(|e| {
                    e.key == labels::CAPACITY_TYPE
                        && e.operator == "In"
                        && e.values.as_deref() == Some(&["spot".to_string()][..])
                })
            })
        })
}

fn build_patch(
    spec: &PodSpec,
    hints: &[ParsedHint<'_>],
    ctx: &HintContext<'_>,
    warnings: &mut Vec<String>,
) -> Vec<PatchOp> {
    let mut patch = Vec::new();
    if ctx.set_scheduler_name {
        match spec.scheduler_name.as_deref() {
            None | Some("") | Some(DEFAULT_SCHEDULER) => patch.push(add(
                pointer(&["spec", "schedulerName"]),
                Value::String(labels::SCHEDULER_NAME.to_string()),
            )),
            Some(labels::SCHEDULER_NAME) => {}
            Some(other) => warnings.push(format!(
                "schedulerName {} left unchanged; the hints are still enforced through node affinity",
                shown(other)
            )),
        }
    }
    let required: Vec<(&'static str, &[String])> = hints
        .iter()
        .filter_map(|h| h.required_label().map(|l| (l, h.values.as_slice())))
        .collect();
    let want_preferred = hints.iter().any(|h| h.preferred) && !has_spot_preference(spec);
    if required.is_empty() && !want_preferred {
        return patch;
    }
    let expressions = || -> Value {
        Value::Array(
            required
                .iter()
                .map(|(label, values)| expression_json(label, values))
                .collect(),
        )
    };
    let preferred_term = || -> Value {
        json!({
            "weight": ctx.spot_preferred_weight,
            "preference": {"matchExpressions": [expression_json(labels::CAPACITY_TYPE, &["spot".to_string()])]},
        })
    };
    let new_node_affinity = || -> Value {
        let mut obj = Map::new();
        if !required.is_empty() {
            obj.insert(
                REQUIRED.to_string(),
                json!({"nodeSelectorTerms": [{"matchExpressions": expressions()}]}),
            );
        }
        if want_preferred {
            obj.insert(PREFERRED.to_string(), Value::Array(vec![preferred_term()]));
        }
        Value::Object(obj)
    };
    let Some(affinity) = spec.affinity.as_ref() else {
        patch.push(add(
            pointer(&["spec", "affinity"]),
            json!({"nodeAffinity": new_node_affinity()}),
        ));
        return patch;
    };
    let Some(node_affinity) = affinity.node_affinity.as_ref() else {
        patch.push(add(
            pointer(&["spec", "affinity", "nodeAffinity"]),
            new_node_affinity(),
        ));
        return patch;
    };
    if !required.is_empty() {
        match node_affinity
            .required_during_scheduling_ignored_during_execution
            .as_ref()
        {
            None => patch.push(add(
                pointer(&["spec", "affinity", "nodeAffinity", REQUIRED]),
                json!({"nodeSelectorTerms": [{"matchExpressions": expressions()}]}),
            )),
            Some(selector) => {
                // An empty term list matches nothing; adding a term would loosen it, so it
                // stays as it is (and the apiserver's validation rejects it).
                for (i, term) in selector.node_selector_terms.iter().enumerate() {
                    if term_is_empty(term) {
                        continue;
                    }
                    let missing: Vec<Value> = required
                        .iter()
                        .filter(|(label, values)| !term_implies(term, label, values))
                        .map(|(label, values)| expression_json(label, values))
                        .collect();
                    if missing.is_empty() {
                        continue;
                    }
                    let index = i.to_string();
                    let base = [
                        "spec",
                        "affinity",
                        "nodeAffinity",
                        REQUIRED,
                        "nodeSelectorTerms",
                        index.as_str(),
                        "matchExpressions",
                    ];
                    if term.match_expressions.is_none() {
                        patch.push(add(pointer(&base), Value::Array(missing)));
                    } else {
                        let path = pointer(&[&base[..], &["-"]].concat());
                        for e in missing {
                            patch.push(add(path.clone(), e));
                        }
                    }
                }
            }
        }
    }
    if want_preferred {
        match node_affinity
            .preferred_during_scheduling_ignored_during_execution
            .as_ref()
        {
            None => patch.push(add(
                pointer(&["spec", "affinity", "nodeAffinity", PREFERRED]),
                Value::Array(vec![preferred_term()]),
            )),
            Some(_) => patch.push(add(
                pointer(&["spec", "affinity", "nodeAffinity", PREFERRED, "-"]),
                preferred_term(),
            )),
        }
    }
    patch
}

#[cfg(test)]
mod tests;
