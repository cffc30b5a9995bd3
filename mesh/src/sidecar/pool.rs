//! Pooled h2 connections: one per destination, multiplexing every call to it, re-opened when it
//! closes. Opening is serialized per destination, so a burst of calls opens one connection.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::client::conn::http2;
use hyper::rt::{Read, Write};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use super::Body;

pub type Sender = http2::SendRequest<Body>;

#[derive(Debug)]
pub struct Pool<K> {
    slots: Mutex<HashMap<K, Arc<tokio::sync::Mutex<Option<Sender>>>>>,
}

impl<K> Default for Pool<K> {
    fn default() -> Self {
        Self {
            slots: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Eq + Hash + Clone> Pool<K> {
    /// The open connection to `key`, or a new one from `connect`.
    pub async fn get<F, Fut>(&self, key: &K, connect: F) -> anyhow::Result<Sender>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = anyhow::Result<Sender>>,
    {
        let slot = self
            .slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.clone())
            .or_default()
            .clone();
        let mut open = slot.lock().await;
        if let Some(sender) = open.as_ref().filter(|sender| !sender.is_closed()) {
            return Ok(sender.clone());
        }
        *open = None;
        let sender = connect().await?;
        *open = Some(sender.clone());
        Ok(sender)
    }

    /// Forgets the connection to `key`, so the next call opens a new one.
    pub fn discard(&self, key: &K) {
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}

/// Runs the h2 client handshake on `io` and drives the connection on its own task.
pub async fn handshake<T>(io: T) -> anyhow::Result<Sender>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    TokioIo<T>: Read + Write,
{
    let (sender, connection) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .adaptive_window(true)
        .handshake(TokioIo::new(io))
        .await?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "upstream connection ended");
        }
    });
    Ok(sender)
}
