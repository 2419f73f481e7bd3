//! Where a request's answer goes and what it says: the routing rule of DESIGN.md (the
//! request's MQTT 5 Response Topic with its Correlation Data; else the body's `reply_to`;
//! else the seed topic `{request_topic}/response/{request_id}`; none of these: a one-way
//! notification) and the bodies of answers and progress messages.

use crate::protocol::{self, RemoteError, REQUEST_ID_MEMBER};
use bytes::Bytes;
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value};

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
pub fn reply_body(route: &ReplyRoute, outcome: &Result<Value, RemoteError>) -> Vec<u8> {
    // Written straight from the borrowed parts: no map of owned copies is built per answer.
    serde_json::to_vec(&ReplyBody { route, outcome }).unwrap_or_default()
}

struct ReplyBody<'a> {
    route: &'a ReplyRoute,
    outcome: &'a Result<Value, RemoteError>,
}

impl Serialize for ReplyBody<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut reply = serializer.serialize_map(None)?;
        if let Some(id) = &self.route.request_id {
            reply.serialize_entry(REQUEST_ID_MEMBER, id)?;
        }
        if let Some(name) = &self.route.responder {
            reply.serialize_entry(protocol::RESPONDER_MEMBER, name)?;
        }
        match self.outcome {
            Ok(result) => reply.serialize_entry("result", result)?,
            Err(error) => reply.serialize_entry("error", &ErrorBody(error))?,
        }
        reply.end()
    }
}

/// `{"code", "message", "data"}`, `data` only when there is some.
struct ErrorBody<'a>(&'a RemoteError);

impl Serialize for ErrorBody<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut error = serializer.serialize_map(None)?;
        error.serialize_entry("code", &self.0.code)?;
        error.serialize_entry("message", &self.0.message)?;
        if !self.0.data.is_null() {
            error.serialize_entry("data", &self.0.data)?;
        }
        error.end()
    }
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
        let ok: Value = serde_json::from_slice(&reply_body(&route, &Ok(json!({"x": 1})))).unwrap();
        assert_eq!(ok, json!({"request_id": "r1", "result": {"x": 1}}));
        route.responder = Some("dev-7".into());
        let named: Value = serde_json::from_slice(&reply_body(&route, &Ok(json!(1)))).unwrap();
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
        let failed: Value = serde_json::from_slice(&reply_body(&route, &Err(error))).unwrap();
        assert_eq!(
            failed,
            json!({"request_id": "r1", "error": {"code": -32000, "message": "busy", "data": [1]}})
        );
    }
}
