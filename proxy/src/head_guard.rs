//! A total deadline on HTTP/1 request heads, against slow-header ("slowloris") clients.
//!
//! Pingora reads a request head with a per-read timeout only, so a client that trickles one
//! byte every few seconds holds a connection and its task indefinitely, and no `ProxyHttp`
//! phase runs before the head is complete. `HeadGuard` wraps the edge's server app and each
//! accepted connection: from the first byte of a head, the whole head (up to its blank line)
//! must arrive within the limit, or the connection is closed. The clock stops at the blank line
//! and starts again with the first byte of the next request on the same connection; idle time
//! between requests is Pingora's keep-alive timeout's business. HTTP/2 (by ALPN, or cleartext
//! with the preface) is left alone: its frames have no head to time.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::{
    ALPN, GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    Stream, TimingDigest, UniqueID, UniqueIDType,
};
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The start of the HTTP/2 connection preface (`PRI * HTTP/2.0`).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

/// `app`, with every HTTP/1 request head bounded by `limit`.
pub struct HeadGuard<A> {
    app: Arc<A>,
    limit: Duration,
}

impl<A> HeadGuard<A> {
    pub fn new(app: A, limit: Duration) -> Self {
        Self {
            app: Arc::new(app),
            limit,
        }
    }

    /// The wrapped app, to configure it.
    pub fn app_mut(&mut self) -> Option<&mut A> {
        Arc::get_mut(&mut self.app)
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for HeadGuard<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        self.app
            .process_new(guard(stream, self.limit), shutdown)
            .await
    }

    async fn cleanup(&self) {
        self.app.cleanup().await;
    }
}

/// Wraps a new connection; a connection Pingora hands back for its next request is already
/// wrapped and waits for that request's first byte.
fn guard(stream: Stream, limit: Duration) -> Stream {
    if stream.selected_alpn_proto() == Some(ALPN::H2) {
        return stream;
    }
    if stream.as_any().is::<Guarded>() {
        return stream;
    }
    Box::new(Guarded {
        inner: stream,
        limit,
        phase: Phase::Idle,
        timer: None,
        head_started: Instant::now(),
        matched: 0,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Between requests: no byte of a head yet.
    Idle,
    /// Reading a head: the clock runs.
    Head,
    /// The head is complete: its body and the answer are not timed here.
    Body,
    /// HTTP/2 with prior knowledge: never timed.
    Off,
}

struct Guarded {
    inner: Stream,
    limit: Duration,
    phase: Phase,
    timer: Option<Pin<Box<Sleep>>>,
    /// When the first byte of the current head arrived.
    head_started: Instant,
    /// How much of `\r\n\r\n` the bytes read so far end with.
    matched: usize,
}

impl std::fmt::Debug for Guarded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guarded")
            .field("inner", &self.inner)
            .field("phase", &self.phase)
            .finish()
    }
}

/// Follows `bytes` through a head, `matched` being how much of `\r\n\r\n` the bytes before
/// them ended with; returns whether the head ends in them.
fn head_ends(matched: &mut usize, bytes: &[u8]) -> bool {
    const END: &[u8] = b"\r\n\r\n";
    for &byte in bytes {
        *matched = if byte == END[*matched] {
            *matched + 1
        } else if byte == END[0] {
            1
        } else {
            0
        };
        if *matched == END.len() {
            *matched = 0;
            return true;
        }
    }
    false
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if matches!(this.phase, Phase::Body | Phase::Off) {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        if let Some(timer) = this.timer.as_mut()
            && timer.as_mut().poll(cx).is_ready()
        {
            metrics::counter!("shopmesh_edge_slow_heads_total").increment(1);
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the request head did not arrive in time",
            )));
        }
        let before = buf.filled().len();
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = read {
            let new = &buf.filled()[before..];
            if !new.is_empty() {
                if this.phase == Phase::Idle {
                    let start = &H2_PREFACE[..new.len().min(H2_PREFACE.len())];
                    if new.starts_with(start) && before == 0 {
                        this.phase = Phase::Off;
                        return read;
                    }
                    this.phase = Phase::Head;
                    this.head_started = Instant::now();
                }
                if head_ends(&mut this.matched, new) {
                    this.phase = Phase::Body;
                    this.timer = None;
                } else {
                    // Most heads arrive in one read: the timer exists only for those that do not.
                    let deadline = this.head_started + this.limit;
                    let timer = this
                        .timer
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                    // Register the timer with this task, so a client that goes quiet is noticed.
                    let _ = timer.as_mut().poll(cx);
                }
            }
        }
        read
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        // Answering means the head was read; the next bytes read start the next request.
        if self.phase == Phase::Body {
            self.phase = Phase::Idle;
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        if self.phase == Phase::Body {
            self.phase = Phase::Idle;
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

// What Pingora asks of a connection besides its bytes, answered by the connection inside.

#[async_trait]
impl Shutdown for Guarded {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await;
    }
}

impl UniqueID for Guarded {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Guarded {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Guarded {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Guarded {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest);
    }
}

impl GetSocketDigest for Guarded {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest);
    }
}

#[async_trait]
impl Peek for Guarded {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_end_of_a_head_is_found_across_reads() {
        let mut matched = 0;
        assert!(!head_ends(&mut matched, b"GET / HTTP/1.1\r\nHost: a\r"));
        assert!(!head_ends(&mut matched, b"\n\r"));
        assert!(head_ends(&mut matched, b"\nbody"));
        assert!(!head_ends(&mut matched, b"\r\n\rx\n"));
        assert!(head_ends(&mut matched, b"\r\r\n\r\n"));
    }
}
