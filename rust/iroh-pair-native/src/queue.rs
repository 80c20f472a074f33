//! The completion queue of one bridge, and its wake-up fd.
//!
//! Tokio tasks push `(token, outcome)` onto `Shared`'s queue; the loop's thread takes batches
//! off it while draining (see `bridge`). One eventfd (a pipe on other platforms), which the
//! asyncio loop watches with `add_reader`, is written when the queue turns non-empty while no
//! drain is running. Nothing here is a Python object: tokio threads never take the GIL.
//!
//! The queue also carries resumptions of woken operations (`Item::Resume`); what one is, is the
//! parked-operation state machine's business (`parked`), so the queue is generic over it.
//!
//! ```ignore
//! shared.emit(token, Ok(out(Plain(1u64)))); // one result of a subscription
//! shared.finish(token, Ok(out(Plain(())))); // its end, delivered as a one-shot completion
//! ```

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::outcome::{Outcome, Request};
use crate::runtime::RUNTIME;
use crate::sync::lock;

pub struct Completion {
    pub token: u64,
    pub persistent: bool,
    pub outcome: Outcome,
}

/// What the queue carries to the loop's thread.
pub enum Item<R> {
    /// A finished operation, or one result of a subscription.
    Done(Completion),
    /// A request of the serve loop started under this token (a persistent one).
    Request(u64, Box<dyn Request>),
    /// A parked operation was woken: the loop polls it once more (see `parked::Parked`).
    Resume(R),
}

/// The queue, and whether the loop is draining it right now (then a push needs no wake-up:
/// the drain takes it before it returns).
struct Queue<R> {
    items: Vec<Item<R>>,
    draining: bool,
    /// The bridge is gone (its loop closed): items are dropped, not queued. A queued `Resume`
    /// holds an operation whose task holds this queue's `Shared`: kept, it would be a cycle.
    closed: bool,
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

/// The part of a bridge that tokio tasks hold: the queue and the wake-up fd. No Python objects.
pub struct Shared<R> {
    queue: Mutex<Queue<R>>,
    wake: WakeFd,
    pub completed: AtomicU64,
    pub wakeups: AtomicU64,
    /// Woken operations that the loop's second poll completed.
    pub resumed: AtomicU64,
    /// Operations that went on as tokio tasks.
    pub spawned: AtomicU64,
    /// Whether the queue has items: what `Bridge::spin` watches, without the queue's lock.
    pub ready: AtomicBool,
    /// Operations in flight that keep tokio's workers busy (see `Heavy`): no spinning then.
    pub heavy: AtomicUsize,
    /// Woken when the queue turns non-empty: what `Bridge::drive` waits on.
    pub notify: tokio::sync::Notify,
    /// The loop's thread is in `Bridge::drive`: a push needs no fd write, the drive returns
    /// True and the selector reports the bridge's fd itself.
    driving: AtomicBool,
    /// The wake-up fd was written and not yet read: a drain without it skips the read.
    signalled: AtomicBool,
}

/// Held by an operation whose work keeps tokio's workers busy: a bulk transfer (over
/// `RESUME_MAX`) or a dial (handshake crypto). While one is in flight, `Bridge::spin` returns at
/// once: on a small machine a spinning loop thread takes CPU those workers need (measured:
/// bench/RESULTS.md, "Runtime choices").
pub struct Heavy<R>(Arc<Shared<R>>);

impl<R> Heavy<R> {
    pub fn new(shared: &Arc<Shared<R>>) -> Self {
        shared.heavy.fetch_add(1, Ordering::Relaxed);
        Self(shared.clone())
    }
}

impl<R> Drop for Heavy<R> {
    fn drop(&mut self) {
        self.0.heavy.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<R> Shared<R> {
    /// An empty queue with a fresh wake-up fd.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            queue: Mutex::new(Queue {
                items: Vec::with_capacity(256),
                draining: false,
                closed: false,
            }),
            wake: WakeFd::new()?,
            completed: AtomicU64::new(0),
            wakeups: AtomicU64::new(0),
            resumed: AtomicU64::new(0),
            spawned: AtomicU64::new(0),
            ready: AtomicBool::new(false),
            heavy: AtomicUsize::new(0),
            notify: tokio::sync::Notify::new(),
            driving: AtomicBool::new(false),
            signalled: AtomicBool::new(false),
        })
    }

    /// The file descriptor the asyncio loop watches for readability.
    pub fn fileno(&self) -> i32 {
        self.wake.read_fd
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Queue<R>> {
        lock(&self.queue)
    }

    pub fn push(&self, item: Item<R>) {
        if matches!(item, Item::Done(_) | Item::Request(..)) {
            self.completed.fetch_add(1, Ordering::Relaxed);
        }
        let wake = {
            let mut q = self.queue();
            if q.closed {
                drop(q);
                let _rt = RUNTIME.enter(); // a parked future may hold timers
                drop(item);
                return;
            }
            let wake = q.items.is_empty() && !q.draining;
            q.items.push(item);
            self.ready.store(true, Ordering::Release);
            wake
        };
        if wake {
            self.wakeups.fetch_add(1, Ordering::Relaxed);
            self.notify.notify_one();
            if !self.driving.load(Ordering::Acquire) {
                self.signal();
            }
        }
    }

    /// Writes the wake-up fd. The flag is set after the write: a drain that reads it as unset
    /// skips the read, and the fd, still readable, brings the loop back for it.
    fn signal(&self) {
        self.wake.wake();
        self.signalled.store(true, Ordering::Release);
    }

    /// Empties the wake-up fd, if it was written.
    pub fn unsignal(&self) {
        if self.signalled.swap(false, Ordering::AcqRel) {
            self.wake.clear();
        }
    }

    /// The next batch for a drain; `None` (and draining over) when the queue is empty.
    pub fn next_batch(&self) -> Option<Vec<Item<R>>> {
        let mut q = self.queue();
        if q.items.is_empty() {
            q.draining = false;
            return None;
        }
        q.draining = true;
        self.ready.store(false, Ordering::Relaxed);
        Some(std::mem::take(&mut q.items))
    }

    /// Delivers one result of a persistent subscription (a serve loop, path events).
    pub fn emit(&self, token: u64, outcome: Outcome) {
        self.push(Item::Done(Completion {
            token,
            persistent: true,
            outcome,
        }));
    }

    /// Delivers one request of a serve loop (see `outcome::Request`).
    pub fn request(&self, token: u64, request: Box<dyn Request>) {
        self.push(Item::Request(token, request));
    }

    /// Ends a persistent subscription: its last completion, delivered as a one-shot one.
    pub fn finish(&self, token: u64, outcome: Outcome) {
        self.push(Item::Done(Completion {
            token,
            persistent: false,
            outcome,
        }));
    }

    /// Closes the queue (its bridge is gone): what is on it is dropped, and so is whatever is
    /// pushed later.
    pub fn close(&self) {
        let items = {
            let mut q = self.queue();
            q.closed = true;
            std::mem::take(&mut q.items)
        };
        let _rt = RUNTIME.enter();
        drop(items);
    }
}

/// Marks the loop's thread as in `Bridge::drive` (pushes write no fd) until dropped.
pub struct Driving<'a, R>(&'a Shared<R>);

impl<'a, R> Driving<'a, R> {
    pub fn start(shared: &'a Shared<R>) -> Self {
        shared.driving.store(true, Ordering::Release);
        Self(shared)
    }
}

impl<R> Drop for Driving<'_, R> {
    fn drop(&mut self) {
        self.0.driving.store(false, Ordering::Release);
    }
}

/// Ends a drain whichever way it leaves (a panic included): draining is over, and anything
/// left on the queue gets its wake-up, so nothing waits for a drain that is not coming.
pub struct DrainGuard<'a, R>(pub &'a Shared<R>);

impl<R> Drop for DrainGuard<'_, R> {
    fn drop(&mut self) {
        let pending = {
            let mut q = self.0.queue();
            q.draining = false;
            !q.items.is_empty()
        };
        if pending {
            self.0.signal();
        }
    }
}
