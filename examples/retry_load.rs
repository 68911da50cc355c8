//! An open-loop load generator for `bench/retry-harness.sh` (issue 14).
//!
//! Sends `GET URL` at a fixed rate whether or not earlier requests answered (so a slow
//! answer cannot slow the offered load down and hide its own cost), through phases that
//! each set the flaky backend's mode first (`flaky_backend`'s `/_mode`). Latency runs from
//! when a request was due, not when it went out. For each phase it prints one
//! tab-separated line:
//!
//! `phase seconds sent ok upstream p50_ms p99_ms recovered_s`
//!
//! where `upstream` is what the backend counted during the phase and `recovered_s` the first
//! second of the phase from which every second had at least 99% success (`-` if none).
//!
//! `retry_load URL BACKEND_URL RATE SECS:fail=20,slow=0,slow_ms=300 [SECS:... ...]`

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

struct Phase {
    seconds: u64,
    mode: String,
}

fn parse_phase(text: &str) -> Phase {
    let (secs, mode) = text.split_once(':').unwrap_or((text, ""));
    Phase {
        seconds: secs.parse().expect("phase seconds"),
        mode: mode.replace(',', "&"),
    }
}

async fn get_text(client: &HttpClient, url: &str) -> String {
    let resp = client
        .get(url.parse().expect("url"))
        .await
        .expect("control request");
    let body = resp.into_body().collect().await.expect("control body");
    String::from_utf8_lossy(&body.to_bytes()).into_owned()
}

/// (seconds into the phase it was due, ok, latency)
type Sample = (u64, bool, Duration);

async fn one(client: HttpClient, url: hyper::Uri, due: Instant, offset: u64) -> Sample {
    let result = tokio::time::timeout(Duration::from_secs(15), async {
        let resp = client.get(url).await.ok()?;
        let ok = resp.status() == hyper::StatusCode::OK;
        resp.into_body().collect().await.ok()?;
        Some(ok)
    })
    .await;
    (offset, matches!(result, Ok(Some(true))), due.elapsed())
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let ix = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[ix].as_secs_f64() * 1000.0
}

fn recovered(samples: &[Sample], seconds: u64) -> String {
    let mut per_second = vec![(0u64, 0u64); seconds as usize + 1];
    for (s, ok, _) in samples {
        let slot = &mut per_second[(*s as usize).min(seconds as usize)];
        slot.0 += 1;
        slot.1 += u64::from(*ok);
    }
    per_second.truncate(seconds as usize);
    let good = |&(n, ok): &(u64, u64)| n == 0 || ok as f64 >= 0.99 * n as f64;
    let last_bad = per_second.iter().rposition(|s| !good(s));
    match last_bad {
        None => "0".to_owned(),
        Some(i) if i + 1 < per_second.len() => (i + 1).to_string(),
        Some(_) => "-".to_owned(),
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    assert!(
        args.len() >= 4,
        "usage: retry_load URL BACKEND RATE PHASE..."
    );
    let url: hyper::Uri = args[0].parse().expect("url");
    let backend = args[1].trim_end_matches('/').to_owned();
    let rate: u64 = args[2].parse().expect("rate");
    let phases: Vec<Phase> = args[3..].iter().map(|a| parse_phase(a)).collect();
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(2048)
        .build(connector);
    let interval = Duration::from_secs(1) / rate as u32;
    let mut tasks = Vec::new();
    let mut counts = Vec::new();
    for phase in &phases {
        get_text(&client, &format!("{backend}/_mode?{}", phase.mode)).await;
        counts.push(get_text(&client, &format!("{backend}/_count")).await);
        let start = Instant::now();
        let mut sent = Vec::new();
        for i in 0..phase.seconds * rate {
            let due = start + interval * i as u32;
            tokio::time::sleep_until(due).await;
            let offset = i / rate;
            sent.push(tokio::spawn(one(client.clone(), url.clone(), due, offset)));
        }
        tasks.push(sent);
    }
    let mut results = Vec::new();
    for sent in tasks {
        let mut samples = Vec::with_capacity(sent.len());
        for t in sent {
            samples.push(t.await.expect("request task"));
        }
        results.push(samples);
    }
    counts.push(get_text(&client, &format!("{backend}/_count")).await);
    for (i, (phase, samples)) in phases.iter().zip(&results).enumerate() {
        let upstream: u64 = counts[i + 1].trim().parse::<u64>().unwrap_or(0)
            - counts[i].trim().parse::<u64>().unwrap_or(0);
        let ok = samples.iter().filter(|s| s.1).count();
        let mut lat: Vec<Duration> = samples.iter().map(|s| s.2).collect();
        lat.sort();
        println!(
            "{i}\t{}\t{}\t{ok}\t{upstream}\t{:.1}\t{:.1}\t{}",
            phase.seconds,
            samples.len(),
            percentile(&lat, 0.50),
            percentile(&lat, 0.99),
            recovered(samples, phase.seconds)
        );
    }
}
