//! The async bridge: tokio does the waiting, asyncio gets the results. This module is its
//! Python surface, `Bridge` (one per asyncio loop) and `PENDING`; the queue it drains is in
//! `queue`, the life of an operation between its start and its completion in `parked`.
//!
//! Every native operation that may wait is started from Python with a token. It is first polled
//! once on the calling thread: when it can complete at once (data already buffered, flow-control
//! window open) its result is returned directly, with no thread hop. Otherwise it stays parked,
//! costing the runtime nothing, until iroh (or a timer) wakes it. The wake-up queues it for the
//! loop, which polls it once more while draining (usually the awaited data is all there then);
//! only an operation that still waits is spawned on the shared multi-thread runtime. A tokio
//! task that finishes pushes `(token, outcome)` onto this bridge's queue, whose wake-up fd the
//! asyncio loop watches with `add_reader`; a drain takes batches until the queue is empty and
//! converts them to Python objects on the loop's thread.
//!
//! Tokio threads never take the GIL: the queue holds plain Rust values (`Outcome`), and nothing
//! a task owns or drops is a Python object.
//!
//! ```python
//! result = conn.open_bi(bridge, token)   # what iroh_pair.runtime._bridge.start does
//! if result is PENDING:                  # it arrives through bridge.drain() under `token`
//!     result = await future_for(token)
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyTuple};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::error::Error;
use crate::outcome::{Request, ToPy};
use crate::parked::{Cancel, Heavy, Parked, RESUME_MAX, Shared};
use crate::queue::{Completion, DrainGuard, Driving, Item};
use crate::runtime::RUNTIME;
use crate::sync::lock;

/// How many queued items one drain takes at most before it lets the loop run.
const DRAIN_MAX: usize = 4096;

/// One bridge per running asyncio loop. Created by `iroh_pair._bridge`, which watches
/// `fileno()` and calls `drain()` when it is readable.
#[pyclass(module = "iroh_pair._native", frozen)]
pub struct Bridge {
    pub shared: Arc<Shared>,
    aborts: Mutex<HashMap<u64, Cancel>>,
    /// Native request handlers of serve loops (touched on the loop's thread only).
    handlers: Mutex<HashMap<u64, Py<PyAny>>>,
    /// The loop's selector (see `drive`): the fd Python gave, and our own duplicate of it,
    /// registered with the runtime's reactor.
    selector: Mutex<Option<(i32, Arc<AsyncFd<OwnedFd>>)>>,
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.shared.close();
    }
}

/// Whether `fd` is readable now (for an epoll fd: whether it has ready events), not waiting.
fn readable_now(fd: &impl AsRawFd) -> bool {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd on a descriptor we own, zero timeout.
    unsafe { libc::poll(&mut p, 1, 0) > 0 }
}

/// Returned by an operation that did not complete at once: its result will arrive through
/// `Bridge.drain()` under the token it was started with.
#[pyclass(module = "iroh_pair._native", frozen)]
pub struct Pending;

#[pymethods]
impl Pending {
    fn __repr__(&self) -> &'static str {
        "PENDING"
    }
}

pub static PENDING: pyo3::sync::PyOnceLock<Py<Pending>> = pyo3::sync::PyOnceLock::new();

pub fn pending(py: Python<'_>) -> Py<PyAny> {
    PENDING
        .get_or_init(py, || Py::new(py, Pending).expect("allocating PENDING"))
        .clone_ref(py)
        .into_any()
}

#[pymethods]
impl Bridge {
    #[new]
    fn py_new() -> PyResult<Self> {
        Ok(Self {
            shared: Arc::new(
                Shared::new().map_err(|e| pyo3::exceptions::PyOSError::new_err(e.to_string()))?,
            ),
            selector: Mutex::new(None),
            aborts: Mutex::new(HashMap::new()),
            handlers: Mutex::new(HashMap::new()),
        })
    }

    /// The file descriptor the asyncio loop watches for readability.
    fn fileno(&self) -> i32 {
        self.shared.fileno()
    }

    /// Delivers every queued completion, on the loop's thread: a one-shot result resolves the
    /// future `futures[token]` (popped; skipped when already done, i.e. cancelled); an item of a
    /// subscription calls `streams[token][0](ok, value)`, its last one `streams[token][1](ok,
    /// value)`. A request of a serve loop with a native handler calls the handler here and sends
    /// a `bytes` reply at once, with no Python frame in between. Returns how many were handled.
    fn drain(
        &self,
        py: Python<'_>,
        futures: &Bound<'_, PyDict>,
        streams: &Bound<'_, PyDict>,
    ) -> PyResult<usize> {
        self.shared.unsignal();
        // Until the queue is empty: what tokio pushes meanwhile, and what resumed operations
        // complete with, is taken in this same call, with no wake-up written for it. Up to
        // `DRAIN_MAX` items, so a steady stream of completions cannot starve the rest of the
        // loop (the futures resolved here resume their tasks only after this call returns); what
        // is left gets a wake-up from the guard.
        let guard = DrainGuard(&self.shared);
        let (mut n, mut taken) = (0, 0);
        while taken < DRAIN_MAX
            && let Some(items) = guard.0.next_batch()
        {
            taken += items.len();
            {
                let mut aborts = lock(&self.aborts);
                for item in &items {
                    if let Item::Done(c) = item
                        && !c.persistent
                    {
                        aborts.remove(&c.token);
                    }
                }
            }
            for item in items {
                match item {
                    Item::Resume(parked) => parked.resume(),
                    Item::Done(c) => {
                        n += 1;
                        if let Err(e) = self.deliver(py, c, futures, streams) {
                            // A callback failed: report it like asyncio does, and go on.
                            e.write_unraisable(py, None);
                        }
                    }
                    Item::Request(token, request) => {
                        n += 1;
                        if let Err(e) = self.deliver_request(py, token, request, futures, streams) {
                            e.write_unraisable(py, None);
                        }
                    }
                }
            }
        }
        Ok(n)
    }

    /// Busy-polls: with the GIL released, watches the queue for up to `us` microseconds and
    /// returns as soon as something is on it (then True). What a loop does instead of blocking
    /// when a completion is expected within microseconds: sleeping in `epoll_wait` and being
    /// woken by another thread costs more than that on small machines (see
    /// `iroh_pair.busy_poll`). The wake-up fd is written as usual, so a drain follows.
    /// Returns False at once while a bulk transfer or a dial is in flight (see `Heavy`).
    fn spin(&self, py: Python<'_>, us: u32) -> bool {
        let ready = &self.shared.ready;
        if ready.load(Ordering::Acquire) {
            return true;
        }
        if self.shared.heavy.load(Ordering::Relaxed) > 0 {
            return false;
        }
        py.detach(|| {
            let deadline = std::time::Instant::now() + std::time::Duration::from_micros(us.into());
            loop {
                for _ in 0..64 {
                    if ready.load(Ordering::Acquire) {
                        return true;
                    }
                    std::hint::spin_loop();
                }
                if std::time::Instant::now() >= deadline {
                    return false;
                }
                // Polite on small machines: a tokio worker that is runnable gets this core.
                std::thread::yield_now();
            }
        })
    }

    /// Runs the runtime on this thread (see `iroh_pair.loop_thread`) until a completion is
    /// queued (returns True), the selector `epfd` (the loop's epoll/poll fd) has ready events,
    /// or `timeout_us` passes (negative: no timeout). With `timeout_us == 0` it runs what is
    /// ready once and returns. The GIL is released meanwhile. On the loop-thread runtime this is
    /// where iroh runs; on the multi-thread one it only waits. Completions pushed meanwhile do
    /// not write the wake-up fd: when this returns True the caller must report the fd as
    /// readable itself (as `LoopThreadSelector.select` does).
    fn drive(&self, py: Python<'_>, epfd: i32, timeout_us: i64) -> PyResult<bool> {
        let selector = self.selector_fd(epfd)?;
        let shared = self.shared.clone();
        let driving = Driving::start(&self.shared);
        let ready = py.detach(move || {
            RUNTIME.block_on(async move {
                if timeout_us == 0 {
                    // One turn of the runtime: the tasks that are ready, and its I/O and timers.
                    tokio::task::yield_now().await;
                    return shared.ready.load(Ordering::Acquire);
                }
                let deadline = u64::try_from(timeout_us)
                    .ok()
                    .map(|us| tokio::time::Instant::now() + std::time::Duration::from_micros(us));
                loop {
                    if shared.ready.load(Ordering::Acquire) {
                        return true;
                    }
                    if readable_now(selector.get_ref()) {
                        return false;
                    }
                    let timer = async {
                        match deadline {
                            Some(d) => tokio::time::sleep_until(d).await,
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        biased;
                        () = shared.notify.notified() => {}
                        guard = selector.readable() => {
                            // Edge-triggered: cleared here, checked again above.
                            if let Ok(mut g) = guard {
                                g.clear_ready();
                            }
                        }
                        () = timer => return shared.ready.load(Ordering::Acquire),
                    }
                }
            })
        });
        drop(driving);
        Ok(ready)
    }

    /// Bulk transfers and dials in flight: while there are any, `spin` does not spin.
    fn heavy_count(&self) -> usize {
        self.shared.heavy.load(Ordering::Relaxed)
    }

    /// Aborts the task started under `token` (the Python future was cancelled). Returns whether
    /// a running task was found.
    fn cancel(&self, token: u64) -> bool {
        lock(&self.handlers).remove(&token);
        let handle = lock(&self.aborts).remove(&token);
        match handle {
            Some(h) => {
                h.cancel();
                true
            }
            None => false,
        }
    }

    /// Operations started and not yet drained or cancelled.
    fn pending_count(&self) -> usize {
        lock(&self.aborts).len()
    }

    /// `(completions delivered through the queue, wake-ups written, operations completed by
    /// the loop's poll after their first wake-up, operations that went on as tokio tasks)`.
    /// completions / wake-ups is how many completions one drain handled on average.
    fn counters(&self) -> (u64, u64, u64, u64) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let s = &self.shared;
        (
            get(&s.completed),
            get(&s.wakeups),
            get(&s.resumed),
            get(&s.spawned),
        )
    }
}

impl Bridge {
    /// The loop's selector fd registered with the runtime's reactor: a duplicate, so that the
    /// registration never outlives the descriptor (or names another file that reuses its
    /// number) when Python closes its selector first.
    fn selector_fd(&self, epfd: i32) -> PyResult<Arc<AsyncFd<OwnedFd>>> {
        let mut sel = lock(&self.selector);
        if let Some((fd, a)) = &*sel
            && *fd == epfd
        {
            return Ok(a.clone());
        }
        let os_err = |e: std::io::Error| pyo3::exceptions::PyOSError::new_err(e.to_string());
        // SAFETY: F_DUPFD_CLOEXEC on a caller's descriptor; the result is checked.
        let dup = unsafe { libc::fcntl(epfd, libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            return Err(os_err(std::io::Error::last_os_error()));
        }
        // SAFETY: `dup` is a fresh descriptor that nothing else owns.
        let owned = unsafe { OwnedFd::from_raw_fd(dup) };
        let _rt = RUNTIME.enter();
        // SAFETY: the AsyncFd owns `owned`, so the descriptor stays open, and names the same
        // file, for as long as it is registered.
        let a = unsafe { AsyncFd::register_with_interest(owned, Interest::READABLE) }
            .map_err(|e| os_err(e.into()))?;
        let a = Arc::new(a);
        *sel = Some((epfd, a.clone()));
        Ok(a)
    }

    /// A serve loop's request: to its native handler, if it has one, else to its Python
    /// callback like any result of a subscription.
    fn deliver_request(
        &self,
        py: Python<'_>,
        token: u64,
        request: Box<dyn Request>,
        futures: &Bound<'_, PyDict>,
        streams: &Bound<'_, PyDict>,
    ) -> PyResult<()> {
        let handler = lock(&self.handlers).get(&token).map(|h| h.clone_ref(py));
        match handler {
            Some(handler) => self.handle_request(py, token, request, handler, streams),
            None => {
                let c = Completion {
                    token,
                    persistent: true,
                    outcome: Ok(request),
                };
                self.deliver(py, c, futures, streams)
            }
        }
    }

    fn deliver(
        &self,
        py: Python<'_>,
        c: Completion,
        futures: &Bound<'_, PyDict>,
        streams: &Bound<'_, PyDict>,
    ) -> PyResult<()> {
        let token = c.token;
        let (ok, value) = match c.outcome {
            Ok(v) => match v.to_py(py) {
                Ok(obj) => (true, obj),
                Err(e) => (false, e.into_value(py).into_any()),
            },
            Err(e) => (false, PyErr::from(e).into_value(py).into_any()),
        };
        let key = token.into_pyobject(py)?;
        if !c.persistent
            && let Some(fut) = futures.get_item(&key)?
        {
            futures.del_item(&key)?;
            if !fut.call_method0(intern!(py, "done"))?.is_truthy()? {
                let method = if ok {
                    intern!(py, "set_result")
                } else {
                    intern!(py, "set_exception")
                };
                fut.call_method1(method, (value,))?;
            }
            return Ok(());
        }
        let Some(callbacks) = streams.get_item(&key)? else {
            return Ok(()); // cancelled meanwhile
        };
        if c.persistent {
            callbacks.get_item(0)?.call1((ok, value))?;
        } else {
            streams.del_item(&key)?;
            lock(&self.handlers).remove(&token);
            callbacks.get_item(1)?.call1((ok, value))?;
        }
        Ok(())
    }

    /// Runs a serve loop's native handler on one request. A `bytes`-like reply is sent at once;
    /// anything else (an awaitable) goes to the subscription's Python callback as
    /// `(incoming, result)`, and a handler exception refuses the request and goes there too.
    fn handle_request(
        &self,
        py: Python<'_>,
        token: u64,
        inc: Box<dyn Request>,
        handler: Py<PyAny>,
        streams: &Bound<'_, PyDict>,
    ) -> PyResult<()> {
        let request = crate::buffers::join_to_py(py, inc.request())?;
        let result = handler.call1(py, (request,));
        let callback = |ok: bool, value: Bound<'_, PyAny>| -> PyResult<()> {
            if let Some(cbs) = streams.get_item(token)? {
                cbs.get_item(0)?.call1((ok, value))?;
            }
            Ok(())
        };
        match result {
            Ok(r) => {
                let r = r.into_bound(py);
                if let Ok(b) = r.cast::<PyBytes>() {
                    inc.respond(Bytes::copy_from_slice(b.as_bytes()));
                    Ok(())
                } else {
                    let obj = inc.to_py(py)?.into_bound(py);
                    callback(true, PyTuple::new(py, [obj, r])?.into_any())
                }
            }
            Err(e) => {
                inc.reject(crate::codes::HANDLER_ERROR);
                callback(false, e.into_value(py).into_bound(py).into_any())
            }
        }
    }

    /// Registers the native handler of the serve loop started under `token`.
    pub fn set_handler(&self, token: u64, handler: Py<PyAny>) {
        lock(&self.handlers).insert(token, handler);
    }

    /// Starts `fut` for `token`: polls it once here and returns its value when it is ready at
    /// once; otherwise parks it until its first wake-up (see `Parked`) and returns `PENDING`.
    pub fn submit<F, T>(&self, py: Python<'_>, token: u64, fut: F) -> PyResult<Py<PyAny>>
    where
        F: Future<Output = Result<T, Error>> + Send + 'static,
        T: ToPy,
    {
        self.submit_sized(py, token, fut, 0)
    }

    /// `submit` for an operation that moves exactly `bytes` bytes. One over `RESUME_MAX` (a
    /// large exact read or whole write) rarely completes at its first wake-up: it goes straight
    /// to the runtime then, without the round trip through the loop, which cost sized transfers
    /// part of their rate (bench/RESULTS.md, "Runtime choices").
    pub fn submit_sized<F, T>(
        &self,
        py: Python<'_>,
        token: u64,
        fut: F,
        bytes: usize,
    ) -> PyResult<Py<PyAny>>
    where
        F: Future<Output = Result<T, Error>> + Send + 'static,
        T: ToPy,
    {
        let parked = Arc::new(Parked::new(self.shared.clone(), bytes <= RESUME_MAX));
        let heavy = (bytes > RESUME_MAX).then(|| self.heavy());
        let mut fut = Box::pin(async move {
            let _heavy = heavy;
            fut.await
        });
        {
            let _rt = RUNTIME.enter();
            let waker = Waker::from(parked.clone());
            if let Poll::Ready(r) = fut.as_mut().poll(&mut Context::from_waker(&waker)) {
                return match r {
                    Ok(v) => Box::new(v).to_py(py),
                    Err(e) => Err(e.into()),
                };
            }
        }
        parked.park(Box::pin(self.completing(token, fut)));
        lock(&self.aborts).insert(token, Cancel::Parked(parked));
        Ok(pending(py))
    }

    /// `fut`, then its outcome pushed onto the queue under `token`: the task an operation
    /// runs as once it leaves the calling thread.
    fn completing<F, T>(&self, token: u64, fut: F) -> impl Future<Output = ()> + Send + 'static
    where
        F: Future<Output = Result<T, Error>> + Send + 'static,
        T: ToPy,
    {
        let shared = self.shared.clone();
        async move {
            let outcome = fut.await.map(|v| Box::new(v) as Box<dyn ToPy>);
            shared.push(Item::Done(Completion {
                token,
                persistent: false,
                outcome,
            }));
        }
    }

    /// Marks an operation as one that keeps tokio's workers busy while it is held (see `Heavy`).
    pub fn heavy(&self) -> Heavy {
        Heavy::new(&self.shared)
    }

    /// Spawns `fut` without trying it inline first (for work that certainly waits).
    pub fn spawn<F, T>(&self, token: u64, fut: F)
    where
        F: Future<Output = Result<T, Error>> + Send + 'static,
        T: ToPy,
    {
        self.shared.spawned.fetch_add(1, Ordering::Relaxed);
        let handle = RUNTIME.spawn(self.completing(token, fut));
        lock(&self.aborts).insert(token, Cancel::Task(handle.abort_handle()));
    }

    /// Spawns a long-running task that emits many results under `token` (see `Shared::emit`).
    /// It is aborted by `cancel(token)` like any other.
    pub fn spawn_stream<F>(&self, token: u64, make: impl FnOnce(Arc<Shared>) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let fut = make(self.shared.clone());
        let handle = RUNTIME.spawn(fut);
        lock(&self.aborts).insert(token, Cancel::Task(handle.abort_handle()));
    }
}
