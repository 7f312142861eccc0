//! Leader election on a `coordination.k8s.io/v1` Lease: only the holder runs the provisioner and
//! lifecycle loops; every replica serves the webhooks and health endpoints.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// What to do with the Lease, decided from what it says now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseAction {
    /// No Lease yet: create it, holding it.
    Create,
    /// We hold it: renew.
    Renew,
    /// Another holder stopped renewing: take it over.
    TakeOver,
    /// Another holder is live: follow.
    Follow,
}

/// Decides the Lease action; pure, so the election rules are tested without an API server.
pub fn decide(
    spec: Option<&LeaseSpec>,
    me: &str,
    now: jiff::Timestamp,
    duration: Duration,
) -> LeaseAction {
    let Some(spec) = spec else {
        return LeaseAction::Create;
    };
    match spec.holder_identity.as_deref() {
        Some(h) if h == me => LeaseAction::Renew,
        None | Some("") => LeaseAction::TakeOver,
        Some(_) => {
            let ttl = spec.lease_duration_seconds.map_or(duration, |s| {
                Duration::from_secs(u64::try_from(s).unwrap_or(0))
            });
            let renewed = spec.renew_time.as_ref().map(|t| t.0);
            let expired =
                renewed.is_none_or(|t| now.duration_since(t).as_secs_f64() > ttl.as_secs_f64());
            if expired {
                LeaseAction::TakeOver
            } else {
                LeaseAction::Follow
            }
        }
    }
}

/// Runs the election until cancelled, publishing whether this replica leads.
///
/// # Guarantees
/// Leadership is reported lost as soon as a renewal fails, before the Lease could expire, so
/// two replicas never run the loops at once for longer than one renewal period.
pub async fn run(
    client: Client,
    namespace: &str,
    name: &str,
    me: &str,
    duration: Duration,
    leading: watch::Sender<bool>,
    cancel: CancellationToken,
) {
    let api: Api<Lease> = Api::namespaced(client, namespace);
    let period = duration / 3;
    loop {
        let now = jiff::Timestamp::now();
        let result = tokio::time::timeout(period, try_once(&api, name, me, now, duration)).await;
        let lead = matches!(result, Ok(Ok(true)));
        if let Ok(Err(e)) = &result {
            warn!(error = %e, "leader election: lease update failed");
        }
        if *leading.borrow() != lead {
            info!(leading = lead, identity = me, "leadership changed");
        }
        leading.send_replace(lead);
        tokio::select! {
            () = cancel.cancelled() => {
                leading.send_replace(false);
                return;
            }
            () = tokio::time::sleep(period) => {}
        }
    }
}

async fn try_once(
    api: &Api<Lease>,
    name: &str,
    me: &str,
    now: jiff::Timestamp,
    duration: Duration,
) -> Result<bool, kube::Error> {
    let current = api.get_opt(name).await?;
    let action = decide(
        current.as_ref().and_then(|l| l.spec.as_ref()),
        me,
        now,
        duration,
    );
    let seconds = i32::try_from(duration.as_secs()).unwrap_or(15);
    match (action, current) {
        (LeaseAction::Follow, _) => Ok(false),
        (LeaseAction::Create, _) => {
            let lease = Lease {
                metadata: kube::api::ObjectMeta {
                    name: Some(name.to_string()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(me.to_string()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
        (action, Some(mut lease)) => {
            let spec = lease.spec.get_or_insert_with(Default::default);
            if action == LeaseAction::TakeOver {
                spec.holder_identity = Some(me.to_string());
                spec.acquire_time = Some(MicroTime(now));
                spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            }
            spec.renew_time = Some(MicroTime(now));
            spec.lease_duration_seconds = Some(seconds);
            // The resourceVersion from the read makes a racing replica's write fail with 409.
            match api.replace(name, &PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
        (_, None) => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(1_700_000_000 + s).unwrap()
    }

    fn spec(holder: &str, renewed: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(t(renewed))),
            ..Default::default()
        }
    }

    #[test]
    fn election_rules() {
        let d = Duration::from_secs(15);
        assert_eq!(decide(None, "a", t(0), d), LeaseAction::Create);
        assert_eq!(
            decide(Some(&spec("a", 0)), "a", t(5), d),
            LeaseAction::Renew
        );
        assert_eq!(
            decide(Some(&spec("b", 0)), "a", t(5), d),
            LeaseAction::Follow
        );
        assert_eq!(
            decide(Some(&spec("b", 0)), "a", t(16), d),
            LeaseAction::TakeOver
        );
        assert_eq!(
            decide(Some(&spec("", 0)), "a", t(1), d),
            LeaseAction::TakeOver
        );
    }
}
