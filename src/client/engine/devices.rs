//! The engine's inputs about devices: what the presence source says (a message on its
//! filter, or the application's own report), and calls to a device it knows offline,
//! which end at once or, told to wait, are held (holding no slot) until the device comes
//! online, the end of their wait or their deadline. The presence filter is held like the
//! pinned reply filter: subscribed before the first connection is ready and again after a
//! reconnect that lost the session, when what was known is forgotten (it may have changed
//! unheard) and every held call goes on as to a device of unknown state.

use super::{CallError, Dropped, Engine, Transmit};
use crate::client::Waiter;
use crate::pending::Admission;
use crate::presence::Presence;
use crate::protocol::Outgoing;
use std::sync::Arc;
use std::time::{Duration, Instant};

impl<W: Waiter> Engine<W> {
    /// Subscribes the presence source's filter for the client's whole life (called once,
    /// before the first connection, which is ready once its SUBACK arrives).
    pub fn hold_presence_filter(&mut self) {
        let Some(filter) = self.presence.as_ref().and_then(|book| book.source.filter()) else {
            return;
        };
        // A filter already held (the reply filter, were it the same) is not subscribed twice.
        if let Some(key) = self.subscriptions.pin_apart(&filter) {
            self.transmits
                .push_back(Transmit::Subscribe { key, filter });
        }
    }

    /// What the presence source last said of `device` (None: nothing, or no source).
    pub fn presence(&mut self, device: &str) -> Option<Presence> {
        self.presence.as_mut()?.cache.get(device).cloned()
    }

    /// Calls held until `device` comes online.
    pub fn held_for(&self, device: &str) -> usize {
        self.waiting_for_device.get(device).map_or(0, Vec::len)
    }

    /// A message on the presence filter: applied, or dropped and counted if unreadable.
    pub fn on_presence_message(&mut self, topic: &str, payload: &[u8], now: Instant) {
        let Some(book) = self.presence.as_mut() else {
            return;
        };
        match book.on_message(topic, payload) {
            Ok(device) => self.presence_changed(&device, now),
            Err(_) => self.dropped(Dropped::PresenceEvent),
        }
    }

    /// A message on the presence filter too large to read: dropped unread, counted.
    pub fn on_oversized_presence_message(&mut self) {
        self.dropped(Dropped::PresenceEvent);
    }

    /// The application says `device` is online or offline (from a source of its own).
    pub fn report_presence(
        &mut self,
        device: &str,
        online: bool,
        since_ms: Option<i64>,
        reason: Option<String>,
        now: Instant,
    ) {
        let Some(book) = self.presence.as_mut() else {
            return;
        };
        book.report(device, online, since_ms, reason);
        self.presence_changed(device, now);
    }

    /// A new call to `device`. Of a device known offline it ends at once with
    /// `DeviceOffline`, or with `wait_for_device` waits for it (within its deadline); any
    /// other call starts as `start` starts it.
    #[allow(clippy::too_many_arguments)]
    pub fn start_to_device(
        &mut self,
        device: &str,
        wait_for_device: Option<Duration>,
        request_id: String,
        topic: &str,
        request: impl Into<Outgoing>,
        (started, deadline): (Instant, Instant),
        waiter: W,
    ) {
        let offline = self.presence(device).is_some_and(|p| !p.online);
        // A request id in use is refused as `start` refuses it, whatever the device.
        if !offline || self.calls.contains(&request_id) {
            return self.start(
                request_id,
                topic,
                request,
                None,
                (started, deadline),
                waiter,
            );
        }
        self.counts.calls_started += 1;
        let Some(wait) = wait_for_device else {
            self.counts.calls_device_offline += 1;
            let error = self.offline_error(&Arc::from(topic), device, false);
            self.wakeups.push((waiter, Err(error)));
            return;
        };
        self.counts.calls_waited_for_device += 1;
        let until = started.checked_add(wait).unwrap_or(deadline);
        let wait = Some((device.to_owned(), until));
        let times = (started, deadline);
        self.insert(request_id, topic, request.into(), None, times, waiter, wait);
    }

    /// Why a call to `device` ends without being sent, with what the source said.
    pub(super) fn offline_error(
        &mut self,
        topic: &Arc<str>,
        device: &str,
        waited: bool,
    ) -> CallError {
        let known = self.presence(device);
        CallError::DeviceOffline {
            topic: topic.clone(),
            device: device.to_owned(),
            since_ms: known.as_ref().and_then(|p| p.since_ms),
            reason: known.and_then(|p| p.reason),
            waited,
        }
    }

    /// A call that waited for `device` ended (answered by nothing: its deadline, its
    /// caller, the client's close): it leaves the device's list.
    pub(super) fn stop_waiting(&mut self, device: &str, request_id: &str) {
        if let Some(waiting) = self.waiting_for_device.get_mut(device) {
            waiting.retain(|id| id != request_id);
            if waiting.is_empty() {
                self.waiting_for_device.remove(device);
            }
        }
    }

    /// The source said something of `device`: unless it is (still) known offline, the
    /// calls waiting for it go on.
    fn presence_changed(&mut self, device: &str, now: Instant) {
        if !self.waiting_for_device.contains_key(device) {
            return;
        }
        if self.presence(device).is_some_and(|p| !p.online) {
            return;
        }
        let waiting = self.waiting_for_device.remove(device).unwrap_or_default();
        for request_id in waiting {
            self.stop_waiting_and_go(&request_id, now);
        }
    }

    /// A held call goes on: a slot (and its publish) now, or its place in the slot queue.
    fn stop_waiting_and_go(&mut self, request_id: &str, now: Instant) {
        // Its timer moves from the end of its wait to its deadline.
        self.timer_changed = true;
        if self.calls.device_online(request_id) == Some(Admission::Admitted) {
            self.admit(request_id, now);
        }
    }

    /// The connection is back without its session: events may have been missed, so what
    /// the subscribed source said is forgotten (its retained messages come again), and
    /// the held calls go on as calls to devices of unknown state.
    pub(super) fn presence_session_lost(&mut self, now: Instant) {
        match self.presence.as_mut() {
            Some(book) if book.subscribed() => book.cache.clear(),
            _ => return,
        }
        let waiting: Vec<String> = (self.waiting_for_device.drain())
            .flat_map(|(_, ids)| ids)
            .collect();
        for request_id in waiting {
            self.stop_waiting_and_go(&request_id, now);
        }
    }
}
