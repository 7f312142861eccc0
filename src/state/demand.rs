//! The `DemandLedger`: pods that no node can take right now, which the provisioner must serve.

use std::sync::Arc;
use std::time::Duration;

use moka::sync::Cache;
use serde::Serialize;

/// Which signal recorded a pod as unplaceable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DemandSource {
    /// The extender's filter rejected (or was given) no node.
    Filter,
    /// The pod watch saw `PodScheduled=False, reason=Unschedulable`.
    PodWatch,
}

/// One pending pod in the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DemandEntry {
    /// Pod UID.
    pub uid: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Who recorded it.
    pub source: DemandSource,
    /// Why no node took it, as the recorder saw it.
    pub reason: String,
    /// Unix seconds when first recorded.
    pub first_seen_unix: i64,
}

/// Unschedulable pods keyed by UID, expiring after a TTL so a missed delete cannot leak an entry.
///
/// # Guarantees
/// Re-recording a pod keeps its first-seen time, so time-to-bound is measured from the first signal.
#[derive(Clone)]
pub struct DemandLedger {
    cache: Cache<String, Arc<DemandEntry>>,
}

impl std::fmt::Debug for DemandLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DemandLedger")
            .field("entries", &self.cache.entry_count())
            .finish()
    }
}

impl DemandLedger {
    /// A ledger whose entries expire `ttl` after they were last recorded, bounded in size.
    pub fn new(ttl: Duration, max_entries: u64) -> Self {
        DemandLedger {
            cache: Cache::builder()
                .time_to_live(ttl)
                .max_capacity(max_entries)
                .build(),
        }
    }

    /// Records (or refreshes) a pending pod.
    pub fn record(&self, mut entry: DemandEntry) {
        if let Some(prev) = self.cache.get(&entry.uid) {
            entry.first_seen_unix = prev.first_seen_unix;
        }
        self.cache.insert(entry.uid.clone(), Arc::new(entry));
    }

    /// Drops a pod that bound or was deleted.
    pub fn remove(&self, uid: &str) {
        self.cache.invalidate(uid);
    }

    /// Whether a pod is pending.
    pub fn contains(&self, uid: &str) -> bool {
        self.cache.contains_key(uid)
    }

    /// The number of pending pods, after applying pending expirations.
    pub fn len(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
    }

    /// Whether the ledger is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// All entries, oldest first, for planning rounds and `/debug/demand`.
    pub fn entries(&self) -> Vec<Arc<DemandEntry>> {
        let mut v: Vec<_> = self.cache.iter().map(|(_, e)| e).collect();
        v.sort_by(|a, b| {
            a.first_seen_unix
                .cmp(&b.first_seen_unix)
                .then_with(|| a.uid.cmp(&b.uid))
        });
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(uid: &str, t: i64) -> DemandEntry {
        DemandEntry {
            uid: uid.into(),
            namespace: "ns".into(),
            name: uid.into(),
            source: DemandSource::Filter,
            reason: "no node passed".into(),
            first_seen_unix: t,
        }
    }

    #[test]
    fn records_keep_first_seen_and_remove_drops() {
        let l = DemandLedger::new(Duration::from_secs(60), 1000);
        l.record(entry("a", 10));
        l.record(entry("a", 20));
        l.record(entry("b", 5));
        assert_eq!(l.len(), 2);
        let e = l.entries();
        assert_eq!(e[0].uid, "b");
        assert_eq!(e[1].first_seen_unix, 10);
        l.remove("a");
        assert!(!l.contains("a"));
        assert_eq!(l.len(), 1);
    }
}
