//! The async bridge: tokio does the waiting, asyncio gets the results.
//!
//! Every native operation that may wait is started from Python with a token. It is first polled
//! once on the calling thread: when it can complete at once (data already buffered, flow-control
//! window open) its result is returned directly, with no thread hop. Otherwise it stays parked,
//! costing the runtime nothing, until iroh (or a timer) wakes it; only then is it spawned on the
//! shared multi-thread runtime, from the waking thread, so starting an operation never has to
//! wake a tokio worker just to poll a future that is still waiting. When it finishes, the tokio
//! worker pushes `(token, outcome)` onto this bridge's queue and, only if the queue was empty,
//! writes to one eventfd (a pipe on other platforms) that the asyncio loop watches with
//! `add_reader`. The loop then drains every queued completion in one call and converts them to
//! Python objects on its own thread.
//!
//! Tokio threads never take the GIL: the queue holds plain Rust values (`Outcome`), and nothing
//! a task owns or drops is a Python object.

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use bytes::Bytes;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyTuple};
use tokio::runtime::Runtime;
use tokio::task::AbortHandle;

use crate::connection::IncomingOut;
use crate::error::Error;

/// The one tokio runtime shared by every endpoint and bridge in the process.
pub static RUNTIME: LazyLock<Runtime> = LazyLock::new(|| {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = std::env::var("IROH_PAIR_WORKER_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
    {
        b.worker_threads(n);
    }
    b.enable_all()
        .thread_name("iroh-pair-rt")
        .build()
        .expect("failed to start the tokio runtime")
});

/// A finished operation's value, still in Rust. It becomes a Python object only on the loop's
/// thread, when the bridge is drained.
pub type Outcome = Result<Box<dyn ToPy>, Error>;

/// Conversion of an operation's result into a Python object, done on the asyncio loop's thread.
pub trait ToPy: Any + Send + 'static {
    fn to_py(self: Box<Self>, py: Python<'_>) -> PyResult<Py<PyAny>>;
}

/// Wraps a value whose conversion is the standard pyo3 one.
pub struct Plain<T>(pub T);

impl<T> ToPy for Plain<T>
where
    T: for<'py> IntoPyObject<'py> + Send + 'static,
{
    fn to_py(self: Box<Self>, py: Python<'_>) -> PyResult<Py<PyAny>> {
        use pyo3::IntoPyObjectExt;
        self.0.into_py_any(py)
    }
}

/// Raw bytes, converted into a Python `bytes` (the one unavoidable copy into Python).
pub struct PyBytesOut(pub bytes::Bytes);

impl ToPy for PyBytesOut {
    fn to_py(self: Box<Self>, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(pyo3::types::PyBytes::new(py, &self.0).into_any().unbind())
    }
}

/// A pyclass value created on the loop's thread.
pub struct ClassOut<T>(pub T);

impl<T> ToPy for ClassOut<T>
where
    T: pyo3::PyClass + Into<pyo3::PyClassInitializer<T>> + Send + 'static,
{
    fn to_py(self: Box<Self>, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(Py::new(py, self.0)?.into_any())
    }
}

impl<T: ToPy> ToPy for Option<T> {
    fn to_py(self: Box<Self>, py: Python<'_>) -> PyResult<Py<PyAny>> {
        match *self {
            Some(v) => Box::new(v).to_py(py),
            None => Ok(py.None()),
        }
    }
}

/// Boxes a value for the completion queue.
pub fn out<T: ToPy>(v: T) -> Box<dyn ToPy> {
    Box::new(v)
}

struct Completion {
    token: u64,
    persistent: bool,
    outcome: Outcome,
}

/// The wake-up file descriptor: an eventfd on Linux, a non-blocking pipe elsewhere.
struct WakeFd {
    read_fd: i32,
    write_fd: i32,
}

impl WakeFd {
    fn new() -> std::io::Result<Self> {
        #[cfg(target_os = "linux")]
        {
            // SAFETY: plain syscall, the result is checked.
            let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(Self {
                read_fd: fd,
                write_fd: fd,
            })
        }
        #[cfg(not(target_os = "linux"))]
        {
            let mut fds = [0i32; 2];
            // SAFETY: fds has room for the two descriptors; the result is checked.
            if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            for fd in fds {
                // SAFETY: fd is a descriptor we own.
                unsafe {
                    let flags = libc::fcntl(fd, libc::F_GETFL);
                    libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
                    libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
                }
            }
            Ok(Self {
                read_fd: fds[0],
                write_fd: fds[1],
            })
        }
    }

    fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64 to our own descriptor. A full pipe or a
        // saturated eventfd (EAGAIN) already means a wake-up is pending, so errors are ignored.
        unsafe {
            libc::write(self.write_fd, (&one as *const u64).cast(), 8);
        }
    }

    fn clear(&self) {
        let mut buf = [0u8; 64];
        loop {
            // SAFETY: reads into a local buffer of the stated size from our own descriptor.
            let n = unsafe { libc::read(self.read_fd, buf.as_mut_ptr().cast(), buf.len()) };
            // eventfd: one read resets the counter. pipe: read until it is empty.
            if n <= 0 || cfg!(target_os = "linux") {
                break;
            }
        }
    }
}

impl Drop for WakeFd {
    fn drop(&mut self) {
        // SAFETY: we own these descriptors and close each exactly once.
        unsafe {
            libc::close(self.read_fd);
            if self.write_fd != self.read_fd {
                libc::close(self.write_fd);
            }
        }
    }
}

type BoxTask = std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Where a started operation is: parked until its first wake-up, then a tokio task.
enum Slot {
    /// Polled once inline, not parked yet.
    Empty,
    /// Woken before it was parked: spawn it as soon as it is.
    Woken,
    Parked(BoxTask),
    Running(AbortHandle),
    Cancelled,
}

/// An operation that did not complete inline. Its waker is this struct: the first wake-up
/// spawns the parked future on the runtime (on the waking thread, usually the tokio worker that
/// drives the connection), and the tokio task's own waker takes over from there.
struct Parked(Mutex<Slot>);

impl Parked {
    fn slot(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands over the future that was polled inline with this waker.
    fn park(&self, task: BoxTask) {
        let mut slot = self.slot();
        match std::mem::replace(&mut *slot, Slot::Empty) {
            Slot::Empty => *slot = Slot::Parked(task),
            Slot::Woken => *slot = Slot::Running(RUNTIME.spawn(task).abort_handle()),
            other => *slot = other, // cancelled meanwhile: `task` is dropped
        }
    }

    /// Aborts the task, or drops the parked future here (inside the runtime's context, since
    /// it may hold timers).
    fn cancel(&self) {
        let parked = match std::mem::replace(&mut *self.slot(), Slot::Cancelled) {
            Slot::Parked(task) => Some(task),
            Slot::Running(handle) => {
                handle.abort();
                None
            }
            _ => None,
        };
        if let Some(task) = parked {
            let _rt = RUNTIME.enter();
            drop(task);
        }
    }
}

impl Wake for Parked {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let mut slot = self.slot();
        match std::mem::replace(&mut *slot, Slot::Empty) {
            Slot::Empty => *slot = Slot::Woken,
            Slot::Parked(task) => *slot = Slot::Running(RUNTIME.spawn(task).abort_handle()),
            other => *slot = other, // already running or cancelled: the task's own waker rules
        }
    }
}

/// How `Bridge::cancel` stops an operation.
enum Cancel {
    Task(AbortHandle),
    Parked(Arc<Parked>),
}

impl Cancel {
    fn cancel(self) {
        match self {
            Cancel::Task(h) => h.abort(),
            Cancel::Parked(p) => p.cancel(),
        }
    }
}

/// The part of a bridge that tokio tasks hold: the queue and the wake-up fd. No Python objects.
pub struct Shared {
    queue: Mutex<Vec<Completion>>,
    wake: WakeFd,
    completed: AtomicU64,
    wakeups: AtomicU64,
}

impl Shared {
    fn push(&self, c: Completion) {
        let was_empty = {
            let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            let was_empty = q.is_empty();
            q.push(c);
            was_empty
        };
        self.completed.fetch_add(1, Ordering::Relaxed);
        if was_empty {
            self.wakeups.fetch_add(1, Ordering::Relaxed);
            self.wake.wake();
        }
    }

    /// Delivers one result of a persistent subscription (a serve loop, path events).
    pub fn emit(&self, token: u64, outcome: Outcome) {
        self.push(Completion {
            token,
            persistent: true,
            outcome,
        });
    }

    /// Ends a persistent subscription: its last completion, delivered as a one-shot one.
    pub fn finish(&self, token: u64, outcome: Outcome) {
        self.push(Completion {
            token,
            persistent: false,
            outcome,
        });
    }
}

/// One bridge per running asyncio loop. Created by `iroh_pair._bridge`, which watches
/// `fileno()` and calls `drain()` when it is readable.
#[pyclass(module = "iroh_pair._native", frozen)]
pub struct Bridge {
    pub shared: Arc<Shared>,
    aborts: Mutex<HashMap<u64, Cancel>>,
    /// Native request handlers of serve loops (touched on the loop's thread only).
    handlers: Mutex<HashMap<u64, Py<PyAny>>>,
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
            shared: Arc::new(Shared {
                queue: Mutex::new(Vec::with_capacity(256)),
                wake: WakeFd::new()
                    .map_err(|e| pyo3::exceptions::PyOSError::new_err(e.to_string()))?,
                completed: AtomicU64::new(0),
                wakeups: AtomicU64::new(0),
            }),
            aborts: Mutex::new(HashMap::new()),
            handlers: Mutex::new(HashMap::new()),
        })
    }

    /// The file descriptor the asyncio loop watches for readability.
    fn fileno(&self) -> i32 {
        self.shared.wake.read_fd
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
        self.shared.wake.clear();
        let items =
            std::mem::take(&mut *self.shared.queue.lock().unwrap_or_else(|e| e.into_inner()));
        let n = items.len();
        if n == 0 {
            return Ok(0);
        }
        {
            let mut aborts = self.aborts.lock().unwrap_or_else(|e| e.into_inner());
            for c in items.iter().filter(|c| !c.persistent) {
                aborts.remove(&c.token);
            }
        }
        for c in items {
            if let Err(e) = self.deliver(py, c, futures, streams) {
                // A callback failed: report it like asyncio does, and go on with the rest.
                e.write_unraisable(py, None);
            }
        }
        Ok(n)
    }
    /// Aborts the task started under `token` (the Python future was cancelled). Returns whether
    /// a running task was found.
    fn cancel(&self, token: u64) -> bool {
        self.handlers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&token);
        let handle = self
            .aborts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&token);
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
        self.aborts.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// `(completions delivered through the queue, wake-ups written)`: their ratio is how many
    /// completions one drain handled on average.
    fn counters(&self) -> (u64, u64) {
        (
            self.shared.completed.load(Ordering::Relaxed),
            self.shared.wakeups.load(Ordering::Relaxed),
        )
    }
}

impl Bridge {
    fn deliver(
        &self,
        py: Python<'_>,
        c: Completion,
        futures: &Bound<'_, PyDict>,
        streams: &Bound<'_, PyDict>,
    ) -> PyResult<()> {
        let token = c.token;
        if c.persistent
            && let Ok(v) = &c.outcome
            && (&**v as &dyn Any).is::<IncomingOut>()
        {
            let handler = self
                .handlers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&token)
                .map(|h| h.clone_ref(py));
            if let Some(handler) = handler {
                let Ok(v) = c.outcome else { unreachable!() };
                let any: Box<dyn Any + Send> = v;
                let inc = *any.downcast::<IncomingOut>().expect("checked above");
                return self.handle_request(py, token, inc, handler, streams);
            }
        }
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
            self.handlers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&token);
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
        inc: IncomingOut,
        handler: Py<PyAny>,
        streams: &Bound<'_, PyDict>,
    ) -> PyResult<()> {
        let request = crate::streams::join_to_py(py, &inc.request)?;
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
                    let obj = Box::new(inc).to_py(py)?.into_bound(py);
                    callback(true, PyTuple::new(py, [obj, r])?.into_any())
                }
            }
            Err(e) => {
                inc.reject(crate::streams::codes::HANDLER_ERROR);
                callback(false, e.into_value(py).into_bound(py).into_any())
            }
        }
    }

    /// Registers the native handler of the serve loop started under `token`.
    pub fn set_handler(&self, token: u64, handler: Py<PyAny>) {
        self.handlers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(token, handler);
    }

    /// Starts `fut` for `token`: polls it once here and returns its value when it is ready at
    /// once; otherwise parks it until its first wake-up (see `Parked`) and returns `PENDING`.
    pub fn submit<F, T>(&self, py: Python<'_>, token: u64, fut: F) -> PyResult<Py<PyAny>>
    where
        F: Future<Output = Result<T, Error>> + Send + 'static,
        T: ToPy,
    {
        let parked = Arc::new(Parked(Mutex::new(Slot::Empty)));
        let mut fut = Box::pin(fut);
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
        self.aborts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(token, Cancel::Parked(parked));
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
            shared.push(Completion {
                token,
                persistent: false,
                outcome,
            });
        }
    }

    /// Spawns `fut` without trying it inline first (for work that certainly waits).
    pub fn spawn<F, T>(&self, token: u64, fut: F)
    where
        F: Future<Output = Result<T, Error>> + Send + 'static,
        T: ToPy,
    {
        let handle = RUNTIME.spawn(self.completing(token, fut));
        self.aborts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(token, Cancel::Task(handle.abort_handle()));
    }

    /// Spawns a long-running task that emits many results under `token` (see `Shared::emit`).
    /// It is aborted by `cancel(token)` like any other.
    pub fn spawn_stream<F>(&self, token: u64, make: impl FnOnce(Arc<Shared>) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let fut = make(self.shared.clone());
        let handle = RUNTIME.spawn(fut);
        self.aborts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(token, Cancel::Task(handle.abort_handle()));
    }
}

/// Polls a future once on the calling thread; returns its value when ready.
pub fn poll_once<F: Future>(fut: F) -> Option<F::Output> {
    let _rt = RUNTIME.enter();
    let mut fut = pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}
