//! HTTPS load generator: drives the real extender server over loopback.
//!
//! Starts `serve_tls` in-process on 127.0.0.1:0 with freshly generated certificates and a
//! synthetic 5,000-node cache, then runs N keep-alive connections (default 16) for a fixed time
//! (default 30 s), alternating filter and prioritize calls with 500 candidate names each, and
//! prints requests/s, latency percentiles and errors. The request loop is bounded in time and stops
//! by itself.
//!
//! Two modes:
//! - closed loop (default): each connection sends its next request as soon as the previous reply
//!   arrives, which measures the saturation throughput; latency then is mostly queueing
//!   (Little's law: 16 busy connections at R requests/s wait 16/R s on average);
//! - open loop (`--rate R`): the connections together send R requests/s on a fixed schedule, and
//!   each latency is measured from the request's *scheduled* send time, so a stall is charged to
//!   every request it delays (no coordinated omission, as in wrk2). This is how kube-scheduler's
//!   load arrives: pods come at a rate, not when the extender is free. tokio's timer wakes up to
//!   1 ms late, so it also prints the latency from the actual send and how late sends were.
//!
//! ```sh
//! cargo run --release --example loadgen -- [--connections 16] [--seconds 30] [--names 500] [--h2] [--rate 5000]
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)] // a load tool: a panic is a failed run

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use gantry::extender::client::{Alpn, ExtenderClient, tls_config};
use gantry::extender::fixtures::{filter_request, synthetic_cluster};
use gantry::extender::routes::RequestLimits;
use gantry::server::tls::{TlsFiles, TlsReloader};
use gantry::server::{AppState, https_router};
use tokio_util::sync::CancellationToken;

struct Args {
    connections: usize,
    seconds: u64,
    names: usize,
    h2: bool,
    /// Requests per second over all connections; 0 = closed loop.
    rate: u64,
}

fn args() -> Args {
    let mut a = Args {
        connections: 16,
        seconds: 30,
        names: 500,
        h2: false,
        rate: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut num = || {
            it.next()
                .and_then(|v| v.parse::<u64>().ok())
                .expect("number")
        };
        match flag.as_str() {
            "--connections" => a.connections = num() as usize,
            "--seconds" => a.seconds = num().min(600),
            "--names" => a.names = num() as usize,
            "--h2" => a.h2 = true,
            "--rate" => a.rate = num(),
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let args = args();
    const NODES: usize = 5_000;

    let dir = tempfile::tempdir().unwrap();
    let set =
        gantry::certs::generate(&["localhost".into()], &["127.0.0.1".parse().unwrap()]).unwrap();
    gantry::certs::write(&set, dir.path()).unwrap();
    let app = AppState::new(Duration::from_secs(600));
    app.cluster.publish(synthetic_cluster(NODES, 7));
    let live = Arc::new(ArcSwapOption::empty());
    let files = TlsFiles {
        cert: dir.path().join("server.crt"),
        key: dir.path().join("server.key"),
        client_ca: None,
    };
    TlsReloader::new(files, live.clone(), app.metrics.clone()).poll_once();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let limits = RequestLimits {
        max_body_bytes: 64 << 20,
        timeout: Duration::from_secs(5),
    };
    let server = tokio::spawn(gantry::server::https::serve_tls(
        listener,
        https_router(&app, limits, false, None),
        live,
        stop.clone(),
        Duration::from_secs(5),
    ));

    let bodies: Arc<Vec<Bytes>> = Arc::new(
        (0..256)
            .map(|i| Bytes::from(filter_request(NODES, args.names, i)))
            .collect(),
    );
    let alpn = if args.h2 { Alpn::H2 } else { Alpn::Http1 };
    let cfg = Arc::new(tls_config(set.ca_cert.as_bytes(), None, alpn).unwrap());
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let started = Instant::now();
    // Open loop: connection w sends at started + offset_w + k × period.
    let period = (args.rate > 0)
        .then(|| Duration::from_secs_f64(args.connections as f64 / args.rate as f64));
    let mut workers = Vec::new();
    for w in 0..args.connections {
        let (cfg, bodies) = (cfg.clone(), bodies.clone());
        workers.push(tokio::spawn(async move {
            let mut client = ExtenderClient::connect(addr, "localhost", cfg, "/scheduler")
                .await
                .unwrap();
            let mut lat = Vec::with_capacity(200_000);
            // Open loop: latency from the actual send, and how late the send was.
            let mut sent = Vec::with_capacity(200_000);
            let mut lag = Vec::with_capacity(200_000);
            let mut errors = 0u64;
            let mut i = w;
            let mut k = 0u32;
            while Instant::now() < deadline {
                let body = bodies[i % bodies.len()].clone();
                let verb = if i % 2 == 0 { "filter" } else { "prioritize" };
                i += 1;
                let t = match period {
                    Some(p) => {
                        let offset = p.mul_f64(w as f64 / args.connections as f64);
                        let at = started + offset + p * k;
                        k += 1;
                        if at >= deadline {
                            break;
                        }
                        tokio::time::sleep_until(at.into()).await;
                        at
                    }
                    None => Instant::now(),
                };
                let send = Instant::now();
                lag.push((send - t).as_secs_f64() * 1e3);
                match client.post(verb, body).await {
                    Ok((s, b)) if s.is_success() && !b.is_empty() => {
                        if verb == "filter" && !b.starts_with(b"{\"Nodes\":null,\"NodeNames\":[") {
                            errors += 1;
                        }
                    }
                    _ => errors += 1,
                }
                lat.push(t.elapsed().as_secs_f64() * 1e3);
                sent.push(send.elapsed().as_secs_f64() * 1e3);
            }
            (lat, sent, lag, errors)
        }));
    }
    let mut all = Vec::new();
    let mut all_sent = Vec::new();
    let mut all_lag = Vec::new();
    let mut errors = 0;
    for w in workers {
        let (lat, sent, lag, e) = w.await.unwrap();
        all.extend(lat);
        all_sent.extend(sent);
        all_lag.extend(lag);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    stop.cancel();
    let _ = server.await;
    for v in [&mut all, &mut all_sent, &mut all_lag] {
        v.sort_by(f64::total_cmp);
    }
    let at = |q: f64| percentile(&all, q);
    println!(
        "connections={} protocol={} names/request={} duration={:.1}s mode={}",
        args.connections,
        if args.h2 { "h2" } else { "http/1.1" },
        args.names,
        elapsed,
        if args.rate > 0 {
            format!("open loop at {} rps", args.rate)
        } else {
            "closed loop".to_string()
        }
    );
    println!(
        "requests={} rps={:.0} p50={:.3}ms p99={:.3}ms max={:.3}ms errors={}",
        all.len(),
        all.len() as f64 / elapsed,
        at(0.5),
        at(0.99),
        at(1.0),
        errors
    );
    if args.rate > 0 {
        // tokio's timer wakes up to 1 ms late, so latency from the scheduled time carries up to
        // 1 ms of the generator's own slack; the send-to-reply latency and the lag show both.
        println!(
            "from actual send: p50={:.3}ms p99={:.3}ms max={:.3}ms; send lag behind schedule: p50={:.3}ms p99={:.3}ms max={:.3}ms",
            percentile(&all_sent, 0.5),
            percentile(&all_sent, 0.99),
            percentile(&all_sent, 1.0),
            percentile(&all_lag, 0.5),
            percentile(&all_lag, 0.99),
            percentile(&all_lag, 1.0)
        );
    }
}

/// The q-quantile of sorted samples (nearest rank below).
fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * q) as usize]
}
