//! Client-side quotas: limits a connection keeps to before the broker has to enforce them
//! (AWS IoT Core throttles or disconnects a connection that goes past its quotas).
//!
//! The publish rate is kept by a generic cell rate algorithm: publishes go out evenly
//! spaced, with a small burst (a fiftieth of the rate) allowed after a quiet spell, and the
//! spacing chosen so that no one-second window, wherever it starts, holds more than the
//! rate. Even spacing, not a full burst each second, so that the broker (and a device)
//! never sees two seconds' worth of publishes close together when the network delays
//! some of them; and 1% under the rate, against jitter.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::protocol::Outgoing;

/// Limits for one connection; `None`: no limit beyond the broker's own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Quotas {
    /// Publishes (requests, cancels, notifications) per second.
    pub publishes_per_second: Option<u32>,
    /// QoS 1 publishes awaiting their PUBACK.
    pub max_unacked_publishes: Option<u16>,
}

#[derive(Debug)]
pub struct RateLimiter {
    per_second: usize,
    /// Between two publishes once the burst is spent.
    interval: Duration,
    /// How far ahead of the schedule a publish may go: the burst.
    tolerance: Duration,
    /// When the next publish is due on the schedule.
    due: Option<Instant>,
}

impl RateLimiter {
    pub fn new(per_second: u32) -> Self {
        let per_second = per_second.max(1);
        let burst = per_second / 50;
        // `burst` at once, then one per interval: burst + (rate - burst) = rate in a second,
        // a second stretched by 1% so that network jitter of up to 10 ms cannot bring
        // the next second's first publish into the same second at the broker.
        let interval = Duration::from_millis(1010) / (per_second - burst);
        RateLimiter {
            per_second: usize::try_from(per_second).unwrap_or(usize::MAX),
            interval,
            tolerance: interval * burst,
            due: None,
        }
    }

    pub fn per_second(&self) -> usize {
        self.per_second
    }

    /// Takes a publish's place if one is free now.
    pub fn try_take(&mut self, now: Instant) -> bool {
        let due = self.due.unwrap_or(now);
        if now + self.tolerance < due {
            return false;
        }
        self.due = Some(due.max(now) + self.interval);
        true
    }

    /// Whether a publish could go at `now` (taking nothing).
    pub fn has_place(&self, now: Instant) -> bool {
        self.next_free().is_none_or(|at| at <= now)
    }

    /// The earliest moment a publish may go (now or in the past: at once).
    pub fn next_free(&self) -> Option<Instant> {
        self.due
            .map(|due| due.checked_sub(self.tolerance).unwrap_or(due))
    }
}

/// A publish waiting for the publish-rate limit.
#[derive(Debug)]
pub enum Throttled {
    /// A call's request: the call holds its slot and reply filter meanwhile.
    Call { request_id: String, since: Instant },
    /// A notification or a cancellation.
    Message { topic: Arc<str>, body: Outgoing },
}

/// The publish-rate limit and what waits for it, in order. Calls that wait are bounded by
/// the in-flight limit (each holds a slot); messages by `max_messages`, beyond which a
/// message is refused (the caller of `notify` hears it; a cancellation is dropped and
/// counted).
#[derive(Debug)]
pub struct PublishQueue {
    limiter: Option<RateLimiter>,
    waiting: VecDeque<Throttled>,
    messages: usize,
    max_messages: usize,
}

/// The queue had no room for a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueFull;

impl PublishQueue {
    pub fn new(per_second: Option<u32>, max_messages: usize) -> Self {
        PublishQueue {
            limiter: per_second.map(RateLimiter::new),
            waiting: VecDeque::new(),
            messages: 0,
            max_messages,
        }
    }

    pub fn is_limited(&self) -> bool {
        self.limiter.is_some()
    }

    pub fn per_second(&self) -> Option<usize> {
        self.limiter.as_ref().map(RateLimiter::per_second)
    }

    /// Publishes waiting (calls and messages).
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Whether a publish could go at `now` (taking nothing).
    pub fn has_place(&self, now: Instant) -> bool {
        match &self.limiter {
            None => true,
            Some(limiter) => self.waiting.is_empty() && limiter.has_place(now),
        }
    }

    /// Takes a publish's place if one is free at `now`; never ahead of those waiting.
    pub fn take_place(&mut self, now: Instant) -> bool {
        match &mut self.limiter {
            None => true,
            Some(limiter) => self.waiting.is_empty() && limiter.try_take(now),
        }
    }

    pub fn wait_call(&mut self, request_id: String, since: Instant) {
        self.waiting
            .push_back(Throttled::Call { request_id, since });
    }

    pub fn wait_message(&mut self, topic: Arc<str>, body: Outgoing) -> Result<(), QueueFull> {
        if self.messages >= self.max_messages {
            return Err(QueueFull);
        }
        self.messages += 1;
        self.waiting.push_back(Throttled::Message { topic, body });
        Ok(())
    }

    /// A waiting call ended before its turn.
    pub fn remove_call(&mut self, request_id: &str) {
        self.waiting
            .retain(|t| !matches!(t, Throttled::Call { request_id: id, .. } if id == request_id));
    }

    /// The next waiting publish, if the limit lets it go at `now` (its place is taken).
    pub fn release(&mut self, now: Instant) -> Option<Throttled> {
        let limiter = self.limiter.as_mut()?;
        if self.waiting.is_empty() || !limiter.try_take(now) {
            return None;
        }
        let next = self.waiting.pop_front();
        if matches!(next, Some(Throttled::Message { .. })) {
            self.messages -= 1;
        }
        next
    }

    /// When the next waiting publish may go (`now` at the latest), if any waits.
    pub fn next_release(&self, now: Instant) -> Option<Instant> {
        if self.waiting.is_empty() {
            return None;
        }
        let limiter = self.limiter.as_ref()?;
        Some(limiter.next_free().unwrap_or(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent_when_tried_every_millisecond(rate: u32, millis: u64) -> Vec<u64> {
        let mut limiter = RateLimiter::new(rate);
        let start = Instant::now();
        (0..millis)
            .filter(|ms| limiter.try_take(start + Duration::from_millis(*ms)))
            .collect()
    }

    #[test]
    fn no_one_second_window_holds_more_than_the_rate() {
        for rate in [1, 5, 50, 100] {
            let sent = sent_when_tried_every_millisecond(rate, 5000);
            for (i, &first) in sent.iter().enumerate() {
                let in_window = sent[i..].iter().take_while(|&&t| t < first + 1000).count();
                assert!(
                    in_window <= rate as usize,
                    "{in_window} in the second from {first} ms"
                );
            }
            // ... and the rate is used: at least 90% of it over five seconds.
            assert!(
                sent.len() as u32 >= rate * 5 * 9 / 10,
                "{} sent at {rate}/s",
                sent.len()
            );
        }
    }

    #[test]
    fn a_fiftieth_of_the_rate_goes_at_once_then_evenly() {
        let mut limiter = RateLimiter::new(100);
        let start = Instant::now();
        assert_eq!((0..50).filter(|_| limiter.try_take(start)).count(), 3);
        let sent: Vec<u64> = (1..200)
            .filter(|ms| limiter.try_take(start + Duration::from_millis(*ms)))
            .collect();
        let gaps: Vec<u64> = sent.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.iter().all(|&gap| (10..=11).contains(&gap)), "{gaps:?}");
    }
}
