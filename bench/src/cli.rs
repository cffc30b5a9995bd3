//! The `shopmesh-bench` command line: `http`, `grpc`, `scenario` and `report`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use bytes::Bytes;
use clap::{ArgGroup, Args, Parser, Subcommand};

use crate::engine::{self, Load, Mode, Outcome, Target};
use crate::grpc::{GrpcSpec, GrpcTarget};
use crate::http::{HttpSpec, HttpTarget, Origin, TlsOptions, parse_header};
use crate::machine::Machine;
use crate::result::{Percentiles, Protocol, RunResult, ScenarioSettings, Settings, StepResult};
use crate::scenario::{Scenario, ScenarioTarget};
use crate::{plot, report};

/// Load generator and report tool of shopmesh: open-loop constant-rate runs (latency from the
/// scheduled send time, so stalls show in the tail) or closed-loop peak runs, over HTTP/1.1, h2
/// and gRPC, of one request or of a scenario's mix, with results as JSON, Markdown reports and
/// PNG plots.
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
    /// Runs a scenario file: its setup, then its weighted mix of steps by virtual users.
    Scenario(ScenarioArgs),
    /// Prints results side by side as a Markdown table, with ratios to the first, and
    /// optionally writes PNG plots.
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
        Self::label_of(self.label.as_deref(), self.out.as_deref())
    }

    /// `label`, or the output file's name without extension, or `run`.
    fn label_of(label: Option<&str>, out: Option<&Path>) -> String {
        label.map(str::to_owned).unwrap_or_else(|| {
            out.and_then(Path::file_stem)
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

    /// Speak h2 instead of HTTP/1.1 (prior knowledge on http://, ALPN on https://).
    #[arg(long)]
    pub h2: bool,

    #[command(flatten)]
    pub tls: TlsArgs,

    #[command(flatten)]
    pub load: LoadArgs,
}

/// How an https:// target's certificate is checked (the public web roots without either).
#[derive(Debug, Args)]
pub struct TlsArgs {
    /// Accept any certificate (self-signed test servers).
    #[arg(long, conflicts_with = "ca")]
    pub insecure: bool,

    /// Trust the CA certificates in this PEM file instead of the public web roots.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
}

impl TlsArgs {
    fn options(&self) -> TlsOptions {
        TlsOptions {
            insecure: self.insecure,
            ca: self.ca.clone(),
        }
    }
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("mode").args(["rate", "peak"])))]
pub struct ScenarioArgs {
    /// The scenario file (TOML), e.g. bench/scenarios/storefront.toml.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,

    /// The base url the scenario's paths are relative to.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,

    /// Open loop: start this many steps per second (default: the file's `load.rate`).
    #[arg(long, value_name = "STEPS_PER_SECOND")]
    pub rate: Option<f64>,

    /// Closed loop: each connection (stream) starts its next step as soon as the last ended.
    #[arg(long)]
    pub peak: bool,

    /// How long the mix runs, after the setup (default: the file's, else 30s).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,

    /// Connections to open (default: the file's, else 8).
    #[arg(long)]
    pub connections: Option<usize>,

    /// Steps in flight per connection at most, h2 only (default: the file's, else 1).
    #[arg(long)]
    pub streams: Option<usize>,

    /// Virtual users, each set up before the clock starts; at least connections × streams
    /// (default: the file's, else that many).
    #[arg(long)]
    pub users: Option<usize>,

    /// Per step, all its requests together (default: the file's, else 5s).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,

    /// Speak h2 instead of HTTP/1.1 (also when the file says `h2 = true`).
    #[arg(long)]
    pub h2: bool,

    /// Overrides a [vars] value of the file, `name=value`; repeat for several.
    #[arg(long = "var", value_name = "NAME=VALUE")]
    pub vars: Vec<String>,

    /// Seed of the users' random choices (steps, `{pick:…}`, `*` in captures).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    #[command(flatten)]
    pub tls: TlsArgs,

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

    /// The calls' `:authority` instead of the url's host and port, e.g. the service's name
    /// when the url is a mesh sidecar.
    #[arg(long, value_name = "NAME")]
    pub authority: Option<String>,

    #[command(flatten)]
    pub load: LoadArgs,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Result files; the first is the baseline of the ratios.
    #[arg(required = true, value_name = "RESULT")]
    pub results: Vec<PathBuf>,

    /// Also write PNG plots into this directory: latency-spectrum.png, timeline.png and, per
    /// scenario run, LABEL-steps.png.
    #[arg(long, value_name = "DIR")]
    pub plots: Option<PathBuf>,
}

/// Runs the command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Http(args) => http(args).await,
        Command::Grpc(args) => grpc(args).await,
        Command::Scenario(args) => scenario(args).await,
        Command::Report(args) => {
            let runs = args
                .results
                .iter()
                .map(|path| RunResult::read(path))
                .collect::<Result<Vec<_>, _>>()?;
            print!("{}", report::markdown(&runs));
            if let Some(dir) = &args.plots {
                for path in plot::write(&runs, dir)? {
                    eprintln!("wrote {}", path.display());
                }
            }
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
        tls: args.tls.options(),
    })
    .await?;
    let result = measure(target, &load, args.load.label(), args.load.quiet, settings).await?;
    write_result(&result, args.load.out.as_deref())
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
        authority: args.authority,
    })?;
    // The target has parsed the request already, so this is valid JSON.
    settings.request = serde_json::from_str(&request).ok();
    let result = measure(target, &load, args.load.label(), args.load.quiet, settings).await?;
    write_result(&result, args.load.out.as_deref())
}

async fn scenario(args: ScenarioArgs) -> anyhow::Result<()> {
    let mut scenario = Scenario::load(&args.file)?;
    for assignment in &args.vars {
        let (name, value) = assignment
            .split_once('=')
            .with_context(|| format!("--var {assignment}: expected name=value"))?;
        scenario.set_var(name.trim(), value)?;
    }
    let file = &scenario.load;
    let mode = match (args.peak, args.rate.or(file.rate)) {
        (true, _) => Mode::Peak,
        (false, Some(rate)) => Mode::Rate(rate),
        (false, None) => anyhow::bail!(
            "{}: no rate: give --rate or --peak, or set load.rate in the file",
            args.file.display()
        ),
    };
    let connections = args.connections.or(file.connections).unwrap_or(8);
    let streams = args.streams.or(file.streams).unwrap_or(1);
    let load = Load {
        mode,
        duration: args
            .duration
            .or(file.duration)
            .unwrap_or(Duration::from_secs(30)),
        connections,
        streams,
        timeout: args
            .timeout
            .or(file.timeout)
            .unwrap_or(Duration::from_secs(5)),
    };
    let h2 = args.h2 || file.h2.unwrap_or(false);
    load.validate(h2)?;
    let users = args.users.or(file.users).unwrap_or(load.workers());
    if users < load.workers() {
        anyhow::bail!(
            "{users} users cannot keep {} steps in flight ({connections} connections × {streams} streams):              give at least that many --users",
            load.workers()
        );
    }
    let (origin, _) = Origin::new(&args.url, h2, &args.tls.options()).await?;
    let protocol = if h2 { Protocol::H2 } else { Protocol::Http1 };
    let mut settings = Settings::new(protocol, &args.url, &load);
    if !args.quiet {
        let (setup, per_user) = scenario.setup_size();
        eprintln!(
            "{}: setting up ({setup} request(s), then {per_user} per user for {users} users)",
            scenario.name
        );
    }
    let weights = scenario.step_weights();
    let (name, seed) = (scenario.name.clone(), args.seed);
    let target = ScenarioTarget::prepare(origin, scenario, users, connections, seed).await?;
    settings.scenario = Some(ScenarioSettings {
        name,
        file: args.file.display().to_string(),
        users,
        seed,
        setup_s: (target.setup_time.as_secs_f64() * 1000.0).round() / 1000.0,
    });
    let label = LoadArgs::label_of(args.label.as_deref(), args.out.as_deref());
    let mut result = measure(target, &load, label, args.quiet, settings).await?;
    if let Some(scenario) = &mut result.settings.scenario {
        // The steps' weights, in the order of `result.steps`.
        for (step, weight) in result.steps.iter_mut().zip(&weights) {
            step.weight = *weight;
        }
        scenario.users = users;
    }
    write_result(&result, args.out.as_deref())
}

fn header_names(headers: &[String]) -> anyhow::Result<Vec<String>> {
    headers
        .iter()
        .map(|line| Ok(parse_header(line)?.0.as_str().to_owned()))
        .collect()
}

/// Runs `load` against `target` and prints the summary; the result, with one entry per step
/// for a target with steps.
async fn measure<T: Target>(
    target: T,
    load: &Load,
    label: String,
    quiet: bool,
    settings: Settings,
) -> anyhow::Result<RunResult> {
    let names = target.steps();
    let started_at = SystemTime::now();
    let outcome = engine::run(Arc::new(target), load, !quiet).await?;
    let mut result = RunResult::new(label, settings, &outcome, started_at, Machine::detect());
    result.steps = StepResult::of(&names, &vec![1.0; names.len()], &outcome.total.steps);
    eprintln!("{}", summary(&result, &outcome));
    Ok(result)
}

fn write_result(result: &RunResult, out: Option<&Path>) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(result)? + "\n";
    match out {
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
    for step in &result.steps {
        text.push_str(&format!(
            "\n  step {}: {} ({} failed); ",
            step.name,
            step.requests,
            step.requests - step.ok
        ));
        text.push_str(&line("latency", &step.latency_ms));
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
