//! The process's one tokio runtime: which kind (multi-thread, or run by the loop's thread),
//! how many workers, and `poll_once`, which polls a future on the calling thread inside it.
//!
//! Python chooses with `use_runtime` before the first endpoint or operation; otherwise the
//! first use of `RUNTIME` starts the multi-thread runtime:
//!
//! ```python
//! from iroh_pair import _native
//! _native.use_runtime("multi-thread", worker_threads=2)
//! assert _native.runtime_kind() == "multi-thread"
//! ```

use std::future::Future;
use std::pin::pin;
use std::sync::{LazyLock, OnceLock};
use std::task::{Context, Poll, Waker};

use pyo3::prelude::*;
use tokio::runtime::Runtime;

/// The runtimes iroh can run on; one is chosen per process, before its first use.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RuntimeKind {
    /// tokio's multi-thread runtime: iroh runs on worker threads of its own, whatever the loop
    /// does. The default.
    MultiThread,
    /// A current-thread runtime that the asyncio loop's thread runs while it waits (see
    /// `Bridge::drive` and `iroh_pair.loop_thread`): no thread hops, but iroh only makes progress
    /// while a loop waits in `drive`.
    LoopThread,
}

impl RuntimeKind {
    fn name(self) -> &'static str {
        match self {
            Self::MultiThread => "multi-thread",
            Self::LoopThread => "loop-thread",
        }
    }
}

static RUNTIME_KIND: OnceLock<RuntimeKind> = OnceLock::new();
/// The multi-thread runtime's worker count: chosen by `use_runtime`, or else when it starts.
static WORKERS: OnceLock<usize> = OnceLock::new();
/// The largest worker count accepted (a guard against a typo that would start a million threads).
pub const MAX_WORKERS: usize = 1024;

/// The worker count when none was chosen: `IROH_PAIR_WORKER_THREADS`, else one per core but
/// one, which is left to the asyncio loop's thread (at least one worker). On 2 cores one worker
/// keeps a request's work on one thread: fewer wake-ups between threads (see
/// `iroh_pair.runtime` for what was measured).
fn default_workers() -> usize {
    std::env::var("IROH_PAIR_WORKER_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| (1..=MAX_WORKERS).contains(n))
        .unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1))
        })
}

/// The one tokio runtime shared by every endpoint and bridge in the process.
pub static RUNTIME: LazyLock<Runtime> = LazyLock::new(|| {
    let kind = *RUNTIME_KIND.get_or_init(|| RuntimeKind::MultiThread);
    let mut b = match kind {
        RuntimeKind::LoopThread => tokio::runtime::Builder::new_current_thread(),
        RuntimeKind::MultiThread => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(*WORKERS.get_or_init(default_workers));
            b.thread_name("iroh-pair-rt");
            b
        }
    };
    b.enable_all()
        .build()
        .expect("failed to start the tokio runtime")
});

/// A second runtime, one worker, for the CPU-heavy side of file transfers: a fetch (BLAKE3
/// verification of every chunk group, handing data to the store) and the provider's serving of
/// blobs (validated reads) run here, beside the QUIC I/O on `RUNTIME`, instead of taking turns
/// with it on that runtime's worker. Started on the first transfer.
pub static BLOBS_RUNTIME: LazyLock<Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("iroh-pair-blobs")
        .enable_all()
        .build()
        .expect("failed to start the blobs runtime")
});

/// Runs `fut` on `BLOBS_RUNTIME` and waits for it; dropping the returned future (a cancelled
/// operation) aborts it. `None` when the task ended without a result (the runtime shut down).
pub async fn on_blobs_runtime<T: Send + 'static>(
    fut: impl Future<Output = T> + Send + 'static,
) -> Option<T> {
    struct AbortOnDrop(tokio::task::AbortHandle);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let task = BLOBS_RUNTIME.spawn(fut);
    let _abort = AbortOnDrop(task.abort_handle());
    match task.await {
        Ok(v) => Some(v),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => None,
    }
}

/// Chooses the process's runtime: `"multi-thread"` (the default) or `"loop-thread"`, and for
/// the multi-thread one optionally its number of worker threads. Fails with RuntimeError when
/// another runtime or count was already chosen or started (the first endpoint, bridge
/// operation or `use_runtime` call fixes them), with ValueError for an unknown kind, a count
/// outside 1..=`MAX_WORKERS`, or a count for the loop-thread runtime.
#[pyfunction]
#[pyo3(signature = (kind, worker_threads = None))]
pub fn use_runtime(kind: &str, worker_threads: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
    let want = match kind {
        "multi-thread" => RuntimeKind::MultiThread,
        "loop-thread" => RuntimeKind::LoopThread,
        _ => {
            return Err(pyo3::exceptions::PyValueError::new_err(format!(
                "unknown runtime {kind:?}: expected \"multi-thread\" or \"loop-thread\""
            )));
        }
    };
    let worker_threads = match worker_threads {
        Some(_) if want == RuntimeKind::LoopThread => {
            return Err(pyo3::exceptions::PyValueError::new_err(
                "the loop-thread runtime has no worker threads: it runs on the loop's thread",
            ));
        }
        Some(n) => Some(
            n.extract::<usize>()
                .ok()
                .filter(|n| (1..=MAX_WORKERS).contains(n))
                .ok_or_else(|| {
                    pyo3::exceptions::PyValueError::new_err(format!(
                        "worker_threads must be between 1 and {MAX_WORKERS}, got {n}"
                    ))
                })?,
        ),
        None => None,
    };
    let got = *RUNTIME_KIND.get_or_init(|| want);
    if got != want {
        return Err(pyo3::exceptions::PyRuntimeError::new_err(format!(
            "this process already uses the {} runtime; choose {:?} before the first endpoint \
             or native operation",
            got.name(),
            kind
        )));
    }
    if let Some(n) = worker_threads {
        let got = *WORKERS.get_or_init(|| n);
        if got != n {
            return Err(pyo3::exceptions::PyRuntimeError::new_err(format!(
                "this process's runtime already has {got} worker threads; choose {n} before \
                 the first endpoint or native operation"
            )));
        }
    }
    Ok(())
}

/// The multi-thread runtime's number of worker threads once chosen (by `use_runtime`) or
/// started; None before that, and in a process on the loop-thread runtime.
#[pyfunction]
pub fn worker_threads() -> Option<usize> {
    match RUNTIME_KIND.get() {
        Some(RuntimeKind::MultiThread) => WORKERS.get().copied(),
        _ => None,
    }
}

/// The runtime this process uses, or None while none is chosen yet (the first use then
/// starts the multi-thread one).
#[pyfunction]
pub fn runtime_kind() -> Option<&'static str> {
    RUNTIME_KIND.get().map(|k| k.name())
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
