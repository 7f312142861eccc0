//! `gantry catalog`: lists what the cloud sells, so operators can check types, zones and prices
//! (and that credentials and the endpoint work) before a NodePool depends on them.

use std::io::Write as _;
use std::sync::Arc;

use serde::Serialize;

use super::CloudProvider;
use super::ec2::{Ec2Config, Ec2Provider};
use super::sim::{SimCloud, SimConfig};
use crate::model::{CapacityType, Catalog};

/// Which cloud to ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CloudKind {
    /// The embedded us-east-1 catalog (no AWS account needed).
    Sim,
    /// EC2 through the SDK's default credential chain.
    Ec2,
}

/// How to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns for people.
    Table,
    /// A JSON array for scripts.
    Json,
}

/// Where EC2 is: shared by every command that talks to it.
#[derive(Debug, Clone, clap::Args)]
pub struct Ec2EndpointArgs {
    /// EC2 endpoint URL (moto, or a VPC endpoint); the SDK's default when unset.
    #[arg(long, env = "GANTRY_EC2_ENDPOINT")]
    pub ec2_endpoint: Option<String>,
    /// AWS region.
    #[arg(long, env = "GANTRY_REGION", default_value = "us-east-1")]
    pub region: String,
}

/// Everything the EC2 provider needs to launch nodes; `serve` flattens this into its flags.
#[derive(Debug, Clone, clap::Args)]
pub struct Ec2Args {
    /// Endpoint and region.
    #[command(flatten)]
    pub endpoint: Ec2EndpointArgs,
    /// EKS cluster name (ownership tag `kubernetes.io/cluster/<name>` and NodeConfig).
    #[arg(long, env = "GANTRY_CLUSTER_NAME")]
    pub cluster_name: String,
    /// API server URL nodes join.
    #[arg(long, env = "GANTRY_CLUSTER_ENDPOINT")]
    pub cluster_endpoint: String,
    /// Cluster CA bundle, base64 PEM as `aws eks describe-cluster` prints it.
    #[arg(long, env = "GANTRY_CLUSTER_CA")]
    pub cluster_ca: String,
    /// Service CIDR, for nodeadm.
    #[arg(long, env = "GANTRY_CLUSTER_CIDR")]
    pub cluster_cidr: Option<String>,
    /// Timeout of one EC2 call including retries, in seconds.
    #[arg(long, env = "GANTRY_EC2_TIMEOUT_SECONDS", default_value_t = 60)]
    pub ec2_timeout_seconds: u64,
    /// Use the SDK's adaptive retry (client-side rate limiting) instead of standard retry.
    #[arg(long, env = "GANTRY_EC2_ADAPTIVE_RETRY")]
    pub ec2_adaptive_retry: bool,
}

impl Ec2Args {
    /// The provider configuration these flags describe.
    pub fn config(&self) -> Ec2Config {
        let mut c = Ec2Config::new(&self.endpoint.region, &self.cluster_name);
        c.endpoint = self.endpoint.ec2_endpoint.clone();
        c.cluster_endpoint = self.cluster_endpoint.clone();
        c.cluster_ca = self.cluster_ca.clone();
        c.cluster_cidr = self.cluster_cidr.clone();
        c.call_timeout = std::time::Duration::from_secs(self.ec2_timeout_seconds.max(1));
        c.attempt_timeout = c.attempt_timeout.min(c.call_timeout);
        c.adaptive_retry = self.ec2_adaptive_retry;
        c
    }
}

/// `gantry catalog`.
#[derive(Debug, Clone, clap::Args)]
pub struct CatalogArgs {
    /// Which cloud's catalog to list.
    #[arg(long, env = "GANTRY_CLOUD", value_enum, default_value_t = CloudKind::Sim)]
    pub cloud: CloudKind,
    /// Endpoint and region (EC2 only).
    #[command(flatten)]
    pub endpoint: Ec2EndpointArgs,
    /// Output format.
    #[arg(long, env = "GANTRY_OUTPUT", value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// One line of the catalog listing; the JSON schema of `--output json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CatalogRow {
    /// Instance type.
    pub name: String,
    /// vCPUs.
    pub vcpu: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Max pods (VPC CNI formula).
    pub max_pods: u32,
    /// `amd64` or `arm64`.
    pub arch: String,
    /// GPUs.
    pub gpus: u32,
    /// Zones where it is offered, sorted.
    pub zones: Vec<String>,
    /// USD per hour.
    pub on_demand_price: f64,
    /// Cheapest spot price over zones, USD per hour; `null` when not sold as spot.
    pub spot_price: Option<f64>,
}

/// The listing rows of a catalog, by type name.
pub fn rows(catalog: &Catalog) -> Vec<CatalogRow> {
    catalog
        .types
        .iter()
        .map(|t| {
            let mut zones: Vec<String> = t.offerings.iter().map(|o| o.zone.clone()).collect();
            zones.sort();
            zones.dedup();
            CatalogRow {
                name: t.name.clone(),
                vcpu: t.vcpu,
                memory_mib: t.memory_mib,
                max_pods: t.max_pods,
                arch: t.arch.as_str().to_string(),
                gpus: t.gpus,
                zones,
                on_demand_price: t.on_demand_price,
                spot_price: t
                    .offerings
                    .iter()
                    .filter(|o| o.capacity_type == CapacityType::Spot)
                    .map(|o| o.price)
                    .min_by(f64::total_cmp),
            }
        })
        .collect()
}

/// Renders the listing.
///
/// # Errors
/// Only if JSON serialization fails.
pub fn render(catalog: &Catalog, output: OutputFormat) -> Result<String, serde_json::Error> {
    let rows = rows(catalog);
    match output {
        OutputFormat::Json => serde_json::to_string_pretty(&rows).map(|s| s + "\n"),
        OutputFormat::Table => {
            let mut out = format!(
                "{:<20} {:>5} {:>10} {:>8} {:<5} {:>4} {:>10} {:>10}  {}\n",
                "NAME",
                "VCPU",
                "MEMORY_MIB",
                "MAX_PODS",
                "ARCH",
                "GPUS",
                "ON_DEMAND",
                "SPOT",
                "ZONES"
            );
            for r in rows {
                let spot = r
                    .spot_price
                    .map_or_else(|| "-".to_string(), |p| format!("{p:.4}"));
                out.push_str(&format!(
                    "{:<20} {:>5} {:>10} {:>8} {:<5} {:>4} {:>10.4} {:>10}  {}\n",
                    r.name,
                    r.vcpu,
                    r.memory_mib,
                    r.max_pods,
                    r.arch,
                    r.gpus,
                    r.on_demand_price,
                    spot,
                    r.zones.join(",")
                ));
            }
            Ok(out)
        }
    }
}

/// Fetches the catalog from the chosen cloud.
///
/// # Errors
/// Cloud or configuration failures.
pub async fn fetch(args: &CatalogArgs) -> anyhow::Result<Arc<Catalog>> {
    Ok(match args.cloud {
        CloudKind::Sim => SimCloud::embedded(SimConfig::default())?.catalog().await?,
        CloudKind::Ec2 => {
            let mut config = Ec2Config::new(&args.endpoint.region, "");
            config.endpoint = args.endpoint.ec2_endpoint.clone();
            Ec2Provider::connect(config).await.catalog().await?
        }
    })
}

/// Runs `gantry catalog`.
///
/// # Errors
/// Cloud, configuration or output failures.
pub fn run(args: CatalogArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let catalog = rt.block_on(fetch(&args))?;
    let text = render(&catalog, args.output)?;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        // `gantry catalog | head` closes the pipe early; that is not a failure.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_rows_have_the_documented_fields() {
        let c = Catalog::embedded().unwrap();
        let json: serde_json::Value =
            serde_json::from_str(&render(&c, OutputFormat::Json).unwrap()).unwrap();
        let rows = json.as_array().unwrap();
        assert_eq!(rows.len(), c.types.len());
        let m5 = rows.iter().find(|r| r["name"] == "m5.large").unwrap();
        let mut keys: Vec<_> = m5.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(
            keys,
            vec![
                "arch",
                "gpus",
                "max_pods",
                "memory_mib",
                "name",
                "on_demand_price",
                "spot_price",
                "vcpu",
                "zones"
            ]
        );
        assert_eq!(m5["vcpu"], 2);
        assert_eq!(m5["zones"].as_array().unwrap().len(), 6);
        assert!(m5["spot_price"].as_f64().unwrap() < 0.096);
        let table = render(&c, OutputFormat::Table).unwrap();
        assert!(table.starts_with("NAME"));
        assert!(table.lines().any(|l| l.starts_with("m5.large ")));
    }

    #[test]
    fn flags_parse_with_env_names() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            args: CatalogArgs,
        }
        let cli = Cli::parse_from([
            "gantry",
            "--cloud",
            "ec2",
            "--ec2-endpoint",
            "http://127.0.0.1:5000",
            "--output",
            "json",
        ]);
        assert_eq!(cli.args.cloud, CloudKind::Ec2);
        assert_eq!(cli.args.endpoint.region, "us-east-1");
        assert_eq!(
            cli.args.endpoint.ec2_endpoint.as_deref(),
            Some("http://127.0.0.1:5000")
        );
        assert_eq!(cli.args.output, OutputFormat::Json);

        #[derive(Parser)]
        struct Serve {
            #[command(flatten)]
            ec2: Ec2Args,
        }
        let s = Serve::parse_from([
            "gantry",
            "--cluster-name",
            "prod",
            "--cluster-endpoint",
            "https://x",
            "--cluster-ca",
            "Q0E=",
            "--region",
            "eu-west-1",
            "--ec2-timeout-seconds",
            "5",
        ]);
        let c = s.ec2.config();
        assert_eq!(
            (c.region.as_str(), c.cluster_name.as_str()),
            ("eu-west-1", "prod")
        );
        assert_eq!(c.call_timeout, std::time::Duration::from_secs(5));
        assert!(c.attempt_timeout <= c.call_timeout);
        assert!(Serve::try_parse_from(["gantry", "--cluster-name", "prod"]).is_err());
    }
}
