//! `shopmesh-edge`: the edge gateway on its own (distributed mode).

fn main() -> std::process::ExitCode {
    shopmesh_host::service_main(&shopmesh_edge::Edge)
}
