//! Graceful shutdown: one token a whole process shares. SIGINT or SIGTERM triggers it; servers
//! stop accepting, drain what is in flight, and the process exits within a bounded time. A second
//! signal exits at once.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How long a process waits for in-flight work after shutdown starts.
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(5);

/// A cloneable shutdown signal.
#[derive(Debug, Clone, Default)]
pub struct Shutdown(CancellationToken);

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts shutdown everywhere this token was cloned to.
    pub fn trigger(&self) {
        self.0.cancel();
    }

    pub fn is_triggered(&self) -> bool {
        self.0.is_cancelled()
    }

    /// Resolves once shutdown has started.
    pub async fn wait(&self) {
        self.0.cancelled().await;
    }

    /// Triggers this token on SIGINT or SIGTERM; a second signal ends the process at once.
    /// It listens from the moment it returns, so a signal that comes any later drains the
    /// process rather than killing it.
    pub fn trigger_on_signals(&self) {
        let shutdown = self.clone();
        let mut signals = Signals::listen();
        tokio::spawn(async move {
            signals.next().await;
            tracing::info!("shutdown requested, draining");
            shutdown.trigger();
            signals.next().await;
            tracing::warn!("second signal, exiting without draining");
            std::process::exit(130);
        });
    }
}

/// Runs `task` every `every` until shutdown; a failed run is logged under `name` and the next one
/// runs on schedule. For housekeeping: reloads, purges of expired rows.
pub async fn every<F, Fut>(shutdown: Shutdown, every: Duration, name: &'static str, mut task: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = shutdown.wait() => return,
        }
        if let Err(error) = task().await {
            tracing::warn!(
                task = name,
                error = format!("{error:#}"),
                "periodic task failed"
            );
        }
    }
}

/// SIGINT and SIGTERM, listened to from creation on.
#[cfg(unix)]
struct Signals(Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>);

#[cfg(unix)]
impl Signals {
    fn listen() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        Self(
            signal(SignalKind::interrupt())
                .ok()
                .zip(signal(SignalKind::terminate()).ok()),
        )
    }

    async fn next(&mut self) {
        let Some((interrupt, terminate)) = &mut self.0 else {
            // Without signal handlers the process can only be killed; never trigger shutdown.
            return std::future::pending().await;
        };
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    }
}

#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn listen() -> Self {
        Self
    }

    async fn next(&mut self) {
        let _ = tokio::signal::ctrl_c().await;
    }
}
