//! The EC2 catalog: types from DescribeInstanceTypes, zones from DescribeInstanceTypeOfferings,
//! spot prices from DescribeSpotPriceHistory, on-demand prices from the embedded table.
//!
//! Types and zones change rarely (cached 1 h); spot prices move (cached 5 min). The two are
//! composed with the insufficient-capacity back-off on every `catalog()` call, which is cheap.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, LazyLock};

use aws_sdk_ec2::primitives::DateTime;
use aws_sdk_ec2::types::{ArchitectureType, InstanceTypeInfo, LocationType, UsageClassType};

use super::Ec2Provider;
use super::errors::to_cloud_error;
use crate::cloud::CloudError;
use crate::model::catalog::{round_price, split_name, spot_price_model};
use crate::model::{Arch, CapacityType, Catalog, InstanceType, Offering};

/// On-demand prices (and max pods as a fallback) from the embedded table, by type name.
static EMBEDDED: LazyLock<HashMap<String, (f64, u32)>> = LazyLock::new(|| {
    Catalog::embedded()
        .map(|c| {
            c.types
                .into_iter()
                .map(|t| (t.name, (t.on_demand_price, t.max_pods)))
                .collect()
        })
        .unwrap_or_default()
});

/// One instance type as EC2 describes it, before prices.
#[derive(Debug, Clone, PartialEq)]
pub struct TypeInfo {
    /// e.g. `m5.large`.
    pub name: String,
    /// vCPUs.
    pub vcpu: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// GPUs.
    pub gpus: u32,
    /// Architecture.
    pub arch: Arch,
    /// ENIs × (IPv4 per ENI − 1) + 2.
    pub max_pods: u32,
    /// Whether EC2 sells it as spot.
    pub spot: bool,
    /// Zones where it is offered, sorted.
    pub zones: Vec<String>,
}

/// The slow-changing half of the catalog.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TypeTable {
    /// Types sorted by name.
    pub types: Vec<TypeInfo>,
}

/// Latest spot price per (type, zone).
pub type SpotPrices = HashMap<(String, String), f64>;

/// Reads one DescribeInstanceTypes entry; `None` for types Gantry cannot run (no x86_64/arm64).
pub fn type_info(info: &InstanceTypeInfo) -> Option<TypeInfo> {
    let name = info.instance_type()?.as_str().to_string();
    let archs = info
        .processor_info()
        .map(|p| p.supported_architectures())
        .unwrap_or_default();
    let arch = if archs.contains(&ArchitectureType::X8664) {
        Arch::Amd64
    } else if archs.contains(&ArchitectureType::Arm64) {
        Arch::Arm64
    } else {
        return None;
    };
    let vcpu = u32::try_from(info.v_cpu_info()?.default_v_cpus()?).ok()?;
    let memory_mib = u64::try_from(info.memory_info()?.size_in_mib()?).ok()?;
    let gpus = info
        .gpu_info()
        .map(|g| g.gpus().iter().filter_map(|d| d.count()).sum::<i32>())
        .unwrap_or(0);
    let eni_pods = info.network_info().and_then(|n| {
        let enis = n.maximum_network_interfaces()?;
        let ips = n.ipv4_addresses_per_interface()?;
        u32::try_from(enis * (ips - 1) + 2).ok()
    });
    let max_pods = eni_pods
        .or_else(|| EMBEDDED.get(&name).map(|(_, p)| *p))
        .unwrap_or(110);
    Some(TypeInfo {
        spot: info
            .supported_usage_classes()
            .contains(&UsageClassType::Spot),
        name,
        vcpu,
        memory_mib,
        gpus: u32::try_from(gpus).unwrap_or(0),
        arch,
        max_pods,
        zones: Vec::new(),
    })
}

/// Composes types, zones and prices into a catalog. Types without an on-demand price in the
/// embedded table are left out: the planner cannot rank what it cannot price.
pub fn compose(table: &TypeTable, spot: &SpotPrices, region: &str) -> Catalog {
    let mut types = Vec::with_capacity(table.types.len());
    for t in &table.types {
        let Some((on_demand, _)) = EMBEDDED.get(&t.name).copied() else {
            continue;
        };
        if t.zones.is_empty() {
            continue;
        }
        let mut offerings = Vec::with_capacity(t.zones.len() * 2);
        for z in &t.zones {
            offerings.push(Offering {
                zone: z.clone(),
                capacity_type: CapacityType::OnDemand,
                price: on_demand,
                available: true,
            });
            if t.spot {
                let price = spot
                    .get(&(t.name.clone(), z.clone()))
                    .copied()
                    .unwrap_or_else(|| spot_price_model(&t.name, t.gpus, z, on_demand));
                offerings.push(Offering {
                    zone: z.clone(),
                    capacity_type: CapacityType::Spot,
                    price,
                    available: true,
                });
            }
        }
        let (family, size) = split_name(&t.name);
        types.push(InstanceType {
            name: t.name.clone(),
            family,
            size,
            vcpu: t.vcpu,
            memory_mib: t.memory_mib,
            gpus: t.gpus,
            arch: t.arch,
            max_pods: t.max_pods,
            on_demand_price: round_price(on_demand),
            offerings,
        });
    }
    types.sort_by(|a, b| a.name.cmp(&b.name));
    Catalog {
        types,
        region: region.to_string(),
    }
}

impl Ec2Provider {
    /// Loads types and their zones (two paginated calls).
    pub(super) async fn load_type_table(&self) -> Result<Arc<TypeTable>, CloudError> {
        let infos = self
            .client
            .describe_instance_types()
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(to_cloud_error("describe instance types"))?;
        let offerings = self
            .client
            .describe_instance_type_offerings()
            .location_type(LocationType::AvailabilityZone)
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(to_cloud_error("describe instance type offerings"))?;
        let mut zones: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for o in offerings {
            if let (Some(t), Some(z)) = (o.instance_type(), o.location()) {
                zones
                    .entry(t.as_str().to_string())
                    .or_default()
                    .push(z.to_string());
            }
        }
        let mut types: Vec<TypeInfo> = infos
            .iter()
            .filter_map(type_info)
            .map(|mut t| {
                let mut z = zones.remove(&t.name).unwrap_or_default();
                z.sort();
                z.dedup();
                t.zones = z;
                t
            })
            .collect();
        types.sort_by(|a, b| a.name.cmp(&b.name));
        tracing::info!(types = types.len(), "loaded EC2 instance types");
        Ok(Arc::new(TypeTable { types }))
    }

    /// Loads the current Linux spot price per type and zone, keeping the latest of each.
    pub(super) async fn load_spot_prices(&self) -> Result<Arc<SpotPrices>, CloudError> {
        let now = DateTime::from(std::time::SystemTime::now());
        let history = self
            .client
            .describe_spot_price_history()
            .product_descriptions("Linux/UNIX")
            .start_time(now)
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(to_cloud_error("describe spot price history"))?;
        let mut latest: HashMap<(String, String), (i64, f64)> = HashMap::new();
        for p in history {
            let (Some(t), Some(z), Some(price)) = (
                p.instance_type(),
                p.availability_zone(),
                p.spot_price().and_then(|s| s.parse::<f64>().ok()),
            ) else {
                continue;
            };
            if !price.is_finite() || price <= 0.0 {
                continue;
            }
            let at = p.timestamp().map_or(0, |ts| ts.secs());
            let slot = latest
                .entry((t.as_str().to_string(), z.to_string()))
                .or_insert((at, price));
            if at > slot.0 {
                *slot = (at, price);
            }
        }
        Ok(Arc::new(
            latest.into_iter().map(|(k, (_, p))| (k, p)).collect(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_ec2::types::{MemoryInfo, NetworkInfo, ProcessorInfo, VCpuInfo};

    fn info(name: &str) -> InstanceTypeInfo {
        InstanceTypeInfo::builder()
            .instance_type(name.into())
            .processor_info(
                ProcessorInfo::builder()
                    .supported_architectures(ArchitectureType::X8664)
                    .build(),
            )
            .v_cpu_info(VCpuInfo::builder().default_v_cpus(2).build())
            .memory_info(MemoryInfo::builder().size_in_mib(8192).build())
            .network_info(
                NetworkInfo::builder()
                    .maximum_network_interfaces(3)
                    .ipv4_addresses_per_interface(10)
                    .build(),
            )
            .supported_usage_classes(UsageClassType::Spot)
            .supported_usage_classes(UsageClassType::OnDemand)
            .build()
    }

    #[test]
    fn types_compose_with_embedded_prices_and_latest_spot() {
        let mut t = type_info(&info("m5.large")).unwrap();
        assert_eq!(
            (t.vcpu, t.memory_mib, t.max_pods, t.spot),
            (2, 8192, 29, true)
        );
        t.zones = vec!["us-east-1a".into(), "us-east-1b".into()];
        let mut unknown = type_info(&info("zz9.huge")).unwrap();
        unknown.zones = vec!["us-east-1a".into()];
        let table = TypeTable {
            types: vec![t, unknown],
        };
        let spot = SpotPrices::from([(("m5.large".to_string(), "us-east-1a".to_string()), 0.031)]);
        let c = compose(&table, &spot, "us-east-1");
        assert_eq!(c.types.len(), 1, "unpriced types are left out");
        let m5 = c.get("m5.large").unwrap();
        assert_eq!(m5.on_demand_price, 0.096);
        assert_eq!(m5.offerings.len(), 4);
        let spot_a = m5
            .offerings
            .iter()
            .find(|o| o.zone == "us-east-1a" && o.capacity_type == CapacityType::Spot)
            .unwrap();
        assert_eq!(spot_a.price, 0.031);
        let spot_b = m5
            .offerings
            .iter()
            .find(|o| o.zone == "us-east-1b" && o.capacity_type == CapacityType::Spot)
            .unwrap();
        assert_eq!(
            spot_b.price,
            spot_price_model("m5.large", 0, "us-east-1b", 0.096)
        );
    }
}
