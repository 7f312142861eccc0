//! Cloud notices that a node is going away (or should): spot interruption warnings, rebalance
//! recommendations, scheduled maintenance and instance state changes.
//!
//! Sources implement [`InterruptionSource`]; [`SimInterruptions`] is the simulated one. An SQS
//! source would read EventBridge messages and hand each body to [`parse_eventbridge`] (the
//! `aws-sdk-sqs` crate is not a dependency yet, so there is no SQS source in this tree).

use std::sync::Mutex;

use serde_json::Value;

/// What the cloud announced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InterruptionKind {
    /// A spot instance will be reclaimed in two minutes.
    SpotInterruption,
    /// A spot instance is at elevated risk of interruption.
    RebalanceRecommendation,
    /// AWS Health scheduled maintenance (retirement, reboot).
    ScheduledChange,
    /// The instance changed state (`stopping`, `stopped`, `shutting-down`, `terminated`).
    StateChange(String),
}

impl InterruptionKind {
    /// Whether the instance is going away regardless: replace and drain at once.
    pub fn urgent(&self) -> bool {
        match self {
            InterruptionKind::SpotInterruption | InterruptionKind::ScheduledChange => true,
            InterruptionKind::RebalanceRecommendation => false,
            InterruptionKind::StateChange(s) => {
                matches!(
                    s.as_str(),
                    "stopping" | "stopped" | "shutting-down" | "terminated"
                )
            }
        }
    }
}

/// One notice about one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterruptionEvent {
    /// `i-0123…`.
    pub instance_id: String,
    /// What happened.
    pub kind: InterruptionKind,
}

/// Where interruption notices come from.
#[async_trait::async_trait]
pub trait InterruptionSource: Send + Sync {
    /// Notices received since the last poll (never blocks for long; empty when none).
    async fn poll(&self) -> Vec<InterruptionEvent>;
}

/// An in-memory queue of notices, for the simulation and tests.
#[derive(Debug, Default)]
pub struct SimInterruptions {
    queue: Mutex<Vec<InterruptionEvent>>,
}

impl SimInterruptions {
    /// An empty source.
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues a notice for the next poll.
    pub fn push(&self, event: InterruptionEvent) {
        if let Ok(mut q) = self.queue.lock() {
            q.push(event);
        }
    }
}

#[async_trait::async_trait]
impl InterruptionSource for SimInterruptions {
    async fn poll(&self) -> Vec<InterruptionEvent> {
        self.queue
            .lock()
            .map(|mut q| std::mem::take(&mut *q))
            .unwrap_or_default()
    }
}

/// Parses one EventBridge message body (as delivered to SQS) into notices; unknown kinds yield
/// none.
pub fn parse_eventbridge(body: &str) -> Vec<InterruptionEvent> {
    let Ok(v) = serde_json::from_str::<Value>(body) else {
        return Vec::new();
    };
    let detail = &v["detail"];
    let one = |kind| {
        detail["instance-id"]
            .as_str()
            .map(|id| InterruptionEvent {
                instance_id: id.to_string(),
                kind,
            })
            .into_iter()
            .collect()
    };
    match v["detail-type"].as_str().unwrap_or_default() {
        "EC2 Spot Instance Interruption Warning" => one(InterruptionKind::SpotInterruption),
        "EC2 Instance Rebalance Recommendation" => one(InterruptionKind::RebalanceRecommendation),
        "EC2 Instance State-change Notification" => one(InterruptionKind::StateChange(
            detail["state"].as_str().unwrap_or_default().to_string(),
        )),
        "AWS Health Event" if detail["service"].as_str() == Some("EC2") => {
            detail["affectedEntities"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| e["entityValue"].as_str())
                .map(|id| InterruptionEvent {
                    instance_id: id.to_string(),
                    kind: InterruptionKind::ScheduledChange,
                })
                .collect()
        }
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eventbridge_messages_parse() {
        let spot = r#"{"detail-type":"EC2 Spot Instance Interruption Warning","source":"aws.ec2",
            "detail":{"instance-id":"i-1","instance-action":"terminate"}}"#;
        assert_eq!(
            parse_eventbridge(spot),
            [InterruptionEvent {
                instance_id: "i-1".into(),
                kind: InterruptionKind::SpotInterruption
            }]
        );
        let state = r#"{"detail-type":"EC2 Instance State-change Notification",
            "detail":{"instance-id":"i-2","state":"stopping"}}"#;
        let e = parse_eventbridge(state);
        assert!(e[0].kind.urgent());
        let running = r#"{"detail-type":"EC2 Instance State-change Notification",
            "detail":{"instance-id":"i-2","state":"running"}}"#;
        assert!(!parse_eventbridge(running)[0].kind.urgent());
        let health = r#"{"detail-type":"AWS Health Event","detail":{"service":"EC2",
            "affectedEntities":[{"entityValue":"i-3"},{"entityValue":"i-4"}]}}"#;
        assert_eq!(parse_eventbridge(health).len(), 2);
        let rebalance = r#"{"detail-type":"EC2 Instance Rebalance Recommendation",
            "detail":{"instance-id":"i-5"}}"#;
        assert!(!parse_eventbridge(rebalance)[0].kind.urgent());
        assert!(parse_eventbridge("not json").is_empty());
    }

    #[tokio::test]
    async fn the_simulated_source_drains_its_queue() {
        let s = SimInterruptions::new();
        s.push(InterruptionEvent {
            instance_id: "i-1".into(),
            kind: InterruptionKind::SpotInterruption,
        });
        assert_eq!(s.poll().await.len(), 1);
        assert!(s.poll().await.is_empty());
    }
}
