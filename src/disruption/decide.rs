//! Pure disruption decisions: which nodes to remove or replace, and why.
//!
//! Every what-if runs through the planner: the pods of the nodes being considered become
//! pending demand, and every other node that can still take pods is the existing capacity. A
//! move is accepted only when the planner places every pod, needs at most one new node, that
//! node is cheaper than what it replaces, the pool's budget has room, and the churn guard holds.
//!
//! Methods run in order — expiration, empty nodes, multi-node consolidation, single-node
//! consolidation — and at most one move (a decision that relocates pods) is returned per call,
//! because the next what-if must see where the previous move's pods went.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use serde::Serialize;
use thiserror::Error;

use crate::kube::crd::{Budget, NodePool};
use crate::model::{Catalog, NodePoolView, PodDemand};
use crate::plan::{NewClaim, NodeView, Plan, PlanInput};

/// Why a node is disrupted; budgets may be scoped to some reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Reason {
    /// The node runs no pods that need moving.
    Empty,
    /// Its pods fit elsewhere, or on a cheaper node.
    Underutilized,
    /// It is older than its pool's `expireAfter`.
    Expired,
    /// The cloud is reclaiming it (spot warning, scheduled change) or recommends leaving it.
    Interrupted,
}

impl Reason {
    /// The name Karpenter budgets use (`Empty`, `Underutilized`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Empty => "Empty",
            Reason::Underutilized => "Underutilized",
            Reason::Expired => "Expired",
            Reason::Interrupted => "Interrupted",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "Empty" => Some(Reason::Empty),
            "Underutilized" => Some(Reason::Underutilized),
            "Expired" => Some(Reason::Expired),
            "Interrupted" => Some(Reason::Interrupted),
            _ => None,
        }
    }
}

/// What to do to the cluster.
// A handful of commands exist at a time; boxing the claim would only add noise at every use.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Command {
    /// Drain and delete these nodes; their pods fit on existing capacity (or none remain).
    Delete {
        /// Node names.
        nodes: Vec<String>,
    },
    /// Launch the replacement(s), wait for them, then drain and delete these nodes.
    Replace {
        /// Node names.
        nodes: Vec<String>,
        /// The node to launch (its `pods` indices are cleared: nothing is reserved on it).
        replacement: NewClaim,
        /// More nodes to launch with it; consolidation never uses these (one replacement at
        /// most), expiration and interruption do when the planner splits the pods.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        extra: Vec<NewClaim>,
    },
}

/// Most replacements one expiration or interruption launches; beyond that the pods go back to
/// the provisioner.
pub const MAX_REPLACEMENTS: usize = 10;

impl Command {
    /// The nodes to launch, first to last.
    pub fn replacements(&self) -> Vec<&NewClaim> {
        match self {
            Command::Delete { .. } => Vec::new(),
            Command::Replace {
                replacement, extra, ..
            } => std::iter::once(replacement).chain(extra).collect(),
        }
    }

    /// The nodes the command removes.
    pub fn nodes(&self) -> &[String] {
        match self {
            Command::Delete { nodes } | Command::Replace { nodes, .. } => nodes,
        }
    }
}

/// A command with the reason it was taken, for logs, events and budgets.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    /// What to do.
    pub command: Command,
    /// Why, as a budget category.
    pub reason: Reason,
    /// Why, for a person reading the log.
    pub message: String,
    /// USD/hour saved (removed prices minus the replacement's).
    pub savings: f64,
    /// Pods that will be evicted.
    pub pods: usize,
    /// Drain without waiting for the replacement (the instance is going away anyway).
    pub urgent: bool,
}

/// When a pool lets nodes be consolidated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsolidationPolicy {
    /// Only empty nodes are removed.
    WhenEmpty,
    /// Empty and underused nodes are removed or replaced.
    WhenEmptyOrUnderutilized,
}

/// A budget's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetNodes {
    /// Percent of the pool's nodes, rounded up.
    Percent(u32),
    /// An absolute count.
    Count(u32),
}

impl BudgetNodes {
    /// How many nodes this allows out of `total`.
    pub fn allowed(self, total: usize) -> usize {
        match self {
            BudgetNodes::Count(n) => n as usize,
            BudgetNodes::Percent(p) => (total * p as usize).div_ceil(100),
        }
    }
}

/// One field of a five-field cron expression: the values it matches.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CronField(Vec<u32>);

impl CronField {
    fn parse(text: &str, min: u32, max: u32) -> Option<Self> {
        let mut out = Vec::new();
        for part in text.split(',') {
            let (range, step) = match part.split_once('/') {
                Some((r, s)) => (r, s.parse::<u32>().ok().filter(|s| *s > 0)?),
                None => (part, 1),
            };
            let (lo, hi) = if range == "*" {
                (min, max)
            } else if let Some((a, b)) = range.split_once('-') {
                (a.parse().ok()?, b.parse().ok()?)
            } else {
                let v: u32 = range.parse().ok()?;
                (v, if step > 1 { max } else { v })
            };
            if lo < min || hi > max || lo > hi {
                return None;
            }
            out.extend((lo..=hi).step_by(step as usize));
        }
        Some(CronField(out))
    }

    fn matches(&self, v: u32) -> bool {
        self.0.contains(&v)
    }
}

/// A minimal UTC cron schedule: five fields (minute hour day-of-month month day-of-week), each
/// `*`, `N`, `A-B`, `*/S`, `A-B/S` or comma lists of those, plus `@hourly`, `@daily`,
/// `@midnight`, `@weekly`, `@monthly`, `@yearly`/`@annually`. Day-of-month and day-of-week must
/// both match (no Vixie-cron "either" rule).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    minute: CronField,
    hour: CronField,
    dom: CronField,
    month: CronField,
    dow: CronField,
}

impl Cron {
    /// Parses a schedule.
    ///
    /// # Errors
    /// A message naming the schedule.
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        let expanded = match text.trim() {
            "@hourly" => "0 * * * *",
            "@daily" | "@midnight" => "0 0 * * *",
            "@weekly" => "0 0 * * 0",
            "@monthly" => "0 0 1 * *",
            "@yearly" | "@annually" => "0 0 1 1 *",
            other => other,
        };
        let bad = || PolicyError::Schedule(text.to_string());
        let f: Vec<&str> = expanded.split_whitespace().collect();
        let [mi, h, dom, mo, dow] = f.as_slice() else {
            return Err(bad());
        };
        let dow = dow.replace('7', "0");
        Ok(Cron {
            minute: CronField::parse(mi, 0, 59).ok_or_else(bad)?,
            hour: CronField::parse(h, 0, 23).ok_or_else(bad)?,
            dom: CronField::parse(dom, 1, 31).ok_or_else(bad)?,
            month: CronField::parse(mo, 1, 12).ok_or_else(bad)?,
            dow: CronField::parse(&dow, 0, 6).ok_or_else(bad)?,
        })
    }

    /// Whether the schedule fires in the UTC minute containing `t`.
    pub fn fires_at(&self, t: jiff::Timestamp) -> bool {
        let dt = t.to_zoned(jiff::tz::TimeZone::UTC).datetime();
        let dow = dt.weekday().to_sunday_zero_offset();
        self.minute.matches(dt.minute() as u32)
            && self.hour.matches(dt.hour() as u32)
            && self.dom.matches(dt.day() as u32)
            && self.month.matches(dt.month() as u32)
            && self.dow.matches(dow as u32)
    }

    /// Whether a window opened by this schedule and lasting `duration` contains `now`.
    pub fn window_open(&self, now: jiff::Timestamp, duration: Duration) -> bool {
        let minutes = duration.as_secs().div_ceil(60).min(366 * 24 * 60);
        let start = now.as_second() - now.as_second().rem_euclid(60);
        (0..minutes as i64).any(|m| {
            let at = start - m * 60;
            // The window is [fire, fire + duration); the fire minute `at` opens it.
            let open = now.as_second() - at < duration.as_secs() as i64;
            open && jiff::Timestamp::from_second(at).is_ok_and(|t| self.fires_at(t))
        })
    }
}

/// A budget window: active for `duration` after each time `schedule` fires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// When the window opens.
    pub schedule: Cron,
    /// How long it stays open.
    pub duration: Duration,
}

/// A disruption budget, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetRule {
    /// How many nodes may be disrupting at once.
    pub nodes: BudgetNodes,
    /// Only active inside this window (always active without one).
    pub window: Option<Window>,
    /// Reasons it applies to (all when empty).
    pub reasons: Vec<Reason>,
}

impl BudgetRule {
    /// Parses a CRD budget.
    ///
    /// # Errors
    /// A bad `nodes`, `schedule` or `duration`, or one of the last two without the other.
    pub fn from_crd(b: &Budget) -> Result<Self, PolicyError> {
        let text = b.nodes.trim();
        let nodes = match text.strip_suffix('%') {
            Some(p) => BudgetNodes::Percent(
                p.parse()
                    .ok()
                    .filter(|p| *p <= 100)
                    .ok_or_else(|| PolicyError::Nodes(b.nodes.clone()))?,
            ),
            None => BudgetNodes::Count(
                text.parse()
                    .map_err(|_| PolicyError::Nodes(b.nodes.clone()))?,
            ),
        };
        let window = match (&b.schedule, &b.duration) {
            (None, None) => None,
            (Some(s), Some(d)) => Some(Window {
                schedule: Cron::parse(s)?,
                duration: crate::cli::parse_duration(d).map_err(PolicyError::Duration)?,
            }),
            _ => return Err(PolicyError::Schedule("schedule needs a duration".into())),
        };
        Ok(BudgetRule {
            nodes,
            window,
            reasons: b.reasons.iter().filter_map(|r| Reason::parse(r)).collect(),
        })
    }

    fn active(&self, reason: Reason, now: jiff::Timestamp) -> bool {
        (self.reasons.is_empty() || self.reasons.contains(&reason))
            && self
                .window
                .as_ref()
                .is_none_or(|w| w.schedule.window_open(now, w.duration))
    }
}

/// Why a pool's disruption settings cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PolicyError {
    /// Unknown `consolidationPolicy`.
    #[error("unknown consolidation policy {0:?}")]
    Policy(String),
    /// Bad duration text.
    #[error("bad duration: {0}")]
    Duration(String),
    /// Bad `nodes` in a budget.
    #[error("budget nodes {0:?} is neither a count nor a percentage")]
    Nodes(String),
    /// Bad cron schedule.
    #[error("bad budget schedule {0:?}")]
    Schedule(String),
}

/// A pool's disruption settings, parsed once per tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolPolicy {
    /// Pool name.
    pub name: String,
    /// Which nodes may be consolidated.
    pub consolidation: ConsolidationPolicy,
    /// How long a node must stay a candidate first; `None` is `Never`.
    pub consolidate_after: Option<Duration>,
    /// Budgets; the most restrictive active one wins, none active means no limit.
    pub budgets: Vec<BudgetRule>,
}

impl PoolPolicy {
    /// Parses a NodePool's `spec.disruption`.
    ///
    /// # Errors
    /// [`PolicyError`] naming the bad field.
    pub fn from_crd(pool: &NodePool) -> Result<Self, PolicyError> {
        let d = &pool.spec.disruption;
        let consolidation = match d.consolidation_policy.as_str() {
            "WhenEmpty" => ConsolidationPolicy::WhenEmpty,
            "WhenEmptyOrUnderutilized" | "WhenUnderutilized" => {
                ConsolidationPolicy::WhenEmptyOrUnderutilized
            }
            other => return Err(PolicyError::Policy(other.to_string())),
        };
        let consolidate_after = match d.consolidate_after.trim() {
            "Never" => None,
            t => Some(crate::cli::parse_duration(t).map_err(PolicyError::Duration)?),
        };
        let budgets = d
            .budgets
            .iter()
            .map(BudgetRule::from_crd)
            .collect::<Result<_, _>>()?;
        Ok(PoolPolicy {
            name: pool.metadata.name.clone().unwrap_or_default(),
            consolidation,
            consolidate_after,
            budgets,
        })
    }

    /// The permissive policy tests start from: consolidate at once, 10% budget.
    pub fn new(name: &str) -> Self {
        PoolPolicy {
            name: name.to_string(),
            consolidation: ConsolidationPolicy::WhenEmptyOrUnderutilized,
            consolidate_after: Some(Duration::ZERO),
            budgets: vec![BudgetRule {
                nodes: BudgetNodes::Percent(10),
                window: None,
                reasons: Vec::new(),
            }],
        }
    }

    /// Nodes allowed disrupting at once for `reason`, out of `total` (`None`: no active budget).
    pub fn allowed(&self, reason: Reason, total: usize, now: jiff::Timestamp) -> Option<usize> {
        self.budgets
            .iter()
            .filter(|b| b.active(reason, now))
            .map(|b| b.nodes.allowed(total))
            .min()
    }
}

/// Everything decisions need to know about one node.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeFacts {
    /// The node as the planner sees it (room, labels, taints, bound pods).
    pub view: NodeView,
    /// Its NodeClaim, if Gantry owns it.
    pub claim: Option<String>,
    /// USD/hour it costs.
    pub price: f64,
    /// Pods that would have to move (no DaemonSet, mirror or finished pods).
    pub pods: Vec<PodDemand>,
    /// A pod (or the node) carries `gantry.dev/do-not-disrupt`.
    pub do_not_disrupt: bool,
    /// Already being disrupted (tainted, Disrupting, or deleting); takes no pods.
    pub disrupting: bool,
    /// The startup gate has lifted; younger nodes are never disrupted voluntarily.
    pub initialized: bool,
    /// When its set of pods last changed: `consolidateAfter` counts from here.
    pub since: jiff::Timestamp,
    /// When it passes `expireAfter`, if its pool sets one.
    pub expires_at: Option<jiff::Timestamp>,
}

impl NodeFacts {
    fn pool(&self) -> Option<&str> {
        self.view.pool.as_deref()
    }
}

/// Tunables.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DecideConfig {
    /// Churn guard factor k: savings share ≥ k × disrupted-pods share.
    pub churn_k: f64,
    /// Most candidates one multi-node move considers (Karpenter: 100).
    pub max_multi: usize,
    /// Most single-node what-ifs per call, so a decision stays bounded on big clusters.
    pub max_single: usize,
    /// Whether moves (decisions that relocate pods) may start; false while one is in progress.
    pub moves_allowed: bool,
}

impl Default for DecideConfig {
    fn default() -> Self {
        DecideConfig {
            churn_k: 2.0,
            max_multi: 100,
            max_single: 50,
            moves_allowed: true,
        }
    }
}

/// Everything one decision round looks at.
#[derive(Debug, Clone, Copy)]
pub struct DecideInput<'a> {
    /// Every node, Gantry's or not (only Gantry's are candidates; all may take pods).
    pub nodes: &'a [NodeFacts],
    /// Disruption settings per pool (a pool without one is never disrupted).
    pub policies: &'a [PoolPolicy],
    /// Pools as the planner sees them.
    pub pools: &'a [NodePoolView],
    /// Instance types and offerings.
    pub catalog: &'a Catalog,
    /// Tunables.
    pub config: DecideConfig,
    /// The decision time.
    pub now: jiff::Timestamp,
}

/// Per-pool totals the budgets and the churn guard need.
#[derive(Debug, Default, Clone)]
struct PoolStats {
    nodes: usize,
    disrupting: usize,
    cost: f64,
    pods: usize,
}

/// Budget and churn accounting across the decisions of one call.
struct Ledger<'a> {
    input: &'a DecideInput<'a>,
    stats: HashMap<String, PoolStats>,
    used: HashMap<String, usize>,
}

impl<'a> Ledger<'a> {
    fn new(input: &'a DecideInput<'a>) -> Self {
        let mut stats: HashMap<String, PoolStats> = HashMap::new();
        for n in input.nodes {
            if let Some(p) = n.pool() {
                let s = stats.entry(p.to_string()).or_default();
                s.nodes += 1;
                s.disrupting += usize::from(n.disrupting);
                s.cost += n.price;
                s.pods += n.pods.len();
            }
        }
        Ledger {
            input,
            stats,
            used: HashMap::new(),
        }
    }

    fn policy(&self, pool: &str) -> Option<&'a PoolPolicy> {
        self.input.policies.iter().find(|p| p.name == pool)
    }

    /// Nodes of `pool` that may still start disrupting for `reason`.
    fn room(&self, pool: &str, reason: Reason) -> usize {
        let Some(policy) = self.policy(pool) else {
            return 0;
        };
        let s = self.stats.get(pool).cloned().unwrap_or_default();
        let used = self.used.get(pool).copied().unwrap_or(0);
        match policy.allowed(reason, s.nodes, self.input.now) {
            None => usize::MAX,
            Some(a) => a.saturating_sub(s.disrupting + used),
        }
    }

    fn take(&mut self, pool: &str, n: usize) {
        *self.used.entry(pool.to_string()).or_default() += n;
    }

    /// The churn guard: savings share ≥ k × share of the pool's pods disrupted.
    fn churn_ok(&self, pool: &str, savings: f64, pods: usize) -> bool {
        let Some(s) = self.stats.get(pool) else {
            return false;
        };
        if pods == 0 || s.pods == 0 {
            return savings >= 0.0;
        }
        if s.cost <= 0.0 {
            return false;
        }
        savings / s.cost >= self.input.config.churn_k * (pods as f64 / s.pods as f64)
    }
}

/// Decides what to disrupt now; see the module docs for the order and the rules.
///
/// # Guarantees
/// No returned decision names a node with `do_not_disrupt` or `disrupting`, and per pool the
/// nodes named plus those already disrupting never exceed the most restrictive active budget.
pub fn decide(input: &DecideInput<'_>) -> Vec<Decision> {
    let mut out = Vec::new();
    let mut ledger = Ledger::new(input);
    let mut chosen: HashSet<usize> = HashSet::new();
    let now = input.now;

    // Nodes that can take pods in a what-if, built once; candidates are moved to the front.
    let mut receivers = Receivers::new(input.nodes);

    // 1. Expiration: replace (or delete) every expired node the budget allows.
    let mut expired: Vec<usize> = (0..input.nodes.len())
        .filter(|&i| {
            let n = &input.nodes[i];
            n.pool().is_some_and(|p| ledger.policy(p).is_some())
                && n.expires_at.is_some_and(|e| e <= now)
                && !n.disrupting
                && !n.do_not_disrupt
                && n.initialized
        })
        .collect();
    expired.sort_by_key(|&i| (input.nodes[i].expires_at, i));
    for i in expired {
        let n = &input.nodes[i];
        let pool = n.pool().unwrap_or_default().to_string();
        if ledger.room(&pool, Reason::Expired) == 0 {
            continue;
        }
        let plan = what_if(input, &mut receivers, &[i]);
        let expired_at = n.expires_at.map(|t| t.to_string()).unwrap_or_default();
        let (command, savings, how) = replace_or_delete(n, plan);
        ledger.take(&pool, 1);
        chosen.insert(i);
        out.push(Decision {
            command,
            reason: Reason::Expired,
            message: format!(
                "node {} expired at {expired_at} (expireAfter); {how}",
                n.view.name
            ),
            savings,
            pods: n.pods.len(),
            urgent: false,
        });
    }

    // Candidates for consolidation.
    let candidates: Vec<usize> = (0..input.nodes.len())
        .filter(|i| !chosen.contains(i))
        .filter(|&i| is_candidate(&ledger, &input.nodes[i], now))
        .collect();

    // 2. Empty nodes: one Delete per pool, within the budget.
    let mut empty_by_pool: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for &i in &candidates {
        let n = &input.nodes[i];
        if n.pods.is_empty() {
            empty_by_pool
                .entry(n.pool().unwrap_or_default().to_string())
                .or_default()
                .push(i);
        }
    }
    for (pool, mut idx) in empty_by_pool {
        // Costliest first: the budget spends itself where it saves most.
        idx.sort_by(|&a, &b| input.nodes[b].price.total_cmp(&input.nodes[a].price));
        idx.truncate(ledger.room(&pool, Reason::Empty));
        if idx.is_empty() {
            continue;
        }
        ledger.take(&pool, idx.len());
        let names: Vec<String> = idx
            .iter()
            .map(|&i| input.nodes[i].view.name.clone())
            .collect();
        let savings: f64 = idx.iter().map(|&i| input.nodes[i].price).sum();
        chosen.extend(idx.iter().copied());
        out.push(Decision {
            message: format!(
                "{} empty node(s) in pool {pool} ({}) save ${savings:.4}/h",
                names.len(),
                names.join(", ")
            ),
            command: Command::Delete { nodes: names },
            reason: Reason::Empty,
            savings,
            pods: 0,
            urgent: false,
        });
    }

    if !input.config.moves_allowed {
        return out;
    }
    let movable: Vec<usize> = candidates
        .iter()
        .copied()
        .filter(|i| !chosen.contains(i))
        .filter(|&i| {
            input.nodes[i]
                .pool()
                .and_then(|p| ledger.policy(p))
                .is_some_and(|p| p.consolidation == ConsolidationPolicy::WhenEmptyOrUnderutilized)
        })
        .collect();

    // 3. Multi-node consolidation, per pool.
    let mut by_pool: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for &i in &movable {
        by_pool
            .entry(input.nodes[i].pool().unwrap_or_default().to_string())
            .or_default()
            .push(i);
    }
    for (pool, mut idx) in by_pool.clone() {
        // Cheapest to disrupt first: fewest pods, then the costliest node.
        idx.sort_by(|&a, &b| {
            let (x, y) = (&input.nodes[a], &input.nodes[b]);
            x.pods
                .len()
                .cmp(&y.pods.len())
                .then(y.price.total_cmp(&x.price))
                .then(a.cmp(&b))
        });
        let max = idx
            .len()
            .min(input.config.max_multi)
            .min(ledger.room(&pool, Reason::Underutilized));
        if max < 2 {
            continue;
        }
        let (mut lo, mut hi) = (2, max);
        let mut best: Option<Decision> = None;
        while lo <= hi {
            let mid = lo + (hi - lo) / 2;
            match consolidation(input, &ledger, &mut receivers, &idx[..mid], &pool) {
                Some(d) => {
                    best = Some(d);
                    lo = mid + 1;
                }
                None => hi = mid - 1,
            }
        }
        if let Some(d) = best {
            ledger.take(&pool, d.command.nodes().len());
            out.push(d);
            return out;
        }
    }

    // 4. Single-node consolidation: costliest nodes first, a bounded number of what-ifs.
    let mut singles = movable;
    singles.sort_by(|&a, &b| {
        input.nodes[b]
            .price
            .total_cmp(&input.nodes[a].price)
            .then(a.cmp(&b))
    });
    for &i in singles.iter().take(input.config.max_single) {
        let pool = input.nodes[i].pool().unwrap_or_default().to_string();
        if ledger.room(&pool, Reason::Underutilized) == 0 {
            continue;
        }
        if let Some(d) = consolidation(input, &ledger, &mut receivers, &[i], &pool) {
            ledger.take(&pool, 1);
            out.push(d);
            return out;
        }
    }
    out
}

fn is_candidate(ledger: &Ledger<'_>, n: &NodeFacts, now: jiff::Timestamp) -> bool {
    let Some(policy) = n.pool().and_then(|p| ledger.policy(p)) else {
        return false;
    };
    let Some(after) = policy.consolidate_after else {
        return false;
    };
    let waited = now.duration_since(n.since).as_secs_f64() >= after.as_secs_f64();
    n.claim.is_some() && n.initialized && !n.disrupting && !n.do_not_disrupt && waited
}

/// Nodes that can take pods in a what-if, built once per call; index-aligned `ids` (into
/// `DecideInput::nodes`) and `views`, so the nodes being removed can be swapped to the front and
/// the rest passed to the planner as one slice, without copying.
struct Receivers {
    ids: Vec<usize>,
    views: Vec<NodeView>,
}

impl Receivers {
    fn new(nodes: &[NodeFacts]) -> Self {
        let (ids, views) = nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| !n.disrupting)
            .map(|(i, n)| (i, n.view.clone()))
            .unzip();
        Receivers { ids, views }
    }
}

/// Plans the pods of `nodes` onto every other receiver; the receivers are reordered.
fn what_if(input: &DecideInput<'_>, receivers: &mut Receivers, nodes: &[usize]) -> Plan {
    let set: HashSet<usize> = nodes.iter().copied().collect();
    let mut front = 0;
    for j in 0..receivers.ids.len() {
        if receivers.ids.get(j).is_some_and(|i| set.contains(i)) {
            receivers.ids.swap(front, j);
            receivers.views.swap(front, j);
            front += 1;
        }
    }
    let pods: Vec<PodDemand> = nodes
        .iter()
        .flat_map(|&i| input.nodes[i].pods.iter().cloned())
        .collect();
    crate::plan::plan(&PlanInput {
        pods: &pods,
        pools: input.pools,
        catalog: input.catalog,
        nodes: receivers.views.get(front..).unwrap_or_default(),
        in_flight: &[],
        now: input.now,
    })
}

/// A consolidation of `nodes` if the planner finds one that saves money within the guards.
fn consolidation(
    input: &DecideInput<'_>,
    ledger: &Ledger<'_>,
    receivers: &mut Receivers,
    nodes: &[usize],
    pool: &str,
) -> Option<Decision> {
    let plan = what_if(input, receivers, nodes);
    if !plan.unschedulable.is_empty() || plan.claims.len() > 1 {
        return None;
    }
    let removed: f64 = nodes.iter().map(|&i| input.nodes[i].price).sum();
    let pods: usize = nodes.iter().map(|&i| input.nodes[i].pods.len()).sum();
    let names: Vec<String> = nodes
        .iter()
        .map(|&i| input.nodes[i].view.name.clone())
        .collect();
    let (command, savings, how) = match plan.claims.into_iter().next() {
        None => (
            Command::Delete {
                nodes: names.clone(),
            },
            removed,
            "their pods fit on other nodes".to_string(),
        ),
        Some(mut c) => {
            // Only options cheaper than what is removed, so the launch cannot cost more.
            c.options.retain(|o| o.price < removed);
            if c.options.is_empty() || c.price >= removed {
                return None;
            }
            let how = format!("one {} holds their pods", describe(&c));
            let saved = removed - c.price;
            (
                Command::Replace {
                    nodes: names.clone(),
                    replacement: cleared(c),
                    extra: Vec::new(),
                },
                saved,
                how,
            )
        }
    };
    if savings <= 0.0 || !ledger.churn_ok(pool, savings, pods) {
        return None;
    }
    Some(Decision {
        message: format!(
            "{} underused node(s) in pool {pool} ({}): {how}; saves ${savings:.4}/h, moves {pods} pod(s)",
            names.len(),
            names.join(", ")
        ),
        command,
        reason: Reason::Underutilized,
        savings,
        pods,
        urgent: false,
    })
}

/// A node's own removal: replaced by what the planner bought for its pods, or deleted when they
/// fit elsewhere (or cannot all be placed, in which case the provisioner takes them).
fn replace_or_delete(n: &NodeFacts, plan: Plan) -> (Command, f64, String) {
    let nodes = vec![n.view.name.clone()];
    if !plan.unschedulable.is_empty() || plan.claims.len() > MAX_REPLACEMENTS {
        let how = "its pods return to the provisioner".to_string();
        return (Command::Delete { nodes }, n.price, how);
    }
    let cost = plan.cost_per_hour();
    let mut claims = plan.claims.into_iter().map(cleared);
    match claims.next() {
        None => (
            Command::Delete { nodes },
            n.price,
            "its pods fit on other nodes".to_string(),
        ),
        Some(first) => {
            let extra: Vec<NewClaim> = claims.collect();
            let how = if extra.is_empty() {
                format!("replaced by a {}", describe(&first))
            } else {
                format!("replaced by {} nodes at ${cost:.4}/h", extra.len() + 1)
            };
            (
                Command::Replace {
                    nodes,
                    replacement: first,
                    extra,
                },
                n.price - cost,
                how,
            )
        }
    }
}

fn cleared(mut c: NewClaim) -> NewClaim {
    c.pods.clear();
    c
}

fn describe(c: &NewClaim) -> String {
    let ty = c
        .options
        .first()
        .map_or("node", |o| o.instance_type.as_str());
    format!("{} {ty} at ${:.4}/h", c.capacity_type.as_str(), c.price)
}

/// Plans a replacement for one node the cloud is taking away (or recommends leaving).
///
/// `urgent` (a spot warning, a scheduled change) always yields a decision: replace when one new
/// node holds the pods, otherwise delete and let the provisioner catch the pods. Not urgent (a
/// rebalance recommendation) yields one only when an equal or cheaper alternative exists.
pub fn interruption(input: &DecideInput<'_>, node: usize, urgent: bool) -> Option<Decision> {
    let n = input.nodes.get(node)?;
    if n.disrupting || (!urgent && n.do_not_disrupt) {
        return None;
    }
    let plan = what_if(input, &mut Receivers::new(input.nodes), &[node]);
    let name = n.view.name.clone();
    let alternative = plan.unschedulable.is_empty()
        && plan.claims.len() <= MAX_REPLACEMENTS
        && plan.cost_per_hour() <= n.price;
    if !urgent && !alternative {
        return None;
    }
    let (command, savings, how) = replace_or_delete(n, plan);
    let what = if urgent {
        "is being interrupted"
    } else {
        "has a rebalance recommendation"
    };
    Some(Decision {
        message: format!("node {name} {what}; {how}"),
        command,
        reason: Reason::Interrupted,
        savings,
        pods: n.pods.len(),
        urgent,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Resources;
    use crate::model::labels::{INSTANCE_TYPE, ZONE};
    use std::sync::LazyLock;

    static CATALOG: LazyLock<Catalog> = LazyLock::new(|| Catalog::embedded().unwrap());

    const GI: i64 = 1 << 30;

    fn t0() -> jiff::Timestamp {
        "2026-01-01T00:00:00Z".parse().unwrap()
    }

    fn pod(i: usize, cpu: i64) -> PodDemand {
        PodDemand::simple("default", &format!("p{i}"), Resources::cpu_mem(cpu, GI))
    }

    /// A node of `ty` in pool `default` with the given pods.
    fn node(name: &str, ty: &str, pods: Vec<PodDemand>) -> NodeFacts {
        let t = CATALOG.get(ty).unwrap();
        let price = t
            .offerings
            .iter()
            .filter(|o| o.capacity_type == crate::model::CapacityType::OnDemand)
            .map(|o| o.price)
            .fold(f64::MAX, f64::min);
        let mut requested = Resources::default();
        for p in &pods {
            requested.add(&p.requests);
        }
        let mut labels = BTreeMap::new();
        labels.insert(INSTANCE_TYPE.to_string(), ty.to_string());
        labels.insert(ZONE.to_string(), t.offerings[0].zone.clone());
        NodeFacts {
            view: NodeView {
                name: name.to_string(),
                pool: Some("default".into()),
                labels,
                allocatable: t.allocatable(None),
                requested,
                ..Default::default()
            },
            claim: Some(name.to_string()),
            price,
            pods,
            initialized: true,
            since: t0(),
            ..Default::default()
        }
    }

    fn run(nodes: &[NodeFacts], policy: PoolPolicy, now: jiff::Timestamp) -> Vec<Decision> {
        let pools = vec![NodePoolView::default_pool()];
        decide(&DecideInput {
            nodes,
            policies: &[policy],
            pools: &pools,
            catalog: &CATALOG,
            config: DecideConfig::default(),
            now,
        })
    }

    fn open(pool: &str) -> PoolPolicy {
        let mut p = PoolPolicy::new(pool);
        p.budgets[0].nodes = BudgetNodes::Percent(100);
        p
    }

    fn big_ones(n: usize) -> Vec<NodeFacts> {
        (0..n)
            .map(|i| {
                let pods = (0..7).map(|j| pod(i * 100 + j, 1000)).collect();
                node(&format!("full{i}"), "m5.2xlarge", pods)
            })
            .collect()
    }

    #[test]
    fn empty_nodes_are_deleted_within_budget() {
        let mut nodes = big_ones(8);
        nodes.push(node("e1", "m5.large", vec![]));
        nodes.push(node("e2", "m5.xlarge", vec![]));
        // 10% of 10 nodes = 1: only the costlier empty node goes.
        let d = run(&nodes, PoolPolicy::new("default"), t0());
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].reason, Reason::Empty);
        assert_eq!(d[0].command.nodes(), ["e2".to_string()]);
        assert!(d[0].message.contains("empty"), "{}", d[0].message);
        // An open budget takes both.
        let d = run(&nodes, open("default"), t0());
        assert_eq!(d[0].command.nodes().len(), 2);
    }

    #[test]
    fn candidates_respect_policy_timing_and_annotations() {
        let mut nodes = big_ones(4);
        let mut dnd = node("dnd", "m5.large", vec![]);
        dnd.do_not_disrupt = true;
        let mut busy = node("busy", "m5.large", vec![]);
        busy.disrupting = true;
        let mut young = node("young", "m5.large", vec![]);
        young.initialized = false;
        let mut recent = node("recent", "m5.large", vec![]);
        recent.since = t0() + jiff::SignedDuration::from_secs(50);
        nodes.extend([dnd, busy, young, recent]);
        let mut p = open("default");
        p.consolidate_after = Some(Duration::from_secs(60));
        let now = t0() + jiff::SignedDuration::from_secs(90);
        let d = run(&nodes, p.clone(), now);
        let chosen: Vec<&String> = d.iter().flat_map(|d| d.command.nodes()).collect();
        assert!(chosen.is_empty(), "{chosen:?}");
        // Later, the recent one has waited long enough.
        let d = run(&nodes, p.clone(), now + jiff::SignedDuration::from_secs(30));
        let chosen: Vec<&String> = d.iter().flat_map(|d| d.command.nodes()).collect();
        assert_eq!(chosen, [&"recent".to_string()]);
        // Never means never.
        p.consolidate_after = None;
        assert!(run(&nodes, p, now + jiff::SignedDuration::from_secs(3600)).is_empty());
    }

    #[test]
    fn multi_node_consolidation_merges_underused_nodes() {
        // Four m5.2xlarge (8 vCPU) with one 1-vCPU pod each beside full nodes: the four pods fit
        // on one smaller node.
        let mut nodes = big_ones(4);
        nodes.extend((0..4).map(|i| node(&format!("n{i}"), "m5.2xlarge", vec![pod(i, 1000)])));
        let d = run(&nodes, open("default"), t0());
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].reason, Reason::Underutilized);
        // Three go onto the fourth's room (cheaper than any replacement).
        assert_eq!(d[0].command.nodes().len(), 3, "{}", d[0].message);
        assert!(d[0].command.nodes().iter().all(|n| n.starts_with('n')));
        assert!(matches!(d[0].command, Command::Delete { .. }));
        assert!(d[0].savings > 0.0);
    }

    #[test]
    fn multi_node_consolidation_onto_existing_room() {
        // Full nodes, one with room, and three small nodes with one pod each: the small ones go.
        let mut nodes = big_ones(6);
        nodes.push(node("roomy", "m5.2xlarge", vec![pod(500, 1000)]));
        for i in 0..3 {
            nodes.push(node(&format!("s{i}"), "m5.large", vec![pod(i, 500)]));
        }
        let d = run(&nodes, open("default"), t0());
        assert_eq!(d.len(), 1, "{d:?}");
        // The small nodes' pods go into the full nodes' leftover room; the planner may also
        // fold `roomy` into one tiny replacement.
        let chosen = d[0].command.nodes();
        for s in ["s0", "s1", "s2"] {
            assert!(chosen.contains(&s.to_string()), "{:?}", d[0]);
        }
        assert!(!chosen.iter().any(|n| n.starts_with("full")));
        assert!(d[0].savings > 0.0);
    }

    #[test]
    fn single_node_replacement_with_a_cheaper_type() {
        // Full nodes elsewhere; one m5.4xlarge holding a single small pod gets a cheaper type.
        let mut nodes = big_ones(3);
        nodes.push(node("fat", "m5.4xlarge", vec![pod(999, 1000)]));
        let d = run(&nodes, open("default"), t0());
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].command.nodes(), ["fat".to_string()]);
        let Command::Replace { replacement, .. } = &d[0].command else {
            panic!("expected a replacement: {:?}", d[0]);
        };
        assert!(replacement.price < nodes[3].price);
        assert!(d[0].message.contains("fat"));
    }

    #[test]
    fn churn_guard_refuses_moves_that_save_little_per_pod() {
        // Ten equal nodes, each 3/8 used: merging two into one elsewhere would move 10% of the
        // pods for 10% of the cost, which k = 2 refuses; k = 0.5 allows.
        let nodes: Vec<NodeFacts> = (0..10)
            .map(|i| {
                let pods = (0..3).map(|j| pod(i * 10 + j, 1000)).collect();
                node(&format!("n{i}"), "m5.2xlarge", pods)
            })
            .collect();
        let d = run(&nodes, open("default"), t0());
        assert!(d.is_empty(), "{d:?}");
        let pools = vec![NodePoolView::default_pool()];
        let d = decide(&DecideInput {
            nodes: &nodes,
            policies: &[open("default")],
            pools: &pools,
            catalog: &CATALOG,
            config: DecideConfig {
                churn_k: 0.5,
                ..Default::default()
            },
            now: t0(),
        });
        assert_eq!(d.len(), 1, "{d:?}");
    }

    #[test]
    fn when_empty_policy_never_moves_pods() {
        let nodes: Vec<NodeFacts> = (0..4)
            .map(|i| node(&format!("n{i}"), "m5.2xlarge", vec![pod(i, 1000)]))
            .collect();
        let mut p = open("default");
        p.consolidation = ConsolidationPolicy::WhenEmpty;
        assert!(run(&nodes, p, t0()).is_empty());
    }

    #[test]
    fn expired_nodes_are_replaced() {
        let mut nodes = big_ones(3);
        let mut old = node("old", "m5.2xlarge", vec![pod(1, 7000)]);
        old.expires_at = Some(t0());
        nodes.push(old);
        let d = run(&nodes, open("default"), t0());
        assert_eq!(d[0].reason, Reason::Expired, "{d:?}");
        assert!(matches!(d[0].command, Command::Replace { .. }), "{d:?}");
        assert!(d[0].message.contains("expired"));
    }

    #[test]
    fn rebalance_needs_an_equal_or_cheaper_alternative() {
        let mut nodes = big_ones(2);
        nodes.push(node("spot", "m5.2xlarge", vec![pod(1, 6000)]));
        let pools = vec![NodePoolView::default_pool()];
        let input = DecideInput {
            nodes: &nodes,
            policies: &[open("default")],
            pools: &pools,
            catalog: &CATALOG,
            config: DecideConfig::default(),
            now: t0(),
        };
        let d = interruption(&input, 2, false).unwrap();
        assert!(matches!(d.command, Command::Replace { .. }));
        assert!(d.savings >= 0.0 && !d.urgent);
        // Priced at nothing, nothing is cheaper: a rebalance does nothing, a warning still acts.
        let mut cheap = nodes.clone();
        cheap[2].price = 0.0;
        let input = DecideInput {
            nodes: &cheap,
            ..input
        };
        assert!(interruption(&input, 2, false).is_none());
        assert!(interruption(&input, 2, true).unwrap().urgent);
    }

    #[test]
    fn budgets_parse_and_windows_open() {
        let b = BudgetRule::from_crd(&Budget {
            nodes: "5".into(),
            schedule: Some("0 9 * * 1-5".into()),
            duration: Some("8h".into()),
            reasons: vec!["Underutilized".into()],
        })
        .unwrap();
        assert_eq!(b.nodes, BudgetNodes::Count(5));
        // 2026-01-05 is a Monday.
        let mon_10: jiff::Timestamp = "2026-01-05T10:30:00Z".parse().unwrap();
        let mon_18: jiff::Timestamp = "2026-01-05T18:00:00Z".parse().unwrap();
        let sun_10: jiff::Timestamp = "2026-01-04T10:30:00Z".parse().unwrap();
        assert!(b.active(Reason::Underutilized, mon_10));
        assert!(!b.active(Reason::Underutilized, mon_18));
        assert!(!b.active(Reason::Underutilized, sun_10));
        assert!(!b.active(Reason::Empty, mon_10));
        assert_eq!(BudgetNodes::Percent(10).allowed(5), 1);
        assert_eq!(BudgetNodes::Percent(10).allowed(0), 0);
        assert_eq!(BudgetNodes::Percent(0).allowed(50), 0);
        assert!(
            BudgetRule::from_crd(&Budget {
                nodes: "ten".into(),
                ..Default::default()
            })
            .is_err()
        );
        assert!(Cron::parse("61 * * * *").is_err());
        assert!(Cron::parse("@daily").is_ok());
        let pool: NodePool = serde_yaml::from_str(
            r#"
metadata: {name: a}
spec:
  template: {spec: {nodeClassRef: {name: x}}}
  disruption:
    consolidationPolicy: WhenEmpty
    consolidateAfter: 5m
    budgets: [{nodes: "0", schedule: "@daily", duration: 1h}, {nodes: "20%"}]
"#,
        )
        .unwrap();
        let p = PoolPolicy::from_crd(&pool).unwrap();
        assert_eq!(p.consolidation, ConsolidationPolicy::WhenEmpty);
        assert_eq!(p.consolidate_after, Some(Duration::from_secs(300)));
        let midnight: jiff::Timestamp = "2026-01-05T00:10:00Z".parse().unwrap();
        assert_eq!(p.allowed(Reason::Empty, 10, midnight), Some(0));
        assert_eq!(p.allowed(Reason::Empty, 10, mon_10), Some(2));
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(24))]
            #[test]
            fn never_exceeds_budgets_nor_touches_do_not_disrupt(
                specs in prop::collection::vec((0usize..4, 0usize..3, any::<bool>(), any::<bool>(), any::<bool>()), 1..14),
                budget in 0u32..4,
                percent in any::<bool>(),
            ) {
                let types = ["m5.large", "m5.xlarge", "m5.2xlarge"];
                let nodes: Vec<NodeFacts> = specs.iter().enumerate().map(|(i, (pods, ty, dnd, busy, exp))| {
                    let ps = (0..*pods).map(|j| pod(i * 10 + j, 300)).collect();
                    let mut n = node(&format!("n{i}"), types[*ty], ps);
                    n.do_not_disrupt = *dnd;
                    n.disrupting = *busy && i % 3 == 0;
                    n.expires_at = exp.then(t0);
                    n
                }).collect();
                let mut p = PoolPolicy::new("default");
                p.budgets[0].nodes = if percent { BudgetNodes::Percent(budget * 20) } else { BudgetNodes::Count(budget) };
                let allowed = p.allowed(Reason::Empty, nodes.len(), t0()).unwrap();
                let already = nodes.iter().filter(|n| n.disrupting).count();
                let d = run(&nodes, p, t0());
                let chosen: Vec<&String> = d.iter().flat_map(|d| d.command.nodes()).collect();
                prop_assert!(chosen.len() + already <= allowed.max(already), "{} + {} > {}", chosen.len(), already, allowed);
                for name in chosen {
                    let n = nodes.iter().find(|n| &n.view.name == name).unwrap();
                    prop_assert!(!n.do_not_disrupt && !n.disrupting, "{name} chosen");
                }
            }
        }
    }
}
