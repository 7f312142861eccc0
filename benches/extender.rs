//! Extender decisions: filter + prioritize over 5,000 cached nodes with 500 names per request.
//!
//! Criterion reports the mean; the percentile table printed first times 20,000 individual
//! decisions, since the goal is a p99.
#![allow(clippy::unwrap_used, clippy::expect_used)] // benchmark harness: a panic is a failed run

use std::hint::black_box;
use std::time::Instant;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use gantry::extender::decide::PodFacts;
use gantry::extender::fixtures::{filter_request, synthetic_cluster};
use gantry::extender::routes::{decide_filter, decide_prioritize};
use gantry::extender::wire::parse_args;
use gantry::model::Resources;

const NODES: usize = 5_000;
const NAMES: usize = 500;

fn percentiles(label: &str, mut samples: Vec<f64>) {
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q) as usize];
    println!(
        "{label}: n={} p50={:.1}µs p99={:.1}µs max={:.1}µs",
        samples.len(),
        at(0.50),
        at(0.99),
        at(1.0)
    );
}

fn bench(c: &mut Criterion) {
    let snapshot = synthetic_cluster(NODES, 7);
    let bodies: Vec<Vec<u8>> = (0..64).map(|i| filter_request(NODES, NAMES, i)).collect();
    let parsed: Vec<_> = bodies.iter().map(|b| parse_args(b).unwrap()).collect();
    let pod = PodFacts {
        uid: "bench".into(),
        requests: Resources::cpu_mem(250, 256 << 20),
    };

    // Percentiles over individually timed decisions.
    let mut decide = Vec::with_capacity(20_000);
    let mut full = Vec::with_capacity(20_000);
    for i in 0..20_000 {
        let args = &parsed[i % parsed.len()];
        // The server owns the parsed names and moves them into the reply; copying them for
        // the next iteration is the harness's cost, outside the timed part.
        let (a, b) = (args.candidates.clone(), args.candidates.clone());
        let t = Instant::now();
        let (r, _) = decide_filter(&snapshot, &pod, a);
        let s = decide_prioritize(&snapshot, &pod, b);
        black_box((r, s));
        decide.push(t.elapsed().as_secs_f64() * 1e6);
        let body = &bodies[i % bodies.len()];
        let t = Instant::now();
        let a = parse_args(body).unwrap();
        let (r, _) = decide_filter(&snapshot, &pod, a.candidates);
        let out = serde_json::to_vec(&r).unwrap();
        black_box(out);
        full.push(t.elapsed().as_secs_f64() * 1e6);
    }
    percentiles("filter+prioritize decision (5000 nodes, 500 names)", decide);
    percentiles("filter parse+decide+serialize (500 names)", full);

    let mut g = c.benchmark_group("extender");
    g.bench_function("filter+prioritize/5000 nodes/500 names", |b| {
        let mut i = 0;
        b.iter_batched(
            || {
                let args = &parsed[i % parsed.len()];
                i += 1;
                (args.candidates.clone(), args.candidates.clone())
            },
            |(a, b)| {
                let r = decide_filter(&snapshot, &pod, a);
                let s = decide_prioritize(&snapshot, &pod, b);
                black_box((r, s))
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("filter parse+decide+serialize/500 names", |b| {
        let mut i = 0;
        b.iter(|| {
            let body = &bodies[i % bodies.len()];
            i += 1;
            let a = parse_args(body).unwrap();
            let (r, _) = decide_filter(&snapshot, &pod, a.candidates);
            black_box(serde_json::to_vec(&r).unwrap())
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
