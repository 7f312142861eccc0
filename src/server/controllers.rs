//! The loops `serve` runs as Lease holder: the provisioner, the disruption controller (with the
//! SQS interruption source when a queue is configured) and the lifecycle controller, against the
//! API server (`KubeCluster`) and EC2 (`Ec2Provider`). The same loops run in `gantry demo`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use super::AppState;
use crate::cloud::CloudProvider;
use crate::cloud::ec2::{Ec2Config, Ec2Provider};
use crate::disruption::sqs::{SqsConfig, SqsInterruptions, SqsQueue};
use crate::disruption::{Disruption, DisruptionConfig};
use crate::kube::api::ClusterApi;
use crate::kube::cluster::KubeCluster;
use crate::lifecycle::{Lifecycle, LifecycleConfig};
use crate::provision::launch::InFlight;
use crate::provision::{Provisioner, ProvisionerConfig};

/// How long a stopping interruption source gets to delete the messages it handed over.
const SOURCE_SHUTDOWN: Duration = Duration::from_secs(5);

/// Settings for the loops.
#[derive(Debug, Clone)]
pub struct ControllersConfig {
    /// EC2 settings (region, endpoint, cluster name, endpoint and CA for user data).
    pub ec2: Ec2Config,
    /// Provisioner settings (batch window, launch parallelism).
    pub provisioner: ProvisionerConfig,
    /// Lifecycle settings (timeouts, GC).
    pub lifecycle: LifecycleConfig,
    /// Disruption settings; `None` runs no disruption controller (`--disable-disruption`).
    pub disruption: Option<DisruptionConfig>,
    /// The SQS interruption queue; `None` runs disruption without an interruption source.
    pub interruption: Option<SqsConfig>,
    /// Namespace of the leader-election Lease.
    pub lease_namespace: String,
    /// Name of the Lease.
    pub lease_name: String,
    /// This replica's identity (the pod name).
    pub identity: String,
    /// How often the loops run.
    pub period: Duration,
}

/// Runs the loops on a thread of their own with a single-threaded runtime.
///
/// The loops' futures borrow from snapshots across awaits in ways the compiler cannot prove
/// `Send` for every lifetime, so they cannot be spawned on the shared multi-threaded runtime;
/// a dedicated thread also keeps planning from competing with request handling for workers.
///
/// # Errors
/// The thread or its runtime could not be created.
pub fn spawn_thread(
    kubeconfig: Option<PathBuf>,
    app: AppState,
    config: ControllersConfig,
    cancel: CancellationToken,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("gantry-controllers".into())
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(
                    run(kubeconfig, app, config, cancel).instrument(info_span!("controllers")),
                ),
                Err(e) => tracing::error!(error = %e, "cannot start the controllers' runtime"),
            }
        })
}

/// Runs the loops while this replica holds the Lease, until cancelled.
pub async fn run(
    kubeconfig: Option<PathBuf>,
    app: AppState,
    config: ControllersConfig,
    cancel: CancellationToken,
) {
    let client = loop {
        match crate::kube::watch::make_client(kubeconfig.as_deref()).await {
            Ok(c) => break c,
            Err(e) => warn!(error = %e, "controllers: no kubernetes client yet"),
        }
        tokio::select! {
            () = cancel.clone().cancelled_owned() => return,
            () = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    };
    let cloud: Arc<dyn CloudProvider> = Arc::new(Ec2Provider::connect(config.ec2.clone()).await);
    let cluster: Arc<dyn ClusterApi> = Arc::new(KubeCluster::new(client.clone(), &config.identity));
    let (tx, mut leading) = watch::channel(false);
    let election = tokio::spawn(
        {
            let (client, cancel, c) = (client.clone(), cancel.clone(), config.clone());
            async move {
                crate::kube::leader::run(
                    client,
                    &c.lease_namespace,
                    &c.lease_name,
                    &c.identity,
                    Duration::from_secs(15),
                    tx,
                    cancel,
                )
                .await;
            }
        }
        .instrument(info_span!("leader_election")),
    );
    loop {
        // Wait to lead; then build the loops fresh, so nothing a previous term held in memory
        // (batch windows, in-flight marks, GC sightings) survives a change of leader.
        while !*leading.borrow() {
            tokio::select! {
                () = cancel.clone().cancelled_owned() => { let _ = election.await; return; }
                r = leading.changed() => if r.is_err() { return; },
            }
        }
        info!(
            identity = %config.identity,
            disruption = config.disruption.is_some(),
            interruption_queue = config.interruption.is_some(),
            "leading: starting the loops"
        );
        let inflight = InFlight::default();
        let mut provisioner = Provisioner::new(
            cluster.clone(),
            cloud.clone(),
            app.cluster.clone(),
            app.ledger.clone(),
            inflight.clone(),
            config.provisioner,
        );
        // Only the leader reads the queue: a source built per term, and stopped with it.
        let interruptions = match (&config.disruption, &config.interruption) {
            (Some(_), Some(sqs)) => {
                match SqsInterruptions::start(
                    SqsQueue::connect(sqs.clone()).await,
                    app.metrics.clone(),
                ) {
                    Ok(s) => Some(Arc::new(s)),
                    Err(e) => {
                        tracing::error!(error = %e, "no interruption source this term");
                        None
                    }
                }
            }
            _ => None,
        };
        let mut disruption = config.disruption.map(|c| {
            let d = Disruption::new(
                cluster.clone(),
                cloud.clone(),
                app.cluster.clone(),
                inflight.clone(),
                c,
            );
            match &interruptions {
                Some(source) => d.with_interruptions(source.clone()),
                None => d,
            }
        });
        let mut lifecycle = Lifecycle::new(
            cluster.clone(),
            cloud.clone(),
            app.cluster.clone(),
            inflight,
            config.lifecycle,
        );
        let mut ticker = tokio::time::interval(config.period);
        while *leading.borrow() {
            tokio::select! {
                () = cancel.clone().cancelled_owned() => {
                    if let Some(s) = &interruptions {
                        s.shutdown(SOURCE_SHUTDOWN).await;
                    }
                    let _ = election.await;
                    return;
                }
                _ = ticker.tick() => {}
            }
            let now = jiff::Timestamp::now();
            provisioner
                .tick(now)
                .instrument(info_span!("provision"))
                .await;
            if let Some(d) = disruption.as_mut() {
                // Decisions are logged where they are made; evicted pods return through their
                // controllers (ReplicaSets), unlike the demo's bare pods.
                d.tick(now).instrument(info_span!("disruption")).await;
                drop(d.take_evicted());
            }
            lifecycle
                .tick(now)
                .instrument(info_span!("lifecycle"))
                .await;
        }
        if let Some(s) = &interruptions {
            s.shutdown(SOURCE_SHUTDOWN).await;
        }
        info!("lost the lease: loops stopped");
    }
}
