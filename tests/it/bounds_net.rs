//! Issue 14, connections: nothing one client does at the connection level
//! (idle or half-open connections, slow headers or bodies, an unlisted or
//! revoked certificate, a refused body still being sent) locks others out
//! or keeps access it should not have. Real daemon, real certificates.

use crate::common::{frame, now_secs, tls_stream, try_request, Daemon};
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const RULES: &str = "rules: [{name: r, prefix: traffic, type: sum, timeframe: 60, limit: 10}]\n";

/// Whether the server closed the connection: a read gives EOF or an error
/// other than our own read timeout within `within`.
fn closed_by_server(stream: &mut impl Read, within: Duration) -> bool {
    let until = Instant::now() + within;
    let mut buf = [0u8; 4096];
    while Instant::now() < until {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(_) => return true,
        }
    }
    false
}

/// Waits until `client` is served again on `addr` (refused connections
/// held by the test were just dropped; the server notices in a moment).
fn wait_served(d: &Daemon, addr: std::net::SocketAddr) {
    let until = Instant::now() + Duration::from_secs(20);
    while try_request(&d.pki, Some("client"), addr, "/-/healthy").is_err() {
        assert!(Instant::now() < until, "never served again");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn tcp(addr: std::net::SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    s
}

/// A keep-alive request on an open TLS stream; reads one answer with a
/// Content-Length body. Err when the server closed the connection.
fn keep_alive_get(stream: &mut (impl Read + Write), path: &str) -> Result<(u16, String), String> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    stream
        .write_all(req.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = stream.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed".into());
        }
        raw.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&raw).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .ok_or_else(|| format!("no content-length in {head:?}"))?;
            if body.len() >= length {
                let status = head
                    .split_whitespace()
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                return Ok((status, body.to_string()));
            }
        }
    }
}

/// Sends a whole request (head, then the body in 64 KiB writes) before
/// reading anything, like most simple HTTP clients; the status read back,
/// or the error that hid it.
fn post_then_read(d: &Daemon, headers: &str, body: &[u8]) -> Result<u16, String> {
    let mut s = tls_stream(&d.pki, Some("client"), d.http);
    let head = format!(
        "POST /api/v1/write HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-protobuf\r\n\
         Content-Encoding: snappy\r\n{headers}Content-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())
        .map_err(|e| format!("writing the head: {e}"))?;
    for chunk in body.chunks(64 << 10) {
        s.write_all(chunk)
            .map_err(|e| format!("writing the body: {e}"))?;
    }
    s.flush().map_err(|e| format!("flushing: {e}"))?;
    let mut raw = Vec::new();
    match s.read_to_end(&mut raw) {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => {}
        Err(e) if raw.is_empty() => return Err(format!("reading the answer: {e}")),
        Err(_) => {}
    }
    let text = String::from_utf8_lossy(&raw);
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status line in {text:?}"))
}

#[test]
fn silent_and_slow_clients_are_closed_on_time_and_counted() {
    let d = Daemon::start(&format!(
        "limits: {{header_timeout: 300ms, idle_timeout: 600ms, body_timeout: 500ms, socket_idle_timeout: 300ms}}\n{RULES}"
    ));
    // An authenticated HTTP connection that never sends a request.
    let mut silent = tls_stream(&d.pki, Some("client"), d.http);
    silent
        .sock
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    assert!(
        closed_by_server(&mut silent, Duration::from_secs(15)),
        "a silent HTTP connection stayed open"
    );
    // Slowloris: a request head one byte every 100 ms never completes.
    let mut slow = tls_stream(&d.pki, Some("client"), d.http);
    let head = b"GET /-/healthy HTTP/1.1\r\nHost: localhost\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut cut = false;
    for b in head.iter() {
        if slow.write_all(&[*b]).and_then(|_| slow.flush()).is_err() {
            cut = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    slow.sock
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    assert!(
        cut || closed_by_server(&mut slow, Duration::from_secs(5)),
        "a request head sent over {} s was still being read",
        head.len() / 10
    );
    // A body that stops arriving: 408.
    let mut stalled = tls_stream(&d.pki, Some("client"), d.http);
    stalled
        .write_all(
            b"POST /api/v1/write HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-protobuf\r\n\
              Content-Length: 1000\r\n\r\nabcdefghij",
        )
        .unwrap();
    stalled.flush().unwrap();
    let mut answer = Vec::new();
    let _ = stalled.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "a stalled body got {answer:?}"
    );
    assert!(answer.contains("limits.body_timeout"), "{answer}");
    // A socket connection that sends nothing.
    let mut quiet = tls_stream(&d.pki, Some("client"), d.socket);
    quiet
        .sock
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    assert!(
        closed_by_server(&mut quiet, Duration::from_secs(15)),
        "a silent socket connection stayed open"
    );
    for (series, at_least) in [
        ("{listener=\"http\",phase=\"header\"}", 2.0),
        ("{listener=\"http\",phase=\"body\"}", 1.0),
        ("{listener=\"socket\",phase=\"idle\"}", 1.0),
    ] {
        let got = d.metric(&format!("ringdb_connection_timeouts_total{series}"));
        assert!(got >= at_least, "{series}: {got}, expected ≥ {at_least}");
    }
    // Meanwhile a well-behaved client is served.
    let (code, _) = try_request(&d.pki, Some("client"), d.http, "/-/healthy").unwrap();
    assert_eq!(code, 200);
}

#[test]
fn one_certificate_or_one_ip_cannot_take_every_connection() {
    let d = Daemon::start(&format!(
        "limits: {{max_client_connections: 3, max_handshakes_per_ip: 2, handshake_timeout: 30s}}\n{RULES}"
    ));
    // Three idle connections of agent-7 are allowed, the fourth is closed
    // right after its handshake; another certificate still gets in.
    let held: Vec<_> = (0..3)
        .map(|_| tls_stream(&d.pki, Some("agent-7"), d.http))
        .collect();
    let mut fourth = tls_stream(&d.pki, Some("agent-7"), d.http);
    let got = keep_alive_get(&mut fourth, "/-/healthy");
    assert!(
        got.is_err(),
        "a 4th connection of agent-7 was served: {got:?}"
    );
    let (code, _) = try_request(&d.pki, Some("client"), d.http, "/-/healthy").unwrap();
    assert_eq!(code, 200, "another certificate is still served");
    drop(held);
    // Two half-open connections (TCP only, no handshake) from 127.0.0.1:
    // the third is closed at accept.
    let half: Vec<_> = (0..2).map(|_| tcp(d.http)).collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut third = tcp(d.http);
    assert!(
        closed_by_server(&mut third, Duration::from_secs(10)),
        "a third connection in the handshake from one IP was kept"
    );
    drop(half);
    wait_served(&d, d.http);
    for (reason, at_least) in [
        ("max_client_connections", 1.0),
        ("max_handshakes_per_ip", 1.0),
    ] {
        let series =
            format!("ringdb_connections_refused_total{{listener=\"http\",reason=\"{reason}\"}}");
        let got = d.wait_metric(&series, at_least);
        assert!(got >= at_least, "{series}: {got}");
    }
}

const CLIENTS: &str = "clients:\n  - {name: agent-7, write: [traffic], read: ['*']}\n  - {name: client, write: ['*'], read: ['*'], admin: true}\n";
const ONLY_CLIENT: &str = "clients:\n  - {name: client, write: ['*'], read: ['*'], admin: true}\n";

#[test]
fn an_unlisted_certificate_is_refused_at_the_connection() {
    let d = Daemon::start(&format!("{CLIENTS}{RULES}"));
    // `reader` is signed by the CA but not listed: no answer at all, not
    // even /metrics.
    for (listener, addr) in [("http", d.http), ("admin", d.admin)] {
        let got = try_request(&d.pki, Some("reader"), addr, "/metrics");
        assert!(
            !matches!(&got, Ok((200, _))),
            "{listener}: unlisted reader got /metrics: {got:?}"
        );
    }
    let mut s = tls_stream(&d.pki, Some("reader"), d.socket);
    s.sock
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    assert!(
        closed_by_server(&mut s, Duration::from_secs(10)),
        "socket: an unlisted reader stayed connected"
    );
    for listener in ["http", "admin", "socket"] {
        let series = format!(
            "ringdb_connections_refused_total{{listener=\"{listener}\",reason=\"unlisted\"}}"
        );
        assert!(d.wait_metric(&series, 1.0) >= 1.0, "{series}");
    }
}

#[test]
fn a_reload_removing_a_client_cuts_its_open_connections() {
    let d = Daemon::start(&format!("{CLIENTS}{RULES}"));
    let t = now_secs() - 30;
    let mut socket = tls_stream(&d.pki, Some("agent-7"), d.socket);
    socket.write_all(&frame(false, t, 1, "traffic-a")).unwrap();
    socket.flush().unwrap();
    let accepted = "ringdb_samples_accepted_total{protocol=\"socket\"}";
    assert_eq!(d.wait_metric(accepted, 1.0), 1.0);
    let mut http = tls_stream(&d.pki, Some("agent-7"), d.http);
    let (code, body) = keep_alive_get(&mut http, "/api/v1/query?query=1").unwrap();
    assert_eq!(code, 200, "before the reload: {body}");

    d.rewrite_config(&format!("{ONLY_CLIENT}{RULES}"));
    d.hup();
    assert_eq!(
        d.wait_metric("ringdb_reloads_total{outcome=\"ok\"}", 1.0),
        1.0
    );

    // The same connections, after the reload.
    let _ = socket
        .write_all(&frame(false, t, 2, "traffic-a"))
        .and_then(|_| socket.flush());
    let refused = "ringdb_connections_refused_total{listener=\"socket\",reason=\"unlisted\"}";
    assert_eq!(
        d.wait_metric(refused, 1.0),
        1.0,
        "socket connection not cut"
    );
    assert_eq!(
        d.metric(accepted),
        1.0,
        "a revoked client's frame was stored"
    );
    let got = keep_alive_get(&mut http, "/api/v1/query?query=1");
    assert!(
        matches!(&got, Ok((403, _)) | Err(_)),
        "a revoked client's open connection still queries: {got:?}"
    );
}

#[test]
fn a_body_over_the_limit_gets_its_413_not_a_reset() {
    let d = Daemon::start(&format!("limits: {{max_body_bytes: 8388608}}\n{RULES}"));
    // 12 MiB declared and sent over an 8 MiB limit: 413, every time.
    let big = vec![0u8; 12 << 20];
    for i in 0..6 {
        assert_eq!(post_then_read(&d, "", &big), Ok(413), "try {i}");
    }
}

#[test]
fn a_write_over_the_in_flight_limit_gets_its_429_not_a_reset() {
    let d = Daemon::start(&format!("limits: {{max_inflight_writes: 1}}\n{RULES}"));
    // The only write slot held by a body that trickles in: 429, every time.
    let mut holder = tls_stream(&d.pki, Some("client"), d.http);
    holder
        .write_all(
            b"POST /api/v1/write HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-protobuf\r\n\
              Content-Encoding: snappy\r\nContent-Length: 100000\r\n\r\nab",
        )
        .unwrap();
    holder.flush().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let body = vec![0u8; 3 << 20];
    for i in 0..8 {
        assert_eq!(post_then_read(&d, "", &body), Ok(429), "try {i}");
    }
    drop(holder);
}

#[test]
fn connections_over_max_connections_are_closed_at_accept() {
    let d = Daemon::start(&format!("limits: {{max_connections: 4}}\n{RULES}"));
    let held: Vec<_> = (0..4).map(|_| tcp(d.http)).collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut fifth = tcp(d.http);
    assert!(
        closed_by_server(&mut fifth, Duration::from_secs(10)),
        "a fifth connection was kept (or queued) over max_connections: 4"
    );
    drop(held);
    wait_served(&d, d.http);
    let series = "ringdb_connections_refused_total{listener=\"http\",reason=\"max_connections\"}";
    assert!(d.wait_metric(series, 1.0) >= 1.0, "{series}");
}

#[test]
fn a_handshake_flood_is_counted_in_full_but_logged_once() {
    // The common Daemon's stderr goes to the terminal: start our own
    // process on its directory and configuration to read the log.
    let mut d = Daemon::start(RULES);
    d.stop();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ringdb"))
        .arg("--config")
        .arg(&d.config)
        .args(["--log", "ringdb=info"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    let http: std::net::SocketAddr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("http="))
        .unwrap_or_else(|| panic!("no http= in {line:?}"))
        .parse()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let log = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let floods = 40;
    for _ in 0..floods {
        assert!(try_request(&d.pki, None, http, "/-/healthy").is_err());
    }
    let (_, text) = try_request(&d.pki, Some("client"), http, "/metrics").unwrap();
    let counted: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("ringdb_tls_handshake_failures_total{listener=\"http\"} "))
        .map_or(0.0, |v| v.trim().parse().unwrap());
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().unwrap();
    let log = log.join().unwrap();
    let logged = log.matches("tls handshake refused").count();
    assert_eq!(counted, floods as f64, "every failed handshake is counted");
    assert!(
        (1..=2).contains(&logged),
        "{floods} failed handshakes logged {logged} lines:\n{log}"
    );
}
