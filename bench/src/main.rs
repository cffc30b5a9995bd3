//! `shopmesh-bench`: see `docs/benchmarking.md`.

#![forbid(unsafe_code)]

use clap::Parser as _;
use shopmesh_bench::cli::{Cli, run};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    run(Cli::parse()).await
}
