//! The device side: subscribes request filters (optionally as an MQTT 5 shared-subscription
//! group, so that a pool of responders splits the requests), and serves: each request goes
//! through the request ledger (repeats, overload, cancellation), and what must run reaches
//! the application as an `IncomingRequest` holding the one answer it owes. Used by the
//! Python `Responder` and by the `mqtt-rpc-responder` binary, so both behave alike.
//!
//! Rooms: `route` (where an answer goes, and its body), `ledger` (the decisions, no I/O),
//! `answer` (publishing answers), `services` (discovery and health: PING, INFO, STATS);
//! this file holds the connection and the serve loop.

mod answer;
mod handlers;
mod leave;
mod ledger;
mod route;
mod services;

pub use answer::{PendingAnswer, Replier};
pub use handlers::HandlerStats;
use leave::{Leave, Progress, Step};
pub use leave::{LeaveReport, Shutdown};
pub use ledger::{Admission, Outcome, RequestLedger, RequestLimits, Ticket};
pub use route::{progress_body, reply_body, route, ReplyRoute};
pub use services::{control_topic, ServiceIdentity, ServiceState, Verb, DEFAULT_SERVICE_PREFIX};

use crate::link::{self, Backoff, ConnectionOptions, Inbound, LinkError, LinkErrorKind, Takeover};
use crate::protocol::{self, RemoteError};
use bytes::Bytes;
use serde_json::{Map, Value};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;

/// The error code of the answer to a request refused because the responder is overloaded.
pub const OVERLOADED: i64 = -32000;

/// The answer to a request refused because the responder is overloaded.
pub fn overloaded() -> RemoteError {
    RemoteError {
        code: OVERLOADED,
        message: "the responder is overloaded: try again later".into(),
        data: Value::Null,
    }
}

/// How often a leave looks again whether its runs have answered.
const LEAVE_RECHECK: Duration = Duration::from_millis(10);

/// Reconnect attempts back off from the first delay to the second, doubling, with jitter
/// (`link::Backoff`; a connect interval of the options' own comes on top).
const RECONNECT_MIN_DELAY: Duration = Duration::from_millis(100);
const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(10);

/// What a responder is configured with.
#[derive(Debug, Clone, Default)]
pub struct ResponderOptions {
    pub connection: ConnectionOptions,
    pub qos: u8,
    /// Request topic filters, for example `+/device/control/set`.
    pub filters: Vec<String>,
    /// Subscribe as `$share/{group}/{filter}`: the broker gives each request to one member.
    pub share_group: Option<String>,
    /// Behave as a plain MQTT 5 device: answer only through the Response Topic, and put no
    /// `request_id` in the answer.
    pub mqtt5_only: bool,
    /// How many requests it holds, and how long it remembers answers for repeats.
    pub limits: RequestLimits,
    /// A named service also answers discovery and health requests (PING, INFO, STATS).
    pub service: Option<ServiceIdentity>,
    /// The broker's quota of subscriptions per connection (AWS IoT Core: 50), which every
    /// filter counts: handler and discovery filters alike. A responder over it is refused
    /// before it connects.
    pub max_subscriptions: Option<usize>,
    /// AWS IoT Core's topic rules for the handler filters and the answers' topics (at most
    /// 7 slashes and 256 bytes).
    pub aws_topic_rules: bool,
}

/// Why a responder with a share group cannot serve on this broker.
fn no_shared_subscriptions(group: &str, why: &str) -> LinkError {
    LinkError {
        kind: LinkErrorKind::Other,
        message: format!(
            "the broker may not support shared subscriptions, so share group '{group}' \
             cannot be served (start without a share group): {why}"
        ),
    }
}

/// One request, ready for a handler.
#[derive(Debug)]
pub struct IncomingRequest {
    /// Which of the responder's filters it matched.
    pub filter_index: usize,
    pub topic: String,
    pub body: Map<String, Value>,
    /// The request exactly as it arrived.
    pub payload: Bytes,
    /// Its MQTT 5 user properties (trace context among them), in the order sent; empty on
    /// 3.1.1, where such headers are members of `body`.
    pub user_properties: Vec<(String, String)>,
    /// When its caller stops waiting, if the request said (`timeout_ms`, Message Expiry):
    /// a handler that has not started by then should not (`PendingAnswer::expire`).
    pub deadline: Option<Instant>,
    /// The answer it owes (to nowhere, for a notification).
    pub answer: PendingAnswer,
}

/// What serving hands to the application.
#[derive(Debug)]
pub enum Incoming {
    /// Run a handler for this request.
    Request(Box<IncomingRequest>),
    /// The caller gave up on the run with this number (`PendingAnswer::number`): stop it if
    /// you can; nobody waits for its answer.
    Cancel(u64),
    /// The first request of a kind the responder dropped or refused rather than ran (its
    /// counter's name): say it once; the counter says how many followed.
    FirstDrop(&'static str),
    /// Another connection with this responder's client id took its connection over, the
    /// first time since the connection was last stable (`link::Backoff`): say it loudly,
    /// a deploy gave two processes one id.
    TakenOver,
}

/// Counters of what a responder received and did with it.
#[derive(Debug, Default)]
pub struct ResponderCounters {
    pub requests: AtomicU64,
    pub notifications: AtomicU64,
    pub dropped_malformed: AtomicU64,
    /// Requests larger than the connection's `max_packet_size`, dropped unread.
    pub dropped_oversized: AtomicU64,
    /// Requests refused as "overloaded" because the application's loop was too far behind
    /// to take them (the Python binding's bounded queue), and notifications dropped so.
    pub dropped_overloaded: AtomicU64,
    /// Requests refused as "overloaded" because `max_concurrency + max_queued` were held.
    pub requests_overloaded: AtomicU64,
    /// Repeats of a request answered without running it again (from the cache of answers,
    /// or by the run under way), and repeats dropped because too many waited for one run.
    pub repeats_answered_from_cache: AtomicU64,
    pub repeats_dropped: AtomicU64,
    /// Cancellations that found their run under way.
    pub handlers_cancelled: AtomicU64,
    /// Requests whose caller had stopped waiting (their deadline passed) before a handler
    /// started: dropped unanswered.
    pub requests_expired: AtomicU64,
    /// Discovery and health requests (PING, INFO, STATS) answered by the core.
    pub control_requests: AtomicU64,
    /// Answers (and progress messages) handed to the connection, written to it, and
    /// refused by it (its queue was full).
    pub answers_queued: AtomicU64,
    pub answers_sent: AtomicU64,
    pub answers_unsent: AtomicU64,
    /// Connections lost to another connection with the same client id.
    pub takeovers: AtomicU64,
    /// The last graceful leave: answers queued during it, answers (and runs) it could not
    /// deliver by its deadline, and how long it took.
    pub leave_answered: AtomicU64,
    pub leave_unsent: AtomicU64,
    pub leave_ms: AtomicU64,
    /// Answers being handed from their run to the connection (see `answer.rs`).
    pub answers_in_hand: AtomicUsize,
    /// Each filter's handler, in the order of `ResponderOptions::filters`.
    pub handlers: Box<[HandlerStats]>,
}

impl ResponderCounters {
    /// Every counter by the name `Responder.stats()` gives it: the one list of names.
    pub fn counts(&self) -> [(&'static str, u64); 18] {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        [
            ("requests", read(&self.requests)),
            ("notifications", read(&self.notifications)),
            ("dropped_malformed", read(&self.dropped_malformed)),
            ("dropped_oversized", read(&self.dropped_oversized)),
            ("dropped_overloaded", read(&self.dropped_overloaded)),
            ("requests_overloaded", read(&self.requests_overloaded)),
            (
                "repeats_answered_from_cache",
                read(&self.repeats_answered_from_cache),
            ),
            ("repeats_dropped", read(&self.repeats_dropped)),
            ("handlers_cancelled", read(&self.handlers_cancelled)),
            ("requests_expired", read(&self.requests_expired)),
            ("control_requests", read(&self.control_requests)),
            ("answers_queued", read(&self.answers_queued)),
            ("answers_sent", read(&self.answers_sent)),
            ("answers_unsent", read(&self.answers_unsent)),
            ("takeovers", read(&self.takeovers)),
            ("leave_answered", read(&self.leave_answered)),
            ("leave_unsent", read(&self.leave_unsent)),
            ("leave_ms", read(&self.leave_ms)),
        ]
    }

    fn record_leave(&self, report: LeaveReport) {
        let took = u64::try_from(report.took.as_millis()).unwrap_or(u64::MAX);
        self.leave_answered
            .store(report.answered, Ordering::Relaxed);
        self.leave_unsent.store(report.unsent, Ordering::Relaxed);
        self.leave_ms.store(took, Ordering::Relaxed);
    }
}

fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Counts a dropped or refused request; the first of its kind is also told
/// (`Incoming::FirstDrop`).
fn count_drop(counter: &AtomicU64, name: &'static str, tell: &mut impl FnMut(Incoming)) {
    if counter.fetch_add(1, Ordering::Relaxed) == 0 {
        tell(Incoming::FirstDrop(name));
    }
}

/// A request or other message as it arrived on a request filter.
struct Message {
    topic: String,
    payload: Bytes,
    correlation_data: Option<Bytes>,
    response_topic: Option<String>,
    user_properties: Vec<(String, String)>,
    message_expiry: Option<u32>,
}

/// A responder's connection, ready to `serve`.
pub struct Responder {
    options: ResponderOptions,
    replier: Replier,
    events: link::Events,
    /// When it was made, for discovery's `started`.
    started: SystemTime,
}

fn subscription(filter: &str, share_group: Option<&str>) -> String {
    match share_group {
        Some(group) => format!("$share/{group}/{filter}"),
        None => filter.to_owned(),
    }
}

impl Responder {
    /// Checks the filters and opens the connection (nothing is sent before `serve`).
    pub fn new(options: ResponderOptions) -> Result<Self, protocol::InputError> {
        if options.filters.is_empty() {
            return Err(protocol::InputError::InvalidFilter(
                "a responder needs at least one request filter".into(),
            ));
        }
        for filter in &options.filters {
            protocol::validate_filter(filter)?;
            if options.aws_topic_rules {
                // A request on the filter has as many levels; its answer two more.
                protocol::check_aws_topic_rules(filter)?;
            }
        }
        if let Some(service) = &options.service {
            service.validate()?;
        }
        if let Some(quota) = options.max_subscriptions {
            let handlers = options.filters.len();
            let control = (options.service.iter())
                .map(|s| s.filters(&options.connection.client_id).len())
                .sum::<usize>();
            if handlers + control > quota {
                return Err(protocol::InputError::OverQuota(format!(
                    "the responder needs {} subscriptions ({handlers} handler filters{}) but the \
                     broker's quota allows {quota} per connection: serve fewer filters per \
                     responder (a wildcard filter covers many topics) or split them over \
                     several responders",
                    handlers + control,
                    match control {
                        0 => String::new(),
                        n => format!(" and {n} discovery filters"),
                    },
                )));
            }
        }
        if let Some(group) = &options.share_group {
            if group.is_empty() || group.contains(['/', '+', '#']) {
                return Err(protocol::InputError::InvalidFilter(format!(
                    "share group {group:?}: one topic level without wildcards"
                )));
            }
        }
        let tls = match &options.connection.tls {
            Some(tls) => Some(
                crate::tls::client_config(tls)
                    .map_err(|e| protocol::InputError::InvalidFilter(e.to_string()))?,
            ),
            None => None,
        };
        let (outbox, events) = link::open(&options.connection, tls, 65_536, u16::MAX);
        let replier = Replier {
            outbox,
            qos: options.qos,
            counters: Arc::new(ResponderCounters {
                handlers: options
                    .filters
                    .iter()
                    .map(|f| HandlerStats::new(f))
                    .collect(),
                ..ResponderCounters::default()
            }),
            ledger: Arc::new(Mutex::new(RequestLedger::new(options.limits.clone()))),
        };
        Ok(Responder {
            options,
            replier,
            events,
            started: SystemTime::now(),
        })
    }

    pub fn replier(&self) -> Replier {
        self.replier.clone()
    }

    pub fn counters(&self) -> Arc<ResponderCounters> {
        self.replier.counters.clone()
    }

    /// Which broker it is connected to, as that changes (readable after `serve` took it).
    pub fn connected_to(&self) -> link::ConnectedTo {
        self.events.connected_to()
    }

    /// Everything it subscribes, in order: its request filters (in its share group, if
    /// any), then a named service's control filters (never shared: every instance answers).
    fn subscriptions(&self) -> Vec<String> {
        let group = self.options.share_group.as_deref();
        let requests = self.options.filters.iter().map(|f| subscription(f, group));
        let control = self
            .options
            .service
            .iter()
            .flat_map(|service| service.filters(&self.options.connection.client_id));
        requests.chain(control).collect()
    }

    /// Serves until `shutdown` says to stop: subscribes its filters on every connection
    /// (calling `on_ready` once all are granted), hands each request to `on_request`, and
    /// reconnects after a lost connection, backing off. `Shutdown::Leave` leaves gracefully
    /// (`leave.rs`): it unsubscribes, lets the runs answer, and disconnects once every
    /// answer is out or the grace is over; `Shutdown::Now` stops at once. Fails if the first
    /// connection fails, or if the broker refuses a filter (a responder that cannot receive
    /// its requests must say so).
    pub async fn serve(
        mut self,
        mut on_request: impl FnMut(Incoming),
        mut on_ready: impl FnMut(),
        mut shutdown: watch::Receiver<Shutdown>,
    ) -> Result<(), LinkError> {
        let subscriptions = self.subscriptions();
        let mut unacknowledged = subscriptions.len();
        let mut ever_connected = false;
        let mut ever_ready = false;
        let mut connected = false;
        let mut leave: Option<Leave> = None;
        let mut backoff = Backoff::new(RECONNECT_MIN_DELAY, RECONNECT_MAX_DELAY);
        loop {
            // What the application asks, looked at on every turn (a change wakes the loop).
            match *shutdown.borrow_and_update() {
                Shutdown::Now => break,
                Shutdown::Leave { by } if leave.is_none() => {
                    let unsubscribes = match connected {
                        true => self.unsubscribe_all(&subscriptions),
                        false => 0,
                    };
                    leave = Some(Leave::start(
                        Instant::now(),
                        by,
                        unsubscribes,
                        self.progress(),
                    ));
                }
                Shutdown::Serve | Shutdown::Leave { .. } => {}
            }
            if let Some(leaving) = leave.as_mut() {
                match leaving.step(Instant::now(), self.progress(), connected) {
                    Step::Wait => {}
                    Step::Disconnect if Responder::disconnect(&self.replier) => {}
                    Step::Disconnect | Step::End => break,
                }
            }
            // While leaving, look again now and then: runs end without telling the loop.
            let recheck = async {
                match &leave {
                    Some(leaving) => {
                        let soon = Instant::now() + LEAVE_RECHECK;
                        let at = soon.min(leaving.deadline());
                        tokio::time::sleep_until(at.into()).await
                    }
                    None => std::future::pending().await,
                }
            };
            let next = tokio::select! {
                biased;
                changed = shutdown.changed() => match changed {
                    Ok(()) => continue,
                    Err(_) => break, // the application is gone
                },
                _ = recheck => continue,
                next = self.events.next() => next,
            };
            match next {
                Ok(Inbound::Connected {
                    shared_subscriptions,
                    ..
                }) => {
                    if let (Some(group), Some(false)) =
                        (&self.options.share_group, shared_subscriptions)
                    {
                        return Err(no_shared_subscriptions(
                            group,
                            "its CONNACK says it has no shared subscriptions",
                        ));
                    }
                    ever_connected = true;
                    connected = true;
                    backoff.connected(Instant::now());
                    unacknowledged = subscriptions.len();
                    if leave.is_some() {
                        continue; // leaving: not subscribed again
                    }
                    for topic in &subscriptions {
                        // Not queued: the next reconnect subscribes again.
                        let _ = self.replier.outbox.subscribe(topic, self.options.qos);
                    }
                }
                Ok(Inbound::SubAck { granted, .. }) => {
                    if !granted {
                        // SUBACKs come in the order of the SUBSCRIBEs: this one's filter.
                        let index = subscriptions.len().saturating_sub(unacknowledged);
                        let topic = subscriptions.get(index).cloned().unwrap_or_default();
                        return Err(LinkError {
                            kind: LinkErrorKind::SubscriptionRefused,
                            message: topic,
                        });
                    }
                    unacknowledged = unacknowledged.saturating_sub(1);
                    if unacknowledged == 0 {
                        ever_ready = true;
                        on_ready();
                    }
                }
                Ok(Inbound::UnsubAck) => {
                    if let Some(leaving) = leave.as_mut() {
                        leaving.unsubscribed();
                    }
                }
                Ok(Inbound::Message {
                    topic,
                    payload,
                    correlation_data,
                    response_topic,
                    user_properties,
                    message_expiry,
                }) => {
                    let message = Message {
                        topic,
                        payload,
                        correlation_data,
                        response_topic,
                        user_properties,
                        message_expiry,
                    };
                    self.take(message, &mut on_request);
                }
                Ok(Inbound::PublishWritten(packet_id)) => {
                    count(&self.replier.counters.answers_sent);
                    if let Some(leaving) = leave.as_mut() {
                        leaving.written(packet_id);
                    }
                }
                Ok(Inbound::PubAck { packet_id, .. }) => {
                    if let Some(leaving) = leave.as_mut() {
                        leaving.acknowledged(packet_id);
                    }
                }
                Ok(Inbound::DisconnectSent) => break,
                Ok(_) => {}
                Err(error) => {
                    connected = false;
                    if !ever_connected {
                        return Err(error);
                    }
                    // A broker without shared subscriptions may close the first connection
                    // at the SUBSCRIBE (ejabberd does): reconnecting would only repeat it.
                    if let (Some(group), false) = (&self.options.share_group, ever_ready) {
                        let why = format!("it closed the connection at the SUBSCRIBE ({error})");
                        return Err(no_shared_subscriptions(group, &why));
                    }
                    let (delay, takeover) = backoff.lost(error.kind, Instant::now());
                    let counters = &self.replier.counters;
                    counters
                        .takeovers
                        .fetch_add(takeover.losses(), Ordering::Relaxed);
                    if matches!(takeover, Takeover::Began { .. }) {
                        on_request(Incoming::TakenOver);
                    }
                    let delay = match leave.as_mut() {
                        Some(leaving) => {
                            leaving.connection_lost();
                            // Back in time to send what the runs answer, or not at all.
                            let left = leaving.deadline().saturating_duration_since(Instant::now());
                            delay.min(left)
                        }
                        None => delay,
                    };
                    tokio::select! {
                        changed = shutdown.changed() => if changed.is_err() { break },
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        if let Some(leaving) = &leave {
            self.replier
                .counters
                .record_leave(leaving.report(Instant::now(), self.progress()));
        }
        Ok(())
    }

    /// Unsubscribes every filter (a leave's first step); returns how many UNSUBSCRIBEs went.
    fn unsubscribe_all(&self, subscriptions: &[String]) -> usize {
        let outbox = &self.replier.outbox;
        (subscriptions.iter())
            .filter(|topic| outbox.unsubscribe(topic).is_ok())
            .count()
    }

    /// How far the answers are, for a leave.
    fn progress(&self) -> Progress {
        let counters = &self.replier.counters;
        // The ledger first: an answer leaves it before its publish, and is in hand meanwhile.
        let held = self.replier.ledger().held();
        Progress {
            running: held + counters.answers_in_hand.load(Ordering::SeqCst),
            queued: counters.answers_queued.load(Ordering::Relaxed),
            written: counters.answers_sent.load(Ordering::Relaxed),
        }
    }

    /// Decides what a message from the network becomes: dropped (oversized, not a JSON
    /// object: counted), answered here (a repeat, or "overloaded"), a cancellation of a run
    /// under way, or a request to run; what the application must hear goes to `tell`.
    fn take(&self, message: Message, tell: &mut impl FnMut(Incoming)) {
        let counters = &self.replier.counters;
        if message.payload.len() > self.options.connection.max_packet_size {
            return count_drop(&counters.dropped_oversized, "dropped_oversized", tell);
        }
        let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(&message.payload) else {
            return count_drop(&counters.dropped_malformed, "dropped_malformed", tell);
        };
        if let Some(service) = &self.options.service {
            if service.is_control(&message.topic) {
                return self.answer_control(service, message, &body);
            }
        }
        let now = Instant::now();
        let deadline = protocol::time_left(&body, &message.user_properties, message.message_expiry)
            .map(|left| now + left);
        let mut route = route(
            self.options.mqtt5_only,
            &message.topic,
            &body,
            message.response_topic,
            // Kept with the run (and its repeats): its own allocation, not the read buffer.
            message.correlation_data.map(link::detached),
        );
        if let Some(route) = route.as_mut() {
            if route.request_id.is_some() && protocol::is_gather(&body) {
                route.responder = Some(self.options.connection.client_id.clone());
            }
        }
        if protocol::is_cancellation(&body) {
            // A caller gave up: stop its run if one is under way; nothing is answered.
            let id = route.as_ref().and_then(|route| route.request_id.as_deref());
            if let Some(number) = id.and_then(|id| self.replier.ledger().cancel(id)) {
                count(&counters.handlers_cancelled);
                tell(Incoming::Cancel(number));
            }
            return;
        }
        count(match route {
            Some(_) => &counters.requests,
            None => &counters.notifications,
        });
        if deadline.is_some_and(|deadline| deadline <= now) {
            // Its caller has given up already: no handler starts, nothing is answered.
            return count_drop(&counters.requests_expired, "requests_expired", tell);
        }
        let admission = self.replier.ledger().admit(route.as_ref(), now);
        match (admission, route) {
            (Admission::Run(ticket), route) => {
                let filter_index = self
                    .options
                    .filters
                    .iter()
                    .position(|f| protocol::topic_matches(f, &message.topic))
                    .unwrap_or(0);
                tell(Incoming::Request(Box::new(IncomingRequest {
                    filter_index,
                    topic: message.topic,
                    body,
                    payload: link::detached(message.payload),
                    user_properties: message.user_properties,
                    deadline,
                    answer: PendingAnswer::new(
                        self.replier.clone(),
                        route,
                        ticket,
                        filter_index,
                        deadline,
                    ),
                })));
            }
            (Admission::Answer(outcome), Some(route)) => {
                count(&counters.repeats_answered_from_cache);
                let _ = self.replier.answer(&route, &outcome);
            }
            (Admission::Joined, _) => count(&counters.repeats_answered_from_cache),
            (Admission::RepeatDropped, _) => {
                count_drop(&counters.repeats_dropped, "repeats_dropped", tell)
            }
            (Admission::Overloaded, route) => {
                count_drop(&counters.requests_overloaded, "requests_overloaded", tell);
                if let Some(route) = route {
                    let _ = self.replier.answer(&route, &Err(overloaded()));
                }
            }
            (Admission::Answer(_), None) => {}
        }
    }

    /// Answers a discovery or health request addressed to this instance, at once (no
    /// handler, no ledger); one addressed to others, or with a verb it does not know, is
    /// passed over. Answered as scatter-gather, naming itself, so each instance counts once.
    fn answer_control(
        &self,
        service: &ServiceIdentity,
        message: Message,
        body: &Map<String, Value>,
    ) {
        let client_id = &self.options.connection.client_id;
        let Some(verb) = service.addressed(client_id, &message.topic) else {
            return;
        };
        let Some(mut route) = route(
            false,
            &message.topic,
            body,
            message.response_topic,
            message.correlation_data.map(link::detached),
        ) else {
            return;
        };
        route.responder = Some(client_id.clone());
        count(&self.replier.counters.control_requests);
        let state = ServiceState {
            identity: service,
            client_id,
            filters: &self.options.filters,
            share_group: self.options.share_group.as_deref(),
            started: self.started,
            counters: &self.replier.counters,
        };
        let _ = self.replier.answer(&route, &Ok(state.answer(verb)));
    }

    /// Queues DISCONNECT behind the answers already queued; `serve` ends once it is
    /// written. False if it could not be queued (then the leave ends without it).
    fn disconnect(replier: &Replier) -> bool {
        replier.outbox.disconnect().is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_subscriptions_name_their_group() {
        assert_eq!(
            subscription("+/set", Some("workers")),
            "$share/workers/+/set"
        );
        assert_eq!(subscription("+/set", None), "+/set");
    }
}
