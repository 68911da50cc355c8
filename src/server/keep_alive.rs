//! HTTP/1.0 keep-alive, which the proxy would otherwise break.
//!
//! An HTTP/1.0 connection persists only when the request asks for it with
//! `Connection: keep-alive` *and* the answer says `keep-alive` back; without the word in
//! the answer hyper closes the connection after it (RFC 9112 Appendix C.2.2). The proxy
//! strips `Connection` from the upstream's answer (it is hop-by-hop, and it spoke of the
//! upstream's connection, not the client's), so the client's connection speaks for itself
//! here, in the accept loop, for both listeners.

use http::header::{HeaderValue, CONNECTION};
use http::{Request, Response, StatusCode, Version};

/// Whether an HTTP/1.0 request asked to keep its connection open. Costs one comparison
/// for HTTP/1.1 and HTTP/2 requests.
pub fn http10_asked<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_10
        && req
            .headers()
            .get_all(CONNECTION)
            .iter()
            .any(|v| has_token(v, "keep-alive"))
}

/// Says `Connection: keep-alive` in the answer, unless the answer already speaks of the
/// connection (a `close` of its own, or a 101 that hands the connection over).
pub fn confirm<B>(resp: &mut Response<B>) {
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        resp.headers_mut()
            .entry(CONNECTION)
            .or_insert(HeaderValue::from_static("keep-alive"));
    }
}

fn has_token(value: &HeaderValue, token: &str) -> bool {
    crate::vocab::list::tokens(value).any(|t| t.eq_ignore_ascii_case(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(version: Version, connection: Option<&str>) -> Request<()> {
        let mut req = Request::builder().version(version);
        if let Some(c) = connection {
            req = req.header(CONNECTION, c);
        }
        req.body(()).unwrap()
    }

    #[test]
    fn a_token_that_is_not_ascii_hides_no_other() {
        let odd = HeaderValue::from_bytes(b"\xc3\xa9, keep-alive").unwrap();
        assert!(has_token(&odd, "keep-alive"));
        assert!(!has_token(&odd, "close"));
    }

    #[test]
    fn only_http10_requests_that_ask_keep_alive() {
        assert!(http10_asked(&request(Version::HTTP_10, Some("keep-alive"))));
        assert!(http10_asked(&request(
            Version::HTTP_10,
            Some("foo, Keep-Alive")
        )));
        assert!(!http10_asked(&request(Version::HTTP_10, None)));
        assert!(!http10_asked(&request(Version::HTTP_10, Some("close"))));
        assert!(!http10_asked(&request(
            Version::HTTP_11,
            Some("keep-alive")
        )));
    }

    #[test]
    fn an_answer_that_speaks_of_the_connection_is_left_alone() {
        let mut resp = Response::new(());
        confirm(&mut resp);
        assert_eq!(resp.headers()[CONNECTION], "keep-alive");

        let mut closing = Response::builder()
            .header(CONNECTION, "close")
            .body(())
            .unwrap();
        confirm(&mut closing);
        assert_eq!(closing.headers()[CONNECTION], "close");
    }
}
