//! Why a call ends without an answer: `CallError`, and `Outcome`, a call's one result.

use crate::acks;
use crate::protocol::{InputError, RemoteError};
use serde_json::{Map, Value};
use std::fmt;
use std::sync::Arc;

/// A call's single result: the device's reply object, or why there is none.
pub type Outcome = Result<Map<String, Value>, CallError>;

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

impl CallError {
    /// A request (or its reply filter's SUBSCRIBE) that rumqttc would not take: its
    /// request queue is full or its event loop has stopped.
    pub fn unsent() -> CallError {
        CallError::ConnectionLost(
            "the request could not be queued: the connection is closed or its queue is full".into(),
        )
    }
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
