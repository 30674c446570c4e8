//! Composition root: settings in, a running daemon out. Creates dev
//! certificates when none are configured, restores snapshots, binds the
//! listeners, runs the flusher, and on SIGTERM/SIGINT runs the one shutdown
//! sequence: stop accepting → finish in-flight frames and requests → drain
//! with a deadline → final snapshot → sled flush → exit.

use crate::access::Access;
use crate::config::{Settings, TlsFiles};
use crate::ingest::remote_write::{self, handler::RemoteWriteContext, KnownSeries, LabelLimits};
use crate::ingest::scrape::Scraper;
use crate::ingest::socket::{self, SocketContext};
use crate::model::Clock;
use crate::net::{self, ListenerLimits};
use crate::query::api::{self, ApiContext};
use crate::rules::RuleSet;
use crate::shutdown::Shutdown;
use crate::snapshot::{self, Snapshotter};
use crate::store::{Store, StoreLimits};
use crate::telemetry::{Metrics, RateLimited};
use crate::tls::{self, ListenerKind};
use anyhow::Context;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::RwLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::Semaphore;

/// Queries evaluated at once on the blocking pool.
const QUERY_CONCURRENCY: usize = 4;

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
    let store = Arc::new(Store::new(
        RuleSet::new(settings.rules.clone()),
        StoreLimits {
            max_future_ms: settings.limits.max_future.as_millis() as u64,
            max_series: settings.limits.max_series,
        },
    ));
    let snapshot_dir = settings.data_dir.join("snapshots");
    let snapshotter =
        Arc::new(tokio::task::spawn_blocking(move || Snapshotter::open(&snapshot_dir)).await??);
    let restored = {
        let (s, st) = (snapshotter.clone(), store.clone());
        tokio::task::spawn_blocking(move || s.restore(&st)).await??
    };
    metrics.add(
        "ringdb_restore_skipped_total",
        &[("reason", "corrupt")],
        restored.corrupt,
    );
    metrics.add(
        "ringdb_restore_skipped_total",
        &[("reason", "rule_changed_or_removed")],
        restored.kept_on_disk,
    );
    tracing::info!(
        archives = restored.archives,
        corrupt = restored.corrupt,
        kept_on_disk = restored.kept_on_disk,
        moved_series = restored.moved_series,
        moved_archives = restored.moved_archives,
        "snapshots restored"
    );

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
        snapshotter: snapshotter.clone(),
        ready: Default::default(),
        query_slots: Arc::new(Semaphore::new(QUERY_CONCURRENCY)),
        query_timeout: settings.limits.query_timeout,
        max_query_samples: usize::try_from(settings.limits.max_query_samples).unwrap_or(usize::MAX),
    });
    let socket_ctx = Arc::new(SocketContext {
        store: store.clone(),
        metrics: metrics.clone(),
        clock: system_clock(),
        warnings: Arc::new(RateLimited::new(Duration::from_secs(10))),
    });

    {
        let (access, token) = (access.clone(), shutdown.token().clone());
        shutdown.spawn(
            "socket listener",
            net::serve(
                "socket",
                socket_listener,
                socket_tls,
                ListenerLimits::default(),
                metrics.clone(),
                shutdown.clone(),
                move |stream, peer| {
                    let grant = access.current().grant(peer.name.as_deref());
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
        label_limits: LabelLimits::default(),
        max_body_bytes: usize::try_from(settings.limits.max_body_bytes).unwrap_or(usize::MAX),
        in_flight: Arc::new(Semaphore::new(settings.limits.max_inflight_writes)),
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
                ListenerLimits::default(),
                metrics.clone(),
                shutdown.clone(),
                move |stream, peer| {
                    let grant = access.current().grant(peer.name.as_deref());
                    crate::http::serve_connection(stream, router.clone(), grant, token.clone())
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
    let final_save = snapshot::save_now(
        &snapshotter,
        &store,
        &metrics,
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

/// The `clients:` permissions, swapped whole on reload; each connection
/// takes the grant current when it starts.
struct SharedAccess(RwLock<Arc<Access>>);

impl SharedAccess {
    fn new(access: Access) -> SharedAccess {
        SharedAccess(RwLock::new(Arc::new(access)))
    }

    fn current(&self) -> Arc<Access> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, access: Access) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(access);
    }
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
