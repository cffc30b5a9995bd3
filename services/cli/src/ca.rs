//! `shopmesh ca`: the mesh CA and the certificates that carry service identities.

use std::path::PathBuf;
use std::time::Duration;

use clap::Subcommand;
use shopmesh_mesh::identity::{self, SpiffeId};

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create the mesh CA (`ca.pem` and `ca-key.pem`, the key readable by its owner only).
    Init {
        /// Where the CA is kept.
        #[arg(long, value_name = "DIR", default_value = "mesh-ca")]
        dir: PathBuf,
        /// How long the CA is valid.
        #[arg(long, default_value = "3650days", value_parser = humantime::parse_duration)]
        lifetime: Duration,
    },
    /// Issue a short-lived certificate naming a service (`spiffe://shopmesh/<env>/<service>`),
    /// for its node's sidecar. Run again before it expires; sidecars pick up the new files.
    Issue {
        #[arg(long)]
        service: String,
        /// The node the certificate is for; recorded in its subject and file name.
        #[arg(long)]
        node: Option<String>,
        /// The mesh's environment, part of the identity.
        #[arg(long, default_value = "dev")]
        env: String,
        /// The CA directory.
        #[arg(long, value_name = "DIR", default_value = "mesh-ca")]
        dir: PathBuf,
        /// Where the certificate and key are written (default: the CA directory).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        lifetime: Duration,
    },
}

pub fn run(command: CaCommand) -> anyhow::Result<()> {
    match command {
        CaCommand::Init { dir, lifetime } => {
            let cert = identity::init_ca(&dir, lifetime)?;
            println!("mesh CA created: {}", cert.display());
            println!(
                "Keep {} secret: it issues every identity.",
                dir.join(identity::CA_KEY).display()
            );
        }
        CaCommand::Issue {
            service,
            node,
            env,
            dir,
            out,
            lifetime,
        } => {
            let id = SpiffeId::new(&env, &service)?;
            let out = out.unwrap_or_else(|| dir.clone());
            let issued = identity::issue(&dir, &id, node.as_deref(), lifetime, &out)?;
            println!(
                "issued {} for {}",
                issued.id,
                humantime::format_duration(lifetime)
            );
            println!("  certificate {}", issued.cert.display());
            println!("  key         {}", issued.key.display());
        }
    }
    Ok(())
}
