//! The pending-call table: every call from the moment it is accepted until its one outcome.
//!
//! A call is in exactly one stage: waiting for its device to come online (it holds no
//! slot), waiting for an in-flight slot (`max_in_flight` bounds what is published and
//! unanswered), waiting for its reply filter's SUBACK, or published.
//! All stages count in `len()`, which is what `client.pending` reports. Deadlines live
//! beside the calls so one timer can sweep them; removing a call removes its deadline, its
//! place in the slot queue and its slot, so nothing outlives the call.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use crate::protocol::Outgoing;

/// The hasher of the tables every call and every reply touches: foldhash (randomly seeded,
/// as serde_json's maps are) costs a fraction of the default SipHash on request ids, which
/// our own uuids insert and a reply can only look up.
type IdHasher = foldhash::fast::RandomState;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Its device is known offline: it waits for it, until `wait_until` at most.
    WaitingForDevice,
    WaitingForSlot,
    WaitingForSubscription,
    /// Holds its slot and its reply filter; waits for the publish-rate limit to let it go.
    WaitingForToken,
    Published,
}

/// One call in the table. `W` is whatever wakes the caller (a oneshot for Rust callers,
/// a handle on an asyncio future for Python ones).
#[derive(Debug)]
pub struct Call<W> {
    pub topic: Arc<str>,
    /// The request body, kept until it is published.
    pub request: Option<Outgoing>,
    pub started: Instant,
    pub deadline: Instant,
    /// When the timer must look at it: its deadline, or earlier the end of its wait for
    /// its device.
    timer: Instant,
    pub stage: Stage,
    /// The device it waits for, in `WaitingForDevice`.
    pub waiting_for: Option<String>,
    pub waiter: W,
    /// A scatter-gather call: it collects answers until its deadline or its limit.
    pub gather: Option<Gather>,
    seq: u64,
}

/// The answers a scatter-gather call without `max_replies` takes at most: the names it
/// remembers to count each device once must stay bounded whatever devices (or a flood of
/// made-up names) send. A call that needs more says so with `max_replies`.
pub const DEFAULT_MAX_REPLIES: usize = 100_000;

/// What a scatter-gather call has collected so far.
#[derive(Debug, Default)]
pub struct Gather {
    pub max_replies: Option<usize>,
    pub received: usize,
    /// The `responder` names seen: each device's answer counts once.
    pub responders: HashSet<String>,
}

impl Gather {
    pub fn new(max_replies: Option<usize>) -> Self {
        Gather {
            max_replies: Some(max_replies.unwrap_or(DEFAULT_MAX_REPLIES)),
            ..Gather::default()
        }
    }

    /// Takes an answer from `responder` (if it named itself); false for a repeat.
    pub fn accept(&mut self, responder: Option<&str>) -> bool {
        if let Some(name) = responder {
            if !self.responders.insert(name.to_owned()) {
                return false;
            }
        }
        self.received += 1;
        true
    }

    pub fn is_full(&self) -> bool {
        self.max_replies.is_some_and(|max| self.received >= max)
    }
}

impl<W> Call<W> {
    /// Unique per call, even when a retry reuses a request id.
    pub fn seq(&self) -> u64 {
        self.seq
    }
}

/// Whether a new call may go ahead now or must wait (for a slot, or for its device).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Admitted,
    Queued,
    /// Until its device comes online, or `wait_until`.
    WaitForDevice {
        wait_until: Instant,
    },
}

#[derive(Debug)]
pub struct PendingTable<W> {
    calls: HashMap<String, Call<W>, IdHasher>,
    deadlines: BTreeMap<(Instant, u64), String>,
    slot_queue: VecDeque<String>,
    in_flight: usize,
    max_in_flight: usize,
    next_seq: u64,
}

impl<W> PendingTable<W> {
    pub fn new(max_in_flight: usize) -> Self {
        PendingTable {
            calls: HashMap::default(),
            deadlines: BTreeMap::new(),
            slot_queue: VecDeque::new(),
            in_flight: 0,
            max_in_flight: max_in_flight.max(1),
            next_seq: 0,
        }
    }

    /// Calls in the table, in every stage.
    pub fn len(&self) -> usize {
        self.calls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }

    /// Calls holding a slot (waiting for their subscription or published).
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Calls waiting for a slot.
    pub fn queued(&self) -> usize {
        self.slot_queue.len()
    }

    pub fn contains(&self, request_id: &str) -> bool {
        self.calls.contains_key(request_id)
    }

    pub fn get_mut(&mut self, request_id: &str) -> Option<&mut Call<W>> {
        self.calls.get_mut(request_id)
    }

    /// Adds a call; it takes a slot at once if one is free, else queues for one (or, told
    /// `WaitForDevice`, takes neither until `device_online`). Returns how it was admitted
    /// and whether this call's timer is now the earliest (the timer must know).
    pub fn insert(
        &mut self,
        request_id: String,
        topic: Arc<str>,
        request: Outgoing,
        (started, deadline): (Instant, Instant),
        waiter: W,
        wait_for_device: Option<(String, Instant)>,
    ) -> (Admission, bool) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let (waiting_for, wait_until) = wait_for_device.unzip();
        let timer = wait_until.map_or(deadline, |until| until.min(deadline));
        let earliest = self
            .deadlines
            .keys()
            .next()
            .is_none_or(|(first, _)| timer < *first);
        let admission = match wait_until {
            Some(until) => Admission::WaitForDevice { wait_until: until },
            None => self.take_slot_or_queue(&request_id),
        };
        let stage = match admission {
            Admission::Admitted => Stage::WaitingForSubscription,
            Admission::Queued => Stage::WaitingForSlot,
            Admission::WaitForDevice { .. } => Stage::WaitingForDevice,
        };
        self.deadlines.insert((timer, seq), request_id.clone());
        self.calls.insert(
            request_id,
            Call {
                topic,
                request: Some(request),
                started,
                deadline,
                timer,
                stage,
                waiting_for,
                waiter,
                gather: None,
                seq,
            },
        );
        (admission, earliest)
    }

    fn take_slot_or_queue(&mut self, request_id: &str) -> Admission {
        if self.in_flight < self.max_in_flight && self.slot_queue.is_empty() {
            self.in_flight += 1;
            Admission::Admitted
        } else {
            self.slot_queue.push_back(request_id.to_owned());
            Admission::Queued
        }
    }

    /// A call that waited for its device goes on: it takes a slot or queues for one, and
    /// its timer is its deadline again. None if it was not waiting.
    pub fn device_online(&mut self, request_id: &str) -> Option<Admission> {
        let call = self.calls.get(request_id)?;
        if call.stage != Stage::WaitingForDevice {
            return None;
        }
        let (old_timer, deadline, seq) = (call.timer, call.deadline, call.seq);
        let admission = self.take_slot_or_queue(request_id);
        let call = self.calls.get_mut(request_id)?;
        call.stage = match admission {
            Admission::Admitted => Stage::WaitingForSubscription,
            _ => Stage::WaitingForSlot,
        };
        call.timer = deadline;
        call.waiting_for = None;
        self.deadlines.remove(&(old_timer, seq));
        self.deadlines
            .insert((deadline, seq), request_id.to_owned());
        Some(admission)
    }

    /// Takes a call out of the table, whatever its stage, releasing its slot.
    pub fn remove(&mut self, request_id: &str) -> Option<Call<W>> {
        let call = self.calls.remove(request_id)?;
        self.deadlines.remove(&(call.timer, call.seq));
        match call.stage {
            Stage::WaitingForDevice => {}
            Stage::WaitingForSlot => {
                if let Some(pos) = self.slot_queue.iter().position(|id| id == request_id) {
                    self.slot_queue.remove(pos);
                }
            }
            _ => self.in_flight -= 1,
        }
        Some(call)
    }

    /// The next queued call that may take a freed slot, now moved to
    /// `WaitingForSubscription`.
    pub fn admit_next(&mut self) -> Option<String> {
        if self.in_flight >= self.max_in_flight {
            return None;
        }
        let request_id = self.slot_queue.pop_front()?;
        if let Some(call) = self.calls.get_mut(&request_id) {
            call.stage = Stage::WaitingForSubscription;
            self.in_flight += 1;
        }
        Some(request_id)
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.keys().next().map(|(deadline, _)| *deadline)
    }

    /// The calls whose timer is at or before `now`, earliest first (still in the table):
    /// their deadline, or the end of their wait for their device.
    pub fn expired(&self, now: Instant) -> Vec<String> {
        self.deadlines
            .range(..=(now, u64::MAX))
            .map(|(_, id)| id.clone())
            .collect()
    }

    /// Empties the table (on close), returning every call.
    pub fn drain(&mut self) -> Vec<(String, Call<W>)> {
        self.deadlines.clear();
        self.slot_queue.clear();
        self.in_flight = 0;
        self.calls.drain().collect()
    }
}

/// The ids of the last answered calls, so that a second answer to one of them is counted as
/// a duplicate rather than as a stray reply.
#[derive(Debug, Default)]
pub struct RecentlyAnswered {
    order: VecDeque<String>,
    ids: HashSet<String, IdHasher>,
}

impl RecentlyAnswered {
    const CAPACITY: usize = 4096;

    pub fn remember(&mut self, request_id: String) {
        if self.order.len() == Self::CAPACITY {
            if let Some(oldest) = self.order.pop_front() {
                self.ids.remove(&oldest);
            }
        }
        if self.ids.insert(request_id.clone()) {
            self.order.push_back(request_id);
        }
    }

    pub fn contains(&self, request_id: &str) -> bool {
        self.ids.contains(request_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A call without a device to wait for.
    fn enter(
        table: &mut PendingTable<()>,
        id: &str,
        times: (Instant, Instant),
    ) -> (Admission, bool) {
        table.insert(id.into(), topic(), Outgoing::default(), times, (), None)
    }

    fn topic() -> Arc<str> {
        Arc::from("dev/set")
    }

    #[test]
    fn calls_are_admitted_up_to_the_limit_then_queued() {
        let now = Instant::now();
        let mut table = PendingTable::new(2);
        let later = now + Duration::from_secs(10);
        assert_eq!(enter(&mut table, "a", (now, later)).0, Admission::Admitted);
        assert_eq!(enter(&mut table, "b", (now, later)).0, Admission::Admitted);
        assert_eq!(enter(&mut table, "c", (now, later)).0, Admission::Queued);
        assert_eq!(table.len(), 3);
        assert_eq!(table.in_flight(), 2);
        assert_eq!(table.admit_next(), None);
        assert!(table.remove("a").is_some());
        assert_eq!(table.admit_next(), Some("c".to_string()));
        assert_eq!(
            table.get_mut("c").unwrap().stage,
            Stage::WaitingForSubscription
        );
        assert_eq!(table.in_flight(), 2);
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn removing_a_queued_call_frees_nothing_and_leaves_no_trace() {
        let now = Instant::now();
        let mut table = PendingTable::new(1);
        enter(&mut table, "a", (now, now));
        enter(&mut table, "b", (now, now));
        assert!(table.remove("b").is_some());
        assert_eq!(table.in_flight(), 1);
        assert!(table.remove("a").is_some());
        assert_eq!(table.admit_next(), None);
        assert!(table.is_empty());
        assert_eq!(table.next_deadline(), None);
        assert!(table.remove("a").is_none());
    }

    #[test]
    fn a_new_call_joins_the_queue_behind_waiting_ones() {
        let now = Instant::now();
        let mut table = PendingTable::new(1);
        enter(&mut table, "a", (now, now));
        enter(&mut table, "b", (now, now));
        table.remove("a");
        // A slot is free but "b" waited first: "c" must not jump the queue.
        assert_eq!(enter(&mut table, "c", (now, now)).0, Admission::Queued);
        assert_eq!(table.admit_next(), Some("b".to_string()));
    }

    #[test]
    fn a_call_waiting_for_its_device_holds_no_slot_until_it_comes_online() {
        let now = Instant::now();
        let deadline = now + Duration::from_secs(10);
        let wait_until = now + Duration::from_secs(2);
        let mut table = PendingTable::new(1);
        let (admission, earliest) = table.insert(
            "w".into(),
            topic(),
            Outgoing::default(),
            (now, deadline),
            (),
            Some(("cam1".into(), wait_until)),
        );
        assert_eq!(admission, Admission::WaitForDevice { wait_until });
        assert!(earliest);
        assert_eq!((table.in_flight(), table.queued()), (0, 0));
        // Its timer is the end of its wait, not its deadline.
        assert_eq!(table.next_deadline(), Some(wait_until));
        let (admission, _) = enter(&mut table, "a", (now, deadline));
        assert_eq!(admission, Admission::Admitted);
        // Online: the slot is taken, so it queues, and its timer is its deadline again.
        assert_eq!(table.device_online("w"), Some(Admission::Queued));
        assert_eq!(table.device_online("w"), None);
        assert_eq!(table.next_deadline(), Some(deadline));
        assert!(table.expired(wait_until).is_empty());
        table.remove("a");
        assert_eq!(table.admit_next().as_deref(), Some("w"));
        table.remove("w");
        assert!(table.is_empty() && table.next_deadline().is_none());
        assert_eq!(table.in_flight(), 0);
    }

    #[test]
    fn deadlines_expire_in_order_and_report_the_earliest() {
        let now = Instant::now();
        let mut table = PendingTable::new(10);
        let (_, earliest) = enter(&mut table, "late", (now, now + Duration::from_secs(5)));
        assert!(earliest);
        let (_, earliest) = enter(&mut table, "soon", (now, now + Duration::from_secs(1)));
        assert!(earliest);
        let (_, earliest) = enter(&mut table, "mid", (now, now + Duration::from_secs(3)));
        assert!(!earliest);
        assert_eq!(table.next_deadline(), Some(now + Duration::from_secs(1)));
        let expired = table.expired(now + Duration::from_secs(3));
        assert_eq!(expired, ["soon", "mid"]);
        for id in &expired {
            table.remove(id);
        }
        assert_eq!(table.len(), 1);
        assert_eq!(table.in_flight(), 1);
        assert_eq!(table.next_deadline(), Some(now + Duration::from_secs(5)));
    }

    #[test]
    fn recently_answered_forgets_the_oldest_first() {
        let mut recent = RecentlyAnswered::default();
        for i in 0..RecentlyAnswered::CAPACITY + 1 {
            recent.remember(i.to_string());
        }
        assert!(!recent.contains("0"));
        assert!(recent.contains("1"));
        assert!(recent.contains(&RecentlyAnswered::CAPACITY.to_string()));
    }

    #[test]
    fn drain_empties_everything() {
        let now = Instant::now();
        let mut table = PendingTable::new(1);
        enter(&mut table, "a", (now, now));
        enter(&mut table, "b", (now, now));
        assert_eq!(table.drain().len(), 2);
        assert!(table.is_empty());
        assert_eq!(table.in_flight(), 0);
        assert_eq!(table.next_deadline(), None);
        assert_eq!(table.admit_next(), None);
    }

    #[test]
    fn a_gather_without_max_replies_ends_at_the_default_bound() {
        let mut gather = Gather::new(None);
        for n in 0..DEFAULT_MAX_REPLIES {
            assert!(!gather.is_full());
            assert!(gather.accept(Some(&format!("device-{n}"))));
        }
        assert!(gather.is_full());
        assert_eq!(gather.responders.len(), DEFAULT_MAX_REPLIES);
    }
}
