"""``FlaskChestCustomWriter``: flask-chest's custom-writer chest, built on
``HTTPPayloadMetricExporter``."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from .._chest import DEFAULT_EXPORT_INTERVAL, Chest
from .._http import safe_url
from ._exporter import HTTPPayloadMetricExporter, PayloadGenerator


class FlaskChestCustomWriter(Chest):
    """A chest that POSTs each request's tracked variables, as the payload
    its ``payload_generator`` makes of them, to ``url``.

    The positional order of flask-chest's ``FlaskChestCustomWriter`` is kept;
    ``name`` defaults to the URL, as there. See ``HTTPPayloadMetricExporter``
    for the parameters; ``export_interval`` is the seconds between exports,
    and any other keyword option (``session``, ``spool_dir``...) goes to the
    exporter. Differences from flask-chest: ``verify`` defaults to True, a
    dict payload is sent as JSON (flask-chest form-encoded it), and the POST
    happens on an exporter thread with retries, never in the request.

    flask-chest's attributes are kept: ``id``
    (``FlaskChestCustomWriter(name=...)``), ``name``, ``url``, ``headers``,
    ``params``, ``proxies``, ``payload_generator``, ``verify``,
    ``success_status_codes`` (the codes in force, sorted) and ``logger``
    (this library's logger when none was given), as is ``to_dict()``.
    ``str()`` is that dict as JSON, header values and URL credentials masked.
    """

    exporter: HTTPPayloadMetricExporter

    def __init__(
        self,
        name: str | None = None,
        url: str | None = None,
        headers: Mapping[str, str] | None = None,
        params: Any = None,
        proxies: Mapping[str, str] | None = None,
        payload_generator: PayloadGenerator | None = None,
        verify: bool | str = True,
        success_status_codes: Iterable[int] | None = None,
        logger: logging.Logger | None = None,
        *,
        export_interval: float = DEFAULT_EXPORT_INTERVAL,
        **options: Any,
    ) -> None:
        if url is None:
            raise ValueError(f"FlaskChestCustomWriter {name!r}: url is required")
        if payload_generator is None:
            raise TypeError(f"FlaskChestCustomWriter {name!r}: payload_generator is required")
        exporter = HTTPPayloadMetricExporter(
            url=url,
            payload_generator=payload_generator,
            name=name,
            headers=headers,
            params=params,
            proxies=proxies,
            verify=verify,
            success_status_codes=success_status_codes,
            logger=logger,
            **options,
        )
        super().__init__(exporter.name, exporter, export_interval=export_interval, logger=logger)
        self._flask_chest_attributes(headers, params, proxies, verify)

    def _flask_chest_attributes(
        self,
        headers: Mapping[str, str] | None,
        params: Any,
        proxies: Mapping[str, str] | None,
        verify: bool | str,
    ) -> None:
        """flask-chest's attributes, as given."""
        self.id = f"FlaskChestCustomWriter(name={self.name})"
        self.headers = dict(headers) if headers is not None else None
        self.params = params
        self.proxies = dict(proxies) if proxies is not None else None
        self.verify = verify
        self.success_status_codes = sorted(self.exporter.success_status_codes)

    def to_dict(self) -> dict[str, Any]:
        """flask-chest's description of the writer: ``type``
        (``custom_writer``, as 0.0.10 had it), ``id`` (as its later code had
        it), ``name``, ``url``, ``headers``, ``params``, ``proxies``,
        ``verify``, ``success_status_codes``. Headers as given, tokens
        included: do not log it (``str()`` masks them)."""
        return {
            "type": "custom_writer",
            "id": self.id,
            "name": self.name,
            "url": self.url,
            "headers": self.headers,
            "params": self.params,
            "proxies": self.proxies,
            "verify": self.verify,
            "success_status_codes": self.success_status_codes,
        }

    def __str__(self) -> str:
        shown = self.to_dict()
        shown["url"] = safe_url(self.url)
        if self.headers is not None:
            shown["headers"] = {key: "***" for key in self.headers}
        if self.proxies is not None:
            shown["proxies"] = {key: safe_url(url) for key, url in self.proxies.items()}
        return json.dumps(shown, indent=4, default=str)

    @property
    def url(self) -> str:
        return self.exporter.url

    @property
    def payload_generator(self) -> PayloadGenerator:
        return self.exporter.payload_generator
