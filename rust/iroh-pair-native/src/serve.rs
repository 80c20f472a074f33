//! The native serve loop: it accepts a connection's streams, reads each one's first frame (the
//! request), and hands it to the loop's thread as its own output type, `Request`: the bridge
//! answers it natively when the loop has a handler, or it becomes an `IncomingRequest` for
//! Python to answer.
//!
//! ```python
//! def on_request(inc: IncomingRequest) -> None:
//!     inc.respond(b"pong" if inc.request == b"ping" else b"?")
//! ```

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use iroh::endpoint::VarInt;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::buffers::join_to_py;
use crate::chunk::copy_bytes;
use crate::codes;
use crate::counters::Counters;
use crate::error::Error;
use crate::frame::{SendState, read_frame, varint};
use crate::limits::{First, KindLimits, read_first_frame};
use crate::outcome::{Request, ToPy};
use crate::parked::Shared;
use crate::runtime::{RUNTIME, poll_once};
use crate::streams::{RecvStream, SendStream};
use crate::sync::lock;

/// How a serve loop reads a stream's first frame: at most `max_request` bytes within
/// `frame_timeout`, or, with `kind_limits`, limited per stream kind (see `KindLimits`).
pub struct FirstFrame {
    pub max_request: usize,
    pub frame_timeout: Duration,
    pub kind_limits: Option<Py<KindLimits>>,
}

/// The native serve loop of `Connection.serve`: accepts every bidirectional stream of `conn`,
/// reads its first frame (see `FirstFrame`), and emits the request under the persistent
/// `token`. Returns why it ended: the connection's close.
pub async fn accept(
    conn: iroh::endpoint::Connection,
    counters: Arc<Counters>,
    shared: &Arc<Shared>,
    token: u64,
    first: FirstFrame,
) -> Error {
    let FirstFrame {
        max_request,
        frame_timeout,
        kind_limits,
    } = first;
    let mut tasks = tokio::task::JoinSet::new();
    let end = loop {
        tokio::select! {
            accepted = conn.accept_bi() => match accepted {
                Ok((s, mut r)) => {
                    Counters::bump(&counters.bi_accepted);
                    let shared = shared.clone();
                    let counters = counters.clone();
                    let table = kind_limits.as_ref().map(|k| k.get().snapshot());
                    tasks.spawn(async move {
                        let mut send = SendState::new(s);
                        let first = match table {
                            Some(t) => {
                                tokio::time::timeout(t.frame_timeout(), read_first_frame(&mut r, &t))
                                    .await
                                    .unwrap_or(First::Refuse(codes::TIMEOUT))
                            }
                            None => match tokio::time::timeout(frame_timeout, read_frame(&mut r, max_request)).await {
                                Ok(Ok(Some(request))) => First::Frame(request),
                                Ok(Err(Error::FrameTooLarge { .. })) | Ok(Err(Error::Truncated(_))) => {
                                    First::Refuse(codes::FRAME_TOO_LARGE)
                                }
                                Err(_) => First::Refuse(codes::TIMEOUT),
                                // An empty stream, or one reset by the peer: nothing to serve.
                                Ok(Ok(None)) | Ok(Err(_)) => First::Nothing,
                            },
                        };
                        match first {
                            First::Frame(request) => shared.request(
                                token,
                                Box::new(IncomingOut { request, send, recv: r, counters }),
                            ),
                            First::Refuse(code) => {
                                let _ = send.reset(code);
                                let _ = r.stop(VarInt::from_u32(code as u32));
                            }
                            First::Nothing => {}
                        }
                    });
                }
                Err(e) => break Error::from(e),
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    };
    tasks.shutdown().await;
    end
}

/// An accepted stream whose first frame (the request) has been read, handed to Python by the
/// native serve loop.
#[pyclass(module = "iroh_pair._native", frozen)]
pub struct IncomingRequest {
    request: Py<PyBytes>,
    send: Mutex<Option<SendState>>,
    recv: Mutex<Option<iroh::endpoint::RecvStream>>,
    counters: Arc<Counters>,
}

/// The serve loop's output: a request as plain data, on its way to the loop's thread. There it
/// is answered natively (see `Bridge::handle_request`) or becomes an `IncomingRequest`.
struct IncomingOut {
    request: Vec<Bytes>,
    send: SendState,
    recv: iroh::endpoint::RecvStream,
    counters: Arc<Counters>,
}

impl Request for IncomingOut {
    fn request(&self) -> &[Bytes] {
        &self.request
    }

    /// Sends the whole reply (see `respond_on`).
    fn respond(self: Box<Self>, data: Bytes) {
        release_request(self.recv);
        respond_on(self.send, data, &self.counters);
    }

    /// Refuses the request with `code` (see `reject_on`).
    fn reject(self: Box<Self>, code: u64) {
        reject_on(self.send, Some(self.recv), code);
    }
}

/// Lets go of a request stream whose first frame was read. A request is normally one frame and
/// the end of the stream, both in one packet: reading that end here (when it has arrived) spares
/// the peer a STOP_SENDING, which iroh drops a `RecvStream` with when its end was not read, and
/// which the peer would answer with a RESET_STREAM: two needless packets per request. A stream
/// that goes on past its first frame is still stopped.
fn release_request(mut recv: iroh::endpoint::RecvStream) {
    let _ = poll_once(recv.read_chunk(1));
}

/// Writes `data` as the whole reply and finishes: at once when the flow-control window is open
/// (polled here, inline), otherwise on the runtime. Never waits.
fn respond_on(mut send: SendState, data: Bytes, counters: &Counters) {
    Counters::bump(&counters.requests_served);
    let fut = async move {
        if send.write_all_chunks(&mut [data]).await.is_ok() {
            let _ = send.finish();
        }
    };
    let mut fut = Box::pin(fut);
    if poll_once(fut.as_mut()).is_none() {
        RUNTIME.spawn(fut);
    }
}

/// Resets the reply and stops the request with `code`.
fn reject_on(mut send: SendState, recv: Option<iroh::endpoint::RecvStream>, code: u64) {
    let _ = send.reset(code);
    if let Some(mut r) = recv {
        let _ = r.stop(VarInt::from_u64(code).unwrap_or(VarInt::from_u32(0)));
    }
}

impl ToPy for IncomingOut {
    fn to_py(self: Box<Self>, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let this = *self;
        Ok(Py::new(
            py,
            IncomingRequest {
                request: join_to_py(py, &this.request)?.unbind(),
                send: Mutex::new(Some(this.send)),
                recv: Mutex::new(Some(this.recv)),
                counters: this.counters,
            },
        )?
        .into_any())
    }
}

impl IncomingRequest {
    fn take_send(&self) -> Result<SendState, Error> {
        lock(&self.send)
            .take()
            .ok_or_else(|| Error::StreamClosed("this request was already answered".into()))
    }
}

#[pymethods]
impl IncomingRequest {
    /// The request's bytes (the stream's first frame).
    #[getter]
    fn request(&self, py: Python<'_>) -> Py<PyBytes> {
        self.request.clone_ref(py)
    }

    /// Sends `data` as the whole reply and finishes the stream. Does not wait: the write
    /// completes on the runtime (at once when the flow-control window is open).
    fn respond(&self, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let data = copy_bytes(data)?;
        let send = self.take_send()?;
        if let Some(recv) = lock(&self.recv).take() {
            release_request(recv);
        }
        respond_on(send, data, &self.counters);
        Ok(())
    }

    /// Refuses the request: resets the reply stream and stops the request stream with `code`.
    /// The caller's `request` fails with `RemoteError(code)`.
    #[pyo3(signature = (code = codes::HANDLER_ERROR))]
    fn reject(&self, code: u64) -> PyResult<()> {
        varint(code)?;
        let send = self.take_send()?;
        reject_on(send, lock(&self.recv).take(), code);
        Ok(())
    }

    /// Takes the stream for an interactive exchange (after the first frame).
    fn take_streams(&self) -> PyResult<(SendStream, RecvStream)> {
        let send = self.take_send()?;
        let recv = lock(&self.recv)
            .take()
            .ok_or_else(|| Error::StreamClosed("the streams were already taken".into()))?;
        Ok((
            SendStream {
                id: send.stream.id().index(),
                inner: Arc::new(tokio::sync::Mutex::new(send)),
            },
            RecvStream::new(recv),
        ))
    }
}
