//! Pingora with nothing of the edge's: every request goes to one HTTP/1.1 upstream, on the same
//! runtime, allocator and embedding as `shopmesh-edge`. `scripts/bench-edge --http1` runs it
//! beside the edge to separate what the engine costs from what the edge adds.
//!
//! Usage: bare-pingora LISTEN UPSTREAM   (e.g. 127.0.0.1:8090 127.0.0.1:8000)

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use pingora::proxy::{ProxyHttp, Session};
use pingora::services::Service as _;
use pingora::upstreams::peer::HttpPeer;

// The platform's allocator (mimalloc) comes with the host crate, as in every shopmesh binary.
use shopmesh_host as _;

struct Bare {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut (),
    ) -> pingora::Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: bare-pingora LISTEN UPSTREAM");
    };
    let upstream: SocketAddr = upstream.parse()?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let conf = Arc::new(pingora::server::configuration::ServerConf::default());
        let mut service = pingora::services::listening::Service::new(
            "bare pingora".to_owned(),
            pingora::proxy::http_proxy(&conf, Bare { upstream }),
        );
        service.add_tcp(&listen);
        // Runs until the process is killed.
        let (_stop, stopped) = tokio::sync::watch::channel(false);
        service.start_service(None, stopped, 1).await;
    });
    Ok(())
}
