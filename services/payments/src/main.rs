//! `shopmesh-payments`: the payments service on its own (distributed mode).

#![forbid(unsafe_code)]

shopmesh_host::main!(shopmesh_payments::Payments);
