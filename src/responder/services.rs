//! Fleet discovery and health: a named responder (Python or Rust alike) also answers three
//! control requests on reserved topics under a prefix (`mqtt-rpc/_srv` unless configured):
//! PING (who it is), INFO (what it serves) and STATS (how it is doing). A request names its
//! verb and whom it addresses: every service (`{prefix}/{VERB}`), every instance of one
//! name (`{prefix}/{VERB}/{name}`) or one instance (`{prefix}/{VERB}/{name}/{client_id}`).
//! They are ordinary scatter-gather requests, answered at once by the core without a
//! handler. docs/services.md is the wire format, for devices written in other languages.

use super::ResponderCounters;
use crate::protocol::{self, InputError};
use serde_json::{json, Map, Value};
use std::sync::atomic::Ordering;
use std::time::SystemTime;

/// Where control requests go unless the responder and the client are told otherwise.
pub const DEFAULT_SERVICE_PREFIX: &str = "mqtt-rpc/_srv";

/// Who a named responder is, as discovery tells it.
#[derive(Debug, Clone, Default)]
pub struct ServiceIdentity {
    /// Several instances share a name; each is told apart by its client id.
    pub name: String,
    pub version: Option<String>,
    /// Free-form facts the operator wants to see (a JSON object).
    pub metadata: Map<String, Value>,
    /// What each request filter does, in the order of `ResponderOptions::filters` (missing
    /// entries: no description).
    pub descriptions: Vec<Option<String>>,
    /// The topic levels control requests go under.
    pub prefix: String,
}

/// The three control requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Ping,
    Info,
    Stats,
}

impl Verb {
    fn parse(level: &str) -> Option<Verb> {
        match level {
            "PING" => Some(Verb::Ping),
            "INFO" => Some(Verb::Info),
            "STATS" => Some(Verb::Stats),
            _ => None,
        }
    }

    /// The `type` member of the answer, so that a reader knows what it holds.
    fn answer_type(self) -> &'static str {
        match self {
            Verb::Ping => "io.mqtt-rpc.ping",
            Verb::Info => "io.mqtt-rpc.info",
            Verb::Stats => "io.mqtt-rpc.stats",
        }
    }
}

/// Whether `text` can be one topic level of a control topic: not empty, no separator or
/// wildcard.
fn is_level(text: &str) -> bool {
    !text.is_empty() && !text.contains(['/', '+', '#'])
}

/// The control topic for `verb`, addressed to every service, one name, or one instance
/// (an instance needs its name). Used by clients; checked before anything is sent.
pub fn control_topic(
    prefix: &str,
    verb: Verb,
    name: Option<&str>,
    instance: Option<&str>,
) -> Result<String, InputError> {
    let verb = match verb {
        Verb::Ping => "PING",
        Verb::Info => "INFO",
        Verb::Stats => "STATS",
    };
    let mut topic = format!("{prefix}/{verb}");
    for (what, level) in [("service name", name), ("instance id", instance)] {
        let Some(level) = level else { break };
        if !is_level(level) {
            return Err(InputError::InvalidServiceName(format!(
                "{what} {level:?}: one topic level, without '/', '+' or '#'"
            )));
        }
        topic.push('/');
        topic.push_str(level);
    }
    if instance.is_some() && name.is_none() {
        return Err(InputError::InvalidServiceName(
            "an instance is addressed with its service name".into(),
        ));
    }
    protocol::validate_request_topic(&topic)?;
    Ok(topic)
}

impl ServiceIdentity {
    /// Refuses a name or prefix that cannot be topic levels.
    pub fn validate(&self) -> Result<(), InputError> {
        if !is_level(&self.name) {
            return Err(InputError::InvalidServiceName(format!(
                "service name {:?}: one topic level, without '/', '+' or '#'",
                self.name
            )));
        }
        protocol::validate_request_topic(&self.prefix).map(|_| ())
    }

    /// The filters that bring its control requests: to all, to its name, and (when its
    /// client id can be a topic level) to it alone. Never shared: every instance answers.
    pub fn filters(&self, client_id: &str) -> Vec<String> {
        let prefix = &self.prefix;
        let mut filters = vec![format!("{prefix}/+"), format!("{prefix}/+/{}", self.name)];
        if is_level(client_id) {
            filters.push(format!("{prefix}/+/{}/{client_id}", self.name));
        }
        filters
    }

    /// Whether `topic` is under the control prefix (then no handler ever sees it).
    pub fn is_control(&self, topic: &str) -> bool {
        topic
            .strip_prefix(self.prefix.as_str())
            .is_some_and(|rest| rest.starts_with('/'))
    }

    /// The verb of a control request addressed to this instance; `None` for one that
    /// addresses others, or names no verb this responder knows.
    pub fn addressed(&self, client_id: &str, topic: &str) -> Option<Verb> {
        let rest = topic
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix('/')?;
        let mut levels = rest.split('/');
        let verb = Verb::parse(levels.next()?)?;
        match (levels.next(), levels.next(), levels.next()) {
            (None, _, _) => Some(verb),
            (Some(name), None, _) if name == self.name => Some(verb),
            (Some(name), Some(id), None) if name == self.name && id == client_id => Some(verb),
            _ => None,
        }
    }
}

/// What a responder tells about itself: its identity, its filters and share group, when it
/// started, and its counters.
pub struct ServiceState<'a> {
    pub identity: &'a ServiceIdentity,
    pub client_id: &'a str,
    pub filters: &'a [String],
    pub share_group: Option<&'a str>,
    pub started: SystemTime,
    pub counters: &'a ResponderCounters,
}

impl ServiceState<'_> {
    /// The answer to a control request.
    pub fn answer(&self, verb: Verb) -> Value {
        let identity = self.identity;
        let mut answer = json!({
            "type": verb.answer_type(),
            "name": identity.name,
            "id": self.client_id,
            "version": identity.version,
        });
        match verb {
            Verb::Ping => {}
            Verb::Info => {
                answer["metadata"] = Value::Object(identity.metadata.clone());
                answer["endpoints"] = self.endpoints(|index, endpoint| {
                    let description = identity.descriptions.get(index).cloned().flatten();
                    endpoint.insert("description".into(), Value::from(description));
                    endpoint.insert("share_group".into(), Value::from(self.share_group));
                });
                answer["started"] = Value::from(rfc3339(self.started));
            }
            Verb::Stats => {
                answer["endpoints"] = self.endpoints(|index, endpoint| {
                    let Some(handler) = self.counters.handlers.get(index) else {
                        return;
                    };
                    let requests = handler.requests.load(Ordering::Relaxed);
                    let total_ms = handler.processing.sum().as_micros() as f64 / 1000.0;
                    let average = (requests > 0).then(|| total_ms / requests as f64);
                    endpoint.insert("requests".into(), Value::from(requests));
                    endpoint.insert(
                        "errors".into(),
                        Value::from(handler.errors.load(Ordering::Relaxed)),
                    );
                    endpoint.insert("processing_ms_total".into(), Value::from(total_ms));
                    endpoint.insert("processing_ms_average".into(), Value::from(average));
                    endpoint.insert("last_error".into(), Value::from(handler.last_error()));
                });
                let counts: Map<String, Value> = self
                    .counters
                    .counts()
                    .into_iter()
                    .map(|(name, count)| (name.to_owned(), Value::from(count)))
                    .collect();
                answer["counters"] = Value::Object(counts);
                answer["started"] = Value::from(rfc3339(self.started));
            }
        }
        answer
    }

    /// One object per request filter, `{"filter", ...}`, filled in by `fill`.
    fn endpoints(&self, mut fill: impl FnMut(usize, &mut Map<String, Value>)) -> Value {
        let endpoints = self.filters.iter().enumerate().map(|(index, filter)| {
            let mut endpoint = Map::new();
            endpoint.insert("filter".into(), Value::from(filter.as_str()));
            fill(index, &mut endpoint);
            Value::Object(endpoint)
        });
        Value::Array(endpoints.collect())
    }
}

/// UTC time as RFC 3339 with milliseconds, as NATS micro gives `started`.
fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> ServiceIdentity {
        ServiceIdentity {
            name: "camera".into(),
            prefix: DEFAULT_SERVICE_PREFIX.into(),
            ..ServiceIdentity::default()
        }
    }

    #[test]
    fn control_requests_address_all_one_name_or_one_instance() {
        let camera = identity();
        let at = |topic: &str| camera.addressed("cam-1", topic);
        assert_eq!(at("mqtt-rpc/_srv/PING"), Some(Verb::Ping));
        assert_eq!(at("mqtt-rpc/_srv/INFO/camera"), Some(Verb::Info));
        assert_eq!(at("mqtt-rpc/_srv/STATS/camera/cam-1"), Some(Verb::Stats));
        assert_eq!(at("mqtt-rpc/_srv/STATS/camera/cam-2"), None);
        assert_eq!(at("mqtt-rpc/_srv/PING/lights"), None);
        assert_eq!(at("mqtt-rpc/_srv/HELLO"), None);
        assert_eq!(at("mqtt-rpc/_srv/PING/camera/cam-1/extra"), None);
        assert_eq!(at("mqtt-rpc/_srvPING"), None);
        assert!(camera.is_control("mqtt-rpc/_srv/anything"));
        assert!(!camera.is_control("mqtt-rpc/_srvx/PING"));
    }

    #[test]
    fn each_address_has_its_filter_and_an_odd_client_id_only_loses_its_own() {
        let camera = identity();
        assert_eq!(
            camera.filters("cam-1"),
            [
                "mqtt-rpc/_srv/+",
                "mqtt-rpc/_srv/+/camera",
                "mqtt-rpc/_srv/+/camera/cam-1"
            ]
        );
        assert_eq!(camera.filters("a/b").len(), 2);
        for topic in [
            control_topic(DEFAULT_SERVICE_PREFIX, Verb::Ping, None, None).unwrap(),
            control_topic(DEFAULT_SERVICE_PREFIX, Verb::Info, Some("camera"), None).unwrap(),
            control_topic(
                DEFAULT_SERVICE_PREFIX,
                Verb::Stats,
                Some("camera"),
                Some("cam-1"),
            )
            .unwrap(),
        ] {
            let filters = camera.filters("cam-1");
            assert!(filters.iter().any(|f| protocol::topic_matches(f, &topic)));
            assert!(camera.addressed("cam-1", &topic).is_some());
        }
        assert!(control_topic(DEFAULT_SERVICE_PREFIX, Verb::Ping, Some("a/b"), None).is_err());
        assert!(control_topic(DEFAULT_SERVICE_PREFIX, Verb::Ping, None, Some("x")).is_err());
        assert!(ServiceIdentity {
            name: "+".into(),
            ..identity()
        }
        .validate()
        .is_err());
    }
}
