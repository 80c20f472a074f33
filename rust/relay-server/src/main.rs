//! `iroh-pair-relay`: a self-hosted iroh relay, a thin binary over `iroh_relay::server`.
//!
//! It serves the relay protocol over plain HTTP (no TLS, no QUIC address discovery, which
//! would need TLS), binds `127.0.0.1:3340` unless told otherwise, prints one JSON line on
//! stdout once it listens, and shuts down gracefully on SIGTERM or SIGINT.
//!
//! ```text
//! iroh-pair-relay [--config relay.toml] [--http-bind 127.0.0.1:0] [--metrics-bind ADDR]
//! ```
//!
//! The config file (TOML, every key optional):
//!
//! ```toml
//! http_bind_addr = "127.0.0.1:3340"   # port 0 = any free port
//! metrics_bind_addr = "127.0.0.1:9090" # metrics off unless set
//! ```
//!
//! The ready line: `{"event":"ready","http_addr":"127.0.0.1:PORT","relay_url":"http://127.0.0.1:PORT/",
//! "quic_addr":null,"metrics_addr":null,"pid":N}`. Logs go to stderr (`RUST_LOG`, default `info`).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use iroh_relay::server::{RelayConfig, Server, ServerConfig};
use serde::Deserialize;
use tokio::signal::unix::{SignalKind, signal};

const DEFAULT_HTTP_BIND: &str = "127.0.0.1:3340";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    http_bind_addr: Option<SocketAddr>,
    metrics_bind_addr: Option<SocketAddr>,
}

struct Args {
    config: Option<PathBuf>,
    http_bind: Option<SocketAddr>,
    metrics_bind: Option<SocketAddr>,
}

const USAGE: &str = "usage: iroh-pair-relay [--config FILE.toml] [--http-bind IP:PORT] [--metrics-bind IP:PORT]";

fn parse_args() -> Result<Args> {
    let mut args = Args { config: None, http_bind: None, metrics_bind: None };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().with_context(|| format!("{name} needs a value\n{USAGE}"));
        match a.as_str() {
            "-c" | "--config" => args.config = Some(PathBuf::from(value("--config")?)),
            "--http-bind" => args.http_bind = Some(value("--http-bind")?.parse().context("bad --http-bind")?),
            "--metrics-bind" => {
                args.metrics_bind = Some(value("--metrics-bind")?.parse().context("bad --metrics-bind")?)
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = parse_args()?;
    let file: FileConfig = match &args.config {
        Some(p) => {
            let s = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            toml::from_str(&s).with_context(|| format!("parsing {}", p.display()))?
        }
        None => FileConfig::default(),
    };
    let http_bind = args
        .http_bind
        .or(file.http_bind_addr)
        .unwrap_or_else(|| DEFAULT_HTTP_BIND.parse().expect("valid default"));
    let metrics_bind = args.metrics_bind.or(file.metrics_bind_addr);

    // Install the signal handlers before binding, so a SIGTERM right after the ready line is
    // never lost.
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;

    let mut config = ServerConfig::default();
    config.relay = Some(RelayConfig::new(http_bind));
    config.quic = None; // QUIC address discovery needs TLS; this relay is plain HTTP.
    config.metrics_addr = metrics_bind;
    let mut server = Server::spawn(config)
        .await
        .with_context(|| format!("starting the relay on {http_bind}"))?;
    let http_addr = server.http_addr().context("relay has no HTTP address")?;
    let ready = serde_json::json!({
        "event": "ready",
        "http_addr": http_addr.to_string(),
        "relay_url": format!("http://{http_addr}/"),
        "quic_addr": server.quic_addr().map(|a| a.to_string()),
        "metrics_addr": metrics_bind.map(|a| a.to_string()),
        "pid": std::process::id(),
    });
    println!("{ready}");

    let why = tokio::select! {
        _ = sigterm.recv() => "SIGTERM",
        _ = sigint.recv() => "SIGINT",
        res = server.join() => {
            bail!("relay server stopped on its own: {res:?}");
        }
    };
    eprintln!("iroh-pair-relay: {why}, shutting down");
    server.shutdown().await.context("relay shutdown")?;
    eprintln!("iroh-pair-relay: stopped");
    Ok(())
}
