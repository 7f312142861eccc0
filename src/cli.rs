//! Command-line interface. Every flag also reads a `GANTRY_*` environment variable; the parsed
//! flags are validated once into the `Config` of each command, which tests build directly.

use clap::{Parser, Subcommand};

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
    /// Print the CRD manifests (NodePool, EC2NodeClass, NodeClaim).
    Crds(CrdsArgs),
    /// List the instance types the cloud sells, with zones and prices.
    Catalog(crate::cloud::command::CatalogArgs),
}

/// `gantry crds`.
#[derive(Debug, clap::Args)]
pub struct CrdsArgs {
    /// Write to this file instead of stdout.
    #[arg(long, short, env = "GANTRY_CRDS_OUT")]
    pub out: Option<std::path::PathBuf>,
}
