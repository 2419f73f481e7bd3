//! `Stats`: what a client counts (calls by outcome, replies dropped by kind) and the gauges
//! read from its tables. The engine keeps the counters in a `Stats` of its own; the names
//! the Python binding shows come from `Stats::counts`, the one list of them (`Dropped`
//! names the counter of each kind of drop, checked against that list).

use std::time::Duration;

/// Counters that only grow, plus the gauges derived from the live tables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub calls_started: u64,
    pub calls_succeeded: u64,
    pub calls_timed_out: u64,
    pub calls_failed_remotely: u64,
    pub calls_cancelled: u64,
    pub calls_failed: u64,
    /// MQTT 5 calls ended at once by a PUBACK: no subscriber, or rejected by the broker.
    pub calls_no_responders: u64,
    pub calls_rejected: u64,
    /// Calls ended at once because their device was known offline (or stayed offline
    /// while they waited for it), and calls that waited for their device.
    pub calls_device_offline: u64,
    pub calls_waited_for_device: u64,
    /// Presence events that could not be read (no `clientId`, not JSON, an unknown status).
    pub presence_events_malformed: u64,
    /// Devices whose presence is known (a gauge, at most the presence capacity).
    pub presence_devices: u64,
    pub replies_dropped_stray: u64,
    pub replies_dropped_duplicate: u64,
    pub replies_dropped_malformed: u64,
    /// Messages on the reply filters larger than `max_packet_size`.
    pub replies_dropped_oversized: u64,
    pub progress_received: u64,
    /// Calls that waited for the publish-rate limit, and how long they waited in all.
    pub calls_throttled: u64,
    pub throttled_wait: Duration,
    /// Answers collected by scatter-gather calls (each device's once).
    pub replies_gathered: u64,
    /// Notifications and cancellations dropped: the publish-rate queue had no room, or
    /// the connection would not take them.
    pub messages_dropped: u64,
    pub reconnects: u64,
    /// Connections lost to another connection with the same client id.
    pub takeovers: u64,
    pub publish_rate_limit: Option<usize>,
    pub reply_subscriptions_limit: usize,
    pub pending: u64,
    pub reply_subscriptions: u64,
    /// Latency percentiles of answered calls, when there are any.
    pub latency_p50: Option<Duration>,
    pub latency_p90: Option<Duration>,
    pub latency_p99: Option<Duration>,
}

impl Stats {
    /// The counters and the count gauges by the names users see, in a stable order.
    pub fn counts(&self) -> [(&'static str, u64); 25] {
        [
            ("calls_started", self.calls_started),
            ("calls_succeeded", self.calls_succeeded),
            ("calls_timed_out", self.calls_timed_out),
            ("calls_failed_remotely", self.calls_failed_remotely),
            ("calls_cancelled", self.calls_cancelled),
            ("calls_failed", self.calls_failed),
            ("calls_no_responders", self.calls_no_responders),
            ("calls_rejected", self.calls_rejected),
            ("calls_device_offline", self.calls_device_offline),
            ("calls_waited_for_device", self.calls_waited_for_device),
            ("presence_events_malformed", self.presence_events_malformed),
            ("presence_devices", self.presence_devices),
            ("replies_dropped_stray", self.replies_dropped_stray),
            ("replies_dropped_duplicate", self.replies_dropped_duplicate),
            ("replies_dropped_malformed", self.replies_dropped_malformed),
            ("replies_dropped_oversized", self.replies_dropped_oversized),
            ("progress_received", self.progress_received),
            ("replies_gathered", self.replies_gathered),
            ("calls_throttled", self.calls_throttled),
            ("messages_dropped", self.messages_dropped),
            ("reconnects", self.reconnects),
            ("takeovers", self.takeovers),
            ("pending", self.pending),
            ("reply_subscriptions", self.reply_subscriptions),
            (
                "reply_subscriptions_limit",
                self.reply_subscriptions_limit as u64,
            ),
        ]
    }

    /// Adds another connection's counters and gauges (not its latency percentiles).
    pub fn add(&mut self, other: &Stats) {
        self.calls_started += other.calls_started;
        self.calls_succeeded += other.calls_succeeded;
        self.calls_timed_out += other.calls_timed_out;
        self.calls_failed_remotely += other.calls_failed_remotely;
        self.calls_cancelled += other.calls_cancelled;
        self.calls_failed += other.calls_failed;
        self.calls_no_responders += other.calls_no_responders;
        self.calls_rejected += other.calls_rejected;
        self.calls_device_offline += other.calls_device_offline;
        self.calls_waited_for_device += other.calls_waited_for_device;
        self.presence_events_malformed += other.presence_events_malformed;
        // Every connection of a pool reads the same events: the devices are the same ones.
        self.presence_devices = self.presence_devices.max(other.presence_devices);
        self.replies_dropped_stray += other.replies_dropped_stray;
        self.replies_dropped_duplicate += other.replies_dropped_duplicate;
        self.replies_dropped_malformed += other.replies_dropped_malformed;
        self.replies_dropped_oversized += other.replies_dropped_oversized;
        self.progress_received += other.progress_received;
        self.calls_throttled += other.calls_throttled;
        self.throttled_wait += other.throttled_wait;
        self.publish_rate_limit = match (self.publish_rate_limit, other.publish_rate_limit) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
        self.reply_subscriptions_limit += other.reply_subscriptions_limit;
        self.replies_gathered += other.replies_gathered;
        self.messages_dropped += other.messages_dropped;
        self.reconnects += other.reconnects;
        self.takeovers += other.takeovers;
        self.pending += other.pending;
        self.reply_subscriptions += other.reply_subscriptions;
    }
}

/// What the engine drops and counts rather than raising.
#[derive(Debug, Clone, Copy)]
pub enum Dropped {
    /// A reply that matches no call.
    Stray,
    /// A second answer to a call already answered.
    Duplicate,
    /// Not a JSON object, or naming another request id than the one it matched.
    Malformed,
    /// Larger than `max_packet_size`.
    Oversized,
    /// A notification or cancellation the publish-rate queue had no room for.
    Message,
    /// A presence event that could not be read.
    PresenceEvent,
}

impl Dropped {
    #[cfg(test)]
    const ALL: [Dropped; 6] = [
        Dropped::Stray,
        Dropped::Duplicate,
        Dropped::Malformed,
        Dropped::Oversized,
        Dropped::Message,
        Dropped::PresenceEvent,
    ];

    /// The name of its counter in `Stats`.
    pub fn counter(self) -> &'static str {
        match self {
            Dropped::Stray => "replies_dropped_stray",
            Dropped::Duplicate => "replies_dropped_duplicate",
            Dropped::Malformed => "replies_dropped_malformed",
            Dropped::Oversized => "replies_dropped_oversized",
            Dropped::Message => "messages_dropped",
            Dropped::PresenceEvent => "presence_events_malformed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_drop_names_a_stats_counter() {
        let names: Vec<&str> = Stats::default().counts().iter().map(|(n, _)| *n).collect();
        for kind in Dropped::ALL {
            assert!(names.contains(&kind.counter()), "{kind:?}");
        }
    }
}
