//! `shopmesh-orders`: the orders service on its own (distributed mode).

#![forbid(unsafe_code)]

shopmesh_host::main!(shopmesh_orders::Orders);
