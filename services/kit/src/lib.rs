//! The service kit: what every shopmesh binary shares, so each service is only its own logic.
//!
//! - [`config`]: layered typed configuration (file, `SHOPMESH_*` environment, `--set` flags),
//!   validated at start-up, printable with secrets redacted.
//! - [`telemetry`]: JSON logs and the Prometheus metrics recorder.
//! - [`admin`]: the admin port with `/healthz`, `/readyz` and `/metrics`.
//! - [`error`]: one error type with stable reasons, mapped once to gRPC and HTTP.
//! - [`context`]: request id, `traceparent` and deadline propagation across calls.
//! - [`grpc`]: serving (with health and the context layer) and connecting to peers.
//! - [`shutdown`]: one shutdown token per process, triggered by SIGINT and SIGTERM.

#![forbid(unsafe_code)]

pub mod admin;
pub mod config;
pub mod context;
pub mod error;
pub mod grpc;
pub mod shutdown;
pub mod telemetry;
pub mod testbed;

pub use config::{ConfigArgs, ConfigError, Secret, Validate};
pub use context::RequestContext;
pub use error::{Error, ErrorKind, FieldViolation, Result};
pub use shutdown::Shutdown;
