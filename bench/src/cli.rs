//! The `shopmesh-bench` command line: `http`, `grpc` and `report`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use bytes::Bytes;
use clap::{ArgGroup, Args, Parser, Subcommand};

use crate::engine::{self, Load, Mode, Outcome, Target};
use crate::grpc::{GrpcSpec, GrpcTarget};
use crate::http::{HttpSpec, HttpTarget, parse_header};
use crate::machine::Machine;
use crate::report;
use crate::result::{Percentiles, Protocol, RunResult, Settings};

/// Load generator and report tool of shopmesh: open-loop constant-rate runs (latency from the
/// scheduled send time, so stalls show in the tail) or closed-loop peak runs, over HTTP/1.1, h2
/// and gRPC, with results as JSON.
#[derive(Debug, Parser)]
#[command(name = "shopmesh-bench", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Sends one HTTP request over and over (HTTP/1.1, or h2 with --h2).
    Http(HttpArgs),
    /// Calls one gRPC method over and over, with a request given as JSON.
    Grpc(GrpcArgs),
    /// Prints results side by side as a Markdown table, with ratios to the first.
    Report(ReportArgs),
}

/// How much load, for how long, and where the result goes.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("mode").required(true).args(["rate", "peak"])))]
pub struct LoadArgs {
    /// Open loop: send this many requests per second on a fixed timetable, measuring latency
    /// from each request's scheduled send time.
    #[arg(long, value_name = "REQUESTS_PER_SECOND")]
    pub rate: Option<f64>,

    /// Closed loop: each connection (stream) sends its next request as soon as the last ended.
    #[arg(long)]
    pub peak: bool,

    /// How long to send, e.g. 30s, 2m.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub duration: Duration,

    /// Connections to open (all before the clock starts).
    #[arg(long, default_value_t = 8)]
    pub connections: usize,

    /// Requests in flight per connection at most (h2 and gRPC only).
    #[arg(long, default_value_t = 1)]
    pub streams: usize,

    /// Per request, e.g. 2s, 500ms; a request without an answer by then counts as a timeout.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,

    /// Where to write the JSON result; standard output when not given.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,

    /// The name of the run in reports; the output file's name without extension by default.
    #[arg(long)]
    pub label: Option<String>,

    /// No progress line on standard error.
    #[arg(long, short)]
    pub quiet: bool,
}

impl LoadArgs {
    pub fn load(&self) -> Load {
        Load {
            mode: self.rate.map_or(Mode::Peak, Mode::Rate),
            duration: self.duration,
            connections: self.connections,
            streams: self.streams,
            timeout: self.timeout,
        }
    }

    fn label(&self) -> String {
        self.label.clone().unwrap_or_else(|| {
            self.out
                .as_deref()
                .and_then(Path::file_stem)
                .map_or_else(|| "run".to_owned(), |s| s.to_string_lossy().into_owned())
        })
    }
}

#[derive(Debug, Args)]
pub struct HttpArgs {
    /// The url to request, e.g. http://127.0.0.1:8080/v1/products.
    #[arg(long)]
    pub url: String,

    /// The HTTP method.
    #[arg(long, default_value = "GET")]
    pub method: String,

    /// A file whose contents are sent as the request body.
    #[arg(long, value_name = "FILE")]
    pub body: Option<PathBuf>,

    /// A request header, `Name: value`; repeat for several. The value `{unique}` stands for a
    /// value unique to each request (e.g. `-H 'Idempotency-Key: {unique}'`).
    #[arg(long = "header", short = 'H', value_name = "HEADER")]
    pub headers: Vec<String>,

    /// Speak h2 (prior knowledge, cleartext) instead of HTTP/1.1.
    #[arg(long)]
    pub h2: bool,

    #[command(flatten)]
    pub load: LoadArgs,
}

#[derive(Debug, Args)]
pub struct GrpcArgs {
    /// The server, e.g. http://127.0.0.1:50051.
    #[arg(long)]
    pub url: String,

    /// The method, `package.Service/Method`, e.g. shopmesh.users.v1.UserService/GetUser.
    #[arg(long)]
    pub method: String,

    /// The request message in proto3 JSON, or @FILE to read it from a file.
    #[arg(long, default_value = "{}")]
    pub request: String,

    /// Request metadata, `name: value`; repeat for several.
    #[arg(long = "header", short = 'H', value_name = "HEADER")]
    pub headers: Vec<String>,

    #[command(flatten)]
    pub load: LoadArgs,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Result files; the first is the baseline of the ratios.
    #[arg(required = true, value_name = "RESULT")]
    pub results: Vec<PathBuf>,
}

/// Runs the command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Http(args) => http(args).await,
        Command::Grpc(args) => grpc(args).await,
        Command::Report(args) => {
            let runs = args
                .results
                .iter()
                .map(|path| RunResult::read(path))
                .collect::<Result<Vec<_>, _>>()?;
            print!("{}", report::markdown(&runs));
            Ok(())
        }
    }
}

async fn http(args: HttpArgs) -> anyhow::Result<()> {
    let body = match &args.body {
        Some(path) => Bytes::from(
            std::fs::read(path).with_context(|| format!("reading the body {}", path.display()))?,
        ),
        None => Bytes::new(),
    };
    let load = args.load.load();
    let protocol = if args.h2 {
        Protocol::H2
    } else {
        Protocol::Http1
    };
    let mut settings = Settings::new(protocol, &args.url, &load);
    settings.http_method = Some(args.method.to_uppercase());
    settings.body_bytes = Some(body.len());
    settings.header_names = header_names(&args.headers)?;
    let target = HttpTarget::new(HttpSpec {
        url: args.url,
        method: args.method.to_uppercase(),
        headers: args.headers,
        body,
        h2: args.h2,
    })
    .await?;
    measure(target, &args.load, settings).await
}

async fn grpc(args: GrpcArgs) -> anyhow::Result<()> {
    let request = match args.request.strip_prefix('@') {
        Some(path) => {
            std::fs::read_to_string(path).with_context(|| format!("reading the request {path}"))?
        }
        None => args.request.clone(),
    };
    let load = args.load.load();
    let mut settings = Settings::new(Protocol::Grpc, &args.url, &load);
    settings.grpc_method = Some(args.method.clone());
    settings.header_names = header_names(&args.headers)?;
    let target = GrpcTarget::new(GrpcSpec {
        url: args.url,
        method: args.method,
        request: request.clone(),
        headers: args.headers,
    })?;
    // The target has parsed the request already, so this is valid JSON.
    settings.request = serde_json::from_str(&request).ok();
    measure(target, &args.load, settings).await
}

fn header_names(headers: &[String]) -> anyhow::Result<Vec<String>> {
    headers
        .iter()
        .map(|line| Ok(parse_header(line)?.0.as_str().to_owned()))
        .collect()
}

async fn measure<T: Target>(target: T, args: &LoadArgs, settings: Settings) -> anyhow::Result<()> {
    let load = args.load();
    let started_at = SystemTime::now();
    let outcome = engine::run(Arc::new(target), &load, !args.quiet).await?;
    let result = RunResult::new(
        args.label(),
        settings,
        &outcome,
        started_at,
        Machine::detect(),
    );
    eprintln!("{}", summary(&result, &outcome));
    let json = serde_json::to_string_pretty(&result)? + "\n";
    match &args.out {
        Some(path) => std::fs::write(path, json)
            .with_context(|| format!("writing the result to {}", path.display()))?,
        None => print!("{json}"),
    }
    Ok(())
}

/// The human summary printed on standard error after a run.
fn summary(result: &RunResult, outcome: &Outcome) -> String {
    let line = |name: &str, p: &Option<Percentiles>| match p {
        Some(p) => format!(
            "{name}: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
            p.p50, p.p90, p.p99, p.p999, p.max
        ),
        None => format!("{name}: no successful request"),
    };
    let mut text = format!(
        "{} requests in {:.2} s ({:.1} req/s): {} ok, {} failed",
        result.requests,
        outcome.elapsed.as_secs_f64(),
        result.achieved_rate,
        result.ok,
        result.error_count()
    );
    for (kind, count) in &result.errors {
        text.push_str(&format!("\n  {kind}: {count}"));
    }
    if result.unsent > 0 {
        text.push_str(&format!(
            "\n{} requests were due but not sent: the target did not keep up",
            result.unsent
        ));
    }
    text.push('\n');
    text.push_str(&line("latency", &result.latency_ms));
    if result.settings.mode == "rate" {
        text.push('\n');
        text.push_str(&line("service time", &result.service_time_ms));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn a_mode_is_required_and_exclusive() {
        let parse = |args: &[&str]| Cli::try_parse_from(args);
        let base = ["shopmesh-bench", "http", "--url", "http://127.0.0.1/"];
        assert!(parse(&base).is_err());
        assert!(parse(&[&base[..], &["--rate", "10", "--peak"]].concat()).is_err());
        let cli = parse(&[&base[..], &["--rate", "250", "--duration", "5s"]].concat()).unwrap();
        let Command::Http(args) = cli.command else {
            panic!("not http")
        };
        assert_eq!(args.load.load().mode, Mode::Rate(250.0));
        assert_eq!(args.load.load().duration, Duration::from_secs(5));
        assert_eq!(args.load.load().timeout, Duration::from_secs(2));
        assert_eq!(args.method, "GET");

        let cli = parse(&[
            "shopmesh-bench",
            "grpc",
            "--url",
            "http://127.0.0.1:50051",
            "--method",
            "shopmesh.users.v1.UserService/GetUser",
            "--peak",
            "--connections",
            "2",
            "--streams",
            "4",
            "--out",
            "runs/peak-users.json",
        ])
        .unwrap();
        let Command::Grpc(args) = cli.command else {
            panic!("not grpc")
        };
        assert_eq!(args.load.load().mode, Mode::Peak);
        assert_eq!(args.load.load().workers(), 8);
        assert_eq!(args.load.label(), "peak-users");
        assert_eq!(args.request, "{}");
    }
}
