//! Pure NodeClaim lifecycle decisions: what the controller should do next for one claim.

use std::time::Duration;

use crate::kube::crd::{NodeClaim, conditions};
use crate::model::labels::{TAINT_INITIALIZING, TAINT_UNREGISTERED};
use crate::state::NodeView;

/// How long each phase may take before the claim is given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// From creation to a launched instance.
    pub launch: Duration,
    /// From creation to a registered Node.
    pub registration: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            launch: Duration::from_secs(5 * 60),
            registration: Duration::from_secs(15 * 60),
        }
    }
}

/// The next step for a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimAction {
    /// Deleted: terminate the instance, delete the Node, remove the finalizer.
    Finalize,
    /// No instance recorded and none being launched: (re)launch, adopting a tagged instance.
    Launch,
    /// The Node appeared: link it, sync labels, remove `unregistered`.
    Register {
        /// The Node's name.
        node: String,
    },
    /// The startup gate's conditions hold: remove `initializing`.
    Initialize {
        /// The Node's name.
        node: String,
    },
    /// Give the claim up (its finalizer then terminates the instance).
    Delete {
        /// Why, for the event and the log.
        reason: String,
    },
    /// Nothing to do now.
    Wait,
}

/// What the decision needs to know beyond the claim.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClaimFacts<'a> {
    /// The Node whose providerID matches the claim's, if any.
    pub node_by_provider: Option<&'a NodeView>,
    /// The Node named in the claim's status, if it still exists.
    pub node_by_name: Option<&'a NodeView>,
    /// The pool's startup taint keys; the gate waits for them to go.
    pub startup_taints: &'a [String],
    /// DaemonSet pods that should run on the node but are not Running yet.
    pub daemon_pods_missing: usize,
    /// A launch for this claim is in progress in this process.
    pub launching: bool,
}

fn age(claim: &NodeClaim, now: jiff::Timestamp) -> Duration {
    claim
        .metadata
        .creation_timestamp
        .as_ref()
        .and_then(|t| Duration::try_from(now.duration_since(t.0)).ok())
        .unwrap_or(Duration::ZERO)
}

/// Decides the next step for one claim.
pub fn decide(
    claim: &NodeClaim,
    facts: &ClaimFacts<'_>,
    now: jiff::Timestamp,
    timeouts: &Timeouts,
) -> ClaimAction {
    if claim.metadata.deletion_timestamp.is_some() {
        return ClaimAction::Finalize;
    }
    let status = claim.status.as_ref();
    let provider_id = status.and_then(|s| s.provider_id.as_ref());
    let node_name = status.and_then(|s| s.node_name.as_ref());
    let age = age(claim, now);
    if provider_id.is_none() {
        if facts.launching {
            return ClaimAction::Wait;
        }
        if age > timeouts.launch {
            return ClaimAction::Delete {
                reason: format!("not launched within {}s", timeouts.launch.as_secs()),
            };
        }
        return ClaimAction::Launch;
    }
    let Some(_) = node_name else {
        if let Some(node) = facts.node_by_provider {
            return ClaimAction::Register {
                node: node.name.clone(),
            };
        }
        if age > timeouts.registration {
            return ClaimAction::Delete {
                reason: format!("not registered within {}s", timeouts.registration.as_secs()),
            };
        }
        return ClaimAction::Wait;
    };
    let Some(node) = facts.node_by_name else {
        return ClaimAction::Delete {
            reason: "its node was deleted".into(),
        };
    };
    if node.has_taint(TAINT_UNREGISTERED) {
        // Registered in status but the taint came back (e.g. a crash between the two writes).
        return ClaimAction::Register {
            node: node.name.clone(),
        };
    }
    if !claim.is_condition_true(conditions::INITIALIZED) || node.has_taint(TAINT_INITIALIZING) {
        let startup_gone = !facts.startup_taints.iter().any(|k| node.has_taint(k));
        if node.ready && startup_gone && facts.daemon_pods_missing == 0 {
            return ClaimAction::Initialize {
                node: node.name.clone(),
            };
        }
    }
    ClaimAction::Wait
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::crd::{Condition, NodeClaimStatus};
    use crate::model::{Effect, Taint};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn t(s: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(1_700_000_000 + s).unwrap()
    }

    fn claim(status: Option<NodeClaimStatus>) -> NodeClaim {
        let mut c = NodeClaim::new("c", Default::default());
        c.metadata.creation_timestamp = Some(Time(t(0)));
        c.status = status;
        c
    }

    fn launched(node: Option<&str>) -> NodeClaimStatus {
        NodeClaimStatus {
            provider_id: Some("aws:///us-east-1a/i-1".into()),
            node_name: node.map(Into::into),
            ..Default::default()
        }
    }

    fn node(taints: &[&str], ready: bool) -> NodeView {
        NodeView {
            name: "n".into(),
            ready,
            taints: taints
                .iter()
                .map(|k| Taint::new(k, "true", Effect::NoSchedule))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn launch_retries_then_times_out() {
        let to = Timeouts::default();
        let c = claim(None);
        assert_eq!(
            decide(&c, &ClaimFacts::default(), t(10), &to),
            ClaimAction::Launch
        );
        let busy = ClaimFacts {
            launching: true,
            ..Default::default()
        };
        assert_eq!(decide(&c, &busy, t(10), &to), ClaimAction::Wait);
        assert!(matches!(
            decide(&c, &ClaimFacts::default(), t(301), &to),
            ClaimAction::Delete { .. }
        ));
    }

    #[test]
    fn registration_links_the_node_or_times_out() {
        let to = Timeouts::default();
        let c = claim(Some(launched(None)));
        let n = node(&[TAINT_UNREGISTERED, TAINT_INITIALIZING], false);
        let f = ClaimFacts {
            node_by_provider: Some(&n),
            ..Default::default()
        };
        assert_eq!(
            decide(&c, &f, t(60), &to),
            ClaimAction::Register { node: "n".into() }
        );
        assert_eq!(
            decide(&c, &ClaimFacts::default(), t(60), &to),
            ClaimAction::Wait
        );
        assert!(matches!(
            decide(&c, &ClaimFacts::default(), t(901), &to),
            ClaimAction::Delete { .. }
        ));
    }

    #[test]
    fn gate_waits_for_ready_startup_taints_and_daemonsets() {
        let to = Timeouts::default();
        let c = claim(Some(launched(Some("n"))));
        let startup = vec!["cilium.io/agent-not-ready".to_string()];
        let cases = [
            (node(&[TAINT_INITIALIZING], false), 0, false),
            (
                node(&[TAINT_INITIALIZING, "cilium.io/agent-not-ready"], true),
                0,
                false,
            ),
            (node(&[TAINT_INITIALIZING], true), 1, false),
            (node(&[TAINT_INITIALIZING], true), 0, true),
        ];
        for (n, missing, lift) in cases {
            let f = ClaimFacts {
                node_by_name: Some(&n),
                startup_taints: &startup,
                daemon_pods_missing: missing,
                ..Default::default()
            };
            let got = decide(&c, &f, t(90), &to);
            assert_eq!(
                got == ClaimAction::Initialize { node: "n".into() },
                lift,
                "{n:?} {missing}"
            );
        }
    }

    #[test]
    fn deleted_claims_finalize_and_lost_nodes_delete() {
        let to = Timeouts::default();
        let mut c = claim(Some(launched(Some("n"))));
        assert!(matches!(
            decide(&c, &ClaimFacts::default(), t(5), &to),
            ClaimAction::Delete { .. }
        ));
        c.metadata.deletion_timestamp = Some(Time(t(5)));
        assert_eq!(
            decide(&c, &ClaimFacts::default(), t(6), &to),
            ClaimAction::Finalize
        );
        let mut init = claim(Some(launched(Some("n"))));
        init.status.as_mut().unwrap().conditions.push(Condition {
            type_: conditions::INITIALIZED.into(),
            status: "True".into(),
            ..Default::default()
        });
        let n = node(&[], true);
        let f = ClaimFacts {
            node_by_name: Some(&n),
            ..Default::default()
        };
        assert_eq!(decide(&init, &f, t(6), &to), ClaimAction::Wait);
    }
}
