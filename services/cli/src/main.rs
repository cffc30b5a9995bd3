//! `shopmesh`: the platform's command line. `shopmesh up` runs every service in one process on
//! embedded defaults (SQLite storage, the embedded event log, static loopback discovery).

#![forbid(unsafe_code)]

mod registry;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use shopmesh_host::Mode;
use shopmesh_kit::ConfigArgs;

#[derive(Debug, Parser)]
#[command(
    name = "shopmesh",
    version,
    about = "A Rust-native e-commerce platform of gRPC services",
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole platform in this process, each service on its own loopback port.
    Up {
        /// Where all data is kept; a restart on the same directory keeps everything.
        #[arg(long, value_name = "DIR", default_value = "shopmesh-data")]
        data_dir: PathBuf,

        #[command(flatten)]
        config: ConfigArgs,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Up {
            data_dir,
            mut config,
        } => {
            // The flag is the lowest-precedence override: `--set data_dir=...` still wins.
            config
                .overrides
                .insert(0, format!("data_dir={}", toml_string(&data_dir)));
            shopmesh_host::launch(&config, registry::SERVICES, Mode::Embedded)
        }
    }
}

/// A path as a TOML string literal (quoted and escaped).
fn toml_string(path: &std::path::Path) -> String {
    let text = path.to_string_lossy();
    let escaped = text.replace('\\', "\\\\").replace('"', "\\\"");
    format!("\"{escaped}\"")
}
