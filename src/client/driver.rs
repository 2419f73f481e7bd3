//! The driver: it feeds the engine and carries out what the engine asks for. `Shared::run`
//! is the one way into the engine (an input, then its transmits handed to the connection,
//! then waiters woken); two tasks make the inputs: one polls the connection (rumqttc's
//! event loop only makes progress while polled), the other is the one timer for every
//! call, waking the engine at its next deadline or when the publish-rate limit lets the
//! next waiting publish go.

use super::engine::{Engine, Transmit, Unsent};
use super::{CallError, Shared, Waiter};
use crate::acks::{AckLedger, PubAckReason, Sent};
use crate::link::{Backoff, Events, Inbound, LinkError, LinkErrorKind, Properties, Takeover};
use crate::locking::lock;
use crate::protocol::{self, Reply};
use bytes::Bytes;
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// Polls the event loop and hands every event to the engine. After the first connection,
/// a lost connection is retried after the backoff's delay (`link::Backoff`: longer while
/// connections die young or are taken over) until the client is closed.
pub(super) async fn drive_events<W: Waiter>(shared: Arc<Shared<W>>, mut events: Events) {
    let mut shutdown = shared.shutdown.subscribe();
    let options = &shared.options;
    let mut backoff = Backoff::new(options.reconnect_min_delay, options.reconnect_max_delay);
    let mut replies = Vec::new();
    loop {
        let next = tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop) => break,
            next = events.next() => next,
        };
        match next {
            Ok(inbound) => {
                if matches!(inbound, Inbound::Connected { .. }) {
                    backoff.connected(Instant::now());
                }
                // What one read brought is handled in one go: its replies under one lock
                // of the engine, the other events in their order between them.
                let mut next = Some(inbound);
                while let Some(inbound) = next.take() {
                    next = events.buffered();
                    match inbound {
                        Inbound::Message { topic, payload, .. } if shared.is_presence(&topic) => {
                            // Replies read before it are the engine's first, in order.
                            if !replies.is_empty() {
                                on_replies(&shared, &mut replies);
                            }
                            on_presence(&shared, &topic, &payload);
                        }
                        Inbound::Message {
                            topic,
                            payload,
                            correlation_data,
                            ..
                        } => {
                            replies.push(arrived(&shared, topic, &payload, correlation_data));
                            if !matches!(next, Some(Inbound::Message { .. })) {
                                on_replies(&shared, &mut replies);
                            }
                        }
                        // Only close() queues a DISCONNECT: once written, the work is done.
                        Inbound::DisconnectSent => return,
                        other => on_inbound(&shared, other),
                    }
                }
            }
            Err(why) => {
                let (delay, takeover) = backoff.lost(why.kind, Instant::now());
                if !on_connection_lost(&shared, &why, takeover) {
                    break;
                }
                // Our SUBSCRIBEs are sent again on reconnect, by the engine, in a known order.
                events.drop_queued_subscriptions();
                let replays = events.pending_publishes();
                shared.with_ledger(|l| l.connection_lost(&replays));
                tokio::select! {
                    _ = shutdown.wait_for(|stop| *stop) => break,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// A message on a reply filter, parsed.
struct Arrived {
    topic: String,
    reply: Reply,
    correlation_data: Option<Bytes>,
}

/// Why a message on a reply filter is no one's answer.
enum Unreadable {
    Oversized,
    Malformed,
}

/// A message on a reply filter, parsed before the engine is locked (callers starting
/// calls never wait on it).
fn arrived<W: Waiter>(
    shared: &Shared<W>,
    topic: String,
    payload: &[u8],
    correlation_data: Option<Bytes>,
) -> Result<Arrived, Unreadable> {
    if payload.len() > shared.options.connection.max_packet_size {
        return Err(Unreadable::Oversized);
    }
    let reply = Reply::parse(payload).map_err(|_| Unreadable::Malformed)?;
    Ok(Arrived {
        topic,
        reply,
        correlation_data,
    })
}

/// The replies one read brought, to the engine in one run (one lock, one hand-out of
/// wake-ups). `replies` is left empty, its capacity kept for the next read.
fn on_replies<W: Waiter>(shared: &Shared<W>, replies: &mut Vec<Result<Arrived, Unreadable>>) {
    shared.run(|engine, now| {
        for reply in replies.drain(..) {
            match reply {
                Ok(Arrived {
                    topic,
                    reply,
                    correlation_data,
                }) => engine.on_reply(&topic, reply, correlation_data.as_deref(), now),
                Err(Unreadable::Oversized) => engine.on_oversized_reply(),
                Err(Unreadable::Malformed) => engine.on_malformed_reply(),
            }
        }
    });
}

/// A message on the presence filter, to the engine (a read-sized payload at most).
fn on_presence<W: Waiter>(shared: &Shared<W>, topic: &str, payload: &[u8]) {
    if payload.len() > shared.options.connection.max_packet_size {
        return shared.run(|engine, _| engine.on_oversized_presence_message());
    }
    shared.run(|engine, now| engine.on_presence_message(topic, payload, now));
}

fn on_inbound<W: Waiter>(shared: &Shared<W>, inbound: Inbound) {
    match inbound {
        // Handled by `drive_events` (replies in batches; the end of the loop).
        Inbound::Message { .. } | Inbound::DisconnectSent => {}
        Inbound::SubscribeSent(packet_id) => {
            shared.run(|engine, _| engine.on_subscribe_sent(packet_id))
        }
        Inbound::PublishWritten(packet_id) => shared.with_ledger(|l| l.written(packet_id)),
        Inbound::PublishHeldBack(packet_id) => shared.with_ledger(|l| l.held_back(packet_id)),
        Inbound::PubAck { packet_id, reason } => shared.on_puback(packet_id, reason),
        Inbound::SubAck { packet_id, granted } => {
            shared.run(|engine, now| engine.on_suback(packet_id, granted, now))
        }
        Inbound::Connected {
            session_present,
            max_packet_size,
            ..
        } => {
            let broker_limit = max_packet_size
                .and_then(|size| usize::try_from(size).ok())
                .unwrap_or(usize::MAX);
            shared
                .broker_max_packet
                .store(broker_limit, Ordering::Release);
            shared.connected.store(true, Ordering::Release);
            shared.with_ledger(|l| l.reconnected(session_present));
            shared.run(|engine, now| engine.on_connected(session_present, now));
        }
        Inbound::UnsubAck | Inbound::Other => {}
    }
}

/// Returns whether to keep polling (and so reconnect).
fn on_connection_lost<W: Waiter>(shared: &Shared<W>, why: &LinkError, takeover: Takeover) -> bool {
    shared.connected.store(false, Ordering::Release);
    *lock(&shared.last_loss) = Some(why.kind);
    let error = match why.kind {
        LinkErrorKind::Tls => CallError::Tls(why.message.clone()),
        LinkErrorKind::Refused => CallError::Refused(why.message.clone()),
        LinkErrorKind::SubscriptionRefused
        | LinkErrorKind::Closed
        | LinkErrorKind::TakenOver
        | LinkErrorKind::TimedOut
        | LinkErrorKind::Other => CallError::NotConnected(why.message.clone()),
    };
    let retry = shared.run(|engine, _| engine.on_connection_lost(error, &why.message, takeover));
    retry && !shared.closed.load(Ordering::Acquire)
}

/// One timer for all calls: sleeps until the engine's next timeout (or until it changes)
/// and then lets the engine handle it.
pub(super) async fn sweep_deadlines<W: Waiter>(shared: Arc<Shared<W>>) {
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        let next = shared.engine().next_timeout(Instant::now());
        let sleep = async {
            match next {
                Some(deadline) => {
                    tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)).await
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => break,
            _ = shared.timer_wake.notified() => {}
            _ = sleep => shared.run(|engine, now| engine.handle_timeout(now)),
        }
    }
}

/// Waits for a task to end, at most two seconds, then aborts it.
pub(super) async fn join_bounded(mut task: JoinHandle<()>) {
    if tokio::time::timeout(Duration::from_secs(2), &mut task)
        .await
        .is_err()
    {
        task.abort();
    }
}

impl<W: Waiter> Shared<W> {
    pub(super) fn engine(&self) -> MutexGuard<'_, Engine<W>> {
        lock(&self.engine)
    }

    /// Runs one input on the engine, then carries out what it produced. Transmits go to
    /// the connection while the engine is still held, so that rumqttc receives requests in
    /// the engine's order (SUBACKs and PUBACKs are matched by that order); one it refuses
    /// goes back to the engine as an input, in this loop. Waiters are woken and events
    /// reported after the lock is released.
    pub(super) fn run<R>(&self, input: impl FnOnce(&mut Engine<W>, Instant) -> R) -> R {
        let now = Instant::now();
        let (result, wakeups, events, ready, timer_changed, empty) = {
            let mut engine = self.engine();
            let result = input(&mut engine, now);
            while let Some(transmit) = engine.poll_transmit() {
                if let Err(unsent) = self.execute(transmit) {
                    engine.transmit_failed(unsent, now);
                }
            }
            (
                result,
                engine.take_wakeups(),
                engine.take_events(),
                engine.take_ready(),
                engine.take_timer_changed(),
                engine.pending() == 0,
            )
        };
        if timer_changed {
            self.timer_wake.notify_one();
        }
        if let Some(ready) = ready {
            if let Some(tell) = lock(&self.ready).take() {
                let _ = tell.send(ready);
            }
        }
        if empty && self.closing.load(Ordering::Acquire) {
            self.drained.notify_one();
        }
        for (waiter, outcome) in wakeups {
            waiter.complete(outcome);
        }
        for event in events {
            if let Some(sink) = self.event_sink.get() {
                sink(event);
            }
        }
        result
    }

    /// Hands one transmit to the connection; what it refuses comes back as `Unsent`.
    fn execute(&self, transmit: Transmit) -> Result<(), Unsent> {
        let qos = self.options.qos;
        match transmit {
            Transmit::Publish {
                topic,
                body,
                response_topic,
                correlation_data,
                user_properties,
                message_expiry,
                call,
            } => self
                .publish(
                    &topic,
                    body,
                    Properties {
                        response_topic,
                        correlation_data,
                        user_properties,
                        message_expiry,
                    },
                    call,
                )
                .map_err(|call| call.map_or(Unsent::Message, Unsent::Call)),
            Transmit::Subscribe { key, filter } => self
                .outbox
                .subscribe(&filter, qos)
                .map_err(|_| Unsent::Subscribe(key)),
            Transmit::Unsubscribe { filter } => self
                .outbox
                .unsubscribe(&filter)
                .map_err(|_| Unsent::Unsubscribe),
        }
    }

    /// Publishes with the client's QoS; on MQTT 5 with QoS 1 the publish is also entered
    /// in the PUBACK ledger, under its lock, so that the ledger's order is rumqttc's. A
    /// publish the connection refuses gives its call back.
    pub(super) fn publish(
        &self,
        topic: &str,
        body: Vec<u8>,
        properties: Properties,
        call: Option<Sent>,
    ) -> Result<(), Option<Sent>> {
        let qos = self.options.qos;
        let Some(acks) = &self.acks else {
            return self
                .outbox
                .publish(topic, qos, body, properties)
                .map_err(|_| call);
        };
        let mut ledger = lock(acks);
        match self.outbox.publish(topic, qos, body, properties) {
            Ok(()) => {
                ledger.queued(call);
                Ok(())
            }
            Err(_) => Err(call),
        }
    }

    /// A PUBACK: the ledger names its call, and the engine acts on the reason code.
    fn on_puback(&self, packet_id: u16, code: u8) {
        let Some(acks) = &self.acks else {
            return;
        };
        let reason = PubAckReason::from_code(code);
        let Some(sent) = lock(acks).acknowledged(packet_id, reason) else {
            return;
        };
        self.run(|engine, now| engine.on_puback(sent, reason, now));
    }

    fn with_ledger(&self, update: impl FnOnce(&mut AckLedger)) {
        if let Some(acks) = &self.acks {
            update(&mut lock(acks));
        }
    }

    /// Whether a message is the presence source's rather than a reply.
    fn is_presence(&self, topic: &str) -> bool {
        (self.presence_filter.as_deref())
            .is_some_and(|filter| protocol::topic_matches(filter, topic))
    }

    /// The largest request to send: ours, or the broker's if it announced a smaller one
    /// (a larger publish would make it drop the connection).
    pub(super) fn max_packet_size(&self) -> usize {
        self.options
            .connection
            .max_packet_size
            .min(self.broker_max_packet.load(Ordering::Acquire))
    }
}
