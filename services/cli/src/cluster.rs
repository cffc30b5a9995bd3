//! `shopmesh cluster up`: the distributed mode on one machine. etcd, then per node (a loopback
//! address of its own, 127.0.0.2 and up) a mesh sidecar and service replicas, each a process of
//! its own binary, then the edge. Every call between services crosses the mesh.
//!
//! The topology comes from the registry's manifests: where each service runs, its port, the
//! mesh allow-list (who calls whom) and the secrets each process is given.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;
use shopmesh_host::{Manifest, Protocol, Replicas, SecretForm};
use shopmesh_kit::{ConfigArgs, Shutdown};
use shopmesh_mesh::identity::{self, SpiffeId};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::registry;

/// The mesh environment of a local cluster.
const ENV: &str = "local";
const SIDECAR_INBOUND: u16 = 15443;
const SIDECAR_ADMIN: u16 = 15090;
/// Outbound listeners of the sidecar, one per local service: this plus the service's index.
const OUTBOUND_BASE: u16 = 15001;
/// Admin port of a service process: this plus the service's index.
const SERVICE_ADMIN_BASE: u16 = 9901;
const READY_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Args)]
pub struct ClusterArgs {
    /// Nodes to start (at least 2: catalog runs a replica on each node but the first, or on
    /// both when there are two).
    #[arg(long, default_value_t = 3)]
    nodes: u8,
    /// Where the cluster keeps its CA, etcd data, configuration, logs and service data.
    #[arg(long, value_name = "DIR", default_value = "shopmesh-cluster")]
    data_dir: PathBuf,
    /// Where the edge listens.
    #[arg(long, default_value = "127.0.0.2:8080")]
    edge_listen: SocketAddr,
    /// Settings for every service process (storage, events, ...), as for `shopmesh up`.
    #[command(flatten)]
    config: ConfigArgs,
}

/// One process of the cluster.
struct Process {
    name: String,
    log: PathBuf,
    child: Child,
    exited: bool,
}

pub fn up(args: ClusterArgs) -> anyhow::Result<()> {
    if !(2..=8).contains(&args.nodes) {
        bail!("--nodes must be between 2 and 8");
    }
    if let Some(file) = &args.config.config {
        // Every process reads the cluster's own file; a second one would replace it.
        bail!(
            "--config {} is not supported by `cluster up`; give settings with --set",
            file.display()
        );
    }
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(run(args))
}

fn node_ip(node: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        127,
        0,
        0,
        u8::try_from(node + 2).unwrap_or(255),
    ))
}

fn node_name(node: usize) -> String {
    format!("node-{}", node + 1)
}

fn manifest(service: &str) -> Manifest {
    registry::find(service)
        .map(|service| service.manifest())
        .unwrap_or_else(|| unreachable!("{service} is placed from the registry"))
}

/// Which services run on each node, in start order: a single replica on its manifest's node
/// (modulo the node count), a service on every node on all but the first (or on both of two).
fn placement(nodes: usize) -> Vec<Vec<&'static str>> {
    let mut placed = vec![Vec::new(); nodes];
    let first_of_every = if nodes > 2 { 1 } else { 0 };
    for manifest in registry::manifests() {
        match manifest.replicas {
            Replicas::One { node } => placed[node % nodes].push(manifest.name),
            Replicas::EveryNode => {
                for services in placed.iter_mut().skip(first_of_every) {
                    services.push(manifest.name);
                }
            }
        }
    }
    placed
}

async fn run(args: ClusterArgs) -> anyhow::Result<()> {
    // From the start a signal cancels the start: whatever started so far is stopped again.
    let shutdown = Shutdown::new();
    shutdown.trigger_on_signals();
    let started = Instant::now();
    let binaries = Binaries::find()?;
    let dir = absolute(&args.data_dir)?;
    std::fs::create_dir_all(dir.join("logs"))?;
    println!(
        "shopmesh cluster: {} nodes, data in {}",
        args.nodes,
        dir.display()
    );
    let nodes = usize::from(args.nodes);
    let placed = placement(nodes);

    let ca = dir.join("ca");
    if !ca.join(identity::CA_CERT).exists() {
        identity::init_ca(&ca, Duration::from_secs(365 * 86_400))?;
    }
    let configs = service_configs(&dir)?;
    ensure_free(&addresses(&placed, args.edge_listen))?;

    let mut processes: Vec<Process> = Vec::new();
    let start = async {
        let etcd_ip = node_ip(0);
        let etcd_url = format!("http://{etcd_ip}:2379");
        let mut etcd = Command::new(&binaries.etcd);
        etcd.args(["--name", "cluster", "--data-dir"])
            .arg(dir.join("etcd"))
            .args([
                "--listen-client-urls",
                &etcd_url,
                "--advertise-client-urls",
                &etcd_url,
            ])
            .args(["--listen-peer-urls", &format!("http://{etcd_ip}:2380")])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://{etcd_ip}:2380"),
            ])
            .args([
                "--initial-cluster",
                &format!("cluster=http://{etcd_ip}:2380"),
            ]);
        processes.push(spawn("etcd", etcd, &dir)?);
        wait_for_port(SocketAddr::new(etcd_ip, 2379), "etcd").await?;
        announce("etcd", &etcd_url, &processes);

        // Sidecars first: services call their peers through them from the start.
        for (node, services) in placed.iter().enumerate() {
            let config = sidecar_config(&dir, &ca, node, services, &etcd_url)?;
            let mut command = Command::new(&binaries.sidecar);
            command.arg("--config").arg(&config);
            let name = format!("{}/sidecar", node_name(node));
            processes.push(spawn(&name, command, &dir)?);
            let admin = SocketAddr::new(node_ip(node), SIDECAR_ADMIN);
            wait_for_http(admin, "/healthz", processes.last_mut()).await?;
            announce(
                &name,
                &format!(
                    "{}:{SIDECAR_INBOUND}  admin http://{admin}/endpoints",
                    node_ip(node)
                ),
                &processes,
            );
        }

        // Services in the registry's order: auth and users before those that check tokens.
        let mut order: Vec<(usize, &str)> = Vec::new();
        for service in registry::manifests().map(|manifest| manifest.name) {
            for (node, services) in placed.iter().enumerate() {
                if services.contains(&service) {
                    order.push((node, service));
                }
            }
        }
        for (node, service) in order {
            let name = format!("{}/{service}", node_name(node));
            let (command, admin, url) =
                service_command(&binaries, &configs, &args, node, service, &placed[node])?;
            processes.push(spawn(&name, command, &dir)?);
            wait_for_http(admin, "/readyz", processes.last_mut()).await?;
            announce(&name, &url, &processes);
        }
        for node in 0..nodes {
            let admin = SocketAddr::new(node_ip(node), SIDECAR_ADMIN);
            let sidecar = format!("{}/sidecar", node_name(node));
            let process = processes.iter_mut().find(|p| p.name == sidecar);
            wait_for_http(admin, "/ready", process).await?;
        }

        let admin = first_admin(&configs.join("users.toml"), &args.config).await?;
        if let Some((email, password)) = admin {
            println!("  first admin    {email}  password {password}  (shown once: keep it)");
        }
        println!("  edge           http://{}", args.edge_listen);
        println!(
            "cluster is ready in {} ms (Ctrl-C stops; logs in {})",
            started.elapsed().as_millis(),
            dir.join("logs").display()
        );
        anyhow::Ok(())
    };
    let outcome = tokio::select! {
        outcome = start => Some(outcome),
        () = shutdown.wait() => None,
    };
    let outcome = match outcome {
        Some(Ok(())) => wait_for_stop(&mut processes, &shutdown).await,
        Some(Err(error)) => Err(error),
        None => {
            println!("cluster start cancelled; stopping what had started");
            Ok(())
        }
    };
    stop(&mut processes).await;
    outcome
}

/// The addresses a cluster of this placement binds: etcd's, each node's sidecar ports, every
/// service's port and the edge's.
fn addresses(placed: &[Vec<&'static str>], edge: SocketAddr) -> Vec<SocketAddr> {
    let mut addresses = vec![
        SocketAddr::new(node_ip(0), 2379),
        SocketAddr::new(node_ip(0), 2380),
        edge,
    ];
    for (node, services) in placed.iter().enumerate() {
        let ip = node_ip(node);
        addresses.push(SocketAddr::new(ip, SIDECAR_INBOUND));
        addresses.push(SocketAddr::new(ip, SIDECAR_ADMIN));
        for (index, service) in services.iter().enumerate() {
            addresses.push(SocketAddr::new(ip, outbound_port(index)));
            addresses.push(SocketAddr::new(
                ip,
                SERVICE_ADMIN_BASE + u16::try_from(index).unwrap_or(0),
            ));
            let manifest = manifest(service);
            if manifest.protocol == Protocol::Grpc {
                addresses.push(SocketAddr::new(ip, manifest.port));
            }
        }
    }
    addresses
}

/// Refuses to start over addresses that are taken (most often by a cluster still running),
/// naming the process that holds each one when it can be found.
fn ensure_free(addresses: &[SocketAddr]) -> anyhow::Result<()> {
    let taken: Vec<String> = addresses
        .iter()
        .filter(|address| {
            std::net::TcpListener::bind(address)
                .is_err_and(|error| error.kind() == std::io::ErrorKind::AddrInUse)
        })
        .map(|address| match holder(*address) {
            Some(holder) => format!("{address} (held by {holder})"),
            None => address.to_string(),
        })
        .collect();
    if taken.is_empty() {
        return Ok(());
    }
    bail!(
        "the cluster's addresses are in use, is another cluster running? {}",
        taken.join(", ")
    )
}

/// `pid N (command)` of the process listening on `address`, read from /proc.
fn holder(address: SocketAddr) -> Option<String> {
    let IpAddr::V4(ip) = address.ip() else {
        return None;
    };
    // /proc/net/tcp: local address as little-endian hex `AABBCCDD:PPPP`, state 0A = LISTEN.
    let wanted = format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(ip.octets()),
        address.port()
    );
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let inode = table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.get(1) == Some(&wanted.as_str()) && fields.get(3) == Some(&"0A"))
            .then(|| fields.get(9).map(|inode| format!("socket:[{inode}]")))
            .flatten()
    })?;
    for process in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = process.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(process.path().join("fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|target| target.to_string_lossy() == inode)
        });
        if holds {
            let command = std::fs::read_to_string(process.path().join("comm")).unwrap_or_default();
            return Some(format!("pid {pid}, {}", command.trim()));
        }
    }
    None
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(path).with_context(|| format!("cannot create {}", path.display()))?;
    Ok(path.canonicalize()?)
}

/// The binaries of the distributed mode, next to this one, and etcd on the PATH.
struct Binaries {
    dir: PathBuf,
    sidecar: PathBuf,
    etcd: PathBuf,
}

impl Binaries {
    fn find() -> anyhow::Result<Self> {
        let exe = std::env::current_exe()?;
        let dir = exe
            .parent()
            .context("no directory of this binary")?
            .to_owned();
        let binaries = Self {
            sidecar: dir.join("shopmesh-sidecar"),
            etcd: which("etcd").context(
                "etcd is not on the PATH: install it (Debian: `apt-get install etcd-server`)",
            )?,
            dir,
        };
        let names = std::iter::once("sidecar").chain(registry::manifests().map(|m| m.name));
        for service in names {
            let path = binaries.service(service);
            if !path.is_file() {
                bail!(
                    "{} is missing: build every binary first (`cargo build --workspace --bins`)",
                    path.display()
                );
            }
        }
        Ok(binaries)
    }

    fn service(&self, service: &str) -> PathBuf {
        self.dir.join(format!("shopmesh-{service}"))
    }
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|path| path.is_file())
}

/// Each service process's own configuration file: the shared data directory, the secrets its
/// manifest names (generated once and kept, readable by the owner only, so a restart keeps the
/// data readable and no secret shows in a process list) and its local settings.
fn service_configs(dir: &Path) -> anyhow::Result<PathBuf> {
    let configs = dir.join("config");
    std::fs::create_dir_all(&configs)?;
    for manifest in registry::manifests() {
        let path = configs.join(format!("{}.toml", manifest.name));
        if path.exists() {
            continue;
        }
        let mut text = String::new();
        writeln!(
            text,
            "# Written by `shopmesh cluster up`; may hold secrets."
        )?;
        writeln!(
            text,
            "data_dir = {:?}",
            dir.join("data").display().to_string()
        )?;
        if !manifest.secrets.is_empty() || !manifest.local_settings.is_empty() {
            writeln!(text, "\n[services.{}]", manifest.name)?;
        }
        for secret in manifest.secrets {
            let key = shopmesh_kit::crypto::MasterKey::generate().to_secret();
            let value = match secret.form {
                SecretForm::MasterKey => format!("{:?}", key.expose()),
                SecretForm::PrefixedList(prefix) => format!("[\"{prefix}{}\"]", key.expose()),
            };
            writeln!(text, "{} = {value}", secret.setting)?;
        }
        for setting in manifest.local_settings {
            writeln!(text, "{setting}")?;
        }
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut file| file.write_all(text.as_bytes()))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(configs)
}

/// The mesh allow-list: each gRPC service and the services that call it.
fn allow_list() -> Vec<(&'static str, Vec<&'static str>)> {
    let manifests: Vec<Manifest> = registry::manifests().collect();
    manifests
        .iter()
        .filter(|target| target.protocol == Protocol::Grpc)
        .map(|target| {
            let callers = manifests
                .iter()
                .filter(|caller| caller.calls(target))
                .map(|caller| caller.name)
                .collect();
            (target.name, callers)
        })
        .collect()
}

/// Writes node `node`'s sidecar configuration, issuing a fresh certificate per local service.
fn sidecar_config(
    dir: &Path,
    ca: &Path,
    node: usize,
    services: &[&str],
    etcd_url: &str,
) -> anyhow::Result<PathBuf> {
    let node_dir = dir.join(node_name(node));
    let ip = node_ip(node);
    let mut text = String::new();
    writeln!(text, "env = \"{ENV}\"\nnode = \"{}\"", node_name(node))?;
    writeln!(
        text,
        "ca = {:?}",
        ca.join(identity::CA_CERT).display().to_string()
    )?;
    writeln!(text, "admin = \"{ip}:{SIDECAR_ADMIN}\"")?;
    writeln!(text, "health_interval = \"250ms\"")?;
    writeln!(text, "\n[log]\nformat = \"json\"")?;
    writeln!(text, "\n[inbound]\nlisten = \"{ip}:{SIDECAR_INBOUND}\"")?;
    writeln!(
        text,
        "\n[discovery]\nsource = \"etcd\"\nendpoints = [\"{etcd_url}\"]\nlease_ttl = \"10s\""
    )?;
    writeln!(text, "\n[allow]")?;
    for (target, callers) in allow_list() {
        writeln!(text, "{target} = {callers:?}")?;
    }
    for (index, service) in services.iter().enumerate() {
        let id = SpiffeId::new(ENV, service)?;
        let issued = identity::issue(
            ca,
            &id,
            Some(&node_name(node)),
            Duration::from_secs(86_400),
            &node_dir,
        )?;
        writeln!(text, "\n[services.{service}]")?;
        let manifest = manifest(service);
        if manifest.protocol == Protocol::Grpc {
            writeln!(text, "address = \"{ip}:{}\"", manifest.port)?;
        }
        writeln!(text, "outbound = \"{ip}:{}\"", outbound_port(index))?;
        writeln!(text, "cert = {:?}", issued.cert.display().to_string())?;
        writeln!(text, "key = {:?}", issued.key.display().to_string())?;
    }
    let path = node_dir.join("sidecar.toml");
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

fn outbound_port(index: usize) -> u16 {
    OUTBOUND_BASE + u16::try_from(index).unwrap_or(0)
}

/// The command of one service process, its admin address and the URL to show.
fn service_command(
    binaries: &Binaries,
    configs: &Path,
    args: &ClusterArgs,
    node: usize,
    service: &str,
    local: &[&str],
) -> anyhow::Result<(Command, SocketAddr, String)> {
    let ip = node_ip(node);
    let index = local.iter().position(|s| *s == service).unwrap_or(0);
    let admin = SocketAddr::new(ip, SERVICE_ADMIN_BASE + u16::try_from(index).unwrap_or(0));
    let mut command = Command::new(binaries.service(service));
    command
        .arg("--config")
        .arg(configs.join(format!("{service}.toml")));
    let mut settings = vec![
        format!("admin.listen=\"{admin}\""),
        format!("mesh=\"http://{ip}:{}\"", outbound_port(index)),
        "log.format=\"json\"".to_owned(),
    ];
    let manifest = manifest(service);
    let url = if manifest.protocol == Protocol::Own {
        settings.push(format!(
            "services.{service}.listen=\"{}\"",
            args.edge_listen
        ));
        format!("http://{}", args.edge_listen)
    } else {
        let address = SocketAddr::new(ip, manifest.port);
        settings.push(format!("listen.{service}=\"{address}\""));
        if manifest.replicas == Replicas::EveryNode {
            settings.push(format!(
                "services.{service}.replica=\"{}\"",
                node_name(node)
            ));
        }
        format!("grpc://{address}")
    };
    // The caller's own settings come last and win.
    // A service's own section goes to its processes only: the others would refuse it.
    let own = format!("services.{service}.");
    settings.extend(
        args.config
            .overrides
            .iter()
            .filter(|setting| !setting.starts_with("services.") || setting.starts_with(&own))
            .cloned(),
    );
    for setting in settings {
        command.arg("--set").arg(setting);
    }
    Ok((command, admin, url))
}

fn spawn(name: &str, mut command: Command, dir: &Path) -> anyhow::Result<Process> {
    let log = dir
        .join("logs")
        .join(format!("{}.log", name.replace('/', "-")));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .with_context(|| format!("cannot open {}", log.display()))?;
    let child = command
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {name}"))?;
    Ok(Process {
        name: name.to_owned(),
        log,
        child,
        exited: false,
    })
}

fn announce(name: &str, url: &str, processes: &[Process]) {
    let pid = processes
        .last()
        .and_then(|process| process.child.id())
        .unwrap_or_default();
    println!("  {name:<18} {url}  pid {pid}");
}

async fn wait_for_port(address: SocketAddr, name: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    while TcpStream::connect(address).await.is_err() {
        if Instant::now() > deadline {
            bail!("{name} did not listen on {address}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Waits until `GET path` on `address` answers 200, failing at once if `process` exits.
async fn wait_for_http(
    address: SocketAddr,
    path: &str,
    process: Option<&mut Process>,
) -> anyhow::Result<()> {
    let Some(process) = process else {
        bail!("no process serves http://{address}{path}");
    };
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if http_status(address, path).await == Some(200) {
            return Ok(());
        }
        if let Ok(Some(status)) = process.child.try_wait() {
            process.exited = true;
            bail!(
                "{} exited ({status}) while starting; the end of its log:\n{}",
                process.name,
                log_tail(&process.log)
            );
        }
        if Instant::now() > deadline {
            bail!(
                "{} was not ready within {READY_TIMEOUT:?} (http://{address}{path}); see its log",
                process.name
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The last lines of a log file, to show why a process stopped.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}

async fn http_status(address: SocketAddr, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(address).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).await.ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

async fn first_admin(
    users_config: &Path,
    config: &ConfigArgs,
) -> anyhow::Result<Option<(String, String)>> {
    let mut args = config.clone();
    args.config = Some(users_config.to_owned());
    let context = shopmesh_host::tool_context(
        &args,
        &shopmesh_users::Users,
        shopmesh_host::Mode::Distributed,
    )
    .await?;
    let admin = shopmesh_users::create_first_admin(&context).await;
    context.finish().await;
    admin
}

/// Runs until Ctrl-C (or SIGTERM), or until a process of the cluster exits on its own.
async fn wait_for_stop(processes: &mut [Process], shutdown: &Shutdown) -> anyhow::Result<()> {
    loop {
        tokio::select! {
            () = shutdown.wait() => return Ok(()),
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        for process in processes.iter_mut().filter(|process| !process.exited) {
            if let Ok(Some(status)) = process.child.try_wait() {
                eprintln!(
                    "  {} exited ({status}); the cluster runs on without it",
                    process.name
                );
                process.exited = true;
            }
        }
    }
}

/// Stops every process, the last started first: SIGTERM, then SIGKILL after the drain time.
async fn stop(processes: &mut Vec<Process>) {
    for process in processes.iter().rev() {
        if let Some(pid) = process.child.id() {
            // kill(1): this crate forbids the unsafe code a direct kill(2) would need.
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status();
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for process in processes.iter_mut().rev() {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if tokio::time::timeout(left, process.child.wait())
            .await
            .is_err()
        {
            let _ = process.child.kill().await;
        }
    }
    processes.clear();
    println!("cluster stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_runs_on_two_nodes_at_least_and_everything_is_placed() {
        for nodes in 2..=5 {
            let placed = placement(nodes);
            let catalogs = placed.iter().filter(|s| s.contains(&"catalog")).count();
            assert!(catalogs >= 2, "{nodes}: {placed:?}");
            for service in ["edge", "auth", "users", "orders", "payments"] {
                assert_eq!(
                    placed.iter().filter(|s| s.contains(&service)).count(),
                    1,
                    "{service} on {nodes} nodes"
                );
            }
        }
    }

    #[test]
    fn the_allow_list_follows_the_manifests() {
        let allow: std::collections::BTreeMap<_, _> = allow_list().into_iter().collect();
        let grpc: Vec<&str> = registry::manifests()
            .filter(|m| m.protocol == Protocol::Grpc)
            .map(|m| m.name)
            .collect();
        // Every service checks tokens with auth's keys; the edge calls every service.
        let mut everyone_but_auth: Vec<&str> =
            grpc.iter().copied().filter(|s| *s != "auth").collect();
        everyone_but_auth.push("edge");
        assert_eq!(allow["auth"], everyone_but_auth);
        for target in &grpc {
            assert!(
                allow[target].contains(&"edge"),
                "{target}: {:?}",
                allow[target]
            );
        }
        // What the services' manifests declare, and nothing more.
        assert_eq!(allow["users"], ["auth", "edge"]);
        assert_eq!(allow["catalog"], ["orders", "edge"]);
        assert_eq!(allow["orders"], ["edge"]);
        assert_eq!(allow["payments"], ["edge"]);
        assert!(
            !allow.contains_key("edge"),
            "nobody calls the edge through the mesh"
        );
    }
}
