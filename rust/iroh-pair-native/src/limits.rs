//! `KindLimits`: per stream-kind limits on a stream's first frame, applied by the native serve
//! loop after the envelope header (docs/PROTOCOL.md §2, §9.1) and before the body is read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use iroh::endpoint::RecvStream as IrohRecv;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::codes;
use crate::error::Error;
use crate::frame::{read_body, read_frame_len};
use crate::sync::lock;

/// Envelope version this serve loop accepts.
pub const ENVELOPE_VERSION: u8 = 1;
/// Longest stream-kind name.
pub const MAX_KIND_LEN: usize = 32;

/// Whether `kind` is a valid stream-kind name: 1..32 of `[a-z0-9._-]`.
pub fn valid_kind(kind: &[u8]) -> bool {
    (1..=MAX_KIND_LEN).contains(&kind.len())
        && kind
            .iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-".contains(&c))
}

/// One immutable snapshot of the limits; a stream keeps the one current when it was accepted.
#[derive(Clone, Debug)]
pub struct Table {
    default: u64,
    per_kind: HashMap<String, u64>,
    frame_timeout: Duration,
}

impl Table {
    /// The first-frame limit for `kind` (bytes, envelope header included); 0 = not admitted.
    pub fn limit(&self, kind: &str) -> u64 {
        self.per_kind.get(kind).copied().unwrap_or(self.default)
    }

    pub fn frame_timeout(&self) -> Duration {
        self.frame_timeout
    }
}

fn timeout_of(seconds: f64) -> Result<Duration, Error> {
    Duration::try_from_secs_f64(seconds)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| Error::Value(format!("frame_timeout must be positive, got {seconds}")))
}

fn check_kind(kind: &str) -> Result<(), Error> {
    if valid_kind(kind.as_bytes()) {
        Ok(())
    } else {
        Err(Error::Value(format!(
            "invalid stream kind {kind:?}: 1..32 of [a-z0-9._-]"
        )))
    }
}

/// Limits on a stream's first frame, per stream kind, for `Connection.serve_streams`.
///
/// The serve loop reads the frame's 4-byte length and the envelope header (version 1, the
/// kind's length, the kind), then applies the limit of that kind, ``per_kind.get(kind,
/// default)``, before reading any of the body: a limit of 0 refuses the stream with
/// ``NOT_ADMITTED`` (8) without reading its body, a frame longer than the limit gets
/// ``FRAME_TOO_LARGE`` (4), a malformed header ``BAD_ENVELOPE`` (6). The whole first frame must
/// arrive within ``frame_timeout`` seconds of the stream being accepted (else ``TIMEOUT``, 7).
/// Limits count the whole frame body, envelope header included.
///
/// Shared and mutable: one object may serve many connections, and a change applies to every
/// stream accepted afterwards (a stream keeps the limits current when it was accepted).
///
/// Example::
///
///     limits = KindLimits(0, {"pair2": 64 * 1024 + 64}, frame_timeout=10.0)
///     conn.serve_streams(on_stream, kind_limits=limits)
///     limits.set("msg", 16 * 1024 * 1024 + 1024)   # once the peer is paired
///     assert limits.get("sync") == 0                # not admitted
#[pyclass(module = "iroh_pair._native", frozen)]
pub struct KindLimits {
    table: Mutex<Arc<Table>>,
}

impl KindLimits {
    /// The current limits (a cheap snapshot).
    pub fn snapshot(&self) -> Arc<Table> {
        lock(&self.table).clone()
    }

    fn update(&self, f: impl FnOnce(&mut Table)) {
        let mut guard = lock(&self.table);
        let mut t = Table::clone(&guard);
        f(&mut t);
        *guard = Arc::new(t);
    }
}

#[pymethods]
impl KindLimits {
    #[new]
    #[pyo3(signature = (default, per_kind = None, frame_timeout = 30.0))]
    fn new(
        default: u64,
        per_kind: Option<HashMap<String, u64>>,
        frame_timeout: f64,
    ) -> PyResult<Self> {
        let per_kind = per_kind.unwrap_or_default();
        for kind in per_kind.keys() {
            check_kind(kind)?;
        }
        Ok(Self {
            table: Mutex::new(Arc::new(Table {
                default,
                per_kind,
                frame_timeout: timeout_of(frame_timeout)?,
            })),
        })
    }

    /// Sets the limit of `kind` (bytes of its first frame, header included; 0 = not admitted).
    fn set(&self, kind: &str, limit: u64) -> PyResult<()> {
        check_kind(kind)?;
        self.update(|t| {
            t.per_kind.insert(kind.to_owned(), limit);
        });
        Ok(())
    }

    /// Forgets `kind`'s own limit: the default applies to it again.
    fn unset(&self, kind: &str) {
        self.update(|t| {
            t.per_kind.remove(kind);
        });
    }

    /// Sets the limit of every kind without one of its own.
    fn set_default(&self, limit: u64) {
        self.update(|t| t.default = limit);
    }

    /// Sets the time the whole first frame has to arrive in, in seconds.
    fn set_frame_timeout(&self, seconds: f64) -> PyResult<()> {
        let d = timeout_of(seconds)?;
        self.update(|t| t.frame_timeout = d);
        Ok(())
    }

    /// The limit that applies to `kind` now.
    fn get(&self, kind: &str) -> u64 {
        self.snapshot().limit(kind)
    }

    /// The limit of kinds without one of their own.
    #[getter]
    fn default(&self) -> u64 {
        self.snapshot().default
    }

    /// The first-frame timeout, in seconds.
    #[getter]
    fn frame_timeout(&self) -> f64 {
        self.snapshot().frame_timeout.as_secs_f64()
    }

    /// A copy of the per-kind limits.
    #[getter]
    fn per_kind<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (k, v) in &self.snapshot().per_kind {
            d.set_item(k, v)?;
        }
        Ok(d)
    }

    fn __repr__(&self) -> String {
        let t = self.snapshot();
        let mut kinds: Vec<_> = t.per_kind.iter().collect();
        kinds.sort();
        let kinds: Vec<String> = kinds.iter().map(|(k, v)| format!("{k:?}: {v}")).collect();
        format!(
            "KindLimits(default={}, per_kind={{{}}}, frame_timeout={})",
            t.default,
            kinds.join(", "),
            t.frame_timeout.as_secs_f64()
        )
    }
}

/// What became of a stream's first frame read under `KindLimits`.
pub enum First {
    /// The whole frame (header and message), as blocks.
    Frame(Vec<Bytes>),
    /// The stream ended before any byte, or the peer reset it: nothing to serve or answer.
    Nothing,
    /// Refuse the stream with this stream error code.
    Refuse(u64),
}

/// Reads a first frame: its length, then the envelope header, then (only if the kind's limit
/// admits the declared length) its body. Not bounded in time: the caller wraps it in the
/// table's `frame_timeout`.
pub async fn read_first_frame(recv: &mut IrohRecv, table: &Table) -> First {
    match read_first_frame_inner(recv, table).await {
        Ok(f) => f,
        Err(Error::Truncated(_)) => First::Refuse(codes::FRAME_TOO_LARGE),
        Err(_) => First::Nothing, // reset by the peer, or the connection is gone
    }
}

async fn read_first_frame_inner(recv: &mut IrohRecv, table: &Table) -> Result<First, Error> {
    let Some(len) = read_frame_len(recv).await? else {
        return Ok(First::Nothing);
    };
    let len = len as usize;
    if len < 2 {
        return Ok(First::Refuse(codes::BAD_ENVELOPE));
    }
    let mut header = [0u8; 2 + MAX_KIND_LEN];
    read_into(recv, &mut header[..2]).await?;
    let kind_len = header[1] as usize;
    if header[0] != ENVELOPE_VERSION
        || !(1..=MAX_KIND_LEN).contains(&kind_len)
        || len < 2 + kind_len
    {
        return Ok(First::Refuse(codes::BAD_ENVELOPE));
    }
    read_into(recv, &mut header[2..2 + kind_len]).await?;
    let kind = &header[2..2 + kind_len];
    if !valid_kind(kind) {
        return Ok(First::Refuse(codes::BAD_ENVELOPE));
    }
    // valid_kind: ASCII only
    let limit = table.limit(std::str::from_utf8(kind).unwrap_or_default());
    if limit == 0 {
        return Ok(First::Refuse(codes::NOT_ADMITTED));
    }
    if len as u64 > limit {
        return Ok(First::Refuse(codes::FRAME_TOO_LARGE));
    }
    let mut frame = vec![Bytes::copy_from_slice(&header[..2 + kind_len])];
    let rest = len - 2 - kind_len;
    frame.extend(
        read_body(recv, rest, |n| {
            format!("the stream ended {n} bytes into a first frame of {len} bytes")
        })
        .await?,
    );
    Ok(First::Frame(frame))
}

/// Fills `buf` from the stream (a few bytes of a header).
async fn read_into(recv: &mut IrohRecv, buf: &mut [u8]) -> Result<(), Error> {
    let mut got = 0;
    while got < buf.len() {
        match recv.read(&mut buf[got..]).await? {
            Some(n) => got += n,
            None => {
                return Err(Error::Truncated(format!(
                    "the stream ended inside an envelope header ({got} of {} bytes)",
                    buf.len()
                )));
            }
        }
    }
    Ok(())
}
