//! When to reconnect after a lost connection, and whether it was taken over: exponential
//! backoff that a connection earns back only by staying up, and the recognition of another
//! connection with our client id (each CONNECT of one closes the other). Without I/O: the
//! caller says when the connection came up and when it was lost, and sleeps the delay.

use super::{reconnect_delay, LinkErrorKind};
use std::time::{Duration, Instant};

/// A connection that stays up this long has proved itself: its loss starts the backoff
/// afresh and ends a takeover episode. Shorter-lived ones keep the backoff growing, so
/// that two connections taking each other over slow down instead of ping-ponging.
pub const STABLE_AFTER: Duration = Duration::from_secs(10);

/// On MQTT 3.1.1 the broker says nothing when it closes a connection for a takeover: this
/// many closes in a row, each within `STABLE_AFTER` of a successful CONNACK, count as one.
pub const YOUNG_CLOSES_FOR_TAKEOVER: u32 = 3;

/// While taken over, reconnects wait at least this long: AWS IoT Core accepts one CONNECT
/// per second per client id, and a faster fight for an id only throttles both sides.
pub const TAKEOVER_MIN_DELAY: Duration = Duration::from_secs(1);

/// What a loss was, as far as takeovers go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Takeover {
    /// An ordinary loss (or a failed attempt).
    No,
    /// The first loss recognised as a takeover since the connection was last stable;
    /// `losses` counts it with the young closes that led to it (3.1.1).
    Began { losses: u32 },
    /// Another takeover in the same episode.
    Again,
}

impl Takeover {
    /// How many connections it counts as taken over (for `stats()["takeovers"]`).
    pub fn losses(self) -> u64 {
        match self {
            Takeover::No => 0,
            Takeover::Began { losses } => u64::from(losses),
            Takeover::Again => 1,
        }
    }
}

/// The reconnect schedule of one connection.
#[derive(Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    failed_attempts: u32,
    up_since: Option<Instant>,
    young_closes: u32,
    in_episode: bool,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max: max.max(min),
            failed_attempts: 0,
            up_since: None,
            young_closes: 0,
            in_episode: false,
        }
    }

    /// The broker accepted a CONNECT.
    pub fn connected(&mut self, now: Instant) {
        self.up_since = Some(now);
    }

    /// The connection was lost, or an attempt failed (`kind` says how). Returns how long
    /// to wait before the next attempt and whether the loss was a takeover.
    pub fn lost(&mut self, kind: LinkErrorKind, now: Instant) -> (Duration, Takeover) {
        let lived = self.up_since.take().map(|since| now.duration_since(since));
        if lived.is_some_and(|lived| lived >= STABLE_AFTER) {
            self.failed_attempts = 0;
            self.young_closes = 0;
            self.in_episode = false;
        }
        let young = lived.is_some_and(|lived| lived < STABLE_AFTER);
        let taken_over = match kind {
            LinkErrorKind::TakenOver => {
                self.young_closes += 1;
                true
            }
            LinkErrorKind::Closed if young => {
                self.young_closes += 1;
                self.in_episode || self.young_closes >= YOUNG_CLOSES_FOR_TAKEOVER
            }
            // A failed attempt in between (refused, unreachable) leaves the streak alone.
            _ if lived.is_none() => false,
            _ => {
                self.young_closes = 0;
                false
            }
        };
        let takeover = match (taken_over, self.in_episode) {
            (false, _) => Takeover::No,
            (true, true) => Takeover::Again,
            (true, false) => {
                self.in_episode = true;
                // The doubling starts again, from the takeover's own first delay.
                self.failed_attempts = 0;
                Takeover::Began {
                    losses: self.young_closes.max(1),
                }
            }
        };
        if taken_over {
            self.young_closes = 0;
        }
        let min = match self.in_episode {
            true => self.min.max(TAKEOVER_MIN_DELAY).min(self.max),
            false => self.min,
        };
        // Jitter scales the delay down by half at most: never under the minimum.
        let delay = reconnect_delay(min, self.max, self.failed_attempts).max(min);
        self.failed_attempts = self.failed_attempts.saturating_add(1);
        (delay, takeover)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(10);

    #[test]
    fn a_connection_that_dies_young_keeps_the_backoff_growing() {
        let mut backoff = Backoff::new(MIN, MAX);
        let mut now = Instant::now();
        let mut delays = Vec::new();
        for _ in 0..6 {
            backoff.connected(now);
            now += Duration::from_millis(200);
            let (delay, _) = backoff.lost(LinkErrorKind::Other, now);
            delays.push(delay);
            now += delay;
        }
        // Jitter halves at most: the sixth delay is at least 3.2 s / 2.
        assert!(delays[5] >= Duration::from_millis(1600), "{delays:?}");
    }

    #[test]
    fn a_connection_that_stayed_up_starts_the_backoff_afresh() {
        let mut backoff = Backoff::new(MIN, MAX);
        let mut now = Instant::now();
        for _ in 0..8 {
            let (delay, _) = backoff.lost(LinkErrorKind::Other, now);
            now += delay;
        }
        backoff.connected(now);
        now += STABLE_AFTER;
        let (delay, takeover) = backoff.lost(LinkErrorKind::Closed, now);
        assert!(delay <= MIN, "{delay:?}");
        assert_eq!(takeover, Takeover::No);
    }

    #[test]
    fn mqtt5_takeover_is_recognised_at_once_and_slows_reconnects() {
        let mut backoff = Backoff::new(MIN, MAX);
        let now = Instant::now();
        backoff.connected(now);
        let (delay, takeover) = backoff.lost(LinkErrorKind::TakenOver, now);
        assert_eq!(takeover, Takeover::Began { losses: 1 });
        assert!(delay >= TAKEOVER_MIN_DELAY, "{delay:?}");
        backoff.connected(now + delay);
        let (_, again) = backoff.lost(LinkErrorKind::TakenOver, now + delay);
        assert_eq!(again, Takeover::Again);
    }

    #[test]
    fn mqtt311_takeover_is_several_young_closes_in_a_row() {
        let mut backoff = Backoff::new(MIN, MAX);
        let mut now = Instant::now();
        let mut seen = Vec::new();
        for _ in 0..4 {
            backoff.connected(now);
            now += Duration::from_millis(50);
            let (delay, takeover) = backoff.lost(LinkErrorKind::Closed, now);
            // A failed attempt between two closes does not break the streak.
            let _ = backoff.lost(LinkErrorKind::Other, now);
            seen.push(takeover);
            now += delay;
        }
        let began = Takeover::Began {
            losses: YOUNG_CLOSES_FOR_TAKEOVER,
        };
        assert_eq!(seen, [Takeover::No, Takeover::No, began, Takeover::Again]);
    }

    #[test]
    fn a_close_after_a_stable_connection_ends_the_episode() {
        let mut backoff = Backoff::new(MIN, MAX);
        let mut now = Instant::now();
        backoff.connected(now);
        assert_ne!(backoff.lost(LinkErrorKind::TakenOver, now).1, Takeover::No);
        backoff.connected(now);
        now += STABLE_AFTER;
        let (delay, takeover) = backoff.lost(LinkErrorKind::TakenOver, now);
        assert_eq!(takeover, Takeover::Began { losses: 1 });
        assert!(delay >= TAKEOVER_MIN_DELAY);
        // Within an episode, a 3.1.1 close soon after connecting is another takeover.
        backoff.connected(now);
        assert_eq!(backoff.lost(LinkErrorKind::Closed, now).1, Takeover::Again);
    }
}
