"""Batched mode: requests' tuples are buffered; one generator call and one
POST carry a batch of them, made at send time.

A batch the server refuses with 400 is suspect: the drain narrows it down to
the requests refused. If the generator fails on a batch, the requests it
fails on alone are dropped and the others sent.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from opentelemetry.sdk.metrics.export import MetricsData

from .._delivery import Fate, Settlement, refused
from .._pacing import paced
from .._records import Record
from ._context_tuple import ContextTuple, flat_tuple, from_flat_tuple, record_flat_groups
from ._exporter import HTTPPayloadMetricExporter, Item, Payload, Tuples, body_key, label_of
from ._json_payload import serialise
from ._transport import Post
from ._verdicts import Verdicts

#: Most requests one POST carries.
MAX_BATCH_REQUESTS = 10_000
#: ... while the app is serving requests (``_pacing``): the payload's
#: ``json.dumps`` holds the GIL throughout, about 1 ms for 500 requests of
#: two variables, 6 ms for 2,500 (the sample app's share of one export).
PACED_BATCH_REQUESTS = 500


class BatchedPayloadExporter(HTTPPayloadMetricExporter):
    """``HTTPPayloadMetricExporter(per_request=False)``: items are requests'
    tuples, one POST per batch."""

    per_request = False
    _item_type = tuple
    paced_batch_items = PACED_BATCH_REQUESTS

    @classmethod
    def _max_batch_items(cls, max_connections: int) -> int:
        return MAX_BATCH_REQUESTS

    def context_tuple_lists(self, metrics_data: MetricsData) -> list[list[ContextTuple]]:
        """The lists the payload generator is called with for ``metrics_data``:
        one, every request's tuples then the other metrics'."""
        merged = [item for group in self._groups(metrics_data) for item in group]
        return [merged] if merged else []

    def _encode(self, metrics_data: MetricsData) -> Iterator[Item]:
        # Through lists: see ``_records.flat_attributes``.
        yield from (
            tuple([flat_tuple(item) for item in group]) for group in self._groups(metrics_data)
        )

    def _encode_records(self, records: Sequence[Record]) -> Iterator[Item]:
        yield from (tuple(group) for group in record_flat_groups(records))

    def _send_own(self, batch: Sequence[Tuples]) -> Settlement:
        """One POST for the batch's requests. A 400 makes the batch suspect
        (the drain narrows it down to the requests refused); if the
        generator fails on the batch, the requests it fails on alone are
        dropped and the others sent."""
        merged = [from_flat_tuple(flat) for group in paced(batch) for flat in group]
        label, count = label_of(merged)
        try:
            body, is_json = serialise(self.payload_generator(merged))
        except Exception:
            return self._send_isolated(batch)
        judged = self._post(Payload(body, is_json, label, count, body_key(body)))
        if judged.rest is Fate.REFUSED and judged.message.startswith("HTTP 400 "):
            return Settlement(Fate.SUSPECT, message=judged.message)
        return judged

    def _send_isolated(self, batch: Sequence[Tuples]) -> Settlement:
        """The generator failed on the batch: the requests it fails on alone
        are not encodable; the others are sent (one by one if it fails on
        the whole only)."""
        verdicts = Verdicts(len(batch))
        good = list(self._payloads_of(batch, verdicts))
        if not good:
            return verdicts.settlement()
        if len(good) == len(batch):  # fails on the whole only: send one by one
            return self._send_one_by_one(batch)
        verdicts.merge(good, self._send_own([batch[index] for index in good]))
        return verdicts.settlement()

    def _send_one_by_one(self, groups: Sequence[Tuples]) -> Settlement:
        """One POST per request, each judged on its own, as in per-request
        mode; a retry stops there."""
        verdicts = Verdicts(len(groups))
        for index, group in enumerate(groups):
            judged = self._send_own([group])
            if judged.rest is Fate.SUSPECT:  # a 400 for this request alone
                judged = refused(judged.message)
            verdicts.merge([index], judged)
            if judged.fate(0) is Fate.RETRY:
                return verdicts.rest(index + 1, verdicts.retry_settlement(index))
        return verdicts.settlement()

    def _post(self, payload: Payload) -> Settlement:
        outcome = self._transport.post_many(
            [Post(payload.body, payload.is_json, payload.key)], self._cap()
        )
        return self._settle(outcome[0], payload)

    def _send_adopted(self, batch: Sequence[Payload]) -> Settlement:
        """Payloads the per-request mode left in the spool: sent as they are."""
        return self._send_payloads(batch)
