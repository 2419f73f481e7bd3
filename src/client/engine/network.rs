//! The engine's inputs from the network: the connection up or down, SUBSCRIBE and SUBACK,
//! PUBACK reason codes, transmits the connection refused, and replies (answers, progress,
//! scatter-gather answers, junk). The engine itself, its outputs and its inputs from
//! callers and time are in `mod.rs`.

use super::{CallError, Dropped, Engine, Transmit, Unsent};
use crate::acks::{PubAckReason, Sent};
use crate::client::{ConnectionEvent, Waiter};
use crate::link::Takeover;
use crate::protocol::{self, Reply, ReplyOutcome};
use crate::subscriptions::Settled;
use serde_json::{Map, Value};
use std::time::Instant;

impl<W: Waiter> Engine<W> {
    // --- inputs: the connection ----------------------------------------------------------

    pub fn on_connected(&mut self, session_present: bool, now: Instant) {
        self.connected = true;
        if self.connecting {
            // The first connection: ready now, or once the pinned filters' SUBACKs arrive.
            if !self.subscriptions.pinned_pending() {
                self.connecting = false;
                self.ready = Some(Ok(()));
            }
            self.events.push(ConnectionEvent::Connected {
                reconnect: false,
                session_present,
            });
            return;
        }
        self.counts.reconnects += 1;
        if !session_present {
            self.presence_session_lost(now);
        }
        let (ready, to_subscribe) = self.subscriptions.reconnected(session_present);
        for (key, filter) in to_subscribe {
            self.transmits
                .push_back(Transmit::Subscribe { key, filter });
        }
        for id in ready {
            self.publish(&id, now);
        }
        self.events.push(ConnectionEvent::Connected {
            reconnect: true,
            session_present,
        });
    }

    /// The connection dropped (or could not be made). Returns false when it was the first
    /// attempt, which then fails `connect()` rather than retrying.
    /// `takeover` says whether another connection with our client id caused it.
    pub fn on_connection_lost(
        &mut self,
        error: CallError,
        reason: &str,
        takeover: Takeover,
    ) -> bool {
        let was_connected = std::mem::replace(&mut self.connected, false);
        self.counts.takeovers += takeover.losses();
        if self.connecting {
            self.connecting = false;
            self.ready = Some(Err(error));
            return false;
        }
        // Calls in flight keep waiting for their answers (until their deadlines); new
        // calls wait for the connection and their reply filters to be back.
        self.subscriptions.disconnected();
        if was_connected {
            self.events.push(ConnectionEvent::Disconnected {
                reason: reason.to_owned(),
                takeover,
            });
        }
        true
    }

    /// rumqttc wrote the oldest requested SUBSCRIBE with this packet id.
    pub fn on_subscribe_sent(&mut self, packet_id: u16) {
        self.subscriptions.sent(packet_id);
    }

    pub fn on_suback(&mut self, packet_id: u16, granted: bool, now: Instant) {
        match self.subscriptions.acknowledged(packet_id, granted) {
            Settled::Granted(waiting) => {
                for id in waiting {
                    self.publish(&id, now);
                }
                if self.connecting && !self.subscriptions.pinned_pending() {
                    self.connecting = false;
                    self.ready = Some(Ok(()));
                }
            }
            Settled::Refused { filter, waiting } => {
                for id in waiting {
                    let error = CallError::SubscribeRefused {
                        filter: filter.clone(),
                    };
                    self.fail(&id, error, now);
                }
                if self.connecting {
                    self.connecting = false;
                    self.ready = Some(Err(CallError::SubscribeRefused { filter }));
                }
            }
            Settled::Nothing => {}
        }
    }

    /// A PUBACK the ledger matched to a call's publish: on MQTT 5, "no matching
    /// subscribers" or a refusal ends that call at once (if it is still the same call).
    pub fn on_puback(&mut self, sent: Sent, reason: PubAckReason, now: Instant) {
        let Some(call) = self.calls.get_mut(&sent.request_id) else {
            return;
        };
        if call.seq() != sent.call_seq {
            return;
        }
        let topic = call.topic.clone();
        let error = match reason {
            PubAckReason::Success => return,
            PubAckReason::NoMatchingSubscribers => CallError::NoResponders { topic },
            PubAckReason::Rejected(reason_code) => {
                CallError::PublishRejected { topic, reason_code }
            }
        };
        if let Some(call) = self.take_call(&sent.request_id, now) {
            match &error {
                CallError::NoResponders { .. } => self.counts.calls_no_responders += 1,
                _ => self.counts.calls_rejected += 1,
            }
            self.wakeups.push((call.waiter, Err(error)));
        }
    }

    /// A transmit the connection would not take (its queue is full, or it is closed).
    pub fn transmit_failed(&mut self, unsent: Unsent, now: Instant) {
        match unsent {
            Unsent::Call(sent) => {
                if self.calls.get_mut(&sent.request_id).map(|c| c.seq()) == Some(sent.call_seq) {
                    self.fail(&sent.request_id, CallError::unsent(), now);
                }
            }
            // A notification that waited for the rate limit, or a cancellation: nobody
            // waits for it; counted.
            Unsent::Message => self.dropped(Dropped::Message),
            Unsent::Subscribe(key) => {
                // Its key leaves the SUBACK queue with it, so later SUBACKs stay matched.
                for id in self.subscriptions.subscribe_failed(&key) {
                    self.fail(&id, CallError::unsent(), now);
                }
                if self.pinned.as_ref() == Some(&key) && self.connecting {
                    self.connecting = false;
                    self.ready = Some(Err(CallError::NotConnected(
                        "could not queue the reply filter's subscription".into(),
                    )));
                }
            }
            // A filter that stays subscribed is harmless: it is dropped again when idle.
            Unsent::Unsubscribe => {}
        }
    }

    // --- inputs: replies -----------------------------------------------------------------

    /// A message on a reply filter that is not a JSON object: dropped and counted.
    pub fn on_malformed_reply(&mut self) {
        self.dropped(Dropped::Malformed);
    }

    /// A message on a reply filter larger than `max_packet_size`: dropped unread, counted.
    pub fn on_oversized_reply(&mut self) {
        self.dropped(Dropped::Oversized);
    }

    /// A reply. Correlation: the MQTT 5 Correlation Data when present, else the topic's
    /// last level, else the body's `request_id`. Anything that matches no pending call, or
    /// names another id than the one it was matched by, is dropped and counted: it never
    /// completes the wrong call.
    pub fn on_reply(
        &mut self,
        topic: &str,
        reply: Reply,
        correlation_data: Option<&[u8]>,
        now: Instant,
    ) {
        let request_id = match correlation_data {
            Some(data) => std::str::from_utf8(data).ok().map(str::to_owned),
            None => {
                let last = protocol::last_level(topic);
                if self.calls.contains(last) || self.recent.contains(last) {
                    Some(last.to_owned())
                } else {
                    reply.request_id().map(str::to_owned)
                }
            }
        };
        // One look at the table: whether the call is pending, and whether it gathers.
        let gathers = request_id
            .as_deref()
            .and_then(|id| self.calls.get_mut(id))
            .map(|call| call.gather.is_some());
        let id = match (request_id, gathers) {
            (Some(id), Some(_)) if !reply.may_answer(&id) => {
                self.dropped(Dropped::Malformed);
                return;
            }
            (Some(id), Some(gathers)) => {
                if reply.is_progress() {
                    // An interim message: the call goes on waiting for its answer.
                    self.counts.progress_received += 1;
                    if let (Some(call), false) = (self.calls.get_mut(&id), gathers) {
                        call.waiter.progress(reply.body);
                    }
                    return;
                }
                if gathers {
                    self.gathered(&id, reply.body, now);
                    return;
                }
                id
            }
            (Some(id), None) if self.recent.contains(&id) => {
                self.dropped(Dropped::Duplicate);
                return;
            }
            _ => {
                self.dropped(Dropped::Stray);
                return;
            }
        };
        let Some(call) = self.take_call(&id, now) else {
            return;
        };
        self.recent.remember(id);
        self.latency
            .record(now.saturating_duration_since(call.started));
        let outcome = match reply.into_outcome() {
            ReplyOutcome::Answer(body) => {
                self.counts.calls_succeeded += 1;
                Ok(body)
            }
            ReplyOutcome::Remote(error) => {
                self.counts.calls_failed_remotely += 1;
                Err(CallError::Remote(error))
            }
        };
        self.wakeups.push((call.waiter, outcome));
    }

    // --- the work ------------------------------------------------------------------------

    /// An answer to a scatter-gather call: handed on unless its device already answered;
    /// the call ends once it has `max_replies`.
    fn gathered(&mut self, request_id: &str, body: Map<String, Value>, now: Instant) {
        let Some(call) = self.calls.get_mut(request_id) else {
            return;
        };
        let Some(gather) = call.gather.as_mut() else {
            return;
        };
        let responder = body.get(protocol::RESPONDER_MEMBER).and_then(Value::as_str);
        if !gather.accept(responder) {
            self.dropped(Dropped::Duplicate);
            return;
        }
        self.counts.replies_gathered += 1;
        let full = gather.is_full();
        call.waiter.progress(body);
        if full {
            if let Some(call) = self.take_call(request_id, now) {
                self.gather_ended(request_id.to_owned(), call.waiter);
            }
        }
    }

    /// A scatter-gather call is over: its answers went out as they came, so it ends with
    /// an empty object; later answers count as repeats.
    pub(super) fn gather_ended(&mut self, request_id: String, waiter: W) {
        self.counts.calls_succeeded += 1;
        self.recent.remember(request_id);
        self.wakeups.push((waiter, Ok(Map::new())));
    }
}
