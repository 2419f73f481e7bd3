//! The call engine: the client's state machine, with no I/O, no locks and no clock.
//!
//! Inputs are method calls (a call started or forgotten, a reply, a SUBACK, a PUBACK, the
//! connection up or down, time advanced to `now`); outputs wait in the engine until the
//! driver takes them: packets to send (`poll_transmit`), callers to wake
//! (`take_wakeups`), connection events. Answered calls' latencies go into a histogram the
//! driver reads without the engine's lock (it only counts). The driver executes each
//! transmit and reports one that could not be queued (`transmit_failed`), so a failed send
//! is handled in one place and never re-enters the engine from inside itself: every chain
//! of consequences (a call ends, its slot admits the next, which subscribes or publishes)
//! runs as a loop, never as recursion. The same engine runs under a seeded simulator in
//! virtual time (tests/simulation.rs), the way quinn-proto's `Connection` does. Its inputs
//! from the network are in `network.rs`.

mod devices;
mod network;

use super::errors::{CallError, Outcome};
use super::stats::{Dropped, Stats};
use super::{ConnectionEvent, Load, Waiter};
use crate::acks::Sent;
use crate::link::Protocol;
use crate::metrics::LatencyHistogram;
use crate::pending::{Admission, Call, Gather, PendingTable, RecentlyAnswered, Stage};
use crate::presence::{PresenceBook, PresenceSource};
use crate::protocol::{self, Headers, InputError, Outgoing};
use crate::quota::{PublishQueue, Throttled};
use crate::subscriptions::{Need, ReplySubscriptions, Room};
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

/// Where the answer to one call goes: the client's inbox (`{prefix}/{client_id}/{id}`), or
/// the seed reply topic. Configuration alone decides it: callers need no engine for it.
pub fn reply_topic(
    inbox_prefix: Option<&str>,
    client_id: &str,
    request_topic: &str,
    request_id: &str,
) -> String {
    match inbox_prefix {
        Some(prefix) => format!("{prefix}/{client_id}/{request_id}"),
        None => protocol::reply_topic(request_topic, request_id),
    }
}

/// Notifications and cancellations that may wait for the publish-rate limit at once.
pub const MAX_QUEUED_MESSAGES: usize = 1024;

/// What the engine needs to know of the client's configuration.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub client_id: String,
    pub protocol: Protocol,
    pub qos: u8,
    pub inbox_prefix: Option<String>,
    pub max_in_flight: usize,
    pub max_reply_subscriptions: usize,
    pub publishes_per_second: Option<u32>,
    pub cancel_on_abandon: bool,
    /// Where a request carries the milliseconds its caller still waits (`timeout_ms`).
    /// MQTT 5 requests always carry Message Expiry besides.
    pub deadline_in: DeadlineCarrier,
    /// Where the client learns which devices are connected, and how many it remembers.
    pub presence: Option<PresenceSource>,
    pub presence_capacity: usize,
}

/// Where a request carries `timeout_ms`, the milliseconds its caller still waits at publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadlineCarrier {
    Nowhere,
    /// An MQTT 5 user property: the body stays the caller's.
    UserProperty,
    /// A member of the JSON body: every device sees it, 3.1.1 ones included.
    Body,
}

/// A packet for the driver to hand to the connection.
#[derive(Debug, Clone, PartialEq)]
pub enum Transmit {
    Publish {
        topic: Arc<str>,
        body: Vec<u8>,
        /// MQTT 5 only: where the answer goes, and the call's id as Correlation Data.
        response_topic: Option<String>,
        correlation_data: Option<Bytes>,
        /// MQTT 5 only: the request's headers (trace context), as user properties.
        user_properties: Headers,
        /// MQTT 5 only: seconds after which the broker drops it (the call's time left).
        message_expiry: Option<u32>,
        /// The call it carries (`None`: a notification or a cancellation).
        call: Option<Sent>,
    },
    /// `key` is the subscription's key (a request topic, or the pinned filter itself).
    Subscribe {
        key: Arc<str>,
        filter: String,
    },
    Unsubscribe {
        filter: String,
    },
}

/// A transmit the connection would not take, as the engine needs to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unsent {
    /// A call's request.
    Call(Sent),
    /// A notification or a cancellation.
    Message,
    /// The SUBSCRIBE of the filter under this key.
    Subscribe(Arc<str>),
    Unsubscribe,
}

impl Transmit {
    /// The publish of a message that answers to no call (a notification, a cancellation).
    pub fn message(topic: Arc<str>, message: Outgoing) -> Transmit {
        Transmit::Publish {
            topic,
            body: message.body,
            response_topic: None,
            correlation_data: None,
            user_properties: message.user_properties,
            message_expiry: None,
            call: None,
        }
    }
}

impl From<Transmit> for Unsent {
    /// What the engine must hear of a transmit the connection refused.
    fn from(transmit: Transmit) -> Unsent {
        match transmit {
            Transmit::Publish {
                call: Some(sent), ..
            } => Unsent::Call(sent),
            Transmit::Publish { call: None, .. } => Unsent::Message,
            Transmit::Subscribe { key, .. } => Unsent::Subscribe(key),
            Transmit::Unsubscribe { .. } => Unsent::Unsubscribe,
        }
    }
}

/// A publish that answers to no call (a notification, a cancellation): topic and body.
pub type Message = (Arc<str>, Outgoing);

/// Waiters to wake, each with its outcome, once the driver has let go of the engine.
pub type Wakeups<W> = Vec<(W, Outcome)>;

pub struct Engine<W> {
    config: EngineConfig,
    calls: PendingTable<W>,
    recent: RecentlyAnswered,
    subscriptions: ReplySubscriptions,
    /// The key of the one filter for every reply (`reply_filter` or the inbox), if any.
    pinned: Option<Arc<str>>,
    publishes: PublishQueue,
    /// Calls whose new reply filter found every place taken by filters in use.
    waiting_for_room: VecDeque<String>,
    counts: Stats,
    connected: bool,
    /// The first connection has not yet been reported ready (or failed).
    connecting: bool,
    transmits: VecDeque<Transmit>,
    wakeups: Wakeups<W>,
    events: Vec<ConnectionEvent>,
    /// The outcome of the first connection (with its pinned filter), once known.
    ready: Option<Result<(), CallError>>,
    /// From `start` to the answer, for answered calls (results and remote errors).
    latency: Arc<LatencyHistogram>,
    /// A call now has the earliest deadline: the driver's timer must look again.
    timer_changed: bool,
    /// What the presence source said of each device, if the client has one.
    presence: Option<PresenceBook>,
    /// The calls waiting for each device known offline (each ends by its deadline).
    waiting_for_device: HashMap<String, Vec<String>>,
}

impl<W: Waiter> Engine<W> {
    pub fn new(config: EngineConfig) -> Self {
        Engine {
            calls: PendingTable::new(config.max_in_flight),
            recent: RecentlyAnswered::default(),
            subscriptions: ReplySubscriptions::new(config.max_reply_subscriptions),
            pinned: None,
            publishes: PublishQueue::new(config.publishes_per_second, MAX_QUEUED_MESSAGES),
            waiting_for_room: VecDeque::new(),
            counts: Stats::default(),
            connected: false,
            connecting: true,
            transmits: VecDeque::new(),
            wakeups: Vec::new(),
            events: Vec::new(),
            ready: None,
            latency: Arc::default(),
            timer_changed: false,
            presence: (config.presence.clone())
                .map(|source| PresenceBook::new(source, config.presence_capacity)),
            waiting_for_device: HashMap::new(),
            config,
        }
    }

    // --- outputs -------------------------------------------------------------------------

    /// The next packet to send, oldest first.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn take_wakeups(&mut self) -> Wakeups<W> {
        std::mem::take(&mut self.wakeups)
    }

    pub fn take_events(&mut self) -> Vec<ConnectionEvent> {
        std::mem::take(&mut self.events)
    }

    /// Counts a message dropped rather than raised; the first of its kind is also an event,
    /// so that it is said once (and the counter says how many followed).
    fn dropped(&mut self, kind: Dropped) {
        let counts = &mut self.counts;
        let counter = match kind {
            Dropped::Stray => &mut counts.replies_dropped_stray,
            Dropped::Duplicate => &mut counts.replies_dropped_duplicate,
            Dropped::Malformed => &mut counts.replies_dropped_malformed,
            Dropped::Oversized => &mut counts.replies_dropped_oversized,
            Dropped::Message => &mut counts.messages_dropped,
            Dropped::PresenceEvent => &mut counts.presence_events_malformed,
        };
        *counter += 1;
        if *counter == 1 {
            let counter = kind.counter();
            self.events.push(ConnectionEvent::FirstDrop { counter });
        }
    }

    pub fn take_ready(&mut self) -> Option<Result<(), CallError>> {
        self.ready.take()
    }

    /// The latency histogram of answered calls; readable from any thread.
    pub fn latency(&self) -> &Arc<LatencyHistogram> {
        &self.latency
    }

    /// Whether the earliest deadline changed since the last look.
    pub fn take_timer_changed(&mut self) -> bool {
        std::mem::replace(&mut self.timer_changed, false)
    }

    /// When the engine next needs `handle_timeout`: the earliest deadline, or the moment
    /// the publish-rate limit lets the next waiting publish go.
    pub fn next_timeout(&self, now: Instant) -> Option<Instant> {
        match (self.calls.next_deadline(), self.publishes.next_release(now)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    // --- what the driver and the pool read ------------------------------------------------

    pub fn pending(&self) -> usize {
        self.calls.len()
    }

    pub fn in_flight(&self) -> usize {
        self.calls.in_flight()
    }

    /// Calls waiting for an in-flight slot.
    pub fn waiting_for_slot(&self) -> usize {
        self.calls.queued()
    }

    pub fn reply_subscriptions(&self) -> usize {
        self.subscriptions.len()
    }

    pub fn reply_subscriptions_limit(&self) -> usize {
        self.subscriptions.limit()
    }

    pub fn throttled(&self) -> usize {
        self.publishes.len()
    }

    pub fn contains(&self, request_id: &str) -> bool {
        self.calls.contains(request_id)
    }

    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// The counters, with the gauges read from the tables.
    pub fn stats(&self) -> Stats {
        Stats {
            pending: self.calls.len() as u64,
            reply_subscriptions: self.subscriptions.len() as u64,
            reply_subscriptions_limit: self.subscriptions.limit(),
            publish_rate_limit: self.publishes.per_second(),
            presence_devices: self.presence.as_ref().map_or(0, |p| p.cache.len() as u64),
            ..self.counts.clone()
        }
    }

    /// How much room this connection has for a call on `topic` (for a pool's choice).
    pub fn load(&self, topic: &str, now: Instant) -> Load {
        let key = self.pinned.as_deref().unwrap_or(topic);
        Load {
            throttled: !self.publishes.has_place(now),
            pending: self.calls.len(),
            holds_reply_filter: self.subscriptions.is_active(key),
        }
    }

    /// Where the answer to one call goes: the client's inbox, or the seed reply topic.
    pub fn reply_topic(&self, request_topic: &str, request_id: &str) -> String {
        let inbox = self.config.inbox_prefix.as_deref();
        reply_topic(inbox, &self.config.client_id, request_topic, request_id)
    }

    // --- inputs: calls -------------------------------------------------------------------

    /// Holds `filter`, the one filter for every reply, for the client's whole life: the
    /// first connection is ready once its SUBACK arrives.
    pub fn pin(&mut self, filter: &str) {
        let key = self.subscriptions.pin(filter);
        self.pinned = Some(key.clone());
        self.transmits.push_back(Transmit::Subscribe {
            key,
            filter: filter.to_owned(),
        });
    }

    /// A new call: admitted to a slot at once (then subscribed or published) or queued for
    /// one. A request id already in use (a retry racing its own first attempt) is refused
    /// through the waiter, never overwriting the call that holds it.
    pub fn start(
        &mut self,
        request_id: String,
        topic: &str,
        request: impl Into<Outgoing>,
        gather: Option<Option<usize>>,
        times: (Instant, Instant),
        waiter: W,
    ) {
        self.counts.calls_started += 1;
        self.insert(
            request_id,
            topic,
            request.into(),
            gather,
            times,
            waiter,
            None,
        );
    }

    /// Enters a started call in the table: admitted to a slot, queued for one, or (with
    /// `wait_for_device`) held until its device comes online.
    #[allow(clippy::too_many_arguments)]
    fn insert(
        &mut self,
        request_id: String,
        topic: &str,
        request: Outgoing,
        gather: Option<Option<usize>>,
        (started, deadline): (Instant, Instant),
        waiter: W,
        wait_for_device: Option<(String, Instant)>,
    ) {
        if self.calls.contains(&request_id) {
            self.counts.calls_failed += 1;
            let error = CallError::Input(InputError::RequestIdInUse(request_id));
            self.wakeups.push((waiter, Err(error)));
            return;
        }
        let topic_key = self
            .subscriptions
            .key_for(topic)
            .unwrap_or_else(|| Arc::from(topic));
        let device = wait_for_device.as_ref().map(|(device, _)| device.clone());
        let (admission, earliest) = self.calls.insert(
            request_id.clone(),
            topic_key,
            request,
            (started, deadline),
            waiter,
            wait_for_device,
        );
        if let (Some(max_replies), Some(call)) = (gather, self.calls.get_mut(&request_id)) {
            call.gather = Some(Gather::new(max_replies));
        }
        self.timer_changed |= earliest;
        match admission {
            Admission::Admitted => self.admit(&request_id, started),
            Admission::Queued => {}
            Admission::WaitForDevice { .. } => {
                let device = device.unwrap_or_default();
                self.waiting_for_device
                    .entry(device)
                    .or_default()
                    .push(request_id);
            }
        }
    }

    /// The caller gave up: the call ends now (a published one is cancelled on the device
    /// with `cancel_on_abandon`). Returns whether it was pending.
    pub fn forget(&mut self, request_id: &str, now: Instant) -> Option<W> {
        let call = self.take_call(request_id, now)?;
        self.counts.calls_cancelled += 1;
        self.abandoned(request_id, &call, now);
        Some(call.waiter)
    }

    /// A one-way notification: whether it may be published now (its place under the
    /// publish-rate limit is taken), else it waits in the queue; refused when that is full.
    pub fn notify(
        &mut self,
        topic: &str,
        body: impl Into<Outgoing>,
        now: Instant,
    ) -> Result<Option<Message>, CallError> {
        let body = body.into();
        let topic: Arc<str> = Arc::from(topic);
        if self.publishes.take_place(now) {
            return Ok(Some((topic, body)));
        }
        match self.publishes.wait_message(topic.clone(), body) {
            Ok(()) => {
                self.timer_changed = true;
                Ok(None)
            }
            Err(_) => Err(CallError::Timeout {
                topic,
                throttled: self.publishes.per_second(),
            }),
        }
    }

    /// The client closes: every call still pending ends with `ConnectionLost`.
    pub fn close(&mut self) {
        for (_, call) in self.calls.drain() {
            self.counts.calls_failed += 1;
            self.wakeups.push((
                call.waiter,
                Err(CallError::ConnectionLost(
                    "the client was closed while the call was waiting".into(),
                )),
            ));
        }
        self.waiting_for_room.clear();
        self.waiting_for_device.clear();
    }

    // --- inputs: time --------------------------------------------------------------------

    /// Time has reached `now`: expired calls end, and publishes waiting for the rate limit
    /// go as far as it allows.
    pub fn handle_timeout(&mut self, now: Instant) {
        for request_id in self.calls.expired(now) {
            let Some(call) = self.take_call(&request_id, now) else {
                continue;
            };
            if call.gather.is_some() && call.stage == Stage::Published {
                // A scatter-gather call ends at its deadline with what it collected.
                self.gather_ended(request_id, call.waiter);
                continue;
            }
            if call.stage == Stage::WaitingForDevice && now < call.deadline {
                // Its wait for the device ended before its deadline: still offline.
                let device = call.waiting_for.as_deref().unwrap_or_default();
                let error = self.offline_error(&call.topic, device, true);
                self.counts.calls_device_offline += 1;
                self.wakeups.push((call.waiter, Err(error)));
                continue;
            }
            self.counts.calls_timed_out += 1;
            self.abandoned(&request_id, &call, now);
            let throttled = (call.stage == Stage::WaitingForToken)
                .then(|| self.publishes.per_second())
                .flatten();
            let topic = call.topic.clone();
            self.wakeups
                .push((call.waiter, Err(CallError::Timeout { topic, throttled })));
        }
        while let Some(next) = self.publishes.release(now) {
            match next {
                Throttled::Call { request_id, since } => {
                    self.counts.calls_throttled += 1;
                    self.counts.throttled_wait += now.saturating_duration_since(since);
                    self.publish_now(&request_id, now);
                }
                Throttled::Message { topic, body } => {
                    self.transmits.push_back(Transmit::message(topic, body))
                }
            }
        }
    }

    /// The subscription key of a call: the pinned filter, or its request topic.
    fn subscription_key(&self, topic: &Arc<str>) -> Arc<str> {
        self.pinned.clone().unwrap_or_else(|| topic.clone())
    }

    /// A call that holds a slot: make sure its reply filter is held, then publish.
    fn admit(&mut self, request_id: &str, now: Instant) {
        let Some(call) = self.calls.get_mut(request_id) else {
            return;
        };
        let topic = call.topic.clone();
        let key = self.subscription_key(&topic);
        let pinned = self.pinned.is_some();
        if !pinned && !self.subscriptions.contains(&key) {
            match self.subscriptions.make_room() {
                Room::Available => {}
                Room::Evicted(idle) => {
                    for filter in idle {
                        self.transmits.push_back(Transmit::Unsubscribe { filter });
                    }
                }
                Room::Full => {
                    self.waiting_for_room.push_back(request_id.to_owned());
                    return;
                }
            }
        }
        let need = self.subscriptions.acquire(&key, request_id, |k| {
            if pinned {
                k.to_owned()
            } else {
                protocol::reply_filter_for(k)
            }
        });
        match need {
            Need::Ready => self.publish(request_id, now),
            Need::Wait => {}
            Need::Subscribe(filter) => {
                self.transmits
                    .push_back(Transmit::Subscribe { key, filter });
                for filter in self.subscriptions.evict_idle() {
                    self.transmits.push_back(Transmit::Unsubscribe { filter });
                }
            }
        }
    }

    /// Publishes now, or queues the call for the publish-rate limit.
    fn publish(&mut self, request_id: &str, now: Instant) {
        // Without a publish-rate limit (the common case) nothing is checked here.
        if self.publishes.is_limited()
            && self.calls.contains(request_id)
            && !self.publishes.take_place(now)
        {
            if let Some(call) = self.calls.get_mut(request_id) {
                call.stage = Stage::WaitingForToken;
            }
            self.publishes.wait_call(request_id.to_owned(), now);
            self.timer_changed = true;
            return;
        }
        self.publish_now(request_id, now);
    }

    /// Publishes an admitted call's request, with the time its caller still waits.
    fn publish_now(&mut self, request_id: &str, now: Instant) {
        let protocol = self.config.protocol;
        let deadline_in = self.config.deadline_in;
        let Some(call) = self.calls.get_mut(request_id) else {
            return;
        };
        let Some(mut request) = call.request.take() else {
            return;
        };
        call.stage = Stage::Published;
        // In wire form only where the request carries it (not on a default 3.1.1 call).
        let left = call.deadline.saturating_duration_since(now);
        let topic = call.topic.clone();
        let sent = Sent {
            request_id: request_id.to_owned(),
            call_seq: call.seq(),
        };
        match deadline_in {
            DeadlineCarrier::Nowhere => {}
            DeadlineCarrier::Body => {
                let (_, timeout_ms) = protocol::deadline_on_the_wire(left);
                request.body = protocol::with_timeout_member(request.body, timeout_ms);
            }
            DeadlineCarrier::UserProperty => {
                let (_, timeout_ms) = protocol::deadline_on_the_wire(left);
                let member = protocol::TIMEOUT_MS_MEMBER.to_owned();
                request
                    .user_properties
                    .push((member, timeout_ms.to_string()));
            }
        }
        let (response_topic, correlation_data, message_expiry) = match protocol {
            Protocol::V311 => (None, None, None),
            Protocol::V5 => (
                Some(self.reply_topic(&topic, request_id)),
                Some(Bytes::copy_from_slice(request_id.as_bytes())),
                Some(protocol::deadline_on_the_wire(left).0),
            ),
        };
        self.transmits.push_back(Transmit::Publish {
            topic,
            body: request.body,
            response_topic,
            correlation_data,
            user_properties: request.user_properties,
            message_expiry,
            call: Some(sent),
        });
    }

    /// A published call nobody waits for any more (timed out, or its caller cancelled): with
    /// `cancel_on_abandon`, tell the device, which may stop working on it.
    fn abandoned(&mut self, request_id: &str, call: &Call<W>, now: Instant) {
        if !self.config.cancel_on_abandon || call.stage != Stage::Published {
            return;
        }
        let body = protocol::cancel_request(request_id);
        match self.notify(&call.topic, body, now) {
            Ok(Some((topic, body))) => self.transmits.push_back(Transmit::message(topic, body)),
            Ok(None) => {}
            // The queue is full: the device is not told; counted.
            Err(_) => self.dropped(Dropped::Message),
        }
    }

    /// Removes a call and gives what it held to the calls waiting for it: its filter's
    /// place to calls waiting for room, its slot to the next queued call. A loop, not
    /// recursion: admitting a call only queues transmits, whose failures come back later
    /// as inputs.
    fn take_call(&mut self, request_id: &str, now: Instant) -> Option<Call<W>> {
        let call = self.calls.remove(request_id)?;
        if call.stage == Stage::WaitingForToken {
            self.publishes.remove_call(request_id);
        }
        if let Some(device) = &call.waiting_for {
            // It held nothing but its place among the calls waiting for its device.
            self.stop_waiting(device, request_id);
            return Some(call);
        }
        if !self.waiting_for_room.is_empty() {
            self.waiting_for_room.retain(|id| id != request_id);
        }
        if call.stage != Stage::WaitingForSlot {
            let key = self.subscription_key(&call.topic);
            for filter in self.subscriptions.release(&key, request_id) {
                self.transmits.push_back(Transmit::Unsubscribe { filter });
            }
            // A filter may have become idle: calls waiting for room try again, in order.
            for id in std::mem::take(&mut self.waiting_for_room) {
                self.admit(&id, now);
            }
            while let Some(next) = self.calls.admit_next() {
                self.admit(&next, now);
            }
        }
        Some(call)
    }

    fn fail(&mut self, request_id: &str, error: CallError, now: Instant) {
        if let Some(call) = self.take_call(request_id, now) {
            self.counts.calls_failed += 1;
            self.wakeups.push((call.waiter, Err(error)));
        }
    }
}
