//! Identities and addresses: `SecretKey`, `EndpointId`, `EndpointAddr` and iroh's ticket form.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::str::FromStr;

use iroh::{EndpointAddr as IrohAddr, EndpointId as IrohId, RelayUrl, TransportAddr};
use iroh_tickets::endpoint::EndpointTicket;
use pyo3::basic::CompareOp;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::error::Error;

fn key_bytes(b: &[u8], what: &str) -> Result<[u8; 32], Error> {
    b.try_into()
        .map_err(|_| Error::InvalidKey(format!("{what} must be 32 bytes, got {}", b.len())))
}

impl EndpointAddr {
    pub fn parse_ticket(ticket: &str) -> Result<Self, Error> {
        EndpointTicket::from_str(ticket.trim())
            .map(|t| Self(t.endpoint_addr().clone()))
            .map_err(|e| Error::InvalidTicket(format!("not an endpoint ticket: {e}")))
    }
}

/// An endpoint's secret key (Ed25519). Its public half is the `EndpointId`.
#[pyclass(module = "iroh_pair._native", frozen)]
#[derive(Clone)]
pub struct SecretKey(pub iroh::SecretKey);

#[pymethods]
impl SecretKey {
    /// A new random key, straight from the operating system's generator (fork-safe: a
    /// process-local generator copied by `fork()` would hand children the same key).
    #[staticmethod]
    fn generate() -> PyResult<Self> {
        let mut b = [0u8; 32];
        getrandom::fill(&mut b)
            .map_err(|e| pyo3::exceptions::PyOSError::new_err(format!("no OS randomness: {e}")))?;
        Ok(Self(iroh::SecretKey::from_bytes(&b)))
    }

    /// The key from its 32 raw bytes.
    #[staticmethod]
    fn from_bytes(data: &[u8]) -> PyResult<Self> {
        Ok(Self(iroh::SecretKey::from_bytes(&key_bytes(
            data,
            "a secret key",
        )?)))
    }

    /// The 32 raw bytes (keep them secret).
    fn to_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.0.to_bytes())
    }

    /// The `EndpointId` of this key.
    fn public(&self) -> EndpointId {
        EndpointId(self.0.public())
    }

    fn __repr__(&self) -> String {
        format!("SecretKey(public={})", self.0.public().fmt_short())
    }
}

/// The identity of an endpoint: an Ed25519 public key. Hashable and ordered by its bytes.
#[pyclass(module = "iroh_pair._native", frozen)]
#[derive(Clone, PartialEq, Eq)]
pub struct EndpointId(pub IrohId);

#[pymethods]
impl EndpointId {
    /// Parses iroh's canonical string form (as printed by `str()`).
    #[staticmethod]
    fn parse(text: &str) -> PyResult<Self> {
        IrohId::from_str(text.trim())
            .map(Self)
            .map_err(|e| Error::InvalidKey(format!("{text:?} is not an EndpointId: {e}")).into())
    }

    /// The id from its 32 raw bytes.
    #[staticmethod]
    fn from_bytes(data: &[u8]) -> PyResult<Self> {
        IrohId::from_bytes(&key_bytes(data, "an EndpointId")?)
            .map(Self)
            .map_err(|e| Error::InvalidKey(format!("not a valid public key: {e}")).into())
    }

    /// The 32 raw bytes.
    fn to_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.0.as_bytes())
    }

    /// A short form for logs.
    fn fmt_short(&self) -> String {
        self.0.fmt_short().to_string()
    }

    fn __str__(&self) -> String {
        self.0.to_string()
    }

    fn __repr__(&self) -> String {
        format!("EndpointId({})", self.0.fmt_short())
    }

    fn __hash__(&self) -> u64 {
        let mut h = DefaultHasher::new();
        self.0.as_bytes().hash(&mut h);
        h.finish()
    }

    fn __richcmp__(&self, other: &Bound<'_, PyAny>, op: CompareOp) -> PyResult<Py<PyAny>> {
        let py = other.py();
        let Ok(other) = other.cast::<EndpointId>() else {
            return Ok(py.NotImplemented());
        };
        let a = self.0.as_bytes();
        let b = other.get().0.as_bytes();
        Ok(op
            .matches(a.cmp(b))
            .into_pyobject(py)?
            .to_owned()
            .into_any()
            .unbind())
    }

    fn __bytes__<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        self.to_bytes(py)
    }
}

/// How to reach an endpoint: its id plus optional relay URLs and direct IP addresses.
///
/// iroh manages addresses: store an `EndpointId`, never these. They are for first contact only
/// (a ticket) and for tests that run without address lookup.
#[pyclass(module = "iroh_pair._native", frozen)]
#[derive(Clone)]
pub struct EndpointAddr(pub IrohAddr);

#[pymethods]
impl EndpointAddr {
    #[new]
    #[pyo3(signature = (id, relay_urls = Vec::new(), ip_addrs = Vec::new()))]
    fn py_new(id: &EndpointId, relay_urls: Vec<String>, ip_addrs: Vec<String>) -> PyResult<Self> {
        let mut addr = IrohAddr::new(id.0);
        for u in relay_urls {
            let url = RelayUrl::from_str(&u)
                .map_err(|e| Error::InvalidTicket(format!("bad relay URL {u:?}: {e}")))?;
            addr = addr.with_relay_url(url);
        }
        for a in ip_addrs {
            let sa = SocketAddr::from_str(&a)
                .map_err(|e| Error::InvalidTicket(format!("bad socket address {a:?}: {e}")))?;
            addr = addr.with_ip_addr(sa);
        }
        Ok(Self(addr))
    }

    /// The endpoint's id.
    #[getter]
    fn id(&self) -> EndpointId {
        EndpointId(self.0.id)
    }

    /// Relay URLs, as strings.
    #[getter]
    fn relay_urls(&self) -> Vec<String> {
        self.0.relay_urls().map(|u| u.to_string()).collect()
    }

    /// Direct socket addresses, as `"ip:port"` strings.
    #[getter]
    fn ip_addrs(&self) -> Vec<String> {
        self.0.ip_addrs().map(|a| a.to_string()).collect()
    }

    /// iroh's ticket string for this address (the `iroh-tickets` endpoint ticket).
    fn to_ticket(&self) -> String {
        EndpointTicket::new(self.0.clone()).to_string()
    }

    /// Parses an iroh endpoint ticket.
    #[staticmethod]
    fn from_ticket(ticket: &str) -> PyResult<Self> {
        Ok(Self::parse_ticket(ticket)?)
    }

    /// The same address without its direct IP addresses (relay and id only).
    fn without_ip_addrs(&self) -> Self {
        Self(IrohAddr::from_parts(
            self.0.id,
            self.0
                .addrs
                .iter()
                .filter(|a| !matches!(a, TransportAddr::Ip(_)))
                .cloned(),
        ))
    }

    fn __eq__(&self, other: &Self) -> bool {
        self.0 == other.0
    }

    fn __repr__(&self) -> String {
        format!(
            "EndpointAddr(id={}, relay_urls={:?}, ip_addrs={:?})",
            self.0.id.fmt_short(),
            self.relay_urls(),
            self.ip_addrs()
        )
    }
}
