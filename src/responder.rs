//! The device side: subscribes request filters (optionally as an MQTT 5 shared-subscription
//! group, so that a pool of responders splits the requests), turns each request into an
//! `IncomingRequest` that knows where its answer goes, and publishes answers.
//!
//! Where an answer goes (DESIGN.md): the request's MQTT 5 Response Topic with its
//! Correlation Data; else the body's `reply_to`; else the seed topic
//! `{request_topic}/response/{request_id}`. A request with none of these is a one-way
//! notification. Used by the Python `Responder` and by the `mqtt-rpc-responder` binary.

use crate::link::{self, ConnectionOptions, Inbound, LinkError, LinkErrorKind, Outbox, Unsent};
use crate::protocol::{self, RemoteError, REQUEST_ID_MEMBER};
use bytes::Bytes;
use serde_json::{Map, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The error code of the answer to a request refused because the responder is overloaded.
pub const OVERLOADED: i64 = -32000;

/// Reconnect attempts back off from the first delay to the second, doubling, with jitter.
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

/// Where and how to answer one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyRoute {
    pub topic: String,
    pub correlation_data: Option<Bytes>,
    /// The id to put in the answer's body (`None` for a plain MQTT 5 answer).
    pub request_id: Option<String>,
    /// The name to put in the answer's `responder` member: set for a scatter-gather
    /// request, whose caller counts each device's answer once.
    pub responder: Option<String>,
}

/// Decides where the answer to a request goes; `None`: nowhere (a notification).
pub fn route(
    mqtt5_only: bool,
    topic: &str,
    body: &Map<String, Value>,
    response_topic: Option<String>,
    correlation_data: Option<Bytes>,
) -> Option<ReplyRoute> {
    let body_id = body
        .get(REQUEST_ID_MEMBER)
        .and_then(Value::as_str)
        .map(str::to_owned);
    if mqtt5_only {
        return response_topic.map(|topic| ReplyRoute {
            topic,
            correlation_data,
            request_id: None,
            responder: None,
        });
    }
    if let Some(topic) = response_topic {
        return Some(ReplyRoute {
            topic,
            correlation_data,
            request_id: body_id,
            responder: None,
        });
    }
    let id = body_id?;
    let topic = match body.get(protocol::REPLY_TO_MEMBER).and_then(Value::as_str) {
        Some(reply_to) => reply_to.to_owned(),
        None => protocol::reply_topic(topic, &id),
    };
    Some(ReplyRoute {
        topic,
        correlation_data: None,
        request_id: Some(id),
        responder: None,
    })
}

/// The answer's body: `{"request_id", "result"}` or `{"request_id", "error": {"code",
/// "message", "data"}}`.
pub fn reply_body(route: &ReplyRoute, outcome: Result<Value, RemoteError>) -> Vec<u8> {
    let mut reply = Map::new();
    if let Some(id) = &route.request_id {
        reply.insert(REQUEST_ID_MEMBER.into(), Value::from(id.as_str()));
    }
    if let Some(name) = &route.responder {
        reply.insert(
            protocol::RESPONDER_MEMBER.into(),
            Value::from(name.as_str()),
        );
    }
    match outcome {
        Ok(result) => {
            reply.insert("result".into(), result);
        }
        Err(error) => {
            let mut object = Map::new();
            object.insert("code".into(), Value::from(error.code));
            object.insert("message".into(), Value::from(error.message));
            if !error.data.is_null() {
                object.insert("data".into(), error.data);
            }
            reply.insert("error".into(), Value::Object(object));
        }
    }
    // Serialising a map of JSON values cannot fail.
    serde_json::to_vec(&reply).unwrap_or_default()
}

/// An interim message before the answer: `{"request_id", "progress": <value>}`.
pub fn progress_body(route: &ReplyRoute, progress: Value) -> Vec<u8> {
    let mut message = Map::new();
    if let Some(id) = &route.request_id {
        message.insert(REQUEST_ID_MEMBER.into(), Value::from(id.as_str()));
    }
    message.insert(protocol::PROGRESS_MEMBER.into(), progress);
    serde_json::to_vec(&message).unwrap_or_default()
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
    /// Where its answer goes; `None` for a notification.
    pub route: Option<ReplyRoute>,
}

/// Counters of what a responder received and did with it.
#[derive(Debug, Default)]
pub struct ResponderCounters {
    pub requests: AtomicU64,
    pub notifications: AtomicU64,
    pub dropped_malformed: AtomicU64,
    /// Requests larger than the connection's `max_packet_size`, dropped unread.
    pub dropped_oversized: AtomicU64,
    /// Requests refused as "overloaded" before reaching a handler (the loop was too far
    /// behind), and notifications dropped for the same reason.
    pub dropped_overloaded: AtomicU64,
    /// Answers (and progress messages) handed to the connection, written to it, and
    /// refused by it (its queue was full).
    pub answers_queued: AtomicU64,
    pub answers_sent: AtomicU64,
    pub answers_unsent: AtomicU64,
}

/// Publishes answers; cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct Replier {
    outbox: Outbox,
    qos: u8,
    counters: Arc<ResponderCounters>,
}

impl Replier {
    pub fn counters(&self) -> &ResponderCounters {
        &self.counters
    }

    pub fn send(&self, route: &ReplyRoute, body: Vec<u8>) -> Result<(), Unsent> {
        let sent = self.outbox.publish(
            &route.topic,
            self.qos,
            body,
            None,
            route.correlation_data.clone(),
        );
        let counter = match sent {
            Ok(()) => &self.counters.answers_queued,
            Err(_) => &self.counters.answers_unsent,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        sent
    }

    pub fn answer(
        &self,
        route: &ReplyRoute,
        outcome: Result<Value, RemoteError>,
    ) -> Result<(), Unsent> {
        self.send(route, reply_body(route, outcome))
    }
}

/// A responder's connection, ready to `serve`.
pub struct Responder {
    options: ResponderOptions,
    replier: Replier,
    events: link::Events,
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
            counters: Arc::new(ResponderCounters::default()),
        };
        Ok(Responder {
            options,
            replier,
            events,
        })
    }

    pub fn replier(&self) -> Replier {
        self.replier.clone()
    }

    pub fn counters(&self) -> Arc<ResponderCounters> {
        self.replier.counters.clone()
    }

    /// Serves until its DISCONNECT is written (`disconnect`: answers queued before it go
    /// out first) or `stop` turns true: subscribes its filters on every connection (calling
    /// `on_ready` once all are granted), hands each request to `on_request`, and reconnects
    /// after a lost connection, backing off. Fails if the first connection fails, or if the
    /// broker refuses a filter (a responder that cannot receive its requests must say so).
    pub async fn serve(
        mut self,
        mut on_request: impl FnMut(IncomingRequest),
        mut on_ready: impl FnMut(),
        mut stop: watch::Receiver<bool>,
    ) -> Result<(), LinkError> {
        let counters = self.replier.counters.clone();
        let mut unacknowledged = self.options.filters.len();
        let mut ever_connected = false;
        let mut ever_ready = false;
        let mut failed_attempts = 0u32;
        loop {
            let next = tokio::select! {
                biased;
                _ = stop.wait_for(|stop| *stop) => break,
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
                    failed_attempts = 0;
                    unacknowledged = self.options.filters.len();
                    for filter in &self.options.filters {
                        let topic = subscription(filter, self.options.share_group.as_deref());
                        // Not queued: the next reconnect subscribes again.
                        let _ = self.replier.outbox.subscribe(&topic, self.options.qos);
                    }
                }
                Ok(Inbound::SubAck { granted, .. }) => {
                    if !granted {
                        // SUBACKs come in the order of the SUBSCRIBEs: this one's filter.
                        let index = self.options.filters.len().saturating_sub(unacknowledged);
                        let filter = self.options.filters.get(index).cloned().unwrap_or_default();
                        return Err(LinkError {
                            kind: LinkErrorKind::SubscriptionRefused,
                            message: subscription(&filter, self.options.share_group.as_deref()),
                        });
                    }
                    unacknowledged = unacknowledged.saturating_sub(1);
                    if unacknowledged == 0 {
                        ever_ready = true;
                        on_ready();
                    }
                }
                Ok(Inbound::Message {
                    topic,
                    payload,
                    correlation_data,
                    response_topic,
                }) => {
                    if payload.len() > self.options.connection.max_packet_size {
                        counters.dropped_oversized.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(&payload) else {
                        counters.dropped_malformed.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    let filter_index = self
                        .options
                        .filters
                        .iter()
                        .position(|f| protocol::topic_matches(f, &topic))
                        .unwrap_or(0);
                    let mut route = route(
                        self.options.mqtt5_only,
                        &topic,
                        &body,
                        response_topic,
                        correlation_data,
                    );
                    if let Some(route) = route.as_mut() {
                        if route.request_id.is_some() && protocol::is_gather(&body) {
                            route.responder = Some(self.options.connection.client_id.clone());
                        }
                    }
                    let counter = match route {
                        Some(_) => &counters.requests,
                        None => &counters.notifications,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    on_request(IncomingRequest {
                        filter_index,
                        topic,
                        body,
                        payload,
                        route,
                    });
                }
                Ok(Inbound::PublishWritten(_)) => {
                    counters.answers_sent.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Inbound::DisconnectSent) => break,
                Ok(_) => {}
                Err(error) => {
                    if !ever_connected {
                        return Err(error);
                    }
                    // A broker without shared subscriptions may close the first connection
                    // at the SUBSCRIBE (ejabberd does): reconnecting would only repeat it.
                    if let (Some(group), false) = (&self.options.share_group, ever_ready) {
                        let why = format!("it closed the connection at the SUBSCRIBE ({error})");
                        return Err(no_shared_subscriptions(group, &why));
                    }
                    let delay = link::reconnect_delay(
                        RECONNECT_MIN_DELAY,
                        RECONNECT_MAX_DELAY,
                        failed_attempts,
                    );
                    failed_attempts = failed_attempts.saturating_add(1);
                    tokio::select! {
                        _ = stop.wait_for(|stop| *stop) => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        Ok(())
    }

    /// Queues DISCONNECT behind the answers already queued; `serve` ends once it is
    /// written. False if it could not be queued (then set `stop`).
    pub fn disconnect(replier: &Replier) -> bool {
        replier.outbox.disconnect().is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }

    #[test]
    fn answers_go_to_the_response_topic_then_reply_to_then_the_seed_topic() {
        let request = body(json!({"request_id": "r1", "reply_to": "inbox/c/r1"}));
        let v5 = route(
            false,
            "d/set",
            &request,
            Some("rt".into()),
            Some(Bytes::from("r1")),
        );
        assert_eq!(v5.unwrap().topic, "rt");
        let inbox = route(false, "d/set", &request, None, None).unwrap();
        assert_eq!(inbox.topic, "inbox/c/r1");
        let seed = route(
            false,
            "d/set",
            &body(json!({"request_id": "r1"})),
            None,
            None,
        )
        .unwrap();
        assert_eq!(seed.topic, "d/set/response/r1");
        assert_eq!(seed.request_id.as_deref(), Some("r1"));
    }

    #[test]
    fn a_request_without_id_or_response_topic_is_a_notification() {
        assert_eq!(
            route(false, "d/set", &body(json!({"event": 1})), None, None),
            None
        );
        assert_eq!(
            route(true, "d/set", &body(json!({"request_id": "r"})), None, None),
            None
        );
    }

    #[test]
    fn answer_bodies_follow_the_wire_protocol() {
        let mut route = ReplyRoute {
            topic: "t".into(),
            correlation_data: None,
            request_id: Some("r1".into()),
            responder: None,
        };
        let ok: Value = serde_json::from_slice(&reply_body(&route, Ok(json!({"x": 1})))).unwrap();
        assert_eq!(ok, json!({"request_id": "r1", "result": {"x": 1}}));
        route.responder = Some("dev-7".into());
        let named: Value = serde_json::from_slice(&reply_body(&route, Ok(json!(1)))).unwrap();
        assert_eq!(
            named,
            json!({"request_id": "r1", "responder": "dev-7", "result": 1})
        );
        route.responder = None;
        let error = RemoteError {
            code: -32000,
            message: "busy".into(),
            data: json!([1]),
        };
        let failed: Value = serde_json::from_slice(&reply_body(&route, Err(error))).unwrap();
        assert_eq!(
            failed,
            json!({"request_id": "r1", "error": {"code": -32000, "message": "busy", "data": [1]}})
        );
    }

    #[test]
    fn shared_subscriptions_name_their_group() {
        assert_eq!(
            subscription("+/set", Some("workers")),
            "$share/workers/+/set"
        );
        assert_eq!(subscription("+/set", None), "+/set");
    }
}
