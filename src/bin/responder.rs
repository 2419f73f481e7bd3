//! mqtt-rpc-responder: a device that answers mqtt-rpc requests, for tests, the demo and
//! benchmarks. It subscribes to request filters and answers each request with
//! `{"request_id", "result": {"topic", "request"}}`, following the request's MQTT 5
//! Response Topic and Correlation Data when present, else the seed convention
//! `{request_topic}/response/{request_id}`.
//!
//! A request can steer its own answer through a `"_responder"` object in its body:
//!   `delay_ms`: answer after this many milliseconds
//!   `silent`: never answer
//!   `twice`: answer two times
//!   `error`: answer with this error object instead of a result
//!   `garbage_first`: before the answer, send a non-JSON body, a JSON array and an
//!                    object with another request_id to the same reply topic
//!   `ignore_first`: stay silent the first time a request_id is seen, answer its repeat
//!                   (the answer's result then carries `seen`, the times it arrived)
//!
//! With `--mqtt5-only` it behaves like a plain MQTT 5 device: it answers only requests
//! that carry a Response Topic, echoes their Correlation Data, and ignores `request_id`.
//!
//! With `--session-expiry SECONDS` (and a fixed `--client-id`) the broker keeps its
//! subscriptions and queues QoS 1 requests while it is away, like a device with a
//! persistent session.
//!
//! It prints `READY` on stdout once every filter is subscribed (again after each
//! reconnect), so that whoever started it can wait for that line instead of sleeping, and
//! `NOTIFICATION <topic> <payload>` for each request that asks for no answer.

use bytes::Bytes;
use mqtt_rpc::link::{self, ConnectionOptions, Inbound, Outbox, Protocol};
use mqtt_rpc::protocol;
use serde_json::{json, Map, Value};
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

const USAGE: &str = "usage: mqtt-rpc-responder [--host H] [--port P] [--protocol 3.1.1|5] \
[--qos 0|1] [--client-id ID] [--session-expiry SECONDS] [--username U --password P] \
[--mqtt5-only] FILTER...";

struct Args {
    host: String,
    port: u16,
    protocol: Protocol,
    qos: u8,
    client_id: String,
    mqtt5_only: bool,
    session_expiry: Duration,
    username: Option<String>,
    password: Option<String>,
    filters: Vec<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        host: "127.0.0.1".into(),
        port: 1883,
        protocol: Protocol::V311,
        qos: 0,
        client_id: format!("mqtt-rpc-responder-{}", std::process::id()),
        mqtt5_only: false,
        session_expiry: Duration::ZERO,
        username: None,
        password: None,
        filters: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--host" => args.host = value("--host")?,
            "--port" => {
                args.port = value("--port")?
                    .parse()
                    .map_err(|e| format!("--port: {e}"))?
            }
            "--protocol" => {
                args.protocol = match value("--protocol")?.as_str() {
                    "3.1.1" => Protocol::V311,
                    "5" => Protocol::V5,
                    other => return Err(format!("--protocol must be 3.1.1 or 5, not {other}")),
                }
            }
            "--qos" => args.qos = value("--qos")?.parse().map_err(|e| format!("--qos: {e}"))?,
            "--client-id" => args.client_id = value("--client-id")?,
            "--session-expiry" => {
                let seconds: u64 = value("--session-expiry")?
                    .parse()
                    .map_err(|e| format!("--session-expiry: {e}"))?;
                args.session_expiry = Duration::from_secs(seconds);
            }
            "--username" => args.username = Some(value("--username")?),
            "--password" => args.password = Some(value("--password")?),
            "--mqtt5-only" => args.mqtt5_only = true,
            "-h" | "--help" => return Err(USAGE.into()),
            filter if !filter.starts_with("--") => {
                protocol::validate_filter(filter).map_err(|e| e.to_string())?;
                args.filters.push(filter.to_owned());
            }
            other => return Err(format!("unknown option {other}\n{USAGE}")),
        }
    }
    if args.filters.is_empty() {
        return Err(format!("give at least one request filter\n{USAGE}"));
    }
    if args.mqtt5_only && args.protocol != Protocol::V5 {
        return Err("--mqtt5-only needs --protocol 5".into());
    }
    Ok(args)
}

/// Where and how to answer one request.
struct ReplyRoute {
    topic: String,
    correlation_data: Option<Bytes>,
    /// The id to put in the body (`None` for a plain MQTT 5 device).
    request_id: Option<String>,
}

fn route(
    args: &Args,
    topic: &str,
    body: &Map<String, Value>,
    response_topic: Option<String>,
    correlation_data: Option<Bytes>,
) -> Option<ReplyRoute> {
    let body_id = body
        .get(protocol::REQUEST_ID_MEMBER)
        .and_then(Value::as_str)
        .map(str::to_owned);
    if args.mqtt5_only {
        return response_topic.map(|topic| ReplyRoute {
            topic,
            correlation_data,
            request_id: None,
        });
    }
    if let Some(topic) = response_topic {
        return Some(ReplyRoute {
            topic,
            correlation_data,
            request_id: body_id,
        });
    }
    if let (Some(reply_to), Some(id)) = (body.get("reply_to").and_then(Value::as_str), &body_id) {
        return Some(ReplyRoute {
            topic: reply_to.to_owned(),
            correlation_data: None,
            request_id: Some(id.clone()),
        });
    }
    let id = body_id?;
    Some(ReplyRoute {
        topic: protocol::reply_topic(topic, &id),
        correlation_data: None,
        request_id: Some(id),
    })
}

fn answer_body(
    route: &ReplyRoute,
    topic: &str,
    request: &Map<String, Value>,
    seen: Option<u32>,
) -> Vec<u8> {
    let steer = request.get("_responder");
    let mut reply = Map::new();
    if let Some(id) = &route.request_id {
        reply.insert(protocol::REQUEST_ID_MEMBER.into(), Value::from(id.as_str()));
    }
    match steer.and_then(|s| s.get("error")) {
        Some(error) => {
            reply.insert("error".into(), error.clone());
        }
        None => {
            let mut result = json!({ "topic": topic, "request": Value::Object(request.clone()) });
            if let Some(seen) = seen {
                result["seen"] = Value::from(seen);
            }
            reply.insert("result".into(), result);
        }
    }
    serde_json::to_vec(&reply).unwrap_or_default()
}

fn send(outbox: &Outbox, qos: u8, route: &ReplyRoute, body: Vec<u8>) {
    if outbox
        .publish(
            &route.topic,
            qos,
            body,
            None,
            route.correlation_data.clone(),
        )
        .is_err()
    {
        eprintln!(
            "mqtt-rpc-responder: reply to {} dropped: queue full",
            route.topic
        );
    }
}

/// How many times each request id was seen, for `ignore_first` (bounded: a test tool that
/// runs for a long benchmark must not grow without end).
#[derive(Default)]
struct SeenIds {
    counts: std::collections::HashMap<String, u32>,
}

impl SeenIds {
    fn see(&mut self, request_id: &str) -> u32 {
        if self.counts.len() >= 100_000 {
            self.counts.clear();
        }
        let count = self.counts.entry(request_id.to_owned()).or_insert(0);
        *count += 1;
        *count
    }
}

fn handle(args: &Args, outbox: &Outbox, seen_ids: &mut SeenIds, inbound: Inbound) {
    let Inbound::Message {
        topic,
        payload,
        correlation_data,
        response_topic,
    } = inbound
    else {
        return;
    };
    let Ok(Value::Object(request)) = serde_json::from_slice::<Value>(&payload) else {
        eprintln!("mqtt-rpc-responder: dropped a request on {topic}: not a JSON object");
        return;
    };
    let Some(route) = route(args, &topic, &request, response_topic, correlation_data) else {
        // No request id and no reply topic: a one-way notification. Say so, answer nothing.
        println!("NOTIFICATION {topic} {}", String::from_utf8_lossy(&payload));
        let _ = std::io::stdout().flush();
        return;
    };
    let steer = request.get("_responder").cloned().unwrap_or(Value::Null);
    if steer.get("silent").and_then(Value::as_bool) == Some(true) {
        return;
    }
    let seen = match (
        steer.get("ignore_first").and_then(Value::as_bool),
        &route.request_id,
    ) {
        (Some(true), Some(id)) => Some(seen_ids.see(id)),
        _ => None,
    };
    if seen == Some(1) {
        return;
    }
    let body = answer_body(&route, &topic, &request, seen);
    let twice = steer.get("twice").and_then(Value::as_bool) == Some(true);
    let garbage_first = steer.get("garbage_first").and_then(Value::as_bool) == Some(true);
    let delay = steer.get("delay_ms").and_then(Value::as_u64).unwrap_or(0);
    let (outbox, qos) = (outbox.clone(), args.qos);
    let reply = move || {
        if garbage_first {
            let other_id = json!({ "request_id": protocol::new_request_id(), "result": {} });
            for junk in [
                b"not json at all".to_vec(),
                b"[1, 2, 3]".to_vec(),
                other_id.to_string().into_bytes(),
            ] {
                send(&outbox, qos, &route, junk);
            }
        }
        send(&outbox, qos, &route, body.clone());
        if twice {
            send(&outbox, qos, &route, body);
        }
    };
    if delay == 0 {
        reply();
    } else {
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(delay)).await;
            reply();
        });
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("mqtt-rpc-responder: {message}");
            return ExitCode::from(2);
        }
    };
    let connection = ConnectionOptions {
        host: args.host.clone(),
        port: args.port,
        client_id: args.client_id.clone(),
        protocol: args.protocol,
        keepalive: Duration::from_secs(30),
        connect_timeout: Duration::from_secs(5),
        session_expiry: args.session_expiry,
        username: args.username.clone(),
        password: args.password.clone(),
        ..ConnectionOptions::default()
    };
    let (outbox, mut events) = link::open(&connection, None, 65_536, u16::MAX);
    let mut unacknowledged = args.filters.len();
    let mut seen_ids = SeenIds::default();
    loop {
        match events.next().await {
            Ok(Inbound::Connected { .. }) => {
                for filter in &args.filters {
                    if outbox.subscribe(filter, args.qos).is_err() {
                        eprintln!("mqtt-rpc-responder: could not subscribe {filter}");
                        return ExitCode::FAILURE;
                    }
                }
            }
            Ok(Inbound::SubAck { granted, .. }) => {
                if !granted {
                    eprintln!("mqtt-rpc-responder: the broker refused a subscription");
                    return ExitCode::FAILURE;
                }
                unacknowledged = unacknowledged.saturating_sub(1);
                if unacknowledged == 0 {
                    println!("READY");
                    let _ = std::io::stdout().flush();
                }
            }
            Ok(inbound) => handle(&args, &outbox, &mut seen_ids, inbound),
            Err(why) => {
                // Keep trying (rumqttc reconnects when polled again); the filters are
                // subscribed again on every connection.
                eprintln!(
                    "mqtt-rpc-responder: connection to {}:{} failed: {why}; retrying",
                    args.host, args.port
                );
                unacknowledged = args.filters.len();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
