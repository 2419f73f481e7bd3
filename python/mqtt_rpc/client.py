"""`MqttRpcClient`: the awaitable `call()` over MQTT that replaces the hand-written client.

The Rust core does the MQTT work, correlation, subscriptions and timeouts; this class only
adapts it to asyncio (the running loop, `async with`, cancellation)."""

from __future__ import annotations

import asyncio
import collections
import inspect
import logging
import os
import weakref
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Callable, Deque, Dict, FrozenSet, Iterable, List, Optional, Sequence, Protocol, Tuple, Type, TypeVar, Union, overload

from . import _core, _logs, _observer, config, presence as _presence, quotas as _quotas, services, typed
from .quotas import QUOTA_PRESETS
from ._observer import ClientSpan, Headers, Observer, Peer
from .config import records_given_arguments
from .context import bounded_timeout
from .presence import DeviceOf, DevicePresence, Presence, PresenceSource
from .errors import (
    ConnectionLostError,
    NoRespondersError,
    NotConnectedError,
    PayloadError,
    ReplyValidationError,
    RpcTimeoutError,
)



class JsonModel(Protocol):
    """A pydantic model, or anything else that serialises itself to a JSON object."""

    def model_dump_json(self) -> str: ...


#: A JSON object: text, bytes, a dict, or a pydantic model (sent as its ``model_dump_json()``).
Payload = Union[str, bytes, bytearray, Dict[str, Any], JsonModel]
T = TypeVar("T")
PathLike = Union[str, "os.PathLike[str]"]
#: Takes each interim message of a call (progress, or a scatter-gather answer).
OnMessage = Callable[[Dict[str, Any]], None]
#: Starts a stream's call on a core: ``(future, request_id)``.
Begin = Callable[[_core.CoreClient, OnMessage, Optional[Headers]], Tuple[Any, str]]

logger = logging.getLogger("mqtt_rpc")


@dataclass(frozen=True)
class ConnectionEvent:
    """The connection came up (``connected``) or went down (then ``reason`` says why)."""

    connected: bool
    reconnect: bool = False
    session_present: bool = False
    reason: str = ""
    #: The connection it is about (a pool has several).
    client_id: str = ""
    #: Lost because another connection with the same client id connected (the broker
    #: keeps one connection per id): give each process its own id (``client_id="web-{pid}"``).
    taken_over: bool = False

_get_running_loop = asyncio.get_running_loop
_CancelledError = asyncio.CancelledError


@dataclass(frozen=True)
class Retry:
    """How `call()` retries: up to ``attempts`` attempts, all within the call's ``timeout``.

    Every attempt publishes the same request with the same ``request_id``, so a device can
    recognise a repeat (and answer it without acting twice). An attempt waits
    ``attempt_timeout`` seconds (default: what the call's timeout leaves after the pauses,
    shared by the attempts; the last attempt waits for whatever time is left), then, after
    a pause of ``backoff`` seconds doubling up to ``max_backoff``, the next one goes out. Only the exceptions in
    ``on`` are retried: a `RemoteError` is the device's answer and is not, unless listed.
    The call never outlives its ``timeout``.
    """

    attempts: int = 3
    backoff: float = 0.2
    max_backoff: float = 2.0
    on: Tuple[Type[BaseException], ...] = (RpcTimeoutError, ConnectionLostError)
    attempt_timeout: Optional[float] = None

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be at least 1, not {self.attempts}")
        if self.backoff < 0 or self.max_backoff < 0:
            raise ValueError("backoff and max_backoff must not be negative")
        if self.attempt_timeout is not None and self.attempt_timeout <= 0:
            raise ValueError(f"attempt_timeout must be positive, not {self.attempt_timeout}")


class _ClientState:
    """What both clients report about themselves, read from the core."""

    #: The ``presence=`` the client was made with.
    _presence_source: Optional[Presence]

    _core: _core.CoreClient

    @property
    def pending(self) -> int:
        """Calls not yet ended: waiting for a slot, for a SUBACK, or for their answer."""
        return self._core.pending

    @property
    def reply_subscriptions(self) -> int:
        """Reply filters held or being subscribed."""
        return self._core.reply_subscriptions

    @property
    def connected(self) -> bool:
        """Whether the MQTT connection is up."""
        return self._core.connected

    @property
    def connected_to(self) -> Optional[Tuple[str, int]]:
        """The broker node the connection is up with, as ``(host, port)``; None while it is
        down. With ``connections=N``, the first connection's (each fails over on its own)."""
        return self._core.connected_to[0]

    @property
    def client_id(self) -> str:
        """The MQTT client id of this client's connection (of a pool: the base of its ids)."""
        return self._core.client_id

    @property
    def client_ids(self) -> List[str]:
        """The client id of each connection: ``[client_id]``, or a pool's ``{client_id}-{i}``."""
        return self._core.client_ids

    def stats(self) -> Dict[str, Any]:
        """Counters (calls started, succeeded, timed out, failed remotely, cancelled, failed,
        ended by "no responders" or rejected by the broker; replies dropped as stray,
        duplicate or malformed; progress messages and scatter-gather answers received;
        reconnects), gauges (pending, reply
        subscriptions) and latency percentiles of answered calls (``latency_p50_ms``,
        ``latency_p90_ms``, ``latency_p99_ms``; None before the first answer)."""
        return self._core.stats()

    def presence(self, device_id: str) -> Optional[DevicePresence]:
        """What the client's presence source last said of ``device_id``: a `DevicePresence`
        (``online``, ``since``, ``reason``), or None when it said nothing (or the client has
        no source). A pool answers with its first connection's view; each connection reads
        the same events."""
        known = self._core.presence(device_id)
        return None if known is None else DevicePresence(*known)

    def report_presence(
        self, device_id: str, online: bool, *, since: Optional[float] = None, reason: Optional[str] = None
    ) -> None:
        """Tells the client a device's presence, from a source of your own (the client was
        made with one: an object with ``run(report)``, whose ``report`` is this method).
        ``since`` is Unix time in seconds. Calls waiting for the device go on once it is
        online. Raises ValueError on a client made without ``presence=``."""
        if self._presence_source is None:
            raise ValueError('the client has no presence source: make it with presence="reported" (or a source)')
        self._core.report_presence(device_id, online, since, reason)


class MqttRpcClient(_ClientState):
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
        protocol: ``"3.1.1"`` or ``"5"``. With 5, requests also carry the Response Topic
            and Correlation Data properties.
        qos: 0 or 1, for requests and reply subscriptions.
        keepalive: seconds between MQTT pings.
        username, password: broker credentials.
        reply_filter: one filter that covers every reply (for example
            ``"+/device/control/set/response/+"``), subscribed at connect; then no
            per-topic subscription is made.
        reply_to: ``"topic"`` (the seed convention: replies on
            ``{topic}/response/{request_id}``) or ``"inbox"``: replies on
            ``{inbox_prefix}/{client_id}/{request_id}``, told to the device as the MQTT 5
            Response Topic and as a ``reply_to`` member of the request body, and one
            subscription, ``{inbox_prefix}/{client_id}/+``, however many devices.
        inbox_prefix: the first levels of inbox reply topics.
        max_reply_subscriptions: at most this many reply filters held at once (per
            connection): the least recently used idle one is unsubscribed to make room, and
            with none idle a call waits for one within its timeout.
        max_in_flight: calls published and unanswered at once; further calls wait for a
            slot within their own timeout (and count in ``pending``).
        max_packet_size: the largest request or reply, in bytes.
        timeout: the default timeout of ``call()``, in seconds.
        connect_timeout: how long ``connect()`` may take, in seconds.
        session_expiry: seconds the broker keeps the session (reply subscriptions, queued
            QoS 1 replies) after the connection drops. Default: 60 with MQTT 5; 0 (a clean
            session) with 3.1.1, which cannot expire sessions.
        fail_fast: while the connection is down, fail new calls at once with
            `NotConnectedError` instead of holding them until it is back.
        reconnect_min_delay, reconnect_max_delay: reconnect attempts back off from the first
            to the second (seconds), doubling, each with random jitter.
        on_connection_change: called on the loop that connected, with a `ConnectionEvent`,
            whenever the connection comes up or goes down. Events are also logged to the
            ``mqtt_rpc`` logger.
        tls: connect with TLS; implied by any of the next four options.
        ca_certs: PEM file of the CA certificates to trust (default: the system's).
        certfile, keyfile: PEM files of the client certificate (chain) and its private key,
            for mutual TLS.
        alpn_protocols: ALPN protocols to offer (AWS IoT Core on port 443: ``x-amzn-mqtt-ca``).
        aws_topic_rules: refuse, before publishing, a request whose reply topic breaks AWS
            IoT Core's topic rules (at most 7 slashes and 256 bytes). `for_aws_iot` sets it.
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
        presence: where the client learns which devices are connected, so that a call to a
            device known offline fails at once with `DeviceOfflineError` (or, with
            ``wait_for_device=``, waits for it) instead of waiting out its timeout:
            ``"aws-lifecycle"`` (AWS IoT Core's lifecycle events, `AwsLifecycle`),
            ``"retained-status"`` (``{device}/status`` retained ``online``/``offline`` with
            a Last Will, `RetainedStatus`), an object with ``async run(report)``, a source
            of your own (`PresenceSource`), or ``"reported"``: your code calls
            `report_presence`. A device it never mentioned is called as always. One more
            subscription per connection (none for a source of your own).
        presence_prefix: the topic levels of AWS's lifecycle events (with
            ``presence="aws-lifecycle"``); tests publish them under a prefix of their own.
        presence_capacity: devices whose presence is remembered, per connection; past it the
            least recently used are forgotten (and called as unknown).
        device_of: which device a request topic addresses, for the presence check: a
            function of the topic returning the device id (None: no check for that call).
            Default: the topic's first level (``dev1/device/control/set`` -> ``dev1``).
        connections: a pool of this many connections, with client ids
            ``{client_id}-0`` ... ``{client_id}-{N-1}``; each call goes to the connection with
            the most room, and its answer comes back on that connection. ``pending``,
            ``stats()`` (with each connection's own under ``"connections"``) and ``close()``
            cover the pool; each connection reconnects on its own.
        quotas: ``"aws-iot-core"`` sets AWS IoT Core's per-connection limits (see
            `QUOTA_PRESETS`); options given explicitly win over the preset.
        publishes_per_second: at most this many publishes per connection in any one-second
            window; a call waits for its turn within its own timeout, and one that never got
            it raises `RpcTimeoutError` saying it was throttled on the client.
        max_unacked_publishes: QoS 1 publishes awaiting their PUBACK per connection.

    After a lost connection the client reconnects by itself. Calls in flight keep waiting for
    their answers until their own timeouts; calls made meanwhile wait for the connection (and
    for their reply subscriptions to be back) within their own timeouts.
    """

    #: The constructor arguments its caller passed (set by `records_given_arguments`).
    _given: FrozenSet[str]

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
        reply_filter: Optional[str] = None,
        reply_to: str = "topic",
        inbox_prefix: str = "mqtt-rpc/inbox",
        max_reply_subscriptions: int = 1000,
        max_in_flight: int = 4096,
        max_packet_size: int = 1024 * 1024,
        timeout: float = 10,
        connect_timeout: float = 10,
        session_expiry: Optional[float] = None,
        fail_fast: bool = False,
        reconnect_min_delay: float = 0.1,
        reconnect_max_delay: float = 10,
        on_connection_change: Optional[Callable[[ConnectionEvent], None]] = None,
        tls: bool = False,
        ca_certs: Optional[PathLike] = None,
        certfile: Optional[PathLike] = None,
        keyfile: Optional[PathLike] = None,
        alpn_protocols: Sequence[str] = (),
        aws_topic_rules: bool = False,
        cancel_on_abandon: bool = False,
        propagate_deadline: Optional[bool] = None,
        service_prefix: str = "mqtt-rpc/_srv",
        presence: Optional[Presence] = None,
        presence_prefix: str = "$aws/events/presence",
        presence_capacity: int = 100_000,
        device_of: Optional[DeviceOf] = None,
        connections: int = 1,
        quotas: Optional[str] = None,
        publishes_per_second: Optional[int] = None,
        max_unacked_publishes: Optional[int] = None,
    ) -> None:
        arguments = {name: value for name, value in locals().items() if name in _OPTION_NAMES}
        settings, chosen = config.resolve(self._given, arguments, config.CLIENT_OPTIONS, _RESPONDER_ONLY)
        self._settings, self._chosen = _checked(settings, chosen)
        # Made now so that bad options raise here; made again for a connect after close().
        self._core = self._new_core()
        # A client connected again keeps its id (and so its broker session and ACL rights).
        self._settings["client_id"] = self._core.client_id
        self._core_used = False
        self._open = False
        self._closing = False
        self._connecting: Optional["asyncio.Task[None]"] = None
        self._address = config.display_url(
            self._settings["host"],
            self._settings["port"],
            bool(self._settings["tls"]),
            self._settings["username"],
            self._settings["hosts"],
        )
        self._on_connection_change = on_connection_change
        self._timeout = self._settings["timeout"]
        self._device_of = device_of
        self._presence_source = self._settings["presence"]
        self._source_task: Optional["asyncio.Task[None]"] = None
        self._peer = Peer(self._core.client_id, self._settings["host"], self._settings["port"])

    @classmethod
    def from_url(cls, url: str, **options: Any) -> "MqttRpcClient":
        """A client for the broker at ``url``: ``mqtt://[user[:password]@]host[:port]`` (port
        1883) or ``mqtts://...`` (TLS, port 8883), any other option as a query parameter
        (``?client_id=web-1&protocol=5&qos=1&timeout=5``). Keyword arguments win over the
        URL's. Raises ValueError naming an unknown scheme, a bad port or an unknown
        parameter, before any network activity."""
        return cls(**config.url_arguments(url, config.CLIENT_OPTIONS, options))

    def _new_core(self) -> _core.CoreClient:
        # Only what was chosen (by the caller, MQTT_RPC_URL or a preset) crosses into the
        # core, by name; the core's defaults are the only defaults.
        s = self._settings
        names = (self._chosen | {"host", "port", "client_id"}) - _PYTHON_ONLY
        options = {name: s[name] for name in names if s[name] is not None}
        options["protocol"] = str(s["protocol"])
        for name in ("ca_certs", "certfile", "keyfile"):
            if name in options:
                options[name] = os.fspath(options[name])
        if "alpn_protocols" in options:
            options["alpn_protocols"] = list(options["alpn_protocols"])
        if "hosts" in options:
            options["hosts"] = [tuple(address) for address in options["hosts"]]
        if s["reply_to"] == "inbox":
            options["inbox_prefix"] = s["inbox_prefix"]
        if s["presence"] is not None:
            options.update(_presence.core_options(s["presence"], "presence_prefix" in self._chosen))
        return _core.CoreClient(options, _weak_handler(self))

    def __repr__(self) -> str:
        state = "connected" if self._open else "closing" if self._closing else "not connected"
        return f"<{type(self).__name__} {self._address} client_id={self.client_id!r} {state}>"

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
        client (``quotas="aws-iot-core"``: 100 publishes per second, 50 reply subscriptions,
        128 KB payloads, 100 unacknowledged QoS 1 publishes, AWS's topic rules). Pass
        ``connections=N`` for a pool of N connections (client ids ``{client_id}-{i}``) to go
        past one connection's 100 calls per second.

        Args:
            endpoint: your account's data endpoint, ``xxxxxxxx-ats.iot.<region>.amazonaws.com``
                (``aws iot describe-endpoint --endpoint-type iot:Data-ATS``).
            certfile, keyfile: the thing's certificate and private key (PEM).
            ca_certs: Amazon Root CA 1 (PEM); default: the system's trusted roots.
            client_id: the client id the IoT policy allows (often the thing name). Every
                connection needs its own: two replicas must not share one.
            port: 8883, or 443 where only HTTPS ports are open.
            options: any other `MqttRpcClient` option.
        """
        settings: Dict[str, Any] = {"quotas": "aws-iot-core", "keepalive": 60}
        settings.update(options)
        return cls(
            endpoint,
            port,
            client_id=client_id,
            certfile=certfile,
            keyfile=keyfile,
            ca_certs=ca_certs,
            alpn_protocols=["x-amzn-mqtt-ca"] if port == 443 else [],
            **settings,
        )

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

    def _unused_core(self) -> _core.CoreClient:
        # A core connects once in its life: a client closed or refused gets a new one.
        if self._core_used:
            self._core = self._new_core()
        self._core_used = True
        return self._core

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

    async def close(self, grace: float = 2.0) -> None:
        """Refuses new calls, waits up to ``grace`` seconds for the calls in flight to be
        answered, fails what is left with `ConnectionLostError`, disconnects, and releases
        the client's resources. Closing twice is harmless; a call or `connect()` after it
        connects again."""
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

    def _on_connection_event(
        self, kind: str, reconnect: bool, session_present: bool, detail: str, client_id: str
    ) -> None:
        if kind == "dropped":
            # Counted, not raised: said once per kind, the counter says how many followed.
            logger.warning(
                "client %s dropped %s; later ones are counted in stats()[%r], not logged",
                client_id,
                DROPPED.get(detail, detail),
                detail,
            )
            return
        connected = kind == "connected"
        taken_over = kind.startswith("taken_over")
        event = ConnectionEvent(connected, reconnect, session_present, detail, client_id, taken_over)
        if kind == "taken_over":
            # Once per episode (until a connection stays up): the counter says how many.
            logger.error("%s (%s)", _logs.taken_over(client_id), detail)
        elif taken_over:
            logger.debug("connection %s to %s taken over again; reconnecting", client_id, self._address)
        elif not connected:
            logger.warning("connection %s to %s lost (%s); reconnecting", client_id, self._address, detail)
        elif reconnect:
            kept = "kept" if session_present else "not kept: subscribing again"
            logger.info("reconnected %s to %s (session %s)", client_id, self._address, kept)
        else:
            logger.info("connected to %s as %s", self._address, client_id)
        if self._on_connection_change is not None:
            try:
                self._on_connection_change(event)
            except Exception:
                logger.exception("on_connection_change raised")

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
        timeout = bounded_timeout(self._timeout if timeout is None else timeout, topic)
        if not isinstance(payload, str):
            payload = typed.encode(payload)
        if response_model is not None:
            typed.check_model(response_model)
        aim = self._aim(topic, wait_for_device)
        if not self._open:
            await self._connection()
        observer = _observer.current
        if observer is not None:
            reply = await self._traced_call(observer, topic, payload, timeout, retry, aim)
        elif retry is not None:
            reply = await self._call_with_retry(topic, payload, timeout, retry, aim)
        else:
            loop = _get_running_loop()
            if aim:
                future, request_id = self._core.start_call(loop, topic, payload, timeout, None, None, *aim)
            else:
                future, request_id = self._core.start_call(loop, topic, payload, timeout)
            try:
                reply = await future
            except _CancelledError:
                self._core.forget(request_id)
                raise
        if response_model is None:
            return reply
        return typed.validate(reply, response_model)

    def _aim(self, topic: str, wait_for_device: Optional[float]) -> Tuple[Any, ...]:
        """The core's last two call arguments, ``device`` and ``wait_for_device``, or ()
        when neither is given (the usual case, which then converts two arguments fewer)."""
        if wait_for_device is not None and not (isinstance(wait_for_device, (int, float)) and wait_for_device >= 0):
            raise ValueError(f"wait_for_device must be a non-negative number of seconds, not {wait_for_device!r}")
        if self._device_of is None and wait_for_device is None:
            return ()
        return (self._device(topic), wait_for_device)

    def _device(self, topic: str) -> Optional[str]:
        """The device a call addresses, when ``device_of`` says (``""``: none); None
        leaves it to the core: the topic's first level."""
        if self._device_of is None:
            return None
        return self._device_of(topic) or ""

    async def _traced_call(
        self, observer: Observer, topic: str, payload: Any, timeout: float, retry: Optional[Retry], aim: Tuple[Any, ...]
    ) -> Dict[str, Any]:
        with observer.client_span("call", topic, self._peer) as span:
            if retry is not None:
                return await self._call_with_retry(topic, payload, timeout, retry, aim, span)
            loop = _get_running_loop()
            future, request_id = self._core.start_call(loop, topic, payload, timeout, None, span.headers, *aim)
            span.sent(request_id)
            try:
                reply: Dict[str, Any] = await future
            except _CancelledError:
                self._core.forget(request_id)
                raise
            return reply

    async def _call_with_retry(
        self, topic: str, payload: Any, timeout: float, retry: Retry, aim: Tuple[Any, ...], span: Optional[ClientSpan] = None
    ) -> Dict[str, Any]:
        headers = None if span is None else span.headers
        loop = _get_running_loop()
        deadline = loop.time() + timeout
        pauses = sum(min(retry.backoff * 2**k, retry.max_backoff) for k in range(retry.attempts - 1))
        per_attempt = retry.attempt_timeout or (timeout - pauses if timeout > pauses else timeout) / retry.attempts
        request_id: Optional[str] = None
        pause = retry.backoff
        last: Optional[BaseException] = None
        for attempt in range(1, retry.attempts + 1):
            left = deadline - loop.time()
            if left <= 0:
                break
            wait = left if attempt == retry.attempts else min(per_attempt, left)
            future, request_id = self._core.start_call(loop, topic, payload, wait, request_id, headers, *aim)
            if span is not None and attempt == 1:
                span.sent(request_id)
            try:
                return await future
            except _CancelledError:
                self._core.forget(request_id)
                raise
            except retry.on as error:
                last = error
            pause_now = min(pause, retry.max_backoff, deadline - loop.time())
            if attempt < retry.attempts and pause_now > 0:
                await asyncio.sleep(pause_now)
            pause *= 2
        if last is None or isinstance(last, RpcTimeoutError):
            raise RpcTimeoutError(f"MQTT call timed out after {timeout}s for topic '{topic}'", timeout, topic) from last
        raise last

    def stream(
        self, topic: str, payload: Payload, timeout: Optional[float] = None, idle_timeout: Optional[float] = None
    ) -> "CallStream":
        """Calls, yielding the device's progress messages (``{"request_id", "progress": ...}``)
        as they arrive and then its answer. ``timeout`` bounds the whole call; with
        ``idle_timeout`` it also fails when neither progress nor the answer has come for
        that long. Raises as `call` does. On a client not yet connected, the call is made
        (after connecting) when the iteration starts.

            async for message in client.stream("dev1/firmware/update", {"url": url}, timeout=600, idle_timeout=30):
                print(message.get("progress", message.get("result")))
        """
        call_timeout = bounded_timeout(self._timeout if timeout is None else timeout, topic)
        body = typed.encode(payload)
        device = self._device(topic)

        def begin(core: _core.CoreClient, on_message: OnMessage, headers: Optional[Headers]) -> Tuple[Any, str]:
            return core.start_stream(_get_running_loop(), topic, body, call_timeout, on_message, headers, device)

        return CallStream(self, begin, topic, "stream", idle_timeout=idle_timeout, ends_with_answer=True)

    def call_all(
        self, topic: str, payload: Payload, timeout: Optional[float] = None, max_replies: Optional[int] = None
    ) -> "CallStream":
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
        call_timeout = bounded_timeout(self._timeout if timeout is None else timeout, topic)
        if max_replies is not None and (not isinstance(max_replies, int) or max_replies < 1):
            raise ValueError(f"max_replies must be a positive integer or None, not {max_replies!r}")
        body = typed.encode(payload)

        def begin(core: _core.CoreClient, on_message: OnMessage, headers: Optional[Headers]) -> Tuple[Any, str]:
            loop = _get_running_loop()
            return core.start_gather(loop, topic, body, call_timeout, max_replies, on_message, headers)

        return CallStream(self, begin, topic, "call_all")

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
        if not self._open:
            await self._connection()
        observer = _observer.current
        if observer is None:
            self._core.notify(topic, body)
            return
        with observer.client_span("notify", topic, self._peer) as span:
            self._core.notify(topic, body, span.headers)

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
        batch = []
        for index, (topic, payload) in enumerate(requests):
            try:
                batch.append((topic, typed.encode(payload)))
            except PayloadError as error:
                raise PayloadError(f"request {index} of the batch: {error}") from error
        if response_model is not None:
            typed.check_model(response_model)
        if not self._open:
            await self._connection()
        observer = _observer.current
        spans = [] if observer is None else [observer.client_span("call", topic, self._peer) for topic, _ in batch]
        devices = None if self._device_of is None else [self._device(topic) or "" for topic, _ in batch]
        try:
            headers = [span.headers or [] for span in spans] or None
            future, request_ids = self._core.start_many(
                _get_running_loop(), batch, timeout, return_exceptions, headers, devices
            )
        except BaseException as error:
            _end_all(spans, error)
            raise
        for span, request_id in zip(spans, request_ids):
            span.sent(request_id)
        try:
            replies: List[Any] = await future
        except BaseException as error:
            # Cancelled, or ended by a failure: the calls still waiting have no one to tell.
            for request_id in request_ids:
                self._core.forget(request_id)
            _end_all(spans, error)
            raise
        for span, reply in zip(spans, replies):
            span.end(reply if isinstance(reply, BaseException) else None)
        if response_model is None:
            return replies
        return [_validated_in_place(reply, response_model, return_exceptions) for reply in replies]


def _end_all(spans: List[ClientSpan], error: BaseException) -> None:
    for span in spans:
        span.end(error)


def _validated_in_place(reply: Any, model: Any, return_exceptions: bool) -> Any:
    if isinstance(reply, BaseException):
        return reply
    try:
        return typed.validate(reply, model)
    except ReplyValidationError as error:
        if return_exceptions:
            return error
        raise


def _retrieve(attempt: "asyncio.Task[None]") -> None:
    if not attempt.cancelled():
        attempt.exception()


#: Messages a `CallStream` holds for a consumer that does not keep up; beyond, the oldest
#: are dropped (counted in `CallStream.dropped`, logged once per stream).
MAX_BUFFERED_MESSAGES = 10_000


class _Inbox:
    """The messages of one call waiting for its consumer, bounded. The core holds this (not
    the `CallStream`), so a stream dropped by its consumer is collected at once."""

    __slots__ = ("messages", "arrived", "dropped", "topic")

    def __init__(self, topic: str) -> None:
        self.messages: Deque[Dict[str, Any]] = collections.deque()
        self.arrived: Optional["asyncio.Future[None]"] = None
        self.dropped = 0
        self.topic = topic

    def offer(self, message: Dict[str, Any]) -> None:
        # Called on the loop's thread for each message, as it arrives.
        if len(self.messages) >= MAX_BUFFERED_MESSAGES:
            self.messages.popleft()
            self.dropped += 1
            if self.dropped == 1:
                logger.warning(
                    "a call on %s: the consumer does not keep up; dropping the oldest messages beyond %d",
                    self.topic,
                    MAX_BUFFERED_MESSAGES,
                )
        self.messages.append(message)
        arrived = self.arrived
        if arrived is not None and not arrived.done():
            arrived.set_result(None)


class CallStream:
    """The messages of one call, as an async iterator: the progress messages and then the
    answer of `MqttRpcClient.stream`, or the answers of `MqttRpcClient.call_all`.

    The call is published when the stream is created (on a client not yet connected: when
    the iteration starts, after connecting). Leaving the iteration early (a ``break``, an
    exception, ``aclose()``, the end of an ``async with`` block) ends the call at once: the
    client forgets it (and, with ``cancel_on_abandon``, tells the device). At most
    `MAX_BUFFERED_MESSAGES` messages wait for the consumer; past that the oldest are
    dropped and counted in ``dropped``. The answer of `stream` is never dropped.
    """

    def __init__(
        self,
        client: MqttRpcClient,
        begin: Begin,
        topic: str,
        operation: str,
        *,
        idle_timeout: Optional[float] = None,
        ends_with_answer: bool = False,
    ) -> None:
        self._client = client
        self._begin: Optional[Begin] = begin
        self._operation = operation
        self._span: Optional[ClientSpan] = None
        self._core: Optional[_core.CoreClient] = None
        self._future: Optional["asyncio.Future[Dict[str, Any]]"] = None
        self.request_id: Optional[str] = None
        self._inbox = _Inbox(topic)
        self._topic = topic
        self._idle_timeout = idle_timeout
        self._ends_with_answer = ends_with_answer
        self._finished = False
        if client._open:
            self._start()

    @property
    def dropped(self) -> int:
        """Messages dropped because the consumer did not keep up."""
        return self._inbox.dropped

    def _start(self) -> None:
        begin, self._begin = self._begin, None
        assert begin is not None
        self._core = self._client._core
        observer = _observer.current
        if observer is None:
            self._future, self.request_id = begin(self._core, self._inbox.offer, None)
            return
        span = observer.client_span(self._operation, self._topic, self._client._peer)
        try:
            self._future, self.request_id = begin(self._core, self._inbox.offer, span.headers)
        except BaseException as error:
            self._finished = True
            span.end(error)
            raise
        span.sent(self.request_id)
        self._span = span

    def _end_span(self, error: Optional[BaseException] = None) -> None:
        span, self._span = self._span, None
        if span is not None:
            span.end(error)

    def __aiter__(self) -> "CallStream":
        return self

    async def __anext__(self) -> Dict[str, Any]:
        if self._begin is not None and not self._finished:
            await self._client._connection()
            self._start()
        inbox = self._inbox
        while not self._finished:
            assert self._future is not None
            if inbox.messages:
                return inbox.messages.popleft()
            if self._future.done():
                # Messages sent before the call ended were queued before it: given first.
                self._finished = True
                return self._outcome()
            arrived = inbox.arrived = _get_running_loop().create_future()
            try:
                done, _ = await asyncio.wait(
                    {arrived, self._future}, timeout=self._idle_timeout, return_when=asyncio.FIRST_COMPLETED
                )
            except BaseException as error:
                self._abandon(error)
                raise
            finally:
                inbox.arrived = None
            if not done:
                idle = RpcTimeoutError(
                    f"MQTT call got neither progress nor an answer for {self._idle_timeout}s for topic '{self._topic}'",
                    self._idle_timeout,
                    self._topic,
                )
                self._abandon(idle)
                raise idle
        raise StopAsyncIteration

    def _outcome(self) -> Dict[str, Any]:
        assert self._future is not None
        try:
            answer = self._future.result()
        except NoRespondersError as error:
            if self._ends_with_answer:
                self._end_span(error)
                raise
            # Nobody subscribes to a scatter-gather topic: an empty gathering, not a failure.
            self._end_span()
            raise StopAsyncIteration from None
        except BaseException as error:
            self._end_span(error)
            raise
        self._end_span()
        if self._ends_with_answer:
            return answer
        raise StopAsyncIteration

    def _abandon(self, error: Optional[BaseException] = None) -> None:
        self._end_span(error)
        self._finished = True
        if self._future is not None and not self._future.done() and self._core is not None and self.request_id:
            self._core.forget(self.request_id)

    async def aclose(self) -> None:
        """Ends the call now if it is still going."""
        self._abandon()

    async def __aenter__(self) -> "CallStream":
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._abandon()

    def __del__(self) -> None:
        # Dropped while still going (a `break` out of `async for`): end the call now.
        if not self._finished:
            self._abandon()


#: The constructor's options that configure the connection (all but the event handler).
_OPTION_NAMES = frozenset(inspect.signature(MqttRpcClient.__init__).parameters) - {"self", "on_connection_change"}
_RESPONDER_ONLY = frozenset(config.RESPONDER_OPTIONS) - frozenset(config.CLIENT_OPTIONS)
#: Options the Python class handles itself (the call timeout, the reply mode, presets).
_PYTHON_ONLY = frozenset(
    {"timeout", "reply_to", "inbox_prefix", "quotas", "on_connection_change", "service_prefix", "presence", "device_of"}
)


def _checked(settings: Dict[str, Any], chosen: FrozenSet[str]) -> Tuple[Dict[str, Any], FrozenSet[str]]:
    """Applies a quota preset to the options not chosen explicitly, and checks the options
    that the core does not (the rest it checks when the core client is made). Returns the
    settings and the names chosen (the preset's included)."""
    preset = _quotas.preset(settings["quotas"], QUOTA_PRESETS)
    for name, value in preset.items():
        if name not in chosen:
            settings[name] = value
    chosen = chosen | frozenset(preset)
    connections, port, timeout = settings["connections"], settings["port"], settings["timeout"]
    if not (isinstance(connections, int) and connections >= 1):
        raise ValueError(f"connections must be a positive integer, not {connections!r}")
    if settings["reply_to"] not in ("topic", "inbox"):
        raise ValueError(f'reply_to must be "topic" or "inbox", not {settings["reply_to"]!r}')
    if not (isinstance(port, int) and 0 < port < 65536):
        raise ValueError(f"port must be a TCP port number (1-65535), not {port!r}")
    if not (isinstance(timeout, (int, float)) and timeout > 0):
        raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
    return settings, chosen


#: What each kind of dropped message is, for the one log line it gets.
DROPPED = {
    "replies_dropped_stray": "a reply that matched no pending call (late after its timeout, or not ours)",
    "replies_dropped_duplicate": "a second answer to a call already answered (a retry's, or a device answering twice)",
    "replies_dropped_malformed": "a message on a reply topic that is not a JSON object or names another request id",
    "replies_dropped_oversized": "a reply larger than max_packet_size",
    "messages_dropped": "a notification or cancellation: the publish-rate queue was full",
    "presence_events_malformed": "a presence event it could not read (no clientId, not JSON, or an unknown status)",
    "interim_dropped": "a progress message or scatter-gather answer: too many waited for the event loop",
}


def _weak_handler(client: MqttRpcClient) -> Callable[[str, bool, bool, str, str], None]:
    # The core holds its event handler where Python's garbage collector cannot see it: a
    # strong reference back to the client would keep an unclosed client alive for ever.
    method = weakref.WeakMethod(client._on_connection_event)

    def handler(kind: str, reconnect: bool, session_present: bool, detail: str, client_id: str) -> None:
        bound = method()
        if bound is not None:
            bound(kind, reconnect, session_present, detail, client_id)

    return handler
