//! The two halves of the concurrency benchmark (`bench/concurrency.sh`, issue 15), in Rust
//! because a Python driver could not keep 64 clients on time on a loaded two-core machine.
//!
//! - `backend`: the capacity-limited service of SPEC §7.3. It serves `--slots` requests at
//!   a time, `--service-ms` each, lets at most `2 × slots` wait, and answers 503 at once to
//!   a request that arrives when that many already wait. `--switch-at S --switch-slots M`
//!   changes the capacity to M slots (and 2M waiting) S seconds after start. `--slots 0`
//!   is a healthy fast backend: every request answered at once. `GET /__count` tells how
//!   many other requests it has received (the driver reads it to count upstream requests).
//! - `load`: `--clients` closed-loop clients, each on its own keep-alive connection, each
//!   pausing `--pause-ms` after every answer, for `--seconds` after `--warmup` seconds.
//!   It prints one line of `key=value` figures and, with `--timeline FILE`, one line per
//!   second: successes, failures and the `outrigger_concurrency_limit` scraped from
//!   `--metrics` (an admin `/metrics` URL).
//!
//! Everything is on loopback and stops by itself when its time is up.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, Subcommand};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Backend {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long, default_value_t = 8)]
        slots: usize,
        #[arg(long, default_value_t = 20)]
        service_ms: u64,
        #[arg(long)]
        switch_at: Option<u64>,
        #[arg(long, default_value_t = 16)]
        switch_slots: usize,
        /// Stop after this many seconds.
        #[arg(long, default_value_t = 120)]
        seconds: u64,
    },
    Load {
        #[arg(long)]
        target: String,
        #[arg(long, default_value_t = 64)]
        clients: usize,
        #[arg(long, default_value_t = 50)]
        pause_ms: u64,
        #[arg(long, default_value_t = 2)]
        warmup: u64,
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Stop after this many requests in all (shared evenly by the clients), if sooner.
        #[arg(long)]
        requests: Option<usize>,
        /// The backend's `/__count` URL, to count upstream requests.
        #[arg(long)]
        count: Option<String>,
        /// An admin `/metrics` URL to scrape each second.
        #[arg(long)]
        metrics: Option<String>,
        #[arg(long)]
        timeline: Option<std::path::PathBuf>,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    match Cli::parse().command {
        Command::Backend {
            listen,
            slots,
            service_ms,
            switch_at,
            switch_slots,
            seconds,
        } => {
            let backend = Backend::new(slots, Duration::from_millis(service_ms));
            let until = tokio::time::sleep(Duration::from_secs(seconds));
            tokio::select! {
                r = backend.serve(listen, switch_at.map(|s| (Duration::from_secs(s), switch_slots))) => r,
                () = until => Ok(()),
            }
        }
        Command::Load {
            target,
            clients,
            pause_ms,
            warmup,
            seconds,
            requests,
            count,
            metrics,
            timeline,
        } => {
            let settings = LoadSettings {
                target: target.parse()?,
                clients,
                pause: Duration::from_millis(pause_ms),
                warmup: Duration::from_secs(warmup),
                measure: Duration::from_secs(seconds),
                quota: requests.map(|n| n.div_ceil(clients)),
                count,
                metrics,
                timeline,
            };
            load(settings).await
        }
    }
}

// ---------------------------------------------------------------------------------------
// The backend.

struct Backend {
    slots: Arc<Semaphore>,
    /// Requests waiting for a slot now.
    waiting: AtomicUsize,
    /// How many may wait: 2 × slots.
    max_waiting: AtomicUsize,
    service: Duration,
    unlimited: bool,
    received: AtomicU64,
}

impl Backend {
    fn new(slots: usize, service: Duration) -> Arc<Backend> {
        Arc::new(Backend {
            slots: Arc::new(Semaphore::new(slots)),
            waiting: AtomicUsize::new(0),
            max_waiting: AtomicUsize::new(2 * slots),
            service,
            unlimited: slots == 0,
            received: AtomicU64::new(0),
        })
    }

    async fn serve(
        self: Arc<Self>,
        listen: SocketAddr,
        switch: Option<(Duration, usize)>,
    ) -> Result<(), Box<dyn std::error::Error>> {
        let listener = TcpListener::bind(listen).await?;
        if let Some((after, slots)) = switch {
            let me = Arc::clone(&self);
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                let now = me.max_waiting.load(Ordering::Relaxed) / 2;
                if slots > now {
                    me.slots.add_permits(slots - now);
                }
                me.max_waiting.store(2 * slots, Ordering::Relaxed);
                eprintln!("backend: capacity {now} -> {slots} slots");
            });
        }
        loop {
            let (stream, _) = listener.accept().await?;
            let me = Arc::clone(&self);
            tokio::spawn(async move {
                let handler = service_fn(move |req| {
                    let me = Arc::clone(&me);
                    async move { Ok::<_, Infallible>(me.handle(req).await) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), handler)
                    .await;
            });
        }
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if req.uri().path() == "/__count" {
            let n = self.received.load(Ordering::Relaxed);
            return answer(StatusCode::OK, n.to_string());
        }
        self.received.fetch_add(1, Ordering::Relaxed);
        if self.unlimited {
            return answer(StatusCode::OK, "ok\n".into());
        }
        let waiting = self.waiting.fetch_add(1, Ordering::Relaxed);
        if waiting >= self.max_waiting.load(Ordering::Relaxed) {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            return answer(StatusCode::SERVICE_UNAVAILABLE, "queue full\n".into());
        }
        let permit = self.slots.acquire().await;
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        tokio::time::sleep(self.service).await;
        drop(permit);
        answer(StatusCode::OK, "ok\n".into())
    }
}

fn answer(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp
}

// ---------------------------------------------------------------------------------------
// The load driver.

struct LoadSettings {
    target: hyper::Uri,
    clients: usize,
    pause: Duration,
    warmup: Duration,
    measure: Duration,
    /// Requests per client, when the run is counted rather than timed.
    quota: Option<usize>,
    count: Option<String>,
    metrics: Option<String>,
    timeline: Option<std::path::PathBuf>,
}

/// One answered (or failed) request: when it ended (since the start), how long it took,
/// its status (0: no answer).
#[derive(Clone, Copy)]
struct Sample {
    ended: Duration,
    latency: Duration,
    status: u16,
}

async fn load(s: LoadSettings) -> Result<(), Box<dyn std::error::Error>> {
    let start = Instant::now();
    let stop = start + s.warmup + s.measure;
    let target = Arc::new(s.target.clone());
    let mut clients = Vec::new();
    for _ in 0..s.clients {
        let target = Arc::clone(&target);
        let pause = s.pause;
        let quota = s.quota.unwrap_or(usize::MAX);
        clients.push(tokio::spawn(client(target, pause, start, stop, quota)));
    }
    let scraper = tokio::spawn(scrape(s.metrics.clone(), start, stop));
    tokio::time::sleep(s.warmup).await;
    let before = upstream_count(s.count.as_deref()).await;
    let mut samples = Vec::new();
    if s.quota.is_none() {
        tokio::time::sleep(s.measure).await;
    }
    let mut after = upstream_count(s.count.as_deref()).await;
    for c in clients {
        samples.extend(c.await?);
    }
    if s.quota.is_some() {
        // A counted run ends when its clients do.
        after = upstream_count(s.count.as_deref()).await;
    }
    let limits = scraper.await?;
    report(&s, &samples, before.zip(after), &limits)
}

/// One closed-loop client: request, wait for the whole answer, pause, again.
async fn client(
    target: Arc<hyper::Uri>,
    pause: Duration,
    start: Instant,
    stop: Instant,
    quota: usize,
) -> Vec<Sample> {
    let mut samples = Vec::new();
    let authority = target.authority().expect("target has host:port").clone();
    let mut sender = None;
    while Instant::now() < stop && samples.len() < quota {
        let began = Instant::now();
        if sender.is_none() {
            sender = connect(authority.as_str()).await;
        }
        let status = match sender.as_mut() {
            None => 0,
            Some(tx) => tokio::time::timeout(
                Duration::from_secs(10),
                send(tx, &target, authority.as_str()),
            )
            .await
            .ok()
            .flatten()
            .unwrap_or(0),
        };
        if status == 0 {
            sender = None;
        }
        let ended = Instant::now();
        samples.push(Sample {
            ended: ended - start,
            latency: ended - began,
            status,
        });
        tokio::time::sleep(pause).await;
    }
    samples
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn connect(authority: &str) -> Option<Sender> {
    let stream = TcpStream::connect(authority).await.ok()?;
    stream.set_nodelay(true).ok()?;
    let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(conn);
    Some(tx)
}

async fn send(tx: &mut Sender, target: &hyper::Uri, authority: &str) -> Option<u16> {
    tx.ready().await.ok()?;
    let req = Request::get(target.path())
        .header("host", authority)
        .body(Empty::new())
        .ok()?;
    let resp = tx.send_request(req).await.ok()?;
    let status = resp.status().as_u16();
    resp.into_body().collect().await.ok()?;
    Some(status)
}

async fn get_text(url: &str) -> Option<String> {
    let uri: hyper::Uri = url.parse().ok()?;
    let authority = uri.authority()?.as_str().to_owned();
    let stream = TcpStream::connect(&authority).await.ok()?;
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(conn);
    let req = Request::get(uri.path())
        .header("host", authority)
        .body(Empty::<Bytes>::new())
        .ok()?;
    let body = tx.send_request(req).await.ok()?.into_body();
    let bytes = body.collect().await.ok()?.to_bytes();
    String::from_utf8(bytes.to_vec()).ok()
}

async fn upstream_count(url: Option<&str>) -> Option<u64> {
    get_text(url?).await?.trim().parse().ok()
}

/// The sum of `outrigger_concurrency_limit` once a second: (second, limit).
async fn scrape(url: Option<String>, start: Instant, stop: Instant) -> Vec<(u64, Option<f64>)> {
    let mut out = Vec::new();
    let Some(url) = url else { return out };
    let mut second = 0;
    while Instant::now() < stop {
        let text = get_text(&url).await.unwrap_or_default();
        let limit = text
            .lines()
            .filter(|l| l.starts_with("outrigger_concurrency_limit{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .reduce(|a, b| a + b);
        out.push((second, limit));
        second += 1;
        tokio::time::sleep_until((start + Duration::from_secs(second)).into()).await;
    }
    out
}

fn report(
    s: &LoadSettings,
    samples: &[Sample],
    upstream: Option<(u64, u64)>,
    limits: &[(u64, Option<f64>)],
) -> Result<(), Box<dyn std::error::Error>> {
    let from = s.warmup;
    let to = s.warmup + s.measure;
    let measured: Vec<&Sample> = samples
        .iter()
        .filter(|x| x.ended >= from && x.ended < to)
        .collect();
    let mut ok: Vec<Duration> = measured
        .iter()
        .filter(|x| (200..300).contains(&x.status))
        .map(|x| x.latency)
        .collect();
    ok.sort();
    let secs = s.measure.as_secs_f64();
    let p = |q: f64| {
        ok.get(((ok.len() as f64 * q).ceil() as usize).saturating_sub(1))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    let count = |f: &dyn Fn(u16) -> bool| measured.iter().filter(|x| f(x.status)).count();
    let per_client = upstream.map_or("n/a".to_owned(), |(b, a)| {
        format!("{:.2}", (a - b) as f64 / measured.len().max(1) as f64)
    });
    println!(
        "requests={} ok_per_s={:.1} p50_ms={:.1} p99_ms={:.1} failed_pct={:.1} s503={} s5xx_other={} no_answer={} upstream_per_request={}",
        measured.len(),
        ok.len() as f64 / secs,
        p(0.5),
        p(0.99),
        100.0 * (measured.len() - ok.len()) as f64 / measured.len().max(1) as f64,
        count(&|c| c == 503),
        count(&|c| c >= 500 && c != 503),
        count(&|c| c == 0),
        per_client,
    );
    if let Some(path) = &s.timeline {
        let mut text = String::from("second\tok\tfailed\tlimit\n");
        let total = (s.warmup + s.measure).as_secs();
        for second in 0..total {
            let in_second = |x: &&Sample| x.ended.as_secs() == second;
            let all = samples.iter().filter(in_second).count();
            let good = samples
                .iter()
                .filter(in_second)
                .filter(|x| (200..300).contains(&x.status))
                .count();
            let limit = limits
                .iter()
                .find(|(sec, _)| *sec == second)
                .and_then(|(_, l)| *l)
                .map_or("".to_owned(), |l| format!("{l}"));
            text.push_str(&format!("{second}\t{good}\t{}\t{limit}\n", all - good));
        }
        std::fs::write(path, text)?;
    }
    Ok(())
}
