//! `iroh-pair-blobs-bench`: plain Rust `iroh-blobs` with no Python in it, the reference of the
//! files benchmark (`bench/files.py`). It does the work the package's `send_file` does, on the
//! same iroh endpoint settings (the `Minimal` preset, 127.0.0.1, relays, address lookup and
//! portmapper off):
//!
//! - `provide PATH --store DIR`: imports PATH into an `FsStore` in DIR (copied and hashed, as
//!   the package's import), serves it on the blobs ALPN through iroh's `Router` and
//!   `BlobsProtocol` (no event interception), prints one JSON line
//!   `{"event":"ready","id","addrs","ticket","hash","size","import_s"}`, serves until stdin
//!   closes;
//! - `fetch TICKET HASH DEST --store DIR`: dials the provider at TICKET (an `EndpointTicket`),
//!   fetches HASH into its own `FsStore` in DIR (`remote().fetch`, verified), exports it to
//!   DEST (a copy, as the package's export), prints
//!   `{"event":"done","size","bytes_read","fetch_s","fetch_stats_s","export_s","total_s",
//!   "vmhwm_kib"}` (`fetch_s` from the dial to the end of the fetch, `fetch_stats_s` iroh-blobs'
//!   own `Stats::elapsed` of the request, `vmhwm_kib` this process's peak RSS).
//!
//! - `attack TICKET HASH MODE [--key HEX | --key-file PATH] [--other HASH]`: a raw iroh-blobs
//!   client asking a provider for what the package's provider must refuse (tests/
//!   test_files_attack.py; see `attack.rs`).
//!
//! Times are measured around the operations only (binding the endpoint and opening the store
//! are not in them).
//!
//! Two options reproduce the package's set-up, to find where a difference comes from:
//! `--workers N` runs the main tokio runtime on N worker threads (default: one per core; the
//! package's default is one per core but one; with `--spawn` the work runs in a task on those
//! workers, as the package's bridge runs it, instead of on the main thread as `block_on` runs a
//! program's main future), and `provide --events package` serves through
//! an intercepting `EventSender` with the package's event mask (connections and get requests
//! answered by a task, every progress update of a request read and recorded under a mutex, as
//! `rust/iroh-pair-native/src/files.rs` does) instead of no events. `provide --import
//! reference` and `fetch --export reference` use iroh-blobs' `TryReference` modes instead of
//! `Copy` (the import hashes the file where it is; the export moves the store's data file to
//! the destination within one file system): what the copies cost.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use iroh::endpoint::{PortmapperConfig, presets};
use iroh::protocol::Router;
use iroh::{Endpoint, EndpointAddr, RelayMode};
use iroh_blobs::api::blobs::{AddPathOptions, ExportMode, ExportOptions, ImportMode};
use iroh_blobs::provider::events::{
    AbortReason, ConnectMode, EventMask, EventSender, ObserveMode, ProviderMessage, RequestMode,
    RequestUpdate, ThrottleMode,
};
use iroh_blobs::store::fs::FsStore;
use iroh_blobs::{BlobFormat, BlobsProtocol, Hash, HashAndFormat};
use iroh_tickets::endpoint::EndpointTicket;
use serde_json::json;

mod attack;

const USAGE: &str = "usage:
  iroh-pair-blobs-bench provide PATH --store DIR [--events none|package] [--import copy|reference]
                       [--workers N] [--spawn]
  iroh-pair-blobs-bench fetch TICKET HASH DEST --store DIR [--export copy|reference] [--workers N]
                       [--spawn]
  iroh-pair-blobs-bench attack TICKET HASH MODE [--key HEX | --key-file PATH] [--other HASH]
                       (MODE: get-blob get-other get-hashseq get-ranges-children get-many push
                        observe)";

/// Options that take a value.
const VALUED: &[&str] = &[
    "--store",
    "--events",
    "--workers",
    "--import",
    "--export",
    "--key",
    "--key-file",
    "--other",
];

/// `--import`/`--export`: copy (the default, as the package) or reference.
fn by_reference(args: &[String], name: &str) -> Result<bool> {
    match opt(args, name).as_deref() {
        None | Some("copy") => Ok(false),
        Some("reference") => Ok(true),
        Some(other) => bail!("{name} copy|reference, not {other:?}"),
    }
}

fn opt(args: &[String], name: &str) -> Option<String> {
    let i = args.iter().position(|a| a == name)?;
    args.get(i + 1).cloned()
}

/// The events the package intercepts (rust/iroh-pair-native/src/files.rs, `MASK`).
const PACKAGE_MASK: EventMask = EventMask {
    connected: ConnectMode::Intercept,
    get: RequestMode::InterceptLog,
    get_many: RequestMode::Disabled,
    push: RequestMode::Disabled,
    observe: ObserveMode::Intercept,
    throttle: ThrottleMode::None,
};

/// Answers the provider's events as the package's `police` task does (everything allowed here:
/// the cost of the interception is what is measured, not the policy).
async fn answer_events(mut rx: tokio::sync::mpsc::Receiver<ProviderMessage>) {
    let sent: Arc<Mutex<HashMap<u64, u64>>> = Arc::default();
    while let Some(msg) = rx.recv().await {
        match msg {
            ProviderMessage::ClientConnected(msg) => {
                msg.tx.send(Ok(())).await.ok();
            }
            ProviderMessage::GetRequestReceived(msg) => {
                let (mut updates, sent, id) = (msg.rx, sent.clone(), msg.inner.request_id);
                tokio::spawn(async move {
                    while let Ok(Some(update)) = updates.recv().await {
                        let end = match update {
                            RequestUpdate::Progress(p) => p.end_offset,
                            RequestUpdate::Started(_) => continue,
                            _ => break,
                        };
                        let mut s = sent.lock().expect("poisoned");
                        let e = s.entry(id).or_default();
                        *e = (*e).max(end);
                    }
                });
                msg.tx.send(Ok(())).await.ok();
            }
            ProviderMessage::GetManyRequestReceived(msg) => {
                msg.tx.send(Err(AbortReason::Permission)).await.ok();
            }
            ProviderMessage::PushRequestReceived(msg) => {
                msg.tx.send(Err(AbortReason::Permission)).await.ok();
            }
            ProviderMessage::ObserveRequestReceived(msg) => {
                msg.tx.send(Err(AbortReason::Permission)).await.ok();
            }
            ProviderMessage::Throttle(msg) => {
                msg.tx.send(Ok(())).await.ok();
            }
            _ => {}
        }
    }
}

/// The endpoint of every mode: the settings the package uses on loopback.
async fn bind(alpns: Vec<Vec<u8>>) -> Result<Endpoint> {
    bind_as(alpns, None).await
}

/// `bind`, as `key` (else a fresh key).
async fn bind_as(alpns: Vec<Vec<u8>>, key: Option<iroh::SecretKey>) -> Result<Endpoint> {
    let mut builder = Endpoint::builder(presets::Minimal);
    if let Some(key) = key {
        builder = builder.secret_key(key);
    }
    builder
        .alpns(alpns)
        .relay_mode(RelayMode::Disabled)
        .portmapper_config(PortmapperConfig::Disabled)
        .clear_ip_transports()
        .bind_addr("127.0.0.1:0")?
        .bind()
        .await
        .context("binding the endpoint")
}

fn store_dir(args: &[String]) -> Result<PathBuf> {
    let i = args
        .iter()
        .position(|a| a == "--store")
        .context("--store DIR is required")?;
    let dir = PathBuf::from(args.get(i + 1).context("--store needs a value")?);
    Ok(std::path::absolute(dir)?)
}

async fn provide(
    path: PathBuf,
    store: PathBuf,
    package_events: bool,
    reference: bool,
) -> Result<()> {
    let path = std::path::absolute(path)?;
    let store = FsStore::load(&store).await?;
    let start = Instant::now();
    let mode = if reference {
        ImportMode::TryReference
    } else {
        ImportMode::Copy
    };
    let tag = store
        .blobs()
        .add_path_with_opts(AddPathOptions {
            path: path.clone(),
            format: BlobFormat::Raw,
            mode,
        })
        .with_tag()
        .await?;
    let import_s = start.elapsed().as_secs_f64();
    let size = std::fs::metadata(&path)?.len();
    let ep = bind(vec![iroh_blobs::ALPN.to_vec()]).await?;
    let events = if package_events {
        let (events, rx) = EventSender::channel(64, PACKAGE_MASK);
        tokio::spawn(answer_events(rx));
        Some(events)
    } else {
        None
    };
    let blobs = BlobsProtocol::new(&store, events);
    let router = Router::builder(ep.clone())
        .accept(iroh_blobs::ALPN, blobs)
        .spawn();
    let addr = ep.addr();
    let addrs: Vec<String> = addr.ip_addrs().map(|a| a.to_string()).collect();
    println!(
        "{}",
        json!({
            "event": "ready", "id": ep.id().to_string(), "addrs": addrs,
            "ticket": EndpointTicket::new(addr).to_string(),
            "hash": tag.hash.to_hex().to_string(), "size": size, "import_s": import_s,
        })
    );
    let mut sink = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut tokio::io::stdin(), &mut sink).await?;
    router.shutdown().await?;
    Ok(())
}

async fn fetch(
    ticket: &str,
    hash: &str,
    dest: PathBuf,
    store: PathBuf,
    reference: bool,
) -> Result<()> {
    let addr: EndpointAddr = ticket.parse::<EndpointTicket>()?.into();
    let hash: Hash = hash.parse().context("bad hash")?;
    let dest = std::path::absolute(dest)?;
    let store = FsStore::load(&store).await?;
    let ep = bind(vec![]).await?;
    let start = Instant::now();
    let conn = ep.connect(addr, iroh_blobs::ALPN).await?;
    let stats = store
        .remote()
        .fetch(conn.clone(), HashAndFormat::raw(hash))
        .complete()
        .await?;
    let fetch_s = start.elapsed().as_secs_f64();
    conn.close(0u32.into(), b"done");
    if !store.blobs().has(hash).await? {
        bail!("the fetch ended before the whole blob arrived");
    }
    let t = Instant::now();
    let mode = if reference {
        ExportMode::TryReference
    } else {
        ExportMode::Copy
    };
    let size = store
        .blobs()
        .export_with_opts(ExportOptions {
            hash,
            mode,
            target: dest.clone(),
        })
        .finish()
        .await?;
    let export_s = t.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({
            "event": "done", "size": size, "bytes_read": stats.total_bytes_read(),
            "fetch_s": fetch_s, "fetch_stats_s": stats.elapsed.as_secs_f64(),
            "export_s": export_s, "total_s": start.elapsed().as_secs_f64(),
            "vmhwm_kib": vmhwm_kib(),
        })
    );
    store.shutdown().await?;
    ep.close().await;
    Ok(())
}

/// This process's peak resident set size in KiB (VmHWM of /proc/self/status; 0 if unreadable).
fn vmhwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut pos: Vec<&String> = Vec::new();
    let mut i = 0;
    while i < args.len() {
        if VALUED.contains(&args[i].as_str()) {
            i += 2;
            continue;
        }
        if args[i] == "--spawn" {
            i += 1;
            continue;
        }
        pos.push(&args[i]);
        i += 1;
    }
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(n) = opt(&args, "--workers") {
        rt.worker_threads(n.parse().context("--workers N")?);
    }
    let rt = rt.build()?;
    let spawn = args.iter().any(|a| a == "--spawn");
    let package_events = match opt(&args, "--events").as_deref() {
        None | Some("none") => false,
        Some("package") => true,
        Some(other) => bail!("--events none|package, not {other:?}"),
    };
    let pos: Vec<String> = pos.into_iter().cloned().collect();
    let work = async move {
        match pos
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .as_slice()
        {
            ["provide", path] => {
                let reference = by_reference(&args, "--import")?;
                provide(path.into(), store_dir(&args)?, package_events, reference).await
            }
            ["fetch", ticket, hash, dest] => {
                let reference = by_reference(&args, "--export")?;
                fetch(ticket, hash, dest.into(), store_dir(&args)?, reference).await
            }
            ["attack", ticket, hash, mode] => {
                let key = attack::secret_key(opt(&args, "--key"), opt(&args, "--key-file"))?;
                let other = opt(&args, "--other");
                attack::attack(ticket, hash, mode, key, other.as_deref()).await
            }
            _ => bail!("{USAGE}"),
        }
    };
    if spawn {
        // on the runtime's workers, as the package's bridge runs every operation
        rt.block_on(async { tokio::spawn(work).await? })
    } else {
        // on the main thread (`block_on`), as `#[tokio::main]` runs a program's main future
        rt.block_on(work)
    }
}
