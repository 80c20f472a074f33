//! `lock`: a `std::sync::Mutex` guard, whatever a thread that panicked while holding it left.
//!
//! Every mutex of this crate guards state that stays consistent between statements (a slot, a
//! queue, a table), so a poisoned one is used as it is, never turned into an error or a panic.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `m`; a poisoned mutex is locked all the same.
///
/// ```ignore
/// let table = Mutex::new(Vec::new());
/// lock(&table).push(1);
/// ```
#[inline]
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
