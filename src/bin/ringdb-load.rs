//! Load generator for ringdb and its peers: pipelined socket frames, or
//! realistic remote_write batches (many series, one sample each per
//! request, several connections). Prints samples/s.
//!
//! ```text
//! ringdb-load socket --addr 127.0.0.1:2011 --ca ca.pem --cert c.pem --key c-key.pem
//! ringdb-load remote-write --url https://localhost:9201/api/v1/write --ca ... --cert ... --key ...
//! ringdb-load remote-write --url http://127.0.0.1:9090/api/v1/write      # a peer without TLS
//! ```

use clap::{Args, Parser, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use ringdb::ingest::remote_write::{encode, label, proto};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Parser)]
#[command(about = "Drive ringdb (or a peer) with samples and print samples/s")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Rule sets of the snapshot benchmark.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum SnapshotRules {
    One,
    Bench,
}

#[derive(Subcommand)]
enum Command {
    /// Binary socket frames (YAWNDB v3) over mTLS.
    Socket {
        /// Socket listener address.
        #[arg(long)]
        addr: String,
        #[command(flatten)]
        tls: TlsArgs,
        /// Distinct paths (prefix `traffic`).
        #[arg(long, default_value_t = 100_000)]
        paths: u64,
        /// Frames in all.
        #[arg(long, default_value_t = 2_000_000)]
        frames: u64,
        /// Parallel connections.
        #[arg(long, default_value_t = 4)]
        connections: u64,
        /// Seconds between a path's samples (round `r` of `frames / paths`
        /// is `r × step` seconds before now).
        #[arg(long, default_value_t = 1)]
        step_secs: u64,
    },
    /// Snapshot and restore cost, in process: archives of 1440 one-minute
    /// buckets (or the bench's three traffic rules), one new sample in
    /// each, then a save, then a restore into an empty store.
    Snapshot {
        /// Archives in all (series × rules).
        #[arg(long, default_value_t = 100_000)]
        archives: u64,
        /// `one`: one rule of 1440 one-minute buckets, one archive a series
        /// (11.5 KB of buckets an archive). `bench`: scripts/bench's three
        /// traffic rules (1440 × 1m, 720 × 1h, 365 × 1d), three archives a
        /// series (6.7 KB an archive on average), as a daemon holds them.
        #[arg(long, value_enum, default_value_t = SnapshotRules::One)]
        rules: SnapshotRules,
        /// Folder for the sled store (created, then removed).
        #[arg(long)]
        dir: PathBuf,
    },
    /// Memory per path, in process: every path gets three float archives of
    /// `buckets` one-minute buckets (last, max, sum), every bucket filled;
    /// RSS growth is compared with the raw cell bytes.
    Memory {
        /// Paths (series).
        #[arg(long, default_value_t = 1_000_000)]
        paths: u64,
        /// Buckets per archive.
        #[arg(long, default_value_t = 360)]
        buckets: u32,
    },
    /// Prometheus remote_write 1.0 batches.
    RemoteWrite {
        /// Full URL; https uses the TLS files, http none.
        #[arg(long)]
        url: String,
        #[command(flatten)]
        tls: TlsArgs,
        #[command(flatten)]
        load: RemoteWriteLoad,
    },
}

#[derive(Args, Clone)]
struct TlsArgs {
    /// CA that signed the server.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Client certificate.
    #[arg(long)]
    cert: Option<PathBuf>,
    /// Client key.
    #[arg(long)]
    key: Option<PathBuf>,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

fn connector(tls: &TlsArgs) -> anyhow::Result<tokio_rustls::TlsConnector> {
    let (Some(ca), Some(cert), Some(key)) = (&tls.ca, &tls.cert, &tls.key) else {
        anyhow::bail!("--ca, --cert and --key are required for TLS");
    };
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca)? {
        roots.add(c?)?;
    }
    let chain = CertificateDer::pem_file_iter(cert)?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(key)?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)?;
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

async fn connect(
    addr: &str,
    host: &str,
    tls: Option<&tokio_rustls::TlsConnector>,
) -> anyhow::Result<Box<dyn Io>> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    Ok(match tls {
        Some(c) => Box::new(
            c.connect(ServerName::try_from(host.to_string())?, tcp)
                .await?,
        ),
        None => Box::new(tcp),
    })
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// CPU seconds (user + system, every thread) this process used so far, from
/// /proc (Linux; 0 elsewhere): on a shared machine, wall time alone says
/// little about a change.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th of the whole line, in clock ticks (100 a second).
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let ticks: u64 = after_name
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|f| f.parse::<u64>().ok())
        .sum();
    ticks as f64 / 100.0
}

fn report(what: &str, samples: u64, elapsed: Duration) {
    println!(
        "{what}: {samples} samples in {:.2} s = {:.0} samples/s",
        elapsed.as_secs_f64(),
        samples as f64 / elapsed.as_secs_f64()
    );
}

async fn socket(
    addr: String,
    tls: TlsArgs,
    paths: u64,
    frames: u64,
    connections: u64,
    step_secs: u64,
) -> anyhow::Result<()> {
    let connector = connector(&tls)?;
    let t = (now_ms() / 1000) as u64;
    let per_conn = frames / connections;
    // Encode every frame first so the measurement is of the server.
    let buffers: Vec<Vec<u8>> = (0..connections)
        .map(|c| {
            let mut buf = Vec::with_capacity(per_conn as usize * 40);
            for i in 0..per_conn {
                let n = c * per_conn + i;
                let path = format!("traffic-client{}-in", n % paths);
                ringdb::ingest::frame::encode(
                    &mut buf,
                    false,
                    t - (n / paths) % 60 * step_secs,
                    n % 1000,
                    &path,
                );
            }
            buf
        })
        .collect();
    let mut tasks = Vec::new();
    let started = Instant::now();
    for buf in buffers {
        let (addr, connector) = (addr.clone(), connector.clone());
        tasks.push(tokio::spawn(async move {
            let mut stream = connect(&addr, "localhost", Some(&connector)).await?;
            for chunk in buf.chunks(1 << 20) {
                stream.write_all(chunk).await?;
            }
            stream.shutdown().await?;
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    report(
        "socket (sent; check ringdb_samples_accepted_total)",
        per_conn * connections,
        started.elapsed(),
    );
    Ok(())
}

fn batch_body(first: u64, batch: u64, series: u64, metrics: u64, ts: i64) -> Bytes {
    let timeseries = (first..first + batch)
        .map(|i| {
            let i = i % series;
            proto::TimeSeries {
                labels: vec![
                    label("__name__", &format!("bench_metric_{}", i % metrics)),
                    label(
                        "instance",
                        &format!("host-{}.example.net:9100", i / metrics),
                    ),
                    label("job", "node"),
                ],
                samples: vec![proto::Sample {
                    value: (i as f64) * 1.5 + ts as f64 / 1e6,
                    timestamp: ts,
                }],
                ..Default::default()
            }
        })
        .collect();
    Bytes::from(encode(&proto::WriteRequest {
        timeseries,
        metadata: vec![],
    }))
}

/// Shape of a remote_write load.
#[derive(Args)]
struct RemoteWriteLoad {
    /// Distinct series.
    #[arg(long, default_value_t = 100_000)]
    series: u64,
    /// Samples (series) per request.
    #[arg(long, default_value_t = 1000)]
    batch: u64,
    /// Rounds over all series (one sample per series each round).
    #[arg(long, default_value_t = 20)]
    rounds: u64,
    /// Parallel connections.
    #[arg(long, default_value_t = 4)]
    connections: u64,
    /// Milliseconds between rounds' timestamps (the last round is now).
    #[arg(long, default_value_t = 1000)]
    interval_ms: i64,
    /// Distinct metric names the series are spread over.
    #[arg(long, default_value_t = 50)]
    metrics: u64,
}

async fn remote_write(url: String, tls: TlsArgs, load: RemoteWriteLoad) -> anyhow::Result<()> {
    let RemoteWriteLoad {
        series,
        batch,
        rounds,
        connections,
        interval_ms,
        metrics,
    } = load;
    let uri: hyper::Uri = url.parse()?;
    let host = uri.host().unwrap_or("localhost").to_string();
    let secure = uri.scheme_str() == Some("https");
    let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
    let addr = format!(
        "{}:{port}",
        if host == "localhost" {
            "127.0.0.1"
        } else {
            &host
        }
    );
    let connector = if secure { Some(connector(&tls)?) } else { None };
    // Encode every body first so the measurement is of the server.
    let start_ts = now_ms() - (rounds as i64 - 1) * interval_ms;
    let per_round = series.div_ceil(batch);
    let encode_started = Instant::now();
    let bodies: Vec<Bytes> = (0..rounds)
        .flat_map(|r| (0..per_round).map(move |b| (r, b)))
        .map(|(r, b)| {
            batch_body(
                b * batch,
                batch,
                series,
                metrics.max(1),
                start_ts + r as i64 * interval_ms,
            )
        })
        .collect();
    eprintln!(
        "encoded {} bodies in {:.1} s",
        bodies.len(),
        encode_started.elapsed().as_secs_f64()
    );
    let bodies = Arc::new(bodies);
    let next = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (bodies, next, failed, connector) = (
            bodies.clone(),
            next.clone(),
            failed.clone(),
            connector.clone(),
        );
        let (addr, host, path) = (addr.clone(), host.clone(), uri.path().to_string());
        tasks.push(tokio::spawn(async move {
            let io = connect(&addr, &host, connector.as_ref()).await?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io)).await?;
            tokio::spawn(conn);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(body) = bodies.get(i) else { break };
                let req = hyper::Request::post(&path)
                    .header("host", &host)
                    .header("content-type", "application/x-protobuf")
                    .header("content-encoding", "snappy")
                    .header("x-prometheus-remote-write-version", "0.1.0")
                    .body(Full::new(body.clone()))?;
                let resp = sender.send_request(req).await?;
                let status = resp.status();
                let _ = resp.into_body().collect().await?;
                if !status.is_success() {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let elapsed = started.elapsed();
    let requests = bodies.len() as u64;
    report(
        &format!(
            "remote_write {url} ({requests} requests, {} failed)",
            failed.load(Ordering::Relaxed)
        ),
        requests * batch,
        elapsed,
    );
    Ok(())
}

fn snapshot(archives: u64, rules: SnapshotRules, dir: PathBuf) -> anyhow::Result<()> {
    use ringdb::model::{Sample, Value};
    use ringdb::rrd::{Consolidation, Shape, Split, ValueSize};
    use ringdb::rules::{Rule, RuleSet};
    use ringdb::snapshot::Snapshotter;
    use ringdb::store::{Store, StoreLimits};
    let rule = |name: &str, consolidation, timeframe_secs, limit| Rule {
        name: name.into(),
        prefix: "traffic".into(),
        shape: Shape {
            consolidation,
            timeframe_secs,
            limit,
            split: Split::Backward,
            value_size: ValueSize::Large,
            specials: vec![],
        },
        autoremove: false,
    };
    let rule_set = || match rules {
        SnapshotRules::One => vec![rule("t_1m", Consolidation::Sum, 60, 1440)],
        SnapshotRules::Bench => vec![
            rule("t_1m", Consolidation::Sum, 60, 1440),
            rule("t_1h", Consolidation::Sum, 3600, 720),
            rule("t_1d", Consolidation::Max, 86_400, 365),
        ],
    };
    let series = archives.div_ceil(rule_set().len() as u64);
    let archives = series * rule_set().len() as u64;
    let store = || {
        let limits = StoreLimits {
            max_future_ms: u64::MAX / 4,
            max_series: u64::MAX,
        };
        Store::new(RuleSet::new(rule_set()), limits)
    };
    let live = store();
    let t = now_ms() as u64 / 60_000 * 60_000;
    let write_all = |ts: u64| -> anyhow::Result<()> {
        for i in 0..series {
            let key = format!("traffic-client{i}-in");
            let sample = Sample {
                timestamp_ms: ts,
                value: Value::Uint(i),
            };
            live.write(&key, "traffic", sample, ts)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        Ok(())
    };
    let snapshotter = Snapshotter::open(&dir)?;
    write_all(t - 60_000)?;
    let first = snapshotter.save(&live)?;
    write_all(t)?;
    let cpu = cpu_seconds();
    let one = snapshotter.save(&live)?;
    let one_cpu = cpu_seconds() - cpu;
    drop(snapshotter);
    // `live` stays: the restore gets fresh memory, as a restarted daemon.
    let (started, cpu) = (Instant::now(), cpu_seconds());
    let restored = Snapshotter::open(&dir)?.restore(&store())?;
    let (restore, restore_cpu) = (started.elapsed(), cpu_seconds() - cpu);
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "snapshot: first save of {archives} archives {:.2} s",
        first.duration.as_secs_f64()
    );
    println!(
        "snapshot: one new sample in each of {archives} archives = {:.3} s ({} pages, {} bytes, cpu {one_cpu:.2} s)",
        one.duration.as_secs_f64(),
        one.pages,
        one.bytes
    );
    println!(
        "restore: {} archives in {:.3} s (cpu {restore_cpu:.2} s)",
        restored.archives,
        restore.as_secs_f64()
    );
    Ok(())
}

/// Resident set size of this process, from /proc.
fn rss_bytes() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS in /proc/self/status"))?;
    Ok(kib * 1024)
}

fn memory(paths: u64, buckets: u32) -> anyhow::Result<()> {
    use ringdb::model::{Sample, Value};
    use ringdb::rrd::{Consolidation, Shape, Split, ValueSize};
    use ringdb::rules::{Rule, RuleSet};
    use ringdb::store::{SeriesId, Store, StoreLimits};
    let rule = |name: &str, consolidation| Rule {
        name: name.into(),
        prefix: "traffic".into(),
        shape: Shape {
            consolidation,
            timeframe_secs: 60,
            limit: buckets,
            split: Split::Backward,
            value_size: ValueSize::Float,
            specials: vec![],
        },
        autoremove: false,
    };
    let rules = vec![
        rule("last", Consolidation::Last),
        rule("max", Consolidation::Max),
        rule("sum", Consolidation::Sum),
    ];
    let rule_count = rules.len() as u64;
    let limits = StoreLimits {
        max_future_ms: u64::MAX / 4,
        max_series: u64::MAX,
    };
    let before = rss_bytes()?;
    let started = Instant::now();
    let store = Store::new(RuleSet::new(rules), limits);
    let t0 = (now_ms() as u64 / 60_000 - u64::from(buckets)) * 60_000;
    let samples: Vec<Sample> = (0..u64::from(buckets))
        .map(|k| Sample {
            timestamp_ms: t0 + k * 60_000,
            value: Value::Float(k as f64 + 0.5),
        })
        .collect();
    let mut key = String::new();
    for i in 0..paths {
        use std::fmt::Write;
        key.clear();
        write!(key, "traffic.client{i}.in")?;
        let id = SeriesId {
            key: &key,
            shared: None,
            prefix: "traffic",
            labels: None,
        };
        let mut refused = 0;
        store.write_batch(&id, &samples, t0 + u64::from(buckets) * 60_000, |r| {
            refused += u64::from(r.is_err());
        });
        anyhow::ensure!(refused == 0, "path {i}: {refused} samples refused");
    }
    let rss = rss_bytes()?.saturating_sub(before);
    let raw = paths * rule_count * u64::from(buckets) * 8;
    let stats = store.stats();
    anyhow::ensure!(
        stats.archives == paths * rule_count,
        "archives: {}",
        stats.archives
    );
    println!(
        "memory: {paths} paths x {rule_count} rules x {buckets} float buckets filled in {:.1} s: \
         raw cells {} MiB, RSS growth {} MiB = {:.3} x raw, {} B/path over raw, {} B RSS/path",
        started.elapsed().as_secs_f64(),
        raw >> 20,
        rss >> 20,
        rss as f64 / raw as f64,
        (rss as i64 - raw as i64) / paths as i64,
        rss / paths
    );
    drop(store);
    Ok(())
}

/// The daemon's allocator (see `src/main.rs`), so in-process figures match.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Snapshot {
            archives,
            rules,
            dir,
        } => return snapshot(archives, rules, dir),
        Command::Memory { paths, buckets } => return memory(paths, buckets),
        _ => {}
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match cli.command {
            Command::Snapshot { .. } | Command::Memory { .. } => {
                unreachable!("handled before the runtime starts")
            }
            Command::Socket {
                addr,
                tls,
                paths,
                frames,
                connections,
                step_secs,
            } => socket(addr, tls, paths, frames, connections, step_secs).await,
            Command::RemoteWrite { url, tls, load } => remote_write(url, tls, load).await,
        }
    })
}
