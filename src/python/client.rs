//! `CoreClient`, the Python face of `RpcClient`: converts arguments, creates each call's
//! asyncio future on the caller's loop, and maps errors. The public, documented class is
//! `mqtt_rpc.MqttRpcClient` (python/mqtt_rpc/client.py), which wraps this one.

use super::bridge::{Completion, LoopBridge, PyWaiter};
use super::errors::{call_error, value_error};
use super::runtime::runtime;
use crate::client::{CallError, ClientOptions, RpcClient};
use crate::link::{ConnectionOptions, Protocol};
use crate::tls::TlsOptions;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyString, PyTuple};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// The longest timeout accepted, in seconds (about 30 years): beyond it deadlines overflow.
const MAX_TIMEOUT_SECONDS: f64 = 1e9;

#[pyclass(frozen, module = "mqtt_rpc._core")]
pub struct CoreClient {
    inner: Arc<RpcClient<PyWaiter>>,
    bridges: Mutex<Vec<Py<LoopBridge>>>,
    /// Called on the connecting loop as `handler(connected, reconnect, session_present, reason)`.
    event_handler: Option<Arc<Py<PyAny>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn seconds(name: &str, value: f64) -> PyResult<Duration> {
    if !(value.is_finite() && value > 0.0 && value <= MAX_TIMEOUT_SECONDS) {
        return Err(value_error(format!(
            "{name} must be a positive number of seconds, not {value}"
        )));
    }
    Ok(Duration::from_secs_f64(value))
}

impl CoreClient {
    /// The bridge of `event_loop`, created and registered on first use.
    fn bridge(&self, event_loop: &Bound<'_, PyAny>) -> PyResult<Py<LoopBridge>> {
        let py = event_loop.py();
        let mut bridges = lock(&self.bridges);
        if let Some(bridge) = bridges
            .iter()
            .find(|b| b.get().event_loop.bind(py).is(event_loop))
        {
            return Ok(bridge.clone_ref(py));
        }
        let bridge = LoopBridge::attach(event_loop)?;
        bridges.push(bridge.clone_ref(py));
        Ok(bridge)
    }

    /// Runs `work` on the runtime and resolves a future of `event_loop` when it ends.
    fn spawn_done<F>(&self, event_loop: &Bound<'_, PyAny>, work: F) -> PyResult<Py<PyAny>>
    where
        F: std::future::Future<Output = Result<(), CallError>> + Send + 'static,
    {
        let py = event_loop.py();
        let runtime = runtime().map_err(PyRuntimeError::new_err)?;
        let bridge = self.bridge(event_loop)?;
        let bridge = bridge.get();
        let future = bridge.new_future(py)?;
        let queue = bridge.queue.clone();
        let done = future.clone_ref(py);
        runtime.spawn(async move {
            let result = work.await;
            queue.push(Completion::Done {
                future: done,
                result,
            });
        });
        Ok(future)
    }
}

impl Drop for CoreClient {
    /// A client dropped without `close()`: its tasks stop with `RpcClient`'s drop; here
    /// each loop is told to stop watching its bridge (scheduled on that loop, which holds
    /// the bridge, and so its socket, until then).
    fn drop(&mut self) {
        let bridges = std::mem::take(&mut *lock(&self.bridges));
        if bridges.is_empty() {
            return;
        }
        Python::attach(|py| {
            for bridge in bridges {
                // A loop that cannot take the request is closed or closing: nothing to undo.
                let _ = bridge.get().detach(py, false);
            }
        });
    }
}

#[pymethods]
impl CoreClient {
    #[new]
    #[pyo3(signature = (host, port, client_id, protocol, qos, keepalive, username, password,
                        reply_filter, max_reply_subscriptions, max_in_flight, max_packet_size,
                        connect_timeout, session_expiry=None, fail_fast=false,
                        reconnect_min_delay=0.1, reconnect_max_delay=10.0, event_handler=None,
                        tls=false, ca_certs=None, certfile=None, keyfile=None,
                        alpn_protocols=Vec::new(), aws_topic_rules=false))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        host: String,
        port: u16,
        client_id: Option<String>,
        protocol: &str,
        qos: u8,
        keepalive: f64,
        username: Option<String>,
        password: Option<String>,
        reply_filter: Option<String>,
        max_reply_subscriptions: usize,
        max_in_flight: usize,
        max_packet_size: usize,
        connect_timeout: f64,
        session_expiry: Option<f64>,
        fail_fast: bool,
        reconnect_min_delay: f64,
        reconnect_max_delay: f64,
        event_handler: Option<Py<PyAny>>,
        tls: bool,
        ca_certs: Option<PathBuf>,
        certfile: Option<PathBuf>,
        keyfile: Option<PathBuf>,
        alpn_protocols: Vec<String>,
        aws_topic_rules: bool,
    ) -> PyResult<Self> {
        let protocol = match protocol {
            "3.1.1" | "311" | "4" => Protocol::V311,
            "5" | "5.0" => Protocol::V5,
            other => {
                return Err(value_error(format!(
                    "protocol must be \"3.1.1\" or \"5\", not {other:?}"
                )))
            }
        };
        if qos > 1 {
            return Err(value_error(format!(
                "qos must be 0 or 1 (AWS IoT Core has no QoS 2), not {qos}"
            )));
        }
        if max_in_flight == 0 || max_reply_subscriptions == 0 {
            return Err(value_error(
                "max_in_flight and max_reply_subscriptions must be at least 1",
            ));
        }
        let options = ClientOptions {
            connection: ConnectionOptions {
                host,
                port,
                client_id: client_id.unwrap_or_else(crate::link::default_client_id),
                protocol,
                keepalive: seconds("keepalive", keepalive)?,
                username,
                password,
                max_packet_size,
                connect_timeout: seconds("connect_timeout", connect_timeout)?,
                session_expiry: match session_expiry {
                    // The default: MQTT 5 keeps the session a minute, so a short outage loses
                    // nothing; 3.1.1 cannot expire a session, so it starts clean.
                    None if protocol == Protocol::V5 => Duration::from_secs(60),
                    None => Duration::ZERO,
                    Some(0.0) => Duration::ZERO,
                    Some(s) => seconds("session_expiry", s)?,
                },
                tls: tls.then_some(TlsOptions {
                    ca_certs,
                    certfile,
                    keyfile,
                    alpn_protocols,
                }),
            },
            qos,
            reply_filter,
            max_reply_subscriptions,
            max_in_flight,
            reconnect_min_delay: seconds("reconnect_min_delay", reconnect_min_delay)?,
            reconnect_max_delay: seconds("reconnect_max_delay", reconnect_max_delay)?,
            fail_fast,
            aws_topic_rules,
        };
        let inner = RpcClient::new(options).map_err(|e| value_error(e.to_string()))?;
        Ok(CoreClient {
            inner: Arc::new(inner),
            bridges: Mutex::new(Vec::new()),
            event_handler: event_handler.map(Arc::new),
        })
    }

    /// Connects; returns a future of `event_loop` that resolves when the client is ready.
    fn connect(&self, event_loop: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        if let Some(handler) = &self.event_handler {
            let queue = self.bridge(event_loop)?.get().queue.clone();
            let handler = handler.clone();
            self.inner.set_event_sink(Box::new(move |event| {
                queue.push(Completion::Event {
                    handler: handler.clone(),
                    event,
                })
            }));
        }
        let inner = self.inner.clone();
        self.spawn_done(event_loop, async move { inner.connect().await })
    }

    /// Closes; returns a future of `event_loop` that resolves once pending calls have ended
    /// (answered within `grace` seconds, or failed) and the connection is closed. Call
    /// `detach()` after it.
    fn close(&self, event_loop: &Bound<'_, PyAny>, grace: f64) -> PyResult<Py<PyAny>> {
        let grace = if grace == 0.0 {
            Duration::ZERO
        } else {
            seconds("grace", grace)?
        };
        let inner = self.inner.clone();
        self.spawn_done(event_loop, async move {
            inner.close(grace).await;
            Ok(())
        })
    }

    /// Delivers what is still queued and unregisters from every loop this client used.
    fn detach(&self, py: Python<'_>, running_loop: &Bound<'_, PyAny>) -> PyResult<()> {
        let bridges = std::mem::take(&mut *lock(&self.bridges));
        for bridge in bridges {
            let bridge = bridge.get();
            let on_loop_thread = bridge.event_loop.bind(py).is(running_loop);
            bridge.detach(py, on_loop_thread)?;
        }
        Ok(())
    }

    /// Starts a call; returns `(future, request_id)`. Bad input raises here, before
    /// anything is published.
    fn start_call<'py>(
        &self,
        event_loop: &Bound<'py, PyAny>,
        topic: &str,
        payload: &Bound<'py, PyAny>,
        timeout: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let py = event_loop.py();
        let duration = match timeout.extract::<f64>() {
            Ok(t) => seconds("timeout", t)?,
            Err(_) => {
                return Err(value_error(format!(
                    "timeout must be a number of seconds, not {}",
                    timeout.repr()?
                )))
            }
        };
        let owned_bytes;
        let body: &[u8] = if let Ok(b) = payload.cast::<PyBytes>() {
            b.as_bytes()
        } else if let Ok(s) = payload.cast::<PyString>() {
            owned_bytes = s.to_cow()?.into_owned().into_bytes();
            &owned_bytes
        } else if let Ok(b) = payload.cast::<PyByteArray>() {
            owned_bytes = b.to_vec();
            &owned_bytes
        } else {
            let kind = payload.get_type().name()?;
            return Err(call_error(
                py,
                &CallError::Input(crate::protocol::InputError::NotJson(format!(
                    "expected a JSON object as str, bytes or dict, got {kind}"
                ))),
                None,
            ));
        };
        let bridge = self.bridge(event_loop)?;
        let bridge = bridge.get();
        // Made before validation for simplicity: a refused call costs one unused future.
        let future = bridge.new_future(py)?;
        let waiter = PyWaiter {
            future: future.clone_ref(py),
            timeout: timeout.clone().unbind(),
            queue: bridge.queue.clone(),
        };
        match self.inner.start_call(topic, body, duration, || waiter) {
            Ok(request_id) => PyTuple::new(
                py,
                [
                    future.into_bound(py),
                    PyString::new(py, &request_id).into_any(),
                ],
            ),
            Err(error) => Err(call_error(py, &error, Some(timeout))),
        }
    }

    /// The caller stopped waiting (its task was cancelled): drop the call now.
    fn forget(&self, request_id: &str) -> bool {
        self.inner.forget(request_id)
    }

    #[getter]
    fn pending(&self) -> usize {
        self.inner.pending()
    }

    #[getter]
    fn reply_subscriptions(&self) -> usize {
        self.inner.reply_subscriptions()
    }

    #[getter]
    fn connected(&self) -> bool {
        self.inner.is_connected()
    }

    #[getter]
    fn client_id(&self) -> String {
        self.inner.options().connection.client_id.clone()
    }

    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.inner.stats();
        let dict = PyDict::new(py);
        for (name, value) in [
            ("calls_started", s.calls_started),
            ("calls_succeeded", s.calls_succeeded),
            ("calls_timed_out", s.calls_timed_out),
            ("calls_failed_remotely", s.calls_failed_remotely),
            ("calls_cancelled", s.calls_cancelled),
            ("calls_failed", s.calls_failed),
            ("replies_dropped_stray", s.replies_dropped_stray),
            ("replies_dropped_malformed", s.replies_dropped_malformed),
            ("reconnects", s.reconnects),
            ("pending", s.pending),
            ("reply_subscriptions", s.reply_subscriptions),
        ] {
            dict.set_item(name, value)?;
        }
        Ok(dict)
    }
}
