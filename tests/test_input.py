"""Bad input gets a clear, typed error before anything is sent."""

from __future__ import annotations

import pytest

from mqtt_rpc import Limits

from mqtt_rpc import MqttRpcClient, PayloadError

from mqtt_rpc.testing import MosquittoBroker


@pytest.mark.parametrize(
    "topic, payload, message",
    [
        ("dev1/device/control/set", "not json", "not valid JSON"),
        ("dev1/device/control/set", '{"a": 1', "not valid JSON"),
        ("dev1/device/control/set", "", "not valid JSON"),
        ("dev1/device/control/set", b"\xff\xfe", "not valid JSON"),
        ("dev1/device/control/set", "[1, 2]", "must be a JSON object"),
        ("dev1/device/control/set", '"text"', "must be a JSON object"),
        ("dev1/device/control/set", "42", "must be a JSON object"),
        ("dev1/device/control/set", "null", "must be a JSON object"),
        ("dev1/device/control/set", 42, "got int"),
        ("dev1/device/control/set", None, "got NoneType"),
        ("dev1/device/control/set", {"t": {1, 2}}, "not JSON-serialisable"),
        ("dev1/+/control/set", "{}", "wildcard"),
        ("dev1/#", "{}", "wildcard"),
        ("", "{}", "empty"),
        ("/dev1/set", "{}", "empty level"),
        ("dev1/set/", "{}", "empty level"),
        ("dev1//set", "{}", "empty level"),
        ("dev1/\0/set", "{}", "NUL"),
    ],
)
async def test_bad_input_raises_payload_error_before_publishing(
    client: MqttRpcClient, topic: str, payload: object, message: str
) -> None:
    with pytest.raises(PayloadError, match=message) as raised:
        await client.call(topic, payload)  # type: ignore[arg-type]
    assert isinstance(raised.value, ValueError)
    # Refused before a call even started: nothing was published, nothing is pending.
    assert client.stats()["calls_started"] == 0
    assert client.pending == 0


async def test_a_payload_over_the_packet_limit_is_refused(broker: MosquittoBroker) -> None:
    async with MqttRpcClient(broker.host, broker.port, limits=Limits(max_packet_size=1000)) as client:
        with pytest.raises(PayloadError, match="maximum packet size of 1000"):
            await client.call("dev1/device/control/set", {"blob": "x" * 1000})
        assert client.stats()["calls_started"] == 0


@pytest.mark.parametrize("timeout", [0, -1, float("nan"), float("inf"), "10"])
async def test_a_bad_timeout_is_a_value_error(client: MqttRpcClient, timeout: object) -> None:
    with pytest.raises(ValueError, match="timeout"):
        await client.call("dev1/device/control/set", "{}", timeout=timeout)  # type: ignore[arg-type]
    assert client.stats()["calls_started"] == 0


@pytest.mark.parametrize(
    "options, message",
    [
        ({"protocol": "3"}, "protocol"),
        ({"qos": 2}, "qos must be 0 or 1"),
        ({"reply_filter": "a/#/b"}, "invalid topic filter"),
        ({"max_in_flight": 0}, "at least 1"),
        ({"timeout": 0}, "timeout"),
    ],
)
def test_bad_options_are_refused_by_the_constructor(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MqttRpcClient("127.0.0.1", 1883, **options)
