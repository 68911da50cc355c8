//! The accept loop both listeners share: one task per connection, HTTP/1.1 and h2c on the
//! same port, every connection registered for graceful shutdown.
//!
//! Connection-level limits live here, so a slow or hostile client can only ever hurt its
//! own connection: `header_read_timeout` (slowloris), the header size limit (431), and a
//! malformed request (hyper answers 400 and closes that connection).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use crate::config::Limits;
use crate::proxy::body::ResponseBody;

/// An HTTP/1.1 + h2c connection builder with the configured limits.
pub fn builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_request_header_bytes.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_request_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(256)
        // A silent HTTP/2 peer is noticed and dropped instead of held forever.
        .keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(20));
    builder
}

/// Accepts connections until `stop` resolves, serving each with `handler`.
///
/// Returns once the listener is closed; connections already accepted go on, watched by
/// `graceful`.
pub async fn serve<H, F>(
    listener: TcpListener,
    builder: auto::Builder<TokioExecutor>,
    first_bytes: Duration,
    handler: H,
    graceful: &GracefulShutdown,
    stop: impl Future<Output = ()>,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<ResponseBody>> + Send + 'static,
{
    let builder = Arc::new(builder);
    tokio::pin!(stop);
    let mut stopping = false;
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop, if !stopping => {
                // Serve what the kernel already queued before closing the listener:
                // closing would reset those connections although clients sent on them.
                stopping = true;
                continue;
            }
            () = std::future::ready(()), if stopping => break,
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let builder = Arc::clone(&builder);
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            if !protocol_known_within(&stream, first_bytes).await {
                debug!(peer = %peer, "connection closed: no request bytes in time");
                return;
            }
            let service = service_fn(move |req| {
                // Boxed: hyper keeps room for one request future in every connection, so an
                // inline future would cost its full size per idle keep-alive connection.
                let response = Box::pin(handler(req, peer));
                async move { Ok::<_, Infallible>(response.await) }
            });
            let conn = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .into_owned();
            if let Err(e) = watcher.watch(conn).await {
                debug!(peer = %peer, error = %e, "connection ended with an error");
            }
        });
    }
}

/// Waits until the client has sent enough bytes to tell HTTP/1 from the HTTP/2 preface.
///
/// hyper-util's protocol sniffing has no timeout of its own and `header_read_timeout`
/// starts only once HTTP/1 is chosen, so without this a client that sends a few bytes and
/// stops would hold its connection forever.
async fn protocol_known_within(stream: &TcpStream, limit: Duration) -> bool {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut buf = [0u8; 24];
    let wait = async {
        loop {
            match stream.peek(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) if n >= PREFACE.len() || buf[..n] != PREFACE[..n] => return true,
                // A partial preface: its rest is on the way.
                Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    };
    tokio::time::timeout(limit, wait).await.unwrap_or(false)
}
