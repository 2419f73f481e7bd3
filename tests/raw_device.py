"""A device written with another client library (paho-mqtt, MQTT 5 or 3.1.1), to check what
goes over the wire: it records each request as it arrived, with its user properties and
Message Expiry, and answers it on its Response Topic (or the seed reply topic)."""

from __future__ import annotations

import asyncio
import json
import queue
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from mqtt_rpc.testing import MosquittoBroker


class Received(NamedTuple):
    body: Dict[str, Any]
    user_properties: List[Tuple[str, str]]
    #: The MQTT 5 Message Expiry Interval as the broker forwarded it (None: not set).
    message_expiry: Optional[int]


class RawDevice:
    def __init__(self, broker: MosquittoBroker, topic_filter: str, protocol: str, answer: bool = True) -> None:
        self.requests: "queue.Queue[Received]" = queue.Queue()
        self._answer = answer
        version = paho.MQTTv5 if protocol == "5" else paho.MQTTv311
        self._client = paho.Client(CallbackAPIVersion.VERSION2, protocol=version)
        self._client.on_message = self._on_message
        subscribed = queue.Queue()  # type: queue.Queue[bool]
        self._client.on_subscribe = lambda *args: subscribed.put(True)
        self._client.connect(broker.host, broker.port)
        self._client.loop_start()
        self._client.subscribe(topic_filter, qos=0)
        assert subscribed.get(timeout=10)

    @property
    def protocol(self) -> str:
        return "5" if self._client.protocol == paho.MQTTv5 else "3.1.1"

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        request = json.loads(message.payload)
        properties = getattr(message, "properties", None)
        user_properties = list(getattr(properties, "UserProperty", []) or [])
        expiry = getattr(properties, "MessageExpiryInterval", None)
        self.requests.put(Received(request, user_properties, expiry))
        if not self._answer:
            return
        answer = json.dumps({"request_id": request.get("request_id"), "result": {"ok": True}})
        response_topic = getattr(properties, "ResponseTopic", None)
        if response_topic:
            reply = Properties(PacketTypes.PUBLISH)
            reply.CorrelationData = properties.CorrelationData  # type: ignore[union-attr]
            client.publish(response_topic, answer, properties=reply)
        elif "request_id" in request:
            client.publish(f"{message.topic}/response/{request['request_id']}", answer)

    async def next_request(self) -> Received:
        return await asyncio.to_thread(self.requests.get, True, 10)

    def stop(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()

