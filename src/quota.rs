//! Client-side quotas: limits a connection keeps to before the broker has to enforce them
//! (AWS IoT Core throttles or disconnects a connection that goes past its quotas).
//!
//! The publish rate is a sliding one-second window: a publish may go when fewer than
//! `per_second` publishes went in the last second, so no one-second window, wherever it
//! starts, ever holds more (a token bucket would let a burst and a refill share a window).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Limits for one connection; `None`: no limit beyond the broker's own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Quotas {
    /// Publishes (requests, cancels, notifications) per second.
    pub publishes_per_second: Option<u32>,
    /// QoS 1 publishes awaiting their PUBACK.
    pub max_unacked_publishes: Option<u16>,
}

impl Quotas {
    /// AWS IoT Core's published per-connection limits (publish requests per second and
    /// unacknowledged QoS 1 publishes; subscriptions, payload size and topic rules are
    /// client options that `for_aws_iot` sets).
    pub fn aws_iot_core() -> Self {
        Quotas {
            publishes_per_second: Some(100),
            max_unacked_publishes: Some(100),
        }
    }
}

const WINDOW: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct RateLimiter {
    per_second: usize,
    sent: VecDeque<Instant>,
}

impl RateLimiter {
    pub fn new(per_second: u32) -> Self {
        let per_second = usize::try_from(per_second.max(1)).unwrap_or(usize::MAX);
        RateLimiter {
            per_second,
            sent: VecDeque::with_capacity(per_second.min(4096)),
        }
    }

    pub fn per_second(&self) -> usize {
        self.per_second
    }

    /// Takes a publish's place in the window if there is one now.
    pub fn try_take(&mut self, now: Instant) -> bool {
        while self
            .sent
            .front()
            .is_some_and(|&at| now.saturating_duration_since(at) >= WINDOW)
        {
            self.sent.pop_front();
        }
        if self.sent.len() < self.per_second {
            self.sent.push_back(now);
            true
        } else {
            false
        }
    }

    /// When the next place frees up (the window is full until then).
    pub fn next_free(&self) -> Option<Instant> {
        if self.sent.len() < self.per_second {
            return None;
        }
        self.sent.front().map(|&oldest| oldest + WINDOW)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_one_second_window_holds_more_than_the_rate() {
        let mut limiter = RateLimiter::new(5);
        let start = Instant::now();
        let mut sent = Vec::new();
        // Try every millisecond for three seconds.
        for ms in 0..3000 {
            let now = start + Duration::from_millis(ms);
            if limiter.try_take(now) {
                sent.push(ms);
            }
        }
        assert_eq!(sent.len(), 15);
        for (i, &first) in sent.iter().enumerate() {
            let in_window = sent[i..].iter().take_while(|&&t| t < first + 1000).count();
            assert!(
                in_window <= 5,
                "{in_window} publishes in the second from {first} ms"
            );
        }
    }

    #[test]
    fn the_next_place_frees_one_second_after_the_oldest() {
        let mut limiter = RateLimiter::new(2);
        let start = Instant::now();
        assert!(limiter.try_take(start));
        assert_eq!(limiter.next_free(), None);
        assert!(limiter.try_take(start + Duration::from_millis(10)));
        assert!(!limiter.try_take(start + Duration::from_millis(20)));
        assert_eq!(limiter.next_free(), Some(start + WINDOW));
        assert!(limiter.try_take(start + WINDOW));
    }
}
