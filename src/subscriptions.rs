//! Reply subscriptions: which reply filters are held, which are being subscribed, which
//! calls wait for a SUBACK, and which idle filters to drop when over the limit.
//!
//! Subscribe once, never per call: the first call to a request topic makes its filter
//! `Subscribing` and every call that comes before the SUBACK joins the same wait. With a
//! user-given `reply_filter` there is one pinned entry that all calls share. A filter held
//! for something else (presence events) is pinned apart: it shares the SUBACK matching and
//! the reconnects, and is not a reply filter, but it takes a place under the limit: the
//! limit is a broker's quota (AWS IoT Core: 50 per connection), which counts every filter.
//!
//! rumqttc's `subscribe()` returns nothing to wait on, but its event loop reports each
//! SUBSCRIBE it writes with its packet id, in the order they were requested; so requested
//! filters queue here until their packet id is known, and the SUBACK is matched by that id.
//! rumqttc reuses packet ids early (they wrap at the in-flight limit, which an MQTT 5
//! broker's Receive Maximum lowers to 20 on Mosquitto), so one id may name several
//! SUBSCRIBEs at once: they queue under it and the broker answers them in order.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

#[derive(Debug)]
enum State {
    /// A SUBSCRIBE is on its way; these calls publish when its SUBACK arrives.
    Subscribing {
        waiting: Vec<String>,
    },
    Active,
    /// The connection is down: nothing is sent; these calls publish once the filter is held
    /// again (at once if the broker kept the session and the filter was held before).
    Offline {
        was_active: bool,
        waiting: Vec<String>,
    },
}

impl State {
    fn waiting_mut(&mut self) -> Option<&mut Vec<String>> {
        match self {
            State::Subscribing { waiting } | State::Offline { waiting, .. } => Some(waiting),
            State::Active => None,
        }
    }
}

#[derive(Debug)]
struct Entry {
    filter: String,
    state: State,
    /// Calls holding a slot that use this filter: a filter in use is never dropped.
    in_use: usize,
    last_used: u64,
    pinned: bool,
    /// Pinned apart: not a reply filter (not in `len`), though it takes a place under the
    /// limit.
    apart: bool,
}

/// What a call must do about its reply filter.
#[derive(Debug, PartialEq, Eq)]
pub enum Need {
    /// The filter is held: publish now.
    Ready,
    /// A SUBACK is awaited; the call was added to its waiting list.
    Wait,
    /// The caller must send a SUBSCRIBE for this filter (the call waits on it).
    Subscribe(String),
}

/// Whether a new reply filter fits under the limit.
#[derive(Debug, PartialEq, Eq)]
pub enum Room {
    Available,
    /// Made by dropping these idle filters (unsubscribe them before subscribing).
    Evicted(Vec<String>),
    /// Every filter held is in use: the call waits until one is free.
    Full,
}

/// What a SUBACK settled.
#[derive(Debug, PartialEq, Eq)]
pub enum Settled {
    /// The filter is held: publish these waiting calls.
    Granted(Vec<String>),
    /// The broker refused the filter: fail these waiting calls.
    Refused {
        filter: String,
        waiting: Vec<String>,
    },
    /// A SUBACK for a subscription nobody waits for any more.
    Nothing,
}

#[derive(Debug)]
pub struct ReplySubscriptions {
    /// Keyed by request topic (per-topic filters) or by the pinned `reply_filter` itself.
    entries: HashMap<Arc<str>, Entry>,
    requested: VecDeque<Arc<str>>,
    by_packet_id: HashMap<u16, VecDeque<Arc<str>>>,
    max_idle_held: usize,
    clock: u64,
    online: bool,
    /// Entries pinned apart.
    apart: usize,
}

impl ReplySubscriptions {
    pub fn new(max_reply_subscriptions: usize) -> Self {
        ReplySubscriptions {
            entries: HashMap::new(),
            requested: VecDeque::new(),
            by_packet_id: HashMap::new(),
            max_idle_held: max_reply_subscriptions.max(1),
            clock: 0,
            online: true,
            apart: 0,
        }
    }

    /// Reply filters held or being subscribed.
    pub fn len(&self) -> usize {
        self.entries.len() - self.apart
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn contains(&self, key: &str) -> bool {
        self.entries.contains_key(key)
    }

    pub fn limit(&self) -> usize {
        self.max_idle_held
    }

    /// Every filter held or being subscribed, reply filters or not: what the limit counts.
    pub fn held(&self) -> usize {
        self.entries.len()
    }

    /// Room for one more filter: the limit is never exceeded, so when it is reached the
    /// least recently used idle filter goes first, and with none idle there is no room.
    pub fn make_room(&mut self) -> Room {
        if self.held() < self.max_idle_held {
            return Room::Available;
        }
        let dropped = self.evict_down_to(self.max_idle_held - 1);
        if dropped.is_empty() {
            Room::Full
        } else {
            Room::Evicted(dropped)
        }
    }

    /// Registers the one filter that covers every reply; it is never evicted.
    pub fn pin(&mut self, filter: &str) -> Arc<str> {
        self.pin_entry(filter, false)
    }

    /// Registers a filter held for the client's life that is not a reply filter; None if
    /// that filter is held already (then nothing is to be subscribed).
    pub fn pin_apart(&mut self, filter: &str) -> Option<Arc<str>> {
        if self.entries.contains_key(filter) {
            return None;
        }
        self.apart += 1;
        Some(self.pin_entry(filter, true))
    }

    /// Whether a pinned filter still waits for its SUBACK (the first connection is ready
    /// once none does).
    pub fn pinned_pending(&self) -> bool {
        (self.entries.values()).any(|e| e.pinned && !matches!(e.state, State::Active))
    }

    fn pin_entry(&mut self, filter: &str, apart: bool) -> Arc<str> {
        let key: Arc<str> = Arc::from(filter);
        self.entries.insert(
            key.clone(),
            Entry {
                filter: filter.to_owned(),
                state: State::Subscribing {
                    waiting: Vec::new(),
                },
                in_use: 0,
                last_used: 0,
                pinned: true,
                apart,
            },
        );
        self.requested.push_back(key.clone());
        key
    }

    /// The key a call on `topic` uses: the shared key from the table when there is one, so
    /// that calls do not each allocate it.
    pub fn key_for(&self, topic: &str) -> Option<Arc<str>> {
        self.entries.get_key_value(topic).map(|(k, _)| k.clone())
    }

    /// A call with a slot starts using the filter `key` (whose filter string is
    /// `filter_of(key)` if it must be created).
    pub fn acquire(
        &mut self,
        key: &Arc<str>,
        request_id: &str,
        filter_of: impl FnOnce(&str) -> String,
    ) -> Need {
        self.clock += 1;
        let now = self.clock;
        if let Some(entry) = self.entries.get_mut(key) {
            entry.in_use += 1;
            entry.last_used = now;
            return match entry.state.waiting_mut() {
                None => Need::Ready,
                Some(waiting) => {
                    waiting.push(request_id.to_owned());
                    Need::Wait
                }
            };
        }
        let filter = filter_of(key);
        let waiting = vec![request_id.to_owned()];
        let state = if self.online {
            State::Subscribing { waiting }
        } else {
            State::Offline {
                was_active: false,
                waiting,
            }
        };
        self.entries.insert(
            key.clone(),
            Entry {
                filter: filter.clone(),
                state,
                in_use: 1,
                last_used: now,
                pinned: false,
                apart: false,
            },
        );
        if !self.online {
            return Need::Wait;
        }
        self.requested.push_back(key.clone());
        Need::Subscribe(filter)
    }

    /// A SUBSCRIBE could not even be queued: forget the filter and return its waiting calls.
    pub fn subscribe_failed(&mut self, key: &str) -> Vec<String> {
        if let Some(pos) = self.requested.iter().rposition(|k| &**k == key) {
            self.requested.remove(pos);
        }
        match self.entries.remove(key) {
            Some(Entry {
                state: State::Subscribing { waiting },
                apart,
                ..
            }) => {
                self.apart -= usize::from(apart);
                waiting
            }
            Some(Entry { apart, .. }) => {
                self.apart -= usize::from(apart);
                Vec::new()
            }
            None => Vec::new(),
        }
    }

    /// A call that held a slot on `key` is gone (answered, timed out, cancelled).
    /// Returns the filters to unsubscribe, least recently used first, to get back under
    /// the limit.
    pub fn release(&mut self, key: &str, request_id: &str) -> Vec<String> {
        if let Some(entry) = self.entries.get_mut(key) {
            entry.in_use = entry.in_use.saturating_sub(1);
            if let Some(waiting) = entry.state.waiting_mut() {
                waiting.retain(|id| id != request_id);
            }
        }
        self.evict_idle()
    }

    /// Drops idle filters, least recently used first, until at most the limit are held
    /// (filters in use stay, so the count can exceed the limit while they are busy).
    /// Returns the filters to unsubscribe.
    pub fn evict_idle(&mut self) -> Vec<String> {
        self.evict_down_to(self.max_idle_held)
    }

    fn evict_down_to(&mut self, most: usize) -> Vec<String> {
        let mut dropped = Vec::new();
        while self.held() > most {
            let oldest_idle = self
                .entries
                .iter()
                .filter(|(_, e)| !e.pinned && e.in_use == 0 && matches!(e.state, State::Active))
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| k.clone());
            let Some(key) = oldest_idle else { break };
            if let Some(entry) = self.entries.remove(&key) {
                dropped.push(entry.filter);
            }
        }
        dropped
    }

    /// rumqttc wrote the oldest requested SUBSCRIBE with this packet id.
    pub fn sent(&mut self, packet_id: u16) {
        if let Some(key) = self.requested.pop_front() {
            self.by_packet_id
                .entry(packet_id)
                .or_default()
                .push_back(key);
        }
    }

    /// The SUBACK for `packet_id` arrived.
    pub fn acknowledged(&mut self, packet_id: u16, granted: bool) -> Settled {
        let Some(sent) = self.by_packet_id.get_mut(&packet_id) else {
            return Settled::Nothing;
        };
        let Some(key) = sent.pop_front() else {
            return Settled::Nothing;
        };
        if sent.is_empty() {
            self.by_packet_id.remove(&packet_id);
        }
        let Some(entry) = self.entries.get_mut(&key) else {
            return Settled::Nothing;
        };
        let State::Subscribing { waiting } = &mut entry.state else {
            return Settled::Nothing;
        };
        let waiting = std::mem::take(waiting);
        if granted {
            entry.state = State::Active;
            Settled::Granted(waiting)
        } else {
            let filter = entry.filter.clone();
            if entry.apart {
                self.apart -= 1;
            }
            self.entries.remove(&key);
            Settled::Refused { filter, waiting }
        }
    }

    /// The connection is down: until `reconnected`, no filter is held and nothing is sent.
    /// SUBSCRIBEs not yet answered are forgotten (they are sent again on reconnect).
    pub fn disconnected(&mut self) {
        self.online = false;
        self.requested.clear();
        self.by_packet_id.clear();
        for entry in self.entries.values_mut() {
            // Failed reconnect attempts report the connection lost again: a filter held
            // before the first loss is still held by a kept session.
            let was_active = match &entry.state {
                State::Active => true,
                State::Offline { was_active, .. } => *was_active,
                State::Subscribing { .. } => false,
            };
            let waiting = entry
                .state
                .waiting_mut()
                .map(std::mem::take)
                .unwrap_or_default();
            entry.state = State::Offline {
                was_active,
                waiting,
            };
        }
    }

    /// The connection is back. A filter held before stays held if the broker kept the
    /// session; every other filter must be subscribed again. Returns the calls that may
    /// publish now and the filters to subscribe with their keys (their calls wait for the
    /// SUBACKs).
    pub fn reconnected(&mut self, session_present: bool) -> (Vec<String>, Vec<(Arc<str>, String)>) {
        self.online = true;
        let mut ready = Vec::new();
        let mut to_subscribe = Vec::new();
        for (key, entry) in self.entries.iter_mut() {
            let State::Offline {
                was_active,
                waiting,
            } = &mut entry.state
            else {
                continue;
            };
            let waiting = std::mem::take(waiting);
            if session_present && *was_active {
                ready.extend(waiting);
                entry.state = State::Active;
            } else {
                entry.state = State::Subscribing { waiting };
                self.requested.push_back(key.clone());
                to_subscribe.push((key.clone(), entry.filter.clone()));
            }
        }
        (ready, to_subscribe)
    }

    /// Whether the filter under `key` is held (its SUBACK arrived).
    pub fn is_active(&self, key: &str) -> bool {
        matches!(self.entries.get(key).map(|e| &e.state), Some(State::Active))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(topic: &str) -> String {
        format!("{topic}/response/+")
    }

    #[test]
    fn concurrent_first_calls_share_one_subscribe() {
        let mut subs = ReplySubscriptions::new(10);
        let key: Arc<str> = Arc::from("dev/set");
        assert_eq!(
            subs.acquire(&key, "a", filter),
            Need::Subscribe("dev/set/response/+".into())
        );
        assert_eq!(subs.acquire(&key, "b", filter), Need::Wait);
        subs.sent(7);
        assert_eq!(
            subs.acknowledged(7, true),
            Settled::Granted(vec!["a".into(), "b".into()])
        );
        assert_eq!(subs.acquire(&key, "c", filter), Need::Ready);
        assert!(subs.is_active("dev/set"));
    }

    #[test]
    fn suback_is_matched_by_packet_id_in_request_order() {
        let mut subs = ReplySubscriptions::new(10);
        let (k1, k2): (Arc<str>, Arc<str>) = (Arc::from("one"), Arc::from("two"));
        subs.acquire(&k1, "a", filter);
        subs.acquire(&k2, "b", filter);
        subs.sent(1);
        subs.sent(2);
        assert_eq!(
            subs.acknowledged(2, true),
            Settled::Granted(vec!["b".into()])
        );
        assert!(!subs.is_active("one"));
        assert_eq!(
            subs.acknowledged(1, true),
            Settled::Granted(vec!["a".into()])
        );
        assert_eq!(subs.acknowledged(1, true), Settled::Nothing);
    }

    #[test]
    fn a_packet_id_reused_before_its_suback_still_matches_in_order() {
        let mut subs = ReplySubscriptions::new(10);
        let (k1, k2): (Arc<str>, Arc<str>) = (Arc::from("one"), Arc::from("two"));
        subs.acquire(&k1, "a", filter);
        subs.acquire(&k2, "b", filter);
        subs.sent(5);
        subs.sent(5);
        assert_eq!(
            subs.acknowledged(5, true),
            Settled::Granted(vec!["a".into()])
        );
        assert_eq!(
            subs.acknowledged(5, true),
            Settled::Granted(vec!["b".into()])
        );
        assert_eq!(subs.acknowledged(5, true), Settled::Nothing);
    }

    #[test]
    fn a_refused_filter_fails_its_waiters_and_is_forgotten() {
        let mut subs = ReplySubscriptions::new(10);
        let key: Arc<str> = Arc::from("dev/set");
        subs.acquire(&key, "a", filter);
        subs.sent(3);
        assert_eq!(
            subs.acknowledged(3, false),
            Settled::Refused {
                filter: "dev/set/response/+".into(),
                waiting: vec!["a".into()]
            }
        );
        assert!(subs.is_empty());
    }

    fn hold(subs: &mut ReplySubscriptions, topic: &str, packet_id: u16) {
        let key: Arc<str> = Arc::from(topic);
        subs.acquire(&key, topic, filter);
        subs.sent(packet_id);
        subs.acknowledged(packet_id, true);
    }

    #[test]
    fn idle_filters_beyond_the_limit_go_least_recently_used_first() {
        let mut subs = ReplySubscriptions::new(2);
        hold(&mut subs, "t1", 1);
        hold(&mut subs, "t2", 2);
        assert!(subs.release("t1", "t1").is_empty());
        assert!(subs.release("t2", "t2").is_empty());
        // t1 is used again, so t2 is now the least recently used.
        let t1: Arc<str> = Arc::from("t1");
        assert_eq!(subs.acquire(&t1, "again", filter), Need::Ready);
        subs.release("t1", "again");
        hold(&mut subs, "t3", 3);
        assert_eq!(subs.evict_idle(), vec!["t2/response/+".to_string()]);
        assert_eq!(subs.len(), 2);
    }

    #[test]
    fn filters_in_use_are_never_evicted() {
        let mut subs = ReplySubscriptions::new(1);
        hold(&mut subs, "t1", 1);
        hold(&mut subs, "t2", 2);
        assert!(subs.evict_idle().is_empty());
        assert_eq!(subs.len(), 2);
        assert_eq!(subs.release("t2", "t2"), vec!["t2/response/+".to_string()]);
        assert_eq!(subs.len(), 1);
    }

    #[test]
    fn a_filter_pinned_apart_is_no_reply_filter_but_takes_a_place_under_the_limit() {
        let mut subs = ReplySubscriptions::new(2);
        let key = subs.pin_apart("+/status").unwrap();
        assert_eq!(
            subs.pin_apart("+/status"),
            None,
            "held already: not subscribed twice"
        );
        assert!(subs.is_empty() && subs.pinned_pending());
        subs.sent(1);
        assert!(matches!(
            subs.acknowledged(1, false),
            Settled::Refused { .. }
        ));
        assert!(!subs.contains(&key) && !subs.pinned_pending());
        subs.pin_apart("+/status").unwrap();
        subs.sent(2);
        assert!(matches!(subs.acknowledged(2, true), Settled::Granted(_)));
        assert!(!subs.pinned_pending());
        // One of the two places is left for a reply filter, and then none.
        assert_eq!(subs.make_room(), Room::Available);
        hold(&mut subs, "a/set", 3);
        assert_eq!((subs.len(), subs.held()), (1, 2));
        assert!(
            subs.release("a/set", "a/set").is_empty(),
            "within the limit"
        );
        assert_eq!(subs.make_room(), Room::Evicted(vec![filter("a/set")]));
        assert_eq!(subs.held(), 1, "the filter held apart stays");
        hold(&mut subs, "b/set", 4); // in use by its call
        assert_eq!(subs.make_room(), Room::Full);
    }

    #[test]
    fn a_pinned_filter_is_never_evicted() {
        let mut subs = ReplySubscriptions::new(1);
        let pinned = subs.pin("+/set/response/+");
        subs.sent(1);
        assert_eq!(subs.acknowledged(1, true), Settled::Granted(vec![]));
        assert_eq!(subs.acquire(&pinned, "a", filter), Need::Ready);
        assert!(subs.release(&pinned, "a").is_empty());
        assert_eq!(subs.len(), 1);
    }

    #[test]
    fn a_reconnect_without_the_session_subscribes_every_filter_again() {
        let mut subs = ReplySubscriptions::new(10);
        hold(&mut subs, "dev/set", 1);
        let key: Arc<str> = Arc::from("dev/set");
        subs.disconnected();
        // Calls made while offline wait, and nothing is sent for them.
        assert_eq!(subs.acquire(&key, "b", filter), Need::Wait);
        let new_topic: Arc<str> = Arc::from("new/set");
        assert_eq!(subs.acquire(&new_topic, "c", filter), Need::Wait);
        let (ready, to_subscribe) = subs.reconnected(false);
        let mut filters: Vec<String> = to_subscribe.into_iter().map(|(_, f)| f).collect();
        filters.sort();
        assert!(ready.is_empty());
        assert_eq!(filters, ["dev/set/response/+", "new/set/response/+"]);
        subs.sent(7);
        subs.sent(8);
        let mut granted = Vec::new();
        for packet_id in [7, 8] {
            if let Settled::Granted(ids) = subs.acknowledged(packet_id, true) {
                granted.extend(ids);
            }
        }
        granted.sort();
        assert_eq!(granted, ["b", "c"]);
    }

    #[test]
    fn a_reconnect_into_a_kept_session_keeps_held_filters() {
        let mut subs = ReplySubscriptions::new(10);
        hold(&mut subs, "dev/set", 1);
        let key: Arc<str> = Arc::from("dev/set");
        subs.disconnected();
        assert_eq!(subs.acquire(&key, "b", filter), Need::Wait);
        let (ready, to_subscribe) = subs.reconnected(true);
        assert_eq!(ready, ["b"]);
        assert!(to_subscribe.is_empty());
        assert_eq!(subs.acquire(&key, "c", filter), Need::Ready);
    }

    #[test]
    fn failed_reconnect_attempts_do_not_forget_which_filters_a_kept_session_holds() {
        let mut subs = ReplySubscriptions::new(10);
        hold(&mut subs, "dev/set", 1);
        subs.disconnected();
        subs.disconnected(); // a reconnect attempt failed
        let (_, to_subscribe) = subs.reconnected(true);
        assert!(to_subscribe.is_empty(), "{to_subscribe:?}");
    }

    #[test]
    fn a_subscribe_unanswered_at_disconnect_is_sent_again_even_into_a_kept_session() {
        let mut subs = ReplySubscriptions::new(10);
        let key: Arc<str> = Arc::from("dev/set");
        subs.acquire(&key, "a", filter);
        subs.sent(1);
        subs.disconnected();
        assert_eq!(subs.acknowledged(1, true), Settled::Nothing);
        let (ready, to_subscribe) = subs.reconnected(true);
        assert!(ready.is_empty());
        assert_eq!(
            to_subscribe,
            [(key.clone(), "dev/set/response/+".to_owned())]
        );
        subs.sent(2);
        assert_eq!(
            subs.acknowledged(2, true),
            Settled::Granted(vec!["a".into()])
        );
    }

    #[test]
    fn a_call_that_leaves_while_subscribing_is_not_published_later() {
        let mut subs = ReplySubscriptions::new(10);
        let key: Arc<str> = Arc::from("dev/set");
        subs.acquire(&key, "a", filter);
        subs.acquire(&key, "b", filter);
        subs.release("dev/set", "a");
        subs.sent(1);
        assert_eq!(
            subs.acknowledged(1, true),
            Settled::Granted(vec!["b".into()])
        );
    }
}
