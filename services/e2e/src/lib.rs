//! The platform's black-box end-to-end suites live in `tests/`: each starts the real `shopmesh`
//! binary (`shopmesh up`, or `shopmesh cluster up` with every service a process of its own) and
//! drives it only through what a client or operator has: the edge's REST and gRPC API, the
//! admin ports, the command line. They find the binaries with `shopmesh_testkit::binaries`, so
//! `cargo build --workspace --bins` comes first (`scripts/test` does it). This library is empty.

#![forbid(unsafe_code)]
