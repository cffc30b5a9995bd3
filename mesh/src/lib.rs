//! The shopmesh service mesh: where services run (`discovery`), who they are (`identity`, the
//! mesh CA), how a call picks its endpoint (`balance`), and the per-node `sidecar` that puts
//! them together.
//!
//! Services never know where their peers run. They send plain h2 to their node's sidecar, naming
//! the peer service as `:authority`; the sidecar picks an endpoint from its discovery table and
//! forwards over mutual TLS to the sidecar of that endpoint's node, which checks the caller's
//! identity against its allow-list and hands the call to the local service.

#![forbid(unsafe_code)]

pub mod balance;
pub mod discovery;
pub mod endpoint;
pub mod identity;
pub mod sidecar;

pub use endpoint::{Endpoint, Instance, Table};
