//! Wires the proxy and the admin listener together and runs them until shutdown.
//!
//! `App::run` takes listeners that are already bound, so `main` can refuse a bad config
//! before any port is bound, and tests can bind `127.0.0.1:0` and drive the very same code.
//!
//! Shutdown sequence (SIGTERM, SIGINT or `POST /shutdown`):
//! 1. `/ready` answers 503 at once, so the load balancer stops sending new traffic, and
//!    clients are told to leave: idle HTTP/1.1 keep-alive connections are closed, answers
//!    in progress carry `Connection: close`, HTTP/2 connections get GOAWAY;
//! 2. traffic is still served for `shutdown.drain_delay` (endpoints take time to notice),
//!    each connection accepted meanwhile answered once and then closed (or sent GOAWAY);
//! 3. the proxy listener closes; in-flight requests get up to `shutdown.timeout` to finish;
//! 4. the admin listener closes and `run` returns.

use std::sync::Arc;

use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::admin::{self, Admin};
use crate::config::{self, Config, ConfigError, Overrides};
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::server::accept;
use crate::server::drain::Drain;
use crate::server::lifecycle::Lifecycle;

/// The two bound listeners.
pub struct Listeners {
    pub proxy: TcpListener,
    pub admin: TcpListener,
}

impl Listeners {
    /// Binds the addresses of a config.
    pub async fn bind(config: &Config) -> std::io::Result<Listeners> {
        Ok(Listeners {
            proxy: TcpListener::bind(config.listen).await?,
            admin: TcpListener::bind(config.admin_listen).await?,
        })
    }
}

/// The running sidecar.
pub struct App {
    pub proxy: Arc<Proxy>,
    pub metrics: Arc<Metrics>,
    pub lifecycle: Arc<Lifecycle>,
    /// What the admin endpoints see: the same proxy, metrics and lifecycle, not the app.
    admin: Arc<Admin>,
    /// What the command line said; re-applied over the file on every reload.
    overrides: Overrides,
}

impl App {
    /// An app for a loaded config.
    pub fn new(config: Config, overrides: Overrides) -> Arc<App> {
        let metrics = Arc::new(Metrics::new());
        let proxy = Arc::new(Proxy::new(Arc::new(config), Arc::clone(&metrics)));
        let lifecycle = Arc::new(Lifecycle::default());
        let admin = Arc::new(Admin {
            proxy: Arc::clone(&proxy),
            metrics: Arc::clone(&metrics),
            lifecycle: Arc::clone(&lifecycle),
        });
        Arc::new(App {
            proxy,
            metrics,
            lifecycle,
            admin,
            overrides,
        })
    }

    /// Re-reads the config file; a valid one applies to new requests, an invalid one is
    /// refused and the old one stays. Listener addresses change only on restart.
    pub fn reload(&self) -> Result<(), ConfigError> {
        let old = self.proxy.config();
        let result = config::load(old.source.as_deref(), &self.overrides);
        let label = if result.is_ok() { "success" } else { "failure" };
        self.metrics
            .config_reloads
            .with_label_values(&[label])
            .inc();
        let new = result?;
        if new.listen != old.listen || new.admin_listen != old.admin_listen {
            warn!("listener addresses changed in the config; they take effect on restart");
        }
        let (a, b) = (&new.limits, &old.limits);
        if new.worker_threads != old.worker_threads
            || a.header_read_timeout != b.header_read_timeout
            || a.max_request_header_bytes != b.max_request_header_bytes
        {
            warn!("worker_threads, limits.header_read_timeout and limits.max_request_header_bytes take effect on restart");
        }
        for warning in &new.warnings {
            warn!(warning = %warning, "config warning");
        }
        self.proxy.reload(Arc::new(new));
        info!("config reloaded");
        Ok(())
    }

    /// Serves until a shutdown has begun and completed.
    pub async fn run(self: Arc<Self>, listeners: Listeners) {
        // Before /ready says yes: the connections accepted from now on inherit keepalive.
        if let Err(e) = crate::proxy::tunnel::keep_accepted_alive(&listeners.proxy) {
            warn!(error = %e, "TCP keepalive could not be set on the proxy listener");
        }
        crate::admin::descriptors::warn_if_short(&self.proxy.config().limits);
        let first_bytes = self.proxy.config().limits.header_read_timeout;
        let admin_drain = Drain::default();
        let (admin_stop_tx, admin_stop_rx) = tokio::sync::oneshot::channel::<()>();
        let admin = Arc::clone(&self.admin);
        let on_panic = crate::edge::OnPanic::new(&self.metrics, "admin");
        let admin_builder = accept::builder(&self.proxy.config().limits);
        let admin_task = tokio::spawn(async move {
            let handler = accept::Handler {
                make: move |peer| admin::service(Arc::clone(&admin), peer),
                on_panic,
            };
            let stop = async {
                let _ = admin_stop_rx.await;
            };
            accept::serve(
                listeners.admin,
                admin_builder,
                first_bytes,
                handler,
                &admin_drain,
                stop,
            )
            .await;
            admin_drain.begin();
            admin_drain
        });

        let proxy_drain = Drain::default();
        let proxy = Arc::clone(&self.proxy);
        let handler = accept::Handler {
            make: move |peer| crate::edge::proxy(Arc::clone(&proxy), peer),
            on_panic: crate::edge::OnPanic::new(&self.metrics, "proxy"),
        };
        let stop = async {
            self.lifecycle.stopping().await;
            let drain = self.proxy.config().shutdown.drain_delay;
            info!(
                drain_delay_ms = drain.as_millis() as u64,
                "draining: /ready answers 503, clients are told to leave"
            );
            proxy_drain.begin();
            tokio::time::sleep(drain).await;
        };
        let probe = tokio::spawn(crate::proxy::probe::run(Arc::clone(&self.proxy)));
        self.lifecycle.set_ready(true);
        let builder = accept::builder(&self.proxy.config().limits);
        accept::serve(
            listeners.proxy,
            builder,
            first_bytes,
            handler,
            &proxy_drain,
            stop,
        )
        .await;

        let timeout = self.proxy.config().shutdown.timeout;
        info!(
            timeout_ms = timeout.as_millis() as u64,
            "listener closed; waiting for in-flight requests"
        );
        let tunnels = Arc::clone(&self.proxy.tunnels);
        let drained = async { tokio::join!(proxy_drain.finished(), tunnels.idle()) };
        if tokio::time::timeout(timeout, drained).await.is_err() {
            warn!(
                tunnels = tunnels.open(),
                "shutdown timeout reached with requests or tunnels still open"
            );
        }
        tunnels.close_all();
        probe.abort();
        let _ = admin_stop_tx.send(());
        if let Ok(drain) = admin_task.await {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), drain.finished()).await;
        }
        info!("stopped");
    }
}
