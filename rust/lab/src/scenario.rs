//! The scenarios: one function each, building its topology with [`World`] and driving the
//! agents. A new scenario is a variant in [`Scenario`] (name, description, deadline) and a
//! function here; [`pair`] covers the common start (host pairing code, joiner joins).
//!
//! What each scenario's agents do is chosen by the joiner's `--work` (see
//! `tests/lab_agent.py`): `direct` (wait for a direct path), `relayed` (watch the paths, a
//! 16 MiB transfer and 100 requests), `steady` (numbered messages until told to stop), `soak`.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use patchbay::{Device, Nat};
use serde_json::{Value, json};

use crate::Args;
use crate::agent::Proc;
use crate::out::emit;
use crate::world::{LanKind, Server, World};

/// A scenario of the lab.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// Two Moderate (endpoint-independent mapping) NATs: relay first, then direct.
    Holepunch,
    /// Host behind a Strict (symmetric) NAT, joiner behind a Moderate one: stays relayed.
    Strict,
    /// Both routers drop UDP (except DNS): relay only, never a direct path.
    UdpBlocked,
    /// Steady numbered messages across a link outage of one device.
    Outage,
    /// Steady messaging for `--minutes` between `--pairs` pairs, with RSS and latency samples.
    Soak,
    /// The LAN scenarios of issue #18 (mDNS, no servers): see `crate::lan`.
    Lan(crate::lan::Lan),
}

impl Scenario {
    pub const ALL: [Scenario; 9] = [
        Self::Holepunch,
        Self::Strict,
        Self::UdpBlocked,
        Self::Outage,
        Self::Soak,
        Self::Lan(crate::lan::Lan::ALL[0]),
        Self::Lan(crate::lan::Lan::ALL[1]),
        Self::Lan(crate::lan::Lan::ALL[2]),
        Self::Lan(crate::lan::Lan::ALL[3]),
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Holepunch => "holepunch",
            Self::Strict => "strict",
            Self::UdpBlocked => "udp-blocked",
            Self::Outage => "outage",
            Self::Soak => "soak",
            Self::Lan(l) => l.name(),
        }
    }

    pub fn about(self) -> &'static str {
        match self {
            Self::Holepunch => {
                "two Moderate NATs: pair through the relay, then the path becomes direct"
            }
            Self::Strict => {
                "Strict (symmetric) NAT vs Moderate NAT: stays relayed, 16 MiB + 100 requests"
            }
            Self::UdpBlocked => "UDP blocked by both routers: relay only, no direct path ever",
            Self::Outage => {
                "link down/up on one device during steady messaging: exactly-once delivery"
            }
            Self::Soak => {
                "steady messaging for --minutes, optional --faults: exactly once, reconnects, RSS/fds flat"
            }
            Self::Lan(l) => l.about(),
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.name() == s)
    }

    /// Seconds for the whole run unless `--deadline` says otherwise.
    pub fn default_deadline(self, args: &Args) -> f64 {
        match self {
            Self::Soak => args.minutes * 60.0 + 180.0 + 30.0 * args.pairs as f64,
            Self::Outage => 120.0 + args.outage.as_secs_f64(),
            Self::Lan(l) => l.deadline(),
            _ => 120.0,
        }
    }
}

pub async fn run(args: &Args) -> Result<Value> {
    match args.scenario {
        Scenario::Holepunch => holepunch(args).await,
        Scenario::Strict => {
            relayed(args, LanKind::nat(Nat::Strict), LanKind::nat(Nat::Moderate)).await
        }
        Scenario::UdpBlocked => {
            let blocked = LanKind {
                nat: Nat::Moderate,
                block_udp: true,
            };
            relayed(args, blocked, blocked).await
        }
        Scenario::Outage => outage(args).await,
        Scenario::Soak => soak(args).await,
        Scenario::Lan(l) => crate::lan::run(args, l).await,
    }
}

const STEP: Duration = Duration::from_secs(60);

fn strings(xs: &[&str]) -> Vec<String> {
    xs.iter().map(|s| s.to_string()).collect()
}

/// Starts the host agent on `host`, reads its pairing code, starts the joiner on `joiner`
/// with that code (and `join_args`), and waits until both report `paired`.
async fn pair(
    w: &World,
    host: &Device,
    joiner: &Device,
    join_args: &[String],
) -> Result<(Proc, Proc)> {
    let mut h = w.agent(host, "host", &[])?;
    let code = h.wait_event("code", STEP).await?;
    let code = code["code"]
        .as_str()
        .context("code event without a code")?
        .to_string();
    let mut args = vec!["--code".to_string(), code];
    args.extend(join_args.iter().cloned());
    let mut j = w.agent(joiner, "join", &args)?;
    j.wait_event("paired", STEP)
        .await
        .context("joiner pairing")?;
    h.wait_event("paired", STEP).await.context("host pairing")?;
    Ok((h, j))
}

/// Scenario 1: two Moderate NATs; the joiner waits for a direct path.
async fn holepunch(args: &Args) -> Result<Value> {
    let mut w = World::new(args, "holepunch").await?;
    let r1 = w.net.lan("home1", LanKind::nat(Nat::Moderate)).await?;
    let r2 = w.net.lan("home2", LanKind::nat(Nat::Moderate)).await?;
    let a = w.net.device("host", &r1).await?;
    let b = w.net.device("joiner", &r2).await?;
    let topology = w.net.topology();
    let (h, mut j) = pair(
        &w,
        &a,
        &b,
        &strings(&["--work", "direct", "--direct-timeout", "30"]),
    )
    .await?;
    let join = j.wait_event("done", STEP).await?;
    j.exit(Duration::from_secs(20)).await?;
    let host = h.finish(Duration::from_secs(20)).await?;
    Ok(json!({"topology": topology, "join": join, "host": host}))
}

/// Scenarios 2 and 3: the connection must stay relayed; a transfer and requests over it.
async fn relayed(args: &Args, host_lan: LanKind, join_lan: LanKind) -> Result<Value> {
    let mut w = World::new(args, args.scenario.name()).await?;
    let r1 = w.net.lan("lan-host", host_lan).await?;
    let r2 = w.net.lan("lan-join", join_lan).await?;
    let a = w.net.device("host", &r1).await?;
    let b = w.net.device("joiner", &r2).await?;
    let topology = w.net.topology();
    let work = strings(&[
        "--work",
        "relayed",
        "--observe",
        "8",
        "--transfer-mib",
        "16",
        "--requests",
        "100",
    ]);
    let (h, mut j) = pair(&w, &a, &b, &work).await?;
    let join = j.wait_event("done", Duration::from_secs(90)).await?;
    j.exit(Duration::from_secs(20)).await?;
    let host = h.finish(Duration::from_secs(20)).await?;
    Ok(json!({"topology": topology, "join": join, "host": host}))
}

/// Scenario 4: numbered messages joiner -> host; one device's link goes down for
/// `--outage` seconds and comes back; every message must be delivered exactly once.
async fn outage(args: &Args) -> Result<Value> {
    let mut w = World::new(args, "outage").await?;
    let r1 = w.net.lan("home1", LanKind::nat(Nat::Moderate)).await?;
    let r2 = w.net.lan("home2", LanKind::nat(Nat::Moderate)).await?;
    let a = w.net.device("host", &r1).await?;
    let b = w.net.device("joiner", &r2).await?;
    let topology = w.net.topology();
    let (mut h, mut j) = pair(
        &w,
        &a,
        &b,
        &strings(&[
            "--work",
            "steady",
            "--interval",
            "0.05",
            "--attempt-timeout",
            "2",
        ]),
    )
    .await?;
    j.wait_event("steady", STEP).await?;
    // Let the path settle (direct if hole punching works), so the outage hits a live path.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let victim = if args.outage_side == "host" { &a } else { &b };
    let iface = victim.iface("eth0").context("device has no eth0")?;
    j.send("mark link_down").await?;
    h.send("mark link_down").await?;
    iface.link_down().await.context("link_down")?;
    let down_at = crate::out::now();
    emit(
        "lab",
        json!({"event": "link_down", "device": victim.name()}),
    );
    tokio::time::sleep(args.outage).await;
    iface.link_up().await.context("link_up")?;
    let up_at = crate::out::now();
    emit(
        "lab",
        json!({"event": "link_up", "device": victim.name(), "down_s": up_at - down_at}),
    );
    j.send("mark link_up").await?;
    h.send("mark link_up").await?;
    let recovered = j
        .wait_event("recovered", STEP)
        .await
        .context("no message got through after link_up")?;
    // Some steady messaging after the recovery, then stop the sender first.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let join = j.finish(Duration::from_secs(30)).await?;
    let host = h.finish(Duration::from_secs(30)).await?;
    Ok(
        json!({"topology": topology, "outage": {"device": victim.name(), "down_s": up_at - down_at},
              "recovered": recovered, "join": join, "host": host}),
    )
}

/// Scenario 5 (`bench/soak.py --lab`): `--pairs` pairs, each on two Moderate NATs, steady
/// messaging for `--minutes`. With `--faults`, every `--fault-every` seconds one fault, in
/// turn (`--fault-kinds`, default all four): the link of one pair's joiner device down for `--outage` s; a joiner killed
/// (SIGKILL) and restarted with `--resume` (same data directory and outbox); the relay
/// restarted; the lookup server restarted (each down for `--server-down` s). Each fault is a
/// `fault` line (`phase` `start`, then `end`); `bench/soak.py` attributes reconnects and
/// stalls to them.
async fn soak(args: &Args) -> Result<Value> {
    let mut w = World::new(args, "soak").await?;
    let mut devs = Vec::new();
    for i in 0..args.pairs {
        let r1 = w
            .net
            .lan(&format!("home-h{i}"), LanKind::nat(Nat::Moderate))
            .await?;
        let r2 = w
            .net
            .lan(&format!("home-j{i}"), LanKind::nat(Nat::Moderate))
            .await?;
        let a = w.net.device(&format!("host{i}"), &r1).await?;
        let b = w.net.device(&format!("join{i}"), &r2).await?;
        devs.push((a, b));
    }
    let topology = w.net.topology();
    let interval = args.interval.to_string();
    let work = |minutes: f64| {
        strings(&[
            "--work",
            "soak",
            "--minutes",
            &minutes.to_string(),
            "--interval",
            &interval,
        ])
    };
    let mut agents = Vec::new();
    for (a, b) in &devs {
        agents.push(pair(&w, a, b, &work(args.minutes)).await?);
    }
    // The joiners' clocks started at their own start; the schedule counts from here.
    let start = tokio::time::Instant::now();
    let total = args.minutes * 60.0;
    let mut faults = Vec::new();
    let cycle = &args.fault_kinds;
    let mut k = 0usize;
    while args.faults && (k + 1) as f64 * args.fault_every < total - 10.0 {
        tokio::time::sleep_until(
            start + Duration::from_secs_f64((k + 1) as f64 * args.fault_every),
        )
        .await;
        let kind = cycle[k % cycle.len()].as_str();
        // pair k's device, shifted each cycle so that every pair gets each kind in turn
        let i = (k + k / cycle.len()) % args.pairs;
        let target = matches!(kind, "outage" | "kill").then_some(i);
        emit(
            "lab",
            json!({"event": "fault", "kind": kind, "pair": target, "phase": "start", "n": k}),
        );
        let t0 = crate::out::now();
        match kind {
            "outage" => {
                let iface = devs[i].1.iface("eth0").context("device has no eth0")?;
                iface.link_down().await.context("link_down")?;
                tokio::time::sleep(args.outage).await;
                iface.link_up().await.context("link_up")?;
            }
            "kill" => {
                agents[i].1.kill().await;
                tokio::time::sleep(Duration::from_secs(1)).await;
                let left = (total - start.elapsed().as_secs_f64()).max(1.0) / 60.0;
                let mut extra = vec!["--resume".to_string()];
                extra.extend(work(left));
                let mut j = w.agent(&devs[i].1, "join", &extra)?;
                j.wait_event("paired", STEP)
                    .await
                    .context("restarted joiner")?;
                agents[i].1 = j;
            }
            "relay" => w.restart_server(Server::Relay, args.server_down).await?,
            _ => w.restart_server(Server::Dns, args.server_down).await?,
        }
        let took = crate::out::now() - t0;
        emit(
            "lab",
            json!({"event": "fault", "kind": kind, "pair": target, "phase": "end", "n": k, "took_s": took}),
        );
        faults.push(json!({"kind": kind, "pair": target, "took_s": took}));
        k += 1;
    }
    let left = (total - start.elapsed().as_secs_f64()).max(0.0);
    let wait = Duration::from_secs_f64(left + 90.0);
    let mut pairs = Vec::new();
    for (h, mut j) in agents {
        let join = j.wait_event("done", wait).await?;
        j.exit(Duration::from_secs(20)).await?;
        let host = h.finish(Duration::from_secs(20)).await?;
        pairs.push(json!({"join": join, "host": host}));
    }
    if pairs.is_empty() {
        bail!("no pairs");
    }
    Ok(json!({"topology": topology, "minutes": args.minutes, "faults": faults, "pairs": pairs}))
}
