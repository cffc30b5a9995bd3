//! `shopmesh-reviews`: the reviews service on its own (distributed mode).

#![forbid(unsafe_code)]

shopmesh_host::main!(shopmesh_reviews::Reviews);
