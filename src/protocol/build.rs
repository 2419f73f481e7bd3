//! Building what goes out: a request's body (the caller's JSON object, kept byte for byte,
//! with `request_id` and the other members a request adds), a notification's, a
//! cancellation's, and the deadline a request carries; and the check that a payload is a
//! JSON object, without building it.

use super::{
    InputError, CANCEL_MEMBER, GATHER_MEMBER, REPLY_TO_MEMBER, REQUEST_ID_MEMBER, TIMEOUT_MS_MEMBER,
};
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::fmt;

/// Builds the request body: the caller's JSON object with `"request_id"` added (and, in
/// inbox reply mode, `"reply_to"`: the topic to answer on), then each of `members` (the
/// headers of a 3.1.1 request).
///
/// The caller's bytes are kept as they are and the members are appended before the closing
/// brace with Python's `json.dumps` separators, so a payload made by `json.dumps` or
/// pydantic's `.json()` goes out exactly as the hand-written client sent it. A payload that
/// already has one of these members gets it replaced in place, as `dict[...] = ...` did.
pub fn build_request(
    payload: &[u8],
    request_id: &str,
    reply_to: Option<&str>,
    gather: bool,
    members: &[(String, String)],
) -> Result<Vec<u8>, InputError> {
    let scan: ObjectScan = serde_json::from_slice(payload).map_err(|e| classify_json_error(&e))?;
    if scan.has_request_id
        || (reply_to.is_some() && scan.has_reply_to)
        || (gather && scan.has_gather)
        || may_have_member(payload, members)
    {
        let mut object: Map<String, Value> =
            serde_json::from_slice(payload).map_err(|e| classify_json_error(&e))?;
        object.insert(REQUEST_ID_MEMBER.to_owned(), Value::from(request_id));
        if let Some(topic) = reply_to {
            object.insert(REPLY_TO_MEMBER.to_owned(), Value::from(topic));
        }
        if gather {
            object.insert(GATHER_MEMBER.to_owned(), Value::Bool(true));
        }
        insert_members(&mut object, members);
        return serde_json::to_vec(&object).map_err(|e| InputError::NotJson(e.to_string()));
    }
    let (mut out, tail) = open_object(payload, 56)?;
    out.extend_from_slice(b"\"request_id\": \"");
    out.extend_from_slice(request_id.as_bytes());
    out.push(b'"');
    if let Some(topic) = reply_to {
        out.extend_from_slice(b", \"reply_to\": ");
        // A topic may hold characters JSON must escape.
        out.extend_from_slice(Value::from(topic).to_string().as_bytes());
    }
    if gather {
        out.extend_from_slice(b", \"gather\": true");
    }
    append_members(&mut out, members, false);
    out.extend_from_slice(tail);
    Ok(out)
}

/// A notification's body: the caller's JSON object as it is, with `members` (the headers of
/// a 3.1.1 notification) appended as `build_request` appends them.
pub fn notification_body(
    payload: &[u8],
    members: &[(String, String)],
) -> Result<Vec<u8>, InputError> {
    check_object(payload)?;
    if members.is_empty() {
        return Ok(payload.to_vec());
    }
    if may_have_member(payload, members) {
        let mut object: Map<String, Value> =
            serde_json::from_slice(payload).map_err(|e| classify_json_error(&e))?;
        insert_members(&mut object, members);
        return serde_json::to_vec(&object).map_err(|e| InputError::NotJson(e.to_string()));
    }
    let (mut out, tail) = open_object(payload, 64)?;
    append_members(&mut out, members, true);
    out.extend_from_slice(tail);
    Ok(out)
}

/// The object's bytes up to its last member, ready for `, "name": value` to follow (no
/// comma needed when it is empty), and the closing brace with what follows it. The caller
/// has checked that `payload` is a JSON object, so after trimming it ends with '}'.
fn open_object(payload: &[u8], room: usize) -> Result<(Vec<u8>, &[u8]), InputError> {
    let end = payload
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .ok_or(InputError::NotAnObject)?;
    let content_end = payload[..end]
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .ok_or(InputError::NotAnObject)?;
    let mut out = Vec::with_capacity(payload.len() + room);
    out.extend_from_slice(&payload[..=content_end]);
    if payload[content_end] != b'{' {
        out.extend_from_slice(b", ");
    }
    Ok((out, &payload[content_end + 1..]))
}

/// Appends `"name": "value"` pairs, escaped, after what `open_object` wrote.
fn append_members(out: &mut Vec<u8>, members: &[(String, String)], first: bool) {
    for (index, (name, value)) in members.iter().enumerate() {
        if index > 0 || !first {
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(Value::from(name.as_str()).to_string().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(Value::from(value.as_str()).to_string().as_bytes());
    }
}

fn insert_members(object: &mut Map<String, Value>, members: &[(String, String)]) {
    for (name, value) in members {
        object.insert(name.clone(), Value::from(value.as_str()));
    }
}

/// Whether the payload may already have one of these members: its quoted name appears in
/// the text (then the slow path parses it and replaces the member, never duplicating it).
fn may_have_member(payload: &[u8], members: &[(String, String)]) -> bool {
    members.iter().any(|(name, _)| {
        let quoted = Value::from(name.as_str()).to_string();
        payload
            .windows(quoted.len())
            .any(|window| window == quoted.as_bytes())
    })
}

/// The request `body` (a JSON object this crate built) with `"timeout_ms": millis`: appended
/// before its closing brace, or, if the caller's payload had such a member, replacing it.
pub fn with_timeout_member(body: Vec<u8>, millis: u64) -> Vec<u8> {
    let member = [(TIMEOUT_MS_MEMBER.to_owned(), String::new())];
    if may_have_member(&body, &member) {
        if let Ok(mut object) = serde_json::from_slice::<Map<String, Value>>(&body) {
            object.insert(TIMEOUT_MS_MEMBER.to_owned(), Value::from(millis));
            if let Ok(replaced) = serde_json::to_vec(&object) {
                return replaced;
            }
        }
        return body;
    }
    match open_object(&body, 24) {
        Ok((mut out, tail)) => {
            out.extend_from_slice(format!("\"{TIMEOUT_MS_MEMBER}\": {millis}").as_bytes());
            out.extend_from_slice(tail);
            out
        }
        Err(_) => body,
    }
}

/// A request's deadline as it travels, from the time left at publish: whole seconds
/// rounded up for MQTT 5's Message Expiry Interval (at least 1: the broker must not drop
/// it before the caller gives up), and milliseconds rounded up for `timeout_ms`.
pub fn deadline_on_the_wire(remaining: std::time::Duration) -> (u32, u64) {
    let millis = remaining.as_nanos().div_ceil(1_000_000).max(1);
    let seconds = millis.div_ceil(1000);
    (
        u32::try_from(seconds).unwrap_or(u32::MAX),
        u64::try_from(millis).unwrap_or(u64::MAX),
    )
}

/// The message that tells a device a call was abandoned: `{"request_id": ..., "cancel": true}`.
pub fn cancel_request(request_id: &str) -> Vec<u8> {
    let mut body = Map::new();
    body.insert(REQUEST_ID_MEMBER.into(), Value::from(request_id));
    body.insert(CANCEL_MEMBER.into(), Value::Bool(true));
    serde_json::to_vec(&body).unwrap_or_default()
}

/// Checks that a payload is a JSON object, without building it (for notifications, which
/// are sent as they are).
pub fn check_object(payload: &[u8]) -> Result<(), InputError> {
    serde_json::from_slice::<ObjectScan>(payload)
        .map(|_| ())
        .map_err(|e| classify_json_error(&e))
}

fn classify_json_error(e: &serde_json::Error) -> InputError {
    if e.is_data() {
        InputError::NotAnObject
    } else {
        InputError::NotJson(e.to_string())
    }
}

/// Validates a JSON document as an object without building it, noting whether it already
/// has the members a request adds.
struct ObjectScan {
    has_request_id: bool,
    has_reply_to: bool,
    has_gather: bool,
}

impl<'de> Deserialize<'de> for ObjectScan {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(ObjectScanVisitor)
    }
}

struct ObjectScanVisitor;

impl<'de> Visitor<'de> for ObjectScanVisitor {
    type Value = ObjectScan;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ObjectScan, A::Error> {
        let mut scan = ObjectScan {
            has_request_id: false,
            has_reply_to: false,
            has_gather: false,
        };
        while let Some(key) = map.next_key::<ReservedKey>()? {
            match key {
                ReservedKey::RequestId => scan.has_request_id = true,
                ReservedKey::ReplyTo => scan.has_reply_to = true,
                ReservedKey::Gather => scan.has_gather = true,
                ReservedKey::Other => {}
            }
            map.next_value::<IgnoredAny>()?;
        }
        Ok(scan)
    }
}

/// A key, compared with the members a request adds, without allocating.
enum ReservedKey {
    RequestId,
    ReplyTo,
    Gather,
    Other,
}

impl<'de> Deserialize<'de> for ReservedKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = ReservedKey;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_str<E: de::Error>(self, key: &str) -> Result<ReservedKey, E> {
                Ok(match key {
                    REQUEST_ID_MEMBER => ReservedKey::RequestId,
                    REPLY_TO_MEMBER => ReservedKey::ReplyTo,
                    GATHER_MEMBER => ReservedKey::Gather,
                    _ => ReservedKey::Other,
                })
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}
