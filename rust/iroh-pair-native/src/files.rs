//! `BlobStore`: files between paired devices, on n0's `iroh-blobs` (BLAKE3-verified streaming
//! into a file-system store). File bytes go from disk to QUIC and from QUIC to disk here, in
//! Rust; Python sees hashes, sizes, progress and results only.
//!
//! Serving: `Endpoint.serve_blobs(store)` adds the blobs ALPN to the endpoint, and its accept
//! loop hands every connection on that ALPN to `iroh_blobs::provider::handle_connection`
//! (Python never sees them). Access goes through the provider events, intercepted here: a
//! connection from an EndpointId with no offer is closed before any request is read; a get
//! request is served only for a hash offered to the requesting EndpointId (and only as a single
//! blob: no hash-sequence children, no get-many, no push, no observe).
//!
//! Fetching: `BlobStore.fetch` takes this store's connection to the peer on the blobs ALPN
//! (one per peer, dialed on first use, reused by the next fetches, closed `LINGER` after the
//! last), downloads what the store is missing of the hash (every chunk group verified before
//! it is written), then exports the verified content under a temporary name beside the
//! destination and links it into place without overwriting anything.
//!
//! The store keeps only what is in use. A sent file is referenced where it is (hashed in place,
//! not copied: the provider's validated reads refuse content that changed since), and kept in
//! the store's index while an offer of it lives. A fetch's data is kept under a `partial` tag
//! until it is exported (so a cut transfer resumes, also after a restart; tags older than
//! `PARTIAL_KEEP` are dropped at open). iroh-blobs' garbage collection removes everything else
//! every `gc_interval` (a received file then costs its size once, not twice; a referenced
//! file is never deleted, only forgotten).
//!
//! ```python
//! hash, size = await call(store.add_path, "/abs/file")   # through iroh_pair.files
//! store.allow(peer_id, hash)
//! ```

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use iroh_blobs::BlobFormat;
use iroh_blobs::api::Store;
use iroh_blobs::api::blobs::{AddPathOptions, BlobStatus, ImportMode};
use iroh_blobs::api::remote::GetProgressItem;
use iroh_blobs::provider::events::{
    AbortReason, ConnectMode, EventMask, EventSender, ObserveMode, ProviderMessage, RequestMode,
    RequestUpdate, ThrottleMode,
};
use iroh_blobs::store::fs::FsStore;
use iroh_blobs::store::fs::options::Options;
use iroh_blobs::store::{GcConfig, ProtectCb, ProtectOutcome};
use iroh_blobs::{Hash, HashAndFormat};
use n0_future::StreamExt;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::bridge::Bridge;
use crate::counters::Counters;
use crate::error::{Error, n0_error_chain};
use crate::keys::EndpointId;
use crate::outcome::{ClassOut, Plain, out};
use crate::runtime::{RUNTIME, on_blobs_runtime};
use crate::sync::lock;

/// The ALPN of iroh-blobs (`/iroh-bytes/4`).
pub const BLOBS_ALPN: &[u8] = iroh_blobs::ALPN;

/// How often a fetch reports its progress at most.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_millis(50);

/// The close code of a blobs connection refused by the provider (iroh-blobs' `ERR_PERMISSION`).
const ERR_PERMISSION: u64 = 1;

/// How long an unused blobs connection to a peer stays open for the next fetch (the files of a
/// directory, one send after another): one connection per peer and ALPN, reused.
const LINGER: std::time::Duration = std::time::Duration::from_secs(5);

/// The prefix of the tags that keep a fetch's data (complete or not) until it is exported:
/// `iroh-pair/partial/<hash>/<unix seconds>`.
const PARTIAL_TAG: &str = "iroh-pair/partial/";

/// How long the data of a fetch that never completed is kept for a resume (checked when the
/// store opens: a node that runs longer keeps it until its next start).
const PARTIAL_KEEP: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// How long an import keeps its file in the store's index (a temp tag, seen by every
/// collection): until the offer holds it (the sender grants each file right after its import),
/// with a margin.
const IMPORT_HOLD: std::time::Duration = std::time::Duration::from_secs(5);

/// What garbage collection must keep besides the tags: files imported and not yet offered, and
/// blobs being fetched (the offers are in `Access`).
#[derive(Default)]
struct Keep {
    /// the temp tag of each import of the last `IMPORT_HOLD`, and when it ended
    imported: Vec<(iroh_blobs::api::TempTag, std::time::Instant)>,
    /// fetches running per hash
    fetching: HashMap<Hash, usize>,
    /// whether something may have become garbage since the last collection (a run costs a
    /// database commit: an idle store skips them)
    dirty: bool,
}

/// One running fetch of a hash, counted in `Keep::fetching` until dropped.
struct Fetching {
    keep: Arc<Mutex<Keep>>,
    hash: Hash,
}

impl Fetching {
    fn new(keep: &Arc<Mutex<Keep>>, hash: Hash) -> Self {
        *lock(keep).fetching.entry(hash).or_default() += 1;
        Fetching {
            keep: keep.clone(),
            hash,
        }
    }
}

impl Drop for Fetching {
    fn drop(&mut self) {
        let mut k = lock(&self.keep);
        k.dirty = true;
        if let Some(n) = k.fetching.get_mut(&self.hash) {
            *n -= 1;
            if *n == 0 {
                k.fetching.remove(&self.hash);
            }
        }
    }
}

/// The garbage collector's callback: the hashes offered, imported for an offer, or being
/// fetched are live (tagged ones are anyway). A run with nothing new to collect is skipped.
fn protect(access: Arc<Mutex<Access>>, keep: Arc<Mutex<Keep>>) -> ProtectCb {
    Arc::new(move |live: &mut HashSet<Hash>| {
        let outcome = {
            let mut k = lock(&keep);
            let held = k.imported.len();
            // (the temp tags protect themselves; the offer holds the file by now)
            k.imported.retain(|(_, at)| at.elapsed() < IMPORT_HOLD);
            if std::mem::take(&mut k.dirty) || k.imported.len() < held {
                live.extend(k.imported.iter().map(|(t, _)| t.hash()));
                live.extend(k.fetching.keys().copied());
                for set in lock(&access).offers.values() {
                    live.extend(set.iter().copied());
                }
                ProtectOutcome::Continue
            } else {
                ProtectOutcome::Abort
            }
        };
        Box::pin(std::future::ready(outcome))
    })
}

fn partial_prefix(hash: &Hash) -> String {
    format!("{PARTIAL_TAG}{}/", hash.to_hex())
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// At open: drops every tag but the fetches' partial ones younger than `PARTIAL_KEEP` (tags of
/// earlier versions of this package kept every file sent or received in the store for good).
async fn expire_tags(store: &Store) -> Result<(), Error> {
    let err =
        |e: &dyn std::fmt::Display| Error::Transfer(format!("cannot read the store's tags: {e}"));
    let mut tags = store.tags().list().await.map_err(|e| err(&e))?;
    let mut stale = Vec::new();
    let now = unix_now();
    while let Some(tag) = tags.next().await {
        let tag = tag.map_err(|e| err(&e))?;
        let name = String::from_utf8_lossy(tag.name.as_ref()).into_owned();
        let keep = name
            .strip_prefix(PARTIAL_TAG)
            .and_then(|rest| rest.rsplit_once('/'))
            .and_then(|(_, t)| t.parse::<u64>().ok())
            .is_some_and(|t| now.saturating_sub(t) < PARTIAL_KEEP.as_secs());
        if !keep {
            stale.push(tag.name);
        }
    }
    for name in stale {
        store.tags().delete(name).await.map_err(|e| err(&e))?;
    }
    Ok(())
}

/// The blobs connections this store fetches over: one per peer, shared by the fetches running
/// on it, closed `LINGER` after the last one ended.
#[derive(Default)]
struct Pool {
    conns: HashMap<iroh::EndpointId, Pooled>,
}

struct Pooled {
    conn: iroh::endpoint::Connection,
    users: usize,
}

/// A fetch's use of a pooled connection. Dropping it (the fetch ended, failed or was
/// cancelled) gives the connection back; the last user leaves it open for `LINGER`.
struct Lease {
    pool: Arc<Mutex<Pool>>,
    peer: iroh::EndpointId,
    conn: iroh::endpoint::Connection,
}

impl Lease {
    /// A live pooled connection to `addr`'s peer, else a new one (`reused` says which).
    async fn take(
        pool: &Arc<Mutex<Pool>>,
        ep: &iroh::Endpoint,
        addr: iroh::EndpointAddr,
        counters: &Counters,
    ) -> Result<(Lease, bool), Error> {
        let peer = addr.id;
        let lease = |conn: iroh::endpoint::Connection| Lease {
            pool: pool.clone(),
            peer,
            conn,
        };
        if let Some(p) = lock(pool).conns.get_mut(&peer)
            && p.conn.close_reason().is_none()
        {
            p.users += 1;
            return Ok((lease(p.conn.clone()), true));
        }
        let conn = ep
            .connect(addr, BLOBS_ALPN)
            .await
            .map_err(|e| Error::Connect(n0_error_chain(&e)))?;
        Counters::bump(&counters.conns_dialed);
        let mut guard = lock(pool);
        if let Some(p) = guard.conns.get_mut(&peer)
            && p.conn.close_reason().is_none()
        {
            // another fetch dialed meanwhile: keep one connection
            conn.close(0u32.into(), b"duplicate");
            p.users += 1;
            return Ok((lease(p.conn.clone()), true));
        }
        guard.conns.insert(
            peer,
            Pooled {
                conn: conn.clone(),
                users: 1,
            },
        );
        Ok((lease(conn), false))
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let id = self.conn.stable_id();
        let mut guard = lock(&self.pool);
        let Some(p) = guard.conns.get_mut(&self.peer) else {
            return;
        };
        if p.conn.stable_id() != id {
            return;
        }
        p.users -= 1;
        if p.users > 0 {
            return;
        }
        if self.conn.close_reason().is_some() {
            guard.conns.remove(&self.peer);
            return;
        }
        drop(guard);
        let (pool, peer) = (self.pool.clone(), self.peer);
        RUNTIME.spawn(async move {
            tokio::time::sleep(LINGER).await;
            let mut guard = lock(&pool);
            if guard
                .conns
                .get(&peer)
                .is_some_and(|p| p.users == 0 && p.conn.stable_id() == id)
                && let Some(p) = guard.conns.remove(&peer)
            {
                p.conn.close(0u32.into(), b"done");
            }
        });
    }
}

/// What the provider serves, and to whom: hashes offered per EndpointId, and the EndpointId of
/// each live connection (the provider's requests name only their connection).
#[derive(Default)]
struct Access {
    offers: HashMap<iroh::EndpointId, HashSet<Hash>>,
    conns: HashMap<u64, iroh::EndpointId>,
    /// Bytes of each offered blob sent to its peer so far (the highest end offset reported).
    sent: HashMap<(iroh::EndpointId, Hash), u64>,
}

/// The provider's counters, for tests and stats.
#[derive(Default)]
struct Served {
    connections_refused: AtomicU64,
    requests_refused: AtomicU64,
    requests_allowed: AtomicU64,
}

/// What an endpoint needs to serve blobs: the store and the intercepting event sender.
#[derive(Clone)]
pub struct Provider {
    pub store: Store,
    pub events: EventSender,
}

/// The events we intercept: connections and get requests; everything else is refused.
const MASK: EventMask = EventMask {
    connected: ConnectMode::Intercept,
    get: RequestMode::InterceptLog,
    get_many: RequestMode::Disabled,
    push: RequestMode::Disabled,
    observe: ObserveMode::Intercept,
    throttle: ThrottleMode::None,
};

/// Answers the provider's events from the access table until every sender is gone.
async fn police(
    mut rx: tokio::sync::mpsc::Receiver<ProviderMessage>,
    access: Arc<Mutex<Access>>,
    served: Arc<Served>,
) {
    while let Some(msg) = rx.recv().await {
        match msg {
            ProviderMessage::ClientConnected(msg) => {
                let verdict = {
                    let mut a = lock(&access);
                    match msg.inner.endpoint_id {
                        Some(id) if a.offers.get(&id).is_some_and(|s| !s.is_empty()) => {
                            a.conns.insert(msg.inner.connection_id, id);
                            Ok(())
                        }
                        _ => Err(AbortReason::Permission),
                    }
                };
                if verdict.is_err() {
                    served.connections_refused.fetch_add(1, Ordering::Relaxed);
                }
                msg.tx.send(verdict).await.ok();
            }
            ProviderMessage::ConnectionClosed(msg) => {
                lock(&access).conns.remove(&msg.inner.connection_id);
            }
            ProviderMessage::GetRequestReceived(msg) => {
                let hash = msg.inner.request.hash;
                let peer = {
                    let a = lock(&access);
                    a.conns
                        .get(&msg.inner.connection_id)
                        .copied()
                        .filter(|id| a.offers.get(id).is_some_and(|s| s.contains(&hash)))
                };
                // one raw blob only: children of a hash sequence would be other blobs
                let verdict = match peer {
                    Some(peer) if msg.inner.request.ranges.is_blob() => {
                        // how far the transfer got, from the request's updates
                        let (mut rx, access) = (msg.rx, access.clone());
                        RUNTIME.spawn(async move {
                            while let Ok(Some(update)) = rx.recv().await {
                                let end = match update {
                                    RequestUpdate::Progress(p) => p.end_offset,
                                    RequestUpdate::Started(_) => continue,
                                    _ => break,
                                };
                                let mut a = lock(&access);
                                if a.offers.get(&peer).is_some_and(|s| s.contains(&hash)) {
                                    let e = a.sent.entry((peer, hash)).or_default();
                                    *e = (*e).max(end);
                                }
                            }
                        });
                        Ok(())
                    }
                    _ => Err(AbortReason::Permission),
                };
                let counter = match verdict {
                    Ok(()) => &served.requests_allowed,
                    Err(_) => &served.requests_refused,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                msg.tx.send(verdict).await.ok();
            }
            ProviderMessage::GetManyRequestReceived(msg) => {
                served.requests_refused.fetch_add(1, Ordering::Relaxed);
                msg.tx.send(Err(AbortReason::Permission)).await.ok();
            }
            ProviderMessage::PushRequestReceived(msg) => {
                served.requests_refused.fetch_add(1, Ordering::Relaxed);
                msg.tx.send(Err(AbortReason::Permission)).await.ok();
            }
            ProviderMessage::ObserveRequestReceived(msg) => {
                served.requests_refused.fetch_add(1, Ordering::Relaxed);
                msg.tx.send(Err(AbortReason::Permission)).await.ok();
            }
            ProviderMessage::Throttle(msg) => {
                msg.tx.send(Ok(())).await.ok();
            }
            // notify variants: not produced under `MASK`
            _ => {}
        }
    }
}

fn parse_hash(hash: &str) -> Result<Hash, Error> {
    hash.parse::<Hash>()
        .map_err(|e| Error::Value(format!("bad blob hash {hash:?}: {e}")))
}

fn absolute(path: &str, what: &str) -> Result<PathBuf, Error> {
    let p = PathBuf::from(path);
    if !p.is_absolute() {
        return Err(Error::Value(format!(
            "{what} must be an absolute path: {path:?}"
        )));
    }
    Ok(p)
}

/// The blob store of a node (an iroh-blobs `FsStore` in a directory of its own) and the offers
/// it serves.
#[pyclass(module = "iroh_pair._native", frozen)]
pub struct BlobStore {
    store: FsStore,
    /// The store's directory (to tell a full disk when iroh-blobs lost the io error).
    root: PathBuf,
    access: Arc<Mutex<Access>>,
    served: Arc<Served>,
    events: EventSender,
    pool: Arc<Mutex<Pool>>,
    keep: Arc<Mutex<Keep>>,
}

impl BlobStore {
    /// Fetches blob `hash` from `peer` (an `EndpointAddr` or `EndpointId`) through `endpoint`,
    /// into the store (verified; what the store already has of it is not fetched again), then
    /// exports it to `dest` (absolute; must not exist). A subscription under `token`: items are
    /// the bytes received so far by this fetch (every 50 ms at most), the last one
    /// `(hash, size, bytes_read, seconds)` or the error: `bytes_read` is what this fetch read
    /// from the stream (payload and hash tree; 0 when the store had it all), `seconds` how long
    /// the fetch took (before the export). `max_size`, the size offered: more bytes received,
    /// or complete content of another size, is an error, and nothing is exported.
    /// `TransferRefused` when the peer refused it (not offered to us), `TransferError`
    /// otherwise.
    /// (`Endpoint.fetch_blob` in Python.)
    #[allow(clippy::too_many_arguments)]
    pub fn start_fetch(
        &self,
        bridge: &Bridge,
        token: u64,
        ep: iroh::Endpoint,
        counters: Arc<Counters>,
        addr: iroh::EndpointAddr,
        hash: &str,
        dest: String,
        max_size: Option<u64>,
    ) -> Result<(), Error> {
        let hash = parse_hash(hash)?;
        let dest = absolute(&dest, "the destination")?;
        if dest.exists() {
            return Err(Error::Value(format!("{} exists", dest.display())));
        }
        let store: Store = self.store.clone().into();
        let root = self.root.clone();
        let pool = self.pool.clone();
        let keep = self.keep.clone();
        let heavy = bridge.heavy();
        bridge.spawn_stream(token, move |shared| async move {
            let _heavy = heavy;
            let progress_to = shared.clone();
            let result = on_blobs_runtime(async move {
                let shared = progress_to;
                // kept from garbage collection while it runs, and by a tag until it is
                // exported (a cut transfer resumes from it, also after a restart)
                let _fetching = Fetching::new(&keep, hash);
                let tags = store.tags();
                let prefix = partial_prefix(&hash);
                let tagged = async {
                    // the new tag first, then the older ones: never a moment untagged
                    let name = format!("{prefix}{}", unix_now());
                    tags.set(&name, HashAndFormat::raw(hash)).await?;
                    let mut older = Vec::new();
                    let mut listed = tags.list_prefix(&prefix).await?;
                    while let Some(t) = listed.next().await {
                        let t = t?;
                        if t.name.as_ref() != name.as_bytes() {
                            older.push(t.name);
                        }
                    }
                    for t in older {
                        tags.delete(t).await?;
                    }
                    Ok::<(), iroh_blobs::api::RequestError>(())
                };
                tagged
                    .await
                    .map_err(|e| store_error("cannot tag the fetch in the blob store", &e))?;
                let mut stats = None;
                let mut failure = None;
                for attempt in 0..2 {
                    let (lease, reused) = Lease::take(&pool, &ep, addr.clone(), &counters).await?;
                    let conn = lease.conn.clone();
                    let mut progress = store
                        .remote()
                        .fetch(conn.clone(), HashAndFormat::raw(hash))
                        .stream();
                    let mut moved = false;
                    let mut last = std::time::Instant::now();
                    (stats, failure) = (None, None);
                    while let Some(item) = progress.next().await {
                        match item {
                            GetProgressItem::Progress(n) => {
                                moved = true;
                                if max_size.is_some_and(|m| n > m) {
                                    failure = Some(Error::Transfer(format!(
                                        "the peer sent more than the {} bytes offered",
                                        max_size.unwrap_or_default()
                                    )));
                                    break;
                                }
                                // at most ~20 progress items a second reach the loop
                                if last.elapsed() >= PROGRESS_EVERY {
                                    last = std::time::Instant::now();
                                    shared.emit(token, Ok(out(Plain(n))));
                                }
                            }
                            GetProgressItem::Done(s) => stats = Some(s),
                            GetProgressItem::Error(e) => {
                                failure = Some(fetch_error(&conn, &e, &root))
                            }
                        }
                    }
                    // A reused connection that turned out dead (the peer went away while it
                    // lingered) before anything moved: once more on a new one.
                    let stale = reused && !moved && conn.close_reason().is_some();
                    if !(stale && failure.is_some() && attempt == 0) {
                        break;
                    }
                }
                if let Some(e) = failure {
                    return Err(e);
                }
                let Some(stats) = stats else {
                    return Err(Error::Transfer("the fetch ended without a result".into()));
                };
                // verified and complete in the store, or the fetch failed above
                let complete = store
                    .blobs()
                    .has(hash)
                    .await
                    .map_err(|e| Error::Transfer(e.to_string()))?;
                if !complete {
                    return Err(Error::Transfer(
                        "the peer ended the transfer before the whole blob arrived".into(),
                    ));
                }
                if let Some(m) = max_size
                    && let Ok(BlobStatus::Complete { size }) = store.blobs().status(hash).await
                    && size != m
                {
                    // verified content, but not what the offer said: not under its name
                    return Err(Error::Transfer(format!(
                        "received {size} bytes, {m} offered (the content matches its hash: the \
                         offer lied about its size)"
                    )));
                }
                // Read nothing: the store had it all before this fetch. The store is also the
                // sending side's, which references files where they are (unchecked by an
                // export): the copy is checked against the hash before it gets its name.
                let check = stats.total_bytes_read() == 0;
                let size = export_to(&store, hash, &dest, check).await?;
                // the file is out: the store's copy goes with the next garbage collection
                // (if that fails, the copy stays until its tag expires at an open)
                let _ = store.tags().delete_prefix(&prefix).await;
                Ok((
                    hash.to_hex().to_string(),
                    size,
                    stats.total_bytes_read(),
                    stats.elapsed.as_secs_f64(),
                ))
            })
            .await
            .unwrap_or_else(|| Err(Error::Transfer("the fetch was stopped".into())));
            match result {
                Ok(v) => shared.finish(token, Ok(out(Plain(v)))),
                Err(e) => shared.finish(token, Err(e)),
            }
        });
        Ok(())
    }

    /// What an endpoint serves this store with.
    pub fn provider(&self) -> Provider {
        Provider {
            store: self.store.clone().into(),
            events: self.events.clone(),
        }
    }
}

/// Whether "no space left on device" (ENOSPC) is anywhere in `e` and its sources: an
/// `io::Error` with that code (also one wrapped inside another `io::Error`), or, where a layer
/// of iroh-blobs turned the error into text, the OS's "(os error 28)" in a message.
fn is_disk_full(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.raw_os_error() == Some(libc::ENOSPC)
                || io.kind() == std::io::ErrorKind::StorageFull
            {
                return true;
            }
            if let Some(inner) = io.get_ref()
                && is_disk_full(inner)
            {
                return true;
            }
        }
        cur = err.source();
    }
    n0_error_chain(e).contains(&format!("(os error {})", libc::ENOSPC))
}

/// Whether the file system holding `dir` has (almost) no space left for us: under 1 MiB.
#[cfg(unix)]
fn nearly_full(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: a NUL-terminated path and a zeroed out-parameter of the right type
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return false;
    }
    #[allow(clippy::unnecessary_cast)] // the field types differ between platforms
    let free = (st.f_bavail as u64).saturating_mul(st.f_frsize as u64);
    free < 1 << 20
}

#[cfg(not(unix))]
fn nearly_full(_dir: &Path) -> bool {
    false
}

/// Whether `e` (a fetch's error) is content that did not match its hash: a chunk group or a
/// parent node of the hash tree failed verification.
fn is_hash_mismatch(e: &(dyn std::error::Error + 'static)) -> bool {
    use iroh_blobs::get::fsm::DecodeError;
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(d) = err.downcast_ref::<DecodeError>()
            && matches!(
                d,
                DecodeError::LeafHashMismatch { .. } | DecodeError::ParentHashMismatch { .. }
            )
        {
            return true;
        }
        cur = err.source();
    }
    false
}

/// A store or export error as the Python error: `DiskFull` when the device is full, else
/// `FileTransferError` with `what` and the error's chain.
fn store_error(what: &str, e: &(dyn std::error::Error + 'static)) -> Error {
    let msg = format!("{what}: {}", n0_error_chain(e));
    if is_disk_full(e) {
        Error::DiskFull(msg)
    } else {
        Error::Transfer(msg)
    }
}

/// Why a fetch failed: refused by the provider, our disk full, content that failed
/// verification, or anything else.
fn fetch_error(
    conn: &iroh::endpoint::Connection,
    e: &iroh_blobs::get::GetError,
    root: &Path,
) -> Error {
    use iroh_blobs::get::GetError;
    // A write that fails ends the store's import task; the fetch may then see that first, as
    // "receiver closed" (iroh-blobs joins both and keeps the first error), without the io
    // error. A local failure with the store's file system full is the full disk.
    if is_disk_full(e) {
        return Error::DiskFull(format!(
            "cannot store the verified data: {}",
            n0_error_chain(e)
        ));
    }
    let local = matches!(e, GetError::IrpcSend { .. } | GetError::LocalFailure { .. });
    if local && nearly_full(root) {
        return Error::DiskFull(format!(
            "no space left for the blob store in {}: {}",
            root.display(),
            n0_error_chain(e)
        ));
    }
    if is_hash_mismatch(e) {
        return Error::VerificationFailed(format!(
            "the peer sent data that does not match the hash (not stored): {}",
            n0_error_chain(e)
        ));
    }
    let refused_conn = matches!(
        conn.close_reason(),
        Some(iroh::endpoint::ConnectionError::ApplicationClosed(ref c))
            if c.error_code.into_inner() == ERR_PERMISSION
    );
    let refused = refused_conn
        || e.iroh_error_code()
            .is_some_and(|c| c.into_inner() == ERR_PERMISSION);
    let msg = n0_error_chain(e);
    if refused {
        Error::TransferRefused(format!("the peer refused the blob: {msg}"))
    } else if e.iroh_error_code() == Some(iroh_blobs::protocol::ERR_INTERNAL) {
        // the provider's store checks what it reads against the hash tree before sending it
        Error::Transfer(format!(
            "the sender could not serve the content (iroh-blobs internal error: its stored copy \
             may be damaged or unreadable): {msg}"
        ))
    } else {
        Error::Transfer(msg)
    }
}

/// The BLAKE3 hash and the length of the file at `path` (in a blocking thread).
async fn file_hash(path: &Path) -> std::io::Result<(Hash, u64)> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut hasher = blake3::Hasher::new();
        let mut f = std::fs::File::open(&path)?;
        let n = std::io::copy(&mut f, &mut hasher)?;
        Ok((Hash::from(hasher.finalize()), n))
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Exports the complete, verified blob `hash` to `dest`: first under a temporary name in the
/// same directory, then linked to `dest` (never replacing an existing file) and the temporary
/// name removed. With `check`, the temporary file's BLAKE3 hash and size are compared with
/// `hash` and the store's size first (content the store references rather than holds).
/// Returns the size.
async fn export_to(store: &Store, hash: Hash, dest: &Path, check: bool) -> Result<u64, Error> {
    let dir = dest
        .parent()
        .ok_or_else(|| Error::Value(format!("{} has no parent directory", dest.display())))?;
    if dest.file_name().is_none() {
        return Err(Error::Value(format!("{} has no file name", dest.display())));
    }
    let mut rnd = [0u8; 8];
    getrandom::fill(&mut rnd).map_err(|e| Error::Transfer(format!("no randomness: {e}")))?;
    // not derived from the name: a name of 255 bytes must still leave room for it
    let tmp = dir.join(format!(
        ".iroh-pair-{}.partial",
        rnd.iter().map(|b| format!("{b:02x}")).collect::<String>()
    ));
    let size = store
        .blobs()
        .export(hash, &tmp)
        .finish()
        .await
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            store_error(&format!("cannot export to {}", tmp.display()), &e)
        })?;
    if check {
        let matches = file_hash(&tmp).await.map(|(h, n)| h == hash && n == size);
        if !matches.unwrap_or(false) {
            let _ = std::fs::remove_file(&tmp);
            return Err(Error::Transfer(format!(
                "the content this node's store references for {} changed: not exported (send \
                 it again)",
                hash.to_hex()
            )));
        }
    }
    let linked = std::fs::hard_link(&tmp, dest);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(size),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(Error::Transfer(format!(
            "{} exists: not overwritten",
            dest.display()
        ))),
        Err(e) => Err(store_error(
            &format!("cannot move the verified file to {}", dest.display()),
            &e,
        )),
    }
}

#[pymethods]
impl BlobStore {
    /// Opens (or creates) the store in the directory `path` (absolute); garbage collection runs
    /// every `gc_interval` seconds (see the module's documentation for what it keeps).
    #[staticmethod]
    #[pyo3(signature = (bridge, token, path, gc_interval = 1.0))]
    fn open(
        py: Python<'_>,
        bridge: &Bridge,
        token: u64,
        path: String,
        gc_interval: f64,
    ) -> PyResult<Py<PyAny>> {
        let root = absolute(&path, "the blob store")?;
        let interval = std::time::Duration::try_from_secs_f64(gc_interval)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| Error::Value(format!("gc_interval must be > 0, got {gc_interval}")))?;
        bridge.submit(py, token, async move {
            let access = Arc::new(Mutex::new(Access::default()));
            let keep = Arc::new(Mutex::new(Keep {
                dirty: true, // the first run collects what earlier runs of the process left
                ..Keep::default()
            }));
            let mut options = Options::new(&root);
            options.gc = Some(GcConfig {
                interval,
                add_protected: Some(protect(access.clone(), keep.clone())),
            });
            let store = FsStore::load_with_opts(root.join("blobs.db"), options)
                .await
                .map_err(|e| Error::Transfer(format!("cannot open the blob store: {e:#}")))?;
            expire_tags(&store.clone().into()).await?;
            let served = Arc::new(Served::default());
            let (events, rx) = EventSender::channel(64, MASK);
            RUNTIME.spawn(police(rx, access.clone(), served.clone()));
            Ok(ClassOut(BlobStore {
                store,
                root,
                access,
                served,
                events,
                pool: Arc::default(),
                keep,
            }))
        })
    }

    /// The ALPN blobs are served and fetched on.
    #[classattr]
    #[pyo3(name = "ALPN")]
    fn alpn() -> &'static [u8] {
        BLOBS_ALPN
    }

    /// Imports the file at `path` (absolute; hashed where it is, not copied: the store references
    /// it): `(hash, size)`, the hash as 64 hex digits. The store keeps the reference for
    /// `IMPORT_HOLD` (a temp tag), and while the hash is offered (`allow`). Small files are
    /// copied into the store's database.
    fn add_path(
        &self,
        py: Python<'_>,
        bridge: &Bridge,
        token: u64,
        path: String,
    ) -> PyResult<Py<PyAny>> {
        let path = absolute(&path, "the file")?;
        let store: Store = self.store.clone().into();
        let keep = self.keep.clone();
        let heavy = bridge.heavy();
        bridge.spawn(token, async move {
            let _heavy = heavy;
            let tag = store
                .blobs()
                .add_path_with_opts(AddPathOptions {
                    path: path.clone(),
                    format: BlobFormat::Raw,
                    mode: ImportMode::TryReference,
                })
                .temp_tag()
                .await
                .map_err(|e| store_error(&format!("cannot add {}", path.display()), &e))?;
            let hash = tag.hash();
            lock(&keep).imported.push((tag, std::time::Instant::now()));
            let size = store
                .blobs()
                .status(hash)
                .await
                .map_err(|e| Error::Transfer(e.to_string()))?;
            let size = match size {
                BlobStatus::Complete { size } => size,
                other => {
                    return Err(Error::Transfer(format!(
                        "the added blob is not complete: {other:?}"
                    )));
                }
            };
            Ok(Plain((hash.to_hex().to_string(), size)))
        });
        Ok(crate::bridge::pending(py))
    }

    /// Offers `hash` to `peer`: its connections are admitted and it may get that blob (and
    /// the store keeps it while the offer lives).
    fn allow(&self, peer: &EndpointId, hash: &str) -> PyResult<()> {
        let hash = parse_hash(hash)?;
        lock(&self.access)
            .offers
            .entry(peer.0)
            .or_default()
            .insert(hash);
        Ok(())
    }

    /// Withdraws the offer of `hash` to `peer` (requests already being served finish).
    /// Returns whether it was offered.
    fn revoke(&self, peer: &EndpointId, hash: &str) -> PyResult<bool> {
        let hash = parse_hash(hash)?;
        let mut a = lock(&self.access);
        let Some(set) = a.offers.get_mut(&peer.0) else {
            return Ok(false);
        };
        let had = set.remove(&hash);
        if set.is_empty() {
            a.offers.remove(&peer.0);
        }
        a.sent.remove(&(peer.0, hash));
        lock(&self.keep).dirty = true;
        Ok(had)
    }

    /// How many bytes of `hash` were sent to `peer` under its current offer (the end offset
    /// the provider reported last; a resumed transfer starts past what the peer has).
    fn sent(&self, peer: &EndpointId, hash: &str) -> PyResult<u64> {
        let hash = parse_hash(hash)?;
        Ok(lock(&self.access)
            .sent
            .get(&(peer.0, hash))
            .copied()
            .unwrap_or(0))
    }

    /// The hashes offered to `peer`, sorted.
    fn offered(&self, peer: &EndpointId) -> Vec<String> {
        let a = lock(&self.access);
        let mut v: Vec<String> = a
            .offers
            .get(&peer.0)
            .map(|s| s.iter().map(|h| h.to_hex().to_string()).collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Whether the store holds the complete blob `hash`.
    fn has(&self, py: Python<'_>, bridge: &Bridge, token: u64, hash: &str) -> PyResult<Py<PyAny>> {
        let hash = parse_hash(hash)?;
        let store: Store = self.store.clone().into();
        bridge.submit(py, token, async move {
            let has = store
                .blobs()
                .has(hash)
                .await
                .map_err(|e| Error::Transfer(e.to_string()))?;
            Ok(Plain(has))
        })
    }

    /// What the store holds of `hash`: `"complete"`, `"partial"` (verified data of a fetch that
    /// did not finish) or `"absent"`.
    fn status(
        &self,
        py: Python<'_>,
        bridge: &Bridge,
        token: u64,
        hash: &str,
    ) -> PyResult<Py<PyAny>> {
        let hash = parse_hash(hash)?;
        let store: Store = self.store.clone().into();
        bridge.submit(py, token, async move {
            let status = store
                .blobs()
                .status(hash)
                .await
                .map_err(|e| Error::Transfer(e.to_string()))?;
            Ok(Plain(match status {
                BlobStatus::Complete { .. } => "complete",
                BlobStatus::Partial { .. } => "partial",
                BlobStatus::NotFound => "absent",
            }))
        })
    }

    /// The provider's counters: connections refused, get requests allowed and refused.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        let s = &self.served;
        for (k, v) in [
            ("connections_refused", &s.connections_refused),
            ("requests_allowed", &s.requests_allowed),
            ("requests_refused", &s.requests_refused),
        ] {
            d.set_item(k, v.load(Ordering::Relaxed))?;
        }
        Ok(d)
    }

    /// Shuts the store down (its database flushed); the object is unusable afterwards.
    fn close(&self, py: Python<'_>, bridge: &Bridge, token: u64) -> PyResult<Py<PyAny>> {
        let store = self.store.clone();
        bridge.submit(py, token, async move {
            store
                .shutdown()
                .await
                .map_err(|e| Error::Transfer(format!("cannot close the blob store: {e}")))?;
            Ok(Plain(()))
        })
    }
}
