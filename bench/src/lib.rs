//! The benchmark harness of shopmesh: one trustworthy tool for every performance figure we
//! publish.
//!
//! The load engine ([`engine`]) drives a [`engine::Target`] either open-loop at a constant rate
//! (requests leave on a fixed timetable and latency is measured from the *scheduled* send time,
//! so a stalled server shows in the tail instead of silently slowing the generator down, the
//! coordinated-omission correction of wrk2) or closed-loop at peak (each in-flight slot sends
//! its next request as soon as the previous one ends). Targets exist for HTTP/1.1 and h2, over
//! TLS or not ([`http`]), and for gRPC unary and server-streaming methods named from the shopmesh descriptor
//! set, with requests given as JSON ([`grpc`]). Latencies go into HDR histograms; failures are
//! counted by kind, never dropped. [`scenario`] runs a weighted mix of HTTP steps by virtual
//! users with state, described in a TOML file, after a data setup. [`result`] is the JSON a run
//! writes, [`machine`] describes where it ran, [`report`] compares results side by side and
//! [`plot`] draws them. `docs/benchmarking.md` is the user's guide.

#![forbid(unsafe_code)]

pub mod cli;
pub mod engine;
pub mod error;
pub mod grpc;
pub mod http;
pub mod machine;
pub mod plot;
pub mod report;
pub mod result;
pub mod scenario;

pub use error::Error;
