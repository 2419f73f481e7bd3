//! The connection to the broker, whatever the MQTT version: its options, the requests
//! sent on it (`Outbox`: publishes with Response Topic and Correlation Data on 5,
//! subscriptions), and the events read from it (`Events`, one `Inbound` type for both
//! versions). The socket is driven by `connection.rs`; what differs between 3.1.1 and 5
//! lives in `v4.rs` and `v5.rs`.

mod backoff;
mod connection;
mod v4;
mod v5;

pub use backoff::{Backoff, Takeover};

use crate::tls::TlsOptions;
use bytes::Bytes;
use connection::{Connection, RequestKind, Wire};
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use rumqttc::Outgoing;
use std::sync::Arc;
use std::time::Duration;

/// The MQTT protocol version of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    V311,
    V5,
}

/// With MQTT 3.1.1, the largest packet read from the broker (larger ones end the
/// connection); messages over `max_packet_size` but under this are read and dropped.
pub const INCOMING_READ_LIMIT: usize = 64 * 1024 * 1024;

/// A broker's host and port.
pub type BrokerAddress = (String, u16);

/// Where and how to connect: what every client of the broker (caller or responder) needs.
#[derive(Debug, Clone)]
pub struct ConnectionOptions {
    pub host: String,
    pub port: u16,
    /// Other nodes of the same cluster: a connect tries `host:port`, then these in order,
    /// until one accepts; a lost connection reconnects starting from the node after the
    /// one that was lost (the usual backoff between rounds).
    pub failover: Vec<BrokerAddress>,
    pub client_id: String,
    pub protocol: Protocol,
    pub keepalive: Duration,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Largest packet accepted or sent; rumqttc's default (10 KiB) is too small for replies.
    pub max_packet_size: usize,
    pub connect_timeout: Duration,
    /// How long the broker keeps the session (subscriptions, queued QoS 1 messages) after
    /// the connection drops. Zero: a clean session on every connect. MQTT 3.1.1 has no
    /// expiry: any non-zero value asks for a persistent session (`clean_session = false`),
    /// which the broker keeps until its own limit.
    pub session_expiry: Duration,
    /// TLS (and mutual TLS, with a client certificate); `None`: plain TCP.
    pub tls: Option<TlsOptions>,
    /// The least time between two CONNECT attempts, whatever their cause (reconnects,
    /// failover): AWS IoT Core throttles a client id that connects more than once a second.
    pub min_connect_interval: Duration,
}

impl Default for ConnectionOptions {
    fn default() -> Self {
        ConnectionOptions {
            host: "localhost".into(),
            port: 1883,
            failover: Vec::new(),
            client_id: default_client_id(),
            protocol: Protocol::V311,
            keepalive: Duration::from_secs(60),
            username: None,
            password: None,
            max_packet_size: 1024 * 1024,
            connect_timeout: Duration::from_secs(10),
            session_expiry: Duration::ZERO,
            tls: None,
            min_connect_interval: Duration::ZERO,
        }
    }
}

impl ConnectionOptions {
    /// Every broker address, in the order a first connect tries them.
    pub fn addresses(&self) -> Vec<BrokerAddress> {
        let first = (self.host.clone(), self.port);
        std::iter::once(first)
            .chain(self.failover.iter().cloned())
            .collect()
    }
}

/// Which broker a connection is up with (None while it is down), readable from any thread.
#[derive(Debug, Clone, Default)]
pub struct ConnectedTo(Arc<std::sync::Mutex<Option<BrokerAddress>>>);

impl ConnectedTo {
    pub fn get(&self) -> Option<BrokerAddress> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn set(&self, address: Option<BrokerAddress>) {
        *self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = address;
    }
}

/// How long the broker keeps a session unless told otherwise: MQTT 5 a minute, so that a
/// short outage loses no subscription and no QoS 1 message; MQTT 3.1.1 cannot expire a
/// session (one left behind by each restart would stay for ever), so it starts clean.
pub fn default_session_expiry(protocol: Protocol) -> Duration {
    match protocol {
        Protocol::V5 => Duration::from_secs(60),
        Protocol::V311 => Duration::ZERO,
    }
}

/// A client id that two replicas of one service never share (a shared id makes the broker
/// disconnect one for the other, over and over).
pub fn default_client_id() -> String {
    format!("mqtt-rpc-{}", uuid::Uuid::new_v4().simple())
}

/// The longest client id AWS IoT Core accepts, in bytes.
pub const AWS_MAX_CLIENT_ID: usize = 128;

/// A client id with its placeholders filled in: `{pid}` (this process's id), `{hostname}`
/// and `{random}` (8 lowercase hex digits, drawn once per call). Several workers or
/// replicas started from one configuration then each get an id of their own, which the
/// broker needs (it keeps one connection per id). An unknown placeholder, or a brace that
/// opens none, is an error that names it.
pub fn expand_client_id(template: &str) -> Result<String, String> {
    let mut expanded = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find(['{', '}']) {
        expanded.push_str(&rest[..open]);
        let after = &rest[open..];
        let close = after.find('}').filter(|_| after.starts_with('{'));
        let Some(close) = close else {
            return Err(format!(
                "client_id {template:?} has an unmatched brace (placeholders are {{pid}}, {{hostname}} and {{random}})"
            ));
        };
        match &after[1..close] {
            "pid" => expanded.push_str(&std::process::id().to_string()),
            "hostname" => expanded.push_str(&gethostname::gethostname().to_string_lossy()),
            "random" => expanded.push_str(&uuid::Uuid::new_v4().simple().to_string()[..8]),
            unknown => {
                return Err(format!(
                    "client_id {template:?}: unknown placeholder {{{unknown}}} (known: {{pid}}, {{hostname}}, {{random}})"
                ))
            }
        }
        rest = &after[close + 1..];
    }
    expanded.push_str(rest);
    Ok(expanded)
}

/// What the connection reported, whatever the protocol version.
#[derive(Debug)]
pub enum Inbound {
    Connected {
        session_present: bool,
        /// MQTT 5: the largest packet the broker accepts, when it says so in its CONNACK.
        max_packet_size: Option<u32>,
        /// MQTT 5: whether the broker has shared subscriptions, when it says so.
        shared_subscriptions: Option<bool>,
    },
    /// Its payload and correlation data are slices of the buffer they were read into: what
    /// keeps them beyond the moment copies them (see `detached`).
    Message {
        topic: String,
        payload: Bytes,
        correlation_data: Option<Bytes>,
        response_topic: Option<String>,
        /// MQTT 5 user properties, in the order sent (always empty on 3.1.1).
        user_properties: Vec<(String, String)>,
        /// MQTT 5 Message Expiry Interval as the broker forwarded it: the seconds left of
        /// the message's lifetime (None on 3.1.1, or when the sender set none).
        message_expiry: Option<u32>,
    },
    SubscribeSent(u16),
    /// A publish with this packet id (0 for QoS 0) was queued for writing.
    PublishWritten(u16),
    /// rumqttc held a publish back until this packet id's PUBACK arrives.
    PublishHeldBack(u16),
    /// A PUBACK with its reason code (always 0 on MQTT 3.1.1).
    PubAck {
        packet_id: u16,
        reason: u8,
    },
    SubAck {
        packet_id: u16,
        granted: bool,
    },
    /// The broker acknowledged an UNSUBSCRIBE: no message of that filter comes any more.
    UnsubAck,
    DisconnectSent,
    Other,
}

/// A copy of bytes parsed out of the read buffer, for what is kept. A slice would keep the
/// whole buffer (64 KiB) alive for as long as the message waits: a responder's queued
/// requests (and their MQTT 5 correlation data) would hold thousands of read buffers.
pub fn detached(bytes: Bytes) -> Bytes {
    Bytes::copy_from_slice(&bytes)
}

/// Why the connection failed or dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkError {
    pub kind: LinkErrorKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkErrorKind {
    /// The TLS handshake failed (unknown CA, certificate refused, ...).
    Tls,
    /// The broker answered CONNECT with a refusal (bad credentials, not authorised, ...).
    Refused,
    /// The broker refused a SUBSCRIBE (the message names the filter).
    SubscriptionRefused,
    /// The broker closed the connection (a broker without MQTT 5 does so at an MQTT 5
    /// CONNECT).
    Closed,
    /// MQTT 5: the broker disconnected us because another connection with our client id
    /// connected (DISCONNECT reason 0x8E, Session taken over).
    TakenOver,
    /// No answer in time (a broker without MQTT 5 may ignore an MQTT 5 CONNECT).
    TimedOut,
    /// Anything else: the network, a timeout, the broker closing the connection.
    Other,
}

impl std::fmt::Display for LinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl LinkError {
    pub(crate) fn of(kind: LinkErrorKind, message: impl Into<String>) -> Self {
        LinkError {
            kind,
            message: message.into(),
        }
    }

    pub(crate) fn other(message: impl Into<String>) -> Self {
        LinkError::of(LinkErrorKind::Other, message)
    }
}

/// How long to wait before the next reconnect attempt: exponential backoff from `min` to
/// `max`, each delay scaled by a random factor in [0.5, 1] so that a fleet of clients does
/// not return to a restarted broker all at once.
pub fn reconnect_delay(min: Duration, max: Duration, failed_attempts: u32) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let doubled = min.saturating_mul(1u32 << failed_attempts.min(20));
    let capped = doubled.min(max);
    // RandomState is seeded randomly per instance: enough randomness for jitter.
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let factor = 0.5 + (random % 1000) as f64 / 2000.0;
    capped.mul_f64(factor)
}

/// Why a request could not be handed to the event loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsent;

/// The sending half of a connection: cheap to clone, never blocks.
#[derive(Clone)]
pub enum Outbox {
    V311(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

/// The receiving half: the connection, which makes progress only while `next` is awaited.
pub enum Events {
    V311(Box<Connection<v4::V4>>),
    V5(Box<Connection<v5::V5>>),
}

/// Opens a connection (nothing is sent until `Events` is polled). `request_capacity` bounds
/// the publishes and subscribes queued towards the connection before `try_*` fails;
/// `max_inflight` the QoS 1 publishes awaiting PUBACK before the connection stops taking
/// requests (MQTT 5: or the broker's receive maximum, if lower).
pub fn open(
    options: &ConnectionOptions,
    tls: Option<Arc<rustls::ClientConfig>>,
    request_capacity: usize,
    max_inflight: u16,
) -> (Outbox, Events) {
    let options = options.clone();
    match options.protocol {
        Protocol::V311 => {
            let (sender, requests) = flume::bounded(request_capacity);
            let connection = Connection::new(options, tls, requests, max_inflight);
            (
                Outbox::V311(rumqttc::AsyncClient::from_senders(sender)),
                Events::V311(Box::new(connection)),
            )
        }
        Protocol::V5 => {
            let (sender, requests) = flume::bounded(request_capacity);
            let connection = Connection::new(options, tls, requests, max_inflight);
            (
                Outbox::V5(rumqttc::v5::AsyncClient::from_senders(sender)),
                Events::V5(Box::new(connection)),
            )
        }
    }
}

fn qos4(qos: u8) -> rumqttc::QoS {
    if qos == 0 {
        rumqttc::QoS::AtMostOnce
    } else {
        rumqttc::QoS::AtLeastOnce
    }
}

fn qos5(qos: u8) -> rumqttc::v5::mqttbytes::QoS {
    if qos == 0 {
        rumqttc::v5::mqttbytes::QoS::AtMostOnce
    } else {
        rumqttc::v5::mqttbytes::QoS::AtLeastOnce
    }
}

/// What an MQTT 5 publish carries besides its body.
#[derive(Debug, Default)]
pub struct Properties {
    /// Where the answer goes.
    pub response_topic: Option<String>,
    /// The call's id, echoed in the answer.
    pub correlation_data: Option<Bytes>,
    /// Headers such as trace context.
    pub user_properties: Vec<(String, String)>,
    /// Seconds after which the broker discards the message undelivered (a request's
    /// remaining timeout): MQTT 5 Message Expiry Interval.
    pub message_expiry: Option<u32>,
}

impl Outbox {
    pub fn protocol(&self) -> Protocol {
        match self {
            Outbox::V311(_) => Protocol::V311,
            Outbox::V5(_) => Protocol::V5,
        }
    }

    /// Publishes `body`, on MQTT 5 with `properties` (3.1.1 has none: the device finds its
    /// way back from the body and topic, and headers travel in the body).
    pub fn publish(
        &self,
        topic: &str,
        qos: u8,
        body: Vec<u8>,
        properties: Properties,
    ) -> Result<(), Unsent> {
        match self {
            Outbox::V311(client) => client
                .try_publish(topic, qos4(qos), false, body)
                .map_err(|_| Unsent),
            Outbox::V5(client) => {
                let properties = PublishProperties {
                    response_topic: properties.response_topic,
                    correlation_data: properties.correlation_data,
                    user_properties: properties.user_properties,
                    message_expiry_interval: properties.message_expiry,
                    ..PublishProperties::default()
                };
                client
                    .try_publish_with_properties(topic, qos5(qos), false, body, properties)
                    .map_err(|_| Unsent)
            }
        }
    }

    pub fn subscribe(&self, filter: &str, qos: u8) -> Result<(), Unsent> {
        match self {
            Outbox::V311(client) => client.try_subscribe(filter, qos4(qos)).map_err(|_| Unsent),
            Outbox::V5(client) => client.try_subscribe(filter, qos5(qos)).map_err(|_| Unsent),
        }
    }

    pub fn unsubscribe(&self, filter: &str) -> Result<(), Unsent> {
        match self {
            Outbox::V311(client) => client.try_unsubscribe(filter).map_err(|_| Unsent),
            Outbox::V5(client) => client.try_unsubscribe(filter).map_err(|_| Unsent),
        }
    }

    pub fn disconnect(&self) -> Result<(), Unsent> {
        match self {
            Outbox::V311(client) => client.try_disconnect().map_err(|_| Unsent),
            Outbox::V5(client) => client.try_disconnect().map_err(|_| Unsent),
        }
    }
}

impl Events {
    /// The next event. An error means the connection is down; calling again reconnects.
    pub async fn next(&mut self) -> Result<Inbound, LinkError> {
        match self {
            Events::V311(connection) => connection.next().await,
            Events::V5(connection) => connection.next().await,
        }
    }

    /// Which broker the connection is up with, as it changes.
    pub fn connected_to(&self) -> ConnectedTo {
        match self {
            Events::V311(connection) => connection.connected_to.clone(),
            Events::V5(connection) => connection.connected_to.clone(),
        }
    }

    /// The next event already buffered, if any (no I/O, never waits).
    pub fn buffered(&mut self) -> Option<Inbound> {
        match self {
            Events::V311(connection) => connection.buffered(),
            Events::V5(connection) => connection.buffered(),
        }
    }

    /// After a connection error the connection would replay the SUBSCRIBE and UNSUBSCRIBE
    /// requests it had queued; the client re-subscribes on reconnect itself, so drop them.
    pub fn drop_queued_subscriptions(&mut self) {
        match self {
            Events::V311(c) => c
                .pending
                .retain(|r| v4::V4::kind(r) != RequestKind::Subscription),
            Events::V5(c) => c
                .pending
                .retain(|r| v5::V5::kind(r) != RequestKind::Subscription),
        }
    }

    /// The publishes the connection will write first when it is back, in order:
    /// `Some(packet_id)` for a replayed unacknowledged one, `None` for a new one.
    pub fn pending_publishes(&self) -> Vec<Option<u16>> {
        let publish = |kind| match kind {
            RequestKind::Publish(packet_id) => Some(packet_id),
            _ => None,
        };
        match self {
            Events::V311(c) => c
                .pending
                .iter()
                .filter_map(|r| publish(v4::V4::kind(r)))
                .collect(),
            Events::V5(c) => c
                .pending
                .iter()
                .filter_map(|r| publish(v5::V5::kind(r)))
                .collect(),
        }
    }
}

/// An I/O error of the socket, by what caused it (see `classify_io`).
fn io_error(error: std::io::Error) -> LinkError {
    classify_io(&error, error.to_string())
}

/// An I/O error, by what caused it. With TLS 1.3 a server that refuses the client's
/// certificate says so in an alert that arrives after the handshake, as a read error that
/// carries rustls's error: still a TLS failure to the user.
fn classify_io(io: &std::io::Error, message: String) -> LinkError {
    use std::io::ErrorKind;
    let from_tls = io
        .get_ref()
        .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some());
    let kind = match io.kind() {
        _ if from_tls => LinkErrorKind::Tls,
        ErrorKind::UnexpectedEof
        | ErrorKind::ConnectionReset
        | ErrorKind::ConnectionAborted
        | ErrorKind::BrokenPipe => LinkErrorKind::Closed,
        ErrorKind::TimedOut => LinkErrorKind::TimedOut,
        _ => LinkErrorKind::Other,
    };
    LinkError::of(kind, message)
}

fn outgoing_event(outgoing: Outgoing) -> Inbound {
    match outgoing {
        Outgoing::Subscribe(packet_id) => Inbound::SubscribeSent(packet_id),
        Outgoing::Publish(packet_id) => Inbound::PublishWritten(packet_id),
        Outgoing::AwaitAck(packet_id) => Inbound::PublishHeldBack(packet_id),
        Outgoing::Disconnect => Inbound::DisconnectSent,
        _ => Inbound::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_id_placeholders_are_filled_in() {
        let pid = std::process::id().to_string();
        assert_eq!(expand_client_id("web-{pid}").unwrap(), format!("web-{pid}"));
        assert_eq!(expand_client_id("plain").unwrap(), "plain");
        let random = expand_client_id("{random}-{random}").unwrap();
        let (a, b) = random.split_once('-').unwrap();
        assert!(
            a.len() == 8
                && a.chars()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_ne!(a, b, "each placeholder draws its own");
        let host = expand_client_id("{hostname}").unwrap();
        assert!(!host.is_empty() && !host.contains('{'));
        for bad in ["web-{worker}", "web-{pid", "web-}", "{}"] {
            let error = expand_client_id(bad).unwrap_err();
            assert!(error.contains(bad), "{error}");
        }
        assert!(expand_client_id("web-{worker}")
            .unwrap_err()
            .contains("{worker}"));
    }

    #[test]
    fn reconnect_delays_double_up_to_the_maximum_with_jitter() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(10));
        for attempts in 0..40 {
            let full = min.saturating_mul(1u32 << attempts.min(20)).min(max);
            let delay = reconnect_delay(min, max, attempts);
            assert!(delay >= full / 2 && delay <= full, "{attempts}: {delay:?}");
        }
        assert!(reconnect_delay(min, max, 30) >= max / 2);
    }
}
