//! A reply as it arrives from a device. One scan reads the few members the client routes it
//! by (`request_id`, `result`, `error`, `progress`, `responder`) and builds nothing else;
//! the payload stays as bytes, so that the object the caller gets is built once, where it
//! is used: a Python dict on the event loop's thread, a map or a serde type in Rust.

use crate::protocol::{RemoteError, PROGRESS_MEMBER, REQUEST_ID_MEMBER, RESPONDER_MEMBER};
use bytes::Bytes;
use serde::de::{self, DeserializeOwned, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::fmt;

/// A reply object as the device sent it: valid UTF-8 JSON, and an object.
#[derive(Clone, PartialEq, Eq)]
pub struct ReplyBody(Bytes);

impl ReplyBody {
    /// `{}`: what a scatter-gather call ends with (its answers went out as they came).
    pub fn empty() -> Self {
        ReplyBody(Bytes::from_static(b"{}"))
    }

    /// The JSON text.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The object as a map, in the device's key order.
    pub fn to_map(&self) -> Map<String, Value> {
        // Checked to be an object when it arrived.
        serde_json::from_slice(&self.0).unwrap_or_default()
    }

    /// The object as any serde type.
    pub fn parse<T: DeserializeOwned>(&self) -> serde_json::Result<T> {
        serde_json::from_slice(&self.0)
    }
}

impl fmt::Debug for ReplyBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.0))
    }
}

/// What a well-formed reply means for its call.
#[derive(Debug, Clone, PartialEq)]
pub enum ReplyOutcome {
    /// The reply object, exactly as the device sent it.
    Answer(ReplyBody),
    /// The device answered with an error object and no result.
    Remote(RemoteError),
}

/// Why a message on a reply topic cannot be anyone's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MalformedReply {
    NotJson,
    NotAnObject,
}

/// The body's `request_id` member.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
enum RequestId {
    #[default]
    Absent,
    Text(String),
    /// Present but not a string: it names no call.
    Other,
}

/// A reply body that parsed as a JSON object, with the members that route it.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    body: ReplyBody,
    request_id: RequestId,
    has_result: bool,
    has_progress: bool,
    /// The `error` member, kept only when there is one.
    error: Option<Value>,
    responder: Option<String>,
}

impl Reply {
    /// Reads a payload, which the reply keeps (so it should not be a slice of a larger
    /// buffer: the connection hands out payloads with allocations of their own).
    pub fn parse(payload: Bytes) -> Result<Reply, MalformedReply> {
        // Checked once here, so that the caller's object never meets bad UTF-8 later.
        let text = std::str::from_utf8(&payload).map_err(|_| MalformedReply::NotJson)?;
        let members = match serde_json::from_str::<Members>(text) {
            Ok(members) => members,
            Err(e) if e.is_data() => return Err(MalformedReply::NotAnObject),
            Err(_) => return Err(MalformedReply::NotJson),
        };
        Ok(Reply {
            body: ReplyBody(payload),
            request_id: members.request_id,
            has_result: members.has_result,
            has_progress: members.has_progress,
            error: members.error,
            responder: members.responder,
        })
    }

    /// The body's `request_id`, if it has a string one.
    pub fn request_id(&self) -> Option<&str> {
        match &self.request_id {
            RequestId::Text(id) => Some(id),
            _ => None,
        }
    }

    /// Whether this reply may answer the call `request_id`: a body that names another id is
    /// not its answer (a body with no id is, when the topic or correlation data matched).
    pub fn may_answer(&self, request_id: &str) -> bool {
        match &self.request_id {
            RequestId::Absent => true,
            RequestId::Text(id) => id == request_id,
            RequestId::Other => false,
        }
    }

    /// An interim message (`{"request_id", "progress": ...}`, no `result` or `error`): the
    /// call goes on waiting for its answer.
    pub fn is_progress(&self) -> bool {
        self.has_progress && !self.has_result && self.error.is_none()
    }

    /// The `responder` member (a scatter-gather answer's device name), if a string.
    pub fn responder(&self) -> Option<&str> {
        self.responder.as_deref()
    }

    pub fn body(&self) -> &ReplyBody {
        &self.body
    }

    pub fn into_body(self) -> ReplyBody {
        self.body
    }

    /// An `error` member without a `result` makes a remote error; anything else is the answer.
    pub fn into_outcome(self) -> ReplyOutcome {
        if self.has_result {
            return ReplyOutcome::Answer(self.body);
        }
        match self.error {
            Some(Value::Object(mut error)) => ReplyOutcome::Remote(RemoteError {
                code: error.get("code").and_then(Value::as_i64).unwrap_or(0),
                message: match error.get("message") {
                    Some(Value::String(m)) => m.clone(),
                    Some(other) => other.to_string(),
                    None => String::new(),
                },
                data: error.remove("data").unwrap_or(Value::Null),
            }),
            Some(other) => ReplyOutcome::Remote(RemoteError {
                code: 0,
                message: match other {
                    Value::String(m) => m,
                    other => other.to_string(),
                },
                data: Value::Null,
            }),
            None => ReplyOutcome::Answer(self.body),
        }
    }
}

/// The routing members of a reply object, read in one pass; every other value is checked
/// and built into nothing. A repeated member counts as present, its last value kept.
#[derive(Default)]
struct Members {
    request_id: RequestId,
    has_result: bool,
    has_progress: bool,
    error: Option<Value>,
    responder: Option<String>,
}

/// A member name, matched without building a string.
enum Member {
    RequestId,
    Result,
    Error,
    Progress,
    Responder,
    Other,
}

impl<'de> Deserialize<'de> for Member {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Name;
        impl Visitor<'_> for Name {
            type Value = Member;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_str<E: de::Error>(self, name: &str) -> Result<Member, E> {
                Ok(match name {
                    REQUEST_ID_MEMBER => Member::RequestId,
                    "result" => Member::Result,
                    "error" => Member::Error,
                    PROGRESS_MEMBER => Member::Progress,
                    RESPONDER_MEMBER => Member::Responder,
                    _ => Member::Other,
                })
            }
        }
        deserializer.deserialize_identifier(Name)
    }
}

/// Any JSON value, checked as strictly as serde_json reads one into a `Value` (strings are
/// decoded, so a lone surrogate escape is refused, as `IgnoredAny` would not) and built
/// into nothing. Nesting is bounded by serde_json's recursion limit.
struct Checked;

impl<'de> Deserialize<'de> for Checked {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(Checked)
    }
}

impl<'de> Visitor<'de> for Checked {
    type Value = Checked;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<Checked, A::Error> {
        while items.next_element::<Checked>()?.is_some() {}
        Ok(Checked)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut members: A) -> Result<Checked, A::Error> {
        while members.next_key::<Checked>()?.is_some() {
            members.next_value::<Checked>()?;
        }
        Ok(Checked)
    }
}

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Object;
        impl<'de> Visitor<'de> for Object {
            type Value = Members;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members, A::Error> {
                let mut members = Members::default();
                while let Some(member) = map.next_key::<Member>()? {
                    match member {
                        Member::RequestId => {
                            members.request_id = match map.next_value::<Value>()? {
                                Value::String(id) => RequestId::Text(id),
                                _ => RequestId::Other,
                            }
                        }
                        Member::Result => {
                            members.has_result = true;
                            map.next_value::<Checked>()?;
                        }
                        Member::Error => members.error = Some(map.next_value::<Value>()?),
                        Member::Progress => {
                            members.has_progress = true;
                            map.next_value::<Checked>()?;
                        }
                        Member::Responder => {
                            members.responder = match map.next_value::<Value>()? {
                                Value::String(name) => Some(name),
                                _ => None,
                            }
                        }
                        Member::Other => {
                            map.next_value::<Checked>()?;
                        }
                    }
                }
                Ok(members)
            }
        }
        deserializer.deserialize_map(Object)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_result_is_the_answer() {
        let reply = Reply::parse(Bytes::from_static(
            br#"{"request_id": "x", "result": {"ok": true}}"#,
        ))
        .unwrap();
        assert!(reply.may_answer("x") && !reply.may_answer("y") && !reply.is_progress());
        match reply.into_outcome() {
            ReplyOutcome::Answer(body) => assert_eq!(body.to_map()["result"]["ok"], true),
            other => panic!("expected an answer, got {other:?}"),
        }
    }

    #[test]
    fn an_error_object_is_a_remote_error() {
        let reply = Reply::parse(Bytes::from_static(
            br#"{"request_id": "x", "error": {"code": -32000, "message": "busy", "data": [1]}}"#,
        ))
        .unwrap();
        assert!(reply.may_answer("x") && !reply.may_answer("y"));
        assert_eq!(
            reply.into_outcome(),
            ReplyOutcome::Remote(RemoteError {
                code: -32000,
                message: "busy".into(),
                data: serde_json::json!([1]),
            })
        );
        let reply = Reply::parse(Bytes::from_static(br#"{"error": "plain text"}"#)).unwrap();
        assert!(reply.may_answer("anything"));
        assert!(
            matches!(reply.into_outcome(), ReplyOutcome::Remote(e) if e.message == "plain text")
        );
        let reply = Reply::parse(Bytes::from_static(br#"{"error": "x", "result": null}"#)).unwrap();
        assert!(matches!(reply.into_outcome(), ReplyOutcome::Answer(_)));
    }

    #[test]
    fn progress_messages_are_not_answers() {
        let parse = |text: &'static str| Reply::parse(Bytes::from_static(text.as_bytes())).unwrap();
        assert!(parse(r#"{"request_id": "x", "progress": 50}"#).is_progress());
        assert!(!parse(r#"{"request_id": "x", "progress": 50, "result": 1}"#).is_progress());
        assert!(!parse(r#"{"request_id": "x", "progress": 5, "error": "no"}"#).is_progress());
        assert!(!parse(r#"{"request_id": "x", "result": 1}"#).is_progress());
    }

    #[test]
    fn malformed_replies_are_recognised() {
        assert_eq!(
            Reply::parse(Bytes::from_static(b"garbage")),
            Err(MalformedReply::NotJson)
        );
        assert_eq!(
            Reply::parse(Bytes::from_static(b"[1]")),
            Err(MalformedReply::NotAnObject)
        );
        assert_eq!(
            Reply::parse(Bytes::from_static(b"{} x")),
            Err(MalformedReply::NotJson)
        );
        assert_eq!(
            Reply::parse(Bytes::from_static(b"{\"a\": \"\xff\"}")),
            Err(MalformedReply::NotJson)
        );
        // What serde_json refuses as a `Value` is refused here too, wherever it is.
        for text in [
            r#"{"result": "\ud800"}"#,
            r#"{"x": {"\ud800": 1}}"#,
            r#"{"a": [01]}"#,
        ] {
            assert_eq!(
                Reply::parse(Bytes::from_static(text.as_bytes())),
                Err(MalformedReply::NotJson),
                "{text}"
            );
        }
        let reply = Reply::parse(Bytes::from_static(br#"{"request_id": 7}"#)).unwrap();
        assert!(!reply.may_answer("7") && reply.request_id().is_none());
    }

    #[test]
    fn the_body_is_kept_as_sent_in_key_order() {
        let text = r#"{"z": 1, "a": {"b": [2, "\u00e9"]}, "request_id": "x", "responder": "d1"}"#;
        let reply = Reply::parse(Bytes::from_static(text.as_bytes())).unwrap();
        assert_eq!(
            (reply.request_id(), reply.responder()),
            (Some("x"), Some("d1"))
        );
        let body = reply.into_body();
        assert_eq!(body.as_bytes(), text.as_bytes());
        let keys: Vec<String> = body.to_map().keys().cloned().collect();
        assert_eq!(keys, ["z", "a", "request_id", "responder"]);
    }
}
