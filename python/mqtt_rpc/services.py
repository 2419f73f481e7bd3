"""Discovery and health of named responders, the client's half: the control topic a PING,
INFO or STATS request goes to (every service, one name, or one instance) and the answers it
gathers. The core answers these on every named `Responder` and Rust device; the wire format
is in docs/services.md."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from . import _core

#: The `type` of each verb's answer.
ANSWER_TYPES = {"PING": "io.mqtt-rpc.ping", "INFO": "io.mqtt-rpc.info", "STATS": "io.mqtt-rpc.stats"}


def control_request(prefix: str, verb: str, name: Optional[str], instance: Optional[str]) -> Tuple[str, Optional[int]]:
    """The topic of a ``verb`` request to every service, the instances of ``name``, or the
    one ``instance`` of ``name``, and the answers to gather (one instance answers once:
    the call need not wait out its timeout). Raises `PayloadError` (a ValueError) for a
    name or id that cannot be one topic level."""
    return _core.control_topic(prefix, verb, name, instance), 1 if instance else None


def answers(replies: List[Dict[str, Any]], verb: str) -> List[Dict[str, Any]]:
    """Each instance's answer (the ``result`` of its reply), sorted by name then id; replies
    that are not such answers (an error, something else listening under the prefix) are
    passed over."""
    wanted = ANSWER_TYPES[verb]
    results = [reply.get("result") for reply in replies]
    found = [result for result in results if isinstance(result, dict) and result.get("type") == wanted]
    return sorted(found, key=lambda result: (str(result.get("name")), str(result.get("id"))))
