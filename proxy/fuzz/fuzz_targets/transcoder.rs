//! The transcoder under libFuzzer: see `shopmesh_edge::fuzz` for what an input means.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use shopmesh_edge::routes::Router;
use shopmesh_proto::validate::descriptors;

fuzz_target!(|data: &[u8]| {
    static ROUTER: OnceLock<Router> = OnceLock::new();
    let router = ROUTER.get_or_init(|| Router::from_descriptors(descriptors()).expect("routes"));
    shopmesh_edge::fuzz::transcode_bytes(router, data);
});
