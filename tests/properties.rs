//! Properties of the wire protocol, on generated input: reply parsing and request building
//! never panic, whatever the bytes; a request keeps every member of the caller's object and
//! adds its id; a valid request topic's reply topic always matches its reply filter.

use mqtt_rpc::protocol::{
    build_request, last_level, new_request_id, reply_filter_for, reply_topic, topic_matches,
    validate_filter, validate_request_topic, Reply,
};
use proptest::prelude::*;
use serde_json::{Map, Value};

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        "[ -~é😀\\\\\"]{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn json_object() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map("[a-z_]{1,10}", json_value(), 0..8)
        .prop_map(|m| m.into_iter().collect())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn reply_parsing_takes_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let parsed = Reply::parse(&bytes);
        let is_object = matches!(serde_json::from_slice::<Value>(&bytes), Ok(Value::Object(_)));
        prop_assert_eq!(parsed.is_ok(), is_object);
    }

    #[test]
    fn a_request_keeps_the_callers_members_and_adds_its_id(
        object in json_object(),
        pretty in any::<bool>(),
        inbox in any::<bool>(),
        gather in any::<bool>(),
        // Header names may collide with the caller's members; values hold any printable text.
        headers in prop::collection::btree_map("[a-z_]{1,10}", "[ -~]{0,20}", 0..3),
    ) {
        let payload = if pretty {
            serde_json::to_vec_pretty(&object).unwrap()
        } else {
            serde_json::to_vec(&object).unwrap()
        };
        let id = new_request_id();
        let reply_to = inbox.then(|| format!("inbox/web \"1\"/{id}"));
        let headers: Vec<(String, String)> = headers.into_iter().collect();
        let request = build_request(&payload, &id, reply_to.as_deref(), gather, &headers).unwrap();
        let Value::Object(built) = serde_json::from_slice::<Value>(&request).unwrap() else {
            panic!("not an object");
        };
        let mut expected = object.clone();
        expected.insert("request_id".into(), Value::from(id.as_str()));
        if let Some(topic) = &reply_to {
            expected.insert("reply_to".into(), Value::from(topic.as_str()));
        }
        if gather {
            expected.insert("gather".into(), Value::Bool(true));
        }
        for (name, value) in &headers {
            expected.insert(name.clone(), Value::from(value.as_str()));
        }
        prop_assert_eq!(built, expected);
    }

    #[test]
    fn request_building_takes_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let id = new_request_id();
        if let Ok(request) = build_request(&bytes, &id, None, false, &[]) {
            let built: Value = serde_json::from_slice(&request).unwrap();
            prop_assert_eq!(built.get("request_id").and_then(Value::as_str), Some(id.as_str()));
        }
    }

    #[test]
    fn a_valid_topics_reply_topic_matches_its_reply_filter(topic in "[a-zA-Z0-9_+#/ \\-é$]{0,40}") {
        let valid = validate_request_topic(&topic).is_ok();
        // (Topics here are far shorter than MAX_TOPIC_BYTES; length has its unit test.)
        let expected = !topic.is_empty()
            && !topic.contains(['+', '#'])
            && !topic.split('/').any(str::is_empty);
        prop_assert_eq!(valid, expected);
        if valid {
            let id = new_request_id();
            let filter = reply_filter_for(&topic);
            let reply = reply_topic(&topic, &id);
            prop_assert!(validate_filter(&filter).is_ok());
            prop_assert!(topic_matches(&filter, &reply));
            prop_assert_eq!(last_level(&reply), id.as_str());
            // Another topic's replies never match this filter.
            let other = format!("{}x", topic);
            prop_assert!(!topic_matches(&filter, &reply_topic(&other, &id)));
        }
    }
}
