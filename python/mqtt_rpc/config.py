"""Connection settings from a URL: `MQTT_RPC_URL` or `from_url()`.

    mqtt://[user[:password]@]host[:port][?option=value&...]     (port 1883)
    mqtts://[user[:password]@]host[:port][?option=value&...]    (TLS, port 8883)
    mqtt://node1:1883,node2:1883,node3:1883                     (a cluster's nodes)

Every other constructor option may be a query parameter (`?client_id=web-1&protocol=5`).
Values are converted to the option's type here and then checked by the constructor, so a
bad value gets the same error as the keyword argument. Arguments the caller passes win
over the URL one by one; an explicit host ignores `MQTT_RPC_URL` altogether. Nothing here
ever puts the password in a message."""

from __future__ import annotations

import functools
import os
from typing import Any, Callable, Dict, FrozenSet, List, Mapping, Optional, Tuple, TypeVar
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit, urlunsplit

ENVIRONMENT_VARIABLE = "MQTT_RPC_URL"
DEFAULT_HOST = "localhost"
DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _boolean(name: str, text: str) -> bool:
    lowered = text.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"query parameter {name} must be true or false, not {text!r}")


def _integer(name: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"query parameter {name} must be an integer, not {text!r}") from None


def _number(name: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"query parameter {name} must be a number of seconds, not {text!r}") from None


def _text(name: str, text: str) -> str:
    return text


def _word_list(name: str, text: str) -> List[str]:
    return [word for word in text.split(",") if word]


Converter = Callable[[str, str], Any]

#: The options both the client and the responder take, by the type of their value.
_SHARED: Dict[str, Converter] = {
    "client_id": _text,
    "protocol": _text,
    "qos": _integer,
    "keepalive": _number,
    "username": _text,
    "password": _text,
    "connect_timeout": _number,
    "tls": _boolean,
    "ca_certs": _text,
    "certfile": _text,
    "keyfile": _text,
    "alpn_protocols": _word_list,
    "quotas": _text,
    "session_expiry": _number,
}

CLIENT_OPTIONS: Dict[str, Converter] = {
    **_SHARED,
    "reply_filter": _text,
    "reply_to": _text,
    "inbox_prefix": _text,
    "max_reply_subscriptions": _integer,
    "max_in_flight": _integer,
    "max_packet_size": _integer,
    "timeout": _number,
    "fail_fast": _boolean,
    "reconnect_min_delay": _number,
    "reconnect_max_delay": _number,
    "aws_topic_rules": _boolean,
    "cancel_on_abandon": _boolean,
    "propagate_deadline": _boolean,
    "service_prefix": _text,
    "presence": _text,
    "presence_prefix": _text,
    "presence_capacity": _integer,
    "connections": _integer,
    "publishes_per_second": _integer,
    "max_unacked_publishes": _integer,
}

RESPONDER_OPTIONS: Dict[str, Converter] = {
    **_SHARED,
    "share_group": _text,
    "max_concurrency": _integer,
    "max_queued": _integer,
    "reply_cache_size": _integer,
    "reply_cache_ttl": _number,
    "service_prefix": _text,
}


def parse_url(url: str, options: Mapping[str, Converter], tolerated: FrozenSet[str] = frozenset()) -> Dict[str, Any]:
    """The settings a URL gives, as constructor keyword arguments (``host`` and ``port``
    included). Query parameters in `tolerated` are skipped: they belong to the other side
    of a process that configures a client and a responder from one `MQTT_RPC_URL`.

    Raises ValueError naming the scheme, the port or the parameter that is wrong."""
    if not isinstance(url, str):
        raise TypeError(f"the broker URL must be a str, not {type(url).__name__}")
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise ValueError(f"the broker URL's scheme must be mqtt:// or mqtts://, not {parts.scheme + '://' if parts.scheme else 'missing'}")
    if parts.path not in ("", "/"):
        raise ValueError(f"the broker URL has a path ({parts.path!r}); options go in the query: ?client_id=...")
    if parts.fragment:
        raise ValueError("the broker URL must not have a #fragment")
    userinfo, at, node_list = parts.netloc.rpartition("@")
    nodes = node_list.split(",")
    if len(nodes) > 1:
        # Several nodes of one cluster: each read as if it were the only one.
        hosts = [_address(parts._replace(netloc=node), scheme) for node in nodes]
        first = parse_url(urlunsplit(parts._replace(netloc=userinfo + at + nodes[0])), options, tolerated)
        # `hosts` stands for host and port (which `resolve` takes from its first node).
        del first["host"], first["port"]
        return {**first, "hosts": hosts}
    settings: Dict[str, Any] = dict(zip(("host", "port"), _address(parts, scheme)))
    if scheme == "mqtts":
        settings["tls"] = True
    if parts.username:
        settings["username"] = unquote(parts.username)
    if parts.password is not None:
        settings["password"] = unquote(parts.password)
    seen = set()
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name in seen:
            raise ValueError(f"query parameter {name} is given twice in the broker URL")
        seen.add(name)
        if name in tolerated and name not in options:
            continue
        convert = options.get(name)
        if convert is None:
            known = ", ".join(sorted(options))
            raise ValueError(f"unknown query parameter {name!r} in the broker URL (known: {known})")
        settings[name] = convert(name, value)
    return settings


def _address(parts: SplitResult, scheme: str) -> Tuple[str, int]:
    """The host and port of a URL's netloc (the scheme's port when it names none)."""
    host = parts.hostname
    if not host:
        raise ValueError("the broker URL has no host: mqtt://host[:port]")
    try:
        port = parts.port
    except ValueError:
        # urlsplit's own message carries only the port's text, never the credentials.
        raw = parts.netloc.rpartition("@")[2].rpartition(":")[2]
        raise ValueError(f"the broker URL's port must be a number from 1 to 65535, not {raw!r}") from None
    if port == 0:
        raise ValueError("the broker URL's port must be a number from 1 to 65535, not '0'")
    return host, port if port is not None else DEFAULT_PORTS[scheme]


def broker_addresses(hosts: Any) -> List[Tuple[str, int]]:
    """``hosts`` as a list of ``(host, port)``; ValueError unless it is a non-empty sequence
    of such pairs."""
    if isinstance(hosts, (str, bytes)) or not hasattr(hosts, "__iter__"):
        raise ValueError(f"hosts must be a list of (host, port) pairs, not {hosts!r}")
    addresses = []
    for address in hosts:
        if not (isinstance(address, (tuple, list)) and len(address) == 2):
            raise ValueError(f"hosts must be a list of (host, port) pairs; {address!r} is not one")
        host, port = address
        if not (isinstance(host, str) and host):
            raise ValueError(f"a host in hosts must be a non-empty str, not {host!r}")
        if not (isinstance(port, int) and 0 < port < 65536):
            raise ValueError(f"port must be a TCP port number (1-65535), not {port!r}")
        addresses.append((host, port))
    if not addresses:
        raise ValueError("hosts must name at least one (host, port)")
    return addresses


def url_arguments(url: str, options: Mapping[str, Converter], overrides: Mapping[str, Any]) -> Dict[str, Any]:
    """The constructor arguments of `from_url`: the URL's, with `overrides` winning."""
    settings = parse_url(url, options)
    settings.update(overrides)
    return settings


def from_environment(options: Mapping[str, Converter], tolerated: FrozenSet[str]) -> Dict[str, Any]:
    """The settings of `MQTT_RPC_URL`, or the default broker (localhost:1883) when unset."""
    url = os.environ.get(ENVIRONMENT_VARIABLE, "").strip()
    if not url:
        return {"host": DEFAULT_HOST, "port": DEFAULT_PORTS["mqtt"]}
    try:
        return parse_url(url, options, tolerated)
    except ValueError as error:
        raise ValueError(f"{ENVIRONMENT_VARIABLE}: {error}") from None


def display_url(host: str, port: int, tls: bool, username: Optional[str], hosts: Optional[List[Tuple[str, int]]] = None) -> str:
    """The broker's address for logs and reprs: the user name, never the password."""
    user = f"{username}@" if username else ""
    nodes = ",".join(f"{h}:{p}" for h, p in hosts) if hosts else f"{host}:{port}"
    return f"{'mqtts' if tls else 'mqtt'}://{user}{nodes}"


Init = TypeVar("Init", bound=Callable[..., None])


def records_given_arguments(init: Init) -> Init:
    """Wraps an ``__init__`` so that it can tell the arguments its caller passed from those
    left at their defaults (``self._given``): only those win over `MQTT_RPC_URL`, and a
    quota preset never overrides a value that was asked for, even one equal to a default."""
    names = list(init.__code__.co_varnames[1 : init.__code__.co_argcount])

    @functools.wraps(init)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> None:
        self._given = frozenset(names[: len(args)]) | frozenset(kwargs)
        init(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


def resolve(
    given: FrozenSet[str],
    arguments: Dict[str, Any],
    options: Mapping[str, Converter],
    tolerated: FrozenSet[str],
) -> Tuple[Dict[str, Any], FrozenSet[str]]:
    """The constructor's arguments after `MQTT_RPC_URL` (without an explicit host or hosts,
    the URL's settings fill every argument the caller did not pass), and the names that
    were set on purpose, by the caller or by the URL. With several hosts, ``host`` and
    ``port`` are the first one's."""
    if "host" in given and "hosts" in given and arguments.get("host") is not None and arguments.get("hosts") is not None:
        raise ValueError("give host (and port) or hosts, not both")
    resolved = dict(arguments)
    chosen = set(given)
    if not any(name in given and arguments.get(name) is not None for name in ("host", "hosts")):
        for name, value in from_environment(options, tolerated).items():
            if name not in given or (name in ("host", "port") and arguments.get(name) is None):
                resolved[name] = value
                chosen.add(name)
    if resolved.get("hosts") is not None:
        resolved["hosts"] = broker_addresses(resolved["hosts"])
        resolved["host"], resolved["port"] = resolved["hosts"][0]
        chosen |= {"host", "port", "hosts"}
    elif resolved.get("port") is None:
        resolved["port"] = DEFAULT_PORTS["mqtt"]
    return resolved, frozenset(chosen)
