"""The drop-in flow: what the hand-written client's callers relied on, and what the device sees."""

from __future__ import annotations

import json
import uuid

import pytest

from mqtt_rpc import MqttRpcClient, MqttRpcError, RemoteError, RpcTimeoutError

from mqtt_rpc.testing import MosquittoBroker


async def test_call_returns_the_devices_reply_as_sent(client: MqttRpcClient, device_topic: str) -> None:
    reply = await client.call(device_topic, '{"action": "GET_HEALTH_CHECK"}', timeout=10)

    request_id = reply["request_id"]
    assert str(uuid.UUID(request_id, version=4)) == request_id
    assert list(reply) == ["request_id", "result"]
    # The device received the caller's object with request_id added, on the request topic.
    assert reply["result"] == {
        "topic": device_topic,
        "request": {"action": "GET_HEALTH_CHECK", "request_id": request_id},
    }


@pytest.mark.parametrize(
    "payload",
    [
        '{"action": "SET", "value": [1, 2.5, null, true, "é"]}',
        b'{"action": "SET", "value": [1, 2.5, null, true, "\\u00e9"]}',
        bytearray(b'{"action": "SET", "value": [1, 2.5, null, true, "\xc3\xa9"]}'),
        {"action": "SET", "value": [1, 2.5, None, True, "é"]},
    ],
    ids=["str", "bytes", "bytearray", "dict"],
)
async def test_str_bytes_and_dict_payloads_reach_the_device_alike(
    client: MqttRpcClient, device_topic: str, payload: object
) -> None:
    reply = await client.call(device_topic, payload)  # type: ignore[arg-type]
    request = reply["result"]["request"]
    assert request == {"action": "SET", "value": [1, 2.5, None, True, "é"], "request_id": reply["request_id"]}


async def test_each_call_gets_a_fresh_request_id(client: MqttRpcClient, device_topic: str) -> None:
    ids = {(await client.call(device_topic, "{}"))["request_id"] for _ in range(20)}
    assert len(ids) == 20


async def test_a_request_id_in_the_payload_is_replaced(client: MqttRpcClient, device_topic: str) -> None:
    reply = await client.call(device_topic, {"request_id": "chosen-by-caller", "x": 1})
    assert reply["request_id"] != "chosen-by-caller"
    assert reply["result"]["request"] == {"request_id": reply["request_id"], "x": 1}


async def test_remote_error_carries_code_message_and_data(client: MqttRpcClient, device_topic: str) -> None:
    error = {"code": -32001, "message": "camera busy", "data": {"retry_after": 5}}
    with pytest.raises(RemoteError) as raised:
        await client.call(device_topic, {"_responder": {"error": error}})
    assert (raised.value.code, raised.value.message, raised.value.data) == (-32001, "camera busy", {"retry_after": 5})
    assert isinstance(raised.value, MqttRpcError)
    assert not isinstance(raised.value, TimeoutError)
    assert client.stats()["calls_failed_remotely"] == 1


async def test_an_mqtt5_device_answers_through_response_topic_and_correlation_data(
    broker: MosquittoBroker, mqtt5_device: object
) -> None:
    topic = f"cam-{uuid.uuid4().hex[:8]}/mqtt5/control/set"
    async with MqttRpcClient(broker.host, broker.port, protocol="5") as client:
        reply = await client.call(topic, {"action": "SNAPSHOT"}, timeout=5)
        # The device knows nothing of request_id: it answered by the MQTT 5 properties alone.
        assert "request_id" not in reply
        assert reply["result"]["topic"] == topic
        assert reply["result"]["request"]["action"] == "SNAPSHOT"
        assert client.pending == 0


async def test_a_311_client_cannot_reach_a_device_that_needs_mqtt5_properties(
    broker: MosquittoBroker, mqtt5_device: object
) -> None:
    # The counterpart of the test above: it is the MQTT 5 properties that made it work.
    topic = f"cam-{uuid.uuid4().hex[:8]}/mqtt5/control/set"
    async with MqttRpcClient(broker.host, broker.port, protocol="3.1.1") as client:
        with pytest.raises(RpcTimeoutError):
            await client.call(topic, {"action": "SNAPSHOT"}, timeout=0.5)
        assert client.pending == 0


async def test_qos1_calls_work(broker: MosquittoBroker, device_topic: str) -> None:
    async with MqttRpcClient(broker.host, broker.port, qos=1) as client:
        replies = [await client.call(device_topic, {"i": i}) for i in range(5)]
        assert [r["result"]["request"]["i"] for r in replies] == list(range(5))


async def test_reply_keeps_the_devices_key_order_and_types(client: MqttRpcClient, device_topic: str) -> None:
    payload = {"z": 1, "a": {"y": [1, {"b": None}], "x": 1.5}, "big": 2**63 - 1, "neg": -(2**63)}
    reply = await client.call(device_topic, json.dumps(payload))
    request = reply["result"]["request"]
    assert list(request) == ["z", "a", "big", "neg", "request_id"]
    assert list(request["a"]) == ["y", "x"]
    assert request["big"] == 2**63 - 1 and request["neg"] == -(2**63)
