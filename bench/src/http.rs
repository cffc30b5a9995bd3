//! HTTP/1.1 and h2 (prior knowledge, cleartext) targets on hyper's connection-level client, so
//! the engine, not a pool, decides how many connections exist and which request uses which.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HOST, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Uri, Version};
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::engine::{ErrorKind, Failure, Target};
use crate::error::Error;

/// What to send, as the command line gives it.
#[derive(Debug, Clone)]
pub struct HttpSpec {
    pub url: String,
    pub method: String,
    /// `Name: value` lines.
    pub headers: Vec<String>,
    pub body: Bytes,
    /// h2 with prior knowledge instead of HTTP/1.1.
    pub h2: bool,
}

/// The same request, over and over, to one address.
#[derive(Debug)]
pub struct HttpTarget {
    url: String,
    addrs: Vec<SocketAddr>,
    h2: bool,
    method: Method,
    /// Origin form (`/path?query`) on HTTP/1.1, absolute on h2 (it becomes `:authority`).
    uri: Uri,
    headers: HeaderMap,
    /// Headers given as [`UNIQUE`]: a fresh value on every request (e.g. `Idempotency-Key`).
    unique: Vec<HeaderName>,
    /// This run's prefix of unique values, so they differ from every earlier run's too.
    run: String,
    sent: std::sync::atomic::AtomicU64,
    body: Bytes,
}

/// A header value that stands for a value unique to each request.
pub const UNIQUE: &str = "{unique}";

impl HttpTarget {
    /// Checks `spec` and resolves its host once, so that lookups are not measured.
    pub async fn new(spec: HttpSpec) -> Result<Self, Error> {
        let url_error = |reason: &str| Error::Url {
            url: spec.url.clone(),
            reason: reason.to_owned(),
        };
        let uri: Uri = spec.url.parse().map_err(|e| url_error(&format!("{e}")))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => return Err(url_error("https is not supported yet; use http")),
            _ => return Err(url_error("the url must start with http://")),
        }
        let authority = uri
            .authority()
            .ok_or_else(|| url_error("the url has no host"))?
            .clone();
        let port = authority.port_u16().unwrap_or(80);
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((authority.host(), port))
            .await
            .map_err(|e| url_error(&format!("resolving the host: {e}")))?
            .collect();
        if addrs.is_empty() {
            return Err(url_error("the host has no address"));
        }
        let method = Method::from_bytes(spec.method.as_bytes())
            .map_err(|_| url_error(&format!("invalid HTTP method {:?}", spec.method)))?;

        let mut headers = HeaderMap::new();
        let mut unique = Vec::new();
        for line in &spec.headers {
            let (name, value) = parse_header(line)?;
            if value == UNIQUE {
                unique.push(name);
                continue;
            }
            headers.append(name, value);
        }
        let path = uri
            .path_and_query()
            .map_or("/", |path| path.as_str())
            .to_owned();
        let uri = if spec.h2 {
            uri
        } else {
            if !headers.contains_key(HOST) {
                let host = HeaderValue::from_str(authority.as_str())
                    .map_err(|_| url_error("the host is not a valid header value"))?;
                headers.insert(HOST, host);
            }
            path.parse().map_err(|_| url_error("invalid path"))?
        };
        Ok(Self {
            url: spec.url,
            addrs,
            h2: spec.h2,
            method,
            uri,
            headers,
            unique,
            run: format!(
                "{:x}",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_nanos()
            ),
            sent: std::sync::atomic::AtomicU64::new(0),
            body: spec.body,
        })
    }

    fn request(&self) -> Request<Full<Bytes>> {
        let mut request = Request::new(Full::new(self.body.clone()));
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.headers_mut() = self.headers.clone();
        for name in &self.unique {
            let n = self.sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if let Ok(value) = HeaderValue::try_from(format!("{}-{n}", self.run)) {
                request.headers_mut().insert(name.clone(), value);
            }
        }
        *request.version_mut() = if self.h2 {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        };
        request
    }
}

/// Parses `Name: value`.
pub fn parse_header(line: &str) -> Result<(HeaderName, HeaderValue), Error> {
    let invalid = || Error::Header(line.to_owned());
    let (name, value) = line.split_once(':').ok_or_else(invalid)?;
    let name = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| invalid())?;
    let value = HeaderValue::from_str(value.trim()).map_err(|_| invalid())?;
    Ok((name, value))
}

/// An open connection: HTTP/1.1 carries one request at a time, h2 many.
#[derive(Debug, Clone)]
pub enum HttpConn {
    H1(Arc<tokio::sync::Mutex<http1::SendRequest<Full<Bytes>>>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

fn transport(broken: bool) -> impl FnOnce(hyper::Error) -> Failure {
    move |_| Failure {
        kind: ErrorKind::Transport,
        broken,
    }
}

impl Target for HttpTarget {
    type Conn = HttpConn;

    fn multiplexed(&self) -> bool {
        self.h2
    }

    fn describe(&self) -> String {
        self.url.clone()
    }

    async fn connect(&self) -> Result<HttpConn, String> {
        let stream = TcpStream::connect(&*self.addrs)
            .await
            .map_err(|e| e.to_string())?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let io = TokioIo::new(stream);
        // The connection tasks end when the connection does; their errors reach the requests.
        if self.h2 {
            let (sender, connection) = http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|e| format!("h2 handshake: {e}"))?;
            tokio::spawn(connection);
            Ok(HttpConn::H2(sender))
        } else {
            let (sender, connection) = http1::handshake(io)
                .await
                .map_err(|e| format!("HTTP/1.1 handshake: {e}"))?;
            tokio::spawn(connection);
            Ok(HttpConn::H1(Arc::new(tokio::sync::Mutex::new(sender))))
        }
    }

    fn usable(&self, conn: &HttpConn) -> bool {
        match conn {
            // Locked means a request of this connection's only worker is in flight.
            HttpConn::H1(sender) => sender.try_lock().map_or(true, |s| !s.is_closed()),
            HttpConn::H2(sender) => !sender.is_closed(),
        }
    }

    async fn call(&self, conn: &HttpConn) -> Result<(), Failure> {
        let request = self.request();
        let response = match conn {
            HttpConn::H1(sender) => {
                let mut sender = sender.lock().await;
                sender.ready().await.map_err(transport(true))?;
                sender
                    .send_request(request)
                    .await
                    .map_err(transport(true))?
            }
            HttpConn::H2(sender) => {
                let mut sender = sender.clone();
                sender.ready().await.map_err(transport(false))?;
                sender
                    .send_request(request)
                    .await
                    .map_err(transport(false))?
            }
        };
        let status = response.status();
        // The whole answer is read, also for an error status: it is part of the latency, and
        // an HTTP/1.1 connection is only free again once it has been read.
        response
            .into_body()
            .collect()
            .await
            .map_err(transport(!self.h2))?;
        if status.is_client_error() || status.is_server_error() {
            return Err(Failure {
                kind: ErrorKind::Status((status.as_u16() / 100) as u8),
                broken: false,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(url: &str, h2: bool) -> HttpSpec {
        HttpSpec {
            url: url.to_owned(),
            method: "POST".to_owned(),
            headers: vec!["Authorization: Bearer x".to_owned()],
            body: Bytes::from_static(b"{}"),
            h2,
        }
    }

    #[test]
    fn headers_are_name_colon_value() {
        let (name, value) = parse_header("Content-Type:  application/json ").unwrap();
        assert_eq!(name, "content-type");
        assert_eq!(value, "application/json");
        let (name, value) = parse_header("x-empty:").unwrap();
        assert_eq!((name.as_str(), value.as_bytes()), ("x-empty", &b""[..]));
        for bad in ["no colon", ": value", "bad name: v", "x: bad\nvalue"] {
            assert!(
                matches!(parse_header(bad), Err(Error::Header(_))),
                "{bad:?}"
            );
        }
    }

    #[tokio::test]
    async fn unique_headers_differ_on_every_request() {
        let mut unique = spec("http://127.0.0.1:8080/v1/orders", false);
        unique.headers.push(format!("Idempotency-Key: {UNIQUE}"));
        let target = HttpTarget::new(unique).await.unwrap();
        let keys: std::collections::HashSet<String> = (0..100)
            .map(|_| {
                let request = target.request();
                request.headers()["idempotency-key"]
                    .to_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(keys.len(), 100);
        assert!(!keys.contains(UNIQUE));
    }

    #[tokio::test]
    async fn http1_requests_use_the_origin_form_and_a_host_header() {
        let target = HttpTarget::new(spec("http://127.0.0.1:8080/v1/products?q=a", false))
            .await
            .unwrap();
        let request = target.request();
        assert_eq!(request.method(), Method::POST);
        assert_eq!(request.uri(), "/v1/products?q=a");
        assert_eq!(request.version(), Version::HTTP_11);
        assert_eq!(request.headers()[HOST], "127.0.0.1:8080");
        assert_eq!(request.headers()["authorization"], "Bearer x");
        assert_eq!(target.addrs, ["127.0.0.1:8080".parse().unwrap()]);
        assert!(!target.multiplexed());
    }

    #[tokio::test]
    async fn h2_requests_use_the_absolute_form() {
        let target = HttpTarget::new(spec("http://127.0.0.1/", true))
            .await
            .unwrap();
        let request = target.request();
        assert_eq!(request.uri(), "http://127.0.0.1/");
        assert_eq!(request.version(), Version::HTTP_2);
        assert!(!request.headers().contains_key(HOST));
        assert_eq!(target.addrs, ["127.0.0.1:80".parse().unwrap()]);
        assert!(target.multiplexed());
    }

    #[tokio::test]
    async fn unsupported_urls_are_refused() {
        for url in [
            "https://127.0.0.1/",
            "ftp://127.0.0.1/",
            "/relative",
            "http://",
        ] {
            assert!(
                matches!(
                    HttpTarget::new(spec(url, false)).await,
                    Err(Error::Url { .. })
                ),
                "{url}"
            );
        }
    }
}
