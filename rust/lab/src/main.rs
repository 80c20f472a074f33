//! `iroh-pair-lab`: runs iroh-pair's Python nodes in a simulated network and reports what
//! happened, as JSON lines on stdout.
//!
//! The network is built with n0's [`patchbay`] crate (Linux network namespaces, nftables NAT,
//! tc link conditions): a public host runs this project's relay (`iroh-pair-relay`, plain HTTP,
//! with QUIC address discovery under a throwaway lab CA) and address lookup server
//! (`iroh-pair-dns`, pkarr over HTTP plus DNS), and devices sit behind routers with a chosen
//! NAT kind. On each device the harness starts the Python agent
//! (`tests/lab_agent.py`) as a process; agents pair through the package's public API and print
//! JSON lines, which the harness forwards (tagged with the device's label) and reacts to.
//!
//! One scenario per invocation:
//!
//! ```text
//! iroh-pair-lab SCENARIO --python PYTHON --agent tests/lab_agent.py
//!     [--relay-bin PATH] [--dns-bin PATH] [--deadline SECS] [--minutes M] [--pairs N]
//!     [--outage SECS] [--outage-side join|host]
//!     [--interval SECS] [--faults] [--fault-every SECS] [--fault-kinds K,..] [--server-down SECS]
//! iroh-pair-lab list
//! ```
//!
//! Scenarios: see [`scenario::Scenario`]. Every output line is one JSON object with `src`
//! ("lab" or a device label), `t` (seconds since start) and `event`. The last line is either
//! `{"src":"lab","event":"result","ok":true,...}` (exit 0), or `{"event":"error","error":...}`
//! (exit 1; exit 3 when the deadline passed). On any exit every child process is killed and
//! the lab's namespaces are removed (patchbay does it when the `Lab` drops).
//!
//! Needs Linux, root or unprivileged user namespaces, and `nft`/`tc` on `$PATH`.

mod agent;
mod lan;
mod out;
mod scenario;
mod world;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::json;

use crate::out::emit;
use crate::scenario::Scenario;

const USAGE: &str = "usage: iroh-pair-lab SCENARIO --python PYTHON --agent AGENT.py \
[--relay-bin PATH] [--dns-bin PATH] [--deadline SECS] [--minutes M] [--pairs N] \
[--outage SECS] [--outage-side join|host] [--interval SECS] [--faults] [--fault-every SECS] [--fault-kinds K,..] \
[--server-down SECS]\n       iroh-pair-lab list";

/// The command line.
#[derive(Debug, Clone)]
pub struct Args {
    pub scenario: Scenario,
    pub python: PathBuf,
    pub agent: PathBuf,
    pub relay_bin: PathBuf,
    pub dns_bin: PathBuf,
    /// The whole run (lab setup included) must finish within this; then children are killed.
    pub deadline: Duration,
    /// Soak duration.
    pub minutes: f64,
    /// Soak: number of device pairs.
    pub pairs: usize,
    /// Outage: how long the link stays down.
    pub outage: Duration,
    /// Outage: which device loses its link ("join" or "host").
    pub outage_side: String,
    /// Soak: pause between a joiner's messages, seconds.
    pub interval: f64,
    /// Soak: inject the fault schedule (link outage, joiner killed and restarted, relay
    /// restarted, lookup server restarted, in turn).
    pub faults: bool,
    /// Soak: seconds between faults (0: the run's length / 5).
    pub fault_every: f64,
    /// Soak: the fault kinds, in the order they cycle (default: outage, kill, relay, dns).
    pub fault_kinds: Vec<String>,
    /// Soak: how long a restarted server stays down.
    pub server_down: Duration,
}

fn default_bin(name: &str, env: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return PathBuf::from(p);
    }
    // Next to this binary (target/release), as scripts/setup builds them all.
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        let p = dir.join(name);
        if p.is_file() {
            return p;
        }
    }
    PathBuf::from(name)
}

fn parse_args() -> Result<Option<Args>> {
    let mut it = std::env::args().skip(1);
    let first = it
        .next()
        .with_context(|| format!("missing scenario\n{USAGE}"))?;
    if first == "list" {
        for s in Scenario::ALL {
            println!("{}", json!({"scenario": s.name(), "about": s.about()}));
        }
        return Ok(None);
    }
    if first == "-h" || first == "--help" {
        println!("{USAGE}");
        return Ok(None);
    }
    let scenario =
        Scenario::parse(&first).with_context(|| format!("unknown scenario {first:?}\n{USAGE}"))?;
    let mut args = Args {
        scenario,
        python: PathBuf::from("python3"),
        agent: PathBuf::from("tests/lab_agent.py"),
        relay_bin: default_bin("iroh-pair-relay", "IROH_PAIR_RELAY_BIN"),
        dns_bin: default_bin("iroh-pair-dns", "IROH_PAIR_DNS_BIN"),
        deadline: Duration::ZERO,
        minutes: 1.0,
        pairs: 1,
        outage: Duration::from_secs(5),
        outage_side: "join".into(),
        interval: 0.02,
        faults: false,
        fault_every: 0.0,
        fault_kinds: ["outage", "kill", "relay", "dns"]
            .map(String::from)
            .to_vec(),
        server_down: Duration::from_secs(3),
    };
    let mut deadline = None;
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .with_context(|| format!("{name} needs a value\n{USAGE}"))
        };
        match a.as_str() {
            "--python" => args.python = value("--python")?.into(),
            "--agent" => args.agent = value("--agent")?.into(),
            "--relay-bin" => args.relay_bin = value("--relay-bin")?.into(),
            "--dns-bin" => args.dns_bin = value("--dns-bin")?.into(),
            "--deadline" => {
                deadline = Some(
                    value("--deadline")?
                        .parse::<f64>()
                        .context("bad --deadline")?,
                )
            }
            "--minutes" => args.minutes = value("--minutes")?.parse().context("bad --minutes")?,
            "--pairs" => args.pairs = value("--pairs")?.parse().context("bad --pairs")?,
            "--outage" => {
                args.outage =
                    Duration::from_secs_f64(value("--outage")?.parse().context("bad --outage")?)
            }
            "--outage-side" => args.outage_side = value("--outage-side")?,
            "--interval" => {
                args.interval = value("--interval")?.parse().context("bad --interval")?
            }
            "--faults" => args.faults = true,
            "--fault-every" => {
                args.fault_every = value("--fault-every")?
                    .parse()
                    .context("bad --fault-every")?
            }
            "--fault-kinds" => {
                args.fault_kinds = value("--fault-kinds")?
                    .split(',')
                    .map(|k| k.trim().to_string())
                    .collect();
                if let Some(bad) = args
                    .fault_kinds
                    .iter()
                    .find(|k| !matches!(k.as_str(), "outage" | "kill" | "relay" | "dns"))
                {
                    bail!("unknown fault kind {bad:?} (outage, kill, relay, dns)");
                }
            }
            "--server-down" => {
                args.server_down = Duration::from_secs_f64(
                    value("--server-down")?
                        .parse()
                        .context("bad --server-down")?,
                )
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    if args.minutes.is_nan() || args.minutes <= 0.0 || args.pairs == 0 {
        bail!("--minutes and --pairs must be positive");
    }
    if args.interval.is_nan()
        || args.interval < 0.0
        || args.fault_every.is_nan()
        || args.fault_every < 0.0
    {
        bail!("--interval and --fault-every must not be negative");
    }
    if args.fault_every == 0.0 {
        args.fault_every = args.minutes * 60.0 / 5.0;
    }
    if args.outage_side != "join" && args.outage_side != "host" {
        bail!("--outage-side must be join or host");
    }
    if !args.agent.is_file() {
        bail!("agent script {} not found", args.agent.display());
    }
    args.agent = std::fs::canonicalize(&args.agent)?;
    args.deadline =
        Duration::from_secs_f64(deadline.unwrap_or_else(|| args.scenario.default_deadline(&args)));
    Ok(Some(args))
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(Some(a)) => a,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            emit("lab", json!({"event": "error", "error": format!("{e:#}")}));
            return ExitCode::from(2);
        }
    };
    // patchbay needs a user namespace of its own (entered before any thread exists), also as
    // root: it refuses to touch the real root's mounts.
    if let Err(e) = patchbay::init_userns() {
        emit(
            "lab",
            json!({"event": "error", "error": format!("cannot enter a user namespace: {e:#}")}),
        );
        return ExitCode::from(2);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            emit(
                "lab",
                json!({"event": "error", "error": format!("tokio runtime: {e}")}),
            );
            return ExitCode::from(2);
        }
    };
    let code = rt.block_on(async move {
        let deadline = args.deadline;
        emit("lab", json!({"event": "start", "scenario": args.scenario.name(), "deadline_s": deadline.as_secs_f64()}));
        // Dropping the scenario future (on the deadline) drops its agents (killed) and its
        // lab (namespaces removed).
        match tokio::time::timeout(deadline, scenario::run(&args)).await {
            Ok(Ok(result)) => {
                emit("lab", json!({"event": "result", "ok": true, "scenario": args.scenario.name(), "result": result}));
                0
            }
            Ok(Err(e)) => {
                emit("lab", json!({"event": "error", "scenario": args.scenario.name(), "error": format!("{e:#}")}));
                1
            }
            Err(_) => {
                emit(
                    "lab",
                    json!({"event": "error", "scenario": args.scenario.name(),
                           "error": format!("deadline of {:.0} s exceeded; children killed", deadline.as_secs_f64())}),
                );
                3
            }
        }
    });
    // Give killed children and namespace workers a moment to be reaped before exiting.
    rt.shutdown_timeout(Duration::from_secs(5));
    ExitCode::from(code)
}
