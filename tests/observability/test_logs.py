"""Text logs say what a request was: its fields follow the message, as in the JSON lines."""

from __future__ import annotations

import logging

from torchport.observability.logs import JsonFormatter, TextFormatter


def record(**extra: object) -> logging.LogRecord:
    return logging.makeLogRecord(
        {"name": "torchport.requests", "levelname": "INFO", "msg": "request", **extra}
    )


def test_a_text_request_line_carries_every_field() -> None:
    line = TextFormatter().format(
        record(request_id="abc", model="mlp", version="1", outcome="ok", duration_ms=1.25)
    )
    assert line.endswith(
        "INFO torchport.requests: request request_id=abc model=mlp version=1 outcome=ok "
        "duration_ms=1.25"
    )


def test_text_fields_with_spaces_or_nothing_stay_one_token_each() -> None:
    line = TextFormatter().format(record(request_id="a b", model="", version=None))
    assert line.endswith('request request_id="a b" model="" version=-')


def test_a_plain_message_is_unchanged_and_json_has_the_same_fields() -> None:
    assert TextFormatter().format(record()).endswith("torchport.requests: request")
    assert '"model":"mlp"' in JsonFormatter().format(record(model="mlp"))
