//! The RPC client: one MQTT connection, its event-loop task, its deadline sweeper, and
//! `start_call()`, which turns a publish into a call that ends with exactly one outcome.
//!
//! It is generic over the `Waiter` that wakes a caller, so the same core serves Rust
//! callers (a oneshot) and the Python binding (a handle on an asyncio future) without
//! depending on pyo3. Locking: one mutex guards the pending table and the reply
//! subscriptions together; waiters are completed only after it is released, since
//! completing one may run a caller's code.

use crate::acks::{self, AckLedger, PubAckReason, Sent};
use crate::link::{
    self, ConnectionOptions, Events, Inbound, LinkError, LinkErrorKind, Outbox, Protocol,
};
use crate::metrics::LatencyHistogram;
use crate::pending::{Admission, Call, Gather, PendingTable, RecentlyAnswered, Stage};
use crate::pool::Load;
use crate::protocol::{self, InputError, RemoteError, Reply, ReplyOutcome};
use crate::quota::{Quotas, RateLimiter};
use crate::subscriptions::{Need, ReplySubscriptions, Room, Settled};
use bytes::Bytes;
use serde_json::{Map, Value};
use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch, Notify};
use tokio::task::JoinHandle;

/// Everything a client is configured with. `Default` gives a local broker on 1883.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub connection: ConnectionOptions,
    pub qos: u8,
    /// One filter that covers every reply; then no per-topic reply subscription is made.
    pub reply_filter: Option<String>,
    /// Inbox reply mode: replies go to `{inbox_prefix}/{client_id}/{request_id}`, and the
    /// client's one subscription is `{inbox_prefix}/{client_id}/+`, however many devices.
    pub inbox_prefix: Option<String>,
    /// At most this many reply filters are held at once: to make room the least recently
    /// used idle one is unsubscribed first; with none idle a call waits for one.
    pub max_reply_subscriptions: usize,
    /// Limits kept on the client (publish rate, unacknowledged QoS 1 publishes).
    pub quotas: Quotas,
    /// Calls published and unanswered at once; more wait for a slot within their timeout.
    pub max_in_flight: usize,
    /// Reconnect attempts wait `reconnect_min_delay`, doubling up to `reconnect_max_delay`,
    /// each scaled by a random factor in [0.5, 1] so that a fleet of clients does not
    /// return to a restarted broker all at once.
    pub reconnect_min_delay: Duration,
    pub reconnect_max_delay: Duration,
    /// While the connection is down, fail new calls at once with `NotConnected` instead of
    /// holding them until it is back (within their own timeout).
    pub fail_fast: bool,
    /// Refuse request topics whose reply topic breaks AWS IoT Core's topic rules.
    pub aws_topic_rules: bool,
    /// When a published call times out or is cancelled, publish `{"request_id", "cancel":
    /// true}` to its request topic so that the device can stop its work.
    pub cancel_on_abandon: bool,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            connection: ConnectionOptions::default(),
            qos: 0,
            reply_filter: None,
            inbox_prefix: None,
            max_reply_subscriptions: 1000,
            quotas: Quotas::default(),
            max_in_flight: 4096,
            reconnect_min_delay: Duration::from_millis(100),
            reconnect_max_delay: Duration::from_secs(10),
            fail_fast: false,
            aws_topic_rules: false,
            cancel_on_abandon: false,
        }
    }
}

/// A request checked and built by `prepare`, ready for `start`.
#[derive(Debug)]
pub struct Prepared {
    pub request_id: String,
    topic: String,
    request: Vec<u8>,
    /// A scatter-gather request, and how many answers end it (`None`: its deadline).
    gather: Option<Option<usize>>,
}

/// Why a call did not get an answer.
#[derive(Debug, Clone, PartialEq)]
pub enum CallError {
    /// Refused before anything was sent.
    Input(InputError),
    /// No answer before the deadline. `throttled`: the call was still waiting for the
    /// client's publish-rate limit (this many per second) and was never sent.
    Timeout {
        topic: Arc<str>,
        throttled: Option<usize>,
    },
    /// The device answered with an error object.
    Remote(RemoteError),
    /// The client is not connected (never was, or was closed).
    NotConnected(String),
    /// TLS could not be set up (files, keys) or its handshake failed.
    Tls(String),
    /// The broker refused the connection (bad credentials, not authorised, ...).
    Refused(String),
    /// The connection, or the client, went away while the call waited.
    ConnectionLost(String),
    /// The broker refused the reply subscription, so no answer could arrive.
    SubscribeRefused { filter: String },
    /// MQTT 5: the broker acknowledged the request with "No matching subscribers".
    NoResponders { topic: Arc<str> },
    /// MQTT 5: the broker acknowledged the request with a failing reason code.
    PublishRejected { topic: Arc<str>, reason_code: u8 },
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Input(e) => e.fmt(f),
            CallError::Timeout {
                topic,
                throttled: None,
            } => write!(f, "no answer in time for topic '{topic}'"),
            CallError::Timeout {
                topic,
                throttled: Some(rate),
            } => write!(
                f,
                "no answer in time for topic '{topic}': {}",
                throttled_reason(*rate)
            ),
            CallError::Remote(e) => write!(f, "remote error {}: {}", e.code, e.message),
            CallError::NotConnected(why)
            | CallError::ConnectionLost(why)
            | CallError::Tls(why)
            | CallError::Refused(why) => f.write_str(why),
            CallError::SubscribeRefused { filter } => write!(
                f,
                "the broker refused the reply subscription '{filter}', so no answer can arrive"
            ),
            CallError::NoResponders { topic } => write!(
                f,
                "no responders: nobody is subscribed to '{topic}' (the broker said so in its PUBACK)"
            ),
            CallError::PublishRejected { topic, reason_code } => write!(
                f,
                "the broker rejected the request to '{topic}': PUBACK reason {reason_code} ({})",
                acks::reason_name(*reason_code)
            ),
        }
    }
}

impl std::error::Error for CallError {}

/// Why a throttled call never went out, as its timeout message says it.
pub fn throttled_reason(rate: usize) -> String {
    format!(
        "throttled on the client, the request was never sent (publish rate limit of {rate}/s per connection)"
    )
}

/// A call's single result: the device's reply object, or why there is none.
pub type Outcome = Result<Map<String, Value>, CallError>;

/// Whatever wakes the caller of one call. `complete` is called exactly once, from a tokio
/// thread or the caller's own, and never while the client's lock is held.
pub trait Waiter: Send + 'static {
    fn complete(self, outcome: Outcome);

    /// An interim progress message for the call (before its answer). Called with the
    /// client's lock held: it must only hand the message on. Most waiters ignore it.
    fn progress(&self, _message: Map<String, Value>) {}
}

impl Waiter for oneshot::Sender<Outcome> {
    fn complete(self, outcome: Outcome) {
        // The receiver is gone only if the caller stopped waiting: nothing to tell.
        let _ = self.send(outcome);
    }
}

/// A change of the connection, reported to the sink given to `set_event_sink`.
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
    },
}

/// Receives connection events on a tokio thread: it must not block.
pub type EventSink = Box<dyn Fn(ConnectionEvent) + Send + Sync>;

/// Counters that only grow, plus the gauges derived from the live tables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub calls_started: u64,
    pub calls_succeeded: u64,
    pub calls_timed_out: u64,
    pub calls_failed_remotely: u64,
    pub calls_cancelled: u64,
    pub calls_failed: u64,
    /// MQTT 5 calls ended at once by a PUBACK: no subscriber, or rejected by the broker.
    pub calls_no_responders: u64,
    pub calls_rejected: u64,
    pub replies_dropped_stray: u64,
    pub replies_dropped_duplicate: u64,
    pub replies_dropped_malformed: u64,
    pub progress_received: u64,
    /// Calls that waited for the publish-rate limit, and how long they waited in all.
    pub calls_throttled: u64,
    pub throttled_wait: Duration,
    pub publish_rate_limit: Option<usize>,
    pub reply_subscriptions_limit: usize,
    /// Answers collected by scatter-gather calls (each device's once).
    pub replies_gathered: u64,
    pub reconnects: u64,
    pub pending: u64,
    pub reply_subscriptions: u64,
    /// Latency percentiles of answered calls, when there are any.
    pub latency_p50: Option<Duration>,
    pub latency_p90: Option<Duration>,
    pub latency_p99: Option<Duration>,
}

impl Stats {
    /// Adds another connection's counters and gauges (not its latency percentiles).
    pub fn add(&mut self, other: &Stats) {
        self.calls_started += other.calls_started;
        self.calls_succeeded += other.calls_succeeded;
        self.calls_timed_out += other.calls_timed_out;
        self.calls_failed_remotely += other.calls_failed_remotely;
        self.calls_cancelled += other.calls_cancelled;
        self.calls_failed += other.calls_failed;
        self.calls_no_responders += other.calls_no_responders;
        self.calls_rejected += other.calls_rejected;
        self.replies_dropped_stray += other.replies_dropped_stray;
        self.replies_dropped_duplicate += other.replies_dropped_duplicate;
        self.replies_dropped_malformed += other.replies_dropped_malformed;
        self.progress_received += other.progress_received;
        self.calls_throttled += other.calls_throttled;
        self.throttled_wait += other.throttled_wait;
        self.publish_rate_limit = match (self.publish_rate_limit, other.publish_rate_limit) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
        self.reply_subscriptions_limit += other.reply_subscriptions_limit;
        self.replies_gathered += other.replies_gathered;
        self.reconnects += other.reconnects;
        self.pending += other.pending;
        self.reply_subscriptions += other.reply_subscriptions;
    }
}

#[derive(Default)]
struct Counters {
    started: AtomicU64,
    succeeded: AtomicU64,
    timed_out: AtomicU64,
    remote: AtomicU64,
    cancelled: AtomicU64,
    failed: AtomicU64,
    no_responders: AtomicU64,
    rejected: AtomicU64,
    stray: AtomicU64,
    duplicate: AtomicU64,
    progress: AtomicU64,
    throttled: AtomicU64,
    throttled_wait_us: AtomicU64,
    gathered: AtomicU64,
    malformed: AtomicU64,
    reconnects: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

struct State<W> {
    calls: PendingTable<W>,
    recent: RecentlyAnswered,
    subscriptions: ReplySubscriptions,
    /// The key of the user's `reply_filter` in `subscriptions`, if one was given.
    pinned: Option<Arc<str>>,
    /// Told once the connection is up and the `reply_filter` held (or that it failed).
    ready: Option<oneshot::Sender<Result<(), CallError>>>,
    /// The publish-rate quota, and what waits for it, in order.
    limiter: Option<RateLimiter>,
    throttled: VecDeque<Throttled>,
    /// Calls whose new reply filter found every place taken by filters in use.
    waiting_for_room: VecDeque<String>,
}

/// A publish waiting for the publish-rate limit.
enum Throttled {
    Call {
        request_id: String,
        since: Instant,
    },
    /// A notification or a cancellation.
    Message {
        topic: Arc<str>,
        body: Vec<u8>,
    },
}

/// Waiters to wake once the lock is released.
type Wakeups<W> = Vec<(W, Outcome)>;

struct Shared<W> {
    options: ClientOptions,
    outbox: Outbox,
    state: Mutex<State<W>>,
    /// MQTT 5 with QoS 1: which call each PUBACK acknowledges. Locked after `state`,
    /// never before it.
    acks: Option<Mutex<AckLedger>>,
    counters: Counters,
    /// From `start` to the answer, for answered calls (results and remote errors).
    latency: LatencyHistogram,
    /// `connect()` was called: from then on calls are accepted (and queued while the
    /// connection is down), until `close()`.
    connect_started: AtomicBool,
    connected: AtomicBool,
    /// The broker's Maximum Packet Size from its CONNACK (MQTT 5), or `usize::MAX`.
    broker_max_packet: std::sync::atomic::AtomicUsize,
    /// `close()` began: no new calls; it waits (bounded) for the table to empty.
    closing: AtomicBool,
    closed: AtomicBool,
    drained: Notify,
    timer_wake: Notify,
    shutdown: watch::Sender<bool>,
    event_sink: std::sync::OnceLock<EventSink>,
    tls_error: Option<String>,
}

/// An MQTT RPC client. Dropping it stops its tasks and drops the connection.
pub struct RpcClient<W: Waiter> {
    shared: Arc<Shared<W>>,
    events: Mutex<Option<Events>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl<W: Waiter> RpcClient<W> {
    /// Checks the options and prepares the connection; nothing is sent before `connect()`.
    pub fn new(options: ClientOptions) -> Result<Self, InputError> {
        if let Some(filter) = &options.reply_filter {
            protocol::validate_filter(filter)?;
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
        let shared = Shared {
            acks,
            state: Mutex::new(State {
                calls: PendingTable::new(max_in_flight),
                recent: RecentlyAnswered::default(),
                subscriptions: ReplySubscriptions::new(options.max_reply_subscriptions),
                pinned: None,
                ready: None,
                limiter: options.quotas.publishes_per_second.map(RateLimiter::new),
                throttled: VecDeque::new(),
                waiting_for_room: VecDeque::new(),
            }),
            options,
            outbox,
            counters: Counters::default(),
            latency: LatencyHistogram::default(),
            connect_started: AtomicBool::new(false),
            connected: AtomicBool::new(false),
            broker_max_packet: std::sync::atomic::AtomicUsize::new(usize::MAX),
            closing: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            drained: Notify::new(),
            timer_wake: Notify::new(),
            shutdown,
            event_sink: std::sync::OnceLock::new(),
            tls_error,
        };
        Ok(RpcClient {
            shared: Arc::new(shared),
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
        // One filter for every reply: the user's reply_filter, or the client's inbox.
        let pinned_filter = match (&shared.options.reply_filter, &shared.options.inbox_prefix) {
            (Some(filter), _) => Some(filter.clone()),
            (None, Some(prefix)) => Some(format!(
                "{prefix}/{}/+",
                shared.options.connection.client_id
            )),
            (None, None) => None,
        };
        let (ready_tx, ready_rx) = oneshot::channel();
        {
            let mut state = shared.lock();
            state.ready = Some(ready_tx);
            if let Some(filter) = &pinned_filter {
                let key = state.subscriptions.pin(filter);
                state.pinned = Some(key);
            }
        }
        if let Some(filter) = &pinned_filter {
            if shared.outbox.subscribe(filter, shared.options.qos).is_err() {
                return Err(CallError::NotConnected(
                    "could not queue the reply filter's subscription".into(),
                ));
            }
        }
        {
            let mut tasks = lock(&self.tasks);
            tasks.push(tokio::spawn(drive_events(shared.clone(), events)));
            tasks.push(tokio::spawn(sweep_deadlines(shared.clone())));
        }
        let connection = &shared.options.connection;
        let address = format!("{}:{}", connection.host, connection.port);
        // The event loop reports its own connect timeout; this bound also covers the SUBACK.
        let bound = connection.connect_timeout + Duration::from_secs(1);
        let failure = match tokio::time::timeout(bound, ready_rx).await {
            Ok(Ok(Ok(()))) => return Ok(()),
            Ok(Ok(Err(error))) => error,
            Ok(Err(_)) => CallError::NotConnected("the connection task ended".into()),
            Err(_) => CallError::NotConnected(format!(
                "no answer within {:?}",
                connection.connect_timeout
            )),
        };
        self.stop();
        let context =
            |why: &str| format!("could not connect to the MQTT broker at {address}: {why}");
        Err(match failure {
            CallError::Tls(why) => CallError::Tls(context(&why)),
            CallError::Refused(why) => CallError::Refused(context(&why)),
            // A broker without MQTT 5 closes the connection at CONNECT, or never answers.
            other if connection.protocol == Protocol::V5 && hints_no_mqtt5(&other) => CallError::NotConnected(format!(
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
        let prepared = self.prepare(topic, payload, None)?;
        Ok(self.start(prepared, timeout, make_waiter()))
    }

    /// Checks a request and builds its body, sending nothing: a batch is prepared whole
    /// before any of it is sent. A retry passes the `request_id` of its first attempt, so
    /// that the device can recognise the repeat.
    pub fn prepare(
        &self,
        topic: &str,
        payload: &[u8],
        request_id: Option<&str>,
    ) -> Result<Prepared, CallError> {
        self.prepare_request(topic, payload, request_id, None)
    }

    /// Prepares a scatter-gather request: sent once (typically to a group topic that many
    /// devices subscribe to), it asks every device to answer and name itself; the call
    /// collects answers, each device's once, until its deadline or `max_replies`.
    pub fn prepare_gather(
        &self,
        topic: &str,
        payload: &[u8],
        max_replies: Option<usize>,
    ) -> Result<Prepared, CallError> {
        self.prepare_request(topic, payload, None, Some(max_replies.map(|n| n.max(1))))
    }

    fn prepare_request(
        &self,
        topic: &str,
        payload: &[u8],
        request_id: Option<&str>,
        gather: Option<Option<usize>>,
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
                if shared.lock().calls.contains(id) {
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
        let inbox_topic = shared
            .options
            .inbox_prefix
            .as_ref()
            .map(|_| shared.reply_topic(topic, &request_id));
        let request = protocol::build_request(
            payload,
            &request_id,
            inbox_topic.as_deref(),
            gather.is_some(),
        )
        .map_err(CallError::Input)?;
        let reply_topic_len = match &inbox_topic {
            Some(inbox) => inbox.len(),
            None => protocol::reply_topic_len(topic),
        };
        let size = packet_size(topic, &request, reply_topic_len, shared.outbox.protocol());
        let limit = shared.max_packet_size();
        if size > limit {
            return Err(CallError::Input(InputError::TooLarge { size, limit }));
        }
        Ok(Prepared {
            request_id,
            topic: topic.to_owned(),
            request,
            gather,
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
    pub fn notify(&self, topic: &str, payload: &[u8]) -> Result<(), CallError> {
        self.accepting()?;
        protocol::validate_request_topic(topic).map_err(CallError::Input)?;
        protocol::check_object(payload).map_err(CallError::Input)?;
        let size = packet_size(topic, payload, 0, Protocol::V311);
        let limit = self.shared.max_packet_size();
        if size > limit {
            return Err(CallError::Input(InputError::TooLarge { size, limit }));
        }
        let mut state = self.shared.lock();
        self.shared
            .send_message(&mut state, Arc::from(topic), payload.to_vec())
            .map_err(|_| Shared::<W>::unsent())
    }

    /// Sends a prepared request (or queues it for a slot or its reply filter's SUBACK);
    /// `waiter` hears its one outcome. Returns its request id.
    pub fn start(&self, prepared: Prepared, timeout: Duration, waiter: W) -> String {
        let shared = &self.shared;
        let Prepared {
            request_id,
            topic,
            request,
            gather,
        } = prepared;
        bump(&shared.counters.started);
        let started = Instant::now();
        // A timeout too long to represent waits, in practice, for ever.
        let deadline = started
            .checked_add(timeout)
            .unwrap_or(started + Duration::from_secs(86_400 * 365));
        let mut wakeups = Vec::new();
        let earliest = {
            let mut state = shared.lock();
            let topic_key = state
                .subscriptions
                .key_for(&topic)
                .unwrap_or_else(|| Arc::from(topic.as_str()));
            let (admission, earliest) = state.calls.insert(
                request_id.clone(),
                topic_key,
                request,
                (started, deadline),
                waiter,
            );
            if let (Some(max_replies), Some(call)) = (gather, state.calls.get_mut(&request_id)) {
                call.gather = Some(Gather::new(max_replies));
            }
            if admission == Admission::Admitted {
                shared.admit(&mut state, &request_id, &mut wakeups);
            }
            earliest
        };
        if earliest {
            shared.timer_wake.notify_one();
        }
        shared.wake(wakeups);
        request_id
    }

    /// The caller gave up (its task was cancelled): drop the call now, not at its deadline.
    /// Returns whether it was still pending.
    pub fn forget(&self, request_id: &str) -> bool {
        let shared = &self.shared;
        let mut wakeups = Vec::new();
        let call = {
            let mut state = shared.lock();
            let call = shared.take_call(&mut state, request_id, &mut wakeups);
            if let Some(call) = &call {
                bump(&shared.counters.cancelled);
                shared.abandoned(&mut state, request_id, call);
            }
            call
        };
        let found = call.is_some();
        // The waiter may hold a caller's object: let it go outside the lock.
        drop(call);
        shared.wake(wakeups);
        found
    }

    /// Calls not yet ended, in every stage (waiting for a slot, a SUBACK, or the answer).
    pub fn pending(&self) -> usize {
        self.shared.lock().calls.len()
    }

    /// Reply filters held or being subscribed.
    pub fn reply_subscriptions(&self) -> usize {
        self.shared.lock().subscriptions.len()
    }

    pub fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::Acquire)
    }

    /// How much room this connection has for a call on `topic` (for a pool's choice).
    pub fn load(&self, topic: &str) -> Load {
        let connected = self.is_connected();
        let state = self.shared.lock();
        let key = state.pinned.as_deref().unwrap_or(topic);
        let throttled = !Shared::<W>::has_publish_place(&state);
        Load {
            connected,
            throttled,
            pending: state.calls.len(),
            holds_reply_filter: state.subscriptions.is_active(key),
        }
    }

    pub fn latency_histogram(&self) -> &LatencyHistogram {
        &self.shared.latency
    }

    pub fn stats(&self) -> Stats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (pending, reply_subscriptions, reply_subscriptions_limit, publish_rate_limit) = {
            let state = self.shared.lock();
            (
                state.calls.len(),
                state.subscriptions.len(),
                state.subscriptions.limit(),
                state.limiter.as_ref().map(RateLimiter::per_second),
            )
        };
        Stats {
            calls_started: get(&c.started),
            calls_succeeded: get(&c.succeeded),
            calls_timed_out: get(&c.timed_out),
            calls_failed_remotely: get(&c.remote),
            calls_cancelled: get(&c.cancelled),
            calls_failed: get(&c.failed),
            calls_no_responders: get(&c.no_responders),
            calls_rejected: get(&c.rejected),
            replies_dropped_stray: get(&c.stray),
            replies_dropped_duplicate: get(&c.duplicate),
            replies_dropped_malformed: get(&c.malformed),
            progress_received: get(&c.progress),
            calls_throttled: get(&c.throttled),
            throttled_wait: Duration::from_micros(get(&c.throttled_wait_us)),
            publish_rate_limit,
            reply_subscriptions_limit,
            replies_gathered: get(&c.gathered),
            reconnects: get(&c.reconnects),
            pending: pending as u64,
            reply_subscriptions: reply_subscriptions as u64,
            latency_p50: self.shared.latency.percentile(0.50),
            latency_p90: self.shared.latency.percentile(0.90),
            latency_p99: self.shared.latency.percentile(0.99),
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
        while !shared.lock().calls.is_empty() {
            tokio::select! {
                _ = shared.drained.notified() => {}
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        shared.closed.store(true, Ordering::Release);
        let calls = shared.lock().calls.drain();
        for (_, call) in calls {
            bump(&shared.counters.failed);
            call.waiter.complete(Err(CallError::ConnectionLost(
                "the client was closed while the call was waiting".into(),
            )));
        }
        // The event-loop task ends by itself once the DISCONNECT is written.
        let disconnect_queued =
            shared.connected.swap(false, Ordering::AcqRel) && shared.outbox.disconnect().is_ok();
        let mut tasks = std::mem::take(&mut *lock(&self.tasks));
        if disconnect_queued && !tasks.is_empty() {
            join_bounded(tasks.remove(0)).await;
        }
        let _ = shared.shutdown.send(true);
        for task in tasks {
            join_bounded(task).await;
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

fn hints_no_mqtt5(error: &CallError) -> bool {
    let message = error.to_string();
    message.contains("closed") || message.contains("no answer within")
}

/// Waits for a task to end, at most two seconds, then aborts it.
async fn join_bounded(mut task: JoinHandle<()>) {
    if tokio::time::timeout(Duration::from_secs(2), &mut task)
        .await
        .is_err()
    {
        task.abort();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave the tables half-updated in a way that
    // matters more than stopping every caller would: keep going with the data as it is.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The size of the PUBLISH packet for a request, as the broker and rumqttc count it.
fn packet_size(topic: &str, request: &[u8], reply_topic_len: usize, protocol: Protocol) -> usize {
    // fixed header (up to 5) + topic length prefix + topic + packet id
    let base = 5 + 2 + topic.len() + 2 + request.len();
    match protocol {
        Protocol::V311 => base,
        // properties: length, response topic (the reply topic), correlation data (the id)
        Protocol::V5 => base + 4 + 3 + reply_topic_len + 3 + 36,
    }
}

impl<W: Waiter> Shared<W> {
    fn lock(&self) -> MutexGuard<'_, State<W>> {
        lock(&self.state)
    }

    /// A published call nobody waits for any more (timed out, or its caller cancelled): with
    /// `cancel_on_abandon`, tell the device, which may stop working on it.
    fn abandoned(&self, state: &mut State<W>, request_id: &str, call: &Call<W>) {
        if !self.options.cancel_on_abandon || call.stage != Stage::Published {
            return;
        }
        let body = protocol::cancel_request(request_id);
        // Best effort: a cancellation that cannot be queued changes nothing for the caller.
        let _ = self.send_message(state, call.topic.clone(), body);
    }

    /// A publish that answers to no call (a notification, a cancellation): sent now, or
    /// queued behind the calls waiting for the publish-rate limit.
    fn send_message(
        &self,
        state: &mut State<W>,
        topic: Arc<str>,
        body: Vec<u8>,
    ) -> Result<(), link::Unsent> {
        if Self::take_publish_place(state) {
            self.send(&topic, body, None, None, None)
        } else {
            state
                .throttled
                .push_back(Throttled::Message { topic, body });
            self.timer_wake.notify_one();
            Ok(())
        }
    }

    /// Whether a publish could go now under the publish-rate limit (taking nothing).
    fn has_publish_place(state: &State<W>) -> bool {
        match &state.limiter {
            None => true,
            Some(limiter) => state.throttled.is_empty() && limiter.has_place(Instant::now()),
        }
    }

    /// Whether a publish may go now under the publish-rate limit (it takes its place if
    /// so); never ahead of publishes already waiting for it.
    fn take_publish_place(state: &mut State<W>) -> bool {
        let State {
            limiter, throttled, ..
        } = state;
        match limiter {
            None => true,
            Some(limiter) => throttled.is_empty() && limiter.try_take(Instant::now()),
        }
    }

    /// Sends what waited for the publish-rate limit, in order, as far as it now allows.
    fn release_throttled(&self) {
        let mut wakeups = Vec::new();
        {
            let mut state = self.lock();
            let now = Instant::now();
            loop {
                let State {
                    limiter, throttled, ..
                } = &mut *state;
                let (Some(limiter), false) = (limiter.as_mut(), throttled.is_empty()) else {
                    break;
                };
                if !limiter.try_take(now) {
                    break;
                }
                match throttled.pop_front() {
                    Some(Throttled::Call { request_id, since }) => {
                        bump(&self.counters.throttled);
                        let waited = u64::try_from(since.elapsed().as_micros()).unwrap_or(0);
                        self.counters
                            .throttled_wait_us
                            .fetch_add(waited, Ordering::Relaxed);
                        self.publish_now(&mut state, &request_id, &mut wakeups);
                    }
                    Some(Throttled::Message { topic, body }) => {
                        let _ = self.send(&topic, body, None, None, None);
                    }
                    None => break,
                }
            }
        }
        self.wake(wakeups);
    }

    /// When the sweeper must next look at the throttled publishes, if any wait.
    fn next_release(&self, state: &State<W>) -> Option<Instant> {
        if state.throttled.is_empty() {
            return None;
        }
        let limiter = state.limiter.as_ref()?;
        Some(limiter.next_free().unwrap_or_else(Instant::now))
    }

    /// The largest request to send: ours, or the broker's if it announced a smaller one
    /// (a larger publish would make it drop the connection).
    fn max_packet_size(&self) -> usize {
        self.options
            .connection
            .max_packet_size
            .min(self.broker_max_packet.load(Ordering::Acquire))
    }

    /// Publishes with the client's QoS; on MQTT 5 with QoS 1 the publish is also entered
    /// in the PUBACK ledger, under its lock, so that the ledger's order is rumqttc's.
    fn send(
        &self,
        topic: &str,
        body: Vec<u8>,
        response_topic: Option<String>,
        correlation_data: Option<Bytes>,
        call: Option<Sent>,
    ) -> Result<(), link::Unsent> {
        let qos = self.options.qos;
        let Some(acks) = &self.acks else {
            return self
                .outbox
                .publish(topic, qos, body, response_topic, correlation_data);
        };
        let mut ledger = lock(acks);
        let sent = self
            .outbox
            .publish(topic, qos, body, response_topic, correlation_data);
        if sent.is_ok() {
            ledger.queued(call);
        }
        sent
    }

    fn with_ledger(&self, update: impl FnOnce(&mut AckLedger)) {
        if let Some(acks) = &self.acks {
            update(&mut lock(acks));
        }
    }

    /// A PUBACK: on MQTT 5, "no matching subscribers" or a refusal ends its call at once.
    fn on_puback(&self, packet_id: u16, code: u8) {
        let Some(acks) = &self.acks else {
            return;
        };
        let reason = PubAckReason::from_code(code);
        let Some(sent) = lock(acks).acknowledged(packet_id, reason) else {
            return;
        };
        let mut wakeups = Vec::new();
        {
            let mut state = self.lock();
            let Some(call) = state.calls.get_mut(&sent.request_id) else {
                return;
            };
            if call.seq() != sent.call_seq {
                return;
            }
            let topic = call.topic.clone();
            let (error, counter) = match reason {
                PubAckReason::Success => return,
                PubAckReason::NoMatchingSubscribers => (
                    CallError::NoResponders { topic },
                    &self.counters.no_responders,
                ),
                PubAckReason::Rejected(reason_code) => (
                    CallError::PublishRejected { topic, reason_code },
                    &self.counters.rejected,
                ),
            };
            if let Some(call) = self.take_call(&mut state, &sent.request_id, &mut wakeups) {
                bump(counter);
                wakeups.push((call.waiter, Err(error)));
            }
        }
        self.wake(wakeups);
    }

    /// Where the answer to one call goes: the client's inbox, or the seed reply topic.
    fn reply_topic(&self, request_topic: &str, request_id: &str) -> String {
        match &self.options.inbox_prefix {
            Some(prefix) => format!(
                "{prefix}/{}/{request_id}",
                self.options.connection.client_id
            ),
            None => protocol::reply_topic(request_topic, request_id),
        }
    }

    fn wake(&self, wakeups: Wakeups<W>) {
        for (waiter, outcome) in wakeups {
            waiter.complete(outcome);
        }
    }

    /// The subscription key of a call: the pinned `reply_filter`, or its request topic.
    fn subscription_key(state: &State<W>, topic: &Arc<str>) -> Arc<str> {
        state.pinned.clone().unwrap_or_else(|| topic.clone())
    }

    /// A call that holds a slot: make sure its reply filter is held, then publish.
    fn admit(&self, state: &mut State<W>, request_id: &str, wakeups: &mut Wakeups<W>) {
        let Some(call) = state.calls.get_mut(request_id) else {
            return;
        };
        let topic = call.topic.clone();
        let key = Self::subscription_key(state, &topic);
        let pinned = state.pinned.is_some();
        if !pinned && !state.subscriptions.contains(&key) {
            match state.subscriptions.make_room() {
                Room::Available => {}
                Room::Evicted(idle) => {
                    for filter in idle {
                        let _ = self.outbox.unsubscribe(&filter);
                    }
                }
                Room::Full => {
                    state.waiting_for_room.push_back(request_id.to_owned());
                    return;
                }
            }
        }
        let need = state.subscriptions.acquire(&key, request_id, |k| {
            if pinned {
                k.to_owned()
            } else {
                protocol::reply_filter_for(k)
            }
        });
        match need {
            Need::Ready => self.publish(state, request_id, wakeups),
            Need::Wait => {}
            Need::Subscribe(filter) => {
                if self.outbox.subscribe(&filter, self.options.qos).is_err() {
                    for id in state.subscriptions.subscribe_failed(&key) {
                        self.fail(state, &id, Self::unsent(), wakeups);
                    }
                }
                for idle in state.subscriptions.evict_idle() {
                    let _ = self.outbox.unsubscribe(&idle);
                }
            }
        }
    }

    fn unsent() -> CallError {
        CallError::ConnectionLost(
            "the request could not be queued: the connection is closed or its queue is full".into(),
        )
    }

    fn publish(&self, state: &mut State<W>, request_id: &str, wakeups: &mut Wakeups<W>) {
        // Without a publish-rate limit (the common case) nothing is checked here.
        if state.limiter.is_some()
            && state.calls.contains(request_id)
            && !Self::take_publish_place(state)
        {
            if let Some(call) = state.calls.get_mut(request_id) {
                call.stage = Stage::WaitingForToken;
            }
            state.throttled.push_back(Throttled::Call {
                request_id: request_id.to_owned(),
                since: Instant::now(),
            });
            self.timer_wake.notify_one();
            return;
        }
        self.publish_now(state, request_id, wakeups);
    }

    fn publish_now(&self, state: &mut State<W>, request_id: &str, wakeups: &mut Wakeups<W>) {
        let Some(call) = state.calls.get_mut(request_id) else {
            return;
        };
        let Some(request) = call.request.take() else {
            return;
        };
        call.stage = Stage::Published;
        let (response_topic, correlation_data) = match self.outbox.protocol() {
            Protocol::V311 => (None, None),
            Protocol::V5 => (
                Some(self.reply_topic(&call.topic, request_id)),
                Some(Bytes::copy_from_slice(request_id.as_bytes())),
            ),
        };
        let sent = Sent {
            request_id: request_id.to_owned(),
            call_seq: call.seq(),
        };
        let topic = call.topic.clone();
        let sent = self.send(
            &topic,
            request,
            response_topic,
            correlation_data,
            Some(sent),
        );
        if sent.is_err() {
            self.fail(state, request_id, Self::unsent(), wakeups);
        }
    }

    /// Removes a call and gives its slot to the next queued one.
    fn take_call(
        &self,
        state: &mut State<W>,
        request_id: &str,
        wakeups: &mut Wakeups<W>,
    ) -> Option<Call<W>> {
        let call = state.calls.remove(request_id)?;
        if call.stage == Stage::WaitingForToken {
            state.throttled.retain(
                |t| !matches!(t, Throttled::Call { request_id: id, .. } if id == request_id),
            );
        }
        if !state.waiting_for_room.is_empty() {
            state.waiting_for_room.retain(|id| id != request_id);
        }
        if call.stage != Stage::WaitingForSlot {
            let key = Self::subscription_key(state, &call.topic);
            for filter in state.subscriptions.release(&key, request_id) {
                // An unsubscribe that cannot be queued leaves a harmless extra filter.
                let _ = self.outbox.unsubscribe(&filter);
            }
            // A filter may have become idle: calls waiting for room try again, in order.
            for id in std::mem::take(&mut state.waiting_for_room) {
                self.admit(state, &id, wakeups);
            }
            while let Some(next) = state.calls.admit_next() {
                self.admit(state, &next, wakeups);
            }
        }
        if state.calls.is_empty() && self.closing.load(Ordering::Acquire) {
            self.drained.notify_one();
        }
        Some(call)
    }

    fn fail(
        &self,
        state: &mut State<W>,
        request_id: &str,
        error: CallError,
        wakeups: &mut Wakeups<W>,
    ) {
        if let Some(call) = self.take_call(state, request_id, wakeups) {
            bump(&self.counters.failed);
            wakeups.push((call.waiter, Err(error)));
        }
    }

    fn on_inbound(&self, inbound: Inbound) {
        match inbound {
            Inbound::Message {
                topic,
                payload,
                correlation_data,
                ..
            } => self.on_reply(&topic, &payload, correlation_data.as_deref()),
            Inbound::SubscribeSent(packet_id) => self.lock().subscriptions.sent(packet_id),
            Inbound::PublishWritten(packet_id) => self.with_ledger(|l| l.written(packet_id)),
            Inbound::PublishHeldBack(packet_id) => self.with_ledger(|l| l.held_back(packet_id)),
            Inbound::PubAck { packet_id, reason } => self.on_puback(packet_id, reason),
            Inbound::SubAck { packet_id, granted } => self.on_suback(packet_id, granted),
            Inbound::Connected {
                session_present,
                max_packet_size,
                ..
            } => {
                let broker_limit = max_packet_size
                    .and_then(|size| usize::try_from(size).ok())
                    .unwrap_or(usize::MAX);
                self.broker_max_packet
                    .store(broker_limit, Ordering::Release);
                self.on_connected(session_present)
            }
            Inbound::DisconnectSent | Inbound::Other => {}
        }
    }

    fn emit(&self, event: ConnectionEvent) {
        if let Some(sink) = self.event_sink.get() {
            sink(event);
        }
    }

    fn on_connected(&self, session_present: bool) {
        self.connected.store(true, Ordering::Release);
        self.with_ledger(|l| l.reconnected(session_present));
        let mut wakeups = Vec::new();
        {
            let mut state = self.lock();
            if state.ready.is_some() {
                // The first connection: ready now, or once the reply_filter's SUBACK arrives.
                if state.pinned.is_none() {
                    if let Some(ready) = state.ready.take() {
                        let _ = ready.send(Ok(()));
                    }
                }
                drop(state);
                self.emit(ConnectionEvent::Connected {
                    reconnect: false,
                    session_present,
                });
                return;
            }
            bump(&self.counters.reconnects);
            let (ready, to_subscribe) = state.subscriptions.reconnected(session_present);
            for filter in to_subscribe {
                // A SUBSCRIBE that cannot be queued is retried at the next reconnect; its
                // calls wait within their timeouts.
                let _ = self.outbox.subscribe(&filter, self.options.qos);
            }
            for id in ready {
                self.publish(&mut state, &id, &mut wakeups);
            }
        }
        self.wake(wakeups);
        self.emit(ConnectionEvent::Connected {
            reconnect: true,
            session_present,
        });
    }

    fn on_suback(&self, packet_id: u16, granted: bool) {
        let mut wakeups = Vec::new();
        {
            let mut state = self.lock();
            match state.subscriptions.acknowledged(packet_id, granted) {
                Settled::Granted(waiting) => {
                    for id in waiting {
                        self.publish(&mut state, &id, &mut wakeups);
                    }
                    if state.pinned.is_some() {
                        if let Some(ready) = state.ready.take() {
                            let _ = ready.send(Ok(()));
                        }
                    }
                }
                Settled::Refused { filter, waiting } => {
                    for id in waiting {
                        let error = CallError::SubscribeRefused {
                            filter: filter.clone(),
                        };
                        self.fail(&mut state, &id, error, &mut wakeups);
                    }
                    if let Some(ready) = state.ready.take() {
                        let _ = ready.send(Err(CallError::SubscribeRefused { filter }));
                    }
                }
                Settled::Nothing => {}
            }
        }
        self.wake(wakeups);
    }

    /// A message on a reply filter. Correlation: the MQTT 5 Correlation Data when present,
    /// else the topic's last level, else the body's `request_id`. Anything that matches no
    /// pending call, or names another id than the one it was matched by, is dropped and
    /// counted: it never completes the wrong call.
    fn on_reply(&self, topic: &str, payload: &[u8], correlation_data: Option<&[u8]>) {
        let reply = match Reply::parse(payload) {
            Ok(reply) => reply,
            Err(_) => {
                bump(&self.counters.malformed);
                return;
            }
        };
        let mut wakeups = Vec::new();
        let outcome_for = {
            let mut state = self.lock();
            let request_id = match correlation_data {
                Some(data) => std::str::from_utf8(data).ok().map(str::to_owned),
                None => {
                    let last = protocol::last_level(topic);
                    if state.calls.contains(last) || state.recent.contains(last) {
                        Some(last.to_owned())
                    } else {
                        reply.request_id().map(str::to_owned)
                    }
                }
            };
            // One look at the table: whether the call is pending, and whether it gathers.
            let gathers = request_id
                .as_deref()
                .and_then(|id| state.calls.get_mut(id))
                .map(|call| call.gather.is_some());
            match (request_id, gathers) {
                (Some(id), Some(gathers)) => {
                    if !reply.may_answer(&id) {
                        bump(&self.counters.malformed);
                        None
                    } else if reply.is_progress() {
                        // An interim message: the call goes on waiting for its answer.
                        bump(&self.counters.progress);
                        if let (Some(call), false) = (state.calls.get_mut(&id), gathers) {
                            call.waiter.progress(reply.body.clone());
                        }
                        None
                    } else if gathers {
                        self.gathered(&mut state, &id, reply.body.clone(), &mut wakeups);
                        None
                    } else {
                        let call = self.take_call(&mut state, &id, &mut wakeups);
                        state.recent.remember(id);
                        call
                    }
                }
                (Some(id), None) if state.recent.contains(&id) => {
                    bump(&self.counters.duplicate);
                    None
                }
                _ => {
                    bump(&self.counters.stray);
                    None
                }
            }
        };
        if let Some(call) = outcome_for {
            self.latency.record(call.started.elapsed());
            let outcome = match reply.into_outcome() {
                ReplyOutcome::Answer(body) => {
                    bump(&self.counters.succeeded);
                    Ok(body)
                }
                ReplyOutcome::Remote(error) => {
                    bump(&self.counters.remote);
                    Err(CallError::Remote(error))
                }
            };
            wakeups.push((call.waiter, outcome));
        }
        self.wake(wakeups);
    }

    /// An answer to a scatter-gather call: handed on unless its device already answered;
    /// the call ends once it has `max_replies`.
    fn gathered(
        &self,
        state: &mut State<W>,
        request_id: &str,
        body: Map<String, Value>,
        wakeups: &mut Wakeups<W>,
    ) {
        let Some(call) = state.calls.get_mut(request_id) else {
            return;
        };
        let Some(gather) = call.gather.as_mut() else {
            return;
        };
        let responder = body.get(protocol::RESPONDER_MEMBER).and_then(Value::as_str);
        if !gather.accept(responder) {
            bump(&self.counters.duplicate);
            return;
        }
        bump(&self.counters.gathered);
        let full = gather.is_full();
        call.waiter.progress(body);
        if full {
            if let Some(call) = self.take_call(state, request_id, wakeups) {
                self.gather_ended(state, request_id.to_owned(), call, wakeups);
            }
        }
    }

    /// A scatter-gather call is over (its deadline, or its `max_replies`): its answers went
    /// out as they came, so it ends with an empty object; later answers count as repeats.
    fn gather_ended(
        &self,
        state: &mut State<W>,
        request_id: String,
        call: Call<W>,
        wakeups: &mut Wakeups<W>,
    ) {
        bump(&self.counters.succeeded);
        state.recent.remember(request_id);
        wakeups.push((call.waiter, Ok(Map::new())));
    }

    /// Returns whether to keep polling (and so reconnect).
    fn on_connection_lost(&self, why: &LinkError) -> bool {
        let was_connected = self.connected.swap(false, Ordering::AcqRel);
        {
            let mut state = self.lock();
            if let Some(ready) = state.ready.take() {
                let error = match why.kind {
                    LinkErrorKind::Tls => CallError::Tls(why.message.clone()),
                    LinkErrorKind::Refused => CallError::Refused(why.message.clone()),
                    LinkErrorKind::Other => CallError::NotConnected(why.message.clone()),
                };
                let _ = ready.send(Err(error));
                return false;
            }
            // Calls in flight keep waiting for their answers (until their deadlines); new
            // calls wait for the connection and their reply filters to be back.
            state.subscriptions.disconnected();
        }
        if was_connected {
            self.emit(ConnectionEvent::Disconnected {
                reason: why.message.clone(),
            });
        }
        !self.closed.load(Ordering::Acquire)
    }

    fn expire(&self, now: Instant) {
        let mut wakeups = Vec::new();
        {
            let mut state = self.lock();
            for request_id in state.calls.expired(now) {
                if let Some(call) = self.take_call(&mut state, &request_id, &mut wakeups) {
                    if call.gather.is_some() && call.stage == Stage::Published {
                        // A scatter-gather call ends at its deadline with what it collected.
                        self.gather_ended(&mut state, request_id, call, &mut wakeups);
                        continue;
                    }
                    bump(&self.counters.timed_out);
                    self.abandoned(&mut state, &request_id, &call);
                    let topic = call.topic.clone();
                    let throttled = (call.stage == Stage::WaitingForToken)
                        .then(|| state.limiter.as_ref().map(RateLimiter::per_second))
                        .flatten();
                    wakeups.push((call.waiter, Err(CallError::Timeout { topic, throttled })));
                }
            }
        }
        self.wake(wakeups);
    }
}

/// Polls the rumqttc event loop without pause (it only makes progress while polled) and
/// hands every event to the client. After the first connection, a lost connection is
/// retried after `reconnect_delay` until the client is closed.
async fn drive_events<W: Waiter>(shared: Arc<Shared<W>>, mut events: Events) {
    let mut shutdown = shared.shutdown.subscribe();
    let mut failed_attempts = 0u32;
    loop {
        let next = tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop) => break,
            next = events.next() => next,
        };
        match next {
            // Only close() queues a DISCONNECT: once it is written the work is done.
            Ok(Inbound::DisconnectSent) => break,
            Ok(inbound) => {
                if matches!(inbound, Inbound::Connected { .. }) {
                    failed_attempts = 0;
                }
                shared.on_inbound(inbound)
            }
            Err(why) => {
                if !shared.on_connection_lost(&why) {
                    break;
                }
                // Our SUBSCRIBEs are sent again on reconnect, by us, in a known order.
                events.drop_queued_subscriptions();
                let replays = events.pending_publishes();
                shared.with_ledger(|l| l.connection_lost(&replays));
                let delay = reconnect_delay(&shared.options, failed_attempts);
                failed_attempts = failed_attempts.saturating_add(1);
                tokio::select! {
                    _ = shutdown.wait_for(|stop| *stop) => break,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// Exponential backoff from the minimum to the maximum delay, with jitter in [0.5, 1].
fn reconnect_delay(options: &ClientOptions, failed_attempts: u32) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let doubled = options
        .reconnect_min_delay
        .saturating_mul(1u32 << failed_attempts.min(20));
    let capped = doubled.min(options.reconnect_max_delay);
    // RandomState is seeded randomly per instance: enough randomness for jitter.
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let factor = 0.5 + (random % 1000) as f64 / 2000.0;
    capped.mul_f64(factor)
}

/// One timer for all calls: sleeps until the earliest deadline (or until a call with an
/// earlier one arrives) and fails what has expired.
async fn sweep_deadlines<W: Waiter>(shared: Arc<Shared<W>>) {
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        let next = {
            let state = shared.lock();
            let deadline = state.calls.next_deadline();
            match (deadline, shared.next_release(&state)) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        };
        let sleep = async {
            match next {
                Some(deadline) => {
                    tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)).await
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => break,
            _ = shared.timer_wake.notified() => {}
            _ = sleep => {
                shared.expire(Instant::now());
                shared.release_throttled();
            }
        }
    }
}
