"""docs/aws-iot-core.md is checked against what the client really does: its URL parses to
the settings it describes, and its IoT policies, read with AWS's matching rules, allow every
SUBSCRIBE and PUBLISH that a service (per-topic replies; inbox with presence and discovery)
and a named device make on a real broker, as that broker logged them."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from mqtt_rpc import MqttRpcClient, Responder, config
from mqtt_rpc.testing import MosquittoBroker

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "aws-iot-core.md"


def guide_blocks(kind: str) -> Dict[str, str]:
    """The guide's code blocks marked ``<!-- kind: name -->``, by name."""
    text = GUIDE.read_text()
    found = re.findall(rf"<!-- {kind}: ([\w-]+) -->\n```\w*\n(.*?)```", text, re.S)
    return dict(found)


def policies() -> Dict[str, List[Dict[str, object]]]:
    return {name: json.loads(block)["Statement"] for name, block in guide_blocks("policy").items()}


def resource_matches(pattern: str, value: str, variables: Dict[str, str]) -> bool:
    """AWS IoT's resource matching: `*` any characters, `?` one, MQTT's `+` and `#`
    literal; policy variables replaced by the connection's values."""
    for name, replacement in variables.items():
        pattern = pattern.replace("${" + name + "}", replacement)
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value) is not None


def allowed(statements: List[Dict[str, object]], action: str, resource: str, variables: Dict[str, str]) -> bool:
    for statement in statements:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        if statement["Effect"] == "Allow" and action in actions:
            for pattern in resources:
                assert isinstance(pattern, str) and pattern.startswith("arn:aws:iot:REGION:ACCOUNT:"), pattern
                if resource_matches(pattern.split(":", 5)[5], resource, variables):
                    return True
    return False


def test_the_guides_url_gives_the_settings_it_describes() -> None:
    (url_line,) = guide_blocks("url").values()
    url = re.search(r"MQTT_RPC_URL='([^']+)'", url_line)
    assert url is not None
    settings = config.parse_url(url.group(1), config.CLIENT_OPTIONS)
    assert settings["port"] == 8883 and settings["host"].endswith(".amazonaws.com")
    assert settings["quotas"] == "aws-iot-core" and settings["reply_to"] == "inbox"
    assert {"certfile", "keyfile", "ca_certs"} <= set(settings)
    assert settings["client_id"] == "web-{hostname}-{pid}"
    # The placeholders expand, and the id the client uses is one the policy's Connect allows.
    client = MqttRpcClient("127.0.0.1", 1, client_id=settings["client_id"], limits="aws-iot-core")
    assert allowed(policies()["service-topic"], "iot:Connect", f"client/{client.client_id}", {})


@pytest.fixture(scope="module")
def logging_broker() -> Iterator[MosquittoBroker]:
    """A broker that logs every PUBLISH it receives (Mosquitto's debug log)."""
    with MosquittoBroker.start(extra_config=["log_type debug"]) as running:
        yield running


def traffic(broker: MosquittoBroker, client_id: str) -> Tuple[List[str], List[str]]:
    """The filters `client_id` subscribed and the topics it published, from the broker's log."""
    subscribed = broker.subscribes(client_id)
    published = [
        m.group(2)
        for m in (re.match(r"Received PUBLISH from (\S+) \(d\d, q\d, r\d, m\d+, '([^']*)'", line) for line in list(broker.lines))
        if m is not None and m.group(1) == client_id
    ]
    return subscribed, published


def check(statements: List[Dict[str, object]], client_id: str, subscribed: List[str], published: List[str], received: List[str]) -> None:
    variables = {"iot:ClientId": client_id, "iot:Connection.Thing.ThingName": client_id}
    assert allowed(statements, "iot:Connect", f"client/{client_id}", variables), client_id
    for topic_filter in subscribed:
        assert allowed(statements, "iot:Subscribe", f"topicfilter/{topic_filter}", variables), topic_filter
    for topic in published:
        assert allowed(statements, "iot:Publish", f"topic/{topic}", variables), topic
    for topic in received:
        assert allowed(statements, "iot:Receive", f"topic/{topic}", variables), topic


def delivered_to(subscribed: List[str], topics: List[str]) -> List[str]:
    """The topics among `topics` that one of the `subscribed` filters matches."""
    def matches(topic_filter: str, topic: str) -> bool:
        regex = "/".join("[^/]+" if level == "+" else ".*" if level == "#" else re.escape(level) for level in topic_filter.split("/"))
        return re.fullmatch(regex, topic) is not None

    return [t for t in topics if any(matches(f, t) for f in subscribed)]


async def test_the_guides_policies_allow_what_the_service_and_the_device_really_do(logging_broker: MosquittoBroker) -> None:
    broker = logging_broker
    thing = f"dev{uuid.uuid4().hex[:6]}"
    device = Responder(broker.host, broker.port, client_id=thing, name="fleet")

    @device.handle(f"{thing}/device/control/set")
    async def control(request: dict) -> dict:
        return {"ok": True}

    async with device:
        topic = f"{thing}/device/control/set"
        async with MqttRpcClient(broker.host, broker.port, client_id="web-{pid}") as per_topic:
            await per_topic.call(topic, {"action": "GET_HEALTH_CHECK"})
        async with MqttRpcClient(
            broker.host, broker.port, client_id="web-{hostname}-{pid}", replies="inbox", presence="aws-lifecycle"
        ) as inbox:
            # AWS's lifecycle event for the device, as AWS would publish it.
            aws = paho.Client(CallbackAPIVersion.VERSION2, client_id="aws-events")
            aws.connect(broker.host, broker.port)
            event = {"clientId": thing, "timestamp": 1, "eventType": "connected", "versionNumber": 1}
            aws.publish(f"$aws/events/presence/connected/{thing}", json.dumps(event)).wait_for_publish(5)
            aws.disconnect()
            await inbox.call(topic, {"action": "GET_HEALTH_CHECK"})
            found = await inbox.discover("fleet", timeout=1)
            assert [s["id"] for s in found] == [thing]
        broker.sync_log()
    statements = policies()
    device_subscribed, device_published = traffic(broker, thing)
    assert len(device_subscribed) == 4 and any("/response/" in t for t in device_published)
    assert any(t.startswith("mqtt-rpc/inbox/") for t in device_published)

    sub, pub = traffic(broker, per_topic.client_id)
    assert sub == [f"{topic}/response/+"] and pub == [topic]
    check(statements["service-topic"], per_topic.client_id, sub, pub, delivered_to(sub, device_published))

    sub, pub = traffic(broker, inbox.client_id)
    assert "$aws/events/presence/+/+" in sub and any(p.startswith("mqtt-rpc/_srv/") for p in pub)
    received = delivered_to(sub, device_published + [f"$aws/events/presence/connected/{thing}"])
    assert f"$aws/events/presence/connected/{thing}" in received
    check(statements["service-inbox"] + statements["service-presence"], inbox.client_id, sub, pub, received)

    # The device: every filter it subscribed, every answer it published, every request it got.
    requests = delivered_to(device_subscribed, pub + [topic])
    check(statements["device"], thing, device_subscribed, device_published, requests)


def test_a_policy_checker_that_can_say_no() -> None:
    # The checker itself: `+` in a resource is literal, `*` spans levels.
    statements = policies()["service-topic"]
    assert allowed(statements, "iot:Subscribe", "topicfilter/dev1/device/control/set/response/+", {})
    assert not allowed(statements, "iot:Subscribe", "topicfilter/dev1/device/control/set/response/#", {})
    assert not allowed(statements, "iot:Publish", "topic/dev1/device/other", {})
    assert not allowed(statements, "iot:Connect", "client/mobile-1", {})
    assert not allowed(policies()["device"], "iot:Subscribe", "topicfilter/dev2/device/control/set", {"iot:Connection.Thing.ThingName": "dev1"})
