//! The EC2 provider against moto's real EC2 server over HTTP, through a fault-injecting proxy;
//! and, at the end, the SQS interruption source against the same server's SQS.
//!
//! One moto server serves the whole binary; tests isolate themselves by cluster name, VPC,
//! subnet tags and NodeClass name instead of resetting shared state.
//!
//! Needs moto in `.venv` (`scripts/setup-moto.sh`); without it the tests skip loudly, or fail
//! when `CI=true`.

// A test binary: a failed fixture call should panic the test, helpers included.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/moto.rs"]
mod moto;
#[path = "support/proxy.rs"]
mod proxy;

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;

use aws_sdk_ec2::types::{Filter, ResourceType, Tag, TagSpecification};
use gantry::cloud::ec2::{Ec2Config, Ec2Provider, TAG_NODECLAIM_UID};
use gantry::cloud::{CloudError, CloudProvider, InstanceState};
use gantry::kube::crd::{
    AmiSelectorTerm, EC2NodeClass, EC2NodeClassSpec, NodeClaim, NodeClaimSpec,
    NodeSelectorRequirementSpec, SecurityGroupSelectorTerm, SubnetSelectorTerm,
};
use gantry::model::labels::{CAPACITY_TYPE, INSTANCE_TYPE, NODECLAIM, NODEPOOL, ZONE};
use gantry::model::{CapacityType, OfferingKey};
use proxy::{Fault, Proxy};

const ZONES: [&str; 3] = ["us-east-1a", "us-east-1b", "us-east-1c"];

/// Catalog caches shared by every test's provider, so the 5.9 MB type list is parsed once.
fn shared_catalog() -> &'static Ec2Provider {
    static DONOR: OnceLock<Ec2Provider> = OnceLock::new();
    DONOR.get_or_init(|| {
        Ec2Provider::with_static_credentials(Ec2Config::new("us-east-1", "donor"), "donor")
    })
}

struct Env {
    name: String,
    proxy: Proxy,
    ec2: Ec2Provider,
    node_class: EC2NodeClass,
    subnets: Vec<(String, String)>,
    security_group: String,
}

fn config(name: &str, endpoint: &str) -> Ec2Config {
    let mut cfg = Ec2Config::new("us-east-1", name);
    cfg.endpoint = Some(endpoint.to_string());
    cfg.cluster_endpoint = "https://example.gr7.us-east-1.eks.amazonaws.com".to_string();
    cfg.cluster_ca = "Q0E=".to_string();
    cfg.initial_backoff = Duration::from_millis(20);
    cfg.page_size = 5;
    cfg
}

fn provider(name: &str, endpoint: &str, partition: &str) -> Ec2Provider {
    let mut p = Ec2Provider::with_static_credentials(config(name, endpoint), partition);
    p.share_catalog_cache(shared_catalog());
    p
}

fn discovery(name: &str, resource: ResourceType) -> TagSpecification {
    TagSpecification::builder()
        .resource_type(resource)
        .tags(
            Tag::builder()
                .key("gantry.dev/discovery")
                .value(name)
                .build(),
        )
        .build()
}

/// A proxy, a provider, and a VPC with three tagged subnets and a tagged security group.
async fn env(name: &str) -> Option<Env> {
    let url = moto::url()?;
    let proxy = Proxy::start(&url).await;
    let ec2 = provider(name, &proxy.url, name);
    let c = ec2.client();
    let vpc = c
        .create_vpc()
        .cidr_block("10.0.0.0/16")
        .send()
        .await
        .unwrap()
        .vpc
        .unwrap()
        .vpc_id
        .unwrap();
    let mut subnets = Vec::new();
    for (i, z) in ZONES.iter().enumerate() {
        let s = c
            .create_subnet()
            .vpc_id(&vpc)
            .cidr_block(format!("10.0.{i}.0/24"))
            .availability_zone(*z)
            .tag_specifications(discovery(name, ResourceType::Subnet))
            .send()
            .await
            .unwrap()
            .subnet
            .unwrap();
        subnets.push((z.to_string(), s.subnet_id.unwrap()));
    }
    let security_group = c
        .create_security_group()
        .group_name(format!("{name}-nodes"))
        .description("gantry test nodes")
        .vpc_id(&vpc)
        .tag_specifications(discovery(name, ResourceType::SecurityGroup))
        .send()
        .await
        .unwrap()
        .group_id
        .unwrap();
    let tag = BTreeMap::from([("gantry.dev/discovery".to_string(), name.to_string())]);
    let node_class = EC2NodeClass::new(
        name,
        EC2NodeClassSpec {
            subnet_selector_terms: vec![SubnetSelectorTerm {
                tags: tag.clone(),
                id: None,
            }],
            security_group_selector_terms: vec![SecurityGroupSelectorTerm {
                tags: tag,
                ..Default::default()
            }],
            ami_selector_terms: vec![AmiSelectorTerm {
                name: Some("al2023-ami-2023*-kernel-6.1-*".to_string()),
                owner: Some("amazon".to_string()),
                ..Default::default()
            }],
            instance_profile: Some("GantryNodeProfile".to_string()),
            tags: BTreeMap::from([("team".to_string(), "platform".to_string())]),
            ..Default::default()
        },
    );
    Some(Env {
        name: name.to_string(),
        proxy,
        ec2,
        node_class,
        subnets,
        security_group,
    })
}

impl Drop for Env {
    /// Every test also checks that it used only actions the IAM policy grants.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            assert_policy_covers(&self.proxy);
        }
    }
}

fn req(key: &str, values: &[&str]) -> NodeSelectorRequirementSpec {
    NodeSelectorRequirementSpec {
        key: key.to_string(),
        operator: "In".to_string(),
        values: values.iter().map(|v| v.to_string()).collect(),
        min_values: None,
    }
}

fn claim(name: &str, types: &[&str], capacity: &[&str]) -> NodeClaim {
    let mut c = NodeClaim::new(
        name,
        NodeClaimSpec {
            requirements: vec![
                req(INSTANCE_TYPE, types),
                req(ZONE, &ZONES),
                req(CAPACITY_TYPE, capacity),
            ],
            ..Default::default()
        },
    );
    c.metadata.uid = Some(format!("5f0c1a2e-0000-4000-8000-{:0>12}", name.len()) + name);
    c.metadata.labels = Some(BTreeMap::from([(
        NODEPOOL.to_string(),
        "default".to_string(),
    )]));
    c
}

/// Every action the provider sent through this proxy is one the IAM policy grants (fixture
/// set-up calls aside).
fn assert_policy_covers(proxy: &Proxy) {
    const FIXTURES: [&str; 4] = [
        "CreateVpc",
        "CreateSubnet",
        "CreateSecurityGroup",
        "RunInstances",
    ];
    for l in proxy.log() {
        assert!(
            gantry::cloud::ec2::API_ACTIONS.contains(&l.action.as_str())
                || FIXTURES.contains(&l.action.as_str()),
            "{} is not in the IAM policy",
            l.action
        );
    }
}

async fn instance_tags(ec2: &Ec2Provider, id: &str) -> BTreeMap<String, String> {
    let out = ec2
        .client()
        .describe_instances()
        .instance_ids(id)
        .send()
        .await
        .unwrap();
    out.reservations()[0].instances()[0]
        .tags()
        .iter()
        .map(|t| (t.key().unwrap().to_string(), t.value().unwrap().to_string()))
        .collect()
}

#[tokio::test]
async fn nodeclass_resolution_by_tags_ids_and_names() {
    let Some(e) = env("resolve").await else {
        return;
    };
    let r = e.ec2.resolve_node_class(&e.node_class).await.unwrap();
    let status = r.status();
    let mut zones: Vec<_> = status.subnets.iter().map(|s| s.zone.clone()).collect();
    zones.sort();
    assert_eq!(zones, ZONES);
    assert_eq!(status.security_groups.len(), 1);
    assert_eq!(status.security_groups[0].id, e.security_group);
    assert_eq!(
        status.security_groups[0].name.as_deref(),
        Some("resolve-nodes")
    );
    let archs: Vec<_> = status
        .amis
        .iter()
        .map(|a| a.arch.clone().unwrap())
        .collect();
    assert!(archs.contains(&"amd64".to_string()) && archs.contains(&"arm64".to_string()));
    assert!(
        status
            .amis
            .iter()
            .all(|a| a.name.as_deref().unwrap().starts_with("al2023-ami-"))
    );
    assert_eq!(
        status.instance_profile.as_deref(),
        Some("GantryNodeProfile")
    );
    assert_eq!(r.subnet_per_zone().len(), 3);

    // By id and by name.
    let mut by_id = e.node_class.clone();
    by_id.spec.subnet_selector_terms = vec![SubnetSelectorTerm {
        tags: BTreeMap::new(),
        id: Some(e.subnets[1].1.clone()),
    }];
    by_id.spec.security_group_selector_terms = vec![SecurityGroupSelectorTerm {
        name: Some("resolve-nodes".to_string()),
        ..Default::default()
    }];
    let r = e.ec2.resolve_node_class(&by_id).await.unwrap();
    assert_eq!(r.subnets.len(), 1);
    assert_eq!(r.subnets[0].subnet.zone, "us-east-1b");
    assert_eq!(r.security_groups[0].id, e.security_group);

    // A selector matching nothing is a configuration error that names it.
    let mut bad = e.node_class.clone();
    bad.spec.subnet_selector_terms[0]
        .tags
        .insert("gantry.dev/discovery".to_string(), "nobody".to_string());
    match e.ec2.resolve_node_class(&bad).await {
        Err(CloudError::Config { reason }) => {
            assert!(
                reason.contains("subnetSelectorTerms") && reason.contains("nobody"),
                "{reason}"
            )
        }
        other => panic!("{other:?}"),
    }
    let mut bad = e.node_class.clone();
    bad.spec.ami_selector_terms[0].name = Some("no-such-image-*".to_string());
    match e.ec2.resolve_node_class(&bad).await {
        Err(CloudError::Config { reason }) => {
            assert!(
                reason.contains("amiSelectorTerms") && reason.contains("no-such-image"),
                "{reason}"
            )
        }
        other => panic!("{other:?}"),
    }
    let mut bad = e.node_class.clone();
    bad.spec.security_group_selector_terms[0].id = Some("sg-00000000000000000".to_string());
    bad.spec.security_group_selector_terms[0].tags.clear();
    assert!(matches!(
        e.ec2.resolve_node_class(&bad).await,
        Err(CloudError::Config { .. })
    ));
}

#[tokio::test]
async fn launch_template_is_created_once_and_reused() {
    let Some(e) = env("ltreuse").await else {
        return;
    };
    let a = e
        .ec2
        .create(&claim("lt-a", &["m5.large"], &["on-demand"]), &e.node_class)
        .await
        .unwrap();
    let b = e
        .ec2
        .create(&claim("lt-b", &["m5.large"], &["on-demand"]), &e.node_class)
        .await
        .unwrap();
    assert_ne!(a.instance_id, b.instance_id);
    assert_eq!(e.proxy.calls("CreateLaunchTemplate").len(), 1);
    // A restarted provider (empty caches) finds the template by name instead of creating another.
    let fresh = provider(&e.name, &e.proxy.url, "ltreuse-2");
    fresh
        .create(&claim("lt-c", &["m5.large"], &["on-demand"]), &e.node_class)
        .await
        .unwrap();
    assert_eq!(e.proxy.calls("CreateLaunchTemplate").len(), 1);
    let lts = e
        .ec2
        .client()
        .describe_launch_templates()
        .filters(
            Filter::builder()
                .name("tag:gantry.dev/ec2nodeclass")
                .values("ltreuse")
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(lts.launch_templates().len(), 1);
    let name = lts.launch_templates()[0].launch_template_name().unwrap();
    assert!(name.starts_with("gantry/ltreuse/"), "{name}");
    // A spot launch needs its own template (capacity type is in the node labels).
    e.ec2
        .create(&claim("lt-d", &["m5.large"], &["spot"]), &e.node_class)
        .await
        .unwrap();
    assert_eq!(e.proxy.calls("CreateLaunchTemplate").len(), 2);
    let created = &e.proxy.calls("CreateLaunchTemplate")[0];
    let ud = created.params.get("LaunchTemplateData.UserData").unwrap();
    use base64::Engine as _;
    let ud = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(ud)
            .unwrap(),
    )
    .unwrap();
    assert!(
        ud.contains("kind: NodeConfig") && ud.contains("name: ltreuse"),
        "{ud}"
    );
    assert!(ud.contains("gantry.dev/unregistered") && ud.contains("gantry.dev/initializing"));
    assert!(ud.contains("gantry.dev/nodepool=default"));
}

#[tokio::test]
async fn unused_launch_templates_are_deleted_and_recreated_when_needed() {
    let Some(e) = env("ltgc").await else {
        return;
    };
    let templates = || async {
        e.ec2
            .client()
            .describe_launch_templates()
            .filters(
                Filter::builder()
                    .name("tag:kubernetes.io/cluster/ltgc")
                    .values("owned")
                    .build(),
            )
            .send()
            .await
            .unwrap()
            .launch_templates()
            .len()
    };
    e.ec2
        .create(&claim("gc-a", &["m5.large"], &["on-demand"]), &e.node_class)
        .await
        .unwrap();
    assert_eq!(templates().await, 1);
    // With the default grace a template just created and used is kept.
    assert_eq!(e.ec2.collect_unused().await.unwrap(), 0);
    assert_eq!(templates().await, 1);
    // A process that has not used it, with no grace, deletes it.
    let mut cfg = config(&e.name, &e.proxy.url);
    cfg.launch_template_idle = Duration::ZERO;
    let mut gc = Ec2Provider::with_static_credentials(cfg, "ltgc-2");
    gc.share_catalog_cache(shared_catalog());
    assert_eq!(gc.collect_unused().await.unwrap(), 1);
    assert_eq!(templates().await, 0);
    assert_eq!(e.proxy.calls("DeleteLaunchTemplate").len(), 1);
    // The first provider still caches the deleted template's id: its next launch finds it gone,
    // forgets the id and creates the template again.
    let b = e
        .ec2
        .create(&claim("gc-b", &["m5.large"], &["on-demand"]), &e.node_class)
        .await
        .unwrap();
    assert!(b.instance_id.starts_with("i-"), "{b:?}");
    assert_eq!(e.proxy.calls("CreateLaunchTemplate").len(), 2);
    assert_eq!(templates().await, 1);
}

#[tokio::test]
async fn create_fleet_spot_and_on_demand_with_tags_and_token() {
    let Some(e) = env("fleet").await else { return };
    let spot_claim = claim(
        "fleet-spot",
        &["m5.large", "m5.xlarge"],
        &["spot", "on-demand"],
    );
    let spot = e.ec2.create(&spot_claim, &e.node_class).await.unwrap();
    assert_eq!(spot.capacity_type, CapacityType::Spot);
    assert!(["m5.large", "m5.xlarge"].contains(&spot.instance_type.as_str()));
    assert!(ZONES.contains(&spot.zone.as_str()));
    assert_eq!(
        spot.provider_id,
        format!("aws:///{}/{}", spot.zone, spot.instance_id)
    );
    assert_eq!(spot.nodeclaim.as_deref(), Some("fleet-spot"));

    let fleets = e.proxy.calls("CreateFleet");
    assert_eq!(fleets.len(), 1);
    let p = &fleets[0].params;
    assert_eq!(p["Type"], "instant");
    assert_eq!(p["ClientToken"], *spot_claim.metadata.uid.as_ref().unwrap());
    assert_eq!(p["TargetCapacitySpecification.TotalTargetCapacity"], "1");
    assert_eq!(
        p["TargetCapacitySpecification.DefaultTargetCapacityType"],
        "spot"
    );
    assert_eq!(
        p["SpotOptions.AllocationStrategy"],
        "price-capacity-optimized"
    );
    // Two types × three zones, priorities in order.
    let overrides: Vec<_> = p.keys().filter(|k| k.ends_with(".InstanceType")).collect();
    assert_eq!(overrides.len(), 6);
    let kinds: Vec<_> = (1..=3)
        .map(|i| p[&format!("TagSpecification.{i}.ResourceType")].clone())
        .collect();
    assert_eq!(kinds, vec!["instance", "volume", "fleet"]);

    let tags = instance_tags(&e.ec2, &spot.instance_id).await;
    assert_eq!(tags[NODECLAIM], "fleet-spot");
    assert_eq!(
        tags[TAG_NODECLAIM_UID],
        *spot_claim.metadata.uid.as_ref().unwrap()
    );
    assert_eq!(tags[NODEPOOL], "default");
    assert_eq!(tags["kubernetes.io/cluster/fleet"], "owned");
    assert_eq!(tags["Name"], "default/fleet-spot");
    assert_eq!(tags["team"], "platform");

    let od = e
        .ec2
        .create(
            &claim("fleet-od", &["c5.large"], &["on-demand"]),
            &e.node_class,
        )
        .await
        .unwrap();
    assert_eq!(od.capacity_type, CapacityType::OnDemand);
    assert_eq!(od.instance_type, "c5.large");
    let p = &e.proxy.calls("CreateFleet")[1].params;
    assert_eq!(p["OnDemandOptions.AllocationStrategy"], "lowest-price");
    assert_eq!(
        p["TargetCapacitySpecification.DefaultTargetCapacityType"],
        "on-demand"
    );
    let got = e.ec2.get(&od.provider_id).await.unwrap();
    assert_eq!(got.instance_type, "c5.large");
    assert_eq!(got.nodeclaim.as_deref(), Some("fleet-od"));
    assert!(got.state.is_alive());
}

#[tokio::test]
async fn retry_after_crash_adopts_the_tagged_instance() {
    let Some(e) = env("adopt").await else { return };
    let c = claim("adopt-1", &["m5.large"], &["on-demand"]);
    let first = e.ec2.create(&c, &e.node_class).await.unwrap();
    // The process "crashed" before recording the result: a new provider retries the claim.
    let restarted = provider(&e.name, &e.proxy.url, "adopt-2");
    let again = restarted.create(&c, &e.node_class).await.unwrap();
    assert_eq!(again.instance_id, first.instance_id);
    assert_eq!(e.proxy.calls("CreateFleet").len(), 1, "no second launch");
    assert_eq!(restarted.list().await.unwrap().len(), 1);
}

#[tokio::test]
async fn list_pages_through_owned_instances_and_gc_terminates_them() {
    let Some(e) = env("listgc").await else { return };
    let mut launched = Vec::new();
    for i in 0..7 {
        let i = e
            .ec2
            .create(
                &claim(&format!("gc-{i}"), &["t3.micro"], &["on-demand"]),
                &e.node_class,
            )
            .await
            .unwrap();
        launched.push(i.instance_id);
    }
    // An instance this cluster does not own.
    e.ec2
        .client()
        .run_instances()
        .image_id("ami-03c3da4cfa8e8943a")
        .instance_type("t3.micro".into())
        .min_count(1)
        .max_count(1)
        .subnet_id(&e.subnets[0].1)
        .send()
        .await
        .unwrap();
    let listed = e.ec2.list().await.unwrap();
    let mut ids: Vec<_> = listed.iter().map(|i| i.instance_id.clone()).collect();
    ids.sort();
    launched.sort();
    assert_eq!(ids, launched);
    let pages = e.proxy.calls("DescribeInstances");
    let last_list: Vec<_> = pages
        .iter()
        .rev()
        .take_while(|c| c.params.contains_key("NextToken"))
        .collect();
    assert!(
        !last_list.is_empty(),
        "7 instances at page size 5 take two pages"
    );
    // GC: no NodeClaim owns them any more.
    for i in &listed {
        e.ec2.delete(&i.provider_id).await.unwrap();
    }
    assert!(e.ec2.list().await.unwrap().is_empty());
}

#[tokio::test]
async fn terminating_twice_succeeds() {
    let Some(e) = env("term").await else { return };
    let i = e
        .ec2
        .create(
            &claim("term-1", &["m5.large"], &["on-demand"]),
            &e.node_class,
        )
        .await
        .unwrap();
    e.ec2.delete(&i.provider_id).await.unwrap();
    e.ec2.delete(&i.provider_id).await.unwrap();
    assert!(matches!(
        e.ec2.get(&i.provider_id).await,
        Err(CloudError::NotFound(_))
    ));
    // Never existed: still success.
    e.ec2
        .delete("aws:///us-east-1a/i-0123456789abcdef0")
        .await
        .unwrap();
    assert!(matches!(
        e.ec2.get("aws:///us-east-1a/i-0123456789abcdef0").await,
        Err(CloudError::NotFound(_))
    ));
    assert!(matches!(
        e.ec2.delete("not-a-provider-id").await,
        Err(CloudError::Config { .. })
    ));
}

#[tokio::test]
async fn catalog_from_moto_types_offerings_and_spot_prices() {
    let Some(url) = moto::url() else { return };
    let proxy = Proxy::start(&url).await;
    // Shares the binary's catalog cache (the 5.9 MB type list is slow to serve and parse).
    let ec2 = provider("catalog", &proxy.url, "catalog");
    let c = ec2.catalog().await.unwrap();
    assert!(c.types.len() > 500, "{} types", c.types.len());
    let m5 = c.get("m5.large").unwrap();
    assert_eq!((m5.vcpu, m5.memory_mib, m5.max_pods), (2, 8192, 29));
    assert_eq!(m5.on_demand_price, 0.096);
    let zones: std::collections::BTreeSet<_> =
        m5.offerings.iter().map(|o| o.zone.as_str()).collect();
    assert!(
        zones.contains("us-east-1a") && !zones.contains("us-east-1e"),
        "{zones:?}"
    );
    let spot = m5
        .offerings
        .iter()
        .find(|o| o.capacity_type == CapacityType::Spot)
        .unwrap();
    assert_eq!(
        spot.price, 0.00001,
        "moto's (fake) spot price history is used"
    );
    assert!(c.types.iter().any(|t| t.arch == gantry::model::Arch::Arm64));
    assert!(c.types.iter().any(|t| t.gpus > 0));
    // Cached: a second call makes no EC2 calls.
    let before = proxy.log().len();
    ec2.catalog().await.unwrap();
    assert_eq!(proxy.log().len(), before);
    assert!(proxy.calls("DescribeInstanceTypes").len() <= 1);
    // The catalog command renders it.
    let json =
        gantry::cloud::command::render(&c, gantry::cloud::command::OutputFormat::Json).unwrap();
    let rows: serde_json::Value = serde_json::from_str(&json).unwrap();
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "m5.large")
        .unwrap();
    assert_eq!(row["spot_price"], 0.00001);
    assert_eq!(row["zones"].as_array().unwrap().len(), 5);
    assert_policy_covers(&proxy);
}

#[tokio::test]
async fn fleet_capacity_errors_fall_back_to_other_offerings_at_once() {
    let Some(e) = env("ice").await else { return };
    // Real EC2's reply when the m5.large pools are dry: HTTP 200, Errors[], no instance.
    e.proxy.fail(
        "CreateFleet",
        Fault::FleetErrors {
            code: "InsufficientInstanceCapacity",
            fail_types: Some(vec!["m5.large".to_string()]),
            launch: false,
        },
        1,
    );
    let i = e
        .ec2
        .create(
            &claim("ice-1", &["m5.large", "m5.xlarge"], &["spot"]),
            &e.node_class,
        )
        .await
        .unwrap();
    assert_eq!(i.instance_type, "m5.xlarge");
    let fleets = e.proxy.calls("CreateFleet");
    assert_eq!(fleets.len(), 2);
    assert!(fleets[0].faulted && !fleets[1].faulted);
    // Sent at once: no back-off sleep and no adoption check in between (a retry would do both).
    let between: Vec<_> = e
        .proxy
        .log()
        .into_iter()
        .filter(|l| l.at > fleets[0].at && l.at < fleets[1].at)
        .map(|l| l.action)
        .collect();
    assert!(
        !between.contains(&"DescribeInstances".to_string()),
        "{between:?}"
    );
    assert!(!fleets[1].params.values().any(|v| v == "m5.large"));
    assert_ne!(
        fleets[0].params["ClientToken"],
        fleets[1].params["ClientToken"]
    );
    let now = std::time::Instant::now();
    for z in ZONES {
        let k = OfferingKey {
            instance_type: "m5.large".to_string(),
            zone: z.to_string(),
            capacity_type: CapacityType::Spot,
        };
        assert!(e.ec2.backoff().is_backed_off(&k, now), "{k}");
    }
    let cat = e.ec2.catalog().await.unwrap();
    let m5 = cat.get("m5.large").unwrap();
    assert!(
        m5.offerings
            .iter()
            .filter(|o| o.capacity_type == CapacityType::Spot && ZONES.contains(&o.zone.as_str()))
            .all(|o| !o.available)
    );
}

#[tokio::test]
async fn capacity_error_reply_is_not_retried_by_the_sdk_and_falls_back_to_on_demand() {
    let Some(e) = env("ice500").await else { return };
    // An HTTP 500 InsufficientInstanceCapacity: the SDK's standard retry would resend it.
    e.proxy.fail(
        "CreateFleet",
        Fault::Error {
            status: 500,
            code: "InsufficientInstanceCapacity",
        },
        1,
    );
    let i = e
        .ec2
        .create(
            &claim("ice500-1", &["c5.large"], &["spot", "on-demand"]),
            &e.node_class,
        )
        .await
        .unwrap();
    assert_eq!(i.capacity_type, CapacityType::OnDemand);
    let fleets = e.proxy.calls("CreateFleet");
    assert_eq!(fleets.len(), 2, "one failed spot request, one on-demand");
    assert_eq!(
        fleets[0].params["TargetCapacitySpecification.DefaultTargetCapacityType"],
        "spot"
    );
    assert_eq!(
        fleets[1].params["TargetCapacitySpecification.DefaultTargetCapacityType"],
        "on-demand"
    );
}

#[tokio::test]
async fn partial_fleet_success_keeps_the_instance_and_backs_off_the_failures() {
    let Some(e) = env("partial").await else {
        return;
    };
    e.proxy.fail(
        "CreateFleet",
        Fault::FleetErrors {
            code: "InsufficientInstanceCapacity",
            fail_types: Some(vec!["m5.xlarge".to_string()]),
            launch: true,
        },
        1,
    );
    let i = e
        .ec2
        .create(
            &claim("partial-1", &["m5.large", "m5.xlarge"], &["on-demand"]),
            &e.node_class,
        )
        .await
        .unwrap();
    assert_eq!(i.instance_type, "m5.large");
    assert_eq!(e.proxy.calls("CreateFleet").len(), 1);
    let held = e.ec2.backoff().backed_off(std::time::Instant::now());
    assert_eq!(held.len(), 3, "{held:?}");
    assert!(
        held.iter()
            .all(|k| k.instance_type == "m5.xlarge" && k.capacity_type == CapacityType::OnDemand)
    );
}

#[tokio::test]
async fn exhausted_capacity_is_insufficient_capacity_and_stays_backed_off() {
    let Some(e) = env("dry").await else { return };
    e.proxy.fail(
        "CreateFleet",
        Fault::FleetErrors {
            code: "UnfulfillableCapacity",
            fail_types: None,
            launch: false,
        },
        10,
    );
    match e
        .ec2
        .create(&claim("dry-1", &["m5.large"], &["spot"]), &e.node_class)
        .await
    {
        Err(CloudError::InsufficientCapacity { offerings }) => assert_eq!(offerings.len(), 3),
        other => panic!("{other:?}"),
    }
    assert_eq!(e.proxy.calls("CreateFleet").len(), 1);
    // Asking again within the back-off does not call EC2 at all.
    match e
        .ec2
        .create(&claim("dry-2", &["m5.large"], &["spot"]), &e.node_class)
        .await
    {
        Err(CloudError::InsufficientCapacity { offerings }) => assert_eq!(offerings.len(), 3),
        other => panic!("{other:?}"),
    }
    assert_eq!(e.proxy.calls("CreateFleet").len(), 1);
}

#[tokio::test]
async fn throttling_is_retried_with_backoff() {
    let Some(e) = env("throttle").await else {
        return;
    };
    e.proxy.fail(
        "CreateFleet",
        Fault::Error {
            status: 503,
            code: "RequestLimitExceeded",
        },
        2,
    );
    let i = e
        .ec2
        .create(
            &claim("throttle-1", &["m5.large"], &["on-demand"]),
            &e.node_class,
        )
        .await
        .unwrap();
    assert_eq!(i.instance_type, "m5.large");
    let fleets = e.proxy.calls("CreateFleet");
    assert_eq!(fleets.len(), 3);
    // Back-off with jitter: at least half of 20 ms, then of 40 ms.
    assert!(fleets[1].at.duration_since(fleets[0].at) >= Duration::from_millis(10));
    assert!(fleets[2].at.duration_since(fleets[1].at) >= Duration::from_millis(20));
    // Same request, same token.
    assert!(
        fleets
            .iter()
            .all(|f| f.params["ClientToken"] == fleets[0].params["ClientToken"])
    );

    // Read calls: the SDK's adaptive retry absorbs a short burst…
    e.proxy.fail(
        "DescribeInstances",
        Fault::Error {
            status: 503,
            code: "RequestLimitExceeded",
        },
        2,
    );
    assert_eq!(e.ec2.list().await.unwrap().len(), 1);
    // …and a long one surfaces as Throttled.
    e.proxy.fail(
        "DescribeInstances",
        Fault::Error {
            status: 503,
            code: "RequestLimitExceeded",
        },
        5,
    );
    assert!(matches!(e.ec2.list().await, Err(CloudError::Throttled)));
    // Launch throttling beyond the retry budget surfaces too, without leaking an instance.
    e.proxy.fail(
        "CreateFleet",
        Fault::Error {
            status: 503,
            code: "RequestLimitExceeded",
        },
        10,
    );
    assert!(matches!(
        e.ec2
            .create(
                &claim("throttle-2", &["m5.large"], &["on-demand"]),
                &e.node_class
            )
            .await,
        Err(CloudError::Throttled)
    ));
}

#[tokio::test]
async fn errors_are_classified() {
    let Some(e) = env("classify").await else {
        return;
    };
    // A bare 500 is transient: retried after an adoption check, launched once.
    e.proxy.fail("CreateFleet", Fault::Bare500, 1);
    let i = e
        .ec2
        .create(
            &claim("cls-1", &["m5.large"], &["on-demand"]),
            &e.node_class,
        )
        .await
        .unwrap();
    assert_eq!(i.state, InstanceState::Pending);
    let actions: Vec<_> = e
        .proxy
        .log()
        .into_iter()
        .map(|l| l.action)
        .filter(|a| a == "CreateFleet" || a == "DescribeInstances")
        .collect();
    assert_eq!(
        actions,
        vec![
            "DescribeInstances",
            "CreateFleet",
            "DescribeInstances",
            "CreateFleet"
        ],
        "adoption check before the launch and before the retry"
    );
    // A request EC2 rejects is a configuration error, not retried.
    e.proxy.fail(
        "CreateFleet",
        Fault::Error {
            status: 400,
            code: "InvalidParameterValue",
        },
        1,
    );
    let before = e.proxy.calls("CreateFleet").len();
    assert!(matches!(
        e.ec2
            .create(
                &claim("cls-2", &["m5.large"], &["on-demand"]),
                &e.node_class
            )
            .await,
        Err(CloudError::Config { .. })
    ));
    assert_eq!(e.proxy.calls("CreateFleet").len(), before + 1);
    // A fleet-level non-capacity error with no instance is a configuration error too.
    e.proxy.fail(
        "CreateFleet",
        Fault::FleetErrors {
            code: "InvalidFleetConfiguration",
            fail_types: None,
            launch: false,
        },
        1,
    );
    assert!(matches!(
        e.ec2
            .create(
                &claim("cls-3", &["m5.large"], &["on-demand"]),
                &e.node_class
            )
            .await,
        Err(CloudError::Config { .. })
    ));
    // ...except a missing launch template: the cached id is forgotten and the launch retried.
    e.proxy.fail(
        "CreateFleet",
        Fault::FleetErrors {
            code: "InvalidLaunchTemplateId.NotFound",
            fail_types: None,
            launch: false,
        },
        1,
    );
    let before = e.proxy.calls("CreateFleet").len();
    e.ec2
        .create(
            &claim("cls-3b", &["m5.large"], &["on-demand"]),
            &e.node_class,
        )
        .await
        .unwrap();
    assert_eq!(e.proxy.calls("CreateFleet").len(), before + 2);
    // Permission errors on terminate are configuration errors.
    e.proxy.fail(
        "TerminateInstances",
        Fault::Error {
            status: 403,
            code: "UnauthorizedOperation",
        },
        1,
    );
    assert!(matches!(
        e.ec2.delete(&i.provider_id).await,
        Err(CloudError::Config { .. })
    ));
    // A claim whose types exist nowhere in the NodeClass's zones is a configuration error.
    assert!(matches!(
        e.ec2
            .create(&claim("cls-4", &["no.such"], &["on-demand"]), &e.node_class)
            .await,
        Err(CloudError::Config { .. })
    ));
}

// ---------------------------------------------------------------------------------------------
// The SQS interruption source against moto's SQS (same server, talked to directly: the proxy
// speaks EC2's query protocol, SQS uses JSON). Queues are named per test.

mod sqs {
    use std::sync::Arc;
    use std::time::Duration;

    use gantry::cloud::CloudError;
    use gantry::disruption::interruption::{
        InterruptionEvent, InterruptionKind, InterruptionSource,
    };
    use gantry::disruption::sqs::{QueueRef, SqsConfig, SqsInterruptions, SqsQueue};
    use gantry::metrics::{InterruptionLabels, Metrics};

    use super::moto;

    /// A queue client against moto, short long-polls so tests do not wait 20 s.
    fn queue(endpoint: &str, queue: QueueRef, partition: &str) -> SqsQueue {
        let mut c = SqsConfig::new(queue, "us-east-1");
        c.endpoint = Some(endpoint.to_string());
        c.wait_time = Duration::from_secs(1);
        c.visibility_timeout = Duration::from_secs(1);
        c.initial_backoff = Duration::from_millis(20);
        SqsQueue::with_static_credentials(c, partition)
    }

    /// Creates the queue and returns a client configured with its URL.
    async fn create(endpoint: &str, name: &str) -> (SqsQueue, String) {
        let admin = queue(endpoint, QueueRef::Name(name.into()), name);
        let url = admin
            .client()
            .create_queue()
            .queue_name(name)
            .send()
            .await
            .unwrap()
            .queue_url
            .unwrap();
        (queue(endpoint, QueueRef::Url(url.clone()), name), url)
    }

    async fn send(q: &SqsQueue, url: &str, body: &str) {
        q.client()
            .send_message()
            .queue_url(url)
            .message_body(body)
            .send()
            .await
            .unwrap();
    }

    /// Messages visible plus in flight, as SQS counts them.
    async fn depth(q: &SqsQueue, url: &str) -> u64 {
        use aws_sdk_sqs::types::QueueAttributeName as A;
        let out = q
            .client()
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(A::ApproximateNumberOfMessages)
            .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .unwrap();
        let attrs = out.attributes().unwrap();
        [
            A::ApproximateNumberOfMessages,
            A::ApproximateNumberOfMessagesNotVisible,
        ]
        .iter()
        .map(|a| attrs[a].parse::<u64>().unwrap())
        .sum()
    }

    fn counted(m: &Metrics, kind: &'static str, result: &'static str) -> u64 {
        m.interruption_messages
            .get_or_create(&InterruptionLabels { kind, result })
            .get()
    }

    fn total(m: &Metrics) -> u64 {
        [
            ("spot_interruption", "delivered"),
            ("rebalance_recommendation", "delivered"),
            ("scheduled_change", "delivered"),
            ("state_change", "delivered"),
            ("state_change", "ignored"),
            ("other", "ignored"),
            ("unknown", "malformed"),
        ]
        .into_iter()
        .map(|(k, r)| counted(m, k, r))
        .sum()
    }

    /// EventBridge events as AWS documents them (EC2 spot and rebalance, AWS Health, EC2 state
    /// change), as the rules Karpenter documents deliver them to SQS.
    const SPOT: &str = r#"{"version":"0","id":"1e5527d7-bb36-4607-3370-4164db56a40e","detail-type":"EC2 Spot Instance Interruption Warning","source":"aws.ec2","account":"123456789012","time":"2026-12-04T12:00:00Z","region":"us-east-1","resources":["arn:aws:ec2:us-east-1a:instance/i-0spot0000000000001"],"detail":{"instance-id":"i-0spot0000000000001","instance-action":"terminate"}}"#;
    const REBALANCE: &str = r#"{"version":"0","id":"2e5527d7-bb36-4607-3370-4164db56a40e","detail-type":"EC2 Instance Rebalance Recommendation","source":"aws.ec2","account":"123456789012","time":"2026-12-04T12:00:00Z","region":"us-east-1","resources":["arn:aws:ec2:us-east-1:123456789012:instance/i-0reb00000000000002"],"detail":{"instance-id":"i-0reb00000000000002"}}"#;
    const SCHEDULED: &str = r#"{"version":"0","id":"3e5527d7-bb36-4607-3370-4164db56a40e","detail-type":"AWS Health Event","source":"aws.health","account":"123456789012","time":"2026-12-04T12:00:00Z","region":"us-east-1","resources":[],"detail":{"eventArn":"arn:aws:health:us-east-1::event/EC2/AWS_EC2_INSTANCE_RETIREMENT_SCHEDULED/AWS_EC2_INSTANCE_RETIREMENT_SCHEDULED_1","service":"EC2","eventTypeCode":"AWS_EC2_INSTANCE_RETIREMENT_SCHEDULED","eventTypeCategory":"scheduledChange","startTime":"Fri, 04 Dec 2026 12:00:00 GMT","endTime":"Sat, 05 Dec 2026 12:00:00 GMT","eventDescription":[{"language":"en_US","latestDescription":"EC2 has detected degradation of the underlying hardware hosting your instance."}],"affectedEntities":[{"entityValue":"i-0sched000000000003"}]}}"#;
    const STOPPING: &str = r#"{"version":"0","id":"4e5527d7-bb36-4607-3370-4164db56a40e","detail-type":"EC2 Instance State-change Notification","source":"aws.ec2","account":"123456789012","time":"2026-12-04T12:00:00Z","region":"us-east-1","resources":["arn:aws:ec2:us-east-1:123456789012:instance/i-0stop00000000000004"],"detail":{"instance-id":"i-0stop00000000000004","state":"stopping"}}"#;
    const RUNNING: &str = r#"{"version":"0","id":"5e5527d7-bb36-4607-3370-4164db56a40e","detail-type":"EC2 Instance State-change Notification","source":"aws.ec2","account":"123456789012","time":"2026-12-04T12:00:00Z","region":"us-east-1","resources":["arn:aws:ec2:us-east-1:123456789012:instance/i-0run000000000000005"],"detail":{"instance-id":"i-0run000000000000005","state":"running"}}"#;
    const OTHER: &str = r#"{"version":"0","id":"6e5527d7-bb36-4607-3370-4164db56a40e","detail-type":"AWS API Call via CloudTrail","source":"aws.ec2","detail":{}}"#;
    const MALFORMED: &str = "{\"detail-type\": \"EC2 Spot Instance Interruption Warning\", trunc";

    fn event(id: &str, kind: InterruptionKind) -> InterruptionEvent {
        InterruptionEvent {
            instance_id: id.to_string(),
            kind,
        }
    }

    /// Polls until `done` holds, waking on each receive; fails after 30 s.
    async fn until(
        source: &SqsInterruptions,
        events: &mut Vec<InterruptionEvent>,
        done: impl Fn(&[InterruptionEvent]) -> bool,
    ) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            events.extend(source.poll().await);
            if done(events) {
                return;
            }
            tokio::time::timeout_at(deadline, source.received())
                .await
                .expect("the source never received what was sent");
        }
    }

    #[tokio::test]
    async fn sqs_source_delivers_the_four_notices_and_deletes_every_message() {
        let Some(endpoint) = moto::url() else {
            return;
        };
        let (q, url) = create(&endpoint, "gantry-interruptions-all").await;
        for body in [
            SPOT, REBALANCE, SCHEDULED, STOPPING, RUNNING, OTHER, MALFORMED,
        ] {
            send(&q, &url, body).await;
        }
        assert_eq!(depth(&q, &url).await, 7);
        let metrics = Arc::new(Metrics::new());
        let source = SqsInterruptions::start(q.clone(), metrics.clone()).unwrap();
        let mut events = Vec::new();
        let started = std::time::Instant::now();
        until(&source, &mut events, |_| total(&metrics) == 7).await;
        events.extend(source.poll().await);
        let handed_over = started.elapsed();
        events.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
        assert_eq!(
            events,
            [
                event(
                    "i-0reb00000000000002",
                    InterruptionKind::RebalanceRecommendation
                ),
                event("i-0sched000000000003", InterruptionKind::ScheduledChange),
                event("i-0spot0000000000001", InterruptionKind::SpotInterruption),
                event(
                    "i-0stop00000000000004",
                    InterruptionKind::StateChange("stopping".into())
                ),
            ],
            "a state change to running and another detail type are not notices"
        );
        assert_eq!(counted(&metrics, "spot_interruption", "delivered"), 1);
        assert_eq!(
            counted(&metrics, "rebalance_recommendation", "delivered"),
            1
        );
        assert_eq!(counted(&metrics, "scheduled_change", "delivered"), 1);
        assert_eq!(counted(&metrics, "state_change", "delivered"), 1);
        assert_eq!(counted(&metrics, "state_change", "ignored"), 1);
        assert_eq!(counted(&metrics, "other", "ignored"), 1);
        assert_eq!(counted(&metrics, "unknown", "malformed"), 1);
        assert!(metrics.render().contains(
            r#"gantry_interruption_messages_total{kind="unknown",result="malformed"} 1"#
        ));

        // Every message is deleted, the malformed and ignored ones too, so none comes back.
        assert!(source.flush(Duration::from_secs(10)).await);
        assert_eq!(depth(&q, &url).await, 0);
        eprintln!("seven messages received, handed over and deleted in {handed_over:?}");
        source.shutdown(Duration::from_secs(5)).await;
        assert!(source.poll().await.is_empty());
    }

    #[tokio::test]
    async fn sqs_notices_not_handed_over_come_back_for_the_next_reader() {
        let Some(endpoint) = moto::url() else {
            return;
        };
        let (q, url) = create(&endpoint, "gantry-interruptions-again").await;
        send(&q, &url, SPOT).await;
        let metrics = Arc::new(Metrics::new());
        // The first reader receives the notice but stops (loses the lease) before polling.
        let first = SqsInterruptions::start(q.clone(), metrics.clone()).unwrap();
        tokio::time::timeout(Duration::from_secs(30), first.received())
            .await
            .unwrap();
        first.shutdown(Duration::from_secs(5)).await;
        drop(first);
        assert_eq!(depth(&q, &url).await, 1, "received but not deleted");
        // The next reader gets it again once the visibility timeout (1 s here) passes.
        let second = SqsInterruptions::start(q.clone(), metrics.clone()).unwrap();
        let mut events = Vec::new();
        until(&second, &mut events, |e| !e.is_empty()).await;
        assert_eq!(
            events,
            [event(
                "i-0spot0000000000001",
                InterruptionKind::SpotInterruption
            )]
        );
        assert!(second.flush(Duration::from_secs(10)).await);
        assert_eq!(depth(&q, &url).await, 0);
        assert_eq!(counted(&metrics, "spot_interruption", "delivered"), 2);
    }

    #[tokio::test]
    async fn sqs_missing_queue_is_a_configuration_error() {
        let Some(endpoint) = moto::url() else {
            return;
        };
        let missing = format!("{endpoint}/123456789012/gantry-no-such-queue");
        let q = queue(&endpoint, QueueRef::Url(missing.clone()), "missing");
        match q.receive(&missing, Duration::ZERO).await {
            Err(CloudError::Config { reason }) => {
                eprintln!("{reason}");
                assert!(reason.contains("gantry-no-such-queue"), "{reason}");
                assert!(reason.contains("--interruption-queue"), "{reason}");
            }
            other => panic!("expected a configuration error, got {other:?}"),
        }
        let by_name = queue(
            &endpoint,
            QueueRef::Name("gantry-no-such-queue".into()),
            "missing-name",
        );
        assert!(
            matches!(by_name.url().await, Err(CloudError::Config { .. })),
            "GetQueueUrl for a missing name"
        );
        // Deleting with a receipt SQS does not know counts as already deleted.
        let (q, url) = create(&endpoint, "gantry-interruptions-receipts").await;
        assert_eq!(
            q.delete(&url, &["not-a-receipt".to_string()])
                .await
                .unwrap(),
            1
        );
    }
}

// =================================================================================================
// Full-loop simulations against moto (`gantry demo --cloud ec2`).
//
// The provisioner, lifecycle controller, fake kubelet and leak check of `Simulation` all use the
// real EC2 provider over HTTP (through the proxy, which logs and injects faults), with the
// scheduler stand-in calling the real HTTPS extender. The demo's own set-up creates the VPC,
// subnets and security group the scenario's NodeClass selects, and maps its AMI alias to moto's
// AL2023 images. moto's instance list is cross-checked independently of the provider.
// =================================================================================================
mod full_loop {
    use std::collections::{BTreeMap, BTreeSet};
    use std::time::{Duration, Instant};

    use aws_sdk_ec2::types::Filter;
    use gantry::cloud::command::Ec2EndpointArgs;
    use gantry::kube::crd::NodeClaim;
    use gantry::model::labels::NODECLAIM;
    use gantry::sim::demo::{DemoArgs, DemoCloud, DemoReport, Simulation};
    use gantry::sim::scenario;

    use super::moto;
    use super::proxy::{Fault, Proxy};

    /// About 110 pods over a general pool (spot and on-demand, both architectures) and a tainted
    /// on-demand GPU pool; the NodeClass selects by the test's own discovery tag.
    fn scenario_yaml(name: &str) -> String {
        format!(
            r#"
apiVersion: gantry.dev/v1
kind: EC2NodeClass
metadata: {{name: {name}}}
spec:
  subnetSelectorTerms: [{{tags: {{karpenter.sh/discovery: {name}}}}}]
  securityGroupSelectorTerms: [{{tags: {{karpenter.sh/discovery: {name}}}}}]
  amiSelectorTerms: [{{alias: al2023@latest}}]
  instanceProfile: demo-node
---
apiVersion: gantry.dev/v1
kind: NodePool
metadata: {{name: general}}
spec:
  weight: 50
  template:
    spec:
      nodeClassRef: {{group: gantry.dev, kind: EC2NodeClass, name: {name}}}
      requirements:
        - {{key: gantry.dev/capacity-type, operator: In, values: [spot, on-demand]}}
        - {{key: kubernetes.io/arch, operator: In, values: [amd64, arm64]}}
        - {{key: gantry.dev/instance-gpu-count, operator: In, values: ["0"]}}
---
apiVersion: gantry.dev/v1
kind: NodePool
metadata: {{name: gpu}}
spec:
  weight: 10
  template:
    spec:
      nodeClassRef: {{group: gantry.dev, kind: EC2NodeClass, name: {name}}}
      requirements:
        - {{key: gantry.dev/capacity-type, operator: In, values: [on-demand]}}
        - {{key: gantry.dev/instance-gpu-count, operator: Gt, values: ["0"]}}
        - {{key: kubernetes.io/arch, operator: In, values: [amd64]}}
      taints: [{{key: nvidia.com/gpu, value: "true", effect: NoSchedule}}]
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {{name: agent, namespace: kube-system}}
spec:
  selector: {{matchLabels: {{app: agent}}}}
  template:
    metadata: {{labels: {{app: agent}}}}
    spec:
      tolerations: [{{operator: Exists}}]
      containers: [{{name: a, image: a, resources: {{requests: {{cpu: 50m, memory: 64Mi}}}}}}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: shop}}
spec:
  replicas: 60
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers: [{{name: web, image: web, resources: {{requests: {{cpu: 250m, memory: 512Mi}}}}}}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: api, namespace: shop}}
spec:
  replicas: 30
  template:
    metadata: {{labels: {{app: api}}}}
    spec:
      topologySpreadConstraints:
        - {{maxSkew: 1, topologyKey: topology.kubernetes.io/zone, whenUnsatisfiable: DoNotSchedule, labelSelector: {{matchLabels: {{app: api}}}}}}
      containers: [{{name: api, image: api, resources: {{requests: {{cpu: 500m, memory: 1Gi}}}}}}]
---
apiVersion: batch/v1
kind: Job
metadata: {{name: crunch, namespace: batch}}
spec:
  parallelism: 16
  template:
    spec:
      containers: [{{name: c, image: c, resources: {{requests: {{cpu: "2", memory: 4Gi}}}}}}]
---
apiVersion: batch/v1
kind: Job
metadata: {{name: train, namespace: ml}}
spec:
  parallelism: 4
  template:
    spec:
      tolerations: [{{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}}]
      containers: [{{name: t, image: t, resources: {{requests: {{cpu: "2", memory: 8Gi}}, limits: {{nvidia.com/gpu: "1"}}}}}}]
"#
        )
    }

    fn args(name: &str, endpoint: &str) -> DemoArgs {
        DemoArgs {
            cloud: DemoCloud::Ec2,
            ec2: Ec2EndpointArgs {
                ec2_endpoint: Some(endpoint.to_string()),
                region: "us-east-1".to_string(),
            },
            cluster_name: name.to_string(),
            max_time: Duration::from_secs(1200),
            ..Default::default()
        }
    }

    /// One instance as moto describes it (not through the provider under test).
    #[derive(Debug)]
    struct MotoInstance {
        id: String,
        state: String,
        nodeclaim: Option<String>,
    }

    /// Every instance moto holds with this cluster's ownership tag, terminated ones included.
    async fn moto_instances(moto_url: &str, cluster: &str) -> Vec<MotoInstance> {
        let raw = super::provider(&format!("{cluster}-audit"), moto_url, "audit");
        let reservations = raw
            .client()
            .describe_instances()
            .filters(
                Filter::builder()
                    .name(format!("tag:kubernetes.io/cluster/{cluster}"))
                    .values("owned")
                    .build(),
            )
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .unwrap();
        reservations
            .iter()
            .flat_map(|r| r.instances())
            .map(|i| MotoInstance {
                id: i.instance_id().unwrap().to_string(),
                state: i
                    .state()
                    .and_then(|s| s.name())
                    .map(|n| n.as_str().to_string())
                    .unwrap_or_default(),
                nodeclaim: i
                    .tags()
                    .iter()
                    .find(|t| t.key() == Some(NODECLAIM))
                    .and_then(|t| t.value())
                    .map(ToString::to_string),
            })
            .collect()
    }

    /// Runs the scenario to the end; `each_tick` may restart controllers.
    async fn run(
        name: &str,
        proxy: &Proxy,
        mut each_tick: impl FnMut(&mut Simulation, usize),
    ) -> (DemoReport, Vec<NodeClaim>, BTreeSet<String>) {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let s = scenario::parse(&scenario_yaml(name)).unwrap();
        let mut sim = Simulation::start(&s, &args(name, &proxy.url), None)
            .await
            .unwrap();
        for tick in 0.. {
            each_tick(&mut sim, tick);
            if sim.step().await || sim.now >= sim.deadline {
                break;
            }
            sim.advance();
        }
        let cluster = sim.cluster.clone();
        let report = sim.finish().await;
        let nodes: BTreeSet<String> = cluster.read(|st| {
            st.nodes
                .values()
                .filter_map(|n| n.spec.as_ref()?.provider_id.clone())
                .collect()
        });
        (report, cluster.nodeclaims(), nodes)
    }

    /// The invariants both runs must keep, checked against moto's own instance list.
    async fn assert_invariants(
        moto_url: &str,
        name: &str,
        proxy: &Proxy,
        report: &DemoReport,
        claims: &[NodeClaim],
        node_provider_ids: &BTreeSet<String>,
    ) {
        assert_eq!(report.pods_bound, report.pods_total, "{report:?}");
        assert!(report.pods_total > 100, "{report:?}");
        assert_eq!(report.leaked_instances, 0, "{report:?}");
        assert_eq!(report.pods_bound_to_gated_nodes, 0, "{report:?}");
        assert!(report.nodes > 0 && report.cost_per_hour > 0.0, "{report:?}");
        // Nodes are priced from the embedded table, not moto's fake spot prices: the cost cannot
        // fall below the LP lower bound (it did when moto's 0.00001 spot price leaked through).
        assert!(
            report.cost_per_hour >= report.lower_bound_per_hour * 0.99
                && report.cost_per_hour <= report.lower_bound_per_hour * 2.0,
            "{report:?}"
        );
        assert!(
            report
                .nodes_by_type
                .keys()
                .any(|k| k.starts_with('g') || k.starts_with('p')),
            "no GPU node: {:?}",
            report.nodes_by_type
        );

        let instances = moto_instances(moto_url, name).await;
        let claim_names: BTreeSet<&str> = claims
            .iter()
            .filter_map(|c| c.metadata.name.as_deref())
            .collect();
        let alive: Vec<&MotoInstance> = instances
            .iter()
            .filter(|i| i.state == "running" || i.state == "pending")
            .collect();
        // Every live tagged instance has a NodeClaim (moto's view, not the provider's).
        for i in &alive {
            let owner = i.nodeclaim.as_deref().unwrap_or("<none>");
            assert!(
                claim_names.contains(owner),
                "live instance {} belongs to no nodeclaim ({owner})",
                i.id
            );
        }
        // No claim ever got two instances, terminated ones included.
        let mut per_claim: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for i in &instances {
            per_claim
                .entry(i.nodeclaim.as_deref().unwrap_or("<none>"))
                .or_default()
                .push(&i.id);
        }
        for (claim, ids) in &per_claim {
            assert_eq!(ids.len(), 1, "nodeclaim {claim} got instances {ids:?}");
        }
        // Each NodeClaim has exactly one live instance, the one its status records, and a Node.
        for c in claims {
            let name = c.metadata.name.as_deref().unwrap();
            let live: Vec<&&MotoInstance> = alive
                .iter()
                .filter(|i| i.nodeclaim.as_deref() == Some(name))
                .collect();
            assert_eq!(
                live.len(),
                1,
                "nodeclaim {name} has live instances {live:?}"
            );
            let pid = c
                .status
                .as_ref()
                .and_then(|s| s.provider_id.clone())
                .unwrap_or_default();
            assert!(
                pid.ends_with(&live[0].id),
                "{name}: {pid} vs {}",
                live[0].id
            );
            assert!(node_provider_ids.contains(&pid), "no Node for {pid}");
        }
        assert_eq!(claims.len(), report.nodes);
        // Every Node the fake kubelet registered is a live moto instance.
        for pid in node_provider_ids {
            assert!(
                alive.iter().any(|i| pid.ends_with(&i.id)),
                "Node for {pid}, which moto does not run"
            );
        }
        // The user data of every launch template registers the node behind the two gates.
        let templates = proxy.calls("CreateLaunchTemplate");
        assert!(!templates.is_empty());
        use base64::Engine as _;
        for t in &templates {
            let ud = t.params.get("LaunchTemplateData.UserData").unwrap();
            let ud = base64::engine::general_purpose::STANDARD
                .decode(ud)
                .unwrap();
            let ud = String::from_utf8(ud).unwrap();
            assert!(
                ud.contains("gantry.dev/unregistered") && ud.contains("gantry.dev/initializing"),
                "{ud}"
            );
            assert!(ud.contains(&format!("name: {name}")), "{ud}");
        }
        // Only actions the IAM policy grants, plus the demo's own set-up calls.
        for l in proxy.log() {
            assert!(
                gantry::cloud::ec2::API_ACTIONS.contains(&l.action.as_str())
                    || gantry::sim::ec2::SETUP_ACTIONS.contains(&l.action.as_str()),
                "{} is neither in the IAM policy nor a set-up call",
                l.action
            );
        }
    }

    #[tokio::test]
    async fn demo_setup_is_idempotent_and_terminates_leftovers() {
        use gantry::cloud::CloudProvider as _;
        use gantry::sim::ec2::{DemoEc2Settings, MOTO_AL2023_IMAGES, connect, prepare};
        let Some(url) = moto::url() else { return };
        let name = "demosetup";
        let proxy = Proxy::start(&url).await;
        let ec2 = connect(&DemoEc2Settings {
            endpoint: Some(proxy.url.clone()),
            region: "us-east-1".to_string(),
            cluster_name: name.to_string(),
            cluster_ca_pem: "-----BEGIN CERTIFICATE-----".to_string(),
        })
        .unwrap();
        let s = scenario::parse(&scenario_yaml(name)).unwrap();
        let zones: BTreeSet<String> = super::ZONES.iter().map(|z| z.to_string()).collect();
        let (classes, first) = prepare(&ec2, &s.nodeclasses, &zones).await.unwrap();
        assert_eq!(first.vpcs.len(), 1);
        assert_eq!(first.subnets.len(), 3);
        assert_eq!(first.security_groups.len(), 1);
        assert_eq!(first.aliases_mapped, 1);
        assert_eq!(
            classes[0].spec.ami_selector_terms[0].name.as_deref(),
            Some(MOTO_AL2023_IMAGES)
        );
        // What was created is what the NodeClass selects: it resolves to a subnet per zone,
        // the group, and an AMI for each architecture.
        let r = ec2.resolve_node_class(&classes[0]).await.unwrap();
        assert_eq!(r.subnet_per_zone().len(), 3);
        assert_eq!(r.security_groups[0].id, first.security_groups[0]);
        assert_eq!(r.amis.len(), 2, "{:?}", r.amis);

        // A second run creates nothing, and terminates what an earlier run left alive.
        let leftover = ec2
            .create(
                &super::claim("left-over", &["m5.large"], &["on-demand"]),
                &classes[0],
            )
            .await
            .unwrap();
        let (_, second) = prepare(&ec2, &s.nodeclasses, &zones).await.unwrap();
        assert!(
            second.vpcs.is_empty()
                && second.subnets.is_empty()
                && second.security_groups.is_empty(),
            "{second:?}"
        );
        assert_eq!(second.leftovers_terminated, 1);
        assert!(ec2.list().await.unwrap().is_empty());
        assert!(matches!(
            ec2.get(&leftover.provider_id).await,
            Err(gantry::cloud::CloudError::NotFound(_))
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn full_loop_binds_every_pod_on_moto_without_leaks() {
        let Some(url) = moto::url() else { return };
        let name = "fullloop";
        let proxy = Proxy::start(&url).await;
        let started = Instant::now();
        let (report, claims, nodes) = run(name, &proxy, |_, _| {}).await;
        eprintln!(
            "full loop on moto: {} pods, {} nodes, {:.0} s simulated, {:.1} s wall ({} EC2 calls: {} CreateFleet, {} DescribeInstances)",
            report.pods_total,
            report.nodes,
            report.simulated_seconds,
            started.elapsed().as_secs_f64(),
            proxy.log().len(),
            proxy.calls("CreateFleet").len(),
            proxy.calls("DescribeInstances").len(),
        );
        assert_invariants(&url, name, &proxy, &report, &claims, &nodes).await;
        // The demo created the subnets and security group the NodeClass selects.
        for action in ["CreateVpc", "CreateSubnet", "CreateSecurityGroup"] {
            assert!(!proxy.calls(action).is_empty(), "no {action}");
        }
        // Without faults, one CreateFleet per NodeClaim.
        assert_eq!(proxy.calls("CreateFleet").len(), claims.len());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn full_loop_survives_restarts_and_lost_replies_on_moto() {
        let Some(url) = moto::url() else { return };
        let name = "fullcrash";
        let proxy = Proxy::start(&url).await;
        // Launches whose reply is lost after moto launched (adoption by tag must find them),
        // launches that never reach moto, and throttled listings (kubelet, GC, adoption checks).
        // Injected once the demo's set-up is done, so they hit the loops, not the set-up.
        let faults = proxy.clone();
        let started = Instant::now();
        let mut restarts = 0;
        let (report, claims, nodes) = run(name, &proxy, |sim, tick| {
            if tick == 0 {
                faults.fail("CreateFleet", Fault::LostReply, 4);
                faults.fail("CreateFleet", Fault::Bare500, 2);
                faults.fail(
                    "DescribeInstances",
                    Fault::Error {
                        status: 503,
                        code: "RequestLimitExceeded",
                    },
                    6,
                );
            }
            // Crash and restart mid-burst: batches, in-flight launches and GC sightings are lost.
            if tick > 0 && tick < 60 && tick % 2 == 0 {
                sim.restart_controllers();
                restarts += 1;
            }
        })
        .await;
        eprintln!(
            "full loop on moto with {restarts} restarts: {} pods, {} nodes, {:.1} s wall",
            report.pods_total,
            report.nodes,
            started.elapsed().as_secs_f64()
        );
        assert!(restarts >= 20, "{restarts}");
        let faulted = proxy.log().iter().filter(|l| l.faulted).count();
        assert_eq!(faulted, 12, "every injected fault was hit");
        assert_invariants(&url, name, &proxy, &report, &claims, &nodes).await;
    }
}
