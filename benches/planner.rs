//! Planner benchmarks: Karpenter's 400-synthetic-type shape, and three mixes on the real catalog.
//!
//! Run: `cargo bench --bench planner`. Before measuring, each case prints one summary line
//! (pods, nodes, pods/s of one run, cost ÷ lower bound) so the figures in docs/planner.md can be
//! read off directly.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Instant;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use gantry::model::catalog::{Arch, Catalog, InstanceType};
use gantry::model::pod::{TopologyKey, TopologySpread};
use gantry::model::requirements::{PodSelector, Requirement, Requirements};
use gantry::model::resources::names;
use gantry::model::taints::{Effect, Taint, Toleration};
use gantry::model::{CapacityType, NodePoolView, PodDemand, Resources};
use gantry::plan::lower_bound::{PatternBudget, plan_bounds, plan_bounds_with};
use gantry::plan::{PlanInput, plan};

const MI: i64 = 1 << 20;

/// A fixed-seed generator, so every run plans the same pods.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[(self.next() % xs.len() as u64) as usize]
    }
}

/// Karpenter's benchmark catalog: type i has i+1 vCPU, 2(i+1) GiB, 10(i+1) pods and costs 0.1 per
/// vCPU-hour plus 0.1 per GiB-hour; spot in zones 1–2, on-demand in zones 1–3.
fn synthetic_catalog() -> Catalog {
    let zones = ["test-zone-1", "test-zone-2", "test-zone-3"];
    let types = (0..400u32)
        .map(|i| {
            let n = i + 1;
            let price = 0.1 * f64::from(n) + 0.1 * 2.0 * f64::from(n);
            let mut t = InstanceType::with_default_offerings(
                &format!("fake-it-{i}"),
                n,
                u64::from(2 * n) * 1024,
                0,
                Arch::Amd64,
                10 * n,
                price,
                &zones,
            );
            t.offerings
                .retain(|o| o.capacity_type == CapacityType::OnDemand || o.zone != "test-zone-3");
            for o in &mut t.offerings {
                o.price = price;
            }
            t
        })
        .collect();
    let mut c = Catalog {
        types,
        region: "test".to_string(),
    };
    c.types.sort_by(|a, b| a.name.cmp(&b.name));
    c
}

fn selector(kind: &str) -> PodSelector {
    PodSelector {
        requirements: Requirements(vec![Requirement::is_in("bench", &[kind])]),
        namespaces: Vec::new(),
        present: true,
    }
}

/// Equal fifths: generic, zonal spread, hostname spread, zonal self-affinity, hostname
/// self anti-affinity; CPU and memory drawn from Karpenter's lists with a fixed seed.
fn karpenter_pods(n: usize) -> Vec<PodDemand> {
    let mut rng = Lcg(42);
    let cpus = [100, 250, 500, 1000, 1500];
    let mems = [100, 256, 512, 1024, 2048, 4096];
    (0..n)
        .map(|i| {
            let kind = [
                "generic",
                "zone-spread",
                "host-spread",
                "zone-affinity",
                "anti",
            ][i % 5];
            let req = Resources::cpu_mem(rng.pick(&cpus), rng.pick(&mems) * MI);
            let mut p = PodDemand::simple("default", &format!("{kind}-{i}"), req);
            p.labels = BTreeMap::from([("bench".to_string(), kind.to_string())]);
            let spread = |key| TopologySpread {
                key,
                max_skew: 1,
                hard: true,
                selector: selector(kind),
            };
            match i % 5 {
                1 => p.topology_spread.push(spread(TopologyKey::Zone)),
                2 => p.topology_spread.push(spread(TopologyKey::Hostname)),
                3 => p.affinity_zone.push(selector(kind)),
                4 => p.anti_affinity_hostname.push(selector(kind)),
                _ => {}
            }
            p
        })
        .collect()
}

/// Two DaemonSet pods on every node (150m, 200 MiB between them); each takes a pod slot, as the
/// planner's own DaemonSet accounting does.
fn daemonsets() -> Resources {
    Resources {
        pods: 2,
        ..Resources::cpu_mem(150, 200 * MI)
    }
}

fn spot_pools() -> Vec<NodePoolView> {
    let spot = NodePoolView {
        name: "spot".into(),
        weight: 50,
        requirements: Requirements(vec![Requirement::is_in(
            "karpenter.sh/capacity-type",
            &["spot"],
        )]),
        taints: vec![Taint::new("spot", "true", Effect::NoSchedule)],
        daemon_overhead: daemonsets(),
        ..NodePoolView::default_pool()
    };
    let od = NodePoolView {
        name: "on-demand".into(),
        weight: 10,
        requirements: Requirements(vec![Requirement::is_in(
            "karpenter.sh/capacity-type",
            &["on-demand"],
        )]),
        daemon_overhead: daemonsets(),
        ..NodePoolView::default_pool()
    };
    vec![spot, od]
}

/// Many small pods in 40 deployments; 40% tolerate the spot pool's taint.
fn microservices() -> Vec<PodDemand> {
    let mut rng = Lcg(7);
    let mut pods = Vec::new();
    for d in 0..40 {
        let req = Resources::cpu_mem(
            rng.pick(&[50, 100, 250, 500, 750]),
            rng.pick(&[64, 128, 256, 512, 1024, 1536]) * MI,
        );
        let replicas = rng.pick(&[10, 25, 50, 100]);
        let spot_ok = d % 5 < 2;
        for r in 0..replicas {
            let mut p = PodDemand::simple("svc", &format!("svc{d}-{r}"), req.clone());
            p.labels = BTreeMap::from([("app".to_string(), format!("svc{d}"))]);
            if spot_ok {
                p.tolerations.push(Toleration::exists("spot"));
            }
            pods.push(p);
        }
    }
    pods
}

/// Large pods of a few shapes.
fn batch() -> Vec<PodDemand> {
    let shapes = [
        (4000, 16 * 1024),
        (8000, 30 * 1024),
        (16000, 60 * 1024),
        (2000, 4 * 1024),
    ];
    let mut pods = Vec::new();
    for (s, (cpu, mem)) in shapes.iter().enumerate() {
        for r in 0..150 {
            pods.push(PodDemand::simple(
                "batch",
                &format!("job{s}-{r}"),
                Resources::cpu_mem(*cpu, mem * MI),
            ));
        }
    }
    pods
}

/// Small services plus GPU training and inference pods.
fn mixed() -> Vec<PodDemand> {
    let mut pods = microservices();
    pods.truncate(1200);
    for r in 0..64 {
        let mut req = Resources::cpu_mem(4000, 16 * 1024 * MI);
        req.set_extended(names::NVIDIA_GPU, 1);
        pods.push(PodDemand::simple("ml", &format!("infer-{r}"), req));
    }
    for r in 0..16 {
        let mut req = Resources::cpu_mem(32000, 180 * 1024 * MI);
        req.set_extended(names::NVIDIA_GPU, 4);
        pods.push(PodDemand::simple("ml", &format!("train-{r}"), req));
    }
    for r in 0..200 {
        pods.push(PodDemand::simple(
            "batch",
            &format!("etl-{r}"),
            Resources::cpu_mem(2000, 8 * 1024 * MI),
        ));
    }
    pods
}

/// `cargo bench` passes `--bench`; `cargo test --all-targets` does not and gets a short smoke run.
fn full_run() -> bool {
    std::env::args().any(|a| a == "--bench")
}

fn summary(label: &str, input: &PlanInput<'_>) {
    // `PLANNER_BENCH_SUMMARY=batch` prints only the cases whose label contains it.
    if let Some(only) = std::env::var_os("PLANNER_BENCH_SUMMARY")
        && !label.contains(only.to_string_lossy().as_ref())
    {
        return;
    }
    let start = Instant::now();
    let p = plan(input);
    let secs = start.elapsed().as_secs_f64();
    if !full_run() {
        // `cargo test --benches` smoke run: the pattern bound's search is far too slow unoptimized.
        println!("{label}: {} claims (smoke run, no bounds)", p.claims.len());
        return;
    }
    let t = Instant::now();
    let bounds = plan_bounds(input, &p);
    let bound_secs = t.elapsed().as_secs_f64();
    let bound = bounds.best();
    if let Some(spec) = std::env::var_os("PLANNER_BENCH_DEEP") {
        // Offline convergence check: `rounds,search,final_search,columns` (e.g. 2000,20000,200000,200).
        let spec = spec.to_string_lossy().to_string();
        let v: Vec<u64> = spec.split(',').filter_map(|x| x.parse().ok()).collect();
        if v.len() == 4
            && (label.contains("microservices")
                || std::env::var_os("PLANNER_BENCH_DEEP_ALL").is_some())
        {
            let budget = PatternBudget {
                rounds: v[0] as usize,
                search: v[1] as u32,
                final_search: v[2] as u32,
                columns_per_round: v[3] as usize,
            };
            let t = Instant::now();
            let deep = plan_bounds_with(input, &p, &budget);
            println!(
                "{label}: deep pattern LP ${:.4}/h ({:.1} s)",
                deep.pattern,
                t.elapsed().as_secs_f64()
            );
        }
    }
    let placed: usize = p.claims.iter().map(|c| c.pods.len()).sum();
    if std::env::var_os("PLANNER_BENCH_DUMP").is_some() {
        use gantry::plan::binpack::{Order, Packer, Strategy};
        let combos = [
            Strategy::PerPod,
            Strategy::Fractional,
            Strategy::Proportional,
        ]
        .into_iter()
        .flat_map(|s| {
            [Order::Dominant, Order::Cpu, Order::Memory, Order::Sum].map(move |o| (s, o))
        });
        for (st, ord) in combos {
            let q = Packer::new(input).run_ordered(st, ord);
            println!(
                "  {st:?}/{ord:?}: cost={:.3} nodes={}",
                q.cost_per_hour(),
                q.claims.len()
            );
            let mut by: BTreeMap<String, (usize, usize, f64)> = BTreeMap::new();
            for c in &q.claims {
                let e = by.entry(c.options[0].instance_type.clone()).or_default();
                e.0 += 1;
                e.1 += c.pods.len();
                e.2 += c.price;
            }
            for (t, (n, pods, cost)) in by {
                println!("    {t}: {n} nodes {pods} pods ${cost:.3}");
            }
        }
        // (nodes, pods, $/h, cpu requested, memory requested) by (pool, type).
        type Tally = (usize, usize, f64, i64, i64);
        let mut by_type: BTreeMap<(String, String), Tally> = BTreeMap::new();
        for c in &p.claims {
            let e = by_type
                .entry((c.pool.clone(), c.options[0].instance_type.clone()))
                .or_default();
            e.0 += 1;
            e.1 += c.pods.len();
            e.2 += c.price;
            e.3 += c.requests.cpu;
            e.4 += c.requests.memory;
        }
        for ((pool, t), (n, pods, cost, cpu, mem)) in by_type {
            let it = input.catalog.get(&t);
            let (ac, am, ap) = it.map_or((0, 0, 0), |t| {
                let a = t.allocatable(None);
                (a.cpu, a.memory, a.pods)
            });
            let n64 = n as i64;
            println!(
                "  {pool} {t}: {n} nodes, {pods} pods, ${cost:.3}/h, cpu {:.0}% mem {:.0}% pods {:.0}%",
                100.0 * cpu as f64 / (ac * n64).max(1) as f64,
                100.0 * mem as f64 / (am * n64).max(1) as f64,
                100.0 * pods as f64 / (ap * n64).max(1) as f64
            );
        }
    }
    println!(
        "{label}: pods={} placed={} unschedulable={} nodes={} pods/s={:.0} cost=${:.3}/h bound=${:.3}/h (resource LP ${:.3}, pattern LP ${:.3}; {:.2} s) ratio={:.3}",
        input.pods.len(),
        placed,
        p.unschedulable.len(),
        p.claims.len(),
        input.pods.len() as f64 / secs,
        p.cost_per_hour(),
        bound,
        bounds.resource,
        bounds.pattern,
        bound_secs,
        p.cost_per_hour() / bound
    );
}

fn karpenter_shape(c: &mut Criterion) {
    let catalog = synthetic_catalog();
    let pools = vec![NodePoolView::default_pool()];
    let mut group = c.benchmark_group("karpenter_shape");
    group.sample_size(10);
    let sizes: &[usize] = if full_run() {
        &[100, 1_000, 5_000, 20_000]
    } else {
        &[100]
    };
    for &n in sizes {
        let pods = karpenter_pods(n);
        let input = PlanInput {
            pods: &pods,
            pools: &pools,
            catalog: &catalog,
            nodes: &[],
            in_flight: &[],
            now: jiff::Timestamp::UNIX_EPOCH,
        };
        summary(&format!("karpenter_shape/{n}"), &input);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &input, |b, input| {
            b.iter(|| black_box(plan(black_box(input))))
        });
    }
    group.finish();
}

fn real_catalog(c: &mut Criterion) {
    let catalog = match Catalog::embedded() {
        Ok(c) => c,
        Err(e) => panic!("embedded catalog: {e}"),
    };
    let default_pool = vec![NodePoolView::default_pool()];
    let spot = spot_pools();
    let mut group = c.benchmark_group("real_catalog");
    group.sample_size(10);
    let mixes: [(&str, Vec<PodDemand>, &[NodePoolView]); 3] = [
        ("microservices", microservices(), &spot),
        ("batch", batch(), &default_pool),
        ("mixed_gpu", mixed(), &default_pool),
    ];
    for (name, pods, pools) in &mixes {
        let input = PlanInput {
            pods,
            pools,
            catalog: &catalog,
            nodes: &[],
            in_flight: &[],
            now: jiff::Timestamp::UNIX_EPOCH,
        };
        summary(&format!("real_catalog/{name}"), &input);
        group.throughput(Throughput::Elements(pods.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(name), &input, |b, input| {
            b.iter(|| black_box(plan(black_box(input))))
        });
    }
    group.finish();
}

criterion_group!(benches, karpenter_shape, real_catalog);
criterion_main!(benches);
