//! Command-line interface. Every flag also reads a `GANTRY_*` environment variable; the parsed
//! flags are validated once into the `Config` of each command, which tests build directly.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use thiserror::Error;

use crate::extender::routes::RequestLimits;
use crate::server::ServeConfig;
use crate::server::tls::TlsFiles;

/// Gantry's command line.
#[derive(Debug, Parser)]
#[command(
    name = "gantry",
    version,
    about = "Just-in-time EC2 nodes for Kubernetes"
)]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, env = "GANTRY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the extender, webhook, health port and (as leader) the loops.
    Serve(Box<ServeArgs>),
    /// Write a development CA, server and client certificates.
    Certs(CertsArgs),
    /// Print the CRD manifests (NodePool, EC2NodeClass, NodeClaim).
    Crds(CrdsArgs),
    /// Plan nodes for manifests offline and compare the cost with the LP lower bound.
    Plan(crate::plan::command::PlanArgs),
    /// List the instance types the cloud sells, with zones and prices.
    Catalog(crate::cloud::command::CatalogArgs),
    /// Run the whole loop in-process: simulated cloud and cluster, the real HTTPS extender.
    Demo(crate::sim::demo::DemoArgs),
}

/// Why flags do not make a valid configuration.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    /// A flag's value is out of range or contradicts another.
    #[error("--{flag}: {problem}")]
    Invalid {
        /// The flag, without dashes.
        flag: &'static str,
        /// What is wrong.
        problem: String,
    },
}

/// `gantry serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// HTTPS address for the extender and the admission webhook.
    #[arg(long, env = "GANTRY_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// Plain-HTTP address for /healthz, /readyz, /metrics and /debug/demand.
    #[arg(long, env = "GANTRY_HEALTH_LISTEN", default_value = "0.0.0.0:8080")]
    pub health_listen: SocketAddr,
    /// PEM certificate chain served on the HTTPS port (reloaded on change).
    #[arg(
        long,
        env = "GANTRY_TLS_CERT",
        default_value = "/etc/gantry/tls/tls.crt"
    )]
    pub tls_cert: PathBuf,
    /// PEM private key for --tls-cert.
    #[arg(
        long,
        env = "GANTRY_TLS_KEY",
        default_value = "/etc/gantry/tls/tls.key"
    )]
    pub tls_key: PathBuf,
    /// Require client certificates signed by this CA bundle.
    #[arg(long, env = "GANTRY_CLIENT_CA")]
    pub client_ca: Option<PathBuf>,
    /// Kubeconfig; without it, in-cluster config or $KUBECONFIG.
    #[arg(long, env = "GANTRY_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Largest request body accepted, in bytes.
    #[arg(long, env = "GANTRY_MAX_BODY_BYTES", default_value_t = 64 << 20)]
    pub max_body_bytes: usize,
    /// Deadline for reading a request and deciding (e.g. 5s, 500ms).
    #[arg(long, env = "GANTRY_REQUEST_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// Time between readiness going false and the HTTPS port closing, for load balancers.
    #[arg(long, env = "GANTRY_DRAIN_DELAY", default_value = "5s", value_parser = parse_duration)]
    pub drain_delay: Duration,
    /// Time in-flight requests get to finish at shutdown.
    #[arg(long, env = "GANTRY_SHUTDOWN_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
    /// How often the certificate files are checked for rotation.
    #[arg(long, env = "GANTRY_CERT_RELOAD_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub cert_reload_interval: Duration,
    /// How long an unschedulable pod stays in the demand ledger without being seen again.
    #[arg(long, env = "GANTRY_DEMAND_TTL", default_value = "10m", value_parser = parse_duration)]
    pub demand_ttl: Duration,
    /// The admission webhook's settings.
    #[command(flatten)]
    pub admission: crate::admission::AdmissionArgs,
    /// Where the provisioner launches nodes; `none` serves the extender and webhook only.
    #[arg(long, env = "GANTRY_CLOUD", value_enum, default_value_t = ServeCloud::None)]
    pub cloud: ServeCloud,
    /// The EKS cluster name (instance tags, node user data). Required with `--cloud ec2`.
    #[arg(long, env = "GANTRY_CLUSTER_NAME", default_value = "")]
    pub cluster_name: String,
    /// The API server endpoint nodes join.
    #[arg(long, env = "GANTRY_CLUSTER_ENDPOINT", default_value = "")]
    pub cluster_endpoint: String,
    /// The cluster CA (base64 PEM) nodes trust.
    #[arg(long, env = "GANTRY_CLUSTER_CA", default_value = "")]
    pub cluster_ca: String,
    /// AWS region.
    #[arg(long, env = "GANTRY_REGION", default_value = "us-east-1")]
    pub region: String,
    /// EC2 endpoint override (VPC endpoints, moto).
    #[arg(long, env = "GANTRY_EC2_ENDPOINT")]
    pub ec2_endpoint: Option<String>,
    /// Do not run the disruption controller (consolidation, expiration, interruption) even with
    /// `--cloud ec2`: nodes are then only ever added.
    #[arg(long, env = "GANTRY_DISABLE_DISRUPTION")]
    pub disable_disruption: bool,
    /// SQS queue (URL, or name in --region) EventBridge delivers spot interruption warnings,
    /// rebalance recommendations, scheduled changes and state changes to; none without it.
    #[arg(long, env = "GANTRY_INTERRUPTION_QUEUE")]
    pub interruption_queue: Option<String>,
    /// SQS endpoint override (VPC endpoints, moto).
    #[arg(long, env = "GANTRY_SQS_ENDPOINT")]
    pub sqs_endpoint: Option<String>,
    /// Batching: plan once no new demand arrived for this long.
    #[arg(long, env = "GANTRY_BATCH_IDLE", default_value = "1s", value_parser = parse_duration)]
    pub batch_idle: Duration,
    /// Batching: plan at most this long after demand first appeared.
    #[arg(long, env = "GANTRY_BATCH_MAX", default_value = "10s", value_parser = parse_duration)]
    pub batch_max: Duration,
    /// Namespace of the leader-election Lease.
    #[arg(long, env = "GANTRY_LEADER_NAMESPACE", default_value = "gantry-system")]
    pub leader_namespace: String,
    /// This replica's identity for leader election (defaults to $POD_NAME or $HOSTNAME).
    #[arg(long, env = "GANTRY_LEADER_IDENTITY")]
    pub leader_identity: Option<String>,
}

/// Whether and where `serve` launches nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ServeCloud {
    /// Extender and webhook only; no loops.
    None,
    /// Launch on EC2 as Lease holder.
    Ec2,
}

impl ServeArgs {
    /// Validates the flags once into a [`ServeConfig`].
    ///
    /// # Errors
    /// [`ConfigError`] naming the flag.
    pub fn into_config(self) -> Result<ServeConfig, ConfigError> {
        let invalid = |flag, problem: &str| ConfigError::Invalid {
            flag,
            problem: problem.to_string(),
        };
        if self.listen == self.health_listen {
            return Err(invalid("health-listen", "must differ from --listen"));
        }
        if self.max_body_bytes < 1024 {
            return Err(invalid("max-body-bytes", "must be at least 1024"));
        }
        for (flag, d) in [
            ("request-timeout", self.request_timeout),
            ("cert-reload-interval", self.cert_reload_interval),
            ("demand-ttl", self.demand_ttl),
        ] {
            if d.is_zero() {
                return Err(invalid(flag, "must be greater than zero"));
            }
        }
        if self.sqs_endpoint.is_some() && self.interruption_queue.is_none() {
            return Err(invalid("sqs-endpoint", "needs --interruption-queue"));
        }
        let interruption = match &self.interruption_queue {
            None => None,
            Some(_) if self.disable_disruption => {
                return Err(invalid(
                    "interruption-queue",
                    "has no effect with --disable-disruption",
                ));
            }
            Some(_) if self.cloud == ServeCloud::None => {
                return Err(invalid("interruption-queue", "needs --cloud ec2"));
            }
            Some(q) => {
                let queue = crate::disruption::sqs::QueueRef::parse(q)
                    .map_err(|p| invalid("interruption-queue", &p))?;
                let mut sqs = crate::disruption::sqs::SqsConfig::new(queue, &self.region);
                sqs.endpoint = self.sqs_endpoint.clone();
                Some(sqs)
            }
        };
        let controllers = match self.cloud {
            ServeCloud::None => None,
            ServeCloud::Ec2 => {
                if self.cluster_name.is_empty() {
                    return Err(invalid("cluster-name", "is required with --cloud ec2"));
                }
                let mut ec2 = crate::cloud::ec2::Ec2Config::new(&self.region, &self.cluster_name);
                ec2.endpoint = self.ec2_endpoint.clone();
                ec2.cluster_endpoint = self.cluster_endpoint.clone();
                ec2.cluster_ca = self.cluster_ca.clone();
                let identity = self
                    .leader_identity
                    .clone()
                    .or_else(|| std::env::var("POD_NAME").ok())
                    .or_else(|| std::env::var("HOSTNAME").ok())
                    .unwrap_or_else(|| format!("gantry-{}", std::process::id()));
                Some(crate::server::controllers::ControllersConfig {
                    ec2,
                    provisioner: crate::provision::ProvisionerConfig {
                        batch: crate::provision::batch::BatchPolicy {
                            idle: self.batch_idle,
                            max: self.batch_max,
                        },
                        ..Default::default()
                    },
                    lifecycle: crate::lifecycle::LifecycleConfig::default(),
                    disruption: (!self.disable_disruption)
                        .then(crate::disruption::DisruptionConfig::default),
                    interruption,
                    lease_namespace: self.leader_namespace.clone(),
                    lease_name: "gantry-leader".into(),
                    identity,
                    period: Duration::from_secs(1),
                })
            }
        };
        Ok(ServeConfig {
            listen: self.listen,
            health_listen: self.health_listen,
            tls: TlsFiles {
                cert: self.tls_cert,
                key: self.tls_key,
                client_ca: self.client_ca,
            },
            kubeconfig: self.kubeconfig,
            limits: RequestLimits {
                max_body_bytes: self.max_body_bytes,
                timeout: self.request_timeout,
            },
            drain_delay: self.drain_delay,
            shutdown_timeout: self.shutdown_timeout,
            cert_reload_interval: self.cert_reload_interval,
            demand_ttl: self.demand_ttl,
            admission: crate::admission::AdmissionConfig::from(&self.admission),
            controllers,
        })
    }
}

/// `gantry certs`.
#[derive(Debug, Clone, clap::Args)]
pub struct CertsArgs {
    /// Directory to write ca.crt, ca.key, server.crt, server.key, client.crt, client.key.
    #[arg(long, env = "GANTRY_CERTS_OUT")]
    pub out: PathBuf,
    /// DNS names for the server certificate (default: the in-cluster service names and localhost).
    #[arg(long = "dns", env = "GANTRY_CERTS_DNS", value_delimiter = ',')]
    pub dns: Vec<String>,
    /// IP addresses for the server certificate (default: 127.0.0.1).
    #[arg(long = "ip", env = "GANTRY_CERTS_IP", value_delimiter = ',')]
    pub ip: Vec<IpAddr>,
}

/// `gantry crds`.
#[derive(Debug, Clone, clap::Args)]
pub struct CrdsArgs {
    /// Write to this file instead of stdout.
    #[arg(long, short, env = "GANTRY_CRDS_OUT")]
    pub out: Option<PathBuf>,
}

/// Parses Kubernetes-style durations: `500ms`, `30s`, `5m`, `1h`, `1h30m`, `Never` is rejected.
///
/// # Errors
/// A message naming the bad text.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("duration {text:?} lacks a unit (ms, s, m, h)"))?;
        let (num, tail) = rest.split_at(digits);
        let value: f64 = num
            .parse()
            .map_err(|_| format!("duration {text:?} has a bad number"))?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        let secs = match unit {
            "ms" => value / 1000.0,
            "s" => value,
            "m" => value * 60.0,
            "h" => value * 3600.0,
            _ => return Err(format!("duration {text:?} has unknown unit {unit:?}")),
        };
        total += Duration::from_secs_f64(secs);
        rest = next;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn serve_flags_validate() {
        let cli = Cli::try_parse_from(["gantry", "serve", "--listen", "127.0.0.1:1"]).unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("not serve")
        };
        let cfg = args.clone().into_config().unwrap();
        assert_eq!(cfg.limits.max_body_bytes, 64 << 20);
        let mut bad = *args;
        bad.health_listen = bad.listen;
        assert!(
            bad.into_config()
                .unwrap_err()
                .to_string()
                .contains("health-listen")
        );
    }

    fn serve(args: &[&str]) -> Result<ServeConfig, ConfigError> {
        let cli = Cli::try_parse_from(["gantry", "serve"].iter().chain(args)).unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("not serve")
        };
        args.into_config()
    }

    #[test]
    fn disruption_and_interruption_flags_validate() {
        use crate::disruption::sqs::QueueRef;
        let ec2 = ["--cloud", "ec2", "--cluster-name", "c"];
        let c = serve(&ec2).unwrap().controllers.unwrap();
        assert!(c.disruption.is_some(), "on by default");
        assert!(c.interruption.is_none(), "no queue, no source");

        let c = serve(&[&ec2[..], &["--disable-disruption"]].concat())
            .unwrap()
            .controllers
            .unwrap();
        assert!(c.disruption.is_none());

        let url = "https://sqs.eu-west-1.amazonaws.com/123456789012/gantry";
        let c = serve(
            &[
                &ec2[..],
                &[
                    "--region",
                    "eu-west-1",
                    "--interruption-queue",
                    url,
                    "--sqs-endpoint",
                    "http://127.0.0.1:5000",
                ],
            ]
            .concat(),
        )
        .unwrap()
        .controllers
        .unwrap();
        let sqs = c.interruption.unwrap();
        assert_eq!(sqs.queue, QueueRef::Url(url.into()));
        assert_eq!(sqs.region, "eu-west-1");
        assert_eq!(sqs.endpoint.as_deref(), Some("http://127.0.0.1:5000"));

        let by_name = serve(&[&ec2[..], &["--interruption-queue", "Karpenter-c"]].concat())
            .unwrap()
            .controllers
            .unwrap()
            .interruption
            .unwrap();
        assert_eq!(by_name.queue, QueueRef::Name("Karpenter-c".into()));

        for (args, flag) in [
            (
                [&ec2[..], &["--interruption-queue", "not a queue"]].concat(),
                "interruption-queue",
            ),
            (
                [
                    &ec2[..],
                    &["--interruption-queue", "q", "--disable-disruption"],
                ]
                .concat(),
                "interruption-queue",
            ),
            (vec!["--interruption-queue", "q"], "interruption-queue"),
            (
                [&ec2[..], &["--sqs-endpoint", "http://x"]].concat(),
                "sqs-endpoint",
            ),
        ] {
            let err = serve(&args).unwrap_err().to_string();
            assert!(err.starts_with(&format!("--{flag}:")), "{args:?}: {err}");
        }
    }
}
