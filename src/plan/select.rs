//! Choosing instance types: the cost-aware type for a new bin, and the ranked options of a
//! finished bin (right-sizing).
//!
//! Offerings are bits: bit `2 × zone + c` where `c` is 0 for spot and 1 for on-demand, so "which
//! offerings are still allowed" is one `u64` AND.

use crate::model::CapacityType;

/// Number of resource dimensions: cpu, memory, ephemeral, pods, then up to four extended.
pub const DIMS: usize = 8;

/// A resource vector in fixed dimensions, so inner loops neither allocate nor look names up.
pub type Amount = [i64; DIMS];

/// At most this many options per claim (CreateFleet's override limit, as Karpenter uses).
pub const MAX_OPTIONS: usize = 60;

/// The bit of an offering.
pub fn offering_bit(zone: usize, capacity_type: CapacityType) -> u64 {
    let c = match capacity_type {
        CapacityType::Spot => 0,
        CapacityType::OnDemand => 1,
    };
    1u64 << (zone * 2 + c)
}

/// Both capacity-type bits of a zone.
pub fn zone_bits(zone: usize) -> u64 {
    0b11u64 << (zone * 2)
}

/// How many pods of `req` fit in `free` (u32::MAX when `req` is all zero).
#[inline]
pub fn fit_count(free: &Amount, req: &Amount) -> u32 {
    let mut k = u32::MAX as i64;
    for d in 0..DIMS {
        let r = req[d];
        if r > 0 {
            let f = free[d];
            if f < r {
                return 0;
            }
            k = k.min(f / r);
        }
    }
    k.clamp(0, i64::from(u32::MAX)) as u32
}

/// Whether `used` fits in `room`, dimension by dimension.
#[inline]
pub fn holds(room: &Amount, used: &Amount) -> bool {
    room.iter().zip(used).all(|(r, u)| u <= r)
}

/// Per-type pricing, with offerings sorted cheapest first so a masked minimum exits early.
#[derive(Debug, Clone, Default)]
pub struct TypePrices {
    /// `(offering bit index, price)`, cheapest first, available offerings only.
    pub offerings: Vec<(u8, f64)>,
    /// OR of the available offering bits.
    pub available: u64,
}

impl TypePrices {
    /// The cheapest offering allowed by `mask`, as `(bit index, price)`.
    #[inline]
    pub fn cheapest(&self, mask: u64) -> Option<(u8, f64)> {
        self.offerings
            .iter()
            .find(|(b, _)| mask & (1u64 << b) != 0)
            .copied()
    }
}

/// What the new-bin chooser needs about one candidate type.
pub struct Candidate<'a> {
    /// Offerings allowed by the pool and pod for each type (0 = incompatible), by type index.
    pub compat: &'a [u64],
    /// Room per type for pods after reservations and DaemonSets, by type index.
    pub room: &'a [Amount],
    /// Prices per type.
    pub prices: &'a [TypePrices],
    /// Capacity (cpu milli, memory bytes) per type, for pool limits.
    pub capacity: &'a [(i64, i64)],
    /// Preferred-affinity score per type, when the pod has preferences.
    pub preference: Option<&'a [i32]>,
}

/// The chosen type for a new bin.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Choice {
    /// Type index.
    pub ty: usize,
    /// Pods of the group it will take.
    pub count: u32,
    /// Its price under the allowed offerings.
    pub price: f64,
}

/// How `best_new_type` scores a type.
#[derive(Debug, Clone, Copy)]
pub enum Scoring<'a> {
    /// Price per whole pod of the group placed.
    PerPod,
    /// Price per pod, counting the fractional room left over (which later groups fill).
    Fractional,
    /// Price of covering this whole remaining demand with the type alone.
    Aggregate(&'a Amount),
}

/// Picks the type for a new bin; ties go to the preferred, then the cheaper type.
///
/// Without `aggregate`, the least price per pod placed wins, counting at most `remaining` pods
/// and at most `cap` per node. With `aggregate` (the demand of every pod not yet packed in this
/// pool), the type that alone would cover that demand most cheaply wins, because later groups
/// fill what this one leaves. `headroom` is the pool's remaining (cpu, memory) under its limits.
pub fn best_new_type(
    c: &Candidate<'_>,
    pin: u64,
    req: &Amount,
    cap: u32,
    remaining: u32,
    headroom: (i64, i64),
    scoring: Scoring<'_>,
) -> Option<Choice> {
    let mut best: Option<(f64, i32, Choice)> = None;
    for (ty, &m) in c.compat.iter().enumerate() {
        let mask = m & pin;
        if mask == 0 {
            continue;
        }
        let (cpu, mem) = c.capacity[ty];
        if cpu > headroom.0 || mem > headroom.1 {
            continue;
        }
        let k = fit_count(&c.room[ty], req).min(cap).min(remaining);
        if k == 0 {
            continue;
        }
        let Some((_, price)) = c.prices[ty].cheapest(mask) else {
            continue;
        };
        let per_pod = match scoring {
            Scoring::Aggregate(total) => price * nodes_to_cover(&c.room[ty], req, total).max(1e-12),
            Scoring::PerPod => price / f64::from(k),
            Scoring::Fractional => {
                // Room beyond whole pods is credited, since later groups fill it.
                let frac = c.room[ty]
                    .iter()
                    .zip(req)
                    .filter(|(_, r)| **r > 0)
                    .map(|(room, r)| *room as f64 / *r as f64)
                    .fold(f64::INFINITY, f64::min);
                price / frac.min(f64::from(remaining.min(cap))).max(f64::from(k))
            }
        };
        let pref = c.preference.map_or(0, |p| p[ty]);
        let better = match &best {
            None => true,
            Some((bp, bpref, bc)) => {
                if per_pod < bp * (1.0 - 1e-9) {
                    true
                } else if per_pod <= bp * (1.0 + 1e-9) {
                    pref > *bpref || (pref == *bpref && price < bc.price)
                } else {
                    false
                }
            }
        };
        if better {
            best = Some((
                per_pod,
                pref,
                Choice {
                    ty,
                    count: k,
                    price,
                },
            ));
        }
    }
    best.map(|(_, _, c)| c)
}

/// How many nodes with `room` the `total` demand needs, over the dimensions `req` uses.
pub fn nodes_to_cover(room: &Amount, req: &Amount, total: &Amount) -> f64 {
    let mut nodes = 0.0f64;
    for d in 0..DIMS {
        if req[d] > 0 && total[d] > 0 {
            if room[d] <= 0 {
                return f64::INFINITY;
            }
            nodes = nodes.max(total[d] as f64 / room[d] as f64);
        }
    }
    nodes
}

/// One ranked option of a finished bin.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ranked {
    /// Type index.
    pub ty: usize,
    /// Offerings allowed for it.
    pub mask: u64,
    /// Cheapest allowed offering bit.
    pub bit: u8,
    /// Its price.
    pub price: f64,
}

/// Every type that holds `used` with an allowed offering, cheapest first, at most
/// [`MAX_OPTIONS`]. `mask_of(ty)` gives the offerings all the bin's pods allow on that type.
pub fn rank_options<F>(
    room: &[Amount],
    prices: &[TypePrices],
    used: &Amount,
    mut mask_of: F,
) -> Vec<Ranked>
where
    F: FnMut(usize) -> u64,
{
    let mut out: Vec<Ranked> = Vec::new();
    for (ty, r) in room.iter().enumerate() {
        if !holds(r, used) {
            continue;
        }
        let mask = mask_of(ty);
        if mask == 0 {
            continue;
        }
        if let Some((bit, price)) = prices[ty].cheapest(mask) {
            out.push(Ranked {
                ty,
                mask,
                bit,
                price,
            });
        }
    }
    out.sort_by(|a, b| a.price.total_cmp(&b.price).then(a.ty.cmp(&b.ty)));
    out.truncate(MAX_OPTIONS);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn amt(cpu: i64, mem: i64) -> Amount {
        let mut a = [0; DIMS];
        a[0] = cpu;
        a[1] = mem;
        a[3] = 100;
        a
    }

    #[test]
    fn fit_count_is_the_tightest_dimension() {
        let mut req = amt(500, 100);
        req[3] = 1;
        assert_eq!(fit_count(&amt(2000, 1000), &req), 4);
        assert_eq!(fit_count(&amt(2000, 250), &req), 2);
        assert_eq!(fit_count(&amt(400, 1000), &req), 0);
    }

    #[test]
    fn cost_per_pod_beats_cheapest_type() {
        // Type 0 holds 1 pod for 1.0; type 1 holds 4 pods for 2.0.
        let room = [amt(1000, 1000), amt(4000, 4000)];
        let prices = [
            TypePrices {
                offerings: vec![(0, 1.0)],
                available: 1,
            },
            TypePrices {
                offerings: vec![(0, 2.0)],
                available: 1,
            },
        ];
        let c = Candidate {
            compat: &[1, 1],
            room: &room,
            prices: &prices,
            capacity: &[(1000, 1000), (4000, 4000)],
            preference: None,
        };
        let mut req = amt(1000, 10);
        req[3] = 1;
        let ch = best_new_type(
            &c,
            u64::MAX,
            &req,
            u32::MAX,
            10,
            (i64::MAX, i64::MAX),
            Scoring::PerPod,
        )
        .unwrap();
        assert_eq!((ch.ty, ch.count), (1, 4));
        // With one pod left, the small type is cheaper per pod.
        let ch = best_new_type(
            &c,
            u64::MAX,
            &req,
            u32::MAX,
            1,
            (i64::MAX, i64::MAX),
            Scoring::PerPod,
        )
        .unwrap();
        assert_eq!(ch.ty, 0);
        // A pool limit rules the big type out.
        let ch = best_new_type(
            &c,
            u64::MAX,
            &req,
            u32::MAX,
            10,
            (2000, i64::MAX),
            Scoring::PerPod,
        )
        .unwrap();
        assert_eq!(ch.ty, 0);
        let ranked = rank_options(&room, &prices, &amt(900, 10), |_| 1);
        assert_eq!(ranked.iter().map(|r| r.ty).collect::<Vec<_>>(), vec![0, 1]);
    }
}
