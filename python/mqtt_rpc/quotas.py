"""Per-connection limits of the brokers that publish theirs, as presets for ``quotas=``
on `MqttRpcClient` and `Responder`: the options a preset sets, unless given explicitly."""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

#: AWS IoT Core's subscriptions per connection: every filter counts (reply filters, the
#: inbox, presence events, a responder's handlers and discovery filters).
AWS_MAX_SUBSCRIPTIONS = 50

#: AWS IoT Core accepts one CONNECT per second per client id.
AWS_CONNECT_INTERVAL = 1.0

#: The client's presets. AWS IoT Core's message-broker quotas per connection: publish
#: requests per second, subscriptions, payload size, unacknowledged QoS 1 publishes, topic
#: rules (at most 7 slashes and 256 bytes) and client ids of at most 128 bytes, and one
#: CONNECT a second per client id. One SUBSCRIBE carries one filter, under its 8 per packet.
QUOTA_PRESETS: Dict[str, Dict[str, Any]] = {
    "aws-iot-core": {
        "publishes_per_second": 100,
        "max_reply_subscriptions": AWS_MAX_SUBSCRIPTIONS,
        "max_packet_size": 128 * 1024,
        "max_unacked_publishes": 100,
        "aws_topic_rules": True,
        "reconnect_min_delay": AWS_CONNECT_INTERVAL,
        "min_connect_interval": AWS_CONNECT_INTERVAL,
    },
}

#: The responder's presets: the same quotas where a responder has them.
RESPONDER_QUOTA_PRESETS: Dict[str, Dict[str, Any]] = {
    "aws-iot-core": {
        "max_subscriptions": AWS_MAX_SUBSCRIPTIONS,
        "aws_topic_rules": True,
        "min_connect_interval": AWS_CONNECT_INTERVAL,
    },
}


def preset(name: Optional[str], presets: Mapping[str, Dict[str, Any]]) -> Dict[str, Any]:
    """The options preset ``name`` sets (none for None); ValueError for an unknown name."""
    if name is None:
        return {}
    if name not in presets:
        raise ValueError(f"quotas must be one of {sorted(presets)} or None, not {name!r}")
    return dict(presets[name])
