//! The one options object across the boundary: `MqttRpcClient` and `Responder` pass a dict
//! of the options their caller chose (by name), and this module reads it into the core's
//! option structs, whose `Default`s are the only defaults; each value is checked here with
//! an error that names it. `client_defaults()` and `responder_defaults()` show those
//! defaults to Python, whose documented signatures are tested against them.

use super::arguments::{parse_protocol, seconds};
use super::errors::value_error;
use crate::client::ClientOptions;
use crate::link::{self, ConnectionOptions, Protocol};
use crate::presence::{self, PresenceSource};
use crate::quota::Quotas;
use crate::responder::{RequestLimits, ResponderOptions, ServiceIdentity, DEFAULT_SERVICE_PREFIX};
use crate::tls::TlsOptions;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// The options of one dict, taken by name; what is left at the end is unknown.
struct Reader<'py> {
    values: BTreeMap<String, Bound<'py, PyAny>>,
}

impl<'py> Reader<'py> {
    fn new(options: &Bound<'py, PyDict>) -> PyResult<Self> {
        let mut values = BTreeMap::new();
        for (key, value) in options.iter() {
            let name: String = key.extract()?;
            // None means "not chosen": the core's default applies.
            if !value.is_none() {
                values.insert(name, value);
            }
        }
        Ok(Reader { values })
    }

    /// The option `name` converted to `T`, if it was given.
    fn take<T: for<'a> FromPyObject<'a, 'py>>(&mut self, name: &str) -> PyResult<Option<T>> {
        let Some(value) = self.values.remove(name) else {
            return Ok(None);
        };
        let converted = value.extract::<T>().ok();
        match converted {
            Some(converted) => Ok(Some(converted)),
            None => Err(value_error(format!(
                "{name} cannot be {}",
                value.repr().map(|r| r.to_string()).unwrap_or_default()
            ))),
        }
    }

    fn take_seconds(&mut self, name: &str) -> PyResult<Option<Duration>> {
        self.take::<f64>(name)?
            .map(|value| seconds(name, value))
            .transpose()
    }

    /// Refuses what no option is called: a misspelt name must not pass unnoticed.
    fn finish(self) -> PyResult<()> {
        match self.values.keys().next() {
            None => Ok(()),
            Some(name) => Err(value_error(format!("unknown option {name:?}"))),
        }
    }
}

fn connection_options(reader: &mut Reader<'_>) -> PyResult<ConnectionOptions> {
    let mut c = ConnectionOptions::default();
    if let Some(host) = reader.take::<String>("host")? {
        c.host = host;
    }
    if let Some(port) = reader.take::<u16>("port")? {
        c.port = port;
    }
    // Several nodes of one cluster: the first is where a connect starts.
    if let Some(hosts) = reader.take::<Vec<(String, u16)>>("hosts")? {
        let mut hosts = hosts.into_iter();
        let Some((host, port)) = hosts.next() else {
            return Err(value_error("hosts must name at least one (host, port)"));
        };
        (c.host, c.port) = (host, port);
        c.failover = hosts.collect();
    }
    if let Some(client_id) = reader.take::<String>("client_id")? {
        c.client_id = link::expand_client_id(&client_id).map_err(value_error)?;
    }
    if let Some(interval) = reader.take_seconds("min_connect_interval")? {
        c.min_connect_interval = interval;
    }
    if let Some(protocol) = reader.take::<String>("protocol")? {
        c.protocol = parse_protocol(&protocol)?;
    }
    if let Some(keepalive) = reader.take_seconds("keepalive")? {
        c.keepalive = keepalive;
    }
    c.username = reader.take("username")?;
    c.password = reader.take("password")?;
    if let Some(size) = reader.take::<usize>("max_packet_size")? {
        c.max_packet_size = size;
    }
    if let Some(timeout) = reader.take_seconds("connect_timeout")? {
        c.connect_timeout = timeout;
    }
    c.session_expiry = match reader.take::<f64>("session_expiry")? {
        None => link::default_session_expiry(c.protocol),
        Some(0.0) => Duration::ZERO,
        Some(s) => seconds("session_expiry", s)?,
    };
    let tls = TlsOptions {
        ca_certs: reader.take::<PathBuf>("ca_certs")?,
        certfile: reader.take::<PathBuf>("certfile")?,
        keyfile: reader.take::<PathBuf>("keyfile")?,
        alpn_protocols: reader.take("alpn_protocols")?.unwrap_or_default(),
    };
    // Any TLS file or ALPN protocol implies TLS.
    let implied = tls.ca_certs.is_some()
        || tls.certfile.is_some()
        || tls.keyfile.is_some()
        || !tls.alpn_protocols.is_empty();
    if reader.take::<bool>("tls")?.unwrap_or(false) || implied {
        c.tls = Some(tls);
    }
    Ok(c)
}

fn check_qos(qos: u8) -> PyResult<u8> {
    if qos > 1 {
        return Err(value_error(format!(
            "qos must be 0 or 1 (AWS IoT Core has no QoS 2), not {qos}"
        )));
    }
    Ok(qos)
}

/// A client's options and its number of connections.
pub fn client_options(options: &Bound<'_, PyDict>) -> PyResult<(ClientOptions, usize)> {
    let mut reader = Reader::new(options)?;
    let mut o = ClientOptions {
        connection: connection_options(&mut reader)?,
        ..ClientOptions::default()
    };
    if let Some(qos) = reader.take::<u8>("qos")? {
        o.qos = check_qos(qos)?;
    }
    o.reply_filter = reader.take("reply_filter")?;
    o.inbox_prefix = reader.take("inbox_prefix")?;
    if let Some(n) = reader.take::<usize>("max_reply_subscriptions")? {
        o.max_reply_subscriptions = n;
    }
    if let Some(n) = reader.take::<usize>("max_in_flight")? {
        o.max_in_flight = n;
    }
    if let Some(delay) = reader.take_seconds("reconnect_min_delay")? {
        o.reconnect_min_delay = delay;
    }
    if let Some(delay) = reader.take_seconds("reconnect_max_delay")? {
        o.reconnect_max_delay = delay;
    }
    for (name, flag) in [
        ("fail_fast", &mut o.fail_fast),
        ("aws_topic_rules", &mut o.aws_topic_rules),
        ("cancel_on_abandon", &mut o.cancel_on_abandon),
    ] {
        if let Some(value) = reader.take::<bool>(name)? {
            *flag = value;
        }
    }
    o.propagate_deadline = reader.take::<bool>("propagate_deadline")?;
    o.presence = presence_source(&mut reader)?;
    if let Some(capacity) = reader.take::<usize>("presence_capacity")? {
        o.presence_capacity = capacity.max(1);
    }
    o.quotas = Quotas {
        publishes_per_second: reader.take("publishes_per_second")?,
        max_unacked_publishes: reader.take("max_unacked_publishes")?,
    };
    let connections = reader.take::<usize>("connections")?.unwrap_or(1);
    reader.finish()?;
    if o.aws_topic_rules {
        // A pool's connections add "-{i}" to the id.
        let suffix = match connections {
            0 | 1 => 0,
            n => 1 + (n - 1).to_string().len(),
        };
        check_aws_client_id(&o.connection.client_id, suffix)?;
    }
    if o.presence.is_some() && o.max_reply_subscriptions < 2 {
        return Err(value_error(
            "max_reply_subscriptions must be at least 2 with presence: its filter takes one place",
        ));
    }
    if o.max_in_flight == 0 || o.max_reply_subscriptions == 0 || connections == 0 {
        return Err(value_error(
            "max_in_flight, max_reply_subscriptions and connections must be at least 1",
        ));
    }
    if o.quotas.publishes_per_second == Some(0) || o.quotas.max_unacked_publishes == Some(0) {
        return Err(value_error(
            "publishes_per_second and max_unacked_publishes must be at least 1 (or None)",
        ));
    }
    Ok((o, connections))
}

/// AWS IoT Core refuses a client id longer than 128 bytes (with `suffix` bytes to come).
fn check_aws_client_id(client_id: &str, suffix: usize) -> PyResult<()> {
    if client_id.len() + suffix > link::AWS_MAX_CLIENT_ID {
        return Err(value_error(format!(
            "client_id {client_id:?} is {} bytes{}: AWS IoT Core takes at most {}",
            client_id.len() + suffix,
            if suffix > 0 {
                " with its pool suffix"
            } else {
                ""
            },
            link::AWS_MAX_CLIENT_ID
        )));
    }
    Ok(())
}

/// The presence source: `presence` names it (`aws-lifecycle`, `retained-status`,
/// `reported`); the options of another source than the one named are refused.
fn presence_source(reader: &mut Reader<'_>) -> PyResult<Option<PresenceSource>> {
    let prefix = reader.take::<String>("presence_prefix")?;
    let topic = reader.take::<String>("presence_topic")?;
    let online = reader.take::<String>("presence_online")?;
    let offline = reader.take::<String>("presence_offline")?;
    let kind = reader.take::<String>("presence")?;
    let status_options = topic.is_some() || online.is_some() || offline.is_some();
    let source = match kind.as_deref() {
        None if prefix.is_none() && !status_options => return Ok(None),
        Some("aws-lifecycle") if !status_options => PresenceSource::AwsLifecycle {
            prefix: prefix.unwrap_or_else(|| presence::DEFAULT_AWS_PRESENCE_PREFIX.to_owned()),
        },
        Some("retained-status") if prefix.is_none() => PresenceSource::RetainedStatus {
            topic: topic.unwrap_or_else(|| presence::DEFAULT_STATUS_TOPIC.to_owned()),
            online: online
                .unwrap_or_else(|| presence::DEFAULT_STATUS_ONLINE.to_owned())
                .into_bytes(),
            offline: offline
                .unwrap_or_else(|| presence::DEFAULT_STATUS_OFFLINE.to_owned())
                .into_bytes(),
        },
        Some("reported") if prefix.is_none() && !status_options => PresenceSource::Reported,
        Some(other @ ("aws-lifecycle" | "retained-status" | "reported")) => {
            return Err(value_error(format!(
                "presence={other:?} does not take the options of another source \
                 (presence_prefix is aws-lifecycle's; presence_topic, presence_online and \
                 presence_offline are retained-status's)"
            )))
        }
        None => {
            return Err(value_error(
                "presence_prefix, presence_topic, presence_online and presence_offline need presence=",
            ))
        }
        Some(other) => {
            return Err(value_error(format!(
                "presence must be \"aws-lifecycle\", \"retained-status\" or a presence source, not {other:?}"
            )))
        }
    };
    source.validate().map_err(|e| value_error(e.to_string()))?;
    Ok(Some(source))
}

/// A responder's options, serving `filters`.
pub fn responder_options(
    options: &Bound<'_, PyDict>,
    filters: Vec<String>,
) -> PyResult<ResponderOptions> {
    let mut reader = Reader::new(options)?;
    let connection = connection_options(&mut reader)?;
    let qos = check_qos(reader.take::<u8>("qos")?.unwrap_or(0))?;
    let share_group = reader.take("share_group")?;
    let mut limits = RequestLimits::default();
    for (name, limit) in [
        ("max_concurrency", &mut limits.max_concurrency),
        ("max_queued", &mut limits.max_queued),
        ("reply_cache_size", &mut limits.reply_cache_size),
    ] {
        if let Some(value) = reader.take::<usize>(name)? {
            *limit = value;
        }
    }
    if let Some(ttl) = reader.take::<f64>("reply_cache_ttl")? {
        // A ttl of zero (or less) turns the cache off, as a size of zero does.
        limits.reply_cache_ttl = match ttl > 0.0 {
            true => seconds("reply_cache_ttl", ttl)?,
            false => Duration::ZERO,
        };
    }
    let service = service_identity(&mut reader)?;
    let max_subscriptions = reader.take::<usize>("max_subscriptions")?;
    let aws_topic_rules = reader.take::<bool>("aws_topic_rules")?.unwrap_or(false);
    reader.finish()?;
    if limits.max_concurrency == 0 {
        return Err(value_error("max_concurrency must be at least 1"));
    }
    if aws_topic_rules {
        check_aws_client_id(&connection.client_id, 0)?;
    }
    Ok(ResponderOptions {
        connection,
        qos,
        filters,
        share_group,
        mqtt5_only: false,
        limits,
        service,
        max_subscriptions,
        aws_topic_rules,
    })
}

/// A named responder's identity for discovery: `name`, `version`, `metadata` (a JSON
/// object, as text), `descriptions` (one per filter, or None) and `service_prefix`.
fn service_identity(reader: &mut Reader<'_>) -> PyResult<Option<ServiceIdentity>> {
    let version = reader.take::<String>("version")?;
    let metadata = reader.take::<String>("metadata")?;
    let descriptions = reader.take::<Vec<Option<String>>>("descriptions")?;
    let prefix = reader.take::<String>("service_prefix")?;
    let Some(name) = reader.take::<String>("name")? else {
        return Ok(None);
    };
    let metadata = match metadata {
        None => serde_json::Map::new(),
        Some(text) => match serde_json::from_str(&text) {
            Ok(serde_json::Value::Object(map)) => map,
            _ => return Err(value_error("metadata must be a JSON object")),
        },
    };
    let identity = ServiceIdentity {
        name,
        version,
        metadata,
        descriptions: descriptions.unwrap_or_default(),
        prefix: prefix.unwrap_or_else(|| DEFAULT_SERVICE_PREFIX.to_owned()),
    };
    identity
        .validate()
        .map_err(|e| value_error(e.to_string()))?;
    Ok(Some(identity))
}

/// A client id with its placeholders (`{pid}`, `{hostname}`, `{random}`) filled in.
#[pyfunction]
pub fn expand_client_id(template: &str) -> PyResult<String> {
    link::expand_client_id(template).map_err(value_error)
}

/// The core's defaults of the options Python documents, by name.
#[pyfunction]
pub fn client_defaults(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let o = ClientOptions::default();
    let c = &o.connection;
    let defaults = PyDict::new(py);
    defaults.set_item("protocol", PyString::new(py, protocol_name(c.protocol)))?;
    defaults.set_item("qos", o.qos)?;
    defaults.set_item("keepalive", c.keepalive.as_secs_f64())?;
    defaults.set_item("max_packet_size", c.max_packet_size)?;
    defaults.set_item("connect_timeout", c.connect_timeout.as_secs_f64())?;
    defaults.set_item("max_reply_subscriptions", o.max_reply_subscriptions)?;
    defaults.set_item("max_in_flight", o.max_in_flight)?;
    defaults.set_item("reconnect_min_delay", o.reconnect_min_delay.as_secs_f64())?;
    defaults.set_item("reconnect_max_delay", o.reconnect_max_delay.as_secs_f64())?;
    defaults.set_item("fail_fast", o.fail_fast)?;
    defaults.set_item("aws_topic_rules", o.aws_topic_rules)?;
    defaults.set_item("cancel_on_abandon", o.cancel_on_abandon)?;
    defaults.set_item("service_prefix", DEFAULT_SERVICE_PREFIX)?;
    defaults.set_item("inbox_prefix", crate::client::DEFAULT_INBOX_PREFIX)?;
    defaults.set_item("presence_prefix", presence::DEFAULT_AWS_PRESENCE_PREFIX)?;
    defaults.set_item("presence_capacity", o.presence_capacity)?;
    Ok(defaults)
}

/// The core's defaults of the options only `Responder` takes, by name.
#[pyfunction]
pub fn responder_defaults(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let limits = RequestLimits::default();
    let defaults = PyDict::new(py);
    defaults.set_item("max_concurrency", limits.max_concurrency)?;
    defaults.set_item("max_queued", limits.max_queued)?;
    defaults.set_item("reply_cache_size", limits.reply_cache_size)?;
    defaults.set_item("reply_cache_ttl", limits.reply_cache_ttl.as_secs_f64())?;
    defaults.set_item("service_prefix", DEFAULT_SERVICE_PREFIX)?;
    Ok(defaults)
}

fn protocol_name(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::V311 => "3.1.1",
        Protocol::V5 => "5",
    }
}
