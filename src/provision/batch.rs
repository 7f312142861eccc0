//! The batching window: wait for demand to settle (idle) but never too long (max), so one planning
//! round sees a whole burst of pods and packs them together.

use std::time::Duration;

/// Window lengths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchPolicy {
    /// Fire once no new demand has arrived for this long.
    pub idle: Duration,
    /// Fire at most this long after the window opened, however busy.
    pub max: Duration,
}

impl Default for BatchPolicy {
    fn default() -> Self {
        BatchPolicy {
            idle: Duration::from_secs(1),
            max: Duration::from_secs(10),
        }
    }
}

/// The window state machine; time is passed in, so it is a pure function of its inputs.
///
/// Demand is summarised by a signature (count and a hash of the unserved pods). A change opens
/// the window or resets its idle timer; unchanged unserved demand (pods the last round could not
/// place) re-fires after `max`, which is the retry interval.
#[derive(Debug, Clone, Default)]
pub struct Batcher {
    policy: BatchPolicy,
    opened: Option<jiff::Timestamp>,
    last_change: Option<jiff::Timestamp>,
    signature: (usize, u64),
    last_fire: Option<jiff::Timestamp>,
}

fn elapsed(now: jiff::Timestamp, since: jiff::Timestamp) -> Duration {
    let d = now.duration_since(since);
    Duration::try_from(d).unwrap_or(Duration::ZERO)
}

impl Batcher {
    /// A closed window.
    pub fn new(policy: BatchPolicy) -> Self {
        Batcher {
            policy,
            ..Default::default()
        }
    }

    /// Records the current unserved demand.
    pub fn observe(&mut self, now: jiff::Timestamp, count: usize, hash: u64) {
        let sig = (count, hash);
        if count == 0 {
            self.opened = None;
            self.last_change = None;
            self.signature = sig;
            return;
        }
        if sig != self.signature {
            self.signature = sig;
            self.last_change = Some(now);
            if self.opened.is_none() {
                self.opened = Some(now);
            }
        } else if self.opened.is_none() {
            // Same demand as the last round left behind: retry after the max window.
            let since = self.last_fire.map_or(self.policy.max, |t| elapsed(now, t));
            if since >= self.policy.max {
                self.opened = Some(now);
                self.last_change = Some(now - self.policy.idle);
            }
        }
    }

    /// Whether a planning round should run now.
    pub fn ready(&self, now: jiff::Timestamp) -> bool {
        match (self.opened, self.last_change) {
            (Some(opened), Some(changed)) => {
                elapsed(now, changed) >= self.policy.idle || elapsed(now, opened) >= self.policy.max
            }
            _ => false,
        }
    }

    /// Closes the window after a round.
    pub fn fired(&mut self, now: jiff::Timestamp) {
        self.opened = None;
        self.last_change = None;
        self.last_fire = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(1_700_000_000 + s).unwrap()
    }

    fn ms(base: i64, ms: i64) -> jiff::Timestamp {
        t(base) + jiff::SignedDuration::from_millis(ms)
    }

    #[test]
    fn idle_window_fires_after_quiet() {
        let mut b = Batcher::new(BatchPolicy::default());
        b.observe(t(0), 1, 1);
        assert!(!b.ready(ms(0, 500)));
        b.observe(ms(0, 900), 2, 2); // more pods: idle timer resets
        assert!(!b.ready(ms(1, 500)));
        assert!(b.ready(ms(1, 900)));
        b.fired(ms(1, 900));
        assert!(!b.ready(t(3)));
    }

    #[test]
    fn max_window_caps_a_steady_stream() {
        let mut b = Batcher::new(BatchPolicy::default());
        for i in 0..20 {
            let now = ms(0, i * 600);
            b.observe(now, i as usize + 1, i as u64);
            if b.ready(now) {
                assert!(i * 600 >= 10_000, "fired early at {i}");
                return;
            }
        }
        panic!("never fired");
    }

    #[test]
    fn leftover_demand_retries_after_max() {
        let mut b = Batcher::new(BatchPolicy::default());
        b.observe(t(0), 3, 9);
        assert!(b.ready(t(1)));
        b.fired(t(1));
        b.observe(t(2), 3, 9); // the same pods are still unserved
        assert!(!b.ready(t(2)));
        b.observe(t(11), 3, 9);
        assert!(b.ready(t(11)));
        b.observe(t(12), 0, 0);
        assert!(!b.ready(t(12)));
    }
}
