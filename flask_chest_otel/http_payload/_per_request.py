"""Per-request mode (flask-chest's): one generator call and one POST per
request, the payload made at export time and buffered ready to send.

A batch is the POSTs sent at once over the connections, each judged on its
own (``HTTPPayloadMetricExporter._send_payloads``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

from opentelemetry.sdk.metrics.export import MetricsData

from .._delivery import Settlement
from .._records import Record
from ._context_tuple import ContextTuple, record_groups
from ._exporter import HTTPPayloadMetricExporter, Item, Payload, Tuples, label_of
from ._json_payload import serialise
from ._verdicts import Verdicts

#: A batch is this many POSTs per connection: enough that the connections
#: stay busy while the batch's slowest answer is awaited.
BATCH_PER_CONNECTION = 4


class PerRequestPayloadExporter(HTTPPayloadMetricExporter):
    """``HTTPPayloadMetricExporter(per_request=True)``: items are payloads,
    one POST each."""

    per_request = True
    _item_type = Payload
    #: A request's POST goes as soon as it is encoded: the connections take
    #: what waits then, not waiting to fill a batch.
    send_at_items = 1
    #: Handed each request soon after it ends (every 20 ms while requests
    #: come, ``_chest.STEADY_COLLECT_INTERVAL``), not in a burst of a whole
    #: export interval's.
    steady = True

    @classmethod
    def _max_batch_items(cls, max_connections: int) -> int:
        return max_connections * BATCH_PER_CONNECTION

    def context_tuple_lists(self, metrics_data: MetricsData) -> list[list[ContextTuple]]:
        """The lists the payload generator is called with for ``metrics_data``:
        one per request, then one of the other metrics (if any)."""
        return self._groups(metrics_data)

    def _encode(self, metrics_data: MetricsData) -> Iterator[Item]:
        yield from self._payloads(self._groups(metrics_data))

    def _encode_records(self, records: Sequence[Record]) -> Iterator[Item]:
        yield from self._payloads(record_groups(records))

    def _payloads(self, groups: list[list[ContextTuple]]) -> Iterator[Payload]:
        """One payload per group (a request's tuples, or the other metrics')."""
        for group in groups:
            payload = self._generate(group)
            if payload is not None:
                yield payload

    def _generate(self, group: list[ContextTuple]) -> Payload | None:
        label, count = label_of(group)
        try:
            body, is_json = serialise(self.payload_generator(group))
        except Exception as exc:
            self._buffer.count_not_encoded()
            self._log_generator_failure(label, exc)
            return None
        return Payload(body, is_json, label, count)

    def _log_generator_failure(self, label: str, exc: Exception) -> None:
        self._log.log(
            logging.ERROR,
            "generator",
            "%s: payload_generator failed for %s; payload skipped: %s",
            self.name,
            label,
            self._secrets.redact_exception(exc),
        )

    def _send_own(self, batch: Sequence[Payload]) -> Settlement:
        return self._send_payloads(batch)

    def _send_adopted(self, batch: Sequence[Tuples]) -> Settlement:
        """Requests' tuples the batched mode left in the spool: each becomes
        its own payload here, as this mode makes them."""
        verdicts = Verdicts(len(batch))
        payloads = self._payloads_of(batch, verdicts)
        if payloads:
            verdicts.merge(list(payloads), self._send_payloads(list(payloads.values())))
        return verdicts.settlement()
