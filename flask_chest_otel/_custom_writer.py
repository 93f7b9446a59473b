"""``FlaskChestCustomWriter``: flask-chest's custom-writer chest, built on
``HTTPPayloadMetricExporter``."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from ._chest import DEFAULT_EXPORT_INTERVAL, Chest
from ._http_exporter import HTTPPayloadMetricExporter, PayloadGenerator


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

    @property
    def url(self) -> str:
        return self.exporter.url

    @property
    def payload_generator(self) -> PayloadGenerator:
        return self.exporter.payload_generator
