//! `shopmesh-users`: the users service on its own (distributed mode).

use std::process::ExitCode;

use clap::Parser;
use shopmesh_host::Mode;
use shopmesh_kit::ConfigArgs;

/// The shopmesh users service.
#[derive(Debug, Parser)]
#[command(name = "shopmesh-users", version)]
struct Args {
    #[command(flatten)]
    config: ConfigArgs,
}

fn main() -> ExitCode {
    shopmesh_host::launch(
        &Args::parse().config,
        &[&shopmesh_users::Users],
        Mode::Distributed,
    )
}
