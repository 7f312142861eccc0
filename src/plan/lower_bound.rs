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
//! fast over a thousand type columns; no LP crate is needed.

// Index loops over parallel per-type and per-dimension arrays read clearer than zips here.
#![allow(clippy::needless_range_loop)]

use super::select::{Amount, DIMS};
use super::{Plan, PlanInput, binpack::Packer};

/// The LP lower bound of the plan's new-node cost, in USD/hour.
///
/// Only pods the plan puts on new claims count: pods placed on existing capacity cost nothing
/// new, and unschedulable pods cost nothing in either. Returns 0 when the LP does not converge
/// (0 is always a valid bound).
pub fn plan_lower_bound(input: &PlanInput<'_>, plan: &Plan) -> f64 {
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
        return 0.0;
    }
    let a: Vec<Vec<f64>> = columns.iter().map(|(e, _)| e.clone()).collect();
    let c: Vec<f64> = columns.iter().map(|(_, p)| *p).collect();
    simplex_cover(&a, &c, rows.len()).unwrap_or(0.0)
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
    for (k, &bj) in basis.iter().enumerate() {
        if bj >= n + m && xb[k] > 1e-9 {
            return None;
        }
        obj += cost(bj) * xb[k];
    }
    Some(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

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
