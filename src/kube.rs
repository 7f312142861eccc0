//! The Kubernetes adapter: CRD types, object-to-view translations, and watches into `ClusterState`.

pub mod api;
pub mod cluster;
pub mod crd;
pub mod leader;
pub mod views;
pub mod watch;

use kube::CustomResourceExt;

/// Renders the three CRDs as one multi-document YAML, the only source of `manifests/crds.yaml`.
///
/// # Errors
/// Serialization failures (not expected).
pub fn crds_yaml() -> Result<String, serde_yaml::Error> {
    let mut out = String::new();
    for crd in [
        crd::NodePool::crd(),
        crd::EC2NodeClass::crd(),
        crd::NodeClaim::crd(),
    ] {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd)?);
    }
    Ok(out)
}

/// Writes the CRDs to a file or stdout.
///
/// # Errors
/// I/O or serialization failures.
pub fn write_crds(out: Option<&std::path::Path>) -> anyhow::Result<()> {
    let yaml = crds_yaml()?;
    match out {
        Some(path) => std::fs::write(path, yaml)?,
        None => print!("{yaml}"),
    }
    Ok(())
}
