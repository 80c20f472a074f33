//! `iroh-pair-node`: a peer on iroh directly, with no Python in it.
//!
//! A full iroh-pair/1 node (pairing as host or joiner, sealed messaging, a state directory)
//! for the cross-language interop tests, plus the raw modes that are the performance ceiling
//! of the benchmarks (`bench`) and the transport tests' peer (`echo`, `send-raw`). Output is
//! JSON lines on stdout, logs on stderr. Relays, address lookup and the portmapper are off
//! unless configured; the default bind address is 127.0.0.1.

mod admission;
mod bench;
mod code;
mod delivered;
#[cfg(test)]
mod fuzz;
mod kdf;
mod messaging;
mod node;
mod pairing;
mod state;
#[cfg(test)]
mod vectors;
mod wire;
mod words;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::json;

use crate::node::{Fault, HostEvent, NetConfig, Node, Reply, emit, parse_id};
use crate::state::{StateDir, hex};
use crate::wire::{DeviceInfo, reject, stream};

const NODE_USAGE: &str = "
  iroh-pair-node host [--words N] [--ttl SECS] [--serve] [--then-request TEXT] [OPTIONS]
      host a pairing code: prints {\"event\":\"code\",...}, then paired/failed events
  iroh-pair-node join CODE [--serve] [--then-request TEXT] [--timeout SECS] [OPTIONS]
      pair with the host of CODE
  iroh-pair-node serve [OPTIONS]
      answer messages from paired devices (\"msg\": the reply is \"rust got \" + message)
  iroh-pair-node send DEVICE TEXT [OPTIONS]
  iroh-pair-node request DEVICE TEXT [--tamper | --replay] [OPTIONS]
      DEVICE is an EndpointId (hex); prints the reply, or the stream error code of a refusal
  iroh-pair-node devices [OPTIONS]
  iroh-pair-node unpair DEVICE [OPTIONS]
      remove a paired device and forget its delivered message ids
  OPTIONS: --state DIR  --name NAME  --device-type TYPE  --peer-addr TICKET  --relay URL
           --pkarr-url URL  --dns-origin ORIGIN  --dns-server ADDR  --bind ADDR
           --confirm yes|no  (the answer to \"do both screens show this SAS?\", default yes;
                              the SAS is printed as {\"event\":\"sas\",...} either way)";

/// Options that take a value (everything else starting with `--` is a flag).
const VALUED: &[&str] = &[
    "--state",
    "--name",
    "--device-type",
    "--os",
    "--app-version",
    "--peer-addr",
    "--relay",
    "--pkarr-url",
    "--dns-origin",
    "--dns-server",
    "--bind",
    "--words",
    "--ttl",
    "--timeout",
    "--then-request",
    "--alpn",
    "--bytes",
    "--count",
    "--mib",
    "--confirm",
];

struct Args {
    positional: Vec<String>,
    all: Vec<String>,
}

impl Args {
    fn parse(all: Vec<String>) -> Result<Self> {
        let mut positional = Vec::new();
        let mut i = 0;
        while i < all.len() {
            let a = &all[i];
            if VALUED.contains(&a.as_str()) {
                if i + 1 >= all.len() {
                    bail!("{a} needs a value");
                }
                i += 2;
                continue;
            }
            if !a.starts_with("--") {
                positional.push(a.clone());
            }
            i += 1;
        }
        Ok(Self { positional, all })
    }

    fn get(&self, name: &str) -> Option<String> {
        bench::arg(&self.all, name)
    }

    fn flag(&self, name: &str) -> bool {
        self.all.iter().any(|a| a == name)
    }

    fn pos(&self, i: usize, what: &str) -> Result<String> {
        self.positional
            .get(i)
            .cloned()
            .with_context(|| format!("missing {what}"))
    }
}

fn usage() -> ! {
    eprintln!("{}{NODE_USAGE}", bench::USAGE);
    std::process::exit(2);
}

#[tokio::main]
async fn main() -> Result<()> {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    match raw.first().map(String::as_str) {
        Some("echo") => {
            bench::echo(bench::arg(&raw, "--alpn").context("--alpn is required")?).await
        }
        Some("send-raw") => {
            let ticket = raw.get(1).context("send-raw needs a TICKET")?;
            let alpn = bench::arg(&raw, "--alpn").context("--alpn is required")?;
            let n: u64 = bench::arg(&raw, "--bytes")
                .unwrap_or("1000".into())
                .parse()?;
            bench::send_raw(ticket, alpn, n).await
        }
        Some("bench-server") => {
            bench::bench_server(raw.get(1).context("bench-server needs a WORKLOAD")?).await
        }
        Some("bench-online") => bench::bench_online(&raw).await,
        Some("bench") => {
            let workload = raw.get(1).context("bench needs a WORKLOAD")?.clone();
            let count: usize = bench::arg(&raw, "--count")
                .unwrap_or("2000".into())
                .parse()?;
            let mib: usize = bench::arg(&raw, "--mib").unwrap_or("64".into()).parse()?;
            bench::bench(&workload, count, mib).await
        }
        Some(mode @ ("host" | "join" | "serve" | "send" | "request" | "devices" | "unpair")) => {
            let mode = mode.to_owned();
            let args = Args::parse(raw[1..].to_vec())?;
            let code = match run(&mode, &args).await {
                Ok(code) => code,
                Err(e) => {
                    emit(json!({"event": "error", "reason": format!("{e:#}")}));
                    1
                }
            };
            std::process::exit(code);
        }
        _ => usage(),
    }
}

fn failed_json(code: u16, reason: &str, by_peer: bool) -> serde_json::Value {
    json!({"event": "failed", "code": code, "name": reject::name(code), "reason": reason, "by_peer": by_peer})
}

async fn run(mode: &str, args: &Args) -> Result<i32> {
    let state = match args.get("--state") {
        Some(dir) => Some(StateDir::open(&PathBuf::from(dir))?),
        None => None,
    };
    let info = DeviceInfo {
        name: args
            .get("--name")
            .unwrap_or_else(|| "iroh-pair-node".into()),
        device_type: args.get("--device-type").unwrap_or_else(|| "other".into()),
        os: args
            .get("--os")
            .unwrap_or_else(|| std::env::consts::OS.into()),
        app_version: args
            .get("--app-version")
            .unwrap_or_else(|| env!("CARGO_PKG_VERSION").into()),
    };
    let net = NetConfig {
        relay: args.get("--relay"),
        pkarr_url: args.get("--pkarr-url"),
        dns_origin: args.get("--dns-origin"),
        dns_server: args.get("--dns-server"),
        bind: args.get("--bind"),
    };
    let confirm = match args.get("--confirm").as_deref() {
        None | Some("yes") => true,
        Some("no") => false,
        Some(other) => bail!("--confirm takes yes or no, not {other:?}"),
    };
    let (node, mut host_events) = Node::open(state, info, &net, confirm).await?;
    if let Some(t) = args.get("--peer-addr") {
        node.add_hint(&t)?;
    }
    emit(json!({"event": "ready", "id": hex(&node.id), "ticket": node.ticket()}));
    let serve = args.flag("--serve");
    let then_request = args.get("--then-request");
    let code = match mode {
        "host" => {
            let words: usize = args
                .get("--words")
                .map_or(Ok(words::DEFAULT_WORD_COUNT), |w| w.parse())?;
            let ttl = Duration::from_secs_f64(args.get("--ttl").unwrap_or("300".into()).parse()?);
            let code = node.host_pairing(words, ttl)?;
            emit(json!({"event": "code", "code": code.to_string()}));
            let expiry = tokio::time::sleep(ttl);
            tokio::pin!(expiry);
            loop {
                tokio::select! {
                    ev = host_events.recv() => match ev {
                        Some(HostEvent::Paired(r)) => {
                            let mut line = node.paired_json(&r);
                            line["stats"] = node.stats();
                            emit(line);
                            if let Some(text) = &then_request {
                                print_replies(&node, r.peer_id, text.as_bytes(), Fault::None).await?;
                            }
                            break 0;
                        }
                        Some(HostEvent::Failed(f)) => {
                            emit(failed_json(f.code, &f.reason, f.by_peer));
                            if let Some(end) = node.offer_end(&code.tag) {
                                emit(json!({"event": "offer_ended", "code": end, "name": reject::name(end)}));
                                if !f.by_peer {
                                    // our Reject was just written: let it reach the joiner
                                    // before the process exits and closes the connection
                                    tokio::time::sleep(crate::node::GRACE).await;
                                }
                                break 1;
                            }
                        }
                        None => break 1,
                    },
                    () = &mut expiry => {
                        emit(json!({"event": "offer_ended", "code": reject::EXPIRED, "name": "EXPIRED"}));
                        break 1;
                    }
                }
            }
        }
        "join" => {
            let text = args.pos(0, "CODE")?;
            let timeout =
                Duration::from_secs_f64(args.get("--timeout").unwrap_or("60".into()).parse()?);
            match node.join(&text, timeout).await? {
                Ok((r, _conn)) => {
                    let mut line = node.paired_json(&r);
                    line["stats"] = node.stats();
                    emit(line);
                    if let Some(text) = &then_request {
                        print_replies(&node, r.peer_id, text.as_bytes(), Fault::None).await?;
                    }
                    0
                }
                Err(f) => {
                    emit(failed_json(f.code, &f.reason, f.by_peer));
                    1
                }
            }
        }
        "serve" => {
            std::future::pending::<()>().await;
            0
        }
        "send" | "request" => {
            let peer = parse_id(&args.pos(0, "DEVICE")?)?;
            let text = args.pos(1, "TEXT")?;
            let debug = if args.flag("--tamper") {
                Fault::Tamper
            } else if args.flag("--replay") {
                Fault::Replay
            } else {
                Fault::None
            };
            print_replies(&node, peer, text.as_bytes(), debug).await?;
            0
        }
        "devices" => {
            for d in node.devices() {
                emit(
                    json!({"event": "device", "id": d.endpoint_id, "name": d.name, "device_type": d.device_type, "sas": d.sas}),
                );
            }
            0
        }
        "unpair" => {
            let peer = parse_id(&args.pos(0, "DEVICE")?)?;
            let removed = node.unpair(&peer)?;
            emit(json!({"event": "unpaired", "id": hex(&peer), "removed": removed}));
            if removed { 0 } else { 1 }
        }
        _ => usage(),
    };
    if serve && code == 0 && matches!(mode, "host" | "join") {
        emit(json!({"event": "serving", "stats": node.stats()}));
        std::future::pending::<()>().await;
    }
    emit(json!({"event": "done", "stats": node.stats()}));
    let _ = tokio::time::timeout(Duration::from_secs(2), node.ep.close()).await;
    Ok(code)
}

async fn print_replies(node: &Arc<Node>, peer: [u8; 32], data: &[u8], debug: Fault) -> Result<()> {
    for reply in node.request(peer, data, debug).await? {
        match reply {
            Reply::Ok(r) => emit(json!({
                "event": "reply",
                "peer": hex(&peer),
                "text": String::from_utf8_lossy(&r),
                "stats": node.stats(),
            })),
            Reply::Refused(code) => emit(json!({
                "event": "refused",
                "peer": hex(&peer),
                "code": code,
                "name": stream::name(code),
                "stats": node.stats(),
            })),
        }
    }
    Ok(())
}
