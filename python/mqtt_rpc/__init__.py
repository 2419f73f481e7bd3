"""mqtt-rpc: request/response over MQTT for asyncio services.

    from mqtt_rpc import MqttRpcClient

    client = MqttRpcClient()   # the broker from MQTT_RPC_URL (default mqtt://localhost:1883)
    reply = await client.call("dev1/device/control/set", '{"action": "GET_HEALTH_CHECK"}')
"""

from ._core import __version__
from .client import CallStream, ConnectionEvent, MqttRpcClient, Retry
from .context import RequestContext, current_request
from .options import TLS, Limits, Reconnect, Replies
from .presence import AwsLifecycle, DevicePresence, PresenceSource, RetainedStatus
from .responder import Responder, RpcHandlerError
from .sync import SyncMqttRpcClient
from .errors import (
    BrokerRefusedError,
    ConnectionLostError,
    DeviceOfflineError,
    MqttRpcError,
    NoRespondersError,
    NotConnectedError,
    PayloadError,
    PublishRejectedError,
    RemoteError,
    ReplyValidationError,
    RpcTimeoutError,
    SubscriptionRefusedError,
    TlsError,
)

__all__ = [
    "MqttRpcClient",
    "SyncMqttRpcClient",
    "Responder",
    "RpcHandlerError",
    "current_request",
    "RequestContext",
    "Retry",
    "CallStream",
    "ConnectionEvent",
    "TLS",
    "Limits",
    "Reconnect",
    "Replies",
    "AwsLifecycle",
    "RetainedStatus",
    "PresenceSource",
    "DevicePresence",
    "MqttRpcError",
    "RpcTimeoutError",
    "RemoteError",
    "NotConnectedError",
    "TlsError",
    "BrokerRefusedError",
    "ConnectionLostError",
    "SubscriptionRefusedError",
    "NoRespondersError",
    "DeviceOfflineError",
    "PublishRejectedError",
    "PayloadError",
    "ReplyValidationError",
    "__version__",
]
