//! `Connection`: streams, close, paths, keying material, the fused request and the serve loop.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use iroh::TransportAddr;
use iroh::endpoint::{PathEvent, Side, VarInt};
use n0_future::StreamExt;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};

use crate::bridge::Bridge;
use crate::chunk::copy_bytes;
use crate::counters::Counters;
use crate::error::Error;
use crate::frame::{SendState, frame_header};
use crate::keys::EndpointId;
use crate::limits::KindLimits;
use crate::outcome::{ClassOut, Plain, PyBytesOut, ToPy, out};
use crate::serve::{self, FirstFrame};
use crate::streams::{RecvStream, SendStream};

/// A live QUIC connection to one peer on one ALPN.
#[pyclass(module = "iroh_pair._native", frozen)]
pub struct Connection {
    pub conn: iroh::endpoint::Connection,
    pub counters: Arc<Counters>,
    opener: Arc<Opener>,
}

impl Connection {
    pub fn new(conn: iroh::endpoint::Connection, counters: Arc<Counters>) -> Self {
        Self {
            conn,
            counters,
            opener: Arc::default(),
        }
    }
}

/// Lets one caller at a time wait for stream credit, the others queue in FIFO order.
///
/// When the peer's stream limit is reached, noq parks every `open_bi` caller on one `Notify`
/// and wakes *all* of them (`notify_waiters`) whenever credit arrives: with 5,000 requests
/// queued that is thousands of polls, each taking the connection lock, for every stream
/// opened. Behind this lock only the head of the queue waits in noq, and tokio's mutex wakes
/// exactly one waiter when it passes the turn on.
#[derive(Default)]
struct Opener {
    bi: tokio::sync::Mutex<()>,
    uni: tokio::sync::Mutex<()>,
}

impl Opener {
    async fn bi(
        &self,
        conn: &iroh::endpoint::Connection,
    ) -> Result<(iroh::endpoint::SendStream, iroh::endpoint::RecvStream), Error> {
        let _turn = self.bi.lock().await;
        Ok(conn.open_bi().await?)
    }

    async fn uni(
        &self,
        conn: &iroh::endpoint::Connection,
    ) -> Result<iroh::endpoint::SendStream, Error> {
        let _turn = self.uni.lock().await;
        Ok(conn.open_uni().await?)
    }
}

/// A `(SendStream, RecvStream)` pair, built into a tuple on the loop's thread.
struct BiOut(SendStream, RecvStream);

impl ToPy for BiOut {
    fn to_py(self: Box<Self>, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let s = Py::new(py, self.0)?;
        let r = Py::new(py, self.1)?;
        Ok(PyTuple::new(py, [s.into_any(), r.into_any()])?
            .into_any()
            .unbind())
    }
}

/// `(code or None, reason, by_peer, kind)` of a closed connection.
struct CloseOut(Error);

impl ToPy for CloseOut {
    fn to_py(self: Box<Self>, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let (code, reason, by_peer, kind) = match self.0 {
            Error::ConnectionLost {
                code,
                reason,
                by_peer,
                kind,
            } => (code, reason, by_peer, kind),
            other => (None, other.to_string().into_bytes(), false, "transport"),
        };
        Ok((code, PyBytes::new(py, &reason), by_peer, kind)
            .into_pyobject(py)?
            .into_any()
            .unbind())
    }
}

fn path_id(id: iroh::endpoint::PathId) -> u64 {
    id.to_string()
        .trim_start_matches(|c: char| !c.is_ascii_digit())
        .parse()
        .unwrap_or(0)
}

fn addr_kind(a: &TransportAddr) -> &'static str {
    match a {
        TransportAddr::Relay(_) => "relay",
        TransportAddr::Ip(_) => "direct",
        _ => "custom",
    }
}

fn addr_str(a: &TransportAddr) -> String {
    match a {
        TransportAddr::Relay(u) => u.to_string(),
        TransportAddr::Ip(s) => s.to_string(),
        other => format!("{other:?}"),
    }
}

/// A path event as plain data, turned into a dict on the loop's thread.
struct PathEventOut {
    kind: &'static str,
    id: Option<u64>,
    transport: Option<&'static str>,
    addr: Option<String>,
}

impl From<PathEvent> for PathEventOut {
    fn from(ev: PathEvent) -> Self {
        let kind = match &ev {
            PathEvent::Opened { .. } => "opened",
            PathEvent::Closed { .. } => "closed",
            PathEvent::Selected { .. } => "selected",
            _ => "lagged",
        };
        match ev {
            PathEvent::Opened {
                id, remote_addr, ..
            }
            | PathEvent::Closed {
                id, remote_addr, ..
            }
            | PathEvent::Selected {
                id, remote_addr, ..
            } => Self {
                kind,
                id: Some(path_id(id)),
                transport: Some(addr_kind(&remote_addr)),
                addr: Some(addr_str(&remote_addr)),
            },
            _ => Self {
                kind,
                id: None,
                transport: None,
                addr: None,
            },
        }
    }
}

impl ToPy for PathEventOut {
    fn to_py(self: Box<Self>, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let d = PyDict::new(py);
        d.set_item("event", self.kind)?;
        d.set_item("id", self.id)?;
        d.set_item("kind", self.transport)?;
        d.set_item("addr", self.addr)?;
        Ok(d.into_any().unbind())
    }
}

#[pymethods]
impl Connection {
    /// The peer's id, authenticated by the QUIC handshake.
    #[getter]
    fn remote_id(&self) -> EndpointId {
        EndpointId(self.conn.remote_id())
    }

    /// The negotiated ALPN.
    #[getter]
    fn alpn<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.conn.alpn())
    }

    /// `"client"` when this side dialed, `"server"` when it accepted.
    #[getter]
    fn side(&self) -> &'static str {
        match self.conn.side() {
            Side::Client => "client",
            Side::Server => "server",
        }
    }

    /// A process-local id of the connection.
    #[getter]
    fn stable_id(&self) -> usize {
        self.conn.stable_id()
    }

    /// Whether the connection is closed (by either side, or lost).
    #[getter]
    fn is_closed(&self) -> bool {
        self.conn.close_reason().is_some()
    }

    /// Opens a bidirectional stream. (The peer learns of it with the first data written.)
    fn open_bi(&self, py: Python<'_>, bridge: &Bridge, token: u64) -> PyResult<Py<PyAny>> {
        let (conn, opener) = (self.conn.clone(), self.opener.clone());
        let counters = self.counters.clone();
        bridge.submit(py, token, async move {
            let (s, r) = opener.bi(&conn).await?;
            Counters::bump(&counters.bi_opened);
            Ok(BiOut(SendStream::new(s), RecvStream::new(r)))
        })
    }

    /// Accepts the peer's next bidirectional stream.
    fn accept_bi(&self, py: Python<'_>, bridge: &Bridge, token: u64) -> PyResult<Py<PyAny>> {
        let conn = self.conn.clone();
        let counters = self.counters.clone();
        bridge.submit(py, token, async move {
            let (s, r) = conn.accept_bi().await?;
            Counters::bump(&counters.bi_accepted);
            Ok(BiOut(SendStream::new(s), RecvStream::new(r)))
        })
    }

    /// Opens a unidirectional stream.
    fn open_uni(&self, py: Python<'_>, bridge: &Bridge, token: u64) -> PyResult<Py<PyAny>> {
        let (conn, opener) = (self.conn.clone(), self.opener.clone());
        let counters = self.counters.clone();
        bridge.submit(py, token, async move {
            let s = opener.uni(&conn).await?;
            Counters::bump(&counters.uni_opened);
            Ok(ClassOut(SendStream::new(s)))
        })
    }

    /// Accepts the peer's next unidirectional stream.
    fn accept_uni(&self, py: Python<'_>, bridge: &Bridge, token: u64) -> PyResult<Py<PyAny>> {
        let conn = self.conn.clone();
        let counters = self.counters.clone();
        bridge.submit(py, token, async move {
            let r = conn.accept_uni().await?;
            Counters::bump(&counters.uni_accepted);
            Ok(ClassOut(RecvStream::new(r)))
        })
    }

    /// Closes the connection with an application `code` and `reason`, which the peer sees.
    #[pyo3(signature = (code = 0, reason = b"".to_vec()))]
    fn close(&self, code: u64, reason: Vec<u8>) -> PyResult<()> {
        let code = VarInt::from_u64(code)
            .map_err(|_| Error::Value(format!("close code {code} does not fit a QUIC varint")))?;
        self.conn.close(code, &reason);
        Ok(())
    }

    /// Waits until the connection is closed: `(code or None, reason, by_peer, kind)`.
    fn closed(&self, py: Python<'_>, bridge: &Bridge, token: u64) -> PyResult<Py<PyAny>> {
        let conn = self.conn.clone();
        bridge.submit(py, token, async move {
            let e: Error = conn.closed().await.into();
            // A close we initiated is reported by QUIC as "locally closed"; keep our own code.
            Ok(CloseOut(e))
        })
    }

    /// `length` bytes of TLS keying material (RFC 5705): the same on both ends of this
    /// connection and different on any other.
    fn export_keying_material<'py>(
        &self,
        py: Python<'py>,
        label: &[u8],
        context: &[u8],
        length: usize,
    ) -> PyResult<Bound<'py, PyBytes>> {
        if length == 0 || length > 1024 {
            return Err(Error::Value(format!("length must be 1..=1024, got {length}")).into());
        }
        let mut out = vec![0u8; length];
        self.conn
            .export_keying_material(&mut out, label, context)
            .map_err(|_| Error::Value("keying material export failed".into()))?;
        Ok(PyBytes::new(py, &out))
    }

    /// The round-trip time of the selected path, in seconds (`None` before one is selected).
    #[getter]
    fn rtt(&self) -> Option<f64> {
        self.conn
            .paths()
            .iter()
            .find(|p| p.is_selected())
            .map(|p| p.rtt().as_secs_f64())
    }

    /// A snapshot of the open paths: dicts with `id`, `kind` ("relay" or "direct"), `addr`,
    /// `selected` and `rtt` (seconds).
    fn paths<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let list = PyList::empty(py);
        for p in self.conn.paths().iter() {
            let d = PyDict::new(py);
            d.set_item("id", path_id(p.id()))?;
            d.set_item("kind", addr_kind(p.remote_addr()))?;
            d.set_item("addr", addr_str(p.remote_addr()))?;
            d.set_item("selected", p.is_selected())?;
            d.set_item("rtt", p.rtt().as_secs_f64())?;
            list.append(d)?;
        }
        Ok(list)
    }

    /// Subscribes to path events under `token` (a persistent token): dicts with `event`
    /// ("opened", "closed", "selected", "lagged"), `id`, `kind`, `addr`. Ends when the
    /// connection closes.
    fn path_events(&self, bridge: &Bridge, token: u64) {
        let mut events = self.conn.path_events();
        bridge.spawn_stream(token, move |shared| async move {
            while let Some(ev) = events.next().await {
                shared.emit(token, Ok(out(PathEventOut::from(ev))));
            }
            shared.finish(token, Ok(out(Plain(()))));
        });
    }

    /// Transport statistics of the connection.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.conn.stats();
        let d = PyDict::new(py);
        d.set_item("udp_tx_datagrams", s.udp_tx.datagrams)?;
        d.set_item("udp_tx_bytes", s.udp_tx.bytes)?;
        d.set_item("udp_rx_datagrams", s.udp_rx.datagrams)?;
        d.set_item("udp_rx_bytes", s.udp_rx.bytes)?;
        d.set_item("lost_packets", s.lost_packets)?;
        d.set_item("stream_frames_tx", s.frame_tx.stream)?;
        d.set_item("stream_frames_rx", s.frame_rx.stream)?;
        d.set_item("pings_tx", s.frame_tx.ping)?;
        d.set_item("acks_tx", s.frame_tx.acks + s.frame_tx.path_acks)?;
        d.set_item(
            "max_streams_tx",
            s.frame_tx.max_streams_bidi + s.frame_tx.max_streams_uni,
        )?;
        d.set_item(
            "max_data_tx",
            s.frame_tx.max_data + s.frame_tx.max_stream_data,
        )?;
        d.set_item("stop_sending_tx", s.frame_tx.stop_sending)?;
        d.set_item("reset_stream_tx", s.frame_tx.reset_stream)?;
        Ok(d)
    }

    /// One request in one native call: opens a bidirectional stream, writes `payload` as one
    /// frame, finishes, and reads the reply to the end (at most `max_response` bytes). A peer
    /// that refuses the request (reset or stop) raises `RemoteError(code)`. Cancelled or timed
    /// out midway, the request stream is reset with `STREAM_CANCELLED`.
    #[pyo3(signature = (bridge, token, payload, max_response, timeout = None))]
    fn request(
        &self,
        py: Python<'_>,
        bridge: &Bridge,
        token: u64,
        payload: &Bound<'_, PyAny>,
        max_response: usize,
        timeout: Option<f64>,
    ) -> PyResult<Py<PyAny>> {
        let payload = copy_bytes(payload)?;
        let header = frame_header(payload.len(), u32::MAX as usize)?;
        let timeout = timeout
            .map(|t| {
                Duration::try_from_secs_f64(t)
                    .map_err(|_| Error::Value(format!("timeout must be positive, got {t}")))
            })
            .transpose()?;
        let (conn, opener) = (self.conn.clone(), self.opener.clone());
        let counters = self.counters.clone();
        let work = async move {
            let (s, mut recv) = opener.bi(&conn).await?;
            Counters::bump(&counters.bi_opened);
            let mut send = SendState::new(s);
            send.write_all_chunks(&mut [header, payload])
                .await
                .map_err(remote)?;
            send.finish()?;
            let reply = recv
                .read_to_end(max_response)
                .await
                .map_err(|e| remote(crate::error::read_to_end_error(e, max_response)))?;
            Ok(PyBytesOut(Bytes::from(reply)))
        };
        // Opening the stream and writing usually complete at once: done here, inline, the
        // request then waits on the runtime for its reply only.
        match timeout {
            Some(t) => bridge.submit(py, token, async move {
                tokio::time::timeout(t, work)
                    .await
                    .map_err(|_| Error::Timeout(format!("no reply within {t:?}")))?
            }),
            None => bridge.submit(py, token, work),
        }
    }

    /// Sets how many bidirectional streams the peer may have open at once (QUIC MAX_STREAMS).
    /// Lowering it does not touch open streams: the peer opens no new one until fewer than `n`
    /// are open. 0 lets the peer open none.
    fn set_max_concurrent_bi_streams(&self, n: u64) -> PyResult<()> {
        let n = VarInt::from_u64(n)
            .map_err(|_| Error::Value(format!("{n} streams do not fit a QUIC varint")))?;
        self.conn.set_max_concurrent_bi_streams(n);
        Ok(())
    }

    /// The native serve loop: accepts every bidirectional stream of this connection, reads its
    /// first frame (at most `max_request` bytes, within `frame_timeout` seconds), and emits an
    /// `IncomingRequest` under the persistent `token`. Ends (a last, non-persistent completion)
    /// when the connection closes. Do not mix with `accept_bi` on the same connection.
    /// With a `handler`, the bridge calls it on each request's bytes while draining and sends
    /// a `bytes` reply at once (see `Bridge::handle_request`).
    ///
    /// With `kind_limits`, the first frame is read header first and limited per stream kind
    /// (see `KindLimits`), and `max_request` and `frame_timeout` are not used: a stream gets the
    /// limits and timeout current when it was accepted.
    #[pyo3(signature = (bridge, token, max_request, frame_timeout = 30.0, handler = None, kind_limits = None))]
    fn serve(
        &self,
        bridge: &Bridge,
        token: u64,
        max_request: usize,
        frame_timeout: f64,
        handler: Option<Py<PyAny>>,
        kind_limits: Option<Py<KindLimits>>,
    ) -> PyResult<()> {
        let frame_timeout = Duration::try_from_secs_f64(frame_timeout).map_err(|_| {
            Error::Value(format!(
                "frame_timeout must be positive, got {frame_timeout}"
            ))
        })?;
        if let Some(h) = handler {
            bridge.set_handler(token, h);
        }
        let conn = self.conn.clone();
        let counters = self.counters.clone();
        bridge.spawn_stream(token, move |shared| async move {
            let first = FirstFrame {
                max_request,
                frame_timeout,
                kind_limits,
            };
            let end = serve::accept(conn, counters, &shared, token, first).await;
            shared.finish(token, Ok(out(CloseOut(end))));
        });
        Ok(())
    }

    fn __repr__(&self) -> String {
        format!(
            "Connection(remote={}, alpn={:?}, side={}, closed={})",
            self.conn.remote_id().fmt_short(),
            String::from_utf8_lossy(self.conn.alpn()),
            self.side(),
            self.is_closed()
        )
    }
}

/// In a request, the peer resetting or stopping the stream is its refusal of the request.
fn remote(e: Error) -> Error {
    match e {
        Error::StreamReset(c) => Error::Remote(c),
        other => other,
    }
}
