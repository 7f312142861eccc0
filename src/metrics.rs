//! Prometheus metrics, registered once and shared; `/metrics` renders them as text.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

/// Labels for request metrics: which verb, and how it ended.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `filter`, `prioritize`, `admission`.
    pub verb: &'static str,
    /// `ok`, `error`, `malformed`.
    pub outcome: &'static str,
}

/// Labels for malformed-request counts.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerbLabels {
    /// The verb.
    pub verb: &'static str,
}

/// Labels for interruption-queue messages: what the message announced, and what became of it.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InterruptionLabels {
    /// `spot_interruption`, `rebalance_recommendation`, `scheduled_change`, `state_change`,
    /// `other` (a detail type Gantry does not handle) or `unknown` (malformed).
    pub kind: &'static str,
    /// `delivered` (handed to the disruption controller), `ignored` or `malformed`; every one
    /// of them is deleted from the queue.
    pub result: &'static str,
}

/// Labels for interruption-queue call failures.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueErrorLabels {
    /// `get_queue_url`, `receive`, `delete`.
    pub operation: &'static str,
    /// `throttled`, `config`, `not_found`, `transient`.
    pub class: &'static str,
}

/// Every metric Gantry exports, so handlers and loops share one registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Requests served, by verb and outcome.
    pub requests: Family<RequestLabels, Counter>,
    /// Request latency in seconds, by verb and outcome.
    pub latency: Family<RequestLabels, Histogram>,
    /// Requests whose body could not be used.
    pub malformed: Family<VerbLabels, Counter>,
    /// Pods in the demand ledger.
    pub pending_pods: Gauge,
    /// Certificate reloads that succeeded.
    pub cert_reloads: Counter,
    /// Interruption-queue messages received, by kind and result.
    pub interruption_messages: Family<InterruptionLabels, Counter>,
    /// Interruption-queue call failures, by call and class.
    pub interruption_queue_errors: Family<QueueErrorLabels, Counter>,
}

impl Metrics {
    /// Builds and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("gantry");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RequestLabels, Histogram>::new_with_constructor(|| {
            // 25 µs … ~0.8 s: extender calls live in the low microseconds; the timeout is 2 s.
            Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                0.000_025, 2.0, 16,
            ))
        });
        let malformed = Family::<VerbLabels, Counter>::default();
        let pending_pods = Gauge::default();
        let cert_reloads = Counter::default();
        let interruption_messages = Family::<InterruptionLabels, Counter>::default();
        let interruption_queue_errors = Family::<QueueErrorLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests served by verb and outcome",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Request latency by verb and outcome",
            latency.clone(),
        );
        registry.register(
            "malformed_requests",
            "Requests whose body could not be parsed",
            malformed.clone(),
        );
        registry.register(
            "pending_pods",
            "Pods no node can take right now (the demand ledger)",
            pending_pods.clone(),
        );
        registry.register(
            "certificate_reloads",
            "Serving certificate reloads",
            cert_reloads.clone(),
        );
        registry.register(
            "interruption_messages",
            "Interruption-queue (SQS) messages received, by kind and result; all are deleted",
            interruption_messages.clone(),
        );
        registry.register(
            "interruption_queue_errors",
            "Interruption-queue (SQS) call failures, by call and error class",
            interruption_queue_errors.clone(),
        );
        registry.register(
            "build",
            "Build information",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        Metrics {
            registry,
            requests,
            latency,
            malformed,
            pending_pods,
            cert_reloads,
            interruption_messages,
            interruption_queue_errors,
        }
    }

    /// Counts one request and its latency.
    pub fn observe(&self, verb: &'static str, outcome: &'static str, seconds: f64) {
        let labels = RequestLabels { verb, outcome };
        self.requests.get_or_create(&labels).inc();
        self.latency.get_or_create(&labels).observe(seconds);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_names() {
        let m = Metrics::new();
        m.observe("filter", "ok", 0.0001);
        m.pending_pods.set(3);
        let text = m.render();
        assert!(
            text.contains("gantry_requests_total{verb=\"filter\",outcome=\"ok\"} 1"),
            "{text}"
        );
        assert!(text.contains("gantry_pending_pods 3"));
        assert!(text.contains("gantry_build_info"));
        assert!(text.contains("gantry_request_duration_seconds_bucket"));
    }
}
