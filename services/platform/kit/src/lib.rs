//! The service kit: what every shopmesh binary shares, so each service is only its own logic.
//!
//! - [`config`]: layered typed configuration (file, `SHOPMESH_*` environment, `--set` flags),
//!   validated at start-up, printable with secrets redacted.
//! - [`telemetry`]: JSON logs and the Prometheus metrics recorder.
//! - [`access`]: access rules from the protos, enforced in every server with verified callers.
//! - [`clock`]: stored times and protobuf timestamps.
//! - [`admin`]: the admin port with `/healthz`, `/readyz` and `/metrics`.
//! - [`error`]: one error type with stable reasons, mapped once to gRPC and HTTP.
//! - [`crypto`]: sealing data at rest, blind indexes, random tokens.
//! - [`context`]: request id, `traceparent` and deadline propagation across calls.
//! - [`locale`]: the caller's languages; [`paging`]: page tokens.
//! - [`grpc`]: serving (with health and the context layer) and connecting to peers.
//! - [`shutdown`]: one shutdown token per process, triggered by SIGINT and SIGTERM.
//! - [`token`]: EdDSA (Ed25519) access tokens: signing keys, and a verifier with a key cache.

#![forbid(unsafe_code)]

pub mod access;
pub mod admin;
pub mod clock;
pub mod config;
pub mod context;
pub mod crypto;
pub mod error;
pub mod grpc;
pub mod locale;
pub mod paging;
pub mod shutdown;
pub mod telemetry;
pub mod token;

pub use config::{ConfigArgs, ConfigError, Secret, Validate};
pub use context::RequestContext;
pub use error::{Error, ErrorKind, FieldViolation, Result};
pub use shutdown::Shutdown;
