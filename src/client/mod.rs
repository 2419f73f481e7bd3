//! The RPC client: one MQTT connection, and `start()`, which turns a publish into a call
//! that ends with exactly one outcome.
//!
//! Rooms: `options` (configuration and defaults), `errors` (why a call fails), `stats`
//! (what is counted), `engine` (the state machine: no I/O, locks or clock), `driver` (the
//! tasks that poll the connection and the timer). This file is the front: it checks and
//! builds requests, feeds the engine under its lock, and executes what the engine asks
//! for. It is generic over the `Waiter` that wakes a caller, so the same core serves Rust
//! callers (a oneshot) and the Python binding (a handle on an asyncio future) without
//! depending on pyo3. Waiters are woken only after the lock is released, since waking one
//! may run a caller's code.

mod driver;
pub mod engine;
mod errors;
mod options;
mod stats;

pub use errors::{throttled_reason, CallError, Outcome};
pub use options::{ClientOptions, DEFAULT_INBOX_PREFIX};
pub use stats::Stats;

use crate::acks::AckLedger;
use crate::link::{
    self, BrokerAddress, ConnectedTo, Events, LinkErrorKind, Outbox, Properties, Protocol, Takeover,
};
use crate::locking::lock;
use crate::metrics::LatencyHistogram;
use crate::presence::{self, Presence};
use crate::protocol::{self, Headers, InputError, Outgoing};
use engine::{DeadlineCarrier, Engine, EngineConfig};
use serde_json::{Map, Value};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch, Notify};
use tokio::task::JoinHandle;

/// Whatever wakes the caller of one call. `complete` is called exactly once, from a tokio
/// thread or the caller's own, and never while the client's lock is held.
pub trait Waiter: Send + 'static {
    fn complete(self, outcome: Outcome);

    /// An interim message for the call (a progress message, or a scatter-gather answer),
    /// before its outcome. Called with the client's lock held: it must only hand the
    /// message on. Most waiters ignore it.
    fn progress(&self, _message: Map<String, Value>) {}
}

impl Waiter for oneshot::Sender<Outcome> {
    fn complete(self, outcome: Outcome) {
        // The receiver is gone only if the caller stopped waiting: nothing to tell.
        let _ = self.send(outcome);
    }
}

/// A change of the connection, reported to the sink given to `set_event_sink`; and the first
/// message of each kind that the client dropped rather than raised, so that it can be said
/// once (its counter in `Stats` says how many followed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionEvent {
    Connected {
        /// True for every connection after the first.
        reconnect: bool,
        /// The broker kept the session (and so the reply subscriptions).
        session_present: bool,
    },
    Disconnected {
        reason: String,
        /// Whether another connection with our client id took it over (and if this is
        /// the first time since the connection was last stable: the one to report).
        takeover: Takeover,
    },
    FirstDrop {
        /// The `Stats` counter of the kind, for example `replies_dropped_malformed`.
        counter: &'static str,
    },
}

/// Receives connection events on a tokio thread: it must not block.
pub type EventSink = Box<dyn Fn(ConnectionEvent) + Send + Sync>;

/// What a connection reports to a pool to be picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Load {
    /// Its publish-rate quota is used up for now (calls would wait for it).
    pub throttled: bool,
    pub pending: usize,
    pub holds_reply_filter: bool,
}

/// A request checked and built by `prepare`, ready for `start`.
#[derive(Debug)]
pub struct Prepared {
    pub request_id: String,
    topic: String,
    request: Outgoing,
    /// A scatter-gather request, and how many answers end it (`None`: its deadline).
    gather: Option<Option<usize>>,
    /// With a presence source: the device it addresses, and how long it may wait for
    /// that device to come online.
    device: Device,
    wait_for_device: Option<Duration>,
}

/// The device a request addresses, for the presence check.
#[derive(Debug)]
enum Device {
    /// No check (no presence source, a scatter-gather call, or the caller said so).
    Unchecked,
    /// The topic's first level, read when the call starts (nothing allocated).
    FirstLevel,
    Named(String),
}

impl Prepared {
    /// Names the device the request addresses (None: no presence check for it).
    pub fn set_device(&mut self, device: Option<String>) {
        if self.gather.is_none() {
            self.device = device.map_or(Device::Unchecked, Device::Named);
        }
    }

    /// Of a device known offline, wait up to `wait` (within the call's timeout) for it to
    /// come online instead of failing at once.
    pub fn set_wait_for_device(&mut self, wait: Option<Duration>) {
        self.wait_for_device = wait;
    }
}

/// What the front and the driver's tasks share.
struct Shared<W> {
    options: ClientOptions,
    outbox: Outbox,
    engine: Mutex<Engine<W>>,
    /// MQTT 5 with QoS 1: which call each PUBACK acknowledges. Locked after the engine,
    /// never before it.
    acks: Option<Mutex<AckLedger>>,
    /// The engine's latency histogram, read here without the engine's lock.
    latency: Arc<LatencyHistogram>,
    /// `connect()` was called: from then on calls are accepted (and queued while the
    /// connection is down), until `close()`.
    connect_started: AtomicBool,
    /// The engine's view, readable without its lock (`is_connected`, `fail_fast`).
    connected: AtomicBool,
    /// The broker's Maximum Packet Size from its CONNACK (MQTT 5), or `usize::MAX`.
    broker_max_packet: AtomicUsize,
    /// `close()` began: no new calls; it waits (bounded) for the table to empty.
    closing: AtomicBool,
    closed: AtomicBool,
    drained: Notify,
    timer_wake: Notify,
    shutdown: watch::Sender<bool>,
    event_sink: OnceLock<EventSink>,
    /// Told once the first connection is up with its pinned filter (or that it failed).
    ready: Mutex<Option<oneshot::Sender<Result<(), CallError>>>>,
    /// Why the connection was last lost (or could not be made).
    last_loss: Mutex<Option<LinkErrorKind>>,
    /// The filter of the presence source's messages, if it has one.
    presence_filter: Option<String>,
    tls_error: Option<String>,
}

/// An MQTT RPC client. Dropping it stops its tasks and drops the connection.
pub struct RpcClient<W: Waiter> {
    shared: Arc<Shared<W>>,
    events: Mutex<Option<Events>>,
    connected_to: ConnectedTo,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl<W: Waiter> RpcClient<W> {
    /// Checks the options and prepares the connection; nothing is sent before `connect()`.
    pub fn new(options: ClientOptions) -> Result<Self, InputError> {
        if let Some(filter) = &options.reply_filter {
            protocol::validate_filter(filter)?;
        }
        if let Some(source) = &options.presence {
            source.validate()?;
            if source
                .filter()
                .is_some_and(|f| Some(&f) == options.reply_filter.as_ref())
            {
                return Err(InputError::InvalidFilter(
                    "the presence filter cannot also be the reply_filter".into(),
                ));
            }
        }
        if let Some(prefix) = &options.inbox_prefix {
            if options.reply_filter.is_some() {
                return Err(InputError::InvalidFilter(
                    "reply_filter and the inbox reply mode exclude each other".into(),
                ));
            }
            protocol::validate_request_topic(prefix)
                .and_then(|()| protocol::validate_request_topic(&options.connection.client_id))
                .map_err(|e| InputError::InvalidFilter(format!("inbox {e}")))?;
        }
        let max_in_flight = options.max_in_flight.max(1);
        let max_unacked = options
            .quotas
            .max_unacked_publishes
            .unwrap_or(u16::MAX)
            .max(1);
        // Bad TLS files are reported by connect(), with the other reasons it can fail.
        let (tls_config, tls_error) = match &options.connection.tls {
            Some(tls) => match crate::tls::client_config(tls) {
                Ok(config) => (Some(config), None),
                Err(error) => (None, Some(error.to_string())),
            },
            None => (None, None),
        };
        let (outbox, events) = link::open(
            &options.connection,
            tls_config,
            // Room for every in-flight publish plus the subscribes that precede them.
            max_in_flight + 1024,
            u16::try_from(max_in_flight)
                .unwrap_or(u16::MAX)
                .min(max_unacked),
        );
        let (shutdown, _) = watch::channel(false);
        let acks = (options.connection.protocol == Protocol::V5 && options.qos > 0)
            .then(|| Mutex::new(AckLedger::new(true)));
        let engine = Engine::new(EngineConfig {
            client_id: options.connection.client_id.clone(),
            protocol: options.connection.protocol,
            qos: options.qos,
            inbox_prefix: options.inbox_prefix.clone(),
            max_in_flight,
            max_reply_subscriptions: options.max_reply_subscriptions,
            publishes_per_second: options.quotas.publishes_per_second,
            cancel_on_abandon: options.cancel_on_abandon,
            deadline_in: options.deadline_carrier(),
            presence: options.presence.clone(),
            presence_capacity: options.presence_capacity,
        });
        let latency = engine.latency().clone();
        let presence_filter = options.presence.as_ref().and_then(|s| s.filter());
        let shared = Shared {
            acks,
            engine: Mutex::new(engine),
            options,
            outbox,
            latency,
            connect_started: AtomicBool::new(false),
            connected: AtomicBool::new(false),
            broker_max_packet: AtomicUsize::new(usize::MAX),
            closing: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            drained: Notify::new(),
            timer_wake: Notify::new(),
            shutdown,
            event_sink: OnceLock::new(),
            ready: Mutex::new(None),
            last_loss: Mutex::new(None),
            presence_filter,
            tls_error,
        };
        Ok(RpcClient {
            shared: Arc::new(shared),
            connected_to: events.connected_to(),
            events: Mutex::new(Some(events)),
            tasks: Mutex::new(Vec::new()),
        })
    }

    pub fn options(&self) -> &ClientOptions {
        &self.shared.options
    }

    /// Where connection events go; set it before `connect()`. Only the first sink is kept.
    pub fn set_event_sink(&self, sink: EventSink) {
        let _ = self.shared.event_sink.set(sink);
    }

    /// Connects (and subscribes the `reply_filter`, if any) within `connect_timeout`.
    /// Must run inside a tokio runtime: the client's tasks are spawned on it.
    pub async fn connect(&self) -> Result<(), CallError> {
        let shared = &self.shared;
        if shared.closed.load(Ordering::Acquire) {
            return Err(CallError::NotConnected("the client is closed".into()));
        }
        if let Some(why) = &shared.tls_error {
            self.stop();
            return Err(CallError::Tls(why.clone()));
        }
        let Some(events) = lock(&self.events).take() else {
            return Err(CallError::NotConnected(
                "connect() was already called on this client".into(),
            ));
        };
        shared.connect_started.store(true, Ordering::Release);
        let (ready_tx, ready_rx) = oneshot::channel();
        *lock(&shared.ready) = Some(ready_tx);
        // One filter for every reply: the user's reply_filter, or the client's inbox.
        let pinned_filter = match (&shared.options.reply_filter, &shared.options.inbox_prefix) {
            (Some(filter), _) => Some(filter.clone()),
            (None, Some(prefix)) => Some(format!(
                "{prefix}/{}/+",
                shared.options.connection.client_id
            )),
            (None, None) => None,
        };
        if let Some(filter) = &pinned_filter {
            shared.run(|engine, _| engine.pin(filter));
        }
        shared.run(|engine, _| engine.hold_presence_filter());
        {
            let mut tasks = lock(&self.tasks);
            tasks.push(tokio::spawn(driver::drive_events(shared.clone(), events)));
            tasks.push(tokio::spawn(driver::sweep_deadlines(shared.clone())));
        }
        let connection = &shared.options.connection;
        let address = format!("{}:{}", connection.host, connection.port);
        // The event loop reports its own connect timeout; this bound also covers the SUBACK.
        let bound = connection.connect_timeout + Duration::from_secs(1);
        let mut unanswered = false;
        let failure = match tokio::time::timeout(bound, ready_rx).await {
            Ok(Ok(Ok(()))) => return Ok(()),
            Ok(Ok(Err(error))) => error,
            Ok(Err(_)) => CallError::NotConnected("the connection task ended".into()),
            Err(_) => {
                unanswered = true;
                CallError::NotConnected(format!(
                    "no answer within {:?}",
                    connection.connect_timeout
                ))
            }
        };
        // A broker without MQTT 5 closes the connection at an MQTT 5 CONNECT, or never answers.
        let hint_no_mqtt5 = connection.protocol == Protocol::V5
            && (unanswered
                || matches!(
                    *lock(&shared.last_loss),
                    Some(LinkErrorKind::Closed | LinkErrorKind::TimedOut)
                ));
        self.stop();
        let context =
            |why: &str| format!("could not connect to the MQTT broker at {address}: {why}");
        Err(match failure {
            CallError::Tls(why) => CallError::Tls(context(&why)),
            CallError::Refused(why) => CallError::Refused(context(&why)),
            other if hint_no_mqtt5 => CallError::NotConnected(format!(
                "{} (a broker without MQTT 5 closes or ignores the connection: try protocol \"3.1.1\")",
                context(&other.to_string())
            )),
            other => CallError::NotConnected(context(&other.to_string())),
        })
    }

    /// Starts a call: validates, builds the request and publishes it (or queues it for a
    /// slot or for its reply filter's SUBACK). `make_waiter` is called only once the input
    /// is known to be good. Returns the request id, which `forget()` takes.
    pub fn start_call(
        &self,
        topic: &str,
        payload: &[u8],
        timeout: Duration,
        make_waiter: impl FnOnce() -> W,
    ) -> Result<String, CallError> {
        let prepared = self.prepare(topic, payload, None, Vec::new())?;
        Ok(self.start(prepared, timeout, make_waiter()))
    }

    /// Checks a request and builds its body, sending nothing: a batch is prepared whole
    /// before any of it is sent. A retry passes the `request_id` of its first attempt, so
    /// that the device can recognise the repeat. `headers` (trace context) travel as MQTT 5
    /// user properties, or on 3.1.1 as members of the body.
    pub fn prepare(
        &self,
        topic: &str,
        payload: &[u8],
        request_id: Option<&str>,
        headers: Headers,
    ) -> Result<Prepared, CallError> {
        self.prepare_request(topic, payload, request_id, None, headers)
    }

    /// Prepares a scatter-gather request: sent once (typically to a group topic that many
    /// devices subscribe to), it asks every device to answer and name itself; the call
    /// collects answers, each device's once, until its deadline or `max_replies`.
    pub fn prepare_gather(
        &self,
        topic: &str,
        payload: &[u8],
        max_replies: Option<usize>,
        headers: Headers,
    ) -> Result<Prepared, CallError> {
        let gather = Some(max_replies.map(|n| n.max(1)));
        self.prepare_request(topic, payload, None, gather, headers)
    }

    fn prepare_request(
        &self,
        topic: &str,
        payload: &[u8],
        request_id: Option<&str>,
        gather: Option<Option<usize>>,
        headers: Headers,
    ) -> Result<Prepared, CallError> {
        let shared = &self.shared;
        self.accepting()?;
        protocol::validate_request_topic(topic).map_err(CallError::Input)?;
        if shared.options.aws_topic_rules {
            protocol::check_aws_topic_rules(topic).map_err(CallError::Input)?;
        }
        let request_id = match request_id {
            None => protocol::new_request_id(),
            Some(id) => {
                protocol::validate_request_id(id).map_err(CallError::Input)?;
                // Checked again by the engine when the call starts: this is the early,
                // clear refusal; that one closes the race between two retries.
                if shared.engine().contains(id) {
                    return Err(CallError::Input(InputError::RequestIdInUse(id.to_owned())));
                }
                id.to_owned()
            }
        };
        if let Some(filter) = &shared.options.reply_filter {
            let reply_topic = protocol::reply_topic(topic, &request_id);
            if !protocol::topic_matches(filter, &reply_topic) {
                return Err(CallError::Input(InputError::OutsideReplyFilter {
                    reply_topic,
                    filter: filter.clone(),
                }));
            }
        }
        let inbox_topic = shared.options.inbox_prefix.as_ref().map(|prefix| {
            let client_id = &shared.options.connection.client_id;
            engine::reply_topic(Some(prefix), client_id, topic, &request_id)
        });
        let protocol = shared.outbox.protocol();
        let (members, user_properties) = headers_by_protocol(protocol, headers);
        let body = protocol::build_request(
            payload,
            &request_id,
            inbox_topic.as_deref(),
            gather.is_some(),
            &members,
        )
        .map_err(CallError::Input)?;
        let request = Outgoing {
            body,
            user_properties,
        };
        let reply_topic_len = match &inbox_topic {
            Some(inbox) => inbox.len(),
            None => protocol::reply_topic_len(topic),
        };
        let deadline = deadline_size(protocol, shared.options.deadline_carrier());
        let size = packet_size(topic, &request, Some(reply_topic_len), protocol) + deadline;
        let limit = shared.max_packet_size();
        if size > limit {
            return Err(CallError::Input(InputError::TooLarge { size, limit }));
        }
        let device = match (&shared.options.presence, gather) {
            (Some(_), None) => Device::FirstLevel,
            _ => Device::Unchecked,
        };
        Ok(Prepared {
            request_id,
            topic: topic.to_owned(),
            request,
            gather,
            device,
            wait_for_device: None,
        })
    }

    /// Whether new calls are taken now: after `connect()`, before `close()`, and (with
    /// `fail_fast`) only while connected.
    fn accepting(&self) -> Result<(), CallError> {
        let shared = &self.shared;
        if shared.closing.load(Ordering::Acquire) {
            return Err(CallError::NotConnected(
                "the client is not connected: it was closed, or its connect() failed".into(),
            ));
        }
        if !shared.connect_started.load(Ordering::Acquire) {
            return Err(CallError::NotConnected(
                "the client is not connected: call connect() (or use `async with`) first".into(),
            ));
        }
        if shared.options.fail_fast && !shared.connected.load(Ordering::Acquire) {
            return Err(CallError::NotConnected(
                "the connection to the broker is down (fail_fast is set)".into(),
            ));
        }
        Ok(())
    }

    /// A one-way notification: the JSON object is published as it is (no `request_id`, so
    /// no device answers it) and nothing is awaited.
    pub fn notify(&self, topic: &str, payload: &[u8], headers: Headers) -> Result<(), CallError> {
        self.accepting()?;
        protocol::validate_request_topic(topic).map_err(CallError::Input)?;
        let protocol = self.shared.outbox.protocol();
        let (members, user_properties) = headers_by_protocol(protocol, headers);
        let message = Outgoing {
            body: protocol::notification_body(payload, &members).map_err(CallError::Input)?,
            user_properties,
        };
        let size = packet_size(topic, &message, None, protocol);
        let limit = self.shared.max_packet_size();
        if size > limit {
            return Err(CallError::Input(InputError::TooLarge { size, limit }));
        }
        let shared = &self.shared;
        shared.run(|engine, now| match engine.notify(topic, message, now)? {
            // Sent here, under the engine's lock like every publish, to keep their order.
            Some((topic, message)) => shared
                .publish(
                    &topic,
                    message.body,
                    Properties {
                        user_properties: message.user_properties,
                        ..Properties::default()
                    },
                    None,
                )
                .map_err(|_| CallError::unsent()),
            None => Ok(()),
        })
    }

    /// Sends a prepared request (or queues it for a slot or its reply filter's SUBACK);
    /// `waiter` hears its one outcome. Returns its request id.
    pub fn start(&self, prepared: Prepared, timeout: Duration, waiter: W) -> String {
        let Prepared {
            request_id,
            topic,
            request,
            gather,
            device,
            wait_for_device,
        } = prepared;
        let started = Instant::now();
        // A timeout too long to represent waits, in practice, for ever.
        let deadline = started
            .checked_add(timeout)
            .unwrap_or(started + Duration::from_secs(86_400 * 365));
        let id = request_id.clone();
        let times = (started, deadline);
        let device = match &device {
            Device::Unchecked => None,
            Device::FirstLevel => Some(presence::device_of_topic(&topic)),
            Device::Named(name) => Some(name.as_str()),
        };
        self.shared.run(|engine, _| match device {
            Some(device) => {
                engine.start_to_device(device, wait_for_device, id, &topic, request, times, waiter)
            }
            None => engine.start(id, &topic, request, gather, times, waiter),
        });
        request_id
    }

    /// The caller gave up (its task was cancelled): drop the call now, not at its deadline.
    /// Returns whether it was still pending.
    pub fn forget(&self, request_id: &str) -> bool {
        let waiter = self
            .shared
            .run(|engine, now| engine.forget(request_id, now));
        // The waiter may hold a caller's object: it goes here, outside the lock.
        waiter.is_some()
    }

    /// What the presence source last said of `device` (None: nothing, or no source).
    pub fn presence(&self, device: &str) -> Option<Presence> {
        self.shared.engine().presence(device)
    }

    /// Tells the client a device's presence from a source of the application's own (with
    /// `PresenceSource::Reported`); calls waiting for it go on once it is online.
    pub fn report_presence(
        &self,
        device: &str,
        online: bool,
        since_ms: Option<i64>,
        reason: Option<String>,
    ) {
        self.shared
            .run(|engine, now| engine.report_presence(device, online, since_ms, reason, now));
    }

    /// Calls not yet ended, in every stage (waiting for a slot, a SUBACK, or the answer).
    pub fn pending(&self) -> usize {
        self.shared.engine().pending()
    }

    /// Reply filters held or being subscribed.
    pub fn reply_subscriptions(&self) -> usize {
        self.shared.engine().reply_subscriptions()
    }

    pub fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::Acquire)
    }

    /// The broker the connection is up with (one of its addresses), None while it is down.
    pub fn connected_to(&self) -> Option<BrokerAddress> {
        self.connected_to.get()
    }

    /// How much room this connection has for a call on `topic` (for a pool's choice).
    pub fn load(&self, topic: &str) -> Load {
        self.shared.engine().load(topic, Instant::now())
    }

    pub fn latency_histogram(&self) -> &LatencyHistogram {
        &self.shared.latency
    }

    pub fn stats(&self) -> Stats {
        let latency = &self.shared.latency;
        Stats {
            latency_p50: latency.percentile(0.50),
            latency_p90: latency.percentile(0.90),
            latency_p99: latency.percentile(0.99),
            ..self.shared.engine().stats()
        }
    }

    /// Refuses new calls, waits up to `grace` for the pending ones to end, fails what is
    /// left with `ConnectionLost`, sends DISCONNECT and waits (bounded) for the tasks to
    /// end. Closing twice is harmless.
    pub async fn close(&self, grace: Duration) {
        let shared = &self.shared;
        if shared.closing.swap(true, Ordering::AcqRel) {
            return;
        }
        let deadline = tokio::time::Instant::now() + grace;
        while shared.engine().pending() > 0 {
            tokio::select! {
                _ = shared.drained.notified() => {}
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        shared.closed.store(true, Ordering::Release);
        shared.run(|engine, _| engine.close());
        // The event-loop task ends by itself once the DISCONNECT is written.
        let disconnect_queued =
            shared.connected.swap(false, Ordering::AcqRel) && shared.outbox.disconnect().is_ok();
        let mut tasks = std::mem::take(&mut *lock(&self.tasks));
        if disconnect_queued && !tasks.is_empty() {
            driver::join_bounded(tasks.remove(0)).await;
        }
        let _ = shared.shutdown.send(true);
        for task in tasks {
            driver::join_bounded(task).await;
        }
    }

    /// Stops the tasks without waiting: for a failed connect and for `Drop`.
    fn stop(&self) {
        self.shared.closing.store(true, Ordering::Release);
        self.shared.closed.store(true, Ordering::Release);
        self.shared.connected.store(false, Ordering::Release);
        let _ = self.shared.shutdown.send(true);
    }
}

impl<W: Waiter> Drop for RpcClient<W> {
    fn drop(&mut self) {
        self.stop();
        for task in lock(&self.tasks).drain(..) {
            task.abort();
        }
    }
}

impl RpcClient<oneshot::Sender<Outcome>> {
    /// A call for Rust callers: publish, then wait for the one outcome.
    pub async fn call(&self, topic: &str, payload: &[u8], timeout: Duration) -> Outcome {
        let (tx, rx) = oneshot::channel();
        let request_id = self.start_call(topic, payload, timeout, || tx)?;
        let mut forget_on_drop = ForgetOnDrop {
            client: self,
            request_id: Some(request_id),
        };
        let outcome = rx.await.unwrap_or_else(|_| {
            Err(CallError::ConnectionLost(
                "the client was dropped while the call was waiting".into(),
            ))
        });
        forget_on_drop.request_id = None;
        outcome
    }
}

/// Cancellation for Rust callers: a dropped `call()` future forgets its call at once.
struct ForgetOnDrop<'a, W: Waiter> {
    client: &'a RpcClient<W>,
    request_id: Option<String>,
}

impl<W: Waiter> Drop for ForgetOnDrop<'_, W> {
    fn drop(&mut self) {
        if let Some(id) = self.request_id.take() {
            self.client.forget(&id);
        }
    }
}

/// Where a request's headers go: members of the body on 3.1.1 (the first), user
/// properties on MQTT 5 (the second).
fn headers_by_protocol(protocol: Protocol, headers: Headers) -> (Headers, Headers) {
    match protocol {
        Protocol::V311 => (headers, Vec::new()),
        Protocol::V5 => (Vec::new(), headers),
    }
}

/// The most a request's deadline adds once it is published: MQTT 5's Message Expiry
/// property, and `timeout_ms` (a user property, or a 3.1.1 body member) when propagated.
fn deadline_size(protocol: Protocol, carrier: DeadlineCarrier) -> usize {
    let expiry = if protocol == Protocol::V5 { 5 } else { 0 };
    // `, "timeout_ms": ` or a property's lengths and name, then up to 20 digits
    let member = if carrier == DeadlineCarrier::Nowhere {
        0
    } else {
        16 + 20
    };
    expiry + member
}

/// The size of the PUBLISH packet for a request (with the length of its reply topic) or a
/// notification (`None`), as the broker and rumqttc count it.
fn packet_size(
    topic: &str,
    request: &Outgoing,
    reply_topic_len: Option<usize>,
    protocol: Protocol,
) -> usize {
    // fixed header (up to 5) + topic length prefix + topic + packet id
    let base = 5 + 2 + topic.len() + 2 + request.body.len();
    if protocol == Protocol::V311 {
        return base;
    }
    // properties: their length; each user property's identifier and two length-prefixed
    // strings; a request's response topic (the reply topic) and correlation data (the id)
    let user_properties: usize = (request.user_properties.iter())
        .map(|(name, value)| 5 + name.len() + value.len())
        .sum();
    let routing = reply_topic_len.map_or(0, |len| 3 + len + 3 + 36);
    base + 4 + user_properties + routing
}
