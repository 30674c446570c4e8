//! The command line: --check-config reports every problem; certs writes
//! private keys mode 0600.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

fn ringdb() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ringdb"))
}

#[test]
fn check_config_reports_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        "listen: {http: nowhere}\nrules:\n  - {name: a, prefix: p, type: mean, timeframe: 60, limit: 10}\n  - {name: a, prefix: p, type: sum, timeframe: 1m, limit: 10, split: up}\n",
    )
    .unwrap();
    let out = ringdb().arg("--check-config").arg(&file).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "4 problem(s)",
        "listen.http: expected IP:port",
        "rules[0].type: unknown value \"mean\"",
        "rules[1].name: duplicate rule name \"a\"",
        "rules[1].split: unknown value \"up\"",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/rules.example.yaml");
    let out = ringdb().args(["--check-config", example]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn certs_writes_private_keys_0600() {
    let dir = tempfile::tempdir().unwrap();
    let out = ringdb()
        .args(["certs", "--out"])
        .arg(dir.path())
        .args(["--host", "ringdb.example.net", "--client", "agent-7"])
        .output()
        .unwrap();
    assert!(out.status.success());
    for (name, mode) in [
        ("ca.pem", 0o644),
        ("ca-key.pem", 0o600),
        ("server.pem", 0o644),
        ("server-key.pem", 0o600),
        ("agent-7.pem", 0o644),
        ("agent-7-key.pem", 0o600),
    ] {
        let meta = std::fs::metadata(dir.path().join(name)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, mode, "{name}");
    }
    let bad = ringdb()
        .args(["certs", "--out"])
        .arg(dir.path())
        .args(["--client", "../x"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
}

/// Whether `client.pem` in `dir` is accepted by a verifier trusting only
/// `ca.pem` in `ca_dir` (what the listeners do).
fn ca_accepts(ca_dir: &std::path::Path, dir: &std::path::Path, client: &str) -> bool {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, UnixTime};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca_dir.join("ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
            .build()
            .unwrap();
    let cert = CertificateDer::from_pem_file(dir.join(format!("{client}.pem"))).unwrap();
    verifier
        .verify_client_cert(&cert, &[], UnixTime::now())
        .is_ok()
}

fn certs(dir: &std::path::Path, extra: &[&str]) -> std::process::Output {
    ringdb()
        .args(["certs", "--out"])
        .arg(dir)
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn certs_signs_with_an_existing_ca_and_replaces_it_only_with_force() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert!(certs(d, &["--client", "first"]).status.success());
    let ca = std::fs::read(d.join("ca.pem")).unwrap();
    let server = std::fs::read(d.join("server.pem")).unwrap();

    let out = certs(d, &["--client", "second"]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("existing CA"));
    assert_eq!(std::fs::read(d.join("ca.pem")).unwrap(), ca, "CA kept");
    assert_eq!(
        std::fs::read(d.join("server.pem")).unwrap(),
        server,
        "server certificate kept without --host"
    );
    let old = tempfile::tempdir().unwrap();
    std::fs::copy(d.join("ca.pem"), old.path().join("ca.pem")).unwrap();
    for client in ["first", "second"] {
        assert!(ca_accepts(d, d, client), "{client} signed by the kept CA");
    }
    let out = certs(d, &["--host", "db.example.net"]);
    assert!(out.status.success());
    assert_ne!(
        std::fs::read(d.join("server.pem")).unwrap(),
        server,
        "--host re-issues"
    );
    assert_eq!(std::fs::read(d.join("ca.pem")).unwrap(), ca);

    let out = certs(d, &["--client", "third", "--force"]);
    assert!(out.status.success());
    assert_ne!(
        std::fs::read(d.join("ca.pem")).unwrap(),
        ca,
        "--force: new CA"
    );
    assert!(ca_accepts(d, d, "third"));
    assert!(
        !ca_accepts(d, d, "first"),
        "the old CA's certificates no longer pass"
    );
    assert!(ca_accepts(old.path(), d, "first"));

    // Half a CA is neither used nor replaced silently.
    std::fs::remove_file(d.join("ca-key.pem")).unwrap();
    let ca = std::fs::read(d.join("ca.pem")).unwrap();
    let out = certs(d, &["--client", "fourth"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ca-key.pem does not") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(std::fs::read(d.join("ca.pem")).unwrap(), ca);
    assert!(!d.join("fourth.pem").exists());
}

#[test]
fn check_config_checks_tls_files_with_their_locations() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert!(certs(&d.join("pki"), &["--client", "scraper"])
        .status
        .success());
    std::fs::write(d.join("garbage.pem"), "not a certificate\n").unwrap();
    let rules = "rules:\n  - {name: raw, prefix: '*', type: last, timeframe: 1s, limit: 10}\n";
    let config = |tls: &str, scrape_tls: &str| {
        let file = d.join("ringdb.yaml");
        std::fs::write(
            &file,
            format!(
                "tls: {{{tls}}}\nscrape:\n  - {{job: a, scheme: https, {scrape_tls}, targets: ['h:1']}}\n{rules}"
            ),
        )
        .unwrap();
        ringdb().arg("--check-config").arg(&file).output().unwrap()
    };
    let good = config(
        "cert: pki/server.pem, key: pki/server-key.pem, client_ca: pki/ca.pem",
        "ca: pki/ca.pem, cert: pki/scraper.pem, key: pki/scraper-key.pem",
    );
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );

    let bad = config(
        "cert: pki/server.pem, key: pki/scraper-key.pem, client_ca: pki/missing.pem",
        "ca: garbage.pem, cert: pki/scraper.pem, key: pki/server-key.pem",
    );
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    for want in [
        "4 problem(s)",
        "tls.client_ca: ",
        "missing.pem: cannot read",
        "tls.key: ",
        "scraper-key.pem: private key does not match the certificate in tls.cert",
        "scrape[0].ca: ",
        "garbage.pem: no CERTIFICATE block",
        "scrape[0].key: ",
        "server-key.pem: private key does not match the certificate in scrape[0].cert",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
}
