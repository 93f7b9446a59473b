"""A real OTLP/gRPC metrics receiver on a loopback port, built from
opentelemetry-proto's service definitions; it keeps every request it gets."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry.proto.collector.metrics.v1 import (
    metrics_service_pb2,
    metrics_service_pb2_grpc,
)


@dataclass
class ReceivedPoint:
    scope: str
    metric: str
    attributes: dict[str, Any]
    value: float
    time_unix_nano: int


class _Servicer(metrics_service_pb2_grpc.MetricsServiceServicer):  # type: ignore[misc]
    def __init__(self) -> None:
        self.requests: list[metrics_service_pb2.ExportMetricsServiceRequest] = []
        self.lock = threading.Lock()

    def Export(self, request: Any, context: Any) -> Any:  # noqa: N802 - the proto's name
        with self.lock:
            self.requests.append(request)
        return metrics_service_pb2.ExportMetricsServiceResponse()


def _value(any_value: Any) -> Any:
    return getattr(any_value, any_value.WhichOneof("value"))


class OTLPReceiver:
    def __init__(self, servicer: _Servicer, endpoint: str) -> None:
        self._servicer = servicer
        self.endpoint = endpoint

    def points(self) -> list[ReceivedPoint]:
        """Every number data point of gauges and sums, and histogram counts."""
        found: list[ReceivedPoint] = []
        with self._servicer.lock:
            requests = list(self._servicer.requests)
        for request in requests:
            for resource_metrics in request.resource_metrics:
                for scope_metrics in resource_metrics.scope_metrics:
                    for metric in scope_metrics.metrics:
                        kind = metric.WhichOneof("data")
                        data = getattr(metric, kind)
                        for point in data.data_points:
                            attributes = {a.key: _value(a.value) for a in point.attributes}
                            if kind == "histogram":
                                value: float = point.count
                            else:
                                value = getattr(point, point.WhichOneof("value"))
                            found.append(
                                ReceivedPoint(
                                    scope_metrics.scope.name,
                                    metric.name,
                                    attributes,
                                    value,
                                    point.time_unix_nano,
                                )
                            )
        return found


@contextmanager
def otlp_receiver() -> Iterator[OTLPReceiver]:
    servicer = _Servicer()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield OTLPReceiver(servicer, f"127.0.0.1:{port}")
    finally:
        server.stop(grace=None)
