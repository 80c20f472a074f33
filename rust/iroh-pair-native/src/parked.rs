//! The parked-operation state machine: where a started operation is between its inline poll
//! on the calling thread and its completion.
//!
//! An operation that did not complete inline stays parked, costing the runtime nothing, until
//! iroh (or a timer) wakes it. The wake-up queues it for the loop (`Item::Resume`), which polls
//! it once more while draining (usually the awaited data is all there then); only an operation
//! that still waits is spawned on the runtime. So starting an operation never wakes a tokio
//! worker just to poll a future that is still waiting, and most short operations never become
//! tokio tasks.
//!
//! ```ignore
//! let parked = Arc::new(Parked::new(shared.clone(), true));
//! // ... poll the future once with `Waker::from(parked.clone())`; still pending:
//! parked.park(task); // from here on its first wake-up decides
//! ```

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Wake, Waker};

use tokio::task::AbortHandle;

use crate::queue::{self, Item};
use crate::runtime::RUNTIME;
use crate::sync::lock;

/// The queue of a bridge whose resumptions are parked operations.
pub type Shared = queue::Shared<Arc<Parked>>;
/// A heavy operation's mark on that queue (see `queue::Heavy`).
pub type Heavy = queue::Heavy<Arc<Parked>>;

pub type BoxTask = std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Where a started operation is: parked until its first wake-up, polled once more on the
/// loop's thread, and only then, if it still waits, a tokio task.
enum Slot {
    /// Being polled on the loop's thread (inline at the start, or resumed).
    Empty,
    /// Woken while it was being polled: it goes to the runtime next.
    Woken,
    /// Waiting for its first wake-up.
    Parked(BoxTask),
    /// Woken; a `Resume` for it is on the queue.
    Queued(BoxTask),
    Running(AbortHandle),
    /// Completed on the loop's thread.
    Done,
    Cancelled,
}

/// An operation that did not complete inline. Its waker is this struct. The first wake-up
/// (usually iroh's connection driver, on a tokio worker, when the awaited data has arrived)
/// queues the future for the loop, which polls it once more while draining: then the result
/// is read where it is needed, with no tokio task in between and without waiting for the
/// driver to finish its turn. A future that still waits after that goes to the runtime, whose
/// own waker takes over, so the loop polls an operation at most twice.
pub struct Parked {
    slot: Mutex<Slot>,
    shared: Arc<Shared>,
    /// Whether the first wake-up goes through the loop (else straight to the runtime).
    resume: bool,
}

/// The largest transfer whose operation the loop polls again at its first wake-up.
pub const RESUME_MAX: usize = 64 * 1024;

impl Parked {
    /// An operation of the bridge whose queue is `shared`; `resume`: whether its first wake-up
    /// goes through the loop (see `RESUME_MAX`).
    pub fn new(shared: Arc<Shared>, resume: bool) -> Self {
        Self {
            slot: Mutex::new(Slot::Empty),
            shared,
            resume,
        }
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Slot> {
        lock(&self.slot)
    }

    /// Polls the queued future on the loop's thread (while draining). Ready: its completion is
    /// on the queue, where this drain picks it up. Still waiting: it becomes a tokio task.
    pub fn resume(self: &Arc<Self>) {
        let mut slot = self.slot();
        let mut task = match std::mem::replace(&mut *slot, Slot::Empty) {
            Slot::Queued(task) => task,
            other => {
                *slot = other; // cancelled meanwhile
                return;
            }
        };
        drop(slot);
        let _rt = RUNTIME.enter();
        let waker = Waker::from(self.clone());
        let ready = task
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_ready();
        let mut slot = self.slot();
        *slot = match std::mem::replace(&mut *slot, Slot::Empty) {
            _ if ready => {
                self.shared.resumed.fetch_add(1, Ordering::Relaxed);
                Slot::Done
            }
            Slot::Empty | Slot::Woken => self.run(task),
            other => other,
        };
    }

    /// Spawns the operation on the runtime, where the task's own waker takes over.
    fn run(&self, task: BoxTask) -> Slot {
        self.shared.spawned.fetch_add(1, Ordering::Relaxed);
        Slot::Running(RUNTIME.spawn(task).abort_handle())
    }

    /// Hands over the future that was polled inline with this waker.
    pub fn park(&self, task: BoxTask) {
        let mut slot = self.slot();
        match std::mem::replace(&mut *slot, Slot::Empty) {
            Slot::Empty => *slot = Slot::Parked(task),
            Slot::Woken => *slot = self.run(task),
            other => *slot = other, // cancelled meanwhile: `task` is dropped
        }
    }

    /// Aborts the task, or drops the parked future here (inside the runtime's context, since
    /// it may hold timers).
    fn cancel(&self) {
        let parked = match std::mem::replace(&mut *self.slot(), Slot::Cancelled) {
            Slot::Parked(task) | Slot::Queued(task) => Some(task),
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
            Slot::Parked(task) if self.resume => {
                *slot = Slot::Queued(task);
                drop(slot);
                self.shared.push(Item::Resume(self.clone()));
            }
            Slot::Parked(task) => *slot = self.run(task),
            // Already queued, running (the task's own waker rules), done or cancelled.
            other => *slot = other,
        }
    }
}

/// How `Bridge::cancel` stops an operation.
pub enum Cancel {
    Task(AbortHandle),
    Parked(Arc<Parked>),
}

impl Cancel {
    pub fn cancel(self) {
        match self {
            Cancel::Task(h) => h.abort(),
            Cancel::Parked(p) => p.cancel(),
        }
    }
}
