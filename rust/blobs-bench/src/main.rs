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
//! Times are measured around the operations only (binding the endpoint and opening the store
//! are not in them).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use iroh::endpoint::{PortmapperConfig, presets};
use iroh::protocol::Router;
use iroh::{Endpoint, EndpointAddr, RelayMode};
use iroh_blobs::store::fs::FsStore;
use iroh_blobs::{BlobsProtocol, Hash, HashAndFormat};
use iroh_tickets::endpoint::EndpointTicket;
use serde_json::json;

const USAGE: &str = "usage:
  iroh-pair-blobs-bench provide PATH --store DIR
  iroh-pair-blobs-bench fetch TICKET HASH DEST --store DIR";

/// The endpoint of every mode: the settings the package uses on loopback.
async fn bind(alpns: Vec<Vec<u8>>) -> Result<Endpoint> {
    Endpoint::builder(presets::Minimal)
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

async fn provide(path: PathBuf, store: PathBuf) -> Result<()> {
    let path = std::path::absolute(path)?;
    let store = FsStore::load(&store).await?;
    let start = Instant::now();
    let tag = store.blobs().add_path(&path).with_tag().await?;
    let import_s = start.elapsed().as_secs_f64();
    let size = std::fs::metadata(&path)?.len();
    let ep = bind(vec![iroh_blobs::ALPN.to_vec()]).await?;
    let blobs = BlobsProtocol::new(&store, None);
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

async fn fetch(ticket: &str, hash: &str, dest: PathBuf, store: PathBuf) -> Result<()> {
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
    let size = store.blobs().export(hash, &dest).finish().await?;
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

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let pos: Vec<&String> = {
        let mut v = Vec::new();
        let mut i = 0;
        while i < args.len() {
            if args[i] == "--store" {
                i += 2;
                continue;
            }
            v.push(&args[i]);
            i += 1;
        }
        v
    };
    match pos.as_slice() {
        [mode, path] if *mode == "provide" => provide(path.into(), store_dir(&args)?).await,
        [mode, ticket, hash, dest] if *mode == "fetch" => {
            fetch(ticket, hash, dest.into(), store_dir(&args)?).await
        }
        _ => bail!("{USAGE}"),
    }
}
