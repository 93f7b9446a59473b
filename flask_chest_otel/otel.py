"""``FlaskChestOTel``: any OpenTelemetry ``MetricExporter`` as a chest (OTLP
gRPC or HTTP, console, Prometheus remote write, this package's own).

The chest is fed by the chests' pipeline, not by the SDK's aggregation: each
request's variables reach the wrapped exporter as one point each, at the
request's own time, with the request's trace and span IDs as the point's
exemplar, with no cardinality limit and nothing kept per request ID.
Delivery is ours: the points wait in the chest's bounded buffer and a thread
of the chest's own hands them to the wrapped exporter; a FAILURE (or an
exception) keeps them there and they are offered again with backoff.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any

from opentelemetry.sdk.environment_variables import (
    OTEL_EXPORTER_OTLP_METRICS_PROTOCOL,
    OTEL_EXPORTER_OTLP_PROTOCOL,
)
from opentelemetry.sdk.metrics.export import (
    Metric,
    MetricExporter,
    MetricExportResult,
    MetricsData,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from ._chest import DEFAULT_EXPORT_INTERVAL, Chest
from ._delivery import DELIVERED, BufferedExporter, Settlement, retry
from ._names import ATTR_INDEX
from ._spool_codecs import dumps_point_item, loads_point_item

__all__ = ["FlaskChestOTel", "OTelExporterAdapter", "otlp_exporter_from_environment"]

#: Points per call of the wrapped exporter: well under the 4 MiB a gRPC
#: server (and the OpenTelemetry Collector) accepts by default.
DEFAULT_MAX_BATCH_ITEMS = 2_000


@dataclasses.dataclass(frozen=True)
class _PointItem:
    """One data point and where it belongs, as buffered (and spooled, see
    ``_spool_codecs.dumps_point_item``)."""

    resource: Resource
    scope: InstrumentationScope
    metric: Metric  # with no data points: the metric's name, unit and kind
    point: Any


class OTelExporterAdapter(BufferedExporter[_PointItem]):
    """A ``BufferedExporter`` that delivers through another ``MetricExporter``.

    ``export`` only buffers; the sender thread passes batches of points,
    regrouped into MetricsData (one metric per name and kind, in the order
    received), to ``exporter.export``. SUCCESS delivers them; FAILURE or an
    exception keeps them for a later attempt. ``shutdown`` sends what is left,
    then shuts the wrapped exporter down.

    Args:
        exporter: the OpenTelemetry exporter to deliver through.
        options: as for ``BufferedExporter`` (``max_batch_items`` default
            2,000 points per call).
    """

    def __init__(self, exporter: MetricExporter, **options: Any) -> None:
        if not isinstance(exporter, MetricExporter):
            raise TypeError(
                f"{options.get('name', 'FlaskChestOTel')}: exporter must be an OpenTelemetry "
                f"MetricExporter, got {exporter!r}"
            )
        options.setdefault("max_batch_items", DEFAULT_MAX_BATCH_ITEMS)
        super().__init__(**options)
        self.wrapped = exporter

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, exporter={self.wrapped!r})"

    def _spool_dumps(self, item: _PointItem) -> bytes:
        return dumps_point_item(item)

    def _spool_loads(self, data: bytes) -> _PointItem:
        return loads_point_item(data, _PointItem)

    def _spool_identity(self) -> tuple[str, str, str]:
        wrapped = type(self.wrapped)
        endpoint = getattr(self.wrapped, "_endpoint", "")
        where = f"{wrapped.__module__}.{wrapped.__qualname__} {endpoint}"
        return "otel", self.name, where.strip()

    def _encode(self, metrics_data: MetricsData) -> Iterator[_PointItem]:
        for resource_metrics in metrics_data.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    data: Any = metric.data
                    shape = dataclasses.replace(
                        metric, data=dataclasses.replace(data, data_points=[])
                    )
                    for point in data.data_points:
                        attributes = point.attributes
                        if attributes and ATTR_INDEX in attributes:
                            point = dataclasses.replace(
                                point,
                                attributes={
                                    key: value
                                    for key, value in attributes.items()
                                    if key != ATTR_INDEX
                                },
                            )
                        yield _PointItem(
                            resource_metrics.resource, scope_metrics.scope, shape, point
                        )

    def _send(self, batch: Sequence[_PointItem]) -> Settlement:
        """The wrapped exporter's FAILURE says nothing of why: the batch is
        retried, and a point that fails every time while others pass (a
        collector refusing it with 400 or INVALID_ARGUMENT) is dropped alone
        (see ``_delivery._drain``)."""
        try:
            result = self.wrapped.export(_metrics_data(batch), timeout_millis=self.timeout * 1000)
        except Exception as exc:
            return retry(f"{type(self.wrapped).__name__}.export raised {exc!r}")
        if result is MetricExportResult.SUCCESS:
            return DELIVERED
        return retry(f"{type(self.wrapped).__name__}.export returned FAILURE")

    def _close(self) -> None:
        try:
            self.wrapped.shutdown(timeout_millis=self.timeout * 1000)
        except Exception:
            self.logger.exception("%s: shutting the wrapped exporter down failed", self.name)


def _metrics_data(batch: Sequence[_PointItem]) -> MetricsData:
    """The points regrouped: one ResourceMetrics per resource, one
    ScopeMetrics per scope, one Metric per name and kind."""
    resources: dict[Any, tuple[Resource, dict[Any, tuple[InstrumentationScope, dict[Any, Any]]]]]
    resources = {}
    for item in batch:
        resource_key = (_freeze(item.resource.attributes), item.resource.schema_url)
        scopes = resources.setdefault(resource_key, (item.resource, {}))[1]
        scope = item.scope
        scope_key = (
            scope.name,
            scope.version or "",
            scope.schema_url or "",
            _freeze(scope.attributes),
        )
        metrics = scopes.setdefault(scope_key, (scope, {}))[1]
        metric = item.metric
        data = metric.data
        metric_key = (
            metric.name,
            metric.unit,
            metric.description,
            type(data),
            getattr(data, "aggregation_temporality", None),
            getattr(data, "is_monotonic", None),
        )
        metrics.setdefault(metric_key, (metric, []))[1].append(item.point)
    return MetricsData(
        resource_metrics=[
            ResourceMetrics(
                resource=resource,
                scope_metrics=[
                    ScopeMetrics(
                        scope=scope,
                        metrics=[
                            dataclasses.replace(
                                metric, data=dataclasses.replace(metric.data, data_points=points)
                            )
                            for metric, points in metrics.values()
                        ],
                        schema_url=scope.schema_url or "",
                    )
                    for scope, metrics in scopes.values()
                ],
                schema_url=resource.schema_url,
            )
            for resource, scopes in resources.values()
        ]
    )


def _freeze(attributes: Any) -> Any:
    if not attributes:
        return ()
    return tuple(
        sorted(
            (key, tuple(value) if isinstance(value, (list, tuple)) else value)
            for key, value in attributes.items()
        )
    )


def otlp_exporter_from_environment() -> MetricExporter:
    """An OTLP metric exporter configured by the standard variables: the
    protocol from ``OTEL_EXPORTER_OTLP_METRICS_PROTOCOL`` or
    ``OTEL_EXPORTER_OTLP_PROTOCOL`` (``grpc``, the Python SDK's default, or
    ``http/protobuf``); endpoint, headers, certificates, compression and
    timeout from the other ``OTEL_EXPORTER_OTLP_*`` variables, as the
    exporter itself reads them."""
    protocol = (
        os.environ.get(OTEL_EXPORTER_OTLP_METRICS_PROTOCOL)
        or os.environ.get(OTEL_EXPORTER_OTLP_PROTOCOL)
        or "grpc"
    ).strip()
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
            OTLPMetricExporter as GRPCExporter,
        )

        return GRPCExporter()
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
            OTLPMetricExporter as HTTPExporter,
        )

        return HTTPExporter()
    variable = (
        OTEL_EXPORTER_OTLP_METRICS_PROTOCOL
        if os.environ.get(OTEL_EXPORTER_OTLP_METRICS_PROTOCOL)
        else OTEL_EXPORTER_OTLP_PROTOCOL
    )
    raise ValueError(
        f"FlaskChestOTel: {variable}={protocol!r} is not supported; "
        "use 'grpc' or 'http/protobuf', or pass exporter="
    )


class FlaskChestOTel(Chest):
    """Any OpenTelemetry ``MetricExporter`` as a chest::

        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        chest_otel = FlaskChestOTel(exporter=OTLPMetricExporter(endpoint="localhost:4317",
                                                                insecure=True))

    Each decorated variable of each request becomes one Gauge point of the
    metric named after it, at the request's own time, with the attributes
    ``request_id``, ``http.request.method``, ``http.route`` (and
    ``flask_chest.value`` holding a text value, whose point value is 1), and,
    when a span was recording, an exemplar naming its trace and span. A bool
    becomes the integer 1 or 0 (an OTLP point holds an int or a double); a
    NaN or an infinity is sent as the double it is (OTLP carries it).
    ``metric_reader()`` sends the app's other OTel metrics through it too
    (DELTA temporality, whatever the wrapped exporter prefers).

    Args:
        exporter: the exporter to deliver through; default an OTLP exporter
            built from the ``OTEL_EXPORTER_OTLP_*`` variables
            (``otlp_exporter_from_environment``).
        name: shown in log lines.
        export_interval: seconds between deliveries (default 2).
        logger: where delivery problems are logged.
        options: delivery options of the chest's buffer, as for every chest
            (``max_buffer_items``, ``retry_initial``, ``retry_max``,
            ``timeout``, ``max_batch_items``...).
    """

    def __init__(
        self,
        exporter: MetricExporter | None = None,
        name: str = "OTel",
        *,
        export_interval: float = DEFAULT_EXPORT_INTERVAL,
        logger: logging.Logger | None = None,
        **options: Any,
    ) -> None:
        if exporter is None:
            exporter = otlp_exporter_from_environment()
        super().__init__(
            name,
            OTelExporterAdapter(exporter, name=name, logger=logger, **options),
            export_interval=export_interval,
            logger=logger,
        )

    def __repr__(self) -> str:
        exporter = self.exporter
        wrapped = exporter.wrapped if isinstance(exporter, OTelExporterAdapter) else exporter
        return f"FlaskChestOTel(name={self.name!r}, exporter={type(wrapped).__name__})"
