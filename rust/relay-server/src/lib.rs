//! `iroh-pair-relay`: a self-hosted iroh relay, a thin binary over `iroh_relay::server`.
//!
//! It serves the relay protocol over plain HTTP, binds `127.0.0.1:3340` unless told otherwise,
//! prints one JSON line on stdout once it listens, and shuts down gracefully on SIGTERM or
//! SIGINT.
//!
//! ```text
//! iroh-pair-relay [--config relay.toml] [--http-bind 127.0.0.1:0] [--metrics-bind ADDR]
//!                 [--tls-cert CERT.pem --tls-key KEY.pem [--quic-bind IP:PORT]]
//! ```
//!
//! With a certificate and key (PEM files) it also runs iroh's QUIC address discovery (QAD)
//! endpoint: a client connects over QUIC (TLS 1.3) and is told the public address it was seen
//! from, which is how an iroh endpoint behind NAT learns its mapped address (the hole-punching
//! candidate). The relay itself stays plain HTTP. iroh clients configured with a bare relay URL
//! (`http://HOST:PORT/`) look for QAD at `HOST:7842` (iroh's `DEFAULT_RELAY_QUIC_PORT`) and
//! check the certificate against `HOST` (a DNS name, or an IP address SAN), so the default
//! `--quic-bind` is the HTTP bind IP with port 7842; clients must trust the certificate's CA
//! (web PKI, or iroh-pair's `ca_certs` / `--ca-cert`). iroh-pair clients also take a relay
//! entry `http://HOST:PORT/#qad=PORT` (QAD elsewhere) or `#qad=none` (no QAD: without it a
//! client waits for its QAD probe to time out, 3 s, before it takes this relay as its home);
//! the ready line's `client_relay_url` is the entry that fits this relay's configuration.
//!
//! The config file (TOML, every key optional):
//!
//! ```toml
//! http_bind_addr = "127.0.0.1:3340"   # port 0 = any free port
//! metrics_bind_addr = "127.0.0.1:9090" # metrics off unless set
//! tls_cert_path = "relay-cert.pem"     # certificate chain (PEM), server certificate first
//! tls_key_path = "relay-key.pem"       # its private key (PEM: PKCS#8, PKCS#1 or SEC1)
//! quic_bind_addr = "127.0.0.1:7842"    # QAD endpoint; needs the two above
//! ```
//!
//! The ready line: `{"event":"ready","http_addr":"127.0.0.1:PORT","relay_url":"http://127.0.0.1:PORT/",
//! "client_relay_url":"http://127.0.0.1:PORT/#qad=none","quic_addr":null,"metrics_addr":null,"pid":N}`
//! (`quic_addr` is `"IP:PORT"` with QAD on; `client_relay_url` is then the bare URL, or
//! `...#qad=PORT` when PORT is not 7842).
//! Logs go to stderr (`RUST_LOG`, default `info`).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use std::sync::Arc;

use iroh_relay::defaults::DEFAULT_RELAY_QUIC_PORT;
use iroh_relay::server::{QuicConfig, RelayConfig, Server, ServerConfig};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use tokio::signal::unix::{SignalKind, signal};

const DEFAULT_HTTP_BIND: &str = "127.0.0.1:3340";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    http_bind_addr: Option<SocketAddr>,
    metrics_bind_addr: Option<SocketAddr>,
    tls_cert_path: Option<PathBuf>,
    tls_key_path: Option<PathBuf>,
    quic_bind_addr: Option<SocketAddr>,
}

#[derive(Default)]
struct Args {
    config: Option<PathBuf>,
    http_bind: Option<SocketAddr>,
    metrics_bind: Option<SocketAddr>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    quic_bind: Option<SocketAddr>,
}

const USAGE: &str = "\
usage: iroh-pair-relay [--config FILE.toml] [--http-bind IP:PORT] [--metrics-bind IP:PORT]
                       [--tls-cert CERT.pem --tls-key KEY.pem [--quic-bind IP:PORT]]";

const HELP: &str = "\
A self-hosted iroh relay (plain HTTP, default 127.0.0.1:3340). Prints one JSON line
{\"event\":\"ready\",...} on stdout once it listens; stops on SIGTERM/SIGINT.

  --http-bind IP:PORT     the relay's HTTP listener (port 0: any free port)
  --metrics-bind IP:PORT  serve Prometheus metrics there (off unless set)
  --tls-cert, --tls-key   certificate chain and private key (PEM) for QUIC address discovery:
                          with both, the relay also runs iroh's QAD endpoint (QUIC + TLS 1.3),
                          which tells clients behind NAT their public address (the candidate
                          for hole punching). The relay itself stays plain HTTP.
  --quic-bind IP:PORT     the QAD endpoint (default: the HTTP bind IP, port 7842). iroh clients
                          given the relay URL http://HOST:PORT/ probe HOST:7842 and verify the
                          certificate for HOST (DNS name or IP address SAN), so keep port 7842
                          and make clients trust the CA (iroh-pair: ca_certs / --ca-cert).

The config file (TOML) takes the same settings: http_bind_addr, metrics_bind_addr,
tls_cert_path, tls_key_path, quic_bind_addr; command-line values win.";

fn parse_args(argv: Vec<String>) -> Result<Args> {
    let mut args = Args::default();
    let mut it = argv.into_iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .with_context(|| format!("{name} needs a value\n{USAGE}"))
        };
        match a.as_str() {
            "-c" | "--config" => args.config = Some(PathBuf::from(value("--config")?)),
            "--http-bind" => {
                args.http_bind = Some(value("--http-bind")?.parse().context("bad --http-bind")?)
            }
            "--metrics-bind" => {
                args.metrics_bind = Some(
                    value("--metrics-bind")?
                        .parse()
                        .context("bad --metrics-bind")?,
                )
            }
            "--tls-cert" => args.tls_cert = Some(PathBuf::from(value("--tls-cert")?)),
            "--tls-key" => args.tls_key = Some(PathBuf::from(value("--tls-key")?)),
            "--quic-bind" => {
                args.quic_bind = Some(value("--quic-bind")?.parse().context("bad --quic-bind")?)
            }
            "-h" | "--help" => {
                println!("{USAGE}\n\n{HELP}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    Ok(args)
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
    let args = parse_args(argv)?;
    let file: FileConfig = match &args.config {
        Some(p) => {
            let s =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            toml::from_str(&s).with_context(|| format!("parsing {}", p.display()))?
        }
        None => FileConfig::default(),
    };
    let http_bind = args
        .http_bind
        .or(file.http_bind_addr)
        .unwrap_or_else(|| DEFAULT_HTTP_BIND.parse().expect("valid default"));
    let metrics_bind = args.metrics_bind.or(file.metrics_bind_addr);
    let tls_cert = args.tls_cert.or(file.tls_cert_path);
    let tls_key = args.tls_key.or(file.tls_key_path);
    let quic_bind = args.quic_bind.or(file.quic_bind_addr);
    let quic = match (tls_cert, tls_key) {
        (Some(cert), Some(key)) => {
            let bind = quic_bind
                .unwrap_or_else(|| SocketAddr::new(http_bind.ip(), DEFAULT_RELAY_QUIC_PORT));
            let mut q = QuicConfig::new(bind);
            q.server_config = Some(tls_server_config(&cert, &key)?);
            Some(q)
        }
        (None, None) if quic_bind.is_none() => None,
        (None, None) => {
            bail!("--quic-bind needs --tls-cert and --tls-key (QUIC needs TLS)\n{USAGE}")
        }
        _ => bail!("--tls-cert and --tls-key go together\n{USAGE}"),
    };

    // Install the signal handlers before binding, so a SIGTERM right after the ready line is
    // never lost.
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;

    let mut config = ServerConfig::default();
    config.relay = Some(RelayConfig::new(http_bind));
    // QUIC address discovery only with a certificate (QUIC needs TLS); the relay's own
    // HTTP listener stays plain HTTP either way (`RelayConfig::tls` is None).
    let quic_desc = quic
        .as_ref()
        .map_or_else(|| "off".to_string(), |q| q.bind_addr.to_string());
    config.quic = quic;
    config.metrics_addr = metrics_bind;
    let mut server = Server::spawn(config).await.with_context(|| {
        format!("starting the relay on {http_bind} (QUIC address discovery: {quic_desc})")
    })?;
    let http_addr = server.http_addr().context("relay has no HTTP address")?;
    let relay_url = format!("http://{http_addr}/");
    // What clients should be given: without QAD, say so (`#qad=none`), else a client probes
    // HOST:7842 for it and waits for iroh's probe timeout (3 s) before it picks this relay;
    // with QAD elsewhere than 7842, say where.
    let client_relay_url = match server.quic_addr() {
        None => format!("{relay_url}#qad=none"),
        Some(a) if a.port() == DEFAULT_RELAY_QUIC_PORT => relay_url.clone(),
        Some(a) => format!("{relay_url}#qad={}", a.port()),
    };
    let ready = serde_json::json!({
        "event": "ready",
        "http_addr": http_addr.to_string(),
        "relay_url": relay_url,
        "client_relay_url": client_relay_url,
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

/// A TLS 1.3-capable server config (ring, as iroh-relay uses) from a PEM certificate chain and
/// private key, for the QUIC address-discovery endpoint.
fn tls_server_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<rustls::ServerConfig> {
    let certs = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing the certificates in {}", cert.display()))?;
    if certs.is_empty() {
        bail!("{} holds no PEM certificate", cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading the private key in {}", key.display()))?;
    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the TLS certificate and key do not fit together")
}
