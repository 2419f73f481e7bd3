//! `CoreClient`, the Python face of `RpcPool` (one connection, or a pool of them): converts arguments, creates each call's
//! asyncio future on the caller's loop, and maps errors. The public, documented class is
//! `mqtt_rpc.MqttRpcClient` (python/mqtt_rpc/client.py), which wraps this one.

use super::arguments::{payload_bytes, seconds, timeout_seconds, unix_ms};
use super::bridge::{
    outcome_to_py, Batch, Blocked, Completion, CompletionQueue, LoopBridge, PyWaiter,
};
use super::convert::{object_to_py, unix_seconds};
use super::errors::{call_error, value_error};
use super::options::client_options;
use super::runtime::runtime;
use crate::client::{CallError, Stats};
use crate::link::BrokerAddress;
use crate::locking::lock;
use crate::pool::{PoolPrepared, RpcPool};
use crate::protocol::Headers;
use pyo3::exceptions::PyRuntimeError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString, PyTuple};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[pyclass(frozen, module = "mqtt_rpc._core")]
pub struct CoreClient {
    inner: Arc<RpcPool<PyWaiter>>,
    /// The id given (or made up); a pool's connections add `-{i}` to it.
    client_id: String,
    bridges: Mutex<Vec<Py<LoopBridge>>>,
    /// Interim messages (progress, scatter-gather answers) dropped because too many waited
    /// for a busy loop or thread (`stats()["interim_dropped"]`).
    interim_dropped: Arc<AtomicU64>,
    /// Where connection events go: the queue of the loop that connected, or of a newer
    /// loop once that one has closed.
    event_target: Arc<Mutex<Option<Arc<CompletionQueue>>>>,
    /// Called on the connecting loop as `handler(connected, reconnect, session_present, reason)`.
    event_handler: Option<Arc<Py<PyAny>>>,
}

/// A call with one answer (a retry's given request id, if any), or a scatter-gather call.
enum CallKind<'a> {
    Call { request_id: Option<&'a str> },
    Gather { max_replies: Option<usize> },
}

/// A call with one answer and a fresh request id.
const NEW_CALL: CallKind<'static> = CallKind::Call { request_id: None };

/// What Python says of the device a call addresses: `device` overrides the core's choice
/// (the topic's first level; `""`: no device, no presence check), and `wait_for_device`
/// lets a call to a device known offline wait for it.
#[derive(Default)]
struct Aim<'a> {
    device: Option<&'a str>,
    wait_for_device: Option<f64>,
}

impl Aim<'_> {
    fn apply(&self, prepared: &mut PoolPrepared) -> PyResult<()> {
        let request = prepared.request_mut();
        if let Some(device) = self.device {
            request.set_device((!device.is_empty()).then(|| device.to_owned()));
        }
        // Waiting 0 s is not waiting: the call fails at once, as without the option.
        if let Some(wait) = self.wait_for_device.filter(|wait| *wait != 0.0) {
            request.set_wait_for_device(Some(seconds("wait_for_device", wait)?));
        }
        Ok(())
    }
}

/// Says which request of a batch was refused, keeping the error's type.
fn in_batch(py: Python<'_>, index: usize, error: PyErr) -> PyErr {
    let note = format!("request {index} of the batch: {}", error.value(py));
    match error.get_type(py).call1((note,)) {
        Ok(value) => PyErr::from_value(value),
        Err(_) => error,
    }
}

impl CoreClient {
    /// The bridge of `event_loop`, created and registered on first use. A new loop also
    /// drops the bridges of loops that have closed since (a client made at import time
    /// and used from one `asyncio.run()` after another), and takes over the connection
    /// events if their loop was one of them. Nothing here calls into Python while holding
    /// the bridges' lock: Python code may switch threads and come back for it.
    fn bridge(&self, event_loop: &Bound<'_, PyAny>) -> PyResult<Py<LoopBridge>> {
        let py = event_loop.py();
        let known: Vec<Py<LoopBridge>> = {
            let bridges = lock(&self.bridges);
            // `is` compares pointers: no Python code runs under the lock.
            if let Some(bridge) = bridges
                .iter()
                .find(|b| b.get().event_loop.bind(py).is(event_loop))
            {
                return Ok(bridge.clone_ref(py));
            }
            bridges.iter().map(|bridge| bridge.clone_ref(py)).collect()
        };
        let mut closed = Vec::new();
        for bridge in &known {
            let is_closed = bridge
                .get()
                .event_loop
                .bind(py)
                .call_method0(intern!(py, "is_closed"))?
                .is_truthy()?;
            if is_closed {
                closed.push(bridge.get().queue.clone());
            }
        }
        let first_drop = self
            .event_handler
            .as_ref()
            .map(|handler| (handler.clone(), Arc::from(self.client_id.as_str())));
        let bridge = LoopBridge::attach(event_loop, self.interim_dropped.clone(), first_drop)?;
        lock(&self.bridges).retain(|b| !closed.iter().any(|q| Arc::ptr_eq(q, &b.get().queue)));
        lock(&self.bridges).push(bridge.clone_ref(py));
        let mut target = lock(&self.event_target);
        if let Some(queue) = target.as_ref() {
            if closed.iter().any(|q| Arc::ptr_eq(q, queue)) {
                *target = Some(bridge.get().queue.clone());
            }
        }
        Ok(bridge)
    }

    /// A batch's calls checked and prepared, none sent: the first bad one raises, naming its
    /// index. `headers` and `devices`, if given, have each request's.
    fn prepare_batch(
        &self,
        py: Python<'_>,
        requests: &[(String, Bound<'_, PyAny>)],
        timeout: &Bound<'_, PyAny>,
        headers: Option<Vec<Headers>>,
        devices: Option<Vec<String>>,
    ) -> PyResult<Vec<PoolPrepared>> {
        let mut headers = headers.unwrap_or_default().into_iter();
        let mut devices = devices.unwrap_or_default().into_iter();
        let mut prepared = Vec::with_capacity(requests.len());
        for (index, (topic, payload)) in requests.iter().enumerate() {
            let body = payload_bytes(payload).map_err(|e| in_batch(py, index, e))?;
            let mut request = self
                .inner
                .prepare(topic, &body, None, headers.next().unwrap_or_default())
                .map_err(|error| in_batch(py, index, call_error(py, &error, Some(timeout))))?;
            let device = devices.next();
            let aim = Aim {
                device: device.as_deref(),
                ..Aim::default()
            };
            aim.apply(&mut request)?;
            prepared.push(request);
        }
        Ok(prepared)
    }

    /// Starts one call awaited through an asyncio future: `(future, request_id)`.
    fn start_future<'py>(
        &self,
        event_loop: &Bound<'py, PyAny>,
        (prepared, duration): (PoolPrepared, Duration),
        timeout: &Bound<'py, PyAny>,
        on_progress: Option<Arc<Py<PyAny>>>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let py = event_loop.py();
        let bridge = self.bridge(event_loop)?;
        let bridge = bridge.get();
        let future = bridge.new_future(py)?;
        let waiter = PyWaiter::Future {
            future: future.clone_ref(py),
            timeout: timeout.clone().unbind(),
            queue: bridge.queue.clone(),
            on_progress,
        };
        let request_id = self.inner.start(prepared, duration, waiter);
        PyTuple::new(
            py,
            [
                future.into_bound(py),
                PyString::new(py, &request_id).into_any(),
            ],
        )
    }

    /// Starts a prepared call whose waiter is a channel, and waits on it with the GIL
    /// released, handing interim messages to `on_message` (with the GIL) as they come.
    /// Wakes up now and then to let Python handle signals (KeyboardInterrupt), which end
    /// the call.
    fn wait_blocking(
        &self,
        py: Python<'_>,
        (prepared, duration): (PoolPrepared, Duration),
        on_message: impl FnMut(serde_json::Map<String, serde_json::Value>) -> PyResult<()>,
    ) -> PyResult<crate::client::Outcome> {
        let dropped_before = self.interim_dropped.load(Ordering::Relaxed);
        let (request_id, receiver, waiting) = self.start_blocking(prepared, duration);
        let outcome = self.wait_on(py, receiver, &waiting, &request_id, on_message);
        self.tell_first_blocking_drop(py, dropped_before);
        outcome
    }

    /// Starts a prepared call whose waiter is a channel: its request id, the channel's
    /// receiving end, and the count of interim messages waiting in it.
    fn start_blocking(
        &self,
        prepared: PoolPrepared,
        duration: Duration,
    ) -> (String, Receiver<Blocked>, Arc<AtomicUsize>) {
        let (sender, receiver) = std::sync::mpsc::channel();
        let waiting = Arc::new(AtomicUsize::new(0));
        let waiter = PyWaiter::Blocking {
            sender,
            waiting: waiting.clone(),
            dropped: self.interim_dropped.clone(),
        };
        let request_id = self.inner.start(prepared, duration, waiter);
        (request_id, receiver, waiting)
    }

    /// `wait_blocking`'s wait: the outcome, with the interim messages handed on meanwhile.
    fn wait_on(
        &self,
        py: Python<'_>,
        mut receiver: Receiver<Blocked>,
        waiting: &AtomicUsize,
        request_id: &str,
        mut on_message: impl FnMut(serde_json::Map<String, serde_json::Value>) -> PyResult<()>,
    ) -> PyResult<crate::client::Outcome> {
        loop {
            // The receiver goes to the GIL-free closure and comes back (Send, not Sync).
            let (back, received) = py.detach(move || {
                let received = receiver.recv_timeout(Duration::from_millis(100));
                (receiver, received)
            });
            receiver = back;
            match received {
                Ok(Blocked::Done(outcome)) => return Ok(outcome),
                Ok(Blocked::Message(message)) => {
                    waiting.fetch_sub(1, Ordering::AcqRel);
                    if let Err(error) = on_message(message) {
                        self.inner.forget(request_id);
                        return Err(error);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    if let Err(interrupted) = py.check_signals() {
                        self.inner.forget(request_id);
                        return Err(interrupted);
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Ok(Err(CallError::ConnectionLost(
                        "the client was dropped".into(),
                    )))
                }
            }
        }
    }

    /// A blocked thread has no loop to be told on: the first interim message dropped while
    /// it waited is told here, on its own thread, as the loop would have been.
    fn tell_first_blocking_drop(&self, py: Python<'_>, dropped_before: u64) {
        if dropped_before > 0 || self.interim_dropped.load(Ordering::Relaxed) == 0 {
            return;
        }
        if let Some(handler) = &self.event_handler {
            let args = ("dropped", false, false, "interim_dropped", &*self.client_id);
            if let Err(error) = handler.call1(py, args) {
                error.write_unraisable(py, None);
            }
        }
    }

    /// Checks a request and builds its body (with `headers`: trace context), raising the
    /// typed error of a refused one.
    fn prepare(
        &self,
        py: Python<'_>,
        topic: &str,
        payload: &Bound<'_, PyAny>,
        timeout: &Bound<'_, PyAny>,
        kind: CallKind<'_>,
        headers: Option<Headers>,
    ) -> PyResult<(PoolPrepared, Duration)> {
        // Each argument is read once: the duration goes on with the prepared request.
        let duration = timeout_seconds(timeout)?;
        let body = payload_bytes(payload)?;
        let headers = headers.unwrap_or_default();
        let prepared = match kind {
            CallKind::Call { request_id } => self.inner.prepare(topic, &body, request_id, headers),
            CallKind::Gather { max_replies } => {
                self.inner
                    .prepare_gather(topic, &body, max_replies, headers)
            }
        };
        let prepared = prepared.map_err(|error| call_error(py, &error, Some(timeout)))?;
        Ok((prepared, duration))
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
    /// `options`: the options the caller chose, by name (the core's defaults fill the
    /// rest; an unknown name or a bad value raises `ValueError` naming it).
    #[new]
    #[pyo3(signature = (options, event_handler=None))]
    fn new(options: &Bound<'_, PyDict>, event_handler: Option<Py<PyAny>>) -> PyResult<Self> {
        let (options, connections) = client_options(options)?;
        let client_id = options.connection.client_id.clone();
        let inner = RpcPool::new(options, connections).map_err(|e| value_error(e.to_string()))?;
        Ok(CoreClient {
            inner: Arc::new(inner),
            client_id,
            bridges: Mutex::new(Vec::new()),
            event_target: Arc::new(Mutex::new(None)),
            interim_dropped: Arc::new(AtomicU64::new(0)),
            event_handler: event_handler.map(Arc::new),
        })
    }

    /// Connects; returns a future of `event_loop` that resolves when the client is ready.
    fn connect(&self, event_loop: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        if let Some(handler) = &self.event_handler {
            let queue = self.bridge(event_loop)?.get().queue.clone();
            *lock(&self.event_target) = Some(queue);
            let target = self.event_target.clone();
            self.inner.set_event_sinks(|client_id| {
                let (target, handler) = (target.clone(), handler.clone());
                Box::new(move |event| {
                    if let Some(queue) = lock(&target).as_ref() {
                        queue.push(Completion::Event {
                            handler: handler.clone(),
                            client_id: client_id.clone(),
                            event,
                        })
                    }
                })
            });
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
        *lock(&self.event_target) = None;
        for bridge in bridges {
            let bridge = bridge.get();
            let on_loop_thread = bridge.event_loop.bind(py).is(running_loop);
            bridge.detach(py, on_loop_thread)?;
        }
        Ok(())
    }

    /// Starts a call; returns `(future, request_id)`. Bad input raises here, before
    /// anything is published. A retry passes its first attempt's `request_id`. `headers`
    /// (trace context) go as MQTT 5 user properties, or on 3.1.1 as members of the body.
    #[pyo3(signature = (event_loop, topic, payload, timeout, request_id=None, headers=None, device=None, wait_for_device=None))]
    #[allow(clippy::too_many_arguments)]
    fn start_call<'py>(
        &self,
        event_loop: &Bound<'py, PyAny>,
        topic: &str,
        payload: &Bound<'py, PyAny>,
        timeout: &Bound<'py, PyAny>,
        request_id: Option<&str>,
        headers: Option<Headers>,
        device: Option<&str>,
        wait_for_device: Option<f64>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let py = event_loop.py();
        let mut prepared = self.prepare(
            py,
            topic,
            payload,
            timeout,
            CallKind::Call { request_id },
            headers,
        )?;
        let aim = Aim {
            device,
            wait_for_device,
        };
        aim.apply(&mut prepared.0)?;
        self.start_future(event_loop, prepared, timeout, None)
    }

    /// Starts a call whose progress messages are handed to `on_progress` (on the loop, in
    /// order, before the answer); returns `(future, request_id)` as `start_call`.
    #[pyo3(signature = (event_loop, topic, payload, timeout, on_progress, headers=None, device=None))]
    #[allow(clippy::too_many_arguments)]
    fn start_stream<'py>(
        &self,
        event_loop: &Bound<'py, PyAny>,
        topic: &str,
        payload: &Bound<'py, PyAny>,
        timeout: &Bound<'py, PyAny>,
        on_progress: Py<PyAny>,
        headers: Option<Headers>,
        device: Option<&str>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let py = event_loop.py();
        let mut prepared = self.prepare(py, topic, payload, timeout, NEW_CALL, headers)?;
        let aim = Aim {
            device,
            ..Aim::default()
        };
        aim.apply(&mut prepared.0)?;
        self.start_future(event_loop, prepared, timeout, Some(Arc::new(on_progress)))
    }

    /// Starts a scatter-gather call: every answer is handed to `on_reply` (on the loop, in
    /// order, each device's once); the future resolves when the call ends, at its deadline
    /// or after `max_replies`. Returns `(future, request_id)` as `start_call`.
    #[pyo3(signature = (event_loop, topic, payload, timeout, max_replies, on_reply, headers=None))]
    #[allow(clippy::too_many_arguments)]
    fn start_gather<'py>(
        &self,
        event_loop: &Bound<'py, PyAny>,
        topic: &str,
        payload: &Bound<'py, PyAny>,
        timeout: &Bound<'py, PyAny>,
        max_replies: Option<usize>,
        on_reply: Py<PyAny>,
        headers: Option<Headers>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let py = event_loop.py();
        let gather = CallKind::Gather { max_replies };
        let prepared = self.prepare(py, topic, payload, timeout, gather, headers)?;
        self.start_future(event_loop, prepared, timeout, Some(Arc::new(on_reply)))
    }

    /// Starts a batch of `(topic, payload)` calls in one crossing; returns `(future,
    /// request_ids)`, the future resolving to the list of results in input order. Every
    /// request is checked before any is sent. `headers`, if given, has each request's.
    #[pyo3(signature = (event_loop, requests, timeout, return_exceptions, headers=None, devices=None))]
    #[allow(clippy::too_many_arguments)]
    fn start_many<'py>(
        &self,
        event_loop: &Bound<'py, PyAny>,
        requests: Vec<(String, Bound<'py, PyAny>)>,
        timeout: &Bound<'py, PyAny>,
        return_exceptions: bool,
        headers: Option<Vec<Headers>>,
        devices: Option<Vec<String>>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let py = event_loop.py();
        let duration = timeout_seconds(timeout)?;
        let prepared = self.prepare_batch(py, &requests, timeout, headers, devices)?;
        let bridge = self.bridge(event_loop)?;
        let bridge = bridge.get();
        let future = bridge.new_future(py)?;
        let batch = Batch::new(
            future.clone_ref(py),
            timeout.clone().unbind(),
            bridge.queue.clone(),
            prepared.len(),
            return_exceptions,
        );
        let ids = PyList::empty(py);
        for (index, request) in prepared.into_iter().enumerate() {
            let waiter = PyWaiter::Batch {
                batch: batch.clone(),
                index,
            };
            ids.append(self.inner.start(request, duration, waiter))?;
        }
        if ids.is_empty() {
            future.call_method1(py, "set_result", (PyList::empty(py),))?;
        }
        PyTuple::new(py, [future.into_bound(py), ids.into_any()])
    }

    /// A call that blocks its thread (with the GIL released) until the answer: for code
    /// without an event loop. Ctrl-C and other signals interrupt it. `request_id`: a
    /// retry's, to send the same request again; `on_progress`: called (on this thread)
    /// with each progress message before the answer.
    #[pyo3(signature = (topic, payload, timeout, headers=None, device=None, wait_for_device=None, request_id=None, on_progress=None))]
    #[allow(clippy::too_many_arguments)]
    fn call_blocking(
        &self,
        py: Python<'_>,
        topic: &str,
        payload: &Bound<'_, PyAny>,
        timeout: &Bound<'_, PyAny>,
        headers: Option<Headers>,
        device: Option<&str>,
        wait_for_device: Option<f64>,
        request_id: Option<&str>,
        on_progress: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let kind = CallKind::Call { request_id };
        let mut prepared = self.prepare(py, topic, payload, timeout, kind, headers)?;
        let aim = Aim {
            device,
            wait_for_device,
        };
        aim.apply(&mut prepared.0)?;
        let outcome = self.wait_blocking(py, prepared, |message| match &on_progress {
            Some(callback) => callback.call1((object_to_py(py, &message)?,)).map(drop),
            None => Ok(()),
        })?;
        outcome_to_py(py, &outcome, timeout)
    }

    /// `call_many` for code without an event loop: every request checked, then all
    /// published at once, then the outcomes waited for in input order (the slowest bounds
    /// the wait). A failure is raised (the calls still waiting forgotten) unless
    /// `return_exceptions`, which puts each failure in its place.
    #[pyo3(signature = (requests, timeout, return_exceptions, headers=None, devices=None))]
    fn many_blocking<'py>(
        &self,
        py: Python<'py>,
        requests: Vec<(String, Bound<'py, PyAny>)>,
        timeout: &Bound<'py, PyAny>,
        return_exceptions: bool,
        headers: Option<Vec<Headers>>,
        devices: Option<Vec<String>>,
    ) -> PyResult<Bound<'py, PyList>> {
        let duration = timeout_seconds(timeout)?;
        let prepared = self.prepare_batch(py, &requests, timeout, headers, devices)?;
        let started: Vec<_> = (prepared.into_iter())
            .map(|request| self.start_blocking(request, duration))
            .collect();
        let results = PyList::empty(py);
        let mut started = started.into_iter();
        while let Some((request_id, receiver, waiting)) = started.next() {
            let outcome = self.wait_on(py, receiver, &waiting, &request_id, |_| Ok(()));
            let result = outcome.and_then(|outcome| outcome_to_py(py, &outcome, timeout));
            match result {
                Ok(reply) => results.append(reply)?,
                Err(error) if return_exceptions => results.append(error.into_value(py))?,
                Err(error) => {
                    for (rest, _, _) in started {
                        self.inner.forget(&rest);
                    }
                    return Err(error);
                }
            }
        }
        Ok(results)
    }

    /// `gather_all` for code without an event loop: blocks until the scatter-gather call
    /// ends and returns the answers in the order they arrived.
    /// With `on_reply`, each answer goes to it (on this thread) as it comes instead.
    #[pyo3(signature = (topic, payload, timeout, max_replies=None, headers=None, on_reply=None))]
    #[allow(clippy::too_many_arguments)]
    fn gather_blocking<'py>(
        &self,
        py: Python<'py>,
        topic: &str,
        payload: &Bound<'py, PyAny>,
        timeout: &Bound<'py, PyAny>,
        max_replies: Option<usize>,
        headers: Option<Headers>,
        on_reply: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyList>> {
        let gather = CallKind::Gather { max_replies };
        let prepared = self.prepare(py, topic, payload, timeout, gather, headers)?;
        let replies = PyList::empty(py);
        let outcome = self.wait_blocking(py, prepared, |message| {
            let reply = object_to_py(py, &message)?;
            match &on_reply {
                Some(callback) => callback.call1((reply,)).map(drop),
                None => replies.append(reply),
            }
        })?;
        match outcome {
            Ok(_) | Err(CallError::NoResponders { .. }) => Ok(replies),
            Err(error) => Err(call_error(py, &error, Some(timeout))),
        }
    }

    /// `connect()` for code without an event loop: blocks (GIL released) until connected.
    fn connect_blocking(&self, py: Python<'_>) -> PyResult<()> {
        let runtime = runtime().map_err(PyRuntimeError::new_err)?;
        let inner = self.inner.clone();
        py.detach(|| runtime.block_on(inner.connect()))
            .map_err(|error| call_error(py, &error, None))
    }

    /// `close()` for code without an event loop.
    fn close_blocking(&self, py: Python<'_>, grace: f64) -> PyResult<()> {
        let grace = if grace == 0.0 {
            Duration::ZERO
        } else {
            seconds("grace", grace)?
        };
        let runtime = runtime().map_err(PyRuntimeError::new_err)?;
        let inner = self.inner.clone();
        py.detach(|| runtime.block_on(inner.close(grace)));
        Ok(())
    }

    /// Publishes a one-way notification (no request_id, no answer awaited).
    #[pyo3(signature = (topic, payload, headers=None))]
    fn notify(
        &self,
        py: Python<'_>,
        topic: &str,
        payload: &Bound<'_, PyAny>,
        headers: Option<Headers>,
    ) -> PyResult<()> {
        let body = payload_bytes(payload)?;
        self.inner
            .notify(topic, &body, headers.unwrap_or_default())
            .map_err(|error| call_error(py, &error, None))
    }

    /// What the presence source last said of `device`: `(online, since, reason)` with
    /// `since` in Unix seconds, or None when nothing is known.
    fn presence(&self, device: &str) -> Option<(bool, Option<f64>, Option<String>)> {
        let known = self.inner.presence(device)?;
        Some((known.online, known.since_ms.map(unix_seconds), known.reason))
    }

    /// A device's presence from the application's own source (`since` in Unix seconds).
    #[pyo3(signature = (device, online, since=None, reason=None))]
    fn report_presence(
        &self,
        device: &str,
        online: bool,
        since: Option<f64>,
        reason: Option<String>,
    ) -> PyResult<()> {
        if device.is_empty() {
            return Err(value_error("a device id cannot be empty"));
        }
        let since_ms = since.map(|s| unix_ms("since", s)).transpose()?;
        self.inner.report_presence(device, online, since_ms, reason);
        Ok(())
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
        self.client_id.clone()
    }

    /// Which broker each connection is up with, as `(host, port)` (None while it is down).
    #[getter]
    fn connected_to(&self) -> Vec<Option<BrokerAddress>> {
        self.inner.connected_to()
    }

    /// The client id of each connection (one: `client_id` itself).
    #[getter]
    fn client_ids(&self) -> Vec<String> {
        self.inner.client_ids()
    }

    /// The latencies of answered calls as a Prometheus histogram reads them:
    /// `(counts at or below each bound, count, sum)`, bounds and sum in seconds.
    fn latency_histogram(&self, bounds: Vec<f64>) -> PyResult<(Vec<u64>, u64, f64)> {
        let read = self.inner.latency(&seconds_bounds(&bounds)?);
        Ok((read.at_or_below, read.count, read.sum.as_secs_f64()))
    }

    /// The pool's totals, with each connection's own under `connections`.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let stats = self.inner.stats();
        let dict = stats_dict(py, &stats.total)?;
        let connections = PyList::empty(py);
        for (client_id, s) in &stats.connections {
            let own = stats_dict(py, s)?;
            own.set_item("client_id", client_id)?;
            connections.append(own)?;
        }
        dict.set_item("connections", connections)?;
        dict.set_item(
            "interim_dropped",
            self.interim_dropped.load(Ordering::Relaxed),
        )?;
        Ok(dict)
    }
}

/// Histogram bounds in seconds, ascending and finite, as durations.
pub(crate) fn seconds_bounds(bounds: &[f64]) -> PyResult<Vec<Duration>> {
    let ascending = bounds.windows(2).all(|pair| pair[0] < pair[1]);
    match bounds
        .iter()
        .map(|b| Duration::try_from_secs_f64(*b))
        .collect()
    {
        Ok(durations) if ascending => Ok(durations),
        _ => Err(value_error(
            "histogram bounds must be ascending, non-negative, finite seconds",
        )),
    }
}

fn stats_dict<'py>(py: Python<'py>, s: &Stats) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    for (name, value) in s.counts() {
        dict.set_item(name, value)?;
    }
    dict.set_item("throttled_wait_ms", s.throttled_wait.as_secs_f64() * 1000.0)?;
    dict.set_item("publish_rate_limit", s.publish_rate_limit)?;
    for (name, value) in [
        ("latency_p50_ms", s.latency_p50),
        ("latency_p90_ms", s.latency_p90),
        ("latency_p99_ms", s.latency_p99),
    ] {
        dict.set_item(name, value.map(|d| d.as_secs_f64() * 1000.0))?;
    }
    Ok(dict)
}
