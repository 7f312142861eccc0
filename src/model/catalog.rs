//! The instance-type catalog: what can be bought, where, and at what price.
//!
//! The embedded default is `data/ec2-instance-types-us-east-1.csv` (see `data/NOTICE`). Spot prices
//! do not exist in public static data, so the default catalog uses [`spot_price_model`], a documented
//! deterministic model; the EC2 provider replaces it with `DescribeSpotPriceHistory`.

use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::resources::{Resources, names};

/// The embedded default catalog, so `gantry plan` and `gantry demo` work with no AWS account.
pub const EMBEDDED_CSV: &str = include_str!("../../data/ec2-instance-types-us-east-1.csv");

/// The zones of `us-east-1`, where the embedded catalog's offerings live.
pub const US_EAST_1_ZONES: [&str; 6] = [
    "us-east-1a",
    "us-east-1b",
    "us-east-1c",
    "us-east-1d",
    "us-east-1e",
    "us-east-1f",
];

/// The region of the embedded catalog.
pub const DEFAULT_REGION: &str = "us-east-1";

/// Spot or on-demand, the axis along which price and interruption risk differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum CapacityType {
    /// Interruptible, cheaper.
    #[serde(rename = "spot")]
    Spot,
    /// Never interrupted by EC2.
    #[serde(rename = "on-demand")]
    OnDemand,
}

impl CapacityType {
    /// The label value (`spot` / `on-demand`), shared with Karpenter.
    pub fn as_str(self) -> &'static str {
        match self {
            CapacityType::Spot => "spot",
            CapacityType::OnDemand => "on-demand",
        }
    }

    /// Parses the label value.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "spot" => Some(CapacityType::Spot),
            "on-demand" => Some(CapacityType::OnDemand),
            _ => None,
        }
    }
}

impl fmt::Display for CapacityType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// CPU architecture, as the `kubernetes.io/arch` label spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Arch {
    /// x86-64.
    #[serde(rename = "amd64")]
    Amd64,
    /// Graviton.
    #[serde(rename = "arm64")]
    Arm64,
}

impl Arch {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }

    /// Parses the label value (and EC2's `x86_64`).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "amd64" | "x86_64" => Some(Arch::Amd64),
            "arm64" => Some(Arch::Arm64),
            _ => None,
        }
    }
}

/// One place an instance type can be bought: zone × capacity type, with its price.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Offering {
    /// Availability zone, e.g. `us-east-1a`.
    pub zone: String,
    /// Spot or on-demand.
    pub capacity_type: CapacityType,
    /// USD per hour.
    pub price: f64,
    /// False while the offering is backed off after an insufficient-capacity error.
    pub available: bool,
}

/// Identifies an offering across caches and errors (`m5.large/us-east-1a/spot`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct OfferingKey {
    /// Instance type name.
    pub instance_type: String,
    /// Zone.
    pub zone: String,
    /// Capacity type.
    pub capacity_type: CapacityType,
}

impl fmt::Display for OfferingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}",
            self.instance_type, self.zone, self.capacity_type
        )
    }
}

/// An EC2 instance type with everything the planner needs to decide on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceType {
    /// e.g. `m7i.large`.
    pub name: String,
    /// e.g. `m7i`.
    pub family: String,
    /// e.g. `large`.
    pub size: String,
    /// vCPUs.
    pub vcpu: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// GPUs (exposed as `nvidia.com/gpu`).
    pub gpus: u32,
    /// Architecture.
    pub arch: Arch,
    /// Max pods with the VPC CNI (ENIs × (IPs per ENI − 1) + 2).
    pub max_pods: u32,
    /// us-east-1 Linux on-demand USD/hour.
    pub on_demand_price: f64,
    /// Where it can be bought, and for how much.
    pub offerings: Vec<Offering>,
}

/// Root volume size assumed for ephemeral storage when the NodeClass does not say (Karpenter's default).
pub const DEFAULT_ROOT_VOLUME_BYTES: i64 = 20 << 30;

impl InstanceType {
    /// The raw machine capacity, before any reservation.
    pub fn capacity(&self, max_pods_cap: Option<u32>) -> Resources {
        let mut r = Resources {
            cpu: i64::from(self.vcpu) * 1000,
            memory: (self.memory_mib as i64) << 20,
            ephemeral: DEFAULT_ROOT_VOLUME_BYTES,
            pods: i64::from(self.pods_limit(max_pods_cap)),
            extended: Vec::new(),
        };
        if self.gpus > 0 {
            r.set_extended(names::NVIDIA_GPU, i64::from(self.gpus));
        }
        r
    }

    /// Max pods after the NodeClass's `kubelet.maxPods` cap.
    pub fn pods_limit(&self, max_pods_cap: Option<u32>) -> u32 {
        match max_pods_cap {
            Some(cap) => self.max_pods.min(cap),
            None => self.max_pods,
        }
    }

    /// What pods can use: capacity minus EKS kube-reserved CPU and memory and the eviction threshold.
    ///
    /// CPU: 6% of the first core, 1% of the second, 0.5% of cores 3–4, 0.25% of the rest.
    /// Memory: 255 MiB + 11 MiB × max pods, plus 100 MiB for `memory.available` eviction.
    /// Ephemeral storage: 10% for `nodefs.available` eviction.
    pub fn allocatable(&self, max_pods_cap: Option<u32>) -> Resources {
        let mut r = self.capacity(max_pods_cap);
        r.cpu -= kube_reserved_cpu_milli(self.vcpu);
        let pods = i64::from(self.pods_limit(max_pods_cap));
        r.memory -= (255 + 11 * pods + 100) << 20;
        r.ephemeral -= r.ephemeral / 10;
        r.memory = r.memory.max(0);
        r.cpu = r.cpu.max(0);
        r
    }

    /// The cheapest available offering matching a filter, for right-sizing.
    pub fn cheapest_offering<F>(&self, mut allowed: F) -> Option<&Offering>
    where
        F: FnMut(&Offering) -> bool,
    {
        self.offerings
            .iter()
            .filter(|o| o.available && allowed(o))
            .min_by(|a, b| a.price.total_cmp(&b.price))
    }

    /// Node labels that describe this type, so requirements and hints can select on them.
    pub fn labels(&self) -> Vec<(&'static str, String)> {
        vec![
            (super::labels::INSTANCE_TYPE, self.name.clone()),
            (super::labels::INSTANCE_FAMILY, self.family.clone()),
            (super::labels::INSTANCE_SIZE, self.size.clone()),
            (super::labels::INSTANCE_CPU, self.vcpu.to_string()),
            (super::labels::INSTANCE_MEMORY, self.memory_mib.to_string()),
            (super::labels::INSTANCE_GPU_COUNT, self.gpus.to_string()),
            (super::labels::ARCH, self.arch.as_str().to_string()),
            (super::labels::OS, "linux".to_string()),
        ]
    }
}

/// EKS's kube-reserved CPU in millicores for a machine with `vcpu` cores.
pub fn kube_reserved_cpu_milli(vcpu: u32) -> i64 {
    // Per-core reservation in hundredths of a millicore, so 0.25% stays exact.
    let mut hundredths: i64 = 0;
    for core in 1..=i64::from(vcpu) {
        hundredths += match core {
            1 => 6000,    // 6% of 1000m = 60m
            2 => 1000,    // 1% = 10m
            3 | 4 => 500, // 0.5% = 5m
            _ => 250,     // 0.25% = 2.5m
        };
    }
    (hundredths + 99) / 100
}

/// The spot price model for offline catalogs: deterministic, documented, and not a fact.
///
/// Spot sells at a discount that varies by type and zone. The model draws a discount in
/// 55–75% for general types and 35–55% for GPU types (which are scarcer on the spot market) from a
/// hash of `(type, zone)`, so every run sees the same prices and zones differ from each other.
/// Real prices come from `DescribeSpotPriceHistory`.
pub fn spot_price_model(instance_type: &str, gpus: u32, zone: &str, on_demand: f64) -> f64 {
    let h = fnv1a(
        instance_type.as_bytes(),
        fnv1a(zone.as_bytes(), 0xcbf2_9ce4_8422_2325),
    );
    let frac = (h % 10_000) as f64 / 10_000.0; // [0, 1)
    let discount = if gpus > 0 {
        0.35 + 0.20 * frac
    } else {
        0.55 + 0.20 * frac
    };
    round_price(on_demand * (1.0 - discount))
}

/// Rounds to a tenth of a thousandth of a dollar, as EC2 quotes prices.
pub fn round_price(p: f64) -> f64 {
    (p * 10_000.0).round() / 10_000.0
}

fn fnv1a(bytes: &[u8], mut h: u64) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Why a catalog CSV could not be read; names the line and column.
#[derive(Debug, Error)]
pub enum CatalogError {
    /// The header lacks a required column.
    #[error("catalog header lacks column {0:?}")]
    MissingColumn(&'static str),
    /// A row has a bad value.
    #[error("catalog line {line}: column {column:?} has bad value {value:?}")]
    BadValue {
        /// 1-based line number.
        line: usize,
        /// Column name.
        column: &'static str,
        /// The text found.
        value: String,
    },
    /// No rows at all.
    #[error("catalog has no instance types")]
    Empty,
}

/// The set of instance types the planner chooses from; built once, read by many.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Catalog {
    /// All instance types, sorted by name.
    pub types: Vec<InstanceType>,
    /// Region the offerings are in.
    pub region: String,
}

impl Catalog {
    /// The embedded us-east-1 catalog with offerings in every zone, both capacity types.
    ///
    /// # Errors
    /// Only if the embedded file is corrupt, which a unit test rules out.
    pub fn embedded() -> Result<Catalog, CatalogError> {
        Catalog::from_csv(EMBEDDED_CSV, &US_EAST_1_ZONES)
    }

    /// Parses a CSV with the columns of the shared data file and offers each type in `zones`,
    /// on-demand at the table price and spot at [`spot_price_model`].
    ///
    /// # Errors
    /// [`CatalogError`] naming the line and column of the first bad value.
    pub fn from_csv(text: &str, zones: &[&str]) -> Result<Catalog, CatalogError> {
        let mut lines = text.lines().enumerate();
        let header: Vec<&str> = lines
            .next()
            .map(|(_, h)| h.split(',').map(str::trim).collect())
            .unwrap_or_default();
        let col = |name: &'static str| {
            header
                .iter()
                .position(|h| *h == name)
                .ok_or(CatalogError::MissingColumn(name))
        };
        let c_name = col("instance_type")?;
        let c_vcpu = col("vcpu")?;
        let c_mem = col("memory_mib")?;
        let c_gpus = col("gpus")?;
        let c_arch = col("arch")?;
        let c_pods = col("max_pods")?;
        let c_price = col("on_demand_usd_per_hour")?;
        let mut types = Vec::new();
        for (idx, line) in lines {
            if line.trim().is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            let line_no = idx + 1;
            let get = |c: usize, column: &'static str| {
                fields
                    .get(c)
                    .copied()
                    .ok_or_else(|| CatalogError::BadValue {
                        line: line_no,
                        column,
                        value: String::new(),
                    })
            };
            let bad = |column: &'static str, value: &str| CatalogError::BadValue {
                line: line_no,
                column,
                value: value.to_string(),
            };
            let name = get(c_name, "instance_type")?;
            if name.is_empty() {
                return Err(bad("instance_type", name));
            }
            let vcpu_s = get(c_vcpu, "vcpu")?;
            let vcpu: u32 = vcpu_s.parse().map_err(|_| bad("vcpu", vcpu_s))?;
            let mem_s = get(c_mem, "memory_mib")?;
            let memory_mib: u64 = mem_s.parse().map_err(|_| bad("memory_mib", mem_s))?;
            let gpus_s = get(c_gpus, "gpus")?;
            let gpus: u32 = gpus_s.parse().map_err(|_| bad("gpus", gpus_s))?;
            let arch_s = get(c_arch, "arch")?;
            let arch = Arch::parse(arch_s).ok_or_else(|| bad("arch", arch_s))?;
            let pods_s = get(c_pods, "max_pods")?;
            let max_pods: u32 = pods_s.parse().map_err(|_| bad("max_pods", pods_s))?;
            let price_s = get(c_price, "on_demand_usd_per_hour")?;
            let on_demand_price: f64 = price_s
                .parse()
                .ok()
                .filter(|p: &f64| p.is_finite() && *p > 0.0)
                .ok_or_else(|| bad("on_demand_usd_per_hour", price_s))?;
            types.push(InstanceType::with_default_offerings(
                name,
                vcpu,
                memory_mib,
                gpus,
                arch,
                max_pods,
                on_demand_price,
                zones,
            ));
        }
        if types.is_empty() {
            return Err(CatalogError::Empty);
        }
        types.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Catalog {
            types,
            region: DEFAULT_REGION.to_string(),
        })
    }

    /// Looks a type up by name.
    pub fn get(&self, name: &str) -> Option<&InstanceType> {
        self.types
            .binary_search_by(|t| t.name.as_str().cmp(name))
            .ok()
            .and_then(|i| self.types.get(i))
    }

    /// Marks offerings unavailable (insufficient-capacity back-off), leaving the rest untouched.
    pub fn mark_unavailable(&mut self, keys: &[OfferingKey]) {
        let mut by_type: HashMap<&str, Vec<&OfferingKey>> = HashMap::new();
        for k in keys {
            by_type.entry(k.instance_type.as_str()).or_default().push(k);
        }
        for t in &mut self.types {
            if let Some(ks) = by_type.get(t.name.as_str()) {
                for o in &mut t.offerings {
                    if ks
                        .iter()
                        .any(|k| k.zone == o.zone && k.capacity_type == o.capacity_type)
                    {
                        o.available = false;
                    }
                }
            }
        }
    }
}

impl InstanceType {
    /// Builds a type with offerings in every given zone: on-demand at `on_demand_price`, spot modelled.
    #[allow(clippy::too_many_arguments)]
    pub fn with_default_offerings(
        name: &str,
        vcpu: u32,
        memory_mib: u64,
        gpus: u32,
        arch: Arch,
        max_pods: u32,
        on_demand_price: f64,
        zones: &[&str],
    ) -> InstanceType {
        let (family, size) = split_name(name);
        let mut offerings = Vec::with_capacity(zones.len() * 2);
        for z in zones {
            offerings.push(Offering {
                zone: (*z).to_string(),
                capacity_type: CapacityType::OnDemand,
                price: on_demand_price,
                available: true,
            });
            offerings.push(Offering {
                zone: (*z).to_string(),
                capacity_type: CapacityType::Spot,
                price: spot_price_model(name, gpus, z, on_demand_price),
                available: true,
            });
        }
        InstanceType {
            name: name.to_string(),
            family,
            size,
            vcpu,
            memory_mib,
            gpus,
            arch,
            max_pods,
            on_demand_price,
            offerings,
        }
    }
}

/// Splits `m7i.large` into (`m7i`, `large`); a name without a dot is all family.
pub fn split_name(name: &str) -> (String, String) {
    match name.split_once('.') {
        Some((f, s)) => (f.to_string(), s.to_string()),
        None => (name.to_string(), String::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_catalog_loads_every_row() {
        let c = Catalog::embedded().unwrap();
        assert_eq!(c.types.len(), 1095);
        let m5 = c.get("m5.large").unwrap();
        assert_eq!(m5.vcpu, 2);
        assert_eq!(m5.memory_mib, 8192);
        assert_eq!(m5.family, "m5");
        assert_eq!(m5.offerings.len(), 12);
        let spot = m5
            .cheapest_offering(|o| o.capacity_type == CapacityType::Spot)
            .unwrap();
        assert!(spot.price < m5.on_demand_price * 0.46);
        assert!(c.types.iter().any(|t| t.gpus > 0 && t.arch == Arch::Amd64));
    }

    #[test]
    fn eks_reservations() {
        assert_eq!(kube_reserved_cpu_milli(1), 60);
        assert_eq!(kube_reserved_cpu_milli(2), 70);
        assert_eq!(kube_reserved_cpu_milli(4), 80);
        // 8 cores: 60 + 10 + 5 + 5 + 4 × 2.5 = 90
        assert_eq!(kube_reserved_cpu_milli(8), 90);
        let c = Catalog::embedded().unwrap();
        let m5 = c.get("m5.large").unwrap();
        let a = m5.allocatable(None);
        assert_eq!(a.cpu, 1930);
        // 8192 − 255 − 11 × 29 − 100 MiB
        assert_eq!(a.memory, (8192 - 255 - 11 * 29 - 100) << 20);
        assert_eq!(m5.allocatable(Some(10)).pods, 10);
    }

    #[test]
    fn bad_csv_names_line_and_column() {
        let text = "instance_type,vcpu,memory_mib,gpus,arch,max_pods,on_demand_usd_per_hour\n\
                    x.large,two,1024,0,amd64,10,0.1\n";
        let e = Catalog::from_csv(text, &["z"]).unwrap_err().to_string();
        assert!(
            e.contains("line 2") && e.contains("vcpu") && e.contains("two"),
            "{e}"
        );
        let e = Catalog::from_csv("a,b\n", &["z"]).unwrap_err().to_string();
        assert!(e.contains("instance_type"), "{e}");
    }

    #[test]
    fn spot_model_is_deterministic_and_discounted() {
        let a = spot_price_model("m5.large", 0, "us-east-1a", 0.096);
        assert_eq!(a, spot_price_model("m5.large", 0, "us-east-1a", 0.096));
        assert!(a > 0.096 * 0.25 - 1e-9 && a < 0.096 * 0.45 + 1e-9);
    }
}
