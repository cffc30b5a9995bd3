//! `shopmesh-edge`: the edge gateway on its own (distributed mode).

#![forbid(unsafe_code)]

shopmesh_host::main!(shopmesh_edge::Edge);
