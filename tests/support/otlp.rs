//! A real OTLP/HTTP trace receiver on `127.0.0.1:0`: it decodes each
//! `ExportTraceServiceRequest` with the OpenTelemetry protobuf definitions and keeps the
//! spans, or answers 500 to play a collector that refuses.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use prost::Message;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// One span as received, flattened.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    pub service_name: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub name: String,
    /// 2 server, 3 client (the protobuf's `SpanKind`).
    pub kind: i32,
    pub attributes: HashMap<String, String>,
    pub events: Vec<String>,
    /// `Status.code`: 0 unset, 1 ok, 2 error.
    pub status_code: i32,
}

struct Shared {
    spans: Mutex<Vec<ReceivedSpan>>,
    /// Every request body as received, to search for values that must never be there.
    raw: Mutex<Vec<Vec<u8>>>,
    requests: AtomicUsize,
    refuse: AtomicBool,
}

/// The receiver; stops when dropped.
pub struct Collector {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Collector {
    /// Starts a collector that accepts everything.
    pub async fn start() -> Collector {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            spans: Mutex::new(Vec::new()),
            raw: Mutex::new(Vec::new()),
            requests: AtomicUsize::new(0),
            refuse: AtomicBool::new(false),
        });
        let state = Arc::clone(&shared);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let state = Arc::clone(&state);
                tokio::spawn(async move {
                    let service = service_fn(move |req| receive(Arc::clone(&state), req));
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Collector { addr, shared, task }
    }

    /// `http://127.0.0.1:PORT`, the value of `otlp_endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// From now on, answer every export with 500.
    pub fn refuse(&self) {
        self.shared.refuse.store(true, Ordering::SeqCst);
    }

    /// Export requests received so far.
    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Spans accepted so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.shared.spans.lock().unwrap().clone()
    }

    /// Whether `needle` appears anywhere in any export request's bytes.
    pub fn saw_bytes(&self, needle: &[u8]) -> bool {
        self.shared
            .raw
            .lock()
            .unwrap()
            .iter()
            .any(|body| body.windows(needle.len()).any(|w| w == needle))
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn receive(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let path_ok = req.uri().path() == "/v1/traces";
    let content_type = req
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap_or("").to_owned())
        .unwrap_or_default();
    let body = req.into_body().collect().await?.to_bytes();
    shared.requests.fetch_add(1, Ordering::SeqCst);
    shared.raw.lock().unwrap().push(body.to_vec());
    let status = if shared.refuse.load(Ordering::SeqCst) {
        StatusCode::INTERNAL_SERVER_ERROR
    } else if !path_ok || content_type != "application/x-protobuf" {
        StatusCode::NOT_FOUND
    } else {
        match ExportTraceServiceRequest::decode(body) {
            Ok(request) => {
                shared.spans.lock().unwrap().extend(flatten(request));
                StatusCode::OK
            }
            Err(_) => StatusCode::BAD_REQUEST,
        }
    };
    let answer = ExportTraceServiceResponse::default().encode_to_vec();
    let mut resp = Response::new(Full::new(Bytes::from(answer)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/x-protobuf"),
    );
    Ok(resp)
}

fn flatten(request: ExportTraceServiceRequest) -> Vec<ReceivedSpan> {
    let mut out = Vec::new();
    for rs in request.resource_spans {
        let resource = rs
            .resource
            .map(|r| attributes(&r.attributes))
            .unwrap_or_default();
        let service_name = resource.get("service.name").cloned().unwrap_or_default();
        for ss in rs.scope_spans {
            for span in ss.spans {
                out.push(ReceivedSpan {
                    service_name: service_name.clone(),
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    name: span.name,
                    kind: span.kind,
                    attributes: attributes(&span.attributes),
                    events: span.events.into_iter().map(|e| e.name).collect(),
                    status_code: span.status.map_or(0, |s| s.code),
                });
            }
        }
    }
    out
}

fn attributes(kvs: &[KeyValue]) -> HashMap<String, String> {
    kvs.iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(s)) => s.clone(),
                Some(Value::IntValue(i)) => i.to_string(),
                Some(Value::BoolValue(b)) => b.to_string(),
                Some(Value::DoubleValue(d)) => d.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
