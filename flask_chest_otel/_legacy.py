"""flask-chest 0.0.10's own call shapes, turned into this library's arguments.

flask-chest 0.0.10 as released (not its docs) built its InfluxDB chest as
``FlaskChestInfluxDB(app, https=False, host="localhost", port=8086,
token="", org="my-org", bucket="my-bucket", custom_tags={}, logger=None)``,
``app`` also given as ``app=app``. ``FlaskChestInfluxDB`` takes that call
as it takes today's ``FlaskChestInfluxDB(name=..., url=...)``; this module
tells the two apart and translates the first into the second.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Flask

__all__ = ["influxdb_from_0010", "http_url", "is_0010_call"]

#: The keywords only flask-chest 0.0.10's ``FlaskChestInfluxDB`` has.
FLASK_CHEST_0010_KEYWORDS = ("app", "https", "host", "port")
#: Its defaults, where they differ from this library's (None: the environment).
FLASK_CHEST_0010_DEFAULTS = {"token": "", "org": "my-org", "bucket": "my-bucket"}


def http_url(https: bool, host: str, port: int | str) -> str:
    """The base URL flask-chest 0.0.10 built (``http[s]://host:port``); an
    IPv6 address is bracketed, which it forgot."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{'https' if https else 'http'}://{host}:{port}"


def is_0010_call(first: Any, options: Mapping[str, Any]) -> bool:
    """True for flask-chest 0.0.10's call: a Flask app as the first argument,
    or any of its own keywords (``app=``, ``https=``, ``host=``, ``port=``)."""
    return isinstance(first, Flask) or any(key in options for key in FLASK_CHEST_0010_KEYWORDS)


def influxdb_from_0010(
    first: Any,
    url: Any,
    token: str | None,
    org: str | None,
    bucket: str | None,
    custom_tags: Mapping[str, str] | None,
    options: Mapping[str, Any],
) -> tuple[str, str, str | None, str | None, str | None, Mapping[str, str] | None, dict[str, Any]]:
    """Today's ``(name, url, token, org, bucket, custom_tags, options)`` of a
    flask-chest 0.0.10 call.

    ``first`` and ``url`` are what the call put in today's first two
    parameters (the app, and nothing: 0.0.10 had no ``url``); ``options`` the
    other keywords. The chest's name is ``InfluxDB`` (0.0.10's had none)
    unless ``name=`` is given beside ``app=``; 0.0.10's defaults
    apply (``token=""``, ``org="my-org"``, ``bucket="my-bucket"``).

    Raises:
        TypeError: 0.0.10's arguments after ``app`` given by position (they
            would land in today's parameters), or ``url=`` beside
            ``https=``/``host=``/``port=``.
    """
    rest = dict(options)
    app = rest.pop("app", None)
    if isinstance(first, Flask) and app is not None:
        raise TypeError("FlaskChestInfluxDB: the Flask app given twice (first argument and app=)")
    location = {key: rest.pop(key) for key in ("https", "host", "port") if key in rest}
    if url is not None and not isinstance(url, str):
        raise TypeError(
            "FlaskChestInfluxDB(app, ...): give flask-chest 0.0.10's arguments after the app "
            "by keyword (https=, host=, port=, token=, org=, bucket=, custom_tags=, logger=), "
            f"as its own example does; got {url!r} as the second positional argument"
        )
    if url is not None and location:
        raise TypeError(
            f"FlaskChestInfluxDB: give url= or flask-chest 0.0.10's "
            f"{'=, '.join(location)}=, not both"
        )
    if url is None:
        url = http_url(
            bool(location.get("https", False)),
            str(location.get("host", "localhost")),
            location.get("port", 8086),
        )
    return (
        first if isinstance(first, str) and first else "InfluxDB",
        url,
        FLASK_CHEST_0010_DEFAULTS["token"] if token is None else token,
        FLASK_CHEST_0010_DEFAULTS["org"] if org is None else org,
        FLASK_CHEST_0010_DEFAULTS["bucket"] if bucket is None else bucket,
        custom_tags,
        rest,
    )
