"""`Responder`: the device side. Register handlers for request topic filters; each request
runs its handler on the asyncio loop (plain functions in a worker thread), and the handler's
result, or the error it raised, is published where the caller waits for it. The Rust core
does the MQTT work (subscriptions, routing answers, reconnects) and decides what a request
becomes (a run, a repeat answered from its answers, "overloaded", a cancellation), as it
does for a device written in Rust."""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import json
import logging
import os
import signal
import time
from types import TracebackType
from typing import Any, Awaitable, Callable, Dict, FrozenSet, List, Optional, Sequence, Set, Tuple, Type, Union

from . import _core, _observer, config
from . import _logs, options as _options, quotas as _quotas
from .options import TLS, Limits
from ._responder_options import CLIENT_ONLY, FLAT_DEFAULTS, LIMIT_FIELDS, grouped_options, member_session_expiry, service_options
from ._logs import LogOncePerKind
from .context import RequestContext, serving
from ._observer import Headers, Peer, ServerSpan
from .config import records_given_arguments
from .errors import MqttRpcError

logger = logging.getLogger("mqtt_rpc")

Handler = Callable[[Dict[str, Any]], Union[Any, Awaitable[Any]]]
PathLike = Union[str, "os.PathLike[str]"]

#: JSON-RPC's code for an error inside the handler.
INTERNAL_ERROR = -32603
#: The code of the answer to a request that found the responder over its queue limit.
OVERLOADED = -32000
#: How long a leave started by a signal (`run`, `serve_until_signal`, ``mqtt-rpc serve``)
#: may take: within Kubernetes' default termination period of 30 s.
DEFAULT_GRACE = 25.0
#: How long after its grace a leave still waits for its DISCONNECT to be written (a broker
#: that stopped reading) before the connection is dropped.
_DISCONNECT_TIMEOUT = 5.0
class RpcHandlerError(MqttRpcError):
    """Raise it in a handler to answer with this error: the caller gets a `RemoteError`
    with the same ``code``, ``message`` and ``data``."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.data = data


class Responder:
    """Answers mqtt-rpc requests.

        responder = Responder("localhost", 1883)

        @responder.handle("+/device/control/set")
        async def control(request: dict) -> dict:
            return {"status": "ok", "action": request["action"]}

        await responder.serve()          # until close(); or: async with responder: ...

    Handlers take the request object (a ``dict``, ``request_id`` included) and return a
    JSON-serialisable result. A handler with a second (required) parameter gets a
    ``report(progress)`` function: each call sends ``{"request_id", "progress": progress}`` to the caller at once
    (`MqttRpcClient.stream` yields them; `call` ignores them). One that raises `RpcHandlerError` answers with its code,
    message and data; any other exception answers with code -32603 (internal error).
    A request without ``request_id`` and reply topic is a notification: its handler runs,
    nothing is answered. A ``{"request_id": ..., "cancel": true}`` message (sent by a client
    with ``cancel_on_abandon=True`` when it gives up) cancels that request's handler task;
    nothing is answered.

    Without a host, the broker and options come from ``MQTT_RPC_URL`` (see
    `MqttRpcClient`); `from_url` takes a URL string.

    Args:
        host, port, hosts, client_id, protocol, qos, keepalive, username, password, tls,
            connect_timeout, session_expiry: as for `MqttRpcClient` (``tls``: True or a
            `TLS`).
        share_group: join an MQTT shared-subscription group (``$share/<group>/<filter>``):
            the broker gives each request to one responder of the group (a pool).
        max_concurrency: handlers running at once; more requests wait for a turn.
        max_queued: requests waiting for a turn; beyond it a request is answered at once
            with an "overloaded" error (code -32000) rather than queued without bound.
        reply_cache_size, reply_cache_ttl: answers kept per ``request_id`` (how many, for
            how many seconds) so that a repeated request, a client's retry, gets the same
            answer again without running its handler twice; a repeat that arrives while the
            first copy runs gets that run's answer. 0 turns this off.
        name, version, metadata: make it a named service that answers discovery and health
            requests (`MqttRpcClient.discover`, ``ping``, ``service_stats``; the wire format
            is docs/services.md): its name (shared by its instances, each told apart by its
            client id), its version, and a JSON object of facts for operators.
        service_prefix: the topic levels those requests come under (as the client's).
        session_expiry: how long the broker keeps the session after the connection drops
            (as for `MqttRpcClient`; MQTT 5 default 60 s). In a ``share_group`` the default
            is 0: the broker then stops routing requests to a member that crashed as soon
            as it notices (at most 1.5 times ``keepalive``), instead of queueing them for
            the session's life; a longer one is kept but warned about.
        limits: a `Limits` (of which a responder takes ``max_subscriptions`` and
            ``aws_rules``), or ``"aws-iot-core"``, which keeps AWS IoT Core's per-connection limits: every
            filter (handlers and discovery) counts against its 50 subscriptions, and
            `start` refuses a responder that needs more, before subscribing anything;
            handler filters must fit its topic rules (7 slashes, 256 bytes, with the
            answer's two extra levels) and the client id its 128 bytes; and no two
            CONNECTs of the client id are closer than a second.

    A request whose caller has stopped waiting before its handler starts (its ``timeout_ms``
    or MQTT 5 Message Expiry has passed, say while it waited for a turn) is dropped without
    an answer and counted as ``requests_expired``. A handler reads its request's deadline
    with `mqtt_rpc.current_request()`, and calls it makes never wait past it.
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
        share_group: Optional[str] = None,
        max_concurrency: int = 100,
        max_queued: int = 10_000,
        reply_cache_size: int = 10_000,
        reply_cache_ttl: float = 300.0,
        connect_timeout: float = 10,
        tls: Union[bool, TLS] = False,
        limits: Union[Limits, str, None] = None,
        name: Optional[str] = None,
        version: Optional[str] = None,
        metadata: Optional[Dict[str, Any]] = None,
        service_prefix: str = "mqtt-rpc/_srv",
        session_expiry: Optional[float] = None,
        **deprecated: Any,
    ) -> None:
        service = {"name": name, "version": version, "metadata": metadata}
        arguments = {key: value for key, value in locals().items() if key in config.RESPONDER_OPTIONS}
        arguments.update(host=host, port=port, hosts=hosts, **FLAT_DEFAULTS)
        given, grouped = grouped_options(self._given, tls, limits, deprecated)
        arguments.update(grouped)
        settings, self._chosen = config.resolve(given, arguments, config.RESPONDER_OPTIONS, CLIENT_ONLY)
        max_concurrency, max_queued = settings["max_concurrency"], settings["max_queued"]
        if max_concurrency < 1 or max_queued < 0 or settings["reply_cache_size"] < 0:
            raise ValueError("max_concurrency must be at least 1, max_queued and reply_cache_size not negative")
        if not (isinstance(settings["port"], int) and 0 < settings["port"] < 65536):
            raise ValueError(f"port must be a TCP port number (1-65535), not {settings['port']!r}")
        ca_certs, certfile, keyfile = settings["ca_certs"], settings["certfile"], settings["keyfile"]
        client_id = settings["client_id"]
        self._options = dict(
            host=settings["host"],
            port=settings["port"],
            hosts=settings.get("hosts"),
            # Placeholders are filled in once: a responder started again keeps its id.
            client_id=None if client_id is None else _core.expand_client_id(client_id),
            protocol=str(settings["protocol"]),
            qos=settings["qos"],
            keepalive=float(settings["keepalive"]),
            username=settings["username"],
            password=settings["password"],
            share_group=settings["share_group"],
            connect_timeout=float(settings["connect_timeout"]),
            tls=bool(settings["tls"] or ca_certs or certfile or keyfile or settings["alpn_protocols"]),
            ca_certs=None if ca_certs is None else os.fspath(ca_certs),
            certfile=None if certfile is None else os.fspath(certfile),
            keyfile=None if keyfile is None else os.fspath(keyfile),
            alpn_protocols=list(settings["alpn_protocols"]),
        )
        self._address = config.display_url(
            self._options["host"], self._options["port"], self._options["tls"], self._options["username"], self._options["hosts"]
        )
        for option in ("max_concurrency", "max_queued", "reply_cache_size", "reply_cache_ttl"):
            self._options[option] = settings[option]
        session = member_session_expiry(settings["session_expiry"], settings["share_group"])
        self._options["session_expiry"] = session
        if session is not None:
            self._chosen = self._chosen | {"session_expiry"}
        preset = _quotas.preset(settings["quotas"], _quotas.RESPONDER_QUOTA_PRESETS)
        preset.update((name, grouped[name]) for name in LIMIT_FIELDS if name in grouped)
        self._options.update(preset)
        self._chosen = self._chosen | frozenset(preset)
        self._service = service_options(service, settings["service_prefix"])
        self._descriptions: List[Optional[str]] = []
        self._filters: List[str] = []
        self._handlers: List[Handler] = []
        self._max_concurrency = max_concurrency
        self._core: Optional[_core.CoreResponder] = None
        self._left = False
        self._peer: Peer  # once started: the client id is the core's
        self._serving: Optional["asyncio.Future[None]"] = None
        self._ready: Optional[asyncio.Event] = None
        self._turns: Optional[asyncio.Semaphore] = None
        self._tasks: Set["asyncio.Task[None]"] = set()
        # Handler tasks by run number, for cancellations.
        self._runs: Dict[int, "asyncio.Task[None]"] = {}
        # A handler failing on every request logs its first traceback, then once a minute.
        self._failures = LogOncePerKind(logger)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> "Responder":
        """A responder for the broker at ``url``, as `MqttRpcClient.from_url` (query
        parameters: the responder's own options); keyword arguments win over the URL's."""
        settings = _options.group_arguments(config.parse_url(url, config.RESPONDER_OPTIONS))
        settings.update(options)
        return cls(**settings)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._address} filters={self._filters!r}>"

    def handle(self, topic_filter: str, description: Optional[str] = None) -> Callable[[Handler], Handler]:
        """Registers the decorated function for requests on ``topic_filter`` (the first
        registered filter that matches a request's topic wins). Register before serving.
        ``description`` says what it does to those who `discover` a named responder."""

        def register(handler: Handler) -> Handler:
            if self._core is not None:
                raise RuntimeError("register handlers before start() or serve()")
            self._filters.append(topic_filter)
            self._handlers.append(handler)
            self._descriptions.append(description)
            return handler

        return register

    async def start(self) -> None:
        """Connects, subscribes every filter, and returns once requests are being served."""
        if self._core is not None:
            raise RuntimeError("this responder was already started")
        if not self._filters:
            raise ValueError("register at least one handler with @responder.handle(filter)")
        # Only what was chosen crosses into the core, by name: its defaults are the defaults.
        options = {
            name: value
            for name, value in self._options.items()
            if value is not None and (name in self._chosen or name in ("host", "port", "protocol"))
        }
        if self._service:
            options.update(self._service, descriptions=list(self._descriptions))
        self._core = _core.CoreResponder(options, list(self._filters))
        self._peer = Peer(self._core.client_id, self._options["host"], self._options["port"])
        loop = asyncio.get_running_loop()
        self._ready = asyncio.Event()
        self._turns = asyncio.Semaphore(self._max_concurrency)
        self._serving = self._core.serve(loop, self._on_request, self._on_cancel, self._on_drop, self._ready.set)
        ready: "asyncio.Future[Any]" = asyncio.ensure_future(self._ready.wait())
        serving: "asyncio.Future[Any]" = self._serving
        await asyncio.wait({ready, serving}, return_when=asyncio.FIRST_COMPLETED)
        if self._serving.done():
            ready.cancel()
            self._serving.result()  # raises why the first connection failed
        logger.info("responder serving %s", ", ".join(self._filters))

    async def serve(self) -> None:
        """Serves until `close()` (starting first if needed)."""
        if self._core is None:
            await self.start()
        assert self._serving is not None
        await asyncio.shield(self._serving)

    async def close(self, grace: float = 5.0) -> None:
        """Leaves gracefully, as a member of a pool must in a rolling deploy: unsubscribes
        every filter first, so that the broker routes new requests to the other members;
        lets the handlers running, and those of requests that arrived before the
        unsubscribe took effect, answer within ``grace`` seconds; publishes their answers
        (QoS 1: until the broker acknowledges them); then disconnects (MQTT 5: ending the
        session at once). Handlers still running when the grace is over are cancelled and
        their callers get no answer. ``stats()`` says what the leave did (``leave_answered``,
        ``leave_unsent``, ``leave_ms``), and the log says it once. It never takes much more
        than ``grace``, even with the broker gone."""
        if not (isinstance(grace, (int, float)) and grace > 0):
            raise ValueError(f"grace must be a positive number of seconds, not {grace!r}")
        await self._leave(float(grace))

    async def close_now(self) -> None:
        """Stops at once: handlers still running are cancelled, unanswered; the answers
        already given are written, then it disconnects."""
        await self._cancel_runs()
        await self._leave(0.0)

    async def _cancel_runs(self) -> None:
        tasks = set(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _leave(self, grace: float) -> None:
        core, serving = self._core, self._serving
        if core is None or serving is None or self._left:
            return
        self._left = True
        try:
            if not serving.done():
                core.leave(grace)
                # The core disconnects once every run answered, or at the deadline.
                await asyncio.wait({serving}, timeout=grace)
                await self._cancel_runs()
                await asyncio.wait({serving}, timeout=_DISCONNECT_TIMEOUT)
                if not serving.done():
                    core.stop()
            await serving
        finally:
            core.detach()
        self._report_leave(core.stats())

    def _report_leave(self, stats: Dict[str, int]) -> None:
        if not (stats["leave_ms"] or stats["leave_answered"] or stats["leave_unsent"]):
            return
        level = logging.WARNING if stats["leave_unsent"] else logging.INFO
        logger.log(
            level,
            "responder %s left in %d ms: %d answers sent during the leave, %d not delivered",
            self.client_id,
            stats["leave_ms"],
            stats["leave_answered"],
            stats["leave_unsent"],
        )

    def run(self, grace: float = DEFAULT_GRACE) -> None:
        """Serves until SIGTERM or SIGINT, then leaves gracefully within ``grace`` seconds
        (see `close`); a second signal stops at once. The entry point of a device process:
        it blocks, running an event loop of its own."""
        asyncio.run(self.serve_until_signal(grace))

    async def serve_until_signal(self, grace: float = DEFAULT_GRACE) -> None:
        """`serve`, until SIGTERM or SIGINT starts a graceful leave within ``grace`` seconds
        (a second signal stops at once). For the event loop's main thread (signals are
        delivered there)."""
        if not (isinstance(grace, (int, float)) and grace > 0):
            raise ValueError(f"grace must be a positive number of seconds, not {grace!r}")
        loop = asyncio.get_running_loop()
        signalled = asyncio.Event()

        def on_signal() -> None:
            if signalled.is_set() and self._core is not None:
                self._core.stop()  # the second one: at once
            signalled.set()

        for number in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(number, on_signal)
        try:
            if self._core is None:
                await self.start()
            assert self._serving is not None
            waiting: "asyncio.Future[Any]" = asyncio.ensure_future(signalled.wait())
            serving: "asyncio.Future[Any]" = self._serving
            await asyncio.wait({waiting, serving}, return_when=asyncio.FIRST_COMPLETED)
            waiting.cancel()
            if signalled.is_set():
                logger.info("responder %s: signalled, leaving within %g s", self.client_id, grace)
                await self.close(grace)
            else:
                await self._serving  # it ended by itself: its error, if any
        finally:
            for number in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(number)

    async def __aenter__(self) -> "Responder":
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        await self.close()

    @property
    def connected_to(self) -> Optional[Tuple[str, int]]:
        """The broker node it is connected to, as ``(host, port)``; None while down (or
        before `start`)."""
        return None if self._core is None else self._core.connected_to

    @property
    def client_id(self) -> Optional[str]:
        """The MQTT client id (once started; before, the one given, if any)."""
        return self._options["client_id"] if self._core is None else self._core.client_id

    def stats(self) -> Dict[str, Any]:
        """Requests and notifications received, malformed ones dropped, repeats answered
        without a second run, requests refused as overloaded, requests dropped because their
        caller had stopped waiting (``requests_expired``), discovery and health requests
        answered (``control_requests``), answers sent; and under
        ``"handlers"``, by filter, each handler's ``requests`` (answers given), ``errors``
        (answers that were errors), ``processing_ms_total`` and ``processing_ms_average``
        (from the request's admission to its answer, a wait for a free turn included) and
        ``last_error`` (``"code: message"``, or None)."""
        if self._core is None:
            return {}
        handlers = {}
        for handler in self._core.handlers([]):
            total_ms = handler["processing_seconds_total"] * 1000.0
            handlers[handler["filter"]] = {
                "requests": handler["requests"],
                "errors": handler["errors"],
                "processing_ms_total": total_ms,
                "processing_ms_average": total_ms / handler["requests"] if handler["requests"] else None,
                "last_error": handler["last_error"],
            }
        return {**self._core.stats(), "handlers_running_or_waiting": len(self._tasks), "handlers": handlers}

    def _on_request(
        self,
        index: int,
        topic: str,
        body: Dict[str, Any],
        reply: _core.ReplyHandle,
        user_properties: Optional[Headers],
    ) -> None:
        # The core admitted it: a run within max_concurrency + max_queued, not a repeat.
        remaining = reply.remaining()
        request_id = body.get("request_id")
        request = RequestContext(
            request_id if isinstance(request_id, str) else None,
            topic,
            None if remaining is None else time.monotonic() + remaining,
        )
        observer = _observer.current
        if observer is None:
            run = self._run(self._handlers[index], body, reply, request, None)
        else:
            run = self._traced_run(observer, index, request, body, reply, user_properties)
        task = asyncio.ensure_future(run)
        number = reply.number
        self._tasks.add(task)
        self._runs[number] = task

        def finished(task: "asyncio.Task[None]") -> None:
            self._tasks.discard(task)
            self._runs.pop(number, None)
            # A task cancelled before it first ran never reached its own ending: end the run
            # here (after an answer this does nothing).
            reply.abandon()

        task.add_done_callback(finished)

    def _on_drop(self, counter: str) -> None:
        if counter == "takeovers":
            # Once per episode (until a connection stays up): the counter says how many.
            logger.error(_logs.taken_over(str(self.client_id)))
            return
        # Counted, not raised: said once per kind, the counter says how many followed.
        logger.warning(
            "responder dropped %s; later ones are counted in stats()[%r], not logged",
            _DROPPED.get(counter, "a request"),
            counter,
        )

    def _on_cancel(self, number: int) -> None:
        # The caller gave up on this run: stop its handler; nobody waits for an answer.
        task = self._runs.get(number)
        if task is not None:
            task.cancel()

    async def _run(
        self,
        handler: Handler,
        request: Dict[str, Any],
        reply: _core.ReplyHandle,
        context: RequestContext,
        span: Optional[ServerSpan],
    ) -> None:
        # This task's own context: the handler, and the calls it makes, see its request.
        serving(context)
        answer = await self._answer(handler, request, reply, context, span)
        if answer is None:
            return
        if answer[0] == "result":
            reply.send_result(answer[1])
        else:
            reply.send_error(answer[1], answer[2], answer[3])

    async def _traced_run(
        self,
        observer: _observer.Observer,
        index: int,
        context: RequestContext,
        request: Dict[str, Any],
        reply: _core.ReplyHandle,
        user_properties: Optional[Headers],
    ) -> None:
        # Entered inside the run's task: the handler, and the calls it makes, see the span.
        topic_filter = self._filters[index]
        with observer.server_span(topic_filter, context.topic, request, user_properties, self._peer) as span:
            await self._run(self._handlers[index], request, reply, context, span)

    async def _answer(
        self,
        handler: Handler,
        request: Dict[str, Any],
        reply: _core.ReplyHandle,
        context: RequestContext,
        span: Optional[ServerSpan],
    ) -> Optional["Answer"]:
        assert self._turns is not None
        async with self._turns:
            if context.remaining() <= 0:
                # Its caller stopped waiting while it waited for a turn: no handler, no answer.
                if reply.expire():
                    self._on_drop("requests_expired")
                return None
            arguments: Tuple[Any, ...] = (request,)
            if _takes_report(handler):
                arguments = (request, _reporter(reply))
            try:
                if inspect.iscoroutinefunction(handler):
                    result = await handler(*arguments)
                else:
                    # A plain function may block: run it in a worker thread, not on the loop,
                    # with this task's context (its span and request, for the calls it makes).
                    copied = contextvars.copy_context()
                    result = await asyncio.get_running_loop().run_in_executor(None, copied.run, handler, *arguments)
                    if inspect.isawaitable(result):
                        result = await result
                # NaN and infinities are not JSON: refused here, answered as the handler's error.
                return ("result", json.dumps(result, allow_nan=False))
            except RpcHandlerError as error:
                if span is not None:
                    span.failed(error, error.code)
                data = None if error.data is None else json.dumps(error.data, default=str)
                return ("error", error.code, error.message, data)
            except Exception as error:  # the handler's failure becomes the caller's RemoteError
                if span is not None:
                    span.failed(error, INTERNAL_ERROR)
                # A bug in the application: logged with its traceback, not hidden at DEBUG, and
                # at most once a minute per handler however often it fails.
                name = getattr(handler, "__qualname__", repr(handler))
                self._failures.log(
                    name, logging.ERROR, "handler %s failed on request %s", name, request.get("request_id"), exc_info=True
                )
                return ("error", INTERNAL_ERROR, f"{type(error).__name__}: {error}", None)


#: What each kind of dropped or refused request is, for the one log line it gets.
_DROPPED = {
    "dropped_malformed": "a request that is not a JSON object",
    "dropped_oversized": "a request larger than max_packet_size",
    "dropped_overloaded": "a request its event loop was too far behind to take (answered 'overloaded')",
    "requests_overloaded": "a request beyond max_concurrency + max_queued (answered 'overloaded')",
    "repeats_dropped": "a repeat of a running request that already had 16 repeats waiting",
    "requests_expired": "a request whose caller had stopped waiting before its handler started",
}

#: A handler's outcome, ready to send: ("result", json) or ("error", code, message, data json).
Answer = Tuple[Any, ...]


def _takes_report(handler: Handler) -> bool:
    """Whether the handler wants `report`: a second positional parameter without a default."""
    try:
        parameters = inspect.signature(handler).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    required = [p for p in parameters if p.kind in positional and p.default is inspect.Parameter.empty]
    return len(required) >= 2


def _reporter(reply: _core.ReplyHandle) -> Callable[[Any], None]:
    def report(progress: Any) -> None:
        reply.send_progress(json.dumps(progress, default=str, allow_nan=False))

    return report
