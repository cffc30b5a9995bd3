//! `shopmesh-auth`: the auth service on its own (distributed mode).

use std::process::ExitCode;

use clap::Parser;
use shopmesh_host::Mode;
use shopmesh_kit::ConfigArgs;

/// The shopmesh auth service.
#[derive(Debug, Parser)]
#[command(name = "shopmesh-auth", version)]
struct Args {
    #[command(flatten)]
    config: ConfigArgs,
}

fn main() -> ExitCode {
    shopmesh_host::launch(
        &Args::parse().config,
        &[&shopmesh_auth::Auth],
        Mode::Distributed,
    )
}
