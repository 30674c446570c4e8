//! The `ringdb` binary: command line, tracing, run the app, exit code.

use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// A round-robin, in-memory metrics database with a YAWNDB heart and a
/// Prometheus face.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Configuration file (YAML). Without it, the embedded
    /// rules.example.yaml is used.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Validate FILE, report every problem, and exit.
    #[arg(long, value_name = "FILE")]
    check_config: Option<PathBuf>,
    /// Log filter, e.g. info, debug, ringdb=debug.
    #[arg(long, default_value = "info")]
    log: String,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Create client certificates (and a server certificate) signed by the
    /// CA in --out; the CA is created first if there is none.
    Certs {
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        /// Extra host names or IPs for the server certificate.
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// Client certificate common names (one NAME.pem per client).
        #[arg(long = "client")]
        clients: Vec<String>,
        /// Replace an existing CA with a new one: every certificate the old
        /// one signed stops working.
        #[arg(long)]
        force: bool,
    },
    /// Salvage a damaged snapshot store: copy every readable archive into a
    /// fresh store, move the damaged one aside (snapshots.damaged-<time>),
    /// print what was recovered and lost. Run it with the daemon stopped.
    Recover {
        /// Configuration file (YAML) naming the data_dir.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

/// jemalloc for everything but archive cells (see `rrd::cells`): sled
/// allocates and frees tree nodes from several threads at once, which
/// glibc's malloc serialises and fragments; measured on 2 cores, a snapshot
/// of 100K changed pages took 1.45 s with glibc and 0.5 s with jemalloc.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read before `main`: a background thread gives freed
/// pages back to the system after `dirty_decay_ms` even when the daemon is
/// idle (without it, only later allocations purge). Measured after loading
/// 10K series of 240 samples and two snapshots: 8,410 → 7,241 B RSS per
/// series. A client that sets `_RJEM_MALLOC_CONF` overrides these.
#[export_name = "_rjem_malloc_conf"]
pub static MALLOC_CONF: &[u8; 60] =
    b"background_thread:true,dirty_decay_ms:2000,muzzy_decay_ms:0\0";

/// Fewest async worker threads the daemon runs (see `main`).
const MIN_ASYNC_WORKERS: usize = 4;

fn main() -> ExitCode {
    let cli = Cli::parse();
    ringdb::telemetry::init_tracing(&cli.log);
    if let Some(Command::Certs {
        out,
        hosts,
        clients,
        force,
    }) = &cli.command
    {
        return match ringdb::certs::issue(out, hosts, clients, *force) {
            Ok(done) => {
                if done.ca_kept {
                    eprintln!(
                        "ringdb certs: signed with the existing CA in {} (--force makes a new one)",
                        out.display()
                    );
                }
                if done.server_kept {
                    eprintln!("ringdb certs: kept the existing server certificate (--host makes a new one)");
                }
                for f in done.written {
                    println!("{}", f.display());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ringdb certs: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(file) = &cli.check_config {
        return match ringdb::config::load(file) {
            Ok(s) => {
                let problems = ringdb::certs::check_files(&s);
                if problems.is_empty() {
                    println!("{}: ok ({} rules)", file.display(), s.rules.len());
                    return ExitCode::SUCCESS;
                }
                eprintln!("{}: {} problem(s):", file.display(), problems.len());
                for p in problems {
                    eprintln!("  {}: {}", p.location, p.message);
                }
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        };
    }
    let recover = match &cli.command {
        Some(Command::Recover { config }) => Some(config.clone().or(cli.config.clone())),
        _ => None,
    };
    let config_file = recover.clone().flatten().or(cli.config.clone());
    let settings = match &config_file {
        Some(file) => ringdb::config::load(file),
        None => ringdb::config::parse(
            ringdb::config::DEFAULT_CONFIG,
            "embedded rules.example.yaml",
            Path::new(""),
        ),
    };
    let settings = match settings {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    if recover.is_some() {
        return match ringdb::app::recover(&settings) {
            Ok(report) => {
                println!("{report}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ringdb recover: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    // At least MIN_ASYNC_WORKERS async workers, even on fewer cores: a TLS
    // handshake or a request's first bytes then wait less behind workers
    // busy decrypting large bodies (scripts/flood on 2 cores, metadata
    // case: the good client's p99 36.9 ms with 2 workers, 16.5 ms with 4).
    // TOKIO_WORKER_THREADS, when set, is tokio's own override.
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        builder.worker_threads(cores.max(MIN_ASYNC_WORKERS));
    }
    let runtime = match builder.build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ringdb: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(ringdb::app::run(settings, config_file));
    // A final snapshot abandoned at its bound may still hold a blocking
    // thread: exit anyway (sled's log is consistent at any instant).
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("ringdb: {e:#}");
            ExitCode::FAILURE
        }
    }
}
