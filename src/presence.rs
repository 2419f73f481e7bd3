//! Device presence, without I/O: what a presence source last said about each device, so
//! that a call to a device known to be offline can fail at once. Two sources are read
//! here: AWS IoT Core's lifecycle events (`$aws/events/presence/{connected|disconnected}/
//! {clientId}`, JSON ordered by `versionNumber`, then `timestamp`: they may arrive out of
//! order) and a retained status topic set by the device and its Last Will
//! (`{device}/status` = `online` / `offline`). The cache is bounded (least recently used
//! devices are forgotten first) and a malformed event changes nothing: the caller counts it.
//! Issue 21 wires this to the client; until then it is tested on its own.

use lru::LruCache;
use serde_json::Value;
use std::num::NonZeroUsize;

/// Devices remembered unless told otherwise: a fleet's worth, a few MB at most.
pub const DEFAULT_PRESENCE_CAPACITY: usize = 100_000;

/// What a source said of a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presence {
    pub online: bool,
    /// When it changed, in milliseconds since the Unix epoch, if the source said.
    pub since_ms: Option<i64>,
    /// Why it went offline, if the source said (AWS's `disconnectReason`).
    pub reason: Option<String>,
    /// AWS's `(versionNumber, timestamp)`, to order events; None for a retained status,
    /// where the broker keeps only the latest.
    order: Option<(i64, i64)>,
}

/// Why an event was not applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Malformed {
    NotJson,
    /// No `clientId` string: the device is never taken from the topic.
    NoClientId,
    /// An `eventType` other than `connected` / `disconnected`, or none.
    UnknownEventType,
    /// `versionNumber` or `timestamp` missing or not an integer.
    NoOrder,
    /// A status payload that is neither the online nor the offline one.
    UnknownStatus,
}

/// The latest presence of each device seen, at most `capacity` devices.
pub struct PresenceCache {
    devices: LruCache<String, Presence>,
}

impl PresenceCache {
    pub fn new(capacity: usize) -> Self {
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        PresenceCache {
            devices: LruCache::new(capacity),
        }
    }

    /// What is known of `device` (None: nothing, call it as if its state were unknown).
    pub fn get(&mut self, device: &str) -> Option<&Presence> {
        self.devices.get(device)
    }

    pub fn len(&self) -> usize {
        self.devices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// Applies an AWS IoT Core lifecycle event; returns the device it was about. An event
    /// older than the one kept (by `versionNumber`, then `timestamp`) is ignored.
    pub fn aws_lifecycle_event(&mut self, payload: &[u8]) -> Result<String, Malformed> {
        let Ok(Value::Object(event)) = serde_json::from_slice::<Value>(payload) else {
            return Err(Malformed::NotJson);
        };
        let device = event
            .get("clientId")
            .and_then(Value::as_str)
            .filter(|id| !id.is_empty())
            .ok_or(Malformed::NoClientId)?;
        let online = match event.get("eventType").and_then(Value::as_str) {
            Some("connected") => true,
            Some("disconnected") => false,
            _ => return Err(Malformed::UnknownEventType),
        };
        let version = event.get("versionNumber").and_then(Value::as_i64);
        let timestamp = event.get("timestamp").and_then(Value::as_i64);
        let (Some(version), Some(timestamp)) = (version, timestamp) else {
            return Err(Malformed::NoOrder);
        };
        let order = (version, timestamp);
        if let Some(known) = self.devices.peek(device) {
            if known.order.is_some_and(|known| order <= known) {
                return Ok(device.to_owned());
            }
        }
        let reason = match online {
            true => None,
            false => event
                .get("disconnectReason")
                .and_then(Value::as_str)
                .map(str::to_owned),
        };
        let presence = Presence {
            online,
            since_ms: Some(timestamp),
            reason,
            order: Some(order),
        };
        self.devices.put(device.to_owned(), presence);
        Ok(device.to_owned())
    }

    /// Applies a retained status message of `device`: `online` or `offline` exactly.
    pub fn status(
        &mut self,
        device: &str,
        payload: &[u8],
        online: &[u8],
        offline: &[u8],
    ) -> Result<(), Malformed> {
        let is_online = match payload {
            p if p == online => true,
            p if p == offline => false,
            _ => return Err(Malformed::UnknownStatus),
        };
        let presence = Presence {
            online: is_online,
            since_ms: None,
            reason: None,
            order: None,
        };
        self.devices.put(device.to_owned(), presence);
        Ok(())
    }
}

/// The device a topic names under a template with one `{device}` level
/// (`{device}/status`): None when the topic does not fit it.
pub fn device_in_topic<'a>(template: &str, topic: &'a str) -> Option<&'a str> {
    let mut template_levels = template.split('/');
    let mut device = None;
    for level in topic.split('/') {
        match template_levels.next()? {
            "{device}" if !level.is_empty() => device = Some(level),
            expected if expected == level => {}
            _ => return None,
        }
    }
    if template_levels.next().is_some() {
        return None;
    }
    device
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(client: &str, kind: &str, version: i64, timestamp: i64) -> Vec<u8> {
        let mut event = json!({
            "clientId": client, "eventType": kind, "versionNumber": version,
            "timestamp": timestamp, "sessionIdentifier": "s", "principalIdentifier": "p",
        });
        if kind == "disconnected" {
            event["disconnectReason"] = json!("CONNECTION_LOST");
        }
        serde_json::to_vec(&event).unwrap()
    }

    #[test]
    fn out_of_order_events_are_resolved_by_version_then_timestamp() {
        let mut cache = PresenceCache::new(10);
        // Version 2's connect arrives before version 1's disconnect: it stays online.
        cache
            .aws_lifecycle_event(&event("cam1", "connected", 2, 2_000))
            .unwrap();
        cache
            .aws_lifecycle_event(&event("cam1", "disconnected", 1, 3_000))
            .unwrap();
        assert!(cache.get("cam1").unwrap().online);
        // Within one version the later timestamp wins, whichever arrives first.
        cache
            .aws_lifecycle_event(&event("cam1", "disconnected", 2, 5_000))
            .unwrap();
        cache
            .aws_lifecycle_event(&event("cam1", "connected", 2, 2_500))
            .unwrap();
        let cam = cache.get("cam1").unwrap();
        assert_eq!(
            (cam.online, cam.since_ms, cam.reason.as_deref()),
            (false, Some(5_000), Some("CONNECTION_LOST"))
        );
    }

    #[test]
    fn malformed_events_change_nothing() {
        let mut cache = PresenceCache::new(10);
        let no_id = br#"{"eventType": "connected", "versionNumber": 1, "timestamp": 1}"#;
        assert_eq!(cache.aws_lifecycle_event(no_id), Err(Malformed::NoClientId));
        assert_eq!(cache.aws_lifecycle_event(b"[1]"), Err(Malformed::NotJson));
        let odd = event("cam1", "rebooted", 1, 1);
        assert_eq!(
            cache.aws_lifecycle_event(&odd),
            Err(Malformed::UnknownEventType)
        );
        let unordered = br#"{"clientId": "cam1", "eventType": "connected"}"#;
        assert_eq!(
            cache.aws_lifecycle_event(unordered),
            Err(Malformed::NoOrder)
        );
        assert_eq!(
            cache.status("cam1", b"maybe", b"online", b"offline"),
            Err(Malformed::UnknownStatus)
        );
        assert!(cache.is_empty());
    }

    #[test]
    fn the_cache_forgets_the_least_recently_used_device_first() {
        let mut cache = PresenceCache::new(1_000);
        for n in 0..100_000 {
            let device = format!("dev{n}");
            cache
                .status(&device, b"offline", b"online", b"offline")
                .unwrap();
            if n % 500 == 0 {
                // dev0 is read often: it stays.
                assert!(cache.get("dev0").is_some());
            }
        }
        assert_eq!(cache.len(), 1_000);
        assert!(cache.get("dev0").is_some());
        assert!(cache.get("dev1").is_none());
        assert!(cache.get("dev99999").is_some());
    }

    #[test]
    fn a_status_topic_names_its_device_by_the_template() {
        assert_eq!(
            device_in_topic("{device}/status", "cam1/status"),
            Some("cam1")
        );
        assert_eq!(
            device_in_topic("fleet/{device}/state", "fleet/cam1/state"),
            Some("cam1")
        );
        assert_eq!(device_in_topic("{device}/status", "cam1/status/x"), None);
        assert_eq!(device_in_topic("{device}/status", "cam1"), None);
        assert_eq!(device_in_topic("{device}/status", "/status"), None);
        assert_eq!(device_in_topic("fleet/{device}", "other/cam1"), None);
    }
}
