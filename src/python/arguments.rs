//! The Python arguments of the core's calls, checked and converted: timeouts and other
//! durations, payloads, the protocol version. A bad one raises the error a Python caller
//! expects (`ValueError`, `PayloadError`) before anything is sent.

use super::errors::{call_error, value_error};
use crate::client::CallError;
use crate::link::Protocol;
use crate::protocol::InputError;
use crate::responder::Verb;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyString};
use std::borrow::Cow;
use std::time::Duration;

/// The longest timeout accepted, in seconds (about 30 years): beyond it deadlines overflow.
const MAX_TIMEOUT_SECONDS: f64 = 1e9;

/// A call's timeout, as the number of seconds the caller passed.
pub fn timeout_seconds(timeout: &Bound<'_, PyAny>) -> PyResult<Duration> {
    match timeout.extract::<f64>() {
        Ok(t) => seconds("timeout", t),
        Err(_) => Err(value_error(format!(
            "timeout must be a number of seconds, not {}",
            timeout.repr()?
        ))),
    }
}

/// The payload's bytes: `str`, `bytes` or `bytearray` (a `dict` is encoded by the caller).
pub fn payload_bytes<'a>(payload: &'a Bound<'_, PyAny>) -> PyResult<Cow<'a, [u8]>> {
    if let Ok(b) = payload.cast::<PyBytes>() {
        return Ok(Cow::Borrowed(b.as_bytes()));
    }
    if let Ok(s) = payload.cast::<PyString>() {
        // Borrowed where the interpreter keeps the UTF-8 (not copied again here).
        return Ok(match s.to_cow()? {
            Cow::Borrowed(text) => Cow::Borrowed(text.as_bytes()),
            Cow::Owned(text) => Cow::Owned(text.into_bytes()),
        });
    }
    if let Ok(b) = payload.cast::<PyByteArray>() {
        return Ok(Cow::Owned(b.to_vec()));
    }
    let kind = payload.get_type().name()?;
    Err(call_error(
        payload.py(),
        &CallError::Input(InputError::NotJson(format!(
            "expected a JSON object as str, bytes or dict, got {kind}"
        ))),
        None,
    ))
}

/// "3.1.1" or "5" (and their common spellings).
pub fn parse_protocol(protocol: &str) -> PyResult<Protocol> {
    match protocol {
        "3.1.1" | "311" | "4" => Ok(Protocol::V311),
        "5" | "5.0" => Ok(Protocol::V5),
        other => Err(value_error(format!(
            "protocol must be \"3.1.1\" or \"5\", not {other:?}"
        ))),
    }
}

pub fn seconds(name: &str, value: f64) -> PyResult<Duration> {
    if !(value.is_finite() && value > 0.0 && value <= MAX_TIMEOUT_SECONDS) {
        return Err(value_error(format!(
            "{name} must be a positive number of seconds, not {value}"
        )));
    }
    Ok(Duration::from_secs_f64(value))
}

/// Python's Unix time in seconds as the core's milliseconds; ValueError if it is not one.
pub fn unix_ms(name: &str, seconds: f64) -> PyResult<i64> {
    if !(seconds.is_finite() && seconds.abs() < 1e15) {
        return Err(value_error(format!(
            "{name} must be a Unix time in seconds, not {seconds}"
        )));
    }
    Ok((seconds * 1000.0) as i64)
}

/// The topic of a discovery or health request (`verb`: PING, INFO or STATS) to every
/// service, the instances of `name`, or one `instance` of it; `PayloadError` for a name or
/// id that cannot be a topic level.
#[pyfunction]
#[pyo3(signature = (prefix, verb, name=None, instance=None))]
pub fn control_topic(
    py: Python<'_>,
    prefix: &str,
    verb: &str,
    name: Option<&str>,
    instance: Option<&str>,
) -> PyResult<String> {
    let verb = match verb {
        "PING" => Verb::Ping,
        "INFO" => Verb::Info,
        "STATS" => Verb::Stats,
        other => {
            return Err(value_error(format!(
                "no control request is called {other:?}"
            )))
        }
    };
    crate::responder::control_topic(prefix, verb, name, instance)
        .map_err(|e| call_error(py, &CallError::Input(e), None))
}
