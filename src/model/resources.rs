//! Resource vectors: what a pod asks for and what a node offers, in integer units.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::quantity::{Quantity, QuantityError, format_bytes, format_milli};

/// Well-known resource names, spelled as Kubernetes spells them.
pub mod names {
    /// CPU, counted in millicores.
    pub const CPU: &str = "cpu";
    /// Memory, counted in bytes.
    pub const MEMORY: &str = "memory";
    /// Ephemeral storage, counted in bytes.
    pub const EPHEMERAL_STORAGE: &str = "ephemeral-storage";
    /// Pod slots.
    pub const PODS: &str = "pods";
    /// NVIDIA GPUs, the extended resource the catalog's GPU count maps to.
    pub const NVIDIA_GPU: &str = "nvidia.com/gpu";
}

/// A resource vector in integer units, so sums and comparisons are exact and cheap.
///
/// CPU is in millicores; memory and ephemeral storage in bytes; pods and extended resources in
/// whole units. Extended resources are kept sorted by name, so equal vectors compare equal.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Resources {
    /// Millicores.
    pub cpu: i64,
    /// Bytes.
    pub memory: i64,
    /// Bytes.
    pub ephemeral: i64,
    /// Pod slots.
    pub pods: i64,
    /// Extended resources (GPUs, hugepages, device plugins), sorted by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extended: Vec<(String, i64)>,
}

impl Resources {
    /// A vector with only CPU and memory, the common case in tests and benchmarks.
    pub fn cpu_mem(cpu_milli: i64, memory_bytes: i64) -> Self {
        Resources {
            cpu: cpu_milli,
            memory: memory_bytes,
            ..Default::default()
        }
    }

    /// Parses a Kubernetes resource map (`requests`, `capacity`, `allocatable`).
    ///
    /// # Errors
    /// Names the resource whose quantity does not parse.
    pub fn from_map<'a, I, Q>(map: I) -> Result<Self, ResourceError>
    where
        I: IntoIterator<Item = (&'a String, Q)>,
        Q: AsRef<str>,
    {
        let mut r = Resources::default();
        for (name, value) in map {
            let q = Quantity::parse(value.as_ref()).map_err(|source| ResourceError {
                resource: name.clone(),
                source,
            })?;
            r.set(name, q);
        }
        Ok(r)
    }

    /// Sets one named resource from a parsed quantity, choosing the unit by name.
    pub fn set(&mut self, name: &str, q: Quantity) {
        match name {
            names::CPU => self.cpu = q.milli(),
            names::MEMORY => self.memory = q.units(),
            names::EPHEMERAL_STORAGE => self.ephemeral = q.units(),
            names::PODS => self.pods = q.units(),
            other => self.set_extended(other, q.units()),
        }
    }

    /// Sets an extended resource, keeping the list sorted; zero removes it.
    pub fn set_extended(&mut self, name: &str, value: i64) {
        match self
            .extended
            .binary_search_by(|(n, _)| n.as_str().cmp(name))
        {
            Ok(i) => {
                if value == 0 {
                    self.extended.remove(i);
                } else if let Some(slot) = self.extended.get_mut(i) {
                    slot.1 = value;
                }
            }
            Err(i) => {
                if value != 0 {
                    self.extended.insert(i, (name.to_string(), value));
                }
            }
        }
    }

    /// An extended resource's value, zero when absent.
    pub fn extended(&self, name: &str) -> i64 {
        self.extended
            .binary_search_by(|(n, _)| n.as_str().cmp(name))
            .ok()
            .and_then(|i| self.extended.get(i))
            .map_or(0, |(_, v)| *v)
    }

    /// Adds another vector in place, saturating.
    pub fn add(&mut self, other: &Resources) {
        self.cpu = self.cpu.saturating_add(other.cpu);
        self.memory = self.memory.saturating_add(other.memory);
        self.ephemeral = self.ephemeral.saturating_add(other.ephemeral);
        self.pods = self.pods.saturating_add(other.pods);
        for (name, v) in &other.extended {
            let cur = self.extended(name);
            self.set_extended(name, cur.saturating_add(*v));
        }
    }

    /// Subtracts another vector in place, saturating; results may go negative (over-committed).
    pub fn sub(&mut self, other: &Resources) {
        self.cpu = self.cpu.saturating_sub(other.cpu);
        self.memory = self.memory.saturating_sub(other.memory);
        self.ephemeral = self.ephemeral.saturating_sub(other.ephemeral);
        self.pods = self.pods.saturating_sub(other.pods);
        for (name, v) in &other.extended {
            let cur = self.extended(name);
            let next = cur.saturating_sub(*v);
            // Keep negative values so over-commitment stays visible.
            match self
                .extended
                .binary_search_by(|(n, _)| n.as_str().cmp(name))
            {
                Ok(i) => {
                    if let Some(slot) = self.extended.get_mut(i) {
                        slot.1 = next;
                    }
                }
                Err(i) => self.extended.insert(i, (name.clone(), next)),
            }
        }
    }

    /// The sum of two vectors.
    pub fn plus(&self, other: &Resources) -> Resources {
        let mut r = self.clone();
        r.add(other);
        r
    }

    /// The difference of two vectors.
    pub fn minus(&self, other: &Resources) -> Resources {
        let mut r = self.clone();
        r.sub(other);
        r
    }

    /// The element-wise maximum, used for init containers (which run before the app containers).
    pub fn max_each(&mut self, other: &Resources) {
        self.cpu = self.cpu.max(other.cpu);
        self.memory = self.memory.max(other.memory);
        self.ephemeral = self.ephemeral.max(other.ephemeral);
        self.pods = self.pods.max(other.pods);
        for (name, v) in &other.extended {
            let cur = self.extended(name);
            if *v > cur {
                self.set_extended(name, *v);
            }
        }
    }

    /// Whether `self + extra` fits inside `available`, without building the sum (hot path of the
    /// extender's scoring).
    pub fn fits_with(&self, extra: &Resources, available: &Resources) -> bool {
        self.cpu.saturating_add(extra.cpu) <= available.cpu
            && self.memory.saturating_add(extra.memory) <= available.memory
            && self.ephemeral.saturating_add(extra.ephemeral) <= available.ephemeral
            && self.pods.saturating_add(extra.pods) <= available.pods
            && extra.extended.iter().all(|(n, v)| {
                *v <= 0 || self.extended(n).saturating_add(*v) <= available.extended(n)
            })
    }

    /// Whether `self` (a demand) fits inside `available`, resource by resource.
    pub fn fits_in(&self, available: &Resources) -> bool {
        self.cpu <= available.cpu
            && self.memory <= available.memory
            && self.ephemeral <= available.ephemeral
            && self.pods <= available.pods
            && self
                .extended
                .iter()
                .all(|(n, v)| *v <= 0 || *v <= available.extended(n))
    }

    /// The first resource that does not fit, for a reason a person can act on.
    pub fn first_shortfall(&self, available: &Resources) -> Option<String> {
        if self.cpu > available.cpu {
            return Some(format!(
                "needs {} vCPU, {} available",
                format_milli(self.cpu),
                format_milli(available.cpu)
            ));
        }
        if self.memory > available.memory {
            return Some(format!(
                "needs {} memory, {} available",
                format_bytes(self.memory),
                format_bytes(available.memory)
            ));
        }
        if self.ephemeral > available.ephemeral {
            return Some(format!(
                "needs {} ephemeral storage, {} available",
                format_bytes(self.ephemeral),
                format_bytes(available.ephemeral)
            ));
        }
        if self.pods > available.pods {
            return Some(format!(
                "needs {} pod slots, {} available",
                self.pods, available.pods
            ));
        }
        for (n, v) in &self.extended {
            let have = available.extended(n);
            if *v > 0 && *v > have {
                return Some(format!("needs {v} {n}, {have} available"));
            }
        }
        None
    }

    /// The larger of the CPU and memory fractions of `capacity` that this vector uses, in [0, ∞).
    pub fn dominant_share(&self, capacity: &Resources) -> f64 {
        let cpu = if capacity.cpu > 0 {
            self.cpu as f64 / capacity.cpu as f64
        } else {
            0.0
        };
        let mem = if capacity.memory > 0 {
            self.memory as f64 / capacity.memory as f64
        } else {
            0.0
        };
        cpu.max(mem)
    }

    /// Whether every component is zero or below.
    pub fn is_empty(&self) -> bool {
        self.cpu <= 0
            && self.memory <= 0
            && self.ephemeral <= 0
            && self.pods <= 0
            && self.extended.iter().all(|(_, v)| *v <= 0)
    }

    /// The vector as a Kubernetes resource map, for status fields and NodeClaim requests.
    pub fn to_map(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        m.insert(names::CPU.to_string(), format!("{}m", self.cpu));
        m.insert(names::MEMORY.to_string(), self.memory.to_string());
        if self.ephemeral != 0 {
            m.insert(
                names::EPHEMERAL_STORAGE.to_string(),
                self.ephemeral.to_string(),
            );
        }
        if self.pods != 0 {
            m.insert(names::PODS.to_string(), self.pods.to_string());
        }
        for (n, v) in &self.extended {
            m.insert(n.clone(), v.to_string());
        }
        m
    }
}

/// A named resource whose quantity does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("resource {resource:?}")]
pub struct ResourceError {
    /// The resource name, e.g. `memory`.
    pub resource: String,
    /// Why its value is bad.
    #[source]
    pub source: QuantityError,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_map_and_adds() {
        let m: BTreeMap<String, String> = [
            ("cpu", "500m"),
            ("memory", "1Gi"),
            ("nvidia.com/gpu", "1"),
            ("pods", "110"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let r = Resources::from_map(&m).unwrap();
        assert_eq!(r.cpu, 500);
        assert_eq!(r.memory, 1 << 30);
        assert_eq!(r.extended("nvidia.com/gpu"), 1);
        let sum = r.plus(&r);
        assert_eq!(sum.cpu, 1000);
        assert_eq!(sum.extended("nvidia.com/gpu"), 2);
        assert!(r.fits_in(&sum));
        assert!(!sum.fits_in(&r));
        assert!(sum.first_shortfall(&r).unwrap().contains("vCPU"));
    }

    #[test]
    fn bad_quantity_names_the_resource() {
        let m: BTreeMap<String, String> = [("memory".to_string(), "lots".to_string())]
            .into_iter()
            .collect();
        let e = Resources::from_map(&m).unwrap_err();
        assert_eq!(e.resource, "memory");
    }

    #[test]
    fn extended_demand_needs_extended_supply() {
        let mut gpu = Resources::cpu_mem(100, 100);
        gpu.set_extended("nvidia.com/gpu", 1);
        assert!(!gpu.fits_in(&Resources::cpu_mem(1000, 1000)));
        let mut node = Resources::cpu_mem(1000, 1000);
        node.set_extended("nvidia.com/gpu", 4);
        assert!(gpu.fits_in(&node));
        assert!(Resources::cpu_mem(1, 1).fits_in(&node));
    }
}
