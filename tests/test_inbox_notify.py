"""The inbox reply mode (one subscription per client, however many devices) and one-way
notifications."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from mqtt_rpc import MqttRpcClient, PayloadError
from mqtt_rpc.testing import MosquittoBroker, ResponderDevice


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_inbox_mode_holds_one_subscription_for_five_hundred_devices(
    broker: MosquittoBroker, seed_device: ResponderDevice, protocol: str
) -> None:
    run = uuid.uuid4().hex[:6]
    topics = [f"inbox{i}-{run}/device/control/set" for i in range(500)]
    async with MqttRpcClient(broker.host, broker.port, protocol=protocol, replies="inbox") as client:
        replies = await asyncio.gather(*(client.call(t, {"t": t}) for t in topics))
        assert [r["result"]["topic"] for r in replies] == topics
        # The device was told where to answer in the body (and, on MQTT 5, the Response Topic).
        request = replies[0]["result"]["request"]
        assert request["reply_to"] == f"mqtt-rpc/inbox/{client.client_id}/{replies[0]['request_id']}"
        # Read from the broker: exactly one SUBSCRIBE, the client's inbox.
        assert broker.subscribes(client.client_id) == [f"mqtt-rpc/inbox/{client.client_id}/+"]
        assert client.reply_subscriptions == 1 and client.pending == 0


def test_inbox_mode_and_a_reply_filter_exclude_each_other() -> None:
    with pytest.raises(ValueError, match="exclude each other"):
        MqttRpcClient("127.0.0.1", 1883, reply_to="inbox", reply_filter="+/x/response/+")
    with pytest.raises(ValueError, match="reply_to"):
        MqttRpcClient("127.0.0.1", 1883, reply_to="somewhere")


async def test_a_notification_reaches_the_device_and_gets_no_answer(
    client: MqttRpcClient, seed_device: ResponderDevice
) -> None:
    device = f"notified-{uuid.uuid4().hex[:6]}/device/control/set"
    await client.notify(device, {"event": "door closed"})
    # The device prints each notification it receives: this one, as it was sent.
    assert seed_device.wait_for_line(lambda line: line == f'NOTIFICATION {device} {{"event": "door closed"}}')
    await client.call(device, {"barrier": True})  # handled after the notification
    assert client.stats()["replies_dropped_stray"] == 0
    assert client.stats()["calls_started"] == 1


async def test_a_notification_is_checked_before_it_is_sent(client: MqttRpcClient) -> None:
    with pytest.raises(PayloadError):
        await client.notify("dev1/device/control/set", "[1, 2]")
    with pytest.raises(PayloadError):
        await client.notify("dev1/+/set", {})
