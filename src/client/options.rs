//! `ClientOptions`: everything a client is configured with, and every default, in one place.

use super::engine::DeadlineCarrier;
use crate::link::{ConnectionOptions, Protocol};
use crate::presence::{PresenceSource, DEFAULT_PRESENCE_CAPACITY};
use crate::quota::Quotas;
use std::time::Duration;

/// The first levels of inbox reply topics (`{prefix}/{client_id}/{request_id}`), unless
/// another prefix is given.
pub const DEFAULT_INBOX_PREFIX: &str = "mqtt-rpc/inbox";

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
    /// `true`: each request's JSON carries `timeout_ms`, the milliseconds its caller still
    /// waits (any protocol: a 3.1.1 device behind an MQTT 5 caller sees it too); `false`:
    /// no `timeout_ms`; `None`: a user property on MQTT 5, nothing on 3.1.1, so the seed's
    /// devices see exactly the bytes the hand-written client sent. MQTT 5 requests always
    /// carry Message Expiry.
    pub propagate_deadline: Option<bool>,
    /// Where the client learns which devices are connected: a call to a device known
    /// offline then fails at once (or waits for it). None: every device is called.
    pub presence: Option<PresenceSource>,
    /// Devices whose presence is remembered; the least recently used go first.
    pub presence_capacity: usize,
}

impl ClientOptions {
    /// Where requests carry `timeout_ms` (see `propagate_deadline`).
    pub fn deadline_carrier(&self) -> DeadlineCarrier {
        match (self.propagate_deadline, self.connection.protocol) {
            (Some(true), _) => DeadlineCarrier::Body,
            (None, Protocol::V5) => DeadlineCarrier::UserProperty,
            _ => DeadlineCarrier::Nowhere,
        }
    }
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
            propagate_deadline: None,
            presence: None,
            presence_capacity: DEFAULT_PRESENCE_CAPACITY,
        }
    }
}
