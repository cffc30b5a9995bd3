//! `shopmesh`: the platform's command line. `shopmesh up` runs every service in one process on
//! embedded defaults (SQLite storage, the embedded event log, static loopback discovery); the
//! other commands are operator tools that act on a service's store directly.

#![forbid(unsafe_code)]

mod ca;
mod cluster;
mod import;
mod registry;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use shopmesh_host::{Hosted, Mode};
use shopmesh_kit::ConfigArgs;

/// Like every hosting binary (see `shopmesh_host::main!`), `shopmesh` allocates through
/// mimalloc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Account administration.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Token-signing key administration.
    #[command(subcommand)]
    Auth(AuthCommand),
    /// Event bus administration.
    #[command(subcommand)]
    Events(EventsCommand),
    /// Catalog administration.
    #[command(subcommand)]
    Catalog(CatalogCommand),
    /// The mesh CA and service identities.
    #[command(subcommand)]
    Ca(ca::CaCommand),
    /// The distributed mode on this machine: etcd, nodes on loopback addresses with a mesh
    /// sidecar each, every service a process of its own binary, and the edge.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Add generated products (and their categories) to the catalog, for benchmarks. Products
    /// that exist already are skipped, so a repeated run adds nothing.
    Seed {
        /// How many products.
        #[arg(long, value_name = "N")]
        products: u64,
        /// Another seed gives another catalog.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Create an account with a random password, printed once (e.g. the first administrator
    /// of a distributed deployment).
    CreateUser {
        #[arg(long)]
        email: String,
        /// A role to grant; repeat for several.
        #[arg(long = "role", value_name = "ROLE", default_value = "customer")]
        roles: Vec<String>,
        /// The name shown for the account; by default the e-mail address's local part.
        #[arg(long)]
        display_name: Option<String>,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Debug, Subcommand)]
enum CatalogCommand {
    /// Add the products of a JSON Lines file, one product per line in the shape of the
    /// public API's CreateProduct request (the JSON body of `POST /v1/products`), through the
    /// same checks and writes as the API. Lines that fail are reported with their number and
    /// reason and the rest is imported; the exit status is non-zero if any line was rejected.
    Import {
        /// The file, e.g. products.jsonl; `-` reads standard input.
        #[arg(value_name = "FILE.jsonl")]
        file: PathBuf,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Start the cluster and run it until Ctrl-C.
    Up(cluster::ClusterArgs),
}

#[derive(Debug, Subcommand)]
enum AuthCommand {
    /// Add a new signing key. It is published at once and signs after the activation delay;
    /// the previous key stays published until its last token has expired.
    RotateKeys {
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Debug, Subcommand)]
enum EventsCommand {
    /// List the events a subscription gave up on (its dead-letter topic `<topic>.<sub>.dlq`),
    /// or send them back to their topic with `--replay` once the cause is fixed.
    DeadLetters {
        /// The topic the events were published to, e.g. `shopmesh.orders`.
        #[arg(long)]
        topic: String,
        /// The subscription that failed them, e.g. `payments`.
        #[arg(long)]
        subscription: String,
        /// Publish each back to the topic and remove it from the dead-letter topic.
        #[arg(long)]
        replay: bool,
        /// At most this many events.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[command(flatten)]
        target: Target,
    },
}

/// Which deployment a tool acts on.
#[derive(Debug, Args)]
struct Target {
    /// The data directory of a `shopmesh up` platform; without it, the distributed deployment
    /// that the configuration describes.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,

    #[command(flatten)]
    config: ConfigArgs,
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Up {
            data_dir,
            mut config,
        } => {
            with_data_dir(&mut config, &data_dir);
            shopmesh_host::launch(&config, registry::SERVICES, Mode::Embedded)
        }
        Command::Admin(AdminCommand::CreateUser {
            email,
            roles,
            display_name,
            target,
        }) => tool(target, &shopmesh_users::Users, |context| async move {
            let known: Vec<String> = shopmesh_auth::roles::table()
                .into_iter()
                .map(|role| role.name)
                .collect();
            if let Some(unknown) = roles.iter().find(|role| !known.contains(role)) {
                anyhow::bail!("no role named `{unknown}`; roles are {}", known.join(", "));
            }
            let display_name = display_name
                .unwrap_or_else(|| email.split('@').next().unwrap_or_default().to_owned());
            let (user, password) =
                shopmesh_users::create_user(&context, &email, &display_name, roles).await?;
            context.finish().await;
            println!(
                "created {} ({}) with roles {}",
                user.email,
                user.id,
                user.roles.join(", ")
            );
            println!("password: {password}");
            println!("It is shown only this once; change it after the first login.");
            Ok(())
        }),
        Command::Seed {
            products,
            seed,
            target,
        } => tool(target, &shopmesh_catalog::Catalog, |context| async move {
            let started = std::time::Instant::now();
            let mut shown = 0;
            let added = shopmesh_catalog::seed_generated(&context, products, seed, |done| {
                // A progress line per percent (at most a hundred lines).
                let percent = done * 100 / products.max(1);
                if percent > shown || done == products {
                    shown = percent;
                    eprint!("\r  {done}/{products} products ({percent} %)");
                }
            })
            .await?;
            eprintln!();
            context.finish().await;
            println!(
                "added {added} of {products} products in {:.1} s",
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }),
        Command::Events(EventsCommand::DeadLetters {
            topic,
            subscription,
            replay,
            limit,
            target,
        }) => tool(target, &shopmesh_orders::Orders, |context| async move {
            use shopmesh_events::dead_letters::{self, Action};
            let action = if replay {
                Action::Replay
            } else {
                Action::Inspect
            };
            let events = dead_letters::handle(
                &context.runtime.events,
                &topic,
                &subscription,
                action,
                limit,
                std::time::Duration::from_secs(2),
            )
            .await?;
            context.finish().await;
            for event in &events {
                println!(
                    "{}  key {}  {}  {} bytes  at {}",
                    event.id,
                    event.key,
                    event.kind,
                    event.payload.len(),
                    event.occurred_at_ms
                );
            }
            let verb = if replay { "replayed" } else { "waiting" };
            println!(
                "{} dead letters {verb} for {topic} / {subscription}",
                events.len()
            );
            Ok(())
        }),
        Command::Cluster(ClusterCommand::Up(args)) => match cluster::up(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("error: {error:#}");
                ExitCode::FAILURE
            }
        },
        Command::Ca(command) => match ca::run(command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("error: {error:#}");
                ExitCode::FAILURE
            }
        },
        Command::Catalog(CatalogCommand::Import { file, target }) => {
            tool(target, &shopmesh_catalog::Catalog, |context| async move {
                catalog_import(context, &file).await
            })
        }
        Command::Auth(AuthCommand::RotateKeys { target }) => {
            tool(target, &shopmesh_auth::Auth, |context| async move {
                let kid = shopmesh_auth::rotate_keys(&context).await?;
                context.finish().await;
                println!("new signing key {kid}; it signs once the activation delay has passed");
                Ok(())
            })
        }
    }
}

/// `shopmesh catalog import`: reads the file, creates each product, reports progress on
/// standard error (at most twice a second) and each rejected line.
async fn catalog_import(context: shopmesh_host::ServiceContext, file: &Path) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let reader: Box<dyn std::io::BufRead> = if file == Path::new("-") {
        Box::new(std::io::stdin().lock())
    } else {
        let opened =
            std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
        Box::new(std::io::BufReader::with_capacity(256 * 1024, opened))
    };
    let config: shopmesh_catalog::CatalogConfig = context.config()?;
    let handler = shopmesh_catalog::open(&context, &config, shopmesh_catalog::Follow::No).await?;
    let started = std::time::Instant::now();
    let mut shown = started;
    let summary = import::import(
        reader,
        import::MAX_LINE_BYTES,
        |product| {
            let handler = handler.clone();
            async move {
                handler.create(product).await.map(drop).map_err(|error| {
                    // Name the fields a check refused, as the API's BadRequest details do.
                    let fields: Vec<String> = error
                        .violations()
                        .iter()
                        .map(|v| format!("{}: {}", v.field, v.description))
                        .collect();
                    if fields.is_empty() {
                        error.to_string()
                    } else {
                        format!("{} ({})", fields.join("; "), error.reason())
                    }
                })
            }
        },
        |rejection| eprintln!("\rline {}: {}\x1b[K", rejection.line, rejection.reason),
        |summary| {
            if shown.elapsed() >= std::time::Duration::from_millis(500) {
                shown = std::time::Instant::now();
                eprint!(
                    "\r  {} lines: {} added, {} rejected\x1b[K",
                    summary.lines, summary.added, summary.rejected
                );
            }
        },
    )
    .await
    .with_context(|| format!("reading {}", file.display()))?;
    eprint!("\r\x1b[K");
    context.finish().await;
    println!(
        "imported {} of {} products from {} in {:.1} s; {} line(s) rejected",
        summary.added,
        summary.products,
        file.display(),
        started.elapsed().as_secs_f64(),
        summary.rejected
    );
    if summary.rejected > 0 {
        anyhow::bail!("{} line(s) rejected (listed above)", summary.rejected);
    }
    Ok(())
}

/// Runs a tool against one service's store and prints its error, if any.
fn tool<F, Fut>(target: Target, service: &'static dyn Hosted, run: F) -> ExitCode
where
    F: FnOnce(shopmesh_host::ServiceContext) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let Target {
        data_dir,
        mut config,
    } = target;
    let mode = match &data_dir {
        Some(dir) => {
            with_data_dir(&mut config, dir);
            Mode::Embedded
        }
        None => Mode::Distributed,
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let context = shopmesh_host::tool_context(&config, service, mode).await?;
        run(context).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Sets `data_dir` as the lowest-precedence override: `--set data_dir=...` still wins.
fn with_data_dir(config: &mut ConfigArgs, dir: &Path) {
    config
        .overrides
        .insert(0, format!("data_dir={}", toml_string(dir)));
}

/// A path as a TOML string literal (quoted and escaped).
fn toml_string(path: &Path) -> String {
    let text = path.to_string_lossy();
    let escaped = text.replace('\\', "\\\\").replace('"', "\\\"");
    format!("\"{escaped}\"")
}
