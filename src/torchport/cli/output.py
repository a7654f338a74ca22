"""How the CLI talks to people: tables and progress on stderr-safe consoles, JSON on stdout."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, ensure_ascii=False) + "\n")


@contextmanager
def status(message: str) -> Iterator[Callable[[str], None]]:
    """A spinner on stderr while slow work runs; the step it shows can be updated with
    the function it yields (silent when stderr is not a terminal)."""
    if err.is_terminal:
        with err.status(message) as spinner:
            yield lambda step: spinner.update(f"{message}: {step}")
    else:
        yield lambda _step: None


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"
