//! Why a benchmark could not be set up or read. Failures of individual requests during a run
//! are not errors of this kind: they are counted by [`crate::engine::ErrorKind`].

use std::path::PathBuf;

/// A benchmark that cannot start, or a result that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid url {url:?}: {reason}")]
    Url { url: String, reason: String },

    #[error("invalid header {0:?}: expected `Name: value`")]
    Header(String),

    #[error("invalid load settings: {0}")]
    Settings(String),

    #[error(
        "unknown gRPC method {0:?}: expected `package.Service/Method` from the shopmesh protos"
    )]
    UnknownMethod(String),

    #[error(
        "{0} streams requests from the client; only unary and server-streaming methods can be benchmarked"
    )]
    ClientStreaming(String),

    #[error("invalid request for {method}: {reason}")]
    Request { method: String, reason: String },

    #[error("connecting to {target}: {reason}")]
    Connect { target: String, reason: String },

    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("{file}{}: {reason}", line.map_or_else(String::new, |line| format!(":{line}")))]
    Scenario {
        file: String,
        line: Option<usize>,
        reason: String,
    },

    #[error("setup: {0}")]
    Setup(String),

    #[error("{path} is not a shopmesh-bench result: {source}")]
    Result {
        path: PathBuf,
        source: serde_json::Error,
    },
}
