//! `shopmesh-payments`: the payments service on its own (distributed mode).

shopmesh_host::main!(shopmesh_payments::Payments);
