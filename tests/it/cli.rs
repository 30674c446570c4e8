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
