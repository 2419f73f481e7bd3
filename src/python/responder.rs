//! `CoreResponder`, the Python face of the Rust `Responder`: requests reach the Python
//! handlers through the loop's completion queue (never from a tokio thread), and each
//! request's `ReplyHandle` publishes its answer. The public class is
//! `mqtt_rpc.Responder` (python/mqtt_rpc/responder.py).

use super::bridge::{Completion, LoopBridge, QueuedRequest};
use super::errors::value_error;
use super::options::responder_options;
use super::runtime::runtime;
use crate::client::CallError;
use crate::link::LinkErrorKind;
use crate::protocol::RemoteError;
use crate::responder::{
    progress_body, Replier, ReplyRoute, Responder, ResponderCounters, OVERLOADED,
};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

#[pyclass(frozen, module = "mqtt_rpc._core")]
pub struct CoreResponder {
    responder: Mutex<Option<Responder>>,
    replier: Replier,
    counters: Arc<ResponderCounters>,
    stop: Arc<watch::Sender<bool>>,
    bridge: Mutex<Option<Py<LoopBridge>>>,
}

/// Where one request's answer goes; `send_result` or `send_error` publishes it.
#[pyclass(frozen, module = "mqtt_rpc._core")]
pub struct ReplyHandle {
    replier: Replier,
    route: ReplyRoute,
}

#[pymethods]
impl ReplyHandle {
    /// Answers with `{"request_id", "result": <result_json>}`.
    fn send_result(&self, result_json: &str) -> PyResult<()> {
        let result: serde_json::Value = serde_json::from_str(result_json)
            .map_err(|e| value_error(format!("the result is not JSON: {e}")))?;
        self.send(Ok(result))
    }

    /// Sends an interim `{"request_id", "progress": <progress_json>}` before the answer.
    fn send_progress(&self, progress_json: &str) -> PyResult<()> {
        let progress: serde_json::Value = serde_json::from_str(progress_json)
            .map_err(|e| value_error(format!("the progress is not JSON: {e}")))?;
        self.replier
            .send(&self.route, progress_body(&self.route, progress))
            .map_err(|_| {
                PyRuntimeError::new_err(
                    "the progress could not be queued: the connection is closed",
                )
            })
    }

    /// Answers with `{"request_id", "error": {"code", "message", "data"}}`.
    #[pyo3(signature = (code, message, data_json=None))]
    fn send_error(&self, code: i64, message: String, data_json: Option<&str>) -> PyResult<()> {
        let data = match data_json {
            Some(text) => serde_json::from_str(text)
                .map_err(|e| value_error(format!("the error data is not JSON: {e}")))?,
            None => serde_json::Value::Null,
        };
        self.send(Err(RemoteError {
            code,
            message,
            data,
        }))
    }
}

impl ReplyHandle {
    fn send(&self, outcome: Result<serde_json::Value, RemoteError>) -> PyResult<()> {
        self.replier.answer(&self.route, outcome).map_err(|_| {
            PyRuntimeError::new_err("the answer could not be queued: the connection is closed")
        })
    }
}

/// A Python request handed to the loop: the dispatcher and what it is called with.
struct PyRequest {
    pub dispatcher: Arc<Py<PyAny>>,
    pub request: crate::responder::IncomingRequest,
    pub replier: Replier,
}

impl QueuedRequest for PyRequest {
    /// Answers "overloaded" (the code the Python responder uses past `max_queued`) without
    /// running a handler, and counts it.
    fn refuse(self: Box<Self>) {
        let counters = self.replier.counters();
        counters.dropped_overloaded.fetch_add(1, Ordering::Relaxed);
        if let Some(route) = &self.request.route {
            let error = RemoteError {
                code: OVERLOADED,
                message: "the responder is overloaded: try again later".into(),
                data: serde_json::Value::Null,
            };
            let _ = self.replier.answer(route, Err(error));
        }
    }

    /// Calls `dispatcher(filter_index, topic, body, reply_handle_or_None)` on the loop.
    fn deliver(self: Box<Self>, py: Python<'_>) -> PyResult<()> {
        let body = super::convert::object_to_py(py, &self.request.body)?;
        let handle = match self.request.route {
            Some(route) => Some(Py::new(
                py,
                ReplyHandle {
                    replier: self.replier,
                    route,
                },
            )?),
            None => None,
        };
        self.dispatcher.call1(
            py,
            (self.request.filter_index, self.request.topic, body, handle),
        )?;
        Ok(())
    }
}

#[pymethods]
impl CoreResponder {
    /// `options`: the options the caller chose, by name, as for `CoreClient`.
    #[new]
    fn new(options: &Bound<'_, PyDict>, filters: Vec<String>) -> PyResult<Self> {
        let options = responder_options(options, filters)?;
        let responder = Responder::new(options).map_err(|e| value_error(e.to_string()))?;
        let (stop, _) = watch::channel(false);
        Ok(CoreResponder {
            replier: responder.replier(),
            counters: responder.counters(),
            responder: Mutex::new(Some(responder)),
            stop: Arc::new(stop),
            bridge: Mutex::new(None),
        })
    }

    /// Serves on `event_loop`: `on_request(filter_index, topic, body, reply_handle)` for each
    /// request (`reply_handle` is None for a notification), `on_ready()` each time the
    /// filters are subscribed. The returned future resolves when serving stops (`close`),
    /// or fails if the first connection does.
    fn serve(
        &self,
        event_loop: &Bound<'_, PyAny>,
        on_request: Py<PyAny>,
        on_ready: Py<PyAny>,
    ) -> PyResult<Py<PyAny>> {
        let py = event_loop.py();
        let Some(responder) = self
            .responder
            .lock()
            .map_err(|_| PyRuntimeError::new_err("poisoned"))?
            .take()
        else {
            return Err(value_error("serve() was already called on this responder"));
        };
        let runtime = runtime().map_err(PyRuntimeError::new_err)?;
        let bridge = LoopBridge::attach(event_loop, Default::default())?;
        let queue = bridge.get().queue.clone();
        let future = bridge.get().new_future(py)?;
        *self
            .bridge
            .lock()
            .map_err(|_| PyRuntimeError::new_err("poisoned"))? = Some(bridge);
        let done = future.clone_ref(py);
        let (on_request, on_ready) = (Arc::new(on_request), Arc::new(on_ready));
        let replier = self.replier.clone();
        let stop = self.stop.subscribe();
        runtime.spawn(async move {
            let requests = queue.clone();
            let ready = queue.clone();
            let served = responder
                .serve(
                    move |request| {
                        let offered = requests.offer(Completion::Request(Box::new(PyRequest {
                            dispatcher: on_request.clone(),
                            request,
                            replier: replier.clone(),
                        })));
                        // The loop is far behind: answer at once rather than queue without
                        // bound (a notification is dropped); counted either way.
                        if let Err(Completion::Request(refused)) = offered {
                            refused.refuse();
                        }
                    },
                    move || ready.push(Completion::Ready(on_ready.clone())),
                    stop,
                )
                .await;
            let result = served.map_err(|e| {
                let why = format!("the responder could not serve: {e}");
                match e.kind {
                    LinkErrorKind::Tls => CallError::Tls(why),
                    LinkErrorKind::Refused => CallError::Refused(why),
                    LinkErrorKind::SubscriptionRefused => {
                        CallError::SubscribeRefused { filter: e.message }
                    }
                    LinkErrorKind::Closed | LinkErrorKind::TimedOut | LinkErrorKind::Other => {
                        CallError::NotConnected(why)
                    }
                }
            });
            queue.push(Completion::Done {
                future: done,
                result,
            });
        });
        Ok(future)
    }

    /// Stops serving: queues DISCONNECT behind the answers already queued, so they are
    /// written first; the `serve` future resolves once it is written, or after
    /// `flush_timeout` seconds (a connection that is down writes nothing). Call `detach`
    /// after.
    fn close(&self, flush_timeout: f64) -> PyResult<()> {
        if !Responder::disconnect(&self.replier) {
            let _ = self.stop.send(true);
            return Ok(());
        }
        let runtime = runtime().map_err(PyRuntimeError::new_err)?;
        let stop = self.stop.clone();
        let wait = Duration::from_secs_f64(flush_timeout.clamp(0.0, 3600.0));
        runtime.spawn(async move {
            tokio::time::sleep(wait).await;
            let _ = stop.send(true);
        });
        Ok(())
    }

    /// Stops watching the loop (after `serve` resolved).
    fn detach(&self, py: Python<'_>) -> PyResult<()> {
        let bridge = self
            .bridge
            .lock()
            .map_err(|_| PyRuntimeError::new_err("poisoned"))?
            .take();
        if let Some(bridge) = bridge {
            bridge.get().detach(py, true)?;
        }
        Ok(())
    }

    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let c = &self.counters;
        let dict = PyDict::new(py);
        for (name, counter) in [
            ("requests", &c.requests),
            ("notifications", &c.notifications),
            ("dropped_malformed", &c.dropped_malformed),
            ("dropped_oversized", &c.dropped_oversized),
            ("dropped_overloaded", &c.dropped_overloaded),
            ("answers_queued", &c.answers_queued),
            ("answers_sent", &c.answers_sent),
            ("answers_unsent", &c.answers_unsent),
        ] {
            dict.set_item(name, counter.load(Ordering::Relaxed))?;
        }
        Ok(dict)
    }
}
