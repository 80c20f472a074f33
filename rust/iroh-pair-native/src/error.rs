//! The one Rust error enum, and the one place it becomes a Python exception.
//!
//! The exception classes are defined in Python (`iroh_pair.errors`); this module imports them
//! (`import_exception!`) and maps onto them in one place, `impl From<Error> for PyErr`:
//!
//! ```ignore
//! fn finish(&self) -> PyResult<()> {
//!     Err(Error::StreamClosed("already finished".into()))? // raises iroh_pair.errors.StreamClosed
//! }
//! ```

use std::fmt;

use iroh::endpoint::{
    ConnectionError, ReadError, ReadExactError, ReadToEndError, StoppedError, WriteError,
};
use pyo3::prelude::*;

/// Every way a native operation can fail.
#[derive(Debug, Clone)]
pub enum Error {
    Bind(String),
    Connect(String),
    ConnectionLost {
        code: Option<u64>,
        reason: Vec<u8>,
        by_peer: bool,
        kind: &'static str,
    },
    /// The peer reset the stream we read, or stopped the stream we write.
    StreamReset(u64),
    /// A request's peer refused it (reset or stop): its handler failed or it rejected the request.
    Remote(u64),
    StreamClosed(String),
    FrameTooLarge {
        length: u64,
        limit: u64,
    },
    Truncated(String),
    Timeout(String),
    InvalidKey(String),
    InvalidTicket(String),
    Value(String),
    Transport(String),
    /// A file transfer failed (fetch, store, export).
    Transfer(String),
    /// The providing peer refused a blob (not offered to us, or we are not admitted).
    TransferRefused(String),
    /// No space left on the device a file transfer writes to (the store or the destination).
    DiskFull(String),
    /// Content from the peer did not match its hash (a corrupt or tampered chunk): refused.
    VerificationFailed(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Bind(m) => write!(f, "cannot bind endpoint: {m}"),
            Error::Connect(m) => write!(f, "cannot connect: {m}"),
            Error::ConnectionLost {
                code,
                reason,
                by_peer,
                kind,
            } => {
                let who = if *by_peer { "peer" } else { "local side" };
                match code {
                    Some(c) => write!(
                        f,
                        "connection closed by the {who} with code {c} ({:?})",
                        String::from_utf8_lossy(reason)
                    ),
                    None => write!(f, "connection lost: {kind}"),
                }
            }
            Error::StreamReset(c) => write!(f, "stream reset by the peer with code {c}"),
            Error::Remote(c) => write!(f, "the peer refused the request with code {c}"),
            Error::StreamClosed(m) => write!(f, "stream closed: {m}"),
            Error::FrameTooLarge { length, limit } => {
                write!(
                    f,
                    "frame of {length} bytes is larger than the limit of {limit} bytes"
                )
            }
            Error::Truncated(m) => write!(f, "stream ended early: {m}"),
            Error::Timeout(m) => write!(f, "timed out: {m}"),
            Error::InvalidKey(m) => write!(f, "invalid key: {m}"),
            Error::InvalidTicket(m) => write!(f, "invalid ticket or address: {m}"),
            Error::Value(m) => write!(f, "{m}"),
            Error::Transport(m) => write!(f, "transport error: {m}"),
            Error::Transfer(m) => write!(f, "file transfer failed: {m}"),
            Error::TransferRefused(m) => write!(f, "file transfer refused: {m}"),
            Error::DiskFull(m) => write!(f, "file transfer failed, the disk is full: {m}"),
            Error::VerificationFailed(m) => {
                write!(
                    f,
                    "file transfer failed, content does not match its hash: {m}"
                )
            }
        }
    }
}

impl From<ConnectionError> for Error {
    fn from(e: ConnectionError) -> Self {
        match e {
            ConnectionError::ApplicationClosed(c) => Error::ConnectionLost {
                code: Some(c.error_code.into_inner()),
                reason: c.reason.to_vec(),
                by_peer: true,
                kind: "application",
            },
            ConnectionError::LocallyClosed => Error::ConnectionLost {
                code: None,
                reason: Vec::new(),
                by_peer: false,
                kind: "locally_closed",
            },
            ConnectionError::TimedOut => Error::ConnectionLost {
                code: None,
                reason: Vec::new(),
                by_peer: false,
                kind: "timed_out",
            },
            ConnectionError::Reset => Error::ConnectionLost {
                code: None,
                reason: Vec::new(),
                by_peer: true,
                kind: "reset",
            },
            ConnectionError::ConnectionClosed(c) => Error::ConnectionLost {
                code: None,
                reason: c.reason.to_vec(),
                by_peer: true,
                kind: "transport",
            },
            other => Error::ConnectionLost {
                code: None,
                reason: other.to_string().into_bytes(),
                by_peer: false,
                kind: "transport",
            },
        }
    }
}

impl From<ReadError> for Error {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Reset(c) => Error::StreamReset(c.into_inner()),
            ReadError::ConnectionLost(c) => c.into(),
            ReadError::ClosedStream => Error::StreamClosed("the stream was already stopped".into()),
            other => Error::Transport(other.to_string()),
        }
    }
}

impl From<ReadExactError> for Error {
    fn from(e: ReadExactError) -> Self {
        match e {
            ReadExactError::FinishedEarly(n) => {
                Error::Truncated(format!("finished after {n} bytes of an exact read"))
            }
            ReadExactError::ReadError(r) => r.into(),
        }
    }
}

impl From<WriteError> for Error {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Stopped(c) => Error::StreamReset(c.into_inner()),
            WriteError::ConnectionLost(c) => c.into(),
            WriteError::ClosedStream => {
                Error::StreamClosed("the stream was already finished or reset".into())
            }
            other => Error::Transport(other.to_string()),
        }
    }
}

impl From<StoppedError> for Error {
    fn from(e: StoppedError) -> Self {
        match e {
            StoppedError::ConnectionLost(c) => c.into(),
            other => Error::Transport(other.to_string()),
        }
    }
}

/// `read_to_end` with a limit: over the limit is a frame-too-large error.
pub fn read_to_end_error(e: ReadToEndError, limit: usize) -> Error {
    match e {
        ReadToEndError::TooLong => Error::FrameTooLarge {
            length: limit as u64 + 1,
            limit: limit as u64,
        },
        ReadToEndError::Read(r) => r.into(),
    }
}

/// An error and its sources, on one line.
pub fn n0_error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let t = inner.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = inner.source();
    }
    s
}

/// The exception classes of `iroh_pair.errors`, each imported from Python on its first use.
mod exceptions {
    pyo3::import_exception!(iroh_pair.errors, BindError);
    pyo3::import_exception!(iroh_pair.errors, ConnectError);
    pyo3::import_exception!(iroh_pair.errors, ConnectionLost);
    pyo3::import_exception!(iroh_pair.errors, StreamReset);
    pyo3::import_exception!(iroh_pair.errors, RemoteError);
    pyo3::import_exception!(iroh_pair.errors, StreamClosed);
    pyo3::import_exception!(iroh_pair.errors, FrameTooLarge);
    pyo3::import_exception!(iroh_pair.errors, TruncatedFrame);
    pyo3::import_exception!(iroh_pair.errors, Timeout);
    pyo3::import_exception!(iroh_pair.errors, InvalidKey);
    pyo3::import_exception!(iroh_pair.errors, InvalidTicket);
    pyo3::import_exception!(iroh_pair.errors, TransportError);
    pyo3::import_exception!(iroh_pair.errors, FileTransferError);
    pyo3::import_exception!(iroh_pair.errors, TransferRefused);
    pyo3::import_exception!(iroh_pair.errors, DiskFull);
    pyo3::import_exception!(iroh_pair.errors, VerificationFailed);
}

/// The one mapping of the Rust error onto the Python classes: the message first, then the
/// class's own fields (`ConnectionLost(message, code, reason, by_peer, kind)`, ...). A bad
/// value is a plain `ValueError`.
impl From<Error> for PyErr {
    fn from(e: Error) -> PyErr {
        use exceptions as py;
        let msg = e.to_string();
        match e {
            Error::Bind(_) => py::BindError::new_err((msg,)),
            Error::Connect(_) => py::ConnectError::new_err((msg,)),
            Error::ConnectionLost {
                code,
                reason,
                by_peer,
                kind,
            } => py::ConnectionLost::new_err((msg, code, reason, by_peer, kind)),
            Error::StreamReset(c) => py::StreamReset::new_err((msg, c)),
            Error::Remote(c) => py::RemoteError::new_err((msg, c)),
            Error::StreamClosed(_) => py::StreamClosed::new_err((msg,)),
            Error::FrameTooLarge { length, limit } => {
                py::FrameTooLarge::new_err((msg, length, limit))
            }
            Error::Truncated(_) => py::TruncatedFrame::new_err((msg,)),
            Error::Timeout(_) => py::Timeout::new_err((msg,)),
            Error::InvalidKey(_) => py::InvalidKey::new_err((msg,)),
            Error::InvalidTicket(_) => py::InvalidTicket::new_err((msg,)),
            Error::Value(_) => pyo3::exceptions::PyValueError::new_err(msg),
            Error::Transport(_) => py::TransportError::new_err((msg,)),
            Error::Transfer(_) => py::FileTransferError::new_err((msg,)),
            Error::TransferRefused(_) => py::TransferRefused::new_err((msg,)),
            Error::DiskFull(_) => py::DiskFull::new_err((msg,)),
            Error::VerificationFailed(_) => py::VerificationFailed::new_err((msg,)),
        }
    }
}
