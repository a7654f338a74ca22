"""The toolkit's header helpers."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

CONTENT_TYPE_REGEX = re.compile("^[Cc]ontent-?[Tt]ype")


def retrieve_content_type_header(request_property: Mapping[str, Any]) -> Any:
    for key in request_property:
        if CONTENT_TYPE_REGEX.match(key):
            return request_property[key]
    return None


def parse_accept(accept: str) -> list[str]:
    return accept.replace(" ", "").split(",")


def remove_crlf(illegal_string: str) -> str:
    return illegal_string.replace("\r", "").replace("\n", "") if illegal_string else ""
