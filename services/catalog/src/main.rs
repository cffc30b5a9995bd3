//! `shopmesh-catalog`: the catalog service on its own (distributed mode).

shopmesh_host::main!(shopmesh_catalog::Catalog);
