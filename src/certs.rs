//! `ringdb certs`: a private CA, a server certificate and client
//! certificates (rcgen), written as PEM files with keys mode 0600. Also used
//! by `app` for the development certificates of a first start.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::path::{Path, PathBuf};

/// Hosts every server certificate is valid for.
pub const DEFAULT_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// Certificates that could not be made or written.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// rcgen refused the parameters.
    #[error("cannot create certificate {what}: {source}")]
    Generate {
        /// Which certificate.
        what: String,
        /// rcgen's error.
        source: rcgen::Error,
    },
    /// A file could not be written.
    #[error("{file}: cannot write: {source}")]
    Write {
        /// File name.
        file: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A client name that cannot be a file name.
    #[error("client name {0:?}: expected letters, digits, '_', '-' or '.'")]
    BadName(String),
}

/// Creates `ca.pem`, `ca-key.pem`, `server.pem`, `server-key.pem` (SANs
/// localhost, 127.0.0.1, ::1 and `hosts`) and `NAME.pem`/`NAME-key.pem` for
/// each client in `out`. Returns the files written.
///
/// # Errors
/// Bad names, rcgen failures, unwritable files.
pub fn generate(
    out: &Path,
    hosts: &[String],
    clients: &[String],
) -> Result<Vec<PathBuf>, CertError> {
    for name in clients {
        if name.is_empty()
            || name.starts_with('.')
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
        {
            return Err(CertError::BadName(name.clone()));
        }
    }
    std::fs::create_dir_all(out).map_err(|source| CertError::Write {
        file: out.to_path_buf(),
        source,
    })?;
    let mut written = Vec::new();

    let ca_key = gen("ca", KeyPair::generate())?;
    let mut ca_params = gen("ca", CertificateParams::new(Vec::<String>::new()))?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "ringdb CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = gen("ca", ca_params.self_signed(&ca_key))?;
    written.push(write(out, "ca.pem", &ca_cert.pem(), false)?);
    written.push(write(out, "ca-key.pem", &ca_key.serialize_pem(), true)?);
    let issuer = Issuer::new(ca_params, ca_key);

    let mut sans: Vec<String> = DEFAULT_HOSTS.iter().map(|h| h.to_string()).collect();
    sans.extend(
        hosts
            .iter()
            .filter(|h| !sans.contains(h))
            .cloned()
            .collect::<Vec<_>>(),
    );
    let server_key = gen("server", KeyPair::generate())?;
    let mut params = gen("server", CertificateParams::new(sans))?;
    params
        .distinguished_name
        .push(DnType::CommonName, "ringdb server");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = gen("server", params.signed_by(&server_key, &issuer))?;
    written.push(write(out, "server.pem", &cert.pem(), false)?);
    written.push(write(
        out,
        "server-key.pem",
        &server_key.serialize_pem(),
        true,
    )?);

    for name in clients {
        let key = gen(name, KeyPair::generate())?;
        let mut params = gen(name, CertificateParams::new(Vec::<String>::new()))?;
        params
            .distinguished_name
            .push(DnType::CommonName, name.as_str());
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = gen(name, params.signed_by(&key, &issuer))?;
        written.push(write(out, &format!("{name}.pem"), &cert.pem(), false)?);
        written.push(write(
            out,
            &format!("{name}-key.pem"),
            &key.serialize_pem(),
            true,
        )?);
    }
    Ok(written)
}

fn gen<T>(what: &str, r: Result<T, rcgen::Error>) -> Result<T, CertError> {
    r.map_err(|source| CertError::Generate {
        what: what.to_string(),
        source,
    })
}

fn write(dir: &Path, name: &str, pem: &str, secret: bool) -> Result<PathBuf, CertError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let file = dir.join(name);
    let mode = if secret { 0o600 } else { 0o644 };
    let result = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&file)
        .and_then(|mut f| {
            // `mode` applies only to new files; make an existing key private too.
            std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(mode))?;
            f.write_all(pem.as_bytes())
        });
    result.map_err(|source| CertError::Write {
        file: file.clone(),
        source,
    })?;
    Ok(file)
}
