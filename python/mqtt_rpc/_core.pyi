"""The native core of mqtt-rpc (Rust). Use `mqtt_rpc.MqttRpcClient`; this module is its engine."""

import asyncio
from typing import Any, Callable, Dict, List, Optional, Tuple, Union, final

__all__ = ["CoreClient", "LoopBridge", "CoreResponder", "ReplyHandle", "client_defaults", "responder_defaults", "expand_client_id", "control_topic", "__version__"]

__version__: str

#: Name/value pairs a request carries beside its body: MQTT 5 user properties, or members
#: of a 3.1.1 request's JSON.
_Headers = List[Tuple[str, str]]

def client_defaults() -> Dict[str, Any]:
    """The core's defaults of the options `MqttRpcClient` documents, by name."""

def responder_defaults() -> Dict[str, Any]:
    """The core's defaults of the options only `Responder` takes, by name."""

def expand_client_id(template: str) -> str:
    """A client id with its placeholders (``{pid}``, ``{hostname}``, ``{random}``) filled in."""

def control_topic(prefix: str, verb: str, name: Optional[str] = None, instance: Optional[str] = None) -> str:
    """The topic of a PING, INFO or STATS request to every service, one name, or one
    instance; `PayloadError` for a name or id that cannot be a topic level."""

@final
class CoreClient:
    """One MQTT connection with its pending-call table; wrapped by `MqttRpcClient`."""

    def __new__(
        cls,
        options: Dict[str, Any],
        event_handler: Optional[Callable[[str, bool, bool, str, str], None]] = None,
    ) -> "CoreClient":
        """``options``: the options the caller chose, by name (``host``, ``port``,
        ``client_id``, ``protocol``, ``qos``, ... as `MqttRpcClient` takes them, with
        ``inbox_prefix`` for the inbox reply mode); the core's defaults fill the rest. An
        unknown name or a bad value raises ``ValueError`` naming it."""
    def connect(self, event_loop: asyncio.AbstractEventLoop) -> "asyncio.Future[None]":
        """Connects; the future resolves when the client is ready, or fails with
        `NotConnectedError`."""
    def close(self, event_loop: asyncio.AbstractEventLoop, grace: float) -> "asyncio.Future[None]":
        """Waits up to `grace` seconds for pending calls, fails the rest, disconnects; call
        `detach` once the future resolves."""
    def detach(self, running_loop: asyncio.AbstractEventLoop) -> None:
        """Delivers queued results and stops watching every loop this client used."""
    def start_call(
        self,
        event_loop: asyncio.AbstractEventLoop,
        topic: str,
        payload: Union[str, bytes, bytearray],
        timeout: float,
        request_id: Optional[str] = None,
        headers: Optional[_Headers] = None,
        device: Optional[str] = None,
        wait_for_device: Optional[float] = None,
    ) -> Tuple["asyncio.Future[Dict[str, Any]]", str]:
        """Starts a call and returns its future and request id (`request_id`: a retry's,
        to send the same request again; `headers`: trace context). With a presence source,
        `device` names the device it addresses instead of the topic's first level (`""`:
        none), and `wait_for_device` lets it wait for a device known offline. Raises
        `PayloadError` or `ValueError` before anything is published."""
    def start_stream(
        self,
        event_loop: asyncio.AbstractEventLoop,
        topic: str,
        payload: Union[str, bytes, bytearray],
        timeout: float,
        on_progress: Callable[[Dict[str, Any]], None],
        headers: Optional[_Headers] = None,
        device: Optional[str] = None,
    ) -> Tuple["asyncio.Future[Dict[str, Any]]", str]:
        """Starts a call whose progress messages go to `on_progress` before its answer."""
    def start_gather(
        self,
        event_loop: asyncio.AbstractEventLoop,
        topic: str,
        payload: Union[str, bytes, bytearray],
        timeout: float,
        max_replies: Optional[int],
        on_reply: Callable[[Dict[str, Any]], None],
        headers: Optional[_Headers] = None,
    ) -> Tuple["asyncio.Future[Dict[str, Any]]", str]:
        """Starts a scatter-gather call: each device's answer goes to `on_reply` once; the
        future resolves when the call ends (deadline or `max_replies`)."""
    def start_many(
        self,
        event_loop: asyncio.AbstractEventLoop,
        requests: List[Tuple[str, Union[str, bytes, bytearray]]],
        timeout: float,
        return_exceptions: bool,
        headers: Optional[List[_Headers]] = None,
        devices: Optional[List[str]] = None,
    ) -> Tuple["asyncio.Future[List[Any]]", List[str]]:
        """Starts a batch in one crossing; the future resolves to the results in input
        order. `headers` and `devices`, if given, have each request's."""
    def call_blocking(
        self,
        topic: str,
        payload: Union[str, bytes, bytearray],
        timeout: float,
        headers: Optional[_Headers] = None,
        device: Optional[str] = None,
        wait_for_device: Optional[float] = None,
        request_id: Optional[str] = None,
        on_progress: Optional[Callable[[Dict[str, Any]], None]] = None,
    ) -> Dict[str, Any]:
        """A call that blocks the calling thread (GIL released) until its outcome;
        `request_id`: a retry's; `on_progress`: each progress message, on this thread."""
    def many_blocking(
        self,
        requests: List[Tuple[str, Union[str, bytes, bytearray]]],
        timeout: float,
        return_exceptions: bool,
        headers: Optional[List[_Headers]] = None,
        devices: Optional[List[str]] = None,
    ) -> List[Any]:
        """A batch, blocking the calling thread until every call ended; results in input
        order (failures in place with `return_exceptions`)."""
    def gather_blocking(
        self,
        topic: str,
        payload: Union[str, bytes, bytearray],
        timeout: float,
        max_replies: Optional[int] = None,
        headers: Optional[_Headers] = None,
        on_reply: Optional[Callable[[Dict[str, Any]], None]] = None,
    ) -> List[Dict[str, Any]]:
        """Scatter-gather, blocking the calling thread (GIL released) until the call ends;
        with `on_reply`, each answer goes to it as it comes (and the list stays empty)."""
    def connect_blocking(self) -> None:
        """Connects, blocking the calling thread (GIL released)."""
    def close_blocking(self, grace: float) -> None:
        """Closes, blocking the calling thread (GIL released)."""
    def notify(self, topic: str, payload: Union[str, bytes, bytearray], headers: Optional[_Headers] = None) -> None:
        """Publishes a one-way notification (no request_id, no answer)."""
    def presence(self, device: str) -> Optional[Tuple[bool, Optional[float], Optional[str]]]:
        """What the presence source last said of a device: `(online, since, reason)`, with
        `since` in Unix seconds."""
    def report_presence(
        self, device: str, online: bool, since: Optional[float] = None, reason: Optional[str] = None
    ) -> None:
        """A device's presence from the application's own source (`since` in Unix seconds)."""
    def forget(self, request_id: str) -> bool:
        """Drops a call whose caller stopped waiting; returns whether it was pending."""
    @property
    def pending(self) -> int: ...
    @property
    def reply_subscriptions(self) -> int: ...
    @property
    def connected(self) -> bool: ...
    @property
    def connected_to(self) -> List[Optional[Tuple[str, int]]]:
        """Which broker each connection is up with (None while it is down)."""
    @property
    def client_id(self) -> str: ...
    @property
    def client_ids(self) -> List[str]: ...
    def stats(self) -> Dict[str, Any]:
        """The pool's totals, and each connection's own under ``connections``."""
    def latency_histogram(self, bounds: List[float]) -> Tuple[List[int], int, float]:
        """Answered calls' latencies: how many at or below each bound (seconds,
        ascending), how many in all, and their sum in seconds."""

@final
class LoopBridge:
    """The per-event-loop end through which results reach asyncio (internal)."""

    def __call__(self, *args: Any, **kwargs: Any) -> None: ...

@final
class ReplyHandle:
    """The one answer a request owes (internal to `mqtt_rpc.Responder`): the first of
    `send_result`, `send_error` or `abandon` ends it, later ones do nothing."""

    @property
    def number(self) -> int:
        """The run's number, which a cancellation names."""
    def send_result(self, result_json: str) -> None:
        """Answers with `{"request_id", "result": ...}`."""
    def send_progress(self, progress_json: str) -> None:
        """Sends `{"request_id", "progress": ...}` before the answer."""
    def send_error(self, code: int, message: str, data_json: Optional[str] = None) -> None:
        """Answers with `{"request_id", "error": {"code", "message", "data"}}`."""
    def remaining(self) -> Optional[float]:
        """Seconds until the caller stops waiting (negative once it has); None if the
        request carried no deadline."""
    def expire(self) -> bool:
        """Drops the request unanswered (its caller stopped waiting before its handler
        started), counted as ``requests_expired``; True for the first such drop."""
    def abandon(self) -> None:
        """Ends the run without an answer (its handler was cancelled)."""

@final
class CoreResponder:
    """The Rust responder behind `mqtt_rpc.Responder`."""

    def __new__(cls, options: Dict[str, Any], filters: List[str]) -> "CoreResponder":
        """``options`` by name, as for `CoreClient` (and ``share_group``,
        ``max_concurrency``, ``max_queued``, ``reply_cache_size``, ``reply_cache_ttl``; for
        a named service ``name``, ``version``, ``metadata`` (JSON text), ``descriptions``
        (one per filter) and ``service_prefix``)."""
    def serve(
        self,
        event_loop: asyncio.AbstractEventLoop,
        on_request: Callable[[int, str, Dict[str, Any], ReplyHandle, Optional[_Headers]], None],
        on_cancel: Callable[[int], None],
        on_drop: Callable[[str], None],
        on_ready: Callable[[], None],
    ) -> "asyncio.Future[None]":
        """Serves on the loop until `close`: `on_request` for each request to run,
        `on_cancel(number)` when its caller gives up on the run with that number,
        `on_drop(counter)` for the first request of each kind dropped or refused; fails if
        the first connection does."""
    def leave(self, grace: float) -> None:
        """Leaves gracefully: unsubscribes, lets the runs answer, disconnects once every
        answer is out or after ``grace`` seconds; the `serve` future then resolves."""
    def stop(self) -> None:
        """Stops serving at once, without a DISCONNECT."""
    def detach(self) -> None:
        """Stops watching the loop (after `serve` resolved)."""
    def stats(self) -> Dict[str, int]: ...
    @property
    def client_id(self) -> str: ...
    @property
    def connected_to(self) -> Optional[Tuple[str, int]]:
        """The broker it is connected to (None while down)."""
    def handlers(self, bounds: List[float]) -> List[Dict[str, Any]]:
        """Each handler's ``filter``, ``requests`` (answers), ``errors``,
        ``processing_seconds_total``, ``last_error`` and ``at_or_below`` (answers whose time
        from admission was at or below each bound, in seconds), in filter order."""
