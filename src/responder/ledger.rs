//! A device's request ledger, without I/O: for each request that arrives it decides whether
//! a handler runs it, whether it is a repeat (a caller's retry) answered from the cache of
//! answers or by the run already under way, or whether the responder is over its limit and
//! answers "overloaded"; it finds the run a cancellation stops; and when a run ends it says
//! which waiting repeats get that answer. Time is an input, so tests drive it. The
//! `Responder` (Rust device and Python `Responder` alike) feeds it and does what it says.

use super::route::ReplyRoute;
use crate::protocol::RemoteError;
use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// A handler's outcome: its result, or the error the caller gets.
pub type Outcome = Result<Value, RemoteError>;

/// How much a responder takes on, and how long it remembers its answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestLimits {
    /// Handlers running at once (the executor enforces it; the ledger counts it in the
    /// requests it may hold).
    pub max_concurrency: usize,
    /// Requests waiting for a turn beyond those running; past it, "overloaded".
    pub max_queued: usize,
    /// Answers kept per `request_id` for repeats; 0 turns repeat detection off.
    pub reply_cache_size: usize,
    /// How long an answer is kept; zero turns repeat detection off.
    pub reply_cache_ttl: Duration,
    /// Repeats of one running request that wait for its answer; more are dropped.
    pub max_repeats_waiting: usize,
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits {
            max_concurrency: 100,
            max_queued: 10_000,
            reply_cache_size: 10_000,
            reply_cache_ttl: Duration::from_secs(300),
            max_repeats_waiting: 16,
        }
    }
}

/// One admitted request's claim on the ledger, given back to `finish` exactly once (it is
/// neither `Clone` nor `Copy`).
#[derive(Debug, PartialEq, Eq)]
pub struct Ticket {
    number: u64,
    request_id: Option<String>,
}

impl Ticket {
    /// Identifies the run, for example to cancel it.
    pub fn number(&self) -> u64 {
        self.number
    }
}

/// What to do with a request that arrived.
#[derive(Debug, PartialEq)]
pub enum Admission {
    /// Run its handler, then `finish` the ticket.
    Run(Ticket),
    /// A repeat of an answered request: send it this answer again, run nothing.
    Answer(Outcome),
    /// A repeat of a running request: it gets that run's answer (from `finish`).
    Joined,
    /// A repeat of a running request that already has `max_repeats_waiting` waiting.
    RepeatDropped,
    /// Over `max_concurrency + max_queued`: answer "overloaded", run nothing.
    Overloaded,
}

struct Run {
    number: u64,
    repeats: Vec<ReplyRoute>,
}

/// The requests a responder holds (running or waiting for a turn) and its recent answers.
pub struct RequestLedger {
    limits: RequestLimits,
    /// Admitted and not yet finished.
    held: usize,
    next_number: u64,
    /// Runs by request id (at most `held` of them).
    running: HashMap<String, Run>,
    answers: AnswerCache,
}

impl RequestLedger {
    pub fn new(limits: RequestLimits) -> Self {
        let answers = AnswerCache::new(limits.reply_cache_size, limits.reply_cache_ttl);
        RequestLedger {
            limits,
            held: 0,
            next_number: 0,
            running: HashMap::new(),
            answers,
        }
    }

    pub fn limits(&self) -> &RequestLimits {
        &self.limits
    }

    /// Requests admitted and not yet finished.
    pub fn held(&self) -> usize {
        self.held
    }

    fn detects_repeats(&self) -> bool {
        self.limits.reply_cache_size > 0 && !self.limits.reply_cache_ttl.is_zero()
    }

    /// Decides about a request that arrived at `now`; `route` is where its answer goes
    /// (`None`: a notification). Requests are told apart by their route's `request_id`.
    pub fn admit(&mut self, route: Option<&ReplyRoute>, now: Instant) -> Admission {
        let request_id = route.and_then(|route| route.request_id.as_deref());
        if let (Some(id), Some(route), true) = (request_id, route, self.detects_repeats()) {
            if let Some(outcome) = self.answers.get(id, now) {
                return Admission::Answer(outcome.clone());
            }
            if let Some(run) = self.running.get_mut(id) {
                if run.repeats.len() >= self.limits.max_repeats_waiting {
                    return Admission::RepeatDropped;
                }
                run.repeats.push(route.clone());
                return Admission::Joined;
            }
        }
        let limit = self
            .limits
            .max_concurrency
            .saturating_add(self.limits.max_queued);
        if self.held >= limit {
            return Admission::Overloaded;
        }
        self.held += 1;
        self.next_number += 1;
        let number = self.next_number;
        if let Some(id) = request_id {
            // Without repeat detection two runs may share an id: the later one is the one a
            // cancellation finds.
            self.running.insert(
                id.to_owned(),
                Run {
                    number,
                    repeats: Vec::new(),
                },
            );
        }
        Admission::Run(Ticket {
            number,
            request_id: request_id.map(str::to_owned),
        })
    }

    /// The run a cancellation of `request_id` stops, if one is under way.
    pub fn cancel(&self, request_id: &str) -> Option<u64> {
        self.running.get(request_id).map(|run| run.number)
    }

    /// Ends a run: with its answer (`Some`, remembered for later repeats; the repeats that
    /// waited for it are returned, to be sent the same answer), or without one (`None`:
    /// cancelled, refused or dropped; its waiting repeats go unanswered, and their callers'
    /// next retry runs it again).
    pub fn finish(
        &mut self,
        ticket: Ticket,
        answer: Option<&Outcome>,
        now: Instant,
    ) -> Vec<ReplyRoute> {
        self.held = self.held.saturating_sub(1);
        let Some(id) = ticket.request_id else {
            return Vec::new();
        };
        let run = match self.running.get(&id) {
            Some(run) if run.number == ticket.number => self.running.remove(&id),
            _ => None,
        };
        match answer {
            Some(outcome) => {
                if self.detects_repeats() {
                    self.answers.insert(id, outcome.clone(), now);
                }
                run.map(|run| run.repeats).unwrap_or_default()
            }
            None => Vec::new(),
        }
    }
}

/// Answers by request id, for `ttl` each, `size` at most (the oldest go first).
struct AnswerCache {
    size: usize,
    ttl: Duration,
    entries: HashMap<String, (Instant, Outcome)>,
    /// Ids by expiry (and so by insertion: every entry lives `ttl`).
    order: VecDeque<(Instant, String)>,
}

impl AnswerCache {
    fn new(size: usize, ttl: Duration) -> Self {
        AnswerCache {
            size,
            ttl,
            entries: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    fn get(&mut self, id: &str, now: Instant) -> Option<&Outcome> {
        self.forget_expired(now);
        self.entries.get(id).map(|(_, outcome)| outcome)
    }

    fn insert(&mut self, id: String, outcome: Outcome, now: Instant) {
        self.forget_expired(now);
        // A very long ttl saturates rather than overflowing the clock.
        let expiry = now
            .checked_add(self.ttl)
            .unwrap_or(now + Duration::from_secs(86_400 * 365));
        if self.entries.contains_key(&id) {
            // Not reached by the ledger (a cached id is answered, never run), but the order
            // must never hold an id twice.
            self.order.retain(|(_, other)| *other != id);
        }
        self.order.push_back((expiry, id.clone()));
        self.entries.insert(id, (expiry, outcome));
        while self.entries.len() > self.size {
            let Some((_, oldest)) = self.order.pop_front() else {
                break;
            };
            self.entries.remove(&oldest);
        }
    }

    fn forget_expired(&mut self, now: Instant) {
        while let Some((expiry, _)) = self.order.front() {
            if *expiry > now {
                break;
            }
            if let Some((_, id)) = self.order.pop_front() {
                self.entries.remove(&id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn route(id: &str, topic: &str) -> ReplyRoute {
        ReplyRoute {
            topic: topic.into(),
            correlation_data: None,
            request_id: Some(id.into()),
            responder: None,
        }
    }

    fn limits(max_concurrency: usize, max_queued: usize) -> RequestLimits {
        RequestLimits {
            max_concurrency,
            max_queued,
            ..RequestLimits::default()
        }
    }

    fn run(admission: Admission) -> Ticket {
        match admission {
            Admission::Run(ticket) => ticket,
            other => panic!("expected a run, got {other:?}"),
        }
    }

    #[test]
    fn a_repeat_while_running_gets_the_runs_answer_and_later_ones_the_cached_answer() {
        let now = Instant::now();
        let mut ledger = RequestLedger::new(RequestLimits::default());
        let ticket = run(ledger.admit(Some(&route("r1", "a")), now));
        assert_eq!(
            ledger.admit(Some(&route("r1", "b")), now),
            Admission::Joined
        );
        let answer = Ok(json!({"moved": 1}));
        let repeats = ledger.finish(ticket, Some(&answer), now);
        assert_eq!(repeats, vec![route("r1", "b")]);
        assert_eq!(
            ledger.admit(Some(&route("r1", "c")), now + Duration::from_secs(299)),
            Admission::Answer(answer)
        );
        // Forgotten after the ttl: the request runs again.
        let again = ledger.admit(Some(&route("r1", "d")), now + Duration::from_secs(300));
        assert!(matches!(again, Admission::Run(_)));
        assert_eq!(ledger.held(), 1);
    }

    #[test]
    fn repeats_waiting_for_one_run_are_bounded() {
        let now = Instant::now();
        let mut ledger = RequestLedger::new(RequestLimits::default());
        let ticket = run(ledger.admit(Some(&route("r", "t")), now));
        for _ in 0..16 {
            assert_eq!(ledger.admit(Some(&route("r", "t")), now), Admission::Joined);
        }
        assert_eq!(
            ledger.admit(Some(&route("r", "t")), now),
            Admission::RepeatDropped
        );
        assert_eq!(ledger.finish(ticket, Some(&Ok(json!(1))), now).len(), 16);
    }

    #[test]
    fn past_concurrency_plus_queue_a_request_is_overloaded_until_one_finishes() {
        let now = Instant::now();
        let mut ledger = RequestLedger::new(limits(4, 100));
        let mut tickets: Vec<Ticket> = (0..104)
            .map(|i| run(ledger.admit(Some(&route(&format!("r{i}"), "t")), now)))
            .collect();
        assert_eq!(
            ledger.admit(Some(&route("extra", "t")), now),
            Admission::Overloaded
        );
        // Notifications count too: they hold a handler as well.
        assert_eq!(ledger.admit(None, now), Admission::Overloaded);
        let first = tickets.remove(0);
        ledger.finish(first, None, now);
        assert!(matches!(ledger.admit(None, now), Admission::Run(_)));
        assert_eq!(ledger.held(), 104);
    }

    #[test]
    fn an_unanswered_run_is_forgotten_and_its_repeats_go_unanswered() {
        let now = Instant::now();
        let mut ledger = RequestLedger::new(RequestLimits::default());
        let ticket = run(ledger.admit(Some(&route("r", "t")), now));
        assert_eq!(ledger.cancel("r"), Some(ticket.number()));
        assert_eq!(ledger.admit(Some(&route("r", "t")), now), Admission::Joined);
        assert!(ledger.finish(ticket, None, now).is_empty());
        // The caller's next retry runs it again.
        assert!(matches!(
            ledger.admit(Some(&route("r", "t")), now),
            Admission::Run(_)
        ));
        assert_eq!(ledger.cancel("nothing"), None);
    }

    #[test]
    fn without_a_cache_every_copy_runs_and_cancellation_finds_the_latest() {
        let now = Instant::now();
        let mut ledger = RequestLedger::new(RequestLimits {
            reply_cache_size: 0,
            ..RequestLimits::default()
        });
        let first = run(ledger.admit(Some(&route("r", "t")), now));
        let second = run(ledger.admit(Some(&route("r", "t")), now));
        assert_eq!(ledger.cancel("r"), Some(second.number()));
        // The older run ending leaves the newer one cancellable.
        ledger.finish(first, Some(&Ok(json!(1))), now);
        assert_eq!(ledger.cancel("r"), Some(second.number()));
        ledger.finish(second, Some(&Ok(json!(1))), now);
        assert!(matches!(
            ledger.admit(Some(&route("r", "t")), now),
            Admission::Run(_)
        ));
    }

    #[test]
    fn the_cache_keeps_its_size_with_the_newest_answers() {
        let now = Instant::now();
        let mut ledger = RequestLedger::new(RequestLimits {
            reply_cache_size: 3,
            ..RequestLimits::default()
        });
        for i in 0..10 {
            let ticket = run(ledger.admit(Some(&route(&format!("r{i}"), "t")), now));
            ledger.finish(ticket, Some(&Ok(json!(i))), now);
        }
        assert_eq!(ledger.answers.entries.len(), 3);
        assert_eq!(ledger.answers.order.len(), 3);
        assert_eq!(
            ledger.admit(Some(&route("r9", "t")), now),
            Admission::Answer(Ok(json!(9)))
        );
        assert!(matches!(
            ledger.admit(Some(&route("r6", "t")), now),
            Admission::Run(_)
        ));
    }

    #[test]
    fn a_notification_runs_without_being_remembered() {
        let now = Instant::now();
        let mut ledger = RequestLedger::new(RequestLimits::default());
        let ticket = run(ledger.admit(None, now));
        assert!(ledger.finish(ticket, Some(&Ok(json!(1))), now).is_empty());
        assert_eq!((ledger.held(), ledger.answers.entries.len()), (0, 0));
    }
}
