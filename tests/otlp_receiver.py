"""Real OTLP metrics receivers on loopback ports, built from
opentelemetry-proto's service definitions: gRPC (``otlp_receiver``) and
HTTP/protobuf (``otlp_http_receiver``, ``POST /v1/metrics`` decoding an
``ExportMetricsServiceRequest``, gzip or not). Each keeps every request it
accepts and can refuse the first ``refuse_first`` requests, or every request
holding a data point whose attributes ``refuse_point`` judges bad (gRPC
INVALID_ARGUMENT, HTTP 400: errors the OTLP exporters do not retry
themselves, so they return FAILURE at once)."""

from __future__ import annotations

import gzip
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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
    #: (trace_id hex, span_id hex, exemplar time) of each exemplar.
    exemplars: list[tuple[str, str, int]] = field(default_factory=list)


#: Judges the attributes of one data point: True refuses the whole request.
PointJudge = Callable[[dict[str, Any]], bool]


class _Store:
    """The requests a receiver accepted, and how many it must still refuse."""

    def __init__(self, refuse_first: int = 0, refuse_point: PointJudge | None = None) -> None:
        self.requests: list[metrics_service_pb2.ExportMetricsServiceRequest] = []
        self.refused = 0
        self.refuse_first = refuse_first
        self.refuse_point = refuse_point
        self.lock = threading.Lock()

    def accept(self, request: Any) -> bool:
        with self.lock:
            if self.refused < self.refuse_first or self._holds_refused_point(request):
                self.refused += 1
                return False
            self.requests.append(request)
            return True

    def _holds_refused_point(self, request: Any) -> bool:
        if self.refuse_point is None:
            return False
        return any(
            self.refuse_point({a.key: _value(a.value) for a in point.attributes})
            for resource_metrics in request.resource_metrics
            for scope_metrics in resource_metrics.scope_metrics
            for metric in scope_metrics.metrics
            for point in getattr(metric, metric.WhichOneof("data")).data_points
        )


class _Servicer(metrics_service_pb2_grpc.MetricsServiceServicer):  # type: ignore[misc]
    def __init__(self, store: _Store) -> None:
        self.store = store

    def Export(self, request: Any, context: Any) -> Any:  # noqa: N802 - the proto's name
        if not self.store.accept(request):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "refused by the test receiver")
        return metrics_service_pb2.ExportMetricsServiceResponse()


def _value(any_value: Any) -> Any:
    return getattr(any_value, any_value.WhichOneof("value"))


class OTLPReceiver:
    def __init__(self, store: _Store, endpoint: str) -> None:
        self._store = store
        self.endpoint = endpoint

    @property
    def refused(self) -> int:
        return self._store.refused

    def request_count(self) -> int:
        with self._store.lock:
            return len(self._store.requests)

    def points(self) -> list[ReceivedPoint]:
        """Every number data point of gauges and sums, and histogram counts."""
        found: list[ReceivedPoint] = []
        with self._store.lock:
            requests = list(self._store.requests)
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
                                    [
                                        (e.trace_id.hex(), e.span_id.hex(), e.time_unix_nano)
                                        for e in point.exemplars
                                    ],
                                )
                            )
        return found


@contextmanager
def otlp_receiver(
    refuse_first: int = 0, refuse_point: PointJudge | None = None
) -> Iterator[OTLPReceiver]:
    """An OTLP/gRPC receiver; ``endpoint`` is ``127.0.0.1:PORT``."""
    store = _Store(refuse_first, refuse_point)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(_Servicer(store), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield OTLPReceiver(store, f"127.0.0.1:{port}")
    finally:
        server.stop(grace=None)


class _HTTPHandler(BaseHTTPRequestHandler):
    server: _HTTPServer

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.path != "/v1/metrics":
            self._reply(404, b"")
            return
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        if self.headers.get("Content-Type") != "application/x-protobuf":
            self._reply(415, b"")
            return
        request = metrics_service_pb2.ExportMetricsServiceRequest()
        request.ParseFromString(body)
        if not self.server.store.accept(request):
            self._reply(400, b"")
            return
        self._reply(200, metrics_service_pb2.ExportMetricsServiceResponse().SerializeToString())

    def _reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        pass


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, store: _Store) -> None:
        super().__init__(("127.0.0.1", 0), _HTTPHandler)
        self.store = store


@contextmanager
def otlp_http_receiver(
    refuse_first: int = 0, refuse_point: PointJudge | None = None
) -> Iterator[OTLPReceiver]:
    """An OTLP/HTTP receiver; ``endpoint`` is ``http://127.0.0.1:PORT/v1/metrics``."""
    store = _Store(refuse_first, refuse_point)
    server = _HTTPServer(store)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield OTLPReceiver(store, f"http://127.0.0.1:{server.server_address[1]}/v1/metrics")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
