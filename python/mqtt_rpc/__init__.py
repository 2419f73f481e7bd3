"""mqtt-rpc: request/response over MQTT for asyncio services.

    from mqtt_rpc import MqttRpcClient

    async with MqttRpcClient("localhost", 1883) as client:
        reply = await client.call("dev1/device/control/set", '{"action": "GET_HEALTH_CHECK"}')
"""

from ._core import __version__
from .client import CallStream, ConnectionEvent, MqttRpcClient, Retry
from .responder import Responder, RpcHandlerError
from .sync import SyncMqttRpcClient
from .errors import (
    BrokerRefusedError,
    ConnectionLostError,
    MqttRpcError,
    NoRespondersError,
    NotConnectedError,
    PayloadError,
    PublishRejectedError,
    RemoteError,
    RpcTimeoutError,
    SubscriptionRefusedError,
    TlsError,
)

__all__ = [
    "MqttRpcClient",
    "SyncMqttRpcClient",
    "Responder",
    "RpcHandlerError",
    "Retry",
    "CallStream",
    "ConnectionEvent",
    "MqttRpcError",
    "RpcTimeoutError",
    "RemoteError",
    "NotConnectedError",
    "TlsError",
    "BrokerRefusedError",
    "ConnectionLostError",
    "SubscriptionRefusedError",
    "NoRespondersError",
    "PublishRejectedError",
    "PayloadError",
    "__version__",
]
