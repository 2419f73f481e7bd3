"""Metrics of clients and responders for Prometheus and OpenTelemetry, read from their
``stats()`` and the core's histograms at each scrape: nothing is counted twice, and
nothing costs between scrapes.

    from prometheus_client import REGISTRY
    from mqtt_rpc.metrics import PrometheusCollector

    REGISTRY.register(PrometheusCollector(client, responder))   # needs the prometheus extra

    from mqtt_rpc.metrics import OpenTelemetryMetrics

    OpenTelemetryMetrics(client, meter_provider=provider)         # needs the otel extra

A source is an `MqttRpcClient`, a `SyncMqttRpcClient` or a `Responder`; one collector
takes any number of them (``add`` and ``remove`` change the set), every series labelled
by its source's ``client_id`` (a pool's: the base of its connections' ids). Register one
collector per registry: two would expose the same metric names twice.

What is exported (Prometheus names; OpenTelemetry uses the same with dots):

- clients: ``mqtt_rpc_client_calls_started_total``, ``mqtt_rpc_client_calls_total``
  by ``outcome`` (succeeded, timed_out, failed_remotely, cancelled, failed, no_responders,
  rejected, device_offline), ``mqtt_rpc_client_call_duration_seconds`` (a histogram of
  answered calls),
  ``mqtt_rpc_client_dropped_total`` by ``kind`` (the ``stats()`` counter's name),
  ``mqtt_rpc_client_messages_received_total`` by ``kind`` (progress, gathered),
  ``mqtt_rpc_client_calls_throttled_total``, ``mqtt_rpc_client_calls_waited_for_device_total``,
  ``mqtt_rpc_client_reconnects_total``, ``mqtt_rpc_client_takeovers_total``, and the gauges ``mqtt_rpc_client_pending``,
  ``mqtt_rpc_client_reply_subscriptions``, ``mqtt_rpc_client_presence_devices``,
  ``mqtt_rpc_client_connected``;
- responders: ``mqtt_rpc_responder_requests_total``,
  ``mqtt_rpc_responder_notifications_total``, ``mqtt_rpc_responder_dropped_total`` by
  ``kind``, ``mqtt_rpc_responder_repeats_answered_total``,
  ``mqtt_rpc_responder_handlers_cancelled_total``,
  ``mqtt_rpc_responder_control_requests_total``, ``mqtt_rpc_responder_answers_total`` by
  ``state`` (queued, sent, unsent), ``mqtt_rpc_responder_takeovers_total``, the gauge ``mqtt_rpc_responder_handlers_running``; and
  per handler (label ``filter``) ``mqtt_rpc_handler_requests_total``,
  ``mqtt_rpc_handler_errors_total`` and ``mqtt_rpc_handler_duration_seconds`` (a
  histogram, from admission to answer).

Histogram buckets come from the core's own histogram (about 6% wide): an answer within a
bucket's width under a bound is counted under the next bound, never under a lower one;
``_count`` and ``_sum`` are exact. OpenTelemetry has no asynchronous histogram: there a
histogram is exported as its ``.count`` and ``.sum`` (for averages and rates), and the
client's latency percentiles as the gauge ``mqtt_rpc.client.call.duration.quantile``."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

if TYPE_CHECKING:
    from .client import MqttRpcClient
    from .responder import Responder
    from .sync import SyncMqttRpcClient

    Source = Union[MqttRpcClient, SyncMqttRpcClient, Responder]

__all__ = ["PrometheusCollector", "OpenTelemetryMetrics", "DEFAULT_BUCKETS"]

#: Histogram bounds in seconds: from a loopback round trip to a device that takes its time.
DEFAULT_BUCKETS: Tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)

_OUTCOMES = (
    "succeeded",
    "timed_out",
    "failed_remotely",
    "cancelled",
    "failed",
    "no_responders",
    "rejected",
    "device_offline",
)
_CLIENT_DROPS = (
    "replies_dropped_stray",
    "replies_dropped_duplicate",
    "replies_dropped_malformed",
    "replies_dropped_oversized",
    "messages_dropped",
    "interim_dropped",
    "presence_events_malformed",
)
_TAKEOVERS = "Connections lost to another connection with the same client id."
_RESPONDER_DROPS = (
    "dropped_malformed",
    "dropped_oversized",
    "dropped_overloaded",
    "requests_overloaded",
    "repeats_dropped",
    "requests_expired",
)


@dataclass
class Histogram:
    """Cumulative counts at or below each bound, the count and the sum (seconds)."""

    at_or_below: List[Tuple[float, int]]
    count: int
    total: float


@dataclass
class Family:
    """One metric: ``path`` names it (``("client", "calls")`` is ``mqtt_rpc_client_calls``
    in Prometheus, ``mqtt_rpc.client.calls`` in OpenTelemetry)."""

    path: Tuple[str, ...]
    kind: str  # "counter", "gauge" or "histogram"
    description: str
    unit: str = ""
    samples: List[Tuple[Dict[str, str], Union[float, Histogram]]] = field(default_factory=list)


class _Families:
    """Families by path, in the order first seen, filled source by source."""

    def __init__(self) -> None:
        self._by_path: Dict[Tuple[str, ...], Family] = {}

    def add(
        self,
        path: Tuple[str, ...],
        kind: str,
        description: str,
        labels: Dict[str, str],
        value: Union[float, Histogram],
        unit: str = "",
    ) -> None:
        family = self._by_path.get(path)
        if family is None:
            family = self._by_path[path] = Family(path, kind, description, unit)
        family.samples.append((labels, value))

    def __iter__(self) -> Iterator[Family]:
        return iter(self._by_path.values())


def _histogram(reading: Tuple[List[int], int, float], bounds: Sequence[float]) -> Histogram:
    at_or_below, count, total = reading
    return Histogram(list(zip(bounds, at_or_below)), count, total)


def read(sources: Iterable["Source"], bounds: Sequence[float] = DEFAULT_BUCKETS) -> List[Family]:
    """Every source's metrics, as families of labelled samples."""
    from .responder import Responder

    families = _Families()
    for source in sources:
        if isinstance(source, Responder):
            _read_responder(families, source, bounds)
        else:
            _read_client(families, source, bounds)
    return list(families)


def _read_client(families: _Families, client: Any, bounds: Sequence[float]) -> None:
    stats = client.stats()
    me = {"client_id": client.client_id}
    families.add(("client", "calls_started"), "counter", "Calls started.", me, stats["calls_started"])
    for outcome in _OUTCOMES:
        families.add(
            ("client", "calls"), "counter", "Calls ended, by outcome.", {**me, "outcome": outcome}, stats[f"calls_{outcome}"]
        )
    histogram = _histogram(client._core.latency_histogram(list(bounds)), bounds)
    families.add(
        ("client", "call_duration"), "histogram", "Latency of answered calls.", me, histogram, unit="seconds"
    )
    for kind in _CLIENT_DROPS:
        families.add(
            ("client", "dropped"), "counter", "Messages dropped, by stats() counter.", {**me, "kind": kind}, stats[kind]
        )
    for kind, key in (("progress", "progress_received"), ("gathered", "replies_gathered")):
        families.add(
            ("client", "messages_received"),
            "counter",
            "Progress messages and scatter-gather answers received.",
            {**me, "kind": kind},
            stats[key],
        )
    families.add(
        ("client", "calls_throttled"), "counter", "Calls that waited for the publish-rate limit.", me, stats["calls_throttled"]
    )
    families.add(
        ("client", "calls_waited_for_device"),
        "counter",
        "Calls held for a device known offline (wait_for_device).",
        me,
        stats["calls_waited_for_device"],
    )
    families.add(("client", "reconnects"), "counter", "Reconnections after a lost connection.", me, stats["reconnects"])
    families.add(("client", "takeovers"), "counter", _TAKEOVERS, me, stats["takeovers"])
    families.add(("client", "pending"), "gauge", "Calls not yet ended.", me, stats["pending"])
    families.add(
        ("client", "reply_subscriptions"), "gauge", "Reply filters held or being subscribed.", me, stats["reply_subscriptions"]
    )
    families.add(
        ("client", "presence_devices"), "gauge", "Devices whose presence is known.", me, stats["presence_devices"]
    )
    families.add(("client", "connected"), "gauge", "1 while the connection is up.", me, 1.0 if client.connected else 0.0)


def _read_responder(families: _Families, responder: "Responder", bounds: Sequence[float]) -> None:
    core = responder._core
    if core is None:
        return  # not started: nothing to say yet
    stats = responder.stats()
    me = {"client_id": core.client_id}
    families.add(("responder", "requests"), "counter", "Requests received.", me, stats["requests"])
    families.add(("responder", "notifications"), "counter", "Notifications received.", me, stats["notifications"])
    for kind in _RESPONDER_DROPS:
        families.add(
            ("responder", "dropped"),
            "counter",
            "Requests dropped or refused, by stats() counter.",
            {**me, "kind": kind},
            stats[kind],
        )
    families.add(
        ("responder", "repeats_answered"),
        "counter",
        "Repeated requests answered without a second run.",
        me,
        stats["repeats_answered_from_cache"],
    )
    families.add(
        ("responder", "handlers_cancelled"), "counter", "Runs cancelled by their callers.", me, stats["handlers_cancelled"]
    )
    families.add(
        ("responder", "control_requests"),
        "counter",
        "Discovery and health requests (PING, INFO, STATS) answered.",
        me,
        stats["control_requests"],
    )
    for state in ("queued", "sent", "unsent"):
        families.add(
            ("responder", "answers"), "counter", "Answers, by state.", {**me, "state": state}, stats[f"answers_{state}"]
        )
    families.add(("responder", "takeovers"), "counter", _TAKEOVERS, me, stats["takeovers"])
    families.add(
        ("responder", "handlers_running"),
        "gauge",
        "Handler runs under way or waiting for a turn.",
        me,
        stats["handlers_running_or_waiting"],
    )
    for handler in core.handlers(list(bounds)):
        labels = {**me, "filter": handler["filter"]}
        families.add(("handler", "requests"), "counter", "Answers given by the handler.", labels, handler["requests"])
        families.add(("handler", "errors"), "counter", "Error answers given by the handler.", labels, handler["errors"])
        reading = (handler["at_or_below"], handler["requests"], handler["processing_seconds_total"])
        histogram = _histogram(reading, bounds)
        families.add(
            ("handler", "duration"),
            "histogram",
            "Time from a request's admission to its answer.",
            labels,
            histogram,
            unit="seconds",
        )


class _Sources:
    """The set of sources an exporter reads, in the order added."""

    def __init__(self, sources: Iterable["Source"]) -> None:
        self._sources: List["Source"] = []
        for source in sources:
            self.add(source)

    def add(self, source: "Source") -> None:
        """Exports ``source`` too (adding one already there does nothing)."""
        if not any(known is source for known in self._sources):
            self._sources.append(source)

    def remove(self, source: "Source") -> None:
        """Stops exporting ``source``."""
        self._sources = [known for known in self._sources if known is not source]


class PrometheusCollector(_Sources):
    """A ``prometheus_client`` custom collector of the given sources' metrics (see the
    module's documentation for the names). ``buckets``: the duration histograms' bounds,
    in seconds."""

    def __init__(self, *sources: "Source", buckets: Sequence[float] = DEFAULT_BUCKETS) -> None:
        super().__init__(sources)
        if list(buckets) != sorted(set(buckets)) or not all(0 < b < math.inf for b in buckets):
            raise ValueError("buckets must be ascending, positive and finite")
        self._buckets = tuple(buckets)

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        for family in read(self._sources, self._buckets):
            name = "_".join(("mqtt_rpc",) + family.path)
            if family.unit:
                name = f"{name}_{family.unit}"
            label_names = list(family.samples[0][0]) if family.samples else []
            metric: Any
            if family.kind == "counter":
                metric = CounterMetricFamily(name, family.description, labels=label_names)
            elif family.kind == "gauge":
                metric = GaugeMetricFamily(name, family.description, labels=label_names)
            else:
                metric = HistogramMetricFamily(name, family.description, labels=label_names)
            for labels, value in family.samples:
                values = [labels[name] for name in label_names]
                if isinstance(value, Histogram):
                    buckets = [(repr(float(bound)), float(n)) for bound, n in value.at_or_below]
                    buckets.append(("+Inf", float(value.count)))
                    metric.add_metric(values, buckets, value.total)
                else:
                    metric.add_metric(values, float(value))
            yield metric

    def describe(self) -> Iterator[Any]:
        # The names are fixed whatever the sources: told without reading any.
        return iter(())


class OpenTelemetryMetrics(_Sources):
    """Registers observable instruments on a meter of ``meter_provider`` (default: the
    global one) that read the given sources at each collection (see the module's
    documentation)."""

    def __init__(self, *sources: "Source", meter_provider: Optional[Any] = None) -> None:
        super().__init__(sources)
        from opentelemetry import metrics

        from ._core import __version__

        self._meter = metrics.get_meter(__name__, __version__, meter_provider)
        self._instruments: List[Any] = []
        self._register()

    def _register(self) -> None:
        # The instruments of every family a client and a responder can have. Each callback
        # reads the sources itself: the callbacks of a collection run in no promised order,
        # a collection comes every few seconds at most, and a reading costs microseconds.
        from opentelemetry.metrics import CallbackOptions, Observation

        def observe(path: Tuple[str, ...], part: str) -> Any:
            def callback(options: CallbackOptions) -> Iterable[Observation]:
                family = next((f for f in read(self._sources) if f.path == path), None)
                if family is None:
                    return []
                observations = []
                for labels, value in family.samples:
                    if isinstance(value, Histogram):
                        number = value.count if part == "count" else value.total
                        observations.append(Observation(number, labels))
                    else:
                        observations.append(Observation(value, labels))
                return observations

            return callback

        for path, kind, unit in _FAMILIES:
            name = ".".join(("mqtt_rpc",) + path)
            if kind == "histogram":
                self._instruments.append(
                    self._meter.create_observable_counter(f"{name}.count", [observe(path, "count")], unit="1")
                )
                self._instruments.append(
                    self._meter.create_observable_counter(f"{name}.sum", [observe(path, "sum")], unit=unit)
                )
            elif kind == "counter":
                self._instruments.append(self._meter.create_observable_counter(name, [observe(path, "value")]))
            else:
                self._instruments.append(self._meter.create_observable_gauge(name, [observe(path, "value")]))

        def quantiles(options: CallbackOptions) -> Iterable[Observation]:
            from .responder import Responder

            observations = []
            for source in self._sources:
                if isinstance(source, Responder):
                    continue
                stats = source.stats()
                for quantile in ("50", "90", "99"):
                    value = stats[f"latency_p{quantile}_ms"]
                    if value is not None:
                        labels = {"client_id": source.client_id, "quantile": f"0.{quantile}"}
                        observations.append(Observation(value / 1000.0, labels))
            return observations

        self._instruments.append(
            self._meter.create_observable_gauge("mqtt_rpc.client.call.duration.quantile", [quantiles], unit="s")
        )


#: Every family's path, kind and unit (OpenTelemetry instruments are made up front, one
#: per family).
_FAMILIES: Tuple[Tuple[Tuple[str, ...], str, str], ...] = (
    (("client", "calls_started"), "counter", ""),
    (("client", "calls"), "counter", ""),
    (("client", "call_duration"), "histogram", "s"),
    (("client", "dropped"), "counter", ""),
    (("client", "messages_received"), "counter", ""),
    (("client", "calls_throttled"), "counter", ""),
    (("client", "calls_waited_for_device"), "counter", ""),
    (("client", "reconnects"), "counter", ""),
    (("client", "takeovers"), "counter", ""),
    (("client", "pending"), "gauge", ""),
    (("client", "reply_subscriptions"), "gauge", ""),
    (("client", "presence_devices"), "gauge", ""),
    (("client", "connected"), "gauge", ""),
    (("responder", "requests"), "counter", ""),
    (("responder", "notifications"), "counter", ""),
    (("responder", "dropped"), "counter", ""),
    (("responder", "repeats_answered"), "counter", ""),
    (("responder", "handlers_cancelled"), "counter", ""),
    (("responder", "control_requests"), "counter", ""),
    (("responder", "answers"), "counter", ""),
    (("responder", "takeovers"), "counter", ""),
    (("responder", "handlers_running"), "gauge", ""),
    (("handler", "requests"), "counter", ""),
    (("handler", "errors"), "counter", ""),
    (("handler", "duration"), "histogram", "s"),
)
