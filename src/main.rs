use anyhow::{Context, Result};
use clap::Parser;
use gantry::cli::{Cli, Command, LogFormat};
use tracing_subscriber::EnvFilter;

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_env("GANTRY_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// jemalloc: Gantry's heap is millions of small objects replaced copy-on-write, which glibc's
/// malloc leaves fragmented (BENCHMARKS.md, demo RSS); `MALLOC_CONF` sets how soon it purges.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// A C string pointer jemalloc reads at start-up; `_RJEM_MALLOC_CONF` still overrides it.
#[cfg(not(target_env = "msvc"))]
#[repr(transparent)]
struct MallocConf(*const std::ffi::c_char);

// SAFETY: the pointer is to a `'static` C string literal that nothing writes.
#[cfg(not(target_env = "msvc"))]
unsafe impl Sync for MallocConf {}

/// Purge freed pages after 100 ms, from a background thread, rather than after jemalloc's
/// default 10 s: RSS then follows the live heap (a purge on every free doubles the demo's time).
#[cfg(not(target_env = "msvc"))]
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: MallocConf =
    MallocConf(c"background_thread:true,dirty_decay_ms:100,muzzy_decay_ms:0".as_ptr());

fn main() -> Result<()> {
    // Two providers can end up linked in; pick one before any TLS config is built.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    match cli.command {
        Command::Serve(args) => {
            let config = (*args).into_config()?;
            let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            rt.block_on(gantry::server::run(config, None))?;
            Ok(())
        }
        Command::Certs(args) => {
            let dns = if args.dns.is_empty() {
                gantry::certs::DEFAULT_DNS
                    .iter()
                    .map(ToString::to_string)
                    .collect()
            } else {
                args.dns
            };
            let ips = if args.ip.is_empty() {
                vec![std::net::IpAddr::from([127, 0, 0, 1])]
            } else {
                args.ip
            };
            let set = gantry::certs::generate(&dns, &ips)?;
            gantry::certs::write(&set, &args.out)?;
            eprintln!(
                "wrote ca.crt, ca.key, server.crt, server.key, client.crt, client.key to {}",
                args.out.display()
            );
            Ok(())
        }
        Command::Crds(args) => gantry::kube::write_crds(args.out.as_deref()),
        Command::Plan(args) => Ok(gantry::plan::command::run(args)?),
        Command::Catalog(args) => gantry::cloud::command::run(args),
        Command::Demo(args) => {
            let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            let report = rt.block_on(gantry::sim::demo::run(&args))?;
            print!("{}", gantry::sim::demo::render(&report));
            let violations = report.scale_down.as_ref().map_or(0, |d| d.pdb_violations);
            if report.leaked_instances > 0 || report.pods_bound_to_gated_nodes > 0 || violations > 0
            {
                anyhow::bail!("the demo broke an invariant (leaks, gated binds or PDB violations)");
            }
            Ok(())
        }
    }
}
