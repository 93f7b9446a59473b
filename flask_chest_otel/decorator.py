"""``@flask_chest``: after each request, records chosen ``flask.g`` variables
as OpenTelemetry measurements keyed by the request ID (flask-chest's import
path, kept)."""

from __future__ import annotations

import functools
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar, cast

from flask import g, request
from opentelemetry import trace
from werkzeug.datastructures import Headers
from werkzeug.exceptions import HTTPException

from . import _environment as environment
from ._chest import Chest
from ._logging import LOGGER, RateLimitedLog
from ._names import (
    ATTR_INDEX,
    ATTR_METHOD,
    ATTR_REQUEST_ID,
    ATTR_ROUTE,
    ATTR_STATUS_CODE,
    ATTR_STRING_VALUE,
    ATTR_TIME,
    DURATION_VARIABLE,
    RESERVED_TAG_NAMES,
)
from ._random import random16
from ._recorder import RECORDER, FlatAttributes, Record, flat_attributes
from ._trace import current_span_ids
from ._values import coerce, tag_text
from .meter import CURRENT_GROUP, ChestGauge, Measurement
from .meter import chest_meter as _chest_meter
from .meter_provider import FlaskChestMeterProvider
from .user_chests import is_writer, writer_chest

__all__ = ["default_request_id", "flask_chest", "trace_id_request_id"]

F = TypeVar("F", bound=Callable[..., Any])

#: Attribute of a view wrapped by ``@flask_chest``, holding what it records
#: (the ``FlaskChestExtension`` leaves such views to their decorator).
RECORDING_ATTRIBUTE = "_flask_chest_recording"
#: Longest request ID kept (flask-chest's limit).
MAX_REQUEST_ID = 255
#: Methods ``tracked_vars`` may name (case-insensitive).
HTTP_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"}
)

#: The key of ``tag_vars`` given as a list: every method.
_ALL = "*"

#: Requests of a route after which a tracked name none of them set is
#: reported (once) as a likely typo.
TYPO_CHECK_REQUESTS = 100
_CHECKED = object()
#: The meter whose gauges the decorator records the tracked variables with.
METER = _chest_meter()

#: Seconds between two log lines of one kind from one decorator use.
LOG_INTERVAL = 300.0


def default_request_id() -> str:
    """A random UUID4 string, as ``str(uuid.uuid4())`` gives, in a third of
    its time, from the same source (see ``_random``)."""
    raw = bytearray(random16())
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    text = raw.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def trace_id_request_id() -> str:
    """The current trace's ID (32 lower-case hex digits, as W3C trace context
    and every tracing UI write it), so that a request ID *is* the trace ID;
    a UUID4 string when no valid span is current (tracing off, or the
    request's span not started yet). Use as
    ``@flask_chest(..., request_id_generator=trace_id_request_id)``."""
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        return format(context.trace_id, "032x")
    return default_request_id()


class _Recording:
    """What one decorator use records, and where: built once, used per request.

    Per request: ``start()`` before the view, then ``finish()`` with the
    response's status once it is known (see ``status_of``)."""

    def __init__(
        self,
        chests: Sequence[Chest | FlaskChestMeterProvider],
        tracked_vars: Mapping[str, Sequence[str]] | None,
        request_id_generator: Callable[[], Any] | None,
        raise_exceptions: bool,
        tag_vars: Sequence[str] | Mapping[str, Sequence[str]] | None = None,
        record_duration: bool = False,
        resource_tags: bool | None = None,
    ) -> None:
        self.tracked = _check_tracked_vars(tracked_vars)
        self.tag_vars = _check_tag_vars(tag_vars)
        self.record_duration = bool(record_duration)
        _check_overlaps(self.tracked, self.tag_vars, self.record_duration)
        self.generate = request_id_generator or default_request_id
        if not callable(self.generate):
            raise TypeError(f"request_id_generator must be callable, got {self.generate!r}")
        self.raise_exceptions = raise_exceptions
        #: False under OTEL_SDK_DISABLED=true: request IDs only, nothing recorded.
        self.enabled = not environment.sdk_disabled()
        self.excluded = environment.excluded_urls()
        if resource_tags is None:
            resource_tags = environment.resource_tags_wanted()
        #: The OTel resource from the environment, as tags (dict and flat).
        self.resource_tags = environment.resource_tags() if resource_tags else {}
        self._resource_flat = flat_attributes(self.resource_tags)
        exporting = [chest for chest in chests if isinstance(chest, Chest)]
        self.providers = [chest for chest in chests if isinstance(chest, FlaskChestMeterProvider)]
        if not self.enabled:
            exporting, self.providers = [], []
        self.sink = RECORDER.sink(exporting) if exporting else None
        self._log = RateLimitedLog(LOGGER, interval=LOG_INTERVAL)
        self._gauges: dict[str, ChestGauge] = {}
        # (URL rule, method) -> [requests seen, tracked names never set yet],
        # or _CHECKED once the first TYPO_CHECK_REQUESTS requests are seen.
        self._unseen: dict[tuple[str | None, str], Any] = {}

    def _check_names(
        self, route: str | None, method: str, names: Iterable[str], values: Mapping[str, Any]
    ) -> None:
        """Warns once per route and name about a tracked variable that none
        of the route's first ``TYPO_CHECK_REQUESTS`` requests set (a typo in
        ``tracked_vars``, most often). Runs on those requests only."""
        key = (route, method)
        state = self._unseen.get(key)
        if state is None:
            state = self._unseen.setdefault(key, [0, set(names)])
        state[0] += 1
        state[1].difference_update(state[1].intersection(values))
        if state[0] < TYPO_CHECK_REQUESTS and state[1]:
            return
        if self._unseen.pop(key, None) is not state:
            return  # another request thread got here first
        self._unseen[key] = _CHECKED
        for name in sorted(state[1]):
            LOGGER.warning(
                "flask_chest_otel: tracked_vars names %r for %s on route %s, but none of "
                "its first %d requests set g.%s: a typo? It is recorded whenever set.",
                name,
                method,
                route,
                TYPO_CHECK_REQUESTS,
                name,
            )

    def start(self) -> float | None:
        """Sets ``g.custom_request_id`` before the view runs. Returns the
        request's start (``time.perf_counter()``) when it is recorded; None
        when it is not (``OTEL_SDK_DISABLED``, an excluded URL)."""
        try:
            request_id = self.generate()
            if not isinstance(request_id, str):
                if request_id is None:
                    raise TypeError("request_id_generator returned None")
                request_id = str(request_id)
            if not request_id:
                raise ValueError("request_id_generator returned an empty string")
        except Exception as exc:
            if self.raise_exceptions:
                raise
            request_id = default_request_id()
            # The key is a kind, never the request's data: a client that makes
            # the generator fail on every request gets one line per interval,
            # and the limiter's table one entry. Formatting happens only for
            # the line that is emitted.
            self._log.log(
                logging.WARNING,
                "request_id_generator",
                "flask_chest_otel: request_id_generator failed (%s) on route %s; "
                "using a UUID4 instead",
                _ExceptionText(exc),
                _route(),
            )
        g.custom_request_id = request_id[:MAX_REQUEST_ID]
        if not self.enabled or (self.excluded is not None and self.excluded(request.url)):
            return None
        CURRENT_GROUP.set([])  # chest_meter()'s measurements in the view join it
        return time.perf_counter()

    def finish(self, started: float, status_code: int, view_failed: bool = False) -> None:
        """Records the tracked variables that are set on ``g``, with the
        response's ``status_code``. When the view failed, a recording error
        is only logged: the view's exception wins."""
        seconds = time.perf_counter() - started if self.record_duration else None
        group = CURRENT_GROUP.get()
        try:
            self._record(group if group is not None else [], status_code, seconds)
        except Exception:
            if self.raise_exceptions and not view_failed:
                raise
            self._log.log(
                logging.ERROR,
                f"record:{_route()}",
                "flask_chest_otel: recording failed on route %s",
                _route(),
                exc_info=True,
            )
        finally:
            CURRENT_GROUP.set(None)

    def _tags(self, method: str, values: Mapping[str, Any]) -> FlatAttributes:
        """The request's tags, flat: the resource's, then its ``tag_vars``
        (which win)."""
        tag_vars = self.tag_vars
        names = () if tag_vars is None else tag_vars.get(method) or tag_vars.get(_ALL, ())
        if not names:
            return self._resource_flat
        tags = None
        for name in names:
            if name in values:
                text = tag_text(values[name])
                if text is not None:
                    if tags is None:
                        tags = dict(self.resource_tags)
                    tags[name] = text
        return self._resource_flat if tags is None else flat_attributes(tags)

    def _record(self, group: list[Measurement], status_code: int, seconds: float | None) -> None:
        """Records the tracked variables (and the duration) through the chest
        meter's gauges, then queues them and what the view measured as one
        group."""
        # Flask's proxies cost about 2 us an access: resolve each once.
        current_request = request._get_current_object()  # type: ignore[attr-defined]
        values = vars(g._get_current_object())
        method = current_request.method
        tags = self._tags(method, values)
        if self.tracked is None:
            skip = self._untracked(method)
            names: Iterable[str] = [
                name
                for name in values
                if not name.startswith("_") and name != "custom_request_id" and name not in skip
            ]
        else:
            names = self.tracked.get(method, ())
            if not names and not group and seconds is None:
                return
        attributes: dict[str, str | int] = {
            ATTR_REQUEST_ID: values.get("custom_request_id") or default_request_id(),
            ATTR_METHOD: method,
        }
        rule = current_request.url_rule
        route = None
        if rule is not None:
            route = attributes[ATTR_ROUTE] = rule.rule
        attributes[ATTR_STATUS_CODE] = status_code
        if self.tracked is not None and self._unseen.get((route, method)) is not _CHECKED:
            self._check_names(route, method, names, values)
        made_in_view = len(group)
        gauges = self._gauges
        for name in names:
            if name in values:
                gauge = gauges.get(name) or gauges.setdefault(name, METER.create_gauge(name))
                gauge.set(values[name])
        if seconds is not None:
            group.append((DURATION_VARIABLE, seconds, None))
        # The tracked variables first, in tracked_vars order, then the view's.
        measurements = group[made_in_view:] + group[:made_in_view] if made_in_view else group
        now = time.time_ns()
        span_ids = current_span_ids()
        sink_key = None if self.sink is None else self.sink.key
        providers = self.providers
        # The common case (no attributes of the view's own, no provider)
        # builds the record's flat attributes without a dict per variable.
        base = flat_attributes(attributes)
        batch: list[Record] = []
        for name, raw, own_attributes in measurements:
            value = coerce(raw)
            if value is None:
                continue
            text = None
            if isinstance(value, str):
                text, value = value, 1
            if own_attributes or providers:
                point_attributes: dict[str, Any] = {
                    **(own_attributes or {}),
                    **attributes,
                    ATTR_INDEX: len(batch),
                }
                if text is not None:
                    point_attributes[ATTR_STRING_VALUE] = text
                flat = flat_attributes(point_attributes)
                if providers:
                    del point_attributes[ATTR_INDEX]
                    point_attributes[ATTR_TIME] = now
                    for key, tag in zip(tags[::2], tags[1::2], strict=True):
                        point_attributes.setdefault(key, tag)
                    for provider in providers:
                        provider.gauge(name).set(value, point_attributes)
            elif text is None:
                flat = (*base, ATTR_INDEX, len(batch))
            else:
                flat = (*base, ATTR_INDEX, len(batch), ATTR_STRING_VALUE, text)
            if sink_key is not None:
                batch.append((sink_key, name, value, flat, now, span_ids, tags))
        if batch:
            # One append for the whole request: a collection never splits it.
            RECORDER.record_many(batch)

    def _untracked(self, method: str) -> frozenset[str]:
        """Under ``tracked_vars=None``, the public ``g`` names that are not
        values: the method's tags, and ``duration`` when it is measured."""
        skip: set[str] = set()
        if self.tag_vars is not None:
            skip.update(self.tag_vars.get(method) or self.tag_vars.get(_ALL, ()))
        if self.record_duration:
            skip.add(DURATION_VARIABLE)
        return frozenset(skip)


def status_of(response: Any) -> int:
    """The status code of what a view returned, as Flask's ``make_response``
    would set it: a response's own; the status of a ``(body, status)`` or
    ``(body, status, headers)`` tuple (an int, or text such as ``"201
    CREATED"``); else 200, or the body's when it is a response."""
    status = getattr(response, "status_code", None)
    if type(status) is int:
        return status
    if isinstance(response, tuple) and len(response) in (2, 3):
        given = response[1]
        if len(response) == 3 or not isinstance(given, (Headers, Mapping, tuple, list)):
            code = _status_code(given)
            if code is not None:
                return code
        return status_of(response[0])
    return 200


def _status_code(status: Any) -> int | None:
    if isinstance(status, int) and not isinstance(status, bool):
        return int(status)
    if isinstance(status, (bytes, bytearray)):
        status = bytes(status).decode("latin-1")
    if isinstance(status, str):
        head = status.strip().split(None, 1)[:1]
        if head and head[0].isascii() and head[0].isdigit():
            return int(head[0])
    return None


def status_of_error(error: BaseException | None) -> int:
    """The status code of a view's exception: an ``HTTPException``'s own
    (``abort(404)`` is 404), 500 for anything else."""
    if isinstance(error, HTTPException):
        response = error.response
        if response is not None and type(getattr(response, "status_code", None)) is int:
            return int(response.status_code)
        return error.code or 500
    return 500


class _ExceptionText:
    """An exception's type and text, cut to 200 characters, made only when
    a log line is emitted (a client's input may be in it)."""

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def __str__(self) -> str:
        return f"{type(self.exc).__name__}: {self.exc}"[:200]


def _route() -> str | None:
    rule = request.url_rule
    return rule.rule if rule is not None else None


def check_chests(chests: Any, what: str) -> tuple[Chest | FlaskChestMeterProvider, ...]:
    """``chests`` (one chest, or a non-empty list of them) as a tuple of our
    chests, a user's chest (any object with ``write``) replaced by the chest
    that delivers to it; else a ValueError or TypeError whose message starts
    with ``what``."""
    if isinstance(chests, (Chest, FlaskChestMeterProvider)) or (
        not isinstance(chests, (list, tuple)) and is_writer(chests)
    ):
        chests = [chests]
    if not isinstance(chests, (list, tuple)) or not chests:
        raise ValueError(f"{what} must be a non-empty list of chests, got {chests!r}")
    checked: list[Chest | FlaskChestMeterProvider] = []
    for chest in chests:
        if isinstance(chest, (Chest, FlaskChestMeterProvider)):
            checked.append(chest)
        elif is_writer(chest):
            checked.append(writer_chest(chest))
        else:
            raise TypeError(
                f"{what}: {chest!r} is not a chest (a chest of this package, or an "
                "object with a write(context_tuple_list) method such as a FlaskChest subclass)"
            )
    return tuple(checked)


def _check_tracked_vars(
    tracked_vars: Mapping[str, Sequence[str]] | None, argument: str = "tracked_vars"
) -> dict[str, tuple[str, ...]] | None:
    if tracked_vars is None:
        return None
    if not isinstance(tracked_vars, Mapping):
        raise TypeError(
            f"{argument} must map HTTP methods to lists of g variable names, "
            f"e.g. {{'GET': ['transaction']}}; got {type(tracked_vars).__name__}"
        )
    tracked: dict[str, tuple[str, ...]] = {}
    for method, names in tracked_vars.items():
        if not isinstance(method, str) or method.upper() not in HTTP_METHODS:
            raise ValueError(
                f"{argument}: {method!r} is not an HTTP method "
                f"(one of {', '.join(sorted(HTTP_METHODS))})"
            )
        if isinstance(names, (str, bytes)) or not isinstance(names, (list, tuple)):
            raise TypeError(
                f"{argument}[{method!r}] must be a list of g variable names, got {names!r}"
            )
        for name in names:
            if not isinstance(name, str) or not name:
                raise TypeError(f"{argument}[{method!r}]: {name!r} is not a variable name")
        tracked[method.upper()] = tuple(dict.fromkeys(names))
    return tracked


def _check_tag_vars(
    tag_vars: Sequence[str] | Mapping[str, Sequence[str]] | None,
) -> dict[str, tuple[str, ...]] | None:
    """``tag_vars`` as method -> names (a list: key ``_ALL``, every method)."""
    if tag_vars is None:
        return None
    if isinstance(tag_vars, Mapping):
        by_method = _check_tracked_vars(tag_vars, "tag_vars")
        assert by_method is not None
    elif isinstance(tag_vars, (list, tuple)):
        for name in tag_vars:
            if not isinstance(name, str) or not name:
                raise TypeError(f"tag_vars: {name!r} is not a variable name")
        by_method = {_ALL: tuple(dict.fromkeys(tag_vars))}
    else:
        raise TypeError(
            "tag_vars must be a list of g variable names, or map HTTP methods to such "
            f"lists (as tracked_vars); got {type(tag_vars).__name__}"
        )
    for names in by_method.values():
        for name in names:
            if name in RESERVED_TAG_NAMES:
                raise ValueError(
                    f"tag_vars: {name!r} is a name the recorded points use already "
                    f"({', '.join(sorted(RESERVED_TAG_NAMES))}); rename g.{name}"
                )
    return by_method


def _check_overlaps(
    tracked: Mapping[str, Sequence[str]] | None,
    tags: Mapping[str, Sequence[str]] | None,
    record_duration: bool,
) -> None:
    """A ``g`` variable is a value or a tag, never both; ``duration`` is
    ours when ``record_duration`` is on."""
    for method, names in (tracked or {}).items():
        both = set(names) & set((tags or {}).get(method) or (tags or {}).get(_ALL, ()))
        if both:
            raise ValueError(
                f"tracked_vars[{method!r}] and tag_vars both name {', '.join(sorted(both))}: "
                "a g variable is recorded as a value or as a tag, not both"
            )
        if record_duration and DURATION_VARIABLE in names:
            raise ValueError(
                f"tracked_vars[{method!r}] names {DURATION_VARIABLE!r}, which record_duration=True "
                "records itself: rename g.duration, or leave record_duration off"
            )


def flask_chest(
    chests: Sequence[Any],
    tracked_vars: Mapping[str, Sequence[str]] | None = None,
    request_id_generator: Callable[[], Any] | None = None,
    raise_exceptions: bool = False,
    *,
    tag_vars: Sequence[str] | Mapping[str, Sequence[str]] | None = None,
    record_duration: bool = False,
    resource_tags: bool | None = None,
) -> Callable[[F], F]:
    """Records chosen ``g`` variables of each request to ``chests``.

    Args:
        chests: where this route's measurements go, and only there: chests of
            this package, or your own (a ``FlaskChest`` subclass, or any
            object with a ``write(context_tuple_list)`` method).
        tracked_vars: HTTP method -> names of ``g`` variables to record for
            it, in order; a method absent records nothing; ``None`` records
            every public attribute of ``g``.
        request_id_generator: called once per request, before the view;
            default a UUID4 string. Its result (``str()`` of a non-string),
            cut to 255 characters, is left on ``g.custom_request_id``.
        raise_exceptions: if True, an error while recording (a failing
            ``request_id_generator``, say) propagates to the request; if False
            (default) it is logged and the request goes on, with a UUID4 when
            the generator failed. Export errors never reach a request.
        tag_vars: names of ``g`` variables that become tags (attributes) of
            every point of the request instead of values: a list (every
            method) or HTTP method -> list, as ``tracked_vars``. Text only:
            ``str()`` of the value, cut to 256 characters; a variable not set,
            ``None`` or empty is no tag.
        record_duration: if True, every request of the route also records the
            float variable ``duration``: the seconds the view took, measured
            around it by the decorator.
        resource_tags: put ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES``
            on every point as tags (``service.name``...); default: unless
            ``$FLASK_CHEST_RESOURCE_TAGS`` is ``false``.

    The variables are read after the view returns, and also when it raises
    (what was set before the error is recorded); the view's exception then
    propagates unchanged. Every point carries the response's status code
    (``http.response.status_code``): the status the view returned, an
    ``HTTPException``'s code (``abort(404)``), 500 for any other exception.
    Sync and async views are both supported.

    ``OTEL_SDK_DISABLED=true`` records nothing (``g.custom_request_id`` is
    still set); a request whose URL matches ``OTEL_PYTHON_FLASK_EXCLUDED_URLS``
    is not recorded.
    """
    chests = check_chests(chests, "flask_chest: chests")
    recording = _Recording(
        chests,
        tracked_vars,
        request_id_generator,
        raise_exceptions,
        tag_vars=tag_vars,
        record_duration=record_duration,
        resource_tags=resource_tags,
    )

    def decorate(view: F) -> F:
        if inspect.iscoroutinefunction(view):
            async_view = cast(Callable[..., Awaitable[Any]], view)

            @functools.wraps(view)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                started = recording.start()
                if started is None:
                    return await async_view(*args, **kwargs)
                try:
                    response = await async_view(*args, **kwargs)
                except BaseException as error:
                    recording.finish(started, status_of_error(error), view_failed=True)
                    raise
                recording.finish(started, status_of(response))
                return response

            setattr(async_wrapper, RECORDING_ATTRIBUTE, recording)
            return cast(F, async_wrapper)

        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = recording.start()
            if started is None:
                return view(*args, **kwargs)
            try:
                response = view(*args, **kwargs)
            except BaseException as error:
                recording.finish(started, status_of_error(error), view_failed=True)
                raise
            recording.finish(started, status_of(response))
            return response

        setattr(wrapper, RECORDING_ATTRIBUTE, recording)
        return cast(F, wrapper)

    return decorate
