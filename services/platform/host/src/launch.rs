//! The start-up sequence every hosting binary shares: flags, configuration, `--check-config`,
//! logs, then [`crate::run`].

use std::process::ExitCode;

use clap::{Args as _, FromArgMatches as _};
use figment::Figment;
use shopmesh_kit::{ConfigArgs, config, telemetry};

use crate::{Hosted, Mode, PlatformConfig};

/// Loads configuration from `args` (plus `extra` overrides, e.g. `data_dir=...` from a flag),
/// then either prints it (`--check-config`) or runs `services` until shutdown.
pub fn launch(args: &ConfigArgs, services: &[&'static dyn Hosted], mode: Mode) -> ExitCode {
    let (platform, figment) = match load(args, services) {
        Ok(loaded) => loaded,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
    };
    if args.check_config {
        return ExitCode::SUCCESS;
    }
    if let Err(message) = telemetry::init_logs(&platform.log) {
        eprintln!("error: {message}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(crate::run(platform, figment, services, mode)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "stopped on error");
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The `main` of a `shopmesh-<service>` binary: its flags, then [`launch`] in distributed mode.
pub fn service_main(service: &'static dyn Hosted) -> ExitCode {
    // The name lives as long as the process; clap wants it static.
    let name: &'static str = Box::leak(format!("shopmesh-{}", service.name()).into_boxed_str());
    let command = ConfigArgs::augment_args(
        clap::Command::new(name)
            .version(env!("CARGO_PKG_VERSION"))
            .about(format!(
                "The shopmesh {} service, on its own",
                service.name()
            )),
    );
    let args = ConfigArgs::from_arg_matches(&command.get_matches()).unwrap_or_else(|e| e.exit());
    launch(&args, &[service], Mode::Distributed)
}

/// The validated platform config and the figment services read their sections from. With
/// `--check-config`, prints the effective configuration, each service's section included.
fn load(
    args: &ConfigArgs,
    services: &[&'static dyn Hosted],
) -> Result<(PlatformConfig, Figment), String> {
    let platform: PlatformConfig = args.load().map_err(|e| e.to_string())?;
    let figment = args.figment().map_err(|e| e.to_string())?;
    let mut sections = Vec::with_capacity(services.len());
    for service in services {
        let section = figment
            .clone()
            .focus(&format!("services.{}", service.name()));
        let rendered = service
            .check_config(&section)
            .map_err(|e| format!("services.{}: {e}", service.name()))?;
        sections.push((service.name(), rendered));
    }
    if let Some(unknown) = platform
        .services
        .keys()
        .find(|name| !services.iter().any(|s| s.name() == name.as_str()))
    {
        return Err(format!(
            "services.{unknown}: no such service in this binary"
        ));
    }
    if args.check_config {
        print!("{}", config::render(&platform));
        for (name, rendered) in sections {
            println!("\n[services.{name}]\n{rendered}");
        }
    }
    Ok((platform, figment))
}
