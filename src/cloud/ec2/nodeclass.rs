//! Resolves an EC2NodeClass's selector terms into concrete subnets, security groups, AMIs and an
//! instance profile. The result is what launches use, and what the NodeClass status shows.

use std::collections::{BTreeMap, BTreeSet};

use aws_sdk_ec2::types::{Filter, Image, ImageState};
use serde::Serialize;

use super::Ec2Provider;
use super::errors::to_cloud_error;
use crate::cloud::CloudError;
use crate::kube::crd::{
    AmiSelectorTerm, EC2NodeClass, EC2NodeClassStatus, ResolvedAmi, ResolvedSecurityGroup,
    ResolvedSubnet, SecurityGroupSelectorTerm, SubnetSelectorTerm,
};
use crate::model::Arch;

/// A subnet a launch may use, with its free addresses to pick the roomiest per zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetChoice {
    /// What the status shows.
    pub subnet: ResolvedSubnet,
    /// Free IPv4 addresses.
    pub available_ips: i64,
}

/// Everything a launch needs from the NodeClass, already looked up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedNodeClass {
    /// Matching subnets, sorted by id.
    pub subnets: Vec<SubnetChoice>,
    /// Matching security groups, sorted by id.
    pub security_groups: Vec<ResolvedSecurityGroup>,
    /// The newest matching AMI per architecture, newest first.
    pub amis: Vec<ResolvedAmi>,
    /// Instance profile name.
    pub instance_profile: Option<String>,
}

impl ResolvedNodeClass {
    /// The NodeClass status to write back, so operators see what launches will use.
    pub fn status(&self) -> EC2NodeClassStatus {
        EC2NodeClassStatus {
            subnets: self.subnets.iter().map(|s| s.subnet.clone()).collect(),
            security_groups: self.security_groups.clone(),
            amis: self.amis.clone(),
            instance_profile: self.instance_profile.clone(),
            conditions: Vec::new(),
        }
    }

    /// The roomiest subnet in each zone (one override per zone keeps the fleet request small).
    pub fn subnet_per_zone(&self) -> BTreeMap<String, String> {
        let mut best: BTreeMap<String, &SubnetChoice> = BTreeMap::new();
        for s in &self.subnets {
            let slot = best.entry(s.subnet.zone.clone()).or_insert(s);
            if s.available_ips > slot.available_ips {
                *slot = s;
            }
        }
        best.into_iter()
            .map(|(z, s)| (z, s.subnet.id.clone()))
            .collect()
    }

    /// The AMI for an architecture.
    pub fn ami_for(&self, arch: Arch) -> Option<&ResolvedAmi> {
        self.amis
            .iter()
            .find(|a| a.arch.as_deref() == Some(arch.as_str()))
    }
}

/// EC2 filters for a tag selector: `*` means "has the key, any value".
pub fn tag_filters(tags: &BTreeMap<String, String>) -> Vec<Filter> {
    tags.iter()
        .map(|(k, v)| {
            if v == "*" {
                Filter::builder().name("tag-key").values(k).build()
            } else {
                Filter::builder().name(format!("tag:{k}")).values(v).build()
            }
        })
        .collect()
}

fn describe_terms<T: Serialize>(field: &str, terms: &[T]) -> String {
    let json = serde_json::to_string(terms).unwrap_or_else(|_| "?".to_string());
    format!("{field} {json}")
}

fn config(reason: String) -> CloudError {
    CloudError::Config { reason }
}

/// Maps an alias such as `al2023@latest` or `al2023@v20250101` to the EKS-optimized AMI name
/// pattern owned by Amazon (the SSM parameter lookup Karpenter uses is not called).
fn alias_term(alias: &str) -> Result<AmiSelectorTerm, CloudError> {
    let (family, version) = alias.split_once('@').unwrap_or((alias, "latest"));
    if family != "al2023" {
        return Err(config(format!(
            "amiSelectorTerms alias {alias:?}: only al2023 is supported"
        )));
    }
    let name = if version == "latest" {
        "amazon-eks-node-al2023-*-standard-*".to_string()
    } else {
        format!("amazon-eks-node-al2023-*-standard-*-{version}")
    };
    Ok(AmiSelectorTerm {
        name: Some(name),
        owner: Some("amazon".to_string()),
        ..Default::default()
    })
}

impl Ec2Provider {
    /// Resolves the NodeClass's selectors into concrete resources.
    ///
    /// # Errors
    /// `Config` naming the selector when one matches nothing or is malformed; API failures as
    /// classified errors.
    pub async fn resolve_node_class(
        &self,
        node_class: &EC2NodeClass,
    ) -> Result<ResolvedNodeClass, CloudError> {
        let spec = &node_class.spec;
        let subnets = self.resolve_subnets(&spec.subnet_selector_terms).await?;
        let security_groups = self
            .resolve_security_groups(&spec.security_group_selector_terms)
            .await?;
        let amis = self.resolve_amis(&spec.ami_selector_terms).await?;
        let instance_profile = match (&spec.instance_profile, &spec.role) {
            (Some(p), _) if !p.is_empty() => Some(p.clone()),
            (_, Some(role)) => {
                return Err(config(format!(
                    "role {role:?} is set but gantry does not create instance profiles; set instanceProfile"
                )));
            }
            _ => None,
        };
        Ok(ResolvedNodeClass {
            subnets,
            security_groups,
            amis,
            instance_profile,
        })
    }

    async fn resolve_subnets(
        &self,
        terms: &[SubnetSelectorTerm],
    ) -> Result<Vec<SubnetChoice>, CloudError> {
        if terms.is_empty() {
            return Err(config("subnetSelectorTerms is empty".to_string()));
        }
        let mut found: BTreeMap<String, SubnetChoice> = BTreeMap::new();
        for (i, term) in terms.iter().enumerate() {
            let mut req = self.client.describe_subnets();
            match (&term.id, term.tags.is_empty()) {
                (Some(id), _) => req = req.subnet_ids(id),
                (None, false) => req = req.set_filters(Some(tag_filters(&term.tags))),
                (None, true) => {
                    return Err(config(format!(
                        "subnetSelectorTerms[{i}] has neither id nor tags"
                    )));
                }
            }
            let subnets = match req.into_paginator().items().send().try_collect().await {
                Ok(s) => s,
                // An unknown id is an empty match, reported below with the selector.
                Err(e) if is_not_found(&e) => Vec::new(),
                Err(e) => return Err(to_cloud_error("describe subnets")(e)),
            };
            for s in subnets {
                let (Some(id), Some(zone)) = (s.subnet_id(), s.availability_zone()) else {
                    continue;
                };
                found.insert(
                    id.to_string(),
                    SubnetChoice {
                        subnet: ResolvedSubnet {
                            id: id.to_string(),
                            zone: zone.to_string(),
                            zone_id: s.availability_zone_id().map(ToString::to_string),
                        },
                        available_ips: i64::from(s.available_ip_address_count().unwrap_or(0)),
                    },
                );
            }
        }
        if found.is_empty() {
            return Err(config(format!(
                "{} matched no subnet",
                describe_terms("subnetSelectorTerms", terms)
            )));
        }
        Ok(found.into_values().collect())
    }

    async fn resolve_security_groups(
        &self,
        terms: &[SecurityGroupSelectorTerm],
    ) -> Result<Vec<ResolvedSecurityGroup>, CloudError> {
        if terms.is_empty() {
            return Err(config("securityGroupSelectorTerms is empty".to_string()));
        }
        let mut found: BTreeMap<String, ResolvedSecurityGroup> = BTreeMap::new();
        for (i, term) in terms.iter().enumerate() {
            let mut req = self.client.describe_security_groups();
            let mut filters = tag_filters(&term.tags);
            if let Some(id) = &term.id {
                req = req.group_ids(id);
            }
            if let Some(name) = &term.name {
                filters.push(Filter::builder().name("group-name").values(name).build());
            }
            if term.id.is_none() && filters.is_empty() {
                return Err(config(format!(
                    "securityGroupSelectorTerms[{i}] has no id, name or tags"
                )));
            }
            if !filters.is_empty() {
                req = req.set_filters(Some(filters));
            }
            let groups = match req.into_paginator().items().send().try_collect().await {
                Ok(g) => g,
                Err(e) if is_not_found(&e) => Vec::new(),
                Err(e) => return Err(to_cloud_error("describe security groups")(e)),
            };
            for g in groups {
                let Some(id) = g.group_id() else { continue };
                found.insert(
                    id.to_string(),
                    ResolvedSecurityGroup {
                        id: id.to_string(),
                        name: g.group_name().map(ToString::to_string),
                    },
                );
            }
        }
        if found.is_empty() {
            return Err(config(format!(
                "{} matched no security group",
                describe_terms("securityGroupSelectorTerms", terms)
            )));
        }
        Ok(found.into_values().collect())
    }

    async fn resolve_amis(
        &self,
        terms: &[AmiSelectorTerm],
    ) -> Result<Vec<ResolvedAmi>, CloudError> {
        if terms.is_empty() {
            return Err(config("amiSelectorTerms is empty".to_string()));
        }
        let mut images: BTreeMap<String, Image> = BTreeMap::new();
        for (i, term) in terms.iter().enumerate() {
            let term = match &term.alias {
                Some(alias) => alias_term(alias)?,
                None => term.clone(),
            };
            let mut req = self.client.describe_images();
            let mut filters = tag_filters(&term.tags);
            if let Some(id) = &term.id {
                req = req.image_ids(id);
            }
            if let Some(name) = &term.name {
                filters.push(Filter::builder().name("name").values(name).build());
            }
            if term.id.is_none() && filters.is_empty() {
                return Err(config(format!(
                    "amiSelectorTerms[{i}] needs an id, name, tags or alias (owner alone matches too much)"
                )));
            }
            if let Some(owner) = &term.owner {
                req = req.owners(owner);
            }
            if !filters.is_empty() {
                req = req.set_filters(Some(filters));
            }
            let found = match req.into_paginator().items().send().try_collect().await {
                Ok(f) => f,
                Err(e) if is_not_found(&e) => Vec::new(),
                Err(e) => return Err(to_cloud_error("describe images")(e)),
            };
            for img in found {
                if img.state().is_some_and(|s| *s != ImageState::Available) {
                    continue;
                }
                if let Some(id) = img.image_id() {
                    images.insert(id.to_string(), img);
                }
            }
        }
        let amis = newest_per_arch(images.into_values().collect());
        if amis.is_empty() {
            return Err(config(format!(
                "{} matched no available x86_64 or arm64 image",
                describe_terms("amiSelectorTerms", terms)
            )));
        }
        Ok(amis)
    }
}

/// The newest image (by creation date, then id) for each architecture, newest first.
fn newest_per_arch(mut images: Vec<Image>) -> Vec<ResolvedAmi> {
    images.sort_by(|a, b| {
        b.creation_date()
            .unwrap_or("")
            .cmp(a.creation_date().unwrap_or(""))
            .then_with(|| b.image_id().cmp(&a.image_id()))
    });
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for img in images {
        let Some(arch) = img.architecture().and_then(|a| Arch::parse(a.as_str())) else {
            continue;
        };
        if seen.insert(arch.as_str()) {
            out.push(ResolvedAmi {
                id: img.image_id().unwrap_or_default().to_string(),
                name: img.name().map(ToString::to_string),
                arch: Some(arch.as_str().to_string()),
            });
        }
    }
    out
}

fn is_not_found<E, R>(e: &aws_sdk_ec2::error::SdkError<E, R>) -> bool
where
    E: aws_sdk_ec2::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    use aws_sdk_ec2::error::ProvideErrorMetadata as _;
    e.code()
        .is_some_and(|c| c.ends_with(".NotFound") || c.ends_with(".Malformed"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_ec2::types::ArchitectureValues;

    #[test]
    fn tag_filters_use_tag_key_for_wildcards() {
        let f = tag_filters(&BTreeMap::from([
            ("a".to_string(), "*".to_string()),
            ("b".to_string(), "x".to_string()),
        ]));
        assert_eq!(f[0].name(), Some("tag-key"));
        assert_eq!(f[0].values(), ["a".to_string()]);
        assert_eq!(f[1].name(), Some("tag:b"));
    }

    #[test]
    fn newest_image_per_arch_wins() {
        let img = |id: &str, date: &str, arch: ArchitectureValues| {
            Image::builder()
                .image_id(id)
                .creation_date(date)
                .architecture(arch)
                .build()
        };
        let amis = newest_per_arch(vec![
            img(
                "ami-old",
                "2024-01-01T00:00:00.000Z",
                ArchitectureValues::X8664,
            ),
            img(
                "ami-new",
                "2025-01-01T00:00:00.000Z",
                ArchitectureValues::X8664,
            ),
            img(
                "ami-arm",
                "2023-01-01T00:00:00.000Z",
                ArchitectureValues::Arm64,
            ),
            img(
                "ami-i386",
                "2026-01-01T00:00:00.000Z",
                ArchitectureValues::I386,
            ),
        ]);
        let ids: Vec<_> = amis.iter().map(|a| a.id.as_str()).collect();
        assert_eq!(ids, vec!["ami-new", "ami-arm"]);
    }

    #[test]
    fn aliases_map_to_eks_names() {
        let t = alias_term("al2023@latest").unwrap();
        assert_eq!(t.owner.as_deref(), Some("amazon"));
        assert!(t.name.unwrap().starts_with("amazon-eks-node-al2023-"));
        assert!(alias_term("bottlerocket@latest").is_err());
    }
}
