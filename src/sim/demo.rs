//! `gantry demo`: the whole loop in one process, on virtual time.
//!
//! The simulated cluster and cloud, the fake kubelet and the scheduler stand-in (which calls the
//! real HTTPS extender over loopback TLS) are driven tick by tick; the provisioner and the
//! lifecycle controller are the very ones `serve` runs. HTTPS calls take real time but no
//! virtual time, so reported times are what a cluster would see, independent of this machine.
//!
//! Phase 1 is the scenario's burst of pods. Phase 2 ([`scale_down`]) then scales the
//! Deployments in, injects spot interruptions, and lets the disruption controller consolidate
//! under PodDisruptionBudgets.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::cloud::CloudProvider;
use crate::cloud::command::Ec2EndpointArgs;
use crate::cloud::sim::{SimCloud, SimConfig};
use crate::disruption::interruption::SimInterruptions;
use crate::disruption::{Disruption, DisruptionConfig};
use crate::extender::client::{Alpn, ExtenderClient, tls_config};
use crate::extender::routes::RequestLimits;
use crate::kube::crd::EC2NodeClass;
use crate::lifecycle::{Lifecycle, LifecycleConfig};
use crate::model::labels::{TAINT_INITIALIZING, TAINT_UNREGISTERED};
use crate::model::{Catalog, NodePoolView, PodDemand};
use crate::plan::PlanInput;
use crate::provision::batch::BatchPolicy;
use crate::provision::launch::InFlight;
use crate::provision::{Provisioner, ProvisionerConfig};
use crate::server::tls::{TlsFiles, TlsReloader};
use crate::server::{AppState, https_router};
use crate::sim::cluster::SimCluster;
use crate::sim::kubelet::{KubeletConfig, SimKubelet};
use crate::sim::scenario::{self, Scenario};
use crate::sim::scheduler::{SchedulerConfig, SchedulerStandIn};

pub mod scale_down;
pub use scale_down::{ScaleDown, ScaleDownReport};

/// Which cloud the demo launches into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DemoCloud {
    /// The in-process simulated cloud (the embedded us-east-1 catalog).
    Sim,
    /// The real EC2 provider (aws-sdk-ec2) against `--ec2-endpoint`, e.g. moto.
    Ec2,
}

/// `gantry demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// A scenario (the YAML kinds `gantry plan` reads); the built-in burst of 1,058 pods otherwise.
    #[arg(long, env = "GANTRY_DEMO_SCENARIO")]
    pub scenario: Option<PathBuf>,
    /// Where instances are launched.
    #[arg(long, env = "GANTRY_DEMO_CLOUD", value_enum, default_value_t = DemoCloud::Sim)]
    pub cloud: DemoCloud,
    /// With `--cloud ec2`: the EC2 endpoint (required, e.g. moto) and region.
    #[command(flatten)]
    pub ec2: Ec2EndpointArgs,
    /// With `--cloud ec2`: the cluster name instances are tagged with.
    #[arg(long, env = "GANTRY_DEMO_CLUSTER_NAME", default_value = crate::sim::ec2::DEFAULT_CLUSTER_NAME)]
    pub cluster_name: String,
    /// Virtual seconds per real second; 0 runs as fast as the machine allows.
    #[arg(long, env = "GANTRY_DEMO_SPEED", default_value_t = 0.0)]
    pub speed: f64,
    /// Virtual time per tick.
    #[arg(long, env = "GANTRY_DEMO_TICK", default_value = "1s", value_parser = crate::cli::parse_duration)]
    pub tick: Duration,
    /// Stop after this much virtual time even if pods are still pending.
    #[arg(long, env = "GANTRY_DEMO_MAX_TIME", default_value = "30m", value_parser = crate::cli::parse_duration)]
    pub max_time: Duration,
    /// Batching: plan once no new demand arrived for this long.
    #[arg(long, env = "GANTRY_BATCH_IDLE", default_value = "1s", value_parser = crate::cli::parse_duration)]
    pub batch_idle: Duration,
    /// Batching: plan at most this long after demand first appeared.
    #[arg(long, env = "GANTRY_BATCH_MAX", default_value = "10s", value_parser = crate::cli::parse_duration)]
    pub batch_max: Duration,
    /// Write the report as JSON here too.
    #[arg(long, env = "GANTRY_DEMO_REPORT_JSON")]
    pub report_json: Option<PathBuf>,
    /// No progress lines on stderr.
    #[arg(long, env = "GANTRY_DEMO_QUIET")]
    pub quiet: bool,
    /// Skip phase 2 (scale-down under PDBs, consolidation, spot interruptions).
    #[arg(long, env = "GANTRY_DEMO_NO_SCALE_DOWN")]
    pub no_scale_down: bool,
    /// Phase 2: the share of each Deployment's pods deleted (0 to 1).
    #[arg(long, env = "GANTRY_DEMO_SCALE_DOWN", default_value_t = 0.7, value_parser = scale_down::parse_fraction)]
    pub scale_down: f64,
    /// Phase 2: spot interruptions injected, one a minute.
    #[arg(long, env = "GANTRY_DEMO_INTERRUPTIONS", default_value_t = 3)]
    pub interruptions: usize,
    /// Phase 2: stop after this much virtual time even if consolidation goes on.
    #[arg(long, env = "GANTRY_DEMO_SCALE_DOWN_MAX_TIME", default_value = "30m", value_parser = crate::cli::parse_duration)]
    pub scale_down_max_time: Duration,
}

impl Default for DemoArgs {
    fn default() -> Self {
        DemoArgs {
            scenario: None,
            cloud: DemoCloud::Sim,
            ec2: Ec2EndpointArgs {
                ec2_endpoint: None,
                region: "us-east-1".to_string(),
            },
            cluster_name: crate::sim::ec2::DEFAULT_CLUSTER_NAME.to_string(),
            speed: 0.0,
            tick: Duration::from_secs(1),
            max_time: Duration::from_secs(1800),
            batch_idle: Duration::from_secs(1),
            batch_max: Duration::from_secs(10),
            report_json: None,
            quiet: true,
            no_scale_down: false,
            scale_down: 0.7,
            interruptions: 3,
            scale_down_max_time: Duration::from_secs(1800),
        }
    }
}

/// Time-to-bound percentiles in virtual seconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// Maximum.
    pub max: f64,
}

/// The demo's final report; the JSON shape is the README's.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DemoReport {
    /// Pods in the scenario.
    pub pods_total: usize,
    /// Pods bound at the end.
    pub pods_bound: usize,
    /// Nodes Gantry launched that are alive at the end.
    pub nodes: usize,
    /// USD/hour of those nodes.
    pub cost_per_hour: f64,
    /// The LP lower bound for the scenario's pods, USD/hour.
    pub lower_bound_per_hour: f64,
    /// Requested CPU over allocatable CPU, on Gantry's nodes.
    pub cpu_utilization: f64,
    /// Requested memory over allocatable memory, on Gantry's nodes.
    pub memory_utilization: f64,
    /// From pod creation to bind, virtual seconds.
    pub time_to_bound_seconds: Percentiles,
    /// Instances alive with no NodeClaim at the end (must be 0).
    pub leaked_instances: usize,
    /// Pods bound to a node still carrying a startup taint (must be 0).
    pub pods_bound_to_gated_nodes: usize,
    /// Pods bound to a node other than the one launched for them.
    pub pods_bound_off_reservation: usize,
    /// Nodes by `type/zone/capacity-type`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub nodes_by_type: BTreeMap<String, usize>,
    /// Virtual seconds simulated.
    pub simulated_seconds: f64,
    /// Wall-clock seconds the run took.
    pub wall_seconds: f64,
    /// Planning rounds run.
    pub planning_rounds: usize,
    /// Phase 2: scale-down, consolidation and interruptions (`null` when skipped).
    pub scale_down: Option<ScaleDownReport>,
}

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The scenario file.
    #[error("cannot read scenario {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The scenario content.
    #[error("invalid scenario")]
    Scenario(#[from] scenario::ScenarioError),
    /// Setting up the in-process server.
    #[error("cannot start the in-process extender: {0}")]
    Setup(String),
    /// Setting up the cloud (`--cloud ec2`: the endpoint, its catalog, the NodeClass resources).
    #[error("cannot set up the cloud: {0}")]
    Cloud(String),
    /// Writing the report.
    #[error("cannot write the report")]
    Write(#[from] std::io::Error),
}

/// Cost over its lower bound, or 0 when there is no bound to compare with.
fn cost_ratio(cost: f64, bound: f64) -> f64 {
    if bound > 0.0 { cost / bound } else { 0.0 }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted.get(idx).copied().unwrap_or(0.0)
}

/// The LP lower bound of `pods` over `nodepools` from an empty cluster, with the DaemonSets'
/// overhead on every node; the yardstick for a fleet's cost.
pub fn lower_bound<P: std::borrow::Borrow<k8s_openapi::api::core::v1::Pod>>(
    pods: impl IntoIterator<Item = P>,
    nodepools: &[crate::kube::crd::NodePool],
    daemonsets: &[k8s_openapi::api::apps::v1::DaemonSet],
    catalog: &Catalog,
    now: jiff::Timestamp,
) -> f64 {
    let pods: Vec<PodDemand> = pods
        .into_iter()
        .filter_map(|p| PodDemand::from_pod(p.borrow()).ok())
        .collect();
    let mut overhead = crate::model::Resources::default();
    for ds in daemonsets {
        if let Some(spec) = ds.spec.template.spec.as_ref()
            && let Ok(r) = crate::model::pod::pod_requests(spec)
        {
            overhead.add(&r);
        }
    }
    let pools: Vec<NodePoolView> = nodepools
        .iter()
        .filter_map(|p| NodePoolView::from_crd(p).ok())
        .map(|mut v| {
            v.daemon_overhead = overhead.clone();
            v
        })
        .collect();
    let input = PlanInput {
        pods: &pods,
        pools: &pools,
        catalog,
        nodes: &[],
        in_flight: &[],
        now,
    };
    let plan = crate::plan::plan(&input);
    crate::plan::lower_bound::plan_lower_bound(&input, &plan)
}

/// Reads the scenario the arguments name (or the built-in one).
///
/// # Errors
/// The file cannot be read or does not parse.
pub fn load_scenario(args: &DemoArgs) -> Result<Scenario, DemoError> {
    let text = match &args.scenario {
        Some(path) => std::fs::read_to_string(path).map_err(|source| DemoError::Read {
            path: path.clone(),
            source,
        })?,
        None => scenario::BUILTIN.to_string(),
    };
    Ok(scenario::parse(&text)?)
}

/// Runs the demo and returns its report.
///
/// # Errors
/// Only set-up failures; what happens in the simulation is reported, not raised.
pub async fn run(args: &DemoArgs) -> Result<DemoReport, DemoError> {
    let scenario = load_scenario(args)?;
    let mut sim = Simulation::start(&scenario, args, None).await?;
    let settled = run_phase(&mut sim, args).await;
    if settled && !args.no_scale_down {
        sim.begin_scale_down(&scenario, ScaleDown::from_args(args));
        sim.advance();
        run_phase(&mut sim, args).await;
    }
    let report = sim.finish().await;
    if let Some(path) = &args.report_json {
        std::fs::write(path, serde_json::to_vec_pretty(&report).unwrap_or_default())?;
    }
    Ok(report)
}

/// Steps until the phase is done or its deadline passes; returns whether it finished.
async fn run_phase(sim: &mut Simulation, args: &DemoArgs) -> bool {
    loop {
        let step_started = Instant::now();
        let done = sim.step().await;
        if done {
            return true;
        }
        if sim.now >= sim.deadline {
            return false;
        }
        sim.advance();
        if args.speed > 0.0 {
            let budget = args.tick.as_secs_f64() / args.speed;
            let spent = step_started.elapsed().as_secs_f64();
            if budget > spent {
                tokio::time::sleep(Duration::from_secs_f64(budget - spent)).await;
            }
        }
    }
}

/// Wraps the simulated cloud, e.g. in a fault injector, before the controllers see it.
pub type CloudWrapper = Box<dyn FnOnce(Arc<SimCloud>) -> Arc<dyn CloudProvider>>;

/// A running simulation: the real extender on loopback TLS, the simulated cluster and cloud,
/// the fake kubelet and scheduler, and the provisioner and lifecycle controller `serve` runs.
pub struct Simulation {
    app: AppState,
    /// The simulated cluster.
    pub cluster: Arc<SimCluster>,
    /// The simulated cloud (also reachable through `cloud`, possibly wrapped; idle with `--cloud ec2`).
    pub sim_cloud: Arc<SimCloud>,
    /// The cloud the controllers use.
    pub cloud: Arc<dyn CloudProvider>,
    provisioner: Provisioner,
    lifecycle: Lifecycle,
    /// Ticked only in phase 2 (see `begin_scale_down`).
    disruption: Disruption,
    interruptions: Arc<SimInterruptions>,
    phase2: Option<scale_down::Phase2>,
    kubelet: SimKubelet,
    scheduler: SchedulerStandIn,
    client: ExtenderClient,
    stop: CancellationToken,
    server: tokio::task::JoinHandle<()>,
    dir: PathBuf,
    provisioner_config: ProvisionerConfig,
    /// Virtual time now.
    pub now: jiff::Timestamp,
    t0: jiff::Timestamp,
    /// When the run gives up.
    pub deadline: jiff::Timestamp,
    tick: jiff::SignedDuration,
    tick_std: Duration,
    quiet: bool,
    last_progress: jiff::Timestamp,
    wall: Instant,
    ttb: Vec<f64>,
    report: DemoReport,
}

impl Simulation {
    /// Sets everything up and loads the scenario into the cluster at virtual time zero.
    ///
    /// `cloud` wraps the simulated cloud for fault injection; `None` uses it directly.
    ///
    /// # Errors
    /// Set-up failures (certificates, the loopback listener, the catalog).
    pub async fn start(
        scenario: &Scenario,
        args: &DemoArgs,
        cloud: Option<CloudWrapper>,
    ) -> Result<Simulation, DemoError> {
        let wall = Instant::now();
        let setup = |e: String| DemoError::Setup(e);
        let t0: jiff::Timestamp = "2026-01-05T09:00:00Z"
            .parse()
            .map_err(|e: jiff::Error| setup(e.to_string()))?;

        // The real HTTPS extender, on loopback, with fresh certificates.
        let app = AppState::new(Duration::from_secs(600));
        let dir = tempfile_dir()?;
        let loopback: std::net::IpAddr = [127, 0, 0, 1].into();
        let certs = crate::certs::generate(&["localhost".into()], &[loopback])
            .map_err(|e| setup(e.to_string()))?;
        crate::certs::write(&certs, &dir).map_err(|e| setup(e.to_string()))?;
        let live = Arc::new(ArcSwapOption::empty());
        let files = TlsFiles {
            cert: dir.join("server.crt"),
            key: dir.join("server.key"),
            client_ca: None,
        };
        TlsReloader::new(files, live.clone(), app.metrics.clone()).poll_once();
        let listener = tokio::net::TcpListener::bind((loopback, 0))
            .await
            .map_err(|e| setup(e.to_string()))?;
        let addr = listener.local_addr().map_err(|e| setup(e.to_string()))?;
        let stop = CancellationToken::new();
        let limits = RequestLimits {
            max_body_bytes: 64 << 20,
            timeout: Duration::from_secs(5),
        };
        let server = tokio::spawn(crate::server::https::serve_tls(
            listener,
            https_router(&app, limits, false, None),
            live,
            stop.clone(),
            Duration::from_secs(5),
        ));
        // HTTP/1.1: kube-scheduler's default, and cheaper than h2 for one call at a time.
        let tls = tls_config(certs.ca_cert.as_bytes(), None, Alpn::Http1)
            .map_err(|e| setup(e.to_string()))?;
        let client = ExtenderClient::connect(addr, "localhost", Arc::new(tls), "/scheduler")
            .await
            .map_err(|e| setup(e.to_string()))?;

        // The cluster and the cloud.
        let cluster = SimCluster::new(
            t0,
            app.cluster.clone(),
            app.ledger.clone(),
            app.reservation_window,
        );
        // Writes reach readers when `step` flushes between the actors, as a watch would
        // deliver them; publishing per write is quadratic at 10,000 pods.
        cluster.set_batched(true);
        let sim_cloud =
            Arc::new(SimCloud::embedded(SimConfig::default()).map_err(|e| setup(e.to_string()))?);
        let (cloud, catalog, nodeclasses) = match args.cloud {
            DemoCloud::Sim => {
                let cloud: Arc<dyn CloudProvider> = match cloud {
                    Some(wrap) => wrap(sim_cloud.clone()),
                    None => sim_cloud.clone(),
                };
                let catalog = sim_cloud
                    .catalog()
                    .await
                    .map_err(|e| setup(e.to_string()))?;
                (cloud, catalog, scenario.nodeclasses.clone())
            }
            DemoCloud::Ec2 => ec2_cloud(scenario, args, &certs.ca_cert).await?,
        };
        for c in &nodeclasses {
            cluster.put_nodeclass(c.clone());
        }
        for p in &scenario.nodepools {
            cluster.put_nodepool(p.clone());
        }
        for d in &scenario.daemonsets {
            cluster.put_daemonset(d.clone());
        }
        scale_down::load_budgets(&cluster, scenario);
        for p in scenario.pods() {
            cluster.add_pod(p);
        }
        // The cluster holds exactly the scenario's pods now; bound them there rather than
        // making every pod a second time.
        let bound = cluster.read(|s| {
            lower_bound(
                s.pod_objects(),
                &scenario.nodepools,
                &scenario.daemonsets,
                &catalog,
                t0,
            )
        });
        let provisioner_config = ProvisionerConfig {
            batch: BatchPolicy {
                idle: args.batch_idle,
                max: args.batch_max,
            },
            ..Default::default()
        };
        let interruptions = Arc::new(SimInterruptions::new());
        let (provisioner, lifecycle, disruption) =
            controllers(&app, &cluster, &cloud, provisioner_config, &interruptions);
        let tick =
            jiff::SignedDuration::try_from(args.tick).unwrap_or(jiff::SignedDuration::from_secs(1));
        Ok(Simulation {
            provisioner,
            lifecycle,
            disruption,
            interruptions,
            phase2: None,
            kubelet: SimKubelet::new(KubeletConfig::typical(catalog.clone())),
            scheduler: SchedulerStandIn::new(SchedulerConfig::default()),
            client,
            stop,
            server,
            dir,
            provisioner_config,
            now: t0,
            t0,
            deadline: t0 + jiff::SignedDuration::try_from(args.max_time).unwrap_or_default(),
            tick,
            tick_std: args.tick,
            quiet: args.quiet,
            last_progress: t0,
            wall,
            ttb: Vec::new(),
            report: DemoReport {
                pods_total: scenario.pod_count(),
                lower_bound_per_hour: bound,
                ..Default::default()
            },
            app,
            cluster,
            sim_cloud,
            cloud,
        })
    }

    /// The shared cluster state the extender and the controllers read.
    pub fn state(&self) -> &crate::state::SharedState {
        &self.app.cluster
    }

    /// Simulates a crash and restart of Gantry: the controllers lose everything they held in
    /// memory (batch window, in-flight launches, GC sightings, disruption jobs) and start again
    /// from the objects persisted in the cluster. Queued interruption notices survive, as
    /// messages in an SQS queue would.
    pub fn restart_controllers(&mut self) {
        if let Some(p2) = self.phase2.as_mut() {
            p2.carry_stats(self.disruption.executor().stats());
        }
        let (p, l, d) = controllers(
            &self.app,
            &self.cluster,
            &self.cloud,
            self.provisioner_config,
            &self.interruptions,
        );
        self.provisioner = p;
        self.lifecycle = l;
        self.disruption = d;
    }

    /// One tick at the current virtual time. In phase 1, returns whether every pod is bound
    /// and every NodeClaim initialized; in phase 2, whether the cluster is also consolidated
    /// (see [`ScaleDown::quiet`]).
    pub async fn step(&mut self) -> bool {
        let now = self.now;
        self.cluster.flush();
        self.inject_interruptions(now);
        let stats = self
            .scheduler
            .step(now, &self.cluster, &mut self.client)
            .await;
        self.cluster.flush();
        if self.phase2.is_none() {
            for b in &stats.bound {
                if let Some(c) = b.created {
                    self.ttb.push(now.duration_since(c).as_secs_f64());
                }
            }
        }
        self.report.pods_bound_to_gated_nodes += stats.bound_to_gated;
        self.report.pods_bound_off_reservation += stats.bound_off_reservation;
        if self.provisioner.tick(now).await.is_some() {
            self.report.planning_rounds += 1;
        }
        self.cluster.flush();
        if self.phase2.is_some() {
            self.disrupt(now, &stats.bound).await;
            self.cluster.flush();
        }
        self.lifecycle.tick(now).await;
        self.cluster.flush();
        self.kubelet
            .step(now, self.cloud.as_ref(), &self.cluster)
            .await;
        self.cluster.flush();
        let snap = self.app.cluster.load();
        let settled = snap.pending.is_empty()
            && snap
                .nodeclaims
                .values()
                .all(|c| c.is_condition_true(crate::kube::crd::conditions::INITIALIZED));
        let done = match self.phase2.as_mut() {
            Some(p2) => p2.done(settled, &snap, now),
            None => settled,
        };
        if !self.quiet && (now.duration_since(self.last_progress).as_secs() >= 10 || done) {
            self.last_progress = now;
            progress(&snap, now.duration_since(self.t0).as_secs_f64());
            if let Some(p2) = &self.phase2 {
                p2.progress(&self.cluster);
            }
        }
        done
    }

    /// Moves virtual time forward one tick.
    pub fn advance(&mut self) {
        self.now += self.tick;
        self.cluster.set_now(self.now);
        self.sim_cloud.advance(self.tick_std);
    }

    /// Stops the extender and computes the report.
    pub async fn finish(mut self) -> DemoReport {
        // Phase 2's figures are those of its last tick, before the clean-up below.
        let scale_down = match self.phase2.take() {
            Some(p2) => {
                let snap = self.app.cluster.load();
                let catalog = self.cloud.catalog().await.unwrap_or_default();
                Some(p2.report(&snap, &self.cluster, &self.disruption, &catalog, self.now))
            }
            None => None,
        };
        // Let garbage collection see what is left, twice, past its grace period.
        for _ in 0..2 {
            for _ in 0..61 {
                self.advance();
            }
            self.lifecycle.tick(self.now).await;
        }
        let snap = self.app.cluster.load();
        let mut report = std::mem::take(&mut self.report);
        if scale_down.is_none() {
            // The burst's figures; with phase 2 they were taken when it began.
            let f = Fleet::of(&snap);
            report.nodes = f.nodes;
            report.cost_per_hour = f.cost_per_hour;
            report.nodes_by_type = f.nodes_by_type;
            report.cpu_utilization = f.cpu_utilization;
            report.memory_utilization = f.memory_utilization;
            report.pods_bound = report.pods_total.saturating_sub(snap.pending.len());
        }
        report.scale_down = scale_down;
        report.leaked_instances = leaked(&snap, self.cloud.as_ref()).await;
        self.ttb.sort_by(f64::total_cmp);
        report.time_to_bound_seconds = Percentiles {
            p50: percentile(&self.ttb, 0.5),
            p95: percentile(&self.ttb, 0.95),
            max: self.ttb.last().copied().unwrap_or(0.0),
        };
        report.simulated_seconds = self.now.duration_since(self.t0).as_secs_f64();
        report.wall_seconds = self.wall.elapsed().as_secs_f64();
        self.stop.cancel();
        let _ = (&mut self.server).await;
        let _ = std::fs::remove_dir_all(&self.dir);
        report
    }
}

/// The EC2 cloud for `--cloud ec2`: connects, prepares the endpoint for the scenario's
/// NodeClasses, and returns the cloud, its catalog and the NodeClasses as prepared.
async fn ec2_cloud(
    scenario: &Scenario,
    args: &DemoArgs,
    ca_pem: &str,
) -> Result<(Arc<dyn CloudProvider>, Arc<Catalog>, Vec<EC2NodeClass>), DemoError> {
    let setup = |e: String| DemoError::Cloud(e);
    let settings = crate::sim::ec2::DemoEc2Settings {
        endpoint: args.ec2.ec2_endpoint.clone(),
        region: args.ec2.region.clone(),
        cluster_name: args.cluster_name.clone(),
        cluster_ca_pem: ca_pem.to_string(),
    };
    let provider = Arc::new(crate::sim::ec2::connect(&settings).map_err(setup)?);
    let embedded = Arc::new(Catalog::embedded().map_err(|e| setup(e.to_string()))?);
    let cloud = Arc::new(crate::sim::ec2::DemoEc2Cloud::new(
        provider.clone(),
        embedded,
    ));
    let catalog = cloud.catalog().await.map_err(|e| {
        setup(format!(
            "cannot read the EC2 catalog from {}: {e}",
            args.ec2.ec2_endpoint.as_deref().unwrap_or_default()
        ))
    })?;
    let zones = crate::sim::ec2::zones_of(&catalog);
    let (classes, prepared) = crate::sim::ec2::prepare(&provider, &scenario.nodeclasses, &zones)
        .await
        .map_err(setup)?;
    if !args.quiet {
        let _ = writeln!(std::io::stderr().lock(), "{}", prepared.summary());
    }
    Ok((cloud, catalog, classes))
}

/// The fleet Gantry runs at one moment, for the report.
#[derive(Debug, Clone, Default, PartialEq)]
struct Fleet {
    nodes: usize,
    cost_per_hour: f64,
    nodes_by_type: BTreeMap<String, usize>,
    cpu_utilization: f64,
    memory_utilization: f64,
}

impl Fleet {
    /// Launched NodeClaims (with a type, zone and capacity type), their price and their nodes'
    /// requests over allocatable.
    fn of(snap: &crate::state::ClusterSnapshot) -> Fleet {
        let mut f = Fleet::default();
        let mut alloc = crate::model::Resources::default();
        let mut used = crate::model::Resources::default();
        for claim in snap.nodeclaims.values() {
            let Some(s) = &claim.status else { continue };
            if let (Some(t), Some(z), Some(ct)) = (&s.instance_type, &s.zone, &s.capacity_type) {
                *f.nodes_by_type.entry(format!("{t}/{z}/{ct}")).or_default() += 1;
                f.nodes += 1;
                f.cost_per_hour += s
                    .price_per_hour
                    .as_deref()
                    .and_then(|p| p.parse::<f64>().ok())
                    .unwrap_or(0.0);
            }
            if let Some(n) = s.node_name.as_deref().and_then(|n| snap.node(n)) {
                alloc.add(&n.allocatable);
                used.add(&n.requested);
            }
        }
        f.cpu_utilization = ratio(used.cpu, alloc.cpu);
        f.memory_utilization = ratio(used.memory, alloc.memory);
        f
    }
}

fn controllers(
    app: &AppState,
    cluster: &Arc<SimCluster>,
    cloud: &Arc<dyn CloudProvider>,
    config: ProvisionerConfig,
    interruptions: &Arc<SimInterruptions>,
) -> (Provisioner, Lifecycle, Disruption) {
    let inflight = InFlight::default();
    let api: Arc<dyn crate::kube::api::ClusterApi> = cluster.clone();
    let provisioner = Provisioner::new(
        api.clone(),
        cloud.clone(),
        app.cluster.clone(),
        app.ledger.clone(),
        inflight.clone(),
        config,
    );
    let lifecycle = Lifecycle::new(
        api.clone(),
        cloud.clone(),
        app.cluster.clone(),
        inflight.clone(),
        LifecycleConfig::default(),
    );
    let disruption = Disruption::new(
        api,
        cloud.clone(),
        app.cluster.clone(),
        inflight,
        DisruptionConfig {
            // Karpenter's polling period; jobs still advance every tick.
            decide_every: Duration::from_secs(10),
            ..Default::default()
        },
    )
    .with_interruptions(interruptions.clone());
    (provisioner, lifecycle, disruption)
}

/// Alive instances with no NodeClaim to own them.
pub async fn leaked(snap: &crate::state::ClusterSnapshot, cloud: &dyn CloudProvider) -> usize {
    let owners: std::collections::HashSet<&str> =
        snap.nodeclaims.keys().map(String::as_str).collect();
    cloud
        .list()
        .await
        .map(|l| {
            l.iter()
                .filter(|i| i.state.is_alive())
                .filter(|i| !i.nodeclaim.as_deref().is_some_and(|c| owners.contains(c)))
                .count()
        })
        .unwrap_or(usize::MAX)
}

fn ratio(a: i64, b: i64) -> f64 {
    if b > 0 { a as f64 / b as f64 } else { 0.0 }
}

fn tempfile_dir() -> Result<PathBuf, DemoError> {
    let base = std::env::temp_dir().join(format!(
        "gantry-demo-{}-{}",
        std::process::id(),
        jiff::Timestamp::now().as_nanosecond()
    ));
    std::fs::create_dir_all(&base).map_err(|e| DemoError::Setup(e.to_string()))?;
    Ok(base)
}

fn progress(snap: &crate::state::ClusterSnapshot, t: f64) {
    let claims = snap.nodeclaims.len();
    let launching = snap
        .nodeclaims
        .values()
        .filter(|c| {
            c.status
                .as_ref()
                .and_then(|s| s.node_name.as_ref())
                .is_none()
        })
        .count();
    let gated = snap
        .nodes
        .values()
        .filter(|n| n.has_taint(TAINT_INITIALIZING) || n.has_taint(TAINT_UNREGISTERED))
        .count();
    let bound: usize = snap.pods_by_node.values().map(Vec::len).sum();
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for p in snap.pending.values() {
        let owner = p
            .metadata
            .owner_references
            .as_ref()
            .and_then(|o| o.first())
            .map(|o| o.name.clone())
            .unwrap_or_else(|| "(bare pod)".into());
        *reasons.entry(owner).or_default() += 1;
    }
    let mut err = std::io::stderr().lock();
    let _ = writeln!(
        err,
        "[t={t:>6.0}s] pending {:>5}  nodeclaims {:>4} (launching {:>3}, gated {:>3}, ready {:>4})  pods bound {:>5}",
        snap.pending.len(),
        claims,
        launching,
        gated,
        snap.nodes.len().saturating_sub(gated),
        bound
    );
    let mut top: Vec<(usize, String)> = reasons.into_iter().map(|(k, v)| (v, k)).collect();
    top.sort_by(|a, b| b.cmp(a));
    for (n, why) in top.iter().take(3) {
        let _ = writeln!(err, "            {n:>5} pending from {why}");
    }
}

/// Renders the report for people.
pub fn render(r: &DemoReport) -> String {
    let mut s = String::new();
    s.push_str("\nGantry demo report\n==================\n");
    s.push_str(&format!(
        "pods: {} total, {} bound   nodes: {}   simulated {:.0}s in {:.1}s wall, {} planning rounds\n\n",
        r.pods_total, r.pods_bound, r.nodes, r.simulated_seconds, r.wall_seconds, r.planning_rounds
    ));
    s.push_str("nodes by type / zone / capacity type:\n");
    for (k, n) in &r.nodes_by_type {
        s.push_str(&format!("  {n:>4}  {k}\n"));
    }
    let ratio = cost_ratio(r.cost_per_hour, r.lower_bound_per_hour);
    s.push_str(&format!(
        "\ncost: ${:.3}/h   lower bound ${:.3}/h   ratio {:.3}\n",
        r.cost_per_hour, r.lower_bound_per_hour, ratio
    ));
    s.push_str(&format!(
        "utilisation (requests / allocatable): cpu {:.1}%   memory {:.1}%\n",
        r.cpu_utilization * 100.0,
        r.memory_utilization * 100.0
    ));
    s.push_str(&format!(
        "time to bound (simulated): p50 {:.0}s   p95 {:.0}s   max {:.0}s\n",
        r.time_to_bound_seconds.p50, r.time_to_bound_seconds.p95, r.time_to_bound_seconds.max
    ));
    s.push_str(&format!(
        "leaked instances: {}   pods bound to gated nodes: {}   pods bound off their reservation: {}\n",
        r.leaked_instances, r.pods_bound_to_gated_nodes, r.pods_bound_off_reservation
    ));
    match &r.scale_down {
        Some(d) => s.push_str(&scale_down::render(d)),
        None => s.push_str(
            "\nphase 2 (scale-down): not run (--no-scale-down, or phase 1 did not settle)\n",
        ),
    }
    s
}
