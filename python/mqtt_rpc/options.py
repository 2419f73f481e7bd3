"""Option groups: the concerns of a connection that have several knobs, each one frozen,
typed object, checked when it is made (a bad field raises ``ValueError`` naming it), and
shared by `MqttRpcClient`, `SyncMqttRpcClient` and `Responder` wherever it applies.

    MqttRpcClient(
        "broker.example.com",
        tls=TLS(ca_certs="ca.pem", certfile="client.pem", keyfile="client.key"),
        limits=Limits.aws_iot_core(),               # or limits="aws-iot-core"
        reconnect=Reconnect(min_delay=1, max_delay=30),
        replies=Replies.inbox(),                    # or replies="inbox"
    )

A group's fields left at their defaults leave `MQTT_RPC_URL`'s values and a preset's in
place; fields set to anything else win. The URL keeps its flat names (``?ca_certs=...``,
``?max_in_flight=...``, ``?quotas=aws-iot-core``), and so do the keywords of the 0.x
series, which still work with a ``DeprecationWarning`` naming the new form
(`DEPRECATED_KEYWORDS`)."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field, fields
from typing import Any, Dict, FrozenSet, Mapping, Optional, Sequence, Tuple, Union

PathLike = Union[str, "os.PathLike[str]"]

#: The presets ``limits=`` takes by name.
LIMIT_PRESETS = ("aws-iot-core",)


def _positive_int(owner: str, name: str, value: Any, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{owner}.{name} must be a positive integer, not {value!r}")


def _seconds(owner: str, name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 or value == float("inf"):
        raise ValueError(f"{owner}.{name} must be a non-negative number of seconds, not {value!r}")


@dataclass(frozen=True)
class TLS:
    """TLS for the connection; giving one turns TLS on (``tls=True`` is TLS with the
    system's trusted CAs and no client certificate).

    Attributes:
        ca_certs: PEM file of the CA certificates to trust (default: the system's).
        certfile, keyfile: PEM files of the client certificate (chain) and its private
            key, for mutual TLS (AWS IoT Core's things); both or neither.
        alpn_protocols: ALPN protocols to offer (AWS IoT Core on port 443:
            ``("x-amzn-mqtt-ca",)``).
    """

    ca_certs: Optional[PathLike] = None
    certfile: Optional[PathLike] = None
    keyfile: Optional[PathLike] = None
    alpn_protocols: Tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("ca_certs", "certfile", "keyfile"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, (str, os.PathLike)):
                raise ValueError(f"TLS.{name} must be a path, not {value!r}")
        if (self.certfile is None) != (self.keyfile is None):
            missing = "keyfile" if self.keyfile is None else "certfile"
            raise ValueError(f"TLS.{missing} is needed too: a client certificate goes with its key")
        if isinstance(self.alpn_protocols, str) or not all(isinstance(p, str) and p for p in self.alpn_protocols):
            raise ValueError(f"TLS.alpn_protocols must be a sequence of protocol names, not {self.alpn_protocols!r}")
        object.__setattr__(self, "alpn_protocols", tuple(self.alpn_protocols))


@dataclass(frozen=True)
class Limits:
    """What one connection holds at most, kept on the client before the broker has to
    enforce it. `Limits.aws_iot_core()` (or ``limits="aws-iot-core"``) is AWS IoT Core's.

    Attributes:
        max_in_flight: calls published and unanswered at once; more wait for a slot
            within their own timeout.
        max_subscriptions: filters held at once, every filter counted (reply filters, the
            inbox, presence; a responder's handler and discovery filters). A client drops
            the least recently used idle reply filter to make room, or a call waits for
            one; a responder over it is refused by ``start()``.
        max_packet_size: the largest request or answer, in bytes.
        publishes_per_second: at most this many publishes in any one-second window; a call
            waits for its turn within its own timeout (None: no limit).
        max_unacked_publishes: QoS 1 publishes awaiting their PUBACK (None: the broker's).
        max_devices: devices whose presence is remembered (least recently used first
            forgotten).
        aws_rules: AWS IoT Core's rules: topics of at most 7 slashes and 256 bytes (a
            request's reply topic included), client ids of 128 bytes, one CONNECT a second.
    """

    max_in_flight: int = 4096
    max_subscriptions: int = 1000
    max_packet_size: int = 1024 * 1024
    publishes_per_second: Optional[int] = None
    max_unacked_publishes: Optional[int] = None
    max_devices: int = 100_000
    aws_rules: bool = False
    #: The preset the other fields start from (``"aws-iot-core"``), if any.
    preset: Optional[str] = field(default=None, repr=False)
    #: Fields given to a preset's constructor: they win over it even when equal to a default.
    explicit: FrozenSet[str] = field(default=frozenset(), repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("max_in_flight", "max_subscriptions", "max_packet_size", "max_devices"):
            _positive_int("Limits", name, getattr(self, name))
        for name in ("publishes_per_second", "max_unacked_publishes"):
            _positive_int("Limits", name, getattr(self, name), optional=True)
        if not isinstance(self.aws_rules, bool):
            raise ValueError(f"Limits.aws_rules must be True or False, not {self.aws_rules!r}")
        if self.preset is not None and self.preset not in LIMIT_PRESETS:
            raise ValueError(f"Limits.preset must be one of {list(LIMIT_PRESETS)} or None, not {self.preset!r}")

    @classmethod
    def aws_iot_core(cls, **overrides: Any) -> "Limits":
        """AWS IoT Core's per-connection quotas: 100 publishes a second, 50 subscriptions,
        128 KB payloads, 100 unacknowledged QoS 1 publishes, its topic and client-id rules,
        and reconnects no faster than one CONNECT a second. ``overrides`` win."""
        return cls(preset="aws-iot-core", explicit=frozenset(overrides), **overrides)


@dataclass(frozen=True)
class Reconnect:
    """How a lost connection is retried: after ``min_delay`` seconds, doubling up to
    ``max_delay``, each delay with random jitter so that a fleet does not return at once.
    A connection earns a fresh start only by staying up for 10 s."""

    min_delay: float = 0.1
    max_delay: float = 10.0

    def __post_init__(self) -> None:
        _seconds("Reconnect", "min_delay", self.min_delay)
        _seconds("Reconnect", "max_delay", self.max_delay)
        if self.max_delay < self.min_delay:
            raise ValueError(f"Reconnect.max_delay ({self.max_delay}) must not be under min_delay ({self.min_delay})")


@dataclass(frozen=True)
class Replies:
    """Where devices answer: ``Replies.topic()`` (``"topic"``, the default: on
    ``{request topic}/response/{request_id}``, one subscription per request topic),
    ``Replies.inbox()`` (``"inbox"``: on ``{prefix}/{client_id}/{request_id}``, told to the
    device in the request, one subscription however many devices), or
    ``Replies.shared_filter(filter)``: the seed topics, with one filter covering every reply
    subscribed at connect (``"+/device/control/set/response/+"``)."""

    mode: str = "topic"
    prefix: str = "mqtt-rpc/inbox"
    filter: Optional[str] = None

    def __post_init__(self) -> None:
        if self.mode not in ("topic", "inbox", "filter"):
            raise ValueError(f'Replies.mode must be "topic", "inbox" or "filter", not {self.mode!r}')
        if not (isinstance(self.prefix, str) and self.prefix):
            raise ValueError(f"Replies.prefix must be a non-empty topic prefix, not {self.prefix!r}")
        if (self.mode == "filter") != (self.filter is not None):
            raise ValueError('Replies.filter goes with mode "filter" (use Replies.shared_filter(...))')
        if self.filter is not None and not (isinstance(self.filter, str) and self.filter):
            raise ValueError(f"Replies.filter must be a topic filter, not {self.filter!r}")

    @classmethod
    def topic(cls) -> "Replies":
        return cls("topic")

    @classmethod
    def inbox(cls, prefix: str = "mqtt-rpc/inbox") -> "Replies":
        return cls("inbox", prefix)

    @classmethod
    def shared_filter(cls, filter: str) -> "Replies":
        return cls("filter", filter=filter)


#: Each flat option name (the URL's, and the 0.x keyword's) and where it lives now:
#: ``(group, field)``.
GROUP_FIELDS: Dict[str, Tuple[str, str]] = {
    "ca_certs": ("tls", "ca_certs"),
    "certfile": ("tls", "certfile"),
    "keyfile": ("tls", "keyfile"),
    "alpn_protocols": ("tls", "alpn_protocols"),
    "max_in_flight": ("limits", "max_in_flight"),
    "max_reply_subscriptions": ("limits", "max_subscriptions"),
    "max_subscriptions": ("limits", "max_subscriptions"),
    "max_packet_size": ("limits", "max_packet_size"),
    "publishes_per_second": ("limits", "publishes_per_second"),
    "max_unacked_publishes": ("limits", "max_unacked_publishes"),
    "presence_capacity": ("limits", "max_devices"),
    "aws_topic_rules": ("limits", "aws_rules"),
    "quotas": ("limits", "preset"),
    "reconnect_min_delay": ("reconnect", "min_delay"),
    "reconnect_max_delay": ("reconnect", "max_delay"),
    "inbox_prefix": ("replies", "prefix"),
    "reply_filter": ("replies", "filter"),
}

#: The keywords of the 0.x series that still work, and what to write instead.
DEPRECATED_KEYWORDS: Dict[str, str] = {
    "ca_certs": "tls=TLS(ca_certs=...)",
    "certfile": "tls=TLS(certfile=..., keyfile=...)",
    "keyfile": "tls=TLS(certfile=..., keyfile=...)",
    "alpn_protocols": "tls=TLS(alpn_protocols=(...,))",
    "max_in_flight": "limits=Limits(max_in_flight=...)",
    "max_reply_subscriptions": "limits=Limits(max_subscriptions=...)",
    "max_packet_size": "limits=Limits(max_packet_size=...)",
    "publishes_per_second": "limits=Limits(publishes_per_second=...)",
    "max_unacked_publishes": "limits=Limits(max_unacked_publishes=...)",
    "presence_capacity": "limits=Limits(max_devices=...)",
    "aws_topic_rules": "limits=Limits(aws_rules=True)",
    "quotas": 'limits="aws-iot-core" (or Limits.aws_iot_core())',
    "reconnect_min_delay": "reconnect=Reconnect(min_delay=...)",
    "reconnect_max_delay": "reconnect=Reconnect(max_delay=...)",
    "reply_to": 'replies="inbox" (or Replies.inbox())',
    "inbox_prefix": "replies=Replies.inbox(prefix=...)",
    "reply_filter": "replies=Replies.shared_filter(...)",
    "presence_prefix": 'presence=AwsLifecycle(prefix=...)',
}

#: Each group by the keyword that takes it.
GROUPS: Dict[str, Any] = {"tls": TLS, "limits": Limits, "reconnect": Reconnect, "replies": Replies}
_KEYWORD_OF = {group: keyword for keyword, group in GROUPS.items()}

#: The flat name each group field is given to the core under (first one listed wins).
_FLAT_NAME = {value: name for name, value in reversed(list(GROUP_FIELDS.items()))}


def chosen(group: Any) -> Dict[str, Any]:
    """A group's fields set to something other than their defaults, by flat option name."""
    kind = _KEYWORD_OF[type(group)]
    flat = {}
    explicit: FrozenSet[str] = getattr(group, "explicit", frozenset())
    for spec in fields(group):
        value = getattr(group, spec.name)
        if (value != spec.default or spec.name in explicit) and (kind, spec.name) in _FLAT_NAME:
            flat[_FLAT_NAME[(kind, spec.name)]] = value
    return flat


def warn_deprecated(keywords: Mapping[str, Any], owner: str, allowed: Sequence[str], stacklevel: int) -> None:
    """Warns once per keyword of the 0.x series given to ``owner``; refuses any other.
    ``stacklevel``: how many frames up the caller's line is (the warning names it)."""
    for name in keywords:
        if name not in allowed:
            raise TypeError(f"{owner}() got an unexpected keyword argument {name!r}")
        warnings.warn(
            f"{owner}({name}=...) is deprecated: write {DEPRECATED_KEYWORDS[name]}",
            DeprecationWarning,
            stacklevel=stacklevel + 1,
        )


def flatten(
    *,
    tls: Union[bool, TLS, None] = None,
    limits: Union[Limits, str, None] = None,
    reconnect: Optional[Reconnect] = None,
    replies: Union[Replies, str, None] = None,
) -> Dict[str, Any]:
    """The flat options the groups given set (the names the core and the URL use)."""
    flat: Dict[str, Any] = {}
    if isinstance(tls, TLS):
        flat.update(chosen(tls), tls=True)
    elif tls is not None:
        if not isinstance(tls, bool):
            raise ValueError(f"tls must be True, False or a TLS, not {tls!r}")
        flat["tls"] = tls
    if isinstance(limits, str):
        if limits not in LIMIT_PRESETS:
            raise ValueError(f"limits must be a Limits or one of {list(LIMIT_PRESETS)}, not {limits!r}")
        limits = Limits(preset=limits)
    if isinstance(limits, Limits):
        flat.update(chosen(limits))
    elif limits is not None:
        raise ValueError(f'limits must be a Limits or "aws-iot-core", not {limits!r}')
    if isinstance(reconnect, Reconnect):
        flat.update(chosen(reconnect))
    elif reconnect is not None:
        raise ValueError(f"reconnect must be a Reconnect, not {reconnect!r}")
    if isinstance(replies, str):
        if replies not in ("topic", "inbox"):
            raise ValueError(f'replies must be "topic", "inbox" or a Replies, not {replies!r}')
        replies = Replies(replies)
    if isinstance(replies, Replies):
        flat.update(chosen(replies))
        flat["reply_to"] = "topic" if replies.mode == "filter" else replies.mode
    elif replies is not None:
        raise ValueError(f'replies must be "topic", "inbox" or a Replies, not {replies!r}')
    return flat


def _group_of(flat_name: str) -> Optional[str]:
    if flat_name == "reply_to":
        return "replies"
    return GROUP_FIELDS[flat_name][0] if flat_name in GROUP_FIELDS else None


def group_arguments(flat: Mapping[str, Any]) -> Dict[str, Any]:
    """Flat options (a URL's, `from_url`'s keywords) as the constructor's group arguments,
    so that a URL never reads as deprecated keywords; other names pass through."""
    grouped: Dict[str, Dict[str, Any]] = {}
    arguments: Dict[str, Any] = {}
    for name, value in flat.items():
        if name in GROUP_FIELDS:
            group, field_name = GROUP_FIELDS[name]
            grouped.setdefault(group, {})[field_name] = value
        elif name == "reply_to":
            grouped.setdefault("replies", {})["mode"] = value
        else:
            arguments[name] = value
    if grouped.get("replies", {}).get("filter") is not None:
        grouped["replies"]["mode"] = "filter"
    for group, values in grouped.items():
        try:
            made = GROUPS[group](**values)
        except ValueError as error:
            # Said in the URL's words: the parameters that were given.
            names = sorted(name for name in flat if _group_of(name) == group)
            raise ValueError(f"{', '.join(names)}: {error}") from None
        arguments[group] = False if group == "tls" and flat.get("tls") is False else made
    return arguments


def group_defaults() -> Dict[str, Any]:
    """Each group field's default, by its flat option name."""
    return {
        flat: next(spec.default for spec in fields(GROUPS[keyword]) if spec.name == name)
        for flat, (keyword, name) in GROUP_FIELDS.items()
    }
