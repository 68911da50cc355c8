//! A real gRPC server for the tests: tonic's own health service (`grpc.health.v1.Health`,
//! generated code shipped by tonic-health) beside a small `outrigger.test.Echo` service
//! written here with tonic's server plumbing and hand-derived prost messages (no `protoc`
//! needed at build time). Echo covers what health does not: client streaming,
//! bidirectional streaming, metadata both ways, chosen error statuses, large messages, a
//! flaky method that fails its first calls, and a slow one.

#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::PathAndQuery;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_stream::{Stream, StreamExt};
use tonic::codegen::BoxFuture;
use tonic::metadata::MetadataValue;
use tonic::server::NamedService;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status, Streaming};
use tonic_health::server::HealthReporter;
use tonic_prost::ProstCodec;

/// The one message of the Echo service.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Msg {
    #[prost(string, tag = "1")]
    pub text: String,
    #[prost(bytes = "vec", tag = "2")]
    pub data: Vec<u8>,
    /// Asks for an answer with this many bytes of `data`.
    #[prost(uint32, tag = "3")]
    pub size: u32,
    /// Asks for this gRPC status instead of an answer (0: none).
    #[prost(int32, tag = "4")]
    pub fail: i32,
    /// Asks the server to wait this long before answering.
    #[prost(uint32, tag = "5")]
    pub sleep_ms: u32,
}

/// The largest message either side accepts (tonic's default is 4 MiB).
pub const MAX_MESSAGE: usize = 64 << 20;

/// What the Echo service has seen, and the failures it still has to give.
#[derive(Default)]
pub struct EchoState {
    /// Calls of `Flaky` so far.
    pub flaky_calls: AtomicU32,
    /// How many more `Flaky` calls fail (with the status in the request's `fail`).
    pub flaky_failures: AtomicU32,
    /// Calls of any method so far.
    pub calls: AtomicU32,
}

/// The server: health and Echo on one port.
pub struct GrpcServer {
    pub addr: SocketAddr,
    pub state: Arc<EchoState>,
    pub health: HealthReporter,
    stop: Option<oneshot::Sender<()>>,
}

impl GrpcServer {
    /// Starts both services on `127.0.0.1:0`.
    pub async fn start() -> GrpcServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        GrpcServer::start_on(listener).await
    }

    /// Starts both services on a listener bound by the caller.
    pub async fn start_on(listener: TcpListener) -> GrpcServer {
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(EchoState::default());
        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
        let (stop, stopped) = oneshot::channel::<()>();
        let echo = EchoServer {
            state: Arc::clone(&state),
        };
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(health_service)
                .add_service(echo)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                })
                .await
                .expect("gRPC server");
        });
        GrpcServer {
            addr,
            state,
            health,
            stop: Some(stop),
        }
    }

    /// Stops accepting and ends the server.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The Echo service as tonic routes it.
#[derive(Clone)]
pub struct EchoServer {
    state: Arc<EchoState>,
}

impl NamedService for EchoServer {
    const NAME: &'static str = "outrigger.test.Echo";
}

type Body = tonic::body::Body;

fn grpc() -> tonic::server::Grpc<ProstCodec<Msg, Msg>> {
    tonic::server::Grpc::new(ProstCodec::default())
        .apply_max_message_size_config(Some(MAX_MESSAGE), Some(MAX_MESSAGE))
}

impl tower_service::Service<http::Request<Body>> for EchoServer {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let state = Arc::clone(&self.state);
        state.calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            let resp = match req.uri().path() {
                "/outrigger.test.Echo/Unary" => grpc().unary(Unary(state), req).await,
                "/outrigger.test.Echo/Flaky" => grpc().unary(Flaky(state), req).await,
                "/outrigger.test.Echo/Collect" => grpc().client_streaming(Collect, req).await,
                "/outrigger.test.Echo/Chat" => grpc().streaming(Chat, req).await,
                "/outrigger.test.Echo/Download" => grpc().server_streaming(Download, req).await,
                _ => Status::unimplemented("no such method").into_http(),
            };
            Ok(resp)
        })
    }
}

/// The status a message asks for, with metadata the client can look for.
fn asked_failure(msg: &Msg) -> Option<Status> {
    if msg.fail == 0 {
        return None;
    }
    let mut status = Status::new(Code::from(msg.fail), format!("asked to fail: {}", msg.text));
    status
        .metadata_mut()
        .insert("x-fail-detail", MetadataValue::from_static("on purpose"));
    Some(status)
}

/// The answer to one message: its text, `size` bytes of data or its own data.
fn reply(msg: Msg) -> Msg {
    let data = if msg.size > 0 {
        vec![b'x'; msg.size as usize]
    } else {
        msg.data
    };
    Msg {
        text: msg.text,
        data,
        ..Msg::default()
    }
}

struct Unary(Arc<EchoState>);

impl tonic::server::UnaryService<Msg> for Unary {
    type Response = Msg;
    type Future = BoxFuture<Response<Msg>, Status>;

    fn call(&mut self, req: Request<Msg>) -> Self::Future {
        Box::pin(async move {
            // Metadata in: echoed back as response metadata.
            let echoed = req.metadata().get("x-echo").cloned();
            let msg = req.into_inner();
            if msg.sleep_ms > 0 {
                tokio::time::sleep(Duration::from_millis(u64::from(msg.sleep_ms))).await;
            }
            if let Some(status) = asked_failure(&msg) {
                return Err(status);
            }
            let mut resp = Response::new(reply(msg));
            if let Some(value) = echoed {
                resp.metadata_mut().insert("x-echoed", value);
            }
            Ok(resp)
        })
    }
}

/// Fails (with the status in `fail`) while `flaky_failures` lasts, then answers.
struct Flaky(Arc<EchoState>);

impl tonic::server::UnaryService<Msg> for Flaky {
    type Response = Msg;
    type Future = BoxFuture<Response<Msg>, Status>;

    fn call(&mut self, req: Request<Msg>) -> Self::Future {
        let state = Arc::clone(&self.0);
        Box::pin(async move {
            state.flaky_calls.fetch_add(1, Ordering::SeqCst);
            let msg = req.into_inner();
            let failing = state
                .flaky_failures
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if failing {
                return Err(Status::new(Code::from(msg.fail), "flaky"));
            }
            Ok(Response::new(reply(msg)))
        })
    }
}

/// Client streaming: the texts joined, the data bytes counted into `size`.
struct Collect;

impl tonic::server::ClientStreamingService<Msg> for Collect {
    type Response = Msg;
    type Future = BoxFuture<Response<Msg>, Status>;

    fn call(&mut self, req: Request<Streaming<Msg>>) -> Self::Future {
        Box::pin(async move {
            let mut stream = req.into_inner();
            let mut out = Msg::default();
            while let Some(msg) = stream.message().await? {
                out.text.push_str(&msg.text);
                out.size += msg.data.len() as u32;
            }
            Ok(Response::new(out))
        })
    }
}

type MsgStream = Pin<Box<dyn Stream<Item = Result<Msg, Status>> + Send + 'static>>;

/// Bidirectional: each message answered as it arrives; a message asking for a failure ends
/// the call with that status in the trailers (after the answers so far).
struct Chat;

impl tonic::server::StreamingService<Msg> for Chat {
    type Response = Msg;
    type ResponseStream = MsgStream;
    type Future = BoxFuture<Response<MsgStream>, Status>;

    fn call(&mut self, req: Request<Streaming<Msg>>) -> Self::Future {
        Box::pin(async move {
            let stream = req.into_inner().map(|item| {
                let msg = item?;
                match asked_failure(&msg) {
                    Some(status) => Err(status),
                    None => Ok(reply(msg)),
                }
            });
            let out: MsgStream = Box::pin(stream);
            Ok(Response::new(out))
        })
    }
}

/// Server streaming: `size` bytes in total, in messages of 1 MiB.
struct Download;

impl tonic::server::ServerStreamingService<Msg> for Download {
    type Response = Msg;
    type ResponseStream = MsgStream;
    type Future = BoxFuture<Response<MsgStream>, Status>;

    fn call(&mut self, req: Request<Msg>) -> Self::Future {
        Box::pin(async move {
            let total = req.into_inner().size as usize;
            let chunk = 1 << 20;
            let pieces = total.div_ceil(chunk);
            let stream = tokio_stream::iter((0..pieces).map(move |i| {
                let len = chunk.min(total - i * chunk);
                Ok(Msg {
                    text: i.to_string(),
                    data: vec![b'd'; len],
                    ..Msg::default()
                })
            }));
            let out: MsgStream = Box::pin(stream);
            Ok(Response::new(out))
        })
    }
}

/// A client of the Echo service (and the raw plumbing for health), on one channel.
#[derive(Clone)]
pub struct EchoClient {
    grpc: tonic::client::Grpc<Channel>,
}

impl EchoClient {
    /// Connects to `addr` over h2c.
    pub async fn connect(addr: SocketAddr) -> EchoClient {
        EchoClient::new(channel(addr).await)
    }

    pub fn new(channel: Channel) -> EchoClient {
        let grpc = tonic::client::Grpc::new(channel)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        EchoClient { grpc }
    }

    async fn ready(&mut self) -> Result<(), Status> {
        self.grpc
            .ready()
            .await
            .map_err(|e| Status::unknown(format!("not ready: {e}")))
    }

    /// A unary call to `method` (`Unary` or `Flaky`).
    pub async fn unary(
        &mut self,
        method: &'static str,
        req: Request<Msg>,
    ) -> Result<Response<Msg>, Status> {
        self.ready().await?;
        let path = PathAndQuery::from_maybe_shared(format!("/outrigger.test.Echo/{method}"))
            .expect("path");
        self.grpc.unary(req, path, ProstCodec::default()).await
    }

    /// Client streaming: `Collect`.
    pub async fn collect(&mut self, msgs: Vec<Msg>) -> Result<Response<Msg>, Status> {
        self.ready().await?;
        let path = PathAndQuery::from_static("/outrigger.test.Echo/Collect");
        let req = Request::new(tokio_stream::iter(msgs));
        self.grpc
            .client_streaming(req, path, ProstCodec::default())
            .await
    }

    /// Bidirectional: `Chat`, the requests from a stream the caller feeds.
    pub async fn chat<S>(&mut self, requests: S) -> Result<Response<Streaming<Msg>>, Status>
    where
        S: Stream<Item = Msg> + Send + 'static,
    {
        self.ready().await?;
        let path = PathAndQuery::from_static("/outrigger.test.Echo/Chat");
        self.grpc
            .streaming(Request::new(requests), path, ProstCodec::default())
            .await
    }

    /// Server streaming: `Download` of `size` bytes.
    pub async fn download(&mut self, size: u32) -> Result<Response<Streaming<Msg>>, Status> {
        self.ready().await?;
        let path = PathAndQuery::from_static("/outrigger.test.Echo/Download");
        let req = Request::new(Msg {
            size,
            ..Msg::default()
        });
        self.grpc
            .server_streaming(req, path, ProstCodec::default())
            .await
    }
}

/// An h2c channel to `addr`.
pub async fn channel(addr: SocketAddr) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("connect")
}
