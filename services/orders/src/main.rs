//! `shopmesh-orders`: the orders service on its own (distributed mode).

shopmesh_host::main!(shopmesh_orders::Orders);
