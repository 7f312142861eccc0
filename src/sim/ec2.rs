//! `gantry demo --cloud ec2`: the demo's controllers launch through the real EC2 provider
//! (aws-sdk-ec2 over HTTP) into an EC2-compatible test endpoint such as moto.
//!
//! ```text
//! provisioner / lifecycle / fake kubelet / leak check
//!         │ CloudProvider
//!         ▼
//! DemoEc2Cloud ── create, delete, get, list ──▶ Ec2Provider ──HTTP──▶ moto
//!         └── catalog: what EC2 sells (types × zones × capacity types, availability and back-off)
//!                      priced from the embedded table, not moto's fake spot prices
//! ```
//!
//! moto starts empty and lacks what a real account has, so [`prepare`] creates what the scenario's
//! EC2NodeClasses select (a VPC, a subnet per zone, security groups), maps `alias` AMI terms to
//! moto's own Amazon-owned AL2023 images, and terminates live instances a previous run with the same
//! cluster name left behind. Product code is not changed for moto: this module is the harness.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use aws_sdk_ec2::types::{Filter, ResourceType, Tag, TagSpecification};

use crate::cloud::ec2::nodeclass::tag_filters;
use crate::cloud::ec2::{Ec2Config, Ec2Provider};
use crate::cloud::{CloudError, CloudProvider, Instance};
use crate::kube::crd::{AmiSelectorTerm, EC2NodeClass, NodeClaim};
use crate::model::catalog::spot_price_model;
use crate::model::{CapacityType, Catalog, InstanceType};

/// The cluster name the demo tags its instances with unless told otherwise.
pub const DEFAULT_CLUSTER_NAME: &str = "gantry-demo";

/// The API server URL written into the nodes' user data; the simulated cluster has no address,
/// and nothing ever boots from this user data.
pub const DEMO_CLUSTER_ENDPOINT: &str = "https://api.gantry-demo.invalid";

/// moto's Amazon-owned AL2023 images (both architectures) that stand in for the EKS-optimized
/// images an `alias` term selects, which moto does not have.
pub const MOTO_AL2023_IMAGES: &str = "al2023-ami-2023*-kernel-6.1-*";

/// Tag on everything [`prepare`] creates, valued with the cluster name, so it can be found.
pub const TAG_DEMO: &str = "gantry.dev/demo";

/// EC2 actions the demo's set-up sends besides the provider's own (`ec2::API_ACTIONS`); they are
/// not in the IAM policy because `serve` never sends them.
pub const SETUP_ACTIONS: &[&str] = &[
    "CreateSecurityGroup",
    "CreateSubnet",
    "CreateVpc",
    "DescribeImages",
    "DescribeSecurityGroups",
    "DescribeSubnets",
];

/// Where the demo's EC2 is and what it calls its cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct DemoEc2Settings {
    /// The endpoint (moto); required, so the demo never launches into a real account by accident.
    pub endpoint: Option<String>,
    /// AWS region.
    pub region: String,
    /// Cluster name: the ownership tag on every instance.
    pub cluster_name: String,
    /// The CA bundle (PEM) written into the user data.
    pub cluster_ca_pem: String,
}

/// The EC2 provider with the embedded catalog's prices; everything else is the provider's.
pub struct DemoEc2Cloud {
    inner: Arc<Ec2Provider>,
    embedded: Arc<Catalog>,
}

impl DemoEc2Cloud {
    /// Wraps a provider; `embedded` supplies instance facts and prices.
    pub fn new(inner: Arc<Ec2Provider>, embedded: Arc<Catalog>) -> Self {
        DemoEc2Cloud { inner, embedded }
    }

    /// The provider underneath (for tests and set-up).
    pub fn provider(&self) -> &Ec2Provider {
        &self.inner
    }
}

#[async_trait::async_trait]
impl CloudProvider for DemoEc2Cloud {
    async fn create(
        &self,
        claim: &NodeClaim,
        node_class: &EC2NodeClass,
    ) -> Result<Instance, CloudError> {
        // The provider prices the instance from its own catalog, i.e. moto's fake spot price.
        let mut inst = self.inner.create(claim, node_class).await?;
        inst.price = embedded_price(
            &self.embedded,
            &inst.instance_type,
            &inst.zone,
            inst.capacity_type,
        );
        Ok(inst)
    }

    async fn delete(&self, provider_id: &str) -> Result<(), CloudError> {
        self.inner.delete(provider_id).await
    }

    async fn get(&self, provider_id: &str) -> Result<Instance, CloudError> {
        self.inner.get(provider_id).await
    }

    async fn list(&self) -> Result<Vec<Instance>, CloudError> {
        self.inner.list().await
    }

    async fn collect_unused(&self) -> Result<usize, CloudError> {
        self.inner.collect_unused().await
    }

    async fn catalog(&self) -> Result<Arc<Catalog>, CloudError> {
        let sold = self.inner.catalog().await?;
        Ok(Arc::new(priced_from(&self.embedded, &sold)))
    }
}

/// The embedded price of an offering: the table's on-demand price, or its spot price in that
/// zone (the spot price model for a zone it does not list); `None` for a type it does not know.
pub fn embedded_price(
    embedded: &Catalog,
    instance_type: &str,
    zone: &str,
    capacity_type: CapacityType,
) -> Option<f64> {
    let e = embedded.get(instance_type)?;
    Some(match capacity_type {
        CapacityType::OnDemand => e.on_demand_price,
        CapacityType::Spot => e
            .offerings
            .iter()
            .find(|x| x.zone == zone && x.capacity_type == CapacityType::Spot)
            .map_or_else(
                || spot_price_model(&e.name, e.gpus, zone, e.on_demand_price),
                |x| x.price,
            ),
    })
}

/// What EC2 sells (`sold`: types, zones, capacity types, availability including back-off),
/// with instance facts and prices from `embedded`.
///
/// Types the embedded table does not know are left out. A spot offering in a zone the embedded
/// catalog does not list (another region) gets the documented spot price model.
pub fn priced_from(embedded: &Catalog, sold: &Catalog) -> Catalog {
    let mut types: Vec<InstanceType> = Vec::with_capacity(sold.types.len());
    for s in &sold.types {
        let Some(e) = embedded.get(&s.name) else {
            continue;
        };
        let mut t = e.clone();
        t.offerings = s
            .offerings
            .iter()
            .filter_map(|o| {
                let mut o = o.clone();
                o.price = embedded_price(embedded, &s.name, &o.zone, o.capacity_type)?;
                Some(o)
            })
            .collect();
        if !t.offerings.is_empty() {
            types.push(t);
        }
    }
    types.sort_by(|a, b| a.name.cmp(&b.name));
    Catalog {
        types,
        region: sold.region.clone(),
    }
}

/// What [`prepare`] did, for the progress line and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Prepared {
    /// VPCs created.
    pub vpcs: Vec<String>,
    /// Subnets created.
    pub subnets: Vec<String>,
    /// Security groups created.
    pub security_groups: Vec<String>,
    /// `alias` AMI terms replaced by moto's AL2023 images.
    pub aliases_mapped: usize,
    /// Live instances of an earlier run with this cluster name, terminated.
    pub leftovers_terminated: usize,
}

impl Prepared {
    /// One line for stderr.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "ec2 set-up: created {} VPC(s), {} subnet(s), {} security group(s)",
            self.vpcs.len(),
            self.subnets.len(),
            self.security_groups.len()
        );
        if self.aliases_mapped > 0 {
            s.push_str(&format!(
                "; {} AMI alias term(s) mapped to {MOTO_AL2023_IMAGES} owned by amazon (the endpoint has no EKS-optimized AMIs)",
                self.aliases_mapped
            ));
        }
        if self.leftovers_terminated > 0 {
            s.push_str(&format!(
                "; terminated {} live instance(s) left by an earlier run",
                self.leftovers_terminated
            ));
        }
        s
    }
}

/// Builds the provider for the demo: the endpoint is required, credentials are
/// `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` when both are set, dummy ones otherwise (moto
/// accepts any).
///
/// # Errors
/// No endpoint given.
pub fn connect(settings: &DemoEc2Settings) -> Result<Ec2Provider, String> {
    let Some(endpoint) = settings.endpoint.clone().filter(|e| !e.is_empty()) else {
        return Err(
            "--cloud ec2 needs --ec2-endpoint (e.g. moto at http://127.0.0.1:5000): the demo \
             creates a VPC and launches a node per NodeClaim, so it only runs against a test endpoint"
                .to_string(),
        );
    };
    let mut config = Ec2Config::new(&settings.region, &settings.cluster_name);
    config.endpoint = Some(endpoint);
    config.cluster_endpoint = DEMO_CLUSTER_ENDPOINT.to_string();
    config.cluster_ca = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(settings.cluster_ca_pem.as_bytes())
    };
    let (key, secret) = match (
        std::env::var("AWS_ACCESS_KEY_ID"),
        std::env::var("AWS_SECRET_ACCESS_KEY"),
    ) {
        (Ok(k), Ok(s)) if !k.is_empty() && !s.is_empty() => (k, s),
        _ => ("testing".to_string(), "testing".to_string()),
    };
    let conf = config
        .sdk_builder()
        .credentials_provider(aws_sdk_ec2::config::Credentials::new(
            key,
            secret,
            None,
            None,
            "gantry-demo",
        ))
        .build();
    Ok(Ec2Provider::new(
        aws_sdk_ec2::Client::from_conf(conf),
        config,
    ))
}

/// Sets up what the NodeClasses select and returns them as the demo should use them.
///
/// - subnet terms with tags: a subnet in every zone of `zones` that no matching subnet covers
///   (`*` values become the cluster name), in a VPC created for the purpose;
/// - security group terms with tags or a name: a group when none matches;
/// - AMI `alias` terms: replaced by [`MOTO_AL2023_IMAGES`] owned by amazon when the endpoint has
///   no `amazon-eks-node-al2023-*` image (moto has none, and images registered through its API
///   cannot be Amazon-owned); other terms are kept;
/// - terms by id are left as they are (ids cannot be chosen at creation);
/// - live instances tagged with this cluster (an earlier demo run) are terminated, since the
///   simulated cluster starts empty.
///
/// # Errors
/// EC2 calls failing, with the call named.
pub async fn prepare(
    ec2: &Ec2Provider,
    classes: &[EC2NodeClass],
    zones: &BTreeSet<String>,
) -> Result<(Vec<EC2NodeClass>, Prepared), String> {
    let mut setup = Setup {
        ec2,
        done: Prepared::default(),
        vpc: None,
        next_block: 0,
    };
    let mut out = Vec::with_capacity(classes.len());
    let eks_images = setup.has_eks_images().await?;
    for class in classes {
        let mut class = class.clone();
        for term in &class.spec.subnet_selector_terms {
            if term.id.is_none() && !term.tags.is_empty() {
                setup.ensure_subnets(&term.tags, zones).await?;
            }
        }
        for term in &class.spec.security_group_selector_terms {
            if term.id.is_none() && (!term.tags.is_empty() || term.name.is_some()) {
                setup
                    .ensure_security_group(&term.tags, term.name.as_deref())
                    .await?;
            }
        }
        if !eks_images {
            for term in &mut class.spec.ami_selector_terms {
                if term.alias.is_some() {
                    *term = AmiSelectorTerm {
                        name: Some(MOTO_AL2023_IMAGES.to_string()),
                        owner: Some("amazon".to_string()),
                        ..Default::default()
                    };
                    setup.done.aliases_mapped += 1;
                }
            }
        }
        out.push(class);
    }
    let leftovers = ec2.list().await.map_err(|e| e.to_string())?;
    for inst in leftovers.iter().filter(|i| i.state.is_alive()) {
        ec2.delete(&inst.provider_id)
            .await
            .map_err(|e| e.to_string())?;
        setup.done.leftovers_terminated += 1;
    }
    Ok((out, setup.done))
}

/// The zones a catalog offers anything in.
pub fn zones_of(catalog: &Catalog) -> BTreeSet<String> {
    catalog
        .types
        .iter()
        .flat_map(|t| t.offerings.iter().map(|o| o.zone.clone()))
        .collect()
}

struct Setup<'a> {
    ec2: &'a Ec2Provider,
    done: Prepared,
    vpc: Option<String>,
    /// The next /20 block of the current VPC's 10.0.0.0/16.
    next_block: u32,
}

fn tags_with(
    resource: ResourceType,
    tags: &BTreeMap<String, String>,
    cluster: &str,
) -> TagSpecification {
    let mut b = TagSpecification::builder()
        .resource_type(resource)
        .tags(Tag::builder().key(TAG_DEMO).value(cluster).build());
    for (k, v) in tags {
        let v = if v == "*" { cluster } else { v.as_str() };
        b = b.tags(Tag::builder().key(k).value(v).build());
    }
    b.build()
}

impl Setup<'_> {
    fn cluster(&self) -> &str {
        &self.ec2.config().cluster_name
    }

    async fn has_eks_images(&self) -> Result<bool, String> {
        let out = self
            .ec2
            .client()
            .describe_images()
            .owners("amazon")
            .filters(
                Filter::builder()
                    .name("name")
                    .values("amazon-eks-node-al2023-*")
                    .build(),
            )
            .send()
            .await
            .map_err(|e| format!("describe images: {e}"))?;
        Ok(!out.images().is_empty())
    }

    /// A VPC with room for one more /20 subnet.
    async fn vpc_with_room(&mut self) -> Result<(String, String), String> {
        if self.next_block >= 16 {
            self.vpc = None;
        }
        let vpc = match &self.vpc {
            Some(v) => v.clone(),
            None => {
                let cluster = self.cluster().to_string();
                let v = self
                    .ec2
                    .client()
                    .create_vpc()
                    .cidr_block("10.0.0.0/16")
                    .tag_specifications(tags_with(ResourceType::Vpc, &BTreeMap::new(), &cluster))
                    .send()
                    .await
                    .map_err(|e| format!("create vpc: {e}"))?
                    .vpc
                    .and_then(|v| v.vpc_id)
                    .ok_or("create vpc: no id in the reply")?;
                self.done.vpcs.push(v.clone());
                self.vpc = Some(v.clone());
                self.next_block = 0;
                v
            }
        };
        let cidr = format!("10.0.{}.0/20", self.next_block * 16);
        self.next_block += 1;
        Ok((vpc, cidr))
    }

    async fn ensure_subnets(
        &mut self,
        tags: &BTreeMap<String, String>,
        zones: &BTreeSet<String>,
    ) -> Result<(), String> {
        let existing = self
            .ec2
            .client()
            .describe_subnets()
            .set_filters(Some(tag_filters(tags)))
            .send()
            .await
            .map_err(|e| format!("describe subnets: {e}"))?;
        let covered: BTreeSet<String> = existing
            .subnets()
            .iter()
            .filter_map(|s| s.availability_zone().map(ToString::to_string))
            .collect();
        let cluster = self.cluster().to_string();
        for zone in zones.difference(&covered) {
            let (vpc, cidr) = self.vpc_with_room().await?;
            let id = self
                .ec2
                .client()
                .create_subnet()
                .vpc_id(vpc)
                .cidr_block(cidr)
                .availability_zone(zone)
                .tag_specifications(tags_with(ResourceType::Subnet, tags, &cluster))
                .send()
                .await
                .map_err(|e| format!("create subnet in {zone}: {e}"))?
                .subnet
                .and_then(|s| s.subnet_id)
                .ok_or("create subnet: no id in the reply")?;
            self.done.subnets.push(id);
        }
        Ok(())
    }

    async fn ensure_security_group(
        &mut self,
        tags: &BTreeMap<String, String>,
        name: Option<&str>,
    ) -> Result<(), String> {
        let mut filters = tag_filters(tags);
        if let Some(n) = name {
            filters.push(Filter::builder().name("group-name").values(n).build());
        }
        let existing = self
            .ec2
            .client()
            .describe_security_groups()
            .set_filters(Some(filters))
            .send()
            .await
            .map_err(|e| format!("describe security groups: {e}"))?;
        if !existing.security_groups().is_empty() {
            return Ok(());
        }
        let vpc = match &self.vpc {
            Some(v) => v.clone(),
            None => self.vpc_with_room().await?.0,
        };
        let cluster = self.cluster().to_string();
        let group_name = name.map_or_else(
            || format!("{cluster}-nodes-{}", self.done.security_groups.len() + 1),
            ToString::to_string,
        );
        let id = self
            .ec2
            .client()
            .create_security_group()
            .group_name(group_name)
            .description("gantry demo nodes")
            .vpc_id(vpc)
            .tag_specifications(tags_with(ResourceType::SecurityGroup, tags, &cluster))
            .send()
            .await
            .map_err(|e| format!("create security group: {e}"))?
            .group_id
            .ok_or("create security group: no id in the reply")?;
        self.done.security_groups.push(id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priced_from_keeps_what_is_sold_at_embedded_prices() {
        let embedded = Catalog::embedded().unwrap();
        let m5 = embedded.get("m5.large").unwrap().clone();
        // EC2 sells m5.large in two zones, spot at a fake price and one offering backed off,
        // plus a type the embedded table does not know.
        let mut sold_m5 = m5.clone();
        sold_m5.offerings = vec![
            crate::model::Offering {
                zone: "us-east-1a".into(),
                capacity_type: CapacityType::Spot,
                price: 0.00001,
                available: false,
            },
            crate::model::Offering {
                zone: "us-east-1b".into(),
                capacity_type: CapacityType::OnDemand,
                price: 9.0,
                available: true,
            },
            crate::model::Offering {
                zone: "eu-west-1a".into(),
                capacity_type: CapacityType::Spot,
                price: 0.00001,
                available: true,
            },
        ];
        let mut unknown = m5.clone();
        unknown.name = "zz9.plural".into();
        let sold = Catalog {
            types: vec![sold_m5, unknown],
            region: "us-east-1".into(),
        };
        let c = priced_from(&embedded, &sold);
        assert_eq!(c.types.len(), 1);
        let t = &c.types[0];
        assert_eq!(t.name, "m5.large");
        assert_eq!(t.offerings.len(), 3);
        let spot_a = m5
            .offerings
            .iter()
            .find(|o| o.zone == "us-east-1a" && o.capacity_type == CapacityType::Spot)
            .unwrap();
        assert_eq!(t.offerings[0].price, spot_a.price);
        assert!(!t.offerings[0].available, "back-off is kept");
        assert_eq!(t.offerings[1].price, m5.on_demand_price);
        assert_eq!(
            t.offerings[2].price,
            spot_price_model("m5.large", 0, "eu-west-1a", m5.on_demand_price)
        );
        assert_eq!(
            embedded_price(&embedded, "m5.large", "us-east-1a", CapacityType::Spot),
            Some(spot_a.price)
        );
        assert_eq!(
            embedded_price(&embedded, "zz9.plural", "us-east-1a", CapacityType::Spot),
            None
        );
        assert_eq!(
            zones_of(&c),
            BTreeSet::from([
                "eu-west-1a".to_string(),
                "us-east-1a".to_string(),
                "us-east-1b".to_string()
            ])
        );
    }

    #[test]
    fn connect_refuses_without_an_endpoint() {
        let s = DemoEc2Settings {
            endpoint: None,
            region: "us-east-1".into(),
            cluster_name: DEFAULT_CLUSTER_NAME.into(),
            cluster_ca_pem: String::new(),
        };
        let e = connect(&s).unwrap_err();
        assert!(e.contains("--ec2-endpoint"), "{e}");
    }
}
