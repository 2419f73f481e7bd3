//! A deterministic simulation of the engine, in virtual time: a seeded generator drives it
//! with random interleavings of calls, cancellations, retries, replies (late, duplicated,
//! foreign, malformed, progress), SUBACKs granted, refused or lost, PUBACK reason codes,
//! transmits the connection refuses, disconnects with and without a kept session, and
//! time, checking the invariants after every step:
//!
//! 1. every call ends exactly once, and the table is empty once every deadline passed;
//! 2. never after its deadline, and a timeout exactly at it;
//! 3. with its own answer (the body names its request id, and the device received it), or
//!    with the error its situation allows (no responders only after such a PUBACK, a
//!    refused subscription only after a refusal, "not queued" only after a refused
//!    transmit, "id in use" only for a second call with a live id);
//! 4. no bound exceeded: in-flight calls, reply subscriptions, waiting publishes; and no
//!    call waits for a slot while one is free;
//! 5. a reconnect into a kept session subscribes no filter that session holds (failed
//!    reconnect attempts included);
//! 6. with presence (reported at random), a call ends with "device offline" only if its
//!    device was reported offline when it started (then at once) or still is when its wait
//!    ends (then exactly then, before its deadline), never after it was sent; and no call
//!    is held for a device last reported online.
//!
//! A failure names its seed; `MQTT_RPC_SIM_SEED=<seed> cargo test simulation` replays it.
//! `MQTT_RPC_SIM_SECONDS` sets how long the random part runs (default 5 s).

use mqtt_rpc::acks::{PubAckReason, Sent};
use mqtt_rpc::client::engine::{
    DeadlineCarrier, Engine, EngineConfig, Transmit, MAX_QUEUED_MESSAGES,
};
use mqtt_rpc::link::{Protocol, Takeover};
use mqtt_rpc::presence::PresenceSource;
use mqtt_rpc::protocol::{self, InputError, Reply};
use mqtt_rpc::{CallError, Outcome, Waiter};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

/// The waiter of a simulated call: its number. The simulation takes the engine's wakeups
/// itself, so `complete` is never reached.
struct SimWaiter(usize);

impl Waiter for SimWaiter {
    fn complete(self, _outcome: Outcome) {}
}

const TOPICS: [&str; 6] = ["d0/set", "d1/set", "d2/set", "d3/set", "d4/set", "d5/set"];

#[derive(Debug)]
struct SimCall {
    request_id: String,
    deadline: Duration,
    gather: bool,
    /// A second call started with a live call's id: it must be refused at once.
    duplicate_of_live: bool,
    /// When it ended, and how.
    ended: Option<(Duration, Outcome)>,
    started: Duration,
    /// Started for a device (with presence): the device, whether it was reported offline
    /// then, and when its wait for the device ends (if it may wait).
    device: Option<&'static str>,
    offline_at_start: bool,
    wait_end: Option<Duration>,
}

/// What the network will do later, at its due time.
#[derive(Debug)]
enum Later {
    SubAck {
        packet_id: u16,
        granted: bool,
        filter: String,
    },
    Reply {
        topic: String,
        body: Vec<u8>,
        correlation: Option<Vec<u8>>,
    },
    PubAck {
        sent: Sent,
        reason: PubAckReason,
    },
}

struct World {
    rng: StdRng,
    engine: Engine<SimWaiter>,
    base: Instant,
    now: Duration,
    protocol: Protocol,
    pinned: Option<String>,
    inbox: bool,
    max_in_flight: usize,
    max_subscriptions: usize,
    connected: bool,
    /// Transmits handed to the connection, not yet written (rumqttc's request queue).
    outbox: VecDeque<Transmit>,
    /// Filters the broker holds for the client.
    subscribed: HashSet<String>,
    /// Filters whose granted SUBACK the engine received (and has not unsubscribed): a
    /// session the broker kept still holds them, so a reconnect must not subscribe them.
    acked: HashSet<String>,
    next_packet_id: u16,
    later: BTreeMap<(Duration, u64), Later>,
    sequence: u64,
    calls: Vec<SimCall>,
    live_ids: HashMap<String, usize>,
    /// Request ids the device received, those PUBACKed with "no responders", and filters
    /// the broker refused; whether any transmit was refused.
    delivered: HashSet<String>,
    no_responders: HashSet<String>,
    refused_filters: bool,
    refused_transmits: bool,
    /// Off while the first connection is made (its failure ends `connect()` instead).
    faults: bool,
    steps: u64,
    /// The client has a presence source (reported by the world); the devices it last
    /// reported offline.
    presence: bool,
    offline: HashSet<&'static str>,
}

impl World {
    fn new(seed: u64) -> World {
        let mut rng = StdRng::seed_from_u64(seed);
        let protocol = if rng.gen_bool(0.5) {
            Protocol::V5
        } else {
            Protocol::V311
        };
        let mode = rng.gen_range(0..3);
        let inbox = mode == 2;
        let pinned = match mode {
            1 => Some("+/set/response/+".to_owned()),
            2 => Some("inbox/sim/+".to_owned()),
            _ => None,
        };
        let max_in_flight = rng.gen_range(1..=8);
        let max_subscriptions = rng.gen_range(1..=4);
        let publishes_per_second = rng.gen_bool(0.3).then(|| rng.gen_range(5..=200));
        let presence = rng.gen_bool(0.5);
        let engine = Engine::new(EngineConfig {
            client_id: "sim".into(),
            protocol,
            qos: 1,
            inbox_prefix: inbox.then(|| "inbox".to_owned()),
            max_in_flight,
            max_reply_subscriptions: max_subscriptions,
            publishes_per_second,
            cancel_on_abandon: rng.gen_bool(0.5),
            deadline_in: [
                DeadlineCarrier::Nowhere,
                DeadlineCarrier::UserProperty,
                DeadlineCarrier::Body,
            ][rng.gen_range(0..3)],
            presence: presence.then_some(PresenceSource::Reported),
            // Fewer than the devices: some are forgotten, and then called as unknown.
            presence_capacity: 4,
        });
        let mut world = World {
            rng,
            engine,
            base: Instant::now(),
            now: Duration::ZERO,
            protocol,
            pinned,
            inbox,
            max_in_flight,
            max_subscriptions,
            connected: false,
            outbox: VecDeque::new(),
            subscribed: HashSet::new(),
            acked: HashSet::new(),
            next_packet_id: 1,
            later: BTreeMap::new(),
            sequence: 0,
            calls: Vec::new(),
            live_ids: HashMap::new(),
            delivered: HashSet::new(),
            no_responders: HashSet::new(),
            refused_filters: false,
            refused_transmits: false,
            faults: false,
            steps: 0,
            presence,
            offline: HashSet::new(),
        };
        if let Some(filter) = world.pinned.clone() {
            world.engine.pin(&filter);
        }
        world.settle();
        world.connected = true;
        let now = world.instant();
        world.engine.on_connected(false, now);
        world.settle();
        // The pinned filter's SUBACK makes the first connection ready.
        while world.pinned.is_some() && world.engine.take_ready().is_none() {
            world.write();
            let due = world.later.keys().next().map(|(at, _)| *at);
            if let Some(at) = due {
                world.now = world.now.max(at);
            }
            world.deliver_due();
            world.settle_ready();
        }
        world.faults = true;
        world
    }

    /// `settle` that leaves the first connection's readiness to be read.
    fn settle_ready(&mut self) {
        while let Some(transmit) = self.engine.poll_transmit() {
            self.outbox.push_back(transmit);
        }
    }

    fn instant(&self) -> Instant {
        self.base + self.now
    }

    fn schedule(&mut self, delay_ms: u64, event: Later) {
        self.sequence += 1;
        let at = self.now + Duration::from_millis(delay_ms);
        self.later.insert((at, self.sequence), event);
    }

    /// Takes what the engine produced: transmits (some refused, as a full queue would),
    /// and the calls it ended, checked against what the world knows.
    fn settle(&mut self) {
        let now = self.instant();
        while let Some(transmit) = self.engine.poll_transmit() {
            if let Transmit::Unsubscribe { filter } = &transmit {
                // The engine no longer holds it, whether or not the broker hears of it.
                self.acked.remove(filter);
            }
            if self.faults && self.rng.gen_bool(0.02) {
                self.refused_transmits = true;
                self.engine.transmit_failed(transmit.into(), now);
            } else {
                self.outbox.push_back(transmit);
            }
        }
        for (waiter, outcome) in self.engine.take_wakeups() {
            self.ended(waiter.0, outcome);
        }
        self.engine.take_events();
        self.engine.take_ready();
    }

    fn ended(&mut self, index: usize, outcome: Outcome) {
        let now = self.now;
        let call = &mut self.calls[index];
        assert!(
            call.ended.is_none(),
            "call {index} ended twice: {:?} then {outcome:?}",
            call.ended
        );
        assert!(
            now <= call.deadline,
            "call {index} ended at {now:?}, after its deadline {:?}",
            call.deadline
        );
        match &outcome {
            Ok(body) if call.gather => assert!(body.is_empty(), "a gather ends with {{}}"),
            Ok(body) => {
                assert_eq!(
                    body.get("request_id").and_then(Value::as_str),
                    Some(call.request_id.as_str()),
                    "call {index} got another call's answer"
                );
                assert!(
                    self.delivered.contains(&call.request_id),
                    "answered before sent"
                );
            }
            Err(CallError::Remote(_)) => {
                assert!(
                    self.delivered.contains(&call.request_id),
                    "remote error before sent"
                )
            }
            Err(CallError::Timeout { .. }) => {
                assert_eq!(now, call.deadline, "a timeout off its deadline")
            }
            Err(CallError::NoResponders { .. } | CallError::PublishRejected { .. }) => {
                assert!(self.no_responders.contains(&call.request_id))
            }
            Err(CallError::SubscribeRefused { .. }) => assert!(self.refused_filters),
            Err(CallError::ConnectionLost(_)) => {
                assert!(self.refused_transmits, "lost without a refused transmit")
            }
            Err(CallError::Input(InputError::RequestIdInUse(_))) => {
                assert!(call.duplicate_of_live, "id in use refused for a fresh id")
            }
            Err(CallError::DeviceOffline { waited, device, .. }) => {
                assert_eq!(
                    Some(device.as_str()),
                    call.device,
                    "offline: another device"
                );
                assert!(
                    !self.delivered.contains(&call.request_id),
                    "offline once sent"
                );
                if *waited {
                    assert_eq!(Some(now), call.wait_end, "a wait ended off its end");
                    assert!(now < call.deadline, "a wait outlived its deadline");
                    assert!(self.offline.contains(device.as_str()), "online, yet held");
                } else {
                    assert!(call.offline_at_start, "offline, yet reported online");
                    assert_eq!(now, call.started, "an offline device's call waited");
                }
            }
            other => panic!("call {index}: an outcome nothing here explains: {other:?}"),
        }
        if !call.duplicate_of_live && self.live_ids.get(&call.request_id) == Some(&index) {
            self.live_ids.remove(&call.request_id);
        }
        call.ended = Some((now, outcome));
    }

    fn check_bounds(&self) {
        assert!(
            self.engine.in_flight() <= self.max_in_flight,
            "in flight over the limit"
        );
        let pinned = usize::from(self.pinned.is_some());
        assert!(
            self.engine.reply_subscriptions() <= self.max_subscriptions.max(pinned),
            "{} reply subscriptions over the limit {}",
            self.engine.reply_subscriptions(),
            self.max_subscriptions
        );
        assert!(self.engine.throttled() <= self.max_in_flight + MAX_QUEUED_MESSAGES);
        for device in TOPICS.map(device_of) {
            if !self.offline.contains(device) {
                assert_eq!(self.engine.held_for(device), 0, "held for {device}, online");
            }
        }
        let live = self.calls.iter().filter(|c| c.ended.is_none()).count();
        assert_eq!(
            self.engine.pending(),
            live,
            "the table and the live calls disagree"
        );
    }

    fn start_call(&mut self) {
        let topic = TOPICS[self.rng.gen_range(0..TOPICS.len())];
        let reuse = !self.live_ids.is_empty() && self.rng.gen_bool(0.05);
        let (request_id, duplicate_of_live) = if reuse {
            let ids: Vec<&String> = self.live_ids.keys().collect();
            (ids[self.rng.gen_range(0..ids.len())].clone(), true)
        } else {
            (protocol::new_request_id(), false)
        };
        let timeout = Duration::from_millis(self.rng.gen_range(1..3_000));
        let gather = self.rng.gen_bool(0.1);
        let device = (self.presence && !gather && self.rng.gen_bool(0.7)).then(|| device_of(topic));
        let wait = (device.is_some() && self.rng.gen_bool(0.5))
            .then(|| Duration::from_millis(self.rng.gen_range(0..3_000)));
        let index = self.calls.len();
        self.calls.push(SimCall {
            request_id: request_id.clone(),
            deadline: self.now + timeout,
            gather,
            duplicate_of_live,
            ended: None,
            started: self.now,
            device,
            offline_at_start: device.is_some_and(|d| self.offline.contains(d)),
            wait_end: wait.map(|w| self.now + w),
        });
        if !duplicate_of_live {
            self.live_ids.insert(request_id.clone(), index);
        }
        let body = json!({"request_id": request_id}).to_string().into_bytes();
        let now = self.instant();
        if let Some(device) = device {
            let times = (now, now + timeout);
            let waiter = SimWaiter(index);
            self.engine
                .start_to_device(device, wait, request_id, topic, body, times, waiter);
            return;
        }
        self.engine.start(
            request_id,
            topic,
            body,
            gather.then_some(self.rng.gen_bool(0.5).then_some(2)),
            (now, now + timeout),
            SimWaiter(index),
        );
    }

    fn forget_call(&mut self) {
        let live: Vec<usize> = self.live_ids.values().copied().collect();
        if live.is_empty() {
            return;
        }
        let index = live[self.rng.gen_range(0..live.len())];
        let now = self.instant();
        let id = self.calls[index].request_id.clone();
        if self.engine.forget(&id, now).is_some() {
            self.live_ids.remove(&id);
            self.calls[index].ended =
                Some((self.now, Err(CallError::NotConnected("forgotten".into()))));
        }
    }

    /// The world tells the client a device's presence.
    fn report(&mut self) {
        let device = device_of(TOPICS[self.rng.gen_range(0..TOPICS.len())]);
        let online = self.rng.gen_bool(0.5);
        if online {
            self.offline.remove(device);
        } else {
            self.offline.insert(device);
        }
        let now = self.instant();
        self.engine.report_presence(device, online, None, None, now);
    }

    /// Moves time on, never past the engine's next timeout (which then fires exactly).
    fn advance(&mut self) {
        let step = Duration::from_millis(self.rng.gen_range(0..200));
        let mut target = self.now + step;
        if let Some(next) = self.engine.next_timeout(self.instant()) {
            let next = next.saturating_duration_since(self.base);
            target = target.min(next.max(self.now));
        }
        self.now = target;
        self.engine.handle_timeout(self.instant());
    }

    /// rumqttc writes the oldest queued request.
    fn write(&mut self) {
        if !self.connected {
            return;
        }
        let Some(transmit) = self.outbox.pop_front() else {
            return;
        };
        match transmit {
            Transmit::Subscribe { filter, .. } => {
                let packet_id = self.next_packet_id;
                // Few packet ids, so that one id names several SUBSCRIBEs in flight.
                self.next_packet_id = self.next_packet_id % 20 + 1;
                self.engine.on_subscribe_sent(packet_id);
                let granted = !(self.faults && self.rng.gen_bool(0.03));
                if granted {
                    self.subscribed.insert(filter.clone());
                } else {
                    self.refused_filters = true;
                }
                let delay = self.rng.gen_range(0..50);
                self.schedule(
                    delay,
                    Later::SubAck {
                        packet_id,
                        granted,
                        filter,
                    },
                );
            }
            Transmit::Unsubscribe { filter } => {
                self.subscribed.remove(&filter);
            }
            Transmit::Publish {
                topic,
                body,
                response_topic,
                correlation_data,
                call,
                ..
            } => self.device(
                &topic,
                &body,
                response_topic,
                correlation_data.map(|c| c.to_vec()),
                call,
            ),
        }
    }

    /// The device's side: it answers a request (maybe late, twice, with progress first, or
    /// an error), or never; the broker may PUBACK it with a reason code.
    fn device(
        &mut self,
        topic: &str,
        body: &[u8],
        response_topic: Option<String>,
        correlation: Option<Vec<u8>>,
        call: Option<Sent>,
    ) {
        let Some(sent) = call else {
            return; // a notification or a cancellation
        };
        let request_id = sent.request_id.clone();
        if self.protocol == Protocol::V5 && self.rng.gen_bool(0.1) {
            let reason = if self.rng.gen_bool(0.7) {
                PubAckReason::NoMatchingSubscribers
            } else {
                PubAckReason::Rejected(135)
            };
            self.no_responders.insert(request_id.clone());
            let delay = self.rng.gen_range(0..20);
            self.schedule(delay, Later::PubAck { sent, reason });
            return;
        }
        self.delivered.insert(request_id.clone());
        let gather = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| v.get("gather").cloned())
            .is_some();
        let reply_topic = response_topic.unwrap_or_else(|| {
            if self.inbox {
                format!("inbox/sim/{request_id}")
            } else {
                protocol::reply_topic(topic, &request_id)
            }
        });
        let answers = match self.rng.gen_range(0..10) {
            0 => 0,
            1 => 2,
            _ => 1,
        };
        if self.rng.gen_bool(0.2) {
            let progress = json!({"request_id": request_id, "progress": 50}).to_string();
            let delay = self.rng.gen_range(0..500);
            self.schedule(
                delay,
                Later::Reply {
                    topic: reply_topic.clone(),
                    body: progress.into_bytes(),
                    correlation: correlation.clone(),
                },
            );
        }
        for n in 0..answers {
            let answer = if self.rng.gen_bool(0.1) {
                json!({"request_id": request_id, "error": {"code": 7, "message": "no"}})
            } else if gather {
                json!({"request_id": request_id, "result": {}, "responder": format!("dev{n}")})
            } else {
                json!({"request_id": request_id, "result": {"n": n}})
            };
            let delay = self.rng.gen_range(0..2_000);
            self.schedule(
                delay,
                Later::Reply {
                    topic: reply_topic.clone(),
                    body: answer.to_string().into_bytes(),
                    correlation: correlation.clone(),
                },
            );
        }
    }

    /// Junk on the reply filters: foreign ids, malformed bodies, wrong correlation data.
    fn junk(&mut self) {
        let topic = TOPICS[self.rng.gen_range(0..TOPICS.len())];
        let foreign = protocol::new_request_id();
        let live: Vec<String> = self.live_ids.keys().cloned().collect();
        let (body, correlation): (Vec<u8>, Option<Vec<u8>>) = match self.rng.gen_range(0..4) {
            0 => (b"not json".to_vec(), None),
            1 => (
                json!({"request_id": foreign, "result": 1})
                    .to_string()
                    .into_bytes(),
                None,
            ),
            // A body that names another call than its correlation data does.
            2 if !live.is_empty() => {
                let id = &live[self.rng.gen_range(0..live.len())];
                (
                    json!({"request_id": foreign, "result": 1})
                        .to_string()
                        .into_bytes(),
                    Some(id.clone().into_bytes()),
                )
            }
            _ => (b"[1, 2]".to_vec(), Some(vec![0xff, 0xfe])),
        };
        let reply_topic = protocol::reply_topic(topic, &foreign);
        self.deliver_reply(&reply_topic, &body, correlation.as_deref());
    }

    fn deliver_reply(&mut self, topic: &str, body: &[u8], correlation: Option<&[u8]>) {
        if !self.connected {
            return; // QoS 0 towards a client that is away: lost
        }
        let now = self.instant();
        match Reply::parse(body) {
            Ok(reply) => self.engine.on_reply(topic, reply, correlation, now),
            Err(_) => self.engine.on_malformed_reply(),
        }
    }

    /// Delivers the earliest network event that is due.
    fn deliver_due(&mut self) {
        let Some((&key, _)) = self.later.iter().next() else {
            return;
        };
        if key.0 > self.now {
            return;
        }
        let Some(event) = self.later.remove(&key) else {
            return;
        };
        let now = self.instant();
        match event {
            Later::SubAck {
                packet_id,
                granted,
                filter,
            } => {
                if granted {
                    self.acked.insert(filter);
                }
                self.engine.on_suback(packet_id, granted, now)
            }
            Later::Reply {
                topic,
                body,
                correlation,
            } => {
                // The broker delivers only what matches a filter it holds.
                if self
                    .subscribed
                    .iter()
                    .any(|f| protocol::topic_matches(f, &topic))
                {
                    self.deliver_reply(&topic, &body, correlation.as_deref());
                }
            }
            Later::PubAck { sent, reason } => self.engine.on_puback(sent, reason, now),
        }
    }

    fn disconnect(&mut self) {
        if !self.connected {
            // A reconnect attempt that failed: the engine hears of the loss again.
            assert!(self.engine.on_connection_lost(
                CallError::NotConnected("sim".into()),
                "sim",
                Takeover::No
            ));
            return;
        }
        self.connected = false;
        assert!(self.engine.on_connection_lost(
            CallError::NotConnected("sim".into()),
            "sim",
            Takeover::No
        ));
        // rumqttc drops queued SUBSCRIBEs (the engine sends them again); SUBACKs in flight
        // are lost; replies in flight may be lost.
        self.outbox
            .retain(|t| matches!(t, Transmit::Publish { .. }));
        self.later
            .retain(|_, event| !matches!(event, Later::SubAck { .. }));
        let keep_replies = self.rng.gen_bool(0.5);
        if !keep_replies {
            self.later
                .retain(|_, event| !matches!(event, Later::Reply { .. }));
        }
    }

    fn reconnect(&mut self) {
        if self.connected {
            return;
        }
        self.connected = true;
        let session_present = self.rng.gen_bool(0.5);
        if !session_present {
            self.subscribed.clear();
            self.acked.clear();
        }
        let now = self.instant();
        self.engine.on_connected(session_present, now);
        while let Some(transmit) = self.engine.poll_transmit() {
            match &transmit {
                Transmit::Subscribe { filter, .. } => assert!(
                    !self.acked.contains(filter),
                    "{filter} subscribed again, though the kept session holds it"
                ),
                Transmit::Unsubscribe { filter } => {
                    self.acked.remove(filter);
                }
                Transmit::Publish { .. } => {}
            }
            self.outbox.push_back(transmit);
        }
    }

    fn step(&mut self) {
        self.steps += 1;
        match self.rng.gen_range(0..104) {
            0..=14 => self.start_call(),
            15..=17 => self.forget_call(),
            18..=37 => self.advance(),
            38..=62 => self.write(),
            63..=87 => self.deliver_due(),
            88..=91 => self.junk(),
            92 => self.disconnect(),
            93..=96 => self.reconnect(),
            100..=103 if self.presence => self.report(),
            _ => {
                let topic = TOPICS[self.rng.gen_range(0..TOPICS.len())];
                let now = self.instant();
                if let Ok(Some((topic, body))) = self.engine.notify(topic, b"{}".to_vec(), now) {
                    self.outbox.push_back(Transmit::message(topic, body));
                }
            }
        }
        self.settle();
        self.check_bounds();
    }

    /// Lets the world run out: connected, every queued packet written and every event
    /// delivered, then time past every deadline. Every call must have ended.
    fn finish(&mut self) {
        self.reconnect();
        self.settle();
        for _ in 0..100_000 {
            let idle = self.outbox.is_empty() && self.later.is_empty();
            if idle && self.engine.pending() == 0 && self.engine.throttled() == 0 {
                break;
            }
            self.write();
            if let Some((&(at, _), _)) = self.later.iter().next() {
                if at > self.now {
                    self.advance();
                }
            } else {
                self.advance();
            }
            self.deliver_due();
            self.settle();
            self.check_bounds();
        }
        assert_eq!(self.engine.pending(), 0, "calls left pending at the end");
        assert_eq!(self.engine.in_flight(), 0);
        assert_eq!(self.engine.throttled(), 0);
        for (index, call) in self.calls.iter().enumerate() {
            assert!(call.ended.is_some(), "call {index} never ended");
        }
    }
}

/// The device a request topic addresses: its first level.
fn device_of(topic: &'static str) -> &'static str {
    topic.split('/').next().unwrap_or(topic)
}

/// Runs one seed; a failed invariant panics with the seed in the message.
fn run(seed: u64, steps: u64) -> u64 {
    let outcome = std::panic::catch_unwind(|| {
        let mut world = World::new(seed);
        for _ in 0..steps {
            world.step();
        }
        world.finish();
        if std::env::var("MQTT_RPC_SIM_VERBOSE").is_ok() {
            let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
            for call in &world.calls {
                let kind = match &call.ended {
                    Some((_, Ok(_))) => "answered".to_owned(),
                    Some((_, Err(e))) => format!("{e:?}")
                        .split(['(', ' ', '{'])
                        .next()
                        .unwrap_or("")
                        .to_owned(),
                    None => "open".to_owned(),
                };
                *kinds.entry(kind).or_default() += 1;
            }
            eprintln!(
                "seed {seed}: {} calls, {:?}, {:?}",
                world.calls.len(),
                kinds,
                world.engine.stats()
            );
        }
        world.steps
    });
    match outcome {
        Ok(steps) => steps,
        Err(panic) => {
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("simulation failed with seed {seed} (replay: MQTT_RPC_SIM_SEED={seed} cargo test simulation): {why}");
        }
    }
}

#[test]
fn simulation_fixed_seeds() {
    if let Some(seed) = std::env::var("MQTT_RPC_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        run(seed, 5_000);
        return;
    }
    for seed in 0..200 {
        run(seed, 2_000);
    }
}

#[test]
fn simulation_random_seeds_for_a_while() {
    let seconds = std::env::var("MQTT_RPC_SIM_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5.0);
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let mut seeds = StdRng::from_entropy();
    let (mut runs, mut steps) = (0u64, 0u64);
    while Instant::now() < until {
        steps += run(seeds.gen(), 2_000);
        runs += 1;
    }
    eprintln!("simulation: {runs} random seeds, {steps} steps");
}
