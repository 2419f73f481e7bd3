//! Device presence, without I/O: what a presence source last said about each device, so
//! that a call to a device known to be offline can fail at once. Two sources are read
//! here: AWS IoT Core's lifecycle events (`$aws/events/presence/{connected|disconnected}/
//! {clientId}`, JSON ordered by `versionNumber`, then `timestamp`: they may arrive out of
//! order) and a retained status topic set by the device and its Last Will
//! (`{device}/status` = `online` / `offline`). The cache is bounded (least recently used
//! devices are forgotten first) and a malformed event changes nothing: the caller counts it.
//! The client's engine keeps one `PresenceBook` and asks it before a call is sent.

use crate::protocol::{self, InputError};
use lru::LruCache;
use serde_json::Value;
use std::num::NonZeroUsize;

/// Devices remembered unless told otherwise: a fleet's worth, a few MB at most.
pub const DEFAULT_PRESENCE_CAPACITY: usize = 100_000;

/// Where AWS IoT Core publishes lifecycle events.
pub const DEFAULT_AWS_PRESENCE_PREFIX: &str = "$aws/events/presence";

/// The retained status topic of a device, and its two payloads, unless told otherwise.
pub const DEFAULT_STATUS_TOPIC: &str = "{device}/status";
pub const DEFAULT_STATUS_ONLINE: &str = "online";
pub const DEFAULT_STATUS_OFFLINE: &str = "offline";

/// Where a client learns which devices are connected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresenceSource {
    /// AWS IoT Core's lifecycle events under `prefix` (`{prefix}/connected/{clientId}`,
    /// `{prefix}/disconnected/{clientId}`): one subscription, `{prefix}/+/+`.
    AwsLifecycle { prefix: String },
    /// A retained message on `topic` (one level of it is `{device}`), set to `online` by
    /// the device and to `offline` by it or its Last Will.
    RetainedStatus {
        topic: String,
        online: Vec<u8>,
        offline: Vec<u8>,
    },
    /// The application reports it (`PresenceBook::report`); nothing is subscribed.
    Reported,
}

impl PresenceSource {
    /// The filter that brings its messages, if it has one.
    pub fn filter(&self) -> Option<String> {
        match self {
            PresenceSource::AwsLifecycle { prefix } => Some(format!("{prefix}/+/+")),
            PresenceSource::RetainedStatus { topic, .. } => Some(
                topic
                    .split('/')
                    .map(|level| if level == "{device}" { "+" } else { level })
                    .collect::<Vec<_>>()
                    .join("/"),
            ),
            PresenceSource::Reported => None,
        }
    }

    /// Refuses a source whose topics cannot work, before anything connects.
    pub fn validate(&self) -> Result<(), InputError> {
        let bad = |why: String| Err(InputError::InvalidFilter(why));
        match self {
            PresenceSource::AwsLifecycle { prefix } => protocol::validate_request_topic(prefix)
                .or_else(|e| bad(format!("presence_prefix: {e}"))),
            PresenceSource::RetainedStatus {
                topic,
                online,
                offline,
            } => {
                let devices = topic.split('/').filter(|l| *l == "{device}").count();
                if devices != 1 {
                    return bad(format!(
                        "presence topic '{topic}' must have exactly one level that is {{device}}"
                    ));
                }
                protocol::validate_request_topic(&topic.replace("{device}", "device"))
                    .or_else(|e| bad(format!("presence topic: {e}")))?;
                if online.is_empty() || offline.is_empty() || online == offline {
                    return bad(
                        "the online and offline payloads must differ and not be empty".into(),
                    );
                }
                Ok(())
            }
            PresenceSource::Reported => Ok(()),
        }
    }
}

/// The device a request topic addresses unless the caller says otherwise: its first level
/// (the seed's `{device_id}/device/control/set`).
pub fn device_of_topic(topic: &str) -> &str {
    topic.split('/').next().unwrap_or(topic)
}

/// A source and what it said: the engine's presence state.
pub struct PresenceBook {
    pub source: PresenceSource,
    pub cache: PresenceCache,
}

impl PresenceBook {
    pub fn new(source: PresenceSource, capacity: usize) -> Self {
        PresenceBook {
            source,
            cache: PresenceCache::new(capacity),
        }
    }

    /// Applies a message that arrived on the source's filter; returns the device it was
    /// about (now known online, offline, or no longer known).
    pub fn on_message(&mut self, topic: &str, payload: &[u8]) -> Result<String, Malformed> {
        match &self.source {
            PresenceSource::AwsLifecycle { .. } => self.cache.aws_lifecycle_event(payload),
            PresenceSource::RetainedStatus {
                topic: template,
                online,
                offline,
            } => {
                let device = device_in_topic(template, topic).ok_or(Malformed::NoDevice)?;
                if payload.is_empty() {
                    // The retained status was cleared: nothing is known any more.
                    self.cache.forget(device);
                } else {
                    self.cache.status(device, payload, online, offline)?;
                }
                Ok(device.to_owned())
            }
            PresenceSource::Reported => Err(Malformed::NoDevice),
        }
    }

    /// What the application says of a device (any source of its own); the latest report
    /// wins.
    pub fn report(
        &mut self,
        device: &str,
        online: bool,
        since_ms: Option<i64>,
        reason: Option<String>,
    ) {
        let presence = Presence {
            online,
            since_ms,
            reason: reason.filter(|_| !online),
            order: None,
        };
        self.cache.devices.put(device.to_owned(), presence);
    }

    /// Whether the source's messages must be read again after a connection that lost its
    /// session: then what was kept may be stale and is dropped.
    pub fn subscribed(&self) -> bool {
        !matches!(self.source, PresenceSource::Reported)
    }
}

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
    /// A status topic that does not fit the template (no device level).
    NoDevice,
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

    pub fn forget(&mut self, device: &str) {
        self.devices.pop(device);
    }

    pub fn clear(&mut self) {
        self.devices.clear();
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
