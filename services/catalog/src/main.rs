//! `shopmesh-catalog`: the catalog service on its own (distributed mode).

#![forbid(unsafe_code)]

shopmesh_host::main!(shopmesh_catalog::Catalog);
