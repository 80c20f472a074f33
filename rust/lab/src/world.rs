//! The lab's building blocks: a patchbay [`Lab`] with a public host running this project's
//! relay and lookup servers, plus helpers to add LANs (a router with a NAT kind and an
//! optional UDP-blocking firewall), devices on them (several per LAN are fine), and Python
//! agents on the devices, already configured for the lab's servers.
//!
//! Layout:
//!
//! ```text
//!   IX ── dc (public, no NAT) ── servers   relay http://IP:3340/ + QAD quic://IP:7842,
//!    │                                     pkarr http://IP:8080/pkarr, DNS IP:53
//!    ├─── <lan> (NAT kind, firewall) ── device, device, ...
//!    └─── ...
//! ```
//!
//! The relay runs iroh's QUIC address discovery (QAD) on port 7842: that is how a device
//! behind NAT learns its public (mapped) address, the candidate for hole punching. QAD needs
//! TLS, so the lab makes a throwaway CA and a certificate for the server's IP at start
//! (`ca.pem`, `relay-cert.pem`, `relay-key.pem` in the work directory) and hands `ca.pem` to
//! every agent (`--ca-cert`, trusted beside the web PKI roots).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use patchbay::{Device, Lab, Nat, Router};
use serde_json::{Value, json};

use crate::Args;
use crate::agent::Proc;
use crate::out::emit;

pub const RELAY_PORT: u16 = 3340;
pub const PKARR_PORT: u16 = 8080;
pub const DNS_PORT: u16 = 53;
/// QUIC address discovery at the relay: iroh clients probe the relay URL's host on this port
/// (iroh's `DEFAULT_RELAY_QUIC_PORT`).
pub const QAD_PORT: u16 = 7842;
pub const ORIGIN: &str = "irohpair.test";

/// What a LAN's router does.
#[derive(Debug, Clone, Copy)]
pub struct LanKind {
    pub nat: Nat,
    /// Drop all UDP crossing the router except DNS (port 53): no QUIC except via the relay.
    pub block_udp: bool,
}

impl LanKind {
    pub const fn nat(nat: Nat) -> Self {
        Self {
            nat,
            block_udp: false,
        }
    }
}

/// The patchbay network and a record of what was built in it (the `topology` event): routers
/// with their NAT and firewall, and the devices on each LAN (several per LAN are fine).
pub struct Net {
    pub lab: Lab,
    topology: Vec<Value>,
}

impl Net {
    pub async fn new(label: &str) -> Result<Self> {
        let lab = Lab::builder()
            .label(label)
            .build()
            .await
            .context("creating the lab")?;
        Ok(Self {
            lab,
            topology: Vec::new(),
        })
    }

    /// A router for a LAN of its own behind the IX.
    pub async fn lan(&mut self, name: &str, kind: LanKind) -> Result<Router> {
        let mut b = self.lab.add_router(name).nat(kind.nat);
        if kind.block_udp {
            b = b.firewall_custom(|f| f.block_inbound().allow_udp(&[DNS_PORT]));
        }
        let r = b.build().await.with_context(|| format!("router {name}"))?;
        self.topology.push(json!({"router": name, "nat": kind.nat.to_string(), "block_udp": kind.block_udp,
                                  "cidr": r.downstream_cidr().map(|c| c.to_string()),
                                  "public_ip": r.uplink_ip().map(|i| i.to_string()), "devices": []}));
        Ok(r)
    }

    /// A device on `router`'s LAN (interface `eth0`).
    pub async fn device(&mut self, name: &str, router: &Router) -> Result<Device> {
        let d = self
            .lab
            .add_device(name)
            .uplink(router.id())
            .build()
            .await
            .with_context(|| format!("device {name}"))?;
        let ip = d.ip().map(|i| i.to_string());
        if let Some(r) = self
            .topology
            .iter_mut()
            .find(|r| r["router"] == router.name())
            && let Some(devs) = r["devices"].as_array_mut()
        {
            devs.push(json!({"name": name, "ip": ip}));
        }
        Ok(d)
    }

    /// The topology built so far, also printed as a `topology` event.
    pub fn topology(&self) -> Value {
        let v = Value::from(self.topology.clone());
        emit("lab", json!({"event": "topology", "routers": v}));
        v
    }
}

/// A running lab: the network, the servers, and where agents keep their data.
/// Fields drop in order: server processes first, then the lab (its namespaces), then files.
pub struct World {
    servers: Vec<Proc>,
    pub net: Net,
    pub server_ip: std::net::Ipv4Addr,
    /// The lab CA's certificate (PEM), trusted by every agent.
    ca_cert: PathBuf,
    workdir: PathBuf,
    python: PathBuf,
    agent: PathBuf,
    /// The public host's device and how to start each server on it (for restarts).
    server_dev: Device,
    relay: (PathBuf, Vec<String>),
    dns: (PathBuf, Vec<String>),
}

/// The servers of a [`World`], for [`World::restart_server`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    Relay,
    Dns,
}

impl World {
    /// Builds the public part: router `dc`, device `servers`, and the relay and lookup servers
    /// on it (waits for their ready lines).
    pub async fn new(args: &Args, label: &str) -> Result<Self> {
        let mut net = Net::new(label).await?;
        let dc = net.lan("dc", LanKind::nat(Nat::None)).await?;
        let host = net.device("servers", &dc).await?;
        let ip = host
            .ip()
            .context("the servers device has no IPv4 address")?;
        let workdir = std::env::temp_dir().join(format!("iroh-pair-lab-{}", std::process::id()));
        std::fs::create_dir_all(&workdir)?;
        let (ca_cert, relay_cert, relay_key) = make_certs(&workdir, ip)?;
        let cfg = workdir.join("dns.toml");
        std::fs::write(&cfg, dns_config(&workdir.join("dns-data"), &ip.to_string()))?;
        let mut world = Self {
            servers: Vec::new(),
            net,
            server_ip: ip,
            ca_cert,
            workdir,
            python: args.python.clone(),
            agent: args.agent.clone(),
            server_dev: host,
            relay: (
                args.relay_bin.clone(),
                vec![
                    "--http-bind".into(),
                    format!("{ip}:{RELAY_PORT}"),
                    "--tls-cert".into(),
                    relay_cert.display().to_string(),
                    "--tls-key".into(),
                    relay_key.display().to_string(),
                    "--quic-bind".into(),
                    format!("{ip}:{QAD_PORT}"),
                ],
            ),
            dns: (
                args.dns_bin.clone(),
                vec!["--config".into(), cfg.display().to_string()],
            ),
        };
        let relay = world.start_server(Server::Relay).await?;
        world.servers.push(relay);
        let dns = world.start_server(Server::Dns).await?;
        world.servers.push(dns);
        Ok(world)
    }

    /// Starts one server on the public host and waits for its ready line.
    async fn start_server(&self, which: Server) -> Result<Proc> {
        let quiet = [("RUST_LOG", "warn"), ("NO_COLOR", "1")];
        let ((bin, argv), label) = match which {
            Server::Relay => (&self.relay, "relay"),
            Server::Dns => (&self.dns, "dns"),
        };
        let mut p = Proc::spawn(&self.server_dev, label, bin, argv, &quiet, false)?;
        let ready = p
            .wait_event("ready", Duration::from_secs(20))
            .await
            .with_context(|| format!("{label} server"))?;
        if which == Server::Relay {
            let ip = self.server_ip;
            if ready["quic_addr"].as_str() != Some(format!("{ip}:{QAD_PORT}").as_str()) {
                bail!("the relay did not start QUIC address discovery on {ip}:{QAD_PORT}: {ready}");
            }
        }
        Ok(p)
    }

    /// Kills a server (SIGKILL), waits `down`, starts it again on the same addresses (the
    /// lookup server keeps its database) and waits until it is ready.
    pub async fn restart_server(&mut self, which: Server, down: Duration) -> Result<()> {
        let idx = match which {
            Server::Relay => 0,
            Server::Dns => 1,
        };
        self.servers[idx].kill().await;
        tokio::time::sleep(down).await;
        self.servers[idx] = self.start_server(which).await?;
        Ok(())
    }

    pub fn relay_url(&self) -> String {
        format!("http://{}:{RELAY_PORT}/", self.server_ip)
    }

    /// Starts the agent on `dev` with `role` ("host" or "join") and extra arguments; it gets
    /// its own data directory and the lab's relay and lookup servers.
    pub fn agent(&self, dev: &Device, role: &str, extra: &[String]) -> Result<Proc> {
        let data = self.workdir.join(format!("data-{}", dev.name()));
        let ip = self.server_ip;
        let mut argv: Vec<String> = vec![
            "-u".into(),
            self.agent.display().to_string(),
            "--role".into(),
            role.into(),
            "--label".into(),
            dev.name().into(),
            "--data".into(),
            data.display().to_string(),
            "--relay".into(),
            self.relay_url(),
            "--pkarr-url".into(),
            format!("http://{ip}:{PKARR_PORT}/pkarr"),
            "--dns-origin".into(),
            ORIGIN.into(),
            "--dns-server".into(),
            format!("{ip}:{DNS_PORT}"),
            "--ca-cert".into(),
            self.ca_cert.display().to_string(),
        ];
        argv.extend(extra.iter().cloned());
        Proc::spawn(
            dev,
            dev.name(),
            &self.python,
            &argv,
            &[("PYTHONUNBUFFERED", "1")],
            true,
        )
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.workdir);
    }
}

/// A throwaway CA and a server certificate for `ip` (an IP address SAN: iroh checks the QAD
/// endpoint's certificate against the relay URL's host), written as PEM files into `dir`.
/// Returns the paths of the CA certificate, the server certificate and its key.
fn make_certs(
    dir: &std::path::Path,
    ip: std::net::Ipv4Addr,
) -> Result<(PathBuf, PathBuf, PathBuf)> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name
        .push(DnType::CommonName, "iroh-pair lab CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);

    let key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(vec![ip.to_string()])?;
    leaf.distinguished_name
        .push(DnType::CommonName, format!("iroh-pair lab relay {ip}"));
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = leaf.signed_by(&key, &issuer)?;

    let paths = (
        dir.join("ca.pem"),
        dir.join("relay-cert.pem"),
        dir.join("relay-key.pem"),
    );
    std::fs::write(&paths.0, ca_cert.pem())?;
    // The chain: server certificate, then the CA.
    std::fs::write(&paths.1, format!("{}{}", cert.pem(), ca_cert.pem()))?;
    std::fs::write(&paths.2, key.serialize_pem())?;
    Ok(paths)
}

/// iroh-dns-server's config for the lab: listens on the public host's IP (pkarr over HTTP on
/// [`PKARR_PORT`], DNS on [`DNS_PORT`]), no metrics, no DHT (the same as
/// `iroh_pair.servers._dns_config`, with another bind address and fixed ports).
fn dns_config(data_dir: &std::path::Path, ip: &str) -> String {
    format!(
        r#"pkarr_put_rate_limit = "disabled"
data_dir = {data:?}

[http]
port = {PKARR_PORT}
bind_addr = "{ip}"

[dns]
port = {DNS_PORT}
bind_addr = "{ip}"
default_soa = "ns1.{ORIGIN} hostmaster.{ORIGIN} 0 10800 3600 604800 5"
default_ttl = 30
origins = ["{ORIGIN}.", "."]
rr_a = "{ip}"
rr_ns = "ns1.{ORIGIN}."

[metrics]
disabled = true

[mainline]
enabled = false
"#,
        data = data_dir.display().to_string()
    )
}
