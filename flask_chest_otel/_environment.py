"""What the standard OpenTelemetry environment asks of the recording side,
read where each setting is used (a decorator, a chest), once.

- ``OTEL_SDK_DISABLED=true``: nothing is recorded and no thread starts, as
  the SDK's own MeterProvider then records nothing;
- ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES``: tags on every
  point, parsed by the SDK's own ``OTELResourceDetector`` (so with the SDK's
  URL-decoding, and ``OTEL_SERVICE_NAME`` winning over a ``service.name``
  pair), unless ``FLASK_CHEST_RESOURCE_TAGS=false``;
- ``OTEL_PYTHON_FLASK_EXCLUDED_URLS`` (else ``OTEL_PYTHON_EXCLUDED_URLS``):
  comma-separated regular expressions, each searched (``re.search``) in the
  request's full URL, as ``opentelemetry-instrumentation-flask`` reads them
  (``opentelemetry.util.http.get_excluded_urls``, not a dependency of this
  package); an empty item is ignored here, where the instrumentation's would
  match every URL;
- ``OTEL_METRIC_EXPORT_INTERVAL`` (milliseconds): the default
  ``export_interval`` of the chests.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable

from opentelemetry.sdk.resources import OTELResourceDetector

from . import environment_variables as names
from ._names import MAX_TAG_TEXT, RESERVED_TAG_NAMES

LOGGER = logging.getLogger("flask_chest_otel")

_FALSE = frozenset({"false", "0", "no", "off"})


def sdk_disabled() -> bool:
    """Whether ``OTEL_SDK_DISABLED`` is ``true`` (the SDK's own test: any case,
    surrounding spaces ignored)."""
    return os.environ.get(names.SDK_DISABLED, "").strip().lower() == "true"


def resource_tags_wanted() -> bool:
    """``FLASK_CHEST_RESOURCE_TAGS``: true (default) unless ``false``, ``0``,
    ``no`` or ``off``."""
    return os.environ.get(names.FLASK_CHEST_RESOURCE_TAGS, "").strip().lower() not in _FALSE


def resource_tags() -> dict[str, str]:
    """``OTEL_RESOURCE_ATTRIBUTES`` and ``OTEL_SERVICE_NAME`` as tags, in
    the order given: each value as text cut to ``MAX_TAG_TEXT`` characters;
    empty keys and values left out, and names reserved for the decorator's
    own attributes (``RESERVED_TAG_NAMES``) left out with a warning."""
    tags: dict[str, str] = {}
    for key, value in OTELResourceDetector().detect().attributes.items():
        text = str(value)[:MAX_TAG_TEXT]
        if not key or not text:
            continue
        if key in RESERVED_TAG_NAMES:
            LOGGER.warning(
                "flask_chest_otel: $%s names the resource attribute %r, which the "
                "decorator's own attributes use: left out of the points' tags",
                names.RESOURCE_ATTRIBUTES,
                key,
            )
            continue
        tags[key] = text
    return tags


def excluded_urls() -> Callable[[str], object] | None:
    """A function telling (truthy) whether a request's full URL is excluded
    by ``OTEL_PYTHON_FLASK_EXCLUDED_URLS`` (else ``OTEL_PYTHON_EXCLUDED_URLS``);
    None when neither excludes anything.

    Raises:
        ValueError: an item is not a regular expression (the message names
            the variable and the item).
    """
    variable = names.FLASK_EXCLUDED_URLS
    text = os.environ.get(variable)
    if text is None:
        variable = names.EXCLUDED_URLS
        text = os.environ.get(variable, "")
    patterns = [item.strip() for item in text.split(",") if item.strip()]
    if not patterns:
        return None
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(
                f"${variable}: {pattern!r} is not a regular expression ({exc})"
            ) from None
    return re.compile("|".join(patterns)).search


def export_interval() -> float | None:
    """``OTEL_METRIC_EXPORT_INTERVAL`` in seconds, or None when it is unset;
    a value that is not a positive number of milliseconds is logged and
    ignored (as the SDK does)."""
    text = os.environ.get(names.METRIC_EXPORT_INTERVAL, "").strip()
    if not text:
        return None
    try:
        millis = float(text)
    except ValueError:
        millis = 0.0
    if not millis > 0 or millis == float("inf"):
        LOGGER.warning(
            "flask_chest_otel: $%s=%r is not a positive number of milliseconds; ignored",
            names.METRIC_EXPORT_INTERVAL,
            text,
        )
        return None
    return millis / 1000
