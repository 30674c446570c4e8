//! Shared helpers for integration tests: certificates, a real daemon on
//! 127.0.0.1:0 in a temp dir, and small mTLS clients (raw socket frames,
//! HTTP/1.1) built on rustls directly.
#![allow(dead_code)]

pub mod model;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Wall clock seconds.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A PKI made with `ringdb certs`: CA, server, clients `client` and
/// `agent-7`, plus a second CA with its own client (`stranger`) and an
/// expired client certificate signed by the right CA.
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    pub fn new(dir: &Path) -> Pki {
        let dir = dir.join("pki");
        let out = Command::new(env!("CARGO_BIN_EXE_ringdb"))
            .args(["certs", "--out"])
            .arg(&dir)
            .args([
                "--client", "client", "--client", "agent-7", "--client", "reader",
            ])
            .output()
            .expect("run ringdb certs");
        assert!(
            out.status.success(),
            "ringdb certs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let other = dir.join("other");
        ringdb::certs::generate(&other, &[], &["stranger".into()]).unwrap();
        make_expired(&dir);
        Pki { dir }
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Client TLS config presenting `client` (None: no certificate).
    pub fn client_config(&self, client: Option<&str>) -> Arc<rustls::ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(self.file("ca.pem")).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let config = match client {
            None => builder.with_no_client_auth(),
            Some(name) => {
                let (cert, key) = self.client_files(name);
                let chain = CertificateDer::pem_file_iter(&cert)
                    .unwrap()
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap();
                let key = PrivateKeyDer::from_pem_file(&key).unwrap();
                builder.with_client_auth_cert(chain, key).unwrap()
            }
        };
        Arc::new(config)
    }

    /// (cert, key) files of a client; `stranger` is from the other CA.
    pub fn client_files(&self, name: &str) -> (PathBuf, PathBuf) {
        let dir = if name == "stranger" {
            self.dir.join("other")
        } else {
            self.dir.clone()
        };
        (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}-key.pem")),
        )
    }
}

/// `expired.pem`: signed by the real CA, valid only in 2020.
fn make_expired(dir: &Path) {
    let ca_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(dir.join("ca-key.pem")).unwrap())
            .unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "ringdb CA");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "expired");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2020, 12, 31);
    let cert = params.signed_by(&key, &issuer).unwrap();
    std::fs::write(dir.join("expired.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("expired-key.pem"), key.serialize_pem()).unwrap();
}

/// A running `ringdb` on 127.0.0.1:0 with its own temp dir.
pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub pki: Pki,
    pub config: PathBuf,
    child: Option<Child>,
    pub socket: SocketAddr,
    pub http: SocketAddr,
    pub admin: SocketAddr,
}

/// Builds a config: ports 0, the test PKI, a data dir, then `extra` YAML
/// (must contain `rules:`).
fn write_config(dir: &Path, extra: &str) -> PathBuf {
    let text = format!(
        "data_dir: data\nlisten: {{socket: 127.0.0.1:0, http: 127.0.0.1:0, admin: 127.0.0.1:0}}\n\
         tls: {{cert: pki/server.pem, key: pki/server-key.pem, client_ca: pki/ca.pem}}\n{extra}"
    );
    let file = dir.join("ringdb.yaml");
    std::fs::write(&file, text).unwrap();
    file
}

impl Daemon {
    /// Starts a daemon with `extra` config (rules, snapshot, limits, clients).
    pub fn start(extra: &str) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new(dir.path());
        let config = write_config(dir.path(), extra);
        let mut d = Daemon {
            dir,
            pki,
            config,
            child: None,
            socket: "0.0.0.0:0".parse().unwrap(),
            http: "0.0.0.0:0".parse().unwrap(),
            admin: "0.0.0.0:0".parse().unwrap(),
        };
        d.spawn();
        d
    }

    /// Starts the process on the existing dir and config.
    pub fn spawn(&mut self) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ringdb"))
            .arg("--config")
            .arg(&self.config)
            .args(["--log", "ringdb=warn"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn ringdb");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let line = lines
            .next()
            .expect("ringdb exited before listening")
            .unwrap();
        let addr = |key: &str| -> SocketAddr {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{key}=")))
                .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
                .parse()
                .unwrap()
        };
        self.socket = addr("socket");
        self.http = addr("http");
        self.admin = addr("admin");
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        self.child = Some(child);
    }

    /// SIGTERM and wait; returns the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        wait_with_deadline(&mut child, Duration::from_secs(30))
    }

    /// Replaces the config file's `extra` part (ports, TLS and data dir stay).
    pub fn rewrite_config(&self, extra: &str) {
        write_config(self.dir.path(), extra);
    }

    /// Sends SIGHUP (reload).
    pub fn hup(&self) {
        let child = self.child.as_ref().expect("running");
        unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    }

    /// SIGKILL and wait.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Sends raw bytes on the socket listener as `client` and closes at
    /// once, without reading and without a TLS close_notify.
    pub fn send_raw(&self, client: &str, bytes: &[u8]) {
        let mut s = tls_stream(&self.pki, Some(client), self.socket);
        s.write_all(bytes).unwrap();
        s.flush().unwrap();
        // Dropping the stream closes TCP without close_notify.
    }

    /// GET over mTLS as `client` on the HTTP listener.
    pub fn get(&self, path: &str) -> (u16, String) {
        http_request(&self.pki, "client", self.http, "GET", path, "")
    }

    /// GET returning parsed JSON, asserting the status.
    pub fn get_json(&self, path: &str, status: u16) -> serde_json::Value {
        let (code, body) = self.get(path);
        assert_eq!(code, status, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
    }

    /// The value of one self-metric line (`name{labels}`), 0 if absent.
    pub fn metric(&self, series: &str) -> f64 {
        let (_, text) = self.get("/metrics");
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
            .map_or(0.0, |v| v.trim().parse().unwrap())
    }

    /// Polls `/metrics` until `series` reaches `want` or 20 s pass.
    pub fn wait_metric(&self, series: &str, want: f64) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let v = self.metric(series);
            if v >= want || Instant::now() > deadline {
                return v;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn wait_with_deadline(child: &mut Child, deadline: Duration) -> ExitStatus {
    let until = Instant::now() + deadline;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < until, "ringdb did not exit in time");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A finished TLS connection as `client` (None: no certificate).
pub fn tls_stream(
    pki: &Pki,
    client: Option<&str>,
    addr: SocketAddr,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let conn = rustls::ClientConnection::new(
        pki.client_config(client),
        ServerName::try_from("localhost").unwrap(),
    )
    .unwrap();
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut s = rustls::StreamOwned::new(conn, tcp);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock).unwrap();
    }
    s
}

/// Tries a request with the given client identity; `Err` when the server
/// refuses the connection (handshake or first read fails).
pub fn try_request(
    pki: &Pki,
    client: Option<&str>,
    addr: SocketAddr,
    path: &str,
) -> Result<(u16, String), String> {
    let conn = rustls::ClientConnection::new(
        pki.client_config(client),
        ServerName::try_from("localhost").unwrap(),
    )
    .map_err(|e| e.to_string())?;
    let tcp = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut s = rustls::StreamOwned::new(conn, tcp);
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    if raw.is_empty() {
        return Err("connection closed without a response".into());
    }
    Ok(parse_response(&raw))
}

/// One HTTP/1.1 request over mTLS; returns (status, body).
pub fn http_request(
    pki: &Pki,
    client: &str,
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, String) {
    let (status, _, body) = http_raw(
        pki,
        client,
        addr,
        method,
        path,
        &[("Content-Type", "application/x-www-form-urlencoded")],
        body.as_bytes(),
    );
    (status, body)
}

/// One HTTP/1.1 request with chosen headers and a binary body; returns
/// (status, response head, body).
pub fn http_raw(
    pki: &Pki,
    client: &str,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, String) {
    let mut s = tls_stream(pki, Some(client), addr);
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    s.write_all(&bytes).unwrap();
    let mut raw = Vec::new();
    match s.read_to_end(&mut raw) {
        Ok(_) => {}
        // The server may close without close_notify after Connection: close.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
        Err(e) => panic!("{method} {path}: {e}"),
    }
    let (status, body) = parse_response(&raw);
    let text = String::from_utf8_lossy(&raw);
    let head = text.split("\r\n\r\n").next().unwrap_or("").to_string();
    (status, head, body)
}

fn parse_response(raw: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, body)
}

/// Decodes a chunked HTTP/1.1 body.
pub fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = &rest[n + 2..];
    }
    out
}

/// Percent-encodes all but unreserved characters (for URL paths and queries).
pub fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A port on 127.0.0.1 that was free a moment ago (nothing listens on it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A peer process (Prometheus, node exporter) killed when dropped.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An in-process store with one `"*"` rule: `last`, float cells.
pub fn float_store(timeframe_secs: u64, limit: u32) -> ringdb::store::Store {
    use ringdb::rrd::{Consolidation, Shape, Split, ValueSize};
    use ringdb::rules::{Rule, RuleSet};
    let rule = Rule {
        name: "float".into(),
        prefix: "*".into(),
        shape: Shape {
            consolidation: Consolidation::Last,
            timeframe_secs,
            limit,
            split: Split::Backward,
            value_size: ValueSize::Float,
            specials: vec![],
        },
        autoremove: false,
    };
    let limits = ringdb::store::StoreLimits {
        max_future_ms: 0,
        max_series: u64::MAX,
    };
    ringdb::store::Store::new(RuleSet::new(vec![rule]), limits)
}

/// Writes the samples (ms, value) of a label-set series (`__name__`
/// included) as remote_write would; returns how many were refused.
pub fn write_labelled(
    store: &ringdb::store::Store,
    labels: &[(String, String)],
    samples: &[(i64, f64)],
) -> usize {
    use ringdb::model::{series_key, Sample, Value};
    let name = labels
        .iter()
        .find(|(k, _)| k == "__name__")
        .map_or("", |(_, v)| v.as_str());
    let others = labels
        .iter()
        .filter(|(k, _)| k != "__name__")
        .map(|(k, v)| (k.as_str(), v.as_str()));
    let key = series_key(name, others);
    let make_labels = || labels.to_vec();
    let samples: Vec<Sample> = samples
        .iter()
        .map(|&(t, v)| Sample {
            timestamp_ms: t as u64,
            value: Value::Float(v),
        })
        .collect();
    let id = ringdb::store::SeriesId {
        key: &key,
        shared: None,
        prefix: name,
        labels: Some(&make_labels),
    };
    let mut refused = 0;
    store.write_batch(&id, &samples, u64::MAX / 2, |r| {
        refused += usize::from(r.is_err())
    });
    refused
}

/// Encodes one socket frame.
pub fn frame(special: bool, ts: u64, value: u64, path: &str) -> Vec<u8> {
    let mut out = Vec::new();
    ringdb::ingest::frame::encode(&mut out, special, ts, value, path);
    out
}
