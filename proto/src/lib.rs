//! The one protobuf source of shopmesh.
//!
//! Every `.proto` in this folder is compiled here, once: tonic clients and servers for each
//! service (`shopmesh::<service>::v1`), the event payloads (`shopmesh::events::v1`), and the
//! encoded [`FILE_DESCRIPTOR_SET`] that the edge reads to transcode JSON, validate requests and
//! generate OpenAPI. Nothing else in the workspace copies a proto.

#![forbid(unsafe_code)]

pub mod codec;
pub mod validate;

#[allow(clippy::all, clippy::pedantic, missing_docs)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/packages.rs"));
}
pub use generated::*;

/// The encoded `FileDescriptorSet` of every shopmesh proto and its imports, with options
/// (`google.api.http`, `buf.validate`, `shopmesh.options.v1.access`) and source comments intact.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/shopmesh_descriptor.bin"));

impl shopmesh::common::v1::Money {
    /// `amount_minor` minor units (cents) of `currency_code` (ISO 4217).
    pub fn new(currency_code: impl Into<String>, amount_minor: i64) -> Self {
        Self {
            currency_code: currency_code.into(),
            amount_minor,
        }
    }
}
