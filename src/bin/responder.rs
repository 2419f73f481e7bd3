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
//!   `progress_steps`: send this many `{"request_id", "progress": n}` messages first
//!   `ignore_first`: stay silent the first time a request_id is seen, answer its repeat
//!                   (the answer's result then carries `seen`, the times it arrived)
//!
//! It behaves as any device built on the library's `Responder`: a repeated request (same
//! `request_id`) gets the first run's answer without running again, a `cancel` message
//! stops a delayed answer, and past its limits it answers "overloaded" (the answers it
//! holds, delayed ones included, count against `--max-concurrency` + `--max-queued`).
//!
//! With `--mqtt5-only` it behaves like a plain MQTT 5 device: it answers only requests
//! that carry a Response Topic, echoes their Correlation Data, and ignores `request_id`.
//!
//! With `--share-group NAME` it joins an MQTT shared-subscription group: the broker gives
//! each request to one member of the pool (whose client id the answer carries).
//!
//! With `--session-expiry SECONDS` (and a fixed `--client-id`) the broker keeps its
//! subscriptions and queues QoS 1 requests while it is away, like a device with a
//! persistent session.
//!
//! With `--service NAME` (and `--service-version V`, `--service-prefix P`) it is a named
//! service: it answers discovery and health requests (PING, INFO, STATS; docs/services.md).
//!
//! SIGTERM or SIGINT makes it leave gracefully (a rolling deploy's step): it unsubscribes,
//! answers what it had started, disconnects within `--grace SECONDS` (25 by default), and
//! says on stderr what the leave did; a second signal stops it at once. `--client-id`
//! takes the placeholders `{pid}`, `{hostname}` and `{random}`.
//!
//! It prints `READY` on stdout once every filter is subscribed (again after each
//! reconnect), so that whoever started it can wait for that line instead of sleeping, and
//! `NOTIFICATION <topic> <payload>` for each request that asks for no answer.

#![forbid(unsafe_code)]

use mqtt_rpc::link::{self, ConnectionOptions, Protocol};
use mqtt_rpc::protocol::{self, RemoteError};
use mqtt_rpc::responder::{
    reply_body, Incoming, IncomingRequest, PendingAnswer, Replier, ReplyRoute, RequestLimits,
    Responder, ResponderOptions, ServiceIdentity, Shutdown, DEFAULT_SERVICE_PREFIX,
};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::future::Future;
use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

const USAGE: &str = "usage: mqtt-rpc-responder [--host H] [--port P] [--protocol 3.1.1|5] \
[--qos 0|1] [--client-id ID] [--session-expiry SECONDS] [--username U --password P] \
[--share-group NAME] [--mqtt5-only] [--max-concurrency N] [--max-queued N] \
[--keepalive SECONDS] [--grace SECONDS] \
[--service NAME [--service-version V] [--service-prefix P]] FILTER...";

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
    share_group: Option<String>,
    limits: RequestLimits,
    service: Option<ServiceIdentity>,
    filters: Vec<String>,
    keepalive: Duration,
    /// How long a graceful leave (SIGTERM) may take: Kubernetes waits 30 s by default.
    grace: Duration,
}

/// A positive number of seconds, for `name`.
fn seconds(name: &str, text: &str) -> Result<Duration, String> {
    match text.parse::<f64>() {
        Ok(value) if value > 0.0 && value.is_finite() => Ok(Duration::from_secs_f64(value)),
        _ => Err(format!(
            "{name} must be a positive number of seconds, not {text:?}"
        )),
    }
}

/// A graceful leave's default grace: within Kubernetes' default termination period (30 s).
const DEFAULT_GRACE: Duration = Duration::from_secs(25);

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
        share_group: None,
        limits: RequestLimits::default(),
        service: None,
        filters: Vec::new(),
        keepalive: Duration::from_secs(30),
        grace: DEFAULT_GRACE,
    };
    let mut service_version = None;
    let mut service_prefix = DEFAULT_SERVICE_PREFIX.to_owned();
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
            "--client-id" => args.client_id = link::expand_client_id(&value("--client-id")?)?,
            "--session-expiry" => {
                let seconds: u64 = value("--session-expiry")?
                    .parse()
                    .map_err(|e| format!("--session-expiry: {e}"))?;
                args.session_expiry = Duration::from_secs(seconds);
            }
            "--keepalive" => args.keepalive = seconds("--keepalive", &value("--keepalive")?)?,
            "--grace" => args.grace = seconds("--grace", &value("--grace")?)?,
            "--username" => args.username = Some(value("--username")?),
            "--password" => args.password = Some(value("--password")?),
            "--share-group" => args.share_group = Some(value("--share-group")?),
            "--mqtt5-only" => args.mqtt5_only = true,
            "--max-concurrency" => {
                args.limits.max_concurrency = value("--max-concurrency")?
                    .parse()
                    .map_err(|e| format!("--max-concurrency: {e}"))?
            }
            "--max-queued" => {
                args.limits.max_queued = value("--max-queued")?
                    .parse()
                    .map_err(|e| format!("--max-queued: {e}"))?
            }
            "--service" => {
                args.service = Some(ServiceIdentity {
                    name: value("--service")?,
                    ..ServiceIdentity::default()
                })
            }
            "--service-version" => service_version = Some(value("--service-version")?),
            "--service-prefix" => service_prefix = value("--service-prefix")?,
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
    if let Some(service) = args.service.as_mut() {
        service.version = service_version;
        service.prefix = service_prefix;
        service.validate().map_err(|e| e.to_string())?;
    }
    if args.share_group.is_some() && !args.session_expiry.is_zero() {
        eprintln!(
            "mqtt-rpc-responder: warning: a session that outlives this member keeps its share \
             of the group's requests queued for it after it is gone (--session-expiry 0 avoids it)"
        );
    }
    if args.mqtt5_only && args.protocol != Protocol::V5 {
        return Err("--mqtt5-only needs --protocol 5".into());
    }
    Ok(args)
}

/// The answer this test device gives: the topic and request it received (and how often
/// it saw the request id, for `ignore_first`), or the error the request asked for.
fn answer(
    args: &Args,
    topic: &str,
    request: &Map<String, Value>,
    seen: Option<u32>,
) -> Result<Value, RemoteError> {
    if let Some(error) = request.get("_responder").and_then(|s| s.get("error")) {
        return Err(RemoteError {
            code: error.get("code").and_then(Value::as_i64).unwrap_or(0),
            message: error
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            data: error.get("data").cloned().unwrap_or(Value::Null),
        });
    }
    let mut result = json!({ "topic": topic, "request": Value::Object(request.clone()) });
    if let Some(seen) = seen {
        result["seen"] = Value::from(seen);
    }
    if args.share_group.is_some() {
        // In a pool, say who answered.
        result["responder"] = Value::from(args.client_id.as_str());
    }
    Ok(result)
}

fn send(replier: &Replier, route: &ReplyRoute, body: Vec<u8>) {
    if replier.send(route, body).is_err() {
        report_unsent(route);
    }
}

fn report_unsent(route: &ReplyRoute) {
    eprintln!(
        "mqtt-rpc-responder: reply to {} dropped: queue full",
        route.topic
    );
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

/// An answer waiting for its delay, taken by whichever comes first: the delay's end or a
/// cancellation.
type Waiting = Arc<Mutex<Option<PendingAnswer>>>;

/// Delayed answers under way, by run number, so that a cancellation stops its run (bounded:
/// finished ones are let go as new ones start, and the ledger holds only so many runs).
#[derive(Default)]
struct Delayed {
    runs: HashMap<u64, (tokio::task::AbortHandle, Waiting)>,
}

impl Delayed {
    fn start(
        &mut self,
        number: u64,
        waiting: Waiting,
        run: impl Future<Output = ()> + Send + 'static,
    ) {
        if self.runs.len() >= 1_024 {
            self.runs.retain(|_, (run, _)| !run.is_finished());
        }
        self.runs
            .insert(number, (tokio::spawn(run).abort_handle(), waiting));
    }

    /// Stops a run and ends it unanswered at once, so that its place is free for the very
    /// next request (an aborted task is dropped later).
    fn cancel(&mut self, number: u64) {
        if let Some((run, waiting)) = self.runs.remove(&number) {
            run.abort();
            if let Some(pending) = take(&waiting) {
                pending.abandon();
            }
        }
    }
}

/// The first SIGTERM or SIGINT starts a graceful leave (unsubscribe, let the runs answer,
/// disconnect) within `grace`; a second one stops at once.
async fn leave_on_signals(shutdown: watch::Sender<Shutdown>, grace: Duration) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut terminate), Ok(mut interrupt)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return eprintln!("mqtt-rpc-responder: cannot watch SIGTERM and SIGINT");
    };
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    eprintln!("mqtt-rpc-responder: leaving within {grace:?} (a second signal stops at once)");
    let _ = shutdown.send(Shutdown::Leave {
        by: Instant::now() + grace,
    });
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    let _ = shutdown.send(Shutdown::Now);
}

fn take(waiting: &Waiting) -> Option<PendingAnswer> {
    waiting
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .take()
}

fn handle(args: &Args, seen_ids: &mut SeenIds, delayed: &mut Delayed, incoming: Incoming) {
    let request = match incoming {
        Incoming::Request(request) => request,
        Incoming::Cancel(number) => return delayed.cancel(number),
        Incoming::FirstDrop(counter) => {
            // Said once per kind, on stderr (stdout is for READY and NOTIFICATION lines).
            return eprintln!(
                "mqtt-rpc-responder: dropped a request ({counter}); later ones are not reported"
            );
        }
        Incoming::TakenOver => {
            return eprintln!(
                "mqtt-rpc-responder: ERROR: the connection of client id {:?} was taken over by \
                 another connection with the same client id; give each process its own id \
                 (--client-id 'name-{{pid}}')",
                args.client_id
            );
        }
    };
    let IncomingRequest {
        topic,
        body: request,
        payload,
        answer: pending,
        ..
    } = *request;
    let Some(route) = pending.route().cloned() else {
        // No request id and no reply topic: a one-way notification. Say so, answer nothing.
        println!("NOTIFICATION {topic} {}", String::from_utf8_lossy(&payload));
        let _ = std::io::stdout().flush();
        return pending.abandon();
    };
    let steer = request.get("_responder").cloned().unwrap_or(Value::Null);
    if steer.get("silent").and_then(Value::as_bool) == Some(true) {
        return pending.abandon();
    }
    let seen = match (
        steer.get("ignore_first").and_then(Value::as_bool),
        &route.request_id,
    ) {
        (Some(true), Some(id)) => Some(seen_ids.see(id)),
        _ => None,
    };
    if seen == Some(1) {
        return pending.abandon();
    }
    let outcome = answer(args, &topic, &request, seen);
    let twice = steer.get("twice").and_then(Value::as_bool) == Some(true);
    let garbage_first = steer.get("garbage_first").and_then(Value::as_bool) == Some(true);
    let delay = steer.get("delay_ms").and_then(Value::as_u64).unwrap_or(0);
    let progress_steps = steer
        .get("progress_steps")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let number = pending.number();
    let reply = move |pending: PendingAnswer| {
        let replier = pending.replier().clone();
        for step in 1..=progress_steps {
            if pending.progress(Value::from(step)).is_err() {
                report_unsent(&route);
            }
        }
        if garbage_first {
            let other_id = json!({ "request_id": protocol::new_request_id(), "result": {} });
            for junk in [
                b"not json at all".to_vec(),
                b"[1, 2, 3]".to_vec(),
                other_id.to_string().into_bytes(),
            ] {
                send(&replier, &route, junk);
            }
        }
        let copy = twice.then(|| reply_body(&route, &outcome));
        if pending.answer(outcome).is_err() {
            report_unsent(&route);
        }
        if let Some(copy) = copy {
            send(&replier, &route, copy);
        }
    };
    if delay == 0 {
        reply(pending);
    } else {
        let waiting: Waiting = Arc::new(Mutex::new(Some(pending)));
        delayed.start(number, waiting.clone(), async move {
            tokio::time::sleep(Duration::from_millis(delay)).await;
            if let Some(pending) = take(&waiting) {
                reply(pending);
            }
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
        keepalive: args.keepalive,
        connect_timeout: Duration::from_secs(5),
        session_expiry: args.session_expiry,
        username: args.username.clone(),
        password: args.password.clone(),
        ..ConnectionOptions::default()
    };
    let options = ResponderOptions {
        connection,
        qos: args.qos,
        filters: args.filters.clone(),
        share_group: args.share_group.clone(),
        mqtt5_only: args.mqtt5_only,
        limits: args.limits.clone(),
        service: args.service.clone(),
        ..ResponderOptions::default()
    };
    let responder = match Responder::new(options) {
        Ok(responder) => responder,
        Err(error) => {
            eprintln!("mqtt-rpc-responder: {error}");
            return ExitCode::from(2);
        }
    };
    let mut seen_ids = SeenIds::default();
    let mut delayed = Delayed::default();
    let counters = responder.counters();
    // Serves until SIGTERM or SIGINT: then it leaves its pool gracefully.
    let (shutdown, shutdown_requested) = watch::channel(Shutdown::Serve);
    tokio::spawn(leave_on_signals(shutdown, args.grace));
    let served = responder
        .serve(
            |incoming| handle(&args, &mut seen_ids, &mut delayed, incoming),
            || {
                println!("READY");
                let _ = std::io::stdout().flush();
            },
            shutdown_requested,
        )
        .await;
    match served {
        Ok(()) => {
            let read = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
            if read(&counters.leave_ms) > 0 || read(&counters.leave_answered) > 0 {
                eprintln!(
                    "mqtt-rpc-responder: left in {} ms: {} answers sent during the leave, {} unsent",
                    read(&counters.leave_ms),
                    read(&counters.leave_answered),
                    read(&counters.leave_unsent),
                );
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!(
                "mqtt-rpc-responder: could not connect to {}:{}: {error}",
                args.host, args.port
            );
            ExitCode::FAILURE
        }
    }
}
