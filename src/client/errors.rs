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
    /// The client's presence source says the device is offline: the request was not sent
    /// (`waited`: the call waited for the device, and it did not come online in time).
    DeviceOffline {
        topic: Arc<str>,
        device: String,
        since_ms: Option<i64>,
        reason: Option<String>,
        waited: bool,
    },
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
                "the broker refused the subscription '{filter}' (its SUBACK said so: is the \
                 client allowed to subscribe to it?)"
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
            CallError::DeviceOffline {
                device,
                since_ms,
                reason,
                waited,
                ..
            } => {
                write!(f, "device '{device}' is offline")?;
                if let Some(since) = since_ms.and_then(rfc3339) {
                    write!(f, " since {since}")?;
                }
                if let Some(reason) = reason {
                    write!(f, " ({reason})")?;
                }
                match waited {
                    true => f.write_str(": it did not come online while the call waited"),
                    false => f.write_str(": the request was not sent"),
                }
            }
        }
    }
}

impl std::error::Error for CallError {}

/// Milliseconds since the Unix epoch as an RFC 3339 time, if they are one.
fn rfc3339(ms: i64) -> Option<String> {
    let ms = u64::try_from(ms).ok()?;
    let at = std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_millis(ms))?;
    Some(humantime::format_rfc3339_millis(at).to_string())
}

/// Why a throttled call never went out, as its timeout message says it.
pub fn throttled_reason(rate: usize) -> String {
    format!(
        "throttled on the client, the request was never sent (publish rate limit of {rate}/s per connection)"
    )
}
