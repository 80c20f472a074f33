//! `attack TICKET HASH MODE [--key HEX | --key-file PATH] [--other HASH]`: a raw iroh-blobs
//! client that asks a provider for what the package's provider must refuse
//! (docs/PROTOCOL.md §15.2, `police` and `MASK` in rust/iroh-pair-native/src/files.rs), for
//! tests/test_files_attack.py.
//!
//! It dials the provider at TICKET (an `EndpointTicket`) on the blobs ALPN as the key given by
//! `--key` (64 hex digits) or `--key-file` (32 raw bytes, the package's `secret.key`), or as a
//! fresh key (a stranger) when neither is given, and sends one kind of request (MODE):
//!
//! - `get-blob`: a plain raw get of HASH (the control: a provider that offered HASH to this key
//!   serves it);
//! - `get-other`: the same raw get, of a hash the caller knows is not offered (HASH);
//! - `get-hashseq`: HASH as a hash sequence (`GetRequest::all`: the root and every child);
//! - `get-ranges-children`: first the root as a raw blob (allowed when HASH is offered), then
//!   a request whose ranges skip the root and ask for every child (the root's content must be a
//!   hash sequence: the children's hashes are read from it);
//! - `get-many`: a get-many request of HASH, and of `--other` if given;
//! - `push`: pushes a fresh random blob of 64 KiB (its hash is printed as `pushed`);
//! - `observe`: an observe request of HASH (served when the first bitfield arrives).
//!
//! It prints one JSON line `{"mode","outcome","level","bytes","detail","id"}` and exits 0
//! whatever the outcome (the test judges): `outcome` is `refused` when the connection was
//! closed (`level` "connection") or the request's stream reset (`level` "request") with
//! iroh-blobs' permission code (`ERR_PERMISSION`, 1) and no content arrived, `served` when
//! verified content (or, for push, the provider's acceptance, for observe a bitfield) arrived,
//! else `error`; `bytes` counts the verified payload bytes received (for push, the encoded
//! bytes sent; for observe, the first bitfield's); `pushed` is the pushed blob's hash.

use anyhow::{Context, Result, bail};
use iroh::endpoint::{Connection, ConnectionError, ReadError, ReadToEndError, VarInt};
use iroh::{EndpointAddr, SecretKey};
use iroh_blobs::Hash;
use iroh_blobs::api::remote::GetProgressItem;
use iroh_blobs::get::GetError;
use iroh_blobs::protocol::{
    ChunkRanges, ChunkRangesSeq, ERR_PERMISSION, GetManyRequest, GetRequest, ObserveRequest,
    PushRequest, Request, RequestType,
};
use iroh_blobs::store::mem::MemStore;
use iroh_tickets::endpoint::EndpointTicket;
use n0_future::StreamExt;
use serde_json::json;

/// The modes, as the command line names them.
pub const MODES: &[&str] = &[
    "get-blob",
    "get-other",
    "get-hashseq",
    "get-ranges-children",
    "get-many",
    "push",
    "observe",
];

/// What one attack got.
struct Outcome {
    outcome: &'static str,
    level: Option<&'static str>,
    bytes: u64,
    detail: String,
    pushed: Option<Hash>,
}

impl Outcome {
    fn served(bytes: u64, detail: impl Into<String>) -> Self {
        Outcome {
            outcome: "served",
            level: None,
            bytes,
            detail: detail.into(),
            pushed: None,
        }
    }
}

/// The key to dial as: `--key HEX`, `--key-file PATH` (32 raw bytes), else a fresh one.
pub fn secret_key(hex: Option<String>, file: Option<String>) -> Result<SecretKey> {
    match (hex, file) {
        (Some(_), Some(_)) => bail!("--key or --key-file, not both"),
        (Some(hex), None) => {
            let bytes: [u8; 32] = decode_hex(&hex)?
                .try_into()
                .map_err(|_| anyhow::anyhow!("--key: 64 hex digits"))?;
            Ok(SecretKey::from_bytes(&bytes))
        }
        (None, Some(path)) => {
            let raw = std::fs::read(&path).with_context(|| format!("reading {path}"))?;
            let bytes: [u8; 32] = raw
                .try_into()
                .map_err(|_| anyhow::anyhow!("{path}: not a 32-byte secret key"))?;
            Ok(SecretKey::from_bytes(&bytes))
        }
        (None, None) => Ok(SecretKey::generate()),
    }
}

fn decode_hex(s: &str) -> Result<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        bail!("odd number of hex digits");
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).context("not hex"))
        .collect()
}

/// Whether `conn` was closed by the provider with the permission code.
fn refused_connection(conn: &Connection) -> bool {
    matches!(
        conn.close_reason(),
        Some(ConnectionError::ApplicationClosed(ref c)) if c.error_code == ERR_PERMISSION
    )
}

/// The outcome of a request that failed with `code` (the stream's reset or stop code, if
/// any) and `detail`, after `bytes` of verified content.
fn failed(conn: &Connection, code: Option<VarInt>, bytes: u64, detail: String) -> Outcome {
    let level = if refused_connection(conn) {
        Some("connection")
    } else if code == Some(ERR_PERMISSION) {
        Some("request")
    } else {
        None
    };
    let outcome = match (bytes, level) {
        // content arrived before the failure: it was served
        (1.., _) => "served",
        (0, Some(_)) => "refused",
        (0, None) => "error",
    };
    Outcome {
        outcome,
        level,
        bytes,
        detail,
        pushed: None,
    }
}

/// Runs a get request into `store`: the verified payload bytes, or the failure.
async fn get(store: &MemStore, conn: &Connection, request: GetRequest) -> Outcome {
    let mut items = store.remote().execute_get(conn.clone(), request).stream();
    let mut bytes = 0;
    while let Some(item) = items.next().await {
        match item {
            GetProgressItem::Progress(n) => bytes = n,
            GetProgressItem::Done(stats) => {
                return Outcome::served(stats.payload_bytes_read, format!("{stats:?}"));
            }
            GetProgressItem::Error(e) => return get_failed(conn, &e, bytes),
        }
    }
    failed(conn, None, bytes, "the get ended without a result".into())
}

fn get_failed(conn: &Connection, e: &GetError, bytes: u64) -> Outcome {
    failed(conn, e.iroh_error_code(), bytes, format!("{e:#}"))
}

/// A read's reset code, or the connection's close code when it was lost.
fn read_code(e: &ReadError) -> Option<VarInt> {
    match e {
        ReadError::Reset(code) => Some(*code),
        ReadError::ConnectionLost(ConnectionError::ApplicationClosed(c)) => Some(c.error_code),
        _ => None,
    }
}

/// Pushes a fresh random blob; `served` when the provider read the request without resetting
/// the stream (its answer is the end of its send side), `refused` on its permission reset.
async fn push(store: &MemStore, conn: &Connection) -> Result<Outcome> {
    let data = random_bytes(64 * 1024);
    let tag = store.blobs().add_bytes(data).await?;
    let hash = tag.hash;
    let bao = store
        .export_bao(hash, ChunkRanges::all())
        .bao_to_vec()
        .await?;
    let request = PushRequest::new(hash, ChunkRangesSeq::root());
    let body = postcard::to_stdvec(&request)?;
    // RequestType, then the request with a varint (LEB128) length prefix
    let mut wire = vec![RequestType::Push as u8];
    let mut len = body.len() as u64;
    loop {
        let byte = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            wire.push(byte);
            break;
        }
        wire.push(byte | 0x80);
    }
    wire.extend_from_slice(&body);
    let (mut send, mut recv) = match conn.open_bi().await {
        Ok(pair) => pair,
        Err(e) => {
            let mut out = failed(conn, None, 0, format!("open: {e}"));
            out.pushed = Some(hash);
            return Ok(out);
        }
    };
    let mut sent = 0u64;
    let mut write_err = None;
    if let Err(e) = send.write_all(&wire).await {
        write_err = Some(format!("writing the request: {e}"));
    } else if let Err(e) = send.write_all(&bao).await {
        write_err = Some(format!("writing the data: {e}"));
    } else {
        sent = bao.len() as u64;
        send.finish().ok();
    }
    let mut out = match recv.read_to_end(1 << 20).await {
        Ok(_) => match write_err {
            None => Outcome::served(sent, "the provider read the push and ended its side"),
            Some(w) => failed(conn, None, 0, w),
        },
        Err(ReadToEndError::Read(e)) => {
            let detail = match &write_err {
                Some(w) => format!("{e} ({w})"),
                None => e.to_string(),
            };
            failed(conn, read_code(&e), 0, detail)
        }
        Err(e) => failed(conn, None, 0, e.to_string()),
    };
    out.pushed = Some(hash);
    Ok(out)
}

/// `n` new bytes (splitmix64 seeded from a fresh key: the data only has to be new).
fn random_bytes(n: usize) -> Vec<u8> {
    let seed = SecretKey::generate().to_bytes();
    let mut x = u64::from_le_bytes(seed[..8].try_into().expect("8 bytes"));
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(n);
    out
}

/// An observe request; `served` when a bitfield arrives.
async fn observe(conn: &Connection, hash: Hash) -> Result<Outcome> {
    let wire = postcard::to_stdvec(&Request::Observe(ObserveRequest::new(hash)))?;
    let (mut send, mut recv) = match conn.open_bi().await {
        Ok(pair) => pair,
        Err(e) => return Ok(failed(conn, None, 0, format!("open: {e}"))),
    };
    if let Err(e) = send.write_all(&wire).await {
        return Ok(failed(conn, None, 0, format!("writing the request: {e}")));
    }
    send.finish().ok();
    let mut buf = [0u8; 4096];
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), recv.read(&mut buf)).await;
    Ok(match read {
        Ok(Ok(Some(n))) => Outcome::served(n as u64, "a bitfield arrived"),
        Ok(Ok(None)) => failed(conn, None, 0, "the provider ended the stream".into()),
        Ok(Err(e)) => failed(conn, read_code(&e), 0, e.to_string()),
        Err(_) => failed(conn, None, 0, "nothing within 10 s".into()),
    })
}

async fn run(
    conn: &Connection,
    store: &MemStore,
    mode: &str,
    hash: Hash,
    other: Option<Hash>,
) -> Result<Outcome> {
    Ok(match mode {
        "get-blob" | "get-other" => get(store, conn, GetRequest::blob(hash)).await,
        "get-hashseq" => get(store, conn, GetRequest::all(hash)).await,
        "get-ranges-children" => {
            let root = get(store, conn, GetRequest::blob(hash)).await;
            if root.outcome != "served" {
                return Ok(Outcome {
                    detail: format!("the root (raw): {}", root.detail),
                    ..root
                });
            }
            // root not asked for, every child in full
            let request = GetRequest::builder()
                .root(ChunkRanges::empty())
                .child(0, ChunkRanges::all())
                .build_open(hash);
            let mut children = get(store, conn, request).await;
            children.detail = format!("children (the root was served raw): {}", children.detail);
            children
        }
        "get-many" => {
            let mut hashes = vec![hash];
            hashes.extend(other);
            let request = GetManyRequest::new(hashes, ChunkRangesSeq::all());
            let mut items = store
                .remote()
                .execute_get_many(conn.clone(), request)
                .stream();
            let mut bytes = 0;
            let mut out = None;
            while let Some(item) = items.next().await {
                match item {
                    GetProgressItem::Progress(n) => bytes = n,
                    GetProgressItem::Done(stats) => {
                        out = Some(Outcome::served(
                            stats.payload_bytes_read,
                            format!("{stats:?}"),
                        ));
                        break;
                    }
                    GetProgressItem::Error(e) => {
                        out = Some(get_failed(conn, &e, bytes));
                        break;
                    }
                }
            }
            out.unwrap_or_else(|| failed(conn, None, bytes, "no result".into()))
        }
        "push" => push(store, conn).await?,
        "observe" => observe(conn, hash).await?,
        other => bail!("unknown mode {other:?}: one of {MODES:?}"),
    })
}

/// The `attack` subcommand (see the module's documentation).
pub async fn attack(
    ticket: &str,
    hash: &str,
    mode: &str,
    key: SecretKey,
    other: Option<&str>,
) -> Result<()> {
    if !MODES.contains(&mode) {
        bail!("unknown mode {mode:?}: one of {MODES:?}");
    }
    let addr: EndpointAddr = ticket.parse::<EndpointTicket>()?.into();
    let hash: Hash = hash.parse().context("bad hash")?;
    let other: Option<Hash> = other
        .map(|h| h.parse())
        .transpose()
        .context("bad --other")?;
    let store = MemStore::new();
    let ep = crate::bind_as(vec![], Some(key)).await?;
    let id = ep.id().to_string();
    let conn = ep
        .connect(addr, iroh_blobs::ALPN)
        .await
        .context("dialing the provider")?;
    let out = run(&conn, &store, mode, hash, other).await?;
    println!(
        "{}",
        json!({
            "mode": mode, "outcome": out.outcome, "level": out.level, "bytes": out.bytes,
            "detail": out.detail, "id": id,
            "pushed": out.pushed.map(|h| h.to_hex().to_string()),
        })
    );
    conn.close(0u32.into(), b"done");
    store.shutdown().await.ok();
    ep.close().await;
    Ok(())
}
