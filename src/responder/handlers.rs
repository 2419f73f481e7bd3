//! What each handler (one request filter) did: its answers, how many were errors, how long
//! each took from admission to answer (a histogram and a total), and its last error. Kept
//! in the core so that a Python `Responder` and a Rust device report alike.

use crate::metrics::LatencyHistogram;
use crate::protocol::RemoteError;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// One filter's counts. Time runs from the request's admission (so it includes a wait for
/// a free handler turn) to its answer; cancelled and unanswered runs are not counted.
#[derive(Debug)]
pub struct HandlerStats {
    pub filter: String,
    /// Answers given, results and errors alike (notifications' runs included).
    pub requests: AtomicU64,
    /// Answers that were errors.
    pub errors: AtomicU64,
    pub processing: LatencyHistogram,
    last_error: Mutex<Option<String>>,
}

impl HandlerStats {
    pub fn new(filter: &str) -> Self {
        HandlerStats {
            filter: filter.to_owned(),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            processing: LatencyHistogram::default(),
            last_error: Mutex::new(None),
        }
    }

    pub(super) fn answered(&self, took: Duration, error: Option<&RemoteError>) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.processing.record(took);
        if let Some(error) = error {
            self.errors.fetch_add(1, Ordering::Relaxed);
            let text = format!("{}: {}", error.code, error.message);
            *self
                .last_error
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(text);
        }
    }

    /// The last error answered, as `"code: message"`.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}
