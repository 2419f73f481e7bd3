//! Reading what comes from the network: a reply's body and what it means for its call
//! (an answer, a device's error, progress), a cancellation, and the time a request's
//! caller still waits.

use super::{CANCEL_MEMBER, PROGRESS_MEMBER, REQUEST_ID_MEMBER, TIMEOUT_MS_MEMBER};
use serde_json::{Map, Value};

/// How long the caller of a request still waits, as the request carries it: `timeout_ms`
/// as a body member (3.1.1) or a user property (MQTT 5), and the MQTT 5 Message Expiry
/// Interval the broker forwarded; the shortest of those given. A `timeout_ms` that is not
/// a non-negative number is passed over (the member may be the application's own).
pub fn time_left(
    body: &Map<String, Value>,
    user_properties: &[(String, String)],
    message_expiry: Option<u32>,
) -> Option<std::time::Duration> {
    let millis = |value: f64| {
        (value >= 0.0)
            .then(|| std::time::Duration::try_from_secs_f64(value / 1000.0).ok())
            .flatten()
    };
    let in_body = body
        .get(TIMEOUT_MS_MEMBER)
        .and_then(Value::as_f64)
        .and_then(millis);
    let in_property = user_properties
        .iter()
        .find(|(name, _)| name == TIMEOUT_MS_MEMBER)
        .and_then(|(_, value)| value.trim().parse::<f64>().ok())
        .and_then(millis);
    let expiry = message_expiry.map(|seconds| std::time::Duration::from_secs(seconds.into()));
    [in_body, in_property, expiry].into_iter().flatten().min()
}

/// Whether a request body is a cancellation of an earlier request.
pub fn is_cancellation(body: &Map<String, Value>) -> bool {
    body.get(CANCEL_MEMBER) == Some(&Value::Bool(true))
}

/// An error object sent by the device: `{"error": {"code", "message", "data"}}`.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteError {
    pub code: i64,
    pub message: String,
    pub data: Value,
}

/// What a well-formed reply means for its call.
#[derive(Debug, Clone, PartialEq)]
pub enum ReplyOutcome {
    /// The decoded reply object, exactly as the device sent it.
    Answer(Map<String, Value>),
    /// The device answered with an error object and no result.
    Remote(RemoteError),
}

/// Why a message on a reply topic cannot be anyone's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MalformedReply {
    NotJson,
    NotAnObject,
}

/// A reply body that parsed as a JSON object.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub body: Map<String, Value>,
}

impl Reply {
    pub fn parse(payload: &[u8]) -> Result<Reply, MalformedReply> {
        match serde_json::from_slice::<Value>(payload) {
            Ok(Value::Object(body)) => Ok(Reply { body }),
            Ok(_) => Err(MalformedReply::NotAnObject),
            Err(_) => Err(MalformedReply::NotJson),
        }
    }

    /// The body's `request_id`, if it has a string one.
    pub fn request_id(&self) -> Option<&str> {
        self.body.get(REQUEST_ID_MEMBER).and_then(Value::as_str)
    }

    /// Whether this reply may answer the call `request_id`: a body that names another id is
    /// not its answer (a body with no id is, when the topic or correlation data matched).
    pub fn may_answer(&self, request_id: &str) -> bool {
        match self.body.get(REQUEST_ID_MEMBER) {
            None => true,
            Some(Value::String(id)) => id == request_id,
            Some(_) => false,
        }
    }

    /// An interim message (`{"request_id", "progress": ...}`, no `result` or `error`): the
    /// call goes on waiting for its answer.
    pub fn is_progress(&self) -> bool {
        self.body.contains_key(PROGRESS_MEMBER)
            && !self.body.contains_key("result")
            && !self.body.contains_key("error")
    }

    /// An `error` member without a `result` makes a remote error; anything else is the answer.
    pub fn into_outcome(self) -> ReplyOutcome {
        if self.body.contains_key("result") {
            return ReplyOutcome::Answer(self.body);
        }
        match self.body.get("error") {
            Some(Value::Object(error)) => ReplyOutcome::Remote(RemoteError {
                code: error.get("code").and_then(Value::as_i64).unwrap_or(0),
                message: match error.get("message") {
                    Some(Value::String(m)) => m.clone(),
                    Some(other) => other.to_string(),
                    None => String::new(),
                },
                data: error.get("data").cloned().unwrap_or(Value::Null),
            }),
            Some(other) => ReplyOutcome::Remote(RemoteError {
                code: 0,
                message: match other {
                    Value::String(m) => m.clone(),
                    other => other.to_string(),
                },
                data: Value::Null,
            }),
            None => ReplyOutcome::Answer(self.body),
        }
    }
}
