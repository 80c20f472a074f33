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
    Connection, PortmapperConfig, QuicTransportConfig, ReadError, ReadToEndError, RecvStream,
    SendStream, VarInt, WriteError, presets,
};
use iroh::{Endpoint, EndpointAddr, EndpointId, RelayConfig, RelayMap, RelayMode, RelayUrl};
use iroh_tickets::endpoint::EndpointTicket;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::admission::{Admit, Slots};
use crate::code::PairingCode;
use crate::delivered::{self, Check, Delivered};
use crate::kdf::{ALPN, PAIRING_BINDING_LABEL};
use crate::messaging::{self, MessageChannel, MessageId, new_message_id};
use crate::pairing::{
    CONFIRM_TIMEOUT, Failure, HANDSHAKE_TIMEOUT, HostHandshake, JoinerHandshake, Offer, OfferBook,
    PairingResult, os_rng,
};
use crate::state::{Device, StateDir, hex};
use crate::wire::{
    self, DeviceInfo, FrameDecoder, FrameError, KindLimits, MAX_MESSAGE, MAX_PAIRING_FIRST_FRAME,
    MSG_KIND, Message, PAIR_KIND, PAIR_KIND_V1, close, reject, stream,
};

/// The acceptor's bound on a paired peer's first frame: a 16 MiB message plus 1 KiB (§9.1).
pub const MAX_FIRST_FRAME: usize = 16 * 1024 * 1024 + 1024;
/// The first frame of a stream from an unknown peer (§9.1, §11).
pub const UNKNOWN_FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(10);
/// The first frame of a stream from a paired peer.
pub const PAIRED_FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(30);
/// An unknown connection must deliver its `pair2` first frame within this (§9.1).
pub const UNKNOWN_START_TIMEOUT: Duration = Duration::from_secs(5);
pub const JOINER_REPLY_TIMEOUT: Duration = HANDSHAKE_TIMEOUT;
/// The joiner waits this long for the host's FIN after Accept (§5).
pub const JOINER_FIN_TIMEOUT: Duration = Duration::from_secs(5);
pub const GRACE: Duration = Duration::from_secs(1);
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// At most this many connections from unknown peers at a time (§9.1).
pub const MAX_UNKNOWN_CONNECTIONS: usize = 4;
/// Concurrent bidirectional streams an unknown peer may open (the endpoint's initial limit).
pub const UNKNOWN_MAX_STREAMS: u32 = 2;
/// ... and a paired one (raised on promotion, or when we dial a paired peer).
pub const PAIRED_MAX_STREAMS: u32 = 100;

/// First-frame limits of an unknown peer: pairing kinds only.
pub const UNKNOWN_LIMITS: KindLimits = KindLimits {
    pairing: MAX_PAIRING_FIRST_FRAME,
    other: 0,
};
/// First-frame limits of a paired peer.
pub const PAIRED_LIMITS: KindLimits = KindLimits {
    pairing: MAX_PAIRING_FIRST_FRAME,
    other: MAX_FIRST_FRAME,
};

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

/// A relay entry, as the Python package takes it: a relay URL, optionally ending in `#qad=none`
/// (the relay runs no QUIC address discovery: no QAD probe is sent or awaited) or `#qad=PORT`
/// (its QAD endpoint is on PORT of the URL's host, not iroh's default 7842). The `#qad=` part
/// only configures this client; the relay URL is the part before it.
pub fn relay_config(entry: &str) -> Result<RelayConfig> {
    let (url, qad) = match entry.split_once("#qad=") {
        Some((url, qad)) => (url, Some(qad)),
        None => (entry, None),
    };
    let url = RelayUrl::from_str(url).with_context(|| format!("bad relay URL {entry:?}"))?;
    // `RelayConfig` is non-exhaustive: start from the URL's defaults (QAD at port 7842).
    let mut config = RelayConfig::from(url);
    match qad {
        None => {}
        Some("none") => config.quic = None,
        Some(port) => {
            let port = port
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .with_context(|| {
                    format!("bad relay URL {entry:?}: #qad= takes 'none' or a port (1-65535)")
                })?;
            if let Some(quic) = config.quic.as_mut() {
                quic.port = port;
            }
        }
    }
    Ok(config)
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
    /// Unknown connections closed to make room for a newcomer (§9.1).
    evicted: AtomicU64,
    /// Unknown connections closed for not starting to pair in time.
    start_timeouts: AtomicU64,
    /// Version-1 pairing streams refused (§2.1).
    version_refused: AtomicU64,
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

struct Inner {
    /// Admitted connections from unknown peers (§9.1).
    unknown: Slots<Connection>,
    devices: HashMap<[u8; 32], Device>,
    book: OfferBook,
    /// Delivered message ids per device, persisted (§13.8), and the ids being handled.
    delivered: Delivered,
    /// One channel per connection (by stable id), with the peer it is for.
    channels: HashMap<usize, Arc<Mutex<MessageChannel>>>,
    conns: HashMap<[u8; 32], Connection>,
    hints: HashMap<[u8; 32], EndpointAddr>,
    rejections: BTreeMap<String, u64>,
    session_seq: u64,
}

impl Default for Inner {
    fn default() -> Self {
        Self {
            unknown: Slots::new(MAX_UNKNOWN_CONNECTIONS),
            devices: HashMap::new(),
            book: OfferBook::default(),
            delivered: Delivered::memory(),
            channels: HashMap::new(),
            conns: HashMap::new(),
            hints: HashMap::new(),
            rejections: BTreeMap::new(),
            session_seq: 0,
        }
    }
}

impl Inner {
    fn hosting(&self, now: Instant) -> bool {
        self.book.hosting(now)
    }
}

/// A message being handled: dropped without being disarmed (a panic in the handler), it ends
/// the in-progress mark without recording the id (§13.8).
struct Handling<'a> {
    node: &'a Node,
    peer: [u8; 32],
    id: MessageId,
}

impl Drop for Handling<'_> {
    fn drop(&mut self) {
        self.node.lock().delivered.abandon(&self.peer, &self.id);
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
    /// The answer to every SAS question (`--confirm yes|no`).
    confirm: bool,
}

pub async fn bind_endpoint(key: iroh::SecretKey, net: &NetConfig) -> Result<Endpoint> {
    // Peers start with 2 bidirectional streams and no unidirectional ones; a paired peer's
    // connection is raised to PAIRED_MAX_STREAMS (QUIC cannot take back stream credit).
    let transport = QuicTransportConfig::builder()
        .max_concurrent_bidi_streams(VarInt::from_u32(UNKNOWN_MAX_STREAMS))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .build();
    let mut b = Endpoint::builder(presets::Minimal)
        .secret_key(key)
        .alpns(vec![ALPN.to_vec()])
        .transport_config(transport)
        .portmapper_config(PortmapperConfig::Disabled)
        .clear_ip_transports();
    b = match &net.relay {
        None => b.relay_mode(RelayMode::Disabled),
        Some(url) => b.relay_mode(RelayMode::Custom(RelayMap::from(relay_config(url)?))),
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

/// Why a frame was not read.
#[derive(Debug)]
enum ReadFail {
    Frame(FrameError),
    /// The stream ended inside the frame.
    Truncated,
    Read(ReadError),
}

/// Reads one frame into `dec`, chunk by chunk, never past its end; `Ok(false)` at a clean end
/// of stream before any byte.
async fn read_into(recv: &mut RecvStream, dec: &mut FrameDecoder) -> Result<bool, ReadFail> {
    while !dec.is_done() {
        match recv.read_chunk(dec.want()).await {
            Ok(Some(chunk)) => {
                dec.push(&chunk).map_err(ReadFail::Frame)?;
            }
            Ok(None) if dec.started() => return Err(ReadFail::Truncated),
            Ok(None) => return Ok(false),
            Err(e) => return Err(ReadFail::Read(e)),
        }
    }
    Ok(true)
}

/// One pairing frame (at most 64 KiB); `None` at a clean end of stream.
async fn read_frame(recv: &mut RecvStream) -> Result<Option<Vec<u8>>, ReadFail> {
    let mut dec = FrameDecoder::plain(MAX_MESSAGE);
    if !read_into(recv, &mut dec).await? {
        return Ok(None);
    }
    Ok(dec.into_body())
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
        confirm: bool,
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
            inner.delivered = Delivered::load(&s.dir, delivered::now_ms())?;
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
            confirm,
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
            "evicted": g(&c.evicted),
            "start_timeouts": g(&c.start_timeouts),
            "version_refused": g(&c.version_refused),
            "unknown_connections": self.lock().unknown.len(),
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
    /// When the offer expires, unknown connections are closed if no other offer is live.
    pub fn host_pairing(self: &Arc<Self>, words: usize, ttl: Duration) -> Result<PairingCode> {
        let code = PairingCode::generate(&self.ticket(), words)?;
        let offer = Offer::new(code.clone(), Instant::now(), ttl);
        self.lock().book.offers.insert(code.tag, offer);
        let node = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(ttl).await;
            node.check_offers();
        });
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

    /// When no offer is live any more, closes every unknown connection (§9.1).
    fn check_offers(&self) {
        let victims = {
            let mut inner = self.lock();
            let hosting = inner.hosting(Instant::now());
            inner.unknown.drain_unless_hosting(hosting)
        };
        for c in victims {
            c.close(
                VarInt::from_u32(close::NOT_PAIRED),
                b"no pairing code is hosted",
            );
        }
    }

    /// Admits a connection from an unknown peer while hosting: a free slot, or the oldest
    /// idle one's (§9.1). False: refused.
    fn admit_unknown(&self, conn: &Connection) -> bool {
        let admitted = {
            let mut inner = self.lock();
            let hosting = inner.hosting(Instant::now());
            inner
                .unknown
                .admit(conn.stable_id(), conn.clone(), Instant::now(), hosting)
        };
        match admitted {
            Admit::Refused => false,
            Admit::Admitted { evicted } => {
                if let Some(old) = evicted {
                    bump(&self.counters.evicted);
                    old.close(VarInt::from_u32(close::NOT_PAIRED), b"evicted");
                }
                true
            }
        }
    }

    /// The peer of `conn` is paired now: its connection stops counting as unknown.
    fn promote(&self, conn: &Connection) {
        let peer = id_bytes(conn.remote_id());
        {
            let mut inner = self.lock();
            inner.unknown.remove(conn.stable_id());
            inner.conns.insert(peer, conn.clone());
        }
        conn.set_max_concurrent_bi_streams(VarInt::from_u32(PAIRED_MAX_STREAMS));
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
        // a re-pairing keeps the delivered ids (§13.8)
        inner.devices.insert(r.peer_id, dev.clone());
        // channels of an existing connection were built with the old keys
        inner
            .channels
            .retain(|_, ch| ch.lock().map(|c| c.peer_id != r.peer_id).unwrap_or(false));
        Ok(dev)
    }

    /// Removes a stored pairing again (the host refused to finish, §5). The delivered ids
    /// stay: this undoes a pairing, it is not an unpairing (§13.8).
    fn forget(&self, peer: &[u8; 32]) -> Result<()> {
        let mut inner = self.lock();
        inner.devices.remove(peer);
        if let Some(s) = &self.state {
            let all: Vec<Device> = inner.devices.values().cloned().collect();
            s.save_devices(&all)?;
        }
        Ok(())
    }

    /// Unpairs `peer`: removes its entry and forgets its delivered ids (§13.8), closes its
    /// connection. False if it was not paired.
    pub fn unpair(&self, peer: &[u8; 32]) -> Result<bool> {
        let conn = {
            let mut inner = self.lock();
            let known = inner.devices.remove(peer).is_some();
            if let Some(s) = &self.state {
                let all: Vec<Device> = inner.devices.values().cloned().collect();
                s.save_devices(&all)?;
            }
            inner.delivered.forget(peer)?;
            inner
                .channels
                .retain(|_, ch| ch.lock().map(|c| c.peer_id != *peer).unwrap_or(false));
            if !known {
                return Ok(false);
            }
            inner.conns.remove(peer)
        };
        if let Some(c) = conn {
            c.close(VarInt::from_u32(close::NOT_PAIRED), b"unpaired");
        }
        Ok(true)
    }

    /// Whether `id` from `peer` is recorded as delivered (§13.8).
    #[cfg(test)]
    pub fn is_delivered(&self, peer: &[u8; 32], id: &MessageId) -> bool {
        self.lock()
            .delivered
            .is_delivered(peer, id, delivered::now_ms())
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

    fn emit_sas(&self, role: &str, peer: &[u8; 32], sas: &str) {
        emit(json!({
            "event": "sas",
            "role": role,
            "peer": hex(peer),
            "sas": sas,
            "formatted": format!("{} {}", &sas[..3], &sas[3..]),
            "approve": self.confirm,
        }));
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
        let host = id_bytes(conn.remote_id());
        let mut hs = JoinerHandshake::new(code, self.id, host, cb, self.info.clone());
        let (mut send, mut recv) = conn.open_bi().await?;
        let mut first = wire::encode_header(PAIR_KIND);
        first.extend(hs.start(os_rng()));
        let unsupported = || Failure {
            code: reject::UNSUPPORTED_VERSION,
            reason: "the host does not speak pairing version 2".into(),
            by_peer: true,
        };
        let refused_kind = |code: VarInt| {
            let c = code.into_inner();
            c == u64::from(stream::UNKNOWN_KIND) || c == u64::from(stream::NOT_ADMITTED)
        };
        match send.write_all(&wire::encode_frame(&first)).await {
            Ok(()) => {}
            Err(WriteError::Stopped(c)) if refused_kind(c) => return Ok(Err(unsupported())),
            Err(e) => return Err(e.into()),
        }
        let outcome = loop {
            let wait = if hs.heard_host() {
                CONFIRM_TIMEOUT
            } else {
                JOINER_REPLY_TIMEOUT
            };
            let mut out = match tokio::time::timeout(wait, read_frame(&mut recv)).await {
                Err(_) => hs.abort(reject::TIMEOUT, "no reply from the host in time"),
                Ok(Ok(Some(body))) => hs.receive(&body),
                Ok(Err(ReadFail::Frame(_))) => hs.abort(reject::TOO_LARGE, "frame over 64 KiB"),
                Ok(Err(ReadFail::Read(ReadError::Reset(c))))
                    if !hs.heard_host() && refused_kind(c) =>
                {
                    hs.abort(reject::CONNECTION_LOST, "reset");
                    break Err(unsupported());
                }
                Ok(Err(ReadFail::Read(e))) => {
                    eprintln!("pairing stream failed: {e}");
                    hs.abort(reject::CONNECTION_LOST, "connection lost")
                }
                Ok(_) => hs.abort(reject::CONNECTION_LOST, "connection lost"),
            };
            // Accept goes out only after the pairing is stored (below).
            if !matches!(out.done, Some(Ok(_)))
                && let Some(body) = out.send.take()
            {
                let _ = send.write_all(&wire::encode_frame(&body)).await;
            }
            if let Some(ready) = out.sas.take() {
                self.emit_sas("joiner", &host, &ready.sas);
                out = if self.confirm {
                    hs.approve()
                } else {
                    hs.decline()
                };
            }
            match out.done.take() {
                Some(Ok(r)) => {
                    if let Err(e) = self.store(&r) {
                        let reject =
                            Message::reject(reject::INTERNAL, "could not store the pairing");
                        let _ = send.write_all(&wire::encode_frame(&reject.encode())).await;
                        break Err(Failure {
                            code: reject::INTERNAL,
                            reason: format!("storing the pairing failed: {e}"),
                            by_peer: false,
                        });
                    }
                    let accept = out.send.take().expect("Accept goes with Paired");
                    let _ = send.write_all(&wire::encode_frame(&accept)).await;
                    let _ = send.finish();
                    // The host finishes after storing; a Reject instead undoes our entry.
                    match tokio::time::timeout(JOINER_FIN_TIMEOUT, read_frame(&mut recv)).await {
                        Ok(Ok(Some(body))) => {
                            let failure = match Message::decode(&body) {
                                Ok(Message::Reject { code, text }) => Failure {
                                    code: reject::from_wire(code),
                                    reason: text,
                                    by_peer: true,
                                },
                                _ => Failure {
                                    code: reject::UNEXPECTED,
                                    reason: "a message after Accept".into(),
                                    by_peer: false,
                                },
                            };
                            let _ = self.forget(&r.peer_id);
                            break Err(failure);
                        }
                        // FIN, a lost connection or no answer: paired (§5)
                        _ => {
                            conn.set_max_concurrent_bi_streams(VarInt::from_u32(
                                PAIRED_MAX_STREAMS,
                            ));
                            break Ok(r);
                        }
                    }
                }
                Some(Err(f)) => {
                    if let Some(body) = out.send.take() {
                        let _ = send.write_all(&wire::encode_frame(&body)).await;
                    }
                    break Err(f);
                }
                None => {
                    if let Some(body) = out.send.take() {
                        let _ = send.write_all(&wire::encode_frame(&body)).await;
                    }
                    if hs.is_finished() {
                        break Err(Failure {
                            code: reject::UNSPECIFIED,
                            reason: "finished".into(),
                            by_peer: false,
                        });
                    }
                }
            }
        };
        let _ = send.finish();
        // Let the last message (the Reject, or our end of stream) reach the host before the
        // caller may close the connection: wait for its acknowledgement, at most 1 s.
        let _ = tokio::time::timeout(GRACE, send.stopped()).await;
        Ok(outcome)
    }

    /// A version-1 `pair` stream: one Reject(UNSUPPORTED_VERSION), no PAKE work (§2.1).
    async fn refuse_v1(self: Arc<Self>, conn: Connection, mut send: SendStream) {
        bump(&self.counters.version_refused);
        let reject = Message::reject(
            reject::UNSUPPORTED_VERSION,
            "pairing version 1 is not supported: this device speaks version 2",
        );
        let _ = send.write_all(&wire::encode_frame(&reject.encode())).await;
        let _ = send.finish();
        let peer = id_bytes(conn.remote_id());
        emit(json!({"event": "version_refused", "peer": hex(&peer), "version": 1}));
        if !self.lock().devices.contains_key(&peer) {
            tokio::time::sleep(GRACE).await;
            self.lock().unknown.remove(conn.stable_id());
            conn.close(VarInt::from_u32(close::PAIRING_FAILED), b"pairing failed");
        }
    }

    async fn run_host(
        self: Arc<Self>,
        conn: Connection,
        mut send: SendStream,
        mut recv: RecvStream,
        m1: Vec<u8>,
    ) {
        let remote = id_bytes(conn.remote_id());
        if !self.lock().hosting(Instant::now()) {
            // Not served: a Reject, never a bare reset (§2.1).
            let reject = Message::reject(reject::EXPIRED, "no pairing code is hosted");
            let _ = send.write_all(&wire::encode_frame(&reject.encode())).await;
            let _ = send.finish();
            return;
        }
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
            self.lock()
                .unknown
                .set_active(conn.stable_id(), hs.is_active());
            if let Some(ready) = out.sas.take() {
                self.emit_sas("host", &remote, &ready.sas);
                let mut inner = self.lock();
                out = if self.confirm {
                    hs.approve(&mut inner.book, Instant::now())
                } else {
                    hs.decline(&mut inner.book)
                };
                continue;
            }
            if let Some(Ok(r)) = &out.done {
                if let Err(e) = self.store(r) {
                    let reject = Message::reject(reject::INTERNAL, "could not store the pairing");
                    let _ = send.write_all(&wire::encode_frame(&reject.encode())).await;
                    break Err(Failure {
                        code: reject::INTERNAL,
                        reason: format!("storing the pairing failed: {e}"),
                        by_peer: false,
                    });
                }
                self.promote(&conn);
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
                .unwrap_or(HANDSHAKE_TIMEOUT);
            out = match tokio::time::timeout(wait, read_frame(&mut recv)).await {
                Err(_) => {
                    let mut inner = self.lock();
                    match hs.check_deadline(&mut inner.book, Instant::now()) {
                        Some(o) => o,
                        None => hs.abort(&mut inner.book, reject::TIMEOUT, "handshake timed out"),
                    }
                }
                Ok(Ok(Some(body))) => {
                    bump(&self.counters.pairing_messages_received);
                    let mut inner = self.lock();
                    hs.receive(&mut inner.book, &body, Instant::now(), os_rng())
                }
                Ok(Err(ReadFail::Frame(_))) => {
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
                let _ = self.host_events.send(HostEvent::Paired(Box::new(r)));
                self.check_offers();
            }
            Err(f) => {
                let bad_message = f.code == reject::MALFORMED && !f.by_peer;
                let _ = self.host_events.send(HostEvent::Failed(f));
                if !self.lock().devices.contains_key(&remote) {
                    tokio::time::sleep(GRACE).await;
                    self.lock().unknown.remove(conn.stable_id());
                    let code = if bad_message {
                        close::PROTOCOL_ERROR
                    } else {
                        close::PAIRING_FAILED
                    };
                    conn.close(VarInt::from_u32(code), b"pairing failed");
                }
                self.check_offers();
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
                let paired = node.lock().devices.contains_key(&peer);
                if paired {
                    bump(&node.counters.connections_accepted);
                    conn.set_max_concurrent_bi_streams(VarInt::from_u32(PAIRED_MAX_STREAMS));
                    node.lock().conns.insert(peer, conn.clone());
                    node.serve(conn, false);
                    return;
                }
                if !node.admit_unknown(&conn) {
                    bump(&node.counters.connections_refused);
                    bump(&node.counters.not_admitted);
                    conn.close(VarInt::from_u32(close::NOT_PAIRED), b"not paired");
                    return;
                }
                bump(&node.counters.connections_accepted);
                let n = node.clone();
                let c = conn.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(UNKNOWN_START_TIMEOUT).await;
                    let late = n.lock().unknown.start_deadline(c.stable_id()).is_some();
                    if late {
                        bump(&n.counters.start_timeouts);
                        c.close(
                            VarInt::from_u32(close::NOT_PAIRED),
                            b"pairing did not start",
                        );
                    }
                });
                node.serve(conn, true);
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
            let peer = id_bytes(conn.remote_id());
            let mut inner = node.lock();
            if unknown {
                inner.unknown.remove(conn.stable_id());
            }
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
        let peer = id_bytes(conn.remote_id());
        let paired = self.lock().devices.contains_key(&peer);
        let (limits, timeout) = if paired {
            (PAIRED_LIMITS, PAIRED_FIRST_FRAME_TIMEOUT)
        } else {
            (UNKNOWN_LIMITS, UNKNOWN_FIRST_FRAME_TIMEOUT)
        };
        let mut dec = FrameDecoder::first(limits);
        match tokio::time::timeout(timeout, read_into(&mut recv, &mut dec)).await {
            Err(_) => return refuse(&mut send, &mut recv, stream::TIMEOUT),
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => return,
            Ok(Err(ReadFail::Frame(e))) => {
                if e == FrameError::NotAdmitted {
                    bump(&self.counters.not_admitted);
                }
                return refuse(&mut send, &mut recv, e.stream_code());
            }
            Ok(Err(ReadFail::Truncated)) => {
                return refuse(&mut send, &mut recv, stream::FRAME_TOO_LARGE);
            }
            Ok(Err(ReadFail::Read(_))) => return,
        }
        let kind = dec.kind().unwrap_or_default().to_owned();
        let first = dec.into_body().unwrap_or_default();
        let body = first[2 + kind.len()..].to_vec();
        if kind == PAIR_KIND_V1 {
            return self.refuse_v1(conn, send).await;
        }
        if kind == PAIR_KIND {
            self.lock().unknown.started(conn.stable_id());
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
        // §13.8: DUPLICATE for a delivered id, IN_PROGRESS for one being handled (streams are
        // served concurrently); otherwise it is marked in progress until recorded below.
        let opened = opened.and_then(|m| {
            match self
                .lock()
                .delivered
                .begin(&peer, &m.message_id, delivered::now_ms())
            {
                Check::New => Ok(m),
                Check::Duplicate => Err(messaging::Rejected(stream::DUPLICATE)),
                Check::InProgress => Err(messaging::Rejected(stream::IN_PROGRESS)),
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
        // Whatever happens to this task before the commit below (a panic), the id stops being
        // in progress and nothing is recorded: a retry is delivered.
        let handling = Handling {
            node: &self,
            peer,
            id: msg.message_id,
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
        // The handler (the echo above) has returned: record the id before the reply goes out.
        // If the log cannot be written the id is still recorded in memory and the reply goes
        // out (the handler did run once); only a restart would deliver a retry again.
        std::mem::forget(handling);
        let recorded = self
            .lock()
            .delivered
            .commit(&peer, &msg.message_id, delivered::now_ms());
        if let Err(e) = recorded {
            eprintln!("recording a delivered message id failed: {e:#}");
        }
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
        if self.lock().devices.contains_key(&peer) {
            conn.set_max_concurrent_bi_streams(VarInt::from_u32(PAIRED_MAX_STREAMS));
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kdf::{Role, SessionKeys};

    #[test]
    fn relay_entries_say_where_qad_is() {
        let url = RelayUrl::from_str("http://127.0.0.1:3340/").unwrap();
        let plain = relay_config("http://127.0.0.1:3340/").unwrap();
        assert_eq!(plain.url, url);
        assert_eq!(plain.quic.map(|q| q.port), Some(7842));
        let none = relay_config("http://127.0.0.1:3340/#qad=none").unwrap();
        assert_eq!(none.url, url);
        assert!(none.quic.is_none());
        let port = relay_config("http://127.0.0.1:3340/#qad=40000").unwrap();
        assert_eq!(port.url, url);
        assert_eq!(port.quic.map(|q| q.port), Some(40000));
        for bad in [
            "http://127.0.0.1:3340/#qad=",
            "http://127.0.0.1:3340/#qad=0",
            "x#qad=none",
        ] {
            assert!(relay_config(bad).is_err(), "{bad}");
        }
    }

    fn result(peer: [u8; 32], key: u8) -> PairingResult {
        PairingResult {
            role: Role::Host,
            peer_id: peer,
            keys: SessionKeys {
                send: [key; 32],
                receive: [key ^ 0xff; 32],
            },
            sas: "123456".into(),
            peer_info: DeviceInfo {
                name: "peer".into(),
                device_type: "other".into(),
                os: "linux".into(),
                app_version: "1".into(),
            },
            transcript_hash: [0; 32],
        }
    }

    fn info() -> DeviceInfo {
        DeviceInfo {
            name: "node".into(),
            device_type: "other".into(),
            os: "linux".into(),
            app_version: "1".into(),
        }
    }

    /// Re-pairing and an undone pairing keep a device's delivered ids, unpairing forgets them,
    /// and a new node on the same state directory sees what is on disk.
    #[tokio::test]
    async fn delivered_ids_survive_re_pairing_and_go_with_unpairing() {
        let dir = std::env::temp_dir().join(format!(
            "iroh-pair-node-test-node-delivered-{}-{}",
            std::process::id(),
            hex(&new_message_id()[..4])
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let state = StateDir::open(&dir).expect("state");
        let (node, _events) = Node::open(Some(state), info(), &NetConfig::default(), true)
            .await
            .expect("open");
        let (a, b) = ([0xa1; 32], [0xb2; 32]);
        let (m1, m2) = (new_message_id(), new_message_id());
        node.store(&result(a, 1)).expect("pair a");
        node.store(&result(b, 2)).expect("pair b");
        for (peer, m) in [(a, m1), (b, m2)] {
            let mut inner = node.lock();
            assert_eq!(
                inner.delivered.begin(&peer, &m, delivered::now_ms()),
                Check::New
            );
            inner
                .delivered
                .commit(&peer, &m, delivered::now_ms())
                .expect("record");
        }
        node.store(&result(a, 3)).expect("re-pair a");
        assert!(node.is_delivered(&a, &m1), "re-pairing keeps the ids");
        node.forget(&a).expect("undo");
        assert!(
            node.is_delivered(&a, &m1),
            "an undone pairing keeps them too"
        );
        node.store(&result(a, 4)).expect("pair a again");
        assert!(node.unpair(&b).expect("unpair"));
        assert!(!node.is_delivered(&b, &m2), "unpairing forgets them");
        assert!(!node.unpair(&b).expect("unpair again"));
        // what a restarted node loads from the same directory
        let reloaded = Delivered::load(&dir, delivered::now_ms()).expect("reload");
        assert!(reloaded.is_delivered(&a, &m1, delivered::now_ms()));
        assert!(!reloaded.is_delivered(&b, &m2, delivered::now_ms()));
        assert_eq!(reloaded.count(&b), 0);
        node.ep.close().await;
        drop(node);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
