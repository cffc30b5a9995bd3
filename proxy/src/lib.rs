//! The edge gateway: the platform's front door. Every REST route comes from the protos'
//! `google.api.http` rules ([`routes`], [`template`]); requests are transcoded to gRPC and back
//! ([`transcode`]), validated with the same rules the services apply, and checked against each
//! method's access rule before any service sees them.

#![forbid(unsafe_code)]

pub mod routes;
pub mod template;
pub mod transcode;
