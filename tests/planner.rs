//! Planner tests: one table test per constraint, proptest invariants, and the `gantry plan` CLI.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;

use gantry::model::catalog::{Arch, Catalog, InstanceType};
use gantry::model::labels::{ARCH, ZONE};
use gantry::model::pod::{HostPort, TopologyKey, TopologySpread};
use gantry::model::requirements::{PodSelector, Requirement, Requirements, Terms};
use gantry::model::resources::names;
use gantry::model::taints::{Effect, Taint, Toleration, TolerationOperator, first_untolerated};
use gantry::model::{CapacityType, NodePoolView, PodDemand, PoolLimits, Resources};
use gantry::plan::lower_bound::plan_lower_bound;
use gantry::plan::{ClaimView, NodeView, Plan, PlanInput, Target, plan};
use proptest::prelude::*;

const GI: i64 = 1 << 30;
const MI: i64 = 1 << 20;

fn catalog() -> &'static Catalog {
    static C: OnceLock<Catalog> = OnceLock::new();
    C.get_or_init(|| Catalog::embedded().unwrap())
}

fn run(pods: &[PodDemand], pools: &[NodePoolView]) -> Plan {
    run_with(pods, pools, &[], &[])
}

/// The planner's input for `pods` on an empty cluster with the embedded catalog.
fn empty_cluster<'a>(pods: &'a [PodDemand], pools: &'a [NodePoolView]) -> PlanInput<'a> {
    PlanInput {
        pods,
        pools,
        catalog: catalog(),
        nodes: &[],
        in_flight: &[],
        now: jiff::Timestamp::UNIX_EPOCH,
    }
}

fn run_with(
    pods: &[PodDemand],
    pools: &[NodePoolView],
    nodes: &[NodeView],
    in_flight: &[ClaimView],
) -> Plan {
    let input = PlanInput {
        nodes,
        in_flight,
        ..empty_cluster(pods, pools)
    };
    let p = plan(&input);
    check_invariants(&input, &p);
    p
}

fn default_pool() -> Vec<NodePoolView> {
    vec![NodePoolView::default_pool()]
}

fn pods(n: usize, prefix: &str, cpu: i64, mem: i64) -> Vec<PodDemand> {
    (0..n)
        .map(|i| {
            let mut p =
                PodDemand::simple("ns", &format!("{prefix}-{i}"), Resources::cpu_mem(cpu, mem));
            p.labels.insert("app".into(), prefix.into());
            p
        })
        .collect()
}

fn selects(app: &str) -> PodSelector {
    PodSelector {
        requirements: Requirements(vec![Requirement::is_in("app", &[app])]),
        namespaces: vec![],
        present: true,
    }
}

/// Labels of a prospective node of `pool` as type `t` in `zone` as `ct`.
fn node_labels(
    t: &InstanceType,
    pool: &NodePoolView,
    zone: &str,
    ct: CapacityType,
) -> BTreeMap<String, String> {
    let mut m: BTreeMap<String, String> = t
        .labels()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    m.extend(pool.labels.clone());
    m.insert(ZONE.into(), zone.into());
    m.insert("gantry.dev/capacity-type".into(), ct.as_str().into());
    m.insert("gantry.dev/nodepool".into(), pool.name.clone());
    m.insert("topology.kubernetes.io/region".into(), "us-east-1".into());
    m
}

/// The invariants every plan must keep, checked on every plan these tests make.
fn check_invariants(input: &PlanInput<'_>, p: &Plan) {
    // Each pod exactly once.
    let mut seen = vec![0u32; input.pods.len()];
    for c in &p.claims {
        for &i in &c.pods {
            seen[i] += 1;
        }
    }
    for pl in &p.placements {
        seen[pl.pod] += 1;
    }
    for u in &p.unschedulable {
        seen[u.pod] += 1;
        assert!(!u.reason.is_empty());
    }
    assert!(
        seen.iter().all(|n| *n == 1),
        "pods placed other than once: {seen:?}"
    );
    for c in &p.claims {
        let pool = input.pools.iter().find(|x| x.name == c.pool).unwrap();
        assert!(!c.options.is_empty() && c.options.len() <= 60);
        assert!(
            c.options.windows(2).all(|w| w[0].price <= w[1].price),
            "options not sorted by price"
        );
        assert!((c.price - c.options[0].price).abs() < 1e-12);
        let mut used = pool.daemon_overhead.clone();
        for &i in &c.pods {
            used.add(&input.pods[i].requests);
        }
        assert_eq!(used, c.requests);
        for o in &c.options {
            let t = input.catalog.get(&o.instance_type).unwrap();
            assert!(
                used.fits_in(&t.allocatable(pool.max_pods)),
                "{} cannot hold {used:?}",
                t.name
            );
            // Some allowed zone × capacity type satisfies the pool and every pod.
            let ok = t.offerings.iter().any(|off| {
                off.available
                    && c.zones.contains(&off.zone)
                    && c.capacity_types.contains(&off.capacity_type)
                    && {
                        let labels = node_labels(t, pool, &off.zone, off.capacity_type);
                        pool.requirements.matches_map(&labels)
                            && c.pods
                                .iter()
                                .all(|i| input.pods[*i].node_terms().matches_map(&labels))
                    }
            });
            assert!(ok, "{} violates requirements", t.name);
        }
        for &i in &c.pods {
            assert!(
                first_untolerated(&input.pods[i].tolerations, &pool.taints).is_none(),
                "taint not tolerated"
            );
        }
        // Hostname anti-affinity, hostname spread and host ports within the claim.
        for &i in &c.pods {
            let a = &input.pods[i];
            for &j in &c.pods {
                let b = &input.pods[j];
                if i != j {
                    assert!(
                        !a.anti_affinity_hostname.iter().any(|s| s.selects(
                            &a.namespace,
                            &b.namespace,
                            &b.labels
                        )),
                        "anti-affinity broken"
                    );
                    assert!(
                        !a.host_ports
                            .iter()
                            .any(|x| b.host_ports.iter().any(|y| x.conflicts(y))),
                        "host port conflict"
                    );
                }
            }
            for t in a
                .topology_spread
                .iter()
                .filter(|t| t.key == TopologyKey::Hostname && t.hard)
            {
                let n = c
                    .pods
                    .iter()
                    .filter(|j| {
                        let b = &input.pods[**j];
                        t.selector.selects(&a.namespace, &b.namespace, &b.labels)
                    })
                    .count();
                assert!(n as u32 <= t.max_skew, "hostname skew {n} > {}", t.max_skew);
            }
            if a.topology_spread.iter().any(|t| t.key == TopologyKey::Zone)
                || !a.affinity_zone.is_empty()
            {
                assert_eq!(c.zones.len(), 1, "zonal pod on a multi-zone claim");
            }
        }
    }
    // Zone skew of hard zone spreads, over the zones the pods could use.
    let mut by_zone: HashMap<(usize, String), u32> = HashMap::new();
    for c in &p.claims {
        for &i in &c.pods {
            if c.zones.len() == 1 {
                by_zone.entry((i, c.zones[0].clone())).or_default();
            }
        }
    }
    for (i, a) in input.pods.iter().enumerate() {
        for t in a
            .topology_spread
            .iter()
            .filter(|t| t.key == TopologyKey::Zone && t.hard)
        {
            let mut counts: BTreeMap<&str, u32> = gantry::model::catalog::US_EAST_1_ZONES
                .iter()
                .map(|z| (*z, 0))
                .collect();
            for c in &p.claims {
                if c.zones.len() == 1 {
                    let n = c
                        .pods
                        .iter()
                        .filter(|j| {
                            let b = &input.pods[**j];
                            t.selector.selects(&a.namespace, &b.namespace, &b.labels)
                        })
                        .count() as u32;
                    *counts.get_mut(c.zones[0].as_str()).unwrap() += n;
                }
            }
            let max = counts.values().max().copied().unwrap_or(0);
            let min = counts.values().min().copied().unwrap_or(0);
            assert!(max - min <= t.max_skew, "zone skew {counts:?} for pod {i}");
        }
    }
}

#[test]
fn requests_too_big_give_an_actionable_reason() {
    let p = run(&pods(1, "huge", 1_000_000, GI), &default_pool());
    assert_eq!(p.unschedulable.len(), 1);
    let r = &p.unschedulable[0].reason;
    assert!(
        r.starts_with("needs 1000 vCPU; the largest type NodePool default allows has 896"),
        "{r}"
    );
    let mut gpu = pods(1, "gpu", 1000, GI);
    gpu[0].requests.set_extended(names::NVIDIA_GPU, 64);
    let p = run(&gpu, &default_pool());
    assert!(
        p.unschedulable[0].reason.contains("64 nvidia.com/gpu"),
        "{:?}",
        p.unschedulable
    );
}

#[test]
fn small_pods_share_nodes_and_rightsize() {
    let p = run(&pods(40, "web", 250, 512 * MI), &default_pool());
    assert!(p.unschedulable.is_empty());
    assert!(p.claims.len() < 10, "{} claims", p.claims.len());
    assert_eq!(p.claims.iter().map(|c| c.pods.len()).sum::<usize>(), 40);
}

#[test]
fn node_selector_and_affinity_restrict_types_and_zones() {
    let mut ps = pods(3, "arm", 500, GI);
    ps[0].node_selector = Requirements(vec![Requirement::is_in(ARCH, &["arm64"])]);
    ps[1].node_affinity = Terms(vec![Requirements(vec![Requirement::is_in(
        ZONE,
        &["us-east-1b"],
    )])]);
    ps[2].node_affinity = Terms(vec![Requirements(vec![Requirement::is_in(
        "karpenter.sh/capacity-type",
        &["on-demand"],
    )])]);
    let p = run(&ps, &default_pool());
    for c in &p.claims {
        if c.pods.contains(&0) {
            for o in &c.options {
                assert_eq!(catalog().get(&o.instance_type).unwrap().arch, Arch::Arm64);
            }
        }
        if c.pods.contains(&1) {
            assert_eq!(c.zones, ["us-east-1b"]);
        }
        if c.pods.contains(&2) {
            assert_eq!(c.capacity_types, [CapacityType::OnDemand]);
            assert_eq!(c.capacity_type, CapacityType::OnDemand);
        }
    }
    let mut none = pods(1, "none", 500, GI);
    none[0].node_selector = Requirements(vec![Requirement::is_in(ARCH, &["s390x"])]);
    let p = run(&none, &default_pool());
    assert!(
        p.unschedulable[0].reason.contains("node selector"),
        "{:?}",
        p.unschedulable
    );
}

#[test]
fn taints_need_tolerations_and_weights_order_pools() {
    let gpu_pool = NodePoolView {
        name: "tainted".into(),
        weight: 100,
        taints: vec![Taint::new("dedicated", "ml", Effect::NoSchedule)],
        ..NodePoolView::default_pool()
    };
    let plain = NodePoolView {
        name: "plain".into(),
        weight: 1,
        ..NodePoolView::default_pool()
    };
    let mut ps = pods(2, "t", 500, GI);
    ps[1].tolerations.push(Toleration {
        key: "dedicated".into(),
        operator: TolerationOperator::Equal,
        value: "ml".into(),
        effect: Some(Effect::NoSchedule),
    });
    let p = run(&ps, &[gpu_pool.clone(), plain]);
    let pool_of = |i: usize| {
        p.claims
            .iter()
            .find(|c| c.pods.contains(&i))
            .unwrap()
            .pool
            .clone()
    };
    assert_eq!(pool_of(0), "plain");
    assert_eq!(pool_of(1), "tainted");
    let p = run(&ps[..1], &[gpu_pool]);
    assert!(
        p.unschedulable[0]
            .reason
            .contains("does not tolerate taint dedicated=ml:NoSchedule of NodePool tainted"),
        "{:?}",
        p.unschedulable
    );
}

#[test]
fn zone_spread_balances_and_pins_claims() {
    let mut ps = pods(13, "spread", 500, GI);
    for p in &mut ps {
        p.topology_spread.push(TopologySpread {
            key: TopologyKey::Zone,
            max_skew: 1,
            hard: true,
            selector: selects("spread"),
        });
    }
    let p = run(&ps, &default_pool());
    assert!(p.unschedulable.is_empty());
    let zones: std::collections::BTreeSet<_> =
        p.claims.iter().map(|c| c.zones[0].clone()).collect();
    assert_eq!(zones.len(), 6);
}

#[test]
fn hostname_spread_and_anti_affinity_limit_pods_per_node() {
    let mut spread = pods(6, "hs", 100, 128 * MI);
    for p in &mut spread {
        p.topology_spread.push(TopologySpread {
            key: TopologyKey::Hostname,
            max_skew: 2,
            hard: true,
            selector: selects("hs"),
        });
    }
    let p = run(&spread, &default_pool());
    assert_eq!(p.claims.len(), 3);
    let mut anti = pods(4, "db", 100, 128 * MI);
    for p in &mut anti {
        p.anti_affinity_hostname.push(selects("db"));
    }
    let p = run(&anti, &default_pool());
    assert_eq!(p.claims.len(), 4);
}

#[test]
fn zonal_affinity_keeps_pods_in_one_zone() {
    let mut ps = pods(20, "cache", 1000, 2 * GI);
    for p in &mut ps {
        p.affinity_zone.push(selects("cache"));
    }
    let p = run(&ps, &default_pool());
    let zones: std::collections::BTreeSet<_> = p.claims.iter().map(|c| c.zones.clone()).collect();
    assert_eq!(zones.len(), 1, "{zones:?}");
    // Affinity to pods that exist nowhere cannot be met.
    let mut orphan = pods(1, "orphan", 100, MI);
    orphan[0].affinity_zone.push(selects("nobody"));
    let p = run(&orphan, &default_pool());
    assert!(
        p.unschedulable[0].reason.contains("app In [nobody]"),
        "{:?}",
        p.unschedulable
    );
}

#[test]
fn host_ports_conflict() {
    let mut ps = pods(3, "port", 100, 128 * MI);
    for p in &mut ps {
        p.host_ports.push(HostPort {
            port: 9100,
            protocol: "TCP".into(),
            ip: String::new(),
        });
    }
    let p = run(&ps, &default_pool());
    assert_eq!(p.claims.len(), 3);
}

#[test]
fn preferred_affinity_breaks_ties() {
    let zones = ["z1"];
    let mk = |name: &str, arch| {
        InstanceType::with_default_offerings(name, 2, 4096, 0, arch, 20, 0.1, &zones)
    };
    let mut cat = Catalog {
        types: vec![mk("a.large", Arch::Amd64), mk("b.large", Arch::Arm64)],
        region: "r".into(),
    };
    for t in &mut cat.types {
        for o in &mut t.offerings {
            o.price = 0.1;
        }
    }
    let mut ps = pods(1, "pref", 500, GI);
    ps[0]
        .preferred_affinity
        .push((10, Requirements(vec![Requirement::is_in(ARCH, &["arm64"])])));
    let pools = default_pool();
    let input = PlanInput {
        pods: &ps,
        pools: &pools,
        catalog: &cat,
        nodes: &[],
        in_flight: &[],
        now: jiff::Timestamp::UNIX_EPOCH,
    };
    let p = plan(&input);
    // Both options tie on price; packing chose the preferred type, and right-sizing keeps price order.
    assert_eq!(p.claims.len(), 1);
    assert_eq!(p.claims[0].options.len(), 2);
}

#[test]
fn daemonset_overhead_and_limits_count() {
    let pool = NodePoolView {
        daemon_overhead: Resources::cpu_mem(1000, 2 * GI),
        limits: PoolLimits {
            nodes: Some(2),
            ..Default::default()
        },
        ..NodePoolView::default_pool()
    };
    let mut anti = pods(3, "db", 500, GI);
    for p in &mut anti {
        p.anti_affinity_hostname.push(selects("db"));
    }
    let p = run(&anti, std::slice::from_ref(&pool));
    assert_eq!(p.claims.len(), 2);
    assert_eq!(p.unschedulable.len(), 1);
    assert!(
        p.unschedulable[0].reason.contains("limit of 2 nodes"),
        "{:?}",
        p.unschedulable
    );
    for c in &p.claims {
        assert_eq!(c.requests.cpu, 1500);
    }
    // Existing nodes of the pool count against its limit.
    let node = NodeView {
        name: "n1".into(),
        pool: Some("default".into()),
        allocatable: Resources::cpu_mem(100, GI),
        ..Default::default()
    };
    let p = run_with(&anti[..2], std::slice::from_ref(&pool), &[node], &[]);
    assert_eq!(p.claims.len(), 1);
    let cpu_pool = NodePoolView {
        limits: PoolLimits {
            cpu: Some(3000),
            ..Default::default()
        },
        ..NodePoolView::default_pool()
    };
    let p = run(&pods(1, "big", 4000, GI), &[cpu_pool]);
    assert!(
        p.unschedulable[0].reason.contains("limit cpu 3"),
        "{:?}",
        p.unschedulable
    );
}

#[test]
fn existing_nodes_and_in_flight_claims_are_used_first() {
    let node = NodeView {
        name: "n1".into(),
        labels: BTreeMap::from([(ZONE.to_string(), "us-east-1a".to_string())]),
        allocatable: Resources {
            cpu: 2000,
            memory: 4 * GI,
            pods: 10,
            ..Default::default()
        },
        requested: Resources {
            cpu: 1000,
            memory: GI,
            pods: 1,
            ..Default::default()
        },
        ..Default::default()
    };
    let claim = ClaimView {
        name: "c1".into(),
        pool: "default".into(),
        options: vec!["m5.large".into()],
        zones: vec!["us-east-1b".into()],
        capacity_types: vec![CapacityType::Spot],
        remaining: Resources {
            cpu: 1000,
            memory: 2 * GI,
            pods: 10,
            ..Default::default()
        },
        pods: vec![],
    };
    let p = run_with(
        &pods(5, "w", 500, 512 * MI),
        &default_pool(),
        &[node],
        &[claim],
    );
    let on_node = p
        .placements
        .iter()
        .filter(|x| x.target == Target::Node("n1".into()))
        .count();
    let on_claim = p
        .placements
        .iter()
        .filter(|x| x.target == Target::Claim("c1".into()))
        .count();
    assert_eq!((on_node, on_claim), (2, 2));
    assert_eq!(p.claims.len(), 1);
    // A taint on the node keeps intolerant pods off.
    let tainted = NodeView {
        name: "n2".into(),
        taints: vec![Taint::new("x", "", Effect::NoSchedule)],
        allocatable: Resources::cpu_mem(8000, 8 * GI),
        ..Default::default()
    };
    let mut tainted = tainted;
    tainted.allocatable.pods = 10;
    let p = run_with(&pods(1, "w", 500, MI), &default_pool(), &[tainted], &[]);
    assert!(p.placements.is_empty());
    // Anti-affinity and host ports count the pods already running there.
    let busy = NodeView {
        name: "n3".into(),
        allocatable: Resources {
            cpu: 8000,
            memory: 8 * GI,
            pods: 10,
            ..Default::default()
        },
        pods: vec![gantry::plan::PodView {
            namespace: "ns".into(),
            labels: BTreeMap::from([("app".to_string(), "db".to_string())]),
            host_ports: vec![HostPort {
                port: 9100,
                protocol: "TCP".into(),
                ip: String::new(),
            }],
        }],
        ..Default::default()
    };
    let mut db = pods(1, "db", 100, MI);
    db[0].anti_affinity_hostname.push(selects("db"));
    let mut exporter = pods(1, "exp", 100, MI);
    exporter[0].host_ports.push(HostPort {
        port: 9100,
        protocol: "TCP".into(),
        ip: "10.0.0.1".into(),
    });
    let plain = pods(1, "plain", 100, MI);
    for (p, fits) in [(db, false), (exporter, false), (plain, true)] {
        let plan = run_with(&p, &default_pool(), std::slice::from_ref(&busy), &[]);
        assert_eq!(plan.placements.len() == 1, fits, "{:?}", p[0].name);
    }
}

#[test]
fn plan_cost_is_near_the_lower_bound_for_uniform_pods() {
    let ps = pods(400, "u", 1000, 4 * GI);
    let pools = default_pool();
    let input = empty_cluster(&ps, &pools);
    let p = plan(&input);
    let lb = plan_lower_bound(&input, &p);
    assert!(
        lb > 0.0 && p.cost_per_hour() >= lb * 0.999,
        "{} < {lb}",
        p.cost_per_hour()
    );
    assert!(
        p.cost_per_hour() / lb < 1.15,
        "ratio {}",
        p.cost_per_hour() / lb
    );
}

/// LP rounding re-packs the batch mix (large pods of four shapes) onto the configuration LP's
/// patterns: cheaper than the greedy packing it replaces, and a valid plan.
#[test]
fn lp_rounding_improves_the_batch_mix() {
    use gantry::plan::binpack::{Order, Packer, Strategy as Packing};
    let mut ps = Vec::new();
    for (s, (cpu, mem)) in [(4000, 16), (8000, 30), (16000, 60), (2000, 4)]
        .into_iter()
        .enumerate()
    {
        ps.extend(pods(40, &format!("job{s}"), cpu, mem * GI));
    }
    let pools = default_pool();
    let input = empty_cluster(&ps, &pools);
    let mut packed = Packer::new(&input).packed(Packing::PerPod, Order::Dominant);
    let before = packed.outcome();
    assert!(packed.round_lp(), "rounding found nothing cheaper");
    let after = packed.outcome();
    assert_eq!(before.0, after.0);
    assert!(after.1 < before.1, "{} >= {}", after.1, before.1);
    let p = packed.finish();
    check_invariants(&input, &p);
    assert!((p.cost_per_hour() - after.1).abs() < 1e-6);
}

#[test]
fn gantry_plan_cli_prints_json() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("m.yaml");
    std::fs::write(
        &f,
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  replicas: 4
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: a, resources: {requests: {cpu: 1, memory: 2Gi}}}]
---
apiVersion: v1
kind: Pod
metadata: {name: huge, namespace: shop}
spec:
  containers: [{name: a, resources: {requests: {cpu: "1000"}}}]
"#,
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(["plan", "-f"])
        .arg(&f)
        .args(["--output", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["cost_per_hour"].as_f64().unwrap() > 0.0);
    assert!(v["lower_bound_per_hour"].as_f64().unwrap() > 0.0);
    let claims = v["nodeclaims"].as_array().unwrap();
    let pods: Vec<&str> = claims
        .iter()
        .flat_map(|c| {
            c["pods"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_str().unwrap())
        })
        .collect();
    assert_eq!(pods.len(), 4);
    assert!(pods.contains(&"shop/web-3"));
    let c = &claims[0];
    assert_eq!(c["instance_type"], c["options"][0]);
    assert!(["spot", "on-demand"].contains(&c["capacity_type"].as_str().unwrap()));
    assert_eq!(v["unschedulable"][0]["pod"], "shop/huge");
    assert!(
        v["unschedulable"][0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("needs 1000 vCPU")
    );
    // --catalog replaces the embedded catalog; offerings are every us-east-1 zone.
    let csv = dir.path().join("types.csv");
    std::fs::write(
        &csv,
        "instance_type,vcpu,memory_mib,gpus,arch,max_enis,ipv4_per_eni,max_pods,on_demand_usd_per_hour\n\
         small.large,2,8192,0,amd64,3,10,29,0.1\n\
         big.4xlarge,16,65536,0,arm64,8,30,234,0.8\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(["plan", "-o", "json", "-f"])
        .arg(&f)
        .arg("--catalog")
        .arg(&csv)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for c in v["nodeclaims"].as_array().unwrap() {
        for o in c["options"].as_array().unwrap() {
            assert!(["small.large", "big.4xlarge"].contains(&o.as_str().unwrap()));
        }
        assert!(c["zones"].as_array().unwrap().len() <= 6);
    }
    assert!(
        v["unschedulable"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("the largest type NodePool default allows has 16"),
        "{v}"
    );
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec: {containerz: [{name: a}]}\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(["plan", "-f"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("document 1") && err.contains("containerz"),
        "{err}"
    );
}

fn arb_pod(i: usize) -> impl Strategy<Value = PodDemand> {
    (
        prop::sample::select(vec![100i64, 250, 500, 1000, 2000, 4000]),
        prop::sample::select(vec![128i64, 512, 1024, 4096, 16384]),
        0u8..8,
        0u8..3,
        any::<bool>(),
    )
        .prop_map(move |(cpu, mem, constraint, app, tolerate)| {
            let app = format!("c{constraint}-app{app}");
            let mut p =
                PodDemand::simple("ns", &format!("p{i}"), Resources::cpu_mem(cpu, mem * MI));
            p.labels.insert("app".into(), app.clone());
            match constraint {
                1 => p.anti_affinity_hostname.push(selects(&app)),
                2 => p.topology_spread.push(TopologySpread {
                    key: TopologyKey::Zone,
                    max_skew: 1,
                    hard: true,
                    selector: selects(&app),
                }),
                3 => p.topology_spread.push(TopologySpread {
                    key: TopologyKey::Hostname,
                    max_skew: 2,
                    hard: true,
                    selector: selects(&app),
                }),
                4 => p.node_selector = Requirements(vec![Requirement::is_in(ARCH, &["arm64"])]),
                5 => p.host_ports.push(HostPort {
                    port: 80,
                    protocol: "TCP".into(),
                    ip: String::new(),
                }),
                6 => p.affinity_zone.push(selects(&app)),
                _ => {}
            }
            if tolerate {
                p.tolerations.push(Toleration::exists("spot"));
            }
            p
        })
}

/// A tainted spot pool with an optional node limit and an on-demand pool with `od_requirements`
/// (none: the default pool's), for the property tests.
fn two_pools(limit: Option<i64>, od_requirements: Vec<Requirement>) -> [NodePoolView; 2] {
    let spot = NodePoolView {
        name: "spot".into(),
        weight: 10,
        requirements: Requirements(vec![Requirement::is_in(
            "karpenter.sh/capacity-type",
            &["spot"],
        )]),
        taints: vec![Taint::new("spot", "true", Effect::NoSchedule)],
        daemon_overhead: Resources::cpu_mem(200, 256 * MI),
        limits: PoolLimits {
            nodes: limit,
            ..Default::default()
        },
        ..NodePoolView::default_pool()
    };
    let mut od = NodePoolView {
        name: "od".into(),
        daemon_overhead: Resources::cpu_mem(100, 128 * MI),
        ..NodePoolView::default_pool()
    };
    if !od_requirements.is_empty() {
        od.requirements = Requirements(od_requirements);
    }
    [spot, od]
}

fn arb_pods() -> impl Strategy<Value = Vec<PodDemand>> {
    (1usize..40).prop_flat_map(|n| (0..n).map(arb_pod).collect::<Vec<_>>())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn plans_keep_their_invariants(ps in arb_pods(), limit in prop::option::of(1i64..6)) {
        // check_invariants asserts inside run.
        let pools = two_pools(limit, vec![
            Requirement::is_in("karpenter.sh/capacity-type", &["on-demand"]),
            Requirement::new("karpenter.k8s.aws/instance-cpu", "Lt", &["33".to_string()]).unwrap(),
        ]);
        let p = run(&ps, &pools);
        prop_assert!(p.claims.iter().all(|c| !c.pods.is_empty()));
        // The LP bound really is a lower bound.
        let input = empty_cluster(&ps, &pools);
        let lb = plan_lower_bound(&input, &p);
        prop_assert!(lb <= p.cost_per_hour() * (1.0 + 1e-6) + 1e-9, "bound {lb} > cost {}", p.cost_per_hour());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// The improvement pass never makes a packing dearer, never changes which pods are placed,
    /// and its plan keeps every invariant.
    #[test]
    fn improvement_pass_never_raises_cost(ps in arb_pods(), limit in prop::option::of(1i64..6)) {
        use gantry::plan::binpack::{Order, Packer, Strategy as Packing};
        let pools = two_pools(limit, Vec::new());
        let input = empty_cluster(&ps, &pools);
        for (strategy, order) in [(Packing::PerPod, Order::Dominant), (Packing::Proportional, Order::Cpu)] {
            let mut packed = Packer::new(&input).packed(strategy, order);
            let before = packed.outcome();
            packed.improve();
            let after = packed.outcome();
            prop_assert_eq!(before.0, after.0);
            prop_assert!(after.1 <= before.1 + 1e-9, "{} > {}", after.1, before.1);
            let p = packed.finish();
            check_invariants(&input, &p);
            prop_assert!((p.cost_per_hour() - after.1).abs() < 1e-6, "{} vs {}", p.cost_per_hour(), after.1);
        }
    }
}

/// Pods LP rounding may move: no topology of their own, some with a node selector, some
/// tolerating the spot pool's taint; few shapes with many pods each.
fn arb_free_pods() -> impl Strategy<Value = Vec<PodDemand>> {
    prop::collection::vec(
        (
            prop::sample::select(vec![250i64, 500, 1000, 2000, 4000, 8000]),
            prop::sample::select(vec![512i64, 1024, 4096, 16384, 32768]),
            1usize..12,
            any::<bool>(),
            any::<bool>(),
        ),
        1..6,
    )
    .prop_map(|groups| {
        let mut out = Vec::new();
        for (g, (cpu, mem, n, arm, tolerate)) in groups.into_iter().enumerate() {
            for mut p in pods(n, &format!("g{g}"), cpu, mem * MI) {
                if arm {
                    p.node_selector = Requirements(vec![Requirement::is_in(ARCH, &["arm64"])]);
                }
                if tolerate {
                    p.tolerations.push(Toleration::exists("spot"));
                }
                out.push(p);
            }
        }
        out
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// LP rounding never makes a packing dearer or leaves more pods unschedulable, and its plan
    /// keeps every invariant, on free pods (where it applies) and on constrained ones (where it
    /// must leave them alone).
    #[test]
    fn lp_rounding_never_raises_cost(
        free in arb_free_pods(),
        constrained in arb_pods(),
        limit in prop::option::of(1i64..6),
        mix in any::<bool>(),
    ) {
        use gantry::plan::binpack::{Order, Packer, Strategy as Packing};
        let pools = two_pools(limit, Vec::new());
        let mut ps = free;
        if mix {
            ps.extend(constrained);
        }
        let input = empty_cluster(&ps, &pools);
        for (strategy, order) in [(Packing::PerPod, Order::Dominant), (Packing::Fractional, Order::Memory)] {
            let mut packed = Packer::new(&input).packed(strategy, order);
            let before = packed.outcome();
            let changed = packed.round_lp();
            let after = packed.outcome();
            prop_assert!(after.0 <= before.0);
            prop_assert!(after.1 <= before.1 + 1e-9, "{} > {}", after.1, before.1);
            prop_assert!(changed || after == before);
            packed.improve();
            let p = packed.finish();
            check_invariants(&input, &p);
            let lb = plan_lower_bound(&input, &p);
            prop_assert!(lb <= p.cost_per_hour() * (1.0 + 1e-6) + 1e-9, "bound {lb} > cost {}", p.cost_per_hour());
        }
    }
}
