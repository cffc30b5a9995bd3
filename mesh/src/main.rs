//! `shopmesh-sidecar`: the mesh sidecar of one node.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use shopmesh_kit::shutdown::Shutdown;
use shopmesh_kit::{ConfigArgs, config, telemetry};
use shopmesh_mesh::sidecar::{Sidecar, SidecarConfig};

/// The shopmesh mesh sidecar: discovery, balancing, mTLS and access control for the services of
/// one node.
#[derive(Debug, Parser)]
#[command(name = "shopmesh-sidecar", version)]
struct Args {
    #[command(flatten)]
    config: ConfigArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config: SidecarConfig = match args.config.load() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    if args.config.check_config {
        print!("{}", config::render(&config));
        return ExitCode::SUCCESS;
    }
    if let Err(error) = telemetry::init_logs(&config.log) {
        eprintln!("error: {error}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    // Install the recorder before anything records: a metric recorded without one is lost.
    telemetry::metrics();
    let result = runtime.block_on(async {
        let shutdown = Shutdown::new();
        shutdown.trigger_on_signals();
        let sidecar = Sidecar::bind(config, &shutdown).await?;
        tracing::info!(
            inbound = %sidecar.inbound_address(),
            admin = %sidecar.admin_address(),
            "sidecar running"
        );
        sidecar.run(shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "stopped on error");
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
