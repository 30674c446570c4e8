//! `ringdb certs`: a private CA, a server certificate and client
//! certificates (rcgen), written as PEM files with keys mode 0600. An
//! existing CA is kept and signs the new certificates (replacing it would
//! invalidate every certificate it issued) unless `force` says otherwise.
//! Also used by `app` for the development certificates of a first start,
//! and by `--check-config` to check the configured TLS files
//! ([`check_files`]): they exist, parse, and each key fits its certificate.

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
    /// Half a CA in the folder: it can neither sign nor be replaced safely.
    #[error("{present} exists but {missing} does not: cannot sign with it; move it away or pass --force to create a new CA")]
    HalfCa {
        /// The CA file found.
        present: PathBuf,
        /// The CA file missing.
        missing: PathBuf,
    },
    /// The existing CA could not be read or used.
    #[error("{file}: cannot use the existing CA: {message} (pass --force to create a new CA, which invalidates every certificate the old one signed)")]
    BadCa {
        /// File name.
        file: PathBuf,
        /// What was wrong.
        message: String,
    },
}

/// What [`generate`] did.
#[derive(Debug, Default)]
pub struct Generated {
    /// Files written.
    pub written: Vec<PathBuf>,
    /// Whether an existing CA was kept and signed the new certificates.
    pub ca_kept: bool,
    /// Whether an existing server certificate was kept (CA kept, no
    /// `--host` given).
    pub server_kept: bool,
}

/// [`issue`] keeping an existing CA; returns the files written.
///
/// # Errors
/// See [`issue`].
pub fn generate(
    out: &Path,
    hosts: &[String],
    clients: &[String],
) -> Result<Vec<PathBuf>, CertError> {
    issue(out, hosts, clients, false).map(|done| done.written)
}

/// Creates `NAME.pem`/`NAME-key.pem` for each client in `out`, signed by
/// the CA `ca.pem`/`ca-key.pem`. An existing CA is kept and used unless
/// `force`; otherwise (or without one) a new CA is made. `server.pem` and
/// `server-key.pem` (SANs localhost, 127.0.0.1, ::1 and `hosts`) are
/// written with a new CA, when missing, or when `hosts` is not empty.
///
/// # Errors
/// Bad names, half a CA or an unusable one (without `force`), rcgen
/// failures, unwritable files.
pub fn issue(
    out: &Path,
    hosts: &[String],
    clients: &[String],
    force: bool,
) -> Result<Generated, CertError> {
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
    let mut done = Generated::default();
    let written = &mut done.written;

    let (ca_file, ca_key_file) = (out.join("ca.pem"), out.join("ca-key.pem"));
    let issuer = match (ca_file.exists(), ca_key_file.exists()) {
        (true, true) if !force => {
            done.ca_kept = true;
            existing_ca(&ca_file, &ca_key_file)?
        }
        (true, false) | (false, true) if !force => {
            let (present, missing) = if ca_file.exists() {
                (ca_file, ca_key_file)
            } else {
                (ca_key_file, ca_file)
            };
            return Err(CertError::HalfCa { present, missing });
        }
        _ => {
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
            Issuer::new(ca_params, ca_key)
        }
    };
    let server_present = out.join("server.pem").exists() && out.join("server-key.pem").exists();
    done.server_kept = done.ca_kept && server_present && hosts.is_empty();

    let mut sans: Vec<String> = DEFAULT_HOSTS.iter().map(|h| h.to_string()).collect();
    sans.extend(
        hosts
            .iter()
            .filter(|h| !sans.contains(h))
            .cloned()
            .collect::<Vec<_>>(),
    );
    if !done.server_kept {
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
    }

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
    Ok(done)
}

/// The CA of `ca.pem` and `ca-key.pem`, to sign with.
fn existing_ca(cert: &Path, key: &Path) -> Result<Issuer<'static, KeyPair>, CertError> {
    let read = |file: &Path| {
        std::fs::read_to_string(file).map_err(|e| CertError::BadCa {
            file: file.to_path_buf(),
            message: e.to_string(),
        })
    };
    let key_pair = KeyPair::from_pem(&read(key)?).map_err(|e| CertError::BadCa {
        file: key.to_path_buf(),
        message: format!("not a PEM private key: {e}"),
    })?;
    let cert_pem = read(cert)?;
    if let Err(message) = key_fits_certificate(&cert_pem, key_pair.serialized_der()) {
        return Err(CertError::BadCa {
            file: key.to_path_buf(),
            message,
        });
    }
    Issuer::from_ca_cert_pem(&cert_pem, key_pair).map_err(|e| CertError::BadCa {
        file: cert.to_path_buf(),
        message: format!("not a PEM CA certificate: {e}"),
    })
}

/// Whether a PKCS#8 private key belongs to the first certificate of a PEM
/// chain.
fn key_fits_certificate(cert_pem: &str, key_pkcs8: &[u8]) -> Result<(), String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("bad PEM certificate: {e}"))?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pkcs8.to_vec()));
    fits(chain, &key)
}

/// Whether `key` belongs to the first certificate of `chain` (a key whose
/// public half cannot be compared counts as fitting).
fn fits(
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    key: &rustls::pki_types::PrivateKeyDer<'_>,
) -> Result<(), String> {
    if chain.is_empty() {
        return Err("no CERTIFICATE block, expected a PEM certificate".into());
    }
    let signer = rustls::crypto::ring::sign::any_supported_type(key)
        .map_err(|e| format!("unsupported private key: {e}"))?;
    match rustls::sign::CertifiedKey::new(chain, signer).keys_match() {
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err("private key does not match the certificate".into())
        }
        _ => Ok(()),
    }
}

/// A configured TLS file that is missing, unreadable, not what it should
/// be, or a key that does not fit its certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileProblem {
    /// YAML location, e.g. `tls.key` or `scrape[0].ca`.
    pub location: String,
    /// What is wrong, naming the file.
    pub message: String,
}

/// Checks every TLS file of the settings (`tls:` and each https scrape
/// job's `ca`, `cert`, `key`): readable, PEM of the right kind, and each
/// private key the key of its certificate. Without `tls:`, the development
/// certificates are made at start and there is nothing to check.
pub fn check_files(settings: &crate::config::Settings) -> Vec<FileProblem> {
    let mut problems = Vec::new();
    if let Some(tls) = &settings.tls {
        check_ca("tls.client_ca", &tls.client_ca, &mut problems);
        check_pair(
            ("tls.cert", &tls.cert),
            ("tls.key", &tls.key),
            &mut problems,
        );
    }
    for (i, job) in settings.scrape.iter().enumerate() {
        if let Some(ca) = &job.ca {
            check_ca(&format!("scrape[{i}].ca"), ca, &mut problems);
        }
        if let (Some(cert), Some(key)) = (&job.cert, &job.key) {
            check_pair(
                (&format!("scrape[{i}].cert"), cert),
                (&format!("scrape[{i}].key"), key),
                &mut problems,
            );
        }
    }
    problems
}

fn problem(
    problems: &mut Vec<FileProblem>,
    location: &str,
    file: &Path,
    what: impl std::fmt::Display,
) {
    problems.push(FileProblem {
        location: location.to_string(),
        message: format!("{}: {what}", file.display()),
    });
}

/// PEM certificates of a file; `None` (and a problem) when unusable.
fn read_certificates(
    location: &str,
    file: &Path,
    problems: &mut Vec<FileProblem>,
) -> Option<Vec<rustls::pki_types::CertificateDer<'static>>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let bytes = match std::fs::read(file) {
        Ok(b) => b,
        Err(e) => {
            problem(problems, location, file, format_args!("cannot read: {e}"));
            return None;
        }
    };
    let chain = match CertificateDer::pem_slice_iter(&bytes).collect::<Result<Vec<_>, _>>() {
        Ok(c) => c,
        Err(e) => {
            problem(problems, location, file, format_args!("bad PEM: {e}"));
            return None;
        }
    };
    if chain.is_empty() {
        problem(
            problems,
            location,
            file,
            "no CERTIFICATE block, expected a PEM certificate",
        );
        return None;
    }
    for (n, cert) in chain.iter().enumerate() {
        if let Err(e) = x509_parser::parse_x509_certificate(cert) {
            problem(
                problems,
                location,
                file,
                format_args!("certificate {n} does not parse: {e}"),
            );
            return None;
        }
    }
    Some(chain)
}

fn check_ca(location: &str, file: &Path, problems: &mut Vec<FileProblem>) {
    let Some(certs) = read_certificates(location, file, problems) else {
        return;
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs {
        if let Err(e) = roots.add(cert) {
            problem(
                problems,
                location,
                file,
                format_args!("not a usable CA certificate: {e}"),
            );
            return;
        }
    }
}

fn check_pair(
    (cert_location, cert): (&str, &Path),
    (key_location, key): (&str, &Path),
    problems: &mut Vec<FileProblem>,
) {
    use rustls::pki_types::pem::PemObject;
    let chain = read_certificates(cert_location, cert, problems);
    let key_der = match std::fs::read(key) {
        Err(e) => {
            problem(
                problems,
                key_location,
                key,
                format_args!("cannot read: {e}"),
            );
            return;
        }
        Ok(bytes) => match rustls::pki_types::PrivateKeyDer::from_pem_slice(&bytes) {
            Ok(k) => k,
            Err(e) => {
                problem(
                    problems,
                    key_location,
                    key,
                    format_args!("not a PEM private key: {e}"),
                );
                return;
            }
        },
    };
    if let Some(chain) = chain {
        if let Err(e) = fits(chain, &key_der) {
            problem(
                problems,
                key_location,
                key,
                format_args!("{e} in {cert_location} ({})", cert.display()),
            );
        }
    }
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
