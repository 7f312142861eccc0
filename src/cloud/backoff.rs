//! Back-off for offerings that just failed with insufficient capacity (ICE).
//!
//! Karpenter holds a failed offering out for a flat 3 minutes, so a pool that stays dry is retried
//! (and fails, and costs a launch round) 20 times an hour. Here each consecutive failure doubles the
//! hold, from 1 minute up to 30 minutes, and a successful launch on the offering clears its history:
//! a briefly dry pool comes back quickly, a dry one stops wasting rounds.

use std::time::{Duration, Instant};

use moka::sync::Cache;

use crate::model::{Catalog, OfferingKey};

/// How long an offering is held out after its first failure.
pub const INITIAL_BACKOFF: Duration = Duration::from_secs(60);
/// The longest an offering is held out, however often it failed.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30 * 60);
/// How long failure history outlives the longest hold, so a pool that fails again soon after its
/// hold ends keeps doubling instead of starting over at 1 minute.
const HISTORY: Duration = Duration::from_secs(60 * 60);
/// Upper bound on remembered offerings (there are about 1,000 types × 6 zones × 2 capacity types).
const MAX_ENTRIES: u64 = 20_000;

/// The hold after `failures` consecutive failures: 1 min, 2, 4, 8, 16, then 30 min.
pub fn backoff_after(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    INITIAL_BACKOFF
        .saturating_mul(1u32 << doublings)
        .min(MAX_BACKOFF)
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    until: Instant,
}

/// Which offerings are held out after capacity failures, and until when.
///
/// # Guarantees
/// Time is passed in (`now`), so tests need no clock; the moka TTL only bounds memory.
#[derive(Clone)]
pub struct OfferingBackoff {
    entries: Cache<OfferingKey, Entry>,
}

impl std::fmt::Debug for OfferingBackoff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OfferingBackoff")
            .field("entries", &self.entries.entry_count())
            .finish()
    }
}

impl Default for OfferingBackoff {
    fn default() -> Self {
        Self::new()
    }
}

impl OfferingBackoff {
    /// An empty back-off table.
    pub fn new() -> Self {
        OfferingBackoff {
            entries: Cache::builder()
                .max_capacity(MAX_ENTRIES)
                .time_to_live(MAX_BACKOFF + HISTORY)
                .build(),
        }
    }

    /// Records a capacity failure and returns how long the offering is now held out.
    pub fn record_failure(&self, key: &OfferingKey, now: Instant) -> Duration {
        let failures = self
            .entries
            .get(key)
            .map_or(1, |e| e.failures.saturating_add(1));
        let hold = backoff_after(failures);
        self.entries.insert(
            key.clone(),
            Entry {
                failures,
                until: now + hold,
            },
        );
        hold
    }

    /// Records a successful launch: the offering's failure history is forgotten.
    pub fn record_success(&self, key: &OfferingKey) {
        self.entries.invalidate(key);
    }

    /// Whether the offering is held out at `now`.
    pub fn is_backed_off(&self, key: &OfferingKey, now: Instant) -> bool {
        self.entries.get(key).is_some_and(|e| e.until > now)
    }

    /// Every offering held out at `now`.
    pub fn backed_off(&self, now: Instant) -> Vec<OfferingKey> {
        let mut keys: Vec<OfferingKey> = self
            .entries
            .iter()
            .filter(|(_, e)| e.until > now)
            .map(|(k, _)| (*k).clone())
            .collect();
        keys.sort();
        keys
    }

    /// Marks every held-out offering unavailable in the catalog.
    pub fn apply(&self, catalog: &mut Catalog, now: Instant) {
        let keys = self.backed_off(now);
        if !keys.is_empty() {
            catalog.mark_unavailable(&keys);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::CapacityType;

    fn key(t: &str) -> OfferingKey {
        OfferingKey {
            instance_type: t.to_string(),
            zone: "us-east-1a".to_string(),
            capacity_type: CapacityType::Spot,
        }
    }

    #[test]
    fn backoff_doubles_from_one_minute_to_thirty() {
        let mins: Vec<u64> = (1..=8).map(|n| backoff_after(n).as_secs() / 60).collect();
        assert_eq!(mins, vec![1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(backoff_after(0), INITIAL_BACKOFF);
        assert_eq!(backoff_after(u32::MAX), MAX_BACKOFF);
    }

    #[test]
    fn failures_double_and_success_resets() {
        let b = OfferingBackoff::new();
        let t0 = Instant::now();
        let k = key("m5.large");
        assert!(!b.is_backed_off(&k, t0));
        assert_eq!(b.record_failure(&k, t0), Duration::from_secs(60));
        assert!(b.is_backed_off(&k, t0 + Duration::from_secs(59)));
        assert!(!b.is_backed_off(&k, t0 + Duration::from_secs(61)));
        // Failing again after the hold ended doubles it.
        let t1 = t0 + Duration::from_secs(61);
        assert_eq!(b.record_failure(&k, t1), Duration::from_secs(120));
        assert!(b.is_backed_off(&k, t1 + Duration::from_secs(119)));
        assert_eq!(b.backed_off(t1), vec![k.clone()]);
        b.record_success(&k);
        assert!(!b.is_backed_off(&k, t1));
        assert_eq!(b.record_failure(&k, t1), Duration::from_secs(60));
        // Other offerings are untouched.
        assert!(!b.is_backed_off(&key("m5.xlarge"), t1));
    }

    #[test]
    fn apply_marks_catalog_offerings() {
        let mut c = Catalog::embedded().unwrap();
        let b = OfferingBackoff::new();
        let now = Instant::now();
        b.record_failure(&key("m5.large"), now);
        b.apply(&mut c, now);
        let m5 = c.get("m5.large").unwrap();
        let off: Vec<_> = m5.offerings.iter().filter(|o| !o.available).collect();
        assert_eq!(off.len(), 1);
        assert_eq!(off[0].zone, "us-east-1a");
        assert_eq!(off[0].capacity_type, CapacityType::Spot);
    }
}
