//! LAN scenarios (issue #18): discovery over mDNS with **no server at all**.
//!
//! Unlike [`crate::world::World`], these labs have no public host: no relay, no lookup server
//! exists, and every node runs in the CLI's LAN mode (relays off, lookup off, mDNS on; see
//! `tests/lab_lan_agent.py`, which these scenarios drive, passed as `--agent`). A LAN is one
//! router (a Moderate NAT, i.e. a home router) with several devices on its bridge; multicast
//! (mDNS, 224.0.0.251) reaches every device of that LAN and never crosses a router.
//!
//! ```text
//!   IX ── <lan> (NAT) ── device, device, ...
//!    └─── <lan2> ...
//! ```
//!
//! Scenarios (`iroh-pair-lab lan-...`):
//! - `lan-reconnect`: two devices pair with a spoken code, both restart on new ports, and
//!   reconnect by EndpointId through mDNS over a direct LAN path;
//! - `lan-cli`: `iroh-pair host --lan` / `iroh-pair join 7-...` through the CLI, wrong words
//!   fail and are counted (3 wrong ones burn the code);
//! - `lan-capture`: a third device captures the mDNS traffic (allowlist, no secrets) and tries
//!   a join with the nameplate it overheard and guessed words;
//! - `lan-isolated`: a device on another LAN cannot find an id by mDNS; one on the same LAN can.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use patchbay::{Device, Nat, Router};
use serde_json::{Value, json};

use crate::Args;
use crate::agent::Proc;
use crate::out::{emit, now};
use crate::world::{LanKind, Net};

/// The LAN scenarios (one [`crate::scenario::Scenario::Lan`] variant each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lan {
    Reconnect,
    Cli,
    Capture,
    Isolated,
}

impl Lan {
    pub const ALL: [Lan; 4] = [Self::Reconnect, Self::Cli, Self::Capture, Self::Isolated];

    pub fn name(self) -> &'static str {
        match self {
            Self::Reconnect => "lan-reconnect",
            Self::Cli => "lan-cli",
            Self::Capture => "lan-capture",
            Self::Isolated => "lan-isolated",
        }
    }

    pub fn about(self) -> &'static str {
        match self {
            Self::Reconnect => {
                "one LAN, no servers: spoken-code pairing, both restart, reconnect by id over mDNS, direct"
            }
            Self::Cli => {
                "one LAN, no servers: CLI host --lan / join 7-..., wrong words fail (exit 3) and count"
            }
            Self::Capture => {
                "a third device captures mDNS: allowlisted records only, no secrets; its guess fails"
            }
            Self::Isolated => {
                "two LANs: mDNS does not cross routers (dial by id fails, typed); same-LAN control works"
            }
        }
    }

    pub fn deadline(self) -> f64 {
        match self {
            Self::Cli => 180.0,
            _ => 120.0,
        }
    }
}

pub async fn run(args: &Args, lan: Lan) -> Result<Value> {
    if args
        .agent
        .file_name()
        .is_none_or(|n| n != "lab_lan_agent.py")
    {
        bail!(
            "the LAN scenarios drive tests/lab_lan_agent.py (pass it as --agent), not {}",
            args.agent.display()
        );
    }
    match lan {
        Lan::Reconnect => reconnect(args).await,
        Lan::Cli => cli(args).await,
        Lan::Capture => capture(args).await,
        Lan::Isolated => isolated(args).await,
    }
}

const STEP: Duration = Duration::from_secs(60);
const EXIT: Duration = Duration::from_secs(30);

/// A lab of LANs only (no public host, no servers). Fields drop in order: the lab (its
/// namespaces, after the scenario's processes, which are locals declared later), then files.
struct LanLab {
    net: Net,
    workdir: PathBuf,
    python: PathBuf,
    agent: PathBuf,
}

impl LanLab {
    async fn new(args: &Args, label: &str) -> Result<Self> {
        let net = Net::new(label).await?;
        let workdir =
            std::env::temp_dir().join(format!("iroh-pair-lab-lan-{}", std::process::id()));
        std::fs::create_dir_all(&workdir)?;
        Ok(Self {
            net,
            workdir,
            python: args.python.clone(),
            agent: args.agent.clone(),
        })
    }

    /// A LAN: a home router (Moderate NAT) behind the IX.
    async fn router(&mut self, name: &str) -> Result<Router> {
        self.net.lan(name, LanKind::nat(Nat::Moderate)).await
    }

    async fn device(&mut self, name: &str, router: &Router) -> Result<Device> {
        self.net.device(name, router).await
    }

    fn topology(&self) -> Value {
        self.net.topology()
    }

    fn data(&self, dev: &Device, kind: &str) -> String {
        self.workdir
            .join(format!("{kind}-{}", dev.name()))
            .display()
            .to_string()
    }

    /// The LAN agent on `dev` in `mode` (its data directory is per device).
    fn agent(&self, dev: &Device, label: &str, mode: &str, extra: &[&str]) -> Result<Proc> {
        let mut argv: Vec<String> = vec![
            "-u".into(),
            self.agent.display().to_string(),
            "--mode".into(),
            mode.into(),
            "--label".into(),
            label.into(),
            "--data".into(),
            self.data(dev, "data"),
        ];
        argv.extend(extra.iter().map(|s| s.to_string()));
        Proc::spawn(
            dev,
            label,
            &self.python,
            &argv,
            &[("PYTHONUNBUFFERED", "1")],
            true,
        )
    }

    /// The installed CLI (`python -m iroh_pair --data-dir D --json ...`) on `dev`.
    fn cli(&self, dev: &Device, label: &str, args: &[&str]) -> Result<Proc> {
        let mut argv: Vec<String> = vec![
            "-m".into(),
            "iroh_pair".into(),
            "--data-dir".into(),
            self.data(dev, "cli"),
            "--name".into(),
            dev.name().into(),
            "--json".into(),
        ];
        argv.extend(args.iter().map(|s| s.to_string()));
        Proc::spawn(
            dev,
            label,
            &self.python,
            &argv,
            &[("PYTHONUNBUFFERED", "1")],
            true,
        )
    }
}

impl Drop for LanLab {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.workdir);
    }
}

fn text<'a>(v: &'a Value, key: &str) -> Result<&'a str> {
    v[key]
        .as_str()
        .with_context(|| format!("no {key:?} in {v}"))
}

/// Runs a CLI process to its end: its exit code, its JSON lines' events and its stderr tail.
async fn cli_run(p: Proc) -> Result<Value> {
    let label = p.label.clone();
    let mut p = p;
    // Drain its output until it exits (no event has this name: wait_event returns at EOF).
    let _ = p.wait_event("\u{0}eof", EXIT).await;
    let tail = p.stderr_tail();
    let status: ExitStatus = p.exit(EXIT).await?;
    let out = json!({"proc": label, "exit": status.code(), "stderr": tail});
    emit(
        "lab",
        json!({"event": "cli_exit", "proc": label, "exit": status.code()}),
    );
    Ok(out)
}

/// Scenario `lan-reconnect`.
async fn reconnect(args: &Args) -> Result<Value> {
    let mut l = LanLab::new(args, "lan-reconnect").await?;
    let r = l.router("home").await?;
    let a = l.device("alpha", &r).await?;
    let b = l.device("beta", &r).await?;
    let topology = l.topology();

    // Pair with the spoken code (mDNS only), then both processes end.
    let mut h = l.agent(&a, "alpha", "host", &[])?;
    let open_a1 = h.wait_event("open", STEP).await?;
    let code = h.wait_event("code", STEP).await?;
    let mut j = l.agent(&b, "beta", "join", &["--code", text(&code, "spoken")?])?;
    let open_b1 = j.wait_event("open", STEP).await?;
    let paired = j
        .wait_event("paired", STEP)
        .await
        .context("joiner pairing")?;
    h.wait_event("paired", STEP).await.context("host pairing")?;
    let alpha1 = h.finish(EXIT).await?;
    let beta1 = j.finish(EXIT).await?;
    emit("lab", json!({"event": "restart"}));

    // Both restart: new processes, new sockets, nothing but the registry on disk.
    let mut a2 = l.agent(&a, "alpha2", "serve", &[])?;
    let open_a2 = a2.wait_event("open", STEP).await?;
    let started = now();
    let mut b2 = l.agent(
        &b,
        "beta2",
        "reconnect",
        &["--peer", text(&open_a2, "id")?, "--requests", "20"],
    )?;
    let open_b2 = b2.wait_event("open", STEP).await?;
    let reconnected = b2
        .wait_event("reconnected", STEP)
        .await
        .context("reconnect by id")?;
    let wall_s = now() - started;
    let exchanged = b2.wait_event("exchanged", STEP).await?;
    a2.send("ping 20").await?;
    let pinged = a2.wait_event("pinged", STEP).await?;
    let beta2 = b2.finish(EXIT).await?;
    let alpha2 = a2.finish(EXIT).await?;
    Ok(json!({
        "topology": topology,
        "first_run": {"alpha_open": open_a1, "beta_open": open_b1, "paired": paired, "alpha": alpha1, "beta": beta1},
        "second_run": {"alpha_open": open_a2, "beta_open": open_b2, "reconnected": reconnected,
                        "exchanged": exchanged, "pinged": pinged, "alpha": alpha2, "beta": beta2,
                        "reconnect_wall_s": wall_s},
    }))
}

/// Wrong words for a spoken code: the first word replaced by another BIP39 word.
fn wrong_words(spoken: &str) -> Result<String> {
    let mut parts: Vec<&str> = spoken.split('-').collect();
    if parts.len() < 3 {
        bail!("not a spoken code: {spoken:?}");
    }
    parts[1] = if parts[1] == "zoo" { "abandon" } else { "zoo" };
    Ok(parts.join("-"))
}

/// Scenario `lan-cli`: everything through `python -m iroh_pair` (the installed CLI).
async fn cli(args: &Args) -> Result<Value> {
    let mut l = LanLab::new(args, "lan-cli").await?;
    let r = l.router("home").await?;
    let a = l.device("host", &r).await?;
    let b = l.device("joiner", &r).await?;
    let topology = l.topology();

    // Round 1: one wrong join, then the right one pairs.
    let mut h = l.cli(&a, "host-cli", &["host", "--lan", "--ttl", "120", "--yes"])?;
    let code = h.wait_event("code", STEP).await?;
    let spoken = text(&code, "spoken")?.to_string();
    let wrong = wrong_words(&spoken)?;
    let wrong1 = cli_run(l.cli(
        &b,
        "join-wrong",
        &["join", &wrong, "--timeout", "30", "--yes"],
    )?)
    .await?;
    let right = l.cli(
        &b,
        "join-right",
        &["join", &spoken, "--timeout", "30", "--yes"],
    )?;
    let right = {
        let mut p = right;
        let paired = p.wait_event("paired", STEP).await.context("CLI join")?;
        let mut out = cli_run(p).await?;
        out["paired"] = paired;
        out
    };
    let host_paired = h.wait_event("paired", STEP).await.context("CLI host")?;
    let host = {
        let mut out = cli_run(h).await?;
        out["paired"] = host_paired;
        out["code"] = code.clone();
        out
    };
    let devices_host = devices(&l, &a).await?;
    let devices_join = devices(&l, &b).await?;

    // Round 2: three wrong joins burn the code; the host exits with "pairing failed" and stops
    // announcing, so the right words find nobody.
    let mut h2 = l.cli(&a, "host2-cli", &["host", "--lan", "--ttl", "120", "--yes"])?;
    let code2 = h2.wait_event("code", STEP).await?;
    let spoken2 = text(&code2, "spoken")?.to_string();
    let wrong2 = wrong_words(&spoken2)?;
    let mut burn = Vec::new();
    for i in 0..3 {
        burn.push(
            cli_run(l.cli(
                &b,
                &format!("join-burn{i}"),
                &["join", &wrong2, "--timeout", "30", "--yes"],
            )?)
            .await?,
        );
    }
    let host2 = cli_run(h2).await?;
    let after_burn = cli_run(l.cli(
        &b,
        "join-after-burn",
        &["join", &spoken2, "--timeout", "30", "--yes"],
    )?)
    .await?;
    Ok(json!({
        "topology": topology,
        "round1": {"spoken": spoken, "wrong": wrong1, "right": right, "host": host,
                   "devices_host": devices_host, "devices_join": devices_join},
        "round2": {"spoken": spoken2, "wrong": burn, "host": host2, "after_burn": after_burn},
    }))
}

/// `iroh-pair --local devices --json` on `dev`: the paired devices (no network needed).
async fn devices(l: &LanLab, dev: &Device) -> Result<Value> {
    let mut p = l.cli(
        dev,
        &format!("devices-{}", dev.name()),
        &["--local", "devices"],
    )?;
    // `devices --json` prints one JSON array (not an object): it arrives as a stdout line.
    let line = p.wait_event("stdout", STEP).await?;
    let list: Value = serde_json::from_str(text(&line, "line")?).context("devices --json")?;
    let status = p.exit(EXIT).await?;
    if !status.success() {
        bail!("devices on {} exited with {status}", dev.name());
    }
    Ok(list)
}

/// Scenario `lan-capture`.
async fn capture(args: &Args) -> Result<Value> {
    let mut l = LanLab::new(args, "lan-capture").await?;
    let r = l.router("home").await?;
    let a = l.device("host", &r).await?;
    let b = l.device("joiner", &r).await?;
    let c = l.device("sniffer", &r).await?;
    let topology = l.topology();
    let sniffer_ip = c.ip().context("sniffer has no IPv4")?.to_string();

    let mut s = l.agent(&c, "sniffer", "capture", &["--iface-ip", &sniffer_ip])?;
    let capturing = s.wait_event("capturing", STEP).await?;
    s.send("mark hosting").await?;
    let mut h = l.agent(&a, "host", "host", &[])?;
    let host_open = h.wait_event("open", STEP).await?;
    let code = h.wait_event("code", STEP).await?;
    // Let the announcements go round a few times, then the sniffer guesses.
    tokio::time::sleep(Duration::from_secs(3)).await;
    s.send("attack").await?;
    let attack = s.wait_event("attack", STEP).await?;
    let attempts = h
        .wait_event("attempts", Duration::from_secs(10))
        .await
        .context("the host did not count the sniffer's attempt")?;
    let mut j = l.agent(&b, "joiner", "join", &["--code", text(&code, "spoken")?])?;
    let joiner_open = j.wait_event("open", STEP).await?;
    let joined = j.wait_event("paired", STEP).await?;
    let host_paired = h.wait_event("paired", STEP).await?;
    s.send("mark paired").await?;
    // The nameplate announcement stops with the offer; the nodes' own go on.
    tokio::time::sleep(Duration::from_secs(2)).await;
    s.send("mark settled").await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let sniffer = s.finish(EXIT).await?;
    let host = h.finish(EXIT).await?;
    let joiner = j.finish(EXIT).await?;
    Ok(json!({
        "topology": topology, "capturing": capturing, "code": code, "attack": attack,
        "attempts": attempts, "joined": joined, "host_paired": host_paired,
        "ids": {"host": host_open["id"], "joiner": joiner_open["id"], "host_label": host_open["label"],
                "joiner_label": joiner_open["label"]},
        "ips": {"host": a.ip().map(|i| i.to_string()), "joiner": b.ip().map(|i| i.to_string()),
                "sniffer": sniffer_ip},
        "sniffer": sniffer, "host": host, "joiner": joiner,
    }))
}

/// Scenario `lan-isolated`.
async fn isolated(args: &Args) -> Result<Value> {
    let mut l = LanLab::new(args, "lan-isolated").await?;
    let r1 = l.router("lan1").await?;
    let r2 = l.router("lan2").await?;
    let a = l.device("a", &r1).await?;
    let b = l.device("b", &r1).await?;
    let c = l.device("c", &r2).await?;
    let topology = l.topology();
    let mut server = l.agent(&a, "a", "endpoint-serve", &["--listen", "15"])?;
    let open = server.wait_event("open", STEP).await?;
    let id = text(&open, "id")?.to_string();
    let dial = ["--peer", id.as_str(), "--timeout", "10"];
    let mut same = l.agent(&b, "b", "endpoint-dial", &dial)?;
    let mut other = l.agent(&c, "c", "endpoint-dial", &dial)?;
    let same_id = text(&same.wait_event("open", STEP).await?, "id")?.to_string();
    let same_lan = same.wait_event("dial", STEP).await?;
    let other_lan = other.wait_event("dial", STEP).await?;
    // Both dialers stay up (and announce) until they exit: the server gets time to hear b,
    // while c, on the other LAN, has the same time to be (wrongly) heard.
    server.send(&format!("stop {same_id}")).await?;
    let served = server.wait_event("done", EXIT).await?;
    for p in [same, other] {
        let label = p.label.clone();
        let status = p.exit(EXIT).await?;
        if !status.success() {
            bail!("{label} exited with {status}");
        }
    }
    server.exit(EXIT).await?;
    Ok(
        json!({"topology": topology, "target": id, "same_lan": same_lan, "other_lan": other_lan,
              "server": served}),
    )
}
