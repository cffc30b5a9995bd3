//! The JSON a run writes: what was asked, what was measured, and where.
//!
//! Latencies are in milliseconds with microsecond resolution. `latency_ms` is measured from the
//! scheduled send time in rate mode (from the actual send in peak mode) and covers successful
//! requests; failed ones are counted in `errors` by kind. `histogram` is the whole latency
//! histogram in the HdrHistogram V2 format (deflate-compressed, base64), readable by every
//! HdrHistogram implementation, so runs can be merged and re-analysed later; `spectrum` is the
//! same histogram as a percentile list for plotting.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer as _, V2DeflateSerializer};
use serde::{Deserialize, Serialize};

use crate::engine::{Load, Mode, Outcome, StepTally};
use crate::error::Error;
use crate::machine::Machine;

/// How the requests travelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Http1,
    H2,
    Grpc,
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Http1 => "HTTP/1.1",
            Self::H2 => "h2",
            Self::Grpc => "gRPC",
        })
    }
}

/// What a run was asked to do. Header *values* are not kept: they often carry credentials.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub protocol: Protocol,
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_bytes: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<serde_json::Value>,
    pub header_names: Vec<String>,
    /// `rate` (open loop) or `peak` (closed loop).
    pub mode: String,
    /// Requests per second asked for, in rate mode.
    pub rate: Option<f64>,
    pub duration_s: f64,
    pub connections: usize,
    pub streams: usize,
    pub timeout_ms: u64,
    /// A scenario run: which scenario, with how many users.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scenario: Option<ScenarioSettings>,
}

/// What a scenario run was.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScenarioSettings {
    pub name: String,
    /// The file as given on the command line.
    pub file: String,
    pub users: usize,
    /// The seed of the users' random choices.
    pub seed: u64,
    /// How long the setup and the users' setup took, before the clock started.
    pub setup_s: f64,
}

impl Settings {
    /// The load part of the settings; the rest is filled in by the caller.
    pub fn new(protocol: Protocol, url: &str, load: &Load) -> Self {
        let (mode, rate) = match load.mode {
            Mode::Rate(rate) => ("rate", Some(rate)),
            Mode::Peak => ("peak", None),
        };
        Self {
            protocol,
            url: url.to_owned(),
            http_method: None,
            body_bytes: None,
            grpc_method: None,
            request: None,
            header_names: Vec::new(),
            mode: mode.to_owned(),
            rate,
            duration_s: load.duration.as_secs_f64(),
            connections: load.connections,
            streams: load.streams,
            timeout_ms: u64::try_from(load.timeout.as_millis()).unwrap_or(u64::MAX),
            scenario: None,
        }
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub min: f64,
    pub mean: f64,
}

impl Percentiles {
    /// Of a histogram in microseconds; `None` when it is empty.
    pub fn of(histogram: &Histogram<u64>) -> Option<Self> {
        if histogram.is_empty() {
            return None;
        }
        let at = |q: f64| ms(histogram.value_at_quantile(q));
        Some(Self {
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            p999: at(0.999),
            max: ms(histogram.max()),
            min: ms(histogram.min()),
            mean: histogram.mean().round() / 1000.0,
        })
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// A histogram in the HdrHistogram V2 deflate format, base64-encoded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncodedHistogram {
    /// The unit of the recorded values: `us`.
    pub unit: String,
    pub encoding: String,
    pub data: String,
}

const ENCODING: &str = "hdrhistogram-v2-deflate-base64";

impl EncodedHistogram {
    pub fn encode(histogram: &Histogram<u64>) -> Self {
        let mut bytes = Vec::new();
        V2DeflateSerializer::new()
            .serialize(histogram, &mut bytes)
            .expect("serializing a histogram into memory cannot fail");
        Self {
            unit: "us".to_owned(),
            encoding: ENCODING.to_owned(),
            data: BASE64.encode(bytes),
        }
    }

    pub fn decode(&self) -> Result<Histogram<u64>, String> {
        if self.encoding != ENCODING || self.unit != "us" {
            return Err(format!(
                "unknown histogram encoding {} in {}",
                self.encoding, self.unit
            ));
        }
        let bytes = BASE64.decode(&self.data).map_err(|e| e.to_string())?;
        Deserializer::new()
            .deserialize(&mut bytes.as_slice())
            .map_err(|e| format!("{e:?}"))
    }
}

/// One point of the percentile spectrum: `percentile` % of requests took at most `latency_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SpectrumPoint {
    pub percentile: f64,
    pub latency_ms: f64,
    pub count: u64,
}

/// The percentile spectrum (HdrHistogram's `outputPercentileDistribution`, five steps per
/// halving of the distance to 100 %).
pub fn spectrum(histogram: &Histogram<u64>) -> Vec<SpectrumPoint> {
    histogram
        .iter_quantiles(5)
        .map(|value| SpectrumPoint {
            percentile: (value.quantile_iterated_to() * 100.0 * 1e6).round() / 1e6,
            latency_ms: ms(value.value_iterated_to()),
            count: value.count_since_last_iteration(),
        })
        .collect()
}

/// One second of the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimelinePoint {
    /// Seconds since the start at the end of this interval.
    pub at_s: f64,
    /// Requests that ended in this interval, successful or not.
    pub requests: u64,
    pub errors: u64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
}

/// One step of a scenario run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepResult {
    pub name: String,
    pub weight: f64,
    /// Calls of this step that ended, successful or not.
    pub requests: u64,
    pub ok: u64,
    pub errors: BTreeMap<String, u64>,
    /// Of successful calls, from the scheduled time to the end of the step's last request.
    pub latency_ms: Option<Percentiles>,
    pub histogram: EncodedHistogram,
}

impl StepResult {
    /// The steps of a run, from the engine's per-step totals.
    pub fn of(names: &[String], weights: &[f64], tallies: &[StepTally]) -> Vec<Self> {
        names
            .iter()
            .zip(weights)
            .zip(tallies)
            .map(|((name, weight), tally)| Self {
                name: name.clone(),
                weight: *weight,
                requests: tally.requests(),
                ok: tally.ok,
                errors: tally
                    .errors
                    .iter()
                    .map(|(kind, count)| ((*kind).to_owned(), *count))
                    .collect(),
                latency_ms: Percentiles::of(&tally.latency),
                histogram: EncodedHistogram::encode(&tally.latency),
            })
            .collect()
    }
}

/// A run's result file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    /// `shopmesh-bench` and its version.
    pub tool: String,
    /// The name of the run in reports.
    pub label: String,
    /// RFC 3339, UTC.
    pub started_at: String,
    pub settings: Settings,
    /// Requests that ended, successful or not.
    pub requests: u64,
    pub ok: u64,
    /// Failed requests by kind (`connect`, `timeout`, `status_4xx`, `status_5xx`,
    /// `grpc_<code>`, `transport`).
    pub errors: BTreeMap<String, u64>,
    /// Open-loop requests that were due but not sent before the end, because every connection
    /// was busy: the server did not keep up with the rate.
    pub unsent: u64,
    /// Connections reopened during the run.
    pub reconnects: u64,
    /// From the start to the end of the last request.
    pub elapsed_s: f64,
    /// Requests per second of the sending window (the duration, or up to the last send if
    /// that was later).
    pub achieved_rate: f64,
    /// From the scheduled send time in rate mode, from the actual send in peak mode.
    pub latency_ms: Option<Percentiles>,
    /// From the actual send time (the same as `latency_ms` in peak mode).
    pub service_time_ms: Option<Percentiles>,
    pub histogram: EncodedHistogram,
    pub spectrum: Vec<SpectrumPoint>,
    pub timeline: Vec<TimelinePoint>,
    pub machine: Machine,
    /// Per step, for a scenario run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepResult>,
}

impl RunResult {
    pub fn new(
        label: String,
        settings: Settings,
        outcome: &Outcome,
        started_at: SystemTime,
        machine: Machine,
    ) -> Self {
        let total = &outcome.total;
        let us_to_ms = |us: Option<u64>| us.map(ms);
        Self {
            tool: format!("shopmesh-bench {}", env!("CARGO_PKG_VERSION")),
            label,
            started_at: humantime::format_rfc3339_seconds(started_at).to_string(),
            settings,
            requests: total.requests(),
            ok: total.ok,
            errors: total
                .errors
                .iter()
                .map(|(kind, count)| ((*kind).to_owned(), *count))
                .collect(),
            unsent: total.unsent,
            reconnects: total.reconnects,
            elapsed_s: round_us(outcome.elapsed),
            achieved_rate: (outcome.achieved_rate() * 100.0).round() / 100.0,
            latency_ms: Percentiles::of(&total.latency),
            service_time_ms: Percentiles::of(&total.service),
            histogram: EncodedHistogram::encode(&total.latency),
            spectrum: spectrum(&total.latency),
            timeline: outcome
                .timeline
                .iter()
                .map(|second| TimelinePoint {
                    at_s: round_us(second.at),
                    requests: second.requests,
                    errors: second.errors,
                    p50_ms: us_to_ms(second.p50_us),
                    p99_ms: us_to_ms(second.p99_us),
                    max_ms: us_to_ms(second.max_us),
                })
                .collect(),
            machine,
            steps: Vec::new(),
        }
    }

    /// Failed requests.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Reads a result file.
    pub fn read(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| Error::Result {
            path: path.to_owned(),
            source,
        })
    }
}

fn round_us(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1e6).round() / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::new_histogram;

    fn histogram() -> Histogram<u64> {
        let mut histogram = new_histogram();
        for us in 1..=1000 {
            histogram.record(us * 10).unwrap();
        }
        histogram.record(1_000_000).unwrap();
        histogram
    }

    #[test]
    fn percentiles_are_in_milliseconds() {
        // 1001 values: 10, 20, ... 10 000 µs and one of 1 s; HdrHistogram reports the highest
        // value equivalent to the one at each rank (within 0.1 %).
        let p = Percentiles::of(&histogram()).unwrap();
        let near = |value: f64, expected: f64| (value - expected).abs() <= expected * 0.002;
        assert!(near(p.p50, 5.01), "{p:?}");
        assert!(near(p.p90, 9.01), "{p:?}");
        assert!(near(p.p99, 9.91), "{p:?}");
        assert!(near(p.p999, 10.0), "{p:?}");
        assert!(near(p.max, 1000.0), "{p:?}");
        assert!(near(p.min, 0.01), "{p:?}");
        assert!(near(p.mean, 6.0), "{p:?}");
        assert!(Percentiles::of(&new_histogram()).is_none());
    }

    #[test]
    fn histograms_survive_encoding() {
        let original = histogram();
        let encoded = EncodedHistogram::encode(&original);
        assert_eq!(encoded.unit, "us");
        let decoded = encoded.decode().unwrap();
        assert_eq!(decoded, original);
        let wrong = EncodedHistogram {
            data: "not base64!".to_owned(),
            ..encoded.clone()
        };
        assert!(wrong.decode().is_err());
        let wrong = EncodedHistogram {
            unit: "ms".to_owned(),
            ..encoded
        };
        assert!(wrong.decode().is_err());
    }

    #[test]
    fn the_spectrum_climbs_to_the_maximum() {
        let points = spectrum(&histogram());
        assert!(points.len() > 20);
        assert!(
            points
                .windows(2)
                .all(|w| w[0].percentile <= w[1].percentile && w[0].latency_ms <= w[1].latency_ms)
        );
        let last = points.last().unwrap();
        assert_eq!(last.percentile, 100.0);
        assert!((last.latency_ms - 1000.0).abs() < 1.0);
        assert_eq!(points.iter().map(|p| p.count).sum::<u64>(), 1001);
    }
}
