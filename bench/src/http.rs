//! HTTP/1.1 and h2 targets on hyper's connection-level client, so the engine, not a pool,
//! decides how many connections exist and which request uses which. Cleartext (`http://`, h2
//! with prior knowledge) or TLS (`https://`, rustls; h2 or HTTP/1.1 agreed by ALPN).
//!
//! [`Origin`] is where requests go and how connections to it are opened; [`exchange`] sends one
//! request on a connection and reads the whole answer. [`HttpTarget`] sends the same request
//! over and over; scenarios ([`crate::scenario`]) build their requests per step on the same
//! two.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HOST, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, StatusCode, Uri, Version};
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::engine::{ErrorKind, Failure, Target};
use crate::error::Error;

/// How an `https://` target's certificate is checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// Accept any certificate (self-signed test servers). The handshake is still encrypted
    /// and signed, but nobody vouches for the server.
    pub insecure: bool,
    /// Trust the certificates in this PEM file instead of the public web roots.
    pub ca: Option<PathBuf>,
}

/// Where requests go: the resolved address, the protocol and, for `https://`, the TLS
/// set-up.
pub struct Origin {
    /// `scheme://authority` as given.
    base: String,
    authority: http::uri::Authority,
    addrs: Vec<SocketAddr>,
    h2: bool,
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

impl std::fmt::Debug for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Origin")
            .field("base", &self.base)
            .field("addrs", &self.addrs)
            .field("h2", &self.h2)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Origin {
    /// Checks the scheme, resolves the host once (so lookups are not measured) and prepares
    /// TLS for `https://`.
    pub async fn new(url: &str, h2: bool, tls: &TlsOptions) -> Result<(Self, Uri), Error> {
        let url_error = |reason: &str| Error::Url {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let uri: Uri = url.parse().map_err(|e| url_error(&format!("{e}")))?;
        let secure = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(url_error("the url must start with http:// or https://")),
        };
        if !secure && (tls.insecure || tls.ca.is_some()) {
            return Err(url_error("--insecure and --ca are for https:// urls"));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| url_error("the url has no host"))?
            .clone();
        let port = authority
            .port_u16()
            .unwrap_or(if secure { 443 } else { 80 });
        // `[::1]` in a url is `::1` to the resolver and to TLS.
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| url_error(&format!("resolving the host: {e}")))?
            .collect();
        if addrs.is_empty() {
            return Err(url_error("the host has no address"));
        }
        let tls = if secure {
            let name = ServerName::try_from(host.to_owned())
                .map_err(|e| url_error(&format!("not a TLS server name: {e}")))?;
            Some((tls_connector(tls, h2)?, name))
        } else {
            None
        };
        let base = format!("{}://{}", uri.scheme_str().unwrap_or("http"), authority);
        Ok((
            Self {
                base,
                authority,
                addrs,
                h2,
                tls,
            },
            uri,
        ))
    }

    /// Whether requests go over h2 (several at once per connection).
    pub fn h2(&self) -> bool {
        self.h2
    }

    /// `scheme://host:port`.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// A request for `path_and_query`, in the form the protocol wants: origin form and a
    /// `Host` header on HTTP/1.1, the absolute form (it becomes `:authority`) on h2.
    pub fn request(
        &self,
        method: Method,
        path_and_query: &str,
        mut headers: HeaderMap,
        body: Bytes,
    ) -> Result<Request<Full<Bytes>>, String> {
        let uri: Uri = if self.h2 {
            format!("{}{path_and_query}", self.base).parse()
        } else {
            path_and_query.parse()
        }
        .map_err(|e| format!("invalid path {path_and_query:?}: {e}"))?;
        if !self.h2 && !headers.contains_key(HOST) {
            let host = HeaderValue::from_str(self.authority.as_str())
                .map_err(|_| "the host is not a valid header value".to_owned())?;
            headers.insert(HOST, host);
        }
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        *request.version_mut() = if self.h2 {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        };
        Ok(request)
    }

    /// Opens a connection (TCP, then TLS for `https://`, then the HTTP handshake).
    pub async fn connect(&self) -> Result<HttpConn, String> {
        let stream = TcpStream::connect(&*self.addrs)
            .await
            .map_err(|e| e.to_string())?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        match &self.tls {
            None => self.handshake(TokioIo::new(stream)).await,
            Some((connector, name)) => {
                let stream = connector
                    .connect(name.clone(), stream)
                    .await
                    .map_err(|e| format!("TLS handshake: {e}"))?;
                if self.h2 && stream.get_ref().1.alpn_protocol() != Some(b"h2") {
                    return Err("the server did not agree to h2 (ALPN)".to_owned());
                }
                self.handshake(TokioIo::new(stream)).await
            }
        }
    }

    async fn handshake<I>(&self, io: I) -> Result<HttpConn, String>
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
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
}

/// The TLS client set-up: ALPN for the protocol, and whom to trust.
fn tls_connector(options: &TlsOptions, h2: bool) -> Result<TlsConnector, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Settings(format!("TLS: {e}")))?;
    let mut config = if options.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        match &options.ca {
            Some(path) => {
                use rustls::pki_types::CertificateDer;
                use rustls::pki_types::pem::PemObject as _;
                let bad =
                    |reason: String| Error::Settings(format!("--ca {}: {reason}", path.display()));
                let certs = CertificateDer::pem_file_iter(path)
                    .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| bad(e.to_string()))?;
                if certs.is_empty() {
                    return Err(bad("holds no PEM certificate".to_owned()));
                }
                for cert in certs {
                    roots.add(cert).map_err(|e| bad(e.to_string()))?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    config.alpn_protocols = vec![if h2 {
        b"h2".to_vec()
    } else {
        b"http/1.1".to_vec()
    }];
    Ok(TlsConnector::from(Arc::new(config)))
}

/// `--insecure`: any certificate for any name. Handshake signatures are still checked, so the
/// connection is encrypted to whoever holds the certificate's key.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// An open connection: HTTP/1.1 carries one request at a time, h2 many.
#[derive(Debug, Clone)]
pub enum HttpConn {
    H1(Arc<tokio::sync::Mutex<http1::SendRequest<Full<Bytes>>>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

impl HttpConn {
    /// Whether the connection can still carry a request.
    pub fn usable(&self) -> bool {
        match self {
            // Locked means a request of this connection's only worker is in flight.
            Self::H1(sender) => sender.try_lock().map_or(true, |s| !s.is_closed()),
            Self::H2(sender) => !sender.is_closed(),
        }
    }
}

fn transport(broken: bool) -> impl FnOnce(hyper::Error) -> Failure {
    move |_| Failure {
        kind: ErrorKind::Transport,
        broken,
    }
}

/// Sends `request` on `conn` and reads the whole answer: its status and body. Any status is
/// `Ok` here; the caller decides what counts as a failure ([`status_failure`]).
pub async fn exchange(
    conn: &HttpConn,
    request: Request<Full<Bytes>>,
) -> Result<(StatusCode, Bytes), Failure> {
    let h2 = matches!(conn, HttpConn::H2(_));
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
    // The whole answer is read, also for an error status: it is part of the latency, and an
    // HTTP/1.1 connection is only free again once it has been read.
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(transport(!h2))?
        .to_bytes();
    Ok((status, body))
}

/// A `4xx` or `5xx` status as a failure; `1xx`–`3xx` are successes.
pub fn status_failure(status: StatusCode) -> Option<Failure> {
    (status.is_client_error() || status.is_server_error()).then(|| Failure {
        kind: ErrorKind::Status((status.as_u16() / 100) as u8),
        broken: false,
    })
}

/// What to send, as the command line gives it.
#[derive(Debug, Clone)]
pub struct HttpSpec {
    pub url: String,
    pub method: String,
    /// `Name: value` lines.
    pub headers: Vec<String>,
    pub body: Bytes,
    /// h2 (with prior knowledge on `http://`, by ALPN on `https://`) instead of HTTP/1.1.
    pub h2: bool,
    pub tls: TlsOptions,
}

/// The same request, over and over, to one address.
#[derive(Debug)]
pub struct HttpTarget {
    url: String,
    origin: Origin,
    method: Method,
    /// `/path?query`.
    path: String,
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

/// A prefix that differs between runs: the start time in nanoseconds, in hex.
pub fn run_id() -> String {
    format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
    )
}

impl HttpTarget {
    /// Checks `spec` and resolves its host once, so that lookups are not measured.
    pub async fn new(spec: HttpSpec) -> Result<Self, Error> {
        let (origin, uri) = Origin::new(&spec.url, spec.h2, &spec.tls).await?;
        let url_error = |reason: &str| Error::Url {
            url: spec.url.clone(),
            reason: reason.to_owned(),
        };
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
        let target = Self {
            url: spec.url.clone(),
            origin,
            method,
            path,
            headers,
            unique,
            run: run_id(),
            sent: std::sync::atomic::AtomicU64::new(0),
            body: spec.body,
        };
        // Built once here so that a path or header the request cannot carry fails now.
        target.request().map_err(|reason| url_error(&reason))?;
        Ok(target)
    }

    fn request(&self) -> Result<Request<Full<Bytes>>, String> {
        let mut headers = self.headers.clone();
        for name in &self.unique {
            let n = self.sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if let Ok(value) = HeaderValue::try_from(format!("{}-{n}", self.run)) {
                headers.insert(name.clone(), value);
            }
        }
        self.origin
            .request(self.method.clone(), &self.path, headers, self.body.clone())
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

impl Target for HttpTarget {
    type Conn = HttpConn;

    fn multiplexed(&self) -> bool {
        self.origin.h2
    }

    fn describe(&self) -> String {
        self.url.clone()
    }

    async fn connect(&self) -> Result<HttpConn, String> {
        self.origin.connect().await
    }

    fn usable(&self, conn: &HttpConn) -> bool {
        conn.usable()
    }

    async fn call(&self, conn: &HttpConn) -> Result<(), Failure> {
        // Checked in `new`: building the same request again cannot fail.
        let request = self.request().map_err(|_| Failure {
            kind: ErrorKind::Transport,
            broken: false,
        })?;
        let (status, _) = exchange(conn, request).await?;
        status_failure(status).map_or(Ok(()), Err)
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
            tls: TlsOptions::default(),
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
                let request = target.request().unwrap();
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
        let request = target.request().unwrap();
        assert_eq!(request.method(), Method::POST);
        assert_eq!(request.uri(), "/v1/products?q=a");
        assert_eq!(request.version(), Version::HTTP_11);
        assert_eq!(request.headers()[HOST], "127.0.0.1:8080");
        assert_eq!(request.headers()["authorization"], "Bearer x");
        assert_eq!(target.origin.addrs, ["127.0.0.1:8080".parse().unwrap()]);
        assert!(!target.multiplexed());
    }

    #[tokio::test]
    async fn h2_requests_use_the_absolute_form() {
        let target = HttpTarget::new(spec("http://127.0.0.1/", true))
            .await
            .unwrap();
        let request = target.request().unwrap();
        assert_eq!(request.uri(), "http://127.0.0.1/");
        assert_eq!(request.version(), Version::HTTP_2);
        assert!(!request.headers().contains_key(HOST));
        assert_eq!(target.origin.addrs, ["127.0.0.1:80".parse().unwrap()]);
        assert!(target.multiplexed());
    }

    #[tokio::test]
    async fn https_urls_default_to_port_443_and_need_tls_options_only_there() {
        let target = HttpTarget::new(spec("https://127.0.0.1/", false))
            .await
            .unwrap();
        assert_eq!(target.origin.addrs, ["127.0.0.1:443".parse().unwrap()]);
        assert!(target.origin.tls.is_some());
        let mut cleartext = spec("http://127.0.0.1/", false);
        cleartext.tls.insecure = true;
        assert!(matches!(
            HttpTarget::new(cleartext).await,
            Err(Error::Url { .. })
        ));
        let mut missing = spec("https://127.0.0.1/", false);
        missing.tls.ca = Some(PathBuf::from("/nonexistent/ca.pem"));
        let error = HttpTarget::new(missing).await.unwrap_err().to_string();
        assert!(error.contains("--ca /nonexistent/ca.pem"), "{error}");
    }

    #[tokio::test]
    async fn unsupported_urls_are_refused() {
        for url in ["ftp://127.0.0.1/", "/relative", "http://"] {
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
