"""``FlaskChestExtension``: the Flask extension that records chosen ``g`` variables on
every route of an application, configured from ``app.config``.

It runs the decorator's machinery (``decorator._Recording``) from request
hooks instead of around one view, so routes added after ``init_app`` (and
blueprints registered later) are covered too.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from flask import Flask, Response, current_app, g, request
from werkzeug.utils import import_string

from ._chest import Chest
from .decorator import RECORDING_ATTRIBUTE, _Recording, check_chests, status_of_error
from .meter_provider import FlaskChestMeterProvider

__all__ = ["EXTENSION_KEY", "FlaskChestExtension", "flask_chest_exempt"]

V = TypeVar("V")

#: The key of the extension in ``app.extensions``.
EXTENSION_KEY = "flask_chest_otel"
#: The attribute ``flask_chest_exempt`` sets on a view.
_EXEMPT_ATTRIBUTE = "_flask_chest_exempt"
#: Where the start of a recorded request waits between the hooks (private:
#: ``tracked_vars=None`` skips names starting with ``_``).
_PENDING = "_flask_chest_otel_pending"

AnyChest = Chest | FlaskChestMeterProvider


def flask_chest_exempt(view: V) -> V:
    """Marks a view (or a class-based ``View``) that ``FlaskChestExtension`` must not
    record. Put it under ``@app.route``; it returns the view unchanged."""
    setattr(view, _EXEMPT_ATTRIBUTE, True)
    return view


class FlaskChestExtension:
    """Records chosen ``g`` variables of every request of an app to ``chests``.

    The app-wide form of ``@flask_chest``, with the same semantics (see
    ``docs/flask_extension.md``)::

        chest = FlaskChestExtension(chests=[FlaskChestSQLite()],
                           tracked_vars={"POST": ["transaction", "response_time"]})
        chest.init_app(app)      # or FlaskChestExtension(app, chests=...)

    Each argument is the default of a config key, which ``init_app`` sets with
    ``app.config.setdefault``; a value already in the config wins, so one
    extension object serves several apps configured differently.

    Args:
        app: the app to register on now; or call ``init_app`` later.
        chests: ``FLASK_CHEST_CHESTS``, where measurements go (required, here
            or in the config).
        tracked_vars: ``FLASK_CHEST_TRACKED_VARS``, HTTP method -> names of
            ``g`` variables; ``None`` (default) records every public
            attribute of ``g``.
        excluded_routes: ``FLASK_CHEST_EXCLUDED_ROUTES``, URL rules (as
            written in ``@app.route``, blueprint prefix included, e.g.
            ``"/healthz"``) never recorded.
        request_id_generator: ``FLASK_CHEST_REQUEST_ID_GENERATOR``, a callable
            or an import string (``"myapp.ids:make_id"``); default UUID4.
        raise_exceptions: ``FLASK_CHEST_RAISE_EXCEPTIONS`` (default False),
            as for ``@flask_chest``.
        tag_vars: ``FLASK_CHEST_TAG_VARS``, names of ``g`` variables that
            become tags of every point of the request (a list, or HTTP method
            -> list), as for ``@flask_chest``.
        record_duration: ``FLASK_CHEST_RECORD_DURATION`` (default False): also
            record the float variable ``duration``, the request's seconds from
            the extension's first ``before_request`` hook to its
            ``after_request`` hook.
        resource_tags: ``FLASK_CHEST_RESOURCE_TAGS``, put the OTel resource
            of the environment on every point as tags (default: unless
            ``$FLASK_CHEST_RESOURCE_TAGS`` is ``false``).

    A route decorated with ``@flask_chest`` records only through its
    decorator (its chests and settings), never twice; a view marked with
    ``@flask_chest_exempt`` (also ``FlaskChestExtension.exempt``) is not recorded.
    """

    #: ``@FlaskChestExtension.exempt``: the same as ``flask_chest_exempt``.
    exempt = staticmethod(flask_chest_exempt)

    def __init__(
        self,
        app: Flask | None = None,
        *,
        chests: Sequence[Any] | Any | None = None,
        tracked_vars: Mapping[str, Sequence[str]] | None = None,
        excluded_routes: Iterable[str] = (),
        request_id_generator: Callable[[], Any] | str | None = None,
        raise_exceptions: bool = False,
        tag_vars: Sequence[str] | Mapping[str, Sequence[str]] | None = None,
        record_duration: bool = False,
        resource_tags: bool | None = None,
    ) -> None:
        self.chests = chests
        self.tracked_vars = tracked_vars
        self.excluded_routes = tuple(excluded_routes)
        self.request_id_generator = request_id_generator
        self.raise_exceptions = raise_exceptions
        self.tag_vars = tag_vars
        self.record_duration = record_duration
        self.resource_tags = resource_tags
        self._apps: weakref.WeakKeyDictionary[Flask, _AppHooks] = weakref.WeakKeyDictionary()
        if app is not None:
            self.init_app(app)

    def __repr__(self) -> str:
        return f"FlaskChestExtension(chests={self.chests!r})"

    def init_app(self, app: Flask) -> None:
        """Reads the ``FLASK_CHEST_*`` config of ``app`` and registers the
        request hooks and ``app.extensions["flask_chest_otel"]``.

        Raises:
            RuntimeError: a ``FlaskChestExtension`` is already registered on ``app``.
            TypeError, ValueError: a config value is invalid; the message
                names the key.
        """
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError(
                f"FlaskChestExtension is already registered on app {app.name!r} "
                f"(app.extensions[{EXTENSION_KEY!r}]); call init_app once per app"
            )
        config = app.config
        config.setdefault("FLASK_CHEST_CHESTS", self.chests)
        config.setdefault("FLASK_CHEST_TRACKED_VARS", self.tracked_vars)
        config.setdefault("FLASK_CHEST_EXCLUDED_ROUTES", self.excluded_routes)
        config.setdefault("FLASK_CHEST_REQUEST_ID_GENERATOR", self.request_id_generator)
        config.setdefault("FLASK_CHEST_RAISE_EXCEPTIONS", self.raise_exceptions)
        config.setdefault("FLASK_CHEST_TAG_VARS", self.tag_vars)
        config.setdefault("FLASK_CHEST_RECORD_DURATION", self.record_duration)
        config.setdefault("FLASK_CHEST_RESOURCE_TAGS", self.resource_tags)
        chests = check_chests(
            config["FLASK_CHEST_CHESTS"], "FlaskChestExtension: FLASK_CHEST_CHESTS"
        )
        excluded = _check_excluded(config["FLASK_CHEST_EXCLUDED_ROUTES"])
        generator = _load_generator(config["FLASK_CHEST_REQUEST_ID_GENERATOR"])
        try:
            recording = _Recording(
                list(chests),
                config["FLASK_CHEST_TRACKED_VARS"],
                generator,
                bool(config["FLASK_CHEST_RAISE_EXCEPTIONS"]),
                tag_vars=config["FLASK_CHEST_TAG_VARS"],
                record_duration=bool(config["FLASK_CHEST_RECORD_DURATION"]),
                resource_tags=config["FLASK_CHEST_RESOURCE_TAGS"],
            )
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"FlaskChestExtension: {_config_keys(str(exc))}") from exc
        hooks = _AppHooks(chests, excluded, recording)
        # First among before_request hooks, so that g.custom_request_id is
        # there for the app's own hooks (logging, say); but after the hook
        # of opentelemetry-instrumentation-flask, which starts the request's
        # span, so that a request_id_generator can read the trace.
        before = app.before_request_funcs.setdefault(None, [])
        otel_hook = getattr(app, "_before_request", None)
        position = before.index(otel_hook) + 1 if otel_hook in before else 0
        before.insert(position, hooks.before_request)
        # after_request hooks run in reverse order: appended, it runs first.
        app.after_request(hooks.after_request)
        app.teardown_request(hooks.teardown_request)
        app.extensions[EXTENSION_KEY] = self
        self._apps[app] = hooks

    def chests_of(self, app: Flask | None = None) -> tuple[AnyChest, ...]:
        """The chests ``app`` (default: the current app) records to."""
        return self._hooks(app).chests

    def force_flush(self, app: Flask | None = None, timeout_millis: float = 10_000) -> bool:
        """Sends now what ``app``'s routes recorded (tests, scripts); True when
        every chest delivered it all in time."""
        results = [chest.force_flush(timeout_millis) for chest in self.chests_of(app)]
        return all(results)

    def _hooks(self, app: Flask | None) -> _AppHooks:
        if app is None:
            app = current_app._get_current_object()  # type: ignore[attr-defined]
        hooks = self._apps.get(app)
        if hooks is None:
            raise RuntimeError(f"FlaskChestExtension is not registered on app {app.name!r}")
        return hooks


class _AppHooks:
    """The request hooks of one app: decide per endpoint, then run a
    ``_Recording`` as ``@flask_chest`` would around the view."""

    def __init__(
        self, chests: tuple[AnyChest, ...], excluded_routes: frozenset[str], recording: _Recording
    ) -> None:
        self.chests = chests
        self.excluded_routes = excluded_routes
        self.recording = recording
        # endpoint -> (view function, recorded?): views rarely change, but may.
        self._decisions: dict[str, tuple[Callable[..., Any], bool]] = {}

    def _records(self) -> bool:
        rule = request.url_rule
        endpoint = request.endpoint
        if rule is None or endpoint is None:  # no route matched (404, 405)
            return False
        if rule.rule in self.excluded_routes:
            return False
        view = current_app.view_functions.get(endpoint)
        if view is None:
            return False
        decision = self._decisions.get(endpoint)
        if decision is None or decision[0] is not view:
            decision = (view, not _exempt_or_decorated(view))
            self._decisions[endpoint] = decision  # a race computes the same
        return decision[1]

    def before_request(self) -> None:
        if not self._records():
            return
        started = self.recording.start()
        if started is not None:
            setattr(g, _PENDING, started)

    def after_request(self, response: Response) -> Response:
        started: float | None = g.pop(_PENDING, None)
        if started is not None:
            # An error response's status wins over a recording error, as a
            # view's exception wins under the decorator.
            status = response.status_code
            self.recording.finish(started, status, view_failed=status >= 400)
        return response

    def teardown_request(self, exc: BaseException | None) -> None:
        # Only when after_request did not run: an exception left the request
        # unanswered (propagated, as under testing or PROPAGATE_EXCEPTIONS).
        started: float | None = g.pop(_PENDING, None)
        if started is not None:
            self.recording.finish(started, status_of_error(exc), view_failed=True)


#: The config key of each argument a ``_Recording`` error message may name.
_CONFIG_KEYS = {
    "tracked_vars": "FLASK_CHEST_TRACKED_VARS",
    "tag_vars": "FLASK_CHEST_TAG_VARS",
    "record_duration": "FLASK_CHEST_RECORD_DURATION",
    "request_id_generator": "FLASK_CHEST_REQUEST_ID_GENERATOR",
}
_ARGUMENT = re.compile(r"\b(" + "|".join(_CONFIG_KEYS) + r")\b")


def _config_keys(message: str) -> str:
    """A ``_Recording`` error message with the config keys in place of the
    decorator's argument names."""
    return _ARGUMENT.sub(lambda match: _CONFIG_KEYS[match.group(1)], message)


def _unwrapped(view: Callable[..., Any]) -> Iterable[Any]:
    """The view, and each function it wraps (``functools.wraps`` leaves
    ``__wrapped__``); for a class-based view, its class too."""
    seen: set[int] = set()
    current: Any = view
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        view_class = getattr(current, "view_class", None)
        if view_class is not None:
            yield view_class
        current = getattr(current, "__wrapped__", None)


def _exempt_or_decorated(view: Callable[..., Any]) -> bool:
    for function in _unwrapped(view):
        if getattr(function, _EXEMPT_ATTRIBUTE, False):
            return True
        if getattr(function, RECORDING_ATTRIBUTE, None) is not None:
            return True
    return False


def _check_excluded(routes: Any) -> frozenset[str]:
    if routes is None:
        return frozenset()
    if isinstance(routes, str):
        routes = [routes]
    routes = list(routes) if isinstance(routes, Iterable) else routes
    if not isinstance(routes, list) or not all(
        isinstance(route, str) and route.startswith("/") for route in routes
    ):
        raise TypeError(
            "FlaskChestExtension: FLASK_CHEST_EXCLUDED_ROUTES must be a list of URL rules such as "
            f"'/healthz' or '/items/<int:item_id>', got {routes!r}"
        )
    return frozenset(routes)


def _load_generator(generator: Any) -> Callable[[], Any] | None:
    if isinstance(generator, str):
        try:
            generator = import_string(generator)
        except ImportError as exc:
            raise ValueError(
                f"FlaskChestExtension: FLASK_CHEST_REQUEST_ID_GENERATOR {generator!r} cannot be "
                f"imported: {exc}"
            ) from exc
    if generator is not None and not callable(generator):
        raise TypeError(
            "FlaskChestExtension: FLASK_CHEST_REQUEST_ID_GENERATOR must be callable, "
            f"got {generator!r}"
        )
    return generator  # type: ignore[no-any-return]
