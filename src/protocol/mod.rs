//! The wire protocol of mqtt-rpc, with no I/O: request-topic rules, the members a request
//! and a reply carry, reply topics and filters; building what goes out is `build.rs`,
//! reading what comes in `parse.rs`.
//!
//! Everything here is pure so that the rules devices depend on are unit-tested without a
//! broker, and so that each rule is decided in exactly one place.

mod build;
mod parse;

pub use build::{
    build_request, cancel_request, check_object, deadline_on_the_wire, notification_body,
    with_timeout_member,
};
pub use parse::{is_cancellation, time_left, MalformedReply, RemoteError, Reply, ReplyOutcome};

use serde_json::{Map, Value};
use std::fmt;

/// The level between a request topic and the request id in the seed reply topic:
/// `{request_topic}/response/{request_id}`.
pub const RESPONSE_LEVEL: &str = "response";

/// The body member that carries the correlation id, in requests and replies.
pub const REQUEST_ID_MEMBER: &str = "request_id";

/// MQTT's limit on the length of a topic name or filter, in bytes.
pub const MAX_TOPIC_BYTES: usize = 65_535;

/// Why a request was refused before anything was sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputError {
    EmptyTopic,
    WildcardInTopic(String),
    EmptyTopicLevel(String),
    NulInTopic,
    TopicTooLong(usize),
    NotJson(String),
    NotAnObject,
    TooLarge {
        size: usize,
        limit: usize,
    },
    OutsideReplyFilter {
        reply_topic: String,
        filter: String,
    },
    InvalidFilter(String),
    AwsTopicRules(String),
    InvalidRequestId(String),
    RequestIdInUse(String),
    /// A service name or instance id that cannot be one topic level of a control topic.
    InvalidServiceName(String),
    /// More than a broker's quota allows (the message says which and by how much).
    OverQuota(String),
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InputError::EmptyTopic => write!(f, "the request topic is empty"),
            InputError::WildcardInTopic(t) => write!(
                f,
                "the request topic '{t}' contains a wildcard ('+' or '#'); publish needs a concrete topic"
            ),
            InputError::EmptyTopicLevel(t) => write!(
                f,
                "the request topic '{t}' has an empty level (a leading, trailing or doubled '/')"
            ),
            InputError::NulInTopic => write!(f, "the request topic contains a NUL character"),
            InputError::TopicTooLong(n) => write!(
                f,
                "the reply topic would be {n} bytes long; MQTT allows at most {MAX_TOPIC_BYTES}"
            ),
            InputError::NotJson(e) => write!(f, "the payload is not valid JSON: {e}"),
            InputError::NotAnObject => write!(
                f,
                "the payload must be a JSON object (the request_id member is added to it)"
            ),
            InputError::TooLarge { size, limit } => write!(
                f,
                "the request is {size} bytes, over the maximum packet size of {limit} bytes"
            ),
            InputError::OutsideReplyFilter { reply_topic, filter } => write!(
                f,
                "the reply topic '{reply_topic}' is not covered by reply_filter '{filter}', so its answer could never arrive"
            ),
            InputError::InvalidFilter(e) => write!(f, "invalid topic filter: {e}"),
            InputError::AwsTopicRules(e) => write!(f, "{e} (AWS IoT Core's topic rules)"),
            InputError::InvalidRequestId(id) => write!(
                f,
                "the request id {id:?} cannot be a topic level: 1 to 128 characters without '/', '+', '#' or NUL"
            ),
            InputError::RequestIdInUse(id) => {
                write!(f, "a call with request id {id:?} is still pending")
            }
            InputError::InvalidServiceName(e) | InputError::OverQuota(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for InputError {}

/// Checks a request topic: concrete (no wildcards), no empty levels, no NUL, and short
/// enough that its reply topic is still a legal MQTT topic.
pub fn validate_request_topic(topic: &str) -> Result<(), InputError> {
    if topic.is_empty() {
        return Err(InputError::EmptyTopic);
    }
    if topic.contains(['+', '#']) {
        return Err(InputError::WildcardInTopic(topic.to_owned()));
    }
    if topic.contains('\0') {
        return Err(InputError::NulInTopic);
    }
    if topic.split('/').any(str::is_empty) {
        return Err(InputError::EmptyTopicLevel(topic.to_owned()));
    }
    let reply_len = reply_topic_len(topic);
    if reply_len > MAX_TOPIC_BYTES {
        return Err(InputError::TopicTooLong(reply_len));
    }
    Ok(())
}

/// AWS IoT Core's limits on a topic: at most 7 slashes (not counting the first three of a
/// reserved `$aws/...` topic) and 256 bytes.
pub const AWS_MAX_SLASHES: usize = 7;
pub const AWS_MAX_TOPIC_BYTES: usize = 256;

/// Checks that a request topic and its reply topic (two levels and 46 bytes longer) both
/// fit AWS IoT Core's limits, which it would otherwise enforce by dropping the connection.
pub fn check_aws_topic_rules(request_topic: &str) -> Result<(), InputError> {
    let reserved = if request_topic.starts_with("$aws/") {
        3
    } else {
        0
    };
    let slashes = request_topic.matches('/').count() + 2;
    if slashes.saturating_sub(reserved) > AWS_MAX_SLASHES {
        return Err(InputError::AwsTopicRules(format!(
            "the reply topic of '{request_topic}' would have {slashes} slashes; at most {AWS_MAX_SLASHES} are allowed, so a request topic may have at most {} here",
            AWS_MAX_SLASHES + reserved - 2
        )));
    }
    let reply_len = reply_topic_len(request_topic);
    if reply_len > AWS_MAX_TOPIC_BYTES {
        return Err(InputError::AwsTopicRules(format!(
            "the reply topic of '{request_topic}' would be {reply_len} bytes; at most {AWS_MAX_TOPIC_BYTES} are allowed"
        )));
    }
    Ok(())
}

/// Checks a topic filter given by the user (for example `reply_filter`).
pub fn validate_filter(filter: &str) -> Result<(), InputError> {
    let bad = |why: &str| Err(InputError::InvalidFilter(format!("'{filter}': {why}")));
    if filter.is_empty() {
        return bad("it is empty");
    }
    if filter.len() > MAX_TOPIC_BYTES {
        return bad("it is longer than 65535 bytes");
    }
    if filter.contains('\0') {
        return bad("it contains a NUL character");
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        let is_last = i + 1 == levels.len();
        if level.contains('#') && (*level != "#" || !is_last) {
            return bad("'#' must be a whole level and the last one");
        }
        if level.contains('+') && *level != "+" {
            return bad("'+' must be a whole level");
        }
    }
    Ok(())
}

/// Whether `topic` matches the MQTT topic `filter` (`+` one level, `#` the rest).
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    let mut topic_levels = topic.split('/');
    for f in filter.split('/') {
        match f {
            "#" => return true,
            "+" => {
                if topic_levels.next().is_none() {
                    return false;
                }
            }
            level => {
                if topic_levels.next() != Some(level) {
                    return false;
                }
            }
        }
    }
    topic_levels.next().is_none()
}

/// A fresh request id: a uuid4, canonical lowercase hyphenated, as devices expect.
pub fn new_request_id() -> String {
    uuid::Uuid::new_v4().hyphenated().to_string()
}

/// Checks a request id given by the caller (a retry's): it becomes the last level of the
/// reply topic.
pub fn validate_request_id(id: &str) -> Result<(), InputError> {
    if id.is_empty() || id.len() > 128 || id.contains(['/', '+', '#', '\0']) {
        return Err(InputError::InvalidRequestId(id.to_owned()));
    }
    Ok(())
}

/// The seed reply topic of one call: `{request_topic}/response/{request_id}`.
pub fn reply_topic(request_topic: &str, request_id: &str) -> String {
    format!("{request_topic}/{RESPONSE_LEVEL}/{request_id}")
}

/// The filter that covers every reply to one request topic: `{request_topic}/response/+`.
pub fn reply_filter_for(request_topic: &str) -> String {
    format!("{request_topic}/{RESPONSE_LEVEL}/+")
}

/// The length of a seed reply topic for `request_topic`, without building it.
pub fn reply_topic_len(request_topic: &str) -> usize {
    // "/response/" + a 36-character uuid
    request_topic.len() + RESPONSE_LEVEL.len() + 2 + 36
}

/// The last level of a topic: where the seed reply topic carries the request id.
pub fn last_level(topic: &str) -> &str {
    topic.rsplit('/').next().unwrap_or(topic)
}

/// The body member that tells a 3.1.1 device where to answer, in inbox reply mode.
pub const REPLY_TO_MEMBER: &str = "reply_to";

/// A request member that asks every device that receives it to answer, each naming
/// itself in its answer's `responder` member (scatter-gather).
pub const GATHER_MEMBER: &str = "gather";
pub const RESPONDER_MEMBER: &str = "responder";

/// Whether a request asks every receiving device to answer and name itself.
pub fn is_gather(body: &Map<String, Value>) -> bool {
    body.get(GATHER_MEMBER) == Some(&Value::Bool(true))
}

/// The request member (3.1.1) or user property (MQTT 5) that carries the milliseconds a
/// caller still waits, counted when the request is published: the device drops a request
/// that waited longer than that before its handler started.
pub const TIMEOUT_MS_MEMBER: &str = "timeout_ms";

/// The body member of an interim progress message.
pub const PROGRESS_MEMBER: &str = "progress";

/// The body member that marks a cancellation.
pub const CANCEL_MEMBER: &str = "cancel";

/// Name/value pairs a request carries beside its body, such as W3C trace context
/// (`traceparent`, `tracestate`): MQTT 5 user properties, or, as MQTT 3.1.1 has no
/// properties, members of the JSON body.
pub type Headers = Vec<(String, String)>;

/// A request or notification as it goes out: its body and, on MQTT 5, the headers that
/// travel as user properties (on 3.1.1 they are already members of the body).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outgoing {
    pub body: Vec<u8>,
    pub user_properties: Headers,
}

impl From<Vec<u8>> for Outgoing {
    fn from(body: Vec<u8>) -> Outgoing {
        Outgoing {
            body,
            user_properties: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0b7c6a4e-5e0f-4c1e-9d0a-2f5a3b8c9d10";

    #[test]
    fn a_gather_request_says_so_once() {
        let out = build_request(br#"{"a": 1}"#, ID, None, true, &[]).unwrap();
        assert_eq!(
            out,
            format!(r#"{{"a": 1, "request_id": "{ID}", "gather": true}}"#).into_bytes()
        );
        let out = build_request(br#"{"gather": "no", "a": 1}"#, ID, None, true, &[]).unwrap();
        let body: Map<String, Value> = serde_json::from_slice(&out).unwrap();
        assert!(is_gather(&body) && body.len() == 3);
    }

    #[test]
    fn request_topic_rules() {
        assert!(validate_request_topic("dev1/device/control/set").is_ok());
        assert!(validate_request_topic("$aws/things/t1/shadow/get").is_ok());
        assert_eq!(validate_request_topic(""), Err(InputError::EmptyTopic));
        assert!(matches!(
            validate_request_topic("dev/+/set"),
            Err(InputError::WildcardInTopic(_))
        ));
        assert!(matches!(
            validate_request_topic("dev/#"),
            Err(InputError::WildcardInTopic(_))
        ));
        for t in ["/dev", "dev/", "dev//set"] {
            assert!(matches!(
                validate_request_topic(t),
                Err(InputError::EmptyTopicLevel(_))
            ));
        }
        assert_eq!(validate_request_topic("a\0b"), Err(InputError::NulInTopic));
        let long = "a".repeat(MAX_TOPIC_BYTES - 40);
        assert!(matches!(
            validate_request_topic(&long),
            Err(InputError::TopicTooLong(_))
        ));
    }

    #[test]
    fn aws_topic_rules_count_the_reply_topics_levels_and_bytes() {
        assert!(check_aws_topic_rules("dev1/device/control/set").is_ok());
        assert!(check_aws_topic_rules("a/b/c/d/e/f").is_ok()); // 5 + 2 = 7 slashes
        assert!(matches!(
            check_aws_topic_rules("a/b/c/d/e/f/g"),
            Err(InputError::AwsTopicRules(_))
        ));
        // The first three slashes of a reserved topic do not count.
        assert!(check_aws_topic_rules("$aws/things/t1/shadow/name/x/get").is_ok());
        assert!(matches!(
            check_aws_topic_rules(&"x".repeat(211)),
            Err(InputError::AwsTopicRules(_))
        ));
        assert!(check_aws_topic_rules(&"x".repeat(210)).is_ok());
    }

    #[test]
    fn filters_validate_and_match() {
        assert!(validate_filter("+/device/control/set/response/+").is_ok());
        assert!(validate_filter("a/#").is_ok());
        assert!(validate_filter("a/#/b").is_err());
        assert!(validate_filter("a/b+").is_err());
        assert!(validate_filter("").is_err());
        assert!(topic_matches("+/device/response/+", "d1/device/response/x"));
        assert!(!topic_matches("+/device/response/+", "d1/device/response"));
        assert!(!topic_matches(
            "+/device/response/+",
            "d1/device/response/x/y"
        ));
        assert!(topic_matches("a/#", "a/b/c"));
        assert!(topic_matches("#", "a"));
        assert!(!topic_matches("a/b", "a/c"));
    }

    #[test]
    fn reply_topics_follow_the_seed_convention() {
        assert_eq!(
            reply_topic("dev1/device/control/set", ID),
            format!("dev1/device/control/set/response/{ID}")
        );
        assert_eq!(
            reply_filter_for("dev1/device/control/set"),
            "dev1/device/control/set/response/+"
        );
        assert_eq!(last_level(&reply_topic("a/b", ID)), ID);
        assert_eq!(last_level("single"), "single");
    }

    #[test]
    fn request_ids_are_canonical_uuid4() {
        let id = new_request_id();
        assert_eq!(id.len(), 36);
        assert_eq!(id, id.to_lowercase());
        assert_eq!(&id[14..15], "4");
        assert_ne!(id, new_request_id());
    }

    #[test]
    fn request_matches_pythons_json_dumps() {
        let out =
            build_request(br#"{"action": "GET_HEALTH_CHECK"}"#, ID, None, false, &[]).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!(r#"{{"action": "GET_HEALTH_CHECK", "request_id": "{ID}"}}"#)
        );
        let out = build_request(b" {} \n", ID, None, false, &[]).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!(" {{\"request_id\": \"{ID}\"}} \n")
        );
        let out = build_request(b"{\n  \"a\": [1, {\"b\": 2}]\n}", ID, None, false, &[]).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["request_id"], ID);
        assert_eq!(v["a"][1]["b"], 2);
    }

    #[test]
    fn inbox_mode_adds_an_escaped_reply_to() {
        let out = build_request(br#"{"a": 1}"#, ID, Some("inbox/c\"1/x"), false, &[]).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["reply_to"], "inbox/c\"1/x");
        assert_eq!(v["request_id"], ID);
        let out = build_request(
            br#"{"reply_to": "mine", "a": 1}"#,
            ID,
            Some("inbox/x"),
            false,
            &[],
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["reply_to"], "inbox/x");
        assert_eq!(check_object(b"[]"), Err(InputError::NotAnObject));
        assert!(check_object(br#"{"a": 1}"#).is_ok());
    }

    fn trace_context() -> Headers {
        vec![
            (
                "traceparent".into(),
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
            ),
            ("tracestate".into(), "vendor=\"quoted\"".into()),
        ]
    }

    #[test]
    fn headers_become_escaped_members_of_a_3_1_1_request() {
        let out = build_request(br#"{"a": 1}"#, ID, None, false, &trace_context()).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!(
                r#"{{"a": 1, "request_id": "{ID}", "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "tracestate": "vendor=\"quoted\""}}"#
            )
        );
        // A member of that name already there is replaced, never repeated.
        let out = build_request(
            br#"{"traceparent": "old"}"#,
            ID,
            None,
            false,
            &trace_context(),
        )
        .unwrap();
        let v: Map<String, Value> = serde_json::from_slice(&out).unwrap();
        assert_eq!(v.len(), 3);
        assert_eq!(v["traceparent"], trace_context()[0].1.as_str());
    }

    #[test]
    fn a_notification_gets_its_headers_and_nothing_else() {
        assert_eq!(
            notification_body(br#"{"a": 1}"#, &[]).unwrap(),
            br#"{"a": 1}"#
        );
        let out = notification_body(b"{}", &trace_context()[..1]).unwrap();
        assert_eq!(
            out,
            br#"{"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}"#
        );
        assert_eq!(
            notification_body(b"[]", &trace_context()),
            Err(InputError::NotAnObject)
        );
    }

    #[test]
    fn an_existing_request_id_is_replaced_in_place() {
        let out = build_request(br#"{"request_id": "old", "x": 1}"#, ID, None, false, &[]).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!(r#"{{"request_id":"{ID}","x":1}}"#)
        );
    }

    #[test]
    fn bad_payloads_are_refused() {
        assert_eq!(
            build_request(b"[1, 2]", ID, None, false, &[]),
            Err(InputError::NotAnObject)
        );
        assert_eq!(
            build_request(b"\"text\"", ID, None, false, &[]),
            Err(InputError::NotAnObject)
        );
        assert_eq!(
            build_request(b"42", ID, None, false, &[]),
            Err(InputError::NotAnObject)
        );
        assert!(matches!(
            build_request(b"{\"a\": ", ID, None, false, &[]),
            Err(InputError::NotJson(_))
        ));
        assert!(matches!(
            build_request(b"", ID, None, false, &[]),
            Err(InputError::NotJson(_))
        ));
        assert!(matches!(
            build_request(b"{} {}", ID, None, false, &[]),
            Err(InputError::NotJson(_))
        ));
        assert!(matches!(
            build_request(b"\xff", ID, None, false, &[]),
            Err(InputError::NotJson(_))
        ));
    }

    #[test]
    fn replies_parse_into_answers_and_remote_errors() {
        let reply = Reply::parse(br#"{"request_id": "x", "result": {"ok": true}}"#).unwrap();
        assert_eq!(reply.request_id(), Some("x"));
        assert!(reply.may_answer("x"));
        assert!(!reply.may_answer("y"));
        match reply.into_outcome() {
            ReplyOutcome::Answer(body) => assert_eq!(body["result"]["ok"], true),
            other => panic!("expected an answer, got {other:?}"),
        }
        let reply = Reply::parse(
            br#"{"request_id": "x", "error": {"code": -32000, "message": "busy", "data": [1]}}"#,
        )
        .unwrap();
        assert_eq!(
            reply.into_outcome(),
            ReplyOutcome::Remote(RemoteError {
                code: -32000,
                message: "busy".into(),
                data: serde_json::json!([1]),
            })
        );
        let reply = Reply::parse(br#"{"error": "plain text"}"#).unwrap();
        assert!(reply.may_answer("anything"));
        assert!(
            matches!(reply.into_outcome(), ReplyOutcome::Remote(e) if e.message == "plain text")
        );
    }

    #[test]
    fn progress_messages_are_not_answers() {
        assert!(Reply::parse(br#"{"request_id": "x", "progress": 50}"#)
            .unwrap()
            .is_progress());
        assert!(
            !Reply::parse(br#"{"request_id": "x", "progress": 50, "result": 1}"#)
                .unwrap()
                .is_progress()
        );
        assert!(!Reply::parse(br#"{"request_id": "x", "result": 1}"#)
            .unwrap()
            .is_progress());
    }

    #[test]
    fn malformed_replies_are_recognised() {
        assert_eq!(Reply::parse(b"garbage"), Err(MalformedReply::NotJson));
        assert_eq!(Reply::parse(b"[1]"), Err(MalformedReply::NotAnObject));
        let reply = Reply::parse(br#"{"request_id": 7}"#).unwrap();
        assert!(!reply.may_answer("7"));
    }

    #[test]
    fn reply_keeps_key_order() {
        let reply = Reply::parse(br#"{"z": 1, "a": 2, "request_id": "x"}"#).unwrap();
        let keys: Vec<&String> = reply.body.keys().collect();
        assert_eq!(keys, ["z", "a", "request_id"]);
    }

    #[test]
    fn the_timeout_member_is_appended_or_replaces_the_applications_own() {
        let appended = with_timeout_member(br#"{"a": 1, "request_id": "x"}"#.to_vec(), 250);
        assert_eq!(
            appended,
            br#"{"a": 1, "request_id": "x", "timeout_ms": 250}"#
        );
        let replaced = with_timeout_member(br#"{"timeout_ms": "soon", "b": 2}"#.to_vec(), 9);
        let object: Value = serde_json::from_slice(&replaced).unwrap();
        assert_eq!(object, serde_json::json!({"timeout_ms": 9, "b": 2}));
    }

    #[test]
    fn a_deadline_rounds_up_on_the_wire_and_the_shortest_given_wins() {
        use std::time::Duration;
        assert_eq!(
            deadline_on_the_wire(Duration::from_micros(7_000_001)),
            (8, 7001)
        );
        assert_eq!(deadline_on_the_wire(Duration::ZERO), (1, 1));
        let body = |value: Value| match serde_json::json!({ "timeout_ms": value }) {
            Value::Object(map) => map,
            _ => unreachable!(),
        };
        let property = [("timeout_ms".to_owned(), "1500".to_owned())];
        assert_eq!(
            time_left(&body(Value::from(300)), &[], Some(2)),
            Some(Duration::from_millis(300))
        );
        assert_eq!(
            time_left(&Map::new(), &property, Some(2)),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            time_left(&Map::new(), &[], Some(2)),
            Some(Duration::from_secs(2))
        );
        assert_eq!(time_left(&Map::new(), &[], None), None);
        for ignored in [Value::from(-5), Value::from("soon"), Value::from(1e300)] {
            assert_eq!(time_left(&body(ignored), &[], None), None);
        }
    }
}
