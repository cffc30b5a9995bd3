//! `shopmesh-bench`: see `docs/benchmarking.md`.

use clap::Parser as _;
use shopmesh_bench::cli::{Cli, run};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    run(Cli::parse()).await
}
