//! How results reach asyncio without a tokio thread ever taking the GIL.
//!
//! Each event loop that uses a client gets one `LoopBridge`: a queue of completions and a
//! socket pair whose read end the loop watches with `add_reader`. A tokio thread pushes a
//! completion and writes one byte only when the queue goes from empty to non-empty; the
//! loop's callback clears the socket first, then takes the queue and completes every future
//! in it, converting JSON to Python objects there. One wake-up per batch, not per call.
//! (Measured for DESIGN.md: 4 µs per call, against 64 µs for a per-call
//! `future_into_py`, which also aborted the interpreter at exit with calls in flight.)

use super::convert::object_to_py;
use super::errors::call_error;
use crate::client::{CallError, ConnectionEvent, Outcome, Waiter};
use crate::link::Takeover;
use crate::locking::lock;
use pyo3::intern;
use pyo3::prelude::*;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Completions handled per loop wake-up; the rest wait for the next turn of the loop, so a
/// burst of replies cannot starve the application's other callbacks.
const MAX_BATCH: usize = 1024;

/// What the network sent (progress messages, scatter-gather answers, a responder's
/// requests) waiting for one loop, at most. The network fills this queue at its pace and
/// the loop empties it at its own: while the loop is blocked, what comes beyond this is
/// dropped and counted (`interim_dropped`; a request is answered "overloaded"), never held
/// without bound. Outcomes are never dropped: each call's future is resolved.
pub const MAX_QUEUED_INTERIM: usize = 16_384;

pub enum Completion {
    /// A call ended: resolve its future with the reply or the matching exception.
    Call {
        future: Py<PyAny>,
        timeout: Py<PyAny>,
        outcome: Outcome,
    },
    /// `connect()` or `close()` ended.
    Done {
        future: Py<PyAny>,
        result: Result<(), CallError>,
    },
    /// Every call of a batch ended, or one failed and ended it.
    Batch(Arc<Batch>),
    /// A progress message of a `stream()` call.
    Progress {
        on_progress: Arc<Py<PyAny>>,
        message: serde_json::Map<String, serde_json::Value>,
    },
    /// A request for a Python responder's handlers.
    Request(Box<dyn QueuedRequest>),
    /// A Python responder's filters are subscribed: call this.
    Ready(Arc<Py<PyAny>>),
    /// The connection came up or went down: tell the client's Python handler.
    Event {
        handler: Arc<Py<PyAny>>,
        client_id: Arc<str>,
        event: ConnectionEvent,
    },
}

/// A request waiting for a Python responder's loop (the responder's binding implements
/// it): delivered there, or refused at once when the loop is too far behind.
pub trait QueuedRequest: Send {
    fn deliver(self: Box<Self>, py: Python<'_>) -> PyResult<()>;
    fn refuse(self: Box<Self>);
}

pub struct CompletionQueue {
    items: Mutex<Queued>,
    wake_writer: UnixStream,
    /// Interim messages dropped because `MAX_QUEUED_INTERIM` were waiting (shared with the
    /// client, whose `stats()` reports it).
    dropped: Arc<AtomicU64>,
    /// Whom to tell of the first such drop (the client's event handler and id), if anyone.
    first_drop: Option<(Arc<Py<PyAny>>, Arc<str>)>,
}

#[derive(Default)]
struct Queued {
    items: Vec<Completion>,
    /// How many of `items` are interim messages.
    interim: usize,
}

impl CompletionQueue {
    /// Queues an outcome (a call's, `connect`'s, an event): never refused.
    pub fn push(&self, completion: Completion) {
        let was_empty = {
            let mut queued = lock(&self.items);
            queued.items.push(completion);
            queued.items.len() == 1
        };
        if was_empty {
            self.wake();
        }
    }

    /// Queues what the network sent (a progress message, a scatter-gather answer, a
    /// request for a responder), unless `MAX_QUEUED_INTERIM` such items already wait: then
    /// it is given back, for the caller to drop and count (or answer "overloaded").
    pub fn offer(&self, completion: Completion) -> Result<(), Completion> {
        let was_empty = {
            let mut queued = lock(&self.items);
            if queued.interim >= MAX_QUEUED_INTERIM {
                return Err(completion);
            }
            queued.interim += 1;
            queued.items.push(completion);
            queued.items.len() == 1
        };
        if was_empty {
            self.wake();
        }
        Ok(())
    }

    /// Counts an interim message dropped; the first one is also told (said once).
    fn count_dropped(&self) {
        if self.dropped.fetch_add(1, Ordering::Relaxed) == 0 {
            if let Some((handler, client_id)) = &self.first_drop {
                self.push(Completion::Event {
                    handler: handler.clone(),
                    client_id: client_id.clone(),
                    event: ConnectionEvent::FirstDrop {
                        counter: "interim_dropped",
                    },
                });
            }
        }
    }

    fn wake(&self) {
        // A full socket buffer means a wake-up is already pending: nothing is lost.
        let _ = (&self.wake_writer).write(&[1]);
    }
}

/// Wakes a Python caller: an asyncio future (one call, or one call of a batch), or a thread
/// blocked in a synchronous call.
pub enum PyWaiter {
    /// The future, the timeout the caller passed (for the error message), the queue of
    /// the loop it awaits on, and, for a `stream()` call, where its progress messages go.
    Future {
        future: Py<PyAny>,
        timeout: Py<PyAny>,
        queue: Arc<CompletionQueue>,
        on_progress: Option<Arc<Py<PyAny>>>,
    },
    Batch {
        batch: Arc<Batch>,
        index: usize,
    },
    /// A caller blocked on a channel (a thread without an event loop): the call's interim
    /// messages (progress, scatter-gather answers) and then its outcome. At most
    /// `MAX_QUEUED_INTERIM` messages wait in it (`waiting` counts them; the receiver takes
    /// one off for each it reads); beyond, they are dropped and counted. The outcome is
    /// never refused.
    Blocking {
        sender: std::sync::mpsc::Sender<Blocked>,
        waiting: Arc<AtomicUsize>,
        dropped: Arc<AtomicU64>,
    },
}

/// What a blocked caller receives: interim messages, then the outcome.
pub enum Blocked {
    Message(serde_json::Map<String, serde_json::Value>),
    Done(Outcome),
}

impl Waiter for PyWaiter {
    fn progress(&self, message: serde_json::Map<String, serde_json::Value>) {
        match self {
            PyWaiter::Future {
                queue,
                on_progress: Some(on_progress),
                ..
            } => {
                let offered = queue.offer(Completion::Progress {
                    on_progress: on_progress.clone(),
                    message,
                });
                if offered.is_err() {
                    queue.count_dropped();
                }
            }
            PyWaiter::Blocking {
                sender,
                waiting,
                dropped,
            } => {
                // This runs under the client's lock and must not wait: past the bound, drop.
                if waiting.fetch_add(1, Ordering::AcqRel) >= MAX_QUEUED_INTERIM {
                    waiting.fetch_sub(1, Ordering::AcqRel);
                    dropped.fetch_add(1, Ordering::Relaxed);
                } else if sender.send(Blocked::Message(message)).is_err() {
                    waiting.fetch_sub(1, Ordering::AcqRel);
                }
            }
            _ => {}
        }
    }

    fn complete(self, outcome: Outcome) {
        match self {
            PyWaiter::Future {
                future,
                timeout,
                queue,
                ..
            } => queue.push(Completion::Call {
                future,
                timeout,
                outcome,
            }),
            PyWaiter::Batch { batch, index } => Batch::complete(&batch, index, outcome),
            // A blocked caller that gave up (a signal) has nothing left to tell.
            PyWaiter::Blocking { sender, .. } => {
                let _ = sender.send(Blocked::Done(outcome));
            }
        }
    }
}

/// The calls of one `call_many`: one future for all of them, resolved once every call has
/// ended (or at the first failure, unless exceptions are returned in place).
pub struct Batch {
    pub future: Py<PyAny>,
    pub timeout: Py<PyAny>,
    pub queue: Arc<CompletionQueue>,
    pub return_exceptions: bool,
    slots: Mutex<BatchSlots>,
}

struct BatchSlots {
    outcomes: Vec<Option<Outcome>>,
    remaining: usize,
    /// The first failure, when it ends the batch (`return_exceptions=False`).
    failure: Option<CallError>,
    settled: bool,
}

impl Batch {
    pub fn new(
        future: Py<PyAny>,
        timeout: Py<PyAny>,
        queue: Arc<CompletionQueue>,
        size: usize,
        return_exceptions: bool,
    ) -> Arc<Batch> {
        Arc::new(Batch {
            future,
            timeout,
            queue,
            return_exceptions,
            slots: Mutex::new(BatchSlots {
                outcomes: (0..size).map(|_| None).collect(),
                remaining: size,
                failure: None,
                settled: size == 0,
            }),
        })
    }

    fn complete(batch: &Arc<Batch>, index: usize, outcome: Outcome) {
        let settle = {
            let mut slots = lock(&batch.slots);
            if slots.settled {
                return;
            }
            match outcome {
                Err(error) if !batch.return_exceptions => {
                    slots.failure = Some(error);
                    slots.settled = true;
                }
                outcome => {
                    if let Some(slot) = slots.outcomes.get_mut(index) {
                        *slot = Some(outcome);
                    }
                    slots.remaining -= 1;
                    slots.settled = slots.remaining == 0;
                }
            }
            slots.settled
        };
        if settle {
            batch.queue.push(Completion::Batch(batch.clone()));
        }
    }
}

/// The per-loop end of the bridge; the loop calls it when the socket is readable.
#[pyclass(frozen, module = "mqtt_rpc._core")]
pub struct LoopBridge {
    pub event_loop: Py<PyAny>,
    pub create_future: Py<PyAny>,
    pub queue: Arc<CompletionQueue>,
    wake_reader: UnixStream,
}

impl LoopBridge {
    /// Creates the bridge for `event_loop` and registers it with `add_reader`; must be
    /// called on that loop's thread.
    /// `dropped` counts interim messages dropped; `first_drop` (a client's event handler and
    /// id) is told of the first one.
    pub fn attach(
        event_loop: &Bound<'_, PyAny>,
        dropped: Arc<AtomicU64>,
        first_drop: Option<(Arc<Py<PyAny>>, Arc<str>)>,
    ) -> PyResult<Py<LoopBridge>> {
        let py = event_loop.py();
        let (wake_reader, wake_writer) = UnixStream::pair()?;
        wake_reader.set_nonblocking(true)?;
        wake_writer.set_nonblocking(true)?;
        let fd = wake_reader.as_raw_fd();
        let bridge = Py::new(
            py,
            LoopBridge {
                event_loop: event_loop.clone().unbind(),
                create_future: event_loop.getattr(intern!(py, "create_future"))?.unbind(),
                queue: Arc::new(CompletionQueue {
                    items: Mutex::new(Queued::default()),
                    wake_writer,
                    dropped,
                    first_drop,
                }),
                wake_reader,
            },
        )?;
        event_loop.call_method1(intern!(py, "add_reader"), (fd, bridge.clone_ref(py)))?;
        Ok(bridge)
    }

    pub fn new_future(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.create_future.call0(py)
    }

    /// Stops watching the socket. From another thread than the loop's, the removal is
    /// scheduled on the loop; a closed loop has nothing left to remove.
    pub fn detach(&self, py: Python<'_>, on_loop_thread: bool) -> PyResult<()> {
        let event_loop = self.event_loop.bind(py);
        if event_loop
            .call_method0(intern!(py, "is_closed"))?
            .is_truthy()?
        {
            return Ok(());
        }
        let fd = self.wake_reader.as_raw_fd();
        if on_loop_thread {
            self.complete_ready(py);
            event_loop.call_method1(intern!(py, "remove_reader"), (fd,))?;
        } else {
            let remove = event_loop.getattr(intern!(py, "remove_reader"))?;
            event_loop.call_method1(intern!(py, "call_soon_threadsafe"), (remove, fd))?;
        }
        Ok(())
    }

    /// Completes every queued future (at most `MAX_BATCH`, then schedules another turn).
    pub fn complete_ready(&self, py: Python<'_>) {
        // Clear the wake-up before taking the queue: a push after this point writes again.
        let mut sink = [0u8; 256];
        while let Ok(n) = (&self.wake_reader).read(&mut sink) {
            if n < sink.len() {
                break;
            }
        }
        let batch: Vec<Completion> = {
            let mut queued = lock(&self.queue.items);
            if queued.items.len() > MAX_BATCH {
                self.queue.wake();
                let batch: Vec<Completion> = queued.items.drain(..MAX_BATCH).collect();
                let interim = batch
                    .iter()
                    .filter(|c| matches!(c, Completion::Progress { .. } | Completion::Request(_)))
                    .count();
                queued.interim -= interim;
                batch
            } else {
                // The whole queue: no need to count what it held.
                queued.interim = 0;
                std::mem::take(&mut queued.items)
            }
        };
        for completion in batch {
            deliver(py, completion);
        }
    }
}

#[pymethods]
impl LoopBridge {
    /// The `add_reader` callback.
    fn __call__(&self, py: Python<'_>) {
        self.complete_ready(py);
    }
}

/// The Python result of one call: the reply as a `dict`, or its exception.
pub fn outcome_to_py(
    py: Python<'_>,
    outcome: &Outcome,
    timeout: &Bound<'_, PyAny>,
) -> PyResult<Py<PyAny>> {
    match outcome {
        Ok(reply) => object_to_py(py, reply).map(|d| d.into_any().unbind()),
        Err(error) => Err(call_error(py, error, Some(timeout))),
    }
}

fn batch_result(py: Python<'_>, batch: &Batch) -> PyResult<Py<PyAny>> {
    let mut slots = lock(&batch.slots);
    let timeout = batch.timeout.bind(py);
    if let Some(error) = slots.failure.take() {
        return Err(call_error(py, &error, Some(timeout)));
    }
    let results = pyo3::types::PyList::empty(py);
    for outcome in slots.outcomes.drain(..).flatten() {
        match outcome_to_py(py, &outcome, timeout) {
            Ok(value) => results.append(value)?,
            // return_exceptions: the exception stands in the call's place.
            Err(error) => results.append(error.into_value(py))?,
        }
    }
    Ok(results.into_any().unbind())
}

fn deliver(py: Python<'_>, completion: Completion) {
    let (future, result) = match completion {
        Completion::Request(request) => {
            // The dispatcher only schedules the handler; what it raises is a bug of ours,
            // reported by Python's unraisable hook rather than lost.
            if let Err(error) = request.deliver(py) {
                error.write_unraisable(py, None);
            }
            return;
        }
        Completion::Progress {
            on_progress,
            message,
        } => {
            let delivered =
                object_to_py(py, &message).and_then(|item| on_progress.call1(py, (item,)));
            if let Err(error) = delivered {
                error.write_unraisable(py, None);
            }
            return;
        }
        Completion::Ready(callback) => {
            if let Err(error) = callback.call0(py) {
                error.write_unraisable(py, None);
            }
            return;
        }
        Completion::Batch(batch) => {
            let result = batch_result(py, &batch);
            (batch.future.clone_ref(py), result)
        }
        Completion::Event {
            handler,
            client_id,
            event,
        } => {
            let (kind, reconnect, session_present, detail) = match event {
                ConnectionEvent::Connected {
                    reconnect,
                    session_present,
                } => ("connected", reconnect, session_present, String::new()),
                ConnectionEvent::Disconnected { reason, takeover } => {
                    let kind = match takeover {
                        Takeover::No => "disconnected",
                        Takeover::Began { .. } => "taken_over",
                        Takeover::Again => "taken_over_again",
                    };
                    (kind, false, false, reason)
                }
                ConnectionEvent::FirstDrop { counter } => ("dropped", false, false, counter.into()),
            };
            // The handler logs and calls the user's callback, catching what it raises: an
            // error here is ours, reported by Python's unraisable hook rather than lost.
            let args = (kind, reconnect, session_present, detail, &*client_id);
            if let Err(error) = handler.call1(py, args) {
                error.write_unraisable(py, None);
            }
            return;
        }
        Completion::Call {
            future,
            timeout,
            outcome,
        } => {
            let result = outcome_to_py(py, &outcome, timeout.bind(py));
            (future, result)
        }
        Completion::Done { future, result } => {
            let result = result
                .map(|()| py.None())
                .map_err(|error| call_error(py, &error, None));
            (future, result)
        }
    };
    let future = future.bind(py);
    let delivered = match result {
        Ok(value) => future.call_method1(intern!(py, "set_result"), (value,)),
        Err(error) => future.call_method1(intern!(py, "set_exception"), (error.into_value(py),)),
    };
    // A future whose caller cancelled it refuses the outcome (InvalidStateError): skipped.
    // Anything else going wrong is reported by Python's unraisable hook, never lost.
    if let Err(error) = delivered {
        let cancelled = py
            .import(intern!(py, "asyncio"))
            .and_then(|asyncio| asyncio.getattr(intern!(py, "InvalidStateError")))
            .is_ok_and(|kind| error.get_type(py).is_subclass(&kind).unwrap_or(false));
        if !cancelled {
            error.write_unraisable(py, Some(future));
        }
    }
}
