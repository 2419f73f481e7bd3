//! A graceful leave, without I/O: what a serving responder does when asked to go (a rolling
//! deploy's SIGTERM, `Responder.close(grace)`). It unsubscribes every filter first, so that
//! the broker routes new requests to the other members of its pool; requests that arrived
//! before the UNSUBACKs are still run and answered; once every run has answered, every
//! answer is written and (QoS 1) acknowledged, or the grace is over, it disconnects. The
//! serve loop feeds it events and does what it says.

use std::collections::HashSet;
use std::time::{Duration, Instant};

/// What the application asks of a serving responder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    Serve,
    /// Leave gracefully, disconnecting by `by` at the latest.
    Leave {
        by: Instant,
    },
    /// Stop at once, without a DISCONNECT.
    Now,
}

/// What the serve loop must do next for the leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Keep serving (runs, writes or acknowledgements are still due).
    Wait,
    /// Queue the DISCONNECT now (behind every answer queued).
    Disconnect,
    /// Stop serving: the connection is down and nothing more can be sent.
    End,
}

/// How far the answers are: queued to the connection, written by it, and (QoS 1) the
/// packet ids written and not yet acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    /// Requests admitted and not yet answered (or dropped): runs under way or waiting.
    pub running: usize,
    pub queued: u64,
    pub written: u64,
}

/// What a leave did, for `stats()` and the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LeaveReport {
    /// Answers queued between the start of the leave and its DISCONNECT.
    pub answered: u64,
    /// Answers not written, or not acknowledged, and runs not answered when it ended.
    pub unsent: u64,
    pub took: Duration,
}

/// The state of one leave.
#[derive(Debug)]
pub struct Leave {
    started: Instant,
    by: Instant,
    queued_at_start: u64,
    /// UNSUBACKs still due (none while the connection is down: nothing arrives then).
    unsubacks_due: usize,
    /// QoS 1 publishes written and not yet acknowledged.
    unacked: HashSet<u16>,
    disconnect_queued: bool,
}

impl Leave {
    /// Starts a leave: the caller has just sent `unsubscribes` UNSUBSCRIBEs (none if the
    /// connection is down).
    pub fn start(now: Instant, by: Instant, unsubscribes: usize, progress: Progress) -> Self {
        Leave {
            started: now,
            by,
            queued_at_start: progress.queued,
            unsubacks_due: unsubscribes,
            unacked: HashSet::new(),
            disconnect_queued: false,
        }
    }

    pub fn deadline(&self) -> Instant {
        self.by
    }

    pub fn unsubscribed(&mut self) {
        self.unsubacks_due = self.unsubacks_due.saturating_sub(1);
    }

    /// A QoS 1 publish was written with this packet id (0: QoS 0, nothing to wait for).
    pub fn written(&mut self, packet_id: u16) {
        if packet_id != 0 {
            self.unacked.insert(packet_id);
        }
    }

    pub fn acknowledged(&mut self, packet_id: u16) {
        self.unacked.remove(&packet_id);
    }

    /// The connection dropped: no UNSUBACK or PUBACK will come on it, and no request until
    /// it is back (and it is not subscribed again).
    pub fn connection_lost(&mut self) {
        self.unsubacks_due = 0;
        self.unacked.clear();
    }

    /// What to do now, given the answers' progress and whether the connection is up.
    pub fn step(&mut self, now: Instant, progress: Progress, connected: bool) -> Step {
        if self.disconnect_queued {
            return if connected { Step::Wait } else { Step::End };
        }
        let done = self.unsubacks_due == 0
            && progress.running == 0
            && progress.written >= progress.queued
            && self.unacked.is_empty();
        if !(done || now >= self.by) {
            return Step::Wait;
        }
        if !connected {
            return Step::End;
        }
        self.disconnect_queued = true;
        Step::Disconnect
    }

    /// The report, when the leave ends (its DISCONNECT written, or given up).
    pub fn report(&self, now: Instant, progress: Progress) -> LeaveReport {
        let unwritten = progress.queued.saturating_sub(progress.written);
        LeaveReport {
            answered: progress.queued.saturating_sub(self.queued_at_start),
            unsent: unwritten + self.unacked.len() as u64 + progress.running as u64,
            took: now.saturating_duration_since(self.started),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(running: usize, queued: u64, written: u64) -> Progress {
        Progress {
            running,
            queued,
            written,
        }
    }

    #[test]
    fn it_waits_for_unsubacks_runs_writes_and_pubacks_in_turn() {
        let now = Instant::now();
        let by = now + Duration::from_secs(30);
        let mut leave = Leave::start(now, by, 2, progress(1, 5, 5));
        assert_eq!(leave.step(now, progress(1, 5, 5), true), Step::Wait);
        leave.unsubscribed();
        leave.unsubscribed();
        // A run still going, then its answer queued and not yet written.
        assert_eq!(leave.step(now, progress(1, 5, 5), true), Step::Wait);
        assert_eq!(leave.step(now, progress(0, 6, 5), true), Step::Wait);
        leave.written(7);
        assert_eq!(leave.step(now, progress(0, 6, 6), true), Step::Wait);
        leave.acknowledged(7);
        assert_eq!(leave.step(now, progress(0, 6, 6), true), Step::Disconnect);
        assert_eq!(leave.step(now, progress(0, 6, 6), true), Step::Wait);
        let report = leave.report(now + Duration::from_millis(40), progress(0, 6, 6));
        assert_eq!(
            report,
            LeaveReport {
                answered: 1,
                unsent: 0,
                took: Duration::from_millis(40)
            }
        );
    }

    #[test]
    fn the_grace_ends_it_with_what_is_left_counted() {
        let now = Instant::now();
        let by = now + Duration::from_secs(1);
        let mut leave = Leave::start(now, by, 1, progress(0, 0, 0));
        leave.unsubscribed();
        leave.written(3);
        assert_eq!(leave.step(now, progress(2, 4, 3), true), Step::Wait);
        assert_eq!(leave.step(by, progress(2, 4, 3), true), Step::Disconnect);
        // Two runs unanswered, one answer unwritten, one unacknowledged.
        assert_eq!(leave.report(by, progress(2, 4, 3)).unsent, 4);
    }

    #[test]
    fn a_lost_connection_ends_it_without_waiting_for_acknowledgements() {
        let now = Instant::now();
        let mut leave = Leave::start(now, now + Duration::from_secs(30), 3, progress(0, 0, 0));
        leave.written(1);
        leave.connection_lost();
        // Nothing can be sent while down: at the deadline it ends rather than disconnects.
        assert_eq!(leave.step(now, progress(0, 1, 1), false), Step::End);
        let mut waiting = Leave::start(now, now + Duration::from_secs(30), 0, progress(1, 0, 0));
        assert_eq!(waiting.step(now, progress(1, 0, 0), false), Step::Wait);
        assert_eq!(
            waiting.step(now + Duration::from_secs(30), progress(1, 0, 0), false),
            Step::End
        );
    }
}
