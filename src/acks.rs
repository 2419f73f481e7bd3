//! Which call a PUBACK acknowledges. rumqttc reports packet ids, not publishes, so the
//! client records the order in which it hands QoS 1 publishes to rumqttc and follows
//! rumqttc's own events (a publish written, a publish held back by a packet-id collision,
//! a PUBACK, a reconnect's replay) to learn each publish's packet id.
//!
//! Only MQTT 5 PUBACKs carry a reason code worth acting on (16: no matching subscribers),
//! so the client keeps this ledger only for MQTT 5 with QoS 1. A ledger that ever loses
//! step with rumqttc stops associating for good: a wrong association could fail the wrong
//! call, while no association only leaves a call to its timeout.

use std::collections::{HashMap, VecDeque};

/// One publish of one call: its request id and the call's sequence number, so that a
/// late PUBACK for a first attempt never touches a retry that reuses the request id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    pub request_id: String,
    pub call_seq: u64,
}

/// A publish handed to rumqttc and not yet written: `packet_id` is known only for a
/// publish that rumqttc will replay after a reconnect.
#[derive(Debug)]
struct Queued {
    packet_id: Option<u16>,
    call: Option<Sent>,
}

/// What a PUBACK reported about a call's request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PubAckReason {
    Success,
    NoMatchingSubscribers,
    /// Any failing reason code (128 and above), with its code.
    Rejected(u8),
}

impl PubAckReason {
    pub fn from_code(code: u8) -> Self {
        match code {
            0 => PubAckReason::Success,
            16 => PubAckReason::NoMatchingSubscribers,
            other => PubAckReason::Rejected(other),
        }
    }
}

/// The name MQTT 5 gives a PUBACK reason code.
pub fn reason_name(code: u8) -> &'static str {
    match code {
        0 => "Success",
        16 => "No matching subscribers",
        128 => "Unspecified error",
        131 => "Implementation specific error",
        135 => "Not authorized",
        144 => "Topic Name invalid",
        145 => "Packet Identifier in use",
        151 => "Quota exceeded",
        153 => "Payload format invalid",
        _ => "Unknown reason",
    }
}

#[derive(Debug, Default)]
pub struct AckLedger {
    enabled: bool,
    queued: VecDeque<Queued>,
    in_flight: HashMap<u16, Option<Sent>>,
    /// A publish rumqttc holds back because its packet id is still in flight; it is
    /// written once that id's PUBACK arrives.
    collided: Option<(u16, Option<Sent>)>,
    /// The collided publish was moved to `in_flight` by a PUBACK; rumqttc's next
    /// "publish written" event for its packet id is that publish.
    collided_released: Option<u16>,
    /// How many entries at the front of `queued` sit in rumqttc's pending queue, which a
    /// reconnect without a session drops.
    replay_len: usize,
}

impl AckLedger {
    pub fn new(enabled: bool) -> Self {
        AckLedger {
            enabled,
            ..AckLedger::default()
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// A publish was handed to rumqttc (`call` is None for cancels and notifications).
    pub fn queued(&mut self, call: Option<Sent>) {
        if self.enabled {
            self.queued.push_back(Queued {
                packet_id: None,
                call,
            });
        }
    }

    /// rumqttc wrote a publish with this packet id.
    pub fn written(&mut self, packet_id: u16) {
        if !self.enabled {
            return;
        }
        if self.collided_released == Some(packet_id) {
            self.collided_released = None;
            return;
        }
        match self.queued.pop_front() {
            Some(entry) if entry.packet_id.is_none_or(|known| known == packet_id) => {
                self.replay_len = self.replay_len.saturating_sub(1);
                self.in_flight.insert(packet_id, entry.call);
            }
            _ => self.lose_step(),
        }
    }

    /// rumqttc held a publish back: its packet id is still awaiting a PUBACK.
    pub fn held_back(&mut self, packet_id: u16) {
        if !self.enabled {
            return;
        }
        match self.queued.pop_front() {
            Some(entry) if self.collided.is_none() => {
                self.replay_len = self.replay_len.saturating_sub(1);
                self.collided = Some((packet_id, entry.call));
            }
            _ => self.lose_step(),
        }
    }

    /// A PUBACK arrived: the call whose request it acknowledges, if it is one of ours.
    pub fn acknowledged(&mut self, packet_id: u16, reason: PubAckReason) -> Option<Sent> {
        if !self.enabled {
            return None;
        }
        let call = self.in_flight.remove(&packet_id).flatten();
        // rumqttc writes the held-back publish only after a PUBACK it considers successful.
        let releases = !matches!(reason, PubAckReason::Rejected(_));
        if releases
            && self
                .collided
                .as_ref()
                .is_some_and(|(id, _)| *id == packet_id)
        {
            if let Some((id, held)) = self.collided.take() {
                self.in_flight.insert(id, held);
                self.collided_released = Some(id);
            }
        }
        call
    }

    /// The connection dropped. `pending` is rumqttc's queue of publishes to write first on
    /// the next connection, in order: `Some(packet_id)` for an unacknowledged publish it
    /// replays, `None` for one it had not yet taken from its channel.
    pub fn connection_lost(&mut self, pending: &[Option<u16>]) {
        if !self.enabled {
            return;
        }
        let mut by_packet_id: HashMap<u16, Option<Sent>> = self.in_flight.drain().collect();
        let mut fresh = VecDeque::new();
        for entry in self.queued.drain(..) {
            match entry.packet_id {
                Some(id) => {
                    by_packet_id.insert(id, entry.call);
                }
                None => fresh.push_back(entry),
            }
        }
        self.collided_released = None;
        let mut rebuilt = VecDeque::with_capacity(pending.len() + fresh.len());
        for packet_id in pending {
            match packet_id {
                Some(id) => rebuilt.push_back(Queued {
                    packet_id: Some(*id),
                    call: by_packet_id.remove(id).flatten(),
                }),
                None => match fresh.pop_front() {
                    Some(entry) => rebuilt.push_back(entry),
                    None => return self.lose_step(),
                },
            }
        }
        self.replay_len = rebuilt.len();
        rebuilt.extend(fresh);
        self.queued = rebuilt;
    }

    /// Connected again; without a session rumqttc drops what it would have replayed.
    pub fn reconnected(&mut self, session_present: bool) {
        if !session_present {
            let dropped = self.replay_len.min(self.queued.len());
            self.queued.drain(..dropped);
            self.collided = None;
        }
        self.replay_len = 0;
    }

    fn lose_step(&mut self) {
        *self = AckLedger::new(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(id: &str) -> Option<Sent> {
        Some(Sent {
            request_id: id.into(),
            call_seq: 0,
        })
    }

    fn id_of(sent: Option<Sent>) -> Option<String> {
        sent.map(|s| s.request_id)
    }

    #[test]
    fn pubacks_reach_the_publish_with_their_packet_id() {
        let mut ledger = AckLedger::new(true);
        ledger.queued(sent("a"));
        ledger.queued(None);
        ledger.queued(sent("c"));
        ledger.written(1);
        ledger.written(2);
        ledger.written(3);
        let ok = PubAckReason::Success;
        assert_eq!(id_of(ledger.acknowledged(3, ok)), Some("c".into()));
        assert_eq!(id_of(ledger.acknowledged(2, ok)), None);
        assert_eq!(id_of(ledger.acknowledged(1, ok)), Some("a".into()));
        assert_eq!(id_of(ledger.acknowledged(1, ok)), None);
    }

    #[test]
    fn a_held_back_publish_takes_its_packet_id_when_released() {
        let mut ledger = AckLedger::new(true);
        ledger.queued(sent("a"));
        ledger.queued(sent("b"));
        ledger.written(1);
        ledger.held_back(1);
        let ok = PubAckReason::NoMatchingSubscribers;
        assert_eq!(id_of(ledger.acknowledged(1, ok)), Some("a".into()));
        ledger.written(1);
        assert_eq!(id_of(ledger.acknowledged(1, ok)), Some("b".into()));
        assert!(ledger.is_enabled());
    }

    #[test]
    fn replays_after_a_reconnect_keep_their_calls() {
        let mut ledger = AckLedger::new(true);
        ledger.queued(sent("a"));
        ledger.queued(sent("b"));
        ledger.queued(sent("c"));
        ledger.written(1);
        ledger.written(2);
        // "a" and "b" are replayed, "c" had not left the channel; the loss is seen twice
        // (a failed reconnect attempt) before the connection is back.
        ledger.connection_lost(&[Some(1), Some(2), None]);
        ledger.connection_lost(&[Some(1), Some(2), None]);
        ledger.queued(sent("d"));
        ledger.reconnected(true);
        for packet_id in 1..=4 {
            ledger.written(packet_id);
        }
        let ok = PubAckReason::Success;
        let ids: Vec<_> = (1..=4).map(|p| id_of(ledger.acknowledged(p, ok))).collect();
        assert_eq!(
            ids,
            vec![sent("a"), sent("b"), sent("c"), sent("d")]
                .into_iter()
                .map(id_of)
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_reconnect_without_session_forgets_the_replays() {
        let mut ledger = AckLedger::new(true);
        ledger.queued(sent("a"));
        ledger.written(1);
        ledger.connection_lost(&[Some(1)]);
        ledger.queued(sent("b"));
        ledger.reconnected(false);
        ledger.written(1);
        assert_eq!(
            id_of(ledger.acknowledged(1, PubAckReason::Success)),
            Some("b".into())
        );
    }

    #[test]
    fn a_ledger_out_of_step_stops_associating() {
        let mut ledger = AckLedger::new(true);
        ledger.written(1);
        ledger.queued(sent("a"));
        ledger.written(2);
        assert!(!ledger.is_enabled());
        assert_eq!(ledger.acknowledged(2, PubAckReason::Success), None);
    }
}
