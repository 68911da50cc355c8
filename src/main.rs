//! The `outrigger` binary: flags, logging, config, then `App::run`.
//!
//! A bad config is reported as `PATH:LINE:COLUMN: field: message` and exits 1 before any
//! port is bound; `outrigger check` stops right after validating. A bad flag or environment
//! value (log level, thread count, upstream URL) is a usage error, exit 2, that names the
//! flag or the variable it came from. Flags work before and after `check`. An empty
//! `OUTRIGGER_*` variable counts as unset (a template that renders `""` means "no value").

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};
use outrigger::app::{App, Listeners};
use outrigger::config::{self, Overrides};
use outrigger::logging::{self, LogFormat};
use outrigger::server::signals;
use tracing::{info, warn};

#[cfg_attr(feature = "plain-malloc", allow(dead_code))]
mod alloc;

/// The system allocator behind a per-thread cache of freed blocks by size (see `alloc`).
#[cfg(not(feature = "plain-malloc"))]
#[global_allocator]
static ALLOC: alloc::ReuseBlocks = alloc::ReuseBlocks;

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
    #[arg(long, env = "OUTRIGGER_LISTEN", global = true, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Admin listener address [default: 0.0.0.0:9901].
    #[arg(
        long,
        env = "OUTRIGGER_ADMIN_LISTEN",
        global = true,
        value_name = "ADDR"
    )]
    admin_listen: Option<SocketAddr>,
    /// Upstream URL, e.g. http://127.0.0.1:3000.
    #[arg(long, env = "OUTRIGGER_UPSTREAM", global = true, value_name = "URL")]
    upstream: Option<String>,
    /// Worker threads, 0 to 1024 [default: the CPUs this process may use].
    #[arg(long, global = true, value_name = "N", value_parser = threads)]
    threads: Option<usize>,
    /// Log format.
    #[arg(
        long,
        env = "OUTRIGGER_LOG_FORMAT",
        global = true,
        value_enum,
        default_value = "json"
    )]
    log_format: LogFormat,
    /// Log level or filter (error, warn, info, debug, trace).
    #[arg(
        long,
        env = "OUTRIGGER_LOG_LEVEL",
        global = true,
        default_value = "info",
        value_name = "LEVEL"
    )]
    log_level: String,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate the config and exit: 0 valid, 1 invalid.
    Check {
        /// Warn when the config's memory bounds exceed this limit (e.g. 128Mi) [default:
        /// the cgroup's memory.max, if any].
        #[arg(long, value_parser = config::memory::parse_limit, value_name = "SIZE")]
        memory_limit: Option<u64>,
    },
    /// GET a plain-HTTP URL (e.g. http://127.0.0.1:9901/ready): exit 0 on a 2xx answer,
    /// 1 otherwise with the reason on stderr. For HEALTHCHECK and exec probes.
    Probe {
        /// http://HOST[:PORT][/PATH]
        #[arg(value_parser = outrigger::admin::probe::parse_url)]
        url: http::Uri,
        /// Give up after this long (connect and response headers).
        #[arg(long, default_value = "1s", value_parser = config::units::parse_duration)]
        timeout: std::time::Duration,
    },
}

/// `--threads`: bounded, so that `--threads 100000` is refused at once instead of aborting
/// after seconds of spawning (see `config::validate::MAX_WORKER_THREADS` for the bound).
fn threads(text: &str) -> Result<usize, String> {
    let max = config::validate::MAX_WORKER_THREADS;
    match text.parse::<usize>() {
        Ok(n) if n <= max => Ok(n),
        _ => Err(format!(
            "use 0 (the CPUs this process may use) to {max}; more threads than CPUs only cost memory"
        )),
    }
}

/// The environment variables the command line reads.
const ENV_VARS: [&str; 6] = [
    "OUTRIGGER_CONFIG",
    "OUTRIGGER_LISTEN",
    "OUTRIGGER_ADMIN_LISTEN",
    "OUTRIGGER_UPSTREAM",
    "OUTRIGGER_LOG_FORMAT",
    "OUTRIGGER_LOG_LEVEL",
];

/// Parses the command line, empty `OUTRIGGER_*` variables taken as unset.
fn parse_cli() -> (Cli, ArgMatches) {
    for name in ENV_VARS {
        if std::env::var_os(name).is_some_and(|v| v.is_empty()) {
            // Still one thread: nothing else reads the environment yet.
            std::env::remove_var(name);
        }
    }
    let matches = Cli::command().get_matches();
    match Cli::from_arg_matches(&matches) {
        Ok(cli) => (cli, matches),
        Err(e) => e.exit(),
    }
}

/// How to name where a value came from in an error: the flag, or the variable.
fn origin(matches: &ArgMatches, id: &str, flag: &str, var: &str) -> String {
    match matches.value_source(id) {
        Some(ValueSource::EnvVariable) => var.to_owned(),
        _ => flag.to_owned(),
    }
}

/// Checks the values that came from flags or the environment, naming their origin.
fn check_usage(cli: &Cli, matches: &ArgMatches) -> Result<(), String> {
    if let Err(e) = logging::check_level(&cli.log_level) {
        let from = origin(matches, "log_level", "--log-level", "OUTRIGGER_LOG_LEVEL");
        return Err(format!("{from}: {e}"));
    }
    if let Some(url) = &cli.upstream {
        if let Err(e) = config::upstream_url(url) {
            let from = origin(matches, "upstream", "--upstream", "OUTRIGGER_UPSTREAM");
            return Err(format!("{from}: {}", e.message));
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    if let Err(e) = signals::hold_hangups() {
        eprintln!("cannot install signal handlers: {e}");
        return ExitCode::from(1);
    }
    let (cli, matches) = parse_cli();
    if let Some(Command::Probe { url, timeout }) = &cli.command {
        return match outrigger::admin::probe::run(url, *timeout) {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("probe: {e}");
                ExitCode::from(1)
            }
        };
    }
    if let Err(e) = check_usage(&cli, &matches) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let overrides = Overrides {
        listen: cli.listen,
        admin_listen: cli.admin_listen,
        upstream: cli.upstream.clone(),
        worker_threads: cli.threads,
    };
    let loaded = config::load(cli.config.as_deref(), &overrides);
    if let Some(Command::Check { memory_limit }) = cli.command {
        return match loaded {
            Ok(config) => {
                for warning in &config.warnings {
                    eprintln!("warning: {warning}");
                }
                if let Some(warning) = memory_warning(&config, memory_limit) {
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

/// The memory warning of `check`, against `--memory-limit` or else the cgroup's limit.
fn memory_warning(config: &config::Config, flag: Option<u64>) -> Option<String> {
    use config::memory::{self, LimitSource};
    let (limit, source) = match flag {
        Some(limit) => (limit, LimitSource::Flag),
        None => (
            memory::cgroup_limit(std::path::Path::new(memory::CGROUP_MEMORY_MAX))?,
            LimitSource::Cgroup,
        ),
    };
    memory::warning(config, limit, source)
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
    let reloader = std::sync::Arc::clone(&app);
    let reload: signals::Reload =
        std::sync::Arc::new(move || reloader.reload().map_err(|e| e.to_string()));
    if let Err(e) = signals::install(std::sync::Arc::clone(&app.lifecycle), reload) {
        eprintln!("cannot install signal handlers: {e}");
        return ExitCode::from(1);
    }
    app.run(listeners).await;
    ExitCode::SUCCESS
}
