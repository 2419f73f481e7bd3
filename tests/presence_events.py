"""What a presence source publishes, for the presence tests: AWS IoT Core's lifecycle events
in AWS's documented JSON format (under a test prefix, since only AWS may publish under
``$aws/``), and a device's retained status with a Last Will that the broker publishes when
the device vanishes."""

from __future__ import annotations

import json
import queue
import uuid
from typing import Any, Optional, Union

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from mqtt_rpc.testing import MosquittoBroker


def _connected(broker: MosquittoBroker, client: paho.Client) -> paho.Client:
    done: "queue.Queue[bool]" = queue.Queue()
    client.on_connect = lambda *args: done.put(True)
    client.connect(broker.host, broker.port)
    client.loop_start()
    assert done.get(timeout=10)
    return client


class AwsEvents:
    """Publishes lifecycle events as AWS IoT Core does, under ``prefix``."""

    def __init__(self, broker: MosquittoBroker) -> None:
        self.prefix = f"test-{uuid.uuid4().hex[:8]}/events/presence"
        self._client = _connected(broker, paho.Client(CallbackAPIVersion.VERSION2))

    def publish(
        self,
        client_id: Optional[str],
        event_type: str,
        version: int,
        timestamp: int,
        reason: Optional[str] = None,
        topic_id: Optional[str] = None,
    ) -> None:
        """One event (QoS 1, waited for). ``client_id=None`` leaves the member out;
        ``topic_id`` puts another id in the topic than in the body."""
        event: dict[str, Any] = {
            "eventType": event_type,
            "timestamp": timestamp,
            "versionNumber": version,
            "principalIdentifier": "12345678901234567890123456789012",
            "sessionIdentifier": str(uuid.uuid4()),
        }
        if client_id is not None:
            event["clientId"] = client_id
        if event_type == "connected":
            event["ipAddress"] = "192.0.2.1"
        if reason is not None:
            event["clientInitiatedDisconnect"] = reason == "CLIENT_INITIATED_DISCONNECT"
            event["disconnectReason"] = reason
        self.raw(f"{event_type}/{topic_id or client_id or 'nobody'}", json.dumps(event))

    def raw(self, subtopic: str, payload: Union[str, bytes]) -> None:
        self._client.publish(f"{self.prefix}/{subtopic}", payload, qos=1).wait_for_publish(10)

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


class StatusDevice:
    """A device's presence connection: it sets its retained status ``online`` and leaves a
    Last Will that sets it ``offline`` when it vanishes without a DISCONNECT."""

    def __init__(self, broker: MosquittoBroker, topic: str) -> None:
        self.topic = topic
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"status-{uuid.uuid4().hex[:8]}")
        client.will_set(topic, "offline", qos=1, retain=True)
        self._client = _connected(broker, client)
        client.publish(topic, "online", qos=1, retain=True).wait_for_publish(10)

    def vanish(self) -> None:
        """The connection drops without a DISCONNECT: the broker publishes the Last Will."""
        self._client.loop_stop()
        sock = self._client.socket()
        if sock is not None:
            sock.close()

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
