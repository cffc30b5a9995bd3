//! `shopmesh-payments`: the payments service on its own (distributed mode).

fn main() -> std::process::ExitCode {
    shopmesh_host::service_main(&shopmesh_payments::Payments)
}
