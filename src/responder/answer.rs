//! Sending answers: the `Replier` publishes on the responder's connection (from any
//! thread), and a `PendingAnswer` is one admitted request's single answer, which finishes
//! its run in the ledger — the waiting repeats get the same answer — whether it is sent,
//! refused, abandoned, or dropped unanswered.

use super::ledger::{Outcome, RequestLedger, Ticket};
use super::route::{progress_body, reply_body, ReplyRoute};
use super::{overloaded, ResponderCounters};
use crate::link::{Outbox, Properties, Unsent};
use serde_json::Value;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// Publishes answers; cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct Replier {
    pub(super) outbox: Outbox,
    pub(super) qos: u8,
    pub(super) counters: Arc<ResponderCounters>,
    pub(super) ledger: Arc<Mutex<RequestLedger>>,
}

impl Replier {
    pub fn counters(&self) -> &ResponderCounters {
        &self.counters
    }

    /// Publishes `body` where `route` says (any message: answers, progress, or a test
    /// device's junk).
    pub fn send(&self, route: &ReplyRoute, body: Vec<u8>) -> Result<(), Unsent> {
        let sent = self.outbox.publish(
            &route.topic,
            self.qos,
            body,
            Properties {
                correlation_data: route.correlation_data.clone(),
                ..Properties::default()
            },
        );
        let counter = match sent {
            Ok(()) => &self.counters.answers_queued,
            Err(_) => &self.counters.answers_unsent,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        sent
    }

    pub fn answer(&self, route: &ReplyRoute, outcome: &Outcome) -> Result<(), Unsent> {
        self.send(route, reply_body(route, outcome))
    }

    pub(super) fn ledger(&self) -> MutexGuard<'_, RequestLedger> {
        // The ledger's state stays consistent between calls: a panic elsewhere does not
        // make it unusable.
        self.ledger
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The answer one admitted request owes. Dropping it unanswered ends its run without an
/// answer (as `abandon`), so a run is never held forever by a lost handle.
pub struct PendingAnswer {
    replier: Replier,
    route: Option<ReplyRoute>,
    ticket: Option<Ticket>,
    number: u64,
    /// Which filter's handler runs it, and since when (for its `HandlerStats`).
    filter_index: usize,
    admitted: Instant,
    /// When its caller stops waiting, if the request said.
    deadline: Option<Instant>,
}

impl std::fmt::Debug for PendingAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingAnswer")
            .field("number", &self.number)
            .field("route", &self.route)
            .finish()
    }
}

impl PendingAnswer {
    pub(super) fn new(
        replier: Replier,
        route: Option<ReplyRoute>,
        ticket: Ticket,
        filter_index: usize,
        deadline: Option<Instant>,
    ) -> Self {
        PendingAnswer {
            number: ticket.number(),
            replier,
            route,
            ticket: Some(ticket),
            filter_index,
            admitted: Instant::now(),
            deadline,
        }
    }

    /// The run's number, which a cancellation names (`Incoming::Cancel`).
    pub fn number(&self) -> u64 {
        self.number
    }

    /// Where the answer goes; `None` for a notification.
    pub fn route(&self) -> Option<&ReplyRoute> {
        self.route.as_ref()
    }

    pub fn replier(&self) -> &Replier {
        &self.replier
    }

    /// When the caller stops waiting, if the request said.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Whether the caller has stopped waiting by `now`: a handler should not start.
    pub fn expired(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|deadline| deadline <= now)
    }

    /// Drops the request unanswered because its caller stopped waiting before a handler
    /// started (counted as `requests_expired`). Returns whether it was the first so
    /// dropped, to be told once.
    pub fn expire(mut self) -> bool {
        self.end(None);
        let expired = &self.replier.counters.requests_expired;
        expired.fetch_add(1, Ordering::Relaxed) == 0
    }

    /// Sends an interim `{"request_id", "progress"}` message (nothing for a notification).
    pub fn progress(&self, progress: Value) -> Result<(), Unsent> {
        match &self.route {
            Some(route) => self.replier.send(route, progress_body(route, progress)),
            None => Ok(()),
        }
    }

    /// Answers, and gives the same answer to the repeats that waited for this run; later
    /// repeats get it from the cache. A notification's outcome is sent nowhere.
    pub fn answer(mut self, outcome: Outcome) -> Result<(), Unsent> {
        if let Some(handler) = self.replier.counters.handlers.get(self.filter_index) {
            handler.answered(self.admitted.elapsed(), outcome.as_ref().err());
        }
        let counters = Arc::clone(&self.replier.counters);
        let _in_hand = InHand::new(&counters.answers_in_hand);
        let repeats = self.end(Some(&outcome));
        let Some(route) = self.route.take() else {
            return Ok(());
        };
        for repeat in &repeats {
            let _ = self.replier.answer(repeat, &outcome);
        }
        self.replier.answer(&route, &outcome)
    }

    /// Answers "overloaded" without running a handler (the loop was too far behind); the
    /// answer is not remembered, so a retry runs.
    pub fn refuse(mut self) {
        let counters = Arc::clone(&self.replier.counters);
        let _in_hand = InHand::new(&counters.answers_in_hand);
        self.end(None);
        if let Some(route) = self.route.take() {
            let _ = self.replier.answer(&route, &Err(overloaded()));
        }
    }

    /// Ends the run without an answer (cancelled, or a device that stays silent).
    pub fn abandon(mut self) {
        self.end(None);
    }

    fn end(&mut self, answer: Option<&Outcome>) -> Vec<ReplyRoute> {
        match self.ticket.take() {
            Some(ticket) => self.replier.ledger().finish(ticket, answer, Instant::now()),
            None => Vec::new(),
        }
    }
}

impl Drop for PendingAnswer {
    fn drop(&mut self) {
        self.end(None);
    }
}

/// An answer between the end of its run in the ledger and its publish: a leave that looked
/// in between would see neither the run nor the answer, and disconnect before it.
struct InHand<'a>(&'a AtomicUsize);

impl<'a> InHand<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        InHand(count)
    }
}

impl Drop for InHand<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
