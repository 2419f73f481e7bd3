"""What `MqttRpcClient` and `SyncMqttRpcClient` share: their options (keywords, groups,
`MQTT_RPC_URL`, presets) resolved into one set of settings, the Rust core made from them,
the connection events they log, and what they report about themselves."""

from __future__ import annotations

import logging
import os
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Dict, FrozenSet, List, Mapping, Optional, Sequence, Tuple

from . import _core, _logs, config, options as _options, presence as _presence, quotas as _quotas
from ._observer import Peer
from .presence import AwsLifecycle, DeviceOf, DevicePresence, Presence
from .quotas import QUOTA_PRESETS

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


#: Every flat option (the URL's names) and its value when nobody chose it; the groups'
#: fields take their groups' defaults.
FLAT_DEFAULTS: Dict[str, Any] = {
    "host": None,
    "port": None,
    "hosts": None,
    "client_id": None,
    "protocol": "3.1.1",
    "qos": 0,
    "keepalive": 60,
    "username": None,
    "password": None,
    "timeout": 10,
    "connect_timeout": 10,
    "session_expiry": None,
    "tls": False,
    "reply_to": "topic",
    "fail_fast": False,
    "cancel_on_abandon": False,
    "propagate_deadline": None,
    "service_prefix": "mqtt-rpc/_srv",
    "presence": None,
    "presence_prefix": AwsLifecycle().prefix,
    "connections": 1,
    **{flat: default for flat, default in _options.group_defaults().items() if flat in config.CLIENT_OPTIONS},
}
#: The clients' keywords that are flat options (the others are groups, or not options).
_PLAIN_KEYWORDS = (
    "host", "port", "hosts", "client_id", "protocol", "qos", "keepalive", "username", "password",
    "timeout", "connect_timeout", "session_expiry", "presence", "connections", "fail_fast",
    "cancel_on_abandon", "propagate_deadline", "service_prefix",
)
#: Options the Python classes handle themselves (the call timeout, the reply mode, presets).
_PYTHON_ONLY = frozenset({"timeout", "reply_to", "inbox_prefix", "quotas", "service_prefix", "presence", "device_of"})
_RESPONDER_ONLY = frozenset(config.RESPONDER_OPTIONS) - frozenset(config.CLIENT_OPTIONS)
#: The 0.x keywords a client still takes (with a DeprecationWarning).
_DEPRECATED = tuple(name for name in _options.DEPRECATED_KEYWORDS if name in config.CLIENT_OPTIONS)


def client_arguments(
    plain: Mapping[str, Any],
    given: FrozenSet[str],
    groups: Mapping[str, Any],
    deprecated: Mapping[str, Any],
    owner: str,
) -> Tuple[Dict[str, Any], FrozenSet[str]]:
    """A constructor's arguments as flat settings, and the names chosen: its plain keywords,
    its groups' fields set to other than their defaults, and the 0.x keywords (warned)."""
    # Frames up to the caller: client_arguments, _configure, __init__, its wrapper.
    _options.warn_deprecated(deprecated, owner, _DEPRECATED, stacklevel=5)
    arguments = dict(FLAT_DEFAULTS)
    arguments.update(plain)
    chosen = {name for name in given if name in FLAT_DEFAULTS} - set(groups)
    flat = _options.flatten(**{name: groups[name] for name in groups if name in given})
    for name, value in deprecated.items():
        if name in flat:
            raise ValueError(f"{name} is given twice: as a keyword and in its group ({_options.DEPRECATED_KEYWORDS[name]})")
        flat[name] = value
    presence = plain.get("presence")
    if "presence_prefix" in flat and isinstance(presence, AwsLifecycle):
        raise ValueError("presence_prefix goes with presence=\"aws-lifecycle\"; an AwsLifecycle has its own prefix")
    arguments.update(flat)
    return arguments, frozenset(chosen | set(flat))


def checked(settings: Dict[str, Any], chosen: FrozenSet[str]) -> Tuple[Dict[str, Any], FrozenSet[str]]:
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
    check_port(port)
    if not (isinstance(timeout, (int, float)) and timeout > 0):
        raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
    return settings, chosen


def check_port(port: Any) -> None:
    if not (isinstance(port, int) and 0 < port < 65536):
        raise ValueError(f"port must be a TCP port number (1-65535), not {port!r}")


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


class ClientBase:
    """The settings, the core and the reports of a client; the front classes add calls."""

    #: The constructor arguments its caller passed (set by `records_given_arguments`).
    _given: FrozenSet[str]
    _on_connection_change: Optional[Callable[[ConnectionEvent], None]] = None

    def _configure(self, constructor: Mapping[str, Any]) -> None:
        """Resolves the constructor's arguments (its ``locals()``) into settings and a core."""
        plain = {name: constructor[name] for name in _PLAIN_KEYWORDS}
        groups = {name: constructor[name] for name in ("tls", "limits", "reconnect", "replies")}
        device_of: Optional[DeviceOf] = constructor["device_of"]
        deprecated = constructor["deprecated"]
        arguments, given = client_arguments(plain, self._given, groups, deprecated, type(self).__name__)
        settings, chosen = config.resolve(given, arguments, config.CLIENT_OPTIONS, _RESPONDER_ONLY)
        self._settings, self._chosen = checked(settings, chosen)
        # Made now so that bad options raise here; made again for a connect after close().
        self._core = self._new_core()
        # A client connected again keeps its id (and so its broker session and ACL rights).
        self._settings["client_id"] = self._core.client_id
        self._core_used = False
        self._open = False
        self._closing = False
        s = self._settings
        self._address = config.display_url(s["host"], s["port"], bool(s["tls"]), s["username"], s["hosts"])
        self._timeout: float = s["timeout"]
        self._device_of = device_of
        self._presence_source: Optional[Presence] = s["presence"]
        self._peer = Peer(self._core.client_id, s["host"], s["port"])

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

    def _unused_core(self) -> _core.CoreClient:
        # A core connects once in its life: a client closed or refused gets a new one.
        if self._core_used:
            self._core = self._new_core()
        self._core_used = True
        return self._core

    def __repr__(self) -> str:
        state = "connected" if self._open else "closing" if self._closing else "not connected"
        return f"<{type(self).__name__} {self._address} client_id={self.client_id!r} {state}>"

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

    # --- what a client reports about itself, read from the core ----------------------------

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
        """The MQTT client id of this client's connection (of a pool: the base of its ids),
        its placeholders filled in."""
        return self._core.client_id

    @property
    def client_ids(self) -> List[str]:
        """The client id of each connection: ``[client_id]``, or a pool's ``{client_id}-{i}``."""
        return self._core.client_ids

    def stats(self) -> Dict[str, Any]:
        """Counters (calls started, succeeded, timed out, failed remotely, cancelled, failed,
        ended by "no responders" or rejected by the broker; replies dropped as stray,
        duplicate or malformed; progress messages and scatter-gather answers received;
        reconnects and takeovers), gauges (pending, reply subscriptions) and latency
        percentiles of answered calls (``latency_p50_ms``, ``latency_p90_ms``,
        ``latency_p99_ms``; None before the first answer)."""
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


def url_keywords(url: str, overrides: Mapping[str, Any], tolerated: Sequence[str] = ()) -> Dict[str, Any]:
    """`from_url`'s constructor keywords: the URL's settings in their groups (a URL's flat
    names are never deprecated), with ``overrides`` winning."""
    settings = config.parse_url(url, config.CLIENT_OPTIONS, frozenset(tolerated))
    prefix = settings.pop("presence_prefix", None)
    keywords = _options.group_arguments(settings)
    if prefix is not None:
        if keywords.get("presence") not in (None, "aws-lifecycle"):
            raise ValueError("presence_prefix goes with presence=aws-lifecycle")
        keywords["presence"] = AwsLifecycle(prefix=prefix)
    keywords.update(overrides)
    return keywords


def _weak_handler(client: ClientBase) -> Callable[[str, bool, bool, str, str], None]:
    # The core holds its event handler where Python's garbage collector cannot see it: a
    # strong reference back to the client would keep an unclosed client alive for ever.
    method = weakref.WeakMethod(client._on_connection_event)

    def handler(kind: str, reconnect: bool, session_present: bool, detail: str, client_id: str) -> None:
        bound = method()
        if bound is not None:
            bound(kind, reconnect, session_present, detail, client_id)

    return handler
