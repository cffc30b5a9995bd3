//! `https://` targets against a TLS server on loopback with a self-signed certificate: trusted
//! through `--ca`, or accepted with `--insecure`, and refused before the run starts when
//! neither is given (the public roots do not vouch for it). HTTP/1.1 and h2 are agreed by
//! ALPN.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Version};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
mod common;

use common::ServerThread;
use shopmesh_bench::engine::{self, Load, Mode};
use shopmesh_bench::http::{HttpSpec, HttpTarget, TlsOptions};

/// Answers `200` with the HTTP version it was asked in; counts requests per version.
struct TlsServer {
    ca: tempfile::NamedTempFile,
    h1: Arc<AtomicU64>,
    h2: Arc<AtomicU64>,
    server: ServerThread,
}

impl TlsServer {
    fn start() -> Self {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let ca = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(ca.path(), certified.cert.pem()).unwrap();
        let chain = vec![CertificateDer::from_pem_slice(certified.cert.pem().as_bytes()).unwrap()];
        let key = PrivateKeyDer::from_pem_slice(certified.signing_key.serialize_pem().as_bytes())
            .unwrap();
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));

        let (h1, h2) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (counts1, counts2) = (h1.clone(), h2.clone());
        let server = ServerThread::start(move |stream| {
            let (acceptor, h1, h2) = (acceptor.clone(), counts1.clone(), counts2.clone());
            async move {
                // A client that refuses the certificate ends the handshake.
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let service = service_fn(move |request: Request<Incoming>| {
                    let counter = if request.version() == Version::HTTP_2 {
                        &h2
                    } else {
                        &h1
                    };
                    counter.fetch_add(1, Ordering::SeqCst);
                    async {
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            }
        });
        Self { ca, h1, h2, server }
    }
}

async fn run(server: &TlsServer, h2: bool, tls: TlsOptions) -> Result<u64, shopmesh_bench::Error> {
    let target = HttpTarget::new(HttpSpec {
        url: format!("https://localhost:{}/", server.server.addr.port()),
        method: "GET".to_owned(),
        headers: vec![],
        body: Bytes::new(),
        h2,
        tls,
    })
    .await?;
    let load = Load {
        mode: Mode::Rate(100.0),
        duration: Duration::from_millis(500),
        connections: 2,
        streams: if h2 { 2 } else { 1 },
        timeout: Duration::from_secs(2),
    };
    let outcome = engine::run(Arc::new(target), &load, false).await?;
    assert!(
        outcome.total.errors.is_empty(),
        "{:?}",
        outcome.total.errors
    );
    Ok(outcome.total.ok)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_targets_are_trusted_through_a_ca_file_or_insecure() {
    let server = TlsServer::start();
    let ca = TlsOptions {
        insecure: false,
        ca: Some(PathBuf::from(server.ca.path())),
    };
    assert_eq!(run(&server, false, ca.clone()).await.unwrap(), 50);
    assert_eq!(server.h1.load(Ordering::SeqCst), 50);
    assert_eq!(run(&server, true, ca).await.unwrap(), 50);
    assert_eq!(server.h2.load(Ordering::SeqCst), 50, "h2 agreed by ALPN");

    let insecure = TlsOptions {
        insecure: true,
        ca: None,
    };
    assert_eq!(run(&server, false, insecure).await.unwrap(), 50);

    // The public roots do not vouch for a self-signed certificate: the run does not start.
    let error = run(&server, false, TlsOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(error, shopmesh_bench::Error::Connect { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("certificate"), "{error}");
    assert_eq!(server.h1.load(Ordering::SeqCst), 100);
}
