//! The floor: the least an HTTP/1.1 reverse proxy on hyper can do, for `bench/compare.sh`
//! and `bench/per_request.sh` to measure outrigger against. One current-thread runtime,
//! hyper's server with keep-alive, hyper-util's pooled client to one upstream, the path and
//! query forwarded, hop-by-hop headers removed, bodies streamed both ways, no logging.
//!
//!     cargo build --release --example floor
//!     target/release/examples/floor 127.0.0.1:18209 127.0.0.1:18080

use std::convert::Infallible;

use http::header::{self, HeaderName};
use http::{HeaderMap, Request, Response, StatusCode, Uri};
use http_body_util::{combinators::BoxBody, BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

type Body = BoxBody<Bytes, hyper::Error>;

const HOP_BY_HOP: [HeaderName; 5] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

fn strip(headers: &mut HeaderMap) {
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

async fn proxy(
    client: Client<HttpConnector, Incoming>,
    upstream: &'static str,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let Ok(uri) = format!("http://{upstream}{path}").parse::<Uri>() else {
        return Ok(status(StatusCode::BAD_REQUEST));
    };
    *req.uri_mut() = uri;
    strip(req.headers_mut());
    match client.request(req).await {
        Ok(mut resp) => {
            strip(resp.headers_mut());
            Ok(resp.map(|b| b.boxed()))
        }
        Err(_) => Ok(status(StatusCode::BAD_GATEWAY)),
    }
}

fn status(code: StatusCode) -> Response<Body> {
    let mut resp = Response::new(Empty::new().map_err(|never| match never {}).boxed());
    *resp.status_mut() = code;
    resp
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (listen, upstream) = match (args.next(), args.next()) {
        (Some(l), Some(u)) => (l, &*Box::leak(u.into_boxed_str())),
        _ => return eprintln!("usage: floor LISTEN_ADDR UPSTREAM_ADDR"),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let listener = TcpListener::bind(&listen).await.expect("bind");
        let client = Client::builder(TokioExecutor::new()).build_http::<Incoming>();
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let client = client.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| proxy(client.clone(), upstream, req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
}
