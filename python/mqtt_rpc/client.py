"""`MqttRpcClient`: the awaitable `call()` over MQTT that replaces the hand-written client.

The Rust core does the MQTT work, correlation, subscriptions and timeouts; this class only
adapts it to asyncio (the running loop, `async with`, cancellation). Its options are
resolved by `_base`, its calls run the steps of `pipeline`, its streams are `streams`'."""

from __future__ import annotations

import asyncio
import os
from types import TracebackType
from typing import Any, Callable, Dict, Iterable, List, Optional, Protocol, Sequence, Tuple, Type, TypeVar, Union, overload

from . import _core, _observer, pipeline, presence as _presence, services, typed
from ._base import ClientBase, ConnectionEvent, url_keywords
from ._observer import Headers
from .config import records_given_arguments
from .context import bounded_timeout
from .errors import NotConnectedError
from .options import TLS, Limits, Reconnect, Replies
from .pipeline import Retry
from .presence import DeviceOf, Presence, PresenceSource
from .streams import CallStream, OnMessage

__all__ = ["MqttRpcClient", "ConnectionEvent", "Retry", "CallStream", "Payload"]


class JsonModel(Protocol):
    """A pydantic model, or anything else that serialises itself to a JSON object."""

    def model_dump_json(self) -> str: ...


#: A JSON object: text, bytes, a dict, or a pydantic model (sent as its ``model_dump_json()``).
Payload = Union[str, bytes, bytearray, Dict[str, Any], JsonModel]
T = TypeVar("T")
PathLike = Union[str, "os.PathLike[str]"]

_get_running_loop = asyncio.get_running_loop


class MqttRpcClient(ClientBase):
    """A request/response client over one MQTT connection.

    ``await client.call(topic, payload)`` publishes the JSON object ``payload`` with a fresh
    ``request_id`` to ``topic`` and returns the device's reply from
    ``{topic}/response/{request_id}`` as a ``dict``. The first call to a topic subscribes
    ``{topic}/response/+`` once; later calls publish at once.

    Args:
        host, port: the broker.
        hosts: instead, the nodes of one cluster, ``[(host, port), ...]`` (in
            ``MQTT_RPC_URL``: ``mqtt://node1:1883,node2:1883``). A connect tries them in
            this order until one accepts; a lost connection reconnects starting from the
            node after the lost one, with the usual backoff between rounds. Calls in flight
            keep their deadlines; `connected_to` says which node the client is on.
        client_id: defaults to a unique id, so that replicas never kick each other off.
            ``{pid}``, ``{hostname}`` and ``{random}`` are filled in once, so that every
            worker started from one configuration gets an id of its own.
        protocol: ``"3.1.1"`` or ``"5"``. With 5, requests also carry the Response Topic
            and Correlation Data properties.
        qos: 0 or 1, for requests and reply subscriptions.
        keepalive: seconds between MQTT pings.
        username, password: broker credentials.
        timeout: the default timeout of ``call()``, in seconds.
        connect_timeout: how long ``connect()`` may take, in seconds.
        session_expiry: seconds the broker keeps the session (reply subscriptions, queued
            QoS 1 replies) after the connection drops. Default: 60 with MQTT 5; 0 (a clean
            session) with 3.1.1, which cannot expire sessions. ``close()`` ends it.
        tls: ``True`` for TLS with the system's CAs, or a `TLS` (CA, client certificate
            and key, ALPN), which turns TLS on.
        limits: what one connection holds at most: a `Limits` (calls in flight,
            subscriptions, packet size, publish rate, unacknowledged publishes), or
            ``"aws-iot-core"`` for AWS IoT Core's quotas (`Limits.aws_iot_core`).
        reconnect: how a lost connection is retried (`Reconnect`: the first delay and the
            largest, doubling with jitter).
        replies: where devices answer: ``"topic"`` (the seed convention, the default),
            ``"inbox"`` (one subscription for every device), or a `Replies`
            (``Replies.inbox(prefix=...)``, ``Replies.shared_filter(filter)``).
        presence: where the client learns which devices are connected, so that a call to a
            device known offline fails at once with `DeviceOfflineError` (or, with
            ``wait_for_device=``, waits for it) instead of waiting out its timeout:
            ``"aws-lifecycle"`` (AWS IoT Core's lifecycle events; `AwsLifecycle` to move
            their prefix), ``"retained-status"`` (`RetainedStatus`), a source of your own
            (an object with ``async run(report)``, `PresenceSource`), or ``"reported"``:
            your code calls `report_presence`. A device it never mentioned is called as
            always. One more subscription per connection (none for a source of your own).
        device_of: which device a request topic addresses, for the presence check: a
            function of the topic returning the device id (None: no check for that call).
            Default: the topic's first level (``dev1/device/control/set`` -> ``dev1``).
        connections: a pool of this many connections, with client ids
            ``{client_id}-0`` ... ``{client_id}-{N-1}``; each call goes to the connection with
            the most room, and its answer comes back on that connection. ``pending``,
            ``stats()`` (with each connection's own under ``"connections"``) and ``close()``
            cover the pool; each connection reconnects on its own.
        fail_fast: while the connection is down, fail new calls at once with
            `NotConnectedError` instead of holding them until it is back.
        cancel_on_abandon: when a call times out or its task is cancelled, publish
            ``{"request_id": ..., "cancel": true}`` to its topic: a `Responder` then cancels
            that request's handler and answers nothing.
        propagate_deadline: requests carry ``timeout_ms``, the milliseconds the caller still
            waits, counted at publish, so that a `Responder` drops a request that waited past
            it and its handler knows its time (`current_request`). True: a member of the
            JSON body, on either protocol (a 3.1.1 device behind an MQTT 5 caller sees it
            too). None (the default): an MQTT 5 user property, and nothing on 3.1.1, whose
            devices get exactly the bytes they always did. False: none. MQTT 5 requests
            always carry the time left as Message Expiry, rounded up to whole seconds.
        service_prefix: the topic levels under which `discover`, `ping` and
            `service_stats` address named responders (as their ``service_prefix``).
        on_connection_change: called on the loop that connected, with a `ConnectionEvent`,
            whenever the connection comes up or goes down (or is taken over). Events are
            also logged to the ``mqtt_rpc`` logger.

    The keywords of the 0.x series (``ca_certs=``, ``max_in_flight=``, ``reply_to=``,
    ``quotas=``, ...) still work, with a ``DeprecationWarning`` naming the new form
    (`mqtt_rpc.options.DEPRECATED_KEYWORDS`); `MQTT_RPC_URL` keeps its flat names.

    After a lost connection the client reconnects by itself. Calls in flight keep waiting for
    their answers until their own timeouts; calls made meanwhile wait for the connection (and
    for their reply subscriptions to be back) within their own timeouts.
    """

    @records_given_arguments
    def __init__(
        self,
        host: Optional[str] = None,
        port: Optional[int] = None,
        *,
        hosts: Optional[Sequence[Tuple[str, int]]] = None,
        client_id: Optional[str] = None,
        protocol: str = "3.1.1",
        qos: int = 0,
        keepalive: float = 60,
        username: Optional[str] = None,
        password: Optional[str] = None,
        timeout: float = 10,
        connect_timeout: float = 10,
        session_expiry: Optional[float] = None,
        tls: Union[bool, TLS] = False,
        limits: Union[Limits, str, None] = None,
        reconnect: Optional[Reconnect] = None,
        replies: Union[Replies, str] = "topic",
        presence: Optional[Presence] = None,
        device_of: Optional[DeviceOf] = None,
        connections: int = 1,
        fail_fast: bool = False,
        cancel_on_abandon: bool = False,
        propagate_deadline: Optional[bool] = None,
        service_prefix: str = "mqtt-rpc/_srv",
        on_connection_change: Optional[Callable[[ConnectionEvent], None]] = None,
        **deprecated: Any,
    ) -> None:
        self._on_connection_change = on_connection_change
        self._configure(locals())
        self._connecting: Optional["asyncio.Task[None]"] = None
        self._source_task: Optional["asyncio.Task[None]"] = None

    @classmethod
    def from_url(cls, url: str, **options: Any) -> "MqttRpcClient":
        """A client for the broker at ``url``: ``mqtt://[user[:password]@]host[:port]`` (port
        1883) or ``mqtts://...`` (TLS, port 8883), any other option as a query parameter
        (``?client_id=web-1&protocol=5&qos=1&timeout=5``). Keyword arguments win over the
        URL's. Raises ValueError naming an unknown scheme, a bad port or an unknown
        parameter, before any network activity."""
        return cls(**url_keywords(url, options))

    @classmethod
    def for_aws_iot(
        cls,
        endpoint: str,
        certfile: PathLike,
        keyfile: PathLike,
        ca_certs: Optional[PathLike] = None,
        *,
        client_id: str,
        port: int = 8883,
        **options: Any,
    ) -> "MqttRpcClient":
        """A client set up the way AWS IoT Core wants it: mutual TLS with the thing's
        certificate and key, on port 8883 (or 443, with the ALPN protocol
        ``x-amzn-mqtt-ca``), QoS at most 1, and AWS's per-connection quotas kept on the
        client (``limits="aws-iot-core"``: 100 publishes per second, 50 subscriptions,
        128 KB payloads, 100 unacknowledged QoS 1 publishes, AWS's topic rules, one CONNECT
        a second). Pass ``connections=N`` for a pool of N connections (client ids
        ``{client_id}-{i}``) to go past one connection's 100 calls per second.

        Args:
            endpoint: your account's data endpoint, ``xxxxxxxx-ats.iot.<region>.amazonaws.com``
                (``aws iot describe-endpoint --endpoint-type iot:Data-ATS``).
            certfile, keyfile: the thing's certificate and private key (PEM).
            ca_certs: Amazon Root CA 1 (PEM); default: the system's trusted roots.
            client_id: the client id the IoT policy allows. Every connection needs its
                own: ``"web-{hostname}-{pid}"`` gives each worker and replica one.
            port: 8883, or 443 where only HTTPS ports are open.
            options: any other `MqttRpcClient` option.
        """
        alpn = ("x-amzn-mqtt-ca",) if port == 443 else ()
        settings: Dict[str, Any] = {"limits": "aws-iot-core", "keepalive": 60}
        settings.update(options)
        tls = TLS(ca_certs=ca_certs, certfile=certfile, keyfile=keyfile, alpn_protocols=alpn)
        return cls(endpoint, port, client_id=client_id, tls=tls, **settings)

    async def connect(self) -> None:
        """Connects to the broker (and subscribes ``reply_filter``, if given). Calls connect
        by themselves when needed; calling this at start-up (a FastAPI lifespan) surfaces
        broker problems there instead of in the first request. Connecting a connected client
        does nothing; a client closed before connects again (its counters start afresh).

        Raises:
            NotConnectedError: the broker could not be reached within ``connect_timeout``;
                its subclasses `TlsError` (bad TLS files, unknown CA, certificate refused)
                and `BrokerRefusedError` (bad credentials, not authorised) say more.
        """
        if not self._open:
            await self._connection()

    async def _connection(self) -> None:
        """Connects unless connected. Concurrent callers on a loop share one attempt (one
        CONNECT at the broker); a failed attempt raises in each of them, and the next call
        tries again."""
        if self._open:
            return
        if self._closing:
            raise NotConnectedError("the client is closing: wait for close() to end before using it again")
        loop = _get_running_loop()
        attempt = self._connecting
        if attempt is not None and not attempt.done() and attempt.get_loop() is not loop:
            if not attempt.get_loop().is_closed():
                raise NotConnectedError("the client is connecting from another event loop")
            attempt = None  # its loop was closed mid-attempt: start over here
        if attempt is None or attempt.done():
            attempt = loop.create_task(self._connect_once())
            # Every waiter may have been cancelled: the outcome is read here in any case.
            attempt.add_done_callback(_retrieve)
            self._connecting = attempt
        await asyncio.shield(attempt)

    async def _connect_once(self) -> None:
        self._unused_core()
        try:
            await self._core.connect(_get_running_loop())
            self._open = True
        finally:
            self._connecting = None
        source = self._presence_source
        # Only a source of your own runs here; the core reads the others.
        if isinstance(source, PresenceSource):
            task = _get_running_loop().create_task(_presence.run_source(source, self.report_presence))
            self._source_task = task

    async def _opened(self) -> _core.CoreClient:
        """The core, connected first if the client is not."""
        if not self._open:
            await self._connection()
        return self._core

    async def close(self, grace: float = 2.0) -> None:
        """Refuses new calls, waits up to ``grace`` seconds for the calls in flight to be
        answered, fails what is left with `ConnectionLostError`, disconnects (ending the
        broker session: MQTT 5), and releases the client's resources. Closing twice is
        harmless; a call or `connect()` after it connects again."""
        attempt = self._connecting
        if attempt is not None and not attempt.done() and attempt.get_loop() is _get_running_loop():
            await asyncio.wait({attempt})  # a connection under way is closed once it stands
        if not self._open:
            return
        self._open = False
        self._closing = True
        running_loop = _get_running_loop()
        source_task, self._source_task = self._source_task, None
        if source_task is not None:
            source_task.cancel()
            await asyncio.wait({source_task})
        try:
            await self._core.close(running_loop, float(grace))
            self._core.detach(running_loop)
        finally:
            self._closing = False

    async def __aenter__(self) -> "MqttRpcClient":
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        await self.close()

    @overload
    async def call(
        self,
        topic: str,
        payload: Payload,
        timeout: Optional[float] = None,
        retry: Optional[Retry] = None,
        *,
        response_model: None = None,
        wait_for_device: Optional[float] = None,
    ) -> Dict[str, Any]: ...

    @overload
    async def call(
        self,
        topic: str,
        payload: Payload,
        timeout: Optional[float] = None,
        retry: Optional[Retry] = None,
        *,
        response_model: Type[T],
        wait_for_device: Optional[float] = None,
    ) -> T: ...

    @overload
    async def call(
        self,
        topic: str,
        payload: Payload,
        timeout: Optional[float] = None,
        retry: Optional[Retry] = None,
        *,
        response_model: Any,
        wait_for_device: Optional[float] = None,
    ) -> Any: ...

    async def call(
        self,
        topic: str,
        payload: Payload,
        timeout: Optional[float] = None,
        retry: Optional[Retry] = None,
        *,
        response_model: Any = None,
        wait_for_device: Optional[float] = None,
    ) -> Any:
        """Publishes ``payload`` to ``topic`` and returns the device's reply. Connects
        first if the client is not connected.

        Args:
            topic: the request topic, for example ``"dev1/device/control/set"``.
            payload: a JSON object, as ``str``, ``bytes``, ``dict`` or a pydantic model. A
                ``request_id`` member is added to it.
            timeout: seconds to wait for the answer; defaults to the client's ``timeout``.
                Inside a `Responder` handler, never longer than the request it serves has
                left (`current_request`): a call past that deadline is not even sent.
            retry: retry the same request (same ``request_id``) within ``timeout``; see `Retry`.
            response_model: return the answer's ``result`` validated as this type (a
                pydantic model, or any type ``pydantic.TypeAdapter`` takes) instead of the
                whole reply dict. Needs pydantic.
            wait_for_device: with a ``presence`` source, a call to a device known offline
                waits up to this many seconds (within ``timeout``) for it to come online and
                is then sent, instead of failing at once. Its deadline does not move: a
                device that comes online too late ends it with `RpcTimeoutError`.

        Returns:
            The reply object as the device sent it (``request_id`` and ``result`` included),
            or its ``result`` as a ``response_model``.

        Raises:
            RpcTimeoutError: no answer in time (also a ``TimeoutError``).
            DeviceOfflineError: the ``presence`` source says the device is offline (it
                stayed offline for all of ``wait_for_device``); nothing was sent. A
                `NoRespondersError`, and so a ``LookupError``.
            RemoteError: the device answered with an error object.
            ReplyValidationError: the answer does not fit ``response_model`` (also a
                ``ValueError``); it keeps the reply.
            PayloadError: bad payload or topic, raised before anything is published
                (also a ``ValueError``).
            NotConnectedError, ConnectionLostError: no connection (also ``ConnectionError``).
        """
        call = pipeline.prepare(
            topic, payload, timeout, self._timeout, self._device_of,
            response_model=response_model, wait_for_device=wait_for_device,
        )
        if not self._open:
            await self._connection()
        reply = await pipeline.call_async(self._core, call, retry, self._peer)
        return reply if response_model is None else pipeline.finish(reply, response_model)

    def stream(
        self, topic: str, payload: Payload, timeout: Optional[float] = None, idle_timeout: Optional[float] = None
    ) -> CallStream:
        """Calls, yielding the device's progress messages (``{"request_id", "progress": ...}``)
        as they arrive and then its answer. ``timeout`` bounds the whole call; with
        ``idle_timeout`` it also fails when neither progress nor the answer has come for
        that long. Raises as `call` does. On a client not yet connected, the call is made
        (after connecting) when the iteration starts.

            async for message in client.stream("dev1/firmware/update", {"url": url}, timeout=600, idle_timeout=30):
                print(message.get("progress", message.get("result")))
        """
        call = pipeline.prepare(topic, payload, timeout, self._timeout, None)
        device = pipeline.device(topic, self._device_of)

        def begin(core: _core.CoreClient, on_message: OnMessage, headers: Optional[Headers]) -> Tuple[Any, str]:
            loop = _get_running_loop()
            return core.start_stream(loop, call.topic, call.body, call.timeout, on_message, headers, device)

        return self._stream(begin, topic, "stream", idle_timeout=idle_timeout, ends_with_answer=True)

    def call_all(
        self, topic: str, payload: Payload, timeout: Optional[float] = None, max_replies: Optional[int] = None
    ) -> CallStream:
        """Scatter-gather: publishes one request to ``topic`` (typically a group topic that
        many devices subscribe to) and yields every device's answer as it arrives, until
        ``timeout`` seconds have passed or ``max_replies`` answers have come (100,000 when not
        given: the devices counted must stay bounded). Reaching the deadline is the normal
        end, not an error.

        The request carries ``"gather": true``; a device names itself in its answer's
        ``responder`` member (a `Responder` does so with its client id), and each device's
        answer is yielded once. Answers without a ``responder`` are each yielded. A device's
        error answer is yielded as it came (with its ``error`` member), so one failing device
        does not end the gathering. With MQTT 5 and QoS 1, a topic nobody subscribes to ends
        the iteration at once.

            async for reply in client.call_all("fleet/all/status/get", {}, timeout=2):
                print(reply["responder"], reply.get("result"))
        """
        pipeline.check_max_replies(max_replies)
        call = pipeline.prepare(topic, payload, timeout, self._timeout, None)

        def begin(core: _core.CoreClient, on_message: OnMessage, headers: Optional[Headers]) -> Tuple[Any, str]:
            loop = _get_running_loop()
            return core.start_gather(loop, call.topic, call.body, call.timeout, max_replies, on_message, headers)

        return self._stream(begin, topic, "call_all")

    def _stream(self, begin: Any, topic: str, operation: str, **options: Any) -> CallStream:
        core = self._core if self._open else None
        return CallStream(self._opened, begin, topic, operation, self._peer, core=core, **options)

    async def gather_all(
        self, topic: str, payload: Payload, timeout: Optional[float] = None, max_replies: Optional[int] = None
    ) -> List[Dict[str, Any]]:
        """`call_all`, collected: the list of answers, in the order they arrived."""
        async with self.call_all(topic, payload, timeout, max_replies) as replies:
            return [reply async for reply in replies]

    async def discover(
        self, name: Optional[str] = None, timeout: float = 1.0, *, instance: Optional[str] = None
    ) -> List[Dict[str, Any]]:
        """Which named responders are up, and what they serve: every instance's INFO
        (``name``, ``id`` (its client id), ``version``, ``metadata``, ``endpoints``: each
        request ``filter`` with its ``description`` and ``share_group``, ``started``), from
        those that answer within ``timeout`` seconds, sorted by name and id. ``name``
        narrows it to the instances of one service, ``instance`` (with ``name``) to one.
        """
        return await self._control("INFO", name, instance, timeout)

    async def ping(
        self, name: Optional[str] = None, timeout: float = 1.0, *, instance: Optional[str] = None
    ) -> List[Dict[str, Any]]:
        """As `discover`, the short answer: each instance's ``name``, ``id`` and ``version``."""
        return await self._control("PING", name, instance, timeout)

    async def service_stats(
        self, name: Optional[str] = None, timeout: float = 1.0, *, instance: Optional[str] = None
    ) -> List[Dict[str, Any]]:
        """As `discover`, how each instance is doing: per request filter (``endpoints``) its
        ``requests``, ``errors``, ``processing_ms_total``, ``processing_ms_average`` and
        ``last_error``; the responder's ``counters`` (those of `Responder.stats()`);
        ``started``."""
        return await self._control("STATS", name, instance, timeout)

    async def _control(
        self, verb: str, name: Optional[str], instance: Optional[str], timeout: float
    ) -> List[Dict[str, Any]]:
        topic, max_replies = services.control_request(self._settings["service_prefix"], verb, name, instance)
        return services.answers(await self.gather_all(topic, {}, timeout, max_replies), verb)

    async def notify(self, topic: str, payload: Payload) -> None:
        """Publishes a one-way notification: the JSON object as it is, with no
        ``request_id``, so no device answers it; nothing is awaited but the hand-off (and
        the connection, on a client not yet connected)."""
        body = typed.encode(payload)
        core = await self._opened()
        observer = _observer.current
        if observer is None:
            core.notify(topic, body)
            return
        with observer.client_span("notify", topic, self._peer) as span:
            core.notify(topic, body, span.headers)

    async def call_many(
        self,
        requests: Iterable[Tuple[str, Payload]],
        timeout: Optional[float] = None,
        return_exceptions: bool = False,
        *,
        response_model: Any = None,
    ) -> List[Any]:
        """Makes many calls at once: one crossing into the Rust core for the whole batch,
        every request published at once, every reply in input order.

        Args:
            requests: ``(topic, payload)`` pairs, payloads as for `call`.
            timeout: seconds each call may wait (they all start together).
            return_exceptions: put a failed call's exception in its place, as
                ``asyncio.gather`` does; otherwise the first failure is raised and the calls
                still waiting are cancelled.
            response_model: each answer's ``result`` validated as this type, as for `call`
                (with ``return_exceptions``, an answer that does not fit is a
                `ReplyValidationError` in its place).

        Every request is checked before any is sent: one bad request raises `PayloadError`
        (naming its index) and nothing is published.
        """
        timeout = bounded_timeout(self._timeout if timeout is None else timeout, "a batch")
        batch = pipeline.batch(requests)
        if response_model is not None:
            typed.check_model(response_model)
        core = await self._opened()
        observer = _observer.current
        spans = [] if observer is None else [observer.client_span("call", topic, self._peer) for topic, _ in batch]
        devices = None if self._device_of is None else [pipeline.device(topic, self._device_of) or "" for topic, _ in batch]
        try:
            headers = [span.headers or [] for span in spans] or None
            future, request_ids = core.start_many(_get_running_loop(), batch, timeout, return_exceptions, headers, devices)
        except BaseException as error:
            pipeline.end_spans(spans, error)
            raise
        for span, request_id in zip(spans, request_ids):
            span.sent(request_id)
        try:
            replies: List[Any] = await future
        except BaseException as error:
            # Cancelled, or ended by a failure: the calls still waiting have no one to tell.
            for request_id in request_ids:
                core.forget(request_id)
            pipeline.end_spans(spans, error)
            raise
        for span, reply in zip(spans, replies):
            span.end(reply if isinstance(reply, BaseException) else None)
        return pipeline.finish_many(replies, response_model, return_exceptions)


def _retrieve(attempt: "asyncio.Task[None]") -> None:
    if not attempt.cancelled():
        attempt.exception()
