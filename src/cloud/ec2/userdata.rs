//! AL2023 user data: a `NodeConfig` for nodeadm in a MIME multipart document, merged with the
//! NodeClass's own user data.
//!
//! Pure and deterministic (sorted labels, fixed boundary), because the rendered text is part of
//! the launch template hash: the same inputs must give the same template name.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::kube::crd::TaintSpec;

/// The MIME boundary Gantry's documents use.
pub const BOUNDARY: &str = "GANTRY-MIME-BOUNDARY";
/// nodeadm's content type for a `NodeConfig` part.
pub const NODECONFIG_CONTENT_TYPE: &str = "application/node.eks.aws";

/// What the node needs to join the cluster, with the labels and taints it registers with.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NodeConfigInput {
    /// EKS cluster name.
    pub cluster_name: String,
    /// API server URL.
    pub api_server_endpoint: String,
    /// Cluster CA bundle, base64 PEM as EKS reports it.
    pub certificate_authority: String,
    /// Service CIDR, when nodeadm cannot discover it.
    pub cidr: Option<String>,
    /// Node labels passed with `--node-labels`.
    pub labels: BTreeMap<String, String>,
    /// `registerWithTaints`.
    pub taints: Vec<TaintSpec>,
    /// `maxPods`, only when the NodeClass caps it (nodeadm computes it otherwise).
    pub max_pods: Option<u32>,
    /// `systemReserved`.
    pub system_reserved: BTreeMap<String, String>,
    /// `kubeReserved`.
    pub kube_reserved: BTreeMap<String, String>,
    /// `evictionHard`.
    pub eviction_hard: BTreeMap<String, String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct NodeConfig<'a> {
    api_version: &'static str,
    kind: &'static str,
    spec: Spec<'a>,
}

#[derive(Serialize)]
struct Spec<'a> {
    cluster: Cluster<'a>,
    kubelet: Kubelet<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Cluster<'a> {
    name: &'a str,
    api_server_endpoint: &'a str,
    certificate_authority: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    cidr: Option<&'a str>,
}

#[derive(Serialize)]
struct Kubelet<'a> {
    config: KubeletConfig<'a>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    flags: Vec<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct KubeletConfig<'a> {
    register_with_taints: Vec<RegisterTaint<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_pods: Option<u32>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    system_reserved: &'a BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    kube_reserved: &'a BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    eviction_hard: &'a BTreeMap<String, String>,
}

#[derive(Serialize)]
struct RegisterTaint<'a> {
    key: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<&'a str>,
    effect: &'a str,
}

/// Renders Gantry's `NodeConfig` as YAML.
///
/// # Errors
/// Only if YAML serialization fails, which plain strings and maps do not.
pub fn node_config_yaml(input: &NodeConfigInput) -> Result<String, serde_yaml::Error> {
    let labels: Vec<String> = input
        .labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let flags = if labels.is_empty() {
        Vec::new()
    } else {
        vec![format!("--node-labels={}", labels.join(","))]
    };
    let doc = NodeConfig {
        api_version: "node.eks.aws/v1alpha1",
        kind: "NodeConfig",
        spec: Spec {
            cluster: Cluster {
                name: &input.cluster_name,
                api_server_endpoint: &input.api_server_endpoint,
                certificate_authority: &input.certificate_authority,
                cidr: input.cidr.as_deref(),
            },
            kubelet: Kubelet {
                config: KubeletConfig {
                    register_with_taints: input
                        .taints
                        .iter()
                        .map(|t| RegisterTaint {
                            key: &t.key,
                            value: t.value.as_deref(),
                            effect: &t.effect,
                        })
                        .collect(),
                    max_pods: input.max_pods,
                    system_reserved: &input.system_reserved,
                    kube_reserved: &input.kube_reserved,
                    eviction_hard: &input.eviction_hard,
                },
                flags,
            },
        },
    };
    serde_yaml::to_string(&doc)
}

/// One MIME part: its headers (without the trailing blank line) and body.
#[derive(Debug, Clone, PartialEq)]
struct Part {
    headers: String,
    body: String,
}

/// Renders the full user data: the NodeClass's parts first, then Gantry's `NodeConfig`, so that
/// nodeadm's merge lets Gantry's cluster settings, labels and taints win.
///
/// # Errors
/// Only if YAML serialization fails.
pub fn render(input: &NodeConfigInput, custom: Option<&str>) -> Result<String, serde_yaml::Error> {
    let mut parts = custom.map(custom_parts).unwrap_or_default();
    parts.push(Part {
        headers: format!("Content-Type: {NODECONFIG_CONTENT_TYPE}"),
        body: format!("---\n{}", node_config_yaml(input)?),
    });
    let mut out =
        format!("MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"{BOUNDARY}\"\n\n");
    for p in parts {
        out.push_str(&format!("--{BOUNDARY}\n{}\n\n", p.headers.trim_end()));
        out.push_str(p.body.trim_end_matches('\n'));
        out.push('\n');
    }
    out.push_str(&format!("--{BOUNDARY}--\n"));
    Ok(out)
}

/// Splits the NodeClass's user data into parts: a MIME multipart document keeps its parts; a bare
/// document becomes one part typed by its content (NodeConfig YAML, or a shell script).
fn custom_parts(text: &str) -> Vec<Part> {
    let text = text.replace("\r\n", "\n");
    if text.trim().is_empty() {
        return Vec::new();
    }
    if let Some(boundary) = mime_boundary(&text) {
        let delim = format!("--{boundary}");
        return text
            .split(delim.as_str())
            .skip(1)
            .filter(|chunk| !chunk.starts_with("--"))
            .filter_map(|chunk| {
                let chunk = chunk.strip_prefix('\n').unwrap_or(chunk);
                let (headers, body) = chunk.split_once("\n\n")?;
                Some(Part {
                    headers: headers.to_string(),
                    body: body.to_string(),
                })
            })
            .collect();
    }
    let content_type = if text.contains("kind: NodeConfig") {
        NODECONFIG_CONTENT_TYPE
    } else {
        "text/x-shellscript; charset=\"us-ascii\""
    };
    vec![Part {
        headers: format!("Content-Type: {content_type}"),
        body: text,
    }]
}

/// The boundary of a MIME multipart document, read from its headers.
fn mime_boundary(text: &str) -> Option<String> {
    let (headers, _) = text.split_once("\n\n")?;
    let lower = headers.to_ascii_lowercase();
    if !lower.contains("multipart/") {
        return None;
    }
    let idx = lower.find("boundary=")?;
    let rest = headers.get(idx + "boundary=".len()..)?;
    let value = match rest.strip_prefix('"') {
        Some(quoted) => quoted.split('"').next()?,
        None => rest.split(|c: char| c == ';' || c.is_whitespace()).next()?,
    };
    (!value.is_empty()).then(|| value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> NodeConfigInput {
        NodeConfigInput {
            cluster_name: "prod".into(),
            api_server_endpoint: "https://ABC.eks.amazonaws.com".into(),
            certificate_authority: "Q0E=".into(),
            labels: BTreeMap::from([
                ("gantry.dev/nodepool".to_string(), "default".to_string()),
                ("gantry.dev/capacity-type".to_string(), "spot".to_string()),
            ]),
            taints: vec![TaintSpec {
                key: "gantry.dev/unregistered".into(),
                value: Some("true".into()),
                effect: "NoExecute".into(),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn nodeconfig_carries_cluster_labels_and_taints() {
        let ud = render(&input(), None).unwrap();
        assert!(ud.starts_with("MIME-Version: 1.0\n"), "{ud}");
        assert!(ud.contains("Content-Type: application/node.eks.aws"));
        assert!(ud.contains("kind: NodeConfig"));
        assert!(ud.contains("name: prod"));
        assert!(ud.contains("apiServerEndpoint: https://ABC.eks.amazonaws.com"));
        assert!(
            ud.contains("--node-labels=gantry.dev/capacity-type=spot,gantry.dev/nodepool=default")
        );
        assert!(ud.contains("registerWithTaints:"));
        assert!(ud.contains("key: gantry.dev/unregistered"));
        assert!(!ud.contains("maxPods"));
        assert!(ud.ends_with(&format!("--{BOUNDARY}--\n")));
        // Deterministic: the text is hashed into the launch template name.
        assert_eq!(ud, render(&input(), None).unwrap());
    }

    #[test]
    fn merges_shell_script_and_mime_user_data() {
        let ud = render(&input(), Some("#!/bin/bash\necho hi\n")).unwrap();
        let script = ud.find("text/x-shellscript").unwrap();
        let ours = ud.find("kind: NodeConfig").unwrap();
        assert!(script < ours);
        assert!(ud.contains("echo hi"));

        let mime = "MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"XX\"\n\n--XX\nContent-Type: application/node.eks.aws\n\napiVersion: node.eks.aws/v1alpha1\nkind: NodeConfig\nspec:\n  kubelet:\n    config:\n      shutdownGracePeriod: 30s\n--XX\nContent-Type: text/x-shellscript\n\n#!/bin/sh\necho two\n--XX--\n";
        let ud = render(&input(), Some(mime)).unwrap();
        assert_eq!(ud.matches(&format!("--{BOUNDARY}\n")).count(), 3, "{ud}");
        assert!(ud.contains("shutdownGracePeriod: 30s"));
        assert!(ud.contains("echo two"));
        assert!(!ud.contains("--XX"));

        let bare = "apiVersion: node.eks.aws/v1alpha1\nkind: NodeConfig\nspec: {}\n";
        let ud = render(&input(), Some(bare)).unwrap();
        assert_eq!(
            ud.matches("Content-Type: application/node.eks.aws").count(),
            2
        );
    }

    #[test]
    fn boundary_parsing() {
        assert_eq!(
            mime_boundary("Content-Type: multipart/mixed; boundary=abc\n\nx").as_deref(),
            Some("abc")
        );
        assert_eq!(mime_boundary("#!/bin/sh\n\necho"), None);
    }
}
