"""``_redact``: every form of every configured secret is masked, short values
are not secrets, URLs are shown without user info or query values."""

from __future__ import annotations

import base64
import json
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flask_chest_otel._redact import MASK, MIN_SECRET_LENGTH, Secrets, shown_url

TOKEN = "tok/SECRET+v2=="
PASSWORD = "p@ss w:rd"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.mark.parametrize(
    "form",
    [
        TOKEN,
        quote(TOKEN, safe=""),
        quote_plus(TOKEN),
        b64(TOKEN),
        b64(TOKEN).rstrip("="),
        base64.urlsafe_b64encode(TOKEN.encode()).decode(),
        json.dumps(TOKEN)[1:-1].replace("/", "\\/"),
    ],
    ids=["plain", "percent", "plus", "base64", "unpadded", "urlsafe", "json-escaped"],
)
def test_every_form_of_the_token_is_masked(form: str) -> None:
    secrets = Secrets.of(token=TOKEN)
    assert secrets.redact(f"before {form} after") == f"before {MASK} after"


def test_basic_auth_of_username_and_password_is_masked_but_the_username_alone_is_not() -> None:
    """The username is named in hints on purpose ("check username 'admin'")."""
    secrets = Secrets.of(username="admin", password=PASSWORD)
    text = f"Authorization: Basic {b64('admin:' + PASSWORD)} admin:{PASSWORD} {PASSWORD} admin"
    assert secrets.redact(text) == f"Authorization: Basic {MASK} {MASK} {MASK} admin"


def test_url_user_info_and_query_values_are_secrets_in_every_form() -> None:
    secrets = Secrets.of(url="http://USERNAME:pa%2Fss@host:8086/x?api_key=KEY%2BVALUE&flag")
    text = "USERNAME pa/ss pa%2Fss KEY+VALUE KEY%2BVALUE flag " + b64("USERNAME:pa/ss")
    assert secrets.redact(text) == " ".join([MASK] * 7)


def test_header_values_and_their_credentials_are_secrets_but_not_content_types() -> None:
    secrets = Secrets.of(
        headers={
            "X-SF-Token": "SFTOKEN123",
            "Authorization": "Bearer BEARERVALUE",
            "Content-Type": "application/json",
        }
    )
    text = "SFTOKEN123 BEARERVALUE Bearer BEARERVALUE application/json"
    assert secrets.redact(text) == f"{MASK} {MASK} {MASK} application/json"


def test_a_basic_authorization_header_masks_its_decoded_pair_and_password() -> None:
    secrets = Secrets.of(headers={"Authorization": "Basic " + b64("someone:HUNTER22")})
    assert secrets.redact("someone:HUNTER22 / HUNTER22") == f"{MASK} / {MASK}"


@pytest.mark.parametrize(
    "params",
    [{"key": "PARAM KEY"}, [("key", "PARAM KEY")], "key=PARAM+KEY", b"key=PARAM%20KEY"],
    ids=["mapping", "pairs", "string", "bytes"],
)
def test_params_values_are_secrets_as_given_and_as_requests_encodes_them(params: object) -> None:
    secrets = Secrets.of(params=params)
    assert secrets.redact("PARAM KEY PARAM+KEY PARAM%20KEY") == f"{MASK} {MASK} {MASK}"


def test_the_longest_of_overlapping_secrets_is_masked_whole() -> None:
    secrets = Secrets(["abcdef", "abcdefghij", "defghijk"])
    assert secrets.redact("xx abcdefghijk yy") == f"xx {MASK}k yy"
    assert secrets.redact("xx defghijk abcdef") == f"xx {MASK} {MASK}"


def test_no_secret_is_made_anew_of_a_mask_and_its_neighbours() -> None:
    secrets = Secrets(["**ab", "SECRETX"])
    # "SECRETX" becomes "***", which with the "ab" after it would read "**ab".
    assert "**ab" not in secrets.redact("SECRETXab")


def test_values_shorter_than_the_minimum_are_not_secrets() -> None:
    short = "x" * (MIN_SECRET_LENGTH - 1)
    secrets = Secrets.of(token=short, password="abc", headers={"X-Key": "on"})
    assert not secrets
    assert secrets.redact(f"{short} abc on") == f"{short} abc on"


def test_a_truncated_text_loses_the_start_of_a_secret_at_its_cut() -> None:
    secrets = Secrets.of(token=TOKEN)
    assert secrets.redact("error: tok/SEC", truncated=True) == f"error: {MASK}"
    assert secrets.redact("error: tok/SEC") == "error: tok/SEC"
    assert secrets.redact("error: tok", truncated=True) == "error: tok"  # 3 characters
    cut = "key: abcd\u00e9SECRET".encode()[:-7].decode("utf-8", "replace")  # "abcd\ufffd"
    assert Secrets(["abcd\u00e9SECRET"]).redact(cut, truncated=True) == f"key: {MASK}"


def test_redact_exception_gives_the_traceback_without_the_secret() -> None:
    secrets = Secrets.of(token=TOKEN)

    def generator() -> None:
        raise ValueError(f"cannot use key {TOKEN!r}") from KeyError(quote(TOKEN, safe=""))

    try:
        generator()
    except ValueError as exc:
        text = secrets.redact_exception(exc)
    assert "Traceback (most recent call last)" in text and "in generator" in text
    assert "ValueError: cannot use key '***'" in text and "KeyError: '***'" in text
    assert "SECRET" not in text


def test_the_repr_of_secrets_shows_no_value() -> None:
    assert "SECRET" not in repr(Secrets.of(token=TOKEN))


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://user:pw@host:8086/x?a=1&b=&c", "http://host:8086/x?a=***&b=***&***"),
        ("https://[::1]:8443/write", "https://[::1]:8443/write"),
        ("http://h/x#fragment", "http://h/x"),
        ("http://user:pw@host:99999/x?k=v", "http://***@host:99999/x?k=***"),
        ("http://user:pa/ss@host/x?k=v", "http://***@host/x?k=***"),
        ("http://user:12/34@host/x", "http://***/***@host/x"),
        ("http://user:12?34@host/x", "http://***?***"),
        ("http://host/x?to=a@b.example", "http://***/x?to=***"),
        ("http://user:p#ss@host:1/", "http://***@host:1/"),
        ("http://user:pw@[::1/x?k=v", "http://***@[::1/x?k=***"),
        ("localhost:8086", "localhost:8086"),
    ],
)
def test_a_url_is_shown_without_user_info_or_query_values(url: str, shown: str) -> None:
    assert shown_url(url) == shown


_alphabet = st.characters(codec="utf-8", exclude_categories=("Cs",))
_secret = st.text(_alphabet, min_size=MIN_SECRET_LENGTH, max_size=24)


@given(
    token=_secret,
    password=_secret,
    header=_secret,
    query=_secret,
    fillers=st.lists(st.text(_alphabet, max_size=8), min_size=5, max_size=5),
)
def test_no_configured_secret_survives_redact(
    token: str, password: str, header: str, query: str, fillers: list[str]
) -> None:
    secrets = Secrets.of(
        url=f"http://h/x?k={quote(query, safe='')}",
        token=token,
        username="user",
        password=password,
        headers={"X-Key": header},
    )
    configured = (token, password, header, query)
    pairs = zip(fillers[:-1], configured, strict=True)
    text = "".join(f"{filler}{secret}" for filler, secret in pairs) + fillers[-1]
    text += b64(f"user:{password}") + quote(token, safe="")
    redacted = secrets.redact(text)
    assert not [secret for secret in configured if secret in redacted]
    assert b64(f"user:{password}") not in redacted
