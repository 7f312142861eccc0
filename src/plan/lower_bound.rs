//! The cost lower bound benchmarks measure plans against: the linear-programming relaxation.
//!
//! For each class of pods that share constraints (the same compatible types and offerings in
//! every pool), find the cheapest *fractional* mix of allowed types whose room covers the class's
//! total CPU, memory, pod slots and extended resources (GPUs):
//!
//! ```text
//! minimise Σ price_t · x_t   subject to   Σ room_t,d · x_t ≥ demand_d  (each dimension d),  x ≥ 0
//! ```
//!
//! No integral plan can be cheaper, because every integral plan is a feasible point. There are
//! only a handful of rows, so a revised simplex with a dense `m × m` basis inverse is exact and
//! fast over a thousand type columns; no LP crate is needed. `room` is the allocatable the
//! packer uses (capacity minus kube-reserved, system memory and the eviction threshold, minus the
//! pool's DaemonSets), so every node's fixed overheads are already paid per unit of type.
//!
//! That LP still buys CPU on one type and memory or pod slots on another. The *configuration LP*
//! ([`pattern_bound`]) closes that hole: its columns are whole-pod patterns of one node, found by
//! column generation with a knapsack per node kind, and its value is certified by a dual argument
//! that holds whatever the LP solver returns. The reported bound is the larger of the two.

// Index loops over parallel per-type and per-dimension arrays read clearer than zips here.
#![allow(clippy::needless_range_loop)]

use super::binpack::{Packer, PatternItem, PatternKind, PatternLp};
use super::select::{Amount, DIMS, fit_count};
use super::{Plan, PlanInput};

/// The two lower bounds on a plan's new-node cost, so a report can say which one binds.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LowerBounds {
    /// The resource LP: fractional nodes covering each resource total, USD/hour.
    pub resource: f64,
    /// The configuration LP: fractional counts of whole-pod node patterns, USD/hour.
    pub pattern: f64,
}

impl LowerBounds {
    /// The tighter of the two, which is still a lower bound.
    pub fn best(&self) -> f64 {
        self.resource.max(self.pattern)
    }
}

/// The lower bound of the plan's new-node cost, in USD/hour: the larger of the resource LP and
/// the configuration LP (see [`plan_bounds`]).
///
/// Only pods the plan puts on new claims count: pods placed on existing capacity cost nothing
/// new, and unschedulable pods cost nothing in either. 0 is returned when nothing can be bounded
/// (0 is always a valid bound).
pub fn plan_lower_bound(input: &PlanInput<'_>, plan: &Plan) -> f64 {
    plan_bounds(input, plan).best()
}

/// Both lower bounds of the plan's new-node cost, for reports that split the gap between the
/// bound and the packer.
pub fn plan_bounds(input: &PlanInput<'_>, plan: &Plan) -> LowerBounds {
    plan_bounds_with(input, plan, &PatternBudget::default())
}

/// How much work the configuration LP may do; larger budgets only tighten the bound.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PatternBudget {
    /// Rounds of column generation at most (each prices every node kind once).
    pub rounds: usize,
    /// Branch-and-bound nodes per node kind and round while generating columns.
    pub search: u32,
    /// Branch-and-bound nodes per node kind for the last, tightening pass.
    pub final_search: u32,
    /// New columns added per round at most.
    pub columns_per_round: usize,
}

impl Default for PatternBudget {
    fn default() -> Self {
        PatternBudget {
            rounds: GEN_ROUNDS,
            search: GEN_BUDGET,
            final_search: FINAL_BUDGET,
            columns_per_round: COLUMNS_PER_ROUND,
        }
    }
}

/// [`plan_bounds`] with an explicit configuration-LP budget, for offline checks of how far the
/// default budget is from convergence.
pub fn plan_bounds_with(input: &PlanInput<'_>, plan: &Plan, budget: &PatternBudget) -> LowerBounds {
    let mut placed_new = vec![false; input.pods.len()];
    for c in &plan.claims {
        for p in &c.pods {
            if let Some(slot) = placed_new.get_mut(*p) {
                *slot = true;
            }
        }
    }
    let packer = Packer::new(input);
    let (rows, columns) = packer.bound_lp(&placed_new);
    if rows.is_empty() {
        return LowerBounds::default();
    }
    let a: Vec<Vec<f64>> = columns.iter().map(|(e, _)| e.clone()).collect();
    let c: Vec<f64> = columns.iter().map(|(_, p)| *p).collect();
    LowerBounds {
        resource: simplex_cover(&a, &c, rows.len()).unwrap_or(0.0),
        pattern: pattern_bound_with(&packer.pattern_lp(&placed_new, plan), budget),
    }
}

/// The cheapest fractional cover of one `demand` by columns `(room, price)`; `None` if impossible.
pub fn cover_cost(demand: &Amount, columns: &[(Amount, f64)]) -> Option<f64> {
    let rows: Vec<usize> = (0..DIMS).filter(|d| demand[*d] > 0).collect();
    if rows.is_empty() {
        return Some(0.0);
    }
    let a: Vec<Vec<f64>> = columns
        .iter()
        .map(|(room, _)| {
            rows.iter()
                .map(|d| (room[*d].max(0) as f64) / demand[*d] as f64)
                .collect()
        })
        .collect();
    let c: Vec<f64> = columns.iter().map(|(_, p)| *p).collect();
    simplex_cover(&a, &c, rows.len())
}

/// Solves `min c·x s.t. A x ≥ 1, x ≥ 0` (columns of `a` have `m` entries) by revised simplex with
/// big-M artificials. Returns `None` when infeasible.
pub fn simplex_cover(a: &[Vec<f64>], c: &[f64], m: usize) -> Option<f64> {
    simplex_cover_duals(a, c, m).map(|(v, _)| v)
}

/// [`simplex_cover`] that also returns the row duals `y = c_B B⁻¹` of the final basis, which
/// column generation prices new columns with.
pub fn simplex_cover_duals(a: &[Vec<f64>], c: &[f64], m: usize) -> Option<(f64, Vec<f64>)> {
    simplex_cover_solution(a, c, m).map(|s| (s.value, s.duals))
}

/// A solved cover LP: its value, the row duals and the primal column values.
pub(crate) struct CoverSolution {
    /// `c·x` at the optimum.
    pub value: f64,
    /// Row duals `y = c_B B⁻¹`.
    pub duals: Vec<f64>,
    /// Column values `x` (zero for non-basic columns).
    pub x: Vec<f64>,
}

/// [`simplex_cover_duals`] with the primal solution too, which LP rounding turns into nodes.
pub(crate) fn simplex_cover_solution(a: &[Vec<f64>], c: &[f64], m: usize) -> Option<CoverSolution> {
    let n = a.len();
    let max_c = c.iter().copied().fold(0.0f64, f64::max).max(1.0);
    let big_m = max_c * 1e7;
    // Column j: 0..n types, n..n+m surplus (−e_i, cost 0), n+m..n+2m artificials (e_i, cost M).
    let col = |j: usize, i: usize| -> f64 {
        if j < n {
            a[j][i]
        } else if j < n + m {
            if j - n == i { -1.0 } else { 0.0 }
        } else if j - n - m == i {
            1.0
        } else {
            0.0
        }
    };
    let cost = |j: usize| -> f64 {
        if j < n {
            c[j]
        } else if j < n + m {
            0.0
        } else {
            big_m
        }
    };
    let total = n + 2 * m;
    let mut basis: Vec<usize> = (0..m).map(|i| n + m + i).collect();
    let mut binv = vec![vec![0.0f64; m]; m];
    for (i, row) in binv.iter_mut().enumerate() {
        row[i] = 1.0;
    }
    let mut xb = vec![1.0f64; m];
    let eps = 1e-11;
    let max_iter = 20_000;
    let mut converged = false;
    for iter in 0..max_iter {
        // Dantzig's rule, then Bland's (first improving column) to rule out cycling.
        let bland = iter > 100 * (m + 1);
        // Duals y = c_B B⁻¹.
        let mut y = vec![0.0f64; m];
        for (k, &bj) in basis.iter().enumerate() {
            let cb = cost(bj);
            for i in 0..m {
                y[i] += cb * binv[k][i];
            }
        }
        // Entering column: most negative reduced cost.
        let mut enter = None;
        let mut best = -1e-9 * max_c;
        for j in 0..total {
            if basis.contains(&j) || j >= n + m {
                continue;
            }
            let mut d = cost(j);
            for (i, yi) in y.iter().enumerate() {
                d -= yi * col(j, i);
            }
            if d < best {
                best = d;
                enter = Some(j);
                if bland {
                    break;
                }
            }
        }
        let Some(j) = enter else {
            converged = true;
            break;
        };
        // Direction u = B⁻¹ A_j.
        let u: Vec<f64> = (0..m)
            .map(|k| (0..m).map(|i| binv[k][i] * col(j, i)).sum())
            .collect();
        let mut leave = None;
        let mut ratio = f64::INFINITY;
        for k in 0..m {
            if u[k] > eps {
                let r = xb[k] / u[k];
                if r < ratio - 1e-15 {
                    ratio = r;
                    leave = Some(k);
                }
            }
        }
        let Some(l) = leave else {
            // Unbounded cannot happen with non-negative costs; give up rather than guess.
            return None;
        };
        // Pivot.
        let pivot = u[l];
        for i in 0..m {
            binv[l][i] /= pivot;
        }
        xb[l] /= pivot;
        for k in 0..m {
            if k != l && u[k] != 0.0 {
                let f = u[k];
                for i in 0..m {
                    binv[k][i] -= f * binv[l][i];
                }
                xb[k] -= f * xb[l];
            }
        }
        basis[l] = j;
    }
    if !converged {
        return None;
    }
    let mut obj = 0.0;
    let mut y = vec![0.0f64; m];
    let mut x = vec![0.0f64; n];
    for (k, &bj) in basis.iter().enumerate() {
        if bj >= n + m && xb[k] > 1e-9 {
            return None;
        }
        obj += cost(bj) * xb[k];
        for i in 0..m {
            y[i] += cost(bj) * binv[k][i];
        }
        if bj < n {
            x[bj] = xb[k].max(0.0);
        }
    }
    Some(CoverSolution {
        value: obj,
        duals: y,
        x,
    })
}

/// Rounds of column generation at most (each prices every node kind once).
const GEN_ROUNDS: usize = 60;
/// Branch-and-bound nodes per node kind and round while generating columns.
const GEN_BUDGET: u32 = 300;
/// Branch-and-bound nodes per node kind for the last, tightening pass.
const FINAL_BUDGET: u32 = 5_000;
/// New columns added per round at most.
const COLUMNS_PER_ROUND: usize = 40;

/// The configuration-LP bound: whole pods on whole nodes, relaxed only in how many of each
/// node *pattern* is bought.
///
/// Columns are patterns (how many pods of each item one node of a kind holds); rows say every
/// item's pods are covered. Columns are generated from the duals by a knapsack per node kind.
///
/// # Why it is a lower bound, whatever the LP solver does
/// Take any non-negative value `v_s` per pod of item `s`, and let `θ ≥ 1` bound
/// `value(pattern) ÷ price(kind)` over every pattern any node of the plan could hold (the
/// knapsack's upper bound `ub_k` gives `θ = max_k ub_k ÷ price_k`). A plan's nodes hold every
/// pod exactly once, so its cost is `Σ_nodes price ≥ Σ_nodes value(pattern) ÷ θ = Σ_s d_s v_s ÷
/// θ`. The LP's duals only choose good values; `ub_k` comes from a branch and bound whose
/// pruned or unexplored subtrees contribute their relaxation bound, so it is never below the
/// best pattern. Returns 0 when there is nothing to bound.
#[cfg(test)]
pub(crate) fn pattern_bound(lp: &PatternLp) -> f64 {
    pattern_bound_with(lp, &PatternBudget::default())
}

/// [`pattern_bound`] within `budget`.
pub(crate) fn pattern_bound_with(lp: &PatternLp, budget: &PatternBudget) -> f64 {
    generate_columns(lp, budget, true).bound
}

/// What column generation on the configuration LP leaves: the certified bound and the master's
/// columns, which LP rounding turns into nodes.
pub(crate) struct Generated {
    /// The lower bound (see [`pattern_bound`]); 0 when there is nothing to bound.
    pub bound: f64,
    /// The master's columns: pods per item in one node, and the node's price.
    pub columns: Vec<(Vec<u32>, f64)>,
}

/// Column generation on the configuration LP within `budget` (see [`pattern_bound`]). With
/// `prove`, the deepest searches also tighten their upper bounds (which only the bound uses).
pub(crate) fn generate_columns(lp: &PatternLp, budget: &PatternBudget, prove: bool) -> Generated {
    let items = &lp.items;
    let m = items.len();
    let mut out = Generated {
        bound: 0.0,
        columns: Vec::new(),
    };
    if m == 0 || lp.kinds.is_empty() {
        return out;
    }
    let demand: Vec<f64> = items.iter().map(|it| f64::from(it.demand.max(1))).collect();
    let mut cols: Vec<Vec<f64>> = Vec::new();
    let mut costs: Vec<f64> = Vec::new();
    // Start feasible: each item alone on the kind cheapest per pod.
    for (s, it) in items.iter().enumerate() {
        let mut best: Option<(f64, f64, u32)> = None;
        for k in lp.kinds.iter().filter(|k| k.allowed[s] && k.price > 0.0) {
            let n = fit_count(&k.room, &it.req).min(it.cap).min(it.demand);
            if n == 0 {
                continue;
            }
            let per = k.price / f64::from(n);
            if best.is_none_or(|(b, _, _)| per < b) {
                best = Some((per, k.price, n));
            }
        }
        let Some((_, price, n)) = best else {
            return out;
        };
        let mut counts = vec![0; m];
        counts[s] = n;
        cols.push(pattern_column(&counts, &demand));
        costs.push(price);
        out.columns.push((counts, price));
    }
    for (counts, price) in &lp.seeds {
        if counts.len() == m && *price > 0.0 {
            cols.push(pattern_column(counts, &demand));
            costs.push(*price);
            out.columns.push((counts.clone(), *price));
        }
    }
    let mut best_lb = 0.0f64;
    let mut last_values: Option<Vec<f64>> = None;
    // When a round finds no column while θ says one may exist, the proving refinements (dynamic
    // programs) switch on first, then the search budget grows.
    let mut search = budget.search;
    let mut refine = false;
    let mut last = (0, false, f64::INFINITY);
    let mut work = DpWork(DP_WORK);
    for _ in 0..budget.rounds {
        let Some((_, y)) = simplex_cover_duals(&cols, &costs, m) else {
            break;
        };
        let values: Vec<f64> = y.iter().zip(&demand).map(|(y, d)| y.max(0.0) / d).collect();
        let mut theta = 1.0f64;
        let mut found: Vec<(f64, usize, Vec<u32>)> = Vec::new();
        for (ki, kind) in lp.kinds.iter().enumerate() {
            let r = best_pattern(kind, items, &values, search, refine, &mut work);
            theta = theta.max(ratio(r.upper, kind.price));
            if r.value > kind.price * (1.0 + 1e-7) {
                found.push((r.value / kind.price, ki, r.counts));
            }
        }
        best_lb = best_lb.max(covered(&values, items) / theta);
        last_values = Some(values);
        last = (search, refine, theta);
        if found.is_empty() {
            if theta <= 1.0 + 1e-9 {
                break;
            }
            if prove && !refine {
                refine = true;
                continue;
            }
            if search >= budget.final_search {
                break;
            }
            search = search.saturating_mul(4).min(budget.final_search);
            continue;
        }
        found.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        for (_, ki, counts) in found.into_iter().take(budget.columns_per_round) {
            cols.push(pattern_column(&counts, &demand));
            costs.push(lp.kinds[ki].price);
            out.columns.push((counts, lp.kinds[ki].price));
        }
    }
    // A deeper search on the last values tightens θ where the short one stopped early.
    let (last_search, last_refined, last_theta) = last;
    let deeper = last_search < budget.final_search || (prove && !last_refined);
    if let Some(values) = last_values.filter(|_| deeper && last_theta > 1.0 + 1e-9) {
        let mut theta = 1.0f64;
        for kind in &lp.kinds {
            let r = best_pattern(kind, items, &values, budget.final_search, prove, &mut work);
            theta = theta.max(ratio(r.upper, kind.price));
        }
        best_lb = best_lb.max(covered(&values, items) / theta);
    }
    out.bound = best_lb;
    out
}

/// How many nodes of each of `columns` (pods per item, price) the configuration LP buys to
/// cover `demand`, at its optimum over those columns; `None` when they cannot cover it.
pub(crate) fn master_primal(columns: &[(Vec<u32>, f64)], demand: &[u32]) -> Option<Vec<f64>> {
    let d: Vec<f64> = demand.iter().map(|x| f64::from((*x).max(1))).collect();
    let cols: Vec<Vec<f64>> = columns.iter().map(|(c, _)| pattern_column(c, &d)).collect();
    let costs: Vec<f64> = columns.iter().map(|(_, p)| *p).collect();
    simplex_cover_solution(&cols, &costs, demand.len()).map(|s| s.x)
}

/// `Σ_s d_s v_s`: what the values say covering every pod is worth.
/// A pattern's column in the cover LP: the share of each item's demand one node of it covers.
fn pattern_column(counts: &[u32], demand: &[f64]) -> Vec<f64> {
    counts
        .iter()
        .zip(demand)
        .map(|(c, d)| f64::from(*c) / d)
        .collect()
}

fn covered(values: &[f64], items: &[PatternItem]) -> f64 {
    values
        .iter()
        .zip(items)
        .map(|(v, it)| v * f64::from(it.demand))
        .sum()
}

/// `upper ÷ price`, with a free node that holds something valuable making the bound worthless.
fn ratio(upper: f64, price: f64) -> f64 {
    if upper <= 0.0 {
        0.0
    } else if price > 0.0 {
        upper / price
    } else {
        f64::INFINITY
    }
}

/// The best pattern found for one node kind, and an upper bound on the best there is.
struct PatternSearch {
    /// Value of the best pattern found.
    value: f64,
    /// Pods of each item in it.
    counts: Vec<u32>,
    /// No pattern of the kind is worth more than this.
    upper: f64,
}

/// The most valuable set of whole pods one node of `kind` can hold (a bounded multi-dimensional
/// knapsack), by depth-first branch and bound within `budget` nodes.
fn best_pattern(
    kind: &PatternKind,
    items: &[PatternItem],
    values: &[f64],
    budget: u32,
    refine: bool,
    work: &mut DpWork,
) -> PatternSearch {
    let mut cand: Vec<(usize, u32)> = Vec::new();
    for (s, it) in items.iter().enumerate() {
        if !kind.allowed[s] || values[s] <= 0.0 {
            continue;
        }
        let u = fit_count(&kind.room, &it.req).min(it.cap).min(it.demand);
        if u > 0 {
            cand.push((s, u));
        }
    }
    let mut out = PatternSearch {
        value: 0.0,
        counts: vec![0; items.len()],
        upper: 0.0,
    };
    if cand.is_empty() {
        return out;
    }
    // Constraints of the relaxation: each resource the pods use, and two surrogates (sums of
    // resources as fractions of the node), all implied by "the pods fit".
    let used: Vec<usize> = (0..DIMS)
        .filter(|d| cand.iter().any(|(s, _)| items[*s].req[*d] > 0) && kind.room[*d] > 0)
        .collect();
    let mut lambdas: Vec<[f64; DIMS]> = used
        .iter()
        .map(|d| {
            let mut l = [0.0; DIMS];
            l[*d] = 1.0;
            l
        })
        .collect();
    let mut both = [0.0; DIMS];
    both[0] = 1.0;
    both[1] = 1.0;
    let mut all = both;
    all[3] = 1.0;
    lambdas.push(both);
    lambdas.push(all);
    let norm = |l: &[f64; DIMS], a: &Amount| -> f64 {
        (0..DIMS)
            .filter(|d| l[*d] > 0.0 && kind.room[*d] > 0)
            .map(|d| l[d] * a[d].max(0) as f64 / kind.room[d] as f64)
            .sum()
    };
    // Branch in order of value per unit of the pods-and-resources surrogate.
    cand.sort_by(|a, b| {
        let da = values[a.0] / norm(&all, &items[a.0].req).max(1e-12);
        let db = values[b.0] / norm(&all, &items[b.0].req).max(1e-12);
        db.total_cmp(&da).then(a.0.cmp(&b.0))
    });
    let weights: Vec<Vec<f64>> = lambdas
        .iter()
        .map(|l| cand.iter().map(|(s, _)| norm(l, &items[*s].req)).collect())
        .collect();
    let orders: Vec<Vec<usize>> = weights
        .iter()
        .map(|w| {
            let mut o: Vec<usize> = (0..cand.len()).collect();
            let density = |p: usize| {
                if w[p] <= 0.0 {
                    f64::INFINITY
                } else {
                    values[cand[p].0] / w[p]
                }
            };
            o.sort_by(|a, b| density(*b).total_cmp(&density(*a)).then(a.cmp(b)));
            o
        })
        .collect();
    let lambda = knapsack_multipliers(kind, items, values, &cand);
    let reduced: Vec<f64> = cand
        .iter()
        .map(|(s, _)| {
            let price: f64 = (0..DIMS)
                .filter(|d| lambda[*d] > 0.0 && kind.room[*d] > 0)
                .map(|d| lambda[d] * items[*s].req[d].max(0) as f64 / kind.room[d] as f64)
                .sum();
            (values[*s] - price).max(0.0)
        })
        .collect();
    let mut search = Knapsack {
        kind,
        items,
        values,
        cand: &cand,
        lambdas: &lambdas,
        weights: &weights,
        orders: &orders,
        lambda: &lambda,
        reduced: &reduced,
        counts: vec![0; cand.len()],
        best: 0.0,
        best_counts: vec![0; cand.len()],
        budget,
    };
    let upper = search.rec(0, kind.room, 0.0).unwrap_or(f64::INFINITY);
    out.value = search.best;
    for (p, (s, _)) in cand.iter().enumerate() {
        out.counts[*s] = search.best_counts[p];
    }
    out.upper = upper.max(search.best);
    // Where the search left a gap that matters (a column may exist, or θ would rise), small
    // kinds are solved exactly by dynamic programming.
    let open =
        |o: &PatternSearch| o.upper > o.value * (1.0 + 1e-9) && o.upper > kind.price * (1.0 + 1e-9);
    if open(&out)
        && let Some(exact) = exact_pattern(kind, items, values, &cand, DP_STATES, work)
    {
        if let Some(counts) = exact.counts.filter(|_| exact.value > out.value) {
            out.value = exact.value;
            out.counts = counts;
        }
        out.upper = out.upper.min(exact.value).max(out.value);
    }
    // Otherwise, a Lagrangian bound kept whole in all but one resource is often far tighter
    // than the relaxations of the search.
    if refine
        && open(&out)
        && let Some((l, found)) =
            lagrangian_upper(kind, items, values, &cand, out.value.max(kind.price), work)
    {
        if let Some((v, counts)) = found.filter(|(v, _)| *v > out.value) {
            out.value = v;
            out.counts = counts;
        }
        out.upper = out.upper.min(l).max(out.value);
    }
    out
}

/// Table cells (states × entries) the dynamic programs may fill in one column generation; past
/// it, pricing falls back to the branch and bound alone (the bound stays valid, only weaker).
const DP_WORK: u64 = 8_000_000_000;

/// What is left of a [`DP_WORK`]-style allowance of table cells.
struct DpWork(u64);

impl DpWork {
    /// Takes `cells` from the allowance; `false` (nothing taken) when too few are left.
    fn take(&mut self, cells: usize) -> bool {
        let cells = u64::try_from(cells).unwrap_or(u64::MAX);
        if cells > self.0 {
            return false;
        }
        self.0 -= cells;
        true
    }
}

/// Most states the exact dynamic program over one node's resources may use.
const DP_STATES: usize = 1 << 15;

/// Most states of the dynamic program inside the Lagrangian bound (one resource relaxed).
const LAGRANGE_DP_STATES: usize = 1 << 17;
/// Multiplier values tried per Lagrangian bound (a golden-section search on a convex function).
const LAGRANGE_STEPS: usize = 16;

/// The exact optimum of one node kind's knapsack, when it is small enough for dynamic
/// programming over its resources.
struct ExactPattern {
    /// The most valuable pattern's value: exact, so also an upper bound.
    value: f64,
    /// Pods per item of a pattern worth `value`, when reconstruction found one within the caps.
    counts: Option<Vec<u32>>,
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// A node's room in whole units of the candidates' requests, per resource the candidates use:
/// the unit is the greatest common divisor of the requests, so flooring the room to whole
/// units loses nothing (every sum of requests is a whole number of units).
struct Grid {
    /// Room in units per resource.
    caps: Vec<usize>,
    /// Per candidate: its request in units per resource.
    q: Vec<Vec<usize>>,
}

impl Grid {
    fn of(kind: &PatternKind, items: &[PatternItem], cand: &[(usize, u32)]) -> Option<Grid> {
        let dims: Vec<usize> = (0..DIMS)
            .filter(|d| cand.iter().any(|(s, _)| items[*s].req[*d] > 0))
            .collect();
        let mut units = Vec::with_capacity(dims.len());
        let mut caps = Vec::with_capacity(dims.len());
        for &d in &dims {
            let g = cand
                .iter()
                .map(|(s, _)| items[*s].req[d])
                .filter(|r| *r > 0)
                .fold(0, gcd);
            if g <= 0 {
                return None;
            }
            units.push(g);
            caps.push(usize::try_from(kind.room[d].max(0) / g).ok()?);
        }
        let q = cand
            .iter()
            .map(|(s, _)| {
                dims.iter()
                    .zip(&units)
                    .map(|(d, g)| {
                        usize::try_from(items[*s].req[*d].max(0) / g).unwrap_or(usize::MAX)
                    })
                    .collect()
            })
            .collect();
        Some(Grid { caps, q })
    }

    /// States of a table over every resource but `skip`, or `None` above `limit`.
    fn states(&self, skip: Option<usize>, limit: usize) -> Option<usize> {
        let mut n: usize = 1;
        for (i, c) in self.caps.iter().enumerate() {
            if Some(i) != skip {
                n = n.checked_mul(c.checked_add(1)?)?;
                if n > limit {
                    return None;
                }
            }
        }
        Some(n)
    }
}

/// One entry of the knapsack table: `k` pods of candidate `cand`, used any number of times
/// (`unbounded`) or at most once.
struct Piece {
    cand: usize,
    k: u32,
    need: Vec<usize>,
    offset: usize,
    unbounded: bool,
    value: f64,
}

/// A dynamic-programming table over some resources of a grid.
struct Table {
    /// Resources of the grid the table spans (indices into `Grid::caps`).
    axes: Vec<usize>,
    caps: Vec<usize>,
    strides: Vec<usize>,
    states: usize,
    /// Coordinates of every state, `axes.len()` per state.
    coord: Vec<usize>,
}

impl Table {
    fn new(grid: &Grid, skip: Option<usize>) -> Table {
        let axes: Vec<usize> = (0..grid.caps.len()).filter(|i| Some(*i) != skip).collect();
        let caps: Vec<usize> = axes.iter().map(|i| grid.caps[*i]).collect();
        let mut strides = Vec::with_capacity(axes.len());
        let mut states = 1usize;
        for c in &caps {
            strides.push(states);
            states = states.saturating_mul(c + 1);
        }
        let nd = axes.len();
        let mut coord = vec![0usize; states * nd];
        for st in 0..states {
            let mut x = st;
            for i in 0..nd {
                coord[st * nd + i] = x % (caps[i] + 1);
                x /= caps[i] + 1;
            }
        }
        Table {
            axes,
            caps,
            strides,
            states,
            coord,
        }
    }

    /// Pieces for candidates with `value` each (non-positive ones left out): unbounded when
    /// the cap is at least what fits in the table's resources, else split in binary.
    fn pieces(&self, grid: &Grid, cand: &[(usize, u32)], value: &[f64]) -> Option<Vec<Piece>> {
        let mut pieces = Vec::new();
        for (p, (_, u)) in cand.iter().enumerate() {
            if value[p] <= 0.0 {
                continue;
            }
            let q: Vec<usize> = self.axes.iter().map(|i| grid.q[p][*i]).collect();
            if q.iter().all(|x| *x == 0) {
                return None;
            }
            let fits = q
                .iter()
                .zip(&self.caps)
                .filter(|(q, _)| **q > 0)
                .map(|(q, c)| c / q)
                .min()
                .unwrap_or(0);
            if fits == 0 {
                continue;
            }
            let mut add = |k: u32, unbounded: bool| {
                let need: Vec<usize> = q.iter().map(|x| x * k as usize).collect();
                let offset = need.iter().zip(&self.strides).map(|(n, st)| n * st).sum();
                pieces.push(Piece {
                    cand: p,
                    k,
                    need,
                    offset,
                    unbounded,
                    value: value[p] * f64::from(k),
                });
            };
            if *u as usize >= fits {
                add(1, true);
            } else {
                let mut left = *u;
                let mut k = 1;
                while left > 0 {
                    let take = k.min(left);
                    add(take, false);
                    left -= take;
                    k *= 2;
                }
            }
        }
        (pieces.len() < usize::from(u16::MAX)).then_some(pieces)
    }

    /// The best value within the table's room; with `record`, also one bit per (piece, state)
    /// saying whether the piece's layer took it there, from which a best pattern is read back.
    fn solve(&self, pieces: &[Piece], record: bool) -> (f64, Vec<u64>) {
        let nd = self.axes.len();
        let n = self.states;
        let mut dp = vec![0.0f64; n];
        let mut taken = if record {
            vec![0u64; (pieces.len() * n).div_ceil(64)]
        } else {
            Vec::new()
        };
        // Rows run along the first resource; a row's states share the other coordinates.
        let run = self.caps.first().map_or(1, |c| c + 1);
        let rows: Vec<usize> = (0..n).step_by(run).collect();
        for (pi, piece) in pieces.iter().enumerate() {
            let base = pi * n;
            let lo = piece.need.first().copied().unwrap_or(0);
            let fits_row = |row: &usize| {
                let c = &self.coord[row * nd..row * nd + nd];
                c.iter().zip(&piece.need).skip(1).all(|(c, n)| c >= n)
            };
            let off = piece.offset;
            let v = piece.value;
            let mut cell = |st: usize| {
                let with = dp[st - off] + v;
                if with > dp[st] {
                    dp[st] = with;
                    if record {
                        let bit = base + st;
                        taken[bit / 64] |= 1u64 << (bit % 64);
                    }
                }
            };
            if piece.unbounded {
                for &row in rows.iter().filter(|r| fits_row(r)) {
                    (row + lo..row + run).for_each(&mut cell);
                }
            } else {
                for &row in rows.iter().rev().filter(|r| fits_row(r)) {
                    (row + lo..row + run).rev().for_each(&mut cell);
                }
            }
        }
        (dp[n - 1], taken)
    }

    /// The pattern (pods per item) of the best value at the full room, read back layer by
    /// layer from [`Table::solve`]'s bits: a piece's bit at a state says its layer took it.
    fn read_back(
        &self,
        pieces: &[Piece],
        taken: &[u64],
        cand: &[(usize, u32)],
        items: usize,
    ) -> Option<Vec<u32>> {
        let n = self.states;
        let bit = |pi: usize, st: usize| {
            let b = pi * n + st;
            taken
                .get(b / 64)
                .is_some_and(|w| w & (1u64 << (b % 64)) != 0)
        };
        let mut counts = vec![0u32; items];
        let mut st = n - 1;
        for (pi, piece) in pieces.iter().enumerate().rev() {
            while bit(pi, st) {
                counts[cand[piece.cand].0] += piece.k;
                st = st.checked_sub(piece.offset)?;
                if !piece.unbounded || piece.offset == 0 {
                    break;
                }
            }
        }
        Some(counts)
    }
}

/// Most bits the table of taken pieces may use (16 MiB) for reading a best pattern back.
const DP_RECORD_BITS: usize = 1 << 27;

/// The exact optimum of one node kind's knapsack by dynamic programming over its room (see
/// [`Grid`]). Exact, hence a valid upper bound whatever the search does. `None` when
/// candidates conflict or the table would exceed `limit` states.
fn exact_pattern(
    kind: &PatternKind,
    items: &[PatternItem],
    values: &[f64],
    cand: &[(usize, u32)],
    limit: usize,
    work: &mut DpWork,
) -> Option<ExactPattern> {
    if conflicting(items, cand) {
        return None;
    }
    let grid = Grid::of(kind, items, cand)?;
    grid.states(None, limit)?;
    let table = Table::new(&grid, None);
    let value: Vec<f64> = cand.iter().map(|(s, _)| values[*s]).collect();
    let pieces = table.pieces(&grid, cand, &value)?;
    if !work.take(pieces.len().saturating_mul(table.states)) {
        return None;
    }
    let record = pieces.len().saturating_mul(table.states) <= DP_RECORD_BITS;
    let (best, taken) = table.solve(&pieces, record);
    if !record {
        return Some(ExactPattern {
            value: best,
            counts: None,
        });
    }
    let Some(counts) = table.read_back(&pieces, &taken, cand, items.len()) else {
        return Some(ExactPattern {
            value: best,
            counts: None,
        });
    };
    let ok = pattern_fits(kind, items, cand, &counts);
    Some(ExactPattern {
        value: best,
        counts: ok.then_some(counts),
    })
}

/// Whether a pattern read back from a table keeps within the candidates' caps and the kind's
/// room in every resource (the tables cover only the resources the candidates use, in whole
/// units, so the read-back is checked against the real room).
fn pattern_fits(
    kind: &PatternKind,
    items: &[PatternItem],
    cand: &[(usize, u32)],
    counts: &[u32],
) -> bool {
    if !cand.iter().all(|(s, u)| counts[*s] <= *u) {
        return false;
    }
    let mut used = [0i64; DIMS];
    for (s, c) in counts.iter().enumerate() {
        for d in 0..DIMS {
            used[d] += items[s].req[d] * i64::from(*c);
        }
    }
    (0..DIMS).all(|d| used[d] <= kind.room[d])
}

/// Whether two candidates may not share a node (the dynamic programs do not model that).
fn conflicting(items: &[PatternItem], cand: &[(usize, u32)]) -> bool {
    cand.iter().any(|(s, _)| {
        items[*s]
            .conflicts
            .iter()
            .any(|t| cand.iter().any(|(c, _)| c == t))
    })
}

/// A pattern that fits a node kind: its value and pods per item.
type Found = (f64, Vec<u32>);

/// An upper bound on one node kind's best pattern: one resource `r` is moved into the
/// objective with a multiplier `μ ≥ 0` and the others are kept whole, by dynamic programming:
/// `UB(μ) = μ·room_r + max over patterns fitting the other resources of Σ (v_p − μ·req_p,r)·k_p`.
/// For a pattern that fits every resource, `room_r − Σ req_p,r·k_p ≥ 0`, so `UB(μ)` is at least
/// its value whatever `μ` is; the search over `μ` only makes the bound tighter. Every resource
/// whose relaxation leaves a table of at most [`LAGRANGE_DP_STATES`] states is tried, and the
/// least bound kept; the search stops once the bound is at most `enough` (it can no longer
/// matter). Also returns the most valuable pattern met along the way that fits every resource
/// (a column the branch and bound may have missed). `None` when candidates conflict or no
/// table is small enough.
fn lagrangian_upper(
    kind: &PatternKind,
    items: &[PatternItem],
    values: &[f64],
    cand: &[(usize, u32)],
    enough: f64,
    work: &mut DpWork,
) -> Option<(f64, Option<Found>)> {
    if conflicting(items, cand) {
        return None;
    }
    let grid = Grid::of(kind, items, cand)?;
    let mut best: Option<f64> = None;
    let mut found: Option<Found> = None;
    // Smallest tables first.
    let mut order: Vec<(usize, usize)> = (0..grid.caps.len())
        .filter_map(|r| grid.states(Some(r), LAGRANGE_DP_STATES).map(|n| (n, r)))
        .collect();
    order.sort_unstable();
    for (_, r) in order {
        if best.is_some_and(|b| b <= enough) {
            break;
        }
        let table = Table::new(&grid, Some(r));
        let cap_r = grid.caps[r] as f64;
        let mut eval = |mu: f64| -> Option<f64> {
            let v: Vec<f64> = cand
                .iter()
                .enumerate()
                .map(|(p, (s, _))| values[*s] - mu * grid.q[p][r] as f64)
                .collect();
            let pieces = table.pieces(&grid, cand, &v)?;
            if !work.take(pieces.len().saturating_mul(table.states)) {
                // Out of allowance: a valid bound that says nothing.
                return Some(f64::INFINITY);
            }
            let record = pieces.len().saturating_mul(table.states) <= DP_RECORD_BITS;
            let (dp, taken) = table.solve(&pieces, record);
            if record && let Some(counts) = table.read_back(&pieces, &taken, cand, items.len()) {
                let fits = pattern_fits(kind, items, cand, &counts);
                let value: f64 = counts
                    .iter()
                    .zip(values)
                    .map(|(c, v)| f64::from(*c) * v)
                    .sum();
                if fits && found.as_ref().is_none_or(|(f, _)| value > *f) {
                    found = Some((value, counts));
                }
            }
            Some(mu * cap_r + dp)
        };
        // μ beyond the largest value per unit of r only adds μ·room_r.
        let hi = cand
            .iter()
            .enumerate()
            .filter(|(p, _)| grid.q[*p][r] > 0)
            .map(|(p, (s, _))| values[*s] / grid.q[p][r] as f64)
            .fold(0.0f64, f64::max);
        let (mut a, mut b) = (0.0f64, hi);
        let phi = (5f64.sqrt() - 1.0) / 2.0;
        let mut x1 = b - phi * (b - a);
        let mut x2 = a + phi * (b - a);
        let mut f1 = eval(x1)?;
        let mut f2 = eval(x2)?;
        let mut low = f1.min(f2);
        for _ in 0..LAGRANGE_STEPS {
            if low <= enough {
                break;
            }
            if f1 <= f2 {
                b = x2;
                x2 = x1;
                f2 = f1;
                x1 = b - phi * (b - a);
                f1 = eval(x1)?;
                low = low.min(f1);
            } else {
                a = x1;
                x1 = x2;
                f1 = f2;
                x2 = a + phi * (b - a);
                f2 = eval(x2)?;
                low = low.min(f2);
            }
        }
        best = Some(best.map_or(low, |b: f64| b.min(low)));
    }
    best.map(|b| (b, found))
}

/// Multipliers for the resources of one node kind: the duals of the knapsack's LP relaxation
/// `max Σ v_p x_p  s.t.  Σ_p (req_p,d ÷ room_d) x_p ≤ 1 per resource d, 0 ≤ x_p ≤ most_p`.
///
/// The Lagrangian bound with these multipliers equals that LP's value, which is far tighter
/// than any single-resource relaxation when pods of different shapes compete for different
/// resources. Validity does not depend on the solve being exact: any `λ ≥ 0` gives an upper
/// bound, so a failed or inexact solve only returns a weaker one (zeros: no Lagrangian bound).
fn knapsack_multipliers(
    kind: &PatternKind,
    items: &[PatternItem],
    values: &[f64],
    cand: &[(usize, u32)],
) -> [f64; DIMS] {
    let mut out = [0.0; DIMS];
    let dims: Vec<usize> = (0..DIMS)
        .filter(|d| kind.room[*d] > 0 && cand.iter().any(|(s, _)| items[*s].req[*d] > 0))
        .collect();
    if dims.is_empty() || cand.is_empty() {
        return out;
    }
    let a: Vec<Vec<f64>> = dims
        .iter()
        .map(|d| {
            cand.iter()
                .map(|(s, _)| items[*s].req[*d].max(0) as f64 / kind.room[*d] as f64)
                .collect()
        })
        .collect();
    let c: Vec<f64> = cand.iter().map(|(s, _)| values[*s]).collect();
    let u: Vec<f64> = cand.iter().map(|(_, most)| f64::from(*most)).collect();
    if let Some(y) = bounded_packing_duals(&a, &c, &u) {
        for (i, d) in dims.iter().enumerate() {
            out[*d] = y[i].max(0.0);
        }
    }
    out
}

/// Row duals of `max c·x  s.t.  A x ≤ 1, 0 ≤ x ≤ u` (`a` is `rows × columns`, `c ≥ 0`), by a
/// bounded-variable revised simplex started from the all-slack basis; `None` if it does not
/// finish. Small dense problems only (a handful of rows, tens of columns).
fn bounded_packing_duals(a: &[Vec<f64>], c: &[f64], u: &[f64]) -> Option<Vec<f64>> {
    let r = a.len();
    let n = c.len();
    let eps = 1e-10;
    // Variables 0..n structural (bounds [0, u]), n..n+r slacks (bounds [0, ∞)).
    let col = |j: usize, i: usize| -> f64 {
        if j < n {
            a[i][j]
        } else if j - n == i {
            1.0
        } else {
            0.0
        }
    };
    let cost = |j: usize| -> f64 { if j < n { c[j] } else { 0.0 } };
    let upper = |j: usize| -> f64 { if j < n { u[j] } else { f64::INFINITY } };
    let mut basis: Vec<usize> = (0..r).map(|i| n + i).collect();
    let mut is_basic = vec![false; n + r];
    for i in 0..r {
        is_basic[n + i] = true;
    }
    let mut at_upper = vec![false; n + r];
    let mut binv = vec![vec![0.0f64; r]; r];
    for (i, row) in binv.iter_mut().enumerate() {
        row[i] = 1.0;
    }
    let mut xb = vec![1.0f64; r];
    let mut y = vec![0.0f64; r];
    for iter in 0..(50 * (n + r) + 100) {
        let bland = iter > 20 * (n + r);
        for v in y.iter_mut() {
            *v = 0.0;
        }
        for (k, &bj) in basis.iter().enumerate() {
            let cb = cost(bj);
            if cb != 0.0 {
                for i in 0..r {
                    y[i] += cb * binv[k][i];
                }
            }
        }
        // Entering: a nonbasic variable whose move off its bound gains.
        let mut enter: Option<(usize, f64)> = None;
        for j in 0..n + r {
            if is_basic[j] {
                continue;
            }
            let mut d = cost(j);
            for i in 0..r {
                d -= y[i] * col(j, i);
            }
            let gain = if at_upper[j] { -d } else { d };
            if gain > eps && enter.is_none_or(|(_, g)| gain > g) {
                enter = Some((j, gain));
                if bland {
                    break;
                }
            }
        }
        let Some((j, _)) = enter else {
            return Some(y);
        };
        let dir = if at_upper[j] { -1.0 } else { 1.0 };
        let alpha: Vec<f64> = (0..r)
            .map(|k| (0..r).map(|i| binv[k][i] * col(j, i)).sum())
            .collect();
        let mut t = upper(j);
        let mut leave: Option<(usize, bool)> = None;
        for k in 0..r {
            let delta = dir * alpha[k];
            if delta > eps {
                let lim = xb[k] / delta;
                if lim < t {
                    t = lim;
                    leave = Some((k, false));
                }
            } else if delta < -eps {
                let ub = upper(basis[k]);
                if ub.is_finite() {
                    let lim = (ub - xb[k]) / -delta;
                    if lim < t {
                        t = lim;
                        leave = Some((k, true));
                    }
                }
            }
        }
        if !t.is_finite() {
            return None;
        }
        let t = t.max(0.0);
        for k in 0..r {
            xb[k] -= t * dir * alpha[k];
        }
        match leave {
            None => at_upper[j] = !at_upper[j],
            Some((l, to_upper)) => {
                let entering_value = if at_upper[j] { upper(j) } else { 0.0 } + dir * t;
                let out = basis[l];
                is_basic[out] = false;
                at_upper[out] = to_upper;
                is_basic[j] = true;
                at_upper[j] = false;
                let pivot = alpha[l];
                for i in 0..r {
                    binv[l][i] /= pivot;
                }
                for k in 0..r {
                    if k != l && alpha[k] != 0.0 {
                        let f = alpha[k];
                        for i in 0..r {
                            binv[k][i] -= f * binv[l][i];
                        }
                    }
                }
                basis[l] = j;
                xb[l] = entering_value;
            }
        }
    }
    None
}

/// Depth-first branch and bound over the candidate items of one node kind.
struct Knapsack<'k> {
    kind: &'k PatternKind,
    items: &'k [PatternItem],
    values: &'k [f64],
    /// `(item, most per node)`, in branching order.
    cand: &'k [(usize, u32)],
    /// Relaxation constraints, as weights on resources relative to the node's room.
    lambdas: &'k [[f64; DIMS]],
    /// Per constraint, per candidate: one pod's weight.
    weights: &'k [Vec<f64>],
    /// Per constraint: candidates by value per weight, best first.
    orders: &'k [Vec<usize>],
    /// Lagrange multipliers on the resources (per unit of the node's room), from the root's LP
    /// relaxation; any non-negative values give a valid bound.
    lambda: &'k [f64; DIMS],
    /// Per candidate: its value less the multipliers' price of its requests, floored at 0.
    reduced: &'k [f64],
    counts: Vec<u32>,
    best: f64,
    best_counts: Vec<u32>,
    budget: u32,
}

impl Knapsack<'_> {
    /// An upper bound on the value candidates `pos..` can add in `free`: the least, over the
    /// relaxation constraints, of the fractional knapsack on that one constraint (each pod count
    /// also capped by how many fit in `free` on their own and by conflicts already chosen).
    fn bound(&self, pos: usize, free: &Amount) -> f64 {
        let caps: Vec<f64> = self
            .cand
            .iter()
            .enumerate()
            .map(|(p, (s, u))| {
                if p < pos || self.conflicted(*s) {
                    0.0
                } else {
                    f64::from((*u).min(fit_count(free, &self.items[*s].req)))
                }
            })
            .collect();
        // Lagrangian bound: Σ_d λ_d free_d + Σ_p cap_p (v_p − λ·req_p)⁺ ≥ the value of any
        // pattern within `free` and the caps, for any λ ≥ 0.
        let mut best: f64 = (0..DIMS)
            .filter(|d| self.lambda[*d] > 0.0 && self.kind.room[*d] > 0)
            .map(|d| self.lambda[d] * free[d].max(0) as f64 / self.kind.room[d] as f64)
            .sum::<f64>()
            + caps
                .iter()
                .zip(self.reduced)
                .map(|(c, r)| c * r)
                .sum::<f64>();
        for (c, l) in self.lambdas.iter().enumerate() {
            let mut cap: f64 = (0..DIMS)
                .filter(|d| l[*d] > 0.0 && self.kind.room[*d] > 0)
                .map(|d| l[d] * free[d].max(0) as f64 / self.kind.room[d] as f64)
                .sum();
            let mut v = 0.0;
            for &p in &self.orders[c] {
                if caps[p] <= 0.0 {
                    continue;
                }
                let val = self.values[self.cand[p].0];
                let w = self.weights[c][p];
                if w <= 0.0 {
                    v += val * caps[p];
                    continue;
                }
                if cap <= 0.0 {
                    break;
                }
                let x = caps[p].min(cap / w);
                v += val * x;
                cap -= x * w;
            }
            best = best.min(v);
        }
        best
    }

    /// Whether an item already chosen conflicts with item `s`.
    fn conflicted(&self, s: usize) -> bool {
        self.items[s].conflicts.iter().any(|t| {
            self.cand
                .iter()
                .position(|(c, _)| c == t)
                .is_some_and(|p| self.counts[p] > 0)
        })
    }

    /// The best value reachable from here (an upper bound where the search was cut short), or
    /// `None` when the budget ran out before this node was looked at.
    fn rec(&mut self, pos: usize, free: Amount, value: f64) -> Option<f64> {
        if pos == self.cand.len() {
            if value > self.best {
                self.best = value;
                self.best_counts.clone_from(&self.counts);
            }
            return Some(value);
        }
        if self.budget == 0 {
            return None;
        }
        self.budget -= 1;
        let b = value + self.bound(pos, &free);
        if b <= self.best * (1.0 + 1e-12) {
            return Some(b);
        }
        let (s, u) = self.cand[pos];
        let req = self.items[s].req;
        let kmax = if self.conflicted(s) {
            0
        } else {
            u.min(fit_count(&free, &req))
        };
        let mut upper = f64::NEG_INFINITY;
        for k in (0..=kmax).rev() {
            let mut next = free;
            for d in 0..DIMS {
                next[d] -= req[d] * i64::from(k);
            }
            self.counts[pos] = k;
            match self.rec(pos + 1, next, value + self.values[s] * f64::from(k)) {
                Some(v) => upper = upper.max(v),
                None => {
                    // The rest of this subtree is worth at most this node's bound.
                    upper = upper.max(b);
                    break;
                }
            }
        }
        self.counts[pos] = 0;
        Some(upper)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::plan::binpack::{PatternItem, PatternKind, PatternLp};
    use proptest::prelude::*;

    fn amount(cpu: i64, mem: i64) -> Amount {
        let mut a = [0; DIMS];
        a[0] = cpu;
        a[1] = mem;
        a[3] = 1;
        a
    }

    fn room(cpu: i64, mem: i64, pods: i64) -> Amount {
        let mut a = amount(cpu, mem);
        a[3] = pods;
        a
    }

    /// Every pattern (pods per item) one node of `kind` may hold, by enumeration.
    fn patterns(lp: &PatternLp, kind: &PatternKind) -> Vec<Vec<u32>> {
        let mut out = vec![vec![]];
        for (s, it) in lp.items.iter().enumerate() {
            let most = if kind.allowed[s] {
                it.cap.min(it.demand)
            } else {
                0
            };
            out = out
                .into_iter()
                .flat_map(|p| (0..=most).map(move |k| [p.clone(), vec![k]].concat()))
                .collect();
        }
        out.retain(|p| {
            let mut used = [0i64; DIMS];
            for (s, k) in p.iter().enumerate() {
                for d in 0..DIMS {
                    used[d] += lp.items[s].req[d] * i64::from(*k);
                }
            }
            let clash = p
                .iter()
                .enumerate()
                .any(|(s, k)| *k > 0 && lp.items[s].conflicts.iter().any(|t| p[*t] > 0));
            p.iter().any(|k| *k > 0) && !clash && (0..DIMS).all(|d| used[d] <= kind.room[d])
        });
        out
    }

    /// The cheapest integral fleet covering every pod exactly, by dynamic programming over the
    /// pods still to place (exact for these tiny instances).
    fn brute_force_optimum(lp: &PatternLp) -> f64 {
        let dims: Vec<usize> = lp.items.iter().map(|i| i.demand as usize + 1).collect();
        let states: usize = dims.iter().product();
        let decode = |mut x: usize| -> Vec<u32> {
            dims.iter()
                .map(|d| {
                    let v = x % d;
                    x /= d;
                    v as u32
                })
                .collect()
        };
        let encode = |v: &[u32]| -> usize {
            let mut x = 0;
            for (i, d) in dims.iter().enumerate().rev() {
                x = x * d + v[i] as usize;
            }
            x
        };
        let moves: Vec<(Vec<u32>, f64)> = lp
            .kinds
            .iter()
            .flat_map(|k| patterns(lp, k).into_iter().map(|p| (p, k.price)))
            .collect();
        let mut best = vec![f64::INFINITY; states];
        best[0] = 0.0;
        for x in 1..states {
            let left = decode(x);
            for (p, price) in &moves {
                // Take the pattern's pods, never more than are left (extra room stays empty).
                let rest: Vec<u32> = left
                    .iter()
                    .zip(p)
                    .map(|(l, k)| l.saturating_sub(*k))
                    .collect();
                let y = encode(&rest);
                if y != x {
                    best[x] = best[x].min(best[y] + price);
                }
            }
        }
        best[states - 1]
    }

    #[test]
    fn pattern_bound_counts_whole_pods() {
        // Pods of 3 CPU on 4-CPU nodes: the resource LP buys 3/4 of a node per pod, but one pod
        // per node is all that fits, so three pods need three nodes.
        let lp = PatternLp {
            items: vec![PatternItem {
                req: amount(3, 1),
                demand: 3,
                cap: 3,
                conflicts: vec![],
            }],
            kinds: vec![PatternKind {
                room: room(4, 4, 10),
                price: 1.0,
                allowed: vec![true],
            }],
            seeds: vec![],
        };
        let v = pattern_bound(&lp);
        assert!((v - 3.0).abs() < 1e-6, "{v}");
        assert!(v <= brute_force_optimum(&lp) + 1e-9);
    }

    #[test]
    fn pattern_bound_honours_conflicts_and_caps() {
        // Two anti-affine items (at most one pod of either per node): four nodes, though all
        // four pods would fit on one.
        let lp = PatternLp {
            items: vec![
                PatternItem {
                    req: amount(1, 1),
                    demand: 2,
                    cap: 1,
                    conflicts: vec![1],
                },
                PatternItem {
                    req: amount(1, 1),
                    demand: 2,
                    cap: 1,
                    conflicts: vec![0],
                },
            ],
            kinds: vec![PatternKind {
                room: room(8, 8, 10),
                price: 1.0,
                allowed: vec![true, true],
            }],
            seeds: vec![],
        };
        let v = pattern_bound(&lp);
        assert!((v - 4.0).abs() < 1e-6, "{v}");
        assert!((brute_force_optimum(&lp) - 4.0).abs() < 1e-9);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// The bound never exceeds the brute-forced optimum of a tiny instance.
        #[test]
        fn pattern_bound_is_below_the_optimum(
            items in prop::collection::vec((1i64..6, 1i64..6, 1u32..4, 1u32..4), 1..4),
            kinds in prop::collection::vec((2i64..12, 2i64..12, 1i64..6, 1u32..40, any::<u8>()), 1..4),
            conflict in any::<bool>(),
        ) {
            let n = items.len();
            let lp = PatternLp {
                items: items
                    .iter()
                    .enumerate()
                    .map(|(s, (c, m, d, cap))| PatternItem {
                        req: amount(*c, *m),
                        demand: *d,
                        cap: (*cap).min(*d),
                        conflicts: if conflict && n > 1 && s < 2 { vec![1 - s] } else { vec![] },
                    })
                    .collect(),
                kinds: kinds
                    .iter()
                    .map(|(c, m, p, price, allow)| PatternKind {
                        room: room(*c, *m, *p),
                        price: f64::from(*price) / 10.0,
                        allowed: (0..n).map(|s| allow & (1 << s) != 0 || s == 0).collect(),
                    })
                    .collect(),
                seeds: vec![],
            };
            // Seeds only steer column generation: any pattern at any price must keep the bound valid.
            let mut lp = lp;
            lp.seeds = (0..n).map(|s| {
                let mut c = vec![0; n];
                c[s] = 1;
                (c, 0.05 * (s + 1) as f64)
            }).collect();
            let opt = brute_force_optimum(&lp);
            let v = pattern_bound(&lp);
            prop_assert!(v <= opt * (1.0 + 1e-9) + 1e-9, "bound {} > optimum {}", v, opt);
            // A starved search leaves every kind open, so the dynamic programs decide.
            let starved = PatternBudget { rounds: 60, search: 1, final_search: 1, columns_per_round: 40 };
            let v = pattern_bound_with(&lp, &starved);
            prop_assert!(v <= opt * (1.0 + 1e-9) + 1e-9, "starved bound {} > optimum {}", v, opt);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        /// The knapsack's upper bound (Lagrangian multipliers from the LP relaxation, and the
        /// single-resource relaxations) is never below the best pattern, even when the search
        /// is cut off after a few nodes.
        #[test]
        fn knapsack_upper_bound_holds_with_any_budget(
            items in prop::collection::vec((1i64..6, 1i64..6, 1u32..4, 1u32..4), 1..5),
            room_cpu in 2i64..14,
            room_mem in 2i64..14,
            room_pods in 1i64..7,
            values in prop::collection::vec(0u32..100, 5),
            budget in 1u32..40,
        ) {
            let lp = PatternLp {
                items: items
                    .iter()
                    .map(|(c, m, d, cap)| PatternItem {
                        req: amount(*c, *m),
                        demand: *d,
                        cap: (*cap).min(*d),
                        conflicts: vec![],
                    })
                    .collect(),
                kinds: vec![PatternKind {
                    room: room(room_cpu, room_mem, room_pods),
                    price: 1.0,
                    allowed: vec![true; items.len()],
                }],
                seeds: vec![],
            };
            let v: Vec<f64> = values.iter().take(items.len()).map(|x| f64::from(*x) / 10.0).collect();
            let best = patterns(&lp, &lp.kinds[0])
                .iter()
                .map(|p| value_of(&v, p))
                .fold(0.0f64, f64::max);
            let r = best_pattern(&lp.kinds[0], &lp.items, &v, budget, true, &mut DpWork(u64::MAX));
            prop_assert!(r.upper >= best * (1.0 - 1e-9) - 1e-9, "upper {} < best {}", r.upper, best);
            prop_assert!(r.value <= best * (1.0 + 1e-9) + 1e-9);
        }
    }

    /// Candidates of one kind as `best_pattern` forms them: allowed items with a positive
    /// value, at most what fits, the cap and the demand.
    fn candidates(lp: &PatternLp, kind: &PatternKind, values: &[f64]) -> Vec<(usize, u32)> {
        lp.items
            .iter()
            .enumerate()
            .filter(|(s, _)| kind.allowed[*s] && values[*s] > 0.0)
            .map(|(s, it)| (s, fit_count(&kind.room, &it.req).min(it.cap).min(it.demand)))
            .filter(|(_, u)| *u > 0)
            .collect()
    }

    fn one_kind(
        items: &[(i64, i64, u32, u32)],
        room_cpu: i64,
        room_mem: i64,
        room_pods: i64,
    ) -> PatternLp {
        PatternLp {
            items: items
                .iter()
                .map(|(c, m, d, cap)| PatternItem {
                    req: amount(*c * 250, *m * 64),
                    demand: *d,
                    cap: (*cap).min(*d),
                    conflicts: vec![],
                })
                .collect(),
            kinds: vec![PatternKind {
                room: room(room_cpu * 250, room_mem * 64 + 17, room_pods),
                price: 1.0,
                allowed: vec![true; items.len()],
            }],
            seeds: vec![],
        }
    }

    /// One kind, random values, every fitting pattern and the best value: what both dynamic
    /// program proptests check against.
    struct DpCase {
        lp: PatternLp,
        v: Vec<f64>,
        all: Vec<Vec<u32>>,
        best: f64,
        cand: Vec<(usize, u32)>,
    }

    fn value_of(v: &[f64], p: &[u32]) -> f64 {
        p.iter().zip(v).map(|(k, x)| f64::from(*k) * x).sum::<f64>()
    }

    fn dp_case(
        items: &[(i64, i64, u32, u32)],
        room_cpu: i64,
        room_mem: i64,
        room_pods: i64,
        values: &[u32],
    ) -> DpCase {
        let lp = one_kind(items, room_cpu, room_mem, room_pods);
        let v: Vec<f64> = values
            .iter()
            .take(items.len())
            .map(|x| f64::from(*x) / 10.0)
            .collect();
        let all = patterns(&lp, &lp.kinds[0]);
        let best = all.iter().map(|p| value_of(&v, p)).fold(0.0f64, f64::max);
        let cand = candidates(&lp, &lp.kinds[0], &v);
        DpCase {
            lp,
            v,
            all,
            best,
            cand,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        /// The dynamic program finds exactly the best pattern (requests on a coarse grid, room
        /// off the grid), and any pattern it returns fits.
        #[test]
        fn exact_pattern_is_the_best_pattern(
            items in prop::collection::vec((1i64..6, 1i64..6, 1u32..5, 1u32..5), 1..5),
            room_cpu in 2i64..14,
            room_mem in 2i64..14,
            room_pods in 1i64..8,
            values in prop::collection::vec(0u32..100, 5),
        ) {
            let DpCase { lp, v, all, best, cand } = dp_case(&items, room_cpu, room_mem, room_pods, &values);
            let kind = &lp.kinds[0];
            let value_of = |p: &[u32]| value_of(&v, p);
            prop_assume!(!cand.is_empty());
            let exact = exact_pattern(kind, &lp.items, &v, &cand, DP_STATES, &mut DpWork(u64::MAX)).unwrap();
            prop_assert!((exact.value - best).abs() <= 1e-9 * best.max(1.0), "dp {} vs best {}", exact.value, best);
            if let Some(counts) = exact.counts {
                prop_assert!(counts.iter().all(|c| *c == 0) || all.contains(&counts), "{:?} does not fit", counts);
                prop_assert!((value_of(&counts) - best).abs() <= 1e-9 * best.max(1.0));
            }
        }

        /// The Lagrangian bound with one resource relaxed is never below the best pattern, and
        /// a pattern it reports fits and is worth what it says.
        #[test]
        fn lagrangian_upper_is_above_the_best_pattern(
            items in prop::collection::vec((1i64..6, 1i64..6, 1u32..5, 1u32..5), 1..5),
            room_cpu in 2i64..14,
            room_mem in 2i64..14,
            room_pods in 1i64..8,
            values in prop::collection::vec(0u32..100, 5),
            enough in 0u32..50,
        ) {
            let DpCase { lp, v, all, best, cand } = dp_case(&items, room_cpu, room_mem, room_pods, &values);
            let kind = &lp.kinds[0];
            let value_of = |p: &[u32]| value_of(&v, p);
            prop_assume!(!cand.is_empty());
            let (upper, found) = lagrangian_upper(kind, &lp.items, &v, &cand, f64::from(enough) / 10.0, &mut DpWork(u64::MAX)).unwrap();
            prop_assert!(upper >= best * (1.0 - 1e-9) - 1e-9, "upper {} < best {}", upper, best);
            if let Some((value, counts)) = found {
                prop_assert!(counts.iter().all(|c| *c == 0) || all.contains(&counts), "{:?} does not fit", counts);
                prop_assert!((value_of(&counts) - value).abs() <= 1e-9 * value.max(1.0));
            }
        }
    }

    #[test]
    fn packing_lp_duals_price_the_binding_resource() {
        // max 3x + 2y s.t. x + y ≤ 1 (scaled), x ≤ 0.5: x = 0.5, y = 0.5, value 2.5; the dual
        // of the row is 2 (y's value per unit).
        let a = vec![vec![1.0, 1.0]];
        let y = bounded_packing_duals(&a, &[3.0, 2.0], &[0.5, 10.0]).unwrap();
        assert!((y[0] - 2.0).abs() < 1e-9, "{y:?}");
    }

    #[test]
    fn single_resource_uses_best_price_per_unit() {
        // Type 0: 1 unit for 1.0; type 1: 4 units for 3.0. Demand 10 → 7.5.
        let a = vec![vec![0.1], vec![0.4]];
        let v = simplex_cover(&a, &[1.0, 3.0], 1).unwrap();
        assert!((v - 7.5).abs() < 1e-9, "{v}");
    }

    #[test]
    fn two_resources_mix_types() {
        // Demand cpu 10, mem 10. Type A (cpu-heavy): 2 cpu, 1 mem for 1.0; B: 1 cpu, 2 mem for 1.0.
        // Best mix: x_A = x_B = 10/3 → 6.667.
        let a = vec![vec![0.2, 0.1], vec![0.1, 0.2]];
        let v = simplex_cover(&a, &[1.0, 1.0], 2).unwrap();
        assert!((v - 20.0 / 3.0).abs() < 1e-9, "{v}");
        // A balanced type at 1.4 for 2+2 is cheaper: 5 × 1.4 = 7? No: 7 > 6.667, LP keeps the mix.
        let a2 = vec![vec![0.2, 0.1], vec![0.1, 0.2], vec![0.2, 0.2]];
        let v2 = simplex_cover(&a2, &[1.0, 1.0, 1.2], 2).unwrap();
        assert!((v2 - 6.0).abs() < 1e-9, "{v2}");
    }

    #[test]
    fn infeasible_without_gpus() {
        let a = vec![vec![1.0, 0.0]];
        assert!(simplex_cover(&a, &[1.0], 2).is_none());
    }
}
