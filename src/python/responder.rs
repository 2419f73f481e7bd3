//! `CoreResponder`, the Python face of the Rust `Responder`: requests reach the Python
//! handlers through the loop's completion queue (never from a tokio thread), and each
//! request's `ReplyHandle` publishes its answer. The public class is
//! `mqtt_rpc.Responder` (python/mqtt_rpc/responder.py).

use super::bridge::{Completion, LoopBridge, QueuedRequest};
use super::client::seconds_bounds;
use super::errors::value_error;
use super::options::responder_options;
use super::runtime::runtime;
use crate::client::CallError;
use crate::link::{BrokerAddress, ConnectedTo, LinkErrorKind};
use crate::metrics::cumulative;
use crate::protocol::RemoteError;
use crate::responder::{
    Incoming, IncomingRequest, Outcome, PendingAnswer, Responder, ResponderCounters, Shutdown,
};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

#[pyclass(frozen, module = "mqtt_rpc._core")]
pub struct CoreResponder {
    responder: Mutex<Option<Responder>>,
    counters: Arc<ResponderCounters>,
    stop: Arc<watch::Sender<Shutdown>>,
    bridge: Mutex<Option<Py<LoopBridge>>>,
    client_id: String,
    connected_to: ConnectedTo,
}

/// The one answer a request owes: `send_result`, `send_error` or `abandon` ends it (later
/// calls do nothing); a handle let go unanswered ends it as `abandon` does.
#[pyclass(frozen, module = "mqtt_rpc._core")]
pub struct ReplyHandle {
    number: u64,
    pending: Mutex<Option<PendingAnswer>>,
}

#[pymethods]
impl ReplyHandle {
    /// The run's number, which a cancellation names.
    #[getter]
    fn number(&self) -> u64 {
        self.number
    }

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
        let pending = self.pending()?;
        let Some(pending) = pending.as_ref() else {
            return Ok(());
        };
        pending.progress(progress).map_err(|_| {
            PyRuntimeError::new_err("the progress could not be queued: the connection is closed")
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

    /// Seconds until the caller stops waiting (negative once it has), or None if the
    /// request carried no deadline.
    fn remaining(&self) -> PyResult<Option<f64>> {
        let pending = self.pending()?;
        let Some(deadline) = pending.as_ref().and_then(PendingAnswer::deadline) else {
            return Ok(None);
        };
        let now = Instant::now();
        Ok(Some(match deadline.checked_duration_since(now) {
            Some(left) => left.as_secs_f64(),
            None => -now.duration_since(deadline).as_secs_f64(),
        }))
    }

    /// Drops the request unanswered, its caller having stopped waiting before its handler
    /// started (counted as `requests_expired`). True for the first such drop.
    fn expire(&self) -> PyResult<bool> {
        Ok(match self.pending()?.take() {
            Some(pending) => pending.expire(),
            None => false,
        })
    }

    /// Ends the run without an answer (its handler was cancelled).
    fn abandon(&self) -> PyResult<()> {
        if let Some(pending) = self.pending()?.take() {
            pending.abandon();
        }
        Ok(())
    }
}

impl ReplyHandle {
    fn pending(&self) -> PyResult<std::sync::MutexGuard<'_, Option<PendingAnswer>>> {
        self.pending
            .lock()
            .map_err(|_| PyRuntimeError::new_err("poisoned"))
    }

    fn send(&self, outcome: Outcome) -> PyResult<()> {
        let Some(pending) = self.pending()?.take() else {
            return Ok(());
        };
        pending.answer(outcome).map_err(|_| {
            PyRuntimeError::new_err("the answer could not be queued: the connection is closed")
        })
    }
}

/// A request handed to the loop: the dispatcher and what it is called with.
struct PyRequest {
    dispatcher: Arc<Py<PyAny>>,
    request: Box<IncomingRequest>,
}

impl QueuedRequest for PyRequest {
    /// Answers "overloaded" without running a handler, and counts it.
    fn refuse(self: Box<Self>) {
        let counters = self.request.answer.replier().counters();
        counters.dropped_overloaded.fetch_add(1, Ordering::Relaxed);
        self.request.answer.refuse();
    }

    /// Calls `dispatcher(filter_index, topic, body, reply_handle, user_properties)` on the
    /// loop (`user_properties`: a list of pairs, or None when the request has none).
    fn deliver(self: Box<Self>, py: Python<'_>) -> PyResult<()> {
        let mut request = self.request;
        let user_properties = match std::mem::take(&mut request.user_properties) {
            properties if properties.is_empty() => None,
            properties => Some(properties),
        };
        let body = super::convert::object_to_py(py, &request.body)?;
        let handle = Py::new(
            py,
            ReplyHandle {
                number: request.answer.number(),
                pending: Mutex::new(Some(request.answer)),
            },
        )?;
        self.dispatcher.call1(
            py,
            (
                request.filter_index,
                request.topic,
                body,
                handle,
                user_properties,
            ),
        )?;
        Ok(())
    }
}

/// The first request of a kind dropped or refused, told to the loop: `dispatcher(counter)`.
struct PyDrop {
    dispatcher: Arc<Py<PyAny>>,
    counter: &'static str,
}

impl QueuedRequest for PyDrop {
    /// Never offered, only pushed (once per kind): nothing to refuse.
    fn refuse(self: Box<Self>) {}

    fn deliver(self: Box<Self>, py: Python<'_>) -> PyResult<()> {
        self.dispatcher.call1(py, (self.counter,))?;
        Ok(())
    }
}

/// A cancellation handed to the loop: `dispatcher(number)`.
struct PyCancel {
    dispatcher: Arc<Py<PyAny>>,
    number: u64,
    counters: Arc<ResponderCounters>,
}

impl QueuedRequest for PyCancel {
    /// The loop is too far behind to take it: the run goes on, and its answer is sent.
    fn refuse(self: Box<Self>) {
        self.counters
            .dropped_overloaded
            .fetch_add(1, Ordering::Relaxed);
    }

    fn deliver(self: Box<Self>, py: Python<'_>) -> PyResult<()> {
        self.dispatcher.call1(py, (self.number,))?;
        Ok(())
    }
}

#[pymethods]
impl CoreResponder {
    /// `options`: the options the caller chose, by name, as for `CoreClient`.
    #[new]
    fn new(options: &Bound<'_, PyDict>, filters: Vec<String>) -> PyResult<Self> {
        let options = responder_options(options, filters)?;
        let client_id = options.connection.client_id.clone();
        let responder = Responder::new(options).map_err(|e| value_error(e.to_string()))?;
        let (stop, _) = watch::channel(Shutdown::Serve);
        let connected_to = responder.connected_to();
        Ok(CoreResponder {
            counters: responder.counters(),
            responder: Mutex::new(Some(responder)),
            stop: Arc::new(stop),
            bridge: Mutex::new(None),
            client_id,
            connected_to,
        })
    }

    /// Serves on `event_loop`: `on_request(filter_index, topic, body, reply_handle,
    /// user_properties)` for each request to run (a notification's handle answers
    /// nowhere), `on_cancel(number)` when a caller gives up on the run with that
    /// `reply_handle.number`, `on_drop(counter)` for the first request of each kind dropped
    /// or refused, `on_ready()` each time the filters are subscribed. The returned future
    /// resolves when serving stops (`close`), or fails if the first connection does.
    fn serve(
        &self,
        event_loop: &Bound<'_, PyAny>,
        on_request: Py<PyAny>,
        on_cancel: Py<PyAny>,
        on_drop: Py<PyAny>,
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
        let bridge = LoopBridge::attach(event_loop, Default::default(), None)?;
        let queue = bridge.get().queue.clone();
        let future = bridge.get().new_future(py)?;
        *self
            .bridge
            .lock()
            .map_err(|_| PyRuntimeError::new_err("poisoned"))? = Some(bridge);
        let done = future.clone_ref(py);
        let (on_request, on_cancel) = (Arc::new(on_request), Arc::new(on_cancel));
        let on_drop = Arc::new(on_drop);
        let on_ready = Arc::new(on_ready);
        let counters = self.counters.clone();
        let stop = self.stop.subscribe();
        runtime.spawn(async move {
            let requests = queue.clone();
            let ready = queue.clone();
            let served = responder
                .serve(
                    move |incoming| {
                        let told = |counter| {
                            let dispatcher = on_drop.clone();
                            let drop = Box::new(PyDrop {
                                dispatcher,
                                counter,
                            });
                            requests.push(Completion::Request(drop));
                        };
                        let queued: Box<dyn QueuedRequest> = match incoming {
                            Incoming::Request(request) => Box::new(PyRequest {
                                dispatcher: on_request.clone(),
                                request,
                            }),
                            Incoming::Cancel(number) => Box::new(PyCancel {
                                dispatcher: on_cancel.clone(),
                                number,
                                counters: counters.clone(),
                            }),
                            Incoming::FirstDrop(counter) => return told(counter),
                            // Told as the counter's name, like a drop: Python logs it.
                            Incoming::TakenOver => return told("takeovers"),
                        };
                        // The loop is far behind: answer at once rather than queue without
                        // bound (a notification is dropped); counted either way, and the
                        // first one told (only this task counts these).
                        if let Err(Completion::Request(refused)) =
                            requests.offer(Completion::Request(queued))
                        {
                            refused.refuse();
                            if counters.dropped_overloaded.load(Ordering::Relaxed) == 1 {
                                told("dropped_overloaded");
                            }
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
                    LinkErrorKind::Closed
                    | LinkErrorKind::TakenOver
                    | LinkErrorKind::TimedOut
                    | LinkErrorKind::Other => CallError::NotConnected(why),
                }
            });
            queue.push(Completion::Done {
                future: done,
                result,
            });
        });
        Ok(future)
    }

    /// Leaves gracefully: unsubscribes every filter, lets the runs under way answer, and
    /// disconnects once every answer is written (and, QoS 1, acknowledged), or `grace`
    /// seconds from now at the latest; the `serve` future then resolves. A grace of 0 stops
    /// taking requests and disconnects behind the answers already queued.
    fn leave(&self, grace: f64) -> PyResult<()> {
        let grace = Duration::from_secs_f64(grace.clamp(0.0, 3600.0));
        let by = Instant::now() + grace;
        let _ = self.stop.send(Shutdown::Leave { by });
        Ok(())
    }

    /// Stops serving at once, without a DISCONNECT (the connection is dropped).
    fn stop(&self) {
        let _ = self.stop.send(Shutdown::Now);
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
        let dict = PyDict::new(py);
        for (name, value) in self.counters.counts() {
            dict.set_item(name, value)?;
        }
        Ok(dict)
    }

    #[getter]
    fn client_id(&self) -> String {
        self.client_id.clone()
    }

    /// The broker it is connected to, as `(host, port)`; None while down.
    #[getter]
    fn connected_to(&self) -> Option<BrokerAddress> {
        self.connected_to.get()
    }

    /// Each handler's counts, in filter order: `{filter, requests, errors,
    /// processing_seconds_total, last_error, at_or_below}`, where `at_or_below` counts the
    /// answers whose time from admission was at or below each of `bounds` (seconds).
    fn handlers<'py>(&self, py: Python<'py>, bounds: Vec<f64>) -> PyResult<Bound<'py, PyList>> {
        let bounds = seconds_bounds(&bounds)?;
        let list = PyList::empty(py);
        for handler in self.counters.handlers.iter() {
            let read = cumulative(&[&handler.processing], &bounds);
            let dict = PyDict::new(py);
            dict.set_item("filter", &handler.filter)?;
            dict.set_item("requests", handler.requests.load(Ordering::Relaxed))?;
            dict.set_item("errors", handler.errors.load(Ordering::Relaxed))?;
            dict.set_item("processing_seconds_total", read.sum.as_secs_f64())?;
            dict.set_item("last_error", handler.last_error())?;
            dict.set_item("at_or_below", read.at_or_below)?;
            list.append(dict)?;
        }
        Ok(list)
    }
}
