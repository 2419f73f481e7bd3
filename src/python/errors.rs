//! Maps the core's `CallError` to the Python exception tree defined in
//! `mqtt_rpc/errors.py` (Python classes, so that they can also subclass the builtins a
//! Python programmer catches: `TimeoutError`, `ConnectionError`, `ValueError`).

use crate::client::CallError;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;

use super::convert::{unix_seconds, value_to_py};

static ERRORS_MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

fn exception_type<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyType>> {
    let module =
        ERRORS_MODULE.get_or_try_init(py, || py.import("mqtt_rpc.errors").map(Bound::unbind))?;
    Ok(module.bind(py).getattr(name)?.cast_into::<PyType>()?)
}

/// The exception for a call that ended without an answer. `timeout` is the value the
/// caller passed, so that the message shows it as they wrote it (`10`, `0.5`, `10.0`).
pub fn call_error(py: Python<'_>, error: &CallError, timeout: Option<&Bound<'_, PyAny>>) -> PyErr {
    match build(py, error, timeout) {
        Ok(err) => err,
        Err(err) => err,
    }
}

fn build(py: Python<'_>, error: &CallError, timeout: Option<&Bound<'_, PyAny>>) -> PyResult<PyErr> {
    Ok(match error {
        CallError::Input(e) => PyErr::from_type(exception_type(py, "PayloadError")?, e.to_string()),
        CallError::Timeout { topic, throttled } => {
            let shown = match timeout {
                Some(t) => t.str()?.to_string(),
                None => "?".to_string(),
            };
            let mut message = format!("MQTT call timed out after {shown}s for topic '{topic}'");
            if let Some(rate) = throttled {
                message = format!("{message}: {}", crate::client::throttled_reason(*rate));
            }
            let timeout_obj = match timeout {
                Some(t) => t.clone().unbind(),
                None => py.None(),
            };
            PyErr::from_type(
                exception_type(py, "RpcTimeoutError")?,
                (message, timeout_obj, topic.to_string()),
            )
        }
        CallError::Remote(remote) => {
            let data = value_to_py(py, &remote.data)?.unbind();
            PyErr::from_type(
                exception_type(py, "RemoteError")?,
                (remote.code, remote.message.clone(), data),
            )
        }
        CallError::NotConnected(why) => {
            PyErr::from_type(exception_type(py, "NotConnectedError")?, why.clone())
        }
        CallError::Tls(why) => PyErr::from_type(exception_type(py, "TlsError")?, why.clone()),
        CallError::Refused(why) => {
            PyErr::from_type(exception_type(py, "BrokerRefusedError")?, why.clone())
        }
        CallError::ConnectionLost(why) => {
            PyErr::from_type(exception_type(py, "ConnectionLostError")?, why.clone())
        }
        CallError::SubscribeRefused { .. } => PyErr::from_type(
            exception_type(py, "SubscriptionRefusedError")?,
            error.to_string(),
        ),
        CallError::NoResponders { topic } => PyErr::from_type(
            exception_type(py, "NoRespondersError")?,
            (error.to_string(), topic.to_string()),
        ),
        CallError::PublishRejected { topic, reason_code } => PyErr::from_type(
            exception_type(py, "PublishRejectedError")?,
            (
                error.to_string(),
                topic.to_string(),
                *reason_code,
                crate::acks::reason_name(*reason_code),
            ),
        ),
        CallError::DeviceOffline {
            topic,
            device,
            since_ms,
            reason,
            ..
        } => PyErr::from_type(
            exception_type(py, "DeviceOfflineError")?,
            (
                error.to_string(),
                topic.to_string(),
                device.clone(),
                since_ms.map(unix_seconds),
                reason.clone(),
            ),
        ),
    })
}

pub fn value_error(message: impl Into<String>) -> PyErr {
    PyValueError::new_err(message.into())
}
