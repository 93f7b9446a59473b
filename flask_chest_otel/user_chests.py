"""``FlaskChest``: the base class of users' own chests (flask-chest's chest
API), and how any object with ``write(context_tuple_list)`` becomes a chest.

A user's chest is called once per request with that request's context
tuples, in ``tracked_vars`` order, never on the request path: the chests'
pipeline hands the request to a ``WriterChest`` (a ``Chest`` of ours wrapping
the object), whose sender thread calls ``write``, retries when it raises and
sends what is left at exit, as for every built-in chest.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from opentelemetry.sdk.metrics.export import Metric, MetricsData

from ._chest import DEFAULT_EXPORT_INTERVAL, Chest
from ._delivery import DELIVERED, BufferedExporter, Fate, Settlement
from ._spool_codecs import dumps_context_tuples, loads_context_tuples
from .http_payload._context_tuple import ContextTuple, context_tuples

__all__ = ["FlaskChest", "WriterChest", "writer_chest"]

#: Longest excerpt of a ``write`` exception put in a log line.
_EXCEPTION_EXCERPT = 200


class FlaskChest:
    """Base class of a chest of your own, as in flask-chest: implement
    ``write(context_tuple_list)``.

    ``write`` receives the tuples of one request,
    ``(variable_name, variable_value, request_id)`` in ``tracked_vars``
    order (each a ``ContextTuple``, which also carries ``attributes`` and
    ``time_unix_nano``). It runs on a thread of the chest's own, after the
    request; when it raises, the request's tuples stay buffered and ``write``
    is called with them again later (backoff up to ``retry_max`` seconds).

    Subclassing is optional: any object with a ``write`` method is accepted
    in ``chests=[...]``, and ``__init__`` need not call this one.

    Args:
        name: shown in log lines (``self.id``).
        logger: where this library logs the chest's delivery problems.
        kwargs: kept as ``self.kwargs`` for the subclass (flask-chest's
            signature).
    """

    def __init__(
        self, name: str = "FlaskChest", logger: logging.Logger | None = None, **kwargs: Any
    ) -> None:
        self.name = name
        self.logger = logger
        self.id = f"{type(self).__name__}(name={name})"
        self.kwargs = kwargs

    def __str__(self) -> str:
        return str(getattr(self, "id", None) or f"{type(self).__name__}()")

    def write(self, context_tuple_list: list[ContextTuple]) -> None:
        """Writes one request's variables to the backend; raise to have them
        retried."""
        raise NotImplementedError(f"{type(self).__name__} must implement write()")

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        """Calls ``write`` now for every request recorded so far; True when
        every call succeeded within the timeout."""
        return writer_chest(self).force_flush(timeout_millis)


class _WriteExporter(BufferedExporter[list[ContextTuple]]):
    """Calls ``write`` once per buffered request, oldest first."""

    def __init__(self, write: Any, **options: Any) -> None:
        options.setdefault("max_batch_items", 1)
        super().__init__(**options)
        self._write = write

    def _encode(self, metrics_data: MetricsData) -> Iterator[list[ContextTuple]]:
        per_request, others = context_tuples(metrics_data, self._unsupported)
        yield from per_request
        if others:
            yield others

    def _spool_dumps(self, item: list[ContextTuple]) -> bytes:
        return dumps_context_tuples(item)

    def _spool_loads(self, data: bytes) -> list[ContextTuple]:
        return loads_context_tuples(data)

    def _spool_identity(self) -> tuple[str, str, str]:
        owner = type(getattr(self._write, "__self__", self._write))
        return "writer", self.name, f"{owner.__module__}.{owner.__qualname__}"

    def _unsupported(self, metric: Metric) -> None:
        self._log.log(
            logging.WARNING,
            "unsupported",
            "%s: metric %s of type %s is not passed to write()",
            self.name,
            metric.name,
            type(metric.data).__name__,
        )

    def _send(self, batch: Sequence[list[ContextTuple]]) -> Settlement:
        """One ``write`` per request: those before one that raises are
        delivered, it and those after it are retried (one that keeps raising
        while the others pass is dropped alone: see ``_delivery._drain``)."""
        for done, group in enumerate(batch):
            try:
                self._write(list(group))
            except Exception as exc:
                text = f"{type(exc).__name__}: {exc}"[:_EXCEPTION_EXCERPT]
                return Settlement(
                    Fate.RETRY,
                    dict.fromkeys(range(done), Fate.DELIVERED),
                    message=f"write() raised {text}",
                )
        return DELIVERED


class WriterChest(Chest):
    """The chest of ours that delivers to an object's ``write`` method."""

    def __init__(self, target: Any, **options: Any) -> None:
        name = _name_of(target)
        export_interval = options.pop("export_interval", DEFAULT_EXPORT_INTERVAL)
        logger = getattr(target, "logger", None) if isinstance(target, FlaskChest) else None
        if not isinstance(logger, logging.Logger):
            logger = None
        exporter = _WriteExporter(target.write, name=name, logger=logger, **options)
        super().__init__(name, exporter, export_interval=export_interval, logger=logger)
        self.target = target


def _name_of(target: Any) -> str:
    chest_id = getattr(target, "id", None) if isinstance(target, FlaskChest) else None
    if isinstance(chest_id, str) and chest_id:
        return chest_id
    name = getattr(target, "name", None) if isinstance(target, FlaskChest) else None
    if isinstance(name, str) and name:
        return f"{type(target).__name__}(name={name})"
    return type(target).__name__


# id(target) -> (target, its chest): a user's chest may be neither hashable
# nor weak-referable; chests live as long as the app, so they are kept.
_WRITER_CHESTS: dict[int, tuple[Any, WriterChest]] = {}
_LOCK = threading.Lock()


def is_writer(candidate: Any) -> bool:
    """True for an object flask-chest's chest API accepts (it has ``write``)."""
    return callable(getattr(candidate, "write", None))


def writer_chest(target: Any) -> WriterChest:
    """The one chest that delivers to ``target.write`` (made on first use)."""
    with _LOCK:
        entry = _WRITER_CHESTS.get(id(target))
        if entry is None or entry[0] is not target:
            if not is_writer(target):
                raise TypeError(f"{target!r} has no write(context_tuple_list) method")
            entry = _WRITER_CHESTS[id(target)] = (target, WriterChest(target))
        return entry[1]
