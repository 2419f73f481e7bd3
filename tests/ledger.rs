//! The device's request ledger against a plain model of what it promises, on generated
//! sequences of arrivals, answers, abandoned runs, cancellations and time: a request runs
//! unless it repeats an answered one (it gets that answer while remembered) or a running one
//! (it waits for that run, a bounded number of repeats per run); past its limit a request is
//! "overloaded"; every repeat that waited is answered exactly once by its run's end, or not
//! at all if the run ends unanswered; nothing it holds exceeds its bound.

use mqtt_rpc::responder::{Admission, ReplyRoute, RequestLedger, RequestLimits, Ticket};
use proptest::prelude::*;
use serde_json::json;
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
enum Step {
    /// A request with this id arrives (`None`: a notification).
    Arrive(Option<u8>),
    /// The n-th run still held ends: answered or not.
    Finish(usize, bool),
    Cancel(u8),
    Advance(u64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => prop::option::weighted(0.9, 0u8..5).prop_map(Step::Arrive),
        3 => (0usize..8, any::<bool>()).prop_map(|(n, answered)| Step::Finish(n, answered)),
        1 => (0u8..5).prop_map(Step::Cancel),
        1 => (0u64..8).prop_map(Step::Advance),
    ]
}

const LIMITS: RequestLimits = RequestLimits {
    max_concurrency: 2,
    max_queued: 2,
    reply_cache_size: 3,
    reply_cache_ttl: Duration::from_secs(10),
    max_repeats_waiting: 2,
};

fn route(id: u8, copy: usize) -> ReplyRoute {
    ReplyRoute {
        topic: format!("reply/{id}/{copy}"),
        correlation_data: None,
        request_id: Some(format!("r{id}")),
        responder: None,
    }
}

/// What the ledger should do, written the plain way.
#[derive(Default)]
struct Model {
    /// Held runs in admission order: (ticket, id, repeats waiting).
    held: Vec<(Ticket, Option<u8>, Vec<ReplyRoute>)>,
    /// Remembered answers: id -> (expiry in seconds, the answer's value), oldest first.
    answers: VecDeque<(u8, u64, u64)>,
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn the_ledger_keeps_its_promises(steps in prop::collection::vec(step(), 1..120)) {
        let start = Instant::now();
        let mut now = 0u64;
        let mut ledger = RequestLedger::new(LIMITS);
        let mut model = Model::default();
        let mut copies = 0usize;
        let mut next_answer = 0u64;
        let limit = LIMITS.max_concurrency + LIMITS.max_queued;
        for step in steps {
            let at = start + Duration::from_secs(now);
            match step {
                Step::Arrive(id) => {
                    copies += 1;
                    let arriving = id.map(|id| route(id, copies));
                    let admission = ledger.admit(arriving.as_ref(), at);
                    model.answers.retain(|(_, expiry, _)| *expiry > now);
                    let remembered = id.and_then(|id| model.answers.iter().find(|(a, _, _)| *a == id));
                    let full = model.held.len() >= limit;
                    let running = id.and_then(|id| model.held.iter_mut().find(|(_, held, _)| *held == Some(id)));
                    match (remembered, running) {
                        (Some((_, _, value)), _) => {
                            prop_assert_eq!(admission, Admission::Answer(Ok(json!(*value))));
                        }
                        (None, Some((_, _, repeats))) => {
                            if repeats.len() < LIMITS.max_repeats_waiting {
                                prop_assert_eq!(admission, Admission::Joined);
                                repeats.extend(arriving);
                            } else {
                                prop_assert_eq!(admission, Admission::RepeatDropped);
                            }
                        }
                        (None, None) if full => {
                            prop_assert_eq!(admission, Admission::Overloaded);
                        }
                        (None, None) => match admission {
                            Admission::Run(ticket) => model.held.push((ticket, id, Vec::new())),
                            other => prop_assert!(false, "expected a run, got {:?}", other),
                        },
                    }
                }
                Step::Finish(n, answered) => {
                    if model.held.is_empty() {
                        continue;
                    }
                    let (ticket, id, repeats) = model.held.remove(n % model.held.len());
                    next_answer += 1;
                    let outcome = Ok(json!(next_answer));
                    let answer = answered.then_some(&outcome);
                    let answered_repeats = ledger.finish(ticket, answer, at);
                    if answered {
                        // Every repeat that waited, once each, in arrival order.
                        prop_assert_eq!(answered_repeats, repeats);
                        if let Some(id) = id {
                            model.answers.retain(|(_, expiry, _)| *expiry > now);
                            model.answers.push_back((id, now + 10, next_answer));
                            while model.answers.len() > LIMITS.reply_cache_size {
                                model.answers.pop_front();
                            }
                        }
                    } else {
                        prop_assert!(answered_repeats.is_empty());
                    }
                }
                Step::Cancel(id) => {
                    let running = model.held.iter().find(|(_, held, _)| *held == Some(id));
                    prop_assert_eq!(ledger.cancel(&format!("r{id}")), running.map(|(t, _, _)| t.number()));
                }
                Step::Advance(seconds) => now += seconds,
            }
            prop_assert_eq!(ledger.held(), model.held.len());
            prop_assert!(ledger.held() <= limit);
        }
        // Ids are never reused by distinct runs at once.
        let mut ids = BTreeMap::new();
        for (_, id, _) in &model.held {
            if let Some(id) = id {
                *ids.entry(*id).or_insert(0) += 1;
            }
        }
        prop_assert!(ids.values().all(|count| *count == 1));
    }
}
