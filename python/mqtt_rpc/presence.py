"""Device presence for ``MqttRpcClient(presence=...)``: the sources a client can read, what
it knows of a device (`DevicePresence`), and the protocol a source of your own implements.

With a source, a call to a device the source says is offline fails at once with
`DeviceOfflineError` instead of waiting out its timeout (or, with ``wait_for_device=``,
waits for the device to come online). A device the source never mentioned is called as
always. The state itself is kept by the Rust core, per connection, in an LRU of
``presence_capacity`` devices."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Protocol, Union, runtime_checkable

logger = logging.getLogger("mqtt_rpc")


@dataclass(frozen=True)
class DevicePresence:
    """What the presence source last said of a device."""

    online: bool
    #: When it changed, as Unix time in seconds, if the source said (AWS's ``timestamp``).
    since: Optional[float] = None
    #: Why it went offline, if the source said (AWS's ``disconnectReason``).
    reason: Optional[str] = None


@dataclass(frozen=True)
class AwsLifecycle:
    """AWS IoT Core's lifecycle events: ``{prefix}/connected/{clientId}`` and
    ``{prefix}/disconnected/{clientId}``, ordered by ``versionNumber`` then ``timestamp``
    (they may arrive out of order). One subscription, ``{prefix}/+/+``. The device is the
    event's ``clientId``, never the topic's; an event without one is dropped and counted.
    ``presence="aws-lifecycle"`` is this with the default prefix."""

    prefix: str = "$aws/events/presence"


@dataclass(frozen=True)
class RetainedStatus:
    """A retained message per device on ``topic`` (one level is ``{device}``), set to
    ``online`` by the device when it connects and to ``offline`` by its Last Will (or by
    itself when it leaves). An empty retained message clears it: the device is unknown
    again. ``presence="retained-status"`` is this with the defaults."""

    topic: str = "{device}/status"
    online: str = "online"
    offline: str = "offline"


class Report(Protocol):
    """Tells the client a device's presence: ``report("cam1", False, since=time.time(),
    reason="battery")``."""

    def __call__(self, device_id: str, online: bool, *, since: Optional[float] = None, reason: Optional[str] = None) -> None: ...


@runtime_checkable
class PresenceSource(Protocol):
    """A presence source of your own (Sparkplug birth and death certificates, a fleet
    database, webhooks): the client runs ``await source.run(report)`` as a task on its loop
    while it is connected (cancelled by ``close()``), and the source calls ``report`` for
    every change it sees. The state is the latest report per device."""

    async def run(self, report: Report) -> None: ...


#: What ``presence=`` takes.
Presence = Union[str, AwsLifecycle, RetainedStatus, PresenceSource]


def core_options(presence: Presence, prefix_chosen: bool) -> Dict[str, Any]:
    """The core's options for a presence source (a string is checked by the core)."""
    if isinstance(presence, str):
        return {"presence": presence}
    if prefix_chosen:
        raise ValueError("presence_prefix goes with presence=\"aws-lifecycle\"; an AwsLifecycle has its own prefix")
    if isinstance(presence, AwsLifecycle):
        return {"presence": "aws-lifecycle", "presence_prefix": presence.prefix}
    if isinstance(presence, RetainedStatus):
        return {
            "presence": "retained-status",
            "presence_topic": presence.topic,
            "presence_online": presence.online,
            "presence_offline": presence.offline,
        }
    if isinstance(presence, PresenceSource):
        return {"presence": "reported"}
    raise TypeError(
        "presence must be \"aws-lifecycle\", \"retained-status\", an AwsLifecycle, a RetainedStatus "
        f"or an object with an async run(report) method, not {type(presence).__name__}"
    )


async def run_source(source: PresenceSource, report: Report) -> None:
    """Runs a source of the application's own until it returns or is cancelled; what it
    raises is logged (once: the source has ended), never raised into a call."""
    try:
        await source.run(report)
    except asyncio.CancelledError:
        raise
    except Exception:
        logger.exception("presence source %r failed: its last reports stand, and no new ones come", source)


#: Which device a request topic addresses: its first level unless told (``device_of=``).
DeviceOf = Callable[[str], Optional[str]]
