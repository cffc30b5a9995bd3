//! Logs and metrics for a whole process: JSON logs through `tracing`, and one Prometheus
//! recorder for the `metrics` crate whose text the admin port serves.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::{Deserialize, Serialize};
use tracing_subscriber::EnvFilter;

/// How a process logs.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter: a level (`info`) or per-target directives (`info,shopmesh_events=debug`).
    /// The `SHOPMESH_LOG` environment variable, when set, wins.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".to_owned(),
            format: LogFormat::Json,
        }
    }
}

/// `json` (one object per line, for machines) or `text` (for people at a terminal).
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Text,
}

/// Installs the process's log subscriber (logs go to stderr). Calling it again is harmless.
pub fn init_logs(config: &LogConfig) -> Result<(), String> {
    let filter = match std::env::var("SHOPMESH_LOG") {
        Ok(directives) => EnvFilter::try_new(&directives)
            .map_err(|e| format!("invalid SHOPMESH_LOG {directives:?}: {e}"))?,
        Err(_) => EnvFilter::try_new(&config.level)
            .map_err(|e| format!("invalid log.level {:?}: {e}", config.level))?,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second init (tests, or `up` after a binary's own init) keeps the first subscriber.
    let _ = match config.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
    Ok(())
}

/// The process-wide Prometheus recorder, installed on first use.
pub fn metrics() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(&[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ])
            .expect("static bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        // Fails only if another recorder was installed first; ours then still renders (empty).
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn recorded_metrics_render_as_prometheus_text() {
        let handle = super::metrics();
        metrics::counter!("shopmesh_test_total", "kind" => "unit").increment(3);
        let text = handle.render();
        assert!(
            text.contains("shopmesh_test_total{kind=\"unit\"} 3"),
            "{text}"
        );
    }
}
