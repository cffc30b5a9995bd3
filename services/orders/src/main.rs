//! `shopmesh-orders`: the orders service on its own (distributed mode).

fn main() -> std::process::ExitCode {
    shopmesh_host::service_main(&shopmesh_orders::Orders)
}
