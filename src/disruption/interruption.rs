//! Cloud notices that a node is going away (or should): spot interruption warnings, rebalance
//! recommendations, scheduled maintenance and instance state changes.
//!
//! Sources implement [`InterruptionSource`]; [`SimInterruptions`] is the simulated one and
//! `super::sqs::SqsInterruptions` reads the EventBridge messages AWS delivers to an SQS queue,
//! each body through [`read_eventbridge`].

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

    /// Whether the controller should act on it at all: a state change to `pending` or `running`
    /// is news of a node arriving, not leaving, and must not start a replacement.
    pub fn actionable(&self) -> bool {
        self.urgent() || *self == InterruptionKind::RebalanceRecommendation
    }

    /// A stable name for logs and metric labels.
    pub fn label(&self) -> &'static str {
        match self {
            InterruptionKind::SpotInterruption => "spot_interruption",
            InterruptionKind::RebalanceRecommendation => "rebalance_recommendation",
            InterruptionKind::ScheduledChange => "scheduled_change",
            InterruptionKind::StateChange(_) => "state_change",
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

/// What one EventBridge message turned out to be, so a queue reader can count and log each
/// message and still delete every one of them (a message left in the queue comes back forever).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventBridgeMessage {
    /// One of the four detail types Gantry handles, naming one or more instances.
    Notices(Vec<InterruptionEvent>),
    /// A well-formed event Gantry does not act on: another detail type, or an AWS Health event
    /// for another service or naming no instance.
    Ignored {
        /// The event's `detail-type`.
        detail_type: String,
    },
    /// Not an EventBridge event (not JSON, no `detail-type`), or a handled type lacking the
    /// instance it is about.
    Malformed {
        /// What is wrong, for the log.
        reason: &'static str,
    },
}

/// Reads one EventBridge message body (as delivered to SQS), for the four detail types
/// Karpenter handles.
pub fn read_eventbridge(body: &str) -> EventBridgeMessage {
    let Ok(v) = serde_json::from_str::<Value>(body) else {
        return EventBridgeMessage::Malformed { reason: "not JSON" };
    };
    let Some(detail_type) = v["detail-type"].as_str() else {
        return EventBridgeMessage::Malformed {
            reason: "no detail-type",
        };
    };
    let detail = &v["detail"];
    let one = |kind| match detail["instance-id"].as_str() {
        Some(id) if !id.is_empty() => EventBridgeMessage::Notices(vec![InterruptionEvent {
            instance_id: id.to_string(),
            kind,
        }]),
        _ => EventBridgeMessage::Malformed {
            reason: "no detail.instance-id",
        },
    };
    match detail_type {
        "EC2 Spot Instance Interruption Warning" => one(InterruptionKind::SpotInterruption),
        "EC2 Instance Rebalance Recommendation" => one(InterruptionKind::RebalanceRecommendation),
        "EC2 Instance State-change Notification" => match detail["state"].as_str() {
            Some(state) => one(InterruptionKind::StateChange(state.to_string())),
            None => EventBridgeMessage::Malformed {
                reason: "no detail.state",
            },
        },
        "AWS Health Event" if detail["service"].as_str() == Some("EC2") => {
            let events: Vec<InterruptionEvent> = detail["affectedEntities"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| e["entityValue"].as_str())
                .filter(|id| id.starts_with("i-"))
                .map(|id| InterruptionEvent {
                    instance_id: id.to_string(),
                    kind: InterruptionKind::ScheduledChange,
                })
                .collect();
            if events.is_empty() {
                EventBridgeMessage::Ignored {
                    detail_type: detail_type.to_string(),
                }
            } else {
                EventBridgeMessage::Notices(events)
            }
        }
        other => EventBridgeMessage::Ignored {
            detail_type: other.to_string(),
        },
    }
}

/// Parses one EventBridge message body (as delivered to SQS) into notices; unknown kinds and
/// malformed bodies yield none (see [`read_eventbridge`] to tell them apart).
pub fn parse_eventbridge(body: &str) -> Vec<InterruptionEvent> {
    match read_eventbridge(body) {
        EventBridgeMessage::Notices(events) => events,
        EventBridgeMessage::Ignored { .. } | EventBridgeMessage::Malformed { .. } => Vec::new(),
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

    #[test]
    fn messages_are_told_apart() {
        assert!(matches!(
            read_eventbridge("{"),
            EventBridgeMessage::Malformed { .. }
        ));
        assert!(matches!(
            read_eventbridge(r#"{"detail":{}}"#),
            EventBridgeMessage::Malformed { .. }
        ));
        assert!(matches!(
            read_eventbridge(
                r#"{"detail-type":"EC2 Spot Instance Interruption Warning","detail":{}}"#
            ),
            EventBridgeMessage::Malformed { .. }
        ));
        assert_eq!(
            read_eventbridge(r#"{"detail-type":"AWS API Call via CloudTrail","detail":{}}"#),
            EventBridgeMessage::Ignored {
                detail_type: "AWS API Call via CloudTrail".into()
            }
        );
        assert!(matches!(
            read_eventbridge(
                r#"{"detail-type":"AWS Health Event","detail":{"service":"RDS","affectedEntities":[{"entityValue":"i-1"}]}}"#
            ),
            EventBridgeMessage::Ignored { .. }
        ));
    }

    #[test]
    fn only_departures_and_rebalances_are_actionable() {
        for (kind, actionable) in [
            (InterruptionKind::SpotInterruption, true),
            (InterruptionKind::RebalanceRecommendation, true),
            (InterruptionKind::ScheduledChange, true),
            (InterruptionKind::StateChange("stopping".into()), true),
            (InterruptionKind::StateChange("terminated".into()), true),
            (InterruptionKind::StateChange("pending".into()), false),
            (InterruptionKind::StateChange("running".into()), false),
        ] {
            assert_eq!(kind.actionable(), actionable, "{kind:?}");
        }
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
