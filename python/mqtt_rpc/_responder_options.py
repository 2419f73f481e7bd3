"""How a `Responder`'s options are resolved: its groups (`TLS`, and of `Limits` what a
responder has), the 0.x keywords, its session in a share group, and its identity as a
named service."""

from __future__ import annotations

import json
import logging
from typing import Any, Dict, FrozenSet, Optional, Tuple

from . import config, options as _options

logger = logging.getLogger("mqtt_rpc")

#: The groups' flat options a responder takes: TLS, and of `Limits` the subscriptions it
#: may hold and AWS's rules (a preset names them all).
TLS_FIELDS = ("tls", "ca_certs", "certfile", "keyfile", "alpn_protocols")
LIMIT_FIELDS = ("max_subscriptions", "aws_topic_rules")
FLAT_DEFAULTS: Dict[str, Any] = {"ca_certs": None, "certfile": None, "keyfile": None, "alpn_protocols": (), "quotas": None}


def grouped_options(
    given: FrozenSet[str], tls: Any, limits: Any, deprecated: Dict[str, Any]
) -> Tuple[FrozenSet[str], Dict[str, Any]]:
    """A responder's groups (and 0.x keywords, warned) as flat options, and the names
    chosen."""
    deprecated_here = ("ca_certs", "certfile", "keyfile", "alpn_protocols", "quotas")
    # Frames up to the caller: _grouped_options, __init__, its wrapper.
    _options.warn_deprecated(deprecated, "Responder", deprecated_here, stacklevel=4)
    groups = {name: value for name, value in (("tls", tls), ("limits", limits)) if name in given}
    flat = _options.flatten(**groups)
    if "max_reply_subscriptions" in flat:
        flat["max_subscriptions"] = flat.pop("max_reply_subscriptions")
    foreign = sorted(set(flat) - {*TLS_FIELDS, *LIMIT_FIELDS, "quotas"})
    if foreign:
        fields = ", ".join(_options.GROUP_FIELDS[name][1] for name in foreign)
        raise ValueError(f"a Responder takes of Limits only max_subscriptions and aws_rules, not {fields}")
    for name, value in deprecated.items():
        if name in flat:
            raise ValueError(f"{name} is given twice: as a keyword and in its group ({_options.DEPRECATED_KEYWORDS[name]})")
        flat[name] = value
    chosen = (given - set(groups) - set(deprecated)) | frozenset(name for name in flat if name not in LIMIT_FIELDS)
    return frozenset(chosen), flat


#: Options of `MQTT_RPC_URL` that only a client takes: a responder passes over them.
CLIENT_ONLY = frozenset(config.CLIENT_OPTIONS) - frozenset(config.RESPONDER_OPTIONS)


def member_session_expiry(session: Optional[float], share_group: Optional[str]) -> Optional[float]:
    """The session a responder asks for: in a share group, none beyond its connection
    unless asked (then warned about)."""
    if share_group is None:
        return session
    if session is None:
        # A session that outlived a member would keep its share of the group's requests
        # queued for it: a crash would cost the session's life, not the keep-alive. So a
        # member's session ends with its connection.
        return 0.0
    if session > 0:
        logger.warning(
            "responder in share group %r with session_expiry=%g: after a crash the broker "
            "goes on routing that member's share of the requests to its session for up to "
            "%g s, and its callers time out (docs/scaling.md)",
            share_group,
            session,
            session,
        )
    return session


def service_options(service: Dict[str, Any], prefix: str) -> Dict[str, Any]:
    """What the core needs to answer discovery for a named responder (empty: unnamed)."""
    name, version, metadata = service["name"], service["version"], service["metadata"]
    if name is None:
        if version is not None or metadata is not None:
            raise ValueError("version and metadata describe a named service: give name= too")
        return {}
    if not isinstance(name, str) or not name or any(c in name for c in "/+#"):
        raise ValueError(f"name must be one topic level (no '/', '+' or '#'), not {name!r}")
    if metadata is not None and not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict, not {type(metadata).__name__}")
    options: Dict[str, Any] = {"name": name, "service_prefix": prefix}
    if version is not None:
        options["version"] = str(version)
    if metadata is not None:
        options["metadata"] = json.dumps(metadata, default=str)
    return options
