//! Composition root: settings in, a running daemon out. Creates dev
//! certificates when none are configured, restores snapshots, binds the
//! listeners, runs the flusher, and on SIGTERM/SIGINT runs the one shutdown
//! sequence: stop accepting → finish in-flight frames and requests → drain
//! with a deadline → final snapshot → sled flush → exit.

use crate::access::{Access, ConnectionGrant, Grant, SharedAccess};
use crate::config::{Settings, TlsFiles};
use crate::cpu::BulkPool;
use crate::http::{HttpConnection, HttpLimits};
use crate::ingest::remote_write::{self, handler::RemoteWriteContext, KnownSeries, LabelLimits};
use crate::ingest::scrape::Scraper;
use crate::ingest::socket::{self, SocketContext};
use crate::model::Clock;
use crate::net::{self, ListenerLimits, Peer};
use crate::query::api::{self, ApiContext, ClientId, QuerySlots};
use crate::rules::RuleSet;
use crate::shutdown::Shutdown;
use crate::snapshot::{self, Snapshotter};
use crate::store::{SizeLimits, Store, StoreLimits};
use crate::telemetry::{Metrics, RateLimited};
use crate::tls::{self, ListenerKind};
use anyhow::Context;
use axum::Extension;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::Semaphore;

/// How long shutdown waits for connections to finish.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// The final snapshot starts no write after this long; what it could not
/// write is logged (series not saved) and the exit code is non-zero.
const FINAL_SNAPSHOT_DEADLINE: Duration = Duration::from_secs(60);

/// How much longer the final snapshot may take to flush (or wait for a
/// save still running) before it is abandoned.
const FINAL_FLUSH_GRACE: Duration = Duration::from_secs(20);

/// The wall clock in milliseconds.
pub fn system_clock() -> Clock {
    Arc::new(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    })
}

/// Dev certificates under `data_dir/tls/`, made on first start.
/// The store's size caps from `limits:`.
fn size_limits(limits: &crate::config::Limits) -> SizeLimits {
    SizeLimits {
        max_labels_per_series: limits.max_labels_per_series,
        max_label_name_bytes: limits.max_label_name_bytes,
        max_label_value_bytes: limits.max_label_value_bytes,
        max_series_key_bytes: limits.max_series_key_bytes,
        max_series_key_bytes_total: limits.max_series_key_bytes_total,
        max_help_bytes: limits.max_help_bytes,
        max_metadata_bytes: limits.max_metadata_bytes,
    }
}

fn dev_tls(settings: &Settings) -> anyhow::Result<TlsFiles> {
    let dir = settings.data_dir.join("tls");
    let files = TlsFiles {
        cert: dir.join("server.pem"),
        key: dir.join("server-key.pem"),
        client_ca: dir.join("ca.pem"),
    };
    let client = dir.join("client.pem");
    if files.cert.exists() && files.key.exists() && files.client_ca.exists() && client.exists() {
        tracing::info!(dir = %dir.display(), "using development certificates");
        return Ok(files);
    }
    crate::certs::generate(&dir, &[], &["client".to_string()])
        .context("creating development certificates")?;
    let d = dir.display();
    let http = settings.listen.http;
    let socket = settings.listen.socket;
    tracing::warn!(
        "no tls: section in the configuration: created a development CA and certificates in {d}/ \
         (use `ringdb certs` or your own PKI in production). Try:\n  \
         curl --cacert {d}/ca.pem --cert {d}/client.pem --key {d}/client-key.pem https://localhost:{hp}/metrics\n  \
         echo 'traffic-client42-in 1700000000 1024' | python3 scripts/ringdb_client.py --host localhost --port {sp} --ca {d}/ca.pem --cert {d}/client.pem --key {d}/client-key.pem\n  \
         Prometheus remote_write tls_config: {{ca_file: {d}/ca.pem, cert_file: {d}/client.pem, key_file: {d}/client-key.pem}}",
        hp = http.port(),
        sp = socket.port(),
    );
    Ok(files)
}

/// Runs the daemon until SIGTERM or SIGINT; returns after the final
/// snapshot.
///
/// # Errors
/// Startup failures (certificates, snapshot store, binding), or a failed
/// final snapshot.
pub async fn run(settings: Settings, config_file: Option<PathBuf>) -> anyhow::Result<()> {
    std::fs::create_dir_all(&settings.data_dir)
        .with_context(|| format!("creating data_dir {}", settings.data_dir.display()))?;
    let tls_files = match &settings.tls {
        Some(files) => files.clone(),
        None => dev_tls(&settings)?,
    };
    let socket_tls = tls::server_config(
        &tls_files.cert,
        &tls_files.key,
        &tls_files.client_ca,
        ListenerKind::Socket,
    )?;
    let http_tls = tls::server_config(
        &tls_files.cert,
        &tls_files.key,
        &tls_files.client_ca,
        ListenerKind::Http,
    )?;

    let metrics = Arc::new(Metrics::default());
    let snapshot_dir = settings.data_dir.join("snapshots");
    let (store, snapshotter, restored) =
        restore_or_recover(&settings, &snapshot_dir, config_file.as_deref()).await?;
    let snapshotter = Arc::new(snapshotter);
    for (reason, n) in restored.skipped() {
        metrics.add("ringdb_restore_skipped_total", &[("reason", reason)], n);
    }
    tracing::info!(
        archives = restored.archives,
        corrupt = restored.corrupt,
        kept_on_disk = restored.kept_on_disk,
        missing = restored.missing,
        no_pages = restored.no_pages,
        orphan_pages = restored.orphan_pages,
        moved_series = restored.moved_series,
        moved_archives = restored.moved_archives,
        "snapshots restored"
    );
    if restored.lost_anything() {
        tracing::error!(
            "snapshots restored with losses (see ringdb_restore_skipped_total); \
             the daemon runs on what was readable"
        );
    }

    let bind = |addr| async move {
        TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))
    };
    let socket_listener = bind(settings.listen.socket).await?;
    let http_listener = bind(settings.listen.http).await?;
    let admin_listener = bind(settings.listen.admin).await?;
    let addrs = (
        socket_listener.local_addr()?,
        http_listener.local_addr()?,
        admin_listener.local_addr()?,
    );

    let shutdown = Shutdown::new();
    let access = Arc::new(SharedAccess::new(Access::new(settings.clients.as_deref())));
    let api_ctx = Arc::new(ApiContext {
        store: store.clone(),
        metrics: metrics.clone(),
        disk: Arc::new(SnapshotDisk(snapshotter.clone())),
        ready: Default::default(),
        slots: QuerySlots::new(
            settings.limits.max_concurrent_queries,
            settings.limits.max_client_queries,
        ),
        query_timeout: settings.limits.query_timeout,
        max_query_samples: usize::try_from(settings.limits.max_query_samples).unwrap_or(usize::MAX),
        max_slice_buckets: settings.limits.max_slice_buckets,
        query_limits: crate::query::engine::QueryLimits {
            max_query_bytes: settings.limits.max_query_bytes,
            max_query_depth: settings.limits.max_query_depth,
        },
        max_response_bytes: settings.limits.max_response_bytes,
    });
    let socket_ctx = Arc::new(SocketContext {
        store: store.clone(),
        metrics: metrics.clone(),
        clock: system_clock(),
        warnings: Arc::new(RateLimited::new(Duration::from_secs(10))),
        idle_timeout: settings.limits.socket_idle_timeout,
    });
    let l = &settings.limits;
    let listener_limits = ListenerLimits {
        max_connections: l.max_connections,
        max_client_connections: l.max_client_connections,
        max_handshakes_per_ip: l.max_handshakes_per_ip,
        handshake_timeout: l.handshake_timeout,
    };
    let http_limits = HttpLimits {
        header_timeout: l.header_timeout,
        idle_timeout: l.idle_timeout,
        body_timeout: l.body_timeout,
        // A refused body up to twice the limit is read and discarded after
        // the answer, so its sender reads the status instead of a reset.
        linger_bytes: l.max_body_bytes.saturating_mul(2),
    };
    // With a clients: list, a certificate not on it is refused right after
    // the handshake, on every listener.
    let admit = |access: Arc<SharedAccess>| {
        move |peer: &Peer| match access.grant(peer.name.as_deref()) {
            Grant::Nothing => Err("unlisted"),
            _ => Ok(()),
        }
    };

    {
        let (access, token) = (access.clone(), shutdown.token().clone());
        shutdown.spawn(
            "socket listener",
            net::serve(
                "socket",
                socket_listener,
                socket_tls,
                listener_limits,
                metrics.clone(),
                shutdown.clone(),
                admit(access.clone()),
                move |stream, peer| {
                    let grant = ConnectionGrant::new(access.clone(), peer.name);
                    socket::handle(stream, grant, socket_ctx.clone(), token.clone())
                },
            ),
        );
    }
    // Label sets remembered for remote_write: one per series, up to this many.
    const KNOWN_SERIES_MAX: u64 = 16 << 20;
    let rw_ctx = Arc::new(RemoteWriteContext {
        store: store.clone(),
        metrics: metrics.clone(),
        clock: system_clock(),
        label_limits: LabelLimits {
            max_labels: settings.limits.max_labels_per_series,
            max_name_bytes: settings.limits.max_label_name_bytes,
            max_value_bytes: settings.limits.max_label_value_bytes,
        },
        max_body_bytes: usize::try_from(settings.limits.max_body_bytes).unwrap_or(usize::MAX),
        in_flight: Arc::new(Semaphore::new(settings.limits.max_inflight_writes)),
        max_inflight: settings.limits.max_inflight_writes,
        waiting: std::sync::atomic::AtomicUsize::new(0),
        bulk: Arc::new(
            BulkPool::per_core(settings.limits.max_inflight_writes)
                .context("starting the remote_write decoding threads")?,
        ),
        known: KnownSeries::new(
            usize::try_from(settings.limits.max_series.min(KNOWN_SERIES_MAX)).unwrap_or(usize::MAX),
        ),
    });
    let http_routes =
        api::http_router(api_ctx.clone()).merge(remote_write::handler::router(rw_ctx));
    for (name, listener, router) in [
        ("http", http_listener, http_routes),
        ("admin", admin_listener, api::admin_router(api_ctx.clone())),
    ] {
        let (access, token) = (access.clone(), shutdown.token().clone());
        shutdown.spawn(
            format!("{name} listener"),
            net::serve(
                name,
                listener,
                http_tls.clone(),
                listener_limits,
                metrics.clone(),
                shutdown.clone(),
                admit(access.clone()),
                {
                    let metrics = metrics.clone();
                    move |stream, peer| {
                        // Query slots are counted per certificate name.
                        let client = ClientId(Arc::from(peer.name.as_deref().unwrap_or("")));
                        let router = router.clone().layer(Extension(client));
                        let conn = HttpConnection {
                            listener: name,
                            peer,
                            access: access.clone(),
                            metrics: metrics.clone(),
                            limits: http_limits,
                        };
                        crate::http::serve_connection(stream, router, conn, token.clone())
                    }
                },
            ),
        );
    }
    shutdown.spawn(
        "snapshot flusher",
        snapshot::run_flusher(
            snapshotter.clone(),
            store.clone(),
            metrics.clone(),
            system_clock(),
            settings.snapshot_interval,
            shutdown.clone(),
        ),
    );

    let scraper = Arc::new(Scraper::new(
        settings.scrape.clone(),
        store.clone(),
        metrics.clone(),
        system_clock(),
    ));
    {
        let (scraper, stop) = (scraper.clone(), shutdown.clone());
        shutdown.spawn("scraper", async move { scraper.run(stop).await });
    }

    api_ctx.ready.store(true, Ordering::Relaxed);
    metrics.set("ringdb_ready", &[], 1.0);
    tracing::info!(socket = %addrs.0, http = %addrs.1, admin = %addrs.2, "ringdb ready");
    // A plain line on stdout for scripts and tests that start on port 0.
    let mut out = std::io::stdout();
    let _ = writeln!(
        out,
        "ringdb listening socket={} http={} admin={}",
        addrs.0, addrs.1, addrs.2
    );
    let _ = out.flush();

    let mut running = settings;
    let mut hangup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM"); break }
            _ = int.recv() => { tracing::info!("SIGINT"); break }
            _ = hangup.recv() => {
                // A rule change migrates every archive it touches: off the
                // async workers.
                let outcome = tokio::task::block_in_place(|| {
                    reload(config_file.as_deref(), &mut running, &store, &access, &scraper)
                });
                metrics.add("ringdb_reloads_total", &[("outcome", outcome)], 1);
            }
        }
    }
    tracing::info!("shutting down: no new connections, finishing in-flight work");
    shutdown.trigger();
    if let Err(late) = shutdown.drain(DRAIN_DEADLINE).await {
        tracing::warn!(?late, "tasks still running at the drain deadline");
    }
    // Bounded whatever is pending: the final snapshot starts no write
    // after FINAL_SNAPSHOT_DEADLINE, and is abandoned (a save from before
    // still running, a slow flush) FINAL_FLUSH_GRACE later.
    let started = std::time::Instant::now();
    let clock = system_clock();
    let final_save = snapshot::save_now(
        &snapshotter,
        &store,
        &metrics,
        &clock,
        None,
        Some(FINAL_SNAPSHOT_DEADLINE),
    );
    let bound = FINAL_SNAPSHOT_DEADLINE + FINAL_FLUSH_GRACE;
    let report = match tokio::time::timeout(bound, final_save).await {
        Err(_) => anyhow::bail!(
            "final snapshot unfinished after {} s: exiting; changes of {} series since the last snapshot may be lost",
            bound.as_secs(),
            store.dirty_series()
        ),
        Ok(None) => anyhow::bail!("final snapshot failed"),
        Ok(Some(report)) => report,
    };
    if report.stopped {
        anyhow::bail!(
            "final snapshot stopped at its deadline ({} s) after saving {} archives ({} bytes): changes of {} series since the last snapshot are lost",
            FINAL_SNAPSHOT_DEADLINE.as_secs(),
            report.archives,
            report.bytes,
            store.dirty_series()
        );
    }
    tracing::info!(
        archives = report.archives,
        bytes = report.bytes,
        ms = started.elapsed().as_millis() as u64,
        "final snapshot saved; bye"
    );
    Ok(())
}

/// An empty store on the settings' rules and limits.
fn new_store(settings: &Settings) -> Arc<Store> {
    Arc::new(
        Store::new(
            RuleSet::new(settings.rules.clone()),
            StoreLimits {
                max_future_ms: settings.limits.max_future.as_millis() as u64,
                max_series: settings.limits.max_series,
            },
        )
        .with_size_limits(size_limits(&settings.limits)),
    )
}

/// Opens the snapshot store and restores it into a fresh store.
async fn open_and_restore(
    settings: &Settings,
    dir: &Path,
) -> anyhow::Result<
    Result<(Arc<Store>, Snapshotter, snapshot::RestoreReport), snapshot::SnapshotError>,
> {
    let store = new_store(settings);
    let (dir, st) = (dir.to_path_buf(), store.clone());
    let snapshotter_and_report = tokio::task::spawn_blocking(move || {
        let s = Snapshotter::open(&dir)?;
        let report = s.restore(&st)?;
        Ok::<_, snapshot::SnapshotError>((s, report))
    })
    .await?;
    Ok(snapshotter_and_report.map(|(s, report)| (store, s, report)))
}

/// The start-up restore. A store that sled cannot read whole (a damaged
/// record with sound ones after it, a store sled refuses to open, or fewer
/// archives than the last save's manifest counts) is not run on as it is,
/// since that would overwrite what may still be read: it is recovered
/// first, as `ringdb recover` does (every readable archive copied into a
/// fresh store, the damaged one kept aside), from the files as they were
/// before sled opened them: sled's open rewrites a truncated log, so a log
/// shorter than the last save left it is copied first, and a copy a start
/// that did not finish left is put back (see
/// [`snapshot::recover::Untouched`]). The daemon starts on what was
/// recovered, with the losses logged and counted (DESIGN §9: damage never
/// stops the daemon from starting).
///
/// # Errors
/// A store held by another process, or one that cannot be recovered.
async fn restore_or_recover(
    settings: &Settings,
    dir: &Path,
    config_file: Option<&Path>,
) -> anyhow::Result<(Arc<Store>, Snapshotter, snapshot::RestoreReport)> {
    let untouched = {
        let dir = dir.to_path_buf();
        tokio::task::spawn_blocking(move || {
            snapshot::recover::Untouched::put_back_leftover(&dir)?;
            let Some(shorter) = snapshot::shorter_log(&dir)? else {
                return Ok(None);
            };
            tracing::warn!(
                "snapshot store {}: {shorter}; keeping an untouched copy while sled opens it",
                dir.display()
            );
            Ok::<_, anyhow::Error>(Some(snapshot::recover::Untouched::take(&dir)?))
        })
        .await??
    };
    let why = match open_and_restore(settings, dir).await? {
        Ok((store, s, report)) if report.missing == 0 => {
            if let Some(copy) = untouched {
                tokio::task::spawn_blocking(move || copy.discard()).await??;
            }
            return Ok((store, s, report));
        }
        Ok((_, s, report)) => {
            drop(s);
            format!(
                "snapshot store {}: {} of the {} archives of the last save are missing \
                 (if the store was removed on purpose, remove {} too)",
                dir.display(),
                report.missing,
                report.manifest.unwrap_or_default(),
                snapshot::manifest::path_for(dir).display(),
            )
        }
        Err(e @ snapshot::SnapshotError::Locked { .. }) => return Err(e.into()),
        Err(e) => e.to_string(),
    };
    if let Some(copy) = untouched {
        // sled's open may have overwritten what recover can still read.
        tokio::task::spawn_blocking(move || copy.put_back()).await??;
    }
    tracing::error!(
        "{why}; recovering it before starting (as `ringdb recover` does): every readable \
         archive is copied into a fresh store and the damaged one is kept aside"
    );
    let report = {
        let settings = settings.clone();
        tokio::task::spawn_blocking(move || recover(&settings)).await?
    }
    .map_err(|e| damaged_store(&e, dir, config_file))?;
    tracing::warn!(
        damaged = %report.damaged.display(),
        archives = report.archives,
        lost = ?report.archives_lost(),
        "snapshot store recovered:\n{report}"
    );
    let (store, s, mut restored) = open_and_restore(settings, dir)
        .await?
        .map_err(|e| damaged_store(&e, dir, config_file))?;
    restored.missing += report.archives_lost().unwrap_or(0);
    restored.corrupt += report.corrupt_headers;
    // Archives without pages are in the fresh store: its restore counted them.
    restored.orphan_pages += report.orphan_pages;
    Ok((store, s, restored))
}

/// The start-up error for a snapshot store that cannot be opened or read,
/// or that lost archives: what failed and the command that salvages it.
fn damaged_store(
    e: &dyn std::fmt::Display,
    dir: &Path,
    config_file: Option<&Path>,
) -> anyhow::Error {
    let config = config_file.map_or(String::new(), |f| format!(" --config {}", f.display()));
    anyhow::anyhow!(
        "{e}\nthe snapshot store {dir} could not be recovered automatically. With the daemon \
         stopped, run\n  \
         ringdb recover{config}\n\
         It copies every readable archive of {dir} into a fresh store, moves the damaged one \
         aside ({dir}.damaged-<time>) and prints what it recovered and lost; then start ringdb again.",
        dir = dir.display(),
    )
}

/// `ringdb recover`: salvages the snapshot store of `settings.data_dir`
/// (see [`snapshot::recover`]).
///
/// # Errors
/// See [`snapshot::recover::recover`].
pub fn recover(settings: &Settings) -> anyhow::Result<snapshot::recover::RecoverReport> {
    let secs = (system_clock()() / 1000) as i64;
    let stamp = chrono::DateTime::from_timestamp(secs, 0).map_or_else(
        || secs.to_string(),
        |t| t.format("%Y%m%dT%H%M%SZ").to_string(),
    );
    let dir = settings.data_dir.join("snapshots");
    Ok(snapshot::recover::recover(&dir, &stamp)?)
}

/// SIGHUP: validate the file first; on any error keep everything running
/// as it is and log every problem; else swap rules (migrating changed
/// archives) and client permissions. Listener, TLS, data_dir and limit
/// changes need a restart and are reported as such. Scrape jobs are swapped
/// too; unchanged ones keep running.
fn reload(
    file: Option<&Path>,
    running: &mut Settings,
    store: &Store,
    access: &SharedAccess,
    scraper: &Scraper,
) -> &'static str {
    let Some(file) = file else {
        tracing::warn!("SIGHUP: running on the embedded configuration, nothing to reload");
        return "no_file";
    };
    let next = match crate::config::load(file) {
        Ok(next) => next,
        Err(e) => {
            tracing::error!("SIGHUP: configuration not reloaded, the running one stays:\n{e}");
            return "error";
        }
    };
    let started = std::time::Instant::now();
    let change = store.set_rules(RuleSet::new(next.rules.clone()));
    let migration_ms = started.elapsed().as_millis() as u64;
    access.set(Access::new(next.clients.as_deref()));
    scraper.set_jobs(next.scrape.clone());
    let restart_needed = next.listen.socket != running.listen.socket
        || next.listen.http != running.listen.http
        || next.listen.admin != running.listen.admin
        || next.data_dir != running.data_dir
        || next.snapshot_interval != running.snapshot_interval
        || format!("{:?}{:?}", next.tls, next.limits)
            != format!("{:?}{:?}", running.tls, running.limits);
    if restart_needed {
        tracing::warn!(
            "SIGHUP: listen, tls, data_dir, snapshot and limits changes take effect on restart"
        );
    }
    tracing::info!(
        rules = next.rules.len(),
        migrated = change.migrated,
        dropped_buckets = change.dropped_buckets,
        unloaded = change.unloaded,
        moved_series = change.moved_series,
        moved_archives = change.moved_archives,
        ms = migration_ms,
        "SIGHUP: configuration reloaded"
    );
    *running = next;
    "ok"
}

/// The snapshot store as the query routes see it (see [`api::Disk`]).
struct SnapshotDisk(Arc<Snapshotter>);

impl api::Disk for SnapshotDisk {
    fn delete_series(&self, store: &Store, key: &str) -> Result<bool, String> {
        self.0.delete_series(store, key).map_err(|e| e.to_string())
    }

    fn failing_since_ms(&self) -> Option<u64> {
        self.0.failing_since_ms()
    }
}
