//! `shopmesh-edge`: the edge gateway on its own (distributed mode).

shopmesh_host::main!(shopmesh_edge::Edge);
