//! Launch templates: one per hash of everything in them, named `gantry/<nodeclass>/<hash>`, and
//! reused when one with that name already exists.
//!
//! The hash covers the AMI, security groups, instance profile, disks, metadata options and the
//! rendered user data (which carries the NodePool's labels and taints and the capacity type), so
//! every claim of a pool with one capacity type and one architecture shares one template. The
//! NodeClaim's own name is deliberately not in the user data: it would make every template
//! single-use (EC2 allows 5,000 per region); the node gets `gantry.dev/nodeclaim` when lifecycle
//! links it by providerID, and the instance carries it as a tag.

use std::collections::BTreeMap;
use std::sync::PoisonError;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_sdk_ec2::types::{
    Filter, LaunchTemplateBlockDeviceMappingRequest, LaunchTemplateEbsBlockDeviceRequest,
    LaunchTemplateHttpTokensState, LaunchTemplateIamInstanceProfileSpecificationRequest,
    LaunchTemplateInstanceMetadataEndpointState, LaunchTemplateInstanceMetadataOptionsRequest,
    LaunchTemplateInstanceNetworkInterfaceSpecificationRequest, LaunchTemplatesMonitoringRequest,
    RequestLaunchTemplateData, ResourceType, Tag, TagSpecification,
};
use base64::Engine as _;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::errors::{classify, to_cloud_error};
use super::nodeclass::ResolvedNodeClass;
use super::userdata::{NodeConfigInput, render};
use super::{Ec2Config, Ec2Provider, TAG_NODECLASS};
use crate::cloud::CloudError;
use crate::kube::crd::{
    BlockDevice, BlockDeviceMapping, EC2NodeClass, MetadataOptions, NodeClaim, TaintSpec,
};
use crate::model::labels::{
    CAPACITY_TYPE, NODECLAIM, NODEPOOL, TAINT_INITIALIZING, TAINT_UNREGISTERED,
};
use crate::model::quantity::Quantity;
use crate::model::{Arch, CapacityType};

/// Everything that goes into one launch template; its hash names the template.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LaunchTemplateSpec {
    /// Owning NodeClass name.
    pub node_class: String,
    /// AMI.
    pub image_id: String,
    /// Security group ids.
    pub security_group_ids: Vec<String>,
    /// Instance profile name.
    pub instance_profile: Option<String>,
    /// Rendered MIME user data (plain text; base64-encoded on the wire).
    pub user_data: String,
    /// Disks, with the default root volume when the NodeClass names none.
    pub block_device_mappings: Vec<BlockDeviceMapping>,
    /// IMDS settings, with IMDSv2 and hop limit 1 by default.
    pub metadata_options: MetadataOptions,
    /// Public IPs (needs a network interface in the template).
    pub associate_public_ip_address: Option<bool>,
    /// Detailed monitoring.
    pub detailed_monitoring: Option<bool>,
}

impl LaunchTemplateSpec {
    /// `gantry/<nodeclass>/<first 16 hex digits of the sha256 of the spec>`.
    pub fn name(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        let digest = Sha256::digest(&json);
        let hex = hex::encode(digest);
        format!(
            "gantry/{}/{}",
            self.node_class,
            hex.get(..16).unwrap_or(&hex)
        )
    }
}

/// Kubelet may only set its own labels outside the `kubernetes.io` / `k8s.io` namespaces (apart
/// from `node.kubernetes.io/…` and `kubelet.kubernetes.io/…`); others would make it fail to register.
fn kubelet_may_set(key: &str) -> bool {
    let Some((domain, _)) = key.split_once('/') else {
        return true;
    };
    let restricted = domain == "kubernetes.io"
        || domain.ends_with(".kubernetes.io")
        || domain == "k8s.io"
        || domain.ends_with(".k8s.io");
    !restricted
        || domain == "node.kubernetes.io"
        || domain.ends_with(".node.kubernetes.io")
        || domain == "kubelet.kubernetes.io"
        || domain.ends_with(".kubelet.kubernetes.io")
}

/// The labels a node registers with: the claim's (the NodePool template's), minus per-claim and
/// kubelet-forbidden keys, plus the capacity type.
pub fn registration_labels(
    claim: &NodeClaim,
    capacity_type: CapacityType,
) -> BTreeMap<String, String> {
    let mut labels: BTreeMap<String, String> = claim
        .metadata
        .labels
        .iter()
        .flatten()
        .filter(|(k, _)| k.as_str() != NODECLAIM && kubelet_may_set(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    labels.insert(
        CAPACITY_TYPE.to_string(),
        capacity_type.as_str().to_string(),
    );
    labels
}

/// The taints a node registers with: `unregistered`, the startup gate, then the pool's taints and
/// startup taints.
pub fn registration_taints(claim: &NodeClaim) -> Vec<TaintSpec> {
    let mut taints = vec![
        TaintSpec {
            key: TAINT_UNREGISTERED.to_string(),
            value: Some("true".to_string()),
            effect: "NoExecute".to_string(),
        },
        TaintSpec {
            key: TAINT_INITIALIZING.to_string(),
            value: Some("true".to_string()),
            effect: "NoSchedule".to_string(),
        },
    ];
    for t in claim.spec.taints.iter().chain(&claim.spec.startup_taints) {
        if !taints.contains(t) {
            taints.push(t.clone());
        }
    }
    taints
}

fn default_root_volume() -> BlockDeviceMapping {
    BlockDeviceMapping {
        device_name: "/dev/xvda".to_string(),
        ebs: Some(BlockDevice {
            volume_size: Some("20Gi".to_string()),
            volume_type: Some("gp3".to_string()),
            encrypted: Some(true),
            delete_on_termination: Some(true),
            ..Default::default()
        }),
        root_volume: Some(true),
    }
}

/// Builds the template spec for one claim, capacity type and architecture.
///
/// # Errors
/// `Config` when no AMI matches the architecture or the user data cannot be rendered.
pub fn launch_template_spec(
    config: &Ec2Config,
    node_class: &EC2NodeClass,
    resolved: &ResolvedNodeClass,
    claim: &NodeClaim,
    capacity_type: CapacityType,
    arch: Arch,
) -> Result<LaunchTemplateSpec, CloudError> {
    let spec = &node_class.spec;
    if config.cluster_name.is_empty()
        || config.cluster_endpoint.is_empty()
        || config.cluster_ca.is_empty()
    {
        return Err(CloudError::Config {
            reason: "cluster name, endpoint and CA must be set for nodes to join".to_string(),
        });
    }
    let ami = resolved.ami_for(arch).ok_or_else(|| CloudError::Config {
        reason: format!("no AMI for architecture {}", arch.as_str()),
    })?;
    let kubelet = spec.kubelet.clone().unwrap_or_default();
    let mut labels = registration_labels(claim, capacity_type);
    if let Some(pool) = claim.metadata.labels.as_ref().and_then(|l| l.get(NODEPOOL)) {
        labels.insert(NODEPOOL.to_string(), pool.clone());
    }
    let input = NodeConfigInput {
        cluster_name: config.cluster_name.clone(),
        api_server_endpoint: config.cluster_endpoint.clone(),
        certificate_authority: config.cluster_ca.clone(),
        cidr: config.cluster_cidr.clone(),
        labels,
        taints: registration_taints(claim),
        max_pods: kubelet.max_pods,
        system_reserved: kubelet.system_reserved,
        kube_reserved: kubelet.kube_reserved,
        eviction_hard: kubelet.eviction_hard,
    };
    let user_data = render(&input, spec.user_data.as_deref()).map_err(|e| CloudError::Config {
        reason: format!("cannot render user data: {e}"),
    })?;
    let mut metadata = spec.metadata_options.clone().unwrap_or_default();
    metadata
        .http_endpoint
        .get_or_insert_with(|| "enabled".to_string());
    metadata
        .http_tokens
        .get_or_insert_with(|| "required".to_string());
    metadata.http_put_response_hop_limit.get_or_insert(1);
    let block_device_mappings = if spec.block_device_mappings.is_empty() {
        vec![default_root_volume()]
    } else {
        spec.block_device_mappings.clone()
    };
    Ok(LaunchTemplateSpec {
        node_class: node_class.metadata.name.clone().unwrap_or_default(),
        image_id: ami.id.clone(),
        security_group_ids: resolved
            .security_groups
            .iter()
            .map(|g| g.id.clone())
            .collect(),
        instance_profile: resolved.instance_profile.clone(),
        user_data,
        block_device_mappings,
        metadata_options: metadata,
        associate_public_ip_address: spec.associate_public_ip_address,
        detailed_monitoring: spec.detailed_monitoring,
    })
}

/// Volume size in GiB, rounded up, from a quantity such as `20Gi` or `100G`.
fn volume_gib(size: &str) -> Result<i32, CloudError> {
    let bytes = Quantity::parse(size)
        .map_err(|e| CloudError::Config {
            reason: format!("blockDeviceMappings volumeSize: {e}"),
        })?
        .units();
    let gib = (bytes + (1 << 30) - 1) >> 30;
    i32::try_from(gib.max(1)).map_err(|_| CloudError::Config {
        reason: format!("blockDeviceMappings volumeSize {size} is too large"),
    })
}

fn to_i32(v: i64, what: &str) -> Result<i32, CloudError> {
    i32::try_from(v).map_err(|_| CloudError::Config {
        reason: format!("{what} {v} is out of range"),
    })
}

/// The EC2 request data for a template spec.
///
/// # Errors
/// `Config` on a malformed disk size or out-of-range number.
pub fn request_data(spec: &LaunchTemplateSpec) -> Result<RequestLaunchTemplateData, CloudError> {
    let mut data = RequestLaunchTemplateData::builder()
        .image_id(&spec.image_id)
        .user_data(base64::engine::general_purpose::STANDARD.encode(&spec.user_data));
    match spec.associate_public_ip_address {
        Some(public) => {
            let mut nic = LaunchTemplateInstanceNetworkInterfaceSpecificationRequest::builder()
                .device_index(0)
                .associate_public_ip_address(public)
                .delete_on_termination(true);
            for g in &spec.security_group_ids {
                nic = nic.groups(g);
            }
            data = data.network_interfaces(nic.build());
        }
        None => {
            for g in &spec.security_group_ids {
                data = data.security_group_ids(g);
            }
        }
    }
    if let Some(profile) = &spec.instance_profile {
        data = data.iam_instance_profile(
            LaunchTemplateIamInstanceProfileSpecificationRequest::builder()
                .name(profile)
                .build(),
        );
    }
    for bdm in &spec.block_device_mappings {
        let mut m =
            LaunchTemplateBlockDeviceMappingRequest::builder().device_name(&bdm.device_name);
        if let Some(ebs) = &bdm.ebs {
            let mut e = LaunchTemplateEbsBlockDeviceRequest::builder();
            if let Some(size) = &ebs.volume_size {
                e = e.volume_size(volume_gib(size)?);
            }
            if let Some(t) = &ebs.volume_type {
                e = e.volume_type(t.as_str().into());
            }
            if let Some(iops) = ebs.iops {
                e = e.iops(to_i32(iops, "iops")?);
            }
            if let Some(tp) = ebs.throughput {
                e = e.throughput(to_i32(tp, "throughput")?);
            }
            if let Some(enc) = ebs.encrypted {
                e = e.encrypted(enc);
            }
            if let Some(k) = &ebs.kms_key_id {
                e = e.kms_key_id(k);
            }
            if let Some(d) = ebs.delete_on_termination {
                e = e.delete_on_termination(d);
            }
            if let Some(s) = &ebs.snapshot_id {
                e = e.snapshot_id(s);
            }
            m = m.ebs(e.build());
        }
        data = data.block_device_mappings(m.build());
    }
    let md = &spec.metadata_options;
    let mut mo = LaunchTemplateInstanceMetadataOptionsRequest::builder();
    if let Some(v) = &md.http_endpoint {
        mo = mo.http_endpoint(LaunchTemplateInstanceMetadataEndpointState::from(
            v.as_str(),
        ));
    }
    if let Some(v) = &md.http_tokens {
        mo = mo.http_tokens(LaunchTemplateHttpTokensState::from(v.as_str()));
    }
    if let Some(v) = md.http_put_response_hop_limit {
        mo = mo.http_put_response_hop_limit(to_i32(v, "httpPutResponseHopLimit")?);
    }
    if let Some(v) = &md.http_protocol_ipv6 {
        mo = mo.http_protocol_ipv6(v.as_str().into());
    }
    data = data.metadata_options(mo.build());
    if let Some(m) = spec.detailed_monitoring {
        data = data.monitoring(
            LaunchTemplatesMonitoringRequest::builder()
                .enabled(m)
                .build(),
        );
    }
    Ok(data.build())
}

impl Ec2Provider {
    /// Returns the id of the template for `spec`, creating it when no template has its name.
    ///
    /// # Errors
    /// `Config` for a malformed spec; API failures as classified errors.
    pub async fn ensure_launch_template(
        &self,
        spec: &LaunchTemplateSpec,
    ) -> Result<String, CloudError> {
        let name = spec.name();
        self.note_template_use(&name);
        if let Some(id) = self.launch_templates.get(&name).await {
            return Ok(id);
        }
        if let Some(id) = self.find_launch_template(&name).await? {
            self.launch_templates.insert(name, id.clone()).await;
            return Ok(id);
        }
        let tags = TagSpecification::builder()
            .resource_type(ResourceType::LaunchTemplate)
            .tags(
                Tag::builder()
                    .key(self.config.cluster_tag_key())
                    .value("owned")
                    .build(),
            )
            .tags(
                Tag::builder()
                    .key(TAG_NODECLASS)
                    .value(&spec.node_class)
                    .build(),
            )
            .build();
        let created = self
            .client
            .create_launch_template()
            .launch_template_name(&name)
            .launch_template_data(request_data(spec)?)
            .tag_specifications(tags)
            .send()
            .await;
        let id = match created {
            Ok(out) => out
                .launch_template()
                .and_then(|t| t.launch_template_id())
                .map(ToString::to_string),
            Err(e) => {
                let c = classify(&e);
                // Another replica (or an earlier attempt) created it first: use theirs.
                if c.code
                    .as_deref()
                    .is_some_and(|code| code.contains("AlreadyExists"))
                {
                    self.find_launch_template(&name).await?
                } else {
                    return Err(c.into_cloud_error("create launch template"));
                }
            }
        };
        let id = id.ok_or_else(|| {
            CloudError::Other(format!("launch template {name} has no id after creation"))
        })?;
        tracing::info!(launch_template.name = %name, launch_template.id = %id, "created launch template");
        self.launch_templates.insert(name, id.clone()).await;
        Ok(id)
    }

    fn note_template_use(&self, name: &str) {
        self.template_use
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.to_string(), Instant::now());
    }

    fn template_in_use(&self, name: &str, idle: Duration) -> bool {
        self.template_use
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .is_some_and(|t| t.elapsed() < idle)
    }

    /// Forgets every cached template id, after EC2 said one no longer exists; the next launch
    /// looks each up again and recreates what is gone.
    pub fn forget_launch_templates(&self) {
        self.launch_templates.invalidate_all();
    }

    /// Deletes this cluster's `gantry/…` launch templates that are older than
    /// `launch_template_idle` and that this process has not used for as long, so templates of
    /// deleted NodeClasses, old AMIs or changed pools do not pile up against EC2's quota of
    /// 5,000 per region. A launch racing a deletion sees its template missing, forgets the
    /// cached id and retries, which recreates it.
    ///
    /// # Errors
    /// API failures other than "already gone".
    pub async fn collect_launch_templates(&self) -> Result<usize, CloudError> {
        let idle = self.config.launch_template_idle;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let idle_secs = i64::try_from(idle.as_secs()).unwrap_or(i64::MAX);
        let mut next: Option<String> = None;
        let mut deleted = 0;
        loop {
            let out = self
                .client
                .describe_launch_templates()
                .filters(
                    Filter::builder()
                        .name(format!("tag:{}", self.config.cluster_tag_key()))
                        .values("owned")
                        .build(),
                )
                .max_results(200)
                .set_next_token(next.take())
                .send()
                .await
                .map_err(to_cloud_error("describe launch templates"))?;
            for t in out.launch_templates() {
                let (Some(name), Some(id)) = (t.launch_template_name(), t.launch_template_id())
                else {
                    continue;
                };
                let old_enough = t
                    .create_time()
                    .is_some_and(|c| now.saturating_sub(c.secs()) >= idle_secs);
                if !name.starts_with("gantry/") || !old_enough || self.template_in_use(name, idle) {
                    continue;
                }
                self.launch_templates.invalidate(name).await;
                match self
                    .client
                    .delete_launch_template()
                    .launch_template_id(id)
                    .send()
                    .await
                {
                    Ok(_) => {
                        tracing::info!(launch_template.name = %name, launch_template.id = %id, "deleted unused launch template");
                        deleted += 1;
                    }
                    Err(e) => {
                        let c = classify(&e);
                        if !is_missing_template(c.code.as_deref().unwrap_or_default()) {
                            return Err(c.into_cloud_error("delete launch template"));
                        }
                    }
                }
            }
            match out.next_token() {
                Some(t) if !t.is_empty() => next = Some(t.to_string()),
                _ => break,
            }
        }
        Ok(deleted)
    }

    async fn find_launch_template(&self, name: &str) -> Result<Option<String>, CloudError> {
        let out = self
            .client
            .describe_launch_templates()
            .filters(
                Filter::builder()
                    .name("launch-template-name")
                    .values(name)
                    .build(),
            )
            .send()
            .await
            .map_err(to_cloud_error("describe launch templates"))?;
        Ok(out
            .launch_templates()
            .iter()
            .find(|t| t.launch_template_name() == Some(name))
            .and_then(|t| t.launch_template_id())
            .map(ToString::to_string))
    }
}

/// Whether an EC2 error code says a launch template (or its version) does not exist.
pub fn is_missing_template(code: &str) -> bool {
    code.starts_with("InvalidLaunchTemplate") && code.contains("NotFound")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::crd::{EC2NodeClassSpec, NodeClaimSpec, ResolvedAmi};

    #[test]
    fn missing_template_codes() {
        assert!(is_missing_template("InvalidLaunchTemplateId.NotFound"));
        assert!(is_missing_template(
            "InvalidLaunchTemplateName.NotFoundException"
        ));
        assert!(is_missing_template(
            "InvalidLaunchTemplateId.VersionNotFound"
        ));
        assert!(!is_missing_template(
            "InvalidLaunchTemplateName.AlreadyExistsException"
        ));
        assert!(!is_missing_template("InvalidInstanceID.NotFound"));
    }

    fn claim(pool: &str) -> NodeClaim {
        let mut c = NodeClaim::new(
            "claim-1",
            NodeClaimSpec {
                taints: vec![TaintSpec {
                    key: "team".into(),
                    value: Some("a".into()),
                    effect: "NoSchedule".into(),
                }],
                ..Default::default()
            },
        );
        c.metadata.labels = Some(BTreeMap::from([
            (NODEPOOL.to_string(), pool.to_string()),
            (NODECLAIM.to_string(), "claim-1".to_string()),
            ("kubernetes.io/hostname".to_string(), "x".to_string()),
            ("team".to_string(), "a".to_string()),
        ]));
        c
    }

    fn resolved() -> ResolvedNodeClass {
        ResolvedNodeClass {
            subnets: vec![],
            security_groups: vec![],
            amis: vec![ResolvedAmi {
                id: "ami-1".into(),
                name: None,
                arch: Some("amd64".into()),
            }],
            instance_profile: Some("node".into()),
        }
    }

    fn config() -> Ec2Config {
        let mut cfg = Ec2Config::new("us-east-1", "prod");
        cfg.cluster_endpoint = "https://x.eks.amazonaws.com".to_string();
        cfg.cluster_ca = "Q0E=".to_string();
        cfg
    }

    #[test]
    fn spec_hash_is_shared_by_claims_of_a_pool_and_split_by_capacity_type() {
        let cfg = config();
        let unset = Ec2Config::new("us-east-1", "prod");
        assert!(matches!(
            launch_template_spec(
                &unset,
                &EC2NodeClass::new("default", EC2NodeClassSpec::default()),
                &resolved(),
                &claim("p"),
                CapacityType::Spot,
                Arch::Amd64
            ),
            Err(CloudError::Config { .. })
        ));
        let nc = EC2NodeClass::new("default", EC2NodeClassSpec::default());
        let a = launch_template_spec(
            &cfg,
            &nc,
            &resolved(),
            &claim("p"),
            CapacityType::Spot,
            Arch::Amd64,
        )
        .unwrap();
        let mut other = claim("p");
        other.metadata.name = Some("claim-2".into());
        let b = launch_template_spec(
            &cfg,
            &nc,
            &resolved(),
            &other,
            CapacityType::Spot,
            Arch::Amd64,
        )
        .unwrap();
        assert_eq!(a.name(), b.name());
        assert!(a.name().starts_with("gantry/default/"));
        assert_eq!(a.name().len(), "gantry/default/".len() + 16);
        let od = launch_template_spec(
            &cfg,
            &nc,
            &resolved(),
            &claim("p"),
            CapacityType::OnDemand,
            Arch::Amd64,
        )
        .unwrap();
        assert_ne!(a.name(), od.name());
        assert!(
            launch_template_spec(
                &cfg,
                &nc,
                &resolved(),
                &claim("p"),
                CapacityType::Spot,
                Arch::Arm64
            )
            .is_err()
        );
        // User data: pool label and capacity type, no per-claim or kubelet-forbidden label.
        assert!(a.user_data.contains("gantry.dev/nodepool=p"));
        assert!(a.user_data.contains("gantry.dev/capacity-type=spot"));
        assert!(a.user_data.contains("team=a"));
        assert!(!a.user_data.contains("claim-1"));
        assert!(!a.user_data.contains("kubernetes.io/hostname"));
        // Taints: unregistered, initializing, then the pool's.
        let keys: Vec<_> = registration_taints(&claim("p"))
            .into_iter()
            .map(|t| t.key)
            .collect();
        assert_eq!(keys, vec![TAINT_UNREGISTERED, TAINT_INITIALIZING, "team"]);
        assert_eq!(a.metadata_options.http_tokens.as_deref(), Some("required"));
        assert_eq!(a.block_device_mappings[0].device_name, "/dev/xvda");
    }

    #[test]
    fn request_data_encodes_user_data_and_disks() {
        let cfg = config();
        let nc = EC2NodeClass::new("default", EC2NodeClassSpec::default());
        let spec = launch_template_spec(
            &cfg,
            &nc,
            &resolved(),
            &claim("p"),
            CapacityType::Spot,
            Arch::Amd64,
        )
        .unwrap();
        let data = request_data(&spec).unwrap();
        let ud = base64::engine::general_purpose::STANDARD
            .decode(data.user_data().unwrap())
            .unwrap();
        assert_eq!(String::from_utf8(ud).unwrap(), spec.user_data);
        let ebs = data.block_device_mappings()[0].ebs().unwrap();
        assert_eq!(ebs.volume_size(), Some(20));
        assert_eq!(volume_gib("100G").unwrap(), 94);
        assert!(volume_gib("lots").is_err());
        assert!(
            kubelet_may_set("node.kubernetes.io/role") && !kubelet_may_set("kubernetes.io/role")
        );
    }
}
