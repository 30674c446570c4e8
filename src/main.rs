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
    /// Create a CA, a server certificate and client certificates.
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    ringdb::telemetry::init_tracing(&cli.log);
    if let Some(Command::Certs {
        out,
        hosts,
        clients,
    }) = &cli.command
    {
        return match ringdb::certs::generate(out, hosts, clients) {
            Ok(files) => {
                for f in files {
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
                println!("{}: ok ({} rules)", file.display(), s.rules.len());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        };
    }
    let settings = match &cli.config {
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
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ringdb: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(ringdb::app::run(settings, cli.config.clone()));
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
