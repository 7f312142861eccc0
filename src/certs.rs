//! `gantry certs`: a development CA, a server certificate and a scheduler client certificate.
//!
//! For development and tests only; production clusters issue these with cert-manager
//! (see `certs/README.md`).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use thiserror::Error;

/// The names a server certificate carries by default: the in-cluster Service and loopback.
pub const DEFAULT_DNS: [&str; 5] = [
    "gantry.gantry-system.svc",
    "gantry.gantry-system.svc.cluster.local",
    "gantry.gantry-system",
    "gantry",
    "localhost",
];

/// Why certificate generation failed.
#[derive(Debug, Error)]
pub enum CertError {
    /// rcgen refused the parameters.
    #[error("certificate generation failed")]
    Generate(#[from] rcgen::Error),
    /// Writing a file failed.
    #[error("cannot write {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// PEM texts of a generated set.
#[derive(Debug, Clone)]
pub struct CertSet {
    /// CA certificate.
    pub ca_cert: String,
    /// CA key (kept so more certificates can be issued; guard it).
    pub ca_key: String,
    /// Server certificate.
    pub server_cert: String,
    /// Server key.
    pub server_key: String,
    /// Client certificate for kube-scheduler.
    pub client_cert: String,
    /// Client key.
    pub client_key: String,
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = jiff::Timestamp::now();
    let start = now.strftime("%Y-%m-%d").to_string();
    let end = (now + jiff::SignedDuration::from_hours(24 * days))
        .strftime("%Y-%m-%d")
        .to_string();
    let ymd = |s: &str| -> Option<(i32, u8, u8)> {
        let mut it = s.split('-');
        Some((
            it.next()?.parse().ok()?,
            it.next()?.parse().ok()?,
            it.next()?.parse().ok()?,
        ))
    };
    if let (Some((y1, m1, d1)), Some((y2, m2, d2))) = (ymd(&start), ymd(&end)) {
        // Start a day early so a skewed clock still accepts a fresh certificate.
        params.not_before = rcgen::date_time_ymd(y1, m1, d1.saturating_sub(1).max(1));
        params.not_after = rcgen::date_time_ymd(y2, m2, d2);
    }
}

/// Generates a CA, a server certificate for `dns` and `ips`, and a client certificate.
///
/// # Errors
/// rcgen failures (e.g. an invalid DNS name).
pub fn generate(dns: &[String], ips: &[IpAddr]) -> Result<CertSet, CertError> {
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name
        .push(DnType::CommonName, "gantry development CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut ca, 365);
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, &ca_key);

    let mut names: Vec<String> = dns.to_vec();
    names.extend(ips.iter().map(ToString::to_string));
    let server_key = KeyPair::generate()?;
    let mut server = CertificateParams::new(names)?;
    server.distinguished_name.push(
        DnType::CommonName,
        dns.first().map_or("gantry", String::as_str),
    );
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server.use_authority_key_identifier_extension = true;
    validity(&mut server, 90);
    let server_cert = server.signed_by(&server_key, &issuer)?;

    let client_key = KeyPair::generate()?;
    let mut client = CertificateParams::new(Vec::<String>::new())?;
    client
        .distinguished_name
        .push(DnType::CommonName, "system:kube-scheduler:gantry");
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    client.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    client.use_authority_key_identifier_extension = true;
    validity(&mut client, 90);
    let client_cert = client.signed_by(&client_key, &issuer)?;

    Ok(CertSet {
        ca_cert: ca_cert.pem(),
        ca_key: ca_key.serialize_pem(),
        server_cert: server_cert.pem(),
        server_key: server_key.serialize_pem(),
        client_cert: client_cert.pem(),
        client_key: client_key.serialize_pem(),
    })
}

/// Writes a set as `ca.crt`, `ca.key`, `server.crt`, `server.key`, `client.crt`, `client.key`.
///
/// Keys are written with mode 0600.
///
/// # Errors
/// I/O failures, naming the file.
pub fn write(set: &CertSet, dir: &Path) -> Result<(), CertError> {
    std::fs::create_dir_all(dir).map_err(|source| CertError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let files: [(&str, &str, bool); 6] = [
        ("ca.crt", &set.ca_cert, false),
        ("ca.key", &set.ca_key, true),
        ("server.crt", &set.server_cert, false),
        ("server.key", &set.server_key, true),
        ("client.crt", &set.client_cert, false),
        ("client.key", &set.client_key, true),
    ];
    for (name, text, secret) in files {
        let path = dir.join(name);
        write_file(&path, text, secret).map_err(|source| CertError::Write { path, source })?;
    }
    Ok(())
}

fn write_file(path: &Path, text: &str, secret: bool) -> std::io::Result<()> {
    // Write beside and rename, so a server polling these files never reads half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    }
    #[cfg(not(unix))]
    let _ = secret;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_and_writes_a_full_set() {
        let dir = tempfile::tempdir().unwrap();
        let set = generate(
            &DEFAULT_DNS
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            &["127.0.0.1".parse().unwrap()],
        )
        .unwrap();
        write(&set, dir.path()).unwrap();
        for f in [
            "ca.crt",
            "server.crt",
            "server.key",
            "client.crt",
            "client.key",
        ] {
            let text = std::fs::read_to_string(dir.path().join(f)).unwrap();
            assert!(text.starts_with("-----BEGIN"), "{f}");
        }
    }
}
