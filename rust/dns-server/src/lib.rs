//! `iroh-pair-dns`: self-hosted address lookup for iroh-pair, a thin binary over the
//! `iroh-dns-server` library (a pkarr relay over HTTP plus a DNS server answering for the
//! published records).
//!
//! ```text
//! iroh-pair-dns --config dns.toml [--data-dir DIR]
//! ```
//!
//! The config file is iroh-dns-server's own TOML format (see docs/SELF_HOSTING.md), with these
//! differences, all towards a private, loopback-only server:
//!
//! * a listener without `bind_addr` binds `127.0.0.1` (upstream: `::`, every interface);
//! * `dns.port = 0` picks a free port that is free for both UDP and TCP;
//! * no `[metrics]` section means metrics off (upstream: on, at 127.0.0.1:9117);
//! * no `[mainline]` section means the public DHT is never used (as upstream);
//! * `"."` is appended to `dns.origins` if missing (upstream needs it for its SOA record).
//!
//! Once both listeners are bound it prints one JSON line on stdout:
//! `{"event":"ready","http_addr":"127.0.0.1:P","pkarr_url":"http://127.0.0.1:P/pkarr",
//! "https_addr":null,"dns_addr":"127.0.0.1:Q","origins":["irohpair.test."],"pid":N}`, and shuts
//! down gracefully on SIGTERM or SIGINT. Logs go to stderr (`RUST_LOG`, default `info`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use iroh_dns_server::Server;
use iroh_dns_server::config::{Config, MetricsConfig};
use tokio::signal::unix::{SignalKind, signal};

const USAGE: &str = "usage: iroh-pair-dns --config FILE.toml [--data-dir DIR]";

struct Args {
    config: Option<PathBuf>,
    data_dir: Option<PathBuf>,
}

fn parse_args(argv: Vec<String>) -> Result<Args> {
    let mut args = Args {
        config: None,
        data_dir: None,
    };
    let mut it = argv.into_iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .with_context(|| format!("{name} needs a value\n{USAGE}"))
        };
        match a.as_str() {
            "-c" | "--config" => args.config = Some(PathBuf::from(value("--config")?)),
            "--data-dir" => args.data_dir = Some(PathBuf::from(value("--data-dir")?)),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    Ok(args)
}

/// A port on `ip` that is free for both UDP and TCP right now (the DNS server binds both on
/// one port, and binding port 0 twice would give two different ports).
fn free_udp_tcp_port(ip: IpAddr) -> Result<u16> {
    for _ in 0..64 {
        let udp = std::net::UdpSocket::bind(SocketAddr::new(ip, 0))?;
        let port = udp.local_addr()?.port();
        if std::net::TcpListener::bind(SocketAddr::new(ip, port)).is_ok() {
            return Ok(port);
        }
    }
    Err(anyhow!("no port free for both UDP and TCP on {ip}"))
}

/// Runs the server with `argv` (the arguments after the program name) until SIGINT/SIGTERM.
pub async fn run(argv: Vec<String>) -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    // Same as upstream's main: pick ring explicitly so rustls never has to guess.
    let _ = rustls::crypto::ring::default_provider().install_default();

    let args = parse_args(argv)?;
    let path = args
        .config
        .with_context(|| format!("--config is required\n{USAGE}"))?;
    let mut config = Config::load(&path)
        .await
        .map_err(|e| anyhow!("loading {}: {e:?}", path.display()))?;
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    if let Some(d) = args.data_dir {
        config.data_dir = Some(d);
    }
    if config.data_dir.is_none() {
        bail!("set data_dir in {} or pass --data-dir", path.display());
    }
    if let Some(http) = config.http.as_mut() {
        http.bind_addr.get_or_insert(loopback);
    }
    if let Some(https) = config.https.as_mut() {
        https.bind_addr.get_or_insert(loopback);
    }
    let dns_ip = *config.dns.bind_addr.get_or_insert(loopback);
    if config.dns.port == 0 {
        config.dns.port = free_udp_tcp_port(dns_ip)?;
    }
    if config.metrics.is_none() {
        config.metrics = Some(MetricsConfig::disabled());
    }
    let mainline = config.mainline.as_ref().is_some_and(|m| m.enabled);
    if mainline {
        eprintln!(
            "iroh-pair-dns: WARNING: [mainline] enabled: unknown keys are looked up on the public DHT"
        );
    }
    // iroh-dns-server keeps its static records (SOA, NS, A) in a zone rooted at "."; without
    // "." among the origins it fails with "SOA record must be present: .".
    if !config.dns.origins.iter().any(|o| o == ".") {
        config.dns.origins.push(".".to_string());
    }
    let origins = config.dns.origins.clone();

    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;

    let server = Server::bind(config)
        .await
        .map_err(|e| anyhow!("starting the DNS server: {e:?}"))?;
    let http_addr = server.http_addr();
    let ready = serde_json::json!({
        "event": "ready",
        "http_addr": http_addr.map(|a| a.to_string()),
        "pkarr_url": http_addr.map(|a| format!("http://{a}/pkarr")),
        "https_addr": server.https_addr().map(|a| a.to_string()),
        "dns_addr": server.dns_addr().to_string(),
        "origins": origins,
        "mainline": mainline,
        "pid": std::process::id(),
    });
    println!("{ready}");

    let why = tokio::select! {
        _ = sigterm.recv() => "SIGTERM",
        _ = sigint.recv() => "SIGINT",
    };
    eprintln!("iroh-pair-dns: {why}, shutting down");
    server
        .shutdown()
        .await
        .map_err(|e| anyhow!("DNS server shutdown: {e:?}"))?;
    eprintln!("iroh-pair-dns: stopped");
    Ok(())
}
