use anyhow::Result;
use clap::Parser;
use gantry::cli::{Cli, Command};

fn main() -> Result<()> {
    // Two providers can end up linked in; pick one before any TLS config is built.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = Cli::parse();
    match cli.command {
        Command::Crds(args) => gantry::kube::write_crds(args.out.as_deref()),
        Command::Catalog(args) => gantry::cloud::command::run(args),
    }
}
