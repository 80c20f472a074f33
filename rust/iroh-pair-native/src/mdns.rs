//! LAN discovery over mDNS, through n0's `iroh-mdns-address-lookup`.
//!
//! Three capabilities, all off unless asked for:
//! - the endpoint's own mDNS address lookup (`Endpoint.bind(mdns=True)`): it advertises the
//!   endpoint's id and addresses under iroh's standard service (`_irohv1._udp.local`) and resolves
//!   other ids on the LAN when dialing; `mdns_events` reports devices appearing and expiring;
//! - an announcement under another service name (`mdns_announce`), used by the pairing layer for
//!   the LAN nameplate while hosting; dropping or closing it stops the announcements;
//! - a browse of such a service (`mdns_browse`): who announces it on this LAN right now.
//!
//! What is advertised is only what the crate puts on the wire: the EndpointId (the instance
//! name), the socket addresses, and at most one relay URL. `user_data` is never set.

use std::sync::Mutex;
use std::time::Duration;

use iroh::address_lookup::{AddressLookup, EndpointData};
use iroh_mdns_address_lookup::{DiscoveryEvent, MdnsAddressLookup};
use n0_future::StreamExt;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use tokio::task::AbortHandle;

use crate::bridge::Bridge;
use crate::error::Error;
use crate::keys::{EndpointAddr, EndpointId};
use crate::outcome::{Plain, ToPy, out};
use crate::runtime::RUNTIME;
use crate::sync::lock;

/// How often the LAN is asked who is there (the crate's default, 700 ms, made explicit).
const CADENCE: Duration = Duration::from_millis(700);

/// Builds an mDNS lookup for `id` under `service` (`None`: iroh's standard service).
/// Must run inside the runtime (the crate spawns its discoverer on the current handle).
pub fn build(
    id: iroh::EndpointId,
    service: Option<&str>,
    advertise: bool,
) -> Result<MdnsAddressLookup, Error> {
    let mut b = MdnsAddressLookup::builder()
        .advertise(advertise)
        .discovery_cadence(CADENCE);
    if let Some(s) = service {
        b = b.service_name(s);
    }
    b.build(id)
        .map_err(|e| Error::Bind(format!("mDNS unavailable: {e}")))
}

/// A device seen or lost on the LAN, as plain data (a dict on the loop's thread).
struct LanEventOut {
    kind: &'static str,
    id: iroh::EndpointId,
    addrs: Vec<String>,
}

impl ToPy for LanEventOut {
    fn to_py(self: Box<Self>, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let d = PyDict::new(py);
        d.set_item("event", self.kind)?;
        d.set_item("id", EndpointId(self.id))?;
        d.set_item("addrs", PyList::new(py, self.addrs)?)?;
        Ok(d.into_any().unbind())
    }
}

fn lan_event(ev: DiscoveryEvent) -> Option<LanEventOut> {
    match ev {
        DiscoveryEvent::Discovered { endpoint_info, .. } => Some(LanEventOut {
            kind: "discovered",
            id: endpoint_info.endpoint_id,
            addrs: endpoint_info
                .data
                .ip_addrs()
                .map(|a| a.to_string())
                .collect(),
        }),
        DiscoveryEvent::Expired { endpoint_id } => Some(LanEventOut {
            kind: "expired",
            id: endpoint_id,
            addrs: Vec::new(),
        }),
        _ => None,
    }
}

/// Streams the lookup's discovery events to `token` until the subscription is dropped.
pub fn subscribe(bridge: &Bridge, token: u64, lookup: MdnsAddressLookup) {
    bridge.spawn_stream(token, move |shared| async move {
        let mut events = lookup.subscribe().await;
        while let Some(ev) = events.next().await {
            if let Some(o) = lan_event(ev) {
                shared.emit(token, Ok(out(o)));
            }
        }
        shared.finish(token, Ok(out(Plain(()))));
    });
}

/// The endpoint's current addresses as lookup data: its sockets and relay, nothing else.
fn endpoint_data(ep: &iroh::Endpoint) -> EndpointData {
    EndpointData::from(ep.addr())
}

/// Announcements of this endpoint under a service name of the caller's (the LAN nameplate).
/// They stop on `close()` or when the object is dropped.
#[pyclass(module = "iroh_pair._native", frozen)]
pub struct MdnsAnnouncement {
    service: String,
    inner: Mutex<Option<(MdnsAddressLookup, AbortHandle)>>,
}

impl MdnsAnnouncement {
    pub fn start(ep: &iroh::Endpoint, service: String) -> Result<Self, Error> {
        let _rt = RUNTIME.enter();
        let lookup = build(ep.id(), Some(&service), true)?;
        lookup.publish(&endpoint_data(ep));
        // Keep the announcement current if the endpoint's addresses change while hosting.
        let (l, e) = (lookup.clone(), ep.clone());
        let task = RUNTIME.spawn(async move {
            use n0_watcher::Watcher as _;
            let mut addrs = e.watch_addr().stream();
            while let Some(a) = addrs.next().await {
                l.publish(&EndpointData::from(a));
            }
        });
        Ok(Self {
            service,
            inner: Mutex::new(Some((lookup, task.abort_handle()))),
        })
    }
}

#[pymethods]
impl MdnsAnnouncement {
    /// Stops announcing (idempotent).
    fn close(&self) {
        if let Some((_lookup, task)) = lock(&self.inner).take() {
            task.abort();
        }
    }

    /// Whether the announcement is still being made.
    #[getter]
    fn active(&self) -> bool {
        lock(&self.inner).is_some()
    }

    /// The service name announced under.
    #[getter]
    fn service(&self) -> String {
        self.service.clone()
    }

    fn __repr__(&self) -> String {
        format!(
            "MdnsAnnouncement(service={:?}, active={})",
            self.service,
            self.active()
        )
    }
}

impl Drop for MdnsAnnouncement {
    fn drop(&mut self) {
        if let Some((_, task)) = self.inner.get_mut().ok().and_then(Option::take) {
            task.abort();
        }
    }
}

/// Browses `service` for `timeout` at most: returns every other endpoint that announced it,
/// waiting `settle` more after the first one is seen (so that a duplicate shows up). An empty
/// list means nobody announced it within the timeout.
pub async fn browse(
    own: iroh::EndpointId,
    service: String,
    timeout: Duration,
    settle: Duration,
) -> Result<Vec<EndpointAddr>, Error> {
    let lookup = build(own, Some(&service), false)?;
    let mut events = lookup.subscribe().await;
    let mut found: Vec<iroh::EndpointAddr> = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut until = deadline;
    loop {
        let ev = match tokio::time::timeout_at(until, events.next()).await {
            Ok(Some(ev)) => ev,
            Ok(None) | Err(_) => break,
        };
        if let DiscoveryEvent::Discovered { endpoint_info, .. } = ev {
            let addr = endpoint_info.into_endpoint_addr();
            if addr.id == own {
                continue;
            }
            match found.iter_mut().find(|a| a.id == addr.id) {
                Some(a) => *a = addr,
                None => found.push(addr),
            }
            if found.len() == 1 {
                until = (tokio::time::Instant::now() + settle).min(deadline);
            }
        }
    }
    Ok(found.into_iter().map(EndpointAddr).collect())
}

/// The browse result as a Python list of `EndpointAddr`.
pub struct AddrListOut(pub Vec<EndpointAddr>);

impl ToPy for AddrListOut {
    fn to_py(self: Box<Self>, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let list = PyList::empty(py);
        for a in self.0 {
            list.append(Py::new(py, a)?)?;
        }
        Ok(list.into_any().unbind())
    }
}
