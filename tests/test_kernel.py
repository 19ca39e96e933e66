"""The route kernel (service/http/kernel.py): the content-type rule, the strict JSON object and
the one way a route answers, refuses, fails and notices a departed client."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import Any

import pytest
from starlette.types import Message

from service.errors import BadInput, ClientGone, Overloaded, ServiceError, UnsupportedMedia
from service.http.kernel import (
    INTERNAL,
    JSON,
    OCTET_STREAM,
    accepted_media_type,
    answer,
    json_object,
    refusal,
)


@pytest.mark.parametrize(
    ("headers", "kind"),
    [
        ([], JSON),
        ([(b"content-type", b"application/json")], JSON),
        ([(b"content-type", b"Application/JSON; charset=utf-8")], JSON),
        ([(b"content-type", b"APPLICATION/OCTET-STREAM")], OCTET_STREAM),
        ([(b"content-type", b"")], JSON),
    ],
)
def test_accepted_media_types(headers: list[tuple[bytes, bytes]], kind: str) -> None:
    assert accepted_media_type(headers, (JSON, OCTET_STREAM)) == kind


def test_other_media_types_and_two_headers_are_refused() -> None:
    with pytest.raises(UnsupportedMedia, match="must be application/json, not text/plain"):
        accepted_media_type([(b"content-type", b"text/plain")], (JSON,))
    with pytest.raises(BadInput, match="more than one Content-Type"):
        accepted_media_type([(b"content-type", b"application/json")] * 2, (JSON,))


def test_json_object() -> None:
    assert json_object(b'{"a": 1}', ("a", "b"), "{...}") == {"a": 1}
    for body, message in [
        (b"{", "not valid JSON"),
        (b"[1]", "send {...}"),
        (b'{"b": 1}', "send {...}"),  # a required key missing
        (b'{"a": 1, "zzz": 2}', "unknown field(s) ['zzz']; use a, b"),
    ]:
        with pytest.raises(BadInput, match=re.escape(message)):
            json_object(body, ("a", "b"), "{...}", required=("a",))


def test_a_refusal_is_shaped_by_protocol_logged_once_and_retry_after_on_503(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="rnnserve"):
        status, headers, body = refusal("/r", BadInput("no good"))
    assert status == 400 and headers == []
    assert json.loads(body) == {"error": "no good", "detail": None}
    assert any("/r: 400 no good" in r.getMessage() for r in caplog.records)
    status, headers, body = refusal("/v2/x", Overloaded("busy"), v2=True)
    assert status == 503 and (b"retry-after", b"1") in headers
    assert json.loads(body) == {"error": "busy"}


def run_answer(work: Any, v2: bool = False) -> tuple[int, list[Message]]:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    status = asyncio.run(answer("/route", send, work, v2))
    return status, sent


def test_answer_sends_the_work_or_its_refusal_or_nothing() -> None:
    async def ok() -> tuple[bytes, list[tuple[bytes, bytes]]]:
        return b'{"fine": true}', [(b"x-extra", b"1")]

    status, sent = run_answer(ok)
    assert status == 200 and sent[1]["body"] == b'{"fine": true}'
    assert (b"x-extra", b"1") in sent[0]["headers"]

    async def refused() -> tuple[bytes, list[tuple[bytes, bytes]]]:
        raise UnsupportedMedia("not that")

    status, sent = run_answer(refused, v2=True)
    assert status == 415 and json.loads(sent[1]["body"]) == {"error": "not that"}

    async def gone() -> tuple[bytes, list[tuple[bytes, bytes]]]:
        raise ClientGone("left")

    assert run_answer(gone) == (499, [])


def test_an_internal_error_is_logged_with_its_traceback_and_answered_without_its_text(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken() -> tuple[bytes, list[tuple[bytes, bytes]]]:
        raise RuntimeError("secret path /etc/x")

    with caplog.at_level(logging.ERROR, logger="rnnserve"):
        status, sent = run_answer(broken)
    assert status == 500
    body = json.loads(sent[1]["body"])
    assert body == {"error": INTERNAL, "detail": None} and "secret" not in sent[1]["body"].decode()
    assert any(r.exc_info and "secret path" in str(r.exc_info[1]) for r in caplog.records)
    assert issubclass(BadInput, ServiceError)
