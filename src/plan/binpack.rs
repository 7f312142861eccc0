//! Packing pending pods onto existing nodes, in-flight claims and new bins.
//!
//! Pods are grouped into *shapes* (identical pods, by [`PodDemand::group_key`]). For each shape
//! and pool the compatible types and offerings are computed once, as one `u64` offering mask per
//! type. Shapes are packed largest first; each is split into per-zone subgroups when it spreads
//! over zones or has zonal affinity, then placed on existing capacity, then first-fit into open
//! new bins, then into new bins whose type is chosen by price per pod. Finished bins are
//! right-sized to their cheapest type in `select::rank_options`.
//!
//! Index safety: every per-type and per-shape vector here is built with the catalog's and the
//! shape list's lengths, and indices only ever come from enumerating those same lists.

// Index loops over parallel per-type and per-dimension arrays read clearer than zips here.
#![allow(clippy::needless_range_loop)]

use std::collections::HashMap;

use super::lower_bound::PatternBudget;
use super::select::{
    Amount, Candidate, DIMS, Ranked, Scoring, TypePrices, best_new_type, fit_count, holds,
    offering_bit, rank_options, zone_bits,
};
use super::{ClaimOption, NewClaim, Placement, Plan, PlanInput, PodView, Target, Unplaceable};
use crate::model::labels::{CAPACITY_TYPE, HOSTNAME, NODEPOOL, REGION, ZONE};
use crate::model::pod::{HostPort, TopologyKey};
use crate::model::quantity::{format_bytes, format_milli};
use crate::model::requirements::{PodSelector, Requirements, Terms, lookup};
use crate::model::resources::names;
use crate::model::taints::first_untolerated;
use crate::model::{CapacityType, PodDemand, Resources};

/// Largest number of zones the offering bit layout supports (two bits per zone in a `u64`).
const MAX_ZONES: usize = 32;

/// LP rounding applies to at most this many pod shapes (the master LP is dense in them).
const ROUNDING_MAX_ITEMS: usize = 64;
/// Column generation's work for LP rounding (no final tightening pass: only columns matter).
const ROUNDING_BUDGET: PatternBudget = PatternBudget {
    rounds: 20,
    search: 100,
    final_search: 100,
    columns_per_round: 40,
};
/// Nodes diving may fix, at most (each step re-solves the master LP over known columns).
const ROUNDING_DIVE_STEPS: usize = 200;

/// Takes `floor(x_j)` nodes of each pattern `j` (pods per item, never more than `remaining`).
fn take_whole(
    columns: &[(Vec<u32>, f64)],
    x: &[f64],
    remaining: &mut [u32],
    nodes: &mut Vec<Vec<u32>>,
) -> bool {
    let mut taken = false;
    for ((counts, _), xj) in columns.iter().zip(x) {
        let whole = (xj + 1e-6).floor() as u64;
        for _ in 0..whole {
            let node: Vec<u32> = counts
                .iter()
                .zip(remaining.iter())
                .map(|(c, r)| (*c).min(*r))
                .collect();
            if node.iter().all(|c| *c == 0) {
                break;
            }
            for (r, c) in remaining.iter_mut().zip(&node) {
                *r -= c;
            }
            nodes.push(node);
            taken = true;
        }
    }
    taken
}

/// Diving: solves the master LP over `columns` (cut to what is left) for the pods left, takes
/// every whole node of its solution, or else one node of its largest pattern, and repeats.
fn dive(
    columns: &[(Vec<u32>, f64)],
    remaining: &mut [u32],
    nodes: &mut Vec<Vec<u32>>,
    steps: usize,
) {
    for _ in 0..steps {
        let active: Vec<usize> = (0..remaining.len()).filter(|i| remaining[*i] > 0).collect();
        if active.is_empty() {
            return;
        }
        // Columns cut to the pods left, duplicates merged at the lower price.
        let mut cut: HashMap<Vec<u32>, f64> = HashMap::new();
        for (c, price) in columns {
            let v: Vec<u32> = active.iter().map(|&i| c[i].min(remaining[i])).collect();
            if v.iter().any(|x| *x > 0) {
                let e = cut.entry(v).or_insert(*price);
                *e = e.min(*price);
            }
        }
        let mut cols: Vec<(Vec<u32>, f64)> = cut.into_iter().collect();
        cols.sort_by(|a, b| a.0.cmp(&b.0));
        let demand: Vec<u32> = active.iter().map(|&i| remaining[i]).collect();
        let Some(x) = super::lower_bound::master_primal(&cols, &demand) else {
            return;
        };
        let full: Vec<(Vec<u32>, f64)> = cols
            .into_iter()
            .map(|(c, price)| {
                let mut f = vec![0u32; remaining.len()];
                for (p, &i) in active.iter().enumerate() {
                    f[i] = c[p];
                }
                (f, price)
            })
            .collect();
        if take_whole(&full, &x, remaining, nodes) {
            continue;
        }
        let Some(j) = (0..x.len()).max_by(|a, b| x[*a].total_cmp(&x[*b]).then(b.cmp(a))) else {
            return;
        };
        if x[j] <= 0.0 {
            return;
        }
        take_whole(&full[j..=j], &[1.0], remaining, nodes);
    }
}

/// A group of identical pending pods.
#[derive(Clone)]
struct Shape {
    /// Indices into the input pods; `[0]` is the representative.
    pods: Vec<usize>,
    /// Requests in fixed dimensions.
    req: Amount,
    /// Per pool (input order): offering mask per type, or `None` when no type can hold it.
    compat: Vec<Option<Vec<u64>>>,
    /// Per pool: preferred-affinity score per type, when the pod has preferences.
    preference: Vec<Option<Vec<i32>>>,
    /// Why it cannot go on a new node, when no pool can take it.
    reason: Option<String>,
    /// Shapes it may not share a node with (bitset over shapes).
    conflicts: Vec<u64>,
    /// Hard hostname spreads: (max per node, shapes counted).
    host_spread: Vec<(u32, Vec<u64>)>,
    /// Whether any node-level topology applies (conflicts or hostname spread).
    node_topology: bool,
    /// Packing order key (bigger first).
    size: f64,
}

/// What kind of capacity a bin is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum BinKind {
    Existing(usize),
    InFlight(usize),
    New { pool: usize, ty: usize },
}

/// A node being filled.
#[derive(Clone)]
struct Bin {
    kind: BinKind,
    /// Room left.
    free: Amount,
    /// Offerings still allowed (existing capacity: its own zone).
    mask: u64,
    /// Shapes placed here and how many of each.
    members: Vec<(usize, u32)>,
    /// Pods placed here.
    pods: Vec<usize>,
    /// Pods already on existing capacity (for topology).
    resident: Option<usize>,
    /// Offerings allowed by the zone pins of the subgroups placed here (type-independent).
    pin: u64,
}

/// Planner state for one round.
#[derive(Clone)]
pub struct Packer<'a> {
    input: PlanInput<'a>,
    zones: Vec<String>,
    ext_names: Vec<String>,
    /// Pool indices by descending weight, then name.
    pool_order: Vec<usize>,
    prices: Vec<TypePrices>,
    capacity: Vec<(i64, i64)>,
    /// Per pool: room per type.
    room: Vec<Vec<Amount>>,
    /// Per pool: offering mask per type allowed by the pool's requirements.
    pool_mask: Vec<Vec<u64>>,
    shapes: Vec<Shape>,
    bins: Vec<Bin>,
    /// Per pool: (cpu, memory, nodes) used, for limits.
    pool_used: Vec<(i64, i64, i64)>,
    /// Pods per zone already placed, per shape (zone-pinned placements only).
    placed_zone: Vec<[u32; MAX_ZONES]>,
    /// Existing pods (on nodes and in-flight claims) with their zone, for topology counting.
    residents: Vec<(Vec<&'a PodView>, Option<usize>)>,
    unplaced: Vec<Unplaceable>,
    placements: Vec<Placement>,
    /// Smallest request of any shape per dimension, to close bins that can take nothing more.
    min_req: Amount,
    /// Spread each group over the nodes the whole mix needs (see [`Strategy`]).
    strategy: Strategy,
    /// Per pool: demand of the unpacked shapes that pool is first to take.
    aggregate: Vec<Amount>,
    /// Per pool: types with a price floor, cheapest first (see [`Packer::type_order`]).
    by_price: Vec<Vec<(usize, f64)>>,
}

/// Which pods are packed first (always GPU pods before the rest).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Order {
    /// The larger of vCPU and GiB ÷ 4.
    Dominant,
    /// vCPU.
    Cpu,
    /// Memory.
    Memory,
    /// vCPU plus GiB ÷ 4.
    Sum,
}

/// How new bins are chosen and filled; `plan` runs several and keeps the best plan.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Strategy {
    /// Each group fills new bins of its own cheapest type per pod.
    PerPod,
    /// Like `PerPod`, but room left beyond whole pods counts, since later groups fill it.
    Fractional,
    /// New bins are of the type that covers the pool's whole remaining mix most cheaply, and
    /// each group takes only its share of each, leaving room for complementary pods.
    Proportional,
}

fn to_amount(r: &Resources, ext_names: &[String]) -> Option<Amount> {
    let mut a = [0i64; DIMS];
    a[0] = r.cpu;
    a[1] = r.memory;
    a[2] = r.ephemeral;
    a[3] = r.pods;
    for (n, v) in &r.extended {
        if *v <= 0 {
            continue;
        }
        let i = ext_names.iter().position(|e| e == n)?;
        a[4 + i] = *v;
    }
    Some(a)
}

fn sub(a: &mut Amount, b: &Amount) {
    for d in 0..DIMS {
        a[d] = a[d].saturating_sub(b[d]);
    }
}

fn scaled(a: &Amount, k: u32) -> Amount {
    let mut out = *a;
    for v in &mut out {
        *v = v.saturating_mul(i64::from(k));
    }
    out
}

fn has_bit(set: &[u64], i: usize) -> bool {
    set.get(i / 64).is_some_and(|w| w & (1u64 << (i % 64)) != 0)
}

impl Shape {
    /// Whether a node holding `members` (shape index, count) keeps within this shape's hostname
    /// spread limits.
    fn within_host_spread<'a>(
        &self,
        members: impl Iterator<Item = &'a (usize, u32)> + Clone,
    ) -> bool {
        self.host_spread.iter().all(|(max, set)| {
            let n: u32 = members
                .clone()
                .filter(|(t, _)| has_bit(set, *t))
                .map(|(_, c)| *c)
                .sum();
            n <= *max
        })
    }
}

fn set_bit(set: &mut [u64], i: usize) {
    if let Some(w) = set.get_mut(i / 64) {
        *w |= 1u64 << (i % 64);
    }
}

impl<'a> Packer<'a> {
    /// Precomputes everything that does not change while packing.
    pub fn new(input: &PlanInput<'a>) -> Self {
        let catalog = input.catalog;
        // Zones, in catalog order of first appearance, sorted.
        let mut zones: Vec<String> = Vec::new();
        for t in &catalog.types {
            for o in &t.offerings {
                if !zones.contains(&o.zone) {
                    zones.push(o.zone.clone());
                }
            }
        }
        zones.sort();
        zones.truncate(MAX_ZONES);
        // Extended resources pods ask for (GPUs first so catalog capacity maps).
        let mut ext_names: Vec<String> = Vec::new();
        for p in input.pods {
            for (n, v) in &p.requests.extended {
                if *v > 0 && !ext_names.contains(n) {
                    ext_names.push(n.clone());
                }
            }
        }
        ext_names.sort();
        let prices: Vec<TypePrices> = catalog
            .types
            .iter()
            .map(|t| {
                let mut offerings: Vec<(u8, f64)> = t
                    .offerings
                    .iter()
                    .filter(|o| o.available)
                    .filter_map(|o| {
                        let z = zones.iter().position(|x| *x == o.zone)?;
                        let bit = offering_bit(z, o.capacity_type).trailing_zeros() as u8;
                        Some((bit, o.price))
                    })
                    .collect();
                offerings.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
                let available = offerings.iter().fold(0u64, |m, (b, _)| m | (1u64 << b));
                TypePrices {
                    offerings,
                    available,
                }
            })
            .collect();
        let capacity: Vec<(i64, i64)> = catalog
            .types
            .iter()
            .map(|t| (i64::from(t.vcpu) * 1000, (t.memory_mib as i64) << 20))
            .collect();
        let mut room = Vec::with_capacity(input.pools.len());
        let mut pool_mask = Vec::with_capacity(input.pools.len());
        for pool in input.pools {
            let overhead = to_amount(&pool.daemon_overhead, &ext_names).unwrap_or([0; DIMS]);
            let mut rooms = Vec::with_capacity(catalog.types.len());
            let mut masks = Vec::with_capacity(catalog.types.len());
            let off_mask = offering_mask(&pool.requirements, &zones);
            for (i, t) in catalog.types.iter().enumerate() {
                let alloc = t.allocatable(pool.max_pods);
                let mut a = [0i64; DIMS];
                a[0] = alloc.cpu;
                a[1] = alloc.memory;
                a[2] = alloc.ephemeral;
                a[3] = alloc.pods;
                if let Some(g) = ext_names.iter().position(|n| n == names::NVIDIA_GPU) {
                    a[4 + g] = i64::from(t.gpus);
                }
                sub(&mut a, &overhead);
                rooms.push(a);
                let labels = t.labels();
                let ok = type_matches(&pool.requirements, &labels, pool, &catalog.region);
                masks.push(if ok {
                    off_mask & prices[i].available
                } else {
                    0
                });
            }
            room.push(rooms);
            pool_mask.push(masks);
        }
        let mut pool_order: Vec<usize> = (0..input.pools.len()).collect();
        pool_order.sort_by(|a, b| {
            let (pa, pb) = (&input.pools[*a], &input.pools[*b]);
            pb.weight.cmp(&pa.weight).then(pa.name.cmp(&pb.name))
        });
        let mut p = Packer {
            input: *input,
            zones,
            ext_names,
            pool_order,
            prices,
            capacity,
            room,
            pool_mask,
            shapes: Vec::new(),
            bins: Vec::new(),
            pool_used: vec![(0, 0, 0); input.pools.len()],
            placed_zone: Vec::new(),
            residents: Vec::new(),
            unplaced: Vec::new(),
            placements: Vec::new(),
            min_req: [i64::MAX; DIMS],
            strategy: Strategy::PerPod,
            aggregate: vec![[0; DIMS]; input.pools.len()],
            by_price: Vec::new(),
        };
        p.by_price = p.type_order();
        p.build_shapes();
        p.build_existing();
        p
    }

    fn pool_index(&self, name: &str) -> Option<usize> {
        self.input.pools.iter().position(|p| p.name == name)
    }

    fn build_shapes(&mut self) {
        let input = self.input;
        let mut by_key: HashMap<u64, usize> = HashMap::new();
        let mut shapes: Vec<Shape> = Vec::new();
        for (i, pod) in input.pods.iter().enumerate() {
            let key = pod.group_key();
            if let Some(&s) = by_key.get(&key) {
                shapes[s].pods.push(i);
                continue;
            }
            let Some(req) = to_amount(&pod.requests, &self.ext_names) else {
                continue;
            };
            by_key.insert(key, shapes.len());
            shapes.push(Shape {
                pods: vec![i],
                req,
                compat: Vec::new(),
                preference: Vec::new(),
                reason: None,
                conflicts: Vec::new(),
                host_spread: Vec::new(),
                node_topology: false,
                size: 0.0,
            });
        }
        // Per-shape pool compatibility, with a cache on (pool, terms) for the label part.
        let mut term_cache: HashMap<(usize, Terms), Vec<u64>> = HashMap::new();
        for shape in &mut shapes {
            let pod = &input.pods[shape.pods[0]];
            let terms = pod.node_terms();
            let mut reasons = Vec::new();
            for &pi in &self.pool_order {
                let pool = &input.pools[pi];
                if let Some(t) = first_untolerated(&pod.tolerations, &pool.taints) {
                    reasons.push(format!(
                        "does not tolerate taint {}={}:{} of NodePool {}",
                        t.key,
                        t.value,
                        t.effect.as_str(),
                        pool.name
                    ));
                    continue;
                }
                let label_masks = term_cache
                    .entry((pi, terms.clone()))
                    .or_insert_with(|| {
                        terms_masks(&terms, &self.pool_mask[pi], input, pi, &self.zones)
                    })
                    .clone();
                let mut any_label = false;
                let mut masks = label_masks;
                for (ty, m) in masks.iter_mut().enumerate() {
                    if *m != 0 {
                        any_label = true;
                        if fit_count(&self.room[pi][ty], &shape.req) == 0 {
                            *m = 0;
                        }
                    }
                }
                if masks.iter().all(|m| *m == 0) {
                    reasons.push(if any_label {
                        self.too_big_reason(pi, &shape.req, &terms)
                    } else {
                        format!(
                            "NodePool {} allows no instance type or zone that matches the pod's node selector and affinity",
                            pool.name
                        )
                    });
                } else {
                    let pref = if pod.preferred_affinity.is_empty() {
                        None
                    } else {
                        Some(self.preference_scores(pi, pod, &masks))
                    };
                    shape.compat.resize(pi + 1, None);
                    shape.preference.resize(pi + 1, None);
                    shape.compat[pi] = Some(masks);
                    shape.preference[pi] = pref;
                }
            }
            shape.compat.resize(input.pools.len(), None);
            shape.preference.resize(input.pools.len(), None);
            if shape.compat.iter().all(Option::is_none) {
                shape.reason = Some(if reasons.is_empty() {
                    "no NodePool exists".to_string()
                } else {
                    reasons.join("; ")
                });
            }
            let r = &shape.req;
            shape.size = (r[0] as f64 / 1000.0).max(r[1] as f64 / (4u64 << 30) as f64)
                + 1000.0 * r[4..].iter().sum::<i64>() as f64;
        }
        // Node-level topology: anti-affinity and host ports (symmetric), hostname spread.
        let n = shapes.len();
        let words = n.div_ceil(64);
        let mut conflicts = vec![vec![0u64; words]; n];
        let mut host_spread: Vec<Vec<(u32, Vec<u64>)>> = vec![Vec::new(); n];
        let interesting: Vec<usize> = (0..n)
            .filter(|&s| {
                let p = &input.pods[shapes[s].pods[0]];
                !p.anti_affinity_hostname.is_empty()
                    || !p.host_ports.is_empty()
                    || p.topology_spread
                        .iter()
                        .any(|t| t.key == TopologyKey::Hostname && t.hard)
            })
            .collect();
        for &a in &interesting {
            let pa = &input.pods[shapes[a].pods[0]];
            for b in 0..n {
                let pb = &input.pods[shapes[b].pods[0]];
                let anti = pa
                    .anti_affinity_hostname
                    .iter()
                    .any(|sel| sel.selects(&pa.namespace, &pb.namespace, &pb.labels));
                let ports = pa
                    .host_ports
                    .iter()
                    .any(|x| pb.host_ports.iter().any(|y| x.conflicts(y)));
                if anti || ports {
                    set_bit(&mut conflicts[a], b);
                    set_bit(&mut conflicts[b], a);
                }
            }
            for t in pa
                .topology_spread
                .iter()
                .filter(|t| t.key == TopologyKey::Hostname && t.hard)
            {
                let mut set = vec![0u64; words];
                for b in 0..n {
                    let pb = &input.pods[shapes[b].pods[0]];
                    if t.selector.selects(&pa.namespace, &pb.namespace, &pb.labels) {
                        set_bit(&mut set, b);
                    }
                }
                host_spread[a].push((t.max_skew, set));
            }
        }
        for (s, shape) in shapes.iter_mut().enumerate() {
            shape.conflicts = std::mem::take(&mut conflicts[s]);
            shape.host_spread = std::mem::take(&mut host_spread[s]);
            shape.node_topology =
                shape.conflicts.iter().any(|w| *w != 0) || !shape.host_spread.is_empty();
            for d in 0..DIMS {
                if shape.req[d] > 0 {
                    self.min_req[d] = self.min_req[d].min(shape.req[d]);
                }
            }
        }
        self.placed_zone = vec![[0; MAX_ZONES]; shapes.len()];
        self.shapes = shapes;
    }

    fn build_existing(&mut self) {
        let input = self.input;
        for (i, node) in input.nodes.iter().enumerate() {
            let Some(alloc) = to_amount(&node.allocatable, &self.ext_names) else {
                continue;
            };
            let mut free = alloc;
            let req = to_amount(&node.requested, &self.ext_names).unwrap_or([0; DIMS]);
            sub(&mut free, &req);
            let zone = node
                .labels
                .get(ZONE)
                .and_then(|z| self.zones.iter().position(|x| x == z));
            let mask = zone.map_or(u64::MAX, zone_bits);
            self.residents.push((node.pods.iter().collect(), zone));
            self.bins.push(Bin {
                kind: BinKind::Existing(i),
                free,
                mask,
                members: Vec::new(),
                pods: Vec::new(),
                resident: Some(self.residents.len() - 1),
                pin: u64::MAX,
            });
            if let Some(p) = node.pool.as_deref().and_then(|p| self.pool_index(p)) {
                let u = &mut self.pool_used[p];
                u.0 += node.allocatable.cpu;
                u.1 += node.allocatable.memory;
                u.2 += 1;
            }
        }
        for (i, claim) in input.in_flight.iter().enumerate() {
            let Some(free) = to_amount(&claim.remaining, &self.ext_names) else {
                continue;
            };
            let mut mask = 0u64;
            let mut zone = None;
            for z in &claim.zones {
                if let Some(zi) = self.zones.iter().position(|x| x == z) {
                    for ct in &claim.capacity_types {
                        mask |= offering_bit(zi, *ct);
                    }
                    zone = Some(zi);
                }
            }
            if claim.zones.len() != 1 {
                zone = None;
            }
            self.residents.push((claim.pods.iter().collect(), zone));
            self.bins.push(Bin {
                kind: BinKind::InFlight(i),
                free,
                mask,
                members: Vec::new(),
                pods: Vec::new(),
                resident: Some(self.residents.len() - 1),
                pin: u64::MAX,
            });
            if let Some(p) = self.pool_index(&claim.pool) {
                let biggest = claim
                    .options
                    .iter()
                    .filter_map(|o| self.input.catalog.get(o))
                    .map(|t| (i64::from(t.vcpu) * 1000, (t.memory_mib as i64) << 20))
                    .max()
                    .unwrap_or((0, 0));
                let u = &mut self.pool_used[p];
                u.0 += biggest.0;
                u.1 += biggest.1;
                u.2 += 1;
            }
        }
    }

    fn too_big_reason(&self, pi: usize, req: &Amount, terms: &Terms) -> String {
        let pool = &self.input.pools[pi];
        let masks = terms_masks(terms, &self.pool_mask[pi], self.input, pi, &self.zones);
        let types = &self.input.catalog.types;
        let allowed = || {
            masks
                .iter()
                .enumerate()
                .filter(|(_, m)| **m != 0)
                .map(|(t, _)| t)
        };
        let dim_max = |d: usize| {
            allowed()
                .max_by_key(|t| self.room[pi][*t][d])
                .map(|t| (t, self.room[pi][t][d]))
        };
        if let Some((t, have)) = dim_max(0).filter(|(_, h)| *h < req[0]) {
            return format!(
                "needs {} vCPU; the largest type NodePool {} allows has {} ({} allocatable after reservations and DaemonSets)",
                format_milli(req[0]),
                pool.name,
                types[t].vcpu,
                format_milli(have)
            );
        }
        if let Some((t, have)) = dim_max(1).filter(|(_, h)| *h < req[1]) {
            return format!(
                "needs {} memory; the largest type NodePool {} allows has {} ({} allocatable after reservations and DaemonSets)",
                format_bytes(req[1]),
                pool.name,
                format_bytes((types[t].memory_mib as i64) << 20),
                format_bytes(have)
            );
        }
        for (i, name) in self.ext_names.iter().enumerate() {
            if let Some((_, have)) = dim_max(4 + i).filter(|(_, h)| *h < req[4 + i]) {
                return format!(
                    "needs {} {name}; the largest type NodePool {} allows has {have}",
                    req[4 + i],
                    pool.name
                );
            }
        }
        if let Some((_, have)) = dim_max(2).filter(|(_, h)| *h < req[2]) {
            return format!(
                "needs {} ephemeral storage; the largest type NodePool {} allows has {}",
                format_bytes(req[2]),
                pool.name,
                format_bytes(have)
            );
        }
        format!(
            "no single type NodePool {} allows has {} vCPU and {} memory free together",
            pool.name,
            format_milli(req[0]),
            format_bytes(req[1])
        )
    }

    fn preference_scores(&self, pi: usize, pod: &PodDemand, masks: &[u64]) -> Vec<i32> {
        let pool = &self.input.pools[pi];
        let types = &self.input.catalog.types;
        masks
            .iter()
            .enumerate()
            .map(|(ty, m)| {
                let Some((bit, _)) = self.prices[ty].cheapest(*m) else {
                    return 0;
                };
                let zone = self.zones.get(usize::from(bit) / 2).map(String::as_str);
                let ct = if bit % 2 == 0 { "spot" } else { "on-demand" };
                let labels = types[ty].labels();
                pod.preferred_affinity
                    .iter()
                    .filter(|(_, term)| {
                        term.matches(|k| {
                            node_label(&labels, pool, &self.input.catalog.region, zone, Some(ct), k)
                        })
                    })
                    .map(|(w, _)| *w)
                    .sum()
            })
            .collect()
    }

    /// How many more pods of `s` topology allows on bin `b`.
    fn topology_cap(&self, s: usize, b: usize) -> u32 {
        let shape = &self.shapes[s];
        let bin = &self.bins[b];
        let mut cap = u32::MAX;
        if shape.node_topology {
            if bin
                .members
                .iter()
                .any(|(m, _)| has_bit(&shape.conflicts, *m))
            {
                return 0;
            }
            for (max, set) in &shape.host_spread {
                let n: u32 = bin
                    .members
                    .iter()
                    .filter(|(m, _)| has_bit(set, *m))
                    .map(|(_, c)| *c)
                    .sum();
                cap = cap.min(max.saturating_sub(n));
            }
            if has_bit(&shape.conflicts, s) {
                cap = cap.min(1);
            }
        }
        if let Some(r) = bin.resident {
            let pod = &self.input.pods[shape.pods[0]];
            let (residents, _) = &self.residents[r];
            if !residents.is_empty() {
                cap = cap.min(resident_cap(pod, residents));
            }
        }
        cap
    }

    /// Whether shape `s` may use existing bin `b` at all (labels, taints, zone pin).
    fn existing_ok(&self, s: usize, b: usize, pin: u64) -> bool {
        let bin = &self.bins[b];
        if bin.mask & pin == 0 {
            return false;
        }
        let pod = &self.input.pods[self.shapes[s].pods[0]];
        match bin.kind {
            BinKind::Existing(i) => {
                let node = &self.input.nodes[i];
                first_untolerated(&pod.tolerations, &node.taints).is_none()
                    && pod.node_terms().matches(|k| {
                        if k == HOSTNAME {
                            return Some(node.name.as_str());
                        }
                        lookup(&node.labels, k)
                    })
            }
            BinKind::InFlight(i) => {
                let claim = &self.input.in_flight[i];
                let Some(pi) = self.pool_index(&claim.pool) else {
                    return false;
                };
                let Some(compat) = &self.shapes[s].compat[pi] else {
                    return false;
                };
                !claim.options.is_empty()
                    && claim.options.iter().all(|o| {
                        self.input
                            .catalog
                            .types
                            .binary_search_by(|t| t.name.as_str().cmp(o))
                            .ok()
                            .is_some_and(|t| compat[t] & bin.mask & pin != 0)
                    })
            }
            BinKind::New { .. } => false,
        }
    }

    /// Places up to `n` pods of `s` into bin `b`; returns how many.
    fn put(&mut self, s: usize, b: usize, n: u32, cursor: &mut Vec<usize>, pin: u64) -> u32 {
        let shape = &self.shapes[s];
        let k = fit_count(&self.bins[b].free, &shape.req)
            .min(self.topology_cap(s, b))
            .min(n);
        if k == 0 {
            return 0;
        }
        let req = shape.req;
        let bin = &mut self.bins[b];
        sub(&mut bin.free, &scaled(&req, k));
        match bin.members.iter_mut().find(|(m, _)| *m == s) {
            Some(e) => e.1 += k,
            None => bin.members.push((s, k)),
        }
        if let BinKind::New { pool, ty } = bin.kind {
            bin.mask &= self.shapes[s].compat[pool].as_ref().map_or(0, |c| c[ty]) & pin;
            bin.pin &= pin;
        }
        let take = cursor.len() - k as usize;
        bin.pods.extend(cursor.drain(take..));
        let zone = match bin.kind {
            BinKind::Existing(_) | BinKind::InFlight(_) => {
                bin.resident.and_then(|r| self.residents[r].1)
            }
            BinKind::New { .. } => single_zone(bin.mask),
        };
        if let Some(z) = zone.filter(|z| *z < MAX_ZONES) {
            self.placed_zone[s][z] += k;
        }
        k
    }

    /// The first pool (by weight) that can take shape `s` on a new node.
    fn first_pool(&self, s: usize) -> Option<usize> {
        self.pool_order
            .iter()
            .copied()
            .find(|p| self.shapes[s].compat[*p].is_some())
    }

    /// Runs the packing with a strategy and a packing order, and builds the plan.
    pub fn run_ordered(self, strategy: Strategy, order: Order) -> Plan {
        let mut packed = self.packed(strategy, order);
        packed.improve();
        packed.finish()
    }

    /// Packs with a strategy and a packing order, merging and absorbing bins, without building
    /// the plan, so `plan` can compare runs by [`Packer::outcome`] and polish only the best.
    pub fn packed(mut self, strategy: Strategy, order: Order) -> Self {
        for shape in &mut self.shapes {
            let r = &shape.req;
            let cpu = r[0] as f64 / 1000.0;
            let mem = r[1] as f64 / (4u64 << 30) as f64;
            let base = match order {
                Order::Dominant => cpu.max(mem),
                Order::Cpu => cpu + mem * 1e-3,
                Order::Memory => mem + cpu * 1e-3,
                Order::Sum => cpu + mem,
            };
            shape.size = base + 1000.0 * r[4..].iter().sum::<i64>() as f64;
        }
        self.pack_with(strategy)
    }

    /// Runs the packing with a strategy and builds the plan.
    pub fn run_with(self, strategy: Strategy) -> Plan {
        let mut packed = self.pack_with(strategy);
        packed.improve();
        packed.finish()
    }

    /// Packs with a strategy, merging and absorbing bins.
    fn pack_with(mut self, strategy: Strategy) -> Self {
        self.strategy = strategy;
        if strategy == Strategy::Proportional {
            for s in 0..self.shapes.len() {
                if let Some(p) = self.first_pool(s) {
                    let add = scaled(&self.shapes[s].req, self.shapes[s].pods.len() as u32);
                    for d in 0..DIMS {
                        self.aggregate[p][d] = self.aggregate[p][d].saturating_add(add[d]);
                    }
                }
            }
        }
        self.pack()
    }

    /// Runs the packing and builds the plan.
    pub fn run(self) -> Plan {
        let mut packed = self.pack();
        packed.improve();
        packed.finish()
    }

    /// Packs every shape, then merges and absorbs new bins.
    fn pack(mut self) -> Self {
        let mut order: Vec<usize> = (0..self.shapes.len()).collect();
        let input = self.input;
        order.sort_by(|a, b| {
            let (sa, sb) = (&self.shapes[*a], &self.shapes[*b]);
            let late = |s: &Shape| {
                let p = &input.pods[s.pods[0]];
                p.affinity_zone
                    .iter()
                    .any(|sel| !sel.selects(&p.namespace, &p.namespace, &p.labels))
            };
            late(sa)
                .cmp(&late(sb))
                .then(sb.size.total_cmp(&sa.size))
                .then(sa.pods[0].cmp(&sb.pods[0]))
        });
        let existing = self.bins.len();
        let mut open: Vec<usize> = Vec::new();
        for s in order {
            for (pin, pods) in self.subgroups(s) {
                let mut cursor = pods;
                cursor.reverse();
                self.place_group(s, pin, &mut cursor, existing, &mut open);
            }
            if self.strategy == Strategy::Proportional
                && let Some(p) = self.first_pool(s)
            {
                let done = scaled(&self.shapes[s].req, self.shapes[s].pods.len() as u32);
                for d in 0..DIMS {
                    self.aggregate[p][d] = self.aggregate[p][d].saturating_sub(done[d]);
                }
            }
        }
        let mut bins = std::mem::take(&mut self.bins);
        self.merge_bins(&mut bins, &self.by_price);
        self.absorb_bins(&mut bins, &self.by_price);
        self.bins = bins;
        self
    }

    /// (pods left unschedulable, $/hour of the new bins at their cheapest type): what `plan`
    /// compares runs by, fewer unschedulable pods first.
    pub fn outcome(&self) -> (usize, f64) {
        let type_order = &self.by_price;
        let mut cost = 0.0;
        for bin in &self.bins {
            let BinKind::New { pool, .. } = bin.kind else {
                continue;
            };
            if bin.pods.is_empty() {
                continue;
            }
            let used = self.used_of(&bin.members);
            cost += type_order
                .get(pool)
                .and_then(|o| {
                    self.cheapest_type(o, pool, bin.pin, &bin.members, &used, f64::INFINITY)
                })
                .map_or(f64::INFINITY, |(_, p)| p);
        }
        (self.unplaced.len(), cost)
    }

    /// The requests of `members` together.
    fn used_of(&self, members: &[(usize, u32)]) -> Amount {
        let mut used = [0i64; DIMS];
        for (s, c) in members {
            let add = scaled(&self.shapes[*s].req, *c);
            for d in 0..DIMS {
                used[d] = used[d].saturating_add(add[d]);
            }
        }
        used
    }

    /// Splits a shape into (offering pin, pods) subgroups for zone spread and zone affinity.
    fn subgroups(&mut self, s: usize) -> Vec<(u64, Vec<usize>)> {
        let input = self.input;
        let shape = &self.shapes[s];
        let pod = &input.pods[shape.pods[0]];
        let all = shape.pods.clone();
        // Zones the shape could use on new capacity, or on existing capacity.
        let mut possible = 0u64;
        for c in shape.compat.iter().flatten() {
            for m in c {
                possible |= m;
            }
        }
        for bin in &self.bins {
            if let Some(r) = bin.resident
                && let Some(z) = self.residents[r].1
            {
                possible |= zone_bits(z);
            }
        }
        let zone_ok = |z: usize| possible & zone_bits(z) != 0;
        let mut pin = u64::MAX;
        if let Some(sel) = pod.affinity_zone.first() {
            let counts = self.zone_counts(s, sel);
            let with_match: Vec<usize> = (0..self.zones.len())
                .filter(|z| counts[*z] > 0 && zone_ok(*z))
                .collect();
            let chosen = if let Some(z) = with_match.first() {
                Some(*z)
            } else if sel.selects(&pod.namespace, &pod.namespace, &pod.labels) {
                self.cheapest_zone(s)
            } else {
                None
            };
            match chosen {
                Some(z) => pin = zone_bits(z),
                None => {
                    let reason = format!(
                        "requires a pod matching {} in its zone (pod affinity), and none is running or planned",
                        describe_selector(sel)
                    );
                    self.unplace(&all, &reason);
                    return Vec::new();
                }
            }
        }
        let spread = pod
            .topology_spread
            .iter()
            .find(|t| t.key == TopologyKey::Zone)
            .cloned();
        let Some(spread) = spread else {
            return vec![(pin, all)];
        };
        let domains: Vec<usize> = (0..self.zones.len())
            .filter(|z| zone_ok(*z) && pin & zone_bits(*z) != 0)
            .collect();
        if domains.is_empty() {
            if spread.hard {
                self.unplace(
                    &all,
                    "no zone it may use offers a type that fits it (topology spread on zone)",
                );
                return Vec::new();
            }
            return vec![(pin, all)];
        }
        let mut counts = self.zone_counts(s, &spread.selector);
        let mut per_zone = vec![0usize; self.zones.len()];
        for _ in 0..all.len() {
            // INVARIANT: `domains` is non-empty, checked above.
            let mut best = domains[0];
            for &z in &domains {
                if counts[z] < counts[best] {
                    best = z;
                }
            }
            counts[best] += 1;
            per_zone[best] += 1;
        }
        let mut out = Vec::new();
        let mut rest = all.as_slice();
        for &z in &domains {
            let (now, later) = rest.split_at(per_zone[z].min(rest.len()));
            if !now.is_empty() {
                out.push((pin & zone_bits(z), now.to_vec()));
            }
            rest = later;
        }
        out
    }

    /// Pods matching `sel` per zone: residents plus pods placed so far in this plan.
    fn zone_counts(&self, s: usize, sel: &PodSelector) -> Vec<u32> {
        let input = self.input;
        let own = &input.pods[self.shapes[s].pods[0]];
        let mut counts = vec![0u32; self.zones.len()];
        for (pods, zone) in &self.residents {
            if let Some(z) = zone {
                for p in pods {
                    if sel.selects(&own.namespace, &p.namespace, &p.labels) {
                        counts[*z] += 1;
                    }
                }
            }
        }
        for (t, shape) in self.shapes.iter().enumerate() {
            let p = &input.pods[shape.pods[0]];
            if sel.selects(&own.namespace, &p.namespace, &p.labels) {
                for (z, c) in counts.iter_mut().enumerate() {
                    *c += self.placed_zone[t].get(z).copied().unwrap_or(0);
                }
            }
        }
        counts
    }

    /// The zone of the cheapest offering of the best type for `s` in its first usable pool.
    fn cheapest_zone(&self, s: usize) -> Option<usize> {
        let shape = &self.shapes[s];
        for &pi in &self.pool_order {
            let Some(compat) = &shape.compat[pi] else {
                continue;
            };
            let c = Candidate {
                compat,
                room: &self.room[pi],
                prices: &self.prices,
                capacity: &self.capacity,
                preference: None,
            };
            let n = u32::try_from(shape.pods.len()).unwrap_or(u32::MAX);
            if let Some(ch) = best_new_type(
                &c,
                u64::MAX,
                &shape.req,
                u32::MAX,
                n,
                (i64::MAX, i64::MAX),
                Scoring::PerPod,
            ) && let Some((bit, _)) = self.prices[ch.ty].cheapest(compat[ch.ty])
            {
                return Some(usize::from(bit) / 2);
            }
        }
        // Only existing capacity: its first zone.
        self.residents.iter().find_map(|(_, z)| *z)
    }

    fn unplace(&mut self, pods: &[usize], reason: &str) {
        for &p in pods {
            self.unplaced.push(Unplaceable {
                pod: p,
                reason: reason.to_string(),
            });
        }
    }

    fn place_group(
        &mut self,
        s: usize,
        pin: u64,
        cursor: &mut Vec<usize>,
        existing: usize,
        open: &mut Vec<usize>,
    ) {
        // 1. Existing nodes and in-flight claims.
        for b in 0..existing {
            if cursor.is_empty() {
                return;
            }
            if fit_count(&self.bins[b].free, &self.shapes[s].req) == 0
                || !self.existing_ok(s, b, pin)
            {
                continue;
            }
            let n = cursor.len() as u32;
            self.put(s, b, n, cursor, pin);
        }
        // 2. Open new bins, first fit.
        let mut closed = false;
        for &b in open.iter() {
            if cursor.is_empty() {
                break;
            }
            let bin = &self.bins[b];
            let BinKind::New { pool, ty } = bin.kind else {
                continue;
            };
            let Some(compat) = &self.shapes[s].compat[pool] else {
                continue;
            };
            if compat[ty] & bin.mask & pin == 0 {
                continue;
            }
            let n = cursor.len() as u32;
            if self.put(s, b, n, cursor, pin) > 0
                && fit_count(&self.bins[b].free, &self.min_req) == 0
            {
                closed = true;
            }
        }
        if closed {
            let bins = &self.bins;
            let min_req = self.min_req;
            open.retain(|b| fit_count(&bins[*b].free, &min_req) > 0);
        }
        // 3. New bins, by pool weight; the type by price per pod.
        let mut choice_cache: Option<(usize, super::select::Choice)> = None;
        while !cursor.is_empty() {
            let remaining = cursor.len() as u32;
            let shape = &self.shapes[s];
            let cap = if shape.node_topology {
                self.new_bin_cap(s)
            } else {
                u32::MAX
            };
            let reuse = choice_cache.filter(|(_, ch)| ch.count <= remaining);
            let picked = match reuse {
                Some(x) if self.within_limits(x.0, x.1.ty) => Some(x),
                _ => self.pick_new(s, pin, cap, remaining),
            };
            let Some((pool, ch)) = picked else {
                let reason = self.no_new_bin_reason(s, pin);
                let rest: Vec<usize> = std::mem::take(cursor);
                self.unplace(&rest, &reason);
                return;
            };
            choice_cache = Some((pool, ch));
            let Some(compat) = &self.shapes[s].compat[pool] else {
                return;
            };
            let b = self.bins.len();
            self.bins.push(Bin {
                kind: BinKind::New { pool, ty: ch.ty },
                free: self.room[pool][ch.ty],
                mask: compat[ch.ty] & pin,
                members: Vec::new(),
                pods: Vec::new(),
                resident: None,
                pin,
            });
            let (cpu, mem) = self.capacity[ch.ty];
            let u = &mut self.pool_used[pool];
            u.0 += cpu;
            u.1 += mem;
            u.2 += 1;
            let placed = self.put(s, b, ch.count.min(remaining), cursor, pin);
            if placed == 0 {
                // Cannot happen (the type was chosen to fit); stop rather than loop.
                let rest: Vec<usize> = std::mem::take(cursor);
                self.unplace(&rest, "internal: chosen type did not fit");
                return;
            }
            if fit_count(&self.bins[b].free, &self.min_req) > 0 {
                open.push(b);
            }
        }
    }

    /// Topology cap for `s` on an empty node.
    fn new_bin_cap(&self, s: usize) -> u32 {
        let shape = &self.shapes[s];
        let mut cap = u32::MAX;
        for (max, _) in &shape.host_spread {
            cap = cap.min(*max);
        }
        if has_bit(&shape.conflicts, s) {
            cap = cap.min(1);
        }
        cap.max(1)
    }

    fn headroom(&self, pool: usize) -> Option<(i64, i64)> {
        let limits = &self.input.pools[pool].limits;
        let (cpu, mem, nodes) = self.pool_used[pool];
        if limits.nodes.is_some_and(|l| nodes + 1 > l) {
            return None;
        }
        Some((
            limits.cpu.map_or(i64::MAX, |l| l - cpu),
            limits.memory.map_or(i64::MAX, |l| l - mem),
        ))
    }

    fn within_limits(&self, pool: usize, ty: usize) -> bool {
        self.headroom(pool).is_some_and(|(c, m)| {
            let (tc, tm) = self.capacity[ty];
            tc <= c && tm <= m
        })
    }

    fn pick_new(
        &self,
        s: usize,
        pin: u64,
        cap: u32,
        remaining: u32,
    ) -> Option<(usize, super::select::Choice)> {
        let shape = &self.shapes[s];
        for &pi in &self.pool_order {
            let Some(compat) = &shape.compat[pi] else {
                continue;
            };
            let Some(headroom) = self.headroom(pi) else {
                continue;
            };
            let c = Candidate {
                compat,
                room: &self.room[pi],
                prices: &self.prices,
                capacity: &self.capacity,
                preference: shape.preference[pi].as_deref(),
            };
            let scoring = match self.strategy {
                _ if shape.node_topology => Scoring::PerPod,
                Strategy::PerPod => Scoring::PerPod,
                Strategy::Fractional => Scoring::Fractional,
                Strategy::Proportional => Scoring::Aggregate(&self.aggregate[pi]),
            };
            if let Some(mut ch) =
                best_new_type(&c, pin, &shape.req, cap, remaining, headroom, scoring)
            {
                if let Scoring::Aggregate(total) = scoring {
                    // This group's share of each of the nodes the whole mix needs.
                    let nodes =
                        super::select::nodes_to_cover(&self.room[pi][ch.ty], &shape.req, total);
                    if nodes.is_finite() && nodes >= 1.0 {
                        let share = (f64::from(remaining) / nodes).ceil() as u32;
                        ch.count = ch.count.min(share.max(1));
                    }
                }
                return Some((pi, ch));
            }
        }
        None
    }

    fn no_new_bin_reason(&self, s: usize, pin: u64) -> String {
        let shape = &self.shapes[s];
        if let Some(r) = &shape.reason {
            return r.clone();
        }
        let mut reasons = Vec::new();
        for &pi in &self.pool_order {
            let pool = &self.input.pools[pi];
            let Some(compat) = &shape.compat[pi] else {
                continue;
            };
            if !compat.iter().any(|m| m & pin != 0) {
                let zones = self.mask_zones(pin);
                reasons.push(format!(
                    "NodePool {} offers no type that fits it in {}",
                    pool.name,
                    zones.join(", ")
                ));
                continue;
            }
            let (cpu, mem, nodes) = self.pool_used[pi];
            let l = &pool.limits;
            if l.nodes.is_some_and(|x| nodes + 1 > x) {
                reasons.push(format!(
                    "NodePool {} is at its limit of {} nodes",
                    pool.name, nodes
                ));
            } else if let Some(x) = l.cpu {
                reasons.push(format!(
                    "NodePool {} limit cpu {} would be exceeded ({} in use)",
                    pool.name,
                    format_milli(x),
                    format_milli(cpu)
                ));
            } else if let Some(x) = l.memory {
                reasons.push(format!(
                    "NodePool {} limit memory {} would be exceeded ({} in use)",
                    pool.name,
                    format_bytes(x),
                    format_bytes(mem)
                ));
            }
        }
        if reasons.is_empty() {
            "no NodePool can launch a node for it".to_string()
        } else {
            reasons.join("; ")
        }
    }

    fn mask_zones(&self, mask: u64) -> Vec<String> {
        self.zones
            .iter()
            .enumerate()
            .filter(|(z, _)| mask & zone_bits(*z) != 0)
            .map(|(_, n)| n.clone())
            .collect()
    }

    /// Offerings every member allows on type `ty` of `pool`, within `pin`.
    fn members_mask(&self, pool: usize, pin: u64, members: &[(usize, u32)], ty: usize) -> u64 {
        let mut m = pin;
        for (s, _) in members {
            m &= self.shapes[*s].compat[pool].as_ref().map_or(0, |c| c[ty]);
            if m == 0 {
                break;
            }
        }
        m
    }

    /// The cheapest type of `pool` that holds `used` for `members`, as `(type, price)`.
    fn cheapest_type(
        &self,
        order: &[(usize, f64)],
        pool: usize,
        pin: u64,
        members: &[(usize, u32)],
        used: &Amount,
        limit: f64,
    ) -> Option<(usize, f64)> {
        let mut best: Option<(usize, f64)> = None;
        for &(t, floor) in order {
            if floor >= best.map_or(limit, |(_, p)| p.min(limit)) {
                break;
            }
            if !super::select::holds(&self.room[pool][t], used) {
                continue;
            }
            let m = self.members_mask(pool, pin, members, t);
            if let Some((_, price)) = self.prices[t].cheapest(m)
                && best.is_none_or(|(_, p)| price < p)
            {
                best = Some((t, price));
            }
        }
        best
    }

    /// Whether two member lists may share a node (anti-affinity, ports, hostname spread), checking
    /// the constraints of both sides.
    fn may_share(&self, a: &[(usize, u32)], b: &[(usize, u32)]) -> bool {
        self.may_join(a, b) && self.may_join(b, a)
    }

    /// Whether `a`'s constraints allow `b` beside it.
    fn may_join(&self, a: &[(usize, u32)], b: &[(usize, u32)]) -> bool {
        for (s, _) in a {
            let shape = &self.shapes[*s];
            if !shape.node_topology {
                continue;
            }
            if b.iter().any(|(t, _)| has_bit(&shape.conflicts, *t)) {
                return false;
            }
            if !shape.within_host_spread(a.iter().chain(b)) {
                return false;
            }
        }
        true
    }

    /// Per pool: types with a price floor (the cheapest offering the pool allows), cheapest first.
    fn type_order(&self) -> Vec<Vec<(usize, f64)>> {
        (0..self.input.pools.len())
            .map(|p| {
                let mut v: Vec<(usize, f64)> = (0..self.prices.len())
                    .filter_map(|t| {
                        self.prices[t]
                            .cheapest(self.pool_mask[p][t])
                            .map(|(_, price)| (t, price))
                    })
                    .collect();
                v.sort_by(|a, b| a.1.total_cmp(&b.1));
                v
            })
            .collect()
    }

    /// Empties the cheapest new bins into the room other bins have left on their own cheapest
    /// type, so the emptied node is not bought at all and no other node grows.
    fn absorb_bins(&self, bins: &mut [Bin], type_order: &[Vec<(usize, f64)>]) {
        let ids: Vec<usize> = (0..bins.len())
            .filter(|b| matches!(bins[*b].kind, BinKind::New { .. }) && !bins[*b].pods.is_empty())
            .collect();
        if ids.len() < 2 {
            return;
        }
        let shape_of = self.shape_of_pods();
        // Current cheapest type, price and free room of each bin.
        let mut state: Vec<(usize, usize, f64, Amount)> = Vec::with_capacity(ids.len());
        for &b in &ids {
            let bin = &bins[b];
            let BinKind::New { pool, .. } = bin.kind else {
                continue;
            };
            let mut used = [0i64; DIMS];
            for (s, c) in &bin.members {
                let add = scaled(&self.shapes[*s].req, *c);
                for d in 0..DIMS {
                    used[d] = used[d].saturating_add(add[d]);
                }
            }
            let Some((ty, price)) = type_order.get(pool).and_then(|o| {
                self.cheapest_type(o, pool, bin.pin, &bin.members, &used, f64::INFINITY)
            }) else {
                return;
            };
            let mut free = self.room[pool][ty];
            sub(&mut free, &used);
            state.push((pool, ty, price, free));
        }
        if state.len() != ids.len() {
            return;
        }
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_by(|a, b| state[*a].2.total_cmp(&state[*b].2));
        let mut alive = vec![true; ids.len()];
        // About half a million pair checks at most: every bin for small plans, fewer for huge.
        let candidates = (500_000 / ids.len()).max(64).min(ids.len());
        for &a in &order {
            if !alive[a] {
                continue;
            }
            let ba = &bins[ids[a]];
            let (pool, _, _, _) = state[a];
            let mut moves: Vec<(usize, usize, u32)> = Vec::new();
            let mut trial: Vec<(usize, Amount)> = Vec::new();
            let mut ok = true;
            for &(s, count) in &ba.members {
                let req = self.shapes[s].req;
                let mut left = count;
                for &b in order.iter().rev().take(candidates) {
                    if left == 0 {
                        break;
                    }
                    if b == a || !alive[b] || state[b].0 != pool {
                        continue;
                    }
                    let slot = trial.iter().position(|(x, _)| *x == b);
                    let free = slot.map_or(&state[b].3, |i| &trial[i].1);
                    if fit_count(free, &req) == 0 {
                        continue;
                    }
                    let bb = &bins[ids[b]];
                    let ty_b = state[b].1;
                    let compat = self.shapes[s].compat[pool].as_ref().map_or(0, |c| c[ty_b]);
                    if compat & self.members_mask(pool, bb.pin & ba.pin, &bb.members, ty_b) == 0
                        || !self.may_share(&ba.members, &bb.members)
                    {
                        continue;
                    }
                    let slot = match slot {
                        Some(i) => i,
                        None => {
                            trial.push((b, state[b].3));
                            trial.len() - 1
                        }
                    };
                    let k = fit_count(&trial[slot].1, &req).min(left);
                    if k > 0 {
                        sub(&mut trial[slot].1, &scaled(&req, k));
                        moves.push((b, s, k));
                        left -= k;
                    }
                }
                if left > 0 {
                    ok = false;
                    break;
                }
            }
            if !ok {
                continue;
            }
            // Commit: hand each shape's pods to the bins that took them.
            let mut pods_by_shape: HashMap<usize, Vec<usize>> = HashMap::new();
            for p in std::mem::take(&mut bins[ids[a]].pods) {
                pods_by_shape.entry(shape_of[p]).or_default().push(p);
            }
            let pin_a = bins[ids[a]].pin;
            bins[ids[a]].members.clear();
            for (b, s, k) in moves {
                let target = &mut bins[ids[b]];
                if let Some(list) = pods_by_shape.get_mut(&s) {
                    let at = list.len().saturating_sub(k as usize);
                    target.pods.extend(list.drain(at..));
                }
                match target.members.iter_mut().find(|(m, _)| *m == s) {
                    Some(e) => e.1 += k,
                    None => target.members.push((s, k)),
                }
                target.pin &= pin_a;
            }
            for (b, free) in trial {
                state[b].3 = free;
            }
            alive[a] = false;
        }
    }

    /// Whether one node may hold all of `members` (anti-affinity, ports, hostname spread).
    fn members_ok(&self, members: &[(usize, u32)]) -> bool {
        for &(s, c) in members {
            let shape = &self.shapes[s];
            if !shape.node_topology {
                continue;
            }
            if members
                .iter()
                .any(|&(t, _)| has_bit(&shape.conflicts, t) && (t != s || c > 1))
            {
                return false;
            }
            if !shape.within_host_spread(members.iter()) {
                return false;
            }
        }
        true
    }

    /// Improvement pass over the new bins: for pairs of bins of one pool, the pods of both are
    /// split afresh between two nodes (or put on one) whenever some split onto the cheapest
    /// types that hold each side costs less than the pair does now. This re-pairs
    /// complementary pods the greedy packing left on separate, half-used nodes.
    ///
    /// Bounded and deterministic: the most wasteful bins (price × unused share of CPU and
    /// memory) are tried first, each against a few equally wasteful bins and a few whose pods
    /// lean the other way (CPU-heavy against memory-heavy), and the pass stops after a bounded
    /// number of split evaluations. Only pools without CPU or memory limits take part (a split
    /// may change types); node counts never grow. No split is applied unless it is cheaper, so
    /// the plan never gets dearer.
    pub fn improve(&mut self) {
        /// Bins tried as the first of a pair, most wasteful first.
        const FIRST: usize = 48;
        /// Partners per bin: half by waste, half by complementary lean.
        const PARTNERS: usize = 12;
        /// Passes at most (a bin changes at most once per pass).
        const PASSES: usize = 2;
        /// Splits of one pair's pods enumerated at most.
        const MAX_SPLITS: u64 = 1024;
        // Split evaluations over all passes at most (each one or two cached type lookups, about
        // a third of a microsecond): in proportion to the pods, so small rounds stay fast.
        let max_evals = self
            .input
            .pods
            .len()
            .saturating_mul(64)
            .clamp(4_000, 60_000);
        struct State {
            bin: usize,
            pool: usize,
            price: f64,
            waste: f64,
            lean: f64,
        }
        let shape_of = self.shape_of_pods();
        let mut evals = 0usize;
        let mut cache: SplitCache = HashMap::new();
        for _ in 0..PASSES {
            let mut states: Vec<State> = Vec::new();
            for (b, bin) in self.bins.iter().enumerate() {
                let BinKind::New { pool, .. } = bin.kind else {
                    continue;
                };
                let limits = &self.input.pools[pool].limits;
                if bin.pods.is_empty() || limits.cpu.is_some() || limits.memory.is_some() {
                    continue;
                }
                let used = self.used_of(&bin.members);
                let Some((ty, price)) = self.by_price.get(pool).and_then(|o| {
                    self.cheapest_type(o, pool, bin.pin, &bin.members, &used, f64::INFINITY)
                }) else {
                    continue;
                };
                let room = &self.room[pool][ty];
                let share = |d: usize| {
                    if room[d] > 0 {
                        used[d] as f64 / room[d] as f64
                    } else {
                        1.0
                    }
                };
                let cpu = used[0] as f64 / 1000.0;
                let gib = used[1] as f64 / (1u64 << 30) as f64;
                states.push(State {
                    bin: b,
                    pool,
                    price,
                    waste: price * (1.0 - (share(0) + share(1)) / 2.0).max(0.0),
                    lean: cpu / (cpu + gib / 4.0).max(1e-12),
                });
            }
            if states.len() < 2 {
                return;
            }
            let mut by_waste: Vec<usize> = (0..states.len()).collect();
            by_waste.sort_by(|a, b| {
                states[*b]
                    .waste
                    .total_cmp(&states[*a].waste)
                    .then(states[*a].bin.cmp(&states[*b].bin))
            });
            let mut by_lean: Vec<usize> = (0..states.len()).collect();
            by_lean.sort_by(|a, b| {
                states[*a]
                    .lean
                    .total_cmp(&states[*b].lean)
                    .then(states[*a].bin.cmp(&states[*b].bin))
            });
            let mut touched = vec![false; states.len()];
            let mut improved = false;
            for &a in by_waste.iter().take(FIRST) {
                if touched[a] || evals >= max_evals {
                    continue;
                }
                let pool = states[a].pool;
                let usable = |x: &usize| {
                    *x != a && !touched[*x] && states[*x].pool == pool && {
                        let (ba, bx) = (&self.bins[states[a].bin], &self.bins[states[*x].bin]);
                        ba.pin & bx.pin != 0
                    }
                };
                let mut partners: Vec<usize> = by_waste
                    .iter()
                    .copied()
                    .filter(usable)
                    .take(PARTNERS / 2)
                    .collect();
                // Lean the other way: CPU-heavy partners for a bin whose CPU is idle.
                let ba = &self.bins[states[a].bin];
                let used_a = self.used_of(&ba.members);
                let wants_cpu_heavy = {
                    let cpu = used_a[0] as f64 / 1000.0;
                    let gib = used_a[1] as f64 / (1u64 << 30) as f64;
                    cpu < gib / 4.0
                };
                let lean_iter: Box<dyn Iterator<Item = &usize>> = if wants_cpu_heavy {
                    Box::new(by_lean.iter().rev())
                } else {
                    Box::new(by_lean.iter())
                };
                for x in lean_iter.copied().filter(usable) {
                    if partners.len() >= PARTNERS {
                        break;
                    }
                    if !partners.contains(&x) {
                        partners.push(x);
                    }
                }
                let mut best: Option<(f64, usize, Split)> = None;
                for &x in &partners {
                    if evals >= max_evals {
                        break;
                    }
                    let current = states[a].price + states[x].price;
                    if let Some(split) = self.best_split(
                        states[a].bin,
                        states[x].bin,
                        pool,
                        current,
                        MAX_SPLITS,
                        &mut evals,
                        &mut cache,
                    ) {
                        let saving = current - split.price();
                        if best.as_ref().is_none_or(|(s, _, _)| saving > *s) {
                            best = Some((saving, x, split));
                        }
                    }
                }
                if let Some((_, x, split)) = best {
                    self.apply_split(states[a].bin, states[x].bin, pool, split, &shape_of);
                    touched[a] = true;
                    touched[x] = true;
                    improved = true;
                }
            }
            if !improved || evals >= max_evals {
                break;
            }
        }
    }

    /// Each pending pod's shape index (`usize::MAX` for pods in no shape), for passes that move
    /// pods between bins by shape.
    fn shape_of_pods(&self) -> Vec<usize> {
        let mut shape_of = vec![usize::MAX; self.input.pods.len()];
        for (si, shape) in self.shapes.iter().enumerate() {
            for p in &shape.pods {
                shape_of[*p] = si;
            }
        }
        shape_of
    }

    /// LP rounding: re-packs the pods of unconstrained shapes from the configuration LP's
    /// solution, and keeps the result when it is cheaper than the packing it replaces.
    ///
    /// Only new bins of pools without limits whose pods all belong to *free* shapes take part
    /// (no topology spread, pod affinity or anti-affinity, host ports or preferred affinity of
    /// their own, counted by no other pending pod's selector, no zone pin): for those, any node
    /// of an allowed type with an offering every pod allows is valid, so each LP pattern is a
    /// node. Column generation (bounded by [`ROUNDING_BUDGET`]) solves the configuration LP
    /// over their pods and `floor(x)` nodes of each pattern are taken; the rest is then either
    /// packed greedily or rounded by diving (at most [`ROUNDING_DIVE_STEPS`] re-solves), and
    /// the cheaper packing is the candidate. Each node is the cheapest type of its pods' first
    /// pool that holds them. Returns whether the packing changed; it changes only when the new
    /// one costs less and leaves no more pods unschedulable.
    pub fn round_lp(&mut self) -> bool {
        let Some(candidate) = self.lp_rounded() else {
            return false;
        };
        let (before, after) = (self.outcome(), candidate.outcome());
        if after.0 <= before.0 && after.1 < before.1 - 1e-9 {
            *self = candidate;
            true
        } else {
            false
        }
    }

    /// The shapes LP rounding may move freely (see [`Packer::round_lp`]).
    fn free_shapes(&self) -> Vec<bool> {
        let pods = self.input.pods;
        let mut free: Vec<bool> = self
            .shapes
            .iter()
            .map(|sh| {
                let p = &pods[sh.pods[0]];
                !sh.node_topology
                    && sh.reason.is_none()
                    && p.topology_spread.is_empty()
                    && p.affinity_zone.is_empty()
                    && p.anti_affinity_hostname.is_empty()
                    && p.host_ports.is_empty()
                    && p.preferred_affinity.is_empty()
            })
            .collect();
        // Pods another pending pod's selector counts stay where the packer put them.
        for sh in &self.shapes {
            let p = &pods[sh.pods[0]];
            let selectors = p
                .topology_spread
                .iter()
                .map(|t| &t.selector)
                .chain(&p.affinity_zone)
                .chain(&p.anti_affinity_hostname);
            for sel in selectors {
                for (t, other) in self.shapes.iter().enumerate() {
                    let q = &pods[other.pods[0]];
                    if free[t] && sel.selects(&p.namespace, &q.namespace, &q.labels) {
                        free[t] = false;
                    }
                }
            }
        }
        free
    }

    /// The packing with LP rounding applied, or `None` when it does not apply.
    fn lp_rounded(&self) -> Option<Self> {
        let pool_ok: Vec<bool> = self
            .input
            .pools
            .iter()
            .map(|p| {
                p.limits.cpu.is_none() && p.limits.memory.is_none() && p.limits.nodes.is_none()
            })
            .collect();
        // A free shape goes to its first pool, as the packer opens new nodes, and that pool
        // must have no limits.
        let mut free = self.free_shapes();
        for (s, f) in free.iter_mut().enumerate() {
            *f = *f && self.first_pool(s).is_some_and(|p| pool_ok[p]);
        }
        let ids: Vec<usize> = (0..self.bins.len())
            .filter(|b| {
                let bin = &self.bins[*b];
                matches!(bin.kind, BinKind::New { pool, .. } if pool_ok[pool])
                    && bin.pin == u64::MAX
                    && !bin.pods.is_empty()
                    && bin.members.iter().all(|(s, _)| free[*s])
            })
            .collect();
        if ids.len() < 2 {
            return None;
        }
        let mut placed_new = vec![false; self.input.pods.len()];
        for &b in &ids {
            for &p in &self.bins[b].pods {
                placed_new[p] = true;
            }
        }
        let (mut lp, item_of) = self.pattern_items(&placed_new, true);
        if lp.items.is_empty() || lp.items.len() > ROUNDING_MAX_ITEMS || lp.kinds.is_empty() {
            return None;
        }
        let mut shape_of_item = vec![usize::MAX; lp.items.len()];
        for (s, &i) in item_of.iter().enumerate() {
            if i != usize::MAX {
                shape_of_item[i] = s;
            }
        }
        // The packing's own nodes seed the LP, once per distinct composition.
        let mut seeds: HashMap<Vec<u32>, f64> = HashMap::new();
        for &b in &ids {
            let bin = &self.bins[b];
            let BinKind::New { pool, .. } = bin.kind else {
                continue;
            };
            let mut counts = vec![0u32; lp.items.len()];
            for (s, c) in &bin.members {
                counts[item_of[*s]] += c;
            }
            if seeds.contains_key(&counts) {
                continue;
            }
            let used = self.used_of(&bin.members);
            let price = self.by_price.get(pool).and_then(|o| {
                self.cheapest_type(o, pool, bin.pin, &bin.members, &used, f64::INFINITY)
            });
            if let Some((_, price)) = price {
                seeds.insert(counts, price);
            }
        }
        lp.seeds = seeds.into_iter().collect();
        lp.seeds.sort_by(|a, b| a.0.cmp(&b.0));
        // Floor the LP's solution; what is left is either packed greedily or rounded by
        // diving (the cheaper packing wins).
        let mut remaining: Vec<u32> = lp.items.iter().map(|it| it.demand).collect();
        let generated = super::lower_bound::generate_columns(&lp, &ROUNDING_BUDGET, false);
        let columns = generated.columns;
        let mut nodes: Vec<Vec<u32>> = Vec::new();
        let x = super::lower_bound::master_primal(&columns, &remaining)?;
        take_whole(&columns, &x, &mut remaining, &mut nodes);
        let shape_of = self.shape_of_pods();
        let greedy = self.build_rounded(&ids, &nodes, &shape_of_item, &shape_of);
        dive(&columns, &mut remaining, &mut nodes, ROUNDING_DIVE_STEPS);
        let dived = if remaining.iter().all(|r| *r == 0) {
            self.build_rounded(&ids, &nodes, &shape_of_item, &shape_of)
        } else {
            None
        };
        match (greedy, dived) {
            (Some(g), Some(d)) => Some(if d.outcome() < g.outcome() { d } else { g }),
            (g, d) => g.or(d),
        }
    }

    /// The packing with new bins `ids` replaced by one node per pattern of `nodes` (pods per
    /// item; `shape_of_item` maps items to shapes, `shape_of` pods to shapes), and the pods no
    /// pattern took packed greedily (first fit into those nodes, then new nodes), then merged
    /// and absorbed.
    fn build_rounded(
        &self,
        ids: &[usize],
        nodes: &[Vec<u32>],
        shape_of_item: &[usize],
        shape_of: &[usize],
    ) -> Option<Self> {
        let mut out = self.clone();
        let mut stacks: Vec<Vec<usize>> = vec![Vec::new(); self.shapes.len()];
        let mut removed = vec![false; self.bins.len()];
        for &b in ids {
            removed[b] = true;
            let bin = &self.bins[b];
            for &p in &bin.pods {
                stacks.get_mut(*shape_of.get(p)?)?.push(p);
            }
            if let BinKind::New { pool, ty } = bin.kind {
                let (cpu, mem) = self.capacity[ty];
                let u = &mut out.pool_used[pool];
                u.0 -= cpu;
                u.1 -= mem;
                u.2 -= 1;
            }
        }
        let mut bins: Vec<Bin> = std::mem::take(&mut out.bins)
            .into_iter()
            .zip(&removed)
            .filter(|(_, r)| !**r)
            .map(|(b, _)| b)
            .collect();
        let first_new = bins.len();
        for node in nodes {
            let members: Vec<(usize, u32)> = node
                .iter()
                .enumerate()
                .filter(|(_, c)| **c > 0)
                .map(|(i, c)| (shape_of_item[i], *c))
                .collect();
            let used = self.used_of(&members);
            // Every member's first pool: the LP's kinds allow no other.
            let pool = self.first_pool(members.first()?.0)?;
            if members
                .iter()
                .any(|(s, _)| self.first_pool(*s) != Some(pool))
            {
                return None;
            }
            let (ty, _) = self.by_price.get(pool).and_then(|o| {
                self.cheapest_type(o, pool, u64::MAX, &members, &used, f64::INFINITY)
            })?;
            let mut pods = Vec::new();
            for &(s, c) in &members {
                let stack = &mut stacks[s];
                let at = stack.len().checked_sub(c as usize)?;
                pods.extend(stack.drain(at..));
            }
            let mut free = self.room[pool][ty];
            sub(&mut free, &used);
            bins.push(Bin {
                kind: BinKind::New { pool, ty },
                free,
                mask: self.members_mask(pool, u64::MAX, &members, ty),
                members,
                pods,
                resident: None,
                pin: u64::MAX,
            });
            let (cpu, mem) = self.capacity[ty];
            let u = &mut out.pool_used[pool];
            u.0 += cpu;
            u.1 += mem;
            u.2 += 1;
        }
        out.bins = bins;
        // What the LP left: first fit into the rounded nodes, then new nodes, largest first.
        let mut open: Vec<usize> = (first_new..out.bins.len())
            .filter(|b| fit_count(&out.bins[*b].free, &out.min_req) > 0)
            .collect();
        let mut order: Vec<usize> = (0..self.shapes.len())
            .filter(|s| !stacks[*s].is_empty())
            .collect();
        order.sort_by(|a, b| {
            self.shapes[*b]
                .size
                .total_cmp(&self.shapes[*a].size)
                .then(a.cmp(b))
        });
        let strategy = out.strategy;
        out.strategy = Strategy::PerPod;
        for s in order {
            let mut cursor = std::mem::take(&mut stacks[s]);
            out.place_group(s, u64::MAX, &mut cursor, 0, &mut open);
        }
        out.strategy = strategy;
        let mut bins = std::mem::take(&mut out.bins);
        out.merge_bins(&mut bins, &out.by_price);
        out.absorb_bins(&mut bins, &out.by_price);
        out.bins = bins;
        Some(out)
    }

    /// The cheapest split of bins `a` and `b`'s pods over two nodes (one may be empty) that
    /// costs less than `current`, if any.
    #[allow(clippy::too_many_arguments)]
    fn best_split(
        &self,
        a: usize,
        b: usize,
        pool: usize,
        current: f64,
        max_splits: u64,
        evals: &mut usize,
        cache: &mut SplitCache,
    ) -> Option<Split> {
        let (ba, bb) = (&self.bins[a], &self.bins[b]);
        let pin = ba.pin & bb.pin;
        let mut union: Vec<(usize, u32)> = ba.members.clone();
        for &(s, c) in &bb.members {
            match union.iter_mut().find(|(m, _)| *m == s) {
                Some(e) => e.1 += c,
                None => union.push((s, c)),
            }
        }
        union.sort_unstable();
        let splits: u64 = union
            .iter()
            .map(|(_, c)| u64::from(*c) + 1)
            .fold(1u64, |p, x| p.saturating_mul(x));
        if splits > max_splits {
            return None;
        }
        let order = self.by_price.get(pool)?;
        let mut lookup = |members: Vec<(usize, u32)>, evals: &mut usize| -> Option<(usize, f64)> {
            if members.is_empty() {
                return Some((usize::MAX, 0.0));
            }
            if let Some(hit) = cache.get(&(pool, pin, members.clone())) {
                return *hit;
            }
            *evals += 1;
            let r = if self.members_ok(&members) {
                let used = self.used_of(&members);
                self.cheapest_type(order, pool, pin, &members, &used, f64::INFINITY)
            } else {
                None
            };
            cache.insert((pool, pin, members), r);
            r
        };
        let n = union.len();
        let mut k = vec![0u32; n];
        let mut best: Option<Split> = None;
        loop {
            // Each split once: only when `k` is not above its complement.
            let comp: Vec<u32> = union.iter().zip(&k).map(|((_, c), x)| c - x).collect();
            if k <= comp {
                *evals += 1;
                let side = |x: &[u32]| -> Vec<(usize, u32)> {
                    union
                        .iter()
                        .zip(x)
                        .filter(|(_, x)| **x > 0)
                        .map(|((s, _), x)| (*s, *x))
                        .collect()
                };
                let limit = best.as_ref().map_or(current, |s| s.price()) - 1e-9;
                if let Some((t1, p1)) = lookup(side(&k), evals)
                    && p1 < limit
                    && let Some((t2, p2)) = lookup(side(&comp), evals)
                    && p1 + p2 < limit
                {
                    best = Some(Split {
                        first: (side(&k), t1, p1),
                        second: (side(&comp), t2, p2),
                    });
                }
            }
            let mut i = 0;
            while i < n {
                k[i] += 1;
                if k[i] <= union[i].1 {
                    break;
                }
                k[i] = 0;
                i += 1;
            }
            if i == n {
                break;
            }
        }
        best
    }

    /// Rewrites bins `a` and `b` to hold the two sides of `split`.
    fn apply_split(&mut self, a: usize, b: usize, pool: usize, split: Split, shape_of: &[usize]) {
        let pin = self.bins[a].pin & self.bins[b].pin;
        let mut pods: Vec<usize> = std::mem::take(&mut self.bins[a].pods);
        pods.append(&mut self.bins[b].pods);
        let mut by_shape: Vec<(usize, Vec<usize>)> = Vec::new();
        for p in pods {
            let s = shape_of.get(p).copied().unwrap_or(usize::MAX);
            match by_shape.iter_mut().find(|(x, _)| *x == s) {
                Some(e) => e.1.push(p),
                None => by_shape.push((s, vec![p])),
            }
        }
        for (bin, (members, ty, _)) in [(a, split.first), (b, split.second)] {
            let mut taken = Vec::new();
            for (s, c) in &members {
                if let Some((_, list)) = by_shape.iter_mut().find(|(x, _)| x == s) {
                    let at = list.len().saturating_sub(*c as usize);
                    taken.extend(list.drain(at..));
                }
            }
            let target = &mut self.bins[bin];
            target.pods = taken;
            target.pin = pin;
            if ty != usize::MAX {
                target.kind = BinKind::New { pool, ty };
                let mut free = self.room[pool][ty];
                sub(&mut free, &self.used_of(&members));
                let mask = self.members_mask(pool, pin, &members, ty);
                let target = &mut self.bins[bin];
                target.free = free;
                target.mask = mask;
                target.members = members;
            } else {
                target.members = members;
            }
        }
    }

    /// Merges pairs of new bins when one node for both is cheaper than the two: this recovers
    /// per-node reservations and pairs pods whose resources complement each other.
    fn merge_bins(&self, bins: &mut [Bin], type_order: &[Vec<(usize, f64)>]) {
        let ids: Vec<usize> = (0..bins.len())
            .filter(|b| matches!(bins[*b].kind, BinKind::New { .. }) && !bins[*b].pods.is_empty())
            .collect();
        if ids.len() < 2 {
            return;
        }
        let pool_of = |b: &Bin| match b.kind {
            BinKind::New { pool, .. } => pool,
            _ => usize::MAX,
        };
        let used_of = |b: &Bin| {
            let mut used = [0i64; DIMS];
            for (s, c) in &b.members {
                let add = scaled(&self.shapes[*s].req, *c);
                for d in 0..DIMS {
                    used[d] = used[d].saturating_add(add[d]);
                }
            }
            used
        };
        let mut used: Vec<Amount> = ids.iter().map(|b| used_of(&bins[*b])).collect();
        let mut price: Vec<f64> = ids
            .iter()
            .zip(&used)
            .map(|(b, u)| {
                let bin = &bins[*b];
                let pool = pool_of(bin);
                type_order
                    .get(pool)
                    .and_then(|o| {
                        self.cheapest_type(o, pool, bin.pin, &bin.members, u, f64::INFINITY)
                    })
                    .map_or(f64::INFINITY, |(_, p)| p)
            })
            .collect();
        let mut alive = vec![true; ids.len()];
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_by(|a, b| price[*a].total_cmp(&price[*b]));
        let n = order.len();
        const NEAR: usize = 8;
        const SPREAD: usize = 16;
        let stride = (n / SPREAD).max(1);
        for _pass in 0..3 {
            let mut merged_any = false;
            for ai in 0..n {
                let a = order[ai];
                if !alive[a] {
                    continue;
                }
                let mut best: Option<(usize, f64, f64)> = None;
                let near = (ai + 1..n).take(NEAR);
                let spread = (0..SPREAD).map(|k| (ai + 1 + NEAR + k * stride) % n);
                for bj in near.chain(spread) {
                    let b = order[bj];
                    if b == a || !alive[b] {
                        continue;
                    }
                    let (ba, bb) = (&bins[ids[a]], &bins[ids[b]]);
                    let pool = pool_of(ba);
                    if pool != pool_of(bb) || ba.pin & bb.pin == 0 {
                        continue;
                    }
                    if !self.may_share(&ba.members, &bb.members) {
                        continue;
                    }
                    let mut merged = used[a];
                    for d in 0..DIMS {
                        merged[d] = merged[d].saturating_add(used[b][d]);
                    }
                    let mut members = ba.members.clone();
                    members.extend(bb.members.iter().copied());
                    let limit = price[a] + price[b];
                    let Some((_, p)) = self.cheapest_type(
                        &type_order[pool],
                        pool,
                        ba.pin & bb.pin,
                        &members,
                        &merged,
                        limit,
                    ) else {
                        continue;
                    };
                    let saving = price[a] + price[b] - p;
                    if saving > 1e-9 && best.is_none_or(|(_, s, _)| saving > s) {
                        best = Some((b, saving, p));
                    }
                }
                if let Some((b, _, p)) = best {
                    let (ia, ib) = (ids[a], ids[b]);
                    let moved_members = std::mem::take(&mut bins[ia].members);
                    let moved_pods = std::mem::take(&mut bins[ia].pods);
                    let pin_a = bins[ia].pin;
                    let target = &mut bins[ib];
                    for (s, c) in moved_members {
                        match target.members.iter_mut().find(|(m, _)| *m == s) {
                            Some(e) => e.1 += c,
                            None => target.members.push((s, c)),
                        }
                    }
                    target.pods.extend(moved_pods);
                    target.pin &= pin_a;
                    for d in 0..DIMS {
                        used[b][d] = used[b][d].saturating_add(used[a][d]);
                    }
                    price[b] = p;
                    alive[a] = false;
                    merged_any = true;
                }
            }
            if !merged_any {
                break;
            }
        }
    }

    /// Builds the plan: placements on existing capacity, and each new bin right-sized.
    pub fn finish(mut self) -> Plan {
        let input = self.input;
        let mut plan = Plan {
            placements: std::mem::take(&mut self.placements),
            ..Default::default()
        };
        type Key = (usize, u64, Vec<(usize, u32)>);
        let mut cache: HashMap<Key, Option<Vec<Ranked>>> = HashMap::new();
        let bins = std::mem::take(&mut self.bins);
        for bin in bins {
            if bin.pods.is_empty() {
                continue;
            }
            match bin.kind {
                BinKind::Existing(i) => {
                    plan.placements.extend(bin.pods.iter().map(|p| Placement {
                        pod: *p,
                        target: Target::Node(input.nodes[i].name.clone()),
                    }))
                }
                BinKind::InFlight(i) => {
                    plan.placements.extend(bin.pods.iter().map(|p| Placement {
                        pod: *p,
                        target: Target::Claim(input.in_flight[i].name.clone()),
                    }))
                }
                BinKind::New { pool, ty } => {
                    let mut members = bin.members.clone();
                    members.sort_unstable();
                    let pin = bin.pin;
                    let key = (pool, pin, members);
                    let ranked = cache
                        .entry(key)
                        .or_insert_with_key(|(pool, pin, members)| {
                            let mut used = [0i64; DIMS];
                            for (s, c) in members {
                                let add = scaled(&self.shapes[*s].req, *c);
                                for d in 0..DIMS {
                                    used[d] = used[d].saturating_add(add[d]);
                                }
                            }
                            let r = rank_options(&self.room[*pool], &self.prices, &used, |t| {
                                let mut m = *pin;
                                for (s, _) in members {
                                    m &= self.shapes[*s].compat[*pool].as_ref().map_or(0, |c| c[t]);
                                    if m == 0 {
                                        break;
                                    }
                                }
                                m
                            });
                            if r.is_empty() { None } else { Some(r) }
                        })
                        .clone();
                    let ranked = ranked.unwrap_or_else(|| {
                        // Fall back to the type it was packed on, which holds its pods.
                        let m = bin.mask;
                        self.prices[ty]
                            .cheapest(m)
                            .map(|(bit, price)| {
                                vec![Ranked {
                                    ty,
                                    mask: m,
                                    bit,
                                    price,
                                }]
                            })
                            .unwrap_or_default()
                    });
                    let Some(first) = ranked.first().copied() else {
                        self.unplace(&bin.pods, "internal: no offering left for its node");
                        continue;
                    };
                    let mut union = 0u64;
                    for r in &ranked {
                        union |= r.mask;
                    }
                    let mut requests = input.pools[pool].daemon_overhead.clone();
                    for p in &bin.pods {
                        requests.add(&input.pods[*p].requests);
                    }
                    let mut capacity_types = Vec::new();
                    if union & 0x5555_5555_5555_5555 != 0 {
                        capacity_types.push(CapacityType::Spot);
                    }
                    if union & 0xAAAA_AAAA_AAAA_AAAA != 0 {
                        capacity_types.push(CapacityType::OnDemand);
                    }
                    plan.claims.push(NewClaim {
                        pool: input.pools[pool].name.clone(),
                        options: ranked
                            .iter()
                            .map(|r| ClaimOption {
                                instance_type: input.catalog.types[r.ty].name.clone(),
                                price: r.price,
                            })
                            .collect(),
                        zones: self.mask_zones(union),
                        capacity_types,
                        capacity_type: if first.bit % 2 == 0 {
                            CapacityType::Spot
                        } else {
                            CapacityType::OnDemand
                        },
                        price: first.price,
                        pods: bin.pods,
                        requests,
                    });
                }
            }
        }
        plan.unschedulable = std::mem::take(&mut self.unplaced);
        plan.unschedulable.sort_by_key(|u| u.pod);
        plan
    }

    /// The LP lower bound's inputs: row demands and columns `(entries, price)`.
    ///
    /// Pods are classed by what they may run on: the (pool, type, offering) triples their
    /// constraints allow and their size fits (zone pins are ignored, which only relaxes the
    /// bound). Classes share types, so their separate bounds cannot simply be added. Instead, for
    /// each class `c`, the pods of every class whose allowed set lies inside `c`'s can only run
    /// on `c`'s set, so the capacity bought there must cover their demand: one row per (such
    /// set, dimension). Every integral plan satisfies every row, so the optimum is a lower bound.
    pub(crate) fn bound_lp(&self, placed_new: &[bool]) -> (Vec<f64>, Vec<(Vec<f64>, f64)>) {
        let input = self.input;
        type Class = Vec<Option<Vec<u64>>>;
        let mut classes: Vec<(&Class, Amount, Vec<usize>)> = Vec::new();
        for (si, shape) in self.shapes.iter().enumerate() {
            let n = shape.pods.iter().filter(|p| placed_new[**p]).count() as u32;
            if n == 0 {
                continue;
            }
            let add = scaled(&shape.req, n);
            let slot = match classes.iter().position(|(k, _, _)| **k == shape.compat) {
                Some(i) => i,
                None => {
                    classes.push((&shape.compat, [0; DIMS], Vec::new()));
                    classes.len() - 1
                }
            };
            for d in 0..DIMS {
                classes[slot].1[d] = classes[slot].1[d].saturating_add(add[d]);
            }
            classes[slot].2.push(si);
        }
        let inside = |x: &Class, y: &Class| {
            x.iter().zip(y).all(|(a, b)| match (a, b) {
                (None, _) => true,
                (Some(_), None) => false,
                (Some(a), Some(b)) => a.iter().zip(b).all(|(p, q)| p & !q == 0),
            })
        };
        let k = classes.len();
        // Rows: (class whose allowed set bounds the subset, dimension, demand, subset index).
        let mut rows: Vec<(usize, usize, f64, usize)> = Vec::new();
        let mut subsets: Vec<Vec<bool>> = Vec::new();
        let mut limits: Vec<UseLimits> = Vec::new();
        for c in 0..k {
            let members: Vec<bool> = (0..k)
                .map(|c2| inside(classes[c2].0, classes[c].0))
                .collect();
            if subsets.contains(&members) {
                continue;
            }
            for d in 0..DIMS {
                let demand: i64 = (0..k)
                    .filter(|c2| members[*c2])
                    .map(|c2| classes[c2].1[d])
                    .sum();
                if demand > 0 {
                    rows.push((c, d, demand as f64, subsets.len()));
                }
            }
            let shapes = (0..k)
                .filter(|c2| members[*c2])
                .flat_map(|c2| classes[c2].2.iter().map(|s| &self.shapes[*s].req));
            limits.push(UseLimits::of(shapes));
            subsets.push(members);
        }
        // Columns: (pool, type, offering) at that offering's price: the cheapest offering of
        // each class on each type.
        let mut columns = Vec::new();
        let mut seen: HashMap<(usize, usize, u8), ()> = HashMap::new();
        for pi in 0..input.pools.len() {
            for ty in 0..self.prices.len() {
                for c in 0..k {
                    let Some(mask) = classes[c].0[pi].as_ref().map(|m| m[ty]) else {
                        continue;
                    };
                    let Some((bit, price)) = self.prices[ty].cheapest(mask) else {
                        continue;
                    };
                    if seen.insert((pi, ty, bit), ()).is_some() {
                        continue;
                    }
                    let room = &self.room[pi][ty];
                    let entries: Vec<f64> = rows
                        .iter()
                        .map(|(owner, d, demand, subset)| {
                            let allowed = classes[*owner].0[pi]
                                .as_ref()
                                .is_some_and(|m| m[ty] & (1u64 << bit) != 0);
                            if allowed {
                                limits[*subset].usable(room, *d) / demand
                            } else {
                                0.0
                            }
                        })
                        .collect();
                    columns.push((entries, price));
                }
            }
        }
        (rows.iter().map(|r| r.2).collect(), columns)
    }
}

/// Cheapest (type, price) per (pool, pin, members), or `None` when no type holds them.
type SplitCache = HashMap<(usize, u64, Vec<(usize, u32)>), Option<(usize, f64)>>;

/// Two nodes' worth of pods from the improvement pass: per side, (members, type, price); an
/// empty side has no type (`usize::MAX`) and costs nothing.
struct Split {
    first: (Vec<(usize, u32)>, usize, f64),
    second: (Vec<(usize, u32)>, usize, f64),
}

impl Split {
    fn price(&self) -> f64 {
        self.first.2 + self.second.2
    }
}

/// One kind of pod in the configuration LP: a shape's pods that the plan put on new nodes.
pub(crate) struct PatternItem {
    /// Requests of one pod.
    pub req: Amount,
    /// How many such pods the new nodes hold.
    pub demand: u32,
    /// The most one node may hold (the demand, or less for hostname anti-affinity and spread).
    pub cap: u32,
    /// Items it may not share a node with (anti-affinity, host ports; symmetric).
    pub conflicts: Vec<usize>,
}

/// One kind of node in the configuration LP: a (pool, type, offering set) a new node can be.
pub(crate) struct PatternKind {
    /// Room for pods after reservations and DaemonSets.
    pub room: Amount,
    /// The cheapest price at which a node of this kind can hold `allowed` pods.
    pub price: f64,
    /// Per item, whether its pods may run on this kind.
    pub allowed: Vec<bool>,
}

/// The inputs of the configuration LP over the pods a plan put on new nodes.
pub(crate) struct PatternLp {
    /// Pod kinds (one per shape with pods on new nodes).
    pub items: Vec<PatternItem>,
    /// Node kinds, with dominated ones (less room, fewer pods allowed, not cheaper) removed.
    pub kinds: Vec<PatternKind>,
    /// Patterns known to be feasible (a plan's own nodes: pods per item, price), which start
    /// column generation close to a good solution; they do not affect the bound's validity.
    pub seeds: Vec<(Vec<u32>, f64)>,
}

impl Packer<'_> {
    /// The configuration LP's items and node kinds for the pods marked in `placed_new`.
    ///
    /// Every new node of a plan is some (pool, type) launched at an offering every one of its
    /// pods allows; it is represented here by a kind with at least its room, at least its set of
    /// allowed pods and at most its price (an offering whose allowed set is a subset of a cheaper
    /// one's is dropped, and so is a kind dominated by another in room, set and price). Node-level
    /// topology is kept only where every plan obeys it: at most `cap` pods of an item per node
    /// and no two conflicting items together.
    pub(crate) fn pattern_lp(&self, placed_new: &[bool], plan: &Plan) -> PatternLp {
        let (mut lp, item_of) = self.pattern_items(placed_new, false);
        let shape_of = self.shape_of_pods();
        for c in &plan.claims {
            let mut counts = vec![0u32; lp.items.len()];
            let mut ok = !c.pods.is_empty();
            for p in &c.pods {
                match shape_of.get(*p).and_then(|s| item_of.get(*s)) {
                    Some(&i) if i < counts.len() => counts[i] += 1,
                    _ => ok = false,
                }
            }
            if ok {
                lp.seeds.push((counts, c.price));
            }
        }
        lp
    }

    /// The configuration LP's items (the shapes with pods marked in `placed_new`) and node kinds,
    /// without seeds; with each shape's item index (`usize::MAX` for shapes without such pods).
    /// With `first_pool_only`, a shape may use only the first pool (by weight) that can take it,
    /// as the packer opens new nodes; otherwise any pool it is compatible with (a relaxation).
    fn pattern_items(&self, placed_new: &[bool], first_pool_only: bool) -> (PatternLp, Vec<usize>) {
        let mut items = Vec::new();
        let mut item_of = vec![usize::MAX; self.shapes.len()];
        for (si, shape) in self.shapes.iter().enumerate() {
            let n = shape.pods.iter().filter(|p| placed_new[**p]).count() as u32;
            if n == 0 {
                continue;
            }
            // Only spreads whose selector counts the shape itself cap it on every plan's node.
            let mut cap = n;
            for (max, set) in &shape.host_spread {
                if has_bit(set, si) {
                    cap = cap.min(*max);
                }
            }
            if has_bit(&shape.conflicts, si) {
                cap = cap.min(1);
            }
            item_of[si] = items.len();
            items.push(PatternItem {
                req: shape.req,
                demand: n,
                cap: cap.max(1),
                conflicts: Vec::new(),
            });
        }
        let shape_ids: Vec<usize> = (0..self.shapes.len())
            .filter(|s| item_of[*s] != usize::MAX)
            .collect();
        for &a in &shape_ids {
            for &b in &shape_ids {
                if a != b && has_bit(&self.shapes[a].conflicts, b) {
                    items[item_of[a]].conflicts.push(item_of[b]);
                }
            }
        }
        let first: Vec<Option<usize>> = shape_ids.iter().map(|s| self.first_pool(*s)).collect();
        let mut kinds: Vec<PatternKind> = Vec::new();
        for pi in 0..self.input.pools.len() {
            for ty in 0..self.prices.len() {
                let masks: Vec<u64> = shape_ids
                    .iter()
                    .zip(&first)
                    .map(|(s, f)| {
                        if first_pool_only && *f != Some(pi) {
                            return 0;
                        }
                        self.shapes[*s].compat[pi].as_ref().map_or(0, |c| c[ty])
                    })
                    .collect();
                if masks.iter().all(|m| *m == 0) {
                    continue;
                }
                // Offerings cheapest first: a later set inside an earlier one is dominated.
                let mut kept: Vec<Vec<bool>> = Vec::new();
                for &(bit, price) in &self.prices[ty].offerings {
                    let set: Vec<bool> = masks.iter().map(|m| m & (1u64 << bit) != 0).collect();
                    if !set.iter().any(|x| *x) {
                        continue;
                    }
                    let dominated = kept
                        .iter()
                        .any(|k| k.iter().zip(&set).all(|(big, small)| *big || !*small));
                    if dominated {
                        continue;
                    }
                    kept.push(set.clone());
                    kinds.push(PatternKind {
                        room: self.room[pi][ty],
                        price,
                        allowed: set,
                    });
                }
            }
        }
        // Drop kinds another kind dominates (ties keep the first).
        let dominates = |k: &PatternKind, j: &PatternKind| {
            k.price <= j.price
                && holds(&k.room, &j.room)
                && k.allowed.iter().zip(&j.allowed).all(|(a, b)| *a || !*b)
        };
        let keep: Vec<bool> = (0..kinds.len())
            .map(|j| {
                !(0..kinds.len()).any(|k| {
                    k != j
                        && dominates(&kinds[k], &kinds[j])
                        && (k < j || !dominates(&kinds[j], &kinds[k]))
                })
            })
            .collect();
        let kinds = kinds
            .into_iter()
            .zip(keep)
            .filter(|(_, k)| *k)
            .map(|(k, _)| k)
            .collect();
        (
            PatternLp {
                items,
                kinds,
                seeds: Vec::new(),
            },
            item_of,
        )
    }
}

/// What pods of known shapes can use of one node, for a tighter and still valid lower bound:
/// pods whose memory per CPU is at least `r` use at most `memory ÷ r` CPU, and so on.
struct UseLimits {
    /// Least and most memory bytes per millicore (0 / ∞ when some pod asks no CPU).
    mem_per_cpu: (f64, f64),
    /// Largest request per pod, per dimension.
    max: [f64; DIMS],
    /// Smallest request per pod, per dimension.
    min: [f64; DIMS],
}

impl UseLimits {
    fn of<'s>(reqs: impl Iterator<Item = &'s Amount>) -> Self {
        let mut l = UseLimits {
            mem_per_cpu: (f64::INFINITY, 0.0),
            max: [0.0; DIMS],
            min: [f64::INFINITY; DIMS],
        };
        for r in reqs {
            let ratio = if r[0] > 0 {
                r[1] as f64 / r[0] as f64
            } else if r[1] > 0 {
                f64::INFINITY
            } else {
                0.0
            };
            let none_cpu = r[0] <= 0;
            l.mem_per_cpu.0 = l.mem_per_cpu.0.min(if none_cpu { 0.0 } else { ratio });
            l.mem_per_cpu.1 = l.mem_per_cpu.1.max(ratio);
            for d in 0..DIMS {
                l.max[d] = l.max[d].max(r[d] as f64);
                l.min[d] = l.min[d].min(r[d] as f64);
            }
        }
        l
    }

    /// The most of dimension `d` such pods can use on a node with `room`.
    fn usable(&self, room: &Amount, d: usize) -> f64 {
        let r = |i: usize| room[i].max(0) as f64;
        let mut u = r(d);
        let pods = r(3);
        match d {
            0 if self.mem_per_cpu.0 > 0.0 => u = u.min(r(1) / self.mem_per_cpu.0),
            1 if self.mem_per_cpu.1.is_finite() => u = u.min(r(0) * self.mem_per_cpu.1),
            3 => {
                for i in [0usize, 1] {
                    if self.min[i] > 0.0 {
                        u = u.min((r(i) / self.min[i]).floor());
                    }
                }
            }
            _ => {}
        }
        if d != 3 {
            u = u.min(pods * self.max[d]);
        }
        u
    }
}

/// The zone of a mask when it allows exactly one.
fn single_zone(mask: u64) -> Option<usize> {
    let mut zone = None;
    for z in 0..MAX_ZONES {
        if mask & zone_bits(z) != 0 {
            if zone.is_some() {
                return None;
            }
            zone = Some(z);
        }
    }
    zone
}

/// How many pods like `pod` may join a node holding `residents` (anti-affinity, ports, spread).
fn resident_cap(pod: &PodDemand, residents: &[&PodView]) -> u32 {
    let mut cap = u32::MAX;
    for r in residents {
        if pod
            .anti_affinity_hostname
            .iter()
            .any(|s| s.selects(&pod.namespace, &r.namespace, &r.labels))
            || pod
                .host_ports
                .iter()
                .any(|x| r.host_ports.iter().any(|y: &HostPort| x.conflicts(y)))
        {
            return 0;
        }
    }
    for t in pod
        .topology_spread
        .iter()
        .filter(|t| t.key == TopologyKey::Hostname && t.hard)
    {
        let n = residents
            .iter()
            .filter(|r| t.selector.selects(&pod.namespace, &r.namespace, &r.labels))
            .count() as u32;
        cap = cap.min(t.max_skew.saturating_sub(n));
    }
    cap
}

fn describe_selector(sel: &PodSelector) -> String {
    let parts: Vec<String> = sel.requirements.0.iter().map(|r| r.describe()).collect();
    if parts.is_empty() {
        "its selector".to_string()
    } else {
        parts.join(", ")
    }
}

/// A node label of a prospective node of `pool` with `type_labels`, in `zone` as `ct`.
fn node_label<'b>(
    type_labels: &'b [(&'static str, String)],
    pool: &'b crate::model::NodePoolView,
    region: &'b str,
    zone: Option<&'b str>,
    ct: Option<&'b str>,
    key: &str,
) -> Option<&'b str> {
    match key {
        ZONE => zone,
        CAPACITY_TYPE => ct,
        REGION => Some(region),
        NODEPOOL => Some(pool.name.as_str()),
        HOSTNAME => None,
        _ => type_labels
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
            .or_else(|| lookup(&pool.labels, key)),
    }
}

fn is_offering_key(key: &str) -> bool {
    key == ZONE || key == CAPACITY_TYPE
}

/// The offering bits allowed by the zone and capacity-type requirements of `reqs`.
fn offering_mask(reqs: &Requirements, zones: &[String]) -> u64 {
    let mut mask = 0u64;
    for (z, zone) in zones.iter().enumerate() {
        for ct in [CapacityType::Spot, CapacityType::OnDemand] {
            let ok = reqs.0.iter().filter(|r| is_offering_key(&r.key)).all(|r| {
                r.matches(Some(if r.key == ZONE {
                    zone.as_str()
                } else {
                    ct.as_str()
                }))
            });
            if ok {
                mask |= offering_bit(z, ct);
            }
        }
    }
    mask
}

/// Whether the type-level (non-offering) requirements hold for a type of `pool`.
fn type_matches(
    reqs: &Requirements,
    type_labels: &[(&'static str, String)],
    pool: &crate::model::NodePoolView,
    region: &str,
) -> bool {
    reqs.0
        .iter()
        .filter(|r| !is_offering_key(&r.key))
        .all(|r| r.matches(node_label(type_labels, pool, region, None, None, &r.key)))
}

/// Per type, the offerings allowed by the pool (`pool_mask`) and by some term of `terms`.
fn terms_masks(
    terms: &Terms,
    pool_mask: &[u64],
    input: PlanInput<'_>,
    pi: usize,
    zones: &[String],
) -> Vec<u64> {
    if terms.0.is_empty() {
        return pool_mask.to_vec();
    }
    let pool = &input.pools[pi];
    let region = input.catalog.region.as_str();
    let term_masks: Vec<u64> = terms.0.iter().map(|t| offering_mask(t, zones)).collect();
    input
        .catalog
        .types
        .iter()
        .zip(pool_mask)
        .map(|(t, pm)| {
            if *pm == 0 {
                return 0;
            }
            let labels = t.labels();
            let mut m = 0u64;
            for (term, tm) in terms.0.iter().zip(&term_masks) {
                if type_matches(term, &labels, pool, region) {
                    m |= tm;
                }
            }
            m & pm
        })
        .collect()
}
