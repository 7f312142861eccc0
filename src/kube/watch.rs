//! Node and Pod watches feeding the `ClusterIndex`; the only writer of cluster snapshots.
//!
//! Relists are buffered between `Init` and `InitDone` and then replace the old objects, so
//! objects deleted while the watch was down do not linger. A malformed object is translated
//! leniently rather than breaking the stream.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::crd::{EC2NodeClass, NodeClaim, NodePool};
use super::views::{node_view, pod_view};
use crate::server::AppState;
use crate::state::cluster::ObjectKind;
use crate::state::{ClusterIndex, DemandEntry, DemandLedger, DemandSource};

/// Why no Kubernetes client could be built.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The kubeconfig file is missing or invalid.
    #[error("kubeconfig")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    /// Neither in-cluster config nor `KUBECONFIG` worked.
    #[error("no kubernetes configuration found")]
    Infer(#[from] kube::config::InferConfigError),
    /// The client could not be built from the configuration.
    #[error("kubernetes client")]
    Client(#[from] kube::Error),
}

/// Builds a client from an explicit kubeconfig, or in-cluster config / `KUBECONFIG`.
///
/// # Errors
/// The configuration cannot be found or is invalid.
pub async fn make_client(kubeconfig: Option<&Path>) -> Result<Client, ConnectError> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await?
        }
        None => kube::Config::infer().await?,
    };
    Ok(Client::try_from(config)?)
}

/// An error with its sources, for readiness reasons and logs.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        // Many kube errors already print their source; do not repeat it.
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = c.source();
    }
    s
}

/// Connects (retrying with back-off while the API is unreachable) and runs the watches until
/// cancelled. Problems are reported through readiness, never by exiting.
pub async fn run_forever(kubeconfig: Option<PathBuf>, app: AppState, cancel: CancellationToken) {
    let mut backoff = Duration::from_secs(1);
    loop {
        match make_client(kubeconfig.as_deref()).await {
            Ok(client) => {
                app.readiness.set_kube_error(None);
                run_watches(client, &app, &cancel).await;
                return;
            }
            Err(e) => {
                let msg = chain(&e);
                warn!(error = %msg, retry_in = ?backoff, "cannot build kubernetes client");
                app.readiness.set_kube_error(Some(msg));
            }
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

#[allow(clippy::large_enum_variant)] // one event at a time; boxing would only add allocations
enum WatchEvent {
    Node(Event<Node>),
    Pod(Event<Pod>),
    Claim(Event<NodeClaim>),
    Pool(Event<NodePool>),
    Class(Event<EC2NodeClass>),
    Daemon(Event<DaemonSet>),
    Error(String),
}

/// Relist buffers, held between `Init` and `InitDone`.
#[derive(Default)]
struct Relist {
    nodes: Option<Vec<Node>>,
    pods: Option<Vec<Pod>>,
    claims: Option<Vec<NodeClaim>>,
    pools: Option<Vec<NodePool>>,
    classes: Option<Vec<EC2NodeClass>>,
    daemons: Option<Vec<DaemonSet>>,
    pools_synced: bool,
}

fn stream<K>(
    api: Api<K>,
    wrap: fn(Event<K>) -> WatchEvent,
) -> futures::stream::BoxStream<'static, WatchEvent>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    watcher(api, watcher::Config::default().any_semantic())
        .default_backoff()
        .map(move |r| r.map_or_else(|e| WatchEvent::Error(e.to_string()), wrap))
        .boxed()
}

/// Applies a relist or a single event for one of the extra kinds.
fn apply_kind<K: Clone>(
    index: &mut ClusterIndex,
    buffer: &mut Option<Vec<K>>,
    ev: Event<K>,
    kind: ObjectKind,
    put: fn(&mut ClusterIndex, K),
    del: fn(&mut ClusterIndex, &K),
) -> bool {
    match ev {
        Event::Apply(o) => put(index, o),
        Event::Delete(o) => del(index, &o),
        Event::Init => *buffer = Some(Vec::new()),
        Event::InitApply(o) => buffer.get_or_insert_with(Vec::new).push(o),
        Event::InitDone => {
            index.clear_kind(kind);
            for o in buffer.take().unwrap_or_default() {
                put(index, o);
            }
            return true;
        }
    }
    false
}

async fn run_watches(client: Client, app: &AppState, cancel: &CancellationToken) {
    let nodes = watcher(Api::<Node>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .map(|r| r.map_or_else(|e| WatchEvent::Error(e.to_string()), WatchEvent::Node));
    let pods = watcher(
        Api::<Pod>::all(client.clone()),
        watcher::Config::default().any_semantic(),
    )
    .default_backoff()
    .map(|r| r.map_or_else(|e| WatchEvent::Error(e.to_string()), WatchEvent::Pod));
    let mut events = futures::stream::select_all(vec![
        nodes.boxed(),
        pods.boxed(),
        stream(Api::<NodeClaim>::all(client.clone()), WatchEvent::Claim),
        stream(Api::<NodePool>::all(client.clone()), WatchEvent::Pool),
        stream(Api::<EC2NodeClass>::all(client.clone()), WatchEvent::Class),
        stream(Api::<DaemonSet>::all(client), WatchEvent::Daemon),
    ]);
    let mut index = ClusterIndex::new();
    let mut relist = Relist::default();
    loop {
        let next = tokio::select! {
            () = cancel.cancelled() => return,
            e = events.next() => e,
        };
        let Some(first) = next else { return };
        apply(&mut index, &mut relist, app, first);
        // Apply whatever else is already waiting, then publish once.
        for _ in 0..4096 {
            match events.next().now_or_never() {
                Some(Some(e)) => apply(&mut index, &mut relist, app, e),
                _ => break,
            }
        }
        index.refresh_reservations(jiff::Timestamp::now(), app.reservation_window);
        if relist.pools_synced {
            app.nodepools
                .store(std::sync::Arc::new(Some(index.nodepools())));
        }
        app.cluster.publish(index.snapshot());
    }
}

fn watcher<K>(
    api: Api<K>,
    config: watcher::Config,
) -> impl futures::Stream<Item = Result<Event<K>, watcher::Error>> + Send
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    watcher::watcher(api, config)
}

fn apply(index: &mut ClusterIndex, relist: &mut Relist, app: &AppState, event: WatchEvent) {
    match event {
        WatchEvent::Error(e) => {
            warn!(error = %e, "watch error; retrying");
            app.readiness.set_kube_error(Some(e));
        }
        WatchEvent::Node(ev) => match ev {
            Event::Apply(n) => index.apply_node(node_view(&n)),
            Event::Delete(n) => index.delete_node(n.metadata.name.as_deref().unwrap_or_default()),
            Event::Init => relist.nodes = Some(Vec::new()),
            Event::InitApply(n) => relist.nodes.get_or_insert_with(Vec::new).push(n),
            Event::InitDone => {
                index.reset_nodes();
                for n in relist.nodes.take().unwrap_or_default() {
                    index.apply_node(node_view(&n));
                }
                index.set_nodes_synced();
                app.readiness.set_kube_error(None);
                info!("node cache synced");
            }
        },
        WatchEvent::Claim(ev) => {
            apply_kind(
                index,
                &mut relist.claims,
                ev,
                ObjectKind::NodeClaim,
                ClusterIndex::apply_nodeclaim,
                |i, o| i.delete_nodeclaim(o.metadata.name.as_deref().unwrap_or_default()),
            );
        }
        WatchEvent::Pool(ev) => {
            if apply_kind(
                index,
                &mut relist.pools,
                ev,
                ObjectKind::NodePool,
                ClusterIndex::apply_nodepool,
                |i, o| i.delete_nodepool(o.metadata.name.as_deref().unwrap_or_default()),
            ) {
                relist.pools_synced = true;
            }
        }
        WatchEvent::Class(ev) => {
            apply_kind(
                index,
                &mut relist.classes,
                ev,
                ObjectKind::NodeClass,
                ClusterIndex::apply_nodeclass,
                |i, o| i.delete_nodeclass(o.metadata.name.as_deref().unwrap_or_default()),
            );
        }
        WatchEvent::Daemon(ev) => {
            apply_kind(
                index,
                &mut relist.daemons,
                ev,
                ObjectKind::DaemonSet,
                ClusterIndex::apply_daemonset,
                |i, o| {
                    i.delete_daemonset(&format!(
                        "{}/{}",
                        o.metadata.namespace.as_deref().unwrap_or_default(),
                        o.metadata.name.as_deref().unwrap_or_default()
                    ))
                },
            );
        }
        WatchEvent::Pod(ev) => match ev {
            Event::Apply(p) => apply_pod(index, app, p),
            Event::Delete(p) => {
                let uid = p.metadata.uid.as_deref().unwrap_or_default();
                index.delete_pod(uid);
                app.ledger.remove(uid);
            }
            Event::Init => relist.pods = Some(Vec::new()),
            Event::InitApply(p) => relist.pods.get_or_insert_with(Vec::new).push(p),
            Event::InitDone => {
                index.reset_pods();
                for p in relist.pods.take().unwrap_or_default() {
                    apply_pod(index, app, p);
                }
                index.set_pods_synced();
                info!(pods = index.pod_count(), "pod cache synced");
            }
        },
    }
}

fn apply_pod(index: &mut ClusterIndex, app: &AppState, pod: Pod) {
    index_pod(
        index,
        &app.ledger,
        std::sync::Arc::new(pod),
        jiff::Timestamp::now(),
    );
}

/// Indexes a pod and keeps the demand ledger in step with its scheduling state; shared by the
/// watches and the simulated cluster so both feed decisions the same way.
///
/// The index keeps `pod` itself, so a caller that also holds it (the simulated API server's
/// store) shares one copy.
pub fn index_pod(
    index: &mut ClusterIndex,
    ledger: &DemandLedger,
    pod: std::sync::Arc<Pod>,
    now: jiff::Timestamp,
) {
    let view = pod_view(&pod);
    if view.node_name.is_some() || view.terminal {
        ledger.remove(&view.uid);
    } else if view.unschedulable {
        ledger.record(DemandEntry {
            uid: view.uid.clone(),
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            source: DemandSource::PodWatch,
            reason: "scheduler reported the pod unschedulable".into(),
            first_seen_unix: now.as_second(),
        });
    }
    index.apply_pod_object(view, pod);
}
