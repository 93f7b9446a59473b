"""The custom writer through real forward proxies (two tinyproxy processes):
each POST goes through the proxy ``requests`` itself goes through with the
same settings (environment, ``proxies=``, a ``Session``), or straight to the
endpoint when requests goes straight, and each arrives once.

The sink tells a POST's route by its peer address: each proxy reaches
servers from a loopback address of its own (127.0.0.2, 127.0.0.3), a
CONNECT tunnel's POSTs too; a plain-HTTP POST through a proxy also carries
its ``Via`` header, and the proxy's log counts it."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import requests

from flask_chest_otel.http_payload import FlaskChestCustomWriter

from .conftest import app_recording
from .http_sink import HTTPSink, Recorded
from .servers import TinyProxy
from .test_http_endpoint import request_id_body

#: Every variable requests reads a proxy from, cleared before each case.
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY",
                   "http_proxy", "https_proxy", "all_proxy", "no_proxy")  # fmt: skip
WRITER_IDS = ["w0", "w1", "w2"]


@dataclass(frozen=True)
class Case:
    """Settings of one case. In values, ``{proxy}`` and ``{other}`` stand for
    the two proxies' URLs and ``{host}`` for the endpoint's host, 127.0.0.1;
    ``expected`` ("direct", "proxy" or "other-proxy") is where requests goes,
    what makes sure each case does test a proxy (or its absence)."""

    expected: str
    environ: dict[str, str] = field(default_factory=dict)
    proxies: dict[str, str | None] | None = None
    #: None (no session), "trust", "no-trust" (``trust_env=False``) or
    #: "own-proxies" (``session.proxies = {"http": other}``).
    session: str | None = None
    scheme: str = "http"


CASES = {
    "HTTP_PROXY": Case("proxy", {"HTTP_PROXY": "{proxy}"}),
    "lower-case http_proxy": Case("proxy", {"http_proxy": "{proxy}"}),
    "ALL_PROXY": Case("proxy", {"ALL_PROXY": "{proxy}"}),
    "NO_PROXY matching the host": Case("direct", {"HTTP_PROXY": "{proxy}", "NO_PROXY": "{host}"}),
    "NO_PROXY not matching": Case("proxy", {"HTTP_PROXY": "{proxy}", "NO_PROXY": "ingest.example"}),
    "proxies given": Case("proxy", proxies={"http": "{proxy}"}),
    "proxies given with no_proxy for the host": Case(
        "proxy", proxies={"http": "{proxy}", "no_proxy": "{host}"}
    ),
    "proxies' no_proxy over HTTP_PROXY": Case(
        "direct", {"HTTP_PROXY": "{proxy}"}, {"no_proxy": "{host}"}
    ),
    "proxies' no_proxy over HTTP_PROXY, session": Case(
        "direct", {"HTTP_PROXY": "{proxy}"}, {"no_proxy": "{host}"}, "trust"
    ),
    "proxies given over HTTP_PROXY": Case(
        "other-proxy", {"HTTP_PROXY": "{proxy}"}, {"http": "{other}"}
    ),
    # requests drops a None proxy after adding the environment's: ALL_PROXY stays.
    "proxies' None for http over ALL_PROXY": Case(
        "proxy", {"ALL_PROXY": "{proxy}"}, {"http": None}
    ),
    "proxies' None for http over HTTP_PROXY, session": Case(
        "direct", {"HTTP_PROXY": "{proxy}"}, {"http": None}, "trust"
    ),
    "proxies for scheme://host": Case("other-proxy", proxies={"http://{host}": "{other}"}),
    "session trust_env=False ignores HTTP_PROXY": Case(
        "direct", {"HTTP_PROXY": "{proxy}"}, session="no-trust"
    ),
    "session trust_env=False, proxies given": Case(
        "proxy", proxies={"http": "{proxy}"}, session="no-trust"
    ),
    "session's own proxies": Case("other-proxy", session="own-proxies"),
    "HTTP_PROXY over the session's own proxies": Case(
        "proxy", {"HTTP_PROXY": "{proxy}"}, session="own-proxies"
    ),
    "https, HTTPS_PROXY (CONNECT)": Case("proxy", {"HTTPS_PROXY": "{proxy}"}, scheme="https"),
    "https, HTTP_PROXY only": Case("direct", {"HTTP_PROXY": "{proxy}"}, scheme="https"),
}


def route(post: Recorded, proxies: list[TinyProxy], scheme: str) -> str:
    """The name of the proxy ``post`` came through (by its peer address), or
    "direct"; a plain-HTTP POST's ``Via`` must say the same."""
    names = {proxy.outgoing: proxy.name for proxy in proxies}
    peer = post.client[0]
    assert peer in names or peer == "127.0.0.1", peer
    name = names.get(peer, "direct")
    via = post.header("Via")
    if scheme == "http" and name != "direct":
        assert via is not None and f" {name} (tinyproxy/" in via, via
    else:  # straight, or through a tunnel the proxy cannot see into
        assert via is None, via
    return name


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_each_post_goes_through_the_proxy_requests_would_use(
    monkeypatch: pytest.MonkeyPatch,
    certificate: tuple[str, str],
    proxy: TinyProxy,
    other_proxy: TinyProxy,
    case: Case,
) -> None:
    """The writer's POSTs take requests' route (the same proxy, or none) for
    the environment, ``proxies=`` with ``no_proxy``, a session with and
    without ``trust_env`` or with proxies of its own, over HTTP and HTTPS."""
    places = {"proxy": proxy.url, "other": other_proxy.url, "host": "127.0.0.1"}
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in case.environ.items():
        monkeypatch.setenv(name, value.format(**places))
    proxies = None
    if case.proxies is not None:
        proxies = {
            key.format(**places): value if value is None else value.format(**places)
            for key, value in case.proxies.items()
        }
    session = None if case.session is None else requests.Session()
    if session is not None:
        session.trust_env = case.session != "no-trust"
        if case.session == "own-proxies":
            session.proxies = {"http": other_proxy.url}
    tls = certificate if case.scheme == "https" else None
    verify: bool | str = certificate[0] if tls else True

    with HTTPSink(tls=tls) as sink:
        options = {} if session is None else {"session": session}
        chest = FlaskChestCustomWriter(
            "proxied", sink.url + "/writer", proxies=proxies, payload_generator=request_id_body,
            verify=verify, retry_initial=0.05, timeout=5.0, **options,
        )  # fmt: skip
        try:
            app_recording(chest, [(request_id, {"v": 1}) for request_id in WRITER_IDS])
            assert chest.force_flush(5_000)
        finally:
            chest.shutdown(2_000)
        reference = (session or requests).post(
            sink.url + "/requests", data=b"requests", proxies=proxies, verify=verify, timeout=5
        )
        assert reference.status_code == 200
        known = [proxy, other_proxy]
        [requests_post] = sink.posts("/requests")
        requests_route = route(requests_post, known, case.scheme)
        assert requests_route == case.expected
        writer_posts = sink.posts("/writer")
        assert sorted(post.body.decode() for post in writer_posts) == WRITER_IDS
        routes = [route(post, known, case.scheme) for post in writer_posts]
        assert routes == [requests_route] * len(WRITER_IDS)
        for each in known:
            logged = each.requests_for(sink.port)
            if case.scheme == "https":
                tunnels = [target for method, target in logged if method == "CONNECT"]
                assert bool(tunnels) == (case.expected == each.name), logged
            else:
                through = [target for method, target in logged if target.endswith("/writer")]
                assert len(through) == (len(WRITER_IDS) if case.expected == each.name else 0)
