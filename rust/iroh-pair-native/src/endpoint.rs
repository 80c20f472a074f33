//! `Endpoint`: bind, dial, accept, close, and the per-endpoint counters.

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use iroh::address_lookup::{DnsAddressLookup, PkarrPublisher, PkarrResolver};
use iroh::dns::DnsResolver;
use iroh::endpoint::{IdleTimeout, PortmapperConfig, QuicTransportConfig, VarInt, presets};
use iroh::{RelayConfig, RelayMode, RelayUrl};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::bridge::Bridge;
use crate::connection::Connection;
use crate::counters::Counters;
use crate::error::{Error, n0_error_chain};
use crate::files::{BLOBS_ALPN, BlobStore, Provider};
use crate::keys::{EndpointAddr, EndpointId, SecretKey};
use crate::mdns::MdnsAnnouncement;
use crate::outcome::{ClassOut, Plain};
use crate::runtime::{BLOBS_RUNTIME, RUNTIME};
use crate::sync::lock;
use iroh_mdns_address_lookup::MdnsAddressLookup;
use n0_future::StreamExt;

fn secs(what: &str, v: f64) -> Result<Duration, Error> {
    Duration::try_from_secs_f64(v).map_err(|_| {
        Error::Value(format!(
            "{what} must be a positive number of seconds, got {v}"
        ))
    })
}

/// The network options of an endpoint: an `iroh_pair.transport.NetworkOptions` (a frozen
/// dataclass), read attribute by attribute.
#[derive(FromPyObject)]
pub struct Options {
    relay: Relay,
    bind_addrs: Vec<String>,
    clear_ip: bool,
    portmapper: bool,
    lookup: Lookup,
    mdns: bool,
    ca_certs: Option<Vec<u8>>,
    keep_alive: Option<f64>,
    idle_timeout: Option<f64>,
    max_bi_streams: Option<u64>,
}

/// `NetworkOptions.relay`: `"disabled"`, `"default"` (n0's public relays) or relays of your own.
#[derive(FromPyObject)]
enum Relay {
    Mode(String),
    Custom(Vec<RelayEntry>),
}

/// `iroh_pair.transport.RelayConfig`, read by attribute: a relay URL and the port of its QUIC
/// address discovery (QAD) on the URL's host, `None` for a relay without QAD. With QAD
/// configured but not answering, iroh holds the endpoint's first net report, and so its home
/// relay and `online()`, until its 3 s probe timeout.
#[derive(FromPyObject)]
struct RelayEntry {
    url: String,
    quic_port: Option<u16>,
}

impl RelayEntry {
    fn config(&self) -> Result<RelayConfig, Error> {
        let url = RelayUrl::from_str(&self.url)
            .map_err(|e| Error::Value(format!("bad relay URL {:?}: {e}", self.url)))?;
        // `RelayConfig` is non-exhaustive: start from the URL's defaults (QAD at port 7842).
        let mut config = RelayConfig::from(url);
        match self.quic_port {
            None => config.quic = None,
            Some(0) => {
                return Err(Error::Value(format!(
                    "relay {:?}: quic_port must be None or a port (1-65535)",
                    self.url
                )));
            }
            Some(port) => {
                if let Some(quic) = config.quic.as_mut() {
                    quic.port = port;
                }
            }
        }
        Ok(config)
    }
}

/// `NetworkOptions.lookup`: `"none"`, `"n0"` or a `LookupConfig` (self-hosted servers).
#[derive(FromPyObject)]
enum Lookup {
    Mode(String),
    Custom(CustomLookup),
}

/// `iroh_pair.transport.LookupConfig`, read by attribute.
#[derive(FromPyObject)]
struct CustomLookup {
    pkarr_url: String,
    dns_origin: String,
    dns_server: Option<String>,
}

/// A bound iroh endpoint.
#[pyclass(module = "iroh_pair._native", frozen)]
pub struct Endpoint {
    pub ep: iroh::Endpoint,
    pub counters: Arc<Counters>,
    /// The endpoint's own mDNS address lookup, when bound with `mdns=True`; dropped on close
    /// (the Python object may outlive the endpoint, its announcements must not).
    mdns: std::sync::Mutex<Option<MdnsAddressLookup>>,
    /// A second, listen-only mDNS instance behind `lan_events`, made on first use: the
    /// endpoint's own instance does not report ids it resolved for a dial, so a device this
    /// endpoint dialed first would never be reported as seen on the LAN.
    lan_watch: std::sync::Mutex<Option<MdnsAddressLookup>>,
    /// The ALPNs given at bind (the blobs ALPN is added to them by `serve_blobs`).
    alpns: Vec<Vec<u8>>,
    /// The blob provider connections on the blobs ALPN are handed to (see `files`).
    blobs: Arc<std::sync::Mutex<Option<Provider>>>,
    /// Connections whose handshake completed, for `accept` (filled by the handshake tasks of
    /// `accept_incoming`, started by the first `accept`).
    accepted: Arc<tokio::sync::Mutex<tokio::sync::mpsc::Receiver<iroh::endpoint::Connection>>>,
    /// Taken by the first `accept`, which starts `accept_incoming` with it.
    accepted_tx: std::sync::Mutex<Option<tokio::sync::mpsc::Sender<iroh::endpoint::Connection>>>,
}

/// Handshakes of incoming connections that may run at once. Each runs in its own task, so one
/// that stalls (a stranger who sends a first packet and nothing more) holds up no other; over
/// this many, a new incoming connection is refused at once.
const MAX_HANDSHAKES: usize = 64;
/// A handshake not complete by then is abandoned (rather than the QUIC idle timeout).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections done with their handshake and waiting for `accept`.
const ACCEPT_QUEUE: usize = 16;

/// Accepts the endpoint's incoming connections until it closes: every handshake in a task of
/// its own (at most `MAX_HANDSHAKES` at once, each within `HANDSHAKE_TIMEOUT`). Connections on
/// the blobs ALPN go to the blob provider once it serves a store; the others to `tx`, for
/// `accept`. The channel closes when the endpoint has closed and no handshake is left.
async fn accept_incoming(
    ep: iroh::Endpoint,
    counters: Arc<Counters>,
    blobs: Arc<std::sync::Mutex<Option<Provider>>>,
    tx: tokio::sync::mpsc::Sender<iroh::endpoint::Connection>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    while let Some(incoming) = ep.accept().await {
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            incoming.refuse();
            Counters::bump(&counters.handshakes_failed);
            continue;
        };
        let (counters, blobs, tx) = (counters.clone(), blobs.clone(), tx.clone());
        RUNTIME.spawn(async move {
            let done = tokio::time::timeout(HANDSHAKE_TIMEOUT, incoming).await;
            drop(slot);
            match done {
                // an endpoint bound with the blobs ALPN that does not serve a store hands
                // these connections to Python like any other
                Ok(Ok(conn)) if conn.alpn() == BLOBS_ALPN && lock(&blobs).is_some() => {
                    Counters::bump(&counters.blob_conns_accepted);
                    if let Some(p) = lock(&blobs).clone() {
                        BLOBS_RUNTIME.spawn(iroh_blobs::provider::handle_connection(
                            conn, p.store, p.events,
                        ));
                    }
                }
                Ok(Ok(conn)) => {
                    // waits while ACCEPT_QUEUE connections wait for `accept`
                    let _ = tx.send(conn).await;
                }
                Ok(Err(_)) | Err(_) => Counters::bump(&counters.handshakes_failed),
            }
        });
    }
}

#[pymethods]
impl Endpoint {
    /// Binds a new endpoint with `options` (an `iroh_pair.transport.NetworkOptions`, read by
    /// attribute name; see it for what each field means).
    #[staticmethod]
    #[pyo3(signature = (bridge, token, options, *, secret_key = None, alpns = Vec::new()))]
    fn bind(
        py: Python<'_>,
        bridge: &Bridge,
        token: u64,
        options: Options,
        secret_key: Option<PyRef<'_, SecretKey>>,
        alpns: Vec<Vec<u8>>,
    ) -> PyResult<Py<PyAny>> {
        let Options {
            relay,
            bind_addrs,
            clear_ip,
            portmapper,
            lookup,
            mdns,
            ca_certs,
            keep_alive,
            idle_timeout,
            max_bi_streams,
        } = options;
        let mut b = iroh::Endpoint::builder(presets::Minimal).alpns(alpns.clone());
        if let Some(k) = secret_key {
            b = b.secret_key(k.0.clone());
        }
        b = match relay {
            Relay::Mode(m) if m == "disabled" => b.relay_mode(RelayMode::Disabled),
            Relay::Mode(m) if m == "default" => b.relay_mode(iroh::endpoint::default_relay_mode()),
            Relay::Mode(other) => {
                return Err(Error::Value(format!(
                    "relay must be 'disabled', 'default' or a list of relay URLs, got {other:?}"
                ))
                .into());
            }
            Relay::Custom(entries) => {
                if entries.is_empty() {
                    return Err(Error::Value("relay needs at least one URL".into()).into());
                }
                let mut relays = Vec::new();
                for entry in &entries {
                    relays.push(entry.config()?);
                }
                b.relay_mode(RelayMode::Custom(relays.into_iter().collect()))
            }
        };
        if clear_ip || !bind_addrs.is_empty() {
            b = b.clear_ip_transports();
        }
        for a in &bind_addrs {
            let sa = SocketAddr::from_str(a)
                .map_err(|e| Error::Value(format!("bad bind address {a:?}: {e}")))?;
            b = b
                .bind_addr(sa)
                .map_err(|e| Error::Value(format!("bad bind address {a:?}: {e}")))?;
        }
        if let Some(pem) = ca_certs {
            // Extra roots for the endpoint's own HTTPS/QUIC clients (relay, pkarr, QUIC address
            // discovery at the relay), beside the built-in web PKI roots.
            use rustls_pki_types::CertificateDer;
            use rustls_pki_types::pem::PemObject;
            let roots = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| Error::Value(format!("ca_certs is not a PEM bundle: {e}")))?;
            if roots.is_empty() {
                return Err(Error::Value("ca_certs holds no PEM certificate".into()).into());
            }
            b = b.ca_tls_config(iroh::tls::CaTlsConfig::default().with_extra_roots(roots));
        }
        if !portmapper {
            b = b.portmapper_config(PortmapperConfig::Disabled);
        }
        let mut dns_server = None;
        match lookup {
            Lookup::Mode(m) if m == "none" => {}
            Lookup::Mode(m) if m == "n0" => {
                b = b
                    .address_lookup(PkarrPublisher::n0_dns())
                    .address_lookup(PkarrResolver::n0_dns())
                    .address_lookup(DnsAddressLookup::n0_dns());
            }
            Lookup::Mode(other) => {
                return Err(Error::Value(format!(
                    "lookup must be 'none', 'n0' or a LookupConfig, got {other:?}"
                ))
                .into());
            }
            Lookup::Custom(c) => {
                let url = url::Url::parse(&c.pkarr_url)
                    .map_err(|e| Error::Value(format!("bad pkarr URL {:?}: {e}", c.pkarr_url)))?;
                b = b
                    .address_lookup(PkarrPublisher::builder(url.clone()))
                    .address_lookup(PkarrResolver::builder(url))
                    .address_lookup(DnsAddressLookup::builder(c.dns_origin));
                dns_server = c.dns_server;
            }
        }
        if let Some(server) = dns_server {
            let sa = SocketAddr::from_str(&server)
                .map_err(|e| Error::Value(format!("bad DNS server address {server:?}: {e}")))?;
            b = b.dns_resolver(DnsResolver::with_nameserver(sa));
        }
        if keep_alive.is_some() || idle_timeout.is_some() || max_bi_streams.is_some() {
            let mut t = QuicTransportConfig::builder();
            if let Some(k) = keep_alive {
                t = t.keep_alive_interval(secs("keep_alive", k)?);
            }
            if let Some(i) = idle_timeout {
                let d = secs("idle_timeout", i)?;
                t = t.max_idle_timeout(Some(
                    IdleTimeout::try_from(d)
                        .map_err(|e| Error::Value(format!("idle_timeout out of range: {e}")))?,
                ));
            }
            if let Some(m) = max_bi_streams {
                t = t.max_concurrent_bidi_streams(
                    VarInt::from_u64(m)
                        .map_err(|e| Error::Value(format!("max_bi_streams out of range: {e}")))?,
                );
            }
            b = b.transport_config(t.build());
        }
        bridge.submit(py, token, async move {
            let ep = b.bind().await.map_err(|e| Error::Bind(e.to_string()))?;
            let mdns = if mdns {
                let m = crate::mdns::build(ep.id(), None, true)?;
                ep.address_lookup()
                    .map_err(|e| Error::Bind(e.to_string()))?
                    .add(m.clone());
                Some(m)
            } else {
                None
            };
            let (tx, rx) = tokio::sync::mpsc::channel(ACCEPT_QUEUE);
            Ok(ClassOut(Endpoint {
                ep,
                counters: Arc::new(Counters::default()),
                mdns: std::sync::Mutex::new(mdns),
                lan_watch: std::sync::Mutex::new(None),
                alpns,
                blobs: Arc::new(std::sync::Mutex::new(None)),
                accepted: Arc::new(tokio::sync::Mutex::new(rx)),
                accepted_tx: std::sync::Mutex::new(Some(tx)),
            }))
        })
    }

    /// This endpoint's id.
    #[getter]
    fn id(&self) -> EndpointId {
        EndpointId(self.ep.id())
    }

    /// The addresses this endpoint can be reached on right now (relay URL and bound sockets).
    fn addr(&self) -> EndpointAddr {
        EndpointAddr(self.ep.addr())
    }

    /// The local UDP sockets, as `"ip:port"` strings.
    fn bound_sockets(&self) -> Vec<String> {
        self.ep
            .bound_sockets()
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    /// Waits until the endpoint is connected to its home relay (never completes with relays off).
    fn online(&self, py: Python<'_>, bridge: &Bridge, token: u64) -> PyResult<Py<PyAny>> {
        let ep = self.ep.clone();
        bridge.submit(py, token, async move {
            ep.online().await;
            Ok(Plain(()))
        })
    }

    /// Asks the address lookup services for `id`: the first record found, as an address. With
    /// `fresh`, the DNS resolver's cache is cleared first (a negative answer is cached too).
    #[pyo3(signature = (bridge, token, id, fresh = false))]
    fn lookup(
        &self,
        py: Python<'_>,
        bridge: &Bridge,
        token: u64,
        id: &EndpointId,
        fresh: bool,
    ) -> PyResult<Py<PyAny>> {
        let ep = self.ep.clone();
        let id = id.0;
        bridge.spawn(token, async move {
            let services = ep
                .address_lookup()
                .map_err(|e| Error::Connect(n0_error_chain(&e)))?;
            if fresh && let Ok(dns) = ep.dns_resolver() {
                dns.clear_cache();
            }
            let mut found = std::pin::pin!(services.resolve(id));
            let mut errors = Vec::new();
            while let Some(item) = found.next().await {
                match item {
                    Ok(Ok(item)) => return Ok(ClassOut(EndpointAddr(item.into_endpoint_addr()))),
                    Ok(Err(e)) => errors.push(n0_error_chain(&e)),
                    Err(e) => return Err(Error::Connect(n0_error_chain(&e))),
                }
            }
            Err(Error::Connect(format!(
                "no address found for {id}: {}",
                errors.join("; ")
            )))
        });
        Ok(crate::bridge::pending(py))
    }

    /// Dials `target` on `alpn`. `timeout` (seconds) bounds the whole dial, lookup included.
    #[pyo3(signature = (bridge, token, target, alpn, timeout = None))]
    fn connect(
        &self,
        py: Python<'_>,
        bridge: &Bridge,
        token: u64,
        target: &Bound<'_, PyAny>,
        alpn: Vec<u8>,
        timeout: Option<f64>,
    ) -> PyResult<Py<PyAny>> {
        let addr: iroh::EndpointAddr = if let Ok(a) = target.cast::<EndpointAddr>() {
            a.get().0.clone()
        } else if let Ok(id) = target.cast::<EndpointId>() {
            iroh::EndpointAddr::new(id.get().0)
        } else if let Ok(s) = target.extract::<String>() {
            EndpointAddr::parse_ticket(&s)?.0
        } else {
            return Err(pyo3::exceptions::PyTypeError::new_err(
                "connect target must be an EndpointAddr, an EndpointId or a ticket string",
            ));
        };
        let timeout = timeout.map(|t| secs("timeout", t)).transpose()?;
        let ep = self.ep.clone();
        let counters = self.counters.clone();
        let heavy = bridge.heavy();
        bridge.spawn(token, async move {
            let _heavy = heavy;
            let dial = async {
                ep.connect(addr, &alpn)
                    .await
                    .map_err(|e| Error::Connect(n0_error_chain(&e)))
            };
            let conn = match timeout {
                Some(t) => tokio::time::timeout(t, dial)
                    .await
                    .map_err(|_| Error::Timeout(format!("dial did not complete within {t:?}")))??,
                None => dial.await?,
            };
            Counters::bump(&counters.conns_dialed);
            Ok(ClassOut(Connection::new(conn, counters)))
        });
        Ok(crate::bridge::pending(py))
    }

    /// Serves `store`'s offers on the blobs ALPN from now on: connections on it are handled
    /// natively (see `files`) and never returned by `accept`.
    fn serve_blobs(&self, store: &BlobStore) {
        *lock(&self.blobs) = Some(store.provider());
        let mut alpns = self.alpns.clone();
        alpns.push(BLOBS_ALPN.to_vec());
        self.ep.set_alpns(alpns);
    }

    /// Fetches blob `hash` from `peer` (an `EndpointAddr` or `EndpointId`) into `store` and
    /// exports it to `dest`: a subscription under `token` (see `files::BlobStore::start_fetch`).
    #[pyo3(signature = (bridge, token, store, peer, hash, dest, max_size = None))]
    #[allow(clippy::too_many_arguments)]
    fn fetch_blob(
        &self,
        bridge: &Bridge,
        token: u64,
        store: &BlobStore,
        peer: &Bound<'_, PyAny>,
        hash: &str,
        dest: String,
        max_size: Option<u64>,
    ) -> PyResult<()> {
        let addr: iroh::EndpointAddr = if let Ok(a) = peer.cast::<EndpointAddr>() {
            a.get().0.clone()
        } else if let Ok(id) = peer.cast::<EndpointId>() {
            iroh::EndpointAddr::new(id.get().0)
        } else {
            return Err(pyo3::exceptions::PyTypeError::new_err(
                "peer must be an EndpointAddr or an EndpointId",
            ));
        };
        store.start_fetch(
            bridge,
            token,
            self.ep.clone(),
            self.counters.clone(),
            addr,
            hash,
            dest,
            max_size,
        )?;
        Ok(())
    }

    /// The next incoming connection whose handshake completes; `None` once the endpoint is closed.
    /// Handshakes run concurrently (see `accept_incoming`, started by the first call): one
    /// that stalls does not hold up the next connection. Connections on the blobs ALPN go to
    /// the blob provider instead once it serves a store (see `serve_blobs`).
    fn accept(&self, py: Python<'_>, bridge: &Bridge, token: u64) -> PyResult<Py<PyAny>> {
        if let Some(tx) = lock(&self.accepted_tx).take() {
            let (ep, counters, blobs) =
                (self.ep.clone(), self.counters.clone(), self.blobs.clone());
            RUNTIME.spawn(accept_incoming(ep, counters, blobs, tx));
        }
        let accepted = self.accepted.clone();
        let counters = self.counters.clone();
        bridge.spawn(token, async move {
            let conn = accepted.lock().await.recv().await;
            Ok(conn.map(|conn| {
                Counters::bump(&counters.conns_accepted);
                ClassOut(Connection::new(conn, counters))
            }))
        });
        Ok(crate::bridge::pending(py))
    }

    /// Closes every connection gracefully and stops the endpoint.
    fn close(&self, py: Python<'_>, bridge: &Bridge, token: u64) -> PyResult<Py<PyAny>> {
        let ep = self.ep.clone();
        let mdns = lock(&self.mdns).take();
        let lan_watch = lock(&self.lan_watch).take();
        bridge.submit(py, token, async move {
            ep.close().await;
            // Stop every lookup service (mDNS announcing above all) with the endpoint.
            if let Ok(services) = ep.address_lookup() {
                services.clear();
            }
            drop((mdns, lan_watch));
            Ok(Plain(()))
        })
    }

    /// Subscribes to LAN discovery events under `token` (a persistent token): dicts with
    /// `event` ("discovered" or "expired"), `id` and `addrs`. Needs `mdns=True` at bind.
    fn lan_events(&self, bridge: &Bridge, token: u64) -> PyResult<()> {
        if lock(&self.mdns).is_none() {
            return Err(Error::Value("this endpoint was bound without mdns=True".into()).into());
        }
        let watch = {
            let mut w = lock(&self.lan_watch);
            match &*w {
                Some(m) => m.clone(),
                None => {
                    let _rt = RUNTIME.enter();
                    let m = crate::mdns::build(self.ep.id(), None, false)?;
                    *w = Some(m.clone());
                    m
                }
            }
        };
        crate::mdns::subscribe(bridge, token, watch);
        Ok(())
    }

    /// Starts announcing this endpoint over mDNS under `service` (a DNS-SD service name of at
    /// most 15 characters). Works whether or not the endpoint was bound with `mdns=True`.
    fn mdns_announce(&self, service: String) -> PyResult<MdnsAnnouncement> {
        check_service(&service)?;
        Ok(MdnsAnnouncement::start(&self.ep, service)?)
    }

    /// Browses the LAN for endpoints announcing `service`: a list of their addresses, empty if
    /// none was seen within `timeout`; after the first, waits `settle` more for others.
    #[pyo3(signature = (bridge, token, service, timeout, settle = 0.5))]
    fn mdns_browse(
        &self,
        py: Python<'_>,
        bridge: &Bridge,
        token: u64,
        service: String,
        timeout: f64,
        settle: f64,
    ) -> PyResult<Py<PyAny>> {
        check_service(&service)?;
        let (timeout, settle) = (secs("timeout", timeout)?, secs("settle", settle)?);
        let own = self.ep.id();
        bridge.spawn(token, async move {
            crate::mdns::browse(own, service, timeout, settle)
                .await
                .map(crate::mdns::AddrListOut)
        });
        Ok(crate::bridge::pending(py))
    }

    /// Whether `close` has been called.
    #[getter]
    fn is_closed(&self) -> bool {
        self.ep.is_closed()
    }

    /// The native counters, as a dict; `wire_bytes_sent` / `wire_bytes_recv`: bytes of QUIC
    /// datagrams this endpoint sent and received on every transport (iroh's socket metrics),
    /// and per transport (`ipv4_bytes_sent`, `ipv6_bytes_recv`, `relay_bytes_sent`, ...).
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let c = &self.counters;
        let d = PyDict::new(py);
        for (k, v) in [
            ("connections_accepted", &c.conns_accepted),
            ("connections_dialed", &c.conns_dialed),
            ("bi_streams_accepted", &c.bi_accepted),
            ("bi_streams_opened", &c.bi_opened),
            ("uni_streams_accepted", &c.uni_accepted),
            ("uni_streams_opened", &c.uni_opened),
            ("requests_served", &c.requests_served),
            ("handshakes_failed", &c.handshakes_failed),
            ("blob_connections_accepted", &c.blob_conns_accepted),
        ] {
            d.set_item(k, v.load(Ordering::Relaxed))?;
        }
        // iroh's socket counters: bytes of QUIC datagrams on the wire, per transport
        let m = &self.ep.metrics().socket;
        let sent = [
            ("ipv4_bytes_sent", m.send_ipv4.get()),
            ("ipv6_bytes_sent", m.send_ipv6.get()),
            ("relay_bytes_sent", m.send_relay.get()),
        ];
        let recv = [
            ("ipv4_bytes_recv", m.recv_data_ipv4.get()),
            ("ipv6_bytes_recv", m.recv_data_ipv6.get()),
            ("relay_bytes_recv", m.recv_data_relay.get()),
        ];
        d.set_item("wire_bytes_sent", sent.iter().map(|(_, v)| v).sum::<u64>())?;
        d.set_item("wire_bytes_recv", recv.iter().map(|(_, v)| v).sum::<u64>())?;
        for (k, v) in sent.into_iter().chain(recv) {
            d.set_item(k, v)?;
        }
        Ok(d)
    }

    fn __repr__(&self) -> String {
        format!(
            "Endpoint(id={}, closed={})",
            self.ep.id().fmt_short(),
            self.ep.is_closed()
        )
    }
}

/// DNS-SD service names: 1 to 15 characters, letters, digits and inner hyphens (RFC 6335).
fn check_service(s: &str) -> Result<(), Error> {
    let ok = (1..=15).contains(&s.len())
        && s.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
        && s.bytes().any(|c| c.is_ascii_alphabetic());
    if ok {
        Ok(())
    } else {
        Err(Error::Value(format!(
            "bad mDNS service name {s:?}: 1-15 letters, digits or inner hyphens"
        )))
    }
}

/// The tokio runtime's live task count (for leak tests).
#[pyfunction]
pub fn _debug_stats(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let d = PyDict::new(py);
    let m = RUNTIME.metrics();
    d.set_item("live_tasks", m.num_alive_tasks())?;
    d.set_item("workers", m.num_workers())?;
    Ok(d)
}
