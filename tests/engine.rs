//! The engine's rules, one test each, driven by hand (no broker, no clock): the defects the
//! core v2 review found in the old client, each shown gone.

use mqtt_rpc::client::engine::{DeadlineCarrier, Engine, EngineConfig, Transmit};
use mqtt_rpc::client::ConnectionEvent;
use mqtt_rpc::link::{Protocol, Takeover};
use mqtt_rpc::presence::PresenceSource;
use mqtt_rpc::protocol::InputError;
use mqtt_rpc::{CallError, Outcome, Waiter};
use std::time::{Duration, Instant};

struct Numbered(usize);

impl Waiter for Numbered {
    fn complete(self, _outcome: Outcome) {}
}

/// The engine's configuration in these tests; each test changes what it is about.
fn config() -> EngineConfig {
    EngineConfig {
        client_id: "test".into(),
        protocol: Protocol::V311,
        qos: 0,
        inbox_prefix: None,
        max_in_flight: 10,
        max_reply_subscriptions: 10,
        publishes_per_second: None,
        cancel_on_abandon: false,
        deadline_in: DeadlineCarrier::Nowhere,
        presence: None,
        presence_capacity: 1,
    }
}

fn engine(max_in_flight: usize, max_reply_subscriptions: usize) -> Engine<Numbered> {
    let mut engine = Engine::new(EngineConfig {
        max_in_flight,
        max_reply_subscriptions,
        ..config()
    });
    engine.on_connected(false, Instant::now());
    engine
}

fn start(engine: &mut Engine<Numbered>, n: usize, id: &str, topic: &str, now: Instant) {
    let body = format!("{{\"request_id\": \"{id}\"}}").into_bytes();
    engine.start(
        id.to_owned(),
        topic,
        body,
        None,
        (now, now + Duration::from_secs(60)),
        Numbered(n),
    );
}

fn transmits(engine: &mut Engine<Numbered>) -> Vec<Transmit> {
    std::iter::from_fn(|| engine.poll_transmit()).collect()
}

/// Before: a failed publish failed its call, whose freed slot admitted and published the
/// next queued call, which failed in turn, one stack frame deeper each time: a queue deep
/// enough aborted the process. Now each failure is an input, handled in the driver's loop.
#[test]
fn a_connection_that_refuses_everything_fails_a_deep_queue_without_recursion() {
    let now = Instant::now();
    let mut engine = engine(1, 10);
    // The reply filter is held, so that each admitted call publishes at once.
    start(&mut engine, 0, "warm-up", "dev/set", now);
    let subscribe = transmits(&mut engine);
    assert!(matches!(subscribe[0], Transmit::Subscribe { .. }));
    engine.on_subscribe_sent(1);
    engine.on_suback(1, true, now);
    let calls = 200_000;
    for n in 1..=calls {
        start(&mut engine, n, &format!("id-{n}"), "dev/set", now);
    }
    assert_eq!(engine.waiting_for_slot(), calls);
    let mut refused = 0;
    while let Some(transmit) = engine.poll_transmit() {
        refused += 1;
        engine.transmit_failed(transmit.into(), now);
    }
    let failed = engine.take_wakeups();
    assert_eq!(refused, calls + 1);
    assert_eq!(failed.len(), calls + 1);
    assert!(failed
        .iter()
        .all(|(_, outcome)| matches!(outcome, Err(CallError::ConnectionLost(_)))));
    assert_eq!(engine.pending(), 0);
}

/// Before: after a reconnect without the session, a SUBSCRIBE that could not be queued
/// stayed in the queue of SUBSCRIBEs awaiting their packet id, so every later SUBACK was
/// matched to the filter before it: calls on the next filter never went out.
#[test]
fn a_resubscribe_that_cannot_be_queued_leaves_later_subacks_matched() {
    let now = Instant::now();
    let mut engine = engine(10, 10);
    for (n, topic) in ["a/set", "b/set"].into_iter().enumerate() {
        start(&mut engine, n, &format!("held-{n}"), topic, now);
        transmits(&mut engine);
        engine.on_subscribe_sent(n as u16 + 1);
        engine.on_suback(n as u16 + 1, true, now);
    }
    transmits(&mut engine);
    assert!(engine.on_connection_lost(
        CallError::NotConnected("gone".into()),
        "gone",
        Takeover::No
    ));
    start(&mut engine, 2, "on-a", "a/set", now);
    start(&mut engine, 3, "on-b", "b/set", now);
    engine.on_connected(false, now);
    let mut resubscribes: Vec<Transmit> = transmits(&mut engine);
    resubscribes.sort_by_key(|t| format!("{t:?}"));
    assert_eq!(resubscribes.len(), 2);
    // a/set's SUBSCRIBE is refused by the connection; b/set's is written with id 9.
    let (first, second) = (resubscribes.remove(0), resubscribes.remove(0));
    engine.transmit_failed(first.into(), now);
    assert!(
        matches!(second, Transmit::Subscribe { ref filter, .. } if filter == "b/set/response/+")
    );
    engine.on_subscribe_sent(9);
    engine.on_suback(9, true, now);
    let published: Vec<String> = transmits(&mut engine)
        .into_iter()
        .filter_map(|t| match t {
            Transmit::Publish {
                call: Some(sent), ..
            } => Some(sent.request_id),
            _ => None,
        })
        .collect();
    assert_eq!(published, ["on-b"], "b/set's SUBACK publishes b/set's call");
    let failed: Vec<usize> = engine
        .take_wakeups()
        .into_iter()
        .map(|(w, _)| w.0)
        .collect();
    assert_eq!(
        failed,
        [2],
        "a/set's call is told its filter could not be subscribed"
    );
}

/// Before: a second call with a live call's request id replaced it in the table, leaking
/// the first call's slot and leaving its caller waiting for ever.
#[test]
fn a_request_id_in_use_is_refused_and_the_first_call_kept() {
    let now = Instant::now();
    let mut engine = engine(10, 10);
    start(&mut engine, 0, "same", "dev/set", now);
    start(&mut engine, 1, "same", "dev/set", now);
    let refused = engine.take_wakeups();
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].0 .0, 1);
    assert!(matches!(
        refused[0].1,
        Err(CallError::Input(InputError::RequestIdInUse(_)))
    ));
    assert_eq!((engine.pending(), engine.in_flight()), (1, 1));
    engine.forget("same", now);
    assert_eq!((engine.pending(), engine.in_flight()), (0, 0));
}

/// Notifications and cancellations waiting for the publish-rate limit are bounded: past
/// the bound a notification is refused (its caller hears it), never queued without end.
#[test]
fn notifications_beyond_the_rate_queue_are_refused() {
    let now = Instant::now();
    let mut engine = Engine::<Numbered>::new(EngineConfig {
        publishes_per_second: Some(1),
        ..config()
    });
    engine.on_connected(false, now);
    let mut queued = 0;
    let mut refused = 0;
    for _ in 0..5_000 {
        match engine.notify("dev/set", b"{}".to_vec(), now) {
            Ok(Some(_)) => {}
            Ok(None) => queued += 1,
            Err(CallError::Timeout {
                throttled: Some(1), ..
            }) => refused += 1,
            Err(other) => panic!("{other:?}"),
        }
    }
    assert_eq!(queued, mqtt_rpc::client::engine::MAX_QUEUED_MESSAGES);
    assert!(refused > 0);
    assert_eq!(engine.throttled(), queued);
}

/// A request carries the time its caller still waits, counted when it is published: a call
/// that waited 2.5 s of its 10 s for its reply subscription says 7.5 s: 7500 ms as a body
/// member or a user property, and on MQTT 5 a Message Expiry rounded up to 8 s.
#[test]
fn a_request_carries_the_time_left_when_it_is_published() {
    use DeadlineCarrier::{Body, UserProperty};
    for (protocol, deadline_in) in [
        (Protocol::V311, Body),
        (Protocol::V5, UserProperty),
        (Protocol::V5, Body),
    ] {
        let start_at = Instant::now();
        let mut engine = Engine::<Numbered>::new(EngineConfig {
            protocol,
            deadline_in,
            ..config()
        });
        engine.on_connected(false, start_at);
        engine.start(
            "r1".into(),
            "dev/set",
            b"{\"a\": 1, \"request_id\": \"r1\"}".to_vec(),
            None,
            (start_at, start_at + Duration::from_secs(10)),
            Numbered(0),
        );
        assert!(matches!(
            transmits(&mut engine)[..],
            [Transmit::Subscribe { .. }]
        ));
        engine.on_subscribe_sent(1);
        engine.on_suback(1, true, start_at + Duration::from_millis(2500));
        let [Transmit::Publish {
            body,
            user_properties,
            message_expiry,
            ..
        }] = &transmits(&mut engine)[..]
        else {
            panic!("one publish expected");
        };
        let body: serde_json::Value = serde_json::from_slice(body).unwrap();
        let expected_expiry = (protocol == Protocol::V5).then_some(8);
        assert_eq!(*message_expiry, expected_expiry, "{protocol:?}");
        if deadline_in == Body {
            assert_eq!(body["timeout_ms"], 7500);
            assert!(user_properties.is_empty());
        } else {
            assert_eq!(body.get("timeout_ms"), None);
            let expected = [("timeout_ms".to_owned(), "7500".to_owned())];
            assert_eq!(user_properties, &expected);
        }
    }
}

/// An engine that reads retained `{device}/status` messages, connected, its presence
/// filter held.
fn engine_with_presence(max_in_flight: usize) -> Engine<Numbered> {
    let now = Instant::now();
    let mut engine = Engine::new(EngineConfig {
        max_in_flight,
        presence: Some(PresenceSource::RetainedStatus {
            topic: "{device}/status".into(),
            online: b"online".to_vec(),
            offline: b"offline".to_vec(),
        }),
        presence_capacity: 100,
        ..config()
    });
    engine.hold_presence_filter();
    engine.on_connected(false, now);
    let [Transmit::Subscribe { filter, .. }] = &transmits(&mut engine)[..] else {
        panic!("the presence filter is subscribed first");
    };
    assert_eq!(filter, "+/status");
    engine.on_subscribe_sent(1);
    engine.on_suback(1, true, now);
    assert_eq!(engine.take_ready().map(|r| r.is_ok()), Some(true));
    engine
}

fn start_to(
    engine: &mut Engine<Numbered>,
    n: usize,
    wait: Option<Duration>,
    (now, deadline): (Instant, Instant),
) {
    let id = format!("call-{n}");
    let body = format!("{{\"request_id\": \"{id}\"}}").into_bytes();
    engine.start_to_device(
        "cam1",
        wait,
        id,
        "cam1/set",
        body,
        (now, deadline),
        Numbered(n),
    );
}

fn outcomes(engine: &mut Engine<Numbered>) -> Vec<(usize, Outcome)> {
    engine
        .take_wakeups()
        .into_iter()
        .map(|(w, o)| (w.0, o))
        .collect()
}

/// A call to a device its status says is offline ends at once, sending nothing; one told
/// to wait holds no slot until the device's status says online, then goes out with its
/// deadline unchanged.
#[test]
fn a_call_to_an_offline_device_ends_at_once_or_waits_for_it() {
    let now = Instant::now();
    let deadline = now + Duration::from_secs(10);
    let mut engine = engine_with_presence(1);
    engine.on_presence_message("cam1/status", b"offline", now);
    start_to(&mut engine, 1, None, (now, deadline));
    let ended = outcomes(&mut engine);
    assert!(matches!(
        &ended[..],
        [(1, Err(CallError::DeviceOffline { device, waited: false, .. }))] if device == "cam1"
    ));
    assert!(transmits(&mut engine).is_empty());
    start_to(
        &mut engine,
        2,
        Some(Duration::from_secs(5)),
        (now, deadline),
    );
    assert!(transmits(&mut engine).is_empty());
    assert_eq!((engine.pending(), engine.in_flight()), (1, 0));
    assert_eq!(engine.next_timeout(now), Some(now + Duration::from_secs(5)));
    // Another device's news changes nothing for it.
    engine.on_presence_message("cam2/status", b"online", now);
    assert!(transmits(&mut engine).is_empty());
    engine.on_presence_message("cam1/status", b"online", now + Duration::from_secs(1));
    assert!(matches!(
        &transmits(&mut engine)[..],
        [Transmit::Subscribe { filter, .. }] if filter == "cam1/set/response/+"
    ));
    assert_eq!(engine.next_timeout(now), Some(deadline));
    let stats = engine.stats();
    assert_eq!(
        (
            stats.calls_started,
            stats.calls_device_offline,
            stats.calls_waited_for_device
        ),
        (2, 1, 1)
    );
}

/// A wait shorter than the call's timeout ends with `DeviceOffline` (the device is still
/// known offline); a wait as long as the timeout ends as any call does, timed out.
#[test]
fn a_wait_for_a_device_ends_offline_at_its_end_or_timed_out_at_the_deadline() {
    let now = Instant::now();
    let deadline = now + Duration::from_secs(10);
    let mut engine = engine_with_presence(4);
    engine.on_presence_message("cam1/status", b"offline", now);
    start_to(
        &mut engine,
        1,
        Some(Duration::from_secs(2)),
        (now, deadline),
    );
    start_to(
        &mut engine,
        2,
        Some(Duration::from_secs(60)),
        (now, deadline),
    );
    engine.handle_timeout(now + Duration::from_secs(2));
    assert!(matches!(
        &outcomes(&mut engine)[..],
        [(1, Err(CallError::DeviceOffline { waited: true, .. }))]
    ));
    engine.handle_timeout(deadline);
    assert!(matches!(
        &outcomes(&mut engine)[..],
        [(2, Err(CallError::Timeout { .. }))]
    ));
    assert_eq!(engine.pending(), 0);
    // Nothing is left waiting: the device coming online starts nothing.
    engine.on_presence_message("cam1/status", b"online", deadline);
    assert!(transmits(&mut engine).is_empty());
}

/// A device never heard of is called as before; unreadable presence messages change
/// nothing, are counted, and the first is told once.
#[test]
fn unknown_devices_are_called_and_bad_presence_messages_counted() {
    let now = Instant::now();
    let mut engine = engine_with_presence(4);
    engine.take_events();
    start_to(&mut engine, 1, None, (now, now + Duration::from_secs(10)));
    assert!(matches!(
        &transmits(&mut engine)[..],
        [Transmit::Subscribe { .. }]
    ));
    for junk in [&b"maybe"[..], b"ONLINE", b"{}"] {
        engine.on_presence_message("cam1/status", junk, now);
    }
    assert_eq!(engine.presence("cam1"), None);
    assert_eq!(engine.stats().presence_events_malformed, 3);
    let first_drops: Vec<_> = engine.take_events();
    assert_eq!(
        first_drops,
        [ConnectionEvent::FirstDrop {
            counter: "presence_events_malformed"
        }]
    );
}

/// After a reconnect that lost the session, what was known may be stale: it is forgotten,
/// calls held for a device go on (as to a device of unknown state) and the presence filter
/// is subscribed again, so retained statuses come again.
#[test]
fn a_lost_session_forgets_presence_and_releases_held_calls() {
    let now = Instant::now();
    let mut engine = engine_with_presence(4);
    engine.on_presence_message("cam1/status", b"offline", now);
    start_to(
        &mut engine,
        1,
        Some(Duration::from_secs(5)),
        (now, now + Duration::from_secs(9)),
    );
    assert!(engine.on_connection_lost(
        CallError::NotConnected("gone".into()),
        "gone",
        Takeover::No
    ));
    engine.on_connected(false, now);
    assert_eq!(engine.presence("cam1"), None);
    let filters: Vec<String> = transmits(&mut engine)
        .into_iter()
        .filter_map(|t| match t {
            Transmit::Subscribe { filter, .. } => Some(filter),
            _ => None,
        })
        .collect();
    assert!(filters.contains(&"+/status".to_owned()), "{filters:?}");
    assert!(
        filters.contains(&"cam1/set/response/+".to_owned()),
        "{filters:?}"
    );
    assert_eq!(engine.next_timeout(now), Some(now + Duration::from_secs(9)));
}

/// A presence filter the broker refuses fails the first connection, naming the filter
/// (Mosquitto grants what its ACL denies, so this is shown here rather than on a broker).
#[test]
fn a_refused_presence_filter_fails_the_first_connection_by_name() {
    let now = Instant::now();
    let mut engine = Engine::<Numbered>::new(EngineConfig {
        protocol: Protocol::V5,
        presence: Some(PresenceSource::AwsLifecycle {
            prefix: "$aws/events/presence".into(),
        }),
        presence_capacity: 10,
        ..config()
    });
    engine.pin("inbox/test/+");
    engine.hold_presence_filter();
    engine.on_connected(false, now);
    assert_eq!(transmits(&mut engine).len(), 2);
    engine.on_subscribe_sent(1);
    engine.on_subscribe_sent(2);
    // The reply filter alone does not make the connection ready.
    engine.on_suback(1, true, now);
    assert!(engine.take_ready().is_none());
    engine.on_suback(2, false, now);
    let Some(Err(refused)) = engine.take_ready() else {
        panic!("connect() must fail");
    };
    assert!(
        refused.to_string().contains("'$aws/events/presence/+/+'"),
        "{refused}"
    );
    // The presence filter takes no place among the reply filters.
    assert_eq!(engine.reply_subscriptions(), 1);
}
