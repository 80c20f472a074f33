//! The node: identity, paired devices, admission, pairing drivers and sealed messaging over
//! iroh, mirroring `iroh_pair.node.Node`. Output is JSON lines on stdout.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use iroh::address_lookup::{DnsAddressLookup, PkarrPublisher, PkarrResolver};
use iroh::endpoint::{
    Connection, PortmapperConfig, ReadError, ReadExactError, ReadToEndError, RecvStream,
    SendStream, VarInt, WriteError, presets,
};
use iroh::{Endpoint, EndpointAddr, EndpointId, RelayMode, RelayUrl};
use iroh_tickets::endpoint::EndpointTicket;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::code::PairingCode;
use crate::kdf::{ALPN, PAIRING_BINDING_LABEL};
use crate::messaging::{self, MessageChannel, MessageId, SeenIds, new_message_id};
use crate::pairing::{
    Failure, HostHandshake, JoinerHandshake, Offer, OfferBook, PairingResult, os_rng,
};
use crate::state::{Device, StateDir, hex};
use crate::wire::{self, DeviceInfo, MAX_MESSAGE, MSG_KIND, PAIR_KIND, close, reject, stream};

/// The acceptor's bound on a first frame: a 16 MiB message plus room for the header.
pub const MAX_FIRST_FRAME: usize = 16 * 1024 * 1024 + 1024;
pub const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(10);
pub const JOINER_REPLY_TIMEOUT: Duration = Duration::from_secs(30);
pub const GRACE: Duration = Duration::from_secs(1);
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// At most this many connections from unpaired peers at a time (as the Python node).
pub const MAX_UNKNOWN_CONNECTIONS: u64 = 4;

/// Prints one JSON line on stdout.
pub fn emit(v: Value) {
    println!("{v}");
}

/// Endpoint options from the command line.
#[derive(Default, Clone)]
pub struct NetConfig {
    pub relay: Option<String>,
    pub pkarr_url: Option<String>,
    pub dns_origin: Option<String>,
    pub dns_server: Option<String>,
    pub bind: Option<String>,
}

#[derive(Default)]
struct Counters {
    connections_accepted: AtomicU64,
    connections_dialed: AtomicU64,
    connections_refused: AtomicU64,
    pairing_messages_received: AtomicU64,
    messages_delivered: AtomicU64,
    messages_rejected: AtomicU64,
    not_admitted: AtomicU64,
    requests_sent: AtomicU64,
    /// Open connections from peers that are not paired (admitted while hosting).
    unknown_connections: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// The outcome of one pairing attempt as the host sees it.
#[derive(Debug)]
pub enum HostEvent {
    Paired(Box<PairingResult>),
    Failed(Failure),
}

#[derive(Default)]
struct Inner {
    devices: HashMap<[u8; 32], Device>,
    book: OfferBook,
    seen: HashMap<[u8; 32], SeenIds>,
    /// One channel per connection (by stable id), with the peer it is for.
    channels: HashMap<usize, Arc<Mutex<MessageChannel>>>,
    conns: HashMap<[u8; 32], Connection>,
    hints: HashMap<[u8; 32], EndpointAddr>,
    rejections: BTreeMap<String, u64>,
    session_seq: u64,
}

impl Inner {
    fn hosting(&self, now: Instant) -> bool {
        self.book
            .offers
            .values()
            .any(|o| !o.used && !o.burned() && now < o.expires_at)
    }
}

/// The result of a request from this node.
#[derive(Debug)]
pub enum Reply {
    Ok(Vec<u8>),
    /// The peer reset the stream with this code (§10.3).
    Refused(u64),
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Fault {
    None,
    /// Flip a bit of the sealed message's tag.
    Tamper,
    /// Send the same sealed message twice, on two streams.
    Replay,
}

pub struct Node {
    pub ep: Endpoint,
    pub id: [u8; 32],
    info: DeviceInfo,
    state: Option<StateDir>,
    inner: Mutex<Inner>,
    counters: Counters,
    host_events: mpsc::UnboundedSender<HostEvent>,
}

pub async fn bind_endpoint(key: iroh::SecretKey, net: &NetConfig) -> Result<Endpoint> {
    let mut b = Endpoint::builder(presets::Minimal)
        .secret_key(key)
        .alpns(vec![ALPN.to_vec()])
        .portmapper_config(PortmapperConfig::Disabled)
        .clear_ip_transports();
    b = match &net.relay {
        None => b.relay_mode(RelayMode::Disabled),
        Some(url) => b.relay_mode(RelayMode::custom([
            RelayUrl::from_str(url).context("bad relay URL")?
        ])),
    };
    let bind = net.bind.clone().unwrap_or_else(|| "127.0.0.1:0".into());
    b = b.bind_addr(SocketAddr::from_str(&bind).context("bad bind address")?)?;
    match (&net.pkarr_url, &net.dns_origin) {
        (Some(pkarr), Some(origin)) => {
            let url = url::Url::parse(pkarr).context("bad pkarr URL")?;
            b = b
                .address_lookup(PkarrPublisher::builder(url.clone()))
                .address_lookup(PkarrResolver::builder(url))
                .address_lookup(DnsAddressLookup::builder(origin.clone()));
        }
        (None, None) => {}
        _ => bail!("--pkarr-url and --dns-origin go together"),
    }
    if let Some(server) = &net.dns_server {
        let sa = SocketAddr::from_str(server).context("bad DNS server address")?;
        b = b.dns_resolver(iroh::dns::DnsResolver::with_nameserver(sa));
    }
    b.bind().await.context("binding the endpoint")
}

fn conn_binding(conn: &Connection, label: &[u8]) -> Result<[u8; 32]> {
    let mut out = [0u8; 32];
    conn.export_keying_material(&mut out, label, b"")
        .map_err(|e| anyhow!("keying material export failed: {e:?}"))?;
    Ok(out)
}

fn id_bytes(id: EndpointId) -> [u8; 32] {
    *id.as_bytes()
}

/// Parses an EndpointId (hex, or iroh's own form).
pub fn parse_id(s: &str) -> Result<[u8; 32]> {
    if let Ok(b) = crate::state::unhex32(s) {
        return Ok(b);
    }
    Ok(id_bytes(
        EndpointId::from_str(s).context("not an EndpointId")?,
    ))
}

enum FrameError {
    TooLarge,
    Truncated,
    Read(ReadError),
}

/// One `u32 length || body` frame; `None` at a clean end of stream before any byte.
async fn read_frame(recv: &mut RecvStream, max: usize) -> Result<Option<Vec<u8>>, FrameError> {
    let mut len = [0u8; 4];
    match recv.read_exact(&mut len).await {
        Ok(()) => {}
        Err(ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(ReadExactError::FinishedEarly(_)) => return Err(FrameError::Truncated),
        Err(ReadExactError::ReadError(e)) => return Err(FrameError::Read(e)),
    }
    let n = u32::from_be_bytes(len) as usize;
    if n > max {
        return Err(FrameError::TooLarge);
    }
    let mut body = vec![0u8; n];
    match recv.read_exact(&mut body).await {
        Ok(()) => Ok(Some(body)),
        Err(ReadExactError::FinishedEarly(_)) => Err(FrameError::Truncated),
        Err(ReadExactError::ReadError(e)) => Err(FrameError::Read(e)),
    }
}

fn refuse(send: &mut SendStream, recv: &mut RecvStream, code: u32) {
    let _ = send.reset(VarInt::from_u32(code));
    let _ = recv.stop(VarInt::from_u32(code));
}

impl Node {
    pub async fn open(
        state: Option<StateDir>,
        info: DeviceInfo,
        net: &NetConfig,
    ) -> Result<(Arc<Self>, mpsc::UnboundedReceiver<HostEvent>)> {
        info.validate().map_err(|e| anyhow!(e))?;
        let key = match &state {
            Some(s) => s.secret_key()?,
            None => iroh::SecretKey::generate(),
        };
        let mut inner = Inner::default();
        if let Some(s) = &state {
            for d in s.load_devices()? {
                inner.devices.insert(d.id()?, d);
            }
        }
        let ep = bind_endpoint(key, net).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let node = Arc::new(Self {
            id: id_bytes(ep.id()),
            ep,
            info,
            state,
            inner: Mutex::new(inner),
            counters: Counters::default(),
            host_events: tx,
        });
        let n = node.clone();
        tokio::spawn(async move { n.accept_loop().await });
        Ok((node, rx))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn ticket(&self) -> String {
        EndpointTicket::new(self.ep.addr()).to_string()
    }

    pub fn stats(&self) -> Value {
        let c = &self.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        json!({
            "connections_accepted": g(&c.connections_accepted),
            "connections_dialed": g(&c.connections_dialed),
            "connections_refused": g(&c.connections_refused),
            "pairing_messages_received": g(&c.pairing_messages_received),
            "messages_delivered": g(&c.messages_delivered),
            "messages_rejected": g(&c.messages_rejected),
            "not_admitted": g(&c.not_admitted),
            "requests_sent": g(&c.requests_sent),
            "rejections": self.lock().rejections.clone(),
        })
    }

    pub fn devices(&self) -> Vec<Device> {
        self.lock().devices.values().cloned().collect()
    }

    /// Remembers how to reach `peer` (memory only).
    pub fn add_hint(&self, ticket: &str) -> Result<[u8; 32]> {
        let addr: EndpointAddr = ticket
            .parse::<EndpointTicket>()
            .context("bad ticket")?
            .into();
        let id = id_bytes(addr.id);
        self.lock().hints.insert(id, addr);
        Ok(id)
    }

    // ------------------------------------------------------------------ pairing

    /// Starts hosting a code; the outcome of every attempt arrives on the host-event channel.
    pub fn host_pairing(&self, words: usize, ttl: Duration) -> Result<PairingCode> {
        let code = PairingCode::generate(&self.ticket(), words)?;
        let offer = Offer::new(code.clone(), Instant::now(), ttl);
        self.lock().book.offers.insert(code.tag, offer);
        Ok(code)
    }

    /// Whether the hosted code can no longer pair (burned, used or expired), with its reason.
    pub fn offer_end(&self, tag: &[u8; 16]) -> Option<u16> {
        let inner = self.lock();
        let o = inner.book.offers.get(tag)?;
        match o.check(Instant::now()) {
            Err(e) if e.code != reject::BUSY => Some(e.code),
            _ => None,
        }
    }

    fn store(&self, r: &PairingResult) -> Result<Device> {
        let dev = Device::new(&r.peer_id, &r.peer_info, &r.keys, &r.sas);
        let mut inner = self.lock();
        let mut all: Vec<Device> = inner
            .devices
            .values()
            .filter(|d| d.endpoint_id != dev.endpoint_id)
            .cloned()
            .collect();
        all.push(dev.clone());
        if let Some(s) = &self.state {
            s.save_devices(&all)?;
        }
        inner.devices.insert(r.peer_id, dev.clone());
        inner.seen.remove(&r.peer_id);
        // channels of an existing connection were built with the old keys
        inner
            .channels
            .retain(|_, ch| ch.lock().map(|c| c.peer_id != r.peer_id).unwrap_or(false));
        Ok(dev)
    }

    pub fn paired_json(&self, r: &PairingResult) -> Value {
        json!({
            "event": "paired",
            "role": format!("{:?}", r.role).to_lowercase(),
            "peer": hex(&r.peer_id),
            "name": r.peer_info.name,
            "device_type": r.peer_info.device_type,
            "os": r.peer_info.os,
            "app_version": r.peer_info.app_version,
            "sas": r.sas,
            "transcript_hash": hex(&r.transcript_hash),
        })
    }

    /// Joins with `code`; on success the connection stays open and is served.
    pub async fn join(
        self: &Arc<Self>,
        code: &str,
        timeout: Duration,
    ) -> Result<Result<(PairingResult, Connection), Failure>> {
        let pc = PairingCode::parse(code)?;
        let addr: EndpointAddr = pc
            .ticket
            .parse::<EndpointTicket>()
            .context("the code's ticket is not an iroh ticket")?
            .into();
        let host = id_bytes(addr.id);
        if host == self.id {
            bail!("this code was created by this node");
        }
        self.lock().hints.insert(host, addr);
        let work = async {
            let conn = self.connection(host).await?;
            let out = self.run_joiner(&conn, pc).await?;
            Ok::<_, anyhow::Error>(out.map(|r| (r, conn)))
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(r) => r,
            Err(_) => Ok(Err(Failure {
                code: reject::TIMEOUT,
                reason: "pairing did not complete in time".into(),
                by_peer: false,
            })),
        }
    }

    async fn run_joiner(
        self: &Arc<Self>,
        conn: &Connection,
        code: PairingCode,
    ) -> Result<Result<PairingResult, Failure>> {
        let cb = conn_binding(conn, PAIRING_BINDING_LABEL)?;
        let mut hs = JoinerHandshake::new(
            code,
            self.id,
            id_bytes(conn.remote_id()),
            cb,
            self.info.clone(),
        );
        let (mut send, mut recv) = conn.open_bi().await?;
        let mut first = wire::encode_header(PAIR_KIND);
        first.extend(hs.start(os_rng()));
        send.write_all(&wire::encode_frame(&first)).await?;
        let outcome = loop {
            let out = match tokio::time::timeout(
                JOINER_REPLY_TIMEOUT,
                read_frame(&mut recv, MAX_MESSAGE),
            )
            .await
            {
                Err(_) => hs.abort(reject::TIMEOUT, "no reply from the host in time"),
                Ok(Ok(Some(body))) => hs.receive(&body),
                Ok(Err(FrameError::TooLarge)) => hs.abort(reject::TOO_LARGE, "frame over 64 KiB"),
                Ok(Err(FrameError::Read(e))) => {
                    eprintln!("pairing stream failed: {e}");
                    hs.abort(reject::CONNECTION_LOST, "connection lost")
                }
                Ok(_) => hs.abort(reject::CONNECTION_LOST, "connection lost"),
            };
            if let Some(body) = &out.send {
                let _ = send.write_all(&wire::encode_frame(body)).await;
            }
            match out.done {
                Some(Ok(r)) => match self.store(&r) {
                    Ok(_) => break Ok(r),
                    Err(e) => {
                        let _ = send
                            .write_all(&wire::encode_frame(
                                &wire::Message::reject(
                                    reject::INTERNAL,
                                    "could not store the pairing",
                                )
                                .encode(),
                            ))
                            .await;
                        break Err(Failure {
                            code: reject::INTERNAL,
                            reason: format!("storing the pairing failed: {e}"),
                            by_peer: false,
                        });
                    }
                },
                Some(Err(f)) => break Err(f),
                None if hs.is_finished() => {
                    break Err(Failure {
                        code: reject::UNSPECIFIED,
                        reason: "finished".into(),
                        by_peer: false,
                    });
                }
                None => {}
            }
        };
        let _ = send.finish();
        // Let the last message (the Reject, or our end of stream) reach the host before the
        // caller may close the connection: wait for its acknowledgement, at most 1 s.
        let _ = tokio::time::timeout(GRACE, send.stopped()).await;
        Ok(outcome)
    }

    async fn run_host(
        self: Arc<Self>,
        conn: Connection,
        mut send: SendStream,
        mut recv: RecvStream,
        m1: Vec<u8>,
    ) {
        let remote = id_bytes(conn.remote_id());
        let Ok(cb) = conn_binding(&conn, PAIRING_BINDING_LABEL) else {
            refuse(&mut send, &mut recv, stream::HANDLER_ERROR);
            return;
        };
        let session = {
            let mut inner = self.lock();
            inner.session_seq += 1;
            inner.session_seq
        };
        let mut hs = HostHandshake::new(self.id, remote, cb, self.info.clone(), session);
        bump(&self.counters.pairing_messages_received);
        let mut out = {
            let mut inner = self.lock();
            hs.receive(&mut inner.book, &m1, Instant::now(), os_rng())
        };
        let outcome = loop {
            if let Some(Ok(r)) = &out.done {
                // commit before Complete
                if let Err(e) = self.store(r) {
                    let reject =
                        wire::Message::reject(reject::INTERNAL, "could not store the pairing")
                            .encode();
                    let _ = send.write_all(&wire::encode_frame(&reject)).await;
                    break Err(Failure {
                        code: reject::INTERNAL,
                        reason: format!("storing the pairing failed: {e}"),
                        by_peer: false,
                    });
                }
            }
            if let Some(body) = &out.send {
                let _ = send.write_all(&wire::encode_frame(body)).await;
            }
            match out.done.take() {
                Some(done) => break done,
                None if hs.is_finished() => {
                    break Err(Failure {
                        code: reject::UNSPECIFIED,
                        reason: "finished".into(),
                        by_peer: false,
                    });
                }
                None => {}
            }
            let wait = hs
                .deadline
                .map(|d| d.saturating_duration_since(Instant::now()))
                .unwrap_or(Duration::from_secs(30));
            out = match tokio::time::timeout(wait, read_frame(&mut recv, MAX_MESSAGE)).await {
                Err(_) => {
                    let mut inner = self.lock();
                    let now = Instant::now();
                    match hs.check_deadline(&mut inner.book, now) {
                        Some(o) => o,
                        None => hs.abort(&mut inner.book, reject::TIMEOUT, "handshake timed out"),
                    }
                }
                Ok(Ok(Some(body))) => {
                    bump(&self.counters.pairing_messages_received);
                    let mut inner = self.lock();
                    hs.receive(&mut inner.book, &body, Instant::now(), os_rng())
                }
                Ok(Err(FrameError::TooLarge)) => {
                    let mut inner = self.lock();
                    hs.abort(&mut inner.book, reject::TOO_LARGE, "frame over 64 KiB")
                }
                Ok(_) => {
                    let mut inner = self.lock();
                    hs.connection_lost(&mut inner.book)
                }
            };
        };
        let _ = send.finish();
        match outcome {
            Ok(r) => {
                self.lock().conns.insert(remote, conn.clone());
                // Let the joiner finish its side (it has stored the pairing then), or 1 s.
                let _ = tokio::time::timeout(GRACE, recv.read_to_end(MAX_MESSAGE)).await;
                let _ = self.host_events.send(HostEvent::Paired(Box::new(r)));
            }
            Err(f) => {
                let _ = self.host_events.send(HostEvent::Failed(f));
                if !self.lock().devices.contains_key(&remote) {
                    tokio::time::sleep(GRACE).await;
                    conn.close(VarInt::from_u32(close::PAIRING_FAILED), b"pairing failed");
                }
            }
        }
    }

    // ------------------------------------------------------------------ connections

    async fn accept_loop(self: Arc<Self>) {
        while let Some(incoming) = self.ep.accept().await {
            let node = self.clone();
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                let peer = id_bytes(conn.remote_id());
                let (paired, hosting) = {
                    let inner = node.lock();
                    (
                        inner.devices.contains_key(&peer),
                        inner.hosting(Instant::now()),
                    )
                };
                let unknown = node.counters.unknown_connections.load(Ordering::Relaxed);
                if !paired && (!hosting || unknown >= MAX_UNKNOWN_CONNECTIONS) {
                    bump(&node.counters.connections_refused);
                    bump(&node.counters.not_admitted);
                    conn.close(VarInt::from_u32(close::NOT_PAIRED), b"not paired");
                    return;
                }
                bump(&node.counters.connections_accepted);
                if paired {
                    node.lock().conns.insert(peer, conn.clone());
                } else {
                    bump(&node.counters.unknown_connections);
                }
                node.serve(conn, !paired);
            });
        }
    }

    /// Serves every stream the peer opens on `conn`.
    pub fn serve(self: &Arc<Self>, conn: Connection, unknown: bool) {
        let node = self.clone();
        tokio::spawn(async move {
            while let Ok((send, recv)) = conn.accept_bi().await {
                let node = node.clone();
                let conn = conn.clone();
                tokio::spawn(async move { node.dispatch(conn, send, recv).await });
            }
            if unknown {
                node.counters
                    .unknown_connections
                    .fetch_sub(1, Ordering::Relaxed);
            }
            let peer = id_bytes(conn.remote_id());
            let mut inner = node.lock();
            inner.channels.remove(&conn.stable_id());
            if inner
                .conns
                .get(&peer)
                .is_some_and(|c| c.stable_id() == conn.stable_id())
            {
                inner.conns.remove(&peer);
            }
        });
    }

    async fn dispatch(
        self: Arc<Self>,
        conn: Connection,
        mut send: SendStream,
        mut recv: RecvStream,
    ) {
        let first =
            match tokio::time::timeout(FIRST_FRAME_TIMEOUT, read_frame(&mut recv, MAX_FIRST_FRAME))
                .await
            {
                Err(_) => return refuse(&mut send, &mut recv, stream::TIMEOUT),
                Ok(Ok(Some(f))) => f,
                Ok(Err(FrameError::TooLarge | FrameError::Truncated)) => {
                    return refuse(&mut send, &mut recv, stream::FRAME_TOO_LARGE);
                }
                Ok(_) => return,
            };
        let Ok((kind, used)) = wire::decode_header(&first) else {
            return refuse(&mut send, &mut recv, stream::BAD_ENVELOPE);
        };
        let body = first[used..].to_vec();
        let peer = id_bytes(conn.remote_id());
        if kind == PAIR_KIND {
            if !self.lock().hosting(Instant::now()) || body.len() > MAX_MESSAGE {
                return refuse(&mut send, &mut recv, stream::NOT_ADMITTED);
            }
            return self.run_host(conn, send, recv, body).await;
        }
        if !self.lock().devices.contains_key(&peer) {
            bump(&self.counters.not_admitted);
            return refuse(&mut send, &mut recv, stream::NOT_ADMITTED);
        }
        if kind != MSG_KIND {
            return refuse(&mut send, &mut recv, stream::UNKNOWN_KIND);
        }
        let channel = match self.channel(&conn, peer) {
            Ok(c) => c,
            Err(_) => return refuse(&mut send, &mut recv, stream::HANDLER_ERROR),
        };
        let opened = channel
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .open(&kind, &body, None);
        let opened = opened.and_then(|m| {
            let mut inner = self.lock();
            if inner.seen.entry(peer).or_default().add(m.message_id) {
                Ok(m)
            } else {
                Err(messaging::Rejected(stream::DUPLICATE))
            }
        });
        let msg = match opened {
            Ok(m) => m,
            Err(r) => {
                bump(&self.counters.messages_rejected);
                *self.lock().rejections.entry(r.to_string()).or_default() += 1;
                emit(
                    json!({"event": "rejected_incoming", "peer": hex(&peer), "code": r.0, "name": r.to_string()}),
                );
                return refuse(&mut send, &mut recv, r.0);
            }
        };
        bump(&self.counters.messages_delivered);
        let mut reply = b"rust got ".to_vec();
        reply.extend_from_slice(&msg.plaintext);
        let sealed = channel.lock().unwrap_or_else(|e| e.into_inner()).seal(
            &kind,
            &reply,
            &new_message_id(),
            Some(&msg.message_id),
        );
        emit(json!({
            "event": "message",
            "peer": hex(&peer),
            "kind": kind,
            "text": String::from_utf8_lossy(&msg.plaintext),
            "message_id": hex(&msg.message_id),
            "counter": msg.counter,
            "connection": conn.stable_id(),
            "stats": self.stats(),
        }));
        if send.write_all(&sealed).await.is_ok() {
            let _ = send.finish();
        }
    }

    fn channel(&self, conn: &Connection, peer: [u8; 32]) -> Result<Arc<Mutex<MessageChannel>>> {
        let mut inner = self.lock();
        if let Some(ch) = inner.channels.get(&conn.stable_id()) {
            return Ok(ch.clone());
        }
        let dev = inner.devices.get(&peer).context("not paired")?;
        let cb = conn_binding(conn, messaging::BINDING_LABEL)?;
        let ch = Arc::new(Mutex::new(MessageChannel::new(
            self.id,
            peer,
            &dev.keys()?,
            &cb,
        )));
        inner.channels.insert(conn.stable_id(), ch.clone());
        Ok(ch)
    }

    /// The live connection to `peer`, or a new one (dialed by id, with a ticket hint if any).
    pub async fn connection(self: &Arc<Self>, peer: [u8; 32]) -> Result<Connection> {
        let (existing, hint) = {
            let inner = self.lock();
            (
                inner.conns.get(&peer).cloned(),
                inner.hints.get(&peer).cloned(),
            )
        };
        if let Some(c) = existing
            && c.close_reason().is_none()
        {
            return Ok(c);
        }
        let id = EndpointId::from_bytes(&peer)?;
        let addr = hint.unwrap_or_else(|| EndpointAddr::from(id));
        let conn = tokio::time::timeout(DIAL_TIMEOUT, self.ep.connect(addr, ALPN))
            .await
            .map_err(|_| anyhow!("dialing timed out"))??;
        bump(&self.counters.connections_dialed);
        self.lock().conns.insert(peer, conn.clone());
        self.serve(conn.clone(), false);
        Ok(conn)
    }

    /// Sends `data` to a paired device and returns its (decrypted) reply.
    pub async fn request(
        self: &Arc<Self>,
        peer: [u8; 32],
        data: &[u8],
        debug: Fault,
    ) -> Result<Vec<Reply>> {
        if !self.lock().devices.contains_key(&peer) {
            bail!("{} is not a paired device", hex(&peer));
        }
        let conn = self.connection(peer).await?;
        let channel = self.channel(&conn, peer)?;
        let mid: MessageId = new_message_id();
        let mut sealed = channel
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .seal(MSG_KIND, data, &mid, None);
        if debug == Fault::Tamper {
            let last = sealed.len() - 1;
            sealed[last] ^= 0x01;
        }
        let mut first = wire::encode_header(MSG_KIND);
        first.extend_from_slice(&sealed);
        let frame = wire::encode_frame(&first);
        let rounds = if debug == Fault::Replay { 2 } else { 1 };
        let mut replies = Vec::new();
        for _ in 0..rounds {
            bump(&self.counters.requests_sent);
            let (mut send, mut recv) = conn.open_bi().await?;
            match send.write_all(&frame).await {
                Ok(()) => {}
                Err(WriteError::Stopped(code)) => {
                    replies.push(Reply::Refused(code.into_inner()));
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
            send.finish()?;
            match recv.read_to_end(MAX_FIRST_FRAME).await {
                Ok(raw) if raw.is_empty() => replies.push(Reply::Ok(Vec::new())),
                Ok(raw) => {
                    let opened = channel.lock().unwrap_or_else(|e| e.into_inner()).open(
                        MSG_KIND,
                        &raw,
                        Some(&mid),
                    );
                    match opened {
                        Ok(m) => replies.push(Reply::Ok(m.plaintext)),
                        Err(r) => bail!("the reply was refused here: {r}"),
                    }
                }
                Err(ReadToEndError::Read(ReadError::Reset(code))) => {
                    replies.push(Reply::Refused(code.into_inner()))
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(replies)
    }
}
