//! Locking a mutex that a panic elsewhere may have poisoned: the crate's one way to do it.

use std::sync::{Mutex, MutexGuard};

/// The guard of `mutex`, poisoned or not. A panic while holding the lock cannot leave the
/// tables half-updated in a way that matters more than stopping every caller would: keep
/// going with the data as it is.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
