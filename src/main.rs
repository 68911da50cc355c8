//! The `outrigger` binary: flags, logging, config, then `App::run`.
//!
//! A bad config is reported as `PATH:LINE:COLUMN: field: message` and exits 1 before any
//! port is bound; `outrigger check` stops right after validating.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use outrigger::app::{App, Listeners};
use outrigger::config::{self, Overrides};
use outrigger::logging::{self, LogFormat};
use outrigger::server::signals;
use tracing::{info, warn};

mod alloc;

/// The system allocator, reusing hyper's header scratch arrays (see `alloc`).
#[global_allocator]
static ALLOC: alloc::ReuseHeaderScratch = alloc::ReuseHeaderScratch;

/// A reverse-proxy sidecar that makes an unreliable HTTP backend look reliable.
#[derive(Debug, Parser)]
#[command(name = "outrigger", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// YAML config file (see config/outrigger.yaml).
    #[arg(long, env = "OUTRIGGER_CONFIG", global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Proxy listener address [default: 0.0.0.0:8080].
    #[arg(long, env = "OUTRIGGER_LISTEN", value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Admin listener address [default: 0.0.0.0:9901].
    #[arg(long, env = "OUTRIGGER_ADMIN_LISTEN", value_name = "ADDR")]
    admin_listen: Option<SocketAddr>,
    /// Upstream URL, e.g. http://127.0.0.1:3000.
    #[arg(long, env = "OUTRIGGER_UPSTREAM", value_name = "URL")]
    upstream: Option<String>,
    /// Worker threads [default: the CPUs this process may use].
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Log format.
    #[arg(long, env = "OUTRIGGER_LOG_FORMAT", value_enum, default_value = "json")]
    log_format: LogFormat,
    /// Log level or filter (error, warn, info, debug, trace).
    #[arg(
        long,
        env = "OUTRIGGER_LOG_LEVEL",
        default_value = "info",
        value_name = "LEVEL"
    )]
    log_level: String,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate the config and exit: 0 valid, 1 invalid.
    Check,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let overrides = Overrides {
        listen: cli.listen,
        admin_listen: cli.admin_listen,
        upstream: cli.upstream.clone(),
        worker_threads: cli.threads,
    };
    let loaded = config::load(cli.config.as_deref(), &overrides);
    if matches!(cli.command, Some(Command::Check)) {
        return match loaded {
            Ok(config) => {
                for warning in &config.warnings {
                    eprintln!("warning: {warning}");
                }
                println!(
                    "{}: ok",
                    cli.config
                        .as_ref()
                        .map_or("config".into(), |p| p.display().to_string())
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(1)
            }
        };
    }
    let config = match loaded {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    // Takes effect on restart, like the limit it follows.
    alloc::header_cap(outrigger::server::accept::header_cap(&config.limits));
    if let Err(e) = logging::init(cli.log_format, &cli.log_level) {
        eprintln!("{e}");
        return ExitCode::from(2);
    }
    // One worker: a current-thread runtime, with no work stealing or cross-thread wake-ups
    // (a sidecar under a one-CPU limit, the common case, gains the most).
    let runtime = if config.worker_threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.worker_threads)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(serve(config, overrides))
}

async fn serve(config: config::Config, overrides: Overrides) -> ExitCode {
    for warning in &config.warnings {
        warn!(warning = %warning, "config warning");
    }
    let listeners = match Listeners::bind(&config).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "cannot bind {} / {}: {e}",
                config.listen, config.admin_listen
            );
            return ExitCode::from(1);
        }
    };
    info!(
        listen = %listeners.proxy.local_addr().map_or(config.listen, |a| a),
        admin = %listeners.admin.local_addr().map_or(config.admin_listen, |a| a),
        upstream = %config.upstream.url,
        routes = config.routes.len(),
        threads = config.worker_threads,
        "outrigger started"
    );
    let app = App::new(config, overrides);
    if let Err(e) = signals::install(std::sync::Arc::clone(&app)) {
        eprintln!("cannot install signal handlers: {e}");
        return ExitCode::from(1);
    }
    app.run(listeners).await;
    ExitCode::SUCCESS
}
